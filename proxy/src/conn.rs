//! Client connections: the accept loop with its connection cap, the timers that bound what a
//! client (or an upstream) can hold, and the body wrappers that enforce them (`limits:`).
//!
//! | what | where | on expiry |
//! |---|---|---|
//! | `listen_max_connections`, `listen_tls[].max_connections`, `limits.max_connections` | [`crate::accept`]: a permit of the listener's semaphore and of the process-wide one per socket, held by [`TimedIo`] (so WebSocket connections count) | not accepted: waits in the listen backlog (`limits.listen_backlog`) until a connection closes |
//! | `limits.max_connections_per_ip` | [`crate::accept`]: a count per client address, shared by all listeners | accepted and closed at once |
//! | `header_read_timeout_ms` | on a TLS listener first the handshake ([`TlsListener::handshake`]); then [`drive`]: to the first request (protocol detection and the HTTP/2 preface included) | connection dropped |
//! | `idle_timeout_ms` | [`drive`]: no request in flight, which includes a later HTTP/1.1 head that does not arrive whole | graceful close (HTTP/2 GOAWAY), then dropped after `header_read_timeout` |
//! | `http2_keep_alive_*` | hyper's HTTP/2 pings | connection closed |
//! | `send_timeout_ms` | HTTP/1.1 and the socket: [`TimedIo`] (a write that makes no progress); HTTP/2 streams: [`StreamExec`] | connection closed / stream reset |
//! | `request_body_timeout_ms` | [`TimedBody`] on the request body | the body fails: 408, or the upstream request is aborted |
//! | `upstreams[].body_timeout_ms` | [`TimedBody`] on the upstream's response body (`upstream.rs`) | the response is cut off |
//!
//! Every expiry is counted in `weft_timeouts_total{kind}`. Cutting a response off drops its
//! body, and with it the request's plugin exchange: its arena slot goes back (after the log
//! phase, if the chain has one).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};
use weft_runtime::view::ClientAddr;

use crate::accept::{self, Acceptor, Admission, ConnPermit, PerIp};
use crate::body::{BoxError, Drive};
use crate::config::Limits;
use crate::forward::ClientIp;
use crate::h1::lean_body::LeanBody;
use crate::h1::lines::{HeadLines, Lines};
use crate::h1::recv::Readiness;
use crate::h1::server::{Graceful, HyperConn, Serving};
use crate::metrics::{self, TimeoutKind};
use crate::timer::Armed;
use crate::tls::MaybeTls;
use crate::tls::server::{TlsInfo, TlsListener};

/// A connection's client, made once per connection and shared by its requests (a pointer each):
/// the address with its text for plugins' views, its `x-forwarded-for` value, and the timer its
/// requests' upstream waits reuse.
pub struct Peer {
    pub addr: ClientAddr,
    pub ip: ClientIp,
    /// Times each request's wait for its upstream's response head (`upstreams[].timeout_ms`), one
    /// request after another ([`Reused`](crate::timer::Reused)).
    pub upstream_timer: crate::timer::Reused,
}

impl Peer {
    pub fn new(remote: SocketAddr) -> Peer {
        Peer {
            addr: ClientAddr::new(remote),
            ip: ClientIp::new(remote.ip()),
            upstream_timer: Default::default(),
        }
    }
}

/// The error a [`TimedBody`] (or a [`TimedIo`] write) fails with when its timer expires.
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub TimeoutKind);

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} timeout", self.0.label())
    }
}

impl std::error::Error for Timeout {}

/// The [`Timeout`] somewhere in `e`'s source chain, if any (hyper wraps body errors).
pub fn timeout_in(e: &(dyn std::error::Error + 'static)) -> Option<TimeoutKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<Timeout>() {
            return Some(t.0);
        }
        if let Some(t) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(t) = t.downcast_ref::<Timeout>()
        {
            return Some(t.0);
        }
        cur = err.source();
    }
    None
}

/// A lazily created, reusable deadline: armed when a wait starts, polled while it lasts. The
/// `Sleep` is allocated the first time a wait starts, so a body that never waits costs nothing.
/// Arming a new wait only reads the clock: the timer keeps its earlier (sooner) deadline and is
/// moved to the current one when it fires, so it is re-registered at most once per period, not
/// once per wait.
#[derive(Default)]
struct Deadline {
    /// The timer, and when the running wait expires (armed when `Some`).
    sleep: Option<Pin<Box<Sleep>>>,
    due: Option<Instant>,
}

impl Deadline {
    /// Starts the wait now (no-op while one is running).
    fn arm(&mut self, after: Duration) {
        if self.due.is_some() {
            return;
        }
        let due = Instant::now() + after;
        self.due = Some(due);
        if self.sleep.is_none() {
            self.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
        }
    }

    /// The wait ended (progress).
    fn disarm(&mut self) {
        self.due = None;
    }

    /// Whether the running wait has expired; registers `cx` for its expiry.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(sleep), Some(due)) = (self.sleep.as_mut(), self.due) else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if sleep.deadline() >= due {
                return true;
            }
            // An earlier wait's deadline: move on to this one's.
            sleep.as_mut().reset(due);
        }
    }
}

/// A body whose next frame must arrive within `timeout` of the wait for it starting: the
/// request body (`limits.request_body_timeout_ms`) and the upstream's response body
/// (`upstreams[].body_timeout_ms`). The wait only runs while the body is polled (its consumer
/// wants the next frame), so a consumer that pauses (backpressure) is not counted against it.
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    kind: TimeoutKind,
    deadline: Deadline,
    failed: bool,
    /// Raised once the body has been read to its end (see [`BodyRead`]).
    read: Option<BodyRead>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration, kind: TimeoutKind) -> Self {
        TimedBody {
            inner,
            timeout,
            kind,
            deadline: Deadline::default(),
            failed: false,
            read: None,
        }
    }
}

impl<B: Drive> Drive for TimedBody<B> {
    fn poll_drive(&mut self, cx: &mut Context<'_>) {
        self.inner.poll_drive(cx);
    }
}

impl<B: HeadLines> HeadLines for TimedBody<B> {
    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.inner.take_lines()
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Some(Err(Box::new(Timeout(this.kind)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.disarm();
                if let Some(read) = &this.read
                    && (frame.is_none() || this.inner.is_end_stream())
                {
                    read.0.store(true, Ordering::Release);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                this.deadline.arm(this.timeout);
                if !this.deadline.expired(cx) {
                    return Poll::Pending;
                }
                this.failed = true;
                metrics::global().timeout(this.kind);
                debug!(kind = this.kind.label(), timeout = ?this.timeout, "body timed out");
                Poll::Ready(Some(Err(Box::new(Timeout(this.kind)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an HTTP/1 request's body was read to its end by the time its response goes out. When
/// it was not (an error answered before the body was forwarded, an upstream that answered
/// early), hyper closes the connection after the response, as the unread rest cannot be told
/// from the next request; the response then says `Connection: close`, so that a keep-alive
/// client does not send its next request on a connection about to close (it would fail with no
/// response at all).
#[derive(Clone, Default)]
pub struct BodyRead(Arc<AtomicBool>);

impl BodyRead {
    /// A flag for `req`'s body: None when there is nothing to watch (HTTP/2, or no body).
    fn watch<B: Body>(req: &Request<B>) -> Option<BodyRead> {
        (req.version() <= http::Version::HTTP_11 && !req.body().is_end_stream()).then(BodyRead::default)
    }

    /// Marks `resp` `Connection: close` when the body was left unread (not on an upgrade).
    fn close_if_unread<B>(read: Option<&BodyRead>, resp: &mut Response<B>) {
        if read.is_some_and(|r| !r.0.load(Ordering::Acquire)) && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
    }
}

/// The request body handlers get: the client's, with `limits.request_body_timeout_ms`.
pub type RequestBody = TimedBody<ClientBody>;

/// A client's request body: hyper's, the lean HTTP/1.1 path's ([`crate::h1::server`]), or none
/// (a request that path served without one).
pub enum ClientBody {
    Hyper(Incoming),
    Lean(LeanBody),
    Empty,
}

impl Drive for ClientBody {}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Lean(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Lean(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Lean(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A client socket with a write timeout (`limits.send_timeout_ms`): a write the kernel does not
/// take (the client does not read) for that long fails, and the connection closes. It also
/// holds the connection's [`ConnPermit`] (`max_connections`, `limits.max_connections_per_ip`),
/// and keeps it after a WebSocket upgrade (hyper hands this same socket to the upgraded
/// connection).
pub struct TimedIo {
    io: TcpStream,
    send_timeout: Duration,
    stall: Deadline,
    failed: bool,
    _permit: ConnPermit,
}

impl TimedIo {
    fn new(io: TcpStream, send_timeout: Duration, permit: ConnPermit) -> Self {
        TimedIo {
            io,
            send_timeout,
            stall: Deadline::default(),
            failed: false,
            _permit: permit,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, Timeout(TimeoutKind::Send))
    }

    /// Runs the stall timer around a write's result.
    fn watch(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => {
                self.stall.arm(self.send_timeout);
                if !self.stall.expired(cx) {
                    return Poll::Pending;
                }
                self.failed = true;
                metrics::global().timeout(TimeoutKind::Send);
                debug!(timeout = ?self.send_timeout, "client took no bytes in time; closing the connection");
                Poll::Ready(Err(Self::timed_out()))
            }
            Poll::Ready(Ok(n)) if n > 0 => {
                self.stall.disarm();
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.failed {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.failed {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// What the HTTP/2 stream task just did, told to its [`StreamExec`] guard through a
// thread-local: the task's poll runs on this thread, and nothing else runs in between.
/// The service returned the response head.
const RESPONDED: u8 = 1;
/// The response body was last polled and gave a frame (now the client's turn).
const BODY_READY: u8 = 2;
/// The response body was last polled and is waiting (for the upstream or a plugin).
const BODY_PENDING: u8 = 4;

thread_local! {
    static MARK: Cell<u8> = const { Cell::new(0) };
}

fn mark_responded() {
    MARK.with(|m| m.set(m.get() | RESPONDED));
}

fn mark_body(pending: bool) {
    let bit = if pending { BODY_PENDING } else { BODY_READY };
    MARK.with(|m| m.set((m.get() & RESPONDED) | bit));
}

/// The executor of hyper's HTTP/2 stream tasks: each runs under a guard that resets the stream
/// when the client takes no bytes of its response for `send_timeout` (it withholds flow-control
/// window, which no socket-level timer sees). The guard runs from the response head on, and
/// only while the body waits for the client, not while it waits for the upstream or a plugin.
#[derive(Clone)]
pub struct StreamExec {
    send_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut guard = SendGuard {
            timeout: self.send_timeout,
            deadline: Deadline::default(),
            armed: false,
            client_turn: false,
        };
        tokio::spawn(async move {
            let mut fut = std::pin::pin!(fut);
            std::future::poll_fn(|cx| guard.poll(fut.as_mut(), cx)).await;
        });
    }
}

struct SendGuard {
    timeout: Duration,
    deadline: Deadline,
    /// The response head went out: the body phase runs.
    armed: bool,
    /// The body gave its last frame and waits for the client to take it.
    client_turn: bool,
}

impl SendGuard {
    fn poll<F: Future<Output = ()>>(&mut self, fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<()> {
        MARK.with(|m| m.set(0));
        if fut.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mark = MARK.with(|m| m.replace(0));
        if mark & RESPONDED != 0 {
            self.armed = true;
            self.client_turn = true;
            self.deadline.disarm();
        }
        if mark & BODY_PENDING != 0 {
            self.client_turn = false;
            self.deadline.disarm();
        } else if mark & BODY_READY != 0 {
            self.client_turn = true;
            self.deadline.disarm();
        }
        if !(self.armed && self.client_turn) {
            return Poll::Pending;
        }
        self.deadline.arm(self.timeout);
        if !self.deadline.expired(cx) {
            return Poll::Pending;
        }
        metrics::global().timeout(TimeoutKind::Send);
        debug!(timeout = ?self.timeout, "HTTP/2 client took no bytes of a response in time; resetting the stream");
        // Dropping the stream task drops its body (and the request's exchange) and resets it.
        Poll::Ready(())
    }
}

/// A response body on its way to the client: tells the HTTP/2 stream guard what the body did,
/// and keeps its request counted as in flight on the connection until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _active: Active,
}

impl<B: HeadLines> HeadLines for Tracked<B> {
    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.inner.take_lines()
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        mark_body(r.is_pending());
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Requests of one connection: started (high 32 bits) and in flight (low 32 bits), one atomic.
#[derive(Default)]
struct ConnState(AtomicU64);

impl ConnState {
    fn snapshot(&self) -> (u64, u64) {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 32, v & 0xffff_ffff)
    }
}

/// One request in flight on a connection, until its response body is dropped.
struct Active(Arc<ConnState>);

impl Active {
    fn start(state: &Arc<ConnState>) -> Active {
        state.0.fetch_add((1 << 32) | 1, Ordering::Relaxed);
        Active(Arc::clone(state))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hyper's connection builder with the HTTP/1.1 and HTTP/2 settings of `limits`.
fn builder(limits: &Limits) -> auto::Builder<StreamExec> {
    let mut b = auto::Builder::new(StreamExec {
        send_timeout: limits.send_timeout,
    });
    // No header-read timer of hyper's: it arms (allocates and registers) a sleep for every
    // request head, ~700 instructions a request (`scripts/callgrind-proxy`). `drive` bounds the
    // first head (`header_read_timeout`) and, as the idle timeout, every later one: a head that
    // has not arrived leaves no request in flight.
    b.http1().timer(TokioTimer::new()).header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    b
}

/// Accepts connections on `listener` (named `name` in metrics) until `shutdown` resolves, then
/// asks every connection to finish (HTTP/1.1 after its response, HTTP/2 with GOAWAY) and waits
/// for them up to `drain`. Serves HTTP/1.1 (with upgrades) and HTTP/2 prior knowledge (h2c).
/// At most `limits.max_connections` connections, `limits.max_connections_per_ip` from one address.
pub async fn serve_connections<H, Fut, B>(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    handle: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> io::Result<()>
where
    H: Fn(Request<RequestBody>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + HeadLines + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let per_ip = limits.max_connections_per_ip.map(PerIp::new);
    let admission = Admission::new(name, None, accept::permits(limits.connection_cap()), per_ip);
    serve_connections_with(listener, admission, limits, None, None, handle, shutdown, drain).await
}

/// [`serve_connections`] with the connection permits shared with other accept loops
/// ([`Admission`]: one per listener, shared by its loops on every serving thread,
/// [`crate::workers`]). With `tls`, each connection first completes a TLS handshake (within
/// `header_read_timeout`) in its own task, and its requests carry a [`TlsInfo`] extension.
#[allow(clippy::too_many_arguments)]
pub async fn serve_connections_with<H, Fut, B>(
    listener: TcpListener,
    admission: Arc<Admission>,
    limits: Limits,
    accepted: Option<prometheus_client::metrics::counter::Counter>,
    tls: Option<Arc<TlsListener>>,
    handle: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> io::Result<()>
where
    H: Fn(Request<RequestBody>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + HeadLines + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(builder(&limits));
    let listener = Acceptor::new(listener)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote, permit) = tokio::select! {
            accepted = listener.accept(&admission) => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    warn!(listener = %admission.label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Some(c) = &accepted {
            c.inc();
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "set_nodelay failed");
        }
        let io = TimedIo::new(stream, limits.send_timeout, permit);
        let Some(tls) = &tls else {
            let io: ClientIo = MaybeTls::Plain(io);
            tokio::spawn(serve_one(
                Arc::clone(&builder),
                io,
                None,
                handle.clone(),
                limits,
                stop_rx.clone(),
                remote,
            ));
            continue;
        };
        let (tls, builder, handle, stop) = (Arc::clone(tls), builder.clone(), handle.clone(), stop_rx.clone());
        tokio::spawn(async move {
            match tls.handshake(io, limits.header_read_timeout).await {
                Ok((io, info)) => {
                    let io: ClientIo = MaybeTls::Tls(Box::new(io));
                    serve_one(builder, io, Some(info), handle, limits, stop, remote).await;
                }
                Err(e) => debug!(%remote, listener = %tls.label, error = %e, "TLS handshake failed"),
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    stop_tx.send_replace(true);
    tokio::select! {
        () = stop_tx.closed() => {}
        () = tokio::time::sleep(drain) => warn!(listener = %admission.label, ?drain, "connections still open after the shutdown timeout"),
    }
    debug!(listener = %admission.label, "drained");
    Ok(())
}

/// A client connection's stream: plain, or TLS over the same timed socket.
pub type ClientIo = MaybeTls<TimedIo, Box<tokio_rustls::server::TlsStream<TimedIo>>>;

/// A plain socket's read readiness as tokio's reactor holds it (no system call). A TLS session
/// may hold a record its socket no longer shows: never known.
impl Readiness for ClientIo {
    #[inline]
    fn known_unreadable(&self) -> bool {
        match self {
            MaybeTls::Plain(timed) => timed.io.try_io(Interest::READABLE, || Ok(())).is_err(),
            MaybeTls::Tls(_) => false,
        }
    }
}

/// Serves the requests of one connection (a [`ClientIo`] in the proxy), to its end (see [`drive`]):
/// on the lean HTTP/1.1 path ([`crate::h1::server`]) until a request that path does not serve
/// hands the connection to hyper's server (`builder`).
fn serve_one<I, H, Fut, B>(
    builder: Arc<auto::Builder<StreamExec>>,
    io: I,
    tls: Option<TlsInfo>,
    handle: H,
    limits: Limits,
    stop: watch::Receiver<bool>,
    remote: SocketAddr,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, Arc<Peer>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + HeadLines + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::default());
    // The address's texts for plugins' views and `x-forwarded-for`, made once for the
    // connection's requests (a pointer per request: the request's future stays as small as with
    // the bare address).
    let client = Arc::new(Peer::new(remote));
    let serve = {
        let state = Arc::clone(&state);
        let request_body_timeout = limits.request_body_timeout;
        move |req: Request<ClientBody>| {
            let active = Active::start(&state);
            let read = BodyRead::watch(&req);
            let mut req = req.map(|b| TimedBody {
                read: read.clone(),
                ..TimedBody::new(b, request_body_timeout, TimeoutKind::RequestBody)
            });
            if let Some(info) = &tls {
                req.extensions_mut().insert(info.clone());
            }
            let fut = handle(req, Arc::clone(&client));
            async move {
                let mut resp = fut.await;
                BodyRead::close_if_unread(read.as_ref(), &mut resp);
                mark_responded();
                resp.map(|inner| Tracked { inner, _active: active })
            }
        }
    };
    let hyper_service = {
        let serve = serve.clone();
        service_fn(move |req: Request<Incoming>| {
            let fut = serve(req.map(ClientBody::Hyper));
            async move {
                let mut resp = fut.await;
                // hyper writes the map: a response's fields kept as lines go into it.
                if let Some(lines) = resp.body_mut().take_lines() {
                    lines.into_map(resp.headers_mut());
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = crate::h1::server::serve(
        io,
        move |parts, body: Option<LeanBody>| {
            serve(Request::from_parts(
                parts,
                body.map_or(ClientBody::Empty, ClientBody::Lean),
            ))
        },
        move |io| -> HyperConn {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), hyper_service)
                .into_owned();
            Box::pin(Graceful(conn))
        },
    );
    drive(conn, state, limits, stop, remote)
}

/// What [`drive`]'s timer watches for next.
enum Watch {
    /// The first request (`header_read_timeout`); looked at every half `idle_timeout` too, so
    /// the idle watch starts soon after it.
    FirstRequest,
    /// No request in flight for `idle_timeout`: checked every half of it; idle when two checks
    /// in a row saw nothing in flight and no request started in between.
    Idle { started: u64, was_idle: bool },
    /// A graceful close is under way; it gets `header_read_timeout` before the drop.
    Closing,
}

/// Runs one connection to its end under its timers (first request, idle, drain).
async fn drive<C>(conn: C, state: Arc<ConnState>, limits: Limits, mut stop: watch::Receiver<bool>, remote: SocketAddr)
where
    C: Serving,
{
    tokio::pin!(conn);
    let first_deadline = Instant::now() + limits.header_read_timeout;
    let period = limits.idle_timeout / 2;
    let timer = tokio::time::sleep_until(first_deadline.min(Instant::now() + period));
    tokio::pin!(timer);
    let mut watch = Watch::FirstRequest;
    let mut draining = false;
    // Whether the stop signal may have come, without polling its `changed()` future: a second
    // receiver that never marks the value seen.
    let probe = stop.clone();
    loop {
        match next_event(conn.as_mut(), timer.as_mut(), &mut stop, &probe, draining).await {
            Event::Conn(result) => {
                if let Err(e) = result {
                    count_hyper_timeout(&*e, &state);
                    debug!(%remote, error = %crate::server::error_chain(&*e), "connection ended with error");
                }
                return;
            }
            Event::Timer => {
                let (started, in_flight) = state.snapshot();
                let now = Instant::now();
                let next = match watch {
                    Watch::FirstRequest if started == 0 && now >= first_deadline => {
                        metrics::global().timeout(TimeoutKind::HeaderRead);
                        debug!(%remote, "no request within header_read_timeout; closing");
                        return;
                    }
                    Watch::FirstRequest if started == 0 => Watch::FirstRequest,
                    Watch::Closing => return,
                    Watch::Idle {
                        started: s,
                        was_idle: true,
                    } if s == started && in_flight == 0 => {
                        metrics::global().timeout(TimeoutKind::Idle);
                        conn.as_mut().graceful_shutdown();
                        Watch::Closing
                    }
                    _ => Watch::Idle {
                        started,
                        was_idle: in_flight == 0,
                    },
                };
                let at = match next {
                    Watch::FirstRequest => first_deadline.min(now + period),
                    Watch::Closing => now + limits.header_read_timeout,
                    Watch::Idle { .. } => now + period,
                };
                watch = next;
                timer.as_mut().reset(at);
            }
            Event::Stop => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What [`next_event`] saw first.
enum Event {
    Conn(Result<(), BoxError>),
    Timer,
    Stop,
}

/// The connection, then its timer, then the stop signal (unless `draining`): the connection
/// first, so that when a request head arrived just as a timer fell due, both ready in one poll,
/// the connection reads (and starts) the request before the timer is looked at (polled in random
/// order, the timer could close a connection with an unread request in its socket, which the
/// kernel answers with a reset). The timer and the stop signal are polled only when they may be
/// ready ([`crate::timer::Armed`]): the task wakes several times per request, for the sockets.
async fn next_event<C>(
    mut conn: Pin<&mut C>,
    mut timer: Pin<&mut Sleep>,
    stop: &mut watch::Receiver<bool>,
    probe: &watch::Receiver<bool>,
    draining: bool,
) -> Event
where
    C: Serving,
{
    let mut changed = std::pin::pin!(stop.changed());
    let (mut timer_armed, mut stop_armed) = (Armed::default(), Armed::default());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Event::Conn(result));
        }
        if timer_armed.poll(timer.as_mut(), cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        if !draining {
            let may_have_come = probe.has_changed().unwrap_or(true);
            if stop_armed.poll_when(changed.as_mut(), may_have_come, cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
        }
        Poll::Pending
    })
    .await
}

/// Counts a connection that hyper ended on one of its own timers: the HTTP/2 keep-alive ping, or
/// the HTTP/1.1 header timer (a later request head; on an idle keep-alive connection, idle).
fn count_hyper_timeout(e: &(dyn std::error::Error + 'static), state: &ConnState) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    if !h.is_timeout() {
        return;
    }
    let kind = if crate::server::error_chain(h).contains("keep-alive") {
        TimeoutKind::Http2KeepAlive
    } else if state.snapshot() == (0, 0) {
        TimeoutKind::HeaderRead
    } else {
        TimeoutKind::Idle
    };
    metrics::global().timeout(kind);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields one frame, then never another.
    struct Stalls(Option<Bytes>);
    impl Body for Stalls {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn timed_body_fails_after_a_stall_and_not_before() {
        let mut body = TimedBody::new(
            Stalls(Some(Bytes::from_static(b"x"))),
            Duration::from_millis(100),
            TimeoutKind::UpstreamBody,
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        let t = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stalled body fails instead of hanging")
            .unwrap()
            .unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100), "{:?}", t.elapsed());
        assert_eq!(timeout_in(&*err), Some(TimeoutKind::UpstreamBody));
        // Failed for good, and said so in its error.
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(err.to_string(), "upstream_body timeout");
    }

    /// Frames from a channel (the sender decides when they come).
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);
    impl Body for Chan {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// Each wait gets the whole timeout, also when an earlier wait's timer is still registered
    /// (it is moved on when it fires, not re-registered per wait).
    #[tokio::test]
    async fn each_wait_gets_the_whole_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = TimedBody::new(Chan(rx), Duration::from_millis(1000), TimeoutKind::RequestBody);
        let t0 = Instant::now();
        tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.send(Bytes::from_static(b"b")).await.unwrap();
            }
        });
        let b = body.frame().await.unwrap().unwrap();
        assert_eq!(b.into_data().unwrap(), "b");
        let second = Instant::now();
        assert!(second - t0 < Duration::from_millis(1000), "came within the first wait");
        let err = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("fails instead of hanging")
            .unwrap()
            .unwrap_err();
        assert!(
            second.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            second.elapsed()
        );
        assert_eq!(timeout_in(&*err), Some(TimeoutKind::RequestBody));
        drop(tx);
    }

    #[test]
    fn timeouts_are_found_through_wrappers() {
        let io = io::Error::new(io::ErrorKind::TimedOut, Timeout(TimeoutKind::Send));
        assert_eq!(timeout_in(&io), Some(TimeoutKind::Send));
        let other = io::Error::other("nope");
        assert_eq!(timeout_in(&other), None);
    }

    #[test]
    fn conn_state_counts_started_and_in_flight() {
        let s = Arc::new(ConnState::default());
        let a = Active::start(&s);
        let b = Active::start(&s);
        assert_eq!(s.snapshot(), (2, 2));
        drop(a);
        assert_eq!(s.snapshot(), (2, 1));
        drop(b);
        assert_eq!(s.snapshot(), (2, 0));
    }

    /// Polls `f` once; whether it finished.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
    }

    /// A request head that reaches a new connection as its `header_read_timeout` falls due is
    /// served, not dropped unread (closing a socket with unread bytes makes the kernel answer
    /// the client with a reset). The connection is polled by hand so that the head and the
    /// expired timer are both ready in one poll, as on a busy serving thread.
    #[tokio::test(start_paused = true)]
    async fn a_request_arriving_as_the_first_request_deadline_passes_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let builder = Arc::new(builder(&limits));
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for round in 0..16 {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let (_stop_tx, stop) = watch::channel(false);
            let handle = |_: Request<RequestBody>, _: Arc<Peer>| async {
                Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))
            };
            let mut conn = Box::pin(serve_one(
                Arc::clone(&builder),
                server,
                None,
                handle,
                limits,
                stop,
                remote,
            ));
            assert!(
                !poll_once(&mut conn).await,
                "the connection waits for its first request"
            );
            client.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
            // The deadline passes and the timer fires before the connection is polled again.
            tokio::time::advance(limits.header_read_timeout).await;
            tokio::task::yield_now().await;
            let closed = poll_once(&mut conn).await;
            assert!(
                !closed,
                "round {round}: the connection was closed with its request unread"
            );
            tokio::spawn(conn);
            let mut got = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(1), client.read(&mut got))
                .await
                .expect("an answer")
                .unwrap();
            let head = String::from_utf8_lossy(&got[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        }
    }
}
