//! Body phases: request and response bodies through plugins, streamed chunk by chunk or buffered
//! whole: the body stage of [`Exchange`].
//!
//! # Data flow and memory
//! - **Chunk in, no copy.** The proxy hands each body chunk as the `Bytes` hyper produced. The
//!   view in the request's slot gets the chunk's address and length ([`view::set_body`]); the
//!   plugin reads the bytes in place while this code holds the `Bytes` (until the call returns).
//! - **Replacement out, no copy.** A body call's `out` buffer is not the rest of the request's
//!   slot but a second arena slot leased for the call (`out.rs`). When the plugin
//!   replaces, prepends or appends, the lease is frozen into a `Bytes` ([`Bytes::from_owner`])
//!   and each record's operand becomes a `Bytes::slice` of it: hyper writes the plugin's bytes
//!   straight from the arena and the slot returns to the arena when the last slice is dropped.
//!   A call that writes no body record leaves its lease for the next call (`spare`).
//! - **Buffered mode** gets the whole body as one contiguous `Bytes` (the proxy collected it up
//!   to its limit, charged to the runtime's [`ByteBudget`]). Pieces are joined (one copy) only
//!   when a second plugin must see the result of a first one that prepended or appended. Its out
//!   buffer has room for twice the body: an out slot, a buffer-class slot, or, larger than every
//!   class (or with none free), an anonymous mapping of its own (`out::MappedOut`), which the kernel
//!   zero-fills page by page as the plugin writes (nothing is zeroed or made resident up front).
//!   Mapped buffers and joined copies are charged to the budget before they are made; over it,
//!   the call is refused (503 for a request body, 502 for a response body).
//!
//! # Rules
//! Every body phase an instance takes part in ends with exactly one call carrying
//! [`WEFT_BODY_END_OF_STREAM`] (possibly with an empty chunk). An instance that answered
//! `SkipBody` in the matching headers phase is not called for that body. Streamed calls may only
//! edit the body (the head is on the wire); a head change there is an invalid batch. A failure
//! follows the instance's policy: fail open passes the bytes unchanged, fail closed aborts the
//! stream ([`BodyAbort`]) or, buffered, answers 500.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::failure::{CallError, call_failure_response, failure_response};
use super::out::{CallOut, OverBudget};
use super::{Exchange, Instance, Transport};
use crate::abi::{
    WEFT_BODY_BUFFERED, WEFT_BODY_END_OF_STREAM, WEFT_PLUGIN_FLAG_REQUEST_BODY_BUFFERED,
    WEFT_PLUGIN_FLAG_RESPONSE_BODY_BUFFERED, WeftPhase, WeftResult,
};
use crate::arena::SlotLease;
use crate::budget::{ByteBudget, charged_bytes};
use crate::mutation::{self, BodyEdits, MutationError};
use crate::view;

/// Which body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySide {
    Request,
    Response,
}

impl BodySide {
    fn phase(self) -> WeftPhase {
        match self {
            BodySide::Request => WeftPhase::RequestBody,
            BodySide::Response => WeftPhase::ResponseBody,
        }
    }

    fn buffered_flag(self) -> u32 {
        match self {
            BodySide::Request => WEFT_PLUGIN_FLAG_REQUEST_BODY_BUFFERED,
            BodySide::Response => WEFT_PLUGIN_FLAG_RESPONSE_BODY_BUFFERED,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the proxy must carry one body through this exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// No instance wants it: stream it straight through, framing untouched.
    None,
    /// Chunk by chunk through [`Exchange::body_chunk`]; the length may change, so the proxy
    /// drops `content-length` and streams.
    Streamed,
    /// Collect it (up to the limit), then [`Exchange::request_body_buffered`] /
    /// [`Exchange::response_body_buffered`]; the proxy sets the exact new length.
    Buffered,
}

/// A fail-closed instance failed on a streamed body: the body must end with an error (the
/// client or the upstream sees an aborted message). Already logged and counted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {instance} failed in the {phase:?} phase: {reason}")]
pub struct BodyAbort {
    pub instance: Arc<str>,
    pub phase: WeftPhase,
    pub reason: String,
}

/// What a buffered body phase decided.
#[derive(Debug)]
pub enum BufferedBody {
    /// Send these bytes, in order, as the whole body (total length known).
    Body(Vec<Bytes>),
    /// Send this response instead (a local reply, or the failure answer of a fail-closed
    /// instance).
    Respond(Response<Bytes>),
}

/// Per-exchange body bookkeeping.
#[derive(Default)]
pub(crate) struct BodyState {
    /// Per side: chain positions of instances that answered `SkipBody` (sized lazily).
    skipped: [Vec<bool>; 2],
    /// Per side: the end-of-stream call has been made.
    ended: [bool; 2],
    /// An out slot a previous call left unused, for the next one.
    pub(super) spare: Option<SlotLease>,
}

/// Splits a call's result into the pieces to send: prepends, the body (or its replacement),
/// appends. Empty pieces are left out. Returns the lease when nothing refers to it.
fn assemble(edits: BodyEdits, data: &Bytes, lease: CallOut, out: &mut Vec<Bytes>) -> Option<SlotLease> {
    if edits.is_pass() {
        if !data.is_empty() {
            out.push(data.clone());
        }
        return lease.into_spare();
    }
    // The out buffer, frozen, owns the replacement bytes; each operand is a slice of it.
    let owner = lease.into_bytes();
    let mut push = |b: Bytes| {
        if !b.is_empty() {
            out.push(b);
        }
    };
    for r in edits.prepend {
        push(owner.slice(r));
    }
    match edits.replace {
        None => push(data.clone()),
        Some(None) => {}
        Some(Some(r)) => push(owner.slice(r)),
    }
    for r in edits.append {
        push(owner.slice(r));
    }
    None
}

/// Joins pieces into one contiguous `Bytes` (copies only when there are several; the copy is
/// charged to `budget`).
fn join(pieces: Vec<Bytes>, budget: &Arc<ByteBudget>) -> Result<Bytes, OverBudget> {
    match pieces.len() {
        0 => Ok(Bytes::new()),
        1 => Ok(pieces.into_iter().next().expect("one piece")),
        _ => {
            let len: usize = pieces.iter().map(Bytes::len).sum();
            let charge = budget.try_charge(len as u64).ok_or(OverBudget {
                want: len as u64,
                what: "over runtime.max_buffered_bytes_total",
            })?;
            let mut b = Vec::with_capacity(len);
            for p in pieces {
                b.extend_from_slice(&p);
            }
            Ok(charged_bytes(b, charge))
        }
    }
}

/// The answer to a buffered call refused for want of memory: 503 (with `Retry-After`) for a
/// request body, 502 for a response body.
fn over_budget_response(side: BodySide) -> Response<Bytes> {
    match side {
        BodySide::Request => {
            let mut resp = failure_response(StatusCode::SERVICE_UNAVAILABLE, "busy: buffered body memory\n");
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            resp
        }
        BodySide::Response => failure_response(StatusCode::BAD_GATEWAY, "buffered body memory exhausted\n"),
    }
}

impl Exchange {
    /// Whether the instance at chain position `pos` takes part in `side`'s body.
    fn body_active(&self, pos: usize, side: BodySide) -> bool {
        let inst = &self.chain.instances[pos];
        inst.phases & side.phase().mask() != 0
            && matches!(inst.transport, Transport::Ffi(_))
            && !self.body.skipped[side.index()].get(pos).copied().unwrap_or(false)
    }

    /// Chain positions taking part in `side`'s body, in call order (response: reverse).
    fn body_order(&self, side: BodySide) -> Vec<usize> {
        let n = self.chain.instances.len();
        let it: Box<dyn Iterator<Item = usize>> = match side {
            BodySide::Request => Box::new(0..n),
            BodySide::Response => Box::new((0..n).rev()),
        };
        it.filter(|&i| self.body_active(i, side)).collect()
    }

    /// How `side`'s body must travel, given the instances on the chain and the `SkipBody`
    /// answers of the headers phases so far. Ask after the matching headers phase.
    pub fn body_mode(&self, side: BodySide) -> BodyMode {
        if self.chain.phases & side.phase().mask() == 0 || self.request_end == 0 {
            return BodyMode::None;
        }
        let mut mode = BodyMode::None;
        for pos in 0..self.chain.instances.len() {
            if self.body_active(pos, side) {
                if self.chain.instances[pos].flags & side.buffered_flag() != 0 {
                    return BodyMode::Buffered;
                }
                mode = BodyMode::Streamed;
            }
        }
        mode
    }

    /// Records a `SkipBody` answer of `inst` in a headers phase (called by the phase loops).
    pub(crate) fn note_skip_body(&mut self, inst: &Instance, phase: WeftPhase) {
        let side = match phase {
            WeftPhase::RequestHeaders => BodySide::Request,
            WeftPhase::ResponseHeaders => BodySide::Response,
            _ => return,
        };
        let n = self.chain.instances.len();
        let Some(pos) = self.chain.instances.iter().position(|i| std::ptr::eq(&**i, inst)) else {
            return;
        };
        let skipped = &mut self.body.skipped[side.index()];
        skipped.resize(n, false);
        skipped[pos] = true;
    }

    /// The budget buffered bodies are charged to (process-wide): the caller charges the body it
    /// collects for [`request_body_buffered`](Self::request_body_buffered) /
    /// [`response_body_buffered`](Self::response_body_buffered) to it
    /// ([`budget::charged_bytes`](crate::budget::charged_bytes)).
    pub fn buffered_budget(&self) -> Arc<ByteBudget> {
        Arc::clone(self.chain.rt.buffered_budget())
    }

    /// One body call of `inst` over `data` writing into `out`; returns the batch and the out
    /// buffer.
    pub(super) async fn body_call(
        &mut self,
        inst: &Instance,
        phase: WeftPhase,
        data: &Bytes,
        flags: u32,
        out: CallOut,
    ) -> Result<(mutation::Batch, CallOut), CallError> {
        if self.bufs.out.is_some() {
            // An earlier call was abandoned in flight (its future dropped): its out buffer is
            // not ours to reuse.
            return Err(CallError::Code(WeftResult::Internal));
        }
        // A cancelled call may have kept the slot (see `abandon`): then nothing can go on.
        let Some(view_slot) = self.lease.as_mut() else {
            self.body.spare = out.into_spare();
            return Err(CallError::NoSlot);
        };
        view::set_body(view_slot.bytes_mut(), phase as u32, data, flags);
        self.bufs.out = Some(out);
        self.bufs.input = Some(data.clone());
        let result = self.call(inst, phase).await;
        self.bufs.input = None;
        let lease = self.bufs.out.take();
        match (result, lease) {
            (Ok(batch), Some(lease)) => Ok((batch, lease)),
            (Ok(_), None) => Err(CallError::Code(WeftResult::Internal)),
            (Err(e), lease) => {
                self.body.spare = lease.and_then(CallOut::into_spare);
                Err(e)
            }
        }
    }

    /// A call that may not change the head (a streamed one) did: the batch is refused whole and
    /// its out lease kept for the next call.
    fn refuse_head_change(&mut self, mut batch: mutation::Batch, lease: CallOut) -> CallError {
        self.body.spare = lease.into_spare();
        let op = if batch.take_reply().is_some() {
            "LocalReply"
        } else {
            "a head change"
        };
        CallError::Mutation(MutationError::StreamedHeadChange { op })
    }

    fn abort(&self, inst: &Instance, phase: WeftPhase, err: &CallError) -> BodyAbort {
        BodyAbort {
            instance: Arc::clone(&inst.name),
            phase,
            reason: err.to_string(),
        }
    }

    /// The largest chunk a streamed plugin is handed: half an arena slot, so a plugin can
    /// replace a chunk with up to about twice its bytes in its out slot. Larger chunks from the
    /// network are cut (zero-copy `Bytes` slices) and handed on one after another.
    pub fn max_body_chunk(&self) -> usize {
        (self.chain.rt.arena.slot_size() / 2).max(1)
    }

    /// Streamed mode: runs one chunk of `side`'s body through every instance taking part, in
    /// order, and appends the bytes to send to `out`. `end`: this is the last chunk (it may be
    /// empty); exactly one call per body must pass `end`, later calls do nothing. A chunk larger
    /// than [`max_body_chunk`](Self::max_body_chunk) is cut into several calls.
    pub async fn body_chunk(
        &mut self,
        side: BodySide,
        mut chunk: Bytes,
        end: bool,
        out: &mut Vec<Bytes>,
    ) -> Result<(), BodyAbort> {
        let max = self.max_body_chunk();
        if chunk.len() <= max {
            return self.body_piece(side, chunk, end, out).await;
        }
        let whole = chunk.clone();
        let first = out.len();
        while chunk.len() > max && !self.body.ended[side.index()] {
            let head = chunk.split_to(max);
            self.body_piece(side, head, false, out).await?;
        }
        self.body_piece(side, chunk, end, out).await?;
        // Every piece passed unchanged: hand on the original chunk as one frame again.
        let mut at = whole.as_ptr();
        let mut total = 0;
        for p in &out[first..] {
            if p.as_ptr() != at {
                return Ok(());
            }
            at = at.wrapping_add(p.len());
            total += p.len();
        }
        if total == whole.len() {
            out.truncate(first);
            out.push(whole);
        }
        Ok(())
    }

    async fn body_piece(
        &mut self,
        side: BodySide,
        chunk: Bytes,
        end: bool,
        out: &mut Vec<Bytes>,
    ) -> Result<(), BodyAbort> {
        if self.body.ended[side.index()] {
            if !chunk.is_empty() {
                out.push(chunk);
            }
            return Ok(());
        }
        if chunk.is_empty() && !end {
            return Ok(());
        }
        if end {
            self.body.ended[side.index()] = true;
        }
        let phase = side.phase();
        let mut cur = vec![chunk];
        for pos in self.body_order(side) {
            let inst = Arc::clone(&self.chain.instances[pos]);
            let mut next = Vec::with_capacity(cur.len());
            cur.retain(|b| !b.is_empty());
            if cur.is_empty() {
                if !end {
                    break;
                }
                // The end-of-stream call reaches every instance, even with nothing left.
                cur.push(Bytes::new());
            }
            let n = cur.len();
            for (i, piece) in cur.into_iter().enumerate() {
                let flags = if end && i + 1 == n { WEFT_BODY_END_OF_STREAM } else { 0 };
                let out = self.slot_out();
                let result = match self.body_call(&inst, phase, &piece, flags, out).await {
                    Ok((batch, lease)) if batch.has_head_changes() => Err(self.refuse_head_change(batch, lease)),
                    other => other,
                };
                match result {
                    Ok((mut batch, lease)) => {
                        let edits = batch.take_body_edits();
                        if let Some(l) = assemble(edits, &piece, lease, &mut next) {
                            self.body.spare = Some(l);
                        }
                    }
                    Err(err) => {
                        self.note_failure(&inst, phase, &err);
                        if !inst.fail_open {
                            return Err(self.abort(&inst, phase, &err));
                        }
                        if !piece.is_empty() {
                            next.push(piece);
                        }
                    }
                }
            }
            cur = next;
        }
        out.extend(cur.into_iter().filter(|b| !b.is_empty()));
        Ok(())
    }

    /// Buffered mode, request side: runs the whole request body (collected by the caller) through
    /// every instance taking part. Head changes of a buffered call apply to `parts` (the request
    /// has not been forwarded yet); a local reply ends the request.
    pub async fn request_body_buffered(&mut self, parts: &mut http::request::Parts, body: Bytes) -> BufferedBody {
        self.body_buffered(BodySide::Request, Head::Request(parts), body).await
    }

    /// Buffered mode, response side: as [`request_body_buffered`](Self::request_body_buffered);
    /// head changes (headers, status) apply to `parts`, which has not been sent yet.
    pub async fn response_body_buffered(&mut self, parts: &mut http::response::Parts, body: Bytes) -> BufferedBody {
        self.body_buffered(BodySide::Response, Head::Response(parts), body)
            .await
    }

    async fn body_buffered(&mut self, side: BodySide, mut head: Head<'_>, body: Bytes) -> BufferedBody {
        let phase = side.phase();
        self.body.ended[side.index()] = true;
        let mut cur = vec![body];
        let budget = self.buffered_budget();
        for pos in self.body_order(side) {
            let inst = Arc::clone(&self.chain.instances[pos]);
            let mut flags = WEFT_BODY_END_OF_STREAM;
            if inst.flags & side.buffered_flag() != 0 {
                flags |= WEFT_BODY_BUFFERED;
            }
            let len = cur.iter().map(Bytes::len).sum();
            let prepared = join(std::mem::take(&mut cur), &budget).and_then(|data| {
                let out = if flags & WEFT_BODY_BUFFERED != 0 {
                    self.buffered_out(len)?
                } else {
                    self.slot_out()
                };
                Ok((data, out))
            });
            let (data, out) = match prepared {
                Ok(p) => p,
                Err(e) => return self.refuse_over_budget(side, &inst, len, &e),
            };
            let result = match self.body_call(&inst, phase, &data, flags, out).await {
                // Only a plugin that asked for the whole body may change the head.
                Ok((batch, lease)) if flags & WEFT_BODY_BUFFERED == 0 && batch.has_head_changes() => {
                    Err(self.refuse_head_change(batch, lease))
                }
                other => other,
            };
            match result {
                Ok((mut batch, lease)) => {
                    if let Some(reply) = batch.take_reply() {
                        self.body.spare = lease.into_spare();
                        let (rparts, rbody) = reply.into_response().into_parts();
                        let _ = self.encode_response(&rparts, WeftPhase::Log);
                        return BufferedBody::Respond(Response::from_parts(rparts, rbody));
                    }
                    let edits = batch.take_body_edits();
                    if batch.has_head_changes() {
                        let encoded = match &mut head {
                            Head::Request(p) => {
                                batch.apply_to_request(p);
                                self.encode_request(p, phase)
                                    .map_err(|e| (e, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
                            }
                            Head::Response(p) => {
                                batch.apply_to_response(p);
                                self.encode_response(&**p, phase)
                                    .map_err(|e| (e, StatusCode::BAD_GATEWAY))
                            }
                        };
                        if let Err((e, status)) = encoded {
                            tracing::warn!(plugin = %inst.name, request_id = self.ident.request_id, "{e}; answering {status}");
                            self.body.spare = lease.into_spare();
                            return BufferedBody::Respond(failure_response(status, "header fields too large\n"));
                        }
                    }
                    if let Some(l) = assemble(edits, &data, lease, &mut cur) {
                        self.body.spare = Some(l);
                    }
                }
                Err(err) => {
                    self.note_failure(&inst, phase, &err);
                    if !inst.fail_open {
                        return BufferedBody::Respond(call_failure_response(&err));
                    }
                    cur = vec![data];
                }
            }
        }
        cur.retain(|b| !b.is_empty());
        BufferedBody::Body(cur)
    }
}

impl Exchange {
    /// A buffered call of `inst` over `len` bytes got no memory: logged, answered 503/502.
    fn refuse_over_budget(&self, side: BodySide, inst: &Instance, len: usize, e: &OverBudget) -> BufferedBody {
        let budget = self.chain.rt.buffered_budget();
        let resp = over_budget_response(side);
        tracing::warn!(
            plugin = %inst.name,
            request_id = self.ident.request_id,
            body_bytes = len,
            want = e.want,
            in_use = budget.used(),
            limit = budget.limit(),
            "buffered {side:?} body call refused: no memory for it ({}); answering {}",
            e.what,
            resp.status().as_u16(),
        );
        BufferedBody::Respond(resp)
    }
}

enum Head<'a> {
    Request(&'a mut http::request::Parts),
    Response(&'a mut http::response::Parts),
}

/// The body futures must be `Send` (they run inside hyper bodies on a multi-threaded runtime).
#[allow(dead_code)]
fn body_futures_are_send(
    x: &mut Exchange,
    req: &mut http::request::Parts,
    resp: &mut http::response::Parts,
    out: &mut Vec<Bytes>,
) {
    fn send<T: Send>(_: T) {}
    send(x.body_chunk(BodySide::Request, Bytes::new(), true, out));
    send(x.request_body_buffered(req, Bytes::new()));
    send(x.response_body_buffered(resp, Bytes::new()));
}
