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
//!   ids, rate limits, budgets, settings read `Relaxed`), for process-wide statics, which loom
//!   cannot model (its atomics are not `const`), and for the flags and locks of threads no model
//!   drives (the log thread's wake flags, the deadline timer thread), plus mutexes off the
//!   lock-free paths. Nothing on a modelled lock-free path may use them to publish data.
//!
//! This is the only file of the crate that may name `std::sync::atomic` types: `runtime/clippy.toml`
//! disallows them everywhere else, so an atomic cannot bypass the shim unnoticed.
#![allow(unused_imports, dead_code)]
#![allow(clippy::disallowed_types)]

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
    pub use super::std_atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
    pub use std::sync::Arc;
    pub use std::sync::atomic::{Ordering, fence};

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
/// settings, statics, flags of unmodelled threads and locks.
pub mod stat {
    pub use super::std_atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64};
    pub use std::sync::atomic::Ordering;
    pub use std::sync::{Mutex, MutexGuard, RwLock};
}

/// `std`'s atomics behind a transparent wrapper that dereferences to them: the same layout and,
/// inlined, the same code, but a type of this crate, so that clippy's `disallowed-types` (which
/// sees through re-exports) can forbid the `std` types everywhere but here.
mod std_atomic {
    use std::fmt;
    use std::ops::{Deref, DerefMut};

    macro_rules! wrap {
        ($($name:ident($value:ty)),* $(,)?) => {$(
            #[derive(Default)]
            #[repr(transparent)]
            pub struct $name(std::sync::atomic::$name);

            impl $name {
                #[inline(always)]
                pub const fn new(v: $value) -> Self {
                    $name(std::sync::atomic::$name::new(v))
                }
            }

            impl Deref for $name {
                type Target = std::sync::atomic::$name;
                #[inline(always)]
                fn deref(&self) -> &Self::Target {
                    &self.0
                }
            }

            impl DerefMut for $name {
                #[inline(always)]
                fn deref_mut(&mut self) -> &mut Self::Target {
                    &mut self.0
                }
            }

            impl From<$value> for $name {
                fn from(v: $value) -> Self {
                    $name::new(v)
                }
            }

            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    fmt::Debug::fmt(&self.0, f)
                }
            }
        )*};
    }

    wrap!(
        AtomicBool(bool),
        AtomicU32(u32),
        AtomicU64(u64),
        AtomicUsize(usize),
        AtomicI64(i64),
    );
}
