//! What the runners (`e2e`, `nats`, `body`) share in their reports: where outputs go, the
//! machine and commit a run was made on, medians, and writing the report out.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde::Serialize;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The workspace's target directory (CARGO_TARGET_DIR respected; relative to the root).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { workspace_root().join(d) }
        }
        None => workspace_root().join("target"),
    }
}

/// Runs `cmd` in the workspace root; its stdout then stderr, trimmed (empty if it did not run).
pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

/// A runner's exit: success, or its error printed after `who: `, and failure.
pub fn exit_code(who: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The cores the runner may use (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The time now, `YYYY-MM-DD HH:MM UTC`.
pub fn date_utc() -> String {
    sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// The short commit id of HEAD, with `+dirty` when tracked files are changed.
pub fn commit() -> String {
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!(
        "{}{}",
        sh("git", &["rev-parse", "--short", "HEAD"]),
        if dirty { "+dirty" } else { "" }
    )
}

/// The arguments the runner was started with, each after a space.
pub fn argv() -> String {
    std::env::args().skip(1).map(|a| format!(" {a}")).collect()
}

/// /proc/loadavg, trimmed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The machine a run was made on.
#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_at_start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadavg_at_end: Option<String>,
}

impl Machine {
    /// This machine, with `cores` and the load average when the run started (and none at its end).
    pub fn new(cores: usize, loadavg_at_start: String) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores,
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg_at_start,
            loadavg_at_end: None,
        }
    }

    /// A quoted line saying the numbers are noisy, when the one-minute load average at the start
    /// was over half the cores (`more` goes after its first sentence); else None.
    pub fn busy_note(&self, more: &str) -> Option<String> {
        let load1: f64 = self
            .loadavg_at_start
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cores = self.cores;
        (load1 > cores as f64 * 0.5).then(|| {
            format!(
                "> Load average {load1:.2} on {cores} cores when the run started: other work was running, so these \
                 numbers are noisy.{more}\n\n"
            )
        })
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Writes `<dir>/<name>.json` (the report, pretty) and `<dir>/<name>.md`.
pub fn write_report(dir: &Path, name: &str, rep: &impl Serialize, md: &str) -> Result<(), String> {
    let json = serde_json::to_string_pretty(rep).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("{name}.json")), json).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("{name}.md")), md).map_err(|e| e.to_string())?;
    Ok(())
}
