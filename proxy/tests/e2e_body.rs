//! Body phases end to end: the real `weft-proxy` binary as its own process, the Go
//! plugin library built by the Go toolchain, an upstream of this file, real HTTP/1.1 and h2c.
//! Chunked uploads, large streamed downloads, empty bodies, buffered rewrites and their limits,
//! a client that disconnects mid-body, a plugin that panics mid-stream, and the proxy's
//! resident memory while 1 GiB streams through a streamed-mode plugin.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod common;
use common::free_port;

// ---------------------------------------------------------------------------------------------
// Process harness (the same as e2e_process.rs).

struct ProxyProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl ProxyProcess {
    fn spawn(tag: &str, yaml: &str, addr: SocketAddr, admin: SocketAddr) -> ProxyProcess {
        let dir = std::env::temp_dir().join(format!("weft-e2e-body-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("weft.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("WEFT_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft-proxy");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut p = ProxyProcess {
            child,
            stderr,
            addr,
            admin,
            dir,
        };
        p.wait_ready();
        p
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(self.addr).is_err() || TcpStream::connect(self.admin).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited early ({status}):\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "proxy not ready:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "no log line containing {needle:?} in:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "proxy died:\n{}",
            self.stderr()
        );
    }

    /// `VmRSS` or `VmHWM` of the proxy process in KiB, from /proc/<pid>/status.
    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} missing"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("proxy stderr:\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PLUGINS: &str = "
  - { name: upper, library: examples, plugin: test-body-upper }
  - { name: count, library: examples, plugin: test-body-count }
  - { name: pass, library: examples, plugin: bench-body-pass }
  - { name: boom, library: examples, plugin: test-body-panic }
  - { name: buffer, library: examples, plugin: test-body-buffer }
  - { name: json, library: examples, plugin: json-rewriter, config: { set: { served_by: weft }, remove: [secret] } }
  - { name: redact, library: examples, plugin: redactor, config: { patterns: [s3cr3t], mask: '#', request: true } }
  - { name: redact-pool, library: examples, plugin: redactor, config: { patterns: [s3cr3t], mask: '#', request: true }, max_in_flight: 8 }
";

const ROUTES: &str = "
  - { path_prefix: /upper, upstream: up, plugins: [upper] }
  - { path_prefix: /count, upstream: up, plugins: [count] }
  - { path_prefix: /pass, upstream: up, plugins: [pass] }
  - { path_prefix: /boom, upstream: up, plugins: [boom] }
  - { path_prefix: /buffer, upstream: up, plugins: [buffer], max_buffered_body_bytes: 1000 }
  - { path_prefix: /json, upstream: up, plugins: [json], max_buffered_body_bytes: 4096 }
  - { path_prefix: /redact-pool, upstream: up, plugins: [redact-pool] }
  - { path_prefix: /redact, upstream: up, plugins: [redact] }
  - { path_prefix: /, upstream: up }
";

/// The upstream's response head may come after a whole 1 GiB upload, which a debug build (one
/// serving thread per connection: reading the client, the body plugin and writing upstream on
/// one core) takes longer than the default 30 s to pass through.
const UPSTREAM_TIMEOUT_MS: u64 = 300_000;

fn start_proxy(tag: &str, upstream: SocketAddr) -> ProxyProcess {
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\nruntime: {{ slots: 64 }}\nlibraries:\n  - {{ name: examples, path: {:?} }}\nplugins:\n{PLUGINS}upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"], timeout_ms: {UPSTREAM_TIMEOUT_MS} }}\nroutes:\n{ROUTES}",
        weft_test_support::go_library("test").display().to_string()
    );
    ProxyProcess::spawn(tag, &yaml, addr, admin)
}

// ---------------------------------------------------------------------------------------------
// Upstream: generated streams, a sink that reports what it received, an echo, JSON.

/// The byte at position `i` of a generated stream: lowercase text, with "s3cr3t" every 1000
/// bytes (at offsets that fall on every possible chunk boundary sooner or later).
fn gen_byte(i: u64) -> u8 {
    const SECRET: &[u8] = b"s3cr3t";
    let r = i % 1000;
    if r >= 994 {
        SECRET[(r - 994) as usize]
    } else {
        b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize]
    }
}

/// A body generated chunk by chunk on demand: the upstream holds no more than one chunk.
struct Generated {
    pos: u64,
    len: u64,
    chunk: usize,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.pos >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.pos).min(self.chunk as u64);
        let start = self.pos;
        let v: Vec<u8> = (start..start + n).map(gen_byte).collect();
        self.pos += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.pos)
    }
}

/// FNV-1a, to compare large bodies without keeping them.
#[derive(Clone, Copy)]
struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf29ce484222325)
    }
    fn update(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn upstream_handle(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let q = query(&req);
    let path = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let resp = match path.as_str() {
        "stream" => {
            let len: u64 = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(1000);
            let chunk: usize = q.get("chunk").and_then(|v| v.parse().ok()).unwrap_or(65536);
            let body = Generated { pos: 0, len, chunk }
                .map_err(|never| match never {})
                .boxed_unsync();
            Response::builder()
                .header("content-type", "text/plain")
                .body(body)
                .unwrap()
        }
        "sink" => {
            let te = header(&req, "transfer-encoding");
            let cl = header(&req, "content-length");
            let xlen = header(&req, "x-body-len");
            let mut body = req.into_body();
            let (mut n, mut h, mut head) = (0u64, Fnv::new(), Vec::new());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(Response::builder().status(499).body(full("client gone")).unwrap());
                };
                if let Ok(d) = frame.into_data() {
                    n += d.len() as u64;
                    h.update(&d);
                    if head.len() < 64 {
                        head.extend_from_slice(&d[..d.len().min(64 - head.len())]);
                    }
                }
            }
            let report = format!(
                "len={n} fnv={:x} te={te} cl={cl} x-body-len={xlen} head={}",
                h.0,
                String::from_utf8_lossy(&head)
            );
            Response::builder()
                .header("content-type", "text/plain")
                .body(full(report))
                .unwrap()
        }
        "echo" => Response::new(req.into_body().boxed_unsync()),
        "json" => {
            let pad = q.get("pad").and_then(|v| v.parse().ok()).unwrap_or(0usize);
            let doc = format!(r#"{{"a":1,"secret":"x","pad":"{}"}}"#, "p".repeat(pad));
            Response::builder()
                .header("content-type", "application/json")
                .body(full(doc))
                .unwrap()
        }
        "empty" => Response::builder()
            .header("content-length", "0")
            .body(full(""))
            .unwrap(),
        "nocontent" => Response::builder().status(204).body(full("")).unwrap(),
        _ => Response::builder().status(404).body(full("unknown")).unwrap(),
    };
    Ok(resp)
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "-".into())
}

/// The upstream, on its own thread and runtime (so it keeps up while a test blocks).
fn spawn_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(upstream_handle))
                        .await;
                });
            }
        });
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Client helpers.

type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn h1() -> Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2() -> Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A body sent as separate frames without a length (HTTP/1.1: chunked).
struct Chunked(VecDeque<Bytes>);
impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunked(parts: &[&[u8]]) -> ClientBody {
    Chunked(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()).boxed_unsync()
}

fn empty() -> ClientBody {
    Full::new(Bytes::new()).boxed_unsync()
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req.body(body).unwrap()))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("whole body").to_bytes();
    Got { status, headers, body }
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

fn fnv(b: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.update(b);
    h.0
}

async fn slots_in_use(admin: SocketAddr) -> f64 {
    let got = send(&h1(), "GET", format!("http://{admin}/metrics"), &[], empty()).await;
    let text = String::from_utf8_lossy(&got.body).into_owned();
    text.lines()
        .find(|l| l.starts_with("weft_arena_slots_in_use"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no weft_arena_slots_in_use in:\n{text}"))
}

/// Waits until every arena slot is back (log phases and body leases included).
async fn wait_no_slots(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = slots_in_use(admin).await;
        if n == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} arena slots still in use");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// HTTP/1.1 and h2c: a chunked upload and a streamed download through a Go plugin that
/// prepends, replaces every chunk and appends; framing headers fit the rewritten bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_over_http1_and_h2c() {
    let up = spawn_upstream();
    let proxy = start_proxy("stream", up);
    let a = proxy.addr;
    for (proto, client) in [("h1", h1()), ("h2c", h2())] {
        // Chunked upload: the upstream receives <bof> + upper-cased body + <eof>, streamed
        // (no content-length; chunked on the HTTP/1.1 hop upstream).
        let parts: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("chunk {i} of the upload;").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let sent = parts.concat();
        let got = send(&client, "POST", format!("http://{a}/upper/sink"), &[], chunked(&refs)).await;
        assert_eq!(got.status, 200, "{proto}");
        let expect = [b"<bof>".as_slice(), &upper(&sent), b"<eof>"].concat();
        let report = String::from_utf8_lossy(&got.body).to_ascii_lowercase();
        let want = format!("len={} fnv={:x} te=chunked cl=-", expect.len(), fnv(&expect));
        assert!(report.contains(&want), "{proto}: upstream saw {report}, want {want}");

        // A request with a content-length: the proxy drops it (the plugin may change the
        // length) and the upstream gets the rewritten bytes.
        let body = vec![b'q'; 100_000];
        let got = send(
            &client,
            "POST",
            format!("http://{a}/upper/sink"),
            &[],
            Full::new(Bytes::from(body.clone())).boxed_unsync(),
        )
        .await;
        let expect = [b"<bof>".as_slice(), &upper(&body), b"<eof>"].concat();
        let report = String::from_utf8_lossy(&got.body).to_ascii_lowercase();
        assert!(
            report.contains(&format!("len={} fnv={:x} te=chunked cl=-", expect.len(), fnv(&expect))),
            "{proto}: {report}"
        );

        // A large streamed download (the upstream sends content-length): the client gets the
        // rewritten stream without a content-length.
        let n: u64 = 32 << 20;
        let got = send(
            &client,
            "GET",
            format!("http://{a}/upper/stream?n={n}&chunk=65536"),
            &[],
            empty(),
        )
        .await;
        assert_eq!(got.status, 200);
        assert!(
            got.headers.get("content-length").is_none(),
            "{proto}: {:?}",
            got.headers
        );
        assert_eq!(got.body.len() as u64, n + 10, "{proto}");
        assert_eq!(&got.body[..5], b"<bof>");
        assert_eq!(&got.body[got.body.len() - 5..], b"<eof>");
        let inner = &got.body[5..got.body.len() - 5];
        let mismatch = inner
            .iter()
            .enumerate()
            .find(|&(i, &b)| b != gen_byte(i as u64).to_ascii_uppercase());
        assert!(mismatch.is_none(), "{proto}: first difference at {mismatch:?}");

        // Echo: request and response both pass through the plugin.
        let got = send(
            &client,
            "POST",
            format!("http://{a}/upper/echo"),
            &[],
            chunked(&[b"ab", b"cd"]),
        )
        .await;
        assert_eq!(&got.body[..], b"<bof><BOF>ABCD<EOF><eof>", "{proto}");

        // Drop: every chunk dropped, prepend and append still sent.
        let got = send(
            &client,
            "POST",
            format!("http://{a}/upper/echo"),
            &[("x-test-drop", "1")],
            chunked(&[b"ab", b"cd"]),
        )
        .await;
        // (the response side drops too: the request carries x-test-drop)
        assert_eq!(&got.body[..], b"<bof><eof>", "{proto}");
    }
    wait_no_slots(proxy.admin).await;
}

/// Empty bodies: every body phase ends with one end-of-stream call, so a plugin can append to
/// an empty body (and the length is then exact); bodiless responses (204, HEAD) never reach a
/// body plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies() {
    let up = spawn_upstream();
    let proxy = start_proxy("empty", up);
    let a = proxy.addr;
    for client in [h1(), h2()] {
        // GET without a body: the plugin's end-of-stream append becomes the request body, sent
        // with an exact content-length; the empty response body gets the same.
        let got = send(&client, "GET", format!("http://{a}/upper/sink"), &[], empty()).await;
        let report = String::from_utf8_lossy(&got.body).to_ascii_lowercase();
        assert!(
            report.contains(&format!("len=10 fnv={:x} te=- cl=10", fnv(b"<bof><eof>"))),
            "{report}"
        );
        let got = send(&client, "GET", format!("http://{a}/upper/empty"), &[], empty()).await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.body[..], b"<bof><eof>");
        // No body plugin on the path: an empty body stays empty with its content-length.
        let got = send(&client, "GET", format!("http://{a}/empty"), &[], empty()).await;
        assert_eq!(
            (
                got.body.len(),
                got.headers.get("content-length").map(|v| v.to_str().unwrap())
            ),
            (0, Some("0"))
        );
        let got = send(&client, "GET", format!("http://{a}/upper/nocontent"), &[], empty()).await;
        assert_eq!(got.status, 204);
        assert!(got.body.is_empty());
        let got = send(&client, "HEAD", format!("http://{a}/upper/stream?n=5"), &[], empty()).await;
        assert_eq!(got.status, 200);
        assert!(got.body.is_empty());
    }
    // The count plugin logs each end of stream: the empty request body was seen as 0 bytes.
    send(&h1(), "GET", format!("http://{a}/count/empty"), &[], empty()).await;
    proxy.wait_log("body-count request_body bytes=0 chunks=1");
    proxy.wait_log("body-count response_body bytes=0 chunks=1");
    wait_no_slots(proxy.admin).await;
}

/// Buffered mode: the whole body in one call, head changes and local replies allowed, the
/// exact new length sent; over the route's limit a request gets 413 and a response 502, each
/// with a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_and_limits() {
    let up = spawn_upstream();
    let proxy = start_proxy("buffered", up);
    let a = proxy.addr;
    for client in [h1(), h2()] {
        let got = send(
            &client,
            "POST",
            format!("http://{a}/buffer/sink"),
            &[],
            chunked(&[b"ab", b"c"]),
        )
        .await;
        let report = String::from_utf8_lossy(&got.body);
        assert!(
            report.contains("len=9 ") && report.contains("te=- cl=9 x-body-len=3 head=len=3;abc"),
            "{report}"
        );
        let got = send(
            &client,
            "POST",
            format!("http://{a}/buffer/sink"),
            &[],
            chunked(&[b"rej", b"ect"]),
        )
        .await;
        assert_eq!(got.status, 400);
        assert_eq!(&got.body[..], b"rejected by test-body-buffer\n");
        // Over the limit, with a content-length (refused before reading) and chunked.
        let big = vec![b'x'; 2000];
        let got = send(
            &client,
            "POST",
            format!("http://{a}/buffer/sink"),
            &[],
            Full::new(Bytes::from(big.clone())).boxed_unsync(),
        )
        .await;
        assert_eq!(got.status, 413);
        let got = send(
            &client,
            "POST",
            format!("http://{a}/buffer/sink"),
            &[],
            chunked(&[&big[..900], &big[900..]]),
        )
        .await;
        assert_eq!(got.status, 413);

        // The JSON rewriter: rewritten, exact content-length, marked.
        let got = send(&client, "GET", format!("http://{a}/json/json"), &[], empty()).await;
        assert_eq!(got.status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(doc["served_by"], "weft");
        assert!(doc.get("secret").is_none());
        assert_eq!(doc["a"], 1);
        assert_eq!(got.headers["content-length"], got.body.len().to_string().as_str());
        assert_eq!(got.headers["x-json-rewritten"], "1");
        // Not JSON: skipped in the response-headers phase, so it streams untouched with its
        // original content-length.
        let got = send(&client, "GET", format!("http://{a}/json/stream?n=300000"), &[], empty()).await;
        assert_eq!(got.body.len(), 300_000);
        assert_eq!(got.headers["content-length"], "300000");
        // A JSON response over the limit: 502.
        let got = send(&client, "GET", format!("http://{a}/json/json?pad=5000"), &[], empty()).await;
        assert_eq!(got.status, 502);
    }
    let log = proxy.wait_log("request body exceeds max_buffered_body_bytes");
    assert!(log.contains("answering 413") && log.contains("limit=1000"), "{log}");
    let log = proxy.wait_log("response body exceeds max_buffered_body_bytes");
    assert!(log.contains("answering 502") && log.contains("limit=4096"), "{log}");
    wait_no_slots(proxy.admin).await;
}

/// The streaming redactor masks a pattern wherever the chunk boundaries fall, in both
/// directions, keeping the length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactor_masks_across_chunk_boundaries() {
    let up = spawn_upstream();
    let proxy = start_proxy("redact", up);
    let a = proxy.addr;
    let n: u64 = 3_000_000;
    let original: Vec<u8> = (0..n).map(gen_byte).collect();
    let masked: Vec<u8> = String::from_utf8(original.clone())
        .unwrap()
        .replace("s3cr3t", "######")
        .into_bytes();
    assert_ne!(original, masked);
    // h2's server refuses floods of tiny DATA frames, so h2c uploads in 997-byte frames.
    for (client, frame) in [(h1(), 7), (h2(), 997)] {
        // Odd upstream chunk sizes put the pattern across boundaries over and over.
        for chunk in [997, 4093, 65536] {
            let got = send(
                &client,
                "GET",
                format!("http://{a}/redact/stream?n={n}&chunk={chunk}"),
                &[],
                empty(),
            )
            .await;
            assert_eq!(got.body.len() as u64, n);
            assert!(
                got.body == masked,
                "chunk {chunk}: output differs from the masked input"
            );
        }
        // Upload in small frames through the request side, echoed back (masked once).
        let parts: Vec<&[u8]> = original[..20_000].chunks(frame).collect();
        let got = send(&client, "POST", format!("http://{a}/redact/echo"), &[], chunked(&parts)).await;
        assert!(got.body[..] == masked[..20_000], "{}", proxy.stderr());
    }
}

/// An upstream that answers before the request body is through (an echo), with the request
/// body's plugin on the worker pool: a chunk's call is in flight, holding the exchange, when the
/// response head comes, and the response's phases wait for the exchange. They go on sending the
/// request body while they wait (nothing else would poll that chunk's call again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_waits_for_a_request_body_call_in_flight() {
    let up = spawn_upstream();
    let proxy = start_proxy("early-answer", up);
    let a = proxy.addr;
    let original: Vec<u8> = (0..200_000).map(gen_byte).collect();
    let masked = String::from_utf8(original.clone())
        .unwrap()
        .replace("s3cr3t", "######")
        .into_bytes();
    for (client, frame) in [(h1(), 7), (h1(), 4096), (h2(), 997)] {
        for _ in 0..3 {
            let parts: Vec<&[u8]> = original.chunks(frame).collect();
            let url = format!("http://{a}/redact-pool/echo");
            let got = tokio::time::timeout(
                Duration::from_secs(30),
                send(&client, "POST", url, &[], chunked(&parts)),
            )
            .await
            .unwrap_or_else(|_| panic!("frames of {frame}: no whole response in 30 s"));
            assert_eq!(got.status, 200, "{}", proxy.stderr());
            assert!(got.body == masked, "frames of {frame}: {}", proxy.stderr());
        }
    }
}

/// A client that goes away mid-body (upload and download) costs nothing lasting: the proxy
/// keeps serving and every arena slot (views and replacement leases) comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_body() {
    let up = spawn_upstream();
    let mut proxy = start_proxy("disconnect", up);
    let a = proxy.addr;
    for path in ["/upper", "/count", "/redact"] {
        // Download: read a little of a 1 GiB stream, then close.
        let mut s = TcpStream::connect(a).unwrap();
        write!(s, "GET {path}/stream?n=1073741824 HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < 1 << 20 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        drop(s);
        // Upload: announce 10 MB, send 1 MB, close.
        let mut s = TcpStream::connect(a).unwrap();
        write!(
            s,
            "POST {path}/sink HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&vec![b'u'; 1 << 20]).unwrap();
        drop(s);
        // And a chunked upload cut inside a chunk.
        let mut s = TcpStream::connect(a).unwrap();
        write!(
            s,
            "POST {path}/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1000\r\nabc"
        )
        .unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = send(&h1(), "GET", format!("http://{a}/upper/stream?n=10"), &[], empty()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), 20);
    wait_no_slots(proxy.admin).await;
    proxy.assert_running();
}

/// A plugin that panics mid-stream: the client sees an aborted response (the bytes before it,
/// then an error instead of a clean end), the failure is logged, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_panic_mid_stream_aborts_the_response() {
    let up = spawn_upstream();
    let mut proxy = start_proxy("panic", up);
    let a = proxy.addr;
    for client in [h1(), h2()] {
        let req = Request::get(format!("http://{a}/boom/stream?n=4000000"))
            .header("x-test-panic-after", "1000000")
            .body(empty())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "the head went out before the panic");
        let mut body = resp.into_body();
        let mut received = 0usize;
        let mut failed = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), body.frame())
                .await
                .expect("no hang")
            {
                Some(Ok(f)) => received += f.into_data().map(|d| d.len()).unwrap_or(0),
                Some(Err(_)) => {
                    failed = true;
                    break;
                }
                None => break,
            }
        }
        assert!(
            failed,
            "the response must end with an error, got {received} bytes and a clean end"
        );
        assert!(received < 4_000_000, "received {received}");
        // Without the header the same route streams fine.
        let got = send(
            &client,
            "GET",
            format!("http://{a}/boom/stream?n=3000000"),
            &[],
            empty(),
        )
        .await;
        assert_eq!(got.body.len(), 3_000_000);
    }
    let log = proxy.wait_log("handler panicked");
    assert!(
        log.lines()
            .any(|l| l.contains("plugin=boom") && l.contains("ResponseBody")),
        "{log}"
    );
    wait_no_slots(proxy.admin).await;
    proxy.assert_running();
}

/// 1 GiB streamed through a streamed-mode plugin (download, then upload): the proxy's resident
/// memory grows by less than 32 MiB. Measured from /proc/<pid>/status: the peak (`VmHWM`) is
/// reset through /proc/<pid>/clear_refs after a warm-up, so the figure is the peak during the
/// transfer minus the resident size before it; also sampled every 20 ms as a cross-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_flat_while_1gib_streams_through_a_plugin() {
    const GIB: u64 = 1 << 30;
    let up = spawn_upstream();
    let proxy = start_proxy("rss", up);
    let a = proxy.addr;
    let pid = proxy.child.id();
    // Warm-up: threads, pools, the Go runtime, allocator arenas.
    for _ in 0..3 {
        send(
            &h1(),
            "GET",
            format!("http://{a}/count/stream?n=33554432"),
            &[],
            empty(),
        )
        .await;
    }
    let baseline = proxy.proc_status_kib("VmRSS:");
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let sampled_peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&sampled_peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Download: count the bytes without keeping them.
    let t = Instant::now();
    let req = Request::get(format!("http://{a}/count/stream?n={GIB}&chunk=65536"))
        .body(empty())
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(f) = body.frame().await {
        received += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(received, GIB);
    let down = t.elapsed();
    // Upload: 1 GiB generated on the fly in 64 KiB frames, counted by the upstream.
    let t = Instant::now();
    let upload = Generated {
        pos: 0,
        len: GIB,
        chunk: 65536,
    };
    let req = Request::post(format!("http://{a}/count/sink"))
        .body(upload.boxed_unsync())
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    let report = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&report).starts_with(&format!("len={GIB} ")),
        "{report:?}"
    );
    let upl = t.elapsed();

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = if hwm_reset {
        proxy.proc_status_kib("VmHWM:")
    } else {
        sampled_peak.load(std::sync::atomic::Ordering::Relaxed)
    };
    let sampled = sampled_peak.load(std::sync::atomic::Ordering::Relaxed);
    let growth_kib = peak.saturating_sub(baseline);
    proxy.wait_log(&format!("body-count response_body bytes={GIB} "));
    proxy.wait_log(&format!("body-count request_body bytes={GIB} "));
    eprintln!(
        "RSS: baseline {baseline} KiB, peak {peak} KiB ({}), sampled peak {sampled} KiB, growth {growth_kib} KiB; \
         1 GiB down in {down:?} ({:.0} MiB/s), up in {upl:?} ({:.0} MiB/s)",
        if hwm_reset {
            "VmHWM after clear_refs"
        } else {
            "sampled VmRSS"
        },
        1024.0 / down.as_secs_f64(),
        1024.0 / upl.as_secs_f64(),
    );
    assert!(growth_kib < 32 * 1024, "RSS grew by {growth_kib} KiB (limit 32 MiB)");
}
