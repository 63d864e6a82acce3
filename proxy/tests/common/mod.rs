//! The process-level test harness shared by the end-to-end suites: the real `weft-proxy` binary
//! started on a config file, its stderr collected in the background, plugin libraries built by
//! the repo's scripts, free loopback ports and temporary directories that clean up after
//! themselves, and the admin listener's metrics scraped and parsed. Each test binary compiles
//! this module on its own and uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)] // each test binary uses part of this module
pub use weft_test_support::{c_plugins, free_port, go_library, nats_server_bin, repo_root as root, wait_for};

/// Collects a child's pipe into a string in the background.
pub fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A directory under the system temp dir, unique per process and call, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file under the system temp dir, unique per process and call, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, ext: &str, contents: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-e2e-{tag}-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How to start a proxy: `RUST_LOG` (None: unset, so the config's level applies) and extra
/// environment variables.
pub struct Spawn<'a> {
    pub rust_log: Option<&'a str>,
    pub env: &'a [(&'a str, String)],
}

impl Default for Spawn<'_> {
    fn default() -> Self {
        Spawn {
            rust_log: Some("info"),
            env: &[],
        }
    }
}

/// A running `weft-proxy run -c <config>` whose stderr is collected in the background. Killed
/// on drop.
pub struct ProxyProcess {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    pub addr: SocketAddr,
    pub config: PathBuf,
    _dir: TempDir,
}

impl ProxyProcess {
    /// Starts the proxy on `yaml` (listening on `addr`) without waiting for it.
    pub fn spawn_with(tag: &str, yaml: &str, addr: SocketAddr, opts: Spawn<'_>) -> ProxyProcess {
        let dir = TempDir::new(tag);
        let config = dir.file("weft.yaml", yaml);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
        cmd.args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match opts.rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn weft-proxy");
        let stderr = collect(child.stderr.take().unwrap());
        ProxyProcess {
            child,
            stderr,
            addr,
            config,
            _dir: dir,
        }
    }

    /// Starts the proxy with `opts` and waits until it accepts connections.
    pub fn start_with(tag: &str, yaml: &str, addr: SocketAddr, opts: Spawn<'_>) -> ProxyProcess {
        let mut p = Self::spawn_with(tag, yaml, addr, opts);
        p.wait_ready();
        p
    }

    /// Starts the proxy with `RUST_LOG=info` without waiting for it.
    pub fn spawn(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
        Self::spawn_with(tag, yaml, addr, Spawn::default())
    }

    /// Starts the proxy and waits until it accepts connections.
    pub fn start(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
        Self::start_with(tag, yaml, addr, Spawn::default())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the proxy accepts connections; panics with its log if it exits first.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited early ({status}):\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "proxy not ready:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own; returns (exit code, stderr).
    pub fn wait_exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return (status.code(), self.stderr());
            }
            assert!(Instant::now() < deadline, "proxy did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stderr contains `needle`; returns the whole stderr.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "no log line containing {needle:?} in:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal with kill(1), e.g. `-TERM`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("proxy died ({status}):\n{}", self.stderr());
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// GET `path` on `addr` with `headers` on a fresh client; see [`get_with`].
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    get_with(&Client::builder(TokioExecutor::new()).build_http(), addr, path, headers).await
}

/// GET `path` on `addr` with `headers` through `client`; the body parsed as JSON (or as a JSON
/// string when it is not JSON).
pub async fn get_with(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new().boxed()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, headers, json)
}

/// Sends `n` GETs of `path` with `headers` at once, each on its own connection; returns the
/// answers in order and the time until the last one arrived.
pub async fn get_concurrently(
    addr: SocketAddr,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    n: usize,
) -> (Vec<(StatusCode, http::HeaderMap, serde_json::Value)>, Duration) {
    let t = Instant::now();
    let calls: Vec<_> = (0..n).map(|_| tokio::spawn(get(addr, path, headers))).collect();
    let mut answers = Vec::with_capacity(n);
    for c in calls {
        answers.push(c.await.unwrap());
    }
    (answers, t.elapsed())
}

/// A config with one upstream `up`; `libraries`, `plugins` and `routes` are YAML list bodies.
pub fn config(addr: SocketAddr, upstream: SocketAddr, libraries: &str, plugins: &str, routes: &str) -> String {
    format!(
        "listen: {addr}\nlibraries:\n{libraries}\nplugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n{routes}\n"
    )
}

/// Prometheus series as written (`name{labels}`) -> value.
pub type Metrics = HashMap<String, f64>;

/// Parses Prometheus text into `series -> value`; a line that is not `series value` panics.
pub fn parse_metrics(text: &str) -> Metrics {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                series.to_owned(),
                value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

/// GET `/metrics` on the admin listener: 200 in the Prometheus text format, parsed.
pub async fn scrape(admin: SocketAddr) -> Metrics {
    let (status, headers, body) = get(admin, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    parse_metrics(body.as_str().expect("metrics are text"))
}

/// The value of `series`; panics listing the series there are when it is missing.
pub fn metric(m: &Metrics, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let mut keys: Vec<_> = m.keys().collect();
        keys.sort();
        panic!("no series {series} in {keys:#?}")
    })
}

/// Scrapes every 20 ms until `done` holds (30 s at most); returns that scrape.
pub async fn wait_metrics(admin: SocketAddr, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
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

/// Opens a connection and sends `GET path` with `headers` without reading the answer.
pub fn send_and_hold(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// `n` clients send `GET path` with `headers` (a plugin call that stays pending) and hang up
/// before the answer: waits until the proxy holds all `n` calls, closes the connections, then
/// waits until the proxy has cancelled them (none pending; their slots stay with the plugin
/// until it completes). Returns the metrics scraped before the first request.
pub async fn abandon_pending_calls(
    addr: SocketAddr,
    admin: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Metrics {
    let before = scrape(admin).await;
    let conns: Vec<_> = (0..n).map(|_| send_and_hold(addr, path, headers)).collect();
    wait_metrics(admin, "the abandoned calls pending", |m| {
        metric(m, "weft_plugin_pending_calls") + metric(m, "weft_plugin_orphaned_slots") >= n as f64
    })
    .await;
    for mut c in conns {
        c.shutdown(std::net::Shutdown::Both).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    wait_metrics(admin, "calls cancelled", |m| {
        metric(m, "weft_plugin_pending_calls") == 0.0
    })
    .await;
    // Every abandoned call is now either orphaned (its goroutine still runs) or completed late.
    // Waited for, not read once: a completion landing between the scrape's reads of the two
    // series moves one call from the first to the second unseen (seen on a loaded machine: 8 +
    // 11 of 20). A call that was neither stays missing and times the wait out.
    wait_metrics(admin, "every abandoned call orphaned or completed late", |m| {
        let late =
            metric(m, "weft_plugin_late_completions_total") - metric(&before, "weft_plugin_late_completions_total");
        metric(m, "weft_plugin_orphaned_slots") + late >= n as f64
    })
    .await;
    before
}

/// Waits until no arena slot is in use and none is held by a cancelled call; returns that
/// scrape.
pub async fn wait_all_slots_back(admin: SocketAddr) -> Metrics {
    wait_metrics(admin, "every slot back", |m| {
        metric(m, "weft_arena_slots_in_use") == 0.0
            && metric(m, "weft_arena_out_slots_in_use") == 0.0
            && metric(m, "weft_arena_buffer_slots_in_use") == 0.0
            && metric(m, "weft_plugin_orphaned_slots") == 0.0
    })
    .await
}

/// Checks an instance's in-flight limit of `limit` calls: holds `limit` calls of `GET path`
/// with `headers` (which keep the plugin busy for a while), waits until the proxy counts them
/// pending, and expects one more call to be refused at once with 503 and `Retry-After:
/// retry_after`. Returns the held calls' answers.
pub async fn check_in_flight_limit(
    addr: SocketAddr,
    admin: SocketAddr,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    limit: usize,
    retry_after: &str,
) -> Vec<(StatusCode, http::HeaderMap, serde_json::Value)> {
    let held: Vec<_> = (0..limit).map(|_| tokio::spawn(get(addr, path, headers))).collect();
    wait_metrics(admin, "the held calls pending", |m| {
        metric(m, "weft_plugin_pending_calls") >= limit as f64
    })
    .await;
    let (status, headers, body) = get(addr, path, headers).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], retry_after);
    let mut answers = Vec::new();
    for h in held {
        answers.push(h.await.unwrap());
    }
    answers
}

/// A test server on a tokio runtime of its own, so that killing it closes its listener and every
/// kept-alive connection at once, as a crashed process would.
pub struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    /// A one-thread runtime and a listener bound to `addr` on it (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> (OwnRuntime, tokio::net::TcpListener) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener).unwrap()
        };
        (OwnRuntime(Some(runtime)), listener)
    }

    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.as_ref().expect("not killed").spawn(f);
    }

    /// Returns once every connection of the server is closed.
    pub async fn kill(&mut self) {
        if let Some(rt) = self.0.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(std::time::Duration::from_secs(5)))
                .await
                .unwrap();
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Sends `request` (raw bytes, so no client library tidies the path or headers) on a new
/// connection and reads the whole answer (the request says `connection: close`); returns the
/// status, the head and the body. Bounded by 5 s.
pub async fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// An upstream that answers every request on a connection with the bytes `answer` gives for
/// its head (no body read: the tests send none).
pub async fn spawn_raw_upstream(answer: fn(&str) -> &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        if s.write_all(answer(&head).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Reads one response (`content-length` or chunked body) from `s` (what is left after it stays
/// in `rest`); its head and body. Fails if it does not come within 3 s.
pub async fn read_any_response(s: &mut tokio::net::TcpStream, rest: &mut Vec<u8>) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let lower = head.to_lowercase();
            let body = &rest[end + 4..];
            let whole = if lower.contains("transfer-encoding: chunked") {
                body.windows(5).position(|w| w == b"0\r\n\r\n").map(|at| {
                    let mut out = Vec::new();
                    let mut b = &body[..at];
                    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
                        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap(), 16).unwrap();
                        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
                        b = &b[nl + 4 + n..];
                    }
                    (out, at + 5)
                })
            } else {
                let len: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                (body.len() >= len).then(|| (body[..len].to_vec(), len))
            };
            if let Some((out, used)) = whole {
                rest.drain(..end + 4 + used);
                return (head, String::from_utf8(out).unwrap());
            }
        }
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .expect("a response within 3 s")
            .unwrap();
        assert!(n > 0, "the proxy closed the connection");
        rest.extend_from_slice(&buf[..n]);
    }
}

/// A response head as upstreams send them: mixed-case names, a repeated field, a `date`, and
/// the fields that end at this hop.
pub fn mixed_answer(head: &str) -> &'static str {
    if head.starts_with("GET /chunked ") {
        return "HTTP/1.1 200 OK\r\nServer: raw\r\nTransfer-Encoding: chunked\r\nX-Mixed-Case: Value 1\r\n\r\n\
                2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n";
    }
    "HTTP/1.1 200 OK\r\nServer: raw\r\nX-Mixed-Case: Value 1\r\nConnection: keep-alive\r\n\
     Keep-Alive: timeout=5\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 5\r\n\
     X-Two: a\r\nX-Two: b\r\n\r\nhello"
}

/// Sends `GET path` with `x-request-id: id{path}` for each of `paths` in turn on one keep-alive
/// connection to `addr` and reads each answer ([`read_any_response`]), which must be a 200 whose
/// body is `hello` (as [`mixed_answer`]'s); their heads.
pub async fn get_hellos(addr: SocketAddr, paths: &[&str]) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let mut heads = Vec::new();
    for path in paths {
        let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-request-id: id{path}\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_any_response(&mut s, &mut rest).await;
        assert_eq!(body, "hello", "{path}: {head}");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        heads.push(head);
    }
    heads
}
