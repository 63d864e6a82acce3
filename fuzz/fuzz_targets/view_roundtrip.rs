//! The view encoder: arbitrary request and response heads encoded into a slot of arbitrary size
//! and read back the way a plugin reads them (every offset bounds-checked). Encoding either fails
//! cleanly (ViewTooLarge) or round-trips exactly.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_runtime::view::{self, RequestHead, ViewIdentity};

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
        view::encode_request_headers(&mut buf, end.fixed_end, 0, &resp),
        view::encode_request(&mut whole, &id, 0, &changed),
    ) {
        (Ok(a), Ok(b)) => {
            assert_eq!((a, end.fixed_end), (b.size, b.fixed_end));
            assert_eq!(view::decode_for_test(&buf), view::decode_for_test(&whole));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("headers alone {a:?}, whole head {b:?}"),
    }
});
