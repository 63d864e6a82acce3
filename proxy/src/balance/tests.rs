use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderValue;

use super::*;
use crate::config::EjectionConfig;
use crate::metrics::AddressMetrics;

fn health(n: usize) -> Vec<Arc<AddressHealth>> {
    let config = EjectionConfig {
        consecutive_failures: 1,
        duration_ms: 60_000,
    };
    (0..n)
        .map(|i| {
            let addr = format!("10.0.0.{i}:80");
            Arc::new(AddressHealth::new("t", &addr, &config, AddressMetrics::default()))
        })
        .collect()
}

fn picks(b: &Balancer, h: &[Arc<AddressHealth>], n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| b.pick(None, &Candidates::new(h, &[])).unwrap())
        .collect()
}

fn counts(list: &[usize]) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for &i in list {
        *m.entry(i).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_takes_each_address_in_turn_and_skips_the_unavailable() {
    let h = health(3);
    let b = Balancer::RoundRobin(RoundRobin::default());
    assert_eq!(picks(&b, &h, 6), [0, 1, 2, 0, 1, 2]);
    h[1].set_check_down(true);
    assert!(!picks(&b, &h, 10).contains(&1));
    assert_eq!(b.pick(None, &Candidates::new(&h, &[0, 2])), None, "all tried or out");
    h[0].record(crate::health::Outcome::Failure);
    h[2].set_check_down(true);
    assert_eq!(b.pick(None, &Candidates::new(&h, &[])), None, "every address out");
}

#[test]
fn the_smooth_schedule_interleaves_by_weight() {
    assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(smooth_schedule(&[1, 1]), [0, 1]);
    let w = Weighted::new(&[300, 100, 200]);
    assert_eq!(&*w.weights, [3, 1, 2], "divided by the common divisor");
    assert_eq!(w.schedule.len(), 6);
}

#[test]
fn weighted_follows_the_weights_and_redistributes_an_unavailable_share() {
    let h = health(3);
    let b = Balancer::Weighted(Weighted::new(&[3, 1, 2]));
    let c = counts(&picks(&b, &h, 600));
    assert_eq!((c[&0], c[&1], c[&2]), (300, 100, 200), "whole cycles are exact");
    // Address 0 out: the others share its turns by their weights (1:2), at random.
    h[0].set_check_down(true);
    let c = counts(&picks(&b, &h, 3000));
    assert_eq!(c.get(&0), None);
    let (one, two) = (c[&1] as f64, c[&2] as f64);
    assert!((1.6..2.5).contains(&(two / one)), "1:2 expected, got {c:?}");
}

#[test]
fn least_requests_avoids_the_busy_address() {
    let h = health(3);
    let b = Balancer::LeastRequests;
    let _busy: Vec<_> = (0..5).map(|_| h[1].active()).collect();
    assert_eq!(h[1].active_requests(), 5);
    let c = counts(&picks(&b, &h, 300));
    assert_eq!(c.get(&1), None, "any pair with the busy one picks the other: {c:?}");
    assert!(c[&0] > 50 && c[&2] > 50, "the idle ones share: {c:?}");
    // Both idle ones out: the busy one is all that is left.
    h[0].set_check_down(true);
    h[2].set_check_down(true);
    assert_eq!(picks(&b, &h, 20), [1; 20]);
    assert_eq!(b.pick(None, &Candidates::new(&h, &[1])), None);
}

#[test]
fn least_requests_with_one_address() {
    let h = health(1);
    assert_eq!(Balancer::LeastRequests.pick(None, &Candidates::new(&h, &[])), Some(0));
    assert_eq!(Balancer::LeastRequests.pick(None, &Candidates::new(&h, &[0])), None);
}

fn ring(addresses: &[&str]) -> Rendezvous {
    Rendezvous::new(HashKey::ClientIp, addresses)
}

/// Which address (by name) each of `keys` goes to.
fn owners(r: &Rendezvous, names: &[&str], h: &[Arc<AddressHealth>], keys: u64) -> Vec<String> {
    (0..keys)
        .map(|k| names[r.pick(xxh3_64(&k.to_le_bytes()), &Candidates::new(h, &[])).unwrap()].to_owned())
        .collect()
}

#[test]
fn consistent_hash_keeps_keys_and_moves_only_the_removed_address_keys() {
    let all = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    let before = owners(&ring(&all), &all, &health(4), 2000);
    assert_eq!(before, owners(&ring(&all), &all, &health(4), 2000), "stable");
    let spread = counts(
        &before
            .iter()
            .map(|a| all.iter().position(|x| x == a).unwrap())
            .collect::<Vec<_>>(),
    );
    assert!(spread.values().all(|&n| n > 350), "even enough: {spread:?}");

    // 10.0.0.3 removed (a reload): the others keep every key, its keys spread over them.
    let rest = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80"];
    let after = owners(&ring(&rest), &rest, &health(3), 2000);
    for (b, a) in before.iter().zip(&after) {
        if b != "10.0.0.3:80" {
            assert_eq!(a, b, "a key of a remaining address moved");
        }
    }
    let moved: Vec<&String> = before
        .iter()
        .zip(&after)
        .filter(|(b, _)| *b == "10.0.0.3:80")
        .map(|(_, a)| a)
        .collect();
    assert!(
        rest.iter().all(|r| moved.iter().filter(|m| *m == r).count() > 100),
        "spread: {moved:?}"
    );
}

#[test]
fn consistent_hash_skips_an_ejected_address_and_its_keys_come_back() {
    let all = ["a:1", "b:1", "c:1"];
    let (r, h) = (ring(&all), health(3));
    let before = owners(&r, &all, &h, 600);
    h[1].set_check_down(true);
    let during = owners(&r, &all, &h, 600);
    for (b, d) in before.iter().zip(&during) {
        assert!(d != "b:1");
        if b != "b:1" {
            assert_eq!(b, d);
        }
    }
    h[1].set_check_down(false);
    assert_eq!(owners(&r, &all, &h, 600), before);
    // A retry excludes the address tried: the key's second choice.
    let key = xxh3_64(b"k");
    let first = r.pick(key, &Candidates::new(&h, &[])).unwrap();
    let second = r.pick(key, &Candidates::new(&h, &[first])).unwrap();
    assert_ne!(first, second);
    h[first].set_check_down(true);
    assert_eq!(r.pick(key, &Candidates::new(&h, &[])), Some(second));
}

#[test]
fn consistent_hash_without_the_key_goes_round_robin() {
    let h = health(2);
    let on = HashOn::Header("x-user".into());
    let b = Balancer::ConsistentHash(Rendezvous::new(HashKey::new(&on), &["a:1", "b:1"]));
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(b.key(&HeaderMap::new(), client), None);
    assert_eq!(picks(&b, &h, 4), [0, 1, 0, 1]);
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    let key = b.key(&headers, client);
    assert!(key.is_some());
    let first = b.pick(key, &Candidates::new(&h, &[]));
    assert!((0..10).all(|_| b.pick(key, &Candidates::new(&h, &[])) == first));
}

#[test]
fn hash_keys_from_headers_cookies_and_the_client() {
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc ;b=2"));
    headers.append(header::COOKIE, HeaderValue::from_static("late=z"));
    let cookie_key = |name: &str| HashKey::Cookie(name.into()).of(&headers, ip);
    assert_eq!(cookie_key("session"), Some(xxh3_64(b"abc")));
    assert_eq!(cookie_key("late"), Some(xxh3_64(b"z")));
    assert_eq!(cookie_key("sess"), None);
    assert_eq!(cookie_key("missing"), None);
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    let by_ip = |client| HashKey::ClientIp.of(&headers, client);
    assert_eq!(by_ip(ip), by_ip(mapped), "IPv4-mapped is the same client");
    assert_ne!(by_ip(ip), by_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let header_key = HashKey::new(&HashOn::Header("Cookie".into()));
    assert_eq!(
        header_key.of(&headers, ip),
        Some(xxh3_64(b"a=1; session=abc ;b=2")),
        "first value"
    );
}
