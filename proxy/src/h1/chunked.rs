//! A chunked body (RFC 9112 §7.1), decoded from bytes as they arrive: a chunk-size line, its
//! data, CRLF, and after the last (zero) chunk the trailer section.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::Error;
use super::head::{MAX_HEAD, MAX_HEADERS};

/// Bytes a chunk-size line (with its extensions) may take before it is refused.
const MAX_SIZE_LINE: usize = 4096;

/// One step of a decoded body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    /// The body ended, with the trailers it had.
    End(Option<HeaderMap>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// The decoder's place in the body between reads.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder { state: State::Size }
    }
}

impl Decoder {
    /// Takes what it can from the front of `buf`: data, the end, or `None` when it needs more
    /// bytes. Bytes after the end stay in `buf` (the caller must not reuse a connection that
    /// has any: a response was not asked for).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, Error> {
        loop {
            match self.state {
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        let _ = buf.split_to(n);
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_SIZE_LINE => {
                        return Err(Error::Chunk("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(httparse::InvalidChunkSize) => return Err(Error::Chunk("bad chunk size")),
                },
                State::Data(left) => return Ok(self.data(buf, left)),
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Chunk("no CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => return self.trailers(buf),
                State::Done => return Ok(Some(Chunk::End(None))),
            }
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the current chunk's data still to come, when its data is under way.
    pub fn data_left(&self) -> Option<u64> {
        match self.state {
            State::Data(left) => Some(left),
            _ => None,
        }
    }

    fn data(&mut self, buf: &mut BytesMut, left: u64) -> Option<Chunk> {
        if buf.is_empty() {
            return None;
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let rest = left - n as u64;
        self.state = if rest == 0 { State::DataEnd } else { State::Data(rest) };
        Some(Chunk::Data(buf.split_to(n).freeze()))
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, Error> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (n, map) = match httparse::parse_headers(buf, &mut raw) {
            Ok(httparse::Status::Complete((n, raw))) => (n, trailer_map(raw)?),
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::Chunk("trailers too long")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Error::Chunk("malformed trailers")),
        };
        let _ = buf.split_to(n);
        self.state = State::Done;
        Ok(Some(Chunk::End(map)))
    }
}

fn trailer_map(raw: &[httparse::Header<'_>]) -> Result<Option<HeaderMap>, Error> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Chunk("trailer name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Chunk("trailer value"))?;
        map.append(name, value);
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-sum: 12\r\n\r\nNEXT";

    /// Feeds the pieces one by one; returns the data, the trailers, and what followed the body.
    fn feed(pieces: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), Error> {
        let mut dec = Decoder::default();
        let (mut buf, mut data) = (BytesMut::new(), Vec::new());
        for (k, piece) in pieces.iter().enumerate() {
            buf.extend_from_slice(piece);
            while let Some(chunk) = dec.decode(&mut buf)? {
                match chunk {
                    Chunk::Data(d) => data.extend_from_slice(&d),
                    Chunk::End(t) => {
                        assert!(dec.is_done());
                        pieces[k + 1..].iter().for_each(|p| buf.extend_from_slice(p));
                        return Ok((data, t, buf));
                    }
                }
            }
        }
        Err(Error::Chunk("input ended before the body"))
    }

    #[test]
    fn a_body_split_at_every_pair_of_boundaries_decodes_the_same() {
        for i in 0..BODY.len() {
            for j in i..BODY.len() {
                let (data, trailers, rest) = feed(&[&BODY[..i], &BODY[i..j], &BODY[j..]]).unwrap();
                assert_eq!(data, b"hello, world", "split at {i}, {j}");
                assert_eq!(trailers.unwrap()["x-sum"], "12");
                assert_eq!(&rest[..], b"NEXT", "bytes after the body stay for the caller");
            }
        }
    }

    #[test]
    fn a_body_without_trailers_ends_with_none() {
        let (data, trailers, rest) = feed(&[b"3\r\nabc\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((&data[..], trailers, rest.len()), (&b"abc"[..], None, 0));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let cases: [&[u8]; 5] = [
            b"z\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            b"-1\r\n",
        ];
        for raw in cases {
            assert!(feed(&[raw]).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_SIZE_LINE]].concat();
        assert_eq!(feed(&[&long]).unwrap_err(), Error::Chunk("chunk-size line too long"));
    }
}
