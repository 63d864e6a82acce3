//! Builds the example Go plugin library with the real Go toolchain (cached by go build).

use std::path::PathBuf;
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/build-plugins VARIANT` and returns the library path it printed.
pub fn build_plugins(variant: &str) -> PathBuf {
    let out = Command::new(repo_root().join("scripts/build-plugins"))
        .arg(variant)
        .output()
        .expect("run scripts/build-plugins (is Go installed?)");
    assert!(
        out.status.success(),
        "scripts/build-plugins {variant} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(path.lines().last().unwrap().trim())
}
