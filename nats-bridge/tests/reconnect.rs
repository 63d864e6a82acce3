//! The transport finds a restarted nats-server again within its reconnect backoff, however long
//! the server was gone: the delay between attempts doubles from 10 ms up to
//! `reconnect_max_delay` (250 ms by default) and stays there. Calls fail fast ("not connected to
//! NATS") only while the server is really away. Real nats-server, killed and started again on
//! its port.

use std::time::{Duration, Instant};

use weft_nats_bridge::{NatsOptions, NatsTransport};
use weft_test_support::{NatsServer, require_nats, wait_for};

#[test]
fn reconnects_soon_after_a_long_outage() {
    require_nats!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut srv = NatsServer::start();
    let opts = NatsOptions {
        url: srv.url(),
        ..NatsOptions::default()
    };
    let transport = rt.block_on(NatsTransport::connect(opts)).unwrap();
    for outage in [Duration::from_millis(100), Duration::from_secs(3)] {
        srv.stop();
        wait_for("the transport to see the server gone", Duration::from_secs(5), || {
            !transport.is_connected()
        });
        std::thread::sleep(outage);
        assert!(!transport.is_connected());
        srv.start_again();
        let listening = Instant::now();
        // The backoff is at its cap (250 ms) by now; 2 s leaves room for a loaded machine.
        wait_for("the transport to reconnect", Duration::from_secs(2), || {
            transport.is_connected()
        });
        eprintln!(
            "outage {outage:?}: connected again {:?} after the server listened",
            listening.elapsed()
        );
    }
}
