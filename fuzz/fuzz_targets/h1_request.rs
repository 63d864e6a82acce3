//! The lean server path's request parsing (`weft_proxy::h1::request`) on arbitrary bytes: it
//! never panics; a request it serves was taken whole out of the buffer and is one it may serve
//! (HTTP/1.1; its body framed by one `content-length` of digits or one `transfer-encoding:
//! chunked`, never both, and the framing it reports is what those say; no upgrade, `CONNECT` or
//! `te`, no `expect` but one `100-continue`; a `connection` of `keep-alive` at most: anything
//! else must reach hyper, or a body could be read as the next request); its values pass
//! `HeaderValue`'s check; whatever it hands to hyper or waits on is left in the buffer byte for
//! byte; and the connection's name cache changes nothing.
#![no_main]

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE};
use libfuzzer_sys::fuzz_target;
use weft_proxy::h1::head::{Framing, Names};
use weft_proxy::h1::request::{MAX_LEAN_HEAD, Parsed, parse};

fn parsed(bytes: &[u8], names: &mut Names) -> (String, Vec<u8>) {
    let mut buf = BytesMut::from(bytes);
    let what = match parse(&mut buf, names) {
        Parsed::Lean(parts, framing) => {
            let n = bytes.len() - buf.len();
            assert!(n > 0 && bytes.ends_with(&buf), "the head is taken from the front");
            assert_eq!(parts.version, http::Version::HTTP_11);
            assert_ne!(parts.method, http::Method::CONNECT);
            for name in [UPGRADE, TE] {
                assert!(!parts.headers.contains_key(&name), "{name} on the lean path");
            }
            // One `expect`, of `100-continue` (the lean path answers it), at most.
            let expects: Vec<_> = parts.headers.get_all(EXPECT).iter().collect();
            assert!(expects.len() <= 1, "{expects:?}");
            for v in expects {
                assert!(v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"100-continue"), "{v:?}");
            }
            let lengths: Vec<_> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
            let codings: Vec<_> = parts.headers.get_all(TRANSFER_ENCODING).iter().collect();
            assert!(lengths.len() <= 1 && codings.len() <= 1, "{lengths:?} {codings:?}");
            let length = lengths.first().map(|v| {
                let digits = v.as_bytes().trim_ascii();
                assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit), "{v:?}");
                std::str::from_utf8(digits).unwrap().parse::<u64>().expect("within u64")
            });
            let chunked = codings.first().map(|v| {
                assert!(v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"), "{v:?}");
            });
            let expected = match (length, chunked) {
                (Some(_), Some(())) => panic!("both framings on the lean path"),
                (None, Some(())) => Framing::Chunked,
                (None | Some(0), None) => Framing::Empty,
                (Some(n), None) => Framing::Length(n),
            };
            assert_eq!(framing, expected);
            for v in parts.headers.get_all(CONNECTION) {
                assert!(v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"keep-alive"), "{v:?}");
            }
            for v in parts.headers.values() {
                assert!(http::HeaderValue::from_bytes(v.as_bytes()).is_ok(), "invalid value {v:?}");
            }
            // The head ends with its blank line, as httparse found it, within the lean limit.
            assert!(bytes[..n].ends_with(b"\n") && n <= MAX_LEAN_HEAD);
            format!(
                "lean {n} {} {} {:?} {framing:?}",
                parts.method, parts.uri, parts.headers
            )
        }
        Parsed::Partial => {
            assert_eq!(&buf[..], bytes, "a partial head stays");
            assert!(bytes.len() < MAX_LEAN_HEAD);
            "partial".to_owned()
        }
        Parsed::Hyper(why) => {
            assert_eq!(&buf[..], bytes, "what goes to hyper is left as it was");
            format!("hyper {why:?}")
        }
    };
    (what, buf.to_vec())
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (before, bytes) = input;
    let mut warm = Names::default();
    let _ = parsed(before, &mut warm);
    let fresh = parsed(bytes, &mut Names::default());
    assert_eq!(fresh, parsed(bytes, &mut warm));
    assert_eq!(fresh, parsed(bytes, &mut warm));
});
