//! Upstream health at the edge, against real upstreams on loopback that are killed (their
//! listener and every open connection closed) and started again on the same port: passive
//! ejection keeps failed requests within the ejection window, traffic returns when the address
//! comes back, and with no healthy address the proxy answers 503.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proxy::{Config, Proxy};

mod common;
use common::OwnRuntime;

/// An HTTP/1.1 upstream answering its `name`, on a runtime of its own so that killing it
/// closes the listener and every kept-alive connection at once, as a crashed process would.
struct Upstream {
    addr: SocketAddr,
    runtime: OwnRuntime,
    /// What `/health` answers: 200 while true, 503 while false.
    healthy: Arc<AtomicBool>,
}

impl Upstream {
    fn start(name: &'static str, addr: SocketAddr) -> Upstream {
        let (runtime, listener) = OwnRuntime::bind(addr);
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut resp = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        if req.uri().path() == "/health" && !flag.load(Ordering::Relaxed) {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, runtime, healthy }
    }

    /// Returns once every connection of the upstream is closed.
    async fn kill(&mut self) {
        self.runtime.kill().await;
    }
}

async fn start_proxy(yaml: &str) -> SocketAddr {
    let config = Config::parse(yaml, "test.yaml", Path::new(".")).expect("valid config");
    let proxy = Proxy::from_config(&config).expect("proxy starts");
    weft_proxy::spawn(proxy, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// Retries are off: these tests see what ejection alone does (with retries, `balance.rs`).
fn config(upstream: &str, addresses: &[SocketAddr], failures: u32, ejection_ms: u64) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - name: {upstream}\n    addresses: [{}]\n    retries: 0\n    \
         ejection: {{ consecutive_failures: {failures}, duration_ms: {ejection_ms} }}\n\
         routes: [{{ name: all, upstream: {upstream} }}]\n",
        list.join(", ")
    )
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One GET: the status and the body (the upstream's name on a 200).
async fn get(client: &TestClient, proxy: SocketAddr) -> (StatusCode, String) {
    let resp = client
        .get(format!("http://{proxy}/").parse().unwrap())
        .await
        .expect("the proxy answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A series of the process-wide metrics (the proxy runs in this process).
fn metric(series: &str) -> f64 {
    let (text, _) = weft_proxy::metrics::global().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// Counts of what the load saw.
#[derive(Default)]
struct Seen {
    failed: AtomicUsize,
    from_a: AtomicUsize,
    from_b: AtomicUsize,
}

/// `CLIENTS` loops sending requests back to back until `stop`.
async fn load(proxy: SocketAddr, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    while !stop.load(Ordering::Relaxed) {
        match get(&client, proxy).await {
            (StatusCode::OK, b) if b == "a" => seen.from_a.fetch_add(1, Ordering::Relaxed),
            (StatusCode::OK, _) => seen.from_b.fetch_add(1, Ordering::Relaxed),
            _ => seen.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

const CLIENTS: usize = 4;
const FAILURES: u32 = 3;
const EJECTION_MS: u64 = 300;
/// How long `b` stays dead: a few ejection periods, so it is tried (and ejected) again.
const DEAD_MS: u64 = 1000;

/// The bound on failed requests while `b` is dead. Before the first ejection: `FAILURES` in a
/// row, plus the requests the other clients had already sent to `b` (at most `CLIENTS`). Each
/// time the back-off passes `b` is on trial; one failure ejects it again, and as many requests
/// as there are clients may have picked it meanwhile. Trials: one per ejection period dead.
fn failure_bound() -> usize {
    let trials = DEAD_MS.div_ceil(EJECTION_MS) as usize;
    FAILURES as usize + CLIENTS + trials * CLIENTS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_upstreams_fails_requests_only_within_the_ejection_window() {
    let a = Upstream::start("a", "127.0.0.1:0".parse().unwrap());
    let mut b = Upstream::start("b", "127.0.0.1:0".parse().unwrap());
    let b_addr = b.addr;
    let proxy = start_proxy(&config("steady", &[a.addr, b_addr], FAILURES, EJECTION_MS)).await;
    let healthy = format!("weft_upstream_address_healthy{{upstream=\"steady\",address=\"{b_addr}\"}}");
    let ejections = format!("weft_upstream_address_ejections_total{{upstream=\"steady\",address=\"{b_addr}\"}}");

    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load(proxy, Arc::clone(&seen), Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.from_b.load(Ordering::Relaxed) > 0,
        "both addresses serve before the kill"
    );
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0);

    b.kill().await;
    tokio::time::sleep(Duration::from_millis(DEAD_MS / 2)).await;
    assert_eq!(metric(&healthy), 0.0, "b is ejected while dead");
    let served_by_a = seen.from_a.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(DEAD_MS / 2)).await;
    assert!(
        seen.from_a.load(Ordering::Relaxed) > served_by_a,
        "a keeps serving the load"
    );
    let failed = seen.failed.load(Ordering::Relaxed);
    assert!(failed >= 1, "the kill was seen");
    assert!(
        failed <= failure_bound(),
        "{failed} failed requests, bound {}",
        failure_bound()
    );
    assert!(metric(&ejections) >= 1.0);

    let _b = Upstream::start("b", b_addr);
    let from_b = seen.from_b.load(Ordering::Relaxed);
    weft_test_support::wait_for("traffic back to b", Duration::from_secs(5), || {
        seen.from_b.load(Ordering::Relaxed) > from_b + 10
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(metric(&healthy), 1.0);
    // Once back, nothing fails any more: at most one more trial's worth after the restart.
    assert!(seen.failed.load(Ordering::Relaxed) <= failure_bound() + CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_address_answers_503_until_one_comes_back() {
    let mut a = Upstream::start("a", "127.0.0.1:0".parse().unwrap());
    let a_addr = a.addr;
    let proxy = start_proxy(&config("alone", &[a_addr], 2, 200)).await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    assert_eq!(get(&client, proxy).await, (StatusCode::OK, "a".into()));

    a.kill().await;
    assert_eq!(get(&client, proxy).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&client, proxy).await.0, StatusCode::BAD_GATEWAY);
    let (status, body) = get(&client, proxy).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ejected: no address left ({body})"
    );
    assert!(body.contains("no healthy upstream"), "{body}");

    let _a = Upstream::start("a", a_addr);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(&client, proxy).await, (StatusCode::OK, "a".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_checks_take_an_address_out_without_failing_requests() {
    let a = Upstream::start("a", "127.0.0.1:0".parse().unwrap());
    let b = Upstream::start("b", "127.0.0.1:0".parse().unwrap());
    let yaml = config("checked", &[a.addr, b.addr], FAILURES, 60_000).replace(
        "\nroutes:",
        "\n    health_check: { path: /health, interval_ms: 30, timeout_ms: 500, \
         healthy_threshold: 2, unhealthy_threshold: 2, expected_statuses: [200] }\nroutes:",
    );
    let proxy = start_proxy(&yaml).await;
    let healthy = format!(
        "weft_upstream_address_healthy{{upstream=\"checked\",address=\"{}\"}}",
        b.addr
    );
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&client, proxy).await.1);
    }
    assert!(answers.iter().any(|b| b == "b"), "{answers:?}");

    b.healthy.store(false, Ordering::Relaxed);
    weft_test_support::wait_for("b out of rotation", Duration::from_secs(5), || metric(&healthy) == 0.0);
    for _ in 0..20 {
        assert_eq!(
            get(&client, proxy).await,
            (StatusCode::OK, "a".into()),
            "b failed its checks"
        );
    }

    b.healthy.store(true, Ordering::Relaxed);
    weft_test_support::wait_for("b back in rotation", Duration::from_secs(5), || metric(&healthy) == 1.0);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&client, proxy).await.1);
    }
    assert!(
        answers.iter().any(|b| b == "b"),
        "b passed its checks again: {answers:?}"
    );
}
