//! YAML configuration: parsing (with field paths in errors) and semantic validation.
//!
//! Parsing and validation are pure: nothing here touches the network or the plugin runtime,
//! so `weft-proxy check` and the unit tests can run every rule.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use http::uri::Authority;
use serde::Deserialize;

mod balance;
mod defaults;
mod validate;

pub use balance::{AddressConfig, BalanceConfig, BalancePolicy, HashOn};
pub use defaults::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Connections `listen` takes at once, within `limits.max_connections` (`accept.rs`);
    /// default only that.
    #[serde(default)]
    pub listen_max_connections: Option<u32>,
    /// HTTPS listeners beside `listen`: address and certificates (`tls.rs`).
    #[serde(default)]
    pub listen_tls: Vec<crate::tls::ListenTlsConfig>,
    #[serde(default)]
    pub runtime: Option<RuntimeConfig>,
    #[serde(default)]
    pub libraries: Vec<LibraryConfig>,
    /// The NATS connection for `type: nats` plugin instances.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// The admin listener (metrics, health, readiness, reload); none when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Serving threads, each with its own listener and upstream pools (`workers.rs`); default
    /// `TOKIO_WORKER_THREADS` if set, else the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// ([`DEFAULT_SHUTDOWN_TIMEOUT_MS`]).
    #[serde(default)]
    pub shutdown_timeout_ms: Option<u64>,
    /// One `info` line per request on target `weft::access` (default false).
    #[serde(default)]
    pub access_log: bool,
    #[serde(default)]
    pub log: Option<LogConfig>,
    /// Connection and body limits of the proxy listener (its timers also apply to the admin
    /// listener); defaults when absent.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// How request paths are normalised before routing (`path.rs`); default: merge slashes,
    /// refuse encoded slashes.
    #[serde(default)]
    pub path_normalization: crate::path::PathOptions,
    /// Peers (CIDRs or addresses) whose `x-forwarded-for`, `forwarded`, `x-real-ip`,
    /// `x-forwarded-proto` and `x-forwarded-host` are kept; default none (`forward.rs`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `limits:` block. Every field is optional; see [`Limits`] for the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections open at once on all proxy listeners together, WebSocket connections
    /// included; over it new connections wait in the listen backlog (`accept.rs`).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Connections open at once from one client address (all listeners together); one more is
    /// accepted and closed at once (`weft_connections_refused_total`). Default no cap.
    #[serde(default)]
    pub max_connections_per_ip: Option<u32>,
    /// Length of each listening socket's queue of connections not yet accepted (one socket per
    /// serving thread; the kernel caps it at `net.core.somaxconn`).
    #[serde(default)]
    pub listen_backlog: Option<u32>,
    /// A new connection must deliver its first complete request head within this (protocol
    /// detection, the HTTP/2 preface and the first HEADERS included).
    #[serde(default)]
    pub header_read_timeout_ms: Option<u64>,
    /// A connection with no request in flight is closed after this (HTTP/2 with GOAWAY). For
    /// HTTP/1.1 it also bounds the wait for each later request head.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Longest wait for the next bytes of a request body.
    #[serde(default)]
    pub request_body_timeout_ms: Option<u64>,
    /// Longest the client may take no bytes of a response: HTTP/1.1 closes the connection,
    /// HTTP/2 resets the stream.
    #[serde(default)]
    pub send_timeout_ms: Option<u64>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of HTTP/2 connections.
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Ping an HTTP/2 connection that sent no frame for this long ...
    #[serde(default)]
    pub http2_keep_alive_interval_ms: Option<u64>,
    /// ... and close it when the ping is not answered within this.
    #[serde(default)]
    pub http2_keep_alive_timeout_ms: Option<u64>,
}

/// The resolved `limits:` (defaults filled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `None`: the default, resolved when the listener starts ([`Limits::connection_cap`]).
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub listen_backlog: u32,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_body_timeout: Duration,
    pub send_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_connections_per_ip: None,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            request_body_timeout: Duration::from_millis(DEFAULT_REQUEST_BODY_TIMEOUT_MS),
            send_timeout: Duration::from_millis(DEFAULT_SEND_TIMEOUT_MS),
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            http2_keep_alive_interval: Duration::from_millis(DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL_MS),
            http2_keep_alive_timeout: Duration::from_millis(DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT_MS),
        }
    }
}

/// Upper bound of every `limits.*_ms` and `upstreams[].body_timeout_ms` (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl Limits {
    /// `limits.max_connections`, or half the process's open-file limit (each proxied connection
    /// also needs an upstream socket) capped at [`DEFAULT_MAX_CONNECTIONS`].
    pub fn connection_cap(&self) -> u32 {
        self.max_connections.unwrap_or_else(|| {
            open_file_limit().map_or(DEFAULT_MAX_CONNECTIONS, |n| {
                (n / 2).clamp(64, u64::from(DEFAULT_MAX_CONNECTIONS)) as u32
            })
        })
    }
}

/// The soft limit on open files (Linux: `/proc/self/limits`); `None` when unknown or unlimited.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// `admin:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`IP:port`); a loopback address unless `allow_remote`.
    pub listen: String,
    /// Time every in-process plugin call into `weft_plugin_phase_duration_seconds` (by instance
    /// and phase). Off by default: it adds two clock reads to every call (tens of ns).
    #[serde(default)]
    pub plugin_timing: bool,
    /// Allows a `listen` address that is not loopback; needs `token_file`. Default false.
    #[serde(default)]
    pub allow_remote: bool,
    /// A file holding the bearer token that `/metrics` and `POST /reload` then require
    /// (`Authorization: Bearer <token>`); resolved against the config file's directory.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Whether an `admin.listen` value is a loopback address (127.0.0.0/8 or ::1); `None` when it is
/// not an `IP:port` (reported by `Config::parse`).
pub fn admin_listen_is_loopback(listen: &str) -> Option<bool> {
    listen.parse::<SocketAddr>().ok().map(|a| a.ip().is_loopback())
}

/// `log:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `warn,weft_proxy=debug`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub slots: Option<u32>,
    pub slot_size: Option<u32>,
    /// Finished requests waiting for their log phase (each holds its slot); beyond it log
    /// phases are dropped and counted. Default a quarter of `slots`; must be less than `slots`.
    pub log_queue: Option<usize>,
    /// Job descriptors per worker ring of blocking plugins (one ring per library and proxy
    /// thread); a power of two, default 1024. A full ring answers 503.
    #[serde(default)]
    pub worker_ring_capacity: Option<u32>,
    /// Out slots (of `slot_size`), where plugin calls write their output; default a quarter of
    /// `slots` (at least 4). With none free a call writes into its request's slot and its
    /// output is copied.
    #[serde(default)]
    pub out_slots: Option<u32>,
    /// Buffer size classes for buffered body calls over half a slot, smallest first; default
    /// two classes (4 and 16 slots large); `[]` for none (such calls use the heap).
    #[serde(default)]
    pub buffer_classes: Option<Vec<BufferClassConfig>>,
    /// Most bytes buffered bodies may hold at once, across all requests (default 256 MiB): the
    /// bodies collected for buffered plugins, and their output buffers when no buffer class
    /// holds them (twice the body plus 4 KiB). A request over it is answered 503 (request body)
    /// or 502 (response body) instead of allocating; counted in
    /// `weft_buffered_body_refusals_total`.
    #[serde(default)]
    pub max_buffered_bytes_total: Option<u64>,
    /// An inline plugin call still running after this many milliseconds is logged (instance and
    /// phase) and counted in `weft_plugin_stalls_total`; 0 turns the watchdog off. Default 100.
    #[serde(default)]
    pub stall_threshold_ms: Option<u64>,
    /// Where plugins' log phases run: `inline` (the default: on the serving thread, after the
    /// response is written) or `thread` (all on the log thread, so a slow log plugin that is
    /// not `blocking: true` holds no serving thread).
    #[serde(default)]
    pub log_phase: Option<LogPhase>,
}

/// `runtime.log_phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogPhase {
    Inline,
    Thread,
}

/// Bounds of `runtime.stall_threshold_ms` (besides 0): the watchdog's finest tick is 10 ms.
const STALL_THRESHOLD_MIN_MS: u64 = 20;
const STALL_THRESHOLD_MAX_MS: u64 = 3_600_000;

/// One buffer size class of the arena.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferClassConfig {
    pub slot_size: u32,
    pub slots: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryConfig {
    pub name: String,
    /// Resolved against the config file's directory by [`Config::load`].
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// A failing plugin answers 500.
    #[default]
    Closed,
    /// A failing plugin is skipped and the request continues unchanged.
    Open,
}

/// Where a plugin instance runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginType {
    /// In-process, from a loaded library (`library`).
    #[default]
    Ffi,
    /// On remote workers (`weft-worker`) reached over the top-level `nats` connection.
    Nats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: PluginType,
    /// The library (`type: ffi` only).
    #[serde(default)]
    pub library: Option<String>,
    pub plugin: String,
    #[serde(default)]
    pub failure: Failure,
    /// Arbitrary YAML, handed to the plugin as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// `type: nats`: the instance name the workers serve (subjects `weft.<subject>.<phase>`,
    /// service `<subject>`); default: `name`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Time allowed for one phase call. `type: nats`: the whole call, wire and worker included
    /// ([`DEFAULT_NATS_DEADLINE_MS`]). `type: ffi`: a call the plugin answered Pending, or a
    /// blocking plugin's worker job ([`DEFAULT_FFI_DEADLINE_MS`]); then 504 (fail closed) or
    /// unchanged (fail open). Inline answers are not interrupted.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Calls in flight at once (`type: ffi`: pending answers and worker jobs, including
    /// cancelled ones the plugin still holds); beyond it requests get 503 with `Retry-After`
    /// (fail closed) or go on unchanged (fail open). Default a quarter of `runtime.slots`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// `type: ffi`: run the instance on its library's worker pool (rings consumed by the
    /// plugin's own workers) even if the plugin is not flagged blocking; the library must
    /// provide `attach_worker`. Default false.
    #[serde(default)]
    pub blocking: Option<bool>,
    /// `type: ffi`: `Retry-After` seconds of the 503 answered when the in-flight limit or a
    /// worker ring is full ([`DEFAULT_RETRY_AFTER_S`]).
    #[serde(default)]
    pub retry_after_s: Option<u32>,
    /// `type: nats`: the phases the plugin handles (`request_headers`, `response_headers`,
    /// `log`); when absent they are read from the workers' `$SRV.INFO` at start-up.
    #[serde(default)]
    pub phases: Option<Vec<String>>,
}

/// Phases a remote instance can declare in `phases:`.
pub const REMOTE_PHASES: [(&str, weft_runtime::abi::WeftPhase); 3] = [
    ("request_headers", weft_runtime::abi::WeftPhase::RequestHeaders),
    ("response_headers", weft_runtime::abi::WeftPhase::ResponseHeaders),
    ("log", weft_runtime::abi::WeftPhase::Log),
];

fn default_true() -> bool {
    true
}

fn default_nats_url() -> String {
    DEFAULT_NATS_URL.to_owned()
}

/// The NATS connection shared by every `type: nats` instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated ([`DEFAULT_NATS_URL`]).
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Client name shown in the server's monitoring (default `weft-proxy`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub auth: Option<NatsAuthConfig>,
    #[serde(default)]
    pub tls: Option<NatsTlsConfig>,
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Reconnect backoff cap: 10 ms doubling up to this (default 250).
    #[serde(default)]
    pub reconnect_max_delay_ms: Option<u64>,
    #[serde(default)]
    pub ping_interval_ms: Option<u64>,
    /// Time allowed for reading phases from `$SRV.INFO` at start-up
    /// ([`DEFAULT_NATS_DISCOVERY_TIMEOUT_MS`]).
    #[serde(default)]
    pub discovery_timeout_ms: Option<u64>,
    /// A connection of its own for each serving thread, besides the shared one (default true):
    /// a remote call and its reply then stay on the serving thread. `false`: every call goes
    /// through the one shared connection, whose thread hands it over and back.
    #[serde(default = "default_true")]
    pub per_thread_connections: bool,
}

/// One of user/password, token, nkey (seed file) or creds (file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuthConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// File holding an nkey seed (`SU...`); resolved against the config file's directory.
    #[serde(default)]
    pub nkey: Option<PathBuf>,
    /// A `.creds` file; resolved against the config file's directory.
    #[serde(default)]
    pub creds: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl PluginConfig {
    /// Limits of an in-process (`type: ffi`) instance's asynchronous calls; `slots` is
    /// `runtime.slots` (the default of `max_in_flight` is a quarter of it).
    pub fn instance_options(&self, slots: u32) -> weft_runtime::InstanceOptions {
        weft_runtime::InstanceOptions {
            deadline: std::time::Duration::from_millis(self.deadline_ms.unwrap_or(DEFAULT_FFI_DEADLINE_MS)),
            max_in_flight: self
                .max_in_flight
                .unwrap_or_else(|| default_max_in_flight(slots))
                .min(u32::MAX as usize) as u32,
            blocking: self.blocking.unwrap_or(false),
            retry_after_secs: self.retry_after_s.unwrap_or(DEFAULT_RETRY_AFTER_S),
            timer: None,
        }
    }

    /// The instance name the workers serve (`subject`, default `name`).
    pub fn remote_name(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.name)
    }

    /// The `phases:` list as a mask (`None` when absent). Validated by [`Config::parse`].
    pub fn phase_mask(&self) -> Option<u32> {
        self.phases.as_ref().map(|list| {
            list.iter()
                .filter_map(|n| REMOTE_PHASES.iter().find(|(name, _)| name == n))
                .fold(0, |m, (_, p)| m | p.mask())
        })
    }

    /// The plugin's config block as JSON bytes; `{}` when absent so plugins can always decode it.
    pub fn config_json(&self) -> Vec<u8> {
        match &self.config {
            None | Some(serde_json::Value::Null) => b"{}".to_vec(),
            Some(v) => serde_json::to_vec(v).expect("a JSON value always serializes"),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_MS
}
fn default_retries() -> u32 {
    DEFAULT_UPSTREAM_RETRIES
}
fn default_path_prefix() -> String {
    DEFAULT_PATH_PREFIX.to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` entries, or `{ address, weight }` (`weighted` uses the weights).
    pub addresses: Vec<AddressConfig>,
    /// How requests are spread over the addresses (`balance.rs`); round robin when absent.
    #[serde(default)]
    pub balance: BalanceConfig,
    /// How many times a request that could not reach an address goes to another
    /// ([`DEFAULT_UPSTREAM_RETRIES`]; 0: never).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait for the next bytes of the upstream's response body
    /// ([`DEFAULT_UPSTREAM_BODY_TIMEOUT_MS`]); then
    /// the response is cut off (the client's connection closed or stream reset).
    #[serde(default)]
    pub body_timeout_ms: Option<u64>,
    /// HTTPS to this upstream (`tls.rs`); plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::UpstreamTlsConfig>,
    /// Passive ejection: an address that fails this many times in a row is skipped for a while.
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

/// `upstreams[].health_check`: a GET of `path` on every address each `interval_ms`, run on the
/// control runtime (`health.rs`), never on the serving threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    /// For the connection and the whole response.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Passed checks in a row that bring a failed address back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failed checks in a row that take an address out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that pass; any 2xx when absent.
    #[serde(default)]
    pub expected_statuses: Option<Vec<u16>>,
}

impl HealthCheckConfig {
    pub fn passes(&self, status: u16) -> bool {
        match &self.expected_statuses {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }
}

fn default_check_interval_ms() -> u64 {
    DEFAULT_HEALTH_CHECK_INTERVAL_MS
}
fn default_check_timeout_ms() -> u64 {
    DEFAULT_HEALTH_CHECK_TIMEOUT_MS
}
fn default_healthy_threshold() -> u32 {
    DEFAULT_HEALTHY_THRESHOLD
}
fn default_unhealthy_threshold() -> u32 {
    DEFAULT_UNHEALTHY_THRESHOLD
}

/// `upstreams[].ejection`: passive health. A connect failure, a failed exchange, a timeout or a
/// 5xx response counts as a failure; any other response resets the count.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionConfig {
    /// Consecutive failures that eject an address ([`DEFAULT_EJECTION_CONSECUTIVE_FAILURES`]).
    #[serde(default = "default_ejection_failures")]
    pub consecutive_failures: u32,
    /// How long an ejected address is skipped ([`DEFAULT_EJECTION_MS`]); then it gets traffic
    /// again, and its first failure ejects it again.
    #[serde(default = "default_ejection_ms")]
    pub duration_ms: u64,
}

impl Default for EjectionConfig {
    fn default() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: DEFAULT_EJECTION_CONSECUTIVE_FAILURES,
            duration_ms: DEFAULT_EJECTION_MS,
        }
    }
}

fn default_ejection_failures() -> u32 {
    DEFAULT_EJECTION_CONSECUTIVE_FAILURES
}
fn default_ejection_ms() -> u64 {
    DEFAULT_EJECTION_MS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional; used in logs and error messages.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Largest body a buffered body plugin on this route may be handed
    /// ([`DEFAULT_MAX_BUFFERED_BODY_BYTES`], at most 256 MiB and at most
    /// `runtime.max_buffered_bytes_total`): a longer request body is answered 413, a longer
    /// response body 502. Larger bodies belong to streamed plugins.
    #[serde(default)]
    pub max_buffered_body_bytes: Option<u64>,
    /// WebSocket connections of this route are served by a plugin instead of being tunnelled to
    /// the upstream (see `ws.rs`).
    #[serde(default)]
    pub websocket: Option<crate::ws::WsRouteConfig>,
}

/// Upper bound of `routes[].max_buffered_body_bytes`: a buffered call holds the body and an
/// output buffer of twice its size, so one request at this limit takes 768 MiB.
pub const MAX_BUFFERED_BODY_BYTES: u64 = 256 << 20;

impl RouteConfig {
    /// `max_buffered_body_bytes` or its default.
    pub fn buffered_body_limit(&self) -> usize {
        self.max_buffered_body_bytes.unwrap_or(DEFAULT_MAX_BUFFERED_BODY_BYTES) as usize
    }
}

/// One problem in a config file: which file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Field path such as `routes[0].upstream`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "config error in {}: {}", self.file, self.message)
        } else {
            write!(f, "config error in {} at {}: {}", self.file, self.path, self.message)
        }
    }
}

/// Every problem found, so `check` can report them all at once.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates `path`; relative library paths are resolved against the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                path: String::new(),
                message: format!("cannot read file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Parses and validates YAML `text`; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let mut message = e.into_inner().to_string();
            // serde_yaml_ng prefixes its own (shorter) path; ours is already in the error.
            if let Some((prefix, rest)) = message.split_once(": ")
                && path.starts_with(prefix)
            {
                message = rest.to_owned();
            }
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                path,
                message,
            }])
        })?;
        for lib in &mut config.libraries {
            if lib.path.is_relative() {
                lib.path = base_dir.join(&lib.path);
            }
        }
        if let Some(path) = config.admin.as_mut().and_then(|a| a.token_file.as_mut())
            && path.is_relative()
        {
            *path = base_dir.join(&*path);
        }
        if let Some(nats) = &mut config.nats {
            let resolve = |p: &mut Option<PathBuf>| {
                if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                    *path = base_dir.join(&*path);
                }
            };
            if let Some(auth) = &mut nats.auth {
                resolve(&mut auth.nkey);
                resolve(&mut auth.creds);
            }
            if let Some(tls) = &mut nats.tls {
                resolve(&mut tls.ca);
                resolve(&mut tls.cert);
                resolve(&mut tls.key);
            }
        }
        crate::tls::resolve_paths(&mut config, base_dir);
        config.validate(file)?;
        Ok(config)
    }

    pub fn runtime_options(&self) -> weft_runtime::RuntimeOptions {
        let mut opts = weft_runtime::RuntimeOptions::default();
        if let Some(rt) = &self.runtime {
            if let Some(n) = rt.slots {
                opts.slot_count = n;
            }
            if let Some(n) = rt.slot_size {
                opts.slot_size = n;
            }
            if let Some(n) = rt.log_queue {
                opts.log_queue = n;
            }
            if let Some(n) = rt.out_slots {
                opts.out_slot_count = n;
            }
            if let Some(ms) = rt.stall_threshold_ms {
                opts.stall_threshold = std::time::Duration::from_millis(ms);
            }
            if let Some(place) = rt.log_phase {
                opts.log_place = match place {
                    LogPhase::Inline => weft_runtime::LogPlace::Inline,
                    LogPhase::Thread => weft_runtime::LogPlace::Thread,
                };
            }
            if let Some(classes) = &rt.buffer_classes {
                opts.buffer_classes = Some(
                    classes
                        .iter()
                        .map(|c| weft_runtime::arena::PoolSpec {
                            slot_count: c.slots,
                            slot_size: c.slot_size,
                        })
                        .collect(),
                );
            }
            if let Some(n) = rt.max_buffered_bytes_total {
                opts.max_buffered_bytes_total = n;
            }
        }
        opts
    }

    /// `runtime.slots` (or its default).
    pub fn slot_count(&self) -> u32 {
        self.runtime_options().slot_count
    }

    /// The `limits:` block with its defaults.
    pub fn limits(&self) -> Limits {
        let mut l = Limits::default();
        let Some(c) = &self.limits else { return l };
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        l.max_connections = c.max_connections;
        l.max_connections_per_ip = c.max_connections_per_ip;
        l.listen_backlog = c.listen_backlog.unwrap_or(l.listen_backlog);
        l.header_read_timeout = ms(c.header_read_timeout_ms, l.header_read_timeout);
        l.idle_timeout = ms(c.idle_timeout_ms, l.idle_timeout);
        l.request_body_timeout = ms(c.request_body_timeout_ms, l.request_body_timeout);
        l.send_timeout = ms(c.send_timeout_ms, l.send_timeout);
        l.http2_max_concurrent_streams = c.http2_max_concurrent_streams.unwrap_or(l.http2_max_concurrent_streams);
        l.http2_keep_alive_interval = ms(c.http2_keep_alive_interval_ms, l.http2_keep_alive_interval);
        l.http2_keep_alive_timeout = ms(c.http2_keep_alive_timeout_ms, l.http2_keep_alive_timeout);
        l
    }

    /// `trusted_proxies`, parsed. Validated by [`Config::parse`].
    pub fn trusted_proxies(&self) -> crate::forward::TrustedProxies {
        crate::forward::TrustedProxies(
            self.trusted_proxies
                .iter()
                .filter_map(|t| crate::forward::TrustedProxies::parse_entry(t).ok())
                .collect(),
        )
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated by Config::parse")
    }

    /// The serving threads to start (`workers:`, else [`crate::workers::default_workers`]).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(crate::workers::default_workers)
    }
}

/// An upstream address is `host:port` (IP or DNS name); no scheme, path or userinfo.
pub fn parse_upstream_address(s: &str) -> Result<Authority, String> {
    let auth: Authority = s
        .parse()
        .map_err(|e| format!("invalid address {s:?}: {e} (expected host:port)"))?;
    if auth.as_str().contains('@') {
        return Err(format!("invalid address {s:?}: userinfo is not allowed"));
    }
    if auth.host().is_empty() {
        return Err(format!("invalid address {s:?}: missing host"));
    }
    match auth.port_u16() {
        Some(0) => Err(format!("invalid address {s:?}: port 0")),
        Some(_) => Ok(auth),
        None => Err(format!("invalid address {s:?}: missing port (expected host:port)")),
    }
}

/// Standard methods are accepted in any case; extension methods must be valid tokens.
pub fn parse_method(s: &str) -> Result<Method, String> {
    let upper = s.to_ascii_uppercase();
    let is_token = !upper.is_empty()
        && upper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        return Err(format!("invalid HTTP method {s:?}"));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
runtime: { slots: 16, slot_size: 8192, log_queue: 10 }
libraries:
  - name: examples
    path: lib/libweft_plugins.so
plugins:
  - name: auth
    library: examples
    plugin: bearer-auth
    config: { tokens: ["s3cret"], nested: { n: 1 } }
  - name: timing
    library: examples
    plugin: timing
    failure: open
upstreams:
  - name: demo
    addresses: ["127.0.0.1:9000", "localhost:9001"]
    timeout_ms: 500
routes:
  - name: api
    host: "*.Example.com"
    path_prefix: /api
    methods: [get, POST]
    upstream: demo
    plugins: [auth, timing]
  - upstream: demo
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, "proxy.yaml", Path::new("/etc/weft"))
    }

    /// The messages of all errors, for compact assertions.
    fn errors(text: &str) -> Vec<String> {
        parse(text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn workers_must_be_1_to_max() {
        assert_eq!(parse(&format!("{GOOD}workers: 3\n")).unwrap().worker_count(), 3);
        for n in [0, crate::workers::MAX_WORKERS + 1] {
            let e = errors(&format!("{GOOD}workers: {n}\n"));
            assert_eq!(
                e,
                [format!(
                    "config error in proxy.yaml at workers: {n} serving threads: must be 1 to {}",
                    crate::workers::MAX_WORKERS
                )]
            );
        }
    }

    #[test]
    fn parses_full_example_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen_addr(), "127.0.0.1:8080".parse().unwrap());
        let opts = c.runtime_options();
        assert_eq!((opts.slot_count, opts.slot_size, opts.log_queue), (16, 8192, 10));
        assert_eq!(c.libraries[0].path, Path::new("/etc/weft/lib/libweft_plugins.so"));
        assert_eq!(c.plugins[0].failure, Failure::Closed);
        assert_eq!(c.plugins[1].failure, Failure::Open);
        let json: serde_json::Value = serde_json::from_slice(&c.plugins[0].config_json()).unwrap();
        assert_eq!(json, serde_json::json!({"tokens": ["s3cret"], "nested": {"n": 1}}));
        assert_eq!(c.plugins[1].config_json(), b"{}");
        assert_eq!(c.upstreams[0].connect_timeout_ms, 1000);
        assert_eq!(c.upstreams[0].timeout_ms, 500);
        assert_eq!(c.routes[1].path_prefix, "/");
        assert!(c.routes[1].plugins.is_empty());
    }

    #[test]
    fn arena_pools_from_the_runtime_block() {
        let text = GOOD.replace(
            "runtime: { slots: 16, slot_size: 8192, log_queue: 10 }",
            "runtime: { slots: 16, slot_size: 8192, out_slots: 3, buffer_classes: [{ slot_size: 65536, slots: 2 }] }",
        );
        let opts = parse(&text).unwrap().runtime_options();
        let pools: Vec<_> = opts.pools().iter().map(|p| (p.slot_count, p.slot_size)).collect();
        assert_eq!(pools, [(16, 8192), (3, 8192), (2, 65536)]);
        // Defaults: a quarter of the slots (at least 4) as out slots, two buffer classes.
        let pools: Vec<_> = parse(GOOD)
            .unwrap()
            .runtime_options()
            .pools()
            .iter()
            .map(|p| (p.slot_count, p.slot_size))
            .collect();
        assert_eq!(pools, [(16, 8192), (4, 8192), (1, 32768), (1, 131072)]);
        let bad = GOOD.replace(
            "runtime: { slots: 16, slot_size: 8192, log_queue: 10 }",
            "runtime: { slot_size: 8192, out_slots: 0, buffer_classes: [{ slot_size: 65536, slots: 0 }, { slot_size: 4096, slots: 1 }] }",
        );
        let e = errors(&bad).join("\n");
        assert!(e.contains("runtime.out_slots: must be at least 1"), "{e}");
        assert!(e.contains("runtime.buffer_classes[0].slots: must be at least 1"), "{e}");
        assert!(
            e.contains("runtime.buffer_classes[1].slot_size: must be between runtime.slot_size (8192)"),
            "{e}"
        );
        assert!(
            e.contains("runtime.buffer_classes[1].slot_size: classes must be listed smallest first"),
            "{e}"
        );
    }

    #[test]
    fn buffered_body_limits_are_bounded() {
        let opts = parse(GOOD).unwrap().runtime_options();
        assert_eq!(opts.max_buffered_bytes_total, 256 << 20, "default");
        let with = |runtime: &str, route_limit: u64| {
            GOOD.replace("runtime: { slots: 16, slot_size: 8192, log_queue: 10 }", runtime)
                .replace(
                    "    plugins: [auth, timing]\n",
                    &format!("    plugins: [auth, timing]\n    max_buffered_body_bytes: {route_limit}\n"),
                )
        };
        let c = parse(&with("runtime: { max_buffered_bytes_total: 3000000 }", 1000000)).unwrap();
        assert_eq!(c.runtime_options().max_buffered_bytes_total, 3_000_000);
        let e = errors(&with("runtime: { max_buffered_bytes_total: 1000 }", 2000)).join("\n");
        assert!(
            e.contains("routes[0].max_buffered_body_bytes: 2000 is more than runtime.max_buffered_bytes_total (1000)"),
            "{e}"
        );
        let e = errors(&with("runtime: { max_buffered_bytes_total: 0 }", 1)).join("\n");
        assert!(
            e.contains("runtime.max_buffered_bytes_total: must be at least 1"),
            "{e}"
        );
        // No longer 1 GiB: a buffered call holds about three times its body.
        let e = errors(&with("runtime: { max_buffered_bytes_total: 4294967296 }", 1 << 30)).join("\n");
        assert!(
            e.contains("routes[0].max_buffered_body_bytes: must be between 1 and 268435456"),
            "{e}"
        );
    }

    #[test]
    fn log_phase_place() {
        let block = "runtime: { slots: 16, slot_size: 8192, log_queue: 10 }";
        let with = |v: &str| GOOD.replace(block, &format!("runtime: {{ slots: 16, log_phase: {v} }}"));
        let place = |text: &str| parse(text).unwrap().runtime_options().log_place;
        assert_eq!(place(GOOD), weft_runtime::LogPlace::Inline, "default");
        assert_eq!(place(&with("inline")), weft_runtime::LogPlace::Inline);
        assert_eq!(place(&with("thread")), weft_runtime::LogPlace::Thread);
        let e = parse(&with("later")).unwrap_err().to_string();
        assert!(
            e.contains("runtime.log_phase: unknown variant `later`, expected `inline` or `thread`"),
            "{e}"
        );
    }

    #[test]
    fn stall_threshold_of_the_watchdog() {
        let block = "runtime: { slots: 16, slot_size: 8192, log_queue: 10 }";
        let with = |v: &str| GOOD.replace(block, &format!("runtime: {{ slots: 16, stall_threshold_ms: {v} }}"));
        let ms = |text: &str| parse(text).unwrap().runtime_options().stall_threshold.as_millis();
        assert_eq!(ms(GOOD), 100, "default");
        assert_eq!(ms(&with("250")), 250);
        assert_eq!(ms(&with("0")), 0, "off");
        for bad in ["5", "3600001"] {
            let e = errors(&with(bad)).join("\n");
            assert!(
                e.contains("runtime.stall_threshold_ms: must be 0 (off) or between 20 and 3600000 milliseconds"),
                "{e}"
            );
        }
        assert!(parse(&with("-1")).is_err());
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"));
        let c = Config::load(path).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert!(c.libraries[0].path.starts_with(path.parent().unwrap()));
        // No auth bypass: nothing reaches the API's upstream around its plugins.
        assert_eq!(crate::lint::warnings(&c), Vec::<String>::new());
    }

    #[test]
    fn shipped_nats_example_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-nats.yaml"));
        let c = Config::load(path).unwrap();
        assert!(c.plugins.iter().all(|p| p.kind == PluginType::Nats));
        assert_eq!(c.plugins[1].phase_mask(), Some(0b101));
    }

    #[test]
    fn absolute_library_path_is_kept() {
        let text = GOOD.replace("lib/libweft_plugins.so", "/opt/p.so");
        assert_eq!(parse(&text).unwrap().libraries[0].path, Path::new("/opt/p.so"));
    }

    #[test]
    fn unknown_field_names_path() {
        let text = GOOD.replace("timeout_ms: 500", "timeout_ms: 500\n    retry: 3");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("config error in proxy.yaml at upstreams[0].retry: unknown field `retry`"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_type_names_path() {
        let text = GOOD.replace("timeout_ms: 500", "timeout_ms: soon");
        let e = errors(&text);
        assert!(
            e[0].starts_with("config error in proxy.yaml at upstreams[0].timeout_ms: invalid type"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_failure_mode_names_path() {
        let text = GOOD.replace("failure: open", "failure: maybe");
        let e = errors(&text);
        assert!(
            e[0].starts_with("config error in proxy.yaml at plugins[1].failure: unknown variant `maybe`"),
            "{e:?}"
        );
    }

    #[test]
    fn missing_field_and_syntax_error() {
        let e = errors("listen: 127.0.0.1:1\nupstreams: []\n");
        assert!(
            e[0].starts_with("config error in proxy.yaml: missing field `routes`"),
            "{e:?}"
        );
        let e = errors("listen: [\n");
        assert!(e[0].starts_with("config error in proxy.yaml"), "{e:?}");
    }

    #[test]
    fn unknown_upstream_reference() {
        let text = GOOD.replace("    upstream: demo\n    plugins", "    upstream: nope\n    plugins");
        assert_eq!(
            errors(&text),
            ["config error in proxy.yaml at routes[0].upstream: unknown upstream \"nope\""]
        );
    }

    #[test]
    fn unknown_plugin_and_library_references() {
        let text = GOOD
            .replace("plugins: [auth, timing]", "plugins: [auth, timer]")
            .replace(
                "    library: examples\n    plugin: timing",
                "    library: other\n    plugin: timing",
            );
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at plugins[1].library: unknown library \"other\"",
                "config error in proxy.yaml at routes[0].plugins[1]: unknown plugin \"timer\"",
            ]
        );
    }

    #[test]
    fn duplicate_names() {
        let text = GOOD.replace("  - name: timing\n", "  - name: auth\n");
        let e = errors(&text);
        // The route's reference to "timing" now dangles too.
        assert_eq!(
            e[0],
            "config error in proxy.yaml at plugins[1].name: duplicate name \"auth\" (first used at plugins[0])"
        );
        assert_eq!(
            e[1],
            "config error in proxy.yaml at routes[0].plugins[1]: unknown plugin \"timing\""
        );
    }

    #[test]
    fn bad_addresses() {
        let text = GOOD
            .replace("listen: 127.0.0.1:8080", "listen: localhost:http")
            .replace(
                r#"["127.0.0.1:9000", "localhost:9001"]"#,
                r#"["127.0.0.1", "http://x:1/", "h:0"]"#,
            );
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("config error in proxy.yaml at listen: invalid socket address"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "config error in proxy.yaml at upstreams[0].addresses[0]: invalid address \"127.0.0.1\": missing port"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("config error in proxy.yaml at upstreams[0].addresses[1]: invalid address"),
            "{e:?}"
        );
        assert!(e[3].ends_with("addresses[2]: invalid address \"h:0\": port 0"), "{e:?}");
    }

    #[test]
    fn empty_address_list() {
        let text = GOOD.replace(r#"["127.0.0.1:9000", "localhost:9001"]"#, "[]");
        assert_eq!(
            errors(&text),
            ["config error in proxy.yaml at upstreams[0].addresses: needs at least one address"]
        );
    }

    #[test]
    fn bad_methods_and_prefix() {
        let text = GOOD
            .replace("methods: [get, POST]", r#"methods: [GET, "NOT A METHOD", ""]"#)
            .replace("path_prefix: /api", "path_prefix: api");
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at routes[0].path_prefix: must start with '/', got \"api\"",
                "config error in proxy.yaml at routes[0].methods[1]: invalid HTTP method \"NOT A METHOD\"",
                "config error in proxy.yaml at routes[0].methods[2]: invalid HTTP method \"\"",
            ]
        );
    }

    #[test]
    fn bad_host_pattern() {
        let text = GOOD.replace(r#"host: "*.Example.com""#, r#"host: "a.*.com""#);
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("config error in proxy.yaml at routes[0].host: "),
            "{e:?}"
        );
    }

    const NATS: &str = r#"
listen: 127.0.0.1:8080
nats:
  url: nats://10.0.0.1:4222,nats://10.0.0.2:4222
  auth: { creds: keys/proxy.creds }
  tls: { ca: ca.pem }
plugins:
  - name: auth
    type: nats
    plugin: bearer-auth
    config: { tokens: ["s3cret"] }
  - name: rewrite
    type: nats
    plugin: header-rewriter
    subject: rewrite-v2
    deadline_ms: 50
    max_in_flight: 10
    failure: open
    phases: [request_headers, response_headers]
upstreams:
  - { name: demo, addresses: ["127.0.0.1:9000"] }
routes:
  - { upstream: demo, plugins: [auth, rewrite] }
"#;

    #[test]
    fn nats_instances_parse() {
        let c = parse(NATS).unwrap();
        let nats = c.nats.as_ref().unwrap();
        assert_eq!(nats.url, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
        let auth = nats.auth.as_ref().unwrap();
        assert_eq!(auth.creds.as_deref(), Some(Path::new("/etc/weft/keys/proxy.creds")));
        assert_eq!(
            nats.tls.as_ref().unwrap().ca.as_deref(),
            Some(Path::new("/etc/weft/ca.pem"))
        );
        let (auth, rewrite) = (&c.plugins[0], &c.plugins[1]);
        assert_eq!((auth.kind, auth.library.as_deref()), (PluginType::Nats, None));
        assert_eq!(auth.remote_name(), "auth");
        assert_eq!(auth.phase_mask(), None, "read from the workers");
        assert_eq!(rewrite.remote_name(), "rewrite-v2");
        assert_eq!(rewrite.phase_mask(), Some(0b101));
        assert_eq!((rewrite.deadline_ms, rewrite.max_in_flight), (Some(50), Some(10)));
    }

    #[test]
    fn nats_instance_errors_name_the_field() {
        let text = NATS
            .replace(
                "    subject: rewrite-v2\n",
                "    subject: rewrite.v2\n    library: examples\n",
            )
            .replace("deadline_ms: 50", "deadline_ms: 0")
            .replace("phases: [request_headers, response_headers]", "phases: [request_body]");
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at plugins[1].library: not used by type: nats (the workers run the plugin)",
                "config error in proxy.yaml at plugins[1].subject: \"rewrite.v2\": a NATS instance name may use only A-Z, a-z, 0-9, '-' and '_'",
                "config error in proxy.yaml at plugins[1].deadline_ms: must be at least 1",
                "config error in proxy.yaml at plugins[1].phases[0]: unknown phase \"request_body\" (expected request_headers, response_headers or log)",
            ]
        );
        let no_block = NATS.replace("nats:\n  url: nats://10.0.0.1:4222,nats://10.0.0.2:4222\n  auth: { creds: keys/proxy.creds }\n  tls: { ca: ca.pem }\n", "");
        let e = errors(&no_block);
        assert!(
            e[0].starts_with(
                "config error in proxy.yaml at plugins[0].type: type: nats needs a top-level `nats:` block"
            ),
            "{e:?}"
        );
        let two_auths = NATS.replace(
            "auth: { creds: keys/proxy.creds }",
            "auth: { creds: a.creds, token: t }",
        );
        assert_eq!(
            errors(&two_auths),
            ["config error in proxy.yaml at nats.auth: give one of user/password, token, nkey or creds"]
        );
    }

    #[test]
    fn ffi_instance_needs_library_and_no_nats_fields() {
        let text = GOOD.replace(
            "    library: examples\n    plugin: timing\n",
            "    plugin: timing\n    subject: timing-v2\n    phases: [log]\n",
        );
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at plugins[1].library: required for type: ffi (or set type: nats)",
                "config error in proxy.yaml at plugins[1].subject: only for type: nats",
                "config error in proxy.yaml at plugins[1].phases: only for type: nats",
            ]
        );
    }

    #[test]
    fn ffi_instances_take_async_limits() {
        let text = GOOD
            .replace(
                "    plugin: timing\n    failure: open\n",
                "    plugin: timing\n    failure: open\n    deadline_ms: 250\n    max_in_flight: 8\n    blocking: true\n    retry_after_s: 5\n",
            )
            .replace("log_queue: 10 }", "log_queue: 10, worker_ring_capacity: 64 }");
        let c = parse(&text).unwrap();
        let o = c.plugins[1].instance_options(c.slot_count());
        assert_eq!(o.deadline, std::time::Duration::from_millis(250));
        assert_eq!((o.max_in_flight, o.blocking, o.retry_after_secs), (8, true, 5));
        assert_eq!(c.runtime.as_ref().unwrap().worker_ring_capacity, Some(64));
        // Defaults: 1 s, a quarter of the 16 slots, not blocking, Retry-After 1.
        let o = c.plugins[0].instance_options(c.slot_count());
        assert_eq!(o.deadline, std::time::Duration::from_millis(DEFAULT_FFI_DEADLINE_MS));
        assert_eq!((o.max_in_flight, o.blocking, o.retry_after_secs), (4, false, 1));
    }

    /// No default lets one instance or the log queue hold every arena slot.
    #[test]
    fn defaults_leave_slots_free() {
        let c = parse(&GOOD.replace("runtime: { slots: 16, slot_size: 8192, log_queue: 10 }\n", "")).unwrap();
        assert_eq!(c.slot_count(), 1024);
        assert_eq!(c.plugins[0].instance_options(c.slot_count()).max_in_flight, 256);
        assert_eq!(c.runtime_options().log_queue_len(), 256);
        assert_eq!(default_max_in_flight(1), 1);
        let e = errors(&GOOD.replace("log_queue: 10", "log_queue: 16"));
        assert_eq!(
            e,
            ["config error in proxy.yaml at runtime.log_queue: must be less than runtime.slots (16), got 16"]
        );
        let e = errors(&GOOD.replace("log_queue: 10", "log_queue: 0"));
        assert_eq!(
            e,
            ["config error in proxy.yaml at runtime.log_queue: must be at least 1"]
        );
    }

    #[test]
    fn limits_parse_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.upstreams[0].body_timeout_ms, None);
        let text = GOOD.replace(
            "log_queue: 10 }\n",
            "log_queue: 10 }\nlimits: { max_connections: 50, max_connections_per_ip: 5, listen_backlog: 64, \
             header_read_timeout_ms: 100, idle_timeout_ms: 200, \
             request_body_timeout_ms: 300, send_timeout_ms: 400, http2_max_concurrent_streams: 7, \
             http2_keep_alive_interval_ms: 500, http2_keep_alive_timeout_ms: 600 }\n",
        );
        let l = parse(&text).unwrap().limits();
        let ms = Duration::from_millis;
        assert_eq!(
            l,
            Limits {
                max_connections: Some(50),
                max_connections_per_ip: Some(5),
                listen_backlog: 64,
                header_read_timeout: ms(100),
                idle_timeout: ms(200),
                request_body_timeout: ms(300),
                send_timeout: ms(400),
                http2_max_concurrent_streams: 7,
                http2_keep_alive_interval: ms(500),
                http2_keep_alive_timeout: ms(600),
            }
        );
        assert_eq!(l.connection_cap(), 50);
        let default_cap = Limits::default().connection_cap();
        assert!((64..=DEFAULT_MAX_CONNECTIONS).contains(&default_cap), "{default_cap}");
    }

    #[test]
    fn ejection_defaults_and_errors() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.upstreams[0].ejection.consecutive_failures,
            DEFAULT_EJECTION_CONSECUTIVE_FAILURES
        );
        assert_eq!(c.upstreams[0].ejection.duration_ms, DEFAULT_EJECTION_MS);
        let with = |e: &str| GOOD.replace("timeout_ms: 500", &format!("timeout_ms: 500\n    ejection: {e}"));
        let c = parse(&with("{ consecutive_failures: 5, duration_ms: 250 }")).unwrap();
        assert_eq!(
            (
                c.upstreams[0].ejection.consecutive_failures,
                c.upstreams[0].ejection.duration_ms
            ),
            (5, 250)
        );
        assert_eq!(
            errors(&with("{ consecutive_failures: 0, duration_ms: 0 }")),
            [
                "config error in proxy.yaml at upstreams[0].ejection.consecutive_failures: must be at least 1",
                "config error in proxy.yaml at upstreams[0].ejection.duration_ms: must be between 1 and 86400000 (one day), got 0",
            ]
        );
    }

    #[test]
    fn health_check_defaults_and_errors() {
        let with = |e: &str| GOOD.replace("timeout_ms: 500", &format!("timeout_ms: 500\n    health_check: {e}"));
        let c = parse(&with("{ path: /healthz }")).unwrap();
        let h = c.upstreams[0].health_check.clone().unwrap();
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.healthy_threshold, h.unhealthy_threshold),
            (
                DEFAULT_HEALTH_CHECK_INTERVAL_MS,
                DEFAULT_HEALTH_CHECK_TIMEOUT_MS,
                DEFAULT_HEALTHY_THRESHOLD,
                DEFAULT_UNHEALTHY_THRESHOLD
            )
        );
        assert!(h.passes(204) && !h.passes(301) && !h.passes(503));
        assert!(
            parse(&with("{ path: /h, expected_statuses: [301] }"))
                .unwrap()
                .upstreams[0]
                .health_check
                .as_ref()
                .unwrap()
                .passes(301)
        );
        let at = "config error in proxy.yaml at upstreams[0].health_check";
        assert_eq!(
            errors(&with(
                "{ path: healthz, interval_ms: 0, healthy_threshold: 0, expected_statuses: [200, 700] }"
            )),
            [
                format!("{at}.path: must be a path starting with '/', got \"healthz\""),
                format!("{at}.interval_ms: must be between 1 and 86400000 (one day), got 0"),
                format!("{at}.healthy_threshold: must be at least 1"),
                format!("{at}.expected_statuses: 700 is not an HTTP status"),
            ]
        );
        assert!(errors(&with("{ interval_ms: 5 }"))[0].contains("missing field `path`"));
    }

    #[test]
    fn listen_max_connections_parses_and_must_be_positive() {
        let with = |n: u32| {
            GOOD.replace(
                "listen: 127.0.0.1:8080\n",
                &format!("listen: 127.0.0.1:8080\nlisten_max_connections: {n}\n"),
            )
        };
        assert_eq!(parse(&with(5)).unwrap().listen_max_connections, Some(5));
        assert_eq!(parse(GOOD).unwrap().listen_max_connections, None);
        assert_eq!(
            errors(&with(0)),
            ["config error in proxy.yaml at listen_max_connections: must be at least 1"]
        );
    }

    #[test]
    fn limit_errors_name_the_field() {
        let text = GOOD
            .replace(
                "log_queue: 10 }\n",
                "log_queue: 10 }\nlimits: { max_connections: 0, send_timeout_ms: 0, idle_timeout_ms: 86400001, \
                 http2_max_concurrent_streams: 0, max_connections_per_ip: 0, listen_backlog: 70000 }\n",
            )
            .replace("timeout_ms: 500", "timeout_ms: 500\n    body_timeout_ms: 0");
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at limits.idle_timeout_ms: must be between 1 and 86400000 (one day), got 86400001",
                "config error in proxy.yaml at limits.send_timeout_ms: must be between 1 and 86400000 (one day), got 0",
                "config error in proxy.yaml at limits.max_connections: must be at least 1",
                "config error in proxy.yaml at limits.http2_max_concurrent_streams: must be at least 1",
                "config error in proxy.yaml at limits.max_connections_per_ip: must be at least 1",
                "config error in proxy.yaml at limits.listen_backlog: must be 1 to 65535, got 70000",
                "config error in proxy.yaml at upstreams[0].body_timeout_ms: must be between 1 and 86400000 (one day), got 0",
            ]
        );
        let e = errors(&GOOD.replace("log_queue: 10 }\n", "log_queue: 10 }\nlimits: { read_timeout_ms: 5 }\n"));
        assert!(
            e[0].starts_with("config error in proxy.yaml at limits.read_timeout_ms: unknown field"),
            "{e:?}"
        );
    }

    #[test]
    fn admin_listener_stays_on_loopback_unless_told_and_given_a_token() {
        let with = |admin: &str| GOOD.replace("log_queue: 10 }\n", &format!("log_queue: 10 }}\nadmin: {admin}\n"));
        for ok in [
            "{ listen: 127.0.0.1:9901 }",
            "{ listen: \"[::1]:9901\" }",
            "{ listen: 127.3.2.1:9901 }",
            "{ listen: 0.0.0.0:9901, allow_remote: true, token_file: admin.token }",
        ] {
            let c = parse(&with(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
            if ok.contains("token_file") {
                assert_eq!(
                    c.admin.unwrap().token_file.as_deref(),
                    Some(Path::new("/etc/weft/admin.token"))
                );
            }
        }
        let e = errors(&with("{ listen: 0.0.0.0:9901 }"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("config error in proxy.yaml at admin.listen: \"0.0.0.0:9901\" is not a loopback address"),
            "{e:?}"
        );
        assert!(errors(&with("{ listen: 10.1.2.3:9901, token_file: t }"))[0].contains("admin.allow_remote: true"));
        assert_eq!(
            errors(&with("{ listen: 10.1.2.3:9901, allow_remote: true }")),
            [
                "config error in proxy.yaml at admin.token_file: required with admin.allow_remote: true (a file holding the bearer token)"
            ]
        );
        let e = errors(&with("{ listen: admin.internal:9901 }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("config error in proxy.yaml at admin.listen: invalid socket address"),
            "{e:?}"
        );
    }

    #[test]
    fn async_limit_errors_name_the_field() {
        let text = GOOD
            .replace(
                "    plugin: timing\n    failure: open\n",
                "    plugin: timing\n    failure: open\n    deadline_ms: 0\n    max_in_flight: 0\n",
            )
            .replace("log_queue: 10 }", "log_queue: 10, worker_ring_capacity: 1000 }");
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at runtime.worker_ring_capacity: must be a power of two between 2 and 1048576, got 1000",
                "config error in proxy.yaml at plugins[1].deadline_ms: must be at least 1",
                "config error in proxy.yaml at plugins[1].max_in_flight: must be at least 1",
            ]
        );
        // blocking and retry_after_s belong to in-process instances.
        let nats = NATS.replace(
            "    max_in_flight: 10\n",
            "    max_in_flight: 10\n    blocking: true\n    retry_after_s: 2\n",
        );
        assert_eq!(
            errors(&nats),
            [
                "config error in proxy.yaml at plugins[1].blocking: only for type: ffi",
                "config error in proxy.yaml at plugins[1].retry_after_s: only for type: ffi",
            ]
        );
    }

    #[test]
    fn request_hardening_fields() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.path_normalization, crate::path::PathOptions::default());
        assert!(c.trusted_proxies().0.is_empty());
        let text = format!(
            "{GOOD}path_normalization: {{ merge_slashes: false, escaped_slashes: keep }}\ntrusted_proxies: [10.0.0.0/8, \"::1\"]\n"
        );
        let c = parse(&text).unwrap();
        assert!(!c.path_normalization.merge_slashes);
        assert_eq!(c.path_normalization.escaped_slashes, crate::path::EscapedSlashes::Keep);
        assert_eq!(c.trusted_proxies().0.len(), 2);
        let e = errors(&format!("{GOOD}trusted_proxies: [10.0.0.0/40, nope]\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(
                "config error in proxy.yaml at trusted_proxies[0]: invalid address or CIDR \"10.0.0.0/40\""
            ),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("config error in proxy.yaml at trusted_proxies[1]: "),
            "{e:?}"
        );
        let e = errors(&format!("{GOOD}path_normalization: {{ escaped_slashes: sometimes }}\n"));
        assert!(
            e[0].starts_with(
                "config error in proxy.yaml at path_normalization.escaped_slashes: unknown variant `sometimes`"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn methods_are_normalized() {
        assert_eq!(parse_method("get").unwrap(), Method::GET);
        assert_eq!(parse_method("PURGE").unwrap().as_str(), "PURGE");
        assert!(parse_method("GE T").is_err());
    }
}
