//! The upstream client's response parsing (`weft_proxy::h1`) on arbitrary bytes: the head
//! parser and the chunked decoder must never panic, a head parses the same whichever response the
//! connection's name cache ([`Names`]) saw before it, and a chunked body decodes to the same data,
//! trailers and leftover bytes however its bytes are split across reads, and every header value
//! a head puts into its map (unchecked) is one `HeaderValue` accepts. A head parsed for a client
//! that gets its fields unread (`Fields::Lines`) reaches that client as the map path's would:
//! the same status, framing, keep-alive and error, and its lines, put into a map, the fields
//! the map path forwards (less `content-length`, which both writers set from the body), name by
//! name.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_proxy::h1::chunked::{Chunk, Decoder};
use http::header::{CONTENT_LENGTH, HeaderMap};
use weft_proxy::h1::head::{Ask, Fields, Names, Parsed, parse};

/// Decodes `bytes` fed in pieces cut at `cuts`; returns the data, whether it ended (with its
/// trailers' count) and what followed, or None on an error.
fn decode(bytes: &[u8], cuts: &[u8]) -> Option<(Vec<u8>, Option<usize>, Vec<u8>)> {
    let (mut dec, mut buf, mut data) = (Decoder::default(), BytesMut::new(), Vec::new());
    let mut at = 0;
    let mut steps = cuts.iter().map(|c| *c as usize + 1).chain(std::iter::repeat(bytes.len().max(1)));
    while at < bytes.len() || !buf.is_empty() {
        let next = (at + steps.next().unwrap()).min(bytes.len());
        buf.extend_from_slice(&bytes[at..next]);
        at = next;
        loop {
            match dec.decode(&mut buf).ok()? {
                None => break,
                Some(Chunk::Data(d)) => data.extend_from_slice(&d),
                Some(Chunk::End(t)) => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&bytes[at..]);
                    return Some((data, Some(t.map_or(0, |t| t.len())), rest));
                }
            }
        }
        if at == bytes.len() {
            break;
        }
    }
    Some((data, None, Vec::new()))
}

/// What a parse decided, comparable: the head's length, status, version, headers, framing and
/// keep-alive, or the error's text; and the bytes left in the buffer.
fn parsed(bytes: &[u8], head_request: bool, names: &mut Names) -> (String, Vec<u8>) {
    let mut buf = BytesMut::from(bytes);
    let what = match parse(&mut buf, Ask::map(head_request), names) {
        Ok(Parsed::Final(n, head)) => {
            assert!(n <= bytes.len());
            assert_eq!(buf.len(), bytes.len() - n, "a final head is taken out of the buffer");
            let p = &head.parts;
            for v in p.headers.values() {
                // The parser puts values into the map unchecked: each must pass the check.
                assert!(http::HeaderValue::from_bytes(v.as_bytes()).is_ok(), "invalid value {v:?}");
            }
            format!("final {n} {} {:?} {:?} {:?} {}", p.status, p.version, p.headers, head.framing, head.keep_alive)
        }
        Ok(Parsed::Informational(n)) => {
            assert!(n <= bytes.len());
            assert_eq!(buf.len(), bytes.len(), "an informational head is left for the caller");
            format!("informational {n}")
        }
        Ok(Parsed::Partial) => "partial".to_owned(),
        Err(e) => format!("error {e}"),
    };
    (what, buf.to_vec())
}

/// What a client is sent of a head parsed for `fields`: as [`parsed`], with the fields as they
/// are forwarded (lines put into a map, hop-by-hop fields stripped, `content-length` left to the
/// writer).
fn forwarded(bytes: &[u8], head_request: bool, fields: Fields) -> (String, Vec<u8>) {
    let mut buf = BytesMut::from(bytes);
    let ask = Ask { head_request, fields };
    let what = match parse(&mut buf, ask, &mut Names::default()) {
        Ok(Parsed::Final(n, head)) => {
            let p = &head.parts;
            let mut map = HeaderMap::new();
            if let Some(lines) = head.lines {
                assert_eq!(fields, Fields::Lines, "lines only when asked for");
                assert!(p.headers.is_empty(), "a head kept as lines has an empty map");
                lines.into_map(&mut map);
            } else {
                map = p.headers.clone();
            }
            weft_proxy::forward::strip_hop_by_hop(&mut map);
            map.remove(CONTENT_LENGTH);
            // By name: a removal from a map moves its last field into the gap, so the map path's
            // order of different names is not the upstream's (the lines keep it); the values of
            // one name keep their order on both.
            let mut fields: Vec<_> = map
                .keys()
                .map(|k| (k.as_str(), map.get_all(k).iter().map(|v| v.as_bytes()).collect::<Vec<_>>()))
                .collect();
            fields.sort();
            format!("final {n} {} {:?} {:?} {:?} {}", p.status, p.version, fields, head.framing, head.keep_alive)
        }
        Ok(Parsed::Informational(n)) => format!("informational {n}"),
        Ok(Parsed::Partial) => "partial".to_owned(),
        Err(e) => format!("error {e}"),
    };
    (what, buf.to_vec())
}

fuzz_target!(|input: (bool, &[u8], &[u8], &[u8])| {
    let (head_request, before, cuts, bytes) = input;
    // The connection's cache after another response (`before`), then this one: the same result
    // as with a fresh cache, twice (the second time every name is remembered).
    let mut warm = Names::default();
    let _ = parsed(before, false, &mut warm);
    let fresh = parsed(bytes, head_request, &mut Names::default());
    assert_eq!(fresh, parsed(bytes, head_request, &mut warm));
    assert_eq!(fresh, parsed(bytes, head_request, &mut warm));
    assert_eq!(
        forwarded(bytes, head_request, Fields::Map),
        forwarded(bytes, head_request, Fields::Lines)
    );
    let whole = decode(bytes, &[]);
    let split = decode(bytes, cuts);
    // A body that ended whole ends the same wherever the reads were cut.
    if let Some(w) = &whole
        && w.1.is_some()
    {
        assert_eq!(Some(w), split.as_ref());
    }
});
