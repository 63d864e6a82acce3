//! Plugin libraries and their in-process (`type: ffi`) instances.

use std::sync::Arc;

use weft_runtime::{InstanceSpec, Runtime};

use super::{FfiInstance, LoadedLibrary, Plugins};
use crate::config::{Config, Failure, PluginConfig, PluginType};

/// A plugin its library flags blocking (`WEFT_PLUGIN_FLAG_BLOCKING`).
#[derive(PartialEq)]
struct BlockingPlugin {
    library: String,
    plugin: String,
}

/// What the libraries brought: the plugins flagged blocking, the libraries that failed.
#[derive(Default)]
struct Libraries {
    blocking: Vec<BlockingPlugin>,
    failed: Vec<String>,
}

/// Loads every library, then instantiates every `type: ffi` instance.
pub(super) fn load(config: &Config, runtime: &Arc<Runtime>, plugins: &mut Plugins, problems: &mut Vec<String>) {
    let libraries = load_libraries(config, runtime, plugins, problems);
    for p in &config.plugins {
        let Some(library) = p.library.as_ref().filter(|_| p.kind == PluginType::Ffi) else {
            continue; // type: nats, remote.rs
        };
        if libraries.failed.contains(library) {
            problems.push(format!(
                "plugin instance {}: library {:?} failed to load",
                p.name, library
            ));
            continue;
        }
        instantiate(config, runtime, p, library, &libraries, plugins, problems);
    }
}

fn load_libraries(config: &Config, runtime: &Runtime, plugins: &mut Plugins, problems: &mut Vec<String>) -> Libraries {
    let mut out = Libraries::default();
    for lib in &config.libraries {
        match runtime.load_library(&lib.name, &lib.path) {
            Ok(metas) => {
                for m in &metas {
                    if m.flags & weft_runtime::abi::WEFT_PLUGIN_FLAG_BLOCKING != 0 {
                        out.blocking.push(BlockingPlugin {
                            library: lib.name.clone(),
                            plugin: m.name.clone(),
                        });
                    }
                }
                plugins.libraries.push(LoadedLibrary {
                    name: lib.name.clone(),
                    plugins: metas.into_iter().map(|m| m.name).collect(),
                });
            }
            Err(e) => {
                problems.push(format!("library {:?}: {e}", lib.name));
                out.failed.push(lib.name.clone());
            }
        }
    }
    out
}

fn instantiate(
    config: &Config,
    runtime: &Runtime,
    p: &PluginConfig,
    library: &str,
    libraries: &Libraries,
    plugins: &mut Plugins,
    problems: &mut Vec<String>,
) {
    let spec = InstanceSpec {
        name: p.name.clone(),
        library: library.to_owned(),
        plugin: p.plugin.clone(),
        config_json: p.config_json(),
        fail_open: p.failure == Failure::Open,
    };
    let mut opts = p.instance_options(config.slot_count());
    if config.admin.as_ref().is_some_and(|a| a.plugin_timing) {
        opts.timer = Some(crate::metrics::global().plugin_timer(&p.name));
    }
    let flagged = libraries
        .blocking
        .iter()
        .any(|b| b.library == library && b.plugin == p.plugin);
    let how = if opts.blocking || flagged {
        "blocking: every call goes to the library's worker pool"
    } else {
        "inline; a Pending answer is awaited"
    };
    let how = format!(
        "{how}, deadline {} ms, max_in_flight {}, 503 Retry-After {} s",
        opts.deadline.as_millis(),
        opts.max_in_flight,
        opts.retry_after_secs
    );
    // InitError messages already name the instance.
    match runtime.instantiate_with(spec, opts) {
        Ok(id) => {
            plugins.instances.insert(p.name.clone(), id);
            plugins.ffi.push(FfiInstance {
                name: p.name.clone(),
                how,
            });
        }
        Err(e) => problems.push(e.to_string()),
    }
}
