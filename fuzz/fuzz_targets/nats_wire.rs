//! The NATS bridge's wire messages as a hostile peer sends them: an arbitrary PhaseResponse
//! payload must decode to an error or to a response whose mutations then go through the host's
//! validator without a panic; arbitrary view bytes handed to the request encoder are refused or
//! encoded; and a response the host itself encodes decodes back to the same fields.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weft_abi::WeftPhase;
use weft_nats_bridge::wire;
use weft_runtime::mutation;

fuzz_target!(|input: (u64, u32, u32, &[u8], &[u8])| {
    let (request_id, phase, result, a, b) = input;

    // A reply from a peer: any bytes at all.
    let payload = Bytes::copy_from_slice(a);
    if let Ok(resp) = wire::decode_response(&payload) {
        let _ = mutation::decode(&resp.mutations, resp.mutations.len(), WeftPhase::RequestHeaders);
    }

    // A view the host would never produce: the encoder's own checks must refuse it cleanly.
    let _ = wire::encode_request(b, WeftPhase::RequestHeaders as u32);

    // Round trip of what the host's fake workers and tests encode.
    let error = String::from_utf8_lossy(b);
    let encoded = wire::encode_response(request_id, phase, result, a, &error);
    let back = wire::decode_response(&encoded).expect("a response we encoded must decode");
    assert_eq!((back.request_id, back.phase, back.result), (request_id, phase, result));
    assert_eq!(&back.mutations[..], a);
    assert_eq!(back.error, error);
});
