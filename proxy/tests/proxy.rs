//! End-to-end: the proxy and its upstreams run in-process and are exercised over real HTTP.
//! No plugins: these configs never load a library, so the plugin runtime is never created.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::demo::{Fnv1a, spawn_demo_upstream};
use weft_proxy::{Config, Proxy};

mod common;

type TestBody = BoxBody<Bytes, Infallible>;

fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

async fn start_proxy(yaml: &str) -> SocketAddr {
    let config = Config::parse(yaml, "test.yaml", Path::new(".")).expect("valid config");
    let proxy = Proxy::from_config(&config).expect("proxy starts");
    weft_proxy::spawn(proxy, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// A proxy with one catch-all route to `upstream`.
async fn proxy_to(upstream: SocketAddr, timeout_ms: u64) -> SocketAddr {
    start_proxy(&format!(
        "listen: 127.0.0.1:0\n\
         upstreams: [{{ name: up, addresses: [\"{upstream}\"], timeout_ms: {timeout_ms} }}]\n\
         routes: [{{ name: all, upstream: up }}]\n"
    ))
    .await
}

/// Serves `handler` on a fresh loopback port (HTTP/1.1 and h2c).
async fn spawn_upstream<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    addr
}

async fn body_json(resp: Response<Incoming>) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

async fn body_text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn forwards_method_path_query_body_and_forwarding_headers() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;

    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{proxy}/some/path?x=1&y=two%20words"))
        .header("host", "Public.Example:8443")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("x-end-to-end", "kept")
        .body(full("hello upstream"))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = body_json(resp).await;

    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/some/path");
    assert_eq!(seen["query"], "x=1&y=two%20words");
    assert_eq!(seen["body"], "hello upstream");
    assert_eq!(seen["version"], "HTTP/1.1");
    let h = &seen["headers"];
    assert_eq!(h["host"], "Public.Example:8443", "client's host is kept");
    assert_eq!(h["x-forwarded-host"], "Public.Example:8443");
    assert_eq!(h["x-forwarded-proto"], "http", "client-sent proto is overwritten");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "the client's chain is not believed (no trusted_proxies)"
    );
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(h["content-length"], "14");
}

#[tokio::test]
async fn strips_hop_by_hop_headers_both_ways() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;
    let req = Request::builder()
        .uri(format!("http://{proxy}/hop"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-e2e", "kept")
        .body(full(""))
        .unwrap();
    let seen = body_json(client().request(req).await.unwrap()).await;
    let h = seen["headers"].as_object().unwrap();
    for name in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
    ] {
        assert!(!h.contains_key(name), "{name} was forwarded: {h:?}");
    }
    assert_eq!(h["x-e2e"], "kept");

    // Response direction: an upstream naming its own hop-by-hop header.
    let upstream = spawn_upstream(|_req| async {
        Ok(Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-resp-e2e", "kept")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap())
    })
    .await;
    let proxy = proxy_to(upstream, 5000).await;
    let resp = client().get(format!("http://{proxy}/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert!(h.get("x-resp-hop").is_none() && h.get("keep-alive").is_none(), "{h:?}");
    assert!(h.get("connection").is_none(), "{h:?}");
    assert_eq!(h["x-resp-e2e"], "kept");
    assert_eq!(body_text(resp).await, "ok");
}

#[tokio::test]
async fn routes_by_host_prefix_and_method_else_404() {
    let a = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let b = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - {{ name: a, addresses: [\"{a}\"] }}\n  - {{ name: b, addresses: [\"{b}\"] }}\n\
         routes:\n\
         \x20 - {{ host: \"*.example.com\", path_prefix: /, upstream: b }}\n\
         \x20 - {{ path_prefix: /api, methods: [GET], upstream: a }}\n"
    ))
    .await;
    let send = |method: Method, host: &str, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{proxy}{path}"))
            .header("host", host)
            .body(full(""))
            .unwrap();
        client().request(req)
    };

    let resp = send(Method::GET, "www.Example.com:1234", "/anything").await.unwrap();
    assert_eq!(body_json(resp).await["upstream"], b.to_string());
    let resp = send(Method::GET, "other.test", "/api/v1").await.unwrap();
    assert_eq!(body_json(resp).await["upstream"], a.to_string());

    for (method, host, path) in [
        (Method::GET, "other.test", "/apix"),
        (Method::GET, "other.test", "/"),
        (Method::GET, "example.com", "/x"),
    ] {
        let resp = send(method.clone(), host, path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {host}{path}");
        assert_eq!(body_text(resp).await, "no route\n");
    }
    // The route's host and path match, its methods do not.
    let resp = send(Method::POST, "other.test", "/api/v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET");
}

#[tokio::test]
async fn round_robin_across_addresses() {
    let a = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let b = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\n\
         upstreams: [{{ name: up, addresses: [\"{a}\", \"{b}\"] }}]\n\
         routes: [{{ upstream: up }}]\n"
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = client().get(format!("http://{proxy}/").parse().unwrap()).await.unwrap();
        seen.push(body_json(resp).await["upstream"].as_str().unwrap().to_owned());
    }
    let (a, b) = (a.to_string(), b.to_string());
    assert!(
        seen == [&a, &b, &a, &b].map(String::as_str) || seen == [&b, &a, &b, &a].map(String::as_str),
        "{seen:?}"
    );
}

#[tokio::test]
async fn closed_upstream_port_is_502() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy_to(closed, 5000).await;
    let resp = client()
        .get(format!("http://{proxy}/x").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_text(resp).await, "upstream unavailable\n");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Response::new(Full::new(Bytes::from_static(b"late"))))
    })
    .await;
    let proxy = proxy_to(upstream, 200).await;
    let start = Instant::now();
    let resp = client()
        .get(format!("http://{proxy}/slow").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert_eq!(body_text(resp).await, "upstream timed out\n");
}

/// The requests of one keep-alive connection reuse its upstream timer, each timed from its own
/// start: with a 300 ms timeout, requests of 200 ms one after another (each running past the
/// deadline of the one before it) all get their answer, and one of 3 s is a 504 at its own
/// deadline. The same on HTTP/2, where streams at once each time themselves.
#[tokio::test]
async fn requests_of_one_connection_are_each_timed_from_their_start() {
    let upstream = spawn_upstream(|req: Request<Incoming>| async move {
        let ms: u64 = req.uri().path().trim_start_matches("/d/").parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
    .await;
    let proxy = proxy_to(upstream, 300).await;
    for c in [client(), h2_client()] {
        let get = |path: &'static str| {
            let c = c.clone();
            async move {
                let resp = c.get(format!("http://{proxy}{path}").parse().unwrap()).await.unwrap();
                resp.status()
            }
        };
        for _ in 0..4 {
            assert_eq!(get("/d/200").await, StatusCode::OK);
        }
        let start = Instant::now();
        assert_eq!(get("/d/3000").await, StatusCode::GATEWAY_TIMEOUT);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "took {took:?}"
        );
        // Two at once: the one within its time is answered, the other times out.
        let (fast, slow) = tokio::join!(get("/d/100"), get("/d/3000"));
        assert_eq!((fast, slow), (StatusCode::OK, StatusCode::GATEWAY_TIMEOUT));
    }
}

/// Reads one response with a `content-length` body from `s` (what is left after it stays in
/// `rest`); its status and body. Fails if it does not come within 3 s.
async fn read_response(s: &mut TcpStream, rest: &mut Vec<u8>) -> (u16, String) {
    let (head, body) = common::read_any_response(s, rest).await;
    (head[9..12].parse().unwrap(), body)
}

/// One keep-alive connection whose requests come every way a client sends them: the next one
/// after a pause, at once, two in one write, and one sent while the answer to the one before is
/// still on its way (the serving task watches the client meanwhile, and waits for its next head
/// on what that watch left registered). Each is answered, in order.
#[tokio::test]
async fn a_keep_alive_connection_serves_requests_sent_at_any_moment() {
    let upstream = spawn_upstream(|req: Request<Incoming>| async move {
        let ms: u64 = req.uri().path().trim_start_matches("/d/").parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Response::new(Full::new(Bytes::from(req.uri().path().to_owned()))))
    })
    .await;
    let proxy = proxy_to(upstream, 5000).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut rest = Vec::new();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
    for (path, pause) in [("/d/50", 100), ("/d/0", 100), ("/d/50", 0), ("/d/0", 0), ("/d/30", 250)] {
        s.write_all(get(path).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s, &mut rest).await, (200, path.to_owned()));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    // Two in one write.
    s.write_all((get("/d/40") + &get("/d/1")).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut rest).await, (200, "/d/40".to_owned()));
    assert_eq!(read_response(&mut s, &mut rest).await, (200, "/d/1".to_owned()));
    // The next request while the answer to this one is on its way.
    s.write_all(get("/d/150").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(get("/d/2").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut rest).await, (200, "/d/150".to_owned()));
    assert_eq!(read_response(&mut s, &mut rest).await, (200, "/d/2".to_owned()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(get("/d/3").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut rest).await, (200, "/d/3".to_owned()));
}

/// A response no plugin reads goes to an HTTP/1.1 client with its end-to-end fields as the
/// upstream sent them (names in their case, in order), less the fields that end at this hop,
/// framed for the client's connection, with the proxy's request id and the upstream's `date`
/// (none added); an HTTP/2 client, which hyper's server answers, gets the same fields.
#[tokio::test]
async fn response_fields_go_to_the_client_as_the_upstream_sent_them() {
    let upstream = common::spawn_raw_upstream(common::mixed_answer).await;
    let proxy = proxy_to(upstream, 5000).await;
    let paths = ["/a", "/chunked", "/b"];
    for (path, head) in paths.into_iter().zip(common::get_hellos(proxy, &paths).await) {
        let lines: Vec<&str> = head.split("\r\n").collect();
        let has = |l: &str| lines.iter().filter(|x| **x == l).count();
        let named = |n: &str| lines.iter().filter(|x| x.to_lowercase().starts_with(n)).count();
        assert_eq!((has("Server: raw"), has("X-Mixed-Case: Value 1")), (1, 1), "{head}");
        assert_eq!((named("connection:"), named("keep-alive:")), (0, 0), "{head}");
        assert_eq!(named("x-request-id:"), 1, "{head}");
        assert_eq!(has(&format!("x-request-id: id{path}")), 1, "{head}");
        assert_eq!(named("date:"), 1, "{head}");
        if path == "/chunked" {
            assert_eq!(
                (named("transfer-encoding:"), named("content-length:")),
                (1, 0),
                "{head}"
            );
        } else {
            assert_eq!(has("Date: Thu, 01 Jan 2026 00:00:00 GMT"), 1, "{head}");
            assert_eq!((has("content-length: 5"), named("content-length:")), (1, 1), "{head}");
            let two = lines.iter().position(|l| *l == "X-Two: a").expect(&head);
            assert_eq!(lines[two + 1], "X-Two: b");
        }
    }
    let req = Request::get(format!("http://{proxy}/h2")).body(full("")).unwrap();
    let resp = h2_client().request(req).await.unwrap();
    let h = resp.headers().clone();
    assert_eq!(body_text(resp).await, "hello");
    assert_eq!(h["server"], "raw");
    assert_eq!(h["x-mixed-case"], "Value 1");
    assert_eq!(h.get_all("x-two").iter().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(h["date"], "Thu, 01 Jan 2026 00:00:00 GMT");
    assert!(h.contains_key("x-request-id"));
    assert!(!h.contains_key("keep-alive") && !h.contains_key("connection"));
}

#[tokio::test]
async fn http2_prior_knowledge_client() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{proxy}/h2/path?q=1"))
        .body(full("over h2"))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = body_json(resp).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/h2/path");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["body"], "over h2");
    assert_eq!(seen["version"], "HTTP/1.1", "upstreams get HTTP/1.1");
    // No host header on h2: :authority becomes host and x-forwarded-host.
    assert_eq!(seen["headers"]["host"], proxy.to_string());
    assert_eq!(seen["headers"]["x-forwarded-host"], proxy.to_string());
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
}

/// A body produced chunk by chunk with no length, so it goes out chunked (h1) / as DATA
/// frames (h2) and nothing on the way can know its size in advance.
struct Generated {
    sent: usize,
    total: usize,
}

const CHUNK: usize = 64 * 1024;

fn generated_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.total {
            return Poll::Ready(None);
        }
        let n = CHUNK.min(self.total - self.sent);
        let chunk: Vec<u8> = (self.sent..self.sent + n).map(generated_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn generated_hash(total: usize) -> String {
    let mut h = Fnv1a::new();
    for start in (0..total).step_by(CHUNK) {
        let chunk: Vec<u8> = (start..(start + CHUNK).min(total)).map(generated_byte).collect();
        h.update(&chunk);
    }
    format!("{:016x}", h.finish())
}

#[tokio::test]
async fn large_streamed_bodies_arrive_intact() {
    const SIZE: usize = 8 * 1024 * 1024;
    let expected_hash = generated_hash(SIZE);

    // Upload: the demo upstream hashes what it received.
    let demo = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(demo, 10_000).await;
    for c in [client(), h2_client()] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{proxy}/upload"))
            .body(Generated { sent: 0, total: SIZE }.boxed())
            .unwrap();
        let seen = body_json(c.request(req).await.unwrap()).await;
        assert_eq!(seen["body_len"], SIZE);
        assert_eq!(seen["body_fnv1a64"], expected_hash);
        assert_eq!(seen["headers"]["transfer-encoding"], "chunked");
    }

    // Both ways at once: an echo upstream streams the request body straight back.
    let echo = spawn_upstream(|req: Request<Incoming>| async move { Ok(Response::new(req.into_body())) }).await;
    let proxy = proxy_to(echo, 10_000).await;
    for c in [client(), h2_client()] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{proxy}/echo"))
            .body(Generated { sent: 0, total: SIZE }.boxed())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let (mut len, mut hash) = (0, Fnv1a::new());
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len();
                hash.update(&data);
            }
        }
        assert_eq!(len, SIZE);
        assert_eq!(format!("{:016x}", hash.finish()), expected_hash);
    }
}

#[tokio::test]
async fn malformed_requests_do_not_hurt_the_proxy() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;

    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }

    // CONNECT is refused rather than tunnelled.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 501"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Still serving.
    let resp = client()
        .get(format!("http://{proxy}/ok").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn http10_client_without_host() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /old?x=1 HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let json: Value = serde_json::from_str(&reply[reply.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(json["path"], "/old");
    // No client host: the upstream's own address, and no x-forwarded-host.
    assert_eq!(json["headers"]["host"], upstream.to_string());
    assert!(json["headers"].get("x-forwarded-host").is_none());
}

/// Proxy -> upstream connections are pooled: sequential requests over one client connection
/// reuse the proxy's kept-alive upstream connection instead of opening one per request.
#[tokio::test]
async fn upstream_connections_are_reused_across_requests() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const REQUESTS: usize = 20;
    // An upstream that counts the TCP connections it accepts and the requests it serves.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (accepted, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, srv) = (Arc::clone(&accepted), Arc::clone(&served));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            acc.fetch_add(1, Ordering::SeqCst);
            let srv = Arc::clone(&srv);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = srv.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "request {n}, {} body bytes",
                            body.len()
                        )))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = proxy_to(upstream, 5000).await;

    // One client connection, driven by hand so no client-side pool can open a second one.
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 1..=REQUESTS {
        sender.ready().await.expect("the client connection stays open");
        let req = Request::builder()
            .method(if i % 2 == 0 { Method::POST } else { Method::GET })
            .uri(format!("/reuse/{i}"))
            .header("host", "reuse.test")
            .body(full(if i % 2 == 0 { "some body" } else { "" }))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let text = body_text(resp).await;
        assert!(text.starts_with("request "), "request {i}: {text}");
    }

    assert_eq!(
        served.load(Ordering::SeqCst),
        REQUESTS,
        "every request reached the upstream"
    );
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&accepted),
        "{REQUESTS} sequential requests opened {accepted} upstream connections: they are not pooled"
    );
}

fn raw_get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: app.test\r\n{extra}connection: close\r\n\r\n")
}

/// A proxy with `/admin` to upstream `admin` and a catch-all to upstream `public` (the shape
/// of an auth bypass: a protected prefix and a less protected route to everything else), plus
/// `extra` top-level config. Returns (proxy, admin upstream, public upstream).
async fn admin_and_catch_all(extra: &str) -> (SocketAddr, SocketAddr, SocketAddr) {
    let admin = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let public = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\n{extra}\
         upstreams:\n  - {{ name: admin, addresses: [\"{admin}\"] }}\n  - {{ name: public, addresses: [\"{public}\"] }}\n\
         routes:\n\
         \x20 - {{ path_prefix: /admin, methods: [GET, POST], upstream: admin }}\n\
         \x20 - {{ upstream: public }}\n"
    ))
    .await;
    (proxy, admin, public)
}

/// Path normalisation: every spelling of `/admin/secret` an attacker would try is routed like
/// `/admin/secret` and forwarded in that normal form (the old proxy routed `//admin/secret`,
/// `/x/../admin/secret`, `/%61dmin/secret`, ... to the catch-all and forwarded them raw).
#[tokio::test]
async fn path_is_normalised_before_routing_and_forwarded_normalised() {
    let (proxy, admin, public) = admin_and_catch_all("").await;
    for raw_path in [
        "/admin/secret",
        "//admin/secret",
        "/x/../admin/secret",
        "/%61dmin/secret",
        "/%61%64%6D%69%6E/secret",
        "/admin/./secret",
        "/admin//secret",
        "/%2e%2e/admin/secret",
        "/x/%2E%2E/admin/secret",
        "/x/.%2e/admin/secret",
        "/../admin/secret",
        "/./admin/secret",
        "///admin///secret",
        "/admin/x/../secret",
        "/public/../../admin/secret",
    ] {
        let (status, _, body) = common::raw(proxy, &raw_get(&format!("{raw_path}?q=%2F..//x"), "")).await;
        assert_eq!(status, 200, "{raw_path}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["upstream"], admin.to_string(), "{raw_path} reached the catch-all");
        assert_eq!(seen["path"], "/admin/secret", "{raw_path}");
        assert_eq!(seen["query"], "q=%2F..//x", "{raw_path}: the query is untouched");
    }
    // Paths are case-sensitive: /ADMIN is another path (documented).
    let (status, _, body) = common::raw(proxy, &raw_get("/ADMIN/secret", "")).await;
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (seen["upstream"].as_str(), seen["path"].as_str()),
        (Some(&*public.to_string()), Some("/ADMIN/secret"))
    );
    // Escapes of reserved characters are kept, with upper-case hex.
    let (_, _, body) = common::raw(proxy, &raw_get("/files/a%3fb%20c", "")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["path"],
        "/files/a%3Fb%20c"
    );

    // Refused with 400, and the proxy stays healthy.
    for bad in [
        "/admin%2Fsecret",
        "/admin%2fsecret",
        "/admin%5Csecret",
        "/x%2F..%2Fadmin/secret",
        "/admin/secret%00",
        "/admin/%zz",
        "/admin/%4",
    ] {
        let (status, _, body) = common::raw(proxy, &raw_get(bad, "")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.starts_with("bad request path: "), "{bad}: {body}");
    }
    let (status, _, _) = common::raw(proxy, &raw_get("/admin/secret", "")).await;
    assert_eq!(status, 200);
}

/// `path_normalization:` options: encoded slashes decoded (then routed as separators), or kept.
#[tokio::test]
async fn path_normalization_options() {
    let (proxy, admin, _) = admin_and_catch_all("path_normalization: { escaped_slashes: decode }\n").await;
    let (status, _, body) = common::raw(proxy, &raw_get("/x%2F..%2Fadmin%2fsecret", "")).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (seen["upstream"].as_str(), seen["path"].as_str()),
        (Some(&*admin.to_string()), Some("/admin/secret"))
    );

    let (proxy, _, public) =
        admin_and_catch_all("path_normalization: { escaped_slashes: keep, merge_slashes: false }\n").await;
    let (_, _, body) = common::raw(proxy, &raw_get("/files/a%2fb", "")).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (seen["upstream"].as_str(), seen["path"].as_str()),
        (Some(&*public.to_string()), Some("/files/a%2Fb"))
    );
    let (_, _, body) = common::raw(proxy, &raw_get("//files//x/./y", "")).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["path"], "//files//x/y");
}

/// A method the matching route does not allow is 405 with `Allow`, not a fall-through to the
/// catch-all (which took `PUT /admin/x` before).
#[tokio::test]
async fn method_mismatch_is_405_not_a_fall_through() {
    let (proxy, admin, _) = admin_and_catch_all("").await;
    for method in ["PUT", "DELETE", "PATCH"] {
        let (status, head, body) = common::raw(
            proxy,
            &format!("{method} /admin/x HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 405, "{method}: {body}");
        assert!(head.to_ascii_lowercase().contains("\r\nallow: get, post"), "{head}");
    }
    let (status, _, body) = common::raw(proxy, &raw_get("/%61dmin/x", "")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["upstream"],
        admin.to_string()
    );
}

/// Host checks (RFC 9112 §3.2): duplicate, missing on HTTP/1.1, invalid, or disagreeing with an
/// absolute-form target: 400, and the proxy goes on serving.
#[tokio::test]
async fn bad_host_headers_are_400() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\n\
         upstreams: [{{ name: up, addresses: [\"{upstream}\"] }}]\n\
         routes: [{{ host: app.test, upstream: up }}]\n"
    ))
    .await;
    for (what, request) in [
        (
            "duplicate",
            "GET / HTTP/1.1\r\nhost: app.test\r\nhost: other.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "duplicate, same value",
            "GET / HTTP/1.1\r\nhost: app.test\r\nhost: app.test\r\nconnection: close\r\n\r\n",
        ),
        ("missing", "GET / HTTP/1.1\r\nconnection: close\r\n\r\n"),
        (
            "userinfo",
            "GET / HTTP/1.1\r\nhost: evil@app.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "absolute form, other host",
            "GET http://app.test/ HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "absolute form, other port",
            "GET http://app.test:8080/ HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n",
        ),
    ] {
        let (status, _, body) = common::raw(proxy, request).await;
        assert_eq!(status, 400, "{what}: {body}");
    }
    for (what, request) in [
        (
            "plain",
            "GET / HTTP/1.1\r\nhost: App.Test:80\r\nconnection: close\r\n\r\n",
        ),
        (
            "absolute form",
            "GET http://app.test/ HTTP/1.1\r\nhost: app.test:80\r\nconnection: close\r\n\r\n",
        ),
        (
            "absolute form, no host",
            "GET http://app.test/ HTTP/1.1\r\nconnection: close\r\n\r\n",
        ),
    ] {
        let (status, _, body) = common::raw(proxy, request).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
}

/// `Connection` cannot remove the end-to-end headers the proxy relies on: the old proxy
/// dropped `host` (so `app.test` requests fell to the catch-all) and `x-request-id`.
#[tokio::test]
async fn connection_header_cannot_strip_host_or_request_id() {
    let app = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let other = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = start_proxy(&format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - {{ name: app, addresses: [\"{app}\"] }}\n  - {{ name: other, addresses: [\"{other}\"] }}\n\
         routes:\n  - {{ host: app.test, upstream: app }}\n  - {{ upstream: other }}\n"
    ))
    .await;
    let (status, head, body) = common::raw(
        proxy,
        "GET /x HTTP/1.1\r\nhost: app.test\r\nx-request-id: my-id-1\r\nx-gone: 1\r\n\
         connection: host, x-request-id, x-gone\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("\r\nx-request-id: my-id-1"), "{head}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["upstream"], app.to_string());
    let h = &seen["headers"];
    assert_eq!(h["host"], "app.test");
    assert_eq!(h["x-request-id"], "my-id-1");
    assert!(
        h.get("x-gone").is_none(),
        "a listed end-to-end header of no concern is still removed: {h}"
    );
}

/// `trusted_proxies`: forwarding headers from other peers are replaced or removed; from a
/// trusted peer they are kept and this hop appended.
#[tokio::test]
async fn forwarding_headers_follow_trusted_proxies() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let request = "GET /f HTTP/1.1\r\nhost: app.test\r\nx-forwarded-for: 203.0.113.7\r\n\
                   forwarded: for=203.0.113.7;proto=https\r\nx-real-ip: 203.0.113.7\r\n\
                   x-forwarded-proto: https\r\nx-forwarded-host: spoofed.test\r\nconnection: close\r\n\r\n";
    let seen = |trusted: &'static str| async move {
        let proxy = start_proxy(&format!(
            "listen: 127.0.0.1:0\n{trusted}\
             upstreams: [{{ name: up, addresses: [\"{upstream}\"] }}]\nroutes: [{{ upstream: up }}]\n"
        ))
        .await;
        let (status, _, body) = common::raw(proxy, request).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["headers"].clone()
    };
    for untrusted in ["", "trusted_proxies: [10.0.0.0/8, \"::1\"]\n"] {
        let h = seen(untrusted).await;
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{untrusted}: {h}");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none(), "{h}");
    }
    let h = seen("trusted_proxies: [127.0.0.0/8]\n").await;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.7;proto=https, for=127.0.0.1;host=\"app.test\";proto=http"
    );
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "spoofed.test");
}

/// RFC 9113 §8.2.3: an HTTP/2 client's cookie fields reach an HTTP/1.1 upstream as one
/// `cookie` line joined with "; " (the old proxy sent one line per field).
#[tokio::test]
async fn h2_cookie_fields_are_joined_for_the_upstream() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let proxy = proxy_to(upstream, 5000).await;
    let req = Request::builder()
        .uri(format!("http://{proxy}/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(full(""))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = body_json(resp).await;
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2; c=3", "{seen}");
}
