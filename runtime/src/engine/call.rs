//! Calling one instance for one phase over the view already in the slot, and decoding what it
//! wrote into a validated [`mutation::Batch`]. An in-process call is made inline; it is awaited
//! (`wait.rs`) only when the plugin answers `Pending` or the instance is blocking (a worker job).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failure::CallError;
use super::wait::{WaitCall, Waiting};
use super::{Exchange, Instance, Transport};
use crate::abi::{WeftBuf, WeftJob, WeftPhase, WeftRequestView, WeftResult};
use crate::completion::CellState;
use crate::mutation;
use crate::pending::InFlight;
use crate::plugin::Library;
use crate::remote::RemoteInstance;
use crate::sync::stat::Ordering;
use crate::view;
use crate::workers::PostError;

/// What starting an in-process call gave.
pub(super) enum Started {
    /// Answered inline (or refused before the plugin was called).
    Done(Result<mutation::Batch, CallError>),
    /// Pending, or posted to a worker: awaited through the slot's completion cell.
    Waiting(Waiting),
}

/// An in-process call opened on its slot's completion cell, about to be made.
struct OpenCall {
    slot: u32,
    generation: u32,
    /// Start of the view's slot.
    base: *mut u8,
    /// The call's number in the slot's completion cell (also in the view's `call` field).
    seq: u32,
    out: OutLocation,
}

/// Where an in-process call writes its records.
struct OutLocation {
    /// The plugin's `out`: after the view in the slot, or the call's own out buffer.
    buf: WeftBuf,
    /// The first 8-aligned offset after the view in the slot (the job contract's default).
    after_view: usize,
    /// A worker job's output location: an arena unit (a slot-sized unit of the arena) and the
    /// offset in it.
    job_unit: u32,
    job_off: usize,
}

/// The call, gone pending (or to a worker as a `job`), as the host waits for it.
fn waiting(call: &OpenCall, job: bool, inst: &Instance, in_flight: InFlight) -> Waiting {
    Waiting {
        slot: call.slot,
        seq: call.seq,
        out_off: call.out.after_view,
        job,
        deadline: Instant::now() + inst.limits.deadline,
        in_flight,
    }
}

/// A call as [`Exchange::begin_call`] left it.
pub(super) enum Begun {
    /// Answered inline (or refused before the plugin was called): the common case.
    Done(Result<mutation::Batch, CallError>),
    /// Pending, posted to a worker or remote: [`Exchange::finish_call`] awaits it.
    Later(Later),
}

/// A call that [`Exchange::finish_call`] has to await.
pub(super) struct Later {
    waiting: Option<Waiting>,
    t0: Option<quanta::Instant>,
    head_out: bool,
}

impl Exchange {
    /// Calls one instance: [`begin_call`](Self::begin_call), then, only when it did not answer
    /// inline, [`finish_call`](Self::finish_call) (boxed: the rare waiting states stay out of
    /// every phase future, which is moved whole on each call).
    pub(super) async fn call(&mut self, inst: &Instance, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        match self.begin_call(inst, phase) {
            Begun::Done(r) => r,
            Begun::Later(later) => Box::pin(self.finish_call(inst, phase, later)).await,
        }
    }

    /// Makes an in-process call inline and returns its answer, or what is left to await: an
    /// answer of `Pending`, a worker job, a remote call. A plain function, so the answer of the
    /// common case comes back in place rather than through a future's state (each move of a
    /// batch out of a nested future was a `memcpy` call on the hot path).
    #[inline]
    pub(super) fn begin_call(&mut self, inst: &Instance, phase: WeftPhase) -> Begun {
        if let Transport::Remote(..) = &inst.transport {
            return Begun::Later(Later {
                waiting: None,
                t0: None,
                head_out: false,
            });
        }
        let t0 = inst.timer.is_some().then(quanta::Instant::now);
        let head_out = self.lease_head_out(phase);
        match self.start_ffi(inst, phase) {
            Started::Done(r) => Begun::Done(self.end_call(inst, phase, r, t0, head_out)),
            Started::Waiting(w) => Begun::Later(Later {
                waiting: Some(w),
                t0,
                head_out,
            }),
        }
    }

    /// Awaits a call [`begin_call`](Self::begin_call) did not finish.
    pub(super) async fn finish_call(
        &mut self,
        inst: &Instance,
        phase: WeftPhase,
        later: Later,
    ) -> Result<mutation::Batch, CallError> {
        let Some(w) = later.waiting else {
            let Transport::Remote(plugin, deadline) = &inst.transport else {
                unreachable!("a call without a waiting state is remote")
            };
            return self.call_remote(&**plugin, phase, *deadline).await;
        };
        let r = WaitCall::new(self, inst, phase, w).await;
        self.end_call(inst, phase, r, later.t0, later.head_out)
    }

    /// After an in-process call's answer: its out buffer goes and its time is recorded.
    #[inline]
    fn end_call(
        &mut self,
        inst: &Instance,
        phase: WeftPhase,
        r: Result<mutation::Batch, CallError>,
        t0: Option<quanta::Instant>,
        head_out: bool,
    ) -> Result<mutation::Batch, CallError> {
        if head_out {
            // Back to the arena, or (frozen) owned by the batch's slices.
            self.bufs.out = None;
        }
        inst.record_time(phase, t0);
        r
    }

    async fn call_remote(
        &mut self,
        plugin: &dyn RemoteInstance,
        phase: WeftPhase,
        deadline: Duration,
    ) -> Result<mutation::Batch, CallError> {
        let view_end = self.view_end as usize;
        let request_id = self.ident.request_id;
        let Some(lease) = self.lease.as_mut() else {
            return Err(CallError::NoSlot);
        };
        let view: &[u8] = &lease.bytes_mut()[..view_end];
        let bytes = plugin
            .call(phase, request_id, view, deadline)
            .await
            .map_err(CallError::Remote)?;
        // The reply's bytes are already shared: a local reply body becomes a slice of the
        // received message.
        let raw = mutation::decode_raw(&bytes, bytes.len(), phase).map_err(CallError::Mutation)?;
        let n = raw.referenced_len() as u64;
        self.chain.rt.stats.output_bytes_shared.fetch_add(n, Ordering::Relaxed);
        Ok(raw.resolve(mutation::Source::Shared(&bytes)))
    }

    /// Starts a call of in-process instance `inst`: checks its in-flight limit, opens a call on
    /// the slot's completion cell and writes its number into the view, then calls the plugin
    /// inline, or posts a job to the worker ring if the instance is blocking.
    pub(super) fn start_ffi(&mut self, inst: &Instance, phase: WeftPhase) -> Started {
        let Transport::Ffi(lib) = &inst.transport else {
            unreachable!("start_ffi() is only used for in-process instances")
        };
        let Some(out) = self.out_location(inst.limits.blocking) else {
            return Started::Done(Err(CallError::NoSlot));
        };
        let in_flight = match self.admit(inst) {
            Ok(in_flight) => in_flight,
            Err(e) => return Started::Done(Err(e)),
        };
        let call = match self.open_call(inst, out) {
            Ok(call) => call,
            Err(e) => return Started::Done(Err(e)),
        };
        match in_flight {
            Some(in_flight) => self.post_job(lib, inst, phase, call, in_flight),
            None => self.call_inline(lib, inst, phase, call),
        }
    }

    /// Where the call writes: its own out buffer if it has one (a body call, or a headers call
    /// with an out slot, see `out.rs`), so its bytes reach hyper without a copy; else after the
    /// view in the slot. A worker job can be told a slot-sized unit of the arena only: with a
    /// heap or buffer-class out buffer it writes after the view and the host copies. `None`:
    /// a cancelled call kept the slot.
    #[inline]
    fn out_location(&mut self, job: bool) -> Option<OutLocation> {
        let lease = self.lease.as_mut()?;
        let (slot, base) = (lease.index(), lease.raw_ptr());
        let after_view = (self.view_end as usize).next_multiple_of(8);
        debug_assert_eq!(
            // SAFETY: a whole view sits at the start of the slot.
            unsafe { base.cast::<WeftRequestView>().read_unaligned().size } as usize,
            self.view_end as usize,
            "the output location is the first 8-aligned offset after view.size"
        );
        let mut loc = OutLocation {
            // SAFETY: after_view <= slot size (the view fit, and the slot size is a multiple of 64).
            buf: WeftBuf {
                ptr: unsafe { base.add(after_view) },
                cap: lease.slot_size().saturating_sub(after_view) as u32,
                len: 0,
            },
            after_view,
            job_unit: slot,
            job_off: after_view,
        };
        if let Some(own) = self.bufs.out.as_mut() {
            let unit = own.lease_unit();
            if !job || unit.is_some() {
                let b = own.bytes_mut();
                loc.buf = WeftBuf {
                    ptr: b.as_mut_ptr(),
                    cap: b.len() as u32,
                    len: 0,
                };
                if let Some(unit) = unit {
                    (loc.job_unit, loc.job_off) = (unit, 0);
                }
            }
        }
        Some(loc)
    }

    /// Checks the instance's in-flight limit. A worker job counts before it is posted (the
    /// returned unit); an inline call only once it answered Pending (the fast path touches no
    /// shared counter), so the limit may be overshot by the calls entering on other threads at
    /// the same moment.
    #[inline]
    fn admit(&self, inst: &Instance) -> Result<Option<InFlight>, CallError> {
        let limits = &inst.limits;
        let max = limits.max_in_flight;
        if limits.blocking {
            if let Some(unit) = InFlight::try_enter(&limits.load, max) {
                return Ok(Some(unit));
            }
        } else if limits.load.in_flight.load(Ordering::Relaxed) < max {
            return Ok(None);
        }
        Err(self.busy(inst, format!("in-flight limit of {max} calls reached")))
    }

    /// A call refused without calling the plugin (counted).
    fn busy(&self, inst: &Instance, why: String) -> CallError {
        self.chain.rt.stats.busy_rejections.fetch_add(1, Ordering::Relaxed);
        CallError::Busy {
            retry_after: inst.limits.retry_after,
            why,
        }
    }

    /// Opens the call on the slot's completion cell and writes its number into the view.
    #[inline]
    fn open_call(&mut self, inst: &Instance, out: OutLocation) -> Result<OpenCall, CallError> {
        let lease = self.lease.as_mut().ok_or(CallError::NoSlot)?;
        let (slot, generation, base) = (lease.index(), lease.generation(), lease.raw_ptr());
        let Some(seq) = self.chain.rt.calls.begin(slot, inst.id, out.buf.cap) else {
            tracing::error!(plugin = %inst.name, slot, "completion cell of a leased slot is not idle");
            return Err(CallError::Code(WeftResult::Internal));
        };
        // SAFETY: the view at `base` is this exchange's, and no call is outstanding on it.
        unsafe { view::set_call_raw(base, seq) };
        Ok(OpenCall {
            slot,
            generation,
            base,
            seq,
            out,
        })
    }

    /// Posts the call to the library's worker ring (a blocking instance).
    fn post_job(
        &mut self,
        lib: &Arc<Library>,
        inst: &Instance,
        phase: WeftPhase,
        call: OpenCall,
        in_flight: InFlight,
    ) -> Started {
        let rt = &*self.chain.rt;
        let cell = rt.calls.cell(call.slot);
        let job = WeftJob {
            slot: call.slot,
            generation: call.generation,
            instance: inst.id,
            phase: phase as u32,
            call: call.seq,
            out_slot: call.out.job_unit,
            out_off: call.out.job_off as u32,
        };
        if let Err(e) = rt.workers.post(lib, rt.ring_arena(), job) {
            // Never posted: no completer can exist, the cell is ours to reset.
            cell.finish_inline(call.seq);
            return Started::Done(Err(match e {
                PostError::Full => self.busy(inst, "worker ring full".into()),
                PostError::NoWorker(why) => CallError::NoWorker(why),
            }));
        }
        rt.stats.worker_jobs.fetch_add(1, Ordering::Relaxed);
        cell.mark_pending(call.seq);
        rt.stats.pending_calls.fetch_add(1, Ordering::Relaxed);
        Started::Waiting(waiting(&call, true, inst, in_flight))
    }

    /// Calls the plugin on this thread; a `Pending` answer becomes a waiting call.
    #[inline]
    fn call_inline(&mut self, lib: &Library, inst: &Instance, phase: WeftPhase, mut call: OpenCall) -> Started {
        let rt = &*self.chain.rt;
        // SAFETY: the view is a complete WeftRequestView in host memory valid for the call (and,
        // if it goes pending, until it completes), and `out` points to `cap` writable bytes after
        // the view in the same slot, or in the call's own out buffer.
        // The watchdog sees the call while it runs (a few stores; see watchdog.rs).
        let rc = crate::watchdog::watched(inst.id, phase, || unsafe {
            (lib.on_phase)(
                inst.id,
                phase as u32,
                call.base.cast::<WeftRequestView>(),
                &mut call.out.buf,
            )
        });
        let cell = rt.calls.cell(call.slot);
        if rc == WeftResult::Pending as u32 {
            // A completion that already arrived (from the calling thread's helper, say) is left
            // for the wait to find.
            cell.mark_pending(call.seq);
            rt.stats.pending_calls.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight::enter(&inst.limits.load);
            return Started::Waiting(waiting(&call, false, inst, in_flight));
        }
        if !cell.finish_inline(call.seq) {
            // The plugin answered inline and also completed the call: the inline answer wins. A
            // completer may still be writing its result; wait for it (a few instructions).
            tracing::warn!(plugin = %inst.name, "plugin answered a phase call inline and also completed it; the completion is ignored");
            while cell.try_take(call.seq).is_none() && cell.peek() != (call.seq, CellState::Idle) {
                std::hint::spin_loop();
            }
        }
        let rc = WeftResult::from_raw(rc);
        if rc != WeftResult::Ok {
            return Started::Done(Err(CallError::Code(rc)));
        }
        Started::Done(self.take_batch(call.out.buf.len as usize, call.out.after_view, false, phase))
    }

    /// Decodes the records a finished call wrote (`len` bytes) and resolves the bytes they refer
    /// to. Header values, paths and everything else a record carries are copied and checked by
    /// the decoder (a plugin may still write its buffer). With an out buffer of its own (a lease,
    /// or a body call's heap buffer), a local reply body becomes a slice of that buffer, frozen
    /// for the purpose (no copy; body replacements likewise, in `body.rs`); records written after
    /// the view in the request's slot (`out_off`) are copied out, since the next phase writes
    /// there again. `in_slot`: a worker job that was given the slot while the call's out buffer
    /// is on the heap; its records are copied over.
    pub(super) fn take_batch(
        &mut self,
        len: usize,
        out_off: usize,
        in_slot: bool,
        phase: WeftPhase,
    ) -> Result<mutation::Batch, CallError> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(CallError::NoSlot);
        };
        if len == 0 {
            // Nothing written (a phase that passes, every log call): the empty batch, without
            // the decoder's and the resolver's set-up.
            return Ok(mutation::Batch::default());
        }
        let raw = match self.bufs.out.as_mut() {
            Some(out) if in_slot => {
                let dst = out.bytes_mut();
                if len > dst.len() {
                    return Err(CallError::Code(WeftResult::MutationOverflow));
                }
                dst[..len].copy_from_slice(&lease.bytes_mut()[out_off..out_off + len]);
                mutation::decode_raw(dst, len, phase)
            }
            Some(out) => mutation::decode_raw(out.bytes_mut(), len, phase),
            None => mutation::decode_raw(&lease.bytes_mut()[out_off..], len, phase),
        }
        .map_err(CallError::Mutation)?;
        let n = raw.referenced_len() as u64;
        if n == 0 {
            return Ok(raw.resolve(mutation::Source::Copy(&[])));
        }
        let stats = &self.chain.rt.stats;
        Ok(match self.bufs.out.as_mut() {
            Some(out) => {
                stats.output_bytes_shared.fetch_add(n, Ordering::Relaxed);
                raw.resolve(mutation::Source::Shared(&out.freeze()))
            }
            None => {
                stats.output_bytes_copied.fetch_add(n, Ordering::Relaxed);
                raw.resolve(mutation::Source::Copy(&lease.bytes_mut()[out_off..]))
            }
        })
    }
}
