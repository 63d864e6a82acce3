//! One request-headers phase through a real Go plugin: the host lays the request out in its
//! arena slot, calls the Go handler (which reads the path and two headers in place and sets one
//! header), then validates and applies the mutation batch.
//!
//! Compared against a bare call into an exported empty Go function (the cgo floor), the same
//! path with a Go handler that does nothing (view encoding, one cgo call, an empty batch), the
//! example C plugin's phase (the host's path without Go) and a full request (slot lease + phase +
//! release). The `cold_phase` group repeats the calls from cold caches.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use weft_runtime::{Flow, InstanceId, InstanceSpec, Runtime, RuntimeOptions};

/// The allocator weft-proxy uses (`proxy/src/main.rs`): a phase's allocations (a header name or
/// value a plugin sets) cost here what they cost in the proxy.
#[global_allocator]
static GLOBAL: weft_runtime::alloc::MiMalloc = weft_runtime::alloc::MiMalloc;

/// The benchmarks' request with two more headers: ten in all.
fn request() -> http::request::Parts {
    weft_benches::request(&[("connection", "keep-alive"), ("referer", "http://example.com/")])
}

fn phase(c: &mut Criterion) {
    let lib = weft_test_support::go_library("test").to_path_buf();
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
    // bench-header without its declaration of the two headers it reads: every line laid out.
    let every_line = rt.instantiate(spec("every", "bench-header-every-line", "{}")).unwrap();
    let noop = rt.instantiate(spec("noop", "header-rewriter", "{}")).unwrap();
    let client = "127.0.0.1:1234".parse().unwrap();

    let mut g = c.benchmark_group("request_headers_phase");
    let thread_start = go_thread_start(&lib);
    g.bench_function("bare_cgo_call", |b| {
        // SAFETY: an exported Go function without arguments; this thread is bound to Go already.
        b.iter(|| unsafe { thread_start() })
    });
    for (label, id) in [
        ("go_noop_handler", noop),
        ("go_read_path_2_headers_set_1", bench),
        ("go_read_path_2_headers_set_1_every_line", every_line),
    ] {
        let chain = rt.chain(&[id]);
        let mut ex = chain.start(client, "http").unwrap().unwrap();
        let mut parts = request();
        // One call up front proves the plugin did its work (x-bench only from bench-header).
        assert!(matches!(ex.request_headers(&mut parts), Flow::Continue));
        assert_eq!(parts.headers.get("x-bench").is_some(), label.contains("set_1"));
        g.bench_function(label, |b| {
            b.iter(|| {
                let flow = ex.request_headers(black_box(&mut parts));
                debug_assert!(matches!(flow, Flow::Continue));
                black_box(flow);
            })
        });
    }
    // The read path from inside the Go library's `run_on_thread`, as weft-proxy's serving
    // threads call: each call is a callback nested in a Go call (no foreign-thread entry).
    rt.thread_entries().run(|| {
        let chain = rt.chain(&[bench]);
        let mut ex = chain.start(client, "http").unwrap().unwrap();
        let mut parts = request();
        g.bench_function("go_read_path_2_headers_set_1_nested", |b| {
            b.iter(|| black_box(ex.request_headers(black_box(&mut parts))))
        });
    });
    // `c_inline/sync` times the same plugin on a four-header request; this row uses the ten
    // headers of the rows above, so that it and its cold variants compare with the Go ones.
    let stamp = c_stamp(&rt);
    {
        let chain = rt.chain(&[stamp]);
        let mut ex = chain.start(client, "http").unwrap().unwrap();
        let mut parts = request();
        g.bench_function("c_stamp", |b| {
            b.iter(|| black_box(ex.request_headers(black_box(&mut parts))))
        });
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
    spread_phase(c, &rt, [("c_stamp", stamp), ("go_read_path_2_headers_set_1", bench)]);
    cold_phase(
        c,
        &rt,
        thread_start,
        [
            ("c_stamp", stamp),
            ("go_noop_handler", noop),
            ("go_read_path_2_headers_set_1", bench),
        ],
    );
}

/// The example C plugin (`c-header-stamp`: sets a request header and `x-c-request-id`) loaded
/// into `rt`: a phase with the host's costs and no Go runtime.
fn c_stamp(rt: &Runtime) -> InstanceId {
    rt.load_library("c", &weft_test_support::c_plugins("plain").join("libweft_c_stamp.so"))
        .unwrap();
    rt.instantiate(InstanceSpec {
        name: "stamp".into(),
        library: "c".into(),
        plugin: "c-header-stamp".into(),
        config_json: b"{}".to_vec(),
        fail_open: false,
    })
    .unwrap()
}

/// The same calls from cold caches: before each call the thread writes one byte per cache line
/// of a buffer, 1 MiB (`l2cold_*`: the core's L1 and L2 hold other data, as on a serving thread
/// that ran other connections since) or 32 MiB (`cold_*`: the shared L3 too, as after the
/// thread slept while other processes ran). Only the call is timed. What a plugin costs at one
/// connection is closer to these than to the hot loop (`docs/performance.md`).
fn cold_phase(
    c: &mut Criterion,
    rt: &std::sync::Arc<Runtime>,
    thread_start: unsafe extern "C" fn(),
    phases: [(&str, InstanceId); 3],
) {
    let client = "127.0.0.1:1234".parse().unwrap();
    let mut g = c.benchmark_group("cold_phase");
    for (prefix, bytes) in [("l2cold", 1usize << 20), ("cold", 32 << 20)] {
        let mut thrash = vec![0u8; bytes];
        let mut cold = |b: &mut criterion::Bencher<'_>, f: &mut dyn FnMut()| {
            b.iter_batched(
                || {
                    for i in (0..thrash.len()).step_by(64) {
                        thrash[i] = thrash[i].wrapping_add(1);
                    }
                },
                |()| f(),
                criterion::BatchSize::PerIteration,
            )
        };
        g.bench_function(format!("{prefix}_nothing"), |b| cold(b, &mut || black_box(())));
        // SAFETY: as in `phase`.
        g.bench_function(format!("{prefix}_bare_cgo_call"), |b| {
            cold(b, &mut || unsafe { thread_start() })
        });
        for (label, id) in phases {
            let chain = rt.chain(&[id]);
            let mut ex = chain.start(client, "http").unwrap().unwrap();
            let mut parts = request();
            g.bench_function(format!("{prefix}_{label}"), |b| {
                cold(b, &mut || {
                    black_box(ex.request_headers(black_box(&mut parts)));
                })
            });
        }
    }
    g.finish();
}

/// The same phase over `n` requests in flight on one thread, called in turn (as a serving thread
/// with `n` connections calls them): each call finds its own slot, view and header map where the
/// other requests' calls left the caches. `_1` is the hot loop of `request_headers_phase`.
fn spread_phase(c: &mut Criterion, rt: &std::sync::Arc<Runtime>, phases: [(&str, InstanceId); 2]) {
    let client = "127.0.0.1:1234".parse().unwrap();
    let mut g = c.benchmark_group("spread_phase");
    for (label, id) in phases {
        let chain = rt.chain(&[id]);
        for n in [1usize, 8, 32, 64] {
            let mut reqs: Vec<_> = (0..n)
                .map(|_| (chain.start(client, "http").unwrap().unwrap(), request()))
                .collect();
            let mut i = 0;
            g.bench_function(format!("{label}_{n}_requests"), |b| {
                b.iter(|| {
                    let (ex, parts) = &mut reqs[i];
                    i = if i + 1 == n { 0 } else { i + 1 };
                    black_box(ex.request_headers(black_box(parts)))
                })
            });
        }
    }
    g.finish();
}

/// The descriptor's `thread_start` of the Go library at `lib` (already loaded by the runtime):
/// an exported Go function that does nothing, so calling it costs one C-to-Go call and return.
fn go_thread_start(lib: &std::path::Path) -> unsafe extern "C" fn() {
    use weft_runtime::abi::{WeftHostApi, WeftPluginDescriptor};
    // SAFETY: the library is the runtime's Go plugin library; a Go library is never unloaded,
    // and leaking this handle keeps it so.
    let lib: &'static libloading::Library = Box::leak(Box::new(unsafe { libloading::Library::new(lib) }.unwrap()));
    // SAFETY: the symbol's type is fixed by weft.h; a NULL host leaves the host the runtime gave.
    let desc = unsafe {
        let entry = lib
            .get::<unsafe extern "C" fn(*const WeftHostApi) -> *const WeftPluginDescriptor>(b"weft_plugin_entry\0")
            .unwrap();
        &*entry(std::ptr::null())
    };
    desc.thread_start.expect("a Go library has thread_start")
}

/// The host-side pieces of a phase without the plugin call: laying the view out, and decoding,
/// validating and applying a one-record batch.
fn host_side(c: &mut Criterion) {
    use weft_runtime::{abi::WeftMutationOp, abi::WeftPhase, mutation, view};
    let parts = request();
    let ident = view::ViewIdentity {
        request_id: 1,
        slot: 0,
        generation: 1,
        client: "127.0.0.1:1234".parse::<std::net::SocketAddr>().unwrap().into(),
        scheme: "http",
        server_name: None,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut g = c.benchmark_group("host_side");
    g.bench_function("encode_request_view_10_headers", |b| {
        b.iter(|| {
            let head = view::RequestHead {
                method: &parts.method,
                uri: &parts.uri,
                version: parts.version,
                headers: &parts.headers,
            };
            black_box(view::encode_request(black_box(&mut buf), &ident, 0, &head).unwrap())
        })
    });
    let mut batch = Vec::new();
    mutation::encode_record(&mut batch, WeftMutationOp::SetRequestHeader as u32, 0, b"x-bench", b"1");
    let mut target = request();
    // The same 24-byte batch on every iteration: after its second decoding the thread's batch
    // memo holds it, so this measures the memo's lookup and the apply (the 8-record batch below,
    // 312 bytes, is over the memo's limit and is decoded every time).
    g.bench_function("decode_validate_apply_1_set_header", |b| {
        b.iter(|| {
            let m = mutation::decode(black_box(&batch), batch.len(), WeftPhase::RequestHeaders).unwrap();
            m.apply_to_request(black_box(&mut target));
        })
    });

    // A larger request (30 headers, as behind a CDN) and a larger batch (8 records).
    let big = request_with_30_headers();
    assert_eq!(big.headers.len(), 30);
    g.bench_function("encode_request_view_30_headers", |b| {
        b.iter(|| {
            let head = view::RequestHead {
                method: &big.method,
                uri: &big.uri,
                version: big.version,
                headers: &big.headers,
            };
            black_box(view::encode_request(black_box(&mut buf), &ident, 0, &head).unwrap())
        })
    });
    // Idempotent records (set/remove, path, query) so applying them in a loop stays the same work.
    let mut batch8 = Vec::new();
    for (name, value) in [
        ("x-bench", "1"),
        ("x-request-start", "t=1700000000000"),
        ("x-forwarded-user", "alice"),
        ("x-tenant", "acme"),
        ("x-trace", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ] {
        mutation::encode_record(
            &mut batch8,
            WeftMutationOp::SetRequestHeader as u32,
            0,
            name.as_bytes(),
            value.as_bytes(),
        );
    }
    mutation::encode_record(
        &mut batch8,
        WeftMutationOp::RemoveRequestHeader as u32,
        0,
        b"cookie",
        b"",
    );
    mutation::encode_record(&mut batch8, WeftMutationOp::SetPath as u32, 0, b"/v2/api/items", b"");
    mutation::encode_record(
        &mut batch8,
        WeftMutationOp::SetQuery as u32,
        0,
        b"limit=10&tenant=acme",
        b"",
    );
    assert!(mutation::decode(&batch8, batch8.len(), WeftPhase::RequestHeaders).is_ok());
    g.bench_function("decode_validate_8_records", |b| {
        b.iter(|| black_box(mutation::decode(black_box(&batch8), batch8.len(), WeftPhase::RequestHeaders).unwrap()))
    });
    let mut target = request();
    g.bench_function("decode_validate_apply_8_records", |b| {
        b.iter(|| {
            let m = mutation::decode(black_box(&batch8), batch8.len(), WeftPhase::RequestHeaders).unwrap();
            m.apply_to_request(black_box(&mut target));
        })
    });

    // A duration as weft reads it (the time-stamp counter, `quanta`) and as the OS clock gives it.
    quanta::Instant::now();
    g.bench_function("clock_duration_tsc", |b| {
        b.iter(|| {
            let t = black_box(quanta::Instant::now());
            black_box(quanta::Instant::now().saturating_duration_since(t))
        })
    });
    g.bench_function("clock_duration_os", |b| {
        b.iter(|| black_box(black_box(std::time::Instant::now()).elapsed()))
    });
    g.finish();
}

/// `request()` plus 20 more headers: 30 in all.
fn request_with_30_headers() -> http::request::Parts {
    let mut parts = request();
    for i in 0..20 {
        parts.headers.insert(
            http::HeaderName::from_bytes(format!("x-extra-header-{i:02}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&format!("value-{i:02}-0123456789abcdef")).unwrap(),
        );
    }
    parts
}

criterion_group!(benches, phase, host_side);
criterion_main!(benches);
