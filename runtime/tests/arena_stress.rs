//! Multi-threaded stress test of the lock-free arena: threads allocate and free for a bounded
//! time through their thread caches, the global list and explicit caches, and check that no slot
//! is ever held twice and that every slot is back at the end. Pass/fail does not depend on
//! timing: the time bound only limits how much work is done.
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_runtime::arena::{Arena, LocalCache};

fn stress(arena: Arc<Arena>, threads: usize, run_for: Duration) -> u64 {
    stress_tagged(arena, threads, run_for, 0)
}

/// `stress` whose threads write tags from `tag_base + 1` on (so runs on pools of one mapping at
/// once would see each other's writes if their slots overlapped).
fn stress_tagged(arena: Arc<Arena>, threads: usize, run_for: Duration, tag_base: u8) -> u64 {
    let n = arena.slot_count() as usize;
    let owned: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run_for;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (arena, owned, ops) = (arena.clone(), owned.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut explicit = LocalCache::new();
                let mut held = Vec::new();
                let mut round = 0u64;
                let tag = tag_base.wrapping_add(t as u8).wrapping_add(1);
                while Instant::now() < deadline {
                    round += 1;
                    // Hold a varying number of slots, so caches fill, refill and flush.
                    let want = (round % 7) as usize + 1;
                    for _ in 0..want {
                        let lease = match round % 3 {
                            0 => arena.acquire_with(&mut explicit),
                            1 => arena.acquire_global(),
                            _ => arena.acquire(),
                        };
                        let Some(mut lease) = lease else { break };
                        let i = lease.index() as usize;
                        assert!(
                            !owned[i].swap(true, Ordering::AcqRel),
                            "slot {i} handed out while already leased"
                        );
                        assert!(arena.is_current(lease.index(), lease.generation()));
                        lease.bytes_mut()[..64].fill(tag);
                        held.push(lease);
                    }
                    for mut lease in held.drain(..).rev() {
                        let i = lease.index() as usize;
                        assert!(
                            lease.bytes_mut()[..64].iter().all(|&b| b == tag),
                            "slot {i} written by another thread"
                        );
                        assert!(owned[i].swap(false, Ordering::AcqRel), "slot {i} freed twice");
                        if round % 2 == 0 {
                            lease.release_into(&mut explicit);
                        } else {
                            drop(lease);
                        }
                    }
                    ops.fetch_add(want as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("stress thread panicked");
    }
    // Every thread has exited, so its thread cache and explicit cache were flushed.
    assert_eq!(arena.in_use(), 0, "leases outstanding after the run");
    assert_eq!(arena.free_list_len(), n, "every slot is back on the free list");
    assert!(owned.iter().all(|o| !o.load(Ordering::Relaxed)));
    ops.load(Ordering::Relaxed)
}

#[test]
fn arena_survives_concurrent_allocate_and_free_with_caches() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) + 2;
    let arena = Arena::with_batch(256, 4096, 8).unwrap();
    let ops = stress(arena, threads, Duration::from_millis(1500));
    assert!(ops > 0);
}

#[test]
fn arena_survives_contention_on_a_tiny_list_without_caches() {
    // Few slots, many threads: the global list is contended and often empty (exhaustion path).
    let arena = Arena::with_batch(4, 4096, 0).unwrap();
    let ops = stress(arena, 4, Duration::from_millis(500));
    assert!(ops > 0);
}

#[test]
fn pools_of_one_mapping_survive_concurrent_use_side_by_side() {
    use weft_runtime::arena::PoolSpec;
    // Three pools of one mapping, each stressed by its own threads at once; the tags differ per
    // pool, so a slot of one pool overlapping another's would show as a foreign write.
    let pools = Arena::pools(&[
        PoolSpec {
            slot_count: 256,
            slot_size: 4096,
        },
        PoolSpec {
            slot_count: 130,
            slot_size: 4096,
        },
        PoolSpec {
            slot_count: 8,
            slot_size: 16384,
        },
    ])
    .unwrap();
    let runs: Vec<_> = pools
        .into_iter()
        .enumerate()
        .map(|(i, pool)| std::thread::spawn(move || stress_tagged(pool, 3, Duration::from_millis(1000), 40 * i as u8)))
        .collect();
    for r in runs {
        assert!(r.join().expect("a pool's stress run failed") > 0);
    }
}
