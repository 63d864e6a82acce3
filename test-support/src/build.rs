//! The repository's build scripts, each run at most once per process and variant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::repo_root;

/// Runs `script ARG` from the repository root and returns the path it prints on its last line.
pub fn run_script(script: &str, arg: &str) -> PathBuf {
    let out = Command::new(repo_root().join(script))
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {arg} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} {arg} printed nothing"));
    PathBuf::from(last.trim())
}

/// Memoises `run_script(script, variant)` for the life of the process.
fn once(script: &'static str, variant: &str) -> &'static Path {
    static BUILT: OnceLock<Mutex<HashMap<(&'static str, String), &'static Path>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    built
        .entry((script, variant.to_owned()))
        .or_insert_with(|| Box::leak(run_script(script, variant).into_boxed_path()))
}

/// The Go plugin library built by `scripts/build-plugins VARIANT` with the real Go toolchain (go
/// build caches, so a second process pays little): `test` (the examples and the test and bench
/// plugins: what tests load), `main` (the examples only) or `abi99`.
pub fn go_library(variant: &str) -> &'static Path {
    once("scripts/build-plugins", variant)
}

/// The directory of the C plugins built by `scripts/build-c-plugins VARIANT` (`plain` or `asan`).
pub fn c_plugins(variant: &str) -> &'static Path {
    once("scripts/build-c-plugins", variant)
}

/// `cgo/cmd/weft-worker` with the test plugins (`-tags weft_testplugins`), built once per process
/// into `dir` (a test's `CARGO_TARGET_TMPDIR`).
pub fn weft_worker(dir: &Path) -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = dir.join("weft-worker");
        let st = Command::new("go")
            .args(["build", "-tags", "weft_testplugins", "-o"])
            .arg(&out)
            .arg("./cmd/weft-worker")
            .current_dir(repo_root().join("cgo"))
            .status()
            .expect("run go build (is Go installed?)");
        assert!(st.success(), "go build ./cmd/weft-worker failed");
        out
    })
}
