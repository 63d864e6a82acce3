//! The log phase: after the response, on the thread that ends the exchange or on the runtime's
//! log thread (`log_queue.rs`, which runs many finished exchanges at once), as
//! [`LogPlace`](crate::LogPlace) says. A log call that goes pending (or to a worker) parks its
//! job, not the thread ([`LogJob::step`]): on the log thread, where an inline job that stops at
//! such a call goes on.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::Exchange;
use super::call::Started;
use super::wait::{Abandoned, Waiting};
use crate::abi::WeftPhase;
use crate::completion::CellState;
use crate::sync::stat::Ordering;
use crate::view;

impl Exchange {
    /// Runs the log calls of instances `*next..` (chain positions) on this thread; stops at a
    /// call that went pending or to a worker, returning it (`*next` then points past it), with
    /// `cx`'s waker registered for its completion ([`LogJob::step`]). `inline` (a thread other
    /// than the log thread): stops before a blocking instance's log call (`*next` then points
    /// at it), which the log thread posts to its own worker ring, so the log calls take no room
    /// in this thread's rings from its requests' calls.
    fn run_log_from(&mut self, next: &mut usize, inline: bool, cx: &mut Context<'_>) -> Option<(Waiting, usize)> {
        const PHASE: WeftPhase = WeftPhase::Log;
        let instances = Arc::clone(&self.chain.instances);
        while let Some(inst) = instances.get(*next) {
            let pos = *next;
            if inst.phases & PHASE.mask() == 0 {
                *next += 1;
                continue;
            }
            if inline && inst.limits.blocking {
                return None;
            }
            *next += 1;
            if self.lease.is_none() {
                // A log call timed out and no slot was free for the rest.
                self.chain.rt.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
                *next = instances.len();
                return None;
            }
            if let Some(plugin) = inst.remote() {
                // Fire and forget: the transport publishes without blocking this thread.
                let (view_end, request_id) = (self.view_end as usize, self.ident.request_id);
                plugin.log(request_id, &self.lease().bytes_mut()[..view_end]);
                continue;
            }
            // decode() rejects every mutation record in the log phase, so a batch is empty.
            let result = match self.start_ffi(inst, PHASE) {
                Started::Done(r) => r,
                Started::Waiting(w) => match self.chain.rt.calls.cell(w.slot).poll(w.seq, cx) {
                    Poll::Ready(done) => self.finish_waiting(w, done, PHASE),
                    Poll::Pending => return Some((w, pos)),
                },
            };
            if let Err(err) = result {
                self.note_failure(inst, PHASE, &err);
            }
        }
        None
    }
}

/// A finished exchange on its way through the log phase. The log thread runs many at once: a
/// log call that goes pending (or to a worker) parks its job, not the thread ([`LogJob::step`]).
/// Run inline first ([`LogJob::step_inline`]), a job that stops at such a call goes on on the
/// log thread.
pub(crate) struct LogJob {
    /// Boxed: the job moves through the log queue and each step by value, and an exchange is a
    /// few hundred bytes: inline, its moves were ~460 instructions of `memcpy` a request, boxed
    /// 439 fewer in all (`scripts/callgrind-proxy`, C row: the allocation costs the rest).
    x: Box<Exchange>,
    /// Chain position of the next instance to log.
    next: usize,
    started: bool,
    /// The pending call this job waits for, and its instance's position.
    wait: Option<(Waiting, usize)>,
}

impl LogJob {
    pub(super) fn new(x: Box<Exchange>) -> LogJob {
        LogJob {
            x,
            next: 0,
            started: false,
            wait: None,
        }
    }

    /// Runs the log phase on this thread (not the log thread) as far as it goes without
    /// waiting: `None` when it is done and the slot released, else the job to hand to the log
    /// thread, stopped at a call that went pending or to a worker, or before a blocking
    /// instance's call. The pending call's completion is polled with a no-op waker: the log
    /// thread's first step of the job polls it again with its own.
    pub(crate) fn step_inline(self) -> Option<LogJob> {
        self.advance(&mut Context::from_waker(Waker::noop()), true)
    }

    /// Goes on with the log phase: `Some(self)` while a call is pending (`cx`'s waker fires when
    /// it completes; [`deadline`](Self::deadline) says when to look again at the latest), `None`
    /// when every log call is done and the slot is released.
    pub(crate) fn step(self, cx: &mut Context<'_>) -> Option<LogJob> {
        self.advance(cx, false)
    }

    /// [`step`](Self::step), on the log thread or (`inline`) the thread that ended the exchange.
    fn advance(mut self, cx: &mut Context<'_>, inline: bool) -> Option<LogJob> {
        const PHASE: WeftPhase = WeftPhase::Log;
        if let Some((w, pos)) = self.wait.take() {
            let inst = Arc::clone(&self.x.chain.instances[pos]);
            let result = match self.x.chain.rt.calls.cell(w.slot).poll(w.seq, cx) {
                Poll::Ready(done) => self.x.finish_waiting(w, done, PHASE),
                Poll::Pending if Instant::now() >= w.deadline => self.x.timed_out(&inst, PHASE, w),
                Poll::Pending => {
                    self.wait = Some((w, pos));
                    return Some(self);
                }
            };
            if let Err(err) = result {
                self.x.note_failure(&inst, PHASE, &err);
            }
        } else if !self.started {
            self.started = true;
            if self.x.request_end == 0 || self.x.lease.is_none() {
                self.discard();
                return None;
            }
            view::set_phase(self.x.lease().bytes_mut(), PHASE as u32);
        }
        if let Some(w) = self.x.run_log_from(&mut self.next, inline, cx) {
            self.wait = Some(w);
            return Some(self);
        }
        if self.next < self.x.chain.instances.len() {
            // Stopped inline before a blocking instance's call: the log thread goes on.
            return Some(self);
        }
        self.discard();
        None
    }

    /// Whether the call this job waits for has completed.
    pub(crate) fn is_ready(&self) -> bool {
        self.wait
            .as_ref()
            .is_some_and(|(w, _)| self.x.chain.rt.calls.cell(w.slot).peek() == (w.seq, CellState::Completed))
    }

    /// The deadline of the call this job waits for.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.wait.as_ref().map(|(w, _)| w.deadline)
    }

    /// Drops the job without queueing it again; the slot goes back to the arena.
    pub(crate) fn discard(mut self) {
        self.x.request_end = 0;
    }
}

impl Drop for LogJob {
    fn drop(&mut self) {
        if let Some((w, pos)) = self.wait.take() {
            // Dropped while a plugin holds a log call: the slot stays with the plugin.
            let inst = Arc::clone(&self.x.chain.instances[pos]);
            if let Abandoned::Arrived(w, done) = self.x.abandon(&inst, w, false) {
                let _ = self.x.finish_waiting(w, done, WeftPhase::Log);
            }
        }
        self.x.request_end = 0;
    }
}
