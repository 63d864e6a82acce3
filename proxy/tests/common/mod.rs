//! The process-level test harness shared by the end-to-end suites: the real `weft-proxy` binary
//! started on a config file, its stderr collected in the background, plugin libraries built by
//! the repo's scripts, free loopback ports and temporary directories that clean up after
//! themselves. Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Runs one of the repo's build scripts and returns the path it prints last.
pub fn run_script(script: &str, arg: &str) -> PathBuf {
    let out = Command::new(root().join(script))
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}

/// The Go plugin library (`scripts/build-plugins main`), built once per test binary.
pub fn go_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| run_script("scripts/build-plugins", "main"))
}

/// The same library reporting ABI version 99 (`scripts/build-plugins abi99`).
pub fn go_library_abi99() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| run_script("scripts/build-plugins", "abi99"))
}

/// The directory of the C plugins (`scripts/build-c-plugins plain`).
pub fn c_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_script("scripts/build-c-plugins", "plain"))
}

/// The C plugins built with AddressSanitizer (`scripts/build-c-plugins asan`).
pub fn c_plugins_asan() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_script("scripts/build-c-plugins", "asan"))
}

/// A loopback address nobody listens on right now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

    /// Starts the proxy with `RUST_LOG=info` without waiting for it.
    pub fn spawn(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
        Self::spawn_with(tag, yaml, addr, Spawn::default())
    }

    /// Starts the proxy and waits until it accepts connections.
    pub fn start(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
        let mut p = Self::spawn(tag, yaml, addr);
        p.wait_ready();
        p
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

/// GET `path` on `addr` with `headers`; the body parsed as JSON (or as a JSON string when it is
/// not JSON).
pub async fn get(
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

/// A config with one upstream `up`; `libraries`, `plugins` and `routes` are YAML list bodies.
pub fn config(addr: SocketAddr, upstream: SocketAddr, libraries: &str, plugins: &str, routes: &str) -> String {
    format!(
        "listen: {addr}\nlibraries:\n{libraries}\nplugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n{routes}\n"
    )
}
