//! Prometheus metrics (`prometheus-client`), served as text by the admin listener
//! ([`crate::admin`]).
//!
//! The hot path only touches atomics: every route's counters and histograms are resolved once,
//! when the route table is built ([`Metrics::route`]), and a request adds to them with relaxed
//! `fetch_add`s. The histogram is our own lock-free one ([`Histogram`]); prometheus-client's
//! takes a mutex per observation. Runtime numbers (arena, plugin failures, dropped log phases)
//! are read at scrape time by a collector, so they cost the request path nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use weft_runtime::abi::WeftPhase;
use weft_runtime::budget::ByteBudget;
use weft_runtime::remote::{RemoteCall, RemoteErrorKind, RemoteInstance};
use weft_runtime::{Runtime, RuntimeStats};

use crate::h1::request::Handoff;

/// Upper bounds (seconds) of the request latency buckets: 100 µs to 10 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the plugin phase buckets: 1 µs to 250 ms (remote phases reach ms).
pub const PHASE_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25,
];

/// A lock-free histogram of durations: one atomic per bucket, the sum in nanoseconds.
/// Cloning shares it.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    bounds_ns: Box<[u64]>,
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramInner {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.0.bounds_ns.partition_point(|&b| b < ns);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets = self
            .0
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.buckets.iter())
            .map(|(le, n)| {
                let n = n.load(Ordering::Relaxed);
                count += n;
                (le, n)
            })
            .collect();
        (self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamAddress {
    upstream: String,
    address: String,
}

/// The per-address series of an upstream ([`Metrics::address`]).
#[derive(Clone, Debug, Default)]
pub struct AddressMetrics {
    pub healthy: Gauge,
    pub ejections: Counter,
    pub active: SpreadGauge,
}

/// A gauge every serving thread moves on its own cache line ([`SpreadCount`]): counting each
/// request in and out of an address shared by all threads would otherwise bounce one line
/// between the cores on every request.
pub type SpreadGauge = Gauge<i64, SpreadCount>;

/// Cells a [`SpreadCount`] is split into; a thread uses cell `its index % SPREAD_CELLS`.
const SPREAD_CELLS: usize = 16;

/// One cache line (128 bytes: two 64-byte lines, against adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(std::sync::atomic::AtomicI64);

/// A gauge's value as per-thread cells; the value is their sum, read at scrape time.
#[derive(Debug, Default)]
pub struct SpreadCount {
    cells: [Cell; SPREAD_CELLS],
}

impl SpreadCount {
    fn mine(&self) -> &std::sync::atomic::AtomicI64 {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SPREAD_CELLS;
        }
        &self.cells[INDEX.with(|i| *i)].0
    }
}

// `inc`/`dec` return the calling thread's cell's previous value, not the gauge's: summing every
// cell would read the other threads' lines on each request (the proxy ignores the result).
impl prometheus_client::metrics::gauge::Atomic<i64> for SpreadCount {
    fn inc(&self) -> i64 {
        self.inc_by(1)
    }
    fn inc_by(&self, v: i64) -> i64 {
        self.mine().fetch_add(v, Ordering::Relaxed)
    }
    fn dec(&self) -> i64 {
        self.dec_by(1)
    }
    fn dec_by(&self, v: i64) -> i64 {
        self.mine().fetch_sub(v, Ordering::Relaxed)
    }
    fn set(&self, v: i64) -> i64 {
        let old = self.get();
        for (i, c) in self.cells.iter().enumerate() {
            c.0.store(if i == 0 { v } else { 0 }, Ordering::Relaxed);
        }
        old
    }
    fn get(&self) -> i64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutePhase {
    route: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKind {
    route: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginPhase {
    plugin: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKind {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// Phases an in-process plugin call is timed in, indexed by `WeftPhase as usize`.
const TIMED_PHASES: [WeftPhase; 8] = [
    WeftPhase::RequestHeaders,
    WeftPhase::RequestBody,
    WeftPhase::ResponseHeaders,
    WeftPhase::ResponseBody,
    WeftPhase::Log,
    WeftPhase::WebSocketOpen,
    WeftPhase::WebSocketMessage,
    WeftPhase::WebSocketClose,
];

/// [`weft_runtime::PhaseTimer`] of one in-process instance: histogram handles resolved once, so
/// a call costs two clock reads and one histogram observation.
#[derive(Debug)]
struct PluginTimer {
    by_phase: [Histogram; 8],
}

impl weft_runtime::PhaseTimer for PluginTimer {
    fn record(&self, phase: WeftPhase, elapsed: std::time::Duration) {
        if let Some(h) = self.by_phase.get(phase as usize) {
            h.observe(elapsed);
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Route name used for requests that matched no route (404).
pub const NO_ROUTE: &str = "<none>";

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}
fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// One route's metric handles, resolved when the route table is built.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    request_phase: Histogram,
    response_phase: Histogram,
    upstream_timeouts: Counter,
    upstream_failures: Counter,
}

impl RouteMetrics {
    /// A finished request (response head sent): counts it by status class and records the time
    /// since `start` (saturating: `quanta` says a later version may panic in `elapsed` when the
    /// counter reads earlier than `start`).
    pub fn observe(&self, status: StatusCode, start: quanta::Instant) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration
            .observe(quanta::Instant::now().saturating_duration_since(start));
    }

    /// Time spent in the chain's request-headers phase (all its plugins, in order).
    pub fn request_phase(&self, d: Duration) {
        self.request_phase.observe(d);
    }

    /// Time spent in the chain's response-headers phase.
    pub fn response_phase(&self, d: Duration) {
        self.response_phase.observe(d);
    }

    pub fn upstream_timeout(&self) {
        self.upstream_timeouts.inc();
    }

    pub fn upstream_failure(&self) {
        self.upstream_failures.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabel {
    thread: u32,
}

/// What timed out (`weft_timeouts_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// No complete request head in time: the first one (protocol detection included) or, on an
    /// HTTP/1.1 keep-alive connection, a later one.
    HeaderRead,
    /// A connection without a request in flight for `limits.idle_timeout_ms`.
    Idle,
    /// An HTTP/2 keep-alive ping not answered in time.
    Http2KeepAlive,
    /// No bytes of a request body for `limits.request_body_timeout_ms`.
    RequestBody,
    /// The client took no bytes of a response for `limits.send_timeout_ms`.
    Send,
    /// No bytes of an upstream's response body for `upstreams[].body_timeout_ms`.
    UpstreamBody,
}

impl TimeoutKind {
    pub const ALL: [TimeoutKind; 6] = [
        TimeoutKind::HeaderRead,
        TimeoutKind::Idle,
        TimeoutKind::Http2KeepAlive,
        TimeoutKind::RequestBody,
        TimeoutKind::Send,
        TimeoutKind::UpstreamBody,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TimeoutKind::HeaderRead => "header_read",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Http2KeepAlive => "http2_keep_alive",
            TimeoutKind::RequestBody => "request_body",
            TimeoutKind::Send => "send",
            TimeoutKind::UpstreamBody => "upstream_body",
        }
    }
}

/// One listener's connection gauges and counters (`weft_connections_*{listener}`).
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub open: Gauge,
    /// Connections closed at accept: their address had `limits.max_connections_per_ip` open.
    pub refused: Counter,
    /// Times a connection was queued and no permit was free ([`crate::accept`]).
    pub limit_reached: Counter,
}

/// Every metric of the process. One instance per process ([`global`]), so counters survive
/// config reloads: a route keeps its series as long as it keeps its name.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    route_series: RouteSeries,
    reloads: Family<Outcome, Counter>,
    config_generation: Gauge,
    plugin_series: PluginSeries,
    /// `weft_timeouts_total`, by [`TimeoutKind::ALL`].
    timeouts: [Counter; 6],
    /// `weft_http1_handoffs_total`, by [`Handoff::ALL`].
    handoffs: [Counter; 6],
    connection_series: ConnectionSeries,
    upstream_series: UpstreamSeries,
    /// Route names that have series, so a reload can drop those of removed routes.
    routes: Mutex<std::collections::HashSet<String>>,
    no_route: RouteMetrics,
    runtime: Arc<RuntimeCollector>,
    tls: crate::tls::TlsMetrics,
}

/// Registers `metric` under `name` and hands it back (the registry keeps a clone: they share
/// their values).
fn register<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// The families a route's [`RouteMetrics`] are made from.
#[derive(Debug)]
struct RouteSeries {
    requests: Family<RouteStatus, Counter>,
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    phases: Family<RoutePhase, Histogram, fn() -> Histogram>,
    upstream_errors: Family<RouteKind, Counter>,
}

impl RouteSeries {
    fn register(r: &mut Registry) -> RouteSeries {
        RouteSeries {
            requests: register(
                r,
                "weft_requests",
                "Requests answered, by route and status class",
                Family::default(),
            ),
            durations: register(
                r,
                "weft_request_duration_seconds",
                "Time from request arrival to the response head, by route",
                Family::new_with_constructor(request_histogram),
            ),
            phases: register(
                r,
                "weft_chain_phase_duration_seconds",
                "Time spent in a route's plugin chain per phase (all plugins of the chain)",
                Family::new_with_constructor(phase_histogram),
            ),
            upstream_errors: register(
                r,
                "weft_upstream_errors",
                "Upstream requests that failed (kind=failed) or timed out (kind=timeout), by route",
                Family::default(),
            ),
        }
    }
}

/// Per plugin instance and phase: in-process call times, remote round trips and failures.
#[derive(Debug)]
struct PluginSeries {
    plugin_phases: Family<PluginPhase, Histogram, fn() -> Histogram>,
    remote_phases: Family<PluginPhase, Histogram, fn() -> Histogram>,
    remote_errors: Family<PluginKind, Counter>,
}

impl PluginSeries {
    fn register(r: &mut Registry) -> PluginSeries {
        PluginSeries {
            plugin_phases: register(
                r,
                "weft_plugin_phase_duration_seconds",
                "In-process plugin calls, from the call to its completion (pending and worker calls included), \
                 by plugin instance and phase; only with admin.plugin_timing: true",
                Family::new_with_constructor(phase_histogram),
            ),
            remote_phases: register(
                r,
                "weft_remote_phase_duration_seconds",
                "Remote (type: nats) plugin phase calls, round trip, by plugin instance and phase",
                Family::new_with_constructor(phase_histogram),
            ),
            remote_errors: register(
                r,
                "weft_remote_errors",
                "Failed remote plugin calls by instance and kind (unavailable, overloaded, timeout, plugin_failed, bad_reply)",
                Family::default(),
            ),
        }
    }
}

/// Client connections per listener and per serving thread.
#[derive(Debug)]
struct ConnectionSeries {
    open: Family<ListenerLabel, Gauge>,
    refused: Family<ListenerLabel, Counter>,
    limit_reached: Family<ListenerLabel, Counter>,
    serving: Family<ThreadLabel, Counter>,
}

impl ConnectionSeries {
    fn register(r: &mut Registry) -> ConnectionSeries {
        ConnectionSeries {
            open: register(
                r,
                "weft_connections_open",
                "Client connections open, by listener (proxy, listen_tls[i], admin); WebSocket connections included",
                Family::default(),
            ),
            refused: register(
                r,
                "weft_connections_refused",
                "Connections closed at accept because limits.max_connections_per_ip from the client's \
                 address were open, by listener",
                Family::default(),
            ),
            limit_reached: register(
                r,
                "weft_connections_limit_reached",
                "Times a serving thread had a connection queued and no permit (the listener's \
                 max_connections or limits.max_connections were open): it waits in the listen backlog \
                 until a connection closes",
                Family::default(),
            ),
            serving: register(
                r,
                "weft_serving_thread_connections",
                "Client connections accepted by each serving thread (workers:); a connection stays on \
                 the thread that accepted it",
                Family::default(),
            ),
        }
    }
}

/// Per upstream address: health, ejections and requests in flight; per upstream: retries.
#[derive(Debug)]
struct UpstreamSeries {
    healthy: Family<UpstreamAddress, Gauge>,
    ejections: Family<UpstreamAddress, Counter>,
    active: Family<UpstreamAddress, SpreadGauge>,
    retries: Family<UpstreamLabel, Counter>,
}

impl UpstreamSeries {
    fn register(r: &mut Registry) -> UpstreamSeries {
        UpstreamSeries {
            healthy: register(
                r,
                "weft_upstream_address_healthy",
                "1 while an upstream address gets traffic, 0 while it is ejected (upstreams[].ejection)",
                Family::default(),
            ),
            ejections: register(
                r,
                "weft_upstream_address_ejections",
                "Times an upstream address was ejected after consecutive failures",
                Family::default(),
            ),
            active: register(
                r,
                "weft_upstream_address_active_requests",
                "Requests sent to an upstream address and waiting for its response head",
                Family::default(),
            ),
            retries: register(
                r,
                "weft_upstream_retries",
                "Requests sent again to another address of an upstream after an attempt failed (upstreams[].retries)",
                Family::default(),
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let route_series = RouteSeries::register(&mut r);
        let reloads = register(
            &mut r,
            "weft_config_reloads",
            "Config reloads, by result (ok, error)",
            Family::default(),
        );
        let config_generation = register(
            &mut r,
            "weft_config_generation",
            "Config generation serving now (1 at start, +1 per successful reload)",
            Gauge::default(),
        );
        let plugin_series = PluginSeries::register(&mut r);
        let timeout_family = register(
            &mut r,
            "weft_timeouts",
            "Timeouts that closed a connection or cut a request or response short, by kind \
             (header_read, idle, http2_keep_alive, request_body, send, upstream_body)",
            Family::<TimeoutLabel, Counter>::default(),
        );
        let timeouts = TimeoutKind::ALL.map(|k| timeout_family.get_or_create_owned(&TimeoutLabel { kind: k.label() }));
        let handoff_family = register(
            &mut r,
            "weft_http1_handoffs",
            "HTTP/1.1 connections the lean server path handed to hyper's server, by the reason of \
             the request that did (body, connection, te, http10, large, malformed)",
            Family::<ReasonLabel, Counter>::default(),
        );
        let handoffs = Handoff::ALL.map(|h| handoff_family.get_or_create_owned(&ReasonLabel { reason: h.label() }));
        let connection_series = ConnectionSeries::register(&mut r);
        let upstream_series = UpstreamSeries::register(&mut r);
        let runtime = Arc::new(RuntimeCollector::default());
        r.register_collector(Box::new(runtime.clone()));
        r.register_collector(Box::new(LogCollector));
        let tls = crate::tls::TlsMetrics::default();
        tls.register(&mut r);
        let mut m = Metrics {
            registry: r,
            route_series,
            reloads,
            config_generation,
            plugin_series,
            timeouts,
            handoffs,
            connection_series,
            upstream_series,
            routes: Mutex::default(),
            no_route: placeholder_route(),
            runtime,
            tls,
        };
        m.no_route = m.route(NO_ROUTE);
        m.config_generation.set(1);
        m
    }

    /// The handles of route `name` (created on first use, shared afterwards).
    pub fn route(&self, name: &str) -> RouteMetrics {
        let route = name.to_owned();
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(route.clone());
        let class = |status| {
            self.route_series.requests.get_or_create_owned(&RouteStatus {
                route: route.clone(),
                status,
            })
        };
        let phase = |phase| {
            self.route_series.phases.get_or_create_owned(&RoutePhase {
                route: route.clone(),
                phase,
            })
        };
        let upstream = |kind| {
            self.route_series.upstream_errors.get_or_create_owned(&RouteKind {
                route: route.clone(),
                kind,
            })
        };
        RouteMetrics {
            by_class: STATUS_CLASSES.map(class),
            duration: self
                .route_series
                .durations
                .get_or_create_owned(&RouteLabel { route: route.clone() }),
            request_phase: phase("request_headers"),
            response_phase: phase("response_headers"),
            upstream_timeouts: upstream("timeout"),
            upstream_failures: upstream("failed"),
        }
    }

    /// The series of `address` of upstream `upstream` (created on first use, shared afterwards,
    /// so they survive a reload that keeps the upstream and the address).
    pub fn address(&self, upstream: &str, address: &str) -> AddressMetrics {
        let label = UpstreamAddress {
            upstream: upstream.to_owned(),
            address: address.to_owned(),
        };
        AddressMetrics {
            healthy: self.upstream_series.healthy.get_or_create_owned(&label),
            ejections: self.upstream_series.ejections.get_or_create_owned(&label),
            active: self.upstream_series.active.get_or_create_owned(&label),
        }
    }

    /// `weft_upstream_retries_total` of `upstream` (shared across reloads, as its name is).
    pub fn upstream_retries(&self, upstream: &str) -> Counter {
        self.upstream_series.retries.get_or_create_owned(&UpstreamLabel {
            upstream: upstream.to_owned(),
        })
    }

    /// A timer for an in-process plugin instance: one histogram per phase under `plugin`.
    pub fn plugin_timer(&self, plugin: &str) -> Arc<dyn weft_runtime::PhaseTimer> {
        let phase = |phase: WeftPhase| {
            self.plugin_series.plugin_phases.get_or_create_owned(&PluginPhase {
                plugin: plugin.to_owned(),
                phase: weft_nats_bridge::phase_token(phase),
            })
        };
        Arc::new(PluginTimer {
            by_phase: TIMED_PHASES.map(phase),
        })
    }

    /// Wraps a remote plugin instance so its calls are timed and its failures counted under
    /// `plugin` (the instance name).
    pub fn timed_remote(&self, plugin: &str, inner: Arc<dyn RemoteInstance>) -> Arc<dyn RemoteInstance> {
        let phase = |phase| {
            self.plugin_series.remote_phases.get_or_create_owned(&PluginPhase {
                plugin: plugin.to_owned(),
                phase,
            })
        };
        let kind = |kind| {
            self.plugin_series.remote_errors.get_or_create_owned(&PluginKind {
                plugin: plugin.to_owned(),
                kind,
            })
        };
        Arc::new(TimedRemote {
            inner,
            request_headers: phase("request_headers"),
            response_headers: phase("response_headers"),
            errors: REMOTE_ERROR_KINDS.map(kind),
        })
    }

    /// Drops the series of routes not in `keep` (after a reload removed or renamed them).
    /// Requests still finishing on the old config count into detached handles.
    pub fn forget_routes_except(&self, keep: &[String]) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = routes
            .iter()
            .filter(|r| r.as_str() != NO_ROUTE && !keep.contains(r))
            .cloned()
            .collect();
        for route in gone {
            for status in STATUS_CLASSES {
                self.route_series.requests.remove(&RouteStatus {
                    route: route.clone(),
                    status,
                });
            }
            self.route_series.durations.remove(&RouteLabel { route: route.clone() });
            for phase in ["request_headers", "response_headers"] {
                self.route_series.phases.remove(&RoutePhase {
                    route: route.clone(),
                    phase,
                });
            }
            for kind in ["timeout", "failed"] {
                self.route_series.upstream_errors.remove(&RouteKind {
                    route: route.clone(),
                    kind,
                });
            }
            routes.remove(&route);
        }
    }

    /// Handles for requests that matched no route.
    pub fn no_route(&self) -> &RouteMetrics {
        &self.no_route
    }

    /// The runtime whose arena and counters the scrape reports (the current config's). The
    /// replaced runtime's high-water mark is taken first: a reload that builds a new arena keeps
    /// the old one's peak.
    pub fn set_runtime(&self, rt: Option<Arc<Runtime>>) {
        self.sample_arena();
        self.runtime.set(rt);
    }

    /// The NATS connection of the current config's `type: nats` instances, if any.
    pub fn set_nats(&self, nats: Option<Arc<weft_nats_bridge::NatsTransport>>) {
        *self.runtime.nats.lock().unwrap_or_else(|e| e.into_inner()) = nats;
    }

    /// Takes the current runtime's arena high-water mark ([`Runtime::arena_high_water`], kept
    /// by the arena itself: no thread samples it) into the one the scrape reports, at each scrape
    /// and before a reload replaces the runtime; returns the slots in use.
    pub fn sample_arena(&self) -> u64 {
        self.runtime.sample()
    }

    /// Counts a timeout that fired.
    pub fn timeout(&self, kind: TimeoutKind) {
        self.timeouts[kind as usize].inc();
    }

    /// Counts a connection handed from the lean HTTP/1.1 path to hyper's server.
    pub fn handoff(&self, why: Handoff) {
        self.handoffs[why as usize].inc();
    }

    /// The connection metrics of listener `name` (`proxy`, `listen_tls[i]` or `admin`).
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: name.to_owned(),
        };
        ListenerMetrics {
            open: self.connection_series.open.get_or_create_owned(&label),
            refused: self.connection_series.refused.get_or_create_owned(&label),
            limit_reached: self.connection_series.limit_reached.get_or_create_owned(&label),
        }
    }

    /// TLS handshakes and certificate expiry (`tls.rs`).
    pub fn tls(&self) -> &crate::tls::TlsMetrics {
        &self.tls
    }

    /// Connections accepted by serving thread `thread` ([`crate::workers`]).
    pub fn serving_thread(&self, thread: u32) -> Counter {
        self.connection_series
            .serving
            .get_or_create_owned(&ThreadLabel { thread })
    }

    pub fn reload_result(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&Outcome { result }).inc();
        if ok {
            self.config_generation.inc();
        }
    }

    /// Sets whether the process is ready ([`Self::is_ready`], `/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.runtime.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.runtime.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text format (version 0.0.4), with its content type.
    pub fn encode(&self) -> (String, &'static str) {
        self.sample_arena();
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        (out, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn placeholder_route() -> RouteMetrics {
    RouteMetrics {
        by_class: Default::default(),
        duration: request_histogram(),
        request_phase: phase_histogram(),
        response_phase: phase_histogram(),
        upstream_timeouts: Counter::default(),
        upstream_failures: Counter::default(),
    }
}

const REMOTE_ERROR_KINDS: [&str; 5] = ["unavailable", "overloaded", "timeout", "plugin_failed", "bad_reply"];

/// A remote plugin instance whose calls are timed (per phase) and whose failures are counted.
struct TimedRemote {
    inner: Arc<dyn RemoteInstance>,
    request_headers: Histogram,
    response_headers: Histogram,
    /// By [`REMOTE_ERROR_KINDS`].
    errors: [Counter; 5],
}

impl RemoteInstance for TimedRemote {
    fn phases(&self) -> u32 {
        self.inner.phases()
    }

    fn call<'a>(&'a self, phase: WeftPhase, request_id: u64, view: &'a [u8], deadline: Duration) -> RemoteCall<'a> {
        let start = Instant::now();
        let call = self.inner.call(phase, request_id, view, deadline);
        Box::pin(async move {
            let result = call.await;
            match phase {
                WeftPhase::RequestHeaders => self.request_headers.observe(start.elapsed()),
                WeftPhase::ResponseHeaders => self.response_headers.observe(start.elapsed()),
                _ => {}
            }
            if let Err(e) = &result {
                let i = match e.kind {
                    RemoteErrorKind::Unavailable => 0,
                    RemoteErrorKind::Overloaded => 1,
                    RemoteErrorKind::Timeout => 2,
                    RemoteErrorKind::PluginFailed(_) => 3,
                    RemoteErrorKind::BadReply => 4,
                };
                self.errors[i].inc();
            }
            result
        })
    }

    fn log(&self, request_id: u64, view: &[u8]) {
        self.inner.log(request_id, view);
    }

    fn release(&self, request_id: u64) {
        self.inner.release(request_id);
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Reads the plugin runtime at scrape time.
#[derive(Default)]
struct RuntimeCollector {
    generations: Mutex<Generations>,
    high_water: AtomicU64,
    ready: AtomicBool,
    nats: Mutex<Option<Arc<weft_nats_bridge::NatsTransport>>>,
}

/// The runtime statistics that make up the totals. Runtime generations that replaced each other
/// on a reload share one [`RuntimeStats`] (`Runtime::replacing`), so this usually holds one; a
/// runtime built afresh brings another, kept while anything refers to it: a draining request, or
/// a cancelled call whose plugin never completes it (still counted in
/// `weft_plugin_orphaned_slots`).
#[derive(Default)]
struct Generations {
    /// The current config's.
    current: Option<Arc<Runtime>>,
    /// Every statistics block in use, each once.
    stats: Vec<Arc<RuntimeStats>>,
    /// Final counters of statistics nothing else refers to any more, in the order of [`stats`].
    retired: [u64; COUNTERS],
    /// Every buffered-body budget in use (shared like the statistics), each once.
    budgets: Vec<Arc<ByteBudget>>,
    /// Refusals of budgets nothing else refers to any more.
    retired_refusals: u64,
}

impl Generations {
    /// Folds the statistics only this collector still holds into `retired` (under the lock the
    /// scrape reads them with, so nothing is counted twice or missed).
    fn prune(&mut self) {
        let mut retired = self.retired;
        self.stats.retain(|s| {
            let gone = Arc::strong_count(s) == 1;
            if gone {
                for (acc, v) in retired.iter_mut().zip(stats(s)) {
                    *acc += v;
                }
            }
            !gone
        });
        self.retired = retired;
        let mut refusals = self.retired_refusals;
        self.budgets.retain(|b| {
            let gone = Arc::strong_count(b) == 1;
            if gone {
                refusals += b.refusals();
            }
            !gone
        });
        self.retired_refusals = refusals;
    }

    /// Buffered-body memory over every budget: (bytes held, limit of the current one, refusals).
    fn budget(&self) -> (u64, u64, u64) {
        let limit = self.current.as_ref().map_or(0, |rt| rt.buffered_budget().limit());
        self.budgets
            .iter()
            .fold((0, limit, self.retired_refusals), |(u, l, r), b| {
                (u + b.used(), l, r + b.refusals())
            })
    }
}

impl std::fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeCollector").finish_non_exhaustive()
    }
}

impl RuntimeCollector {
    fn generations(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, rt: Option<Arc<Runtime>>) {
        let mut g = self.generations();
        if let Some(rt) = &rt
            && !g.stats.iter().any(|s| Arc::ptr_eq(s, &rt.stats))
        {
            g.stats.push(Arc::clone(&rt.stats));
        }
        if let Some(rt) = &rt
            && !g.budgets.iter().any(|b| Arc::ptr_eq(b, rt.buffered_budget()))
        {
            g.budgets.push(Arc::clone(rt.buffered_budget()));
        }
        g.current = rt;
        g.prune();
    }

    fn runtime(&self) -> Option<Arc<Runtime>> {
        self.generations().current.clone()
    }

    /// Counters summed over every generation, alive or retired.
    fn totals(&self) -> [u64; COUNTERS] {
        let mut g = self.generations();
        g.prune();
        let mut sum = g.retired;
        for s in &g.stats {
            for (acc, v) in sum.iter_mut().zip(stats(s)) {
                *acc += v;
            }
        }
        sum
    }

    fn sample(&self) -> u64 {
        let Some(rt) = self.runtime() else {
            return 0;
        };
        let in_use = rt.arena_usage().0;
        self.high_water
            .fetch_max(rt.arena_high_water().max(in_use), Ordering::Relaxed);
        in_use
    }
}

/// Dropped log lines: the proxy's own (stderr writer behind) and plugins' (rate limit).
#[derive(Debug)]
struct LogCollector;

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in [
            (
                "weft_log_lines_dropped",
                "Log lines dropped because the stderr writer fell behind (stderr stalled or slow)",
                crate::logging::dropped_lines(),
            ),
            (
                "weft_plugin_log_lines_dropped",
                "Plugin log lines dropped by the per-instance rate limit",
                weft_runtime::plugin_log::dropped_lines(),
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// A counter of [`RuntimeStats`] the metrics report, summed over runtime generations: its
/// exposition name (`_total` is appended), help text and field, declared together so a name
/// and its value cannot drift apart.
struct RuntimeCounter {
    name: &'static str,
    help: &'static str,
    read: fn(&RuntimeStats) -> &AtomicU64,
}

/// Every runtime counter, in exposition order.
const RUNTIME_COUNTERS: [RuntimeCounter; 11] = [
    RuntimeCounter {
        name: "weft_arena_exhausted",
        help: "Requests answered 503 because every arena slot was in use",
        read: |s| &s.arena_exhausted,
    },
    RuntimeCounter {
        name: "weft_plugin_failures",
        help: "Plugin phase calls that failed (error result, panic, invalid mutation batch, remote failure)",
        read: |s| &s.plugin_failures,
    },
    RuntimeCounter {
        name: "weft_log_phase_dropped",
        help: "Log phases dropped because the log queue was full",
        read: |s| &s.log_dropped,
    },
    RuntimeCounter {
        name: "weft_plugin_fail_open_passes",
        help: "Failed calls of fail-open plugin instances; the request went on unchanged",
        read: |s| &s.fail_open_passes,
    },
    RuntimeCounter {
        name: "weft_plugin_timeouts",
        help: "Pending plugin calls and worker jobs cancelled at their phase deadline",
        read: |s| &s.phase_timeouts,
    },
    RuntimeCounter {
        name: "weft_plugin_busy_rejections",
        help: "Plugin calls refused because the instance's in-flight limit or a worker ring was full",
        read: |s| &s.busy_rejections,
    },
    RuntimeCounter {
        name: "weft_plugin_late_completions",
        help: "Completions that arrived after the call was cancelled (discarded; their slot released)",
        read: |s| &s.late_completions,
    },
    RuntimeCounter {
        name: "weft_worker_jobs",
        help: "Plugin phase calls posted to worker rings (blocking plugins)",
        read: |s| &s.worker_jobs,
    },
    RuntimeCounter {
        name: "weft_plugin_output_bytes_shared",
        help: "Bytes of local reply bodies sent from the arena slot the plugin wrote them to (or from the NATS reply), without a copy",
        read: |s| &s.output_bytes_shared,
    },
    RuntimeCounter {
        name: "weft_plugin_output_bytes_copied",
        help: "Bytes of local reply bodies copied because the call had no out slot of its own (arena full)",
        read: |s| &s.output_bytes_copied,
    },
    RuntimeCounter {
        name: "weft_plugin_stalls",
        help: "Inline plugin calls still running past runtime.stall_threshold_ms (each counted once; it held a proxy thread: consider blocking: true)",
        read: |s| &s.plugin_stalls,
    },
];

const COUNTERS: usize = RUNTIME_COUNTERS.len();

/// The values of [`RUNTIME_COUNTERS`] in `s`, in the table's order.
fn stats(s: &RuntimeStats) -> [u64; COUNTERS] {
    let mut values = [0; COUNTERS];
    for (v, c) in values.iter_mut().zip(&RUNTIME_COUNTERS) {
        *v = (c.read)(s).load(Ordering::Relaxed);
    }
    values
}

impl RuntimeCollector {
    /// Gauges summed over every generation still referred to: (calls pending now, slots held by
    /// cancelled calls), including calls of runtimes already replaced and gone.
    fn async_gauges(&self) -> (u64, u64) {
        let g = self.generations();
        g.stats.iter().fold((0, 0), |(p, o), s| {
            (
                p + s.pending_calls.load(Ordering::Relaxed),
                o + s.orphaned_slots.load(Ordering::Relaxed),
            )
        })
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rt = self.runtime();
        self.encode_counters(&mut encoder)?;
        self.encode_gauges(rt.as_deref(), &mut encoder)?;
        self.encode_nats(&mut encoder)
    }
}

impl RuntimeCollector {
    /// [`RUNTIME_COUNTERS`], then the buffered-body refusals.
    fn encode_counters(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (counter, v) in RUNTIME_COUNTERS.iter().zip(self.totals()) {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(counter.name, counter.help, None, c.metric_type())?)?;
        }
        let (_, _, buffered_refusals) = self.generations().budget();
        let c = ConstCounter::new(buffered_refusals);
        c.encode(encoder.encode_descriptor(
            "weft_buffered_body_refusals",
            "Buffered bodies refused (503 for a request, 502 for a response) because holding them would pass runtime.max_buffered_bytes_total",
            None,
            c.metric_type(),
        )?)
    }

    /// Arena, queue, async-call and buffered-body gauges of the current runtime `rt`.
    fn encode_gauges(&self, rt: Option<&Runtime>, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (in_use, total) = rt.map(Runtime::arena_usage).unwrap_or_default();
        let (outs_in_use, outs) = rt.map(Runtime::out_slot_usage).unwrap_or_default();
        let buffers_in_use: u64 = rt
            .map(|rt| rt.buffer_usage().iter().map(|c| c.1).sum())
            .unwrap_or_default();
        let (pending, orphaned) = self.async_gauges();
        let (buffered, buffered_limit, _) = self.generations().budget();
        let gauges = [
            ("weft_arena_slots", "Request slots in the arena", u64::from(total)),
            (
                "weft_arena_slots_in_use",
                "Request slots leased now (requests with plugins in flight, or waiting for their log phase)",
                in_use,
            ),
            (
                "weft_arena_out_slots",
                "Out slots in the arena (where plugin calls write their output)",
                u64::from(outs),
            ),
            (
                "weft_arena_out_slots_in_use",
                "Out slots leased now (plugin calls in progress, local replies not yet sent)",
                outs_in_use,
            ),
            (
                "weft_arena_buffer_slots_in_use",
                "Buffer-class slots leased now (output of buffered body calls over half a slot)",
                buffers_in_use,
            ),
            (
                "weft_arena_slots_high_water",
                "Most slots in use seen since start (sampled every 10 ms and at each scrape)",
                self.high_water.load(Ordering::Relaxed).max(in_use),
            ),
            (
                "weft_log_queue_depth",
                "Finished requests waiting for their log phase",
                rt.map_or(0, |rt| rt.log_queue_len() as u64),
            ),
            (
                "weft_plugin_pending_calls",
                "Plugin calls the proxy is waiting for now (Pending answers and worker jobs)",
                pending,
            ),
            (
                "weft_plugin_orphaned_slots",
                "Arena slots held by cancelled calls whose plugin has not completed them yet",
                orphaned,
            ),
            (
                "weft_worker_rings",
                "Worker rings whose worker has not left yet (process-wide)",
                weft_runtime::workers::attached_rings() as u64,
            ),
            (
                "weft_arena_mapped_bytes",
                "Bytes of arena mappings in the process: the current arena, and replaced ones kept mapped while cancelled calls hold slots in them",
                weft_runtime::arena::mapped_bytes(),
            ),
            (
                "weft_arena_released_bytes",
                "Bytes of weft_arena_mapped_bytes given back to the OS (pages of replaced arenas outside the slots still held)",
                weft_runtime::arena::released_bytes(),
            ),
            (
                "weft_buffered_body_bytes",
                "Bytes held now by buffered bodies (collected bodies, joined copies, output buffers outside the arena)",
                buffered,
            ),
            (
                "weft_buffered_body_bytes_limit",
                "runtime.max_buffered_bytes_total",
                buffered_limit,
            ),
            (
                "weft_ready",
                "1 when listening with plugins loaded and not draining",
                u64::from(self.ready.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }

    /// The NATS connection's gauges, when there is one.
    fn encode_nats(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nats = self.nats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(nats) = nats {
            let nats_gauges = [
                (
                    "weft_nats_connected",
                    "1 while the NATS connection of type: nats instances is up",
                    i64::from(nats.is_connected()),
                ),
                (
                    "weft_nats_pending_replies",
                    "Remote phase calls waiting for a worker's reply",
                    nats.pending_replies() as i64,
                ),
                (
                    "weft_nats_thread_connections",
                    "Serving threads' own NATS connections (nats.per_thread_connections), besides the shared one",
                    nats.thread_connections() as i64,
                ),
            ];
            for (name, help, v) in nats_gauges {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_gauge_sums_every_threads_moves() {
        use prometheus_client::metrics::gauge::Atomic;
        let g = SpreadGauge::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        g.inc();
                    }
                    for _ in 0..400 {
                        g.dec();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(g.get(), 4 * 600);
        g.set(7);
        assert_eq!(g.get(), 7);
        assert_eq!(g.inner().get(), 7);
    }

    fn line(m: &Metrics, prefix: &str) -> String {
        let (text, _) = m.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
            .to_owned()
    }

    fn opts() -> weft_runtime::RuntimeOptions {
        weft_runtime::RuntimeOptions {
            slot_count: 4,
            slot_size: 4096,
            log_queue: 1,
            ..weft_runtime::RuntimeOptions::default()
        }
    }

    #[test]
    fn runtime_counters_survive_reloads() {
        let m = Metrics::new();
        let first = Runtime::new(opts()).unwrap();
        first.stats.plugin_failures.fetch_add(3, Ordering::Relaxed);
        m.set_runtime(Some(first.clone()));
        let total = |m: &Metrics| line(m, "weft_plugin_failures_total ");
        assert_eq!(total(&m), "3");
        // A runtime built afresh (not replacing the first): the old one still drains and counts.
        let second = Runtime::new(opts()).unwrap();
        second.stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        m.set_runtime(Some(second.clone()));
        first.stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        assert_eq!(total(&m), "5");
        // Gone: its final count stays in the total, once.
        drop(first);
        assert_eq!(total(&m), "5");
        assert_eq!(total(&m), "5");
        // A runtime replacing the second shares its statistics: counted once, carried on.
        let third = Runtime::replacing(&second, opts()).unwrap();
        third.stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        m.set_runtime(Some(third.clone()));
        drop(second);
        assert_eq!(total(&m), "6");
        assert_eq!(line(&m, "weft_arena_slots "), "4");
        assert!(line(&m, "weft_arena_mapped_bytes ").parse::<u64>().unwrap() >= 4 * 4096);
    }

    #[test]
    fn async_counters_and_gauges_are_reported() {
        let m = Metrics::new();
        let first = Runtime::new(opts()).unwrap();
        m.set_runtime(Some(first.clone()));
        first.stats.phase_timeouts.fetch_add(2, Ordering::Relaxed);
        first.stats.busy_rejections.fetch_add(3, Ordering::Relaxed);
        first.stats.late_completions.fetch_add(1, Ordering::Relaxed);
        first.stats.worker_jobs.fetch_add(7, Ordering::Relaxed);
        first.stats.output_bytes_shared.fetch_add(5000, Ordering::Relaxed);
        first.stats.output_bytes_copied.fetch_add(20, Ordering::Relaxed);
        first.stats.plugin_stalls.fetch_add(2, Ordering::Relaxed);
        first.stats.orphaned_slots.fetch_add(1, Ordering::Relaxed);
        first.stats.pending_calls.fetch_add(4, Ordering::Relaxed);
        // A reload to a runtime built afresh: the draining runtime's gauges still count, its
        // counters stay in the totals.
        let second = Runtime::new(opts()).unwrap();
        second.stats.pending_calls.fetch_add(1, Ordering::Relaxed);
        second.stats.phase_timeouts.fetch_add(1, Ordering::Relaxed);
        second.stats.plugin_stalls.fetch_add(1, Ordering::Relaxed);
        m.set_runtime(Some(second.clone()));
        let (text, _) = m.encode();
        for line in [
            "weft_plugin_output_bytes_shared_total 5000",
            "weft_plugin_output_bytes_copied_total 20",
            "weft_plugin_stalls_total 3",
            "weft_plugin_timeouts_total 3",
            "weft_plugin_busy_rejections_total 3",
            "weft_plugin_late_completions_total 1",
            "weft_worker_jobs_total 7",
            "weft_plugin_orphaned_slots 1",
            "weft_plugin_pending_calls 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // The first runtime is gone, but a cancelled call still holds its statistics (as an
        // orphan does): its orphaned slot stays visible.
        let held = Arc::clone(&first.stats);
        drop(first);
        let (text, _) = m.encode();
        assert!(text.lines().any(|l| l == "weft_plugin_timeouts_total 3"), "{text}");
        assert!(text.lines().any(|l| l == "weft_plugin_orphaned_slots 1"), "{text}");
        held.orphaned_slots.fetch_sub(1, Ordering::Relaxed);
        drop(held);
        let (text, _) = m.encode();
        assert!(text.lines().any(|l| l == "weft_plugin_timeouts_total 3"), "{text}");
        assert!(text.lines().any(|l| l == "weft_plugin_pending_calls 1"), "{text}");
        assert!(text.lines().any(|l| l == "weft_plugin_orphaned_slots 0"), "{text}");
    }

    #[test]
    fn buffered_body_budget_is_reported() {
        let m = Metrics::new();
        let rt = Runtime::new(weft_runtime::RuntimeOptions {
            max_buffered_bytes_total: 1000,
            ..opts()
        })
        .unwrap();
        m.set_runtime(Some(rt.clone()));
        let held = rt.buffered_budget().try_charge(600).unwrap();
        assert!(rt.buffered_budget().try_charge(600).is_none());
        assert_eq!(line(&m, "weft_buffered_body_bytes "), "600");
        assert_eq!(line(&m, "weft_buffered_body_bytes_limit "), "1000");
        assert_eq!(line(&m, "weft_buffered_body_refusals_total "), "1");
        // Replaced by a runtime with a budget of its own: the old one's charge and refusals
        // stay counted while it is held.
        m.set_runtime(Some(Runtime::new(opts()).unwrap()));
        drop(rt);
        assert_eq!(line(&m, "weft_buffered_body_bytes "), "600");
        drop(held);
        assert_eq!(line(&m, "weft_buffered_body_bytes "), "0");
        assert_eq!(line(&m, "weft_buffered_body_refusals_total "), "1");
    }

    #[test]
    fn histogram_buckets_and_sum() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 1.0065).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
    }

    struct Fake;
    impl RemoteInstance for Fake {
        fn phases(&self) -> u32 {
            0b11
        }
        fn call<'a>(&'a self, phase: WeftPhase, _: u64, _: &'a [u8], _: Duration) -> RemoteCall<'a> {
            Box::pin(async move {
                match phase {
                    WeftPhase::RequestHeaders => Ok(bytes::Bytes::new()),
                    _ => Err(weft_runtime::remote::RemoteCallError::new(RemoteErrorKind::Timeout, "")),
                }
            })
        }
        fn log(&self, _: u64, _: &[u8]) {}
        fn release(&self, _: u64) {}
    }

    #[test]
    fn plugin_timer_observes_by_phase() {
        let m = Metrics::new();
        let timer = m.plugin_timer("stamp");
        timer.record(WeftPhase::RequestHeaders, Duration::from_micros(3));
        timer.record(WeftPhase::RequestHeaders, Duration::from_micros(5));
        timer.record(WeftPhase::Log, Duration::from_millis(2));
        let (text, _) = m.encode();
        for line in [
            r#"weft_plugin_phase_duration_seconds_count{plugin="stamp",phase="request_headers"} 2"#,
            r#"weft_plugin_phase_duration_seconds_count{plugin="stamp",phase="log"} 1"#,
            r#"weft_plugin_phase_duration_seconds_count{plugin="stamp",phase="response_headers"} 0"#,
            r#"weft_plugin_phase_duration_seconds_sum{plugin="stamp",phase="request_headers"} 0.000008"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn remote_calls_are_timed_and_failures_counted() {
        let m = Metrics::new();
        let timed = m.timed_remote("auth", Arc::new(Fake));
        assert_eq!(timed.phases(), 0b11);
        let d = Duration::from_millis(10);
        assert!(timed.call(WeftPhase::RequestHeaders, 1, &[], d).await.is_ok());
        assert!(timed.call(WeftPhase::ResponseHeaders, 1, &[], d).await.is_err());
        let (text, _) = m.encode();
        for line in [
            r#"weft_remote_phase_duration_seconds_count{plugin="auth",phase="request_headers"} 1"#,
            r#"weft_remote_phase_duration_seconds_count{plugin="auth",phase="response_headers"} 1"#,
            r#"weft_remote_errors_total{plugin="auth",kind="timeout"} 1"#,
            r#"weft_remote_errors_total{plugin="auth",kind="unavailable"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    /// The request duration is read from the time-stamp counter (`quanta`): it agrees with the OS
    /// clock over the same interval (a counter read unscaled, or a wrong calibration, would not).
    #[test]
    fn request_durations_agree_with_the_os_clock() {
        let r = Metrics::new().route("api");
        let os = std::time::Instant::now();
        let start = quanta::Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        r.observe(StatusCode::OK, start);
        let os = os.elapsed().as_secs_f64();
        let (sum, count, _) = r.duration.snapshot();
        assert_eq!(count, 1);
        // The OS interval holds the counter's (a few hundred ns longer); slack for the counter's
        // calibration and a busy machine's long sleep: 5 ms and 5 %.
        assert!(
            sum >= 0.029 && (os - sum).abs() < 0.005 + os * 0.05,
            "counter {sum} s, OS clock {os} s"
        );
    }

    #[test]
    fn route_counters_move_and_encode() {
        let m = Metrics::new();
        let r = m.route("api");
        let start = quanta::Instant::now();
        r.observe(StatusCode::OK, start);
        r.observe(StatusCode::OK, start);
        r.observe(StatusCode::SERVICE_UNAVAILABLE, start);
        r.request_phase(Duration::from_micros(3));
        r.upstream_timeout();
        // Handles of the same route share their series (as after a reload).
        m.route("api").observe(StatusCode::NOT_FOUND, start);
        m.no_route().observe(StatusCode::NOT_FOUND, start);
        m.reload_result(true);
        m.reload_result(false);
        m.route("old").observe(StatusCode::OK, start);
        m.forget_routes_except(&["api".to_owned()]);
        let (text, ctype) = m.encode();
        assert!(!text.contains(r#"route="old""#), "{text}");
        assert!(ctype.starts_with("text/plain; version=0.0.4"));
        for line in [
            r#"weft_requests_total{route="api",status="2xx"} 2"#,
            r#"weft_requests_total{route="api",status="5xx"} 1"#,
            r#"weft_requests_total{route="api",status="4xx"} 1"#,
            r#"weft_requests_total{route="<none>",status="4xx"} 1"#,
            r#"weft_request_duration_seconds_count{route="api"} 4"#,
            r#"weft_request_duration_seconds_bucket{route="api",le="+Inf"} 4"#,
            r#"weft_chain_phase_duration_seconds_count{route="api",phase="request_headers"} 1"#,
            r#"weft_chain_phase_duration_seconds_bucket{route="api",phase="request_headers",le="5e-06"} 1"#,
            r#"weft_upstream_errors_total{route="api",kind="timeout"} 1"#,
            r#"weft_config_reloads_total{result="ok"} 1"#,
            r#"weft_config_reloads_total{result="error"} 1"#,
            "weft_config_generation 2",
            "weft_arena_exhausted_total 0",
            "weft_plugin_timeouts_total 0",
            "weft_plugin_late_completions_total 0",
            "weft_plugin_orphaned_slots 0",
            "weft_plugin_pending_calls 0",
            "weft_arena_slots_in_use 0",
            "weft_arena_out_slots_in_use 0",
            "weft_arena_buffer_slots_in_use 0",
            "weft_ready 0",
            "weft_log_queue_depth 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(
            text.contains("# TYPE weft_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
