//! End to end through the real `weft-proxy` binary: a Go plugin library built by the Go
//! toolchain, the proxy as its own process on a loopback port, the demo upstream, real HTTP.
//! Start-up failures (wrong ABI, a second Go library, a failing init) are checked on the
//! process's exit status and stderr.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_proxy::demo::spawn_demo_upstream;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn build(variant: &str) -> PathBuf {
    let out = Command::new(root().join("scripts/build-plugins"))
        .arg(variant)
        .output()
        .expect("run build-plugins");
    assert!(
        out.status.success(),
        "build-plugins {variant}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}

fn library(variant: &'static str) -> &'static Path {
    static MAIN: OnceLock<PathBuf> = OnceLock::new();
    static ABI99: OnceLock<PathBuf> = OnceLock::new();
    match variant {
        "main" => MAIN.get_or_init(|| build("main")),
        _ => ABI99.get_or_init(|| build("abi99")),
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running proxy process whose stderr is collected in the background.
struct ProxyProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    addr: SocketAddr,
    _dir: tempdir::Dir,
}

mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "weft-e2e-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ProxyProcess {
    fn spawn(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
        let dir = tempdir::Dir::new(tag);
        let cfg = dir.path().join("weft.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
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
        ProxyProcess {
            child,
            stderr,
            addr,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the proxy accepts connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited early ({status}):\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "proxy not ready:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own; returns (success, stderr).
    fn wait_exit(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return (status.success(), self.stderr());
            }
            assert!(Instant::now() < deadline, "proxy did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stderr contains `needle`; returns the whole stderr.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "no log line containing {needle:?} in:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
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

fn config(addr: SocketAddr, upstream: SocketAddr, libraries: &str, plugins: &str, routes: &str) -> String {
    format!(
        "listen: {addr}\nlibraries:\n{libraries}\nplugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n{routes}\n"
    )
}

fn main_library_yaml() -> String {
    format!(
        "  - {{ name: examples, path: {:?} }}",
        library("main").display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_plugins_over_real_http() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(
        addr,
        upstream,
        &main_library_yaml(),
        "  - { name: timing, library: examples, plugin: timing-logger }\n\
         \x20 - { name: rewrite, library: examples, plugin: header-rewriter, config: { request_set: { x-added: by-go }, response_set: { x-served-by: weft } } }\n\
         \x20 - { name: auth, library: examples, plugin: bearer-auth, config: { tokens: [t0ken] } }\n\
         \x20 - { name: crlf, library: examples, plugin: test-bad-header }\n\
         \x20 - { name: boom, library: examples, plugin: test-panic }",
        "  - { path_prefix: /private, upstream: up, plugins: [timing, auth, rewrite] }\n\
         \x20 - { path_prefix: /crlf, upstream: up, plugins: [crlf] }\n\
         \x20 - { path_prefix: /panic, upstream: up, plugins: [boom] }\n\
         \x20 - { path_prefix: /, upstream: up, plugins: [timing, rewrite] }",
    );
    let mut proxy = ProxyProcess::spawn("http", &yaml, addr);
    tokio::task::block_in_place(|| proxy.wait_ready());

    // A header added by a plugin reaches the upstream, and a response header reaches the client.
    let (status, headers, seen) = get(addr, "/hello?q=1", &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-added"], "by-go");
    assert_eq!(headers["x-served-by"], "weft");

    // Per-request state: the sequence number the timing plugin took in the request phase is the
    // one it reports in the response phase and in its log line after the response.
    let seq = seen["headers"]["x-weft-seq"]
        .as_str()
        .expect("x-weft-seq reached the upstream")
        .to_owned();
    assert_eq!(headers["x-weft-seq"], seq.as_str());
    let line = format!("timing-logger seq={seq} method=GET path=/hello status=200 dur_us=");
    let log = tokio::task::block_in_place(|| proxy.wait_log(&line));
    assert!(!log.contains("state=missing"), "{log}");

    // The auth plugin's local reply: 401 with a JSON body, upstream never contacted.
    let (status, headers, body) = get(addr, "/private/x", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "unauthorized");
    let (status, _, seen) = get(addr, "/private/x", &[("authorization", "Bearer t0ken")]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-added"], "by-go");

    // A mutation with CR/LF in a header value is rejected: fail closed, logged with the plugin.
    let (status, _, _) = get(addr, "/crlf", &[("x-test-crlf", "1")]).await;
    assert_eq!(status, 500);
    let log = tokio::task::block_in_place(|| proxy.wait_log("invalid value for header x-bad"));
    assert!(
        log.lines().any(|l| l.contains("plugin=crlf") && l.contains("x-bad")),
        "{log}"
    );
    let (status, _, seen) = get(addr, "/crlf", &[]).await;
    assert_eq!(status, 200);
    assert!(seen["headers"].get("x-bad").is_none());

    // A panicking handler gives 500, and the next request still works.
    let (status, _, _) = get(addr, "/panic", &[("x-test-panic", "1")]).await;
    assert_eq!(status, 500);
    tokio::task::block_in_place(|| proxy.wait_log("handler panicked"));
    for _ in 0..3 {
        let (status, _, _) = get(addr, "/panic", &[]).await;
        assert_eq!(status, 200);
    }
    assert!(proxy.child.try_wait().unwrap().is_none(), "proxy must still be running");
}

#[test]
fn plugin_built_for_another_abi_version_fails_to_load() {
    let libs = format!(
        "  - {{ name: old, path: {:?} }}",
        library("abi99").display().to_string()
    );
    let yaml = config(
        free_port(),
        free_port(),
        &libs,
        "  []",
        "  - { path_prefix: /, upstream: up }",
    );
    let (ok, err) = ProxyProcess::spawn("abi", &yaml, free_port()).wait_exit();
    assert!(!ok, "the proxy must refuse to start");
    assert!(
        err.contains("built for weft ABI version 99") && err.contains("speaks ABI version 1"),
        "{err}"
    );
}

#[test]
fn second_go_library_is_refused() {
    let libs = format!(
        "{}\n  - {{ name: other, path: {:?} }}",
        main_library_yaml(),
        library("abi99").display().to_string()
    );
    let yaml = config(
        free_port(),
        free_port(),
        &libs,
        "  []",
        "  - { path_prefix: /, upstream: up }",
    );
    let (ok, err) = ProxyProcess::spawn("second", &yaml, free_port()).wait_exit();
    assert!(!ok, "the proxy must refuse to start");
    assert!(err.contains("Only one Go runtime can live in a process"), "{err}");
    assert!(
        err.contains("libweft_plugins_abi99.so"),
        "names the refused library: {err}"
    );
}

#[test]
fn failing_plugin_init_refuses_start_naming_the_plugin() {
    let yaml = config(
        free_port(),
        free_port(),
        &main_library_yaml(),
        "  - { name: gatekeeper, library: examples, plugin: bearer-auth, config: { tokens: [] } }",
        "  - { path_prefix: /, upstream: up, plugins: [gatekeeper] }",
    );
    let (ok, err) = ProxyProcess::spawn("init", &yaml, free_port()).wait_exit();
    assert!(!ok);
    assert!(
        err.contains("gatekeeper") && err.contains("failed to initialise"),
        "{err}"
    );
}
