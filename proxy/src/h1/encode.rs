//! The request head, written into one buffer the connection reuses, with the body framing
//! hyper's client chose for the same request (so the wire stays as it was).

use http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request};

/// What is known of a request body before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// Ended before it began (`is_end_stream`).
    Empty,
    /// An exact size hint.
    Known(u64),
    Unknown,
}

/// How the body goes on the wire after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// Exactly this many bytes (0: nothing is written).
    Length(u64),
    Chunked,
    /// Until the connection closes (a response of unknown length in an HTTP/1.0 head, from the
    /// lean server path; requests are never framed so).
    Close,
}

/// Appends `req`'s head (origin-form URI, HTTP/1.1) to `out` and returns how to frame its
/// body; framing headers are set as hyper's client sets them (`role::Client::set_length`):
/// given headers win, a known size gets `content-length`, an unknown one `transfer-encoding:
/// chunked`, except that GET, HEAD and CONNECT with an unknown size send no body. Takes the
/// request, not its parts: the caller keeps it whole (boxed) to give it back unsent.
pub fn head<B>(req: &mut Request<B>, size: BodySize, out: &mut Vec<u8>) -> BodyEncoding {
    let bodiless = matches!(*req.method(), Method::GET | Method::HEAD | Method::CONNECT);
    let encoding = framing(bodiless, req.headers_mut(), size);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    encoding
}

/// `bodiless`: GET, HEAD or CONNECT, which send no body of unknown size.
fn framing(bodiless: bool, headers: &mut HeaderMap, size: BodySize) -> BodyEncoding {
    let known = match size {
        BodySize::Empty => {
            headers.remove(TRANSFER_ENCODING);
            return BodyEncoding::Length(0);
        }
        BodySize::Known(n) => Some(n),
        BodySize::Unknown => None,
    };
    if headers.contains_key(TRANSFER_ENCODING) {
        if !super::head::ends_in_chunked(headers) {
            headers.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        headers.remove(CONTENT_LENGTH);
        return BodyEncoding::Chunked;
    }
    // Looked up here, not first: the usual request, without a body, needs no `content-length`
    // lookup (~90 instructions: `scripts/callgrind-proxy`).
    if let Some(n) = super::head::content_length(headers).ok().flatten() {
        return BodyEncoding::Length(n);
    }
    match known {
        Some(n) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            BodyEncoding::Length(n)
        }
        None if bodiless => BodyEncoding::Length(0),
        None => {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            headers.remove(CONTENT_LENGTH);
            BodyEncoding::Chunked
        }
    }
}

/// Appends the chunk-size line of a data chunk of `len` bytes (`len` > 0).
pub fn chunk_size(len: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(out, "{len:X}\r\n");
}

/// The end of a chunked body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(method: &str, headers: &[(&str, &str)], size: BodySize) -> (String, BodyEncoding) {
        let mut req = Request::builder().method(method).uri("/a/b?c=1");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let mut req = req.body(()).unwrap();
        let mut out = Vec::new();
        let enc = head(&mut req, size, &mut out);
        (String::from_utf8(out).unwrap(), enc)
    }

    #[test]
    fn a_head_is_written_as_given_with_hyper_s_framing() {
        let (raw, enc) = encode("GET", &[("host", "up"), ("x-a", "1"), ("x-a", "2")], BodySize::Empty);
        assert_eq!(raw, "GET /a/b?c=1 HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!(enc, BodyEncoding::Length(0));

        let (raw, enc) = encode("POST", &[], BodySize::Known(5));
        assert_eq!(
            (raw.as_str(), enc),
            (
                "POST /a/b?c=1 HTTP/1.1\r\ncontent-length: 5\r\n\r\n",
                BodyEncoding::Length(5)
            )
        );
        let (raw, enc) = encode("POST", &[], BodySize::Unknown);
        assert_eq!(
            (raw.as_str(), enc),
            (
                "POST /a/b?c=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                BodyEncoding::Chunked
            )
        );
        let (_, enc) = encode("POST", &[("content-length", "9")], BodySize::Unknown);
        assert_eq!(enc, BodyEncoding::Length(9), "a given content-length wins");
        let (raw, enc) = encode(
            "PUT",
            &[("transfer-encoding", "gzip"), ("content-length", "3")],
            BodySize::Known(3),
        );
        assert_eq!(
            (raw.as_str(), enc),
            (
                "PUT /a/b?c=1 HTTP/1.1\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
                BodyEncoding::Chunked
            )
        );
        let (raw, enc) = encode("GET", &[], BodySize::Unknown);
        assert_eq!(
            (raw.as_str(), enc),
            ("GET /a/b?c=1 HTTP/1.1\r\n\r\n", BodyEncoding::Length(0))
        );
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        chunk_size(255, &mut out);
        assert_eq!(out, b"FF\r\n");
    }
}
