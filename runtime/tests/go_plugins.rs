//! The runtime driving the real example Go library (built by the Go toolchain) through the ABI.
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use weft_runtime::{Chain, Flow, InitError, InstanceSpec, LoadError, Runtime, RuntimeOptions};

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// One runtime per test binary: the Go library can be loaded once per process.
fn runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let lib = weft_test_support::go_library("test");
        let rt = Runtime::new(RuntimeOptions {
            slot_count: 64,
            slot_size: 16 * 1024,
            log_queue: 1024,
            ..weft_runtime::RuntimeOptions::default()
        })
        .unwrap();
        let plugins = rt.load_library("examples", lib).expect("load example library");
        for want in [
            "header-rewriter",
            "bearer-auth",
            "timing-logger",
            "test-panic",
            "test-bad-header",
            "bench-header",
        ] {
            assert!(
                plugins.iter().any(|p| p.name == want),
                "library lacks {want}: {plugins:?}"
            );
        }
        rt
    })
}

fn chain(specs: &[(&str, &str, serde_json::Value, bool)]) -> Chain {
    let rt = runtime();
    let ids: Vec<_> = specs
        .iter()
        .map(|(name, plugin, config, fail_open)| {
            rt.instantiate(InstanceSpec {
                name: format!("{name}-{}", unique()),
                library: "examples".into(),
                plugin: (*plugin).into(),
                config_json: serde_json::to_vec(config).unwrap(),
                fail_open: *fail_open,
            })
            .unwrap_or_else(|e| panic!("instantiate {plugin}: {e}"))
        })
        .collect();
    rt.chain(&ids)
}

/// Starts an exchange, waiting while other tests' requests (and their queued log phases) hold
/// every slot of the shared runtime.
fn begin(chain: &Chain) -> weft_runtime::Exchange {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match chain.start(client(), "http") {
            Ok(ex) => return ex.expect("chain has phases"),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => panic!("arena stayed full for 10 s"),
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri).header("host", "example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn response(status: u16) -> http::response::Parts {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn header_rewriter_changes_request_and_response() {
    let chain = chain(&[(
        "rewrite",
        "header-rewriter",
        serde_json::json!({
            "request_set": {"x-added": "yes"},
            "request_remove": ["x-secret"],
            "response_set": {"x-served-by": "weft"}
        }),
        false,
    )]);
    let mut ex = begin(&chain);
    let mut req = request("/a?b=1", &[("x-secret", "hunter2"), ("accept", "*/*")]);
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-added"], "yes");
    assert!(req.headers.get("x-secret").is_none());
    assert_eq!(req.headers["accept"], "*/*");
    let mut resp = response(200);
    assert!(matches!(ex.response_headers(&mut resp), Flow::Continue));
    assert_eq!(resp.headers["x-served-by"], "weft");
}

#[test]
fn auth_replies_401_locally_and_passes_valid_tokens() {
    let chain = chain(&[("auth", "bearer-auth", serde_json::json!({"tokens": ["s3cret"]}), false)]);

    let mut ex = begin(&chain);
    let Flow::Respond(resp) = ex.request_headers(&mut request("/", &[])) else {
        panic!("no token must not pass")
    };
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body["error"], "unauthorized");

    let mut ex = begin(&chain);
    let flow = ex.request_headers(&mut request("/", &[("authorization", "Bearer wrong")]));
    assert!(matches!(flow, Flow::Respond(ref r) if r.status() == 401), "{flow:?}");

    let mut ex = begin(&chain);
    let mut req = request("/", &[("authorization", "Bearer s3cret")]);
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
}

#[test]
fn init_failure_names_instance_and_reason() {
    let rt = runtime();
    let err = rt
        .instantiate(InstanceSpec {
            name: "auth-without-tokens".into(),
            library: "examples".into(),
            plugin: "bearer-auth".into(),
            config_json: br#"{"tokens": []}"#.to_vec(),
            fail_open: false,
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, InitError::Failed { .. }), "{err:?}");
    assert!(msg.contains("auth-without-tokens") && msg.contains("token"), "{msg}");

    let err = rt
        .instantiate(InstanceSpec {
            name: "typo".into(),
            library: "examples".into(),
            plugin: "no-such-plugin".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap_err();
    assert!(matches!(err, InitError::UnknownPlugin { .. }), "{err:?}");
    assert!(err.to_string().contains("bearer-auth"), "lists what exists: {err}");

    let err = rt
        .instantiate(InstanceSpec {
            name: "bad-json".into(),
            library: "examples".into(),
            plugin: "header-rewriter".into(),
            config_json: br#"{"no_such_field": 1}"#.to_vec(),
            fail_open: false,
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("no_such_field"),
        "unknown config fields are refused: {err}"
    );
}

#[test]
fn panic_fails_closed_then_next_request_works() {
    let chain = chain(&[("panicky", "test-panic", serde_json::json!({}), false)]);
    let mut ex = begin(&chain);
    let flow = ex.request_headers(&mut request("/", &[("x-test-panic", "1")]));
    assert!(matches!(flow, Flow::Respond(ref r) if r.status() == 500), "{flow:?}");
    drop(ex);
    let mut ex = begin(&chain);
    assert!(matches!(ex.request_headers(&mut request("/", &[])), Flow::Continue));
}

#[test]
fn panic_in_fail_open_plugin_continues_unchanged() {
    let chain = chain(&[("panicky-open", "test-panic", serde_json::json!({}), true)]);
    let mut ex = begin(&chain);
    let mut req = request("/", &[("x-test-panic", "1")]);
    let before = req.headers.clone();
    let passes = runtime()
        .stats
        .fail_open_passes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers, before);
    let after = runtime()
        .stats
        .fail_open_passes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > passes, "a fail-open pass is counted");
}

#[test]
fn crlf_header_value_is_rejected_whole() {
    let chain = chain(&[("bad", "test-bad-header", serde_json::json!({}), false)]);
    let mut ex = begin(&chain);
    let mut req = request("/", &[("x-test-crlf", "1")]);
    let flow = ex.request_headers(&mut req);
    assert!(matches!(flow, Flow::Respond(ref r) if r.status() == 500), "{flow:?}");
    assert!(req.headers.get("x-bad").is_none());
}

#[test]
fn state_is_per_request_across_phases() {
    let chain = chain(&[("timing", "timing-logger", serde_json::json!({}), false)]);
    // Two requests in flight at once, phases interleaved: each must keep its own state.
    let mut a = begin(&chain);
    let mut b = begin(&chain);
    let mut ra = request("/a", &[]);
    let mut rb = request("/b", &[]);
    assert!(matches!(a.request_headers(&mut ra), Flow::Continue));
    assert!(matches!(b.request_headers(&mut rb), Flow::Continue));
    let seq_a = ra.headers["x-weft-seq"].clone();
    let seq_b = rb.headers["x-weft-seq"].clone();
    assert_ne!(seq_a, seq_b);
    let mut pb = response(200);
    let mut pa = response(200);
    assert!(matches!(b.response_headers(&mut pb), Flow::Continue));
    assert!(matches!(a.response_headers(&mut pa), Flow::Continue));
    assert_eq!(pa.headers["x-weft-seq"], seq_a);
    assert_eq!(pb.headers["x-weft-seq"], seq_b);
    assert!(pa.headers["server-timing"].to_str().unwrap().starts_with("weft;dur="));
}

#[test]
fn chain_order_later_plugins_see_earlier_mutations() {
    // The auth plugin checks a header that the rewriter, earlier on the chain, sets.
    let chain = chain(&[
        (
            "inject",
            "header-rewriter",
            serde_json::json!({"request_set": {"authorization": "Bearer t0k"}}),
            false,
        ),
        ("auth2", "bearer-auth", serde_json::json!({"tokens": ["t0k"]}), false),
    ]);
    let mut ex = begin(&chain);
    let mut req = request("/", &[]);
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
}

/// A view's lines per name, in order, from `test-view-echo`'s `name=value;...` text (or from a
/// head's headers), leaving out the echo's own `x-view-*` lines.
fn lines_by_name<'a>(lines: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::<String, Vec<String>>::new();
    for (n, v) in lines.filter(|(n, _)| !n.starts_with("x-view-")) {
        m.entry(n.to_owned()).or_default().push(v.to_owned());
    }
    m
}

fn echoed(text: &http::HeaderValue) -> BTreeMap<String, Vec<String>> {
    let text = text.to_str().unwrap();
    lines_by_name(
        text.split(';')
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once('=').unwrap()),
    )
}

fn head_lines(h: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    lines_by_name(h.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())))
}

#[test]
fn the_next_plugin_reads_the_head_an_earlier_one_left() {
    // Both ways a view follows a plugin's changes: written into it in place (a few lines), and
    // laid out again (more added lines than the view keeps spare entries for).
    for adds in [1, 7] {
        let add: serde_json::Map<String, serde_json::Value> = (0..adds)
            .map(|i| (format!("x-add-{i}"), format!("a{i}").into()))
            .collect();
        let echo = || ("echo", "test-view-echo", serde_json::json!({}), false);
        let chain = chain(&[
            echo(),
            (
                "rewrite",
                "header-rewriter",
                serde_json::json!({
                    "request_set": {"accept": "text/html", "x-new": "n"},
                    "request_add": add,
                    "request_remove": ["cookie"],
                    "response_set": {"cache-control": "no-store"},
                    "response_remove": ["server"],
                }),
                false,
            ),
            echo(),
        ]);
        let mut ex = begin(&chain);
        let mut req = request(
            "/",
            &[
                ("accept", "*/*"),
                ("cookie", "a=1"),
                ("x-keep", "k"),
                ("cookie", "b=2"),
                ("accept", "a/b"),
            ],
        );
        assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
        assert!(req.headers.get("cookie").is_none());
        assert_eq!(req.headers["x-add-0"], "a0");
        assert_eq!(
            echoed(&req.headers["x-view-request"]),
            head_lines(&req.headers),
            "adds {adds}"
        );
        let mut resp = response(200);
        resp.headers.insert("server", "up".parse().unwrap());
        resp.headers.append("cache-control", "max-age=5".parse().unwrap());
        resp.headers.append("cache-control", "public".parse().unwrap());
        assert!(matches!(ex.response_headers(&mut resp), Flow::Continue));
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers["cache-control"], "no-store");
        assert_eq!(
            echoed(&resp.headers["x-view-response"]),
            head_lines(&resp.headers),
            "adds {adds}"
        );
    }
}

#[test]
fn arena_exhaustion_is_busy_and_slots_come_back() {
    // A runtime of its own (sharing the loaded library) so other tests keep their slots.
    runtime();
    let rt = Runtime::new(RuntimeOptions {
        slot_count: 8,
        slot_size: 8192,
        log_queue: 16,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("examples", weft_test_support::go_library("test"))
        .unwrap();
    let id = rt
        .instantiate(InstanceSpec {
            name: "timing-busy".into(),
            library: "examples".into(),
            plugin: "timing-logger".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    let (base, total) = rt.arena_usage();
    assert_eq!((base, total), (0, 8));
    let mut held = Vec::new();
    for _ in 0..total {
        let mut ex = begin(&chain);
        ex.request_headers(&mut request("/", &[]));
        held.push(ex);
    }
    assert!(
        chain.start(client(), "http").is_err(),
        "an arena with every slot leased must answer Busy"
    );
    drop(held);
    // Log phases run on the log thread, which then releases the slots.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.arena_usage().0 > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rt.arena_usage().0, 0, "slots leaked");
    assert!(chain.start(client(), "http").unwrap().is_some());
}

#[test]
fn concurrent_requests_from_many_threads() {
    let chain = chain(&[
        (
            "rewrite-mt",
            "header-rewriter",
            serde_json::json!({"request_set": {"x-added": "yes"}}),
            false,
        ),
        ("timing-mt", "timing-logger", serde_json::json!({}), false),
    ]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let chain = chain.clone();
            std::thread::spawn(move || {
                runtime().thread_start();
                for i in 0..2000 {
                    let mut ex = begin(&chain);
                    let path = format!("/t{t}/{i}");
                    let mut req = request(&path, &[]);
                    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
                    assert_eq!(req.headers["x-added"], "yes");
                    let seq = req.headers["x-weft-seq"].clone();
                    let mut resp = response(200);
                    assert!(matches!(ex.response_headers(&mut resp), Flow::Continue));
                    assert_eq!(resp.headers["x-weft-seq"], seq, "state crossed requests at {path}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn second_go_library_is_refused() {
    runtime();
    let other = weft_test_support::go_library("abi99");
    let err = runtime().load_library("second", other).unwrap_err();
    assert!(matches!(err, LoadError::SecondGoRuntime { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("only one Go runtime") || msg.contains("Only one Go runtime"),
        "{msg}"
    );
    assert!(msg.contains("one c-shared library"), "says what to do instead: {msg}");
}

/// Phase calls from threads whose work runs inside the Go library's `run_on_thread` (as
/// weft-proxy's serving threads run): callbacks nested in a Go call, two threads at once, a
/// handler's panic among them, and a panic of the host's own closure, which comes back to the
/// caller after the Go call returned.
#[test]
fn phases_from_inside_run_on_thread() {
    let rt = runtime();
    let entries = rt.thread_entries();
    assert!(
        format!("{entries:?}").contains("libraries: 1"),
        "the Go library offers run_on_thread: {entries:?}"
    );
    let rewrite = chain(&[(
        "nested",
        "header-rewriter",
        serde_json::json!({"request_set": {"x-added": "nested"}}),
        false,
    )]);
    let panicky = chain(&[("nested-panic", "test-panic", serde_json::json!({}), false)]);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (entries, rewrite, panicky) = (&entries, &rewrite, &panicky);
            s.spawn(move || {
                let served = entries.run(|| {
                    for i in 0..200 {
                        let mut ex = begin(rewrite);
                        let mut req = request("/n", &[]);
                        assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
                        assert_eq!(req.headers["x-added"], "nested");
                        if i % 50 == 0 {
                            let mut ex = begin(panicky);
                            let flow = ex.request_headers(&mut request("/", &[("x-test-panic", "1")]));
                            assert!(matches!(flow, Flow::Respond(ref r) if r.status() == 500), "{flow:?}");
                        }
                    }
                    200
                });
                assert_eq!(served, 200);
            });
        }
    });
    let caught = std::panic::catch_unwind(|| entries.run(|| panic!("host closure panicked")));
    assert!(caught.is_err());
    // The thread still calls Go normally afterwards.
    let mut ex = begin(&rewrite);
    assert!(matches!(
        ex.request_headers(&mut request("/after", &[])),
        Flow::Continue
    ));
}
