//! The NATS connections and reply multiplexers shared by every remote plugin of a host: one
//! connection on the runtime that connected the transport and, with `NatsOptions::per_thread`,
//! one per calling thread that runs a current-thread runtime (weft-proxy's serving threads), so
//! that a call and its reply stay on that thread.
//!
//! async-nats's `Client::request` keeps the entries of timed-out requests in its pending map
//! (nats.rs issue 1617), so the transport multiplexes replies itself: one wildcard subscription
//! `_INBOX.<nuid>.*` per connection, a map token -> oneshot sender, and a guard that removes the
//! entry when the call finishes in any way (reply, timeout, error, the caller's future dropped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Message};
use futures_util::StreamExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the transport authenticates to the NATS server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// An nkey seed (`SU...`).
    NKeySeed(String),
    /// A `.creds` file (JWT + nkey seed), as written by `nsc`.
    CredsFile(PathBuf),
}

/// TLS settings. With `ca` the server certificate is checked against that CA; with
/// `client_cert` (certificate, key) the transport authenticates with mutual TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    pub required: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Connection options for [`NatsTransport::connect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsOptions {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Client name shown in the server's monitoring.
    pub name: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// Time allowed for one connection attempt.
    pub connect_timeout: Duration,
    /// Reconnect backoff: 10 ms doubling per failed attempt, capped at this (default 250 ms), so a
    /// restarted server is found again within about this long after it listens.
    pub reconnect_max_delay: Duration,
    /// Client ping interval: bounds how long a silently dead server connection goes unnoticed.
    pub ping_interval: Duration,
    /// Keep trying in the background when the server is down at start-up instead of failing.
    pub retry_on_initial_connect: bool,
    /// Give each thread that calls from a current-thread tokio runtime (weft-proxy's serving
    /// threads) a connection of its own, driven by that runtime: a call and its reply then stay
    /// on the calling thread, with no hand-off to the transport's runtime and back. Until a
    /// thread's connection is up (or when it failed to open) its calls take the shared one.
    pub per_thread: bool,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            name: "weft-proxy".into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            connect_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_millis(250),
            ping_interval: Duration::from_secs(5),
            retry_on_initial_connect: false,
            per_thread: false,
        }
    }
}

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials file {path}: {source}")]
    Creds { path: PathBuf, source: std::io::Error },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to the reply inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

pub(crate) type Waiter = oneshot::Sender<Message>;

/// Reply multiplexer: token -> waiting call.
pub(crate) struct Mux {
    /// `_INBOX.<nuid>`; replies arrive on `<prefix>.<token>`.
    pub(crate) prefix: String,
    pending: Mutex<HashMap<u64, Waiter>>,
}

impl Mux {
    /// Registers a waiter; the returned guard removes it again when dropped.
    pub(crate) fn register(&self) -> (PendingGuard<'_>, oneshot::Receiver<Message>) {
        // Random, not a counter: whoever sees one reply subject cannot name the next one.
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let token = loop {
            let t: u64 = rand::random();
            if !pending.contains_key(&t) {
                break t;
            }
        };
        pending.insert(token, tx);
        drop(pending);
        (PendingGuard { mux: self, token }, rx)
    }

    fn deliver(&self, msg: Message) {
        let Some(token) = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else {
            return;
        };
        let tx = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
        if let Some(tx) = tx {
            let _ = tx.send(msg);
        }
        // else: a late reply to a call that already timed out; dropped.
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes its waiter from the map on drop, whatever ended the call.
pub(crate) struct PendingGuard<'a> {
    mux: &'a Mux,
    pub(crate) token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.mux
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

/// One connection and the multiplexer of the replies to its calls.
pub(crate) struct Lane {
    pub(crate) client: Client,
    pub(crate) mux: Mux,
    reader: JoinHandle<()>,
}

impl Lane {
    /// Subscribes the client's reply inbox and starts the task (on the current runtime) that
    /// routes the replies.
    async fn start(client: Client) -> Result<Arc<Lane>, ConnectError> {
        let inbox = client.new_inbox(); // _INBOX.<nuid>
        let mut sub = client.subscribe(format!("{inbox}.*")).await?;
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<Lane>| {
            let weak = weak.clone();
            let reader = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(lane) = weak.upgrade() else { break };
                    lane.mux.deliver(msg);
                }
            });
            Lane {
                client,
                mux: Mux {
                    prefix: inbox,
                    pending: Mutex::new(HashMap::new()),
                },
                reader,
            }
        }))
    }

    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(crate) struct Shared {
    /// The connection made by `connect`, on its runtime: every call's when `per_thread` is off.
    pub(crate) main: Arc<Lane>,
    /// Identifies this host to workers (`Weft-Host` header): request ids are unique per host
    /// only, so workers key per-request state by (host, request id). The same on every lane.
    pub(crate) host_id: String,
    /// The runtime the transport was connected on: fire-and-forget publishes from threads
    /// outside it (the engine's log thread) are spawned here.
    pub(crate) handle: tokio::runtime::Handle,
    opts: NatsOptions,
    /// The calling threads' own connections (`per_thread`): owned here, so they close with the
    /// transport; a thread keeps a weak reference to its own.
    lanes: Mutex<Vec<Arc<Lane>>>,
}

/// How long a thread whose connection failed to open keeps using the shared one before it tries
/// again.
const LANE_RETRY: Duration = Duration::from_secs(1);

/// A thread's own connection to one transport's server.
struct ThreadLane {
    owner: std::sync::Weak<Shared>,
    state: LaneState,
}

enum LaneState {
    Connecting,
    Failed(std::time::Instant),
    Up(std::sync::Weak<Lane>),
}

thread_local! {
    static THREAD_LANES: std::cell::RefCell<Vec<ThreadLane>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Shared {
    /// The connection a call from this thread takes: the thread's own when `per_thread` is on,
    /// the thread runs a current-thread runtime and its connection is up; else the shared one
    /// (and the thread's connection is started, at most once a [`LANE_RETRY`]).
    pub(crate) fn lane(self: &Arc<Self>) -> Arc<Lane> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if !self.opts.per_thread
            || !Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
        {
            return Arc::clone(&self.main);
        }
        THREAD_LANES.with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            let mine = lanes
                .iter_mut()
                .find(|l| std::ptr::eq(l.owner.as_ptr(), Arc::as_ptr(self)));
            match mine.map(|l| &mut l.state) {
                Some(LaneState::Up(lane)) => {
                    return lane
                        .upgrade()
                        .filter(|l| l.connected())
                        .unwrap_or_else(|| Arc::clone(&self.main));
                }
                Some(LaneState::Connecting) => return Arc::clone(&self.main),
                Some(LaneState::Failed(at)) if at.elapsed() < LANE_RETRY => return Arc::clone(&self.main),
                Some(state) => *state = LaneState::Connecting,
                None => {
                    // Lanes of transports that are gone (a reload replaced the connection).
                    lanes.retain(|l| l.owner.strong_count() > 0);
                    lanes.push(ThreadLane {
                        owner: Arc::downgrade(self),
                        state: LaneState::Connecting,
                    });
                }
            }
            tokio::spawn(Self::open_lane(Arc::downgrade(self)));
            Arc::clone(&self.main)
        })
    }

    /// Opens this thread's connection (a task on its current-thread runtime, so on this thread).
    async fn open_lane(shared: std::sync::Weak<Shared>) {
        let Some(mut opts) = shared.upgrade().map(|s| s.opts.clone()) else {
            return;
        };
        // Told apart in the server's monitoring: `weft-proxy/weft-serve-0`.
        if let Some(thread) = std::thread::current().name() {
            opts.name = format!("{}/{thread}", opts.name);
        }
        let state = match connect_client(&opts).await {
            Ok(client) => Lane::start(client).await,
            Err(e) => Err(e),
        };
        let Some(owner) = shared.upgrade() else { return };
        let state = match state {
            Ok(lane) => {
                let weak = Arc::downgrade(&lane);
                owner.lanes.lock().unwrap_or_else(|e| e.into_inner()).push(lane);
                LaneState::Up(weak)
            }
            Err(e) => {
                if owner.main.connected() {
                    tracing::warn!("nats: a thread's own connection failed, its calls take the shared one: {e}");
                }
                LaneState::Failed(std::time::Instant::now())
            }
        };
        THREAD_LANES.with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            if let Some(l) = lanes
                .iter_mut()
                .find(|l| std::ptr::eq(l.owner.as_ptr(), Arc::as_ptr(&owner)))
            {
                l.state = state;
            }
        });
    }

    pub(crate) fn connected(&self) -> bool {
        self.main.connected()
    }
}

/// The NATS connection(s) with their reply multiplexers. Cheap to share (`Arc`); plugin handles are
/// made from it (`NatsTransport::plugin`, in `plugin.rs`, which depends on this module and not
/// the other way round).
pub struct NatsTransport {
    pub(crate) shared: Arc<Shared>,
}

/// A client connected with `opts`.
async fn connect_client(opts: &NatsOptions) -> Result<Client, ConnectError> {
    let max = opts.reconnect_max_delay;
    let mut co = async_nats::ConnectOptions::new()
        .name(&opts.name)
        .connection_timeout(opts.connect_timeout)
        .ping_interval(opts.ping_interval)
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            let shift = attempts.saturating_sub(1).min(16) as u32;
            Duration::from_millis(10u64 << shift).min(max)
        });
    if opts.retry_on_initial_connect {
        co = co.retry_on_initial_connect();
    }
    co = match &opts.auth {
        NatsAuth::None => co,
        NatsAuth::UserPassword { user, password } => co.user_and_password(user.clone(), password.clone()),
        NatsAuth::Token(t) => co.token(t.clone()),
        NatsAuth::NKeySeed(seed) => co.nkey(seed.clone()),
        NatsAuth::CredsFile(path) => co.credentials_file(path).await.map_err(|source| ConnectError::Creds {
            path: path.clone(),
            source,
        })?,
    };
    if opts.tls.required {
        co = co.require_tls(true);
    }
    if let Some(ca) = &opts.tls.ca {
        co = co.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &opts.tls.client_cert {
        co = co.add_client_certificate(cert.clone(), key.clone());
    }
    co.connect(opts.url.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: opts.url.clone(),
            source,
        })
}

impl NatsTransport {
    /// Connects, subscribes the reply inbox and starts the task that routes replies.
    pub async fn connect(opts: NatsOptions) -> Result<Arc<NatsTransport>, ConnectError> {
        if matches!(opts.auth, NatsAuth::None) && !opts.url.contains('@') {
            tracing::warn!(
                url = %opts.url,
                "NATS connection without authentication: anyone who can reach the server can read \
                 requests and answer them; give hosts and workers users with the subject \
                 permissions in docs/architecture.md (\"Subject permissions\")"
            );
        }
        let main = Lane::start(connect_client(&opts).await?).await?;
        let host_id = main.mux.prefix.rsplit('.').next().unwrap_or("host").to_owned();
        Ok(Arc::new(NatsTransport {
            shared: Arc::new(Shared {
                main,
                host_id,
                handle: tokio::runtime::Handle::current(),
                opts,
                lanes: Mutex::new(Vec::new()),
            }),
        }))
    }

    /// Whether the connection is up right now (calls fail fast while it is not).
    pub fn is_connected(&self) -> bool {
        self.shared.connected()
    }

    /// Calls waiting for a reply right now (0 when idle: timed-out calls leave nothing behind).
    pub fn pending_replies(&self) -> usize {
        let lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.main.mux.len() + lanes.iter().map(|l| l.mux.len()).sum::<usize>()
    }

    /// The open connections of calling threads (`NatsOptions::per_thread`), besides the shared one.
    pub fn thread_connections(&self) -> usize {
        self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// This host's id as workers see it (`Weft-Host` header).
    pub fn host_id(&self) -> &str {
        &self.shared.host_id
    }

    /// The underlying client (e.g. for `$SRV.INFO` discovery).
    pub fn client(&self) -> &Client {
        &self.shared.main.client
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        // Replies stop with the transport, whoever still holds a plugin handle; the threads'
        // own connections close.
        self.shared.main.reader.abort();
        self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
