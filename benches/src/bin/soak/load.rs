//! The load generator: requests at a fixed rate (open loop), each tagged with an id and the
//! per-request fault it asks for, its response checked (upstream's, with the body checksum
//! right) or its error status classified by the fault that explains it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::timeline::{RequestFault, RouteKind, Timeline, Window};
use crate::upstream::{H_CRC, H_RESP_CRC, H_RESP_LEN, H_SEED, H_UPSTREAM, pattern};

/// Requests in flight at most; beyond it the generator skips a request (counted, not sent).
/// Below the arena's slots (with room for the slots hang and late faults hold), so that
/// overload on a busy machine shows as skipped requests, not as 503s no fault explains.
const MAX_IN_FLIGHT: u64 = crate::proxy::SLOTS as u64 * 3 / 4;
/// A request without an answer after this long is an error (no fault makes one take that long).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How late the test plugins' faulty requests complete: past their instances' deadlines
/// (`proxy.rs`: 500 ms for test-blocking, 1000 ms for test-async).
pub const HANG_MS: u32 = 2500;
pub const LATE_MS: u32 = 2000;

/// The error key of a late request answered 2xx because the proxy was starved past its
/// deadline ([`Load::completion_used`]): counted apart, not an error.
pub const COMPLETION_USED: &str = "late-answer-used";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    // Idle pooled connections go before the proxy could close one under a request being sent
    // on it (the keep-alive race every HTTP client meets; its request would fail with a reset).
    // The shortest of the proxy's limits is the header-read timeout of a connection that never
    // carried a request: hyper-util keeps a connection it opened for a request that another
    // connection then took, unused, in the pool. The connections a latency spike opened
    // beyond 256 go when it ends, so the proxy's descriptor count does not keep the spike's
    // high-water mark.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(crate::hostile::HEADER_READ_TIMEOUT / 2)
        .pool_max_idle_per_host(256)
        .build_http()
}

/// What one request is.
pub struct Plan {
    pub path: &'static str,
    pub route: RouteKind,
    pub fault: RequestFault,
    pub body_len: usize,
    pub resp_len: usize,
    pub headers: Vec<(&'static str, String)>,
}

/// A cheap hash of the request id (body sizes, seeds).
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Request `n` of the run: the per-request faults at their fixed rates (a panic in 1 of 1,000,
/// a hang in 1 of 10,000, a late async completion in 1 of 1,000), bodies on a quarter.
pub fn plan(n: u64, nats: bool) -> Plan {
    let mut p = Plan {
        path: "/",
        route: RouteKind::Plugins,
        fault: RequestFault::None,
        body_len: 0,
        resp_len: 64,
        headers: Vec::new(),
    };
    if n % 1000 == 7 {
        p.fault = RequestFault::Panic;
        p.headers.push(("x-test-panic", "1".into()));
    } else if n % 10_000 == 13 {
        (p.path, p.fault) = ("/hang", RequestFault::Hang);
        p.headers.push(("x-delay-ms", HANG_MS.to_string()));
    } else if n % 1000 == 501 {
        (p.path, p.fault) = ("/late", RequestFault::LateAsync);
        p.headers.push(("x-delay-ms", LATE_MS.to_string()));
    } else if n % 50 == 3 {
        p.path = "/late";
    } else if n % 100 == 5 {
        p.path = "/hang";
    } else if n % 10 == 1 {
        (p.path, p.route) = ("/raw", RouteKind::NoPlugins);
    } else if n % 10 == 2 && nats {
        (p.path, p.route) = ("/nats", RouteKind::Nats);
        p.headers.push(("x-test-sleep-ms", "5".into()));
    } else if n.is_multiple_of(4) {
        p.body_len = (mix(n) % 65_536) as usize;
    } else if n % 100 == 9 {
        p.resp_len = 256 << 10;
    }
    p
}

/// One second of the run (by completion time).
#[derive(Clone, Default)]
pub struct Second {
    pub requests: u64,
    pub ok: u64,
    /// Errors by the fault that explains them; `unexplained` for the rest.
    pub errors: BTreeMap<&'static str, u64>,
    pub unexplained: u64,
    pub skipped: u64,
    pub lat_us: Vec<u32>,
}

pub struct Stats {
    t0: Instant,
    secs: Mutex<Vec<Second>>,
    /// The first unexplained errors, described.
    pub samples: Mutex<Vec<String>>,
    pub in_flight: AtomicU64,
    pub next_id: AtomicU64,
    /// Response bodies that did not match the upstream's checksum.
    pub resp_mismatches: AtomicU64,
}

impl Stats {
    pub fn new(t0: Instant) -> Stats {
        Stats {
            t0,
            secs: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            resp_mismatches: AtomicU64::new(0),
        }
    }

    fn with_second(&self, at: Instant, f: impl FnOnce(&mut Second)) {
        let i = at.saturating_duration_since(self.t0).as_secs() as usize;
        let mut secs = self.secs.lock().unwrap();
        if secs.len() <= i {
            secs.resize(i + 1, Second::default());
        }
        f(&mut secs[i]);
    }

    pub fn seconds(&self) -> Vec<Second> {
        self.secs.lock().unwrap().clone()
    }

    fn unexplained(&self, what: String) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 50 {
            s.push(what);
        }
    }
}

/// What came back for a request.
enum Outcome {
    Ok,
    Status(u16),
    /// A 2xx that is not the upstream's answer, or whose body is not what it sent.
    Bad(String),
    Transport(String),
}

pub struct Load {
    pub client: HttpClient,
    pub port: u16,
    pub nats: bool,
    pub stats: Arc<Stats>,
    pub timeline: Arc<Timeline>,
    /// Set during quiet points: no new requests.
    pub paused: AtomicBool,
}

impl Load {
    /// Sends requests at `rate` per second until `until` (not while paused; no catching up after).
    pub async fn drive(self: Arc<Self>, rate: f64, until: Instant) {
        let mut base = Instant::now();
        let mut issued = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while Instant::now() < until {
            tick.tick().await;
            if self.paused.load(Ordering::Relaxed) {
                (base, issued) = (Instant::now(), 0);
                continue;
            }
            let due = (base.elapsed().as_secs_f64() * rate) as u64;
            while issued < due {
                issued += 1;
                if self.stats.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    self.stats.with_second(Instant::now(), |s| s.skipped += 1);
                    continue;
                }
                let n = self.stats.next_id.fetch_add(1, Ordering::Relaxed);
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                tokio::spawn(async move {
                    me.one(n).await;
                    me.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    async fn one(&self, n: u64) {
        let p = plan(n, self.nats);
        let start = Instant::now();
        let out = match tokio::time::timeout(REQUEST_TIMEOUT, self.send(n, &p)).await {
            Ok(o) => o,
            Err(_) => Outcome::Transport(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        let end = Instant::now();
        let kind = self.classify(n, &p, &out, start, end);
        let lat = end.duration_since(start).as_micros().min(u32::MAX as u128) as u32;
        self.stats.with_second(end, |s| {
            s.requests += 1;
            s.lat_us.push(lat);
            match kind {
                None => s.ok += 1,
                Some(k) => {
                    *s.errors.entry(k).or_default() += 1;
                    if k == "unexplained" {
                        s.unexplained += 1;
                    }
                }
            }
        });
    }

    /// None for a good answer, else the name of the fault that explains the error.
    fn classify(&self, n: u64, p: &Plan, out: &Outcome, start: Instant, end: Instant) -> Option<&'static str> {
        let at = self.timeline.secs(start);
        let what = match out {
            Outcome::Ok if p.fault == RequestFault::None => return None,
            Outcome::Ok if self.completion_used(p, start, end) => return Some(COMPLETION_USED),
            Outcome::Ok => format!("{} request answered 2xx", p.fault.name()),
            Outcome::Status(s) if p.fault.status() == Some(*s) => return Some(p.fault.name()),
            Outcome::Status(s) => match self.timeline.explain(*s, p.route, start, end) {
                Some(w) => return Some(w.name()),
                None => format!("status {s}"),
            },
            Outcome::Bad(why) => why.clone(),
            Outcome::Transport(why) => format!("transport: {why}"),
        };
        self.stats
            .unexplained(format!("t={at:.1}s id={n} {} {}: {what}", p.path, p.fault.name()));
        Some("unexplained")
    }

    /// Whether a 2xx to a late (hang, late-async) request is the plugin's late answer that the
    /// proxy used because it arrived before the proxy acted on the deadline: the proxy gives up
    /// on a call only when its task runs after the deadline, and a completion found there is
    /// used (`docs/architecture.md`, "Pending calls"). That happens when the proxy's thread was
    /// starved of CPU past the deadline (a starved window overlapped the request), and the
    /// answer cannot come before the plugin's delay (else the fault did not happen at all).
    fn completion_used(&self, p: &Plan, start: Instant, end: Instant) -> bool {
        let Some(delay) = p.fault.delay() else {
            return false;
        };
        end.duration_since(start) >= delay && self.timeline.overlapped(Window::Starved, start, end)
    }

    async fn send(&self, n: u64, p: &Plan) -> Outcome {
        let seed = mix(n ^ 0x5eed);
        let body = Bytes::from(pattern(seed, p.body_len));
        let mut b = hyper::Request::builder()
            .method(if p.body_len > 0 { "POST" } else { "GET" })
            .uri(format!("http://127.0.0.1:{}{}?id={n}", self.port, p.path))
            .header("x-soak-id", n.to_string())
            .header(H_SEED, seed.to_string())
            .header(H_RESP_LEN, p.resp_len.to_string())
            .header("user-agent", "weft-soak/1.0");
        if p.body_len > 0 {
            b = b.header(H_CRC, crc32fast::hash(&body).to_string());
        }
        for (k, v) in &p.headers {
            b = b.header(*k, v);
        }
        let req = b.body(Full::new(body)).expect("valid request");
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(format!("{e:?}")),
        };
        let status = resp.status().as_u16();
        let from_upstream = resp.headers().contains_key(H_UPSTREAM);
        let want_crc: Option<u32> = resp
            .headers()
            .get(H_RESP_CRC)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Outcome::Transport(format!("response body: {e}")),
        };
        if !(200..300).contains(&status) {
            return Outcome::Status(status);
        }
        if !from_upstream {
            return Outcome::Bad(format!("{status} without {H_UPSTREAM}"));
        }
        if body.len() != p.resp_len || want_crc != Some(crc32fast::hash(&body)) {
            self.stats.resp_mismatches.fetch_add(1, Ordering::Relaxed);
            return Outcome::Bad(format!(
                "response body of {} bytes does not match the upstream's checksum ({} bytes asked)",
                body.len(),
                p.resp_len
            ));
        }
        Outcome::Ok
    }
}

impl Load {
    /// Whether a plain GET of `path` is answered 200 now.
    pub async fn probe(&self, path: &str) -> bool {
        let req = hyper::Request::get(format!("http://127.0.0.1:{}{path}", self.port))
            .header(H_RESP_LEN, "0")
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.client.request(req)).await,
            Ok(Ok(r)) if r.status() == 200
        )
    }

    /// Closed-loop saturation probe: `conns` loops sending the run's own mix of requests (the
    /// fault-free ones, bodies and checks included) for `secs`; the good answers per second.
    pub async fn saturation(self: &Arc<Self>, conns: usize, secs: f64) -> f64 {
        let ok = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (me, ok, next) = (self.clone(), ok.clone(), next.clone());
            set.spawn(async move {
                while Instant::now() < until {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let p = plan(n, me.nats);
                    if p.fault != RequestFault::None {
                        continue;
                    }
                    if let Ok(Outcome::Ok) = tokio::time::timeout(REQUEST_TIMEOUT, me.send(n, &p)).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        ok.load(Ordering::Relaxed) as f64 / secs
    }
}
