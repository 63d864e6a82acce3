//! Lays a request (and later its response) out in an arena slot as a [`WeftRequestView`] that a
//! plugin reads in place.
//!
//! Slot layout, all offsets relative to the slot start:
//! ```text
//! [WeftRequestView][request line strings: method, path, query, authority, client, scheme,
//!  server name, version] <- fixed_end
//! [request WeftHeader array][request header strings]
//! [response WeftHeader array][response header strings] <- view.size
//! [padding to 8][mutation buffer ... to the end of the slot]
//! ```
//! The request section is written once per change of the request head; a change of its headers
//! alone rewrites only what follows `fixed_end` ([`encode_request_headers`]). The response
//! section is appended after it, so the response and log phases see both without re-encoding the
//! request. Plugins find everything through offsets and assume no order.

use std::io::Write as _;
use std::mem::{align_of, size_of};
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

use crate::abi::{WeftHeader, WeftRequestView, WeftStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request view needs more than the {cap} bytes of an arena slot")]
pub struct ViewTooLarge {
    pub cap: usize,
}

/// The parts of a request head a view shows.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

/// Identity fields that stay fixed for one request.
#[derive(Clone)]
pub struct ViewIdentity {
    pub request_id: u64,
    pub slot: u32,
    pub generation: u32,
    pub client: ClientAddr,
    pub scheme: &'static str,
    /// The TLS server name (SNI); shared with the connection, so a request does not copy it.
    pub server_name: Option<Arc<str>>,
}

/// A client's socket address with, for IPv4, its text as a view shows it (`ip:port`),
/// formatted once: a server makes one per connection and hands it to each request's exchange, so
/// a request's view copies the text instead of formatting the address (~120 instructions a
/// request, `scripts/callgrind-proxy`). The size of a `SocketAddr`, so an exchange does not grow;
/// an IPv6 address is formatted per view as before (`[ip]:port` does not fit).
#[derive(Clone, Copy)]
pub struct ClientAddr(ClientRepr);

#[derive(Clone, Copy)]
enum ClientRepr {
    V4 {
        addr: std::net::SocketAddrV4,
        len: u8,
        text: [u8; 21],
    },
    Other(SocketAddr),
}

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> ClientAddr {
        ClientAddr(match addr {
            SocketAddr::V4(addr) => {
                let mut text = [0u8; 21];
                let len = format_v4(&mut text, addr) as u8;
                ClientRepr::V4 { addr, len, text }
            }
            other => ClientRepr::Other(other),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self.0 {
            ClientRepr::V4 { addr, .. } => SocketAddr::V4(addr),
            ClientRepr::Other(addr) => addr,
        }
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> ClientAddr {
        ClientAddr::new(addr)
    }
}

impl std::fmt::Debug for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

pub const VIEW_HEADER_SIZE: usize = size_of::<WeftRequestView>();

/// Spare entries after each header array's last one: a plugin's added headers are written into
/// them in place ([`patch_headers`]) instead of the section being laid out again.
const SPARE_HEADERS: usize = 4;

/// Where a header array lies in the slot, as the host wrote it: the offset, the entries in use
/// and the entries there is room for. The host keeps this itself; the view's own fields lie in
/// memory a plugin can write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderArray {
    pub off: u32,
    /// u16: a slot holds far fewer entries (a section of more is refused, `ViewTooLarge`).
    pub count: u16,
    pub cap: u16,
}

impl HeaderArray {
    /// Where the section's strings begin: after the array's last spare entry.
    fn strings_start(&self) -> usize {
        self.off as usize + self.cap as usize * size_of::<WeftHeader>()
    }

    fn entry_at(&self, i: u16) -> usize {
        self.off as usize + i as usize * size_of::<WeftHeader>()
    }
}

/// Which header lines a view carries: every line of the head, or every line of the names listed
/// (lowercase, without repeats; the plugins' `WeftViewHeaders`). The view's `host` field is
/// filled either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shown<'a> {
    #[default]
    All,
    Named(&'a [HeaderName]),
}

impl<'a> Shown<'a> {
    /// `None` is every line.
    pub fn of(names: Option<&'a [HeaderName]>) -> Shown<'a> {
        names.map_or(Shown::All, Shown::Named)
    }

    /// Whether lines named `name` (lowercase bytes) are in the view.
    pub fn includes(&self, name: &[u8]) -> bool {
        match self {
            Shown::All => true,
            Shown::Named(names) => names.iter().any(|n| n.as_str().as_bytes() == name),
        }
    }
}

/// Where [`Cursor::headers`] put a header array.
struct HeaderSection {
    array: HeaderArray,
    /// The first `host` value's string (the view's `host` field reuses it).
    host: Option<WeftStr>,
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn align(&mut self, to: usize) -> Result<(), ViewTooLarge> {
        let p = self.pos.next_multiple_of(to);
        if p > self.buf.len() {
            return Err(ViewTooLarge { cap: self.buf.len() });
        }
        self.buf[self.pos..p].fill(0);
        self.pos = p;
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> Result<usize, ViewTooLarge> {
        let at = self.pos;
        let end = at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ViewTooLarge { cap: self.buf.len() })?;
        self.pos = end;
        Ok(at)
    }

    fn str(&mut self, bytes: &[u8]) -> Result<WeftStr, ViewTooLarge> {
        let at = self.reserve(bytes.len())?;
        crate::short::copy(&mut self.buf[at..at + bytes.len()], bytes);
        Ok(WeftStr {
            off: at as u32,
            len: bytes.len() as u32,
        })
    }

    fn formatted(&mut self, args: std::fmt::Arguments<'_>) -> Result<WeftStr, ViewTooLarge> {
        let at = self.pos;
        let cap = self.buf.len();
        let mut rest = &mut self.buf[at..];
        let before = rest.len();
        rest.write_fmt(args).map_err(|_| ViewTooLarge { cap })?;
        let n = before - rest.len();
        self.pos += n;
        Ok(WeftStr {
            off: at as u32,
            len: n as u32,
        })
    }

    /// Writes the header array of the lines `shown` names (zeroed spare entries after it)
    /// followed by their strings; returns where the array lies and, when `want_host` (the
    /// request section), where the first `host` value went (written after the lines when `host`
    /// is not among them).
    fn headers<'h>(
        &mut self,
        headers: &'h HeaderMap,
        shown: Shown<'h>,
        want_host: bool,
    ) -> Result<HeaderSection, ViewTooLarge> {
        let names = match shown {
            Shown::All => return self.map_lines(headers.len(), headers.iter()),
            Shown::Named(names) => names,
        };
        // A lookup per name (~140 instructions, a hash and a probe) and ~100 a picked line,
        // against ~100 a line for the whole head (`scripts/callgrind-phase`): a short head costs
        // less laid out whole, which the contract allows (a view may carry more lines than its
        // plugins declared).
        if 240 * names.len() + 140 >= 100 * headers.len() {
            return self.map_lines(headers.len(), headers.iter());
        }
        // Each name is looked up once when the names are few and each has at most one line
        // (the usual head), its line kept for the layout; else each name's lines are looked up
        // twice, to count them and to lay them out.
        const FEW: usize = 8;
        static NO_NAME: HeaderName = HeaderName::from_static("x");
        static NO_VALUE: HeaderValue = HeaderValue::from_static("");
        if names.is_empty() {
            return self
                .map_lines(0, std::iter::empty())
                .and_then(|section| self.with_host(section, headers, want_host));
        }
        let mut found = [(&NO_NAME, &NO_VALUE); FEW];
        let mut n = 0;
        let single = names.len() <= FEW
            && names.iter().all(|name| {
                let mut values = headers.get_all(name).iter();
                let Some(value) = values.next() else {
                    return true;
                };
                found[n] = (name, value);
                n += 1;
                values.next().is_none()
            });
        let section = if single {
            self.map_lines(n, found[..n].iter().copied())?
        } else {
            let count = names.iter().map(|n| headers.get_all(n).iter().count()).sum();
            self.map_lines(
                count,
                names
                    .iter()
                    .flat_map(|n| headers.get_all(n).iter().map(move |v| (n, v))),
            )?
        };
        self.with_host(section, headers, want_host)
    }

    /// The lines of a map (names lowercase already).
    #[inline(always)]
    fn map_lines<'h>(
        &mut self,
        count: usize,
        lines: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    ) -> Result<HeaderSection, ViewTooLarge> {
        self.lines::<_, _, false>(count, lines)
    }

    /// The header array of the field lines `shown` names among `lines` ([`Fields::Lines`]), their
    /// names lowercase; a response section's (no `host` looked for). One pass over the
    /// lines: the array has room for every line (a count of line ends), the entries the named
    /// ones leave spare.
    fn field_lines(&mut self, lines: &[u8], shown: Shown<'_>) -> Result<HeaderSection, ViewTooLarge> {
        let names = match shown {
            Shown::Named([]) => return self.lines::<&[u8], &[u8], true>(0, std::iter::empty()),
            Shown::Named(names) => names,
            Shown::All => &[],
        };
        let shows =
            |name: &[u8]| names.is_empty() || names.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name));
        let bound = memchr::memchr_iter(b'\n', lines).count() + usize::from(lines.last().is_some_and(|&b| b != b'\n'));
        self.lines::<_, _, true>(bound, field_lines(lines).filter(|(name, _)| shows(name)))
    }

    /// `section` with where the first `host` value went, when `want_host` (the request section)
    /// and its lines did not include one: the value is written after them.
    #[inline(always)]
    fn with_host(
        &mut self,
        mut section: HeaderSection,
        headers: &HeaderMap,
        want_host: bool,
    ) -> Result<HeaderSection, ViewTooLarge> {
        if want_host
            && section.host.is_none()
            && let Some(host) = first_host(headers)
        {
            section.host = Some(self.str(host.as_bytes())?);
        }
        Ok(section)
    }

    /// Writes a header array of `bound` entries for `lines` (zeroed spare entries after it)
    /// followed by their strings; returns where the array lies and where the first `host` value
    /// went. `RAW`: a response's field lines as an upstream sent them, whose names are copied
    /// lowercase, which may be fewer than `bound` (the entries they leave are zeroed, spare like
    /// the [`SPARE_HEADERS`] after them) and among which no `host` is looked for; else a map's
    /// lines, exactly `bound` of them (not counted: this is the request view's layout, on every
    /// plugin call's path).
    #[inline]
    fn lines<N: AsRef<[u8]>, V: AsRef<[u8]>, const RAW: bool>(
        &mut self,
        bound: usize,
        lines: impl Iterator<Item = (N, V)>,
    ) -> Result<HeaderSection, ViewTooLarge> {
        self.align(align_of::<WeftHeader>())?;
        // 65,535 entries are a megabyte of array alone; a section of more is refused as too large.
        let cap_entries = u16::try_from(bound + SPARE_HEADERS).map_err(|_| ViewTooLarge { cap: self.buf.len() })?;
        let array = self.reserve((bound + SPARE_HEADERS) * size_of::<WeftHeader>())?;
        let cap = self.buf.len();
        let (head, mut rest) = self.buf.split_at_mut(self.pos);
        let (table, spare) = head[array..].split_at_mut(bound * size_of::<WeftHeader>());
        // A fixed-size store, not a call into `memset`.
        let spare: &mut [u8; SPARE_HEADERS * size_of::<WeftHeader>()] =
            spare.try_into().expect("the spare entries were reserved");
        *spare = [0; SPARE_HEADERS * size_of::<WeftHeader>()];
        let mut at = self.pos;
        let mut host = None;
        let mut count = 0;
        for ((name, value), entry) in lines.zip(table.chunks_exact_mut(size_of::<WeftHeader>())) {
            let (name, value) = (name.as_ref(), value.as_ref());
            if name.len() + value.len() > rest.len() {
                return Err(ViewTooLarge { cap });
            }
            let h = WeftHeader {
                name: match RAW {
                    true => put_lowercase(&mut rest, &mut at, name),
                    false => put(&mut rest, &mut at, name),
                },
                value: put(&mut rest, &mut at, value),
            };
            if !RAW && host.is_none() && name == b"host" {
                host = Some(h.value);
            }
            write_struct(entry, 0, h);
            if RAW {
                count += 1;
            }
        }
        if !RAW {
            count = bound;
        } else if count < bound {
            table[count * size_of::<WeftHeader>()..].fill(0);
        }
        self.pos = at;
        Ok(HeaderSection {
            array: HeaderArray {
                off: array as u32,
                count: count as u16,
                cap: cap_entries,
            },
            host,
        })
    }
}

/// The first `host` line's value (`headers.get(HOST)`): the head's first line is looked at
/// first (where HTTP/1.1 clients usually put `host`; curl and wrk do), a name comparison, before
/// the hash and probe of a lookup. A name has one entry in the map, holding
/// its values in order, so whichever entry is first, its first value is the name's first.
#[inline]
fn first_host(headers: &HeaderMap) -> Option<&HeaderValue> {
    match headers.iter().next() {
        Some((name, value)) if name == http::header::HOST => Some(value),
        _ => headers.get(http::header::HOST),
    }
}

/// Copies `bytes` to the front of `rest` (which the caller checked can hold them), which starts
/// at slot offset `*at`; advances both past them.
#[inline]
fn put(rest: &mut &mut [u8], at: &mut usize, bytes: &[u8]) -> WeftStr {
    put_then(rest, at, bytes, |_| {})
}

/// [`put`] with the copy's ASCII letters lowercased (a field name as an upstream sent it).
#[inline]
fn put_lowercase(rest: &mut &mut [u8], at: &mut usize, bytes: &[u8]) -> WeftStr {
    put_then(rest, at, bytes, <[u8]>::make_ascii_lowercase)
}

#[inline(always)]
fn put_then(rest: &mut &mut [u8], at: &mut usize, bytes: &[u8], then: impl FnOnce(&mut [u8])) -> WeftStr {
    let (dst, tail) = std::mem::take(rest).split_at_mut(bytes.len());
    crate::short::copy(dst, bytes);
    then(dst);
    *rest = tail;
    let s = WeftStr {
        off: *at as u32,
        len: bytes.len() as u32,
    };
    *at += bytes.len();
    s
}

fn write_struct<T: Copy>(buf: &mut [u8], at: usize, value: T) {
    assert!(at + size_of::<T>() <= buf.len());
    // SAFETY: bounds checked above; write_unaligned has no alignment requirement, and T is a
    // plain-old-data repr(C) type.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(at).cast::<T>(), value) }
}

fn read_view(buf: &[u8]) -> WeftRequestView {
    assert!(buf.len() >= VIEW_HEADER_SIZE);
    // SAFETY: bounds checked; any bit pattern is a valid WeftRequestView (all integers).
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<WeftRequestView>()) }
}

/// Writes `a.b.c.d:port` into `out` (21 bytes always suffice); returns the length.
fn format_v4(out: &mut [u8; 21], addr: std::net::SocketAddrV4) -> usize {
    let n = format_ipv4(out, *addr.ip());
    out[n] = b':';
    decimal(out, n + 1, addr.port() as u32)
}

/// The decimal text of every byte value, as its length and up to three digits (zero-padded on
/// the right): an octet is one load and one three-byte store.
const OCTETS: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut v = 0;
    while v < 256 {
        let (h, d, u) = ((v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8);
        t[v] = if v >= 100 {
            [3, b'0' + h, b'0' + d, b'0' + u]
        } else if v >= 10 {
            [2, b'0' + d, b'0' + u, 0]
        } else {
            [1, b'0' + u, 0, 0]
        };
        v += 1;
    }
    t
};

/// Writes `a.b.c.d` into `out` (which must hold 15 bytes); returns the length. The common case of
/// a client address, without the formatting machinery: `Ipv4Addr`'s `Display` costs ~1,000
/// instructions, this ~55 (`scripts/callgrind-proxy`). weft-proxy's `x-forwarded-for` uses it too.
pub fn format_ipv4(out: &mut [u8], ip: std::net::Ipv4Addr) -> usize {
    assert!(out.len() >= 15, "an IPv4 address needs up to 15 bytes");
    let mut n = 0;
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        // Three bytes are stored whatever the length: at most 12 + 3 = 15 for the last octet.
        let [len, digits @ ..] = OCTETS[o as usize];
        out[n..n + 3].copy_from_slice(&digits);
        n += len as usize;
    }
    n
}

/// Writes `v` in decimal at `out[n..]` (`itoa`: two digits per step from a table); returns the
/// end.
fn decimal(out: &mut [u8], n: usize, v: u32) -> usize {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v).as_bytes();
    crate::short::copy(&mut out[n..n + digits.len()], digits);
    n + digits.len()
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Where [`encode_request`] ended: the view's size, the end of its request-line strings (where
/// the headers begin, for [`encode_request_headers`]), and the request header array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEnd {
    pub size: usize,
    pub fixed_end: usize,
    pub headers: HeaderArray,
}

/// Where a section laid out after the request line ends, and its header array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionEnd {
    pub size: usize,
    pub headers: HeaderArray,
}

/// Writes the request section (clearing any response section).
pub fn encode_request(
    buf: &mut [u8],
    id: &ViewIdentity,
    phase: u32,
    head: &RequestHead<'_>,
) -> Result<RequestEnd, ViewTooLarge> {
    encode_request_shown(buf, id, phase, head, Shown::All)
}

/// [`encode_request`] with only the header lines `shown` names.
pub fn encode_request_shown(
    buf: &mut [u8],
    id: &ViewIdentity,
    phase: u32,
    head: &RequestHead<'_>,
    shown: Shown<'_>,
) -> Result<RequestEnd, ViewTooLarge> {
    if buf.len() < VIEW_HEADER_SIZE {
        return Err(ViewTooLarge { cap: buf.len() });
    }
    let mut c = Cursor {
        buf,
        pos: VIEW_HEADER_SIZE,
    };
    let method = c.str(head.method.as_str().as_bytes())?;
    let path = c.str(head.uri.path().as_bytes())?;
    let query = c.str(head.uri.query().unwrap_or("").as_bytes())?;
    let authority = match head.uri.authority() {
        Some(a) => Some(c.str(a.as_str().as_bytes())?),
        None => None,
    };
    let client_addr = match &id.client.0 {
        ClientRepr::V4 { len, text, .. } => c.str(&text[..usize::from(*len)])?,
        ClientRepr::Other(other) => c.formatted(format_args!("{other}"))?,
    };
    let scheme = c.str(id.scheme.as_bytes())?;
    // Plain HTTP (and TLS without SNI) writes nothing: the empty string at offset 0.
    let server_name = match &id.server_name {
        Some(name) => c.str(name.as_bytes())?,
        None => WeftStr::default(),
    };
    let version = c.str(version_str(head.version).as_bytes())?;
    let fixed_end = c.pos;
    let req = c.headers(head.headers, shown, true)?;
    let size = c.pos;
    let view = WeftRequestView {
        size: size as u32,
        phase,
        request_id: id.request_id,
        slot: id.slot,
        generation: id.generation,
        method,
        path,
        query,
        host: host_field(authority, &req),
        client_addr,
        scheme,
        version,
        req_headers_off: req.array.off,
        req_header_count: u32::from(req.array.count),
        status: 0,
        resp_headers_off: size as u32,
        resp_header_count: 0,
        call: 0,
        body: std::ptr::null(),
        body_len: 0,
        body_flags: 0,
        server_name,
    };
    write_struct(c.buf, 0, view);
    Ok(RequestEnd {
        size,
        fixed_end,
        headers: req.array,
    })
}

/// The view's `host`: the URI's authority if it has one (HTTP/2, absolute-form), else the first
/// `host` header's value, which is in the view already; else empty.
fn host_field(authority: Option<WeftStr>, req: &HeaderSection) -> WeftStr {
    authority.or(req.host).unwrap_or_default()
}

/// Writes the request headers again after a change of the headers alone: the method, URI,
/// version and identity stay as [`encode_request`] wrote them before `fixed_end` (its
/// [`RequestEnd::fixed_end`]); any response section is cleared. Returns the new view size and
/// header array.
pub fn encode_request_headers(
    buf: &mut [u8],
    fixed_end: usize,
    phase: u32,
    headers: &HeaderMap,
    shown: Shown<'_>,
) -> Result<SectionEnd, ViewTooLarge> {
    let mut view = read_view(buf);
    let mut c = Cursor { buf, pos: fixed_end };
    let req = c.headers(headers, shown, true)?;
    let size = c.pos;
    resized(&mut view, size, phase);
    // `host` wholly between the struct and `fixed_end` is the URI's authority and stays; after
    // it, it was the first `host` header's value, which moved with the headers; at offset 0 (the
    // empty string) there was neither, and the new headers may have one. (The check is on the
    // whole string: the view lies in memory a plugin could write, and what the host keeps of it
    // stays within the view.)
    let (host_off, host_end) = (view.host.off as usize, view.host.off as usize + view.host.len as usize);
    let authority = host_off >= VIEW_HEADER_SIZE && host_end <= fixed_end;
    if !authority {
        view.host = req.host.unwrap_or_default();
    }
    view.req_headers_off = req.array.off;
    view.req_header_count = u32::from(req.array.count);
    view.status = 0;
    view.resp_headers_off = size as u32;
    view.resp_header_count = 0;
    write_struct(c.buf, 0, view);
    Ok(SectionEnd {
        size,
        headers: req.array,
    })
}

/// A view laid out anew up to `size` for a `phase` call: no body yet.
fn resized(view: &mut WeftRequestView, size: usize, phase: u32) {
    view.size = size as u32;
    for_phase(view, phase);
}

/// A view for a `phase` call without a body.
fn for_phase(view: &mut WeftRequestView, phase: u32) {
    view.phase = phase;
    view.body = std::ptr::null();
    view.body_len = 0;
    view.body_flags = 0;
}

/// Appends (or replaces) the response section after the request section `request_end` bytes
/// long. Returns the new view size and the response header array.
pub fn encode_response(
    buf: &mut [u8],
    request_end: usize,
    phase: u32,
    status: u16,
    headers: &HeaderMap,
) -> Result<SectionEnd, ViewTooLarge> {
    encode_response_shown(buf, request_end, phase, status, headers, Shown::All)
}

/// [`encode_response`] with only the header lines `shown` names.
pub fn encode_response_shown(
    buf: &mut [u8],
    request_end: usize,
    phase: u32,
    status: u16,
    headers: &HeaderMap,
    shown: Shown<'_>,
) -> Result<SectionEnd, ViewTooLarge> {
    encode_response_fields(buf, request_end, phase, status, Fields::Map(headers), shown)
}

/// A response head's fields as the host keeps them.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    Map(&'a HeaderMap),
    /// HTTP/1.1 field lines, `name: value\r\n` back to back, as an upstream sent them (see
    /// [`field_lines`]): the view gets their names lowercase, as a map's.
    Lines(&'a [u8]),
}

/// Each field of HTTP/1.1 field lines (`name: value`, each line ending in `\n` or `\r\n`): its
/// name as written and its value without the whitespace around it. A line without a colon or
/// with an empty name is skipped (a host hands over lines its parser accepted, which have
/// neither).
pub fn field_lines(lines: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
            let (line, after) = rest.split_at(end);
            rest = after;
            if let Some(colon) = memchr::memchr(b':', line).filter(|&c| c > 0) {
                return Some((&line[..colon], line[colon + 1..].trim_ascii()));
            }
        }
        None
    })
}

/// [`encode_response_shown`] for fields kept either way.
pub fn encode_response_fields(
    buf: &mut [u8],
    request_end: usize,
    phase: u32,
    status: u16,
    fields: Fields<'_>,
    shown: Shown<'_>,
) -> Result<SectionEnd, ViewTooLarge> {
    let mut view = read_view(buf);
    let mut c = Cursor { buf, pos: request_end };
    // A response's `host` line, if any, is not the view's `host`: only the array is kept.
    let HeaderSection { array, .. } = match fields {
        Fields::Map(headers) => c.headers(headers, shown, false)?,
        Fields::Lines(lines) => c.field_lines(lines, shown)?,
    };
    let size = c.pos;
    resized(&mut view, size, phase);
    view.status = status as u32;
    view.resp_headers_off = array.off;
    view.resp_header_count = u32::from(array.count);
    write_struct(c.buf, 0, view);
    Ok(SectionEnd { size, headers: array })
}

/// One change a batch makes to a head, as [`patch_headers`] writes it into a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// The name's lines replaced by one (`HeaderMap::insert`).
    Set(&'a [u8], &'a [u8]),
    /// A line added (`HeaderMap::append`).
    Add(&'a [u8], &'a [u8]),
    /// Every line of the name removed.
    Remove(&'a [u8]),
    /// The response's status.
    Status(u16),
    /// A change a view cannot take in place (the request's path or query).
    Other,
}

/// Which section of the view [`patch_headers`] changes: the last one laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Request,
    Response,
}

/// Writes a plugin's changes to the headers of the view's last section (`section`, whose array
/// is `array`; the view ends at `end`) into the view in place, instead of laying the section out
/// again: new strings go after `end`, added lines into the array's spare entries, and the bytes
/// of a replaced or removed line are zeroed (a view is copied to workers and peers; what a
/// plugin removed does not travel with it). Lines of one name keep their order, as in the
/// `HeaderMap` the edits are applied to; a line of a new name or an added line comes last.
///
/// `None` when the edits need the section laid out anew: more added lines than spare entries,
/// no room in the slot, an edit a view cannot take ([`HeaderEdit::Other`], a status for the
/// request), or an entry of the edited name that no longer points inside its section's strings
/// (the view lies in memory a plugin can write; a new layout from the host's own head mends it).
/// What was written by then is overwritten by that layout.
pub fn patch_headers<'a>(
    buf: &mut [u8],
    section: Section,
    array: HeaderArray,
    end: usize,
    phase: u32,
    edits: impl IntoIterator<Item = HeaderEdit<'a>>,
) -> Option<SectionEnd> {
    if end > buf.len() || array.strings_start() > end || array.count > array.cap {
        return None;
    }
    let mut p = Patch { buf, array, end };
    let mut status = None;
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => p.set(name, value)?,
            HeaderEdit::Add(name, value) => p.add(name, value)?,
            HeaderEdit::Remove(name) => p.remove(name, 0)?,
            HeaderEdit::Status(s) if section == Section::Response => status = Some(s),
            HeaderEdit::Status(_) | HeaderEdit::Other => return None,
        }
    }
    let Patch { buf, array, end } = p;
    let mut view = read_view(buf);
    resized(&mut view, end, phase);
    match section {
        Section::Request => {
            view.req_header_count = u32::from(array.count);
            view.resp_headers_off = end as u32;
            view.resp_header_count = 0;
        }
        Section::Response => {
            view.resp_header_count = u32::from(array.count);
            if let Some(s) = status {
                view.status = u32::from(s);
            }
        }
    }
    write_struct(buf, 0, view);
    Some(SectionEnd {
        size: end,
        headers: array,
    })
}

/// A header section being patched: its array, and the view's end where new strings go.
struct Patch<'b> {
    buf: &'b mut [u8],
    array: HeaderArray,
    end: usize,
}

impl Patch<'_> {
    fn entry(&self, i: u16) -> WeftHeader {
        let at = self.array.entry_at(i);
        // SAFETY: `patch_headers` checked the array (to its capacity) lies before `end` within
        // `buf`; WeftHeader is plain integers, any bit pattern is valid.
        unsafe { std::ptr::read_unaligned(self.buf[at..at + size_of::<WeftHeader>()].as_ptr().cast()) }
    }

    fn set_entry(&mut self, i: u16, h: WeftHeader) {
        write_struct(self.buf, self.array.entry_at(i), h);
    }

    /// A string of this section's strings region; `None` if the entry points elsewhere.
    fn own(&self, s: WeftStr) -> Option<std::ops::Range<usize>> {
        let start = s.off as usize;
        let stop = start.checked_add(s.len as usize)?;
        (start >= self.array.strings_start() && stop <= self.end).then_some(start..stop)
    }

    /// Whether `h` is a line of `name`: lengths first (no other entry's bytes are read).
    fn is(&self, h: WeftHeader, name: &[u8]) -> Option<bool> {
        if h.name.len as usize != name.len() {
            return Some(false);
        }
        let r = self.own(h.name)?;
        // The first byte before the rest: names of one length mostly differ there (no call).
        let n = &self.buf[r];
        Some(n.first() == name.first() && n == name)
    }

    fn append(&mut self, bytes: &[u8]) -> Option<WeftStr> {
        let at = self.end;
        let stop = at.checked_add(bytes.len()).filter(|&e| e <= self.buf.len())?;
        crate::short::copy(&mut self.buf[at..stop], bytes);
        self.end = stop;
        Some(WeftStr {
            off: at as u32,
            len: bytes.len() as u32,
        })
    }

    fn zero(&mut self, s: WeftStr) -> Option<()> {
        let r = self.own(s)?;
        self.buf[r].fill(0);
        Some(())
    }

    fn add(&mut self, name: &[u8], value: &[u8]) -> Option<()> {
        if self.array.count == self.array.cap {
            return None;
        }
        let h = WeftHeader {
            name: self.append(name)?,
            value: self.append(value)?,
        };
        self.set_entry(self.array.count, h);
        self.array.count += 1;
        Some(())
    }

    /// The first line of `name` from entry `from` on. A scan of the name lengths alone (one load
    /// an entry); an entry of the same length is checked and compared.
    fn find(&self, name: &[u8], from: u16) -> Option<Option<u16>> {
        const NAME_LEN: usize = std::mem::offset_of!(WeftHeader, name) + std::mem::offset_of!(WeftStr, len);
        let table = &self.buf[self.array.entry_at(from)..self.array.entry_at(self.array.count)];
        for (i, e) in (from..).zip(table.chunks_exact(size_of::<WeftHeader>())) {
            let len = [e[NAME_LEN], e[NAME_LEN + 1], e[NAME_LEN + 2], e[NAME_LEN + 3]];
            if u32::from_ne_bytes(len) as usize == name.len() && self.is(self.entry(i), name)? {
                return Some(Some(i));
            }
        }
        Some(None)
    }

    /// The first line of `name` gets `value`; the others go.
    fn set(&mut self, name: &[u8], value: &[u8]) -> Option<()> {
        let Some(i) = self.find(name, 0)? else {
            return self.add(name, value);
        };
        let mut h = self.entry(i);
        self.zero(h.value)?;
        h.value = self.append(value)?;
        self.set_entry(i, h);
        self.remove(name, i + 1)
    }

    /// Removes the lines of `name` from entry `from` on, keeping the others' order.
    fn remove(&mut self, name: &[u8], from: u16) -> Option<()> {
        let Some(first) = self.find(name, from)? else {
            return Some(());
        };
        let mut kept = first;
        for i in first..self.array.count {
            let h = self.entry(i);
            if self.is(h, name)? {
                self.zero(h.name)?;
                self.zero(h.value)?;
            } else {
                if kept != i {
                    self.set_entry(kept, h);
                }
                kept += 1;
            }
        }
        for i in kept..self.array.count {
            self.set_entry(i, WeftHeader::default());
        }
        self.array.count = kept;
        Some(())
    }
}

/// Sets the phase field of an encoded view (and clears its body fields).
pub fn set_phase(buf: &mut [u8], phase: u32) {
    let mut view = read_view(buf);
    for_phase(&mut view, phase);
    write_struct(buf, 0, view);
}

/// Prepares an encoded view for a body-phase call: the phase and the body fields. `body` must
/// stay valid (and unchanged) for the duration of the call the view is passed to.
pub fn set_body(buf: &mut [u8], phase: u32, body: &[u8], flags: u32) {
    let mut view = read_view(buf);
    view.phase = phase;
    view.body = if body.is_empty() {
        std::ptr::null()
    } else {
        body.as_ptr()
    };
    view.body_len = body.len() as u32;
    view.body_flags = flags;
    write_struct(buf, 0, view);
}

/// Sets the `status` field of an encoded view (the close code of a WebSocket-close call).
pub fn set_status(buf: &mut [u8], status: u32) {
    let mut view = read_view(buf);
    view.status = status;
    write_struct(buf, 0, view);
}

/// Writes the `call` field of the view at `view` (the number `complete` names the call by).
///
/// # Safety
/// `view` points to an encoded view in memory the caller may write (no call outstanding on it).
#[inline]
pub unsafe fn set_call_raw(view: *mut u8, call: u32) {
    // SAFETY: the field lies inside the view struct at the start of the caller's buffer.
    unsafe {
        view.add(std::mem::offset_of!(WeftRequestView, call))
            .cast::<u32>()
            .write_unaligned(call)
    }
}

/// Sets the `slot` and `generation` fields of an encoded view (a view copied into another slot).
pub fn set_identity(buf: &mut [u8], slot: u32, generation: u32) {
    let mut view = read_view(buf);
    view.slot = slot;
    view.generation = generation;
    write_struct(buf, 0, view);
}

/// Reads a view back (tests and fuzzing: checks every offset the way a plugin would).
pub fn decode_for_test(buf: &[u8]) -> Option<DecodedView> {
    if buf.len() < VIEW_HEADER_SIZE {
        return None;
    }
    let v = read_view(buf);
    let size = v.size as usize;
    if size > buf.len() || size < VIEW_HEADER_SIZE {
        return None;
    }
    let view = &buf[..size];
    let s = |w: WeftStr| -> Option<String> {
        let end = (w.off as usize).checked_add(w.len as usize)?;
        Some(String::from_utf8_lossy(view.get(w.off as usize..end)?).into_owned())
    };
    let headers = |off: u32, count: u32| -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        for i in 0..count as usize {
            let at = (off as usize).checked_add(i * size_of::<WeftHeader>())?;
            if at + size_of::<WeftHeader>() > size {
                return None;
            }
            // SAFETY: bounds checked; WeftHeader is plain integers.
            let h: WeftHeader = unsafe { std::ptr::read_unaligned(view.as_ptr().add(at).cast()) };
            out.push((s(h.name)?, s(h.value)?));
        }
        Some(out)
    };
    Some(DecodedView {
        request_id: v.request_id,
        phase: v.phase,
        slot: v.slot,
        generation: v.generation,
        method: s(v.method)?,
        path: s(v.path)?,
        query: s(v.query)?,
        host: s(v.host)?,
        client_addr: s(v.client_addr)?,
        scheme: s(v.scheme)?,
        version: s(v.version)?,
        server_name: s(v.server_name)?,
        request_headers: headers(v.req_headers_off, v.req_header_count)?,
        status: v.status,
        response_headers: headers(v.resp_headers_off, v.resp_header_count)?,
    })
}

#[derive(Debug, PartialEq, Eq)]
pub struct DecodedView {
    pub request_id: u64,
    pub phase: u32,
    pub slot: u32,
    pub generation: u32,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    pub client_addr: String,
    pub scheme: String,
    pub version: String,
    pub server_name: String,
    pub request_headers: Vec<(String, String)>,
    pub status: u32,
    pub response_headers: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ident() -> ViewIdentity {
        ViewIdentity {
            request_id: 7,
            slot: 3,
            generation: 9,
            client: "127.0.0.1:5555".parse::<std::net::SocketAddr>().unwrap().into(),
            scheme: "http",
            server_name: None,
        }
    }

    #[test]
    fn request_and_response_round_trip() {
        let mut buf = vec![0u8; 4096];
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.append("accept", HeaderValue::from_static("a/b"));
        headers.append("accept", HeaderValue::from_static("c/d"));
        let uri: Uri = "/p/q?x=1&y=2".parse().unwrap();
        let head = RequestHead {
            method: &Method::POST,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &headers,
        };
        let end = encode_request(&mut buf, &ident(), 0, &head).unwrap();
        let d = decode_for_test(&buf).unwrap();
        assert_eq!(d.method, "POST");
        assert_eq!(d.path, "/p/q");
        assert_eq!(d.query, "x=1&y=2");
        assert_eq!(d.host, "example.com");
        assert_eq!(d.client_addr, "127.0.0.1:5555");
        assert_eq!(d.version, "HTTP/1.1");
        assert_eq!((d.slot, d.generation, d.request_id), (3, 9, 7));
        assert_eq!(
            d.request_headers,
            vec![
                ("host".into(), "example.com".into()),
                ("accept".into(), "a/b".into()),
                ("accept".into(), "c/d".into())
            ]
        );
        assert_eq!(d.status, 0);
        assert!(d.response_headers.is_empty());

        let mut rh = HeaderMap::new();
        rh.insert("content-type", HeaderValue::from_static("text/plain"));
        encode_response(&mut buf, end.size, 2, 201, &rh).unwrap();
        let d = decode_for_test(&buf).unwrap();
        assert_eq!(d.status, 201);
        assert_eq!(d.phase, 2);
        assert_eq!(d.response_headers, vec![("content-type".into(), "text/plain".into())]);
        assert_eq!(d.path, "/p/q", "request section survives the response append");
    }

    /// A response's fields given as an upstream's lines read back as the same fields given as a
    /// map (names lowercase, values without the space around them), whole or the named ones
    /// only, and patch like them; a line without a colon is skipped, and a slot too small for
    /// them is an error.
    #[test]
    fn field_lines_lay_out_as_the_map_of_their_fields() {
        let uri: Uri = "/p".parse().unwrap();
        let no_headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &no_headers,
        };
        let lines = b"Server: nginx\r\nX-Two: a\r\nx-two:  b \r\nno colon\r\nContent-Type: text/plain\r\n";
        let mut map = HeaderMap::new();
        map.append("server", HeaderValue::from_static("nginx"));
        map.append("x-two", HeaderValue::from_static("a"));
        map.append("x-two", HeaderValue::from_static("b"));
        map.append("content-type", HeaderValue::from_static("text/plain"));
        let named = [HeaderName::from_static("x-two"), HeaderName::from_static("x-absent")];
        let laid_out = |fields: Fields<'_>, shown: Shown<'_>| {
            let mut buf = vec![0u8; 4096];
            let end = encode_request(&mut buf, &ident(), 0, &head).unwrap();
            let done = encode_response_fields(&mut buf, end.size, 2, 200, fields, shown).unwrap();
            let before = decode_for_test(&buf).unwrap();
            let edits = [HeaderEdit::Set(b"x-two", b"c"), HeaderEdit::Add(b"x-new", b"1")];
            patch_headers(&mut buf, Section::Response, done.headers, done.size, 2, edits).unwrap();
            (done, before, decode_for_test(&buf).unwrap())
        };
        let (lines_end, lines_before, lines_after) = laid_out(Fields::Lines(lines), Shown::All);
        let (map_end, map_before, map_after) = laid_out(Fields::Map(&map), Shown::All);
        assert_eq!((&lines_before, &lines_after), (&map_before, &map_after));
        // Room for every line, the one without a colon too (its entry is spare).
        assert_eq!(
            (lines_end.headers.count, lines_end.headers.cap),
            (4, 5 + SPARE_HEADERS as u16)
        );
        assert_eq!(
            (map_end.headers.count, map_end.headers.cap),
            (4, 4 + SPARE_HEADERS as u16)
        );
        let names = |d: &DecodedView| d.response_headers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&lines_before), ["server", "x-two", "x-two", "content-type"]);
        assert_eq!(names(&lines_after), ["server", "x-two", "content-type", "x-new"]);
        // Only the named lines (a map's short head is laid out whole whatever the names: more
        // lines than declared, which the contract allows).
        let (_, before, _) = laid_out(Fields::Lines(lines), Shown::Named(&named));
        assert_eq!(
            before.response_headers,
            [("x-two".into(), "a".into()), ("x-two".into(), "b".into())]
        );
        let (_, before, _) = laid_out(Fields::Lines(lines), Shown::Named(&[]));
        assert_eq!(before.response_headers, []);
        let end = encode_request(&mut vec![0u8; 4096], &ident(), 0, &head).unwrap();
        let mut small = vec![0u8; end.size + 40];
        encode_request(&mut small, &ident(), 0, &head).unwrap();
        assert!(encode_response_fields(&mut small, end.size, 2, 200, Fields::Lines(lines), Shown::All).is_err());
    }

    /// A layout of changed headers alone reads back exactly as a whole new layout of the
    /// changed head (with and without an authority, with a response section before), and a
    /// slot too small for the new headers is an error.
    #[test]
    fn headers_laid_out_again_read_like_a_whole_new_layout() {
        for (uri, host) in [
            ("/p?q=1", Some("example.com")),
            ("http://authority.example/p?q=1", Some("example.com")),
            ("/p", None),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let mut headers = HeaderMap::new();
            if let Some(h) = host {
                headers.insert("host", HeaderValue::from_static(h));
            }
            headers.insert("accept", HeaderValue::from_static("a/b"));
            fn head<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> RequestHead<'a> {
                RequestHead {
                    method: &Method::GET,
                    uri,
                    version: Version::HTTP_11,
                    headers,
                }
            }
            let mut buf = vec![0u8; 4096];
            let end = encode_request(&mut buf, &ident(), 0, &head(&uri, &headers)).unwrap();
            encode_response(&mut buf, end.size, 2, 200, &headers).unwrap();
            headers.insert("x-added", HeaderValue::from_static("a longer value than before"));
            headers.remove("accept");
            // A host where there was none (the engine's plugins cannot add one; the function
            // does not rely on that).
            headers.insert("host", HeaderValue::from_static("added.example"));
            let again = encode_request_headers(&mut buf, end.fixed_end, 0, &headers, Shown::All).unwrap();
            let mut whole = vec![0u8; 4096];
            let fresh = encode_request(&mut whole, &ident(), 0, &head(&uri, &headers)).unwrap();
            let again_end = RequestEnd {
                size: again.size,
                headers: again.headers,
                ..end
            };
            assert_eq!(again_end, fresh, "{uri}");
            assert_eq!(
                decode_for_test(&buf).unwrap(),
                decode_for_test(&whole).unwrap(),
                "{uri}"
            );
            for cap in VIEW_HEADER_SIZE.max(end.fixed_end)..again.size {
                let mut small = buf[..cap].to_vec();
                assert!(
                    encode_request_headers(&mut small, end.fixed_end, 0, &headers, Shown::All).is_err(),
                    "cap {cap}"
                );
            }
        }
    }

    /// The `host` field of a view of named lines not naming `host` is the first `host` line's
    /// value wherever that line is: first (where clients put it and where it is looked at
    /// first), later, repeated, or absent.
    #[test]
    fn the_host_field_is_the_first_host_line_wherever_it_is() {
        let uri: Uri = "/p".parse().unwrap();
        let names: Vec<HeaderName> = vec!["accept".parse().unwrap()];
        let cases: [(&[(&str, &str)], &str); 5] = [
            (&[("host", "first.example"), ("accept", "a/b")], "first.example"),
            (&[("accept", "a/b"), ("host", "later.example")], "later.example"),
            (
                &[("host", "one.example"), ("accept", "a/b"), ("host", "two.example")],
                "one.example",
            ),
            (
                &[("accept", "a/b"), ("host", "one.example"), ("host", "two.example")],
                "one.example",
            ),
            (&[("accept", "a/b")], ""),
        ];
        for (lines, want) in cases {
            let mut headers = HeaderMap::new();
            for (n, v) in lines {
                headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            // Enough other lines that the named ones are looked up, not the head laid out whole.
            for i in 0..12 {
                headers.append(
                    HeaderName::from_bytes(format!("x-fill-{i}").as_bytes()).unwrap(),
                    HeaderValue::from(i),
                );
            }
            let mut buf = vec![0u8; 4096];
            let head = get_head(&uri, &headers, Version::HTTP_11);
            encode_request_shown(&mut buf, &ident(), 0, &head, Shown::Named(&names)).unwrap();
            let v = decode_for_test(&buf).unwrap();
            assert_eq!(v.host, want, "{lines:?}");
            assert_eq!(
                v.request_headers,
                vec![("accept".to_string(), "a/b".to_string())],
                "{lines:?}"
            );
        }
    }

    /// A view of named lines holds every line of those names (in the order of the names, each
    /// name's in the head's order), none of another, and the `host` field whatever was named;
    /// laid out again and as a response section likewise; and what a full layout refuses for
    /// size it refuses too. A head too short for lookups to pay is laid out whole.
    #[test]
    fn a_view_of_named_lines_holds_those_lines_and_the_host() {
        let uri: Uri = "/p?q=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("host", "example.com"),
            ("accept", "a/b"),
            ("x-api-key", "k1"),
            ("cookie", "c=1"),
            ("x-api-key", "k2"),
            ("authorization", "Bearer t"),
        ] {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let named = |names: &[&str]| -> Vec<HeaderName> { names.iter().map(|n| n.parse().unwrap()).collect() };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
        };
        // Six lines: cheaper whole than by three lookups.
        let mut buf = vec![0u8; 4096];
        let few = named(&["authorization", "x-api-key"]);
        encode_request_shown(
            &mut buf,
            &ident(),
            0,
            &get_head(&uri, &headers, Version::HTTP_11),
            Shown::Named(&few),
        )
        .unwrap();
        assert_eq!(decode_for_test(&buf).unwrap().request_headers.len(), 6);
        for i in 0..12 {
            headers.append(
                HeaderName::from_bytes(format!("x-fill-{i}").as_bytes()).unwrap(),
                HeaderValue::from(i),
            );
        }
        let head = get_head(&uri, &headers, Version::HTTP_11);
        for (names, want) in [
            (
                named(&["authorization", "x-api-key", "x-absent"]),
                pairs(&[("authorization", "Bearer t"), ("x-api-key", "k1"), ("x-api-key", "k2")]),
            ),
            (named(&[]), vec![]),
            // One line a name (each looked up once), an absent name among them.
            (
                named(&["x-absent", "accept", "authorization"]),
                pairs(&[("accept", "a/b"), ("authorization", "Bearer t")]),
            ),
            // A name of two lines after one of one.
            (
                named(&["accept", "x-api-key"]),
                pairs(&[("accept", "a/b"), ("x-api-key", "k1"), ("x-api-key", "k2")]),
            ),
            (
                named(&["host", "accept"]),
                pairs(&[("host", "example.com"), ("accept", "a/b")]),
            ),
        ] {
            let shown = Shown::Named(&names);
            let mut buf = vec![0u8; 4096];
            let end = encode_request_shown(&mut buf, &ident(), 0, &head, shown).unwrap();
            let v = decode_for_test(&buf).unwrap();
            assert_eq!(v.request_headers, want, "{names:?}");
            assert_eq!((v.host.as_str(), v.path.as_str()), ("example.com", "/p"), "{names:?}");
            // Laid out again after the request line: the same lines and host.
            let again = encode_request_headers(&mut buf, end.fixed_end, 1, &headers, shown).unwrap();
            let v = decode_for_test(&buf).unwrap();
            assert_eq!(
                (v.request_headers.clone(), v.host.as_str()),
                (want.clone(), "example.com")
            );
            // A response section of the same lines.
            encode_response_shown(&mut buf, again.size, 2, 200, &headers, shown).unwrap();
            assert_eq!(decode_for_test(&buf).unwrap().response_headers, want, "{names:?}");
            // Every byte the layout needs is checked against the slot.
            for cap in VIEW_HEADER_SIZE..end.size {
                let mut small = vec![0u8; cap];
                assert!(
                    encode_request_shown(&mut small, &ident(), 0, &head, shown).is_err(),
                    "cap {cap}"
                );
            }
        }
        // Many lines of one name: each of them laid out, in the head's order.
        let mut many = HeaderMap::new();
        many.insert("host", HeaderValue::from_static("h.example"));
        for i in 0..40 {
            many.append("x-many", HeaderValue::from(i));
            many.append("x-other", HeaderValue::from(i));
        }
        // Forty lines of `want` and the host, whatever the names pick them by.
        let all_of = |names: &[HeaderName], want: &str| {
            let mut buf = vec![0u8; 8192];
            let head = get_head(&uri, &many, Version::HTTP_11);
            encode_request_shown(&mut buf, &ident(), 0, &head, Shown::Named(names)).unwrap();
            let v = decode_for_test(&buf).unwrap();
            let lines: Vec<_> = (0..40).map(|i| (want.to_owned(), i.to_string())).collect();
            assert_eq!((v.request_headers, v.host.as_str()), (lines, "h.example"));
        };
        all_of(&named(&["x-many"]), "x-many");
        // More names than are looked up once: each is looked up twice, same lines.
        let mut names: Vec<HeaderName> = (0..9).map(|i| format!("x-absent-{i}").parse().unwrap()).collect();
        names.push("x-other".parse().unwrap());
        all_of(&names, "x-other");
        // `includes` is what the engine filters a plugin's edits with.
        let names = named(&["x-a"]);
        assert!(Shown::Named(&names).includes(b"x-a") && !Shown::Named(&names).includes(b"x-b"));
        assert!(Shown::All.includes(b"x-b"));
    }

    /// A GET request's head.
    fn get_head<'a>(uri: &'a Uri, headers: &'a HeaderMap, version: Version) -> RequestHead<'a> {
        RequestHead {
            method: &Method::GET,
            uri,
            version,
            headers,
        }
    }

    /// The view shows a client address as its `Display`, for every shape up to the longest
    /// (eight four-digit groups, a ten-digit scope id, a five-digit port), whether its text was
    /// made with the `ClientAddr` (IPv4) or is formatted with the view (IPv6).
    #[test]
    fn client_address_text_is_its_display() {
        use std::net::{Ipv6Addr, SocketAddrV6};
        let longest = SocketAddr::V6(SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse::<Ipv6Addr>().unwrap(),
            65535,
            0,
            u32::MAX,
        ));
        assert_eq!(
            size_of::<ClientAddr>(),
            size_of::<SocketAddr>(),
            "an exchange does not grow"
        );
        for addr in [
            "0.0.0.0:0",
            "1.2.3.4:5",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]:1",
        ]
        .into_iter()
        .map(|a| a.parse::<SocketAddr>().unwrap())
        .chain([longest])
        {
            let client = ClientAddr::new(addr);
            assert_eq!(client.addr(), addr);
            let (headers, uri) = (HeaderMap::new(), Uri::from_static("/"));
            let head = get_head(&uri, &headers, Version::HTTP_11);
            let mut buf = vec![0u8; 1024];
            encode_request(&mut buf, &ViewIdentity { client, ..ident() }, 0, &head).unwrap();
            assert_eq!(decode_for_test(&buf).unwrap().client_addr, addr.to_string());
        }
    }

    #[test]
    fn server_name_is_written_within_the_view_or_left_empty() {
        let (headers, uri) = (HeaderMap::new(), Uri::from_static("/"));
        let head = get_head(&uri, &headers, Version::HTTP_2);
        let raw = |buf: &[u8]| -> WeftRequestView { unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) } };
        // Plain HTTP: the empty string at offset 0, nothing written for it.
        let mut buf = vec![0u8; 1024];
        let plain = encode_request(&mut buf, &ident(), 0, &head).unwrap();
        assert_eq!(raw(&buf).server_name, WeftStr::default());
        assert_eq!(decode_for_test(&buf).unwrap().server_name, "");
        // TLS with SNI: the name's bytes inside the view, which grows by exactly them.
        let id = ViewIdentity {
            scheme: "https",
            server_name: Some(Arc::from("a.example.com")),
            ..ident()
        };
        let end = encode_request(&mut buf, &id, 0, &head).unwrap();
        let v = raw(&buf);
        // The request line's strings grow by exactly them (the header array after them is
        // aligned, so the whole view may grow by up to 3 bytes more).
        assert_eq!(
            end.fixed_end,
            plain.fixed_end + "https".len() - "http".len() + "a.example.com".len()
        );
        assert!(v.server_name.off as usize >= VIEW_HEADER_SIZE);
        assert!((v.server_name.off + v.server_name.len) as usize <= v.size as usize);
        let d = decode_for_test(&buf).unwrap();
        assert_eq!((d.server_name.as_str(), d.scheme.as_str()), ("a.example.com", "https"));
        // A slot too small for the name is the usual error, not a panic or a truncated name.
        for cap in VIEW_HEADER_SIZE..end.size {
            let mut small = vec![0u8; cap];
            assert!(encode_request(&mut small, &id, 0, &head).is_err(), "cap {cap}");
        }
    }

    #[test]
    fn too_small_slot_is_an_error_not_a_panic() {
        let mut headers = HeaderMap::new();
        headers.insert("x-big", HeaderValue::from_bytes(&[b'a'; 3000]).unwrap());
        let uri: Uri = "/".parse().unwrap();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &headers,
        };
        for cap in [0, 10, VIEW_HEADER_SIZE, 200, 3000] {
            let mut buf = vec![0u8; cap];
            assert!(encode_request(&mut buf, &ident(), 0, &head).is_err(), "cap {cap}");
        }
        let mut buf = vec![0u8; 4096];
        assert!(encode_request(&mut buf, &ident(), 0, &head).is_ok());
    }

    #[test]
    fn every_octet_and_port_formats_like_display() {
        for o in 0..=255u8 {
            for (port, ip) in [(0u16, [o, 0, 0, 0]), (80, [255, o, 9, o]), (65535, [o, o, o, o])] {
                let addr = std::net::SocketAddrV4::new(ip.into(), port);
                let mut out = [0u8; 21];
                let n = format_v4(&mut out, addr);
                assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), addr.to_string());
            }
        }
        for port in (0..=65535u16)
            .step_by(7)
            .chain([9, 10, 99, 100, 999, 1000, 9999, 10000, 65535])
        {
            let mut out = [0u8; 8];
            let n = decimal(&mut out, 1, port as u32);
            assert_eq!(std::str::from_utf8(&out[1..n]).unwrap(), port.to_string());
        }
    }

    #[test]
    fn ipv4_fast_format_matches_display() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "127.0.0.1:5555",
            "1.22.133.4:9",
            "100.10.1.0:10000",
            "9.99.199.200:1000",
            "19.109.110.99:100",
            "250.1.20.7:10",
            "8.8.4.4:9999",
        ] {
            let addr: std::net::SocketAddrV4 = a.parse().unwrap();
            let mut out = [0u8; 21];
            let n = format_v4(&mut out, addr);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), a);
        }
    }

    #[test]
    fn http2_authority_is_the_host() {
        let mut buf = vec![0u8; 4096];
        let headers = HeaderMap::new();
        let uri: Uri = "http://h2.example:8443/x".parse().unwrap();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_2,
            headers: &headers,
        };
        encode_request(&mut buf, &ident(), 0, &head).unwrap();
        let d = decode_for_test(&buf).unwrap();
        assert_eq!(d.host, "h2.example:8443");
        assert_eq!(d.version, "HTTP/2.0");
    }

    /// Lines per name in order, as a plugin reading the view sees them (names in any order).
    fn by_name(lines: &[(String, String)]) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut m = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (n, v) in lines {
            m.entry(n.clone()).or_default().push(v.clone());
        }
        m
    }

    fn map_lines(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    /// Random edits written into a view in place read back as the head the same edits were
    /// applied to (`HeaderMap::insert`, `append`, `remove`): every name's lines in order, in the
    /// request section and in the response section, the rest of the view unchanged; what did not
    /// fit is `None`, never a wrong view.
    #[test]
    fn patched_views_read_as_the_edited_head() {
        const NAMES: [&str; 5] = ["accept", "x-a", "x-b", "cookie", "x-long-header-name-for-copies"];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let uri: Uri = "/p?q=1".parse().unwrap();
        let (mut patched, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut req = HeaderMap::new();
            req.insert("host", HeaderValue::from_static("example.com"));
            // Values unique in the round (`rq3q` is no part of another), so a removed one can
            // be looked for in the view's bytes.
            let mut resp = HeaderMap::new();
            for i in 0..next(6) {
                let n = NAMES[next(5)];
                req.append(n, HeaderValue::from_str(&format!("rq{i}q")).unwrap());
                resp.append(n, HeaderValue::from_str(&format!("rs{i}q")).unwrap());
            }
            let section = if round % 2 == 0 {
                Section::Request
            } else {
                Section::Response
            };
            let mut buf = vec![0u8; [4096, 700, 400][next(3)]];
            let Ok(end) = encode_request(&mut buf, &ident(), 0, &get_head(&uri, &req, Version::HTTP_11)) else {
                continue;
            };
            let (array, view_end, mut map) = match section {
                Section::Request => (end.headers, end.size, req.clone()),
                Section::Response => match encode_response(&mut buf, end.size, 2, 200, &resp) {
                    Ok(r) => (r.headers, r.size, resp.clone()),
                    Err(_) => continue,
                },
            };
            let before = decode_for_test(&buf).unwrap();
            let values: Vec<String> = (0..6).map(|i| format!("new{i}-{}", "z".repeat(next(40)))).collect();
            let mut edits = Vec::new();
            for v in values.iter().take(next(7)) {
                let n = NAMES[next(5)];
                let hv = HeaderValue::from_str(v).unwrap();
                match next(3) {
                    0 => {
                        map.insert(n, hv);
                        edits.push(HeaderEdit::Set(n.as_bytes(), v.as_bytes()));
                    }
                    1 => {
                        map.append(n, hv);
                        edits.push(HeaderEdit::Add(n.as_bytes(), v.as_bytes()));
                    }
                    _ => {
                        map.remove(n);
                        edits.push(HeaderEdit::Remove(n.as_bytes()));
                    }
                }
            }
            if section == Section::Response {
                edits.push(HeaderEdit::Status(404));
            }
            let Some(done) = patch_headers(&mut buf, section, array, view_end, 1, edits) else {
                refused += 1;
                continue;
            };
            patched += 1;
            assert!(done.size >= view_end && done.size <= buf.len());
            let after = decode_for_test(&buf).expect("a patched view decodes");
            assert_eq!(after.phase, 1);
            let (lines, other, old_other) = match section {
                Section::Request => (
                    &after.request_headers,
                    &after.response_headers,
                    &before.response_headers,
                ),
                Section::Response => (&after.response_headers, &after.request_headers, &before.request_headers),
            };
            assert_eq!(by_name(lines), by_name(&map_lines(&map)), "round {round}");
            assert_eq!(lines.len(), map.len(), "round {round}");
            assert_eq!(other, old_other, "the other section is untouched");
            assert_eq!(
                (&after.path, &after.host, &after.client_addr),
                (&before.path, &before.host, &before.client_addr)
            );
            if section == Section::Response {
                assert_eq!(after.status, 404);
            }
            // Nothing removed or replaced is left in the view's bytes.
            let text = String::from_utf8_lossy(&buf[..done.size]).into_owned();
            let old_lines = match section {
                Section::Request => &before.request_headers,
                Section::Response => &before.response_headers,
            };
            for (n, v) in old_lines.iter().filter(|(n, _)| n != "host") {
                if !lines.iter().any(|(_, kept)| kept == v) {
                    assert!(!text.contains(v.as_str()), "round {round}: {n}: {v} left in the view");
                }
            }
        }
        assert!(patched > 1000 && refused > 50, "patched {patched}, refused {refused}");
    }

    /// A patch refuses what it cannot write in place: more added lines than spare entries, an
    /// edit of the request line, a status for the request, an entry a plugin pointed elsewhere.
    #[test]
    fn patches_that_do_not_fit_are_refused() {
        let uri: Uri = "/".parse().unwrap();
        let mut req = HeaderMap::new();
        req.insert("accept", HeaderValue::from_static("a"));
        let mut buf = vec![0u8; 2048];
        let end = encode_request(&mut buf, &ident(), 0, &get_head(&uri, &req, Version::HTTP_11)).unwrap();
        let patch = |buf: &mut [u8], edits: &[HeaderEdit<'_>]| {
            patch_headers(buf, Section::Request, end.headers, end.size, 0, edits.iter().copied())
        };
        let adds: Vec<HeaderEdit<'_>> = (0..=SPARE_HEADERS).map(|_| HeaderEdit::Add(b"x-a", b"1")).collect();
        assert!(patch(&mut buf.clone(), &adds[..SPARE_HEADERS]).is_some());
        assert!(
            patch(&mut buf.clone(), &adds).is_none(),
            "one more than the spare entries"
        );
        assert!(patch(&mut buf.clone(), &[HeaderEdit::Other]).is_none());
        assert!(patch(&mut buf.clone(), &[HeaderEdit::Status(500)]).is_none());
        assert!(
            patch(&mut buf[..end.size + 3], &[HeaderEdit::Add(b"x-a", b"1")]).is_none(),
            "no room"
        );
        // A plugin pointed the entry's name at the request line: refused, nothing trusted.
        let mut scribbled = buf.clone();
        let entry = end.headers.off as usize;
        scribbled[entry..entry + 4].copy_from_slice(&(VIEW_HEADER_SIZE as u32).to_ne_bytes());
        assert!(patch(&mut scribbled, &[HeaderEdit::Remove(b"accept")]).is_none());
        assert!(
            patch(&mut scribbled, &[HeaderEdit::Add(b"x-a", b"1")]).is_some(),
            "an add reads no entry"
        );
    }
}
