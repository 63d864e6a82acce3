//! The response head: status line and headers through `httparse`, then the body's framing
//! (RFC 9112 §6.3) and whether the connection can be reused.

use http::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::response::Parts;
use http::{Response, StatusCode, Version};

use super::Error;

/// Headers a response head may have: hyper's client default (`DEFAULT_MAX_HEADERS`).
pub const MAX_HEADERS: usize = 100;
/// Bytes a response head may take: hyper's client default read buffer limit
/// (`DEFAULT_MAX_BUFFER_SIZE`, 8 KiB + 100 × 4 KiB), which bounds the head it can parse.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or `content-length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection, which then cannot be reused.
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    pub parts: Parts,
    pub framing: Framing,
    /// The connection may carry another request once this body has been read to its end.
    pub keep_alive: bool,
}

/// What a buffer starting with a response head holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// An informational head (100 Continue, 103 Early Hints) of this many bytes: skip it and
    /// parse the next head.
    Informational(usize),
    /// A final head of this many bytes; its body follows.
    Final(usize, Box<Head>),
}

/// Parses the head at the start of `buf`; `head_request`: the request was a HEAD (no body).
/// A 101 is a final head with no body: upgrades are not this client's (the pool hands them to
/// hyper), and the caller must not reuse the connection after it.
pub fn parse(buf: &[u8], head_request: bool) -> Result<Parsed, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf).map_err(Error::Head)? {
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge(MAX_HEAD)),
        httparse::Status::Partial => return Ok(Parsed::Partial),
        httparse::Status::Complete(len) => len,
    };
    let status = StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| Error::Header("status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Informational(len));
    }
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let headers = header_map(res.headers)?;
    let framing = framing(status, version, &headers, head_request)?;
    let keep_alive =
        status != StatusCode::SWITCHING_PROTOCOLS && framing != Framing::Close && keeps_alive(version, &headers);
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Final(
        len,
        Box::new(Head {
            parts,
            framing,
            keep_alive,
        }),
    ))
}

fn header_map(raw: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Header("name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Header("value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The body's framing, refusing what a strict client refuses (RFC 9112 §6.3): both
/// transfer-encoding and content-length, content-lengths that differ or do not parse, a
/// transfer-encoding that does not end in chunked, and transfer-encoding on HTTP/1.0.
fn framing(status: StatusCode, version: Version, headers: &HeaderMap, head_request: bool) -> Result<Framing, Error> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::Http10TransferEncoding);
        }
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(Error::TransferEncodingAndLength);
        }
        return if ends_in_chunked(headers) {
            Ok(Framing::Chunked)
        } else {
            Err(Error::NotChunked)
        };
    }
    match content_length(headers)? {
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::Close),
    }
}

/// Whether the last coding of the (possibly repeated, comma-separated) transfer-encoding is
/// chunked.
pub(super) fn ends_in_chunked(headers: &HeaderMap) -> bool {
    let last = headers.get_all(TRANSFER_ENCODING).iter().next_back();
    let last = last.and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next());
    last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The content-length, when given; every value (repeated headers, comma-separated lists) must
/// be the same number.
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let value = value.to_str().map_err(|_| Error::BadContentLength)?;
        for n in value.split(',') {
            let n = n.trim();
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadContentLength);
            }
            let n: u64 = n.parse().map_err(|_| Error::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::BadContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// HTTP/1.1 keeps the connection unless `connection: close`; HTTP/1.0 only with `keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Box<Head>, Error> {
        match parse(raw.as_bytes(), false)? {
            Parsed::Final(len, head) => {
                assert_eq!(len, raw.len(), "the head is the whole input");
                Ok(head)
            }
            other => panic!("expected a final head, got {other:?}"),
        }
    }

    #[test]
    fn framing_follows_the_headers() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(7));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap().framing,
            Framing::Empty
        );
    }

    #[test]
    fn bodiless_statuses_and_head_requests_have_no_body() {
        for raw in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        ] {
            let h = head(raw).unwrap();
            assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true), "{raw}");
        }
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n";
        let Parsed::Final(_, h) = parse(raw, true).unwrap() else {
            panic!("final")
        };
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn malformed_framing_is_an_error() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Error::TransferEncodingAndLength,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
                Error::BadContentLength,
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", Error::BadContentLength),
            ("HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n", Error::BadContentLength),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                Error::BadContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Error::NotChunked,
            ),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Error::NotChunked),
            (
                "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Error::Http10TransferEncoding,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(head(raw).unwrap_err(), want, "{raw}");
        }
        assert!(matches!(parse(b"HTTP/1.1 2x0 OK\r\n\r\n", false), Err(Error::Head(_))));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false),
            Err(Error::Head(_))
        ));
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        let ka = |raw: &str| head(raw).unwrap().keep_alive;
        assert!(!ka(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, Close\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"));
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_heads_wait() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let Parsed::Informational(n) = parse(raw, false).unwrap() else {
            panic!("1xx")
        };
        assert!(matches!(parse(&raw[n..], false).unwrap(), Parsed::Final(..)));
        for cut in 0..raw.len() - n {
            assert!(
                matches!(parse(&raw[n..n + cut], false).unwrap(), Parsed::Partial),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_head_past_the_limit_is_an_error() {
        let mut raw = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        raw.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&raw, false).unwrap_err(), Error::HeadTooLarge(MAX_HEAD));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse(raw.as_bytes(), false).unwrap_err(),
            Error::Head(httparse::Error::TooManyHeaders)
        );
    }
}
