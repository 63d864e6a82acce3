//! TLS at the edge: termination on `listen_tls:` listeners ([`server`]), HTTPS upstreams
//! ([`client`]), certificate files and their expiry ([`cert`]), reloads of certificates
//! ([`reload`]).
//!
//! One crypto provider for the whole binary: rustls's `ring` provider. async-nats (the NATS
//! bridge) already builds rustls with ring, and rustls picks its process default from the
//! enabled providers; two providers (ring and aws-lc-rs) in one binary make rustls's default
//! ambiguous and double the crypto code. Every config here is built with [`provider`] explicitly,
//! so nothing depends on a process-wide default.

pub mod cert;
pub mod client;
pub mod reload;
pub mod server;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{DnsName, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;

/// The protocol versions offered on both sides: TLS 1.2 and 1.3 only.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every TLS config in the process (ring, as async-nats).
pub fn provider() -> Arc<CryptoProvider> {
    static P: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    Arc::clone(P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// One `listen_tls:` entry: an address and the certificates it serves.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsConfig {
    /// Address, e.g. `0.0.0.0:443`.
    pub listen: String,
    /// Connections this listener takes at once, within `limits.max_connections` (`accept.rs`);
    /// default only that.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// The first one answers clients that send no SNI name or one no certificate lists.
    pub certificates: Vec<CertificateConfig>,
}

/// A certificate chain and its key (PEM files), and the SNI names it answers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM: the server certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: PathBuf,
    /// SNI names this certificate answers; `*.example.com` matches one label.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `upstreams[].tls`: HTTPS to the upstream.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name sent as SNI and checked against the certificate; default the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA certificates to trust; default the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS (both or neither).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// Makes the certificate paths of `config` absolute against the config file's directory.
pub fn resolve_paths(config: &mut Config, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for l in &mut config.listen_tls {
        for c in &mut l.certificates {
            fix(&mut c.cert);
            fix(&mut c.key);
        }
    }
    for u in config.upstreams.iter_mut().filter_map(|u| u.tls.as_mut()) {
        u.ca_file
            .iter_mut()
            .chain(&mut u.client_cert)
            .chain(&mut u.client_key)
            .for_each(fix);
    }
}

/// The checks that need no file: addresses, names, pairs. The files are read when the
/// listeners and upstreams are built (start, reload, `check`), each error naming its file.
pub fn validate_tls(config: &Config, err: &mut impl FnMut(String, String)) {
    let mut seen = vec![config.listen.clone()];
    for (i, l) in config.listen_tls.iter().enumerate() {
        let at = format!("listen_tls[{i}]");
        match l.listen.parse::<SocketAddr>() {
            Err(e) => err(
                format!("{at}.listen"),
                format!("invalid socket address {:?}: {e}", l.listen),
            ),
            Ok(_) if seen.contains(&l.listen) => err(format!("{at}.listen"), format!("{} is already used", l.listen)),
            Ok(_) => seen.push(l.listen.clone()),
        }
        if l.max_connections == Some(0) {
            err(format!("{at}.max_connections"), "must be at least 1".into());
        }
        if l.certificates.is_empty() {
            err(format!("{at}.certificates"), "needs at least one certificate".into());
        }
        let mut names: Vec<String> = Vec::new();
        for (j, c) in l.certificates.iter().enumerate() {
            for (k, n) in c.server_names.iter().enumerate() {
                let path = format!("{at}.certificates[{j}].server_names[{k}]");
                let n = n.to_ascii_lowercase();
                if DnsName::try_from(n.strip_prefix("*.").unwrap_or(&n)).is_err() {
                    err(path, format!("{n:?} is not a DNS name (or *.name)"));
                } else if names.contains(&n) {
                    err(path, format!("{n:?} is listed by another certificate of this listener"));
                } else {
                    names.push(n);
                }
            }
        }
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let Some(t) = &u.tls else { continue };
        let at = format!("upstreams[{i}].tls");
        if let Some(n) = &t.server_name
            && ServerName::try_from(n.as_str()).is_err()
        {
            err(
                format!("{at}.server_name"),
                format!("{n:?} is not a DNS name or IP address"),
            );
        }
        if t.client_cert.is_some() != t.client_key.is_some() {
            err(at, "client_cert and client_key go together".into());
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct HandshakeLabel {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CertLabel {
    listener: String,
    cert: String,
}

/// `weft_tls_handshakes_total{listener,result}` and `weft_tls_certificate_expiry_seconds`.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    handshakes:
        prometheus_client::metrics::family::Family<HandshakeLabel, prometheus_client::metrics::counter::Counter>,
    expiry: prometheus_client::metrics::family::Family<CertLabel, prometheus_client::metrics::gauge::Gauge>,
}

impl TlsMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "weft_tls_handshakes",
            "TLS handshakes on listen_tls listeners, by listener and result (ok, or the failure: \
             timeout, eof, io, alert_received, incompatible, no_alpn, bad_message, tls_error)",
            self.handshakes.clone(),
        );
        registry.register(
            "weft_tls_certificate_expiry_seconds",
            "When each served certificate expires (Unix time), by listener and certificate file",
            self.expiry.clone(),
        );
    }

    pub fn handshake(&self, listener: &str, result: &'static str) {
        let label = HandshakeLabel {
            listener: listener.to_owned(),
            result,
        };
        self.handshakes.get_or_create(&label).inc();
    }

    pub fn certificate_expiry(&self, listener: &str, cert: &str, unix: i64) {
        let label = CertLabel {
            listener: listener.to_owned(),
            cert: cert.to_owned(),
        };
        self.expiry.get_or_create(&label).set(unix);
    }
}

/// A connection's byte stream, plain or TLS (the client's, or an upstream's).
pub enum MaybeTls<P, T> {
    Plain(P),
    Tls(T),
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            MaybeTls::Plain($s) => $e,
            MaybeTls::Tls($s) => $e,
        }
    };
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for MaybeTls<P, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        both!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<P, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        both!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        both!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        both!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// What `weft-proxy check` says about TLS: each listener's certificates with their expiry, each
/// HTTPS upstream; `Err` lists every certificate or CA file that cannot be used.
pub fn check(config: &Config) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    match reload::listeners(config) {
        Ok(listeners) => {
            for l in listeners {
                for (file, t) in l.expiry() {
                    let days = (t - cert::now_unix()).div_euclid(86_400);
                    let when = if days < 0 {
                        "EXPIRED".to_owned()
                    } else {
                        format!("in {days} days")
                    };
                    let at = cert::format_time(t);
                    lines.push(format!(
                        "{} ({}): certificate {file} expires {at} ({when})",
                        l.label, l.addr
                    ));
                }
            }
        }
        Err(e) => problems.push(e),
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let Some(t) = &u.tls else { continue };
        match client::UpstreamTls::new(t, &format!("upstreams[{i}].tls")) {
            Ok(_) => lines.push(format!("upstream {}: HTTPS ({})", u.name, tls_summary(t))),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        Err(problems.join("\n"))
    }
}

fn tls_summary(t: &UpstreamTlsConfig) -> String {
    let roots = t
        .ca_file
        .as_ref()
        .map_or("system roots".to_owned(), |p| format!("CA {}", p.display()));
    let client = if t.client_cert.is_some() {
        ", client certificate"
    } else {
        ""
    };
    format!("{roots}{client}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, String> {
        Config::parse(yaml, "t.yaml", Path::new("/etc/weft")).map_err(|e| e.to_string())
    }

    const BASE: &str = "listen: 127.0.0.1:8080\nroutes: [{ upstream: u }]\n";

    #[test]
    fn every_field_parses_and_paths_resolve_against_the_config() {
        let c = parse(&format!(
            "{BASE}listen_tls:\n  - listen: 127.0.0.1:8443\n    max_connections: 7\n    certificates:\n      - {{ cert: a.pem, key: /k/a.key, server_names: [a.test, \"*.b.test\"] }}\n\
             upstreams:\n  - name: u\n    addresses: [\"h:443\"]\n    tls: {{ server_name: h.test, ca_file: ca.pem, client_cert: c.pem, client_key: c.key }}\n"
        ))
        .unwrap();
        assert_eq!(c.listen_tls[0].max_connections, Some(7));
        let cert = &c.listen_tls[0].certificates[0];
        assert_eq!(cert.cert, Path::new("/etc/weft/a.pem"));
        assert_eq!(cert.key, Path::new("/k/a.key"));
        let t = c.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/etc/weft/ca.pem")));
        assert_eq!(t.client_key.as_deref(), Some(Path::new("/etc/weft/c.key")));
    }

    #[test]
    fn bad_tls_settings_are_config_errors() {
        let up = "upstreams: [{ name: u, addresses: [\"h:1\"] }]\n";
        let e = parse(&format!(
            "{BASE}{up}listen_tls:\n  - {{ listen: 127.0.0.1:8080, certificates: [], max_connections: 0 }}\n  - listen: nope\n    certificates:\n      - {{ cert: a, key: b, server_names: [\"bad name\", a.test] }}\n      - {{ cert: c, key: d, server_names: [A.test] }}\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("listen_tls[0].listen: 127.0.0.1:8080 is already used"),
            "{e}"
        );
        assert!(e.contains("listen_tls[0].max_connections: must be at least 1"), "{e}");
        assert!(
            e.contains("listen_tls[0].certificates: needs at least one certificate"),
            "{e}"
        );
        assert!(e.contains("listen_tls[1].listen: invalid socket address"), "{e}");
        assert!(
            e.contains("listen_tls[1].certificates[0].server_names[0]: \"bad name\" is not a DNS name"),
            "{e}"
        );
        assert!(
            e.contains("listen_tls[1].certificates[1].server_names[0]: \"a.test\" is listed by another"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}upstreams: [{{ name: u, addresses: [\"h:1\"], tls: {{ server_name: \"a b\", client_cert: c.pem }} }}]\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("upstreams[0].tls.server_name: \"a b\" is not a DNS name"),
            "{e}"
        );
        assert!(
            e.contains("upstreams[0].tls: client_cert and client_key go together"),
            "{e}"
        );
    }
}
