//! WebSocket numbers: messages per second through a plugin echo, and the time for a
//! broadcast to reach every one of 1,000 local connections of a room (median over rounds).
//!
//! Runs the real `weft-proxy` binary (`--proxy`, default `$CARGO_TARGET_DIR/release/weft-proxy`
//! or `target/release/weft-proxy`) with the Go plugin library (`--lib`, default: built by
//! `scripts/build-plugins`), clients in this process (tokio-tungstenite).
//!
//!     cargo build --release -p weft-proxy && cargo run --release -p weft-benches --bin ws

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() {
    // 1,000 connections on each side of the proxy.
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < 8192 {
            l.rlim_cur = l.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let proxy_bin = arg("--proxy").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from);
        target.join("release/weft-proxy")
    });
    let lib = arg("--lib").map(|p| std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(p)));
    let lib = lib.unwrap_or_else(|| weft_test_support::go_library("test").to_path_buf());
    let conns: usize = arg("--fanout").and_then(|s| s.parse().ok()).unwrap_or(1000);
    let addr = weft_test_support::free_port();
    let dir = std::env::temp_dir().join(format!("weft-ws-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            r#"listen: {addr}
runtime: {{ slots: 4096 }}
libraries:
  - {{ name: go, path: "{lib}" }}
plugins:
  - {{ name: echo, library: go, plugin: test-ws-echo }}
  - {{ name: chat, library: go, plugin: chat }}
upstreams:
  - {{ name: up, addresses: ["127.0.0.1:9"] }}
routes:
  - {{ path_prefix: /echo, upstream: up, websocket: {{ plugin: echo, send_queue: 1024 }} }}
  - {{ path_prefix: /chat, upstream: up, websocket: {{ plugin: chat }} }}
"#,
            lib = lib.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(&proxy_bin)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", proxy_bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        echo(addr).await;
        fanout(addr, conns).await;
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four connections, each pipelining small text messages through the echo plugin.
async fn echo(addr: SocketAddr) {
    let per_conn = 50_000usize;
    let conns = 4;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let (ws, _) = connect_async(format!("ws://{addr}/echo")).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let writer = tokio::spawn(async move {
                for i in 0..per_conn {
                    tx.feed(Message::text(format!("message {i:08}"))).await.unwrap();
                    if i % 64 == 63 {
                        tx.flush().await.unwrap();
                    }
                }
                tx.flush().await.unwrap();
                tx
            });
            let mut n = 0;
            while n < per_conn {
                match rx.next().await {
                    Some(Ok(Message::Text(_))) => n += 1,
                    Some(Ok(_)) => {}
                    other => panic!("echo ended early: {other:?}"),
                }
            }
            drop(writer.await.unwrap());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = per_conn * conns;
    println!(
        "echo through a Go plugin: {total} messages over {conns} connections in {secs:.2} s = {:.0} msg/s (round trips)",
        total as f64 / secs
    );
}

/// `n` connections in one room; one broadcast per round, timed until every member has it.
async fn fanout(addr: SocketAddr, n: usize) {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut senders = Vec::new();
    for _ in 0..n {
        let (mut ws, _) = connect_async(format!("ws://{addr}/chat")).await.unwrap();
        ws.send(Message::text("/join bench")).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "joined bench" => break,
                Some(Ok(_)) => {}
                other => panic!("join failed: {other:?}"),
            }
        }
        let (tx, mut rx) = ws.split();
        senders.push(tx);
        let done = done_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = m
                    && let Some(round) = t.as_str().strip_prefix("round ")
                {
                    let _ = done.send(round.parse().unwrap());
                }
            }
        });
    }
    let rounds = 21;
    let mut times = Vec::new();
    for r in 0..rounds {
        let start = Instant::now();
        senders[r % n].send(Message::text(format!("round {r}"))).await.unwrap();
        let mut got = 0;
        while got < n {
            let round = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
                .await
                .expect("fan-out stalled")
                .unwrap();
            if round == r {
                got += 1;
            }
        }
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "broadcast fan-out to {n} local connections: median {:.2} ms for all to receive (min {:.2}, max {:.2}, {rounds} rounds)",
        times[rounds / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[rounds - 1].as_secs_f64() * 1e3
    );
}
