//! The worker pool of blocking plugins: phase calls of an instance flagged
//! [`WEFT_PLUGIN_FLAG_BLOCKING`](crate::abi::WEFT_PLUGIN_FLAG_BLOCKING) (or configured
//! `blocking`) are never made on the host's threads; each is posted as a [`WeftJob`] to a
//! single-producer/single-consumer ring (`ring.rs`) that a worker of the plugin library consumes,
//! and the worker answers through `complete` like any pending call.
//!
//! # One ring per (runtime, library, host thread)
//! A host thread that posts a job for a library creates its ring on first use (kept in a
//! thread-local, so posting takes no shared lock: the producer handle's mutex is only ever taken
//! by its own thread, and by the runtime or a leaving worker when they close the ring) and calls
//! the library's `attach_worker(ring, ring_len, arena, slot_size, slot_count)` once; the plugin
//! starts a worker (a thread or goroutine of its own) that consumes the ring with the documented
//! protocol.
//!
//! # Recovery
//! A ring without a worker (the attach was refused, or the worker left while the ring was open)
//! fails its thread's blocking calls (`NoWorker`) only until the thread's next call at least
//! [`RETRY_INTERVAL`] after that ring was created: the ring is then closed and replaced by a
//! new one, attached again.
//!
//! # Identity
//! A ring is named by its address and its `ring_id` (a header word, unique in the process):
//! `worker_exit_ring(ring, ring_id)` releases exactly that ring, and a late or second call, for a
//! ring whose address another has taken since, names no attached ring and is ignored. The older
//! `worker_exit(ring)` names an address only, so the host releases a ring on it only once the
//! host has closed that ring; for an open ring it closes the ring and keeps it mapped until an
//! exit call for the closed ring comes.
//!
//! # Memory
//! The region is shared by the ring's [`Producer`] (owned by the runtime, used by one host
//! thread) and its [`Consumer`] handle, which the host keeps, unused, in a process-wide table
//! while a worker reads the region. When the runtime is dropped it drops its producers, which
//! sets each ring's `closed` word and wakes its worker; the worker drains the ring, calls
//! `worker_exit_ring(ring, ring_id)` (or `worker_exit(ring)`) and never touches it again; the host
//! then drops the consumer handle and the region is unmapped. A ring whose worker never exits
//! stays mapped (leaked, not freed under it).

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::{Arc, Weak};

use crate::abi::{WeftJob, WeftResult};
use crate::plugin::Library;
use crate::ring::{self, Consumer, Producer, RingError};
use crate::sync::stat::{AtomicBool, AtomicU32, AtomicU64, Mutex, Ordering};

/// Descriptors per ring unless the runtime is told otherwise.
pub const DEFAULT_RING_CAPACITY: u32 = 1024;

/// One ring as its producer thread and the runtime see it.
pub(crate) struct RingHandle {
    /// `None` once closed (by the runtime, or because its worker left), or if no worker could be
    /// attached.
    producer: Mutex<Option<Producer>>,
    /// The worker called `worker_exit` while the ring was still open.
    gone: AtomicBool,
    /// When this ring was created: a thread whose ring failed gets a new one at most once per
    /// [`RETRY_INTERVAL`].
    created: std::time::Instant,
}

/// How often a host thread may create a new ring for a library after its ring failed (the attach
/// was refused, or the worker left).
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl RingHandle {
    fn new() -> Arc<RingHandle> {
        Arc::new(RingHandle {
            producer: Mutex::new(None),
            gone: AtomicBool::new(false),
            created: std::time::Instant::now(),
        })
    }

    /// Posts one job; the hot path (one relaxed load, the producer's own uncontended lock).
    fn send(&self, job: WeftJob) -> Result<(), PostError> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(PostError::NoWorker("the worker of this thread's ring has exited"));
        }
        let mut producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = producer.as_mut() else {
            return Err(PostError::NoWorker("no worker could be attached to this thread's ring"));
        };
        p.try_send(job).map_err(|_| PostError::Full)
    }

    fn is_open(&self) -> bool {
        self.producer.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Stops posting: stores `closed` and wakes the worker, which drains the ring and leaves.
    fn close(&self) {
        let producer = self.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Producer::drop publishes what is staged, stores `closed = 1` and wakes the worker.
        drop(producer);
    }
}

/// A ring whose worker has not exited yet: the host keeps its consumer handle (and so the region).
struct Attached {
    addr: usize,
    /// The ring's `ring_id` (never 0): with `addr`, what names this ring and no other.
    id: u64,
    _consumer: Consumer,
    ring: Weak<RingHandle>,
    library: String,
}

/// Every attached ring of the process, for `worker_exit`. An address is here at most once: the
/// region stays mapped while its entry is here, so no other ring can be mapped there.
static ATTACHED: Mutex<Vec<Attached>> = Mutex::new(Vec::new());

/// Worker rings whose worker has not called `worker_exit` yet, process-wide.
pub fn attached_rings() -> usize {
    ATTACHED.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Ring regions mapped now, process-wide ([`ring::mapped_regions`]): attached rings, and closed
/// ones whose worker has not left yet.
pub fn live_ring_regions() -> u64 {
    ring::mapped_regions()
}

/// The runtime's side of its rings.
pub(crate) struct Workers {
    /// Unique per runtime in the process (thread-locals key their rings by it).
    id: u64,
    capacity: AtomicU32,
    rings: Mutex<Vec<Arc<RingHandle>>>,
}

static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's rings: (runtime id, library address, ring).
    static LOCAL: RefCell<Vec<(u64, usize, Arc<RingHandle>)>> = const { RefCell::new(Vec::new()) };
}

/// Why a job could not be posted.
#[derive(Debug)]
pub(crate) enum PostError {
    /// The ring is full: the worker is behind. The request gets 503 with `Retry-After`.
    Full,
    /// No worker serves this ring (attach failed, or the worker left).
    NoWorker(&'static str),
}

impl Workers {
    pub(crate) fn new() -> Workers {
        Workers {
            id: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
            capacity: AtomicU32::new(DEFAULT_RING_CAPACITY),
            rings: Mutex::new(Vec::new()),
        }
    }

    /// Descriptors per ring created from now on (a power of two, 2 ..= 2^20).
    pub(crate) fn set_capacity(&self, capacity: u32) -> Result<(), RingError> {
        if !capacity.is_power_of_two() || !(2..=ring::MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::Capacity {
                got: capacity,
                max: ring::MAX_CAPACITY,
            });
        }
        self.capacity.store(capacity, Ordering::Relaxed);
        Ok(())
    }

    /// Rings this runtime created that are still open.
    pub(crate) fn open_rings(&self) -> usize {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings
            .iter()
            .filter(|r| r.producer.lock().unwrap_or_else(|e| e.into_inner()).is_some())
            .count()
    }

    /// Posts `job` to this thread's ring for `lib`, creating and attaching the ring first if
    /// needed, or replacing it (at most once per [`RETRY_INTERVAL`]) when it failed: its attach
    /// was refused or its worker left. `arena`: (base, slot size, slot count) for `attach_worker`.
    pub(crate) fn post(
        &self,
        lib: &Arc<Library>,
        arena: (*const u8, usize, u32),
        job: WeftJob,
    ) -> Result<(), PostError> {
        let key = Arc::as_ptr(lib) as usize;
        let posted = LOCAL.try_with(|local| {
            let mut local = local.borrow_mut();
            let i = match local.iter().position(|(rt, lib, _)| *rt == self.id && *lib == key) {
                Some(i) => i,
                None => {
                    // Forget rings of runtimes that closed them.
                    local.retain(|(rt, _, h)| *rt == self.id || h.is_open());
                    local.push((self.id, key, self.attach(lib, arena)));
                    local.len() - 1
                }
            };
            match local[i].2.send(job) {
                Err(PostError::NoWorker(why)) => self.recover(&mut local[i].2, lib, arena, job, why),
                r => r,
            }
        });
        posted.unwrap_or(Err(PostError::NoWorker("the posting thread is exiting")))
    }

    /// This thread's ring has no worker: replaces it with a new ring if the old one is at least
    /// [`RETRY_INTERVAL`] old, and posts `job` there.
    #[cold]
    fn recover(
        &self,
        ring: &mut Arc<RingHandle>,
        lib: &Arc<Library>,
        arena: (*const u8, usize, u32),
        job: WeftJob,
        why: &'static str,
    ) -> Result<(), PostError> {
        if ring.created.elapsed() < RETRY_INTERVAL {
            return Err(PostError::NoWorker(why));
        }
        tracing::info!(library = %lib.path.display(), "{why}: attaching a new worker ring");
        let old = std::mem::replace(ring, self.attach(lib, arena));
        old.close();
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| !Arc::ptr_eq(r, &old));
        ring.send(job)
    }

    /// Creates a ring and asks the library to start a worker on it.
    #[cold]
    fn attach(&self, lib: &Arc<Library>, (base, slot_size, slot_count): (*const u8, usize, u32)) -> Arc<RingHandle> {
        let handle = RingHandle::new();
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&handle));
        let library = lib.path.display().to_string();
        let Some(attach) = lib.attach_worker else {
            tracing::error!(%library, "a blocking plugin instance of a library without attach_worker");
            return handle;
        };
        let capacity = self.capacity.load(Ordering::Relaxed);
        let (producer, consumer) = match ring::ring(capacity) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(%library, "cannot create a worker ring: {e}");
                return handle;
            }
        };
        let ((addr, len), id) = (producer.region(), producer.id());
        // Registered before the call: the worker may leave (and call worker_exit) at once.
        ATTACHED.lock().unwrap_or_else(|e| e.into_inner()).push(Attached {
            addr: addr as usize,
            id,
            _consumer: consumer,
            ring: Arc::downgrade(&handle),
            library: library.clone(),
        });
        *handle.producer.lock().unwrap_or_else(|e| e.into_inner()) = Some(producer);
        // SAFETY: the region is `len` bytes with the documented layout and stays mapped until the
        // worker calls worker_exit (the consumer handle is in ATTACHED); the arena outlives every
        // job posted to the ring (a job's slot is leased until its completion, or leaked).
        let rc = unsafe { attach(addr as *mut c_void, len, base, slot_size as u32, slot_count) };
        if rc != WeftResult::Ok as u32 {
            tracing::error!(
                %library,
                rc = ?WeftResult::from_raw(rc),
                "attach_worker refused: blocking plugin calls from this thread fail until a new ring is attached \
                 (tried again at most once a second)"
            );
            // No worker started: the consumer handle goes, and with the producer the region.
            handle.close();
            drop(detach(addr as usize, Some(id)));
        } else {
            tracing::debug!(%library, capacity, "worker attached to a new ring");
        }
        handle
    }

    /// Closes every ring: sets its `closed` word and wakes its worker, which drains it, calls
    /// `worker_exit` and leaves. Called when the runtime is dropped.
    pub(crate) fn close(&self) {
        let rings = std::mem::take(&mut *self.rings.lock().unwrap_or_else(|e| e.into_inner()));
        for r in rings {
            r.close();
        }
    }
}

/// Takes the entry of the ring at `addr` (with id `id`, if given) out of [`ATTACHED`].
fn detach(addr: usize, id: Option<u64>) -> Option<Attached> {
    let mut all = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
    let i = all
        .iter()
        .position(|a| a.addr == addr && id.is_none_or(|id| a.id == id))?;
    Some(all.swap_remove(i))
}

/// `WeftHostApi::worker_exit`: the worker on `ring` has stopped for good. Never unwinds.
pub(crate) unsafe extern "C" fn host_worker_exit(ring: *const c_void) {
    let _ = std::panic::catch_unwind(|| worker_exit(ring as usize));
}

/// `WeftHostApi::worker_exit_ring`: the worker of ring `ring_id` at `ring` has stopped for good.
/// Never unwinds.
pub(crate) unsafe extern "C" fn host_worker_exit_ring(ring: *const c_void, ring_id: u64) -> u32 {
    std::panic::catch_unwind(|| worker_exit_ring(ring as usize, ring_id)).unwrap_or(WeftResult::Internal) as u32
}

/// Named by address and id: nothing else can be meant. A ring still open is closed (its posting
/// thread gets a new one), and the region goes once the producer is gone too.
fn worker_exit_ring(addr: usize, id: u64) -> WeftResult {
    let Some(att) = detach(addr, Some(id)) else {
        tracing::warn!(
            ring = format_args!("{addr:#x}"),
            ring_id = id,
            "worker_exit_ring() names no attached worker ring (a second call, or a late one for a ring that is \
             gone); ignored"
        );
        return WeftResult::StaleHandle;
    };
    if let Some(h) = att.ring.upgrade().filter(|h| h.is_open()) {
        left_early(&h, &att.library);
    }
    tracing::debug!(library = %att.library, "worker left its ring");
    // The consumer handle goes now; the region is unmapped when the producer is gone too.
    drop(att);
    WeftResult::Ok
}

/// Named by address only: a late or second call for a ring that is gone looks the same as a call
/// for the live ring mapped at that address since. So only a ring the host closed already is
/// released; a ring still open is closed (its posting thread gets a new one) but stays mapped
/// until an exit call comes for it once closed: its worker, if it is still there, drains it and
/// calls again.
fn worker_exit(addr: usize) {
    let found = {
        let all = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .find(|a| a.addr == addr)
            .map(|a| (a.id, a.ring.upgrade(), a.library.clone()))
    };
    let Some((id, handle, library)) = found else {
        tracing::warn!(
            ring = format_args!("{addr:#x}"),
            "worker_exit() with a pointer that is not an attached worker ring (or one that exited already); ignored"
        );
        return;
    };
    if let Some(h) = handle.filter(|h| h.is_open()) {
        left_early(&h, &library);
        tracing::warn!(
            %library,
            "worker_exit() for a ring still open: kept mapped until an exit call comes for it now that it is closed \
             (worker_exit_ring names a ring without doubt)"
        );
        return;
    }
    tracing::debug!(%library, "worker left its ring");
    drop(detach(addr, Some(id)));
}

/// The worker of an open ring says it left: close the ring (jobs left in it reach their deadline)
/// and let its posting thread attach a new one.
fn left_early(h: &RingHandle, library: &str) {
    h.gone.store(true, Ordering::Relaxed);
    h.close();
    tracing::warn!(
        %library,
        "a worker left its ring while the host still posted to it: the ring is closed, jobs left in it reach their \
         deadline, and the posting thread attaches a new ring on its next blocking call"
    );
}
