//! Upstream pools: round robin over the addresses not ejected ([`crate::health`]), keep-alive HTTP/1.1 connections kept per
//! serving thread and driven by the request that uses them ([`crate::pool`]). With one
//! single-threaded runtime per serving thread ([`crate::workers`]) a request, its upstream
//! connection and the response never leave the task, or the thread, that accepted the client.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use crate::body::UpstreamBody;
use crate::config::{DEFAULT_UPSTREAM_BODY_TIMEOUT_MS, UpstreamConfig, parse_upstream_address};
use crate::conn::{TimedBody, timeout_in};
use crate::health::{AddressHealth, Outcome};
use crate::metrics::TimeoutKind;
use crate::pool::{Conn, PooledBody, Pools};
use crate::tls::client::UpstreamTls;

/// An upstream's response body as the proxy streams it: read on the request's own task,
/// each wait for more bytes bounded by `body_timeout_ms`.
pub type ResponseBody = TimedBody<PooledBody>;

pub struct Upstream {
    pub name: String,
    addresses: Vec<Authority>,
    /// The health of `addresses[i]`, shared by every serving thread.
    health: Vec<Arc<AddressHealth>>,
    /// Every address was ejected at the last pick: logged once when it happens and once when
    /// it ends, not per request.
    none_healthy: AtomicBool,
    next: AtomicUsize,
    timeout: Duration,
    /// `body_timeout_ms`: longest wait for the next bytes of a response body.
    body_timeout: Duration,
    connect_timeout: Duration,
    /// Idle keep-alive connections, one pool per thread that sends to this upstream.
    pools: Pools,
    /// `tls:`: HTTPS to every address.
    tls: Option<Arc<UpstreamTls>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response headers within `timeout_ms`.
    #[error("no response head in time")]
    Timeout,
    /// The client's request body, streamed upstream, stalled (`limits.request_body_timeout_ms`).
    #[error("the request body stalled")]
    RequestBodyTimeout,
    /// No connection (refused, unreachable, connect timeout).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The exchange failed on an open connection.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

impl Upstream {
    /// The TLS settings of an HTTPS upstream (health checks connect as requests do).
    pub(crate) fn tls(&self) -> Option<&Arc<UpstreamTls>> {
        self.tls.as_ref()
    }

    /// `config` must have passed validation. Fails when its `tls:` files cannot be used
    /// (`at`: the upstream's config path, for the error).
    pub fn new(config: &UpstreamConfig, at: &str) -> Result<Upstream, String> {
        let tls = match &config.tls {
            Some(t) => Some(UpstreamTls::new(t, &format!("{at}.tls"))?),
            None => None,
        };
        let addresses: Vec<Authority> = config
            .addresses
            .iter()
            .map(|a| parse_upstream_address(a).expect("validated upstream address"))
            .collect();
        let health = addresses
            .iter()
            .map(|a| crate::health::shared(&config.name, a.as_str(), &config.ejection))
            .collect();
        Ok(Upstream {
            name: config.name.clone(),
            addresses,
            health,
            none_healthy: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(config.timeout_ms),
            body_timeout: Duration::from_millis(config.body_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_BODY_TIMEOUT_MS)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            pools: Pools::default(),
            tls,
        })
    }

    /// The address for the next request: round robin over the addresses not ejected; `None`
    /// when every one is.
    pub fn pick(&self) -> Option<&Authority> {
        let n = self.addresses.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let found = (0..n).map(|k| (start + k) % n).find(|&i| self.health[i].available());
        self.note_none_healthy(found.is_none());
        found.map(|i| &self.addresses[i])
    }

    /// Logs when the upstream runs out of healthy addresses and when it has one again.
    fn note_none_healthy(&self, none: bool) {
        if self.none_healthy.load(Ordering::Relaxed) == none || self.none_healthy.swap(none, Ordering::Relaxed) == none
        {
            return;
        }
        if none {
            warn!(upstream = %self.name, "every address of the upstream is ejected; answering 503");
        } else {
            info!(upstream = %self.name, "the upstream has a healthy address again");
        }
    }

    /// The health of `addr`, one of this upstream's addresses.
    fn health_of(&self, addr: Option<&Authority>) -> Option<&AddressHealth> {
        let i = self.addresses.iter().position(|a| Some(a) == addr)?;
        Some(&self.health[i])
    }

    /// The addresses, in config order.
    pub fn addresses(&self) -> &[Authority] {
        &self.addresses
    }

    /// The health of every address, in config order.
    pub fn health(&self) -> &[Arc<AddressHealth>] {
        &self.health
    }

    /// Sends `req` (whose URI already points at an address from [`Upstream::pick`]) and waits
    /// for the response head. The response body streams afterwards, outside the timeout, each
    /// wait for its next bytes bounded by `body_timeout_ms`.
    /// The outcome counts toward the address's health ([`crate::health`]).
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<ResponseBody>, UpstreamError> {
        let health = self.health_of(req.uri().authority());
        let _active = health.map(AddressHealth::active);
        let result = self.send_timed(req).await;
        if let Some(h) = health {
            h.record(match &result {
                Ok(resp) => Outcome::of_status(resp.status()),
                Err(UpstreamError::RequestBodyTimeout) => Outcome::Neutral,
                // The request body failed on our side (the client disconnected mid-body, a body
                // plugin failed): not the upstream's fault. Counted, clients cutting their
                // bodies short would eject healthy addresses.
                Err(UpstreamError::Http(e)) if e.is_user() => Outcome::Neutral,
                Err(_) => Outcome::Failure,
            });
        }
        result
    }

    async fn send_timed(&self, req: Request<UpstreamBody>) -> Result<Response<ResponseBody>, UpstreamError> {
        let resp = match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(UpstreamError::Http(e))) if timeout_in(&e) == Some(TimeoutKind::RequestBody) => {
                return Err(UpstreamError::RequestBodyTimeout);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(UpstreamError::Timeout),
        };
        Ok(resp.map(|b| TimedBody::new(b, self.body_timeout, TimeoutKind::UpstreamBody)))
    }

    /// One exchange on a pooled connection (or a new one). A pooled connection that turns out
    /// to have closed before any of the request was written is replaced by a new connection
    /// once; the request was not sent, so this is safe for any method.
    async fn exchange(&self, req: Request<UpstreamBody>) -> Result<Response<PooledBody>, UpstreamError> {
        let (mut req, addr) = origin_form(req);
        if req.headers().contains_key(header::UPGRADE) {
            return self.exchange_upgrade(req, &addr).await;
        }
        let mut pooled = self.pools.checkout(&addr);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => Conn::connect(&addr, self.connect_timeout, self.tls.as_deref())
                    .await
                    .map_err(UpstreamError::Connect)?,
            };
            match conn.exchange(req).await {
                Ok(resp) => return Ok(resp.map(|b| PooledBody::new(b, conn, self.pools.home(&addr)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// A WebSocket upgrade: a connection of its own, driven by a task (it becomes a tunnel
    /// that outlives the request), never pooled.
    async fn exchange_upgrade(
        &self,
        req: Request<UpstreamBody>,
        addr: &Authority,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let stream = Conn::stream(addr, self.connect_timeout, self.tls.as_deref())
            .await
            .map_err(UpstreamError::Connect)?;
        let (mut send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(conn.with_upgrades());
        let resp = send.send_request(req).await.map_err(UpstreamError::Http)?;
        Ok(resp.map(PooledBody::detached))
    }
}

/// Takes the address out of `req`'s absolute URI (set by the request stage), leaving the
/// origin form (`/path?query`) an HTTP/1.1 server expects; fills in `host` when the client
/// sent none (see `forward::pin_host`).
fn origin_form(mut req: Request<UpstreamBody>) -> (Request<UpstreamBody>, Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let addr = parts
        .authority
        .take()
        .expect("the request stage points the URI at an address");
    let path = parts
        .path_and_query
        .take()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    if !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(addr.as_str()).expect("an authority is a valid header value");
        req.headers_mut().insert(header::HOST, host);
    }
    (req, addr)
}
