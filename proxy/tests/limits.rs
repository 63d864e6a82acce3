//! Connection and body limits through the real `weft-proxy` binary, with raw loopback sockets:
//! clients that do not read (HTTP/1.1 and HTTP/2), stalled request and upstream bodies, silent
//! sockets and bare HTTP/2 prefaces, the connection caps (connections over them wait in the
//! listen backlog) and the per-address cap, idle and keep-alive timers, the
//! defaults that keep a slow log plugin from taking every arena slot, and the admin listener's
//! refusals and sanitised answers. Timeouts are configured short (hundreds of ms); every wait is
//! bounded by a generous deadline the old code (no such timers) ran past.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use common::{ProxyProcess, c_plugins, free_port, get, go_library, metric, scrape, wait_metrics};

/// Bytes of `/big` (far more than every socket buffer on the way).
const BIG: usize = 64 << 20;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A raw HTTP/1.1 upstream; every answer closes its connection. `/big`: 64 MiB; `/stall`: a head
/// promising 1 MB, 10 bytes, then silence; `/slow`: answers after 8 s; anything else: `ok`. A
/// request body is read whole (by `content-length`) before the answer, like an application.
async fn spawn_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(answer(s));
        }
    });
    addr
}

async fn answer(mut s: TcpStream) {
    let mut req = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let body_at = loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if let Some(i) = find(&req, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&req[..body_at]).to_ascii_lowercase();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = req.len() - body_at;
    while have < length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
    let head = |len: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n");
    let _ = match path.as_str() {
        "/big" => {
            let _ = s.write_all(head(BIG).as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..BIG / chunk.len() {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            Ok(())
        }
        "/stall" => {
            let _ = s.write_all(format!("{}0123456789", head(1_000_000)).as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(8)).await;
            s.write_all(format!("{}ok", head(2)).as_bytes()).await
        }
        _ => s.write_all(format!("{}ok", head(2)).as_bytes()).await,
    };
}

/// A proxy with the Go example library, an admin listener and `extra` top-level YAML, in front of
/// `upstream` (`up_extra` goes into the upstream's entry).
struct Setup {
    proxy: ProxyProcess,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn start(tag: &str, upstream: SocketAddr, extra: &str, up_extra: &str, plugins: &str, routes: &str) -> Setup {
    let (addr, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {addr}\nadmin: {{ listen: \"{admin}\" }}\n{extra}\nlibraries:\n  - {{ name: examples, path: {lib:?} }}\n\
         plugins:\n{plugins}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"]{up_extra} }}\nroutes:\n{routes}\n",
        lib = go_library("test").display().to_string()
    );
    let proxy = tokio::task::block_in_place(|| ProxyProcess::start(tag, &yaml, addr));
    Setup { proxy, addr, admin }
}

const TIMING: &str = "  - { name: timing, library: examples, plugin: timing-logger }";

/// A client with a 4 KiB receive buffer that sends `GET path` and reads only the response head.
async fn read_head_then_stop(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while find(&got, b"\r\n\r\n").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head within 10 s")
            .unwrap();
        assert_eq!(n, 1, "closed before the head: {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&got).into_owned())
}

/// Reads until the peer closes (EOF or reset); panics if it is still open after `within`.
/// Returns the bytes read.
async fn read_until_closed(s: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + within;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {within:?} ({} bytes read)", all.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn slots_in_use(admin: SocketAddr) -> f64 {
    metric(&scrape(admin).await, "weft_arena_slots_in_use")
}

fn timeouts(m: &common::Metrics, kind: &str) -> f64 {
    metric(m, &format!("weft_timeouts_total{{kind=\"{kind}\"}}"))
}

/// Polls `GET /small` until it answers 200; panics after `within` (the old code answered 503 for
/// as long as the non-reading clients stayed).
async fn wait_for_200(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, body) = get(addr, "/small", &[]).await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "still 503 after {within:?}: the slots stay taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 5: eight HTTP/1.1 clients that ask for a large body and never read it hold all eight
/// slots (a log phase keeps each until its body is dropped); the send timeout closes them and
/// plugin routes answer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_lose_their_slots() {
    let upstream = spawn_upstream().await;
    let s = start(
        "noread",
        upstream,
        "runtime: { slots: 8 }\nlimits: { send_timeout_ms: 3000 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut held = Vec::new();
    for _ in 0..8 {
        let (conn, head) = read_head_then_stop(s.addr, "/big").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(conn);
    }
    // Every slot is taken by a response the client does not read.
    assert_eq!(slots_in_use(s.admin).await, 8.0);
    wait_for_200(s.addr, Duration::from_secs(15)).await;
    let m = wait_metrics(s.admin, "slots back", |m| metric(m, "weft_arena_slots_in_use") == 0.0).await;
    assert!(timeouts(&m, "send") >= 8.0, "{m:?}");
    for mut conn in held {
        let got = read_until_closed(&mut conn, Duration::from_secs(10), "a non-reading client").await;
        assert!(got.len() < BIG, "the whole body arrived");
    }
}

/// Item 5 over HTTP/2: one connection, eight streams whose client grants no flow-control window
/// (SETTINGS_INITIAL_WINDOW_SIZE 0) while reading the connection itself; the send timeout resets
/// each stream and frees its slot. Also: the advertised stream limit is the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_without_window_lose_their_slots() {
    let upstream = spawn_upstream().await;
    let s = start(
        "h2noread",
        upstream,
        "runtime: { slots: 8 }\nlimits: { send_timeout_ms: 3000, http2_max_concurrent_streams: 8 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/big", s.addr)).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    assert_eq!(slots_in_use(s.admin).await, 8.0);
    wait_for_200(s.addr, Duration::from_secs(15)).await;
    for mut body in bodies {
        let end = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("the stream ends instead of waiting for window forever");
        let err = end.expect("reset, not a clean end").expect_err("no data was allowed");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    }
    let m = wait_metrics(s.admin, "slots back", |m| metric(m, "weft_arena_slots_in_use") == 0.0).await;
    assert!(timeouts(&m, "send") >= 8.0, "{m:?}");
    assert_eq!(client.current_max_send_streams(), 8, "SETTINGS_MAX_CONCURRENT_STREAMS");
}

/// Item 5: a route without a log phase needs its slot no longer than its last headers phase: a
/// client that does not read holds none, with the send timeout far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_is_freed_at_the_response_head_without_a_log_phase() {
    let upstream = spawn_upstream().await;
    let s = start(
        "nolog",
        upstream,
        "runtime: { slots: 2 }\nlimits: { send_timeout_ms: 60000 }",
        "",
        "  - { name: headers, library: examples, plugin: header-rewriter, config: { response_set: { x-rw: \"1\" } } }",
        "  - { path_prefix: /, upstream: up, plugins: [headers] }",
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let (conn, head) = read_head_then_stop(s.addr, "/big").await;
        assert!(head.contains("x-rw: 1"), "the plugin ran: {head}");
        held.push(conn);
    }
    wait_metrics(s.admin, "no slot held", |m| metric(m, "weft_arena_slots_in_use") == 0.0).await;
    let (status, headers, body) = get(s.addr, "/small", &[]).await;
    assert_eq!(
        (status.as_u16(), headers["x-rw"].to_str().unwrap()),
        (200, "1"),
        "{body}"
    );
    drop(held);
}

/// Item 5: a client that sends a request head and part of its body, then stalls: 408 once the
/// request body timeout passes, and the slot is back (the old code waited for the upstream's
/// 30 s timeout, holding the slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408() {
    let upstream = spawn_upstream().await;
    let s = start(
        "reqbody",
        upstream,
        "runtime: { slots: 8 }\nlimits: { request_body_timeout_ms: 500 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /upload HTTP/1.1\r\nhost: example.com\r\ncontent-length: 100000\r\n\r\nhello")
        .await
        .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10), "a stalled upload").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let m = wait_metrics(s.admin, "slots back", |m| metric(m, "weft_arena_slots_in_use") == 0.0).await;
    assert_eq!(timeouts(&m, "request_body"), 1.0, "{m:?}");
}

/// Item 5: an upstream that sends its head and ten bytes, then nothing: the response is cut off
/// after the upstream body timeout (the client sees the connection close early) and the slot
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_body_is_cut_off() {
    let upstream = spawn_upstream().await;
    let s = start(
        "upbody",
        upstream,
        "runtime: { slots: 8 }",
        ", body_timeout_ms: 500",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /stall HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10), "a stalled upstream body").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "the ten bytes, then the cut: {text}");
    let m = wait_metrics(s.admin, "slots back", |m| metric(m, "weft_arena_slots_in_use") == 0.0).await;
    assert_eq!(timeouts(&m, "upstream_body"), 1.0, "{m:?}");
}

/// Item 5 defaults: a log plugin that sleeps 5 s per call cannot take the arena. With 8 slots the
/// log queue defaults to 2, so at most 3 requests wait for their log phase; the rest drop their
/// log phase (counted) and every request is answered (the old 4096-long queue held all 8 slots,
/// and the 9th request got 503). Log phases on the log thread (`log_phase: thread`): inline, the
/// default, such a plugin holds serving threads instead, which the watchdog reports
/// (`e2e_process.rs`, `a_slow_inline_log_phase_runs_after_its_response_and_is_reported`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_log_plugin_cannot_take_every_slot() {
    let upstream = spawn_upstream().await;
    let s = start(
        "slowlog",
        upstream,
        "runtime: { slots: 8, log_phase: thread }",
        "",
        "  - { name: slowlog, library: examples, plugin: test-slow-log }",
        "  - { path_prefix: /, upstream: up, plugins: [slowlog] }",
    );
    for i in 0..12 {
        let (status, _, body) = get(s.addr, "/small", &[("x-test-log-sleep-ms", "5000")]).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let m = scrape(s.admin).await;
    assert!(metric(&m, "weft_arena_slots_in_use") <= 3.0, "{m:?}");
    assert!(metric(&m, "weft_log_phase_dropped_total") >= 1.0, "{m:?}");
}

/// Item 7: a socket that sends nothing, one that sends only the HTTP/2 preface, and one that
/// sends half a request head are closed within the header read timeout, on the proxy's and on
/// the admin listener (the old code kept the first two open past 40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_and_bare_prefaces_are_closed() {
    let upstream = spawn_upstream().await;
    let s = start(
        "silent",
        upstream,
        "limits: { header_read_timeout_ms: 500 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let openers: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\n",
    ];
    for (target, name) in [(s.addr, "proxy"), (s.admin, "admin")] {
        for opener in openers {
            let mut c = TcpStream::connect(target).await.unwrap();
            c.write_all(opener).await.unwrap();
            let what = format!("{name} socket after {:?}", String::from_utf8_lossy(opener));
            read_until_closed(&mut c, Duration::from_secs(5), &what).await;
        }
    }
    let m = scrape(s.admin).await;
    assert!(timeouts(&m, "header_read") >= 6.0, "{m:?}");
    // Still serving, with the default HTTP/2 stream limit advertised.
    let (status, _, _) = get(s.addr, "/small", &[]).await;
    assert_eq!(status, 200);
    let (client, conn) = h2::client::handshake(TcpStream::connect(s.addr).await.unwrap())
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/small", s.addr)).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(
        client.current_max_send_streams(),
        100,
        "default http2_max_concurrent_streams"
    );
}

/// Sends `GET /small` on `c` (keep-alive) and reads its answer; panics when none comes in 10 s.
async fn request_on(c: &mut TcpStream) {
    c.write_all(b"GET /small HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
}

/// Connects from `from` (any free port) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Waits until the readiness probe's connection is gone, so the test's connections are all.
async fn no_connection_open(admin: SocketAddr, open: &str) {
    wait_metrics(admin, "no connection open", |m| {
        m.get(open).copied().unwrap_or(0.0) == 0.0
    })
    .await;
}

/// `limit` (the listener's own `listen_max_connections`, or the process-wide
/// `limits.max_connections`) is 3: of five connections with a request each, three are
/// answered; the other two complete their TCP handshake but wait in the listen backlog, not
/// accepted, and are answered one by one as served connections close (none is closed on them).
async fn extra_connections_wait_in_the_backlog(tag: &str, limit: &str) {
    let upstream = spawn_upstream().await;
    let s = start(
        tag,
        upstream,
        &format!("workers: 2\n{limit}"),
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let open = r#"weft_connections_open{listener="proxy"}"#;
    let reached = r#"weft_connections_limit_reached_total{listener="proxy"}"#;
    no_connection_open(s.admin, open).await;
    let mut served = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        request_on(&mut c).await;
        served.push(c);
    }
    let mut waiting = Vec::new();
    for _ in 0..2 {
        // The handshake completes: the kernel queued the connection.
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /small HTTP/1.1\r\nhost: example.com\r\n\r\n")
            .await
            .unwrap();
        waiting.push(c);
    }
    let m = wait_metrics(s.admin, "a serving thread waiting for a permit", |m| {
        metric(m, reached) >= 1.0
    })
    .await;
    assert_eq!(metric(&m, open), 3.0, "{m:?}");
    // Not answered and not closed while the three stay (the old code closed them at once).
    for c in &mut waiting {
        let mut byte = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(500), c.read(&mut byte)).await;
        assert!(r.is_err(), "a connection over the limit got {r:?}");
    }
    for round in 0..2 {
        drop(served.pop());
        // One waiting connection is accepted per closed one, whichever thread it queued on.
        let answered = tokio::time::timeout(Duration::from_secs(10), first_answer(&mut waiting))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no waiting connection was answered"));
        served.push(waiting.remove(answered));
        let m = scrape(s.admin).await;
        assert_eq!(metric(&m, open), 3.0, "round {round}: {m:?}");
    }
    assert!(waiting.is_empty());
}

/// Reads from every connection until one has a whole `ok` answer; returns its index.
async fn first_answer(conns: &mut [TcpStream]) -> usize {
    let mut got = vec![Vec::new(); conns.len()];
    loop {
        let reads = conns.iter_mut().enumerate().map(|(i, c)| {
            Box::pin(async move {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).await.unwrap();
                (i, buf[..n].to_vec())
            })
        });
        let ((i, bytes), _, _) = futures_util::future::select_all(reads).await;
        assert!(!bytes.is_empty(), "connection {i} was closed instead of served");
        got[i].extend_from_slice(&bytes);
        if got[i].ends_with(b"\r\n\r\nok") {
            assert!(
                got[i].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&got[i])
            );
            return i;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listener_cap_wait_in_the_backlog() {
    extra_connections_wait_in_the_backlog("listencap", "listen_max_connections: 3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_process_cap_wait_in_the_backlog() {
    extra_connections_wait_in_the_backlog("cap", "limits: { max_connections: 3 }").await;
}

/// `max_connections_per_ip: 2`: a third connection from 127.0.0.1 is closed at once (counted),
/// while one from 127.0.0.2 is served; when one of the two goes, 127.0.0.1 gets a slot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_cap_closes_the_connection_over_it() {
    let upstream = spawn_upstream().await;
    let s = start(
        "perip",
        upstream,
        "limits: { max_connections_per_ip: 2 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let open = r#"weft_connections_open{listener="proxy"}"#;
    let refused = r#"weft_connections_refused_total{listener="proxy"}"#;
    no_connection_open(s.admin, open).await;
    let mut two = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.1", s.addr).await;
        request_on(&mut c).await;
        two.push(c);
    }
    let mut third = connect_from("127.0.0.1", s.addr).await;
    let _ = third
        .write_all(b"GET /small HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await;
    let got = read_until_closed(&mut third, Duration::from_secs(5), "a third connection from 127.0.0.1").await;
    assert!(got.is_empty(), "answered: {:?}", String::from_utf8_lossy(&got));
    let mut other = connect_from("127.0.0.2", s.addr).await;
    request_on(&mut other).await;
    let m = scrape(s.admin).await;
    assert_eq!((metric(&m, refused), metric(&m, open)), (1.0, 3.0), "{m:?}");
    drop(two.pop());
    wait_metrics(s.admin, "the closed connection gone", |m| metric(m, open) == 2.0).await;
    let mut again = connect_from("127.0.0.1", s.addr).await;
    request_on(&mut again).await;
}

/// Item 7: idle connections are closed: HTTP/1.1 keep-alive after its response, HTTP/2 (with
/// GOAWAY) when no stream is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let upstream = spawn_upstream().await;
    let s = start(
        "idle",
        upstream,
        "limits: { idle_timeout_ms: 600 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut h1 = TcpStream::connect(s.addr).await.unwrap();
    h1.write_all(b"GET /small HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut h1, Duration::from_secs(5), "an idle HTTP/1.1 connection").await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    let (client, conn) = h2::client::handshake(TcpStream::connect(s.addr).await.unwrap())
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/small", s.addr)).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .expect("closed cleanly (GOAWAY)");
    let m = scrape(s.admin).await;
    assert!(timeouts(&m, "idle") >= 2.0, "{m:?}");
}

/// Item 7: a keep-alive client that starts its next request head and never finishes it holds no
/// request, so the idle timeout closes it (graceful close, then the drop `header_read_timeout`
/// later), no sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_that_never_ends_is_closed_as_idle() {
    let upstream = spawn_upstream().await;
    let s = start(
        "idlehead",
        upstream,
        "limits: { idle_timeout_ms: 600, header_read_timeout_ms: 400 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    request_on(&mut c).await;
    c.write_all(b"GET /small HTTP/1.1\r\nhost: exam").await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(5), "a connection with half a head").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed after {took:?}, before the idle timeout"
    );
    assert!(got.is_empty(), "answered: {:?}", String::from_utf8_lossy(&got));
    assert!(timeouts(&scrape(s.admin).await, "idle") >= 1.0);
}

/// An HTTP/2 frame header plus payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Item 7: an HTTP/2 client that sends a request and then never answers a keep-alive ping is
/// closed after the ping timeout, while its request still waits for a slow upstream (so neither
/// the idle nor the send timer is involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_that_ignores_pings_is_closed() {
    let upstream = spawn_upstream().await;
    let s = start(
        "h2ping",
        upstream,
        "limits: { http2_keep_alive_interval_ms: 300, http2_keep_alive_timeout_ms: 300 }",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // HEADERS, END_STREAM | END_HEADERS: GET http://x/slow (HPACK: indexed :method GET,
    // :scheme http; literal :path and :authority with indexed names).
    let mut block = vec![0x82, 0x86, 0x44, 5];
    block.extend_from_slice(b"/slow");
    block.extend_from_slice(&[0x41, 1, b'x']);
    out.extend(frame(0x1, 0x5, 1, &block));
    c.write_all(&out).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut c, Duration::from_secs(5), "an HTTP/2 client ignoring pings").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client can see the close before the proxy's connection task has ended and counted
    // the timeout (a scrape right after the close once found the connection still open and the
    // count at 0: about one run in seven), so the count is waited for.
    let m = wait_metrics(s.admin, "the keep-alive timeout counted", |m| {
        timeouts(m, "http2_keep_alive") >= 1.0
    })
    .await;
    assert_eq!(timeouts(&m, "http2_keep_alive"), 1.0, "{m:?}");
}

/// Item 8 through the process: `POST /reload` without `X-Weft-Admin` (what a cross-site form
/// can send) is refused and reloads nothing; a reload rejected because a C plugin's init fails
/// with a lying error length answers 400 naming only the config field: no file path, no NUL,
/// nothing unprintable. The details (with the plugin's sanitised text) are in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_needs_the_header_and_answers_without_paths() {
    let upstream = spawn_upstream().await;
    let s = start(
        "admin",
        upstream,
        "",
        "",
        TIMING,
        "  - { path_prefix: /, upstream: up, plugins: [timing] }",
    );
    let hostile = c_plugins("plain").join("libweft_c_hostile.so");
    let text = std::fs::read_to_string(&s.proxy.config).unwrap().replace(
        "plugins:\n",
        &format!(
            "  - {{ name: hostile, path: {:?} }}\nplugins:\n  - {{ name: bad, library: hostile, plugin: hostile, config: \"bad\" }}\n",
            hostile.display().to_string()
        ),
    );
    std::fs::write(&s.proxy.config, text).unwrap();
    let url = format!("http://{}/reload", s.admin);
    let post = |headers: &'static [(&'static str, &'static str)]| {
        let url = url.clone();
        async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            let mut req = http::Request::post(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let body = http_body_util::BodyExt::boxed(http_body_util::Full::new(Bytes::from_static(b"x=1")));
            let resp: http::Response<hyper::body::Incoming> = client.request(req.body(body).unwrap()).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = post(&[("content-type", "application/x-www-form-urlencoded")]).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&[("x-weft-admin", "1"), ("origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(!s.proxy.stderr().contains("config reload"), "{}", s.proxy.stderr());

    let (status, body) = post(&[("x-weft-admin", "1")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("  plugins[0]\n"), "{body}");
    let dir = s.proxy.config.parent().unwrap().display().to_string();
    assert!(!body.contains(&dir) && !body.contains(".so"), "no paths: {body}");
    assert!(
        body.len() < 1024 && body.chars().all(|c| c == '\n' || (' '..='~').contains(&c)),
        "{body:?}"
    );
    let log = tokio::task::block_in_place(|| s.proxy.wait_log("hostile init refused"));
    let line = log.lines().find(|l| l.contains("hostile init refused")).unwrap();
    assert!(!line.contains('\0') && line.len() < 1024, "{line:?}");
}
