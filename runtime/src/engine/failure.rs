//! Why a plugin call failed, and what the client is answered when the instance fails closed.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{Exchange, Instance};
use crate::RuntimeStats;
use crate::abi::{WeftPhase, WeftResult};
use crate::mutation::MutationError;
use crate::remote::{RemoteCallError, RemoteErrorKind};
use crate::sync::stat::Ordering;

pub(super) enum CallError {
    Code(WeftResult),
    Mutation(MutationError),
    Remote(RemoteCallError),
    /// A pending call or worker job missed the instance's deadline and was cancelled.
    Timeout(Duration),
    /// Refused without calling the plugin: its in-flight limit or its worker ring is full.
    Busy {
        retry_after: u32,
        why: String,
    },
    /// After a cancelled call no arena slot was free to go on with.
    NoSlot,
    /// A blocking instance has no worker on this thread's ring.
    NoWorker(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Code(WeftResult::Panic) => f.write_str("handler panicked"),
            CallError::Code(c) => write!(f, "plugin returned {c:?}"),
            CallError::Mutation(e) => write!(f, "invalid mutation batch rejected: {e}"),
            CallError::Remote(e) => write!(f, "{e}"),
            CallError::Timeout(d) => write!(
                f,
                "plugin did not complete the call within its deadline of {} ms; call cancelled",
                d.as_millis()
            ),
            CallError::Busy { why, .. } => write!(f, "call refused, {why}"),
            CallError::NoSlot => f.write_str("no free arena slot to go on with after a cancelled call"),
            CallError::NoWorker(why) => write!(f, "blocking plugin unavailable: {why}"),
        }
    }
}

pub(super) fn failure_response(status: StatusCode, reason: &'static str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(reason.as_bytes()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp
}

/// `failure_response` with `retry-after: secs`: the client may try again soon.
fn retry_later(reason: &'static str, secs: u32) -> Response<Bytes> {
    let mut resp = failure_response(StatusCode::SERVICE_UNAVAILABLE, reason);
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    resp
}

/// 503 with `retry-after`: no arena slot for the request to go on with.
pub(super) fn no_slot_response() -> Response<Bytes> {
    retry_later("busy\n", 1)
}

/// The answer of a fail-closed instance: 503 (with `retry-after`) when the plugin is unreachable
/// or overloaded (remote, in-flight limit, worker ring full), 504 when it timed out, 500
/// otherwise.
pub(super) fn call_failure_response(err: &CallError) -> Response<Bytes> {
    match err {
        CallError::Remote(e) => match e.kind {
            RemoteErrorKind::Unavailable | RemoteErrorKind::Overloaded => retry_later("plugin unavailable\n", 1),
            RemoteErrorKind::Timeout => failure_response(StatusCode::GATEWAY_TIMEOUT, "plugin timed out\n"),
            _ => failure_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure\n"),
        },
        CallError::Timeout(_) => failure_response(StatusCode::GATEWAY_TIMEOUT, "plugin timed out\n"),
        CallError::Busy { retry_after, .. } => retry_later("plugin busy\n", *retry_after),
        CallError::NoSlot => no_slot_response(),
        _ => failure_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin failure\n"),
    }
}

impl Exchange {
    /// Counts and logs a failed call, naming the instance's policy.
    pub(super) fn note_failure(&self, inst: &Instance, phase: WeftPhase, err: &CallError) {
        let stats: &RuntimeStats = &self.chain.rt.stats;
        stats.plugin_failures.fetch_add(1, Ordering::Relaxed);
        if inst.fail_open && phase != WeftPhase::Log {
            stats.fail_open_passes.fetch_add(1, Ordering::Relaxed);
        }
        let policy = if inst.fail_open {
            "fail-open: request continues unchanged"
        } else {
            "fail-closed"
        };
        tracing::error!(plugin = %inst.name, phase = ?phase, request_id = self.ident.request_id, "{err}; {policy}");
    }
}
