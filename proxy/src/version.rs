//! `weft-proxy --version` and `weft-proxy version -c FILE`: the proxy's version, the plugin ABI
//! version it speaks and the language runtime of each plugin library a config loads.

use std::sync::LazyLock;

use weft_runtime::Runtime;
use weft_runtime::abi::{WEFT_ABI_VERSION, WEFT_RUNTIME_GO, WEFT_RUNTIME_NATIVE};

use crate::config::Config;

/// `0.1.0 (weft ABI version 1)`, for clap's `--version`.
pub fn long_version() -> &'static str {
    static V: LazyLock<String> =
        LazyLock::new(|| format!("{} (weft ABI version {WEFT_ABI_VERSION})", env!("CARGO_PKG_VERSION")));
    V.as_str()
}

/// One line per library of `config`: `library NAME: Go go1.26.1 (PATH)`; loads the libraries
/// (no plugin instance is created). A library that fails to load is an error naming it.
pub fn library_versions(config: &Config) -> Result<Vec<String>, String> {
    if config.libraries.is_empty() {
        return Ok(Vec::new());
    }
    let rt = Runtime::new(weft_runtime::RuntimeOptions {
        slot_count: 1,
        slot_size: 4096,
        log_queue: 1,
        ..weft_runtime::RuntimeOptions::default()
    })
    .map_err(|e| format!("plugin runtime: {e}"))?;
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for lib in &config.libraries {
        if let Err(e) = rt.load_library(&lib.name, &lib.path) {
            problems.push(format!("library {:?}: {e}", lib.name));
            continue;
        }
        let runtime = match rt.library_runtime(&lib.name) {
            Some((WEFT_RUNTIME_GO, v)) => format!("Go {v}"),
            Some((WEFT_RUNTIME_NATIVE, v)) if v.is_empty() => "native".to_owned(),
            Some((WEFT_RUNTIME_NATIVE, v)) => format!("native {v}"),
            Some((kind, v)) => format!("runtime kind {kind} {v}"),
            None => "unknown".to_owned(),
        };
        lines.push(format!("library {}: {runtime} ({})", lib.name, lib.path.display()));
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        Err(problems.join("\n"))
    }
}
