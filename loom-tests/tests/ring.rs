//! loom models of the worker-pool ring (`weft_runtime::ring` built with `--cfg weft_loom`): the
//! full/empty edges of a ring of 2, and the park/wake protocol (no lost wake-up).
#![cfg(weft_loom)]

use loom::thread;
use weft_runtime::ring::{WeftJob, ring};

fn job(i: u32) -> WeftJob {
    WeftJob {
        slot: i,
        generation: i + 10,
        instance: i as u64 + 100,
        phase: 1,
        call: i,
        out_slot: i + 20,
        out_off: i * 8,
    }
}

/// Capacity 2, three jobs: the producer fills the ring, finds it full, and waits for the
/// consumer to give an entry back; the consumer finds it empty and waits for a publish. A
/// missing release/acquire on `head` or `tail` is a data race on a descriptor cell (the producer
/// overwriting an entry the consumer is reading, or the consumer reading one being written); a
/// wrong full/empty test loses or duplicates a job.
#[test]
fn full_and_empty_edges_capacity_2() {
    loom::model(|| {
        let (mut p, mut c) = ring(2).unwrap();
        let producer = thread::spawn(move || {
            for i in 0..3 {
                while p.try_send(job(i)).is_err() {
                    thread::yield_now();
                }
            }
        });
        for i in 0..3 {
            let j = loop {
                match c.try_recv() {
                    Some(j) => break j,
                    None => thread::yield_now(),
                }
            };
            assert_eq!(j, job(i), "jobs arrive once, in order, intact");
        }
        producer.join().unwrap();
        assert!(c.try_recv().is_none());
    });
}

/// The consumer parks on an empty ring (no spinning) while the producer publishes: whatever the
/// interleaving of "publish, check the flag" and "set the flag, re-check", the consumer is woken
/// (a lost wake-up is a loom deadlock), receives both jobs, then sees the producer close. Every
/// wake answers a park.
#[test]
fn park_wake_no_lost_wakeup() {
    loom::model(|| {
        let (mut p, mut c) = ring(2).unwrap();
        let producer = thread::spawn(move || {
            p.try_send(job(1)).unwrap();
            p.try_send(job(2)).unwrap();
            let s = p.stats();
            let (wakes, parks) = (
                s.wakes.load(std::sync::atomic::Ordering::Relaxed),
                s.parks.load(std::sync::atomic::Ordering::Relaxed),
            );
            (wakes, parks)
        });
        assert_eq!(c.recv_spin(0), Some(job(1)));
        assert_eq!(c.recv_spin(0), Some(job(2)));
        assert_eq!(c.recv_spin(0), None, "the producer closed");
        let _ = producer.join().unwrap();
        let s = c.stats();
        let wakes = s.wakes.load(std::sync::atomic::Ordering::Relaxed);
        let parks = s.parks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(wakes <= parks, "{wakes} wakes for {parks} parks");
    });
}
