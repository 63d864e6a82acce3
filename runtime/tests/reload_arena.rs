//! Runtime generations (config reloads) and arena memory, with the C test
//! plugin "async-delay" (examples/c-plugin/async_plugin.c), which answers Pending and completes
//! after `x-delay-ms`: with 10 minutes and a 50 ms deadline, each call is cancelled and stays
//! orphaned (its slots held by the plugin) for the whole test.
//!
//! - a runtime replacing another with the same layout ([`Runtime::replacing`]) leases from the
//!   same mapping, so N reloads with an orphaned call each keep one arena, and the orphans of
//!   every generation stay counted in the statistics the new runtime reports;
//! - with another layout, the old arena's pages are given back when its last runtime goes, all
//!   but the orphaned slots' (checked page by page with mincore).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_runtime::arena::PoolSpec;
use weft_runtime::{Flow, InstanceOptions, InstanceSpec, Runtime, RuntimeOptions};

use weft_test_support::c_plugins;

const SLOT: u32 = 64 * 1024;

/// The tests read process-wide arena statistics: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn opts(slots: u32) -> RuntimeOptions {
    RuntimeOptions {
        slot_count: slots,
        slot_size: SLOT,
        log_queue: 16,
        out_slot_count: 4,
        buffer_classes: Some(vec![PoolSpec {
            slot_count: 2,
            slot_size: 4 * SLOT,
        }]),
        ..RuntimeOptions::default()
    }
}

/// Loads the async C library into `rt` and leaves one call of a fresh instance orphaned.
fn orphan_one_call(rt: &Arc<Runtime>, generation: usize) {
    rt.load_library("async", &c_plugins("plain").join("libweft_c_async.so"))
        .expect("load the async C plugin");
    let id = rt
        .instantiate_with(
            InstanceSpec {
                name: format!("delay-{generation}"),
                library: "async".into(),
                plugin: "async-delay".into(),
                config_json: b"{}".to_vec(),
                fail_open: false,
            },
            InstanceOptions {
                deadline: Duration::from_millis(50),
                ..InstanceOptions::default()
            },
        )
        .unwrap();
    let chain = rt.chain(&[id]);
    let mut x = chain
        .start("127.0.0.1:40000".parse().unwrap(), "http")
        .unwrap()
        .unwrap();
    let mut req = http::Request::get("/")
        .header("host", "example.com")
        .header("x-delay-ms", "600000")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    match x.request_headers(&mut req) {
        Flow::Respond(r) => assert_eq!(r.status(), 504, "the deadline cancelled the call"),
        Flow::Continue => panic!("the call should have timed out"),
    }
}

/// Drops `rt` and waits until it is gone (its log thread holds it only weakly).
fn retire(rt: Arc<Runtime>) {
    let weak = Arc::downgrade(&rt);
    rt.shutdown();
    drop(rt);
    let end = Instant::now() + Duration::from_secs(30);
    while weak.strong_count() > 0 {
        assert!(Instant::now() < end, "runtime still referenced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn orphaned(rt: &Runtime) -> u64 {
    rt.stats.orphaned_slots.load(Ordering::Relaxed)
}

#[test]
fn reloads_with_orphaned_calls_keep_one_arena() {
    let _one = serial();
    let mut rt = Runtime::new(opts(16)).unwrap();
    orphan_one_call(&rt, 0);
    let range = rt.arena_range();
    let mapped = weft_runtime::arena::mapped_bytes();
    for generation in 1..=4 {
        let next = Runtime::replacing(&rt, opts(16)).unwrap();
        assert!(next.shares_arena_with(&rt), "same layout: same arena");
        orphan_one_call(&next, generation);
        retire(std::mem::replace(&mut rt, next));
        // One mapping however many generations left a call behind.
        assert_eq!(rt.arena_range(), range);
        assert_eq!(weft_runtime::arena::mapped_bytes(), mapped, "generation {generation}");
        // Every generation's orphan is counted where the new runtime reports, and holds its
        // request slot in the shared arena.
        assert_eq!(orphaned(&rt), generation as u64 + 1);
        assert_eq!(rt.arena_usage().0, generation as u64 + 1);
        assert_eq!(rt.stats.phase_timeouts.load(Ordering::Relaxed), generation as u64 + 1);
    }
    // A new layout maps a new arena (the old one goes with its last runtime).
    let other = Runtime::replacing(&rt, opts(32)).unwrap();
    assert!(!other.shares_arena_with(&rt));
    assert_eq!(orphaned(&other), 5, "statistics are shared across layouts too");
}

/// Which pages of `range` are resident (mincore).
fn resident_pages(range: std::ops::Range<usize>) -> usize {
    let page = 4096;
    let mut v = vec![0u8; (range.end - range.start).div_ceil(page)];
    // SAFETY: the range is mapped (an arena kept for its orphaned slots stays mapped) and `v`
    // has a byte per page.
    let rc = unsafe {
        libc::mincore(
            range.start as *mut libc::c_void,
            range.end - range.start,
            v.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|&&b| b & 1 == 1).count()
}

#[test]
fn a_new_layout_gives_back_the_old_arena_but_its_orphaned_slots() {
    let _one = serial();
    let old = Runtime::new(opts(16)).unwrap();
    orphan_one_call(&old, 100);
    let range = old.arena_range();
    let pages = (range.end - range.start) / 4096;
    assert_eq!(resident_pages(range.clone()), pages, "populated at start");
    let released = weft_runtime::arena::released_bytes();
    let new = Runtime::replacing(&old, opts(8)).unwrap();
    assert!(!new.shares_arena_with(&old));
    retire(old);
    // The orphaned call holds its request slot and its out slot: only their pages stay.
    let slot_pages = SLOT as usize / 4096;
    let left = resident_pages(range.clone());
    assert!(
        (slot_pages..=2 * slot_pages).contains(&left),
        "{left} of {pages} pages resident"
    );
    assert!(weft_runtime::arena::released_bytes() >= released + ((pages - 2 * slot_pages) * 4096) as u64);
    assert_eq!(orphaned(&new), 1, "the old generation's orphan is still counted");
}
