package weft

import (
	"context"
	"iter"
	"net/netip"

	"github.com/weftrs/weft/cgo/internal/core"
)

// Context is a handler's access to the current phase call: accessors that read the request
// (and response) in place from host memory, and mutation methods that encode changes straight
// into the host's output buffer. The host validates the whole batch after the call and applies
// it or rejects it as a unit.
//
// Lifetime: a Context and every string or byte slice it returns are valid only until the
// handler returns, or for a call handed to [Context.Go] or [Context.Defer] until the call is
// completed; they point into host memory that is reused afterwards (strings.Clone what you
// keep). A Context is used by one goroutine at a time: the handler, or the continuation it
// handed the call to.
//
// The accessors and mutation methods do not allocate.
type Context core.Context

func (c *Context) core() *core.Context { return (*core.Context)(c) }

// Phase returns the phase being run.
func (c *Context) Phase() Phase { return c.core().Phase() }

// RequestID returns the request's id: unique within the host process, never 0.
func (c *Context) RequestID() uint64 { return c.core().RequestID() }

// Method returns the request method, e.g. "GET".
func (c *Context) Method() string { return c.core().Method() }

// Path returns the request path without the query string; it starts with "/".
func (c *Context) Path() string { return c.core().Path() }

// Query returns the query string without the leading "?", or "" when there is none.
func (c *Context) Query() string { return c.core().Query() }

// Host returns the host the client asked for (:authority or the host header), or "".
func (c *Context) Host() string { return c.core().Host() }

// ClientAddr returns the client's socket address, IP and port, as "ip:port" ("[ip]:port" for
// IPv6). Two connections of one client differ in the port: key per-client state on
// [Context.ClientIP] instead.
func (c *Context) ClientAddr() string { return c.core().ClientAddr() }

// ClientIP returns the client's IP address without the port (IPv4-mapped IPv6 addresses
// unmapped), or the zero netip.Addr when the host gave no parsable address. It is the
// connection's peer: behind another proxy, read X-Forwarded-For yourself.
func (c *Context) ClientIP() netip.Addr { return c.core().ClientIP() }

// ClientPort returns the client's source port, or 0 when the host gave no parsable address.
func (c *Context) ClientPort() uint16 { return c.core().ClientPort() }

// Scheme returns "http" or "https" as seen by the proxy.
func (c *Context) Scheme() string { return c.core().Scheme() }

// ServerName returns the TLS server name (SNI) the client sent in its handshake, or "" on a
// plain-HTTP listener and when a TLS client sent none (e.g. it connected by IP address). Unlike
// Host, it is what the TLS layer saw, so it names the certificate the client asked for.
func (c *Context) ServerName() string { return c.core().ServerName() }

// Version returns the protocol version, e.g. "HTTP/1.1".
func (c *Context) Version() string { return c.core().Version() }

// Status returns the response status, or 0 before the response-headers phase.
func (c *Context) Status() int { return c.core().Status() }

// RequestHeader returns the first value of request header name (matched case-insensitively;
// lowercase names are matched fastest) and whether it is present.
func (c *Context) RequestHeader(name string) (string, bool) { return c.core().RequestHeader(name) }

// RequestHeaderValues yields every value of request header name, in order.
func (c *Context) RequestHeaderValues(name string) iter.Seq[string] {
	return c.core().RequestHeaderValues(name)
}

// RequestHeaders yields every request header as (lowercase name, value), in order; a repeated
// header appears once per value.
func (c *Context) RequestHeaders() iter.Seq2[string, string] { return c.core().RequestHeaders() }

// ResponseHeader returns the first value of response header name and whether it is present.
// There are no response headers before the response-headers phase.
func (c *Context) ResponseHeader(name string) (string, bool) { return c.core().ResponseHeader(name) }

// ResponseHeaderValues yields every value of response header name, in order.
func (c *Context) ResponseHeaderValues(name string) iter.Seq[string] {
	return c.core().ResponseHeaderValues(name)
}

// ResponseHeaders yields every response header as (lowercase name, value), in order.
func (c *Context) ResponseHeaders() iter.Seq2[string, string] { return c.core().ResponseHeaders() }

// SetRequestHeader replaces every value of request header name with value.
func (c *Context) SetRequestHeader(name, value string) { c.core().SetRequestHeader(name, value) }

// AddRequestHeader appends a value for request header name.
func (c *Context) AddRequestHeader(name, value string) { c.core().AddRequestHeader(name, value) }

// RemoveRequestHeader removes every value of request header name.
func (c *Context) RemoveRequestHeader(name string) { c.core().RemoveRequestHeader(name) }

// SetPath replaces the request path (it must start with "/" and hold no query).
func (c *Context) SetPath(path string) { c.core().SetPath(path) }

// SetQuery replaces the query string (without "?"; "" removes it).
func (c *Context) SetQuery(query string) { c.core().SetQuery(query) }

// SetResponseHeader replaces every value of response header name with value.
func (c *Context) SetResponseHeader(name, value string) { c.core().SetResponseHeader(name, value) }

// AddResponseHeader appends a value for response header name.
func (c *Context) AddResponseHeader(name, value string) { c.core().AddResponseHeader(name, value) }

// RemoveResponseHeader removes every value of response header name.
func (c *Context) RemoveResponseHeader(name string) { c.core().RemoveResponseHeader(name) }

// SetStatus sets the response status (response-headers phase).
func (c *Context) SetStatus(code int) { c.core().SetStatus(code) }

// Reply ends the request with a local reply: status, body, and headers given as name, value
// pairs. In a request phase the upstream is not contacted; in a response phase its response
// is discarded. An odd number of header strings fails the phase. body is copied before Reply
// returns.
func (c *Context) Reply(status int, body []byte, headers ...string) {
	c.core().Reply(status, body, headers...)
}

// Fail ends the phase as a handler failure: the phase's mutations are discarded, err is logged
// through the host, and the instance's failure policy applies. Return right after it; the
// first failure of a phase is the one reported.
func (c *Context) Fail(err error) { c.core().Fail(err) }

// Log writes msg through the host's logger at level, tagged with this plugin instance.
func (c *Context) Log(level Level, msg string) { c.core().Log(level, msg) }

// Logf formats a message as fmt.Sprintf does (allocating) and logs it at level.
func (c *Context) Logf(level Level, format string, args ...any) {
	c.core().Logf(level, format, args...)
}

// Context returns a context.Context for this phase call, to pass to HTTP clients, databases
// and the like from a continuation ([Context.Go]). It is cancelled, with cause
// [ErrCallFinished], as soon as the call finishes: when the handler returns, or for a deferred
// call when it is completed; and for a deferred call, with cause [ErrCancelled], as soon as the
// host gives up on it (the instance's deadline passed, or the request went away), so a
// continuation's HTTP or database call stops when its result can no longer be used. The first
// use in a call allocates.
func (c *Context) Context() context.Context { return c.core().StdContext() }

// Body returns the body bytes of a body call: the current chunk when streamed, the whole body
// when buffered, nil outside body phases. The slice is host memory: read-only, valid until the
// call ends.
func (c *Context) Body() []byte { return c.core().Body() }

// EndOfStream reports whether this is the last body call of its body (its chunk may be
// empty); every body phase ends with exactly one such call.
func (c *Context) EndOfStream() bool { return c.core().EndOfStream() }

// BodyBuffered reports whether Body is the whole body (the plugin asked for buffered mode).
func (c *Context) BodyBuffered() bool { return c.core().BodyBuffered() }

// ReplaceBody replaces this call's body bytes (the chunk, or the whole body when buffered)
// with b; at most once per call. b is copied before ReplaceBody returns.
func (c *Context) ReplaceBody(b []byte) { c.core().ReplaceBody(b) }

// ReplaceBodyString is [Context.ReplaceBody] for a string.
func (c *Context) ReplaceBodyString(s string) { c.core().ReplaceBodyString(s) }

// PrependBody inserts b before this call's body bytes.
func (c *Context) PrependBody(b []byte) { c.core().PrependBody(b) }

// AppendBody appends b after this call's body bytes.
func (c *Context) AppendBody(b []byte) { c.core().AppendBody(b) }

// DropBody drops this call's body bytes (the chunk, or the whole body).
func (c *Context) DropBody() { c.core().DropBody() }

// SkipBody, in a headers phase, tells the host not to call this plugin's body handler for
// this request's (or response's) body, which then streams through untouched.
func (c *Context) SkipBody() { c.core().SkipBody() }

// WSConnID identifies the WebSocket connection: the same in every call of one connection and
// unique within the host process.
func (c *Context) WSConnID() uint64 { return c.core().WSConnID() }

// WSMessage returns the message of a WebSocketMessage call (the close reason or error text in
// WebSocketClose), in place: read-only, valid until the call ends.
func (c *Context) WSMessage() []byte { return c.core().WSMessage() }

// WSText returns the message as a string over host memory, valid until the call ends.
func (c *Context) WSText() string { return c.core().WSText() }

// WSIsBinary reports whether the message is binary (otherwise it is valid UTF-8 text).
func (c *Context) WSIsBinary() bool { return c.core().WSIsBinary() }

// WSCloseCode returns the close code in WebSocketClose (1005: none given; 1006: the
// connection ended without a close frame), 0 in other phases.
func (c *Context) WSCloseCode() int { return c.core().WSCloseCode() }

// WSError returns, in WebSocketClose, why the connection ended when it was not a clean close
// by the client (message too big, slow reader, idle timeout, plugin failure, dropped
// connection); nil otherwise.
func (c *Context) WSError() error { return c.core().WSError() }

// WSSendText sends a text message (valid UTF-8, or the host rejects the batch) to this
// connection.
func (c *Context) WSSendText(s string) { c.core().WSSendText(s) }

// WSSendBinary sends a binary message to this connection.
func (c *Context) WSSendBinary(b []byte) { c.core().WSSendBinary(b) }

// WSClose closes this connection with code (1000..1003, 1007..1014 or 3000..4999) and a reason
// of at most 123 bytes, after the messages sent before it.
func (c *Context) WSClose(code int, reason string) { c.core().WSClose(code, reason) }

// WSJoin adds this connection to room (1..128 bytes of A-Z a-z 0-9 _ - :); a connection
// leaves its rooms when it closes.
func (c *Context) WSJoin(room string) { c.core().WSJoin(room) }

// WSLeave removes this connection from room.
func (c *Context) WSLeave(room string) { c.core().WSLeave(room) }

// WSBroadcastText sends a text message to every member of room (this connection too, if it is
// one), on this proxy and, when proxies share NATS, on the others.
func (c *Context) WSBroadcastText(room, s string) { c.core().WSBroadcastText(room, s) }

// WSBroadcastBinary sends a binary message to every member of room.
func (c *Context) WSBroadcastBinary(room string, b []byte) { c.core().WSBroadcastBinary(room, b) }

// Defer detaches the call from the handler's return: the handler returns, the host waits
// without blocking a thread, and the call finishes when [Deferred.Done] or [Deferred.Fail] is
// called from any goroutine. Until then the continuation owns this Context and the state.
// It fails with [ErrAsyncUnavailable] on a host without asynchronous completion, with
// [ErrAlreadyDeferred] the second time in one call, and with [ErrNotInCall] outside a call.
// Prefer [Context.Go], which also recovers panics.
func (c *Context) Defer() (*Deferred, error) {
	d, err := c.core().Defer()
	return (*Deferred)(d), err
}

// Go runs fn on a new goroutine as the continuation of this call; the handler returns right
// after. The call completes when fn returns: with the mutations made on ctx, or as a handler
// failure if fn returns an error. A panic in fn is recovered, logged, and fails the call.
// On a host without asynchronous completion fn is not run and the phase fails.
func (c *Context) Go(fn func(ctx *Context) error) {
	if fn == nil {
		c.core().Go(nil) // fails the phase with a clear message
		return
	}
	c.core().Go(func(cc *core.Context) error { return fn((*Context)(cc)) })
}

// Deferred is the handle of a phase call that finishes after its handler returned (see
// [Context.Defer]). Exactly one Done or Fail completes the call; it is safe to call from any
// goroutine. A Deferred dropped without either is failed when the garbage collector finds it.
type Deferred core.Deferred

// Done completes the call with the mutations made on its Context (or as the failure recorded
// with [Context.Fail]). It returns nil when the host took the result, [ErrCancelled] when the
// host had given up on the call, [ErrAlreadyCompleted] on a second completion. Afterwards
// neither the Context nor the per-request state may be used.
func (d *Deferred) Done() error { return (*core.Deferred)(d).Done() }

// Fail completes the call as a handler failure: err is logged, the mutations are discarded
// and the instance's failure policy applies. It returns what Done returns.
func (d *Deferred) Fail(err error) error { return (*core.Deferred)(d).Fail(err) }
