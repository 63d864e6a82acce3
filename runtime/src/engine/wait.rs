//! Waiting for a call that went pending or to a worker: its completion arrives through the
//! slot's completion cell, bounded by the instance's deadline. On a deadline, or when the phase
//! future is dropped (client gone), the call is cancelled and its slot stays with the plugin
//! until it completes ([`Exchange::abandon`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use super::failure::CallError;
use super::out::CallOut;
use super::timer::DeadlineTimer;
use super::{Exchange, Instance, Transport};
use crate::abi::{WeftPhase, WeftResult};
use crate::completion::Cancel;
use crate::mutation;
use crate::pending::{Done, InFlight, Orphan};
use crate::sync::stat::Ordering;
use crate::view;

/// A call the host waits for.
pub(super) struct Waiting {
    pub(super) slot: u32,
    pub(super) seq: u32,
    /// Offset of the output location in the view's slot (the job contract, and the inline
    /// `out` unless the call has its own out buffer).
    pub(super) out_off: usize,
    /// A worker job: the records are in the view's slot even for a body call.
    pub(super) job: bool,
    pub(super) deadline: Instant,
    pub(super) in_flight: InFlight,
}

/// How [`Exchange::abandon`] ended.
pub(super) enum Abandoned {
    /// The completion had arrived after all: finish the call normally.
    Arrived(Waiting, Done),
    /// Cancelled; the slot is the plugin's until it completes (or was returned to us if it had
    /// just finished). `self.lease` is a slot to go on with, or `None`.
    Cancelled,
}

impl Exchange {
    /// The completion of a waiting call arrived: decodes its records from the output location.
    pub(super) fn finish_waiting(
        &mut self,
        w: Waiting,
        done: Done,
        phase: WeftPhase,
    ) -> Result<mutation::Batch, CallError> {
        let Waiting {
            out_off,
            job,
            in_flight,
            ..
        } = w;
        drop(in_flight);
        self.chain.rt.stats.pending_calls.fetch_sub(1, Ordering::Relaxed);
        let rc = WeftResult::from_raw(done.rc);
        if rc != WeftResult::Ok {
            return Err(CallError::Code(rc));
        }
        // `complete` checked out_len against the capacity of the output location.
        let len = done.out_len as usize;
        // A job was given the out buffer's slot unless that buffer is on the heap.
        let in_slot = job && self.bufs.out.as_ref().is_some_and(|o| o.lease_unit().is_none());
        self.take_batch(len, out_off, in_slot, phase)
    }

    /// Gives up on a waiting call (its deadline passed, or its future was dropped). If the
    /// plugin still holds the call, the slot's lease (and a body call's out buffer) moves into
    /// the completion cell and goes back to the arena only when the late completion arrives. With
    /// `replace`, the view is first copied into a freshly leased slot so the exchange can go on
    /// there: the view's `slot` and `generation` change, so plugins' per-request state restarts.
    pub(super) fn abandon(&mut self, inst: &Instance, w: Waiting, replace: bool) -> Abandoned {
        let rt = Arc::clone(&self.chain.rt);
        let cell = rt.calls.cell(w.slot);
        if let Some(done) = cell.try_take(w.seq) {
            return Abandoned::Arrived(w, done);
        }
        let Waiting {
            slot, seq, in_flight, ..
        } = w;
        rt.stats.pending_calls.fetch_sub(1, Ordering::Relaxed);
        let old = self.lease.take().expect("a waiting call keeps its slot");
        let fresh = if replace {
            let fresh = rt.arena.acquire().map(|mut fresh| {
                // SAFETY: two distinct slots of one arena. The plugin only reads the view part
                // of the old slot (it writes its output area after view_end), so copying it is a
                // concurrent read; the fresh slot is exclusively ours.
                unsafe { std::ptr::copy_nonoverlapping(old.raw_ptr(), fresh.raw_ptr(), self.view_end as usize) };
                let (index, generation) = (fresh.index(), fresh.generation());
                view::set_identity(fresh.bytes_mut(), index, generation);
                fresh
            });
            if fresh.is_none() {
                rt.stats.arena_exhausted.fetch_add(1, Ordering::Relaxed);
            }
            fresh
        } else {
            None
        };
        // Counted before the cell can hand the orphan to a completer (which uncounts it).
        rt.stats.orphaned_slots.fetch_add(1, Ordering::Relaxed);
        let orphan = Orphan {
            lease: Some(old),
            // The call's own out buffer and the input its view points at stay with the plugin.
            keep: match (self.bufs.out.take(), self.bufs.input.take()) {
                (None, None) => None,
                kept => Some(Box::new(kept) as Box<dyn std::any::Any + Send>),
            },
            _in_flight: Some(in_flight),
            stats: Arc::clone(&rt.stats),
        };
        match cell.cancel(seq, orphan) {
            Cancel::Orphaned => {
                tell_cancelled(inst, slot, seq);
                if let Some(f) = fresh {
                    self.ident.slot = f.index();
                    self.ident.generation = f.generation();
                    self.lease = Some(f);
                }
            }
            Cancel::Kept(mut orphan) => {
                // The plugin finished just now (its result is discarded): the slot is ours again.
                rt.stats.orphaned_slots.fetch_sub(1, Ordering::Relaxed);
                self.lease = orphan.lease.take();
                if let Some(keep) = orphan.keep.take() {
                    if let Ok(kept) = keep.downcast::<(Option<CallOut>, Option<Bytes>)>() {
                        (self.bufs.out, self.bufs.input) = *kept;
                    }
                }
                drop(fresh);
            }
        }
        Abandoned::Cancelled
    }

    /// A waiting call missed its deadline: cancel it and say what the policy needs.
    pub(super) fn timed_out(
        &mut self,
        inst: &Instance,
        phase: WeftPhase,
        w: Waiting,
    ) -> Result<mutation::Batch, CallError> {
        // Going on (fail open), or the log phase of the failure answer, needs the view in a slot.
        let replace = inst.fail_open || self.chain.phases & WeftPhase::Log.mask() != 0;
        match self.abandon(inst, w, replace) {
            Abandoned::Arrived(w, done) => return self.finish_waiting(w, done, phase),
            Abandoned::Cancelled => {}
        }
        self.chain.rt.stats.phase_timeouts.fetch_add(1, Ordering::Relaxed);
        if self.lease.is_none() && inst.fail_open {
            return Err(CallError::NoSlot);
        }
        Err(CallError::Timeout(inst.limits.deadline))
    }
}

/// Tells an in-process plugin that the host stopped waiting for its call (the library's
/// optional `cancel`), after the call's cell was cancelled, so a `complete` racing with it, or
/// made from inside it, is answered `WEFT_RESULT_CANCELLED`.
fn tell_cancelled(inst: &Instance, slot: u32, call: u32) {
    if let Transport::Ffi(lib) = &inst.transport {
        if let Some(cancel) = lib.cancel {
            // SAFETY: the library's function, called as weft.h's WeftCancelFn describes: plain
            // integers, on a host thread, once for this call.
            unsafe { cancel(inst.id, slot, call) };
        }
    }
}

/// Awaits a waiting call: its completion, or its deadline. Dropped before either (the request's
/// future was dropped: client gone), it cancels the call ([`Exchange::abandon`]).
pub(super) struct WaitCall<'a> {
    x: &'a mut Exchange,
    inst: &'a Instance,
    phase: WeftPhase,
    w: Option<Waiting>,
    timer: Option<DeadlineTimer>,
}

impl<'a> WaitCall<'a> {
    pub(super) fn new(x: &'a mut Exchange, inst: &'a Instance, phase: WeftPhase, w: Waiting) -> WaitCall<'a> {
        WaitCall {
            x,
            inst,
            phase,
            w: Some(w),
            timer: None,
        }
    }
}

impl Future for WaitCall<'_> {
    type Output = Result<mutation::Batch, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let w = this.w.as_ref().expect("WaitCall polled after it finished");
        let (slot, seq, deadline) = (w.slot, w.seq, w.deadline);
        if let Poll::Ready(done) = this.x.chain.rt.calls.cell(slot).poll(seq, cx) {
            let w = this.w.take().expect("checked above");
            return Poll::Ready(this.x.finish_waiting(w, done, this.phase));
        }
        let timer = this
            .timer
            .get_or_insert_with(|| DeadlineTimer::new(deadline, cx.waker()));
        if timer.poll(cx) || Instant::now() >= deadline {
            let w = this.w.take().expect("checked above");
            return Poll::Ready(this.x.timed_out(this.inst, this.phase, w));
        }
        Poll::Pending
    }
}

impl Drop for WaitCall<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.w.take() {
            // Nobody waits for the result any more: no slot is needed to go on.
            if let Abandoned::Arrived(w, done) = self.x.abandon(self.inst, w, false) {
                let _ = self.x.finish_waiting(w, done, self.phase);
            }
            // The caller's future is dropped with this one, so it will not release the call's
            // out buffer and input. The plugin is done with them here: the call finished (or
            // finished while being cancelled), or, still held, it took them into its cell.
            self.x.bufs.out = None;
            self.x.bufs.input = None;
        }
    }
}
