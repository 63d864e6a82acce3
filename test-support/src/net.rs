//! Loopback ports and waiting with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loopback address free right now whose port this process never handed out before, so two
/// calls in a row (a listener and its admin port) cannot get the same one.
pub fn free_port() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("find a free loopback port: {e}"));
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) {
    wait_for(&format!("a listener on {addr}"), within, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_repeated() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    #[should_panic(expected = "timed out waiting for never")]
    fn wait_for_gives_up() {
        wait_for("never", Duration::from_millis(50), || false);
    }
}
