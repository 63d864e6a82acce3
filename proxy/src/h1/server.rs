//! The lean HTTP/1.1 server path: a client connection's requests read, served and answered on
//! the connection's own task, with no dispatcher between the socket and the request's future.
//!
//! Each head is parsed here ([`super::request`]) when it is a request this path serves: HTTP/1.1
//! with no body or one framed by `content-length` or chunked ([`super::lean_body`]), and nothing
//! asked of the connection but keep-alive, what almost every page, asset, API call and upload
//! is. The first head that is anything else (an upgrade, an `expect` but `100-continue`,
//! HTTP/1.0, an HTTP/2 preface, a malformed or oversized head, a body framed any other way) hands
//! the connection, with every byte read and not yet served, to hyper's server for the rest of its
//! life ([`Rewind`]): hyper serves it as it served every connection before, its answers to bad
//! heads (400, 414, 431) included.
//!
//! While a request is served the socket is still read, as hyper's server reads it: for its body
//! when the body asks, then for bytes of a pipelined next request, which are kept; the client
//! closing its side ends the connection and drops the request (its upstream exchange and plugin
//! slot with it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Response};
use hyper::body::Body;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::encode::BodySize;
use super::head::{Framing, Names};
use super::lean_body::{self, Client, Feed, LeanBody};
use super::lines::HeadLines;
use super::recv::Readiness;
use super::request::{self, MAX_LEAN_HEAD, Parsed};
use super::send::Sending;
use super::{ClientError, recv, respond};
use crate::body::BoxError;

/// A connection being served, as [`crate::conn`]'s timers drive it: a future that ends with the
/// connection, and a graceful shutdown (finish the request under way, then close).
pub trait Serving: Future<Output = Result<(), BoxError>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// A connection hyper serves (everything the lean path hands over).
pub type HyperConn = Pin<Box<dyn Serving>>;

/// hyper's connection as a [`Serving`] one (hyper_util's `GracefulConnection` is sealed).
pub struct Graceful<C>(pub C);

impl<C> Graceful<C> {
    fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        // SAFETY: structural pinning of the only field: `Graceful` never moves it out, has no
        // `Drop`, and is `Unpin` only when `C` is.
        unsafe { self.map_unchecked_mut(|g| &mut g.0) }
    }
}

impl<C> Future for Graceful<C>
where
    C: GracefulConnection<Error: Into<BoxError>> + Send,
{
    type Output = Result<(), BoxError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.conn().poll(cx).map_err(Into::into)
    }
}

impl<C> Serving for Graceful<C>
where
    C: GracefulConnection<Error: Into<BoxError>> + Send,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.conn().graceful_shutdown();
    }
}

/// A connection served by the lean path, or handed on to hyper from it.
pub struct Connection {
    run: Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
    closing: Arc<AtomicBool>,
}

impl Future for Connection {
    type Output = Result<(), BoxError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.run.as_mut().poll(cx)
    }
}

impl Serving for Connection {
    /// Takes effect at the connection's next poll (its driver polls it next): an idle connection
    /// closes, one with a request under way closes after its response (whose head says so when
    /// it was not written yet).
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// Serves `io`: `service` makes each lean request's response (given its body, if it has one);
/// `hyper` takes the connection when a request is not one the lean path serves.
pub fn serve<I, S, Fut, B, H>(io: I, service: S, hyper: H) -> Connection
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    S: FnMut(Parts, Option<LeanBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + HeadLines + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    H: FnOnce(Rewind<I>) -> HyperConn + Send + 'static,
{
    let closing = Arc::new(AtomicBool::new(false));
    let run = Box::pin(run(io, service, hyper, Arc::clone(&closing)));
    Connection { run, closing }
}

/// The read buffer's first size (hyper's server starts with the same).
const READ_BUF: usize = 8192;

async fn run<I, S, Fut, B, H>(mut io: I, mut service: S, hyper: H, closing: Arc<AtomicBool>) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin + Send,
    S: FnMut(Parts, Option<LeanBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + HeadLines + Unpin,
    B::Error: Into<BoxError>,
    H: FnOnce(Rewind<I>) -> HyperConn,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Vec::with_capacity(512);
    let mut names = Names::default();
    // The client's socket has this task's waker from the last request's watch, with no read
    // since (see `NoBody`).
    let mut armed = false;
    loop {
        let (parts, framing) = match read_head(&mut io, &mut buf, &mut names, &closing, armed).await? {
            Head::Lean(parts, framing) => (parts, framing),
            Head::Closed => return Ok(()),
            Head::Hyper(why) => {
                debug!(reason = why.label(), "request handed to hyper's server");
                crate::metrics::global().handoff(why);
                return hand_off(Rewind::new(io, buf.freeze()), hyper, &closing).await;
            }
        };
        let head_request = parts.method == Method::HEAD;
        // A bodiless request (almost every one) is watched by `NoBody`: a copy of the serving
        // code of its own, without the body's branches (fewer instructions and I1 misses).
        let served = match framing {
            Framing::Empty => {
                let fut = std::pin::pin!(service(parts, None));
                let watch = NoBody::default();
                let served = serve_request(&mut io, &mut buf, &watch, fut, &mut out, head_request, &closing).await?;
                armed = watch.armed.load(Ordering::Relaxed);
                served
            }
            framing => {
                armed = false;
                // request.rs let one `expect: 100-continue` through, no other.
                let expect = parts.headers.contains_key(http::header::EXPECT);
                // The body borrows the read buffer (its bytes start it) until the response is sent.
                let (body, feed) = lean_body::open(framing, expect, std::mem::take(&mut buf));
                let fut = std::pin::pin!(service(parts, Some(body)));
                let served = serve_request(&mut io, &mut buf, &feed, fut, &mut out, head_request, &closing).await?;
                match feed.finish() {
                    Some(kept) => {
                        buf = kept;
                        served
                    }
                    // The body's rest cannot be told from a next request (the response said
                    // `connection: close`: `conn::BodyRead`).
                    None => served.map(|_| false),
                }
            }
        };
        let Some(keep) = served else {
            debug!("client closed the connection before its response");
            return Ok(());
        };
        if !keep {
            // A failed shutdown of a connection that is over anyway changes nothing.
            let _ = std::future::poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
            return Ok(());
        }
    }
}

// Returned once a request and moved once: a box would be an allocation a request.
#[allow(clippy::large_enum_variant)]
enum Head {
    Lean(Parts, Framing),
    Hyper(request::Handoff),
    /// The client closed the connection (or the server is shutting down) between requests.
    Closed,
}

/// Reads until the buffer starts with a whole head.
/// `armed`: the client's socket has this task's waker (registered by a read that found nothing)
/// and has not been read since; then a first look that finds it still not readable waits for
/// that waker without a read (~150 instructions a request: `scripts/callgrind-proxy`).
async fn read_head<I: AsyncRead + Readiness + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    names: &mut Names,
    closing: &AtomicBool,
    mut armed: bool,
) -> io::Result<Head> {
    loop {
        match request::parse(buf, names) {
            Parsed::Lean(parts, framing) => return Ok(Head::Lean(parts, framing)),
            Parsed::Hyper(why) => return Ok(Head::Hyper(why)),
            Parsed::Partial => {}
        }
        let n = std::future::poll_fn(|cx| {
            // Idle: a shutdown closes the connection now. A head under way is served first.
            if buf.is_empty() && closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(0));
            }
            if std::mem::take(&mut armed) && io.known_unreadable() {
                return Poll::Pending;
            }
            recv::poll_read(cx, io, buf)
        })
        .await?;
        if n == 0 {
            // A head cut off by the close is dropped, as hyper drops it.
            return Ok(Head::Closed);
        }
    }
}

/// Serves one request whose response `fut` makes, watching the client meanwhile by `watch`:
/// whether the connection may serve another (`None`: the client closed before its response).
async fn serve_request<I, W, F, B>(
    io: &mut I,
    buf: &mut BytesMut,
    watch: &W,
    fut: Pin<&mut F>,
    out: &mut Vec<u8>,
    head_request: bool,
    closing: &AtomicBool,
) -> Result<Option<bool>, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    W: Watch,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + HeadLines + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(resp) = watching(io, buf, watch, fut).await else {
        return Ok(None);
    };
    std::future::poll_fn(|cx| watch.poll_settle(cx, io)).await?;
    respond(io, buf, watch, out, resp, head_request, closing)
        .await
        .map(Some)
}

/// The connection's watch of its client while a request is under way.
trait Watch {
    /// The connection's task begins a poll of the request (and of this watch after it).
    fn begin_poll(&self);
    /// Watches the client (`before_response`: a `100 Continue` may still go).
    fn poll_client<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut I,
        buf: &mut BytesMut,
        before_response: bool,
    ) -> Client;
    /// Before the response's first byte (an interim response begun is finished).
    fn poll_settle<I: AsyncWrite + Unpin>(&self, cx: &mut Context<'_>, io: &mut I) -> Poll<io::Result<()>>;
}

/// A request without a body: only the client's close is watched for. `armed`: the last look
/// found nothing to read and left the task's waker with the socket (a read that got bytes, or
/// a full buffer, which is not read, leaves none).
#[derive(Default)]
struct NoBody {
    armed: AtomicBool,
}

impl Watch for NoBody {
    #[inline]
    fn begin_poll(&self) {}

    #[inline]
    fn poll_client<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut I,
        buf: &mut BytesMut,
        _: bool,
    ) -> Client {
        let gone = poll_gone(cx, io, buf);
        self.armed
            .store(gone.is_pending() && buf.len() < MAX_LEAN_HEAD, Ordering::Relaxed);
        match gone {
            Poll::Ready(()) => Client::Gone,
            Poll::Pending => Client::Pending,
        }
    }

    #[inline]
    fn poll_settle<I: AsyncWrite + Unpin>(&self, _: &mut Context<'_>, _: &mut I) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A request with a body: the watch reads for it ([`Feed`] holds the read buffer then).
impl Watch for Feed {
    fn begin_poll(&self) {
        Feed::begin_poll(self);
    }

    fn poll_client<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut I,
        _: &mut BytesMut,
        before_response: bool,
    ) -> Client {
        Feed::poll_client(self, cx, io, before_response, poll_gone)
    }

    fn poll_settle<I: AsyncWrite + Unpin>(&self, cx: &mut Context<'_>, io: &mut I) -> Poll<io::Result<()>> {
        self.poll_settle_interim(cx, io)
    }
}

/// Polls `fut` to its end; None if the client closed its side first.
async fn watching<I, W, F>(io: &mut I, buf: &mut BytesMut, watch: &W, mut fut: Pin<&mut F>) -> Option<F::Output>
where
    I: AsyncRead + AsyncWrite + Unpin,
    W: Watch,
    F: Future,
{
    std::future::poll_fn(|cx| {
        watch.begin_poll();
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match watch.poll_client(cx, io, buf, true) {
                Client::Pending => return Poll::Pending,
                Client::Gone => return Poll::Ready(None),
                Client::Progress => {}
            }
        }
    })
    .await
}

/// Ready when the client has closed its side (or its socket failed); bytes it sent meanwhile
/// (a pipelined request) are kept, up to [`MAX_LEAN_HEAD`].
fn poll_gone<I: AsyncRead + Unpin>(cx: &mut Context<'_>, io: &mut I, buf: &mut BytesMut) -> Poll<()> {
    while buf.len() < MAX_LEAN_HEAD {
        match recv::poll_read(cx, io, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
        }
    }
    Poll::Pending
}

/// Writes `resp`; whether the connection may serve another request.
async fn respond<I, W, B>(
    io: &mut I,
    buf: &mut BytesMut,
    watch: &W,
    out: &mut Vec<u8>,
    resp: Response<B>,
    head_request: bool,
    closing: &AtomicBool,
) -> Result<bool, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    W: Watch,
    B: Body<Data = Bytes> + HeadLines + Unpin,
    B::Error: Into<BoxError>,
{
    let (mut parts, mut body) = resp.into_parts();
    let lines = body.take_lines();
    let size = if body.is_end_stream() {
        BodySize::Empty
    } else {
        body.size_hint().exact().map_or(BodySize::Unknown, BodySize::Known)
    };
    out.clear();
    let closing = closing.load(Ordering::Relaxed);
    let framed = respond::head(&mut parts, lines.as_deref(), size, head_request, closing, out)?;
    // Written: the head's bytes go now, as a map's values do (not held while the body is sent,
    // which would keep the upstream's read buffer from being reused).
    drop(lines);
    super::head::recycle(std::mem::take(&mut parts.headers));
    let mut sending = Sending::new(body, framed.encoding);
    let sent = std::future::poll_fn(|cx| {
        watch.begin_poll();
        loop {
            let r = sending.poll_send(cx, io, out);
            if r.is_ready() {
                return r;
            }
            match watch.poll_client(cx, io, buf, false) {
                Client::Pending => return Poll::Pending,
                Client::Gone => return Poll::Ready(Err(ClientError::Closed)),
                Client::Progress => {}
            }
        }
    })
    .await;
    match sent {
        Ok(()) => Ok(framed.keep_alive),
        Err(ClientError::Closed) => {
            debug!("client closed the connection during its response");
            Ok(false)
        }
        Err(ClientError::Io(e)) => Err(e.into()),
        Err(ClientError::Body(e)) => Err(e),
        Err(ClientError::BodyLength) => Err("response body length does not match its content-length".into()),
        // `Sending` fails with none of the others.
        Err(e) => Err(e.into()),
    }
}

/// Hands the connection to hyper, passing on a shutdown that came or comes.
async fn hand_off<I, H>(io: Rewind<I>, hyper: H, closing: &AtomicBool) -> Result<(), BoxError>
where
    H: FnOnce(Rewind<I>) -> HyperConn,
{
    let mut conn = hyper(io);
    let mut told = false;
    std::future::poll_fn(|cx| {
        if !told && closing.load(Ordering::Relaxed) {
            told = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// A stream whose first reads give back bytes read from it before (by the lean path).
pub struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    pub fn new(io: I, pre: Bytes) -> Rewind<I> {
        Rewind { pre, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(out.remaining());
            out.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    fn text(s: &'static str) -> TestBody {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync()
    }

    /// hyper's HTTP/1.1 server for what the lean path hands over: it answers `hyper <method>
    /// <body>`.
    fn hyper_side(handed: Arc<AtomicUsize>) -> impl FnOnce(Rewind<DuplexStream>) -> HyperConn {
        move |io| {
            handed.fetch_add(1, Ordering::Relaxed);
            let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await?.to_bytes();
                let text = format!("hyper {method} {}", String::from_utf8_lossy(&body));
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            Box::pin(Graceful(conn))
        }
    }

    type LeanFuture = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;

    /// A lean service answering `lean <path>`, and ` <body>` after it when the request has one
    /// (`error: ...` when the body fails), counting its calls.
    fn lean_side(calls: Arc<AtomicUsize>) -> impl FnMut(Parts, Option<LeanBody>) -> LeanFuture + Send {
        move |parts, body| {
            calls.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let mut text = format!("lean {}", parts.uri.path());
                if let Some(body) = body {
                    match body.collect().await {
                        Ok(data) => text += &format!(" {}", String::from_utf8_lossy(&data.to_bytes())),
                        Err(e) => text += &format!(" error: {e}"),
                    }
                }
                Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed_unsync())
            })
        }
    }

    type ConnTask = tokio::task::JoinHandle<Result<(), BoxError>>;

    /// A connection served by [`lean_side`] with [`hyper_side`] behind it: the client's end, the
    /// lean calls and hand-offs counted, the connection's task.
    fn started() -> (DuplexStream, Arc<AtomicUsize>, Arc<AtomicUsize>, ConnTask) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (calls, handed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let conn = tokio::spawn(serve(server, lean_side(calls.clone()), hyper_side(handed.clone())));
        (client, calls, handed, conn)
    }

    /// Reads until what came has `needle` (or the stream ends).
    async fn read_until(client: &mut DuplexStream, needle: &str) -> String {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut chunk))
                .await
                .expect("the server answers")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_served_in_turn_on_the_lean_path() {
        let (mut client, calls, handed, conn) = started();
        client
            .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        while !(got.matches("HTTP/1.1 200 OK").count() == 3 && got.ends_with("\r\n\r\n")) {
            let more = read_until(&mut client, "\r\n").await;
            assert!(!more.is_empty(), "{got}");
            got.push_str(&more);
        }
        assert!(got.contains("lean /a") && got.contains("lean /b"), "{got}");
        let last = &got[got.rfind("HTTP/1.1").unwrap()..];
        assert!(last.contains("content-length: 7\r\n"), "HEAD keeps the length: {got}");
        assert!(!got.contains("lean /c"), "a HEAD response has no body: {got}");
        assert_eq!((calls.load(Ordering::Relaxed), handed.load(Ordering::Relaxed)), (3, 0));
        drop(client);
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bodies_framed_by_length_or_chunked_are_read_on_the_lean_path() {
        let (mut client, calls, handed, conn) = started();
        // The head and part of its body in one write, the rest after.
        client
            .write_all(b"POST /up HTTP/1.1\r\ncontent-length: 6\r\n\r\nabc")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"def").await.unwrap();
        assert!(
            read_until(&mut client, "lean /up abcdef")
                .await
                .ends_with("lean /up abcdef")
        );
        // Chunked, in pieces, with a pipelined request after it in the last write.
        client
            .write_all(b"PUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        client
            .write_all(b"2\r\nde\r\n0\r\n\r\nGET /after HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut client, "lean /after").await;
        assert!(got.contains("lean /c abcde") && got.ends_with("lean /after"), "{got}");
        // A body bigger than a read: every byte, in order.
        let big: String = (0..20_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let head = format!("POST /big HTTP/1.1\r\ncontent-length: {}\r\n\r\n", big.len());
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(big.as_bytes()).await.unwrap();
        let want = format!("lean /big {big}");
        assert!(read_until(&mut client, &want).await.ends_with(&want));
        assert_eq!((calls.load(Ordering::Relaxed), handed.load(Ordering::Relaxed)), (4, 0));
        drop(client);
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_when_the_body_is_first_waited_for() {
        let (mut client, calls, handed, conn) = started();
        client
            .write_all(b"POST /up HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_until(&mut client, "\r\n\r\n").await,
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
        client.write_all(b"hello").await.unwrap();
        let got = read_until(&mut client, "lean /up hello").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("lean /up hello"),
            "{got}"
        );
        // A body sent without waiting: no interim response.
        client
            .write_all(b"POST /b HTTP/1.1\r\nExpect: 100-Continue\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let got = read_until(&mut client, "lean /b hi").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && !got.contains("100 Continue"),
            "{got}"
        );
        assert_eq!((calls.load(Ordering::Relaxed), handed.load(Ordering::Relaxed)), (2, 0));
        drop(client);
        conn.await.unwrap().unwrap();

        // A handler that answers without reading the body: no interim response, and the
        // connection closes after the answer.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let service = |_: Parts, _: Option<LeanBody>| std::future::ready(Response::new(text("early")));
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client
            .write_all(b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 9\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut client, "never").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("early"),
            "{got}"
        );
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_body_framed_otherwise_hands_the_connection_to_hyper_with_its_bytes() {
        let (mut client, calls, handed, conn) = started();
        client.write_all(b"GET /first HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_until(&mut client, "lean /first").await.contains("lean /first"));
        // The head and part of its body in one write, the rest after.
        client
            .write_all(b"POST /up HTTP/1.1\r\ncontent-length: 6\r\nte: trailers\r\n\r\nabc")
            .await
            .unwrap();
        client.write_all(b"def").await.unwrap();
        assert!(
            read_until(&mut client, "hyper POST abcdef")
                .await
                .contains("hyper POST abcdef")
        );
        // hyper keeps the connection: later plain requests are its too.
        client.write_all(b"GET /later HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_until(&mut client, "hyper GET").await.contains("hyper GET"));
        assert_eq!((calls.load(Ordering::Relaxed), handed.load(Ordering::Relaxed)), (1, 1));
        drop(client);
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_body_left_unread_closes_the_connection_after_the_response() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let service = |_: Parts, _: Option<LeanBody>| std::future::ready(Response::new(text("early")));
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabcGET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut client, "never").await;
        assert!(got.ends_with("early") && got.matches("HTTP/1.1").count() == 1, "{got}");
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_malformed_chunked_body_fails_and_the_connection_closes() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let conn = tokio::spawn(serve(server, lean_side(Arc::default()), hyper_side(Arc::default())));
        client
            .write_all(b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut client, "never").await;
        assert!(got.contains("lean /x error: malformed request body"), "{got}");
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
        conn.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_closing_mid_body_drops_the_request() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let dropped = Arc::new(AtomicBool::new(false));
        let service = {
            let dropped = dropped.clone();
            move |_: Parts, body: Option<LeanBody>| {
                let guard = DropFlag(dropped.clone());
                async move {
                    let _ = body.unwrap().collect().await;
                    std::future::pending::<()>().await;
                    drop(guard);
                    Response::new(text("never"))
                }
            }
        };
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::Relaxed), "served while the client stays");
        client.shutdown().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), conn)
            .await
            .expect("the connection ends")
            .unwrap()
            .unwrap();
        assert!(dropped.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn malformed_heads_get_hyper_s_answer() {
        for (raw, status) in [
            (&b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..], "400"),
            (b"GET http://[::1/x HTTP/1.1\r\n\r\n", "400"),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let handed = Arc::new(AtomicUsize::new(0));
            let conn = tokio::spawn(serve(server, lean_side(Arc::default()), hyper_side(handed.clone())));
            client.write_all(raw).await.unwrap();
            let got = read_until(&mut client, "\r\n\r\n").await;
            assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
            assert_eq!(handed.load(Ordering::Relaxed), 1);
            drop(client);
            let _ = conn.await.unwrap();
        }
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_client_closing_its_side_drops_the_request_under_way() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let dropped = Arc::new(AtomicBool::new(false));
        let service = {
            let dropped = dropped.clone();
            move |_: Parts, _: Option<LeanBody>| {
                let guard = DropFlag(dropped.clone());
                async move {
                    std::future::pending::<()>().await;
                    drop(guard);
                    Response::new(text("never"))
                }
            }
        };
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::Relaxed), "served while the client stays");
        client.shutdown().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), conn)
            .await
            .expect("the connection ends")
            .unwrap()
            .unwrap();
        assert!(dropped.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_shutdown_closes_an_idle_connection_and_ends_one_after_its_response() {
        // Idle: closed at the next poll.
        let (_client, server) = tokio::io::duplex(1 << 16);
        let mut conn = serve(server, lean_side(Arc::default()), hyper_side(Arc::default()));
        let poll = |conn: &mut Connection| {
            let waker = std::task::Waker::noop();
            Pin::new(conn).poll(&mut Context::from_waker(waker)).map(|r| r.is_ok())
        };
        assert!(poll(&mut conn).is_pending());
        Pin::new(&mut conn).graceful_shutdown();
        assert_eq!(poll(&mut conn), Poll::Ready(true));

        // A request under way: answered, with `connection: close`, then the connection ends.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = Some(rx);
        let service = move |_: Parts, _: Option<LeanBody>| {
            let rx = rx.take().expect("one request");
            async move {
                let _ = rx.await;
                Response::new(text("done"))
            }
        };
        let mut conn = serve(server, service, hyper_side(Arc::default()));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::task::yield_now().await;
        assert!(poll(&mut conn).is_pending());
        Pin::new(&mut conn).graceful_shutdown();
        assert!(poll(&mut conn).is_pending(), "the request is still under way");
        tx.send(()).unwrap();
        let conn = tokio::spawn(conn);
        let got = read_until(&mut client, "done").await;
        assert!(got.contains("connection: close\r\n") && got.ends_with("done"), "{got}");
        conn.await.unwrap().unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_streamed_body_is_chunked_and_one_short_of_its_length_ends_the_connection() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let mut rx = Some(rx);
        let service = move |_: Parts, _: Option<LeanBody>| {
            let rx = rx.take().expect("one request");
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            std::future::ready(Response::new(StreamBody::new(stream).boxed_unsync()))
        };
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
        let got = read_until(&mut client, "hello").await;
        assert!(
            got.contains("transfer-encoding: chunked\r\n") && got.ends_with("5\r\nhello"),
            "{got}"
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b" world")))).await.unwrap();
        drop(tx);
        let got = read_until(&mut client, "0\r\n\r\n").await;
        assert_eq!(got, "\r\n6\r\n world\r\n0\r\n\r\n");
        drop(client);
        conn.await.unwrap().unwrap();

        // A length the body does not fill: the connection fails after what it sent.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let service = |_: Parts, _: Option<LeanBody>| {
            // Of unknown size, so the given length frames it.
            let frames = vec![Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc")))];
            let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            resp.headers_mut()
                .insert("content-length", http::HeaderValue::from_static("5"));
            std::future::ready(resp)
        };
        let conn = tokio::spawn(serve(server, service, hyper_side(Arc::default())));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let got = read_until(&mut client, "never").await;
        assert!(got.contains("content-length: 5\r\n") && got.ends_with("abc"), "{got}");
        let err = conn.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("response body length"), "{err}");
    }
}
