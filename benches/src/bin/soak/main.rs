//! Soak under faults: weft-proxy (Go and C plugins in process) in front of two checksumming
//! upstreams, driven at a fixed fraction of its measured saturation rate for N minutes while a
//! fault schedule runs; every error response must be explained by the fault active at that
//! moment, request bodies must reach the upstream intact, RSS must stay flat and every arena slot
//! must come back. See `docs/reliability.md`.
//!
//! ```sh
//! cargo run --release -p weft-benches --bin soak -- --minutes N
//! ```
//!
//! Writes `<target>/bench/soak.{md,json,png}` (or `--out DIR`); exits non-zero when a check
//! fails.

mod burst;
mod chart;
mod checks;
mod garbage;
mod hostile;
mod load;
mod nats;
mod output;
mod proxy;
mod sampler;
mod schedule;
mod starve;
mod timeline;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weft_benches::procs::build_weft_proxy;
use weft_benches::report::{exit_code, target_dir};

use crate::proxy::{Proxy, Setup};
use crate::timeline::Timeline;
use crate::upstream::Upstream;

#[derive(Parser, Debug)]
#[command(about = "weft soak under faults: hours of traffic with plugins failing, upstreams dying, reloads")]
pub struct Args {
    /// Length of the run in minutes (each minute runs the whole fault schedule; fractions run
    /// part of it).
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Load as a fraction of the saturation rate measured at start.
    #[arg(long, default_value_t = 0.3)]
    pub fraction: f64,
    /// A fixed rate (requests/s) instead of the fraction of saturation.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Idle keep-alive connections the hostile clients hold open.
    #[arg(long, default_value_t = 2000)]
    pub idle_connections: usize,
    /// Serving threads of the proxy.
    #[arg(long, default_value_t = 1)]
    pub proxy_threads: usize,
    /// weft-proxy binary [env WEFT_PROXY_BIN]; default: `cargo build --release -p weft-proxy`.
    #[arg(long, env = "WEFT_PROXY_BIN")]
    pub weft_bin: Option<PathBuf>,
    /// Go plugin library with the test plugins [env WEFT_PLUGIN_LIB]; default: built by
    /// `scripts/build-plugins test`.
    #[arg(long, env = "WEFT_PLUGIN_LIB")]
    pub plugin_lib: Option<PathBuf>,
    /// The example C plugin library (`libweft_c_stamp.so`) [env WEFT_C_PLUGIN_LIB]; default:
    /// built by scripts/build-c-plugins.
    #[arg(long, env = "WEFT_C_PLUGIN_LIB")]
    pub c_plugin_lib: Option<PathBuf>,
    /// Output directory; default `<target>/bench`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn main() -> ExitCode {
    exit_code("soak", run(Args::parse()))
}

/// Raises the open-file limit to its hard limit (inherited by the proxy and the workers) and
/// returns it: the hostile clients hold thousands of connections, on both ends.
fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

fn absolute(p: PathBuf) -> Result<PathBuf, String> {
    let p = std::path::absolute(&p).map_err(|e| e.to_string())?;
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found", p.display()))
    }
}

fn run(mut args: Args) -> Result<(), String> {
    // Each idle connection is a descriptor here and one in the proxy; the load, the upstreams
    // and the other hostile clients need about 2,000 more.
    let files = raise_open_files();
    let fit = (files.saturating_sub(2500) / 2) as usize;
    if args.idle_connections > fit {
        eprintln!(
            "soak: {} idle connections do not fit the open-file limit {files}: holding {fit}",
            args.idle_connections
        );
        args.idle_connections = fit;
    }
    let weft_bin = absolute(match &args.weft_bin {
        Some(p) => p.clone(),
        None => build_weft_proxy("soak")?,
    })?;
    let go_lib = absolute(match &args.plugin_lib {
        Some(p) => p.clone(),
        None => {
            eprintln!("soak: scripts/build-plugins test");
            weft_test_support::go_library("test").to_path_buf()
        }
    })?;
    let c_lib = absolute(match &args.c_plugin_lib {
        Some(p) => p.clone(),
        None => {
            eprintln!("soak: scripts/build-c-plugins plain");
            weft_test_support::c_plugins("plain").join("libweft_c_stamp.so")
        }
    })?;
    let nats_bins = nats::tools()?;
    if let Some(b) = &nats_bins {
        // NatsServer (weft_test_support) starts the binary this names.
        // SAFETY: no other thread runs yet (the runtime is built below).
        unsafe { std::env::set_var("WEFT_NATS_SERVER", &b.server) };
    }
    let out_dir = args.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let work = std::env::temp_dir().join(format!("weft-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Load generator and upstreams share one runtime; the proxy gets the other core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(soak(&args, weft_bin, go_lib, c_lib, nats_bins, &work, &out_dir));
    rt.shutdown_timeout(Duration::from_secs(2));
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("soak: logs kept in {}", work.display());
    }
    result
}

async fn soak(
    args: &Args,
    weft_bin: PathBuf,
    go_lib: PathBuf,
    c_lib: PathBuf,
    nats_bins: Option<weft_benches::procs::NatsBins>,
    work: &std::path::Path,
    out_dir: &std::path::Path,
) -> Result<(), String> {
    let loadavg = weft_benches::report::loadavg();
    let upstreams = vec![Upstream::start("a").await?, Upstream::start("b").await?];
    let nats = match nats_bins {
        Some(b) => Some(Arc::new(nats::NatsThread::start(b, work.to_path_buf())?)),
        None => None,
    };
    let setup = Arc::new(Setup {
        go_lib,
        c_lib,
        upstreams: upstreams.iter().map(|u| u.addr).collect(),
        nats: nats.as_ref().map(|n| n.url.clone()),
        threads: args.proxy_threads.max(1),
    });
    // Started on this thread (main, which block_on runs this future on), never on a pool
    // thread: the proxy gets SIGTERM when the thread that spawned it exits.
    let proxy = Proxy::start(&weft_bin, &setup, work)?;
    let (port, pid) = (proxy.port, proxy.pid());
    let loads = Loads {
        client: load::client(),
        port,
        nats: setup.nats.is_some(),
    };
    eprintln!("soak: saturation probe (3 s, 64 connections, the run's request mix)");
    let saturation = loads.at(Instant::now()).saturation(64, 3.0).await;
    let rate = args.rate.unwrap_or(saturation * args.fraction).max(10.0);
    eprintln!(
        "soak: saturation {saturation:.0} req/s; {rate:.0} req/s for {} min",
        args.minutes
    );
    let t0 = Instant::now();
    let load = loads.at(t0);
    let ctx = Arc::new(schedule::Ctx {
        timeline: load.timeline.clone(),
        load,
        proxy: Arc::new(Mutex::new(proxy)),
        setup,
        upstreams: Arc::new(tokio::sync::Mutex::new(upstreams)),
        quiet: Arc::default(),
        problems: Arc::default(),
        bursts: Arc::default(),
        killed: Mutex::new(None),
        nats,
        slowed: Mutex::new(None),
    });
    let until = t0 + Duration::from_secs_f64(args.minutes * 60.0);
    let under = under_faults(args, &ctx, rate, port, until).await;
    let measured = Measured {
        loadavg,
        saturation,
        rate,
        pid,
    };
    let run = collect(args, &ctx, under, measured).await;
    verdict(&run, out_dir)
}

/// What the load generator needs to reach the proxy; [`at`](Self::at) makes a load whose
/// clocks (statistics and timeline) start at `t0`.
struct Loads {
    client: load::HttpClient,
    port: u16,
    nats: bool,
}

impl Loads {
    fn at(&self, t0: Instant) -> Arc<load::Load> {
        Arc::new(load::Load {
            client: self.client.clone(),
            port: self.port,
            nats: self.nats,
            stats: Arc::new(load::Stats::new(t0)),
            timeline: Arc::new(Timeline::new(t0)),
            paused: Default::default(),
        })
    }
}

/// What the run under faults leaves to report: the proxy's samples, the machine's listen-queue
/// overflows during it, the hostile clients' counts and the end's quiet check.
struct UnderFaults {
    samples: Vec<sampler::Sample>,
    listen_overflows: Option<u64>,
    hostile: Arc<hostile::Counts>,
    end_check: schedule::QuietCheck,
}

/// The run itself: the load at `rate` until `until`, the fault schedule and the hostile clients
/// alongside, the proxy sampled throughout; then everything must come back once the load stops.
async fn under_faults(args: &Args, ctx: &Arc<schedule::Ctx>, rate: f64, port: u16, until: Instant) -> UnderFaults {
    let overflows_before = starve::listen_overflows();
    let hostile = hostile::Hostile::start(port, args.idle_connections);
    let mut sampling = sampler::Sampler::start(ctx.proxy.clone(), ctx.timeline.clone());
    let sched = tokio::spawn(schedule::run(ctx.clone(), until));
    ctx.load.clone().drive(rate, until).await;
    let _ = sched.await;
    hostile.stop();
    // The end: everything back once the load stops.
    let end_check = schedule::quiet_point(ctx).await;
    UnderFaults {
        samples: sampling.stop(),
        listen_overflows: overflows_before
            .zip(starve::listen_overflows())
            .map(|(a, b)| b.saturating_sub(a)),
        hostile: hostile.counts.clone(),
        end_check,
    }
}

/// The run's figures from before the faults.
struct Measured {
    loadavg: String,
    saturation: f64,
    rate: f64,
    pid: u32,
}

/// Everything the report and the checks read, after the NATS side was checked and stopped.
async fn collect<'a>(args: &'a Args, ctx: &schedule::Ctx, under: UnderFaults, m: Measured) -> output::Run<'a> {
    let alive = ctx.proxy.lock().unwrap().alive();
    if let Some(n) = &ctx.nats {
        if let Err(e) = n.call(nats::Cmd::Check) {
            ctx.problems.lock().unwrap().push(e);
        }
        let _ = n.call(nats::Cmd::Stop);
    }
    let upstreams: Vec<(String, Arc<upstream::Counters>)> = ctx
        .upstreams
        .lock()
        .await
        .iter()
        .map(|u| (u.name.to_string(), u.counters.clone()))
        .collect();
    let stats = &ctx.load.stats;
    output::Run {
        args,
        loadavg: m.loadavg,
        saturation: m.saturation,
        rate: m.rate,
        pid: m.pid,
        seconds: stats.seconds(),
        samples: under.samples,
        timeline: ctx.timeline.entries(),
        quiet: ctx.quiet.lock().unwrap().clone(),
        end_check: under.end_check,
        unexplained: stats.samples.lock().unwrap().clone(),
        problems: ctx.problems.lock().unwrap().clone(),
        resp_mismatches: stats.resp_mismatches.load(Ordering::Relaxed),
        upstreams,
        bursts: ctx.bursts.clone(),
        alive,
        hostile: under.hostile,
        listen_overflows: under.listen_overflows,
    }
}

/// Writes the report; an error names every failed check (or a proxy that did not survive).
fn verdict(run: &output::Run, out_dir: &std::path::Path) -> Result<(), String> {
    let checks = checks::all(run);
    output::write(run, &checks, out_dir)?;
    run.alive.clone()?;
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok && !c.skipped)
        .map(|c| c.to_string())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} check(s) failed:\n{}", failed.len(), failed.join("\n")))
    }
}
