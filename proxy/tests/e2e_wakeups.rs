//! A plugin costs no thread wake-up per request (issue 15): requests one after another over one
//! keep-alive connection through the real `weft-proxy` binary, counting the context switches of
//! the proxy's helper threads from `/proc/<pid>/task/*/status`.
//!
//! - The example C plugin has a log phase. It runs on the serving thread once the response is
//!   written (`weft_runtime::log_scope`), so the `weft-log` thread sleeps (it used to wake for
//!   every request: about 1.3 switches per request).
//!
//! A count, not a time: a loaded machine adds a few switches, not one per request. (What the Go
//! runtime's threads do per request depends on how long a request takes, so it is reported by
//! the e2e runner's switch columns on a release build, not asserted here.)

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, c_plugins, config, free_port};

const REQUESTS: u64 = 400;

/// Voluntary context switches (a thread went to sleep: it had been woken for something) per thread name, summed; threads named like the process
/// (the Go runtime's, and the main thread) are under `"<process>"`.
fn switches(pid: u32) -> HashMap<String, u64> {
    let mut by_name = HashMap::new();
    let process = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("proc task dir")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let name = if comm == process {
            "<process>".into()
        } else {
            comm.trim().to_owned()
        };
        *by_name.entry(name).or_default() += n;
    }
    by_name
}

/// Sends `n` GETs one after another on one connection, reading each response in full.
fn sequential_gets(addr: SocketAddr, n: u64) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    for i in 0..n {
        write!(w, "GET /wake/{i} HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "request {i}: {status}");
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
    }
}

/// Switches of the thread group `name` per request while `REQUESTS` requests go through.
fn measure(proxy: &ProxyProcess, name: &str) -> f64 {
    let pid = proxy.child.id();
    // Warm up: connections, the Go runtime's threads, the first calls of each thread.
    sequential_gets(proxy.addr, 50);
    let before = switches(pid);
    sequential_gets(proxy.addr, REQUESTS);
    let after = switches(pid);
    let get = |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0);
    (get(&after) - get(&before)) as f64 / REQUESTS as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_phase_wakes_no_thread_per_request() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let lib = c_plugins().join("libweft_c_stamp.so");
    let yaml = config(
        addr,
        upstream,
        &format!("  - {{ name: c, path: {:?} }}\n", lib.display().to_string()),
        "  - { name: stamp, library: c, plugin: c-header-stamp }\n",
        "  - { path_prefix: /, upstream: up, plugins: [stamp] }\n",
    );
    let proxy = ProxyProcess::start("wakeups-c", &yaml, addr);
    let cs = tokio::task::block_in_place(|| measure(&proxy, "weft-log"));
    assert!(cs < 0.1, "the weft-log thread switched {cs:.2} times per request");
}
