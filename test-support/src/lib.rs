//! What weft's integration tests and bench runners share: the repository's build scripts run once
//! per process ([`go_library`], [`c_plugins`], [`weft_worker`]), loopback ports ([`free_port`]),
//! polling with a deadline ([`wait_for`]), a real nats-server child process ([`NatsServer`]), and
//! what tests read back from a process ([`PhaseCount`], [`thread_wakeups`]).
//!
//! Every helper panics with a message naming what failed: these run inside tests and runners,
//! where a panic is the report.

mod build;
mod nats;
mod net;
mod probe;

pub use build::{c_plugins, go_library, run_script, weft_worker};
pub use nats::{NatsServer, monitor_get, nats_server_bin};
pub use net::{free_port, wait_for, wait_listening};
pub use probe::{PhaseCount, process_thread_wakeups, thread_wakeups};

use std::path::Path;

/// The repository root (this crate sits one level below it).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Returns from the calling test when nats-server is not installed (and `WEFT_REQUIRE_NATS` is
/// unset; with it set, [`nats_server_bin`] fails the test instead).
#[macro_export]
macro_rules! require_nats {
    () => {
        if $crate::nats_server_bin().is_none() {
            return;
        }
    };
}
