//! Remote instances through the engine with a fake transport (no NATS): replies go through the
//! same validation and apply path as in-process batches, failures map to 503/504/500 (fail
//! closed) or continue (fail open), and every request is released or logged exactly when it ends.
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use weft_runtime::abi::{WeftMutationOp, WeftPhase, WeftResult};
use weft_runtime::mutation::encode_record;
use weft_runtime::remote::{RemoteCall, RemoteCallError, RemoteErrorKind, RemoteInstance};
use weft_runtime::{Flow, Runtime, RuntimeOptions};

type Reply = Result<Bytes, RemoteCallError>;

/// Answers every call with `reply`; records what happened to each request.
struct Fake {
    phases: u32,
    reply: Mutex<Box<dyn Fn(WeftPhase) -> Reply + Send>>,
    /// Yield once (Pending, then wake) before answering, like a real network call.
    yield_first: bool,
    calls: Mutex<Vec<(WeftPhase, u64)>>,
    logged: Mutex<Vec<u64>>,
    released: Mutex<HashMap<u64, usize>>,
    view_sizes: AtomicUsize,
}

impl Fake {
    fn new(phases: u32, reply: impl Fn(WeftPhase) -> Reply + Send + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            phases,
            reply: Mutex::new(Box::new(reply)),
            yield_first: false,
            calls: Mutex::new(Vec::new()),
            logged: Mutex::new(Vec::new()),
            released: Mutex::new(HashMap::new()),
            view_sizes: AtomicUsize::new(0),
        })
    }
}

struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        let waker = cx.waker().clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            waker.wake();
        });
        Poll::Pending
    }
}

impl RemoteInstance for Fake {
    fn phases(&self) -> u32 {
        self.phases
    }
    fn call<'a>(&'a self, phase: WeftPhase, request_id: u64, view: &'a [u8], _deadline: Duration) -> RemoteCall<'a> {
        self.calls.lock().unwrap().push((phase, request_id));
        self.view_sizes.fetch_add(view.len(), Ordering::Relaxed);
        Box::pin(async move {
            if self.yield_first {
                YieldOnce(false).await;
            }
            (self.reply.lock().unwrap())(phase)
        })
    }
    fn log(&self, request_id: u64, _view: &[u8]) {
        self.logged.lock().unwrap().push(request_id);
    }
    fn release(&self, request_id: u64) {
        *self.released.lock().unwrap().entry(request_id).or_default() += 1;
    }
}

const RH: u32 = 1 << WeftPhase::RequestHeaders as u32;
const RS: u32 = 1 << WeftPhase::ResponseHeaders as u32;
const LOG: u32 = 1 << WeftPhase::Log as u32;

fn runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeOptions {
        slot_count: 8,
        slot_size: 16 * 1024,
        log_queue: 16,
        ..weft_runtime::RuntimeOptions::default()
    })
    .unwrap()
}

fn request() -> http::request::Parts {
    http::Request::get("/x")
        .header("host", "h")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn response() -> http::response::Parts {
    http::Response::builder().status(200).body(()).unwrap().into_parts().0
}

fn set_header(name: &[u8], value: &[u8]) -> Bytes {
    let mut b = Vec::new();
    encode_record(&mut b, WeftMutationOp::SetRequestHeader as u32, 0, name, value);
    Bytes::from(b)
}

fn err(kind: RemoteErrorKind) -> Reply {
    Err(RemoteCallError::new(kind, "fake"))
}

#[test]
fn remote_batch_is_applied_and_request_released() {
    let rt = runtime();
    let fake = Fake::new(RH | RS, |p| match p {
        WeftPhase::RequestHeaders => Ok(set_header(b"x-remote", b"1")),
        _ => Ok(Bytes::new()),
    });
    let id = rt
        .instantiate_remote("fake", fake.clone(), false, Duration::from_millis(50))
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut ex = chain.start("127.0.0.1:1".parse().unwrap(), "http").unwrap().unwrap();
    let rid = ex.request_id();
    let mut req = request();
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-remote"], "1");
    assert!(matches!(ex.response_headers(&mut response()), Flow::Continue));
    assert!(
        fake.view_sizes.load(Ordering::Relaxed) > 0,
        "the view bytes were handed over"
    );
    assert!(fake.released.lock().unwrap().is_empty(), "not before the exchange ends");
    drop(ex);
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [(WeftPhase::RequestHeaders, rid), (WeftPhase::ResponseHeaders, rid)]
    );
    assert_eq!(fake.released.lock().unwrap().get(&rid), Some(&1));
    assert_eq!(rt.arena_usage().0, 0);
}

#[test]
fn a_request_that_never_reached_a_remote_phase_is_released() {
    let rt = runtime();
    let fake = Fake::new(RH, |_| Ok(Bytes::new()));
    let id = rt
        .instantiate_remote("fake", fake.clone(), false, Duration::from_millis(50))
        .unwrap();
    let ex = rt
        .chain(&[id])
        .start("127.0.0.1:1".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    let rid = ex.request_id();
    drop(ex);
    assert!(fake.calls.lock().unwrap().is_empty());
    assert_eq!(fake.released.lock().unwrap().get(&rid), Some(&1));
}

#[test]
fn log_phase_goes_to_the_remote_plugin_off_the_request_path() {
    let rt = runtime();
    let fake = Fake::new(RH | LOG, |_| Ok(Bytes::new()));
    let id = rt
        .instantiate_remote("fake", fake.clone(), false, Duration::from_millis(50))
        .unwrap();
    let mut ex = rt
        .chain(&[id])
        .start("127.0.0.1:1".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    let rid = ex.request_id();
    assert!(matches!(ex.request_headers(&mut request()), Flow::Continue));
    drop(ex);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while fake.logged.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < end, "log phase never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(*fake.logged.lock().unwrap(), [rid]);
    while rt.arena_usage().0 != 0 {
        assert!(std::time::Instant::now() < end, "slot not released");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn failures_follow_the_policy() {
    let cases: [(Reply, u16, bool); 6] = [
        (err(RemoteErrorKind::Unavailable), 503, true),
        (err(RemoteErrorKind::Overloaded), 503, true),
        (err(RemoteErrorKind::Timeout), 504, false),
        (err(RemoteErrorKind::PluginFailed(WeftResult::Panic)), 500, false),
        (err(RemoteErrorKind::BadReply), 500, false),
        // Passes the wire but not host validation: CR/LF in a header value.
        (Ok(set_header(b"x-bad", b"a\r\nb")), 500, false),
    ];
    for (reply, status, retry_after) in cases {
        let rt = runtime();
        let r = reply.clone();
        let closed = Fake::new(RH, move |_| r.clone());
        let open = Fake::new(RH, move |_| reply.clone());
        let closed_id = rt
            .instantiate_remote("closed", closed, false, Duration::from_millis(50))
            .unwrap();
        let open_id = rt
            .instantiate_remote("open", open, true, Duration::from_millis(50))
            .unwrap();

        let mut ex = rt
            .chain(&[closed_id])
            .start("127.0.0.1:1".parse().unwrap(), "http")
            .unwrap()
            .unwrap();
        let Flow::Respond(resp) = ex.request_headers(&mut request()) else {
            panic!("fail closed must answer {status}");
        };
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers().contains_key("retry-after"), retry_after, "{status}");

        let mut ex = rt
            .chain(&[open_id])
            .start("127.0.0.1:1".parse().unwrap(), "http")
            .unwrap()
            .unwrap();
        let mut req = request();
        assert!(
            matches!(ex.request_headers(&mut req), Flow::Continue),
            "fail open continues"
        );
        assert!(!req.headers.contains_key("x-bad"));
    }
}

#[test]
fn a_reply_that_arrives_later_is_awaited() {
    let rt = runtime();
    let mut fake = Fake::new(RH, |_| Ok(set_header(b"x-late", b"yes")));
    Arc::get_mut(&mut fake).unwrap().yield_first = true;
    let id = rt
        .instantiate_remote("fake", fake, false, Duration::from_millis(50))
        .unwrap();
    let mut ex = rt
        .chain(&[id])
        .start("127.0.0.1:1".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    let mut req = request();
    // The sync API parks the thread until the waker fires.
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    assert_eq!(req.headers["x-late"], "yes");
}
