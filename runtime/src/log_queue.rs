//! The log queue: finished requests on their way to the `weft-log` thread, handed over in
//! batches so that no request wakes a thread.
//!
//! A request's log phase runs after its response: on the thread that served it
//! ([`LogPlace::Inline`](crate::LogPlace), the default), which hands the job here only when a log
//! call went pending or is a blocking instance's; or all of it on the `weft-log` thread
//! ([`LogPlace::Thread`](crate::LogPlace)), so that a slow log plugin never holds a client or a
//! serving thread. Handing each request over through a channel
//! the log thread blocks on cost one futex wake per request (the log thread took an eighth of the
//! proxy's CPU samples under load, parking and unparking). Here the serving thread only pushes
//! onto a bounded queue; the log thread is not blocked on it:
//!
//! - **Busy** (a job came in the last [`IDLE_AFTER`]): the log thread drains the queue, then
//!   sleeps one batch period and looks again. The period is the time the queue takes to fill a
//!   quarter of its length at the rate of the last batches, within [`BATCH_PERIOD_MIN`] and
//!   [`BATCH_PERIOD_MAX`]: under a high rate the thread wakes every 2 ms, under a low one less
//!   often (each wake-up of a sleeping thread costs more than running a batch of log phases). A
//!   log phase starts at most one period after its response. A push that brings the queue to half
//!   its length (or to half the arena's request slots, if the queue is longer than the arena)
//!   during the sleep wakes the thread then (see [`Handoff`] below, a second time): a
//!   rate that grows faster than the period follows it, or one that fills half the queue within
//!   even the shortest period (above ~64k jobs a second for the default 256-long queue, about
//!   what this 2-core machine serves; the fixed 2 ms sleep this replaced filled the whole queue
//!   above ~128k), loses no log phase to a full queue.
//! - **Idle**: it announces that it is parked ([`LogQueue::submit`] then unparks it once) and
//!   sleeps until then, or until the deadline of a log call it waits for. So an idle proxy's log
//!   thread does not tick, and the first request after a pause is logged at once.
//! - **Full**: a log call that goes pending (or to a worker ring) parks its job, not the thread,
//!   and the job keeps its slot; while as many jobs are parked as the queue is long the thread
//!   takes no more from the queue and sleeps until a parked call completes or reaches its
//!   deadline. Log work thus holds at most twice the queue's length in slots; the queue fills
//!   meanwhile and producers drop their log phases (counted).
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

/// The shortest sleep between two looks of the log thread while requests keep coming (the
/// period under a high rate).
pub const BATCH_PERIOD_MIN: Duration = Duration::from_millis(2);
/// The longest sleep between two looks while requests keep coming (the period under a low rate).
pub const BATCH_PERIOD_MAX: Duration = Duration::from_millis(20);
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

    /// Whether the consumer announced that it parks, read without a fence: meaningful only
    /// after a `SeqCst` fence that follows the push (another `Handoff`'s
    /// [`after_push`](Self::after_push)); a producer that sees `true` calls `after_push`.
    pub fn announced(&self) -> bool {
        self.parked.load(crate::sync::Ordering::Relaxed)
    }

    /// Consumer, after waking up.
    pub fn after_park(&self) {
        self.parked.store(false, crate::sync::Ordering::SeqCst);
    }
}

/// What the producers and the log thread share besides the queue.
struct Shared {
    handoff: Handoff,
    /// The same protocol for the busy thread's sleep between two looks: the log thread announces
    /// it, then looks whether the queue holds [`wake_at`](Self::wake_at) jobs; a producer that
    /// finds that many after its push unparks it.
    burst: Handoff,
    /// Half the queue's length, or half the arena's request slots when that is less (each
    /// queued job holds a slot: a queue longer than the arena would never fill to half while
    /// requests found no slot): a producer that finds this many jobs queued while the busy log
    /// thread sleeps wakes it, and the thread does not sleep with this many queued.
    wake_at: usize,
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

/// [`Shared::wake_at`] for a queue of `len` in front of an arena of `slots` request slots.
fn wake_at(len: usize, slots: usize) -> usize {
    len.div_ceil(2).min(slots.div_ceil(2)).max(1)
}

/// The producer side, held by the [`Runtime`].
pub(crate) struct LogQueue {
    tx: Sender<LogJob>,
    wake: Arc<Shared>,
}

impl LogQueue {
    /// Starts the `weft-log` thread for the runtime `weak` points to, with a queue of `len`,
    /// for an arena of `slots` request slots.
    pub(crate) fn start(len: usize, slots: usize, weak: std::sync::Weak<Runtime>) -> LogQueue {
        let (tx, rx) = crossbeam_channel::bounded::<LogJob>(len);
        let wake = Arc::new(Shared {
            handoff: Handoff::new(),
            burst: Handoff::new(),
            wake_at: wake_at(len, slots),
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
        // `handoff.after_push` fences after the push, so the relaxed look at `burst` behind it
        // is ordered as its own `after_push` would be; the queue's length is read only while the
        // busy thread sleeps (its head index is written once a batch, so the read mostly hits the
        // producer's cache).
        if self.wake.handoff.after_push()
            || (self.wake.burst.announced() && self.tx.len() >= self.wake.wake_at && self.wake.burst.after_push())
        {
            self.wake.unpark();
        }
        Ok(())
    }

    /// Whether a job handed over now would find the queue full.
    pub(crate) fn is_full(&self) -> bool {
        self.tx.is_full()
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
    let len = rx.capacity().unwrap_or(1);
    let entries = match weak.upgrade() {
        Some(rt) => {
            rt.thread_start();
            rt.thread_entries()
        }
        None => crate::ThreadEntries::default(),
    };
    entries.run(|| log_loop(first, &rx, &wake, len));
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

/// The log thread's loop from its first job on; `len` is the queue's length.
fn log_loop(first: LogJob, rx: &Receiver<LogJob>, wake: &Arc<Shared>, len: usize) {
    let waker = Waker::from(Arc::new(Token(Arc::clone(wake))));
    let mut cx = Context::from_waker(&waker);
    let mut parked: Vec<LogJob> = first.step(&mut cx).into_iter().collect();
    let mut last_job = Instant::now();
    let mut period = Period::new(len);
    loop {
        let mut got = 0;
        // A parked job keeps its slot: while as many are parked as the queue is long, no more
        // are taken, so log work holds at most twice the queue's length in slots (the queue
        // fills meanwhile and producers drop their log phases, counted).
        while parked.len() < len {
            match rx.try_recv() {
                Ok(job) => {
                    got += 1;
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
        let next_deadline = parked.iter().filter_map(LogJob::deadline).min();
        let until_deadline = next_deadline.map(|d| d.saturating_duration_since(now));
        if parked.len() >= len {
            // Full: only a completion (the waker sets `woken`, then unparks) or a deadline
            // frees room, not the queue. An unpark between the look and the park makes the park
            // return at once. (`closed` cannot be set meanwhile: parked jobs hold the runtime.)
            if !wake.woken.load(Ordering::SeqCst) {
                std::thread::park_timeout(until_deadline.unwrap_or(Duration::from_secs(3600)));
            }
            continue;
        }
        let sleep = period.after(got, now);
        if got > 0 {
            last_job = now;
        }
        if now.duration_since(last_job) < IDLE_AFTER {
            // Busy: look again after the period; producers do not wake this thread, unless the
            // queue fills to `wake_at` meanwhile.
            let sleep = until_deadline.map_or(sleep, |d| d.min(sleep));
            if wake.burst.before_park(|| rx.len() >= wake.wake_at) {
                std::thread::park_timeout(sleep);
                wake.burst.after_park();
            }
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

/// The busy log thread's sleep between two looks: the time the queue takes to gather a quarter
/// of its length at the recent rate of jobs, within [`BATCH_PERIOD_MIN`]..=[`BATCH_PERIOD_MAX`].
#[derive(Debug)]
struct Period {
    /// Jobs a look should find: a quarter of the queue.
    per_look: u64,
    /// The current period.
    current: Duration,
    /// When the thread last looked.
    last_look: Option<Instant>,
}

impl Period {
    fn new(len: usize) -> Period {
        Period {
            per_look: (len as u64 / 4).max(1),
            current: BATCH_PERIOD_MIN,
            last_look: None,
        }
    }

    /// The next sleep, after a look at `now` that found `got` jobs queued since the last one.
    /// Halfway between the current period and the one the look's rate asks for, so one odd look
    /// moves it only half the way.
    fn after(&mut self, got: u64, now: Instant) -> Duration {
        let since = self
            .last_look
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_look = Some(now);
        let wanted = if got == 0 {
            BATCH_PERIOD_MAX
        } else {
            since.mul_f64(self.per_look as f64 / got as f64)
        };
        let wanted = wanted.clamp(BATCH_PERIOD_MIN, BATCH_PERIOD_MAX);
        self.current = ((self.current + wanted) / 2).clamp(BATCH_PERIOD_MIN, BATCH_PERIOD_MAX);
        self.current
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

#[cfg(all(test, not(weft_loom)))]
mod tests {
    use super::{BATCH_PERIOD_MAX, BATCH_PERIOD_MIN, Period, wake_at};
    use std::time::{Duration, Instant};

    /// Looks `gap` apart, each finding `rate` jobs a second's worth: the periods chosen.
    fn periods(len: usize, rate: f64, gap: Duration, looks: usize) -> Vec<Duration> {
        let mut now = Instant::now();
        let mut p = Period::new(len);
        p.last_look = Some(now);
        let mut out = Vec::new();
        let mut gap = gap;
        for _ in 0..looks {
            now += gap;
            let sleep = p.after((rate * gap.as_secs_f64()).round() as u64, now);
            out.push(sleep);
            gap = sleep;
        }
        out
    }

    #[test]
    fn the_wake_threshold_is_half_the_queue_or_half_the_slots() {
        // The default queue, a quarter of the slots: half the queue.
        assert_eq!(wake_at(256, 1024), 128);
        // A queue longer than the arena: half the slots (each queued job holds one).
        assert_eq!(wake_at(64, 8), 4);
        assert_eq!(wake_at(255, 256), 128);
        // Never 0: a one-long queue or a one-slot arena wakes at its first job.
        assert_eq!(wake_at(1, 1024), 1);
        assert_eq!(wake_at(64, 1), 1);
    }

    /// Under a low rate the period grows toward the time a quarter of the queue takes to fill
    /// (64 jobs of a 256-long queue at 10,000 a second: 6.4 ms); under a high one it stays at
    /// the shortest; without jobs it grows to the longest; each look moves it halfway.
    #[test]
    fn the_period_follows_the_rate_within_its_bounds() {
        let low = periods(256, 10_000.0, BATCH_PERIOD_MIN, 12);
        assert_eq!(low[0], Duration::from_micros(4_200), "halfway from 2 to 6.4 ms");
        let last = low.last().unwrap().as_secs_f64();
        assert!((last - 0.0064).abs() < 0.0002, "converges to 6.4 ms: {low:?}");
        let high = periods(256, 100_000.0, BATCH_PERIOD_MIN, 12);
        assert!(high.iter().all(|&p| p == BATCH_PERIOD_MIN), "{high:?}");
        let none = periods(256, 0.0, BATCH_PERIOD_MIN, 12);
        assert!(none.windows(2).all(|w| w[0] <= w[1]) && *none.last().unwrap() > BATCH_PERIOD_MAX * 9 / 10);
        assert!(none.iter().all(|&p| p <= BATCH_PERIOD_MAX), "{none:?}");
        // From the longest period back to the shortest when the rate jumps.
        let mut now = Instant::now();
        let mut p = Period::new(256);
        p.last_look = Some(now);
        for _ in 0..20 {
            now += BATCH_PERIOD_MAX;
            p.after(0, now);
        }
        now += BATCH_PERIOD_MAX;
        let after_jump = p.after(2_000, now);
        let halfway = (BATCH_PERIOD_MAX + BATCH_PERIOD_MIN) / 2;
        assert!(
            after_jump.abs_diff(halfway) < Duration::from_micros(10),
            "halfway down at once: {after_jump:?}"
        );
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

    /// The burst wake-up (`LogQueue::submit`): a producer pushes, runs the idle hand-over's
    /// `after_push` (its fence; the consumer never announced an idle park here), then looks at
    /// the burst hand-over without a fence of its own and the queue's length, and unparks only
    /// if the consumer announced its busy sleep and the queue reached `threshold`. The consumer
    /// announces the sleep, then looks at the length once more. A consumer asleep with the
    /// queue at the threshold and no unpark coming would be a lost burst wake-up: loom reports
    /// it as a deadlock (the model's sleep has no timeout).
    fn burst_producer(
        idle: &Handoff,
        burst: &Handoff,
        queue: &AtomicUsize,
        threshold: usize,
        consumer: &thread::Thread,
    ) {
        let len = queue.fetch_add(1, Ordering::Relaxed) + 1;
        if idle.after_push() || (burst.announced() && len >= threshold && burst.after_push()) {
            consumer.unpark();
        }
    }

    #[test]
    fn a_burst_to_the_threshold_wakes_a_consumer_in_a_long_sleep() {
        loom::model(|| {
            let (idle, burst) = (Arc::new(Handoff::new()), Arc::new(Handoff::new()));
            let queue = Arc::new(AtomicUsize::new(0));
            let c = {
                let (burst, queue) = (burst.clone(), queue.clone());
                thread::spawn(move || {
                    while queue.load(Ordering::Relaxed) < 2 {
                        if burst.before_park(|| queue.load(Ordering::Relaxed) >= 2) {
                            thread::park();
                            burst.after_park();
                        }
                    }
                })
            };
            let consumer = c.thread().clone();
            let p = {
                let (idle, burst, queue, consumer) = (idle.clone(), burst.clone(), queue.clone(), consumer.clone());
                thread::spawn(move || burst_producer(&idle, &burst, &queue, 2, &consumer))
            };
            burst_producer(&idle, &burst, &queue, 2, &consumer);
            p.join().unwrap();
            c.join().unwrap();
        });
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
