//! Decoding, validation and application of a plugin's mutation batch.
//!
//! A batch is all-or-nothing: every record is decoded and validated before any is applied, so a
//! plugin that writes one bad header value changes nothing and the failure policy decides what
//! happens to the request.
//!
//! # Copy, then check
//! The buffer is the plugin's memory: a plugin that breaks the rules may still write it while
//! (or after) the host decodes it. So every operand the host checks (header names and values,
//! paths, queries, room names, WebSocket text and close reasons) is first copied into memory the
//! host owns and then checked there, and only that copy is used: what was validated is what is
//! sent. A header name or short value whose copy matches one the thread accepted before is that
//! accepted one (`header_cache`), without a second parse; a whole batch of head changes equal to
//! one the thread decoded from its own copy before is that one's changes (`batch_memo`). Record
//! fields (op, arg, lengths) are read once. Only payload bytes stay ranges of the buffer (a local
//! reply body, body edits, see [`RawBatch`]): a late write can change those bytes, never their
//! length, a header or the framing.

use std::mem::size_of;
use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Response, StatusCode, Uri};

use crate::abi::{WeftMutation, WeftMutationOp, WeftPhase};
use crate::header_cache;
use crate::view::HeaderEdit;

/// Limits a batch must respect. Values chosen to match what common proxies accept per header.
pub const MAX_RECORDS: usize = crate::abi::WEFT_MAX_MUTATION_RECORDS as usize;
pub const MAX_NAME_LEN: usize = crate::abi::WEFT_MAX_HEADER_NAME_LEN as usize;
pub const MAX_VALUE_LEN: usize = crate::abi::WEFT_MAX_HEADER_VALUE_LEN as usize;
pub const MAX_PATH_LEN: usize = crate::abi::WEFT_MAX_PATH_LEN as usize;

/// Whether a plugin may not set, add or remove the header `name` (in any phase, in a local reply
/// too). The proxy owns them:
/// - message framing and hop-by-hop fields (`content-length`, `transfer-encoding`, `connection`,
///   `keep-alive`, `proxy-connection`, `te`, `trailer`, `upgrade`, `expect`,
///   `proxy-authenticate`, `proxy-authorization`): a plugin changing them opens request
///   smuggling, and the proxy strips hop-by-hop fields before the plugins run, so one added by a
///   plugin would reach the wire;
/// - `host`, which routing used and the upstream gets as the client sent it;
/// - the forwarding headers (`x-forwarded-for`, `x-forwarded-host`, `x-forwarded-proto`,
///   `forwarded`, `x-real-ip`), which the proxy sets after the plugins from `trusted_proxies`.
///
/// Checked here, on the host, so in-process (Go, C) and remote (NATS) plugins are held to it
/// alike. Plugins still read these headers in their view.
pub fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "host"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "forwarded"
            | "x-real-ip"
    )
}

/// Every name [`is_reserved`] refuses (tests, fuzz targets, docs).
pub const RESERVED: [&str; 17] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    #[error("mutation buffer length {len} exceeds its capacity {cap}")]
    Length { len: usize, cap: usize },
    #[error("record {index}: truncated")]
    Truncated { index: usize },
    #[error("more than {MAX_RECORDS} mutation records")]
    TooMany,
    #[error("record {index}: unknown operation {op}")]
    UnknownOp { index: usize, op: u32 },
    #[error("record {index}: {op:?} is not allowed in the {phase:?} phase")]
    WrongPhase {
        index: usize,
        op: WeftMutationOp,
        phase: WeftPhase,
    },
    #[error("record {index}: invalid header name {name:?}")]
    HeaderName { index: usize, name: String },
    #[error("record {index}: header {name} is managed by the proxy and cannot be changed by a plugin")]
    ReservedHeader { index: usize, name: String },
    #[error(
        "record {index}: invalid value for header {name} (control characters such as CR, LF or NUL, or longer than {MAX_VALUE_LEN} bytes)"
    )]
    HeaderValue { index: usize, name: String },
    #[error(
        "record {index}: invalid path {path:?} (must start with '/', no '?', '#', spaces or control characters, at most {MAX_PATH_LEN} bytes)"
    )]
    Path { index: usize, path: String },
    #[error("record {index}: invalid query {query:?}")]
    Query { index: usize, query: String },
    #[error("record {index}: status {status} is outside 200..=599")]
    Status { index: usize, status: u32 },
    #[error("record {index}: a local reply header without a preceding local reply")]
    OrphanReplyHeader { index: usize },
    #[error("record {index}: a second local reply in one batch")]
    DuplicateReply { index: usize },
    #[error("record {index}: unexpected operand bytes for {op:?}")]
    Operand { index: usize, op: WeftMutationOp },
    #[error("record {index}: a second BodyReplace/BodyDrop in one batch")]
    DuplicateBodyReplace { index: usize },
    #[error("{op:?} is only allowed when the body phase is buffered (in streamed mode the head has been sent)")]
    StreamedHeadChange { op: &'static str },
    #[error("record {index}: invalid room name {room:?} (1 to 128 bytes of A-Z a-z 0-9 _ - :)")]
    Room { index: usize, room: String },
    #[error("record {index}: a WebSocket text message must be valid UTF-8")]
    Utf8 { index: usize },
    #[error("record {index}: invalid WebSocket close code {code} or reason longer than 123 bytes / not UTF-8")]
    CloseCode { index: usize, code: u32 },
}

/// One WebSocket record of a batch (WebSocket phases). Payloads are copied out of the plugin's
/// buffer once, into `Bytes` that fan out to many connections without further copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOp {
    /// Send to this connection; `binary` false: the payload is valid UTF-8.
    Send {
        binary: bool,
        payload: Bytes,
    },
    /// Close this connection.
    Close {
        code: u16,
        reason: String,
    },
    Join(String),
    Leave(String),
    /// Send to every member of a room.
    Broadcast {
        room: String,
        binary: bool,
        payload: Bytes,
    },
}

/// Whether `code` may be sent in a close frame (RFC 6455 §7.4; 1004-1006 and 1015 never).
pub fn ws_close_code_ok(code: u32) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn ws_room(index: usize, raw: &[u8]) -> Result<String, MutationError> {
    let bad = |raw: &[u8]| MutationError::Room {
        index,
        room: String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned(),
    };
    if raw.is_empty() || raw.len() > crate::abi::WEFT_MAX_WS_ROOM_LEN as usize {
        return Err(bad(raw));
    }
    // Copied, then checked (see the module docs).
    let room = raw.to_vec();
    if !room
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
    {
        return Err(bad(&room));
    }
    String::from_utf8(room).map_err(|e| bad(e.as_bytes()))
}

#[derive(Debug, Clone)]
enum Op {
    SetHeader(HeaderName, HeaderValue),
    AddHeader(HeaderName, HeaderValue),
    RemoveHeader(HeaderName),
    SetPath(Vec<u8>),
    SetQuery(Vec<u8>),
    SetStatus(StatusCode),
}

/// The head changes of a batch, in record order. The first is kept inline: most batches hold
/// one or none. The rest go in a list whose buffer the thread keeps from one applied batch to
/// the next ([`SPARE_OPS`]): a plugin that changes two or more headers per call would otherwise
/// cost a heap allocation on every call. (A batch dropped unapplied, after a refusal or with a
/// local reply, frees its buffer.)
#[derive(Debug, Default)]
struct Ops {
    first: Option<Op>,
    rest: Vec<Op>,
}

/// The most changes a list buffer kept for reuse holds: a thread keeps at most one buffer of
/// this many, and a batch that grew a longer one frees it.
const SPARE_OPS_MAX: usize = 16;

thread_local! {
    /// The buffer of the last applied batch's list (empty, capacity ≤ [`SPARE_OPS_MAX`]), for
    /// the next batch built on this thread.
    static SPARE_OPS: std::cell::Cell<Vec<Op>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Ops {
    #[inline(always)]
    fn push(&mut self, op: Op) {
        if self.first.is_none() {
            self.first = Some(op);
            return;
        }
        if self.rest.capacity() == 0 {
            self.rest = Self::spare();
        }
        self.rest.push(op);
    }

    /// The thread's kept buffer (a thread tearing down its thread-locals gets a new one).
    #[inline(never)]
    fn spare() -> Vec<Op> {
        SPARE_OPS.try_with(std::cell::Cell::take).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Op> {
        self.first.iter().chain(&self.rest)
    }

    /// Hands `f` the changes in record order, then gives the list's buffer to the thread.
    #[inline(always)]
    fn apply(mut self, mut f: impl FnMut(Op)) {
        if let Some(op) = self.first.take() {
            f(op);
        }
        if self.rest.capacity() == 0 {
            return;
        }
        // Reversed and popped rather than drained: a `Drain` costs its own bookkeeping, and a
        // list of one or two is reversed for nothing.
        self.rest.reverse();
        while let Some(op) = self.rest.pop() {
            f(op);
        }
        Self::keep(self.rest);
    }

    /// Keeps an emptied list buffer for the thread's next batch, unless it grew too long.
    #[inline(never)]
    fn keep(rest: Vec<Op>) {
        if rest.capacity() <= SPARE_OPS_MAX {
            // Replaces (and frees) a buffer already kept, if two batches were alive at once.
            let _ = SPARE_OPS.try_with(|spare| spare.set(rest));
        }
    }
}

/// A kept batch's changes, handed out again: the list's buffer is the thread's kept one, as a
/// decoded batch's is.
impl Clone for Ops {
    fn clone(&self) -> Ops {
        let rest = if self.rest.is_empty() {
            Vec::new()
        } else {
            let mut rest = Ops::spare();
            rest.extend(self.rest.iter().cloned());
            rest
        };
        Ops {
            first: self.first.clone(),
            rest,
        }
    }
}

/// A validated batch, ready to apply.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Ops,
    // A local reply and the body and WebSocket records are boxed: the headers phases (the hot
    // path) rarely or never have them, and a batch moves a few times on every call (a call
    // result, a phase result). Inline they made a batch 216 bytes, each move a `memcpy` call;
    // at 128 bytes or less the compiler moves it with a few vector stores.
    reply: Option<Box<LocalReply>>,
    streams: Option<Box<Streams>>,
    skip_body: bool,
}

// A batch the compiler moves inline (see `Batch`): kept so by construction.
const _: () = assert!(std::mem::size_of::<Batch>() <= 128);

/// The records of the body and WebSocket phases.
#[derive(Debug, Default)]
struct Streams {
    body: BodyEdits,
    ws: Vec<WsOp>,
}

/// A local reply as decoded: its headers are copies, its body still a range of the buffer.
#[derive(Debug)]
struct RawReply {
    status: StatusCode,
    headers: HeaderMap,
    body: Range<usize>,
}

/// A validated batch whose local reply body is still a byte range of the buffer it was decoded
/// from (everything else the records carry was copied out and checked at decode time).
/// [`resolve`](Self::resolve) turns it into a [`Batch`], copying those bytes or slicing them out
/// of a shared owner of the buffer.
#[derive(Debug, Default)]
pub struct RawBatch {
    ops: Ops,
    reply: Option<Box<RawReply>>,
    streams: Option<Box<Streams>>,
    skip_body: bool,
}

impl RawBatch {
    /// The body and WebSocket records, boxed at the first one.
    fn streams(&mut self) -> &mut Streams {
        self.streams.get_or_insert_with(Default::default)
    }
}

/// Where the bytes a [`RawBatch`] refers to live.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The buffer itself: referenced bytes are copied.
    Copy(&'a [u8]),
    /// A shared owner of the buffer (an arena lease frozen into `Bytes`, or a message received
    /// from the network): referenced bytes become slices of it, with no copy.
    Shared(&'a Bytes),
}

impl Source<'_> {
    fn bytes(&self, r: Range<usize>) -> Bytes {
        match self {
            Source::Copy(b) => Bytes::copy_from_slice(&b[r]),
            Source::Shared(b) => b.slice(r),
        }
    }
}

impl RawBatch {
    /// How many bytes of the buffer the records refer to (what [`resolve`](Self::resolve)
    /// shares or copies): the local reply body. Body edits are ranges the caller resolves itself
    /// ([`Batch::take_body_edits`]).
    pub fn referenced_len(&self) -> usize {
        self.reply.as_ref().map_or(0, |r| r.body.len())
    }

    /// Turns the ranges into bytes from `src`, which must hold the buffer the batch was decoded
    /// from (the same bytes, at the same offsets).
    pub fn resolve(self, src: Source<'_>) -> Batch {
        let reply = self.reply.map(|r| {
            let RawReply { status, headers, body } = *r;
            Box::new(LocalReply {
                status,
                headers,
                body: if body.is_empty() { Bytes::new() } else { src.bytes(body) },
            })
        });
        Batch {
            ops: self.ops,
            reply,
            streams: self.streams,
            skip_body: self.skip_body,
        }
    }
}

/// The body records of a batch, as byte ranges of the buffer the batch was decoded from (so the
/// caller can hand them on without copying: see `engine/body.rs`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BodyEdits {
    /// `None`: the call's body bytes pass; `Some(None)`: dropped; `Some(Some(r))`: replaced.
    pub replace: Option<Option<Range<usize>>>,
    /// Sent before the body bytes, in order.
    pub prepend: Vec<Range<usize>>,
    /// Sent after the body bytes, in order.
    pub append: Vec<Range<usize>>,
}

impl BodyEdits {
    /// Whether the call's body bytes pass unchanged with nothing around them.
    pub fn is_pass(&self) -> bool {
        self.replace.is_none() && self.prepend.is_empty() && self.append.is_empty()
    }
}

#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl LocalReply {
    pub fn into_response(self) -> Response<Bytes> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

fn op_from_raw(raw: u32) -> Option<WeftMutationOp> {
    use WeftMutationOp::*;
    Some(match raw {
        1 => SetRequestHeader,
        2 => AddRequestHeader,
        3 => RemoveRequestHeader,
        4 => SetPath,
        5 => SetQuery,
        6 => SetResponseHeader,
        7 => AddResponseHeader,
        8 => RemoveResponseHeader,
        9 => SetStatus,
        10 => LocalReply,
        11 => LocalReplyHeader,
        12 => BodyReplace,
        13 => BodyPrepend,
        14 => BodyAppend,
        15 => BodyDrop,
        16 => SkipBody,
        17 => WsSendText,
        18 => WsSendBinary,
        19 => WsClose,
        20 => WsJoinRoom,
        21 => WsLeaveRoom,
        22 => WsBroadcastText,
        23 => WsBroadcastBinary,
        _ => return None,
    })
}

fn allowed(op: WeftMutationOp, phase: WeftPhase) -> bool {
    use WeftMutationOp::*;
    let body_op = matches!(op, BodyReplace | BodyPrepend | BodyAppend | BodyDrop);
    let request_op = matches!(
        op,
        SetRequestHeader | AddRequestHeader | RemoveRequestHeader | SetPath | SetQuery | LocalReply | LocalReplyHeader
    );
    let response_op = matches!(
        op,
        SetResponseHeader | AddResponseHeader | RemoveResponseHeader | SetStatus | LocalReply | LocalReplyHeader
    );
    let ws_op = matches!(
        op,
        WsSendText | WsSendBinary | WsClose | WsJoinRoom | WsLeaveRoom | WsBroadcastText | WsBroadcastBinary
    );
    match phase {
        WeftPhase::WebSocketOpen | WeftPhase::WebSocketMessage | WeftPhase::WebSocketClose => ws_op,
        WeftPhase::RequestHeaders => request_op || op == SkipBody,
        WeftPhase::ResponseHeaders => response_op || op == SkipBody,
        // Head changes in body phases are accepted here and refused by the body engine unless
        // the phase is buffered (then the head has not been sent yet).
        WeftPhase::RequestBody => request_op || body_op,
        WeftPhase::ResponseBody => response_op || body_op,
        _ => false,
    }
}

fn header_name(index: usize, raw: &[u8]) -> Result<HeaderName, MutationError> {
    if raw.is_empty() || raw.len() > MAX_NAME_LEN {
        return Err(MutationError::HeaderName {
            index,
            name: lossy_name(raw),
        });
    }
    // Copied (onto the stack), then checked: see the module docs.
    let (mut short, mut long) = ([0u8; SHORT], std::mem::MaybeUninit::<[u8; MAX_NAME_LEN]>::uninit());
    checked_name(index, stack_copy(raw, &mut short, &mut long))
}

/// The length of the names and values copied into a small stack buffer.
const SHORT: usize = 32;

/// `raw` (at most `N` bytes) copied onto the stack, into `short` by a few moves when it has up to
/// [`SHORT`] bytes (all but the rarest names and values; `short::copy`), else into `long`,
/// zeroed first: not a `memcpy` call after zeroing all `N` for every operand.
#[inline(always)]
fn stack_copy<'a, const N: usize>(
    raw: &[u8],
    short: &'a mut [u8; SHORT],
    long: &'a mut std::mem::MaybeUninit<[u8; N]>,
) -> &'a [u8] {
    let n = raw.len();
    if n <= SHORT {
        crate::short::copy(&mut short[..n], raw);
        &short[..n]
    } else {
        let long = long.write([0u8; N]);
        long[..n].copy_from_slice(raw);
        &long[..n]
    }
}

fn lossy_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned()
}

/// A name, already copied into host memory: the thread's accepted one with these bytes, or
/// parsed and checked.
#[inline(always)]
fn checked_name(index: usize, copy: &[u8]) -> Result<HeaderName, MutationError> {
    if let Some(name) = header_cache::name(copy) {
        return Ok(name);
    }
    let name = HeaderName::from_bytes(copy).map_err(|_| MutationError::HeaderName {
        index,
        name: lossy_name(copy),
    })?;
    if is_reserved(&name) {
        return Err(MutationError::ReservedHeader {
            index,
            name: name.as_str().to_owned(),
        });
    }
    // Kept only as written (lowercase): a name the plugin writes in capitals is parsed each time
    // rather than filling the cache with copies of its lowercase form.
    if name.as_str().as_bytes() == copy {
        header_cache::keep_name(&name);
    }
    Ok(name)
}

/// A short value, already copied into host memory: the thread's accepted one with these bytes, or
/// checked (and offered to the cache).
#[inline(always)]
fn checked_value(copy: &[u8]) -> Option<HeaderValue> {
    if let Some(value) = header_cache::value(copy) {
        return Some(value);
    }
    let value = HeaderValue::from_bytes(copy).ok()?;
    header_cache::offer_value(&value);
    Some(value)
}

/// A header value: copied out of the buffer, then checked (`HeaderValue` refuses every control
/// character but HTAB, so CR, LF and NUL are out). The value sent is that copy.
fn header_value(index: usize, name: &HeaderName, raw: &[u8]) -> Result<HeaderValue, MutationError> {
    let bad = || MutationError::HeaderValue {
        index,
        name: name.as_str().to_owned(),
    };
    if raw.len() > MAX_VALUE_LEN {
        return Err(bad());
    }
    if raw.len() <= header_cache::MAX_VALUE {
        // Copied (onto the stack), then compared: see the module docs.
        let (mut short, mut long) = (
            [0u8; SHORT],
            std::mem::MaybeUninit::<[u8; header_cache::MAX_VALUE]>::uninit(),
        );
        return checked_value(stack_copy(raw, &mut short, &mut long)).ok_or_else(bad);
    }
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(raw)).map_err(|_| bad())
}

fn status(index: usize, raw: u32) -> Result<StatusCode, MutationError> {
    if !(200..=599).contains(&raw) {
        return Err(MutationError::Status { index, status: raw });
    }
    StatusCode::from_u16(raw as u16).map_err(|_| MutationError::Status { index, status: raw })
}

/// Characters allowed in a path or query: printable ASCII without space, '#', and (for paths)
/// '?'. Anything else must arrive percent-encoded.
fn uri_bytes_ok(raw: &[u8], allow_question: bool) -> bool {
    raw.iter()
        .all(|&b| (0x21..0x7f).contains(&b) && b != b'#' && (allow_question || b != b'?'))
}

/// Decodes and validates `buf[..len]` written by a plugin during `phase`, copying the bytes its
/// records refer to (see [`decode_raw`] for the form that need not copy).
pub fn decode(buf: &[u8], len: usize, phase: WeftPhase) -> Result<Batch, MutationError> {
    decode_raw(buf, len, phase).map(|raw| raw.resolve(Source::Copy(buf)))
}

/// Decodes and validates `buf[..len]` written by a plugin during `phase`. Every record is
/// checked here (a batch is all or nothing), on copies of its operands (module docs); a local
/// reply body and body edits stay ranges of `buf` (until [`RawBatch::resolve`], or for the
/// caller to slice). A batch of head changes equal, byte for byte, to one the thread decoded
/// from its own copy before is that one's changes ([`crate::batch_memo`]).
pub fn decode_raw(buf: &[u8], len: usize, phase: WeftPhase) -> Result<RawBatch, MutationError> {
    if len > buf.len() {
        return Err(MutationError::Length { len, cap: buf.len() });
    }
    let data = &buf[..len];
    // Only the headers phases' batches are kept: a body or WebSocket phase's records refer to
    // the buffer, and looking those batches up would be work for nothing.
    let headers_phase = matches!(phase, WeftPhase::RequestHeaders | WeftPhase::ResponseHeaders);
    if headers_phase
        && let Some(kept) = KEPT
            .try_with(|m| m.try_borrow().ok()?.get(phase as u32, data))
            .ok()
            .flatten()
    {
        return Ok(kept.into_raw());
    }
    let batch = decode_records(data, phase)?;
    if headers_phase {
        keep_if_repeated(data, phase);
    }
    Ok(batch)
}

/// A batch's head changes as [`crate::batch_memo`] keeps them (a batch with a local reply or
/// body or WebSocket records is not kept: those refer to the buffer).
#[derive(Clone)]
struct Kept {
    ops: Ops,
    skip_body: bool,
}

impl Kept {
    fn of(batch: RawBatch) -> Option<Kept> {
        (batch.reply.is_none() && batch.streams.is_none()).then_some(Kept {
            ops: batch.ops,
            skip_body: batch.skip_body,
        })
    }

    fn into_raw(self) -> RawBatch {
        RawBatch {
            ops: self.ops,
            reply: None,
            streams: None,
            skip_body: self.skip_body,
        }
    }
}

thread_local! {
    static KEPT: std::cell::RefCell<crate::batch_memo::Memo<Kept>> =
        const { std::cell::RefCell::new(crate::batch_memo::Memo::new()) };
}

/// Notes a decoded batch that was not kept: kept once it repeats (decoded again, from the
/// memo's own copy).
#[inline(never)]
fn keep_if_repeated(data: &[u8], phase: WeftPhase) {
    let _ = KEPT.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.missed(phase as u32, data, |copy| Kept::of(decode_records(copy, phase).ok()?));
        }
    });
}

/// [`decode_raw`]'s records, one by one.
fn decode_records(data: &[u8], phase: WeftPhase) -> Result<RawBatch, MutationError> {
    let mut batch = RawBatch::default();
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < data.len() {
        if index >= MAX_RECORDS {
            return Err(MutationError::TooMany);
        }
        let rec = Record::read(data, pos, index)?;
        if !allowed(rec.op, phase) {
            return Err(MutationError::WrongPhase {
                index,
                op: rec.op,
                phase,
            });
        }
        use WeftMutationOp as M;
        match rec.op {
            M::SetRequestHeader | M::SetResponseHeader => batch.ops.push(rec.header(Op::SetHeader)?),
            M::AddRequestHeader | M::AddResponseHeader => batch.ops.push(rec.header(Op::AddHeader)?),
            M::RemoveRequestHeader | M::RemoveResponseHeader => {
                rec.no_b()?;
                batch.ops.push(Op::RemoveHeader(header_name(index, rec.a)?));
            }
            M::SetPath | M::SetQuery | M::SetStatus => batch.ops.push(rec.head_op()?),
            M::LocalReply | M::LocalReplyHeader => rec.reply(&mut batch.reply)?,
            M::SkipBody => {
                rec.no_operands()?;
                batch.skip_body = true;
            }
            M::BodyReplace | M::BodyDrop | M::BodyPrepend | M::BodyAppend => rec.body(&mut batch.streams().body)?,
            M::WsSendText
            | M::WsSendBinary
            | M::WsClose
            | M::WsJoinRoom
            | M::WsLeaveRoom
            | M::WsBroadcastText
            | M::WsBroadcastBinary => batch.streams().ws.push(rec.ws()?),
        }
        pos = rec.end.next_multiple_of(4).min(data.len());
        index += 1;
    }
    Ok(batch)
}

/// One record as framed in the buffer: its fields read once, its operands borrowed (each handler
/// copies what it checks).
struct Record<'a> {
    index: usize,
    op: WeftMutationOp,
    arg: u32,
    a: &'a [u8],
    b: &'a [u8],
    /// Where `a` lies in the buffer (a payload kept as a range).
    a_range: Range<usize>,
    /// The end of `b`: the next record starts at the next multiple of 4.
    end: usize,
}

impl<'a> Record<'a> {
    /// Reads the record at `pos` of `data`: the fixed fields, then both operands, which must lie
    /// within `data`.
    #[inline(always)]
    fn read(data: &'a [u8], pos: usize, index: usize) -> Result<Record<'a>, MutationError> {
        let rec_end = pos.checked_add(size_of::<WeftMutation>()).filter(|&e| e <= data.len());
        let Some(rec_end) = rec_end else {
            return Err(MutationError::Truncated { index });
        };
        // SAFETY: 16 bytes in bounds; WeftMutation is four u32s, any bit pattern is valid.
        let rec: WeftMutation = unsafe { std::ptr::read_unaligned(data.as_ptr().add(pos).cast()) };
        let a_end = rec_end.checked_add(rec.a_len as usize);
        let b_end = a_end
            .and_then(|a| a.checked_add(rec.b_len as usize))
            .filter(|&e| e <= data.len());
        let (Some(a_end), Some(b_end)) = (a_end, b_end) else {
            return Err(MutationError::Truncated { index });
        };
        let op = op_from_raw(rec.op).ok_or(MutationError::UnknownOp { index, op: rec.op })?;
        Ok(Record {
            index,
            op,
            arg: rec.arg,
            a: &data[rec_end..a_end],
            b: &data[a_end..b_end],
            a_range: rec_end..a_end,
            end: b_end,
        })
    }

    fn no_b(&self) -> Result<(), MutationError> {
        if self.b.is_empty() { Ok(()) } else { Err(self.operand()) }
    }

    fn no_operands(&self) -> Result<(), MutationError> {
        if self.a.is_empty() && self.b.is_empty() {
            Ok(())
        } else {
            Err(self.operand())
        }
    }

    fn operand(&self) -> MutationError {
        MutationError::Operand {
            index: self.index,
            op: self.op,
        }
    }

    /// A header set or added (the hot path), made by `op` of its checked name and value.
    #[inline(always)]
    fn header(&self, op: fn(HeaderName, HeaderValue) -> Op) -> Result<Op, MutationError> {
        let n = header_name(self.index, self.a)?;
        let v = header_value(self.index, &n, self.b)?;
        Ok(op(n, v))
    }

    /// A new path, query or status.
    fn head_op(&self) -> Result<Op, MutationError> {
        let index = self.index;
        let lossy = |raw: &[u8]| String::from_utf8_lossy(&raw[..raw.len().min(256)]).into_owned();
        Ok(match self.op {
            WeftMutationOp::SetPath => {
                self.no_b()?;
                let path = (self.a.len() <= MAX_PATH_LEN).then(|| self.a.to_vec());
                let Some(path) = path.filter(|p| p.first() == Some(&b'/') && uri_bytes_ok(p, false)) else {
                    return Err(MutationError::Path {
                        index,
                        path: lossy(self.a),
                    });
                };
                Op::SetPath(path)
            }
            WeftMutationOp::SetQuery => {
                self.no_b()?;
                let query = (self.a.len() <= MAX_PATH_LEN).then(|| self.a.to_vec());
                let Some(query) = query.filter(|q| uri_bytes_ok(q, true)) else {
                    return Err(MutationError::Query {
                        index,
                        query: lossy(self.a),
                    });
                };
                Op::SetQuery(query)
            }
            _ => {
                self.no_operands()?;
                Op::SetStatus(status(index, self.arg)?)
            }
        })
    }

    /// A local reply (its status; the body a range of the buffer) or one of its headers, which
    /// must follow it.
    fn reply(&self, reply: &mut Option<Box<RawReply>>) -> Result<(), MutationError> {
        let index = self.index;
        if self.op == WeftMutationOp::LocalReply {
            self.no_b()?;
            if reply.is_some() {
                return Err(MutationError::DuplicateReply { index });
            }
            *reply = Some(Box::new(RawReply {
                status: status(index, self.arg)?,
                headers: HeaderMap::new(),
                body: self.a_range.clone(),
            }));
            return Ok(());
        }
        let n = header_name(index, self.a)?;
        let v = header_value(index, &n, self.b)?;
        match reply.as_mut() {
            Some(r) => {
                r.headers.append(n, v);
                Ok(())
            }
            None => Err(MutationError::OrphanReplyHeader { index }),
        }
    }

    /// A body edit: the bytes stay a range of the buffer.
    fn body(&self, body: &mut BodyEdits) -> Result<(), MutationError> {
        use WeftMutationOp as M;
        self.no_b()?;
        let range = self.a_range.clone();
        match self.op {
            M::BodyReplace | M::BodyDrop => {
                if self.op == M::BodyDrop && !self.a.is_empty() {
                    return Err(self.operand());
                }
                if body.replace.is_some() {
                    return Err(MutationError::DuplicateBodyReplace { index: self.index });
                }
                body.replace = Some((self.op == M::BodyReplace).then_some(range));
            }
            M::BodyPrepend => body.prepend.push(range),
            _ => body.append.push(range),
        }
        Ok(())
    }

    /// A WebSocket send, close, room change or broadcast.
    fn ws(&self) -> Result<WsOp, MutationError> {
        use WeftMutationOp as M;
        let index = self.index;
        // A text payload: copied, then checked.
        let payload = |raw: &[u8], binary: bool| {
            let payload = Bytes::copy_from_slice(raw);
            if !binary && std::str::from_utf8(&payload).is_err() {
                return Err(MutationError::Utf8 { index });
            }
            Ok(payload)
        };
        Ok(match self.op {
            M::WsSendText | M::WsSendBinary => {
                self.no_b()?;
                let binary = self.op == M::WsSendBinary;
                WsOp::Send {
                    binary,
                    payload: payload(self.a, binary)?,
                }
            }
            M::WsClose => {
                self.no_b()?;
                let reason = (self.a.len() <= 123)
                    .then(|| self.a.to_vec())
                    .and_then(|r| String::from_utf8(r).ok());
                let (Some(reason), true) = (reason, ws_close_code_ok(self.arg)) else {
                    return Err(MutationError::CloseCode { index, code: self.arg });
                };
                WsOp::Close {
                    code: self.arg as u16,
                    reason,
                }
            }
            M::WsJoinRoom | M::WsLeaveRoom => {
                self.no_b()?;
                let room = ws_room(index, self.a)?;
                if self.op == M::WsJoinRoom {
                    WsOp::Join(room)
                } else {
                    WsOp::Leave(room)
                }
            }
            _ => {
                let room = ws_room(index, self.a)?;
                let binary = self.op == M::WsBroadcastBinary;
                WsOp::Broadcast {
                    room,
                    binary,
                    payload: payload(self.b, binary)?,
                }
            }
        })
    }
}

/// Whether [`Batch::apply_to_request`] gave the request a new URI (a path or query record) or
/// changed its headers at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriChange {
    Unchanged,
    Changed,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.reply.is_none()
    }

    /// Takes the local reply out, if the batch has one.
    pub fn take_reply(&mut self) -> Option<LocalReply> {
        self.reply.take().map(|r| *r)
    }

    /// Whether the batch holds a `SkipBody` record (clears it).
    pub fn take_skip_body(&mut self) -> bool {
        std::mem::take(&mut self.skip_body)
    }

    /// Takes the WebSocket records out, in record order.
    pub fn take_ws(&mut self) -> Vec<WsOp> {
        self.streams
            .as_mut()
            .map(|s| std::mem::take(&mut s.ws))
            .unwrap_or_default()
    }

    /// Takes the body records out.
    pub fn take_body_edits(&mut self) -> BodyEdits {
        self.streams
            .as_mut()
            .map(|s| std::mem::take(&mut s.body))
            .unwrap_or_default()
    }

    /// Whether the batch changes the head (headers, path, query, status) or replies locally.
    pub fn has_head_changes(&self) -> bool {
        !self.ops.is_empty() || self.reply.is_some()
    }

    /// The head changes as edits of a view's header section, in record order (what
    /// [`apply_to_request`](Self::apply_to_request) or [`apply_to_response`](Self::apply_to_response)
    /// will do to the head).
    pub fn view_edits(&self) -> impl Iterator<Item = HeaderEdit<'_>> {
        self.ops.iter().map(|op| match op {
            Op::SetHeader(n, v) => HeaderEdit::Set(n.as_str().as_bytes(), v.as_bytes()),
            Op::AddHeader(n, v) => HeaderEdit::Add(n.as_str().as_bytes(), v.as_bytes()),
            Op::RemoveHeader(n) => HeaderEdit::Remove(n.as_str().as_bytes()),
            Op::SetStatus(s) => HeaderEdit::Status(s.as_u16()),
            Op::SetPath(_) | Op::SetQuery(_) => HeaderEdit::Other,
        })
    }

    fn apply_headers(op: Op, headers: &mut HeaderMap) -> Option<Op> {
        match op {
            Op::SetHeader(n, v) => {
                headers.insert(n, v);
            }
            Op::AddHeader(n, v) => {
                headers.append(n, v);
            }
            Op::RemoveHeader(n) => {
                headers.remove(n);
            }
            other => return Some(other),
        }
        None
    }

    /// Applies header, path and query changes to a request head.
    pub fn apply_to_request(self, parts: &mut http::request::Parts) -> UriChange {
        let mut path: Option<Vec<u8>> = None;
        let mut query: Option<Vec<u8>> = None;
        self.ops.apply(|op| match Self::apply_headers(op, &mut parts.headers) {
            Some(Op::SetPath(p)) => path = Some(p),
            Some(Op::SetQuery(q)) => query = Some(q),
            _ => {}
        });
        if path.is_none() && query.is_none() {
            return UriChange::Unchanged;
        }
        let old = parts.uri.clone();
        let mut pq = path.unwrap_or_else(|| old.path().as_bytes().to_vec());
        match query {
            Some(q) if !q.is_empty() => {
                pq.push(b'?');
                pq.extend_from_slice(&q);
            }
            Some(_) => {}
            None => {
                if let Some(q) = old.query() {
                    pq.push(b'?');
                    pq.extend_from_slice(q.as_bytes());
                }
            }
        }
        // Validated above: only visible ASCII, path starts with '/'.
        let Ok(pq) = PathAndQuery::from_maybe_shared(Bytes::from(pq)) else {
            return UriChange::Unchanged;
        };
        let mut up = old.into_parts();
        up.path_and_query = Some(pq);
        match Uri::from_parts(up) {
            Ok(uri) => {
                parts.uri = uri;
                UriChange::Changed
            }
            Err(_) => UriChange::Unchanged,
        }
    }

    /// Applies header and status changes to a response head.
    pub fn apply_to_response(self, parts: &mut http::response::Parts) {
        self.ops.apply(|op| {
            if let Some(Op::SetStatus(s)) = Self::apply_headers(op, &mut parts.headers) {
                parts.status = s;
            }
        });
    }

    /// Hands `f` the batch's changes to a response head in record order, for a head kept in
    /// another form than a map (what [`apply_to_response`](Self::apply_to_response) does to a
    /// map, `f` does to it). A path or query change, which a response's batch never holds (the
    /// decoder refuses them outside the request phases), is skipped.
    pub fn apply_with(self, mut f: impl FnMut(ResponseChange)) {
        self.ops.apply(|op| match op {
            Op::SetHeader(n, v) => f(ResponseChange::Set(n, v)),
            Op::AddHeader(n, v) => f(ResponseChange::Add(n, v)),
            Op::RemoveHeader(n) => f(ResponseChange::Remove(n)),
            Op::SetStatus(s) => f(ResponseChange::Status(s)),
            Op::SetPath(_) | Op::SetQuery(_) => {}
        });
    }
}

/// One change a batch makes to a response head ([`Batch::apply_with`]): the names and values
/// are checked ones (never a reserved name, never a value with a line break).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseChange {
    /// Every field of the name replaced by this one (`HeaderMap::insert`).
    Set(HeaderName, HeaderValue),
    /// A field added after the others (`HeaderMap::append`).
    Add(HeaderName, HeaderValue),
    /// Every field of the name removed.
    Remove(HeaderName),
    Status(StatusCode),
}

/// Writes mutation records the way a plugin does (tests, benches, fuzz seeds).
pub fn encode_record(out: &mut Vec<u8>, op: u32, arg: u32, a: &[u8], b: &[u8]) {
    let rec = WeftMutation {
        op,
        arg,
        a_len: a.len() as u32,
        b_len: b.len() as u32,
    };
    for f in [rec.op, rec.arg, rec.a_len, rec.b_len] {
        out.extend_from_slice(&f.to_ne_bytes());
    }
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WeftMutationOp as M;

    fn req() -> http::request::Parts {
        http::Request::builder()
            .uri("/a?x=1")
            .header("keep", "1")
            .header("drop", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn rec(out: &mut Vec<u8>, op: M, arg: u32, a: &[u8], b: &[u8]) {
        encode_record(out, op as u32, arg, a, b);
    }

    /// A batch's list of changes past the first reuses the buffer the thread kept from the
    /// last applied batch (changes applied in record order), a batch dropped unapplied keeps
    /// nothing, and a buffer grown past [`SPARE_OPS_MAX`] is not kept: what a thread holds stays
    /// bounded whatever a plugin writes.
    #[test]
    fn the_list_buffer_is_kept_per_thread_and_bounded() {
        let spare = || {
            SPARE_OPS.with(|s| {
                let v = s.take();
                let cap = v.capacity();
                s.set(v);
                cap
            })
        };
        let batch = |n: usize| {
            let mut b = Vec::new();
            for i in 0..n {
                rec(&mut b, M::SetRequestHeader, 0, format!("x-h{i}").as_bytes(), b"v");
            }
            decode(&b, b.len(), WeftPhase::RequestHeaders).unwrap()
        };
        let apply = |b: Batch| b.apply_to_request(&mut req());
        drop(batch(3));
        assert_eq!(spare(), 0, "a batch dropped unapplied keeps nothing");
        apply(batch(3));
        let kept = spare();
        assert!((2..=SPARE_OPS_MAX).contains(&kept), "kept {kept}");
        let b = batch(3);
        assert_eq!(spare(), 0, "the next batch took the kept buffer");
        let mut parts = req();
        b.apply_to_request(&mut parts);
        assert_eq!(spare(), kept, "given back once applied");
        for i in 0..3 {
            assert_eq!(parts.headers[format!("x-h{i}").as_str()], "v");
        }
        apply(batch(SPARE_OPS_MAX + 8));
        assert_eq!(spare(), 0, "a longer list's buffer is freed, not kept");
        apply(batch(2));
        assert!(spare() > 0);
    }

    /// The header cache never lets through what the checks refuse: a reserved or invalid name,
    /// or a bad value, is refused every time, a name or value differing from a kept one in
    /// case, length or one byte is checked on its own, and more names than the cache holds still
    /// decode right.
    #[test]
    fn header_cache_accepts_only_what_the_checks_accept() {
        let decode_name = |name: &[u8]| {
            let mut b = Vec::new();
            rec(&mut b, M::SetRequestHeader, 0, name, b"v");
            decode(&b, b.len(), WeftPhase::RequestHeaders).map(|batch| {
                match batch.ops.iter().collect::<Vec<_>>().as_slice() {
                    [Op::SetHeader(n, _)] => n.as_str().to_owned(),
                    _ => panic!("one set-header op expected"),
                }
            })
        };
        for _ in 0..3 {
            assert_eq!(decode_name(b"x-stamp").unwrap(), "x-stamp");
            assert!(header_cache::name(b"x-stamp").is_some(), "an accepted name is cached");
            assert!(matches!(
                decode_name(b"connection"),
                Err(MutationError::ReservedHeader { .. })
            ));
            assert!(
                header_cache::name(b"connection").is_none(),
                "a refused name is not cached"
            );
            assert!(matches!(
                decode_name(b"x-stamp\n"),
                Err(MutationError::HeaderName { .. })
            ));
            assert!(matches!(decode_name(b"x-stam "), Err(MutationError::HeaderName { .. })));
            assert_eq!(decode_name(b"x-stam").unwrap(), "x-stam");
            assert_eq!(decode_name(b"X-Stamp").unwrap(), "x-stamp");
        }
        // A name written in capitals is not kept (its lowercase form would be kept once per
        // call), so it does not push the others out.
        for _ in 0..2 * header_cache::ENTRIES {
            assert_eq!(decode_name(b"X-Upper").unwrap(), "x-upper");
        }
        assert!(header_cache::name(b"x-upper").is_none());
        assert!(header_cache::name(b"x-stamp").is_some());
        // Values likewise: a value set over and over is kept, and bytes that differ from it
        // are checked on their own.
        let decode_value = |value: &[u8]| {
            let mut b = Vec::new();
            rec(&mut b, M::SetRequestHeader, 0, b"x-v", value);
            decode(&b, b.len(), WeftPhase::RequestHeaders).map(|batch| {
                match batch.ops.iter().collect::<Vec<_>>().as_slice() {
                    [Op::SetHeader(_, v)] => v.as_bytes().to_vec(),
                    _ => panic!("one set-header op expected"),
                }
            })
        };
        for _ in 0..3 {
            assert_eq!(decode_value(b"same").unwrap(), b"same");
            assert!(matches!(
                decode_value(b"same\r\nx: y"),
                Err(MutationError::HeaderValue { .. })
            ));
            assert!(matches!(
                decode_value(b"same\0"),
                Err(MutationError::HeaderValue { .. })
            ));
            assert!(matches!(decode_value(b"sam\n"), Err(MutationError::HeaderValue { .. })));
            assert_eq!(decode_value(b"sam").unwrap(), b"sam");
        }
        assert!(header_cache::value(b"same").is_some(), "a repeated value is kept");
        let names: Vec<String> = (0..3 * header_cache::ENTRIES).map(|i| format!("x-n{i}")).collect();
        for round in 0..2 {
            for n in &names {
                assert_eq!(decode_name(n.as_bytes()).unwrap(), *n, "round {round}");
            }
        }
        assert!(header_cache::name(b"x-n0").is_none(), "the oldest names were replaced");
        let last = names.last().unwrap();
        assert!(header_cache::name(last.as_bytes()).is_some());
    }

    #[test]
    fn request_batch_applies_in_order() {
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"X-New", b"v1");
        rec(&mut b, M::AddRequestHeader, 0, b"x-new", b"v2");
        rec(&mut b, M::RemoveRequestHeader, 0, b"drop", b"");
        rec(&mut b, M::SetPath, 0, b"/rewritten", b"");
        let batch = decode(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        let mut p = req();
        batch.apply_to_request(&mut p);
        let vals: Vec<_> = p.headers.get_all("x-new").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vals, ["v1", "v2"]);
        assert!(p.headers.get("drop").is_none());
        assert_eq!(p.headers["keep"], "1");
        assert_eq!(p.uri, "/rewritten?x=1");
        // Order-sensitive changes past the first (in the list, the second time in the buffer the
        // first batch left the thread): applied in record order, or `x-new` would end up absent.
        for _ in 0..2 {
            let mut b = Vec::new();
            rec(&mut b, M::SetRequestHeader, 0, b"keep", b"2");
            rec(&mut b, M::RemoveRequestHeader, 0, b"x-new", b"");
            rec(&mut b, M::SetRequestHeader, 0, b"x-new", b"v3");
            rec(&mut b, M::AddRequestHeader, 0, b"x-new", b"v4");
            decode(&b, b.len(), WeftPhase::RequestHeaders)
                .unwrap()
                .apply_to_request(&mut p);
            let vals: Vec<_> = p.headers.get_all("x-new").iter().map(|v| v.to_str().unwrap()).collect();
            assert_eq!(vals, ["v3", "v4"]);
        }
    }

    #[test]
    fn query_set_and_cleared() {
        let mut b = Vec::new();
        rec(&mut b, M::SetQuery, 0, b"y=2&z", b"");
        let mut p = req();
        decode(&b, b.len(), WeftPhase::RequestHeaders)
            .unwrap()
            .apply_to_request(&mut p);
        assert_eq!(p.uri, "/a?y=2&z");
        let mut b = Vec::new();
        rec(&mut b, M::SetQuery, 0, b"", b"");
        decode(&b, b.len(), WeftPhase::RequestHeaders)
            .unwrap()
            .apply_to_request(&mut p);
        assert_eq!(p.uri, "/a");
    }

    #[test]
    fn invalid_batches_are_rejected_whole() {
        let cases: Vec<(Vec<u8>, WeftPhase, &str)> = vec![
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"x", b"a\r\nb");
                    b
                },
                WeftPhase::RequestHeaders,
                "CR/LF value",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"x", b"a\0b");
                    b
                },
                WeftPhase::RequestHeaders,
                "NUL value",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"bad name", b"v");
                    b
                },
                WeftPhase::RequestHeaders,
                "space in name",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"", b"v");
                    b
                },
                WeftPhase::RequestHeaders,
                "empty name",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"content-length", b"5");
                    b
                },
                WeftPhase::RequestHeaders,
                "framing header",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::RemoveRequestHeader, 0, b"Transfer-Encoding", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "framing header remove",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetPath, 0, b"no-slash", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "relative path",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetPath, 0, b"/a b", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "space in path",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetPath, 0, b"/a?q", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "query in path",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetStatus, 99, b"", b"");
                    b
                },
                WeftPhase::ResponseHeaders,
                "status too low",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetStatus, 600, b"", b"");
                    b
                },
                WeftPhase::ResponseHeaders,
                "status too high",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::LocalReply, 1000, b"", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "reply status",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::LocalReplyHeader, 0, b"a", b"b");
                    b
                },
                WeftPhase::RequestHeaders,
                "orphan reply header",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetStatus, 200, b"", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "status in request phase",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"a", b"b");
                    b
                },
                WeftPhase::ResponseHeaders,
                "request op in response phase",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetResponseHeader, 0, b"a", b"b");
                    b
                },
                WeftPhase::Log,
                "anything in log",
            ),
            (
                {
                    let mut b = Vec::new();
                    encode_record(&mut b, 77, 0, b"", b"");
                    b
                },
                WeftPhase::RequestHeaders,
                "unknown op",
            ),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"a", b"b");
                    b.truncate(b.len() - 3);
                    b
                },
                WeftPhase::RequestHeaders,
                "truncated",
            ),
            (vec![1, 2, 3], WeftPhase::RequestHeaders, "short record"),
            (
                {
                    let mut b = Vec::new();
                    rec(&mut b, M::SetRequestHeader, 0, b"a", &[b'v'; MAX_VALUE_LEN + 1]);
                    b
                },
                WeftPhase::RequestHeaders,
                "value too long",
            ),
        ];
        for (buf, phase, what) in cases {
            // A valid record first: it must not be applied when a later one is bad.
            let mut full = Vec::new();
            let good = if phase == WeftPhase::ResponseHeaders {
                M::SetResponseHeader
            } else {
                M::SetRequestHeader
            };
            if phase != WeftPhase::Log {
                rec(&mut full, good, 0, b"x-ok", b"1");
            }
            full.extend_from_slice(&buf);
            assert!(decode(&full, full.len(), phase).is_err(), "{what} was accepted");
        }
    }

    /// Every reserved header, in any spelling, with every header op of both directions and in a
    /// local reply: the batch is refused naming the header. Forwarding and hop-by-hop headers
    /// were once accepted (`host`, `x-forwarded-for`, `keep-alive`, `expect`, ...).
    #[test]
    fn reserved_headers_are_refused_for_every_op() {
        let ops: [(M, WeftPhase, bool); 7] = [
            (M::SetRequestHeader, WeftPhase::RequestHeaders, true),
            (M::AddRequestHeader, WeftPhase::RequestHeaders, true),
            (M::RemoveRequestHeader, WeftPhase::RequestHeaders, false),
            (M::SetResponseHeader, WeftPhase::ResponseHeaders, true),
            (M::AddResponseHeader, WeftPhase::ResponseHeaders, true),
            (M::RemoveResponseHeader, WeftPhase::ResponseHeaders, false),
            (M::LocalReplyHeader, WeftPhase::RequestHeaders, true),
        ];
        for name in RESERVED {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
            for spelling in [name.to_owned(), name.to_ascii_uppercase()] {
                for (op, phase, value) in ops {
                    let mut b = Vec::new();
                    if op == M::LocalReplyHeader {
                        rec(&mut b, M::LocalReply, 403, b"", b"");
                    }
                    rec(&mut b, op, 0, spelling.as_bytes(), if value { b"v" } else { b"" });
                    let err = decode(&b, b.len(), phase).unwrap_err();
                    assert!(
                        matches!(&err, MutationError::ReservedHeader { name: n, .. } if n == name),
                        "{op:?} {spelling}: {err:?}"
                    );
                }
            }
        }
        for free in ["x-forwarded-by", "authorization", "cookie", "x-request-id", "via"] {
            assert!(!is_reserved(&HeaderName::from_static(free)), "{free}");
        }
    }

    #[test]
    fn length_past_capacity_is_rejected() {
        let b = vec![0u8; 16];
        assert!(matches!(
            decode(&b, 17, WeftPhase::RequestHeaders),
            Err(MutationError::Length { .. })
        ));
    }

    #[test]
    fn reply_bodies_resolve_to_slices_and_header_values_are_copies() {
        let long = vec![b'x'; 2000];
        let mut b = Vec::new();
        rec(&mut b, M::LocalReply, 403, b"denied", b"");
        rec(&mut b, M::LocalReplyHeader, 0, b"x-why", &long);
        let shared = Bytes::from(b.clone());
        let raw = decode_raw(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        assert_eq!(raw.referenced_len(), 6, "only the reply body refers to the buffer");
        let reply = raw.resolve(Source::Shared(&shared)).take_reply().unwrap();
        assert_eq!((reply.status.as_u16(), &reply.body[..]), (403, &b"denied"[..]));
        assert!(shared.as_ptr_range().contains(&reply.body.as_ptr()));
        assert_eq!(reply.headers["x-why"].as_bytes(), &long[..]);
        assert!(
            !shared
                .as_ptr_range()
                .contains(&reply.headers["x-why"].as_bytes().as_ptr()),
            "a header value is never a slice of the plugin's buffer"
        );
        // The same batch copied: equal bytes, other memory.
        let reply = decode(&b, b.len(), WeftPhase::RequestHeaders)
            .unwrap()
            .take_reply()
            .unwrap();
        assert_eq!(&reply.body[..], b"denied");
        assert!(!shared.as_ptr_range().contains(&reply.body.as_ptr()));

        // Header values and no reply: nothing refers to the buffer.
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-short", b"s");
        rec(&mut b, M::AddRequestHeader, 0, b"x-long", &long);
        assert_eq!(
            decode_raw(&b, b.len(), WeftPhase::RequestHeaders)
                .unwrap()
                .referenced_len(),
            0
        );
        // A long value is validated like a short one.
        for (byte, ok) in [(b'\n', false), (b'\r', false), (0, false), (0x7f, false), (b'\t', true)] {
            let mut bad = long.clone();
            bad[1000] = byte;
            let mut b = Vec::new();
            rec(&mut b, M::SetRequestHeader, 0, b"x-long", &bad);
            assert_eq!(
                decode_raw(&b, b.len(), WeftPhase::RequestHeaders).is_ok(),
                ok,
                "byte {byte:#x}"
            );
        }
    }

    /// A batch decoded again and again gives what its first decoding gave, once the thread
    /// keeps it too (`batch_memo`): the same changes, applied the same; what the checks refuse is
    /// refused every time and never kept; the same bytes in another phase are judged for that
    /// phase; a batch with a local reply is not kept, its body resolved from the buffer each
    /// time.
    #[test]
    fn a_repeated_batch_decodes_the_same_every_time() {
        use WeftPhase::{RequestHeaders, ResponseHeaders};
        let kept = |phase: WeftPhase, b: &[u8]| KEPT.with(|m| m.borrow().get(phase as u32, b).is_some());
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-a", b"1");
        rec(&mut b, M::AddRequestHeader, 0, b"x-b", b"2");
        rec(&mut b, M::RemoveRequestHeader, 0, b"drop", b"");
        rec(&mut b, M::SetPath, 0, b"/p", b"");
        rec(&mut b, M::SkipBody, 0, b"", b"");
        let first = format!("{:?}", decode(&b, b.len(), RequestHeaders).unwrap());
        for i in 0..5 {
            let batch = decode(&b, b.len(), RequestHeaders).unwrap();
            assert_eq!(format!("{batch:?}"), first, "decoding {i}");
            let mut parts = req();
            batch.apply_to_request(&mut parts);
            assert_eq!(
                (parts.headers["x-a"].as_bytes(), parts.headers["x-b"].as_bytes()),
                (&b"1"[..], &b"2"[..])
            );
            assert!(!parts.headers.contains_key("drop"));
            assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/p?x=1");
        }
        assert!(kept(RequestHeaders, &b), "a repeated batch is kept");
        for _ in 0..3 {
            assert!(matches!(
                decode(&b, b.len(), ResponseHeaders),
                Err(MutationError::WrongPhase { .. })
            ));
        }
        assert!(!kept(ResponseHeaders, &b));

        let mut refused = Vec::new();
        rec(&mut refused, M::SetRequestHeader, 0, b"x-a", b"1");
        rec(&mut refused, M::SetRequestHeader, 0, b"connection", b"close");
        for _ in 0..3 {
            assert!(matches!(
                decode(&refused, refused.len(), RequestHeaders),
                Err(MutationError::ReservedHeader { index: 1, .. })
            ));
        }
        assert!(!kept(RequestHeaders, &refused));

        let mut reply = Vec::new();
        rec(&mut reply, M::LocalReply, 403, b"no", b"");
        for _ in 0..3 {
            let r = decode(&reply, reply.len(), RequestHeaders)
                .unwrap()
                .take_reply()
                .unwrap();
            assert_eq!((r.status.as_u16(), &r.body[..]), (403, &b"no"[..]));
        }
        assert!(!kept(RequestHeaders, &reply), "a batch with a local reply is not kept");
    }

    /// A plugin that writes its buffer after the host decoded it changes no
    /// header, path or status: they were copied out and checked at decode time. Only the reply
    /// body, a payload range, shows the late bytes, at its validated length.
    #[test]
    fn writes_after_decoding_change_no_header() {
        let long = vec![b'v'; 2000];
        let mut b = Vec::new();
        rec(&mut b, M::LocalReply, 200, b"body", b"");
        rec(&mut b, M::LocalReplyHeader, 0, b"x-long", &long);
        rec(&mut b, M::LocalReplyHeader, 0, b"x-short", b"s");
        let raw = decode_raw(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        // The late writer: CR/LF everywhere (every operand byte but the names').
        let late: Vec<u8> = b
            .iter()
            .map(|&c| if c == b'v' || c == b's' { b'\n' } else { c })
            .collect();
        let reply = raw.resolve(Source::Shared(&Bytes::from(late))).take_reply().unwrap();
        assert_eq!(reply.headers["x-long"].as_bytes(), &long[..]);
        assert_eq!(reply.headers["x-short"], "s");
        assert_eq!(reply.body.len(), 4, "the body keeps its validated length");

        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-long", &long);
        rec(&mut b, M::SetPath, 0, b"/vvv", b"");
        let raw = decode_raw(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        let late: Vec<u8> = b.iter().map(|&c| if c == b'v' { b'\r' } else { c }).collect();
        let mut parts = req();
        raw.resolve(Source::Shared(&Bytes::from(late)))
            .apply_to_request(&mut parts);
        assert_eq!(parts.headers["x-long"].as_bytes(), &long[..]);
        assert_eq!(parts.uri.path(), "/vvv");
    }

    #[test]
    fn local_reply_with_headers() {
        let mut b = Vec::new();
        rec(&mut b, M::LocalReply, 401, br#"{"error":"unauthorized"}"#, b"");
        rec(&mut b, M::LocalReplyHeader, 0, b"content-type", b"application/json");
        let mut batch = decode(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        let resp = batch.take_reply().unwrap().into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.body().as_ref(), br#"{"error":"unauthorized"}"#);
    }

    #[test]
    fn response_status_and_headers() {
        let mut b = Vec::new();
        rec(&mut b, M::SetStatus, 418, b"", b"");
        rec(&mut b, M::SetResponseHeader, 0, b"server-timing", b"weft;dur=1");
        let (mut parts, _) = http::Response::new(()).into_parts();
        decode(&b, b.len(), WeftPhase::ResponseHeaders)
            .unwrap()
            .apply_to_response(&mut parts);
        assert_eq!(parts.status, 418);
        assert_eq!(parts.headers["server-timing"], "weft;dur=1");
    }

    #[test]
    fn body_records_decode_to_ranges_of_the_buffer() {
        let mut b = Vec::new();
        rec(&mut b, M::BodyPrepend, 0, b"<", b"");
        rec(&mut b, M::BodyReplace, 0, b"new", b"");
        rec(&mut b, M::BodyAppend, 0, b">>", b"");
        let mut batch = decode(&b, b.len(), WeftPhase::ResponseBody).unwrap();
        assert!(!batch.has_head_changes());
        let e = batch.take_body_edits();
        let text = |r: &Range<usize>| std::str::from_utf8(&b[r.clone()]).unwrap().to_owned();
        assert_eq!(e.prepend.iter().map(text).collect::<Vec<_>>(), ["<"]);
        assert_eq!(e.replace.as_ref().unwrap().as_ref().map(text).as_deref(), Some("new"));
        assert_eq!(e.append.iter().map(text).collect::<Vec<_>>(), [">>"]);

        let mut b = Vec::new();
        rec(&mut b, M::BodyDrop, 0, b"", b"");
        let e = decode(&b, b.len(), WeftPhase::RequestBody).unwrap().take_body_edits();
        assert_eq!(e.replace, Some(None));
        assert!(!e.is_pass());

        let mut b = Vec::new();
        rec(&mut b, M::SkipBody, 0, b"", b"");
        assert!(
            decode(&b, b.len(), WeftPhase::ResponseHeaders)
                .unwrap()
                .take_skip_body()
        );
        // Head changes decode in body phases (the body engine allows them only when buffered).
        let mut b = Vec::new();
        rec(&mut b, M::SetResponseHeader, 0, b"x-a", b"1");
        assert!(decode(&b, b.len(), WeftPhase::ResponseBody).unwrap().has_head_changes());
    }

    /// Records (kind, name, value) of one batch and the phase it is decoded in.
    type BatchCase = (Vec<(M, &'static [u8], &'static [u8])>, WeftPhase);

    #[test]
    fn invalid_body_records() {
        let cases: Vec<BatchCase> = vec![
            (
                vec![(M::BodyReplace, b"a", b""), (M::BodyDrop, b"", b"")],
                WeftPhase::RequestBody,
            ),
            (vec![(M::BodyDrop, b"x", b"")], WeftPhase::RequestBody),
            (vec![(M::BodyAppend, b"x", b"y")], WeftPhase::ResponseBody),
            (vec![(M::BodyReplace, b"x", b"")], WeftPhase::RequestHeaders),
            (vec![(M::SkipBody, b"", b"")], WeftPhase::RequestBody),
            (vec![(M::SkipBody, b"x", b"")], WeftPhase::RequestHeaders),
            (vec![(M::SetRequestHeader, b"a", b"b")], WeftPhase::ResponseBody),
            (vec![(M::BodyAppend, b"x", b"")], WeftPhase::Log),
        ];
        for (recs, phase) in cases {
            let mut b = Vec::new();
            for (op, a, bb) in &recs {
                rec(&mut b, *op, 0, a, bb);
            }
            assert!(
                decode(&b, b.len(), phase).is_err(),
                "{recs:?} in {phase:?} was accepted"
            );
        }
    }

    #[test]
    fn too_many_records() {
        let mut b = Vec::new();
        for _ in 0..=MAX_RECORDS {
            rec(&mut b, M::AddRequestHeader, 0, b"x", b"y");
        }
        assert_eq!(
            decode(&b, b.len(), WeftPhase::RequestHeaders).unwrap_err(),
            MutationError::TooMany
        );
    }

    #[test]
    fn websocket_records_decode_and_validate() {
        use crate::abi::WeftMutationOp as M;
        let mut b = Vec::new();
        encode_record(&mut b, M::WsSendText as u32, 0, "héllo".as_bytes(), b"");
        encode_record(&mut b, M::WsSendBinary as u32, 0, &[0xff, 0], b"");
        encode_record(&mut b, M::WsJoinRoom as u32, 0, b"lobby:1", b"");
        encode_record(&mut b, M::WsBroadcastBinary as u32, 0, b"lobby:1", &[1, 2]);
        encode_record(&mut b, M::WsLeaveRoom as u32, 0, b"lobby:1", b"");
        encode_record(&mut b, M::WsClose as u32, 4000, b"bye", b"");
        let mut batch = decode(&b, b.len(), WeftPhase::WebSocketMessage).unwrap();
        assert!(batch.is_empty(), "no head changes");
        let ops = batch.take_ws();
        assert_eq!(ops.len(), 6);
        assert_eq!(
            ops[3],
            WsOp::Broadcast {
                room: "lobby:1".into(),
                binary: true,
                payload: Bytes::from_static(&[1, 2])
            }
        );
        assert_eq!(
            ops[5],
            WsOp::Close {
                code: 4000,
                reason: "bye".into()
            }
        );
        // Not outside WebSocket phases, and WebSocket phases take no HTTP records.
        assert!(matches!(
            decode(&b, b.len(), WeftPhase::RequestHeaders),
            Err(MutationError::WrongPhase { .. })
        ));
        let mut h = Vec::new();
        encode_record(&mut h, M::SetRequestHeader as u32, 0, b"x", b"y");
        assert!(matches!(
            decode(&h, h.len(), WeftPhase::WebSocketOpen),
            Err(MutationError::WrongPhase { .. })
        ));
        let bad = |op: M, arg: u32, a: &[u8], bb: &[u8]| {
            let mut r = Vec::new();
            encode_record(&mut r, op as u32, arg, a, bb);
            decode(&r, r.len(), WeftPhase::WebSocketMessage).unwrap_err()
        };
        assert!(matches!(
            bad(M::WsSendText, 0, &[0xff], b""),
            MutationError::Utf8 { .. }
        ));
        assert!(matches!(
            bad(M::WsBroadcastText, 0, b"r", &[0xc3]),
            MutationError::Utf8 { .. }
        ));
        assert!(matches!(bad(M::WsJoinRoom, 0, b"a.b", b""), MutationError::Room { .. }));
        assert!(matches!(bad(M::WsJoinRoom, 0, b"", b""), MutationError::Room { .. }));
        assert!(matches!(
            bad(M::WsJoinRoom, 0, &[b'a'; 129], b""),
            MutationError::Room { .. }
        ));
        assert!(matches!(
            bad(M::WsClose, 1006, b"", b""),
            MutationError::CloseCode { .. }
        ));
        assert!(matches!(
            bad(M::WsClose, 1000, &[b'r'; 124], b""),
            MutationError::CloseCode { .. }
        ));
    }
}
