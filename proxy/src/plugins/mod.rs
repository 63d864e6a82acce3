//! Plugin loading at start-up and on reload: libraries and in-process instances (`ffi.rs`),
//! instances on NATS workers (`remote.rs`). The result, [`Plugins`], is what a `Proxy` is built
//! from and what `weft-proxy check` prints.

mod ffi;
mod remote;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use weft_runtime::{InstanceId, Runtime};

use crate::config::{Config, PluginType};

pub use remote::NatsHost;

/// Plugin libraries and instances that failed to load; each line names the library or
/// instance and the reason.
#[derive(Debug)]
pub struct StartupError(pub Vec<String>);

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for StartupError {}

/// A loaded plugin library and the plugin names it offers.
pub struct LoadedLibrary {
    pub name: String,
    pub plugins: Vec<String>,
}

/// A `type: ffi` instance and how its asynchronous calls run (for `weft-proxy check`).
pub struct FfiInstance {
    pub name: String,
    pub how: String,
}

/// A `type: nats` instance, its phase mask and the worker command that serves it.
pub struct RemoteInstance {
    pub name: String,
    pub phases: u32,
    pub worker_command: String,
}

/// Loaded plugin instances, by config name.
pub struct Plugins {
    /// `None` when the config has no plugin instances: the runtime is then never touched.
    pub runtime: Option<Arc<Runtime>>,
    pub instances: HashMap<String, InstanceId>,
    /// In config order (for `weft-proxy check`).
    pub libraries: Vec<LoadedLibrary>,
    pub remote: Vec<RemoteInstance>,
    /// The NATS connection of the `type: nats` instances, if any.
    pub nats: Option<Arc<NatsHost>>,
    pub ffi: Vec<FfiInstance>,
}

impl Plugins {
    /// Loads every library and instantiates every plugin instance, reporting all failures.
    pub fn load(config: &Config) -> Result<Plugins, StartupError> {
        Plugins::load_replacing(config, None, None)
    }

    /// [`load`](Self::load) for a config reload: the new plugin runtime replaces `prev`
    /// ([`Runtime::replacing`]: the same arena while its layout is unchanged, shared statistics
    /// and buffered-body budget), and keeps `prev_nats`, the running NATS connection, when the
    /// `nats:` section is unchanged. On failure every instance initialised so far is shut down.
    pub fn load_replacing(
        config: &Config,
        prev: Option<&Runtime>,
        prev_nats: Option<&Arc<NatsHost>>,
    ) -> Result<Plugins, StartupError> {
        let mut plugins = Plugins {
            runtime: None,
            instances: HashMap::new(),
            libraries: Vec::new(),
            remote: Vec::new(),
            nats: None,
            ffi: Vec::new(),
        };
        let has_remote = config.plugins.iter().any(|p| p.kind == PluginType::Nats);
        if config.libraries.is_empty() && !has_remote {
            return Ok(plugins);
        }
        let opts = config.runtime_options();
        let runtime = match prev {
            Some(prev) => Runtime::replacing(prev, opts),
            None => Runtime::new(opts),
        }
        .map_err(|e| StartupError(vec![format!("plugin runtime: {e}")]))?;
        let mut problems = Vec::new();
        if let Some(n) = config.runtime.as_ref().and_then(|r| r.worker_ring_capacity)
            && let Err(e) = runtime.set_worker_ring_capacity(n)
        {
            problems.push(format!("runtime.worker_ring_capacity: {e}"));
        }
        ffi::load(config, &runtime, &mut plugins, &mut problems);
        remote::load(config, &runtime, &mut plugins, &mut problems, prev_nats);
        if !problems.is_empty() {
            // The instances initialised before the failure never serve: give them their
            // shutdown hooks now (the runtime is dropped unused).
            runtime.shutdown();
            return Err(StartupError(problems));
        }
        plugins.runtime = Some(runtime);
        Ok(plugins)
    }
}
