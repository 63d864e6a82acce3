//! Timers looked at only when they may have fired. A connection's task is woken several times per
//! request (the client's socket, the upstream's, a write that had to wait), and a `select!` or
//! `tokio::time::timeout` polls every timer on each wake-up: ~120 instructions per poll of a
//! registered `Sleep` that cannot be ready (`scripts/callgrind-proxy`). Once a sleep is
//! registered with the task's waker, the timer driver wakes the task when it fires and marks it
//! elapsed first, so until [`Sleep::is_elapsed`] says so, polling it again can only return
//! `Pending`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::Sleep;

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

/// `fut`'s output, or `None` once `sleep` fires first: `tokio::time::timeout` that looks at its
/// timer only when it may have fired ([`Armed`]).
pub async fn within<F: Future>(fut: Pin<&mut F>, sleep: Pin<&mut Sleep>) -> Option<F::Output> {
    let (mut fut, mut sleep, mut armed) = (fut, sleep, Armed::default());
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        armed.poll(sleep.as_mut(), cx).map(|()| None)
    })
    .await
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
        let sleep = pin!(tokio::time::sleep(Duration::from_millis(50)));
        let t = std::time::Instant::now();
        assert!(within(forever, sleep).await.is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn the_future_wins_when_it_is_first() {
        let fut = pin!(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        });
        let sleep = pin!(tokio::time::sleep(Duration::from_millis(50)));
        assert_eq!(within(fut, sleep).await, Some(7));
    }

    #[tokio::test]
    async fn a_spent_budget_does_not_lose_the_timer() {
        // Spend the task's coop budget before the first poll of the sleep: it does not register
        // then, and must be polled again.
        let sleep = pin!(tokio::time::sleep(Duration::from_millis(20)));
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
        let bounded = tokio::time::timeout(Duration::from_secs(5), within(fut, sleep));
        assert!(bounded.await.expect("the timer fired").is_none());
    }
}
