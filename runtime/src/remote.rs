//! Remote plugin instances: a transport-neutral interface the phase engine calls instead of a
//! library's `on_phase` (the NATS transport in `weft-nats-bridge` implements it).
//!
//! A remote phase call gets the request view exactly as an in-process plugin would (the bytes of
//! the arena slot up to the end of the view) and returns the plugin's mutation records in the ABI
//! format; the engine validates them with [`crate::mutation::decode`] and applies them like an
//! in-process batch, under the same failure policy.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::abi::{WeftPhase, WeftResult};

/// The future of one remote phase call.
pub type RemoteCall<'a> = Pin<Box<dyn Future<Output = Result<Bytes, RemoteCallError>> + Send + 'a>>;

/// A plugin instance served somewhere else. Implementations must be cheap to call concurrently.
pub trait RemoteInstance: Send + Sync + 'static {
    /// The phases the remote plugin handles (bit `1 << phase`).
    fn phases(&self) -> u32;

    /// Runs `phase` of request `request_id` over `view` (a complete request view, runtime
    /// layout) and returns the mutation records. `deadline` bounds the whole call; the
    /// implementation enforces it (the engine has no timer of its own).
    fn call<'a>(&'a self, phase: WeftPhase, request_id: u64, view: &'a [u8], deadline: Duration) -> RemoteCall<'a>;

    /// The log phase: fire and forget, called on the runtime's log thread, so it must not block.
    /// Forgets the request like [`release`](Self::release).
    fn log(&self, request_id: u64, view: &[u8]);

    /// The request is finished: forget anything kept for it (e.g. which worker served it).
    /// Called for every request that started on a chain with this instance, whatever happened.
    fn release(&self, request_id: u64);
}

/// Why a remote call failed; decides the answer of a fail-closed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteErrorKind {
    /// Not connected, or nobody serves the plugin: 503.
    Unavailable,
    /// Too many calls in flight: 503.
    Overloaded,
    /// No reply within the deadline: 504.
    Timeout,
    /// The plugin reported a failure (error, panic): 500.
    PluginFailed(WeftResult),
    /// The reply could not be read: 500.
    BadReply,
}

/// A failed remote call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct RemoteCallError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

impl RemoteCallError {
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> RemoteCallError {
        RemoteCallError {
            kind,
            message: message.into(),
        }
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            RemoteErrorKind::Unavailable => "remote plugin unavailable",
            RemoteErrorKind::Overloaded => "remote plugin overloaded",
            RemoteErrorKind::Timeout => "remote plugin timed out",
            RemoteErrorKind::PluginFailed(WeftResult::Panic) => "remote handler panicked",
            RemoteErrorKind::PluginFailed(_) => "remote plugin failed",
            RemoteErrorKind::BadReply => "malformed reply from remote plugin",
        };
        if self.message.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {}", self.message)
        }
    }
}
