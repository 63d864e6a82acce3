//! One request-headers phase through the example C plugin (`c-header-stamp`: sets a header and
//! `x-c-request-id`), answered inline: the host's per-call cost (view, call, batch decode and
//! apply) without the Go SDK's, so changes to the host path are measured on their own. Through
//! the sync API and through the async API polled once (ready at the first poll), and once more
//! with per-call timing on (`InstanceOptions::timer`, what `admin.plugin_timing` turns on).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_runtime::abi::WeftPhase;
use weft_runtime::{Flow, InstanceOptions, InstanceSpec, PhaseTimer, Runtime, RuntimeOptions};

/// A timer that sums what it is given (the proxy's histogram adds one bucket search).
#[derive(Debug, Default)]
struct Sum(AtomicU64);

impl PhaseTimer for Sum {
    fn record(&self, _phase: WeftPhase, elapsed: Duration) {
        self.0.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    rt.load_library("c", &weft_test_support::c_plugins("plain").join("libweft_c_stamp.so"))
        .unwrap();
    let id = rt
        .instantiate(InstanceSpec {
            name: "stamp".into(),
            library: "c".into(),
            plugin: "c-header-stamp".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut ex = chain.start("127.0.0.1:1234".parse().unwrap(), "http").unwrap().unwrap();
    let mut parts = http::Request::get("/api/items?limit=10")
        .header("host", "example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("cookie", "a=b; c=d")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(matches!(ex.request_headers(&mut parts), Flow::Continue));
    assert_eq!(parts.headers["x-c-stamp"], "from-c");
    let mut g = c.benchmark_group("c_inline");
    g.bench_function("sync", |b| {
        b.iter(|| black_box(ex.request_headers(black_box(&mut parts))))
    });
    g.bench_function("async_polled_once", |b| {
        b.iter(|| {
            let fut = pin!(ex.request_headers_async(black_box(&mut parts)));
            match fut.poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(flow) => black_box(flow),
                Poll::Pending => unreachable!("an inline answer is ready at the first poll"),
            }
        })
    });
    let timed = rt
        .instantiate_with(
            InstanceSpec {
                name: "stamp-timed".into(),
                library: "c".into(),
                plugin: "c-header-stamp".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            InstanceOptions {
                timer: Some(Arc::new(Sum::default())),
                ..InstanceOptions::default()
            },
        )
        .unwrap();
    let timed_chain = rt.chain(&[timed]);
    let mut tx = timed_chain
        .start("127.0.0.1:1234".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    g.bench_function("sync_timed", |b| {
        b.iter(|| black_box(tx.request_headers(black_box(&mut parts))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
