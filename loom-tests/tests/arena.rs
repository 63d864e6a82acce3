//! loom models of the arena's free list and per-thread caches, checking the shipped code
//! (`weft_runtime::arena` built with `--cfg weft_loom`).
#![cfg(weft_loom)]

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use weft_runtime::arena::{Arena, LocalCache};

/// Stands in for a slot's bytes: loom reports two accesses without happens-before between them
/// (a slot handed to a new tenant before the old tenant's writes are visible), and `owned`
/// catches a slot held by two tenants at once.
struct Slots {
    data: Vec<UnsafeCell<u32>>,
    owned: Vec<AtomicBool>,
}

impl Slots {
    fn new(n: u32) -> Arc<Slots> {
        Arc::new(Slots {
            data: (0..n).map(|_| UnsafeCell::new(0)).collect(),
            owned: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    fn take(&self, i: u32, who: u32) {
        assert!(
            !self.owned[i as usize].swap(true, Ordering::Relaxed),
            "slot {i} handed out twice"
        );
        self.data[i as usize].with_mut(|p| unsafe { *p = who });
    }

    fn give(&self, i: u32, who: u32) {
        self.data[i as usize].with(|p| assert_eq!(unsafe { *p }, who, "slot {i} overwritten while held"));
        assert!(
            self.owned[i as usize].swap(false, Ordering::Relaxed),
            "slot {i} freed twice"
        );
    }
}

/// Two threads on the global free list with two slots. One thread holding one slot while the other
/// pops and pushes is exactly the ABA schedule: without the tag in the head, the stale CAS
/// installs a slot that is in use as the new head, and it is handed out twice.
#[test]
fn global_list_allocate_free_across_threads() {
    loom::model(|| {
        let arena = Arena::with_batch(2, 4096, 0).unwrap();
        let slots = Slots::new(2);
        let t = {
            let (arena, slots) = (arena.clone(), slots.clone());
            thread::spawn(move || {
                let a = arena.acquire_global();
                if let Some(a) = &a {
                    slots.take(a.index(), 1);
                }
                let b = arena.acquire_global();
                if let Some(b) = &b {
                    slots.take(b.index(), 1);
                }
                for l in [a, b].into_iter().flatten() {
                    slots.give(l.index(), 1);
                }
            })
        };
        let x = arena.acquire_global();
        if let Some(x) = &x {
            slots.take(x.index(), 2);
        }
        let y = arena.acquire_global();
        if let Some(y) = &y {
            slots.take(y.index(), 2);
        }
        if let Some(x) = x {
            slots.give(x.index(), 2);
        }
        let z = arena.acquire_global();
        if let Some(z) = &z {
            slots.take(z.index(), 2);
        }
        for l in [y, z].into_iter().flatten() {
            slots.give(l.index(), 2);
        }
        t.join().unwrap();
        assert_eq!(arena.in_use(), 0);
        assert_eq!(arena.free_list_len(), 2, "every slot back on the free list");
    });
}

/// Per-thread caches: each thread refills a batch of 2 from a list of 3 (so one refill is
/// partial and one may find the list empty), uses the slots, frees them into its cache and
/// flushes the cache back as one chain. Slots flow between threads only through refill and
/// flush, so a missing release/acquire there is a data race on the slot contents.
#[test]
fn cache_refill_and_flush_across_threads() {
    loom::model(|| {
        let arena = Arena::with_batch(3, 4096, 2).unwrap();
        let slots = Slots::new(3);
        let worker = |who: u32, arena: Arc<Arena>, slots: Arc<Slots>| {
            move || {
                let mut cache = LocalCache::new();
                let mut held = Vec::new();
                for _ in 0..2 {
                    if let Some(l) = arena.acquire_with(&mut cache) {
                        slots.take(l.index(), who);
                        held.push(l);
                    }
                }
                for l in held {
                    slots.give(l.index(), who);
                    l.release_into(&mut cache);
                }
                // Reuse one from the cache (no CAS), then give everything back.
                if let Some(l) = arena.acquire_with(&mut cache) {
                    slots.take(l.index(), who);
                    slots.give(l.index(), who);
                    l.release_into(&mut cache);
                }
                drop(cache);
            }
        };
        let t = thread::spawn(worker(1, arena.clone(), slots.clone()));
        worker(2, arena.clone(), slots.clone())();
        t.join().unwrap();
        assert_eq!(arena.in_use(), 0);
        assert_eq!(arena.free_list_len(), 3, "every slot back on the free list");
    });
}
