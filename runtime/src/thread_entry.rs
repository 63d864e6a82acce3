//! A host thread's work run inside the plugin libraries' runtimes (the descriptor's
//! `run_on_thread`), so that the phase calls it makes are nested calls.
//!
//! A Go library entered from a thread that runs no Go takes, on every call, a receive from the
//! Go runtime's `main_init_done` channel and with it that channel's lock: one lock for the whole
//! process, so two serving threads calling at once take turns on it (`scripts/cgo-entry`: 62 ns
//! a call from one thread, 107 ns each from two at once). A thread whose work runs inside a Go
//! call that called back into C is inside the runtime already and skips it (51 and 53 ns).
//! [`ThreadEntries::run`] runs a closure that way, inside every loaded library that offers
//! `run_on_thread`, one inside the other.
//!
//! The plugin is handed [`enter`] and a token, never a pointer: `enter` looks the token up in
//! this thread's active entry, so a call from another thread, a second call or one after
//! `run_on_thread` returned finds nothing and returns without running anything (the ABI's
//! rule), and the closure then runs after `run_on_thread` returns, not nested. A panic of the
//! closure is caught before it could unwind through the plugin's frames and resumed in the
//! caller once every library returned.

use crate::sync::stat::{AtomicU64, Ordering};
use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::abi::WeftThreadBodyFn;

/// A library's `run_on_thread`.
pub(crate) type RunFn = unsafe extern "C" fn(body: WeftThreadBodyFn, arg: *mut c_void);

/// The `run_on_thread` functions of the libraries loaded when they were taken
/// ([`crate::Runtime::thread_entries`]). Plain function pointers: libraries are never unloaded,
/// so holding them keeps no runtime alive. Empty: [`run`](Self::run) calls the closure directly.
#[derive(Clone, Default)]
pub struct ThreadEntries(pub(crate) Vec<RunFn>);

impl std::fmt::Debug for ThreadEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadEntries")
            .field("libraries", &self.0.len())
            .finish()
    }
}

/// Libraries a thread enters ([`ThreadEntries::of_process`]): those the process loaded after the
/// ones the thread is in already, how many it has loaded in all (where to start next time), and
/// a receiver that changes when it loads another. A thread that sees it change enters the new
/// ones inside those it is in: each library's `run_on_thread` is called once per thread.
pub struct ProcessEntries {
    pub entries: ThreadEntries,
    pub loaded: usize,
    pub changed: tokio::sync::watch::Receiver<usize>,
}

impl ThreadEntries {
    /// The libraries this process has loaded (by any runtime, a reload's included) from the
    /// `from`-th on (0: all; else a previous call's [`ProcessEntries::loaded`]): each one's
    /// `thread_start` is called on this thread, and its `run_on_thread` taken.
    pub fn of_process(from: usize) -> ProcessEntries {
        let (libs, loaded, changed) = crate::plugin::loaded_libraries(from);
        for lib in &libs {
            if let Some(f) = lib.thread_start {
                // SAFETY: takes no arguments; the plugin promises it is callable from any thread.
                unsafe { f() };
            }
        }
        let entries = ThreadEntries(libs.iter().filter_map(|lib| lib.run_on_thread).collect());
        ProcessEntries {
            entries,
            loaded,
            changed,
        }
    }

    /// Runs `f` once on this thread, inside every library's `run_on_thread` (each inside the
    /// one before), and returns its result; a panic of `f` resumes here.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut f = Some(f);
        let mut out = None;
        let mut once = || {
            if let Some(f) = f.take() {
                out = Some(catch_unwind(AssertUnwindSafe(f)));
            }
        };
        nest(&self.0, &mut once);
        match out.expect("the closure runs once, inside the libraries or after them") {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }
}

/// One library's level of the nesting, as [`enter`] finds it.
struct Level<'a> {
    token: usize,
    rest: &'a [RunFn],
    body: &'a mut dyn FnMut(),
    entered: bool,
}

thread_local! {
    /// The level whose `run_on_thread` this thread is in (innermost), if any.
    static ACTIVE: Cell<*mut Level<'static>> = const { Cell::new(std::ptr::null_mut()) };
}

/// Tokens handed to plugins: unique per level, never 0.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Runs `body` inside the first library of `runs`, the rest inside that, and so on; directly
/// when `runs` is empty, and after a library's `run_on_thread` when it did not call `enter`.
fn nest(runs: &[RunFn], body: &mut dyn FnMut()) {
    let Some((run, rest)) = runs.split_first() else {
        return body();
    };
    // A token fits a pointer: at most one per level entered, never near 2^32 in practice, and
    // `as usize` keeps its low bits, which are what `enter` compares.
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) as usize;
    let mut level = Level {
        token,
        rest,
        body,
        entered: false,
    };
    // SAFETY: only the lifetime is erased; `ACTIVE` points at `level` only until the call below
    // returns (restored right after), and `enter` reaches it only through `ACTIVE`.
    let this = (&raw mut level).cast::<Level<'static>>();
    let outer = ACTIVE.with(|a| a.replace(this));
    // SAFETY: the library's function, with the ABI's arguments: `enter` and an integer token.
    unsafe { run(Some(enter), token as *mut c_void) };
    ACTIVE.with(|a| a.set(outer));
    if !level.entered {
        nest(level.rest, level.body);
    }
}

/// The `body` a library's `run_on_thread` calls: runs the level its token names when that level
/// is this thread's innermost and has not run yet; otherwise returns at once.
unsafe extern "C" fn enter(arg: *mut c_void) {
    let level = ACTIVE.with(Cell::get);
    // SAFETY: a non-null `ACTIVE` points at the `Level` of a `nest` frame of this thread that
    // is still inside its library's `run_on_thread` (the pointer is cleared before it returns).
    let Some(level) = (unsafe { level.as_mut() }) else {
        return;
    };
    if level.token != arg as usize || level.entered {
        return;
    }
    level.entered = true;
    nest(level.rest, level.body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// What the fake libraries saw, in order.
        static TRACE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
        /// (body, arg) a misbehaving fake kept for later.
        static KEPT: Cell<Option<(unsafe extern "C" fn(*mut c_void), usize)>> = const { Cell::new(None) };
    }

    fn trace(what: &'static str) {
        TRACE.with(|t| t.borrow_mut().push(what));
    }

    fn take_trace() -> Vec<&'static str> {
        TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()))
    }

    unsafe extern "C" fn calls_once(body: WeftThreadBodyFn, arg: *mut c_void) {
        trace("a in");
        unsafe { body.unwrap()(arg) };
        trace("a out");
    }

    unsafe extern "C" fn calls_once_b(body: WeftThreadBodyFn, arg: *mut c_void) {
        trace("b in");
        unsafe { body.unwrap()(arg) };
        trace("b out");
    }

    unsafe extern "C" fn never_calls(_: WeftThreadBodyFn, _: *mut c_void) {
        trace("never");
    }

    unsafe extern "C" fn calls_twice(body: WeftThreadBodyFn, arg: *mut c_void) {
        unsafe { body.unwrap()(arg) };
        unsafe { body.unwrap()(arg) };
        trace("twice out");
    }

    unsafe extern "C" fn wrong_token(body: WeftThreadBodyFn, arg: *mut c_void) {
        unsafe { body.unwrap()((arg as usize + 1000) as *mut c_void) };
    }

    unsafe extern "C" fn from_another_thread(body: WeftThreadBodyFn, arg: *mut c_void) {
        let (body, arg) = (body.unwrap(), arg as usize);
        std::thread::spawn(move || unsafe { body(arg as *mut c_void) })
            .join()
            .unwrap();
        trace("other thread done");
    }

    unsafe extern "C" fn keeps_it(body: WeftThreadBodyFn, arg: *mut c_void) {
        KEPT.with(|k| k.set(Some((body.unwrap(), arg as usize))));
    }

    #[test]
    fn runs_inside_each_library_in_order() {
        let entries = ThreadEntries(vec![calls_once, calls_once_b]);
        let r = entries.run(|| {
            trace("work");
            7
        });
        assert_eq!(r, 7);
        assert_eq!(take_trace(), ["a in", "b in", "work", "b out", "a out"]);
        assert_eq!(ThreadEntries::default().run(|| 8), 8, "no library: called directly");
    }

    #[test]
    fn a_library_that_does_not_call_back_gets_the_work_run_after_it() {
        let entries = ThreadEntries(vec![calls_once, never_calls, calls_once_b]);
        entries.run(|| trace("work"));
        // Inside the first library, not the second, inside the third.
        assert_eq!(take_trace(), ["a in", "never", "b in", "work", "b out", "a out"]);
    }

    #[test]
    fn the_work_runs_once_whatever_the_library_does() {
        for (run, want) in [
            (calls_twice as RunFn, vec!["work", "twice out"]),
            (wrong_token, vec!["work"]),
            (from_another_thread, vec!["other thread done", "work"]),
        ] {
            let n = Cell::new(0);
            ThreadEntries(vec![run]).run(|| {
                n.set(n.get() + 1);
                trace("work");
            });
            assert_eq!(n.get(), 1);
            assert_eq!(take_trace(), want);
        }
    }

    #[test]
    fn a_body_kept_for_later_runs_nothing() {
        ThreadEntries(vec![keeps_it]).run(|| trace("work"));
        assert_eq!(take_trace(), ["work"]);
        let (body, arg) = KEPT.with(Cell::take).expect("kept");
        // After run_on_thread returned: nothing is active, the call is refused.
        unsafe { body(arg as *mut c_void) };
        assert_eq!(take_trace(), Vec::<&str>::new());
        // Inside another entry of this thread: a stale token is refused too.
        ThreadEntries(vec![calls_once]).run(|| {
            unsafe { body(arg as *mut c_void) };
            trace("work");
        });
        assert_eq!(take_trace(), ["a in", "work", "a out"]);
    }

    #[test]
    fn a_panic_returns_through_the_libraries_then_resumes() {
        let entries = ThreadEntries(vec![calls_once]);
        let caught = catch_unwind(AssertUnwindSafe(|| entries.run(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_eq!(take_trace(), ["a in", "a out"], "the library returned normally");
        assert!(ACTIVE.with(Cell::get).is_null());
    }
}
