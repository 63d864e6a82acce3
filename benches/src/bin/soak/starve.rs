//! CPU starvation of the run's own processes, measured rather than guessed: the kernel counts for
//! every thread how long it was runnable but waiting for a CPU (`/proc/<pid>/task/<tid>/schedstat`,
//! second field, ns). When a thread of the proxy or of the runner (load generator, upstreams)
//! waited for a CPU for at least [`STARVED_SHARE`] of an interval, the machine, not weft, decided
//! when that thread ran: the interval goes on the timeline as a [`Window::Starved`] window.

use std::collections::HashMap;

use crate::timeline::{Timeline, Window};

/// The share of an interval one thread waited for a CPU from which the interval counts as
/// starved. At this share a thread that needs the CPU gets it for at most half of the time: the
/// machine's other work (load average above twice the cores), not the thread's own, sets its pace.
pub const STARVED_SHARE: f64 = 0.5;

/// Per-thread run-queue waits of the watched processes, and the starved intervals found so far.
pub struct Starvation {
    pids: Vec<u32>,
    /// Last run-queue wait (ns) per (pid, tid).
    last: HashMap<(u32, u32), u64>,
    last_t: Option<f64>,
    /// Intervals found starved (for the report), seconds since the run started.
    pub starved_s: f64,
}

impl Starvation {
    /// Watches `pids` (the proxy and this process).
    pub fn new(pids: Vec<u32>) -> Starvation {
        Starvation {
            pids,
            last: HashMap::new(),
            last_t: None,
            starved_s: 0.0,
        }
    }

    /// Reads every thread's run-queue wait at `t_s` (seconds since the run started); when one
    /// thread waited at least [`STARVED_SHARE`] of the time since the last reading, adds the
    /// interval to `timeline`. Returns the largest share seen (0 on the first reading).
    pub fn sample(&mut self, t_s: f64, timeline: &Timeline) -> f64 {
        let mut worst_ns = 0u64;
        let mut now = HashMap::new();
        for &pid in &self.pids {
            for (tid, wait) in thread_waits(pid) {
                // A thread new since the last reading waited all of its count in the interval.
                let before = self.last.get(&(pid, tid)).copied().unwrap_or(0);
                worst_ns = worst_ns.max(wait.saturating_sub(before));
                now.insert((pid, tid), wait);
            }
        }
        self.last = now;
        let Some(prev) = self.last_t.replace(t_s) else {
            return 0.0; // the counts so far are from before the run
        };
        let span = t_s - prev;
        if span <= 0.0 {
            return 0.0;
        }
        let share = worst_ns as f64 / 1e9 / span;
        if share >= STARVED_SHARE {
            timeline.add(Window::Starved, prev, t_s);
            self.starved_s += span;
        }
        share
    }
}

/// The kernel's count of connections dropped because a listen queue was full (`TcpExt:
/// ListenOverflows` in /proc/net/netstat; every listener of the network namespace, not only the
/// proxy's): a dropped SYN is retried by the client after 1, 3, 7, 15 s, so it shows as a slow
/// connect, or as no answer at all.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// (tid, ns waited on a run queue) of every thread of `pid`; empty when the process is gone or
/// the kernel keeps no such counts.
fn thread_waits(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
        Some((tid, parse_wait(&text)?))
    })
    .collect()
}

/// The run-queue wait (second field) of a `schedstat` line.
fn parse_wait(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listen_overflow_count() {
        assert!(
            listen_overflows().is_some(),
            "no TcpExt ListenOverflows in /proc/net/netstat"
        );
    }

    #[test]
    fn parses_the_second_field() {
        assert_eq!(parse_wait("1522247 98765 12\n"), Some(98765));
        assert_eq!(parse_wait("1522247"), None);
        assert_eq!(parse_wait("a b c"), None);
    }

    /// Pins the calling thread to the first CPU it may use.
    fn pin_to_first_cpu() {
        // SAFETY: plain libc calls on a zeroed cpu_set_t of this thread (pid 0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set), 0);
            let first = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| libc::CPU_ISSET(c, &set))
                .expect("a usable CPU");
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(first, &mut set);
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0);
        }
    }

    #[test]
    fn three_busy_threads_on_one_cpu_are_a_starved_interval() {
        let t0 = std::time::Instant::now();
        let timeline = Timeline::new(t0);
        let mut s = Starvation::new(vec![std::process::id()]);
        assert_eq!(
            s.sample(0.0, &timeline),
            0.0,
            "the first reading has nothing to compare"
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    pin_to_first_cpu();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let t = t0.elapsed().as_secs_f64();
        // Three threads sharing one CPU: each waits about two thirds of the time.
        let share = s.sample(t, &timeline);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in spinners {
            h.join().unwrap();
        }
        assert!(share >= STARVED_SHARE, "share {share}");
        let starved: Vec<_> = timeline
            .entries()
            .into_iter()
            .filter(|e| e.kind == Window::Starved)
            .collect();
        assert_eq!(starved.len(), 1);
        assert_eq!((starved[0].start_s, starved[0].end_s), (0.0, Some(t)));
    }
}
