//! A tiny upstream that describes every request it receives as JSON, and the config that
//! `weft-proxy demo` runs against it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tracing::debug;

/// Bodies up to this size are echoed as text; larger ones are only counted and hashed.
const ECHO_LIMIT: usize = 64 * 1024;

/// Binds `addr` and serves the demo upstream in a background task; returns the bound address.
pub async fn spawn_demo_upstream(addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("bind demo upstream");
    let local = listener.local_addr().expect("local_addr");
    tokio::spawn(serve_demo_upstream(listener));
    local
}

/// Serves the demo upstream on `listener` forever.
pub async fn serve_demo_upstream(listener: TcpListener) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let Ok(local) = listener.local_addr() else { return };
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            // Usually fd exhaustion: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| describe(req, remote, local)),
            )
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "demo upstream connection error");
            }
        });
    }
}

/// 200 with a JSON description of the request. The body is streamed through a running hash,
/// never held whole, so large uploads can be checked for integrity cheaply.
async fn describe(
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        headers.insert(name.as_str().to_owned(), value);
    }

    let mut len = 0usize;
    let mut hash = Fnv1a::new();
    let mut echo = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    hash.update(&data);
                    if echo.len() < ECHO_LIMIT {
                        echo.extend_from_slice(&data[..data.len().min(ECHO_LIMIT - echo.len())]);
                    }
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }

    let description = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "upstream": local.to_string(),
        "remote_addr": remote.to_string(),
        "headers": headers,
        "body": if len <= ECHO_LIMIT { Value::String(String::from_utf8_lossy(&echo).into_owned()) } else { Value::Null },
        "body_len": len,
        "body_fnv1a64": format!("{:016x}", hash.finish()),
        "body_error": body_error,
    });
    let mut text = serde_json::to_vec_pretty(&description).expect("JSON value serializes");
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// 64-bit FNV-1a: enough to compare bodies in tests and demos without a hashing dependency.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Fnv1a {
    pub fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a::new()
    }
}

/// Bearer token the demo config gives the `bearer-auth` example plugin.
pub const DEMO_TOKEN: &str = "s3cret";

/// Config text for `weft-proxy demo`. With `library` (the example plugin library), every route
/// runs `timing-logger` and `header-rewriter`, and `/api` is guarded by `bearer-auth`; without
/// it, no plugins are used.
pub fn demo_config(listen: SocketAddr, upstream: SocketAddr, library: Option<&Path>) -> String {
    let mut text = format!("listen: {listen}\n");
    if let Some(lib) = library {
        // Debug formatting quotes the path (a valid YAML double-quoted scalar for sane paths).
        let lib = lib.display().to_string();
        text.push_str(&format!(
            "libraries:\n  - name: examples\n    path: {lib:?}\n\
             plugins:\n\
             \x20 - name: auth\n    library: examples\n    plugin: bearer-auth\n    \
             config: {{ tokens: [{DEMO_TOKEN:?}] }}\n\
             \x20 - name: timing\n    library: examples\n    plugin: timing-logger\n    failure: open\n\
             \x20 - name: headers\n    library: examples\n    plugin: header-rewriter\n    \
             config: {{ request_set: {{ x-demo: \"set by a Go plugin\" }}, response_set: {{ x-powered-by: weft }} }}\n",
        ));
    }
    let (api_plugins, all_plugins) = if library.is_some() {
        ("[timing, auth, headers]", "[timing, headers]")
    } else {
        ("[]", "[]")
    };
    text.push_str(&format!(
        "upstreams:\n  - name: demo\n    addresses: [\"{upstream}\"]\n\
         routes:\n\
         \x20 - name: api\n    path_prefix: /api\n    upstream: demo\n    plugins: {api_plugins}\n\
         \x20 - name: everything-else\n    upstream: demo\n    plugins: {all_plugins}\n"
    ));
    text
}

/// A self-signed certificate for `localhost` and `ip`, written to `dir` as `cert.pem` and
/// `key.pem` (ECDSA P-256), for the demo's HTTPS listener; returns the two paths.
pub fn write_demo_certificate(dir: &Path, ip: std::net::IpAddr) -> Result<(PathBuf, PathBuf), String> {
    let names = vec!["localhost".to_owned(), ip.to_string()];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(names)
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| format!("cannot make the demo certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write =
        |p: &Path, text: String| std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()));
    write(&cert_path, cert.pem())?;
    write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// The `listen_tls:` section of the demo config: one listener serving `cert` and `key`.
pub fn demo_tls_config(listen: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "listen_tls:\n  - listen: {listen}\n    certificates:\n      - {{ cert: {:?}, key: {:?} }}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// The demo's HTTPS line: HTTP/2 over TLS, trusting the generated certificate.
pub fn demo_https_line(listen: SocketAddr, cert: &Path) -> String {
    format!(
        "curl -s --http2 --cacert {:?} 'https://{listen}/tls'",
        cert.display().to_string()
    )
}

/// Ready-to-paste commands for the demo.
pub fn demo_curl_lines(listen: SocketAddr, with_plugins: bool) -> Vec<String> {
    let base = format!("http://{listen}");
    let mut lines = vec![
        format!("curl -si '{base}/hello?name=weft'"),
        format!("curl -s -X POST --data 'hi there' '{base}/echo'"),
        format!("curl -s --http2-prior-knowledge '{base}/h2'"),
    ];
    if with_plugins {
        lines.push(format!("curl -si '{base}/api/items'            # 401: no token"));
        lines.push(format!(
            "curl -s -H 'authorization: Bearer {DEMO_TOKEN}' '{base}/api/items'"
        ));
    } else {
        lines.push(format!("curl -s '{base}/api/items'"));
    }
    lines.push(format!(
        "curl -si '{base}/no/such'    # falls through to the catch-all route"
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn fnv_known_values() {
        assert_eq!(Fnv1a::new().finish(), 0xcbf29ce484222325);
        let mut h = Fnv1a::new();
        h.update(b"a");
        assert_eq!(h.finish(), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn demo_configs_validate() {
        let listen = "127.0.0.1:8080".parse().unwrap();
        let up = "127.0.0.1:9000".parse().unwrap();
        let plain = Config::parse(&demo_config(listen, up, None), "<demo>", Path::new(".")).unwrap();
        assert!(plain.plugins.is_empty() && plain.libraries.is_empty());

        let lib = Path::new("/tmp/some dir/libweft_plugins.so");
        let text = demo_config(listen, up, Some(lib));
        let c = Config::parse(&text, "<demo>", Path::new(".")).unwrap();
        assert_eq!(c.libraries[0].path, lib);
        assert_eq!(c.routes[0].plugins, ["timing", "auth", "headers"]);
        assert_eq!(c.plugins[1].plugin, "timing-logger");
        let headers: serde_json::Value = serde_json::from_slice(&c.plugins[2].config_json()).unwrap();
        assert_eq!(headers["request_set"]["x-demo"], "set by a Go plugin");
        assert_eq!(c.plugins[0].config_json(), br#"{"tokens":["s3cret"]}"#);
    }

    #[test]
    fn the_demo_certificate_serves_its_https_listener() {
        let dir = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
        let (cert, key) = write_demo_certificate(&dir, "127.0.0.1".parse().unwrap()).unwrap();
        let listen = "127.0.0.1:8080".parse().unwrap();
        let text = demo_config(listen, "127.0.0.1:9000".parse().unwrap(), None)
            + &demo_tls_config("127.0.0.1:8443".parse().unwrap(), &cert, &key);
        let c = Config::parse(&text, "<demo>", Path::new(".")).unwrap();
        let listeners = crate::tls::reload::listeners(&c).unwrap();
        assert_eq!(listeners[0].addr.port(), 8443);
        let line = demo_https_line(listeners[0].addr, &cert);
        assert!(
            line.contains("--http2 --cacert") && line.contains("'https://127.0.0.1:8443/tls'"),
            "{line}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
