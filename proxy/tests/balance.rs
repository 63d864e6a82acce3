//! Load-balancing policies and retries through the real `weft-proxy` binary, against real
//! loopback upstreams that answer with their name: weighted shares, least_requests around an
//! upstream that holds its requests, consistent hashing on a header, a cookie and the client IP
//! (a key stays on its address; a reload that removes an address moves only that address's
//! keys), retries on another address for requests that could not reach theirs (counted in a
//! metric), no retry of a POST with a body, and no failed GET when one of two upstreams is
//! killed under load.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

mod common;

use common::{OwnRuntime, ProxyProcess, free_port, metric, scrape};

/// An HTTP/1.1 upstream answering its `name`, on a runtime of its own so that killing it
/// closes the listener and every kept-alive connection at once, as a crashed process would.
/// While held, requests wait (counted in `arrived`) until released.
struct Upstream {
    name: &'static str,
    addr: SocketAddr,
    runtime: OwnRuntime,
    arrived: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Upstream {
    fn start(name: &'static str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap(), false)
    }

    fn start_on(name: &'static str, addr: SocketAddr, hold: bool) -> Upstream {
        let (runtime, listener) = OwnRuntime::bind(addr);
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(!hold);
        let count = Arc::clone(&arrived);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, released) = (Arc::clone(&count), released.clone());
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (count, mut released) = (Arc::clone(&count), released.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        let mut resp = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        if let Some(host) = req.headers().get(http::header::HOST) {
                            resp.headers_mut().insert("x-seen-host", host.clone());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        Upstream {
            name,
            addr,
            runtime,
            arrived,
            release,
        }
    }

    /// Returns once every connection of the upstream is closed.
    async fn kill(&mut self) {
        self.runtime.kill().await;
    }
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request: the status and the body (the upstream's name on a 200).
async fn call(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap())
        .await
        .expect("the proxy answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    call(c, Method::GET, url, headers, "").await
}

/// A proxy with an admin listener and the upstreams `upstreams` (YAML list items); every path
/// goes to upstream `up`, `/other` to `other` when there is one.
struct Setup {
    proxy: ProxyProcess,
    admin: SocketAddr,
    url: String,
}

fn config(addr: SocketAddr, admin: SocketAddr, upstreams: &str) -> String {
    let other = if upstreams.contains("name: other") {
        "  - { path_prefix: /other, upstream: other }\n"
    } else {
        ""
    };
    format!(
        "listen: {addr}\nadmin: {{ listen: {admin} }}\nupstreams:\n{upstreams}routes:\n{other}  - {{ upstream: up }}\n"
    )
}

fn start(tag: &str, upstreams: &str) -> Setup {
    let (addr, admin) = (free_port(), free_port());
    let proxy = ProxyProcess::start(tag, &config(addr, admin, upstreams), addr);
    Setup {
        proxy,
        admin,
        url: format!("http://{addr}/"),
    }
}

fn list(addresses: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// How many answers came from each upstream.
fn tally(answers: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_spreads_requests_by_weight() {
    let (a, b, c) = (Upstream::start("a"), Upstream::start("b"), Upstream::start("c"));
    let s = start(
        "weighted",
        &format!(
            "  - name: up\n    balance: {{ policy: weighted }}\n    addresses:\n      \
             - {{ address: \"{}\", weight: 5 }}\n      - \"{}\"\n      - {{ address: \"{}\", weight: 2 }}\n",
            a.addr, b.addr, c.addr
        ),
    );
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..400 {
        let (status, body) = get(&client, &s.url, &[]).await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    let t = tally(&answers);
    // Shares 5/8, 1/8, 2/8 of 400: 250, 50, 100; within 5 % of the requests.
    for (name, want) in [("a", 250), ("b", 50), ("c", 100)] {
        let got = t.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(want) <= 20, "{name}: {got}, want {want}: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_to_the_idle_address_while_the_other_holds_requests() {
    let slow = Upstream::start_on("slow", "127.0.0.1:0".parse().unwrap(), true);
    let fast = Upstream::start("fast");
    let s = start(
        "least",
        &format!(
            "  - name: up\n    balance: {{ policy: least_requests }}\n    addresses: {}\n",
            list(&[slow.addr, fast.addr])
        ),
    );
    let (client, mut held, mut answered) = (client(), Vec::new(), 0);
    for i in 1..=30 {
        let (client, url) = (client.clone(), s.url.clone());
        let request = tokio::spawn(async move { get(&client, &url, &[]).await });
        // Either `slow` holds it or `fast` answers it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while slow.arrived.load(Ordering::SeqCst) + answered < i && !request.is_finished() {
            assert!(Instant::now() < deadline, "request {i} neither held nor answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if request.is_finished() {
            assert_eq!(request.await.unwrap(), (StatusCode::OK, "fast".into()));
            answered += 1;
        } else {
            held.push(request);
        }
    }
    let held_count = slow.arrived.load(Ordering::SeqCst);
    assert!(
        held_count <= 1,
        "once slow holds a request, fast (0 in flight) wins every pick: slow got {held_count}"
    );
    let series = format!(
        "weft_upstream_address_active_requests{{upstream=\"up\",address=\"{}\"}}",
        slow.addr
    );
    assert_eq!(metric(&scrape(s.admin).await, &series), held_count as f64);
    slow.release.send(true).unwrap();
    for r in held {
        assert_eq!(r.await.unwrap(), (StatusCode::OK, "slow".into()));
    }
}

/// Which upstream answers each of `keys` (sent in header `x-user`), twice: it must be the same.
async fn owners(client: &TestClient, url: &str, keys: usize) -> Vec<String> {
    let mut owners = Vec::new();
    for k in 0..keys {
        let user = format!("user-{k}");
        let (status, first) = get(client, url, &[("x-user", &user)]).await;
        assert_eq!(status, 200, "{first}");
        let (_, again) = get(client, url, &[("x-user", &user)]).await;
        assert_eq!(first, again, "{user} stays on its address");
        owners.push(first);
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_and_a_reload_moves_only_the_removed_address_keys() {
    let ups = [Upstream::start("a"), Upstream::start("b"), Upstream::start("c")];
    let upstream = |addrs: &[SocketAddr]| {
        format!(
            "  - name: up\n    balance: {{ policy: consistent_hash, hash_on: {{ header: x-user }} }}\n    addresses: {}\n",
            list(addrs)
        )
    };
    let all: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let s = start("hash", &upstream(&all));
    let client = client();
    let before = owners(&client, &s.url, 90).await;
    let t = tally(&before);
    assert!(
        ["a", "b", "c"].iter().all(|n| t.get(n).copied().unwrap_or(0) >= 10),
        "keys spread over every address: {t:?}"
    );
    // Without the key: round robin.
    let mut keyless = Vec::new();
    for _ in 0..6 {
        keyless.push(get(&client, &s.url, &[]).await.1);
    }
    assert_eq!(tally(&keyless).len(), 3, "{keyless:?}");

    // Reload without c: a's and b's keys stay, c's move.
    let (addr, admin) = (s.proxy.addr, s.admin);
    std::fs::write(&s.proxy.config, config(addr, admin, &upstream(&all[..2]))).unwrap();
    let (status, body) = call(
        &client,
        Method::POST,
        &format!("http://{admin}/reload"),
        &[("x-weft-admin", "1")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = owners(&client, &s.url, 90).await;
    let mut moved = 0;
    for (k, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == "c" {
            moved += 1;
            assert_ne!(a, "c");
        } else {
            assert_eq!(a, b, "user-{k} was on {b}, which is still there");
        }
    }
    assert_eq!(moved, t["c"], "exactly c's keys moved");
    assert_eq!(ups[2].name, "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_cookie_and_on_the_client_ip() {
    let ups = [Upstream::start("a"), Upstream::start("b"), Upstream::start("c")];
    let addrs = list(&ups.iter().map(|u| u.addr).collect::<Vec<_>>());
    let s = start(
        "hash-forms",
        &format!(
            "  - name: up\n    balance: {{ policy: consistent_hash, hash_on: {{ cookie: sid }} }}\n    addresses: {addrs}\n  \
             - name: other\n    balance: {{ policy: consistent_hash, hash_on: client_ip }}\n    addresses: {addrs}\n"
        ),
    );
    let client = client();
    let mut owners = Vec::new();
    for k in 0..45 {
        let cookie = format!("theme=dark; sid=s-{k}; lang=en");
        let (_, first) = get(&client, &s.url, &[("cookie", &cookie)]).await;
        let (_, again) = get(&client, &s.url, &[("cookie", &cookie)]).await;
        assert_eq!(first, again, "session s-{k} stays on its address");
        owners.push(first);
    }
    let t = tally(&owners);
    assert!(t.len() == 3 && t.values().all(|&n| n >= 5), "sessions spread: {t:?}");

    // Every request comes from 127.0.0.1: one address takes them all.
    let other = format!("http://{}/other", s.proxy.addr);
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(get(&client, &other, &[]).await.1);
    }
    assert_eq!(tally(&answers).len(), 1, "{answers:?}");
}

/// A policy that hashes on a forwarding header sees the proxy's value (the forwarding fields go
/// into the map before the key is taken, not only into the encoded head): every request from
/// 127.0.0.1 lands on one address, whatever `x-forwarded-for` the client claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_forwarding_header_sees_the_proxy_s_value() {
    let ups = [Upstream::start("a"), Upstream::start("b"), Upstream::start("c")];
    let addrs = list(&ups.iter().map(|u| u.addr).collect::<Vec<_>>());
    let s = start(
        "hash-xff",
        &format!(
            "  - name: up\n    balance: {{ policy: consistent_hash, hash_on: {{ header: x-forwarded-for }} }}\n    \
             addresses: {addrs}\n"
        ),
    );
    let client = client();
    let mut answers = Vec::new();
    for k in 0..12 {
        let spoofed = format!("198.51.100.{k}");
        answers.push(get(&client, &s.url, &[("x-forwarded-for", &spoofed)]).await.1);
    }
    assert_eq!(tally(&answers).len(), 1, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_elsewhere_but_not_a_post_with_a_body() {
    let live = Upstream::start("live");
    let dead = free_port(); // nothing listens there: connections are refused
    // The dead address is never ejected here, so round robin keeps sending every other request
    // there; `other` does not retry.
    let upstreams = format!(
        "  - name: up\n    addresses: {addrs}\n    ejection: {{ consecutive_failures: 100000 }}\n  \
         - name: other\n    retries: 0\n    addresses: {addrs}\n    ejection: {{ consecutive_failures: 100000 }}\n",
        addrs = list(&[dead, live.addr])
    );
    let s = start("retry", &upstreams);
    let client = client();
    let retries = "weft_upstream_retries_total{upstream=\"up\"}";
    for method in [Method::GET, Method::HEAD, Method::DELETE] {
        for _ in 0..10 {
            let (status, _) = call(&client, method.clone(), &s.url, &[], "").await;
            assert_eq!(status, 200, "{method} retried on the live address");
        }
    }
    let m = scrape(s.admin).await;
    assert_eq!(metric(&m, retries), 15.0, "every other request picked the dead address");

    // HTTP/1.0 without Host: the proxy names the address it sends to, the retry's own.
    for _ in 0..2 {
        let answer = http10_get(s.proxy.addr);
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let seen = format!("x-seen-host: {}", live.addr);
        assert!(answer.to_ascii_lowercase().contains(&seen), "{answer}");
    }
    assert_eq!(metric(&scrape(s.admin).await, retries), 16.0);

    // A POST without a body may go elsewhere; one with a body is not sent again.
    for _ in 0..4 {
        assert_eq!(call(&client, Method::POST, &s.url, &[], "").await.0, 200);
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&client, Method::POST, &s.url, &[], "payload").await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::BAD_GATEWAY).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(metric(&scrape(s.admin).await, retries), 18.0);

    // retries: 0: a GET that picked the dead address fails.
    let other = format!("http://{}/other", s.proxy.addr);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&client, &other, &[]).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::BAD_GATEWAY).count(),
        2,
        "{statuses:?}"
    );
    let m = scrape(s.admin).await;
    assert_eq!(metric(&m, "weft_upstream_retries_total{upstream=\"other\"}"), 0.0);
    // Every attempt was counted in and out of its address's active requests.
    for addr in [dead, live.addr] {
        let active = format!("weft_upstream_address_active_requests{{upstream=\"up\",address=\"{addr}\"}}");
        assert_eq!(metric(&m, &active), 0.0, "{active}");
    }
}

/// `GET /` over HTTP/1.0 without a Host header; the whole answer.
fn http10_get(proxy: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    failed: std::sync::Mutex<Vec<String>>,
    from: [AtomicUsize; 2],
}

const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_upstreams_under_load_fails_no_get() {
    let a = Upstream::start("a");
    let mut b = Upstream::start("b");
    let b_addr = b.addr;
    let s = start(
        "kill",
        &format!(
            "  - name: up\n    addresses: {}\n    ejection: {{ consecutive_failures: 3, duration_ms: 300 }}\n",
            list(&[a.addr, b_addr])
        ),
    );
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (seen, stop, url) = (Arc::clone(&seen), Arc::clone(&stop), s.url.clone());
            tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    match get(&client, &url, &[]).await {
                        (StatusCode::OK, b) if b == "a" => seen.from[0].fetch_add(1, Ordering::Relaxed),
                        (StatusCode::OK, _) => seen.from[1].fetch_add(1, Ordering::Relaxed),
                        other => {
                            seen.failed.lock().unwrap().push(format!("{other:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let wait = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let seen2 = Arc::clone(&seen);
    wait(
        "both serving",
        Box::new(move || seen2.from[1].load(Ordering::Relaxed) > 50),
    )
    .await;

    b.kill().await;
    // Dead for a few ejection periods: b is tried again on each trial.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let from_a = seen.from[0].load(Ordering::Relaxed);
    let seen2 = Arc::clone(&seen);
    wait(
        "a serving the load",
        Box::new(move || seen2.from[0].load(Ordering::Relaxed) > from_a + 50),
    )
    .await;

    let _b = Upstream::start_on("b", b_addr, false);
    let from_b = seen.from[1].load(Ordering::Relaxed);
    let seen2 = Arc::clone(&seen);
    wait(
        "traffic back to b",
        Box::new(move || seen2.from[1].load(Ordering::Relaxed) > from_b + 20),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = seen.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} failed GETs: {failed:?}", failed.len());
    let m = scrape(s.admin).await;
    let ejections = format!("weft_upstream_address_ejections_total{{upstream=\"up\",address=\"{b_addr}\"}}");
    assert!(metric(&m, &ejections) >= 1.0, "b was ejected while dead");
    assert!(
        metric(&m, "weft_upstream_retries_total{upstream=\"up\"}") >= 1.0,
        "the kill was retried"
    );
    let healthy = format!("weft_upstream_address_healthy{{upstream=\"up\",address=\"{b_addr}\"}}");
    assert_eq!(metric(&m, &healthy), 1.0, "b is back");
}
