// Shared by the mutation targets: a request and a response to apply batches to, and the
// invariants every applied batch must keep.
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};

pub fn request() -> http::request::Parts {
    http::Request::post("/base/path?x=1")
        .header("host", "example.com")
        .header("content-length", "5")
        .header("transfer-encoding", "chunked")
        .header("connection", "keep-alive")
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
        .header("x-keep", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn framing(h: &http::HeaderMap) -> Vec<Option<http::HeaderValue>> {
    [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION]
        .into_iter()
        .map(|n| h.get(n).cloned())
        .collect()
}

pub fn check_headers(before: &http::HeaderMap, after: &http::HeaderMap) {
    assert_eq!(framing(before), framing(after), "a plugin changed a framing header");
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
