//! The `listen_tls:` listeners of a running proxy: built at start, their certificates re-read
//! on every config reload (SIGHUP, `POST /reload`). A reload reads every certificate first and
//! swaps only if all of them load, so a broken certificate or a key that does not match is
//! refused (the error names the file and the reason) and the old certificates keep serving.
//! Addresses are bound once: a changed `listen_tls[i].listen` (or `max_connections`) takes
//! effect at restart.

use std::sync::Arc;

use super::server::{CertSet, TlsListener};
use crate::config::Config;

/// Builds every `listen_tls:` listener of `config`, reporting all problems.
pub fn listeners(config: &Config) -> Result<Vec<Arc<TlsListener>>, String> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, l) in config.listen_tls.iter().enumerate() {
        match TlsListener::new(l, i) {
            Ok(t) => out.push(t),
            Err(e) => problems.extend(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("\n"))
    }
}

/// The new certificates of the `running` listeners from `config`, not yet served, and a note
/// for the summary when the listeners themselves changed (restart only).
pub fn prepare(config: &Config, running: &[Arc<TlsListener>]) -> Result<(Vec<CertSet>, Option<String>), String> {
    let mut sets = Vec::new();
    let mut problems = Vec::new();
    for (i, (l, _)) in config.listen_tls.iter().zip(running).enumerate() {
        match CertSet::load(l, &format!("listen_tls[{i}]")) {
            Ok(set) => sets.push(set),
            Err(e) => problems.extend(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let moved = config.listen_tls.len() != running.len()
        || config
            .listen_tls
            .iter()
            .zip(running)
            .any(|(l, r)| l.listen.parse().ok() != Some(r.addr) || l.max_connections != r.max_connections);
    let note = moved.then(|| "listen_tls addresses and max_connections take effect at restart only".to_owned());
    Ok((sets, note))
}

/// Serves the prepared certificates from now on.
pub fn apply(running: &[Arc<TlsListener>], sets: Vec<CertSet>) {
    for (r, set) in running.iter().zip(sets) {
        r.replace(set);
    }
}

/// `config error in FILE at FIELD: reason` for each `FIELD: reason` line of `problems` (the
/// form of config errors, which the admin API's reply and the log rely on).
pub fn locate(file: &std::path::Path, problems: &str) -> String {
    let file = file.display();
    problems
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((field, rest)) if !field.contains(' ') => format!("config error in {file} at {field}: {rest}"),
            _ => format!("config error in {file}: {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
