//! Asynchronous plugin calls against the inline path, with the C test plugins of
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
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weft_benches::{Flag, bench_tokio, report_medians, request, spin_on};
use weft_runtime::{Flow, InstanceOptions, InstanceSpec, Runtime, RuntimeOptions};

fn bench(c: &mut Criterion) {
    // Inside a tokio runtime, as in the proxy: a pending call's deadline is a tokio timer.
    let tokio = bench_tokio();
    let _in_tokio = tokio.enter();
    let dir = weft_test_support::c_plugins("plain");
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
    let (flag, waker) = Flag::new();

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
    report_medians(
        env!("CARGO_TARGET_TMPDIR"),
        "async_phase",
        &[
            "inline_sync",
            "inline_async_polled_once",
            "pending_complete_other_thread",
            "pending_complete_parked",
            "worker_ring_round_trip",
        ],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
