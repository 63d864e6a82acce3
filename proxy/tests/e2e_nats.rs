//! End to end with `type: nats` plugin instances: a real nats-server on a free loopback port,
//! real Go worker processes (`cgo/cmd/weft-worker`), the real `weft-proxy` binary and the demo
//! upstream, over real HTTP. The behaviour suite of `e2e_process.rs` against NATS workers, then
//! the faults: no workers, a worker killed with requests in flight, nats-server restarted under
//! load, and two proxies sharing three workers.
//!
//! Skipped (with a message) when nats-server is not installed, unless WEFT_REQUIRE_NATS=1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_proxy::demo::spawn_demo_upstream;

mod common;

use weft_test_support::{NatsServer, require_nats};

use common::{HttpClient, ProxyProcess, TempFile, collect, free_port, get_with, metric, scrape, wait_for};

/// cgo/cmd/weft-worker, built once per test binary.
fn worker_bin() -> &'static Path {
    weft_test_support::weft_worker(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// A worker process serving `instances` (the JSON list of `weft-worker -instances`); its log
/// (stderr) is collected.
struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
    _file: TempFile,
}

impl Worker {
    fn start(url: &str, instances: &serde_json::Value) -> Worker {
        Worker::start_with(url, instances, &[])
    }

    /// Like [`Worker::start`] with extra flags (e.g. `-user`, `-password`).
    fn start_with(url: &str, instances: &serde_json::Value, extra: &[&str]) -> Worker {
        let file = TempFile::new("instances", "json", &instances.to_string());
        let mut child = Command::new(worker_bin())
            .args(["-nats", url, "-instances"])
            .arg(&file.0)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weft-worker");
        let log = collect(child.stderr.take().unwrap());
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("weft-worker ready id="),
            "worker did not start: {line:?}\n{}",
            log.lock().unwrap()
        );
        Worker {
            child,
            log,
            _file: file,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    get_with(&client(), addr, path, headers).await
}

fn config(addr: SocketAddr, nats: &str, upstream: SocketAddr, plugins: &str, routes: &str) -> String {
    config_nats(addr, &format!("url: \"{nats}\""), upstream, plugins, routes)
}

/// Like [`config`] with `nats_block` as the body of the `nats: { ... }` flow mapping.
fn config_nats(addr: SocketAddr, nats_block: &str, upstream: SocketAddr, plugins: &str, routes: &str) -> String {
    format!(
        "listen: {addr}\nnats: {{ {nats_block} }}\nplugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n{routes}\n"
    )
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The in-process behaviour suite (`e2e_process.rs`) with every plugin on a NATS worker, plus
/// the fail-open and no-workers paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_plugins_over_real_http() {
    require_nats!();
    let srv = NatsServer::start();
    let rewrite =
        serde_json::json!({ "request_set": { "x-added": "by-go" }, "response_set": { "x-served-by": "weft" } });
    let worker = Worker::start(
        &srv.url(),
        &serde_json::json!([
            { "plugin": "timing-logger", "name": "timing" },
            { "plugin": "header-rewriter", "name": "rewrite", "config": rewrite },
            { "plugin": "bearer-auth", "name": "auth", "config": { "tokens": ["t0ken"] } },
            { "plugin": "test-bad-header", "name": "crlf" },
            { "plugin": "test-panic", "name": "boom" },
        ]),
    );
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    // The same instances as e2e_process.rs with `library: examples` replaced by `type: nats`;
    // phases are read from the workers, except for the two instances nobody serves.
    let yaml = config(
        addr,
        &srv.url(),
        upstream,
        &format!(
            "  - {{ name: timing, type: nats, plugin: timing-logger }}\n\
             \x20 - {{ name: rewrite, type: nats, plugin: header-rewriter, config: {rewrite} }}\n\
             \x20 - {{ name: auth, type: nats, plugin: bearer-auth, config: {{ tokens: [t0ken] }} }}\n\
             \x20 - {{ name: crlf, type: nats, plugin: test-bad-header }}\n\
             \x20 - {{ name: boom, type: nats, plugin: test-panic }}\n\
             \x20 - {{ name: ghost-open, type: nats, plugin: test-panic, failure: open, phases: [request_headers] }}\n\
             \x20 - {{ name: ghost, type: nats, plugin: test-panic, deadline_ms: 3000, phases: [request_headers] }}"
        ),
        "  - { path_prefix: /private, upstream: up, plugins: [timing, auth, rewrite] }\n\
         \x20 - { path_prefix: /crlf, upstream: up, plugins: [crlf] }\n\
         \x20 - { path_prefix: /panic, upstream: up, plugins: [boom] }\n\
         \x20 - { path_prefix: /open, upstream: up, plugins: [ghost-open, rewrite] }\n\
         \x20 - { path_prefix: /down, upstream: up, plugins: [ghost] }\n\
         \x20 - { path_prefix: /, upstream: up, plugins: [timing, rewrite] }",
    );
    let mut proxy = blocking(|| ProxyProcess::start("nats", &yaml, addr));

    // A header added by a remote plugin reaches the upstream, and a response header the client.
    let (status, headers, seen) = get(addr, "/hello?q=1", &[]).await;
    assert_eq!(status, 200, "{seen}\n{}", proxy.stderr());
    assert_eq!(seen["headers"]["x-added"], "by-go");
    assert_eq!(headers["x-served-by"], "weft");

    // Per-request state on the worker: request -> response -> log (printed by the worker).
    let seq = seen["headers"]["x-weft-seq"]
        .as_str()
        .expect("x-weft-seq reached the upstream")
        .to_owned();
    assert_eq!(headers["x-weft-seq"], seq.as_str());
    let line = format!("timing-logger seq={seq} method=GET path=/hello status=200 dur_us=");
    blocking(|| {
        wait_for("the worker's log line", Duration::from_secs(10), || {
            worker.log().contains(&line)
        })
    });
    assert!(!worker.log().contains("state=missing"), "{}", worker.log());

    // The auth plugin's local reply from the worker.
    let (status, headers, body) = get(addr, "/private/x", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "unauthorized");
    let (status, _, seen) = get(addr, "/private/x", &[("authorization", "Bearer t0ken")]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-added"], "by-go");

    // A CR/LF header value from a worker is rejected: fail closed, logged with the instance.
    let (status, _, _) = get(addr, "/crlf", &[("x-test-crlf", "1")]).await;
    assert_eq!(status, 500);
    let (status, _, seen) = get(addr, "/crlf", &[]).await;
    assert_eq!(status, 200);
    assert!(seen["headers"].get("x-bad").is_none());
    assert!(
        proxy.stderr().lines().any(|l| l.contains("plugin=crlf")),
        "{}",
        proxy.stderr()
    );

    // A panicking handler on the worker gives 500, and the next requests still work.
    let (status, _, _) = get(addr, "/panic", &[("x-test-panic", "1")]).await;
    assert_eq!(status, 500);
    for _ in 0..3 {
        let (status, _, _) = get(addr, "/panic", &[]).await;
        assert_eq!(status, 200);
    }
    // Log lines reach stderr through the writer thread: wait for it.
    blocking(|| proxy.wait_log("remote handler panicked"));

    // Fail open: nobody serves ghost-open, the request continues through the next plugin.
    let (status, _, seen) = get(addr, "/open", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-added"], "by-go");

    // No workers, fail closed: 503 at once (no-responders), with retry-after; proxy healthy.
    let c = client();
    let _ = get_with(&c, addr, "/down", &[]).await;
    let t = Instant::now();
    let (status, headers, _) = get_with(&c, addr, "/down", &[]).await;
    let took = t.elapsed();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    // The deadline is 3 s: an answer well before it means no-responders failed the call at once.
    assert!(took < Duration::from_millis(1500), "no-responders took {took:?}");
    let (status, _, _) = get(addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(proxy.running(), "proxy must still be running");
}

/// Without `phases:` the proxy reads them from the workers; with no worker it refuses to start,
/// naming the instance.
#[test]
fn missing_workers_refuse_start() {
    require_nats!();
    let srv = NatsServer::start();
    let yaml = config(
        free_port(),
        &srv.url(),
        free_port(),
        "  - { name: nobody-home, type: nats, plugin: header-rewriter }",
        "  - { path_prefix: /, upstream: up, plugins: [nobody-home] }",
    );
    let mut p = ProxyProcess::spawn("nats", &yaml, free_port());
    let t = Instant::now();
    wait_for("the proxy to exit", Duration::from_secs(10), || {
        p.child.try_wait().unwrap().is_some()
    });
    assert!(!p.child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(100));
    let err = p.stderr();
    assert!(
        err.contains("plugin instance nobody-home") && err.contains("cannot read its phases"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "no-responders must be fast");
}

/// Kill one of two workers while requests sleep on both: only the killed worker's in-flight
/// requests fail (504 at the deadline, fail closed); every later request is served by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_request() {
    require_nats!();
    let srv = NatsServer::start();
    let instances = serde_json::json!([{ "plugin": "test-sleep", "name": "sleepy" }]);
    let mut doomed = Worker::start(&srv.url(), &instances);
    let _survivor = Worker::start(&srv.url(), &instances);
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(
        addr,
        &srv.url(),
        upstream,
        "  - { name: sleepy, type: nats, plugin: test-sleep, deadline_ms: 1500 }",
        "  - { path_prefix: /, upstream: up, plugins: [sleepy] }",
    );
    let proxy = blocking(|| ProxyProcess::start("nats", &yaml, addr));

    let mut in_flight = Vec::new();
    for _ in 0..12 {
        in_flight.push(tokio::spawn(async move {
            let t = Instant::now();
            let (status, _, _) = get(addr, "/", &[("x-test-sleep-ms", "400")]).await;
            (status, t.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    blocking(|| doomed.kill());
    let (mut ok, mut failed) = (0, 0);
    for h in in_flight {
        let (status, took) = h.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::GATEWAY_TIMEOUT => {
                failed += 1;
                assert!(took < Duration::from_millis(2500), "failed only after {took:?}");
            }
            s => panic!("unexpected {s}\n{}", proxy.stderr()),
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "ok {ok}, failed {failed}: both workers had requests"
    );
    // After the kill, every request is served by the survivor.
    let c = client();
    for _ in 0..20 {
        let (status, _, _) = get_with(&c, addr, "/", &[]).await;
        assert_eq!(status, 200, "{}", proxy.stderr());
    }
}

/// nats-server restarts while requests flow: requests fail fast while it is down (503, or 504
/// for those caught in flight) and the proxy serves again within about a second, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_under_load() {
    require_nats!();
    restart_under_load(Duration::from_millis(100)).await;
}

/// The same with nats-server gone for 2 s (the soak's outage): the host's connection and the Go
/// worker's both back off while it is away, and the route still serves again within about a
/// second of the server listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_long_outage_under_load() {
    require_nats!();
    restart_under_load(Duration::from_secs(2)).await;
}

/// Load through a remote plugin while nats-server is stopped for `outage` and started again.
async fn restart_under_load(outage: Duration) {
    let mut srv = NatsServer::start();
    let _worker = Worker::start(
        &srv.url(),
        &serde_json::json!([{ "plugin": "bench-header", "name": "bench" }]),
    );
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(
        addr,
        &srv.url(),
        upstream,
        "  - { name: bench, type: nats, plugin: bench-header }",
        "  - { path_prefix: /, upstream: up, plugins: [bench] }",
    );
    let mut proxy = blocking(|| ProxyProcess::start("nats", &yaml, addr));

    let start = Instant::now();
    let stop_at = start + Duration::from_millis(3400) + outage;
    let mut load = Vec::new();
    for _ in 0..4 {
        load.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            while Instant::now() < stop_at {
                let t = Instant::now();
                let (status, _, _) = get_with(&c, addr, "/", &[]).await;
                seen.push((t, t.elapsed(), status));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let up_again = blocking(|| {
        srv.stop();
        std::thread::sleep(outage);
        srv.start_again();
        Instant::now()
    });
    let mut all = Vec::new();
    for h in load {
        all.extend(h.await.unwrap());
    }
    all.sort_by_key(|(t, _, _)| *t);
    for (_, took, status) in &all {
        assert!(
            [
                StatusCode::OK,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT
            ]
            .contains(status),
            "{status}"
        );
        assert!(*took < Duration::from_millis(2000), "a request hung for {took:?}");
    }
    // A short outage may fall between requests on a slow machine, so failures may be zero; what
    // matters is that none hung (above) and that the proxy serves again soon after (below).
    let failures = all.iter().filter(|(_, _, s)| *s != StatusCode::OK).count();
    eprintln!("requests failed during the restart: {failures} of {}", all.len());
    let first_ok = all
        .iter()
        .find(|(t, _, s)| *t >= up_again && *s == StatusCode::OK)
        .map(|(t, _, _)| t.duration_since(up_again))
        .expect("served again after the restart");
    assert!(
        first_ok < Duration::from_millis(1500),
        "recovered only after {first_ok:?}"
    );
    let settled = up_again + first_ok + Duration::from_millis(300);
    let late_failures = all
        .iter()
        .filter(|(t, _, s)| *t > settled && *s != StatusCode::OK)
        .count();
    assert_eq!(late_failures, 0, "failures after recovery");
    eprintln!(
        "restart after {outage:?}: {} requests, {failures} failed, first success {first_ok:?} after the server listened again",
        all.len()
    );
    assert!(proxy.running());
}

/// Two proxies and three workers on one server: every request keeps its worker for all phases
/// (per-request state), the work spreads over the workers, every log phase arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_three_workers() {
    require_nats!();
    let srv = NatsServer::start();
    let instances = serde_json::json!([{ "plugin": "timing-logger", "name": "timing" }]);
    let workers: Vec<Worker> = (0..3).map(|_| Worker::start(&srv.url(), &instances)).collect();
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addrs = [free_port(), free_port()];
    let proxies: Vec<ProxyProcess> = addrs
        .iter()
        .map(|&addr| {
            let yaml = config(
                addr,
                &srv.url(),
                upstream,
                "  - { name: timing, type: nats, plugin: timing-logger }",
                "  - { path_prefix: /, upstream: up, plugins: [timing] }",
            );
            blocking(|| ProxyProcess::start("nats", &yaml, addr))
        })
        .collect();

    const PER_TASK: usize = 15;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let addr = addrs[i % 2];
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..PER_TASK {
                let (status, headers, seen) = get_with(&c, addr, "/two", &[]).await;
                assert_eq!(status, 200);
                assert_eq!(
                    headers["x-weft-seq"].to_str().unwrap(),
                    seen["headers"]["x-weft-seq"].as_str().unwrap(),
                    "the response phase ran on the request phase's worker"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lines = |w: &Worker| w.log().matches("timing-logger seq=").count();
    blocking(|| {
        wait_for("every log phase", Duration::from_secs(10), || {
            workers.iter().map(lines).sum::<usize>() >= 4 * PER_TASK
        })
    });
    let per_worker: Vec<usize> = workers.iter().map(lines).collect();
    assert_eq!(per_worker.iter().sum::<usize>(), 4 * PER_TASK, "{per_worker:?}");
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "the queue group spreads requests: {per_worker:?}"
    );
    for w in &workers {
        assert!(!w.log().contains("state=missing"), "{}", w.log());
    }
    drop(proxies);
}

/// A frozen worker (SIGSTOP) keeps its subscriptions until the server's pings give up on it
/// (`ping_interval`, `ping_max`, as in `nats-bridge/nats-server.conf` but shorter): until then
/// its share of requests fails at the deadline, afterwards the other worker serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_is_dropped_by_server_pings() {
    require_nats!();
    let srv = NatsServer::start_with_config("ping_interval: \"500ms\"\nping_max: 1\nwrite_deadline: \"1s\"\n");
    let instances = serde_json::json!([{ "plugin": "bench-header", "name": "bench" }]);
    let frozen = Worker::start(&srv.url(), &instances);
    let _ok = Worker::start(&srv.url(), &instances);
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(
        addr,
        &srv.url(),
        upstream,
        "  - { name: bench, type: nats, plugin: bench-header, deadline_ms: 100 }",
        "  - { path_prefix: /, upstream: up, plugins: [bench] }",
    );
    let _proxy = blocking(|| ProxyProcess::start("nats", &yaml, addr));
    frozen.signal("STOP");
    let stopped = Instant::now();
    let c = client();
    let mut last_failure = None;
    while stopped.elapsed() < Duration::from_millis(3500) {
        let (status, _, _) = get_with(&c, addr, "/", &[]).await;
        match status {
            StatusCode::OK => {}
            StatusCode::GATEWAY_TIMEOUT => last_failure = Some(stopped.elapsed()),
            s => panic!("unexpected {s}"),
        }
    }
    let last = last_failure.expect("the frozen worker got requests until the server dropped it");
    eprintln!("frozen worker: last failed request {last:?} after SIGSTOP");
    assert!(
        last < Duration::from_millis(2500),
        "frozen worker still got requests after {last:?}"
    );
}

/// `nats.auth` in the proxy's config (user/password here) reaches the NATS connection: the
/// proxy reads the phases from the worker and a request gets the worker plugin's headers
/// through a server that requires the credentials. With a wrong password it refuses to start
/// and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authenticates_to_nats() {
    require_nats!();
    let srv = NatsServer::start_with_config("authorization { user: weft, password: s3cret }\n");
    let rewrite =
        serde_json::json!({ "request_set": { "x-added": "by-go" }, "response_set": { "x-served-by": "weft" } });
    let _worker = Worker::start_with(
        &srv.url(),
        &serde_json::json!([{ "plugin": "header-rewriter", "name": "rewrite", "config": rewrite }]),
        &["-user", "weft", "-password", "s3cret"],
    );
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let yaml = |addr: SocketAddr, password: &str| {
        config_nats(
            addr,
            &format!("url: \"{}\", auth: {{ user: weft, password: {password} }}", srv.url()),
            upstream,
            &format!("  - {{ name: rewrite, type: nats, plugin: header-rewriter, config: {rewrite} }}"),
            "  - { path_prefix: /, upstream: up, plugins: [rewrite] }",
        )
    };
    let addr = free_port();
    let proxy = blocking(|| ProxyProcess::start("nats-auth", &yaml(addr, "s3cret"), addr));
    let (status, headers, seen) = get(addr, "/authed", &[]).await;
    assert_eq!(status, 200, "{seen}\n{}", proxy.stderr());
    assert_eq!(seen["headers"]["x-added"], "by-go");
    assert_eq!(headers["x-served-by"], "weft");

    let mut wrong = ProxyProcess::spawn("nats-auth-wrong", &yaml(free_port(), "wrong"), free_port());
    let (code, err) = blocking(|| wrong.wait_exit());
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("nats: cannot connect to NATS at {}", srv.url()))
            && err.to_lowercase().contains("authorization"),
        "{err}"
    );
}

/// A worker on `srv` serving `test-sleep` as `sleepy`, and a proxy (`name`, with an admin
/// listener) whose only route calls it, the instance with `options` added (e.g. `, deadline_ms:
/// 5000`); returns the worker, the proxy, its address and its admin address.
async fn sleepy_proxy(srv: &NatsServer, options: &str, name: &str) -> (Worker, ProxyProcess, SocketAddr, SocketAddr) {
    let worker = Worker::start(
        &srv.url(),
        &serde_json::json!([{ "plugin": "test-sleep", "name": "sleepy" }]),
    );
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "admin: {{ listen: \"{admin}\" }}\n{}",
        config(
            addr,
            &srv.url(),
            upstream,
            &format!("  - {{ name: sleepy, type: nats, plugin: test-sleep{options} }}"),
            "  - { path_prefix: /, upstream: up, plugins: [sleepy] }",
        )
    );
    let proxy = blocking(|| ProxyProcess::start(name, &yaml, addr));
    (worker, proxy, addr, admin)
}

/// A remote instance without `deadline_ms` gets the default of 200 ms: a worker that sleeps
/// 1.5 s is answered 504 after about 200 ms (counted as a timeout), and the next quick call
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_remote_deadline_is_200ms() {
    require_nats!();
    let srv = NatsServer::start();
    let (_worker, proxy, addr, admin) = sleepy_proxy(&srv, "", "nats-deadline").await;
    let c = client();
    let (status, _, _) = get_with(&c, addr, "/", &[]).await;
    assert_eq!(status, 200, "{}", proxy.stderr());

    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, _, body) = get_with(&c, addr, "/", &[("x-test-sleep-ms", "1500")]).await;
        let took = t.elapsed();
        assert_eq!(status, 504, "{body}\n{}", proxy.stderr());
        assert!(
            took >= Duration::from_millis(150),
            "timed out before the deadline: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "504 only after {took:?}");
        fastest = fastest.min(took);
    }
    // Tells 200 ms from the in-process default (1000 ms) and from waiting for the worker (1500).
    assert!(fastest < Duration::from_millis(800), "fastest 504 after {fastest:?}");
    let m = scrape(admin).await;
    assert!(metric(&m, r#"weft_remote_errors_total{plugin="sleepy",kind="timeout"}"#) >= 3.0);
    let (status, _, _) = get_with(&c, addr, "/", &[]).await;
    assert_eq!(status, 200);
}

/// `max_in_flight: 1` on a remote instance, over HTTP: of four concurrent requests whose plugin
/// call sleeps 1.5 s, one is served and the others are refused at once with 503 and
/// `Retry-After` (counted as overloaded); once it is done the next request is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_in_flight_limit_over_http() {
    require_nats!();
    let srv = NatsServer::start();
    let (_worker, proxy, addr, admin) =
        sleepy_proxy(&srv, ", deadline_ms: 5000, max_in_flight: 1", "nats-inflight").await;
    let (status, _, _) = get(addr, "/", &[]).await;
    assert_eq!(status, 200, "{}", proxy.stderr());

    let calls: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let (status, headers, _) = get(addr, "/", &[("x-test-sleep-ms", "1500")]).await;
                (status, headers, t.elapsed())
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for c in calls {
        let (status, headers, took) = c.await.unwrap();
        match status {
            StatusCode::OK => served.push(took),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(headers["retry-after"], "1", "{headers:?}");
                refused.push(took);
            }
            s => panic!("unexpected {s}\n{}", proxy.stderr()),
        }
    }
    assert!(
        !served.is_empty() && !refused.is_empty(),
        "served {served:?}, refused {refused:?}"
    );
    // Refused at once, not after waiting for the call in flight.
    let slowest_refusal = refused.iter().max().unwrap();
    assert!(
        slowest_refusal < served.iter().min().unwrap(),
        "served {served:?}, refused {refused:?}"
    );
    let m = scrape(admin).await;
    assert_eq!(
        metric(&m, r#"weft_remote_errors_total{plugin="sleepy",kind="overloaded"}"#),
        refused.len() as f64
    );
    // The slot is given back: the next call is served.
    let (status, _, _) = get(addr, "/", &[]).await;
    assert_eq!(status, 200);
}

/// SIGTERM to the worker while a request waits at the upstream, between its request-headers and
/// response-headers phases: the worker takes no new requests (a new request is answered 503 once
/// its service is gone), but the held request's response phase still reaches it, with the
/// request's state, then its log phase, and the worker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigterm_between_phases_over_http() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    require_nats!();
    let srv = NatsServer::start();
    let mut worker = Worker::start(
        &srv.url(),
        &serde_json::json!([{ "plugin": "timing-logger", "name": "timing" }]),
    );
    // An upstream that holds each request until the test lets it answer.
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = held.accept().await {
            let tx = arrived_tx.clone();
            tokio::spawn(async move {
                let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (go, wait) = tokio::sync::oneshot::channel::<()>();
                let _ = tx.send((String::from_utf8_lossy(&head).to_lowercase(), go));
                let _ = wait.await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld")
                    .await;
            });
        }
    });
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = format!(
        "listen: {addr}\nnats: {{ url: \"{}\" }}\nplugins:\n  - {{ name: timing, type: nats, plugin: timing-logger }}\n\
         upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n  - {{ name: held, addresses: [\"{held_addr}\"] }}\n\
         routes:\n  - {{ path_prefix: /held, upstream: held, plugins: [timing] }}\n\
         \x20 - {{ path_prefix: /, upstream: up, plugins: [timing] }}\n",
        srv.url()
    );
    let proxy = blocking(|| ProxyProcess::start("nats-drain", &yaml, addr));

    let request = tokio::spawn(async move { get(addr, "/held", &[]).await });
    // The request-headers phase ran on the worker: its x-weft-seq reached the upstream.
    let (head, go) = arrived.recv().await.unwrap();
    let seq = head
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-seq:"))
        .expect("x-weft-seq reached the upstream")
        .trim()
        .to_owned();

    worker.signal("TERM");
    // New requests: served until the worker's service stops, then 503 (no responders) at once.
    let c = client();
    let t = Instant::now();
    loop {
        let (status, _, _) = get_with(&c, addr, "/", &[]).await;
        match status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => break,
            s => panic!("unexpected {s}\n{}", proxy.stderr()),
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the draining worker still takes new requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The held request's response phase reaches the draining worker, with its state.
    go.send(()).unwrap();
    let (status, headers, _) = request.await.unwrap();
    assert_eq!(status, 200, "{}\n{}", proxy.stderr(), worker.log());
    assert_eq!(
        headers["x-weft-seq"],
        seq.as_str(),
        "the response phase ran with the request's state"
    );
    let line = format!("timing-logger seq={seq} method=GET path=/held status=200");
    blocking(|| {
        wait_for(
            "the held request's log phase on the worker",
            Duration::from_secs(10),
            || worker.log().contains(&line),
        )
    });
    assert!(!worker.log().contains("state=missing"), "{}", worker.log());
    let exited = blocking(|| {
        let t = Instant::now();
        loop {
            if let Some(st) = worker.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the worker did not exit after draining"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert!(exited.success(), "{exited}\n{}", worker.log());
}

/// `weft-proxy check`: the worker command it suggests for a `type: nats`
/// instance prints neither the instance's config (a bearer token here) nor the NATS URL's
/// credentials; and it warns about a catch-all route that reaches a protected route's upstream
/// without its plugins (item 2).
#[test]
fn check_prints_no_secrets_and_warns_about_routes_around_auth() {
    require_nats!();
    let srv = NatsServer::start();
    let url = srv.url().replace("nats://", "nats://weft:hunter2@");
    let yaml = format!(
        "listen: {}\nnats: {{ url: \"{url}\" }}\n\
         plugins:\n  - {{ name: auth, type: nats, plugin: bearer-auth, phases: [request_headers], config: {{ tokens: [tok-s3cret-1] }} }}\n\
         upstreams: [{{ name: up, addresses: [\"127.0.0.1:9\"] }}]\n\
         routes:\n  - {{ name: api, host: \"*.example.com\", path_prefix: /api, upstream: up, plugins: [auth] }}\n  - {{ name: default, upstream: up }}\n",
        free_port()
    );
    let cfg = TempFile::new("check-secrets", "yaml", &yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["check", "-c"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("tok-s3cret-1"),
        "check printed the instance's config:\n{text}"
    );
    assert!(!text.contains("hunter2"), "check printed the NATS password:\n{text}");
    assert!(
        text.contains("served by: weft-worker -nats nats://***@127.0.0.1:")
            && text.contains("-plugin bearer-auth -instance auth -config \"$(cat auth.json)\""),
        "{text}"
    );
    assert!(
        text.contains(
            "warning: routes[1] (default) reaches the paths of routes[0] (api) (prefix /api) on the same upstream without its plugin(s) auth"
        ),
        "{text}"
    );
}

/// `method path` on a fresh connection with the admin header; the status and the body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Weft-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _, body) = common::raw(addr, &req).await;
    (status, body)
}

/// The ids nats-server gave the open connections whose client name is `name` (its monitoring
/// port's `/connz`).
async fn connection_ids(monitor: SocketAddr, name: &str) -> Vec<u64> {
    connections_named(monitor, |n| n == name).await
}

/// The serving threads' own connections of the client named `name` (`<name>/weft-serve-<i>`).
async fn thread_connection_ids(monitor: SocketAddr, name: &str) -> Vec<u64> {
    let prefix = format!("{name}/weft-serve-");
    connections_named(monitor, |n| n.starts_with(&prefix)).await
}

async fn connections_named(monitor: SocketAddr, mut pick: impl FnMut(&str) -> bool) -> Vec<u64> {
    let port = monitor.port();
    let body = tokio::task::spawn_blocking(move || weft_test_support::monitor_get(port, "/connz"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(&mut pick))
        .filter_map(|c| c["cid"].as_u64())
        .collect()
}

/// A reload that leaves `nats:` alone keeps the proxy's NATS connection (the same connection id at
/// the server; each reload used to open another), and requests through the remote plugin keep
/// succeeding across reloads; the serving threads that called have connections of their own. A
/// changed `nats:` section reconnects, and the replaced connections close once their generation
/// is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_an_unchanged_nats_connection() {
    require_nats!();
    let monitor = free_port();
    let srv = NatsServer::start_with(&["-m", &monitor.port().to_string()]);
    let _worker = Worker::start(
        &srv.url(),
        &serde_json::json!([{ "plugin": "bench-header", "name": "bench" }]),
    );
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = |nats: &str| {
        let body = config_nats(
            addr,
            nats,
            upstream,
            "  - { name: bench, type: nats, plugin: bench-header }",
            "  - { path_prefix: /, upstream: up, plugins: [bench] }",
        );
        format!("admin: {{ listen: {admin} }}\n{body}")
    };
    let same = yaml(&format!("url: \"{}\"", srv.url()));
    let mut proxy = blocking(|| ProxyProcess::start("nats-reload", &same, addr));
    let first = connection_ids(monitor, "weft-proxy").await;
    assert_eq!(first.len(), 1, "{first:?}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let c = client();
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.push(get_with(&c, addr, "/", &[]).await.0);
                }
                statuses
            })
        })
        .collect();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = call(admin, "POST", "/reload").await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for h in load {
        statuses.extend(h.await.unwrap());
    }
    let failed = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    assert!(statuses.len() > 10, "the load ran: {} requests", statuses.len());
    assert_eq!(
        failed,
        0,
        "requests failed across reloads: {failed} of {}",
        statuses.len()
    );
    assert_eq!(
        connection_ids(monitor, "weft-proxy").await,
        first,
        "the same connection after 5 reloads"
    );
    // The serving threads that made calls have connections of their own, counted in /metrics.
    let own = thread_connection_ids(monitor, "weft-proxy").await;
    assert!(!own.is_empty());
    let (status, metrics) = call(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("weft_nats_thread_connections {}\n", own.len())),
        "{own:?} {metrics}"
    );

    // Another client name is another connection; the old one goes with its generation.
    std::fs::write(
        &proxy.config,
        yaml(&format!("url: \"{}\", name: weft-proxy-b", srv.url())),
    )
    .unwrap();
    let (status, body) = call(admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(addr, "/", &[]).await.0, StatusCode::OK);
    let closing = Instant::now();
    while !connection_ids(monitor, "weft-proxy").await.is_empty()
        || !thread_connection_ids(monitor, "weft-proxy").await.is_empty()
    {
        assert!(
            closing.elapsed() < Duration::from_secs(10),
            "the replaced NATS connections did not close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connection_ids(monitor, "weft-proxy-b").await.len(), 1);
    proxy.assert_running();
}
