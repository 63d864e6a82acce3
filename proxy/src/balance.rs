//! How an upstream spreads requests over its addresses (`upstreams[].balance`).
//!
//! Every policy picks among the addresses that are available ([`AddressHealth::available`]:
//! not ejected, not failed by the active checks) and not already tried by this request (a
//! retry goes elsewhere). A pick takes no lock: the state shared by the serving threads is one
//! counter (round robin, weighted) or nothing beyond the health atomics.
//!
//! - `round_robin`: each address in turn.
//! - `weighted`: a precomputed smooth schedule (nginx's smooth weighted round robin, run once
//!   when the config is loaded) walked by one counter. The live algorithm changes every
//!   address's current weight on each pick, which needs a lock or a compare-exchange loop over
//!   all of them; the schedule gives the same interleaved sequence with one `fetch_add`. While
//!   an address of the schedule is out, a weighted random draw over the available ones decides.
//! - `least_requests`: power of two choices: two addresses at random, the one with fewer
//!   requests in flight wins (the per-address `weft_upstream_address_active_requests` gauge,
//!   counted from the request's send to its response head by every serving thread).
//! - `consistent_hash`: rendezvous (highest random weight) hashing of a key from the request
//!   (a header, a cookie or the client IP) over the available addresses. Each address scores
//!   the key with a seed of its own (the hash of its `host:port`), the highest score wins: a
//!   key stays on its address while that address is there, and when one goes (ejected, or
//!   removed by a reload) only its keys move, each to its next choice; they come back when it
//!   does. A request without the key goes round robin.
//!
//! Hashing is xxHash3 (`xxhash-rust`): specified and stable across builds and machines, so
//! proxies running side by side send a key to the same address. Rendezvous hashing is hand
//! written (a dozen lines): the crates for it sort or allocate per lookup, and a maglev table
//! moves a few keys of other addresses too when one is removed.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, header};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{BalancePolicy, HashOn, UpstreamConfig};
use crate::health::AddressHealth;

/// The policy of one upstream, built from its config.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    Weighted(Weighted),
    LeastRequests,
    ConsistentHash(Rendezvous),
}

/// The addresses a pick may return: available, and not tried yet by the request.
pub struct Candidates<'a> {
    health: &'a [Arc<AddressHealth>],
    tried: &'a [usize],
}

impl<'a> Candidates<'a> {
    pub fn new(health: &'a [Arc<AddressHealth>], tried: &'a [usize]) -> Candidates<'a> {
        Candidates { health, tried }
    }

    fn len(&self) -> usize {
        self.health.len()
    }

    fn usable(&self, i: usize) -> bool {
        !self.tried.contains(&i) && self.health[i].available()
    }

    fn in_flight(&self, i: usize) -> i64 {
        self.health[i].active_requests()
    }

    /// On a retry, the address tried last: the turn-based policies go on from there without
    /// taking a turn from the requests to come.
    fn retry_after(&self) -> Option<usize> {
        self.tried.last().copied()
    }
}

impl Balancer {
    /// `config` must have passed validation.
    pub fn new(config: &UpstreamConfig) -> Balancer {
        let b = &config.balance;
        match b.policy {
            BalancePolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::default()),
            BalancePolicy::Weighted => {
                let weights: Vec<u32> = config.addresses.iter().map(|a| a.weight).collect();
                Balancer::Weighted(Weighted::new(&weights))
            }
            BalancePolicy::LeastRequests => Balancer::LeastRequests,
            BalancePolicy::ConsistentHash => {
                let on = b.hash_on.as_ref().expect("validated: consistent_hash has hash_on");
                let addresses: Vec<&str> = config.addresses.iter().map(|a| a.address.as_str()).collect();
                Balancer::ConsistentHash(Rendezvous::new(HashKey::new(on), &addresses))
            }
        }
    }

    /// The request's hash key (`consistent_hash` only; `None` for the other policies and
    /// when the request lacks it).
    pub fn key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self {
            Balancer::ConsistentHash(r) => r.on.of(headers, client),
            _ => None,
        }
    }

    /// Whether [`Balancer::key`] reads a header of the request.
    pub fn reads_headers(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(r) if matches!(r.on, HashKey::Header(_)))
    }

    /// The index of the address for a request with `key`; `None` when no candidate is left.
    pub fn pick(&self, key: Option<u64>, c: &Candidates<'_>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(c),
            Balancer::Weighted(w) => w.pick(c),
            Balancer::LeastRequests => least_requests(c),
            Balancer::ConsistentHash(r) => match key {
                Some(k) => r.pick(k, c),
                None => r.fallback.pick(c),
            },
        }
    }
}

/// Each address in turn, skipping the ones that are not candidates.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let n = c.len();
        let start = match c.retry_after() {
            Some(last) => last + 1,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        (0..n).map(|k| (start + k) % n).find(|&i| c.usable(i))
    }
}

/// `weighted`: a smooth schedule with each address `weight` times (weights divided by their
/// greatest common divisor).
#[derive(Debug)]
pub struct Weighted {
    schedule: Box<[u32]>,
    weights: Box<[u32]>,
    next: AtomicUsize,
}

impl Weighted {
    pub fn new(weights: &[u32]) -> Weighted {
        let g = weights.iter().fold(0, |a, &b| gcd(a, b)).max(1);
        let weights: Box<[u32]> = weights.iter().map(|w| w / g).collect();
        Weighted {
            schedule: smooth_schedule(&weights).into(),
            weights,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        if c.retry_after().is_none() {
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            let i = self.schedule[turn % self.schedule.len()] as usize;
            if c.usable(i) {
                return Some(i);
            }
        }
        // A retry, or the scheduled address is out. Weighted reservoir sampling over the
        // candidates: one pass, each kept with probability weight / (weights seen so far).
        let mut total = 0u64;
        let mut chosen = None;
        for j in (0..c.len()).filter(|&j| c.usable(j)) {
            let w = u64::from(self.weights[j]);
            total += w;
            if fastrand::u64(0..total) < w {
                chosen = Some(j);
            }
        }
        chosen
    }
}

/// nginx's smooth weighted round robin, run once over a whole cycle: at each step every
/// address gains its weight, the one with the most is chosen and gives back the total. Each
/// address appears `weight` times, spread out (weights 5, 1, 1 give a a b a c a a).
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..current.len())
                .rev()
                .max_by_key(|&i| current[i])
                .expect("an upstream has an address");
            current[best] -= total;
            best as u32
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Power of two choices: two distinct addresses at random, the one with fewer requests in
/// flight (the first on a tie). When neither is a candidate, the least busy candidate.
fn least_requests(c: &Candidates<'_>) -> Option<usize> {
    let n = c.len();
    if n == 1 {
        return c.usable(0).then_some(0);
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    match (c.usable(a), c.usable(b)) {
        (true, true) if c.in_flight(b) < c.in_flight(a) => Some(b),
        (true, _) => Some(a),
        (false, true) => Some(b),
        (false, false) => (0..n).filter(|&i| c.usable(i)).min_by_key(|&i| c.in_flight(i)),
    }
}

/// `consistent_hash`: rendezvous hashing with a seed per address.
#[derive(Debug)]
pub struct Rendezvous {
    on: HashKey,
    /// `xxh3(host:port)` of each address: its scores do not depend on the other addresses.
    seeds: Box<[u64]>,
    /// For requests without the key.
    fallback: RoundRobin,
}

impl Rendezvous {
    pub fn new(on: HashKey, addresses: &[&str]) -> Rendezvous {
        Rendezvous {
            on,
            seeds: addresses.iter().map(|a| xxh3_64(a.as_bytes())).collect(),
            fallback: RoundRobin::default(),
        }
    }

    fn pick(&self, key: u64, c: &Candidates<'_>) -> Option<usize> {
        (0..c.len())
            .filter(|&i| c.usable(i))
            .max_by_key(|&i| score(key, self.seeds[i]))
    }
}

/// The weight of `key` on the address with `seed`.
fn score(key: u64, seed: u64) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), seed)
}

/// Where `consistent_hash` finds a request's key (after the request plugins ran, so a plugin
/// can set it).
#[derive(Debug)]
pub enum HashKey {
    /// The first value of a header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The peer address of the client connection (an IPv4-mapped IPv6 address as IPv4).
    ClientIp,
}

impl HashKey {
    /// `on` must have passed validation.
    pub fn new(on: &HashOn) -> HashKey {
        match on {
            HashOn::Header(name) => {
                HashKey::Header(HeaderName::from_bytes(name.as_bytes()).expect("validated header name"))
            }
            HashOn::Cookie(name) => HashKey::Cookie(name.clone()),
            HashOn::ClientIp => HashKey::ClientIp,
        }
    }

    /// The hash of the request's key; `None` when it has none.
    pub fn of(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self {
            HashKey::Header(name) => headers.get(name).map(|v| xxh3_64(v.as_bytes())),
            HashKey::Cookie(name) => cookie(headers, name).map(xxh3_64),
            HashKey::ClientIp => Some(match client.to_canonical() {
                IpAddr::V4(ip) => xxh3_64(&ip.octets()),
                IpAddr::V6(ip) => xxh3_64(&ip.octets()),
            }),
        }
    }
}

/// The value of cookie `name` in the `cookie` header(s) (`a=1; b=2`), as sent.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii_end() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests;
