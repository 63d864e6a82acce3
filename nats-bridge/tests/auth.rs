//! Authenticated NATS connections: a real nats-server requiring credentials, a real Go worker
//! and the host transport, with the right credentials (calls work) and the wrong ones (connect
//! fails with an error, nothing hangs).

mod common;

use common::*;
use weft_nats_bridge::{NatsAuth, NatsOptions, NatsTransport, RemotePluginOptions};
use weft_runtime::abi::WeftPhase;

async fn call_header_rewriter(url: &str, auth: NatsAuth) {
    let t = NatsTransport::connect(NatsOptions {
        url: url.to_owned(),
        auth,
        ..NatsOptions::default()
    })
    .await
    .expect("connect with the right credentials");
    let plugin = t.plugin("rw", RemotePluginOptions::default());
    let rh = WeftPhase::RequestHeaders;
    let (view, _) = request_view(1, rh as u32, "/", &[("host", "h")]);
    let bytes = plugin
        .call(rh, &view, None)
        .await
        .expect("call through an authenticated connection");
    let batch = weft_runtime::mutation::decode(&bytes, bytes.len(), rh).unwrap();
    let mut p = http::Request::builder().uri("/").body(()).unwrap().into_parts().0;
    batch.apply_to_request(&mut p);
    assert_eq!(p.headers["x-auth-test"], "1");
}

async fn connect_fails(url: &str, auth: NatsAuth) {
    let res = NatsTransport::connect(NatsOptions {
        url: url.to_owned(),
        auth,
        ..NatsOptions::default()
    })
    .await;
    assert!(res.is_err(), "connecting with wrong credentials must fail");
}

const CONFIG: &str = r#"{"request_set":{"x-auth-test":"1"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_auth() {
    require_nats!();
    let srv = NatsServer::start_with(&["--user", "weft", "--pass", "s3cret"]);
    let _w = Worker::start_with(
        &srv.url(),
        "header-rewriter",
        "rw",
        CONFIG,
        &["-user", "weft", "-password", "s3cret"],
    );
    call_header_rewriter(
        &srv.url(),
        NatsAuth::UserPassword {
            user: "weft".into(),
            password: "s3cret".into(),
        },
    )
    .await;
    connect_fails(
        &srv.url(),
        NatsAuth::UserPassword {
            user: "weft".into(),
            password: "wrong".into(),
        },
    )
    .await;
    connect_fails(&srv.url(), NatsAuth::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    require_nats!();
    let srv = NatsServer::start_with(&["--auth", "t0ken"]);
    let _w = Worker::start_with(&srv.url(), "header-rewriter", "rw", CONFIG, &["-token", "t0ken"]);
    call_header_rewriter(&srv.url(), NatsAuth::Token("t0ken".into())).await;
    connect_fails(&srv.url(), NatsAuth::Token("nope".into())).await;
}
