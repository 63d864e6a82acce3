//! loom models of the per-slot completion cell (`weft_runtime::completion`): the slot lifecycle
//! (submit, claim, complete) racing cancel/deadline, and the completion wake-up.
#![cfg(weft_loom)]

use std::future::poll_fn;
use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use weft_runtime::completion::{Cancel, CompleteError, CompletionCell};

/// The owner's payload (the slot lease in the runtime): counts drops, and is a loom cell so a
/// completer touching it without happens-before from the owner is a reported race.
struct Lease {
    drops: Arc<AtomicUsize>,
    data: loom::cell::UnsafeCell<u32>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.data.with(|p| assert_eq!(unsafe { *p }, 7));
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Submit → pending → a completer on another thread races the owner's cancel (deadline or
/// client gone). Whatever the schedule: the lease is dropped exactly once (by the owner, or by
/// the late completer), the result is delivered at most once, and the cell ends idle.
#[test]
fn lifecycle_complete_races_cancel() {
    loom::model(|| {
        let cell: Arc<CompletionCell<Lease, Box<u32>>> = Arc::new(CompletionCell::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let lease = Lease {
            drops: drops.clone(),
            data: loom::cell::UnsafeCell::new(0),
        };
        lease.data.with_mut(|p| unsafe { *p = 7 });
        let seq = cell.begin().unwrap();
        cell.mark_pending(seq);
        let completer = {
            let cell = cell.clone();
            thread::spawn(move || {
                let r = cell.complete(seq, Box::new(42));
                // A second completion is always refused.
                assert!(matches!(
                    cell.complete(seq, Box::new(43)),
                    Err(CompleteError::AlreadyCompleted | CompleteError::Stale)
                ));
                r
            })
        };
        let kept = match cell.cancel(seq, lease) {
            Cancel::Kept(l) => Some(l),
            Cancel::Orphaned => None,
        };
        let completed = completer.join().unwrap();
        match (&kept, completed) {
            (Some(_), Ok(())) => {}                     // result arrived first, discarded by cancel
            (None, Err(CompleteError::Cancelled)) => {} // late completion released the lease
            other => panic!("impossible outcome {:?}", (other.0.is_some(), other.1)),
        }
        drop(kept);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "lease dropped exactly once");
        assert!(cell.is_idle());
    });
}

/// A plugin completes one call from two threads at once while the owner cancels it (the
/// hostile C plugin's "complete twice after the deadline"). Whatever the schedule: the lease is
/// dropped exactly once (loom reports a race if two threads touch it), at most one completion
/// is delivered or releases the lease and the other gets an error, and the cell ends idle so
/// the next call can begin.
#[test]
fn two_completers_race_a_cancel() {
    loom::model(|| {
        let cell: Arc<CompletionCell<Lease, Box<u32>>> = Arc::new(CompletionCell::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let lease = Lease {
            drops: drops.clone(),
            data: loom::cell::UnsafeCell::new(0),
        };
        lease.data.with_mut(|p| unsafe { *p = 7 });
        let seq = cell.begin().unwrap();
        cell.mark_pending(seq);
        let completers: Vec<_> = (0..2u32)
            .map(|i| {
                let cell = cell.clone();
                thread::spawn(move || cell.complete(seq, Box::new(i)))
            })
            .collect();
        let kept = match cell.cancel(seq, lease) {
            Cancel::Kept(l) => Some(l),
            Cancel::Orphaned => None,
        };
        let results: Vec<_> = completers.into_iter().map(|c| c.join().unwrap()).collect();
        let won = results
            .iter()
            .filter(|r| matches!(r, Ok(()) | Err(CompleteError::Cancelled)))
            .count();
        assert_eq!(won, 1, "exactly one completion counts: {results:?}");
        assert!(
            results.iter().any(|r| *r == Err(CompleteError::AlreadyCompleted)),
            "the other is refused: {results:?}"
        );
        assert_eq!(kept.is_some(), results.contains(&Ok(())), "{results:?}");
        drop(kept);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "lease dropped exactly once");
        assert!(cell.is_idle());
        assert!(cell.begin().is_some(), "the next call can begin");
    });
}

/// The owner polls the completion as a future while the completer delivers it from another
/// thread: the owner must always be woken (loom reports a deadlock on a lost wake-up) and read
/// the completer's result.
#[test]
fn completion_wakes_the_owner() {
    loom::model(|| {
        let cell: Arc<CompletionCell<(), Box<u32>>> = Arc::new(CompletionCell::new());
        let seq = cell.begin().unwrap();
        let completer = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(seq, Box::new(42)).unwrap())
        };
        cell.mark_pending(seq);
        let r = loom::future::block_on(poll_fn(|cx| cell.poll(seq, cx)));
        assert_eq!(*r, 42);
        completer.join().unwrap();
        assert!(cell.is_idle());
    });
}

/// A completion with an old token after the slot moved on to a new call is refused and does not
/// disturb the new call.
#[test]
fn stale_token_after_reuse_is_refused() {
    loom::model(|| {
        let cell: Arc<CompletionCell<(), u32>> = Arc::new(CompletionCell::new());
        let old = cell.begin().unwrap();
        assert!(cell.finish_inline(old));
        let seq = cell.begin().unwrap();
        cell.mark_pending(seq);
        let stale = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(old, 1))
        };
        let fresh = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(seq, 2))
        };
        assert_eq!(stale.join().unwrap(), Err(CompleteError::Stale));
        assert_eq!(fresh.join().unwrap(), Ok(()));
        assert_eq!(cell.try_take(seq), Some(2));
    });
}

/// A plugin that answers a call inline *and* completes it from another thread (a misuse the
/// engine tolerates): the owner's `finish_inline` fails when the completion got in first, and
/// the owner then takes (and ignores) the completion, waiting out a completer still writing.
/// Whatever the schedule the cell ends idle, the next call can begin, and the completer got `Ok`
/// or `AlreadyCompleted`.
#[test]
fn inline_answer_racing_a_completion_leaves_the_cell_idle() {
    loom::model(|| {
        use weft_runtime::completion::CellState;
        let cell: Arc<CompletionCell<(), Box<u32>>> = Arc::new(CompletionCell::new());
        let seq = cell.begin().unwrap();
        let completer = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(seq, Box::new(1)))
        };
        // The owner: the handler returned without Pending.
        if !cell.finish_inline(seq) {
            while cell.try_take(seq).is_none() && cell.peek() != (seq, CellState::Idle) {
                thread::yield_now();
            }
        }
        let r = completer.join().unwrap();
        assert!(matches!(r, Ok(()) | Err(CompleteError::AlreadyCompleted)), "{r:?}");
        assert!(cell.is_idle());
        assert!(cell.begin().is_some(), "the next call can begin");
    });
}

/// `begin` is a plain store (no compare-and-swap): a stale completer running while the owner
/// starts the next call must not be able to slip a write in between. Whatever the schedule the
/// stale completion is refused and the fresh one delivered.
#[test]
fn stale_completer_racing_begin() {
    loom::model(|| {
        let cell: Arc<CompletionCell<(), u32>> = Arc::new(CompletionCell::new());
        let old = cell.begin().unwrap();
        assert!(cell.finish_inline(old));
        let stale = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(old, 1))
        };
        let seq = cell.begin().unwrap();
        cell.mark_pending(seq);
        let fresh = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(seq, 2))
        };
        assert!(matches!(
            stale.join().unwrap(),
            Err(CompleteError::AlreadyCompleted | CompleteError::Stale)
        ));
        assert_eq!(fresh.join().unwrap(), Ok(()));
        assert_eq!(cell.try_take(seq), Some(2));
        assert!(cell.is_idle());
    });
}
