//! The plugin-facing surface as a misbehaving plugin drives it: arbitrary bytes in the mutation
//! buffer, an arbitrary claimed length, in an arbitrary phase. decode() must never panic or read
//! out of bounds; whatever it accepts, applied, keeps the invariants (no CR/LF/NUL in values,
//! framing headers untouched, path starts with '/'). A plugin that keeps writing the buffer after
//! the host decoded it (CR/LF over every byte a record carries) changes no header, status or
//! path, and no length: the batch resolved from the overwritten buffer equals the clean one but
//! for the reply body's bytes. Every phase is fuzzed (the phase byte ranges over all of them);
//! records a phase does not take are refused, and WebSocket, body and skip-body records that pass
//! are valid for the phase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_abi::WeftPhase;
use weft_runtime::mutation::{self, Batch};

#[path = "common.rs"]
mod common;

fuzz_target!(|input: (u8, u32, &[u8])| {
    let (phase, len, buf) = input;
    let phase = common::phase(phase);
    // Half the time the claimed length is the real one, so decoding goes past the length check.
    let len = if len & 1 == 0 { buf.len() } else { (len >> 1) as usize };
    let Ok(mut batch) = mutation::decode(buf, len, phase) else {
        assert!(
            mutation::decode_raw(buf, len, phase).is_err(),
            "the zero-copy form accepted it"
        );
        return;
    };
    // The zero-copy form (long values and reply bodies as slices of a shared buffer) accepts the
    // same batch and yields the same result.
    let shared = bytes::Bytes::copy_from_slice(buf);
    let raw = mutation::decode_raw(&shared, len, phase).expect("the zero-copy form refused it");
    let mut zc = raw.resolve(mutation::Source::Shared(&shared));
    let mut copied = mutation::decode(buf, len, phase).expect("decoded once already");
    // The late writer: decoded from the buffer, resolved from it after CR/LF overwrote every
    // letter and digit.
    let raw = mutation::decode_raw(buf, len, phase).expect("decoded once already");
    let late: Vec<u8> = buf
        .iter()
        .map(|&b| if b.is_ascii_alphanumeric() { b'\n' } else { b })
        .collect();
    let mut overwritten = raw.resolve(mutation::Source::Shared(&bytes::Bytes::from(late)));
    let reply_of = |r: Option<mutation::LocalReply>| r.map(|r| (r.status, r.headers, r.body));
    let (c, z, o) = (
        reply_of(copied.take_reply()),
        reply_of(zc.take_reply()),
        reply_of(overwritten.take_reply()),
    );
    assert_eq!(c, z, "local replies differ");
    let head_of = |r: &Option<(http::StatusCode, http::HeaderMap, bytes::Bytes)>| {
        r.as_ref().map(|(s, h, b)| (*s, h.clone(), b.len()))
    };
    assert_eq!(head_of(&c), head_of(&o), "a late write changed a local reply's head");
    check_phase_records(phase, len, &mut copied, &mut zc, &mut overwritten);
    if common::request_side(phase) {
        let (mut p1, mut p2, mut p3) = (common::request(), common::request(), common::request());
        copied.apply_to_request(&mut p1);
        zc.apply_to_request(&mut p2);
        overwritten.apply_to_request(&mut p3);
        assert_eq!((&p1.headers, &p1.uri), (&p2.headers, &p2.uri), "applied batches differ");
        assert_eq!(
            (p1.headers, p1.uri),
            (p3.headers, p3.uri),
            "a late write changed the request"
        );
    } else {
        let (mut p1, mut p3) = (common::response(), common::response());
        copied.apply_to_response(&mut p1);
        overwritten.apply_to_response(&mut p3);
        assert_eq!(
            (p1.status, p1.headers),
            (p3.status, p3.headers),
            "a late write changed the response"
        );
    }
    // The log phase takes no record; the others take head changes (body phases: when buffered).
    assert!(phase != WeftPhase::Log || batch.is_empty());
    if let Some(reply) = batch.take_reply() {
        let r = reply.into_response();
        assert!((200..=599).contains(&r.status().as_u16()));
        common::check_reply_headers(r.headers());
        assert!(r.headers().get(http::header::CONTENT_LENGTH).is_none());
    }
    if common::request_side(phase) {
        let mut p = common::request();
        let before = p.headers.clone();
        batch.apply_to_request(&mut p);
        common::check_request(&before, &p);
    } else {
        let mut p = common::response();
        let before = p.headers.clone();
        batch.apply_to_response(&mut p);
        common::check_headers(&before, &p.headers);
        assert!((200..=599).contains(&p.status.as_u16()) || p.status == 200);
    }
});

/// The records a phase acts on besides the head: body edits (body phases), skip-body (header
/// phases) and WebSocket records (WebSocket phases) appear only there, are valid, and do not
/// depend on how the batch was resolved or on a late write (WebSocket payloads are copied at
/// decode time; body edits are ranges).
fn check_phase_records(phase: WeftPhase, len: usize, copied: &mut Batch, zc: &mut Batch, late: &mut Batch) {
    let ws = copied.take_ws();
    assert_eq!(ws, zc.take_ws(), "WebSocket records differ");
    assert_eq!(ws, late.take_ws(), "a late write changed a WebSocket record");
    common::check_ws(&ws);
    let ws_phase = matches!(
        phase,
        WeftPhase::WebSocketOpen | WeftPhase::WebSocketMessage | WeftPhase::WebSocketClose
    );
    assert!(ws.is_empty() || ws_phase, "WebSocket records in {phase:?}");
    if ws_phase {
        assert!(copied.is_empty(), "head changes in {phase:?}");
    }
    let body = copied.take_body_edits();
    assert_eq!(body, zc.take_body_edits(), "body edits differ");
    assert_eq!(body, late.take_body_edits(), "a late write changed the body edits");
    common::check_body_edits(&body, len);
    let body_phase = matches!(phase, WeftPhase::RequestBody | WeftPhase::ResponseBody);
    assert!(body.is_pass() || body_phase, "body edits in {phase:?}");
    let skip = copied.take_skip_body();
    assert_eq!(skip, zc.take_skip_body(), "skip-body differs");
    assert_eq!(skip, late.take_skip_body(), "a late write changed skip-body");
    let head_phase = matches!(phase, WeftPhase::RequestHeaders | WeftPhase::ResponseHeaders);
    assert!(!skip || head_phase, "skip-body in {phase:?}");
}
