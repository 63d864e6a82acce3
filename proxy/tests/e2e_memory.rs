//! Memory the proxy holds across config reloads and for buffered bodies, through the real `weft-proxy` binary, reloaded with SIGHUP, measured through its
//! `/metrics` and `/proc/<pid>/status`:
//! - reloads that each leave a call orphaned (the C plugin "async-delay" answers Pending and
//!   completes after 10 minutes; the deadline is 50 ms) keep one arena mapping: resident memory
//!   does not grow by an arena per reload, and the orphans stay visible in
//!   `weft_plugin_orphaned_slots`;
//! - a reload that fails on its second plugin instance shuts the first one down (the example C
//!   plugin logs its shutdown);
//! - buffered bodies past `runtime.max_buffered_bytes_total` are refused with 503 instead of
//!   being allocated, and the budget comes back when they are done.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Metrics, ProxyProcess, c_plugins, free_port, get, go_library, metric, scrape, wait_for, wait_metrics};
use weft_proxy::demo::spawn_demo_upstream;

/// Resident memory of `pid` in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

fn lib(name: &str) -> String {
    format!("{:?}", c_plugins("plain").join(name).display().to_string())
}

/// Reloads with SIGHUP and waits for the outcome line number `n` (`config reloaded` or
/// `config reload rejected`).
fn sighup(proxy: &ProxyProcess, outcome: &str, n: usize) {
    proxy.signal("-HUP");
    wait_for(&format!("{outcome} #{n}"), Duration::from_secs(30), || {
        proxy.stderr().matches(outcome).count() >= n
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_with_an_orphaned_call_each_keep_one_arena() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    // 256 slots of 64 KiB with their out slots and buffer classes: about 22 MiB mapped (and
    // resident: the arena is populated at start) per arena.
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         runtime: {{ slots: 256, slot_size: 65536 }}\n\
         libraries:\n  - {{ name: async, path: {} }}\n\
         plugins:\n  - {{ name: delay, library: async, plugin: async-delay, deadline_ms: 50 }}\n\
         upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n\
         routes:\n  - {{ path_prefix: /, upstream: up, plugins: [delay] }}\n",
        lib("libweft_c_async.so")
    );
    let proxy = ProxyProcess::start("reload-orphans", &yaml, addr);
    let pid = proxy.child.id();
    let arena = metric(&scrape(admin).await, "weft_arena_mapped_bytes");
    assert!(arena >= 20.0 * 1048576.0, "{arena}");
    let rss_start = rss(pid);
    const RELOADS: usize = 3;
    let mut last = Metrics::new();
    for n in 1..=RELOADS {
        // A call the plugin never completes: cancelled at the deadline, its slots orphaned.
        let (status, _, body) = get(addr, "/", &[("x-delay-ms", "600000")]).await;
        assert_eq!(status, 504, "{body}");
        tokio::task::block_in_place(|| {
            sighup(&proxy, "config reloaded", n);
            // The replaced generation is retired (its runtime dropped) once nothing uses it.
            sighup_retired(&proxy, n);
        });
        last = wait_metrics(admin, "orphans counted", |m| {
            metric(m, "weft_plugin_orphaned_slots") == n as f64
        })
        .await;
        let grown = rss(pid).saturating_sub(rss_start) as f64;
        eprintln!("reload {n}: resident memory +{grown} bytes (an arena maps {arena})");
        assert!(
            grown < arena / 2.0,
            "reload {n}: resident memory grew by {grown} bytes (an arena is {arena})"
        );
        assert_eq!(
            metric(&last, "weft_arena_mapped_bytes"),
            arena,
            "reload {n}: one mapping"
        );
    }
    // Every orphan holds its request slot in the one arena, and is still visible.
    assert!(metric(&last, "weft_arena_slots_in_use") >= RELOADS as f64, "{last:?}");
    assert_eq!(metric(&last, "weft_plugin_timeouts_total"), RELOADS as f64);
    let (status, _, _) = get(addr, "/", &[]).await;
    assert_eq!(status, 200, "still serving");
}

/// Waits for the `n`th "replaced config retired" line.
fn sighup_retired(proxy: &ProxyProcess, n: usize) {
    wait_for(&format!("retired #{n}"), Duration::from_secs(30), || {
        proxy.stderr().matches("replaced config retired").count() >= n
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_shuts_down_the_instances_it_initialised() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = |plugins: &str| {
        format!(
            "listen: {addr}\n\
             libraries:\n  - {{ name: c, path: {} }}\n\
             plugins:\n{plugins}\
             upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n\
             routes:\n  - {{ path_prefix: /, upstream: up, plugins: [first] }}\n",
            lib("libweft_c_stamp.so")
        )
    };
    let serving = "  - { name: first, library: c, plugin: c-header-stamp, config: { value: one } }\n";
    let proxy = ProxyProcess::start("failed-reload", &yaml(serving), addr);
    // The new config: `first` initialises, then `second` fails (its header is not a string).
    let broken = concat!(
        "  - { name: first, library: c, plugin: c-header-stamp, config: { value: two } }\n",
        "  - { name: second, library: c, plugin: c-header-stamp, config: { header: 5 } }\n",
    );
    std::fs::write(&proxy.config, yaml(broken)).unwrap();
    tokio::task::block_in_place(|| sighup(&proxy, "config reload rejected", 1));
    let log = tokio::task::block_in_place(|| proxy.wait_log("instance shut down"));
    let shut: Vec<&str> = log.lines().filter(|l| l.contains("instance shut down")).collect();
    assert_eq!(shut.len(), 1, "only the new `first` is shut down:\n{log}");
    assert!(shut[0].contains("plugin=\"first\""), "{}", shut[0]);
    // The old generation keeps serving, with its own instance.
    let (status, headers, _) = get(addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-c-stamp"], "one");
}

/// Sends a POST of `len` bytes (announced) to `path`, writing only `send` of them now.
fn post_partial(addr: SocketAddr, path: &str, len: usize, send: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: example.com\r\ncontent-length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'a'; send]).unwrap();
    s
}

/// Writes the rest of a body on another thread (a refused request may stop reading it) and
/// returns the answer's status code.
fn finish(mut s: TcpStream, rest: usize) -> u16 {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&vec![b'a'; rest]);
    });
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed before the status line"
        );
        head.push(byte[0]);
    }
    let _ = writer.join();
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_beyond_the_budget_are_refused() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    const MIB: usize = 1 << 20;
    // Room for two 1 MiB bodies and a quarter more. A buffer class holds the plugin's output
    // (twice the body), so only the collected bodies are charged.
    let limit = 2 * MIB + MIB / 4;
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         runtime: {{ slots: 64, slot_size: 65536, buffer_classes: [{{ slot_size: 2162688, slots: 3 }}], max_buffered_bytes_total: {limit} }}\n\
         libraries:\n  - {{ name: go, path: {:?} }}\n\
         plugins:\n  - {{ name: buffer, library: go, plugin: test-body-buffer }}\n\
         upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n\
         routes:\n  - {{ path_prefix: /, upstream: up, plugins: [buffer], max_buffered_body_bytes: {MIB} }}\n",
        go_library("test").display().to_string()
    );
    let proxy = ProxyProcess::start("budget", &yaml, addr);
    let m = scrape(admin).await;
    assert_eq!(metric(&m, "weft_buffered_body_bytes_limit"), limit as f64);
    assert_eq!(metric(&m, "weft_buffered_body_refusals_total"), 0.0);

    // Two clients announce 1 MiB and send 900 KiB of it: both bodies are being collected.
    let sent = 900 * 1024;
    let holders: Vec<_> = (0..2).map(|_| post_partial(addr, "/", MIB, sent)).collect();
    wait_metrics(admin, "both bodies held", |m| {
        metric(m, "weft_buffered_body_bytes") >= 2.0 * sent as f64
    })
    .await;
    // A third body does not fit the rest of the budget: refused, not allocated.
    let third = post_partial(addr, "/", 600 * 1024, 0);
    let status = tokio::task::block_in_place(|| finish(third, 600 * 1024));
    assert_eq!(status, 503);
    let m = scrape(admin).await;
    assert_eq!(metric(&m, "weft_buffered_body_refusals_total"), 1.0);
    assert!(metric(&m, "weft_buffered_body_bytes") <= limit as f64, "{m:?}");
    tokio::task::block_in_place(|| proxy.wait_log("request body not buffered"));

    // The two held bodies complete through the plugin; then the budget is back.
    for h in holders {
        let status = tokio::task::block_in_place(|| finish(h, MIB - sent));
        assert_eq!(status, 200);
    }
    wait_metrics(admin, "budget back", |m| metric(m, "weft_buffered_body_bytes") == 0.0).await;
    let again = post_partial(addr, "/", 600 * 1024, 0);
    assert_eq!(tokio::task::block_in_place(|| finish(again, 600 * 1024)), 200);
    assert_eq!(metric(&scrape(admin).await, "weft_buffered_body_refusals_total"), 1.0);
}
