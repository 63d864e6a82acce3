//! Timers looked at only when they may have fired. A connection's task is woken several times per
//! request (the client's socket, the upstream's, a write that had to wait), and a `select!` or
//! `tokio::time::timeout` polls every timer on each wake-up: ~120 instructions per poll of a
//! registered `Sleep` that cannot be ready (`scripts/callgrind-proxy`). Once a sleep is
//! registered with the task's waker, the timer driver wakes the task when it fires and marks it
//! elapsed first, so until [`Sleep::is_elapsed`] says so, polling it again can only return
//! `Pending`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Whether a sleep has been registered with the current waker.
#[derive(Default)]
pub struct Armed(Option<Waker>);

impl Armed {
    /// Polls `sleep` unless it is registered with this task's waker and has not fired. After
    /// `Sleep::reset`, start again with a new `Armed`.
    pub fn poll(&mut self, sleep: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
        let fired = sleep.is_elapsed();
        self.poll_when(sleep, fired, cx)
    }

    /// Polls `fut` unless it is registered with this task's waker (it was polled with it and
    /// returned `Pending`) and `may_be_ready` is false: for a future that wakes the task when it
    /// becomes ready and whose readiness can be seen without polling it.
    pub fn poll_when<F: Future>(
        &mut self,
        fut: Pin<&mut F>,
        may_be_ready: bool,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        if !may_be_ready
            && let Some(w) = &self.0
            && w.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        // With its coop budget spent, the task's `Sleep::poll` (or a channel's) returns `Pending`
        // without registering (and has the task polled again): then it is not armed yet.
        self.0 = tokio::task::coop::has_budget_remaining().then(|| cx.waker().clone());
        fut.poll(cx)
    }
}

/// A timer the requests of one connection reuse, one after another: taken for a wait and put
/// back after it. A new tokio timer per request is registered in the timer wheel at its first
/// wait and removed again when dropped: ~400 instructions a proxied request
/// (`scripts/callgrind-proxy`). A kept timer stays registered at the deadline it has; a wait
/// whose deadline is later keeps it so, and moves it to its own deadline only if it fires
/// first (as `conn::Deadline` does for body waits), so a connection's timer is registered again
/// about once per timeout, not once per request. A wait that finds the timer taken (an HTTP/2
/// connection's concurrent streams) uses a timer of its own; a wait dropped before it ends
/// drops the timer with it, and the next one makes another.
#[derive(Default)]
pub struct Reused(Mutex<Option<Pin<Box<Sleep>>>>);

impl Reused {
    /// `fut`'s output, or `None` once `after` has passed first: `tokio::time::timeout` with the
    /// connection's timer, looked at only when it may have fired ([`Armed`]). (A future of its
    /// own, not an `async fn`: those nested in the request's future cost it more moves of their
    /// state than the timer saved.)
    pub fn within<'a, F: Future>(&'a self, fut: Pin<&'a mut F>, after: Duration) -> Within<'a, F> {
        let due = Instant::now() + after;
        let kept = self.0.try_lock().ok().and_then(|mut t| t.take());
        let sleep = match kept {
            // A sooner deadline fires early and is moved on then; a later one (another
            // upstream's longer timeout) would fire late.
            Some(mut sleep) => {
                if sleep.deadline() > due {
                    sleep.as_mut().reset(due);
                }
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(due)),
        };
        Within {
            reused: self,
            fut,
            sleep: Some(sleep),
            due,
            armed: Armed::default(),
        }
    }
}

/// The future of [`Reused::within`]: puts the timer back when it ends.
pub struct Within<'a, F> {
    reused: &'a Reused,
    fut: Pin<&'a mut F>,
    sleep: Option<Pin<Box<Sleep>>>,
    due: Instant,
    armed: Armed,
}

impl<F> Within<'_, F> {
    /// Gives the timer back to the connection (unless another wait holds its cell just now).
    fn put_back(&mut self) {
        if let (Some(sleep), Ok(mut kept)) = (self.sleep.take(), self.reused.0.try_lock()) {
            *kept = Some(sleep);
        }
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Nothing here is pinned structurally: `fut` is a pinned reference, `sleep` a box.
        let this = self.get_mut();
        if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
            this.put_back();
            return Poll::Ready(Some(out));
        }
        let Some(sleep) = this.sleep.as_mut() else {
            return Poll::Ready(None); // polled after it ended
        };
        while this.armed.poll(sleep.as_mut(), cx).is_ready() {
            if sleep.deadline() >= this.due {
                this.put_back();
                return Poll::Ready(None);
            }
            // An earlier wait's deadline: move on to this one's.
            sleep.as_mut().reset(this.due);
            this.armed = Armed::default();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    #[tokio::test]
    async fn the_timer_fires_though_it_is_looked_at_once() {
        // A future woken often (each yield) that never ends: the sleep still ends the wait.
        let forever = pin!(async {
            loop {
                tokio::task::yield_now().await;
            }
        });
        let t = std::time::Instant::now();
        assert!(
            Reused::default()
                .within(forever, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn the_future_wins_when_it_is_first() {
        let fut = pin!(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        });
        assert_eq!(Reused::default().within(fut, Duration::from_millis(50)).await, Some(7));
    }

    /// One connection's requests: each fast one puts the timer back as it was, still
    /// registered at the first deadline; a slow one past that deadline is not timed out by it,
    /// and a stalled one times out at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_keeps_its_deadline_and_times_each_wait_by_its_own() {
        let reused = Reused::default();
        let started = Instant::now();
        let fast = pin!(async { 1 });
        assert_eq!(reused.within(fast, Duration::from_secs(10)).await, Some(1));
        let first = reused.0.lock().unwrap().as_ref().unwrap().deadline();
        assert_eq!(first, started + Duration::from_secs(10));
        // 6 s later, a request that takes 8 s: past the kept deadline (10 s), within its own (16 s).
        tokio::time::advance(Duration::from_secs(6)).await;
        let slow = pin!(async {
            tokio::time::sleep(Duration::from_secs(8)).await;
            2
        });
        assert_eq!(reused.within(slow, Duration::from_secs(10)).await, Some(2));
        // Moved on once, when the first deadline fired: now at the slow request's deadline.
        let moved = reused.0.lock().unwrap().as_ref().unwrap().deadline();
        assert_eq!(moved, started + Duration::from_secs(16));
        // At 14 s a request that never ends: timed out at 24 s, its own deadline, not at 16.
        let at = Instant::now();
        assert_eq!(at, started + Duration::from_secs(14));
        let stalled = pin!(std::future::pending::<()>());
        assert_eq!(reused.within(stalled, Duration::from_secs(10)).await, None);
        assert_eq!(Instant::now(), at + Duration::from_secs(10));
    }

    /// A kept deadline later than a wait's own (the timer last timed another upstream's longer
    /// timeout): the timer is moved back to the wait's deadline.
    #[tokio::test(start_paused = true)]
    async fn a_kept_deadline_later_than_the_waits_own_is_moved_back() {
        let reused = Reused::default();
        assert_eq!(reused.within(pin!(async { 1 }), Duration::from_secs(60)).await, Some(1));
        let at = Instant::now();
        let stalled = pin!(std::future::pending::<()>());
        assert_eq!(reused.within(stalled, Duration::from_millis(5)).await, None);
        assert_eq!(Instant::now(), at + Duration::from_millis(5));
    }

    /// Two waits at once on one connection (HTTP/2 streams): the first takes the kept timer, the
    /// second finds none and times itself; each ends at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn concurrent_waits_each_end_at_their_own_deadline() {
        let reused = Reused::default();
        assert_eq!(reused.within(pin!(async { 0 }), Duration::from_secs(10)).await, Some(0));
        let at = Instant::now();
        let timed = |after| {
            let reused = &reused;
            async move {
                let out = reused.within(pin!(std::future::pending::<()>()), after).await;
                (out, Instant::now() - at)
            }
        };
        let (a, b) = tokio::join!(timed(Duration::from_secs(3)), timed(Duration::from_secs(1)));
        assert_eq!(a, (None, Duration::from_secs(3)));
        assert_eq!(b, (None, Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn a_spent_budget_does_not_lose_the_timer() {
        // Spend the task's coop budget before the first poll of the sleep: it does not register
        // then, and must be polled again.
        let fut = pin!(async {
            loop {
                for _ in 0..1000 {
                    // Each ready channel receive consumes budget.
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
                    tx.try_send(()).unwrap();
                    let _ = rx.recv().await;
                }
                tokio::task::yield_now().await;
            }
        });
        let reused = Reused::default();
        let bounded = tokio::time::timeout(Duration::from_secs(5), reused.within(fut, Duration::from_millis(20)));
        assert!(bounded.await.expect("the timer fired").is_none());
    }
}
