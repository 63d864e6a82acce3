//! Body phases through the runtime with the real Go library: streamed chunks (cut to half a
//! slot, passed without a copy), edits, skipping, buffered mode (heap out buffer for a body
//! larger than a slot) and the failure policy.
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_runtime::{BodyMode, BodySide, BufferedBody, Chain, InstanceSpec, Runtime, RuntimeOptions};

const SLOT: u32 = 16 * 1024;

fn runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let lib = weft_test_support::go_library("test");
        let rt = Runtime::new(RuntimeOptions {
            slot_count: 64,
            slot_size: SLOT,
            ..RuntimeOptions::default()
        })
        .unwrap();
        rt.load_library("examples", lib).expect("load example library");
        rt
    })
}

fn chain(plugins: &[(&str, &str, bool)]) -> Chain {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let rt = runtime();
    let ids: Vec<_> = plugins
        .iter()
        .map(|(plugin, config, fail_open)| {
            rt.instantiate(InstanceSpec {
                name: format!("{plugin}-{}", N.fetch_add(1, Ordering::Relaxed)),
                library: "examples".into(),
                plugin: (*plugin).into(),
                config_json: config.as_bytes().to_vec(),
                fail_open: *fail_open,
            })
            .unwrap_or_else(|e| panic!("instantiate {plugin}: {e}"))
        })
        .collect();
    rt.chain(&ids)
}

fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "body future did not finish");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

fn start(chain: &Chain, headers: &[(&str, &str)]) -> (weft_runtime::Exchange, http::request::Parts) {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut x = loop {
        match chain.start(client, "http") {
            Ok(x) => break x.expect("chain has phases"),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => panic!("arena stayed full"),
        }
    };
    let mut req = http::Request::post("/upload");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (mut parts, ()) = req.body(()).unwrap().into_parts();
    assert!(matches!(x.request_headers(&mut parts), weft_runtime::Flow::Continue));
    (x, parts)
}

fn run(x: &mut weft_runtime::Exchange, side: BodySide, chunks: &[Bytes]) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        block_on(x.body_chunk(side, c.clone(), i + 1 == chunks.len(), &mut out)).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn concat(pieces: &[Bytes]) -> Vec<u8> {
    pieces.concat()
}

#[test]
fn pass_through_hands_the_same_bytes_on_and_cuts_large_chunks() {
    let c = chain(&[("bench-body-pass", "{}", false)]);
    let (mut x, _) = start(&c, &[]);
    assert_eq!(x.body_mode(BodySide::Request), BodyMode::Streamed);
    assert_eq!(x.max_body_chunk(), SLOT as usize / 2);
    let chunk = Bytes::from(vec![7u8; 20_000]);
    let out = run(&mut x, BodySide::Request, &[chunk.clone(), Bytes::new()]).unwrap();
    // Cut into 8 KiB calls; every piece passed unchanged, so the same chunk goes on as one
    // frame (same memory: no copy).
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ptr(), chunk.as_ptr());
    assert_eq!(out[0].len(), chunk.len());
    // With an edit, the pieces stay separate slices; the unedited ones are the input's memory.
    let c = chain(&[(
        "redactor",
        r#"{"patterns": ["\u0007\u0007\u0001"], "request": true}"#,
        false,
    )]);
    let (mut x, _) = start(&c, &[]);
    let out = run(&mut x, BodySide::Request, &[chunk.clone(), Bytes::new()]).unwrap();
    assert_eq!(concat(&out), chunk.to_vec());
}

#[test]
fn streamed_edits_prepend_replace_append_and_drop() {
    let c = chain(&[("test-body-upper", "{}", false)]);
    let (mut x, _) = start(&c, &[]);
    let body = b"hello world, ".repeat(3000); // 39 KB: cut into five calls
    let out = run(&mut x, BodySide::Request, &[Bytes::from(body.clone())]).unwrap();
    assert_eq!(
        concat(&out),
        [b"<bof>".as_slice(), &body.to_ascii_uppercase(), b"<eof>"].concat()
    );
    // The end-of-stream call happened: a further chunk passes untouched.
    let mut more = Vec::new();
    block_on(x.body_chunk(BodySide::Request, Bytes::from_static(b"late"), true, &mut more)).unwrap();
    assert_eq!(concat(&more), b"late");

    let (mut x, _) = start(&c, &[("x-test-drop", "1")]);
    let out = run(
        &mut x,
        BodySide::Request,
        &[Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
    )
    .unwrap();
    assert_eq!(concat(&out), b"<bof><eof>");
    // An empty body still gets its end-of-stream call.
    let (mut x, _) = start(&c, &[]);
    let out = run(&mut x, BodySide::Response, &[Bytes::new()]).unwrap();
    assert_eq!(concat(&out), b"<bof><eof>");
}

#[test]
fn two_streamed_plugins_feed_each_other() {
    // Request side in chain order: upper first, then the redactor sees upper-cased text.
    let c = chain(&[
        ("test-body-upper", "{}", false),
        ("redactor", r#"{"patterns": ["SECRET"], "request": true}"#, false),
    ]);
    let (mut x, _) = start(&c, &[]);
    let out = run(
        &mut x,
        BodySide::Request,
        &[Bytes::from_static(b"a sec"), Bytes::from_static(b"ret b"), Bytes::new()],
    )
    .unwrap();
    assert_eq!(concat(&out), b"<bof>A ****** B<eof>");
}

#[test]
fn skip_body_from_the_headers_phase() {
    let c = chain(&[("redactor", r#"{"patterns": ["x"]}"#, false)]);
    let (x, _) = start(&c, &[]);
    // request: false (default) → SkipBody in the request-headers phase.
    assert_eq!(x.body_mode(BodySide::Request), BodyMode::None);
}

#[test]
fn buffered_body_larger_than_a_slot_with_head_change() {
    let c = chain(&[("test-body-buffer", "{}", false)]);
    let (mut x, mut parts) = start(&c, &[]);
    assert_eq!(x.body_mode(BodySide::Request), BodyMode::Buffered);
    let body = Bytes::from(vec![b'z'; 40_000]); // > half a slot: heap out buffer
    let BufferedBody::Body(pieces) = block_on(x.request_body_buffered(&mut parts, body.clone())) else {
        panic!("no local reply expected");
    };
    assert_eq!(concat(&pieces), [b"len=40000;".as_slice(), &body].concat());
    assert_eq!(
        pieces.last().unwrap().as_ptr(),
        body.as_ptr(),
        "the body itself is not copied"
    );
    assert_eq!(parts.headers["x-body-len"], "40000");
    // The plugin's output (twice the body would fit) went to a buffer-class slot of the arena,
    // not the heap: the prepended piece is a slice of it, held until the pieces are sent.
    let rt = runtime();
    let prefix = pieces.first().unwrap();
    assert!(
        rt.arena_range().contains(&(prefix.as_ptr() as usize)),
        "the plugin's bytes are not in the arena"
    );
    let held = |rt: &Runtime| rt.buffer_usage().iter().map(|c| c.1).sum::<u64>();
    assert!(held(rt) >= 1, "{:?}", rt.buffer_usage());
    drop(pieces);
    drop(x);

    let (mut x, mut parts) = start(&c, &[]);
    match block_on(x.request_body_buffered(&mut parts, Bytes::from_static(b"reject"))) {
        BufferedBody::Respond(r) => assert_eq!(r.status(), 400),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_panic_mid_stream_follows_the_policy() {
    for fail_open in [false, true] {
        let c = chain(&[("test-body-panic", "{}", fail_open)]);
        let (mut x, _) = start(&c, &[("x-test-panic-after", "3")]);
        let mut out = Vec::new();
        block_on(x.body_chunk(BodySide::Response, Bytes::from_static(b"ab"), false, &mut out)).unwrap();
        let r = block_on(x.body_chunk(BodySide::Response, Bytes::from_static(b"cd"), false, &mut out));
        if fail_open {
            r.unwrap();
            assert_eq!(concat(&out), b"abcd", "fail open passes the bytes unchanged");
        } else {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("handler panicked"), "{e}");
        }
    }
}
