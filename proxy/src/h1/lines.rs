//! A response head's fields kept as the upstream's lines, for a response whose body no plugin
//! streams or buffers on its way to an HTTP/1.1 client ([`super::head::Fields::Lines`]).
//!
//! Built into a `HeaderMap` and written out of it again, a response's fields cost a hash and an
//! insert per field, a pass for the hop-by-hop fields, the writer's drain and a line per field; a
//! proxy that only forwards them can copy their bytes (about 1,100 instructions a response fewer,
//! `scripts/callgrind-proxy`; `docs/performance-log.md`). What the proxy does to a forwarded response's fields is
//! still done: the fields that end at this hop (`connection` and what it lists, `keep-alive`,
//! `transfer-encoding`) and `content-length` are left out of the lines (the writer frames the
//! body for its own connection, as it does a map's), and `date` is noted so that the writer adds
//! none. A head with anything else the proxy would change (another hop-by-hop field, a
//! `connection` naming an end-to-end field, the request id the proxy sets) or a line not in the
//! plain `name: value\r\n` form is parsed into a map as before, so the lines are only ever fields
//! the map path would have written unchanged. Names keep the upstream's case (HTTP field names
//! are case-insensitive; nginx forwards them the same way).
//!
//! The response-headers plugins read and change the lines themselves ([`LinesHead`]): the view
//! lays them out (`weft_runtime::view::Fields::Lines`) and a batch's changes are made on them
//! ([`Lines::change`]), which keeps them fields the map path would write (a plugin can change
//! no name the lines leave out: `mutation.rs` refuses them).

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::{DATE, HeaderMap, HeaderName, HeaderValue};
use weft_runtime::mutation::{Batch, ResponseChange};
use weft_runtime::view;

use super::head::{Ask, Facts, Fields, Noted, Place, range};

/// Fields kept as whole `name: value\r\n` lines, back to back.
#[derive(Debug, Default)]
pub struct Lines {
    bytes: BytesMut,
    /// A `date` is among them.
    date: bool,
    /// A plugin put an `x-request-id` among them ([`Lines::change`]), which the proxy's replaces
    /// as it replaces one in a map.
    request_id_line: bool,
    /// A bit for each name among them ([`name_bit`]; names sharing a bit share it): a plugin's
    /// set of a name not among them, the usual case, removes nothing without a pass over them.
    names: u64,
    /// The request's id, the response's `x-request-id` (never among the lines), once the proxy
    /// set it ([`Lines::set_request_id`]).
    request_id: Option<HeaderValue>,
}

impl Lines {
    /// The lines, each ending in `\r\n`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether a `date` is among them.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Gives the response its `x-request-id`, written before the lines rather than put into
    /// the response's map (an insert into a map that is empty until then: ~230 instructions a
    /// request, `scripts/callgrind-proxy`).
    pub fn set_request_id(&mut self, id: HeaderValue) {
        if self.request_id_line {
            self.remove(crate::logging::REQUEST_ID.as_str());
        }
        self.request_id = Some(id);
    }

    /// Makes a response-headers plugin's change to the fields, as
    /// [`Batch::apply_to_response`] makes it to a map (a status change is the caller's). The
    /// names a plugin may change are none the lines leave out or refuse (`mutation.rs` refuses
    /// the framing and hop-by-hop ones), but `date`, which is noted, and `x-request-id`, which
    /// [`Lines::set_request_id`] replaces.
    pub fn change(&mut self, change: ResponseChange) {
        match change {
            ResponseChange::Set(name, value) => {
                self.remove(name.as_str());
                self.add(&name, &value);
            }
            ResponseChange::Add(name, value) => self.add(&name, &value),
            ResponseChange::Remove(name) => self.remove(name.as_str()),
            ResponseChange::Status(_) => {}
        }
    }

    /// A line for `name` after the others (a checked name and value: no line break in either).
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.names |= name_bit(name.as_str().as_bytes());
        self.date |= *name == DATE;
        self.request_id_line |= *name == crate::logging::REQUEST_ID;
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        self.bytes.reserve(name.len() + value.len() + 4);
        for piece in [name, b": ", value, b"\r\n"] {
            self.bytes.extend_from_slice(piece);
        }
    }

    /// Every line of `name` (lowercase; the lines' names in any case) taken out, the lines after
    /// each moved over it.
    fn remove(&mut self, name: &str) {
        let name = name.as_bytes();
        if self.names & name_bit(name) == 0 {
            return;
        }
        let (mut read, mut write) = (0, 0);
        while read < self.bytes.len() {
            let end = memchr::memchr(b'\n', &self.bytes[read..]).map_or(self.bytes.len(), |at| read + at + 1);
            let line = &self.bytes[read..end];
            let named =
                line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name);
            if !named {
                if write != read {
                    self.bytes.copy_within(read..end, write);
                }
                write += end - read;
            }
            read = end;
        }
        self.bytes.truncate(write);
        if name == b"date" {
            self.date = false;
        } else if name == crate::logging::REQUEST_ID.as_str().as_bytes() {
            self.request_id_line = false;
        }
    }

    /// The `x-request-id` to write before the lines.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// The lines' fields added to `map`, for a writer that takes a map (hyper's server). A
    /// field set in `map` already is not among them (see the module's doc).
    pub fn into_map(self, map: &mut HeaderMap) {
        if let Some(id) = self.request_id {
            map.insert(crate::logging::REQUEST_ID.clone(), id);
        }
        let bytes = self.bytes.freeze();
        let mut at = 0;
        while let Some(end) = bytes[at..].iter().position(|&b| b == b'\n') {
            let line = at..at + end - 1;
            at += end + 1;
            let Some(colon) = bytes[line.clone()].iter().position(|&b| b == b':') else {
                continue;
            };
            let name = HeaderName::from_bytes(&bytes[line.start..line.start + colon]);
            let value = HeaderValue::from_maybe_shared(bytes.slice(line.start + colon + 2..line.end));
            // Both were accepted by httparse, whose name and value bytes these accept too
            // (`every_name_and_value_httparse_takes_goes_into_a_map`).
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }
}

/// The bit of [`Lines::names`] for a field name in any case: from its length and first letter.
fn name_bit(name: &[u8]) -> u64 {
    // `| 0x20` lowercases a letter and leaves the other token characters' bit as it is, so
    // both cases of a name get one bit.
    let first = name.first().map_or(0, |&b| b | 0x20);
    1 << ((name.len() as u32 * 7 + u32::from(first)) & 63)
}

/// A response head whose fields stayed as [`Lines`], as the response-headers plugins read and
/// change it.
pub struct LinesHead<'a> {
    pub status: &'a mut StatusCode,
    pub lines: &'a mut Lines,
}

impl weft_runtime::ResponseHead for LinesHead<'_> {
    fn status(&self) -> StatusCode {
        *self.status
    }

    fn fields(&self) -> view::Fields<'_> {
        view::Fields::Lines(self.lines.as_bytes())
    }

    fn apply(&mut self, batch: Batch) {
        batch.apply_with(|change| match change {
            ResponseChange::Status(status) => *self.status = status,
            change => self.lines.change(change),
        });
    }
}

/// A response body that may carry its head's fields as [`Lines`] (the proxy's body, for a
/// response whose body no plugin reads): the lean server writes them as they are, and hyper's
/// server gets them put in the map first.
pub trait HeadLines {
    /// The lines, taken (None after the first call, and from a body that has none).
    fn take_lines(&mut self) -> Option<Box<Lines>> {
        None
    }
}

impl HeadLines for http_body_util::Full<Bytes> {}
impl<E> HeadLines for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {}

/// The most fields a head kept as lines has: a bit each in [`Kept`] (a `u128` for all of
/// [`super::head::MAX_HEADERS`] cost ~50 instructions a response more in shifts).
const MAX_LINES: usize = 64;

/// Which of a head's lines [`scan`] keeps, and whether a `date` is among them.
pub(super) struct Kept {
    /// Bit i: leave line i out.
    left_out: u64,
    date: bool,
    /// [`Lines::names`].
    names: u64,
}

/// How a field name bears on the lines.
enum Role {
    /// Written as it came.
    Keep,
    Date,
    /// Read for the framing or the connection, and left out.
    Noted(Noted),
    /// A field the proxy would change: the head goes into a map.
    Refuse,
}

fn role(name: &[u8]) -> Role {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let request_id = crate::logging::REQUEST_ID.as_str();
    match name.len() {
        4 if is("date") => Role::Date,
        // What `connection: close` would strip on the map path (a field no one sends).
        5 if is("close") => Role::Refuse,
        10 if is("connection") => Role::Noted(Noted::Connection),
        10 if is("keep-alive") => Role::Noted(Noted::KeepAlive),
        14 if is("content-length") => Role::Noted(Noted::ContentLength),
        17 if is("transfer-encoding") => Role::Noted(Noted::TransferEncoding),
        // `te`, `trailer`, `upgrade`, `proxy-connection`, `proxy-authenticate`,
        // `proxy-authorization`: stripped by the map path.
        2 | 7 | 16 | 18 | 19 if crate::forward::is_hop_by_hop(name) => Role::Refuse,
        // Set by the proxy on every response, replacing the upstream's.
        n if n == request_id.len() && is(request_id) => Role::Refuse,
        _ => Role::Keep,
    }
}

/// Whether the head (`places` in `head`) can stay as lines for `ask`: asked so, a response with
/// a body of its own (not 1xx, 204, 304, or to a HEAD, whose framing fields the writer keeps
/// as given), at most [`MAX_LINES`] fields, and every field one the lines can carry (see the
/// module's doc); if so, what the framing fields said and the lines to keep.
pub(super) fn scan<'a>(head: &'a [u8], places: &[Place], status: StatusCode, ask: Ask) -> Option<(Facts<'a>, Kept)> {
    if ask.fields != Fields::Lines
        || places.len() > MAX_LINES
        || ask.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    let mut facts = Facts::default();
    let mut kept = Kept {
        left_out: 0,
        date: false,
        names: 0,
    };
    for (i, place) in places.iter().enumerate() {
        let name = &head[range(place.name)];
        let keep = match role(name) {
            Role::Keep => {
                kept.names |= name_bit(name);
                true
            }
            Role::Date => {
                kept.date = true;
                kept.names |= name_bit(name);
                true
            }
            Role::Noted(field) => {
                facts.note_field(field, &head[range(place.value)]);
                if facts.lists_fields {
                    return None;
                }
                false
            }
            Role::Refuse => return None,
        };
        if !keep {
            kept.left_out |= 1 << i;
        } else if !plain_line(head, place) {
            return None;
        }
    }
    Some((facts, kept))
}

/// `name: value\r\n`, nothing between.
fn plain_line(head: &[u8], place: &Place) -> bool {
    let name_end = range(place.name).end;
    let value = range(place.value);
    value.start == name_end + 2
        && head.get(name_end..value.start) == Some(b": ")
        && head.get(value.end..value.end + 2) == Some(b"\r\n")
}

impl Kept {
    /// The kept lines of `head`, moved together in place (a line left out is written over by
    /// the ones after it).
    pub(super) fn lines(self, mut head: BytesMut, places: &[Place]) -> Lines {
        let Some(first) = places.first() else {
            return Lines::default();
        };
        let start = range(first.name).start;
        let mut at = start;
        for (i, place) in places.iter().enumerate() {
            if self.left_out & (1 << i) != 0 {
                continue;
            }
            let line = range(place.name).start..range(place.value).end + 2;
            let len = line.len();
            if line.start != at {
                head.copy_within(line, at);
            }
            at += len;
        }
        head.truncate(at);
        head.advance(start);
        Lines {
            bytes: head,
            date: self.date,
            request_id_line: false,
            names: self.names,
            request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::{Framing, Head, MAX_HEADERS, Names, Parsed, parse};

    fn ask(fields: Fields) -> Ask {
        Ask {
            head_request: false,
            fields,
        }
    }

    fn head_as(raw: &str, fields: Fields) -> Box<Head> {
        match parse(&mut BytesMut::from(raw.as_bytes()), ask(fields), &mut Names::default()).unwrap() {
            Parsed::Final(_, head) => head,
            other => panic!("expected a final head, got {other:?}"),
        }
    }

    fn lines(raw: &str) -> Option<String> {
        let head = head_as(raw, Fields::Lines);
        let lines = head.lines?;
        assert!(
            head.parts.headers.is_empty(),
            "the map of a head kept as lines is empty"
        );
        Some(String::from_utf8(lines.as_bytes().to_vec()).unwrap())
    }

    /// The fields of `raw` as the map path leaves them, by lowercase name in order.
    fn map_fields(raw: &str) -> Vec<(String, String)> {
        let mut map = head_as(raw, Fields::Map).parts.headers;
        crate::forward::strip_hop_by_hop(&mut map);
        fields_of(&map)
    }

    fn fields_of(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn a_plain_head_keeps_its_end_to_end_lines_as_they_came() {
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 17:00:00 GMT\r\n\
                   Content-Type: text/html\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\
                   ETag: \"x\"\r\n\r\n";
        assert_eq!(
            lines(raw).unwrap(),
            "Server: nginx\r\nDate: Mon, 07 Dec 2026 17:00:00 GMT\r\nContent-Type: text/html\r\nETag: \"x\"\r\n"
        );
        let head = head_as(raw, Fields::Lines);
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(5), true));
        assert!(head.lines.unwrap().has_date());
        // The same fields the map path forwards (content-length aside: the writer frames the
        // body by its size either way).
        let mut map = HeaderMap::new();
        head_as(raw, Fields::Lines).lines.unwrap().into_map(&mut map);
        let mut expected = map_fields(raw);
        expected.retain(|(n, _)| n != "content-length");
        assert_eq!(fields_of(&map), expected);
    }

    /// A response-headers plugin's changes made to the lines leave the fields the same changes
    /// leave in the map of the same head (by name, each name's values in order), the status
    /// too; `date` stays noted as the lines change, and a plugin's `x-request-id` gives way to
    /// the proxy's.
    #[test]
    fn plugin_changes_to_the_lines_match_the_map_s() {
        use weft_runtime::ResponseHead as _;
        use weft_runtime::abi::{WeftMutationOp as M, WeftPhase};
        use weft_runtime::mutation::{decode, encode_record};
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 17:00:00 GMT\r\n\
                   X-Two: a\r\nContent-Length: 5\r\nx-two: b\r\nETag: \"x\"\r\n\r\n";
        type Records = &'static [(M, u32, &'static str, &'static str)];
        let cases: [Records; 5] = [
            &[
                (M::SetResponseHeader, 0, "x-two", "c"),
                (M::AddResponseHeader, 0, "x-new", "1"),
            ],
            &[
                (M::RemoveResponseHeader, 0, "server", ""),
                (M::RemoveResponseHeader, 0, "absent", ""),
            ],
            &[
                (M::SetResponseHeader, 0, "date", "Tue, 08 Dec 2026 00:00:00 GMT"),
                (M::SetStatus, 203, "", ""),
            ],
            &[
                (M::RemoveResponseHeader, 0, "date", ""),
                (M::AddResponseHeader, 0, "etag", "\"y\""),
            ],
            &[
                (M::AddResponseHeader, 0, "x-request-id", "forged"),
                (M::SetResponseHeader, 0, "x-two", ""),
            ],
        ];
        let sorted = |mut fields: Vec<(String, String)>| {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            fields
        };
        for records in cases {
            let mut buf = Vec::new();
            for &(op, arg, a, b) in records {
                encode_record(&mut buf, op as u32, arg, a.as_bytes(), b.as_bytes());
            }
            let batch = || decode(&buf, buf.len(), WeftPhase::ResponseHeaders).unwrap();
            let mut kept = *head_as(raw, Fields::Lines);
            let mut lines = kept.lines.take().unwrap();
            LinesHead {
                status: &mut kept.parts.status,
                lines: &mut lines,
            }
            .apply(batch());
            let mut mapped = head_as(raw, Fields::Map).parts;
            crate::forward::strip_hop_by_hop(&mut mapped.headers);
            mapped.headers.remove("content-length");
            mapped.apply(batch());
            assert_eq!(kept.parts.status, mapped.status, "{records:?}");
            assert_eq!(lines.has_date(), mapped.headers.contains_key("date"), "{records:?}");
            // What the writer gets: the proxy's id replaces whatever a plugin set.
            let id = HeaderValue::from_static("the-proxy-s");
            lines.set_request_id(id.clone());
            mapped.headers.insert(crate::logging::REQUEST_ID.clone(), id);
            let text = String::from_utf8(lines.as_bytes().to_vec()).unwrap();
            assert!(!text.to_ascii_lowercase().contains("x-request-id"), "{text}");
            let mut map = HeaderMap::new();
            lines.into_map(&mut map);
            assert_eq!(
                sorted(fields_of(&map)),
                sorted(fields_of(&mapped.headers)),
                "{records:?}"
            );
        }
    }

    #[test]
    fn the_framing_and_hop_by_hop_fields_are_read_and_left_out() {
        let head = head_as(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\nConnection: close\r\n\
             Keep-Alive: timeout=5\r\nx-b: 2\r\n\r\n",
            Fields::Lines,
        );
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, false));
        let kept = head.lines.unwrap();
        assert_eq!(kept.as_bytes(), b"x-a: 1\r\nx-b: 2\r\n");
        assert!(!kept.has_date());
        // No fields at all, or none kept.
        assert_eq!(lines("HTTP/1.1 200 OK\r\n\r\n").unwrap(), "");
        assert_eq!(lines("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap(), "");
        // Malformed framing is refused as on the map path.
        let bad = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse(&mut BytesMut::from(bad), ask(Fields::Lines), &mut Names::default()).is_err());
    }

    #[test]
    fn a_head_the_proxy_would_change_goes_into_a_map() {
        for raw in [
            // A `connection` naming an end-to-end field, which is stripped with it.
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nclose: 1\r\ncontent-length: 0\r\n\r\n",
            // Other hop-by-hop fields.
            "HTTP/1.1 200 OK\r\nTrailer: x-t\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: trailers\r\ncontent-length: 0\r\n\r\n",
            // The request id the proxy replaces.
            "HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\ncontent-length: 0\r\n\r\n",
            // Lines not in the plain form.
            "HTTP/1.1 200 OK\r\nx-a:1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a:  1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1 \r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 0\n\n",
            // Statuses whose framing fields the writer keeps or drops by their own rules.
            "HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nx-a: 1\r\n\r\n",
        ] {
            let head = head_as(raw, Fields::Lines);
            assert!(head.lines.is_none(), "{raw:?} stays as lines");
            assert!(!head.parts.headers.is_empty(), "{raw:?}'s fields are in its map");
        }
        // A HEAD's response, and a head asked for as a map.
        let raw = "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n";
        let head_request = Ask {
            head_request: true,
            fields: Fields::Lines,
        };
        let Parsed::Final(_, h) = parse(&mut BytesMut::from(raw), head_request, &mut Names::default()).unwrap() else {
            panic!("a final head");
        };
        assert!(h.lines.is_none());
        assert!(head_as(raw, Fields::Map).lines.is_none());
        assert!(lines(raw).is_some());
    }

    #[test]
    fn a_head_of_more_fields_than_the_mask_holds_goes_into_a_map() {
        let head_of = |n: usize| {
            let mut raw = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..n - 1 {
                raw.push_str(&format!("x-{i}: {i}\r\n"));
            }
            raw + "content-length: 0\r\n\r\n"
        };
        let kept = lines(&head_of(MAX_LINES)).expect("kept as lines");
        assert_eq!(kept.matches("\r\n").count(), MAX_LINES - 1);
        assert!(kept.ends_with(&format!("x-{0}: {0}\r\n", MAX_LINES - 2)));
        assert!(lines(&head_of(MAX_LINES + 1)).is_none());
        let map = head_as(&head_of(MAX_HEADERS), Fields::Lines).parts.headers;
        assert_eq!(map.len(), MAX_HEADERS);
    }

    #[test]
    fn every_name_and_value_httparse_takes_goes_into_a_map() {
        // Every token character in a name, every byte httparse takes in a value.
        let tchar: Vec<u8> = (0u8..=255)
            .filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
            .collect();
        let value: Vec<u8> = (0u8..=255)
            .filter(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
            .filter(|&b| b != b' ' && b != b'\t')
            .collect();
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        raw.extend_from_slice(&tchar);
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(&value);
        raw.extend_from_slice(b" x\tx\r\ncontent-length: 0\r\n\r\n");
        let Parsed::Final(_, head) =
            parse(&mut BytesMut::from(&raw[..]), ask(Fields::Lines), &mut Names::default()).unwrap()
        else {
            panic!("a final head");
        };
        let mut map = HeaderMap::new();
        head.lines.expect("kept as lines").into_map(&mut map);
        let (name, got) = map.iter().next().expect("the field in the map");
        assert_eq!(name.as_str().as_bytes(), tchar.to_ascii_lowercase());
        assert_eq!(&got.as_bytes()[..value.len()], &value[..]);
        assert_eq!(map.len(), 1);
    }
}
