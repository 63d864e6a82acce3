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
//! `async`. A remote reply goes through the same `mutation::decode` and apply path as an
//! in-process batch.
//!
//! An in-process call may also go asynchronous: the handler answers `Pending` and finishes later
//! through `complete` (`pending.rs`), or the instance is blocking and its call is posted to a
//! worker ring (`workers.rs`). The engine then awaits the slot's completion cell (the `_async`
//! methods; the sync ones park the calling thread), bounded by the instance's deadline; on a
//! deadline, or when the phase future is dropped (client gone), the call is cancelled and its
//! slot stays with the plugin until it completes ([`Exchange::abandon`]). Without a pending
//! answer the future is ready at its first poll without ever yielding.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::abi::*;
use crate::arena::SlotLease;
use crate::completion::{Cancel, CellState};
use crate::mutation::{self, MutationError};
use crate::pending::{Done, InFlight, Load, Orphan};
use crate::plugin::Library;
use crate::remote::{RemoteCallError, RemoteErrorKind, RemotePlugin};
use crate::sync::stat::{AtomicU64, Ordering};
use crate::view::{self, RequestHead, ViewIdentity};
use crate::{Runtime, RuntimeStats};

// Body phases (issue 5) live in their own file; a child module so they extend `Exchange`.
#[path = "body.rs"]
mod body;
pub use body::{BodyAbort, BodyMode, BodySide, BufferedBody};
// WebSocket phases (issue 9), likewise.
#[path = "ws.rs"]
mod ws;
pub use ws::{WsEvent, WsFailure};

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
    /// `WEFT_PLUGIN_FLAG_*` bits of the plugin (body modes).
    pub(crate) flags: u32,
    /// Deadline, in-flight limit and worker-pool use of asynchronous calls.
    pub(crate) limits: CallLimits,
    /// Receives the duration of every in-process call (opt-in: two clock reads per call).
    pub(crate) timer: Option<Arc<dyn crate::PhaseTimer>>,
}

/// The limits of an instance's asynchronous calls ([`crate::InstanceOptions`]).
pub(crate) struct CallLimits {
    pub(crate) deadline: Duration,
    pub(crate) max_in_flight: u64,
    /// Every call goes to the library's worker pool.
    pub(crate) blocking: bool,
    pub(crate) retry_after: u32,
    pub(crate) load: Arc<Load>,
}

impl CallLimits {
    pub(crate) fn new(opts: &crate::InstanceOptions, blocking: bool) -> CallLimits {
        CallLimits {
            deadline: opts.deadline,
            max_in_flight: u64::from(opts.max_in_flight),
            blocking,
            retry_after: opts.retry_after_secs,
            load: Arc::default(),
        }
    }
}

impl Instance {
    /// Reports a call that started at `t0` (taken only when a timer is set).
    #[inline]
    fn record_time(&self, phase: WeftPhase, t0: Option<Instant>) {
        if let (Some(timer), Some(t0)) = (&self.timer, t0) {
            timer.record(phase, t0.elapsed());
        }
    }

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
            body: Default::default(),
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
    /// Body-phase bookkeeping (`body.rs`).
    body: body::BodyState,
}

enum CallError {
    Code(WeftResult),
    Mutation(MutationError),
    Remote(RemoteCallError),
    /// A pending call or worker job missed the instance's deadline and was cancelled.
    Timeout(Duration),
    /// Refused without calling the plugin: its in-flight limit or its worker ring is full.
    Busy {
        retry_after: u32,
        why: String,
    },
    /// After a cancelled call no arena slot was free to go on with.
    NoSlot,
    /// A blocking instance has no worker on this thread's ring.
    NoWorker(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Code(WeftResult::Panic) => f.write_str("handler panicked"),
            CallError::Code(c) => write!(f, "plugin returned {c:?}"),
            CallError::Mutation(e) => write!(f, "invalid mutation batch rejected: {e}"),
            CallError::Remote(e) => write!(f, "{e}"),
            CallError::Timeout(d) => write!(
                f,
                "plugin did not complete the call within its deadline of {} ms; call cancelled",
                d.as_millis()
            ),
            CallError::Busy { why, .. } => write!(f, "call refused, {why}"),
            CallError::NoSlot => f.write_str("no free arena slot to go on with after a cancelled call"),
            CallError::NoWorker(why) => write!(f, "blocking plugin unavailable: {why}"),
        }
    }
}

/// 503 with `retry-after`: no arena slot for the request to go on with.
fn no_slot_response() -> Response<Bytes> {
    let mut resp = failure_response(StatusCode::SERVICE_UNAVAILABLE, "busy\n");
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    resp
}

/// The answer of a fail-closed instance: 503 (with `retry-after`) when the plugin is unreachable
/// or overloaded (remote, in-flight limit, worker ring full), 504 when it timed out, 500
/// otherwise.
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
        CallError::Timeout(_) => failure_response(StatusCode::GATEWAY_TIMEOUT, "plugin timed out\n"),
        CallError::Busy { retry_after, .. } => {
            let mut resp = failure_response(StatusCode::SERVICE_UNAVAILABLE, "plugin busy\n");
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(*retry_after));
            resp
        }
        CallError::NoSlot => no_slot_response(),
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
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A waker that unparks a thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
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
        if $self.lease.is_none() {
            // The slot went to a cancelled call (its phase future was dropped) and none was free.
            return Flow::Respond(no_slot_response());
        }
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
                    if batch.take_skip_body() {
                        $self.note_skip_body($inst, PHASE);
                    }
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
                    // Without a slot (a cancelled call kept it, none was free) nothing can go on.
                    if !$inst.fail_open || $self.lease.is_none() {
                        return Flow::Respond(call_failure_response(&err));
                    }
                }
            }
        }
        let later = WeftPhase::RequestBody.mask()
            | WeftPhase::ResponseHeaders.mask()
            | WeftPhase::ResponseBody.mask()
            | WeftPhase::Log.mask();
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
        if $self.lease.is_none() {
            // The slot went to a cancelled call and none was free: no plugin can see this phase.
            return if $self.chain.phases & PHASE.mask() != 0 {
                Flow::Respond(no_slot_response())
            } else {
                Flow::Continue
            };
        }
        let wants_view =
            $self.chain.phases & (PHASE.mask() | WeftPhase::ResponseBody.mask() | WeftPhase::Log.mask()) != 0;
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
                    if batch.take_skip_body() {
                        $self.note_skip_body($inst, PHASE);
                    }
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
                    // Without a slot (a cancelled call kept it, none was free) nothing can go on.
                    if !$inst.fail_open || $self.lease.is_none() {
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

    /// Whether a plugin of the chain has a log phase, which runs on the request's view when the
    /// exchange is dropped: only then must the exchange (and its arena slot) outlive the response
    /// head. Without one, dropping it after the last headers or body phase frees the slot at once.
    pub fn runs_log_phase(&self) -> bool {
        self.chain.phases & WeftPhase::Log.mask() != 0
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

    /// Calls one in-process instance for one phase over the view already in the slot; returns its
    /// batch. A pending answer (or a worker job) parks this thread until it completes or its
    /// deadline passes.
    fn call(&mut self, inst: &Instance, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        let t0 = inst.timer.is_some().then(Instant::now);
        let head_out = self.lease_head_out(phase);
        let r = match self.start_ffi(inst, phase) {
            Started::Done(r) => r,
            Started::Waiting(w) => self.wait_blocking(inst, phase, w),
        };
        if head_out {
            // Back to the arena, or (frozen) owned by the batch's slices.
            self.body.out = None;
        }
        inst.record_time(phase, t0);
        r
    }

    /// A headers-phase call writes its records into an out slot (the arena's pool of them) leased
    /// for the call, so the bytes of a local reply body can go to hyper as slices of that slot ([`take_batch`](Self::take_batch)) instead of being copied out
    /// of the request's slot, which the next phase writes again. Without a free out slot the call
    /// writes after the view (and those bytes are copied). Returns whether it leased one; the
    /// caller clears `body.out` after the call.
    fn lease_head_out(&mut self, phase: WeftPhase) -> bool {
        if !matches!(phase, WeftPhase::RequestHeaders | WeftPhase::ResponseHeaders) || self.body.out.is_some() {
            return false;
        }
        self.body.out = self.chain.rt.outs.acquire().map(body::BodyOut::Lease);
        self.body.out.is_some()
    }

    /// Calls one instance: in-process (inline; awaited only if it answers `Pending` or is
    /// blocking) or remote (awaited).
    async fn call_any(&mut self, inst: &Instance, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        match &inst.transport {
            Transport::Ffi(_) => {
                let t0 = inst.timer.is_some().then(Instant::now);
                let head_out = self.lease_head_out(phase);
                let r = match self.start_ffi(inst, phase) {
                    Started::Done(r) => r,
                    Started::Waiting(w) => {
                        WaitCall {
                            x: self,
                            inst,
                            phase,
                            w: Some(w),
                            timer: None,
                        }
                        .await
                    }
                };
                if head_out {
                    self.body.out = None;
                }
                inst.record_time(phase, t0);
                r
            }
            Transport::Remote(plugin, deadline) => {
                let view_end = self.view_end;
                let request_id = self.ident.request_id;
                let Some(lease) = self.lease.as_mut() else {
                    return Err(CallError::NoSlot);
                };
                let view: &[u8] = &lease.bytes_mut()[..view_end];
                let bytes = plugin
                    .call(phase, request_id, view, *deadline)
                    .await
                    .map_err(CallError::Remote)?;
                // The reply's bytes are already shared: a local reply body becomes a slice of the
                // received message.
                let raw = mutation::decode_raw(&bytes, bytes.len(), phase).map_err(CallError::Mutation)?;
                let n = raw.referenced_len() as u64;
                self.chain.rt.stats.output_bytes_shared.fetch_add(n, Ordering::Relaxed);
                Ok(raw.resolve(mutation::Source::Shared(&bytes)))
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
    /// this thread. In-process instances run inline; a pending answer or a worker job parks the
    /// thread until it completes (or its deadline), and with remote instances on the chain the
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
    /// In-process instances are called inline; a pending answer, a worker job or a remote call is
    /// awaited (the future is ready at its first poll when there is none).
    pub async fn request_headers_async(&mut self, parts: &mut http::request::Parts) -> Flow {
        request_headers_phase!(self, parts, |inst| self.call_any(inst, PHASE).await)
    }

    /// Runs the response-headers phase of every instance that declared it, in reverse chain order
    /// (the first plugin on the way in is the last on the way out).
    pub async fn response_headers_async(&mut self, parts: &mut http::response::Parts) -> Flow {
        response_headers_phase!(self, parts, |inst| self.call_any(inst, PHASE).await)
    }

    /// Runs the log calls of instances `*next..` (chain positions) on this thread; stops at a
    /// call that went pending or to a worker, returning it (`*next` then points past it), with
    /// `cx`'s waker registered for its completion. Used by the log thread ([`LogJob::step`]).
    fn run_log_from(&mut self, next: &mut usize, cx: &mut Context<'_>) -> Option<(Waiting, usize)> {
        const PHASE: WeftPhase = WeftPhase::Log;
        let instances = Arc::clone(&self.chain.instances);
        while let Some(inst) = instances.get(*next) {
            let pos = *next;
            *next += 1;
            if inst.phases & PHASE.mask() == 0 {
                continue;
            }
            if self.lease.is_none() {
                // A log call timed out and no slot was free for the rest.
                self.chain.rt.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
                *next = instances.len();
                return None;
            }
            if let Some(plugin) = inst.remote() {
                // Fire and forget: the transport publishes without blocking this thread.
                let (view_end, request_id) = (self.view_end, self.ident.request_id);
                plugin.log(request_id, &self.lease().bytes_mut()[..view_end]);
                continue;
            }
            // decode() rejects every mutation record in the log phase, so a batch is empty.
            let result = match self.start_ffi(inst, PHASE) {
                Started::Done(r) => r,
                Started::Waiting(w) => match self.chain.rt.calls.cell(w.slot).poll(w.seq, cx) {
                    Poll::Ready(done) => self.finish_waiting(w, done, PHASE),
                    Poll::Pending => return Some((w, pos)),
                },
            };
            if let Err(err) = result {
                self.note_failure(inst, PHASE, &err);
            }
        }
        None
    }
}

/// A finished exchange on its way through the log phase. The log thread runs many at once: a
/// log call that goes pending (or to a worker) parks its job, not the thread ([`LogJob::step`]).
pub(crate) struct LogJob {
    x: Exchange,
    /// Chain position of the next instance to log.
    next: usize,
    started: bool,
    /// The pending call this job waits for, and its instance's position.
    wait: Option<(Waiting, usize)>,
}

impl LogJob {
    fn new(x: Exchange) -> LogJob {
        LogJob {
            x,
            next: 0,
            started: false,
            wait: None,
        }
    }

    /// Goes on with the log phase: `Some(self)` while a call is pending (`cx`'s waker fires when
    /// it completes; [`deadline`](Self::deadline) says when to look again at the latest), `None`
    /// when every log call is done and the slot is released.
    pub(crate) fn step(mut self, cx: &mut Context<'_>) -> Option<LogJob> {
        const PHASE: WeftPhase = WeftPhase::Log;
        if let Some((w, pos)) = self.wait.take() {
            let inst = Arc::clone(&self.x.chain.instances[pos]);
            let result = match self.x.chain.rt.calls.cell(w.slot).poll(w.seq, cx) {
                Poll::Ready(done) => self.x.finish_waiting(w, done, PHASE),
                Poll::Pending if Instant::now() >= w.deadline => self.x.timed_out(&inst, PHASE, w),
                Poll::Pending => {
                    self.wait = Some((w, pos));
                    return Some(self);
                }
            };
            if let Err(err) = result {
                self.x.note_failure(&inst, PHASE, &err);
            }
        } else if !self.started {
            self.started = true;
            if self.x.request_end == 0 || self.x.lease.is_none() {
                self.discard();
                return None;
            }
            view::set_phase(self.x.lease().bytes_mut(), PHASE as u32);
        }
        if let Some(w) = self.x.run_log_from(&mut self.next, cx) {
            self.wait = Some(w);
            return Some(self);
        }
        self.discard();
        None
    }

    /// Whether the call this job waits for has completed.
    pub(crate) fn is_ready(&self) -> bool {
        self.wait
            .as_ref()
            .is_some_and(|(w, _)| self.x.chain.rt.calls.cell(w.slot).peek() == (w.seq, CellState::Completed))
    }

    /// The deadline of the call this job waits for.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.wait.as_ref().map(|(w, _)| w.deadline)
    }

    /// Drops the job without queueing it again; the slot goes back to the arena.
    pub(crate) fn discard(mut self) {
        self.x.request_end = 0;
    }
}

impl Drop for LogJob {
    fn drop(&mut self) {
        if let Some((w, _)) = self.wait.take() {
            // Dropped while a plugin holds a log call: the slot stays with the plugin.
            if let Abandoned::Arrived(w, done) = self.x.abandon(w, false) {
                let _ = self.x.finish_waiting(w, done, WeftPhase::Log);
            }
        }
        self.x.request_end = 0;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let mut log_pending = self.chain.phases & WeftPhase::Log.mask() != 0 && self.request_end != 0;
        if log_pending && self.lease.is_none() {
            // The slot went to a cancelled call and none was free to carry the view on.
            self.chain.rt.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
            log_pending = false;
        }
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
            body: Default::default(),
        };
        self.chain.rt.submit_log(LogJob::new(job));
    }
}

/// The phase futures must be `Send`: servers hold them across awaits on multi-threaded runtimes.
#[allow(dead_code)]
fn phase_futures_are_send(x: &mut Exchange, req: &mut http::request::Parts, resp: &mut http::response::Parts) {
    fn send<T: Send>(_: T) {}
    send(x.request_headers_async(req));
    send(x.response_headers_async(resp));
}

/// What starting an in-process call gave.
enum Started {
    /// Answered inline (or refused before the plugin was called).
    Done(Result<mutation::Batch, CallError>),
    /// Pending, or posted to a worker: awaited through the slot's completion cell.
    Waiting(Waiting),
}

/// A call the host waits for.
struct Waiting {
    slot: u32,
    seq: u32,
    /// Offset of the output location in the view's slot (the job contract, and the inline
    /// `out` unless a body call has its own out buffer).
    out_off: usize,
    /// A worker job: the records are in the view's slot even for a body call.
    job: bool,
    deadline: Instant,
    in_flight: InFlight,
}

/// How [`Exchange::abandon`] ended.
enum Abandoned {
    /// The completion had arrived after all: finish the call normally.
    Arrived(Waiting, Done),
    /// Cancelled; the slot is the plugin's until it completes (or was returned to us if it had
    /// just finished). `self.lease` is a slot to go on with, or `None`.
    Cancelled,
}

impl Exchange {
    /// Starts a call of in-process instance `inst`: checks its in-flight limit, opens a call on
    /// the slot's completion cell and writes its number into the view, then calls the plugin
    /// inline, or posts a job to the worker ring if the instance is blocking.
    fn start_ffi(&mut self, inst: &Instance, phase: WeftPhase) -> Started {
        let Transport::Ffi(lib) = &inst.transport else {
            unreachable!("start_ffi() is only used for in-process instances")
        };
        let limits = &inst.limits;
        let rt = &*self.chain.rt;
        let Some(lease) = self.lease.as_mut() else {
            return Started::Done(Err(CallError::NoSlot));
        };
        let (slot, generation, base) = (lease.index(), lease.generation(), lease.raw_ptr());
        let out_off = self.view_end.next_multiple_of(8);
        debug_assert_eq!(
            // SAFETY: a whole view sits at the start of the slot.
            unsafe { base.cast::<WeftRequestView>().read_unaligned().size } as usize,
            self.view_end,
            "the output location is the first 8-aligned offset after view.size"
        );
        // SAFETY: out_off <= slot size (the view fit, and the slot size is a multiple of 64).
        let mut out = WeftBuf {
            ptr: unsafe { base.add(out_off) },
            cap: lease.slot_size().saturating_sub(out_off) as u32,
            len: 0,
        };
        let job = limits.blocking;
        // A body or headers call with its own out buffer writes there (body.rs, lease_head_out),
        // so the bytes it produces can go to hyper without a copy. A worker job can be told a
        // slot-sized unit of the arena only: with a heap or buffer-class out buffer it writes after
        // the view and the host copies.
        let (mut out_slot, mut job_out_off) = (slot, out_off);
        if let Some(body_out) = self.body.out.as_mut() {
            let lease_unit = body_out.lease_unit();
            if !job || lease_unit.is_some() {
                let b = body_out.bytes_mut();
                out = WeftBuf {
                    ptr: b.as_mut_ptr(),
                    cap: b.len() as u32,
                    len: 0,
                };
                if let Some(unit) = lease_unit {
                    (out_slot, job_out_off) = (unit, 0);
                }
            }
        }
        let busy = |why: String| {
            rt.stats.busy_rejections.fetch_add(1, Ordering::Relaxed);
            Started::Done(Err(CallError::Busy {
                retry_after: limits.retry_after,
                why,
            }))
        };
        let max = limits.max_in_flight;
        // A worker job counts before it is posted; an inline call only once it answered Pending
        // (the fast path touches no shared counter), so the limit may be overshot by the calls
        // entering on other threads at the same moment.
        let in_flight = if job {
            match InFlight::try_enter(&limits.load, max) {
                Some(g) => Some(g),
                None => return busy(format!("in-flight limit of {max} calls reached")),
            }
        } else if limits.load.in_flight.load(Ordering::Relaxed) >= max {
            return busy(format!("in-flight limit of {max} calls reached"));
        } else {
            None
        };
        let Some(seq) = rt.calls.begin(slot, inst.id, out.cap) else {
            tracing::error!(plugin = %inst.name, slot, "completion cell of a leased slot is not idle");
            return Started::Done(Err(CallError::Code(WeftResult::Internal)));
        };
        // SAFETY: the view at `base` is this exchange's, and no call is outstanding on it.
        unsafe { view::set_call_raw(base, seq) };
        let cell = rt.calls.cell(slot);
        if let Some(in_flight) = in_flight {
            let arena = rt.ring_arena();
            let j = WeftJob {
                slot,
                generation,
                instance: inst.id,
                phase: phase as u32,
                call: seq,
                out_slot,
                out_off: job_out_off as u32,
            };
            if let Err(e) = rt.workers.post(lib, arena, j) {
                // Never posted: no completer can exist, the cell is ours to reset.
                cell.finish_inline(seq);
                return match e {
                    crate::workers::PostError::Full => busy("worker ring full".into()),
                    crate::workers::PostError::NoWorker(why) => Started::Done(Err(CallError::NoWorker(why))),
                };
            }
            rt.stats.worker_jobs.fetch_add(1, Ordering::Relaxed);
            cell.mark_pending(seq);
            rt.stats.pending_calls.fetch_add(1, Ordering::Relaxed);
            return Started::Waiting(Waiting {
                slot,
                seq,
                out_off,
                job: true,
                deadline: Instant::now() + limits.deadline,
                in_flight,
            });
        }
        // SAFETY: the view is a complete WeftRequestView in host memory valid for the call (and,
        // if it goes pending, until it completes), and `out` points to `cap` writable bytes after
        // the view in the same slot, or in the body call's out buffer.
        // The watchdog sees the call while it runs (a few stores; see watchdog.rs).
        let rc = crate::watchdog::watched(inst.id, phase, || unsafe {
            (lib.on_phase)(inst.id, phase as u32, base.cast::<WeftRequestView>(), &mut out)
        });
        if rc == WeftResult::Pending as u32 {
            // A completion that already arrived (from the calling thread's helper, say) is left
            // for the wait to find.
            cell.mark_pending(seq);
            rt.stats.pending_calls.fetch_add(1, Ordering::Relaxed);
            return Started::Waiting(Waiting {
                slot,
                seq,
                out_off,
                job: false,
                deadline: Instant::now() + limits.deadline,
                in_flight: InFlight::enter(&limits.load),
            });
        }
        if !cell.finish_inline(seq) {
            // The plugin answered inline and also completed the call: the inline answer wins. A
            // completer may still be writing its result; wait for it (a few instructions).
            tracing::warn!(plugin = %inst.name, "plugin answered a phase call inline and also completed it; the completion is ignored");
            while cell.try_take(seq).is_none() && cell.peek() != (seq, CellState::Idle) {
                std::hint::spin_loop();
            }
        }
        let rc = WeftResult::from_raw(rc);
        if rc != WeftResult::Ok {
            return Started::Done(Err(CallError::Code(rc)));
        }
        Started::Done(self.take_batch(out.len as usize, out_off, false, phase))
    }

    /// Decodes the records a finished call wrote (`len` bytes) and resolves the bytes they refer
    /// to. Header values, paths and everything else a record carries are copied and checked by
    /// the decoder (a plugin may still write its buffer). With an out buffer of its own (a lease,
    /// or a body call's heap buffer), a local reply body becomes a slice of that buffer, frozen
    /// for the purpose (no copy; body replacements likewise, in `body.rs`); records written after
    /// the view in the request's slot (`out_off`) are copied out, since the next phase writes
    /// there again. `in_slot`: a worker job that was
    /// given the slot while the call's out buffer is on the heap; its records are copied over.
    fn take_batch(
        &mut self,
        len: usize,
        out_off: usize,
        in_slot: bool,
        phase: WeftPhase,
    ) -> Result<mutation::Batch, CallError> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(CallError::NoSlot);
        };
        let raw = match self.body.out.as_mut() {
            Some(out) if in_slot => {
                let dst = out.bytes_mut();
                if len > dst.len() {
                    return Err(CallError::Code(WeftResult::MutationOverflow));
                }
                dst[..len].copy_from_slice(&lease.bytes_mut()[out_off..out_off + len]);
                mutation::decode_raw(dst, len, phase)
            }
            Some(out) => mutation::decode_raw(out.bytes_mut(), len, phase),
            None => mutation::decode_raw(&lease.bytes_mut()[out_off..], len, phase),
        }
        .map_err(CallError::Mutation)?;
        let n = raw.referenced_len() as u64;
        if n == 0 {
            return Ok(raw.resolve(mutation::Source::Copy(&[])));
        }
        let stats = &self.chain.rt.stats;
        Ok(match self.body.out.as_mut() {
            Some(out) => {
                stats.output_bytes_shared.fetch_add(n, Ordering::Relaxed);
                raw.resolve(mutation::Source::Shared(&out.freeze()))
            }
            None => {
                stats.output_bytes_copied.fetch_add(n, Ordering::Relaxed);
                raw.resolve(mutation::Source::Copy(&lease.bytes_mut()[out_off..]))
            }
        })
    }

    /// The completion of a waiting call arrived: decodes its records from the output location.
    fn finish_waiting(&mut self, w: Waiting, done: Done, phase: WeftPhase) -> Result<mutation::Batch, CallError> {
        let Waiting {
            out_off,
            job,
            in_flight,
            ..
        } = w;
        drop(in_flight);
        self.chain.rt.stats.pending_calls.fetch_sub(1, Ordering::Relaxed);
        let rc = WeftResult::from_raw(done.rc);
        if rc != WeftResult::Ok {
            return Err(CallError::Code(rc));
        }
        // `complete` checked out_len against the capacity of the output location.
        let len = done.out_len as usize;
        // A job was given the out buffer's slot unless that buffer is on the heap.
        let in_slot = job && self.body.out.as_ref().is_some_and(|o| o.lease_unit().is_none());
        self.take_batch(len, out_off, in_slot, phase)
    }

    /// Gives up on a waiting call (its deadline passed, or its future was dropped). If the
    /// plugin still holds the call, the slot's lease (and a body call's out buffer) moves into
    /// the completion cell and goes back to the arena only when the late completion arrives. With
    /// `replace`, the view is first copied into a freshly leased slot so the exchange can go on
    /// there: the view's `slot` and `generation` change, so plugins' per-request state restarts.
    fn abandon(&mut self, w: Waiting, replace: bool) -> Abandoned {
        let rt = Arc::clone(&self.chain.rt);
        let cell = rt.calls.cell(w.slot);
        if let Some(done) = cell.try_take(w.seq) {
            return Abandoned::Arrived(w, done);
        }
        let Waiting { seq, in_flight, .. } = w;
        rt.stats.pending_calls.fetch_sub(1, Ordering::Relaxed);
        let old = self.lease.take().expect("a waiting call keeps its slot");
        let fresh = if replace {
            let fresh = rt.arena.acquire().map(|mut fresh| {
                // SAFETY: two distinct slots of one arena. The plugin only reads the view part
                // of the old slot (it writes its output area after view_end), so copying it is a
                // concurrent read; the fresh slot is exclusively ours.
                unsafe { std::ptr::copy_nonoverlapping(old.raw_ptr(), fresh.raw_ptr(), self.view_end) };
                let (index, generation) = (fresh.index(), fresh.generation());
                view::set_identity(fresh.bytes_mut(), index, generation);
                fresh
            });
            if fresh.is_none() {
                rt.stats.arena_exhausted.fetch_add(1, Ordering::Relaxed);
            }
            fresh
        } else {
            None
        };
        // Counted before the cell can hand the orphan to a completer (which uncounts it).
        rt.stats.orphaned_slots.fetch_add(1, Ordering::Relaxed);
        let orphan = Orphan {
            lease: Some(old),
            // The body call's out buffer and the chunk its view points at stay with the plugin.
            keep: match (self.body.out.take(), self.body.chunk.take()) {
                (None, None) => None,
                kept => Some(Box::new(kept) as Box<dyn std::any::Any + Send>),
            },
            _in_flight: Some(in_flight),
            stats: Arc::clone(&rt.stats),
        };
        match cell.cancel(seq, orphan) {
            Cancel::Orphaned => {
                if let Some(f) = fresh {
                    self.ident.slot = f.index();
                    self.ident.generation = f.generation();
                    self.lease = Some(f);
                }
            }
            Cancel::Kept(mut orphan) => {
                // The plugin finished just now (its result is discarded): the slot is ours again.
                rt.stats.orphaned_slots.fetch_sub(1, Ordering::Relaxed);
                self.lease = orphan.lease.take();
                if let Some(keep) = orphan.keep.take() {
                    if let Ok(kept) = keep.downcast::<(Option<body::BodyOut>, Option<Bytes>)>() {
                        (self.body.out, self.body.chunk) = *kept;
                    }
                }
                drop(fresh);
            }
        }
        Abandoned::Cancelled
    }

    /// A waiting call missed its deadline: cancel it and say what the policy needs.
    fn timed_out(&mut self, inst: &Instance, phase: WeftPhase, w: Waiting) -> Result<mutation::Batch, CallError> {
        // Going on (fail open), or the log phase of the failure answer, needs the view in a slot.
        let replace = inst.fail_open || self.chain.phases & WeftPhase::Log.mask() != 0;
        match self.abandon(w, replace) {
            Abandoned::Arrived(w, done) => return self.finish_waiting(w, done, phase),
            Abandoned::Cancelled => {}
        }
        self.chain.rt.stats.phase_timeouts.fetch_add(1, Ordering::Relaxed);
        if self.lease.is_none() && inst.fail_open {
            return Err(CallError::NoSlot);
        }
        Err(CallError::Timeout(inst.limits.deadline))
    }

    /// Waits for a waiting call on this thread (sync API, log thread): parks until the
    /// completion wakes it or the deadline passes.
    fn wait_blocking(&mut self, inst: &Instance, phase: WeftPhase, w: Waiting) -> Result<mutation::Batch, CallError> {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(done) = self.chain.rt.calls.cell(w.slot).poll(w.seq, &mut cx) {
                return self.finish_waiting(w, done, phase);
            }
            let now = Instant::now();
            if now >= w.deadline {
                return self.timed_out(inst, phase, w);
            }
            std::thread::park_timeout(w.deadline - now);
        }
    }
}

/// Awaits a waiting call: its completion, or its deadline. Dropped before either (the request's
/// future was dropped: client gone), it cancels the call ([`Exchange::abandon`]).
struct WaitCall<'a> {
    x: &'a mut Exchange,
    inst: &'a Instance,
    phase: WeftPhase,
    w: Option<Waiting>,
    timer: Option<DeadlineTimer>,
}

impl Future for WaitCall<'_> {
    type Output = Result<mutation::Batch, CallError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let w = this.w.as_ref().expect("WaitCall polled after it finished");
        let (slot, seq, deadline) = (w.slot, w.seq, w.deadline);
        if let Poll::Ready(done) = this.x.chain.rt.calls.cell(slot).poll(seq, cx) {
            let w = this.w.take().expect("checked above");
            return Poll::Ready(this.x.finish_waiting(w, done, this.phase));
        }
        let timer = this
            .timer
            .get_or_insert_with(|| DeadlineTimer::new(deadline, cx.waker()));
        if timer.poll(cx) || Instant::now() >= deadline {
            let w = this.w.take().expect("checked above");
            return Poll::Ready(this.x.timed_out(this.inst, this.phase, w));
        }
        Poll::Pending
    }
}

impl Drop for WaitCall<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.w.take() {
            // Nobody waits for the result any more: no slot is needed to go on.
            if let Abandoned::Arrived(w, done) = self.x.abandon(w, false) {
                let _ = self.x.finish_waiting(w, done, self.phase);
            }
            // The caller's future is dropped with this one, so it will not release the call's
            // out buffer and chunk. The plugin is done with them here: the call finished (or
            // finished while being cancelled), or, still held, it took them into its cell.
            self.x.body.out = None;
            self.x.body.chunk = None;
        }
    }
}

/// The deadline of a waiting call: tokio's timer inside a tokio runtime (the proxy), else the
/// process-wide `weft-deadline` thread (an async caller outside tokio).
enum DeadlineTimer {
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
    Thread(ThreadTimer),
}

impl DeadlineTimer {
    fn new(deadline: Instant, waker: &Waker) -> DeadlineTimer {
        if tokio::runtime::Handle::try_current().is_ok() {
            DeadlineTimer::Tokio(Box::pin(tokio::time::sleep_until(deadline.into())))
        } else {
            DeadlineTimer::Thread(ThreadTimer::start(deadline, waker))
        }
    }

    /// Whether the deadline passed (registers `cx`'s waker for it otherwise).
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            DeadlineTimer::Tokio(s) => s.as_mut().poll(cx).is_ready(),
            DeadlineTimer::Thread(t) => t.poll(cx),
        }
    }
}

/// One deadline on the shared timer thread; dropping it removes the entry.
struct ThreadTimer {
    key: (Instant, u64),
    state: Arc<TimerState>,
}

struct TimerState {
    fired: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Waker>,
}

/// The deadlines the `weft-deadline` thread watches, earliest first.
struct Timers {
    map: std::sync::Mutex<std::collections::BTreeMap<(Instant, u64), Arc<TimerState>>>,
    changed: std::sync::Condvar,
}

fn timers() -> &'static Timers {
    static TIMERS: std::sync::OnceLock<&'static Timers> = std::sync::OnceLock::new();
    TIMERS.get_or_init(|| {
        let t: &'static Timers = Box::leak(Box::new(Timers {
            map: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            changed: std::sync::Condvar::new(),
        }));
        let spawned = std::thread::Builder::new().name("weft-deadline".into()).spawn(move || {
            let mut map = t.map.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let now = Instant::now();
                match map.first_key_value().map(|(k, _)| *k) {
                    Some(k) if k.0 <= now => {
                        let state = map.remove(&k).expect("first key");
                        state.fired.store(true, std::sync::atomic::Ordering::Release);
                        let waker = state.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        // Woken without the lock: the woken task may drop other timers.
                        drop(map);
                        waker.wake();
                        map = t.map.lock().unwrap_or_else(|e| e.into_inner());
                    }
                    Some(k) => {
                        map = t
                            .changed
                            .wait_timeout(map, k.0 - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => map = t.changed.wait(map).unwrap_or_else(|e| e.into_inner()),
                }
            }
        });
        if spawned.is_err() {
            tracing::error!("cannot start the weft-deadline thread: deadlines outside tokio are noticed late");
        }
        t
    })
}

impl ThreadTimer {
    fn start(deadline: Instant, waker: &Waker) -> ThreadTimer {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let key = (deadline, SEQ.fetch_add(1, Ordering::Relaxed));
        let state = Arc::new(TimerState {
            fired: false.into(),
            waker: std::sync::Mutex::new(waker.clone()),
        });
        let t = timers();
        let mut map = t.map.lock().unwrap_or_else(|e| e.into_inner());
        let first = map.first_key_value().is_none_or(|(k, _)| key < *k);
        map.insert(key, Arc::clone(&state));
        drop(map);
        if first {
            t.changed.notify_one();
        }
        ThreadTimer { key, state }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.state
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone_from(cx.waker());
        self.state.fired.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        if !self.state.fired.load(std::sync::atomic::Ordering::Acquire) {
            timers().map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        }
    }
}
