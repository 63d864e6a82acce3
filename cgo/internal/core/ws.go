package core

import (
	"errors"
)

// WebSocket phases: a route of the proxy can hand its WebSocket connections to a plugin. The
// host answers the handshake and calls the plugin's WebSocket handlers: one open call, one call
// per whole message (in order, never two at once for one connection), one close call. The
// connection keeps its slot from open to close, so the per-request state S is per-connection
// state. Messages are read in place (Context.WSMessage, like a body chunk); answers are
// mutation records the host carries out after the call: sends to this connection, close, join
// or leave a room, broadcast to a room (on every proxy when the proxies share NATS).

// WebSocket phases (WeftPhase values 5..7).
const (
	PhaseWebSocketOpen    Phase = 5
	PhaseWebSocketMessage Phase = 6
	PhaseWebSocketClose   Phase = 7
)

// WebSocket mutation operations (WeftMutationOp values 17..23).
const (
	OpWSSendText        MutationOp = 17
	OpWSSendBinary      MutationOp = 18
	OpWSClose           MutationOp = 19
	OpWSJoinRoom        MutationOp = 20
	OpWSLeaveRoom       MutationOp = 21
	OpWSBroadcastText   MutationOp = 22
	OpWSBroadcastBinary MutationOp = 23
)

// WebSocket flags of WeftRequestView.body_flags (WEFT_WS_*).
const (
	// WSBinary: the message of a WebSocketMessage call is binary (else UTF-8 text).
	WSBinary = 4
	// WSError: the connection of a WebSocketClose call ended with an error.
	WSError = 8
)

func isWSPhase(p Phase) bool {
	return p == PhaseWebSocketOpen || p == PhaseWebSocketMessage || p == PhaseWebSocketClose
}

// wsPhases returns the phase bits implied by the WebSocket handlers.
func wsPhases(open, message, closed bool) uint32 {
	var m uint32
	if open {
		m |= PhaseWebSocketOpen.Mask()
	}
	if message {
		m |= PhaseWebSocketMessage.Mask()
	}
	if closed {
		m |= PhaseWebSocketClose.Mask()
	}
	return m
}

// runWS runs a WebSocket handler; WebSocketError runs before WebSocketClose when the
// connection ended with an error.
func (t *typedInstance[C, S]) runWS(ctx *Context, state *S) {
	switch ctx.phase {
	case PhaseWebSocketOpen:
		t.p.WebSocketOpen(ctx, t.cfg, state)
	case PhaseWebSocketMessage:
		t.p.WebSocketMessage(ctx, t.cfg, state)
	case PhaseWebSocketClose:
		if t.p.WebSocketError != nil && ctx.WSError() != nil {
			t.p.WebSocketError(ctx, t.cfg, state)
		}
		if t.p.WebSocketClose != nil {
			t.p.WebSocketClose(ctx, t.cfg, state)
		}
	}
}

// WSConnID identifies the WebSocket connection (the upgrade request's id): unique within the
// host process, the same in every call of the connection.
func (c *Context) WSConnID() uint64 { return c.RequestID() }

// WSMessage returns the message of a WebSocketMessage call (the close reason or error text in
// WebSocketClose), in place: valid only until the handler returns, never written.
func (c *Context) WSMessage() []byte { return c.Body() }

// WSText returns the message as a string over host memory (valid until the handler returns).
func (c *Context) WSText() string { return bytesString(c.Body()) }

// WSIsBinary reports whether the message is binary (else it is valid UTF-8 text).
func (c *Context) WSIsBinary() bool { return c.view != nil && c.view.BodyFlags&WSBinary != 0 }

// WSCloseCode returns the close code in WebSocketClose (1005: none given, 1006: no close
// frame, the connection just ended).
func (c *Context) WSCloseCode() int {
	if c.phase != PhaseWebSocketClose || c.view == nil {
		return 0
	}
	return int(c.view.Status)
}

// WSError returns, in WebSocketClose, why the connection ended if it was not a clean close by
// the client (too big a message, a slow reader, an idle timeout, a plugin failure, a dropped
// connection); nil otherwise.
func (c *Context) WSError() error {
	if c.phase != PhaseWebSocketClose || c.view == nil || c.view.BodyFlags&WSError == 0 {
		return nil
	}
	return errors.New(string(c.Body()))
}

// WSSendText sends a text message (valid UTF-8, or the host rejects the batch) to this
// connection. s is copied into the host's buffer.
func (c *Context) WSSendText(s string) { c.record(OpWSSendText, 0, s, "") }

// WSSendBinary sends a binary message to this connection.
func (c *Context) WSSendBinary(b []byte) { c.record(OpWSSendBinary, 0, bytesString(b), "") }

// WSClose closes this connection with code (1000..1003, 1007..1014 or 3000..4999) and a
// reason of at most 123 bytes, after the messages sent before it.
func (c *Context) WSClose(code int, reason string) {
	if code < 0 || code > 0xffff {
		code = 0 // refused by the host: the batch fails
	}
	c.record(OpWSClose, uint32(code), reason, "")
}

// WSJoin adds this connection to room (1..128 bytes of A-Z a-z 0-9 _ - :). A connection
// leaves all its rooms when it closes.
func (c *Context) WSJoin(room string) { c.record(OpWSJoinRoom, 0, room, "") }

// WSLeave removes this connection from room.
func (c *Context) WSLeave(room string) { c.record(OpWSLeaveRoom, 0, room, "") }

// WSBroadcastText sends a text message to every member of room (this connection too, if it is
// a member), on this proxy and, when the proxies share NATS, on the others.
func (c *Context) WSBroadcastText(room, s string) { c.record(OpWSBroadcastText, 0, room, s) }

// WSBroadcastBinary sends a binary message to every member of room.
func (c *Context) WSBroadcastBinary(room string, b []byte) {
	c.record(OpWSBroadcastBinary, 0, room, bytesString(b))
}
