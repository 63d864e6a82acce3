//! Every default of the config, named once: the serde defaults, the code that falls back when a
//! field is absent, and the field docs all refer to these.

/// `shutdown_timeout_ms`: how long in-flight requests may take to finish after SIGTERM/SIGINT
/// (also the drain of [`crate::server::serve`]).
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// `limits.max_connections` when absent: half the open-file limit, at most this.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// `limits.listen_backlog`: connections each listening socket queues before they are accepted.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// `limits.header_read_timeout_ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// `limits.idle_timeout_ms`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// `limits.request_body_timeout_ms`.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// `limits.send_timeout_ms`.
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
/// `limits.http2_max_concurrent_streams`.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// `limits.http2_keep_alive_interval_ms`.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL_MS: u64 = 30_000;
/// `limits.http2_keep_alive_timeout_ms`.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT_MS: u64 = 10_000;

/// `plugins[].deadline_ms` of `type: ffi` instances.
pub const DEFAULT_FFI_DEADLINE_MS: u64 = 1000;
/// `plugins[].deadline_ms` of `type: nats` instances (the whole call, wire and worker).
pub const DEFAULT_NATS_DEADLINE_MS: u64 = 200;
/// `plugins[].retry_after_s` (`type: ffi`).
pub const DEFAULT_RETRY_AFTER_S: u32 = 1;

/// Default of `plugins[].max_in_flight`: a quarter of the arena's request slots (at least 1),
/// so one instance whose calls hang cannot hold every slot.
pub fn default_max_in_flight(slots: u32) -> usize {
    (slots as usize / 4).max(1)
}

/// `nats.url`.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// `nats.discovery_timeout_ms`: time allowed for reading phases from `$SRV.INFO` at start-up.
pub const DEFAULT_NATS_DISCOVERY_TIMEOUT_MS: u64 = 2000;

/// `upstreams[].connect_timeout_ms`.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 1000;
/// `upstreams[].timeout_ms`.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// `upstreams[].retries`.
pub const DEFAULT_UPSTREAM_RETRIES: u32 = 1;
/// Upper bound of `upstreams[].retries`.
pub const MAX_UPSTREAM_RETRIES: u32 = 10;
/// Upper bound of `upstreams[].addresses[].weight`.
pub const MAX_ADDRESS_WEIGHT: u32 = 1000;
/// Upper bound of the weights of one `weighted` upstream added up: its schedule has an entry per
/// unit, and building it takes that many steps over every address.
pub const MAX_WEIGHT_TOTAL: u64 = 10_000;
/// `upstreams[].body_timeout_ms`.
pub const DEFAULT_UPSTREAM_BODY_TIMEOUT_MS: u64 = 60_000;

/// `upstreams[].ejection.consecutive_failures`.
pub const DEFAULT_EJECTION_CONSECUTIVE_FAILURES: u32 = 3;
/// `upstreams[].ejection.duration_ms`.
pub const DEFAULT_EJECTION_MS: u64 = 10_000;

/// `upstreams[].health_check.interval_ms`.
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: u64 = 5_000;
/// `upstreams[].health_check.timeout_ms`.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT_MS: u64 = 1_000;
/// `upstreams[].health_check.healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// `upstreams[].health_check.unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// `routes[].path_prefix`.
pub const DEFAULT_PATH_PREFIX: &str = "/";
/// `routes[].max_buffered_body_bytes` (1 MiB).
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: u64 = 1 << 20;

/// `routes[].websocket.max_frame_bytes` (64 KiB).
pub const DEFAULT_WS_MAX_FRAME_BYTES: usize = 64 * 1024;
/// `routes[].websocket.max_message_bytes` (16 KiB).
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// `routes[].websocket.send_queue`.
pub const DEFAULT_WS_SEND_QUEUE: usize = 256;
/// `routes[].websocket.ping_interval_ms`.
pub const DEFAULT_WS_PING_INTERVAL_MS: u64 = 20_000;
/// `routes[].websocket.idle_timeout_ms`.
pub const DEFAULT_WS_IDLE_TIMEOUT_MS: u64 = 60_000;
