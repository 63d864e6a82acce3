//! WebSocket room messages between proxies. A broadcast to room `R` is published on
//! `weft.ws.room.R` with the sending proxy's origin (`Weft-Origin`) and, for a binary message,
//! `Weft-Ws-Binary: 1`; every proxy subscribes to `weft.ws.room.*` and skips its own messages
//! (it delivered them locally already). Room names are checked by the caller.

use async_nats::{Client, HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

/// NATS subject prefix of room broadcasts.
pub const ROOM_SUBJECT_PREFIX: &str = "weft.ws.room.";
const ORIGIN_HEADER: &str = "Weft-Origin";
const BINARY_HEADER: &str = "Weft-Ws-Binary";

/// A room message from another proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    pub room: String,
    /// A binary WebSocket message (else text, whose payload the receiver checks is UTF-8).
    pub binary: bool,
    pub payload: Bytes,
}

/// Publishes and receives room messages on one NATS connection, as the proxy `origin` (unique
/// per process). Cheap to clone.
#[derive(Clone)]
pub struct RoomRelay {
    client: Client,
    origin: String,
}

impl RoomRelay {
    pub fn new(client: Client, origin: impl Into<String>) -> RoomRelay {
        RoomRelay {
            client,
            origin: origin.into(),
        }
    }

    /// Publishes one message to `room` on every other proxy.
    pub async fn publish(&self, room: &str, binary: bool, payload: Bytes) -> Result<(), async_nats::PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN_HEADER, self.origin.as_str());
        if binary {
            headers.insert(BINARY_HEADER, "1");
        }
        self.client
            .publish_with_headers(format!("{ROOM_SUBJECT_PREFIX}{room}"), headers, payload)
            .await
    }

    /// Subscribes to the messages of every room from the other proxies.
    pub async fn subscribe(&self) -> Result<RoomSubscription, async_nats::SubscribeError> {
        let sub = self.client.subscribe(format!("{ROOM_SUBJECT_PREFIX}*")).await?;
        Ok(RoomSubscription {
            sub,
            origin: self.origin.clone(),
        })
    }
}

/// The room messages of the other proxies, from [`RoomRelay::subscribe`].
pub struct RoomSubscription {
    sub: Subscriber,
    origin: String,
}

impl RoomSubscription {
    /// The next message from another proxy; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<RoomMessage> {
        while let Some(msg) = self.sub.next().await {
            let headers = msg.headers.as_ref();
            if headers
                .and_then(|h| h.get(ORIGIN_HEADER))
                .is_some_and(|o| o.as_str() == self.origin)
            {
                continue; // our own broadcast
            }
            let Some(room) = msg.subject.strip_prefix(ROOM_SUBJECT_PREFIX) else {
                continue; // not possible with this subscription's subject
            };
            return Some(RoomMessage {
                room: room.to_owned(),
                binary: headers.and_then(|h| h.get(BINARY_HEADER)).is_some(),
                payload: msg.payload,
            });
        }
        None
    }
}
