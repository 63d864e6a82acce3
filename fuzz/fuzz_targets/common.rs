// Shared by the mutation targets: a request and a response to apply batches to, and the
// invariants every applied batch must keep.
// Each target uses a part of this module.
#![allow(dead_code)]
use std::sync::LazyLock;

use weft_abi::{WEFT_PHASE_MASK_SUPPORTED, WeftPhase};
use weft_runtime::mutation::{self, MutationError, RESERVED, WsOp};

/// How many phases the runtime has: as many as its supported-phase mask has bits, so a phase
/// added there grows this count and the table below stops compiling until the phase is in it.
pub const PHASE_COUNT: usize = (u32::BITS - WEFT_PHASE_MASK_SUPPORTED.leading_zeros()) as usize;

/// Every phase, indexed by its number.
pub const PHASES: [WeftPhase; PHASE_COUNT] = [
    WeftPhase::RequestHeaders,
    WeftPhase::RequestBody,
    WeftPhase::ResponseHeaders,
    WeftPhase::ResponseBody,
    WeftPhase::Log,
    WeftPhase::WebSocketOpen,
    WeftPhase::WebSocketMessage,
    WeftPhase::WebSocketClose,
];

// Each entry sits at its own number, and together they are exactly the supported mask (no gap).
const _: () = {
    let mut mask = 0;
    let mut i = 0;
    while i < PHASE_COUNT {
        assert!(PHASES[i] as usize == i, "PHASES out of order");
        mask |= PHASES[i].mask();
        i += 1;
    }
    assert!(
        mask == WEFT_PHASE_MASK_SUPPORTED,
        "PHASES differs from WEFT_PHASE_MASK_SUPPORTED"
    );
};

/// The phase a fuzzer byte picks (every phase is reachable). A `mutation_raw` seed's first byte
/// is this byte: its index in [`PHASES`] (`seeds/mutation_raw/response_batch` starts with 2).
pub fn phase(raw: u8) -> WeftPhase {
    PHASES[raw as usize % PHASE_COUNT]
}

/// Whether a batch of `phase` applies to the request head (else to the response head).
pub fn request_side(phase: WeftPhase) -> bool {
    matches!(phase, WeftPhase::RequestHeaders | WeftPhase::RequestBody)
}

/// One past the highest op number the runtime knows, asked of the decoder itself (an unknown op
/// is refused as such before anything else is checked), so a new op is fuzzed without an edit.
pub static OP_END: LazyLock<u32> = LazyLock::new(|| {
    let known = |op: u32| {
        let mut buf = Vec::new();
        mutation::encode_record(&mut buf, op, 0, b"", b"");
        !matches!(
            mutation::decode(&buf, buf.len(), WeftPhase::RequestHeaders),
            Err(MutationError::UnknownOp { .. })
        )
    };
    let end = (1..).find(|&op| !known(op)).unwrap();
    assert!(end > 23, "the decoder knows fewer ops than the ABI has");
    end
});

/// WebSocket records that passed decoding are ones the connection may act on: text is UTF-8,
/// close codes may be sent with a reason of at most 123 bytes, room names are non-empty and of
/// the allowed characters.
pub fn check_ws(ops: &[WsOp]) {
    let room_ok = |r: &str| {
        !r.is_empty()
            && r.len() <= weft_abi::WEFT_MAX_WS_ROOM_LEN as usize
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
    };
    for op in ops {
        match op {
            WsOp::Send { binary, payload } | WsOp::Broadcast { binary, payload, .. } => {
                assert!(*binary || std::str::from_utf8(payload).is_ok(), "text is not UTF-8");
            }
            WsOp::Close { code, reason } => {
                assert!(mutation::ws_close_code_ok(*code as u32), "close code {code}");
                assert!(reason.len() <= 123, "close reason of {} bytes", reason.len());
            }
            WsOp::Join(_) | WsOp::Leave(_) => {}
        }
        if let WsOp::Join(r) | WsOp::Leave(r) | WsOp::Broadcast { room: r, .. } = op {
            assert!(room_ok(r), "room {r:?}");
        }
    }
}

/// Body edits name ranges inside the first `len` bytes of the buffer.
pub fn check_body_edits(edits: &mutation::BodyEdits, len: usize) {
    let ranges = edits
        .replace
        .iter()
        .flatten()
        .chain(&edits.prepend)
        .chain(&edits.append);
    for r in ranges {
        assert!(r.start <= r.end && r.end <= len, "body range {r:?} past {len}");
    }
}

pub fn request() -> http::request::Parts {
    http::Request::post("/base/path?x=1")
        .header("host", "example.com")
        .header("content-length", "5")
        .header("transfer-encoding", "chunked")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.0.0.1")
        .header("forwarded", "for=10.0.0.1")
        .header("x-real-ip", "10.0.0.1")
        .header("expect", "100-continue")
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
        .header("keep-alive", "timeout=5")
        .header("x-keep", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// The values of every header a plugin may not change (framing, hop-by-hop, `host`, the
/// forwarding headers: `mutation::RESERVED`).
fn reserved(h: &http::HeaderMap) -> Vec<Vec<http::HeaderValue>> {
    RESERVED
        .iter()
        .map(|n| h.get_all(*n).iter().cloned().collect())
        .collect()
}

pub fn check_headers(before: &http::HeaderMap, after: &http::HeaderMap) {
    assert_eq!(reserved(before), reserved(after), "a plugin changed a reserved header");
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

/// A local reply's headers: none reserved, none with CR, LF or NUL.
pub fn check_reply_headers(h: &http::HeaderMap) {
    for name in RESERVED {
        assert!(!h.contains_key(name), "a local reply carries reserved header {name}");
    }
    check_headers(&http::HeaderMap::new(), h);
}
