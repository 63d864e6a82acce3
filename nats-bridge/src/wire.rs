//! Encoding a request view as a `weft.wire.PhaseRequest` and decoding a worker's
//! `weft.wire.PhaseResponse` (schema: `nats-bridge/schema/weft_wire.fbs`).

use std::borrow::Cow;
use std::cell::RefCell;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

pub use crate::generated::weft::wire::{
    Header, HeaderArgs, PhaseRequest, PhaseRequestArgs, PhaseResponse, PhaseResponseArgs,
};
use crate::view::{BadView, ViewReader};

/// Version of the wire messages this side writes (`version` field of both tables).
pub const WIRE_VERSION: u16 = 1;

thread_local! {
    /// One builder per thread, reused: encoding a request allocates only the final `Bytes`.
    static BUILDER: RefCell<(FlatBufferBuilder<'static>, Vec<WIPOffset<Header<'static>>>)> =
        RefCell::new((FlatBufferBuilder::with_capacity(4096), Vec::with_capacity(64)));
}

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Encodes the request view `view` (runtime layout) as a PhaseRequest for `phase`.
pub fn encode_request(view: &[u8], phase: u32) -> Result<(Bytes, u64), BadView> {
    let r = ViewReader::new(view)?;
    let out = BUILDER.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (fbb, hdrs) = &mut *guard;
        fbb.reset();
        hdrs.clear();
        let mut headers = |fbb: &mut FlatBufferBuilder<'static>,
                           it: crate::view::Headers<'_>|
         -> Option<
            WIPOffset<flatbuffers::Vector<'static, flatbuffers::ForwardsUOffset<Header<'static>>>>,
        > {
            if it.len() == 0 {
                return None;
            }
            hdrs.clear();
            for (n, v) in it {
                let name = fbb.create_vector(n);
                let value = fbb.create_vector(v);
                hdrs.push(Header::create(
                    fbb,
                    &HeaderArgs {
                        name: Some(name),
                        value: Some(value),
                    },
                ));
            }
            Some(fbb.create_vector(hdrs))
        };
        let request_headers = headers(fbb, r.request_headers());
        let response_headers = headers(fbb, r.response_headers());
        let args = PhaseRequestArgs {
            version: WIRE_VERSION,
            phase,
            request_id: r.request_id(),
            method: Some(fbb.create_string(&text(r.method()))),
            path: Some(fbb.create_string(&text(r.path()))),
            query: Some(fbb.create_string(&text(r.query()))),
            host: Some(fbb.create_string(&text(r.host()))),
            client_addr: Some(fbb.create_string(&text(r.client_addr()))),
            scheme: Some(fbb.create_string(&text(r.scheme()))),
            http_version: Some(fbb.create_string(&text(r.http_version()))),
            request_headers,
            status: r.status().min(u16::MAX as u32) as u16,
            response_headers,
        };
        let root = PhaseRequest::create(fbb, &args);
        fbb.finish(root, None);
        Bytes::copy_from_slice(fbb.finished_data())
    });
    Ok((out, r.request_id()))
}

/// A decoded PhaseResponse.
#[derive(Debug)]
pub struct DecodedResponse {
    pub result: u32,
    /// The mutation records, a slice of the message payload (no copy).
    pub mutations: Bytes,
    pub error: String,
}

/// Verifies and decodes a PhaseResponse payload.
pub fn decode_response(payload: &Bytes) -> Result<DecodedResponse, flatbuffers::InvalidFlatbuffer> {
    let resp = flatbuffers::root::<PhaseResponse>(payload)?;
    let mutations = match resp.mutations() {
        Some(v) if !v.is_empty() => {
            let s = v.bytes();
            let start = s.as_ptr() as usize - payload.as_ptr() as usize;
            payload.slice(start..start + s.len())
        }
        _ => Bytes::new(),
    };
    Ok(DecodedResponse {
        result: resp.result(),
        mutations,
        error: resp.error().unwrap_or("").to_owned(),
    })
}

/// Encodes a PhaseResponse (used by tests and by Rust-side fake workers).
pub fn encode_response(result: u32, mutations: &[u8], error: &str) -> Bytes {
    let mut fbb = FlatBufferBuilder::with_capacity(64 + mutations.len());
    let m = fbb.create_vector(mutations);
    let e = (!error.is_empty()).then(|| fbb.create_string(error));
    let root = PhaseResponse::create(
        &mut fbb,
        &PhaseResponseArgs {
            version: WIRE_VERSION,
            result,
            mutations: Some(m),
            error: e,
        },
    );
    fbb.finish(root, None);
    Bytes::copy_from_slice(fbb.finished_data())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method, Uri, Version};
    use weft_runtime::view::{RequestHead, ViewIdentity, encode_request as encode_view};

    #[test]
    fn request_round_trip_keeps_binary_header_values() {
        let mut buf = vec![0u8; 4096];
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h"));
        headers.append("x-bin", HeaderValue::from_bytes(b"a\xffb").unwrap());
        let uri: Uri = "/x?y".parse().unwrap();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_2,
            headers: &headers,
        };
        let id = ViewIdentity {
            request_id: 9,
            slot: 0,
            generation: 1,
            client: "127.0.0.1:1".parse().unwrap(),
            scheme: "http",
        };
        let n = encode_view(&mut buf, &id, 0, &head).unwrap();
        let (bytes, rid) = encode_request(&buf[..n], 0).unwrap();
        assert_eq!(rid, 9);
        let req = flatbuffers::root::<PhaseRequest>(&bytes).unwrap();
        assert_eq!(req.version(), WIRE_VERSION);
        assert_eq!(req.request_id(), 9);
        assert_eq!(req.path(), Some("/x"));
        assert_eq!(req.query(), Some("y"));
        assert_eq!(req.http_version(), Some("HTTP/2.0"));
        let hs = req.request_headers().unwrap();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs.get(1).value().unwrap().bytes(), b"a\xffb");
        assert!(req.response_headers().is_none());
    }

    #[test]
    fn response_round_trip_slices_the_payload() {
        let p = encode_response(0, &[1, 2, 3, 4], "");
        let d = decode_response(&p).unwrap();
        assert_eq!(
            (d.result, &d.mutations[..], d.error.as_str()),
            (0, &[1u8, 2, 3, 4][..], "")
        );
        let p = encode_response(1, &[], "boom");
        let d = decode_response(&p).unwrap();
        assert_eq!((d.result, d.mutations.len(), d.error.as_str()), (1, 0, "boom"));
        assert!(decode_response(&Bytes::from_static(b"\x01\x02")).is_err());
    }
}
