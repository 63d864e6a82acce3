//! Heap allocations of the host side of one request-headers phase through the real Go library
//!: after warm-up, a call whose handler changes nothing allocates nothing, and
//! neither does a call that sets the same headers to the same values every time (one header, or
//! more than the batch keeps inline).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use weft_runtime::{Flow, InstanceSpec, Runtime, RuntimeOptions};

/// Counts, per thread, the calls to the global allocator that hand out memory.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local
// without a destructor (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations on this thread per request-headers phase of `plugin`, over 1000 calls on one
/// exchange and one request head (as `benches/phase.rs` runs them), after 100 to warm up.
fn allocations_per_phase(rt: &Arc<Runtime>, plugin: &str) -> f64 {
    let id = rt
        .instantiate(InstanceSpec {
            name: plugin.into(),
            library: "examples".into(),
            plugin: plugin.into(),
            config_json: b"{}".to_vec(),
            fail_open: false,
        })
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut x = chain.start("127.0.0.1:1234".parse().unwrap(), "http").unwrap().unwrap();
    let mut parts = http::Request::get("/api/items?limit=10")
        .header("host", "example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut phase = || assert!(matches!(x.request_headers(&mut parts), Flow::Continue));
    for _ in 0..100 {
        phase();
    }
    let before = ALLOCATIONS.with(Cell::get);
    const CALLS: usize = 1000;
    for _ in 0..CALLS {
        phase();
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / CALLS as f64
}

#[test]
fn request_headers_phase_allocations() {
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    rt.load_library("examples", weft_test_support::go_library("test"))
        .unwrap();
    rt.thread_start();
    // View encoding, the call, an empty batch: nothing on the heap.
    assert_eq!(
        allocations_per_phase(&rt, "header-rewriter"),
        0.0,
        "a phase that changes nothing"
    );
    // `x-bench: 1` set, the same name and value every call: both come from the thread's header
    // cache (`header_cache.rs`), a reference-count increment each. Nothing on the heap either.
    assert_eq!(
        allocations_per_phase(&rt, "bench-header"),
        0.0,
        "a phase that sets one header"
    );
    // Two headers (`x-seen-scheme: http`, `x-seen-sni` empty): the second change goes past the
    // batch's inline one into its list, whose buffer the thread keeps between calls.
    assert_eq!(
        allocations_per_phase(&rt, "test-scheme"),
        0.0,
        "a phase that sets two headers"
    );
}
