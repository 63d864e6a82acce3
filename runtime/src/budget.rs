//! The process-wide budget of buffered-body memory: every byte a buffered body call holds on the
//! heap (the collected body, a joined copy, an output buffer larger than every buffer class) is
//! charged here before it is allocated, and given back when the memory is freed. A charge that
//! would go over the limit is refused: the caller answers 503 (request body) or 502 (response
//! body) instead of allocating.
//!
//! Buffer-class slots of the arena are not charged: they are mapped once and bounded by the
//! config already.
//!
//! A [`Charge`] travels with the memory it pays for: [`charged_bytes`] makes it part of the
//! `Bytes` owner, so the bytes are returned to the budget when the last slice is dropped, however
//! far the slices travel (into hyper, into a pending call's orphan).

use std::sync::Arc;

use bytes::Bytes;

use crate::sync::stat::{AtomicU64, Ordering};

/// Default limit of [`ByteBudget`]: 256 MiB, room for about 85 buffered calls at the default
/// `max_buffered_body_bytes` of 1 MiB (the body plus an output buffer of twice its size).
pub const DEFAULT_BUFFERED_BYTES_TOTAL: u64 = 256 << 20;

/// A limit on bytes held at once, shared by every request (and every runtime generation).
#[derive(Debug)]
pub struct ByteBudget {
    limit: AtomicU64,
    used: AtomicU64,
    refused: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Changes the limit (a config reload). Charges held now stay valid; a lower limit refuses
    /// new charges until enough is given back.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges refused since start (each ended a request with 503 or 502).
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` off the budget, or `false` (counted as a refusal if `count`) when that
    /// would pass the limit.
    fn take(&self, bytes: u64, count: bool) -> bool {
        let limit = self.limit();
        let ok = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= limit)
            })
            .is_ok();
        if !ok && count {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// A charge of `bytes`, or `None` (counted as a refusal) when it would pass the limit.
    pub fn try_charge(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        self.take(bytes, true).then(|| Charge {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

/// Bytes taken off a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Charge {
    /// Grows the charge by `more` bytes; `false` (counted as a refusal, the charge unchanged)
    /// when that would pass the limit.
    pub fn try_grow(&mut self, more: u64) -> bool {
        self.grow(more, true)
    }

    /// [`try_grow`](Self::try_grow) without counting a refusal: for growth beyond what is needed
    /// (room to come), whose failure the caller falls back from.
    pub fn grow_if_room(&mut self, more: u64) -> bool {
        self.grow(more, false)
    }

    fn grow(&mut self, more: u64, count: bool) -> bool {
        let ok = self.budget.take(more, count);
        if ok {
            self.bytes += more;
        }
        ok
    }

    /// Gives `bytes` of the charge back (at most all of it) while the rest stays charged.
    pub fn release(&mut self, bytes: u64) {
        let n = bytes.min(self.bytes);
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
        self.bytes -= n;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// `data` as a `Bytes` that gives `charge` back when its last slice is dropped (no copy).
pub fn charged_bytes<T>(data: T, charge: Charge) -> Bytes
where
    T: AsRef<[u8]> + Send + 'static,
{
    struct Owned<T> {
        data: T,
        _charge: Charge,
    }
    impl<T: AsRef<[u8]>> AsRef<[u8]> for Owned<T> {
        fn as_ref(&self) -> &[u8] {
            self.data.as_ref()
        }
    }
    Bytes::from_owner(Owned { data, _charge: charge })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_given_back() {
        let b = ByteBudget::new(100);
        let mut a = b.try_charge(60).unwrap();
        assert!(b.try_charge(41).is_none(), "over the limit");
        assert_eq!((b.used(), b.refusals()), (60, 1));
        assert!(a.try_grow(40));
        assert!(!a.grow_if_room(1), "not counted");
        assert!(!a.try_grow(1));
        assert_eq!((a.bytes(), b.used(), b.refusals()), (100, 100, 2));
        a.release(30);
        assert_eq!((a.bytes(), b.used()), (70, 70));
        assert!(a.try_grow(30));
        let bytes = charged_bytes(vec![7u8; 10], a);
        let tail = bytes.slice(5..);
        drop(bytes);
        assert_eq!(b.used(), 100, "a slice still holds the memory");
        drop(tail);
        assert_eq!(b.used(), 0);
        assert!(b.try_charge(u64::MAX).is_none(), "no overflow");
        b.set_limit(10);
        assert!(b.try_charge(11).is_none());
        assert!(b.try_charge(10).is_some());
    }
}
