//! Header rewriting for forwarding, the response body type, and local error replies.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::body::{BoxError, Keep};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// Removes hop-by-hop headers, including every header the `connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect first: names listed in `connection` are removed along with it.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
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

/// `x-forwarded-for` value: the existing chain (all header lines, in order) plus `client`.
pub fn forwarded_for(headers: &HeaderMap, client: IpAddr) -> HeaderValue {
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else { continue };
        let s = s.trim();
        if !s.is_empty() {
            value.push_str(s);
            value.push_str(", ");
        }
    }
    // IPv6 without brackets, as is conventional in XFF; map v4-in-v6 back to v4.
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    value.push_str(&client.to_string());
    HeaderValue::from_str(&value).expect("visible ASCII only")
}

/// Pins the `host` header to the host the client addressed and returns it.
///
/// `host` keeps the client's host (like nginx's `proxy_set_header Host $host`) so
/// virtual-hosted upstreams see the public name. HTTP/2 requests carry `:authority` instead of
/// a `host` header; writing it into `host` gives plugins and upstreams the same view for both
/// protocols. Without any client host, hyper's client sets `host` to the upstream address.
pub fn pin_host(uri: &Uri, headers: &mut HeaderMap) -> Option<HeaderValue> {
    let host = original_host(uri, headers)?;
    headers.insert(header::HOST, host.clone());
    Some(host)
}

/// Adds `x-forwarded-*` for the upstream.
///
/// `x-forwarded-for` is appended to (a client or an earlier proxy may have started the chain;
/// consumers decide how many hops they trust). `x-forwarded-proto` and `x-forwarded-host` are
/// overwritten: this proxy is the one that knows them, and keeping a client-sent value would
/// let clients spoof them.
pub fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    original_host: Option<&HeaderValue>,
) {
    let xff = forwarded_for(headers, client);
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match original_host {
        Some(h) => headers.insert(&X_FORWARDED_HOST, h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Points the request at `upstream`, keeping path and query.
pub fn upstream_uri(original: &Uri, upstream: &Authority) -> Uri {
    let pq = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.clone())
        .path_and_query(pq)
        .build()
        .expect("scheme, authority and path are each valid")
}

/// Response body sent to clients: the upstream's streamed body (or a local reply, or the body
/// plugins' output) plus the request's plugin [`weft_runtime::Exchange`] when its chain has a
/// log phase. Hyper drops the body only after the last byte is written (or the client goes away,
/// or a `limits:` timer cuts the response off), and dropping the exchange is what queues the
/// plugins' log phase and frees the arena slot — so both happen after the response, not before.
/// A chain without a log phase needs its slot no longer than its last headers or body phase:
/// [`ProxyBody::new`] drops such an exchange at once, so a slow reader holds no slot. An error
/// from the body (a fail-closed body plugin, an upstream reset or timeout) aborts the response:
/// hyper closes the connection (HTTP/1.1) or resets the stream (HTTP/2).
pub struct ProxyBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    _exchange: Option<Keep>,
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
        }
    }

    pub fn full(bytes: impl Into<Bytes>, exchange: Option<Keep>) -> Self {
        ProxyBody::new(Full::new(bytes.into()), exchange)
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
    fn ignores_garbage_in_connection() {
        let mut h = headers(&[("connection", "close, , not a header"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn xff_appends_to_chain() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(forwarded_for(&HeaderMap::new(), ip), "10.0.0.9");
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")]);
        assert_eq!(forwarded_for(&h, ip), "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        let h = headers(&[("x-forwarded-for", "  ")]);
        assert_eq!(forwarded_for(&h, ip), "10.0.0.9");
        assert_eq!(forwarded_for(&HeaderMap::new(), "::1".parse().unwrap()), "::1");
        assert_eq!(
            forwarded_for(&HeaderMap::new(), "::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
    }

    #[test]
    fn forwarding_headers_overwrite_proto_and_host() {
        let mut h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("x-forwarded-for", "1.1.1.1"),
            ("host", "example.com:8080"),
        ]);
        let host = pin_host(&"/x".parse().unwrap(), &mut h);
        add_forwarding_headers(&mut h, "10.0.0.9".parse().unwrap(), "http", host.as_ref());
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(h["host"], "example.com:8080");
        assert_eq!(h.get_all("x-forwarded-host").iter().count(), 1);
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
        let host = pin_host(&uri, &mut h);
        assert_eq!(h["host"], "h2.example:8080");
        add_forwarding_headers(&mut h, "10.0.0.9".parse().unwrap(), "http", host.as_ref());
        assert_eq!(h["x-forwarded-host"], "h2.example:8080");

        let mut h = headers(&[("x-forwarded-host", "spoofed")]);
        let host = pin_host(&"/p".parse().unwrap(), &mut h);
        add_forwarding_headers(&mut h, "10.0.0.9".parse().unwrap(), "http", host.as_ref());
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
