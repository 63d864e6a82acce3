//! The header batches plugins wrote recently on this thread, each with what the decoder made of
//! it.
//!
//! Decoding a batch is a pure function of its bytes and the phase: the same bytes in the same
//! phase always give the same changes or the same refusal. A plugin that sets the same headers
//! on every call (a flag, a policy, a security header: `bench-header`'s one record) has them
//! framed, copied, checked and looked up in [`crate::header_cache`] on every call; here a batch
//! whose bytes equal one kept is that one's changes (reference-counted clones), after a length
//! and byte comparison.
//!
//! What is kept is decoded from the host's own copy of the bytes, never from the plugin's buffer
//! (which a plugin that breaks the rules may still be writing): a batch is kept by copying the
//! buffer, then decoding that copy, so a kept entry's changes are exactly what its kept bytes
//! decode to, and a hit hands out changes the decoder accepted for bytes equal to the ones
//! compared. A batch is kept once it was seen twice among the last few missed (by phase, length
//! and hash), so batches that change on every call (a request id, a time) are not copied, and
//! do not push the constant ones out; after a long run of misses that repeated nothing, only
//! one miss in [`SAMPLE`] is hashed, so such batches stop paying for the hash too. A repeating
//! batch the decoder declines to keep (`mutation` keeps head changes only, not a local reply) is
//! remembered as declined, so its repeats are not decoded a second time.
//!
//! Per thread, [`ENTRIES`] batches of at most [`MAX_BYTES`] bytes each: what a thread keeps is
//! bounded, and nothing is shared between threads.

/// Batches kept per thread.
pub(crate) const ENTRIES: usize = 4;

/// The longest batch kept (longer ones are decoded each time).
pub(crate) const MAX_BYTES: usize = 256;

/// How many recently missed batches are remembered (by phase, length and hash) to spot a repeat.
const MISSES: usize = 4;

/// After this many misses in a row that repeated none before them, only one miss in [`SAMPLE`]
/// is hashed and remembered: a plugin whose batches change on every call (an id, a time) stops
/// paying for the hash, and a batch that starts repeating is still found, a few calls later.
const QUIET_AFTER: u32 = 64;
const SAMPLE: u32 = 16;

struct Entry<T> {
    phase: u32,
    /// The kept bytes (empty: an empty entry; an empty batch is never kept).
    bytes: Vec<u8>,
    value: Option<T>,
}

/// A round-robin set of kept batches, and the batches missed lately.
pub(crate) struct Memo<T> {
    entries: [Entry<T>; ENTRIES],
    next: usize,
    missed: [(u32, usize, u64); MISSES],
    next_miss: usize,
    /// Misses since the last one that repeated an earlier miss.
    unrepeated: u32,
    /// The last repeated batch `decode` declined to keep (a local reply, say): its repeats are
    /// not decoded again.
    declined: (u32, usize, u64),
}

impl<T: Clone> Memo<T> {
    pub(crate) const fn new() -> Self {
        Memo {
            entries: [const {
                Entry {
                    phase: 0,
                    bytes: Vec::new(),
                    value: None,
                }
            }; ENTRIES],
            next: 0,
            missed: [(0, 0, 0); MISSES],
            next_miss: 0,
            unrepeated: 0,
            declined: (0, 0, 0),
        }
    }

    /// What the batch `bytes` of `phase` decoded to, if kept.
    #[inline]
    pub(crate) fn get(&self, phase: u32, bytes: &[u8]) -> Option<T> {
        if bytes.is_empty() {
            return None;
        }
        self.entries
            .iter()
            .filter(|e| e.bytes.len() == bytes.len() && e.phase == phase)
            .find(|e| crate::short::eq(&e.bytes, bytes))
            .and_then(|e| e.value.clone())
    }

    /// Notes a batch that missed: kept when it was missed before, among the last few misses. It
    /// is copied, and `decode` decodes the copy (`None`: not to be kept; the entries stay as
    /// they were).
    pub(crate) fn missed(&mut self, phase: u32, bytes: &[u8], decode: impl FnOnce(&[u8]) -> Option<T>) {
        if bytes.is_empty() || bytes.len() > MAX_BYTES {
            return;
        }
        self.unrepeated = self.unrepeated.saturating_add(1);
        if self.unrepeated > QUIET_AFTER && self.unrepeated % SAMPLE != 0 {
            return;
        }
        let key = (phase, bytes.len(), crate::header_cache::hash(bytes));
        if key == self.declined {
            return;
        }
        let Some(seen) = self.missed.iter_mut().find(|m| **m == key) else {
            self.missed[self.next_miss] = key;
            self.next_miss = (self.next_miss + 1) % MISSES;
            return;
        };
        *seen = (0, 0, 0);
        self.unrepeated = 0;
        let mut copy = [0u8; MAX_BYTES];
        let copy = &mut copy[..bytes.len()];
        copy.copy_from_slice(bytes);
        let Some(value) = decode(copy) else {
            self.declined = key;
            return;
        };
        let entry = &mut self.entries[self.next];
        entry.bytes.clear();
        entry.bytes.extend_from_slice(copy);
        entry.phase = phase;
        entry.value = Some(value);
        self.next = (self.next + 1) % ENTRIES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "decoder" that records what it was given.
    fn upper(b: &[u8]) -> Option<Vec<u8>> {
        (b != b"refused").then(|| b.to_ascii_uppercase())
    }

    #[test]
    fn a_batch_is_kept_once_it_repeats_and_found_by_phase_and_every_byte() {
        let mut m: Memo<Vec<u8>> = Memo::new();
        assert_eq!(m.get(1, b"abc"), None);
        m.missed(1, b"abc", upper);
        assert_eq!(m.get(1, b"abc"), None, "one sighting is not kept");
        m.missed(1, b"abc", upper);
        assert_eq!(m.get(1, b"abc"), Some(b"ABC".to_vec()));
        assert_eq!(m.get(2, b"abc"), None, "another phase");
        assert_eq!(m.get(1, b"abd"), None, "another byte");
        assert_eq!(m.get(1, b"ab"), None, "a prefix");
        assert_eq!(m.get(1, b"abcd"), None, "longer");
        assert_eq!(m.get(1, b""), None);
    }

    #[test]
    fn what_is_kept_is_decoded_from_the_copy_not_the_buffer() {
        let mut m: Memo<Vec<u8>> = Memo::new();
        m.missed(1, b"abc", upper);
        let mut seen = Vec::new();
        m.missed(1, b"abc", |copy| {
            seen = copy.to_vec();
            upper(copy)
        });
        assert_eq!(seen, b"abc");
        // The decoder's verdict on the copy is what is kept; a refusal keeps nothing.
        m.missed(1, b"refused", upper);
        m.missed(1, b"refused", upper);
        assert_eq!(m.get(1, b"refused"), None);
        assert_eq!(m.get(1, b"abc"), Some(b"ABC".to_vec()), "a refusal replaced nothing");
        // Refusals take no entry: ENTRIES - 1 more kept batches leave "abc" in.
        for i in 0..ENTRIES - 1 {
            let b = format!("batch-{i}");
            m.missed(1, b.as_bytes(), upper);
            m.missed(1, b.as_bytes(), upper);
            m.missed(1, b"refused", upper);
            m.missed(1, b"refused", upper);
        }
        assert_eq!(m.get(1, b"abc"), Some(b"ABC".to_vec()));
    }

    /// A thread whose batches have not repeated for a while looks at one miss in [`SAMPLE`];
    /// a batch that then repeats is still kept, and looking at every miss resumes.
    #[test]
    fn after_many_unrepeated_misses_one_in_sample_is_looked_at() {
        let mut m: Memo<Vec<u8>> = Memo::new();
        for i in 0..QUIET_AFTER {
            m.missed(1, format!("id-{i}").as_bytes(), upper);
        }
        assert_eq!(m.unrepeated, QUIET_AFTER);
        // The next two misses are not looked at: a repeat among them goes unseen.
        m.missed(1, b"skipped", upper);
        m.missed(1, b"skipped", upper);
        assert!(m.get(1, b"skipped").is_none());
        let mut calls = 0;
        while m.get(1, b"constant").is_none() {
            m.missed(1, b"constant", upper);
            calls += 1;
            assert!(
                calls <= 2 * SAMPLE,
                "a repeating batch was not kept within {calls} calls"
            );
        }
        assert_eq!(m.unrepeated, 0, "a repeat found resumes looking at every miss");
        m.missed(1, b"again", upper);
        m.missed(1, b"again", upper);
        assert!(m.get(1, b"again").is_some());
    }

    /// A batch the decoder declines to keep is decoded once for the memo, not on every repeat.
    #[test]
    fn a_declined_batch_is_not_decoded_again_on_each_repeat() {
        let mut m: Memo<Vec<u8>> = Memo::new();
        let mut decoded = 0;
        for _ in 0..6 {
            m.missed(1, b"refused", |b| {
                decoded += 1;
                upper(b)
            });
        }
        assert_eq!(decoded, 1);
        assert_eq!(m.get(1, b"refused"), None);
    }

    #[test]
    fn batches_that_change_every_time_are_not_kept_and_bounds_hold() {
        let mut m: Memo<Vec<u8>> = Memo::new();
        m.missed(1, b"constant", upper);
        for i in 0..MISSES - 1 {
            let b = format!("id-{i}");
            m.missed(1, b.as_bytes(), upper);
            assert_eq!(m.get(1, b.as_bytes()), None);
        }
        m.missed(1, b"constant", upper);
        assert_eq!(
            m.get(1, b"constant"),
            Some(b"CONSTANT".to_vec()),
            "still among the misses"
        );
        let long = vec![b'a'; MAX_BYTES + 1];
        m.missed(1, &long, upper);
        m.missed(1, &long, upper);
        assert_eq!(m.get(1, &long), None, "longer than MAX_BYTES");
        // Round robin: ENTRIES newer batches replace the oldest.
        for i in 0..ENTRIES {
            let b = format!("batch-{i}");
            m.missed(1, b.as_bytes(), upper);
            m.missed(1, b.as_bytes(), upper);
        }
        assert_eq!(m.get(1, b"constant"), None, "replaced");
        assert!(m.get(1, b"batch-0").is_some());
    }
}
