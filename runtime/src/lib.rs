//! weft runtime: loads plugin libraries through the versioned C ABI in [`abi`], lays each request
//! out in an mmap-backed [`arena`] slot that plugins read in place, and runs plugin phases over
//! `http` request and response heads ([`Chain`], [`Exchange`]).
//!
//! See `docs/architecture.md` for the data flow and who owns which memory.

pub mod abi;
pub mod arena;
pub mod completion;
mod engine;
pub mod mutation;
mod plugin;
pub mod remote;
pub mod ring;
pub mod sync;
pub mod view;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::sync::stat::{AtomicU64, Mutex, MutexGuard, Ordering};

pub use engine::{Busy, Chain, Exchange, Flow};
pub use plugin::{LoadError, PluginMeta};

use abi::{WeftBuf, WeftResult};
use arena::{Arena, ArenaError};
use engine::{Instance, LogJob, Transport};
use plugin::Library;

/// Sizing of the request arena.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Number of request slots: the most requests with plugins in flight at once.
    pub slot_count: u32,
    /// Bytes per slot: the request view plus the plugin's mutation buffer.
    pub slot_size: u32,
    /// Finished requests waiting for their log phase; beyond this, log phases are dropped
    /// (counted in [`RuntimeStats::log_dropped`]) rather than holding memory or the client.
    pub log_queue: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            slot_count: 1024,
            slot_size: 64 * 1024,
            log_queue: 4096,
        }
    }
}

/// Why a plugin instance could not be created. Every message names the instance.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("plugin instance {instance}: unknown library {library:?}")]
    UnknownLibrary { instance: String, library: String },
    #[error("plugin instance {instance}: library {library} has no plugin named {plugin:?} (it has: {available})")]
    UnknownPlugin {
        instance: String,
        library: String,
        plugin: String,
        available: String,
    },
    #[error("plugin instance {instance} ({plugin}) failed to initialise: {message}")]
    Failed {
        instance: String,
        plugin: String,
        message: String,
    },
    #[error("plugin instance {instance}: duplicate instance name")]
    Duplicate { instance: String },
}

/// One configured plugin instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Instance name from the config (used in logs).
    pub name: String,
    /// Library name given to [`Runtime::load_library`].
    pub library: String,
    /// Plugin name inside the library.
    pub plugin: String,
    /// The instance's config block as JSON.
    pub config_json: Vec<u8>,
    /// On plugin failure: continue unchanged (true) or answer 500 (false).
    pub fail_open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub u32);

/// Counters an operator wants to see.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub arena_exhausted: AtomicU64,
    pub plugin_failures: AtomicU64,
    /// Failures of fail-open instances: the request went on unchanged.
    pub fail_open_passes: AtomicU64,
    pub log_dropped: AtomicU64,
}

struct Registry {
    libraries: HashMap<String, Arc<Library>>,
    instances: Vec<Arc<Instance>>,
}

/// Loaded libraries, plugin instances and the request arena.
pub struct Runtime {
    arena: Arc<Arena>,
    registry: Mutex<Registry>,
    log_tx: crossbeam_channel::Sender<LogJob>,
    pub stats: RuntimeStats,
}

impl Runtime {
    pub fn new(opts: RuntimeOptions) -> Result<Arc<Runtime>, ArenaError> {
        let arena = Arena::new(opts.slot_count, opts.slot_size)?;
        let (log_tx, log_rx) = crossbeam_channel::bounded::<LogJob>(opts.log_queue.max(1));
        let rt = Arc::new(Runtime {
            arena,
            registry: Mutex::new(Registry {
                libraries: HashMap::new(),
                instances: Vec::new(),
            }),
            log_tx,
            stats: RuntimeStats::default(),
        });
        let weak = Arc::downgrade(&rt);
        // One long-lived thread runs log phases: binding a thread to the Go runtime costs tens of
        // microseconds once, and the client never waits for it.
        std::thread::Builder::new()
            .name("weft-log".into())
            .spawn(move || {
                let mut warmed = false;
                while let Ok(job) = log_rx.recv() {
                    if !warmed {
                        if let Some(rt) = weak.upgrade() {
                            rt.thread_start();
                        }
                        warmed = true;
                    }
                    job.run();
                }
            })
            .expect("spawn weft-log thread");
        Ok(rt)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a plugin library under a name that plugin instances refer to.
    pub fn load_library(&self, name: &str, path: &Path) -> Result<Vec<PluginMeta>, LoadError> {
        let lib = plugin::load(path)?;
        let plugins = lib.plugins.clone();
        self.registry().libraries.insert(name.to_owned(), lib);
        Ok(plugins)
    }

    /// `(runtime kind, runtime version)` of a loaded library, e.g. `(WEFT_RUNTIME_GO, "go1.26.8")`.
    pub fn library_runtime(&self, name: &str) -> Option<(u32, String)> {
        self.registry()
            .libraries
            .get(name)
            .map(|l| (l.runtime, l.runtime_version.clone()))
    }

    /// Creates and initialises one plugin instance with its config.
    pub fn instantiate(&self, spec: InstanceSpec) -> Result<InstanceId, InitError> {
        let mut reg = self.registry();
        if reg.instances.iter().any(|i| *i.name == *spec.name) {
            return Err(InitError::Duplicate { instance: spec.name });
        }
        let lib = reg
            .libraries
            .get(&spec.library)
            .cloned()
            .ok_or_else(|| InitError::UnknownLibrary {
                instance: spec.name.clone(),
                library: spec.library.clone(),
            })?;
        let meta = lib
            .plugin(&spec.plugin)
            .cloned()
            .ok_or_else(|| InitError::UnknownPlugin {
                instance: spec.name.clone(),
                library: spec.library.clone(),
                plugin: spec.plugin.clone(),
                available: lib
                    .plugins
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let id = plugin::register_instance_name(&spec.name);
        let mut err_bytes = vec![0u8; 4096];
        let mut err = WeftBuf {
            ptr: err_bytes.as_mut_ptr(),
            cap: err_bytes.len() as u32,
            len: 0,
        };
        let config = spec.config_json.as_slice();
        // SAFETY: config and err are valid for the call; the plugin index came from the library.
        let rc = unsafe {
            (lib.init)(
                meta.index,
                id,
                config.as_ptr(),
                config.len(),
                self.arena.slot_count(),
                &mut err,
            )
        };
        if WeftResult::from_raw(rc) != WeftResult::Ok {
            let n = (err.len as usize).min(err_bytes.len());
            let mut message = String::from_utf8_lossy(&err_bytes[..n]).into_owned();
            if message.is_empty() {
                message = format!("init returned {:?}", WeftResult::from_raw(rc));
            }
            return Err(InitError::Failed {
                instance: spec.name,
                plugin: spec.plugin,
                message,
            });
        }
        let inst = Arc::new(Instance {
            id,
            name: Arc::from(spec.name.as_str()),
            transport: Transport::Ffi(lib),
            phases: meta.phases,
            fail_open: spec.fail_open,
        });
        reg.instances.push(inst);
        Ok(InstanceId((reg.instances.len() - 1) as u32))
    }

    /// Adds a remote plugin instance (e.g. NATS workers): its phases come from
    /// [`remote::RemotePlugin::phases`]; each call is bounded by `deadline`, and a failed call is
    /// handled like a failing in-process plugin under the same `fail_open` policy (fail closed:
    /// 503 when unavailable or overloaded, 504 on timeout, 500 otherwise).
    pub fn instantiate_remote(
        &self,
        name: &str,
        plugin: Arc<dyn remote::RemotePlugin>,
        fail_open: bool,
        deadline: std::time::Duration,
    ) -> Result<InstanceId, InitError> {
        let mut reg = self.registry();
        if reg.instances.iter().any(|i| *i.name == *name) {
            return Err(InitError::Duplicate {
                instance: name.to_owned(),
            });
        }
        let phases = plugin.phases();
        reg.instances.push(Arc::new(Instance {
            id: 0,
            name: Arc::from(name),
            transport: Transport::Remote(plugin, deadline),
            phases,
            fail_open,
        }));
        Ok(InstanceId((reg.instances.len() - 1) as u32))
    }

    /// A route's middleware chain, in order. Unknown ids are ignored.
    pub fn chain(self: &Arc<Self>, ids: &[InstanceId]) -> Chain {
        let reg = self.registry();
        let instances: Vec<Arc<Instance>> = ids
            .iter()
            .filter_map(|id| reg.instances.get(id.0 as usize).cloned())
            .collect();
        let phases = instances.iter().fold(0, |m, i| m | i.phases);
        let has_remote = instances.iter().any(|i| matches!(i.transport, Transport::Remote(..)));
        Chain {
            rt: Arc::clone(self),
            instances: instances.into(),
            phases,
            has_remote,
        }
    }

    /// Binds the calling thread to every loaded plugin runtime. Call it on each thread that will
    /// run phases (tokio's `on_thread_start`) so the first request does not pay for it.
    pub fn thread_start(&self) {
        let libs: Vec<Arc<Library>> = self.registry().libraries.values().cloned().collect();
        for lib in libs {
            if let Some(f) = lib.thread_start {
                // SAFETY: takes no arguments; the plugin promises it is callable from any thread.
                unsafe { f() };
            }
        }
    }

    /// Calls every instance's shutdown hook once.
    pub fn shutdown(&self) {
        let instances: Vec<Arc<Instance>> = self.registry().instances.drain(..).collect();
        for inst in instances {
            if let Transport::Ffi(lib) = &inst.transport {
                if let Some(f) = lib.shutdown {
                    // SAFETY: the instance id was initialised by this library.
                    unsafe { f(inst.id) };
                }
            }
        }
    }

    /// Slots in use and total.
    pub fn arena_usage(&self) -> (u64, u32) {
        (self.arena.in_use(), self.arena.slot_count())
    }

    /// Finished requests waiting for their log phase right now (the log queue's depth).
    pub fn log_queue_len(&self) -> usize {
        self.log_tx.len()
    }

    fn submit_log(&self, job: LogJob) {
        if let Err(e) = self.log_tx.try_send(job) {
            // Dropping the job releases its slot; the log line is lost, the client is not held.
            e.into_inner().discard();
            self.stats.log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
