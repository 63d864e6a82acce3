//! Mutation batches applied to a request and a response: structured records (any op number,
//! status and operand bytes), encoded the way a plugin encodes them, so the fuzzer reaches the
//! validation and apply paths rather than the framing checks. Invariants as in mutation_raw.
//! A record may name a reserved header (framing, hop-by-hop, `host`, forwarding headers) in any
//! letter case: then that record alone, with any header op, must be refused as reserved. Every op
//! number the runtime knows (and unknown ones) in every phase.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_abi::WeftMutationOp as M;
use weft_abi::WeftPhase;
use weft_runtime::mutation::{self, MutationError, RESERVED, encode_record};

#[path = "common.rs"]
mod common;

#[derive(Arbitrary, Debug)]
struct Record {
    op: u8,
    arg: u16,
    a: Vec<u8>,
    b: Vec<u8>,
    /// Replace `a` by this reserved header name (index into RESERVED), upper-casing the
    /// letters whose bit is set in the mask.
    reserved: Option<(u8, u32)>,
}

fn reserved_name(index: u8, upper: u32) -> Vec<u8> {
    let name = RESERVED[index as usize % RESERVED.len()];
    name.bytes()
        .enumerate()
        .map(|(i, b)| {
            if upper >> (i % 32) & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

/// A record naming a reserved header, alone in a batch (after a local reply for a reply
/// header), is refused as reserved whatever the op.
fn check_reserved_refused(op: u32, name: &[u8], value: &[u8]) {
    let (op, phase) = match op {
        1 | 2 | 3 => (op, WeftPhase::RequestHeaders),
        6 | 7 | 8 => (op, WeftPhase::ResponseHeaders),
        _ => (M::LocalReplyHeader as u32, WeftPhase::RequestHeaders),
    };
    let mut buf = Vec::new();
    if op == M::LocalReplyHeader as u32 {
        encode_record(&mut buf, M::LocalReply as u32, 403, b"", b"");
    }
    let value = if op == 3 || op == 8 { &b""[..] } else { value };
    encode_record(&mut buf, op, 0, name, value);
    match mutation::decode(&buf, buf.len(), phase) {
        Err(MutationError::ReservedHeader { .. }) => {}
        other => panic!(
            "op {op} on reserved header {:?} was not refused as reserved: {other:?}",
            String::from_utf8_lossy(name)
        ),
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The phase (any of them: see `common::phase`).
    phase: u8,
    records: Vec<Record>,
    /// Bytes cut off the end (a torn last record).
    cut: u8,
}

fuzz_target!(|input: Input| {
    let mut buf = Vec::new();
    for r in &input.records {
        // Every op the runtime knows, and the unknown ones on either side (0 and OP_END).
        let op = r.op as u32 % (*common::OP_END + 1);
        match r.reserved {
            Some((index, upper)) => {
                let name = reserved_name(index, upper);
                check_reserved_refused(op, &name, &r.b);
                encode_record(&mut buf, op, r.arg as u32, &name, &r.b);
            }
            None => encode_record(&mut buf, op, r.arg as u32, &r.a, &r.b),
        }
    }
    let len = buf.len().saturating_sub(input.cut as usize % 4);
    let phase = common::phase(input.phase);
    let Ok(mut batch) = mutation::decode(&buf, len, phase) else {
        return;
    };
    let _ = batch.take_reply();
    common::check_ws(&batch.take_ws());
    common::check_body_edits(&batch.take_body_edits(), len);
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
    }
});
