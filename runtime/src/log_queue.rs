//! The log queue: finished requests on their way to the `weft-log` thread, handed over in
//! batches so that no request wakes a thread.
//!
//! A request's log phase runs after its response, on the `weft-log` thread, so that a slow log
//! plugin never holds a client or a serving thread. Handing each request over through a channel
//! the log thread blocks on cost one futex wake per request (the log thread took an eighth of the
//! proxy's CPU samples under load, parking and unparking). Here the serving thread only pushes
//! onto a bounded queue; the log thread is not blocked on it:
//!
//! - **Busy** (a job came in the last [`IDLE_AFTER`]): the log thread drains the queue, then
//!   sleeps [`BATCH_PERIOD`] and looks again. Nobody wakes it; it wakes at most
//!   `1 / BATCH_PERIOD` times a second, whatever the request rate, and a log phase starts at most
//!   one period after its response.
//! - **Idle**: it announces that it is parked ([`LogQueue::submit`] then unparks it once) and
//!   sleeps until then, or until the deadline of a log call it waits for. So an idle proxy's log
//!   thread does not tick, and the first request after a pause is logged at once.
//!
//! The hand-over ([`Handoff`]) is the classic "parked flag" protocol: the log thread stores `parked` and then
//! looks at the queue; a producer pushes and then looks at `parked`; a `SeqCst` fence on each side
//! means at least one of them sees the other's write, and `unpark` before `park` is not lost
//! (the thread's park token). The loom models below (`loom_models`) check it.

use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::Runtime;
use crate::engine::LogJob;
use crate::sync::stat::{AtomicBool, Ordering};

/// How long the log thread sleeps between looks while requests keep coming.
pub const BATCH_PERIOD: Duration = Duration::from_millis(2);
/// Without a job for this long the log thread parks until a producer wakes it.
pub const IDLE_AFTER: Duration = Duration::from_millis(50);

/// The "parked flag" hand-over between producers and one consumer that does not block on the
/// queue (checked by the loom models below).
#[derive(Debug, Default)]
pub struct Handoff {
    parked: crate::sync::AtomicBool,
}

impl Handoff {
    pub fn new() -> Handoff {
        Handoff::default()
    }

    /// Producer, after pushing: whether it must unpark the consumer (at most one producer is
    /// told so per park).
    pub fn after_push(&self) -> bool {
        use crate::sync::Ordering;
        crate::sync::fence(Ordering::SeqCst);
        self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel)
    }

    /// Consumer, before parking: announces it, then asks `has_work` once more. `true`: park (a
    /// producer that pushes from now on unparks it); `false`: work came in, do not park.
    pub fn before_park(&self, has_work: impl FnOnce() -> bool) -> bool {
        use crate::sync::Ordering;
        self.parked.store(true, Ordering::SeqCst);
        crate::sync::fence(Ordering::SeqCst);
        if has_work() {
            self.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Consumer, after waking up.
    pub fn after_park(&self) {
        self.parked.store(false, crate::sync::Ordering::SeqCst);
    }
}

/// What the producers and the log thread share besides the queue.
struct Shared {
    handoff: Handoff,
    /// A log call the thread waits for completed (the waker fired).
    woken: AtomicBool,
    /// The runtime is gone: the thread exits (no job can be left, as jobs hold the runtime).
    closed: AtomicBool,
    thread: std::sync::OnceLock<Thread>,
}

impl Shared {
    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Completion of a pending log call: flag it and wake the log thread.
struct Token(Arc<Shared>);

impl Wake for Token {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.woken.store(true, Ordering::SeqCst);
        self.0.unpark();
    }
}

/// The producer side, held by the [`Runtime`].
pub(crate) struct LogQueue {
    tx: Sender<LogJob>,
    wake: Arc<Shared>,
}

impl LogQueue {
    /// Starts the `weft-log` thread for the runtime `weak` points to, with a queue of `len`.
    pub(crate) fn start(len: usize, weak: std::sync::Weak<Runtime>) -> LogQueue {
        let (tx, rx) = crossbeam_channel::bounded::<LogJob>(len);
        let wake = Arc::new(Shared {
            handoff: Handoff::new(),
            woken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        });
        let shared = Arc::clone(&wake);
        let handle = std::thread::Builder::new()
            .name("weft-log".into())
            .spawn(move || log_thread(rx, shared, weak))
            .expect("spawn weft-log thread");
        let _ = wake.thread.set(handle.thread().clone());
        LogQueue { tx, wake }
    }

    /// Queues `job`; gives it back when the queue is full.
    pub(crate) fn submit(&self, job: LogJob) -> Result<(), LogJob> {
        self.tx.try_send(job).map_err(TrySendError::into_inner)?;
        if self.wake.handoff.after_push() {
            self.wake.unpark();
        }
        Ok(())
    }

    /// Jobs waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        self.tx.len()
    }
}

impl Drop for LogQueue {
    fn drop(&mut self) {
        // The runtime is going away: let the log thread see it and exit.
        self.wake.closed.store(true, Ordering::SeqCst);
        self.wake.unpark();
    }
}

/// The `weft-log` thread: runs queued log phases. A log call that answers Pending (or goes to a
/// worker ring) parks its job, not the thread: the thread takes the next job meanwhile, and a
/// completion (the waker) or a deadline resumes the parked ones. Exits when the runtime is gone
/// (jobs hold it, so none is left then).
///
/// It starts before any library is loaded; at its first job it binds itself to the libraries
/// loaded by then and runs the rest of its loop inside their `run_on_thread` (as the serving
/// threads do, `thread_entry.rs`), so its calls into a Go library are nested calls.
fn log_thread(rx: Receiver<LogJob>, wake: Arc<Shared>, weak: std::sync::Weak<Runtime>) {
    let Some(first) = first_job(&rx, &wake) else {
        return;
    };
    let entries = match weak.upgrade() {
        Some(rt) => {
            rt.thread_start();
            rt.thread_entries()
        }
        None => crate::ThreadEntries::default(),
    };
    entries.run(|| log_loop(first, &rx, &wake));
}

/// Parks (as an idle log thread, see the module docs) until the first job comes; `None`: the
/// runtime went away first.
fn first_job(rx: &Receiver<LogJob>, wake: &Shared) -> Option<LogJob> {
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if wake.closed.load(Ordering::SeqCst) => return None,
            Err(TryRecvError::Empty) => {}
        }
        let has_work = || !rx.is_empty() || wake.closed.load(Ordering::SeqCst);
        if wake.handoff.before_park(has_work) {
            std::thread::park_timeout(Duration::from_secs(3600));
            wake.handoff.after_park();
        }
    }
}

/// The log thread's loop from its first job on.
fn log_loop(first: LogJob, rx: &Receiver<LogJob>, wake: &Arc<Shared>) {
    let waker = Waker::from(Arc::new(Token(Arc::clone(wake))));
    let mut cx = Context::from_waker(&waker);
    let mut parked: Vec<LogJob> = first.step(&mut cx).into_iter().collect();
    let mut last_job = Instant::now();
    loop {
        let mut got = false;
        loop {
            match rx.try_recv() {
                Ok(job) => {
                    got = true;
                    parked.extend(job.step(&mut cx));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if parked.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        wake.woken.store(false, Ordering::SeqCst);
        resume_parked(&mut parked, &mut cx);
        if wake.closed.load(Ordering::SeqCst) && parked.is_empty() && rx.is_empty() {
            return;
        }
        let now = Instant::now();
        if got {
            last_job = now;
        }
        let next_deadline = parked.iter().filter_map(LogJob::deadline).min();
        let until_deadline = next_deadline.map(|d| d.saturating_duration_since(now));
        if now.duration_since(last_job) < IDLE_AFTER {
            // Busy: look again soon; producers do not wake this thread.
            std::thread::park_timeout(until_deadline.map_or(BATCH_PERIOD, |d| d.min(BATCH_PERIOD)));
            continue;
        }
        // Idle: announce it, then look once more before sleeping (see the module docs).
        let has_work = || !rx.is_empty() || wake.woken.load(Ordering::SeqCst) || wake.closed.load(Ordering::SeqCst);
        if wake.handoff.before_park(has_work) {
            std::thread::park_timeout(until_deadline.unwrap_or(Duration::from_secs(3600)));
            wake.handoff.after_park();
        }
    }
}

/// Resumes every parked job whose call completed or timed out (a still-pending one re-registers
/// the waker and stays).
fn resume_parked(parked: &mut Vec<LogJob>, cx: &mut Context<'_>) {
    let now = Instant::now();
    let mut i = 0;
    while i < parked.len() {
        if parked[i].is_ready() || parked[i].deadline().is_some_and(|d| d <= now) {
            let job = parked.swap_remove(i);
            parked.extend(job.step(cx));
            // The job now at `i` came from the end (unchecked, or this one parked again on its
            // next call): look at it too.
            continue;
        }
        i += 1;
    }
}

#[cfg(all(test, weft_loom))]
mod loom_models {
    //! loom model of the log queue's hand-over (`crate::log_queue::Handoff`, built with
    //! `--cfg weft_loom`): producers push without waking the log thread unless it announced that it
    //! parks, and the log thread looks at the queue once more after announcing it. A lost wake-up
    //! leaves the consumer parked with a job queued, which loom reports as a deadlock.
    //! Run by `scripts/loom` (see docs/loom.md, which also lists the planted bug each model caught).

    use crate::log_queue::Handoff;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

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
}
