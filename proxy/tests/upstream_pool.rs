//! The upstream connection pool (`proxy/src/pool.rs`) against hand-written upstreams that close,
//! stall and count connections exactly as a test needs: a request's upstream exchange runs in
//! the request's own task, kept-alive connections are reused, and a connection is never reused
//! when the upstream closed it or when a response on it was not read to its end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use weft_proxy::{Config, Proxy};

/// What the upstream does with one request, by path.
#[derive(Clone, Copy)]
enum Answer {
    /// `200`, body = the path, keep-alive.
    Echo,
    /// Like `Echo`, then closes the connection without saying so in the response.
    EchoThenClose,
    /// Like `Echo`, then closes the connection once it has been idle for 20 ms.
    EchoThenCloseWhenIdle,
    /// Waits for a release (one message on the gate) before answering like `Echo`.
    Held,
    /// A 10 MB response of which only the first 64 KiB is ever sent.
    Endless,
    /// Like `Echo` on a new connection; on one that already served a request, reads the
    /// request and closes without answering (the upstream's idle close crossing it).
    DropWhenReused,
}

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    gate: mpsc::Sender<()>,
}

/// A blocking HTTP/1.1 upstream, a thread per connection; GET requests only.
fn upstream(answer: fn(&str) -> Answer) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (gate, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Arc::new(std::sync::Mutex::new(gate_rx));
    let (acc, srv) = (Arc::clone(&accepted), Arc::clone(&served));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            acc.fetch_add(1, Ordering::SeqCst);
            let (srv, gate_rx) = (Arc::clone(&srv), Arc::clone(&gate_rx));
            thread::spawn(move || serve(stream, answer, &srv, &gate_rx));
        }
    });
    Upstream {
        addr,
        accepted,
        served,
        gate,
    }
}

fn serve(
    stream: TcpStream,
    answer: fn(&str) -> Answer,
    served: &AtomicUsize,
    gate: &std::sync::Mutex<mpsc::Receiver<()>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    for nth in 0.. {
        let Some(path) = read_head(&mut reader) else { return };
        served.fetch_add(1, Ordering::SeqCst);
        let how = answer(&path);
        if let (Answer::DropWhenReused, 1..) = (how, nth) {
            return;
        }
        if let Answer::Endless = how {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n");
            let _ = out.write_all(&[b'x'; 64 * 1024]);
            // Hold the rest back until the proxy closes the connection.
            let _ = reader.read(&mut [0u8; 1]);
            return;
        }
        if let Answer::Held = how {
            let _ = gate.lock().unwrap().recv();
        }
        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len());
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
        match how {
            Answer::EchoThenClose => return,
            Answer::EchoThenCloseWhenIdle => {
                thread::sleep(Duration::from_millis(20));
                return;
            }
            _ => {}
        }
    }
}

/// Reads a request head; returns its path, or None at EOF.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split(' ').nth(1)?.to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some(path);
        }
    }
}

async fn proxy_to(upstream: SocketAddr) -> SocketAddr {
    proxy_with(upstream, "").await
}

/// A proxy whose upstream entry has `extra` (`, key: value`) after its response timeout.
async fn proxy_with(upstream: SocketAddr, extra: &str) -> SocketAddr {
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         upstreams: [{{ name: up, addresses: [\"{upstream}\"], timeout_ms: 5000{extra} }}]\n\
         routes: [{{ name: all, upstream: up }}]\n"
    );
    let config = Config::parse(&yaml, "test.yaml", Path::new(".")).expect("valid config");
    let proxy = Proxy::from_config(&config).expect("proxy starts");
    weft_proxy::spawn(proxy, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// One GET over a new connection from a plain thread (so the client adds no task to the
/// proxy's runtime); returns the status and the body.
async fn get(proxy: SocketAddr, path: &str) -> (u16, String) {
    request(proxy, "GET", path).await
}

/// [`get`] with another method (no body).
async fn request(proxy: SocketAddr, method: &'static str, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        let status = got.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, got.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned())
    })
    .await
    .unwrap()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The no-hand-off property of the upstream side: a request in flight costs one task (its
/// client connection's) however many upstream connections are open, because the request polls
/// its upstream connection itself. hyper-util's pooled client ran a task per connection.
#[tokio::test(flavor = "current_thread")]
async fn upstream_exchanges_run_in_the_request_task() {
    let up = upstream(|path| {
        if path.starts_with("/held") {
            Answer::Held
        } else {
            Answer::Echo
        }
    });
    let proxy = proxy_to(up.addr).await;
    assert_eq!(get(proxy, "/warm").await, (200, "/warm".into()));
    // Two requests under way together: the second one's request is held to the end of the
    // scheduler pass, which starts the thread's flusher task (pool/held.rs; one per thread).
    let served = Arc::clone(&up.served);
    let warm: Vec<_> = (0..2).map(|_| tokio::spawn(get(proxy, "/held/warm"))).collect();
    eventually("both warm-up requests to reach the upstream", || {
        served.load(Ordering::SeqCst) == 3
    })
    .await;
    for c in warm {
        up.gate.send(()).unwrap();
        assert_eq!(c.await.unwrap().0, 200);
    }
    // Left alive: the accept loop, this thread's pool reaper and its flusher of held requests.
    // A task per pooled upstream connection would make it five.
    let mut idle = 0;
    for _ in 0..100 {
        idle = alive_tasks();
        if idle <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        idle, 3,
        "tasks alive with no request in flight (the warm-up connections are idle)"
    );

    const IN_FLIGHT: usize = 4;
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|i| tokio::spawn(get(proxy, if i == 0 { "/held/0" } else { "/held/n" })))
        .collect();
    eventually("every request to reach the upstream", || {
        served.load(Ordering::SeqCst) == 3 + IN_FLIGHT
    })
    .await;
    // The spawned `get`s wait in spawn_blocking: their tasks count too.
    let busy = alive_tasks() - IN_FLIGHT;
    assert_eq!(
        busy - idle,
        IN_FLIGHT,
        "{IN_FLIGHT} requests in flight on {IN_FLIGHT} upstream connections should add {IN_FLIGHT} tasks"
    );
    for _ in 0..IN_FLIGHT {
        up.gate.send(()).unwrap();
    }
    for c in clients {
        assert_eq!(c.await.unwrap().0, 200);
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        IN_FLIGHT,
        "the warm-up connection was reused"
    );
}

/// Sequential requests reuse one kept-alive connection.
#[tokio::test(flavor = "current_thread")]
async fn sequential_requests_reuse_one_connection() {
    let up = upstream(|_| Answer::Echo);
    let proxy = proxy_to(up.addr).await;
    for i in 0..20 {
        let path = format!("/seq/{i}");
        assert_eq!(get(proxy, &path).await, (200, path));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

/// A pooled connection the upstream closed while it was idle is noticed and not used: the
/// next request goes out on a new connection and succeeds.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_closed_while_idle_is_not_used() {
    let up = upstream(|_| Answer::EchoThenCloseWhenIdle);
    let proxy = proxy_to(up.addr).await;
    for i in 0..5 {
        let path = format!("/idle/{i}");
        assert_eq!(get(proxy, &path).await, (200, path));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
}

/// An upstream that closes right after each response (without `connection: close`): every
/// request still gets its answer, each on a new connection.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_closed_after_its_response_is_replaced() {
    let up = upstream(|_| Answer::EchoThenClose);
    let proxy = proxy_to(up.addr).await;
    for i in 0..20 {
        let path = format!("/close/{i}");
        assert_eq!(get(proxy, &path).await, (200, path));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 20);
}

/// A pooled connection closed before it answered a request it was sent (the upstream's idle
/// close crossing the request): a bodiless request of an idempotent method goes again on a new
/// connection, once; a POST, which may have had an effect, is answered 502.
#[tokio::test(flavor = "current_thread")]
async fn an_idempotent_request_a_reused_connection_dropped_goes_again_on_a_new_one() {
    let up = upstream(|_| Answer::DropWhenReused);
    let proxy = proxy_to(up.addr).await;
    assert_eq!(get(proxy, "/first").await, (200, "/first".into()));
    assert_eq!(get(proxy, "/again").await, (200, "/again".into()));
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "the dropped one went on a new connection"
    );
    assert_eq!(up.served.load(Ordering::SeqCst), 3);
    assert_eq!(
        request(proxy, "DELETE", "/idempotent").await,
        (200, "/idempotent".into())
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(request(proxy, "POST", "/not-again").await.0, 502);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3, "a POST is not sent again");
    assert_eq!(up.served.load(Ordering::SeqCst), 6);
}

/// A response the client abandoned halfway leaves the rest of it on its connection: that
/// connection is closed, never handed to the next request (which would read the old bytes).
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_response_closes_its_connection() {
    let up = upstream(|path| {
        if path == "/endless" {
            Answer::Endless
        } else {
            Answer::Echo
        }
    });
    let proxy = proxy_to(up.addr).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.write_all(b"GET /endless HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).unwrap();
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&first[..n])
        );
    })
    .await
    .unwrap();
    for i in 0..3 {
        let path = format!("/after/{i}");
        assert_eq!(get(proxy, &path).await, (200, path));
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "the abandoned connection was reused"
    );
}

/// A connect that never completes (the upstream's accept queue is full, so the kernel drops
/// the SYNs) ends at `connect_timeout_ms` with a 502, long before the response timeout.
#[tokio::test(flavor = "current_thread")]
async fn a_connect_that_hangs_is_a_502_at_the_connect_timeout() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted) until a connect no longer completes.
    let mut held = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(s);
        assert!(
            held.len() < 64,
            "the kernel keeps accepting: cannot make a connect hang"
        );
    }
    let proxy = proxy_with(addr, ", connect_timeout_ms: 300").await;
    let started = std::time::Instant::now();
    let (status, _) = get(proxy, "/hang").await;
    let took = started.elapsed();
    assert_eq!(status, 502);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
