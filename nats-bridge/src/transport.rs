//! The NATS connection and the reply multiplexer shared by every remote plugin of a host.
//!
//! async-nats's `Client::request` keeps the entries of timed-out requests in its pending map
//! (nats.rs issue 1617), so the transport multiplexes replies itself: one wildcard subscription
//! `_INBOX.<nuid>.*` per transport, a map token -> oneshot sender, and a guard that removes the
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

pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) mux: Mux,
    /// Identifies this host to workers (`Weft-Host` header): request ids are unique per host
    /// only, so workers key per-request state by (host, request id).
    pub(crate) host_id: String,
    /// The runtime the transport was connected on: fire-and-forget publishes from threads
    /// outside it (the engine's log thread) are spawned here.
    pub(crate) handle: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

/// One NATS connection with its reply multiplexer. Cheap to share (`Arc`); plugin handles are
/// made from it (`NatsTransport::plugin`, in `plugin.rs`, which depends on this module and not
/// the other way round).
pub struct NatsTransport {
    pub(crate) shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl NatsTransport {
    /// Connects, subscribes the reply inbox and starts the task that routes replies.
    pub async fn connect(opts: NatsOptions) -> Result<Arc<NatsTransport>, ConnectError> {
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
        if matches!(opts.auth, NatsAuth::None) && !opts.url.contains('@') {
            tracing::warn!(
                url = %opts.url,
                "NATS connection without authentication: anyone who can reach the server can read \
                 requests and answer them; give hosts and workers users with the subject \
                 permissions in docs/architecture.md (\"Subject permissions\")"
            );
        }
        let client = co
            .connect(opts.url.as_str())
            .await
            .map_err(|source| ConnectError::Connect {
                url: opts.url.clone(),
                source,
            })?;
        let inbox = client.new_inbox(); // _INBOX.<nuid>
        let host_id = inbox.rsplit('.').next().unwrap_or("host").to_owned();
        let mut sub = client.subscribe(format!("{inbox}.*")).await?;
        let shared = Arc::new(Shared {
            client,
            mux: Mux {
                prefix: inbox,
                pending: Mutex::new(HashMap::new()),
            },
            host_id,
            handle: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&shared);
        let reader = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(shared) = weak.upgrade() else { break };
                shared.mux.deliver(msg);
            }
        });
        Ok(Arc::new(NatsTransport { shared, reader }))
    }

    /// Whether the connection is up right now (calls fail fast while it is not).
    pub fn is_connected(&self) -> bool {
        self.shared.connected()
    }

    /// Calls waiting for a reply right now (0 when idle: timed-out calls leave nothing behind).
    pub fn pending_replies(&self) -> usize {
        self.shared.mux.len()
    }

    /// This host's id as workers see it (`Weft-Host` header).
    pub fn host_id(&self) -> &str {
        &self.shared.host_id
    }

    /// The underlying client (e.g. for `$SRV.INFO` discovery).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
