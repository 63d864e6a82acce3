//! Plugin log lines (the host's `log` function): rate-limited per instance and escaped, so a
//! plugin can neither flood the log nor forge lines of its own.
//!
//! Each instance may log [`LINES_PER_SEC`] lines per second; further lines of that second are
//! dropped, counted in [`dropped_lines`] (`weft_plugin_log_lines_dropped_total`) and reported
//! in one warning when the instance next logs in a later second. Control characters (CR, LF,
//! ESC, ...; TAB excepted) and the Unicode line and paragraph separators are written escaped
//! (`\n`, `\r`, `\u{1b}`), so one call is one line in the log.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::sync::stat::{AtomicU32, AtomicU64, Ordering};

/// Lines one plugin instance may log per second.
pub const LINES_PER_SEC: u32 = 100;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Plugin log lines dropped by the rate limit since start (every instance).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Whole seconds since the first plugin log line (the rate limit's clock; read on every line, a
/// log phase's included: the time-stamp counter, not `clock_gettime`).
fn now_secs() -> u64 {
    static START: OnceLock<quanta::Instant> = OnceLock::new();
    let start = *START.get_or_init(quanta::Instant::now);
    quanta::Instant::now().saturating_duration_since(start).as_secs()
}

/// One instance's budget: lines used in the current second, and lines dropped in it.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    second: AtomicU64,
    used: AtomicU32,
    dropped: AtomicU64,
}

impl LogBudget {
    /// Takes one line of the budget at second `now`: whether it may be logged, and how many
    /// lines a past second dropped (to report once, by the caller that opened the new second).
    fn take_at(&self, now: u64) -> (bool, u64) {
        let mut report = 0;
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
            report = self.dropped.swap(0, Ordering::Relaxed);
        }
        // Load first, so a flood cannot wrap the counter around.
        let ok = self.used.load(Ordering::Relaxed) < LINES_PER_SEC
            && self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_SEC;
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        (ok, report)
    }

    pub(crate) fn take(&self) -> (bool, u64) {
        self.take_at(now_secs())
    }

    /// Lines taken in the current second.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

/// `text` with control characters escaped; borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape("plain text\twith tab é"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nERROR forged\r\x1b[31mred\u{2028}x\0"),
            "a\\nERROR forged\\r\\u{1b}[31mred\\u{2028}x\\u{0}"
        );
    }

    #[test]
    fn budget_per_second() {
        let b = LogBudget::default();
        let before = dropped_lines();
        let allowed = (0..LINES_PER_SEC + 50).filter(|_| b.take_at(7).0).count();
        assert_eq!(allowed, LINES_PER_SEC as usize);
        assert!(dropped_lines() - before >= 50);
        // The next second: a fresh budget, and the 50 dropped lines are reported once.
        assert_eq!(b.take_at(8), (true, 50));
        assert_eq!(b.take_at(8), (true, 0));
    }
}
