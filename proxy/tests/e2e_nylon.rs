//! A Nylon Go plugin through the real proxy: `cgo/examples/nylon-authz`, written against Nylon's
//! SDK surface with only the import path changed (package weft/nylon/sdk), built by the Go
//! toolchain as its own c-shared library, loaded by `weft-proxy run`, real HTTP over loopback.
//! Its filters run in weft's phases: the request filter answers (401) or continues, the response
//! filter's headers reach the client (the framing headers it touches are ignored), the body
//! filter rewrites the whole body, the logging filter sees the request's closure state.

mod common;

use std::path::PathBuf;
use std::process::Command;

use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, TempDir, config, free_port, get, root};

/// Builds the example into `dir`; panics with Go's output on failure.
fn build_nylon_authz(dir: &TempDir) -> PathBuf {
    let lib = dir.path().join("libnylon_authz.so");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". scripts/env.sh && cd cgo && go build -buildmode=c-shared -o {:?} ./examples/nylon-authz",
            lib
        ))
        .current_dir(root())
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nylon_authz_plugin_through_the_proxy() {
    let dir = TempDir::new("nylon");
    let lib = build_nylon_authz(&dir);
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(
        addr,
        upstream,
        &format!("  - {{ name: nylon, path: {:?} }}", lib.display().to_string()),
        "  - { name: authz, library: nylon, plugin: authz, config: { token: t0ken, debug: true } }",
        "  - { path_prefix: /, upstream: up, plugins: [authz] }",
    );
    let mut proxy = ProxyProcess::spawn("nylon", &yaml, addr);
    tokio::task::block_in_place(|| proxy.wait_ready());
    proxy.wait_log("[NylonPlugin] initialized, debug=true");

    // Denied by the request filter: its local reply, the upstream not contacted.
    let (status, headers, body) = get(addr, "/secret", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "unauthorized");

    // Allowed: headers from the request and response filters, the body rewritten. A 200 also
    // says the framing headers the response filter touched were left out of the batch (the
    // host refuses them, which would fail the phase).
    let (status, headers, body) = get(addr, "/secret?x=1", &[("authorization", "Bearer t0ken")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-requestfilter"], "authz-1");
    assert_eq!(headers["x-responsefilter"], "authz-2");
    assert_eq!(
        headers["x-authz"], "passed",
        "per-request state carried from the request filter"
    );
    let text = body.as_str().expect("the body is no longer plain JSON");
    assert!(text.ends_with("\n<!-- Modified by Authz plugin -->"), "{text}");
    assert!(
        text.contains("\"path\": \"/secret\""),
        "the upstream's body comes first: {text}"
    );

    let log = tokio::task::block_in_place(|| proxy.wait_log("Authz[Go] Log: GET /secret | Status: 200"));
    assert!(log.contains("Client: 127.0.0.1 | authz=true"), "{log}");
}
