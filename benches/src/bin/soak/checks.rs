//! Pass or fail of a run: correctness checks only (nothing here is a timing threshold).

use std::fmt;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::output::Run;
use crate::sampler::Sample;
use crate::timeline::{Entry, Window};

#[derive(Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Not judged in this run (said why in `detail`); counts as neither pass nor failure.
    pub skipped: bool,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match (self.skipped, self.ok) {
            (true, _) => "skip",
            (false, true) => "pass",
            (false, false) => "FAIL",
        };
        write!(f, "{mark}: {}: {}", self.name, self.detail)
    }
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check {
        name,
        ok,
        skipped: false,
        detail,
    }
}

/// Warm-up: the first minute, in which every fault of the schedule happens once (the first
/// burst, the first 2,000 connections, the first NATS reconnect each raise the high-water mark
/// of memory and descriptors once). Descriptors and threads at the end are compared with their
/// medians over the 10 s after it; RSS is read at the quiet points after it ([`rss_check`]).
pub const WARM_UP_S: f64 = 60.0;

/// Runs shorter than this do not judge growth: after the warm-up they would have at most one
/// more minute, too little to tell growth from the allocator settling.
pub const JUDGE_GROWTH_FROM_S: f64 = 180.0;

/// The medians of (RSS KiB, fds, threads) over the 10 s after warm-up.
pub fn baseline(samples: &[Sample], warm: f64) -> Option<(u64, u64, u64)> {
    let win: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= warm && s.t_s < warm + 10.0)
        .collect();
    if win.is_empty() {
        return None;
    }
    let med = |f: fn(&Sample) -> u64| {
        let mut v: Vec<u64> = win.iter().map(|s| f(s)).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Some((med(|s| s.rss_kib), med(|s| s.fds), med(|s| s.threads)))
}

pub fn all(r: &Run) -> Vec<Check> {
    let mut v = vec![check(
        "no crash",
        r.alive.is_ok(),
        match &r.alive {
            Ok(()) => format!("weft-proxy (pid {}) ran the whole run", r.pid),
            Err(e) => e.clone(),
        },
    )];
    let unexplained: u64 = r.seconds.iter().map(|s| s.unexplained).sum();
    let requests: u64 = r.seconds.iter().map(|s| s.requests).sum();
    v.push(check(
        "every error explained",
        unexplained == 0 && requests > 0,
        format!("{unexplained} unexplained of {requests} responses"),
    ));
    v.extend(bodies(r));
    v.push(check(
        "slots back at the end",
        r.end_check.ok,
        format!("{:?}", r.end_check),
    ));
    let bad = r.quiet.iter().filter(|q| !q.ok).count();
    v.push(check(
        "slots back at each quiet point",
        bad == 0,
        format!("{bad} of {} quiet points with slots still in use", r.quiet.len()),
    ));
    v.extend(flat(r));
    v.extend(faults_fired(r));
    v.extend(hostile(r));
    v.push(check(
        "schedule",
        r.problems.is_empty(),
        if r.problems.is_empty() {
            "every reload answered as expected".into()
        } else {
            r.problems.join("; ")
        },
    ));
    v
}

fn bodies(r: &Run) -> Vec<Check> {
    let sum = |f: fn(&crate::upstream::Counters) -> u64| r.upstreams.iter().map(|(_, c)| f(c)).sum::<u64>();
    let ok = sum(|c| c.bodies_ok.load(Ordering::Relaxed));
    let bad = sum(|c| c.body_mismatches.load(Ordering::Relaxed));
    let cut = sum(|c| c.bodies_cut.load(Ordering::Relaxed));
    vec![
        check(
            "request bodies intact",
            bad == 0 && ok > 0,
            format!("{ok} bodies checked by the upstreams, {bad} mismatched, {cut} cut off (client gone)"),
        ),
        check(
            "response bodies intact",
            r.resp_mismatches == 0,
            format!("{} responses whose body did not match", r.resp_mismatches),
        ),
    ]
}

fn flat(r: &Run) -> Vec<Check> {
    let run_s = r.args.minutes * 60.0;
    let warm = WARM_UP_S;
    if run_s < JUDGE_GROWTH_FROM_S {
        let why = format!(
            "not judged: a run of {run_s:.0} s is shorter than {JUDGE_GROWTH_FROM_S:.0} s (warm-up {warm:.0} s, then at least two minutes)"
        );
        return [
            "RSS within +10 % from the first to the second half",
            "file descriptors flat",
            "threads flat",
        ]
        .into_iter()
        .map(|name| Check {
            name,
            ok: true,
            skipped: true,
            detail: why.clone(),
        })
        .collect();
    }
    let Some((_, fds0, thr0)) = baseline(&r.samples, warm) else {
        return vec![check(
            "RSS flat",
            false,
            format!("no samples after the {warm:.0} s warm-up"),
        )];
    };
    let last = r.samples.last().expect("samples after warm-up");
    vec![
        rss_check(r, warm),
        check(
            "file descriptors flat",
            last.fds as f64 <= fds0 as f64 * 1.1 + 64.0,
            format!("baseline {fds0}, at the end {} (allowed +10 % + 64)", last.fds),
        ),
        check(
            "threads flat",
            last.threads as f64 <= thr0 as f64 * 1.25 + 8.0,
            format!("baseline {thr0}, at the end {} (allowed +25 % + 8)", last.threads),
        ),
    ]
}

/// RSS at each quiet point after `warm` (KiB): the last sample of each quiet window, when the
/// load has been paused and drained and every slot is back, so every minute is read in the same
/// state rather than at whatever peak of requests in flight that minute's load reached.
pub fn quiet_rss(timeline: &[Entry], samples: &[Sample], warm: f64) -> Vec<u64> {
    timeline
        .iter()
        .filter(|e| e.kind == Window::Quiet && e.start_s >= warm)
        .filter_map(|e| {
            let end = e.end_s?;
            samples
                .iter()
                .rev()
                .find(|s| s.t_s >= e.start_s && s.t_s <= end)
                .map(|s| s.rss_kib)
        })
        .collect()
}

/// The medians of the first and the second half of `q`, and the growth from one to the other.
fn halves(q: &[u64]) -> Option<(u64, u64, f64)> {
    if q.len() < 2 {
        return None;
    }
    let (first, second) = (median(&q[..q.len() / 2]), median(&q[q.len() - q.len() / 2..]));
    Some((first, second, second as f64 / first as f64 - 1.0))
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Memory growth: the median RSS of the second half of the quiet points after warm-up against
/// that of the first half (the middle one of an odd count in neither). A leak grows with the
/// requests served; an allocator keeping the high-water mark of the busiest minute does not.
fn rss_check(r: &Run, warm: f64) -> Check {
    let q = quiet_rss(&r.timeline, &r.samples, warm);
    let Some((first, second, growth)) = halves(&q) else {
        return check(
            "RSS within +10 % from the first to the second half",
            false,
            format!("{} quiet points after the {warm:.0} s warm-up, 2 needed", q.len()),
        );
    };
    let mib: Vec<String> = q.iter().map(|k| format!("{:.0}", *k as f64 / 1024.0)).collect();
    check(
        "RSS within +10 % from the first to the second half",
        growth <= 0.10,
        format!(
            "RSS at the quiet points after warm-up [{}] MiB: median {:.1} MiB in the first half, {:.1} MiB in the second ({:+.1} %)",
            mib.join(", "),
            first as f64 / 1024.0,
            second as f64 / 1024.0,
            growth * 100.0
        ),
    )
}

/// The faults must have happened: a run whose faults never fired proves nothing.
fn faults_fired(r: &Run) -> Vec<Check> {
    let count = |k: &str| -> u64 { r.seconds.iter().filter_map(|s| s.errors.get(k)).sum() };
    let requests: u64 = r.seconds.iter().map(|s| s.requests).sum();
    let mut v = Vec::new();
    for (k, every) in [("panic", 1000), ("late-async", 1000), ("hang", 10_000)] {
        if requests >= every * 2 {
            let n = count(k);
            v.push(check("plugin faults fired", n > 0, format!("{n} {k} errors")));
        }
    }
    let b = &r.bursts;
    let (sent, busy, other) = (
        b.sent.load(Ordering::Relaxed),
        b.busy.load(Ordering::Relaxed),
        b.other.load(Ordering::Relaxed),
    );
    if sent > 0 {
        v.push(check(
            "arena bursts",
            busy > 0 && other == 0,
            format!(
                "{sent} burst requests: {} answered, {busy} 503 (no slot), {} 504 while starved of CPU, {other} otherwise {:?}",
                b.ok.load(Ordering::Relaxed),
                b.starved.load(Ordering::Relaxed),
                b.other_statuses.lock().unwrap()
            ),
        ));
    }
    v
}

fn hostile(r: &Run) -> Vec<Check> {
    let h = &r.hostile;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let want = r.args.idle_connections as u64;
    let longest = g(&h.slowloris_longest_ms);
    // The proxy closes a slowloris connection at its header-read timeout (5 s). The bound is far
    // above it (a starved machine notices late) and below the idle timeout (60 s), the next
    // timer that would close such a connection: it shows which timer did, not how fast.
    let bound = 30_000u64;
    vec![
        check(
            "idle keep-alive connections held",
            g(&h.idle_peak) * 100 >= want * 95,
            format!("{} of {want} open at once at most", g(&h.idle_peak)),
        ),
        check(
            "slowloris connections closed at the header-read timeout",
            g(&h.slowloris_closed) > 0 && longest <= bound,
            format!(
                "{} closed, the longest after {longest} ms (bound {bound} ms)",
                g(&h.slowloris_closed)
            ),
        ),
        check(
            "oversized headers refused",
            g(&h.oversized_sent) > 0 && g(&h.oversized_other) == 0,
            format!(
                "{} sent: {} answered 431, {} closed unanswered, {} otherwise",
                g(&h.oversized_sent),
                g(&h.oversized_431),
                g(&h.oversized_closed),
                g(&h.oversized_other)
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            rss_kib,
            fds: 0,
            threads: 0,
            slots_in_use: 0.0,
            out_slots_in_use: 0.0,
            cpu_wait_share: 0.0,
        }
    }

    #[test]
    fn rss_is_read_at_the_end_of_each_quiet_point_after_warm_up() {
        let quiet = |m: f64| Entry {
            kind: Window::Quiet,
            start_s: m * 60.0 + 54.0,
            end_s: Some(m * 60.0 + 60.0),
        };
        let timeline = [quiet(0.0), quiet(1.0), quiet(2.0)];
        // A peak at second 40 of each minute, lower at its quiet point.
        let samples: Vec<Sample> = (0..180)
            .map(|t| sample(t as f64 + 0.5, if t % 60 == 40 { 900 } else { 100 + t / 60 }))
            .collect();
        assert_eq!(quiet_rss(&timeline, &samples, 60.0), [101, 102]);
    }

    #[test]
    fn a_busy_minute_in_the_first_half_passes_and_steady_growth_fails() {
        let (_, _, g) = halves(&[250, 300, 260, 255, 250, 262]).unwrap();
        assert!(g <= 0.10, "a high-water mark that comes back down: {g}");
        let (first, second, g) = halves(&[200, 210, 220, 230, 240, 250, 260]).unwrap();
        assert_eq!((first, second), (210, 250));
        assert!(g > 0.10, "growth with every minute: {g}");
        assert!(halves(&[200]).is_none());
    }
}
