//! Upstream pools: the addresses not ejected ([`crate::health`]) picked by the upstream's policy
//! ([`crate::balance`]), retries on another address ([`crate::retry`]), keep-alive HTTP/1.1
//! connections kept per serving thread and driven by the request that uses them
//! ([`crate::pool`]). With one single-threaded runtime per serving thread ([`crate::workers`]) a
//! request, its upstream connection and the response never leave the task, or the thread, that
//! accepted the client.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info, warn};

use crate::balance::{Balancer, Candidates};
use crate::body::UpstreamBody;
use crate::config::{DEFAULT_UPSTREAM_BODY_TIMEOUT_MS, UpstreamConfig, parse_upstream_address};
use crate::conn::{TimedBody, timeout_in};
use crate::forward::Forwarding;
use crate::h1::ClientError;
use crate::h1::head::Fields;
use crate::health::{AddressHealth, Outcome};
use crate::metrics::TimeoutKind;
use crate::pool::{Conn, ExchangeError, PooledBody, Pools};
use crate::retry::Retry;
use crate::timer::Reused;
use crate::tls::client::UpstreamTls;

/// An upstream's response body as the proxy streams it: read on the request's own task,
/// each wait for more bytes bounded by `body_timeout_ms`.
pub type ResponseBody = TimedBody<PooledBody>;

/// What the request stage knows of a request it sends upstream, which spares the upstream path
/// lookups in the request's map (a lookup of a name hashes it and probes: ~100 instructions,
/// `scripts/callgrind-proxy`). The facts hold because plugins can set or remove neither `host`
/// nor a hop-by-hop field (`mutation.rs` refuses them); debug builds check `upgrade` against the
/// map, and a request without a `host` has the map looked at.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// What the caller does with the response head's fields (an upgrade's go into a map
    /// whatever it asks).
    pub fields: Fields,
    /// This proxy's forwarding fields when they are not in the request's map: written after its
    /// fields ([`crate::forward::untrusted_forwarding`]). Never with an upgrade, whose are in its
    /// map (hyper's client writes the map).
    pub forwarding: Option<&'a Forwarding<'a>>,
    /// The request has a `host` field (when false, the map is looked at before the address is
    /// filled in).
    pub has_host: bool,
    /// A WebSocket upgrade, its `upgrade` and `connection` put back: hyper's client sends it.
    pub upgrade: bool,
}

pub struct Upstream {
    pub name: String,
    addresses: Vec<Authority>,
    /// The health of `addresses[i]`, shared by every serving thread.
    health: Vec<Arc<AddressHealth>>,
    /// `balance:` ([`crate::balance`]).
    balancer: Balancer,
    /// `retries:`, and how many were made (`weft_upstream_retries_total`).
    retries: u32,
    retried: Counter,
    /// Every address was ejected at the last pick: logged once when it happens and once when
    /// it ends, not per request.
    none_healthy: AtomicBool,
    timeout: Duration,
    /// `body_timeout_ms`: longest wait for the next bytes of a response body.
    body_timeout: Duration,
    connect_timeout: Duration,
    /// Idle keep-alive connections, one pool per thread that sends to this upstream.
    pools: Pools,
    /// `tls:`: HTTPS to every address.
    tls: Option<Arc<UpstreamTls>>,
}

/// The address a request goes to, and the key it was picked by: a retry picks again by it.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    index: usize,
    key: Option<u64>,
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
    Http(#[source] ClientError),
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
            .map(|a| parse_upstream_address(&a.address).expect("validated upstream address"))
            .collect();
        let health = addresses
            .iter()
            .map(|a| crate::health::shared(&config.name, a.as_str(), &config.ejection))
            .collect();
        Ok(Upstream {
            name: config.name.clone(),
            addresses,
            health,
            balancer: Balancer::new(config),
            retries: config.retries,
            retried: crate::metrics::global().upstream_retries(&config.name),
            none_healthy: AtomicBool::new(false),
            timeout: Duration::from_millis(config.timeout_ms),
            body_timeout: Duration::from_millis(config.body_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_BODY_TIMEOUT_MS)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            pools: Pools::default(),
            tls,
        })
    }

    /// The key `consistent_hash` picks by, from the request as the plugins left it; `None`
    /// for the other policies.
    pub fn balance_key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        self.balancer.key(headers, client)
    }

    /// Whether [`Upstream::balance_key`] reads a header (`consistent_hash` on one), which may be
    /// a forwarding header: those must then be in the map when the key is taken.
    pub fn balance_reads_headers(&self) -> bool {
        self.balancer.reads_headers()
    }

    /// The address for the next request by the upstream's policy, among the addresses not
    /// ejected; `None` when every one is.
    pub fn pick(&self, key: Option<u64>) -> Option<Pick> {
        let found = self.balancer.pick(key, &Candidates::new(&self.health, &[]));
        self.note_none_healthy(found.is_none());
        found.map(|index| Pick { index, key })
    }

    /// The address of `pick`.
    pub fn address(&self, pick: &Pick) -> &Authority {
        &self.addresses[pick.index]
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

    /// The addresses, in config order.
    pub fn addresses(&self) -> &[Authority] {
        &self.addresses
    }

    /// The health of every address, in config order.
    pub fn health(&self) -> &[Arc<AddressHealth>] {
        &self.health
    }

    /// Sends `req` (whose URI already points at the address of `pick`) and waits for the
    /// response head, all attempts within `timeout_ms`; a request that did not reach its
    /// address may go to another ([`crate::retry`]), and `pick` then says which answered. The
    /// response body streams afterwards, outside the timeout, each wait for its next bytes
    /// bounded by `body_timeout_ms`. Each attempt's outcome counts toward its address's health
    /// ([`crate::health`]). `timer` is the client connection's, which its requests reuse.
    /// `out`: what the request stage knows of the request (see [`Outbound`]).
    pub async fn send(
        &self,
        req: Box<Request<UpstreamBody>>,
        pick: &mut Pick,
        timer: &Reused,
        out: Outbound<'_>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let result = {
            let attempts = std::pin::pin!(self.attempts(req, &mut *pick, out));
            timer.within(attempts, self.timeout).await
        };
        let resp = match result {
            Some(Ok(resp)) => resp,
            Some(Err(e)) => return Err(e),
            None => {
                self.health[pick.index].record(Outcome::Failure);
                return Err(UpstreamError::Timeout);
            }
        };
        Ok(resp.map(|b| TimedBody::new(b, self.body_timeout, TimeoutKind::UpstreamBody)))
    }

    /// Attempts on the picked address, then on others while the failure allows a retry.
    async fn attempts(
        &self,
        mut req: Box<Request<UpstreamBody>>,
        pick: &mut Pick,
        out: Outbound<'_>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let host_filled = origin_form(&mut req, out.has_host);
        let mut retry = Retry::new(&req, self.retries, self.addresses.len());
        loop {
            let failed = match self.attempt(req, pick.index, out).await {
                Ok(resp) => return Ok(resp),
                Err(failed) => failed,
            };
            let Some(again) = retry.replay(failed.unsent, &failed.error) else {
                return Err(failed.error);
            };
            let next = self
                .balancer
                .pick(pick.key, &Candidates::new(&self.health, retry.tried(pick.index)));
            let Some(next) = next else {
                return Err(failed.error);
            };
            self.retried.inc();
            debug!(
                upstream = %self.name, from = %self.addresses[pick.index], to = %self.addresses[next],
                error = %failed.error, "retrying on another address"
            );
            pick.index = next;
            req = again;
            if host_filled {
                set_host(&mut req, &self.addresses[next]);
            }
        }
    }

    /// One exchange with address `i`, counted in its active requests and its health.
    async fn attempt(
        &self,
        req: Box<Request<UpstreamBody>>,
        i: usize,
        out: Outbound<'_>,
    ) -> Result<Response<PooledBody>, Failed> {
        let health = &self.health[i];
        let _active = health.active();
        let result = self.exchange(req, &self.addresses[i], out).await;
        health.record(match &result {
            Ok(resp) => Outcome::of_status(resp.status()),
            Err(Failed {
                error: UpstreamError::RequestBodyTimeout,
                ..
            }) => Outcome::Neutral,
            // The request body failed on our side (the client went away mid-body, a body plugin
            // failed): not the address's fault. Counted, clients cutting their bodies short
            // would eject healthy addresses.
            Err(Failed {
                error: UpstreamError::Http(e),
                ..
            }) if e.is_user() => Outcome::Neutral,
            Err(_) => Outcome::Failure,
        });
        result
    }

    /// One exchange on a pooled connection (or a new one). A pooled connection that turns out
    /// to have closed before any of the request was written is replaced by a new connection
    /// once; the request was not sent, so this is safe for any method. So is one that closed
    /// before answering a bodiless request of an idempotent method (`ExchangeError::unanswered`:
    /// its idle close can cross the request). A failure carries the request back when none of
    /// it was written.
    async fn exchange(
        &self,
        req: Box<Request<UpstreamBody>>,
        addr: &Authority,
        out: Outbound<'_>,
    ) -> Result<Response<PooledBody>, Failed> {
        // The rare paths (an upgrade, a new connection with its TLS handshake) are boxed: each
        // await's future is part of every request's future, which hyper and tokio move whole.
        debug_assert_eq!(out.upgrade, req.headers().contains_key(header::UPGRADE));
        if out.upgrade {
            debug_assert!(
                out.forwarding.is_none(),
                "an upgrade's forwarding fields are in its map"
            );
            return Box::pin(self.exchange_upgrade(req, addr)).await;
        }
        let mut req = req;
        let mut pooled = self.pools.checkout(addr);
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => match Box::pin(Conn::connect(addr, self.connect_timeout, self.tls.as_deref())).await {
                    Ok(conn) => conn,
                    Err(e) => return Err(Failed::unsent(UpstreamError::Connect(e), req)),
                },
            };
            match conn
                .exchange(req, self.pools.home(addr), out.fields, out.forwarding)
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(
                    ExchangeError {
                        unsent: Some(again), ..
                    }
                    | ExchangeError {
                        unanswered: Some(again),
                        ..
                    },
                ) if reused => req = again,
                Err(ExchangeError { error, unsent, .. }) => {
                    return Err(Failed {
                        error: http_error(error),
                        unsent,
                    });
                }
            }
        }
    }

    /// A WebSocket upgrade: a connection of its own, driven by a task (it becomes a tunnel
    /// that outlives the request), never pooled.
    async fn exchange_upgrade(
        &self,
        req: Box<Request<UpstreamBody>>,
        addr: &Authority,
    ) -> Result<Response<PooledBody>, Failed> {
        let stream = match Conn::stream(addr, self.connect_timeout, self.tls.as_deref()).await {
            Ok(s) => s,
            Err(e) => return Err(Failed::unsent(UpstreamError::Connect(e), req)),
        };
        let (mut send, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return Err(Failed::unsent(UpstreamError::Http(ClientError::Upgrade(e)), req)),
        };
        tokio::spawn(conn.with_upgrades());
        let resp = send.send_request(*req).await.map_err(|e| Failed {
            error: UpstreamError::Http(ClientError::Upgrade(e)),
            unsent: None,
        })?;
        Ok(resp.map(PooledBody::detached))
    }
}

/// A failed attempt: the error, and the request when none of it was written.
struct Failed {
    error: UpstreamError,
    unsent: Option<Box<Request<UpstreamBody>>>,
}

impl Failed {
    fn unsent(error: UpstreamError, req: Box<Request<UpstreamBody>>) -> Failed {
        Failed {
            error,
            unsent: Some(req),
        }
    }
}

/// A failed exchange; a stalled client body is told apart (it says nothing about the address).
fn http_error(e: ClientError) -> UpstreamError {
    if timeout_in(&e) == Some(TimeoutKind::RequestBody) {
        UpstreamError::RequestBodyTimeout
    } else {
        UpstreamError::Http(e)
    }
}

/// Takes the address out of `req`'s absolute URI (set by the request stage), leaving the
/// origin form (`/path?query`) an HTTP/1.1 server expects; fills in `host` when the client
/// sent none (see `forward::pin_host`) and returns whether it did.
fn origin_form(req: &mut Request<UpstreamBody>, has_host: bool) -> bool {
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
    // `has_host` is certain (the client's `host`, or its authority, pinned); without one the
    // map is looked at, which a `host` the stage could not pin may still be in.
    let filled = !has_host && !req.headers().contains_key(header::HOST);
    if filled {
        set_host(req, &addr);
    }
    filled
}

fn set_host(req: &mut Request<UpstreamBody>, addr: &Authority) {
    let host = HeaderValue::from_str(addr.as_str()).expect("an authority is a valid header value");
    req.headers_mut().insert(header::HOST, host);
}
