//! Decoding, validation and application of a plugin's mutation batch.
//!
//! A batch is all-or-nothing: every record is decoded and validated before any is applied, so a
//! plugin that writes one bad header value changes nothing and the failure policy decides what
//! happens to the request.

use std::mem::size_of;
use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Response, StatusCode, Uri};

use crate::abi::{WeftMutation, WeftMutationOp, WeftPhase};

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
    let ok = !raw.is_empty()
        && raw.len() <= crate::abi::WEFT_MAX_WS_ROOM_LEN as usize
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'));
    if !ok {
        return Err(MutationError::Room {
            index,
            room: String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned(),
        });
    }
    // Checked ASCII above.
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Header values at least this long are not copied out of the plugin's output buffer: when that
/// buffer is an arena lease, they become `Bytes` slices of it (see [`RawBatch::resolve`]).
/// Shorter values are copied at decode time, which costs less than pinning the lease.
pub const SHARED_VALUE_MIN: usize = 1024;

#[derive(Debug)]
enum Op<V = HeaderValue> {
    SetHeader(HeaderName, V),
    AddHeader(HeaderName, V),
    RemoveHeader(HeaderName),
    SetPath(Vec<u8>),
    SetQuery(Vec<u8>),
    SetStatus(StatusCode),
}

/// A header value of a decoded batch: copied already, or a validated range of the output buffer.
#[derive(Debug)]
enum Val {
    Copied(HeaderValue),
    At(Range<usize>),
}

/// A validated batch, ready to apply.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    reply: Option<LocalReply>,
    body: BodyEdits,
    skip_body: bool,
    ws: Vec<WsOp>,
}

/// A local reply as decoded: its body and long header values are still ranges of the buffer.
#[derive(Debug)]
struct RawReply {
    status: StatusCode,
    headers: Vec<(HeaderName, Val)>,
    body: Range<usize>,
}

/// A validated batch whose local reply body and long header values are still byte ranges of the
/// buffer it was decoded from. [`resolve`](Self::resolve) turns it into a [`Batch`], copying
/// those bytes or slicing them out of a shared owner of the buffer.
#[derive(Debug, Default)]
pub struct RawBatch {
    ops: Vec<Op<Val>>,
    reply: Option<RawReply>,
    body: BodyEdits,
    skip_body: bool,
    ws: Vec<WsOp>,
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
    /// Whether any record refers to bytes of the buffer (a local reply body, a long header
    /// value), so [`resolve`](Self::resolve) needs them.
    pub fn refers_to_buffer(&self) -> bool {
        self.referenced_len() != 0
    }

    /// How many bytes of the buffer the records refer to (what [`resolve`](Self::resolve)
    /// shares or copies).
    pub fn referenced_len(&self) -> usize {
        let len = |v: &Val| match v {
            Val::At(r) => r.len(),
            Val::Copied(_) => 0,
        };
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::SetHeader(_, v) | Op::AddHeader(_, v) => len(v),
                _ => 0,
            })
            .sum();
        let reply = self.reply.as_ref().map_or(0, |r| {
            r.body.len() + r.headers.iter().map(|(_, v)| len(v)).sum::<usize>()
        });
        ops + reply
    }

    /// Turns the ranges into bytes from `src`, which must hold the buffer the batch was decoded
    /// from (the same bytes, at the same offsets).
    pub fn resolve(self, src: Source<'_>) -> Batch {
        // Validated at decode time; a source that does not hold the same bytes is a host bug,
        // and such a value is dropped rather than sent.
        let value = |v: Val| match v {
            Val::Copied(v) => Some(v),
            Val::At(r) => HeaderValue::from_maybe_shared(src.bytes(r)).ok(),
        };
        let ops = self
            .ops
            .into_iter()
            .filter_map(|op| {
                Some(match op {
                    Op::SetHeader(n, v) => Op::SetHeader(n, value(v)?),
                    Op::AddHeader(n, v) => Op::AddHeader(n, value(v)?),
                    Op::RemoveHeader(n) => Op::RemoveHeader(n),
                    Op::SetPath(p) => Op::SetPath(p),
                    Op::SetQuery(q) => Op::SetQuery(q),
                    Op::SetStatus(s) => Op::SetStatus(s),
                })
            })
            .collect();
        let reply = self.reply.map(|r| {
            let mut headers = HeaderMap::with_capacity(r.headers.len());
            for (n, v) in r.headers {
                if let Some(v) = value(v) {
                    headers.append(n, v);
                }
            }
            let body = if r.body.is_empty() {
                Bytes::new()
            } else {
                src.bytes(r.body)
            };
            LocalReply {
                status: r.status,
                headers,
                body,
            }
        });
        Batch {
            ops,
            reply,
            body: self.body,
            skip_body: self.skip_body,
            ws: self.ws,
        }
    }
}

/// The body records of a batch, as byte ranges of the buffer the batch was decoded from (so the
/// caller can hand them on without copying: see `body.rs`).
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
    let lossy = || String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned();
    if raw.is_empty() || raw.len() > MAX_NAME_LEN {
        return Err(MutationError::HeaderName { index, name: lossy() });
    }
    let name = HeaderName::from_bytes(raw).map_err(|_| MutationError::HeaderName { index, name: lossy() })?;
    if is_reserved(&name) {
        return Err(MutationError::ReservedHeader {
            index,
            name: name.as_str().to_owned(),
        });
    }
    Ok(name)
}

fn header_value(index: usize, name: &HeaderName, raw: &[u8]) -> Result<HeaderValue, MutationError> {
    // HeaderValue::from_bytes refuses every control character but HTAB, so CR, LF and NUL are out.
    if raw.len() > MAX_VALUE_LEN {
        return Err(MutationError::HeaderValue {
            index,
            name: name.as_str().to_owned(),
        });
    }
    HeaderValue::from_bytes(raw).map_err(|_| MutationError::HeaderValue {
        index,
        name: name.as_str().to_owned(),
    })
}

/// Whether `b` may be a header value: visible ASCII, obs-text, space and HTAB (the rule of
/// `HeaderValue::from_bytes`, checked here without building one).
fn value_bytes_ok(b: &[u8]) -> bool {
    b.iter().all(|&c| (c >= 0x20 && c != 0x7f) || c == b'\t')
}

/// A header value at `range` of the buffer (`raw` being those bytes): validated now, copied now
/// if short, else kept as a range for [`RawBatch::resolve`].
fn header_val(index: usize, name: &HeaderName, raw: &[u8], range: Range<usize>) -> Result<Val, MutationError> {
    if raw.len() < SHARED_VALUE_MIN {
        return header_value(index, name, raw).map(Val::Copied);
    }
    if raw.len() > MAX_VALUE_LEN || !value_bytes_ok(raw) {
        return Err(MutationError::HeaderValue {
            index,
            name: name.as_str().to_owned(),
        });
    }
    Ok(Val::At(range))
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
/// checked here (a batch is all or nothing); a local reply body and header values of at least
/// [`SHARED_VALUE_MIN`] bytes stay ranges of `buf` until [`RawBatch::resolve`].
pub fn decode_raw(buf: &[u8], len: usize, phase: WeftPhase) -> Result<RawBatch, MutationError> {
    if len > buf.len() {
        return Err(MutationError::Length { len, cap: buf.len() });
    }
    let data = &buf[..len];
    let mut batch = RawBatch::default();
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < data.len() {
        if index >= MAX_RECORDS {
            return Err(MutationError::TooMany);
        }
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
        let a = &data[rec_end..a_end];
        let b = &data[a_end..b_end];
        let op = op_from_raw(rec.op).ok_or(MutationError::UnknownOp { index, op: rec.op })?;
        if !allowed(op, phase) {
            return Err(MutationError::WrongPhase { index, op, phase });
        }
        use WeftMutationOp as M;
        let no_b = || {
            if b.is_empty() {
                Ok(())
            } else {
                Err(MutationError::Operand { index, op })
            }
        };
        match op {
            M::SetRequestHeader | M::SetResponseHeader => {
                let n = header_name(index, a)?;
                let v = header_val(index, &n, b, a_end..b_end)?;
                batch.ops.push(Op::SetHeader(n, v));
            }
            M::AddRequestHeader | M::AddResponseHeader => {
                let n = header_name(index, a)?;
                let v = header_val(index, &n, b, a_end..b_end)?;
                batch.ops.push(Op::AddHeader(n, v));
            }
            M::RemoveRequestHeader | M::RemoveResponseHeader => {
                no_b()?;
                batch.ops.push(Op::RemoveHeader(header_name(index, a)?));
            }
            M::SetPath => {
                no_b()?;
                if a.first() != Some(&b'/') || a.len() > MAX_PATH_LEN || !uri_bytes_ok(a, false) {
                    return Err(MutationError::Path {
                        index,
                        path: String::from_utf8_lossy(a).into_owned(),
                    });
                }
                batch.ops.push(Op::SetPath(a.to_vec()));
            }
            M::SetQuery => {
                no_b()?;
                if a.len() > MAX_PATH_LEN || !uri_bytes_ok(a, true) {
                    return Err(MutationError::Query {
                        index,
                        query: String::from_utf8_lossy(a).into_owned(),
                    });
                }
                batch.ops.push(Op::SetQuery(a.to_vec()));
            }
            M::SetStatus => {
                if !a.is_empty() || !b.is_empty() {
                    return Err(MutationError::Operand { index, op });
                }
                batch.ops.push(Op::SetStatus(status(index, rec.arg)?));
            }
            M::LocalReply => {
                no_b()?;
                if batch.reply.is_some() {
                    return Err(MutationError::DuplicateReply { index });
                }
                batch.reply = Some(RawReply {
                    status: status(index, rec.arg)?,
                    headers: Vec::new(),
                    body: rec_end..a_end,
                });
            }
            M::LocalReplyHeader => {
                let n = header_name(index, a)?;
                let v = header_val(index, &n, b, a_end..b_end)?;
                match batch.reply.as_mut() {
                    Some(r) => {
                        r.headers.push((n, v));
                    }
                    None => return Err(MutationError::OrphanReplyHeader { index }),
                }
            }
            M::BodyReplace | M::BodyDrop => {
                no_b()?;
                if op == M::BodyDrop && !a.is_empty() {
                    return Err(MutationError::Operand { index, op });
                }
                if batch.body.replace.is_some() {
                    return Err(MutationError::DuplicateBodyReplace { index });
                }
                batch.body.replace = Some((op == M::BodyReplace).then_some(rec_end..a_end));
            }
            M::BodyPrepend => {
                no_b()?;
                batch.body.prepend.push(rec_end..a_end);
            }
            M::BodyAppend => {
                no_b()?;
                batch.body.append.push(rec_end..a_end);
            }
            M::SkipBody => {
                if !a.is_empty() || !b.is_empty() {
                    return Err(MutationError::Operand { index, op });
                }
                batch.skip_body = true;
            }
            M::WsSendText | M::WsSendBinary => {
                no_b()?;
                let binary = op == M::WsSendBinary;
                if !binary && std::str::from_utf8(a).is_err() {
                    return Err(MutationError::Utf8 { index });
                }
                batch.ws.push(WsOp::Send {
                    binary,
                    payload: Bytes::copy_from_slice(a),
                });
            }
            M::WsClose => {
                no_b()?;
                let reason = std::str::from_utf8(a).ok().filter(|r| r.len() <= 123);
                let (Some(reason), true) = (reason, ws_close_code_ok(rec.arg)) else {
                    return Err(MutationError::CloseCode { index, code: rec.arg });
                };
                batch.ws.push(WsOp::Close {
                    code: rec.arg as u16,
                    reason: reason.to_owned(),
                });
            }
            M::WsJoinRoom | M::WsLeaveRoom => {
                no_b()?;
                let room = ws_room(index, a)?;
                batch.ws.push(if op == M::WsJoinRoom {
                    WsOp::Join(room)
                } else {
                    WsOp::Leave(room)
                });
            }
            M::WsBroadcastText | M::WsBroadcastBinary => {
                let room = ws_room(index, a)?;
                let binary = op == M::WsBroadcastBinary;
                if !binary && std::str::from_utf8(b).is_err() {
                    return Err(MutationError::Utf8 { index });
                }
                batch.ws.push(WsOp::Broadcast {
                    room,
                    binary,
                    payload: Bytes::copy_from_slice(b),
                });
            }
        }
        pos = b_end.next_multiple_of(4).min(data.len());
        index += 1;
    }
    Ok(batch)
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.reply.is_none()
    }

    /// Takes the local reply out, if the batch has one.
    pub fn take_reply(&mut self) -> Option<LocalReply> {
        self.reply.take()
    }

    /// Whether the batch holds a `SkipBody` record (clears it).
    pub fn take_skip_body(&mut self) -> bool {
        std::mem::take(&mut self.skip_body)
    }

    /// Takes the WebSocket records out, in record order.
    pub fn take_ws(&mut self) -> Vec<WsOp> {
        std::mem::take(&mut self.ws)
    }

    /// Takes the body records out.
    pub fn take_body_edits(&mut self) -> BodyEdits {
        std::mem::take(&mut self.body)
    }

    /// Whether the batch changes the head (headers, path, query, status) or replies locally.
    pub fn has_head_changes(&self) -> bool {
        !self.ops.is_empty() || self.reply.is_some()
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
    pub fn apply_to_request(self, parts: &mut http::request::Parts) {
        let mut path: Option<Vec<u8>> = None;
        let mut query: Option<Vec<u8>> = None;
        for op in self.ops {
            match Self::apply_headers(op, &mut parts.headers) {
                Some(Op::SetPath(p)) => path = Some(p),
                Some(Op::SetQuery(q)) => query = Some(q),
                _ => {}
            }
        }
        if path.is_none() && query.is_none() {
            return;
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
            return;
        };
        let mut up = old.into_parts();
        up.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(up) {
            parts.uri = uri;
        }
    }

    /// Applies header and status changes to a response head.
    pub fn apply_to_response(self, parts: &mut http::response::Parts) {
        for op in self.ops {
            if let Some(Op::SetStatus(s)) = Self::apply_headers(op, &mut parts.headers) {
                parts.status = s;
            }
        }
    }
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
    /// were accepted before issue 13 (`host`, `x-forwarded-for`, `keep-alive`, `expect`, ...).
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
    fn long_values_and_reply_bodies_resolve_to_slices_of_a_shared_buffer() {
        let long = vec![b'x'; SHARED_VALUE_MIN];
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-short", b"s");
        rec(&mut b, M::AddRequestHeader, 0, b"x-long", &long);
        let raw = decode_raw(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        assert!(raw.refers_to_buffer());
        let shared = Bytes::from(b.clone());
        let mut parts = req();
        raw.resolve(Source::Shared(&shared)).apply_to_request(&mut parts);
        assert_eq!(parts.headers["x-short"], "s");
        let v = parts.headers["x-long"].as_bytes();
        assert_eq!(v, &long[..]);
        let at = v.as_ptr() as usize - shared.as_ptr() as usize;
        assert!(at < shared.len(), "the long value is a slice of the buffer, not a copy");

        let mut b = Vec::new();
        rec(&mut b, M::LocalReply, 403, b"denied", b"");
        rec(&mut b, M::LocalReplyHeader, 0, b"x-why", &long);
        let shared = Bytes::from(b.clone());
        let raw = decode_raw(&b, b.len(), WeftPhase::RequestHeaders).unwrap();
        let reply = raw.resolve(Source::Shared(&shared)).take_reply().unwrap();
        assert_eq!((reply.status.as_u16(), &reply.body[..]), (403, &b"denied"[..]));
        assert!(shared.as_ptr_range().contains(&reply.body.as_ptr()));
        assert!(
            shared
                .as_ptr_range()
                .contains(&reply.headers["x-why"].as_bytes().as_ptr())
        );
        // The same batch copied: equal bytes, other memory.
        let reply = decode(&b, b.len(), WeftPhase::RequestHeaders)
            .unwrap()
            .take_reply()
            .unwrap();
        assert_eq!(&reply.body[..], b"denied");
        assert!(!shared.as_ptr_range().contains(&reply.body.as_ptr()));

        // Short values and no reply: nothing refers to the buffer.
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-short", b"s");
        assert!(
            !decode_raw(&b, b.len(), WeftPhase::RequestHeaders)
                .unwrap()
                .refers_to_buffer()
        );
        // A long value is validated at decode time like a short one.
        let mut bad = long.clone();
        bad[SHARED_VALUE_MIN / 2] = b'\n';
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-long", &bad);
        assert!(matches!(
            decode_raw(&b, b.len(), WeftPhase::RequestHeaders),
            Err(MutationError::HeaderValue { .. })
        ));
        bad[SHARED_VALUE_MIN / 2] = 0x7f;
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-long", &bad);
        assert!(
            decode_raw(&b, b.len(), WeftPhase::RequestHeaders).is_err(),
            "DEL refused"
        );
        bad[SHARED_VALUE_MIN / 2] = b'\t';
        let mut b = Vec::new();
        rec(&mut b, M::SetRequestHeader, 0, b"x-long", &bad);
        assert!(
            decode_raw(&b, b.len(), WeftPhase::RequestHeaders).is_ok(),
            "HTAB allowed"
        );
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

    #[test]
    fn invalid_body_records() {
        let cases: Vec<(Vec<(M, &[u8], &[u8])>, WeftPhase)> = vec![
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
