package wefttest

import (
	"bytes"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
)

// Body mutation operations, as decoded into Mutation.Op.
const (
	OpBodyReplace = core.OpBodyReplace
	OpBodyPrepend = core.OpBodyPrepend
	OpBodyAppend  = core.OpBodyAppend
	OpBodyDrop    = core.OpBodyDrop
	OpSkipBody    = core.OpSkipBody
)

// BodyResult is the outcome of one body-phase call.
type BodyResult struct {
	Result
	// Out is what the host sends on for this call: the prepends, the body bytes or their
	// replacement, the appends (the input unchanged when the plugin wrote no body record).
	Out []byte
	// Skipped is set when the plugin answered SkipBody in the matching headers phase: the
	// host would not have called it, and neither did the test host (Out is the input).
	Skipped bool
}

// bodyAllowed lists the ops the host accepts in body phases (head changes only when the call
// is buffered; checked by checkBody) and SkipBody in the headers phases.
func bodyAllowed(op Op, phase core.Phase) bool {
	switch phase {
	case core.PhaseRequestHeaders, core.PhaseResponseHeaders:
		return op == OpSkipBody
	case core.PhaseRequestBody:
		switch op {
		case OpBodyReplace, OpBodyPrepend, OpBodyAppend, OpBodyDrop, OpSetRequestHeader, OpAddRequestHeader,
			OpRemoveRequestHeader, OpSetPath, OpSetQuery, OpLocalReply, OpLocalReplyHeader:
			return true
		}
	case core.PhaseResponseBody:
		switch op {
		case OpBodyReplace, OpBodyPrepend, OpBodyAppend, OpBodyDrop, OpSetResponseHeader, OpAddResponseHeader,
			OpRemoveResponseHeader, OpSetStatus, OpLocalReply, OpLocalReplyHeader:
			return true
		}
	}
	return false
}

// checkBody mirrors the host's body rules: one BodyReplace/BodyDrop per batch, no second
// operand, and head changes only in a buffered call.
func checkBody(ms []Mutation, buffered bool) error {
	replaced := false
	for i, m := range ms {
		switch m.Op {
		case OpBodyReplace, OpBodyDrop:
			if replaced {
				return fmt.Errorf("record %d: a second body_replace/body_drop in one batch", i)
			}
			replaced = true
			if m.B != "" || (m.Op == OpBodyDrop && m.A != "") {
				return fmt.Errorf("record %d: unexpected operand bytes for %s", i, m.Op)
			}
		case OpBodyPrepend, OpBodyAppend:
			if m.B != "" {
				return fmt.Errorf("record %d: unexpected operand bytes for %s", i, m.Op)
			}
		case OpSkipBody:
			if m.A != "" || m.B != "" {
				return fmt.Errorf("record %d: unexpected operand bytes for %s", i, m.Op)
			}
		default:
			if !buffered {
				return fmt.Errorf("record %d: %s is only allowed when the body phase is buffered", i, m.Op)
			}
		}
	}
	return nil
}

// assembleBody applies the body records of a batch to chunk.
func assembleBody(ms []Mutation, chunk []byte) []byte {
	var pre, post []byte
	mid := chunk
	for _, m := range ms {
		switch m.Op {
		case OpBodyPrepend:
			pre = append(pre, m.A...)
		case OpBodyAppend:
			post = append(post, m.A...)
		case OpBodyReplace:
			mid = []byte(m.A)
		case OpBodyDrop:
			mid = nil
		}
	}
	out := make([]byte, 0, len(pre)+len(mid)+len(post))
	return append(append(append(out, pre...), mid...), post...)
}

// skipsBody reports whether a SkipBody record was among ms.
func skipsBody(ms []Mutation) bool {
	for _, m := range ms {
		if m.Op == OpSkipBody {
			return true
		}
	}
	return false
}

// RequestBody runs one streamed request-body call over chunk; end marks the last one.
func (x *Exchange) RequestBody(chunk []byte, end bool) BodyResult {
	return x.runBody(core.PhaseRequestBody, chunk, endFlag(end))
}

// ResponseBody runs one streamed response-body call over chunk; end marks the last one.
func (x *Exchange) ResponseBody(chunk []byte, end bool) BodyResult {
	return x.runBody(core.PhaseResponseBody, chunk, endFlag(end))
}

// RequestBodyBuffered runs the buffered request-body call over the whole body.
func (x *Exchange) RequestBodyBuffered(body []byte) BodyResult {
	return x.runBody(core.PhaseRequestBody, body, core.BodyEndOfStream|core.BodyBuffered)
}

// ResponseBodyBuffered runs the buffered response-body call over the whole body.
func (x *Exchange) ResponseBodyBuffered(body []byte) BodyResult {
	return x.runBody(core.PhaseResponseBody, body, core.BodyEndOfStream|core.BodyBuffered)
}

// StreamResponseBody feeds body to the response-body phase in chunks of chunkSize bytes (the
// last call carries end of stream, empty when body divides evenly) and returns everything the
// host would send to the client.
func (x *Exchange) StreamResponseBody(body []byte, chunkSize int) ([]byte, error) {
	return x.stream(core.PhaseResponseBody, body, chunkSize)
}

// StreamRequestBody is StreamResponseBody for the request body.
func (x *Exchange) StreamRequestBody(body []byte, chunkSize int) ([]byte, error) {
	return x.stream(core.PhaseRequestBody, body, chunkSize)
}

func (x *Exchange) stream(phase core.Phase, body []byte, chunkSize int) ([]byte, error) {
	if chunkSize <= 0 {
		return nil, fmt.Errorf("wefttest: chunk size %d", chunkSize)
	}
	var out bytes.Buffer
	for {
		n := min(chunkSize, len(body))
		chunk, rest := body[:n], body[n:]
		end := len(rest) == 0
		r := x.runBody(phase, chunk, endFlag(end))
		if r.Code != OK {
			return out.Bytes(), fmt.Errorf("wefttest: %s call returned %s %s", phase, r.Code, r.Invalid)
		}
		out.Write(r.Out)
		if end {
			return out.Bytes(), nil
		}
		body = rest
	}
}

func endFlag(end bool) uint32 {
	if end {
		return core.BodyEndOfStream
	}
	return 0
}

func (x *Exchange) runBody(phase core.Phase, chunk []byte, flags uint32) BodyResult {
	side := 0
	if phase == core.PhaseResponseBody {
		side = 1
	}
	if x.bodySkipped(side) {
		return BodyResult{Result: Result{Code: OK}, Out: append([]byte(nil), chunk...), Skipped: true}
	}
	var resp *Response
	if phase == core.PhaseResponseBody {
		if x.resp == nil {
			x.resp = &Response{Status: 200}
		}
		resp = x.resp
	}
	x.view = buildView(x.view, phase, x.requestID, x.slot, x.gen, &x.req, resp)
	v := (*core.RequestView)(unsafe.Pointer(&x.view[0]))
	v.Body, v.BodyLen, v.BodyFlags = nil, uint32(len(chunk)), flags
	if len(chunk) > 0 {
		v.Body = unsafe.Pointer(&chunk[0])
	}
	out := make([]byte, x.h.BufferSize)
	before := x.h.logCount()
	code, n := dispatch(x.h.id, phase, x.view, out)
	runtime.KeepAlive(chunk)
	v = (*core.RequestView)(unsafe.Pointer(&x.view[0]))
	v.Body = nil
	res := BodyResult{Result: Result{Code: code, Logs: x.h.logsSince(before)}}
	if code != OK {
		return res
	}
	ms, err := decodeMutations(out[:n])
	res.Mutations = ms
	if err == nil {
		err = checkMutations(phase, ms)
	}
	if err == nil {
		err = checkBody(ms, flags&core.BodyBuffered != 0)
	}
	if err != nil {
		res.Code, res.Invalid = InvalidMutation, err.Error()
		return res
	}
	res.Reply = x.apply(ms)
	res.Out = assembleBody(ms, chunk)
	return res
}

// noteSkipBody records a SkipBody answer of a headers phase.
func (x *Exchange) noteSkipBody(phase core.Phase, ms []Mutation) {
	if !skipsBody(ms) {
		return
	}
	switch phase {
	case core.PhaseRequestHeaders:
		x.skipBody[0] = true
	case core.PhaseResponseHeaders:
		x.skipBody[1] = true
	}
}

func (x *Exchange) bodySkipped(side int) bool { return x.skipBody[side] }
