//! Reading a response: bytes from the connection into its read buffer, and the body cut out of
//! that buffer by its framing ([`super::head::Framing`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use hyper::body::Frame;
use tokio::io::AsyncRead;

use super::Error;
use super::chunked::{Chunk, Decoder};
use super::head::Framing;

/// The read buffer grows by this much when it runs out (hyper's client read this much at first).
const READ_CHUNK: usize = 8192;

/// Reads what the connection has into the spare room of `buf`; `Ok(0)` at end of stream.
pub fn poll_read<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut R,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// A stream whose read readiness can be looked at without reading it.
pub trait Readiness {
    /// Whether the stream is known to have nothing to read (no bytes, no close): its reactor has
    /// not reported it readable since a read found it empty. `false` when that is not known.
    fn known_unreadable(&self) -> bool;
}

/// In-memory streams (tests): never known.
impl Readiness for tokio::io::DuplexStream {
    fn known_unreadable(&self) -> bool {
        false
    }
}

/// The most room made for one read of a body: a large body is read (and goes on) in pieces of up
/// to this much, not of the head's 8 KiB (hyper's reads grow to about 400 KiB).
pub const MAX_BODY_READ: usize = 256 * 1024;
/// The room made for a body of unknown length (until the end of the stream).
const UNKNOWN_BODY_READ: usize = 64 * 1024;

/// [`poll_read`] for a body of which `left` bytes are still to come (`None`: not known): room is
/// made for up to all of them, at most [`MAX_BODY_READ`].
pub fn poll_read_body<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut R,
    buf: &mut BytesMut,
    left: Option<u64>,
) -> Poll<io::Result<usize>> {
    let want = left.map_or(UNKNOWN_BODY_READ, |n| {
        usize::try_from(n).unwrap_or(usize::MAX).min(MAX_BODY_READ)
    });
    // A new block only when a quarter of the room wanted is not there: the room left after a
    // read is read into next (the frames cut from the block before keep it alive, so each
    // `reserve` here is an allocation).
    if want > READ_CHUNK && buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    poll_read(cx, io, buf)
}

/// Drops an empty buffer that grew for a large body, so an idle connection keeps a small one
/// (the next read makes its 8 KiB again).
pub fn shrink_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::new();
    }
}

/// Why a response body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection failed mid-body: {0}")]
    Io(#[source] io::Error),
    #[error("upstream closed the connection before the end of the body")]
    Incomplete,
    #[error(transparent)]
    Framing(#[from] Error),
}

/// Where a response body is.
#[derive(Debug)]
pub enum Reader {
    Length(u64),
    Chunked(Decoder),
    /// Until end of stream.
    Close,
    /// Read to its end (trailers, if any, given out).
    Done,
}

impl Reader {
    pub fn new(framing: Framing) -> Reader {
        match framing {
            Framing::Empty => Reader::Done,
            Framing::Length(n) => Reader::Length(n),
            Framing::Chunked => Reader::Chunked(Decoder::default()),
            Framing::Close => Reader::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Reader::Done)
    }

    /// How many bytes of the body are still to come, when known (of a chunked body: of its
    /// current chunk, when its data is under way).
    pub fn left(&self) -> Option<u64> {
        match self {
            Reader::Length(n) => Some(*n),
            Reader::Chunked(dec) => dec.data_left(),
            Reader::Close => None,
            Reader::Done => Some(0),
        }
    }

    /// The body's next frame: from what `buf` holds, else after reading more from `io`.
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
        buf: &mut BytesMut,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        loop {
            if let Some(frame) = self.take(buf).transpose() {
                return Poll::Ready(Some(frame));
            }
            if self.is_done() {
                shrink_idle(buf);
                return Poll::Ready(None);
            }
            match ready!(poll_read_body(cx, io, buf, self.left())) {
                Ok(0) if matches!(self, Reader::Close) => {
                    *self = Reader::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(BodyError::Incomplete))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
            }
        }
    }

    /// A frame from `buf`, if it holds one; bytes past the body's end stay there.
    #[inline]
    pub(super) fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<bytes::Bytes>>, BodyError> {
        match self {
            Reader::Done => Ok(None),
            _ if buf.is_empty() && !matches!(self, Reader::Chunked(_)) => Ok(None),
            Reader::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                if *left == 0 {
                    *self = Reader::Done;
                }
                Ok(Some(Frame::data(buf.split_to(n).freeze())))
            }
            Reader::Close => Ok(Some(Frame::data(buf.split().freeze()))),
            Reader::Chunked(dec) => match dec.decode(buf)? {
                None => Ok(None),
                Some(Chunk::Data(data)) => Ok(Some(Frame::data(data))),
                Some(Chunk::End(trailers)) => {
                    *self = Reader::Done;
                    Ok(trailers.map(Frame::trailers))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// Reads a whole body framed by `framing` from `wire`, sent in pieces of `step` bytes;
    /// returns the data and what stayed in the buffer.
    async fn read(framing: Framing, wire: &'static [u8], step: usize) -> (Result<Vec<u8>, BodyError>, BytesMut) {
        let (mut up, mut io) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for piece in wire.chunks(step) {
                if up.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let (mut reader, mut buf, mut data) = (Reader::new(framing), BytesMut::new(), Vec::new());
        loop {
            match std::future::poll_fn(|cx| reader.poll_frame(cx, &mut io, &mut buf)).await {
                None => return (Ok(data), buf),
                Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(e)) => return (Err(e), buf),
            }
        }
    }

    #[tokio::test]
    async fn each_framing_reads_its_body_in_any_pieces() {
        for step in [1, 2, 3, 7, 64] {
            let (data, rest) = read(Framing::Length(5), b"hello", step).await;
            assert_eq!((data.unwrap(), rest.len()), (b"hello".to_vec(), 0), "step {step}");
            let (data, _) = read(Framing::Chunked, b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", step).await;
            assert_eq!(data.unwrap(), b"hello", "step {step}");
            let (data, _) = read(Framing::Close, b"hello, until the end", step).await;
            assert_eq!(data.unwrap(), b"hello, until the end", "step {step}");
        }
    }

    #[tokio::test]
    async fn a_large_body_is_read_in_large_pieces_and_the_buffer_shrinks_after() {
        let body = vec![b'x'; 600 * 1024];
        let (mut up, mut io) = tokio::io::duplex(1 << 20);
        up.write_all(&body).await.unwrap();
        let mut reader = Reader::new(Framing::Length(body.len() as u64));
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut sizes = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| reader.poll_frame(cx, &mut io, &mut buf)).await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), body.len());
        assert!(
            sizes.len() <= 4 && sizes.iter().any(|&n| n >= MAX_BODY_READ / 2),
            "pieces of up to MAX_BODY_READ, not of the head's 8 KiB: {sizes:?}"
        );
        assert!(
            buf.capacity() <= 4 * READ_CHUNK,
            "an idle connection keeps a small buffer"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_extra_bytes_stay() {
        let (data, _) = read(Framing::Length(9), b"hello", 2).await;
        assert!(matches!(data, Err(BodyError::Incomplete)));
        let (data, _) = read(Framing::Chunked, b"5\r\nhello\r\n", 3).await;
        assert!(matches!(data, Err(BodyError::Incomplete)));
        let (data, _) = read(Framing::Chunked, b"5\r\nhelloXX", 3).await;
        assert!(matches!(data, Err(BodyError::Framing(Error::Chunk(_)))));
        let (data, rest) = read(Framing::Length(5), b"helloHTTP/1.1 200 OK\r\n", 64).await;
        assert_eq!(data.unwrap(), b"hello");
        assert_eq!(
            &rest[..],
            b"HTTP/1.1 200 OK\r\n",
            "bytes after the body are left for the caller"
        );
    }
}
