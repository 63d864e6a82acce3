//! Arena pressure: more slot-holding requests at once than the arena has slots. Each holds its
//! slot while test-async waits (well inside its deadline), so the ones beyond the free slots
//! must get 503 and every other one the upstream's answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::load::Load;
use crate::proxy::SLOTS;
use crate::timeline::Window;

/// Requests of one burst, and how long each holds its slot.
const BURST: usize = SLOTS + 128;
const HOLD_MS: u32 = 300;

/// Over the whole run.
#[derive(Default)]
pub struct Totals {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    /// 503: no slot was free (what a burst is for).
    pub busy: AtomicU64,
    /// 504 while the proxy or the runner was starved of CPU (`starve.rs`): the burst's 300 ms
    /// hold ran past the 1 s deadline.
    pub starved: AtomicU64,
    /// Anything else: a failure of the run.
    pub other: AtomicU64,
    /// Those other answers by status (0: no answer).
    pub other_statuses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

pub async fn run(load: &Arc<Load>, totals: &Arc<Totals>) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let (client, port, totals) = (load.client.clone(), load.port, totals.clone());
        let timeline = load.timeline.clone();
        set.spawn(async move {
            let start = Instant::now();
            totals.sent.fetch_add(1, Ordering::Relaxed);
            let req = hyper::Request::get(format!("http://127.0.0.1:{port}/late/burst"))
                .header("x-delay-ms", HOLD_MS.to_string())
                .body(Full::new(Bytes::new()))
                .expect("valid request");
            let status = match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                Ok(Ok(r)) => {
                    let s = r.status().as_u16();
                    match r.into_body().collect().await {
                        Ok(_) => s,
                        Err(_) => 0,
                    }
                }
                _ => 0,
            };
            let c = match status {
                200 => &totals.ok,
                503 => &totals.busy,
                504 if timeline.overlapped(Window::Starved, start, Instant::now()) => &totals.starved,
                s => {
                    *totals.other_statuses.lock().unwrap().entry(s).or_default() += 1;
                    &totals.other
                }
            };
            c.fetch_add(1, Ordering::Relaxed);
        });
    }
    while set.join_next().await.is_some() {}
}
