//! The response head: status line and headers through `httparse`, then the body's framing
//! (RFC 9112 §6.3) and whether the connection can be reused.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::response::Parts;
use http::{Response, StatusCode, Version};

use super::Error;
use super::lines::{self, Lines};

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
    /// With [`Head::lines`], an empty map (room for the fields the proxy adds).
    pub parts: Parts,
    /// The fields as the upstream sent them, when the head was asked for as [`Fields::Lines`]
    /// and could stay so ([`super::lines`]). Boxed: the response and its body are moved
    /// through every level of the upstream path, and 40 bytes more in each of them cost more
    /// than the box (~250 instructions a response; `scripts/callgrind-proxy`).
    pub lines: Option<Box<Lines>>,
    pub framing: Framing,
    /// The connection may carry another request once this body has been read to its end.
    pub keep_alive: bool,
}

/// What the caller does with a response head's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Reads or changes them (plugins, retries, tests): a `HeaderMap`.
    Map,
    /// Passes them on to an HTTP/1.1 client unread: they may stay as the upstream's lines
    /// ([`Lines`]), not built into a map and written out of it again.
    Lines,
}

/// What a response head is parsed for: the request it answers was a HEAD (it has no body), and
/// what is done with its fields.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub head_request: bool,
    pub fields: Fields,
}

impl Ask {
    /// A head whose fields go into a map.
    pub fn map(head_request: bool) -> Ask {
        Ask {
            head_request,
            fields: Fields::Map,
        }
    }
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

/// Parses the head at the start of `buf`, for what `ask` says.
/// A final head is taken out of `buf`, and its header values are slices of it (no copy, as hyper
/// reads a request); an informational one is left for the caller to skip. A 101 is a final head
/// with no body: upgrades are not this client's (the pool hands them to hyper), and the caller
/// must not reuse the connection after it.
pub fn parse(buf: &mut BytesMut, ask: Ask, names: &mut Names) -> Result<Parsed, Error> {
    // Where each header's name and value are in the head, for after the head is split off.
    // Both arrays uninitialised, as for a request head (`request.rs`): initialising them was
    // ~330 instructions a response for the 4.8 KB of entries a head never has
    // (`scripts/callgrind-proxy`).
    let mut places = [MaybeUninit::<Place>::uninit(); MAX_HEADERS];
    let (len, code, version, count) = {
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut headers);
        let len = match parsed.map_err(Error::Head)? {
            httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge(MAX_HEAD)),
            httparse::Status::Partial => return Ok(Parsed::Partial),
            httparse::Status::Complete(len) => len,
        };
        let base = buf.as_ptr() as usize;
        for (place, h) in places.iter_mut().zip(res.headers.iter()) {
            place.write(Place::of(base, h));
        }
        (len, res.code.unwrap_or(0), res.version, res.headers.len())
    };
    // SAFETY: the loop above wrote the first `count` places (one for each header parsed).
    let places = unsafe { std::slice::from_raw_parts(places.as_ptr().cast::<Place>(), count) };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Header("status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Informational(len));
    }
    let version = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len);
    let (headers, lines, framing, keep_alive) = match lines::scan(&head, places, status, ask) {
        Some((facts, kept)) => {
            let framing = framing(status, version, &facts, ask.head_request)?;
            let keep_alive = framing != Framing::Close && facts.keeps_alive(version);
            let lines = kept.lines(head, places);
            (spare_map(HEADROOM), Some(Box::new(lines)), framing, keep_alive)
        }
        None => {
            let head = head.freeze();
            let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
            let (headers, facts) = header_map(&head, places, names, upgrade)?;
            let framing = framing(status, version, &facts, ask.head_request)?;
            let keep_alive = !upgrade && framing != Framing::Close && facts.keeps_alive(version);
            (headers, None, framing, keep_alive)
        }
    };
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Final(
        len,
        Box::new(Head {
            parts,
            lines,
            framing,
            keep_alive,
        }),
    ))
}

/// A header's name and value as offsets into its head (both within `MAX_HEAD`).
#[derive(Clone, Copy, Default)]
pub(super) struct Place {
    pub(super) name: (u32, u32),
    pub(super) value: (u32, u32),
}

impl Place {
    pub(super) fn of(base: usize, h: &httparse::Header<'_>) -> Place {
        let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        Place {
            name: at(h.name.as_bytes()),
            value: at(h.value),
        }
    }
}

pub(super) fn range((at, len): (u32, u32)) -> std::ops::Range<usize> {
    at as usize..(at + len) as usize
}

/// What the framing and keep-alive decisions need from a response head, gathered while its
/// headers are copied into the map (or scanned as lines, [`super::lines`]): no lookup in the map
/// afterwards (each was a hash and a probe,
/// ~100 instructions, four or five per response; `scripts/callgrind-proxy`).
#[derive(Default)]
pub(super) struct Facts<'a> {
    /// The last `transfer-encoding` value, if there is one.
    transfer_encoding: Option<&'a [u8]>,
    /// Every `content-length` value's number; `bad_length`: some value did not parse or
    /// disagreed. Neither: no `content-length`.
    length: Option<u64>,
    bad_length: bool,
    /// `connection` tokens seen.
    close: bool,
    keep_alive: bool,
    /// A `connection` token other than `close` and the hop-by-hop names: a field it strips.
    pub(super) lists_fields: bool,
}

/// The fields [`Facts`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Noted {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
}

impl<'a> Facts<'a> {
    /// Notes what the field says; returns whether it ends at this hop and the proxy would strip
    /// it (see [`header_map`]): `transfer-encoding`, `keep-alive`, and a `connection` that lists
    /// only hop-by-hop names (its list is read once, for both).
    fn note(&mut self, name: &HeaderName, value: &'a [u8]) -> bool {
        let field = if name == CONTENT_LENGTH {
            Noted::ContentLength
        } else if name == TRANSFER_ENCODING {
            Noted::TransferEncoding
        } else if name == CONNECTION {
            Noted::Connection
        } else if name.as_str() == "keep-alive" {
            Noted::KeepAlive
        } else {
            return false;
        };
        self.note_field(field, value)
    }

    /// [`Facts::note`] of a field already told by its name.
    pub(super) fn note_field(&mut self, field: Noted, value: &'a [u8]) -> bool {
        match field {
            Noted::ContentLength => {
                match digits(value) {
                    // One number, the usual value (the list form's split and trims skipped).
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.bad_length |= merge_length(&mut self.length, value).is_err(),
                }
                false
            }
            Noted::TransferEncoding => {
                self.transfer_encoding = Some(value);
                true
            }
            // The two usual values, one token each.
            Noted::Connection if value.eq_ignore_ascii_case(b"keep-alive") => {
                self.keep_alive = true;
                true
            }
            Noted::Connection if value.eq_ignore_ascii_case(b"close") => {
                self.close = true;
                false
            }
            Noted::Connection => {
                let mut only_hop_by_hop = true;
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    let close = t.eq_ignore_ascii_case(b"close");
                    let hop_by_hop = crate::forward::is_hop_by_hop(t);
                    self.close |= close;
                    self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    self.lists_fields |= !close && !hop_by_hop;
                    only_hop_by_hop &= hop_by_hop;
                }
                only_hop_by_hop
            }
            Noted::KeepAlive => true,
        }
    }

    /// HTTP/1.1 keeps the connection unless `connection: close`; HTTP/1.0 only with `keep-alive`.
    pub(super) fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// Room in a response's header map for the headers added to it on the way to the client
/// (`x-request-id`, a plugin's): the map is not grown (a rehash of every entry) per response.
/// A later request is parsed into the map after the response is written (hyper keeps it for
/// its connection's next head, the lean path through the thread's spare maps), so the room
/// serves the request's forwarding headers too.
pub(super) const HEADROOM: usize = 8;

thread_local! {
    /// Header maps finished messages no longer need, emptied, for this thread's next heads
    /// ([`recycle`]).
    static SPARE: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `map`, emptied, for a head this thread parses next (a request's on the lean server
/// path, an upstream's response): each message's map would be a new one otherwise (two
/// allocations and two frees a message). Maps go around: a request's map is recycled once the
/// request is written upstream, its response's once the response head is written to the client.
/// Up to [`SPARE_COUNT`] are kept, for the requests a thread has under way at once (one kept map
/// served one at a time, and the rest were dropped and made anew); a map of more than
/// [`SPARE_MAX`] entries is dropped instead.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAX {
        return;
    }
    // Emptied now, not when taken: its values hold on to the bytes they were read into. A map
    // drained by the response writer is empty already.
    if !map.is_empty() {
        map.clear();
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_COUNT {
            spare.push(map);
        }
    });
}

/// The largest map [`recycle`] keeps (a head of hyper's 100 header lines at most, with room).
const SPARE_MAX: usize = 192;
/// Maps a thread keeps.
const SPARE_COUNT: usize = 64;

/// The thread's spare map with room for `n` headers, or a new one.
pub(super) fn spare_map(n: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// The header names of a connection's last response, in order. An upstream sends the same names
/// in the same order response after response, so a name is first compared with the one at its
/// position here: `HeaderName::from_bytes` lowercases and matches each name (~120 instructions;
/// `scripts/callgrind-proxy`), a comparison of a few bytes is cheaper, and a name that was parsed
/// once is valid.
#[derive(Default)]
pub struct Names(Vec<(Box<[u8]>, HeaderName)>);

/// Positions [`Names`] remembers: the usual response has fewer headers.
const NAMES_KEPT: usize = 32;

impl Names {
    pub(super) fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, Error> {
        if let Some((bytes, name)) = self.0.get(i)
            && **bytes == *raw
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| Error::Header("name"))?;
        let entry = (Box::from(raw), name.clone());
        match i.cmp(&self.0.len()) {
            std::cmp::Ordering::Less => self.0[i] = entry,
            std::cmp::Ordering::Equal if i < NAMES_KEPT => self.0.push(entry),
            _ => {}
        }
        Ok(name)
    }
}

/// The head's headers as a map, and its [`Facts`]. `upgrade`: a 101, whose map keeps every
/// field (the upgrade's own `connection` and `upgrade` go on to the client).
///
/// Otherwise the fields that end at this hop and that the proxy strips from every response
/// ([`crate::forward::strip_hop_by_hop`]) once their facts are noted are left out:
/// `transfer-encoding` (the body's framing), `keep-alive`, and a `connection` that lists only
/// hop-by-hop fields (`keep-alive`, what most upstreams send). Put in and then stripped, they
/// cost an insert, a removal and a second parse of the `connection` list (659 instructions a
/// response fewer without them, `scripts/callgrind-proxy`). A `connection` that names anything
/// else stays, for the strip to remove what it names.
fn header_map<'a>(
    head: &'a Bytes,
    places: &[Place],
    names: &mut Names,
    upgrade: bool,
) -> Result<(HeaderMap, Facts<'a>), Error> {
    let mut map = spare_map(places.len() + HEADROOM);
    let mut facts = Facts::default();
    for (i, place) in places.iter().enumerate() {
        let name = names.name(i, &head[range(place.name)])?;
        let raw = &head[range(place.value)];
        // SAFETY: httparse accepted the value's bytes, and it accepts the set `HeaderValue`
        // does (tab, visible ASCII and obs-text; checked byte by byte in the tests). Not checked
        // twice, as hyper does for requests (~350 instructions a response,
        // `scripts/callgrind-proxy`).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(range(place.value))) };
        if !facts.note(&name, raw) || upgrade {
            map.append(name, value);
        }
    }
    Ok((map, facts))
}

/// The body's framing, refusing what a strict client refuses (RFC 9112 §6.3): both
/// transfer-encoding and content-length, content-lengths that differ or do not parse, a
/// transfer-encoding that does not end in chunked, and transfer-encoding on HTTP/1.0.
fn framing(status: StatusCode, version: Version, facts: &Facts<'_>, head_request: bool) -> Result<Framing, Error> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(last) = facts.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(Error::Http10TransferEncoding);
        }
        // Any content-length, valid or not, with a transfer-encoding.
        if facts.length.is_some() || facts.bad_length {
            return Err(Error::TransferEncodingAndLength);
        }
        return if last_coding_is_chunked(last) {
            Ok(Framing::Chunked)
        } else {
            Err(Error::NotChunked)
        };
    }
    if facts.bad_length {
        return Err(Error::BadContentLength);
    }
    match facts.length {
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::Close),
    }
}

/// Whether the last coding of the (possibly repeated, comma-separated) transfer-encoding is
/// chunked.
pub(super) fn ends_in_chunked(headers: &HeaderMap) -> bool {
    let last = headers.get_all(TRANSFER_ENCODING).iter().next_back();
    last.is_some_and(|v| last_coding_is_chunked(v.as_bytes()))
}

/// Whether the last comma-separated coding of one transfer-encoding value is chunked.
pub(super) fn last_coding_is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// The content-length, when given; every value (repeated headers, comma-separated lists) must
/// be the same number.
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        merge_length(&mut length, value.as_bytes())?;
    }
    Ok(length)
}

/// The number `n` spells in decimal digits only; None when empty, not all digits, or past `u64`.
pub(super) fn digits(n: &[u8]) -> Option<u64> {
    if n.is_empty() {
        return None;
    }
    n.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Merges one content-length value (a comma-separated list of the same number) into `length`.
fn merge_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), Error> {
    for n in value.split(|&b| b == b',') {
        let n = digits(n.trim_ascii()).ok_or(Error::BadContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::BadContentLength);
        }
        *length = Some(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(b: impl AsRef<[u8]>) -> BytesMut {
        BytesMut::from(b.as_ref())
    }

    fn head(raw: &str) -> Result<Box<Head>, Error> {
        match parse(&mut bm(raw.as_bytes()), Ask::map(false), &mut Names::default())? {
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
    fn fields_that_end_at_this_hop_are_read_and_left_out() {
        let names = |h: &Head| {
            h.parts
                .headers
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive , TE\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nx-a: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (h.framing, h.keep_alive, names(&h)),
            (Framing::Chunked, true, vec!["x-a".to_owned()])
        );
        // `close` is not a hop-by-hop field: a field of that name would have to go too, so the
        // list stays for the strip; so does a list naming an end-to-end field.
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(
            (h.keep_alive, names(&h)),
            (false, vec!["connection".to_owned(), "content-length".to_owned()])
        );
        let h = head("HTTP/1.1 200 OK\r\nconnection: keep-alive, x-b\r\nx-b: 2\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(&h.parts.headers["connection"], "keep-alive, x-b");
        // A 101 keeps its upgrade's fields for the client.
        let h = head("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").unwrap();
        assert_eq!(names(&h), ["connection", "upgrade"]);
    }

    #[test]
    fn names_remembered_from_the_last_response_are_matched_by_their_bytes() {
        let mut names = Names::default();
        let mut parse_with = |raw: &str| match parse(&mut bm(raw.as_bytes()), Ask::map(false), &mut names).unwrap() {
            Parsed::Final(_, h) => h.parts.headers,
            other => panic!("expected a final head, got {other:?}"),
        };
        let a = parse_with("HTTP/1.1 200 OK\r\nServer: a\r\nX-Custom: 1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            (a["server"].as_bytes(), a["x-custom"].as_bytes()),
            (&b"a"[..], &b"1"[..])
        );
        // The same names again, then a different name at the same position, then fewer names.
        let b = parse_with("HTTP/1.1 200 OK\r\nServer: b\r\nX-Custom: 2\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            (b["server"].as_bytes(), b["x-custom"].as_bytes()),
            (&b"b"[..], &b"2"[..])
        );
        let c = parse_with("HTTP/1.1 200 OK\r\nServer: c\r\nX-Other: 3\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            c.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["server", "x-other", "content-length"]
        );
        let d = parse_with("HTTP/1.1 200 OK\r\nx-custom: 4\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            d.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-custom", "content-length"]
        );
        // A remembered name spelled in another case is parsed again, to the same lowercase name.
        let e = parse_with("HTTP/1.1 200 OK\r\nX-CUSTOM: 5\r\nCONTENT-LENGTH: 0\r\n\r\n");
        assert_eq!(&e["x-custom"], &"5");
    }

    #[test]
    fn a_final_head_leaves_its_body_and_shares_its_values() {
        let mut buf = bm("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: one\r\n\r\nbody");
        let Parsed::Final(n, h) = parse(&mut buf, Ask::map(false), &mut Names::default()).unwrap() else {
            panic!("final")
        };
        assert_eq!((n, &buf[..]), (48, &b"body"[..]));
        assert_eq!(h.parts.headers["x-a"].as_bytes(), b"one");
        assert_eq!(h.framing, Framing::Length(4));
        // An informational head stays for the caller to skip.
        let mut buf = bm("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(
            parse(&mut buf, Ask::map(false), &mut Names::default()).unwrap(),
            Parsed::Informational(25)
        ));
        assert_eq!(buf.len(), 44);
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
        let Parsed::Final(_, h) = parse(&mut bm(raw), Ask::map(true), &mut Names::default()).unwrap() else {
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
        assert!(matches!(
            parse(
                &mut bm(b"HTTP/1.1 2x0 OK\r\n\r\n"),
                Ask::map(false),
                &mut Names::default()
            ),
            Err(Error::Head(_))
        ));
        assert!(matches!(
            parse(
                &mut bm(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"),
                Ask::map(false),
                &mut Names::default()
            ),
            Err(Error::Head(_))
        ));
    }

    #[test]
    fn a_recycled_map_comes_back_empty_for_the_next_head() {
        let mut old = HeaderMap::with_capacity(40);
        old.insert("x-old", HeaderValue::from_static("1"));
        old.append("x-old", HeaderValue::from_static("2"));
        let cap = old.capacity();
        recycle(old);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-new: 3\r\n\r\n").unwrap();
        let map = &h.parts.headers;
        assert_eq!(map.len(), 2, "{map:?}");
        assert_eq!(
            (map["content-length"].as_bytes(), map["x-new"].as_bytes()),
            (&b"0"[..], &b"3"[..])
        );
        assert_eq!(map.capacity(), cap, "the recycled map, not a new one");
        // Taken once: the next head gets a new map of its own size.
        let next = head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(next.parts.headers.capacity() < cap);
        // A map too large to keep is dropped; at most SPARE_COUNT are kept.
        recycle(HeaderMap::with_capacity(4 * SPARE_MAX));
        assert!(SPARE.with_borrow(Vec::is_empty));
        for _ in 0..SPARE_COUNT + 3 {
            recycle(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with_borrow(Vec::len), SPARE_COUNT);
    }

    /// Values go into the map unchecked: every byte `HeaderValue` refuses, the parse refuses
    /// first, and every byte it takes, a checked `HeaderValue` takes too.
    #[test]
    fn the_parse_takes_exactly_the_bytes_a_header_value_takes() {
        for b in 0..=255u8 {
            let mut raw = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-v: a".to_vec();
            raw.extend([b, b'z', b'\r', b'\n', b'\r', b'\n']);
            let checked = HeaderValue::from_bytes(&[b'a', b, b'z']).is_ok();
            match parse(&mut bm(&raw), Ask::map(false), &mut Names::default()) {
                Ok(Parsed::Final(_, h)) => {
                    assert!(checked, "byte {b:#04x} parsed but is not a header value");
                    assert_eq!(h.parts.headers["x-v"].as_bytes(), [b'a', b, b'z']);
                }
                // CR and LF end the line: the value is then cut or the line malformed.
                Ok(Parsed::Partial | Parsed::Informational(_)) => panic!("byte {b:#04x}: not a final head"),
                Err(_) => assert!(!checked || b == b'\r' || b == b'\n', "byte {b:#04x} refused"),
            }
        }
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
        let Parsed::Informational(n) = parse(&mut bm(raw), Ask::map(false), &mut Names::default()).unwrap() else {
            panic!("1xx")
        };
        assert!(matches!(
            parse(&mut bm(&raw[n..]), Ask::map(false), &mut Names::default()).unwrap(),
            Parsed::Final(..)
        ));
        for cut in 0..raw.len() - n {
            assert!(
                matches!(
                    parse(&mut bm(&raw[n..n + cut]), Ask::map(false), &mut Names::default()).unwrap(),
                    Parsed::Partial
                ),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_head_past_the_limit_is_an_error() {
        let mut raw = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        raw.resize(MAX_HEAD, b'a');
        assert_eq!(
            parse(&mut bm(&raw), Ask::map(false), &mut Names::default()).unwrap_err(),
            Error::HeadTooLarge(MAX_HEAD)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse(&mut bm(raw.as_bytes()), Ask::map(false), &mut Names::default()).unwrap_err(),
            Error::Head(httparse::Error::TooManyHeaders)
        );
    }
}
