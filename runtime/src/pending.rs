//! Asynchronous phase calls: the per-slot call table, the `complete` host function, and the
//! bookkeeping of calls the host waits for.
//!
//! A phase call that answers [`WeftResult::Pending`] (or a job posted to a worker ring,
//! `workers.rs`) is finished later, from any thread, by the plugin calling
//! [`WeftHostApi::complete`](crate::abi::WeftHostApi::complete)`(instance, slot, call, result,
//! out_len)`. Each arena slot has one [`CompletionCell`] (`completion.rs`, model-checked with
//! loom): the engine starts a call on it before calling the plugin (so a completion that races
//! the plugin's own `return Pending` is not lost), writes the cell's `seq` into the view's `call`
//! field, and, if the call goes pending, awaits the cell: the completer's `complete` wakes the
//! request's task through the cell's waker. No thread of the host ever blocks on a plugin except
//! the synchronous API's caller (`Exchange::request_headers`) and the log thread, which park
//! until the completion or the phase deadline.
//!
//! Instance ids are process-wide (`host::register_instance`): `complete` finds the call table
//! of the runtime that owns the instance through them, so several runtimes (config reloads) can
//! coexist, and a completion for a runtime that is gone is answered `Cancelled`.
//!
//! When the host gives up on a call (phase deadline, client gone), the slot lease moves into the
//! cell ([`Orphan`]): the slot goes back to the arena only when the late completion arrives
//! (`Cancelled` to the plugin) and drops it. The table belongs to the arena (shared by the runtime
//! generations of one layout, `Runtime::replacing`); an arena retired while such calls are out
//! keeps its call table alive for good (`Memory`'s drop), so the late completions still find
//! their cells; should a table be dropped with orphans anyway, their leases are leaked on
//! purpose (those slots then stay mapped), since the plugin may still write the slots.

use std::sync::Arc;

use crate::RuntimeStats;
use crate::abi::WeftResult;
use crate::arena::SlotLease;
use crate::completion::{CellState, CompleteError, CompletionCell};
use crate::sync::stat::{AtomicU64, Ordering};
use crate::sync::{AtomicU32, AtomicU64 as SyncU64, Ordering as SyncOrdering};

/// A completion as the plugin delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    /// The handler's raw [`WeftResult`] (never `Pending`).
    pub(crate) rc: u32,
    /// Mutation bytes written at the call's output location (at most its capacity).
    pub(crate) out_len: u32,
}

/// What the owner leaves in the cell when it gives up on a call the plugin still holds. Dropped
/// by the late completer (or leaked with the table, see [`AsyncTable`]'s `Drop`).
pub(crate) struct Orphan {
    /// The view's slot: the plugin may still read it and write its output area.
    pub(crate) lease: Option<SlotLease>,
    /// Other memory the plugin may still write (a body call's separate `out` buffer).
    pub(crate) keep: Option<Box<dyn std::any::Any + Send>>,
    /// The instance's in-flight count stays up until the plugin lets go.
    pub(crate) _in_flight: Option<InFlight>,
    pub(crate) stats: Arc<RuntimeStats>,
}

impl Drop for Orphan {
    fn drop(&mut self) {
        // Only an orphan that still holds its lease was counted (see `Exchange::abandon`).
        if let Some(lease) = self.lease.take() {
            drop(lease);
            self.stats.orphaned_slots.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One plugin instance's count of calls the host is waiting for (pending answers and worker
/// jobs, including cancelled calls the plugin has not completed yet).
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) in_flight: AtomicU64,
}

/// One unit of [`Load::in_flight`]; dropping it gives the unit back.
pub(crate) struct InFlight(Arc<Load>);

impl InFlight {
    /// Counts one more call.
    pub(crate) fn enter(load: &Arc<Load>) -> InFlight {
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(load))
    }

    /// Counts one more call unless `max` are in flight already.
    pub(crate) fn try_enter(load: &Arc<Load>, max: u64) -> Option<InFlight> {
        let before = load.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(Arc::clone(load)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One slot's call state, alone in its cache line pair: slots are used by different threads.
#[repr(align(128))]
pub(crate) struct SlotCall {
    pub(crate) cell: CompletionCell<Orphan, Done>,
    /// The instance the current call went to (checked by `complete`).
    instance: SyncU64,
    /// Bytes the plugin may write at the call's output location.
    out_cap: AtomicU32,
}

/// The call table of one runtime: one [`SlotCall`] per arena slot, indexed like the arena.
pub(crate) struct AsyncTable {
    slots: Box<[SlotCall]>,
    pub(crate) stats: Arc<RuntimeStats>,
    /// The runtime's `stall_threshold` in milliseconds (0: inline calls are not watched); read by
    /// the watchdog (`watchdog.rs`), which finds the table through the instance. Set by the newest
    /// runtime generation sharing the table.
    pub(crate) stall_threshold_ms: AtomicU64,
}

impl AsyncTable {
    pub(crate) fn new(slot_count: u32, stats: Arc<RuntimeStats>) -> AsyncTable {
        AsyncTable {
            slots: (0..slot_count)
                .map(|_| SlotCall {
                    cell: CompletionCell::new(),
                    instance: SyncU64::new(u64::MAX),
                    out_cap: AtomicU32::new(0),
                })
                .collect(),
            stats,
            stall_threshold_ms: AtomicU64::new(0),
        }
    }

    /// Owner (the holder of the slot's lease): starts a call of `instance` whose output location
    /// holds `out_cap` bytes; returns the `call` value for the view. `None` only if the cell is
    /// not idle, which the lease rules out (an orphaned cell holds the slot's lease itself).
    #[inline]
    pub(crate) fn begin(&self, slot: u32, instance: u64, out_cap: u32) -> Option<u32> {
        let s = self.slots.get(slot as usize)?;
        // Published to the completer by the cell's acquire-release `begin`.
        s.instance.store(instance, SyncOrdering::Relaxed);
        s.out_cap.store(out_cap, SyncOrdering::Relaxed);
        s.cell.begin()
    }

    #[inline]
    pub(crate) fn cell(&self, slot: u32) -> &CompletionCell<Orphan, Done> {
        &self.slots[slot as usize].cell
    }
}

impl Drop for AsyncTable {
    fn drop(&mut self) {
        let mut leaked = 0usize;
        for s in self.slots.iter_mut() {
            if let Some(mut orphan) = s.cell.take_orphan() {
                // A plugin still holds this cancelled call and may write the slot at any time:
                // the slot must never go back to the arena (which unmaps its memory once every
                // slot is back), so its lease is leaked, and so is other memory it may write.
                if let Some(lease) = orphan.lease.take() {
                    std::mem::forget(lease);
                    leaked += 1;
                }
                if let Some(keep) = orphan.keep.take() {
                    std::mem::forget(keep);
                }
            }
        }
        if leaked > 0 {
            tracing::warn!(
                leaked,
                "runtime dropped while plugins still hold cancelled calls: their arena slots stay leased \
                 (the arena is kept mapped) and a late completion is answered Cancelled"
            );
        }
    }
}

impl AsyncTable {
    /// `complete` of a call of `instance` (named `name`) on this runtime's table. The checks, in
    /// order: a slot in range, `call` naming the slot's current call and that call belonging to
    /// `instance` (else `StaleHandle`); the call not finished already (`AlreadyCompleted`); a
    /// final `result` and `out_len` within the call's output capacity (else `InvalidArgument`,
    /// and the call stays outstanding). Then the cell decides: `Ok`, or `Cancelled` for a call
    /// the host gave up on (its slot is released now). Every refusal but `Cancelled` (not the
    /// plugin's fault) logs one line naming the instance. (`host.rs` finds the table and answers
    /// unknown instances.)
    pub(crate) fn complete(
        &self,
        name: &str,
        instance: u64,
        slot: u32,
        call: u32,
        result: u32,
        out_len: u32,
    ) -> WeftResult {
        let table = self;
        let misuse = |code: WeftResult, what: std::fmt::Arguments<'_>| {
            tracing::warn!(plugin = %name, slot, call, "complete(): {what}; ignored ({code:?})");
            code
        };
        let Some(s) = table.slots.get(slot as usize) else {
            return misuse(
                WeftResult::StaleHandle,
                format_args!(
                    "slot {slot} is out of range (the runtime has {} slots)",
                    table.slots.len()
                ),
            );
        };
        let (seq, state) = s.cell.peek();
        if call == 0 || seq != call {
            return misuse(
                WeftResult::StaleHandle,
                format_args!("call {call} is not the current call of slot {slot} (forged, or of an earlier request)"),
            );
        }
        if s.instance.load(SyncOrdering::Relaxed) != instance {
            return misuse(
                WeftResult::StaleHandle,
                format_args!("slot {slot} call {call} belongs to another plugin instance"),
            );
        }
        if matches!(state, CellState::Idle | CellState::Completed) {
            return misuse(
                WeftResult::AlreadyCompleted,
                format_args!("call {call} of slot {slot} was completed already (or answered inline)"),
            );
        }
        if result == WeftResult::Pending as u32 {
            return misuse(
                WeftResult::InvalidArgument,
                format_args!("result Pending is not a final result"),
            );
        }
        let cap = s.out_cap.load(SyncOrdering::Relaxed);
        if out_len > cap {
            return misuse(
                WeftResult::InvalidArgument,
                format_args!("out_len {out_len} exceeds the call's output capacity of {cap} bytes"),
            );
        }
        match s.cell.complete(call, Done { rc: result, out_len }) {
            Ok(()) => WeftResult::Ok,
            Err(CompleteError::Cancelled) => {
                table.stats.late_completions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(plugin = %name, slot, call, "late completion of a cancelled call discarded; slot released");
                WeftResult::Cancelled
            }
            Err(CompleteError::AlreadyCompleted) => misuse(
                WeftResult::AlreadyCompleted,
                format_args!("call {call} of slot {slot} was completed already"),
            ),
            Err(CompleteError::Stale) => misuse(
                WeftResult::StaleHandle,
                format_args!("call {call} is not the current call of slot {slot}"),
            ),
        }
    }
}
