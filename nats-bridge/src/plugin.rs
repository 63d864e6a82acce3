//! A remote plugin instance: phase calls as NATS request/reply with worker affinity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::StatusCode;
use bytes::Bytes;
use weft_abi::{WeftPhase, WeftResult};

use crate::transport::{NatsTransport, Shared};
use crate::wire;

/// NATS header names of the protocol (see `schema/weft_wire.fbs`).
pub const HEADER_PHASE: &str = "Weft-Phase";
/// The time left for the call in milliseconds when it was sent (a duration, not a time of day:
/// the worker's clock need not agree with the host's).
pub const HEADER_TIMEOUT: &str = "Weft-Timeout-Ms";
pub const HEADER_HOST: &str = "Weft-Host";
pub const HEADER_WORKER: &str = "Weft-Worker";
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Per-plugin failure settings.
#[derive(Clone, Debug)]
pub struct NatsPluginOptions {
    /// Time allowed for one phase call when the caller gives no deadline: encoding, the wire, the
    /// worker's queue and handler, and the reply (default 200 ms).
    pub deadline: Duration,
    /// Calls of this plugin in flight at once; beyond it calls fail at once with
    /// [`RemoteError::Overloaded`] (default 1024).
    pub max_in_flight: usize,
}

impl Default for NatsPluginOptions {
    fn default() -> Self {
        NatsPluginOptions {
            deadline: Duration::from_millis(200),
            max_in_flight: 1024,
        }
    }
}

/// Why a remote phase call failed. The engine applies the instance's failure policy to all of
/// them (fail closed: 500, or 503 for `Overloaded`/`Disconnected`/`NoResponders`; fail open:
/// the request continues unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no worker is serving {subject}")]
    NoResponders { subject: String },
    #[error("no reply within the deadline")]
    Timeout,
    #[error("more than {0} calls in flight")]
    Overloaded(usize),
    #[error("malformed request view")]
    BadView,
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error("malformed reply from worker: {0}")]
    BadReply(String),
    #[error("worker returned {result:?}: {message}")]
    Plugin { result: WeftResult, message: String },
}

/// Subject token of a phase (`weft.<plugin>.<token>`); the Go worker uses the same names.
pub fn phase_token(phase: WeftPhase) -> &'static str {
    match phase {
        WeftPhase::RequestHeaders => "request_headers",
        WeftPhase::RequestBody => "request_body",
        WeftPhase::ResponseHeaders => "response_headers",
        WeftPhase::ResponseBody => "response_body",
        WeftPhase::Log => "log",
        WeftPhase::WebSocketOpen => "ws_open",
        WeftPhase::WebSocketMessage => "ws_message",
        WeftPhase::WebSocketClose => "ws_close",
    }
}

struct Inner {
    shared: Arc<Shared>,
    name: String,
    opts: NatsPluginOptions,
    in_flight: AtomicUsize,
    /// request id -> the worker that answered the request's first phase.
    affinity: Mutex<HashMap<u64, Arc<str>>>,
}

/// A remote plugin instance (`weft.<name>.<phase>`). Cheap to clone; share one per instance.
///
/// The engine hands [`call`](Self::call) the view bytes of the request's slot and applies the
/// returned mutation records with `weft_runtime::mutation::decode`, exactly as for an
/// in-process call. The first phase of a request goes to the plugin's queue subject (any worker);
/// later phases go to the worker that answered it (`weft.<name>.w.<worker>.<phase>`), so Go
/// per-request state works. The log phase ([`log_detached`](Self::log_detached)) forgets the
/// request; a request that ends without a log phase must be [`release`](Self::release)d.
#[derive(Clone)]
pub struct NatsPlugin {
    inner: Arc<Inner>,
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `id` (a worker-supplied `Weft-Worker` header) may go into a subject: 1 to 64 ASCII
/// letters, digits, `-` or `_` (a `.`, `*`, `>` or space would change the subject's meaning).
pub fn valid_worker_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl NatsTransport {
    /// A handle for the remote plugin instance `name` (subjects `weft.<name>.<phase>`).
    pub fn plugin(self: &Arc<Self>, name: &str, opts: NatsPluginOptions) -> NatsPlugin {
        NatsPlugin::new(Arc::clone(&self.shared), name, opts)
    }
}

impl NatsPlugin {
    pub(crate) fn new(shared: Arc<Shared>, name: &str, opts: NatsPluginOptions) -> NatsPlugin {
        NatsPlugin {
            inner: Arc::new(Inner {
                shared,
                name: name.to_owned(),
                opts,
                in_flight: AtomicUsize::new(0),
                affinity: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Requests with a remembered worker (released by the log phase or [`release`](Self::release)).
    pub fn affinity_len(&self) -> usize {
        self.inner.affinity.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets the worker of a finished request.
    pub fn release(&self, request_id: u64) {
        self.inner
            .affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request_id);
    }

    /// The worker a request is pinned to, if any.
    pub fn worker_of(&self, request_id: u64) -> Option<Arc<str>> {
        self.inner
            .affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request_id)
            .cloned()
    }

    fn subject(&self, request_id: u64, phase: WeftPhase) -> String {
        match self.worker_of(request_id) {
            Some(w) => format!("weft.{}.w.{}.{}", self.inner.name, w, phase_token(phase)),
            None => format!("weft.{}.{}", self.inner.name, phase_token(phase)),
        }
    }

    fn headers(&self, phase: WeftPhase, deadline: Instant, traceparent: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_PHASE, (phase as u32).to_string().as_str());
        let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1);
        h.insert(HEADER_TIMEOUT, left.to_string().as_str());
        h.insert(HEADER_HOST, self.inner.shared.host_id.as_str());
        if let Some(tp) = traceparent {
            h.insert(HEADER_TRACEPARENT, tp);
        }
        h
    }

    /// Runs `phase` of the request whose view is `view` on a worker and returns the mutation
    /// records it wrote (validate them with `weft_runtime::mutation::decode`). `deadline`
    /// (default: now + the plugin's deadline) bounds the whole call.
    pub async fn call(&self, phase: WeftPhase, view: &[u8], deadline: Option<Instant>) -> Result<Bytes, RemoteError> {
        self.call_traced(phase, view, deadline, None).await
    }

    /// [`call`](Self::call) passing a W3C `traceparent` through to the worker.
    pub async fn call_traced(
        &self,
        phase: WeftPhase,
        view: &[u8],
        deadline: Option<Instant>,
        traceparent: Option<&str>,
    ) -> Result<Bytes, RemoteError> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.opts.deadline);
        let shared = &self.inner.shared;
        let lane = shared.lane();
        if !lane.connected() {
            return Err(RemoteError::Disconnected);
        }
        let max = self.inner.opts.max_in_flight;
        if self.inner.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
            self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(RemoteError::Overloaded(max));
        }
        let _in_flight = InFlight(&self.inner.in_flight);
        let (payload, request_id) = wire::encode_request(view, phase as u32).map_err(|_| RemoteError::BadView)?;
        let subject = self.subject(request_id, phase);
        let headers = self.headers(phase, deadline, traceparent);
        let (guard, rx) = lane.mux.register();
        let reply = format!("{}.{}", lane.mux.prefix, guard.token);
        let exchange = async {
            lane.client
                .publish_with_reply_and_headers(subject.clone(), reply, headers, payload)
                .await
                .map_err(|e| RemoteError::Publish(e.to_string()))?;
            rx.await.map_err(|_| RemoteError::Disconnected)
        };
        let msg = match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(RemoteError::Timeout),
        };
        drop(guard);
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            // For a pinned request this means its worker is gone: the request fails, and is
            // forgotten so nothing else is sent to the dead worker.
            self.release(request_id);
            return Err(RemoteError::NoResponders { subject });
        }
        let resp = wire::decode_response(&msg.payload).map_err(|e| RemoteError::BadReply(e.to_string()))?;
        if (resp.request_id, resp.phase) != (request_id, phase as u32) {
            // A reply captured from another request (or a confused worker): never used.
            return Err(RemoteError::BadReply(format!(
                "reply answers request {} phase {}, not request {request_id} phase {} (worker said: {:?})",
                resp.request_id,
                resp.phase,
                phase as u32,
                resp.error.chars().take(200).collect::<String>()
            )));
        }
        if let Some(w) = msg.headers.as_ref().and_then(|h| h.get(HEADER_WORKER)) {
            // Goes into later subjects: only a plain token (no `.`, `*`, `>` or spaces).
            if valid_worker_id(w.as_str()) {
                let mut aff = self.inner.affinity.lock().unwrap_or_else(|e| e.into_inner());
                aff.entry(request_id).or_insert_with(|| Arc::from(w.as_str()));
            } else {
                tracing::warn!(plugin = %self.inner.name, "ignoring a reply's invalid {HEADER_WORKER} header");
            }
        }
        if resp.result != WeftResult::Ok as u32 {
            return Err(RemoteError::Plugin {
                result: WeftResult::from_raw(resp.result),
                message: resp.error,
            });
        }
        Ok(resp.mutations)
    }

    /// The log phase, without waiting for the publish: encodes the request and picks the worker
    /// on this thread, forgets the request, and publishes from a task on the transport's runtime
    /// (so it never blocks the caller, e.g. the engine's log thread).
    pub fn log_detached(&self, view: &[u8], traceparent: Option<&str>) -> Result<(), RemoteError> {
        let shared = &self.inner.shared;
        let (payload, request_id) =
            wire::encode_request(view, WeftPhase::Log as u32).map_err(|_| RemoteError::BadView)?;
        let subject = self.subject(request_id, WeftPhase::Log);
        self.release(request_id);
        if !shared.connected() {
            return Err(RemoteError::Disconnected);
        }
        let headers = self.headers(WeftPhase::Log, Instant::now() + self.inner.opts.deadline, traceparent);
        let client = shared.main.client.clone();
        shared.handle.spawn(async move {
            if let Err(e) = client.publish_with_headers(subject, headers, payload).await {
                tracing::debug!("log publish failed: {e}");
            }
        });
        Ok(())
    }
}
