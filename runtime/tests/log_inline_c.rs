//! With the default `LogPlace::Inline`, a request's log phase runs on the thread that ends its
//! exchange, before the drop returns: the log calls are made there (this test's thread, which is
//! not inside the library's `run_on_thread`), the slot is back at once, and the `weft-log`
//! thread never wakes. A thread unwinding from a panic calls no plugin: its exchange's log phase
//! goes to the log thread (nested there); a runtime replacing this one with `LogPlace::Thread`
//! (a config reload) runs its log phases there. (`log_queue_c.rs` tests `LogPlace::Thread`;
//! `async_c.rs` log calls that go pending, with either place: they move to the log thread, and
//! once log work is saturated further log phases are dropped and counted, not started.)
//! The phase-count C plugin counts the log calls (a process of its own: its counters are global
//! to the loaded library).

use std::sync::atomic::Ordering;
use std::time::Duration;

use weft_runtime::{Chain, Exchange, Flow, InstanceSpec, LogPlace, Runtime, RuntimeOptions};

use weft_test_support::{PhaseCount, c_plugins, thread_wakeups};

/// `count-all` in phase_count.c, and weft.h's WEFT_PHASE_LOG.
const COUNT_ALL: u32 = 0;
const LOG: u32 = 4;

const CLIENT: &str = "127.0.0.1:40000";

fn request_headers(x: &mut Exchange) {
    let (mut req, ()) = http::Request::get("/log")
        .header("host", "example.com")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    weft_test_support::wait_for(what, Duration::from_secs(10), done);
}

#[test]
fn log_phases_run_on_the_thread_that_ends_the_exchange() {
    let lib = c_plugins("plain").join("libweft_c_phase_count.so");
    let rt = Runtime::new(options()).unwrap();
    rt.load_library("count", &lib).expect("load phase-count");
    let inst = rt.instantiate(count_all()).unwrap();
    let chain: Chain = rt.chain(&[inst]);
    let count = PhaseCount::of(&lib);
    let logs = || count.calls(COUNT_ALL, LOG);
    let nested_logs = || count.nested_calls(COUNT_ALL, LOG);
    let dropped = || rt.stats.log_dropped.load(Ordering::Relaxed);

    // Plain and boxed exchanges (weft-proxy starts them boxed): each drop has run the log call
    // and given the slot back before it returns.
    std::thread::sleep(Duration::from_millis(50));
    let wakeups = thread_wakeups("weft-log");
    const N: u64 = 500;
    for i in 0..N {
        let client = CLIENT.parse().unwrap();
        if i % 2 == 0 {
            let mut x = chain.start(client, "http").expect("a free slot").expect("phases");
            request_headers(&mut x);
            drop(x);
        } else {
            let mut x = chain.start_boxed(client, "http").expect("a free slot").expect("phases");
            request_headers(&mut x);
            drop(x);
        }
        assert_eq!(logs(), i + 1, "request {i}: its log call ran before the drop returned");
        assert_eq!(rt.arena_usage().0, 0, "request {i}: its slot is back");
    }
    assert_eq!(nested_logs(), 0, "made on this thread, which is outside run_on_thread");
    assert_eq!(thread_wakeups("weft-log"), wakeups, "the log thread never woke");
    assert_eq!(dropped(), 0);

    // Unwinding from a panic: no plugin is called on this thread; the log thread runs it.
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut x = chain
            .start_boxed(CLIENT.parse().unwrap(), "http")
            .expect("a free slot")
            .expect("phases");
        request_headers(&mut x);
        panic!("a handler failed with the exchange alive");
    }));
    assert!(unwound.is_err());
    wait_for("the unwound exchange's log phase", || logs() == N + 1);
    wait_for("its slot", || rt.arena_usage().0 == 0);
    assert_eq!(nested_logs(), 1, "made on the log thread, inside run_on_thread");
    assert_eq!(dropped(), 0);

    // A runtime that replaces this one (a config reload) with `LogPlace::Thread` runs its log
    // phases on its log thread: the place follows the new options.
    let next = Runtime::replacing(
        &rt,
        RuntimeOptions {
            log_place: LogPlace::Thread,
            ..options()
        },
    )
    .unwrap();
    next.load_library("count", &lib).expect("load phase-count again");
    let inst = next.instantiate(count_all()).unwrap();
    let next_chain = next.chain(&[inst]);
    let mut x = next_chain
        .start_boxed(CLIENT.parse().unwrap(), "http")
        .expect("a free slot")
        .expect("phases");
    request_headers(&mut x);
    drop(x);
    wait_for("the replacing runtime's log phase", || logs() == N + 2);
    assert_eq!(nested_logs(), 2, "made on the new runtime's log thread");
}

/// The runtime's options: a small arena and log queue, log phases at the default place.
fn options() -> RuntimeOptions {
    RuntimeOptions {
        slot_count: 64,
        slot_size: 16 * 1024,
        log_queue: 8,
        ..RuntimeOptions::default()
    }
}

/// `count-all`, which counts every phase it is called in.
fn count_all() -> InstanceSpec {
    InstanceSpec {
        name: "all".into(),
        library: "count".into(),
        plugin: "count-all".into(),
        config_json: b"{}".to_vec(),
        fail_open: false,
    }
}
