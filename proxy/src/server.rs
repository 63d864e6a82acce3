//! The proxy itself: startup (plugins, routes, upstreams), per-request handling, accept loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};
use weft_runtime::{Chain, Exchange, Flow, InstanceId, InstanceSpec, Runtime};

use crate::config::{Config, Failure, parse_method};
use crate::forward::{ProxyBody, add_forwarding_headers, local_reply, pin_host, strip_hop_by_hop, upstream_uri};
use crate::route::{HostMatcher, Matcher, Router, normalize_host};
use crate::upstream::{Upstream, UpstreamError};

/// How long a shutdown waits for in-flight connections before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Plugin libraries and instances that failed to load; each line names the library or
/// instance and the reason.
#[derive(Debug)]
pub struct StartupError(pub Vec<String>);

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for StartupError {}

/// Loaded plugin instances, by config name.
pub struct Plugins {
    /// `None` when the config names no libraries: the runtime is then never touched.
    pub runtime: Option<Arc<Runtime>>,
    pub instances: HashMap<String, InstanceId>,
    /// Plugin names each library offers, in config order (for `weft-proxy check`).
    pub libraries: Vec<(String, Vec<String>)>,
}

impl Plugins {
    /// Loads every library and instantiates every plugin instance, reporting all failures.
    pub fn load(config: &Config) -> Result<Plugins, StartupError> {
        let mut plugins = Plugins {
            runtime: None,
            instances: HashMap::new(),
            libraries: Vec::new(),
        };
        if config.libraries.is_empty() {
            return Ok(plugins);
        }
        let runtime =
            Runtime::new(config.runtime_options()).map_err(|e| StartupError(vec![format!("plugin runtime: {e}")]))?;
        let mut problems = Vec::new();
        let mut failed_libraries = Vec::new();
        for lib in &config.libraries {
            match runtime.load_library(&lib.name, &lib.path) {
                Ok(metas) => {
                    let names = metas.into_iter().map(|m| m.name).collect();
                    plugins.libraries.push((lib.name.clone(), names));
                }
                Err(e) => {
                    problems.push(format!("library {:?}: {e}", lib.name));
                    failed_libraries.push(lib.name.as_str());
                }
            }
        }
        for p in &config.plugins {
            if failed_libraries.contains(&p.library.as_str()) {
                problems.push(format!(
                    "plugin instance {}: library {:?} failed to load",
                    p.name, p.library
                ));
                continue;
            }
            let spec = InstanceSpec {
                name: p.name.clone(),
                library: p.library.clone(),
                plugin: p.plugin.clone(),
                config_json: p.config_json(),
                fail_open: p.failure == Failure::Open,
            };
            // InitError messages already name the instance.
            match runtime.instantiate(spec) {
                Ok(id) => {
                    plugins.instances.insert(p.name.clone(), id);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(StartupError(problems));
        }
        plugins.runtime = Some(runtime);
        Ok(plugins)
    }
}

struct RouteTarget {
    name: String,
    upstream: Arc<Upstream>,
    /// `None` for routes without plugins, so they never touch the runtime.
    chain: Option<Chain>,
}

pub struct Proxy {
    router: Router<RouteTarget>,
    runtime: Option<Arc<Runtime>>,
}

impl Proxy {
    /// Builds the proxy from a validated config, loading plugins first.
    pub fn from_config(config: &Config) -> Result<Proxy, StartupError> {
        let plugins = Plugins::load(config)?;
        Ok(Proxy::with_plugins(config, plugins))
    }

    pub fn with_plugins(config: &Config, plugins: Plugins) -> Proxy {
        let upstreams: HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), Arc::new(Upstream::new(u))))
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let matcher = Matcher {
                    host: r.host.as_deref().map(|h| HostMatcher::parse(h).expect("validated")),
                    path_prefix: r.path_prefix.clone(),
                    methods: r
                        .methods
                        .as_ref()
                        .map(|ms| ms.iter().map(|m| parse_method(m).expect("validated")).collect()),
                };
                let chain = match (&plugins.runtime, r.plugins.is_empty()) {
                    (Some(rt), false) => {
                        let ids: Vec<InstanceId> = r.plugins.iter().map(|p| plugins.instances[p.as_str()]).collect();
                        // A chain whose plugins handle no phase costs nothing per request.
                        Some(rt.chain(&ids)).filter(|c| !c.is_empty())
                    }
                    _ => None,
                };
                let target = RouteTarget {
                    name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                    upstream: upstreams[r.upstream.as_str()].clone(),
                    chain,
                };
                (matcher, target)
            })
            .collect();
        Proxy {
            router: Router::new(routes),
            runtime: plugins.runtime,
        }
    }

    /// The plugin runtime, if the config loads any library; worker threads must call
    /// [`Runtime::thread_start`] (see [`tokio_runtime`]).
    pub fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.runtime.as_ref()
    }

    /// Handles one request; every outcome, including errors, is a response.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return local_reply(StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported", None);
        }
        let (mut parts, body) = req.into_parts();

        // Order: strip hop-by-hop, pin `host`, run plugins, then add x-forwarded-*. Plugins see
        // the end-to-end head the client sent (with `host` filled in for HTTP/2) and can rewrite
        // it; the forwarding headers are added after them, so a plugin cannot spoof or drop them
        // by accident.
        strip_hop_by_hop(&mut parts.headers);
        let host = pin_host(&parts.uri, &mut parts.headers);
        let route_host = host.as_ref().and_then(|h| h.to_str().ok()).map(normalize_host);
        let Some(route) = self.router.find(&parts.method, route_host.as_deref(), parts.uri.path()) else {
            return local_reply(StatusCode::NOT_FOUND, "no route", None);
        };

        let mut exchange: Option<Exchange> = match &route.chain {
            None => None,
            Some(chain) => match chain.start(client, "http") {
                Ok(x) => x,
                Err(weft_runtime::Busy) => {
                    let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "busy", None);
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                    return resp;
                }
            },
        };
        if let Some(x) = exchange.as_mut() {
            if let Flow::Respond(resp) = x.request_headers(&mut parts) {
                return plugin_reply(resp, exchange);
            }
        }

        add_forwarding_headers(&mut parts.headers, client.ip(), "http", host.as_ref());
        let upstream = &route.upstream;
        let addr = upstream.pick();
        parts.uri = upstream_uri(&parts.uri, addr);
        // Upstreams always get HTTP/1.1, whatever the client spoke.
        parts.version = Version::HTTP_11;

        let resp = match upstream.send(Request::from_parts(parts, body)).await {
            Ok(resp) => resp,
            Err(UpstreamError::Timeout) => {
                warn!(route = %route.name, upstream = %upstream.name, %addr, "upstream timed out");
                return local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream timed out", exchange);
            }
            Err(UpstreamError::Failed(e)) => {
                warn!(
                    route = %route.name, upstream = %upstream.name, %addr,
                    error = %error_chain(&e), "upstream request failed"
                );
                return local_reply(StatusCode::BAD_GATEWAY, "upstream unavailable", exchange);
            }
        };

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        if let Some(x) = exchange.as_mut() {
            if let Flow::Respond(resp) = x.response_headers(&mut parts) {
                // Dropping `body` closes (or returns to the pool) the upstream connection.
                return plugin_reply(resp, exchange);
            }
        }
        debug!(route = %route.name, %addr, status = parts.status.as_u16(), "proxied");
        Response::from_parts(parts, ProxyBody::new(body, exchange))
    }
}

fn plugin_reply(resp: Response<bytes::Bytes>, exchange: Option<Exchange>) -> Response<ProxyBody> {
    let (parts, bytes) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::full(bytes, exchange))
}

/// hyper's errors keep the interesting part (e.g. "connection refused") in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A multi-threaded tokio runtime whose workers are registered with the plugin runtime
/// (Go needs to know the threads it will be called on).
pub fn tokio_runtime(plugins: Option<Arc<Runtime>>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(rt) = plugins {
        builder.on_thread_start(move || rt.thread_start());
    }
    builder.build()
}

/// Accepts connections until `shutdown` resolves, then drains in-flight ones (bounded by
/// [`DRAIN_TIMEOUT`]). Serves HTTP/1.1 and HTTP/2 (prior knowledge, h2c) on the same port.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Timers bound slow clients (header read timeout, h2 keep-alive).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "set_nodelay failed");
        }
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, remote).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "connection ended with error");
            }
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("connections still open after drain timeout"),
    }
    debug!("drained");
    Ok(())
}

/// Binds `addr` and serves in a background task; returns the bound address. For tests and
/// benches that run the proxy in-process.
pub async fn spawn(proxy: Proxy, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(proxy), std::future::pending()));
    Ok(local)
}
