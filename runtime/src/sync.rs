//! The one place the runtime gets its synchronisation primitives from, so that loom can check the
//! shipped code: built with `RUSTFLAGS="--cfg weft_loom"`, the lock-free hand-off paths (arena
//! free list, per-slot completion state machine) use loom's model-checked atomics and cells;
//! otherwise they are `std`'s. Same idea as tokio's `src/loom/`.
//!
//! Two kinds of items:
//! - the top level (`Arc`, `AtomicU32`, `AtomicU64`, `UnsafeCell`, `fence`, ...): primitives that
//!   carry happens-before between threads on the request path, and the task waker of the completion
//!   path (`atomic-waker`'s `AtomicWaker`). Under loom they are loom's.
//! - [`stat`]: plain `std` atomics for counters that carry no synchronisation (statistics, request
//!   ids) and for process-wide statics, which loom cannot model (its atomics are not `const`), plus
//!   the start-up-only mutexes. Nothing on a lock-free path may use them to publish data.
#![allow(unused_imports, dead_code)]

#[cfg(weft_loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
    pub use loom::thread::yield_now as spin_hint;

    /// Parking of a ring consumer (the futex stand-in under loom).
    pub mod thread {
        pub use loom::thread::{Thread, current, park};
    }

    /// loom's waker slot behind `atomic-waker`'s API (`register` takes `&Waker`).
    #[derive(Debug)]
    pub struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub fn new() -> Self {
            AtomicWaker(loom::future::AtomicWaker::new())
        }
        pub fn register(&self, waker: &std::task::Waker) {
            self.0.register_by_ref(waker)
        }
        pub fn wake(&self) {
            self.0.wake()
        }
    }

    /// loom's cell: every access is checked for data races.
    #[derive(Debug)]
    pub struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub fn new(v: T) -> Self {
            UnsafeCell(loom::cell::UnsafeCell::new(v))
        }
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            self.0.with(f)
        }
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            self.0.with_mut(f)
        }
    }
}

#[cfg(not(weft_loom))]
mod imp {
    pub use atomic_waker::AtomicWaker;
    pub use std::hint::spin_loop as spin_hint;

    /// Parking of a ring consumer where there is no futex.
    pub mod thread {
        pub use std::thread::{Thread, current, park};
    }
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

    /// `std`'s cell behind loom's closure-based API, so code compiles unchanged under both.
    /// Transparent, so a cell can sit in memory laid out for another language (ring descriptors).
    #[derive(Debug)]
    #[repr(transparent)]
    pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub const fn new(v: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(v))
        }
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

pub use imp::*;

/// `std` primitives that loom does not model (see the module docs): statistics counters, ids,
/// statics and start-up-only locks.
pub mod stat {
    pub use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    pub use std::sync::{Mutex, MutexGuard, RwLock};
}
