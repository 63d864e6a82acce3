//! The weft-proxy under soak: its config (Go and C plugins in process, the fault plugins on
//! routes of their own, a `type: nats` instance when NATS runs), the process, its admin
//! listener (metrics, reload) and its /proc readings.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_benches::procs::{die_with_parent_by, file_tail, stop};

/// Request slots of the arena: more than the load generator ever has in flight (so only a
/// burst exhausts them), few enough that a burst does.
pub const SLOTS: usize = 1024;

/// What the config is built from.
pub struct Setup {
    pub go_lib: PathBuf,
    pub c_lib: PathBuf,
    pub upstreams: Vec<SocketAddr>,
    /// The nats-server URL when the NATS route runs.
    pub nats: Option<String>,
    pub threads: usize,
}

// The upstream timeouts are far above what the faults need (the slow upstream answers in 300 ms):
// on a machine shared with other work the runner's upstreams can be starved of CPU for a second
// or two, and that must not read as a proxy error.

/// The proxy's listen backlog: above the connections the run opens at once (an arena burst's
/// 1,152 beside the load's and the hostile clients' reconnects), so that a proxy thread starved
/// of CPU while a burst connects leaves them queued rather than has the kernel drop their SYNs,
/// which clients retry 1, 3, 7, 15 s later, past the load's 30 s wait (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// The instance name (and NATS subject) of the `type: nats` plugin.
pub const NATS_INSTANCE: &str = "nsleep";

/// The config of reload generation `generation` (the C plugin's header value changes with it, so a
/// reload really replaces the plugin instances).
pub fn yaml(s: &Setup, port: u16, admin: u16, generation: u64) -> String {
    let ups: Vec<String> = s.upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let (nats_top, nats_plugin, nats_route) = match &s.nats {
        Some(url) => (
            format!("nats: {{ url: \"{url}\", name: weft-soak }}\n"),
            format!(
                "  - {{ name: {NATS_INSTANCE}, type: nats, plugin: test-sleep, phases: [request_headers], deadline_ms: 5000, max_in_flight: 4096 }}\n"
            ),
            format!("  - {{ name: nats, path_prefix: /nats, upstream: up, plugins: [{NATS_INSTANCE}] }}\n"),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    format!(
        r#"listen: 127.0.0.1:{port}
workers: {threads}
admin: {{ listen: "127.0.0.1:{admin}" }}
# weft_proxy::conn at debug: why each client connection ended, to trace an unexplained reset
log: {{ level: "warn,weft_proxy::conn=debug" }}
limits: {{ header_read_timeout_ms: {hrt}, max_connections: 8000, listen_backlog: {LISTEN_BACKLOG} }}
runtime: {{ slots: {SLOTS}, slot_size: 32768, out_slots: 128 }}
{nats_top}libraries:
  - {{ name: go, path: "{go}" }}
  - {{ name: c, path: "{c}" }}
plugins:
  - {{ name: panic, library: go, plugin: test-panic }}
  - {{ name: stamp, library: c, plugin: c-header-stamp, config: {{ header: x-soak-generation, value: "g{generation}" }} }}
  - {{ name: bench, library: go, plugin: bench-header }}
  - {{ name: hang, library: go, plugin: test-blocking, deadline_ms: 500 }}
  - {{ name: late, library: go, plugin: test-async, deadline_ms: 1000, max_in_flight: 4096 }}
{nats_plugin}upstreams:
  - name: up
    addresses: [{ups}]
    connect_timeout_ms: 2000
    timeout_ms: 10000
    ejection: {{ consecutive_failures: 3, duration_ms: 2000 }}
routes:
  - {{ name: raw, path_prefix: /raw, upstream: up }}
  - {{ name: hang, path_prefix: /hang, upstream: up, plugins: [hang] }}
  - {{ name: late, path_prefix: /late, upstream: up, plugins: [late] }}
{nats_route}  - {{ name: main, upstream: up, plugins: [panic, stamp, bench] }}
"#,
        threads = s.threads,
        hrt = crate::hostile::HEADER_READ_TIMEOUT.as_millis(),
        go = s.go_lib.display(),
        c = s.c_lib.display(),
        ups = ups.join(", "),
    )
}

/// A config the proxy must refuse: a route naming an upstream that does not exist.
pub fn invalid_yaml(valid: &str) -> String {
    valid.replace(
        "path_prefix: /raw, upstream: up",
        "path_prefix: /raw, upstream: no-such-upstream",
    )
}

pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub cfg: PathBuf,
    pub log: PathBuf,
    pub generation: u64,
}

impl Proxy {
    pub fn start(bin: &Path, setup: &Setup, dir: &Path) -> Result<Proxy, String> {
        let port = weft_test_support::free_port().port();
        let admin = weft_test_support::free_port().port();
        let cfg = dir.join("weft.yaml");
        std::fs::write(&cfg, yaml(setup, port, admin, 0)).map_err(|e| e.to_string())?;
        let log = dir.join("weft-proxy.log");
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&cfg)
            // The config's `log.level` applies (RUST_LOG would win over it).
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        die_with_parent_by(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut p = Proxy {
            child,
            port,
            admin,
            cfg,
            log,
            generation: 0,
        };
        p.wait_ready()?;
        Ok(p)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.alive()?;
            if let Ok((200, _)) = http(self.admin, "GET", "/readyz", "") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("weft-proxy not ready within 60 s:\n{}", file_tail(&self.log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An error (with the log's tail) when the process has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Err(format!("weft-proxy exited ({st}):\n{}", file_tail(&self.log))),
            _ => Ok(()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics`, unlabelled series only (the arena gauges, counters).
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>, String> {
        let (status, body) = http(self.admin, "GET", "/metrics", "")?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// Writes the next valid config (or an invalid one) and asks for a reload; the status.
    pub fn reload(&mut self, setup: &Setup, valid: bool) -> Result<u16, String> {
        let next = yaml(setup, self.port, self.admin, self.generation + 1);
        let text = if valid { next.clone() } else { invalid_yaml(&next) };
        std::fs::write(&self.cfg, &text).map_err(|e| e.to_string())?;
        let (status, _) = http(self.admin, "POST", "/reload", "X-Weft-Admin: 1\r\n")?;
        if valid && status == 200 {
            self.generation += 1;
        }
        if !valid {
            // The file again as the running config is, for whatever reads it next.
            std::fs::write(&self.cfg, yaml(setup, self.port, self.admin, self.generation))
                .map_err(|e| e.to_string())?;
        }
        Ok(status)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A one-shot HTTP/1.1 request to the admin listener: status and body.
fn http(port: u16, method: &str, path: &str, extra: &str) -> Result<(u16, String), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("admin {path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("admin {path}: no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Resident set size (KiB), open file descriptors and threads of `pid`.
pub fn proc_readings(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (field("VmRSS:"), fds, field("Threads:"))
}
