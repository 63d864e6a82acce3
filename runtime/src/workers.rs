//! The worker pool of blocking plugins: phase calls of an instance flagged
//! [`WEFT_PLUGIN_FLAG_BLOCKING`](crate::abi::WEFT_PLUGIN_FLAG_BLOCKING) (or configured
//! `blocking`) are never made on the host's threads; each is posted as a [`WeftJob`] to a
//! single-producer/single-consumer ring (`ring.rs`) that a worker of the plugin library consumes,
//! and the worker answers through `complete` like any pending call.
//!
//! # One ring per (runtime, library, host thread)
//! A host thread that posts a job for a library creates its ring on first use (kept in a
//! thread-local, so posting takes no shared lock: the producer handle's mutex is only ever taken
//! by its own thread, and by the runtime when it closes the ring) and calls the library's
//! `attach_worker(ring, ring_len, arena, slot_size, slot_count)` once; the plugin starts a worker
//! (a thread or goroutine of its own) that consumes the ring with the documented protocol.
//!
//! # Memory
//! The region is shared by the ring's [`Producer`] (owned by the runtime, used by one host
//! thread) and its [`Consumer`] handle, which the host keeps, unused, in a process-wide table
//! while a worker reads the region. When the runtime is dropped it drops its producers, which
//! sets each ring's `closed` word and wakes its worker; the worker drains the ring, calls
//! `worker_exit(ring)` and never touches it again; the host then drops the consumer handle and the
//! region is unmapped. A ring whose worker never exits stays mapped (leaked, not freed under it).

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::{Arc, Weak};

use crate::abi::{WeftJob, WeftResult};
use crate::plugin::Library;
use crate::ring::{self, Consumer, Producer, RingError};
use crate::sync::stat::{AtomicU64, Mutex, Ordering};

/// Descriptors per ring unless the runtime is told otherwise.
pub const DEFAULT_RING_CAPACITY: u32 = 1024;

/// One ring as its producer thread and the runtime see it.
pub(crate) struct RingHandle {
    /// `None` once closed by the runtime, or if no worker could be attached.
    producer: Mutex<Option<Producer>>,
    /// The worker called `worker_exit` while the ring was still open.
    gone: std::sync::atomic::AtomicBool,
}

/// A ring whose worker has not exited yet: the host keeps its consumer handle (and so the region).
struct Attached {
    addr: usize,
    _consumer: Consumer,
    ring: Weak<RingHandle>,
    library: String,
}

/// Every attached ring of the process, for `worker_exit`.
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
    capacity: std::sync::atomic::AtomicU32,
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
            capacity: std::sync::atomic::AtomicU32::new(DEFAULT_RING_CAPACITY),
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
        self.capacity.store(capacity, std::sync::atomic::Ordering::Relaxed);
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
    /// needed. `arena`: (base, slot size, slot count) for `attach_worker`.
    pub(crate) fn post(
        &self,
        lib: &Arc<Library>,
        arena: (*const u8, usize, u32),
        job: WeftJob,
    ) -> Result<(), PostError> {
        let key = Arc::as_ptr(lib) as usize;
        let handle = LOCAL.try_with(|local| {
            let mut local = local.borrow_mut();
            if let Some((_, _, h)) = local.iter().find(|(rt, lib, _)| *rt == self.id && *lib == key) {
                return Arc::clone(h);
            }
            // Forget rings of runtimes that closed them.
            local.retain(|(rt, _, h)| *rt == self.id || h.producer.lock().unwrap_or_else(|e| e.into_inner()).is_some());
            let h = self.attach(lib, arena);
            local.push((self.id, key, Arc::clone(&h)));
            h
        });
        let Ok(handle) = handle else {
            return Err(PostError::NoWorker("the posting thread is exiting"));
        };
        if handle.gone.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PostError::NoWorker("the worker of this ring has exited"));
        }
        let mut producer = handle.producer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = producer.as_mut() else {
            return Err(PostError::NoWorker("no worker could be attached to this thread's ring"));
        };
        p.try_send(job).map_err(|_| PostError::Full)
    }

    /// Creates a ring and asks the library to start a worker on it.
    #[cold]
    fn attach(&self, lib: &Arc<Library>, (base, slot_size, slot_count): (*const u8, usize, u32)) -> Arc<RingHandle> {
        let handle = Arc::new(RingHandle {
            producer: Mutex::new(None),
            gone: std::sync::atomic::AtomicBool::new(false),
        });
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&handle));
        let library = lib.path.display().to_string();
        let Some(attach) = lib.attach_worker else {
            tracing::error!(%library, "a blocking plugin instance of a library without attach_worker");
            return handle;
        };
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        let (producer, consumer) = match ring::ring(capacity) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(%library, "cannot create a worker ring: {e}");
                return handle;
            }
        };
        let (addr, len) = producer.region();
        // Registered before the call: the worker may leave (and call worker_exit) at once.
        ATTACHED.lock().unwrap_or_else(|e| e.into_inner()).push(Attached {
            addr: addr as usize,
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
                "attach_worker refused: blocking plugin calls from this thread fail"
            );
            // No worker started: the consumer handle goes, and with the producer the region.
            let producer = handle.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
            let att = {
                let mut all = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
                all.iter()
                    .position(|a| a.addr == addr as usize)
                    .map(|i| all.swap_remove(i))
            };
            drop((producer, att));
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
            let producer = r.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
            // Producer::drop publishes what is staged, stores `closed = 1` and wakes the worker.
            drop(producer);
        }
    }
}

/// `WeftHostApi::worker_exit`: the worker on `ring` has stopped for good. Never unwinds.
pub(crate) unsafe extern "C" fn host_worker_exit(ring: *const c_void) {
    let _ = std::panic::catch_unwind(|| worker_exit(ring as usize));
}

fn worker_exit(addr: usize) {
    let found = {
        let mut all = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().position(|a| a.addr == addr).map(|i| all.swap_remove(i))
    };
    let Some(att) = found else {
        tracing::warn!(
            ring = format_args!("{addr:#x}"),
            "worker_exit() with a pointer that is not an attached worker ring (or one that exited already); ignored"
        );
        return;
    };
    if let Some(h) = att.ring.upgrade() {
        let open = h.producer.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if open {
            h.gone.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                library = %att.library,
                "a worker left its ring while the host still posts to it: blocking calls posted from that thread fail \
                 from now on, and jobs left in the ring reach their deadline"
            );
        }
    }
    tracing::debug!(library = %att.library, "worker left its ring");
    // The consumer handle goes now; the region is unmapped when the producer is gone too.
    drop(att);
}
