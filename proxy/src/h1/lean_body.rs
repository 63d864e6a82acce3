//! A request body on the lean HTTP/1.1 path ([`super::server`]): cut out of the connection's
//! read buffer by its framing (`content-length` or chunked, [`super::recv::Reader`]) as the
//! request's future asks for it.
//!
//! The body and the connection share one small state ([`Inflow`]): the connection lends it its
//! read buffer for the request's life, the body takes frames from it, and only the connection's
//! task reads the socket: when the body found the buffer short it says so (`wants`) and, if it
//! was polled from another task, wakes the connection's; the connection then reads once and
//! wakes the body. Nothing is read for the body until it asks (the client's bytes wait in the
//! socket: a body nobody reads holds no memory here), and once the body is whole the connection
//! watches the socket as for a bodiless request (bytes of a pipelined request kept, the client's
//! close seen). A client that sent `expect: 100-continue` gets `100 Continue` when the body first
//! asks for bytes it has not sent, unless the response has begun (as hyper's server does). The
//! connection takes its buffer back after the response; a body not read to its end by then
//! leaves the connection to be closed (its rest cannot be told from a next request).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::head::Framing;
use super::recv::{self, Reader};
use crate::body::BoxError;

/// Why a lean request body failed.
#[derive(Debug, thiserror::Error)]
pub enum LeanBodyError {
    #[error("client closed the connection before the end of its request body")]
    Incomplete,
    #[error("malformed request body: {0}")]
    Framing(#[source] super::Error),
    #[error("the request body was read after its connection took its buffer back")]
    Detached,
}

/// What the body and its connection share.
struct Inflow {
    reader: Reader,
    /// The connection's read buffer: the body's bytes first, then any of a pipelined request.
    buf: BytesMut,
    /// The body found the buffer short of its next frame.
    wants: bool,
    /// The client's side ended (or failed) before the body did.
    cut: bool,
    /// The connection took its buffer back.
    detached: bool,
    /// The connection's task is in its poll ([`Feed::begin_poll`] to a `Pending` of
    /// [`Feed::poll_client`]): a body asking for bytes then is read for before that poll ends.
    /// Asked at any other time (from another task, or from the thread's upstream flusher, which
    /// polls with the connection's own waker) it wakes the connection's task.
    in_poll: bool,
    /// `expect: 100-continue`: how much of [`CONTINUE`] went out, while it is owed (it is sent
    /// when the body first asks for bytes the client has not sent, as hyper's server sends it).
    interim: Option<usize>,
    /// Whoever polled the body last and found it short: woken by the read for it.
    body: Option<Waker>,
    /// The connection's task, from its last watch.
    conn: Option<Waker>,
}

fn lock(shared: &Mutex<Inflow>) -> MutexGuard<'_, Inflow> {
    // A panic under the lock leaves the state as consistent as between any two steps.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body of a request the lean path serves (`http_body::Body`).
pub struct LeanBody {
    shared: Arc<Mutex<Inflow>>,
    /// Every frame was given out (the reader is done: it gets there only in `poll_frame`), kept
    /// here so `is_end_stream`, asked after each frame, takes no lock.
    ended: bool,
}

/// The connection's side of a [`LeanBody`].
pub struct Feed {
    shared: Arc<Mutex<Inflow>>,
}

/// What the connection's watch of its client saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Client {
    /// Nothing: poll again when woken.
    Pending,
    /// Bytes for the body came: poll the request again.
    Progress,
    /// The client closed its side or its socket failed: the request is over.
    Gone,
}

/// The interim response to `expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A body framed by `framing` (`Length` or `Chunked`) whose bytes start `buf` (the connection's
/// read buffer, lent until [`Feed::finish`]); `expect_continue`: the client waits for
/// [`CONTINUE`] before it sends the body.
pub fn open(framing: Framing, expect_continue: bool, buf: BytesMut) -> (LeanBody, Feed) {
    debug_assert!(matches!(framing, Framing::Length(1..) | Framing::Chunked));
    let shared = Arc::new(Mutex::new(Inflow {
        reader: Reader::new(framing),
        buf,
        wants: false,
        cut: false,
        detached: false,
        in_poll: false,
        interim: expect_continue.then_some(0),
        body: None,
        conn: None,
    }));
    (
        LeanBody {
            shared: Arc::clone(&shared),
            ended: false,
        },
        Feed { shared },
    )
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut guard = lock(&this.shared);
        let s = &mut *guard;
        if s.detached {
            return Poll::Ready(Some(Err(LeanBodyError::Detached.into())));
        }
        let taken = s.reader.take(&mut s.buf);
        this.ended = s.reader.is_done();
        match taken {
            Err(e) => return Poll::Ready(Some(Err(framing_error(e).into()))),
            Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
            Ok(None) if this.ended => return Poll::Ready(None),
            Ok(None) if s.cut => return Poll::Ready(Some(Err(LeanBodyError::Incomplete.into()))),
            Ok(None) => {}
        }
        s.wants = true;
        if !s.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.body = Some(cx.waker().clone());
        }
        // Asked outside the connection's poll: it reads only when polled, so it is woken to. (Not
        // by comparing wakers: the upstream flusher polls with the connection's own.)
        if !s.in_poll
            && let Some(conn) = &s.conn
        {
            conn.wake_by_ref();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        match lock(&self.shared).reader {
            Reader::Length(left) => SizeHint::with_exact(left),
            Reader::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn framing_error(e: recv::BodyError) -> LeanBodyError {
    match e {
        recv::BodyError::Framing(e) => LeanBodyError::Framing(e),
        // `Reader::take` reads nothing: only its framing can fail.
        recv::BodyError::Io(_) | recv::BodyError::Incomplete => LeanBodyError::Incomplete,
    }
}

/// Writes the rest of [`CONTINUE`] from `*sent` (kept up to date across waits) and flushes it.
fn poll_interim<I: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    sent: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *sent < CONTINUE.len() {
        match ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[*sent..])) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => *sent += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(&mut *io).poll_flush(cx)
}

impl Feed {
    /// The connection's task begins a poll of the request (and of this watch after it).
    pub fn begin_poll(&self) {
        lock(&self.shared).in_poll = true;
    }

    /// The connection's watch of its client while the request is under way: reads the socket
    /// once for the body when it asked for bytes (first sending [`CONTINUE`] if it is owed and
    /// `before_response`: once the response has begun it is not sent); once the body is whole,
    /// watches as [`super::server`] does for a bodiless request (`gone`, over the buffer kept
    /// here).
    pub fn poll_client<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut I,
        before_response: bool,
        gone: impl FnOnce(&mut Context<'_>, &mut I, &mut BytesMut) -> Poll<()>,
    ) -> Client {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        if !s.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.conn = Some(cx.waker().clone());
        }
        let watched = Self::watch(s, cx, io, before_response, gone);
        // `Pending`: the connection's poll ends here, until the socket or the body wakes it.
        s.in_poll = watched != Client::Pending;
        watched
    }

    fn watch<I: AsyncRead + AsyncWrite + Unpin>(
        s: &mut Inflow,
        cx: &mut Context<'_>,
        io: &mut I,
        before_response: bool,
        gone: impl FnOnce(&mut Context<'_>, &mut I, &mut BytesMut) -> Poll<()>,
    ) -> Client {
        if s.reader.is_done() {
            return match gone(cx, io, &mut s.buf) {
                Poll::Ready(()) => Client::Gone,
                Poll::Pending => Client::Pending,
            };
        }
        if s.cut {
            return Client::Gone;
        }
        if !s.wants {
            return Client::Pending;
        }
        if let Some(sent) = &mut s.interim {
            if before_response && s.buf.is_empty() {
                match poll_interim(cx, io, sent) {
                    Poll::Pending => return Client::Pending,
                    Poll::Ready(Err(_)) => {
                        s.cut = true;
                        return Client::Gone;
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
            // Sent, or no longer to be sent: the client sent body bytes without waiting, or the
            // response has begun (the client then sends the body or not; the connection closes
            // after the response if it is unread).
            s.interim = None;
        }
        // Room for what is still to come, up to `recv::MAX_BODY_READ`: an upload goes through in
        // large reads and frames.
        let left = s.reader.left();
        let cut = match recv::poll_read_body(cx, io, &mut s.buf, left) {
            Poll::Pending => return Client::Pending,
            Poll::Ready(Ok(0) | Err(_)) => true,
            Poll::Ready(Ok(_)) => false,
        };
        s.wants = false;
        s.cut = cut;
        // Woken even when it is this task's own waker: whoever polled the body last (an upstream
        // writer the request's next poll may not reach, the thread's upstream flusher with this
        // task's waker) polls it again.
        if let Some(body) = s.body.take() {
            body.wake();
        }
        if cut { Client::Gone } else { Client::Progress }
    }

    /// Before the response's first byte: a [`CONTINUE`] begun is written to its end (so the
    /// response does not start inside it); one not begun is no longer sent.
    pub fn poll_settle_interim<I: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<std::io::Result<()>> {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        if let Some(sent) = &mut s.interim
            && *sent > 0
        {
            match poll_interim(cx, io, sent) {
                Poll::Pending => {
                    s.in_poll = false;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        s.interim = None;
        Poll::Ready(Ok(()))
    }

    /// Takes the connection's buffer back after the response: `Some` (with any bytes of a
    /// pipelined request) when the body was read to its end, `None` when the connection must
    /// close. A body not read to its end and still held somewhere fails from now on.
    pub fn finish(self) -> Option<BytesMut> {
        let mut s = lock(&self.shared);
        s.detached = true;
        s.conn = None;
        let whole = s.reader.is_done() && !s.cut;
        whole.then(|| {
            recv::shrink_idle(&mut s.buf);
            std::mem::take(&mut s.buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    fn never_gone<I>(_: &mut Context<'_>, _: &mut I, _: &mut BytesMut) -> Poll<()> {
        Poll::Pending
    }

    /// Serves one body from `wire` (sent in pieces of `step` bytes) the way the connection's
    /// loop does, the body read on another task; returns what the body gave and the feed's
    /// buffer back.
    async fn serve(
        framing: Framing,
        first: &'static [u8],
        wire: &'static [u8],
        step: usize,
    ) -> (Result<Vec<u8>, String>, Option<BytesMut>) {
        let (mut client, mut io) = tokio::io::duplex(64);
        let (body, feed) = open(framing, false, BytesMut::from(first));
        tokio::spawn(async move {
            for piece in wire.chunks(step) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // The client's side stays open: an end of stream would cut the body.
            std::future::pending::<()>().await;
        });
        let reading = tokio::spawn(async move {
            match body.collect().await {
                Ok(c) => Ok(c.to_bytes().to_vec()),
                Err(e) => Err(e.to_string()),
            }
        });
        let mut reading = std::pin::pin!(reading);
        let got = std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(r) = reading.as_mut().poll(cx) {
                    return Poll::Ready(r.unwrap());
                }
                match feed.poll_client(cx, &mut io, true, never_gone) {
                    Client::Pending => return Poll::Pending,
                    Client::Progress => {}
                    Client::Gone => return Poll::Ready(Err("gone".into())),
                }
            }
        })
        .await;
        (got, feed.finish())
    }

    #[tokio::test]
    async fn a_body_read_on_another_task_gets_every_byte_and_pipelined_bytes_stay() {
        for step in [1, 3, 64] {
            let (got, buf) = serve(Framing::Length(11), b"hel", b"lo, world", step).await;
            assert_eq!(got.unwrap(), &b"hello, world"[..11], "step {step}");
            // Two bytes past the length were read with the body's: they are the next request's.
            let rest = buf.expect("read to its end");
            assert!(rest.len() <= 1, "step {step}: {rest:?}");
            let (got, buf) = serve(Framing::Chunked, b"", b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET", step).await;
            assert_eq!(got.unwrap(), b"abcde", "step {step}");
            let rest = buf.expect("read to its end");
            assert!(b"GET".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[tokio::test]
    async fn a_malformed_chunk_fails_the_body_and_the_connection_closes() {
        let (got, buf) = serve(Framing::Chunked, b"zz\r\n", b"", 1).await;
        assert!(got.unwrap_err().contains("malformed request body"));
        assert!(buf.is_none(), "not read to its end: the connection closes");
    }

    #[tokio::test]
    async fn a_client_closing_mid_body_is_gone_and_the_body_fails() {
        let (mut client, mut io) = tokio::io::duplex(64);
        let (mut body, feed) = open(Framing::Length(10), false, BytesMut::from(&b"abc"[..]));
        client.write_all(b"de").await.unwrap();
        drop(client);
        let mut data = Vec::new();
        let gone = std::future::poll_fn(|cx| {
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        data.extend_from_slice(f.data_ref().unwrap());
                        continue;
                    }
                    Poll::Ready(other) => panic!("{:?}", other.map(|r| r.map(|_| ()))),
                    Poll::Pending => {}
                }
                match feed.poll_client(cx, &mut io, true, never_gone) {
                    Client::Progress => {}
                    Client::Pending => return Poll::Pending,
                    Client::Gone => return Poll::Ready(()),
                }
            }
        });
        gone.await;
        assert_eq!(data, b"abcde");
        let err = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("before the end of its request body"), "{err}");
        assert!(feed.finish().is_none());
        let err = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("after its connection took its buffer back"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn nothing_is_read_until_the_body_asks() {
        let (mut client, mut io) = tokio::io::duplex(64);
        let (body, feed) = open(Framing::Length(4), false, BytesMut::new());
        client.write_all(b"abcd").await.unwrap();
        let watched = std::future::poll_fn(|cx| Poll::Ready(feed.poll_client(cx, &mut io, true, never_gone))).await;
        assert_eq!(watched, Client::Pending, "the body has not asked");
        assert_eq!(body.size_hint().exact(), Some(4));
        assert!(!body.is_end_stream());
        let mut body = body;
        let pending = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending())).await;
        assert!(pending);
        let watched = std::future::poll_fn(|cx| Poll::Ready(feed.poll_client(cx, &mut io, true, never_gone))).await;
        assert_eq!(watched, Client::Progress);
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), "abcd");
        assert!(body.is_end_stream());
        assert_eq!(feed.finish().map(|b| b.len()), Some(0));
    }
}
