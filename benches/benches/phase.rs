//! One request-headers phase through a real Go plugin: the host lays the request out in its
//! arena slot, calls the Go handler (which reads the path and two headers in place and sets one
//! header), then validates and applies the mutation batch.
//!
//! Compared against the same path with a Go handler that does nothing (the floor: view encoding
//! plus one cgo call) and against a full request (slot lease + phase + release).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use weft_runtime::{Flow, InstanceSpec, Runtime, RuntimeOptions};

fn request() -> http::request::Parts {
    let mut b = http::Request::builder()
        .uri("/api/items?limit=10")
        .header("host", "example.com");
    for (k, v) in [
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("accept-language", "en"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive"),
        ("x-request-id", "0123456789abcdef"),
        ("cookie", "a=b; c=d"),
        ("referer", "http://example.com/"),
    ] {
        b = b.header(k, v);
    }
    b.body(()).unwrap().into_parts().0
}

fn phase(c: &mut Criterion) {
    let lib = weft_benches::go_plugin_library();
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    rt.load_library("examples", &lib).unwrap();
    rt.thread_start();
    let spec = |name: &str, plugin: &str, config: &str| InstanceSpec {
        name: name.into(),
        library: "examples".into(),
        plugin: plugin.into(),
        config_json: config.as_bytes().to_vec(),
        fail_open: false,
    };
    let bench = rt.instantiate(spec("bench", "bench-header", "{}")).unwrap();
    let noop = rt.instantiate(spec("noop", "header-rewriter", "{}")).unwrap();
    let client = "127.0.0.1:1234".parse().unwrap();

    let mut g = c.benchmark_group("request_headers_phase");
    for (label, id) in [("go_noop_handler", noop), ("go_read_path_2_headers_set_1", bench)] {
        let chain = rt.chain(&[id]);
        let mut ex = chain.start(client, "http").unwrap().unwrap();
        let mut parts = request();
        g.bench_function(label, |b| {
            b.iter(|| {
                let flow = ex.request_headers(black_box(&mut parts));
                debug_assert!(matches!(flow, Flow::Continue));
                black_box(flow);
            })
        });
        assert_eq!(parts.headers.get("x-bench").is_some(), label.contains("set_1"));
    }
    let chain = rt.chain(&[bench]);
    let mut parts = request();
    g.bench_function("full_request_lease_phase_release", |b| {
        b.iter(|| {
            let mut ex = chain.start(client, "http").unwrap().unwrap();
            black_box(ex.request_headers(black_box(&mut parts)));
        })
    });
    g.finish();
}

criterion_group!(benches, phase);
criterion_main!(benches);
