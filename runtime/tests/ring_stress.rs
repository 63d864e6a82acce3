//! Multi-threaded stress test of the worker-pool ring (`weft_runtime::ring`): a producer and a
//! consumer thread run for a bounded time with varying batch sizes and spin budgets (so the
//! consumer often parks and is woken), and check that every job arrives exactly once, in order,
//! intact. A lost wake-up shows as a consumer that stops making progress: the test fails on a
//! progress timeout instead of hanging. Pass/fail does not depend on timing otherwise.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_runtime::ring::{WeftJob, ring};

fn job(seq: u32) -> WeftJob {
    WeftJob {
        slot: seq.wrapping_mul(2654435761),
        generation: !seq,
        instance: (seq as u64) << 20 | 7,
        phase: seq % 5,
        call: seq,
        out_slot: seq.rotate_left(7),
        out_off: seq ^ 0xa5a5,
    }
}

fn one_way(capacity: u32, run_for: Duration, consumer_spins: u32, max_batch: u32) -> u32 {
    let (mut p, mut c) = ring(capacity).unwrap();
    let (progress_tx, progress_rx) = mpsc::channel::<u32>();
    let consumer = std::thread::spawn(move || {
        let mut next = 0u32;
        let mut out = [WeftJob::default(); 16];
        loop {
            // Batch receives of varying size; a blocking receive when the ring is empty.
            let mut got = c.recv_batch(&mut out[..(next % 16 + 1) as usize]);
            if got == 0 {
                match c.recv_spin(consumer_spins) {
                    Some(j) => {
                        out[0] = j;
                        got = 1;
                    }
                    None => break,
                }
            }
            for j in &out[..got] {
                assert_eq!(*j, job(next), "job {next} lost, duplicated, reordered or torn");
                next = next.wrapping_add(1);
            }
            if got > 0 && next % 4096 < got as u32 {
                let _ = progress_tx.send(next);
            }
        }
        let _ = progress_tx.send(next);
        next
    });
    let deadline = Instant::now() + run_for;
    let mut seq = 0u32;
    let mut round = 0u32;
    while Instant::now() < deadline {
        round = round.wrapping_add(1);
        let want = round % max_batch + 1;
        for _ in 0..want {
            if p.stage(job(seq)).is_err() {
                break;
            }
            seq += 1;
        }
        p.publish();
        // Now and then go idle so the consumer parks and must be woken.
        if round % 1024 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        while progress_rx.try_recv().is_ok() {}
    }
    let stats = (
        p.stats().wakes.load(std::sync::atomic::Ordering::Relaxed),
        p.stats().parks.load(std::sync::atomic::Ordering::Relaxed),
    );
    drop(p); // publishes the rest and closes
    // The consumer must drain everything; no progress for 10 s means it is asleep with work
    // waiting (a lost wake-up).
    loop {
        match progress_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(n) if n == seq => break,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("consumer stalled: lost wake-up?"),
        }
    }
    let got = consumer.join().expect("consumer panicked");
    assert_eq!(got, seq, "every published job received");
    assert!(stats.0 <= stats.1, "more wakes ({}) than parks ({})", stats.0, stats.1);
    eprintln!("ring {capacity}: {seq} jobs, {} parks, {} wakes", stats.1, stats.0);
    seq
}

#[test]
fn tiny_ring_full_and_empty_all_the_time() {
    assert!(one_way(2, Duration::from_millis(700), 0, 3) > 0);
}

#[test]
fn batched_ring_with_parking_consumer() {
    assert!(one_way(64, Duration::from_millis(700), 16, 40) > 0);
}

#[test]
fn ping_pong_parks_and_wakes_every_round() {
    // Two rings, both sides park between rounds (no spinning): every hand-off is an
    // idle→busy transition with a wake-up racing the park.
    let (mut to_worker, mut worker_in) = ring(4).unwrap();
    let (mut worker_out, mut from_worker) = ring(4).unwrap();
    let worker = std::thread::spawn(move || {
        while let Some(j) = worker_in.recv_spin(0) {
            worker_out.try_send(WeftJob { call: j.call + 1, ..j }).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut rounds = 0u32;
    while Instant::now() < deadline {
        to_worker.try_send(job(rounds)).unwrap();
        let back = from_worker.recv_spin(if rounds % 2 == 0 { 0 } else { 64 }).unwrap();
        assert_eq!(back.call, rounds + 1);
        rounds += 1;
    }
    drop(to_worker);
    worker.join().unwrap();
    assert!(from_worker.try_recv().is_none());
    assert!(rounds > 0);
}
