//! Mutation batches applied to a request and a response: structured records (any op number,
//! status and operand bytes), encoded the way a plugin encodes them, so the fuzzer reaches the
//! validation and apply paths rather than the framing checks. Invariants as in mutation_raw.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_runtime::abi::WeftPhase;
use weft_runtime::mutation::{self, encode_record};

#[path = "common.rs"]
mod common;

#[derive(Arbitrary, Debug)]
struct Record {
    op: u8,
    arg: u16,
    a: Vec<u8>,
    b: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    response: bool,
    records: Vec<Record>,
    /// Bytes cut off the end (a torn last record).
    cut: u8,
}

fuzz_target!(|input: Input| {
    let mut buf = Vec::new();
    for r in &input.records {
        encode_record(&mut buf, (r.op % 13) as u32, r.arg as u32, &r.a, &r.b);
    }
    let len = buf.len().saturating_sub(input.cut as usize % 4);
    let phase = if input.response {
        WeftPhase::ResponseHeaders
    } else {
        WeftPhase::RequestHeaders
    };
    let Ok(mut batch) = mutation::decode(&buf, len, phase) else {
        return;
    };
    let _ = batch.take_reply();
    if input.response {
        let mut p = common::response();
        let before = p.headers.clone();
        batch.apply_to_response(&mut p);
        common::check_headers(&before, &p.headers);
    } else {
        let mut p = common::request();
        let before = p.headers.clone();
        batch.apply_to_request(&mut p);
        common::check_request(&before, &p);
    }
});
