//! What tests read back from a running process: the phase-count C plugin's counters
//! (`tests/fixtures/c-plugins/phase_count.c`) in the library a runtime loaded, and how often a
//! named thread of this process woke.

use std::path::Path;

use libloading::os::unix::Library;

/// The counters of the phase-count C plugin, read from the copy of the library the runtime
/// loaded (global to that library, so a test reading them runs in a process of its own).
pub struct PhaseCount {
    lib: Library,
}

impl PhaseCount {
    /// The library at `path`, which the runtime must have loaded already.
    pub fn of(path: &Path) -> PhaseCount {
        // SAFETY: RTLD_NOLOAD opens only a library already loaded, which runs no initialisers.
        let lib = unsafe { Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_NOLOAD) }
            .unwrap_or_else(|e| panic!("{} is not loaded: {e}", path.display()));
        PhaseCount { lib }
    }

    /// Calls of `plugin` (phase_count.c's numbering: `count-all` is 0) in `phase` (weft.h's).
    pub fn calls(&self, plugin: u32, phase: u32) -> u64 {
        self.counter(b"weft_phase_count_calls", plugin, phase)
    }

    /// Of [`calls`](Self::calls), those made inside the library's `run_on_thread`.
    pub fn nested_calls(&self, plugin: u32, phase: u32) -> u64 {
        self.counter(b"weft_phase_count_nested_calls", plugin, phase)
    }

    /// Calls of the library's `run_on_thread`.
    pub fn run_on_thread_calls(&self) -> u64 {
        // SAFETY: phase_count.c exports `uint64_t weft_phase_count_run_on_thread_calls(void)`,
        // a plain function reading an atomic.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn() -> u64>(b"weft_phase_count_run_on_thread_calls")
                .expect("exported by phase_count.c");
            f()
        }
    }

    fn counter(&self, name: &[u8], plugin: u32, phase: u32) -> u64 {
        // SAFETY: both counters are `uint64_t f(uint32_t plugin, uint32_t phase)` in
        // phase_count.c, plain functions reading atomics; any argument is valid.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(u32, u32) -> u64>(name)
                .expect("exported by phase_count.c");
            f(plugin, phase)
        }
    }
}

/// Voluntary context switches of this process's threads named `name` (each one a sleep that
/// ended: a wake-up), from /proc/self/task.
pub fn thread_wakeups(name: &str) -> u64 {
    wakeups_in("/proc/self/task", name)
}

/// [`thread_wakeups`] of another process (a spawned `weft-proxy`, say).
pub fn process_thread_wakeups(pid: u32, name: &str) -> u64 {
    wakeups_in(&format!("/proc/{pid}/task"), name)
}

fn wakeups_in(tasks: &str, name: &str) -> u64 {
    let mut n = 0;
    for task in std::fs::read_dir(tasks).unwrap().flatten() {
        if std::fs::read_to_string(task.path().join("comm"))
            .unwrap_or_default()
            .trim()
            != name
        {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}
