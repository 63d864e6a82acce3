//! The request path normaliser (`weft_proxy::path`) on arbitrary paths and options. It must
//! never panic; what it accepts comes out starting with '/', without dot segments, without `//`
//! when merging slashes, as its own normal form (normalising it again borrows it unchanged, so
//! the hot path's no-allocation check agrees), and still a valid request target for `http`.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use weft_proxy::path::{EscapedSlashes, PathOptions, normalize};

fuzz_target!(|input: (u8, &[u8])| {
    let (flags, bytes) = input;
    let Ok(s) = std::str::from_utf8(bytes) else { return };
    // The path of a parsed URI never holds '?' or '#' (they start the query and fragment).
    if s.contains(['?', '#']) {
        return;
    }
    let opts = PathOptions {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: match (flags >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
    };
    // A target without a leading '/' (`*`) is left alone.
    if !s.starts_with('/') {
        assert!(matches!(normalize(s, &opts), Ok(Cow::Borrowed(_))));
    }
    let path = format!("/{s}");
    let Ok(out) = normalize(&path, &opts) else { return };
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    if opts.merge_slashes {
        assert!(!out.contains("//"), "{path:?} -> {out:?}");
    }
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "dot segment left: {path:?} -> {out:?}");
    }
    match normalize(&out, &opts) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out),
        other => panic!("not idempotent: {path:?} -> {out:?} -> {other:?}"),
    }
    // The proxy rebuilds the URI from the normal form: it must parse whenever the input did.
    if http::uri::PathAndQuery::try_from(path.as_str()).is_ok() {
        assert!(
            http::uri::PathAndQuery::try_from(&*out).is_ok(),
            "{path:?} -> {out:?} is not a valid target"
        );
    }
});
