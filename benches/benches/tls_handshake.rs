//! The server's share of one TLS handshake, as the proxy's `listen_tls:` listeners do it
//! (rustls with ring, TLS 1.3, ALPN h2): the CPU a serving thread spends on a new TLS
//! connection, during which its other connections wait. Client and server run in memory, and
//! only the server's calls are timed. Keys: ECDSA P-256 and Ed25519 (rcgen), RSA-2048 (openssl,
//! when installed: ring cannot generate RSA keys).
//! Medians: `target/criterion/tls_handshake/*/new/estimates.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `bench.test` and its key, in DER.
fn rcgen_pair(alg: &'static rcgen::SignatureAlgorithm) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (cert.der().clone(), der)
}

fn openssl_rsa_pair() -> Option<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let dir = std::env::temp_dir().join(format!("weft-bench-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bench.test",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:bench.test",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?
        .status
        .success();
    let pair = ok.then(|| {
        (
            CertificateDer::from_pem_file(&cert).ok(),
            PrivateKeyDer::from_pem_file(&key).ok(),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    match pair {
        Some((Some(c), Some(k))) => Some((c, k)),
        _ => None,
    }
}

fn configs(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(server), Arc::new(client))
}

/// One full handshake in memory; returns the time spent in the server's calls.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let name = ServerName::try_from("bench.test").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    let mut in_server = Duration::ZERO;
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        in_server += t.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    assert_eq!(s.alpn_protocol(), Some(&b"h2"[..]));
    in_server
}

fn bench(c: &mut Criterion) {
    let mut keys = vec![
        ("ecdsa_p256", rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256)),
        ("ed25519", rcgen_pair(&rcgen::PKCS_ED25519)),
    ];
    match openssl_rsa_pair() {
        Some(pair) => keys.push(("rsa_2048", pair)),
        None => eprintln!("openssl not found: no RSA-2048 case"),
    }
    let mut g = c.benchmark_group("tls_handshake");
    for (name, (cert, key)) in keys {
        let (server, client) = configs(cert, key);
        g.bench_function(name, |b| {
            b.iter_custom(|n| (0..n).map(|_| handshake(&server, &client)).sum())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
