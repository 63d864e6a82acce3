//! Operability through the real `weft-proxy` binary: the admin listener (metrics scraped and
//! parsed, health, readiness), graceful shutdown on SIGTERM, config reload under load (SIGHUP
//! and `POST /reload`), and `check` on broken configs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod common;

use common::{ProxyProcess, Spawn, TempDir, free_port, go_library, metric, scrape, wait_metrics};

/// Starts the proxy with `RUST_LOG` unset (the config's log level applies) and waits for it.
fn start_proxy(tag: &str, yaml: &str, addr: SocketAddr) -> ProxyProcess {
    let opts = Spawn {
        rust_log: None,
        ..Spawn::default()
    };
    ProxyProcess::start_with(tag, yaml, addr, opts)
}

/// A test upstream answering `<name> <path>`, after `delay` for paths with `/slow` in them. Answers
/// with the request's `x-request-id` in `x-seen-request-id` and `x-gen` in `x-seen-gen`.
async fn spawn_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                if req.uri().path().contains("/slow") {
                    tokio::time::sleep(delay).await;
                }
                let mut text = format!("{name} {}", req.uri().path());
                let echo = req.uri().path().starts_with("/echo");
                let headers = req.headers().clone();
                if echo {
                    // `/echo…`: the body read to its end and sent back after the path.
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    text = format!("{text} {}", String::from_utf8_lossy(&body));
                }
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                if let Some(id) = headers.get("x-request-id") {
                    resp.headers_mut().insert("x-seen-request-id", id.clone());
                }
                if let Some(g) = headers.get("x-gen") {
                    resp.headers_mut().insert("x-seen-gen", g.clone());
                }
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

type Client0 = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> Client0 {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(c: &Client0, method: Method, url: String) -> Result<(StatusCode, http::HeaderMap, String), String> {
    // `POST /reload` needs X-Weft-Admin (admin.rs); other endpoints ignore it.
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-weft-admin", "1")
        .body(Empty::new())
        .unwrap();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, String) {
    call(&client(), Method::GET, format!("http://{addr}{path}"))
        .await
        .unwrap()
}

/// Waits until a request on a plugin route is in flight (it holds an arena slot).
async fn wait_in_flight(admin: SocketAddr) {
    wait_metrics(admin, "a request in flight", |m| {
        m.get("weft_arena_slots_in_use") == Some(&1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    let up = spawn_upstream("up", Duration::from_millis(400)).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin}, plugin_timing: true }}\naccess_log: true\n\
         libraries: [{{ name: examples, path: {lib:?} }}]\n\
         plugins:\n  - {{ name: rewrite, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-a: b }} }} }}\n\
         \x20 - {{ name: boom, library: examples, plugin: test-panic }}\n\
         \x20 - {{ name: auth, library: examples, plugin: bearer-auth, config: {{ tokens: [s3cret] }} }}\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\n\
         routes:\n  - {{ name: api, path_prefix: /api, upstream: up, plugins: [rewrite] }}\n\
         \x20 - {{ name: panic, path_prefix: /panic, upstream: up, plugins: [boom] }}\n\
         \x20 - {{ name: auth, path_prefix: /auth, upstream: up, plugins: [auth] }}\n",
        lib = go_library("test").display().to_string()
    );
    let proxy = start_proxy("metrics", &yaml, addr);

    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let before = scrape(admin).await;
    assert_eq!(metric(&before, "weft_ready"), 1.0);
    assert_eq!(metric(&before, "weft_arena_slots"), 1024.0);

    for _ in 0..3 {
        let (status, headers, body) = get(addr, "/api/x").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "up /api/x"));
        // The generated request id reached the upstream and comes back to the client.
        assert_eq!(headers["x-request-id"], headers["x-seen-request-id"]);
    }
    // A request id from the client is kept.
    let req = Request::get(format!("http://{addr}/api/id"))
        .header("x-request-id", "client-id-1")
        .body(Empty::new())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.headers()["x-seen-request-id"], "client-id-1");
    assert_eq!(get(addr, "/nowhere").await.0, 404);
    assert_eq!(
        call(&client(), Method::GET, format!("http://{addr}/panic"))
            .await
            .map(|r| r.0),
        Ok(StatusCode::OK)
    );
    let req = Request::get(format!("http://{addr}/panic"))
        .header("x-test-panic", "1")
        .body(Empty::new())
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 500);
    // The auth plugin's 401 body goes out from the arena slot the Go handler wrote it to: the
    // bytes are counted as shared, none as copied.
    let (status, _, body) = get(addr, "/auth").await;
    assert_eq!(status, 401);
    assert!(body.contains("error"), "{body}");
    let after_auth = scrape(admin).await;
    assert_eq!(
        metric(&after_auth, "weft_plugin_output_bytes_shared_total"),
        body.len() as f64
    );
    assert_eq!(metric(&after_auth, "weft_plugin_output_bytes_copied_total"), 0.0);

    // A request in flight on a plugin route holds an arena slot; the high-water mark keeps it.
    let slow = tokio::spawn(async move { get(addr, "/api/slow").await });
    wait_in_flight(admin).await;
    let during = scrape(admin).await;
    assert_eq!(metric(&during, "weft_arena_slots_in_use"), 1.0);
    assert_eq!(slow.await.unwrap().0, 200);

    let m = scrape(admin).await;
    let api = |s: &str| metric(&m, &format!("weft_requests_total{{route=\"api\",status=\"{s}\"}}"));
    assert_eq!(api("2xx"), 5.0);
    assert_eq!(api("5xx"), 0.0);
    assert_eq!(metric(&m, r#"weft_requests_total{route="panic",status="5xx"}"#), 1.0);
    assert_eq!(metric(&m, r#"weft_requests_total{route="panic",status="2xx"}"#), 1.0);
    assert_eq!(metric(&m, r#"weft_requests_total{route="<none>",status="4xx"}"#), 1.0);
    assert_eq!(metric(&m, r#"weft_request_duration_seconds_count{route="api"}"#), 5.0);
    // admin.plugin_timing: every in-process call is timed, per instance and phase.
    assert_eq!(
        metric(
            &m,
            r#"weft_plugin_phase_duration_seconds_count{plugin="rewrite",phase="request_headers"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            r#"weft_plugin_phase_duration_seconds_count{plugin="boom",phase="request_headers"}"#
        ),
        2.0
    );
    assert!(
        metric(
            &m,
            r#"weft_plugin_phase_duration_seconds_sum{plugin="rewrite",phase="request_headers"}"#
        ) > 0.0
    );
    assert_eq!(
        metric(&m, r#"weft_request_duration_seconds_bucket{route="api",le="+Inf"}"#),
        5.0
    );
    // The slow one took over 400 ms: not in the 250 ms bucket.
    assert_eq!(
        metric(&m, r#"weft_request_duration_seconds_bucket{route="api",le="0.25"}"#),
        4.0
    );
    assert!(metric(&m, r#"weft_request_duration_seconds_sum{route="api"}"#) > 0.0);
    // The chain's phase ran once per request; its histogram counts it.
    assert_eq!(
        metric(
            &m,
            r#"weft_chain_phase_duration_seconds_count{route="api",phase="request_headers"}"#
        ),
        5.0
    );
    assert!(metric(&m, "weft_plugin_failures_total") >= 1.0);
    // No fail-open instance failed here: the series is exported and still zero.
    assert_eq!(metric(&m, "weft_plugin_fail_open_passes_total"), 0.0);
    assert!(metric(&m, "weft_arena_slots_high_water") >= 1.0);
    assert_eq!(metric(&m, "weft_arena_exhausted_total"), 0.0);
    assert_eq!(metric(&m, "weft_log_phase_dropped_total"), 0.0);
    assert!(metric(&m, "weft_log_queue_depth") >= 0.0);
    // Every request was logged to the access log.
    let log = proxy.wait_log("client-id-1");
    assert!(
        log.lines()
            .any(|l| l.contains("weft::access") && l.contains("status=404")),
        "{log}"
    );
    assert_eq!(log.matches("weft::access").count(), 9, "{log}");
}

/// The arena keeps its own high-water mark as slots leave its free list: a burst of requests
/// that came and went between two scrapes shows in it, and no thread wakes to sample it (the
/// control thread sleeps through a second of requests holding slots; a 10 ms sampler there woke
/// it ~100 times in that second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arena_high_water_sees_a_burst_without_a_sampling_thread() {
    let up = spawn_upstream("up", Duration::from_millis(300)).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nworkers: 2\nadmin: {{ listen: {admin} }}\n\
         libraries: [{{ name: examples, path: {lib:?} }}]\n\
         plugins: [{{ name: rewrite, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-a: b }} }} }}]\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\n\
         routes: [{{ name: api, path_prefix: /api, upstream: up, plugins: [rewrite] }}]\n",
        lib = go_library("test").display().to_string()
    );
    let proxy = start_proxy("high-water", &yaml, addr);
    wait_metrics(admin, "the proxy", |m| m.get("weft_ready") == Some(&1.0)).await;

    const BURST: usize = 150;
    let burst: Vec<_> = (0..BURST)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/api/slow/{i}")).await.0 }))
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    let m = scrape(admin).await;
    assert_eq!(metric(&m, "weft_arena_slots_in_use"), 0.0);
    // Each serving thread's cache may lease up to 2 × 16 slots unseen (`Arena::high_water`).
    let seen = metric(&m, "weft_arena_slots_high_water");
    assert!(
        (BURST as f64 - 64.0..=BURST as f64).contains(&seen),
        "a burst of {BURST} requests holding slots at once: high water {seen}"
    );

    // A second of requests in flight, no scrape: the control thread is not woken for the arena.
    let pid = proxy.child.id();
    let before = weft_test_support::process_thread_wakeups(pid, "weft-control");
    let until = Instant::now() + Duration::from_secs(1);
    let load: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                while Instant::now() < until {
                    assert_eq!(get(addr, "/api/slow").await.0, StatusCode::OK);
                }
            })
        })
        .collect();
    for l in load {
        l.await.unwrap();
    }
    let woke = weft_test_support::process_thread_wakeups(pid, "weft-control") - before;
    assert!(
        woke <= 10,
        "the control thread woke {woke} times in a second of requests"
    );
    assert!(metric(&scrape(admin).await, "weft_arena_slots_high_water") >= seen);
}

/// Reads from `stream` until every one of `needles` came (10 s at most).
async fn read_responses(stream: &mut tokio::net::TcpStream, needles: &[&str]) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !needles.iter().all(|n| String::from_utf8_lossy(&got).contains(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("{other:?} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8(got).unwrap()
}

/// Plain requests and bodies framed by a length or chunked are served on the lean HTTP/1.1 path,
/// and the first request it does not serve hands its connection to hyper's server with the bytes
/// already read: everything is answered, in order, on one connection, and the hand-off is counted
/// by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_requests_and_hand_offs_to_hyper_on_one_connection() {
    use tokio::io::AsyncWriteExt;
    let up = spawn_upstream("up", Duration::ZERO).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\n\
         routes: [{{ name: all, upstream: up }}]\n"
    );
    let _proxy = start_proxy("handoff", &yaml, addr);
    let before = scrape(admin).await;
    assert_eq!(metric(&before, r#"weft_http1_handoffs_total{reason="body"}"#), 0.0);

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two plain requests pipelined, three bodies the lean path reads (a length, chunked, one with
    // `expect: 100-continue` sent without waiting), one it hands over (`te`), and one after it, in
    // one write.
    conn.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /echo-c HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
          PUT /echo-d HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          POST /echo-x HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\nz\
          POST /echo-e HTTP/1.1\r\nhost: x\r\nte: trailers\r\ncontent-length: 2\r\n\r\nxy\
          GET /f HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let answers = [
        "up /a",
        "up /b",
        "up /echo-c abc",
        "up /echo-d abcde",
        "up /echo-x z",
        "up /echo-e xy",
        "up /f",
    ];
    let got = read_responses(&mut conn, &answers).await;
    let order: Vec<_> = answers.iter().map(|n| got.find(n).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{got}");
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 7, "{got}");
    assert!(!got.contains("100 Continue"), "the body came without waiting: {got}");

    // An HTTP/1.0 request, on a connection of its own.
    let mut c10 = tokio::net::TcpStream::connect(addr).await.unwrap();
    c10.write_all(b"GET /e HTTP/1.0\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(
        read_responses(&mut c10, &["up /e"])
            .await
            .starts_with("HTTP/1.0 200 OK")
    );
    // A POST with `content-length: 0` has no body: served on the lean path, not handed over.
    let mut c0 = tokio::net::TcpStream::connect(addr).await.unwrap();
    c0.write_all(b"POST /f HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut c0, &["up /f", "up /g"]).await;
    let after = scrape(admin).await;
    let count = |reason: &str| metric(&after, &format!("weft_http1_handoffs_total{{reason=\"{reason}\"}}"));
    assert_eq!(
        (count("body"), count("te"), count("http10"), count("connection")),
        (0.0, 1.0, 1.0, 0.0)
    );
    assert_eq!(metric(&after, r#"weft_requests_total{route="all",status="2xx"}"#), 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let up = spawn_upstream("slow", Duration::from_millis(500)).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\nshutdown_timeout_ms: 5000\n\
         libraries: [{{ name: examples, path: {lib:?} }}]\n\
         plugins: [{{ name: rw, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-a: b }} }} }}]\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\nroutes: [{{ upstream: up, plugins: [rw] }}]\n",
        lib = go_library("test").display().to_string()
    );
    let mut proxy = start_proxy("drain", &yaml, addr);
    let slow = tokio::spawn(async move { call(&client(), Method::GET, format!("http://{addr}/slow")).await });
    wait_in_flight(admin).await;
    let sent = Instant::now();
    proxy.signal("-TERM");
    // Readiness goes down and new connections are refused while the slow request finishes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(admin, "/readyz").await.0, 503, "not ready while draining");
    let (status, _, body) = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow /slow"));
    let (code, log) = tokio::task::block_in_place(|| proxy.wait_exit());
    assert_eq!(code, Some(0), "{log}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        sent.elapsed()
    );
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(
        log.contains("plugin shutdown hooks done") && log.contains("stopped"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_drain() {
    let up = spawn_upstream("slow", Duration::from_secs(30)).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\nshutdown_timeout_ms: 300\n\
         libraries: [{{ name: examples, path: {lib:?} }}]\n\
         plugins: [{{ name: rw, library: examples, plugin: header-rewriter }}]\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\nroutes: [{{ upstream: up, plugins: [rw] }}]\n",
        lib = go_library("test").display().to_string()
    );
    let mut proxy = start_proxy("timeout", &yaml, addr);
    let slow = tokio::spawn(async move { call(&client(), Method::GET, format!("http://{addr}/slow")).await });
    wait_in_flight(admin).await;
    let sent = Instant::now();
    proxy.signal("-INT"); // SIGINT drains like SIGTERM
    let (code, log) = tokio::task::block_in_place(|| proxy.wait_exit());
    assert_eq!(code, Some(0), "{log}");
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?}", sent.elapsed());
    assert!(log.contains("SIGINT: shutting down"), "{log}");
    assert!(log.contains("still open after the shutdown timeout"), "{log}");
    assert!(slow.await.unwrap().is_err(), "the request past the deadline is cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_switches_routes() {
    let a = spawn_upstream("A", Duration::from_millis(20)).await;
    let b = spawn_upstream("B", Duration::from_millis(20)).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = |up: SocketAddr, greeting: &str| {
        format!(
            "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
             libraries: [{{ name: examples, path: {lib:?} }}]\n\
             plugins: [{{ name: rw, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-gen: {greeting} }} }} }}]\n\
             upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\n\
             routes: [{{ name: main, upstream: up, plugins: [rw] }}]\n",
            lib = go_library("test").display().to_string()
        )
    };
    let proxy = start_proxy("reload", &yaml(a, "one"), addr);

    // Clients keep requests in flight (half of them slow) during the reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let path = if i % 2 == 0 { "/slow" } else { "/fast" };
            while !stop.load(Ordering::Relaxed) {
                match call(&c, Method::GET, format!("http://{addr}{path}")).await {
                    Ok((StatusCode::OK, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failed.lock().unwrap().push(format!("{other:?}"));
                        0
                    }
                };
            }
        }));
    }
    let admin_client = client();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let up = if round % 2 == 0 { b } else { a };
        std::fs::write(&proxy.config, yaml(up, &format!("g{round}"))).unwrap();
        if round == 3 {
            proxy.signal("-HUP");
            proxy.wait_log("SIGHUP: reloading the config");
        } else {
            let (status, _, body) = call(&admin_client, Method::POST, format!("http://{admin}/reload"))
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
        }
        // The route change and the plugin's new config are in effect for the next request.
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = if up == a { "A /fast" } else { "B /fast" };
        loop {
            let (_, headers, body) = get(addr, "/fast").await;
            if body == want && headers["x-seen-gen"] == format!("g{round}").as_str() {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: change not in effect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // An invalid config is rejected with every problem named, and the old one keeps serving.
    std::fs::write(
        &proxy.config,
        yaml(a, "bad").replace("upstream: up, plugins", "upstream: nope, plugins"),
    )
    .unwrap();
    let (status, _, body) = call(&admin_client, Method::POST, format!("http://{admin}/reload"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    // The answer names the field; the message is in the log.
    assert!(body.contains("  routes[0].upstream\n"), "{body}");
    proxy.wait_log("at routes[0].upstream: unknown upstream \"nope\"");
    // A plugin config its init refuses (unknown field) is rejected too, naming the instance.
    std::fs::write(
        &proxy.config,
        yaml(a, "x").replace("request_set: { x-gen: x }", "bogus: 1"),
    )
    .unwrap();
    let (status, _, body) = call(&admin_client, Method::POST, format!("http://{admin}/reload"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("  plugins[0]\n"), "{body}");
    proxy.wait_log("at plugins[0]: plugin instance rw (header-rewriter) failed to initialise");
    std::fs::write(&proxy.config, yaml(a, "{ broken")).unwrap();
    assert_eq!(
        call(&admin_client, Method::POST, format!("http://{admin}/reload"))
            .await
            .unwrap()
            .0,
        400
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} failed requests: {failed:?}", failed.len());
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
    // Round 5 went to A with g5; the rejected configs did not change that.
    let (_, headers, body) = get(addr, "/fast").await;
    assert_eq!(
        (body.as_str(), headers["x-seen-gen"].to_str().unwrap()),
        ("A /fast", "g5")
    );

    let m = scrape(admin).await;
    assert_eq!(metric(&m, r#"weft_config_reloads_total{result="ok"}"#), 6.0);
    assert_eq!(metric(&m, r#"weft_config_reloads_total{result="error"}"#), 3.0);
    assert_eq!(metric(&m, "weft_config_generation"), 7.0);
    let log = proxy.wait_log("config reload rejected");
    assert!(
        log.contains("replaced config retired"),
        "old generations get their shutdown hooks: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_log_level() {
    let up = spawn_upstream("up", Duration::ZERO).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = |level: &str| {
        format!(
            "listen: {addr}\nadmin: {{ listen: {admin} }}\naccess_log: true\nlog: {{ level: {level} }}\n\
             upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\nroutes: [{{ upstream: up }}]\n"
        )
    };
    let proxy = start_proxy("loglevel", &yaml("info"), addr);
    let with_id = |id: &'static str| async move {
        let req = Request::get(format!("http://{addr}/x"))
            .header("x-request-id", id)
            .body(Empty::new())
            .unwrap();
        assert_eq!(client().request(req).await.unwrap().status(), 200);
    };
    with_id("before-reload").await;
    proxy.wait_log("before-reload");
    std::fs::write(&proxy.config, yaml("warn")).unwrap();
    let (status, _, body) = call(&client(), Method::POST, format!("http://{admin}/reload"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    with_id("after-reload").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!proxy.stderr().contains("after-reload"), "{}", proxy.stderr());
}

/// `check` on broken configs: every problem, with file and field, and a non-zero exit.
#[test]
fn check_reports_every_problem() {
    let dir = TempDir::new("check");
    let lib = go_library("test").display().to_string();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax", "listen: [\n".into(), vec!["config error in", "syntax.yaml"]),
        (
            "fields",
            "listen: nowhere\nadmin: { listen: 127.0.0.1:1, extra: 1 }\nupstreams: []\nroutes: []\n".into(),
            vec!["fields.yaml at admin.extra: unknown field `extra`"],
        ),
        (
            "refs",
            "listen: 127.0.0.1:1\nadmin: { listen: 127.0.0.1:1 }\nshutdown_timeout_ms: 0\nlog: { level: \"x,[\" }\n\
             upstreams: [{ name: u, addresses: [\"127.0.0.1\"] }]\n\
             routes: [{ upstream: v, plugins: [p], path_prefix: api }]\n"
                .into(),
            vec![
                "refs.yaml at admin.listen: must differ from listen",
                "refs.yaml at shutdown_timeout_ms: must be at least 1",
                "refs.yaml at log.level: invalid filter",
                "refs.yaml at upstreams[0].addresses[0]: invalid address \"127.0.0.1\": missing port",
                "refs.yaml at routes[0].upstream: unknown upstream \"v\"",
                "refs.yaml at routes[0].path_prefix: must start with '/'",
                "refs.yaml at routes[0].plugins[0]: unknown plugin \"p\"",
            ],
        ),
        (
            "plugins",
            format!(
                "listen: 127.0.0.1:1\nlibraries: [{{ name: ex, path: {lib:?} }}, {{ name: gone, path: /nonexistent/lib.so }}]\n\
                 plugins:\n  - {{ name: a, library: ex, plugin: no-such-plugin }}\n\
                 \x20 - {{ name: b, library: ex, plugin: bearer-auth, config: {{ tokens: [] }} }}\n\
                 \x20 - {{ name: c, library: gone, plugin: x }}\n\
                 upstreams: [{{ name: u, addresses: [\"127.0.0.1:9\"] }}]\nroutes: [{{ upstream: u, plugins: [a, b, c] }}]\n"
            ),
            vec![
                "plugins.yaml at libraries[1]: library \"gone\": plugin library /nonexistent/lib.so: cannot read it",
                "plugins.yaml at plugins[0]: plugin instance a: library ex has no plugin named \"no-such-plugin\"",
                "plugins.yaml at plugins[1]: plugin instance b (bearer-auth) failed to initialise: bearer-auth: config.tokens must list at least one token",
                "plugins.yaml at plugins[2]: plugin instance c: library \"gone\" failed to load",
            ],
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{name}: check must fail:\n{text}");
        for e in expected {
            assert!(text.contains(e), "{name}: expected {e:?} in:\n{text}");
        }
    }
    // A good config passes.
    let path = dir.path().join("good.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:1\nadmin: {{ listen: 127.0.0.1:2 }}\nlibraries: [{{ name: ex, path: {lib:?} }}]\n\
             upstreams: [{{ name: u, addresses: [\"127.0.0.1:9\"] }}]\nroutes: [{{ upstream: u }}]\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn version_prints_abi_and_go_runtime() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!("ABI version {}", weft_runtime::abi::WEFT_ABI_VERSION)),
        "{text}"
    );

    let dir = TempDir::new("version");
    let path = dir.path().join("v.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:1\nlibraries: [{{ name: ex, path: {:?} }}]\n\
             upstreams: [{{ name: u, addresses: [\"127.0.0.1:9\"] }}]\nroutes: [{{ upstream: u }}]\n",
            go_library("test").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["version", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("library ex: Go go1."), "{text}");
}
