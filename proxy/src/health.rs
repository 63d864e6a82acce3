//! Per-address health of an upstream, shared by every serving thread through atomics.
//!
//! Passive ejection (`upstreams[].ejection`): each exchange reports its outcome
//! ([`AddressHealth::record`]); after `consecutive_failures` failures in a row the address is
//! ejected for `duration_ms`, during which [`AddressHealth::available`] is false and the
//! balancer skips it. When the back-off has passed the address gets traffic again on trial:
//! its first failure ejects it again, its first success makes it healthy.
//!
//! Active checks (`upstreams[].health_check`) run on the control runtime, one task per address:
//! `unhealthy_threshold` failed checks in a row take the address out, `healthy_threshold`
//! passed ones bring it back. An address is in rotation while neither mechanism keeps it out.
//!
//! The request path reads one relaxed atomic while an address is healthy; the clock is only
//! read while it is ejected. Transitions (ejected, back on trial) are taken by one thread with a
//! compare-exchange, so each is logged and counted once, not once per request or thread.

use crate::tls::client::UpstreamTls;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use http::uri::Authority;

use crate::config::{EjectionConfig, HealthCheckConfig};
use crate::metrics::AddressMetrics;
use crate::upstream::Upstream;

const HEALTHY: u8 = 0;
const EJECTED: u8 = 1;
/// Back from an ejection: one failure ejects it again.
const TRIAL: u8 = 2;

/// What one exchange with an address came to, as far as its health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a 5xx.
    Success,
    /// No connection, a failed exchange, no response head in time, or a 5xx response.
    Failure,
    /// Says nothing about the address (the client's body stalled).
    Neutral,
}

impl Outcome {
    pub fn of_status(status: http::StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

#[derive(Debug)]
pub struct AddressHealth {
    upstream: String,
    address: String,
    state: AtomicU8,
    /// The active checks took the address out (`upstreams[].health_check`).
    check_down: AtomicBool,
    failures: AtomicU32,
    /// While [`EJECTED`]: until when, in milliseconds of [`now_ms`].
    ejected_until: AtomicU64,
    threshold: u32,
    duration: Duration,
    metrics: AddressMetrics,
}

impl AddressHealth {
    pub fn new(upstream: &str, address: &str, config: &EjectionConfig, metrics: AddressMetrics) -> AddressHealth {
        metrics.healthy.set(1);
        AddressHealth {
            upstream: upstream.to_owned(),
            address: address.to_owned(),
            state: AtomicU8::new(HEALTHY),
            check_down: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            threshold: config.consecutive_failures.max(1),
            duration: Duration::from_millis(config.duration_ms),
            metrics,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the address may get a request now. An ejection whose back-off has passed ends
    /// here: the address goes on trial.
    pub fn available(&self) -> bool {
        if self.check_down.load(Ordering::Relaxed) {
            return false;
        }
        if self.state.load(Ordering::Relaxed) != EJECTED {
            return true;
        }
        if now_ms() < self.ejected_until.load(Ordering::Acquire) {
            return false;
        }
        if self
            .state
            .compare_exchange(EJECTED, TRIAL, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.update_gauge();
            info!(upstream = %self.upstream, address = %self.address, "upstream address back in rotation on trial");
        }
        true
    }

    /// Whether the address is ejected now (for tests and the admin view).
    pub fn is_ejected(&self) -> bool {
        !self.available()
    }

    /// Counts one exchange's outcome; may eject the address.
    pub fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Neutral => {}
            Outcome::Success => {
                // Read first: in the steady state every thread only reads this line.
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                if self.state.load(Ordering::Relaxed) == TRIAL
                    && self
                        .state
                        .compare_exchange(TRIAL, HEALTHY, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    info!(upstream = %self.upstream, address = %self.address, "upstream address healthy again");
                }
            }
            Outcome::Failure => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let state = self.state.load(Ordering::Relaxed);
                if state == TRIAL || (state == HEALTHY && failures >= self.threshold) {
                    self.eject(state, failures);
                }
            }
        }
    }

    /// Ejects the address unless another thread did first.
    fn eject(&self, from: u8, failures: u32) {
        let until = now_ms() + self.duration.as_millis() as u64;
        self.ejected_until.store(until, Ordering::Release);
        if self
            .state
            .compare_exchange(from, EJECTED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.failures.store(0, Ordering::Relaxed);
            self.update_gauge();
            self.metrics.ejections.inc();
            warn!(
                upstream = %self.upstream, address = %self.address, failures,
                ejected_for = ?self.duration, "upstream address ejected after consecutive failures"
            );
        }
    }

    /// The active checks' verdict: `down` takes the address out of rotation until they bring it
    /// back. Returns whether this changed anything.
    pub fn set_check_down(&self, down: bool) -> bool {
        let changed = self.check_down.swap(down, Ordering::AcqRel) != down;
        if changed {
            self.update_gauge();
        }
        changed
    }

    /// `healthy` is 1 while neither the checks nor an ejection keep the address out.
    fn update_gauge(&self) {
        let out = self.check_down.load(Ordering::Acquire) || self.state.load(Ordering::Acquire) == EJECTED;
        self.metrics.healthy.set(i64::from(!out));
    }

    /// Requests in flight to this address from every serving thread (`least_requests`).
    pub fn active_requests(&self) -> i64 {
        self.metrics.active.get()
    }

    /// Counts a request in flight to this address until the guard drops.
    pub fn active(&self) -> ActiveGuard<'_> {
        self.metrics.active.inc();
        ActiveGuard(self)
    }
}

pub struct ActiveGuard<'a>(&'a AddressHealth);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active.dec();
    }
}

/// The health of `address` of `upstream`: the one the serving proxy already has when it has
/// the same ejection settings (a reload keeps an ejection and its metrics), else a new one.
pub fn shared(upstream: &str, address: &str, config: &EjectionConfig) -> Arc<AddressHealth> {
    type Key = (String, String);
    static LIVE: Mutex<Vec<(Key, Weak<AddressHealth>)>> = Mutex::new(Vec::new());
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|(_, w)| w.strong_count() > 0);
    let same = |h: &AddressHealth| {
        h.threshold == config.consecutive_failures.max(1) && h.duration == Duration::from_millis(config.duration_ms)
    };
    let found = live
        .iter()
        .filter(|((u, a), _)| u == upstream && a == address)
        .find_map(|(_, w)| w.upgrade().filter(|h| same(h)));
    if let Some(h) = found {
        return h;
    }
    let metrics = crate::metrics::global().address(upstream, address);
    let h = Arc::new(AddressHealth::new(upstream, address, config, metrics));
    live.push(((upstream.to_owned(), address.to_owned()), Arc::downgrade(&h)));
    h
}

/// Starts the active checks of every address of `upstream` on the current runtime (the
/// control runtime). Each stops once the upstream is dropped (replaced by a reload).
pub fn spawn_checks(upstream: &Arc<Upstream>, config: &HealthCheckConfig) {
    for (addr, health) in upstream.addresses().iter().zip(upstream.health()) {
        let (weak, addr, health, config, tls) = (
            Arc::downgrade(upstream),
            addr.clone(),
            Arc::clone(health),
            config.clone(),
            upstream.tls().cloned(),
        );
        tokio::spawn(async move {
            let mut streak: i64 = 0;
            let mut interval = tokio::time::interval(Duration::from_millis(config.interval_ms));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if weak.strong_count() == 0 {
                    return;
                }
                let result = probe(&addr, &config, tls.as_deref()).await;
                streak = match (&result, streak) {
                    (Ok(()), s) if s > 0 => s + 1,
                    (Ok(()), _) => 1,
                    (Err(_), s) if s < 0 => s - 1,
                    (Err(_), _) => -1,
                };
                check_verdict(&health, streak, &config, result);
            }
        });
    }
}

/// Applies the thresholds to a streak of checks (positive: passed in a row, negative: failed).
fn check_verdict(health: &AddressHealth, streak: i64, config: &HealthCheckConfig, last: Result<(), String>) {
    let (up, down) = (
        i64::from(config.healthy_threshold),
        -i64::from(config.unhealthy_threshold),
    );
    let (upstream, address) = (&health.upstream, &health.address);
    if streak <= down && health.set_check_down(true) {
        let reason = last.err().unwrap_or_default();
        warn!(%upstream, %address, checks = -streak, %reason, "upstream address failed its health checks; out of rotation");
    } else if streak >= up && health.set_check_down(false) {
        info!(%upstream, %address, checks = streak, "upstream address passed its health checks; back in rotation");
    }
}

/// One check: a GET of the path on a new connection (over TLS for an HTTPS upstream, verified as
/// its requests are), the whole exchange within the timeout.
async fn probe(addr: &Authority, config: &HealthCheckConfig, tls: Option<&UpstreamTls>) -> Result<(), String> {
    let timeout = Duration::from_millis(config.timeout_ms);
    let exchange = async {
        let stream = crate::pool::Conn::stream(addr, timeout, tls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(config.path.as_str())
            .header(http::header::HOST, addr.as_str())
            .header(http::header::USER_AGENT, "weft-proxy-health-check")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if config.passes(status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Milliseconds since the first call in this process (a monotonic clock that fits an atomic).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(failures: u32, ms: u64) -> AddressHealth {
        let config = EjectionConfig {
            consecutive_failures: failures,
            duration_ms: ms,
        };
        AddressHealth::new("u", "127.0.0.1:1", &config, AddressMetrics::default())
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let h = health(3, 60_000);
        h.record(Outcome::Failure);
        h.record(Outcome::Failure);
        h.record(Outcome::Success);
        h.record(Outcome::Failure);
        h.record(Outcome::Failure);
        assert!(h.available(), "a success in between resets the count");
        h.record(Outcome::Failure);
        assert!(!h.available());
        assert_eq!(h.metrics.ejections.get(), 1);
        assert_eq!(h.metrics.healthy.get(), 0);
    }

    #[test]
    fn neutral_outcomes_neither_count_nor_reset() {
        let h = health(2, 60_000);
        h.record(Outcome::Failure);
        h.record(Outcome::Neutral);
        h.record(Outcome::Failure);
        assert!(h.is_ejected());
    }

    #[test]
    fn back_on_trial_after_the_back_off_and_one_failure_ejects_again() {
        let h = health(3, 30);
        for _ in 0..3 {
            h.record(Outcome::Failure);
        }
        assert!(!h.available());
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.available());
        assert_eq!(h.metrics.healthy.get(), 1);
        h.record(Outcome::Failure);
        assert!(!h.available(), "on trial, one failure ejects");
        assert_eq!(h.metrics.ejections.get(), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.available());
        h.record(Outcome::Success);
        h.record(Outcome::Failure);
        assert!(h.available(), "healthy again: the threshold applies");
    }

    #[test]
    fn a_reload_with_the_same_settings_keeps_the_state() {
        let config = EjectionConfig {
            consecutive_failures: 1,
            duration_ms: 60_000,
        };
        let old = shared("reloaded", "127.0.0.1:2", &config);
        old.record(Outcome::Failure);
        let same = shared("reloaded", "127.0.0.1:2", &config);
        assert!(Arc::ptr_eq(&old, &same) && same.is_ejected(), "the ejection survives");
        let other = EjectionConfig {
            consecutive_failures: 2,
            ..config
        };
        assert!(
            !shared("reloaded", "127.0.0.1:2", &other).is_ejected(),
            "new settings start afresh"
        );
        assert!(!shared("reloaded", "127.0.0.1:3", &config).is_ejected());
    }

    #[test]
    fn five_hundreds_are_failures() {
        assert_eq!(Outcome::of_status(http::StatusCode::BAD_GATEWAY), Outcome::Failure);
        assert_eq!(Outcome::of_status(http::StatusCode::NOT_FOUND), Outcome::Success);
    }
}
