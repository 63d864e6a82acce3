package core

import "unsafe"

// Body phases: the chunk (or, buffered, the whole body) is host memory that the handler reads
// in place through Context.Body; replacement bytes are written as mutation records into the
// host's output buffer, which for a body call is an arena slot of its own that the host hands
// on to the HTTP library without copying.

// bodyFlags returns the WEFT_PLUGIN_FLAG_* bits of the body modes.
func bodyFlags(requestBuffered, responseBuffered bool) uint32 {
	var f uint32
	if requestBuffered {
		f |= FlagRequestBodyBuffered
	}
	if responseBuffered {
		f |= FlagResponseBodyBuffered
	}
	return f
}

// validBody checks the body fields of a view: only body phases carry bytes, and a non-empty
// body has an address.
func validBody(p Phase, v *RequestView) bool {
	if p != PhaseRequestBody && p != PhaseResponseBody && p != PhaseWebSocketMessage && p != PhaseWebSocketClose {
		return v.BodyLen == 0
	}
	return v.BodyLen == 0 || v.Body != nil
}

// Body returns the body bytes of this call: the current chunk in streamed mode, the whole
// body in buffered mode, nil outside body phases. The slice aliases host memory: it is valid
// only until the handler returns and must not be written; copy what you keep.
func (c *Context) Body() []byte {
	if c.view == nil || c.view.BodyLen == 0 || c.view.Body == nil {
		return nil
	}
	return unsafe.Slice((*byte)(c.view.Body), c.view.BodyLen)
}

// EndOfStream reports whether this is the last body call for this request (its chunk may be
// empty). Every body phase ends with exactly one such call, so a handler can flush state here.
func (c *Context) EndOfStream() bool {
	return c.view != nil && c.view.BodyFlags&BodyEndOfStream != 0
}

// BodyBuffered reports whether Body is the whole body (buffered mode).
func (c *Context) BodyBuffered() bool {
	return c.view != nil && c.view.BodyFlags&BodyBuffered != 0
}

func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// ReplaceBody replaces this call's body bytes (the chunk, or the whole body when buffered) with
// b. At most once per call; b is copied into the host's buffer before the call returns.
func (c *Context) ReplaceBody(b []byte) { c.record(OpBodyReplace, 0, bytesString(b), "") }

// ReplaceBodyString is ReplaceBody for a string.
func (c *Context) ReplaceBodyString(s string) { c.record(OpBodyReplace, 0, s, "") }

// PrependBody sends b before this call's body bytes (several calls: in order).
func (c *Context) PrependBody(b []byte) { c.record(OpBodyPrepend, 0, bytesString(b), "") }

// AppendBody sends b after this call's body bytes (several calls: in order). On the
// end-of-stream call it appends to the end of the body.
func (c *Context) AppendBody(b []byte) { c.record(OpBodyAppend, 0, bytesString(b), "") }

// DropBody drops this call's body bytes (prepends and appends of the call are still sent).
func (c *Context) DropBody() { c.record(OpBodyDrop, 0, "", "") }

// SkipBody, in RequestHeaders or ResponseHeaders, tells the host this plugin does not want
// this request's (or this response's) body: its body handler is then not called for it and
// the body streams past untouched. E.g. a JSON rewriter skips responses that are not JSON.
func (c *Context) SkipBody() { c.record(OpSkipBody, 0, "", "") }
