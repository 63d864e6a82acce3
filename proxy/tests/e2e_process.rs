//! End to end through the real `weft-proxy` binary: a Go plugin library built by the Go
//! toolchain, the proxy as its own process on a loopback port, the demo upstream, real HTTP.
//! Start-up failures (wrong ABI, a second Go library, a failing init) are checked on the
//! process's exit status and stderr.

mod common;

use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, config, free_port, get, go_library, go_library_abi99};

fn main_library_yaml() -> String {
    format!(
        "  - {{ name: examples, path: {:?} }}",
        go_library().display().to_string()
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
        go_library_abi99().display().to_string()
    );
    let yaml = config(
        free_port(),
        free_port(),
        &libs,
        "  []",
        "  - { path_prefix: /, upstream: up }",
    );
    let (code, err) = ProxyProcess::spawn("abi", &yaml, free_port()).wait_exit();
    assert_ne!(code, Some(0), "the proxy must refuse to start");
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
        go_library_abi99().display().to_string()
    );
    let yaml = config(
        free_port(),
        free_port(),
        &libs,
        "  []",
        "  - { path_prefix: /, upstream: up }",
    );
    let (code, err) = ProxyProcess::spawn("second", &yaml, free_port()).wait_exit();
    assert_ne!(code, Some(0), "the proxy must refuse to start");
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
    let (code, err) = ProxyProcess::spawn("init", &yaml, free_port()).wait_exit();
    assert_ne!(code, Some(0));
    assert!(
        err.contains("gatekeeper") && err.contains("failed to initialise"),
        "{err}"
    );
}
