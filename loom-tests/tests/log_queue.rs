//! loom model of the log queue's hand-over (`weft_runtime::log_queue::Handoff`, built with
//! `--cfg weft_loom`): producers push without waking the log thread unless it announced that it
//! parks, and the log thread looks at the queue once more after announcing it. A lost wake-up
//! leaves the consumer parked with a job queued, which loom reports as a deadlock.
#![cfg(weft_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use weft_runtime::log_queue::Handoff;

/// The consumer: drains the queue (a counter) until it has seen `want` jobs, parking through
/// the hand-over whenever it finds nothing.
fn consume(h: &Handoff, queue: &AtomicUsize, want: usize) {
    let mut seen = 0;
    loop {
        seen += queue.swap(0, Ordering::Relaxed);
        if seen >= want {
            return;
        }
        if h.before_park(|| queue.load(Ordering::Relaxed) > 0) {
            thread::park();
            h.after_park();
        }
    }
}

/// A producer: pushes one job (relaxed, as the queue gives no ordering the protocol relies on),
/// then unparks the consumer if the hand-over says so.
fn produce(h: &Handoff, queue: &AtomicUsize, consumer: &thread::Thread) {
    queue.fetch_add(1, Ordering::Relaxed);
    if h.after_push() {
        consumer.unpark();
    }
}

#[test]
fn one_producer_never_leaves_a_job_behind_a_parked_consumer() {
    loom::model(|| {
        let h = Arc::new(Handoff::new());
        let queue = Arc::new(AtomicUsize::new(0));
        let c = {
            let (h, queue) = (h.clone(), queue.clone());
            thread::spawn(move || consume(&h, &queue, 2))
        };
        let consumer = c.thread().clone();
        produce(&h, &queue, &consumer);
        produce(&h, &queue, &consumer);
        c.join().unwrap();
    });
}

#[test]
fn two_producers_never_leave_a_job_behind_a_parked_consumer() {
    loom::model(|| {
        let h = Arc::new(Handoff::new());
        let queue = Arc::new(AtomicUsize::new(0));
        let c = {
            let (h, queue) = (h.clone(), queue.clone());
            thread::spawn(move || consume(&h, &queue, 2))
        };
        let consumer = c.thread().clone();
        let p = {
            let (h, queue, consumer) = (h.clone(), queue.clone(), consumer.clone());
            thread::spawn(move || produce(&h, &queue, &consumer))
        };
        produce(&h, &queue, &consumer);
        p.join().unwrap();
        c.join().unwrap();
    });
}
