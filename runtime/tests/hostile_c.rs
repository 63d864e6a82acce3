//! The runtime against a hostile native plugin (tests/fixtures/c-plugins/hostile.c, built by
//! scripts/build-c-plugins with a C compiler): every misuse a plugin can commit through ABI v1
//! gets an error (a result code or a rejected batch), the failure policy decides the request, the
//! runtime keeps serving, and every arena slot comes back. Libraries that break the handshake are
//! refused at load with a message naming the library and the fault.
//!
//! Misuses of the async ABI (`complete` twice, with a stale or forged call or slot, with
//! another instance's id, with result Pending or a length past the capacity, never, or after the
//! host cancelled; `worker_exit` with a bogus pointer) each get their error code and one log line
//! naming the instance, and the request is unharmed (`ASYNC_MISUSES`). A cancelled call completed
//! from two threads at once releases its slot exactly once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weft_runtime::{Flow, InitError, InstanceOptions, InstanceSpec, Runtime, RuntimeOptions};

use weft_test_support::c_plugins;

const SLOTS: u32 = 8;

fn runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        slot_count: SLOTS,
        slot_size: 8192,
        log_queue: 64,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap()
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn request(mode: &str) -> http::request::Parts {
    http::Request::get("/hostile?q=1")
        .header("host", "example.com")
        .header("x-hostile", mode)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn response() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// (mode, the request fails under fail-closed)
const MISUSES: &[(&str, bool)] = &[
    ("ok", false),
    ("len-past-cap", true),
    ("len-max", true),
    ("garbage", true),
    ("overflow-lengths", true),
    ("short-record", true),
    ("unknown-op", true),
    ("bad-status", true),
    ("huge-status", true),
    ("bad-name", true),
    ("crlf-value", true),
    ("nul-value", true),
    ("reserved-header", true),
    ("orphan-reply-header", true),
    ("double-reply", true),
    ("bad-path", true),
    ("wrong-phase-op", true),
    ("unknown-result", true),
    ("claims-overflow", true),
    ("too-many-records", true),
    ("bytes-past-len", false),
    ("log-abuse", false),
    ("resp-bad-status", true),
    ("resp-request-op", true),
    ("resp-crlf", true),
];

fn wait_arena_empty(rt: &Runtime) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.arena_usage().0 != 0 || rt.out_slot_usage().0 != 0 {
        assert!(
            Instant::now() < deadline,
            "arena slots leaked: {:?}, out slots {:?}",
            rt.arena_usage(),
            rt.out_slot_usage()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_misuse_fails_per_policy_and_leaks_nothing() {
    let rt = runtime();
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .expect("load hostile");
    let instance = |name: &str, fail_open: bool| {
        rt.instantiate(InstanceSpec {
            name: name.into(),
            library: "hostile".into(),
            plugin: "hostile".into(),
            config_json: b"{}".to_vec(),
            fail_open,
        })
        .unwrap()
    };
    let closed = rt.chain(&[instance("hostile-closed", false)]);
    let open = rt.chain(&[instance("hostile-open", true)]);
    // More rounds than slots: a leaked slot would exhaust the arena (and the wait after each
    // request fails first, naming the usage).
    for round in 0..(2 * SLOTS) {
        for &(mode, fails) in MISUSES {
            for (chain, fail_open) in [(&closed, false), (&open, true)] {
                let failures_before = rt.stats.plugin_failures.load(Ordering::Relaxed);
                let mut ex = chain
                    .start(client(), "http")
                    .expect("a free slot (none leaked)")
                    .expect("the chain has phases");
                let mut req = request(mode);
                let resp_phase = mode.starts_with("resp-");
                let flow = ex.request_headers(&mut req);
                let failed = match flow {
                    Flow::Respond(r) => {
                        assert_eq!(r.status(), 500, "{mode}: only failures answer here");
                        assert!(!fail_open, "{mode}: a fail-open instance must not answer");
                        true
                    }
                    Flow::Continue => {
                        let mut resp = response();
                        match ex.response_headers(&mut resp) {
                            Flow::Respond(r) => {
                                assert_eq!(r.status(), 500, "{mode}");
                                assert!(!fail_open, "{mode}: fail-open must not answer");
                                true
                            }
                            Flow::Continue => {
                                // Fail-open: nothing of a rejected batch was applied.
                                assert_eq!(resp.status, 200, "{mode}");
                                assert!(resp.headers.get("x-a").is_none(), "{mode}");
                                false
                            }
                        }
                    }
                };
                let failures = rt.stats.plugin_failures.load(Ordering::Relaxed) - failures_before;
                assert_eq!(
                    failures, fails as u64,
                    "{mode} (fail_open={fail_open}): failure counted"
                );
                if fail_open {
                    assert!(!failed, "{mode}");
                    // A rejected request batch applies nothing.
                    assert!(req.headers.get("x-a").is_none(), "{mode}");
                    assert!(req.headers.get("x-injected").is_none(), "{mode}");
                    assert!(req.headers.get("transfer-encoding").is_none(), "{mode}");
                    assert_eq!(req.uri.path(), "/hostile", "{mode}");
                } else {
                    assert_eq!(failed, fails, "{mode} under fail-closed (round {round})");
                }
                if mode == "ok" {
                    assert_eq!(req.headers["x-hostile-ok"], "1");
                }
                if mode == "bytes-past-len" {
                    assert!(req.headers.get("x-hostile-ignored").is_none());
                }
                if mode == "log-abuse" {
                    assert_eq!(req.headers["x-hostile-logged"], "1");
                }
                let _ = resp_phase;
                // The slot goes back after the log phase ran on the log thread.
                drop(ex);
                wait_arena_empty(&rt);
            }
        }
    }
    wait_arena_empty(&rt);
    assert_eq!(rt.stats.arena_exhausted.load(Ordering::Relaxed), 0);
}

#[test]
fn init_error_with_a_lying_length_is_contained() {
    let rt = runtime();
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let err = rt
        .instantiate(InstanceSpec {
            name: "bad-init".into(),
            library: "hostile".into(),
            plugin: "hostile".into(),
            config_json: br#""bad""#.to_vec(),
            fail_open: false,
        })
        .unwrap_err();
    assert!(matches!(err, InitError::Failed { .. }), "{err}");
    let msg = err.to_string();
    // The length claims 4 GiB: the message says so instead of showing the buffer (once 4 KiB of
    // NULs), and carries nothing unprintable.
    assert!(
        msg.contains("bad-init") && msg.contains("hostile init refused (and an invalid error length: 4294967295 bytes"),
        "{msg}"
    );
    assert!(msg.len() < 300 && !msg.chars().any(char::is_control), "{msg:?}");
}

#[test]
fn broken_handshakes_are_refused_naming_the_fault() {
    let cases: &[(u32, &str)] = &[
        (1, "plugin name: not UTF-8"),
        (2, "WeftPluginDescriptor is "),
        (3, "WeftRequestView is 112 bytes in the plugin but 128 bytes"),
        (4, "WeftHostApi"),
        (5, "weft_plugin_entry returned NULL"),
        (6, "built for weft ABI version 2"),
        (7, "init or on_phase is NULL"),
        (8, "duplicate plugin name"),
        (9, "100000 plugins"),
        (10, "runtime_version: NULL or oversized"),
        (11, "refused to load: hostile: two plugins registered as x"),
        (12, "WeftMutation is 12 bytes in the plugin but 16 bytes"),
    ];
    let rt = runtime();
    for &(n, want) in cases {
        let path = c_plugins("plain").join(format!("libweft_c_hostile_load{n}.so"));
        let err = rt
            .load_library(&format!("load{n}"), &path)
            .expect_err(&format!("variant {n} must be refused"));
        let msg = err.to_string();
        assert!(msg.contains(want), "variant {n}: {msg}");
        assert!(
            msg.contains(&format!("libweft_c_hostile_load{n}.so")),
            "names the library: {msg}"
        );
    }
    // The runtime still loads a good library afterwards.
    rt.load_library("stamp", &c_plugins("plain").join("libweft_c_stamp.so"))
        .expect("a good library after the bad ones");
}

/// Log lines of this test binary (a global subscriber writing here), to check the log line of
/// each misuse.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| W)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_lines() -> Vec<String> {
    String::from_utf8_lossy(&captured_logs().lock().unwrap())
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (x-hostile mode, the code `complete` returned for the misuse, text of its log line)
const ASYNC_MISUSES: &[(&str, u32, &str)] = &[
    ("async-twice", 13, "was completed already"),
    ("async-stale-call", 12, "is not the current call of slot"),
    ("async-zero-call", 12, "call 0 is not the current call"),
    ("async-forged-slot", 12, "slot 4294901760 is out of range"),
    ("async-other-instance", 12, "complete():"),
    (
        "async-unknown-instance",
        12,
        "unknown plugin instance id 18446744073709551615",
    ),
    ("async-result-pending", 2, "result Pending is not a final result"),
    ("async-len-past-cap", 2, "exceeds the call's output capacity"),
];

#[test]
fn async_misuses_get_error_codes_and_leave_requests_unharmed() {
    captured_logs();
    let rt = runtime();
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let instance = |name: &str, fail_open: bool| {
        rt.instantiate_with(
            InstanceSpec {
                name: name.into(),
                library: "hostile".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open,
            },
            InstanceOptions {
                deadline: Duration::from_millis(200),
                ..InstanceOptions::default()
            },
        )
        .unwrap()
    };
    let chains = [
        ("async-closed", false, rt.chain(&[instance("async-closed", false)])),
        ("async-open", true, rt.chain(&[instance("async-open", true)])),
    ];
    let run = |chain: &weft_runtime::Chain, mode: &str| {
        let mut ex = chain.start(client(), "http").expect("a free slot").expect("phases");
        let mut req = request(mode);
        let flow = ex.request_headers(&mut req);
        (flow, req)
    };
    for (name, _, chain) in &chains {
        for &(mode, code, log) in ASYNC_MISUSES {
            let (flow, req) = run(chain, mode);
            assert!(matches!(flow, Flow::Continue), "{mode} ({name}): the request goes on");
            assert_eq!(
                req.headers["x-hostile-async"], "1",
                "{mode} ({name}): the good completion applied"
            );
            let (_, report) = run(chain, "report-rc");
            assert_eq!(
                report.headers["x-hostile-rc"],
                code.to_string().as_str(),
                "{mode} ({name}): complete() returned"
            );
            let want_name = format!("plugin={name} ");
            assert!(
                log_lines().iter().any(|l| l.contains(log)
                    && l.contains("complete():")
                    && (mode == "async-unknown-instance" || l.contains(&want_name))),
                "{mode} ({name}): no log line with {log:?} naming the instance:\n{}",
                log_lines().join("\n")
            );
            wait_arena_empty(&rt);
        }
    }
    assert_eq!(rt.stats.plugin_failures.load(Ordering::Relaxed), 0);

    // Never answering: the deadline applies the policy, and the slot stays with the plugin.
    let (flow, req) = run(&chains[0].2, "async-never");
    let Flow::Respond(r) = flow else {
        panic!("fail closed answers")
    };
    assert_eq!(r.status(), 504);
    assert!(req.headers.get("x-hostile-async").is_none());
    let (flow, _) = run(&chains[1].2, "async-never");
    assert!(matches!(flow, Flow::Continue), "fail open goes on");
    assert_eq!(rt.stats.phase_timeouts.load(Ordering::Relaxed), 2);
    assert_eq!(rt.stats.orphaned_slots.load(Ordering::Relaxed), 2);
    // Only the two orphaned calls' slots stay out (the log phases ran in fresh slots), and the
    // two out slots the plugin may still write.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.arena_usage().0 != 2 || rt.out_slot_usage().0 != 2 {
        assert!(Instant::now() < deadline, "{:?}", rt.arena_usage());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Completing them now (the host cancelled them) gets Cancelled and frees their slots.
    let (flow, req) = run(&chains[0].2, "async-release-stuck");
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(req.headers["x-hostile-released"], "2");
    let (_, report) = run(&chains[0].2, "report-rc");
    assert_eq!(report.headers["x-hostile-rc"], "14", "a late completion gets Cancelled");
    assert_eq!(rt.stats.late_completions.load(Ordering::Relaxed), 2);
    assert_eq!(rt.stats.orphaned_slots.load(Ordering::Relaxed), 0);
    wait_arena_empty(&rt);

    // worker_exit with pointers that name no ring: logged, ignored.
    let (flow, req) = run(&chains[0].2, "worker-exit-bogus");
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(req.headers["x-hostile-ok"], "1");
    assert!(
        log_lines()
            .iter()
            .any(|l| l.contains("worker_exit() with a pointer that is not an attached worker ring")),
        "{}",
        log_lines().join("\n")
    );
    wait_arena_empty(&rt);
    assert_eq!(rt.stats.arena_exhausted.load(Ordering::Relaxed), 0);
}

/// The audit's heap corruption: a plugin completes a call the host cancelled (deadline) from two
/// threads at once. Exactly one completion releases the slot the call held (`Cancelled`), the
/// other is refused (`AlreadyCompleted`), nothing is released twice (the arena's counts come back
/// to zero, never below) and the runtime keeps serving. Before the fix both completers dropped
/// the slot lease: double free, or the same slot handed to two requests.
#[test]
fn a_cancelled_call_completed_from_two_threads_releases_its_slot_once() {
    // Room for the held slots and for requests whose log phase has not run yet.
    const RACE_SLOTS: u32 = 32;
    let rt = Runtime::new(RuntimeOptions {
        slot_count: RACE_SLOTS,
        slot_size: 8192,
        log_queue: 16,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let id = rt
        .instantiate_with(
            InstanceSpec {
                name: "racing-completers".into(),
                library: "hostile".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            InstanceOptions {
                deadline: Duration::from_millis(5),
                ..InstanceOptions::default()
            },
        )
        .unwrap();
    let chain = rt.chain(&[id]);
    let run = |mode: &str| {
        let mut ex = chain.start(client(), "http").expect("a free slot").expect("phases");
        let mut req = request(mode);
        let flow = ex.request_headers(&mut req);
        (flow, req)
    };
    // Each round leaves PER_ROUND cancelled calls (their slots held), then completes each from two
    // threads at once.
    const ROUNDS: u64 = 40;
    const PER_ROUND: u64 = 5;
    for round in 1..=ROUNDS {
        for _ in 0..PER_ROUND {
            let (flow, _) = run("async-never-race");
            assert!(
                matches!(flow, Flow::Respond(ref r) if r.status() == 504),
                "round {round}"
            );
        }
        assert_eq!(
            rt.stats.orphaned_slots.load(Ordering::Relaxed),
            PER_ROUND,
            "round {round}"
        );
        let (flow, req) = run("async-release-stuck-racing");
        assert!(matches!(flow, Flow::Continue), "round {round}");
        assert_eq!(
            req.headers["x-hostile-released"],
            PER_ROUND.to_string().as_str(),
            "round {round}"
        );
        let (_, report) = run("report-rc");
        // 13 AlreadyCompleted, 14 Cancelled: one each, for every call.
        assert_eq!(report.headers["x-hostile-rc"], "1314", "round {round}");
        assert_eq!(rt.stats.late_completions.load(Ordering::Relaxed), round * PER_ROUND);
        assert_eq!(rt.stats.orphaned_slots.load(Ordering::Relaxed), 0, "round {round}");
        wait_arena_empty(&rt);
    }
    // Every slot can be held at once, by distinct requests, and all come back.
    let held: Vec<_> = (0..RACE_SLOTS)
        .map(|_| chain.start(client(), "http").expect("a free slot").expect("phases"))
        .collect();
    assert_eq!(rt.arena_usage().0, u64::from(RACE_SLOTS));
    assert!(chain.start(client(), "http").is_err(), "no slot is handed out twice");
    drop(held);
    wait_arena_empty(&rt);
}

#[test]
fn a_descriptor_from_before_attach_worker_still_loads() {
    let rt = runtime();
    let metas = rt
        .load_library("old", &c_plugins("plain").join("libweft_c_hostile_load13.so"))
        .expect("the first ABI v1 descriptor size is accepted");
    assert!(metas.iter().any(|m| m.name == "hostile"));
    let id = rt
        .instantiate(InstanceSpec {
            name: "old-hostile".into(),
            library: "old".into(),
            plugin: "hostile".into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let mut ex = rt.chain(&[id]).start(client(), "http").unwrap().unwrap();
    let mut req = request("ok");
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-hostile-ok"], "1");
    // Without attach_worker it cannot run blocking instances.
    let err = rt
        .instantiate_with(
            InstanceSpec {
                name: "old-blocking".into(),
                library: "old".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            InstanceOptions {
                blocking: true,
                ..InstanceOptions::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("attach_worker"), "{err}");
}

/// The exported trigger of hostile.c's late writers (the library the runtime loaded, opened again
/// with RTLD_NOLOAD, so no second copy).
fn late_write_trigger() -> impl Fn() -> bool {
    let path = c_plugins("plain").join("libweft_c_hostile.so");
    // SAFETY: loaded already by the runtime (no initialisers run); the symbol is
    // `int hostile_late_write(void)`, which only sets and polls C atomics.
    let lib = unsafe { libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_NOLOAD) }
        .expect("the runtime loaded the hostile library");
    let f: libloading::os::unix::Symbol<unsafe extern "C" fn() -> i32> =
        unsafe { lib.get(b"hostile_late_write") }.expect("hostile_late_write exported");
    move || unsafe { f() } == 1
}

/// Sends `resp` through a real hyper HTTP/1 server on a loopback socket and returns the bytes a
/// client read: what reaches the wire.
fn on_the_wire(resp: http::Response<bytes::Bytes>) -> Vec<u8> {
    use std::io::{Read, Write};
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio.spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let resp = Mutex::new(Some(resp.map(http_body_util::Full::new)));
        let svc = hyper::service::service_fn(move |_req| {
            let r = resp.lock().unwrap().take().expect("one request");
            std::future::ready(Ok::<_, std::convert::Infallible>(r))
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await
    });
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    tokio.block_on(server).unwrap().unwrap();
    client.join().unwrap()
}

/// A C plugin writes CR/LF into the header values (and the body) of its local reply from another
/// thread after it returned, or after it completed a pending call, once the host validated the
/// batch. The headers that reach the wire are the validated ones: the host
/// checked and sends its own copy. The body, payload in a slot the host lent, keeps its length.
#[test]
fn a_late_writer_cannot_change_validated_headers() {
    let rt = runtime();
    rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
        .unwrap();
    let id = rt
        .instantiate_with(
            InstanceSpec {
                name: "late".into(),
                library: "hostile".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            InstanceOptions::default(),
        )
        .unwrap();
    let chain = rt.chain(&[id]);
    let late_write = late_write_trigger();
    let long = "v".repeat(2000);
    for mode in ["late-write", "late-write-pending"] {
        let mut ex = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(mode);
        let Flow::Respond(resp) = ex.request_headers(&mut req) else {
            panic!("{mode}: no local reply")
        };
        assert_eq!(resp.status(), 200, "{mode}");
        assert!(late_write(), "{mode}: the late writer ran");
        assert_eq!(resp.headers()["x-long"], long.as_str(), "{mode}");
        assert_eq!(resp.headers()["x-short"], "short-value", "{mode}");
        let wire = on_the_wire(resp);
        let text = String::from_utf8_lossy(&wire);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let mut names: Vec<&str> = head
            .lines()
            .skip(1)
            .map(|l| l.split_once(": ").expect("name: value").0)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["connection", "content-length", "date", "x-long", "x-short"],
            "{mode}: no injected header line:\n{head}"
        );
        assert!(head.contains(&format!("\r\nx-long: {long}\r\n")), "{mode}");
        assert!(head.contains("\r\nx-short: short-value"), "{mode}");
        assert!(head.contains("\r\ncontent-length: 256"), "{mode}");
        assert_eq!(body.len(), 256, "{mode}: the body keeps its length");
        drop(ex);
        wait_arena_empty(&rt);
    }
    // A request header the late writer overwrites after it was applied.
    let mut ex = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request("late-write-set");
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert!(late_write(), "the late writer ran");
    assert_eq!(req.headers["x-long"], long.as_str());
    drop(ex);
    wait_arena_empty(&rt);
    // A writer that flips a byte of the value to LF while the host decodes: the batch is either
    // refused (the copy the host checked had the LF) or applied with the value unchanged.
    let (mut applied, mut refused) = (0, 0);
    for _ in 0..200 {
        let mut ex = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request("late-write-race");
        match ex.request_headers(&mut req) {
            Flow::Respond(r) if r.status() == 500 => refused += 1,
            Flow::Respond(r) => {
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["x-long"], long.as_str());
                applied += 1;
            }
            Flow::Continue => panic!("late-write-race answers a local reply"),
        }
        drop(ex);
        // The writer is done before the next request may start one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !late_write() {
            assert!(Instant::now() < deadline, "the racing writer never finished");
        }
        // And the slot is back: the plugin has a log phase, and a slot waits in the log queue
        // until the log thread runs it (on a loaded machine, 8 requests in a row can outpace it).
        wait_arena_empty(&rt);
    }
    eprintln!("late-write-race: {applied} applied unchanged, {refused} refused");
    wait_arena_empty(&rt);
}

/// Ring tests run one at a time: they count the process's mapped ring regions.
static RINGS: Mutex<()> = Mutex::new(());

/// A runtime with libweft_c_hostile_rings.so and a chain of one "hostile-blocking" instance
/// (config: what its init gets, e.g. `"fail-attach-2"`).
fn rings_chain(config: &[u8]) -> (Arc<Runtime>, weft_runtime::Chain) {
    let rt = runtime();
    rt.load_library("rings", &c_plugins("plain").join("libweft_c_hostile_rings.so"))
        .unwrap();
    let id = rt
        .instantiate_with(
            InstanceSpec {
                name: "hostile-blocking".into(),
                library: "rings".into(),
                plugin: "hostile-blocking".into(),
                config_json: config.to_vec(),
                fail_open: false,
            },
            InstanceOptions {
                deadline: Duration::from_secs(5),
                ..InstanceOptions::default()
            },
        )
        .unwrap();
    let chain = rt.chain(&[id]);
    (rt, chain)
}

/// One request through the blocking instance on this thread (so through this thread's ring):
/// the id of the ring whose worker served it, or the status of the failure answer.
fn ring_call(chain: &weft_runtime::Chain, mode: &str) -> Result<(u64, Option<String>), u16> {
    let mut ex = chain.start(client(), "http").unwrap().unwrap();
    let mut req = request(mode);
    match ex.request_headers(&mut req) {
        Flow::Continue => Ok((
            req.headers["x-hostile-ring"].to_str().unwrap().parse().unwrap(),
            req.headers
                .get("x-hostile-exit-rc")
                .map(|v| v.to_str().unwrap().to_owned()),
        )),
        Flow::Respond(r) => Err(r.status().as_u16()),
    }
}

/// Calls until a worker serves one (the host attaches a new ring at most once a second); the
/// ring id. Fails after 10 s: before the fix a thread whose ring failed never got another.
fn ring_call_until_served(chain: &weft_runtime::Chain) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ring_call(chain, "plain") {
            Ok((id, _)) => return id,
            Err(status) => assert_eq!(status, 500, "no worker: failure policy"),
        }
        assert!(
            Instant::now() < deadline,
            "blocking calls from this thread still fail: no new ring was attached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_open_rings(rt: &Runtime, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.worker_rings() != want {
        assert!(
            Instant::now() < deadline,
            "{} worker rings open, want {want}: the host never saw the worker leave",
            rt.worker_rings()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_regions(want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while weft_runtime::workers::live_ring_regions() != want {
        assert!(
            Instant::now() < deadline,
            "{} ring regions mapped, want {want}",
            weft_runtime::workers::live_ring_regions()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker that leaves its ring while it is open (`worker_exit_ring`, or `worker_exit`) does not
/// disable blocking calls from that thread for good: the next call after a while gets a new ring
///.
#[test]
fn a_ring_whose_worker_left_is_replaced() {
    let _g = RINGS.lock().unwrap_or_else(|e| e.into_inner());
    let regions = weft_runtime::workers::live_ring_regions();
    let (rt, chain) = rings_chain(b"{}");
    let mut ring = ring_call(&chain, "plain").expect("served").0;
    for mode in ["ring-exit-early", "ring-exit-early-legacy"] {
        assert_eq!(
            ring_call(&chain, mode).expect(mode).0,
            ring,
            "{mode}: served, then left"
        );
        // The worker completes the call and leaves after it: a call posted in between would sit
        // in the ring until its deadline (504, as documented for jobs left in a ring whose worker
        // left). Wait until the host has seen the exit and closed the ring.
        wait_open_rings(&rt, 0);
        let next = ring_call_until_served(&chain);
        assert_ne!(next, ring, "{mode}: a new ring");
        ring = next;
    }
    assert_eq!(rt.worker_rings(), 1, "the failed rings were closed");
    drop((chain, rt));
    // The ring left with worker_exit_ring is gone; the one left with worker_exit (address only)
    // stays mapped: the host cannot tell that call from a late one for an earlier ring.
    wait_regions(regions + 1);
}

/// `attach_worker` refuses the first two rings: blocking calls fail (500) until a ring is
/// attached, at most a second apart, instead of for good.
#[test]
fn a_refused_attach_is_tried_again() {
    let _g = RINGS.lock().unwrap_or_else(|e| e.into_inner());
    let regions = weft_runtime::workers::live_ring_regions();
    let (rt, chain) = rings_chain(br#""fail-attach-2""#);
    assert_eq!(ring_call(&chain, "plain"), Err(500), "the first attach is refused");
    ring_call_until_served(&chain);
    assert_eq!(rt.worker_rings(), 1);
    wait_regions(regions + 1);
    drop((chain, rt));
    wait_regions(regions);
}

/// Exit calls that name a live ring but come from elsewhere (a late or second call for an
/// earlier ring at the same address) do not take it: `worker_exit_ring` with another id is
/// refused with StaleHandle and changes nothing; `worker_exit` (address only) closes the ring
/// but keeps it mapped until its worker, still serving, drains it and leaves; the thread gets a
/// new ring, and no region is leaked.
#[test]
fn a_stale_exit_call_does_not_take_a_live_ring() {
    let _g = RINGS.lock().unwrap_or_else(|e| e.into_inner());
    let regions = weft_runtime::workers::live_ring_regions();
    let (rt, chain) = rings_chain(b"{}");
    let ring = ring_call(&chain, "plain").expect("served").0;
    let (served_by, rc) = ring_call(&chain, "ring-stale-exit-id").expect("served");
    assert_eq!((served_by, rc.as_deref()), (ring, Some("12")), "StaleHandle");
    assert_eq!(ring_call(&chain, "plain"), Ok((ring, None)), "the same ring serves on");

    assert_eq!(ring_call(&chain, "ring-stale-exit").expect("served").0, ring);
    let next = ring_call_until_served(&chain);
    assert_ne!(next, ring, "a new ring");
    // The old ring's worker drained it and left properly: only the new ring is mapped.
    wait_regions(regions + 1);
    drop((chain, rt));
    wait_regions(regions);
}

/// An inline call that blocks (the plugin sleeps 600 ms on the calling thread) is reported by the
/// watchdog once, with the instance and phase, and counted; quick calls are not, and a runtime
/// with the watchdog off counts nothing.
#[test]
fn an_inline_call_that_blocks_is_reported_once() {
    captured_logs();
    let with = |threshold_ms: u64| {
        let rt = Runtime::new(RuntimeOptions {
            slot_count: SLOTS,
            slot_size: 8192,
            log_queue: 64,
            stall_threshold: Duration::from_millis(threshold_ms),
            ..RuntimeOptions::default()
        })
        .unwrap();
        rt.load_library("hostile", &c_plugins("plain").join("libweft_c_hostile.so"))
            .unwrap();
        let name = format!("stall-{threshold_ms}");
        let id = rt
            .instantiate(InstanceSpec {
                name: name.clone(),
                library: "hostile".into(),
                plugin: "hostile".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            })
            .unwrap();
        let chain = rt.chain(&[id]);
        (rt, chain, name)
    };
    let stalls = |rt: &Runtime| rt.stats.plugin_stalls.load(Ordering::Relaxed);
    let run = |chain: &weft_runtime::Chain, mode: &str| {
        let mut ex = chain.start(client(), "http").unwrap().unwrap();
        let mut req = request(mode);
        assert!(matches!(ex.request_headers(&mut req), Flow::Continue), "{mode}");
        assert_eq!(req.headers["x-hostile-ok"], "1", "{mode}");
        drop(ex);
        // The slot comes back after the log phase (on the log thread).
        let deadline = Instant::now() + Duration::from_secs(10);
        while chain.start(client(), "http").is_err() {
            assert!(Instant::now() < deadline, "arena slots leaked");
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    let (rt, chain, name) = with(50);
    run(&chain, "ok");
    run(&chain, "stall");
    assert_eq!(stalls(&rt), 1, "the stalled call was counted while it ran");
    let lines: Vec<String> = log_lines()
        .into_iter()
        .filter(|l| l.contains("inline plugin call still running"))
        .collect();
    let mine: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("plugin={name} ")))
        .collect();
    assert_eq!(mine.len(), 1, "one log line per stall: {lines:?}");
    assert!(
        mine[0].contains("phase=\"RequestHeaders\"") && mine[0].contains("blocking: true"),
        "{}",
        mine[0]
    );
    // Reported once, not on every tick since; quick calls are never reported.
    std::thread::sleep(weft_runtime::watchdog::tick() * 5);
    for _ in 0..50 {
        run(&chain, "ok");
    }
    assert_eq!(stalls(&rt), 1);
    run(&chain, "stall");
    assert_eq!(stalls(&rt), 2, "each stall is counted");

    let (off, chain, _) = with(0);
    run(&chain, "stall");
    std::thread::sleep(weft_runtime::watchdog::tick() * 5);
    assert_eq!(stalls(&off), 0, "not watched with a threshold of 0");
}
