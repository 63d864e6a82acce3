//! The soak's upstreams: HTTP/1.1 servers on the runner's tokio runtime that check every request
//! body against the checksum its client put in a header, answer a body of the length and seed
//! the client asked for, and can be killed (listener and every connection closed) and restarted
//! on the same port, or made slow.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

/// Request headers of the soak's protocol between load generator and upstream.
pub const H_CRC: &str = "x-soak-crc";
pub const H_RESP_LEN: &str = "x-soak-resp-len";
pub const H_SEED: &str = "x-soak-seed";
/// Response headers: which upstream answered, and the checksum of the body it sent.
pub const H_UPSTREAM: &str = "x-soak-upstream";
pub const H_RESP_CRC: &str = "x-soak-resp-crc";

/// The longest response body a client may ask for.
pub const MAX_RESP_LEN: usize = 4 << 20;
/// How late a slow upstream answers.
pub const SLOW_DELAY: Duration = Duration::from_millis(300);

/// Deterministic body bytes for `seed` (the client computes the same to check the response).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, and every byte depends on the seed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Bodies received whole whose checksum matched / did not match the client's header.
    pub bodies_ok: AtomicU64,
    pub body_mismatches: AtomicU64,
    /// Bodies that ended early (the client or the proxy gave up on the request).
    pub bodies_cut: AtomicU64,
    pub body_bytes: AtomicU64,
}

pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    slow: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds a free loopback port and serves (call from inside the runtime).
    pub async fn start(name: &'static str) -> Result<Upstream, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind upstream {name}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut u = Upstream {
            name,
            addr,
            counters: Arc::default(),
            slow: Arc::default(),
            task: None,
        };
        u.serve(listener);
        Ok(u)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (name, counters, slow) = (self.name, self.counters.clone(), self.slow.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (the task aborted: a kill) aborts every connection with it.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                let (counters, slow) = (counters.clone(), slow.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(name, req, counters.clone(), slow.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    /// Closes the listener and every connection at once, as a crashed process would.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Serves again on the same port (retried for up to 5 s while the old socket goes).
    pub async fn restart(&mut self) -> Result<(), String> {
        for _ in 0..100 {
            if let Ok(l) = tokio::net::TcpListener::bind(self.addr).await {
                self.serve(l);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "upstream {} could not bind {} again within 5 s",
            self.name, self.addr
        ))
    }

    pub fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::Relaxed);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn header<T: std::str::FromStr>(req: &hyper::Request<Incoming>, name: &str) -> Option<T> {
    req.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn handle(
    name: &'static str,
    req: hyper::Request<Incoming>,
    c: Arc<Counters>,
    slow: Arc<AtomicBool>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    let crc: Option<u32> = header(&req, H_CRC);
    let resp_len = header::<usize>(&req, H_RESP_LEN).unwrap_or(64).min(MAX_RESP_LEN);
    let seed: u64 = header(&req, H_SEED).unwrap_or(0);
    let mut hasher = crc32fast::Hasher::new();
    let mut body = req.into_body();
    let mut len = 0u64;
    loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    hasher.update(d);
                    len += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                c.bodies_cut.fetch_add(1, Ordering::Relaxed);
                return Ok(status(400));
            }
            None => break,
        }
    }
    c.body_bytes.fetch_add(len, Ordering::Relaxed);
    if let Some(want) = crc {
        if hasher.finalize() == want {
            c.bodies_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            c.body_mismatches.fetch_add(1, Ordering::Relaxed);
            // 599: no fault explains it, so the load generator reports it too.
            return Ok(status(599));
        }
    }
    if slow.load(Ordering::Relaxed) {
        tokio::time::sleep(SLOW_DELAY).await;
    }
    let out = pattern(seed, resp_len);
    let resp_crc = crc32fast::hash(&out);
    Ok(hyper::Response::builder()
        .header(H_UPSTREAM, name)
        .header(H_RESP_CRC, resp_crc.to_string())
        .body(Full::new(Bytes::from(out)))
        .unwrap())
}

fn status(code: u16) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
