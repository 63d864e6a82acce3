//! The request arena against a simple model: arbitrary sequences of acquire, release and writes.
//! Live leases never share a slot, bytes written into one lease stay intact until it is released,
//! a reused slot gets a new generation (the old handle is stale), acquire fails exactly when
//! every slot is leased, and the in-use count matches the model.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_runtime::arena::{Arena, SlotLease};

#[derive(Arbitrary, Debug)]
enum Op {
    Acquire,
    Release(u8),
    Write { lease: u8, at: u16, byte: u8 },
    CheckStale { index: u16, generation: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    slots: u8,
    ops: Vec<Op>,
}

struct Held {
    lease: SlotLease,
    /// What the model says the slot's bytes are (written positions only).
    written: Vec<(usize, u8)>,
}

fuzz_target!(|input: Input| {
    let count = (input.slots % 8) as u32 + 1;
    let arena = Arena::new(count, 4096).expect("arena");
    let mut held: Vec<Held> = Vec::new();
    let mut retired: Vec<(u32, u32)> = Vec::new();
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Acquire => match arena.acquire() {
                Some(mut lease) => {
                    assert!((held.len() as u32) < count, "acquired more slots than exist");
                    let idx = lease.index();
                    assert!(idx < count);
                    assert!(!held.iter().any(|h| h.lease.index() == idx), "slot {idx} leased twice");
                    assert!(arena.is_current(idx, lease.generation()));
                    for &(i, g) in &retired {
                        if i == idx {
                            assert_ne!(g, lease.generation(), "a reused slot kept its generation");
                            assert!(!arena.is_current(i, g), "stale handle is current");
                        }
                    }
                    assert_eq!(lease.bytes_mut().len(), arena.slot_size());
                    held.push(Held {
                        lease,
                        written: Vec::new(),
                    });
                }
                None => assert_eq!(held.len() as u32, count, "acquire failed with free slots"),
            },
            Op::Release(i) => {
                if !held.is_empty() {
                    let h = held.swap_remove(i as usize % held.len());
                    retired.push((h.lease.index(), h.lease.generation()));
                    drop(h.lease);
                }
            }
            Op::Write { lease, at, byte } => {
                if !held.is_empty() {
                    let n = held.len();
                    let h = &mut held[lease as usize % n];
                    let bytes = h.lease.bytes_mut();
                    let at = at as usize % bytes.len();
                    bytes[at] = byte;
                    h.written.retain(|&(p, _)| p != at);
                    h.written.push((at, byte));
                }
            }
            Op::CheckStale { index, generation } => {
                // Forged handles: never a panic, and never current unless the model says so.
                let cur = arena.is_current(index as u32, generation);
                let live = held
                    .iter()
                    .any(|h| h.lease.index() == index as u32 && h.lease.generation() == generation);
                if live {
                    assert!(cur);
                }
            }
        }
        assert_eq!(arena.in_use(), held.len() as u64);
        for h in held.iter_mut() {
            let written = h.written.clone();
            let bytes = h.lease.bytes_mut();
            for (p, b) in written {
                assert_eq!(bytes[p], b, "a live slot's bytes changed under it");
            }
        }
    }
});
