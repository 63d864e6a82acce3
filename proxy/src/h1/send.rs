//! Writing a request: its head, then its body as the body yields it, framed as the head said
//! ([`super::encode`]). The head and the first piece of a body that is ready go out in one
//! vectored write; a body that is not ready yet (a client still uploading) is written as it
//! comes, while the caller reads the response on the same task.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::Body;
use tokio::io::AsyncWrite;

use super::ClientError;
use super::encode::{BodyEncoding, LAST_CHUNK, chunk_size};
use crate::body::BoxError;

/// A data piece at most this long is copied into the write buffer rather than written from its
/// own bytes, so several can go in one write.
const SMALL_PIECE: usize = 4 * 1024;
/// Pieces are gathered into the write buffer while it holds at most this much unwritten.
const GATHER: usize = 16 * 1024;

/// A request on its way out. The bytes to write are the connection's buffer (`out`, the head
/// first, then framing) and the current data piece.
pub struct Sending<B> {
    body: B,
    /// The body has ended (or, framed as empty, is not read).
    ended: bool,
    encoding: BodyEncoding,
    /// Bytes a `content-length` body still owes.
    left: u64,
    /// Written bytes of `out`.
    pos: usize,
    data: Bytes,
    /// A chunk's data has gone out: its CRLF goes before what follows.
    crlf: bool,
    /// Some byte was written, or some of the body was taken: the request cannot be handed back.
    started: bool,
    /// The body failed after pieces before it were gathered: given once those are written.
    failed: Option<ClientError>,
}

impl<B: Body<Data = Bytes> + Unpin> Sending<B>
where
    B::Error: Into<BoxError>,
{
    /// `out` already holds the head, written with `encoding`.
    pub fn new(body: B, encoding: BodyEncoding) -> Sending<B> {
        let left = match encoding {
            BodyEncoding::Length(n) => n,
            BodyEncoding::Chunked | BodyEncoding::Close => 0,
        };
        Sending {
            body,
            // A body framed as empty is not read: hyper's client sent none for it either.
            ended: encoding == BodyEncoding::Length(0),
            encoding,
            left,
            pos: 0,
            data: Bytes::new(),
            crlf: false,
            started: false,
            failed: None,
        }
    }

    /// Nothing was written and nothing taken from the body: the request can go elsewhere whole.
    pub fn untouched(&self) -> bool {
        !self.started
    }

    pub fn into_body(self) -> B {
        self.body
    }

    /// Writes until the whole request is out (flushed), the body or the socket has nothing
    /// ready, or something fails.
    pub fn poll_send<W>(&mut self, cx: &mut Context<'_>, io: &mut W, out: &mut Vec<u8>) -> Poll<Result<(), ClientError>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            let pending = self.data.is_empty() && self.poll_gathered(cx, out)?.is_pending();
            if self.pos < out.len() || !self.data.is_empty() {
                let n = ready!(self.poll_write(cx, io, out)).map_err(ClientError::Io)?;
                self.advance(n, out);
                continue;
            }
            out.clear();
            self.pos = 0;
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(ClientError::Io)?;
            if pending {
                return Poll::Pending;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Takes the body's next frames into the bytes to write: a small one is copied into `out`
    /// and the next is taken too, while `out` holds little (so small pieces that are ready
    /// together, as a chunked response's chunks read at once, go out in one write, as hyper's
    /// buffered writes send them); a larger one waits in `data`. `Pending` when the body has
    /// nothing ready.
    fn poll_gathered(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Result<(), ClientError>> {
        if let Some(e) = self.failed.take() {
            if self.pos < out.len() {
                // Not all written yet: the error waits for it.
                self.failed = Some(e);
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(e));
        }
        let mut copied = false;
        loop {
            match self.poll_body(cx, out) {
                // What was copied goes out now; the body is polled again after, or its error
                // given then (the bytes before a failure are written, as without gathering).
                Poll::Pending if copied => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) if copied => {
                    self.failed = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if self.ended || self.data.len() > SMALL_PIECE || out.len() - self.pos + self.data.len() > GATHER {
                return Poll::Ready(Ok(()));
            }
            out.extend_from_slice(&self.data);
            self.data = Bytes::new();
            copied = true;
        }
    }

    /// Takes the body's next frame into the bytes to write; `Pending` when it has none ready.
    fn poll_body(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Result<(), ClientError>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                self.started = true;
                Poll::Ready(Err(ClientError::Body(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // Request trailers are dropped (hyper's client sent them only when a `trailer`
                // header announced them; docs/architecture.md lists this difference).
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    self.started = true;
                    self.queue(data, out)?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(self.end(out))
            }
        }
    }

    fn queue(&mut self, data: Bytes, out: &mut Vec<u8>) -> Result<(), ClientError> {
        match self.encoding {
            BodyEncoding::Length(_) => {
                self.left = self
                    .left
                    .checked_sub(data.len() as u64)
                    .ok_or(ClientError::BodyLength)?;
            }
            BodyEncoding::Close => {}
            BodyEncoding::Chunked => {
                if std::mem::replace(&mut self.crlf, true) {
                    out.extend_from_slice(b"\r\n");
                }
                chunk_size(data.len(), out);
            }
        }
        self.data = data;
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), ClientError> {
        match self.encoding {
            BodyEncoding::Length(_) if self.left > 0 => Err(ClientError::BodyLength),
            BodyEncoding::Length(_) | BodyEncoding::Close => Ok(()),
            BodyEncoding::Chunked => {
                if std::mem::take(&mut self.crlf) {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(LAST_CHUNK);
                Ok(())
            }
        }
    }

    fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut W,
        out: &[u8],
    ) -> Poll<io::Result<usize>> {
        let bufs = [IoSlice::new(&out[self.pos..]), IoSlice::new(&self.data)];
        let n = ready!(Pin::new(io).poll_write_vectored(cx, &bufs))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        Poll::Ready(Ok(n))
    }

    fn advance(&mut self, n: usize, out: &[u8]) {
        self.started = true;
        let head = (out.len() - self.pos).min(n);
        self.pos += head;
        self.data.advance(n - head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Pieces;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt as _;

    async fn send<B>(body: B, encoding: BodyEncoding) -> (Result<(), ClientError>, Vec<u8>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        // A small pipe: the writes are partial and wait for the reader.
        let (mut w, mut r) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        });
        let mut out = b"HEAD\r\n".to_vec();
        let mut sending = Sending::new(body, encoding);
        let result = std::future::poll_fn(|cx| sending.poll_send(cx, &mut w, &mut out)).await;
        drop(w);
        (result, reader.await.unwrap().unwrap())
    }

    fn pieces(p: &[&'static [u8]]) -> Pieces {
        Pieces::new(p.iter().map(|b| Bytes::from_static(b)).collect())
    }

    #[tokio::test]
    async fn bodies_are_framed_as_the_head_said() {
        let (r, wire) = send(pieces(&[b"hello", b" world"]), BodyEncoding::Length(11)).await;
        assert!(r.is_ok());
        assert_eq!(wire, b"HEAD\r\nhello world");
        let (r, wire) = send(pieces(&[b"hello", b"", b" world!"]), BodyEncoding::Chunked).await;
        assert!(r.is_ok());
        assert_eq!(wire, b"HEAD\r\n5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n");
        let (r, wire) = send(pieces(&[]), BodyEncoding::Chunked).await;
        assert!(r.is_ok());
        assert_eq!(wire, b"HEAD\r\n0\r\n\r\n");
        let (r, wire) = send(pieces(&[b"ignored"]), BodyEncoding::Length(0)).await;
        assert!(r.is_ok());
        assert_eq!(wire, b"HEAD\r\n");
    }

    /// Counts the writes it takes.
    struct Counting {
        writes: usize,
        wire: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.wire.extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let n = bufs.iter().map(|b| b.len()).sum();
            for b in bufs {
                self.wire.extend_from_slice(b);
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_pieces_ready_together_go_out_in_one_write_large_ones_from_their_own_bytes() {
        let small: Vec<&'static [u8]> = vec![b"0123456789"; 100];
        let mut w = Counting {
            writes: 0,
            wire: Vec::new(),
        };
        let mut out = b"HEAD\r\n".to_vec();
        let mut sending = Sending::new(pieces(&small), BodyEncoding::Chunked);
        std::future::poll_fn(|cx| sending.poll_send(cx, &mut w, &mut out))
            .await
            .unwrap();
        let want: Vec<u8> = b"HEAD\r\n"
            .iter()
            .copied()
            .chain(
                small
                    .iter()
                    .flat_map(|p| b"A\r\n".iter().chain(p.iter()).chain(b"\r\n").copied()),
            )
            .chain(b"0\r\n\r\n".iter().copied())
            .collect();
        assert_eq!(w.wire, want);
        assert_eq!(w.writes, 1, "100 pieces of 10 bytes ready at once: one write");

        // Pieces past the small size are written from their own bytes, one write each.
        static BIG: [u8; 3 * SMALL_PIECE] = [b'x'; 3 * SMALL_PIECE];
        let mut w = Counting {
            writes: 0,
            wire: Vec::new(),
        };
        let mut out = b"HEAD\r\n".to_vec();
        let mut sending = Sending::new(pieces(&[&BIG, &BIG]), BodyEncoding::Length(2 * BIG.len() as u64));
        std::future::poll_fn(|cx| sending.poll_send(cx, &mut w, &mut out))
            .await
            .unwrap();
        assert_eq!(w.wire.len(), 6 + 2 * BIG.len());
        assert_eq!(w.writes, 2);
    }

    #[tokio::test]
    async fn a_body_not_matching_its_length_or_failing_is_an_error() {
        let (r, _) = send(pieces(&[b"hello"]), BodyEncoding::Length(4)).await;
        assert!(matches!(r, Err(ClientError::BodyLength)));
        let (r, _) = send(pieces(&[b"hello"]), BodyEncoding::Length(6)).await;
        assert!(matches!(r, Err(ClientError::BodyLength)));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Err("cut".into())];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let (r, wire) = send(body, BodyEncoding::Chunked).await;
        assert!(matches!(r, Err(ClientError::Body(e)) if e.to_string() == "cut"));
        assert!(wire.starts_with(b"HEAD\r\n2\r\nab"), "{wire:?}");
    }
}
