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

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ProxyProcess, TempFile, c_plugins, free_port, get};
use weft_proxy::demo::spawn_demo_upstream;

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, _, body) = get(admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    parse_metrics(body.as_str().expect("metrics are text"))
}

fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no metric {name} in {m:?}"))
}

/// Polls the metrics until `done` holds (30 s at most).
async fn wait_metrics(
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(admin).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn yaml(addr: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let lib = c_plugins().join("libweft_c_async.so");
    format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         runtime: {{ slots: 64, slot_size: 8192, worker_ring_capacity: 64 }}\n\
         libraries:\n  - {{ name: async, path: {lib:?} }}\n\
         plugins:\n\
         \x20 - {{ name: delay, library: async, plugin: async-delay, deadline_ms: 5000 }}\n\
         \x20 - {{ name: slow-closed, library: async, plugin: async-delay, deadline_ms: 150 }}\n\
         \x20 - {{ name: slow-open, library: async, plugin: async-delay, deadline_ms: 150, failure: open }}\n\
         \x20 - {{ name: limited, library: async, plugin: async-delay, deadline_ms: 10000, max_in_flight: 2, retry_after_s: 9 }}\n\
         \x20 - {{ name: worker, library: async, plugin: blocking, deadline_ms: 10000 }}\n\
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

/// Sends a request on a raw connection and closes it before the answer (the call is pending).
fn disconnect_mid_call(addr: SocketAddr, delay_ms: u32) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /gone HTTP/1.1\r\nhost: example.com\r\nx-delay-ms: {delay_ms}\r\n\r\n"
    )
    .unwrap();
    s
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
    let t = Instant::now();
    let calls: Vec<_> = (0..40)
        .map(|_| tokio::spawn(get(addr, "/many", &[("x-delay-ms", "400")])))
        .collect();
    for c in calls {
        let (status, _, seen) = c.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(seen["headers"]["x-async"], "done");
    }
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

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
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(addr, "/limited", &[("x-delay-ms", "2500")])))
        .collect();
    wait_metrics(admin, "two calls pending", |m| {
        metric(m, "weft_plugin_pending_calls") >= 2.0
    })
    .await;
    let (status, headers, _) = get(addr, "/limited", &[("x-delay-ms", "0")]).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "9");
    for h in held {
        let (status, _, seen) = h.await.unwrap();
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

    // Clients that go away while their call is pending.
    let before = scrape(admin).await;
    let conns: Vec<_> = (0..20).map(|_| disconnect_mid_call(addr, 1500)).collect();
    wait_metrics(admin, "the abandoned calls pending", |m| {
        metric(m, "weft_plugin_pending_calls") + metric(m, "weft_plugin_orphaned_slots") >= 20.0
    })
    .await;
    for mut c in conns {
        c.shutdown(std::net::Shutdown::Both).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    // The proxy notices, cancels the calls and leaves their slots with the plugin...
    let m = wait_metrics(admin, "calls cancelled", |m| {
        metric(m, "weft_plugin_pending_calls") == 0.0
    })
    .await;
    assert!(metric(&m, "weft_plugin_orphaned_slots") + metric(&m, "weft_plugin_late_completions_total") >= 20.0);
    // ...keeps serving meanwhile...
    let (status, _, seen) = get(addr, "/hello", &[("x-delay-ms", "10")]).await;
    assert_eq!(status, 200, "{seen}");
    // ...and once the late completions arrived, every slot is back.
    let m = wait_metrics(admin, "every slot back", |m| {
        metric(m, "weft_arena_slots_in_use") == 0.0 && metric(m, "weft_plugin_orphaned_slots") == 0.0
    })
    .await;
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
