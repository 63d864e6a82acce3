//! End to end through the real `weft-proxy` binary: a Go plugin library built by the Go
//! toolchain, the proxy as its own process on a loopback port, the demo upstream, real HTTP.
//! Start-up failures (wrong ABI, a second Go library, a failing init) are checked on the
//! process's exit status and stderr. Also: a slow log phase never holds the client, and the
//! `weft-proxy demo` command answers the requests it prints.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_proxy::demo::spawn_demo_upstream;

use common::{HttpClient, ProxyProcess, collect, config, free_port, get, get_with, go_library, wait_for};

fn main_library_yaml() -> String {
    format!(
        "  - {{ name: examples, path: {:?} }}",
        go_library("test").display().to_string()
    )
}

/// A proxy (`tag`) on a free port in front of the demo upstream, with the example Go library and
/// these plugin instances and routes; returns it once it answers, and its address.
async fn go_proxy(tag: &str, plugins: &str, routes: &str) -> (ProxyProcess, SocketAddr) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let yaml = config(addr, upstream, &main_library_yaml(), plugins, routes);
    let mut proxy = ProxyProcess::spawn(tag, &yaml, addr);
    tokio::task::block_in_place(|| proxy.wait_ready());
    (proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_plugins_over_real_http() {
    let (mut proxy, addr) = go_proxy(
        "http",
        "  - { name: timing, library: examples, plugin: timing-logger }\n\
         \x20 - { name: rewrite, library: examples, plugin: header-rewriter, config: { request_set: { x-added: by-go }, response_set: { x-served-by: weft } } }\n\
         \x20 - { name: auth, library: examples, plugin: bearer-auth, config: { tokens: [t0ken] } }\n\
         \x20 - { name: crlf, library: examples, plugin: test-bad-header }\n\
         \x20 - { name: boom, library: examples, plugin: test-panic }",
        "  - { path_prefix: /private, upstream: up, plugins: [timing, auth, rewrite] }\n\
         \x20 - { path_prefix: /crlf, upstream: up, plugins: [crlf] }\n\
         \x20 - { path_prefix: /panic, upstream: up, plugins: [boom] }\n\
         \x20 - { path_prefix: /, upstream: up, plugins: [timing, rewrite] }",
    )
    .await;

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
        go_library("abi99").display().to_string()
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
        go_library("abi99").display().to_string()
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
    assert!(
        err.contains(&format!(
            "the Go library {} is already loaded",
            go_library("test").display()
        )),
        "names the library already loaded: {err}"
    );
    // What to do instead: one library for all Go plugins, or the other one as a NATS worker.
    assert!(
        err.contains("build all Go plugins into one c-shared library"),
        "advises one library: {err}"
    );
    assert!(err.contains("or run this one as a NATS worker"), "advises NATS: {err}");
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
    // The plugin's own reason, and where in the config the instance is.
    assert!(
        err.contains("bearer-auth: config.tokens must list at least one token"),
        "gives the plugin's reason: {err}"
    );
    assert!(err.contains("at plugins[0]"), "names the config field: {err}");
}

/// A log phase that takes 2 s (test-slow-log sleeps for x-test-log-sleep-ms) never holds the
/// client when it runs on the log thread, all of it (`runtime.log_phase: thread`) or because the
/// instance is `blocking: true` (inline, the default, its log calls then go to the log thread's
/// worker ring): each full response arrives at once, also the next one on the same connection
/// while the log phase is still asleep, and the log lines appear afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_log_phase_on_the_log_thread_never_delays_the_client() {
    for (tag, instance, runtime) in [
        ("slowlog-thread", "", "runtime: { log_phase: thread }"),
        ("slowlog-blocking", ", blocking: true", ""),
    ] {
        let (mut proxy, addr) = go_proxy(
            tag,
            &format!("  - {{ name: slowlog, library: examples, plugin: test-slow-log{instance} }}"),
            &format!("  - {{ path_prefix: /, upstream: up, plugins: [slowlog] }}\n{runtime}"),
        )
        .await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        for i in 0..2 {
            // One client, so the second request reuses the first one's connection.
            let took = slow_log_request(&client, addr, &mut proxy, i).await;
            assert!(
                took < Duration::from_secs(1),
                "{tag}: request {i} took {took:?}: the client waited for the {SLOW_LOG_MS} ms log phase"
            );
        }
        // Both log phases ran.
        for i in 0..2 {
            let line = format!("test-slow-log slept_ms={SLOW_LOG_MS} path=/slow-log/{i}");
            let log = tokio::task::block_in_place(|| proxy.wait_log(&line));
            assert!(
                log.lines().any(|l| l.contains(&line) && l.contains("slowlog")),
                "{tag}: the line names the instance: {log}"
            );
        }
        proxy.assert_running();
    }
}

/// The same slow log plugin inline (the default, not `blocking: true`): its log phase runs on
/// the serving thread after the response was written, so the response still arrives at once,
/// but the log phase holds that thread as any slow inline call does: the next request on the
/// connection waits for it, and the watchdog reports the call, naming the instance, the log
/// phase and the `blocking: true` advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_inline_log_phase_runs_after_its_response_and_is_reported() {
    let (mut proxy, addr) = go_proxy(
        "slowlog-inline",
        "  - { name: slowlog, library: examples, plugin: test-slow-log }",
        "  - { path_prefix: /, upstream: up, plugins: [slowlog] }",
    )
    .await;
    // One connection of our own, so the second request surely goes to the same serving thread.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (body, took) = keep_alive_get(&mut conn, "/slow-log/0").await;
    assert!(body.contains("\"/slow-log/0\""), "the whole body arrived: {body}");
    assert!(
        took < Duration::from_secs(1),
        "the response waited for its log phase: {took:?}"
    );
    let line = format!("test-slow-log slept_ms={SLOW_LOG_MS} path=/slow-log/0");
    assert!(!proxy.stderr().contains(&line), "the log phase ran before the response");
    let (body, took) = keep_alive_get(&mut conn, "/slow-log/1").await;
    assert!(body.contains("\"/slow-log/1\""), "{body}");
    assert!(
        took > Duration::from_millis(SLOW_LOG_MS / 2),
        "the next request on the connection is served by the thread the log phase holds: {took:?}"
    );
    let log = tokio::task::block_in_place(|| proxy.wait_log("inline plugin call still running"));
    assert!(
        log.lines().any(|l| l.contains("inline plugin call still running")
            && l.contains("slowlog")
            && l.contains("Log")
            && l.contains("blocking: true")),
        "{log}"
    );
    let line = format!("test-slow-log slept_ms={SLOW_LOG_MS} path=/slow-log/1");
    tokio::task::block_in_place(|| proxy.wait_log(&line));
    proxy.assert_running();
}

/// GET `path` with a log phase of [`SLOW_LOG_MS`] on the keep-alive connection `conn`: the
/// response's body (framed by its content-length) and how long it took to arrive whole.
async fn keep_alive_get(conn: &mut tokio::net::TcpStream, path: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-test-log-sleep-ms: {SLOW_LOG_MS}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut read_more = async |buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("answered within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "the proxy closed the connection: {}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let body_at = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(&mut buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .trim()
        .parse()
        .unwrap();
    while buf.len() < body_at + len {
        read_more(&mut buf).await;
    }
    (
        String::from_utf8_lossy(&buf[body_at..body_at + len]).into_owned(),
        start.elapsed(),
    )
}

const SLOW_LOG_MS: u64 = 2000;

/// GET /slow-log/`i` with a log phase of [`SLOW_LOG_MS`]: the whole response arrived, and its
/// log line is not there yet (its log phase started no earlier than the request did: it runs
/// after the response, not before). How long the response took.
async fn slow_log_request(client: &HttpClient, addr: SocketAddr, proxy: &mut ProxyProcess, i: u32) -> Duration {
    let path = format!("/slow-log/{i}");
    let start = Instant::now();
    let sleep = SLOW_LOG_MS.to_string();
    let (status, _, seen) = get_with(client, addr, &path, &[("x-test-log-sleep-ms", &sleep)]).await;
    let took = start.elapsed();
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], path.as_str(), "the whole body arrived: {seen}");
    let line = format!("test-slow-log slept_ms={SLOW_LOG_MS} path={path}");
    let log = proxy.stderr();
    if start.elapsed() < Duration::from_millis(SLOW_LOG_MS) {
        assert!(!log.contains(&line), "the log phase ran before the response: {log}");
    }
    took
}

/// `weft-proxy demo` (what scripts/demo runs) as its own process on a free port: the curl
/// lines it prints work as printed, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_command_answers_the_requests_it_prints() {
    let (addr, tls_addr) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .arg("demo")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--listen-tls")
        .arg(tls_addr.to_string())
        .arg("--library")
        .arg(go_library("test"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft-proxy demo");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut demo = KillOnDrop(child);
    let output = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        )
    };

    // Ready: it accepts connections and has printed its curl lines (the last one names the
    // catch-all route).
    tokio::task::block_in_place(|| {
        wait_for("the demo to start", Duration::from_secs(30), || {
            if let Some(status) = demo.0.try_wait().unwrap() {
                panic!("the demo exited early ({status}):\n{}", output());
            }
            TcpStream::connect(addr).is_ok() && stdout.lock().unwrap().contains("catch-all route")
        })
    });
    let printed = stdout.lock().unwrap().clone();
    let upstream = printed
        .split("demo upstream on http://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no upstream address printed: {}", output()))
        .to_owned();
    // The printed curl lines: "curl <options> '<url>'   # comment".
    let curl = |needle: &str| -> (String, Vec<(String, String)>) {
        let line = printed
            .lines()
            .find(|l| l.trim_start().starts_with("curl ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no curl line with {needle:?}: {}", output()));
        let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        let url = quoted
            .iter()
            .find(|q| q.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        let path = url
            .strip_prefix(&format!("http://{addr}"))
            .unwrap_or_else(|| panic!("{line:?} does not point at {addr}"));
        let headers = line
            .split("-H '")
            .skip(1)
            .map(|h| {
                let (name, value) = h.split('\'').next().unwrap().split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        (path.to_owned(), headers)
    };
    let send = |(path, headers): (String, Vec<(String, String)>)| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        get(addr, &path, &headers).await
    };

    // Every route runs header-rewriter: a request header for the upstream, a response header.
    let (status, headers, seen) = send(curl("/hello?name=weft")).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["query"], "name=weft");
    assert_eq!(seen["upstream"], upstream.as_str(), "the demo upstream answered");
    assert_eq!(seen["headers"]["x-demo"], "set by a Go plugin");
    assert_eq!(headers["x-powered-by"], "weft");

    // /api is guarded by bearer-auth: 401 without the token, forwarded with it.
    let (status, headers, body) = send(curl("# 401")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "unauthorized");
    let (path, auth) = curl("authorization: Bearer");
    assert_eq!(path, "/api/items");
    let (status, _, seen) = send((path, auth)).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/api/items");
    assert_eq!(seen["headers"]["x-weft-auth"], "ok");
    assert_eq!(seen["headers"]["x-demo"], "set by a Go plugin");

    // The HTTPS line, run as printed: HTTP/2 over TLS with the generated certificate.
    let https = tokio::task::block_in_place(|| {
        wait_for("the HTTPS line", Duration::from_secs(10), || {
            stdout.lock().unwrap().contains("https://")
        });
        let out = stdout.lock().unwrap().clone();
        let line = out.lines().find(|l| l.contains("https://")).unwrap().trim().to_owned();
        assert!(line.starts_with("curl -s --http2 --cacert "), "{line}");
        Command::new("sh").arg("-c").arg(&line).output().unwrap()
    });
    assert!(https.status.success(), "{}", String::from_utf8_lossy(&https.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&https.stdout).unwrap();
    assert_eq!(seen["path"], "/tls");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-demo"], "set by a Go plugin");

    // Stop it as Ctrl-C / kill would: it drains and exits 0.
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::task::block_in_place(|| {
        wait_for("the demo to exit", Duration::from_secs(30), || {
            demo.0.try_wait().unwrap().is_some()
        })
    });
    let status = demo.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", output());
}

/// Kills the child (if still running) when the test ends, also on a failed assertion.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
