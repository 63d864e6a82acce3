//! Body-phase numbers: throughput of a body streamed in 64 KiB chunks through the
//! real `weft-proxy` (release build) with a pass-through streamed body plugin (`bench-body-pass`,
//! Go) against the same route without a body plugin, as medians over alternating rounds and
//! their ratio; and the proxy's resident memory growth while 1 GiB streams through a
//! streamed-mode plugin (from /proc/<pid>/status: `VmRSS` before, `VmHWM` after resetting it
//! through /proc/<pid>/clear_refs).
//!
//! ```sh
//! cargo run --release -p weft-benches --bin body -- [--rounds 7] [--mib 512]
//! ```
//!
//! Writes `<target>/bench/body.md` and prints it.

use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_benches::report::{target_dir, workspace_root};

#[derive(Parser, Debug)]
#[command(about = "weft body-phase throughput and RSS")]
struct Args {
    /// Rounds; each runs every configuration and direction once, alternating.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// MiB per transfer.
    #[arg(long, default_value_t = 512)]
    mib: u64,
    /// Chunk size of the upstream's writes and of the client's upload frames.
    #[arg(long, default_value_t = 65536)]
    chunk: usize,
    /// weft-proxy binary [env WEFT_PROXY_BIN]; default: `cargo build --release -p weft-proxy`.
    #[arg(long, env = "WEFT_PROXY_BIN")]
    weft_bin: Option<PathBuf>,
    /// Output directory (default `<target>/bench`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Pre-generated 64 KiB of text, handed out as `Bytes` clones: the upstream costs ~nothing.
struct Gen {
    left: u64,
    chunk: Bytes,
}

impl Body for Gen {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

fn text_chunk(n: usize) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27])
            .collect::<Vec<u8>>(),
    )
}

async fn upstream(
    req: hyper::Request<Incoming>,
    chunk: Bytes,
) -> Result<hyper::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>>, Infallible> {
    if req.method() == hyper::Method::POST {
        // Sink: count and answer the length.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(f)) = body.frame().await {
            n += f.into_data().map(|d| d.len() as u64).unwrap_or(0);
        }
        let b = http_body_util::Full::new(Bytes::from(n.to_string())).map_err(|e| match e {});
        return Ok(hyper::Response::new(b.boxed_unsync()));
    }
    let left: u64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let b = Gen { left, chunk }.map_err(|e| match e {});
    Ok(hyper::Response::new(b.boxed_unsync()))
}

fn spawn_upstream(chunk: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let chunk = text_chunk(chunk);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let chunk = chunk.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream(req, chunk.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    addr
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// One download of `bytes` through `path`; returns MiB/s.
async fn download(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
    addr: SocketAddr,
    path: &str,
    bytes: u64,
) -> f64 {
    let t = Instant::now();
    let req = hyper::Request::get(format!("http://{addr}{path}?n={bytes}"))
        .body(http_body_util::Empty::new().boxed_unsync())
        .unwrap();
    let mut body = client.request(req).await.expect("response").into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.expect("body").into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, bytes, "short download through {path}");
    bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

/// One upload of `bytes` in `chunk`-byte frames through `path`; returns MiB/s.
async fn upload(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
    addr: SocketAddr,
    path: &str,
    bytes: u64,
    chunk: usize,
) -> f64 {
    let t = Instant::now();
    let body = Gen {
        left: bytes,
        chunk: text_chunk(chunk),
    };
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .body(body.boxed_unsync())
        .unwrap();
    let resp = client.request(req).await.expect("response");
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(got, Bytes::from(bytes.to_string()), "short upload through {path}");
    bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let bin = args.weft_bin.clone().unwrap_or_else(build_proxy);
    let up = spawn_upstream(args.chunk);
    let dir = std::env::temp_dir().join(format!("weft-body-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr) = start_proxy(&bin, &dir, up);
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let client: Client<_, ClientBody> = Client::builder(TokioExecutor::new()).build_http();
        let mut speeds = throughput(&client, addr, &args).await;
        let memory = memory(&client, addr, pid, args.chunk).await;
        report(&args, &mut speeds, memory)
    });
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !err.trim().is_empty() {
        eprintln!("proxy stderr:\n{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = args.out.unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("body.md"), &report).unwrap();
    println!("{report}");
}

/// `cargo build --release -p weft-proxy`, and the binary it made.
fn build_proxy() -> PathBuf {
    let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "weft-proxy"])
        .current_dir(workspace_root())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "cargo build --release -p weft-proxy failed");
    target_dir().join("release/weft-proxy")
}

/// weft-proxy in front of `up`, with a streamed pass-through body plugin on `/pass`, the
/// counting one on `/count` and none elsewhere; returned once it accepts connections.
fn start_proxy(bin: &Path, dir: &Path, up: SocketAddr) -> (Child, SocketAddr) {
    let lib = weft_test_support::go_library("test").to_path_buf();
    let addr = weft_test_support::free_port();
    let cfg = dir.join("weft.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {addr}\nlibraries:\n  - {{ name: examples, path: {:?} }}\nplugins:\n  - {{ name: pass, library: examples, plugin: bench-body-pass }}\n  - {{ name: count, library: examples, plugin: test-body-count }}\nupstreams:\n  - {{ name: up, addresses: [\"{up}\"] }}\nroutes:\n  - {{ path_prefix: /pass, upstream: up, plugins: [pass] }}\n  - {{ path_prefix: /count, upstream: up, plugins: [count] }}\n  - {{ path_prefix: /, upstream: up }}\n",
            lib.display().to_string()
        ),
    )
    .unwrap();
    let child: Child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft-proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "proxy not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// MiB/s of each round: downloads and uploads with the pass-through plugin and without.
#[derive(Default)]
struct Speeds {
    down_plugin: Vec<f64>,
    down_none: Vec<f64>,
    up_plugin: Vec<f64>,
    up_none: Vec<f64>,
}

async fn throughput(client: &Client<HttpConnector, ClientBody>, addr: SocketAddr, args: &Args) -> Speeds {
    let bytes = args.mib << 20;
    // Warm-up.
    download(client, addr, "/pass/d", 64 << 20).await;
    download(client, addr, "/plain/d", 64 << 20).await;
    let mut s = Speeds::default();
    for round in 0..args.rounds {
        // Alternate which configuration goes first.
        let order: [(&str, bool); 2] = if round % 2 == 0 {
            [("/pass/d", true), ("/plain/d", false)]
        } else {
            [("/plain/d", false), ("/pass/d", true)]
        };
        for (path, plugin) in order {
            let d = download(client, addr, path, bytes).await;
            let u = upload(client, addr, path, bytes, args.chunk).await;
            if plugin {
                s.down_plugin.push(d);
                s.up_plugin.push(u);
            } else {
                s.down_none.push(d);
                s.up_none.push(u);
            }
        }
        eprintln!(
            "round {round}: down {:.0}/{:.0} up {:.0}/{:.0} MiB/s (plugin/none)",
            s.down_plugin[round], s.down_none[round], s.up_plugin[round], s.up_none[round]
        );
    }
    s
}

/// Resident memory while 1 GiB streams each way through the streamed-mode counting plugin:
/// VmRSS before, the peak after, and whether the peak is VmHWM after `clear_refs` (else VmRSS
/// after).
async fn memory(
    client: &Client<HttpConnector, ClientBody>,
    addr: SocketAddr,
    pid: u32,
    chunk: usize,
) -> (u64, u64, bool) {
    let baseline = status_kib(pid, "VmRSS:");
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    download(client, addr, "/count/d", 1 << 30).await;
    upload(client, addr, "/count/u", 1 << 30, chunk).await;
    let peak = if reset {
        status_kib(pid, "VmHWM:")
    } else {
        status_kib(pid, "VmRSS:")
    };
    (baseline, peak, reset)
}

fn report(args: &Args, s: &mut Speeds, (baseline, peak, reset): (u64, u64, bool)) -> String {
    let (mdp, mdn) = (median(&mut s.down_plugin), median(&mut s.down_none));
    let (mup, mun) = (median(&mut s.up_plugin), median(&mut s.up_none));
    format!(
        "# weft body phases: streamed throughput and memory\n\n\
         {} rounds of {} MiB per transfer, {} KiB upstream chunks / upload frames, release `weft-proxy`, \
         one loopback connection at a time. Plugin: `bench-body-pass` (Go, streamed request and response \
         body, passes every chunk unchanged).\n\n\
         | direction | with body plugin (median MiB/s) | without (median MiB/s) | ratio |\n|---|---|---|---|\n\
         | download (response body) | {mdp:.0} | {mdn:.0} | {:.3} |\n\
         | upload (request body) | {mup:.0} | {mun:.0} | {:.3} |\n\n\
         Resident memory while 1 GiB streamed down and 1 GiB up through `test-body-count` (streamed): \
         VmRSS before {baseline} KiB, peak {peak} KiB ({}), growth **{} KiB**.\n",
        args.rounds,
        args.mib,
        args.chunk / 1024,
        mdp / mdn,
        mup / mun,
        if reset { "VmHWM after clear_refs" } else { "VmRSS after" },
        peak.saturating_sub(baseline),
    )
}
