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

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl for this test.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=weft-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    require_nats!();
    let dir = std::env::temp_dir().join(format!("weft-nats-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let srv = NatsServer::start_with(&["--tls", "--tlscert", &p("server.pem"), "--tlskey", &p("server.key")]);
    let _w = Worker::start_with(&srv.url(), "header-rewriter", "rw", CONFIG, &["-tls-ca", &p("ca.pem")]);

    let tls = weft_nats_bridge::NatsTls {
        required: true,
        ca: Some(dir.join("ca.pem")),
        client_cert: None,
    };
    let t = NatsTransport::connect(NatsOptions {
        url: srv.url(),
        tls,
        ..NatsOptions::default()
    })
    .await
    .expect("TLS connect trusting the test CA");
    let plugin = t.plugin("rw", RemotePluginOptions::default());
    let rh = WeftPhase::RequestHeaders;
    let (view, _) = request_view(1, rh as u32, "/", &[("host", "h")]);
    let bytes = plugin.call(rh, &view, None).await.expect("call over TLS");
    assert!(!bytes.is_empty());

    // Without the CA the server's certificate is not trusted: connecting fails.
    let untrusted = weft_nats_bridge::NatsTls {
        required: true,
        ca: None,
        client_cert: None,
    };
    let res = NatsTransport::connect(NatsOptions {
        url: srv.url(),
        tls: untrusted,
        ..NatsOptions::default()
    })
    .await;
    assert!(res.is_err(), "a certificate from an unknown CA must be refused");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth() {
    require_nats!();
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let dir = std::env::temp_dir().join(format!("weft-nats-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key()),
    )
    .unwrap();
    let seed_file = dir.join("user.nk");
    std::fs::write(&seed_file, &seed).unwrap();
    let srv = NatsServer::start_with(&["-c", &conf.to_string_lossy()]);
    let _w = Worker::start_with(
        &srv.url(),
        "header-rewriter",
        "rw",
        CONFIG,
        &["-nkey", &seed_file.to_string_lossy()],
    );
    call_header_rewriter(&srv.url(), NatsAuth::NKeySeed(seed)).await;
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    connect_fails(&srv.url(), NatsAuth::NKeySeed(stranger)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
