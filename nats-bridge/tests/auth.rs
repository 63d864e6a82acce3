//! Authenticated NATS connections: a real nats-server requiring credentials, a real Go worker
//! and the host transport, with the right credentials (calls work) and the wrong ones (connect
//! fails with an error, nothing hangs).

mod common;

use weft_test_support::require_nats;

use std::sync::Arc;

use common::*;
use weft_abi::WeftPhase;
use weft_nats_bridge::{NatsAuth, NatsOptions, NatsPlugin, NatsPluginOptions, NatsTransport};

async fn call_header_rewriter(url: &str, auth: NatsAuth) {
    call_header_rewriter_with(NatsOptions {
        url: url.to_owned(),
        auth,
        ..NatsOptions::default()
    })
    .await;
}

/// Connects with `opts` (the right credentials), calls the header-rewriter worker (instance `rw`)
/// and checks that its header is set; returns the connection and the instance for further calls.
async fn call_header_rewriter_with(opts: NatsOptions) -> (Arc<NatsTransport>, NatsPlugin) {
    let t = NatsTransport::connect(opts)
        .await
        .expect("connect with the right credentials");
    let plugin = t.plugin("rw", NatsPluginOptions::default());
    let bytes = plugin
        .call(RH, &rw_view(), None)
        .await
        .expect("call through an authenticated connection");
    let batch = weft_runtime::mutation::decode(&bytes, bytes.len(), RH).unwrap();
    let mut p = http::Request::builder().uri("/").body(()).unwrap().into_parts().0;
    batch.apply_to_request(&mut p);
    assert_eq!(p.headers["x-auth-test"], "1");
    (t, plugin)
}

const RH: WeftPhase = WeftPhase::RequestHeaders;

/// The view of the request every call here carries.
fn rw_view() -> Vec<u8> {
    request_view(1, RH as u32, "/", &[("host", "h")]).0
}

/// Connecting with `auth` must fail; returns the error as the proxy would print it.
async fn connect_fails(url: &str, auth: NatsAuth) -> String {
    connect_fails_with(NatsOptions {
        url: url.to_owned(),
        auth,
        ..NatsOptions::default()
    })
    .await
}

async fn connect_fails_with(opts: NatsOptions) -> String {
    match NatsTransport::connect(opts).await {
        Ok(_) => panic!("connecting with wrong credentials must fail"),
        Err(e) => e.to_string(),
    }
}

const CONFIG: &str = r#"{"request_set":{"x-auth-test":"1"}}"#;

/// Starts a header-rewriter worker (instance `rw`, sets `x-auth-test: 1`) on `srv` with the
/// connection flags `extra`.
fn rewriter(srv: &NatsServer, extra: &[&str]) -> Worker {
    Worker::start_with(&srv.url(), "header-rewriter", "rw", CONFIG, extra)
}

/// Starts a header-rewriter worker (instance `rw2`) on `srv` with the connection flags `extra`,
/// which must be refused; returns its log.
fn refused_rewriter(srv: &NatsServer, extra: &[&str]) -> String {
    Worker::refused(&srv.url(), "header-rewriter", "rw2", CONFIG, extra)
}

/// A fresh directory `weft-nats-<what>-<pid>` under the temp dir.
fn test_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-nats-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_auth() {
    require_nats!();
    let srv = NatsServer::start_with(&["--user", "weft", "--pass", "s3cret"]);
    let _w = rewriter(&srv, &["-user", "weft", "-password", "s3cret"]);
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
    let _w = rewriter(&srv, &["-token", "t0ken"]);
    call_header_rewriter(&srv.url(), NatsAuth::Token("t0ken".into())).await;
    connect_fails(&srv.url(), NatsAuth::Token("nope".into())).await;
}

/// Runs openssl in `dir` with `args`; fails the test if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// A throwaway CA `<name>.pem`/`<name>.key` in `dir`, subject `/CN=<cn>`.
fn make_ca(dir: &std::path::Path, name: &str, cn: &str) {
    let (pem, key, subj) = (format!("{name}.pem"), format!("{name}.key"), format!("/CN={cn}"));
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", "1", "-subj",
            &subj,
        ],
    );
}

/// A certificate `<name>.pem` (key `<name>.key`) for `/CN=<cn>` issued by the CA `<ca>.pem`/`<ca>.key`
/// in `dir`, with the X.509 extensions `ext` (a line of an openssl extfile).
fn make_cert(dir: &std::path::Path, ca: &str, name: &str, cn: &str, ext: &str) {
    let (pem, key, csr, subj) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("/CN={cn}"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ],
    );
    let (ca_pem, ca_key, extfile) = (format!("{ca}.pem"), format!("{ca}.key"), format!("{name}.ext"));
    std::fs::write(dir.join(&extfile), format!("{ext}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &extfile,
        ],
    );
}

/// A throwaway CA (`ca`) and a server certificate (`server`) for 127.0.0.1, made with openssl for
/// this test.
fn make_certs(dir: &std::path::Path) {
    make_ca(dir, "ca", "weft-test-ca");
    make_cert(
        dir,
        "ca",
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    require_nats!();
    let dir = test_dir("tls");
    make_certs(&dir);
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let srv = NatsServer::start_with(&["--tls", "--tlscert", &p("server.pem"), "--tlskey", &p("server.key")]);
    let _w = rewriter(&srv, &["-tls-ca", &p("ca.pem")]);

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
    let plugin = t.plugin("rw", NatsPluginOptions::default());
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
    let dir = test_dir("nkey");
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key()),
    )
    .unwrap();
    let seed_file = dir.join("user.nk");
    std::fs::write(&seed_file, &seed).unwrap();
    let srv = NatsServer::start_with(&["-c", &conf.to_string_lossy()]);
    let _w = rewriter(&srv, &["-nkey", &seed_file.to_string_lossy()]);
    call_header_rewriter(&srv.url(), NatsAuth::NKeySeed(seed)).await;
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    connect_fails(&srv.url(), NatsAuth::NKeySeed(stranger)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client certificate `<name>.pem`/`<name>.key` issued by the CA `<ca>.pem`/`<ca>.key` in `dir`
/// (openssl, for this test); the CA is created first when `<ca>.pem` does not exist yet.
fn make_client_cert(dir: &std::path::Path, ca: &str, name: &str) {
    if !dir.join(format!("{ca}.pem")).exists() {
        make_ca(dir, ca, ca);
    }
    make_cert(dir, ca, name, name, "extendedKeyUsage=clientAuth");
}

/// Mutual TLS: the server (`verify: true`) accepts only clients with a certificate from its CA.
/// The worker and the host present one and a call goes through; the host without a client
/// certificate, or with one from another CA, and a worker without one are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    require_nats!();
    let dir = test_dir("mtls");
    make_certs(&dir);
    make_client_cert(&dir, "ca", "client");
    make_client_cert(&dir, "other-ca", "impostor");
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let srv = NatsServer::start_with(&["-c", &p("server.conf")]);
    let _w = rewriter(
        &srv,
        &[
            "-tls-ca",
            &p("ca.pem"),
            "-tls-cert",
            &p("client.pem"),
            "-tls-key",
            &p("client.key"),
        ],
    );

    let tls = |client: Option<&str>| weft_nats_bridge::NatsTls {
        required: true,
        ca: Some(dir.join("ca.pem")),
        client_cert: client.map(|c| (dir.join(format!("{c}.pem")), dir.join(format!("{c}.key")))),
    };
    // Mutual TLS with a client certificate from the server's CA.
    let (_t, plugin) = call_header_rewriter_with(NatsOptions {
        url: srv.url(),
        tls: tls(Some("client")),
        ..NatsOptions::default()
    })
    .await;

    for (what, client) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some("impostor")),
    ] {
        let err = connect_fails_with(NatsOptions {
            url: srv.url(),
            tls: tls(client),
            ..NatsOptions::default()
        })
        .await;
        eprintln!("mTLS, {what}: {err}");
        assert!(err.contains(&srv.url()), "the error names the server: {err}");
    }
    // The worker without a client certificate is refused too (it exits with the error).
    let log = refused_rewriter(&srv, &["-tls-ca", &p("ca.pem")]);
    assert!(log.contains("connect"), "{log}");
    // The connection that was let in still works.
    plugin
        .call(RH, &rw_view(), None)
        .await
        .expect("call after the refusals");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decentralized (JWT) auth as `nsc` sets it up: an operator, an account signed by the operator
/// (resolver: MEMORY, preloaded), users signed by the account, each in a `.creds` file (a user
/// JWT and an nkey seed). JWTs are made here: base64url(header).base64url(claims).base64url(ed25519
/// signature of the first two parts by the issuer's nkey).
mod jwt {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    use nkeys::KeyPair;

    /// base64url without padding (RFC 4648 §5), as JWTs use.
    pub fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// A JWT issued (signed) by `issuer` about `subject`, with `nats` as its NATS claims.
    pub fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "jti": format!("WEFTTEST{}X{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
            "iat": iat,
            "iss": issuer.public_key(),
            "name": name,
            "sub": subject,
            "nats": nats,
        });
        let signed = format!(
            "{}.{}",
            b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
            b64url(claims.to_string().as_bytes())
        );
        let sig = issuer.sign(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64url(&sig))
    }

    /// An account's JWT, issued by `operator`, without limits.
    pub fn account(operator: &KeyPair, account: &KeyPair, name: &str) -> String {
        let limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
        });
        encode(
            operator,
            &account.public_key(),
            name,
            serde_json::json!({ "limits": limits, "type": "account", "version": 2 }),
        )
    }

    /// Writes `<name>.creds` in `dir`: a new user's JWT issued by `account`, and its seed.
    pub fn creds(dir: &Path, account: &KeyPair, name: &str) -> PathBuf {
        let user = KeyPair::new_user();
        let token = encode(
            account,
            &user.public_key(),
            name,
            serde_json::json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2,
            }),
        );
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n",
                user.seed().unwrap()
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn b64url_matches_rfc4648() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
        ] {
            assert_eq!(b64url(plain.as_bytes()), enc);
        }
        assert_eq!(b64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }
}

/// Creds-file auth against a server in operator mode: the worker (`-creds`) and the host
/// (`NatsAuth::CredsFile`) connect as users of the same account and a call goes through. A user
/// of an account the server does not know, no credentials, and a creds file that does not exist
/// are refused with an error that says so; so is a worker with the stranger's creds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_auth() {
    require_nats!();
    let dir = test_dir("creds");
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt::encode(
        &operator,
        &operator.public_key(),
        "weft-test-operator",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    std::fs::write(dir.join("operator.jwt"), &operator_jwt).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n}}\n",
            dir.join("operator.jwt").display(),
            account.public_key(),
            jwt::account(&operator, &account, "weft")
        ),
    )
    .unwrap();
    let srv = NatsServer::start_with(&["-c", &conf.to_string_lossy()]);

    let host = jwt::creds(&dir, &account, "host");
    let worker = jwt::creds(&dir, &account, "worker");
    let _w = rewriter(&srv, &["-creds", &worker.to_string_lossy()]);
    call_header_rewriter(&srv.url(), NatsAuth::CredsFile(host.clone())).await;

    // A well-formed user of an account the server was not given.
    let stranger_account = nkeys::KeyPair::new_account();
    let stranger = jwt::creds(&dir, &stranger_account, "stranger");
    let err = connect_fails(&srv.url(), NatsAuth::CredsFile(stranger.clone())).await;
    eprintln!("stranger creds: {err}");
    assert!(
        err.contains(&srv.url()) && err.to_lowercase().contains("authorization"),
        "a refused user gets an authorization error naming the server: {err}"
    );
    // A creds file whose JWT is the host's but whose seed is someone else's: the nonce
    // signature does not match the JWT's subject.
    let text = std::fs::read_to_string(&host).unwrap();
    let seed = text.lines().find(|l| l.starts_with("SU")).unwrap();
    let forged = dir.join("forged.creds");
    std::fs::write(&forged, text.replace(seed, &nkeys::KeyPair::new_user().seed().unwrap())).unwrap();
    let err = connect_fails(&srv.url(), NatsAuth::CredsFile(forged)).await;
    eprintln!("forged creds: {err}");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // No credentials at all.
    let err = connect_fails(&srv.url(), NatsAuth::None).await;
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // A creds file that is not there: refused before connecting, naming the file.
    let missing = dir.join("missing.creds");
    let err = connect_fails(&srv.url(), NatsAuth::CredsFile(missing.clone())).await;
    assert!(
        err.contains("cannot read NATS credentials file") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );
    // The worker is refused with the stranger's creds.
    let log = refused_rewriter(&srv, &["-creds", &stranger.to_string_lossy()]);
    assert!(log.to_lowercase().contains("authorization"), "{log}");
    // The admitted users still work.
    call_header_rewriter(&srv.url(), NatsAuth::CredsFile(host)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
