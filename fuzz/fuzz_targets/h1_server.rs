//! The lean HTTP/1.1 server (`weft_proxy::h1::server`) driven by arbitrary client bytes sent in
//! pieces of an arbitrary size: heads, bodies framed by a length or chunked (well or badly),
//! pipelined requests, hand-offs to hyper's real server behind it. It never panics; once the
//! client has sent everything and closed its side, the connection ends (no request or body waits
//! forever); and whatever it wrote starts as an HTTP/1.x response.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt as _, Full};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use weft_proxy::h1::lean_body::LeanBody;
use weft_proxy::h1::server::{Graceful, HyperConn, Rewind, serve};

thread_local! {
    static RT: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
    );
}

/// The lean service: reads the body whole and answers with its length (or that it failed).
fn lean(parts: http::request::Parts, body: Option<LeanBody>) -> impl Future<Output = Response<Full<Bytes>>> + Send {
    async move {
        let n = match body {
            None => "none".to_owned(),
            Some(b) => match b.collect().await {
                Ok(all) => all.to_bytes().len().to_string(),
                Err(e) => format!("error {e}"),
            },
        };
        Response::new(Full::new(Bytes::from(format!("lean {} {n}", parts.method))))
    }
}

/// hyper's server for what the lean path hands over, answering as the lean service does.
fn hyper_side(io: Rewind<DuplexStream>) -> HyperConn {
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!("hyper {}", body.len())))))
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    Box::pin(Graceful(conn))
}

fuzz_target!(|input: (u8, &[u8])| {
    let (piece, bytes) = input;
    let piece = if piece == 0 {
        bytes.len().max(1)
    } else {
        usize::from(piece)
    };
    RT.with_borrow(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(4096);
            let (mut rx, mut tx) = tokio::io::split(&mut client);
            let conn = serve(server, lean, hyper_side);
            let send = async {
                for p in bytes.chunks(piece) {
                    if tx.write_all(p).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = tx.shutdown().await;
            };
            let mut out = Vec::new();
            let (served, (), read) = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(conn, send, rx.read_to_end(&mut out))
            })
            .await
            .expect("the connection ends once the client has closed its side");
            // The connection's own end (an error on a bad body or a client gone) and the read's
            // are both fine; that they came at all is the check.
            let (_, _) = (served, read);
            assert!(
                out.is_empty() || out.starts_with(b"HTTP/1."),
                "not a response: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            );
        })
    });
});
