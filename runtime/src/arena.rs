//! The request arena: one anonymous mmap region cut into fixed-size slots, one slot per request
//! that has plugins on its route. The plugin reads the request view in place from a slot and
//! writes its mutation batch into the rest of it, so no request byte is copied on the way to Go.
//!
//! Slots are handed out from a bounded lock-free queue of free indices. Each hand-out bumps the
//! slot's generation, which plugins use to tell a new request from the previous tenant of the
//! slot. The region is never unmapped while any lease exists (leases hold an `Arc<Arena>`), and a
//! stale pointer kept by a misbehaving plugin still points into mapped memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use memmap2::MmapMut;

/// Slot sizes are rounded up to this so every slot starts cache-line aligned.
const SLOT_ALIGN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("arena slot_count must be between 1 and {max}, got {got}")]
    SlotCount { got: u32, max: u32 },
    #[error("arena slot_size must be between {min} and {max} bytes, got {got}")]
    SlotSize { got: u32, min: u32, max: u32 },
    #[error("arena mmap of {bytes} bytes failed: {source}")]
    Map { bytes: usize, source: std::io::Error },
}

pub const MIN_SLOT_SIZE: u32 = 4096;
pub const MAX_SLOT_SIZE: u32 = 16 << 20;
pub const MAX_SLOT_COUNT: u32 = 1 << 20;

pub struct Arena {
    // Kept only to own the mapping; all access goes through `base`.
    _map: MmapMut,
    base: *mut u8,
    slot_size: usize,
    slot_count: u32,
    free: ArrayQueue<u32>,
    generations: Box<[AtomicU32]>,
    in_use: AtomicU64,
}

// SAFETY: the mapping is shared memory addressed only through leases; a slot's bytes are reached
// only through the unique `SlotLease` that owns that slot (or `&Arena` methods that never touch
// slot bytes).
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    pub fn new(slot_count: u32, slot_size: u32) -> Result<Arc<Arena>, ArenaError> {
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
        let slot_size = (slot_size as usize).next_multiple_of(SLOT_ALIGN);
        let bytes = slot_size * slot_count as usize;
        let mut map = MmapMut::map_anon(bytes).map_err(|source| ArenaError::Map { bytes, source })?;
        let base = map.as_mut_ptr();
        let free = ArrayQueue::new(slot_count as usize);
        for i in 0..slot_count {
            // Cannot fail: the queue has exactly slot_count places.
            let _ = free.push(i);
        }
        let generations = (0..slot_count).map(|_| AtomicU32::new(0)).collect();
        Ok(Arc::new(Arena {
            _map: map,
            base,
            slot_size,
            slot_count,
            free,
            generations,
            in_use: AtomicU64::new(0),
        }))
    }

    /// Leases a free slot, or `None` when every slot is in use (the caller answers 503).
    pub fn acquire(self: &Arc<Self>) -> Option<SlotLease> {
        let index = self.free.pop()?;
        // Generation 0 means "never used" to plugins, so skip it on wrap-around.
        let g = &self.generations[index as usize];
        let mut generation = g.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if generation == 0 {
            generation = g.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(SlotLease {
            arena: Arc::clone(self),
            index,
            generation,
        })
    }

    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Slots currently leased.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// Exclusive use of one arena slot for one request. Dropping it returns the slot.
pub struct SlotLease {
    arena: Arc<Arena>,
    index: u32,
    generation: u32,
}

// SAFETY: the lease is the only handle to its slot's bytes; moving it between threads moves that
// exclusive access, and `&SlotLease` gives only read access to plain fields.
unsafe impl Send for SlotLease {}
unsafe impl Sync for SlotLease {}

impl SlotLease {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The slot's bytes, exclusively.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.arena.slot_size;
        // SAFETY: index < slot_count, so the range lies inside the mapping; this lease is the only
        // owner of the slot until it is dropped, and `&mut self` rules out aliasing through it.
        unsafe { std::slice::from_raw_parts_mut(self.arena.base.add(self.index as usize * len), len) }
    }

    /// Start of the slot, for handing to a plugin during a call.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.bytes_mut().as_mut_ptr()
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.arena.in_use.fetch_sub(1, Ordering::Relaxed);
        // Cannot fail: only leased indices come back, so the queue always has room.
        let _ = self.arena.free.push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        arena.generations[0].store(u32::MAX, Ordering::Relaxed);
        let wrapped = arena.acquire().unwrap();
        assert_eq!(wrapped.generation(), 1, "generation 0 is reserved for 'never used'");
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
}
