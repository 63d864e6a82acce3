//! Running the proxy as a service: config reload (SIGHUP, `POST /reload`), graceful shutdown
//! (SIGTERM/SIGINT), readiness, and the admin listener.
//!
//! The routing state (routes, upstreams, plugin instances with their config) is one immutable
//! [`Proxy`]; [`LiveProxy`] holds the current one in an [`ArcSwap`]. A request takes an `Arc`
//! of the current `Proxy` when it starts and keeps it to the end, so a reload never touches a
//! request in flight: new requests see the new config, old ones finish on the old one. The old
//! generation's plugin instances get their shutdown hooks once nothing uses them any more; a
//! reload that fails shuts down the instances it had initialised at once. The new plugin runtime
//! replaces the old one (`Runtime::replacing`): the same arena while the `runtime:` block keeps
//! its layout, and the same statistics and buffered-body budget.
//!
//! Plugin *code* cannot be reloaded in-process: a Go library cannot be unloaded, and loading a
//! path that is already loaded reuses it. A reload creates new plugin *instances* (new config)
//! from the loaded library. To roll out new plugin code without a restart, run the plugin as
//! NATS workers (`type: nats`) and replace the workers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::admin::{Admin, ReloadFn};
use crate::config::Config;
use crate::conn::RequestBody;
use crate::forward::ProxyBody;
use crate::metrics;
use crate::plugins::StartupError;
use crate::proxy::Proxy;
use crate::server::{Handler, control_runtime};
use crate::tls::server::TlsListener;

/// How long a replaced generation may stay in use (long responses, queued log phases) before
/// its plugin instances are abandoned without their shutdown hooks.
const RETIRE_LIMIT: Duration = Duration::from_secs(300);

/// The proxy serving now, replaceable while it serves.
pub struct LiveProxy {
    current: ArcSwap<Proxy>,
    /// The config file reloads read; `None` when the config was generated (the demo).
    path: Option<PathBuf>,
    /// `listen` and `admin.listen` of the running process: a reload cannot move them.
    addresses: (String, Option<String>),
    /// One reload at a time.
    reloading: Mutex<()>,
    /// The `listen_tls:` listeners, whose certificates a reload replaces.
    tls: std::sync::OnceLock<Vec<Arc<TlsListener>>>,
}

impl LiveProxy {
    pub fn new(proxy: Proxy, config: &Config, path: Option<PathBuf>) -> Arc<LiveProxy> {
        report_to_metrics(&proxy);
        Arc::new(LiveProxy {
            current: ArcSwap::from_pointee(proxy),
            path,
            addresses: addresses(config),
            reloading: Mutex::new(()),
            tls: std::sync::OnceLock::new(),
        })
    }

    /// Makes reloads re-read the certificates of `listeners` (once, at start).
    pub fn set_tls(&self, listeners: Vec<Arc<TlsListener>>) {
        let _ = self.tls.set(listeners);
    }

    /// The proxy new requests go to.
    pub fn current(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// Re-reads the config file and, if it is valid and its plugins load, swaps it in. Blocks
    /// (plugin init, NATS discovery): call it off the async threads ([`Self::reload`]).
    /// `Ok` is a one-line summary; `Err` lists every problem, and the old config keeps serving.
    pub fn reload_blocking(&self) -> Result<String, String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.try_reload();
        metrics::global().reload_result(result.is_ok());
        match &result {
            Ok(summary) => info!(path = ?self.path, "config reloaded: {summary}"),
            Err(problems) => error!("config reload rejected, the old config keeps serving:\n{problems}"),
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let Some(path) = &self.path else {
            return Err("this proxy runs a generated config; there is no file to reload".into());
        };
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let tls = self.tls.get().map_or(&[][..], Vec::as_slice);
        let (certs, tls_note) = crate::tls::reload::prepare(&config, tls)
            .map_err(|e| format!("certificate problems:\n{}", crate::tls::reload::locate(path, &e)))?;
        // The new plugin runtime takes over the current one's arena (same layout), statistics
        // and buffered-body budget, and its NATS connection when `nats:` is unchanged.
        let prev = self.current();
        let proxy = Proxy::from_config_replacing(&config, Some(&prev))
            .map_err(|e| format!("failed to load plugins:\n{}", locate_plugin_problems(path, &config, &e)))?;
        drop(prev);
        // No file path: the summary is also the body of `POST /reload`'s answer.
        let mut summary = format!(
            "{} routes, {} upstreams, {} plugin instances",
            config.routes.len(),
            config.upstreams.len(),
            config.plugins.len()
        );
        if addresses(&config) != self.addresses {
            summary.push_str("; listen and admin.listen changes take effect at restart only");
            warn!("listen/admin.listen changed in the config; they take effect at restart only");
        }
        if let Some(note) = tls_note {
            summary.push_str(&format!("; {note}"));
            warn!("{note}");
        }
        crate::tls::reload::apply(tls, certs);
        if let Some(rt) = proxy.runtime() {
            rt.buffered_budget()
                .set_limit(config.runtime_options().max_buffered_bytes_total);
        }
        report_to_metrics(&proxy);
        // On the control runtime's blocking pool: the checks go to the control runtime.
        proxy.start_health_checks();
        crate::logging::reload_level(config.log.as_ref().and_then(|l| l.level.as_deref()));
        let old = self.current.swap(Arc::new(proxy));
        retire(old);
        let routes: Vec<String> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("routes[{i}]")))
            .collect();
        metrics::global().forget_routes_except(&routes);
        Ok(summary)
    }

    /// [`Self::reload_blocking`] on tokio's blocking pool.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.reload_blocking())
            .await
            .unwrap_or_else(|e| Err(format!("reload panicked: {e}")))
    }
}

impl Handler for LiveProxy {
    fn handle(
        self: &Arc<Self>,
        req: http::Request<RequestBody>,
        client: Arc<crate::conn::Peer>,
    ) -> impl Future<Output = http::Response<ProxyBody>> + Send + use<> {
        // The request keeps this generation alive until it is done.
        Proxy::handle(self.current.load_full(), req, client)
    }
}

/// Prefixes each plugin start-up problem with the file and the config entry it comes from
/// (`config error in FILE at plugins[2]: plugin instance b ...`), like config errors.
pub fn locate_plugin_problems(file: &std::path::Path, config: &Config, e: &StartupError) -> String {
    let file = file.display();
    e.0.iter()
        .map(|line| {
            let lib = config
                .libraries
                .iter()
                .position(|l| line.starts_with(&format!("library {:?}:", l.name)))
                .map(|i| format!("libraries[{i}]"));
            let inst = || {
                config
                    .plugins
                    .iter()
                    .position(|p| {
                        let head = format!("plugin instance {}", p.name);
                        line.strip_prefix(&head)
                            .is_some_and(|rest| rest.starts_with([':', ' ']))
                    })
                    .map(|i| format!("plugins[{i}]"))
            };
            match lib.or_else(inst) {
                Some(at) => format!("config error in {file} at {at}: {line}"),
                None => format!("config error in {file}: {line}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Points the scrape-time metrics at `proxy`'s runtime and NATS connection.
fn report_to_metrics(proxy: &Proxy) {
    let m = metrics::global();
    m.set_runtime(proxy.runtime().cloned());
    m.set_nats(proxy.nats().map(|n| Arc::clone(&n.transport)));
}

fn addresses(c: &Config) -> (String, Option<String>) {
    (c.listen.clone(), c.admin.as_ref().map(|a| a.listen.clone()))
}

/// Waits (on a thread of its own) until a replaced generation is no longer used by any request
/// or log phase, then runs its plugin instances' shutdown hooks.
fn retire(old: Arc<Proxy>) {
    let spawned = std::thread::Builder::new().name("weft-retire".into()).spawn(move || {
        let deadline = Instant::now() + RETIRE_LIMIT;
        let wait = |done: &dyn Fn() -> bool| {
            while !done() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        };
        let runtime = old.runtime().cloned();
        if !wait(&|| Arc::strong_count(&old) == 1) {
            warn!("a replaced config is still in use after {RETIRE_LIMIT:?}; leaving it");
            return;
        }
        drop(old);
        // Responses still streaming and queued log phases hold the runtime through their chain.
        if let Some(rt) = runtime {
            if wait(&|| Arc::strong_count(&rt) == 1) {
                rt.shutdown();
                info!("replaced config retired; its plugin instances are shut down");
            } else {
                warn!(
                    "plugin instances of a replaced config still in use after {RETIRE_LIMIT:?}; not shutting them down"
                );
            }
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot spawn the retire thread; the replaced config's plugins stay up");
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not when the future
/// is first polled, so a signal that arrives in between is not lost (or fatal).
fn terminate_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => info!("SIGTERM: shutting down"),
                    _ = int.recv() => info!("SIGINT: shutting down"),
                },
                (term, int) => {
                    let e = term.err().or(int.err()).map(|e| e.to_string()).unwrap_or_default();
                    warn!(error = %e, "cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    info!("SIGINT: shutting down");
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        info!("SIGINT: shutting down");
    }
}

/// Reloads on every SIGHUP (installed by this call, so SIGHUP no longer kills the process).
fn reload_on_sighup(live: Arc<LiveProxy>) -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = signal(SignalKind::hangup());
        async move {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => return warn!(error = %e, "cannot listen for SIGHUP; reload with POST /reload"),
            };
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading the config");
                let _ = live.reload().await;
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = live;
    }
}

/// The serving sockets: `workers` of them on `listen` (plain HTTP) and on each TLS listener.
fn bind_listeners(
    listen: std::net::SocketAddr,
    tls: Vec<Arc<crate::tls::server::TlsListener>>,
    workers: usize,
    backlog: u32,
    max_connections: Option<u32>,
) -> Result<Vec<crate::workers::Listener>, String> {
    let sockets =
        crate::workers::bind(listen, workers, backlog).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let mut listeners = vec![crate::workers::Listener::plain(sockets, max_connections)];
    for t in tls {
        let socks = crate::workers::bind(t.addr, workers, backlog)
            .map_err(|e| format!("cannot listen on {} ({}.listen): {e}", t.addr, t.label))?;
        info!(listen = %t.addr, "weft-proxy listening (TLS)");
        listeners.push(crate::workers::Listener::tls(socks, t));
    }
    Ok(listeners)
}

/// Binds the admin listener and serves it; `live` when the config can be reloaded (then
/// `POST /reload` reloads it).
async fn start_admin(
    admin: &crate::config::AdminConfig,
    live: Option<Arc<LiveProxy>>,
    m: &'static metrics::Metrics,
    limits: crate::config::Limits,
) -> Result<(), String> {
    let token = crate::admin::read_token(admin)?;
    let addr = &admin.listen;
    let admin_listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (admin.listen): {e}"))?;
    let reload = live.map(|live| {
        let f: ReloadFn = Arc::new(move || {
            let live = live.clone();
            Box::pin(async move { live.reload().await })
        });
        f
    });
    let admin = Admin {
        metrics: m,
        reload,
        token,
    };
    tokio::spawn(crate::admin::serve_admin(admin_listener, admin, limits));
    Ok(())
}

/// Runs the proxy until SIGTERM/SIGINT on a fresh tokio runtime: binds `listen` (and the
/// admin listener), serves, reloads on SIGHUP when the config came from `path`, and on the
/// signal stops accepting, lets in-flight requests finish for up to `shutdown_timeout_ms`,
/// calls the plugins' shutdown hooks and returns. `before` runs inside the runtime first
/// (the demo starts its upstream there).
pub fn run_blocking(
    config: &Config,
    path: Option<PathBuf>,
    proxy: Proxy,
    before: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), String> {
    // The control plane's runtime (admin, reloads, signals); requests are served on the
    // threads of `workers.rs`.
    let rt = control_runtime().map_err(|e| format!("cannot start tokio: {e}"))?;
    let reloadable = path.is_some();
    let live = LiveProxy::new(proxy, config, path);
    let listen = config.listen_addr();
    let admin = config.admin.clone();
    let limits = config.limits();
    let drain = config
        .shutdown_timeout_ms
        .unwrap_or(crate::config::DEFAULT_SHUTDOWN_TIMEOUT_MS);
    let drain = Duration::from_millis(drain);
    let m = metrics::global();

    let workers = config.worker_count();
    let tls = crate::tls::reload::listeners(config).map_err(|e| format!("cannot start: certificate problems:\n{e}"))?;
    live.set_tls(tls.clone());
    let result = rt.block_on(async {
        live.current().start_health_checks();
        let listeners = bind_listeners(
            listen,
            tls,
            workers,
            limits.listen_backlog,
            config.listen_max_connections,
        )?;
        if let Some(admin) = admin {
            start_admin(&admin, reloadable.then(|| live.clone()), m, limits).await?;
        }
        if reloadable {
            tokio::spawn(reload_on_sighup(live.clone()));
        }
        let terminate = terminate_signal();
        if let Some(f) = before {
            f();
        }
        info!(%listen, workers, "weft-proxy listening");
        m.set_ready(true);
        let shutdown = async {
            terminate.await;
            m.set_ready(false);
            info!(timeout = ?drain, "draining: no new connections; waiting for requests in flight");
        };
        crate::workers::serve_listeners(listeners, live.clone(), shutdown, drain, limits, true)
            .await
            .map_err(|e| e.to_string())
    });
    // In-flight requests are done (or out of time): give plugin instances their shutdown hooks.
    if let Some(plugins) = live.current().runtime() {
        plugins.shutdown();
        info!("plugin shutdown hooks done");
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    if result.is_ok() {
        info!("stopped");
    }
    result
}
