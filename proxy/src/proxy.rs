//! The proxy as built from one config: its route table (matchers, upstreams, plugin chains,
//! metrics handles) over the loaded [`Plugins`], and the entry of each request (request id,
//! metrics, access log; its stages are in `request.rs`). A reload builds a new one
//! (`reload.rs`); the accept loop is in `server.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response};
use weft_runtime::{Chain, InstanceId, Runtime};

use crate::config::{Config, RouteConfig, parse_method};
use crate::conn::{Peer, RequestBody};
use crate::forward::ProxyBody;
use crate::metrics::{NO_ROUTE, RouteMetrics};
use crate::plugins::{NatsHost, Plugins, StartupError};
use crate::route::{HostMatcher, Matcher, Router};
use crate::upstream::Upstream;

pub(crate) struct RouteTarget {
    pub(crate) name: String,
    pub(crate) upstream: Arc<Upstream>,
    /// `None` for routes without plugins, so they never touch the runtime.
    pub(crate) chain: Option<Chain>,
    /// This route's counters and histograms, resolved once here.
    pub(crate) metrics: RouteMetrics,
    /// `max_buffered_body_bytes`: the most a buffered body plugin is handed.
    pub(crate) body_limit: usize,
    /// `websocket:`: a plugin serves this route's WebSocket connections.
    pub(crate) ws: Option<crate::ws::WsRoute>,
}

pub struct Proxy {
    pub(crate) router: Router<RouteTarget>,
    runtime: Option<Arc<Runtime>>,
    /// Keeps the NATS connection of remote instances alive.
    _nats: Option<Arc<NatsHost>>,
    /// `access_log: true`.
    access_log: bool,
    /// `path_normalization:`.
    pub(crate) path_opts: crate::path::PathOptions,
    /// `trusted_proxies:`.
    pub(crate) trusted: crate::forward::TrustedProxies,
    /// The upstreams with active health checks, started by [`Proxy::start_health_checks`].
    checked: Vec<(Arc<Upstream>, crate::config::HealthCheckConfig)>,
}

impl Proxy {
    /// Builds the proxy from a validated config, loading plugins first.
    pub fn from_config(config: &Config) -> Result<Proxy, StartupError> {
        Proxy::from_config_replacing(config, None)
    }

    /// [`from_config`](Self::from_config) for a config reload that replaces `prev`: its plugin
    /// runtime and NATS connection are taken over where they can be ([`Plugins::load_replacing`]).
    pub fn from_config_replacing(config: &Config, prev: Option<&Proxy>) -> Result<Proxy, StartupError> {
        // The clock of request durations calibrates itself at its first read (0.6 ms here): now,
        // not in the first request.
        quanta::Instant::now();
        let plugins = Plugins::load_replacing(
            config,
            prev.and_then(|p| p.runtime()).map(|rt| &**rt),
            prev.and_then(|p| p.nats()),
        )?;
        Proxy::with_plugins(config, plugins)
    }

    /// Builds the route table over already loaded `plugins` (which it keeps). Fails when an
    /// upstream's `tls:` files cannot be used; the plugins' instances are then shut down.
    pub fn with_plugins(config: &Config, plugins: Plugins) -> Result<Proxy, StartupError> {
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        let mut problems = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            match Upstream::new(u, &format!("upstreams[{i}]")) {
                Ok(up) => drop(upstreams.insert(u.name.as_str(), Arc::new(up))),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            if let Some(rt) = &plugins.runtime {
                rt.shutdown();
            }
            return Err(StartupError(problems));
        }
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (matcher(r), route_target(i, r, &plugins, &upstreams)))
            .collect();
        let checked = config
            .upstreams
            .iter()
            .filter_map(|u| Some((upstreams[u.name.as_str()].clone(), u.health_check.clone()?)))
            .collect();
        if let Some(nats) = plugins
            .nats
            .as_ref()
            .filter(|_| config.routes.iter().any(|r| r.websocket.is_some()))
        {
            nats.attach_ws_rooms();
        }
        Ok(Proxy {
            router: Router::new(routes),
            runtime: plugins.runtime,
            _nats: plugins.nats,
            access_log: config.access_log,
            path_opts: config.path_normalization,
            trusted: config.trusted_proxies(),
            checked,
        })
    }

    /// Starts the active health checks on the current runtime (the control runtime, never a
    /// serving thread's); they stop when this proxy is dropped. Must run inside a runtime.
    pub fn start_health_checks(&self) {
        for (upstream, check) in &self.checked {
            crate::health::spawn_checks(upstream, check);
        }
    }

    /// The plugin runtime, if the config loads any library; serving threads call
    /// [`Runtime::thread_start`] first (see [`crate::workers`]).
    pub fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.runtime.as_ref()
    }

    /// The NATS connection of `type: nats` instances, if any (for metrics).
    pub fn nats(&self) -> Option<&Arc<NatsHost>> {
        self._nats.as_ref()
    }

    /// Handles one request; every outcome, including errors, is a response. Gives it a request
    /// id (`x-request-id`, to plugins, the upstream and the client), counts it in its route's
    /// metrics and, with `access_log: true`, logs it.
    /// Owns its `Arc`, so the future is `'static` and needs no wrapper ([`crate::server::Handler`]).
    /// Not an `async fn`, which would keep `req` twice in the future's layout (the argument and
    /// its local copy): the block holds the request's head and body once, and the stages borrow
    /// them from it.
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        client: Arc<Peer>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let start = quanta::Instant::now();
        let request_id = crate::logging::request_id(req.headers_mut());
        // Boxed: only with `access_log`, and kept out of every request's future otherwise.
        let access = self
            .access_log
            .then(|| Box::new((req.method().clone(), req.uri().clone())));
        let (head, body) = req.into_parts();
        let (mut head, mut body) = (Some(head), Some(body));
        async move {
            let mut matched = None;
            // The stages' future is awaited here, not in a wrapper of its own: each level of async fn
            // adds its arguments to the request's future (copied whole per request).
            let mut resp = match self
                .stages(&mut head, &mut body, &client, &request_id, &mut matched)
                .await
            {
                Ok(reply) | Err(reply) => reply,
            };
            let (metrics, route) = match matched {
                Some(r) => (&r.metrics, r.name.as_str()),
                None => (crate::metrics::global().no_route(), NO_ROUTE),
            };
            metrics.observe(resp.status(), start);
            if let Some(access) = access {
                let (method, uri) = &*access;
                crate::logging::access(
                    &request_id,
                    client.addr.addr(),
                    method,
                    uri,
                    route,
                    resp.status(),
                    quanta::Instant::now().saturating_duration_since(start),
                );
            }
            // A response whose fields stayed lines has no `x-request-id` among them or in its
            // map (no plugin read it); its writer puts the id before the lines.
            match resp.body_mut().lines_mut() {
                Some(lines) => lines.set_request_id(request_id),
                None => {
                    resp.headers_mut()
                        .insert(crate::logging::REQUEST_ID.clone(), request_id);
                }
            }
            resp
        }
    }
}

/// Route `r`'s matcher; its host pattern and methods were validated by `Config::parse`.
fn matcher(r: &RouteConfig) -> Matcher {
    Matcher {
        host: r.host.as_deref().map(|h| HostMatcher::parse(h).expect("validated")),
        path_prefix: r.path_prefix.clone(),
        methods: r
            .methods
            .as_ref()
            .map(|ms| ms.iter().map(|m| parse_method(m).expect("validated")).collect()),
    }
}

/// What route `r` (the `i`th) leads to: its upstream, plugin chain, metrics and WebSocket
/// endpoint.
fn route_target(i: usize, r: &RouteConfig, plugins: &Plugins, upstreams: &HashMap<&str, Arc<Upstream>>) -> RouteTarget {
    let chain = match (&plugins.runtime, r.plugins.is_empty()) {
        (Some(rt), false) => {
            let ids: Vec<InstanceId> = r.plugins.iter().map(|p| plugins.instances[p.as_str()]).collect();
            // A chain whose plugins handle no phase costs nothing per request.
            Some(rt.chain(&ids)).filter(|c| !c.is_empty())
        }
        _ => None,
    };
    let name = r.name.clone().unwrap_or_else(|| format!("routes[{i}]"));
    RouteTarget {
        metrics: crate::metrics::global().route(&name),
        name,
        upstream: upstreams[r.upstream.as_str()].clone(),
        chain,
        body_limit: r.buffered_body_limit(),
        ws: r.websocket.as_ref().and_then(|w| {
            let rt = plugins.runtime.as_ref()?;
            Some(crate::ws::WsRoute {
                chain: rt.chain(&[*plugins.instances.get(w.plugin.as_str())?]),
                settings: Arc::new(w.settings()),
            })
        }),
    }
}
