//! Worker-pool ring (`weft_runtime::ring`): one-way hand-off throughput (per job, published in
//! batches of 16 and one by one) and round trip (two rings, ping-pong) with a busy consumer thread
//! that spins before parking. Aim: round trip ≤ 1 µs p50.
//! Medians: `target/criterion/ring/*/new/estimates.json` (`median.point_estimate`, ns); the
//! round-trip percentiles of single timed round trips are printed at the end.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weft_runtime::ring::{Consumer, Producer, WeftJob, ring};

/// The consumer spins this many empty checks before parking: busy while the bench runs.
const SPINS: u32 = 1 << 18;

fn job(i: u64) -> WeftJob {
    WeftJob {
        slot: i as u32,
        generation: 1,
        instance: i,
        phase: 0,
        call: i as u32,
        out_slot: i as u32,
        out_off: 128,
    }
}

/// A consumer thread that counts what it receives.
fn counting_consumer(mut c: Consumer, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut out = [WeftJob::default(); 64];
        let mut n = 0u64;
        loop {
            let got = c.recv_batch(&mut out);
            if got == 0 {
                match c.recv_spin(SPINS) {
                    Some(j) => {
                        black_box(j);
                        n += 1;
                    }
                    None => return,
                }
            } else {
                black_box(&out[..got]);
                n += got as u64;
            }
            done.store(n, Ordering::Release);
        }
    })
}

fn one_way(p: &mut Producer, done: &AtomicU64, sent: &mut u64, iters: u64, batch: u64) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    while i < iters {
        let mut staged = 0;
        while staged < batch && i < iters && p.stage(job(i)).is_ok() {
            staged += 1;
            i += 1;
        }
        p.publish();
    }
    *sent += iters;
    while done.load(Ordering::Acquire) < *sent {
        std::hint::spin_loop();
    }
    start.elapsed()
}

/// The echo worker: receives on one ring, answers on the other.
fn echo(mut rx: Consumer, mut tx: Producer) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Some(j) = rx.recv_spin(SPINS) {
            while tx.try_send(j).is_err() {
                std::hint::spin_loop();
            }
        }
    })
}

fn round_trip(tx: &mut Producer, rx: &mut Consumer, i: u64) {
    tx.try_send(job(i)).unwrap();
    loop {
        if let Some(j) = rx.try_recv() {
            black_box(j);
            return;
        }
        std::hint::spin_loop();
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    for batch in [16u64, 1] {
        let (mut p, cons) = ring(1024).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let t = counting_consumer(cons, done.clone());
        let mut sent = 0u64;
        g.bench_function(format!("one_way/batch{batch}"), |b| {
            b.iter_custom(|iters| one_way(&mut p, &done, &mut sent, iters, batch))
        });
        let wakes = p.stats().wakes.load(Ordering::Relaxed);
        drop(p);
        t.join().unwrap();
        println!("one_way/batch{batch}: {sent} jobs, {wakes} wakes");
    }

    let (mut tx, worker_rx) = ring(64).unwrap();
    let (worker_tx, mut rx) = ring(64).unwrap();
    let worker = echo(worker_rx, worker_tx);
    let mut i = 0u64;
    g.bench_function("round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                round_trip(&mut tx, &mut rx, i);
                i += 1;
            }
            start.elapsed()
        })
    });
    g.finish();

    // Percentiles of single round trips (each timed; Instant costs ~20 ns of it).
    let mut samples: Vec<u64> = (0..200_000u64)
        .map(|k| {
            let t = Instant::now();
            round_trip(&mut tx, &mut rx, k);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let wakes = tx.stats().wakes.load(Ordering::Relaxed);
    println!(
        "round_trip single: p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns ({} round trips, {} wakes of the worker)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        i + samples.len() as u64,
        wakes
    );
    drop(tx);
    worker.join().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
