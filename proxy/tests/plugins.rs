//! The proxy running real Go plugin chains: the example library built by `scripts/build-plugins`
//! (needs the Go toolchain, like the runtime's own tests). Its own test binary, because a process
//! can host only one Go library.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use weft_proxy::demo::spawn_demo_upstream;
use weft_proxy::{Config, Proxy};

mod common;

type TestBody = BoxBody<Bytes, Infallible>;

fn client(h2: bool) -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).http2_only(h2).build_http()
}

fn get(uri: String) -> Request<TestBody> {
    Request::get(uri).body(Empty::new().boxed()).unwrap()
}

async fn start_proxy(upstream: SocketAddr, slots: u32) -> SocketAddr {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
runtime: {{ slots: {slots} }}
libraries: [{{ name: examples, path: {lib:?} }}]
plugins:
  - {{ name: auth, library: examples, plugin: bearer-auth, config: {{ tokens: [s3cret] }} }}
  - {{ name: timing, library: examples, plugin: timing-logger }}
  - name: headers
    library: examples
    plugin: header-rewriter
    config:
      request_set: {{ x-from-plugin: "yes" }}
      response_set: {{ x-resp-plugin: "yes" }}
  - {{ name: panics-closed, library: examples, plugin: test-panic }}
  - {{ name: panics-open, library: examples, plugin: test-panic, failure: open }}
  - {{ name: forge-xff, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-forwarded-for: 6.6.6.6 }} }} }}
  - {{ name: forge-proto, library: examples, plugin: header-rewriter, config: {{ request_set: {{ x-forwarded-proto: https }} }} }}
  - {{ name: forge-host, library: examples, plugin: header-rewriter, config: {{ request_set: {{ host: admin.internal }} }} }}
  - {{ name: forge-real-ip, library: examples, plugin: header-rewriter, config: {{ request_add: {{ x-real-ip: 6.6.6.6 }} }} }}
  - {{ name: hop-keep-alive, library: examples, plugin: header-rewriter, config: {{ request_set: {{ keep-alive: "timeout=99" }} }} }}
  - {{ name: hop-expect, library: examples, plugin: header-rewriter, config: {{ request_set: {{ expect: 100-continue }} }} }}
  - {{ name: hop-resp, library: examples, plugin: header-rewriter, config: {{ response_set: {{ keep-alive: "timeout=99" }} }} }}
  - {{ name: dotted-path, library: examples, plugin: header-rewriter, config: {{ set_path: "/x/..//admin/./secret" }} }}
  - {{ name: slash-path, library: examples, plugin: header-rewriter, config: {{ set_path: "/a%2Fb" }} }}
  - name: forge-open
    library: examples
    plugin: header-rewriter
    failure: open
    config: {{ request_set: {{ x-from-plugin: "yes", x-forwarded-for: 6.6.6.6 }} }}
upstreams: [{{ name: up, addresses: ["{upstream}"] }}]
routes:
  - {{ path_prefix: /api, upstream: up, plugins: [auth, timing, headers] }}
  - {{ path_prefix: /admin, methods: [GET, POST], upstream: up, plugins: [auth] }}
  - {{ path_prefix: /closed, upstream: up, plugins: [panics-closed] }}
  - {{ path_prefix: /open, upstream: up, plugins: [panics-open] }}
  - {{ path_prefix: /forge-xff, upstream: up, plugins: [forge-xff] }}
  - {{ path_prefix: /forge-proto, upstream: up, plugins: [forge-proto] }}
  - {{ path_prefix: /forge-host, upstream: up, plugins: [forge-host] }}
  - {{ path_prefix: /forge-real-ip, upstream: up, plugins: [forge-real-ip] }}
  - {{ path_prefix: /hop-keep-alive, upstream: up, plugins: [hop-keep-alive] }}
  - {{ path_prefix: /hop-expect, upstream: up, plugins: [hop-expect] }}
  - {{ path_prefix: /hop-resp, upstream: up, plugins: [hop-resp] }}
  - {{ path_prefix: /forge-open, upstream: up, plugins: [forge-open] }}
  - {{ path_prefix: /dotted-path, upstream: up, plugins: [dotted-path] }}
  - {{ path_prefix: /slash-path, upstream: up, plugins: [slash-path] }}
  - {{ path_prefix: /, upstream: up, plugins: [timing] }}
"#,
        lib = weft_test_support::go_library("test").display().to_string()
    );
    let config = Config::parse(&yaml, "plugins.yaml", Path::new(".")).unwrap();
    let proxy = Proxy::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    weft_proxy::spawn(proxy, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

async fn json(resp: Response<Incoming>) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

#[tokio::test]
async fn auth_chain_answers_locally_or_forwards_with_plugin_headers() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(upstream, 64).await;

    for h2 in [false, true] {
        let resp = client(h2)
            .request(get(format!("http://{proxy}/api/items")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "h2={h2}");
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(json(resp).await["reason"], "missing bearer token");

        let mut req = get(format!("http://{proxy}/api/items?x=1"));
        req.headers_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        let resp = client(h2).request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), if h2 { Version::HTTP_2 } else { Version::HTTP_11 });
        assert_eq!(resp.headers()["x-resp-plugin"], "yes");
        assert!(
            resp.headers()["server-timing"]
                .to_str()
                .unwrap()
                .starts_with("weft;dur=")
        );
        let seen = json(resp).await;
        let h = &seen["headers"];
        assert_eq!(h["x-weft-auth"], "ok");
        assert_eq!(h["x-from-plugin"], "yes");
        assert!(h["x-weft-seq"].is_string());
        // Forwarding headers are set after the plugins ran.
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["host"], proxy.to_string(), "h2={h2}");
        assert_eq!(seen["query"], "x=1");
    }
}

/// Path normalisation with the real bearer-auth Go plugin on `/api` and `/admin` and a catch-all
/// route without it: every spelling of a protected path runs the auth plugin (401 without a
/// token; the old proxy sent `//api/items` and friends to the catch-all, 200), and with the
/// token the upstream sees the normal form. A method `/admin` does not allow is 405 rather
/// than reaching the catch-all.
#[tokio::test]
async fn protected_paths_cannot_be_reached_around_the_auth_plugin() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(upstream, 64).await;
    let get = |path: &str, auth: bool| {
        let token = if auth { "authorization: Bearer s3cret\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nhost: app.test\r\n{token}connection: close\r\n\r\n")
    };
    for (path, normal) in [
        ("//api/items", "/api/items"),
        ("/x/../api/items", "/api/items"),
        ("/%61pi/items", "/api/items"),
        ("/api/./items", "/api/items"),
        ("/%2e%2e/api/items", "/api/items"),
        ("/x/%2E%2E/api/items", "/api/items"),
        ("///api//items", "/api/items"),
        ("//admin/secret", "/admin/secret"),
        ("/x/../admin/secret", "/admin/secret"),
        ("/%61dmin/secret", "/admin/secret"),
        ("/admin/./secret", "/admin/secret"),
        ("/./admin/../admin/secret", "/admin/secret"),
    ] {
        let (status, _, body) = common::raw(proxy, &get(path, false)).await;
        assert_eq!(status, 401, "{path} skipped the auth plugin: {body}");
        let (status, _, body) = common::raw(proxy, &get(path, true)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["path"], normal, "{path}");
        assert_eq!(seen["headers"]["x-weft-auth"], "ok", "{path}");
    }
    for bad in ["/api%2Fitems", "/admin%2fsecret", "/admin%5Csecret", "/admin%00"] {
        let (status, _, body) = common::raw(proxy, &get(bad, false)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, head, _) = common::raw(
        proxy,
        "PUT /admin/x HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nallow: get, post"), "{head}");
    // Case is significant: /ADMIN is another path, served by the catch-all.
    let (status, _, body) = common::raw(proxy, &get("/ADMIN/secret", false)).await;
    assert_eq!(status, 200, "{body}");
}

/// Reserved headers: a Go plugin that sets a forwarding header, `host` or a hop-by-hop
/// header gets its batch refused by the host (`mutation.rs`): fail closed is 500, fail open
/// forwards the request unchanged. The old host applied them (x-forwarded-for 6.6.6.6 reached
/// the upstream, `keep-alive` the wire).
#[tokio::test]
async fn plugins_cannot_set_host_forwarding_or_hop_by_hop_headers() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(upstream, 64).await;
    for path in [
        "/forge-xff",
        "/forge-proto",
        "/forge-host",
        "/forge-real-ip",
        "/hop-keep-alive",
        "/hop-expect",
        "/hop-resp",
    ] {
        let resp = client(false)
            .request(get(format!("http://{proxy}{path}")))
            .await
            .unwrap();
        let status = resp.status();
        let keep_alive = resp.headers().get("keep-alive").cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body:?}");
        assert!(keep_alive.is_none(), "{path}");
    }
    let resp = client(false)
        .request(get(format!("http://{proxy}/forge-open")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = json(resp).await;
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen["headers"].get("x-from-plugin").is_none(),
        "the whole batch is refused: {seen}"
    );
}

/// A path a plugin sets goes upstream normalised like a client's: dot
/// segments resolved, slashes merged; one that cannot be normalised (an encoded `/`, refused by
/// default) is a plugin failure, never forwarded.
#[tokio::test]
async fn a_path_a_plugin_sets_is_normalised_before_it_goes_upstream() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(upstream, 64).await;
    let resp = client(false)
        .request(get(format!("http://{proxy}/dotted-path")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await["path"], "/admin/secret");
    let resp = client(false)
        .request(get(format!("http://{proxy}/slash-path")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn failing_plugin_is_500_when_closed_and_skipped_when_open() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(upstream, 64).await;
    for (path, want) in [
        ("/closed", StatusCode::INTERNAL_SERVER_ERROR),
        ("/open", StatusCode::OK),
    ] {
        let mut req = get(format!("http://{proxy}{path}"));
        req.headers_mut().insert("x-test-panic", "1".parse().unwrap());
        let resp = client(false).request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{path}");
        // Without the trigger header both routes forward.
        let resp = client(false)
            .request(get(format!("http://{proxy}{path}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

/// The arena slot (held by the request's `Exchange`) must stay taken while the response body is
/// still streaming, and be released once the client is done with it.
#[tokio::test]
async fn exchange_lives_as_long_as_the_response_body() {
    // An upstream whose body never ends until the test says so.
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let rx = rx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let rx = rx.clone();
                    async move {
                        let hold = rx.lock().await.take();
                        Ok::<_, Infallible>(Response::new(HeldBody { sent: false, hold }))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = start_proxy(upstream, 1).await;

    // First request takes the only slot and keeps streaming.
    let first = client(false)
        .request(get(format!("http://{proxy}/slow")))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // Long enough for a log phase queued too early to have run and freed the slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client(false)
        .request(get(format!("http://{proxy}/other")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");

    // Finish the first body; the slot comes back (the log phase runs off the request path).
    drop(tx);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first chunk\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = client(false)
            .request(get(format!("http://{proxy}/other")))
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "slot never released: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chain whose plugins have only request-headers phases (bearer-auth on `/admin`) gives its
/// arena slot back before the upstream is asked: with one slot, a second request is served
/// while the first waits for the upstream. A chain with a later phase (`/api`: a response phase
/// and a log phase) keeps the slot until its response is done, so the second request gets 503.
#[tokio::test]
async fn a_request_headers_only_chain_frees_its_slot_before_the_upstream_answers() {
    // An upstream that holds a `/…/held` request's answer until the test releases it and says
    // when such a request arrived; everything else is answered at once.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(4);
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let gate = std::sync::Arc::clone(&release);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (arrived_tx, gate) = (arrived_tx.clone(), std::sync::Arc::clone(&gate));
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (arrived_tx, gate) = (arrived_tx.clone(), std::sync::Arc::clone(&gate));
                    async move {
                        if req.uri().path().ends_with("/held") {
                            arrived_tx.send(()).await.unwrap();
                            gate.acquire().await.unwrap().forget();
                        }
                        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = start_proxy(upstream, 1).await;
    let authed = |path: &str| {
        let mut req = get(format!("http://{proxy}{path}"));
        req.headers_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        client(false).request(req)
    };
    // Holds `held` at the upstream and asks for `/admin/other` meanwhile: that answer's status,
    // then the held request's response once the upstream lets it go.
    let mut while_held = async |held: &str| {
        let first = tokio::spawn(authed(held));
        arrival(&mut arrived, held).await;
        let second = authed("/admin/other").await.unwrap().status();
        release.add_permits(1);
        (second, first.await.unwrap().unwrap())
    };
    // bearer-auth alone: the held request has given its slot back.
    let (second, resp) = while_held("/admin/held").await;
    assert_eq!(
        second,
        StatusCode::OK,
        "the slot is free while the upstream holds /admin/held"
    );
    assert_eq!(resp.status(), StatusCode::OK);
    // auth, timing (log phase) and headers (response phase): the slot stays taken.
    let (second, resp) = while_held("/api/held").await;
    assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE, "/api/held keeps the only slot");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-resp-plugin"], "yes");
}

/// Waits (10 s at most) for the upstream's word that `what` reached it.
async fn arrival(arrived: &mut tokio::sync::mpsc::Receiver<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} never reached the upstream"))
        .expect("the upstream is running");
}

/// One chunk, then (for the first request only) stays open until the sender is dropped.
struct HeldBody {
    sent: bool,
    hold: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first chunk\n")))));
        }
        match self.hold.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|_| None),
            None => Poll::Ready(None),
        }
    }
}

/// Response-headers plugins (Go, in reverse chain order) change a response whose fields stay
/// as the upstream's lines on the way to an HTTP/1.1 client: a set replaces the upstream's
/// field whatever its case, a removal takes it out, an added field follows the others, the
/// rest go as the upstream sent them (hop-by-hop fields left out, the upstream's `date` only),
/// with the proxy's request id once; an HTTP/2 client, answered from a map, gets the same.
#[tokio::test]
async fn response_plugins_change_the_upstream_s_lines() {
    let upstream = common::spawn_raw_upstream(common::mixed_answer).await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
libraries: [{{ name: examples, path: {lib:?} }}]
plugins:
  - {{ name: timing, library: examples, plugin: timing-logger }}
  - name: rewrite
    library: examples
    plugin: header-rewriter
    config: {{ response_set: {{ x-mixed-case: replaced, x-frame-options: DENY }}, response_remove: [server] }}
upstreams: [{{ name: up, addresses: ["{upstream}"] }}]
routes: [{{ path_prefix: /, upstream: up, plugins: [timing, rewrite] }}]
"#,
        lib = weft_test_support::go_library("test").display().to_string()
    );
    let config = Config::parse(&yaml, "lines.yaml", Path::new(".")).unwrap();
    let proxy = Proxy::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    let proxy = weft_proxy::spawn(proxy, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let paths = ["/a", "/chunked", "/b"];
    for (path, head) in paths.into_iter().zip(common::get_hellos(proxy, &paths).await) {
        let lines: Vec<&str> = head.split("\r\n").collect();
        let has = |l: &str| lines.iter().filter(|x| **x == l).count();
        let named = |n: &str| lines.iter().filter(|x| x.to_lowercase().starts_with(n)).count();
        assert_eq!((named("server:"), named("keep-alive:")), (0, 0), "{head}");
        assert_eq!(
            (named("x-mixed-case:"), has("x-mixed-case: replaced")),
            (1, 1),
            "{head}"
        );
        assert_eq!(has("x-frame-options: DENY"), 1, "{head}");
        assert_eq!(
            (named("x-request-id:"), has(&format!("x-request-id: id{path}"))),
            (1, 1),
            "{head}"
        );
        assert_eq!((named("server-timing:"), named("date:")), (1, 1), "{head}");
        if path == "/chunked" {
            assert_eq!(named("transfer-encoding:"), 1, "{head}");
        } else {
            assert_eq!(has("content-length: 5"), 1, "{head}");
            assert_eq!(has("Date: Thu, 01 Jan 2026 00:00:00 GMT"), 1, "{head}");
            let two = lines.iter().position(|l| *l == "X-Two: a").expect(&head);
            assert_eq!(lines[two + 1], "X-Two: b", "{head}");
        }
    }
    // A request that closes its connection is answered by hyper's server, which gets the
    // changed lines put into its map.
    let (status, head, body) = common::raw(proxy, "GET /close HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "hello"), "{head}");
    let head = head.to_lowercase();
    assert!(
        head.contains("\r\nx-mixed-case: replaced\r\n") && !head.contains("value 1"),
        "{head}"
    );
    assert!(
        head.contains("\r\nx-two: a\r\nx-two: b\r\n") && !head.contains("\r\nserver:"),
        "{head}"
    );
    assert_eq!(head.matches("\r\nx-request-id: ").count(), 1, "{head}");
    let resp = client(true).request(get(format!("http://{proxy}/h2"))).await.unwrap();
    let h = resp.headers().clone();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "hello");
    assert!(!h.contains_key("server") && !h.contains_key("keep-alive"));
    assert_eq!(h.get_all("x-mixed-case").iter().collect::<Vec<_>>(), ["replaced"]);
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["date"], "Thu, 01 Jan 2026 00:00:00 GMT");
    assert_eq!(h.get_all("x-two").iter().collect::<Vec<_>>(), ["a", "b"]);
    assert!(h.contains_key("server-timing") && h.contains_key("x-request-id"));
}
