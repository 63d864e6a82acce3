//! WebSocket phases: a connection served by a plugin keeps its [`Exchange`] (and so its arena
//! slot, its `(slot, generation)` and the plugin's per-connection state) from the open event
//! to the close event: the WebSocket stage of [`Exchange`].
//!
//! A message is handed in place like a body chunk: the view's `body`/`body_len` point at the
//! `Bytes` the codec produced, `body_flags` carries [`WEFT_WS_BINARY`]; the records go into a
//! second arena slot (the body calls' out buffer). The runtime knows nothing of sockets or
//! rooms: it returns the validated WebSocket records ([`WsOp`]) and the proxy carries them out.

use std::sync::Arc;

use bytes::Bytes;

use super::Exchange;
use super::Transport;
use super::failure::CallError;
use crate::abi::{WEFT_WS_BINARY, WEFT_WS_ERROR, WeftPhase, WeftResult};
use crate::mutation::WsOp;
use crate::view;

/// One event of a WebSocket connection.
#[derive(Debug, Clone, Copy)]
pub enum WsEvent<'a> {
    /// The connection has been accepted.
    Open,
    /// One whole message from the client (text: valid UTF-8).
    Message { data: &'a Bytes, binary: bool },
    /// The connection has ended: the close code (1005: none given, 1006: no close frame), the
    /// reason, and whether it ended with an error (then `reason` describes it).
    Close { code: u16, reason: &'a Bytes, error: bool },
}

/// A fail-closed plugin failed in a WebSocket event (panic, error result, invalid batch,
/// timeout): the connection must close with 1011. Already logged and counted. (A fail-open
/// instance's failure only drops its records for that event.)
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {instance} failed in the {phase:?} phase: {reason}")]
pub struct WsFailure {
    pub instance: Arc<str>,
    pub phase: WeftPhase,
    pub reason: String,
    /// The handler panicked.
    pub panicked: bool,
}

impl Exchange {
    /// Runs one WebSocket event through every in-process instance of the chain that declared
    /// its phase, in chain order, and returns their WebSocket records in order. Call
    /// [`request_headers_async`](Self::request_headers_async) first (it lays out the upgrade
    /// request that every event's view shows). The calls of one connection must be made one
    /// after another (the caller's one task per connection does that).
    pub async fn ws_event(&mut self, ev: WsEvent<'_>) -> Result<Vec<WsOp>, WsFailure> {
        let empty = Bytes::new();
        let (phase, data, flags, status) = match ev {
            WsEvent::Open => (WeftPhase::WebSocketOpen, &empty, 0, 0),
            WsEvent::Message { data, binary } => (
                WeftPhase::WebSocketMessage,
                data,
                if binary { WEFT_WS_BINARY } else { 0 },
                0,
            ),
            WsEvent::Close { code, reason, error } => (
                WeftPhase::WebSocketClose,
                reason,
                if error { WEFT_WS_ERROR } else { 0 },
                u32::from(code),
            ),
        };
        let mut ops = Vec::new();
        if self.chain.phases & phase.mask() == 0 {
            return Ok(ops);
        }
        let instances = Arc::clone(&self.chain.instances);
        for inst in instances
            .iter()
            .filter(|i| i.phases & phase.mask() != 0 && matches!(i.transport, Transport::Ffi(_)))
        {
            let fail = |x: &Exchange, err: CallError| {
                x.note_failure(inst, phase, &err);
                WsFailure {
                    instance: Arc::clone(&inst.name),
                    phase,
                    panicked: matches!(err, CallError::Code(WeftResult::Panic)),
                    reason: err.to_string(),
                }
            };
            if self.request_end == 0 {
                return Err(fail(self, CallError::Code(WeftResult::InvalidArgument)));
            }
            let Some(lease) = self.lease.as_mut() else {
                return Err(fail(self, CallError::NoSlot));
            };
            view::set_status(lease.bytes_mut(), status);
            let out = self.slot_out();
            match self.body_call(inst, phase, data, flags, out).await {
                Ok((mut batch, out)) => {
                    ops.extend(batch.take_ws());
                    // Payloads were copied out by the decoder: the out slot is free again.
                    self.body.spare = out.into_spare();
                }
                // A fail-open instance's failure skips its part of this event; the connection
                // lives on (logged and counted as a fail-open pass).
                Err(err) if inst.fail_open && !matches!(err, CallError::NoSlot) => {
                    self.note_failure(inst, phase, &err);
                }
                Err(err) => return Err(fail(self, err)),
            }
        }
        Ok(ops)
    }
}

/// The WebSocket future must be `Send` (it runs in a connection task on a multi-threaded runtime).
#[allow(dead_code)]
fn ws_future_is_send(x: &mut Exchange) {
    fn send<T: Send>(_: T) {}
    send(x.ws_event(WsEvent::Open));
}
