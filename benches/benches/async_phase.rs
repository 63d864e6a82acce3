//! Asynchronous plugin calls (issue 3) against the inline path, with the C test plugins of
//! examples/c-plugin/async_plugin.c:
//! - `inline`: one request-headers phase answered inline (the C handler sets one header), through
//!   the sync API and through the async API polled once (ready at the first poll);
//! - `pending_complete_other_thread`: the same handler answers `Pending` and a helper thread that
//!   spins on its queue completes the call (writes the record, calls `complete`); the bench
//!   thread polls the phase future, then spins until the cell's waker fires and polls it again.
//!   Both sides spin, so this is the hand-off cost, without any futex wake;
//! - `pending_complete_parked`: the same through the sync API, whose thread parks until the
//!   completion unparks it (one futex wake per call);
//! - `worker_ring_round_trip`: a blocking plugin's job through the worker ring to the C worker
//!   thread (acquire/release ring protocol, spinning before it parks) and back through `complete`.
//!
//! The bench thread is inside a tokio runtime (its deadline timers are tokio's, as in the proxy)
//! but spins itself. Medians: `target/criterion/async_phase/*/new/estimates.json`; the ratio of
//! each to the inline path is printed at the end.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weft_runtime::{Flow, InstanceOptions, InstanceSpec, Runtime, RuntimeOptions};

fn request(extra: &[(&str, &str)]) -> http::request::Parts {
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

/// A waker that raises a flag the bench thread spins on.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Drives `fut` to completion on this thread, spinning (not parking) between polls.
fn spin_on<F: Future>(fut: F, flag: &Arc<Flag>, waker: &Waker) -> F::Output {
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

fn bench(c: &mut Criterion) {
    // Inside a tokio runtime, as in the proxy: a pending call's deadline is a tokio timer.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _in_tokio = tokio.enter();
    let dir = weft_benches::c_plugin_dir();
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    rt.load_library("async", &dir.join("libweft_c_async.so")).unwrap();
    let spec = |name: &str, plugin: &str| InstanceSpec {
        name: name.into(),
        library: "async".into(),
        plugin: plugin.into(),
        config_json: b"{}".to_vec(),
        fail_open: false,
    };
    let opts = InstanceOptions {
        deadline: Duration::from_secs(10),
        ..InstanceOptions::default()
    };
    let delay = rt.instantiate_with(spec("delay", "async-delay"), opts.clone()).unwrap();
    let blocking = rt.instantiate_with(spec("blocking", "blocking"), opts).unwrap();
    let client = "127.0.0.1:1234".parse().unwrap();
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());

    let mut g = c.benchmark_group("async_phase");
    let chain = rt.chain(&[delay]);
    let mut ex = chain.start(client, "http").unwrap().unwrap();

    let mut inline = request(&[]);
    assert!(matches!(ex.request_headers(&mut inline), Flow::Continue));
    assert_eq!(inline.headers["x-async"], "inline");
    g.bench_function("inline_sync", |b| {
        b.iter(|| black_box(ex.request_headers(black_box(&mut inline))))
    });
    g.bench_function("inline_async_polled_once", |b| {
        b.iter(|| {
            let fut = pin!(ex.request_headers_async(black_box(&mut inline)));
            match fut.poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(flow) => black_box(flow),
                Poll::Pending => unreachable!("an inline answer is ready at the first poll"),
            }
        })
    });

    let mut spin = request(&[("x-complete", "spin")]);
    let flow = spin_on(ex.request_headers_async(&mut spin), &flag, &waker);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(spin.headers["x-async"], "done");
    g.bench_function("pending_complete_other_thread", |b| {
        b.iter(|| black_box(spin_on(ex.request_headers_async(black_box(&mut spin)), &flag, &waker)))
    });
    g.bench_function("pending_complete_parked", |b| {
        b.iter(|| black_box(ex.request_headers(black_box(&mut spin))))
    });
    drop(ex);

    let chain = rt.chain(&[blocking]);
    let mut ex = chain.start(client, "http").unwrap().unwrap();
    let mut job = request(&[]);
    assert!(matches!(
        spin_on(ex.request_headers_async(&mut job), &flag, &waker),
        Flow::Continue
    ));
    assert_eq!(job.headers["x-blocking"], "done");
    g.bench_function("worker_ring_round_trip", |b| {
        b.iter(|| black_box(spin_on(ex.request_headers_async(black_box(&mut job)), &flag, &waker)))
    });
    g.finish();
    drop(ex);

    // Single timed round trips of the ring, for percentiles.
    let mut ex = chain.start(client, "http").unwrap().unwrap();
    let mut samples: Vec<u64> = (0..50_000)
        .map(|_| {
            let t = Instant::now();
            black_box(spin_on(ex.request_headers_async(&mut job), &flag, &waker));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "worker ring phase round trip, single: p50 {} ns, p90 {} ns, p99 {} ns ({} jobs posted in all)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        rt.stats.worker_jobs.load(Ordering::Relaxed)
    );
    report();
}

/// Prints each median and its ratio to the inline path (from criterion's estimates).
fn report() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("criterion/async_phase");
    let median = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(name).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    let Some(base) = median("inline_sync") else { return };
    for name in [
        "inline_sync",
        "inline_async_polled_once",
        "pending_complete_other_thread",
        "pending_complete_parked",
        "worker_ring_round_trip",
    ] {
        if let Some(m) = median(name) {
            println!("async_phase/{name}: median {m:.0} ns, {:.1}x inline", m / base);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
