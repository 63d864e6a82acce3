//! The per-slot completion cell: the lock-free hand-off between a request's task (the owner) and
//! a plugin that answered "pending" and finishes later from any thread (the completer).
//!
//! # State machine
//! One `AtomicU64` packs `(seq << 32) | state`. `seq` numbers the calls made through the cell
//! (never 0); a completion token carries it, so a completion for an older call is refused.
//!
//! ```text
//!            begin (owner)          mark_pending (owner)
//!   IDLE ─────────────────▶ CALLED ─────────────────▶ PENDING
//!    ▲                        │  complete (completer)    │
//!    │                        ▼                          ▼
//!    │                     WRITING ── result written ──▶ COMPLETED ── poll takes it ──▶ IDLE
//!    │                        │                          │
//!    │          cancel (owner)│                          │ cancel after completion:
//!    │                        ▼                          │ owner discards the result,
//!    ├──── the writer ──── ABANDONED                     └─ keeps its payload ─────────▶ IDLE
//!    │     discards its result and drops the payload
//!    │
//!    │   cancel (owner) from CALLED / PENDING
//!    │                        ▼
//!    └── claimer ◀── RELEASING ◀── first late complete ── CANCELLED
//!        drops the payload the owner left behind (every other completer: AlreadyCompleted)
//! ```
//!
//! - The owner never waits: polling registers the task's waker, then looks for `COMPLETED`
//!   (register-then-check, so a completion between the two still wakes it).
//! - Cancelling (deadline, client gone) while the plugin still holds the call leaves the owner's
//!   payload (the arena slot lease) in the cell; exactly one completer releases it, so the slot
//!   is reused only after the plugin is done with it. If the plugin never completes, the slot
//!   stays out (the caller counts it).
//! - Every transition that hands the payload or the result to a thread is a compare-and-swap that
//!   only one thread can win: the completer that moved the call to `WRITING` owns `ABANDONED`,
//!   and of the completers racing on `CANCELLED` only the one that moves it to `RELEASING` drops
//!   the payload. So any number of concurrent completions of one call (a plugin completing twice
//!   from two threads) deliver or release at most once; the others get an error code, never
//!   undefined behaviour (the loom models below, `loom_models`, model two completers racing a
//!   cancel).
//!
//! All atomics, cells and the waker come from [`crate::sync`], so the loom models below check this code.

use std::task::{Context, Poll};

use crate::sync::{AtomicU64, AtomicWaker, Ordering, UnsafeCell};

const IDLE: u32 = 0;
const CALLED: u32 = 1;
const PENDING: u32 = 2;
const WRITING: u32 = 3;
const COMPLETED: u32 = 4;
/// Cancelled from `CALLED`/`PENDING`: no completer holds the call; the first to claim it releases
/// the owner's payload.
const CANCELLED: u32 = 5;
/// Cancelled while a completer was writing its result: that completer (and only it) discards
/// the result and releases the payload.
const ABANDONED: u32 = 6;
/// A completer claimed `CANCELLED` and is releasing the payload; the cell turns `IDLE` next.
const RELEASING: u32 = 7;

#[inline]
fn pack(seq: u32, state: u32) -> u64 {
    ((seq as u64) << 32) | state as u64
}

#[inline]
fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Why a completion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteError {
    /// The token names another call than the current one (forged, or from an older request).
    Stale,
    /// This call was completed already.
    AlreadyCompleted,
    /// The owner gave up (deadline or client gone); the result was discarded and the owner's
    /// payload released.
    Cancelled,
}

/// A cell's state as [`CompletionCell::peek`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellState {
    Idle,
    Called,
    Pending,
    Writing,
    Completed,
    Cancelled,
}

/// What [`CompletionCell::cancel`] did with the owner's payload.
#[derive(Debug)]
pub enum Cancel<T> {
    /// The plugin still holds the call; the payload stays in the cell until it completes.
    Orphaned,
    /// Nothing was outstanding (or the result had arrived and was discarded): payload back.
    Kept(T),
}

/// One slot's completion cell. `T`: what the owner leaves behind on cancel (the slot lease);
/// `R`: the completion result.
pub struct CompletionCell<T, R> {
    state: AtomicU64,
    waker: AtomicWaker,
    result: UnsafeCell<Option<R>>,
    orphan: UnsafeCell<Option<T>>,
}

// SAFETY: `result` is written only by the completer that won IDLE→…→WRITING and read by the
// owner after it observed COMPLETED (release/acquire on `state`); `orphan` is written by the owner
// before it publishes CANCELLED (release) and taken by whoever observes CANCELLED (acquire), or by
// the owner itself when no completer can be around.
unsafe impl<T: Send, R: Send> Send for CompletionCell<T, R> {}
unsafe impl<T: Send, R: Send> Sync for CompletionCell<T, R> {}

impl<T, R> Default for CompletionCell<T, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, R> CompletionCell<T, R> {
    pub fn new() -> Self {
        CompletionCell {
            state: AtomicU64::new(pack(0, IDLE)),
            waker: AtomicWaker::new(),
            result: UnsafeCell::new(None),
            orphan: UnsafeCell::new(None),
        }
    }

    /// Owner: starts a call; returns its `seq` for the completion token, or `None` if the cell is
    /// not idle (a previous call was orphaned and never completed).
    ///
    /// A plain store, not a compare-and-swap: in `IDLE` only the owner writes the state (a
    /// completer writes only from `CALLED`/`PENDING`, or after it observed `CANCELLED`), so
    /// nobody can change it between the load and the store. Release publishes what the owner
    /// wrote before (the call's metadata) to the completer that acquires the new state.
    pub fn begin(&self) -> Option<u32> {
        let (seq, state) = unpack(self.state.load(Ordering::Acquire));
        if state != IDLE {
            return None;
        }
        let next = match seq.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.state.store(pack(next, CALLED), Ordering::Release);
        Some(next)
    }

    /// Owner: the handler returned "pending". A completion that already arrived is left for
    /// [`poll`](Self::poll) to find.
    pub fn mark_pending(&self, seq: u32) {
        let _ = self.state.compare_exchange(
            pack(seq, CALLED),
            pack(seq, PENDING),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Owner: the handler finished inline (returned without "pending"); the cell is idle again.
    /// A completion attempted meanwhile with this call's token is refused as stale afterwards.
    pub fn finish_inline(&self, seq: u32) -> bool {
        self.state
            .compare_exchange(pack(seq, CALLED), pack(seq, IDLE), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Owner: the completion, once it has arrived. Registers the waker first, then checks, so a
    /// completion racing with the poll still wakes the task.
    pub fn poll(&self, seq: u32, cx: &mut Context<'_>) -> Poll<R> {
        self.waker.register(cx.waker());
        match self.try_take(seq) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Owner: takes the result if it has arrived.
    pub fn try_take(&self, seq: u32) -> Option<R> {
        if self.state.load(Ordering::Acquire) != pack(seq, COMPLETED) {
            return None;
        }
        // SAFETY: COMPLETED was published with release after the write; only the owner reads.
        let r = self.result.with_mut(|p| unsafe { (*p).take() });
        self.state.store(pack(seq, IDLE), Ordering::Release);
        r
    }

    /// Completer (any thread): delivers the result of call `seq` and wakes the owner.
    pub fn complete(&self, seq: u32, result: R) -> Result<(), CompleteError> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let (s, state) = unpack(cur);
            if s != seq || seq == 0 {
                return Err(CompleteError::Stale);
            }
            match state {
                CALLED | PENDING => {
                    match self
                        .state
                        .compare_exchange(cur, pack(seq, WRITING), Ordering::Acquire, Ordering::Acquire)
                    {
                        Ok(_) => break,
                        Err(now) => cur = now,
                    }
                }
                CANCELLED => {
                    // Claim the release: of several completers only one wins this exchange.
                    match self
                        .state
                        .compare_exchange(cur, pack(seq, RELEASING), Ordering::Acquire, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.release_orphan(seq);
                            return Err(CompleteError::Cancelled);
                        }
                        Err(now) => cur = now,
                    }
                }
                // WRITING/ABANDONED/RELEASING belong to another completer; COMPLETED and IDLE
                // (this seq) mean the call was delivered.
                _ => return Err(CompleteError::AlreadyCompleted),
            }
        }
        // SAFETY: this thread won CALLED/PENDING → WRITING; nobody else touches `result` now.
        self.result.with_mut(|p| unsafe { *p = Some(result) });
        match self.state.compare_exchange(
            pack(seq, WRITING),
            pack(seq, COMPLETED),
            Ordering::Release,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.waker.wake();
                Ok(())
            }
            Err(_) => {
                // The owner cancelled while the result was being written (WRITING → ABANDONED,
                // which no other completer touches): discard it.
                // SAFETY: ABANDONED leaves `result` and `orphan` to this thread alone.
                drop(self.result.with_mut(|p| unsafe { (*p).take() }));
                self.release_orphan(seq);
                Err(CompleteError::Cancelled)
            }
        }
    }

    /// The one completer that owns the cancelled call (it moved CANCELLED → RELEASING, or it was
    /// writing when the owner moved WRITING → ABANDONED; both observed with acquire): drops what
    /// the owner left and makes the cell idle, so the slot can be reused.
    fn release_orphan(&self, seq: u32) {
        // SAFETY: the owner wrote `orphan` before publishing CANCELLED/ABANDONED with release and
        // no longer touches the cell; the state this completer won excludes every other one.
        let orphan = self.orphan.with_mut(|p| unsafe { (*p).take() });
        self.state.store(pack(seq, IDLE), Ordering::Release);
        // Dropped last: dropping the lease returns the slot, after which a new owner may begin.
        drop(orphan);
    }

    /// Owner: gives up on call `seq` (deadline, client gone). If the plugin still holds the call,
    /// `payload` stays in the cell until the completion arrives (see the module docs).
    pub fn cancel(&self, seq: u32, payload: T) -> Cancel<T> {
        // SAFETY: no completer reads `orphan` before it observes CANCELLED, published below.
        self.orphan.with_mut(|p| unsafe { *p = Some(payload) });
        let take_back = || {
            self.orphan
                .with_mut(|p| unsafe { (*p).take() })
                .expect("orphan just stored")
        };
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let (s, state) = unpack(cur);
            if s != seq {
                return Cancel::Kept(take_back());
            }
            match state {
                CALLED | PENDING | WRITING => {
                    // A writer keeps the call (ABANDONED is its alone); otherwise the first late
                    // completer claims it from CANCELLED.
                    let to = if state == WRITING { ABANDONED } else { CANCELLED };
                    match self
                        .state
                        .compare_exchange(cur, pack(seq, to), Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return Cancel::Orphaned,
                        Err(now) => cur = now,
                    }
                }
                COMPLETED => {
                    // SAFETY: COMPLETED observed with acquire; the completer is done with it.
                    drop(self.result.with_mut(|p| unsafe { (*p).take() }));
                    self.state.store(pack(seq, IDLE), Ordering::Release);
                    return Cancel::Kept(take_back());
                }
                _ => return Cancel::Kept(take_back()),
            }
        }
    }

    /// The current call's `seq` and state, for a completer's checks before it commits (the state
    /// may move on right after; [`complete`](Self::complete) decides).
    pub fn peek(&self) -> (u32, CellState) {
        let (seq, state) = unpack(self.state.load(Ordering::Acquire));
        let state = match state {
            IDLE => CellState::Idle,
            CALLED => CellState::Called,
            PENDING => CellState::Pending,
            WRITING => CellState::Writing,
            COMPLETED => CellState::Completed,
            _ => CellState::Cancelled,
        };
        (seq, state)
    }

    /// With exclusive access (the cell is being dropped): takes what a cancelled call left
    /// behind, so the caller can decide its fate (the runtime leaks an orphaned slot lease rather
    /// than returning memory a plugin may still write).
    pub fn take_orphan(&mut self) -> Option<T> {
        // SAFETY: `&mut self`: no completer can be inside the cell.
        self.orphan.with_mut(|p| unsafe { (*p).take() })
    }

    /// Whether a cancelled call is still waiting for its plugin (the slot is held).
    pub fn is_orphaned(&self) -> bool {
        matches!(
            unpack(self.state.load(Ordering::Acquire)).1,
            CANCELLED | ABANDONED | RELEASING
        )
    }

    /// Whether the cell is idle (no call outstanding). Only the tests and models ask.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        unpack(self.state.load(Ordering::Acquire)).1 == IDLE
    }
}

#[cfg(all(test, not(weft_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(crate::sync::stat::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, crate::sync::stat::Ordering::SeqCst);
        }
    }

    #[test]
    fn complete_then_poll_delivers_once() {
        let c: CompletionCell<(), u32> = CompletionCell::new();
        let seq = c.begin().unwrap();
        c.mark_pending(seq);
        let flag = Arc::new(Flag(false.into()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(c.poll(seq, &mut cx).is_pending());
        assert_eq!(c.complete(seq, 7), Ok(()));
        assert!(
            flag.0.load(crate::sync::stat::Ordering::SeqCst),
            "completion wakes the owner"
        );
        assert_eq!(c.complete(seq, 8), Err(CompleteError::AlreadyCompleted));
        assert_eq!(c.poll(seq, &mut cx), Poll::Ready(7));
        assert_eq!(c.complete(seq, 9), Err(CompleteError::AlreadyCompleted), "consumed");
        assert_eq!(c.complete(seq + 1, 9), Err(CompleteError::Stale));
        assert_eq!(c.complete(0, 9), Err(CompleteError::Stale));
        assert!(c.is_idle());
    }

    #[test]
    fn cancel_orphans_payload_until_late_completion() {
        let c: CompletionCell<Arc<()>, u32> = CompletionCell::new();
        let payload = Arc::new(());
        let seq = c.begin().unwrap();
        c.mark_pending(seq);
        assert!(matches!(c.cancel(seq, payload.clone()), Cancel::Orphaned));
        assert_eq!(Arc::strong_count(&payload), 2, "the cell holds the payload");
        assert!(c.begin().is_none(), "an orphaned cell cannot start a new call");
        assert_eq!(c.complete(seq, 1), Err(CompleteError::Cancelled));
        assert_eq!(Arc::strong_count(&payload), 1, "late completion released it");
        assert!(c.is_idle());
        assert_eq!(c.complete(seq, 1), Err(CompleteError::AlreadyCompleted));
        assert!(c.begin().is_some());
    }

    #[test]
    fn only_one_of_two_late_completions_releases_the_payload() {
        let c: CompletionCell<Arc<()>, u32> = CompletionCell::new();
        let payload = Arc::new(());
        let seq = c.begin().unwrap();
        c.mark_pending(seq);
        assert!(matches!(c.cancel(seq, payload.clone()), Cancel::Orphaned));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| c.complete(seq, 1));
            let b = s.spawn(|| c.complete(seq, 2));
            (a.join().unwrap(), b.join().unwrap())
        });
        let released = [a, b].iter().filter(|r| **r == Err(CompleteError::Cancelled)).count();
        assert_eq!(released, 1, "{a:?} {b:?}");
        assert!([a, b].contains(&Err(CompleteError::AlreadyCompleted)), "{a:?} {b:?}");
        assert_eq!(Arc::strong_count(&payload), 1, "released exactly once");
        assert!(c.is_idle());
    }

    #[test]
    fn cancel_after_completion_keeps_payload() {
        let c: CompletionCell<u8, u32> = CompletionCell::new();
        let seq = c.begin().unwrap();
        c.complete(seq, 5).unwrap();
        assert!(matches!(c.cancel(seq, 3), Cancel::Kept(3)));
        assert!(c.is_idle());
    }

    #[test]
    fn inline_finish_makes_the_token_stale() {
        let c: CompletionCell<u8, u32> = CompletionCell::new();
        let seq = c.begin().unwrap();
        assert!(c.finish_inline(seq));
        assert_eq!(c.complete(seq, 1), Err(CompleteError::AlreadyCompleted));
    }
}

#[cfg(all(test, weft_loom))]
mod loom_models {
    //! loom models of the per-slot completion cell (`crate::completion`): the slot lifecycle
    //! (submit, claim, complete) racing cancel/deadline, and the completion wake-up.
    //! Run by `scripts/loom` (see docs/loom.md, which also lists the planted bug each model caught).

    use std::future::poll_fn;
    use std::sync::Arc;

    use crate::completion::{Cancel, CompleteError, CompletionCell};
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

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
            use crate::completion::CellState;
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
}
