//! Shared set-up for weft's criterion benchmarks and runners.

pub mod procs;
pub mod report;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// The request the phase benchmarks run: `GET /api/items?limit=10` with seven common headers,
/// plus `extra`.
pub fn request(extra: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder()
        .uri("/api/items?limit=10")
        .header("host", "example.com");
    for (k, v) in [
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("accept-language", "en"),
        ("cache-control", "no-cache"),
        ("x-request-id", "0123456789abcdef"),
        ("cookie", "a=b; c=d"),
    ] {
        b = b.header(k, v);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// A one-worker tokio runtime for benchmarks of pending calls, whose deadlines are tokio timers
/// as in the proxy: enter it (`.enter()`) on the bench thread.
pub fn bench_tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A waker that raises a flag the bench thread spins on.
pub struct Flag(AtomicBool);

impl Flag {
    /// A flag and a waker that raises it.
    pub fn new() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Drives `fut` to completion on this thread, spinning (not parking) between polls.
pub fn spin_on<F: Future>(fut: F, flag: &Arc<Flag>, waker: &Waker) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(waker);
    loop {
        flag.0.store(false, Ordering::Relaxed);
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while !flag.0.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    }
}

/// Prints the median of each of `names` in criterion group `group` and its ratio to the first
/// (from criterion's `target/criterion/<group>/<name>/new/estimates.json`; `tmpdir` is the
/// bench's `CARGO_TARGET_TMPDIR`). Prints nothing for benchmarks without estimates (e.g. a
/// `cargo test` run).
pub fn report_medians(tmpdir: &str, group: &str, names: &[&str]) {
    let dir = Path::new(tmpdir).parent().unwrap().join("criterion").join(group);
    let median = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(name).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    let Some(base) = names.first().and_then(|n| median(n)) else {
        return;
    };
    for name in names {
        if let Some(m) = median(name) {
            println!("{group}/{name}: median {m:.0} ns, {:.1}x {}", m / base, names[0]);
        }
    }
}
