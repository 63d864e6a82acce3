//! Builds the plugin libraries the runtime tests load: the example Go library with the real Go
//! toolchain (cached by go build), and the C plugins with the system C compiler.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Runs `scripts/build-c-plugins` once per test binary and returns the directory it printed.
pub fn c_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/build-c-plugins"))
            .output()
            .expect("run scripts/build-c-plugins (is a C compiler installed?)");
        assert!(
            out.status.success(),
            "build-c-plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
    })
}
