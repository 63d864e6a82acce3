// Shared by the mutation targets: a request and a response to apply batches to, and the
// invariants every applied batch must keep.
use weft_runtime::mutation::RESERVED;

pub fn request() -> http::request::Parts {
    http::Request::post("/base/path?x=1")
        .header("host", "example.com")
        .header("content-length", "5")
        .header("transfer-encoding", "chunked")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.0.0.1")
        .header("forwarded", "for=10.0.0.1")
        .header("x-real-ip", "10.0.0.1")
        .header("expect", "100-continue")
        .header("x-keep", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

pub fn response() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("content-length", "5")
        .header("connection", "close")
        .header("keep-alive", "timeout=5")
        .header("x-keep", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// The values of every header a plugin may not change (framing, hop-by-hop, `host`, the
/// forwarding headers: `mutation::RESERVED`).
fn reserved(h: &http::HeaderMap) -> Vec<Vec<http::HeaderValue>> {
    RESERVED
        .iter()
        .map(|n| h.get_all(*n).iter().cloned().collect())
        .collect()
}

pub fn check_headers(before: &http::HeaderMap, after: &http::HeaderMap) {
    assert_eq!(reserved(before), reserved(after), "a plugin changed a reserved header");
    for (name, value) in after {
        assert!(
            !value.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "header {name} has CR, LF or NUL"
        );
    }
}

pub fn check_request(before: &http::HeaderMap, p: &http::request::Parts) {
    check_headers(before, &p.headers);
    assert!(p.uri.path().starts_with('/'), "path {:?}", p.uri.path());
    assert!(!p.uri.to_string().contains(' '));
}

/// A local reply's headers: none reserved, none with CR, LF or NUL.
pub fn check_reply_headers(h: &http::HeaderMap) {
    for name in RESERVED {
        assert!(!h.contains_key(name), "a local reply carries reserved header {name}");
    }
    check_headers(&http::HeaderMap::new(), h);
}
