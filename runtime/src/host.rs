//! The host function table: what plugins call back into (`WeftHostApi`: logging, completing a
//! pending call, a worker leaving its ring), and the process-wide registry of plugin instances
//! those calls name. It sits above the modules that implement the calls (`pending`, `workers`,
//! `plugin_log`), so none of them needs to know about the others: library loading (`plugin`)
//! is handed the table by the runtime.

use std::ffi::c_void;
use std::sync::{Arc, Weak};

use crate::abi::{WEFT_ABI_VERSION, WEFT_LOG_DEBUG, WEFT_LOG_ERROR, WEFT_LOG_WARN, WeftHostApi, WeftResult};
use crate::pending::AsyncTable;
use crate::sync::stat::RwLock;

/// The host function table: one per process, as plugins may keep the pointer.
struct HostApi(WeftHostApi);
// SAFETY: the table is immutable and its context pointer is unused (NULL).
unsafe impl Sync for HostApi {}

/// The table handed to every library's entry point.
pub(crate) fn api() -> &'static WeftHostApi {
    &HOST_API.0
}

static HOST_API: HostApi = HostApi(WeftHostApi {
    abi_version: WEFT_ABI_VERSION,
    size: size_of::<WeftHostApi>() as u32,
    context: std::ptr::null_mut::<c_void>(),
    log: Some(host_log),
    complete: Some(host_complete),
    worker_exit: Some(crate::workers::host_worker_exit),
    worker_exit_ring: Some(crate::workers::host_worker_exit_ring),
});

/// A plugin instance as the host functions see it: its name (for log lines) and the call table
/// of the runtime that created it (for `complete`). Instance ids are process-wide and never
/// reused, so several runtimes (a config reload builds a new one) can coexist.
struct InstanceEntry {
    name: Arc<str>,
    calls: Weak<AsyncTable>,
    log: crate::plugin_log::LogBudget,
}

/// Instances by id.
static INSTANCES: RwLock<Vec<InstanceEntry>> = RwLock::new(Vec::new());

/// Registers an instance of the runtime whose call table is `calls`; returns its id.
pub(crate) fn register_instance(name: &str, calls: Weak<AsyncTable>) -> u64 {
    let mut all = INSTANCES.write().unwrap_or_else(|e| e.into_inner());
    all.push(InstanceEntry {
        name: Arc::from(name),
        calls,
        log: Default::default(),
    });
    (all.len() - 1) as u64
}

/// The instance's name and its runtime's call table (`None` once that runtime is gone).
pub(crate) fn instance_calls(id: u64) -> Option<(Arc<str>, Option<Arc<AsyncTable>>)> {
    let all = INSTANCES.read().unwrap_or_else(|e| e.into_inner());
    let e = all.get(usize::try_from(id).ok()?)?;
    Some((e.name.clone(), e.calls.upgrade()))
}

/// `WeftHostApi::complete`: never unwinds into the plugin.
unsafe extern "C" fn host_complete(instance: u64, slot: u32, call: u32, result: u32, out_len: u32) -> u32 {
    std::panic::catch_unwind(|| complete(instance, slot, call, result, out_len)).unwrap_or(WeftResult::Internal) as u32
}

/// Finds the call table of the runtime that owns `instance`, then lets it check and deliver the
/// completion ([`AsyncTable::complete`]).
fn complete(instance: u64, slot: u32, call: u32, result: u32, out_len: u32) -> WeftResult {
    let Some((name, table)) = instance_calls(instance) else {
        tracing::warn!(
            instance,
            slot,
            call,
            "complete(): unknown plugin instance id {instance}; ignored (StaleHandle)"
        );
        return WeftResult::StaleHandle;
    };
    let Some(table) = table else {
        // The instance's runtime is gone (replaced by a reload and drained). A runtime that still
        // had cancelled calls outstanding keeps its table for them, so this names no call.
        tracing::warn!(
            plugin = %name,
            slot,
            call,
            "complete(): the instance's runtime is gone (replaced by a reload); no call is outstanding; ignored (StaleHandle)"
        );
        return WeftResult::StaleHandle;
    };
    table.complete(&name, instance, slot, call, result, out_len)
}

/// Truncates plugin log lines so a runaway plugin cannot flood the log with megabyte lines.
const MAX_LOG_LINE: usize = 16 * 1024;

unsafe extern "C" fn host_log(level: u32, instance: u64, msg: *const u8, len: usize) {
    // Unknown instance ids (a confused or hostile plugin) share one budget.
    static UNKNOWN: std::sync::LazyLock<crate::plugin_log::LogBudget> = std::sync::LazyLock::new(Default::default);
    // No panic may unwind into the plugin: a failure to log is dropped.
    let _ = std::panic::catch_unwind(|| {
        // A line the log level filters out is dropped first: no lock, no name, no clock read
        // for the budget, and it spends none of the budget (nor is it counted as dropped by
        // the rate limit). A plugin that logs every request at `info` under `warn` cost the
        // log phase ~190 instructions and a clock read per request for nothing
        // (`scripts/callgrind-proxy`, the C plugin's row).
        if !level_enabled(level) {
            return;
        }
        let (name, (allowed, dropped)) = {
            let all = INSTANCES.read().unwrap_or_else(|e| e.into_inner());
            match usize::try_from(instance).ok().and_then(|i| all.get(i)) {
                Some(e) => (Some(e.name.clone()), e.log.take()),
                None => (None, UNKNOWN.take()),
            }
        };
        let plugin = name.as_deref().unwrap_or("?");
        if dropped > 0 {
            tracing::warn!(
                target: "weft::plugin", plugin, dropped,
                "plugin log lines dropped (more than {} per second)", crate::plugin_log::LINES_PER_SEC
            );
        }
        if !allowed {
            return;
        }
        let bytes: &[u8] = if msg.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller promises `len` readable bytes for the duration of the call.
            unsafe { std::slice::from_raw_parts(msg, len.min(MAX_LOG_LINE)) }
        };
        let lossy = String::from_utf8_lossy(bytes);
        let text = crate::plugin_log::escape(&lossy);
        match level {
            WEFT_LOG_ERROR => tracing::error!(target: "weft::plugin", plugin, "{text}"),
            WEFT_LOG_WARN => tracing::warn!(target: "weft::plugin", plugin, "{text}"),
            WEFT_LOG_DEBUG => tracing::debug!(target: "weft::plugin", plugin, "{text}"),
            _ => tracing::info!(target: "weft::plugin", plugin, "{text}"),
        }
    });
}

/// Whether a plugin line at `level` would be written: `tracing`'s per-callsite interest (a load
/// and a compare once the level is known to be off), the same callsites' metadata as the
/// events `host_log` writes.
fn level_enabled(level: u32) -> bool {
    match level {
        WEFT_LOG_ERROR => tracing::enabled!(target: "weft::plugin", tracing::Level::ERROR, plugin),
        WEFT_LOG_WARN => tracing::enabled!(target: "weft::plugin", tracing::Level::WARN, plugin),
        WEFT_LOG_DEBUG => tracing::enabled!(target: "weft::plugin", tracing::Level::DEBUG, plugin),
        _ => tracing::enabled!(target: "weft::plugin", tracing::Level::INFO, plugin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::WEFT_LOG_INFO;

    /// A writer that keeps what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn budget_used(id: u64) -> u32 {
        INSTANCES.read().unwrap()[id as usize].log.used()
    }

    #[test]
    fn lines_below_the_log_level_spend_no_budget() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish();
        let id = register_instance("quiet", Weak::new());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..crate::plugin_log::LINES_PER_SEC + 50 {
                // SAFETY: a valid pointer and length.
                unsafe { host_log(WEFT_LOG_INFO, id, b"every request".as_ptr(), 13) };
            }
            assert_eq!(budget_used(id), 0, "info lines under warn took the budget");
            unsafe { host_log(WEFT_LOG_WARN, id, b"kept".as_ptr(), 4) };
            assert_eq!(budget_used(id), 1);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("kept"), "{text}");
        assert!(!text.contains("every request") && !text.contains("dropped"), "{text}");
    }

    #[test]
    fn host_log_survives_bad_input() {
        // SAFETY: exercising the null/zero-length paths the ABI allows.
        unsafe {
            host_log(99, u64::MAX, std::ptr::null(), 10);
            host_log(WEFT_LOG_INFO, 0, b"\xff\xfe".as_ptr(), 2);
        }
    }
}
