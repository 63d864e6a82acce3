//! Once a second: the proxy's RSS, open descriptors and threads (/proc), its arena gauges
//! (/metrics), and how long the proxy's and the runner's threads waited for a CPU (`starve.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proxy::{Proxy, proc_readings};
use crate::starve::Starvation;
use crate::timeline::Timeline;

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub slots_in_use: f64,
    pub out_slots_in_use: f64,
    /// The largest share of the last interval one thread of the proxy or the runner spent
    /// waiting for a CPU.
    pub cpu_wait_share: f64,
}

pub struct Sampler {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Samples until stopped; starved intervals go on `timeline`.
    pub fn start(proxy: Arc<Mutex<Proxy>>, timeline: Arc<Timeline>) -> Sampler {
        let t0 = timeline.t0();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                let pid = proxy.lock().unwrap().pid();
                let mut starvation = Starvation::new(vec![pid, std::process::id()]);
                let mut next = Instant::now();
                while !st.load(Ordering::Relaxed) {
                    next += Duration::from_secs(1);
                    let (pid, m) = {
                        let p = proxy.lock().unwrap();
                        (p.pid(), p.metrics().unwrap_or_default())
                    };
                    let (rss_kib, fds, threads) = proc_readings(pid);
                    let t_s = t0.elapsed().as_secs_f64();
                    let cpu_wait_share = starvation.sample(t_s, &timeline);
                    let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
                    s.lock().unwrap().push(Sample {
                        t_s,
                        rss_kib,
                        fds,
                        threads,
                        slots_in_use: g("weft_arena_slots_in_use"),
                        out_slots_in_use: g("weft_arena_out_slots_in_use"),
                        cpu_wait_share,
                    });
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
            .expect("spawn the sampler thread");
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples.lock().unwrap().clone()
    }
}
