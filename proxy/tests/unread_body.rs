//! A response sent before its request body was read says `Connection: close`: hyper closes such
//! a connection after the response (the unread rest cannot be told from a next request), and a
//! keep-alive client that was not told reused it for its next request, which then failed with no
//! response at all. Found by the soak runner (benches/src/bin/soak): POSTs answered 502 while an
//! upstream was down, then GETs on the same pooled connections failing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proxy::demo::spawn_demo_upstream;

use common::{ProxyProcess, free_port};

/// Reads one response head (lowercased) and how many body bytes came with it, failing after 10 s.
async fn head(s: &mut TcpStream) -> (String, usize) {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.expect("read");
            assert!(
                n > 0,
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&b[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response head within 10 s");
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase(),
        buf.len() - end - 4,
    )
}

/// Reads (and drops) a `content-length` body after `head`.
async fn skip_body(s: &mut TcpStream, head: &str, already: usize) {
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut rest = vec![0u8; len.saturating_sub(already)];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut rest))
        .await
        .expect("body within 10 s")
        .expect("body");
}

async fn start() -> (ProxyProcess, SocketAddr) {
    let upstream = spawn_demo_upstream("127.0.0.1:0".parse().unwrap()).await;
    // Nothing listens on a port just freed: connecting to it is refused.
    let dead = free_port();
    let addr = free_port();
    let yaml = format!(
        "listen: {addr}\nupstreams:\n  - {{ name: up, addresses: [\"{upstream}\"] }}\n  - {{ name: dead, addresses: [\"{dead}\"] }}\nroutes:\n  - {{ path_prefix: /dead, upstream: dead }}\n  - {{ path_prefix: /, upstream: up }}\n"
    );
    let proxy = tokio::task::block_in_place(|| ProxyProcess::start("unread-body", &yaml, addr));
    (proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answered_before_the_body_was_read_closes_the_connection_and_says_so() {
    let (_proxy, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /dead HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'a'; 1000]).await.unwrap();
    let (h, _) = head(&mut s).await;
    assert!(h.starts_with("http/1.1 502"), "{h}");
    assert!(h.contains("\r\nconnection: close"), "no connection: close on {h}");
    // And the proxy does close it.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the connection within 10 s")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_to_its_end_keeps_the_connection_alive() {
    let (_proxy, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let (h, got) = head(&mut s).await;
        assert!(h.starts_with("http/1.1 200"), "{h}");
        assert!(!h.contains("connection: close"), "keep-alive lost: {h}");
        skip_body(&mut s, &h, got).await;
    }
    // A request without a body that gets an error keeps the connection too.
    s.write_all(b"GET /dead HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (h, _) = head(&mut s).await;
    assert!(h.starts_with("http/1.1 502"), "{h}");
    assert!(!h.contains("connection: close"), "{h}");
}
