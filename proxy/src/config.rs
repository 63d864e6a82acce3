//! YAML configuration: parsing (with field paths in errors) and semantic validation.
//!
//! Parsing and validation are pure: nothing here touches the network or the plugin runtime,
//! so `weft-proxy check` and the unit tests can run every rule.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Method;
use http::uri::Authority;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    #[serde(default)]
    pub runtime: Option<RuntimeConfig>,
    #[serde(default)]
    pub libraries: Vec<LibraryConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub slots: Option<u32>,
    pub slot_size: Option<u32>,
    pub log_queue: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryConfig {
    pub name: String,
    /// Resolved against the config file's directory by [`Config::load`].
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// A failing plugin answers 500.
    #[default]
    Closed,
    /// A failing plugin is skipped and the request continues unchanged.
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    pub library: String,
    pub plugin: String,
    #[serde(default)]
    pub failure: Failure,
    /// Arbitrary YAML, handed to the plugin as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl PluginConfig {
    /// The plugin's config block as JSON bytes; `{}` when absent so plugins can always decode it.
    pub fn config_json(&self) -> Vec<u8> {
        match &self.config {
            None | Some(serde_json::Value::Null) => b"{}".to_vec(),
            Some(v) => serde_json::to_vec(v).expect("a JSON value always serializes"),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` entries, used round robin.
    pub addresses: Vec<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional; used in logs and error messages.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<String>,
}

/// One problem in a config file: which file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Field path such as `routes[0].upstream`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "config error in {}: {}", self.file, self.message)
        } else {
            write!(f, "config error in {} at {}: {}", self.file, self.path, self.message)
        }
    }
}

/// Every problem found, so `check` can report them all at once.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates `path`; relative library paths are resolved against the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                path: String::new(),
                message: format!("cannot read file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Parses and validates YAML `text`; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let mut message = e.into_inner().to_string();
            // serde_yaml_ng prefixes its own (shorter) path; ours is already in the error.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if path.starts_with(prefix) {
                    message = rest.to_owned();
                }
            }
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                path,
                message,
            }])
        })?;
        for lib in &mut config.libraries {
            if lib.path.is_relative() {
                lib.path = base_dir.join(&lib.path);
            }
        }
        config.validate(file)?;
        Ok(config)
    }

    pub fn runtime_options(&self) -> weft_runtime::RuntimeOptions {
        let mut opts = weft_runtime::RuntimeOptions::default();
        if let Some(rt) = &self.runtime {
            if let Some(n) = rt.slots {
                opts.slot_count = n;
            }
            if let Some(n) = rt.slot_size {
                opts.slot_size = n;
            }
            if let Some(n) = rt.log_queue {
                opts.log_queue = n;
            }
        }
        opts
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated by Config::parse")
    }

    fn validate(&self, file: &str) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| {
            errs.push(ConfigError {
                file: file.to_owned(),
                path,
                message,
            });
        };

        if let Err(e) = self.listen.parse::<SocketAddr>() {
            err(
                "listen".into(),
                format!("invalid socket address {:?}: {e}", self.listen),
            );
        }
        if let Some(rt) = &self.runtime {
            if rt.slots == Some(0) {
                err("runtime.slots".into(), "must be at least 1".into());
            }
            if rt.slot_size == Some(0) {
                err("runtime.slot_size".into(), "must be at least 1".into());
            }
        }

        let libraries = unique_names("libraries", self.libraries.iter().map(|l| l.name.as_str()), &mut err);
        let plugins = unique_names("plugins", self.plugins.iter().map(|p| p.name.as_str()), &mut err);
        let upstreams = unique_names("upstreams", self.upstreams.iter().map(|u| u.name.as_str()), &mut err);
        unique_names("routes", self.routes.iter().filter_map(|r| r.name.as_deref()), &mut err);

        for (i, p) in self.plugins.iter().enumerate() {
            if !libraries.contains_key(p.library.as_str()) {
                err(
                    format!("plugins[{i}].library"),
                    format!("unknown library {:?}", p.library),
                );
            }
            if p.plugin.is_empty() {
                err(format!("plugins[{i}].plugin"), "must not be empty".into());
            }
        }

        for (i, u) in self.upstreams.iter().enumerate() {
            if u.addresses.is_empty() {
                err(format!("upstreams[{i}].addresses"), "needs at least one address".into());
            }
            for (j, a) in u.addresses.iter().enumerate() {
                if let Err(msg) = parse_upstream_address(a) {
                    err(format!("upstreams[{i}].addresses[{j}]"), msg);
                }
            }
            if u.connect_timeout_ms == 0 {
                err(
                    format!("upstreams[{i}].connect_timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if u.timeout_ms == 0 {
                err(format!("upstreams[{i}].timeout_ms"), "must be at least 1".into());
            }
        }

        if self.routes.is_empty() {
            err("routes".into(), "needs at least one route".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !upstreams.contains_key(r.upstream.as_str()) {
                err(
                    format!("routes[{i}].upstream"),
                    format!("unknown upstream {:?}", r.upstream),
                );
            }
            if !r.path_prefix.starts_with('/') {
                err(
                    format!("routes[{i}].path_prefix"),
                    format!("must start with '/', got {:?}", r.path_prefix),
                );
            }
            if let Some(host) = &r.host {
                if let Err(msg) = crate::route::HostMatcher::parse(host) {
                    err(format!("routes[{i}].host"), msg);
                }
            }
            if let Some(methods) = &r.methods {
                if methods.is_empty() {
                    err(
                        format!("routes[{i}].methods"),
                        "must not be empty (omit it to allow every method)".into(),
                    );
                }
                for (j, m) in methods.iter().enumerate() {
                    if let Err(msg) = parse_method(m) {
                        err(format!("routes[{i}].methods[{j}]"), msg);
                    }
                }
            }
            for (j, p) in r.plugins.iter().enumerate() {
                if !plugins.contains_key(p.as_str()) {
                    err(format!("routes[{i}].plugins[{j}]"), format!("unknown plugin {p:?}"));
                }
            }
        }

        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// Checks names in one list are non-empty and unique; returns name -> index.
fn unique_names<'a>(
    list: &str,
    names: impl Iterator<Item = &'a str>,
    err: &mut impl FnMut(String, String),
) -> HashMap<&'a str, usize> {
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            err(format!("{list}[{i}].name"), "must not be empty".into());
        } else if let Some(first) = seen.insert(name, i) {
            seen.insert(name, first);
            err(
                format!("{list}[{i}].name"),
                format!("duplicate name {name:?} (first used at {list}[{first}])"),
            );
        }
    }
    seen
}

/// An upstream address is `host:port` (IP or DNS name); no scheme, path or userinfo.
pub fn parse_upstream_address(s: &str) -> Result<Authority, String> {
    let auth: Authority = s
        .parse()
        .map_err(|e| format!("invalid address {s:?}: {e} (expected host:port)"))?;
    if auth.as_str().contains('@') {
        return Err(format!("invalid address {s:?}: userinfo is not allowed"));
    }
    if auth.host().is_empty() {
        return Err(format!("invalid address {s:?}: missing host"));
    }
    match auth.port_u16() {
        Some(0) => Err(format!("invalid address {s:?}: port 0")),
        Some(_) => Ok(auth),
        None => Err(format!("invalid address {s:?}: missing port (expected host:port)")),
    }
}

/// Standard methods are accepted in any case; extension methods must be valid tokens.
pub fn parse_method(s: &str) -> Result<Method, String> {
    let upper = s.to_ascii_uppercase();
    let is_token = !upper.is_empty()
        && upper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        return Err(format!("invalid HTTP method {s:?}"));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
runtime: { slots: 16, slot_size: 8192, log_queue: 10 }
libraries:
  - name: examples
    path: lib/libweft_plugins.so
plugins:
  - name: auth
    library: examples
    plugin: bearer-auth
    config: { tokens: ["s3cret"], nested: { n: 1 } }
  - name: timing
    library: examples
    plugin: timing
    failure: open
upstreams:
  - name: demo
    addresses: ["127.0.0.1:9000", "localhost:9001"]
    timeout_ms: 500
routes:
  - name: api
    host: "*.Example.com"
    path_prefix: /api
    methods: [get, POST]
    upstream: demo
    plugins: [auth, timing]
  - upstream: demo
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, "proxy.yaml", Path::new("/etc/weft"))
    }

    /// The messages of all errors, for compact assertions.
    fn errors(text: &str) -> Vec<String> {
        parse(text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn parses_full_example_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen_addr(), "127.0.0.1:8080".parse().unwrap());
        let opts = c.runtime_options();
        assert_eq!((opts.slot_count, opts.slot_size, opts.log_queue), (16, 8192, 10));
        assert_eq!(c.libraries[0].path, Path::new("/etc/weft/lib/libweft_plugins.so"));
        assert_eq!(c.plugins[0].failure, Failure::Closed);
        assert_eq!(c.plugins[1].failure, Failure::Open);
        let json: serde_json::Value = serde_json::from_slice(&c.plugins[0].config_json()).unwrap();
        assert_eq!(json, serde_json::json!({"tokens": ["s3cret"], "nested": {"n": 1}}));
        assert_eq!(c.plugins[1].config_json(), b"{}");
        assert_eq!(c.upstreams[0].connect_timeout_ms, 1000);
        assert_eq!(c.upstreams[0].timeout_ms, 500);
        assert_eq!(c.routes[1].path_prefix, "/");
        assert!(c.routes[1].plugins.is_empty());
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"));
        let c = Config::load(path).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert!(c.libraries[0].path.starts_with(path.parent().unwrap()));
    }

    #[test]
    fn absolute_library_path_is_kept() {
        let text = GOOD.replace("lib/libweft_plugins.so", "/opt/p.so");
        assert_eq!(parse(&text).unwrap().libraries[0].path, Path::new("/opt/p.so"));
    }

    #[test]
    fn unknown_field_names_path() {
        let text = GOOD.replace("timeout_ms: 500", "timeout_ms: 500\n    retries: 3");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("config error in proxy.yaml at upstreams[0].retries: unknown field `retries`"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_type_names_path() {
        let text = GOOD.replace("timeout_ms: 500", "timeout_ms: soon");
        let e = errors(&text);
        assert!(
            e[0].starts_with("config error in proxy.yaml at upstreams[0].timeout_ms: invalid type"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_failure_mode_names_path() {
        let text = GOOD.replace("failure: open", "failure: maybe");
        let e = errors(&text);
        assert!(
            e[0].starts_with("config error in proxy.yaml at plugins[1].failure: unknown variant `maybe`"),
            "{e:?}"
        );
    }

    #[test]
    fn missing_field_and_syntax_error() {
        let e = errors("listen: 127.0.0.1:1\nupstreams: []\n");
        assert!(
            e[0].starts_with("config error in proxy.yaml: missing field `routes`"),
            "{e:?}"
        );
        let e = errors("listen: [\n");
        assert!(e[0].starts_with("config error in proxy.yaml"), "{e:?}");
    }

    #[test]
    fn unknown_upstream_reference() {
        let text = GOOD.replace("    upstream: demo\n    plugins", "    upstream: nope\n    plugins");
        assert_eq!(
            errors(&text),
            ["config error in proxy.yaml at routes[0].upstream: unknown upstream \"nope\""]
        );
    }

    #[test]
    fn unknown_plugin_and_library_references() {
        let text = GOOD
            .replace("plugins: [auth, timing]", "plugins: [auth, timer]")
            .replace(
                "    library: examples\n    plugin: timing",
                "    library: other\n    plugin: timing",
            );
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at plugins[1].library: unknown library \"other\"",
                "config error in proxy.yaml at routes[0].plugins[1]: unknown plugin \"timer\"",
            ]
        );
    }

    #[test]
    fn duplicate_names() {
        let text = GOOD.replace("  - name: timing\n", "  - name: auth\n");
        let e = errors(&text);
        // The route's reference to "timing" now dangles too.
        assert_eq!(
            e[0],
            "config error in proxy.yaml at plugins[1].name: duplicate name \"auth\" (first used at plugins[0])"
        );
        assert_eq!(
            e[1],
            "config error in proxy.yaml at routes[0].plugins[1]: unknown plugin \"timing\""
        );
    }

    #[test]
    fn bad_addresses() {
        let text = GOOD
            .replace("listen: 127.0.0.1:8080", "listen: localhost:http")
            .replace(
                r#"["127.0.0.1:9000", "localhost:9001"]"#,
                r#"["127.0.0.1", "http://x:1/", "h:0"]"#,
            );
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("config error in proxy.yaml at listen: invalid socket address"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "config error in proxy.yaml at upstreams[0].addresses[0]: invalid address \"127.0.0.1\": missing port"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("config error in proxy.yaml at upstreams[0].addresses[1]: invalid address"),
            "{e:?}"
        );
        assert!(e[3].ends_with("addresses[2]: invalid address \"h:0\": port 0"), "{e:?}");
    }

    #[test]
    fn empty_address_list() {
        let text = GOOD.replace(r#"["127.0.0.1:9000", "localhost:9001"]"#, "[]");
        assert_eq!(
            errors(&text),
            ["config error in proxy.yaml at upstreams[0].addresses: needs at least one address"]
        );
    }

    #[test]
    fn bad_methods_and_prefix() {
        let text = GOOD
            .replace("methods: [get, POST]", r#"methods: [GET, "NOT A METHOD", ""]"#)
            .replace("path_prefix: /api", "path_prefix: api");
        assert_eq!(
            errors(&text),
            [
                "config error in proxy.yaml at routes[0].path_prefix: must start with '/', got \"api\"",
                "config error in proxy.yaml at routes[0].methods[1]: invalid HTTP method \"NOT A METHOD\"",
                "config error in proxy.yaml at routes[0].methods[2]: invalid HTTP method \"\"",
            ]
        );
    }

    #[test]
    fn bad_host_pattern() {
        let text = GOOD.replace(r#"host: "*.Example.com""#, r#"host: "a.*.com""#);
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("config error in proxy.yaml at routes[0].host: "),
            "{e:?}"
        );
    }

    #[test]
    fn methods_are_normalized() {
        assert_eq!(parse_method("get").unwrap(), Method::GET);
        assert_eq!(parse_method("PURGE").unwrap().as_str(), "PURGE");
        assert!(parse_method("GE T").is_err());
    }
}
