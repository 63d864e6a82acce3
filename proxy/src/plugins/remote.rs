//! `type: nats` instances: the NATS connection (with the small runtime that drives it), reading
//! each instance's phases from its workers, and the `weft-worker` command `check` prints.

use std::sync::Arc;
use std::time::Duration;

use weft_nats_bridge::{NatsPluginOptions, NatsTransport};
use weft_runtime::Runtime;

use super::{Plugins, RemoteInstance};
use crate::config::{Config, Failure, NatsConfig, PluginConfig, PluginType};

/// The NATS connection and the small tokio runtime (one thread) that drives it. Its own runtime
/// because plugins load before the proxy's runtime exists; calls are still awaited on the
/// proxy's threads, only the socket and the reply routing live here.
pub struct NatsHost {
    runtime: Option<tokio::runtime::Runtime>,
    pub transport: Arc<NatsTransport>,
    /// What the connection was made with, to tell whether a reload can keep it.
    made_with: Connection,
    /// Room broadcasts relayed through this connection already (a kept connection is attached
    /// once, not once per reload).
    rooms_attached: std::sync::atomic::AtomicBool,
}

/// The options of a connection and the contents of the files they name (credentials, CA,
/// client certificate and key) when it was made: a reload that changes neither keeps the
/// connection, one that rotates a file reconnects.
#[derive(PartialEq, Eq)]
struct Connection {
    opts: weft_nats_bridge::NatsOptions,
    files: Vec<Option<Vec<u8>>>,
}

impl Connection {
    fn new(opts: weft_nats_bridge::NatsOptions) -> Connection {
        use weft_nats_bridge::NatsAuth;
        let creds = match &opts.auth {
            NatsAuth::CredsFile(p) => Some(p.clone()),
            _ => None,
        };
        let (cert, key) = opts.tls.client_cert.clone().unzip();
        let files = [creds, opts.tls.ca.clone(), cert, key]
            .into_iter()
            .flatten()
            .map(|path| std::fs::read(path).ok())
            .collect();
        Connection { opts, files }
    }
}

impl NatsHost {
    /// Relays WebSocket room broadcasts through this connection (`ws.rs`).
    pub(crate) fn attach_ws_rooms(&self) {
        if self.rooms_attached.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
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

/// A `type: nats` instance whose workers answered (or whose config listed its phases).
struct Discovered<'a> {
    plugin: &'a PluginConfig,
    phases: u32,
}

/// Connects to NATS and adds every `type: nats` instance to `runtime`, reading phases from the
/// workers when the config does not list them. Runs on the NATS host's own runtime, on a
/// helper thread (so it works whether or not the caller is inside a tokio runtime).
/// A reload passes the running generation's connection as `prev`: kept when the `nats:` section
/// and the files it names are unchanged, so a reload neither reconnects nor fails the calls in
/// flight on the old connection.
pub(super) fn load(
    config: &Config,
    runtime: &Arc<Runtime>,
    plugins: &mut Plugins,
    problems: &mut Vec<String>,
    prev: Option<&Arc<NatsHost>>,
) {
    let remote: Vec<_> = config.plugins.iter().filter(|p| p.kind == PluginType::Nats).collect();
    let ws_rooms = config.routes.iter().any(|r| r.websocket.is_some());
    let Some(nats) = config.nats.as_ref().filter(|_| !remote.is_empty() || ws_rooms) else {
        return;
    };
    let opts = match nats_options(nats) {
        Ok(o) => o,
        Err(e) => return problems.push(e),
    };
    let discovery = Duration::from_millis(
        nats.discovery_timeout_ms
            .unwrap_or(crate::config::DEFAULT_NATS_DISCOVERY_TIMEOUT_MS),
    );
    let made_with = Connection::new(opts);
    let host = match prev.filter(|p| p.made_with == made_with) {
        Some(kept) => Arc::clone(kept),
        None => match connect(made_with) {
            Ok(host) => Arc::new(host),
            Err(e) => return problems.push(e),
        },
    };
    let Some(handle) = host.runtime.as_ref().map(|rt| rt.handle().clone()) else {
        return problems.push("nats: its runtime is gone".into());
    };
    let result = std::thread::scope(|s| {
        s.spawn(|| handle.block_on(discover(&host.transport, &remote, discovery)))
            .join()
            .unwrap_or_else(|_| Err(vec!["nats: start-up panicked".into()]))
    });
    let found = match result {
        Ok(found) => found,
        Err(errs) => return problems.extend(errs),
    };
    for d in found {
        instantiate(config, &host.transport, runtime, d, plugins, problems);
    }
    plugins.nats = Some(host);
}

/// A new connection on a runtime of its own. Runs on a helper thread (so it works whether or not
/// the caller is inside a tokio runtime).
fn connect(made_with: Connection) -> Result<NatsHost, String> {
    let rt = nats_runtime().map_err(|e| format!("nats: cannot start its runtime: {e}"))?;
    let opts = made_with.opts.clone();
    let transport = std::thread::scope(|s| {
        s.spawn(|| {
            rt.block_on(NatsTransport::connect(opts))
                .map_err(|e| format!("nats: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("nats: connecting panicked".into()))
    })?;
    Ok(NatsHost {
        runtime: Some(rt),
        transport,
        made_with,
        rooms_attached: Default::default(),
    })
}

fn nats_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-nats")
        .enable_all()
        .build()
}

/// Reads the phases of every remote instance; all problems at once.
async fn discover<'a>(
    transport: &NatsTransport,
    remote: &[&'a PluginConfig],
    discovery: Duration,
) -> Result<Vec<Discovered<'a>>, Vec<String>> {
    let mut found = Vec::new();
    let mut errs = Vec::new();
    for &p in remote {
        match remote_phases(transport, p, discovery).await {
            Ok(phases) => found.push(Discovered { plugin: p, phases }),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() { Ok(found) } else { Err(errs) }
}

/// The phases of remote instance `p`: its `phases:` list, else what its workers report; body
/// phases are refused.
async fn remote_phases(transport: &NatsTransport, p: &PluginConfig, discovery: Duration) -> Result<u32, String> {
    let name = p.remote_name();
    let phases = match p.phase_mask() {
        Some(m) => m,
        None => match weft_nats_bridge::discover(transport, name, discovery).await {
            Ok(info) if info.plugin != p.plugin => {
                return Err(format!(
                    "plugin instance {}: the workers serving {name:?} run plugin {:?}, the config says {:?}",
                    p.name, info.plugin, p.plugin
                ));
            }
            Ok(info) => info.phases,
            Err(e) => {
                return Err(format!(
                    "plugin instance {} (type: nats): cannot read its phases: {e}; start its workers first, or list `phases:` in the config",
                    p.name
                ));
            }
        },
    };
    let body = weft_runtime::abi::WEFT_PHASE_MASK_REQUEST_BODY | weft_runtime::abi::WEFT_PHASE_MASK_RESPONSE_BODY;
    if phases & body != 0 {
        return Err(format!(
            "plugin instance {} (type: nats): plugin {:?} has body phases, which are not supported over NATS; load it in-process (type: ffi) instead",
            p.name, p.plugin
        ));
    }
    Ok(phases)
}

/// Adds one discovered remote instance to `runtime`, timed for the `weft_remote_*` metrics.
fn instantiate(
    config: &Config,
    transport: &Arc<NatsTransport>,
    runtime: &Arc<Runtime>,
    d: Discovered<'_>,
    plugins: &mut Plugins,
    problems: &mut Vec<String>,
) {
    let p = d.plugin;
    let deadline = Duration::from_millis(p.deadline_ms.unwrap_or(crate::config::DEFAULT_NATS_DEADLINE_MS));
    let opts = NatsPluginOptions {
        deadline,
        max_in_flight: p
            .max_in_flight
            .unwrap_or_else(|| crate::config::default_max_in_flight(config.slot_count())),
    };
    let inst = weft_nats_bridge::NatsInstance::new(transport.plugin(p.remote_name(), opts), d.phases);
    let inst = crate::metrics::global().timed_remote(&p.name, inst);
    match runtime.instantiate_remote(&p.name, inst, p.failure == Failure::Open, deadline) {
        Ok(id) => {
            plugins.instances.insert(p.name.clone(), id);
            let url = config.nats.as_ref().map_or("", |n| n.url.as_str());
            plugins.remote.push(RemoteInstance {
                name: p.name.clone(),
                phases: d.phases,
                worker_command: worker_command(url, config, p),
            });
        }
        Err(e) => problems.push(e.to_string()),
    }
}

fn nats_options(c: &NatsConfig) -> Result<weft_nats_bridge::NatsOptions, String> {
    use weft_nats_bridge::{NatsOptions, NatsTls};
    let mut o = NatsOptions {
        url: c.url.clone(),
        per_thread: c.per_thread_connections,
        ..NatsOptions::default()
    };
    if let Some(name) = &c.name {
        o.name = name.clone();
    }
    if let Some(a) = &c.auth {
        o.auth = nats_auth(a)?;
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

fn nats_auth(a: &crate::config::NatsAuthConfig) -> Result<weft_nats_bridge::NatsAuth, String> {
    use weft_nats_bridge::NatsAuth;
    Ok(if let Some(user) = &a.user {
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
    })
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

    /// The serving threads' own connections are on unless the config turns them off.
    #[test]
    fn per_thread_connections_default_on() {
        let parse = |nats: &str| {
            let text = format!(
                "listen: 127.0.0.1:1\nnats: {nats}\nupstreams: [{{ name: u, addresses: [\"127.0.0.1:9\"] }}]\nroutes: [{{ upstream: u }}]\n"
            );
            let config = Config::parse(&text, "c.yaml", std::path::Path::new(".")).unwrap();
            nats_options(config.nats.as_ref().unwrap()).unwrap().per_thread
        };
        assert!(parse("{ url: x }"));
        assert!(parse("{ url: x, per_thread_connections: true }"));
        assert!(!parse("{ url: x, per_thread_connections: false }"));
    }
}
