//! Who gets accepted, and when: the connection permits of a listener (its own `max_connections`
//! and the process-wide `limits.max_connections`) and the per-client-address cap
//! (`limits.max_connections_per_ip`).
//!
//! A connection is accepted only with a permit of both semaphores. An accept loop first waits
//! for a connection in its own socket's backlog, then for the permits, then calls `accept`: at
//! the limit, new connections stay in the kernel backlog (the client's handshake completes, its
//! request waits) and are accepted as connections close, instead of being accepted and closed.
//!
//! Every serving thread has its own `SO_REUSEPORT` socket, and the kernel hashes each new
//! connection to one of them. A connection queued on a thread's socket waits for that thread to
//! get a permit. Only threads that have a connection queued wait for a permit, and tokio's
//! semaphore hands a freed permit to the longest waiter, so a closing connection wakes a thread
//! that can use the permit at once (not one that would hold it in an empty `accept`). The
//! listen backlog (`limits.listen_backlog`, per socket) bounds how many can wait; beyond it the
//! kernel drops new SYNs and clients retry.
//!
//! The per-address cap needs the peer address, which only `accept` gives: a connection over it
//! is accepted and closed at once (it cannot be left in the backlog by address). The counts are
//! one map shared by every listener and thread, split into shards behind mutexes: a lock is
//! taken once at accept and once at close, never per request, and held for one map update.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::metrics::{self, ListenerMetrics};

/// The connection permits of one listener, shared by its accept loops on every serving thread.
pub struct Admission {
    /// The metric label: `proxy`, `admin` or `listen_tls[i]`.
    pub label: String,
    /// The listener's own `max_connections`, if it has one.
    own: Option<(u32, Arc<Semaphore>)>,
    /// `limits.max_connections`, shared by every proxy listener.
    process: (u32, Arc<Semaphore>),
    per_ip: Option<Arc<PerIp>>,
    metrics: ListenerMetrics,
    /// When a wait was last logged (Unix seconds): at most one line a minute, the metric
    /// counts every wait.
    last_warned: AtomicU64,
}

/// Seconds between two log lines about a listener at its cap.
const WARN_EVERY_S: u64 = 60;

/// A semaphore of `n` permits, with `n` (for logs).
pub fn permits(n: u32) -> (u32, Arc<Semaphore>) {
    (n, Arc::new(Semaphore::new(n as usize)))
}

impl Admission {
    pub fn new(
        label: impl Into<String>,
        own: Option<u32>,
        process: (u32, Arc<Semaphore>),
        per_ip: Option<Arc<PerIp>>,
    ) -> Arc<Admission> {
        let label = label.into();
        Arc::new(Admission {
            metrics: metrics::global().listener(&label),
            label,
            own: own.map(permits),
            process,
            per_ip,
            last_warned: AtomicU64::new(0),
        })
    }

    /// The listener's permit and the process-wide one, waiting for each as long as it takes
    /// (always in this order, so two listeners' loops cannot hold one each of the other's).
    async fn acquire(&self) -> io::Result<Permits> {
        let own = match &self.own {
            Some(own) => Some(self.wait_for(own, "the listener's max_connections").await?),
            None => None,
        };
        let process = self.wait_for(&self.process, "limits.max_connections").await?;
        Ok(Permits {
            _own: own,
            _process: process,
        })
    }

    async fn wait_for(&self, (max, sem): &(u32, Arc<Semaphore>), what: &str) -> io::Result<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(sem).try_acquire_owned() {
            return Ok(p);
        }
        self.metrics.limit_reached.inc();
        let now = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs());
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_S
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                listener = %self.label,
                max, "{what} reached: new connections wait in the listen backlog"
            );
        }
        Arc::clone(sem)
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("connection permits closed"))
    }

    /// Takes a slot of `ip`'s connections (`Ok(None)` without a per-address cap); `Err`
    /// (counted) when the address has its cap open already.
    fn admit(&self, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
        let Some(per_ip) = &self.per_ip else {
            return Ok(None);
        };
        match PerIp::take(per_ip, ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                self.metrics.refused.inc();
                Err(())
            }
        }
    }
}

struct Permits {
    _own: Option<OwnedSemaphorePermit>,
    _process: OwnedSemaphorePermit,
}

/// What an open client connection holds: its permits and its address's slot, and its place in
/// `weft_connections_open{listener}`. All given back when it is dropped.
pub struct ConnPermit {
    _permits: Permits,
    _ip: Option<IpSlot>,
    admission: Arc<Admission>,
}

impl ConnPermit {
    fn new(permits: Permits, ip: Option<IpSlot>, admission: &Arc<Admission>) -> ConnPermit {
        admission.metrics.open.inc();
        ConnPermit {
            _permits: permits,
            _ip: ip,
            admission: Arc::clone(admission),
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.admission.metrics.open.dec();
    }
}

/// A listening socket whose accept waits for a queued connection first, then for permits.
/// (tokio's `TcpListener` has no way to wait for a queued connection without accepting it.)
pub struct Acceptor(AsyncFd<std::net::TcpListener>);

impl Acceptor {
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Acceptor> {
        let std = listener.into_std()?;
        std.set_nonblocking(true)?;
        // SAFETY: a `std::net::TcpListener` owns its descriptor: it stays open and the same
        // until the listener is dropped, which is when the `AsyncFd` that owns it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE) };
        Ok(Acceptor(fd.map_err(|e| e.into_parts().1)?))
    }

    /// The next connection admitted by `admission`, with its permit. Connections over the
    /// per-address cap are closed here. Cancel-safe: nothing is accepted across an await.
    pub async fn accept(&self, admission: &Arc<Admission>) -> io::Result<(TcpStream, SocketAddr, ConnPermit)> {
        loop {
            let mut ready = self.0.readable().await?;
            let permits = admission.acquire().await?;
            let (stream, remote) = match ready.try_io(|fd| fd.get_ref().accept()) {
                Ok(accepted) => accepted?,
                // Not ready after all (readiness was stale): the permits go back.
                Err(_would_block) => continue,
            };
            let Ok(ip) = admission.admit(remote.ip()) else {
                drop(stream);
                continue;
            };
            stream.set_nonblocking(true)?;
            let stream = TcpStream::from_std(stream)?;
            return Ok((stream, remote, ConnPermit::new(permits, ip, admission)));
        }
    }
}

const SHARDS: usize = 16;

/// Open connections by client address (`limits.max_connections_per_ip`), in shards.
pub struct PerIp {
    max: u32,
    hasher: std::hash::RandomState,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl PerIp {
    pub fn new(max: u32) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            hasher: std::hash::RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        })
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = self.hasher.hash_one(ip) as usize % SHARDS;
        // A panic while holding a shard leaves a count that is still a count.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more connection from `ip`, unless it has `max` open. An IPv4 client reaching a
    /// dual-stack socket (`::ffff:a.b.c.d`) counts as `a.b.c.d`.
    pub fn take(this: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut shard = this.shard(&ip);
        let n = shard.entry(ip).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: Arc::clone(this),
            ip,
        })
    }

    /// Connections open from `ip` (tests, debugging).
    pub fn open(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        self.shard(&ip).get(&ip).copied().unwrap_or(0)
    }
}

/// One connection's place in its address's count.
pub struct IpSlot {
    map: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut shard = self.map.shard(&self.ip);
        if let Some(n) = shard.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_each_address_and_frees_on_drop() {
        let map = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = PerIp::take(&map, a).unwrap();
        let second = PerIp::take(&map, mapped).expect("the mapped form is the same client");
        assert!(PerIp::take(&map, a).is_none(), "a third from 10.0.0.1");
        assert!(PerIp::take(&map, mapped).is_none(), "nor through the mapped form");
        let other = PerIp::take(&map, b).expect("another address has its own count");
        assert_eq!((map.open(a), map.open(b)), (2, 1));
        drop(first);
        let again = PerIp::take(&map, a).expect("a slot came back");
        drop((second, again, other));
        assert_eq!((map.open(a), map.open(b)), (0, 0));
        assert!(
            map.shards.iter().all(|s| s.lock().unwrap().is_empty()),
            "no entries left behind"
        );
    }
}
