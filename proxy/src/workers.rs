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
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error};

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
/// `in_plugins`: each thread runs its loop inside every plugin library the process has loaded,
/// and inside one it loads later (a reload) too. A thread that
/// fails (its runtime cannot start) ends the whole serve with its error.
pub async fn serve<H: Handler>(
    listeners: Vec<std::net::TcpListener>,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
    in_plugins: bool,
) -> io::Result<()> {
    let plain = Listener::plain(listeners, None);
    serve_listeners(vec![plain], proxy, shutdown, drain, limits, in_plugins).await
}

/// [`serve`] on several listeners (`listen:` and `listen_tls:`), all with as many sockets:
/// thread `i` serves socket `i` of each.
pub async fn serve_listeners<H: Handler>(
    listeners: Vec<Listener>,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
    in_plugins: bool,
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
            in_plugins,
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

/// Runs `serving` on `rt` inside the libraries the process loaded from the `from`-th on. When it
/// loads another (a reload), `block_on` returns and the thread enters the new ones inside those
/// it is in, and goes on serving there: the serving future and the connections' tasks wait on
/// the thread's runtime meanwhile, and each library's `run_on_thread` is called once per thread.
/// One level of nesting per load that happens while the thread serves.
fn serve_inside_libraries<F: Future<Output = io::Result<()>>>(
    rt: &tokio::runtime::Runtime,
    mut serving: std::pin::Pin<&mut F>,
    from: usize,
) -> io::Result<()> {
    let weft_runtime::ProcessEntries {
        entries,
        loaded,
        mut changed,
    } = weft_runtime::ThreadEntries::of_process(from);
    entries.run(|| {
        let done = rt.block_on(async {
            tokio::select! {
                biased;
                // Only a change: the sender lives as long as the process.
                Ok(()) = changed.changed() => None,
                r = &mut serving => Some(r),
            }
        });
        match done {
            Some(r) => r,
            None => {
                debug!("a plugin library was loaded: entering it");
                serve_inside_libraries(rt, serving, loaded)
            }
        }
    })
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
    /// Whether the thread's loop runs inside the plugin libraries ([`serve`]).
    in_plugins: bool,
}

impl<H: Handler> Worker<H> {
    fn run(self) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let Worker {
            index,
            sockets,
            proxy,
            stop,
            drain,
            limits,
            in_plugins,
        } = self;
        let serving = async move {
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
        };
        if !in_plugins {
            return rt.block_on(serving);
        }
        // The thread's loop runs inside every plugin library that offers it (a Go library: its
        // phase calls are then callbacks nested in a Go call, without the runtime's per-call
        // entry for foreign threads and its process-wide lock; `thread_entry.rs` in the
        // runtime), and inside a library a reload loads later too (`serve_inside_libraries`).
        serve_inside_libraries(&rt, std::pin::pin!(serving).as_mut(), 0)
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
            false,
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

    /// Runs the request-headers phase of the chain it holds (if any) for each request, on the
    /// serving thread, and answers 200.
    struct Phases(std::sync::Mutex<Option<weft_runtime::Chain>>);

    impl Handler for Phases {
        fn handle(
            self: &Arc<Self>,
            req: Request<RequestBody>,
            client: Arc<crate::conn::Peer>,
        ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
            let chain = self.0.lock().unwrap().clone();
            async move {
                if let Some(chain) = chain {
                    let mut x = chain.start(client.addr.addr(), "http").unwrap().unwrap();
                    let (mut parts, _) = req.into_parts();
                    assert!(matches!(x.request_headers(&mut parts), weft_runtime::Flow::Continue));
                }
                crate::forward::local_reply(StatusCode::OK, "ok", None)
            }
        }
    }

    fn get(addr: SocketAddr) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got.get(9..12).unwrap_or("").to_owned()
    }

    /// phase_count.c's calls of `count-all` (its plugin 0) in `phase` (weft.h's numbering), of
    /// them those made inside its `run_on_thread`, and its `run_on_thread` calls.
    fn phase_counts(lib: &std::path::Path, phase: u32) -> (u64, u64, u64) {
        let count = weft_test_support::PhaseCount::of(lib);
        (
            count.calls(0, phase),
            count.nested_calls(0, phase),
            count.run_on_thread_calls(),
        )
    }

    /// A library loaded after the serving threads started (as a reload loads one) is entered by
    /// them too: their phase calls into it are made inside its `run_on_thread`
    /// (`tests/fixtures/c-plugins/phase_count.c` counts the calls made so).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_library_loaded_after_the_threads_started_is_entered_by_them() {
        let rt = weft_runtime::Runtime::new(weft_runtime::RuntimeOptions {
            slot_count: 16,
            slot_size: 8192,
            ..weft_runtime::RuntimeOptions::default()
        })
        .unwrap();
        let phases = Arc::new(Phases(std::sync::Mutex::new(None)));
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 2, 128).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listeners,
            Arc::clone(&phases),
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(1),
            Limits::default(),
            true,
        ));
        assert_eq!(tokio::task::spawn_blocking(move || get(addr)).await.unwrap(), "200");
        // Loaded now, with both threads serving.
        let lib = weft_test_support::c_plugins("plain").join("libweft_c_phase_count.so");
        rt.load_library("count", &lib).unwrap();
        let inst = rt
            .instantiate(weft_runtime::InstanceSpec {
                name: "all".into(),
                library: "count".into(),
                plugin: "count-all".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            })
            .unwrap();
        *phases.0.lock().unwrap() = Some(rt.chain(&[inst]));
        // The threads leave and enter when they are woken by the load; give them the moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..32 {
            assert_eq!(tokio::task::spawn_blocking(move || get(addr)).await.unwrap(), "200");
        }
        // run_on_thread: once on each serving thread. `count-all` has a log phase too, run on
        // the serving thread after each response (the default `LogPlace::Inline`): nested
        // there, and the log thread, which no log job reached, never entered the library.
        const REQUEST_HEADERS: u32 = 0;
        const LOG: u32 = 4;
        assert_eq!(
            phase_counts(&lib, REQUEST_HEADERS),
            (32, 32, 2),
            "(calls, of them nested, run_on_thread calls)"
        );
        assert_eq!(
            phase_counts(&lib, LOG),
            (32, 32, 2),
            "(log calls, of them nested, run_on_thread calls)"
        );
        // Another library (one without run_on_thread): the threads go on inside phase_count's,
        // entered once each.
        rt.load_library(
            "stamp",
            &weft_test_support::c_plugins("plain").join("libweft_c_stamp.so"),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..8 {
            assert_eq!(tokio::task::spawn_blocking(move || get(addr)).await.unwrap(), "200");
        }
        assert_eq!(
            phase_counts(&lib, REQUEST_HEADERS),
            (40, 40, 2),
            "(calls, of them nested, run_on_thread calls)"
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
