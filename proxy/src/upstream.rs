//! Upstream pools: round robin over addresses, pooled keep-alive HTTP/1.1 connections, one
//! pool per serving thread. A pooled connection is driven by a task on the thread that opened
//! it, so with one single-threaded runtime per serving thread ([`crate::workers`]) a request,
//! its upstream connection and the response never leave the thread that accepted the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::UpstreamBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;

use crate::config::{DEFAULT_UPSTREAM_BODY_TIMEOUT_MS, UpstreamConfig, parse_upstream_address};
use crate::conn::{TimedBody, timeout_in};
use crate::metrics::TimeoutKind;

pub struct Upstream {
    pub name: String,
    addresses: Vec<Authority>,
    next: AtomicUsize,
    timeout: Duration,
    /// `body_timeout_ms`: longest wait for the next bytes of a response body.
    body_timeout: Duration,
    connect_timeout: Duration,
    /// One client (so one keep-alive pool) per thread that sends to this upstream.
    clients: ThreadLocal<Client<HttpConnector, UpstreamBody>>,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// No response headers within `timeout_ms`.
    Timeout,
    /// The client's request body, streamed upstream, stalled (`limits.request_body_timeout_ms`).
    RequestBodyTimeout,
    /// Connect or I/O failure.
    Failed(hyper_util::client::legacy::Error),
}

impl Upstream {
    /// `config` must have passed validation.
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let addresses = config
            .addresses
            .iter()
            .map(|a| parse_upstream_address(a).expect("validated upstream address"))
            .collect();
        Upstream {
            name: config.name.clone(),
            addresses,
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(config.timeout_ms),
            body_timeout: Duration::from_millis(config.body_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_BODY_TIMEOUT_MS)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            clients: ThreadLocal::new(),
        }
    }

    /// This thread's client: its connections' tasks run on this thread's runtime.
    fn client(&self) -> &Client<HttpConnector, UpstreamBody> {
        self.clients.get_or(|| {
            // The connect timeout lives on the connector.
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(self.connect_timeout));
            connector.set_nodelay(true);
            connector.set_keepalive(Some(Duration::from_secs(60)));
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                // Only fills in `host` when the client sent none (see `forward::pin_host`).
                .set_host(true)
                .build(connector)
        })
    }

    /// The address for the next request (round robin).
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.addresses[i % self.addresses.len()]
    }

    /// Sends `req` (whose URI already points at an address from [`Upstream::pick`]) and waits
    /// for the response head. The response body streams afterwards, outside the timeout, each
    /// wait for its next bytes bounded by `body_timeout_ms`.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<TimedBody<Incoming>>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client().request(req)).await {
            Ok(Ok(resp)) => Ok(resp.map(|b| TimedBody::new(b, self.body_timeout, TimeoutKind::UpstreamBody))),
            Ok(Err(e)) if timeout_in(&e) == Some(TimeoutKind::RequestBody) => Err(UpstreamError::RequestBodyTimeout),
            Ok(Err(e)) => Err(UpstreamError::Failed(e)),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}
