//! The header lines a view carries (`WeftViewHeaders`): a chain whose plugins each declared the
//! lines they read gets views of those lines only, a chain with a plugin that declared nothing
//! gets every line, and a Go plugin that declared sees only its own names either way. Real
//! libraries: the Go test library (`test-view-echo`, `test-view-echo-declared`) and the C
//! fixture phase_count.c (`count-view-lines`, which reads the raw view's line counts).
// An integration test is outside the crate: the sync shim is private to it, and loom never
// runs these, so std's atomics are the right ones here.
#![allow(clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use libloading::os::unix::{Library, Symbol};
use weft_runtime::{Chain, Flow, InstanceSpec, Runtime, RuntimeOptions};

/// One runtime per test binary: the Go library can be loaded once per process.
fn runtime() -> &'static Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = Runtime::new(RuntimeOptions {
            slot_count: 16,
            slot_size: 16 * 1024,
            ..RuntimeOptions::default()
        })
        .unwrap();
        rt.load_library("go", weft_test_support::go_library("test"))
            .expect("load the Go test library");
        rt.load_library("c", &count_library()).expect("load phase-count");
        rt
    })
}

fn count_library() -> std::path::PathBuf {
    weft_test_support::c_plugins("plain").join("libweft_c_phase_count.so")
}

fn chain(plugins: &[(&str, &str)]) -> Chain {
    let with_config: Vec<_> = plugins.iter().map(|&(l, p)| (l, p, "{}")).collect();
    chain_with(&with_config)
}

/// `(library, plugin, config)` instances in order.
fn chain_with(plugins: &[(&str, &str, &str)]) -> Chain {
    let rt = runtime();
    let ids: Vec<_> = plugins
        .iter()
        .enumerate()
        .map(|(i, (library, plugin, config))| {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.instantiate(InstanceSpec {
                name: format!("{plugin}-{i}-{n}"),
                library: (*library).into(),
                plugin: (*plugin).into(),
                config_json: config.as_bytes().to_vec(),
                fail_open: false,
            })
            .unwrap_or_else(|e| panic!("instantiate {plugin}: {e}"))
        })
        .collect();
    rt.chain(&ids)
}

/// The request and response header lines of the last view `count-view-lines` got.
fn view_lines() -> (u32, u32) {
    // SAFETY: the runtime loaded the library already (RTLD_NOLOAD runs no initialisers); the
    // symbol is `uint32_t weft_phase_count_view_lines(uint32_t section)`.
    let handle = unsafe { Library::open(Some(count_library()), libc::RTLD_NOW | libc::RTLD_NOLOAD) }
        .expect("the runtime loaded it");
    let f: Symbol<unsafe extern "C" fn(u32) -> u32> =
        unsafe { handle.get(b"weft_phase_count_view_lines") }.expect("exported by phase_count.c");
    // SAFETY: reads two atomics.
    unsafe { (f(0), f(1)) }
}

/// Lines of no plugin's name, enough of them for the host to look the named lines up rather
/// than lay out a short head whole (which the contract allows: a view may carry more).
const FILL: usize = 10;

fn request() -> http::request::Parts {
    request_with(FILL)
}

fn request_with(fill: usize) -> http::request::Parts {
    let mut b = http::Request::get("/p")
        .header("host", "example.com")
        .header("accept", "*/*")
        .header("x-a", "1")
        .header("x-b", "2")
        .header("x-a", "3")
        .header("x-c", "4");
    for i in 0..fill {
        b = b.header(format!("x-fill-{i}"), "f");
    }
    b.body(()).unwrap().into_parts().0
}

fn response() -> http::response::Parts {
    let mut b = http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .header("x-a", "r")
        .header("x-b", "s");
    for i in 0..FILL {
        b = b.header(format!("x-fill-{i}"), "f");
    }
    b.body(()).unwrap().into_parts().0
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("(none)", |v| v.to_str().unwrap())
}

/// Both calls run, then the `count-view-lines` counts are read. The tests share the C
/// library's counters, so they run one at a time.
fn run(chain: &Chain) -> (http::request::Parts, http::response::Parts, (u32, u32)) {
    run_with(chain, request())
}

fn run_with(chain: &Chain, req: http::request::Parts) -> (http::request::Parts, http::response::Parts, (u32, u32)) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut ex = chain.start(client, "http").expect("a free slot").expect("phases");
    let (mut req, mut resp) = (req, response());
    assert!(matches!(ex.request_headers(&mut req), Flow::Continue));
    let request_lines = view_lines().0;
    assert!(matches!(ex.response_headers(&mut resp), Flow::Continue));
    (req, resp, (request_lines, view_lines().1))
}

/// Every plugin declared: the view holds the union of their names (x-a from the Go plugin, x-a
/// and X-B from the C one: three request lines, two response lines), not the other lines, nor
/// the headers the Go plugin set (x-view-*: no plugin declared them). The Go plugin reads x-a
/// only: x-b is in the view but not its to read.
#[test]
fn a_chain_of_declaring_plugins_gets_views_of_their_lines() {
    let c = chain(&[("go", "test-view-echo-declared"), ("c", "count-view-lines")]);
    let (req, resp, lines) = run(&c);
    assert_eq!(lines, (3, 2), "request lines x-a, x-a, x-b; response lines x-a, x-b");
    assert_eq!(header(&req.headers, "x-view-request"), "x-a=1;x-a=3");
    assert_eq!(header(&req.headers, "x-view-request-b"), "absent");
    assert_eq!(header(&resp.headers, "x-view-response"), "x-a=r");
}

/// The C plugin alone: its two names only, whatever else the head holds.
#[test]
fn a_plugin_alone_gets_the_lines_it_declared() {
    let (_, _, lines) = run(&chain(&[("c", "count-view-lines")]));
    assert_eq!(lines, (3, 2));
}

/// A plugin that declared nothing reads every line: the whole head is laid out (with the line it
/// set before the C plugin's call), and the declaring Go plugin still reads only x-a.
#[test]
fn an_undeclared_plugin_on_the_chain_gets_every_line() {
    let c = chain(&[
        ("go", "test-view-echo"),
        ("go", "test-view-echo-declared"),
        ("c", "count-view-lines"),
    ]);
    let (req, resp, lines) = run(&c);
    // host, accept, x-a ×2, x-b, x-c, the fill, and x-view-request and x-view-request-b, which
    // the Go plugins set before the C plugin's call (x-view-request once: the second set
    // replaced it).
    assert_eq!(lines.0 as usize, 8 + FILL, "every request line");
    // content-type, x-a, x-b, the fill (the response phase runs in reverse: the C plugin first).
    assert_eq!(lines.1 as usize, 3 + FILL, "every response line");
    assert_eq!(header(&req.headers, "x-view-request"), "x-a=1;x-a=3");
    assert_eq!(header(&req.headers, "x-view-request-b"), "absent");
    let fill: String = (0..FILL).map(|i| format!(";x-fill-{i}=f")).collect();
    assert_eq!(
        header(&resp.headers, "x-view-response"),
        format!("content-type=text/plain;x-a=r;x-b=s{fill}"),
        "the undeclared echo runs last on the way out and reads every line"
    );
}

/// A short head is laid out whole even for a declaring chain; a plugin's set of a name no plugin
/// on it reads then removes that name's lines from the view (rather than leave the old value
/// there), and the head itself gets the new value.
#[test]
fn a_set_of_an_unread_name_takes_its_old_lines_out_of_a_whole_view() {
    let c = chain_with(&[
        ("go", "header-rewriter", r#"{"request_set": {"x-c": "new"}}"#),
        ("c", "count-view-lines", "{}"),
    ]);
    let (req, _, lines) = run_with(&c, request_with(0));
    // host, accept, x-a ×2, x-b: x-c's line went with the set.
    assert_eq!(lines.0, 5, "the six-line head laid out whole, less x-c");
    assert_eq!(header(&req.headers, "x-c"), "new");
}

/// A view with none of its chain's names in the head: the section has no line, so the removes
/// and the sets of unread names a plugin makes leave the view as it is (nothing is written), while
/// a set of a name the chain reads still reaches the next plugin's view.
#[test]
fn an_empty_section_gets_only_the_lines_of_names_read() {
    let c = chain_with(&[
        (
            "go",
            "header-rewriter",
            r#"{"request_set": {"x-a": "new", "x-c": "c"}, "request_remove": ["x-b", "x-fill-0"]}"#,
        ),
        ("c", "count-view-lines", "{}"),
    ]);
    let mut b = http::Request::get("/p").header("host", "example.com");
    for i in 0..FILL {
        b = b.header(format!("x-fill-{i}"), "f");
    }
    let (req, _, lines) = run_with(&c, b.body(()).unwrap().into_parts().0);
    assert_eq!(lines.0, 1, "x-a, set by the first plugin");
    assert_eq!(header(&req.headers, "x-a"), "new");
    assert_eq!(header(&req.headers, "x-c"), "c");
    assert_eq!(header(&req.headers, "x-fill-0"), "(none)");
}
