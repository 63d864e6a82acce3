//! Arena allocate+free against `Vec<u8>` allocate+free of the same size, on one thread and on two
//! threads at once (per-operation time per thread: flat means it scales), for each size class of
//! a three-pool arena (`Arena::pools`): the 16 KiB slot (`arena_alloc_free`, `vec_alloc_free`),
//! and buffer classes of 64 KiB and 256 KiB (`class_64k_*`, `class_256k_*`; glibc serves the
//! last from mmap, past its 128 KiB threshold).
//! The arena path is the one a request takes: the thread cache, refilled from the lock-free list.
//! Medians: `target/criterion/arena/*/new/estimates.json` (`median.point_estimate`, ns).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weft_runtime::arena::{Arena, PoolSpec};

const SLOT: u32 = 16 * 1024;

fn arena_op(arena: &Arc<Arena>) {
    let mut lease = arena.acquire().expect("bench arena exhausted");
    lease.bytes_mut()[0] = 1;
    black_box(&lease);
}

fn vec_op(size: usize) {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    // SAFETY: capacity is size > 0; one byte is written before it is read (nothing reads it).
    unsafe {
        v.as_mut_ptr().write(1);
        v.set_len(1);
    }
    black_box(&v);
}

/// Runs `op` `iters` times on each of `threads` threads started together; returns the wall time,
/// so the figure is the time per operation per thread.
fn on_threads(threads: usize, iters: u64, op: impl Fn() + Send + Sync + 'static) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        return start.elapsed();
    }
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    op();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

fn arena(c: &mut Criterion) {
    let pools = Arena::pools(&[
        PoolSpec {
            slot_count: 1024,
            slot_size: SLOT,
        },
        PoolSpec {
            slot_count: 256,
            slot_size: 4 * SLOT,
        },
        // 128 slots: the smallest pool with per-thread caches (below that every lease and free
        // is a CAS on the shared list, ~25 ns alone and contended on two threads).
        PoolSpec {
            slot_count: 128,
            slot_size: 16 * SLOT,
        },
    ])
    .unwrap();
    let mut g = c.benchmark_group("arena");
    for (pool, (arena_name, vec_name)) in pools.iter().zip([
        ("arena_alloc_free", "vec_alloc_free"),
        ("class_64k_arena", "class_64k_vec"),
        ("class_256k_arena", "class_256k_vec"),
    ]) {
        let size = pool.slot_size();
        for threads in [1usize, 2] {
            let a = pool.clone();
            g.bench_function(format!("{arena_name}/{threads}t"), move |b| {
                let a = a.clone();
                b.iter_custom(move |iters| {
                    let a = a.clone();
                    on_threads(threads, iters, move || arena_op(&a))
                })
            });
            g.bench_function(format!("{vec_name}/{threads}t"), move |b| {
                b.iter_custom(move |iters| on_threads(threads, iters, move || vec_op(size)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, arena);
criterion_main!(benches);
