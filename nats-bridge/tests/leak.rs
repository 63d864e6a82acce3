//! Timed-out requests leave nothing behind: 100k calls to a worker that never answers, each
//! timing out, and the reply map is empty afterwards with RSS growth well under 10 MiB.

mod common;

use weft_test_support::require_nats;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use weft_abi::WeftPhase;
use weft_nats_bridge::{NatsPluginOptions, RemoteError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_requests_do_not_leak() {
    require_nats!();
    let count: usize = std::env::var("WEFT_LEAK_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let srv = common::NatsServer::start();
    // A "worker" that takes every request and never answers.
    let sink = async_nats::connect(srv.url()).await.unwrap();
    let mut sub = sink.subscribe("weft.sink.>").await.unwrap();
    let drained = tokio::spawn(async move {
        let mut n = 0usize;
        while sub.next().await.is_some() {
            n += 1;
        }
        n
    });
    sink.flush().await.unwrap();
    let t = common::connect(&srv.url()).await;
    let plugin = t.plugin(
        "sink",
        NatsPluginOptions {
            deadline: Duration::from_millis(2),
            max_in_flight: 1024,
        },
    );
    let (view, _) = common::request_view(1, WeftPhase::RequestHeaders as u32, "/", &[("host", "h")]);
    let run = |n: usize| {
        let plugin = plugin.clone();
        let view = view.clone();
        async move {
            futures_util::stream::iter(0..n)
                .map(|_| {
                    let plugin = plugin.clone();
                    let view = view.clone();
                    async move { plugin.call(WeftPhase::RequestHeaders, &view, None).await }
                })
                .buffer_unordered(512)
                .for_each(|r| {
                    assert_eq!(r.unwrap_err(), RemoteError::Timeout);
                    async {}
                })
                .await;
        }
    };
    // Warm-up with as many calls as are measured: allocator arenas, channel buffers and the
    // timer wheel reach the high-water mark of this load (on a busy machine that takes more than
    // a few thousand calls), so what the measured run adds is what a call leaks.
    run(count).await;
    let before = common::rss_kib();
    let start = Instant::now();
    run(count).await;
    let took = start.elapsed();
    let after = common::rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!(
        "{count} timed-out calls in {took:?}: pending replies {}, VmRSS {before} -> {after} KiB (+{growth} KiB)",
        t.pending_replies()
    );
    assert_eq!(t.pending_replies(), 0, "every timed-out call removed its reply entry");
    assert_eq!(plugin.in_flight(), 0);
    assert!(growth < 10 * 1024, "RSS grew {growth} KiB");
    drop(sink);
    drained.abort();
}
