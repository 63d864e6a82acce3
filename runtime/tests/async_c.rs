//! Asynchronous plugin calls through the runtime, against the C test plugins of
//! examples/c-plugin/async_plugin.c (built by scripts/build-c-plugins):
//! - "async-delay" answers Pending and completes from a timer thread after `x-delay-ms`, or from
//!   the calling thread before it even answers (`x-delay-ms: 0`);
//! - "blocking" is flagged WEFT_PLUGIN_FLAG_BLOCKING: its calls go to worker rings consumed by C
//!   worker threads that follow the ring protocol (futex park/wake) and call worker_exit.
//!
//! Timing is generous (a loaded 2-core machine): deadlines are far from the delays that must beat
//! them, and everything that happens "later" is waited for in loops with long timeouts.
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use weft_runtime::{
    Chain, Flow, InitError, InstanceId, InstanceOptions, InstanceSpec, LogPlace, Runtime, RuntimeOptions,
};

use weft_test_support::c_plugins;

/// Tests that create worker rings run one at a time: one of them counts the process's rings.
static RINGS: Mutex<()> = Mutex::new(());

fn rings_lock() -> std::sync::MutexGuard<'static, ()> {
    RINGS.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime(slots: u32) -> Arc<Runtime> {
    runtime_with(slots, 4096)
}

/// [`runtime`] with a log queue of `log_queue`.
fn runtime_with(slots: u32, log_queue: usize) -> Arc<Runtime> {
    runtime_placed(slots, log_queue, LogPlace::default())
}

/// [`runtime_with`] running log phases at `log_place`.
fn runtime_placed(slots: u32, log_queue: usize, log_place: LogPlace) -> Arc<Runtime> {
    let rt = Runtime::new(RuntimeOptions {
        slot_count: slots,
        slot_size: 4096,
        log_queue,
        log_place,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("async", &c_plugins("plain").join("libweft_c_async.so"))
        .expect("load the async C plugin");
    rt
}

fn instance(rt: &Runtime, name: &str, plugin: &str, fail_open: bool, opts: InstanceOptions) -> InstanceId {
    rt.instantiate_with(
        InstanceSpec {
            name: name.into(),
            library: "async".into(),
            plugin: plugin.into(),
            config_json: b"{}".to_vec(),
            fail_open,
        },
        opts,
    )
    .unwrap()
}

fn opts(deadline_ms: u64) -> InstanceOptions {
    InstanceOptions {
        deadline: Duration::from_millis(deadline_ms),
        ..InstanceOptions::default()
    }
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn request(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get("/async").header("host", "example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn response() -> http::response::Parts {
    http::Response::builder().status(200).body(()).unwrap().into_parts().0
}

/// Polls `f` once with the task's real context.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stat(rt: &Runtime, f: impl Fn(&weft_runtime::RuntimeStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(&rt.stats).load(Ordering::Relaxed)
}

/// Every slot back, nothing pending, nothing orphaned.
fn wait_clean(rt: &Runtime) {
    wait_until(
        "arena empty, no pending or orphaned call",
        Duration::from_secs(60),
        || {
            rt.arena_usage().0 == 0
                && rt.out_slot_usage().0 == 0
                && stat(rt, |s| &s.orphaned_slots) == 0
                && stat(rt, |s| &s.pending_calls) == 0
        },
    );
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one request (both header phases) through `chain` asynchronously.
async fn exchange(
    chain: &Chain,
    headers: &[(&str, &str)],
) -> (Flow, http::request::Parts, Option<http::response::Parts>) {
    let mut x = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request(headers);
    match x.request_headers_async(&mut req).await {
        Flow::Continue => {}
        flow => return (flow, req, None),
    }
    let mut resp = response();
    let flow = x.response_headers_async(&mut resp).await;
    (flow, req, Some(resp))
}

fn status(flow: &Flow) -> Option<u16> {
    match flow {
        Flow::Respond(r) => Some(r.status().as_u16()),
        Flow::Continue => None,
    }
}

#[test]
fn a_pending_call_yields_and_its_completion_applies() {
    let rt = runtime(64);
    let chain = rt.chain(&[instance(&rt, "delay", "async-delay", false, opts(10_000))]);
    tokio_rt().block_on(async {
        // Answered inline: no pending, no wait.
        let (flow, req, _) = exchange(&chain, &[]).await;
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.headers["x-async"], "inline");
        assert_eq!(stat(&rt, |s| &s.pending_calls), 0);

        // Pending: the phase future yields instead of blocking the thread, then the timer
        // thread's completion wakes it and the mutation written at completion time applies.
        let mut x = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(&[("x-delay-ms", "100"), ("x-resp-delay-ms", "50")]);
        let mut fut = Box::pin(x.request_headers_async(&mut req));
        assert!(poll_once(&mut fut).await.is_pending(), "a pending call must yield");
        assert_eq!(stat(&rt, |s| &s.pending_calls), 1);
        assert!(matches!(fut.await, Flow::Continue));
        assert_eq!(req.headers["x-async"], "done");
        let mut resp = response();
        assert!(matches!(x.response_headers_async(&mut resp).await, Flow::Continue));
        assert_eq!(resp.headers["x-async-resp"], "done");
        drop(x);

        // A completion with a failure result follows the policy (fail closed: 500).
        let (flow, _, _) = exchange(&chain, &[("x-delay-ms", "20"), ("x-async-fail", "1")]).await;
        assert_eq!(status(&flow), Some(500));
    });
    // The sync API parks the calling thread until the completion.
    let mut x = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request(&[("x-delay-ms", "30")]);
    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-async"], "done");
    drop(x);
    wait_clean(&rt);
    assert_eq!(stat(&rt, |s| &s.phase_timeouts), 0);
    assert_eq!(stat(&rt, |s| &s.plugin_failures), 1);
}

#[test]
fn a_completion_that_beats_the_pending_answer_is_not_lost() {
    // x-delay-ms: 0 completes from the calling thread before on_phase returns Pending.
    let rt = runtime(256);
    let chain = rt.chain(&[instance(&rt, "race", "async-delay", false, opts(10_000))]);
    let tokio = tokio_rt();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let chain = chain.clone();
            tokio.spawn(async move {
                for _ in 0..200 {
                    let (flow, req, resp) = exchange(&chain, &[("x-delay-ms", "0"), ("x-resp-delay-ms", "0")]).await;
                    assert!(matches!(flow, Flow::Continue));
                    assert_eq!(req.headers["x-async"], "done");
                    assert_eq!(resp.unwrap().headers["x-async-resp"], "done");
                }
            })
        })
        .collect();
    tokio.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    // And through the sync API on a plain thread.
    for _ in 0..200 {
        let mut x = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(&[("x-delay-ms", "0")]);
        assert!(matches!(x.request_headers(&mut req), Flow::Continue));
        assert_eq!(req.headers["x-async"], "done");
    }
    wait_clean(&rt);
    assert_eq!(stat(&rt, |s| &s.plugin_failures), 0);
    assert_eq!(stat(&rt, |s| &s.late_completions), 0);
}

#[test]
fn a_missed_deadline_answers_504_or_goes_on_in_a_fresh_slot() {
    let rt = runtime(64);
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let closed = instance(&rt, "slow-closed", "async-delay", false, opts(150));
    let open = instance(&rt, "slow-open", "async-delay", true, opts(150));
    // After the fail-open instance, a plugin that proves the request went on with its view.
    let after = rt
        .instantiate(InstanceSpec {
            name: "after".into(),
            library: "hostile".into(),
            plugin: "hostile".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let closed = rt.chain(&[closed]);
    let open = rt.chain(&[open, after]);
    tokio_rt().block_on(async {
        let slow = [("x-delay-ms", "2500"), ("x-hostile", "ok")];
        let t = Instant::now();
        let (flow, req, _) = exchange(&closed, &slow).await;
        assert_eq!(status(&flow), Some(504), "fail closed: gateway timeout");
        assert!(req.headers.get("x-async").is_none());
        assert!(t.elapsed() < Duration::from_millis(2000), "the deadline ended the wait");
        let (flow, req, _) = exchange(&open, &slow).await;
        assert!(matches!(flow, Flow::Continue), "fail open: the request goes on");
        assert!(
            req.headers.get("x-async").is_none(),
            "unchanged by the timed-out plugin"
        );
        assert_eq!(
            req.headers["x-hostile-ok"], "1",
            "the next plugin ran, over the view copied into a fresh slot"
        );
    });
    assert_eq!(stat(&rt, |s| &s.phase_timeouts), 2);
    // The plugin still holds both calls (for ~2 s more): their slots stay out until then.
    assert_eq!(stat(&rt, |s| &s.orphaned_slots), 2);
    assert!(rt.arena_usage().0 >= 2, "{:?}", rt.arena_usage());
    assert_eq!(stat(&rt, |s| &s.late_completions), 0);
    wait_clean(&rt);
    assert_eq!(
        stat(&rt, |s| &s.late_completions),
        2,
        "both late completions arrived and were discarded"
    );
}

#[test]
fn a_cancellation_storm_leaks_no_slot() {
    // Thousands of calls still held by the plugin when the host gives up on them: half miss
    // their deadline (504), half have their phase future dropped (the client went away). Each
    // orphans its slot until the late completion; at the end every slot is back.
    const WAVES: usize = 8;
    const PER_WAVE: usize = 500;
    // Each orphaned call keeps its slot and its out slot until its late completion; out slots are
    // a pool of their own (a quarter as many): when they run out, calls write after the view.
    let rt = runtime(4096);
    let baseline = rt.arena_usage().0;
    // The orphaned calls count against the in-flight limit until they complete: lift it.
    let storm = InstanceOptions {
        max_in_flight: 1 << 20,
        ..opts(40)
    };
    let chain = rt.chain(&[instance(&rt, "storm", "async-delay", false, storm)]);
    let tokio = tokio_rt();
    let (mut timeouts, mut dropped, mut in_time, mut peak_orphans) = (0u64, 0u64, 0u64, 0u64);
    for wave in 0..WAVES {
        let tasks: Vec<_> = (0..PER_WAVE)
            .map(|i| {
                let chain = chain.clone();
                tokio.spawn(async move {
                    let delay = (150 + (i * 7 + wave * 13) % 200).to_string();
                    let mut x = chain.start(client(), "http").unwrap().unwrap();
                    let mut req = request(&[("x-delay-ms", &delay)]);
                    if i % 2 == 0 {
                        // The deadline (40 ms) passes long before the completion (150..350 ms).
                        match x.request_headers_async(&mut req).await {
                            Flow::Respond(r) if r.status() == 504 => 0,
                            Flow::Continue => 2,
                            Flow::Respond(r) => panic!("unexpected {}", r.status()),
                        }
                    } else {
                        // Dropped while pending.
                        let fut = x.request_headers_async(&mut req);
                        match tokio::time::timeout(Duration::from_millis(5), fut).await {
                            Err(_) => 1,
                            Ok(_) => 2,
                        }
                    }
                })
            })
            .collect();
        tokio.block_on(async {
            for t in tasks {
                match t.await.unwrap() {
                    0 => timeouts += 1,
                    1 => dropped += 1,
                    _ => in_time += 1,
                }
            }
        });
        peak_orphans = peak_orphans.max(stat(&rt, |s| &s.orphaned_slots));
    }
    eprintln!(
        "storm: {timeouts} deadlines, {dropped} dropped, {in_time} completed in time, peak orphaned slots {peak_orphans}"
    );
    assert_eq!((timeouts + dropped + in_time) as usize, WAVES * PER_WAVE);
    assert!(
        timeouts + dropped >= (WAVES * PER_WAVE) as u64 * 9 / 10,
        "most calls were cancelled"
    );
    assert!(
        peak_orphans > 0,
        "cancelled calls kept their slots while the plugin held them"
    );
    wait_until("late completions and slots back", Duration::from_secs(60), || {
        rt.arena_usage().0 == baseline && stat(&rt, |s| &s.orphaned_slots) == 0
    });
    wait_clean(&rt);
    let late = stat(&rt, |s| &s.late_completions);
    assert!(
        late <= timeouts + dropped && late >= (timeouts + dropped) * 9 / 10,
        "{late} late completions for {} cancelled calls",
        timeouts + dropped
    );
    assert_eq!(stat(&rt, |s| &s.phase_timeouts), timeouts);
    assert_eq!(stat(&rt, |s| &s.arena_exhausted), 0);
}

#[test]
fn the_in_flight_limit_answers_503_without_calling_the_plugin() {
    let rt = runtime(64);
    let limited = InstanceOptions {
        deadline: Duration::from_secs(20),
        max_in_flight: 4,
        retry_after_secs: 7,
        ..InstanceOptions::default()
    };
    let closed = rt.chain(&[instance(&rt, "limited", "async-delay", false, limited.clone())]);
    let open = rt.chain(&[instance(&rt, "limited-open", "async-delay", true, limited)]);
    tokio_rt().block_on(async {
        for chain in [&closed, &open] {
            let mut held = Vec::new();
            for _ in 0..4 {
                let mut x = chain.start(client(), "http").unwrap().unwrap();
                let mut req = Box::new(request(&[("x-delay-ms", "1500")]));
                let mut fut = Box::pin(async move {
                    let flow = x.request_headers_async(&mut req).await;
                    (flow, req)
                });
                assert!(poll_once(&mut fut).await.is_pending());
                held.push(fut);
            }
            let busy_before = stat(&rt, |s| &s.busy_rejections);
            let mut x = chain.start(client(), "http").unwrap().unwrap();
            let mut req = request(&[("x-delay-ms", "0")]);
            let flow = x.request_headers_async(&mut req).await;
            drop(x);
            assert_eq!(stat(&rt, |s| &s.busy_rejections), busy_before + 1);
            if std::ptr::eq(chain, &closed) {
                let Flow::Respond(r) = flow else {
                    panic!("the 5th call must be refused")
                };
                assert_eq!(r.status(), 503);
                assert_eq!(r.headers()["retry-after"], "7");
            } else {
                assert!(matches!(flow, Flow::Continue), "fail open goes on unchanged");
            }
            assert!(req.headers.get("x-async").is_none(), "the plugin was not called");
            for fut in held {
                let (flow, req) = fut.await;
                assert!(matches!(flow, Flow::Continue));
                assert_eq!(req.headers["x-async"], "done");
            }
            // Room again.
            let (flow, req, _) = exchange(chain, &[("x-delay-ms", "0")]).await;
            assert!(matches!(flow, Flow::Continue));
            assert_eq!(req.headers["x-async"], "done");
        }
    });
    wait_clean(&rt);
}

#[test]
fn blocking_jobs_go_through_the_worker_rings() {
    let _g = rings_lock();
    // The log phases go to the workers too and nobody waits for them: a log queue of a quarter
    // of the slots bounds what they hold (half the slots, `pending_log_calls_cannot_take_every_slot`),
    // so the 64 requests in flight always find a slot, however far the log jobs fall behind.
    let rt = runtime_with(1024, 256);
    let chain = rt.chain(&[instance(&rt, "blocking", "blocking", false, opts(20_000))]);
    let tokio = tokio_rt();
    const TASKS: usize = 64;
    const EACH: usize = 40;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let chain = chain.clone();
            tokio.spawn(async move {
                for _ in 0..EACH {
                    let (flow, req, resp) = exchange(&chain, &[]).await;
                    assert!(matches!(flow, Flow::Continue), "{:?}", status(&flow));
                    assert_eq!(req.headers["x-blocking"], "done");
                    let resp = resp.unwrap();
                    assert_eq!(resp.headers["x-blocking-resp"], "done");
                }
            })
        })
        .collect();
    tokio.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    // The sync API from a plain thread has its own ring.
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..50 {
                let mut x = chain.start(client(), "http").unwrap().unwrap();
                let mut req = request(&[]);
                assert!(matches!(x.request_headers(&mut req), Flow::Continue));
                assert_eq!(req.headers["x-blocking"], "done");
            }
        });
    });
    wait_clean(&rt);
    let jobs = stat(&rt, |s| &s.worker_jobs);
    // Request and response phases of every request, plus log phases (from the log thread).
    assert!(jobs >= (2 * TASKS * EACH + 50) as u64, "{jobs} jobs");
    assert!(rt.worker_rings() >= 2, "{} rings", rt.worker_rings());
    assert_eq!(stat(&rt, |s| &s.plugin_failures), 0);
    assert_eq!(stat(&rt, |s| &s.busy_rejections), 0);
}

/// A local reply body a plugin writes goes to hyper as a slice of the arena slot it wrote it into,
/// whether it answered inline, completed a pending call from another thread, or ran as a worker
/// job: no copy, and the slot comes back once the response is gone. Header values, long ones too,
/// are copies the host checked (a plugin may still write its slot).
#[test]
fn local_reply_bytes_go_out_as_slices_of_the_arena() {
    let _g = rings_lock();
    let rt = runtime(64);
    let inline = rt.chain(&[instance(&rt, "inline", "async-delay", false, opts(10_000))]);
    let blocking = rt.chain(&[instance(&rt, "blocking", "blocking", false, opts(10_000))]);
    let tokio = tokio_rt();
    let arena = rt.arena_range();
    let in_arena = |p: *const u8, len: usize| arena.contains(&(p as usize)) && arena.contains(&(p as usize + len - 1));
    // 1500 + 2000 bytes fit the 4096-byte out slot (not the rest of the request's slot).
    let want: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (how, chain, extra) in [
        ("inline", &inline, None),
        ("pending", &inline, Some(("x-delay-ms", "5"))),
        ("worker job", &blocking, None),
    ] {
        let mut headers = vec![("x-reply-bytes", "1500")];
        headers.extend(extra);
        let shared = stat(&rt, |s| &s.output_bytes_shared);
        let (flow, _, _) = tokio.block_on(exchange(chain, &headers));
        let Flow::Respond(resp) = flow else {
            panic!("{how}: no local reply")
        };
        assert_eq!(resp.status(), 200, "{how}");
        assert_eq!(resp.body().as_ref(), &want[..], "{how}: body");
        assert!(
            in_arena(resp.body().as_ptr(), 1500),
            "{how}: the body was copied out of the arena"
        );
        let long = &resp.headers()["x-long"];
        assert_eq!(long.as_bytes(), &[b'v'; 2000][..], "{how}: x-long");
        assert!(
            !in_arena(long.as_bytes().as_ptr(), 2000),
            "{how}: the long header value is the host's copy"
        );
        assert_eq!(
            stat(&rt, |s| &s.output_bytes_shared) - shared,
            1500,
            "{how}: the body counted as shared"
        );
        // The exchange is gone (its log phase ran); the response still holds the out slot.
        wait_until("the request's slot back", Duration::from_secs(10), || {
            rt.arena_usage().0 == 0 && rt.out_slot_usage().0 == 1
        });
        drop(resp);
        wait_clean(&rt);
    }
    // Out slots are a pool of their own: replies held unsent take them all, and requests still
    // start. The next call writes after the view in its request's slot; its bytes are copied.
    let outs = rt.out_slot_usage().1 as usize;
    let held: Vec<_> = (0..outs)
        .map(
            |_| match tokio.block_on(exchange(&inline, &[("x-reply-bytes", "100")])).0 {
                Flow::Respond(r) => r,
                Flow::Continue => panic!("no local reply"),
            },
        )
        .collect();
    assert_eq!(
        rt.out_slot_usage().0 as usize,
        outs,
        "each unsent reply holds its out slot"
    );
    assert!(held.iter().all(|r| in_arena(r.body().as_ptr(), 100)));
    let mut x = inline.start(client(), "http").unwrap().unwrap();
    let mut req = request(&[("x-reply-bytes", "100")]);
    let Flow::Respond(resp) = x.request_headers(&mut req) else {
        panic!("no local reply without a free out slot")
    };
    assert_eq!(resp.body().as_ref(), &want[..100]);
    assert!(
        !in_arena(resp.body().as_ptr(), 100),
        "with no free out slot the body is a copy"
    );
    assert_eq!(stat(&rt, |s| &s.output_bytes_copied), 100, "counted as copied");
    assert_eq!(stat(&rt, |s| &s.plugin_failures), 0);
    drop((held, resp, x));
    wait_clean(&rt);
}

#[test]
fn a_full_worker_ring_answers_503() {
    let _g = rings_lock();
    let rt = runtime(64);
    rt.set_worker_ring_capacity(4).unwrap();
    assert!(rt.set_worker_ring_capacity(3).is_err());
    let chain = rt.chain(&[instance(&rt, "blocking", "blocking", false, opts(30_000))]);
    // One thread (a current-thread runtime): one ring of 4.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        type Fut = Pin<Box<dyn Future<Output = (Flow, http::request::Parts)>>>;
        let start = |headers: &[(&str, &str)]| -> Fut {
            let mut x = chain.start(client(), "http").unwrap().unwrap();
            let mut req = request(headers);
            Box::pin(async move {
                let flow = x.request_headers_async(&mut req).await;
                (flow, req)
            })
        };
        // The worker takes the first job and blocks in it for 1.5 s.
        let mut first = start(&[("x-block-ms", "1500")]);
        assert!(poll_once(&mut first).await.is_pending());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut queued = Vec::new();
        let mut refused = 0;
        for _ in 0..8 {
            let mut f = start(&[]);
            match poll_once(&mut f).await {
                Poll::Pending => queued.push(f),
                Poll::Ready((Flow::Respond(r), _)) => {
                    assert_eq!(r.status(), 503);
                    assert_eq!(r.headers()["retry-after"], "1");
                    refused += 1;
                }
                Poll::Ready((Flow::Continue, _)) => panic!("a blocking call completed at once"),
            }
        }
        assert!(queued.len() <= 4, "a ring of 4 took {}", queued.len());
        assert!(refused >= 4, "{refused} refused");
        assert_eq!(stat(&rt, |s| &s.busy_rejections), refused);
        let (flow, req) = first.await;
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.headers["x-blocking"], "done");
        for f in queued {
            let (flow, req) = f.await;
            assert!(matches!(flow, Flow::Continue));
            assert_eq!(req.headers["x-blocking"], "done");
        }
    });
    wait_clean(&rt);
}

#[test]
fn dropping_the_runtime_closes_its_rings_and_worker_exit_frees_them() {
    let _g = rings_lock();
    // Runtimes of earlier tests may still be closing their rings: start from none.
    wait_until("rings of earlier tests gone", Duration::from_secs(30), || {
        weft_runtime::workers::attached_rings() == 0 && weft_runtime::workers::live_ring_regions() == 0
    });
    let (attached, mapped) = (0, 0);
    let rt = runtime(64);
    let chain = rt.chain(&[instance(&rt, "blocking", "blocking", false, opts(20_000))]);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..20 {
                    let mut x = chain.start(client(), "http").unwrap().unwrap();
                    let mut req = request(&[]);
                    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
                    assert_eq!(req.headers["x-blocking"], "done");
                }
            });
        }
    });
    // Three posting threads (and the log thread): a ring and a C worker thread each.
    assert!(rt.worker_rings() >= 3, "{} rings", rt.worker_rings());
    assert!(weft_runtime::workers::attached_rings() >= attached + 3);
    assert!(weft_runtime::workers::live_ring_regions() >= mapped + 3);
    let weak = Arc::downgrade(&rt);
    drop(chain);
    drop(rt);
    // The log thread may hold the runtime for the last log phases; then it is dropped, closes
    // the rings, the C workers drain them, call worker_exit and the regions are unmapped.
    wait_until("runtime dropped", Duration::from_secs(30), || weak.strong_count() == 0);
    wait_until(
        "every worker left and every ring unmapped",
        Duration::from_secs(30),
        || weft_runtime::workers::attached_rings() == attached && weft_runtime::workers::live_ring_regions() == mapped,
    );
}

#[test]
fn blocking_is_a_per_instance_option_that_needs_a_worker_pool() {
    let _g = rings_lock();
    let rt = runtime(64);
    // The delay plugin is not flagged blocking, but an instance can be: its calls then go to
    // the library's workers (whose handler writes x-blocking).
    let worker = InstanceOptions {
        blocking: true,
        ..opts(20_000)
    };
    let chain = rt.chain(&[instance(&rt, "delay-on-workers", "async-delay", false, worker.clone())]);
    let mut x = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request(&[("x-delay-ms", "5")]);
    assert!(matches!(x.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-blocking"], "done");
    assert!(req.headers.get("x-async").is_none(), "on_phase was not called inline");
    drop(x);
    // A library without attach_worker cannot run blocking instances.
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let err = rt
        .instantiate_with(
            InstanceSpec {
                name: "hostile-blocking".into(),
                library: "hostile".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            worker,
        )
        .unwrap_err();
    assert!(matches!(err, InitError::Options { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("hostile-blocking") && msg.contains("attach_worker"),
        "{msg}"
    );
    wait_clean(&rt);
}

#[test]
fn pending_log_calls_do_not_hold_up_the_log_thread() {
    for place in [LogPlace::Inline, LogPlace::Thread] {
        pending_log_calls_do_not_hold_up_the_log_thread_at(place);
    }
}

fn pending_log_calls_do_not_hold_up_the_log_thread_at(place: LogPlace) {
    // Log calls that go pending park their request, not the log thread: 40 log calls of
    // 500 ms each finish together (one after another they would take 20 s). Inline, each call
    // starts on this thread and answers pending; its job goes on on the log thread.
    let rt = runtime_placed(256, 4096, place);
    let chain = rt.chain(&[instance(&rt, "log", "async-log", false, opts(10_000))]);
    let t = Instant::now();
    for _ in 0..40 {
        let mut x = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(&[("x-log-delay-ms", "500")]);
        assert!(matches!(x.request_headers(&mut req), Flow::Continue));
    }
    wait_until("log calls pending", Duration::from_secs(30), || {
        stat(&rt, |s| &s.pending_calls) > 1
    });
    wait_clean(&rt);
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    // A log call past its deadline is cancelled; its slot comes back with the late completion.
    let chain = rt.chain(&[instance(&rt, "log-deadline", "async-log", false, opts(100))]);
    for _ in 0..5 {
        let mut x = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(&[("x-log-delay-ms", "1000")]);
        assert!(matches!(x.request_headers(&mut req), Flow::Continue));
    }
    wait_until("log calls cancelled", Duration::from_secs(30), || {
        stat(&rt, |s| &s.phase_timeouts) == 5
    });
    wait_clean(&rt);
    assert_eq!(stat(&rt, |s| &s.late_completions), 5);
    assert_eq!(stat(&rt, |s| &s.log_dropped), 0);
}

#[test]
fn log_calls_completed_around_the_hand_off_are_not_lost() {
    // Inline, a log call that answers pending is polled once under a no-op waker, then its job
    // goes to the log thread. Completed before it answers (0 ms) or about when its job is handed
    // over (1 ms), every one is found: a lost completion would sit until its 5 s deadline and
    // count as a timeout. (200 requests in all: each holds a slot until its log call completed,
    // and neither the 256 slots nor the queue can run out, so none is refused or dropped.)
    let rt = runtime_placed(256, 4096, LogPlace::Inline);
    let chain = rt.chain(&[instance(&rt, "log", "async-log", false, opts(5_000))]);
    for delay in ["0", "1"] {
        for _ in 0..100 {
            let mut x = chain.start(client(), "http").unwrap().unwrap();
            let mut req = request(&[("x-log-delay-ms", delay)]);
            assert!(matches!(x.request_headers(&mut req), Flow::Continue));
        }
    }
    let t = Instant::now();
    wait_clean(&rt);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?} (5 ms here)", t.elapsed());
    assert_eq!(stat(&rt, |s| &s.phase_timeouts), 0);
    assert_eq!(stat(&rt, |s| &s.log_dropped), 0);
    assert_eq!(stat(&rt, |s| &s.plugin_failures), 0);
}

#[test]
fn pending_log_calls_cannot_take_every_slot() {
    for place in [LogPlace::Inline, LogPlace::Thread] {
        pending_log_calls_cannot_take_every_slot_at(place);
    }
}

fn pending_log_calls_cannot_take_every_slot_at(place: LogPlace) {
    // A log plugin slower than the requests (each call pending for 2 s): the log thread takes no
    // more jobs while as many are parked as its queue is long (8 here), so log work holds at most
    // 16 slots, the requests after them still get one, and the log phases beyond are dropped and
    // counted. Without that bound the parked calls took every slot (the 65th request: no slot).
    // Inline, a full queue drops the log phase before its call starts (a started call that found
    // the queue full would be abandoned, and keep its slot until the plugin completed it).
    let rt = runtime_placed(64, 8, place);
    let chain = rt.chain(&[instance(&rt, "log", "async-log", false, opts(10_000))]);
    let mut most = 0;
    for i in 0..200 {
        let Ok(x) = chain.start(client(), "http") else {
            panic!("request {i}: no slot; {} in use", rt.arena_usage().0);
        };
        let mut x = x.unwrap();
        let mut req = request(&[("x-log-delay-ms", "2000")]);
        assert!(matches!(x.request_headers(&mut req), Flow::Continue));
        drop(x);
        most = most.max(rt.arena_usage().0);
        // Producers submit faster than the log thread looks: give it a look now and then.
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(most <= 16, "log work held {most} slots");
    // Dropped, and counted: all but 16 while no 2 s call has completed yet (the loop takes
    // ~50 ms); at least some on a machine slow enough for calls to complete meanwhile.
    assert!(stat(&rt, |s| &s.log_dropped) > 0);
    wait_clean(&rt);
}

#[test]
fn a_late_completion_after_the_runtime_is_gone_still_releases_its_slot() {
    // A config reload drops the old runtime while a plugin still holds a cancelled call: the
    // late completion must still find the call (Cancelled) and give the slot back.
    let rt = runtime(8);
    let stats = Arc::clone(&rt.stats);
    let chain = rt.chain(&[instance(&rt, "reloaded", "async-delay", false, opts(100))]);
    let mut x = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request(&[("x-delay-ms", "1500")]);
    assert_eq!(status(&x.request_headers(&mut req)), Some(504));
    drop(x);
    assert_eq!(stats.orphaned_slots.load(Ordering::Relaxed), 1);
    let weak = Arc::downgrade(&rt);
    drop(chain);
    drop(rt);
    wait_until("runtime dropped", Duration::from_secs(30), || weak.strong_count() == 0);
    assert_eq!(
        stats.late_completions.load(Ordering::Relaxed),
        0,
        "still held by the plugin"
    );
    wait_until("the late completion released the slot", Duration::from_secs(30), || {
        stats.orphaned_slots.load(Ordering::Relaxed) == 0 && stats.late_completions.load(Ordering::Relaxed) == 1
    });
}

/// A waker that counts its wake-ups.
struct CountWake(std::sync::atomic::AtomicU32);

impl std::task::Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The client goes away after the plugin completed its pending call but before the request's
/// task looked at the completion: dropping the phase future finds the
/// completion there, finishes the call, and gives back the out slot the call wrote into (and the
/// local reply's body, which refers to it). Run for a headers call with a plain mutation and
/// with a local reply whose body is a slice of the out slot.
#[test]
fn a_disconnect_racing_a_completion_gives_back_the_out_slot() {
    let rt = runtime(8);
    let chain = rt.chain(&[instance(&rt, "race-drop", "async-delay", false, opts(10_000))]);
    for extra in [None, Some(("x-reply-bytes", "1500"))] {
        let mut x = chain.start(client(), "http").unwrap().unwrap();
        let mut headers = vec![("x-delay-ms", "20")];
        headers.extend(extra);
        let mut req = request(&headers);
        let woken = Arc::new(CountWake(0.into()));
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut fut = Box::pin(x.request_headers_async(&mut req));
        let first = fut.as_mut().poll(&mut std::task::Context::from_waker(&waker));
        assert!(first.is_pending(), "the call went pending");
        assert_eq!(rt.out_slot_usage().0, 1, "the pending call holds an out slot");
        // The completion wakes the task; the task never polls again: its client is gone.
        wait_until("the completion arrived", Duration::from_secs(10), || {
            woken.0.load(Ordering::SeqCst) > 0
        });
        drop(fut);
        drop(x);
        wait_until(
            "request and out slots back after the disconnect",
            Duration::from_secs(10),
            || rt.arena_usage().0 == 0 && rt.out_slot_usage().0 == 0,
        );
        assert_eq!(stat(&rt, |s| &s.orphaned_slots), 0);
    }
    assert_eq!(stat(&rt, |s| &s.pending_calls), 0);
    assert_eq!(stat(&rt, |s| &s.late_completions), 0, "the completion was in time");
}
