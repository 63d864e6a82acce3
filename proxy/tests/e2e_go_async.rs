//! Asynchronous Go plugins end to end: the real `weft-proxy` binary, the real Go plugin library
//! (scripts/build-plugins: the Go SDK's `Context.Go`, its worker-ring consumer and the ext-auth
//! example) and real HTTP on loopback.
//! - `test-async` (`ctx.Go`): delayed completions reach the upstream, the per-request state
//!   survives into the response phase, concurrent calls overlap, a panic or an error in the
//!   goroutine follows the failure policy, a deadline shorter than the delay answers 504, and
//!   after the late completions (deadlines and clients that hung up) every slot is back;
//! - `test-blocking` (`Blocking: true`) on the Go worker pool: calls run in parallel, and a full
//!   in-flight limit or a full worker ring answers 503 with the configured Retry-After;
//! - the `ext-auth` example against a real HTTP authorization service started by the test.
//!
//! No timing-tight assertions: concurrency is checked against a bound far below the serial
//! time, and everything "later" is waited for with long timeouts.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use weft_proxy::demo::spawn_demo_upstream;

use common::{
    ProxyProcess, Spawn, abandon_pending_calls, check_in_flight_limit, free_port, get, get_concurrently, go_library,
    metric, scrape, wait_all_slots_back, wait_metrics,
};

/// Starts a proxy in front of a demo upstream (which answers with the request it saw, as JSON)
/// and waits for it: an admin listener, the Go library as `go`, the upstream as `up`, and
/// `sections` (YAML: `runtime`, `plugins`, `routes`); `env` is added to its environment.
/// Returns the proxy, its address and its admin address.
async fn start_go_proxy(tag: &str, sections: &str, env: &[(&str, String)]) -> (ProxyProcess, SocketAddr, SocketAddr) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\n\
         libraries:\n  - {{ name: go, path: {lib:?} }}\n\
         upstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n{sections}",
        lib = go_library("test").display().to_string(),
    );
    let opts = Spawn {
        env,
        ..Spawn::default()
    };
    let proxy = tokio::task::block_in_place(|| ProxyProcess::start_with(tag, &yaml, addr, opts));
    (proxy, addr, admin)
}

/// test-async with a long deadline, fail closed (`/`) and fail open (`/open`), and with a
/// deadline shorter than the delays the test asks for (`/short`).
const ASYNC: &str = "runtime: { slots: 256 }\n\
plugins:\n\
  - { name: async, library: go, plugin: test-async, deadline_ms: 10000 }\n\
  - { name: async-open, library: go, plugin: test-async, deadline_ms: 10000, failure: open }\n\
  - { name: async-short, library: go, plugin: test-async, deadline_ms: 200 }\n\
routes:\n\
  - { path_prefix: /open, upstream: up, plugins: [async-open] }\n\
  - { path_prefix: /short, upstream: up, plugins: [async-short] }\n\
  - { path_prefix: /, upstream: up, plugins: [async] }\n";

/// test-blocking on the worker pool (`/`), and with an in-flight limit of 2 (`/limited`).
const BLOCKING: &str = "runtime: { slots: 128 }\n\
plugins:\n\
  - { name: blocking, library: go, plugin: test-blocking, deadline_ms: 10000 }\n\
  - { name: limited, library: go, plugin: test-blocking, deadline_ms: 10000, max_in_flight: 2, retry_after_s: 7 }\n\
routes:\n\
  - { path_prefix: /limited, upstream: up, plugins: [limited] }\n\
  - { path_prefix: /, upstream: up, plugins: [blocking] }\n";

/// test-blocking behind worker rings of two descriptors.
const SMALL_RINGS: &str = "runtime: { slots: 128, worker_ring_capacity: 2 }\n\
plugins:\n\
  - { name: blocking, library: go, plugin: test-blocking, deadline_ms: 30000, retry_after_s: 5 }\n\
routes:\n\
  - { path_prefix: /, upstream: up, plugins: [blocking] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_async_completions_state_failures_deadlines_and_disconnects() {
    let (mut proxy, addr, admin) = start_go_proxy("go-async", ASYNC, &[]).await;
    let baseline = scrape(admin).await;
    assert_eq!(metric(&baseline, "weft_arena_slots_in_use"), 0.0);

    // A delayed completion from the plugin's goroutine: its header reaches the upstream, and the
    // per-request state it set is still there in the (synchronous) response phase.
    let (status, headers, seen) = get(addr, "/hello", &[("x-delay-ms", "100")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-async"], "done", "{seen}");
    assert_eq!(headers["x-async-state"], "kept");

    // Fifty calls pending at once complete in about one delay, not fifty (serially: 20 s).
    let (answers, took) = get_concurrently(addr, "/many", &[("x-delay-ms", "400")], 50).await;
    for (status, headers, seen) in answers {
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["headers"]["x-async"], "done", "{seen}");
        assert_eq!(headers["x-async-state"], "kept");
    }
    assert!(took < Duration::from_secs(10), "50 × 400 ms took {took:?}");

    // A panic in the goroutine is recovered and fails closed; the proxy keeps serving.
    let (status, _, body) = get(addr, "/p", &[("x-delay-ms", "50"), ("x-panic", "1")]).await;
    assert_eq!(status, 500, "{body}");
    tokio::task::block_in_place(|| proxy.wait_log("test-async: x-panic header present"));
    let (status, _, seen) = get(addr, "/after-panic", &[("x-delay-ms", "10")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-async"], "done", "{seen}");

    // An error from the goroutine: 500 when fail closed; unchanged when fail open (and the
    // state it never set is not reported).
    let (status, _, body) = get(addr, "/f", &[("x-delay-ms", "50"), ("x-fail", "1")]).await;
    assert_eq!(status, 500, "{body}");
    tokio::task::block_in_place(|| proxy.wait_log("test-async: x-fail header present"));
    let (status, headers, seen) = get(addr, "/open", &[("x-delay-ms", "50"), ("x-fail", "1")]).await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen["headers"].get("x-async").is_none(), "{seen}");
    assert!(headers.get("x-async-state").is_none(), "{headers:?}");
    let m = scrape(admin).await;
    assert!(metric(&m, "weft_plugin_fail_open_passes_total") >= 1.0);
    assert!(metric(&m, "weft_plugin_failures_total") >= 3.0);

    // A deadline (200 ms) shorter than the delay (3 s): 504 long before it; the goroutine still holds
    // the call, so its slot is kept until the late completion, then given back.
    let t = Instant::now();
    let (status, _, body) = get(addr, "/short", &[("x-delay-ms", "3000")]).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "answered at the deadline, not after the delay: {:?}",
        t.elapsed()
    );
    let m = scrape(admin).await;
    let late = |m: &common::Metrics| {
        metric(m, "weft_plugin_late_completions_total") - metric(&baseline, "weft_plugin_late_completions_total")
    };
    assert!(
        metric(&m, "weft_plugin_orphaned_slots") + late(&m) >= 1.0,
        "the timed-out call keeps its slot until the plugin completes it: {m:?}"
    );
    let log = tokio::task::block_in_place(|| proxy.wait_log("within its deadline of 200 ms"));
    assert!(
        log.lines()
            .any(|l| l.contains("plugin=async-short ") && l.contains("within its deadline of 200 ms")),
        "the timeout is logged naming the instance:\n{log}"
    );
    // The host told the plugin: the goroutine's context.Context ended its 3 s wait at once.
    tokio::task::block_in_place(|| proxy.wait_log("test-async: stopped early: weft: the host stopped waiting"));
    let m = wait_metrics(admin, "the late completion", |m| late(m) >= 1.0).await;
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "the goroutine waited out its delay"
    );
    assert!(metric(&m, "weft_plugin_timeouts_total") >= 1.0);
    let m = wait_all_slots_back(admin).await;
    assert_eq!(
        metric(&m, "weft_arena_slots_in_use"),
        metric(&baseline, "weft_arena_slots_in_use")
    );

    // Clients that hang up while their goroutines sleep: cancelled, the proxy keeps serving, and
    // once the goroutines completed (late) every slot is back.
    // 5 s: every call is still pending when its client hangs up, even on a loaded machine (a
    // call that completed first would be neither cancelled nor late).
    let before = abandon_pending_calls(addr, admin, "/gone", &[("x-delay-ms", "5000")], 20).await;
    let (status, headers, seen) = get(addr, "/meanwhile", &[("x-delay-ms", "10")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(headers["x-async-state"], "kept");
    let m = wait_all_slots_back(admin).await;
    let late = metric(&m, "weft_plugin_late_completions_total") - metric(&before, "weft_plugin_late_completions_total");
    assert!(late >= 20.0, "{late} late completions after 20 hang-ups");
    // Each hang-up reached its goroutine's context.Context (one line per call, plus the one above).
    let stopped = proxy.stderr().matches("test-async: stopped early").count();
    assert!(
        stopped >= 21,
        "{stopped} goroutines told of the host giving up, want 21"
    );
    assert_eq!(metric(&m, "weft_plugin_pending_calls"), 0.0);
    assert_eq!(metric(&m, "weft_arena_exhausted_total"), 0.0);

    // Still serving, with fresh per-request state in the reused slots.
    for _ in 0..5 {
        let (status, headers, seen) = get(addr, "/open", &[("x-fail", "1")]).await;
        assert_eq!(status, 200, "{seen}");
        assert!(headers.get("x-async-state").is_none(), "{headers:?}");
        let (status, headers, _) = get(addr, "/end", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-async-state"], "kept");
    }
    proxy.assert_running();
}

/// The largest `x-blocking-inflight` the upstream saw in `answers`.
fn max_inflight<'a>(answers: impl Iterator<Item = &'a serde_json::Value>) -> u32 {
    answers
        .map(|seen| {
            seen["headers"]["x-blocking-inflight"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no x-blocking-inflight in {seen}"))
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_blocking_plugin_on_the_worker_pool() {
    let (mut proxy, addr, admin) = start_go_proxy("go-blocking", BLOCKING, &[]).await;

    // Twenty 500 ms calls at once: they overlap on the worker pool (the plugin counts the calls
    // running with it) and finish far below the serial 10 s.
    let (answers, took) = get_concurrently(addr, "/pool", &[("x-delay-ms", "500")], 20).await;
    for (status, _, seen) in &answers {
        assert_eq!(*status, 200, "{seen}");
        assert_eq!(seen["headers"]["x-blocking"], "done", "{seen}");
    }
    let inflight = max_inflight(answers.iter().map(|a| &a.2));
    assert!(inflight > 1, "no two calls overlapped: {answers:?}");
    assert!(took < Duration::from_secs(5), "20 × 500 ms took {took:?}");

    // A panic on a pool goroutine fails closed; the pool keeps serving.
    let (status, _, body) = get(addr, "/p", &[("x-panic", "1")]).await;
    assert_eq!(status, 500, "{body}");
    tokio::task::block_in_place(|| proxy.wait_log("test-blocking: x-panic header present"));
    let (status, _, seen) = get(addr, "/after", &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-blocking"], "done", "{seen}");

    // The in-flight limit (2): a third call while two are held gets 503 with Retry-After 7.
    let held = check_in_flight_limit(addr, admin, "/limited", &[("x-delay-ms", "2500")], 2, "7").await;
    for (status, _, seen) in held {
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["headers"]["x-blocking"], "done", "{seen}");
    }
    let (status, _, _) = get(addr, "/limited", &[]).await;
    assert_eq!(status, 200, "the limit frees up");

    let m = wait_all_slots_back(admin).await;
    assert!(metric(&m, "weft_worker_jobs_total") >= 24.0, "{m:?}");
    assert!(metric(&m, "weft_worker_rings") >= 1.0);
    assert!(metric(&m, "weft_plugin_busy_rejections_total") >= 1.0);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_worker_ring_full_answers_503_with_retry_after() {
    // One pool goroutine for the whole library and rings of two descriptors: while a call
    // sleeps, the consumers wait for the pool, the rings fill and the host refuses more.
    let (mut proxy, addr, admin) =
        start_go_proxy("go-ring", SMALL_RINGS, &[("WEFT_BLOCKING_WORKERS", "1".into())]).await;

    let (answers, _) = get_concurrently(addr, "/burst", &[("x-delay-ms", "1000")], 30).await;
    let (mut ok, mut busy) = (0, 0);
    for (status, headers, seen) in answers {
        match status {
            StatusCode::OK => {
                assert_eq!(seen["headers"]["x-blocking"], "done", "{seen}");
                // One pool goroutine: the calls that were taken ran one at a time.
                assert_eq!(seen["headers"]["x-blocking-inflight"], "1", "{seen}");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(headers["retry-after"], "5");
                busy += 1;
            }
            other => panic!("unexpected {other}: {seen}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "{ok} answered, {busy} refused");
    let m = wait_all_slots_back(admin).await;
    assert!(metric(&m, "weft_plugin_busy_rejections_total") >= f64::from(busy));
    assert_eq!(metric(&m, "weft_plugin_pending_calls"), 0.0);
    // Drained: the next call is taken again.
    let (status, _, seen) = get(addr, "/again", &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-blocking"], "done", "{seen}");
    proxy.assert_running();
}

/// A tiny authorization service: `Bearer good` → 200 with `x-auth-user: alice`; `Bearer slow`
/// → the same after 3 s; anything else → 401 with a JSON body. Records each request's headers.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

const DENIAL: &str = r#"{"error":"bad token"}"#;

impl AuthService {
    async fn start() -> AuthService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (seen2, tasks2) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen2.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(req.headers().clone());
                    async move {
                        let auth = req.headers().get("authorization").map(|v| v.as_bytes().to_vec());
                        let resp = match auth.as_deref() {
                            Some(b"Bearer good") => Response::builder()
                                .header("x-auth-user", "alice")
                                .body(Full::new(Bytes::from_static(b"ok"))),
                            Some(b"Bearer slow") => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                Response::builder()
                                    .header("x-auth-user", "late")
                                    .body(Full::new(Bytes::from_static(b"ok")))
                            }
                            _ => Response::builder()
                                .status(401)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(DENIAL.as_bytes()))),
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                let conn = tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
                tasks2.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        AuthService { addr, seen, tasks }
    }

    /// Stops listening and drops every connection (the service is down).
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_auth_example_against_a_real_auth_service() {
    let auth = AuthService::start().await;
    let sections = format!(
        "plugins:\n  - {{ name: auth, library: go, plugin: ext-auth, deadline_ms: 5000, \
         config: {{ url: \"http://{}/check\", timeout_ms: 300 }} }}\n\
         routes:\n  - {{ path_prefix: /, upstream: up, plugins: [auth] }}\n",
        auth.addr
    );
    let (mut proxy, addr, admin) = start_go_proxy("go-extauth", &sections, &[]).await;

    // Allowed: the service's user reaches the upstream (a client-sent one never does).
    let (status, _, seen) = get(
        addr,
        "/api/items?id=7",
        &[("authorization", "Bearer good"), ("x-auth-user", "mallory")],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-auth-user"], "alice", "{seen}");
    assert_eq!(seen["headers"]["x-ext-auth"], "ok", "{seen}");
    let asked = auth
        .seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("the service was asked");
    assert_eq!(asked["authorization"], "Bearer good");
    assert_eq!(asked["x-forwarded-method"], "GET");
    assert_eq!(asked["x-forwarded-uri"], "/api/items?id=7");
    assert_eq!(asked["x-forwarded-host"], addr.to_string().as_str());

    // Denied: 403 with the service's body and content type; the upstream is not asked.
    let (status, headers, body) = get(addr, "/api/items", &[("authorization", "Bearer bad")]).await;
    assert_eq!(status, 403);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, serde_json::json!({ "error": "bad token" }));
    let (status, _, body) = get(addr, "/api/items", &[]).await;
    assert_eq!(status, 403, "no credentials: {body}");

    // Slower than timeout_ms: the check fails and the instance fails closed.
    let t = Instant::now();
    let (status, _, body) = get(addr, "/api/items", &[("authorization", "Bearer slow")]).await;
    assert_eq!(status, 500, "{body}");
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
    let log = tokio::task::block_in_place(|| proxy.wait_log("context deadline exceeded"));
    assert!(
        log.lines().any(|l| l.contains("plugin=\"auth\"")
            && l.contains("ext-auth: ")
            && l.contains("context deadline exceeded")),
        "the timeout is logged naming the instance:\n{log}"
    );

    // Many concurrent checks, each its own goroutine and service call.
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let token = if i % 3 == 0 { "Bearer bad" } else { "Bearer good" };
            tokio::spawn(async move { get(addr, "/api/many", &[("authorization", token)]).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let (status, _, seen) = c.await.unwrap();
        if i % 3 == 0 {
            assert_eq!(status, 403, "{seen}");
        } else {
            assert_eq!(status, 200, "{seen}");
            assert_eq!(seen["headers"]["x-auth-user"], "alice", "{seen}");
        }
    }

    // The service goes down (listener and kept-alive connections closed): fail closed.
    auth.stop();
    let (status, _, body) = get(addr, "/api/items", &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 500, "{body}");
    let (status, _, body) = get(addr, "/api/items", &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 500, "{body}");
    tokio::task::block_in_place(|| proxy.wait_log("connection refused"));

    let m = wait_all_slots_back(admin).await;
    assert!(metric(&m, "weft_plugin_failures_total") >= 3.0);
    proxy.assert_running();
}
