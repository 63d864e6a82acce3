//! The admin listener (`admin: { listen: ... }`): Prometheus metrics, health, readiness and
//! config reload, on an address separate from the proxy's.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`crate::metrics`]) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` when listening with plugins loaded and not draining, else 503 |
//! | `POST /reload` | re-reads the config file: 200 with a summary, or 400 with every problem |

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Runs a config reload: `Ok(summary)` or `Err(every problem)`.
pub type ReloadFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the admin endpoints act on.
#[derive(Clone)]
pub struct Admin {
    pub metrics: &'static Metrics,
    /// `None`: `POST /reload` answers 501 (e.g. the demo, whose config is generated).
    pub reload: Option<ReloadFn>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let (body, ctype) = self.metrics.encode();
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
                resp
            }
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz") => {
                if self.metrics.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::POST, "/reload") => match &self.reload {
                None => text(StatusCode::NOT_IMPLEMENTED, "reload is not available here\n"),
                Some(reload) => match reload().await {
                    Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
                    Err(problems) => text(StatusCode::BAD_REQUEST, format!("{problems}\n")),
                },
            },
            (_, "/metrics" | "/healthz" | "/readyz" | "/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found (try /metrics, /healthz, /readyz, POST /reload)\n",
            ),
        }
    }
}

/// Serves the admin endpoints on `listener` until the process exits.
pub async fn serve_admin(listener: TcpListener, admin: Admin) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening (/metrics, /healthz, /readyz, POST /reload)");
    }
    let admin = Arc::new(admin);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let service = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "admin connection ended with error");
            }
        });
    }
}

/// Samples the arena every 10 ms for its high-water mark; runs until the process exits.
pub async fn sample_arena(metrics: &'static Metrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        metrics.sample_arena();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;

    async fn call(addr: std::net::SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn endpoints() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let reload: ReloadFn = Arc::new(|| {
            Box::pin(async {
                Err("config error in x.yaml at routes[0].upstream: unknown upstream \"nope\"".to_owned())
            })
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_admin(
            listener,
            Admin {
                metrics,
                reload: Some(reload),
            },
        ));
        assert_eq!(call(addr, Method::GET, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            call(addr, Method::GET, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_ready(true);
        assert_eq!(
            call(addr, Method::GET, "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        let (status, body) = call(addr, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("weft_ready 1"), "{body}");
        let (status, body) = call(addr, Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown upstream"), "{body}");
        assert_eq!(
            call(addr, Method::GET, "/reload").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(call(addr, Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
