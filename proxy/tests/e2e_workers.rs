//! Thread-per-core serving through the real binary (`workers:`, `proxy/src/workers.rs`): the
//! configured number of serving threads each accept on a listener of their own on the one port,
//! the kernel spreads connections over them and every request is answered; and
//! `limits.max_connections` stays one budget for the whole process, not one per thread.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, free_port, get, parse_metrics};

/// A proxy in front of the demo upstream with `workers` serving threads and `extra` config.
async fn proxy(tag: &str, workers: usize, extra: &str) -> (ProxyProcess, SocketAddr, SocketAddr) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nworkers: {workers}\nadmin: {{ listen: {admin} }}\n{extra}upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n  - {{ upstream: up }}\n"
    );
    let mut p = ProxyProcess::spawn(tag, &yaml, addr);
    tokio::task::block_in_place(|| p.wait_ready());
    (p, addr, admin)
}

/// Names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// One HTTP/1.1 request on `stream` (kept alive); the status code of the answer, `None` if the
/// connection was closed instead.
fn request(stream: &mut TcpStream) -> Option<u16> {
    stream.write_all(b"GET /items HTTP/1.1\r\nhost: t\r\n\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the demo upstream's answers have a content-length");
    while got.len() < head_end + len {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    std::str::from_utf8(&got[9..12]).ok()?.parse().ok()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_serving_threads_and_all_answered() {
    let (p, addr, admin) = proxy("workers", 3, "").await;
    // The sockets accept (the readiness probe) before every serving thread has its name.
    let serving = || {
        thread_names(p.child.id())
            .into_iter()
            .filter(|n| n.starts_with("weft-serve-"))
            .count()
    };
    weft_test_support::wait_for("three serving threads", Duration::from_secs(10), || serving() >= 3);
    assert_eq!(serving(), 3, "serving threads: {:?}", thread_names(p.child.id()));

    const CONNECTIONS: usize = 48;
    tokio::task::block_in_place(|| {
        for _ in 0..CONNECTIONS {
            let mut s = connect(addr);
            for _ in 0..2 {
                assert_eq!(request(&mut s), Some(200));
            }
        }
    });

    let (_, _, body) = get(admin, "/metrics", &[]).await;
    let m = parse_metrics(body.as_str().unwrap());
    let per_thread: Vec<f64> = (0..3)
        .map(|t| {
            m.get(&format!("weft_serving_thread_connections_total{{thread=\"{t}\"}}"))
                .copied()
                .unwrap_or(0.0)
        })
        .collect();
    // wait_ready's probe connection is counted too.
    assert!(per_thread.iter().sum::<f64>() >= CONNECTIONS as f64, "{per_thread:?}");
    assert!(
        per_thread.iter().filter(|&&n| n > 0.0).count() >= 2,
        "the kernel gave every connection to one thread: {per_thread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_one_budget_across_the_serving_threads() {
    let (_p, addr, _admin) = proxy("workers-limit", 3, "limits: { max_connections: 4 }\n").await;
    // Let the probe connection of wait_ready close and give its permit back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = tokio::task::block_in_place(|| {
        let mut open = Vec::new();
        let mut served = 0;
        for _ in 0..8 {
            let mut s = connect(addr);
            if served == 4 {
                // Beyond the budget a connection waits in the backlog: no answer comes while
                // the others stay open (a second is plenty for one that would be served).
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            }
            if request(&mut s) == Some(200) {
                served += 1;
            }
            open.push(s);
        }
        served
    });
    // Eight connections held open over three threads: with a budget per thread more than four
    // would be served.
    assert_eq!(served, 4, "connections served while all stay open");
}
