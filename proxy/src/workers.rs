//! Thread-per-core serving. `workers` threads (`workers:` in the config; default the number of
//! CPUs) each run a single-threaded tokio runtime and accept on a listener of their own, all bound
//! to the same address with `SO_REUSEPORT`, so the kernel spreads new connections over them and a
//! connection stays on the thread that accepted it. Everything a request does runs there: the
//! plugin calls, the upstream connection (each thread has its own keep-alive pools,
//! [`crate::upstream`]) and the response. So the common path of a proxied request makes no
//! cross-thread hand-off and wakes no other thread; a multi-threaded work-stealing runtime would
//! move the tasks of one request between threads and wake them across. The control plane
//! (admin listener, reloads, signals, NATS) stays on the small runtime of `reload::run_blocking`.
//!
//! What this gives up: a connection is never moved to an idle thread, so one very busy
//! connection keeps its thread busy (as with nginx's workers). Connection limits are shared by
//! all threads: `limits.max_connections` by every listener, a listener's own `max_connections`
//! by its sockets, and the per-address counts of `limits.max_connections_per_ip` by all
//! ([`crate::accept`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::error;
use weft_runtime::Runtime;

use crate::accept::{self, Admission, PerIp};
use crate::config::Limits;
use crate::conn::serve_connections_with;
use crate::server::Handler;
use crate::tls::server::TlsListener;

/// Most serving threads a config may ask for.
pub const MAX_WORKERS: usize = 1024;

/// Serving threads when the config says nothing: `TOKIO_WORKER_THREADS` if set (as the
/// multi-threaded runtime read it before), else the CPUs this process may run on.
pub fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=MAX_WORKERS).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Binds `count` listening sockets to `addr` with `SO_REUSEPORT` (port 0: the first picks the
/// port, the others share it), each queueing up to `backlog` connections not yet accepted.
/// Bound here, on the caller's thread, so a bad address is an error before any thread starts.
pub fn bind(addr: SocketAddr, count: usize, backlog: u32) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        let listener: std::net::TcpListener = s.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// One proxy listener: its sockets (one per serving thread, as [`bind`] makes them) and how it
/// is served.
pub struct Listener {
    pub sockets: Vec<std::net::TcpListener>,
    /// Its name in metrics and logs: `proxy`, or the TLS listener's `listen_tls[i]`.
    pub label: String,
    /// Its own connection cap (`listen_max_connections`, `listen_tls[i].max_connections`).
    pub max_connections: Option<u32>,
    pub tls: Option<Arc<TlsListener>>,
}

impl Listener {
    /// The `listen:` listener.
    pub fn plain(sockets: Vec<std::net::TcpListener>, max_connections: Option<u32>) -> Listener {
        Listener {
            sockets,
            label: "proxy".into(),
            max_connections,
            tls: None,
        }
    }

    /// A `listen_tls:` listener.
    pub fn tls(sockets: Vec<std::net::TcpListener>, tls: Arc<TlsListener>) -> Listener {
        Listener {
            sockets,
            label: tls.label.clone(),
            max_connections: tls.max_connections,
            tls: Some(tls),
        }
    }
}

/// Serves `proxy` on `listeners`, one thread each, until `shutdown` resolves; then every thread
/// stops accepting and drains its connections (up to `drain`) and this returns when all have.
/// `plugins`: the plugin runtime whose `thread_start` each thread calls first. A thread that
/// fails (its runtime cannot start) ends the whole serve with its error.
pub async fn serve<H: Handler>(
    listeners: Vec<std::net::TcpListener>,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
    plugins: Option<Weak<Runtime>>,
) -> io::Result<()> {
    let plain = Listener::plain(listeners, None);
    serve_listeners(vec![plain], proxy, shutdown, drain, limits, plugins).await
}

/// [`serve`] on several listeners (`listen:` and `listen_tls:`), all with as many sockets:
/// thread `i` serves socket `i` of each.
pub async fn serve_listeners<H: Handler>(
    listeners: Vec<Listener>,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
    plugins: Option<Weak<Runtime>>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<io::Result<()>>();
    let sockets = per_thread(listeners, &limits);
    let count = sockets.len();
    for (i, sockets) in sockets.into_iter().enumerate() {
        let worker = Worker {
            index: i as u32,
            sockets,
            proxy: Arc::clone(&proxy),
            stop: stop_rx.clone(),
            drain,
            limits,
            plugins: plugins.clone(),
        };
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("weft-serve-{i}"))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()))
                    .unwrap_or_else(|_| Err(io::Error::other("a serving thread panicked")));
                let _ = done.send(result);
            })?;
    }
    drop(done_tx);
    tokio::pin!(shutdown);
    let mut finished = 0;
    let mut result = Ok(());
    tokio::select! {
        () = &mut shutdown => {}
        Some(r) = done_rx.recv() => {
            finished = 1;
            if let Err(e) = &r {
                error!(error = %e, "a serving thread stopped; stopping the others");
            }
            result = r;
        }
    }
    stop_tx.send_replace(true);
    while finished < count {
        match done_rx.recv().await {
            Some(Err(e)) if result.is_ok() => result = Err(e),
            Some(_) => {}
            None => break,
        }
        finished += 1;
    }
    result
}

/// A serving thread's socket of one listener, with the listener's shared permits.
type ThreadSocket = (std::net::TcpListener, Arc<Admission>, Option<Arc<TlsListener>>);

/// Regroups the listeners' sockets by thread: entry `i` holds socket `i` of every listener.
/// The permits of `limits.max_connections` and the per-address counts are one for all.
fn per_thread(listeners: Vec<Listener>, limits: &Limits) -> Vec<Vec<ThreadSocket>> {
    let process = accept::permits(limits.connection_cap());
    let per_ip = limits.max_connections_per_ip.map(PerIp::new);
    let mut threads: Vec<Vec<ThreadSocket>> = Vec::new();
    for l in listeners {
        let admission = Admission::new(l.label, l.max_connections, process.clone(), per_ip.clone());
        for (i, socket) in l.sockets.into_iter().enumerate() {
            if threads.len() <= i {
                threads.resize_with(i + 1, Vec::new);
            }
            threads[i].push((socket, Arc::clone(&admission), l.tls.clone()));
        }
    }
    threads
}

/// One serving thread.
struct Worker<H> {
    index: u32,
    /// The thread's socket of each listener.
    sockets: Vec<ThreadSocket>,
    proxy: Arc<H>,
    stop: watch::Receiver<bool>,
    drain: Duration,
    limits: Limits,
    plugins: Option<Weak<Runtime>>,
}

impl<H: Handler> Worker<H> {
    fn run(self) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // The thread's loop runs inside every plugin library that offers it (a Go library: its
        // phase calls are then callbacks nested in a Go call, without the runtime's per-call
        // entry for foreign threads and its process-wide lock; `thread_entry.rs` in the
        // runtime). The entries are plain function pointers: no runtime is kept alive by them.
        let entries = match self.plugins.as_ref().and_then(Weak::upgrade) {
            Some(plugins) => {
                plugins.thread_start();
                plugins.thread_entries()
            }
            None => Default::default(),
        };
        let Worker {
            index,
            sockets,
            proxy,
            stop,
            drain,
            limits,
            ..
        } = self;
        entries.run(|| {
            rt.block_on(async move {
                // Boxed: a request's future (every stage, the upstream exchange) is kilobytes, and
                // hyper moves the service future into its dispatcher (`perf`: 3 % of the proxy's
                // samples in `memcpy`); boxed, it is moved once, into the box.
                let handle = move |req, remote| Box::pin(Handler::handle(&proxy, req, remote));
                let accepted = crate::metrics::global().serving_thread(index);
                let loops = sockets.into_iter().map(|(listener, admission, tls)| {
                    let (handle, accepted, mut stop) = (handle.clone(), accepted.clone(), stop.clone());
                    async move {
                        let shutdown = async move {
                            let _ = stop.wait_for(|stopped| *stopped).await;
                        };
                        let listener = TcpListener::from_std(listener)?;
                        serve_connections_with(
                            listener,
                            admission,
                            limits,
                            Some(accepted),
                            tls,
                            handle,
                            shutdown,
                            drain,
                        )
                        .await
                    }
                });
                futures_util::future::try_join_all(loops).await.map(drop)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::RequestBody;
    use crate::forward::ProxyBody;
    use http::{Request, Response, StatusCode};

    /// Answers with the thread that ran the request and the thread that ran a task the request
    /// spawned (as a WebSocket upgrade spawns its upstream connection's task).
    struct WhereAmI;

    impl Handler for WhereAmI {
        fn handle(
            self: &Arc<Self>,
            _req: Request<RequestBody>,
            _client: Arc<crate::conn::Peer>,
        ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
            where_am_i()
        }
    }

    async fn where_am_i() -> Response<ProxyBody> {
        let here = std::thread::current().name().unwrap_or("?").to_owned();
        let spawned = tokio::spawn(async { std::thread::current().name().unwrap_or("?").to_owned() })
            .await
            .unwrap();
        crate::forward::local_reply(StatusCode::OK, &format!("{here} {spawned}"), None)
    }

    /// The no-hand-off property where it can be observed: a request and every task it spawns
    /// (an upstream connection's, say) run on the serving thread that accepted its connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_and_the_tasks_it_spawns_stay_on_its_serving_thread() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 2, 128).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listeners,
            Arc::new(WhereAmI),
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(1),
            Limits::default(),
            None,
        ));
        let mut threads = std::collections::BTreeSet::new();
        for _ in 0..32 {
            let (status, body) = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                    .unwrap();
                let mut got = String::new();
                s.read_to_string(&mut got).unwrap();
                let status = got.get(9..12).unwrap_or("").to_owned();
                (status, got.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_owned())
            })
            .await
            .unwrap();
            assert_eq!(status, "200");
            let (here, spawned) = body.split_once(' ').unwrap();
            assert!(here.starts_with("weft-serve-"), "{body}");
            assert_eq!(here, spawned, "a task the request spawned ran on another thread");
            threads.insert(here.to_owned());
        }
        assert_eq!(
            threads.len(),
            2,
            "the kernel spread 32 connections over both threads: {threads:?}"
        );
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn listeners_share_one_port() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|&p| p == ports[0] && p != 0), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_without_reuseport_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind(taken.local_addr().unwrap(), 2, 128).is_err());
    }
}
