//! Route matching: host, path prefix and method. The first matching route wins, except that a
//! route whose host and path match but whose methods do not fences off the routes after it: only
//! a later route inside its host and path (see [`Matcher::within`]) may still take the request,
//! otherwise it is answered 405. So `PUT /api/x` on a `[GET, POST]` route for `/api` does not
//! fall through to a catch-all route with fewer plugins.

use std::borrow::Cow;

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
/// Borrows `host` when it is lowercase already (what clients send): no allocation per request.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim_ascii();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // The last ':' found by bytes: `rsplit_once(':')` took ~150 instructions a request
        // through the char searcher (`scripts/callgrind-proxy`).
        let bytes = host.as_bytes();
        match bytes.iter().rposition(|&b| b == b':') {
            Some(colon) if bytes[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
            _ => host,
        }
    };
    let without_port = without_port.strip_suffix('.').unwrap_or(without_port);
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_port)
    }
}

/// The matching part of a route.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub host: Option<HostMatcher>,
    pub path_prefix: String,
    pub methods: Option<Vec<Method>>,
}

impl HostMatcher {
    /// Whether every host this matcher accepts is also accepted by `outer`.
    fn within(&self, outer: &HostMatcher) -> bool {
        match (self, outer) {
            (HostMatcher::Exact(h), HostMatcher::Exact(o)) => h == o,
            (HostMatcher::Exact(h), HostMatcher::Suffix(s)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (HostMatcher::Suffix(s), HostMatcher::Suffix(o)) => s.ends_with(o.as_str()),
            (HostMatcher::Suffix(_), HostMatcher::Exact(_)) => false,
        }
    }
}

impl Matcher {
    /// `host` is the normalized request host, if the request named one.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        self.matches_target(host, path) && self.allows(method)
    }

    /// Whether host and path match, whatever the method.
    pub fn matches_target(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(h) if want.matches(h) => {}
                _ => return false,
            }
        }
        path_has_prefix(path, &self.path_prefix)
    }

    pub fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            Some(ms) => ms.contains(method),
            None => true,
        }
    }

    /// Whether every (host, path) this matcher accepts is accepted by `outer` too: same or
    /// narrower host, same or longer path prefix.
    pub fn within(&self, outer: &Matcher) -> bool {
        let host = match (&self.host, &outer.host) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(h), Some(o)) => h.within(o),
        };
        host && path_has_prefix(&self.path_prefix, &outer.path_prefix)
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

/// The outcome of a route lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a, T> {
    Route(&'a T),
    /// A route's host and path match but not its methods: 405 with these in `Allow`.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// First-match route table.
pub struct Router<T> {
    routes: Vec<(Matcher, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: Vec<(Matcher, T)>) -> Self {
        Router { routes }
    }

    /// The first route that matches method, host and path, unless an earlier route matched host
    /// and path but not the method (its "fence") and the later one is not [`Matcher::within`]
    /// that fence. Allocates only for a 405.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Found<'_, T> {
        let mut fence: Option<&Matcher> = None;
        for (m, t) in &self.routes {
            if !m.matches_target(host, path) || fence.is_some_and(|f| !m.within(f)) {
                continue;
            }
            if m.allows(method) {
                return Found::Route(t);
            }
            fence = Some(m);
        }
        match fence {
            None => Found::NotFound,
            Some(_) => Found::MethodNotAllowed(self.allowed(host, path)),
        }
    }

    /// The methods some route would take for this host and path (the `Allow` of a 405): the
    /// methods of the routes [`find`](Self::find) looked at and passed over.
    fn allowed(&self, host: Option<&str>, path: &str) -> Vec<Method> {
        let mut fence: Option<&Matcher> = None;
        let mut allow = Vec::new();
        for (m, _) in &self.routes {
            if !m.matches_target(host, path) || fence.is_some_and(|f| !m.within(f)) {
                continue;
            }
            for method in m.methods.iter().flatten() {
                if !allow.contains(method) {
                    allow.push(method.clone());
                }
            }
            fence = Some(m);
        }
        allow
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
        // Only the last ':' can start a port, and only digits follow it.
        assert_eq!(normalize_host("a:b:80"), "a:b");
        assert_eq!(normalize_host("host:abc"), "host:abc");
        assert_eq!(normalize_host("host:"), "host");
        assert_eq!(normalize_host(" example.com:80\t"), "example.com");
        // Lowercase already: borrowed, not copied.
        assert!(matches!(
            normalize_host("api.example.com:8080"),
            Cow::Borrowed("api.example.com")
        ));
        assert!(matches!(normalize_host("Api.example.com"), Cow::Owned(_)));
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
        let find = |method: Method, host: Option<&str>, path: &str| match router.find(
            &method,
            host.map(normalize_host).as_deref(),
            path,
        ) {
            Found::Route(r) => Some(*r),
            _ => None,
        };
        assert_eq!(
            find(Method::GET, Some("API.example.com:8080"), "/api/x"),
            Some("by-host")
        );
        assert_eq!(find(Method::GET, Some("other.test"), "/api/x"), Some("api"));
        // Same host and path: within the fence of "api".
        assert_eq!(
            find(Method::DELETE, Some("other.test"), "/api/x"),
            Some("api-other-methods")
        );
        assert_eq!(find(Method::GET, Some("www.example.com"), "/x"), Some("wildcard"));
        assert_eq!(find(Method::GET, None, "/x"), None);
        assert_eq!(find(Method::GET, Some("other.test"), "/apix"), None);
    }

    #[test]
    fn method_mismatch_does_not_fall_through_to_a_wider_route() {
        let router = Router::new(vec![
            (
                m(Some("*.example.com"), "/api", Some(&[Method::GET, Method::POST])),
                "api",
            ),
            (m(Some("a.example.com"), "/api/upload", Some(&[Method::PUT])), "upload"),
            (m(None, "/", None), "catch-all"),
        ]);
        let find = |method: Method, host: &str, path: &str| router.find(&method, Some(host), path);
        assert_eq!(find(Method::GET, "a.example.com", "/api/x"), Found::Route(&"api"));
        assert_eq!(
            find(Method::PUT, "a.example.com", "/api/x"),
            Found::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
        // A narrower route inside the fence still takes its method.
        assert_eq!(
            find(Method::PUT, "a.example.com", "/api/upload/f"),
            Found::Route(&"upload")
        );
        assert_eq!(
            find(Method::DELETE, "a.example.com", "/api/upload/f"),
            Found::MethodNotAllowed(vec![Method::GET, Method::POST, Method::PUT])
        );
        // Outside the api route's host or path: the catch-all.
        assert_eq!(find(Method::PUT, "other.test", "/api/x"), Found::Route(&"catch-all"));
        assert_eq!(find(Method::PUT, "a.example.com", "/apix"), Found::Route(&"catch-all"));
    }

    #[test]
    fn method_mismatch_is_405() {
        let router = Router::new(vec![(m(None, "/", Some(&[Method::GET])), 1)]);
        assert_eq!(router.find(&Method::GET, None, "/"), Found::Route(&1));
        assert_eq!(
            router.find(&Method::POST, None, "/"),
            Found::MethodNotAllowed(vec![Method::GET])
        );
        let empty: Router<i32> = Router::new(vec![]);
        assert_eq!(empty.find(&Method::GET, None, "/"), Found::NotFound);
    }

    #[test]
    fn within() {
        let w = |inner: (Option<&str>, &str), outer: (Option<&str>, &str)| {
            m(inner.0, inner.1, None).within(&m(outer.0, outer.1, None))
        };
        assert!(w((None, "/api/x"), (None, "/api")));
        assert!(w((None, "/api"), (None, "/")));
        assert!(!w((None, "/"), (None, "/api")));
        assert!(!w((None, "/apix"), (None, "/api")));
        assert!(w((Some("a.example.com"), "/api"), (Some("*.example.com"), "/api")));
        assert!(w((Some("*.a.example.com"), "/api"), (Some("*.example.com"), "/")));
        assert!(!w((Some("example.com"), "/api"), (Some("*.example.com"), "/")));
        assert!(!w((None, "/api"), (Some("a.example.com"), "/")));
        assert!(!w((Some("*.example.com"), "/api"), (Some("a.example.com"), "/")));
        assert!(w((Some("a.example.com"), "/api"), (None, "/")));
    }
}
