// Package core implements the weft Go SDK without cgo: the plugin registry, the zero-copy
// request view decoder, the mutation encoder and the dispatch entry points that the C shim
// (package weft/cabi) and the test host (package weft/wefttest) call.
//
// The Go structs in this file mirror the C layout of include/weft.h (generated from
// abi/src/lib.rs, the weft-abi crate); a test in weft/cabi checks sizes and offsets against the C
// compiler.
//
// # Ownership and lifetime
//
// A request view is owned by the host and valid only during the phase call that passed it in.
// Every string the SDK hands to a handler (method, path, header names and values, ...) is built
// with unsafe.String directly over the view memory: it is not copied, and it must not be used
// after the handler returns. Use strings.Clone to keep one.
package core

import "unsafe"

// ABIVersion is the weft C ABI version this SDK speaks (WEFT_ABI_VERSION).
const ABIVersion = 1

// Runtime kinds reported in the plugin descriptor.
const (
	RuntimeNative = 0
	RuntimeGo     = 1
)

// Result is a weft result code (WeftResult).
type Result uint32

// Result codes; the values are those of the C enum WeftResult.
const (
	ResultOK               Result = 0
	ResultPanic            Result = 1
	ResultInvalidArgument  Result = 2
	ResultUnknownPlugin    Result = 3
	ResultMutationOverflow Result = 4
	ResultInitFailed       Result = 5
	ResultABIMismatch      Result = 6
	ResultUnsupportedPhase Result = 7
	ResultInvalidMutation  Result = 8
	ResultHandlerFailed    Result = 9
	ResultInternal         Result = 10
	// ResultPending: the handler returned but finishes later with one host complete call.
	ResultPending Result = 11
	// ResultStaleHandle, ResultAlreadyCompleted and ResultCancelled are what the host's
	// complete function answers for an unknown call, a second completion and a call the host
	// gave up on (deadline, client gone).
	ResultStaleHandle      Result = 12
	ResultAlreadyCompleted Result = 13
	ResultCancelled        Result = 14
	// ResultBusy: the host could not take the call now (a ring or in-flight limit is full).
	ResultBusy Result = 15
)

var resultNames = [...]string{
	"ok", "panic", "invalid argument", "unknown plugin", "mutation overflow", "init failed",
	"abi mismatch", "unsupported phase", "invalid mutation", "handler failed", "internal",
	"pending", "stale handle", "already completed", "cancelled", "busy",
}

// String returns a short lowercase name of the result code.
func (r Result) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return "unknown result"
}

// Phase is an HTTP processing phase (WeftPhase).
type Phase uint32

// Phases; the values are those of the C enum WeftPhase (WebSocket phases: ws.go).
const (
	PhaseRequestHeaders  Phase = 0
	PhaseRequestBody     Phase = 1
	PhaseResponseHeaders Phase = 2
	PhaseResponseBody    Phase = 3
	PhaseLog             Phase = 4
)

// Mask returns the phase's bit in a plugin's phase set (1 << phase).
func (p Phase) Mask() uint32 {
	if p >= 32 {
		return 0
	}
	return 1 << p
}

// String returns the phase name as used in log lines, e.g. "request_headers".
func (p Phase) String() string {
	switch p {
	case PhaseRequestHeaders:
		return "request_headers"
	case PhaseRequestBody:
		return "request_body"
	case PhaseResponseHeaders:
		return "response_headers"
	case PhaseResponseBody:
		return "response_body"
	case PhaseLog:
		return "log"
	case PhaseWebSocketOpen:
		return "websocket_open"
	case PhaseWebSocketMessage:
		return "websocket_message"
	case PhaseWebSocketClose:
		return "websocket_close"
	}
	return "unknown_phase"
}

// MutationOp is the operation of one mutation record (WeftMutationOp).
type MutationOp uint32

// Mutation operations; the values are those of the C enum WeftMutationOp.
const (
	OpSetRequestHeader     MutationOp = 1
	OpAddRequestHeader     MutationOp = 2
	OpRemoveRequestHeader  MutationOp = 3
	OpSetPath              MutationOp = 4
	OpSetQuery             MutationOp = 5
	OpSetResponseHeader    MutationOp = 6
	OpAddResponseHeader    MutationOp = 7
	OpRemoveResponseHeader MutationOp = 8
	OpSetStatus            MutationOp = 9
	OpLocalReply           MutationOp = 10
	OpLocalReplyHeader     MutationOp = 11
	OpBodyReplace          MutationOp = 12
	OpBodyPrepend          MutationOp = 13
	OpBodyAppend           MutationOp = 14
	OpBodyDrop             MutationOp = 15
	OpSkipBody             MutationOp = 16
)

var opNames = [...]string{
	"", "set_request_header", "add_request_header", "remove_request_header", "set_path",
	"set_query", "set_response_header", "add_response_header", "remove_response_header",
	"set_status", "local_reply", "local_reply_header", "body_replace", "body_prepend",
	"body_append", "body_drop", "skip_body", "ws_send_text", "ws_send_binary", "ws_close",
	"ws_join_room", "ws_leave_room", "ws_broadcast_text", "ws_broadcast_binary",
}

// String returns the snake_case name of the operation.
func (o MutationOp) String() string {
	if o > 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return "unknown_op"
}

// Body flags of a body-phase call (WeftRequestView.body_flags, WEFT_BODY_*).
const (
	// BodyEndOfStream marks the last body call of a phase (the chunk may be empty).
	BodyEndOfStream = 1
	// BodyBuffered marks a call that carries the whole body (buffered mode).
	BodyBuffered = 2
)

// Plugin flags (WeftPluginInfo.flags, WEFT_PLUGIN_FLAG_*).
const (
	// FlagBlocking: the host never calls the plugin inline; it posts each phase call to a
	// worker ring (AttachWorker) and the SDK runs it on a goroutine of the worker pool.
	FlagBlocking = 1
	// FlagRequestBodyBuffered: the request-body phase wants the whole body in one call.
	FlagRequestBodyBuffered = 2
	// FlagResponseBodyBuffered: the response-body phase wants the whole body in one call.
	FlagResponseBodyBuffered = 4
)

// Level is a host log level.
type Level uint32

// Log levels; the values are WEFT_LOG_ERROR .. WEFT_LOG_DEBUG.
const (
	LogError Level = 1
	LogWarn  Level = 2
	LogInfo  Level = 3
	LogDebug Level = 4
)

// String returns the lowercase level name.
func (l Level) String() string {
	switch l {
	case LogError:
		return "error"
	case LogWarn:
		return "warn"
	case LogInfo:
		return "info"
	case LogDebug:
		return "debug"
	}
	return "unknown"
}

// Str mirrors WeftStr: len bytes at off bytes from the start of the view.
type Str struct {
	Off uint32
	Len uint32
}

// end is the offset just past the string, computed without overflow.
func (s Str) end() uint64 { return uint64(s.Off) + uint64(s.Len) }

// Header mirrors WeftHeader.
type Header struct {
	Name  Str
	Value Str
}

// RequestView mirrors WeftRequestView, the fixed part at offset 0 of a request view.
type RequestView struct {
	Size            uint32
	Phase           uint32
	RequestID       uint64
	Slot            uint32
	Generation      uint32
	Method          Str
	Path            Str
	Query           Str
	Host            Str
	ClientAddr      Str
	Scheme          Str
	Version         Str
	ReqHeadersOff   uint32
	ReqHeaderCount  uint32
	Status          uint32
	RespHeadersOff  uint32
	RespHeaderCount uint32
	// Call names this phase call for the host's complete function, together with Slot; never 0.
	Call uint32
	// Body, BodyLen and BodyFlags describe the body bytes of a body-phase call: host memory
	// outside the view, valid only during the call (nil and 0 in other phases).
	Body      unsafe.Pointer
	BodyLen   uint32
	BodyFlags uint32
	// ServerName is the TLS server name (SNI) the client sent; empty on plain HTTP and when the
	// client sent none. Appended after the first version-1 view: a host that predates it refuses
	// a library built with it (its request_view_size differs), so it is always present here.
	ServerName Str
}

// Mutation mirrors WeftMutation, the 16-byte header of one mutation record. It is followed by
// ALen bytes of operand a, BLen bytes of operand b and zero padding to a multiple of 4.
type Mutation struct {
	Op   uint32
	Arg  uint32
	ALen uint32
	BLen uint32
}

// Buf mirrors WeftBuf, a host-owned output buffer.
type Buf struct {
	Ptr *byte
	Cap uint32
	Len uint32
}

// Limits of the host's validation of a mutation batch (WEFT_MAX_*; weft/cabi's layout test
// checks them against weft.h). The SDK does not enforce them; the test host mirrors the host.
const (
	MaxMutationRecords = 256
	MaxHeaderNameLen   = 256
	MaxHeaderValueLen  = 16 * 1024
	MaxPathLen         = 8 * 1024
	MaxWSRoomLen       = 128
)

// Sizes of the mirrored structs in bytes.
const (
	SizeofStr         = 8
	SizeofHeader      = 16
	SizeofRequestView = 128
	SizeofMutation    = 16
)

// RecordSize returns the number of bytes a mutation record with operands of aLen and bLen bytes
// occupies in the output buffer, padding included.
func RecordSize(aLen, bLen int) int {
	return SizeofMutation + (aLen+bLen+3)&^3
}
