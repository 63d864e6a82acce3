//! Bodies through plugins: the streamed body wrapper, the bounded collector of the
//! buffered mode, the body sent upstream, and the handle that keeps a request's
//! [`Exchange`] alive while its bodies stream.
//!
//! A streamed body is pulled by hyper (the upstream connection for a request body, the client
//! connection for a response body). Each chunk hyper reads is handed to
//! [`Exchange::body_chunk`] as the same `Bytes` (no copy); what comes back (the chunk itself,
//! or slices of the plugin's arena-leased replacement bytes) is handed on to hyper as is. Memory
//! per stream is bounded by the chunks in flight: hyper pulls the next chunk only after the
//! previous one was written, so a body of any size streams in constant memory.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use weft_runtime::budget::{ByteBudget, Charge};
use weft_runtime::{BodyAbort, BodySide, BoxedExchange, Exchange};

use crate::conn::RequestBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An exchange shared by the request-body stream and the handler (and later the response
/// body): the phases of one request never run at the same time, the lock makes sure of it
/// even when the upstream answers while the request body is still streaming.
pub type SharedExchange = Arc<tokio::sync::Mutex<Exchange>>;

/// The exchange of a request, owned or shared; kept alive by the response body so that its
/// log phase runs (and its slot returns) after the response.
//
// The owned exchange is boxed (`BoxedExchange`: a log phase that goes on on the log thread
// takes that box there): one allocation per request with plugins, where inline it made every `Keep` 288
// bytes, and with it the stages' state, every reply and every response body (`Option<Keep>` in
// `ProxyBody`, plugins or not), each moved several times per request: a `memcpy` of those bytes
// at each move (`scripts/callgrind-proxy`, docs/performance-log.md).
pub enum Keep {
    Owned(BoxedExchange),
    Shared(SharedExchange),
}

/// Exclusive access to the exchange for one phase.
pub enum Guard<'a> {
    Owned(&'a mut Exchange),
    Shared(tokio::sync::MutexGuard<'a, Exchange>),
}

impl Deref for Guard<'_> {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        match self {
            Guard::Owned(x) => x,
            Guard::Shared(g) => g,
        }
    }
}

impl DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Exchange {
        match self {
            Guard::Owned(x) => x,
            Guard::Shared(g) => g,
        }
    }
}

impl Keep {
    /// Waits for the exchange (a streaming request body may hold it for one chunk).
    pub async fn lock(&mut self) -> Guard<'_> {
        match self {
            Keep::Owned(x) => Guard::Owned(x),
            Keep::Shared(s) => Guard::Shared(s.lock().await),
        }
    }

    /// [`lock`](Self::lock) for a phase after the response head, while `body` (the upstream's
    /// response) goes on sending the request body. An upstream may answer before a streamed
    /// request body is through (an echo does): that body's chunk call may hold the exchange
    /// (a plugin on the worker pool, or tokio's budget pausing the lock just taken), and once
    /// the head is in, nothing but the response body polls the request body again; waiting
    /// without it would wait for ever.
    pub async fn lock_driving(&mut self, body: &mut impl Drive) -> Guard<'_> {
        match self {
            Keep::Owned(x) => Guard::Owned(x),
            Keep::Shared(s) => {
                let mut lock = std::pin::pin!(s.lock());
                let guard = std::future::poll_fn(|cx| {
                    if let Poll::Ready(guard) = lock.as_mut().poll(cx) {
                        return Poll::Ready(guard);
                    }
                    body.poll_drive(cx);
                    lock.as_mut().poll(cx)
                })
                .await;
                Guard::Shared(guard)
            }
        }
    }

    /// Whether the exchange must outlive the response head: its chain has a log phase (which
    /// runs on the request's slot after the response), or it is shared with a body stream still
    /// running (which holds its own handle anyway) and busy right now.
    pub fn needed_after_head(&self) -> bool {
        match self {
            Keep::Owned(x) => x.runs_log_phase(),
            Keep::Shared(s) => s.try_lock().map_or(true, |x| x.runs_log_phase()),
        }
    }

    /// Whether a later phase still needs the exchange after the request-headers phases (see
    /// [`Exchange::needed_after_request_headers`]); a shared one is in use by a body stream.
    pub fn needed_after_request_headers(&self) -> bool {
        match self {
            Keep::Owned(x) => x.needed_after_request_headers(),
            Keep::Shared(_) => true,
        }
    }

    /// The shared handle (an owned exchange moves into a new one), for a body stream.
    pub fn into_shared(self) -> SharedExchange {
        match self {
            Keep::Owned(x) => Arc::new(tokio::sync::Mutex::new(x.into_inner())),
            Keep::Shared(s) => s,
        }
    }
}

/// A body that, polled, also moves along another stream that shares the exchange: the
/// upstream's response body, whose connection still carries the request body when the
/// upstream answered early (see [`Keep::lock_driving`]).
pub trait Drive {
    /// Sends what it can of that other stream (registering `cx` where it waits); nothing by
    /// default.
    fn poll_drive(&mut self, _cx: &mut Context<'_>) {}
}

type ChunkFuture = Pin<Box<dyn Future<Output = Result<Vec<Bytes>, BodyAbort>> + Send>>;

enum State {
    /// Pulling chunks from the inner body.
    Reading,
    /// The end-of-stream call is done; trailers (if any) are left to send.
    Trailers(Option<HeaderMap>),
    Done,
}

/// A body streamed through the body plugins of one side of an exchange.
pub struct PluginBody<B> {
    inner: B,
    x: SharedExchange,
    side: BodySide,
    queue: VecDeque<Bytes>,
    pending: Option<(ChunkFuture, bool)>,
    trailers: Option<HeaderMap>,
    state: State,
}

impl<B> PluginBody<B> {
    pub fn new(inner: B, x: SharedExchange, side: BodySide) -> Self {
        PluginBody {
            inner,
            x,
            side,
            queue: VecDeque::new(),
            pending: None,
            trailers: None,
            state: State::Reading,
        }
    }

    fn start(&mut self, chunk: Bytes, end: bool) {
        let x = Arc::clone(&self.x);
        let side = self.side;
        let fut: ChunkFuture = Box::pin(async move {
            let mut guard = x.lock_owned().await;
            let mut out = Vec::new();
            guard.body_chunk(side, chunk, end, &mut out).await?;
            Ok(out)
        });
        self.pending = Some((fut, end));
    }
}

impl<B> Body for PluginBody<B>
where
    B: Body<Data = Bytes> + Drive + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if let Some((fut, end)) = this.pending.as_mut() {
                let end = *end;
                let Poll::Ready(result) = fut.as_mut().poll(cx) else {
                    // The call may wait for the exchange, which a request body's call can hold:
                    // that body is sent by polling the inner one (`Keep::lock_driving`).
                    this.inner.poll_drive(cx);
                    return Poll::Pending;
                };
                this.pending = None;
                match result {
                    Ok(out) => this.queue.extend(out),
                    Err(abort) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(abort))));
                    }
                }
                if end {
                    this.state = State::Trailers(this.trailers.take());
                }
                continue;
            }
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Trailers(t) => {
                    let t = t.take();
                    this.state = State::Done;
                    match t {
                        Some(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        None => return Poll::Ready(None),
                    }
                }
                State::Reading => {}
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let end = this.inner.is_end_stream();
                        if chunk.is_empty() && !end {
                            continue;
                        }
                        this.start(chunk, end);
                    }
                    Err(frame) => {
                        // Trailers end the body: sent after the end-of-stream call.
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                        this.start(Bytes::new(), true);
                    }
                },
                Some(Err(e)) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => this.start(Bytes::new(), true),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.queue.is_empty() && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The plugins may change the length: never exact.
        SizeHint::default()
    }
}

/// A body made of pieces whose total is known (buffered mode: sent with an exact
/// `content-length`, without joining the pieces).
pub struct Pieces {
    pieces: VecDeque<Bytes>,
    remaining: u64,
}

impl Pieces {
    pub fn new(pieces: Vec<Bytes>) -> Self {
        let remaining = pieces.iter().map(|b| b.len() as u64).sum();
        Pieces {
            pieces: pieces.into(),
            remaining,
        }
    }

    pub fn len(&self) -> u64 {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.pieces.pop_front() {
            Some(b) => {
                self.remaining -= b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The request body sent upstream.
// Boxing the plugin variant would cost an allocation per request with a body plugin.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamBody {
    /// Untouched (no body plugin, or all skipped it).
    Plain(RequestBody),
    /// Through streamed body plugins. Boxed: the request (this body included) is held by value
    /// in every future of the forward path, so its size counts many times over in each request.
    Plugin(Box<PluginBody<RequestBody>>),
    /// The result of buffered body plugins.
    Full(Pieces),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Plain(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Plugin(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Full(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
            UpstreamBody::Plugin(b) => b.is_end_stream(),
            UpstreamBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain(b) => b.size_hint(),
            UpstreamBody::Plugin(b) => b.size_hint(),
            UpstreamBody::Full(b) => b.size_hint(),
        }
    }
}

/// Why a body could not be collected for a buffered plugin.
#[derive(Debug)]
pub enum CollectError {
    /// Longer than the limit (`content-length` said so, or the bytes did).
    TooLarge { limit: usize },
    /// Holding more would pass the process-wide budget of buffered bodies
    /// (`runtime.max_buffered_bytes_total`): `want` more bytes with `in_use` of `limit` held.
    OverBudget { want: u64, in_use: u64, limit: u64 },
    /// The peer's body failed (reset, malformed framing, disconnect).
    Failed(BoxError),
}

impl std::fmt::Display for CollectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CollectError::TooLarge { limit } => write!(f, "longer than max_buffered_body_bytes ({limit})"),
            CollectError::OverBudget { want, in_use, limit } => write!(
                f,
                "{want} more bytes would pass runtime.max_buffered_bytes_total ({in_use} of {limit} bytes held by buffered bodies)"
            ),
            CollectError::Failed(e) => write!(f, "body failed: {e}"),
        }
    }
}

/// Collects a whole body, failing as soon as it exceeds `limit` bytes, or as soon as the memory
/// it takes would pass `budget`: every byte is charged before it is held (the first chunk as
/// received, then the buffer the chunks are joined in, grown by doubling up to the known length
/// or `limit`). One contiguous `Bytes`: a single chunk is taken as is, several are joined; it
/// gives its charge back when its last slice is dropped.
pub async fn collect_limited<B>(mut body: B, limit: usize, budget: &Arc<ByteBudget>) -> Result<Bytes, CollectError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge { limit });
    }
    let mut charge = budget.try_charge(0).expect("a charge of nothing always fits");
    let over = |want: usize| CollectError::OverBudget {
        want: want as u64,
        in_use: budget.used(),
        limit: budget.limit(),
    };
    let mut first: Option<Bytes> = None;
    let mut buf = Joined::default();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Failed(e.into()))?;
        let Ok(chunk) = frame.into_data() else { continue };
        if chunk.is_empty() {
            continue;
        }
        total += chunk.len();
        if total > limit {
            return Err(CollectError::TooLarge { limit });
        }
        if first.is_none() && buf.cap == 0 {
            if !charge.try_grow(chunk.len() as u64) {
                return Err(over(chunk.len()));
            }
            first = Some(chunk);
            continue;
        }
        // The most this body can still grow to: its announced length, or the limit.
        let most = body
            .size_hint()
            .exact()
            .map_or(limit, |rest| total + rest as usize)
            .min(limit);
        if !buf.reserve(total, most, &mut charge) {
            return Err(over(total - buf.bytes.len()));
        }
        if let Some(f) = first.take() {
            buf.bytes.extend_from_slice(&f);
            charge.release(f.len() as u64);
        }
        buf.bytes.extend_from_slice(&chunk);
    }
    Ok(match first {
        Some(f) => weft_runtime::budget::charged_bytes(f, charge),
        None if buf.cap > 0 => weft_runtime::budget::charged_bytes(buf.bytes, charge),
        None => Bytes::new(),
    })
}

/// The buffer a body's chunks are joined in, with the capacity charged for it.
#[derive(Default)]
struct Joined {
    bytes: Vec<u8>,
    /// Capacity reserved (and charged).
    cap: usize,
}

impl Joined {
    /// Makes room for `need` bytes: doubles the capacity (up to `most`), or takes exactly `need`
    /// when the doubling does not fit the budget. `false` when not even that fits.
    fn reserve(&mut self, need: usize, most: usize, charge: &mut Charge) -> bool {
        if need <= self.cap {
            return true;
        }
        let doubled = need.max(self.cap * 2).min(most.max(need));
        let cap = if charge.grow_if_room((doubled - self.cap) as u64) {
            doubled
        } else if charge.try_grow((need - self.cap) as u64) {
            need
        } else {
            return false;
        };
        self.bytes.reserve_exact(cap - self.bytes.len());
        self.cap = cap;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A body of several data frames.
    struct Chunks(VecDeque<Bytes>);
    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect())
    }

    #[tokio::test]
    async fn collect_limited_joins_and_limits() {
        let budget = ByteBudget::new(1 << 20);
        let a = collect_limited(Full::new(Bytes::from_static(b"abc")), 3, &budget)
            .await
            .unwrap();
        assert_eq!(&a[..], b"abc");
        // Content-length over the limit: refused before reading.
        assert!(matches!(
            collect_limited(Full::new(Bytes::from_static(b"abcd")), 3, &budget).await,
            Err(CollectError::TooLarge { limit: 3 })
        ));
        let b = collect_limited(chunks(&["ab", "", "cd", "e"]), 5, &budget)
            .await
            .unwrap();
        assert_eq!(&b[..], b"abcde");
        // No length known up front: refused once the bytes pass the limit.
        assert!(matches!(
            collect_limited(chunks(&["ab", "cd", "e"]), 4, &budget).await,
            Err(CollectError::TooLarge { limit: 4 })
        ));
        assert!(collect_limited(chunks(&[]), 0, &budget).await.unwrap().is_empty());
        drop((a, b));
        assert_eq!(budget.used(), 0, "every charge given back");
    }

    #[tokio::test]
    async fn collected_bodies_are_charged_until_dropped() {
        let budget = ByteBudget::new(10);
        // One chunk: charged as received; given back when the last slice goes.
        let one = collect_limited(chunks(&["abcdef"]), 100, &budget).await.unwrap();
        assert_eq!(budget.used(), 6);
        let tail = one.slice(3..);
        drop(one);
        assert_eq!(budget.used(), 6);
        drop(tail);
        assert_eq!(budget.used(), 0);
        // Joined: the buffer is charged; what does not fit is refused, not allocated.
        let held = collect_limited(chunks(&["ab", "cd", "ef"]), 100, &budget)
            .await
            .unwrap();
        assert_eq!(&held[..], b"abcdef");
        assert!((6..=8).contains(&budget.used()), "{}", budget.used());
        let e = collect_limited(chunks(&["ab", "cd", "ef"]), 100, &budget)
            .await
            .unwrap_err();
        assert!(matches!(e, CollectError::OverBudget { limit: 10, .. }), "{e}");
        assert!(e.to_string().contains("runtime.max_buffered_bytes_total"), "{e}");
        assert_eq!(budget.refusals(), 1);
        drop(held);
        assert_eq!(budget.used(), 0, "the refused body gave back what it had");
        // Doubling that does not fit falls back to the exact size (not a refusal).
        let b = collect_limited(chunks(&["abc", "def", "g", "hij"]), 100, &budget)
            .await
            .unwrap();
        assert_eq!((&b[..], budget.used(), budget.refusals()), (&b"abcdefghij"[..], 10, 1));
    }

    #[tokio::test]
    async fn pieces_have_an_exact_length() {
        let p = Pieces::new(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]);
        assert_eq!(p.size_hint().exact(), Some(5));
        let all = p.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcde");
    }
}
