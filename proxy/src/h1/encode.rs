//! The request head, written into one buffer the connection reuses, with the body framing
//! hyper's client chose for the same request (so the wire stays as it was).

use http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request};

use crate::forward::Forwarding;

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
/// `forwarding`: this proxy's forwarding fields, written after the request's own.
pub fn head<B>(
    req: &mut Request<B>,
    size: BodySize,
    forwarding: Option<&Forwarding<'_>>,
    out: &mut Vec<u8>,
) -> BodyEncoding {
    let bodiless = matches!(*req.method(), Method::GET | Method::HEAD | Method::CONNECT);
    let encoding = framing(bodiless, req.headers_mut(), size);
    // An empty body is sent without a `transfer-encoding` (as hyper's client does): left out
    // here rather than removed from the map, whose removal of an absent name (the usual case:
    // the client's went as hop-by-hop) hashes and probes it (~90 instructions a request).
    let empty = size == BodySize::Empty;
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if empty && name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(forwarding) = forwarding {
        forwarding.write(out);
    }
    out.extend_from_slice(b"\r\n");
    encoding
}

/// `bodiless`: GET, HEAD or CONNECT, which send no body of unknown size.
fn framing(bodiless: bool, headers: &mut HeaderMap, size: BodySize) -> BodyEncoding {
    let known = match size {
        // `head` leaves out a `transfer-encoding`.
        BodySize::Empty => return BodyEncoding::Length(0),
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
        let enc = head(&mut req, size, None, &mut out);
        (String::from_utf8(out).unwrap(), enc)
    }

    #[test]
    fn forwarding_fields_follow_the_request_s_own_and_replace_the_client_s() {
        use crate::forward::{ClientIp, untrusted_forwarding};
        let client = ClientIp::new("10.0.0.9".parse().unwrap());
        let sent = [
            ("host", "example.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-a", "1"),
            ("x-forwarded-proto", "ftp"),
            ("x-real-ip", "1.1.1.1"),
        ];
        let mut req = Request::builder().uri("/a");
        for (n, v) in sent {
            req = req.header(n, v);
        }
        let mut req = req.body(()).unwrap();
        let host = req.headers().get("host").cloned();
        let fwd = untrusted_forwarding(req.headers_mut(), &client, "https", host.as_ref());
        let mut out = Vec::new();
        head(&mut req, BodySize::Empty, Some(&fwd), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: example.com\r\n\r\n"
        );
        // Put into a map instead, the same fields.
        let mut map = req.headers().clone();
        fwd.into_map(&mut map);
        let fields: Vec<_> = map
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                "host: example.com",
                "x-a: 1",
                "x-forwarded-for: 10.0.0.9",
                "x-forwarded-proto: https",
                "x-forwarded-host: example.com"
            ]
        );
        // Without a host the client named, no `x-forwarded-host`.
        let fwd = untrusted_forwarding(&mut HeaderMap::new(), &client, "http", None);
        let mut out = Vec::new();
        fwd.write(&mut out);
        assert_eq!(out, b"x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n");
    }

    #[test]
    fn a_head_is_written_as_given_with_hyper_s_framing() {
        let (raw, enc) = encode("GET", &[("host", "up"), ("x-a", "1"), ("x-a", "2")], BodySize::Empty);
        assert_eq!(raw, "GET /a/b?c=1 HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!(enc, BodyEncoding::Length(0));
        // An empty body goes without a `transfer-encoding`, whatever the map holds.
        let (raw, enc) = encode(
            "POST",
            &[("transfer-encoding", "chunked"), ("x-a", "1")],
            BodySize::Empty,
        );
        assert_eq!(
            (raw.as_str(), enc),
            ("POST /a/b?c=1 HTTP/1.1\r\nx-a: 1\r\n\r\n", BodyEncoding::Length(0))
        );

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
