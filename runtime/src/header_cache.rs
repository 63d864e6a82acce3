//! The header names and values plugins wrote recently on this thread, each one already parsed
//! and accepted by [`crate::mutation`]'s checks.
//!
//! A plugin sets the same names request after request, and often the same values (a flag, a
//! policy, a security header). Parsing a custom name checks it byte by byte and allocates its
//! copy; a value is copied to the heap before it is checked. A hit here is a comparison of
//! lengths, then of bytes, and a reference-count increment instead. Only what passed every
//! check is kept, and a hit needs all of its bytes to match, so what a plugin gets past the cache
//! is exactly what it gets past the checks (`mutation` tests). A value is kept once it was
//! decoded twice within the last few values missed, so values that change per request (an id,
//! a time) are not copied into the cache, and do not push the constant ones out.
//!
//! Per thread, eight names and eight values of at most [`MAX_VALUE`] bytes: what a thread
//! keeps is bounded, and nothing is shared between threads.

use std::cell::RefCell;

use http::header::{HeaderName, HeaderValue};

/// Entries per thread of each kind.
pub(crate) const ENTRIES: usize = 8;

/// The longest value kept (longer ones are decoded each time).
pub(crate) const MAX_VALUE: usize = 64;

/// How many recently missed values are remembered (by length and hash) to spot a repeat.
const MISSES: usize = 4;

/// A header name's or value's bytes.
trait Header: Clone {
    fn bytes(&self) -> &[u8];
}

impl Header for HeaderName {
    fn bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Header for HeaderValue {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A round-robin set of accepted names or values.
struct Recent<T> {
    /// Each entry's length, compared before its bytes; 0 for an empty entry (the cache never
    /// holds an empty name, and an empty value is not worth keeping).
    lens: [u16; ENTRIES],
    items: [Option<T>; ENTRIES],
    /// The entry the next insertion replaces.
    next: usize,
}

impl<T: Header> Recent<T> {
    const fn new() -> Self {
        Recent {
            lens: [0; ENTRIES],
            items: [const { None }; ENTRIES],
            next: 0,
        }
    }

    fn get(&self, bytes: &[u8]) -> Option<T> {
        let len = bytes.len();
        (0..ENTRIES)
            .filter(|&i| usize::from(self.lens[i]) == len)
            .find_map(|i| {
                self.items[i]
                    .as_ref()
                    .filter(|item| crate::short::eq(item.bytes(), bytes))
            })
            .cloned()
    }

    fn put(&mut self, item: &T) {
        let Ok(len) = u16::try_from(item.bytes().len()) else {
            return;
        };
        if len == 0 {
            return;
        }
        let at = self.next;
        self.lens[at] = len;
        self.items[at] = Some(item.clone());
        self.next = (at + 1) % ENTRIES;
    }
}

/// The value cache and the values it missed lately.
struct Values {
    recent: Recent<HeaderValue>,
    /// `(length, hash)` of the last values missed (a length 0 entry is empty).
    missed: [(usize, u64); MISSES],
    next_miss: usize,
}

thread_local! {
    static NAMES: RefCell<Recent<HeaderName>> = const { RefCell::new(Recent::new()) };
    static VALUES: RefCell<Values> = const {
        RefCell::new(Values { recent: Recent::new(), missed: [(0, 0); MISSES], next_miss: 0 })
    };
}

/// The accepted name whose bytes are `bytes`, if this thread kept one.
#[inline]
pub(crate) fn name(bytes: &[u8]) -> Option<HeaderName> {
    NAMES.try_with(|c| c.try_borrow().ok()?.get(bytes)).ok().flatten()
}

/// Keeps `name`, which passed every check.
pub(crate) fn keep_name(name: &HeaderName) {
    let _ = NAMES.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.put(name);
        }
    });
}

/// The accepted value whose bytes are `bytes`, if this thread kept one.
#[inline]
pub(crate) fn value(bytes: &[u8]) -> Option<HeaderValue> {
    if bytes.is_empty() || bytes.len() > MAX_VALUE {
        return None;
    }
    VALUES
        .try_with(|c| c.try_borrow().ok()?.recent.get(bytes))
        .ok()
        .flatten()
}

/// Offers `value`, which passed every check and was not found by [`value`]: kept if it was
/// missed before, among the last few misses.
pub(crate) fn offer_value(value: &HeaderValue) {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_VALUE {
        return;
    }
    let _ = VALUES.try_with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return;
        };
        let key = (bytes.len(), hash(bytes));
        if let Some(seen) = c.missed.iter_mut().find(|m| **m == key) {
            *seen = (0, 0);
            c.recent.put(value);
        } else {
            let at = c.next_miss;
            c.missed[at] = key;
            c.next_miss = (at + 1) % MISSES;
        }
    });
}

/// A 64-bit hash of a short value or batch (FxHash's step over 8-byte words): it only decides
/// what is kept; a lookup compares every byte.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut chunks = bytes.chunks_exact(8);
    let mut h = 0u64;
    for c in &mut chunks {
        let w = u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    (h.rotate_left(5) ^ u64::from_ne_bytes(tail)).wrapping_mul(K)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_by_all_their_bytes_and_replaced_round_robin() {
        let names: Vec<HeaderName> = (0..ENTRIES + 2)
            .map(|i| HeaderName::from_bytes(format!("x-name-{i}").as_bytes()).unwrap())
            .collect();
        for n in &names {
            keep_name(n);
        }
        assert!(name(b"x-name-0").is_none(), "the oldest two were replaced");
        assert!(name(b"x-name-1").is_none());
        assert_eq!(name(b"x-name-2").unwrap(), names[2]);
        assert_eq!(name(b"x-name-9").unwrap(), names[9]);
        assert!(name(b"x-name-9 ").is_none(), "a longer name misses");
        assert!(name(b"x-name-").is_none(), "a prefix misses");
        assert!(name(b"x-name-8\0").is_none());
        assert!(name(b"X-NAME-9").is_none(), "bytes, not case-folded");
        assert!(name(b"").is_none());
    }

    #[test]
    fn a_value_is_kept_once_it_repeats_among_the_last_misses() {
        let v = HeaderValue::from_static("policy-value");
        assert!(value(b"policy-value").is_none());
        offer_value(&v);
        assert!(value(b"policy-value").is_none(), "one sighting is not kept");
        // Values that change every time in between (fewer than MISSES of them).
        for i in 0..MISSES - 1 {
            let other = HeaderValue::from_str(&format!("id-{i}")).unwrap();
            assert!(value(other.as_bytes()).is_none());
            offer_value(&other);
        }
        offer_value(&v);
        assert_eq!(value(b"policy-value").unwrap(), v);
        assert!(value(b"policy-valu").is_none());
        assert!(value(b"policy-value\t").is_none());
        for i in 0..MISSES - 1 {
            assert!(value(format!("id-{i}").as_bytes()).is_none(), "seen once: not kept");
        }
        // Empty and long values are never kept.
        let long = HeaderValue::from_bytes(&[b'a'; MAX_VALUE + 1]).unwrap();
        for _ in 0..3 {
            offer_value(&long);
            offer_value(&HeaderValue::from_static(""));
        }
        assert!(value(long.as_bytes()).is_none());
        assert!(value(b"").is_none());
    }

    #[test]
    fn hash_covers_every_byte() {
        let base = *b"0123456789abcdefXYZ";
        for len in 1..=base.len() {
            for i in 0..len {
                let mut other = base;
                other[i] ^= 1;
                assert_ne!(hash(&base[..len]), hash(&other[..len]), "len {len} byte {i}");
            }
        }
    }
}
