//! Semantic validation of a parsed config, one function per section. Every problem is
//! reported (not only the first), each with its field path, in the order of the sections below.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{
    BalanceConfig, BalancePolicy, Config, ConfigError, ConfigErrors, EjectionConfig, HashOn, HealthCheckConfig,
    MAX_ADDRESS_WEIGHT, MAX_BUFFERED_BODY_BYTES, MAX_TIMEOUT_MS, MAX_UPSTREAM_RETRIES, MAX_WEIGHT_TOTAL, NatsConfig,
    PluginConfig, PluginType, REMOTE_PHASES, RouteConfig, RuntimeConfig, STALL_THRESHOLD_MAX_MS,
    STALL_THRESHOLD_MIN_MS, UpstreamConfig, admin_listen_is_loopback, parse_method, parse_upstream_address,
};

/// The indices of the named entries, by name, for the sections that refer to them.
struct Names<'a> {
    libraries: HashMap<&'a str, usize>,
    plugins: HashMap<&'a str, usize>,
    upstreams: HashMap<&'a str, usize>,
}

impl Config {
    pub(super) fn validate(&self, file: &str) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| {
            errs.push(ConfigError {
                file: file.to_owned(),
                path,
                message,
            });
        };
        self.validate_listen(&mut err);
        self.validate_shutdown(&mut err);
        self.validate_log(&mut err);
        self.validate_limits(&mut err);
        self.validate_admin(&mut err);
        crate::tls::validate_tls(self, &mut err);
        self.validate_trusted_proxies(&mut err);
        if let Some(rt) = &self.runtime {
            self.validate_runtime(rt, &mut err);
        }
        let names = self.validate_names(&mut err);
        if let Some(nats) = &self.nats {
            validate_nats(nats, &mut err);
        }
        for (i, p) in self.plugins.iter().enumerate() {
            self.validate_plugin(i, p, &names, &mut err);
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            validate_upstream(i, u, &mut err);
        }
        if self.routes.is_empty() {
            err("routes".into(), "needs at least one route".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            self.validate_route(i, r, &names, &mut err);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// `listen` and `admin.listen`: socket addresses, not the same one.
    fn validate_listen(&self, err: &mut impl FnMut(String, String)) {
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            err(
                "listen".into(),
                format!("invalid socket address {:?}: {e}", self.listen),
            );
        }
        let Some(admin) = &self.admin else { return };
        match admin.listen.parse::<SocketAddr>() {
            Err(e) => err(
                "admin.listen".into(),
                format!("invalid socket address {:?}: {e}", admin.listen),
            ),
            Ok(a) if self.listen.parse::<SocketAddr>().is_ok_and(|l| l == a) => {
                err("admin.listen".into(), "must differ from listen".into())
            }
            Ok(_) => {}
        }
    }

    fn validate_shutdown(&self, err: &mut impl FnMut(String, String)) {
        if self.shutdown_timeout_ms == Some(0) {
            err("shutdown_timeout_ms".into(), "must be at least 1".into());
        }
    }

    /// `log.level` must be a `tracing` filter.
    fn validate_log(&self, err: &mut impl FnMut(String, String)) {
        let level = self.log.as_ref().and_then(|l| l.level.as_deref());
        if let Some(Err(e)) = level.map(tracing_subscriber::EnvFilter::try_new) {
            err(
                "log.level".into(),
                format!("invalid filter {:?}: {e}", level.unwrap_or_default()),
            );
        }
    }

    /// `workers` and `limits:`.
    fn validate_limits(&self, err: &mut impl FnMut(String, String)) {
        if let Some(n) = self.workers.filter(|n| !(1..=crate::workers::MAX_WORKERS).contains(n)) {
            err(
                "workers".into(),
                format!("{n} serving threads: must be 1 to {}", crate::workers::MAX_WORKERS),
            );
        }
        if self.listen_max_connections == Some(0) {
            err("listen_max_connections".into(), "must be at least 1".into());
        }
        let Some(l) = &self.limits else { return };
        for (field, v) in [
            ("header_read_timeout_ms", l.header_read_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("request_body_timeout_ms", l.request_body_timeout_ms),
            ("send_timeout_ms", l.send_timeout_ms),
            ("http2_keep_alive_interval_ms", l.http2_keep_alive_interval_ms),
            ("http2_keep_alive_timeout_ms", l.http2_keep_alive_timeout_ms),
        ] {
            if let Some(msg) = v.and_then(timeout_problem) {
                err(format!("limits.{field}"), msg);
            }
        }
        for (field, v) in [
            ("max_connections", l.max_connections),
            ("http2_max_concurrent_streams", l.http2_max_concurrent_streams),
            ("max_connections_per_ip", l.max_connections_per_ip),
        ] {
            if v == Some(0) {
                err(format!("limits.{field}"), "must be at least 1".into());
            }
        }
        if let Some(n) = l.listen_backlog.filter(|n| !(1..=65535).contains(n)) {
            err("limits.listen_backlog".into(), format!("must be 1 to 65535, got {n}"));
        }
    }

    /// The admin listener can reload the config: loopback only, unless allowed and given a token.
    fn validate_admin(&self, err: &mut impl FnMut(String, String)) {
        let Some(a) = &self.admin else { return };
        match admin_listen_is_loopback(&a.listen) {
            Some(false) if !a.allow_remote => err(
                "admin.listen".into(),
                format!(
                    "{:?} is not a loopback address; the admin listener can reload the config, so exposing it \
                     needs admin.allow_remote: true and admin.token_file",
                    a.listen
                ),
            ),
            _ => {}
        }
        if a.allow_remote && a.token_file.is_none() {
            err(
                "admin.token_file".into(),
                "required with admin.allow_remote: true (a file holding the bearer token)".into(),
            );
        }
    }

    fn validate_trusted_proxies(&self, err: &mut impl FnMut(String, String)) {
        for (i, t) in self.trusted_proxies.iter().enumerate() {
            if let Err(msg) = crate::forward::TrustedProxies::parse_entry(t) {
                err(format!("trusted_proxies[{i}]"), msg);
            }
        }
    }

    /// `runtime:`, its buffer classes included.
    fn validate_runtime(&self, rt: &RuntimeConfig, err: &mut impl FnMut(String, String)) {
        if rt.slots == Some(0) {
            err("runtime.slots".into(), "must be at least 1".into());
        }
        let slots = self.slot_count() as usize;
        match rt.log_queue {
            Some(0) => err("runtime.log_queue".into(), "must be at least 1".into()),
            // Queued log phases hold their slots: a queue as long as the arena lets a slow
            // log plugin take every slot before log phases start to drop.
            Some(n) if n >= slots.max(2) => err(
                "runtime.log_queue".into(),
                format!("must be less than runtime.slots ({slots}), got {n}"),
            ),
            _ => {}
        }
        for (field, zero) in [
            ("slot_size", rt.slot_size == Some(0)),
            ("out_slots", rt.out_slots == Some(0)),
        ] {
            if zero {
                err(format!("runtime.{field}"), "must be at least 1".into());
            }
        }
        if let Some(ms) = rt.stall_threshold_ms
            && ms != 0
            && !(STALL_THRESHOLD_MIN_MS..=STALL_THRESHOLD_MAX_MS).contains(&ms)
        {
            err(
                "runtime.stall_threshold_ms".into(),
                format!(
                    "must be 0 (off) or between {STALL_THRESHOLD_MIN_MS} and {STALL_THRESHOLD_MAX_MS} milliseconds, got {ms}"
                ),
            );
        }
        validate_buffer_classes(rt, err);
        if rt.max_buffered_bytes_total == Some(0) {
            err("runtime.max_buffered_bytes_total".into(), "must be at least 1".into());
        }
        if let Some(n) = rt.worker_ring_capacity
            && (!n.is_power_of_two() || !(2..=weft_runtime::ring::MAX_CAPACITY).contains(&n))
        {
            err(
                "runtime.worker_ring_capacity".into(),
                format!(
                    "must be a power of two between 2 and {}, got {n}",
                    weft_runtime::ring::MAX_CAPACITY
                ),
            );
        }
    }

    /// Names of libraries, plugins, upstreams and routes: non-empty and unique per list.
    fn validate_names(&self, err: &mut impl FnMut(String, String)) -> Names<'_> {
        let libraries = unique_names("libraries", self.libraries.iter().map(|l| l.name.as_str()), err);
        let plugins = unique_names("plugins", self.plugins.iter().map(|p| p.name.as_str()), err);
        let upstreams = unique_names("upstreams", self.upstreams.iter().map(|u| u.name.as_str()), err);
        unique_names("routes", self.routes.iter().filter_map(|r| r.name.as_deref()), err);
        Names {
            libraries,
            plugins,
            upstreams,
        }
    }

    /// `plugins[i]`: the fields of its type, and only those.
    fn validate_plugin(&self, i: usize, p: &PluginConfig, names: &Names<'_>, err: &mut impl FnMut(String, String)) {
        match p.kind {
            PluginType::Ffi => validate_ffi_plugin(i, p, names, err),
            PluginType::Nats => self.validate_nats_plugin(i, p, err),
        }
        for (field, zero) in [
            ("deadline_ms", p.deadline_ms == Some(0)),
            ("max_in_flight", p.max_in_flight == Some(0)),
        ] {
            if zero {
                err(format!("plugins[{i}].{field}"), "must be at least 1".into());
            }
        }
        if let Some(list) = p.phases.as_ref().filter(|_| p.kind == PluginType::Nats) {
            validate_remote_phases(i, list, err);
        }
        if p.plugin.is_empty() {
            err(format!("plugins[{i}].plugin"), "must not be empty".into());
        }
    }

    fn validate_nats_plugin(&self, i: usize, p: &PluginConfig, err: &mut impl FnMut(String, String)) {
        for (field, set) in [
            ("blocking", p.blocking.is_some()),
            ("retry_after_s", p.retry_after_s.is_some()),
        ] {
            if set {
                err(format!("plugins[{i}].{field}"), "only for type: ffi".into());
            }
        }
        if p.library.is_some() {
            err(
                format!("plugins[{i}].library"),
                "not used by type: nats (the workers run the plugin)".into(),
            );
        }
        if self.nats.is_none() {
            err(
                format!("plugins[{i}].type"),
                "type: nats needs a top-level `nats:` block (at least `url`)".into(),
            );
        }
        let subject = p.remote_name();
        if subject.is_empty()
            || !subject
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let field = if p.subject.is_some() { "subject" } else { "name" };
            err(
                format!("plugins[{i}].{field}"),
                format!("{subject:?}: a NATS instance name may use only A-Z, a-z, 0-9, '-' and '_'"),
            );
        }
    }

    /// `routes[i]`: its upstream, matchers, plugins and WebSocket endpoint.
    fn validate_route(&self, i: usize, r: &RouteConfig, names: &Names<'_>, err: &mut impl FnMut(String, String)) {
        if !names.upstreams.contains_key(r.upstream.as_str()) {
            err(
                format!("routes[{i}].upstream"),
                format!("unknown upstream {:?}", r.upstream),
            );
        }
        if let Some(n) = r.max_buffered_body_bytes {
            self.validate_buffered_body_limit(i, n, err);
        }
        validate_route_matcher(i, r, err);
        for (j, p) in r.plugins.iter().enumerate() {
            if !names.plugins.contains_key(p.as_str()) {
                err(format!("routes[{i}].plugins[{j}]"), format!("unknown plugin {p:?}"));
            }
        }
        if let Some(w) = &r.websocket {
            let kind = names.plugins.get(w.plugin.as_str()).map(|&j| self.plugins[j].kind);
            let slot_size = self.runtime_options().slot_size as usize;
            w.validate(kind.map(|k| k == PluginType::Ffi), slot_size, &mut |f, m| {
                err(format!("routes[{i}].websocket.{f}"), m)
            });
        }
    }

    /// `routes[i].max_buffered_body_bytes`: bounded, and no more than the process-wide budget.
    fn validate_buffered_body_limit(&self, i: usize, n: u64, err: &mut impl FnMut(String, String)) {
        let total = self.runtime_options().max_buffered_bytes_total;
        if n == 0 || n > MAX_BUFFERED_BODY_BYTES {
            err(
                format!("routes[{i}].max_buffered_body_bytes"),
                format!("must be between 1 and {MAX_BUFFERED_BODY_BYTES} (256 MiB; stream larger bodies), got {n}"),
            );
        } else if n > total {
            err(
                format!("routes[{i}].max_buffered_body_bytes"),
                format!(
                    "{n} is more than runtime.max_buffered_bytes_total ({total}): no body that large could be buffered"
                ),
            );
        }
    }
}

/// `runtime.buffer_classes`: few enough, each within the slot sizes, smallest first.
fn validate_buffer_classes(rt: &RuntimeConfig, err: &mut impl FnMut(String, String)) {
    let slot_size = rt
        .slot_size
        .unwrap_or(weft_runtime::RuntimeOptions::default().slot_size);
    let classes = rt.buffer_classes.as_deref().unwrap_or_default();
    if classes.len() > weft_runtime::arena::MAX_POOLS - 2 {
        err(
            "runtime.buffer_classes".into(),
            format!("at most {} classes", weft_runtime::arena::MAX_POOLS - 2),
        );
    }
    let (min, max) = (
        slot_size.max(weft_runtime::arena::MIN_SLOT_SIZE),
        weft_runtime::arena::MAX_SLOT_SIZE,
    );
    for (i, c) in classes.iter().enumerate() {
        if !(min..=max).contains(&c.slot_size) {
            err(
                format!("runtime.buffer_classes[{i}].slot_size"),
                format!(
                    "must be between runtime.slot_size ({min}) and {max} bytes, got {}",
                    c.slot_size
                ),
            );
        }
        if c.slots == 0 {
            err(
                format!("runtime.buffer_classes[{i}].slots"),
                "must be at least 1".into(),
            );
        }
        if i > 0 && c.slot_size <= classes[i - 1].slot_size {
            err(
                format!("runtime.buffer_classes[{i}].slot_size"),
                "classes must be listed smallest first, each larger than the one before".into(),
            );
        }
    }
}

/// `nats:`: a URL, non-zero timers, one way to authenticate, TLS cert and key together.
fn validate_nats(nats: &NatsConfig, err: &mut impl FnMut(String, String)) {
    if nats.url.trim().is_empty() {
        err("nats.url".into(), "must not be empty".into());
    }
    for (field, v) in [
        ("connect_timeout_ms", nats.connect_timeout_ms),
        ("reconnect_max_delay_ms", nats.reconnect_max_delay_ms),
        ("ping_interval_ms", nats.ping_interval_ms),
        ("discovery_timeout_ms", nats.discovery_timeout_ms),
    ] {
        if v == Some(0) {
            err(format!("nats.{field}"), "must be at least 1".into());
        }
    }
    if let Some(a) = &nats.auth {
        let methods = [a.user.is_some(), a.token.is_some(), a.nkey.is_some(), a.creds.is_some()];
        if methods.iter().filter(|&&m| m).count() > 1 {
            err(
                "nats.auth".into(),
                "give one of user/password, token, nkey or creds".into(),
            );
        }
        if a.password.is_some() && a.user.is_none() {
            err("nats.auth.password".into(), "needs nats.auth.user".into());
        }
    }
    if let Some(t) = &nats.tls
        && t.cert.is_some() != t.key.is_some()
    {
        err("nats.tls".into(), "cert and key go together".into());
    }
}

fn validate_ffi_plugin(i: usize, p: &PluginConfig, names: &Names<'_>, err: &mut impl FnMut(String, String)) {
    match &p.library {
        None => err(
            format!("plugins[{i}].library"),
            "required for type: ffi (or set type: nats)".into(),
        ),
        Some(lib) if !names.libraries.contains_key(lib.as_str()) => {
            err(format!("plugins[{i}].library"), format!("unknown library {lib:?}"))
        }
        Some(_) => {}
    }
    for (field, set) in [("subject", p.subject.is_some()), ("phases", p.phases.is_some())] {
        if set {
            err(format!("plugins[{i}].{field}"), "only for type: nats".into());
        }
    }
}

/// `plugins[i].phases` of a `type: nats` instance.
fn validate_remote_phases(i: usize, list: &[String], err: &mut impl FnMut(String, String)) {
    if list.is_empty() {
        err(
            format!("plugins[{i}].phases"),
            "must not be empty (omit it to read the phases from the workers)".into(),
        );
    }
    for (j, name) in list.iter().enumerate() {
        if !REMOTE_PHASES.iter().any(|(n, _)| n == name) {
            err(
                format!("plugins[{i}].phases[{j}]"),
                format!("unknown phase {name:?} (expected request_headers, response_headers or log)"),
            );
        }
    }
}

fn validate_upstream(i: usize, u: &UpstreamConfig, err: &mut impl FnMut(String, String)) {
    if u.addresses.is_empty() {
        err(format!("upstreams[{i}].addresses"), "needs at least one address".into());
    }
    for (j, a) in u.addresses.iter().enumerate() {
        if let Err(msg) = parse_upstream_address(&a.address) {
            err(format!("upstreams[{i}].addresses[{j}]"), msg);
        }
        if !(1..=MAX_ADDRESS_WEIGHT).contains(&a.weight) {
            err(
                format!("upstreams[{i}].addresses[{j}].weight"),
                format!("must be between 1 and {MAX_ADDRESS_WEIGHT}, got {}", a.weight),
            );
        }
    }
    validate_balance(i, u, err);
    for (field, zero) in [
        ("connect_timeout_ms", u.connect_timeout_ms == 0),
        ("timeout_ms", u.timeout_ms == 0),
    ] {
        if zero {
            err(format!("upstreams[{i}].{field}"), "must be at least 1".into());
        }
    }
    if let Some(msg) = u.body_timeout_ms.and_then(timeout_problem) {
        err(format!("upstreams[{i}].body_timeout_ms"), msg);
    }
    validate_ejection(i, &u.ejection, err);
    if let Some(check) = &u.health_check {
        validate_health_check(i, check, err);
    }
}

/// `upstreams[i].balance`, the weights it uses and `retries`.
fn validate_balance(i: usize, u: &UpstreamConfig, err: &mut impl FnMut(String, String)) {
    let BalanceConfig { policy, hash_on } = &u.balance;
    let at = |field: &str| format!("upstreams[{i}].balance.{field}");
    match (policy, hash_on) {
        (BalancePolicy::ConsistentHash, None) => err(
            at("hash_on"),
            "required by policy consistent_hash ({ header: NAME }, { cookie: NAME } or client_ip)".into(),
        ),
        (BalancePolicy::ConsistentHash, Some(HashOn::Header(name))) => {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(at("hash_on.header"), format!("invalid header name {name:?}"));
            }
        }
        (BalancePolicy::ConsistentHash, Some(HashOn::Cookie(name))) => {
            if !is_token(name) {
                err(at("hash_on.cookie"), format!("invalid cookie name {name:?}"));
            }
        }
        (BalancePolicy::ConsistentHash, Some(HashOn::ClientIp)) => {}
        (other, Some(_)) => err(
            at("hash_on"),
            format!("only for policy consistent_hash (the policy is {})", other.name()),
        ),
        (_, None) => {}
    }
    let total: u64 = u.addresses.iter().map(|a| u64::from(a.weight)).sum();
    if *policy == BalancePolicy::Weighted && total > MAX_WEIGHT_TOTAL {
        err(
            format!("upstreams[{i}].addresses"),
            format!("the weights add up to {total}; at most {MAX_WEIGHT_TOTAL}"),
        );
    }
    let stray_weight = u.addresses.iter().position(|a| a.weight != 1);
    if let (false, Some(j)) = (*policy == BalancePolicy::Weighted, stray_weight) {
        err(
            format!("upstreams[{i}].addresses[{j}].weight"),
            format!("only used by policy weighted (the policy is {})", policy.name()),
        );
    }
    if u.retries > MAX_UPSTREAM_RETRIES {
        err(
            format!("upstreams[{i}].retries"),
            format!("must be at most {MAX_UPSTREAM_RETRIES}, got {}", u.retries),
        );
    }
}

/// An HTTP token (RFC 9110 §5.6.2), as cookie names are.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `upstreams[i].health_check`.
fn validate_health_check(i: usize, c: &HealthCheckConfig, err: &mut impl FnMut(String, String)) {
    let at = |field: &str| format!("upstreams[{i}].health_check.{field}");
    if !c.path.starts_with('/') || c.path.parse::<http::uri::PathAndQuery>().is_err() {
        err(
            at("path"),
            format!("must be a path starting with '/', got {:?}", c.path),
        );
    }
    for (field, ms) in [("interval_ms", c.interval_ms), ("timeout_ms", c.timeout_ms)] {
        if let Some(msg) = timeout_problem(ms) {
            err(at(field), msg);
        }
    }
    for (field, n) in [
        ("healthy_threshold", c.healthy_threshold),
        ("unhealthy_threshold", c.unhealthy_threshold),
    ] {
        if n == 0 {
            err(at(field), "must be at least 1".into());
        }
    }
    if let Some(list) = &c.expected_statuses {
        if list.is_empty() {
            err(
                at("expected_statuses"),
                "must not be empty (omit it for any 2xx)".into(),
            );
        }
        if let Some(bad) = list.iter().find(|s| !(100..=599).contains(*s)) {
            err(at("expected_statuses"), format!("{bad} is not an HTTP status"));
        }
    }
}

/// `upstreams[i].ejection`.
fn validate_ejection(i: usize, e: &EjectionConfig, err: &mut impl FnMut(String, String)) {
    if e.consecutive_failures == 0 {
        err(
            format!("upstreams[{i}].ejection.consecutive_failures"),
            "must be at least 1".into(),
        );
    }
    if let Some(msg) = timeout_problem(e.duration_ms) {
        err(format!("upstreams[{i}].ejection.duration_ms"), msg);
    }
}

/// `routes[i]`'s `path_prefix`, `host` and `methods`.
fn validate_route_matcher(i: usize, r: &RouteConfig, err: &mut impl FnMut(String, String)) {
    if !r.path_prefix.starts_with('/') {
        err(
            format!("routes[{i}].path_prefix"),
            format!("must start with '/', got {:?}", r.path_prefix),
        );
    }
    if let Some(Err(msg)) = r.host.as_deref().map(crate::route::HostMatcher::parse) {
        err(format!("routes[{i}].host"), msg);
    }
    let Some(methods) = &r.methods else { return };
    if methods.is_empty() {
        err(
            format!("routes[{i}].methods"),
            "must not be empty (omit it to allow every method)".into(),
        );
    }
    for (j, m) in methods.iter().enumerate() {
        if let Err(msg) = parse_method(m) {
            err(format!("routes[{i}].methods[{j}]"), msg);
        }
    }
}

/// Why a `*_ms` timeout value is refused, if it is.
fn timeout_problem(ms: u64) -> Option<String> {
    (!(1..=MAX_TIMEOUT_MS).contains(&ms)).then(|| format!("must be between 1 and {MAX_TIMEOUT_MS} (one day), got {ms}"))
}

/// Checks names in one list are non-empty and unique; returns name -> index.
fn unique_names<'a>(
    list: &str,
    names: impl Iterator<Item = &'a str>,
    err: &mut impl FnMut(String, String),
) -> HashMap<&'a str, usize> {
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            err(format!("{list}[{i}].name"), "must not be empty".into());
        } else if let Some(first) = seen.insert(name, i) {
            seen.insert(name, first);
            err(
                format!("{list}[{i}].name"),
                format!("duplicate name {name:?} (first used at {list}[{first}])"),
            );
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str =
        "listen: 127.0.0.1:8080\nupstreams: [{ name: u, addresses: [\"127.0.0.1:9\"] }]\nroutes: [{ upstream: u }]\n";

    fn errors(extra: &str) -> Vec<String> {
        match Config::parse(&format!("{BASE}{extra}"), "w.yaml", Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn operability_fields() {
        let c = Config::parse(
            &format!("{BASE}admin: {{ listen: 127.0.0.1:9901 }}\nshutdown_timeout_ms: 2500\naccess_log: true\nlog: {{ level: \"warn,weft_proxy=debug\" }}\n"),
            "w.yaml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.admin.unwrap().listen, "127.0.0.1:9901");
        assert_eq!(c.shutdown_timeout_ms, Some(2500));
        assert!(c.access_log);
        let e = errors("admin: { listen: nowhere }\nshutdown_timeout_ms: 0\nlog: { level: \"info,[\" }\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("config error in w.yaml at admin.listen: invalid socket address \"nowhere\""),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "config error in w.yaml at shutdown_timeout_ms: must be at least 1"
        );
        assert!(
            e[2].starts_with("config error in w.yaml at log.level: invalid filter \"info,[\""),
            "{e:?}"
        );
        assert_eq!(
            errors("admin: { listen: 127.0.0.1:8080 }\n"),
            ["config error in w.yaml at admin.listen: must differ from listen"]
        );
        let e = errors("admin: { listen: 127.0.0.1:9901, port: 1 }\n");
        assert!(
            e[0].starts_with("config error in w.yaml at admin.port: unknown field `port`"),
            "{e:?}"
        );
    }
}
