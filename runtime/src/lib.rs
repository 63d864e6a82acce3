//! weft runtime: loads plugin libraries through the versioned C ABI in [`abi`], lays each request
//! out in an mmap-backed [`arena`] slot that plugins read in place, and runs plugin phases over
//! `http` request and response heads ([`Chain`], [`Exchange`]).
//!
//! See `docs/architecture.md` for the data flow and who owns which memory.

pub mod abi;
#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod arena;
mod batch_memo;
pub mod budget;
pub(crate) mod completion;
mod engine;
mod header_cache;
mod host;
pub mod log_queue;
pub mod mutation;
mod pending;
mod plugin;
pub mod plugin_log;
pub mod remote;
pub mod ring;
mod short;
pub(crate) mod sync;
mod thread_entry;
pub mod view;
pub mod watchdog;
pub mod workers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::sync::stat::{AtomicU64, Mutex, MutexGuard, Ordering};

pub use engine::{
    BodyAbort, BodyMode, BodySide, BoxedExchange, BufferedBody, Busy, Chain, Exchange, Flow, ResponseHead, WsEvent,
    WsFailure,
};
pub use plugin::{LoadError, PluginMeta};
pub use thread_entry::{ProcessEntries, ThreadEntries};

use abi::{WeftBuf, WeftResult};
use arena::{Arena, ArenaError, PoolSpec};
use engine::{CallLimits, Instance, LogJob, Transport};
use pending::AsyncTable;
use plugin::Library;
use workers::Workers;

/// Sizing of the request arena.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Number of request slots: the most requests with plugins in flight at once.
    pub slot_count: u32,
    /// Bytes per slot: the request view plus the plugin's mutation buffer.
    pub slot_size: u32,
    /// Finished requests waiting for their log phase; beyond this, log phases are dropped
    /// (counted in [`RuntimeStats::log_dropped`]) rather than holding memory or the client. A
    /// queued request keeps its slot, and so does one whose log call went pending (the log
    /// thread parks as many of those as the queue is long, then takes no more), so log work
    /// holds at most twice this many slots: keep it well below half of `slot_count`, or a slow
    /// log plugin takes every slot before log phases start to drop. 0: a quarter of
    /// `slot_count`, at least 1.
    pub log_queue: usize,
    /// Out slots (of `slot_size` bytes): where plugin calls write their output, in a pool of
    /// their own so a call never takes a request's slot. One is held while a headers or body call
    /// runs (until it completes, for a pending call or a worker job), and by a local reply until
    /// it is sent. When none is free a call writes after the view in the request's slot and its
    /// bytes are copied. 0: a quarter of `slot_count`, at least 4.
    pub out_slot_count: u32,
    /// Buffer size classes beyond the slot size, smallest first: a buffered body call over half
    /// a slot writes its output into the smallest that fits, and falls back to a mapping of its
    /// own (charged to `max_buffered_bytes_total`) when none does or all are taken. `None`: two classes, 4 and 16 slots large, each a sixty-fourth
    /// of the request slots' bytes (at least one slot each); `Some(vec![])`: none.
    pub buffer_classes: Option<Vec<PoolSpec>>,
    /// Most bytes buffered body calls may hold on the heap at once, across requests: collected
    /// bodies (charged by the caller, [`Exchange::buffered_budget`]), joined copies, and output
    /// buffers larger than every buffer class. A call over it is refused (503 for a request
    /// body, 502 for a response body). Default [`budget::DEFAULT_BUFFERED_BYTES_TOTAL`].
    pub max_buffered_bytes_total: u64,
    /// An inline phase call (made on the calling thread) still running after this long is logged
    /// once, naming the instance and phase, and counted ([`RuntimeStats::plugin_stalls`]); it
    /// is not interrupted. Zero: not watched. Reported at most two watchdog ticks late (a tick is
    /// a quarter of the threshold, at least 10 ms: [`watchdog::tick`]). Default 100 ms.
    pub stall_threshold: Duration,
    /// Where log phases run. Default [`LogPlace::Inline`].
    pub log_place: LogPlace,
}

/// Where a request's log phase runs, once its response is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogPlace {
    /// On the thread that ends the exchange (a serving thread, once the response body is done:
    /// on weft-proxy's HTTP/1.1 path after its last bytes went to the socket), as the chain's
    /// other phases run on it: the slot is released there,
    /// and no other thread touches the request. Like any inline call, a log call that runs long
    /// holds the thread (the watchdog reports it). A log call that answers pending, and a
    /// blocking instance's (before it is posted), hand the rest of the log phase to the log
    /// thread, which waits for them: the thread never waits, and blocking log calls go to the
    /// log thread's worker ring as with [`LogPlace::Thread`].
    #[default]
    Inline,
    /// Every log phase on the runtime's log thread, handed over in batches
    /// ([`log_queue`]): a log plugin however slow holds no serving thread, at the cost of
    /// moving each request's slot to another core (~0.3 µs a request measured, and the log
    /// thread's own wake-ups).
    Thread,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            slot_count: 1024,
            slot_size: 64 * 1024,
            log_queue: 0,
            out_slot_count: 0,
            buffer_classes: None,
            max_buffered_bytes_total: budget::DEFAULT_BUFFERED_BYTES_TOTAL,
            stall_threshold: Duration::from_millis(100),
            log_place: LogPlace::Inline,
        }
    }
}

impl RuntimeOptions {
    /// The log queue's length: `log_queue`, or a quarter of the slots when it is 0.
    pub fn log_queue_len(&self) -> usize {
        if self.log_queue == 0 {
            (self.slot_count as usize / 4).max(1)
        } else {
            self.log_queue
        }
    }

    /// The arena's pools, in order: request slots, out slots, then the buffer classes.
    pub fn pools(&self) -> Vec<PoolSpec> {
        let slot = PoolSpec {
            slot_count: self.slot_count,
            slot_size: self.slot_size,
        };
        let outs = if self.out_slot_count == 0 {
            (self.slot_count / 4).max(4)
        } else {
            self.out_slot_count
        };
        let mut pools = vec![
            slot,
            PoolSpec {
                slot_count: outs,
                ..slot
            },
        ];
        match &self.buffer_classes {
            Some(classes) => pools.extend(classes.iter().copied()),
            None => {
                for times in [4u32, 16] {
                    let Some(size) = self.slot_size.checked_mul(times).filter(|&s| s <= arena::MAX_SLOT_SIZE) else {
                        continue;
                    };
                    pools.push(PoolSpec {
                        slot_count: (self.slot_count / (times * 16)).max(1),
                        slot_size: size,
                    });
                }
            }
        }
        pools
    }
}

/// Why a plugin instance could not be created. Every message names the instance.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("plugin instance {instance}: unknown library {library:?}")]
    UnknownLibrary { instance: String, library: String },
    #[error("plugin instance {instance}: library {library} has no plugin named {plugin:?} (it has: {available})")]
    UnknownPlugin {
        instance: String,
        library: String,
        plugin: String,
        available: String,
    },
    #[error("plugin instance {instance} ({plugin}) failed to initialise: {message}")]
    Failed {
        instance: String,
        plugin: String,
        message: String,
    },
    #[error("plugin instance {instance}: duplicate instance name")]
    Duplicate { instance: String },
    #[error("plugin instance {instance}: {message}")]
    Options { instance: String, message: String },
}

/// One configured plugin instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Instance name from the config (used in logs).
    pub name: String,
    /// Library name given to [`Runtime::load_library`].
    pub library: String,
    /// Plugin name inside the library.
    pub plugin: String,
    /// The instance's config block as JSON.
    pub config_json: Vec<u8>,
    /// On plugin failure: continue unchanged (true) or answer 500 (false).
    pub fail_open: bool,
}

/// How the runtime calls one in-process instance beyond its [`InstanceSpec`]: the limits of
/// asynchronous calls (a handler that answers `Pending`, or a blocking plugin's worker jobs).
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    /// Longest the host waits for one phase call that went pending or to a worker; then the call
    /// is cancelled and the failure policy applies (fail closed: 504; fail open: the request
    /// continues unchanged). Default 1 s. Calls answered inline are not interrupted.
    pub deadline: Duration,
    /// Most calls of this instance pending at once (including cancelled calls the plugin has not
    /// completed yet); at the limit a call is refused without calling the plugin: 503 with
    /// `Retry-After` (fail closed) or unchanged (fail open). Default 1024.
    pub max_in_flight: u32,
    /// Run every call on the library's worker pool even if the plugin is not flagged
    /// `WEFT_PLUGIN_FLAG_BLOCKING` (needs a library with `attach_worker`). Default false.
    pub blocking: bool,
    /// `Retry-After` seconds of the 503 answered when the in-flight limit or a worker ring is
    /// full. Default 1.
    pub retry_after_secs: u32,
    /// Receives the duration of every call of this instance, pending and worker calls included
    /// (from the call to the completion). Off by default: it costs two clock reads per call.
    pub timer: Option<Arc<dyn PhaseTimer>>,
}

/// Per-call timing of one in-process instance ([`InstanceOptions::timer`]), e.g. a latency
/// histogram per phase. Called on the thread that made or awaited the call; must be cheap.
pub trait PhaseTimer: Send + Sync + std::fmt::Debug {
    fn record(&self, phase: abi::WeftPhase, elapsed: Duration);
}

impl Default for InstanceOptions {
    fn default() -> Self {
        InstanceOptions {
            deadline: Duration::from_secs(1),
            max_in_flight: 1024,
            blocking: false,
            retry_after_secs: 1,
            timer: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub u32);

/// Counters an operator wants to see.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub arena_exhausted: AtomicU64,
    pub plugin_failures: AtomicU64,
    /// Failures of fail-open instances: the request went on unchanged.
    pub fail_open_passes: AtomicU64,
    pub log_dropped: AtomicU64,
    /// Pending calls and worker jobs that missed their phase deadline (then cancelled).
    pub phase_timeouts: AtomicU64,
    /// Calls refused because an instance's in-flight limit or a worker ring was full.
    pub busy_rejections: AtomicU64,
    /// Completions that arrived after the host had cancelled the call; discarded, and the slot
    /// they held released.
    pub late_completions: AtomicU64,
    /// Gauge: arena slots held by cancelled calls whose plugin has not completed them yet.
    pub orphaned_slots: AtomicU64,
    /// Gauge: calls the host is waiting for now (pending answers and worker jobs).
    pub pending_calls: AtomicU64,
    /// Phase calls posted to worker rings.
    pub worker_jobs: AtomicU64,
    /// Bytes of local reply bodies that plugins wrote and the host handed on as slices of the
    /// arena slot they were written to (or of a NATS reply), without a copy. (Header values are
    /// always copied: they are checked on the host's copy.)
    pub output_bytes_shared: AtomicU64,
    /// The same bytes copied instead, because the call had no out slot of its own (none was free).
    pub output_bytes_copied: AtomicU64,
    /// Inline phase calls that ran past [`RuntimeOptions::stall_threshold`] (each counted once,
    /// while it still runs).
    pub plugin_stalls: AtomicU64,
}

struct Registry {
    libraries: HashMap<String, Arc<Library>>,
    instances: Vec<Arc<Instance>>,
}

impl Registry {
    /// The library and plugin `spec` names, both loaded.
    fn plugin_of(&self, spec: &InstanceSpec) -> Result<(Arc<Library>, PluginMeta), InitError> {
        let lib = self
            .libraries
            .get(&spec.library)
            .cloned()
            .ok_or_else(|| InitError::UnknownLibrary {
                instance: spec.name.clone(),
                library: spec.library.clone(),
            })?;
        let meta = lib
            .plugin(&spec.plugin)
            .cloned()
            .ok_or_else(|| InitError::UnknownPlugin {
                instance: spec.name.clone(),
                library: spec.library.clone(),
                plugin: spec.plugin.clone(),
                available: lib
                    .plugins
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok((lib, meta))
    }
}

/// The arena (its mapping, cut into pools) and its call table: what runtime generations of one
/// layout share ([`Runtime::replacing`]). Runtimes hold clones of these handles; this keeps the
/// call table's fate in one place when the last runtime using it goes.
struct Memory {
    pools: Vec<PoolSpec>,
    arena: Arc<Arena>,
    outs: Arc<Arena>,
    buffers: Vec<Arc<Arena>>,
    calls: Arc<AsyncTable>,
}

impl Memory {
    fn new(pools: Vec<PoolSpec>, stats: &Arc<RuntimeStats>) -> Result<Arc<Memory>, ArenaError> {
        let mut arenas = Arena::pools(&pools)?.into_iter();
        let (arena, outs) = (arenas.next().expect("request pool"), arenas.next().expect("out pool"));
        let calls = Arc::new(AsyncTable::new(arena.slot_count(), Arc::clone(stats)));
        Ok(Arc::new(Memory {
            pools,
            arena,
            outs,
            buffers: arenas.collect(),
            calls,
        }))
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // Cancelled calls whose plugin has not completed them yet hold their slots in the call
        // table: keep the table for good, so their late completions still find it, get Cancelled
        // and return the slots. The arena's pools, dropped next, then give every page but those
        // slots' back to the OS (see `arena`, *Lifetime*). Without orphans the table goes too.
        let orphaned = (0..self.arena.slot_count())
            .filter(|&i| self.calls.cell(i).is_orphaned())
            .count();
        if orphaned > 0 {
            tracing::warn!(
                orphaned,
                "arena retired while plugins still hold cancelled calls: its call table and those slots are kept for their late completions; its other pages are released"
            );
            std::mem::forget(Arc::clone(&self.calls));
        }
    }
}

/// Loaded libraries, plugin instances and the request arena.
pub struct Runtime {
    /// The arena and call table, possibly shared with the runtime this one replaced (and the
    /// one that replaces it); the handles below are clones of its.
    mem: Arc<Memory>,
    /// Request slots: the first pool of the arena's mapping. A slot's index is the request's
    /// identity for plugins (`view.slot`).
    arena: Arc<Arena>,
    /// Out slots: where calls write their output (`Exchange::lease_head_out`, body calls). The
    /// second pool of the same mapping, so a worker job names one by unit.
    outs: Arc<Arena>,
    /// Larger buffer classes, smallest first (buffered body calls over half a slot).
    buffers: Vec<Arc<Arena>>,
    registry: Mutex<Registry>,
    log: log_queue::LogQueue,
    log_place: LogPlace,
    /// Shared with the runtimes this one replaced and the one that replaces it
    /// ([`Runtime::replacing`]): counters carry on across config reloads, and gauges such as
    /// `orphaned_slots` count every generation's calls.
    pub stats: Arc<RuntimeStats>,
    /// One completion cell per arena slot (pending calls and worker jobs).
    calls: Arc<AsyncTable>,
    /// Buffered-body memory, process-wide (shared like `stats`).
    budget: Arc<budget::ByteBudget>,
    /// This runtime's worker rings (blocking plugins).
    workers: Workers,
}

impl Runtime {
    pub fn new(opts: RuntimeOptions) -> Result<Arc<Runtime>, ArenaError> {
        // The timing clock calibrates itself at its first read (0.6 ms here): now, not in a call.
        quanta::Instant::now();
        let stats = Arc::new(RuntimeStats::default());
        let mem = Memory::new(opts.pools(), &stats)?;
        let budget = budget::ByteBudget::new(opts.max_buffered_bytes_total);
        Ok(Runtime::build(&opts, mem, stats, budget))
    }

    /// A runtime to replace `prev` (a config reload), with no libraries or instances yet.
    ///
    /// It shares `prev`'s statistics (counters carry on; gauges such as `orphaned_slots` and
    /// `pending_calls` count both generations' calls) and buffered-body budget (whose limit it
    /// leaves alone: set it from `opts.max_buffered_bytes_total` with
    /// [`buffered_budget`](Self::buffered_budget) once the new runtime takes over). When `opts` lays the arena out exactly as `prev`'s did, it also shares
    /// `prev`'s arena and call table: the process keeps one mapping for as long as the layout
    /// stays the same, however many calls the old generations' plugins never complete (each
    /// holds just its slot). With another layout it maps a new arena; the old one is unmapped
    /// once every slot is back, or, while cancelled calls hold slots, gives every other page of
    /// it back to the OS when its last runtime is gone.
    pub fn replacing(prev: &Runtime, opts: RuntimeOptions) -> Result<Arc<Runtime>, ArenaError> {
        let pools = opts.pools();
        let mem = if pools == prev.mem.pools {
            Arc::clone(&prev.mem)
        } else {
            Memory::new(pools, &prev.stats)?
        };
        Ok(Runtime::build(
            &opts,
            mem,
            Arc::clone(&prev.stats),
            Arc::clone(&prev.budget),
        ))
    }

    /// Whether `self` and `other` lease from the same arena mapping.
    pub fn shares_arena_with(&self, other: &Runtime) -> bool {
        Arc::ptr_eq(&self.mem, &other.mem)
    }

    fn build(
        opts: &RuntimeOptions,
        mem: Arc<Memory>,
        stats: Arc<RuntimeStats>,
        budget: Arc<budget::ByteBudget>,
    ) -> Arc<Runtime> {
        let stall_ms = opts.stall_threshold.as_millis().try_into().unwrap_or(u64::MAX);
        // The table may be shared with earlier generations: the newest config's threshold applies.
        mem.calls.stall_threshold_ms.store(stall_ms, Ordering::Relaxed);
        if stall_ms > 0 {
            watchdog::start(stall_ms);
        }
        Arc::new_cyclic(|weak| Runtime {
            arena: Arc::clone(&mem.arena),
            outs: Arc::clone(&mem.outs),
            buffers: mem.buffers.clone(),
            calls: Arc::clone(&mem.calls),
            mem,
            registry: Mutex::new(Registry {
                libraries: HashMap::new(),
                instances: Vec::new(),
            }),
            log: log_queue::LogQueue::start(opts.log_queue_len(), opts.slot_count as usize, weak.clone()),
            log_place: opts.log_place,
            stats,
            budget,
            workers: Workers::new(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a plugin library under a name that plugin instances refer to.
    pub fn load_library(&self, name: &str, path: &Path) -> Result<Vec<PluginMeta>, LoadError> {
        let lib = plugin::load(path, host::api())?;
        let plugins = lib.plugins.clone();
        self.registry().libraries.insert(name.to_owned(), lib);
        Ok(plugins)
    }

    /// `(runtime kind, runtime version)` of a loaded library, e.g. `(WEFT_RUNTIME_GO, "go1.26.8")`.
    pub fn library_runtime(&self, name: &str) -> Option<(u32, String)> {
        self.registry()
            .libraries
            .get(name)
            .map(|l| (l.runtime, l.runtime_version.clone()))
    }

    /// Creates and initialises one plugin instance with its config and default
    /// [`InstanceOptions`].
    pub fn instantiate(&self, spec: InstanceSpec) -> Result<InstanceId, InitError> {
        self.instantiate_with(spec, InstanceOptions::default())
    }

    /// Creates and initialises one plugin instance with its config and the limits of its
    /// asynchronous calls.
    pub fn instantiate_with(&self, spec: InstanceSpec, opts: InstanceOptions) -> Result<InstanceId, InitError> {
        if opts.max_in_flight == 0 || opts.deadline.is_zero() {
            return Err(InitError::Options {
                instance: spec.name,
                message: "max_in_flight and the deadline must be at least 1".into(),
            });
        }
        let mut reg = self.registry();
        if reg.instances.iter().any(|i| *i.name == *spec.name) {
            return Err(InitError::Duplicate { instance: spec.name });
        }
        let (lib, meta) = reg.plugin_of(&spec)?;
        let blocking = opts.blocking || meta.flags & abi::WEFT_PLUGIN_FLAG_BLOCKING != 0;
        if blocking && lib.attach_worker.is_none() {
            return Err(InitError::Options {
                instance: spec.name,
                message: format!(
                    "blocking: true needs a library with attach_worker (a worker pool), and {} has none",
                    lib.path.display()
                ),
            });
        }
        let id = host::register_instance(&spec.name, Arc::downgrade(&self.calls));
        if let Err(message) = self.init_instance(&lib, &meta, id, &spec.config_json) {
            return Err(InitError::Failed {
                instance: spec.name,
                plugin: spec.plugin,
                message,
            });
        }
        let inst = Arc::new(Instance {
            id,
            name: Arc::from(spec.name.as_str()),
            transport: Transport::Ffi(lib),
            phases: meta.phases,
            fail_open: spec.fail_open,
            flags: meta.flags,
            view_headers: meta.view_headers.clone(),
            limits: CallLimits::new(&opts, blocking),
            timer: opts.timer.clone(),
        });
        reg.instances.push(inst);
        Ok(InstanceId((reg.instances.len() - 1) as u32))
    }

    /// Calls the plugin's `init` for instance `id` with its config; the error is the plugin's
    /// message (printable and capped whatever it wrote) or the result code.
    fn init_instance(&self, lib: &Library, meta: &PluginMeta, id: u64, config: &[u8]) -> Result<(), String> {
        let mut err_bytes = vec![0u8; 4096];
        let mut err = WeftBuf {
            ptr: err_bytes.as_mut_ptr(),
            cap: err_bytes.len() as u32,
            len: 0,
        };
        // SAFETY: config and err are valid for the call; the plugin index came from the library.
        let rc = unsafe {
            (lib.init)(
                meta.index,
                id,
                config.as_ptr(),
                config.len(),
                self.arena.slot_count(),
                &mut err,
            )
        };
        let result = WeftResult::from_raw(rc);
        if result == WeftResult::Ok {
            return Ok(());
        }
        // Trailing NULs dropped.
        let n = (err.len as usize).min(err_bytes.len());
        let mut message = plugin::plugin_text(&err_bytes[..n], plugin::MAX_PLUGIN_MESSAGE);
        if message.is_empty() {
            message = format!("init returned {result:?}");
        }
        if err.len as usize > err_bytes.len() {
            message.push_str(&format!(
                " (and an invalid error length: {} bytes in a {}-byte buffer)",
                err.len,
                err_bytes.len()
            ));
        }
        Err(message)
    }

    /// Adds a remote plugin instance (e.g. NATS workers): its phases come from
    /// [`remote::RemoteInstance::phases`]; each call is bounded by `deadline`, and a failed call is
    /// handled like a failing in-process plugin under the same `fail_open` policy (fail closed:
    /// 503 when unavailable or overloaded, 504 on timeout, 500 otherwise).
    pub fn instantiate_remote(
        &self,
        name: &str,
        plugin: Arc<dyn remote::RemoteInstance>,
        fail_open: bool,
        deadline: std::time::Duration,
    ) -> Result<InstanceId, InitError> {
        let mut reg = self.registry();
        if reg.instances.iter().any(|i| *i.name == *name) {
            return Err(InitError::Duplicate {
                instance: name.to_owned(),
            });
        }
        let phases = plugin.phases();
        reg.instances.push(Arc::new(Instance {
            id: 0,
            name: Arc::from(name),
            transport: Transport::Remote(plugin, deadline),
            phases,
            fail_open,
            flags: 0,
            // What the remote plugin reads is not known here: it sees every line.
            view_headers: None,
            limits: CallLimits::new(&InstanceOptions::default(), false),
            timer: None,
        }));
        Ok(InstanceId((reg.instances.len() - 1) as u32))
    }

    /// A route's middleware chain, in order. Unknown ids are ignored.
    pub fn chain(self: &Arc<Self>, ids: &[InstanceId]) -> Chain {
        let reg = self.registry();
        let instances: Vec<Arc<Instance>> = ids
            .iter()
            .filter_map(|id| reg.instances.get(id.0 as usize).cloned())
            .collect();
        let phases = instances.iter().fold(0, |m, i| m | i.phases);
        let has_remote = instances.iter().any(|i| matches!(i.transport, Transport::Remote(..)));
        Chain {
            rt: Arc::clone(self),
            instances: Arc::new(engine::Links::new(instances)),
            phases,
            has_remote,
        }
    }

    /// Binds the calling thread to every loaded plugin runtime. Call it on each thread that will
    /// run phases (tokio's `on_thread_start`) so the first request does not pay for it.
    pub fn thread_start(&self) {
        let libs: Vec<Arc<Library>> = self.registry().libraries.values().cloned().collect();
        for lib in libs {
            if let Some(f) = lib.thread_start {
                // SAFETY: takes no arguments; the plugin promises it is callable from any thread.
                unsafe { f() };
            }
        }
    }

    /// The `run_on_thread` functions of the libraries loaded now, to run a serving thread's
    /// event loop inside them ([`ThreadEntries::run`]): that thread's phase calls into those
    /// libraries are then nested calls (for Go, no foreign-thread entry per call; see
    /// `thread_entry.rs`). Holds no reference to this runtime.
    pub fn thread_entries(&self) -> ThreadEntries {
        let registry = self.registry();
        let mut libs: Vec<&Arc<Library>> = Vec::new();
        for lib in registry.libraries.values() {
            // One library loaded under two names is entered once.
            if !libs.iter().any(|l| Arc::ptr_eq(l, lib)) {
                libs.push(lib);
            }
        }
        ThreadEntries(libs.iter().filter_map(|lib| lib.run_on_thread).collect())
    }

    /// Calls every instance's shutdown hook once.
    pub fn shutdown(&self) {
        let instances: Vec<Arc<Instance>> = self.registry().instances.drain(..).collect();
        for inst in instances {
            if let Transport::Ffi(lib) = &inst.transport {
                if let Some(f) = lib.shutdown {
                    // SAFETY: the instance id was initialised by this library.
                    unsafe { f(inst.id) };
                }
            }
        }
    }

    /// Slots in use and total.
    pub fn arena_usage(&self) -> (u64, u32) {
        (self.arena.in_use(), self.arena.slot_count())
    }

    /// The most request slots in use at once so far ([`Arena::high_water`]: read when slots
    /// leave the arena's free list, so no thread samples it).
    pub fn arena_high_water(&self) -> u64 {
        self.arena.high_water()
    }

    /// Out slots in use and total (calls in progress, local replies being sent).
    pub fn out_slot_usage(&self) -> (u64, u32) {
        (self.outs.in_use(), self.outs.slot_count())
    }

    /// Per buffer class: (slot size, slots in use, slots).
    pub fn buffer_usage(&self) -> Vec<(usize, u64, u32)> {
        self.buffers
            .iter()
            .map(|b| (b.slot_size(), b.in_use(), b.slot_count()))
            .collect()
    }

    /// The addresses of the arena's mapping (every pool), so a test or a diagnostic can tell
    /// whether bytes handed on (a local reply body, say) still live in a slot rather than in a
    /// copy.
    pub fn arena_range(&self) -> std::ops::Range<usize> {
        let base = self.arena.base_ptr() as usize;
        let end = std::iter::once(&self.outs)
            .chain(&self.buffers)
            .map(|p| p.base_ptr() as usize + p.slot_count() as usize * p.slot_size())
            .max()
            .unwrap_or(base);
        base..end
    }

    /// What a worker ring is told of the arena (`attach_worker`): its start, the unit (the slot
    /// size) and how many units jobs may name: the request slots, then the out slots.
    pub(crate) fn ring_arena(&self) -> (*const u8, usize, u32) {
        (
            self.arena.base_ptr(),
            self.arena.slot_size(),
            self.arena.slot_count() + self.outs.slot_count(),
        )
    }

    /// A buffer of at least `len` bytes from the smallest buffer class that has one free.
    pub(crate) fn lease_buffer(&self, len: usize) -> Option<arena::SlotLease> {
        self.buffers
            .iter()
            .filter(|b| b.slot_size() >= len)
            .find_map(|b| b.acquire())
    }

    /// Descriptors per worker ring for rings created from now on (a power of two between 2 and
    /// 2^20; default [`workers::DEFAULT_RING_CAPACITY`]). A full ring answers 503.
    pub fn set_worker_ring_capacity(&self, capacity: u32) -> Result<(), ring::RingError> {
        self.workers.set_capacity(capacity)
    }

    /// Worker rings this runtime has open (one per library with blocking instances and host
    /// thread that posted to it).
    pub fn worker_rings(&self) -> usize {
        self.workers.open_rings()
    }

    /// The budget of buffered-body memory (process-wide across runtime generations).
    pub fn buffered_budget(&self) -> &Arc<budget::ByteBudget> {
        &self.budget
    }

    /// Finished requests waiting for their log phase right now (the log queue's depth).
    pub fn log_queue_len(&self) -> usize {
        self.log.len()
    }

    /// Runs a finished exchange's log phase where [`RuntimeOptions::log_place`] says: here, as
    /// far as it goes without waiting (a call that goes pending or to a worker hands the rest
    /// to the log thread), or all of it on the log thread. A thread unwinding from a panic calls
    /// no plugin: its jobs go to the log thread.
    fn run_log(&self, job: LogJob) {
        if self.log_place == LogPlace::Thread || std::thread::panicking() {
            return self.submit_log(job);
        }
        if self.log.is_full() {
            // Log work is saturated: the log thread holds as many pending log calls as the
            // queue is long and takes no more. Dropped, as the queue drops a job handed to it
            // then, rather than start a call that may go pending with nowhere to wait (an
            // abandoned call keeps its slot until the plugin completes it).
            job.discard();
            self.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(job) = job.step_inline() {
            self.submit_log(job);
        }
    }

    fn submit_log(&self, job: LogJob) {
        if let Err(job) = self.log.submit(job) {
            // Dropping the job releases its slot; the log line is lost, the client is not held.
            job.discard();
            self.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Nothing can post any more (every exchange holds the runtime): close the rings so their
        // workers drain, call worker_exit and let the regions go. The arena and call table go
        // with the last runtime sharing them (`Memory`'s drop decides what is kept).
        self.workers.close();
    }
}
