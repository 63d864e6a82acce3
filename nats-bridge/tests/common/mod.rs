//! Test harness: real Go workers (`cgo/cmd/weft-worker`) killed when dropped, beside the real
//! nats-server of `weft-test-support`, and the views and headers the bridge tests send.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use weft_nats_bridge::{NatsOptions, NatsTransport};
use weft_runtime::view::{RequestHead, ViewIdentity, encode_request, encode_response};

#[allow(unused_imports)] // each test binary uses part of this module
pub use weft_test_support::{NatsServer, repo_root};

/// cgo/cmd/weft-worker, built once per test binary.
pub fn worker_bin() -> &'static Path {
    weft_test_support::weft_worker(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Spawns a worker serving `plugin` as instance `instance` with `config`, then the `extra` flags;
/// its stdout piped, its stderr to `stderr`.
fn spawn_worker(url: &str, plugin: &str, instance: &str, config: &str, extra: &[&str], stderr: Stdio) -> Child {
    Command::new(worker_bin())
        .args([
            "-nats",
            url,
            "-plugin",
            plugin,
            "-instance",
            instance,
            "-config",
            config,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start weft-worker")
}

pub struct Worker {
    pub id: String,
    child: Child,
}

impl Worker {
    /// Starts a worker serving `plugin` as instance `instance`; returns once it serves.
    pub fn start(url: &str, plugin: &str, instance: &str, config: &str) -> Worker {
        Self::start_with(url, plugin, instance, config, &[])
    }

    /// Like [`Worker::start`] with extra flags (e.g. `-token`).
    pub fn start_with(url: &str, plugin: &str, instance: &str, config: &str, extra: &[&str]) -> Worker {
        let mut child = spawn_worker(url, plugin, instance, config, extra, Stdio::null());
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let id = line
            .trim()
            .strip_prefix("weft-worker ready id=")
            .unwrap_or_else(|| panic!("worker did not start: {line:?}"))
            .to_owned();
        Worker { id, child }
    }

    /// Starts a worker that must fail to connect: waits for it to exit (within 10 s) without
    /// saying it serves, and returns its log (stderr).
    pub fn refused(url: &str, plugin: &str, instance: &str, config: &str, extra: &[&str]) -> String {
        let mut child = spawn_worker(url, plugin, instance, config, extra, Stdio::piped());
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a worker that must be refused still runs after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "the worker must exit with an error: {status}\n{err}");
        assert!(
            !out.contains("weft-worker ready"),
            "a refused worker must not serve: {out}"
        );
        err
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        if sig == "STOP" {
            // kill(2) only queues the signal: a busy machine can let a thread of the worker run
            // on (and answer a call) for a while after. Wait until every thread has stopped.
            self.wait_stopped();
        }
    }

    /// Waits (at most 5 s) until every thread of the worker is in the stopped state.
    fn wait_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.flatten().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            })
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped() {
            assert!(std::time::Instant::now() < until, "worker {} did not stop", self.pid());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (after SIGTERM); returns whether it exited cleanly.
    pub fn wait(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            assert!(Instant::now() < end, "worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

pub async fn connect(url: &str) -> Arc<NatsTransport> {
    NatsTransport::connect(NatsOptions {
        url: url.to_owned(),
        ..NatsOptions::default()
    })
    .await
    .expect("connect to nats-server")
}

/// A request view as the engine lays it out.
pub fn request_view(request_id: u64, phase: u32, path: &str, headers: &[(&str, &str)]) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; 8192];
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let uri: Uri = path.parse().unwrap();
    let head = RequestHead {
        method: &Method::GET,
        uri: &uri,
        version: Version::HTTP_11,
        headers: &map,
    };
    let id = ViewIdentity {
        request_id,
        slot: 0,
        generation: 1,
        client: "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap().into(),
        scheme: "http",
        server_name: None,
    };
    let end = encode_request(&mut buf, &id, phase, &head).unwrap().size;
    buf.truncate(end);
    (buf, end)
}

/// Appends a response section to a view from `request_view`.
pub fn with_response(
    mut view: Vec<u8>,
    request_end: usize,
    phase: u32,
    status: u16,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    view.resize(8192, 0);
    let end = encode_response(&mut view, request_end, phase, status, &map)
        .unwrap()
        .size;
    view.truncate(end);
    view
}

/// Percentile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The deadline of a call a test's fake worker answers: long enough for a loaded machine (with
/// the default 200 ms the call can give up before its request is even published, and the fake
/// would wait for it forever).
pub fn fake_deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

/// The next message on `sub`; panics after 10 s instead of waiting forever.
pub async fn next_msg(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(sub))
        .await
        .expect("no message within 10 s: the request never reached the fake worker")
        .expect("subscription open")
}

/// Subscribes `client` to `subject` (in queue group `queue`, if any) and returns once the
/// server delivers to it: a probe published on the same connection comes back (the server
/// handles a connection's SUB before its later PUB). `flush` alone only writes the SUB out, and
/// a publish from another connection right after could still find no interest (no responders).
/// The probe is consumed here.
pub async fn subscribe_live(client: &async_nats::Client, subject: &str, queue: Option<&str>) -> async_nats::Subscriber {
    let mut sub = match queue {
        Some(q) => client.queue_subscribe(subject.to_owned(), q.to_owned()).await,
        None => client.subscribe(subject.to_owned()).await,
    }
    .unwrap();
    let probe = subject
        .split('.')
        .map(|t| if t == "*" || t == ">" { "probe" } else { t })
        .collect::<Vec<_>>()
        .join(".");
    client.publish(probe, "probe".into()).await.unwrap();
    let msg = next_msg(&mut sub).await;
    assert_eq!(&msg.payload[..], b"probe", "the probe comes back first");
    sub
}
