//! Serving: the accept loop for in-process use (`spawn`, `serve`; the binary serves on the
//! threads of `workers.rs`), what it hands requests to ([`Handler`]), and the tokio runtimes of
//! the demo upstream and the control plane.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;

use crate::config::Limits;
use crate::conn::{Peer, RequestBody};
use crate::forward::ProxyBody;
use crate::proxy::Proxy;

/// How long a shutdown waits for in-flight connections before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(crate::config::DEFAULT_SHUTDOWN_TIMEOUT_MS);

/// hyper's errors keep the interesting part (e.g. "connection refused") in the source chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A multi-threaded tokio runtime for the demo upstream (`weft-proxy upstream`); the proxy's
/// requests are served on the threads of [`crate::workers`], which register with the plugin
/// runtime themselves.
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// The runtime of the control plane when requests are served by [`crate::workers`]: the admin
/// listener, reloads, signals, metrics sampling. One thread: none of it is on a request's path.
pub fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-control")
        .enable_all()
        .build()
}

/// What the accept loop hands requests to: a fixed [`Proxy`], or a reloadable one
/// ([`crate::reload::LiveProxy`]).
///
/// The request's future owns what it uses (`'static`), so the serving loop boxes it as it is:
/// a future is kilobytes (every stage, the upstream exchange), and each `async` wrapper around
/// it moved all of it again per request (`docs/performance-log.md`).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        client: Arc<Peer>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<Self>;
}

impl Handler for Proxy {
    fn handle(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        client: Arc<Peer>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        Proxy::handle(Arc::clone(self), req, client)
    }
}

/// Accepts connections until `shutdown` resolves, then drains in-flight ones (bounded by
/// [`DRAIN_TIMEOUT`]), with the default [`Limits`]. Serves HTTP/1.1 and HTTP/2 (prior
/// knowledge, h2c) on the same port.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_limits(listener, proxy, shutdown, DRAIN_TIMEOUT, Limits::default()).await
}

/// [`serve`] with the time in-flight requests get after `shutdown` (`shutdown_timeout_ms`) and
/// the connection limits and timers of `limits:` ([`crate::conn`]). The listener is closed at
/// once, so new connections are refused while old ones drain.
pub async fn serve_with_limits<H: Handler>(
    listener: TcpListener,
    proxy: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
    limits: Limits,
) -> std::io::Result<()> {
    let handle = move |req, remote| Box::pin(Handler::handle(&proxy, req, remote));
    crate::conn::serve_connections(listener, "proxy", limits, handle, shutdown, drain_timeout).await
}

/// Binds `addr` and serves in a background task; returns the bound address. For tests and
/// benches that run the proxy in-process.
pub async fn spawn(proxy: Proxy, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    proxy.start_health_checks();
    tokio::spawn(serve(listener, Arc::new(proxy), std::future::pending()));
    Ok(local)
}
