//! End to end through the real `weft-proxy` binary with native plugins written in plain C
//! (examples/c-plugin, built by scripts/build-c-plugins against include/weft.h only):
//! - the example C plugin loaded next to the Go library, checked over real HTTP;
//! - the hostile C plugin: each misuse answers per policy, is logged naming the instance, and the
//!   proxy keeps serving;
//! - the same C suite once more with AddressSanitizer compiled into the C plugins (the proxy runs
//!   with libasan preloaded; only C libraries are loaded then, as ASan and the Go runtime do not
//!   share a process well). The test checks that ASan is really linked and mapped.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, Spawn, c_plugins, free_port, get, go_library, parse_metrics};

/// A config with a small arena (16 slots), so a leaked slot shows quickly.
fn config(addr: SocketAddr, upstream: SocketAddr, libraries: &str, plugins: &str, routes: &str) -> String {
    format!(
        "listen: {addr}\nruntime: {{ slots: 16, slot_size: 16384 }}\nlibraries:\n{libraries}\nplugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\nroutes:\n{routes}\n"
    )
}

fn lib_line(name: &str, path: &Path) -> String {
    format!("  - {{ name: {name}, path: {:?} }}\n", path.display().to_string())
}

const C_PLUGINS: &str = concat!(
    "  - { name: stamp, library: c, plugin: c-header-stamp, config: { header: x-c-stamp, value: from-c, reply_path: /c-hello } }\n",
    "  - { name: hostile-closed, library: hostile, plugin: hostile }\n",
    "  - { name: hostile-open, library: hostile, plugin: hostile, failure: open }\n",
);

const C_ROUTES: &str = concat!(
    "  - { path_prefix: /hostile-open, upstream: up, plugins: [hostile-open, stamp] }\n",
    "  - { path_prefix: /hostile, upstream: up, plugins: [hostile-closed, stamp] }\n",
);

/// Whether a log line is tagged with the plugin instance `name` (`plugin=name` from the engine,
/// `plugin="name"` from the host log function).
fn names(line: &str, name: &str) -> bool {
    line.contains(&format!("plugin={name} ")) || line.contains(&format!("plugin=\"{name}\""))
}

/// The example C plugin over real HTTP: request header to the upstream, response headers to the
/// client, a local reply, and a log line through the host's log function.
async fn check_stamp(proxy: &ProxyProcess, prefix: &str) {
    let addr = proxy.addr;
    let (status, headers, seen) = get(addr, &format!("{prefix}/hello?q=1"), &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-c-stamp"], "from-c", "{seen}");
    assert!(
        seen["headers"]["x-c-request-id"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{seen}"
    );
    assert_eq!(headers["x-c-stamp"], "from-c");
    assert_eq!(headers["x-c-saw-path"], format!("{prefix}/hello").as_str());
    let (status, headers, body) = get(addr, "/c-hello", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-c-stamp"], "from-c");
    assert_eq!(
        body,
        serde_json::Value::String("hello from C\n".into()),
        "local reply, upstream not contacted"
    );
    let line = format!("status=200 path={prefix}/hello");
    let log = tokio::task::block_in_place(|| proxy.wait_log(&line));
    assert!(
        log.lines()
            .any(|l| names(l, "stamp") && l.contains("c-header-stamp request=")),
        "{log}"
    );
}

/// (x-hostile mode, log text the host writes for it)
const HOSTILE: &[(&str, &str)] = &[
    ("len-past-cap", "exceeds its capacity"),
    ("len-max", "mutation buffer length 4294967295"),
    ("garbage", "invalid mutation batch rejected"),
    ("overflow-lengths", "truncated"),
    ("unknown-op", "unknown operation 77"),
    ("bad-status", "status 99 is outside 200..=599"),
    ("huge-status", "status 4294967295 is outside"),
    ("bad-name", "invalid header name"),
    ("crlf-value", "invalid value for header x-a"),
    ("reserved-header", "header transfer-encoding is managed by the proxy"),
    ("orphan-reply-header", "without a preceding local reply"),
    ("double-reply", "a second local reply"),
    ("wrong-phase-op", "SetStatus is not allowed in the RequestHeaders phase"),
    ("unknown-result", "plugin returned Internal"),
    ("claims-overflow", "plugin returned MutationOverflow"),
    ("too-many-records", "more than 256 mutation records"),
    ("resp-bad-status", "status 600 is outside"),
    ("resp-crlf", "invalid value for header x-a"),
];

async fn check_hostile(proxy: &mut ProxyProcess) {
    let addr = proxy.addr;
    for &(mode, log) in HOSTILE {
        let (status, _, body) = get(addr, "/hostile/x", &[("x-hostile", mode)]).await;
        assert_eq!(status, 500, "{mode}: fail-closed answers 500: {body}");
        let all = tokio::task::block_in_place(|| proxy.wait_log(log));
        assert!(
            all.lines().any(|l| names(l, "hostile-closed") && l.contains(log)),
            "{mode}: log line names the instance:\n{all}"
        );
        // Fail-open: the request goes on without the rejected batch, the next plugin still runs.
        let (status, headers, seen) = get(addr, "/hostile-open/x", &[("x-hostile", mode)]).await;
        assert_eq!(status, 200, "{mode} fail-open: {seen}");
        assert_eq!(headers["x-c-stamp"], "from-c", "{mode}");
        assert!(
            seen["headers"].get("x-a").is_none() && seen["headers"].get("x-injected").is_none(),
            "{mode}: {seen}"
        );
        assert!(headers.get("set-cookie").is_none(), "{mode}");
        proxy.assert_running();
    }
    // Abusing the host's log function changes nothing for the request.
    let (status, _, seen) = get(addr, "/hostile/x", &[("x-hostile", "log-abuse")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-hostile-logged"], "1");
    let all = tokio::task::block_in_place(|| proxy.wait_log("hostile-log-done"));
    assert!(all.contains("hostile-unknown-level-and-instance"), "{all}");
    let big = all
        .lines()
        .find(|l| l.contains("hostile-big-line"))
        .expect("the oversized log line is logged, truncated");
    assert!(
        big.len() < 17 * 1024,
        "the host truncates plugin log lines: {} bytes",
        big.len()
    );
    // Still serving, and the arena was not exhausted by the failures (16 slots, 40+ requests).
    for _ in 0..20 {
        let (status, _, _) = get(addr, "/hostile/x", &[("x-hostile", "ok")]).await;
        assert_eq!(status, 200);
    }
    proxy.assert_running();
    assert!(!proxy.stderr().contains("arena exhausted"), "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_plugins_next_to_the_go_library_over_real_http() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let libs = lib_line("go", go_library("test"))
        + &lib_line("c", &c_plugins("plain").join("libweft_c_stamp.so"))
        + &lib_line("hostile", &c_plugins("plain").join("libweft_c_hostile.so"));
    let plugins = format!(
        "{C_PLUGINS}  - {{ name: rewrite, library: go, plugin: header-rewriter, config: {{ request_set: {{ x-added: by-go }}, response_set: {{ x-served-by: weft }} }} }}\n"
    );
    let routes = format!("{C_ROUTES}  - {{ path_prefix: /, upstream: up, plugins: [stamp, rewrite] }}\n");
    let mut proxy = ProxyProcess::spawn("go", &config(addr, upstream, &libs, &plugins, &routes), addr);
    tokio::task::block_in_place(|| proxy.wait_ready());
    check_stamp(&proxy, "").await;
    // The Go plugin after the C one on the same route, both effective.
    let (status, headers, seen) = get(addr, "/both", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-added"], "by-go");
    assert_eq!(seen["headers"]["x-c-stamp"], "from-c");
    assert_eq!(headers["x-served-by"], "weft");
    assert_eq!(headers["x-c-stamp"], "from-c");
    check_hostile(&mut proxy).await;
}

/// An inline C plugin call that sleeps 600 ms on a proxy thread: the
/// watchdog logs the instance and phase once and `weft_plugin_stalls_total` counts it; quick
/// calls count nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_inline_plugin_is_logged_and_counted() {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let (addr, admin) = (free_port(), free_port());
    let libs = lib_line("c", &c_plugins("plain").join("libweft_c_stamp.so"))
        + &lib_line("hostile", &c_plugins("plain").join("libweft_c_hostile.so"));
    let routes = format!("{C_ROUTES}  - {{ path_prefix: /, upstream: up, plugins: [] }}\n");
    let yaml = config(addr, upstream, &libs, C_PLUGINS, &routes).replace(
        "runtime: { slots: 16, slot_size: 16384 }",
        &format!("runtime: {{ slots: 16, slot_size: 16384, stall_threshold_ms: 50 }}\nadmin: {{ listen: {admin} }}"),
    );
    let mut proxy = ProxyProcess::spawn("stall", &yaml, addr);
    tokio::task::block_in_place(|| proxy.wait_ready());
    let stalls = || async {
        let (status, _, body) = get(admin, "/metrics", &[]).await;
        assert_eq!(status, 200);
        parse_metrics(body.as_str().expect("prometheus text"))["weft_plugin_stalls_total"]
    };
    for _ in 0..5 {
        assert_eq!(get(addr, "/hostile/x", &[("x-hostile", "ok")]).await.0, 200);
    }
    assert_eq!(stalls().await, 0.0, "quick calls are not stalls");
    let (status, _, seen) = get(addr, "/hostile/x", &[("x-hostile", "stall")]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-hostile-ok"], "1", "the slow call still applied");
    assert_eq!(stalls().await, 1.0);
    let log = tokio::task::block_in_place(|| proxy.wait_log("inline plugin call still running"));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("inline plugin call still running"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        names(lines[0], "hostile-closed") && lines[0].contains("RequestHeaders") && lines[0].contains("blocking: true"),
        "{}",
        lines[0]
    );
    proxy.assert_running();
}

fn asan_runtime() -> String {
    let out = Command::new("cc")
        .arg("-print-file-name=libasan.so")
        .output()
        .expect("cc");
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        Path::new(&path).is_absolute() && Path::new(&path).exists(),
        "the C compiler has no libasan.so ({path:?}); install the compiler's ASan runtime"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_plugins_under_address_sanitizer() {
    let dir = c_plugins("asan");
    // The libraries really carry ASan instrumentation.
    for lib in ["libweft_c_stamp.so", "libweft_c_hostile.so"] {
        let out = Command::new("nm").arg("-D").arg(dir.join(lib)).output().expect("nm");
        let syms = String::from_utf8_lossy(&out.stdout);
        assert!(
            syms.contains("__asan_init"),
            "{lib} is not built with -fsanitize=address"
        );
        assert!(syms.contains("__asan_report_load"), "{lib} has no ASan checks");
    }
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    let addr = free_port();
    let libs = lib_line("c", &dir.join("libweft_c_stamp.so")) + &lib_line("hostile", &dir.join("libweft_c_hostile.so"));
    let routes = format!("{C_ROUTES}  - {{ path_prefix: /, upstream: up, plugins: [stamp] }}\n");
    let env = [
        ("LD_PRELOAD", asan_runtime()),
        // Leak checking would flag the Rust process's intentional process-lifetime allocations.
        ("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1:halt_on_error=1".into()),
    ];
    let mut proxy = ProxyProcess::spawn_with(
        "asan",
        &config(addr, upstream, &libs, C_PLUGINS, &routes),
        addr,
        Spawn {
            env: &env,
            ..Spawn::default()
        },
    );
    tokio::task::block_in_place(|| proxy.wait_ready());
    // The ASan runtime is mapped into the running proxy.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", proxy.child.id())).unwrap();
    assert!(maps.contains("libasan"), "libasan is not mapped into the proxy");
    assert!(
        maps.contains("libweft_c_stamp.so"),
        "the ASan build of the plugin is loaded"
    );
    check_stamp(&proxy, "").await;
    check_hostile(&mut proxy).await;
    proxy.assert_running();
    let err = proxy.stderr();
    assert!(!err.contains("AddressSanitizer"), "ASan reported:\n{err}");
}
