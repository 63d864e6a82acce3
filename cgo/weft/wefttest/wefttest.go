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
package wefttest

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
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
)

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
	// one goroutine).
	Logs []LogLine
}

// Host is a test host holding one instance of one plugin.
type Host struct {
	plugin string
	id     uint64
	slots  uint32

	// BufferSize is the capacity of the mutation buffer given to each phase call; set it before
	// running phases to test overflow handling.
	BufferSize int

	mu        sync.Mutex
	nextSlot  uint32
	gens      []uint32
	requestID uint64
	logs      []LogLine
	closed    bool
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
		plugin:     plugin,
		id:         nextInstance.Add(1),
		slots:      slots,
		gens:       make([]uint32, slots),
		BufferSize: DefaultBufferSize,
	}
	hostsMu.Lock()
	hosts[h.id] = h
	hostsMu.Unlock()
	if err := core.Init(index, h.id, cfg, slots); err != nil {
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
	code, n := dispatch(x.h.id, phase, x.view, out)
	res := Result{Code: code, Logs: x.h.logsSince(before)}
	if code != OK {
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
	res.Reply = x.apply(ms)
	return res
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
	id    uint64
	phase core.Phase
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
	return &Prepared{
		id:    h.id,
		phase: phase,
		view:  buildView(nil, phase, x.requestID, x.slot, x.gen, &x.req, x.resp),
		out:   make([]byte, h.BufferSize),
	}
}

// Dispatch runs the prepared call and returns the result code and the mutation bytes written.
// It does not allocate beyond what the handler allocates.
func (p *Prepared) Dispatch() (Code, int) {
	code, n := dispatch(p.id, p.phase, p.view, p.out)
	return code, int(n)
}

// Mutations decodes the records the last Dispatch wrote.
func (p *Prepared) Mutations(n int) ([]Mutation, error) { return decodeMutations(p.out[:n]) }
