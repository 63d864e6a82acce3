//! Hostile clients, over raw TCP for the whole run beside the load: idle keep-alive connections
//! held open, slowloris connections trickling a request head, oversized headers, and clients
//! that disconnect mid-request-body and mid-response-body. None of them may cost the load an
//! error; what the proxy answered them is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::{H_CRC, H_RESP_LEN, pattern};

/// A slowloris connection sends one header line this often.
const TRICKLE: Duration = Duration::from_secs(1);
/// How many slowloris connections are open at once.
const SLOWLORIS: usize = 50;
/// Size of the oversized header: over hyper's limit for a request head (about 400 KiB).
const OVERSIZED: usize = 1 << 20;
/// The proxy's `limits.header_read_timeout_ms` in the soak's config.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default, Serialize)]
pub struct Counts {
    /// Idle keep-alive connections open now, most at once, and closed by the proxy.
    pub idle_open: AtomicU64,
    pub idle_peak: AtomicU64,
    pub idle_closed_by_proxy: AtomicU64,
    pub slowloris_closed: AtomicU64,
    /// The longest a slowloris connection stayed open, ms.
    pub slowloris_longest_ms: AtomicU64,
    pub oversized_sent: AtomicU64,
    pub oversized_431: AtomicU64,
    /// Closed without an answer (the proxy stopped reading; the client's write then failed).
    pub oversized_closed: AtomicU64,
    /// Answered with any other status: a failure.
    pub oversized_other: AtomicU64,
    pub cut_request_bodies: AtomicU64,
    pub cut_response_bodies: AtomicU64,
}

pub struct Hostile {
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    /// Starts every kind against the proxy's `port`, with `idle` keep-alive connections.
    pub fn start(port: u16, idle: usize) -> Hostile {
        let counts: Arc<Counts> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        for i in 0..idle {
            tokio::spawn(hold_idle(port, counts.clone(), stop.clone(), i));
        }
        for _ in 0..SLOWLORIS {
            tokio::spawn(slowloris(port, counts.clone(), stop.clone()));
        }
        tokio::spawn(every(Duration::from_millis(500), stop.clone(), {
            let c = counts.clone();
            move || oversized(port, c.clone())
        }));
        tokio::spawn(every(Duration::from_millis(200), stop.clone(), {
            let c = counts.clone();
            move || cut_request(port, c.clone())
        }));
        tokio::spawn(every(Duration::from_millis(200), stop.clone(), {
            let c = counts.clone();
            move || cut_response(port, c.clone())
        }));
        Hostile { counts, stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn every<F, Fut>(period: Duration, stop: Arc<AtomicBool>, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(period);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), f()));
    }
}

async fn connect(port: u16) -> Option<TcpStream> {
    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()
}

/// Reads a response head; its status (0: closed or no head within 10 s).
async fn read_status(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One keep-alive connection: a request, then idle until the proxy closes it (its idle
/// timeout), then again. Started spread over the first two seconds.
async fn hold_idle(port: u16, c: Arc<Counts>, stop: Arc<AtomicBool>, i: usize) {
    tokio::time::sleep(Duration::from_millis(i as u64 % 2000)).await;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(port).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let req = format!("GET /raw/idle HTTP/1.1\r\nHost: soak\r\n{H_RESP_LEN}: 0\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() || read_status(&mut s).await != 200 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let open = c.idle_open.fetch_add(1, Ordering::Relaxed) + 1;
        c.idle_peak.fetch_max(open, Ordering::Relaxed);
        let mut b = [0u8; 64];
        loop {
            tokio::select! {
                r = s.read(&mut b) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        c.idle_closed_by_proxy.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if stop.load(Ordering::Relaxed) { break; }
                }
            }
        }
        c.idle_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request head one header line a second, until the proxy closes the connection.
async fn slowloris(port: u16, c: Arc<Counts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(port).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let t = Instant::now();
        let mut line = b"GET / HTTP/1.1\r\nHost: soak\r\n".to_vec();
        let mut b = [0u8; 256];
        loop {
            if s.write_all(&line).await.is_err() {
                break;
            }
            line = b"x-slow: 1\r\n".to_vec();
            match tokio::time::timeout(TRICKLE, s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                // A 408 head or anything else: keep reading until the close.
                Ok(Ok(_)) | Err(_) => {}
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        c.slowloris_closed.fetch_add(1, Ordering::Relaxed);
        c.slowloris_longest_ms
            .fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

async fn oversized(port: u16, c: Arc<Counts>) {
    let Some(mut s) = connect(port).await else { return };
    c.oversized_sent.fetch_add(1, Ordering::Relaxed);
    let big = "a".repeat(OVERSIZED);
    let req = format!("GET / HTTP/1.1\r\nHost: soak\r\nx-big: {big}\r\n\r\n");
    // The proxy may answer and close before reading it all: a failed write is fine.
    let _ = s.write_all(req.as_bytes()).await;
    let status = read_status(&mut s).await;
    let n = match status {
        431 => &c.oversized_431,
        0 => &c.oversized_closed,
        _ => &c.oversized_other,
    };
    n.fetch_add(1, Ordering::Relaxed);
}

/// A request body announced whole, a quarter of it sent, then the connection dropped.
async fn cut_request(port: u16, c: Arc<Counts>) {
    let Some(mut s) = connect(port).await else { return };
    let body = pattern(7, 200_000);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: soak\r\ncontent-length: {}\r\n{H_CRC}: {}\r\n\r\n",
        body.len(),
        crc32fast::hash(&body)
    );
    if s.write_all(head.as_bytes()).await.is_ok() && s.write_all(&body[..50_000]).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.cut_request_bodies.fetch_add(1, Ordering::Relaxed);
    }
}

/// A 4 MiB response, 64 KiB of it read, then the connection dropped.
async fn cut_response(port: u16, c: Arc<Counts>) {
    let Some(mut s) = connect(port).await else { return };
    let req = format!(
        "GET /raw/big HTTP/1.1\r\nHost: soak\r\n{H_RESP_LEN}: {}\r\n\r\n",
        4 << 20
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut got = 0;
    let mut b = vec![0u8; 16 << 10];
    while got < 64 << 10 {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
    }
    c.cut_response_bodies.fetch_add(1, Ordering::Relaxed);
}
