//! Per-thread connections (`NatsOptions::per_thread`), against a real nats-server and Go worker:
//! a thread that calls from a current-thread runtime (as weft-proxy's serving threads do) gets a
//! connection of its own, named after the thread, and once it is up its calls and their replies
//! go over it (the server's per-connection message counts say so); a call from a multi-thread
//! runtime takes the shared connection; the threads' connections close with the transport; a
//! thread whose connection cannot open calls over the shared one and tries again later.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Worker, request_view};
use weft_abi::WeftPhase;
use weft_nats_bridge::{NatsOptions, NatsPluginOptions, NatsTransport};
use weft_test_support::{NatsServer, free_port, monitor_get, require_nats, wait_for};

const RH: WeftPhase = WeftPhase::RequestHeaders;

/// The server's open connections (`/connz` of its monitoring port): name and messages the server
/// sent to the client.
fn connections(monitor: u16) -> Vec<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(&monitor_get(monitor, "/connz")).unwrap();
    v["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                c["out_msgs"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn out_msgs(monitor: u16, name: &str) -> Option<u64> {
    connections(monitor)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| m)
}

/// Calls the `rs` instance `n` times on a current-thread runtime of this thread, request ids
/// from `first` on (request ids are unique per host: each thread takes its own).
fn call_here(rt: &tokio::runtime::Runtime, t: &Arc<NatsTransport>, first: u64, n: u64) {
    let plugin = t.plugin("rs", NatsPluginOptions::default());
    rt.block_on(async {
        for id in first..first + n {
            let (view, _) = request_view(id, RH as u32, "/", &[]);
            let records = plugin.call(RH, &view, None).await.expect("a call over NATS");
            assert!(!records.is_empty(), "the worker's set came back");
            plugin.release(id);
        }
    });
}

#[test]
fn each_calling_thread_gets_its_own_connection() {
    require_nats!();
    let monitor = free_port().port();
    let srv = NatsServer::start_with(&["-m", &monitor.to_string()]);
    let _w = Worker::start(&srv.url(), "header-rewriter", "rs", r#"{"request_set":{"x-a":"1"}}"#);
    let shared_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let t = shared_rt
        .block_on(NatsTransport::connect(NatsOptions {
            url: srv.url(),
            name: "host".into(),
            per_thread: true,
            ..NatsOptions::default()
        }))
        .unwrap();

    // From a multi-thread runtime: the shared connection, and no other.
    let plugin = t.plugin("rs", NatsPluginOptions::default());
    shared_rt.block_on(async {
        let (view, _) = request_view(1, RH as u32, "/", &[]);
        plugin.call(RH, &view, None).await.unwrap();
    });
    assert_eq!(t.thread_connections(), 0);

    // Two threads on current-thread runtimes: a connection each, named after the thread. Each
    // drives its runtime until told to stop (a current-thread runtime runs its tasks, the
    // connection's among them, only then).
    let (stops, threads): (Vec<_>, Vec<_>) = [("caller-a", 1000), ("caller-b", 2000)]
        .into_iter()
        .map(|(name, ids)| {
            let t = Arc::clone(&t);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (done, calls_done) = std::sync::mpsc::channel::<u64>();
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    // The first call starts the thread's connection and takes the shared one.
                    call_here(&rt, &t, ids, 1);
                    let own = format!("host/{name}");
                    let mut waited = 0;
                    while out_msgs(monitor, &own).is_none() {
                        assert!(waited < 500, "no connection {own}");
                        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
                        waited += 1;
                    }
                    // Its reply inbox subscribed and the connection handed to the thread.
                    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
                    let shared_before = out_msgs(monitor, "host").unwrap();
                    let own_before = out_msgs(monitor, &own).unwrap();
                    call_here(&rt, &t, ids + 1, 50);
                    // Every reply came over the thread's connection.
                    let own_after = out_msgs(monitor, &own).unwrap();
                    assert!(own_after >= own_before + 50, "{own}: {own_before} -> {own_after}");
                    drop(t);
                    done.send(shared_before).unwrap();
                    let _ = rt.block_on(stopped);
                })
                .unwrap();
            (stop, (thread, calls_done))
        })
        .unzip();
    let shared_before = threads
        .iter()
        .map(|(_, done)| done.recv_timeout(Duration::from_secs(30)).expect("the thread's calls"))
        .min()
        .unwrap();
    assert_eq!(t.thread_connections(), 2);
    assert_eq!(t.pending_replies(), 0);
    // The shared connection carried none of the 100 later replies (its count moves by less:
    // pings, the other thread's first call).
    let shared_after = out_msgs(monitor, "host").unwrap();
    assert!(
        shared_after < shared_before + 50,
        "shared: {shared_before} -> {shared_after}"
    );

    // They close with the transport, their threads still running.
    drop(plugin);
    drop(t);
    wait_for("the threads' connections to close", Duration::from_secs(5), || {
        connections(monitor).iter().all(|(n, _)| !n.starts_with("host/"))
    });
    for stop in stops {
        let _ = stop.send(());
    }
    for (thread, _) in threads {
        thread.join().unwrap();
    }
}

/// A thread whose own connection cannot open (the server is at its `max_connections`: two
/// workers and the shared connection) keeps calling over the shared one, and tries again later:
/// once a worker's connection is gone, its next calls get a connection of their own.
#[test]
fn a_thread_whose_connection_fails_takes_the_shared_one_and_tries_again() {
    require_nats!();
    let srv = NatsServer::start_with_config("max_connections: 3\n");
    let config = r#"{"request_set":{"x-a":"1"}}"#;
    let _w1 = Worker::start(&srv.url(), "header-rewriter", "rs", config);
    let mut w2 = Worker::start(&srv.url(), "header-rewriter", "rs", config);
    let shared_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let t = shared_rt
        .block_on(NatsTransport::connect(NatsOptions {
            url: srv.url(),
            per_thread: true,
            ..NatsOptions::default()
        }))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The first call starts the thread's connection, which the server refuses.
    call_here(&rt, &t, 1000, 1);
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    call_here(&rt, &t, 1001, 20);
    assert_eq!(t.thread_connections(), 0, "the server had no room for it");

    w2.kill();
    let mut id = 2000;
    let mut waited = 0;
    while t.thread_connections() == 0 {
        assert!(waited < 100, "the thread's connection was not tried again");
        call_here(&rt, &t, id, 1);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        (id, waited) = (id + 1, waited + 1);
    }
    call_here(&rt, &t, id, 20);
    assert_eq!(t.pending_replies(), 0);
}
