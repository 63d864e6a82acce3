//! Upstream HTTP/1.1 connections driven by the request that uses them.
//!
//! A connection is the upstream's byte stream with its read buffer and its write buffer, in a
//! [`Conn`]; the lean client in [`crate::h1`] speaks HTTP/1.1 on it. Nothing spawns a task for
//! it and nothing hands a request or a response through a channel: the request's own future
//! writes the request head and body and reads the response head ([`Conn::exchange`]), and
//! the response body reads the rest from the socket while the client's connection streams it
//! ([`PooledBody`]). When the body has ended the connection goes back to the idle list of the
//! thread that read it ([`Pools`], one per serving thread), where the next request on that
//! thread picks it up. So a proxied request, its upstream connection and its response stay in
//! one task on one thread; under load, the request's first write is made by the thread's
//! flusher task, after the scheduler's pass (`pool/held.rs`).
//!
//! An idle connection is not polled. It is checked when it is taken ([`Pools::checkout`]: read
//! once, so an EOF or reset the upstream sent meanwhile is seen and the connection dropped) and
//! by a reaper task per thread and upstream that drops closed and expired ones every few
//! seconds, so a connection the upstream closed holds its descriptor at most that long.
//! WebSocket upgrades keep hyper's client (`upstream.rs`): they become tunnels, never pooled.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use thread_local::ThreadLocal;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::body::{BoxError, Drive, Pieces, UpstreamBody};
use crate::clock;
use crate::forward::Forwarding;
use crate::h1::encode::{self, BodySize};
use crate::h1::head::{self, Ask, Fields, Head, Parsed};
use crate::h1::lines::{HeadLines, Lines};
use crate::h1::recv::{self, Reader};
use crate::h1::send::Sending;
use crate::h1::{ClientError, Error};
use crate::tls::MaybeTls;
use crate::tls::client::{UpstreamStream, UpstreamTls};

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often each thread's idle connections are checked for a close or their idle timeout.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Idle connections kept per address and thread; more are closed when they come back.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

thread_local! {
    /// Upstream exchanges on this thread between their start and their response head (or
    /// failure): whether a new one has others to go upstream with ([`Conn::exchange`]).
    static UNDER_WAY: Cell<u32> = const { Cell::new(0) };
}

/// One exchange counted in [`UNDER_WAY`] while it lives. A request's task stays on its serving
/// thread (one current-thread runtime each); were a future to move to another thread, the count
/// only steers the yield, and it saturates rather than wraps.
struct UnderWay;

impl UnderWay {
    /// Counts one more exchange; returns its guard and how many were under way before it.
    fn enter() -> (UnderWay, u32) {
        let before = UNDER_WAY.with(|n| n.replace(n.get().saturating_add(1)));
        (UnderWay, before)
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        UNDER_WAY.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The exchange's connection is out of its future only while [`held`] holds it.
const HERE: &str = "an exchange's connection is in its future between its polls";

mod held;

/// One upstream connection.
pub struct Conn {
    io: UpstreamStream,
    /// Bytes read and not used yet: a response head being parsed, then body bytes.
    read: BytesMut,
    /// The request head and body framing being written; kept for the next request.
    out: Vec<u8>,
    /// The request's body while it is being written (it may outlast the response head).
    send: Option<Sending<UpstreamBody>>,
    /// The header names of the last response (see [`head::Names`]).
    names: head::Names,
    /// Something failed: never reuse.
    broken: bool,
    /// Writing the request failed after some of it went out; an early response may still come.
    write_error: Option<io::Error>,
    /// The request body, still streaming under its response, failed on our side: the response
    /// body ends with it (kept here, not in the response body, which is moved whole on every
    /// request's path).
    body_error: Option<ClientError>,
}

/// A failed exchange, and the request when none of it was written or taken.
pub struct ExchangeError {
    pub error: ClientError,
    pub unsent: Option<Box<Request<UpstreamBody>>>,
    /// A request without a body and of an idempotent method, written whole, on a connection
    /// that closed (or was reset) before any byte of a response: on a connection taken from the
    /// pool, the upstream's close of it while idle can cross the request on the wire (the close
    /// had not reached the reactor when the connection was checked out), and the caller sends
    /// it again on a new one (`upstream.rs`), as nginx retries an idempotent request.
    pub unanswered: Option<Box<Request<UpstreamBody>>>,
}

impl Conn {
    /// Opens a connection to `addr` within `timeout` (and its TLS handshake within another,
    /// with `tls`). Boxed: a connection moves with its response body, which should stay small
    /// to move.
    pub async fn connect(addr: &Authority, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Box<Conn>> {
        let io = Conn::stream(addr, timeout, tls).await?;
        Ok(Box::new(Conn {
            io,
            read: BytesMut::new(),
            out: Vec::new(),
            send: None,
            names: head::Names::default(),
            broken: false,
            write_error: None,
            body_error: None,
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

    /// Sends `req` and reads until the response head is in; the response's body reads the rest
    /// and returns the connection to `home`'s pool when it has ended. The request body keeps
    /// streaming after the head if it has not ended (an upstream may answer early). A failure
    /// carries the request back when none of it was written (the connection had closed).
    ///
    /// When another exchange is under way on this thread, the first poll holds the connection
    /// for the thread's flusher (`pool/held.rs`), which writes the requests of the scheduler
    /// pass back to back after it, so the request's task is polled again only for the response
    /// (on a thread not of a current-thread runtime the exchange yields once instead, and
    /// writes at its next poll). Alone on its thread an exchange has nothing to go out with: it writes at
    /// its first poll. `fields`: what the caller does with the response head's fields
    /// ([`head::parse`]).
    pub async fn exchange(
        mut self: Box<Conn>,
        req: Box<Request<UpstreamBody>>,
        home: Home,
        fields: Fields,
        forwarding: Option<&Forwarding<'_>>,
    ) -> Result<Response<PooledBody>, ExchangeError> {
        // The request stays boxed while it is sent (not taken apart into this future, which
        // is part of every request's), its body in `send`; a failure puts it back.
        let mut req = req;
        let body = std::mem::replace(req.body_mut(), UpstreamBody::Full(Pieces::new(Vec::new())));
        self.out.clear();
        let size = body_size(&body);
        // Its body is the empty one left in `req`: the request can be written again as it is.
        let resendable = size == BodySize::Empty && req.method().is_idempotent();
        let encoding = encode::head(&mut req, size, forwarding, &mut self.out);
        self.send = Some(Sending::new(body, encoding));
        let ask = Ask {
            head_request: req.method() == Method::HEAD,
            fields,
        };
        let (_under_way, others) = UnderWay::enter();
        let mut first = others > 0;
        let mut conn = Some(self);
        let mut held: Option<held::Held> = None;
        let result = poll_fn(|cx| {
            if let Some(h) = held.take() {
                let (c, outcome) = h.reclaim();
                conn = Some(c);
                if let Some(outcome) = outcome {
                    return Poll::Ready(outcome);
                }
            } else if std::mem::take(&mut first) {
                match held::hold(conn.take().expect(HERE), cx.waker(), ask) {
                    Ok(h) => {
                        held = Some(h);
                        return Poll::Pending;
                    }
                    Err(c) => {
                        // Back of the thread's run queue: the requests that became ready in one
                        // scheduler pass go upstream together.
                        conn = Some(c);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
            conn.as_mut().expect(HERE).poll_head(cx, ask)
        })
        .await;
        let mut conn = conn.expect(HERE);
        match result {
            Ok(head) => {
                // Sent and answered: its header map serves the thread's next response head.
                crate::h1::head::recycle(std::mem::take(req.headers_mut()));
                Ok(PooledBody::response(*head, conn, home))
            }
            Err(error) => {
                let send = conn.send.take().filter(|s| s.untouched());
                let closed_unanswered = conn.read.is_empty()
                    && match &error {
                        ClientError::Closed => true,
                        ClientError::Io(e) => matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::BrokenPipe
                        ),
                        _ => false,
                    };
                match send {
                    Some(s) => {
                        *req.body_mut() = s.into_body();
                        Err(ExchangeError {
                            error,
                            unsent: Some(req),
                            unanswered: None,
                        })
                    }
                    None => Err(ExchangeError {
                        error,
                        unsent: None,
                        unanswered: (resendable && closed_unanswered).then_some(req),
                    }),
                }
            }
        }
    }

    /// Reads (first, so that a close the upstream sent while the connection was idle is seen
    /// before anything is written) and writes until a final response head is in. A failed write
    /// does not end the exchange: the upstream may have answered early and closed.
    fn poll_head(&mut self, cx: &mut Context<'_>, ask: Ask) -> Poll<Result<Box<Head>, ClientError>> {
        loop {
            match recv::poll_read(cx, &mut self.io, &mut self.read) {
                Poll::Ready(Ok(0)) => {
                    let error = self.write_error.take().map_or(ClientError::Closed, ClientError::Io);
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(_)) => match self.parse_head(ask)? {
                    Some(head) => return Poll::Ready(Ok(head)),
                    None => continue,
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ClientError::Io(e))),
                Poll::Pending => {}
            }
            match self.poll_send(cx) {
                Poll::Ready(Err(ClientError::Io(e))) if self.send.is_none() => self.write_error = Some(e),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The read above is registered for the response.
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The final head at the start of the read buffer, once it is whole (informational heads
    /// are dropped).
    fn parse_head(&mut self, ask: Ask) -> Result<Option<Box<Head>>, Error> {
        loop {
            match head::parse(&mut self.read, ask, &mut self.names)? {
                Parsed::Partial => return Ok(None),
                Parsed::Informational(n) => {
                    let _ = self.read.split_to(n);
                }
                // Taken out of the buffer already: its header values share it.
                Parsed::Final(_, head) => return Ok(Some(head)),
            }
        }
    }

    /// Writes what it can of the request; ready once it is all out (or was already) or
    /// writing failed, which makes the connection not reusable. A request none of which was
    /// written stays in `send`, for the caller to hand back whole.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let Some(send) = self.send.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = std::task::ready!(send.poll_send(cx, &mut self.io, &mut self.out));
        self.broken |= r.is_err();
        if r.is_ok() || !send.untouched() {
            self.send = None;
        }
        Poll::Ready(r)
    }

    /// Writes what it can of a request body still streaming under its response (the upstream
    /// answered early); returns how that body failed on our side, now or at a
    /// [`Drive::poll_drive`], which ends the response too, as hyper's client did. A failed write
    /// only keeps the connection from being reused (the upstream may have answered and stopped
    /// reading).
    #[inline]
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Option<ClientError> {
        if let Poll::Ready(Err(e)) = self.poll_send(cx)
            && !matches!(e, ClientError::Io(_))
        {
            return Some(e);
        }
        self.body_error.take()
    }

    /// Whether the connection's last exchange left it fit for another: the request fully
    /// written, its response fully read with nothing after it in the buffer. What the upstream
    /// sent since (a close, stray bytes) is [`Conn::reusable`]'s to see, at checkout.
    fn clean(&self) -> bool {
        !self.broken && self.send.is_none() && self.read.is_empty()
    }

    /// Whether the connection can carry another request: [`Conn::clean`], and no close or bytes
    /// from the upstream since (one read with a no-op waker).
    fn reusable(&mut self) -> bool {
        if !self.clean() {
            return false;
        }
        // A plain socket without read readiness since its last read has had nothing come (no
        // bytes, no close: the read below would find the same without a system call); seen from
        // the readiness alone, ~150 instructions a request fewer. A TLS session is read: it may
        // hold a record (a `close_notify`) its socket no longer shows.
        if let MaybeTls::Plain(tcp) = &self.io
            && tcp.try_io(Interest::READABLE, || Ok(())).is_err()
        {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        recv::poll_read(&mut cx, &mut self.io, &mut self.read).is_pending()
    }
}

/// What hyper's client knew of a body before sending it, which decides its framing.
fn body_size(body: &UpstreamBody) -> BodySize {
    if body.is_end_stream() {
        return BodySize::Empty;
    }
    match body.size_hint().exact() {
        Some(n) => BodySize::Known(n),
        None => BodySize::Unknown,
    }
}

/// An idle connection and when it became idle.
struct Idle {
    conn: Box<Conn>,
    /// When it came back ([`clock::coarse_monotonic`]: the timeout is 90 s).
    since: Duration,
}

/// One thread's idle connections, by address (an upstream has a handful of addresses).
#[derive(Default)]
struct Pool {
    idle: Vec<(Authority, Vec<Idle>)>,
}

impl Pool {
    fn list(&mut self, addr: &Authority) -> &mut Vec<Idle> {
        // Byte equality: every caller passes the upstream's configured address, so one spelling
        // names one list (`Authority`'s own `==` ignores ASCII case, byte by byte; it was ~140
        // instructions per lookup, two lookups per request).
        let i = match self.idle.iter().position(|(a, _)| a.as_str() == addr.as_str()) {
            Some(i) => i,
            None => {
                self.idle.push((addr.clone(), Vec::new()));
                self.idle.len() - 1
            }
        };
        &mut self.idle[i].1
    }

    /// Drops closed connections and those idle since before `expired`.
    fn reap(&mut self, expired: Duration) {
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
        let expired = clock::coarse_monotonic().checked_sub(IDLE_TIMEOUT);
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
    fn checkin(&self, conn: Box<Conn>) {
        let Some(threads) = self.threads.upgrade() else {
            return;
        };
        let Some(cell) = threads.get() else {
            return; // this thread never sent to the upstream: nobody would take it
        };
        let Ok(mut pool) = cell.try_borrow_mut() else {
            return;
        };
        let list = pool.list(&self.addr);
        if list.len() < MAX_IDLE_PER_ADDRESS {
            list.push(Idle {
                conn,
                since: clock::coarse_monotonic(),
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
        let Some(expired) = clock::coarse_monotonic().checked_sub(IDLE_TIMEOUT) else {
            continue;
        };
        if let Some(cell) = threads.get()
            && let Ok(mut pool) = cell.try_borrow_mut()
        {
            pool.reap(expired);
        }
    }
}

/// An upstream response body, read from its connection on the task that streams it; the
/// connection goes back to its thread's pool as soon as the body has ended (dropped before its
/// end, the connection is closed: the rest of the response is still on it).
pub struct PooledBody {
    inner: Inner,
    /// The head's fields, when they stayed as lines ([`Fields::Lines`]).
    lines: Option<Box<Lines>>,
}

enum Inner {
    /// A body whose connection is driven elsewhere (a spawned upgradeable connection).
    Detached(Incoming),
    Pooled(Pooled),
}

struct Pooled {
    /// `None` once the body has ended or failed.
    conn: Option<Box<Conn>>,
    home: Home,
    reader: Reader,
    /// The response allows another request on the connection.
    keep_alive: bool,
}

impl PooledBody {
    pub fn detached(body: Incoming) -> PooledBody {
        PooledBody {
            inner: Inner::Detached(body),
            lines: None,
        }
    }

    /// The response of `head`, whose body `conn` holds (a bodiless one gives the connection
    /// back at once).
    fn response(head: Head, conn: Box<Conn>, home: Home) -> Response<PooledBody> {
        let mut pooled = Pooled {
            conn: Some(conn),
            home,
            reader: Reader::new(head.framing),
            keep_alive: head.keep_alive,
        };
        if pooled.reader.is_done() {
            pooled.finish();
        }
        Response::from_parts(
            head.parts,
            PooledBody {
                inner: Inner::Pooled(pooled),
                lines: head.lines,
            },
        )
    }
}

impl HeadLines for PooledBody {
    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.lines.take()
    }
}

impl Pooled {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(e) = conn.poll_body(cx) {
            self.conn = None;
            return Poll::Ready(Some(Err(e.into())));
        }
        let frame = std::task::ready!(self.reader.poll_frame(cx, &mut conn.io, &mut conn.read));
        if self.reader.is_done() || !matches!(frame, Some(Ok(_))) {
            self.finish();
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    /// The body has ended (or failed): the connection goes back to the pool if it can carry
    /// another request, else it is closed.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // The socket is not read here: the checkout that takes the connection next reads it
        // (a close or stray bytes from the upstream in between are seen there, and by the reaper).
        if self.reader.is_done() && self.keep_alive && conn.clean() {
            self.home.checkin(conn);
        }
    }
}

impl Drive for PooledBody {
    fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if let Inner::Pooled(Pooled { conn: Some(conn), .. }) = &mut self.inner
            && let Poll::Ready(Err(e)) = conn.poll_send(cx)
            && !matches!(e, ClientError::Io(_))
        {
            conn.body_error = Some(e);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Detached(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Pooled(p) => p.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Detached(body) => body.is_end_stream(),
            Inner::Pooled(p) => p.reader.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Detached(body) => body.size_hint(),
            Inner::Pooled(p) => match p.reader {
                Reader::Length(n) => SizeHint::with_exact(n),
                Reader::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Instant;

    use super::*;

    /// Counts the wakes a future asks for.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A new exchange (`GET /`) on a fresh connection, polled once with `others` exchanges
    /// already under way on this thread; with its upstream's end of the connection and the
    /// count of the wakes it asked for.
    struct Started {
        exchange: Pin<Box<dyn Future<Output = Result<Response<PooledBody>, ExchangeError>> + Send>>,
        upstream: std::net::TcpStream,
        wakes: Arc<Wakes>,
        waker: Waker,
    }

    async fn start(others: usize) -> Started {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let conn = Conn::connect(&addr, Duration::from_secs(5), None).await.unwrap();
        let (upstream, _) = listener.accept().unwrap();
        upstream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let req = Request::get("/")
            .header("host", addr.as_str())
            .body(UpstreamBody::Full(Pieces::new(Vec::new())))
            .unwrap();
        let under_way: Vec<_> = (0..others).map(|_| UnderWay::enter().0).collect();
        let mut exchange: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(conn.exchange(Box::new(req), Pools::default().home(&addr), Fields::Map, None));
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        assert!(exchange.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        drop(under_way);
        Started {
            exchange,
            upstream,
            wakes,
            waker,
        }
    }

    impl Started {
        /// What the upstream has been sent (within 100 ms; blocks this thread meanwhile).
        fn sent(&mut self) -> Vec<u8> {
            let mut buf = [0u8; 512];
            match self.upstream.read(&mut buf) {
                Ok(n) => buf[..n].to_vec(),
                Err(_) => Vec::new(),
            }
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// Lets the runtime run (the flusher, the I/O driver) until `done`, for at most 5 s.
    async fn until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "not within 5 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_exchange_alone_on_its_thread_writes_at_its_first_poll() {
        let mut s = start(0).await;
        assert!(s.sent().starts_with(b"GET / HTTP/1.1\r\n"));
        assert_eq!(s.wakes(), 0);
    }

    /// Beside others, the first poll writes nothing and does not wake its task: the flusher,
    /// queued behind the tasks of the pass, writes the request and registers the exchange's
    /// task for the response, which is then the only thing that wakes it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_held_request_goes_out_after_the_pass_and_its_task_wakes_for_the_response() {
        for others in [1, 3] {
            let mut s = start(others).await;
            assert_eq!(s.sent(), b"", "written before the pass ended");
            tokio::task::yield_now().await;
            assert!(s.sent().starts_with(b"GET / HTTP/1.1\r\n"));
            assert_eq!(s.wakes(), 0, "woken with no response in");
            s.upstream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            until(|| s.wakes() > 0).await;
            let Poll::Ready(Ok(resp)) = s.exchange.as_mut().poll(&mut Context::from_waker(&s.waker)) else {
                panic!("the response is in");
            };
            assert_eq!(resp.status(), 204);
            assert_eq!(held::held_on_this_thread(), 0);
        }
    }

    /// An exchange dropped while its connection is held (its client went away) drops the
    /// connection, and the flusher never writes it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_held_exchange_dropped_is_never_written() {
        let mut s = start(1).await;
        assert_eq!(held::held_on_this_thread(), 1);
        drop(s.exchange);
        assert_eq!(held::held_on_this_thread(), 0);
        tokio::task::yield_now().await;
        s.upstream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.upstream.read(&mut [0u8; 64]).unwrap(), 0, "closed, nothing written");
    }

    /// Polled again before the flusher ran, the exchange takes its connection back and writes
    /// the request itself.
    #[tokio::test(flavor = "current_thread")]
    async fn an_exchange_polled_before_the_flusher_writes_itself() {
        let mut s = start(1).await;
        assert!(
            s.exchange
                .as_mut()
                .poll(&mut Context::from_waker(&s.waker))
                .is_pending()
        );
        assert_eq!(held::held_on_this_thread(), 0);
        assert!(s.sent().starts_with(b"GET / HTTP/1.1\r\n"));
        tokio::task::yield_now().await;
        assert_eq!(s.sent(), b"", "written twice");
    }

    /// A runtime dropped takes its flusher along; the next one on the thread gets its own.
    #[test]
    fn each_runtime_on_a_thread_gets_a_flusher() {
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut s = start(1).await;
                tokio::task::yield_now().await;
                assert!(s.sent().starts_with(b"GET / HTTP/1.1\r\n"));
            });
        }
    }

    /// An idle connection is reusable until its upstream sends something or closes it; either is
    /// seen once the I/O driver has had the event (what `reusable` reads without a system call
    /// on a plain socket).
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_is_reusable_until_its_upstream_writes_or_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let mut quiet = Conn::connect(&addr, Duration::from_secs(5), None).await.unwrap();
        let (_quiet_up, _) = listener.accept().unwrap();
        let mut chatty = Conn::connect(&addr, Duration::from_secs(5), None).await.unwrap();
        let (mut chatty_up, _) = listener.accept().unwrap();
        let mut closed = Conn::connect(&addr, Duration::from_secs(5), None).await.unwrap();
        let (closed_up, _) = listener.accept().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(quiet.reusable() && chatty.reusable() && closed.reusable());

        chatty_up.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").unwrap();
        drop(closed_up);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(quiet.reusable(), "nothing came");
        assert!(!chatty.reusable(), "stray bytes");
        assert!(!closed.reusable(), "closed by the upstream");
    }

    /// Off a current-thread runtime, tasks may move between threads: nothing is held, the
    /// exchange yields once and writes at its next poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_a_current_thread_runtime_an_exchange_yields_once() {
        let mut s = start(1).await;
        assert_eq!(s.sent(), b"");
        assert_eq!(s.wakes(), 1);
        assert!(
            s.exchange
                .as_mut()
                .poll(&mut Context::from_waker(&s.waker))
                .is_pending()
        );
        assert!(s.sent().starts_with(b"GET / HTTP/1.1\r\n"));
    }

    /// The upstream answers before the request body is through, and that body then fails on our
    /// side while the response's phases drive it (`Drive::poll_drive`): the response body ends
    /// with that failure at its next frame, and the connection is not reused.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_body_failing_while_driven_ends_the_response_body() {
        use crate::conn::{ClientBody, TimedBody};
        use crate::h1::head::Framing;
        use crate::metrics::TimeoutKind;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let conn = Conn::connect(&addr, Duration::from_secs(5), None).await.unwrap();
        let (mut upstream, _) = listener.accept().unwrap();
        // Three of the ten bytes are there; the rest never comes (the client is gone below).
        let (body, feed) = crate::h1::lean_body::open(Framing::Length(10), false, BytesMut::from(&b"abc"[..]));
        let body = TimedBody::new(ClientBody::Lean(body), Duration::from_secs(5), TimeoutKind::RequestBody);
        let req = Request::post("/")
            .header("host", addr.as_str())
            .body(UpstreamBody::Plain(body))
            .unwrap();
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .unwrap();
        let resp = conn
            .exchange(Box::new(req), Pools::default().home(&addr), Fields::Map, None)
            .await;
        let mut body = resp.map_err(|e| e.error).unwrap().into_body();
        drop(feed.finish());
        let mut cx = Context::from_waker(Waker::noop());
        body.poll_drive(&mut cx);
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert!(e.to_string().starts_with("request body failed"), "{e}"),
            other => panic!("the response body goes on: {other:?}"),
        }
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(None)));
        let mut sent = Vec::new();
        upstream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let _ = upstream.read_to_end(&mut sent);
        assert!(sent.ends_with(b"\r\n\r\nabc"), "{:?}", String::from_utf8_lossy(&sent));
    }

    #[test]
    fn the_count_goes_back_down_and_does_not_wrap() {
        let before = UNDER_WAY.with(Cell::get);
        let (a, n) = UnderWay::enter();
        assert_eq!(n, before);
        let (b, n) = UnderWay::enter();
        assert_eq!(n, before + 1);
        drop((a, b));
        assert_eq!(UNDER_WAY.with(Cell::get), before);
        UNDER_WAY.with(|n| n.set(0));
        drop(UnderWay);
        assert_eq!(UNDER_WAY.with(Cell::get), 0);
    }
}
