//! The Go example plugins as remote workers behind a real nats-server: same results as
//! in-process, worker affinity, and every failure mode of the transport.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NatsServer, Worker, connect, pct, request_view, with_response};
use weft_nats_bridge::{RemoteError, RemotePlugin, RemotePluginOptions};
use weft_runtime::abi::{WeftPhase, WeftResult};
use weft_runtime::mutation::{self, Batch};

const RH: WeftPhase = WeftPhase::RequestHeaders;
const RS: WeftPhase = WeftPhase::ResponseHeaders;

fn batch(bytes: &[u8], phase: WeftPhase) -> Batch {
    mutation::decode(bytes, bytes.len(), phase).expect("worker mutations pass host validation")
}

fn parts(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn header<'a>(h: &'a http::HeaderMap, n: &str) -> Option<&'a str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

fn rid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The same header-rewriter config in-process (the c-shared library through weft-runtime) and
/// on a NATS worker gives the same request and response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rewriter_remote_equals_in_process() {
    require_nats!();
    let config = r#"{"request_set":{"x-env":"prod"},"request_add":{"via":"weft"},"request_remove":["cookie"],"response_set":{"x-frame-options":"DENY"},"response_remove":["server"]}"#;
    let srv = NatsServer::start();
    let _w = Worker::start(&srv.url(), "header-rewriter", "rewrite", config);
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("rewrite", RemotePluginOptions::default());
    let req_headers = [("host", "example.com"), ("cookie", "a=b"), ("x-env", "dev")];

    // In-process.
    let lib = {
        let out = std::process::Command::new(common::repo_root().join("scripts/build-plugins"))
            .arg("main")
            .output()
            .expect("scripts/build-plugins");
        assert!(out.status.success());
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
    };
    let rt = weft_runtime::Runtime::new(weft_runtime::RuntimeOptions {
        slot_count: 4,
        ..Default::default()
    })
    .unwrap();
    rt.load_library("examples", &lib).unwrap();
    let id = rt
        .instantiate(weft_runtime::InstanceSpec {
            name: "rewrite".into(),
            library: "examples".into(),
            plugin: "header-rewriter".into(),
            config_json: config.as_bytes().to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut ex = chain
        .start("127.0.0.1:40000".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    let mut local = parts("/x", &req_headers);
    assert!(matches!(ex.request_headers(&mut local), weft_runtime::Flow::Continue));
    let mut local_resp = http::Response::builder()
        .header("server", "up")
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(matches!(
        ex.response_headers(&mut local_resp),
        weft_runtime::Flow::Continue
    ));

    // Remote.
    let r = rid();
    let (view, end) = request_view(r, RH as u32, "/x", &req_headers);
    let muts = plugin.call(RH, &view, None).await.unwrap();
    let mut remote = parts("/x", &req_headers);
    batch(&muts, RH).apply_to_request(&mut remote);
    assert_eq!(remote.headers, local.headers);
    assert_eq!(header(&remote.headers, "x-env"), Some("prod"));

    let view = with_response(
        view,
        end,
        RS as u32,
        200,
        &[("server", "up"), ("content-type", "text/plain")],
    );
    let muts = plugin.call(RS, &view, None).await.unwrap();
    let mut remote_resp = http::Response::builder()
        .header("server", "up")
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    batch(&muts, RS).apply_to_response(&mut remote_resp);
    assert_eq!(remote_resp.headers, local_resp.headers);
    assert_eq!(plugin.affinity_len(), 1, "pinned until the last phase");
    plugin.release(r);
    assert_eq!(plugin.affinity_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_local_reply_and_accept() {
    require_nats!();
    let srv = NatsServer::start();
    let _w = Worker::start(&srv.url(), "bearer-auth", "auth", r#"{"tokens":["s3cret"]}"#);
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("auth", RemotePluginOptions::default());

    let (view, _) = request_view(rid(), RH as u32, "/", &[("host", "h")]);
    let mut b = batch(&plugin.call(RH, &view, None).await.unwrap(), RH);
    let reply = b.take_reply().expect("a local 401 reply");
    assert_eq!(reply.status, 401);
    assert_eq!(
        header(&reply.headers, "www-authenticate"),
        Some(r#"Bearer realm="weft""#)
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("missing bearer token"));

    let (view, _) = request_view(rid(), RH as u32, "/", &[("authorization", "Bearer s3cret")]);
    let mut b = batch(&plugin.call(RH, &view, None).await.unwrap(), RH);
    assert!(b.take_reply().is_none());
    let mut p = parts("/", &[]);
    b.apply_to_request(&mut p);
    assert_eq!(header(&p.headers, "x-weft-auth"), Some("ok"));
}

/// Per-request state across phases with two workers: the response phase reaches the worker
/// that ran the request phase (timing-logger's seq matches), and both workers get requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_per_request_state_across_two_workers() {
    require_nats!();
    let srv = NatsServer::start();
    let w1 = Worker::start(&srv.url(), "timing-logger", "timing", "");
    let w2 = Worker::start(&srv.url(), "timing-logger", "timing", "");
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("timing", RemotePluginOptions::default());
    let mut per_worker = std::collections::HashMap::<String, usize>::new();
    for _ in 0..60 {
        let r = rid();
        let (view, end) = request_view(r, RH as u32, "/t", &[("host", "h")]);
        let mut p = parts("/t", &[]);
        batch(&plugin.call(RH, &view, None).await.unwrap(), RH).apply_to_request(&mut p);
        let seq = header(&p.headers, "x-weft-seq").expect("seq set").to_owned();
        let worker = plugin.worker_of(r).expect("pinned to the worker that answered");
        *per_worker.entry(worker.to_string()).or_default() += 1;

        let view = with_response(view, end, RS as u32, 200, &[]);
        let mut resp = http::Response::new(()).into_parts().0;
        batch(&plugin.call(RS, &view, None).await.unwrap(), RS).apply_to_response(&mut resp);
        assert_eq!(
            header(&resp.headers, "x-weft-seq"),
            Some(seq.as_str()),
            "state of the same request"
        );
        let mut log_view = view.clone();
        weft_runtime::view::set_phase(&mut log_view, WeftPhase::Log as u32);
        plugin.log(&log_view, None).await.unwrap();
    }
    eprintln!("requests per worker: {per_worker:?}");
    assert_eq!(
        per_worker.len(),
        2,
        "the queue group spreads requests over both workers"
    );
    assert!(per_worker.contains_key(&w1.id) && per_worker.contains_key(&w2.id));
    assert_eq!(plugin.affinity_len(), 0, "the log phase releases the pin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_fails_fast() {
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("nobody", RemotePluginOptions::default());
    let (view, _) = request_view(1, RH as u32, "/", &[]);
    let mut times = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let err = plugin.call(RH, &view, None).await.unwrap_err();
        times.push(start.elapsed());
        assert!(matches!(err, RemoteError::NoResponders { .. }), "{err:?}");
    }
    times.sort();
    let (p50, p99) = (pct(&times, 0.5), pct(&times, 0.99));
    eprintln!("no-responders: p50 {p50:?} p99 {p99:?} over 200 calls");
    assert!(p99 < Duration::from_millis(50), "no-responders p99 {p99:?}");
    assert_eq!(t.pending_replies(), 0);
}

/// A frozen worker (SIGSTOP): the call fails within its deadline; the in-flight bound answers
/// Overloaded at once while the frozen calls wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_times_out_within_the_deadline_and_bounds_in_flight() {
    require_nats!();
    let srv = NatsServer::start();
    let w = Worker::start(&srv.url(), "header-rewriter", "frozen", "");
    let t = connect(&srv.url()).await;
    let plugin = t.plugin(
        "frozen",
        RemotePluginOptions {
            deadline: Duration::from_millis(150),
            max_in_flight: 4,
        },
    );
    let (view, _) = request_view(rid(), RH as u32, "/", &[]);
    plugin
        .call(RH, &view, None)
        .await
        .expect("worker answers before the freeze");
    w.signal("STOP");
    let start = Instant::now();
    let err = plugin
        .call(
            RH,
            &request_view(rid(), RH as u32, "/", &[]).0,
            Some(Instant::now() + Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    let took = start.elapsed();
    eprintln!("frozen worker: {err} after {took:?} (deadline 100 ms)");
    assert_eq!(err, RemoteError::Timeout);
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(600),
        "{took:?}"
    );

    let mut waiting = Vec::new();
    for _ in 0..4 {
        let p = plugin.clone();
        let v = request_view(rid(), RH as u32, "/", &[]).0;
        waiting.push(tokio::spawn(async move { p.call(RH, &v, None).await }));
    }
    while plugin.in_flight() < 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let err = plugin.call(RH, &view, None).await.unwrap_err();
    assert_eq!(err, RemoteError::Overloaded(4));
    // Well under the 200 ms deadline it would otherwise wait (generous for a loaded CI machine).
    assert!(start.elapsed() < Duration::from_millis(100), "fails fast");
    for h in waiting {
        assert_eq!(h.await.unwrap().unwrap_err(), RemoteError::Timeout);
    }
    assert_eq!((plugin.in_flight(), t.pending_replies()), (0, 0));
    w.signal("CONT");
}

/// Killing one of two workers fails only the requests pinned to it (at once: no responders on
/// its direct subject); requests pinned to the other and new requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_fails_only_its_own_requests() {
    require_nats!();
    let srv = NatsServer::start();
    let mut w1 = Worker::start(&srv.url(), "timing-logger", "tk", "");
    let _w2 = Worker::start(&srv.url(), "timing-logger", "tk", "");
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("tk", RemotePluginOptions::default());
    let mut open = Vec::new();
    for _ in 0..40 {
        let r = rid();
        let (view, end) = request_view(r, RH as u32, "/", &[]);
        plugin.call(RH, &view, None).await.unwrap();
        open.push((r, with_response(view, end, RS as u32, 200, &[])));
    }
    w1.kill();
    let (mut failed, mut ok) = (0, 0);
    for (r, view) in &open {
        let on_killed = plugin.worker_of(*r).as_deref() == Some(w1.id.as_str());
        let start = Instant::now();
        match plugin.call(RS, view, None).await {
            Ok(_) => {
                assert!(!on_killed, "a request of the killed worker succeeded");
                ok += 1;
            }
            Err(e) => {
                assert!(on_killed, "a request of the live worker failed: {e}");
                // Usually no-responders at once; if the server has not yet noticed the dead
                // connection, the call times out at its deadline instead. Either way it fails
                // within one deadline.
                assert!(
                    matches!(e, RemoteError::NoResponders { .. } | RemoteError::Timeout),
                    "{e:?}"
                );
                let bound = RemotePluginOptions::default().deadline + Duration::from_millis(300);
                assert!(start.elapsed() < bound, "took {:?}", start.elapsed());
                failed += 1;
            }
        }
    }
    eprintln!("after killing one worker: {failed} pinned requests failed, {ok} went on");
    assert!(failed > 0 && ok > 0);
    for _ in 0..20 {
        let (view, _) = request_view(rid(), RH as u32, "/", &[]);
        plugin
            .call(RH, &view, None)
            .await
            .expect("new requests reach the live worker");
    }
}

/// Restarting nats-server: calls fail at once while disconnected, and the transport (and the
/// worker) reconnect within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_reconnects_within_about_a_second() {
    require_nats!();
    let mut srv = NatsServer::start();
    let _w = Worker::start(&srv.url(), "header-rewriter", "rs", "");
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("rs", RemotePluginOptions::default());
    let (view, _) = request_view(rid(), RH as u32, "/", &[]);
    plugin.call(RH, &view, None).await.unwrap();
    srv.stop();
    let down = Instant::now();
    while t.is_connected() {
        assert!(down.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    assert_eq!(
        plugin.call(RH, &view, None).await.unwrap_err(),
        RemoteError::Disconnected
    );
    // Queueing would wait for the 200 ms deadline.
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "fails at once, no queueing"
    );
    srv.restart();
    let up = Instant::now();
    loop {
        match plugin.call(RH, &view, None).await {
            Ok(_) => break,
            Err(e) => assert!(up.elapsed() < Duration::from_secs(3), "not recovered after 3 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "server restart: calls succeed again {:?} after the server listens",
        up.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_an_error_reply_and_the_worker_lives_on() {
    require_nats!();
    let srv = NatsServer::start();
    let _w = Worker::start(&srv.url(), "test-panic", "panicky", "");
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("panicky", RemotePluginOptions::default());
    for _ in 0..3 {
        let (view, _) = request_view(rid(), RH as u32, "/", &[("x-test-panic", "1")]);
        match plugin.call(RH, &view, None).await.unwrap_err() {
            RemoteError::Plugin { result, .. } => assert_eq!(result, WeftResult::Panic),
            e => panic!("{e:?}"),
        }
    }
    let (view, _) = request_view(rid(), RH as u32, "/", &[]);
    plugin.call(RH, &view, None).await.expect("the worker still serves");
}

/// The phases of an instance can be read from the workers' $SRV.INFO; SIGTERM drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_info_carries_phases_and_sigterm_drains() {
    require_nats!();
    let srv = NatsServer::start();
    let mut w = Worker::start(&srv.url(), "timing-logger", "discover", "");
    let t = connect(&srv.url()).await;
    let msg = t
        .client()
        .request("$SRV.INFO.discover", bytes::Bytes::new())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(info["metadata"]["weft.plugin"], "timing-logger");
    let mask = WeftPhase::RequestHeaders.mask() | WeftPhase::ResponseHeaders.mask() | WeftPhase::Log.mask();
    assert_eq!(info["metadata"]["weft.phases"], mask.to_string());
    assert_eq!(info["metadata"]["weft.worker"], w.id.as_str());
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"weft.discover.request_headers"), "{subjects:?}");

    // Requests in flight while SIGTERM arrives still get their answers.
    let plugin: Arc<RemotePlugin> = Arc::new(t.plugin("discover", RemotePluginOptions::default()));
    let mut calls = Vec::new();
    for _ in 0..50 {
        let p = Arc::clone(&plugin);
        let v = request_view(rid(), RH as u32, "/", &[]).0;
        calls.push(tokio::spawn(async move { p.call(RH, &v, None).await }));
    }
    w.signal("TERM");
    let mut answered = 0;
    for c in calls {
        if c.await.unwrap().is_ok() {
            answered += 1;
        }
    }
    eprintln!("{answered}/50 calls racing SIGTERM answered");
    assert!(w.wait(Duration::from_secs(5)), "worker exits 0 after draining");
}

/// Numbers for the notes: one phase round trip p50/p99 and closed-loop round trips per second,
/// one worker (run with --release for meaningful values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_numbers() {
    require_nats!();
    let srv = NatsServer::start();
    let _w = Worker::start(
        &srv.url(),
        "header-rewriter",
        "bench",
        r#"{"request_set":{"x-env":"prod"}}"#,
    );
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("bench", RemotePluginOptions::default());
    let (view, _) = request_view(1, RH as u32, "/bench", &[("host", "example.com"), ("accept", "*/*")]);
    let mut times = Vec::with_capacity(2000);
    for i in 0..2500 {
        let start = Instant::now();
        plugin.call(RH, &view, None).await.unwrap();
        if i >= 500 {
            times.push(start.elapsed());
        }
        plugin.release(1);
    }
    times.sort();
    eprintln!(
        "single phase round trip: p50 {:?} p99 {:?} ({} calls)",
        pct(&times, 0.5),
        pct(&times, 0.99),
        times.len()
    );

    let plugin = Arc::new(plugin);
    let run_for = Duration::from_secs(2);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64u64 {
        let p = Arc::clone(&plugin);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < run_for {
                let r = (c << 40) | n;
                let (view, _) = request_view(r, RH as u32, "/bench", &[("host", "example.com")]);
                p.call(RH, &view, None).await.unwrap();
                p.release(r);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "closed loop, 64 callers, 1 worker: {:.0} round trips/s",
        total as f64 / secs
    );
}
