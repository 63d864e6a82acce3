//! The deadline of a waiting call (a pending answer or a worker job): tokio's timer inside a
//! tokio runtime (the proxy), else one process-wide `weft-deadline` thread (an async caller
//! outside tokio, or a thread parked in the synchronous API).

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Instant;

use crate::sync::stat::{AtomicBool, AtomicU64, Mutex, Ordering};

thread_local! {
    /// This thread is parked in [`super::headers::block_on`]: it cannot drive a tokio timer
    /// (a current-thread runtime's only thread would never see its own timer fire).
    static PARKED_CALLER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a parked caller while it lives.
pub(super) struct ParkedCaller(bool);

impl ParkedCaller {
    pub(super) fn enter() -> ParkedCaller {
        ParkedCaller(PARKED_CALLER.replace(true))
    }
}

impl Drop for ParkedCaller {
    fn drop(&mut self) {
        PARKED_CALLER.set(self.0);
    }
}

/// The deadline of one waiting call.
pub(super) enum DeadlineTimer {
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
    Thread(ThreadTimer),
}

impl DeadlineTimer {
    pub(super) fn new(deadline: Instant, waker: &Waker) -> DeadlineTimer {
        if !PARKED_CALLER.get() && tokio::runtime::Handle::try_current().is_ok() {
            DeadlineTimer::Tokio(Box::pin(tokio::time::sleep_until(deadline.into())))
        } else {
            DeadlineTimer::Thread(ThreadTimer::start(deadline, waker))
        }
    }

    /// Whether the deadline passed (registers `cx`'s waker for it otherwise).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            DeadlineTimer::Tokio(s) => s.as_mut().poll(cx).is_ready(),
            DeadlineTimer::Thread(t) => t.poll(cx),
        }
    }
}

/// One deadline on the shared timer thread; dropping it removes the entry.
pub(super) struct ThreadTimer {
    key: (Instant, u64),
    state: Arc<TimerState>,
}

struct TimerState {
    fired: AtomicBool,
    waker: Mutex<Waker>,
}

/// The deadlines the `weft-deadline` thread watches, earliest first.
struct Timers {
    map: Mutex<std::collections::BTreeMap<(Instant, u64), Arc<TimerState>>>,
    changed: std::sync::Condvar,
}

fn timers() -> &'static Timers {
    static TIMERS: std::sync::OnceLock<&'static Timers> = std::sync::OnceLock::new();
    TIMERS.get_or_init(|| {
        let t: &'static Timers = Box::leak(Box::new(Timers {
            map: Mutex::new(std::collections::BTreeMap::new()),
            changed: std::sync::Condvar::new(),
        }));
        let spawned = std::thread::Builder::new().name("weft-deadline".into()).spawn(move || {
            let mut map = t.map.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let now = Instant::now();
                match map.first_key_value().map(|(k, _)| *k) {
                    Some(k) if k.0 <= now => {
                        let state = map.remove(&k).expect("first key");
                        state.fired.store(true, Ordering::Release);
                        let waker = state.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        // Woken without the lock: the woken task may drop other timers.
                        drop(map);
                        waker.wake();
                        map = t.map.lock().unwrap_or_else(|e| e.into_inner());
                    }
                    Some(k) => {
                        map = t
                            .changed
                            .wait_timeout(map, k.0 - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => map = t.changed.wait(map).unwrap_or_else(|e| e.into_inner()),
                }
            }
        });
        if spawned.is_err() {
            tracing::error!("cannot start the weft-deadline thread: deadlines outside tokio are noticed late");
        }
        t
    })
}

impl ThreadTimer {
    fn start(deadline: Instant, waker: &Waker) -> ThreadTimer {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let key = (deadline, SEQ.fetch_add(1, Ordering::Relaxed));
        let state = Arc::new(TimerState {
            fired: false.into(),
            waker: Mutex::new(waker.clone()),
        });
        let t = timers();
        let mut map = t.map.lock().unwrap_or_else(|e| e.into_inner());
        let first = map.first_key_value().is_none_or(|(k, _)| key < *k);
        map.insert(key, Arc::clone(&state));
        drop(map);
        if first {
            t.changed.notify_one();
        }
        ThreadTimer { key, state }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.state
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone_from(cx.waker());
        self.state.fired.load(Ordering::Acquire)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        if !self.state.fired.load(Ordering::Acquire) {
            timers().map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        }
    }
}
