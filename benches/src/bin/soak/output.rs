//! The soak's outputs: per-minute rows, `soak.md`, `soak.json` and the `soak.png` timeline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use weft_benches::report::{Machine, argv, commit, cores, date_utc, write_report};

use crate::Args;
use crate::burst::Totals;
use crate::checks::{Check, JUDGE_GROWTH_FROM_S, WARM_UP_S};
use crate::load::Second;
use crate::sampler::Sample;
use crate::schedule::QuietCheck;
use crate::timeline::{Entry, GRACE, Window};
use crate::upstream::Counters;

/// Everything a run measured.
pub struct Run<'a> {
    pub args: &'a Args,
    pub loadavg: String,
    pub saturation: f64,
    pub rate: f64,
    pub pid: u32,
    pub seconds: Vec<Second>,
    pub samples: Vec<Sample>,
    pub timeline: Vec<Entry>,
    pub quiet: Vec<QuietCheck>,
    pub end_check: QuietCheck,
    pub unexplained: Vec<String>,
    pub problems: Vec<String>,
    pub resp_mismatches: u64,
    pub upstreams: Vec<(String, Arc<Counters>)>,
    pub bursts: Arc<Totals>,
    pub alive: Result<(), String>,
    pub hostile: Arc<crate::hostile::Counts>,
    /// Connections the kernel dropped at a full listen queue during the run (machine-wide).
    pub listen_overflows: Option<u64>,
}

#[derive(Serialize)]
pub struct Minute {
    pub minute: usize,
    pub requests: u64,
    pub rps: f64,
    pub errors: BTreeMap<&'static str, u64>,
    pub unexplained: u64,
    pub skipped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_mib: f64,
    pub fds: u64,
    pub threads: u64,
    pub slots_max: f64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub fn minutes(r: &Run) -> Vec<Minute> {
    r.seconds
        .chunks(60)
        .enumerate()
        .map(|(m, secs)| {
            let mut lat: Vec<u32> = secs.iter().flat_map(|s| s.lat_us.iter().copied()).collect();
            lat.sort_unstable();
            let mut errors = BTreeMap::new();
            for s in secs {
                for (k, n) in &s.errors {
                    *errors.entry(*k).or_default() += n;
                }
            }
            let samples: Vec<&Sample> = r.samples.iter().filter(|s| (s.t_s / 60.0) as usize == m).collect();
            let requests = secs.iter().map(|s| s.requests).sum::<u64>();
            Minute {
                minute: m + 1,
                requests,
                rps: requests as f64 / secs.len() as f64,
                errors,
                unexplained: secs.iter().map(|s| s.unexplained).sum(),
                skipped: secs.iter().map(|s| s.skipped).sum(),
                p50_ms: percentile(&lat, 0.50),
                p99_ms: percentile(&lat, 0.99),
                rss_mib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
                fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
                threads: samples.iter().map(|s| s.threads).max().unwrap_or(0),
                slots_max: samples.iter().map(|s| s.slots_in_use).fold(0.0, f64::max),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct Report<'a> {
    date_utc: String,
    commit: String,
    command: String,
    machine: Machine,
    minutes_asked: f64,
    saturation_rps: f64,
    rate_rps: f64,
    checks: &'a [Check],
    minutes: Vec<Minute>,
    timeline: &'a [Entry],
    quiet_points: &'a [QuietCheck],
    end_check: &'a QuietCheck,
    unexplained_samples: &'a [String],
    hostile: &'a crate::hostile::Counts,
    samples: &'a [Sample],
}

pub fn write(r: &Run, checks: &[Check], dir: &Path) -> Result<(), String> {
    let mut machine = Machine::new(cores(), r.loadavg.clone());
    machine.loadavg_at_end = Some(weft_benches::report::loadavg());
    let rep = Report {
        date_utc: date_utc(),
        commit: commit(),
        command: format!("soak{}", argv()),
        machine,
        minutes_asked: r.args.minutes,
        saturation_rps: r.saturation,
        rate_rps: r.rate,
        checks,
        minutes: minutes(r),
        timeline: &r.timeline,
        quiet_points: &r.quiet,
        end_check: &r.end_check,
        unexplained_samples: &r.unexplained,
        hostile: &r.hostile,
        samples: &r.samples,
    };
    let md = markdown(r, &rep);
    write_report(dir, "soak", &rep, &md)?;
    crate::chart::draw(r, &dir.join("soak.png"))?;
    print!("{md}");
    eprintln!("soak: wrote {}/soak.{{md,json,png}}", dir.display());
    Ok(())
}

fn markdown(r: &Run, rep: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# weft soak: {} min, {} · {} · {} cores ({})\n",
        r.args.minutes, rep.commit, rep.date_utc, rep.machine.cores, rep.machine.cpu_model
    );
    if let Some(note) = rep.machine.busy_note("") {
        s.push_str(&note);
    }
    let _ = writeln!(
        s,
        "`{}`: saturation probe {:.0} req/s, load {:.0} req/s; proxy threads {}; warm-up {:.0} s; \
         grace after a fault window {} s (growth judged in runs of {} s or more).\n",
        rep.command,
        r.saturation,
        r.rate,
        r.args.proxy_threads,
        WARM_UP_S,
        GRACE.as_secs(),
        JUDGE_GROWTH_FROM_S
    );
    s.push_str("## Checks\n\n");
    for c in checks_of(rep) {
        let _ = writeln!(s, "- {c}");
    }
    s.push_str("\n## Per minute\n\n| min | requests | req/s | errors by fault | unexplained | skipped | p50 ms | p99 ms | RSS MiB | fds | threads | slots max |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &rep.minutes {
        let errors: Vec<String> = m.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {:.0} |",
            m.minute,
            m.requests,
            m.rps,
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join(", ")
            },
            m.unexplained,
            m.skipped,
            m.p50_ms,
            m.p99_ms,
            m.rss_mib,
            m.fds,
            m.threads,
            m.slots_max
        );
    }
    s.push_str("\n## Faults\n\n");
    let mut by: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for e in &r.timeline {
        let d = by.entry(e.kind.name()).or_default();
        d.0 += 1;
        d.1 += e.end_s.unwrap_or(e.start_s) - e.start_s;
    }
    for (k, (n, secs)) in by {
        let _ = writeln!(s, "- {k}: {n} window(s), {secs:.1} s in all");
    }
    let b = &r.bursts;
    let _ = writeln!(
        s,
        "- arena bursts: {} requests, {} answered, {} 503",
        b.sent.load(Ordering::Relaxed),
        b.ok.load(Ordering::Relaxed),
        b.busy.load(Ordering::Relaxed)
    );
    if let Some(n) = r.listen_overflows {
        let _ = writeln!(
            s,
            "- listen queue overflows during the run (the kernel's count for every listener on this machine): {n}"
        );
    }
    let h = &r.hostile;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        s,
        "- hostile clients: {} idle keep-alive connections at most at once ({} closed by the proxy's idle timeout and \
         opened again); {} slowloris connections closed by the proxy (longest open {} ms); {} oversized-header \
         requests: {} answered 431, {} closed unanswered, {} otherwise; {} requests dropped mid-body, {} responses dropped mid-body",
        g(&h.idle_peak),
        g(&h.idle_closed_by_proxy),
        g(&h.slowloris_closed),
        g(&h.slowloris_longest_ms),
        g(&h.oversized_sent),
        g(&h.oversized_431),
        g(&h.oversized_closed),
        g(&h.oversized_other),
        g(&h.cut_request_bodies),
        g(&h.cut_response_bodies)
    );
    if !r.unexplained.is_empty() {
        s.push_str("\n## Unexplained errors (first 50)\n\n");
        for u in &r.unexplained {
            let _ = writeln!(s, "- {u}");
        }
    }
    s
}

fn checks_of<'a>(rep: &'a Report) -> &'a [Check] {
    rep.checks
}

/// The colour of a fault window on the timeline.
pub fn window_rgb(w: Window) -> (u8, u8, u8) {
    match w {
        Window::UpstreamKill => (214, 39, 40),
        Window::UpstreamSlow => (255, 187, 120),
        Window::Reload => (44, 160, 44),
        Window::BadReload => (148, 103, 189),
        Window::ArenaBurst => (255, 127, 14),
        Window::Quiet => (199, 199, 199),
        Window::NatsDown => (23, 190, 207),
        Window::WorkerKill => (31, 119, 180),
        Window::GarbageWorker => (140, 86, 75),
        Window::Starved => (188, 189, 34),
    }
}
