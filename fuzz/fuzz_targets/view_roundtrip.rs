//! The view encoder: arbitrary request and response heads encoded into a slot of arbitrary size
//! and read back the way a plugin reads them (every offset bounds-checked). Encoding either fails
//! cleanly (ViewTooLarge) or round-trips exactly; a plugin's header changes written into a view
//! in place read back as the head they were applied to, or are refused; a view of named lines
//! (`WeftViewHeaders`) reads back as those lines of the head, with the head's `host`; a
//! response's fields given as lines of any bytes (an upstream's, `view::Fields::Lines`) read back
//! as the fields `view::field_lines` finds in them, names lowercase.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_runtime::view::{self, HeaderEdit, RequestHead, Section, Shown, ViewIdentity};

#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    path_and_query: String,
    headers: Vec<(String, Vec<u8>)>,
    resp_headers: Vec<(String, Vec<u8>)>,
    status: u16,
    cap: u16,
    v6: bool,
    ident: (u64, u32, u32, u16),
    /// (kind: set / add / remove, which name: one of the request's or a new one, value).
    edits: Vec<(u8, u8, Vec<u8>)>,
    /// The names a view of named lines shows: indexes into the request's lines (past the end: a
    /// name the head lacks).
    named: Vec<u8>,
    /// A response's fields as HTTP/1.1 lines: any bytes.
    raw_lines: Vec<u8>,
}

fn header_map(list: &[(String, Vec<u8>)]) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (n, v) in list {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            m.append(n, v);
        }
    }
    m
}

fn pairs(m: &http::HeaderMap) -> Vec<(String, String)> {
    m.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let Ok(method) = http::Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let Ok(uri) = format!("/{}", input.path_and_query).parse::<http::Uri>() else {
        return;
    };
    let headers = header_map(&input.headers);
    let resp = header_map(&input.resp_headers);
    let client: std::net::SocketAddr = if input.v6 {
        format!("[::1]:{}", input.ident.3).parse().unwrap()
    } else {
        format!("10.1.2.3:{}", input.ident.3).parse().unwrap()
    };
    let id = ViewIdentity {
        request_id: input.ident.0,
        slot: input.ident.1,
        generation: input.ident.2,
        client: client.into(),
        scheme: "https",
        // Both shapes of the field: written (TLS with SNI) and left empty (plain, or no SNI).
        server_name: (!input.v6).then(|| std::sync::Arc::from("sni.example")),
    };
    let head = RequestHead {
        method: &method,
        uri: &uri,
        version: http::Version::HTTP_11,
        headers: &headers,
    };
    let mut buf = vec![0xAAu8; input.cap as usize % 16384];
    let Ok(end) = view::encode_request(&mut buf, &id, 0, &head) else {
        return;
    };
    assert!(end.size <= buf.len() && end.fixed_end <= end.size);
    let d = view::decode_for_test(&buf).expect("an encoded view decodes");
    assert_eq!(d.method, method.as_str());
    assert_eq!(d.path, uri.path());
    assert_eq!(d.query, uri.query().unwrap_or(""));
    assert_eq!(d.client_addr, client.to_string());
    assert_eq!(d.server_name, id.server_name.as_deref().unwrap_or(""));
    assert_eq!(
        (d.request_id, d.slot, d.generation),
        (id.request_id, id.slot, id.generation)
    );
    assert_eq!(d.request_headers, pairs(&headers));
    assert!(d.response_headers.is_empty());
    let status = 100 + input.status % 500;
    let Ok(_) = view::encode_response(&mut buf, end.size, 2, status, &resp) else {
        return;
    };
    let d2 = view::decode_for_test(&buf).expect("a view with a response decodes");
    assert_eq!(d2.status, status as u32);
    assert_eq!(d2.phase, 2);
    assert_eq!(d2.response_headers, pairs(&resp));
    assert_eq!(d2.request_headers, d.request_headers, "the request section survives");
    assert_eq!(d2.path, d.path);
    // The request's headers laid out again alone (the response's as its new ones) read back as a
    // whole new layout of that head does, and fail alike.
    let changed = RequestHead {
        headers: &resp,
        ..head
    };
    let mut whole = vec![0xAAu8; buf.len()];
    match (
        view::encode_request_headers(&mut buf, end.fixed_end, 0, &resp, Shown::All),
        view::encode_request(&mut whole, &id, 0, &changed),
    ) {
        (Ok(a), Ok(b)) => {
            assert_eq!((a.size, a.headers, end.fixed_end), (b.size, b.headers, b.fixed_end));
            assert_eq!(view::decode_for_test(&buf), view::decode_for_test(&whole));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("headers alone {a:?}, whole head {b:?}"),
    }
    patched_reads_as_edited(&input, &id, &head, buf.len());
    named_reads_as_those_lines(&input, &id, &head, buf.len());
    field_lines_read_as_their_fields(&input, &id, &head, buf.len());
});

/// Lines of any bytes laid out as a response section read back as the fields
/// `view::field_lines` finds in them (names lowercase, in order), or only the named ones, or
/// fail cleanly; the request section survives.
fn field_lines_read_as_their_fields(input: &Input, id: &ViewIdentity, head: &RequestHead<'_>, cap: usize) {
    let named = [http::HeaderName::from_static("x-a"), http::HeaderName::from_static("server")];
    for shown in [Shown::All, Shown::Named(&named), Shown::Named(&[])] {
        let mut buf = vec![0xAAu8; cap];
        let end = view::encode_request(&mut buf, id, 0, head).expect("it fit before");
        let lines = view::Fields::Lines(&input.raw_lines);
        if view::encode_response_fields(&mut buf, end.size, 2, 200, lines, shown).is_err() {
            continue;
        }
        let d = view::decode_for_test(&buf).expect("a view with field lines decodes");
        let expected: Vec<(String, String)> = view::field_lines(&input.raw_lines)
            .map(|(n, v)| (String::from_utf8_lossy(&n.to_ascii_lowercase()).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .filter(|(n, _)| shown.includes(n.as_bytes()))
            .collect();
        assert_eq!(d.response_headers, expected, "{shown:?}");
        assert_eq!(d.path, head.uri.path(), "the request section survives");
    }
}

/// A view of the lines of some names holds exactly those lines of the head (each name's in
/// order), or the whole head (a short one, cheaper to copy whole), and the head's `host`.
fn named_reads_as_those_lines(input: &Input, id: &ViewIdentity, head: &RequestHead<'_>, cap: usize) {
    let lines: Vec<&http::HeaderName> = head.headers.keys().collect();
    let mut names: Vec<http::HeaderName> = Vec::new();
    for &i in input.named.iter().take(8) {
        let name = lines
            .get(usize::from(i))
            .map_or_else(|| http::HeaderName::from_static("x-absent"), |n| (*n).clone());
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut buf = vec![0xAAu8; cap];
    let Ok(_) = view::encode_request_shown(&mut buf, id, 0, head, Shown::Named(&names)) else {
        return;
    };
    let d = view::decode_for_test(&buf).expect("a view of named lines decodes");
    let want: Vec<(String, String)> =
        pairs(head.headers).into_iter().filter(|(n, _)| names.iter().any(|m| m.as_str() == n)).collect();
    let whole = pairs(head.headers);
    let got = by_name(&d.request_headers);
    assert!(
        got == by_name(&want) && d.request_headers.len() == want.len()
            || got == by_name(&whole) && d.request_headers.len() == whole.len(),
        "named {names:?}: {:?}",
        d.request_headers
    );
    let host = head.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    assert_eq!(d.host, host.unwrap_or_default());
}

/// Lines per name in order (what a plugin can rely on; names in any order).
fn by_name(lines: &[(String, String)]) -> std::collections::BTreeMap<&str, Vec<&str>> {
    let mut m = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for (n, v) in lines {
        m.entry(n.as_str()).or_default().push(v.as_str());
    }
    m
}

fn patched_reads_as_edited(input: &Input, id: &ViewIdentity, head: &RequestHead<'_>, cap: usize) {
    let mut buf = vec![0xAAu8; cap];
    let Ok(end) = view::encode_request(&mut buf, id, 0, head) else {
        return;
    };
    let mut map = head.headers.clone();
    let names: Vec<http::HeaderName> = map.keys().cloned().collect();
    let mut owned = Vec::new();
    for (kind, which, value) in &input.edits {
        let name = match names.get(*which as usize) {
            Some(n) => n.clone(),
            None => http::HeaderName::from_bytes(format!("x-new-{which}").as_bytes()).unwrap(),
        };
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            continue;
        };
        match kind % 3 {
            0 => {
                map.insert(name.clone(), value.clone());
            }
            1 => {
                map.append(name.clone(), value.clone());
            }
            _ => {
                map.remove(&name);
            }
        }
        owned.push((kind % 3, name, value));
    }
    let edits = owned.iter().map(|(kind, n, v)| match kind {
        0 => HeaderEdit::Set(n.as_str().as_bytes(), v.as_bytes()),
        1 => HeaderEdit::Add(n.as_str().as_bytes(), v.as_bytes()),
        _ => HeaderEdit::Remove(n.as_str().as_bytes()),
    });
    let Some(done) = view::patch_headers(&mut buf, Section::Request, end.headers, end.size, 0, edits) else {
        return;
    };
    assert!(done.size <= buf.len());
    let d = view::decode_for_test(&buf).expect("a patched view decodes");
    let want = pairs(&map);
    assert_eq!(by_name(&d.request_headers), by_name(&want));
    assert_eq!(d.request_headers.len(), want.len());
    assert!(d.response_headers.is_empty());
}
