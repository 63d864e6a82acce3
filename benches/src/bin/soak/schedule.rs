//! The fault schedule: the same minute repeated for the length of the run, each fault opening a
//! window on the timeline while it acts, and a quiet point closing each minute (load paused,
//! every arena slot must come back).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;

use crate::burst;
use crate::load::Load;
use crate::nats::{Cmd, NatsThread, wait_until};
use crate::proxy::{Proxy, Setup};
use crate::timeline::{Open, Timeline, Window};
use crate::upstream::Upstream;

/// Offsets (seconds into each minute) of the faults.
const RELOADS: [u64; 5] = [5, 15, 25, 35, 45];
const BAD_RELOAD: u64 = 30;
const KILL: (u64, u64) = (10, 20);
const SLOW: (u64, u64) = (22, 32);
const BURST: u64 = 40;
const NATS_DOWN: u64 = 43;
const WORKER_KILL: u64 = 48;
/// A peer answering garbage in the NATS workers' queue group, for [`GARBAGE_FOR`].
const GARBAGE: u64 = 36;
const GARBAGE_FOR: Duration = Duration::from_secs(3);
/// How long nats-server stays down.
const NATS_DOWN_FOR: Duration = Duration::from_secs(2);
/// Longest wait for the NATS route to answer again after a fault.
const NATS_BACK: Duration = Duration::from_secs(15);
/// The quiet point: load paused from here to the end of the minute.
pub const QUIET: u64 = 54;

/// Longest wait at a quiet point for in-flight requests, then for the slots to come back
/// (a hang fault holds its slot for `load::HANG_MS`).
pub const DRAIN: Duration = Duration::from_secs(5);
pub const SLOTS_BACK: Duration = Duration::from_secs(5);

/// What a quiet point found.
#[derive(Clone, Debug, Serialize)]
pub struct QuietCheck {
    pub at_s: f64,
    pub slots_in_use: f64,
    pub out_slots_in_use: f64,
    pub buffer_slots_in_use: f64,
    pub orphaned_slots: f64,
    /// Milliseconds until every gauge read 0 (or the wait gave up).
    pub waited_ms: u64,
    pub ok: bool,
}

/// Things the schedule found wrong that are not responses (a reload answered unexpectedly).
pub type Problems = Arc<Mutex<Vec<String>>>;

pub struct Ctx {
    pub timeline: Arc<Timeline>,
    pub load: Arc<Load>,
    pub proxy: Arc<Mutex<Proxy>>,
    pub setup: Arc<Setup>,
    pub upstreams: Arc<AsyncMutex<Vec<Upstream>>>,
    pub quiet: Arc<Mutex<Vec<QuietCheck>>>,
    pub problems: Problems,
    pub bursts: Arc<burst::Totals>,
    /// The open upstream-kill and upstream-slow windows, closed by the restart and the end of
    /// the slowness.
    pub killed: Mutex<Option<Open>>,
    pub nats: Option<Arc<NatsThread>>,
    pub slowed: Mutex<Option<Open>>,
}

impl Ctx {
    fn problem(&self, what: String) {
        eprintln!("soak: {what}");
        self.problems.lock().unwrap().push(what);
    }
}

/// Runs the schedule from the timeline's start until `until`.
pub async fn run(ctx: Arc<Ctx>, until: Instant) {
    let t0 = ctx.timeline.t0();
    let mut minute = 0u64;
    loop {
        let base = minute * 60;
        let at = move |s: u64| t0 + Duration::from_secs(base + s);
        let mut events: Vec<(u64, Event)> = RELOADS.iter().map(|&s| (s, Event::Reload(true))).collect();
        events.extend([
            (BAD_RELOAD, Event::Reload(false)),
            (KILL.0, Event::Kill),
            (KILL.1, Event::Restart),
            (SLOW.0, Event::Slow(true)),
            (SLOW.1, Event::Slow(false)),
            (BURST, Event::Burst),
            (QUIET, Event::Quiet),
        ]);
        if ctx.nats.is_some() {
            events.extend([
                (NATS_DOWN, Event::NatsDown),
                (WORKER_KILL, Event::WorkerKill),
                (GARBAGE, Event::Garbage),
            ]);
        }
        events.sort_by_key(|e| e.0);
        for (s, ev) in events {
            if at(s) >= until {
                return;
            }
            tokio::time::sleep_until(at(s).into()).await;
            ev.apply(&ctx, at(60).min(until)).await;
        }
        minute += 1;
        if at(0) >= until {
            return;
        }
    }
}

enum Event {
    Reload(bool),
    Kill,
    Restart,
    Slow(bool),
    Burst,
    Quiet,
    NatsDown,
    WorkerKill,
    Garbage,
}

impl Event {
    async fn apply(self, ctx: &Arc<Ctx>, minute_end: Instant) {
        let tl = &ctx.timeline;
        match self {
            Event::Reload(valid) => {
                let w = tl.begin(if valid { Window::Reload } else { Window::BadReload });
                let (proxy, setup) = (ctx.proxy.clone(), ctx.setup.clone());
                let r = tokio::task::spawn_blocking(move || proxy.lock().unwrap().reload(&setup, valid)).await;
                tl.end(w);
                let want = if valid { 200 } else { 400 };
                match r {
                    Ok(Ok(s)) if s == want => {}
                    Ok(Ok(s)) => ctx.problem(format!("a {} reload answered {s}, not {want}", kind(valid))),
                    Ok(Err(e)) => ctx.problem(format!("a {} reload failed: {e}", kind(valid))),
                    Err(e) => ctx.problem(format!("reload task: {e}")),
                }
            }
            Event::Kill => {
                // The window stays open until the restart; its end closes it.
                let w = tl.begin(Window::UpstreamKill);
                ctx.upstreams.lock().await[0].kill();
                *ctx.killed.lock().unwrap() = Some(w);
            }
            Event::Restart => {
                if let Err(e) = ctx.upstreams.lock().await[0].restart().await {
                    ctx.problem(e);
                }
                if let Some(w) = ctx.killed.lock().unwrap().take() {
                    tl.end(w);
                }
            }
            Event::Slow(on) => {
                ctx.upstreams.lock().await[1].set_slow(on);
                if on {
                    *ctx.slowed.lock().unwrap() = Some(tl.begin(Window::UpstreamSlow));
                } else if let Some(w) = ctx.slowed.lock().unwrap().take() {
                    tl.end(w);
                }
            }
            Event::Burst => {
                let w = tl.begin(Window::ArenaBurst);
                burst::run(&ctx.load, &ctx.bursts).await;
                tl.end(w);
            }
            Event::NatsDown | Event::WorkerKill => nats_fault(ctx, matches!(self, Event::NatsDown)).await,
            Event::Garbage => garbage_fault(ctx).await,
            Event::Quiet => {
                let w = tl.begin(Window::Quiet);
                let check = quiet_point(ctx).await;
                if !check.ok {
                    ctx.problem(format!("quiet point at {:.0} s: slots not back: {check:?}", check.at_s));
                }
                ctx.quiet.lock().unwrap().push(check);
                tokio::time::sleep_until(minute_end.into()).await;
                ctx.load.paused.store(false, Ordering::Relaxed);
                tl.end(w);
            }
        }
    }
}

fn kind(valid: bool) -> &'static str {
    if valid { "valid" } else { "invalid" }
}

/// Pauses the load, waits for in-flight requests, then for every arena gauge to read 0
/// (load stays paused; the caller resumes it).
pub async fn quiet_point(ctx: &Arc<Ctx>) -> QuietCheck {
    ctx.load.paused.store(true, Ordering::Relaxed);
    let start = Instant::now();
    while ctx.load.stats.in_flight.load(Ordering::Relaxed) > 0 && start.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    loop {
        let proxy = ctx.proxy.clone();
        let m = tokio::task::spawn_blocking(move || proxy.lock().unwrap().metrics())
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .unwrap_or_default();
        let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let c = QuietCheck {
            at_s: ctx.timeline.secs(start),
            slots_in_use: g("weft_arena_slots_in_use"),
            out_slots_in_use: g("weft_arena_out_slots_in_use"),
            buffer_slots_in_use: g("weft_arena_buffer_slots_in_use"),
            orphaned_slots: g("weft_plugin_orphaned_slots"),
            waited_ms: t.elapsed().as_millis() as u64,
            ok: false,
        };
        let zero = [
            c.slots_in_use,
            c.out_slots_in_use,
            c.buffer_slots_in_use,
            c.orphaned_slots,
        ]
        .iter()
        .all(|v| *v == 0.0);
        if zero || t.elapsed() > SLOTS_BACK {
            return QuietCheck { ok: zero, ..c };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A peer answering garbage joins the NATS instance's queue group for [`GARBAGE_FOR`]; the
/// window stays open until the route answers again without it. A peer no call reached is a
/// problem: the fault did not happen.
async fn garbage_fault(ctx: &Arc<Ctx>) {
    let Some(nats) = ctx.nats.clone() else { return };
    let w = ctx.timeline.begin(Window::GarbageWorker);
    let answered = crate::garbage::answer_garbage(&nats.url, crate::proxy::NATS_INSTANCE, GARBAGE_FOR).await;
    let back = route_back(ctx, "/nats").await;
    ctx.timeline.end(w);
    match answered {
        Ok(0) => ctx.problem("the garbage-answering NATS peer got no call in its window".into()),
        Ok(_) => {}
        Err(e) => ctx.problem(e),
    }
    if let Err(e) = back {
        ctx.problem(format!("{e} after the garbage-answering peer left"));
    }
}

/// Waits (up to [`NATS_BACK`]) until `path` answers 2xx again.
async fn route_back(ctx: &Arc<Ctx>, path: &'static str) -> Result<(), String> {
    let load = ctx.load.clone();
    let rt = tokio::runtime::Handle::current();
    let back = tokio::task::spawn_blocking(move || wait_until(NATS_BACK, || rt.block_on(load.probe(path))))
        .await
        .map_err(|e| e.to_string())?;
    if back {
        Ok(())
    } else {
        Err(format!("the route {path} did not answer within {NATS_BACK:?}"))
    }
}

/// Kills nats-server (restarted after [`NATS_DOWN_FOR`]) or a worker (replaced), the window
/// open until the NATS route answers again.
async fn nats_fault(ctx: &Arc<Ctx>, server: bool) {
    let Some(nats) = ctx.nats.clone() else { return };
    let w = ctx
        .timeline
        .begin(if server { Window::NatsDown } else { Window::WorkerKill });
    let cmd = if server {
        Cmd::BounceServer(NATS_DOWN_FOR)
    } else {
        Cmd::ReplaceWorker
    };
    let done = tokio::task::spawn_blocking(move || nats.call(cmd))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let r = match done {
        Ok(()) => route_back(ctx, "/nats")
            .await
            .map_err(|e| format!("{e} after the fault")),
        Err(e) => Err(e),
    };
    ctx.timeline.end(w);
    if let Err(e) = r {
        ctx.problem(e);
    }
}
