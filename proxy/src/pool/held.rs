//! Upstream requests held to the end of the serving thread's scheduler pass.
//!
//! Under load, several requests become ready in one pass of a serving thread's scheduler.
//! Written at once, each would reach the upstream on its own and wake it once per request;
//! written after the pass, back to back, they reach it together (docs/performance-log.md:
//! written at once, more context switches and more CPU per request under load). An exchange
//! that is not alone on its thread ([`super::UnderWay`]) hands its connection here at its first
//! poll ([`hold`]). The thread's flusher task, woken then and so queued behind the tasks of the
//! pass, writes each held request with the exchange's waker, which registers the exchange's
//! task for the response: that task is not polled again until the response (or a failure) is
//! in. Before, the exchange woke its own task instead, and the extra poll went through the whole
//! client connection (hyper's dispatcher, the request's future): ~1,400 instructions a request.
//!
//! Only on a current-thread runtime (a serving thread's), whose tasks are all polled by the
//! thread that holds the list; elsewhere [`hold`] hands the connection back and the exchange
//! yields as before. An exchange polled again before the flusher ran takes its connection back
//! and writes it itself; one dropped while its connection is held drops the connection, which
//! is then never written.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use slab::Slab;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::Conn;
use crate::h1::ClientError;
use crate::h1::head::{Ask, Head};

/// How a held exchange's poll ended in the flusher: its response head or its failure.
pub(super) type Outcome = Result<Box<Head>, ClientError>;

struct Entry {
    /// Out of the list only while the flusher writes it.
    conn: Option<Box<Conn>>,
    /// The exchange's task, until the flusher takes it for its poll (a no-op waker after).
    waker: Waker,
    ask: Ask,
    /// The flusher's poll ended (rare: the connection failed, or the response was in at once).
    outcome: Option<Outcome>,
}

#[derive(Default)]
struct List {
    entries: Slab<Entry>,
    /// The entries the flusher has not written yet, in the order they came.
    queued: Vec<usize>,
    /// The flusher task's waker, once it has been polled.
    flusher: Option<Waker>,
    /// Whether the flusher task lives: a runtime dropped drops it, and the next runtime on
    /// this thread (a test's) gets a new one.
    alive: Weak<()>,
}

thread_local! {
    static LIST: RefCell<List> = RefCell::new(List::default());
}

/// A connection in this thread's list; [`Held::reclaim`] takes it back, dropping it drops the
/// connection unwritten (if the flusher has not run).
pub(super) struct Held {
    key: usize,
}

/// Puts `conn` in this thread's list for the flusher, which writes its request and polls it
/// with `waker` after the tasks already queued have run; hands it back on a thread that does
/// not hold requests (not a current-thread runtime's).
pub(super) fn hold(conn: Box<Conn>, waker: &Waker, ask: Ask) -> Result<Held, Box<Conn>> {
    let current_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if !current_thread {
        return Err(conn);
    }
    let mut conn = Some(conn);
    let held = LIST.try_with(|list| {
        let mut list = list.try_borrow_mut().ok()?;
        if list.alive.strong_count() == 0 {
            let alive = Arc::new(());
            list.alive = Arc::downgrade(&alive);
            list.flusher = None;
            // Polled first after the tasks already queued, as a wake would.
            drop(tokio::spawn(flush(alive)));
        }
        let key = list.entries.insert(Entry {
            conn: conn.take(),
            waker: waker.clone(),
            ask,
            outcome: None,
        });
        let first = list.queued.is_empty();
        list.queued.push(key);
        Some((Held { key }, first.then(|| list.flusher.clone()).flatten()))
    });
    match held {
        Ok(Some((held, flusher))) => {
            if let Some(flusher) = flusher {
                flusher.wake();
            }
            Ok(held)
        }
        // The list is gone (the thread is ending) or in use (not from a poll of the flusher's):
        // the exchange writes its request itself.
        _ => Err(conn.expect("the connection is in the list only when it was held")),
    }
}

impl Held {
    /// Takes the connection back out of the list, with the outcome of the flusher's poll if
    /// that ended. A held connection is taken back on the thread that held it: its exchange's
    /// task is polled by that thread alone ([`hold`] holds only on a current-thread runtime).
    pub(super) fn reclaim(self) -> (Box<Conn>, Option<Outcome>) {
        let key = self.key;
        std::mem::forget(self);
        let entry = LIST.with(|list| {
            let mut list = list.borrow_mut();
            list.queued.retain(|&k| k != key);
            list.entries.try_remove(key)
        });
        let entry = entry.expect("a held connection stays in its thread's list until its exchange takes it");
        let conn = entry
            .conn
            .expect("the flusher puts a connection back before it returns");
        (conn, entry.outcome)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let key = self.key;
        // The entry, and its connection, dropped outside the list's borrow.
        let _entry = LIST.try_with(|list| {
            let mut list = list.try_borrow_mut().ok()?;
            list.queued.retain(|&k| k != key);
            list.entries.try_remove(key)
        });
    }
}

/// The thread's flusher task: each time it is woken, writes the requests held since.
async fn flush(_alive: Arc<()>) {
    poll_fn(|cx| {
        let queued = LIST.with(|list| {
            let mut list = list.borrow_mut();
            if !list.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                list.flusher = Some(cx.waker().clone());
            }
            std::mem::take(&mut list.queued)
        });
        for &key in &queued {
            write(key);
        }
        // The list's buffer back, emptied, unless new entries came meanwhile.
        LIST.with(|list| {
            let mut list = list.borrow_mut();
            if list.queued.is_empty() {
                let mut queued = queued;
                queued.clear();
                list.queued = queued;
            }
        });
        Poll::<()>::Pending
    })
    .await
}

/// Writes one held request (and reads what is in): the connection is out of the list while
/// it is polled, so what the poll wakes finds the list free.
fn write(key: usize) {
    let taken = LIST.with(|list| {
        let mut list = list.borrow_mut();
        let entry = list.entries.get_mut(key)?;
        let conn = entry.conn.take()?;
        Some((
            conn,
            std::mem::replace(&mut entry.waker, Waker::noop().clone()),
            entry.ask,
        ))
    });
    let Some((mut conn, waker, ask)) = taken else {
        return;
    };
    let poll = conn.poll_head(&mut Context::from_waker(&waker), ask);
    let ended = poll.is_ready();
    // The entry is still there: only its exchange removes it, from its own poll or drop, and
    // that task is not running now. Were it gone, the connection would be dropped here.
    LIST.with(|list| {
        let mut list = list.borrow_mut();
        if let Some(entry) = list.entries.get_mut(key) {
            entry.conn = Some(conn);
            if let Poll::Ready(outcome) = poll {
                entry.outcome = Some(outcome);
            }
        }
    });
    // Pending: the poll registered the exchange's task for the response (or for room to write).
    if ended {
        waker.wake();
    }
}

/// Connections held on this thread (tests).
#[cfg(test)]
pub(super) fn held_on_this_thread() -> usize {
    LIST.with(|list| list.borrow().entries.len())
}
