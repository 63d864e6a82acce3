//! Route matching: host, path prefix and method. The first matching route wins.

use http::Method;

/// Which request hosts a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatcher {
    /// Exact host, lowercased, without port.
    Exact(String),
    /// `*.example.com`: stores `.example.com`; matches any subdomain, not the apex.
    Suffix(String),
}

impl HostMatcher {
    pub fn parse(pattern: &str) -> Result<HostMatcher, String> {
        let p = pattern.trim().to_ascii_lowercase();
        let (suffix, name) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid {
            return Err(format!(
                "invalid host pattern {pattern:?} (expected a host name, or *.domain; no port)"
            ));
        }
        Ok(if suffix {
            HostMatcher::Suffix(format!(".{name}"))
        } else {
            HostMatcher::Exact(name.to_owned())
        })
    }

    /// `host` must already be normalized with [`normalize_host`].
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatcher::Exact(h) => host == h,
            HostMatcher::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// Lowercases and drops the port: `Example.COM:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let without_port = without_port.strip_suffix('.').unwrap_or(without_port);
    without_port.to_ascii_lowercase()
}

/// The matching part of a route.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub host: Option<HostMatcher>,
    pub path_prefix: String,
    pub methods: Option<Vec<Method>>,
}

impl Matcher {
    /// `host` is the normalized request host, if the request named one.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(h) if want.matches(h) => {}
                _ => return false,
            }
        }
        if !path_has_prefix(path, &self.path_prefix) {
            return false;
        }
        match &self.methods {
            Some(ms) => ms.contains(method),
            None => true,
        }
    }
}

/// Segment-aware prefix match: `/api` matches `/api`, `/api/x` and `/api?q` paths, but not
/// `/apix` — a plain string prefix would leak `/api-internal` into the `/api` route.
/// A prefix ending in `/` is a plain prefix.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// First-match route table.
pub struct Router<T> {
    routes: Vec<(Matcher, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: Vec<(Matcher, T)>) -> Self {
        Router { routes }
    }

    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(method, host, path))
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, prefix: &str, methods: Option<&[Method]>) -> Matcher {
        Matcher {
            host: host.map(|h| HostMatcher::parse(h).unwrap()),
            path_prefix: prefix.to_owned(),
            methods: methods.map(|m| m.to_vec()),
        }
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn host_patterns() {
        let exact = HostMatcher::parse("Example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com"));
        let wild = HostMatcher::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        for bad in ["", "*.", "a.*.com", "example.com:80", "http://x", "*"] {
            assert!(HostMatcher::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/users", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(!path_has_prefix("/ap", "/api"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(!path_has_prefix("/api", "/api/"));
    }

    #[test]
    fn first_match_wins() {
        let router = Router::new(vec![
            (m(Some("api.example.com"), "/", None), "by-host"),
            (m(None, "/api", Some(&[Method::GET, Method::POST])), "api"),
            (m(None, "/api", None), "api-other-methods"),
            (m(Some("*.example.com"), "/", None), "wildcard"),
        ]);
        let find = |method: Method, host: Option<&str>, path: &str| {
            router.find(&method, host.map(normalize_host).as_deref(), path).copied()
        };
        assert_eq!(
            find(Method::GET, Some("API.example.com:8080"), "/api/x"),
            Some("by-host")
        );
        assert_eq!(find(Method::GET, Some("other.test"), "/api/x"), Some("api"));
        assert_eq!(
            find(Method::DELETE, Some("other.test"), "/api/x"),
            Some("api-other-methods")
        );
        assert_eq!(find(Method::GET, Some("www.example.com"), "/x"), Some("wildcard"));
        assert_eq!(find(Method::GET, None, "/x"), None);
        assert_eq!(find(Method::GET, Some("other.test"), "/apix"), None);
    }

    #[test]
    fn method_mismatch_is_no_match() {
        let router = Router::new(vec![(m(None, "/", Some(&[Method::GET])), 1)]);
        assert_eq!(router.find(&Method::GET, None, "/"), Some(&1));
        assert_eq!(router.find(&Method::POST, None, "/"), None);
    }
}
