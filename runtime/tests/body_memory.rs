//! Memory of buffered body calls, with the real Go library:
//! - a body over half the largest buffer class gets an output buffer of twice its size that is
//!   neither zeroed nor made resident up front (a counting global allocator sees no zeroed
//!   allocation; mincore sees only the pages the plugin wrote);
//! - that buffer is charged to the runtime's budget of buffered-body memory, and a call it does
//!   not fit is refused (503 for a request body, 502 for a response body) before the plugin is
//!   called; every charge is given back when the pieces are dropped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use weft_runtime::{BufferedBody, Chain, InstanceSpec, Runtime, RuntimeOptions};

/// Counts, per thread, the bytes the global allocator handed out and how many of them it was
/// asked to zero.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static ZEROED: Cell<usize> = const { Cell::new(0) };
}

fn add(c: &'static std::thread::LocalKey<Cell<usize>>, n: usize) {
    let _ = c.try_with(|c| c.set(c.get() + n));
}

// SAFETY: forwards to the system allocator; the counters are const-initialised thread locals
// without destructors (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(&ALLOCATED, layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(&ALLOCATED, layout.size());
        add(&ZEROED, layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(&ALLOCATED, new_size.saturating_sub(layout.size()));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocated, zeroed) bytes on this thread while `f` runs.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (a, z) = (ALLOCATED.with(Cell::get), ZEROED.with(Cell::get));
    let v = f();
    (v, ALLOCATED.with(Cell::get) - a, ZEROED.with(Cell::get) - z)
}

const SLOT: u32 = 16 * 1024;
const MIB: usize = 1 << 20;

/// The tests share the library; each builds its own runtime. One at a time: the Go library
/// serves them all, and the budget test reads its runtime's counters.
static SERIAL: Mutex<()> = Mutex::new(());

fn library() -> &'static std::path::Path {
    weft_test_support::go_library("test")
}

/// A runtime with the default buffer classes (4 and 16 slots: 64 and 256 KiB, so a body over
/// 128 KiB fits none and its output goes outside the arena) and a budget of `budget` bytes,
/// and a chain of one `plugin` instance.
fn setup(budget: u64, plugin: &str, config: &str) -> (Arc<Runtime>, Chain) {
    let rt = Runtime::new(RuntimeOptions {
        slot_count: 8,
        slot_size: SLOT,
        max_buffered_bytes_total: budget,
        ..RuntimeOptions::default()
    })
    .unwrap();
    rt.load_library("examples", library()).expect("load the Go library");
    let id = rt
        .instantiate(InstanceSpec {
            name: format!("{plugin}-{budget}"),
            library: "examples".into(),
            plugin: plugin.into(),
            config_json: config.as_bytes().to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    (rt, chain)
}

/// Polls `fut` on this thread until it is ready (the Go plugin answers inline).
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
    panic!("buffered call did not finish");
}

fn start(chain: &Chain) -> (weft_runtime::Exchange, http::request::Parts) {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut x = chain.start(client, "http").unwrap().expect("chain has phases");
    let mut parts = http::Request::post("/upload")
        .header("host", "example.com")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(matches!(x.request_headers(&mut parts), weft_runtime::Flow::Continue));
    (x, parts)
}

/// Resident pages of the `len` bytes from the page that holds `at` (mincore; fails unless all of
/// them are mapped).
fn resident_pages(at: usize, len: usize) -> usize {
    let start = at & !4095;
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables; `v` has one byte per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, pages * 4096, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|&&b| b & 1 == 1).count()
}

#[test]
fn a_body_over_half_the_largest_buffer_class_is_not_zeroed_twice() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (rt, chain) = setup(64 * MIB as u64, "test-body-buffer", "{}");
    let largest = rt.buffer_usage().iter().map(|c| c.0).max().unwrap();
    let body = Bytes::from(vec![b'z'; 3 * MIB / 2]);
    assert!(
        body.len() > largest / 2,
        "over half the largest buffer class ({largest})"
    );
    let (mut x, mut parts) = start(&chain);
    let (outcome, allocated, zeroed) = counted(|| run(x.request_body_buffered(&mut parts, body.clone())));
    let BufferedBody::Body(pieces) = outcome else {
        panic!("no local reply expected")
    };
    // The plugin replaced the body with "len=N;" and the body: the body itself is not copied.
    assert_eq!(&pieces[0][..], b"len=1572864;");
    assert_eq!(pieces.last().unwrap().as_ptr(), body.as_ptr());
    // Room for twice the body was made without the allocator zeroing (or even handing out) it.
    assert!(
        zeroed < body.len() / 4,
        "zeroed {zeroed} bytes for a {} byte body",
        body.len()
    );
    assert!(allocated < body.len() / 4, "allocated {allocated} bytes");
    // It is charged to the budget while the pieces live, and resident only where written.
    let want = 2 * body.len() + 4096;
    assert_eq!(rt.buffered_budget().used(), want as u64);
    // The plugin's records sit at the start of the buffer (which starts on a page).
    let resident = resident_pages(pieces[0].as_ptr() as usize, want);
    assert!(resident <= 2, "{resident} of {} pages resident", want / 4096);
    drop((pieces, x));
    assert_eq!(rt.buffered_budget().used(), 0, "the charge goes with the buffer");
}

#[test]
fn buffered_calls_over_the_budget_are_refused() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 1.5 MiB bodies need 3 MiB + 4 KiB of output room: not within 2 MiB.
    let body = Bytes::from(vec![b'z'; 3 * MIB / 2]);
    let (rt, chain) = setup(2 * MIB as u64, "test-body-buffer", "{}");
    let (mut x, mut parts) = start(&chain);
    match run(x.request_body_buffered(&mut parts, body.clone())) {
        BufferedBody::Respond(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()["retry-after"], "1");
        }
        other => panic!("{other:?}"),
    }
    assert!(parts.headers.get("x-body-len").is_none(), "the plugin was not called");
    let budget = rt.buffered_budget();
    assert_eq!((budget.used(), budget.refusals()), (0, 1));
    assert_eq!(rt.stats.plugin_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(x);

    // The response side answers 502.
    let (rt, chain) = setup(2 * MIB as u64, "json-rewriter", r#"{"set": {"a": 1}}"#);
    let (mut x, _) = start(&chain);
    let mut resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    match run(x.response_body_buffered(&mut resp, body.clone())) {
        BufferedBody::Respond(r) => assert_eq!(r.status(), 502),
        other => panic!("{other:?}"),
    }
    assert_eq!(rt.buffered_budget().refusals(), 1);

    // Within the budget the same body goes through.
    let (rt, chain) = setup(4 * MIB as u64, "test-body-buffer", "{}");
    let (mut x, mut parts) = start(&chain);
    let BufferedBody::Body(pieces) = run(x.request_body_buffered(&mut parts, body)) else {
        panic!("expected the body")
    };
    assert_eq!(&pieces[0][..], b"len=1572864;");
    drop((pieces, x));
    assert_eq!((rt.buffered_budget().used(), rt.buffered_budget().refusals()), (0, 0));
}
