//! The fault timeline the scheduler writes and the classifier reads: which fault was active when,
//! and whether an error response is explained by one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// After a fault window ends, errors it caused may still arrive for this long (requests that
/// were in flight, pooled connections to a killed upstream, the passive-health trial).
pub const GRACE: Duration = Duration::from_secs(2);

/// A fault that runs for a window of time (the scheduler's), as opposed to the per-request
/// faults a request asks for in its own headers ([`RequestFault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Window {
    /// Upstream A's listener and connections closed, restarted on the same port at the end.
    UpstreamKill,
    /// Upstream B answers every request 300 ms late (below the upstream timeout: no errors).
    UpstreamSlow,
    /// A valid config reload (no errors expected).
    Reload,
    /// An invalid config reload, refused with 400 (no errors expected).
    BadReload,
    /// Slot-holding requests beyond the arena's slots: 503 expected.
    ArenaBurst,
    /// Load paused, waiting for every slot to come back.
    Quiet,
    /// nats-server killed, then restarted on its port; the window ends when the NATS route
    /// answers again.
    NatsDown,
    /// A Go worker SIGKILLed with requests in flight, and replaced.
    WorkerKill,
    /// A NATS peer in the workers' queue group answering garbage (`garbage.rs`); the window ends
    /// when the route answers again without it.
    GarbageWorker,
    /// A thread of the proxy or of the runner waited for a CPU for at least half of the
    /// interval (`starve.rs`): the machine's other work set the pace of its timers and answers.
    Starved,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::UpstreamKill => "upstream-kill",
            Window::UpstreamSlow => "upstream-slow",
            Window::Reload => "reload",
            Window::BadReload => "bad-reload",
            Window::ArenaBurst => "arena-burst",
            Window::Quiet => "quiet",
            Window::NatsDown => "nats-down",
            Window::WorkerKill => "worker-kill",
            Window::GarbageWorker => "garbage-worker",
            Window::Starved => "starved",
        }
    }

    /// The statuses this fault may cause on a route of `kind`.
    fn explains(self, status: u16, route: RouteKind) -> bool {
        match self {
            Window::UpstreamKill => matches!(status, 502..=504),
            Window::ArenaBurst => status == 503 && route != RouteKind::NoPlugins,
            // A remote call that cannot be made (no connection, no worker) or that times out.
            // A reply the proxy cannot use fails that call the same way.
            Window::NatsDown | Window::WorkerKill | Window::GarbageWorker => {
                route == RouteKind::Nats && matches!(status, 500 | 502..=504)
            }
            // A timeout (a plugin's deadline, the upstream's) that passed while the thread that
            // would have answered in time, the proxy's or the runner's upstream, waited for a CPU.
            Window::Starved => status == 504,
            Window::UpstreamSlow | Window::Reload | Window::BadReload | Window::Quiet => false,
        }
    }
}

/// What a request asks of the test plugins (its headers decide; the load generator picks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestFault {
    None,
    /// test-panic panics: 500.
    Panic,
    /// test-blocking sleeps past its instance's deadline: 504.
    Hang,
    /// test-async completes after its instance's deadline: 504.
    LateAsync,
}

impl RequestFault {
    pub fn name(self) -> &'static str {
        match self {
            RequestFault::None => "none",
            RequestFault::Panic => "panic",
            RequestFault::Hang => "hang",
            RequestFault::LateAsync => "late-async",
        }
    }

    /// How late the plugin answers a request with this fault (`load::HANG_MS`, `LATE_MS`).
    pub fn delay(self) -> Option<Duration> {
        match self {
            RequestFault::Hang => Some(Duration::from_millis(crate::load::HANG_MS.into())),
            RequestFault::LateAsync => Some(Duration::from_millis(crate::load::LATE_MS.into())),
            RequestFault::None | RequestFault::Panic => None,
        }
    }

    /// The status this fault must produce, if it is one.
    pub fn status(self) -> Option<u16> {
        match self {
            RequestFault::None => None,
            RequestFault::Panic => Some(500),
            RequestFault::Hang | RequestFault::LateAsync => Some(504),
        }
    }
}

/// Which routes a request went through (what a window fault may do to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// Plugins in the chain (an arena slot per request).
    Plugins,
    /// No plugins: only the upstream can fail it.
    NoPlugins,
    /// The `type: nats` instance: its plugin runs on a worker behind nats-server.
    Nats,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub kind: Window,
    /// Seconds since the run started.
    pub start_s: f64,
    pub end_s: Option<f64>,
}

/// Every window fault of the run, shared by the scheduler (writes) and the classifier (reads).
pub struct Timeline {
    t0: Instant,
    entries: Mutex<Vec<Entry>>,
}

/// An open window; [`Timeline::end`] closes it.
pub struct Open(usize);

impl Timeline {
    pub fn new(t0: Instant) -> Timeline {
        Timeline {
            t0,
            entries: Mutex::new(Vec::new()),
        }
    }

    pub fn t0(&self) -> Instant {
        self.t0
    }

    pub fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }

    pub fn begin(&self, kind: Window) -> Open {
        let mut e = self.entries.lock().unwrap();
        e.push(Entry {
            kind,
            start_s: self.secs(Instant::now()),
            end_s: None,
        });
        Open(e.len() - 1)
    }

    pub fn end(&self, open: Open) {
        let now = self.secs(Instant::now());
        self.entries.lock().unwrap()[open.0].end_s = Some(now);
    }

    /// Adds a window that is already over (`start_s` to `end_s`); one of the same kind ending at
    /// `start_s` is extended instead, so a long stretch stays one window.
    pub fn add(&self, kind: Window, start_s: f64, end_s: f64) {
        let mut e = self.entries.lock().unwrap();
        if let Some(last) = e.iter_mut().rev().find(|w| w.kind == kind)
            && last.end_s == Some(start_s)
        {
            last.end_s = Some(end_s);
            return;
        }
        e.push(Entry {
            kind,
            start_s,
            end_s: Some(end_s),
        });
    }

    /// Whether a window of `kind` (or the grace after it) overlapped `start` to `end`.
    pub fn overlapped(&self, kind: Window, start: Instant, end: Instant) -> bool {
        let (s, e) = (self.secs(start), self.secs(end));
        let grace = GRACE.as_secs_f64();
        self.entries
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.kind == kind && w.start_s <= e && s <= w.end_s.unwrap_or(f64::INFINITY) + grace)
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// The window fault that explains `status` for a request on `route` that ran from `start`
    /// to `end`: one active (or within [`GRACE`] of its end) during the request.
    pub fn explain(&self, status: u16, route: RouteKind, start: Instant, end: Instant) -> Option<Window> {
        let (s, e) = (self.secs(start), self.secs(end));
        let grace = GRACE.as_secs_f64();
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .rev()
            .find(|w| {
                let w_end = w.end_s.unwrap_or(f64::INFINITY) + grace;
                w.start_s <= e && s <= w_end && w.kind.explains(status, route)
            })
            .map(|w| w.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_explains_its_statuses_during_it_and_its_grace_only() {
        let t0 = Instant::now() - Duration::from_secs(100);
        let tl = Timeline::new(t0);
        tl.entries.lock().unwrap().push(Entry {
            kind: Window::UpstreamKill,
            start_s: 10.0,
            end_s: Some(20.0),
        });
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let p = RouteKind::Plugins;
        assert_eq!(tl.explain(502, p, at(9.0), at(10.5)), Some(Window::UpstreamKill));
        assert_eq!(tl.explain(502, p, at(21.0), at(21.5)), Some(Window::UpstreamKill));
        assert_eq!(tl.explain(502, p, at(5.0), at(9.0)), None);
        assert_eq!(tl.explain(502, p, at(23.0), at(24.0)), None);
        assert_eq!(tl.explain(500, p, at(15.0), at(15.1)), None);
    }

    #[test]
    fn starved_intervals_merge_and_explain_timeouts_only() {
        let t0 = Instant::now() - Duration::from_secs(100);
        let tl = Timeline::new(t0);
        tl.add(Window::Starved, 30.0, 31.0);
        tl.add(Window::Starved, 31.0, 32.5);
        tl.add(Window::Starved, 50.0, 51.0);
        let starved: Vec<_> = tl.entries().into_iter().map(|e| (e.start_s, e.end_s)).collect();
        assert_eq!(starved, [(30.0, Some(32.5)), (50.0, Some(51.0))]);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let p = RouteKind::NoPlugins;
        assert_eq!(tl.explain(504, p, at(29.0), at(30.5)), Some(Window::Starved));
        assert_eq!(tl.explain(504, p, at(34.0), at(34.2)), Some(Window::Starved));
        assert_eq!(tl.explain(502, p, at(31.0), at(31.5)), None);
        assert_eq!(tl.explain(504, p, at(40.0), at(41.0)), None);
        assert!(!tl.overlapped(Window::Starved, at(49.0), at(49.5)));
        assert!(tl.overlapped(Window::Starved, at(49.0), at(50.5)));
    }
}
