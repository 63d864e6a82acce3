package nylon

import (
	"errors"
	"strings"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// flow is what a filter asked for in the current phase call.
type flow uint8

const (
	flowNone flow = iota // returned without Next or End: continues, as Next
	flowNext
	flowEnd
)

// session is one request's state: weft's per-request state S of every entry, so it lives in the
// SDK's slot memory and the pointers the filters get into it cost no allocation.
type session struct {
	started bool
	start   time.Time
	ph      PhaseHandler

	// The current phase call; ctx is nil between calls.
	ctx  *weft.Context
	cfg  *map[string]any
	flow flow
	late bool // Next or End came after its filter had returned

	// The answer a request filter builds (Response() in the request phase): headers set there
	// apply to the local reply (End) or else to the upstream's response.
	status   int
	headers  []headerOp
	body     []byte
	bodySet  bool
	bodyDone bool // body replaced in the response phase already

	req Request
	res Response
	rf  PhaseRequestFilter
	sf  PhaseResponseFilter
	bf  PhaseResponseBodyFilter
	lf  PhaseLogging
}

type headerOp struct {
	name, value string
	remove      bool
}

// run runs one phase call: the request's PhaseHandler is set up on its first call, then
// filter applies the phase's Nylon filter.
func (s *session) run(ctx *weft.Context, cfg *map[string]any, setup func(*PhaseHandler), filter func(*session)) {
	s.ctx, s.cfg, s.flow = ctx, cfg, flowNone
	defer func() { s.ctx = nil }()
	if s.late {
		s.late = false
		ctx.Log(weft.LogWarn, "nylon: Next or End was called after its filter returned; a weft phase ends when its filter returns (for slow work use Weft().Go)")
	}
	if !s.started {
		s.started = true
		s.start = now()
		s.ph = PhaseHandler{SessionId: int32(ctx.RequestID())}
		s.req.s, s.res.s = s, s
		s.rf.s, s.sf.s, s.bf.s, s.lf.s = s, s, s, s
		setup(&s.ph)
	}
	filter(s)
}

func (s *session) requestFilter() {
	if f := s.ph.requestFilter; f != nil {
		f(&s.rf)
	}
	if s.flow != flowEnd {
		return
	}
	status := s.status
	if status == 0 {
		status = StatusOK
	}
	headers := make([]string, 0, 2*len(s.headers))
	for _, h := range s.headers {
		if !h.remove {
			headers = append(headers, h.name, h.value)
		}
	}
	s.ctx.Reply(status, s.body, headers...)
	s.headers, s.body, s.bodySet = nil, nil, false
}

func (s *session) responseFilter() {
	// What the request filter set for the response applies to the upstream's response.
	for _, h := range s.headers {
		s.setHeader(h.name, h.value, h.remove)
	}
	if s.status != 0 {
		s.ctx.SetStatus(s.status)
	}
	s.headers, s.status = nil, 0
	if f := s.ph.responseFilter; f != nil {
		f(&s.sf)
	}
	if s.ph.responseBodyFilter == nil && !s.bodySet {
		s.ctx.SkipBody() // nothing reads or replaces this body: it streams past
	}
}

func (s *session) responseBodyFilter() {
	if f := s.ph.responseBodyFilter; f != nil {
		f(&s.bf)
	}
	if s.bodySet && !s.bodyDone {
		s.ctx.ReplaceBody(s.body)
		s.bodyDone = true
	}
}

func (s *session) logging() {
	if f := s.ph.logging; f != nil {
		f(&s.lf)
	}
}

// next and end record a filter's decision; after the filter returned they can only be noted.
func (s *session) next() { s.decide(flowNext) }
func (s *session) end()  { s.decide(flowEnd) }

func (s *session) decide(f flow) {
	if s.ctx == nil {
		s.late = true
		return
	}
	if s.flow == flowNone {
		s.flow = f
	}
}

// framing reports a header the proxy owns for message framing: Nylon plugins set and remove
// these around body changes, while weft frames a changed body itself, so they are dropped
// (any other header the proxy reserves is refused by the host with a logged error).
func framing(name string) bool {
	return strings.EqualFold(name, HeaderContentLength) || strings.EqualFold(name, HeaderTransferEncoding)
}

// setHeader applies a response header change in the current phase.
func (s *session) setHeader(name, value string, remove bool) {
	if framing(name) {
		return
	}
	switch s.ctx.Phase() {
	case weft.PhaseRequestHeaders:
		s.headers = append(s.headers, headerOp{strings.Clone(name), strings.Clone(value), remove})
	case weft.PhaseResponseHeaders, weft.PhaseResponseBody:
		if remove {
			s.ctx.RemoveResponseHeader(name)
		} else {
			s.ctx.SetResponseHeader(name, value)
		}
	}
	// Log phase: the response is gone; nothing to change (as in Nylon).
}

func (s *session) setStatus(code int) {
	switch s.ctx.Phase() {
	case weft.PhaseRequestHeaders:
		s.status = code
	case weft.PhaseResponseHeaders, weft.PhaseResponseBody:
		s.ctx.SetStatus(code)
	}
}

func (s *session) setBody(b []byte) {
	switch s.ctx.Phase() {
	case weft.PhaseRequestHeaders, weft.PhaseResponseHeaders:
		s.body, s.bodySet = append([]byte(nil), b...), true // used by End or the body phase
	case weft.PhaseResponseBody:
		s.ctx.ReplaceBody(b)
		s.bodySet, s.bodyDone = true, true
	}
}

// payload is GetPayload: the instance config, shared by every request of the instance.
func (s *session) payload() map[string]any {
	if s.cfg == nil {
		return nil
	}
	return *s.cfg
}

// errNoEquivalent is returned by the Nylon calls weft has no counterpart for.
var errNoEquivalent = errors.New("nylon compatibility: not supported by weft")
