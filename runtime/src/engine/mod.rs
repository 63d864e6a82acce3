//! The phase engine: runs a route's plugin chain over one request.
//!
//! Per request, one [`Exchange`] owns one arena slot. The request head is laid out in the slot
//! before the first plugin call and again only after a plugin changed it; each plugin is called
//! synchronously on the calling thread (a cgo call costs tens of nanoseconds, a thread hand-off
//! tens of microseconds) and its mutation batch is validated and applied before the next plugin
//! sees the request. Dropping the exchange hands the slot to the log thread when the chain has
//! log-phase plugins, so logging happens after the response and off the request path.
//!
//! Remote instances ([`crate::remote::RemoteInstance`]) are awaited instead: the phase methods
//! are `async`. A remote reply goes through the same `mutation::decode` and apply path as an
//! in-process batch.
//!
//! An in-process call may also go asynchronous: the handler answers `Pending` and finishes later
//! through `complete` (`pending.rs`), or the instance is blocking and its call is posted to a
//! worker ring (`workers.rs`). The engine then awaits the slot's completion cell, bounded by the
//! instance's deadline; on a deadline, or when the phase future is dropped (client gone), the
//! call is cancelled and its slot stays with the plugin until it completes
//! ([`Exchange::abandon`]). Without a pending answer the future is ready at its first poll
//! without ever yielding, which is what lets the synchronous methods (tests, benches) drive the
//! same async code at no cost.
//!
//! The files follow a request's stages, each extending [`Exchange`]:
//! - `mod.rs`: instances, chains, starting an exchange and handing it to the log thread;
//! - `headers.rs`: the request- and response-headers phases (and laying out the view);
//! - `body.rs`: body phases, streamed or buffered; `ws.rs`: WebSocket events;
//! - `log.rs`: the log phase on the log thread ([`LogJob`]);
//! - `call.rs`: one call of one instance, in-process or remote, and decoding what it wrote;
//!   `out.rs`: where a call writes; `wait.rs`: waiting for a pending call or worker job, and
//!   cancelling it; `timer.rs`: its deadline; `failure.rs`: call errors and failure answers.

mod body;
mod call;
mod failure;
mod headers;
mod log;
mod out;
mod timer;
mod wait;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;

pub use body::{BodyAbort, BodyMode, BodySide, BufferedBody};
pub use headers::ResponseHead;
pub(crate) use log::LogJob;
pub use ws::{WsEvent, WsFailure};

use crate::Runtime;
use crate::abi::WeftPhase;
use crate::arena::SlotLease;
use crate::pending::Load;
use crate::plugin::Library;
use crate::remote::RemoteInstance;
use crate::sync::stat::{AtomicU64, Ordering};
use crate::view::{self, ClientAddr, ViewIdentity};

/// How an instance is reached.
pub(crate) enum Transport {
    /// In-process: the library's `on_phase`, called inline.
    Ffi(Arc<Library>),
    /// Elsewhere (e.g. NATS workers), awaited; each call bounded by the deadline.
    Remote(Arc<dyn RemoteInstance>, Duration),
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
    /// The header lines the plugin reads (`WeftViewHeaders`); `None`: every line.
    pub(crate) view_headers: Option<Arc<[http::HeaderName]>>,
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
    fn record_time(&self, phase: WeftPhase, t0: Option<quanta::Instant>) {
        if let (Some(timer), Some(t0)) = (&self.timer, t0) {
            // Saturating, not `elapsed`: `quanta` says a later version may panic there when
            // the counter reads earlier than `t0`.
            timer.record(phase, quanta::Instant::now().saturating_duration_since(t0));
        }
    }

    fn remote(&self) -> Option<&Arc<dyn RemoteInstance>> {
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
    pub(crate) instances: Arc<Links>,
    /// Union of the instances' phases: a phase no instance declared costs one bit test.
    pub(crate) phases: u32,
    /// Whether any instance is remote (they are released when the exchange ends).
    pub(crate) has_remote: bool,
}

/// A chain's instances in order (what it derefs to), with the header lines its views carry.
/// One allocation shared by the chain's clones: an exchange's copy of the chain costs no more
/// reference counts than the instances alone did.
pub(crate) struct Links {
    list: Box<[Arc<Instance>]>,
    /// Every line (`None`), or the union of what the instances declared when each one declared.
    pub(crate) view_headers: Option<Box<[http::HeaderName]>>,
}

impl Links {
    /// The header lines a view for `list` must carry: every line when any of them reads every
    /// line (no declaration, or a remote instance), else every name one of them declared.
    pub(crate) fn new(list: Vec<Arc<Instance>>) -> Links {
        let mut names: Vec<http::HeaderName> = Vec::new();
        let every = list.iter().any(|inst| inst.view_headers.is_none());
        for name in list.iter().filter_map(|inst| inst.view_headers.as_deref()).flatten() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        Links {
            list: list.into(),
            view_headers: (!every).then(|| names.into()),
        }
    }

    /// The header lines the chain's views carry.
    pub(crate) fn shown(&self) -> crate::view::Shown<'_> {
        crate::view::Shown::of(self.view_headers.as_deref())
    }
}

impl std::ops::Deref for Links {
    type Target = [Arc<Instance>];

    fn deref(&self) -> &[Arc<Instance>] {
        &self.list
    }
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

/// The next block of request ids to hand a thread.
static NEXT_ID_BLOCK: AtomicU64 = AtomicU64::new(1);

/// Request ids a thread takes at once from [`NEXT_ID_BLOCK`].
const ID_BLOCK: u64 = 1024;

/// A new request id: unique in the process and never 0, taken from the calling thread's block so
/// that a request costs no shared atomic (two serving threads incrementing one counter move its
/// cache line between cores on every request). Ids are not in start order across threads.
fn next_request_id() -> u64 {
    thread_local! {
        /// The next id of this thread's block and the end of the block.
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    BLOCK
        .try_with(|b| {
            let (mut next, mut end) = b.get();
            if next == end {
                next = NEXT_ID_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            b.set((next + 1, end));
            next
        })
        // A thread tearing down its thread-locals takes a block of one.
        .unwrap_or_else(|_| NEXT_ID_BLOCK.fetch_add(1, Ordering::Relaxed))
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.phases == 0
    }

    /// Whether an instance of the chain declared `phase`.
    pub fn handles(&self, phase: WeftPhase) -> bool {
        self.phases & phase.mask() != 0
    }

    /// Names of the instances, in order.
    pub fn names(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.name.to_string()).collect()
    }

    /// Begins a request from `client`. `Ok(None)` when no instance on the chain handles any
    /// phase.
    pub fn start(&self, client: SocketAddr, scheme: &'static str) -> Result<Option<Exchange>, Busy> {
        self.begin(ClientAddr::new(client), scheme, |x| x)
    }

    /// [`start`](Self::start) with the exchange in a box (which a caller keeping it across
    /// awaits wants): built in its heap allocation rather than built on the stack and moved
    /// there (a 296-byte copy per request), and handed to the log thread in that allocation
    /// ([`BoxedExchange`]).
    pub fn start_boxed(&self, client: SocketAddr, scheme: &'static str) -> Result<Option<BoxedExchange>, Busy> {
        self.begin(ClientAddr::new(client), scheme, BoxedExchange::new)
    }

    /// [`start`](Self::start) from a client address whose text a server made once for the
    /// connection: a request's view copies it rather than formatting the address again.
    pub fn start_from(&self, client: &ClientAddr, scheme: &'static str) -> Result<Option<Exchange>, Busy> {
        self.begin(*client, scheme, |x| x)
    }

    /// [`start_boxed`](Self::start_boxed) from a [`ClientAddr`] (see [`start_from`](Self::start_from)).
    pub fn start_boxed_from(&self, client: &ClientAddr, scheme: &'static str) -> Result<Option<BoxedExchange>, Busy> {
        self.begin(*client, scheme, BoxedExchange::new)
    }

    #[inline(always)]
    fn begin<T>(
        &self,
        client: ClientAddr,
        scheme: &'static str,
        place: impl FnOnce(Exchange) -> T,
    ) -> Result<Option<T>, Busy> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(lease) = self.rt.arena.acquire() else {
            self.rt.stats.arena_exhausted.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        };
        let ident = ViewIdentity {
            request_id: next_request_id(),
            slot: lease.index(),
            generation: lease.generation(),
            client,
            scheme,
            server_name: None,
        };
        Ok(Some(place(Exchange {
            chain: self.clone(),
            lease: Some(lease),
            ident,
            request_end: 0,
            request_fixed_end: 0,
            view_end: 0,
            last_headers: Default::default(),
            bufs: Default::default(),
            body: Default::default(),
        })))
    }
}

/// One request's passage through a chain. Dropping it queues the log phase (when the chain has
/// one) and releases the arena slot.
pub struct Exchange {
    chain: Chain,
    lease: Option<SlotLease>,
    ident: ViewIdentity,
    /// End of the request section of the view; 0 until encoded. (Slot offsets are u32, as the
    /// view's own are; a smaller exchange is a smaller request future.)
    request_end: u32,
    /// Where the request section's headers begin (after the request line's strings), for a
    /// layout of its headers alone; 0 until encoded.
    request_fixed_end: u32,
    /// End of the whole view (request plus response section).
    view_end: u32,
    /// Where the header array of the view's last section lies (`view::patch_headers`): the
    /// request's while `view_end == request_end`, else the response's.
    last_headers: view::HeaderArray,
    /// The buffers of the call in progress (`out.rs`).
    bufs: out::CallBuffers,
    /// Body-phase bookkeeping (`body.rs`).
    body: body::BodyState,
}

impl Exchange {
    pub fn request_id(&self) -> u64 {
        self.ident.request_id
    }

    /// Whether a plugin of the chain has a log phase, which runs on the request's view when the
    /// exchange is dropped: only then must the exchange (and its arena slot) outlive the response
    /// head. Without one, dropping it after the last headers or body phase frees the slot at once.
    pub fn runs_log_phase(&self) -> bool {
        self.handles(WeftPhase::Log)
    }

    /// Whether a plugin of the chain has `phase`. The headers phases run either way (they lay
    /// the view out for later phases), so a caller can use this to time only the phases a
    /// plugin has.
    pub fn handles(&self, phase: WeftPhase) -> bool {
        self.chain.handles(phase)
    }

    /// Sets the TLS server name (SNI) the plugins see in `server_name` (None, the default: empty,
    /// as on plain HTTP). Call it before the first phase; the name is shared, not copied.
    pub fn set_server_name(&mut self, name: Option<Arc<str>>) {
        self.ident.server_name = name;
    }

    fn lease(&mut self) -> &mut SlotLease {
        // Only `Drop` takes the lease out.
        self.lease.as_mut().expect("exchange lease taken before drop")
    }
}

impl Exchange {
    /// What ending the exchange does before its log phase: forgets the remote instances'
    /// per-request routing (except for those whose log phase will run: the log call forgets
    /// it), and says whether the log phase runs. Once it said no it says no again, so an
    /// exchange ended twice (a [`BoxedExchange`]'s, then its own drop) counts a dropped log
    /// phase once; forgetting the routing again is harmless.
    fn end(&mut self) -> bool {
        let mut log_pending = self.chain.phases & WeftPhase::Log.mask() != 0 && self.request_end != 0;
        if log_pending && self.lease.is_none() {
            // The slot went to a cancelled call and none was free to carry the view on.
            self.chain.rt.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
            log_pending = false;
        }
        if self.chain.has_remote {
            for inst in self.chain.instances.iter() {
                if let Some(plugin) = inst.remote() {
                    if !(log_pending && inst.phases & WeftPhase::Log.mask() != 0) {
                        plugin.release(self.ident.request_id);
                    }
                }
            }
        }
        if !log_pending {
            self.request_end = 0;
        }
        log_pending
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.end() {
            return;
        }
        // The log phase gets the exchange (with its slot) in an allocation of its own: it may
        // go on on the log thread (`Runtime::run_log`), which releases the slot after it.
        let job = Exchange {
            chain: self.chain.clone(),
            lease: self.lease.take(),
            ident: self.ident.clone(),
            request_end: self.request_end,
            request_fixed_end: self.request_fixed_end,
            view_end: self.view_end,
            last_headers: self.last_headers,
            bufs: Default::default(),
            body: Default::default(),
        };
        self.request_end = 0;
        self.chain.rt.run_log(LogJob::new(Box::new(job)));
    }
}

/// An [`Exchange`] in a heap allocation of its own ([`Chain::start_boxed`]), which it derefs
/// to. Dropping it ends the exchange as dropping an `Exchange` does, except that a log phase
/// that goes on on the log thread takes this allocation there instead of a new one: no
/// allocation and no copy of the exchange per request with a log phase.
pub struct BoxedExchange(Option<Box<Exchange>>);

impl BoxedExchange {
    fn new(x: Exchange) -> BoxedExchange {
        BoxedExchange(Some(Box::new(x)))
    }

    /// The exchange out of its box (a caller that shares it from here on); dropping that ends
    /// it as usual.
    pub fn into_inner(mut self) -> Exchange {
        *self
            .0
            .take()
            .expect("a BoxedExchange holds its exchange until it is dropped")
    }
}

impl std::ops::Deref for BoxedExchange {
    type Target = Exchange;

    fn deref(&self) -> &Exchange {
        self.0
            .as_deref()
            .expect("a BoxedExchange holds its exchange until it is dropped")
    }
}

impl std::ops::DerefMut for BoxedExchange {
    fn deref_mut(&mut self) -> &mut Exchange {
        self.0
            .as_deref_mut()
            .expect("a BoxedExchange holds its exchange until it is dropped")
    }
}

impl Drop for BoxedExchange {
    fn drop(&mut self) {
        let Some(mut x) = self.0.take() else {
            return;
        };
        // Without a log phase the exchange's own drop (of `x`, on return) ends it: once.
        if !x.runs_log_phase() || !x.end() {
            return;
        }
        // The call buffers and body state go here, on the serving thread, as an exchange's own
        // drop leaves them (the log phase starts with fresh ones).
        x.bufs = Default::default();
        x.body = Default::default();
        let rt = Arc::clone(&x.chain.rt);
        rt.run_log(LogJob::new(x));
    }
}

#[cfg(all(test, not(weft_loom)))]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn request_ids_are_unique_across_threads_and_never_zero() {
        // More ids per thread than a block holds, so every thread takes several blocks.
        let per_thread = super::ID_BLOCK as usize * 3 + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..per_thread).map(|_| super::next_request_id()).collect::<Vec<_>>()))
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert_ne!(id, 0);
                assert!(seen.insert(id), "request id {id} handed out twice");
            }
        }
        assert_eq!(seen.len(), per_thread * 4);
    }
}
