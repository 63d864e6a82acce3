//! TLS through the real `weft-proxy` binary, with certificates made here (rcgen, and openssl for
//! RSA, which ring cannot generate): termination on `listen_tls:` (SNI choosing among
//! certificates, ALPN to HTTP/2, `x-forwarded-proto: https`, curl --http2, a listener's own
//! connection cap), certificate reloads
//! (refused when broken, swapped under load without a failed request), `check`, and HTTPS
//! upstreams (test CA, wrong CA -> 502, mutual TLS, keep-alive over TLS, active health checks).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{ProxyProcess, TempDir, free_port, metric, scrape};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// A test CA and the files of the certificates it signs.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key written to files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("weft test CA {tag}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            dir: TempDir::new(tag),
            ca,
        }
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.file("ca.pem", &self.ca.pem())
    }

    /// A leaf for `names` (DNS names or IP addresses) with a key of `alg`, written as `file`.pem/.key.
    fn issue(&self, file: &str, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Issued {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert: self.dir.file(&format!("{file}.pem"), &cert.pem()),
            key: self.dir.file(&format!("{file}.key"), &key.serialize_pem()),
            der: cert.der().clone(),
        }
    }

    /// An RSA-2048 leaf signed by the CA, with a PKCS#1 key (`BEGIN RSA PRIVATE KEY`), by openssl.
    fn issue_rsa(&self, file: &str, name: &str) -> Issued {
        let f = |ext: &str| self.dir.path().join(format!("{file}.{ext}"));
        let (cert, key, pkcs8, csr) = (f("pem"), f("key"), f("p8"), f("csr"));
        let ca_key = self.dir.file("ca.key", &self.ca.key().serialize_pem());
        let ext = self.dir.file(
            &format!("{file}.ext"),
            &format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
        );
        let subj = format!("/CN={name}");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &subj,
            "-keyout",
            path(&pkcs8),
            "-out",
            path(&csr),
        ]);
        let ca = self.ca_file();
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&ca),
            "-CAkey",
            path(&ca_key),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            path(&ext),
            "-out",
            path(&cert),
        ]);
        openssl(&["rsa", "-traditional", "-in", path(&pkcs8), "-out", path(&key)]);
        assert!(std::fs::read_to_string(&key).unwrap().contains("BEGIN RSA PRIVATE KEY"));
        let der = rustls::pki_types::pem::PemObject::from_pem_file(&cert).unwrap();
        Issued { cert, key, der }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What an HTTPS request through the proxy got back.
struct Answer {
    status: StatusCode,
    version: Version,
    body: serde_json::Value,
    /// The certificate the server presented.
    peer: CertificateDer<'static>,
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// GET `path` over TLS to `addr` as `name` (an IP address sends no SNI), with hyper's HTTP/2
/// client when the server chose `h2`, else HTTP/1.1.
async fn https_get(addr: SocketAddr, name: &str, config: rustls::ClientConfig, path: &str) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let peer = session.peer_certificates().unwrap()[0].clone().into_owned();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let req = Request::get(format!("https://{name}{path}"))
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.headers.remove("host");
        send.send_request(Request::from_parts(parts, body)).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    }
    .map_err(|e| e.to_string())?;
    let (status, version) = (resp.status(), resp.version());
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into());
    Ok(Answer {
        status,
        version,
        body,
        peer,
    })
}

/// The demo upstream (a JSON description of each request) on a free port.
async fn demo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(weft_proxy::demo::serve_demo_upstream(l));
    addr
}

fn cert_entry(c: &Issued, names: &str) -> String {
    format!(
        "      - {{ cert: {}, key: {}, server_names: [{names}] }}\n",
        c.cert.display(),
        c.key.display()
    )
}

/// A proxy with a plain listener, an admin listener and one TLS listener serving `certs`.
fn tls_config(plain: SocketAddr, admin: SocketAddr, tls: SocketAddr, certs: &str, up: SocketAddr) -> String {
    format!(
        "listen: {plain}\nworkers: 2\nadmin: {{ listen: {admin} }}\nlisten_tls:\n  - listen: {tls}\n    certificates:\n{certs}\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\nroutes: [{{ upstream: up }}]\n"
    )
}

async fn post_reload(admin: SocketAddr) -> (StatusCode, String) {
    let tcp = TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/reload")
        .header("host", "localhost")
        .header("x-weft-admin", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Two SNI names choose two certificates (ECDSA and Ed25519), a third an RSA one with a PKCS#1
/// key, and a client without SNI gets the first; ALPN gives HTTP/2 (and HTTP/1.1 to a client that
/// offers only that); the upstream sees `x-forwarded-proto: https`; handshakes are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_alpn_gives_http2() {
    let pki = Pki::new("tls-sni");
    let a = pki.issue("a", &["a.test", "127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = pki.issue("b", &["x.b.test"], &rcgen::PKCS_ED25519);
    let rsa = pki.issue_rsa("rsa", "rsa.test");
    let up = demo_upstream().await;
    let (plain, admin, tls) = (free_port(), free_port(), free_port());
    let certs = cert_entry(&a, "a.test") + &cert_entry(&b, "\"*.b.test\"") + &cert_entry(&rsa, "rsa.test");
    let _proxy = ProxyProcess::start("tls-sni", &tls_config(plain, admin, tls, &certs, up), plain);
    let roots = [pki.ca_der()];
    let h2 = || client_config(&roots, &[b"h2", b"http/1.1"]);

    let ans = https_get(tls, "a.test", h2(), "/one").await.unwrap();
    assert_eq!((ans.status, ans.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(ans.peer, a.der);
    assert_eq!(ans.body["path"], "/one");
    assert_eq!(ans.body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(https_get(tls, "x.b.test", h2(), "/").await.unwrap().peer, b.der);
    assert_eq!(https_get(tls, "rsa.test", h2(), "/").await.unwrap().peer, rsa.der);
    let no_sni = https_get(tls, "127.0.0.1", h2(), "/").await.unwrap();
    assert_eq!(no_sni.peer, a.der, "a client without SNI gets the first certificate");
    let h1 = https_get(tls, "a.test", client_config(&roots, &[b"http/1.1"]), "/")
        .await
        .unwrap();
    assert_eq!((h1.status, h1.version), (StatusCode::OK, Version::HTTP_11));
    // The wildcard covers one label only: y.x.b.test gets the default certificate, which the
    // client refuses for that name.
    let err = https_get(tls, "y.x.b.test", h2(), "/").await.err().unwrap();
    assert!(err.contains("certificate") || err.contains("NotValidForName"), "{err}");

    // The plain listener still answers plain HTTP, and says so upstream.
    let (status, _, body) = common::get(plain, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");

    let m = scrape(admin).await;
    assert_eq!(
        metric(&m, r#"weft_tls_handshakes_total{listener="listen_tls[0]",result="ok"}"#),
        5.0
    );
    assert!(
        metric(
            &m,
            r#"weft_tls_handshakes_total{listener="listen_tls[0]",result="alert_received"}"#
        ) >= 1.0
    );
    let expiry = format!(
        r#"weft_tls_certificate_expiry_seconds{{listener="listen_tls[0]",cert="{}"}}"#,
        a.cert.display()
    );
    assert!(metric(&m, &expiry) > 1.7e9, "expiry gauge: {}", metric(&m, &expiry));
}

/// curl over HTTP/2 with the test CA; a client that only speaks TLS 1.1 is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_and_old_tls_is_refused() {
    let pki = Pki::new("tls-curl");
    let a = pki.issue("a", &["a.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
    let up = demo_upstream().await;
    let (plain, admin, tls) = (free_port(), free_port(), free_port());
    let _proxy = ProxyProcess::start(
        "tls-curl",
        &tls_config(plain, admin, tls, &cert_entry(&a, "a.test"), up),
        plain,
    );
    let ca = pki.ca_file();
    let resolve = format!("a.test:{}:127.0.0.1", tls.port());
    let url = format!("https://a.test:{}/via-curl", tls.port());
    let curl = |extra: &[&str]| {
        let mut args = vec![
            "-sS",
            "--http2",
            "--cacert",
            path(&ca),
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        tokio::task::block_in_place(|| Command::new("curl").args(&args).output().expect("curl"))
    };
    let out = curl(&["-w", "%{http_version} %{http_code}"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    let old = curl(&["--tlsv1.0", "--tls-max", "1.1"]);
    assert!(!old.status.success(), "TLS 1.1 must be refused");
    let m = scrape(admin).await;
    let refused: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("weft_tls_handshakes_total{") && !k.contains("result=\"ok\""))
        .map(|(_, v)| v)
        .sum();
    assert!(refused >= 1.0, "{m:?}");
}

/// A certificate reload under load: clients keep requesting while the certificate is replaced,
/// none fails, and new handshakes get the new certificate. A broken certificate and a key that
/// does not match are refused, naming the file and the reason, and the old one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_and_broken_ones_are_refused() {
    let pki = Pki::new("tls-reload");
    let old = pki.issue("old", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let new = pki.issue("new", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let up = demo_upstream().await;
    let (plain, admin, tls) = (free_port(), free_port(), free_port());
    let live = Issued {
        cert: pki.dir.path().join("live.pem"),
        key: pki.dir.path().join("live.key"),
        der: old.der.clone(),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let proxy = ProxyProcess::start(
        "tls-reload",
        &tls_config(plain, admin, tls, &cert_entry(&live, "a.test"), up),
        plain,
    );
    let roots = [pki.ca_der()];
    let config = || client_config(&roots, &[b"h2", b"http/1.1"]);
    assert_eq!(https_get(tls, "a.test", config(), "/").await.unwrap().peer, old.der);

    // A key that is not the certificate's.
    std::fs::copy(&new.key, &live.key).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("listen_tls[0].certificates[0]"), "{body}");
    proxy.wait_log(&format!(
        "at listen_tls[0].certificates[0]: {}: the key does not match the certificate",
        live.key.display()
    ));
    // Not PEM at all.
    std::fs::write(&live.cert, "garbage").unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    proxy.wait_log(&format!("{}: no CERTIFICATE block", live.cert.display()));
    assert_eq!(
        https_get(tls, "a.test", config(), "/").await.unwrap().peer,
        old.der,
        "the old one serves"
    );

    // Under load: 4 clients, each a new connection per request, while the good pair goes in.
    let (done, failures, served) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, failures, served, roots) = (done.clone(), failures.clone(), served.clone(), roots.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) == 0 {
                    match https_get(tls, "a.test", client_config(&roots, &[b"h2"]), "/").await {
                        Ok(a) if a.status == StatusCode::OK => served.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let served_by = |n: usize| {
        let served = served.clone();
        async move {
            while served.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), served_by(10))
        .await
        .expect("load runs");
    std::fs::copy(&new.cert, &live.cert).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = served.load(Ordering::Relaxed) + 10;
    tokio::time::timeout(Duration::from_secs(20), served_by(after))
        .await
        .expect("load goes on");
    done.store(1, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across the reload"
    );
    assert_eq!(https_get(tls, "a.test", config(), "/").await.unwrap().peer, new.der);

    // SIGHUP re-reads them too.
    let third = pki.issue("third", &["a.test"], &rcgen::PKCS_ED25519);
    std::fs::copy(&third.cert, &live.cert).unwrap();
    std::fs::copy(&third.key, &live.key).unwrap();
    proxy.signal("-HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while https_get(tls, "a.test", config(), "/").await.unwrap().peer != third.der {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not swap the certificate:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `check` prints each certificate's expiry, and names the file and the reason of a bad one.
#[test]
fn check_shows_expiry_and_refuses_a_mismatched_key() {
    let pki = Pki::new("tls-check");
    let a = pki.issue("a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = pki.issue("b", &["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let check = |certs: &str| {
        let yaml = tls_config(
            free_port(),
            free_port(),
            free_port(),
            certs,
            "127.0.0.1:9".parse().unwrap(),
        );
        weft_check(&pki.dir.file("check.yaml", &yaml))
    };
    let (ok, out) = check(&cert_entry(&a, "a.test"));
    assert!(ok, "{out}");
    assert!(out.contains("listen_tls[0] ("), "{out}");
    assert!(
        out.contains(&format!("certificate {} expires ", a.cert.display())),
        "{out}"
    );
    let mismatched = Issued {
        cert: a.cert.clone(),
        key: b.key.clone(),
        der: a.der.clone(),
    };
    let (ok, out) = check(&(cert_entry(&a, "a.test") + &cert_entry(&mismatched, "c.test")));
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "listen_tls[0].certificates[1]: {}: the key does not match",
            b.key.display()
        )),
        "{out}"
    );
    // HTTPS upstreams: the CA file is read; one that holds no certificate is named.
    let ca = pki.ca_file();
    let bad_ca = pki.dir.file("bad-ca.pem", "not a certificate");
    let upstream_check = |ca: &Path| {
        let yaml = upstream_config(
            free_port(),
            "127.0.0.1:9".parse().unwrap(),
            &format!("ca_file: {}", ca.display()),
        );
        weft_check(&pki.dir.file("check-up.yaml", &yaml))
    };
    let (ok, out) = upstream_check(&ca);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("upstream up: HTTPS (CA {})", ca.display())),
        "{out}"
    );
    let (ok, out) = upstream_check(&bad_ca);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "at upstreams[0].tls: {}: no CERTIFICATE block",
            bad_ca.display()
        )),
        "{out}"
    );
}

/// An HTTPS server for the upstream tests: answers each request with whether the client sent a
/// certificate. With `client_ca`, a client certificate from it is required.
async fn https_upstream(leaf: &Issued, client_ca: Option<CertificateDer<'static>>) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![leaf.der.clone()], PrivateKeyDer::from_pem_file(&leaf.key).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                count.fetch_add(1, Ordering::Relaxed);
                let mtls = tls.get_ref().1.peer_certificates().is_some();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = serde_json::json!({ "tls": true, "client_cert": mtls, "proto": proto, "path": req.uri().path() });
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, connections)
}

fn upstream_config(plain: SocketAddr, up: SocketAddr, tls: &str) -> String {
    format!(
        "listen: {plain}\nworkers: 1\nupstreams:\n  - {{ name: up, addresses: [\"{up}\"], tls: {{ {tls} }} }}\nroutes: [{{ upstream: up }}]\n"
    )
}

/// An HTTPS upstream with a test CA: requests go through, over one kept-alive TLS connection.
/// Against a CA that did not sign it: 502 and the reason in the log, never plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_test_ca_and_a_wrong_one() {
    let pki = Pki::new("tls-up");
    let leaf = pki.issue("up", &["up.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (up, connections) = https_upstream(&leaf, None).await;
    let plain = free_port();
    let tls = format!("server_name: up.test, ca_file: {}", pki.ca_file().display());
    let _proxy = ProxyProcess::start("tls-up", &upstream_config(plain, up, &tls), plain);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    for i in 0..5 {
        let (status, _, body) = common::get_with(&client, plain, &format!("/r{i}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["tls"], true);
        assert_eq!(body["proto"], "http");
        assert_eq!(body["client_cert"], false);
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "keep-alive over TLS: one upstream connection"
    );

    let other = Pki::new("tls-up-other");
    let plain = free_port();
    let tls = format!("server_name: up.test, ca_file: {}", other.ca_file().display());
    let proxy = ProxyProcess::start("tls-up-wrong", &upstream_config(plain, up, &tls), plain);
    let (status, _, _) = common::get(plain, "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let log = proxy.wait_log("UnknownIssuer");
    assert!(log.contains("TLS handshake"), "{log}");
    // A name the certificate does not carry fails the same way.
    let plain = free_port();
    let tls = format!("server_name: other.test, ca_file: {}", pki.ca_file().display());
    let proxy = ProxyProcess::start("tls-up-name", &upstream_config(plain, up, &tls), plain);
    assert_eq!(common::get(plain, "/", &[]).await.0, StatusCode::BAD_GATEWAY);
    proxy.wait_log("certificate not valid for name \"other.test\"");
}

/// Mutual TLS: an upstream that requires a client certificate from its CA gets the configured
/// one; without it the upstream refuses (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_an_upstream() {
    let pki = Pki::new("tls-mtls");
    let leaf = pki.issue("up", &["up.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let client = pki.issue("client", &["proxy.test"], &rcgen::PKCS_ED25519);
    let (up, _) = https_upstream(&leaf, Some(pki.ca_der())).await;
    let ca = pki.ca_file();
    let plain = free_port();
    let tls = format!(
        "server_name: up.test, ca_file: {}, client_cert: {}, client_key: {}",
        ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let _proxy = ProxyProcess::start("tls-mtls", &upstream_config(plain, up, &tls), plain);
    let (status, _, body) = common::get(plain, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["client_cert"], true);

    let plain = free_port();
    let tls = format!("server_name: up.test, ca_file: {}", ca.display());
    let _proxy = ProxyProcess::start("tls-mtls-none", &upstream_config(plain, up, &tls), plain);
    assert_eq!(common::get(plain, "/", &[]).await.0, StatusCode::BAD_GATEWAY);
}

/// Plugins are told the scheme and the SNI name: `https` and the name the client sent for a
/// request on a TLS listener (two names on one listener; none for a client connecting by IP
/// address), `http` and no name on `listen` (the `test-scheme` plugin copies what it sees into
/// request headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_https_and_the_sni_name_on_a_tls_listener() {
    let lib = tokio::task::block_in_place(|| common::go_library("test"));
    let pki = Pki::new("tls-plugin");
    let a = pki.issue("a", &["a.test", "b.test", "127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let up = demo_upstream().await;
    let (plain, tls) = (free_port(), free_port());
    let yaml = format!(
        "listen: {plain}\nlisten_tls:\n  - listen: {tls}\n    certificates:\n{}\
         libraries: [{{ name: ex, path: {} }}]\nplugins: [{{ name: s, library: ex, plugin: test-scheme }}]\n\
         upstreams: [{{ name: up, addresses: [\"{up}\"] }}]\nroutes: [{{ upstream: up, plugins: [s] }}]\n",
        cert_entry(&a, "a.test, b.test"),
        lib.display()
    );
    let _proxy = ProxyProcess::start("tls-plugin", &yaml, plain);
    let roots = [pki.ca_der()];
    // HTTP/2 and HTTP/1.1 clients, by name and by IP address (no SNI).
    for (name, alpn, sni) in [
        ("a.test", &b"h2"[..], "a.test"),
        ("b.test", b"h2", "b.test"),
        ("b.test", b"http/1.1", "b.test"),
        ("127.0.0.1", b"h2", ""),
    ] {
        let ans = https_get(tls, name, client_config(&roots, &[alpn]), "/").await.unwrap();
        assert_eq!(ans.status, StatusCode::OK, "{name}: {}", ans.body);
        assert_eq!(ans.body["headers"]["x-seen-scheme"], "https", "{name}");
        assert_eq!(ans.body["headers"]["x-seen-sni"], sni, "{name}");
    }
    let (status, _, body) = common::get(plain, "/", &[("host", "a.test")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["headers"]["x-seen-scheme"], "http");
    assert_eq!(
        body["headers"]["x-seen-sni"], "",
        "plain HTTP has no SNI, whatever the host"
    );
}

/// An HTTPS upstream that answers its `name`, and `/health` with 200 while `healthy` holds,
/// else 503; counts the health checks it got (over TLS: it speaks nothing else).
async fn checked_https_upstream(leaf: &Issued, name: &'static str) -> (SocketAddr, Arc<AtomicBool>, Arc<AtomicUsize>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], PrivateKeyDer::from_pem_file(&leaf.key).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (healthy, checks) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let (flag, count) = (healthy.clone(), checks.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, flag, count) = (acceptor.clone(), flag.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    if req.uri().path() == "/health" {
                        count.fetch_add(1, Ordering::Relaxed);
                        if !flag.load(Ordering::Relaxed) {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, healthy, checks)
}

/// Which upstream answered each of six requests; every one must succeed.
async fn who_answers(client: &common::HttpClient, proxy: SocketAddr) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..6 {
        let (status, _, body) = common::get_with(client, proxy, &format!("/r{i}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.push(body.as_str().unwrap_or_default().to_owned());
    }
    seen
}

/// Active health checks of HTTPS upstream addresses go over TLS (test CA, SNI name): an
/// address whose `/health` fails is taken out of rotation (requests keep succeeding on the
/// other), and comes back once its checks pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_https_address_out_and_back() {
    let pki = Pki::new("tls-health");
    let leaf = pki.issue("up", &["up.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (a, _, _) = checked_https_upstream(&leaf, "a").await;
    let (b, b_healthy, b_checks) = checked_https_upstream(&leaf, "b").await;
    let (plain, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: {plain}\nworkers: 1\nadmin: {{ listen: {admin} }}\nupstreams:\n  - name: up\n    addresses: [\"{a}\", \"{b}\"]\n    \
         tls: {{ server_name: up.test, ca_file: {} }}\n    \
         health_check: {{ path: /health, interval_ms: 50, timeout_ms: 1000, healthy_threshold: 2, unhealthy_threshold: 2 }}\n\
         routes: [{{ upstream: up }}]\n",
        pki.ca_file().display()
    );
    let _proxy = ProxyProcess::start("tls-health", &yaml, plain);
    let healthy = format!("weft_upstream_address_healthy{{upstream=\"up\",address=\"{b}\"}}");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let seen = who_answers(&client, plain).await;
    assert!(seen.iter().any(|s| s == "b"), "both addresses serve: {seen:?}");
    assert!(b_checks.load(Ordering::Relaxed) > 0, "b was checked over TLS");

    b_healthy.store(false, Ordering::Relaxed);
    common::wait_metrics(admin, "b out of rotation", |m| m.get(&healthy) == Some(&0.0)).await;
    let seen = who_answers(&client, plain).await;
    assert!(seen.iter().all(|s| s == "a"), "b failed its checks: {seen:?}");

    b_healthy.store(true, Ordering::Relaxed);
    let m = common::wait_metrics(admin, "b back in rotation", |m| m.get(&healthy) == Some(&1.0)).await;
    assert_eq!(metric(&m, &healthy), 1.0);
    let seen = who_answers(&client, plain).await;
    assert!(seen.iter().any(|s| s == "b"), "b passed its checks again: {seen:?}");
}

/// `listen_tls[0].max_connections: 1`: while one TLS connection is open, a second one completes
/// its TCP handshake but waits in the backlog (no TLS handshake, no answer) and is served once
/// the first closes; the plain listener, with its own permits, serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_at_its_own_cap_keeps_new_connections_waiting() {
    let pki = Pki::new("tls-cap");
    let a = pki.issue("a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let up = demo_upstream().await;
    let (plain, admin, tls) = (free_port(), free_port(), free_port());
    // The first connection sends no request: a long header timeout keeps it open meanwhile.
    let yaml = tls_config(plain, admin, tls, &cert_entry(&a, "a.test"), up)
        .replace("    certificates:\n", "    max_connections: 1\n    certificates:\n")
        + "limits: { header_read_timeout_ms: 60000 }\n";
    let _proxy = ProxyProcess::start("tls-cap", &yaml, plain);
    let roots = [pki.ca_der()];
    let tcp = TcpStream::connect(tls).await.unwrap();
    let first = tokio_rustls::TlsConnector::from(Arc::new(client_config(&roots, &[b"http/1.1"])))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("the first TLS connection is accepted");
    let open = r#"weft_connections_open{listener="listen_tls[0]"}"#;
    let reached = r#"weft_connections_limit_reached_total{listener="listen_tls[0]"}"#;
    common::wait_metrics(admin, "one TLS connection open", |m| m.get(open) == Some(&1.0)).await;

    let mut second = tokio::spawn(https_get(tls, "a.test", client_config(&roots, &[b"h2"]), "/"));
    common::wait_metrics(admin, "the second waiting for a permit", |m| {
        m.get(reached).is_some_and(|&n| n >= 1.0)
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut second).await;
    if let Ok(done) = early {
        let what = done.map(|r| r.map(|a| a.status));
        panic!("the connection over the cap was not kept waiting: {what:?}");
    }
    let (status, _, _) = common::get(plain, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "the plain listener has its own permits");

    drop(first);
    let ans = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the first closed")
        .unwrap()
        .unwrap();
    assert_eq!(ans.status, StatusCode::OK, "{}", ans.body);
}

/// `limits.max_connections: 1` counts the TLS and the plain listener together: while a TLS
/// connection is open, a plain one waits in the backlog, and is served once the TLS one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_cap_spans_the_tls_and_plain_listeners() {
    let pki = Pki::new("tls-process-cap");
    let a = pki.issue("a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let up = demo_upstream().await;
    let (plain, admin, tls) = (free_port(), free_port(), free_port());
    let yaml = tls_config(plain, admin, tls, &cert_entry(&a, "a.test"), up)
        + "limits: { max_connections: 1, header_read_timeout_ms: 60000 }\n";
    let _proxy = ProxyProcess::start("tls-process-cap", &yaml, plain);
    let plain_open = r#"weft_connections_open{listener="proxy"}"#;
    // The readiness probe's connection holds the one permit until it is gone.
    common::wait_metrics(admin, "the probe gone", |m| m.get(plain_open).is_none_or(|&n| n == 0.0)).await;
    let tcp = TcpStream::connect(tls).await.unwrap();
    let first = tokio_rustls::TlsConnector::from(Arc::new(client_config(&[pki.ca_der()], &[b"http/1.1"])))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("the TLS connection is accepted");
    let reached = r#"weft_connections_limit_reached_total{listener="proxy"}"#;
    let mut waiting = tokio::spawn(common::get(plain, "/", &[]));
    common::wait_metrics(admin, "the plain connection waiting", |m| {
        m.get(reached).is_some_and(|&n| n >= 1.0)
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(
        early.is_err(),
        "served over the process-wide cap: {:?}",
        early.map(|r| r.map(|a| a.0))
    );
    drop(first);
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the TLS connection closed")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// `weft-proxy check -c FILE`: whether it passed, and its output (stdout then stderr).
fn weft_check(file: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["check", "-c"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
