//! Warnings about configs that are valid but probably not what was meant (printed by
//! `weft-proxy check` and logged at start-up and reload): above all, routes that let requests
//! reach a protected route's upstream paths without its plugins.

use crate::config::{Config, RouteConfig, parse_method};
use crate::route::{HostMatcher, Matcher};

fn matcher(r: &RouteConfig) -> Matcher {
    Matcher {
        host: r.host.as_deref().and_then(|h| HostMatcher::parse(h).ok()),
        path_prefix: r.path_prefix.clone(),
        methods: r
            .methods
            .as_ref()
            .map(|ms| ms.iter().filter_map(|m| parse_method(m).ok()).collect()),
    }
}

fn route_name(r: &RouteConfig, i: usize) -> String {
    match &r.name {
        Some(n) => format!("routes[{i}] ({n})"),
        None => format!("routes[{i}]"),
    }
}

/// Whether `a` and `b` send to the same upstream, or to upstreams sharing an address.
fn same_upstream(config: &Config, a: &str, b: &str) -> bool {
    let addresses = |name: &str| {
        config
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.addresses.as_slice())
            .unwrap_or_default()
    };
    a == b
        || addresses(a)
            .iter()
            .any(|x| addresses(b).iter().any(|y| y.address == x.address))
}

/// Whether route `q` (after `p`) can take requests for `p`'s paths that `p` does not take:
/// `q`'s prefix covers `p`'s, and `q` reaches them for another host than `p` accepts, or (same
/// host and prefix, so the 405 fence lets it through) for a method `p` does not allow.
fn reaches_around(p: &Matcher, q: &Matcher) -> bool {
    if !crate::route::path_has_prefix(&p.path_prefix, &q.path_prefix) {
        return false;
    }
    let other_hosts = p.host.is_some() && !q.within(p);
    let host_overlaps = match (&p.host, &q.host) {
        (_, None) | (None, _) => true,
        (Some(a), Some(b)) => a == b || host_within(a, b) || host_within(b, a),
    };
    let other_methods = match (&p.methods, &q.methods) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(pm), Some(qm)) => qm.iter().any(|m| !pm.contains(m)),
    };
    let same_target = q.within(p);
    (other_hosts && host_overlaps) || (other_methods && same_target)
}

fn host_within(inner: &HostMatcher, outer: &HostMatcher) -> bool {
    let m = |h: &HostMatcher| Matcher {
        host: Some(h.clone()),
        path_prefix: "/".into(),
        methods: None,
    };
    m(inner).within(&m(outer))
}

/// Every warning for `config` (which has passed validation).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let matchers: Vec<Matcher> = config.routes.iter().map(matcher).collect();
    for (i, p) in config.routes.iter().enumerate() {
        if p.plugins.is_empty() {
            continue;
        }
        for (j, q) in config.routes.iter().enumerate().skip(i + 1) {
            let missing: Vec<&str> = p
                .plugins
                .iter()
                .filter(|pl| !q.plugins.contains(pl))
                .map(String::as_str)
                .collect();
            if missing.is_empty() || !same_upstream(config, &p.upstream, &q.upstream) {
                continue;
            }
            if reaches_around(&matchers[i], &matchers[j]) {
                out.push(format!(
                    "{} reaches the paths of {} (prefix {}) on the same upstream without its plugin(s) {}: \
                     a request with another host or method gets there unprotected; give it the same plugins, \
                     another upstream, or narrow it",
                    route_name(q, j),
                    route_name(p, i),
                    p.path_prefix,
                    missing.join(", ")
                ));
            }
        }
    }
    for (i, t) in config.trusted_proxies.iter().enumerate() {
        if crate::forward::TrustedProxies::parse_entry(t).is_ok_and(|n| n.prefix_len() == 0) {
            out.push(format!(
                "trusted_proxies[{i}] ({t}) trusts every peer: any client can set x-forwarded-for, forwarded and x-real-ip"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(routes: &str) -> Vec<String> {
        let text = format!(
            "listen: 127.0.0.1:1\nplugins: []\nupstreams:\n  - {{ name: a, addresses: [\"127.0.0.1:9\"] }}\n  - {{ name: b, addresses: [\"127.0.0.1:10\"] }}\n  - {{ name: a2, addresses: [\"127.0.0.1:9\"] }}\nroutes:\n{routes}"
        );
        // Not validated (the plugin names are made up): the lint only compares the lists.
        warnings(&serde_yaml_ng::from_str(&text).unwrap())
    }

    #[test]
    fn the_old_example_shape_is_flagged() {
        // Auth on /api for *.example.com with [GET, POST]; a catch-all without auth.
        let w = lint(
            "  - { name: api, host: \"*.example.com\", path_prefix: /api, methods: [GET, POST], upstream: a, plugins: [auth, timing] }\n\
             \x20 - { name: default, upstream: a, plugins: [timing] }\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("routes[1] (default) reaches the paths of routes[0] (api) (prefix /api) on the same upstream without its plugin(s) auth"), "{w:?}");
        // Same through another upstream entry with the same address.
        assert_eq!(
            lint("  - { host: x.test, path_prefix: /api, upstream: a, plugins: [auth] }\n  - { upstream: a2 }\n").len(),
            1
        );
        // Split by method on the same host and prefix.
        assert_eq!(
            lint("  - { path_prefix: /api, methods: [GET], upstream: a, plugins: [auth] }\n  - { path_prefix: /api, upstream: a }\n")
                .len(),
            1
        );
    }

    #[test]
    fn safe_shapes_are_not_flagged() {
        for routes in [
            // The catch-all carries the protected route's plugins.
            "  - { host: x.test, path_prefix: /api, upstream: a, plugins: [auth] }\n  - { upstream: a, plugins: [auth, timing] }\n",
            // Another upstream.
            "  - { host: x.test, path_prefix: /api, upstream: a, plugins: [auth] }\n  - { upstream: b }\n",
            // No host or method restriction: the protected route takes all of its paths.
            "  - { path_prefix: /api, upstream: a, plugins: [auth] }\n  - { upstream: a }\n",
            // Method restriction but the later route has another prefix: the 405 fence stops it.
            "  - { path_prefix: /api, methods: [GET], upstream: a, plugins: [auth] }\n  - { upstream: a }\n",
            // A narrower later route.
            "  - { host: x.test, path_prefix: /api, upstream: a, plugins: [auth] }\n  - { host: x.test, path_prefix: /api/public, upstream: a }\n",
            // Disjoint hosts.
            "  - { host: x.test, path_prefix: /api, upstream: a, plugins: [auth] }\n  - { host: y.test, upstream: a }\n",
        ] {
            assert_eq!(lint(routes), Vec::<String>::new(), "{routes}");
        }
    }

    #[test]
    fn trusting_everyone_is_flagged() {
        let mut c: Config = serde_yaml_ng::from_str(
            "listen: 127.0.0.1:1\nupstreams: [{ name: a, addresses: [\"127.0.0.1:9\"] }]\nroutes: [{ upstream: a }]\ntrusted_proxies: [10.0.0.0/8, 0.0.0.0/0]\n",
        )
        .unwrap();
        let w = warnings(&c);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("trusted_proxies[1] (0.0.0.0/0) trusts every peer"),
            "{w:?}"
        );
        c.trusted_proxies.pop();
        assert!(warnings(&c).is_empty());
    }
}
