//! End to end, the real `weft-proxy` binary: its logs cannot stall it or be forged. A plugin's log lines are escaped (one call, one line) and rate-limited per
//! instance; a stderr nobody reads does not hold up requests, lines that do not fit are
//! dropped and counted.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_proxy::demo::spawn_demo_upstream;

mod common;

use common::{HttpClient, ProxyProcess, TempDir, config, free_port, get, get_with, go_library, metric, scrape};

fn library_yaml() -> String {
    format!(
        "  - {{ name: ex, path: {:?} }}",
        go_library("test").display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_log_lines_are_escaped_and_rate_limited() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "{}admin: {{ listen: \"{admin}\" }}\n",
        config(
            addr,
            upstream,
            &library_yaml(),
            "  - { name: abuse, library: ex, plugin: test-log-abuse }",
            "  - { upstream: up, plugins: [abuse] }",
        )
    );
    let proxy = tokio::task::block_in_place(|| ProxyProcess::start("logs", &yaml, addr));
    let (status, _, body) = get(addr, "/x", &[("x-log-lines", "1000")]).await;
    assert_eq!(status, 200, "{body}");
    tokio::task::block_in_place(|| proxy.wait_log("test-log-abuse forged"));
    // The writer thread may still be behind: wait for the last line that can arrive.
    let text = tokio::task::block_in_place(|| proxy.wait_log("test-log-abuse line 98"));

    // One call, one line: the plugin's newline, CR and ESC are written escaped.
    let forged = text.lines().find(|l| l.contains("test-log-abuse forged")).unwrap();
    assert!(
        forged.contains(r"test-log-abuse forged\nERROR weft::fake: forged\r\u{1b}[31mred"),
        "{forged}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("weft::fake") && !l.contains("test-log-abuse forged")),
        "a plugin forged a log line:\n{text}"
    );
    // 1001 lines in one burst: at most 100 per second get through (the burst may straddle a
    // second), the rest are counted.
    let logged = text.lines().filter(|l| l.contains("test-log-abuse line ")).count();
    assert!(
        logged <= 2 * weft_runtime::plugin_log::LINES_PER_SEC as usize,
        "{logged} lines logged"
    );
    let m = scrape(admin).await;
    let dropped = metric(&m, "weft_plugin_log_lines_dropped_total");
    assert!(dropped + logged as f64 >= 1000.0, "{dropped} dropped, {logged} logged");
    // In a later second the drop is reported once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = get(addr, "/x", &[]).await;
    assert_eq!(status, 200);
    let text = tokio::task::block_in_place(|| proxy.wait_log("plugin log lines dropped"));
    assert!(text.contains("dropped="), "{text}");
}

/// A proxy whose stderr nobody reads (a stalled pipe) keeps answering: log lines that do not
/// fit the writer's queue are dropped and counted. The old proxy wrote each line from the
/// request's thread and stopped answering once the 64 KiB pipe was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_does_not_stall_requests() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let dir = TempDir::new("stalled-stderr");
    let cfg = dir.file(
        "weft.yaml",
        &format!(
            "listen: {addr}\naccess_log: true\nadmin: {{ listen: \"{admin}\" }}\n\
             upstreams: [{{ name: up, addresses: [\"{upstream}\"] }}]\nroutes: [{{ upstream: up }}]\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open and never read.
    let _stderr = child.stderr.take().unwrap();
    let result = async {
        let ready = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < ready, "the proxy never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client: HttpClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0;
        loop {
            let batch: Vec<_> = (0..8)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::timeout(Duration::from_secs(5), get_with(&client, addr, "/x", &[])).await
                    })
                })
                .collect();
            for b in batch {
                let (status, _, _) = b.await.unwrap().expect("answered within 5 s with stderr stalled");
                assert_eq!(status, 200);
            }
            sent += 8;
            let m = tokio::time::timeout(Duration::from_secs(5), scrape(admin))
                .await
                .expect("metrics within 5 s");
            // (Read leniently: the old proxy had no such series and stalled instead.)
            if m.get("weft_log_lines_dropped_total").is_some_and(|&n| n > 0.0) {
                break sent;
            }
            assert!(Instant::now() < deadline, "no log line dropped after {sent} requests");
        }
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(result > 0);
}
