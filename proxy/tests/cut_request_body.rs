//! A client that disconnects in the middle of its request body does not count against the
//! upstream's health: the exchange fails on the proxy's side (the body it was streaming ended
//! early), not the upstream's. Found by the soak runner (benches/src/bin/soak): clients cutting
//! their bodies short got both healthy upstreams ejected, and every other client a 503.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{ProxyProcess, free_port};

/// An upstream that answers a GET with `ok` at once and reads any other request's body until
/// its connection ends (a POST is never answered: its body never completes here).
async fn spawn_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 8192];
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                    if buf.starts_with(b"GET") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        buf.clear();
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn status_of_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cutting_their_bodies_short_do_not_eject_the_upstream() {
    let upstream = spawn_upstream().await;
    let addr = free_port();
    // One failure ejects the only address: any cut body counted as one would show.
    let yaml = format!(
        "listen: {addr}\nupstreams:\n  - name: up\n    addresses: [\"{upstream}\"]\n    ejection: {{ consecutive_failures: 1, duration_ms: 60000 }}\nroutes:\n  - {{ path_prefix: /, upstream: up }}\n"
    );
    let proxy = tokio::task::block_in_place(|| ProxyProcess::start("cut-body", &yaml, addr));
    assert_eq!(status_of_get(addr).await, "HTTP/1.1 200 OK");
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'a'; 20_000]).await.unwrap();
        // Long enough for the proxy to be streaming the body upstream, then gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        status_of_get(addr).await,
        "HTTP/1.1 200 OK",
        "the upstream was ejected:\n{}",
        proxy.stderr()
    );
}
