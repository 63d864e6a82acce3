//! The runtime calls an instance only in the phases its plugin declared. The phase-count C
//! plugin (tests/fixtures/c-plugins/phase_count.c, built by scripts/build-c-plugins) counts every call
//! its phase function gets, declared or not; a chain of `count-request-headers` (declares only
//! request headers) and `count-all` (request headers and body, response headers and body, log)
//! goes through every phase, and only `count-all` may see more than request headers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_runtime::{BodyMode, BodySide, Flow, InstanceSpec, Runtime, RuntimeOptions};

use weft_test_support::c_plugins;

/// Plugin indexes in phase_count.c.
const COUNT_ALL: u32 = 0;
const COUNT_REQUEST_HEADERS: u32 = 1;

/// The phase numbers of weft.h (WEFT_PHASE_*), and 8: any number past them.
const PHASES: [(u32, &str); 9] = [
    (0, "request headers"),
    (1, "request body"),
    (2, "response headers"),
    (3, "response body"),
    (4, "log"),
    (5, "websocket open"),
    (6, "websocket message"),
    (7, "websocket close"),
    (8, "unknown phase"),
];

const REQUESTS: u64 = 3;

#[test]
fn undeclared_phases_are_never_called() {
    let lib = c_plugins("plain").join("libweft_c_phase_count.so");
    let rt = Runtime::new(RuntimeOptions {
        slot_count: 8,
        slot_size: 16 * 1024,
        log_queue: 64,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap();
    let plugins = rt.load_library("count", &lib).expect("load phase-count");
    assert_eq!(plugins.len(), 3, "{plugins:?}");
    let instance = |name: &str, plugin: &str| {
        rt.instantiate(InstanceSpec {
            name: name.into(),
            library: "count".into(),
            plugin: plugin.into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap_or_else(|e| panic!("instantiate {plugin}: {e}"))
    };
    // The request-headers-only instance comes first: a request's log calls are made in chain
    // order, so once `count-all` has logged, a log call to it would have come before.
    // (The response phases run in reverse order, but synchronously on this thread.)
    let chain = rt.chain(&[
        instance("only-request-headers", "count-request-headers"),
        instance("all", "count-all"),
    ]);

    // The counters of the very library the runtime loaded (RTLD_NOLOAD: no second copy).
    let count = weft_test_support::PhaseCount::of(&lib);
    let calls = |plugin: u32, phase: u32| count.calls(plugin, phase);
    for (phase, name) in PHASES {
        assert_eq!(calls(COUNT_ALL, phase), 0, "{name} before any request");
        assert_eq!(calls(COUNT_REQUEST_HEADERS, phase), 0, "{name} before any request");
    }

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    for _ in 0..REQUESTS {
        let mut x = chain
            .start(client, "http")
            .expect("a free slot")
            .expect("the chain has phases");
        let (mut req, ()) = http::Request::post("/count")
            .header("host", "example.com")
            .body(())
            .unwrap()
            .into_parts();
        assert!(matches!(x.request_headers(&mut req), Flow::Continue));
        assert_eq!(x.body_mode(BodySide::Request), BodyMode::Streamed);
        let mut out = Vec::new();
        tokio
            .block_on(x.body_chunk(BodySide::Request, Bytes::from_static(b"request body"), true, &mut out))
            .unwrap_or_else(|e| panic!("request body: {e:?}"));
        let (mut resp, ()) = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(())
            .unwrap()
            .into_parts();
        assert!(matches!(x.response_headers(&mut resp), Flow::Continue));
        assert_eq!(x.body_mode(BodySide::Response), BodyMode::Streamed);
        tokio
            .block_on(x.body_chunk(BodySide::Response, Bytes::from_static(b"response body"), true, &mut out))
            .unwrap_or_else(|e| panic!("response body: {e:?}"));
        assert_eq!(out.concat(), b"request bodyresponse body", "bodies pass unchanged");
        // Runs the log phase (on this thread: the default `LogPlace::Inline`).
        drop(x);
    }

    // Every log phase ran (and gave its slot back).
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(COUNT_ALL, 4) < REQUESTS || rt.arena_usage().0 != 0 {
        assert!(
            Instant::now() < deadline,
            "log phases not done: {} of {REQUESTS}, arena {:?}",
            calls(COUNT_ALL, 4),
            rt.arena_usage()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // count-all saw each phase of each request once: the phases really ran through the chain.
    for (phase, name) in PHASES {
        let want = if phase <= 4 { REQUESTS } else { 0 };
        assert_eq!(calls(COUNT_ALL, phase), want, "count-all, {name}");
    }
    // count-request-headers saw its one declared phase and nothing else.
    for (phase, name) in PHASES {
        let want = if phase == 0 { REQUESTS } else { 0 };
        assert_eq!(
            calls(COUNT_REQUEST_HEADERS, phase),
            want,
            "count-request-headers, {name} (it declares only request headers)"
        );
    }
    assert_eq!(rt.stats.plugin_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
}
