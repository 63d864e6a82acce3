//! WebSocket: pass-through tunnels to the upstream, and connections served by a plugin, with
//! rooms (local, and across proxies through NATS).
//!
//! HTTP/1.1 only: an `Upgrade: websocket` request over HTTP/1.1 (RFC 6455). WebSocket over
//! HTTP/2 (extended CONNECT, RFC 8441) is not supported; such requests are forwarded as plain
//! requests.
//!
//! # Pass-through
//! The upgrade request runs the route's request-phase plugins like any request (a local reply
//! refuses it), then goes to the upstream with `Connection: upgrade` / `Upgrade: websocket` kept
//! (every other hop-by-hop header is still stripped). When the upstream answers `101`, both
//! sides are upgraded (`hyper::upgrade::on`) and bytes are copied both ways until either side
//! closes. The proxy does not parse frames of a tunnel.
//!
//! # Plugin-served endpoints
//! `routes[].websocket.plugin` names a plugin instance that serves the route's upgrade
//! requests itself. The proxy answers the handshake, runs the connection through
//! tokio-tungstenite with the route's limits, and calls the instance's WebSocket phases
//! (`WebSocketOpen`, `WebSocketMessage`, `WebSocketClose`) through one [`Exchange`] that lives as
//! long as the connection (it holds one arena slot). One task per connection reads frames and
//! makes the plugin calls, so one connection's calls are in order; a second task writes. The
//! plugin's records ([`WsOp`]) are carried out here: sends go to the connection's bounded send
//! queue, rooms and broadcasts to the [`Hub`].
//!
//! Close codes the proxy uses: 1008 (policy violation) when the send queue of a connection is
//! full (a client that does not read: it is closed instead of growing memory), 1009 for a frame
//! or message over the limits, 1011 when the plugin fails (panic, error, invalid records,
//! timeout), 1000 with reason "idle timeout" after `idle_timeout_ms` without any frame from the
//! client (pings keep a healthy client alive).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, warn};
use weft_nats_bridge::rooms::{RoomMessage, RoomRelay};
use weft_runtime::mutation::WsOp;
use weft_runtime::{Chain, Exchange, Flow, WsEvent};

use crate::config::{
    DEFAULT_WS_IDLE_TIMEOUT_MS, DEFAULT_WS_MAX_FRAME_BYTES, DEFAULT_WS_MAX_MESSAGE_BYTES, DEFAULT_WS_PING_INTERVAL_MS,
    DEFAULT_WS_SEND_QUEUE,
};
use crate::forward::{ProxyBody, local_reply};

/// Limits of a plugin-served WebSocket route (`routes[].websocket`).
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    /// Messages queued for one connection; a full queue closes it with 1008.
    pub send_queue: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// A route whose WebSocket connections a plugin serves.
pub struct WsRoute {
    /// The serving instance alone (its request-headers phase, if any, runs at the handshake).
    pub chain: Chain,
    pub settings: Arc<WsSettings>,
}

/// An HTTP/1.1 `Upgrade: websocket` request, taken apart before the hop-by-hop headers go.
pub struct ClientUpgrade {
    on_upgrade: OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade (HTTP/1.1, `Connection: upgrade`,
/// `Upgrade: websocket`); if so, takes hyper's upgrade handle out of it.
pub fn take_upgrade(parts: &mut http::request::Parts) -> Option<ClientUpgrade> {
    if parts.version != Version::HTTP_11
        || !has_token(&parts.headers, header::CONNECTION, "upgrade")
        || !has_token(&parts.headers, header::UPGRADE, "websocket")
    {
        return None;
    }
    let on_upgrade = parts.extensions.remove::<OnUpgrade>()?;
    Some(ClientUpgrade { on_upgrade })
}

/// Puts back the two hop-by-hop headers an upgrade needs (after `strip_hop_by_hop`).
pub fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Pass-through: the upstream answered `101`; tunnels bytes between the client and the upstream
/// until either side closes.
pub fn tunnel(client: ClientUpgrade, upstream: OnUpgrade, route: String) {
    tokio::spawn(async move {
        let (c, u) = match tokio::join!(client.on_upgrade, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                debug!(%route, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "websocket upgrade failed");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        match tokio::io::copy_bidirectional(&mut c, &mut u).await {
            Ok((up, down)) => debug!(%route, up, down, "websocket tunnel closed"),
            Err(e) => debug!(%route, error = %e, "websocket tunnel ended with an error"),
        }
    });
}

/// Plugin-served endpoint: checks the handshake, runs the instance's request-headers phase (a
/// local reply refuses the upgrade), answers `101` and hands the connection to its tasks.
pub async fn serve_plugin(
    route: &WsRoute,
    mut parts: http::request::Parts,
    up: ClientUpgrade,
    client: &weft_runtime::view::ClientAddr,
) -> Response<ProxyBody> {
    let key = parts.headers.get("sec-websocket-key").cloned();
    let version_ok = parts
        .headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = key.filter(|_| parts.method == Method::GET && version_ok) else {
        let mut resp = local_reply(
            StatusCode::BAD_REQUEST,
            "bad websocket handshake (GET, Sec-WebSocket-Key and Sec-WebSocket-Version: 13 required)",
            None,
        );
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return resp;
    };
    let mut x = match route.chain.start_from(client, crate::request::scheme(&parts)) {
        Ok(Some(mut x)) => {
            x.set_server_name(crate::request::server_name(&parts));
            x
        }
        Ok(None) => {
            return local_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "websocket plugin has no phases",
                None,
            );
        }
        Err(weft_runtime::Busy) => {
            let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "busy", None);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    };
    if let Flow::Respond(resp) = x.request_headers_async(&mut parts).await {
        let (p, b) = resp.into_parts();
        return Response::from_parts(p, ProxyBody::full(b, None));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let settings = Arc::clone(&route.settings);
    tokio::spawn(run_connection(x, up.on_upgrade, settings));
    let mut resp = Response::new(ProxyBody::full(Bytes::new(), None));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    restore_upgrade_headers(resp.headers_mut());
    resp.headers_mut().insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    resp
}

/// One connection as rooms and other connections see it: its bounded send queue and a way to
/// close it from anywhere.
pub struct Conn {
    id: u64,
    tx: mpsc::Sender<Message>,
    /// The close code and reason of a forced close (first one wins).
    forced: OnceLock<(u16, String)>,
    /// Wakes the reader and the writer on a forced close.
    wake_reader: Notify,
    wake_writer: Notify,
}

impl Conn {
    /// Queues a message; a full queue closes the connection with 1008 (the client does not read
    /// fast enough), so memory per connection stays bounded.
    fn send(&self, msg: Message) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.force_close(1008, "send queue full: the client does not read fast enough")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues a message of the connection's own plugin calls: waits for room in the queue (so a
    /// client that sends faster than it reads is slowed down, its reader waits) at most
    /// `patience`, then closes the connection with 1008.
    async fn send_own(&self, msg: Message, patience: Duration) {
        match tokio::time::timeout(patience, self.tx.send(msg)).await {
            Ok(_) => {}
            Err(_) => self.force_close(1008, "send queue full: the client does not read"),
        }
    }

    /// Closes the connection now, without waiting for queued messages.
    fn force_close(&self, code: u16, reason: &str) {
        if self.forced.set((code, reason.to_owned())).is_ok() {
            self.wake_reader.notify_one();
            self.wake_writer.notify_one();
        }
    }
}

fn ws_message(binary: bool, payload: Bytes) -> Option<Message> {
    if binary {
        Some(Message::Binary(payload))
    } else {
        Utf8Bytes::try_from(payload).ok().map(Message::Text)
    }
}

/// How a connection ended: close code, reason, and whether it was an error.
type End = (u16, String, bool);

fn classify(e: &WsError) -> End {
    match e {
        WsError::Capacity(c) => (1009, format!("message too big: {c}"), true),
        WsError::Protocol(p) => (1002, format!("protocol error: {p}"), true),
        WsError::Utf8(_) => (1007, "invalid UTF-8 in a text message".into(), true),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            (1006, "connection closed without a close frame".into(), true)
        }
        other => (1006, format!("connection failed: {other}"), true),
    }
}

/// A plugin-served connection from the upgrade to the close phase: opened, read until it ends,
/// closed.
async fn run_connection(mut x: Exchange, on_upgrade: OnUpgrade, s: Arc<WsSettings>) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(error = %e, "websocket upgrade failed");
            let reason = Bytes::from(format!("upgrade failed: {e}"));
            let _ = x
                .ws_event(WsEvent::Close {
                    code: 1006,
                    reason: &reason,
                    error: true,
                })
                .await;
            return;
        }
    };
    let cfg = WebSocketConfig::default()
        .max_frame_size(Some(s.max_frame_bytes))
        .max_message_size(Some(s.max_message_bytes))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(64 * 1024 + 2 * s.max_message_bytes + 1024);
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(s.send_queue.max(1));
    let conn = Arc::new(Conn {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        tx,
        forced: OnceLock::new(),
        wake_reader: Notify::new(),
        wake_writer: Notify::new(),
    });
    let writer = tokio::spawn(write_loop(sink, rx, Arc::clone(&conn), Arc::clone(&s)));
    let mut open = Open {
        conn,
        stream,
        rooms: HashSet::new(),
    };
    let (end, graceful) = open.read(&mut x, &s).await;
    open.close(x, writer, end, graceful, &s).await;
}

/// A plugin-served connection while it is open: its shared state, the frames it reads, the
/// rooms it joined.
struct Open {
    conn: Arc<Conn>,
    stream: Frames,
    rooms: HashSet<String>,
}

impl Open {
    /// The open phase, then each message through the message phase until the connection ends;
    /// returns how it ended and whether the peer closed it with a close frame.
    async fn read(&mut self, x: &mut Exchange, s: &WsSettings) -> (End, bool) {
        let (conn, hub) = (&self.conn, hub());
        let mut end: Option<End> = None;
        match x.ws_event(WsEvent::Open).await {
            Ok(ops) => apply(conn, hub, &mut self.rooms, ops, &mut end, s).await,
            Err(f) => {
                debug!("{f}");
                end = Some((1011, "plugin failure".into(), true));
            }
        }
        while end.is_none() {
            tokio::select! {
                biased;
                () = conn.wake_reader.notified() => {
                    let (code, reason) = conn.forced.get().cloned().unwrap_or((1011, "closed".into()));
                    end = Some((code, reason, true));
                }
                next = tokio::time::timeout(s.idle_timeout, self.stream.next()) => match next {
                    Err(_) => end = Some((1000, "idle timeout".into(), true)),
                    Ok(None) => end = Some((1006, "connection closed without a close frame".into(), true)),
                    Ok(Some(Err(e))) => end = Some(classify(&e)),
                    Ok(Some(Ok(msg))) => {
                        let (data, binary) = match msg {
                            Message::Text(t) => (Bytes::from(t), false),
                            Message::Binary(b) => (b, true),
                            Message::Close(frame) => {
                                let (code, reason) = frame
                                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                                    .unwrap_or((1005, String::new()));
                                return ((code, reason, false), true);
                            }
                            // Pings are answered by the codec; any frame counts as activity.
                            _ => continue,
                        };
                        match x.ws_event(WsEvent::Message { data: &data, binary }).await {
                            Ok(ops) => apply(conn, hub, &mut self.rooms, ops, &mut end, s).await,
                            Err(f) => {
                                debug!("{f}");
                                end = Some((1011, "plugin failure".into(), true));
                            }
                        }
                    }
                },
            }
        }
        (end.expect("loop ends with an end"), false)
    }

    /// Leaves the rooms, sends or answers the close frame, waits for the writer (5 s) and the
    /// peer (1 s), then runs the close phase, of which only broadcasts still mean something.
    async fn close(mut self, mut x: Exchange, mut writer: JoinHandle<()>, end: End, graceful: bool, s: &WsSettings) {
        let (code, reason, error) = end;
        let (conn, hub) = (&self.conn, hub());
        hub.leave_all(conn.id, &self.rooms);
        // Closing: a forced close was already signalled; a plugin's WsClose queued its frame; an
        // error closes now with its code; a close from the peer is answered by the codec.
        if conn.forced.get().is_none() && !graceful && error {
            conn.force_close(code, &reason);
        } else if graceful {
            let _ = conn.forced.set((code, reason.clone()));
            conn.wake_writer.notify_one();
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut writer).await.is_err() {
            writer.abort();
        }
        // Give the peer a moment to answer our close frame (or to finish its own handshake).
        let stream = &mut self.stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async { while stream.next().await.is_some() {} }).await;
        drop(self.stream);
        let reason = Bytes::from(reason);
        match x
            .ws_event(WsEvent::Close {
                code,
                reason: &reason,
                error,
            })
            .await
        {
            Ok(ops) => {
                // The connection is gone: only room records still mean something.
                let ops = ops
                    .into_iter()
                    .filter(|op| matches!(op, WsOp::Broadcast { .. }))
                    .collect();
                let mut none = None;
                apply(conn, hub, &mut HashSet::new(), ops, &mut none, s).await;
            }
            Err(f) => debug!("{f}"),
        }
        debug!(conn = conn.id, code, error, "websocket connection closed");
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Carries out a plugin's WebSocket records for connection `conn`, in order.
/// The connection's own messages wait for queue room (backpressure on its reader); other
/// members of a room never wait for it (see [`Conn::send`]).
async fn apply(
    conn: &Arc<Conn>,
    hub: &Hub,
    rooms: &mut HashSet<String>,
    ops: Vec<WsOp>,
    end: &mut Option<End>,
    s: &WsSettings,
) {
    for op in ops {
        match op {
            WsOp::Send { binary, payload } => {
                if let Some(m) = ws_message(binary, payload) {
                    conn.send_own(m, s.idle_timeout).await;
                }
            }
            WsOp::Close { code, reason } => {
                let frame = Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.clone().into(),
                }));
                conn.send_own(frame, s.idle_timeout).await;
                *end = Some((code, reason, false));
                return;
            }
            WsOp::Join(room) => {
                hub.join(&room, conn);
                rooms.insert(room);
            }
            WsOp::Leave(room) => {
                hub.leave(&room, conn.id);
                rooms.remove(&room);
            }
            WsOp::Broadcast { room, binary, payload } => {
                if let Some(own) = hub.broadcast(&room, binary, payload, conn.id) {
                    conn.send_own(own, s.idle_timeout).await;
                }
            }
        }
    }
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Message>;
/// The reading half of a plugin-served connection.
type Frames = futures_util::stream::SplitStream<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>;

/// Writes queued messages and keep-alive pings; on a forced close skips the queue.
async fn write_loop(mut sink: Sink, mut rx: mpsc::Receiver<Message>, conn: Arc<Conn>, s: Arc<WsSettings>) {
    let mut ping = tokio::time::interval(s.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            () = conn.wake_writer.notified() => break,
            m = rx.recv() => {
                let Some(first) = m else { break };
                // Everything queued goes out with one flush (a few syscalls, not one per message).
                let batch = async {
                    let mut m = first;
                    loop {
                        let is_close = matches!(m, Message::Close(_));
                        sink.feed(m).await?;
                        if is_close {
                            return Ok::<bool, WsError>(true);
                        }
                        match rx.try_recv() {
                            Ok(next) => m = next,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await?;
                    Ok(false)
                };
                tokio::select! {
                    biased;
                    () = conn.wake_writer.notified() => break,
                    r = batch => match r {
                        Ok(false) => {}
                        Ok(true) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                            return;
                        }
                        Err(_) => return,
                    },
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    biased;
                    () = conn.wake_writer.notified() => break,
                    r = sink.send(Message::Ping(Bytes::new())) => if r.is_err() { return },
                }
            }
        }
    }
    // Forced close (or the peer's close: then the codec has queued its answer and this flushes it).
    // 1005, 1006 and 1015 are never sent in a close frame (RFC 6455 §7.4.1).
    let frame = conn
        .forced
        .get()
        .filter(|(code, _)| !matches!(code, 1005 | 1006 | 1015))
        .map(|(code, reason)| CloseFrame {
            code: CloseCode::from(*code),
            reason: reason.clone().into(),
        });
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(Message::Close(frame)).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Rooms of this process: room name → members (their send queues). Broadcasts clone the
/// payload's `Bytes` (a reference count) per member, never the bytes. With NATS configured a
/// broadcast is also published on `weft.ws.room.<room>` and messages from other proxies are
/// delivered to local members; a proxy skips its own messages by their `Weft-Origin` header.
pub struct Hub {
    origin: String,
    rooms: Mutex<HashMap<String, HashMap<u64, Arc<Conn>>>>,
    /// The relay to the other proxies, with its generation (see [`Hub::attach_nats`]).
    nats: Mutex<Option<(u64, RoomRelay)>>,
    nats_generation: AtomicU64,
}

/// The process's hub (rooms survive config reloads).
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Hub {
            origin: format!("{:x}-{:x}", std::process::id(), nanos),
            rooms: Mutex::new(HashMap::new()),
            nats: Mutex::new(None),
            nats_generation: AtomicU64::new(0),
        }
    })
}

/// NATS subject prefix of room broadcasts (the wire format is the bridge's `RoomRelay`).
pub use weft_nats_bridge::rooms::ROOM_SUBJECT_PREFIX;

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= weft_runtime::abi::WEFT_MAX_WS_ROOM_LEN as usize
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

impl Hub {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Arc<Conn>>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self, room: &str, conn: &Arc<Conn>) {
        self.rooms()
            .entry(room.to_owned())
            .or_default()
            .insert(conn.id, Arc::clone(conn));
    }

    fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms();
        if let Some(m) = rooms.get_mut(room) {
            m.remove(&id);
            if m.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn leave_all(&self, id: u64, rooms: &HashSet<String>) {
        for r in rooms {
            self.leave(r, id);
        }
    }

    /// Members of `room` on this proxy.
    pub fn members(&self, room: &str) -> usize {
        self.rooms().get(room).map_or(0, HashMap::len)
    }

    /// Queues `msg` (a `Bytes` clone each) for every member but `except`; returns whether
    /// `except` is a member.
    fn deliver_local(&self, room: &str, msg: &Message, except: u64) -> bool {
        let members: Vec<Arc<Conn>> = match self.rooms().get(room) {
            Some(m) => m.values().cloned().collect(),
            None => return false,
        };
        let mut member = false;
        for c in members {
            if c.id == except {
                member = true;
            } else {
                c.send(msg.clone());
            }
        }
        member
    }

    /// Sends to every member of `room` here and (with NATS) on the other proxies. The copy of
    /// the sending connection `sender`, if it is a member, is returned for it to queue itself.
    fn broadcast(&self, room: &str, binary: bool, payload: Bytes, sender: u64) -> Option<Message> {
        let relay = self
            .nats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, r)| r.clone());
        if let Some(relay) = relay {
            let (room, payload) = (room.to_owned(), payload.clone());
            tokio::spawn(async move {
                if let Err(e) = relay.publish(&room, binary, payload).await {
                    warn!(error = %e, "websocket room broadcast: NATS publish failed");
                }
            });
        }
        let m = ws_message(binary, payload)?;
        self.deliver_local(room, &m, sender).then_some(m)
    }

    /// Starts relaying room broadcasts through NATS with `client` (replacing an earlier
    /// client, e.g. after a reload); the subscription runs on `rt`.
    pub fn attach_nats(&'static self, client: async_nats::Client, rt: &tokio::runtime::Handle) {
        let generation = self.nats_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let relay = RoomRelay::new(client, self.origin.as_str());
        *self.nats.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, relay.clone()));
        rt.spawn(async move {
            let mut sub = match relay.subscribe().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "websocket rooms: cannot subscribe to NATS; rooms stay local");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                if self.nats_generation.load(Ordering::Relaxed) != generation {
                    return; // a newer client took over
                }
                self.deliver_remote(msg);
            }
        });
    }

    /// Delivers a message from another proxy to this proxy's members of its room.
    fn deliver_remote(&self, msg: RoomMessage) {
        if !valid_room(&msg.room) {
            debug!(room = %msg.room, "websocket rooms: ignoring a message on a bad subject");
            return;
        }
        match ws_message(msg.binary, msg.payload) {
            Some(m) => {
                self.deliver_local(&msg.room, &m, 0);
            }
            None => debug!(room = %msg.room, "websocket rooms: ignoring a text broadcast that is not UTF-8"),
        }
    }
}

/// `routes[].websocket`: the route's WebSocket connections are served by plugin instance
/// `plugin` (a `type: ffi` instance with WebSocket phases) with these limits.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsRouteConfig {
    pub plugin: String,
    /// Largest frame ([`DEFAULT_WS_MAX_FRAME_BYTES`]); larger closes the connection with 1009.
    #[serde(default)]
    pub max_frame_bytes: Option<usize>,
    /// Largest message after joining fragments ([`DEFAULT_WS_MAX_MESSAGE_BYTES`], at most half the arena slot:
    /// the plugin reads it in place and its answer must fit the out slot); larger: 1009.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Messages queued for one connection ([`DEFAULT_WS_SEND_QUEUE`]); a client that lets it fill is closed
    /// with 1008.
    #[serde(default)]
    pub send_queue: Option<usize>,
    /// Keep-alive ping period ([`DEFAULT_WS_PING_INTERVAL_MS`]).
    #[serde(default)]
    pub ping_interval_ms: Option<u64>,
    /// Close (1000, "idle timeout") after this long without any frame from the client
    /// ([`DEFAULT_WS_IDLE_TIMEOUT_MS`]; must exceed `ping_interval_ms`).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

impl WsRouteConfig {
    /// The limits with their defaults filled in.
    pub fn settings(&self) -> WsSettings {
        WsSettings {
            max_frame_bytes: self.max_frame_bytes.unwrap_or(DEFAULT_WS_MAX_FRAME_BYTES),
            max_message_bytes: self.max_message_bytes.unwrap_or(DEFAULT_WS_MAX_MESSAGE_BYTES),
            send_queue: self.send_queue.unwrap_or(DEFAULT_WS_SEND_QUEUE),
            ping_interval: Duration::from_millis(self.ping_interval_ms.unwrap_or(DEFAULT_WS_PING_INTERVAL_MS)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.unwrap_or(DEFAULT_WS_IDLE_TIMEOUT_MS)),
        }
    }

    /// `ffi`: whether the named instance exists (`None`: unknown) and is in-process.
    pub fn validate(&self, ffi: Option<bool>, slot_size: usize, err: &mut dyn FnMut(&str, String)) {
        match ffi {
            None => err("plugin", format!("unknown plugin {:?}", self.plugin)),
            Some(false) => err(
                "plugin",
                format!(
                    "plugin instance {:?} is type: nats; WebSocket endpoints need an in-process (ffi) instance",
                    self.plugin
                ),
            ),
            Some(true) => {}
        }
        let s = self.settings();
        if s.max_frame_bytes == 0 || s.max_message_bytes == 0 || s.send_queue == 0 {
            err("max_*/send_queue", "limits must be at least 1".into());
        }
        if s.max_message_bytes > slot_size / 2 {
            err(
                "max_message_bytes",
                format!(
                    "must be at most half of runtime.slot_size ({} bytes): a message is handed to the plugin in place and its answer must fit one arena slot",
                    slot_size / 2
                ),
            );
        }
        if s.ping_interval.is_zero() || s.idle_timeout <= s.ping_interval {
            err(
                "idle_timeout_ms",
                "ping_interval_ms must be at least 1 and idle_timeout_ms larger than it".into(),
            );
        }
    }
}
