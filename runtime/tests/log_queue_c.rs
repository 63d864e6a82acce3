//! With `LogPlace::Thread`, the log queue hands requests to the `weft-log` thread in batches
//! (`runtime/src/log_queue.rs`):
//! under a steady request rate the log thread wakes once per batch period (which follows the
//! rate), not once per request, every log phase still runs, a burst after a slow rate loses
//! none to a full queue, and an idle log thread is woken by the next request; the
//! log thread makes its calls from inside the library's `run_on_thread` (nested, as a serving
//! thread does), a caller's thread that is not inside it does not; an exchange started boxed
//! runs its log phase once and gives its slot back, as an unboxed one does; and a queue longer
//! than the arena wakes its thread when half the slots wait in it.
//! The phase-count C plugin counts the log calls (a process of its own: its counters are global
//! to the loaded library, and the log thread's context switches are read from /proc/self).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weft_runtime::log_queue::BATCH_PERIOD_MIN;
use weft_runtime::{Chain, Exchange, Flow, InstanceSpec, LogPlace, Runtime, RuntimeOptions};

use weft_test_support::{PhaseCount, c_plugins, thread_wakeups};

/// `count-all` in phase_count.c, and weft.h's WEFT_PHASE_REQUEST_HEADERS and WEFT_PHASE_LOG.
const COUNT_ALL: u32 = 0;
const REQUEST_HEADERS: u32 = 0;
const LOG: u32 = 4;

/// A runtime of `slots` request slots and a log queue of `log_queue` that runs every log phase
/// on its log thread (`LogPlace::Thread`; `log_inline_c.rs` tests the default), with a chain
/// of the phase-count plugin that counts every phase.
fn counting_chain(slots: u32, log_queue: usize) -> (std::sync::Arc<Runtime>, Chain) {
    let rt = Runtime::new(RuntimeOptions {
        slot_count: slots,
        slot_size: 16 * 1024,
        log_queue,
        log_place: LogPlace::Thread,
        ..RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("count", &c_plugins("plain").join("libweft_c_phase_count.so"))
        .expect("load phase-count");
    let inst = rt
        .instantiate(InstanceSpec {
            name: "all".into(),
            library: "count".into(),
            plugin: "count-all".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[inst]);
    (rt, chain)
}

fn setup() -> (std::sync::Arc<Runtime>, Chain, PhaseCount) {
    let (rt, chain) = counting_chain(256, 255);
    let count = PhaseCount::of(&c_plugins("plain").join("libweft_c_phase_count.so"));
    (rt, chain, count)
}

const CLIENT: &str = "127.0.0.1:40000";

/// Runs the request-headers phase of one request and drops its exchange (its log phase is due).
fn one_request(chain: &Chain) {
    let mut x = chain
        .start(CLIENT.parse().unwrap(), "http")
        .expect("a free slot")
        .expect("phases");
    request_headers(&mut x);
}

/// [`one_request`] with the exchange started boxed.
fn one_request_boxed(chain: &Chain) {
    let mut x = chain
        .start_boxed(CLIENT.parse().unwrap(), "http")
        .expect("a free slot")
        .expect("phases");
    request_headers(&mut x);
}

fn request_headers(x: &mut Exchange) {
    let (mut req, ()) = http::Request::get("/log")
        .header("host", "example.com")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
}

/// `n` requests `gap` apart (paced by spinning, so the rate does not depend on the machine's
/// timer precision); returns how long they took.
fn paced(chain: &Chain, n: u64, gap: Duration) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let due = start + gap * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        one_request(chain);
    }
    start.elapsed()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_log_thread_wakes_per_batch_not_per_request_and_logs_everything() {
    let (rt, chain, count) = setup();
    let logs = || count.calls(COUNT_ALL, LOG);

    // One request, then idle: the log thread parks for good, and the next request must wake it.
    one_request(&chain);
    wait_for("the first log phase", || logs() == 1);
    std::thread::sleep(Duration::from_millis(200));
    let idle = thread_wakeups("weft-log");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        thread_wakeups("weft-log") - idle <= 2,
        "an idle log thread does not tick"
    );
    one_request(&chain);
    wait_for("a log phase after a pause (a producer unparks the idle thread)", || {
        logs() == 2
    });

    // A steady 10k requests a second for 0.3 s. Handing each to a thread blocked on a channel
    // woke it once per request; in batches of a fixed 2 ms (BATCH_PERIOD_MIN) it woke ~140
    // times; with the period following the rate (a quarter of the 255-long queue, 63 jobs, takes
    // 6.3 ms to come) about 45.
    const REQUESTS: u64 = 3000;
    let before = thread_wakeups("weft-log");
    let elapsed = paced(&chain, REQUESTS, Duration::from_micros(100));
    wait_for("every log phase", || logs() == 2 + REQUESTS && rt.arena_usage().0 == 0);
    let wakeups = thread_wakeups("weft-log") - before;
    let periods = (elapsed.as_secs_f64() / BATCH_PERIOD_MIN.as_secs_f64()).ceil() as u64;
    assert!(
        wakeups < REQUESTS / 5,
        "the log thread woke {wakeups} times for {REQUESTS} requests in {elapsed:?}"
    );
    assert!(
        wakeups <= periods / 2 + 20,
        "the log thread woke {wakeups} times in {elapsed:?} ({periods} periods of {BATCH_PERIOD_MIN:?})"
    );
    assert_eq!(rt.stats.log_dropped.load(Ordering::Relaxed), 0, "no log phase dropped");

    // A slow rate (1k a second for 0.15 s) lets the period grow to ~20 ms; then a burst at 25k a
    // second fills half the queue within 5.1 ms of a sleep that long. The producer that finds
    // the queue half full wakes the thread, and nothing is dropped as long as the woken thread
    // runs within the 5 ms the other half takes to fill. (Asleep to the end of its period, the
    // thread would let the queue fill after 10 ms: the burst's later log phases dropped, and
    // with this runtime's 256 slots, 255 of them held by queued requests, the burst's next
    // request would find no slot.)
    const SLOW: u64 = 150;
    const BURST: u64 = 1000;
    paced(&chain, SLOW, Duration::from_millis(1));
    paced(&chain, BURST, Duration::from_micros(40));
    let dropped = || rt.stats.log_dropped.load(Ordering::Relaxed);
    wait_for("every log phase of the burst, run or dropped", || {
        logs() + dropped() == 2 + REQUESTS + SLOW + BURST && rt.arena_usage().0 == 0
    });
    assert_eq!(dropped(), 0, "no log phase of the burst dropped");

    // Exchanges started boxed, as weft-proxy starts them: each one's log phase takes its own box
    // to the log thread (`BoxedExchange`), runs once, and gives the slot back.
    let before = logs();
    const BOXED: u64 = 100;
    for _ in 0..BOXED {
        one_request_boxed(&chain);
    }
    wait_for("every boxed exchange's log phase", || {
        logs() == before + BOXED && rt.arena_usage().0 == 0
    });
    assert_eq!(rt.stats.log_dropped.load(Ordering::Relaxed), 0);

    // A queue longer than the arena (8 slots, 64 queued jobs): the queue can never fill to half
    // while each queued job holds one of the 8 slots, so half the slots wakes the sleeping
    // thread instead. 3.3k requests a second: asleep for its whole period (~5 ms at that rate),
    // the thread let the 8 slots fill within 2.4 ms and 251 of 300 requests found none (two
    // runs). Woken, it frees them at once on an idle machine; with two busy loops
    // competing for this machine's two cores the woken thread waited for a core and 49 were
    // refused. A third separates the two however busy the machine (the threshold itself:
    // `log_queue::tests::the_wake_threshold_is_half_the_queue_or_half_the_slots`).
    let (small, small_chain) = counting_chain(8, 64);
    let before = logs();
    const SMALL: u32 = 300;
    let start = Instant::now();
    let mut busy = 0;
    for i in 0..SMALL {
        while start.elapsed() < Duration::from_micros(300) * i {
            std::hint::spin_loop();
        }
        match small_chain.start(CLIENT.parse().unwrap(), "http") {
            Ok(x) => request_headers(&mut x.expect("phases")),
            Err(_) => busy += 1,
        }
    }
    wait_for("the small arena's log phases", || small.arena_usage().0 == 0);
    assert!(
        busy < SMALL / 3,
        "{busy} of {SMALL} requests found no slot while log phases waited in the queue"
    );
    assert_eq!(logs(), before + u64::from(SMALL - busy), "every started request logged");

    // Every log call came from inside the library's run_on_thread; the request-headers calls,
    // made on this test's thread (which never entered it), did not.
    let (nested_logs, nested_heads) = (
        count.nested_calls(COUNT_ALL, LOG),
        count.nested_calls(COUNT_ALL, REQUEST_HEADERS),
    );
    assert_eq!(nested_logs, logs(), "log calls made inside run_on_thread");
    assert_eq!(nested_heads, 0, "request-headers calls from a thread outside it");
}
