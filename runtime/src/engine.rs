//! The phase engine: runs a route's plugin chain over one request.
//!
//! Per request, one [`Exchange`] owns one arena slot. The request head is laid out in the slot
//! before the first plugin call and again only after a plugin changed it; each plugin is called
//! synchronously on the calling thread (a cgo call costs tens of nanoseconds, a thread hand-off
//! tens of microseconds) and its mutation batch is validated and applied before the next plugin
//! sees the request. Dropping the exchange hands the slot to the log thread when the chain has
//! log-phase plugins, so logging happens after the response and off the request path.
//!
//! Remote instances ([`crate::remote::RemotePlugin`]) are awaited instead: the phase methods are
//! `async`, and on a chain without remote instances the future completes on its first poll
//! without ever yielding (the sync [`Exchange::request_headers`] polls it once with a no-op
//! waker). A remote reply goes through the same `mutation::decode` and apply path as an
//! in-process batch.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::abi::*;
use crate::arena::SlotLease;
use crate::mutation::{self, MutationError};
use crate::plugin::Library;
use crate::remote::{RemoteCallError, RemoteErrorKind, RemotePlugin};
use crate::sync::stat::{AtomicU64, Ordering};
use crate::view::{self, RequestHead, ViewIdentity};
use crate::{Runtime, RuntimeStats};

/// How an instance is reached.
pub(crate) enum Transport {
    /// In-process: the library's `on_phase`, called inline.
    Ffi(Arc<Library>),
    /// Elsewhere (e.g. NATS workers), awaited; each call bounded by the deadline.
    Remote(Arc<dyn RemotePlugin>, Duration),
}

/// A configured plugin instance.
pub(crate) struct Instance {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) transport: Transport,
    pub(crate) phases: u32,
    pub(crate) fail_open: bool,
}

impl Instance {
    fn remote(&self) -> Option<&Arc<dyn RemotePlugin>> {
        match &self.transport {
            Transport::Remote(p, _) => Some(p),
            Transport::Ffi(_) => None,
        }
    }
}

/// A route's middleware chain. Cheap to clone.
#[derive(Clone)]
pub struct Chain {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) instances: Arc<[Arc<Instance>]>,
    /// Union of the instances' phases: a phase no instance declared costs one bit test.
    pub(crate) phases: u32,
    /// Whether any instance is remote (they are released when the exchange ends).
    pub(crate) has_remote: bool,
}

/// Every slot in the arena is in use: answer 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What the caller does next.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Send this response instead (a plugin's local reply, or the failure response of a
    /// fail-closed plugin).
    Respond(Response<Bytes>),
}

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.phases == 0
    }

    /// Names of the instances, in order.
    pub fn names(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.name.to_string()).collect()
    }

    /// Begins a request. `Ok(None)` when no instance on the chain handles any phase.
    pub fn start(&self, client: SocketAddr, scheme: &'static str) -> Result<Option<Exchange>, Busy> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(lease) = self.rt.arena.acquire() else {
            self.rt.stats.arena_exhausted.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        };
        let ident = ViewIdentity {
            request_id: NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed),
            slot: lease.index(),
            generation: lease.generation(),
            client,
            scheme,
        };
        Ok(Some(Exchange {
            chain: self.clone(),
            lease: Some(lease),
            ident,
            request_end: 0,
            view_end: 0,
        }))
    }
}

/// One request's passage through a chain. Dropping it queues the log phase (when the chain has
/// one) and releases the arena slot.
pub struct Exchange {
    chain: Chain,
    lease: Option<SlotLease>,
    ident: ViewIdentity,
    /// End of the request section of the view; 0 until encoded.
    request_end: usize,
    /// End of the whole view (request plus response section).
    view_end: usize,
}

enum CallError {
    Code(WeftResult),
    Mutation(MutationError),
    Remote(RemoteCallError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Code(WeftResult::Panic) => f.write_str("handler panicked"),
            CallError::Code(c) => write!(f, "plugin returned {c:?}"),
            CallError::Mutation(e) => write!(f, "invalid mutation batch rejected: {e}"),
            CallError::Remote(e) => write!(f, "{e}"),
        }
    }
}

/// The answer of a fail-closed instance: 503 (with `retry-after`) when the remote plugin is
/// unreachable or overloaded, 504 when it timed out, 500 otherwise.
fn call_failure_response(err: &CallError) -> Response<Bytes> {
    match err {
        CallError::Remote(e) => match e.kind {
            RemoteErrorKind::Unavailable | RemoteErrorKind::Overloaded => {
                let mut resp = failure_response(StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable\n");
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                resp
            }
            RemoteErrorKind::Timeout => failure_response(StatusCode::GATEWAY_TIMEOUT, "plugin timed out\n"),
            _ => failure_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure\n"),
        },
        _ => failure_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure\n"),
    }
}

/// Drives a phase future on this thread. On a chain without remote instances it is ready on the
/// first poll (no allocation, no parking); otherwise the thread parks until the reply arrives.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn failure_response(status: StatusCode, reason: &'static str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(reason.as_bytes()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp
}

/// The request-headers phase loop, written once for the inline path (in-process instances only:
/// no future, nothing to poll) and the async path (remote instances are awaited). `$call` is the
/// call of instance `$inst`.
macro_rules! request_headers_phase {
    ($self:ident, $parts:ident, |$inst:ident| $call:expr) => {{
        const PHASE: WeftPhase = WeftPhase::RequestHeaders;
        let too_large = |e: view::ViewTooLarge, id: u64| {
            tracing::warn!(request_id = id, "{e}; answering 431");
            Flow::Respond(failure_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            ))
        };
        // Encoded even when no instance handles this phase: the response and log phases show it.
        if let Err(e) = $self.encode_request($parts, PHASE) {
            return too_large(e, $self.ident.request_id);
        }
        if $self.chain.phases & PHASE.mask() == 0 {
            return Flow::Continue;
        }
        // The view is laid out again only when a plugin changed the request and someone will
        // still read it: the next plugin, or the response and log phases.
        let mut stale = false;
        let instances = Arc::clone(&$self.chain.instances);
        for $inst in instances.iter().filter(|i| i.phases & PHASE.mask() != 0) {
            if stale {
                if let Err(e) = $self.encode_request($parts, PHASE) {
                    return too_large(e, $self.ident.request_id);
                }
                stale = false;
            }
            match $call {
                Ok(mut batch) => {
                    if let Some(reply) = batch.take_reply() {
                        let (rparts, body) = reply.into_response().into_parts();
                        // The log phase sees the local reply as the response.
                        let _ = $self.encode_response(&rparts, WeftPhase::Log);
                        return Flow::Respond(Response::from_parts(rparts, body));
                    }
                    if !batch.is_empty() {
                        batch.apply_to_request($parts);
                        stale = true;
                    }
                }
                Err(err) => {
                    $self.note_failure($inst, PHASE, &err);
                    if !$inst.fail_open {
                        return Flow::Respond(call_failure_response(&err));
                    }
                }
            }
        }
        let later = WeftPhase::ResponseHeaders.mask() | WeftPhase::Log.mask();
        if stale && $self.chain.phases & later != 0 {
            if let Err(e) = $self.encode_request($parts, PHASE) {
                return too_large(e, $self.ident.request_id);
            }
        }
        Flow::Continue
    }};
}

/// The response-headers phase loop; see [`request_headers_phase`].
macro_rules! response_headers_phase {
    ($self:ident, $parts:ident, |$inst:ident| $call:expr) => {{
        const PHASE: WeftPhase = WeftPhase::ResponseHeaders;
        if $self.request_end == 0 {
            // request_headers was never called; nothing to show.
            return Flow::Continue;
        }
        let wants_view = $self.chain.phases & (PHASE.mask() | WeftPhase::Log.mask()) != 0;
        if !wants_view {
            return Flow::Continue;
        }
        if let Err(e) = $self.encode_response($parts, PHASE) {
            tracing::warn!(request_id = $self.ident.request_id, "{e}; answering 502");
            return Flow::Respond(failure_response(
                StatusCode::BAD_GATEWAY,
                "response header fields too large\n",
            ));
        }
        if $self.chain.phases & PHASE.mask() == 0 {
            return Flow::Continue;
        }
        let instances = Arc::clone(&$self.chain.instances);
        for $inst in instances.iter().rev().filter(|i| i.phases & PHASE.mask() != 0) {
            match $call {
                Ok(mut batch) => {
                    if let Some(reply) = batch.take_reply() {
                        let (rparts, body) = reply.into_response().into_parts();
                        let _ = $self.encode_response(&rparts, WeftPhase::Log);
                        return Flow::Respond(Response::from_parts(rparts, body));
                    }
                    if !batch.is_empty() {
                        batch.apply_to_response($parts);
                        if let Err(e) = $self.encode_response($parts, PHASE) {
                            tracing::warn!(plugin = %$inst.name, "{e}; answering 502");
                            return Flow::Respond(failure_response(
                                StatusCode::BAD_GATEWAY,
                                "response header fields too large\n",
                            ));
                        }
                    }
                }
                Err(err) => {
                    $self.note_failure($inst, PHASE, &err);
                    if !$inst.fail_open {
                        return Flow::Respond(call_failure_response(&err));
                    }
                }
            }
        }
        Flow::Continue
    }};
}

impl Exchange {
    pub fn request_id(&self) -> u64 {
        self.ident.request_id
    }

    fn lease(&mut self) -> &mut SlotLease {
        // Only `Drop` takes the lease out.
        self.lease.as_mut().expect("exchange lease taken before drop")
    }

    fn encode_request(&mut self, parts: &http::request::Parts, phase: WeftPhase) -> Result<(), view::ViewTooLarge> {
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            headers: &parts.headers,
        };
        let ident = self.ident;
        let end = view::encode_request(self.lease().bytes_mut(), &ident, phase as u32, &head)?;
        self.request_end = end;
        self.view_end = end;
        Ok(())
    }

    fn encode_response(&mut self, parts: &http::response::Parts, phase: WeftPhase) -> Result<(), view::ViewTooLarge> {
        let end = self.request_end;
        self.view_end = view::encode_response(
            self.lease().bytes_mut(),
            end,
            phase as u32,
            parts.status.as_u16(),
            &parts.headers,
        )?;
        Ok(())
    }

    /// Calls one instance for one phase over the view already in the slot; returns its batch.
    fn call(&mut self, inst: &Instance, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        let view_end = self.view_end;
        let slot = self.lease().bytes_mut();
        let out_off = view_end.next_multiple_of(8);
        let cap = slot.len().saturating_sub(out_off);
        let base = slot.as_mut_ptr();
        // SAFETY: out_off <= slot.len() (the view fit, and the slot size is a multiple of 64).
        let mut out = WeftBuf {
            ptr: unsafe { base.add(out_off) },
            cap: cap as u32,
            len: 0,
        };
        // SAFETY: the view is a complete WeftRequestView in host memory valid for the call, and
        // `out` points to `cap` writable bytes of the same slot, after the view.
        let Transport::Ffi(lib) = &inst.transport else {
            unreachable!("call() is only used for in-process instances")
        };
        let rc = unsafe { (lib.on_phase)(inst.id, phase as u32, base.cast::<WeftRequestView>(), &mut out) };
        let rc = WeftResult::from_raw(rc);
        if rc != WeftResult::Ok {
            return Err(CallError::Code(rc));
        }
        let slot = self.lease().bytes_mut();
        mutation::decode(&slot[out_off..], out.len as usize, phase).map_err(CallError::Mutation)
    }

    /// Calls one instance, in-process (inline, never yields) or remote (awaited).
    async fn call_any(&mut self, inst: &Instance, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        match &inst.transport {
            Transport::Ffi(_) => self.call(inst, phase),
            Transport::Remote(plugin, deadline) => {
                let view_end = self.view_end;
                let request_id = self.ident.request_id;
                let view: &[u8] = &self.lease().bytes_mut()[..view_end];
                let bytes = plugin
                    .call(phase, request_id, view, *deadline)
                    .await
                    .map_err(CallError::Remote)?;
                mutation::decode(&bytes, bytes.len(), phase).map_err(CallError::Mutation)
            }
        }
    }

    fn note_failure(&self, inst: &Instance, phase: WeftPhase, err: &CallError) {
        let stats: &RuntimeStats = &self.chain.rt.stats;
        stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        if inst.fail_open && phase != WeftPhase::Log {
            stats.fail_open_passes.fetch_add(1, Ordering::Relaxed);
        }
        let policy = if inst.fail_open {
            "fail-open: request continues unchanged"
        } else {
            "fail-closed"
        };
        tracing::error!(plugin = %inst.name, phase = ?phase, request_id = self.ident.request_id, "{err}; {policy}");
    }

    /// Runs the request-headers phase of every instance that declared it, in chain order, on
    /// this thread. In-process instances run inline; with remote instances on the chain the
    /// thread blocks for their replies (and must be inside the transport's async runtime), so
    /// async callers use [`request_headers_async`](Self::request_headers_async).
    pub fn request_headers(&mut self, parts: &mut http::request::Parts) -> Flow {
        if self.chain.has_remote {
            return block_on(self.request_headers_async(parts));
        }
        request_headers_phase!(self, parts, |inst| self.call(inst, PHASE))
    }

    /// Runs the response-headers phase on this thread; see [`request_headers`](Self::request_headers).
    pub fn response_headers(&mut self, parts: &mut http::response::Parts) -> Flow {
        if self.chain.has_remote {
            return block_on(self.response_headers_async(parts));
        }
        response_headers_phase!(self, parts, |inst| self.call(inst, PHASE))
    }

    /// Runs the request-headers phase of every instance that declared it, in chain order.
    /// In-process instances are called inline; on a chain without remote instances this is the
    /// sync path, ready at the first poll.
    pub async fn request_headers_async(&mut self, parts: &mut http::request::Parts) -> Flow {
        if !self.chain.has_remote {
            return self.request_headers(parts);
        }
        request_headers_phase!(self, parts, |inst| self.call_any(inst, PHASE).await)
    }

    /// Runs the response-headers phase of every instance that declared it, in reverse chain order
    /// (the first plugin on the way in is the last on the way out).
    pub async fn response_headers_async(&mut self, parts: &mut http::response::Parts) -> Flow {
        if !self.chain.has_remote {
            return self.response_headers(parts);
        }
        response_headers_phase!(self, parts, |inst| self.call_any(inst, PHASE).await)
    }

    /// Runs the log phase now, on this thread. Used by the log thread.
    fn run_log(&mut self) {
        const PHASE: WeftPhase = WeftPhase::Log;
        if self.request_end == 0 {
            return;
        }
        view::set_phase(self.lease().bytes_mut(), PHASE as u32);
        let instances = Arc::clone(&self.chain.instances);
        for inst in instances.iter().filter(|i| i.phases & PHASE.mask() != 0) {
            if let Some(plugin) = inst.remote() {
                // Fire and forget: the transport publishes without blocking this thread.
                let (view_end, request_id) = (self.view_end, self.ident.request_id);
                plugin.log(request_id, &self.lease().bytes_mut()[..view_end]);
                continue;
            }
            match self.call(inst, PHASE) {
                // decode() rejects every mutation record in the log phase, so a batch is empty.
                Ok(_) => {}
                Err(err) => self.note_failure(inst, PHASE, &err),
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let log_pending = self.chain.phases & WeftPhase::Log.mask() != 0 && self.request_end != 0;
        if self.chain.has_remote {
            // Remote instances keep per-request routing (worker affinity): forget it now, except
            // for those whose log phase will run (the log call forgets it).
            for inst in self.chain.instances.iter() {
                if let Some(plugin) = inst.remote() {
                    if !(log_pending && inst.phases & WeftPhase::Log.mask() != 0) {
                        plugin.release(self.ident.request_id);
                    }
                }
            }
        }
        if !log_pending {
            return;
        }
        // Hand the whole exchange (with its slot) to the log thread; the slot is released there
        // after the log phase ran.
        let job = Exchange {
            chain: self.chain.clone(),
            lease: self.lease.take(),
            ident: self.ident,
            request_end: self.request_end,
            view_end: self.view_end,
        };
        self.chain.rt.submit_log(LogJob(job));
    }
}

/// A finished exchange waiting for its log phase.
pub(crate) struct LogJob(Exchange);

impl LogJob {
    pub(crate) fn run(mut self) {
        self.0.run_log();
        self.discard();
    }

    /// Drops the job without queueing it again; the slot goes back to the arena.
    pub(crate) fn discard(mut self) {
        self.0.request_end = 0;
    }
}

/// The phase futures must be `Send`: servers hold them across awaits on multi-threaded runtimes.
#[allow(dead_code)]
fn phase_futures_are_send(x: &mut Exchange, req: &mut http::request::Parts, resp: &mut http::response::Parts) {
    fn send<T: Send>(_: T) {}
    send(x.request_headers_async(req));
    send(x.response_headers_async(resp));
}
