//! A plugin author's first minutes, end to end: `weft-proxy new-plugin` writes a project in a
//! temporary directory with no repository around it, its `go test` passes, `go build
//! -buildmode=c-shared` builds the library, and `weft-proxy run -c weft.yaml` in that directory
//! serves a request through the new plugin. Go runs offline (GOPROXY=off): the project must
//! need nothing but the SDK named in its go.mod.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_proxy::demo::spawn_demo_upstream;

use common::{TempDir, collect, free_port, get, root};

/// The proxy started in the project directory; killed on drop.
struct Proxy {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            let log = || self.stderr.lock().unwrap().clone();
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited early ({status}):\n{}", log());
            }
            assert!(Instant::now() < deadline, "proxy not ready:\n{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `go args` in `dir` with the repository's toolchain setup, offline; panics with the
/// output on failure.
fn go(dir: &Path, args: &str) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". {}/scripts/env.sh && go {args}", root().display()))
        .current_dir(dir)
        .env("GOPROXY", "off")
        .env("GOWORK", "off")
        .env_remove("GOFLAGS")
        .output()
        .expect("run go");
    assert!(
        out.status.success(),
        "go {args} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffolded_project_tests_builds_and_serves() {
    let tmp = TempDir::new("new-plugin");
    let dir = tmp.path().join("hello-weft");
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .arg("new-plugin")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    go(&dir, "vet ./...");
    go(&dir, "test -count=1 ./...");
    go(&dir, "build -buildmode=c-shared -o libhello-weft.so ./cmd/plugin");

    // The generated weft.yaml as written, but on ports this test owns.
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let config = dir.join("weft.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("listen: 127.0.0.1:8080") && yaml.contains("\"127.0.0.1:9000\""));
    let yaml = yaml
        .replace("listen: 127.0.0.1:8080", &format!("listen: {addr}"))
        .replace("\"127.0.0.1:9000\"", &format!("\"{upstream}\""));
    std::fs::write(&config, yaml).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["run", "-c", "weft.yaml"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    let mut proxy = Proxy { child, stderr };
    tokio::task::block_in_place(|| proxy.wait_ready(addr));

    let (status, headers, seen) = get(addr, "/x", &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        seen["headers"]["x-greeting"], "hello",
        "the request header reached the upstream"
    );
    assert_eq!(headers["x-plugin"], "hello-weft");
}

#[test]
fn refuses_bad_names_and_missing_sdk() {
    let tmp = TempDir::new("new-plugin-bad");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .arg("new-plugin")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tmp.path().join("p");
    let dir = dir.to_str().unwrap();
    assert!(run(&[dir, "--name", "Bad Name"]).contains("--name"));
    assert!(run(&[dir, "--sdk", "/nonexistent"]).contains("--sdk"));
    assert!(!Path::new(dir).exists(), "a refused project leaves nothing behind");
}
