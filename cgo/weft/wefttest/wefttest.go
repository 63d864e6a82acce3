// Package wefttest runs weft plugins in plain go test, without a proxy.
//
// A Host initialises one instance of a registered plugin (the plugin's package must be linked
// into the test binary, which importing it does) and drives phase calls the way the Rust host
// does: it lays out a request view byte for byte like the host, calls the SDK's dispatcher,
// decodes the mutation records the plugin wrote and applies them to its picture of the
// request and response, so a later phase sees the modified request.
//
//	h := wefttest.MustNew(t, "bearer-auth", `{"tokens": ["s3cret"]}`)
//	x := h.Request(wefttest.Request{Path: "/a", Headers: [][2]string{{"authorization", "Bearer s3cret"}}})
//	res := x.RequestHeaders()           // res.Code, res.Mutations, res.Reply, res.Logs
//	x.Response(200, [][2]string{{"content-type", "text/plain"}})
//	res = x.ResponseHeaders()
//	res = x.Log()
//
// Each Request gets a slot (round robin over the host's slots) and a new generation for it, so
// the phases of one Exchange share the plugin's per-request state and a new Exchange starts
// from the zero state. Mutations are checked with an approximation of the host's validation;
// a rejected batch gives Code InvalidMutation and is not applied.
//
// Asynchronous handlers (Context.Defer, Context.Go) work as with the real host: a phase call
// that goes pending is waited for until the plugin completes it (Result.Pending tells), at most
// Host.AsyncTimeout, after which the call is cancelled as the host does at a phase deadline
// (Code Cancelled; a late completion is answered with ResultCancelled, and the slot stays
// held until then). Blocking plugins run inline here: their handlers are the same.
package wefttest

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
)

// Code is a phase call result code.
type Code = core.Result

// Result codes.
const (
	OK               = core.ResultOK
	Panic            = core.ResultPanic
	InvalidArgument  = core.ResultInvalidArgument
	UnknownPlugin    = core.ResultUnknownPlugin
	MutationOverflow = core.ResultMutationOverflow
	UnsupportedPhase = core.ResultUnsupportedPhase
	InvalidMutation  = core.ResultInvalidMutation
	HandlerFailed    = core.ResultHandlerFailed
	// Pending is never a final Code: a pending call is waited for.
	Pending = core.ResultPending
	// Cancelled: the call went pending and was not completed within Host.AsyncTimeout.
	Cancelled = core.ResultCancelled
)

// DefaultAsyncTimeout is the default of Host.AsyncTimeout.
const DefaultAsyncTimeout = 10 * time.Second

// DefaultBufferSize is the default capacity of the mutation buffer of a phase call.
const DefaultBufferSize = 16 * 1024

// LogLine is one line a plugin logged through the host.
type LogLine struct {
	Level core.Level
	Msg   string
}

// Request is the request a test sends. Zero fields get defaults: Method "GET", Path "/",
// ClientAddr "192.0.2.1:40000", Scheme "http", Version "HTTP/1.1"; an empty Host is taken
// from the host header, as the host does for HTTP/1. Header names are lowercased, as the host
// presents them.
type Request struct {
	Method     string
	Path       string
	Query      string
	Host       string
	ClientAddr string
	Scheme     string
	Version    string
	// ServerName is the TLS server name (SNI) the plugin sees through Context.ServerName; the
	// default "" is what a plain-HTTP request (or a TLS client without SNI) gives.
	ServerName string
	Headers    [][2]string
}

// Response is the upstream response head.
type Response struct {
	Status  int
	Headers [][2]string
}

// Reply is a local reply a plugin produced.
type Reply struct {
	Status  int
	Headers [][2]string
	Body    []byte
}

// Header returns the first value of reply header name (case-insensitive).
func (r *Reply) Header(name string) (string, bool) { return first(r.Headers, name) }

// Result is the outcome of one phase call.
type Result struct {
	// Code is the result the plugin returned, or InvalidMutation if the batch failed the
	// host-like validation.
	Code Code
	// Mutations are the decoded records, in order (also when the batch was rejected).
	Mutations []Mutation
	// Invalid explains why the batch was rejected when Code is InvalidMutation.
	Invalid string
	// Reply is the local reply of this phase, if any.
	Reply *Reply
	// Logs are the lines the plugin logged during the call (exact when the Host is used from
	// one goroutine), up to its completion.
	Logs []LogLine
	// Pending is true when the handler deferred the call (Context.Defer or Go) and completed it
	// after returning.
	Pending bool
}

// Host is a test host holding one instance of one plugin.
type Host struct {
	plugin string
	id     uint64
	slots  uint32

	// BufferSize is the capacity of the mutation buffer given to each phase call; set it before
	// running phases to test overflow handling.
	BufferSize int
	// AsyncTimeout is how long a phase call that went pending is waited for before the host
	// cancels it (default DefaultAsyncTimeout); set it before running phases.
	AsyncTimeout time.Duration

	mu        sync.Mutex
	nextSlot  uint32
	gens      []uint32
	requestID uint64
	logs      []LogLine
	closed    bool
	calls     []slotCall // per slot: the call the host is waiting for (see complete)
	nextCall  uint32
}

// slotCall is the host's record of the last phase call on one slot.
type slotCall struct {
	call   uint32
	state  callState
	done   chan completion // capacity 1; the completion of an armed call
	orphan uint32          // a cancelled call whose late completion is still due, or 0
}

type callState uint8

const (
	callIdle      callState = iota
	callArmed               // dispatched; a completion is accepted
	callCompleted           // completed (synchronously or by complete)
	callCancelled           // given up on (AsyncTimeout); a late completion is discarded
)

type completion struct {
	code Code
	n    uint32
}

var (
	nextInstance atomic.Uint64
	hostsMu      sync.Mutex
	hosts        = map[uint64]*Host{}
	loggerOnce   sync.Once
)

func routeLog(level core.Level, instance uint64, msg string) {
	hostsMu.Lock()
	h := hosts[instance]
	hostsMu.Unlock()
	if h == nil {
		return
	}
	h.mu.Lock()
	h.logs = append(h.logs, LogLine{Level: level, Msg: strings.Clone(msg)})
	h.mu.Unlock()
}

// New initialises an instance of the registered plugin named plugin with config and slots
// request slots. config may be nil (no config), a string, []byte or json.RawMessage holding
// JSON, or any other value, which is marshalled to JSON. The error is the plugin's init error
// (e.g. a config that does not decode or a failing Init).
func New(plugin string, config any, slots uint32) (*Host, error) {
	loggerOnce.Do(func() { core.SetLogger(routeLog) })
	if err := core.LoadError(); err != nil {
		return nil, err
	}
	index, ok := core.Lookup(plugin)
	if !ok {
		return nil, fmt.Errorf("wefttest: no plugin %q is registered (is its package imported?)", plugin)
	}
	cfg, err := configJSON(config)
	if err != nil {
		return nil, err
	}
	if slots == 0 {
		slots = 1
	}
	h := &Host{
		plugin:       plugin,
		id:           nextInstance.Add(1),
		slots:        slots,
		gens:         make([]uint32, slots),
		BufferSize:   DefaultBufferSize,
		AsyncTimeout: DefaultAsyncTimeout,
		calls:        make([]slotCall, slots),
	}
	for i := range h.calls {
		h.calls[i].done = make(chan completion, 1)
	}
	hostsMu.Lock()
	hosts[h.id] = h
	hostsMu.Unlock()
	if err := core.InitWith(index, h.id, cfg, slots, core.InitOptions{Complete: h.complete}); err != nil {
		hostsMu.Lock()
		delete(hosts, h.id)
		hostsMu.Unlock()
		return nil, err
	}
	return h, nil
}

// MustNew is New with 16 slots for tests: it fails tb on error and closes the host when the
// test ends.
func MustNew(tb testing.TB, plugin string, config any) *Host {
	tb.Helper()
	h, err := New(plugin, config, 16)
	if err != nil {
		tb.Fatalf("wefttest.New(%q): %v", plugin, err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

func configJSON(config any) ([]byte, error) {
	switch c := config.(type) {
	case nil:
		return nil, nil
	case string:
		return []byte(c), nil
	case []byte:
		return c, nil
	case json.RawMessage:
		return c, nil
	}
	b, err := json.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("wefttest: marshal config: %w", err)
	}
	return b, nil
}

// Close shuts the instance down (running the plugin's Shutdown hook).
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.mu.Unlock()
	err := core.Shutdown(h.id)
	hostsMu.Lock()
	delete(hosts, h.id)
	hostsMu.Unlock()
	return err
}

// Logs returns every line the instance logged so far.
func (h *Host) Logs() []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]LogLine(nil), h.logs...)
}

func (h *Host) logCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.logs)
}

func (h *Host) logsSince(n int) []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n >= len(h.logs) {
		return nil
	}
	return append([]LogLine(nil), h.logs[n:]...)
}

// Exchange is one request travelling through the plugin: the request (as modified by the
// plugin so far), the response once set, and the local reply if the plugin produced one.
type Exchange struct {
	h         *Host
	requestID uint64
	slot, gen uint32
	req       Request
	resp      *Response
	reply     *Reply
	view      []uint64
	skipBody  [2]bool // SkipBody answered for the request / response body (body.go)
}

// Request starts a new request on the next slot with a new generation.
func (h *Host) Request(r Request) *Exchange {
	h.mu.Lock()
	slot := h.nextSlot % h.slots
	h.nextSlot++
	h.gens[slot]++
	gen := h.gens[slot]
	h.requestID++
	id := h.requestID
	h.mu.Unlock()
	return &Exchange{h: h, requestID: id, slot: slot, gen: gen, req: withDefaults(r)}
}

func withDefaults(r Request) Request {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&r.Method, "GET")
	def(&r.Path, "/")
	def(&r.ClientAddr, "192.0.2.1:40000")
	def(&r.Scheme, "http")
	def(&r.Version, "HTTP/1.1")
	r.Headers = lowerNames(r.Headers)
	return r
}

// ID returns the request id the plugin sees (Context.RequestID).
func (x *Exchange) ID() uint64 { return x.requestID }

// Response sets the upstream response the response-headers and log phases see.
func (x *Exchange) Response(status int, headers [][2]string) {
	x.resp = &Response{Status: status, Headers: lowerNames(headers)}
}

// RequestHeaders runs the request-headers phase.
func (x *Exchange) RequestHeaders() Result { return x.Run(core.PhaseRequestHeaders) }

// ResponseHeaders runs the response-headers phase (call Response first).
func (x *Exchange) ResponseHeaders() Result { return x.Run(core.PhaseResponseHeaders) }

// Log runs the log phase.
func (x *Exchange) Log() Result { return x.Run(core.PhaseLog) }

// Run runs phase and applies the resulting mutations to the exchange.
func (x *Exchange) Run(phase core.Phase) Result {
	var resp *Response
	if phase != core.PhaseRequestHeaders {
		if x.resp == nil && x.reply == nil {
			x.resp = &Response{Status: 200}
		}
		resp = x.resp
		if resp == nil {
			// The local reply is the response the client got.
			resp = &Response{Status: x.reply.Status, Headers: x.reply.Headers}
		}
	}
	x.view = buildView(x.view, phase, x.requestID, x.slot, x.gen, &x.req, resp)
	out := make([]byte, x.h.BufferSize)
	before := x.h.logCount()
	call := x.h.arm(x.slot, 0)
	viewOf(x.view).Call = call
	code, n := dispatch(x.h.id, phase, x.view, out)
	res := Result{Code: code}
	if code == Pending {
		res.Pending = true
		var ok bool
		if code, n, ok = x.h.wait(x.slot, call); !ok {
			// The continuation may still read this view: never reuse its memory.
			x.view = nil
			res.Code, res.Logs = Cancelled, x.h.logsSince(before)
			return res
		}
		res.Code = code
	} else {
		x.h.settle(x.slot, call)
	}
	res.Logs = x.h.logsSince(before)
	if code != OK {
		return res
	}
	if int(n) > len(out) {
		res.Code, res.Invalid = InvalidMutation, fmt.Sprintf("out_len %d exceeds the buffer of %d bytes", n, len(out))
		return res
	}
	ms, err := decodeMutations(out[:n])
	res.Mutations = ms
	if err == nil {
		err = checkMutations(phase, ms)
	}
	if err != nil {
		res.Code, res.Invalid = InvalidMutation, err.Error()
		return res
	}
	x.noteSkipBody(phase, ms)
	res.Reply = x.apply(ms)
	return res
}

func viewOf(view []uint64) *core.RequestView { return (*core.RequestView)(unsafe.Pointer(&view[0])) }

// arm records that a phase call on slot is about to be dispatched and returns its call id:
// call, or a new one if call is 0.
func (h *Host) arm(slot, call uint32) uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if call == 0 {
		h.nextCall++
		if h.nextCall == 0 {
			h.nextCall++
		}
		call = h.nextCall
	}
	sc := &h.calls[slot]
	sc.call, sc.state = call, callArmed
	return call
}

// settle marks a call that returned synchronously as completed.
func (h *Host) settle(slot, call uint32) {
	h.mu.Lock()
	if sc := &h.calls[slot]; sc.call == call && sc.state == callArmed {
		sc.state = callCompleted
	}
	h.mu.Unlock()
}

// complete is the instance's completion function, with the host's answers: StaleHandle for a
// call the host does not wait for, AlreadyCompleted, Cancelled after the timeout.
func (h *Host) complete(_ uint64, slot, call uint32, code Code, n uint32) Code {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slot >= uint32(len(h.calls)) || call == 0 || (h.calls[slot].call != call && h.calls[slot].orphan != call) {
		return core.ResultStaleHandle
	}
	sc := &h.calls[slot]
	if call == sc.orphan {
		sc.orphan = 0
		return core.ResultCancelled
	}
	switch sc.state {
	case callCompleted:
		return core.ResultAlreadyCompleted
	case callArmed:
		if code == Pending {
			return InvalidArgument
		}
		sc.state = callCompleted
		sc.done <- completion{code, n} // capacity 1, drained by wait: never blocks
		return core.ResultOK
	}
	return core.ResultStaleHandle
}

// wait waits for the completion of a pending call, at most AsyncTimeout; false: cancelled.
func (h *Host) wait(slot, call uint32) (Code, uint32, bool) {
	sc := &h.calls[slot]
	t := time.NewTimer(h.AsyncTimeout)
	defer t.Stop()
	select {
	case c := <-sc.done:
		return c.code, c.n, true
	case <-t.C:
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if sc.call == call && sc.state == callArmed {
		sc.state, sc.orphan = callCancelled, call
		return Cancelled, 0, false
	}
	select {
	case c := <-sc.done: // completed just now
		return c.code, c.n, true
	default: // the slot was re-armed by another exchange meanwhile
		return Cancelled, 0, false
	}
}

func dispatch(id uint64, phase core.Phase, view []uint64, out []byte) (Code, uint32) {
	var outPtr unsafe.Pointer
	if len(out) > 0 {
		outPtr = unsafe.Pointer(&out[0])
	}
	return core.Dispatch(id, uint32(phase), unsafe.Pointer(&view[0]), outPtr, uint32(len(out)))
}

func (x *Exchange) apply(ms []Mutation) *Reply {
	var reply *Reply
	for _, m := range ms {
		name := strings.ToLower(m.A)
		if m.Op >= OpSetResponseHeader && m.Op <= OpSetStatus && x.resp == nil {
			x.resp = &Response{}
		}
		switch m.Op {
		case OpSetRequestHeader:
			x.req.Headers = append(without(x.req.Headers, name), [2]string{name, m.B})
		case OpAddRequestHeader:
			x.req.Headers = append(x.req.Headers, [2]string{name, m.B})
		case OpRemoveRequestHeader:
			x.req.Headers = without(x.req.Headers, name)
		case OpSetPath:
			x.req.Path = m.A
		case OpSetQuery:
			x.req.Query = m.A
		case OpSetResponseHeader:
			x.resp.Headers = append(without(x.resp.Headers, name), [2]string{name, m.B})
		case OpAddResponseHeader:
			x.resp.Headers = append(x.resp.Headers, [2]string{name, m.B})
		case OpRemoveResponseHeader:
			x.resp.Headers = without(x.resp.Headers, name)
		case OpSetStatus:
			x.resp.Status = int(m.Arg)
		case OpLocalReply:
			reply = &Reply{Status: int(m.Arg), Body: []byte(m.A)}
		case OpLocalReplyHeader:
			reply.Headers = append(reply.Headers, [2]string{name, m.B})
		}
	}
	if reply != nil {
		x.reply = reply
	}
	return reply
}

func without(headers [][2]string, name string) [][2]string {
	out := headers[:0:0]
	for _, h := range headers {
		if h[0] != name {
			out = append(out, h)
		}
	}
	return out
}

func first(headers [][2]string, name string) (string, bool) {
	for _, h := range headers {
		if strings.EqualFold(h[0], name) {
			return h[1], true
		}
	}
	return "", false
}

func all(headers [][2]string, name string) []string {
	var out []string
	for _, h := range headers {
		if strings.EqualFold(h[0], name) {
			out = append(out, h[1])
		}
	}
	return out
}

// Request returns the request as the upstream would receive it after the mutations so far.
func (x *Exchange) Request() Request {
	r := x.req
	r.Headers = append([][2]string(nil), r.Headers...)
	return r
}

// RequestHeader returns the first value of request header name after the mutations so far.
func (x *Exchange) RequestHeader(name string) (string, bool) { return first(x.req.Headers, name) }

// RequestHeaderValues returns every value of request header name.
func (x *Exchange) RequestHeaderValues(name string) []string { return all(x.req.Headers, name) }

// ResponseHeader returns the first value of response header name after the mutations so far.
func (x *Exchange) ResponseHeader(name string) (string, bool) {
	if x.resp == nil {
		return "", false
	}
	return first(x.resp.Headers, name)
}

// ResponseHeaderValues returns every value of response header name.
func (x *Exchange) ResponseHeaderValues(name string) []string {
	if x.resp == nil {
		return nil
	}
	return all(x.resp.Headers, name)
}

// Status returns the response status after the mutations so far (0 without a response).
func (x *Exchange) Status() int {
	if x.resp == nil {
		return 0
	}
	return x.resp.Status
}

// Reply returns the local reply the plugin produced in any phase so far, or nil.
func (x *Exchange) Reply() *Reply { return x.reply }

// Prepared is one phase call laid out once and dispatched repeatedly with the same view, slot
// and generation: for benchmarks and allocation tests of handlers.
type Prepared struct {
	h     *Host
	id    uint64
	phase core.Phase
	slot  uint32
	call  uint32
	view  []uint64
	out   []byte
}

// Prepare lays out phase of req (and resp, which may be nil) as a new request (next slot, new
// generation).
func (h *Host) Prepare(phase core.Phase, req Request, resp *Response) *Prepared {
	x := h.Request(req)
	if resp != nil {
		x.Response(resp.Status, resp.Headers)
	}
	p := &Prepared{
		h:     h,
		id:    h.id,
		phase: phase,
		slot:  x.slot,
		call:  h.arm(x.slot, 0), // stays armed between dispatches: no locking per call
		view:  buildView(nil, phase, x.requestID, x.slot, x.gen, &x.req, x.resp),
		out:   make([]byte, h.BufferSize),
	}
	viewOf(p.view).Call = p.call
	return p
}

// Dispatch runs the prepared call and returns the result code and the mutation bytes written.
// A call that goes pending is waited for (Cancelled after AsyncTimeout, after which the
// Prepared must not be used again). The synchronous path does not allocate beyond what the
// handler allocates.
func (p *Prepared) Dispatch() (Code, int) {
	code, n := dispatch(p.id, p.phase, p.view, p.out)
	if code == Pending {
		code, n, _ = p.h.wait(p.slot, p.call)
		p.h.arm(p.slot, p.call)
	}
	return code, int(n)
}

// Mutations decodes the records the last Dispatch wrote.
func (p *Prepared) Mutations(n int) ([]Mutation, error) { return decodeMutations(p.out[:n]) }
