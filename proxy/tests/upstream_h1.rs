//! The upstream HTTP/1.1 client (`proxy/src/h1/`, driven by `proxy/src/pool.rs`) through the
//! binary, against a raw-socket upstream that sends exactly the bytes a test needs: chunked
//! bodies (extensions, trailers), read-to-close bodies, informational heads, malformed framing
//! (a 502, never a guess), and bytes after a response (its connection is not reused).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{ProxyProcess, free_port};

/// The raw response for a request path; `None` closes the connection without an answer.
fn answer(path: &str) -> &'static [u8] {
    match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n",
        "/close" => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the upstream closes",
        "/http10" => b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nold ok",
        "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\ncreated",
        "/extra" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
        "/te-and-cl" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "/not-chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhello",
        "/bad-chunk" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "/garbage" => b"HTTP/1.1 2x0 OK\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    }
}

/// Answers that end their connection (a read-to-close body, or nothing that could follow).
fn closes(path: &str) -> bool {
    path == "/close" || path == "/http10"
}

/// Each request as it arrived: its head (lowercased), then its decoded body.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Requests,
}

fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Requests::default();
    let (acc, reqs) = (Arc::clone(&accepted), Arc::clone(&requests));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            acc.fetch_add(1, Ordering::SeqCst);
            let reqs = Arc::clone(&reqs);
            thread::spawn(move || serve(stream, &reqs));
        }
    });
    Upstream {
        addr,
        accepted,
        requests,
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<(String, Vec<u8>)>>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(head) = read_head(&mut reader) {
        let Some(body) = read_body(&mut reader, &head) else {
            return;
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        requests.lock().unwrap().push((head, body));
        if out.write_all(answer(&path)).is_err() || closes(&path) {
            return;
        }
    }
}

/// A request head, lowercased; None at EOF.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head.to_ascii_lowercase());
        }
        head.push_str(&line);
    }
}

/// The request body the head announces (content-length or chunked), decoded.
fn read_body(reader: &mut BufReader<TcpStream>, head: &str) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if head.contains("transfer-encoding: chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    body.resize(len, 0);
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Sends `request` (a whole raw request, `connection: close`) from a plain thread; returns the
/// response as text.
async fn send(proxy: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .unwrap()
}

async fn get(proxy: SocketAddr, path: &str) -> String {
    send(
        proxy,
        format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"),
    )
    .await
}

fn status(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

/// The body of a response the proxy sent with `content-length` or chunked (decoded).
fn body(resp: &str) -> String {
    let (head, rest) = resp.split_once("\r\n\r\n").expect("a whole head");
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return rest.to_owned();
    }
    let (mut out, mut rest) = (String::new(), rest);
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// One serving thread (so one idle pool: reuse is countable), and no ejection for the 502s.
fn start(upstream: SocketAddr, tag: &str) -> ProxyProcess {
    let addr = free_port();
    let yaml = format!(
        "listen: {addr}\nworkers: 1\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"], retries: 0, ejection: {{ consecutive_failures: 100 }} }}\nroutes:\n  - {{ path_prefix: /, upstream: up }}\n"
    );
    ProxyProcess::start(tag, &yaml, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_read_to_close_http10_and_informational_responses_arrive_whole() {
    let up = upstream();
    let proxy = tokio::task::block_in_place(|| start(up.addr, "h1-bodies"));
    let resp = get(proxy.addr, "/chunked").await;
    assert_eq!((status(&resp), body(&resp).as_str()), ("200", "hello, world"), "{resp}");
    let resp = get(proxy.addr, "/close").await;
    assert_eq!(
        (status(&resp), body(&resp).as_str()),
        ("200", "until the upstream closes"),
        "{resp}"
    );
    let resp = get(proxy.addr, "/http10").await;
    assert_eq!((status(&resp), body(&resp).as_str()), ("200", "old ok"), "{resp}");
    let resp = get(proxy.addr, "/continue").await;
    assert_eq!((status(&resp), body(&resp).as_str()), ("201", "created"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_a_502() {
    let up = upstream();
    let proxy = tokio::task::block_in_place(|| start(up.addr, "h1-malformed"));
    for path in ["/te-and-cl", "/two-lengths", "/not-chunked", "/garbage"] {
        let resp = get(proxy.addr, path).await;
        assert_eq!(status(&resp), "502", "{path}: {resp}");
    }
    // A bad chunk comes after the head: the client's response is cut off (or never starts),
    // never ended as if complete.
    let resp = get(proxy.addr, "/bad-chunk").await;
    assert!(!resp.contains("hello"), "{resp:?}");
    assert!(
        !resp.ends_with("0\r\n\r\n"),
        "a cut response must not look complete: {resp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_after_whole_bodies_only() {
    let up = upstream();
    let proxy = tokio::task::block_in_place(|| start(up.addr, "h1-reuse"));
    for _ in 0..3 {
        let resp = get(proxy.addr, "/chunked").await;
        assert_eq!(body(&resp), "hello, world");
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "chunked responses keep the connection"
    );

    // Bytes after a response were not asked for: that connection is closed, and the next
    // request gets its own answer on a new one, never the stale bytes.
    let resp = get(proxy.addr, "/extra").await;
    assert_eq!(body(&resp), "first");
    let resp = get(proxy.addr, "/plain").await;
    assert_eq!((status(&resp), body(&resp).as_str()), ("200", "ok"), "{resp}");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

    // A read-to-close body ends its connection.
    get(proxy.addr, "/close").await;
    let resp = get(proxy.addr, "/plain").await;
    assert_eq!(body(&resp), "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_framed_as_hyper_framed_them() {
    let up = upstream();
    let proxy = tokio::task::block_in_place(|| start(up.addr, "h1-requests"));
    let sized = "POST /sized HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    assert_eq!(body(&send(proxy.addr, sized.into()).await), "ok");
    let chunked = "POST /chunked-in HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    assert_eq!(body(&send(proxy.addr, chunked.into()).await), "ok");
    let requests = up.requests.lock().unwrap().clone();
    let (head, data) = &requests[0];
    assert!(head.starts_with("post /sized http/1.1\r\n"), "{head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    assert_eq!(data, b"hello");
    let (head, data) = &requests[1];
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(data, b"abcdefg");
}
