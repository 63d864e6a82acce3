//! Log phases inside a [`LogScope`] run on the thread that finished the request, when the scope
//! closes, with no hand-off to the `weft-log` thread; past the scope's queue, or outside a
//! scope, they go to the log thread as before. The phase-count C plugin counts the log calls
//! (a process of its own: the counters are global to the loaded library).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libloading::os::unix::{Library, Symbol};
use weft_runtime::log_scope::{self, LogScope, SCOPE_QUEUE};
use weft_runtime::{Chain, Flow, InstanceSpec, Runtime, RuntimeOptions};

use common::c_plugins;

/// `count-all` in phase_count.c, and weft.h's WEFT_PHASE_LOG.
const COUNT_ALL: u32 = 0;
const LOG: u32 = 4;

/// The counters are shared by every test in this process: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(slots: u32) -> (std::sync::Arc<Runtime>, Chain, impl Fn() -> u64) {
    let lib = c_plugins().join("libweft_c_phase_count.so");
    let rt = Runtime::new(RuntimeOptions {
        slot_count: slots,
        slot_size: 16 * 1024,
        log_queue: slots as usize - 1,
        ..RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("count", &lib).expect("load phase-count");
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
    // SAFETY: the runtime loaded the library already (RTLD_NOLOAD runs no initialisers); the
    // symbol is `uint64_t weft_phase_count_calls(uint32_t plugin, uint32_t phase)`.
    let handle =
        unsafe { Library::open(Some(&lib), libc::RTLD_NOW | libc::RTLD_NOLOAD) }.expect("the runtime loaded it");
    let getter: Symbol<unsafe extern "C" fn(u32, u32) -> u64> =
        unsafe { handle.get(b"weft_phase_count_calls") }.expect("weft_phase_count_calls exported");
    // SAFETY: a plain C function reading atomics.
    let logs = move || unsafe { getter(COUNT_ALL, LOG) };
    (rt, chain, logs)
}

/// Runs the request-headers phase of one request and drops its exchange (the log phase is due).
fn one_request(chain: &Chain) {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut x = chain.start(client, "http").expect("a free slot").expect("phases");
    let (mut req, ()) = http::Request::get("/log")
        .header("host", "example.com")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
    drop(x);
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn log_phases_run_on_this_thread_when_the_scope_closes_and_overflow_goes_to_the_log_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (rt, chain, logs) = setup(256);

    // Inside a scope: queued here, not run, and not on the log thread's queue.
    let before = logs();
    let scope = LogScope::enter();
    for _ in 0..3 {
        one_request(&chain);
    }
    assert_eq!(log_scope::queued(), 3, "the log phases wait for the scope");
    assert_eq!(rt.log_queue_len(), 0, "nothing went to the log thread");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(logs(), before, "no log call before the scope closes");
    assert_eq!(
        rt.arena_usage().0,
        3,
        "each queued request keeps its slot until its log phase"
    );

    // Closing it runs them, on this thread, before `drop` returns: no wait.
    drop(scope);
    assert_eq!(logs(), before + 3, "the log phases ran when the scope closed");
    assert_eq!(rt.arena_usage().0, 0, "and gave their slots back");
    assert_eq!(log_scope::queued(), 0);

    // A nested scope defers to the outermost.
    let outer = LogScope::enter();
    {
        let _inner = LogScope::enter();
        one_request(&chain);
    }
    assert_eq!(log_scope::queued(), 1, "an inner scope does not run the queue");
    drop(outer);
    assert_eq!(logs(), before + 4);

    // Past the scope's queue the log thread takes the rest: nothing is lost.
    let scope = LogScope::enter();
    let n = SCOPE_QUEUE as u64 + 20;
    for _ in 0..n {
        one_request(&chain);
    }
    assert_eq!(log_scope::queued(), SCOPE_QUEUE);
    drop(scope);
    wait_for("every log phase", || {
        logs() == before + 4 + n && rt.arena_usage().0 == 0
    });
    assert_eq!(rt.stats.log_dropped.load(Ordering::Relaxed), 0, "no log phase dropped");

    // Outside a scope: the log thread, as before.
    one_request(&chain);
    assert_eq!(log_scope::queued(), 0);
    wait_for("the log thread's call", || logs() == before + 5 + n);
}

#[test]
fn a_future_polled_in_scope_runs_its_log_phases_after_each_poll() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (rt, chain, logs) = setup(16);
    let before = logs();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = tokio.block_on(log_scope::in_scope(async {
        one_request(&chain);
        // Still inside the poll that finished the request: not logged yet.
        let during = (log_scope::queued(), logs());
        // The next poll starts after the scope of this one closed.
        tokio::task::yield_now().await;
        (during, logs())
    }));
    assert_eq!(
        seen,
        ((1, before), before + 1),
        "(queued, calls) during the poll, calls after it"
    );
    assert_eq!(rt.arena_usage().0, 0);
}
