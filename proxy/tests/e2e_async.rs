//! Asynchronous plugin calls end to end through the real `weft-proxy` binary, with the C test
//! plugins of examples/c-plugin/async_plugin.c (built by scripts/build-c-plugins):
//! - a handler that answers Pending and completes later from a timer thread: its mutations reach
//!   the upstream and the client, and concurrent pending requests do not wait for each other;
//! - the phase deadline: 504 (fail closed) or unchanged (fail open), logged naming the instance;
//! - the in-flight limit: 503 with the configured Retry-After;
//! - a blocking plugin served by worker threads through the worker rings;
//! - clients that disconnect while their call is pending: the proxy keeps serving, and once the
//!   late completions arrived its metrics show every slot back and nothing orphaned;
//! - `weft-proxy check` describes how each in-process instance runs.
//!
//! No timing-tight assertions: deadlines and delays are far apart, "later" is waited for.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    ProxyProcess, TempFile, abandon_pending_calls, c_plugins, check_in_flight_limit, free_port, get, get_concurrently,
    metric, wait_all_slots_back,
};
use weft_proxy::demo::spawn_demo_upstream;

fn yaml(addr: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let lib = c_plugins("plain").join("libweft_c_async.so");
    format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         runtime: {{ slots: 64, slot_size: 8192, worker_ring_capacity: 64 }}\n\
         libraries:\n  - {{ name: async, path: {lib:?} }}\n\
         plugins:\n\
         \x20 - {{ name: delay, library: async, plugin: async-delay, deadline_ms: 5000, max_in_flight: 64 }}\n\
         \x20 - {{ name: slow-closed, library: async, plugin: async-delay, deadline_ms: 150 }}\n\
         \x20 - {{ name: slow-open, library: async, plugin: async-delay, deadline_ms: 150, failure: open }}\n\
         \x20 - {{ name: limited, library: async, plugin: async-delay, deadline_ms: 10000, max_in_flight: 2, retry_after_s: 9 }}\n\
         \x20 - {{ name: worker, library: async, plugin: blocking, deadline_ms: 10000, max_in_flight: 64 }}\n\
         upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n\
         routes:\n\
         \x20 - {{ path_prefix: /slow-closed, upstream: up, plugins: [slow-closed] }}\n\
         \x20 - {{ path_prefix: /slow-open, upstream: up, plugins: [slow-open] }}\n\
         \x20 - {{ path_prefix: /limited, upstream: up, plugins: [limited] }}\n\
         \x20 - {{ path_prefix: /worker, upstream: up, plugins: [worker] }}\n\
         \x20 - {{ path_prefix: /, upstream: up, plugins: [delay] }}\n",
        lib = lib.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_deadlines_limits_workers_and_disconnects() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = yaml(addr, admin, upstream);
    let mut proxy = ProxyProcess::spawn("async", &yaml, addr);
    tokio::task::block_in_place(|| proxy.wait_ready());

    // A pending call completed by the plugin's timer thread: the request mutation reaches the
    // upstream, the response mutation the client.
    let (status, headers, seen) = get(addr, "/hello", &[("x-delay-ms", "100"), ("x-resp-delay-ms", "50")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-async"], "done", "{seen}");
    assert_eq!(headers["x-async-resp"], "done");
    // Completed before the handler even answered Pending.
    let (status, _, seen) = get(addr, "/hello", &[("x-delay-ms", "0")]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-async"], "done", "{seen}");

    // Forty requests pending at once do not wait for each other (serially: 16 s).
    let (answers, took) = get_concurrently(addr, "/many", &[("x-delay-ms", "400")], 40).await;
    for (status, _, seen) in answers {
        assert_eq!(status, 200);
        assert_eq!(seen["headers"]["x-async"], "done");
    }
    assert!(took < Duration::from_secs(12), "{took:?}");

    // Deadline: fail closed answers 504, fail open goes on unchanged.
    let (status, _, body) = get(addr, "/slow-closed", &[("x-delay-ms", "3000")]).await;
    assert_eq!(status, 504, "{body}");
    let log = tokio::task::block_in_place(|| proxy.wait_log("within its deadline of 150 ms"));
    assert!(
        log.lines()
            .any(|l| l.contains("plugin=slow-closed ") && l.contains("within its deadline of 150 ms")),
        "the timeout is logged naming the instance:\n{log}"
    );
    let (status, _, seen) = get(addr, "/slow-open", &[("x-delay-ms", "3000")]).await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen["headers"].get("x-async").is_none(), "{seen}");

    // In-flight limit of 2: the third concurrent call is refused with the configured Retry-After.
    let held = check_in_flight_limit(addr, admin, "/limited", &[("x-delay-ms", "2500")], 2, "9").await;
    for (status, _, seen) in held {
        assert_eq!(status, 200);
        assert_eq!(seen["headers"]["x-async"], "done");
    }

    // A blocking plugin through the worker rings (request, response and log phases).
    let jobs: Vec<_> = (0..30).map(|_| tokio::spawn(get(addr, "/worker", &[]))).collect();
    for j in jobs {
        let (status, headers, seen) = j.await.unwrap();
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["headers"]["x-blocking"], "done");
        assert_eq!(headers["x-blocking-resp"], "done");
    }

    // Clients that go away while their call is pending: the proxy notices, cancels the calls
    // and leaves their slots with the plugin...
    // 5 s: every call is still pending when its client hangs up, even on a loaded machine (a
    // call that completed first would be neither cancelled nor late).
    let before = abandon_pending_calls(addr, admin, "/gone", &[("x-delay-ms", "5000")], 20).await;
    // ...keeps serving meanwhile...
    let (status, _, seen) = get(addr, "/hello", &[("x-delay-ms", "10")]).await;
    assert_eq!(status, 200, "{seen}");
    // ...and once the late completions arrived, every slot is back.
    let m = wait_all_slots_back(admin).await;
    let late = metric(&m, "weft_plugin_late_completions_total") - metric(&before, "weft_plugin_late_completions_total");
    assert!(late >= 20.0, "{late} late completions after 20 disconnects");
    assert!(metric(&m, "weft_plugin_timeouts_total") >= 2.0);
    assert!(metric(&m, "weft_plugin_busy_rejections_total") >= 1.0);
    assert!(metric(&m, "weft_worker_jobs_total") >= 60.0);
    assert!(metric(&m, "weft_worker_rings") >= 1.0);
    assert_eq!(metric(&m, "weft_arena_exhausted_total"), 0.0);
    proxy.assert_running();
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());

    // `weft-proxy check` says how each in-process instance runs.
    let cfg = TempFile::new("async-check", "yaml", &yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["check", "-c"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout
            .contains("ffi instance worker: blocking: every call goes to the library's worker pool, deadline 10000 ms"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ffi instance limited: inline; a Pending answer is awaited, deadline 10000 ms, max_in_flight 2, 503 Retry-After 9 s"),
        "{stdout}"
    );
}
