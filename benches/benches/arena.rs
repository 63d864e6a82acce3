//! Arena allocate+free against `Vec<u8>` allocate+free of the same size (the slot size), on one
//! thread and on two threads at once (per-operation time per thread: flat means it scales).
//! The arena path is the one a request takes: the thread cache, refilled from the lock-free list.
//! Medians: `target/criterion/arena/*/new/estimates.json` (`median.point_estimate`, ns).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weft_runtime::arena::Arena;

const SLOT: u32 = 16 * 1024;

fn arena_op(arena: &Arc<Arena>) {
    let mut lease = arena.acquire().expect("bench arena exhausted");
    lease.bytes_mut()[0] = 1;
    black_box(&lease);
}

fn vec_op() {
    let mut v: Vec<u8> = Vec::with_capacity(SLOT as usize);
    // SAFETY: capacity is SLOT > 0; one byte is written before it is read (nothing reads it).
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
    let arena = Arena::new(1024, SLOT).unwrap();
    let mut g = c.benchmark_group("arena");
    for threads in [1usize, 2] {
        let a = arena.clone();
        g.bench_function(format!("arena_alloc_free/{threads}t"), move |b| {
            let a = a.clone();
            b.iter_custom(move |iters| {
                let a = a.clone();
                on_threads(threads, iters, move || arena_op(&a))
            })
        });
        g.bench_function(format!("vec_alloc_free/{threads}t"), move |b| {
            b.iter_custom(move |iters| on_threads(threads, iters, vec_op))
        });
    }
    g.finish();
}

criterion_group!(benches, arena);
criterion_main!(benches);
