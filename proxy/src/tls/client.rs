//! HTTPS upstreams (`upstreams[].tls`): the rustls client config of an upstream (its CA file or
//! the system's roots, an optional client certificate) and the stream a pooled connection runs
//! on, plain or TLS. A certificate the upstream presents that does not verify fails the
//! connection (502, the reason logged); nothing falls back to plain text.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::cert::{load, read_certs};
use super::{UpstreamTlsConfig, VERSIONS, provider};

/// How an upstream's connections are secured.
pub struct UpstreamTls {
    connector: TlsConnector,
    /// `server_name`, else the host of each address.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Reads the files of `cfg` (`at`: its config path, for errors).
    pub fn new(cfg: &UpstreamTlsConfig, at: &str) -> Result<Arc<UpstreamTls>, String> {
        let roots = roots(cfg).map_err(|e| format!("{at}: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| format!("{at}: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let pair = load(cert, key).map_err(|e| format!("{at}.client_cert: {e}"))?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(pair.key)))
            }
            _ => builder.with_no_client_auth(),
        };
        // The pool speaks HTTP/1.1 to upstreams.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match &cfg.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| format!("{at}.server_name: {e}"))?),
            None => None,
        };
        Ok(Arc::new(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// The TLS handshake over `tcp` to `addr`, within `timeout`.
    pub async fn connect(&self, tcp: TcpStream, addr: &Authority, timeout: Duration) -> io::Result<UpstreamStream> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr.host().trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned())
                    .map_err(|e| io::Error::other(format!("server name {host:?}: {e}")))?
            }
        };
        let tls = tokio::time::timeout(timeout, self.connector.connect(name, tcp))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake timed out after {timeout:?}"),
                )
            })?
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        Ok(super::MaybeTls::Tls(Box::new(tls)))
    }
}

/// `ca_file`'s certificates, else the system's roots.
fn roots(cfg: &UpstreamTlsConfig) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &cfg.ca_file {
        for c in read_certs(path)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
        return Ok(roots);
    }
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(format!("no system root certificates found{why}; set ca_file"));
    }
    Ok(roots)
}

/// Always the one configured client certificate.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// An upstream connection's byte stream.
pub type UpstreamStream = super::MaybeTls<TcpStream, Box<TlsStream<TcpStream>>>;
