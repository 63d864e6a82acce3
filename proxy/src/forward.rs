//! Header rewriting for forwarding, the response body type, and local error replies.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::body::{BoxError, Keep};
use crate::h1::lines::{HeadLines, Lines};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies traditionally drop
/// (`proxy-*` are addressed to this proxy, and forwarding them would leak credentials).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` (any case) is one of the hop-by-hop fields every message is stripped of.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// End-to-end headers the proxy itself relies on: naming one in `Connection` does not remove
/// it (RFC 9110 §7.6.1 forbids listing end-to-end fields there). Without this, `Connection:
/// host` would change routing and `Connection: x-request-id` would drop the request id; the
/// forwarding headers are decided by `trusted_proxies` alone.
fn connection_may_remove(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "x-request-id"
            | "content-length"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "forwarded"
            | "x-real-ip"
    )
}

/// What one pass over a head's header names finds, for the steps that would otherwise each
/// look a name up: a lookup hashes and probes even an absent name (~100 instructions;
/// `scripts/callgrind-proxy`), a pass over a few names is a compare per name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Bit i: `HOP_BY_HOP[i]` is present.
    hop_by_hop: u16,
    /// A `cookie` field (`keys()` gives each name once, however many fields have it).
    cookie: bool,
}

impl Seen {
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            if name == header::COOKIE {
                seen.cookie = true;
            } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                seen.hop_by_hop |= 1 << i;
            }
        }
        seen
    }

    /// `connection` and `upgrade` are both present: the head may ask for an upgrade.
    pub fn may_upgrade(&self) -> bool {
        const BOTH: u16 = 1 | 1 << 8; // HOP_BY_HOP[0] and [8]
        self.hop_by_hop & BOTH == BOTH
    }

    /// A `cookie` field: [`join_cookies`] may have work (without one it has none).
    pub fn cookie(&self) -> bool {
        self.cookie
    }
}

/// Removes hop-by-hop headers, including every header the `connection` header names (but not
/// the end-to-end headers the proxy relies on, see [`connection_may_remove`]).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let seen = Seen::scan(headers);
    strip_seen_hop_by_hop(headers, seen);
}

/// [`strip_hop_by_hop`] with the names already scanned (`seen` must be of `headers` as they are).
pub fn strip_seen_hop_by_hop(headers: &mut HeaderMap, seen: Seen) {
    // Only the names present are removed: a `remove` of an absent name still hashes and probes
    // it (nine per message were ~1,100 instructions).
    let present = seen.hop_by_hop;
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0] is `connection`. Collect first: names listed in `connection` are
        // removed along with it. A listed hop-by-hop name (`keep-alive`, what it lists most) is
        // removed below if present, so it needs no `HeaderName` (and the list no allocation).
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str())))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(connection_may_remove)
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Joins several `cookie` fields into one with `"; "` (RFC 9113 §8.2.3: HTTP/2 clients may
/// split the cookie header into one field per cookie, and an HTTP/1.1 upstream expects one line).
/// Plugins then see one `cookie` header whatever the client spoke. Allocates only when there
/// is more than one field.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Each part was a valid value and "; " is too.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// Why a request's host is refused (answered 400, RFC 9112 §3.2, RFC 9113 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Duplicate,
    /// HTTP/1.1 without `Host` (and without an absolute-form target).
    Missing,
    /// Not a valid `host[:port]`.
    Invalid,
    /// `Host` names another host or port than the absolute-form target or `:authority`.
    Mismatch,
}

impl HostError {
    pub fn message(self) -> &'static str {
        match self {
            HostError::Duplicate => "more than one Host header",
            HostError::Missing => "missing Host header",
            HostError::Invalid => "invalid Host header",
            HostError::Mismatch => "Host header differs from the request target's authority",
        }
    }
}

/// Characters of `host [ ":" port ]` (RFC 3986 reg-name, IP literal, port); no userinfo.
fn authority_bytes_ok(b: &[u8]) -> bool {
    b.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// `host[:port]` split, the host lowercased later by the caller's comparison.
fn split_port(auth: &str) -> (&str, Option<&str>) {
    let end = if auth.starts_with('[') {
        auth.find(']').unwrap_or(0)
    } else {
        0
    };
    match auth[end..].rfind(':') {
        Some(i) => (&auth[..end + i], Some(&auth[end + i + 1..])),
        None => (auth, None),
    }
}

/// Whether the `Host` value names the same host and port as the URI authority (the port of a
/// side that has none is the scheme's default).
fn same_authority(host: &str, uri: &Uri, auth: &Authority) -> bool {
    let default = if uri.scheme() == Some(&Scheme::HTTPS) {
        "443"
    } else {
        "80"
    };
    let (h, hp) = split_port(host);
    let (a, ap) = split_port(auth.as_str());
    fn port<'a>(p: Option<&'a str>, default: &'a str) -> &'a str {
        p.filter(|p| !p.is_empty()).unwrap_or(default).trim_start_matches('0')
    }
    h.eq_ignore_ascii_case(a) && port(hp, default) == port(ap, default)
}

/// Checks the request's host: one `Host` at most, present on HTTP/1.1 (unless the target is in
/// absolute form), a valid `host[:port]`, and equal to the target's authority (HTTP/1.1
/// absolute form, HTTP/2 `:authority`) when both are given. Returns the `Host` field's value,
/// for [`pin_host`] (one lookup of the name a request, not two).
pub fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let Some(value) = host else {
        return match (version, uri.authority()) {
            (Version::HTTP_11, None) => Err(HostError::Missing),
            _ => Ok(None),
        };
    };
    let Some(host) = value.to_str().ok().filter(|h| authority_bytes_ok(h.as_bytes())) else {
        return Err(HostError::Invalid);
    };
    match uri.authority() {
        Some(auth) if !same_authority(host, uri, auth) => Err(HostError::Mismatch),
        _ => Ok(Some(value.clone())),
    }
}

/// The host the client addressed: the URI authority (HTTP/2 `:authority`, or an HTTP/1
/// absolute-form target, which RFC 9112 §3.2.2 says wins over `Host`), else the `Host` header.
pub fn original_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(auth) = uri.authority() {
        return HeaderValue::from_str(auth.as_str()).ok();
    }
    headers.get(header::HOST).cloned()
}

/// IPv6 without brackets, as is conventional in XFF; v4-in-v6 mapped back to v4.
fn canonical_ip(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    }
}

/// A connection's client address as the forwarding headers use it, with its `x-forwarded-for`
/// text made once: each request on the connection clones the value (a reference count) instead
/// of formatting the address and allocating a header value (`scripts/callgrind-proxy`).
pub struct ClientIp {
    ip: IpAddr,
    value: HeaderValue,
}

impl ClientIp {
    pub fn new(client: IpAddr) -> ClientIp {
        let mut text = [0u8; 45];
        let value = client_ip_text(client, &mut text);
        ClientIp {
            ip: client,
            value: HeaderValue::from_bytes(value).expect("an address is visible ASCII"),
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// `x-forwarded-for` value: the existing chain (all header lines, in order) plus `client`.
pub fn forwarded_for(headers: &HeaderMap, client: &ClientIp) -> HeaderValue {
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else { continue };
        let s = s.trim();
        if !s.is_empty() {
            value.push_str(s);
            value.push_str(", ");
        }
    }
    if value.is_empty() {
        return client.value.clone();
    }
    value.push_str(client.value.to_str().expect("an address is ASCII"));
    HeaderValue::from_str(&value).expect("visible ASCII only")
}

/// The client address as `x-forwarded-for` writes it, in `buf` (45 bytes hold any IPv6 text); an
/// IPv4 address without the formatting machinery (its `Display` was ~1,000 instructions per
/// request, `scripts/callgrind-proxy`). Bytes, not `str`: `HeaderValue::from_bytes` checks them
/// anyway, and a UTF-8 check first cost ~80 instructions per request.
fn client_ip_text(client: IpAddr, buf: &mut [u8; 45]) -> &[u8] {
    let n = match canonical_ip(client) {
        IpAddr::V4(v4) => weft_runtime::view::format_ipv4(buf, v4),
        ip => {
            let mut rest = &mut buf[..];
            std::io::Write::write_fmt(&mut rest, format_args!("{ip}")).expect("an IPv6 address fits 45 bytes");
            45 - rest.len()
        }
    };
    &buf[..n]
}

/// The `Forwarded` element (RFC 7239) this proxy appends: `for=...;host=...;proto=...`.
fn forwarded_element(client: IpAddr, proto: &str, host: Option<&HeaderValue>) -> String {
    let mut e = match canonical_ip(client) {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    // A checked host has no '"' or '\\'; quoted because of a possible ':'.
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        e.push_str(&format!(";host=\"{h}\""));
    }
    e.push_str(";proto=");
    e.push_str(proto);
    e
}

/// The peers whose forwarding headers are believed (`trusted_proxies:`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses one `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
    pub fn parse_entry(s: &str) -> Result<ipnet::IpNet, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| format!("invalid address or CIDR {s:?} (expected e.g. 10.0.0.0/8, 192.0.2.7 or ::1/128)"))
    }

    /// Whether `peer` (the TCP peer of the request) is a trusted proxy. Free with no list.
    pub fn contains(&self, peer: IpAddr) -> bool {
        !self.0.is_empty() && self.0.iter().any(|n| n.contains(&canonical_ip(peer)))
    }
}

/// Pins the `host` header to the host the client addressed and returns it.
///
/// `host` keeps the client's host (like nginx's `proxy_set_header Host $host`) so
/// virtual-hosted upstreams see the public name. HTTP/2 requests carry `:authority` instead of
/// a `host` header; writing it into `host` gives plugins and upstreams the same view for both
/// protocols. Without any client host, hyper's client sets `host` to the upstream address.
/// The common case, an origin-form HTTP/1 target, needs no write: its one `host` header
/// ([`check_host`] let no second through, and returned as `given`) is that host already.
/// `given` must be the value of `headers`' `host` field, if it has one.
pub fn pin_host(uri: &Uri, given: Option<HeaderValue>, headers: &mut HeaderMap) -> Option<HeaderValue> {
    if uri.authority().is_none() {
        return given;
    }
    let host = original_host(uri, headers)?;
    headers.insert(header::HOST, host.clone());
    Some(host)
}

/// Sets the forwarding headers for the upstream, after the plugins ran (which cannot change
/// them: `mutation.rs` reserves them).
///
/// From a `trusted` peer (an address in `trusted_proxies`) the client's `x-forwarded-for`
/// chain is kept and the peer appended, a `forwarded` header gets this hop's element appended,
/// and `x-real-ip`, `x-forwarded-proto` and `x-forwarded-host` are kept (set by this proxy when
/// absent). From any other peer they are not believed: `x-forwarded-for` is the peer alone,
/// `forwarded` and `x-real-ip` are removed, and proto and host are this proxy's.
pub fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client: &ClientIp,
    trusted: bool,
    proto: &'static str,
    original_host: Option<&HeaderValue>,
) {
    if trusted {
        let xff = forwarded_for(headers, client);
        headers.insert(&X_FORWARDED_FOR, xff);
        if headers.contains_key(header::FORWARDED) {
            let mut chain = Vec::new();
            for v in headers.get_all(header::FORWARDED) {
                chain.extend_from_slice(v.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(forwarded_element(client.ip, proto, original_host).as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(chain)) {
                headers.insert(header::FORWARDED, v);
            }
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), original_host) {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
        return;
    }
    untrusted_forwarding(headers, client, proto, original_host).into_map(headers);
}

/// The forwarding fields this proxy writes for a request from a peer it does not trust, whose
/// own forwarding headers are removed from `headers` (none of them is believed; see
/// [`add_forwarding_headers`]). The fields are this proxy's alone, so they need not be in the
/// map: the request's encoder writes them after its fields ([`Forwarding::write`]), which saves
/// three inserts of names hashed and probed (~800 instructions a request,
/// `scripts/callgrind-proxy`); a request that goes out otherwise gets them put into its map
/// ([`Forwarding::into_map`]).
pub fn untrusted_forwarding<'a>(
    headers: &mut HeaderMap,
    client: &'a ClientIp,
    proto: &'static str,
    original_host: Option<&'a HeaderValue>,
) -> Forwarding<'a> {
    // Which of the client's forwarding headers to drop, in one pass over the names: a removal
    // of an absent name still hashes and probes (~120 instructions each).
    let names = [
        &header::FORWARDED,
        &X_REAL_IP,
        &X_FORWARDED_HOST,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
    ];
    let mut sent = 0u8;
    for name in headers.keys() {
        sent |= u8::from(name == names[0])
            | u8::from(name == names[1]) << 1
            | u8::from(name == names[2]) << 2
            | u8::from(name == names[3]) << 3
            | u8::from(name == names[4]) << 4;
    }
    if sent != 0 {
        for (i, name) in names.iter().enumerate() {
            if sent & 1 << i != 0 {
                headers.remove(*name);
            }
        }
    }
    Forwarding {
        for_: &client.value,
        proto,
        host: original_host,
    }
}

/// The forwarding fields of a request from a peer that is not trusted ([`untrusted_forwarding`]):
/// `x-forwarded-for` (the peer), `x-forwarded-proto` and, when the client named a host,
/// `x-forwarded-host`. Borrowed from the connection's [`ClientIp`] and the request stage's host:
/// a clone of each value was ~40 instructions a request, and the request's future holds it.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    for_: &'a HeaderValue,
    proto: &'static str,
    host: Option<&'a HeaderValue>,
}

impl Forwarding<'_> {
    /// Appends the fields as header lines (`name: value\r\n`): the fixed parts as constants,
    /// room made once (the lines copied piece by piece were ~200 instructions a request).
    pub fn write(&self, out: &mut Vec<u8>) {
        let host = self.host.map(HeaderValue::as_bytes);
        out.reserve(96 + self.for_.len() + self.proto.len() + host.map_or(0, <[u8]>::len));
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(self.for_.as_bytes());
        match self.proto {
            "http" => out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n"),
            "https" => out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\n"),
            proto => {
                out.extend_from_slice(b"\r\nx-forwarded-proto: ");
                out.extend_from_slice(proto.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(host) = host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Puts the fields into `headers`, replacing any of the same names.
    pub fn into_map(self, headers: &mut HeaderMap) {
        headers.insert(&X_FORWARDED_FOR, self.for_.clone());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        if let Some(host) = self.host {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
    }
}

/// Points the request at `upstream`, keeping path and query.
pub fn upstream_uri(original: &Uri, upstream: &Authority) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    // The parts straight, not through `Uri::builder` (whose steps each carry a `Result`).
    Uri::from_parts(parts).expect("scheme, authority and path are each valid")
}

/// Response body sent to clients: the upstream's streamed body (or a local reply, or the body
/// plugins' output) plus the request's plugin [`weft_runtime::Exchange`] when its chain has a
/// log phase. Hyper drops the body only after the last byte is written (or the client goes away,
/// or a `limits:` timer cuts the response off), and dropping the exchange is what runs (or, with
/// `runtime.log_phase: thread`, queues) the plugins' log phase and frees the arena slot — so both
/// happen after the response, not before.
/// A chain without a log phase needs its slot no longer than its last headers or body phase:
/// [`ProxyBody::new`] drops such an exchange at once, so a slow reader holds no slot. An error
/// from the body (a fail-closed body plugin, an upstream reset or timeout) aborts the response:
/// hyper closes the connection (HTTP/1.1) or resets the stream (HTTP/2).
pub struct ProxyBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    _exchange: Option<Keep>,
    /// The response head's fields, when they stayed as the upstream's lines.
    lines: Option<Box<Lines>>,
}

impl ProxyBody {
    pub fn new<B>(body: B, exchange: Option<Keep>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            _exchange: exchange.filter(Keep::needed_after_head),
            lines: None,
        }
    }

    /// The body of a response whose head's fields are `lines` (its map holds only what the
    /// proxy added).
    pub fn with_lines(self, lines: Option<Box<Lines>>) -> Self {
        ProxyBody { lines, ..self }
    }

    /// The response head's fields kept as lines, if they were.
    pub fn lines_mut(&mut self) -> Option<&mut Lines> {
        self.lines.as_deref_mut()
    }

    pub fn full(bytes: impl Into<Bytes>, exchange: Option<Keep>) -> Self {
        ProxyBody::new(Full::new(bytes.into()), exchange)
    }
}

impl HeadLines for ProxyBody {
    fn take_lines(&mut self) -> Option<Box<Lines>> {
        self.lines.take()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A short plain-text reply generated by the proxy itself.
/// `exchange` rides along so the plugins' log phase still runs after the reply is sent.
pub fn local_reply(status: StatusCode, message: &str, exchange: Option<Keep>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(format!("{message}\n"), exchange));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_listed_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("x-end-to-end", "kept"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end", "content-length"]);
    }

    #[test]
    fn connection_cannot_remove_headers_the_proxy_relies_on() {
        let mut h = headers(&[
            (
                "connection",
                "host, x-request-id, content-length, x-forwarded-for, forwarded, x-real-ip, x-other",
            ),
            ("host", "example.com"),
            ("x-request-id", "abc"),
            ("content-length", "3"),
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("x-other", "gone"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "content-length",
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-real-ip",
                "x-request-id"
            ]
        );
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2; c=3"]);
        let mut h = headers(&[("cookie", "a=1")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1");
        join_cookies(&mut HeaderMap::new());
    }

    #[test]
    fn host_checks() {
        let v11 = Version::HTTP_11;
        let origin: Uri = "/p".parse().unwrap();
        let abs: Uri = "http://Example.com/p".parse().unwrap();
        let check = |v, uri: &Uri, pairs: &[(&str, &str)]| check_host(v, uri, &headers(pairs)).map(|_| ());
        let given = |v, uri: &Uri, pairs: &[(&str, &str)]| check_host(v, uri, &headers(pairs)).unwrap();
        assert_eq!(given(v11, &origin, &[("host", "example.com")]).unwrap(), "example.com");
        assert_eq!(
            given(v11, &abs, &[("host", "example.COM:80")]).unwrap(),
            "example.COM:80"
        );
        assert!(given(Version::HTTP_10, &origin, &[]).is_none());
        assert_eq!(check(v11, &origin, &[("host", "example.com")]), Ok(()));
        assert_eq!(check(v11, &origin, &[("host", "[::1]:8080")]), Ok(()));
        assert_eq!(check(Version::HTTP_10, &origin, &[]), Ok(()));
        assert_eq!(check(v11, &abs, &[]), Ok(()));
        assert_eq!(check(Version::HTTP_2, &abs, &[]), Ok(()));
        assert_eq!(check(v11, &origin, &[]), Err(HostError::Missing));
        assert_eq!(
            check(v11, &origin, &[("host", "a.test"), ("host", "b.test")]),
            Err(HostError::Duplicate)
        );
        // RFC 9112 §3.2: an empty Host is what a client sends for a target without authority.
        assert_eq!(check(v11, &origin, &[("host", "")]), Ok(()));
        for bad in ["a b", "user@evil.test", "a/b", "a\"b"] {
            assert!(check(v11, &origin, &[("host", bad)]).is_err(), "{bad:?}");
        }
        assert_eq!(check(v11, &abs, &[("host", "example.COM:80")]), Ok(()));
        assert_eq!(check(v11, &abs, &[("host", "other.test")]), Err(HostError::Mismatch));
        assert_eq!(
            check(v11, &abs, &[("host", "example.com:8080")]),
            Err(HostError::Mismatch)
        );
        let v6: Uri = "http://[::1]:8080/p".parse().unwrap();
        assert_eq!(check(Version::HTTP_2, &v6, &[("host", "[::1]:8080")]), Ok(()));
        assert_eq!(
            check(Version::HTTP_2, &v6, &[("host", "[::1]")]),
            Err(HostError::Mismatch)
        );
    }

    #[test]
    fn one_scan_sees_cookies_and_upgrades() {
        let mut h = HeaderMap::new();
        let seen = Seen::scan(&h);
        assert!(!seen.may_upgrade() && !seen.cookie());
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        assert!(Seen::scan(&h).cookie() && !Seen::scan(&h).may_upgrade());
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let seen = Seen::scan(&h);
        assert!(seen.cookie() && seen.may_upgrade());
        strip_seen_hop_by_hop(&mut h, seen);
        assert!(h.get("connection").is_none() && h.get("upgrade").is_none());
        assert_eq!(h.get_all("cookie").iter().count(), 2);
    }

    #[test]
    fn strips_only_what_is_there() {
        // Nothing hop-by-hop: untouched, order kept.
        let mut h = headers(&[("x-a", "1"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a", "accept"]);
        // The usual upstream response: `Connection: Keep-Alive` (any case) and its header.
        let mut h = headers(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("server", "x"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["server"]);
        // A listed hop-by-hop name that is absent, beside one that is present only by listing.
        let mut h = headers(&[("connection", "te, upgrade, x-hop"), ("x-hop", "1"), ("upgrade", "h2c")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Without `connection`, the fixed names still go.
        let mut h = headers(&[("transfer-encoding", "chunked"), ("x-a", "1"), ("trailer", "x-sum")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a"]);
    }

    #[test]
    fn ignores_garbage_in_connection() {
        let mut h = headers(&[("connection", "close, , not a header"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    /// The forwarding headers for a plain-HTTP request from `ip`.
    fn forward(h: &mut HeaderMap, ip: &str, trusted: bool, host: Option<&HeaderValue>) {
        add_forwarding_headers(h, &ClientIp::new(ip.parse().unwrap()), trusted, "http", host);
    }

    #[test]
    fn xff_appends_to_chain() {
        let ip = |s: &str| ClientIp::new(s.parse().unwrap());
        let client = ip("10.0.0.9");
        assert_eq!(forwarded_for(&HeaderMap::new(), &client), "10.0.0.9");
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")]);
        assert_eq!(forwarded_for(&h, &client), "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        let h = headers(&[("x-forwarded-for", "  ")]);
        assert_eq!(forwarded_for(&h, &client), "10.0.0.9");
        assert_eq!(forwarded_for(&HeaderMap::new(), &ip("::1")), "::1");
        assert_eq!(forwarded_for(&HeaderMap::new(), &ip("::ffff:192.0.2.1")), "192.0.2.1");
    }

    #[test]
    fn untrusted_peer_forwarding_headers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("host", "example.com:8080"),
        ]);
        let host = pin_host(&"/x".parse().unwrap(), h.get("host").cloned(), &mut h);
        forward(&mut h, "10.0.0.9", false, host.as_ref());
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none(), "{h:?}");
        assert_eq!(h["host"], "example.com:8080");
        assert_eq!(h.get_all("x-forwarded-host").iter().count(), 1);
    }

    #[test]
    fn trusted_peer_forwarding_headers_are_kept_and_appended() {
        let mut h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=1.1.1.1;proto=https"),
            ("x-real-ip", "1.1.1.1"),
            ("host", "example.com:8080"),
        ]);
        let host = pin_host(&"/x".parse().unwrap(), h.get("host").cloned(), &mut h);
        forward(&mut h, "10.0.0.9", true, host.as_ref());
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1;proto=https, for=10.0.0.9;host=\"example.com:8080\";proto=http"
        );
        assert_eq!(h["x-real-ip"], "1.1.1.1");
        let mut h = HeaderMap::new();
        forward(&mut h, "::1", true, None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(h.get("forwarded").is_none(), "no chain is started");
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let t = TrustedProxies(
            ["10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32"]
                .iter()
                .map(|s| TrustedProxies::parse_entry(s).unwrap())
                .collect(),
        );
        for ip in ["10.1.2.3", "192.0.2.7", "::1", "2001:db8::5", "::ffff:10.0.0.1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.0.2.8", "::2", "127.0.0.1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0"] {
            assert!(TrustedProxies::parse_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authority_wins_over_host_header() {
        // HTTP/2: `:authority` in the URI and usually no host header.
        let uri: Uri = "http://h2.example:8080/p?q=1".parse().unwrap();
        assert_eq!(original_host(&uri, &HeaderMap::new()).unwrap(), "h2.example:8080");
        let h = headers(&[("host", "other")]);
        assert_eq!(original_host(&uri, &h).unwrap(), "h2.example:8080");
        assert_eq!(original_host(&"/p".parse().unwrap(), &h).unwrap(), "other");
        assert!(original_host(&"/p".parse().unwrap(), &HeaderMap::new()).is_none());

        let mut h = HeaderMap::new();
        let host = pin_host(&uri, None, &mut h);
        assert_eq!(h["host"], "h2.example:8080");
        forward(&mut h, "10.0.0.9", false, host.as_ref());
        assert_eq!(h["x-forwarded-host"], "h2.example:8080");

        let mut h = headers(&[("x-forwarded-host", "spoofed")]);
        let host = pin_host(&"/p".parse().unwrap(), None, &mut h);
        forward(&mut h, "10.0.0.9", false, host.as_ref());
        assert!(h.get("host").is_none() && h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn rewrites_uri_keeping_path_and_query() {
        let up: Authority = "127.0.0.1:9000".parse().unwrap();
        let uri = upstream_uri(&"http://example.com/a/b?x=1&y=%20".parse().unwrap(), &up);
        assert_eq!(uri, "http://127.0.0.1:9000/a/b?x=1&y=%20");
        assert_eq!(upstream_uri(&"/".parse().unwrap(), &up), "http://127.0.0.1:9000/");
    }
}
