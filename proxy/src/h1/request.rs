//! A client's request head, for the lean server path ([`super::server`]): parsed with
//! `httparse` into `http::request::Parts` when it is a request that path serves (HTTP/1.1; no
//! body, or one framed by a single `content-length` or a single `transfer-encoding: chunked`; no
//! `expect` but one `100-continue`; no upgrade or `te`; nothing asked of the connection but
//! keep-alive), or left in the
//! buffer, untouched, for hyper's server (everything else, malformed heads included: hyper
//! answers those with its own 400, 414 or 431, as before).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{Method, Request, Uri, Version};

use super::head::{Framing, MAX_HEADERS, Names, Place, digits, range};

/// The longest request target the lean path takes (hyper's server answers a longer one 414).
const MAX_URI: usize = u16::MAX as usize - 1;
/// A head not whole in this many bytes goes to hyper, which reads on to its own limit (and
/// answers 431 past it): the lean path serves the usual head of a few hundred bytes.
pub const MAX_LEAN_HEAD: usize = 64 * 1024;

/// What the start of a connection's read buffer holds.
#[derive(Debug)]
// Returned once a request and moved once: a box would be an allocation a request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A whole head the lean path serves, and how its body is framed (`Empty`, `Length` or
    /// `Chunked`); taken out of the buffer (its values are slices of it), the body's bytes stay.
    Lean(Parts, Framing),
    /// Not a whole head yet: read more.
    Partial,
    /// A head (or bytes) for hyper's server; the buffer is as it was.
    Hyper(Handoff),
}

/// Why a head goes to hyper (`weft_http1_handoffs_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Not a head httparse takes (hyper answers it 400), or an HTTP/2 preface.
    Malformed,
    /// More than [`MAX_HEADERS`] lines or [`MAX_LEAN_HEAD`] bytes, or a target over `MAX_URI`.
    Large,
    /// HTTP/1.0: keep-alive only when asked for, no chunked responses.
    Http10,
    /// A body framed in a way the lean path leaves to hyper (`content-length` repeated or not a
    /// number, a `transfer-encoding` other than one `chunked`, both at once), or an `expect`
    /// other than one `100-continue`.
    Body,
    /// An upgrade, `CONNECT`, or a `connection` value other than `keep-alive`.
    Connection,
    /// `te`: what the client accepts (trailers) is hyper's to answer.
    Te,
}

impl Handoff {
    pub const ALL: [Handoff; 6] = [
        Handoff::Malformed,
        Handoff::Large,
        Handoff::Http10,
        Handoff::Body,
        Handoff::Connection,
        Handoff::Te,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Handoff::Malformed => "malformed",
            Handoff::Large => "large",
            Handoff::Http10 => "http10",
            Handoff::Body => "body",
            Handoff::Connection => "connection",
            Handoff::Te => "te",
        }
    }
}

/// Parses the head at the start of `buf`, `names` being the connection's names of its last
/// request head (clients send the same names in the same order).
pub fn parse(buf: &mut BytesMut, names: &mut Names) -> Parsed {
    let mut places = [MaybeUninit::<Place>::uninit(); MAX_HEADERS];
    let (len, path, method, count, framing) = {
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len > MAX_LEAN_HEAD => return Parsed::Hyper(Handoff::Large),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_LEAN_HEAD => return Parsed::Hyper(Handoff::Large),
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => return Parsed::Hyper(Handoff::Large),
            Err(_) => return Parsed::Hyper(Handoff::Malformed),
        };
        if req.version != Some(1) {
            return Parsed::Hyper(Handoff::Http10);
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Parsed::Hyper(Handoff::Malformed);
        };
        if path.len() > MAX_URI {
            return Parsed::Hyper(Handoff::Large);
        }
        let base = buf.as_ptr() as usize;
        let mut body = BodyHeaders::default();
        for (place, h) in places.iter_mut().zip(req.headers.iter()) {
            if let Some(why) = handoff(h, &mut body) {
                return Parsed::Hyper(why);
            }
            place.write(Place::of(base, h));
        }
        let Some(framing) = body.framing() else {
            return Parsed::Hyper(Handoff::Body);
        };
        let at = path.as_ptr() as usize - base;
        (len, at..at + path.len(), method, req.headers.len(), framing)
    };
    // SAFETY: the loop above wrote the first `count` places (it returns before any it skips).
    let places = unsafe { std::slice::from_raw_parts(places.as_ptr().cast::<Place>(), count) };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper(Handoff::Malformed);
    };
    if method == Method::CONNECT {
        return Parsed::Hyper(Handoff::Connection);
    }
    let head = buf.split_to(len).freeze();
    match build(&head, path, method, places, names) {
        Some(parts) => Parsed::Lean(parts, framing),
        None => {
            // The target or a name the `http` types refuse: hyper's to answer. Put the head back
            // (a copy, on this error path only).
            let rest = std::mem::take(buf);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&rest);
            Parsed::Hyper(Handoff::Malformed)
        }
    }
}

/// The body-framing lines of a head, as [`handoff`] saw them.
#[derive(Default)]
struct BodyHeaders {
    /// The one `content-length` (a second one, even equal, is hyper's to judge).
    length: Option<u64>,
    /// One `transfer-encoding: chunked` was seen.
    chunked: bool,
    /// One `expect: 100-continue` was seen (the lean path answers it, `super::lean_body`).
    expect: bool,
}

impl BodyHeaders {
    /// How the body is framed; None when both headers came (hyper's to judge, RFC 9112 §6.3).
    fn framing(&self) -> Option<Framing> {
        match (self.length, self.chunked) {
            (Some(_), true) => None,
            (None, true) => Some(Framing::Chunked),
            (None | Some(0), false) => Some(Framing::Empty),
            (Some(n), false) => Some(Framing::Length(n)),
        }
    }
}

/// Whether header `h` sends its request to hyper, and why; notes the body's framing in `body`:
/// one `content-length` of decimal digits, or one `transfer-encoding` of exactly `chunked`; and
/// one `expect: 100-continue`.
fn handoff(h: &httparse::Header<'_>, body: &mut BodyHeaders) -> Option<Handoff> {
    let is = |n: &http::HeaderName| h.name.eq_ignore_ascii_case(n.as_str());
    // Most names are none of these: one length check passes them (the names below are 2, 6, 7,
    // 10, 14 and 17 bytes long).
    if !matches!(h.name.len(), 2 | 6 | 7 | 10 | 14 | 17) {
        return None;
    }
    if is(&CONTENT_LENGTH) {
        match digits(h.value.trim_ascii()) {
            Some(n) if body.length.is_none() => body.length = Some(n),
            _ => return Some(Handoff::Body),
        }
        None
    } else if is(&TRANSFER_ENCODING) {
        if body.chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Some(Handoff::Body);
        }
        body.chunked = true;
        None
    } else if is(&EXPECT) {
        if body.expect || !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            // Any other expectation is hyper's to refuse (417), as is a repeated one.
            return Some(Handoff::Body);
        }
        body.expect = true;
        None
    } else if is(&UPGRADE) || (is(&CONNECTION) && !h.value.trim_ascii().eq_ignore_ascii_case(b"keep-alive")) {
        Some(Handoff::Connection)
    } else if is(&TE) {
        Some(Handoff::Te)
    } else {
        None
    }
}

/// The request's parts from its head bytes; None when the target or a name is refused.
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    method: Method,
    places: &[Place],
    names: &mut Names,
) -> Option<Parts> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = super::head::spare_map(places.len() + super::head::HEADROOM);
    for (i, place) in places.iter().enumerate() {
        let name = names.name(i, &head[range(place.name)]).ok()?;
        // SAFETY: httparse accepted the value's bytes, and it accepts the set `HeaderValue`
        // does (as for response heads, `super::head`; hyper's server does the same).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(range(place.value))) };
        headers.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(raw: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let parsed = parse(&mut buf, &mut Names::default());
        (parsed, buf)
    }

    fn handoff_of(raw: &str) -> Handoff {
        match parse_str(raw) {
            (Parsed::Hyper(why), buf) => {
                assert_eq!(&buf[..], raw.as_bytes(), "the buffer is left as it was");
                why
            }
            (other, _) => panic!("expected a hand-off, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_request_is_parsed_and_taken_from_the_buffer() {
        let raw = "GET /a/b?c=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nx-a: 1\r\nX-A: 2\r\nconnection: Keep-Alive\r\n\r\nGET /next";
        let (parsed, buf) = parse_str(raw);
        let Parsed::Lean(parts, _) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(&buf[..], b"GET /next", "the next request stays");
        assert_eq!((parts.method.as_str(), parts.version), ("GET", Version::HTTP_11));
        assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/a/b?c=1");
        assert_eq!(&parts.headers["host"], "x");
        let xa: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(&parts.headers["connection"], "Keep-Alive");
        // An absolute-form target and an extension method are the http types' as with hyper.
        let (parsed, _) = parse_str("PURGE http://h/p HTTP/1.1\r\n\r\n");
        let Parsed::Lean(parts, _) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!((parts.method.as_str(), parts.uri.host()), ("PURGE", Some("h")));
        // One `content-length: 0` is no body: served, the header kept (as hyper keeps it).
        let (parsed, buf) = parse_str("POST /f HTTP/1.1\r\nContent-Length:  0 \r\n\r\n");
        let Parsed::Lean(parts, Framing::Empty) = parsed else {
            panic!("{parsed:?}")
        };
        assert!(buf.is_empty());
        assert_eq!(&parts.headers["content-length"], "0");
    }

    #[test]
    fn a_body_framed_by_one_length_or_chunked_is_served_its_bytes_left_in_the_buffer() {
        let cases = [
            ("POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET", Framing::Length(3)),
            ("PUT / HTTP/1.1\r\nContent-Length: 007\r\n\r\n", Framing::Length(7)),
            ("POST / HTTP/1.1\r\nContent-Length: 00\r\n\r\n", Framing::Empty),
            ("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", Framing::Empty),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n3\r\nabc",
                Framing::Chunked,
            ),
        ];
        for (raw, framing) in cases {
            let (parsed, buf) = parse_str(raw);
            let Parsed::Lean(parts, got) = parsed else {
                panic!("{raw:?}: {parsed:?}")
            };
            assert_eq!(got, framing, "{raw:?}");
            let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
            assert_eq!(&buf[..], body.as_bytes(), "{raw:?}: the body's bytes stay");
            assert_eq!(parts.headers.len(), 1, "the framing header is kept, as hyper keeps it");
        }
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(matches!(parse_str("GET / HTTP/1.1\r\nhost: x\r\n").0, Parsed::Partial));
        assert!(matches!(parse_str("").0, Parsed::Partial));
        let long = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(MAX_LEAN_HEAD));
        assert_eq!(handoff_of(&long), Handoff::Large);
        // Whole, but over the limit: hyper's too.
        assert_eq!(handoff_of(&format!("{long}\r\n\r\n")), Handoff::Large);
    }

    #[test]
    fn what_the_lean_path_does_not_serve_goes_to_hyper_untouched() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
                Handoff::Body,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nabcde", Handoff::Body),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde", Handoff::Body),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", Handoff::Body),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Handoff::Body,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", Handoff::Body),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Handoff::Body,
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Handoff::Body,
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Handoff::Body,
            ),
            ("POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", Handoff::Body),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                Handoff::Body,
            ),
            ("PUT / HTTP/1.1\r\nexpect: 100-continue, x\r\n\r\n", Handoff::Body),
            (
                "PUT / HTTP/1.1\r\nexpect: x-other\r\ncontent-length: 1\r\n\r\n",
                Handoff::Body,
            ),
            (
                "PUT / HTTP/1.1\r\nexpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
                Handoff::Body,
            ),
            (
                "GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                Handoff::Connection,
            ),
            ("GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n", Handoff::Connection),
            ("GET / HTTP/1.1\r\nconnection: close\r\n\r\n", Handoff::Connection),
            (
                "GET / HTTP/1.1\r\nconnection: keep-alive, x-a\r\n\r\n",
                Handoff::Connection,
            ),
            ("CONNECT h:443 HTTP/1.1\r\n\r\n", Handoff::Connection),
            ("GET / HTTP/1.1\r\nte: trailers\r\n\r\n", Handoff::Te),
            ("GET / HTTP/1.0\r\n\r\n", Handoff::Http10),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Handoff::Malformed),
            ("GET / HTTP/1.1\r\nbad header\r\n\r\n", Handoff::Malformed),
            ("GET /\x01 HTTP/1.1\r\n\r\n", Handoff::Malformed),
        ];
        for (raw, why) in cases {
            assert_eq!(handoff_of(raw), why, "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(handoff_of(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Handoff::Large);
        let target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(handoff_of(&target), Handoff::Large);
    }

    #[test]
    fn a_head_the_http_types_refuse_is_put_back_whole() {
        // httparse takes this target; `Uri` does not (a bad authority in absolute form).
        let raw = "GET http://[::1/x HTTP/1.1\r\nhost: x\r\n\r\nrest";
        assert_eq!(handoff_of(raw), Handoff::Malformed);
    }

    #[test]
    fn names_are_lowercased_and_remembered() {
        let mut names = Names::default();
        for _ in 0..2 {
            let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-Custom-Name: v\r\nHOST: h\r\n\r\n"[..]);
            let Parsed::Lean(parts, _) = parse(&mut buf, &mut names) else {
                panic!()
            };
            let keys: Vec<_> = parts.headers.keys().map(|k| k.as_str().to_owned()).collect();
            assert_eq!(keys, ["x-custom-name", "host"]);
        }
    }
}
