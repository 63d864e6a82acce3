//! The Go example plugins as remote workers behind a real nats-server: same results as
//! in-process, worker affinity, and every failure mode of the transport.

mod common;

use weft_test_support::require_nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NatsServer, Worker, connect, fake_deadline, next_msg, pct, request_view, subscribe_live, with_response};
use weft_abi::{WeftPhase, WeftResult};
use weft_nats_bridge::{NatsPlugin, NatsPluginOptions, RemoteError};
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
    let plugin = t.plugin("rewrite", NatsPluginOptions::default());
    let req_headers = [("host", "example.com"), ("cookie", "a=b"), ("x-env", "dev")];

    // In-process.
    let lib = weft_test_support::go_library("test");
    let rt = weft_runtime::Runtime::new(weft_runtime::RuntimeOptions {
        slot_count: 4,
        ..Default::default()
    })
    .unwrap();
    rt.load_library("examples", lib).unwrap();
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
    let plugin = t.plugin("auth", NatsPluginOptions::default());

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
    let plugin = t.plugin("timing", NatsPluginOptions::default());
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
        plugin.log_detached(&log_view, None).unwrap();
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
    let plugin = t.plugin("nobody", NatsPluginOptions::default());
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
        NatsPluginOptions {
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
    let plugin = t.plugin("tk", NatsPluginOptions::default());
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
                let bound = NatsPluginOptions::default().deadline + Duration::from_millis(300);
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
    let plugin = t.plugin("rs", NatsPluginOptions::default());
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
    let plugin = t.plugin("panicky", NatsPluginOptions::default());
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

/// The phases of an instance can be read from the workers' $SRV.INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_info_carries_phases() {
    require_nats!();
    let srv = NatsServer::start();
    let w = Worker::start(&srv.url(), "timing-logger", "discover", "");
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
    assert_eq!(info["metadata"]["weft.served_phases"], mask.to_string());
    assert_eq!(info["metadata"]["weft.worker"], w.id.as_str());
    assert_eq!(
        info["metadata"]["weft.wire_version"],
        weft_nats_bridge::wire::WIRE_VERSION.to_string()
    );
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"weft.discover.request_headers"), "{subjects:?}");
}

/// The `data` of the first endpoint in the workers' `$SRV.STATS.<instance>` (one worker).
async fn stats_data(t: &weft_nats_bridge::NatsTransport, instance: &str) -> serde_json::Value {
    let msg = t
        .client()
        .request(format!("$SRV.STATS.{instance}"), bytes::Bytes::new())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    stats["endpoints"][0]["data"].clone()
}

/// Whether the process `pid` (a child not yet waited for) is still running, not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Polls until `$SRV.PING.<instance>` has no responders: the worker's micro service stopped,
/// and with it (in the same Stop, unsubscribed before the $SRV handlers) its queue-group
/// endpoints.
async fn wait_service_gone(t: &weft_nats_bridge::NatsTransport, instance: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match t
            .client()
            .request(format!("$SRV.PING.{instance}"), bytes::Bytes::new())
            .await
        {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => return,
            _ => {}
        }
        assert!(Instant::now() < end, "the worker still serves 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGTERM while calls are really in flight (the worker has received every one of them and they
/// sleep in the handler): every one is answered, then the worker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_in_flight_call() {
    require_nats!();
    const CALLS: u64 = 20;
    let srv = NatsServer::start();
    let mut w = Worker::start_with(&srv.url(), "test-sleep", "drain-sleep", "", &["-concurrency", "64"]);
    let t = connect(&srv.url()).await;
    let plugin: Arc<NatsPlugin> = Arc::new(t.plugin("drain-sleep", NatsPluginOptions::default()));
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let p = Arc::clone(&plugin);
        let v = request_view(rid(), RH as u32, "/", &[("x-test-sleep-ms", "1500")]).0;
        calls.push(tokio::spawn(async move {
            p.call(RH, &v, Some(Instant::now() + Duration::from_secs(20))).await
        }));
    }
    // Every call has reached the worker's handler (its request count), and some still sleep.
    let end = Instant::now() + Duration::from_secs(10);
    let running = loop {
        let data = stats_data(&t, "drain-sleep").await;
        if data["requests"] == CALLS {
            break data["in_flight_all"].as_u64().unwrap();
        }
        assert!(Instant::now() < end, "the calls did not all reach the worker: {data}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    w.signal("TERM");
    let mut answered = 0;
    for c in calls {
        c.await.unwrap().expect("a call in flight at SIGTERM must be answered");
        answered += 1;
    }
    eprintln!("{answered}/{CALLS} calls answered, {running} of them still in the handler at SIGTERM");
    assert!(running > 0, "no call was in flight at SIGTERM: the test proves nothing");
    assert!(w.wait(Duration::from_secs(10)), "worker exits 0 after draining");
}

/// SIGTERM between a request's request-headers and response-headers phases: the worker takes no
/// new requests, but the response phase (and then the log phase) of the request it has still
/// reach it, with the request's state; it exits only after the log phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_between_phases_keeps_the_request_on_its_worker() {
    require_nats!();
    let srv = NatsServer::start();
    let mut w = Worker::start_with(
        &srv.url(),
        "timing-logger",
        "drain-phases",
        "",
        &["-drain-timeout", "60s"],
    );
    let t = connect(&srv.url()).await;
    let plugin = t.plugin("drain-phases", NatsPluginOptions::default());
    let r = rid();
    let (view, end) = request_view(r, RH as u32, "/t", &[("host", "h")]);
    let mut p = parts("/t", &[]);
    batch(&plugin.call(RH, &view, None).await.unwrap(), RH).apply_to_request(&mut p);
    let seq = header(&p.headers, "x-weft-seq").expect("seq set").to_owned();
    assert_eq!(plugin.worker_of(r).as_deref(), Some(w.id.as_str()));

    w.signal("TERM");
    wait_service_gone(&t, "drain-phases").await;
    let other = rid();
    let err = plugin
        .call(RH, &request_view(other, RH as u32, "/", &[]).0, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::NoResponders { .. }),
        "a new request while draining: {err:?}"
    );
    plugin.release(other);

    let view = with_response(view, end, RS as u32, 200, &[]);
    let mut resp = http::Response::new(()).into_parts().0;
    batch(
        &plugin
            .call(RS, &view, None)
            .await
            .expect("the later phase reaches the draining worker"),
        RS,
    )
    .apply_to_response(&mut resp);
    assert_eq!(
        header(&resp.headers, "x-weft-seq"),
        Some(seq.as_str()),
        "state of the same request"
    );
    assert!(alive(w.pid()), "the worker exited before the request's log phase");

    let mut log_view = view.clone();
    weft_runtime::view::set_phase(&mut log_view, WeftPhase::Log as u32);
    plugin.log_detached(&log_view, None).unwrap();
    // The log phase was the request's last: the drain ends well before its 60 s timeout.
    assert!(
        w.wait(Duration::from_secs(10)),
        "worker exits 0 after the request's last phase"
    );
}

fn nats_header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// What the host puts on the wire, seen by a raw subscriber in the instance's queue group (a fake
/// worker): Weft-Phase, Weft-Timeout-Ms (the call's time left, a duration), Weft-Host and,
/// when the request has one, its traceparent; later phases on the answering worker's direct
/// subject, the log phase without a reply subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_on_the_wire() {
    use futures_util::StreamExt as _;
    use weft_nats_bridge::{NatsInstance, wire};
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let fake = async_nats::connect(srv.url()).await.unwrap();
    let mut first = subscribe_live(&fake, "weft.hdrs.*", Some("weft-hdrs")).await;
    let mut direct = subscribe_live(&fake, "weft.hdrs.w.fake-1.*", None).await;
    fake.flush().await.unwrap();
    let mask = WeftPhase::RequestHeaders.mask() | WeftPhase::ResponseHeaders.mask() | WeftPhase::Log.mask();
    let inst = NatsInstance::new(t.plugin("hdrs", NatsPluginOptions::default()), mask);
    let remote: &dyn weft_runtime::remote::RemoteInstance = &*inst;

    // Answers one message as worker fake-1 and returns it.
    let answer = |msg: async_nats::Message| {
        let fake = fake.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Weft-Worker", "fake-1");
            let reply = msg.reply.clone().expect("a phase call carries a reply subject");
            let req = flatbuffers::root::<wire::PhaseRequest>(&msg.payload).unwrap();
            let answer = wire::encode_response(req.request_id(), req.phase(), 0, &[], "");
            fake.publish_with_headers(reply, h, answer).await.unwrap();
            msg
        }
    };

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = rid();
    let (view, end) = request_view(r, RH as u32, "/", &[("host", "h"), ("traceparent", tp)]);
    let deadline = Duration::from_millis(3000);
    let (res, msg) = tokio::join!(remote.call(RH, r, &view, deadline), async {
        answer(next_msg(&mut first).await).await
    });
    res.expect("the fake worker's answer");
    assert_eq!(msg.subject.as_str(), "weft.hdrs.request_headers");
    assert_eq!(nats_header(&msg, "Weft-Phase"), Some("0"));
    assert_eq!(nats_header(&msg, "traceparent"), Some(tp));
    assert_eq!(nats_header(&msg, "Weft-Host"), Some(t.host_id()));
    // The time left when it was sent: a duration, which a worker with another clock reads right.
    let left: i64 = nats_header(&msg, "Weft-Timeout-Ms").unwrap().parse().unwrap();
    let ms = deadline.as_millis() as i64;
    assert!(
        (ms - 500..=ms).contains(&left),
        "Weft-Timeout-Ms {left}, want at most {ms}"
    );
    assert_eq!(nats_header(&msg, "Weft-Deadline-Ms"), None, "no wall-clock time");
    let req = flatbuffers::root::<wire::PhaseRequest>(&msg.payload).unwrap();
    assert_eq!((req.version(), req.request_id()), (wire::WIRE_VERSION, r));

    // The response phase goes to the worker that answered, with the traceparent again.
    let view = with_response(view, end, RS as u32, 200, &[]);
    let (res, msg) = tokio::join!(remote.call(RS, r, &view, deadline), async {
        answer(next_msg(&mut direct).await).await
    });
    res.unwrap();
    assert_eq!(msg.subject.as_str(), "weft.hdrs.w.fake-1.response_headers");
    assert_eq!(nats_header(&msg, "Weft-Phase"), Some("2"));
    assert_eq!(nats_header(&msg, "traceparent"), Some(tp));

    // The log phase: a plain publish to the same worker.
    let mut log_view = view.clone();
    weft_runtime::view::set_phase(&mut log_view, WeftPhase::Log as u32);
    remote.log(r, &log_view);
    let msg = tokio::time::timeout(Duration::from_secs(10), direct.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), "weft.hdrs.w.fake-1.log");
    assert_eq!(nats_header(&msg, "Weft-Phase"), Some("4"));
    assert_eq!(nats_header(&msg, "traceparent"), Some(tp));
    assert!(msg.reply.is_none(), "the log phase expects no answer");
    assert!(nats_header(&msg, "Weft-Timeout-Ms").is_some());

    // A request without a traceparent sends none.
    let r = rid();
    let (view, _) = request_view(r, RH as u32, "/", &[("host", "h")]);
    let (res, msg) = tokio::join!(remote.call(RH, r, &view, deadline), async {
        answer(next_msg(&mut first).await).await
    });
    res.unwrap();
    assert_eq!(nats_header(&msg, "traceparent"), None);
    assert_eq!(nats_header(&msg, "Weft-Phase"), Some("0"));
    remote.release(r);
}

/// A reply of a wire version the host does not speak, or without the file identifier, is a
/// clear `BadReply`, not a misread batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_of_an_unknown_wire_version_is_refused() {
    use weft_nats_bridge::wire;
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let fake = async_nats::connect(srv.url()).await.unwrap();
    let mut sub = subscribe_live(&fake, "weft.future.request_headers", None).await;
    fake.flush().await.unwrap();
    let plugin = t.plugin("future", NatsPluginOptions::default());
    let future = wire::encode_response_as(wire::WIRE_VERSION + 1, 1, 0, 0, &[], "");
    let mut foreign = wire::encode_response(1, 0, 0, &[], "").to_vec();
    foreign[4..8].copy_from_slice(b"NOPE");
    for (payload, want) in [
        (future, format!("unsupported wire version {}", wire::WIRE_VERSION + 1)),
        (foreign.into(), "not a weft wire message".to_owned()),
    ] {
        let (view, _) = request_view(rid(), RH as u32, "/", &[]);
        let (res, ()) = tokio::join!(plugin.call(RH, &view, fake_deadline()), async {
            let msg = next_msg(&mut sub).await;
            fake.publish(msg.reply.unwrap(), payload).await.unwrap();
        });
        match res.unwrap_err() {
            RemoteError::BadReply(m) => assert!(m.contains(&want), "{m}"),
            e => panic!("{e:?}"),
        }
    }
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
    let plugin = t.plugin("bench", NatsPluginOptions::default());
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
