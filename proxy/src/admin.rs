//! The admin listener (`admin: { listen: ... }`): Prometheus metrics, health, readiness and
//! config reload, on an address separate from the proxy's.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`crate::metrics`]) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` when listening with plugins loaded and not draining, else 503 |
//! | `POST /reload` | re-reads the config file: 200 with a summary, or 400 naming where each problem is |
//!
//! Who may ask: the listener binds a loopback address unless `admin.allow_remote` (config
//! validation), and with `admin.token_file` `/metrics` and `/reload` need `Authorization: Bearer
//! <token>`. A browser on the host must not be able to drive it: `POST /reload` needs the header
//! `X-Weft-Admin` (not CORS-safelisted, so a cross-site page cannot send it without a preflight,
//! which this listener never grants), a request with an `Origin` other than its own `Host` is
//! refused, and without a token the `Host` must be `localhost` or an IP literal (a DNS-rebound
//! name is refused). Replies name no file paths and carry no plugin text: the details of a
//! rejected reload are in the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::{AdminConfig, Limits};
use crate::metrics::Metrics;

/// Runs a config reload: `Ok(summary)` or `Err(every problem)`.
pub type ReloadFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Connections the admin listener takes at once (its timers are the proxy's `limits:`).
pub const ADMIN_MAX_CONNECTIONS: u32 = 64;

/// The header `POST /reload` needs (any value): a browser cannot add it cross-site.
pub const ADMIN_HEADER: &str = "x-weft-admin";

/// What the admin endpoints act on.
#[derive(Clone)]
pub struct Admin {
    pub metrics: &'static Metrics,
    /// `None`: `POST /reload` answers 501 (e.g. the demo, whose config is generated).
    pub reload: Option<ReloadFn>,
    /// The bearer token `/metrics` and `/reload` need (`admin.token_file`), if any.
    pub token: Option<String>,
}

/// Reads `admin.token_file`: one token of 16 to 4096 visible ASCII characters (surrounding
/// whitespace ignored). `Ok(None)` without a token file.
pub fn read_token(admin: &AdminConfig) -> Result<Option<String>, String> {
    let Some(path) = &admin.token_file else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("admin.token_file: cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if !(16..=4096).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "admin.token_file: {} must hold one token of 16 to 4096 visible ASCII characters",
            path.display()
        ));
    }
    Ok(Some(token.to_owned()))
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

/// `Host` without its port, lowercased, brackets kept for IPv6 (`[::1]`).
fn host_name(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?.to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    Some(name.to_owned())
}

/// Whether a host name is `localhost` or an IP literal: what a DNS-rebinding page cannot send.
fn is_literal_host(name: &str) -> bool {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    name == "localhost" || bare.parse::<std::net::IpAddr>().is_ok()
}

impl Admin {
    /// Why the request may not go on (a reply), or `None`.
    fn refuse(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = headers
                .get(header::HOST)
                .map(|h| [b"http://".as_slice(), h.as_bytes()].concat());
            if !own.is_some_and(|own| origin.as_bytes().eq_ignore_ascii_case(&own)) {
                return Some(text(StatusCode::FORBIDDEN, "cross-origin requests are refused\n"));
            }
        }
        if self.token.is_none() && !host_name(headers).as_deref().is_none_or(is_literal_host) {
            return Some(text(
                StatusCode::FORBIDDEN,
                "the admin listener answers only to localhost or an IP address in Host\n",
            ));
        }
        let guarded = matches!(path, "/metrics" | "/reload");
        if let (Some(token), true) = (&self.token, guarded) {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !bool::from(given.ct_eq(token.as_bytes())) {
                let mut resp = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Some(resp);
            }
        }
        if method == Method::POST && path == "/reload" && !headers.contains_key(ADMIN_HEADER) {
            return Some(text(
                StatusCode::FORBIDDEN,
                "POST /reload needs the header X-Weft-Admin: 1\n",
            ));
        }
        None
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if let Some(resp) = self.refuse(req.method(), req.uri().path(), req.headers()) {
            return resp;
        }
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
                    Ok(summary) => text(
                        StatusCode::OK,
                        format!("config reloaded: {}\n", printable(&summary, 300)),
                    ),
                    Err(problems) => text(StatusCode::BAD_REQUEST, rejected_reply(&problems)),
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

/// At most `max` bytes of `s`, every character outside printable ASCII replaced by `?`.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Most problem locations a rejected reload's answer lists.
const MAX_LISTED: usize = 20;

/// The answer to a rejected reload: where each problem is (the config field, e.g.
/// `routes[0].upstream`), never the messages, which can hold file paths and plugin text; they
/// are in the log.
fn rejected_reply(problems: &str) -> String {
    let mut out = String::from("config reload rejected; the old config keeps serving.\n");
    let lines: Vec<&str> = problems.lines().filter(|l| l.starts_with("config error")).collect();
    if lines.is_empty() {
        out.push_str("1 problem\n");
    } else {
        out.push_str(&format!("{} problem(s), at:\n", lines.len()));
    }
    for line in lines.iter().take(MAX_LISTED) {
        // "config error in FILE at FIELD: message" (FILE may contain " at ": take the last
        // " at " before the first ": " after it).
        let at = line
            .split_once(": ")
            .and_then(|(head, _)| head.rsplit_once(" at "))
            .map_or("(the file as a whole)", |(_, field)| field);
        out.push_str(&format!("  {}\n", printable(at, 120)));
    }
    if lines.len() > MAX_LISTED {
        out.push_str(&format!("  ... and {} more\n", lines.len() - MAX_LISTED));
    }
    out.push_str("the details are in the proxy's log\n");
    out
}

/// Serves the admin endpoints on `listener` until the process exits, with the timers of
/// `limits` and at most [`ADMIN_MAX_CONNECTIONS`] connections.
pub async fn serve_admin(listener: TcpListener, admin: Admin, limits: Limits) {
    if let Ok(addr) = listener.local_addr() {
        let auth = if admin.token.is_some() {
            "bearer token"
        } else {
            "loopback, no token"
        };
        info!(%addr, auth, "admin listening (/metrics, /healthz, /readyz, POST /reload)");
    }
    let admin = Arc::new(admin);
    let limits = Limits {
        max_connections: Some(ADMIN_MAX_CONNECTIONS),
        max_connections_per_ip: None,
        ..limits
    };
    let handle = move |req, _remote| {
        let admin = Arc::clone(&admin);
        async move { admin.handle(req).await }
    };
    let forever = std::future::pending();
    if let Err(e) =
        crate::conn::serve_connections(listener, "admin", limits, handle, forever, limits.idle_timeout).await
    {
        tracing::warn!(error = %e, "admin listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn call(
        addr: std::net::SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// An admin listener whose reload fails with `problem` (counting its calls), with `token`.
    async fn start(
        problem: &'static str,
        token: Option<&str>,
    ) -> (std::net::SocketAddr, Arc<AtomicU32>, &'static Metrics) {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let reload: ReloadFn = Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move { Err(problem.to_owned()) })
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = Admin {
            metrics,
            reload: Some(reload),
            token: token.map(str::to_owned),
        };
        tokio::spawn(serve_admin(listener, admin, Limits::default()));
        (addr, calls, metrics)
    }

    const X: (&str, &str) = (ADMIN_HEADER, "1");

    #[tokio::test]
    async fn endpoints() {
        let (addr, _, metrics) = start(
            "config error in x.yaml at routes[0].upstream: unknown upstream \"nope\"",
            None,
        )
        .await;
        assert_eq!(call(addr, Method::GET, "/healthz", &[]).await.0, StatusCode::OK);
        assert_eq!(
            call(addr, Method::GET, "/readyz", &[]).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_ready(true);
        assert_eq!(
            call(addr, Method::GET, "/readyz", &[]).await,
            (StatusCode::OK, "ready\n".into())
        );
        let (status, body) = call(addr, Method::GET, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("weft_ready 1"), "{body}");
        let (status, body) = call(addr, Method::POST, "/reload", &[X]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("  routes[0].upstream\n"), "{body}");
        assert_eq!(
            call(addr, Method::GET, "/reload", &[]).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(call(addr, Method::GET, "/nope", &[]).await.0, StatusCode::NOT_FOUND);
    }

    /// What a page in a browser on the host could send: a simple POST (no custom header), a POST
    /// with a foreign Origin, or any request after DNS rebinding (a foreign Host). None reloads.
    #[tokio::test]
    async fn browsers_cannot_reload() {
        let (addr, calls, _) = start("config error in x.yaml at routes[0].upstream: nope", None).await;
        let (status, body) = call(addr, Method::POST, "/reload", &[("content-type", "text/plain")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("X-Weft-Admin"), "{body}");
        let (status, _) = call(addr, Method::POST, "/reload", &[X, ("origin", "http://evil.example")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(addr, Method::POST, "/reload", &[X, ("host", "evil.example:9901")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(addr, Method::GET, "/metrics", &[("host", "rebound.example")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(calls.load(Ordering::Relaxed), 0, "no reload ran");
        // Its own origin, localhost, and IP literals are fine.
        let own = format!("http://{addr}");
        assert_eq!(
            call(addr, Method::POST, "/reload", &[X, ("origin", own.as_str())])
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(addr, Method::POST, "/reload", &[X, ("host", "localhost:1")])
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(addr, Method::GET, "/healthz", &[("host", "[::1]:9")]).await.0,
            StatusCode::OK
        );
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn token_guards_metrics_and_reload() {
        let token = "0123456789abcdef-token";
        let (addr, calls, _) = start("config error in x.yaml at listen: bad", Some(token)).await;
        let bearer = format!("Bearer {token}");
        assert_eq!(
            call(addr, Method::GET, "/metrics", &[]).await.0,
            StatusCode::UNAUTHORIZED
        );
        let wrong = [("authorization", "Bearer 0123456789abcdef-tokeN")];
        assert_eq!(
            call(addr, Method::GET, "/metrics", &wrong).await.0,
            StatusCode::UNAUTHORIZED
        );
        let ok = [("authorization", bearer.as_str())];
        assert_eq!(call(addr, Method::GET, "/metrics", &ok).await.0, StatusCode::OK);
        assert_eq!(
            call(addr, Method::POST, "/reload", &[X]).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let (status, body) = call(addr, Method::POST, "/reload", &[X, ok[0]]).await;
        assert_eq!(
            (status, calls.load(Ordering::Relaxed)),
            (StatusCode::BAD_REQUEST, 1),
            "{body}"
        );
        // Health and readiness stay open (probes), also with a host name.
        assert_eq!(
            call(addr, Method::GET, "/healthz", &[("host", "admin.internal")])
                .await
                .0,
            StatusCode::OK
        );
    }

    #[test]
    fn rejected_reply_names_fields_not_paths_or_plugin_text() {
        let nuls = "\0".repeat(4096);
        let problems = format!(
            "failed to load plugins:\n\
             config error in /srv/secret/weft.yaml at plugins[2]: plugin instance x (p) failed to initialise: {nuls}\n\
             config error in /srv/secret/weft.yaml at libraries[0]: library \"l\": cannot open /opt/lib/libx.so: no\n\
             config error in /srv/secret/weft.yaml: cannot read file: denied"
        );
        let reply = rejected_reply(&problems);
        assert_eq!(
            reply,
            "config reload rejected; the old config keeps serving.\n3 problem(s), at:\n  plugins[2]\n  libraries[0]\n  \
             (the file as a whole)\nthe details are in the proxy's log\n"
        );
        let many: String = (0..30)
            .map(|i| format!("config error in f at routes[{i}]: x\n"))
            .collect();
        let reply = rejected_reply(&many);
        assert!(reply.contains("routes[19]") && !reply.contains("routes[20]") && reply.contains("and 10 more"));
        assert_eq!(printable("a\u{0}b\u{1b}[31mc\u{e9}", 100), "a?b?[31mc?");
    }

    #[test]
    fn tokens_are_checked_when_read() {
        let dir = std::env::temp_dir().join(format!("weft-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            AdminConfig {
                listen: "0.0.0.0:9901".into(),
                plugin_timing: false,
                allow_remote: true,
                token_file: Some(path),
            }
        };
        assert_eq!(
            read_token(&cfg("good", "  0123456789abcdef\n")).unwrap().as_deref(),
            Some("0123456789abcdef")
        );
        for bad in ["short", "has a space in it ....", ""] {
            let e = read_token(&cfg("bad", bad)).unwrap_err();
            assert!(e.starts_with("admin.token_file: "), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
