//! WebSocket room messages between two proxies' relays through a real nats-server: a relay
//! gets the other's messages (room, text or binary, payload) and never its own.

use std::time::Duration;

use bytes::Bytes;
use weft_nats_bridge::{RoomMessage, RoomRelay};
use weft_test_support::{NatsServer, require_nats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_deliver_the_other_proxys_room_messages_only() {
    require_nats!();
    let srv = NatsServer::start();
    let a = RoomRelay::new(async_nats::connect(srv.url()).await.unwrap(), "proxy-a");
    let b = RoomRelay::new(async_nats::connect(srv.url()).await.unwrap(), "proxy-b");
    let mut sub = a.subscribe().await.unwrap();
    // The subscription is registered with the server before anyone publishes.
    a.publish("warmup", false, Bytes::from_static(b"own")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    a.publish("lobby", false, Bytes::from_static(b"mine")).await.unwrap();
    b.publish("lobby", false, Bytes::from_static(b"hello")).await.unwrap();
    b.publish("game:7", true, Bytes::from_static(&[0, 1, 2])).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a room message within 5 s")
            .expect("subscription open");
        got.push(m);
    }
    assert_eq!(
        got,
        [
            RoomMessage {
                room: "lobby".into(),
                binary: false,
                payload: Bytes::from_static(b"hello"),
            },
            RoomMessage {
                room: "game:7".into(),
                binary: true,
                payload: Bytes::from_static(&[0, 1, 2]),
            },
        ]
    );
    // Nothing else: a's own messages ("warmup", "mine") were skipped.
    let more = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(more.is_err(), "unexpected message: {more:?}");
}
