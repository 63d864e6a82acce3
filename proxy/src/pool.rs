//! Upstream HTTP/1.1 connections driven by the request that uses them.
//!
//! A connection is hyper's low-level pair, [`http1::SendRequest`] and its [`http1::Connection`]
//! future, kept together in a [`Conn`]. Nothing spawns a task for it: while a request waits for
//! its response head, the request's own future polls the connection ([`Conn::exchange`]), and
//! while the response body streams to the client, the body polls it ([`PooledBody`]). When the
//! body has ended the connection goes back to the idle list of the thread that is dropping it
//! ([`Pools`], one per serving thread), where the next request on that thread picks it up. So a
//! proxied request, its upstream connection and its response stay in one task on one thread,
//! with no channel hop to a connection task and no wake-up of another task.
//!
//! An idle connection is not polled. It is checked when it is taken ([`Pools::checkout`]: polled
//! once, so an EOF or reset the upstream sent meanwhile is seen and the connection dropped) and
//! by a reaper task per thread and upstream that drops closed and expired ones every few
//! seconds, so a connection the upstream closed holds its descriptor at most that long.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::tls::MaybeTls;
use crate::tls::client::{UpstreamStream, UpstreamTls};

type Io = TokioIo<UpstreamStream>;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often each thread's idle connections are checked for a close or their idle timeout.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Idle connections kept per address and thread; more are closed when they come back.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

/// One upstream connection: the request half and the connection future that does its I/O.
pub struct Conn {
    send: http1::SendRequest<UpstreamBody>,
    io: http1::Connection<Io, UpstreamBody>,
    /// The connection future finished (closed or failed): never poll it again, never reuse it.
    done: bool,
    guard: Guard,
}

impl Conn {
    /// Opens a connection to `addr` within `timeout` (and its TLS handshake within another,
    /// with `tls`). Boxed: a connection moves with its response body, which should stay small
    /// to move.
    pub async fn connect(addr: &Authority, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Box<Conn>> {
        let stream = Conn::stream(addr, timeout, tls).await?;
        let (send, io) = http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
        Ok(Box::new(Conn {
            send,
            io,
            done: false,
            guard: Guard::default(),
        }))
    }

    /// [`Conn::tcp`], then with `tls` its handshake (within `timeout` again).
    pub async fn stream(addr: &Authority, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<UpstreamStream> {
        let tcp = Conn::tcp(addr, timeout).await?;
        match tls {
            None => Ok(MaybeTls::Plain(tcp)),
            Some(tls) => tls.connect(tcp, addr, timeout).await,
        }
    }

    /// A TCP connection to `addr` within `timeout`, with TCP_NODELAY and TCP keep-alive.
    pub async fn tcp(addr: &Authority, timeout: Duration) -> io::Result<TcpStream> {
        // A bracketed IPv6 literal is the authority's host; the socket wants the bare address.
        let host = addr.host().trim_start_matches('[').trim_end_matches(']');
        let port = addr.port_u16().expect("validated upstream address has a port");
        let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}")))??;
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        Ok(stream)
    }

    /// Sends `req` and polls the connection until the response head is in. An error that
    /// carries the request back means nothing of it was written (the connection had closed).
    ///
    /// The first poll only yields. Written at once, each request would reach the upstream on
    /// its own and, on a loaded machine, wake it once per request; after one pass of the
    /// scheduler over the other ready connections, the writes of that pass go out back to
    /// back, as they did when each connection had a task of its own (docs/performance.md: without
    /// the yield, more context switches and more CPU per request under load).
    pub async fn exchange(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        let mut response = pin!(self.send.try_send_request(req));
        let Conn { io, done, guard, .. } = self;
        let mut yielded = false;
        poll_fn(|cx| {
            if !yielded {
                // Once, before the request is written: back of the thread's run queue, so the
                // requests that became ready in one scheduler pass go upstream together.
                yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            guard.poll(cx, |cx| {
                if let Poll::Ready(r) = response.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                // The connection writes the request and reads the head; it answers `response`.
                if !*done && Pin::new(&mut *io).poll(cx).is_ready() {
                    *done = true;
                }
                response.as_mut().poll(cx)
            })
        })
        .await
    }

    /// Polls the connection once with `cx`; false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.io, &mut self.done, cx)
    }

    /// Whether the connection can carry another request now: not finished, not closed, and
    /// hyper's dispatcher waiting for the next request. Polls it once to see a close.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && !self.send.is_closed() && self.send.is_ready()
    }
}

fn drive(io: &mut http1::Connection<Io, UpstreamBody>, done: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*done && Pin::new(io).poll(cx).is_ready() {
        *done = true;
    }
    !*done
}

/// Keeps a connection's wake-ups of its own task inside the poll that caused them.
///
/// hyper's connection talks to its `SendRequest`, response future and body through channels,
/// and each hand-over wakes the other side's waker: with everything polled by one task, that
/// is the task waking itself from inside its own poll, which tokio answers by polling the whole
/// task (the client connection, the request, the response) once more for nothing. Under
/// [`Guard::poll`] the connection and its parts see a waker that, while the poll runs, only
/// notes that something was woken, and the poll goes round once more right away; outside the
/// poll (the socket became readable), it wakes the task.
struct Guard {
    state: Arc<GuardState>,
    /// A waker of `state`, made once per connection.
    waker: Waker,
}

impl Default for Guard {
    fn default() -> Guard {
        let state = Arc::new(GuardState::default());
        Guard {
            waker: Waker::from(Arc::clone(&state)),
            state,
        }
    }
}

#[derive(Default)]
struct GuardState {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for GuardState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::Acquire) {
            self.woken.store(true, Ordering::Release);
        } else {
            self.task.wake();
        }
    }
}

/// Rounds one guarded poll may take before it yields to other tasks.
const GUARD_ROUNDS: usize = 8;

impl Guard {
    fn poll<R>(&self, cx: &mut Context<'_>, mut f: impl FnMut(&mut Context<'_>) -> Poll<R>) -> Poll<R> {
        let state = &self.state;
        state.task.register(cx.waker());
        for _ in 0..GUARD_ROUNDS {
            state.woken.store(false, Ordering::Relaxed);
            state.polling.store(true, Ordering::Release);
            let r = f(&mut Context::from_waker(&self.waker));
            state.polling.store(false, Ordering::Release);
            // A wake noted during the poll may mean progress: go round again. One that comes
            // after `polling` went false reaches the task through `task`.
            if r.is_ready() || !state.woken.swap(false, Ordering::AcqRel) {
                return r;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// An idle connection and when it became idle.
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One thread's idle connections, by address (an upstream has a handful of addresses).
#[derive(Default)]
struct Pool {
    idle: Vec<(Authority, Vec<Idle>)>,
}

impl Pool {
    fn list(&mut self, addr: &Authority) -> &mut Vec<Idle> {
        let i = match self.idle.iter().position(|(a, _)| a == addr) {
            Some(i) => i,
            None => {
                self.idle.push((addr.clone(), Vec::new()));
                self.idle.len() - 1
            }
        };
        &mut self.idle[i].1
    }

    /// Drops closed connections and those idle since before `expired`.
    fn reap(&mut self, expired: Instant) {
        for (_, list) in &mut self.idle {
            list.retain_mut(|i| i.since > expired && i.conn.reusable());
        }
    }
}

/// The idle connections of one upstream, one pool per thread that sends to it.
pub struct Pools {
    threads: Arc<ThreadLocal<RefCell<Pool>>>,
}

impl Default for Pools {
    fn default() -> Pools {
        Pools {
            threads: Arc::new(ThreadLocal::new()),
        }
    }
}

impl Pools {
    /// This thread's pool; the first use on a thread starts its reaper (on the thread's runtime).
    fn pool(&self) -> &RefCell<Pool> {
        self.threads.get_or(|| {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(reap(Arc::downgrade(&self.threads)));
            }
            RefCell::new(Pool::default())
        })
    }

    /// The most recently used idle connection to `addr` that can take a request, if any.
    pub fn checkout(&self, addr: &Authority) -> Option<Box<Conn>> {
        let mut pool = self.pool().borrow_mut();
        let list = pool.list(addr);
        let expired = Instant::now().checked_sub(IDLE_TIMEOUT);
        while let Some(mut idle) = list.pop() {
            if expired.is_none_or(|e| idle.since > e) && idle.conn.reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A handle that returns a connection to `addr` to the pool of the thread that uses it.
    pub fn home(&self, addr: &Authority) -> Home {
        Home {
            threads: Arc::downgrade(&self.threads),
            addr: addr.clone(),
        }
    }
}

/// Where a connection goes back to when its response is done.
pub struct Home {
    threads: Weak<ThreadLocal<RefCell<Pool>>>,
    addr: Authority,
}

impl Home {
    /// Keeps `conn` for the next request on this thread, unless it cannot be reused or the
    /// upstream is gone (reloaded away).
    fn checkin(&self, mut conn: Box<Conn>) {
        let Some(threads) = self.threads.upgrade() else {
            return;
        };
        if conn.done || conn.send.is_closed() {
            return;
        }
        // Polled once so hyper's dispatcher takes note that the response is over.
        conn.drive(&mut Context::from_waker(Waker::noop()));
        let Some(cell) = threads.get() else {
            return; // this thread never sent to the upstream: nobody would take it
        };
        let Ok(mut pool) = cell.try_borrow_mut() else {
            return;
        };
        let list = pool.list(&self.addr);
        if list.len() < MAX_IDLE_PER_ADDRESS && !conn.done {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// Every [`REAP_EVERY`], drops this thread's closed and expired idle connections; ends when
/// the upstream is dropped.
async fn reap(threads: Weak<ThreadLocal<RefCell<Pool>>>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(threads) = threads.upgrade() else {
            return;
        };
        let Some(expired) = Instant::now().checked_sub(IDLE_TIMEOUT) else {
            continue;
        };
        if let Some(cell) = threads.get()
            && let Ok(mut pool) = cell.try_borrow_mut()
        {
            pool.reap(expired);
        }
    }
}

/// An upstream response body that drives its connection while it is read, and returns the
/// connection to its thread's pool once the body has ended (dropped before the end, the
/// connection is closed: the rest of the response is still on it).
pub struct PooledBody {
    body: Incoming,
    conn: Option<(Box<Conn>, Home)>,
}

impl PooledBody {
    /// A body whose connection is driven elsewhere (a spawned upgradeable connection).
    pub fn detached(body: Incoming) -> PooledBody {
        PooledBody { body, conn: None }
    }

    pub fn new(body: Incoming, conn: Box<Conn>, home: Home) -> PooledBody {
        PooledBody {
            body,
            conn: Some((conn, home)),
        }
    }

    fn release(&mut self) {
        if let Some((conn, home)) = self.conn.take() {
            home.checkin(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let body = &mut this.body;
        let frame = match &mut this.conn {
            Some((conn, _)) => {
                let Conn { io, done, guard, .. } = &mut **conn;
                guard.poll(cx, |cx| match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        // The connection reads the socket and hands the body its bytes.
                        drive(io, done, cx);
                        Pin::new(&mut *body).poll_frame(cx)
                    }
                    ready => ready,
                })
            }
            None => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body read to its end (the server may stop polling once `is_end_stream` says so).
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_inside_a_guarded_poll_go_round_again_and_later_ones_reach_the_task() {
        let guard = Guard::default();
        let count = Arc::new(Count::default());
        let task = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&task);

        // Woken from inside: polled again at once, the task is not woken.
        let mut rounds = 0;
        let r = guard.poll(&mut cx, |cx| {
            rounds += 1;
            if rounds < 3 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        assert!(r.is_ready());
        assert_eq!((rounds, count.0.load(Ordering::SeqCst)), (3, 0));

        // Woken after the poll (the socket became readable): the task is woken.
        let mut kept = None;
        assert!(
            guard
                .poll(&mut cx, |cx| {
                    kept = Some(cx.waker().clone());
                    Poll::<()>::Pending
                })
                .is_pending()
        );
        kept.unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        // A poll that wakes itself every round yields after a bound, and asks to be polled again.
        let mut rounds = 0;
        assert!(
            guard
                .poll(&mut cx, |cx| {
                    rounds += 1;
                    cx.waker().wake_by_ref();
                    Poll::<()>::Pending
                })
                .is_pending()
        );
        assert_eq!((rounds, count.0.load(Ordering::SeqCst)), (GUARD_ROUNDS, 2));
    }
}
