//! The weft C ABI, version 1: the one source of `include/weft.h`.
//!
//! Every type here is `#[repr(C)]` (or `#[repr(u32)]`), and cbindgen reads this crate alone to
//! produce the header (`scripts/gen-header`, config in `abi/cbindgen.toml`), so everything `pub`
//! in it is part of the contract. The runtime re-exports it as `weft_runtime::abi`.
//!
//! A plugin library (Go through the SDK in `cgo/`, or plain C) exports one symbol,
//! `weft_plugin_entry`, which receives the host's function table and returns a descriptor: ABI
//! version, the sizes of the shared structs, the plugins the library holds and the plugin-side
//! function table.
//!
//! Memory rules in one place (details on each item):
//! - A request view (`WeftRequestView` and the bytes after it) lives in the host's mmap-backed
//!   arena. The plugin may read it only during the call that passed it in; the host may reuse the
//!   memory as soon as that call returns.
//! - Mutations are written by the plugin into the host-provided `WeftBuf` during the call, as a
//!   sequence of `WeftMutation` records. The host validates the whole batch before applying any.
//! - No pointer crosses the boundary to be kept: per-request identity is `(slot, generation)`,
//!   plugin instances are integer ids.

#![no_std]

use core::ffi::c_void;

/// The ABI version this runtime speaks. A plugin reporting another version is refused at load.
/// Bumped on any incompatible change; additive changes append fields and are detected through the
/// size fields of the handshake.
pub const WEFT_ABI_VERSION: u32 = 1;

/// The plugin library was written in C (or anything without its own managed runtime).
pub const WEFT_RUNTIME_NATIVE: u32 = 0;
/// The plugin library carries a Go runtime (built with `go build -buildmode=c-shared`). Only one
/// such library may be loaded into a process.
pub const WEFT_RUNTIME_GO: u32 = 1;

/// `level` of `WeftHostApi.log`: an error. A level not listed here logs as `WEFT_LOG_INFO`.
pub const WEFT_LOG_ERROR: u32 = 1;
/// `level` of `WeftHostApi.log`: a warning.
pub const WEFT_LOG_WARN: u32 = 2;
/// `level` of `WeftHostApi.log`: information (also what an unknown level logs as).
pub const WEFT_LOG_INFO: u32 = 3;
/// `level` of `WeftHostApi.log`: debugging detail.
pub const WEFT_LOG_DEBUG: u32 = 4;

/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_REQUEST_HEADERS`. Every phase's bit is
/// `1 << phase` (its `WeftPhase` value).
pub const WEFT_PHASE_MASK_REQUEST_HEADERS: u32 = 1 << 0;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_REQUEST_BODY`.
pub const WEFT_PHASE_MASK_REQUEST_BODY: u32 = 1 << 1;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_RESPONSE_HEADERS`.
pub const WEFT_PHASE_MASK_RESPONSE_HEADERS: u32 = 1 << 2;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_RESPONSE_BODY`.
pub const WEFT_PHASE_MASK_RESPONSE_BODY: u32 = 1 << 3;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_LOG`.
pub const WEFT_PHASE_MASK_LOG: u32 = 1 << 4;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_WEB_SOCKET_OPEN`.
pub const WEFT_PHASE_MASK_WEBSOCKET_OPEN: u32 = 1 << 5;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_WEB_SOCKET_MESSAGE`.
pub const WEFT_PHASE_MASK_WEBSOCKET_MESSAGE: u32 = 1 << 6;
/// Bit of `WeftPluginInfo.phases` for `WEFT_PHASE_WEB_SOCKET_CLOSE`.
pub const WEFT_PHASE_MASK_WEBSOCKET_CLOSE: u32 = 1 << 7;
/// Phases this runtime version drives. Bits outside it in `WeftPluginInfo.phases` are ignored
/// (with a warning at load).
pub const WEFT_PHASE_MASK_SUPPORTED: u32 = WEFT_PHASE_MASK_REQUEST_HEADERS
    | WEFT_PHASE_MASK_REQUEST_BODY
    | WEFT_PHASE_MASK_RESPONSE_HEADERS
    | WEFT_PHASE_MASK_RESPONSE_BODY
    | WEFT_PHASE_MASK_LOG
    | WEFT_PHASE_MASK_WEBSOCKET_OPEN
    | WEFT_PHASE_MASK_WEBSOCKET_MESSAGE
    | WEFT_PHASE_MASK_WEBSOCKET_CLOSE;

/// `WeftRequestView.body_flags`: this is the last body call of the phase for this request
/// (the chunk may be empty). Every body phase a plugin takes part in ends with exactly one call
/// carrying this bit.
pub const WEFT_BODY_END_OF_STREAM: u32 = 1;
/// `WeftRequestView.body_flags`: the chunk is the whole body (buffered mode); always comes
/// with `WEFT_BODY_END_OF_STREAM`.
pub const WEFT_BODY_BUFFERED: u32 = 2;
/// `WeftRequestView.body_flags`, WebSocket-message phase: the message is binary (clear: text,
/// valid UTF-8). The message is always whole (fragments are joined by the host).
pub const WEFT_WS_BINARY: u32 = 4;
/// `WeftRequestView.body_flags`, WebSocket-close phase: the connection did not end with a
/// clean close handshake started by the peer (an error, a protocol violation, an oversized
/// message, a slow reader, an idle timeout, a plugin failure or an abrupt disconnect);
/// `body` then holds a description of the error.
pub const WEFT_WS_ERROR: u32 = 8;

/// Longest room name a WebSocket room operation may carry, in bytes. Room names are 1 to this
/// many bytes of `A-Z a-z 0-9 _ - :` (they become NATS subject tokens across proxies).
pub const WEFT_MAX_WS_ROOM_LEN: u32 = 128;

/// Most mutation records one batch may hold; a longer batch is rejected whole.
pub const WEFT_MAX_MUTATION_RECORDS: u32 = 256;
/// Longest header name a mutation may carry, in bytes.
pub const WEFT_MAX_HEADER_NAME_LEN: u32 = 256;
/// Most header names one plugin's `WeftViewHeaders` may list.
pub const WEFT_MAX_VIEW_HEADERS: u32 = 64;
/// Longest header value a mutation may carry, in bytes.
pub const WEFT_MAX_HEADER_VALUE_LEN: u32 = 16 * 1024;
/// Longest path or query a mutation may set, in bytes.
pub const WEFT_MAX_PATH_LEN: u32 = 8 * 1024;

/// Result codes for every call in either direction. Values are never reused; a plugin returning a
/// value this enum does not know is treated as `WEFT_RESULT_INTERNAL`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeftResult {
    /// Success; for a phase call: continue with any mutations written.
    Ok = 0,
    /// The plugin handler panicked; the SDK recovered it. The failure policy applies.
    Panic = 1,
    /// An argument was null, out of range or malformed.
    InvalidArgument = 2,
    /// The plugin index or instance id is not known to the callee.
    UnknownPlugin = 3,
    /// The mutation records did not fit in the buffer the host provided.
    MutationOverflow = 4,
    /// Plugin initialisation failed; the message is in the error buffer.
    InitFailed = 5,
    /// The two sides do not speak the same ABI version or struct sizes.
    AbiMismatch = 6,
    /// The plugin was called for a phase it did not declare.
    UnsupportedPhase = 7,
    /// A mutation batch failed host validation (set by the host, never by a plugin).
    InvalidMutation = 8,
    /// The handler reported a failure of its own (not a panic). The failure policy applies.
    HandlerFailed = 9,
    /// Anything else.
    Internal = 10,
    /// For a phase call: the handler goes on after returning and finishes later, from any thread,
    /// with exactly one `WeftHostApi.complete` call. Until then the view and the `out` bytes
    /// stay valid and reserved for the plugin (see `WeftHostApi.complete`).
    Pending = 11,
    /// From `WeftHostApi.complete`: `(slot, call)` does not name an outstanding call of this
    /// instance (forged, from an older request, or out of range). Nothing was touched.
    StaleHandle = 12,
    /// From `WeftHostApi.complete`: this call was completed already.
    AlreadyCompleted = 13,
    /// From `WeftHostApi.complete`: the host stopped waiting (phase deadline, client gone) and
    /// discarded the result; the call's memory is released now. Not an error of the plugin.
    Cancelled = 14,
    /// The host could not take the call now (a worker ring or an in-flight limit is full).
    Busy = 15,
}

impl WeftResult {
    /// Converts a raw code from the other side, mapping unknown values to `Internal`.
    pub fn from_raw(raw: u32) -> WeftResult {
        match raw {
            0 => WeftResult::Ok,
            1 => WeftResult::Panic,
            2 => WeftResult::InvalidArgument,
            3 => WeftResult::UnknownPlugin,
            4 => WeftResult::MutationOverflow,
            5 => WeftResult::InitFailed,
            6 => WeftResult::AbiMismatch,
            7 => WeftResult::UnsupportedPhase,
            8 => WeftResult::InvalidMutation,
            9 => WeftResult::HandlerFailed,
            11 => WeftResult::Pending,
            12 => WeftResult::StaleHandle,
            13 => WeftResult::AlreadyCompleted,
            14 => WeftResult::Cancelled,
            15 => WeftResult::Busy,
            _ => WeftResult::Internal,
        }
    }
}

/// HTTP processing phases. Passed across the ABI as `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeftPhase {
    /// Request line and headers have arrived; the upstream has not been contacted.
    RequestHeaders = 0,
    /// The request body, chunk by chunk (streamed) or whole (buffered): see
    /// `WeftRequestView.body`.
    RequestBody = 1,
    /// The upstream's status and headers have arrived; nothing was sent to the client yet.
    ResponseHeaders = 2,
    /// The response body, chunk by chunk (streamed) or whole (buffered).
    ResponseBody = 3,
    /// The response has been sent. Read-only; runs off the request path.
    Log = 4,
    /// A WebSocket connection served by the plugin has been accepted (the `101` is sent). The
    /// view holds the upgrade request's head; `request_id` identifies the connection and
    /// `(slot, generation)` stays the same for every event of the connection until its close.
    WebSocketOpen = 5,
    /// One whole WebSocket message from the client: `body`/`body_len` (read in place, as body
    /// chunks), `WEFT_WS_BINARY` in `body_flags` for a binary message. Calls of one
    /// connection are made in message order, never concurrently.
    WebSocketMessage = 6,
    /// The connection has ended (last call for it). `status` is the close code (1005: none was
    /// given; 1006: no close frame); `body` is the close reason, or with `WEFT_WS_ERROR` a
    /// description of the error. WebSocket send and close records are ignored here; room
    /// records still apply.
    WebSocketClose = 7,
}

impl WeftPhase {
    pub const fn mask(self) -> u32 {
        1 << (self as u32)
    }
}

/// A byte string inside a request view: `len` bytes starting `off` bytes after the start of the
/// `WeftRequestView` that contains it. Never NUL-terminated. `off + len <= view.size` always.
///
/// # Ownership and thread safety
/// A plain value (offsets, no pointer). The bytes it names belong to the view and follow the
/// view's lifetime and threading rules (see `WeftRequestView`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeftStr {
    /// Offset of the first byte from the start of the containing `WeftRequestView`.
    pub off: u32,
    /// Number of bytes; 0 for an empty string.
    pub len: u32,
}

/// One header line. Names are lowercase ASCII (as HTTP/2 requires and hyper stores them), so a
/// plugin can compare bytes directly. Repeated headers appear as repeated entries, in order.
///
/// # Ownership and thread safety
/// An element of a header array inside a `WeftRequestView`: host memory with the view's
/// lifetime and threading rules; read it, never write it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeftHeader {
    /// The header name: lowercase ASCII, never empty.
    pub name: WeftStr,
    /// The header value as received: bytes, not necessarily UTF-8, may be empty.
    pub value: WeftStr,
}

/// The read-only picture of one request (and, from the response-headers phase on, its response)
/// that the host lays out in its arena before each phase call.
///
/// Layout: this struct at offset 0; after it, in an order a reader must not assume, the string
/// bytes and the arrays of `req_header_count` `WeftHeader`s at `req_headers_off` and
/// `resp_header_count` at `resp_headers_off` (both 4-byte aligned). Every `WeftStr` and array
/// offset is relative to the start of this struct and stays within `size` bytes.
///
/// # Lifetime and ownership
/// Owned by the host (an arena slot). Valid for reading during the phase call it was passed to,
/// and, for a call answered `WEFT_RESULT_PENDING` or a worker-ring `WeftJob`, until the
/// plugin's `WeftHostApi.complete` for that call returns. It must never be written, and no
/// pointer into it (or into `body`) may be used after that.
///
/// # Thread safety
/// Views of different requests may be passed concurrently on different threads. While valid, a
/// view may be read from any thread (it does not change). The phases of one request are never
/// called concurrently, and the host establishes happens-before between them (a pending call's
/// `complete` included), so per-request plugin state indexed by `slot` needs no locking.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WeftRequestView {
    /// Total bytes of the view, this struct included.
    pub size: u32,
    /// The phase this view was prepared for (a `WeftPhase` value).
    pub phase: u32,
    /// Unique per request within the process lifetime; never 0.
    pub request_id: u64,
    /// The request's state slot: an index below the `slot_count` given at init. At most one live
    /// request uses a slot at a time.
    pub slot: u32,
    /// Changes whenever the slot is given to a new request: state stored for another generation
    /// belongs to a finished request and must be reset.
    pub generation: u32,
    /// Request method, e.g. `GET`.
    pub method: WeftStr,
    /// Path without the query string, always starting with `/`.
    pub path: WeftStr,
    /// Query string without the leading `?`; empty when absent.
    pub query: WeftStr,
    /// Host the client asked for (`:authority` or the `host` header), empty when absent.
    pub host: WeftStr,
    /// Client address as `ip:port`.
    pub client_addr: WeftStr,
    /// `http` or `https` as seen by the proxy.
    pub scheme: WeftStr,
    /// Protocol version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: WeftStr,
    /// Offset of the request header array.
    pub req_headers_off: u32,
    /// Number of request headers.
    pub req_header_count: u32,
    /// Response status; 0 before the response-headers phase.
    pub status: u32,
    /// Offset of the response header array.
    pub resp_headers_off: u32,
    /// Number of response headers; 0 before the response-headers phase.
    pub resp_header_count: u32,
    /// Names this phase call for `WeftHostApi.complete` together with `slot`; never 0. A
    /// handler that answers `WEFT_RESULT_PENDING` passes it back when it completes.
    pub call: u32,
    /// Body and WebSocket-message/close phases only (else NULL): the bytes of this call,
    /// `body_len` of them, read in place. Host memory outside the view (e.g. the HTTP library's
    /// receive buffer), valid as long as the view is; never write it, keep no pointer into it.
    /// NULL only with `body_len` 0.
    pub body: *const u8,
    /// Number of bytes at `body`; 0 when `body` is NULL.
    pub body_len: u32,
    /// Body phases: `WEFT_BODY_*` bits (`WEFT_BODY_END_OF_STREAM`, `WEFT_BODY_BUFFERED`);
    /// WebSocket phases: `WEFT_WS_BINARY`, `WEFT_WS_ERROR`; else 0.
    pub body_flags: u32,
    /// The TLS server name (SNI) the client sent in its handshake; empty on a plain-HTTP
    /// listener and when a TLS client sent none (e.g. it connected by IP address). Appended
    /// after the first version-1 view: a plugin compiled without it reports the shorter
    /// `request_view_size` and is still accepted (it never reads this field); a plugin
    /// compiled with it is refused by a host that predates it, so it never reads past an
    /// older host's view.
    pub server_name: WeftStr,
}

impl Default for WeftRequestView {
    fn default() -> Self {
        WeftRequestView {
            size: 0,
            phase: 0,
            request_id: 0,
            slot: 0,
            generation: 0,
            method: WeftStr::default(),
            path: WeftStr::default(),
            query: WeftStr::default(),
            host: WeftStr::default(),
            client_addr: WeftStr::default(),
            scheme: WeftStr::default(),
            version: WeftStr::default(),
            req_headers_off: 0,
            req_header_count: 0,
            status: 0,
            resp_headers_off: 0,
            resp_header_count: 0,
            call: 0,
            body: core::ptr::null(),
            body_len: 0,
            body_flags: 0,
            server_name: WeftStr::default(),
        }
    }
}

// SAFETY: plain data; `body` is an address the plugin reads during one call, never dereferenced
// by the host through this struct.
unsafe impl Send for WeftRequestView {}
unsafe impl Sync for WeftRequestView {}

/// A host-owned output buffer the plugin writes into: `init`'s error message, or a phase call's
/// mutation records.
///
/// # Ownership and lifetime
/// The struct and the `cap` bytes at `ptr` are owned by the host. The struct itself (it lives
/// on the host's stack) is valid only during the call it was passed to. The bytes at `ptr` are
/// valid during that call and, for a phase call answered `WEFT_RESULT_PENDING`, until the
/// plugin's `WeftHostApi.complete` for it returns: keep `ptr` and `cap`, not the struct.
/// After that the plugin must not write them. The host copies every operand it validates
/// (header names and values, paths, queries, room names, WebSocket text) out of the bytes before
/// checking it and fixes every length then, so a plugin that writes anyway changes no header,
/// status or framing; only payload the host sends from these bytes without copying (a local
/// reply body, body replacement bytes), at the same length, or a later call's output once the
/// memory went back to the host.
///
/// # Thread safety
/// Lent to one call at a time: the host neither reads nor writes the bytes until the call
/// returns (or, when pending, until `complete`), so the plugin may write them from any one
/// thread meanwhile without locking; `complete` publishes them to the host.
#[repr(C)]
#[derive(Debug)]
pub struct WeftBuf {
    /// First of the `cap` writable bytes: host memory (for a phase call, part of the view's arena
    /// slot, a second arena slot, or a host buffer; see `docs/abi.md`).
    pub ptr: *mut u8,
    /// Number of bytes the plugin may write from `ptr`.
    pub cap: u32,
    /// Bytes written from `ptr`: 0 when passed in; the plugin sets it (at most `cap`) before
    /// returning. For a pending call it is ignored: the length goes to `complete` as `out_len`.
    pub len: u32,
}

/// Mutation operations, written as `WeftMutation` records.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeftMutationOp {
    /// Replace all values of request header `a` with `b`.
    SetRequestHeader = 1,
    /// Append a value `b` for request header `a`.
    AddRequestHeader = 2,
    /// Remove request header `a`; `b` is empty.
    RemoveRequestHeader = 3,
    /// Replace the path with `a` (must start with `/`; no query).
    SetPath = 4,
    /// Replace the query string with `a` (without `?`; empty removes it).
    SetQuery = 5,
    /// Replace all values of response header `a` with `b`.
    SetResponseHeader = 6,
    /// Append a value `b` for response header `a`.
    AddResponseHeader = 7,
    /// Remove response header `a`.
    RemoveResponseHeader = 8,
    /// Set the response status to `arg` (response-headers phase).
    SetStatus = 9,
    /// End the request with a local reply of status `arg` and body `a`; the upstream is not
    /// contacted (or its response is discarded in the response phase).
    LocalReply = 10,
    /// A header `a: b` of the local reply; must follow the `WEFT_MUTATION_OP_LOCAL_REPLY` record of
    /// the same batch.
    LocalReplyHeader = 11,
    /// Body phases: replace this call's body bytes (the chunk, or the whole body when buffered)
    /// with `a`. At most one `WEFT_MUTATION_OP_BODY_REPLACE`/`WEFT_MUTATION_OP_BODY_DROP` per
    /// batch.
    BodyReplace = 12,
    /// Body phases: send `a` before this call's body bytes (several: in record order).
    BodyPrepend = 13,
    /// Body phases: send `a` after this call's body bytes (several: in record order). On the
    /// end-of-stream call this appends to the end of the body.
    BodyAppend = 14,
    /// Body phases: drop this call's body bytes (`a` and `b` empty); prepends and appends of
    /// the same batch are still sent.
    BodyDrop = 15,
    /// Request-headers phase: this instance does not want this request's body; response-headers
    /// phase: it does not want this response's body. Its body phase is then not called for this
    /// request (the body may stream past it untouched). `a` and `b` empty.
    SkipBody = 16,
    /// WebSocket phases: send the text message `a` (UTF-8) to this connection.
    WsSendText = 17,
    /// WebSocket phases: send the binary message `a` to this connection.
    WsSendBinary = 18,
    /// WebSocket phases: close this connection with code `arg` (1000..=1003, 1007..=1014 or
    /// 3000..=4999) and reason `a` (UTF-8, at most 123 bytes), after the messages queued before.
    WsClose = 19,
    /// WebSocket phases: this connection joins room `a` (see `WEFT_MAX_WS_ROOM_LEN`).
    WsJoinRoom = 20,
    /// WebSocket phases: this connection leaves room `a`. Every room is left at close.
    WsLeaveRoom = 21,
    /// WebSocket phases: send the text message `b` (UTF-8) to every member of room `a`, the
    /// sender included if it is a member, on this proxy and (with NATS) on the others.
    WsBroadcastText = 22,
    /// WebSocket phases: as `WEFT_MUTATION_OP_WS_BROADCAST_TEXT` with a binary message `b`.
    WsBroadcastBinary = 23,
}

/// Header of one mutation record. It is followed by `a_len` bytes of operand `a`, then `b_len`
/// bytes of operand `b`, then zero padding to the next multiple of 4. Records are packed one after
/// another from the start of the `WeftBuf`.
///
/// # Ownership and thread safety
/// A plain value (no pointer); each record starts at a multiple of 4 bytes from the start of the
/// output buffer. The plugin writes records into the host's output buffer (see `WeftBuf` for
/// when and from which threads); the host reads and validates the whole batch only after the
/// call returns or is completed.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeftMutation {
    /// A `WeftMutationOp` value.
    pub op: u32,
    /// Numeric argument (status code for `WEFT_MUTATION_OP_SET_STATUS` and
    /// `WEFT_MUTATION_OP_LOCAL_REPLY`, close code for `WEFT_MUTATION_OP_WS_CLOSE`), else 0.
    pub arg: u32,
    /// Length of operand `a` in bytes.
    pub a_len: u32,
    /// Length of operand `b` in bytes.
    pub b_len: u32,
}

/// One plugin a library offers: an element of `WeftPluginDescriptor.plugins`.
///
/// # Ownership and lifetime
/// Owned by the plugin library, like `name`: both must stay valid and unchanged while the
/// library is loaded (libraries are never unloaded, so: for the life of the process).
///
/// # Thread safety
/// The host reads it only while loading the library, on the loading thread right after
/// `weft_plugin_entry` returns, copies what it needs and never writes it.
#[repr(C)]
#[derive(Debug)]
pub struct WeftPluginInfo {
    /// UTF-8 name, not NUL-terminated, non-empty, unique within the library.
    pub name: *const u8,
    /// Number of bytes at `name`; never 0.
    pub name_len: usize,
    /// Bit set of `1 << WeftPhase` the plugin handles; the host never calls other phases.
    pub phases: u32,
    /// Bit set of `WEFT_PLUGIN_FLAG_*`; other bits are zero.
    pub flags: u32,
}

/// The header lines one plugin reads: an element of `WeftPluginDescriptor.view_headers`. The
/// host lays out in a view only the lines its chain's plugins declared (see `docs/abi.md`, "Header
/// lines a view carries"): a plugin that names the few headers it reads does not pay for copying
/// every line of the request and the response into the view on every call.
///
/// `names` NULL (with `names_len` 0): the plugin reads every line (what a plugin without a
/// declaration gets). Otherwise `names_len` bytes of header names separated by single commas, no
/// spaces (`"authorization,x-api-key"`), matched case-insensitively; at most
/// `WEFT_MAX_VIEW_HEADERS` (64) names, each a valid header name of at most
/// `WEFT_MAX_HEADER_NAME_LEN` bytes. An empty list (`names` non-NULL,
/// `names_len` 0) reads no header line. The view then holds every line of each declared name, in
/// both sections, and may hold lines of other names (another plugin on the same chain declared
/// them, or declared nothing, or the head is short enough to copy whole): a plugin must not rely
/// on their absence. A malformed list refuses
/// the library at load, with the plugin and the name in the message. The view's `host` field is
/// filled whatever is declared.
///
/// # Ownership and lifetime
/// Owned by the plugin library, like `WeftPluginInfo`: the struct and the bytes at `names` must
/// stay valid and unchanged while the library is loaded (for the life of the process).
///
/// # Thread safety
/// The host reads it only while loading the library, on the loading thread right after
/// `weft_plugin_entry` returns, copies what it needs and never writes it.
#[repr(C)]
#[derive(Debug)]
pub struct WeftViewHeaders {
    /// Comma-separated header names, not NUL-terminated; NULL: every header line.
    pub names: *const u8,
    /// Number of bytes at `names`.
    pub names_len: usize,
}

/// `WeftPluginInfo.flags`: the plugin's handlers may block (disk, locks, synchronous network
/// calls). The host never calls them inline on its I/O threads: it posts each phase call as a
/// `WeftJob` to a worker ring attached with `WeftPluginDescriptor.attach_worker`, and the
/// plugin answers through `WeftHostApi.complete`. A library with such a plugin must provide
/// `attach_worker`.
pub const WEFT_PLUGIN_FLAG_BLOCKING: u32 = 1;

/// `WeftPluginInfo.flags`: the plugin's request-body phase (if declared) wants the whole body
/// in one call (buffered, up to the configured limit) instead of chunk by chunk (streamed, the
/// default when the phase bit is set).
pub const WEFT_PLUGIN_FLAG_REQUEST_BODY_BUFFERED: u32 = 2;
/// `WeftPluginInfo.flags`: the same for the response-body phase.
pub const WEFT_PLUGIN_FLAG_RESPONSE_BODY_BUFFERED: u32 = 4;

/// One phase call posted to a worker ring (an entry of the ring: the `WEFT_RING_*` constants give
/// the layout, `docs/abi.md` the protocol). The worker runs phase `phase` of instance `instance`
/// over the view at `arena + slot * slot_size` (its `call` field equals `call` here), writes its
/// mutation records at the output location `arena + out_slot * slot_size + out_off` (up to the end
/// of that slot), and then calls `WeftHostApi.complete(instance, slot, call, result, out_len)`.
///
/// # Ownership and thread safety
/// A job is a plain value copied out of the ring; it owns nothing. The view and the output
/// location belong to the host and are lent to the worker from the moment the job is published
/// until its `complete` call: the worker may read the view and write the output location on any
/// one thread during that time, and must touch neither after `complete`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeftJob {
    /// The request's slot: the view is at `arena + slot * slot_size`.
    pub slot: u32,
    /// The slot's generation, equal to the view's `generation`.
    pub generation: u32,
    /// The plugin instance to run, as given to `init`.
    pub instance: u64,
    /// The phase to run (a `WeftPhase` value).
    pub phase: u32,
    /// The call's number, equal to the view's `call`; passed back to `complete`.
    pub call: u32,
    /// The slot that holds the output location. Usually a second slot the host leased for this
    /// call, so the bytes the plugin writes (a local reply body, say) can be handed to the HTTP
    /// library without a copy; it may be `slot` itself.
    pub out_slot: u32,
    /// Offset of the output location within `out_slot`: a multiple of 8, at most `slot_size`;
    /// when `out_slot == slot` it is at or after `view.size`. The capacity is
    /// `slot_size - out_off`.
    pub out_off: u32,
}

// The worker-ring layout. A ring is a region the host maps and hands to `attach_worker`: a
// 256-byte header, then `capacity` WeftJob entries. These constants are the whole contract
// for a consumer in another language (C, Go): the host's ring module is built from them.

/// The `magic` word of a worker ring (`uint32_t` at `WEFT_RING_OFFSET_MAGIC`): the bytes "WFTR"
/// read as a little-endian integer. A consumer refuses a ring without it.
pub const WEFT_RING_MAGIC: u32 = 0x52544657;
/// The `version` word of a worker ring (`uint32_t` at `WEFT_RING_OFFSET_VERSION`): the layout
/// these `WEFT_RING_*` constants describe. A consumer refuses a ring of another version.
pub const WEFT_RING_VERSION: u32 = 1;
/// Largest ring `capacity` (entries). The capacity is a power of two between 2 and this.
pub const WEFT_RING_MAX_CAPACITY: u32 = 1 << 20;
/// Bytes per ring entry, `sizeof(WeftJob)`; the `desc_size` word holds it. Entry `i` (counting
/// freely from 0) is at
/// `WEFT_RING_OFFSET_DESCRIPTORS + (i & (capacity - 1)) * WEFT_RING_DESC_SIZE`.
pub const WEFT_RING_DESC_SIZE: u32 = 32;
/// Offset of the `magic` word (`uint32_t`, written once by the host before attach).
pub const WEFT_RING_OFFSET_MAGIC: u32 = 0;
/// Offset of the `version` word (`uint32_t`, written once by the host before attach).
pub const WEFT_RING_OFFSET_VERSION: u32 = 4;
/// Offset of the `capacity` word (`uint32_t`, entries, written once by the host before attach).
pub const WEFT_RING_OFFSET_CAPACITY: u32 = 8;
/// Offset of the `desc_size` word (`uint32_t`, equal to `WEFT_RING_DESC_SIZE`; a consumer
/// refuses a ring with another value).
pub const WEFT_RING_OFFSET_DESC_SIZE: u32 = 12;
/// Offset of the `closed` word (`uint32_t`, atomic): 0 while the host may post, 1 once it never
/// will again (set with release order). The worker drains the ring, then leaves.
pub const WEFT_RING_OFFSET_CLOSED: u32 = 16;
/// Offset of the `ring_id` word (`uint64_t`, written once by the host before attach): the ring's
/// identity, never 0, unique in the process; the worker passes it to `worker_exit_ring`.
pub const WEFT_RING_OFFSET_RING_ID: u32 = 24;
/// Offset of the `tail` word (`uint32_t`, atomic, alone in its 64-byte line), written by the
/// host only: entries below it (counting freely, wrapping at 2^32) were published (release).
pub const WEFT_RING_OFFSET_TAIL: u32 = 64;
/// Offset of the `head` word (`uint32_t`, atomic, alone in its 64-byte line), written by the
/// worker only: entries below it were consumed and may be reused by the host (release).
pub const WEFT_RING_OFFSET_HEAD: u32 = 128;
/// Offset of the `waiting` word (`uint32_t`, atomic, alone in its 64-byte line): the worker's park
/// flag and futex word, 1 while it is parked or parking, else 0 (`docs/abi.md` gives the protocol).
pub const WEFT_RING_OFFSET_WAITING: u32 = 192;
/// Offset of the first entry: the header's size. The region is 64-byte aligned and
/// `WEFT_RING_OFFSET_DESCRIPTORS + capacity * WEFT_RING_DESC_SIZE` bytes long.
pub const WEFT_RING_OFFSET_DESCRIPTORS: u32 = 256;

// The ring constants are the truth for every consumer; these tie them to the types they describe.
const _: () = {
    assert!(WEFT_RING_MAGIC == u32::from_le_bytes(*b"WFTR"));
    assert!(WEFT_RING_DESC_SIZE as usize == core::mem::size_of::<WeftJob>());
    assert!(WEFT_RING_MAX_CAPACITY.is_power_of_two());
    // The words written once (magic .. ring_id) share the first cache line, apart from the indices.
    assert!(WEFT_RING_OFFSET_RING_ID + 8 <= WEFT_RING_OFFSET_TAIL);
};

/// Called once per configured plugin instance, before any other call for that instance.
///
/// `plugin` indexes the descriptor's plugin array; `instance` is the host-chosen id used in every
/// later call (unique in the process, never reused); `config` is the instance's config block as
/// JSON (`config_len` bytes, NULL only if 0); `slot_count` bounds every later
/// `WeftRequestView.slot`. On failure the plugin writes a UTF-8 message into `err` and returns
/// `WEFT_RESULT_INIT_FAILED`.
///
/// # Ownership and lifetime
/// `config` and `err` (the struct and its bytes) are host memory valid only during the call:
/// copy what must be kept. The host reads `err->len` bytes (at most `err->cap`) only when the
/// call fails, and keeps at most 512 bytes of them with control characters escaped and trailing
/// NULs dropped; an `err->len` above `err->cap` is reported as such next to the message.
///
/// # Thread safety
/// Called on the host thread that creates the instance (at start-up, or the thread applying a
/// config reload), never on a request path. Other instances of the same library may be serving
/// phase calls on other threads meanwhile (a reload), so state shared between instances needs
/// synchronisation.
pub type WeftInitFn = Option<
    unsafe extern "C" fn(
        plugin: u32,
        instance: u64,
        config: *const u8,
        config_len: usize,
        slot_count: u32,
        err: *mut WeftBuf,
    ) -> u32,
>;

/// Runs one phase of one request through one plugin instance: reads `view`, writes mutation
/// records into `out`, returns a `WeftResult` value (or `WEFT_RESULT_PENDING` to finish
/// later through `WeftHostApi.complete`).
///
/// # Ownership and lifetime
/// `view` (and the bytes it refers to) and `out` are host memory. The view and the bytes at
/// `out->ptr` are valid during the call, and for a call answered `WEFT_RESULT_PENDING` until its
/// `complete` returns; the `out` struct itself only during the call. See `WeftRequestView`,
/// `WeftBuf`.
///
/// # Thread safety
/// Called from any host thread (I/O threads, the log thread), concurrently for different
/// requests and instances; the phases of one request are never concurrent and are ordered
/// (happens-before). Runs on the request path, so it must not block: the host does not
/// interrupt a call that does (its watchdog logs and counts one that runs past the configured
/// threshold). Never called for an instance of a `WEFT_PLUGIN_FLAG_BLOCKING` plugin (those
/// get worker-ring jobs).
pub type WeftPhaseFn =
    Option<unsafe extern "C" fn(instance: u64, phase: u32, view: *const WeftRequestView, out: *mut WeftBuf) -> u32>;

/// Called on host threads that will call phases, before their first phase call, so the plugin
/// runtime can bind the thread off the request path. May be NULL.
///
/// # Ownership and thread safety
/// No arguments, no memory. Called on the thread being bound, concurrently with phase calls on
/// other threads. A hint only: a thread may make phase calls without it (e.g. for a library a
/// config reload added) or get it more than once, so it must be idempotent and phase calls must
/// work without it.
pub type WeftThreadStartFn = Option<unsafe extern "C" fn()>;

/// Called at most once per instance when the host retires it: at process shutdown once requests
/// in flight have drained, when a replaced config is no longer in use, or at once when the config
/// reload that created the instance fails (another instance's `init` failed, say). May be NULL.
///
/// # Ownership and thread safety
/// No memory changes hands. Called on a host thread (the main thread, the reloading thread, or a
/// thread of its own after a reload), possibly while other instances of the library serve phase
/// calls. The host
/// sends the instance nothing new by then, but a call it cancelled may still be outstanding with
/// the plugin (its `complete` is answered `WEFT_RESULT_CANCELLED`), and at process exit a call
/// that outlived the drain timeout may still be running.
pub type WeftShutdownFn = Option<unsafe extern "C" fn(instance: u64)>;

/// Starts one worker that consumes the worker ring at `ring` (`ring_len` bytes, layout in the
/// `WEFT_RING_*` constants) until the ring's `closed` word is set and the ring is drained, then
/// calls `WeftHostApi.worker_exit_ring(ring, ring_id)` (with the `ring_id` word read from the
/// ring's header at attach time; on a host without that function, `WeftHostApi.worker_exit`)
/// and never touches the ring again. Jobs refer to slots of the arena at `arena`, seen as
/// `slot_count` slots of `slot_size` bytes: the request slots (below the `slot_count` given to
/// `init`, where views are), then the host's out slots (where a job's output location usually
/// is). This `slot_count` is therefore larger than init's. Must return at once (the worker runs
/// on the plugin's own thread or goroutine): `WEFT_RESULT_OK`, or an error code if no worker
/// could be started. May be NULL when no plugin is flagged blocking.
///
/// # Ownership and lifetime
/// Both regions belong to the host. `ring` stays mapped until the worker's exit call and the
/// host's last post to it; of the arena, the worker may use only the slots a job names (its view
/// and its output location), from the job's publication until that job's `complete` returns.
///
/// # Thread safety
/// Called once per ring, on the host thread that will post to it: the first time that thread
/// posts a job for this library, and again, for a new ring, when its last ring failed (the
/// attach was refused or the worker left), at most once a second per thread and library. Calls
/// for different rings may run concurrently. The ring has one producer (that host thread) and
/// one consumer: the started worker alone may read jobs and write `head` (the ring protocol in
/// `docs/abi.md` gives the atomic orderings).
pub type WeftAttachWorkerFn = Option<
    unsafe extern "C" fn(ring: *mut c_void, ring_len: usize, arena: *const u8, slot_size: u32, slot_count: u32) -> u32,
>;

/// Tells the plugin that the host stopped waiting for a call it answered
/// `WEFT_RESULT_PENDING` (or a worker job it holds): the instance's deadline passed, or the
/// request went away. `instance`, `slot` and `call` name the call as its view did (`slot` and
/// `call` of `WeftRequestView`, or of `WeftJob`). The plugin should stop the work; the call is
/// still the plugin's until it completes it, and that `complete` returns
/// `WEFT_RESULT_CANCELLED` (the result is discarded and the slot goes back to the host).
///
/// # Ownership and lifetime
/// Only integers are passed; nothing of the call's memory changes owner by this call.
///
/// # Thread safety
/// Called at most once per call, on the host thread that gave up on it, after the host marked
/// the call cancelled; it may race with the plugin's own `complete` of the same call (which
/// then returns `WEFT_RESULT_CANCELLED`). Must return promptly without blocking; may call
/// `complete`. Optional (NULL: the plugin learns of the cancellation from `complete`).
pub type WeftCancelFn = Option<unsafe extern "C" fn(instance: u64, slot: u32, call: u32)>;

/// The host's function a `WeftRunOnThreadFn` calls: it runs the calling thread's work (a
/// serving thread's event loop, say) and returns when that work is done.
///
/// # Ownership and thread safety
/// `arg` is the host's, passed through unchanged; the plugin must not read it or keep it past
/// the `run_on_thread` call it came with. To be called on the thread that called
/// `run_on_thread`, during that call; any other call (a second one, one from another thread,
/// one after `run_on_thread` returned) returns at once and runs nothing. Never unwinds into the
/// plugin.
pub type WeftThreadBodyFn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

/// Runs `body(arg)` on the calling thread from inside the plugin's language runtime and
/// returns after it. A host runs a thread's whole event loop this way, so that the phase calls
/// that thread makes into this library are calls nested in the runtime: for a Go library, the
/// runtime's entry for a thread without Go frames, which takes one lock of the runtime shared by
/// every such thread, is not taken per call. May be NULL (the host runs the work directly).
///
/// # Ownership and thread safety
/// Only `body` and `arg` are passed; both stay the host's. Called on a host thread before it
/// makes phase calls, at most once per thread and for the thread's remaining life, perhaps at
/// the same time on other threads. The plugin calls `body(arg)` once, on the calling thread,
/// before it returns; while `body` runs, the host calls this and other libraries' functions
/// from the thread as usual. If the plugin does not call it, the host runs the work itself once
/// this returns (not nested).
pub type WeftRunOnThreadFn = Option<unsafe extern "C" fn(body: WeftThreadBodyFn, arg: *mut c_void)>;

/// What `weft_plugin_entry` returns.
///
/// The first two fields are the stable prefix of every ABI version: the host reads
/// `abi_version` and `descriptor_size` before anything else. It refuses the library if
/// `abi_version` differs from its own, or if `descriptor_size` is not the size of a version-1
/// descriptor: its own `sizeof(WeftPluginDescriptor)`, the size before `view_headers` was
/// appended (128 bytes on 64-bit targets), before `run_on_thread` (120 bytes), before `cancel`
/// (112 bytes), or the first one, before `attach_worker` (104 bytes). Fields a plugin's
/// descriptor predates read as NULL.
///
/// # Ownership and lifetime
/// Owned by the plugin library, with everything it points to (`runtime_version`, `plugins`,
/// their names, `load_error`); all must stay valid and unchanged while the library is loaded
/// (libraries are never unloaded, so: for the life of the process).
///
/// # Thread safety
/// The host reads it once, on the loading thread right after `weft_plugin_entry` returns (a
/// library is entered once per process), copies what it needs and never writes it. The
/// functions it holds state their own threading rules.
#[repr(C)]
#[derive(Debug)]
pub struct WeftPluginDescriptor {
    /// Must equal `WEFT_ABI_VERSION`.
    pub abi_version: u32,
    /// `sizeof(WeftPluginDescriptor)` as the plugin was compiled: the host's, or the size of an
    /// earlier version-1 descriptor (before `view_headers`, `run_on_thread`, `cancel` or
    /// `attach_worker` was appended; the host reads the fields it lacks as NULL).
    pub descriptor_size: u32,
    /// `sizeof(WeftRequestView)` as the plugin was compiled: the host's, or the size before
    /// `server_name` was appended (120 bytes on 64-bit targets; such a plugin ignores the field).
    pub request_view_size: u32,
    /// `sizeof(WeftMutation)` as the plugin was compiled; must equal the host's.
    pub mutation_size: u32,
    /// `sizeof(WeftHostApi)` as the plugin was compiled; the host's must be at least this.
    pub host_api_size: u32,
    /// `WEFT_RUNTIME_NATIVE` or `WEFT_RUNTIME_GO`. The host goes by the library file (a Go
    /// library carries a `.go.buildinfo` section) and warns when this field disagrees.
    pub runtime: u32,
    /// Version of the plugin's language runtime (e.g. `go1.26.8`), UTF-8, not NUL-terminated,
    /// may be empty; NULL only when `runtime_version_len` is 0.
    pub runtime_version: *const u8,
    /// Number of bytes at `runtime_version`.
    pub runtime_version_len: usize,
    /// Number of entries in `plugins` (at most 4096).
    pub plugin_count: u32,
    /// Reserved; zero.
    pub flags: u32,
    /// `plugin_count` `WeftPluginInfo` entries; NULL only when `plugin_count` is 0.
    pub plugins: *const WeftPluginInfo,
    /// If registration itself failed (e.g. two plugins with one name), a UTF-8 message and
    /// `plugin_count` 0; the host refuses the library with this message. Not NUL-terminated;
    /// NULL (or empty) when registration succeeded.
    pub load_error: *const u8,
    /// Number of bytes at `load_error`; 0 when registration succeeded.
    pub load_error_len: usize,
    /// Creates plugin instances; required (a library with NULL here is refused).
    pub init: WeftInitFn,
    /// Runs phase calls; required (a library with NULL here is refused).
    pub on_phase: WeftPhaseFn,
    /// Binds a host thread to the plugin's runtime; optional (NULL: never called).
    pub thread_start: WeftThreadStartFn,
    /// Retires an instance; optional (NULL: never called).
    pub shutdown: WeftShutdownFn,
    /// Starts a worker on a worker ring; required when a plugin has `WEFT_PLUGIN_FLAG_BLOCKING`
    /// (or an instance is configured `blocking`), else may be NULL.
    pub attach_worker: WeftAttachWorkerFn,
    /// Told when the host stops waiting for a pending call or a worker job; optional (NULL:
    /// never called).
    pub cancel: WeftCancelFn,
    /// Runs a host thread's work inside the plugin's runtime; optional (NULL: the host runs it
    /// directly).
    pub run_on_thread: WeftRunOnThreadFn,
    /// `plugin_count` entries parallel to `plugins`: the header lines each plugin reads; optional
    /// (NULL: every plugin reads every line).
    pub view_headers: *const WeftViewHeaders,
}

/// Host callback for plugin log lines: `level` is a `WEFT_LOG_*` value, `instance` the instance
/// the line is about (unknown ids log as `?`), `msg` is `len` bytes of UTF-8 (invalid sequences
/// are replaced; lines over 16 KiB are truncated). Control characters (CR, LF, ESC, ...; TAB
/// kept) are written escaped, so one call is one log line. Each instance may log 100 lines per
/// second; further lines are dropped and counted (unknown ids share one budget).
///
/// # Ownership and lifetime
/// `msg` belongs to the plugin and needs to be valid only during the call (the host copies it);
/// NULL is allowed with `len` 0.
///
/// # Thread safety
/// Thread-safe; may be called from any thread, inside or outside a phase call (from `init`,
/// `shutdown` and worker threads too). Never unwinds into the plugin.
pub type WeftLogFn = Option<unsafe extern "C" fn(level: u32, instance: u64, msg: *const u8, len: usize)>;

/// Finishes a phase call that answered `WEFT_RESULT_PENDING` (or a worker-ring job), from any
/// thread, at most once per call. `slot` and `call` are the view's; `result` is the handler's
/// `WeftResult` (never `WEFT_RESULT_PENDING`); `out_len` is the number of mutation bytes written at
/// the call's output location (the `out->ptr` of the phase call, or the job's output offset), at
/// most its capacity. Returns `WEFT_RESULT_OK`, or `WEFT_RESULT_STALE_HANDLE` /
/// `WEFT_RESULT_ALREADY_COMPLETED` / `WEFT_RESULT_CANCELLED` / `WEFT_RESULT_INVALID_ARGUMENT`;
/// every error leaves the host and the request unharmed. After it returns the plugin must not touch
/// the view or the output bytes again.
///
/// # Ownership and lifetime
/// No pointer is passed. A call answered `WEFT_RESULT_OK` or `WEFT_RESULT_CANCELLED` hands the view
/// and the output bytes back to the host; after `WEFT_RESULT_INVALID_ARGUMENT` the call stays
/// outstanding and they stay lent.
///
/// # Thread safety
/// Thread-safe; may be called from any thread, even from inside the very `on_phase` call it
/// completes before that returns `WEFT_RESULT_PENDING`. Concurrent completions of one call from
/// several threads are safe: exactly one is taken (`WEFT_RESULT_OK`, or `WEFT_RESULT_CANCELLED`
/// with the call's memory released once) and every other gets `WEFT_RESULT_ALREADY_COMPLETED`. The
/// writes the plugin made to the output bytes before calling it are visible to the host afterwards.
/// Never unwinds into the plugin.
pub type WeftCompleteFn =
    Option<unsafe extern "C" fn(instance: u64, slot: u32, call: u32, result: u32, out_len: u32) -> u32>;

/// Tells the host that the worker on `ring` has stopped and will never touch the ring again.
/// Superseded by `WeftWorkerExitRingFn`, which names the ring by its id too: an address alone
/// cannot tell a late or second call for a ring that is gone from the live ring mapped at the
/// same address since. So the host trusts this call only for a ring it has closed already
/// (releasing it then); for a ring still open it closes the ring and keeps it mapped until an
/// exit call comes for the closed ring (a call of the worker that really left never comes:
/// the region then stays mapped). The posting thread gets a new ring on its next job.
///
/// # Ownership and lifetime
/// `ring` is the pointer `attach_worker` received; for a closed ring the call gives the region
/// back to the host, which may unmap it at once. A pointer that is not an attached ring is
/// logged and ignored.
///
/// # Thread safety
/// Thread-safe; called from the worker's thread (any thread), once the worker is done with the
/// ring. Never unwinds into the plugin.
pub type WeftWorkerExitFn = Option<unsafe extern "C" fn(ring: *const c_void)>;

/// Tells the host that the worker of the ring at `ring` whose header holds `ring_id` (the `ring_id`
/// word at `WEFT_RING_OFFSET_RING_ID`, read at attach time) has stopped and will never touch the
/// ring again. Returns `WEFT_RESULT_OK`, or `WEFT_RESULT_STALE_HANDLE` (logged, nothing done) when
/// no attached ring has that address and id: a second call, or a late one for a ring whose address
/// another ring has taken since. A worker that leaves a ring still open (before `closed`) may call
/// it too: the host closes the ring, jobs left in it reach their deadline, and the posting thread
/// gets a new ring on its next job.
///
/// # Ownership and lifetime
/// `ring` is the pointer `attach_worker` received; an `WEFT_RESULT_OK` call gives the region back
/// to the host, which may unmap it at once.
///
/// # Thread safety
/// Thread-safe; called from the worker's thread (any thread), once the worker is done with the
/// ring. Never unwinds into the plugin.
pub type WeftWorkerExitRingFn = Option<unsafe extern "C" fn(ring: *const c_void, ring_id: u64) -> u32>;

/// The host's function table, passed to `weft_plugin_entry`.
///
/// # Ownership and lifetime
/// Owned by the host and valid for the life of the process; the plugin may keep the pointer
/// and must not write through it. The table may be shorter than the plugin's header says (an
/// older host): check `size` before using a field.
///
/// # Thread safety
/// Immutable: any thread may read it at any time. Each function in it is thread-safe (see
/// `WeftLogFn`, `WeftCompleteFn`, `WeftWorkerExitFn`, `WeftWorkerExitRingFn`).
#[repr(C)]
#[derive(Debug)]
pub struct WeftHostApi {
    /// `WEFT_ABI_VERSION` of the host.
    pub abi_version: u32,
    /// `sizeof(WeftHostApi)` of the host: a function whose field ends past it is absent.
    pub size: u32,
    /// Reserved for later functions; NULL in this version. Never dereference it.
    pub context: *mut c_void,
    /// Writes a log line through the host's logger, tagged with the plugin instance.
    pub log: WeftLogFn,
    /// Finishes a pending phase call or a worker-ring job.
    pub complete: WeftCompleteFn,
    /// Reports that a worker has left its ring (by address only; see `WeftWorkerExitFn`).
    pub worker_exit: WeftWorkerExitFn,
    /// Reports that a worker has left its ring, named by address and ring id.
    pub worker_exit_ring: WeftWorkerExitRingFn,
}

/// Signature of the one symbol a plugin library exports, `weft_plugin_entry`. Called once, on the
/// loading thread, before any other call into the library.
///
/// # Ownership and lifetime
/// `host` is owned by the host and valid for the life of the process (the plugin may keep it).
/// The returned descriptor is owned by the library (see `WeftPluginDescriptor`).
///
/// # Thread safety
/// Called once per library per process (a library used by several configs is entered once),
/// on the thread that loads it, under the host's load lock (never concurrently with another
/// library's entry).
pub type WeftPluginEntryFn = Option<unsafe extern "C" fn(host: *const WeftHostApi) -> *const WeftPluginDescriptor>;

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, offset, bytes) of every word of the ring header.
    const WORDS: [(&str, u32, u32); 10] = [
        ("magic", WEFT_RING_OFFSET_MAGIC, 4),
        ("version", WEFT_RING_OFFSET_VERSION, 4),
        ("capacity", WEFT_RING_OFFSET_CAPACITY, 4),
        ("desc_size", WEFT_RING_OFFSET_DESC_SIZE, 4),
        ("closed", WEFT_RING_OFFSET_CLOSED, 4),
        ("ring_id", WEFT_RING_OFFSET_RING_ID, 8),
        ("tail", WEFT_RING_OFFSET_TAIL, 4),
        ("head", WEFT_RING_OFFSET_HEAD, 4),
        ("waiting", WEFT_RING_OFFSET_WAITING, 4),
        ("descriptors", WEFT_RING_OFFSET_DESCRIPTORS, 0),
    ];

    #[test]
    fn ring_header_words_are_aligned_and_disjoint() {
        for (i, &(name, off, len)) in WORDS.iter().enumerate() {
            // A word is aligned to its size; the entries, to a cache line.
            let align = if len == 0 { 64 } else { len };
            assert_eq!(off % align, 0, "{name} misaligned");
            if let Some(&(next, next_off, _)) = WORDS.get(i + 1) {
                assert!(off + len <= next_off, "{name} overlaps {next}");
            }
        }
        assert_eq!(
            WEFT_RING_OFFSET_DESCRIPTORS as usize % core::mem::align_of::<WeftJob>(),
            0
        );
    }

    #[test]
    fn ring_indices_have_cache_lines_of_their_own() {
        // Producer and consumer must never write the same line: tail, head and waiting each sit
        // at the start of a line that holds nothing else, and none shares the first line.
        let lines = [WEFT_RING_OFFSET_TAIL, WEFT_RING_OFFSET_HEAD, WEFT_RING_OFFSET_WAITING];
        for (i, off) in lines.iter().enumerate() {
            assert_eq!(off % 64, 0, "index word {i} does not start a cache line");
            assert!(*off >= 64, "index word {i} shares the first line with the fixed words");
            assert!(off + 64 <= WEFT_RING_OFFSET_DESCRIPTORS);
        }
        assert!(lines.windows(2).all(|w| w[0] + 64 <= w[1]));
    }

    #[test]
    fn job_layout_is_the_ring_entry() {
        assert_eq!(core::mem::size_of::<WeftJob>(), WEFT_RING_DESC_SIZE as usize);
        assert_eq!(core::mem::offset_of!(WeftJob, instance), 8);
        assert_eq!(core::mem::offset_of!(WeftJob, out_off), 28);
        assert_eq!(WEFT_RING_MAGIC.to_le_bytes(), *b"WFTR");
    }

    #[test]
    fn unknown_result_codes_read_as_internal() {
        for raw in 0..=15 {
            assert_eq!(WeftResult::from_raw(raw) as u32, raw, "a known code round-trips");
        }
        assert_eq!(WeftResult::from_raw(16), WeftResult::Internal);
        assert_eq!(WeftResult::from_raw(u32::MAX), WeftResult::Internal);
    }
}
