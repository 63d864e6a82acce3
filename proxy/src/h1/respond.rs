//! A response head for the lean server path ([`super::server`]), framed as hyper's server frames
//! it for an HTTP/1.1 request (`role::Server::encode_headers` in hyper 1.x): a `content-length`
//! the response gives is kept, else the body's exact size becomes one, else the body is chunked;
//! HEAD, 204 and 304 responses have no body; a `date` is added when there is none.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, HeaderValue, TRAILER, TRANSFER_ENCODING};
use http::response::Parts;
use http::{StatusCode, Version};

use super::encode::{BodyEncoding, BodySize};
use super::head::{digits, last_coding_is_chunked};
use super::lines::Lines;

/// A response head the lean path cannot write; hyper's server refused the same (a user error)
/// and closed the connection without a response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("response content-length is not valid")]
    ContentLength,
    #[error("response has transfer-encoding after content-length")]
    TransferEncodingAfterLength,
    #[error("response has content-length after transfer-encoding")]
    LengthAfterTransferEncoding,
}

/// How the response goes out, once its head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    pub encoding: BodyEncoding,
    /// The connection may serve another request after this response.
    pub keep_alive: bool,
}

/// Appends `parts`' head to `out`, with the upstream's `lines` after the map's fields when the
/// response has them (they hold no field the map may: see [`super::lines`]). `body`: what the
/// body says of itself (empty when it ended before it began); `head_request`: the request was a
/// HEAD; `closing`: the connection closes after this response (a graceful shutdown), which the
/// head says (`connection: close`).
pub fn head(
    parts: &mut Parts,
    lines: Option<&Lines>,
    body: BodySize,
    head_request: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<Framed, HeadError> {
    if parts.status.is_informational() {
        // hyper's server sends no 1xx as a response: it answers 500 and closes (a 101 here
        // would be to a request that asked for no upgrade; the lean path serves none that do).
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\ncontent-length: 0\r\n");
        date_line(out);
        out.extend_from_slice(b"\r\n");
        return Ok(Framed {
            encoding: BodyEncoding::Length(0),
            keep_alive: false,
        });
    }
    if closing {
        close(parts);
    }
    status_line(parts, out);
    let (version, status) = (parts.version, parts.status);
    let can_chunk = !head_request && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut w = Writer::default();
    for (name, value) in parts.headers.drain() {
        if let Some(name) = name {
            w.end_line(out);
            w.name = Some(name);
        }
        let field = match w.name.as_ref() {
            None => continue,
            Some(n) if *n == CONTENT_LENGTH => Field::Length,
            Some(n) if *n == TRANSFER_ENCODING => Field::TransferEncoding,
            Some(n) if *n == CONNECTION => Field::Connection,
            Some(n) if *n == TRAILER => Field::Trailer,
            Some(n) => {
                w.date |= *n == DATE;
                line(n.as_str(), value.as_bytes(), out);
                continue;
            }
        };
        match field {
            Field::Length => {
                if w.length_value(&value, body, head_request, out)? {
                    line("content-length", value.as_bytes(), out);
                }
            }
            Field::TransferEncoding => {
                if w.wrote_len && !w.open {
                    return Err(HeadError::TransferEncodingAfterLength);
                }
                if version == Version::HTTP_10 || !can_chunk {
                    continue;
                }
                w.wrote_len = true;
                w.must_chunk = !last_coding_is_chunked(value.as_bytes());
                w.encoding = Some(BodyEncoding::Chunked);
                w.join("transfer-encoding", &value, out);
            }
            Field::Connection => {
                w.last |= connection_close(&value);
                w.join("connection", &value, out);
            }
            Field::Trailer => {
                if version != Version::HTTP_10 && can_chunk {
                    w.join("trailer", &value, out);
                }
            }
        }
    }
    w.end_line(out);
    if let Some(lines) = lines {
        if let Some(id) = lines.request_id() {
            line(crate::logging::REQUEST_ID.as_str(), id.as_bytes(), out);
        }
        out.extend_from_slice(lines.as_bytes());
        w.date |= lines.has_date();
    }
    let mut encoding = match w.encoding {
        Some(e) => e,
        None if w.wrote_len => BodyEncoding::Length(0),
        None => implicit(body, version, status, head_request, out),
    };
    if !can_chunk {
        encoding = BodyEncoding::Length(0);
    }
    if !w.date {
        date_line(out);
    }
    out.extend_from_slice(b"\r\n");
    Ok(Framed {
        encoding,
        keep_alive: !w.last && !closing && encoding != BodyEncoding::Close,
    })
}

/// The fields whose lines hyper's server writes its own way.
enum Field {
    Length,
    TransferEncoding,
    Connection,
    Trailer,
}

/// The header lines written so far, as hyper's server tracks them: the fields it joins into one
/// line (`connection`, `transfer-encoding`, `trailer`, the first `content-length`) leave the line
/// open for the next value of the same name.
#[derive(Default)]
struct Writer {
    /// The name of the values being written (`HeaderMap::drain` names a field's first value).
    name: Option<http::HeaderName>,
    /// A joined line is open: its values go on it, its end goes before the next field.
    open: bool,
    /// The open line is a transfer-encoding whose last coding is not chunked: hyper adds it.
    must_chunk: bool,
    /// A `content-length` or `transfer-encoding` frames the body.
    wrote_len: bool,
    /// The `content-length` value an unknown-size body is framed by.
    length: Option<u64>,
    encoding: Option<BodyEncoding>,
    date: bool,
    /// `connection: close`.
    last: bool,
}

impl Writer {
    fn end_line(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.open) {
            if std::mem::take(&mut self.must_chunk) {
                out.extend_from_slice(b", chunked");
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Starts the joined line of `name` with `value`, or adds `value` to it.
    fn join(&mut self, name: &str, value: &HeaderValue, out: &mut Vec<u8>) {
        if self.open {
            out.extend_from_slice(b", ");
        } else {
            self.open = true;
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
        }
        out.extend_from_slice(value.as_bytes());
    }

    /// One `content-length` value, by hyper's rules. Ok(true): write it as a plain line.
    fn length_value(
        &mut self,
        value: &HeaderValue,
        body: BodySize,
        head_request: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, HeadError> {
        if self.wrote_len && !self.open {
            return Err(HeadError::LengthAfterTransferEncoding);
        }
        match body {
            // The body knows its length: the header is trusted and written once.
            BodySize::Known(n) => {
                if !self.open {
                    self.encoding = Some(BodyEncoding::Length(n));
                    self.wrote_len = true;
                    self.join("content-length", value, out);
                }
                Ok(false)
            }
            BodySize::Unknown => {
                let n = digits(value.as_bytes()).ok_or(HeadError::ContentLength)?;
                match self.length {
                    Some(prev) if prev != n => Err(HeadError::ContentLength),
                    Some(_) => Ok(false),
                    None => {
                        self.length = Some(n);
                        self.encoding = Some(BodyEncoding::Length(n));
                        self.wrote_len = true;
                        self.join("content-length", value, out);
                        Ok(false)
                    }
                }
            }
            // No body: only a HEAD response keeps the length it was given.
            BodySize::Empty if head_request => {
                self.wrote_len = true;
                Ok(true)
            }
            BodySize::Empty => Ok(false),
        }
    }
}

/// The framing hyper's server chooses for a response that gives none (a HEAD, 204 or 304
/// response's body is not written whatever this says).
fn implicit(
    body: BodySize,
    version: Version,
    status: StatusCode,
    head_request: bool,
    out: &mut Vec<u8>,
) -> BodyEncoding {
    let no_length = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    match body {
        BodySize::Unknown if version == Version::HTTP_10 || head_request || no_length => BodyEncoding::Close,
        BodySize::Unknown => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            BodyEncoding::Chunked
        }
        BodySize::Empty | BodySize::Known(0) => {
            if !head_request && !no_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            BodyEncoding::Length(0)
        }
        BodySize::Known(_) if no_length => BodyEncoding::Length(0),
        BodySize::Known(n) => {
            line("content-length", itoa::Buffer::new().format(n).as_bytes(), out);
            BodyEncoding::Length(n)
        }
    }
}

fn status_line(parts: &Parts, out: &mut Vec<u8>) {
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if parts.version != Version::HTTP_10 && parts.status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(if parts.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match reason {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(parts.status.canonical_reason().unwrap_or("<none>").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
}

/// Adds `close` to the `connection` header unless a value already says it.
fn close(parts: &mut Parts) {
    if !parts.headers.get_all(CONNECTION).iter().any(connection_close) {
        parts.headers.append(CONNECTION, HeaderValue::from_static("close"));
    }
}

fn connection_close(v: &HeaderValue) -> bool {
    v.as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[inline]
fn line(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` line of the current second, formatted once a second per thread.
    static DATE_LINE: RefCell<(u64, [u8; 37])> = const { RefCell::new((u64::MAX, [0; 37])) };
}

/// Appends `date: <IMF-fixdate>\r\n` for now (the coarse wall clock: a few ms behind at most).
pub fn date_line(out: &mut Vec<u8>) {
    let secs = crate::clock::coarse_unix_time().as_secs();
    DATE_LINE.with_borrow_mut(|(at, line)| {
        if *at != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            line[..6].copy_from_slice(b"date: ");
            line[6..35].copy_from_slice(&text.as_bytes()[..29]);
            line[35..].copy_from_slice(b"\r\n");
            *at = secs;
        }
        out.extend_from_slice(&line[..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use std::time::SystemTime;

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        body: BodySize,
        head_request: bool,
        closing: bool,
    ) -> (String, Result<Framed, HeadError>) {
        let mut b = Response::builder().status(status);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        let mut out = Vec::new();
        let r = head(&mut parts, None, body, head_request, closing, &mut out);
        let text = String::from_utf8(out).unwrap();
        // The date line is the last before the blank line; cut it for comparison.
        let cut = match text.find("date: ") {
            Some(at) => format!("{}{}", &text[..at], &text[at + 37..]),
            None => text,
        };
        (cut, r)
    }

    fn ok(encoding: BodyEncoding, keep_alive: bool) -> Result<Framed, HeadError> {
        Ok(Framed { encoding, keep_alive })
    }

    #[test]
    fn framing_as_hyper_s_server_chooses_it() {
        let (h, f) = encode(200, &[("x-a", "1")], BodySize::Known(5), false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(5), true));
        let (h, f) = encode(200, &[], BodySize::Unknown, false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Chunked, true));
        let (h, f) = encode(404, &[], BodySize::Empty, false, false);
        assert_eq!(h, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(0), true));
        // A given length is kept; with an unknown body it frames it.
        let (h, f) = encode(200, &[("content-length", "7")], BodySize::Unknown, false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(7), true));
        let (_, f) = encode(200, &[("content-length", "x")], BodySize::Unknown, false, false);
        assert_eq!(f, Err(HeadError::ContentLength));
        let (_, f) = encode(
            200,
            &[("content-length", "1"), ("content-length", "2")],
            BodySize::Unknown,
            false,
            false,
        );
        assert_eq!(f, Err(HeadError::ContentLength));
        // An empty body's stray length is dropped for the implicit zero.
        let (h, _) = encode(200, &[("content-length", "3")], BodySize::Empty, false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        // A transfer-encoding not ending in chunked gets it.
        let (h, f) = encode(200, &[("transfer-encoding", "gzip")], BodySize::Unknown, false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Chunked, true));
    }

    #[test]
    fn bodiless_responses() {
        let (h, f) = encode(200, &[("content-length", "10")], BodySize::Empty, true, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(0), true));
        let (h, _) = encode(200, &[], BodySize::Known(12), true, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        let (h, _) = encode(200, &[], BodySize::Empty, true, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\n\r\n", "HEAD gets no implicit zero");
        let (h, f) = encode(
            204,
            &[("transfer-encoding", "chunked")],
            BodySize::Unknown,
            false,
            false,
        );
        assert_eq!(h, "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(0), true));
        let (h, _) = encode(304, &[("etag", "\"a\"")], BodySize::Empty, false, false);
        assert_eq!(h, "HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n");
    }

    #[test]
    fn the_connection_closes_when_the_head_says_so_or_the_server_shuts_down() {
        let (h, f) = encode(200, &[("connection", "close")], BodySize::Empty, false, false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(f, ok(BodyEncoding::Length(0), false));
        let (h, f) = encode(200, &[("connection", "x-a")], BodySize::Empty, false, true);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nconnection: x-a, close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(f, ok(BodyEncoding::Length(0), false));
        let (h, f) = encode(102, &[("x", "y")], BodySize::Empty, false, false);
        assert_eq!(
            h,
            "HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(f, ok(BodyEncoding::Length(0), false));
    }

    #[test]
    fn a_given_date_is_kept_and_one_is_added_otherwise() {
        let (h, _) = encode(
            200,
            &[("date", "Thu, 01 Jan 1970 00:00:00 GMT")],
            BodySize::Empty,
            false,
            false,
        );
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let mut out = Vec::new();
        date_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n") && text.len() == 37,
            "{text:?}"
        );
        let parsed = httpdate::parse_http_date(&text[6..35]).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age.as_secs() < 5, "{age:?}");
    }
}
