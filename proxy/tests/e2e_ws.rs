//! WebSocket end to end: the real `weft-proxy` binary, the Go plugin library built by
//! the Go toolchain, real WebSocket clients (tokio-tungstenite). Pass-through to an upstream
//! WebSocket server of this file, auth refusing an upgrade, a plugin-served echo (ordering under
//! load), rooms with many clients, broadcast across two proxies through a real nats-server, an
//! oversized frame, a slow reader, an abrupt disconnect and a plugin panic.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use common::{ProxyProcess, free_port, go_library, nats_server_bin, wait_for};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const LONG: Duration = Duration::from_secs(30);

/// A WebSocket echo server standing in for an upstream; answers every message with the same.
async fn ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn yaml(addr: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"listen: {addr}
runtime: {{ slots: 2048 }}
{extra}
libraries:
  - {{ name: go, path: "{lib}" }}
plugins:
  - {{ name: echo, library: go, plugin: test-ws-echo }}
  - {{ name: echo-open, library: go, plugin: test-ws-echo, failure: open }}
  - {{ name: chat, library: go, plugin: chat }}
  - {{ name: auth, library: go, plugin: bearer-auth, config: {{ tokens: [s3cret] }} }}
upstreams:
  - {{ name: up, addresses: ["{upstream}"] }}
routes:
  - {{ path_prefix: /echo, upstream: up, websocket: {{ plugin: echo, max_frame_bytes: 4096, max_message_bytes: 8192 }} }}
  - {{ path_prefix: /echo-open, upstream: up, websocket: {{ plugin: echo-open }} }}
  - {{ path_prefix: /chat, upstream: up, websocket: {{ plugin: chat, send_queue: 64, max_message_bytes: 16384 }} }}
  - {{ path_prefix: /auth, upstream: up, plugins: [auth] }}
  - {{ path_prefix: /, upstream: up }}
"#,
        lib = go_library("test").display()
    )
}

async fn start(tag: &str, extra: &str) -> ProxyProcess {
    let up = ws_upstream().await;
    let addr = free_port();
    let yaml = yaml(addr, up, extra);
    let tag = tag.to_owned();
    tokio::task::spawn_blocking(move || ProxyProcess::start(&tag, &yaml, addr))
        .await
        .unwrap()
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tokio::time::timeout(LONG, connect_async(format!("ws://{addr}{path}")))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The next data or close message (pings and pongs skipped); None when the stream ends.
async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    loop {
        match tokio::time::timeout(LONG, ws.next())
            .await
            .expect("no message within 30 s")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

async fn text(ws: &mut Ws) -> String {
    match next(ws).await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads until the close frame; returns its code (None: the connection ended without one).
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match next(ws).await {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn join(ws: &mut Ws, room: &str) {
    ws.send(Message::text(format!("/join {room}"))).await.unwrap();
    assert_eq!(text(ws).await, format!("joined {room}"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tunnels_to_the_upstream() {
    let proxy = start("ws-pass", "").await;
    let mut ws = connect(proxy.addr, "/plain").await;
    ws.send(Message::text("hello upstream")).await.unwrap();
    assert_eq!(text(&mut ws).await, "hello upstream");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    match next(&mut ws).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
        other => panic!("expected binary, got {other:?}"),
    }
    // A large message crosses the tunnel byte for byte (no frame limits on a tunnel).
    let big = "x".repeat(200_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(text(&mut ws).await, big);
    ws.close(None).await.unwrap();
    // Plain HTTP on the same proxy still works next to tunnels.
    assert!(std::net::TcpStream::connect(proxy.addr).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plugin_refuses_an_upgrade() {
    let proxy = start("ws-auth", "").await;
    match connect_async(format!("ws://{}/auth", proxy.addr)).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    let mut req = format!("ws://{}/auth", proxy.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let (mut ws, resp) = connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("through auth")).await.unwrap();
    assert_eq!(text(&mut ws).await, "through auth");
}

/// The WebSocket phases read the upgrade request as the request-headers phase left it: a header
/// the plugin set there is in the view of its message calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_phases_see_the_request_headers_phase_changes() {
    let proxy = start("ws-seen", "").await;
    let mut ws = connect(proxy.addr, "/echo").await;
    ws.send(Message::text("seen")).await.unwrap();
    assert_eq!(text(&mut ws).await, "seen yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_echo_keeps_order_under_load() {
    let proxy = start("ws-echo", "").await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let ws = connect(addr, "/echo").await;
            let (mut tx, mut rx) = ws.split();
            let n = 1000;
            let writer = tokio::spawn(async move {
                for i in 0..n {
                    tx.send(Message::text(format!("c{c} m{i}"))).await.unwrap();
                }
                tx.send(Message::binary(vec![c as u8; 100])).await.unwrap();
                tx
            });
            for i in 0..n {
                let m = tokio::time::timeout(LONG, rx.next()).await.unwrap().unwrap().unwrap();
                assert_eq!(m, Message::text(format!("c{c} m{i}")), "connection {c} out of order");
            }
            let m = tokio::time::timeout(LONG, rx.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(m, Message::binary(vec![c as u8; 100]));
            let mut ws = writer.await.unwrap().reunite(rx).unwrap();
            ws.send(Message::text("close")).await.unwrap();
            assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4000)));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_with_many_clients() {
    let proxy = start("ws-room", "").await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut ws = connect(proxy.addr, "/chat").await;
        join(&mut ws, "many").await;
        clients.push(ws);
    }
    clients[17].send(Message::text("hello everyone")).await.unwrap();
    for ws in &mut clients {
        assert_eq!(text(ws).await, "hello everyone");
    }
    // Leaving stops delivery.
    clients[0].send(Message::text("/leave many")).await.unwrap();
    assert_eq!(text(&mut clients[0]).await, "left many");
    clients[1].send(Message::text("second")).await.unwrap();
    for ws in clients.iter_mut().skip(1) {
        assert_eq!(text(ws).await, "second");
    }
    clients[0].send(Message::text("/join probe")).await.unwrap();
    assert_eq!(
        text(&mut clients[0]).await,
        "joined probe",
        "a left client got a room message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let proxy = start("ws-big", "").await;
    let mut ws = connect(proxy.addr, "/echo").await;
    ws.send(Message::text("small")).await.unwrap();
    assert_eq!(text(&mut ws).await, "small");
    // max_frame_bytes is 4096.
    ws.send(Message::binary(vec![7u8; 10_000])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
    // The proxy keeps serving.
    let mut ws = connect(proxy.addr, "/echo").await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(text(&mut ws).await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_panic_closes_that_connection_with_1011() {
    let proxy = start("ws-panic", "").await;
    let mut a = connect(proxy.addr, "/echo").await;
    let mut b = connect(proxy.addr, "/echo").await;
    a.send(Message::text("panic")).await.unwrap();
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Error));
    b.send(Message::text("alive")).await.unwrap();
    assert_eq!(text(&mut b).await, "alive");
    // Log lines reach stderr through the writer thread: wait for it.
    tokio::task::block_in_place(|| proxy.wait_log("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_plugin_panic_keeps_the_connection() {
    let proxy = start("ws-panic-open", "").await;
    let mut a = connect(proxy.addr, "/echo-open").await;
    a.send(Message::text("panic")).await.unwrap();
    // The panicking message got no echo; the next one does, on the same connection.
    a.send(Message::text("still here")).await.unwrap();
    assert_eq!(text(&mut a).await, "still here");
    let log = proxy.wait_log("fail-open");
    assert!(log.contains("echo-open"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_runs_the_close_phase() {
    let proxy = start("ws-abrupt", "").await;
    let mut a = connect(proxy.addr, "/chat").await;
    let mut b = connect(proxy.addr, "/chat").await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    // Drop A's socket without a close frame.
    match a.into_inner() {
        MaybeTlsStream::Plain(tcp) => drop(tcp),
        _ => unreachable!(),
    }
    let bye = text(&mut b).await;
    assert!(bye.starts_with("* ") && bye.ends_with(" left"), "{bye}");
    b.send(Message::text("after")).await.unwrap();
    assert_eq!(text(&mut b).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_and_memory_stays_bounded() {
    let proxy = start("ws-slow", "").await;
    let pid = proxy.child.id();
    let mut slow = connect(proxy.addr, "/chat").await;
    join(&mut slow, "flood").await;
    let mut fast = connect(proxy.addr, "/chat").await;
    join(&mut fast, "flood").await;
    let before = rss_kib(pid);
    let (mut tx, mut rx) = fast.split();
    // The fast client reads its own copies.
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
            n += 1;
        }
        n
    });
    let payload = "p".repeat(16 * 1024);
    for _ in 0..4000 {
        tx.send(Message::text(payload.clone())).await.unwrap();
    }
    let peak = rss_kib(pid);
    // 64 MiB of broadcasts went out; the slow client's queue holds 64 messages.
    assert!(
        peak < before + 48 * 1024,
        "RSS grew from {before} KiB to {peak} KiB while a client did not read"
    );
    // The slow client finds its connection closed (1008 if the close frame got through, or the
    // end of the stream) after what was buffered.
    let mut got = 0;
    let code = loop {
        match next(&mut slow).await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => got += 1,
            Some(Err(_)) | None => break None,
        }
    };
    assert!(
        got < 4000,
        "the slow client got every message ({got}): it was never closed"
    );
    assert!(
        code.is_none() || code == Some(CloseCode::Policy),
        "unexpected close code {code:?}"
    );
    assert!(reader.await.unwrap() > 0);
}

// ---- across two proxies through NATS ----

struct NatsServer(Child);

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_a_room_on_another_proxy_through_nats() {
    let Some(bin) = nats_server_bin() else { return };
    let port = free_port().port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let _nats = NatsServer(child);
    let nats_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("nats-server to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(nats_addr).is_ok()
    });
    let extra = format!("nats: {{ url: \"nats://127.0.0.1:{port}\" }}");
    let p1 = start("ws-nats-1", &extra).await;
    let p2 = start("ws-nats-2", &extra).await;
    let mut a = connect(p1.addr, "/chat").await;
    let mut b = connect(p2.addr, "/chat").await;
    let mut c = connect(p2.addr, "/chat").await;
    join(&mut a, "x").await;
    join(&mut b, "x").await;
    join(&mut c, "x").await;
    // The subscription is made at start-up; retry the first broadcast until it crosses (the
    // proxies' NATS connections come up asynchronously).
    let mut crossed = false;
    for i in 0..50 {
        let probe = format!("probe {i}");
        a.send(Message::text(probe.clone())).await.unwrap();
        assert_eq!(text(&mut a).await, probe, "the sender's own copy comes once, locally");
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), next(&mut b)).await {
            let m = m.unwrap().unwrap();
            assert!(m.to_text().unwrap().starts_with("probe"), "{m:?}");
            assert!(text(&mut c).await.starts_with("probe"));
            crossed = true;
            break;
        }
    }
    assert!(crossed, "no broadcast crossed to the other proxy");
    // Drain probes C and B might still hold, then check exactly-once delivery both ways.
    b.send(Message::text("from b")).await.unwrap();
    loop {
        let m = text(&mut a).await;
        if m == "from b" {
            break;
        }
        assert!(m.starts_with("probe"), "{m}");
    }
    for ws in [&mut b, &mut c] {
        loop {
            if text(ws).await == "from b" {
                break;
            }
        }
    }
    a.send(Message::text("last")).await.unwrap();
    for ws in [&mut a, &mut b, &mut c] {
        let mut m = text(ws).await;
        while m.starts_with("probe") {
            m = text(ws).await; // a late probe of the start-up loop
        }
        assert_eq!(m, "last", "a broadcast arrived twice or out of order");
    }
}
