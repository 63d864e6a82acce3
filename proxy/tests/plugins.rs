//! The proxy running real Go plugin chains: the example library built by `scripts/build-plugins`
//! (needs the Go toolchain, like the runtime's own tests). Its own test binary, because a process
//! can host only one Go library.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::OnceLock;
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

type TestBody = BoxBody<Bytes, Infallible>;

/// Builds (go build caches) the example library once per test binary.
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new(root.join("scripts/build-plugins"))
            .output()
            .expect("run scripts/build-plugins (is Go installed?)");
        assert!(
            out.status.success(),
            "build-plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
    })
}

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
      request_set: {{ x-from-plugin: "yes", x-forwarded-proto: spoofed, x-forwarded-for: 6.6.6.6 }}
      response_set: {{ x-resp-plugin: "yes" }}
  - {{ name: panics-closed, library: examples, plugin: test-panic }}
  - {{ name: panics-open, library: examples, plugin: test-panic, failure: open }}
upstreams: [{{ name: up, addresses: ["{upstream}"] }}]
routes:
  - {{ path_prefix: /api, upstream: up, plugins: [auth, timing, headers] }}
  - {{ path_prefix: /closed, upstream: up, plugins: [panics-closed] }}
  - {{ path_prefix: /open, upstream: up, plugins: [panics-open] }}
  - {{ path_prefix: /, upstream: up, plugins: [timing] }}
"#,
        lib = library().display().to_string()
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
        // Forwarding headers are added after the plugins ran: proto is overwritten, and the
        // real client address still ends the x-forwarded-for chain.
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
        assert_eq!(h["host"], proxy.to_string(), "h2={h2}");
        assert_eq!(seen["query"], "x=1");
    }
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
