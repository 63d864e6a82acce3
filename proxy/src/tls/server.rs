//! TLS termination: the certificates of one `listen_tls:` entry chosen by SNI, the rustls
//! server config (TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`) and the handshake of each
//! accepted connection.
//!
//! The handshake runs in the connection's own task on the serving thread that accepted it,
//! under `limits.header_read_timeout_ms`. Its CPU cost (`benches/benches/tls_handshake.rs`,
//! the server's calls only, TLS 1.3, on the shared 2-core test VM): about 0.17 ms with an
//! Ed25519 key, 0.2 ms with ECDSA P-256 or RSA-2048. That is how long a new TLS connection holds
//! up the other connections of its thread, in one piece: a few requests' worth, not a stall.
//! Handing it to another thread would add a wake-up each way per handshake (tens of µs here)
//! and move the connection off the thread that serves it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::cert::{LoadedCert, load};
use super::{ListenTlsConfig, VERSIONS, provider};
use crate::metrics;

/// What the connection's requests learn about its TLS session (a request extension).
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// The SNI name the client sent, lowercase.
    pub server_name: Option<Arc<str>>,
}

/// The certificates of one listener, by SNI name.
#[derive(Debug)]
pub struct CertSet {
    /// For clients without SNI or with a name no certificate lists: the first certificate.
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` entries, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// (cert file, expiry in Unix seconds) of each certificate, for metrics and `check`.
    pub expiry: Vec<(String, i64)>,
}

impl CertSet {
    /// Reads every certificate of `cfg` (`at`: its config path, for errors); all problems at once.
    pub fn load(cfg: &ListenTlsConfig, at: &str) -> Result<CertSet, Vec<String>> {
        let mut loaded: Vec<(LoadedCert, &[String])> = Vec::new();
        let mut errors = Vec::new();
        for (j, c) in cfg.certificates.iter().enumerate() {
            match load(&c.cert, &c.key) {
                Ok(l) => loaded.push((l, &c.server_names)),
                Err(e) => errors.push(format!("{at}.certificates[{j}]: {e}")),
            }
        }
        if !errors.is_empty() || loaded.is_empty() {
            if errors.is_empty() {
                errors.push(format!("{at}.certificates: needs at least one certificate"));
            }
            return Err(errors);
        }
        let mut set = CertSet {
            default: Arc::clone(&loaded[0].0.key),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            expiry: Vec::new(),
        };
        for ((l, names), c) in loaded.iter().zip(&cfg.certificates) {
            for n in names.iter().map(|n| n.to_ascii_lowercase()) {
                match n.strip_prefix("*.") {
                    Some(base) => set.wildcard.insert(base.to_owned(), Arc::clone(&l.key)),
                    None => set.exact.insert(n, Arc::clone(&l.key)),
                };
            }
            set.expiry.push((c.cert.display().to_string(), l.not_after));
        }
        Ok(set)
    }

    /// The certificate for SNI name `name`: exact, then one-label wildcard, then the default.
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else { return &self.default };
        let name = name.to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| name.split_once('.').and_then(|(_, base)| self.wildcard.get(base)))
            .unwrap_or(&self.default)
    }
}

/// Picks the certificate of each handshake from the listener's current [`CertSet`], which a
/// reload replaces without touching the connections (or the rustls config).
#[derive(Debug)]
struct SniResolver(ArcSwap<CertSet>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().pick(hello.server_name())))
    }
}

/// One `listen_tls:` listener: its address, acceptor and replaceable certificates.
pub struct TlsListener {
    pub addr: SocketAddr,
    /// `listen_tls[i]`, for errors and metric labels.
    pub label: String,
    /// `listen_tls[i].max_connections` (bound once: a reload keeps the first).
    pub max_connections: Option<u32>,
    acceptor: TlsAcceptor,
    resolver: Arc<SniResolver>,
}

impl TlsListener {
    /// Reads `cfg`'s certificates and builds the acceptor; `index` is its place in `listen_tls`.
    pub fn new(cfg: &ListenTlsConfig, index: usize) -> Result<Arc<TlsListener>, Vec<String>> {
        let label = format!("listen_tls[{index}]");
        let addr = cfg.listen.parse().map_err(|e| vec![format!("{label}.listen: {e}")])?;
        let set = CertSet::load(cfg, &label)?;
        let resolver = Arc::new(SniResolver(ArcSwap::from_pointee(set)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| vec![format!("{label}: {e}")])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TlsListener {
            addr,
            label,
            max_connections: cfg.max_connections,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        };
        listener.report_expiry();
        Ok(Arc::new(listener))
    }

    /// Serves `set` to new handshakes from now on; connections already up keep theirs.
    pub fn replace(&self, set: CertSet) {
        self.resolver.0.store(Arc::new(set));
        self.report_expiry();
    }

    /// The expiry of each certificate served now: (cert file, Unix seconds).
    pub fn expiry(&self) -> Vec<(String, i64)> {
        self.resolver.0.load().expiry.clone()
    }

    fn report_expiry(&self) {
        for (file, t) in self.resolver.0.load().expiry.iter() {
            metrics::global().tls().certificate_expiry(&self.label, file, *t);
        }
    }

    /// The TLS handshake of an accepted connection within `timeout`, counted by outcome.
    pub async fn handshake<IO>(&self, io: IO, timeout: Duration) -> Result<(TlsStream<IO>, TlsInfo), String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let m = metrics::global().tls();
        let stream = match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                m.handshake(&self.label, reason);
                return Err(format!("{reason}: {e}"));
            }
            Err(_) => {
                m.handshake(&self.label, "timeout");
                return Err("timeout".into());
            }
        };
        m.handshake(&self.label, "ok");
        let info = TlsInfo {
            server_name: stream.get_ref().1.server_name().map(Arc::from),
        };
        Ok((stream, info))
    }
}

/// A short, bounded label for a failed handshake (the `reason` of the metric).
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::NoApplicationProtocol) => "no_alpn",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(E::InvalidMessage(_)) | Some(E::InappropriateHandshakeMessage { .. }) => "bad_message",
        Some(_) => "tls_error",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertificateConfig;

    /// A self-signed ECDSA certificate for `name`, written to `dir`.
    fn write_cert(dir: &std::path::Path, name: &str, server_names: &[&str]) -> CertificateConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        CertificateConfig {
            cert: c,
            key: k,
            server_names: server_names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_the_first() {
        let dir = std::env::temp_dir().join(format!("weft-tls-pick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ListenTlsConfig {
            listen: "127.0.0.1:0".into(),
            max_connections: None,
            certificates: vec![
                write_cert(&dir, "first", &["first.test"]),
                write_cert(&dir, "exact", &["A.Example.com"]),
                write_cert(&dir, "wild", &["*.example.com"]),
            ],
        };
        let set = CertSet::load(&cfg, "listen_tls[0]").unwrap();
        let leaf = |name: Option<&str>| set.pick(name).cert[0].clone();
        let (first, exact, wild) = (
            leaf(Some("first.test")),
            leaf(Some("a.example.com")),
            leaf(Some("b.example.com")),
        );
        assert_ne!(first, exact);
        assert_ne!(exact, wild);
        assert_eq!(leaf(Some("A.EXAMPLE.COM")), exact, "names compare case-insensitively");
        assert_eq!(leaf(Some("x.y.example.com")), first, "a wildcard covers one label");
        assert_eq!(leaf(Some("example.com")), first);
        assert_eq!(leaf(None), first, "no SNI: the first certificate");
        assert_eq!(set.expiry.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_and_empty_files_name_the_file_and_the_reason() {
        let dir = std::env::temp_dir().join(format!("weft-tls-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut good = write_cert(&dir, "good", &[]);
        good.cert = dir.join("missing.pem");
        let empty = CertificateConfig {
            cert: write_cert(&dir, "other", &[]).cert,
            key: dir.join("empty.key"),
            server_names: vec![],
        };
        std::fs::write(&empty.key, "").unwrap();
        let cfg = ListenTlsConfig {
            listen: "127.0.0.1:0".into(),
            max_connections: None,
            certificates: vec![good, empty],
        };
        let errs = CertSet::load(&cfg, "listen_tls[3]").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        let missing = format!(
            "listen_tls[3].certificates[0]: {}: cannot read",
            dir.join("missing.pem").display()
        );
        assert!(errs[0].starts_with(&missing), "{errs:?}");
        let no_key = format!(
            "listen_tls[3].certificates[1]: {}: no private key",
            dir.join("empty.key").display()
        );
        assert!(errs[1].starts_with(&no_key), "{errs:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
