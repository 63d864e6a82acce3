//! The proxy itself: startup (plugins, routes, upstreams), the entry of each request (request
//! id, metrics, access log; its stages are in `request.rs`), the accept loop for in-process use
//! (`spawn`, `serve`; the binary serves on the threads of `workers.rs`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::net::TcpListener;
use weft_runtime::{Chain, InstanceId, InstanceSpec, Runtime};

use crate::config::{Config, Failure, Limits, NatsConfig, PluginType, parse_method};
use crate::conn::RequestBody;
use crate::forward::ProxyBody;
use crate::metrics::{NO_ROUTE, RouteMetrics};
use crate::route::{HostMatcher, Matcher, Router};
use crate::upstream::Upstream;

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
    /// `None` when the config has no plugin instances: the runtime is then never touched.
    pub runtime: Option<Arc<Runtime>>,
    pub instances: HashMap<String, InstanceId>,
    /// Plugin names each library offers, in config order (for `weft-proxy check`).
    pub libraries: Vec<(String, Vec<String>)>,
    /// `type: nats` instances: (instance, phase mask, the worker command that serves it).
    pub remote: Vec<(String, u32, String)>,
    /// The NATS connection of the `type: nats` instances, if any.
    pub nats: Option<Arc<NatsHost>>,
    /// `type: ffi` instances: (instance, how its asynchronous calls run), for `weft-proxy check`.
    pub ffi: Vec<(String, String)>,
}

/// The NATS connection and the small tokio runtime (one thread) that drives it. Its own runtime
/// because plugins load before the proxy's runtime exists; calls are still awaited on the
/// proxy's threads, only the socket and the reply routing live here.
pub struct NatsHost {
    runtime: Option<tokio::runtime::Runtime>,
    pub transport: Arc<weft_nats_bridge::NatsTransport>,
}

impl NatsHost {
    /// Relays WebSocket room broadcasts through this connection (`ws.rs`).
    fn attach_ws_rooms(&self) {
        if let Some(rt) = &self.runtime {
            crate::ws::hub().attach_nats(self.transport.client().clone(), rt.handle());
        }
    }
}

impl Drop for NatsHost {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so it is fine inside another runtime too.
            rt.shutdown_background();
        }
    }
}

fn nats_options(c: &NatsConfig) -> Result<weft_nats_bridge::NatsOptions, String> {
    use weft_nats_bridge::{NatsAuth, NatsOptions, NatsTls};
    let mut o = NatsOptions {
        url: c.url.clone(),
        ..NatsOptions::default()
    };
    if let Some(name) = &c.name {
        o.name = name.clone();
    }
    if let Some(a) = &c.auth {
        o.auth = if let Some(user) = &a.user {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: a.password.clone().unwrap_or_default(),
            }
        } else if let Some(t) = &a.token {
            NatsAuth::Token(t.clone())
        } else if let Some(path) = &a.nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("nats.auth.nkey: cannot read {}: {e}", path.display()))?;
            NatsAuth::NKeySeed(seed.trim().to_owned())
        } else if let Some(path) = &a.creds {
            NatsAuth::CredsFile(path.clone())
        } else {
            NatsAuth::None
        };
    }
    if let Some(t) = &c.tls {
        o.tls = NatsTls {
            required: t.required,
            ca: t.ca.clone(),
            client_cert: t.cert.clone().zip(t.key.clone()),
        };
    }
    if let Some(ms) = c.connect_timeout_ms {
        o.connect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = c.reconnect_max_delay_ms {
        o.reconnect_max_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = c.ping_interval_ms {
        o.ping_interval = Duration::from_millis(ms);
    }
    Ok(o)
}

/// Connects to NATS and adds every `type: nats` instance to `runtime`, reading phases from the
/// workers when the config does not list them. Runs on the NATS host's own runtime, on a
/// helper thread (so it works whether or not the caller is inside a tokio runtime).
fn load_remote(config: &Config, runtime: &Arc<Runtime>, plugins: &mut Plugins, problems: &mut Vec<String>) {
    let remote: Vec<_> = config.plugins.iter().filter(|p| p.kind == PluginType::Nats).collect();
    let ws_rooms = config.routes.iter().any(|r| r.websocket.is_some());
    let Some(nats) = config.nats.as_ref().filter(|_| !remote.is_empty() || ws_rooms) else {
        return;
    };
    let opts = match nats_options(nats) {
        Ok(o) => o,
        Err(e) => return problems.push(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-nats")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return problems.push(format!("nats: cannot start its runtime: {e}")),
    };
    let discovery = Duration::from_millis(nats.discovery_timeout_ms.unwrap_or(2000));
    let url = nats.url.clone();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            rt.block_on(async {
                let transport = weft_nats_bridge::NatsTransport::connect(opts)
                    .await
                    .map_err(|e| vec![format!("nats: {e}")])?;
                let mut found = Vec::new();
                let mut errs = Vec::new();
                for p in &remote {
                    let name = p.remote_name();
                    let phases = match p.phase_mask() {
                        Some(m) => m,
                        None => match weft_nats_bridge::discover(&transport, name, discovery).await {
                            Ok(info) if info.plugin != p.plugin => {
                                errs.push(format!(
                                    "plugin instance {}: the workers serving {name:?} run plugin {:?}, the config says {:?}",
                                    p.name, info.plugin, p.plugin
                                ));
                                continue;
                            }
                            Ok(info) => info.phases,
                            Err(e) => {
                                errs.push(format!(
                                    "plugin instance {} (type: nats): cannot read its phases: {e}; start its workers first, or list `phases:` in the config",
                                    p.name
                                ));
                                continue;
                            }
                        },
                    };
                    let body = weft_runtime::abi::WEFT_PHASE_MASK_REQUEST_BODY | weft_runtime::abi::WEFT_PHASE_MASK_RESPONSE_BODY;
                    if phases & body != 0 {
                        errs.push(format!(
                            "plugin instance {} (type: nats): plugin {:?} has body phases, which are not supported over NATS; load it in-process (type: ffi) instead",
                            p.name, p.plugin
                        ));
                        continue;
                    }
                    found.push((p, phases));
                }
                if errs.is_empty() { Ok((transport, found)) } else { Err(errs) }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(vec!["nats: start-up panicked".into()]))
    });
    let (transport, found) = match result {
        Ok(r) => r,
        Err(errs) => return problems.extend(errs),
    };
    for (p, phases) in found {
        let deadline = Duration::from_millis(p.deadline_ms.unwrap_or(200));
        let opts = weft_nats_bridge::RemotePluginOptions {
            deadline,
            max_in_flight: p
                .max_in_flight
                .unwrap_or_else(|| crate::config::default_max_in_flight(config.slot_count())),
        };
        let inst = weft_nats_bridge::NatsInstance::new(transport.plugin(p.remote_name(), opts), phases);
        // Times each call and counts failures (weft_remote_* metrics).
        let inst = crate::metrics::global().timed_remote(&p.name, inst);
        match runtime.instantiate_remote(&p.name, inst, p.failure == Failure::Open, deadline) {
            Ok(id) => {
                plugins.instances.insert(p.name.clone(), id);
                plugins
                    .remote
                    .push((p.name.clone(), phases, worker_command(&url, config, p)));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    plugins.nats = Some(Arc::new(NatsHost {
        runtime: Some(rt),
        transport,
    }));
}

/// The `weft-worker` command that serves remote instance `p`, for `weft-proxy check`. Neither
/// the instance's config nor the credentials of the NATS URL are printed (they may hold
/// secrets): the command reads the config from a file the operator writes.
fn worker_command(url: &str, config: &Config, p: &crate::config::PluginConfig) -> String {
    let url = url.split(',').map(redact_userinfo).collect::<Vec<_>>().join(",");
    let head = format!(
        "weft-worker -nats {url} -plugin {} -instance {}",
        p.plugin,
        p.remote_name()
    );
    let index = config.plugins.iter().position(|q| q.name == p.name).unwrap_or(0);
    match &p.config {
        None | Some(serde_json::Value::Null) => format!("{head} -config '{{}}'"),
        Some(_) => format!(
            "{head} -config \"$(cat {name}.json)\"  ({name}.json: plugins[{index}].config as JSON; not printed, it may hold secrets)",
            name = p.remote_name()
        ),
    }
}

/// `nats://user:pass@host:4222` -> `nats://***@host:4222`.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (&url[..scheme.len() + 3], rest),
        None => ("", url),
    };
    match rest.split('/').next().and_then(|auth| auth.rfind('@')) {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl Plugins {
    /// Loads every library and instantiates every plugin instance, reporting all failures.
    pub fn load(config: &Config) -> Result<Plugins, StartupError> {
        Plugins::load_replacing(config, None)
    }

    /// [`load`](Self::load) for a config reload: the new plugin runtime replaces `prev`
    /// ([`Runtime::replacing`]: the same arena while its layout is unchanged, shared statistics
    /// and buffered-body budget). On failure every instance initialised so far is shut down.
    pub fn load_replacing(config: &Config, prev: Option<&Runtime>) -> Result<Plugins, StartupError> {
        let mut plugins = Plugins {
            runtime: None,
            instances: HashMap::new(),
            libraries: Vec::new(),
            remote: Vec::new(),
            nats: None,
            ffi: Vec::new(),
        };
        let has_remote = config.plugins.iter().any(|p| p.kind == PluginType::Nats);
        if config.libraries.is_empty() && !has_remote {
            return Ok(plugins);
        }
        let opts = config.runtime_options();
        let runtime = match prev {
            Some(prev) => Runtime::replacing(prev, opts),
            None => Runtime::new(opts),
        }
        .map_err(|e| StartupError(vec![format!("plugin runtime: {e}")]))?;
        let mut problems = Vec::new();
        if let Some(n) = config.runtime.as_ref().and_then(|r| r.worker_ring_capacity)
            && let Err(e) = runtime.set_worker_ring_capacity(n)
        {
            problems.push(format!("runtime.worker_ring_capacity: {e}"));
        }
        let mut failed_libraries = Vec::new();
        // Plugins flagged blocking, by (library, plugin).
        let mut flagged_blocking = Vec::new();
        for lib in &config.libraries {
            match runtime.load_library(&lib.name, &lib.path) {
                Ok(metas) => {
                    for m in &metas {
                        if m.flags & weft_runtime::abi::WEFT_PLUGIN_FLAG_BLOCKING != 0 {
                            flagged_blocking.push((lib.name.clone(), m.name.clone()));
                        }
                    }
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
            let Some(library) = p.library.as_ref().filter(|_| p.kind == PluginType::Ffi) else {
                continue; // type: nats, below
            };
            if failed_libraries.contains(&library.as_str()) {
                problems.push(format!(
                    "plugin instance {}: library {:?} failed to load",
                    p.name, library
                ));
                continue;
            }
            let spec = InstanceSpec {
                name: p.name.clone(),
                library: library.clone(),
                plugin: p.plugin.clone(),
                config_json: p.config_json(),
                fail_open: p.failure == Failure::Open,
            };
            let mut opts = p.instance_options(config.slot_count());
            if config.admin.as_ref().is_some_and(|a| a.plugin_timing) {
                opts.timer = Some(crate::metrics::global().plugin_timer(&p.name));
            }
            let how = if opts.blocking || flagged_blocking.contains(&(library.clone(), p.plugin.clone())) {
                "blocking: every call goes to the library's worker pool"
            } else {
                "inline; a Pending answer is awaited"
            };
            let how = format!(
                "{how}, deadline {} ms, max_in_flight {}, 503 Retry-After {} s",
                opts.deadline.as_millis(),
                opts.max_in_flight,
                opts.retry_after_secs
            );
            // InitError messages already name the instance.
            match runtime.instantiate_with(spec, opts) {
                Ok(id) => {
                    plugins.instances.insert(p.name.clone(), id);
                    plugins.ffi.push((p.name.clone(), how));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        load_remote(config, &runtime, &mut plugins, &mut problems);
        if !problems.is_empty() {
            // The instances initialised before the failure never serve: give them their
            // shutdown hooks now (the runtime is dropped unused).
            runtime.shutdown();
            return Err(StartupError(problems));
        }
        plugins.runtime = Some(runtime);
        Ok(plugins)
    }
}

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
}

impl Proxy {
    /// Builds the proxy from a validated config, loading plugins first.
    pub fn from_config(config: &Config) -> Result<Proxy, StartupError> {
        Proxy::from_config_replacing(config, None)
    }

    /// [`from_config`](Self::from_config) for a config reload that replaces a proxy whose plugin
    /// runtime is `prev` ([`Plugins::load_replacing`]).
    pub fn from_config_replacing(config: &Config, prev: Option<&Runtime>) -> Result<Proxy, StartupError> {
        let plugins = Plugins::load_replacing(config, prev)?;
        Proxy::with_plugins(config, plugins)
    }

    /// The proxy of `config` with `plugins` loaded. Fails when an upstream's `tls:` files cannot
    /// be used; the plugins' instances are then shut down.
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
                let name = r.name.clone().unwrap_or_else(|| format!("routes[{i}]"));
                let target = RouteTarget {
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
                };
                (matcher, target)
            })
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
        })
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
    pub async fn handle(&self, mut req: Request<RequestBody>, client: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
        let request_id = crate::logging::request_id(req.headers_mut());
        let access = self.access_log.then(|| (req.method().clone(), req.uri().clone()));
        let mut matched = None;
        let mut resp = self.route_request(req, client, &request_id, &mut matched).await;
        let (metrics, route) = match matched {
            Some(r) => (&r.metrics, r.name.as_str()),
            None => (crate::metrics::global().no_route(), NO_ROUTE),
        };
        metrics.observe(resp.status(), start);
        if let Some((method, uri)) = access {
            crate::logging::access(
                &request_id,
                client,
                &method,
                &uri,
                route,
                resp.status(),
                start.elapsed(),
            );
        }
        resp.headers_mut()
            .insert(crate::logging::REQUEST_ID.clone(), request_id);
        resp
    }
}

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
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<RequestBody>, client: SocketAddr)
    -> impl Future<Output = Response<ProxyBody>> + Send;
}

impl Handler for Proxy {
    fn handle(
        &self,
        req: Request<RequestBody>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        Proxy::handle(self, req, client)
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
    let handle = move |req, remote| {
        let proxy = Arc::clone(&proxy);
        async move { Handler::handle(&*proxy, req, remote).await }
    };
    crate::conn::serve_connections(listener, "proxy", limits, handle, shutdown, drain_timeout).await
}

/// Binds `addr` and serves in a background task; returns the bound address. For tests and
/// benches that run the proxy in-process.
pub async fn spawn(proxy: Proxy, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(proxy), std::future::pending()));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_command_prints_no_secrets() {
        assert_eq!(redact_userinfo("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_userinfo("tls://tok@h"), "tls://***@h");
        assert_eq!(redact_userinfo("u:p@h:4222"), "***@h:4222");
        assert_eq!(redact_userinfo("nats://h:4222"), "nats://h:4222");
        let config = Config::parse(
            "listen: 127.0.0.1:1\nnats: { url: x }\nplugins:\n  - { name: a, type: nats, plugin: bearer-auth, config: { tokens: [s3cret] } }\n  - { name: b, type: nats, plugin: timing, subject: b2 }\nupstreams: [{ name: u, addresses: [\"127.0.0.1:9\"] }]\nroutes: [{ upstream: u, plugins: [a, b] }]\n",
            "c.yaml",
            std::path::Path::new("."),
        )
        .unwrap();
        let a = worker_command("nats://u:pw@h:1,nats://h2:1", &config, &config.plugins[0]);
        assert_eq!(
            a,
            "weft-worker -nats nats://***@h:1,nats://h2:1 -plugin bearer-auth -instance a -config \"$(cat a.json)\"  (a.json: plugins[0].config as JSON; not printed, it may hold secrets)"
        );
        assert!(!a.contains("s3cret") && !a.contains("pw"));
        assert_eq!(
            worker_command("nats://h:1", &config, &config.plugins[1]),
            "weft-worker -nats nats://h:1 -plugin timing -instance b2 -config '{}'"
        );
    }
}
