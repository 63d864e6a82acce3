//! The watchdog of inline plugin calls: a phase call made on the host's thread (`on_phase`,
//! answered inline) that runs longer than its runtime's threshold
//! ([`RuntimeOptions::stall_threshold`](crate::RuntimeOptions::stall_threshold)) holds that thread,
//! and with it every other request the thread serves. The watchdog does not interrupt it (nothing
//! can); it logs the instance and phase once per such call and counts it
//! ([`RuntimeStats::plugin_stalls`](crate::RuntimeStats::plugin_stalls)), so an operator learns
//! which plugin to configure `blocking: true` (its calls then run on the library's worker pool).
//!
//! # Cost per call
//! Each host thread owns one [`Slot`]: around the call it stores the instance and a word naming
//! the call, `start << 24 | seq << 8 | phase` (release), and 0 afterwards. `start` is a coarse
//! clock ([`NOW_MS`]) the watchdog thread ticks every [`tick`], `seq` the thread's call count
//! (16 bits): the call reads no clock, takes no lock and allocates nothing (one thread-local
//! access, one relaxed load of the clock, three stores). A thread's slot is registered in a
//! process-wide list the first time it makes a call (one lock, once per thread).
//!
//! # The watchdog thread
//! One per process (`weft-watchdog`), started by the first runtime with a threshold. Every tick it
//! advances the clock and scans the slots, noting when it first saw each call word: a call seen
//! running for the threshold since then (a lower bound of its run time, whatever the watchdog's
//! own delays) is reported, once.
//!
//! The tick is a quarter of the smallest threshold a runtime of the process was given, between
//! [`TICK_MIN`] and [`TICK_MAX`] ([`tick`]): a stalled call is first seen within a tick of its
//! start and reported at the first tick after it was seen running for the threshold, so at most
//! two ticks, half its threshold (plus the watchdog's own scheduling delay), after it passed the
//! threshold (20 ms with the former fixed 10 ms tick, whatever the threshold). Each tick wakes the
//! thread, busy or idle, so the tick is no finer than that precision needs: at the default
//! threshold (100 ms) 40 wake-ups a second, where a fixed 10 ms tick made 100.

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crate::abi::WeftPhase;
use crate::sync::stat::{AtomicBool, AtomicU64, Mutex, Ordering};

/// The finest tick (for thresholds of 40 ms and less).
pub const TICK_MIN: Duration = Duration::from_millis(10);
/// The coarsest tick (for thresholds of a second and more).
pub const TICK_MAX: Duration = Duration::from_millis(250);

/// The smallest stall threshold (ms) a runtime of this process was given; `u64::MAX` before the
/// first. It only goes down: a reload to a larger threshold keeps the finer tick.
static MIN_THRESHOLD_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// How often the watchdog thread ticks the clock and scans: a quarter of the smallest threshold,
/// within [`TICK_MIN`]..=[`TICK_MAX`].
pub fn tick() -> Duration {
    tick_for(MIN_THRESHOLD_MS.load(Ordering::Relaxed))
}

fn tick_for(threshold_ms: u64) -> Duration {
    Duration::from_millis(threshold_ms / 4).clamp(TICK_MIN, TICK_MAX)
}

/// Milliseconds since the watchdog started, plus 1 (so a running call's word is never 0); ticked
/// by the watchdog thread. In a cache line of its own: its writes disturb no other static.
static NOW_MS: Line<AtomicU64> = Line(AtomicU64::new(1));

#[repr(align(128))]
struct Line<T>(T);

/// Whether a watchdog runs: calls record themselves only then.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// One host thread's inline call in progress, alone in its cache lines: the thread writes it on
/// every call, and another thread's slot next to it would bounce the line between their cores.
#[derive(Default)]
#[repr(align(128))]
struct Slot {
    /// `start << 24 | seq << 8 | phase` while a call runs, 0 when none does.
    call: AtomicU64,
    /// The instance the call went to (stored before `call`).
    instance: AtomicU64,
}

/// Every host thread that made an inline call (and is still alive).
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// This thread's slot, registered on first use and removed when the thread exits, and its call
/// count.
struct Registered(Arc<Slot>, std::cell::Cell<u16>);

impl Registered {
    fn new() -> Registered {
        let slot = Arc::new(Slot::default());
        SLOTS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&slot));
        Registered(slot, std::cell::Cell::new(0))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    static MINE: Registered = Registered::new();
}

/// Runs `call`, an inline call of `instance` for `phase`, where the watchdog sees it.
#[inline]
pub(crate) fn watched<R>(instance: u64, phase: WeftPhase, call: impl FnOnce() -> R) -> R {
    if !WATCHING.load(Ordering::Relaxed) {
        return call();
    }
    let mut call = Some(call);
    let mut out = None;
    // A thread that is exiting has no slot any more: its call just runs unwatched.
    let _ = MINE.try_with(|r| {
        let slot = &r.0;
        let seq = r.1.get().wrapping_add(1);
        r.1.set(seq);
        slot.instance.store(instance, Ordering::Relaxed);
        let start = NOW_MS.0.load(Ordering::Relaxed);
        slot.call
            .store(start << 24 | u64::from(seq) << 8 | phase as u64, Ordering::Release);
        out = call.take().map(|f| f());
        slot.call.store(0, Ordering::Release);
    });
    match out {
        Some(r) => r,
        None => call.take().expect("the call ran or is still here")(),
    }
}

/// Starts the process's watchdog thread (once), for a runtime whose threshold is `threshold_ms`
/// (not 0).
pub(crate) fn start(threshold_ms: u64) {
    MIN_THRESHOLD_MS.fetch_min(threshold_ms, Ordering::Relaxed);
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new().name("weft-watchdog".into()).spawn(watch);
        match spawned {
            Ok(_) => WATCHING.store(true, Ordering::Relaxed),
            Err(e) => tracing::error!("cannot start the weft-watchdog thread: stalled plugin calls go unnoticed: {e}"),
        }
    });
}

/// The watchdog thread: ticks the clock, scans the slots.
fn watch() {
    let epoch = Instant::now();
    // Per slot (by address): the call word seen, when it was first seen (ms), whether reported.
    let mut seen: HashMap<usize, (u64, u64, bool)> = HashMap::new();
    loop {
        let tick = tick();
        std::thread::sleep(tick);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        NOW_MS.0.store(now, Ordering::Relaxed);
        let slots: Vec<Arc<Slot>> = SLOTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        seen.retain(|addr, _| slots.iter().any(|s| Arc::as_ptr(s) as usize == *addr));
        for slot in &slots {
            let word = slot.call.load(Ordering::Acquire);
            let key = Arc::as_ptr(slot) as usize;
            if word == 0 {
                seen.remove(&key);
                continue;
            }
            let entry = seen.entry(key).or_insert((word, now, false));
            if entry.0 != word {
                *entry = (word, now, false);
            }
            // Running at least since it was first seen.
            let ran = now - entry.1;
            if entry.2 || ran < tick.as_millis() as u64 {
                continue;
            }
            let instance = slot.instance.load(Ordering::Acquire);
            if slot.call.load(Ordering::Relaxed) != word {
                continue; // finished meanwhile
            }
            entry.2 = report(instance, (word & 0xff) as u32, ran);
        }
    }
}

/// Reports a call of `instance` that has run for `ran_ms` if that is past its runtime's threshold;
/// returns whether it did.
fn report(instance: u64, phase: u32, ran_ms: u64) -> bool {
    let Some((name, Some(table))) = crate::host::instance_calls(instance) else {
        return false;
    };
    let threshold = table.stall_threshold_ms.load(Ordering::Relaxed);
    if threshold == 0 || ran_ms < threshold {
        return false;
    }
    table.stats.plugin_stalls.fetch_add(1, Ordering::Relaxed);
    let phase = phase_name(phase);
    tracing::warn!(
        plugin = %name,
        phase,
        ran_ms,
        threshold_ms = threshold,
        "inline plugin call still running after {ran_ms} ms (threshold {threshold} ms): it holds a proxy thread and \
         every request on it; if the plugin blocks, configure the instance `blocking: true` (its calls then run on \
         the library's worker pool)"
    );
    true
}

/// The name of phase number `phase` (`?` past the known ones).
fn phase_name(phase: u32) -> &'static str {
    const NAMES: [&str; 8] = [
        "RequestHeaders",
        "RequestBody",
        "ResponseHeaders",
        "ResponseBody",
        "Log",
        "WebSocketOpen",
        "WebSocketMessage",
        "WebSocketClose",
    ];
    NAMES.get(phase as usize).copied().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    /// A quarter of the threshold, within the bounds.
    #[test]
    fn the_tick_is_a_quarter_of_the_threshold_within_bounds() {
        use super::{TICK_MAX, TICK_MIN, tick_for};
        use std::time::Duration;
        assert_eq!(tick_for(20), TICK_MIN);
        assert_eq!(tick_for(100), Duration::from_millis(25));
        assert_eq!(tick_for(400), Duration::from_millis(100));
        assert_eq!(tick_for(3_600_000), TICK_MAX);
        assert_eq!(tick_for(u64::MAX), TICK_MAX);
    }

    /// The names `report` prints are the phases' own.
    #[test]
    fn phase_names_follow_the_enum() {
        use crate::abi::WeftPhase::*;
        for p in [
            RequestHeaders,
            RequestBody,
            ResponseHeaders,
            ResponseBody,
            Log,
            WebSocketOpen,
            WebSocketMessage,
            WebSocketClose,
        ] {
            assert_eq!(super::phase_name(p as u32), format!("{p:?}"));
        }
        assert_eq!(super::phase_name(99), "?");
    }
}
