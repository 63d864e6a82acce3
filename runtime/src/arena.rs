//! The request arena: one anonymous mmap region cut into fixed-size slots, one slot per request
//! that has plugins on its route. The plugin reads the request view in place from a slot and
//! writes its mutation batch into an out slot (or the rest of its slot), so no request byte is
//! copied on the way to Go.
//!
//! # Pools
//! [`Arena::pools`] cuts one mapping into pools (size classes) laid out one after the other:
//! the runtime's request slots, its out slots, and larger buffer classes. Each pool is an
//! [`Arena`] of its own, with everything below (free list, per-thread caches, generations); a
//! thread keeps one cache per pool position. Every pool's slot size is a multiple of the first
//! pool's, so a slot of the first size is named by its unit index in the mapping
//! ([`SlotLease::unit`]), which is how a worker ring (that knows the mapping as units of one
//! size) is told where a job's output goes.
//!
//! # Allocation
//! The region is mapped once at start-up with `MAP_POPULATE` (every page is faulted in then, so
//! the request path never takes a page fault) and its size is fixed by the config
//! (`slot_count × slot_size`). Free slots are kept in two tiers, neither of which takes a lock:
//! - a global lock-free free list: a Treiber stack of slot indices linked through `next`,
//!   whose head packs `(tag << 32) | index` into one `AtomicU64`. Every successful push or pop
//!   bumps the tag, so a head that was popped and pushed back between another thread's read and
//!   its compare-and-swap (the ABA problem) no longer compares equal;
//! - a per-thread cache ([`LocalCache`]) of up to `2 × batch` indices. A thread takes slots from
//!   its cache and refills it with one CAS that pops `batch` slots at once; when it frees into a
//!   full cache it pushes `batch` of them back as one linked chain with one CAS.
//!
//! Small arenas (fewer than 128 slots) use no cache, so no slot can be stranded in a thread that
//! stopped allocating; large ones strand at most `2 × batch` (≤ 32) slots per thread.
//!
//! # The fast path touches only thread-local state
//! Leasing from and returning to the calling thread's cache makes no atomic read-modify-write and
//! writes no cache line another thread writes:
//! - a lease does not hold an `Arc` (no shared refcount per request): it holds a pointer to the
//!   arena's shared state, which stays alive while any lease exists (see *Lifetime*);
//! - the in-use count is kept per cache (a [`Shard`] written only by the thread owning the cache,
//!   with plain relaxed load + store) and summed on read by [`Arena::in_use`]; leases taken or
//!   returned through the global list (no cache) count in one shared atomic, off the fast path;
//! - each slot's generation and free-list link sit in their own cache line ([`SlotMeta`]), so two
//!   threads bumping the generations of neighbouring slots do not false-share.
//!
//! Each hand-out bumps the slot's generation; a slot handle (index, generation) identifies one
//! tenancy of a slot, and a handle whose generation is not the current one is stale
//! ([`Arena::is_current`]).
//!
//! # Lifetime
//! [`Arena`] is a handle (shared as `Arc<Arena>`; thread caches bound to the arena hold a clone)
//! to state allocated separately. When the last handle goes, the state is freed (and the region
//! unmapped, once no other pool of the mapping is left) only if every slot is back on the global
//! free list; if leases are still out, the state and the mapping are **leaked deliberately** (and
//! a warning logged), so an outstanding lease, and a stale pointer kept by a misbehaving plugin,
//! still point into mapped memory. The pages of the free slots are given back to the OS then
//! (`MADV_DONTNEED`: they stay mapped and read as zeroes), so a leaked arena keeps resident only
//! what its leases hold; a pool freed while another pool of its mapping lives on gives its pages
//! back too. [`mapped_bytes`] and [`released_bytes`] count both, process-wide. A lease returning
//! its slot to the global list makes the push CAS its last access to the arena, and the dropping
//! handle's check reads the list head with acquire, so a freed arena is never touched again. In
//! the runtime an arena lives as long as a runtime of its layout does: config reloads that keep
//! the layout keep the arena (`Runtime::replacing`).
//!
//! All atomics on the hand-off paths come from [`crate::sync`], so the loom models below (`loom_models`) check this
//! code. Statistics (the in-use shards) and the handle's `Arc` are `std`'s even under loom: they
//! order no hand-off (and stable Rust accepts only `std`'s `Arc` as a `self` type).

use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::stat;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// Slot sizes are rounded up to this so every slot starts cache-line aligned.
const SLOT_ALIGN: usize = 64;

/// No slot: the empty free list, the end of a chain.
const NIL: u32 = u32::MAX;

/// Largest per-thread refill batch; the cache holds up to twice this.
pub const MAX_BATCH: u32 = 16;

/// Most pools (size classes) one mapping may be cut into; each has its own per-thread cache.
pub const MAX_POOLS: usize = 4;
const CACHE_CAP: usize = 2 * MAX_BATCH as usize;

#[inline]
fn pack(tag: u32, index: u32) -> u64 {
    ((tag as u64) << 32) | index as u64
}

#[inline]
fn unpack(head: u64) -> (u32, u32) {
    ((head >> 32) as u32, head as u32)
}

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("arena slot_count must be between 1 and {max}, got {got}")]
    SlotCount { got: u32, max: u32 },
    #[error("arena slot_size must be between {min} and {max} bytes, got {got}")]
    SlotSize { got: u32, min: u32, max: u32 },
    #[error("arena mmap of {bytes} bytes failed: {source}")]
    Map { bytes: usize, source: std::io::Error },
    #[error("an arena has 1 to {MAX_POOLS} pools, got {got}")]
    Pools { got: usize },
    #[error("arena pool {pool}: slot_size {got} must be at least the first pool's ({first})")]
    PoolSlotSize { pool: usize, got: u32, first: u32 },
    #[error("arena of {units} slot-sized units is larger than {max}")]
    Units { units: u64, max: u32 },
}

/// One pool (size class) of [`Arena::pools`]: `slot_count` slots of `slot_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    pub slot_count: u32,
    pub slot_size: u32,
}

pub const MIN_SLOT_SIZE: u32 = 4096;
pub const MAX_SLOT_SIZE: u32 = 16 << 20;
pub const MAX_SLOT_COUNT: u32 = 1 << 20;

/// One slot's metadata, alone in its cache line: the generation is written on every lease by the
/// leasing thread, and slots cached by different threads must not share a line.
#[repr(align(64))]
struct SlotMeta {
    generation: AtomicU32,
    /// The slot after this one on the free list (meaningful only while the slot is on it).
    next: AtomicU32,
}

/// The free-list head, alone in its cache line (it is written by every refill and give-back).
#[repr(align(64))]
struct Head(AtomicU64);

/// One cache's share of the in-use count: written only by the thread that owns the cache
/// (relaxed load + store, no read-modify-write), summed by [`Arena::in_use`].
#[repr(align(64))]
#[derive(Default)]
pub struct Shard {
    net: stat::AtomicI64,
}

impl Shard {
    #[inline]
    fn add(&self, d: i64) {
        // Single writer: a load and a store, not a locked read-modify-write.
        let v = self.net.load(stat::Ordering::Relaxed);
        self.net.store(v + d, stat::Ordering::Relaxed);
    }
}

/// The arena's state, shared by its handles, caches and leases (see *Lifetime*).
struct Shared {
    head: Head,
    // Owns the mapping (shared by the pools cut from it); all access to slots goes through
    // `base`.
    map: Arc<Mapping>,
    base: *mut u8,
    /// Which of the thread's caches serves this pool (its index in [`Arena::pools`]).
    class: usize,
    /// Slot 0's position in the mapping, in units of the first pool's slot size, and how many
    /// such units one slot spans (1 for pools of the first pool's slot size).
    first_unit: u32,
    units_per_slot: u32,
    slot_size: usize,
    slot_count: u32,
    /// Slots popped per refill of a per-thread cache; 0 disables the caches.
    batch: u32,
    slots: Box<[SlotMeta]>,
    /// In-use count of leases taken or returned without a cache, and of caches unbound since.
    global_net: stat::AtomicI64,
    /// The shards of the caches bound to this arena now.
    shards: stat::Mutex<Vec<Arc<Shard>>>,
    /// The most slots seen in use at once (see [`Arena::high_water`]).
    high_water: stat::AtomicU64,
}

pub struct Arena {
    shared: NonNull<Shared>,
    /// Copy of `Shared::batch`, read on every `acquire` (one pointer chase less).
    batch: u32,
}

// SAFETY: the mapping is shared memory addressed only through leases; a slot's bytes are reached
// only through the unique `SlotLease` that owns that slot (or `&Arena` methods that never touch
// slot bytes). Everything else in `Shared` is atomics or behind a mutex.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Shared {
    /// Pushes the chain `first → … → last` (already linked through `next`) in one CAS. The
    /// successful CAS is the caller's last access to the arena (see *Lifetime*).
    fn push_chain(&self, first: u32, last: u32) {
        let mut cur = self.head.0.load(Ordering::Relaxed);
        loop {
            let (tag, top) = unpack(cur);
            self.slots[last as usize].next.store(top, Ordering::Relaxed);
            // Release: the links above, and everything the freeing thread wrote into the slots,
            // happen-before the thread that pops them.
            match self.head.0.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), first),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Pops up to `out.len()` slots in one CAS; returns how many.
    fn pop_batch(&self, out: &mut [u32]) -> usize {
        let mut cur = self.head.0.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(cur);
            if top == NIL || out.is_empty() {
                return 0;
            }
            // Walk `out.len()` links. Another thread may pop and re-link these nodes meanwhile:
            // then the head's tag has moved on, the CAS below fails and the walk is redone. Every
            // value ever stored in `next` is NIL or a valid index, so the walk stays in bounds.
            let mut n = 0;
            let mut node = top;
            while n < out.len() && node != NIL {
                out[n] = node;
                n += 1;
                node = self.slots[node as usize].next.load(Ordering::Relaxed);
            }
            // Acquire (with the release sequence of pushes on `head`) makes the links read above
            // and the slots' previous contents visible.
            match self.head.0.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), node),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return n,
                Err(now) => cur = now,
            }
        }
    }

    /// Pushes `items` as one chain.
    fn push_all(&self, items: &[u32]) {
        let (Some(&first), Some(&last)) = (items.first(), items.last()) else {
            return;
        };
        for w in items.windows(2) {
            self.slots[w[0] as usize].next.store(w[1], Ordering::Relaxed);
        }
        self.push_chain(first, last);
    }

    fn free_list_len(&self) -> usize {
        self.free_indices().len()
    }

    /// The slots on the global free list (at most `slot_count`, even on a corrupt chain).
    fn free_indices(&self) -> Vec<u32> {
        let (_, mut node) = unpack(self.head.0.load(Ordering::Acquire));
        let mut free = Vec::new();
        while node != NIL && free.len() < self.slot_count as usize {
            free.push(node);
            node = self.slots[node as usize].next.load(Ordering::Relaxed);
        }
        free
    }

    /// Gives the pages of the slot runs `(first, count)` back to the OS (see
    /// [`Mapping::release`]); only for slots nobody uses any more.
    fn release_runs(&self, runs: &[(u32, u32)]) {
        for &(first, count) in runs {
            let start = self.base.wrapping_add(first as usize * self.slot_size);
            let end = start.wrapping_add(count as usize * self.slot_size);
            self.map.release(start.cast_const()..end.cast_const());
        }
    }

    /// Slots leased now (see [`Arena::in_use`]).
    fn in_use(&self) -> u64 {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let sum = shards
            .iter()
            .fold(self.global_net.load(stat::Ordering::Relaxed), |a, s| {
                a + s.net.load(stat::Ordering::Relaxed)
            });
        sum.max(0) as u64
    }

    /// Raises the high-water mark to `in_use` (a load, and a write only for a new high).
    #[inline]
    fn note_in_use(&self, in_use: i64) {
        let n = in_use.max(0) as u64;
        if n > self.high_water.load(stat::Ordering::Relaxed) {
            self.high_water.fetch_max(n, stat::Ordering::Relaxed);
        }
    }

    /// Counts the slots in use (one lock, a load per bound cache) for the high-water mark: on
    /// the refill of a cache, off the lease's fast path.
    #[cold]
    #[inline(never)]
    fn sample_in_use(&self) {
        self.note_in_use(self.in_use() as i64);
    }

    /// Starts a tenancy of `index` (taken off the free list or a cache by the caller).
    #[inline]
    fn lease(&self, index: u32) -> SlotLease {
        // Generation 0 means "never used" to plugins, so skip it on wrap-around. Only the holder
        // of the slot writes its generation; readers compare handles against it.
        let g = &self.slots[index as usize].generation;
        let mut generation = g.load(Ordering::Relaxed).wrapping_add(1);
        if generation == 0 {
            generation = 1;
        }
        g.store(generation, Ordering::Release);
        SlotLease {
            shared: NonNull::from(self),
            handle: index as u64 | (generation as u64) << 32,
        }
    }

    /// Returns `index` straight to the global list. The count goes first: after the push the
    /// arena may be freed (the push is the last access).
    fn release_global(&self, index: u32) {
        self.global_net.fetch_sub(1, stat::Ordering::Relaxed);
        self.push_chain(index, index);
    }

    /// Returns `index` through `cache` if it is bound to this arena (a full cache first gives
    /// `batch` slots back in one CAS), else to the global list.
    #[inline]
    fn release_with(&self, index: u32, cache: &mut LocalCache) {
        if !std::ptr::eq(cache.shared, self) {
            return self.release_global(index);
        }
        if cache.len == cache.cap {
            let keep = cache.len - cache.batch;
            self.push_all(&cache.items[keep..cache.len]);
            cache.len = keep;
        }
        cache.items[cache.len] = index;
        cache.len += 1;
        if let Some(s) = &cache.shard {
            s.add(-1);
        }
    }
}

fn check(slot_count: u32, slot_size: u32) -> Result<(), ArenaError> {
    if slot_count == 0 || slot_count > MAX_SLOT_COUNT {
        return Err(ArenaError::SlotCount {
            got: slot_count,
            max: MAX_SLOT_COUNT,
        });
    }
    if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) {
        return Err(ArenaError::SlotSize {
            got: slot_size,
            min: MIN_SLOT_SIZE,
            max: MAX_SLOT_SIZE,
        });
    }
    Ok(())
}

/// Bytes of every arena mapping in the process (see [`mapped_bytes`]).
static MAPPED: stat::AtomicU64 = stat::AtomicU64::new(0);
/// Bytes of those mappings given back to the OS (see [`released_bytes`]).
static RELEASED: stat::AtomicU64 = stat::AtomicU64::new(0);

/// Bytes of all arena mappings the process holds now: the arenas in use and arenas kept mapped
/// after their runtime went because cancelled calls still hold slots in them.
pub fn mapped_bytes() -> u64 {
    MAPPED.load(stat::Ordering::Relaxed)
}

/// Of [`mapped_bytes`], the bytes given back to the OS (`MADV_DONTNEED`) because their arena was
/// dropped while some of its slots were still leased: they take no memory.
pub fn released_bytes() -> u64 {
    RELEASED.load(stat::Ordering::Relaxed)
}

/// One arena mapping (all pools cut from it), counted in [`mapped_bytes`] while it exists.
struct Mapping {
    /// Owned only: the memory is reached through the start pointer [`map`] returned.
    _map: MmapMut,
    len: usize,
    /// Bytes of it counted in [`released_bytes`].
    released: stat::AtomicU64,
}

impl Mapping {
    /// Gives the whole pages inside `base + start .. base + end` back to the OS: the next touch
    /// reads zeroes (the range stays mapped, so a stale pointer still points at mapped memory).
    fn release(&self, range: std::ops::Range<*const u8>) {
        let page = page_size();
        let (start, end) = (range.start as usize, range.end as usize);
        let (from, to) = (start.next_multiple_of(page), end / page * page);
        if to <= from {
            return;
        }
        // SAFETY: `from..to` lies inside this mapping (the caller's range does); MADV_DONTNEED on
        // private anonymous memory only drops pages, and nobody uses these bytes any more.
        let rc = unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
        if rc == 0 {
            let n = (to - from) as u64;
            self.released.fetch_add(n, stat::Ordering::Relaxed);
            RELEASED.fetch_add(n, stat::Ordering::Relaxed);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        MAPPED.fetch_sub(self.len as u64, stat::Ordering::Relaxed);
        RELEASED.fetch_sub(self.released.load(stat::Ordering::Relaxed), stat::Ordering::Relaxed);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// MAP_POPULATE: every page is faulted in now, not on a request's first touch. Returns the
/// mapping and its start, through which every slot is reached.
fn map(bytes: usize) -> Result<(Arc<Mapping>, *mut u8), ArenaError> {
    let mut map = MmapOptions::new()
        .len(bytes)
        .populate()
        .map_anon()
        .map_err(|source| ArenaError::Map { bytes, source })?;
    let base = map.as_mut_ptr();
    MAPPED.fetch_add(bytes as u64, stat::Ordering::Relaxed);
    let map = Arc::new(Mapping {
        _map: map,
        len: bytes,
        released: stat::AtomicU64::new(0),
    });
    Ok((map, base))
}

impl Arena {
    /// An arena with the default per-thread cache batch (`slot_count / 128`, at most
    /// [`MAX_BATCH`]; no cache below 128 slots).
    pub fn new(slot_count: u32, slot_size: u32) -> Result<Arc<Arena>, ArenaError> {
        Arena::with_batch(slot_count, slot_size, (slot_count / 128).min(MAX_BATCH))
    }

    /// An arena whose per-thread caches refill `batch` slots at a time (0: no caches). For tests
    /// and models; [`Arena::new`] picks the batch.
    pub fn with_batch(slot_count: u32, slot_size: u32, batch: u32) -> Result<Arc<Arena>, ArenaError> {
        check(slot_count, slot_size)?;
        let slot_size = (slot_size as usize).next_multiple_of(SLOT_ALIGN);
        let (map, base) = map(slot_size * slot_count as usize)?;
        Ok(Arena::build(map, base, slot_count, slot_size, batch, 0, 0, 1))
    }

    /// Cuts one mapping into pools (size classes): pool `i` holds `specs[i].slot_count` slots of
    /// `specs[i].slot_size` bytes, laid out one pool after the other. Every pool is an arena of
    /// its own (its own lock-free free list, its own per-thread cache), so leasing from one never
    /// contends with another. The first pool's slot size is the mapping's unit: the other pools'
    /// sizes are rounded up to a multiple of it, so every slot starts at a whole number of units
    /// from the start ([`SlotLease::unit`]), which is how a worker ring names a slot.
    pub fn pools(specs: &[PoolSpec]) -> Result<Vec<Arc<Arena>>, ArenaError> {
        if specs.is_empty() || specs.len() > MAX_POOLS {
            return Err(ArenaError::Pools { got: specs.len() });
        }
        for spec in specs {
            check(spec.slot_count, spec.slot_size)?;
        }
        let unit = (specs[0].slot_size as usize).next_multiple_of(SLOT_ALIGN);
        let mut layout = Vec::with_capacity(specs.len());
        let mut units = 0u64;
        for (pool, spec) in specs.iter().enumerate() {
            if (spec.slot_size as usize) < unit && pool > 0 {
                return Err(ArenaError::PoolSlotSize {
                    pool,
                    got: spec.slot_size,
                    first: specs[0].slot_size,
                });
            }
            let per = (spec.slot_size as usize).div_ceil(unit) as u64;
            layout.push((units, per));
            units += per * u64::from(spec.slot_count);
        }
        if units > u64::from(MAX_SLOT_COUNT) * 4 {
            return Err(ArenaError::Units {
                units,
                max: MAX_SLOT_COUNT * 4,
            });
        }
        let (map, base) = map(units as usize * unit)?;
        Ok(specs
            .iter()
            .zip(layout)
            .enumerate()
            .map(|(class, (spec, (first, per)))| {
                let batch = (spec.slot_count / 128).min(MAX_BATCH);
                // SAFETY: `first` units from the start lie inside the mapping (summed above).
                let at = unsafe { base.add(first as usize * unit) };
                Arena::build(
                    Arc::clone(&map),
                    at,
                    spec.slot_count,
                    per as usize * unit,
                    batch,
                    class,
                    first as u32,
                    per as u32,
                )
            })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        map: Arc<Mapping>,
        base: *mut u8,
        slot_count: u32,
        slot_size: usize,
        batch: u32,
        class: usize,
        first_unit: u32,
        units_per_slot: u32,
    ) -> Arc<Arena> {
        // The free list starts as 0 → 1 → … → slot_count-1.
        let slots = (0..slot_count)
            .map(|i| SlotMeta {
                generation: AtomicU32::new(0),
                next: AtomicU32::new(if i + 1 < slot_count { i + 1 } else { NIL }),
            })
            .collect();
        let shared = Box::new(Shared {
            head: Head(AtomicU64::new(pack(0, 0))),
            map,
            base,
            class,
            first_unit,
            units_per_slot,
            slot_size,
            slot_count,
            batch: batch.min(MAX_BATCH),
            slots,
            global_net: stat::AtomicI64::new(0),
            shards: stat::Mutex::new(Vec::new()),
            high_water: stat::AtomicU64::new(0),
        });
        let batch = shared.batch;
        Arc::new(Arena {
            shared: NonNull::from(Box::leak(shared)),
            batch,
        })
    }

    #[inline]
    fn shared(&self) -> &Shared {
        // SAFETY: `shared` is freed only in `Arena::drop`.
        unsafe { self.shared.as_ref() }
    }

    pub fn slot_count(&self) -> u32 {
        self.shared().slot_count
    }

    pub fn slot_size(&self) -> usize {
        self.shared().slot_size
    }

    /// Start of this pool's slots: slot `i` begins at `base_ptr() + i * slot_size()`. For the
    /// first pool of a mapping, the start of the mapping, which is handed to worker-ring consumers
    /// (`attach_worker`); they address slots by unit ([`SlotLease::unit`]).
    pub fn base_ptr(&self) -> *const u8 {
        self.shared().base
    }

    /// This pool's position in [`Arena::pools`] (0 for an arena of one pool).
    pub fn class(&self) -> usize {
        self.shared().class
    }

    /// Slots per refill of a per-thread cache (0: no caches).
    pub fn batch(&self) -> u32 {
        self.shared().batch
    }

    /// Slots currently leased: the sum of the per-cache shards and the global count. Exact when
    /// no thread is leasing or returning at the time; a statistic otherwise (never negative).
    pub fn in_use(&self) -> u64 {
        self.shared().in_use()
    }

    /// The most slots in use at once so far, as far as the arena looked (no thread is woken to
    /// sample it, and a lease from a thread's cache reads nothing shared), and at least
    /// [`in_use`](Self::in_use) now. The count is read whenever slots leave the global free
    /// list: on every lease of an arena without caches (each moves the global count, so this is
    /// its exact peak) and whenever a thread's cache refills. Between two refills a thread can
    /// lease at most the slots its cache holds (`2 × batch`) without one, so the true peak
    /// is at most `2 × batch` slots per thread with a cache above what this reports.
    pub fn high_water(&self) -> u64 {
        let s = self.shared();
        s.high_water.load(stat::Ordering::Relaxed).max(s.in_use())
    }

    /// Whether `(index, generation)` names the current (or most recent) tenancy of a slot. A
    /// forged index out of range or an older generation is `false`, never a panic.
    pub fn is_current(&self, index: u32, generation: u32) -> bool {
        generation != 0
            && self
                .shared()
                .slots
                .get(index as usize)
                .is_some_and(|s| s.generation.load(Ordering::Acquire) == generation)
    }

    /// Counts the slots on the global free list. Only meaningful while no thread allocates or
    /// frees (tests, models, shutdown checks).
    pub fn free_list_len(&self) -> usize {
        self.shared().free_list_len()
    }

    /// Leases a free slot, or `None` when every slot is in use (the caller answers 503). Uses the
    /// calling thread's cache.
    #[inline]
    pub fn acquire(self: &Arc<Self>) -> Option<SlotLease> {
        #[cfg(not(weft_loom))]
        if self.batch > 0 {
            let class = self.shared().class;
            if let Ok(Some(lease)) =
                THREAD_CACHES.try_with(|c| c[class].try_borrow_mut().ok().map(|mut c| self.acquire_with(&mut c)))
            {
                return lease;
            }
        }
        self.acquire_global()
    }

    /// Leases a slot straight from the global free list.
    pub fn acquire_global(self: &Arc<Self>) -> Option<SlotLease> {
        let s = self.shared();
        let mut one = [NIL];
        (s.pop_batch(&mut one) == 1).then(|| {
            let before = s.global_net.fetch_add(1, stat::Ordering::Relaxed);
            if s.batch == 0 {
                // No caches and so no shards: the global count is the count in use.
                s.note_in_use(before + 1);
            } else {
                s.sample_in_use();
            }
            s.lease(one[0])
        })
    }

    /// Leases a slot through `cache`, refilling it with one batch from the global list when empty.
    #[inline]
    pub fn acquire_with(self: &Arc<Self>, cache: &mut LocalCache) -> Option<SlotLease> {
        if self.batch == 0 {
            return self.acquire_global();
        }
        let s = self.shared();
        if !std::ptr::eq(cache.shared, s) {
            cache.bind(self);
        }
        let refilled = cache.len == 0;
        if refilled {
            cache.len = s.pop_batch(&mut cache.items[..cache.batch]);
            if cache.len == 0 {
                return None;
            }
        }
        cache.len -= 1;
        if let Some(sh) = &cache.shard {
            sh.add(1);
        }
        if refilled {
            s.sample_in_use();
        }
        Some(s.lease(cache.items[cache.len]))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // No handle is left, so no thread cache is bound (caches hold a handle) and nothing can
        // lease; a slot is off the global list only if a lease still holds it. Leases returned
        // from now on only push onto the list, so the walk below sees a consistent chain.
        let s = self.shared();
        let mut free = s.free_indices();
        let leased = s.slot_count as usize - free.len();
        if leased == 0 {
            if Arc::strong_count(&s.map) > 1 {
                // Another pool of the mapping lives on (and may keep it mapped): give this
                // pool's pages back now.
                s.release_runs(&[(0, s.slot_count)]);
            }
            // SAFETY: allocated by `Box::leak` in `build`; no lease, cache or handle is left,
            // and the acquire load of the head in `free_indices` ordered every lease's last
            // access (its push) before this.
            drop(unsafe { Box::from_raw(self.shared.as_ptr()) });
            return;
        }
        // Leased slots keep the state and the mapping (leaked): the bytes of the free ones go
        // back to the OS, so what stays resident is only what the leases hold.
        free.sort_unstable();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for i in free {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == i => *len += 1,
                _ => runs.push((i, 1)),
            }
        }
        s.release_runs(&runs);
        tracing::warn!(
            leased,
            slot_size = s.slot_size,
            "arena dropped while slots are leased: those slots stay mapped (leaked), the pages of the others are released"
        );
    }
}

/// A thread's private stock of free slots of one arena. The runtime keeps one per thread
/// (a `thread_local`); loom models hold one per model thread explicitly. Dropping it gives its
/// slots back to the arena's global list.
pub struct LocalCache {
    /// The arena bound (compared by address on the fast path); null when unbound.
    shared: *const Shared,
    /// Keeps the bound arena alive.
    arena: Option<Arc<Arena>>,
    /// This cache's share of the arena's in-use count.
    shard: Option<Arc<Shard>>,
    len: usize,
    /// The bound arena's batch, and this cache's capacity for it (`2 × batch`).
    batch: usize,
    cap: usize,
    items: [u32; CACHE_CAP],
}

// SAFETY: the raw pointer is only compared, or dereferenced while `arena` keeps it alive; a cache
// is used by whoever holds it `&mut`, and its shard is written only through it.
unsafe impl Send for LocalCache {}

impl Default for LocalCache {
    fn default() -> Self {
        LocalCache::new()
    }
}

impl LocalCache {
    pub const fn new() -> LocalCache {
        LocalCache {
            shared: std::ptr::null(),
            arena: None,
            shard: None,
            len: 0,
            batch: 0,
            cap: 0,
            items: [NIL; CACHE_CAP],
        }
    }

    /// Points the cache at `arena`, first giving back slots of another arena it may hold.
    #[cold]
    fn bind(&mut self, arena: &Arc<Arena>) {
        self.unbind();
        let shard = Arc::new(Shard::default());
        let s = arena.shared();
        s.shards.lock().unwrap_or_else(|e| e.into_inner()).push(shard.clone());
        self.shard = Some(shard);
        self.batch = s.batch as usize;
        self.cap = CACHE_CAP.min(2 * self.batch);
        self.shared = s;
        self.arena = Some(Arc::clone(arena));
    }

    /// Gives every cached slot back, folds the shard into the arena's count and lets go of it.
    fn unbind(&mut self) {
        self.flush();
        if let (Some(arena), Some(shard)) = (&self.arena, self.shard.take()) {
            let s = arena.shared();
            let mut shards = s.shards.lock().unwrap_or_else(|e| e.into_inner());
            s.global_net
                .fetch_add(shard.net.load(stat::Ordering::Relaxed), stat::Ordering::Relaxed);
            shards.retain(|x| !Arc::ptr_eq(x, &shard));
        }
        self.shared = std::ptr::null();
        // May drop the last handle (and free the arena): every slot of ours is back by now.
        self.arena = None;
    }

    /// Gives every cached slot back to its arena's global list.
    pub fn flush(&mut self) {
        if let Some(a) = &self.arena {
            a.shared().push_all(&self.items[..self.len]);
        }
        self.len = 0;
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        self.unbind();
    }
}

#[cfg(not(weft_loom))]
thread_local! {
    // Thread-private: a `RefCell` is enough (nothing here is shared between threads). One cache
    // per pool position, so a thread leasing from several pools of one mapping keeps a cache
    // bound to each instead of rebinding (and flushing) on every switch.
    static THREAD_CACHES: [std::cell::RefCell<LocalCache>; MAX_POOLS] =
        const { [const { std::cell::RefCell::new(LocalCache::new()) }; MAX_POOLS] };
}

/// Exclusive use of one arena slot for one request. Dropping it returns the slot (to the dropping
/// thread's cache when that cache is bound to the same arena, else to the global list).
pub struct SlotLease {
    /// Alive while this lease exists (see *Lifetime* in the module docs).
    shared: NonNull<Shared>,
    /// `index | generation << 32`: two fields, so `Option<SlotLease>` is returned in registers.
    handle: u64,
}

// SAFETY: the lease is the only handle to its slot's bytes; moving it between threads moves that
// exclusive access, and `&SlotLease` gives only read access to plain fields.
unsafe impl Send for SlotLease {}
unsafe impl Sync for SlotLease {}

impl SlotLease {
    #[inline]
    pub fn index(&self) -> u32 {
        self.handle as u32
    }

    #[inline]
    pub fn generation(&self) -> u32 {
        (self.handle >> 32) as u32
    }

    #[inline]
    fn shared(&self) -> &Shared {
        // SAFETY: the arena's state outlives every lease (module docs, *Lifetime*).
        unsafe { self.shared.as_ref() }
    }

    /// The slot's bytes, exclusively.
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let s = self.shared();
        let len = s.slot_size;
        // SAFETY: index < slot_count, so the range lies inside the mapping; this lease is the only
        // owner of the slot until it is dropped, and `&mut self` rules out aliasing through it.
        unsafe { std::slice::from_raw_parts_mut(s.base.add(self.index() as usize * len), len) }
    }

    /// The slot's bytes, read-only (e.g. a lease frozen as the owner of a `Bytes`).
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        let s = self.shared();
        let len = s.slot_size;
        // SAFETY: as in `bytes_mut`; `&self` hands out shared reads only, and no `&mut` access
        // can exist while this borrow lives.
        unsafe { std::slice::from_raw_parts(s.base.add(self.index() as usize * len), len) }
    }

    /// Start of the slot, for handing to a plugin during a call.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.bytes_mut().as_mut_ptr()
    }

    /// Start of the slot without forming a reference to its bytes: for use while a plugin holds a
    /// pending call and may be writing the slot's output area (a `&mut [u8]` over the whole slot
    /// would alias those writes).
    #[inline]
    pub fn raw_ptr(&self) -> *mut u8 {
        let s = self.shared();
        // SAFETY: index < slot_count: the offset lies inside the mapping.
        unsafe { s.base.add(self.index() as usize * s.slot_size) }
    }

    /// Bytes per slot.
    #[inline]
    pub fn slot_size(&self) -> usize {
        self.shared().slot_size
    }

    /// The slot's position in its mapping in units of the first pool's slot size, when the slot
    /// is exactly one unit (a pool of the first pool's size): how a worker ring, which knows
    /// the mapping as `slot_count` units of one size, names it. `None` for larger slots.
    #[inline]
    pub fn unit(&self) -> Option<u32> {
        let s = self.shared();
        (s.units_per_slot == 1).then(|| s.first_unit + self.index())
    }

    /// Returns the slot through `cache` instead of the thread's own cache (loom models, tests).
    pub fn release_into(self, cache: &mut LocalCache) {
        let this = std::mem::ManuallyDrop::new(self);
        this.shared().release_with(this.index(), cache);
    }
}

/// A lease frozen as the owner of a `Bytes` ([`bytes::Bytes::from_owner`]): the slot's bytes are
/// read until the last slice is dropped, then the slot goes back to the arena.
impl AsRef<[u8]> for SlotLease {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for SlotLease {
    #[inline]
    fn drop(&mut self) {
        let s = self.shared();
        #[cfg(not(weft_loom))]
        if THREAD_CACHES
            .try_with(|c| match c[s.class].try_borrow_mut() {
                Ok(mut c) if std::ptr::eq(c.shared, s) => {
                    s.release_with(self.index(), &mut c);
                    true
                }
                _ => false,
            })
            .unwrap_or(false)
        {
            return;
        }
        s.release_global(self.index());
    }
}

#[cfg(all(test, not(weft_loom)))]
mod tests {
    use super::*;

    #[test]
    fn pools_cut_one_mapping_into_size_classes() {
        let pools = Arena::pools(&[
            PoolSpec {
                slot_count: 256,
                slot_size: 4096,
            },
            PoolSpec {
                slot_count: 130,
                slot_size: 4096,
            },
            PoolSpec {
                slot_count: 3,
                slot_size: 5000, // rounded up to two units
            },
        ])
        .unwrap();
        let (req, out, big) = (&pools[0], &pools[1], &pools[2]);
        assert_eq!((req.class(), out.class(), big.class()), (0, 1, 2));
        assert_eq!((out.slot_size(), big.slot_size()), (4096, 8192));
        // One mapping, pools one after the other.
        let base = req.base_ptr() as usize;
        assert_eq!(out.base_ptr() as usize, base + 256 * 4096);
        assert_eq!(big.base_ptr() as usize, base + (256 + 130) * 4096);
        // A thread leasing from two pools keeps a cache bound to each (no rebinding): leases
        // alternate between them and each pool counts only its own.
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(req.acquire().unwrap());
            held.push(out.acquire().unwrap());
        }
        assert_eq!((req.in_use(), out.in_use(), big.in_use()), (100, 100, 0));
        for l in &held {
            let at = l.raw_ptr() as usize;
            let pool = if l.unit().unwrap() < 256 { req } else { out };
            assert_eq!(
                at,
                base + l.unit().unwrap() as usize * 4096,
                "a unit names the slot's place"
            );
            assert!(
                (pool.base_ptr() as usize..pool.base_ptr() as usize + 4096 * pool.slot_count() as usize).contains(&at)
            );
        }
        drop(held);
        assert_eq!((req.in_use(), out.in_use()), (0, 0));
        // The large pool: slots of two units have no unit index, and the pool is bounded.
        let b: Vec<_> = std::iter::from_fn(|| big.acquire()).collect();
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|l| l.unit().is_none() && l.bytes().len() == 8192));
        // Exhausting one pool leaves the others alone.
        let all_out: Vec<_> = std::iter::from_fn(|| out.acquire()).collect();
        assert_eq!(all_out.len(), 130);
        assert!(req.acquire().is_some());
        drop((b, all_out));
        assert_eq!(out.in_use(), 0);
        let again: Vec<_> = std::iter::from_fn(|| out.acquire()).collect();
        assert_eq!(again.len(), 130, "every slot came back");
        // Bad layouts are refused with a reason.
        assert!(matches!(Arena::pools(&[]), Err(ArenaError::Pools { got: 0 })));
        let small = PoolSpec {
            slot_count: 1,
            slot_size: 4096,
        };
        let bigger = PoolSpec {
            slot_count: 1,
            slot_size: 8192,
        };
        assert!(matches!(
            Arena::pools(&[bigger, small]),
            Err(ArenaError::PoolSlotSize { pool: 1, .. })
        ));
        assert!(matches!(Arena::pools(&[small; 5]), Err(ArenaError::Pools { got: 5 })));
    }

    #[test]
    fn leases_are_exclusive_and_bounded() {
        let arena = Arena::new(3, 4096).unwrap();
        let a = arena.acquire().unwrap();
        let b = arena.acquire().unwrap();
        let c = arena.acquire().unwrap();
        assert!(arena.acquire().is_none(), "a fourth lease from three slots");
        let mut seen = [a.index(), b.index(), c.index()];
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(arena.in_use(), 3);
        drop(b);
        assert_eq!(arena.in_use(), 2);
        assert!(arena.acquire().is_some());
    }

    #[test]
    fn generation_changes_on_reuse_and_skips_zero() {
        let arena = Arena::new(1, 4096).unwrap();
        let first = arena.acquire().unwrap();
        assert_ne!(first.generation(), 0);
        let g1 = first.generation();
        drop(first);
        let second = arena.acquire().unwrap();
        assert_ne!(second.generation(), g1);
        drop(second);
        arena.shared().slots[0].generation.store(u32::MAX, Ordering::Relaxed);
        let wrapped = arena.acquire().unwrap();
        assert_eq!(wrapped.generation(), 1, "generation 0 is reserved for 'never used'");
    }

    #[test]
    fn stale_and_forged_handles_are_not_current() {
        let arena = Arena::new(2, 4096).unwrap();
        let a = arena.acquire().unwrap();
        let (i, g) = (a.index(), a.generation());
        assert!(arena.is_current(i, g));
        assert!(!arena.is_current(i, g.wrapping_add(1)));
        assert!(!arena.is_current(i, 0));
        assert!(!arena.is_current(99, g), "index out of range");
        assert!(!arena.is_current(u32::MAX, 1));
        drop(a);
        let b = arena.acquire().unwrap();
        if b.index() == i {
            assert!(!arena.is_current(i, g), "the old tenancy is stale after reuse");
        }
    }

    #[test]
    fn slots_do_not_overlap() {
        let arena = Arena::new(4, 4096).unwrap();
        let mut leases: Vec<_> = (0..4).map(|_| arena.acquire().unwrap()).collect();
        for (i, l) in leases.iter_mut().enumerate() {
            l.bytes_mut().fill(i as u8);
        }
        for (i, l) in leases.iter_mut().enumerate() {
            assert!(l.bytes_mut().iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(Arena::new(0, 4096), Err(ArenaError::SlotCount { .. })));
        assert!(matches!(Arena::new(1, 100), Err(ArenaError::SlotSize { .. })));
    }

    #[test]
    fn caches_refill_in_batches_and_give_back_when_full() {
        let arena = Arena::with_batch(64, 4096, 4).unwrap();
        let mut cache = LocalCache::new();
        let first = arena.acquire_with(&mut cache).unwrap();
        assert_eq!(cache.len(), 3, "one refill pops a batch of 4 and hands out one");
        assert_eq!(arena.free_list_len(), 60);
        let mut held = vec![first];
        for _ in 0..20 {
            held.push(arena.acquire_with(&mut cache).unwrap());
        }
        assert_eq!(arena.in_use(), 21);
        for l in held {
            l.release_into(&mut cache);
        }
        assert!(cache.len() <= 8, "the cache never holds more than 2 × batch");
        assert_eq!(arena.in_use(), 0);
        assert_eq!(arena.free_list_len() + cache.len(), 64);
        drop(cache);
        assert_eq!(arena.free_list_len(), 64, "dropping a cache gives its slots back");
    }

    #[test]
    fn exhaustion_with_caches_is_none_not_a_hang() {
        let arena = Arena::with_batch(8, 4096, 4).unwrap();
        let mut cache = LocalCache::new();
        let held: Vec<_> = (0..8).map(|_| arena.acquire_with(&mut cache).unwrap()).collect();
        assert!(arena.acquire_with(&mut cache).is_none());
        assert!(arena.acquire().is_none());
        drop(held);
        assert_eq!(arena.in_use(), 0);
    }

    #[test]
    fn a_thread_cache_moves_between_arenas() {
        let a = Arena::with_batch(256, 4096, 8).unwrap();
        let b = Arena::with_batch(256, 4096, 8).unwrap();
        drop(a.acquire().unwrap());
        drop(b.acquire().unwrap());
        // Using b flushed this thread's cache of a back to a's global list.
        assert_eq!(a.free_list_len(), 256);
    }

    #[test]
    fn in_use_counts_leases_moved_between_threads() {
        let arena = Arena::with_batch(512, 4096, 8).unwrap();
        let held: Vec<_> = (0..20).map(|_| arena.acquire().unwrap()).collect();
        assert_eq!(arena.in_use(), 20);
        // Dropped on a thread whose cache is not bound to this arena: the global list.
        std::thread::spawn(move || drop(held)).join().unwrap();
        assert_eq!(arena.in_use(), 0);
        let a2 = arena.clone();
        let moved = std::thread::spawn(move || {
            let v: Vec<_> = (0..5).map(|_| a2.acquire().unwrap()).collect();
            v
        })
        .join()
        .unwrap();
        // That thread exited: its cache was unbound and its count folded into the arena's.
        assert_eq!(arena.in_use(), 5);
        drop(moved);
        assert_eq!(arena.in_use(), 0);
        drop(arena.acquire().unwrap());
        assert_eq!(arena.in_use(), 0);
    }

    /// An arena without caches moves its one global count on every lease: its high-water mark
    /// is the exact peak, from any thread, and it stays after the slots go back.
    #[test]
    fn high_water_of_an_arena_without_caches_is_its_exact_peak() {
        let arena = Arena::with_batch(100, 4096, 0).unwrap();
        assert_eq!(arena.high_water(), 0);
        let mut held: Vec<_> = (0..30).map(|_| arena.acquire().unwrap()).collect();
        held.truncate(10);
        let a2 = arena.clone();
        let theirs = std::thread::spawn(move || (0..25).map(|_| a2.acquire().unwrap()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_eq!(arena.in_use(), 35);
        assert_eq!(arena.high_water(), 35, "10 held here and 25 there, after 30 here alone");
        drop((held, theirs));
        assert_eq!(arena.in_use(), 0);
        assert_eq!(arena.high_water(), 35);
    }

    /// With caches, the count is read at each refill: a burst that came and went is seen within
    /// `2 × batch` slots per thread of its peak, without anyone sampling in between.
    #[test]
    fn high_water_with_caches_sees_a_burst_that_came_and_went() {
        const BATCH: u32 = 8;
        let arena = Arena::with_batch(512, 4096, BATCH).unwrap();
        let burst = |n: usize| {
            let a = arena.clone();
            move || drop((0..n).map(|_| a.acquire().unwrap()).collect::<Vec<_>>())
        };
        burst(100)();
        assert_eq!(arena.in_use(), 0);
        let seen = arena.high_water();
        assert!(
            (100 - 2 * BATCH as u64..=100).contains(&seen),
            "one thread's burst of 100: {seen}"
        );
        // Two threads at once, each holding 150 until both have them: a peak of 300.
        let both = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let held: Vec<_> = (0..150).map(|_| arena.acquire().unwrap()).collect();
                    both.wait();
                    drop(held);
                });
            }
        });
        assert_eq!(arena.in_use(), 0);
        let seen = arena.high_water();
        assert!(
            (300 - 2 * 2 * BATCH as u64..=300).contains(&seen),
            "two threads' 150 each: {seen}"
        );
        // Leases recycled through one cache: a refill, then none; the mark stays where it was.
        let mut cache = LocalCache::new();
        for _ in 0..1000 {
            arena.acquire_with(&mut cache).unwrap().release_into(&mut cache);
        }
        assert_eq!(arena.high_water(), seen);
    }

    /// Which pages of `range` are resident (mincore).
    fn resident(range: std::ops::Range<usize>) -> Vec<bool> {
        let page = page_size();
        let mut v = vec![0u8; (range.end - range.start).div_ceil(page)];
        // SAFETY: the range is mapped (the caller holds the mapping) and `v` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                range.start as *mut libc::c_void,
                range.end - range.start,
                v.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn a_dropped_arena_with_leases_out_gives_the_other_pages_back() {
        let page = page_size();
        let spec = |slot_count| PoolSpec {
            slot_count,
            slot_size: page as u32,
        };
        let pools = Arena::pools(&[spec(8), spec(4)]).unwrap();
        let base = pools[0].base_ptr() as usize;
        let all = base..base + 12 * page;
        assert!(resident(all.clone()).iter().all(|&r| r), "populated at start");
        let map = Arc::clone(&pools[0].shared().map);
        let held: Vec<_> = (0..3).map(|_| pools[0].acquire_global().unwrap()).collect();
        let mut kept = held.into_iter().nth(1).unwrap(); // one lease out, the others back
        let kept_at = kept.index() as usize;
        drop(pools);
        // The out pool had every slot back: released whole. The request pool keeps only the slot
        // still leased.
        let now = resident(all.clone());
        let expect: Vec<bool> = (0..12).map(|p| p == kept_at).collect();
        assert_eq!(now, expect);
        assert_eq!(map.released.load(stat::Ordering::Relaxed), 11 * page as u64);
        assert!(released_bytes() >= 11 * page as u64);
        assert!(mapped_bytes() >= 12 * page as u64, "still mapped");
        // The lease still points at mapped memory.
        kept.bytes_mut().fill(9);
        assert!(kept.bytes().iter().all(|&b| b == 9));
        drop(kept);
    }

    #[test]
    fn a_lease_may_outlive_its_arena_handle() {
        let arena = Arena::with_batch(2, 4096, 0).unwrap();
        let mut lease = arena.acquire().unwrap();
        drop(arena); // leaked, not unmapped: the lease is still out
        lease.bytes_mut().fill(7);
        drop(lease);
        let arena = Arena::with_batch(2, 4096, 0).unwrap();
        drop(arena.acquire().unwrap());
        drop(arena); // every slot back: freed
    }
}

#[cfg(all(test, weft_loom))]
mod loom_models {
    //! loom models of the arena's free list and per-thread caches, checking the shipped code
    //! (`crate::arena` built with `--cfg weft_loom`).
    //! Run by `scripts/loom` (see docs/loom.md, which also lists the planted bug each model caught).

    use std::sync::Arc;

    use crate::arena::{Arena, LocalCache};
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::thread;

    /// Stands in for a slot's bytes: loom reports two accesses without happens-before between them
    /// (a slot handed to a new tenant before the old tenant's writes are visible), and `owned`
    /// catches a slot held by two tenants at once.
    struct Slots {
        data: Vec<UnsafeCell<u32>>,
        owned: Vec<AtomicBool>,
    }

    impl Slots {
        fn new(n: u32) -> Arc<Slots> {
            Arc::new(Slots {
                data: (0..n).map(|_| UnsafeCell::new(0)).collect(),
                owned: (0..n).map(|_| AtomicBool::new(false)).collect(),
            })
        }

        fn take(&self, i: u32, who: u32) {
            assert!(
                !self.owned[i as usize].swap(true, Ordering::Relaxed),
                "slot {i} handed out twice"
            );
            self.data[i as usize].with_mut(|p| unsafe { *p = who });
        }

        fn give(&self, i: u32, who: u32) {
            self.data[i as usize].with(|p| assert_eq!(unsafe { *p }, who, "slot {i} overwritten while held"));
            assert!(
                self.owned[i as usize].swap(false, Ordering::Relaxed),
                "slot {i} freed twice"
            );
        }
    }

    /// Two threads on the global free list with two slots. One thread holding one slot while the other
    /// pops and pushes is exactly the ABA schedule: without the tag in the head, the stale CAS
    /// installs a slot that is in use as the new head, and it is handed out twice.
    #[test]
    fn global_list_allocate_free_across_threads() {
        loom::model(|| {
            let arena = Arena::with_batch(2, 4096, 0).unwrap();
            let slots = Slots::new(2);
            let t = {
                let (arena, slots) = (arena.clone(), slots.clone());
                thread::spawn(move || {
                    let a = arena.acquire_global();
                    if let Some(a) = &a {
                        slots.take(a.index(), 1);
                    }
                    let b = arena.acquire_global();
                    if let Some(b) = &b {
                        slots.take(b.index(), 1);
                    }
                    for l in [a, b].into_iter().flatten() {
                        slots.give(l.index(), 1);
                    }
                })
            };
            let x = arena.acquire_global();
            if let Some(x) = &x {
                slots.take(x.index(), 2);
            }
            let y = arena.acquire_global();
            if let Some(y) = &y {
                slots.take(y.index(), 2);
            }
            if let Some(x) = x {
                slots.give(x.index(), 2);
            }
            let z = arena.acquire_global();
            if let Some(z) = &z {
                slots.take(z.index(), 2);
            }
            for l in [y, z].into_iter().flatten() {
                slots.give(l.index(), 2);
            }
            t.join().unwrap();
            assert_eq!(arena.in_use(), 0);
            assert_eq!(arena.free_list_len(), 2, "every slot back on the free list");
        });
    }

    /// Per-thread caches: each thread refills a batch of 2 from a list of 3 (so one refill is
    /// partial and one may find the list empty), uses the slots, frees them into its cache and
    /// flushes the cache back as one chain. Slots flow between threads only through refill and
    /// flush, so a missing release/acquire there is a data race on the slot contents.
    #[test]
    fn cache_refill_and_flush_across_threads() {
        loom::model(|| {
            let arena = Arena::with_batch(3, 4096, 2).unwrap();
            let slots = Slots::new(3);
            let worker = |who: u32, arena: Arc<Arena>, slots: Arc<Slots>| {
                move || {
                    let mut cache = LocalCache::new();
                    let mut held = Vec::new();
                    for _ in 0..2 {
                        if let Some(l) = arena.acquire_with(&mut cache) {
                            slots.take(l.index(), who);
                            held.push(l);
                        }
                    }
                    for l in held {
                        slots.give(l.index(), who);
                        l.release_into(&mut cache);
                    }
                    // Reuse one from the cache (no CAS), then give everything back.
                    if let Some(l) = arena.acquire_with(&mut cache) {
                        slots.take(l.index(), who);
                        slots.give(l.index(), who);
                        l.release_into(&mut cache);
                    }
                    drop(cache);
                }
            };
            let t = thread::spawn(worker(1, arena.clone(), slots.clone()));
            worker(2, arena.clone(), slots.clone())();
            t.join().unwrap();
            assert_eq!(arena.in_use(), 0);
            assert_eq!(arena.free_list_len(), 3, "every slot back on the free list");
        });
    }
}
