//! One request-headers phase through a real Go plugin, three ways (issues 3 and 7), with the
//! same work in the handler (bench-header: read the path and two headers, set `x-bench`):
//! - `inline_sync`: `bench-header` answered inline on the calling thread (the fast path);
//! - `ctx_go_spin` / `ctx_go_parked`: `bench-header-async`, whose handler hands the work to
//!   `Context.Go`: the call answers `Pending` (unless the goroutine finished first) and the
//!   goroutine completes it through `complete`. `spin`: the bench thread polls the phase future
//!   and spins until the waker fires (the hand-off without a futex wake on the host side);
//!   `parked`: through the sync API, whose thread parks until the completion unparks it;
//! - `worker_pool_spin` / `worker_pool_parked`: `bench-header` configured `blocking`, so every
//!   call is a job on a worker ring, consumed by the Go library's ring goroutine and run on its
//!   pool, then completed through `complete`.
//!
//! The bench thread is inside a tokio runtime (pending deadlines are tokio timers, as in the
//! proxy). Medians are printed at the end with their ratio to `inline_sync`.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_benches::{Flag, bench_tokio, report_medians, request, spin_on};
use weft_runtime::{Flow, InstanceOptions, InstanceSpec, Runtime, RuntimeOptions};

const NAMES: [&str; 5] = [
    "inline_sync",
    "ctx_go_spin",
    "ctx_go_parked",
    "worker_pool_spin",
    "worker_pool_parked",
];

fn bench(c: &mut Criterion) {
    let tokio = bench_tokio();
    let _in_tokio = tokio.enter();
    let lib = weft_test_support::go_library("test").to_path_buf();
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    rt.load_library("go", &lib).unwrap();
    rt.thread_start();
    let instance = |name: &str, plugin: &str, blocking: bool| {
        let spec = InstanceSpec {
            name: name.into(),
            library: "go".into(),
            plugin: plugin.into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        };
        let opts = InstanceOptions {
            deadline: Duration::from_secs(10),
            blocking,
            ..InstanceOptions::default()
        };
        rt.instantiate_with(spec, opts).unwrap()
    };
    let inline = instance("inline", "bench-header", false);
    let go = instance("go", "bench-header-async", false);
    let pool = instance("pool", "bench-header", true);
    let client = "127.0.0.1:1234".parse().unwrap();
    let (flag, waker) = Flag::new();

    let mut g = c.benchmark_group("go_async_phase");
    // (instance, spinning bench, sync-API bench): inline calls are only measured through the
    // sync API (the async one is ready at its first poll).
    for (id, spin, sync) in [
        (inline, None, NAMES[0]),
        (go, Some(NAMES[1]), NAMES[2]),
        (pool, Some(NAMES[3]), NAMES[4]),
    ] {
        let jobs_before = rt.stats.worker_jobs.load(Ordering::Relaxed);
        let chain = rt.chain(&[id]);
        let mut ex = chain.start(client, "http").unwrap().unwrap();
        let mut parts = request(&[]);
        let flow = spin_on(ex.request_headers_async(&mut parts), &flag, &waker);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(parts.headers["x-bench"], "1", "{sync}: the plugin did its work");
        let jobs = rt.stats.worker_jobs.load(Ordering::Relaxed) - jobs_before;
        assert_eq!(jobs > 0, id == pool, "{sync}: {jobs} worker jobs");
        if let Some(spin) = spin {
            g.bench_function(spin, |b| {
                b.iter(|| black_box(spin_on(ex.request_headers_async(black_box(&mut parts)), &flag, &waker)))
            });
        }
        g.bench_function(sync, |b| {
            b.iter(|| black_box(ex.request_headers(black_box(&mut parts))))
        });
    }
    g.finish();
    assert_eq!(rt.stats.plugin_failures.load(Ordering::Relaxed), 0);
    report_medians(env!("CARGO_TARGET_TMPDIR"), "go_async_phase", &NAMES);
}

criterion_group!(benches, bench);
criterion_main!(benches);
