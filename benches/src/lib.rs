//! Shared set-up for weft's criterion benchmarks.

use std::path::PathBuf;
use std::process::Command;

/// Builds the example Go plugin library with `scripts/build-plugins` and returns its path.
pub fn go_plugin_library() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(root.join("scripts/build-plugins"))
        .output()
        .expect("run scripts/build-plugins");
    assert!(
        out.status.success(),
        "build-plugins failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}

/// Builds the C plugins with `scripts/build-c-plugins` and returns their directory.
pub fn c_plugin_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(root.join("scripts/build-c-plugins"))
        .output()
        .expect("run scripts/build-c-plugins (is a C compiler installed?)");
    assert!(
        out.status.success(),
        "build-c-plugins failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}
