//! Log phases on the serving thread, with no hand-off per request.
//!
//! An exchange whose chain has a log phase used to go to the `weft-log` thread when it was
//! dropped: one channel send and, on an idle log thread, one futex wake per request. Inside a
//! [`LogScope`] the finished exchange is queued on the dropping thread instead, and the scope
//! runs the queue when it closes: a server opens one around each poll of a connection task
//! ([`in_scope`]), so the log phase runs on the same thread right after the poll in which the
//! response finished (hyper has written it to the socket by then), and the client never waits
//! for it.
//!
//! The `weft-log` thread stays the fallback: outside a scope, when a scope's queue is full, when
//! a log call answers Pending or goes to a worker ring (the job parks there, not on the serving
//! thread), and while a panic unwinds.

use std::cell::RefCell;
use std::future::Future;
use std::task::{Context, Waker};

use crate::engine::LogJob;

/// Log jobs a scope holds at most; more go to the `weft-log` thread. One poll of a connection
/// finishes a handful of requests (HTTP/2 streams, pipelined HTTP/1.1), so this is rarely hit.
pub const SCOPE_QUEUE: usize = 64;

#[derive(Default)]
struct Local {
    /// Open scopes on this thread (nested scopes run the queue when the outermost closes).
    depth: u32,
    queue: Vec<LogJob>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// While alive, exchanges dropped on this thread queue their log phase here; dropping the
/// outermost scope runs them. Not `Send`: it belongs to the thread that opened it.
pub struct LogScope {
    _thread: std::marker::PhantomData<*const ()>,
}

impl LogScope {
    /// Opens a scope on this thread.
    pub fn enter() -> LogScope {
        LOCAL.with(|l| l.borrow_mut().depth += 1);
        LogScope {
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for LogScope {
    fn drop(&mut self) {
        let outermost = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            l.depth -= 1;
            l.depth == 0
        });
        if outermost {
            run_queued();
        }
    }
}

/// `fut`, polled inside a [`LogScope`]: the log phases of requests that finish during a poll
/// run on this thread when that poll returns.
pub fn in_scope<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(move |cx| {
        let _scope = LogScope::enter();
        fut.as_mut().poll(cx)
    })
}

/// Queues `job` in this thread's open scope; gives it back when there is none or it is full.
pub(crate) fn defer(job: LogJob) -> Result<(), LogJob> {
    LOCAL.with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else {
            return Err(job);
        };
        if l.depth == 0 || l.queue.len() >= SCOPE_QUEUE {
            return Err(job);
        }
        l.queue.push(job);
        Ok(())
    })
}

/// Runs the queued log jobs. A job whose call goes pending (or to a worker ring) continues on
/// the `weft-log` thread, which registers its own waker; so does every job while a panic
/// unwinds. A job run here may queue nothing new (no scope is open while it runs), so the loop
/// ends.
fn run_queued() {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let jobs = LOCAL.with(|l| std::mem::take(&mut l.borrow_mut().queue));
        if jobs.is_empty() {
            return;
        }
        for job in jobs {
            if std::thread::panicking() {
                job.to_log_thread();
                continue;
            }
            if let Some(parked) = job.step(&mut cx) {
                parked.to_log_thread();
            }
        }
    }
}

/// Jobs queued on this thread right now (tests).
#[doc(hidden)]
pub fn queued() -> usize {
    LOCAL.with(|l| l.borrow().queue.len())
}

#[allow(dead_code)]
fn scope_future_is_send<F: Future + Send>(f: F) {
    fn send<T: Send>(_: T) {}
    send(in_scope(f));
}
