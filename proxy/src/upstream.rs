//! Upstream pools: round robin over addresses, pooled keep-alive HTTP/1.1 connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::UpstreamBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{UpstreamConfig, parse_upstream_address};

pub struct Upstream {
    pub name: String,
    addresses: Vec<Authority>,
    next: AtomicUsize,
    timeout: Duration,
    // One client per upstream: the connect timeout lives on the connector.
    client: Client<HttpConnector, UpstreamBody>,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// No response headers within `timeout_ms`.
    Timeout,
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Only fills in `host` when the client sent none (see `forward::pin_host`).
            .set_host(true)
            .build(connector);
        Upstream {
            name: config.name.clone(),
            addresses,
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(config.timeout_ms),
            client,
        }
    }

    /// The address for the next request (round robin).
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.addresses[i % self.addresses.len()]
    }

    /// Sends `req` (whose URI already points at an address from [`Upstream::pick`]) and waits
    /// for the response head. The response body streams afterwards, outside the timeout.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::Failed(e)),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}
