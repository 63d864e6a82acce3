//! Encoding a request view as a `weft.wire.PhaseRequest` and decoding a worker's
//! `weft.wire.PhaseResponse` (schema: `nats-bridge/schema/weft_wire.fbs`).

use std::borrow::Cow;
use std::cell::RefCell;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

pub use crate::generated::weft::wire::{
    Header, HeaderArgs, PHASE_REQUEST_IDENTIFIER as WIRE_IDENTIFIER, PhaseRequest, PhaseRequestArgs, PhaseResponse,
    PhaseResponseArgs,
};
use crate::view::{BadView, ViewReader};

/// Version of the wire messages this side writes (`version` field of both tables), and the
/// highest version it reads.
pub const WIRE_VERSION: u16 = 2;

/// The lowest wire version this side reads: 2, the first whose replies name the request and
/// phase they answer (an unbound reply could answer any request).
pub const WIRE_VERSION_MIN: u16 = 2;

/// A message that is not a readable weft wire message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a weft wire message (no file identifier {WIRE_IDENTIFIER:?})")]
    NotWeft,
    #[error("unsupported wire version {got} (this host speaks {WIRE_VERSION_MIN} to {WIRE_VERSION})")]
    UnsupportedVersion { got: u16 },
    #[error("invalid flatbuffer: {0}")]
    Invalid(#[from] flatbuffers::InvalidFlatbuffer),
}

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
        fbb.finish(root, Some(WIRE_IDENTIFIER));
        Bytes::copy_from_slice(fbb.finished_data())
    });
    Ok((out, r.request_id()))
}

/// A decoded PhaseResponse.
#[derive(Debug)]
pub struct DecodedResponse {
    /// The request and phase the worker says this answers (checked by the caller).
    pub request_id: u64,
    pub phase: u32,
    pub result: u32,
    /// The mutation records, a slice of the message payload (no copy).
    pub mutations: Bytes,
    pub error: String,
}

/// Verifies and decodes a PhaseResponse payload: the file identifier must be [`WIRE_IDENTIFIER`]
/// and the version one this side reads ([`WIRE_VERSION_MIN`] to [`WIRE_VERSION`]).
pub fn decode_response(payload: &Bytes) -> Result<DecodedResponse, WireError> {
    // Bytes 4..8 (after the root offset). Not flatbuffers::buffer_has_identifier: it panics on a
    // buffer shorter than 8 bytes, and this is a peer's message.
    if payload.get(4..8) != Some(WIRE_IDENTIFIER.as_bytes()) {
        return Err(WireError::NotWeft);
    }
    let resp = flatbuffers::root::<PhaseResponse>(payload)?;
    let got = resp.version();
    if !(WIRE_VERSION_MIN..=WIRE_VERSION).contains(&got) {
        return Err(WireError::UnsupportedVersion { got });
    }
    let mutations = match resp.mutations() {
        Some(v) if !v.is_empty() => {
            let s = v.bytes();
            let start = s.as_ptr() as usize - payload.as_ptr() as usize;
            payload.slice(start..start + s.len())
        }
        _ => Bytes::new(),
    };
    Ok(DecodedResponse {
        request_id: resp.request_id(),
        phase: resp.phase(),
        result: resp.result(),
        mutations,
        error: resp.error().unwrap_or("").to_owned(),
    })
}

/// Encodes a PhaseResponse answering `phase` of request `request_id` (used by tests and by
/// Rust-side fake workers).
pub fn encode_response(request_id: u64, phase: u32, result: u32, mutations: &[u8], error: &str) -> Bytes {
    encode_response_as(WIRE_VERSION, request_id, phase, result, mutations, error)
}

/// [`encode_response`] claiming wire version `version` (tests of version checks).
pub fn encode_response_as(
    version: u16,
    request_id: u64,
    phase: u32,
    result: u32,
    mutations: &[u8],
    error: &str,
) -> Bytes {
    let mut fbb = FlatBufferBuilder::with_capacity(64 + mutations.len());
    let m = fbb.create_vector(mutations);
    let e = (!error.is_empty()).then(|| fbb.create_string(error));
    let root = PhaseResponse::create(
        &mut fbb,
        &PhaseResponseArgs {
            version,
            result,
            mutations: Some(m),
            error: e,
            request_id,
            phase,
        },
    );
    fbb.finish(root, Some(WIRE_IDENTIFIER));
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
            client: "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap().into(),
            scheme: "http",
            server_name: None,
        };
        let n = encode_view(&mut buf, &id, 0, &head).unwrap().size;
        let (bytes, rid) = encode_request(&buf[..n], 0).unwrap();
        assert_eq!(rid, 9);
        assert_eq!(&bytes[4..8], b"WEFT", "self-describing: the file identifier");
        assert!(crate::generated::weft::wire::phase_request_buffer_has_identifier(
            &bytes
        ));
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
        let p = encode_response(9, 2, 0, &[1, 2, 3, 4], "");
        let d = decode_response(&p).unwrap();
        assert_eq!(
            (d.result, &d.mutations[..], d.error.as_str()),
            (0, &[1u8, 2, 3, 4][..], "")
        );
        assert_eq!((d.request_id, d.phase), (9, 2), "the request and phase it answers");
        let p = encode_response(9, 2, 1, &[], "boom");
        let d = decode_response(&p).unwrap();
        assert_eq!((d.result, d.mutations.len(), d.error.as_str()), (1, 0, "boom"));
        assert!(decode_response(&Bytes::from_static(b"\x01\x02")).is_err());
    }

    #[test]
    fn response_without_identifier_is_refused() {
        // The same table finished without the identifier, as a peer before it was added writes it.
        let mut fbb = FlatBufferBuilder::new();
        let root = PhaseResponse::create(
            &mut fbb,
            &PhaseResponseArgs {
                version: WIRE_VERSION,
                ..Default::default()
            },
        );
        fbb.finish(root, None);
        let p = Bytes::copy_from_slice(fbb.finished_data());
        assert_eq!(decode_response(&p).unwrap_err(), WireError::NotWeft);
        let mut p = encode_response(9, 2, 0, &[], "").to_vec();
        p[4..8].copy_from_slice(b"WEFX");
        assert_eq!(decode_response(&Bytes::from(p)).unwrap_err(), WireError::NotWeft);
        for short in [&b""[..], b"\x01\x02", b"\x08\0\0\0WEF"] {
            assert_eq!(
                decode_response(&Bytes::copy_from_slice(short)).unwrap_err(),
                WireError::NotWeft
            );
        }
    }

    #[test]
    fn response_of_an_unknown_version_is_refused_naming_both_versions() {
        // 1: replies before they named their request, which could answer any request.
        for v in [0, 1, WIRE_VERSION + 1, u16::MAX] {
            let p = encode_response_as(v, 9, 2, 0, &[1, 2, 3, 4], "");
            let err = decode_response(&p).unwrap_err();
            assert_eq!(err, WireError::UnsupportedVersion { got: v });
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("unsupported wire version {v}")) && msg.contains(&WIRE_VERSION.to_string()),
                "{msg}"
            );
        }
        assert!(decode_response(&encode_response_as(WIRE_VERSION, 9, 2, 0, &[], "")).is_ok());
    }
}
