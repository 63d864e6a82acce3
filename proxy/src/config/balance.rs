//! The config of how an upstream spreads its requests: `upstreams[].balance`, the entries of
//! `upstreams[].addresses` (a plain `host:port`, or one with a `weight`) and
//! `upstreams[].retries`. The policies themselves are in `crate::balance`.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `upstreams[].balance`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    #[serde(default)]
    pub policy: BalancePolicy,
    /// What `consistent_hash` hashes; required by it, refused with the other policies.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
}

/// `upstreams[].balance.policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    /// Each address in turn.
    #[default]
    RoundRobin,
    /// The less busy of two addresses taken at random (power of two choices).
    LeastRequests,
    /// The same key to the same address (rendezvous hashing).
    ConsistentHash,
    /// Each address in proportion to its `weight`.
    Weighted,
}

impl BalancePolicy {
    pub fn name(self) -> &'static str {
        match self {
            BalancePolicy::RoundRobin => "round_robin",
            BalancePolicy::LeastRequests => "least_requests",
            BalancePolicy::ConsistentHash => "consistent_hash",
            BalancePolicy::Weighted => "weighted",
        }
    }
}

/// `upstreams[].balance.hash_on`: `{ header: NAME }`, `{ cookie: NAME }` or `client_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

/// The map forms of [`HashOn`] (YAML has no untagged enum of a string and a map).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashOnMap {
    header: Option<String>,
    cookie: Option<String>,
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HashOn, D::Error> {
        struct On;
        impl<'de> Visitor<'de> for On {
            type Value = HashOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("{ header: NAME }, { cookie: NAME } or client_ip")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HashOn, E> {
                match s {
                    "client_ip" => Ok(HashOn::ClientIp),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HashOn, A::Error> {
                let m = HashOnMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (m.header, m.cookie) {
                    (Some(h), None) => Ok(HashOn::Header(h)),
                    (None, Some(c)) => Ok(HashOn::Cookie(c)),
                    _ => Err(de::Error::custom("expected exactly one of header or cookie")),
                }
            }
        }
        d.deserialize_any(On)
    }
}

/// One entry of `upstreams[].addresses`: `"host:port"`, or `{ address: "host:port", weight: N }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressConfig {
    pub address: String,
    /// Share of `weighted` (1 when not given).
    pub weight: u32,
}

impl AddressConfig {
    pub fn new(address: &str) -> AddressConfig {
        AddressConfig {
            address: address.to_owned(),
            weight: 1,
        }
    }
}

/// The map form, with its own field errors (an untagged enum would only say "did not match").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressMap {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for AddressConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AddressConfig, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = AddressConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { address: \"host:port\", weight: N }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AddressConfig, E> {
                Ok(AddressConfig::new(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AddressConfig, A::Error> {
                let m = AddressMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AddressConfig {
                    address: m.address,
                    weight: m.weight,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, UpstreamConfig};

    fn parse(upstream: &str) -> Result<UpstreamConfig, Vec<String>> {
        let text = format!("listen: 127.0.0.1:8080\nupstreams:\n  - name: u\n{upstream}routes: [{{ upstream: u }}]\n");
        match Config::parse(&text, "b.yaml", Path::new(".")) {
            Ok(mut c) => Ok(c.upstreams.remove(0)),
            Err(e) => Err(e.0.iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn defaults_and_both_address_forms() {
        let u = parse("    addresses: [\"h:1\"]\n").unwrap();
        assert_eq!(u.balance, BalanceConfig::default());
        assert_eq!(u.balance.policy, BalancePolicy::RoundRobin);
        assert_eq!((u.retries, u.addresses[0].weight), (1, 1));
        let u = parse(
            "    balance: { policy: weighted }\n    retries: 0\n    addresses: [\"h:1\", { address: \"h:2\", weight: 7 }, { address: \"h:3\" }]\n",
        )
        .unwrap();
        let weights: Vec<u32> = u.addresses.iter().map(|a| a.weight).collect();
        assert_eq!((u.retries, weights), (0, vec![1, 7, 1]));
        assert_eq!(u.addresses[1].address, "h:2");
    }

    #[test]
    fn hash_on_forms() {
        let on = |hash_on: &str| {
            parse(&format!(
                "    addresses: [\"h:1\"]\n    balance: {{ policy: consistent_hash, hash_on: {hash_on} }}\n"
            ))
            .map(|u| u.balance.hash_on.unwrap())
        };
        assert_eq!(on("{ header: x-user }"), Ok(HashOn::Header("x-user".into())));
        assert_eq!(on("{ cookie: sid }"), Ok(HashOn::Cookie("sid".into())));
        assert_eq!(on("client_ip"), Ok(HashOn::ClientIp));
        let e = on("{ header: a, cookie: b }").unwrap_err();
        assert!(
            e[0].contains("balance.hash_on: expected exactly one of header or cookie"),
            "{e:?}"
        );
        let e = on("client").unwrap_err();
        assert!(
            e[0].contains("balance.hash_on: invalid value: string \"client\""),
            "{e:?}"
        );
        assert_eq!(
            on("{ header: \"bad header\" }").unwrap_err(),
            ["config error in b.yaml at upstreams[0].balance.hash_on.header: invalid header name \"bad header\""]
        );
        assert_eq!(
            on("{ cookie: \"a;b\" }").unwrap_err(),
            ["config error in b.yaml at upstreams[0].balance.hash_on.cookie: invalid cookie name \"a;b\""]
        );
    }

    #[test]
    fn problems_name_the_field() {
        let e = parse("    addresses: [\"h:1\"]\n    balance: { policy: fastest }\n").unwrap_err();
        assert!(
            e[0].starts_with("config error in b.yaml at upstreams[0].balance.policy: unknown variant `fastest`"),
            "{e:?}"
        );
        let e = parse("    addresses: [\"h:1\", { address: \"h:2\", wieght: 2 }]\n").unwrap_err();
        assert!(
            e[0].contains("upstreams[0].addresses[1]") && e[0].contains("unknown field `wieght`"),
            "{e:?}"
        );
        let e =
            parse("    balance: { policy: weighted }\n    addresses: [{ address: \"h:1\", weight: 0 }]\n").unwrap_err();
        assert_eq!(
            e,
            ["config error in b.yaml at upstreams[0].addresses[0].weight: must be between 1 and 1000, got 0"]
        );
        let heavy = ["{ address: \"h:1\", weight: 1000 }"; 11].join(", ");
        let e = parse(&format!(
            "    balance: {{ policy: weighted }}\n    addresses: [{heavy}]\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            ["config error in b.yaml at upstreams[0].addresses: the weights add up to 11000; at most 10000"]
        );
        let e = parse("    addresses: [\"h:1\"]\n    balance: { policy: consistent_hash }\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "config error in b.yaml at upstreams[0].balance.hash_on: required by policy consistent_hash"
            ),
            "{e:?}"
        );
        let e = parse("    addresses: [\"h:1\"]\n    balance: { hash_on: client_ip }\n").unwrap_err();
        assert_eq!(
            e,
            [
                "config error in b.yaml at upstreams[0].balance.hash_on: only for policy consistent_hash (the policy is round_robin)"
            ]
        );
        let e = parse("    addresses: [{ address: \"h:1\", weight: 2 }]\n    retries: 11\n").unwrap_err();
        assert_eq!(
            e,
            [
                "config error in b.yaml at upstreams[0].addresses[0].weight: only used by policy weighted (the policy is round_robin)",
                "config error in b.yaml at upstreams[0].retries: must be at most 10, got 11"
            ]
        );
    }
}
