//! Runs one request-headers phase of `benches/benches/phase.rs` N times in a loop, for
//! `scripts/callgrind-phase`, which runs it under callgrind for N and 2N calls: the difference
//! is what N calls cost, exact and repeatable where
//! criterion's nanoseconds swing on this shared machine.
//!
//!   phase_count ROW N   ROW: noop | bench | bench_nested | bench_every_line | c_stamp
//!
//! `bench_every_line`: bench-header without its declaration of the headers it reads (every line
//! of the head laid out).
//! `bench_nested`: the `bench` row from inside the Go library's `run_on_thread`, as weft-proxy's
//! serving threads call.
use std::hint::black_box;
use weft_runtime::{Exchange, Flow, InstanceSpec, Runtime, RuntimeOptions};

#[global_allocator]
static GLOBAL: weft_runtime::alloc::MiMalloc = weft_runtime::alloc::MiMalloc;

#[inline(never)]
fn measured(ex: &mut Exchange, parts: &mut http::request::Parts, n: u64) {
    for _ in 0..n {
        let flow = ex.request_headers(black_box(&mut *parts));
        assert!(matches!(flow, Flow::Continue));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (row, n) = match args.as_slice() {
        [_, row, n] => (row.as_str(), n.parse::<u64>().expect("N: a number")),
        _ => {
            eprintln!("usage: phase_count noop|bench|bench_nested|bench_every_line|c_stamp N");
            std::process::exit(2)
        }
    };
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    let (library, path, plugin) = match row {
        "noop" => (
            "go",
            weft_test_support::go_library("test").to_path_buf(),
            "header-rewriter",
        ),
        "bench" | "bench_nested" => (
            "go",
            weft_test_support::go_library("test").to_path_buf(),
            "bench-header",
        ),
        "bench_every_line" => (
            "go",
            weft_test_support::go_library("test").to_path_buf(),
            "bench-header-every-line",
        ),
        "c_stamp" => (
            "c",
            weft_test_support::c_plugins("plain").join("libweft_c_stamp.so"),
            "c-header-stamp",
        ),
        other => panic!("unknown row {other}"),
    };
    rt.load_library(library, &path).unwrap();
    rt.thread_start();
    let id = rt
        .instantiate(InstanceSpec {
            name: row.into(),
            library: library.into(),
            plugin: plugin.into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut ex = chain.start("127.0.0.1:1234".parse().unwrap(), "http").unwrap().unwrap();
    let mut parts = weft_benches::request(&[("connection", "keep-alive"), ("referer", "http://example.com/")]);
    let entries = if row == "bench_nested" {
        rt.thread_entries()
    } else {
        Default::default()
    };
    entries.run(|| {
        // Warm: the first calls allocate the header map's growth and fill the caches' state.
        warm_up(&mut ex, &mut parts);
        measured(&mut ex, &mut parts, n);
    });
}

#[inline(never)]
fn warm_up(ex: &mut Exchange, parts: &mut http::request::Parts) {
    for _ in 0..100 {
        black_box(ex.request_headers(&mut *parts));
    }
}
