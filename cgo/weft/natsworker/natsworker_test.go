package natsworker

import (
	"strconv"
	"strings"
	"testing"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// seen records what the test plugin's handler read through the SDK.
type seen struct {
	method, path, query, host, client, scheme, version string
	reqHeaders, respHeaders                            []string
	status                                             int
	slotState                                          int
}

var last seen

type echoState struct{ calls int }

func record(ctx *core.Context, _ *struct{}, st *echoState) {
	st.calls++
	last = seen{
		method: ctx.Method(), path: ctx.Path(), query: ctx.Query(), host: ctx.Host(),
		client: ctx.ClientAddr(), scheme: ctx.Scheme(), version: ctx.Version(),
		status: ctx.Status(), slotState: st.calls,
	}
	for n, v := range ctx.RequestHeaders() {
		last.reqHeaders = append(last.reqHeaders, n+"="+v)
	}
	if ctx.Phase() == core.PhaseResponseHeaders {
		for n, v := range ctx.ResponseHeaders() {
			last.respHeaders = append(last.respHeaders, n+"="+v)
		}
		ctx.SetResponseHeader("x-echo", "1")
	}
}

func init() {
	core.Register(core.Plugin[struct{}, echoState]{
		Name:            "natsworker-echo",
		RequestHeaders:  record,
		ResponseHeaders: record,
	})
}

func phaseRequest(phase core.Phase, status uint16, req, resp [][2]string) []byte {
	return phaseRequestAs(WireVersion, true, 77, phase, status, req, resp)
}

// phaseRequestAs builds a PhaseRequest claiming wire version version, finished with the file
// identifier or (identifier false) without it, as an older or foreign peer would send it.
func phaseRequestAs(version uint16, identifier bool, id uint64, phase core.Phase, status uint16,
	req, resp [][2]string) []byte {
	b := flatbuffers.NewBuilder(256)
	hdrs := func(hs [][2]string, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
		offs := make([]flatbuffers.UOffsetT, len(hs))
		for i, h := range hs {
			n, v := b.CreateByteVector([]byte(h[0])), b.CreateByteVector([]byte(h[1]))
			wire.HeaderStart(b)
			wire.HeaderAddName(b, n)
			wire.HeaderAddValue(b, v)
			offs[i] = wire.HeaderEnd(b)
		}
		start(b, len(hs))
		for i := len(offs) - 1; i >= 0; i-- {
			b.PrependUOffsetT(offs[i])
		}
		return b.EndVector(len(hs))
	}
	rq := hdrs(req, wire.PhaseRequestStartRequestHeadersVector)
	rs := hdrs(resp, wire.PhaseRequestStartResponseHeadersVector)
	s := func(v string) flatbuffers.UOffsetT { return b.CreateString(v) }
	m, p, q, h, c, sc, v := s("POST"), s("/a/b"), s("x=1"), s("example.com"), s("10.0.0.1:5"), s("https"), s("HTTP/2.0")
	wire.PhaseRequestStart(b)
	wire.PhaseRequestAddVersion(b, version)
	wire.PhaseRequestAddPhase(b, uint32(phase))
	wire.PhaseRequestAddRequestId(b, id)
	wire.PhaseRequestAddMethod(b, m)
	wire.PhaseRequestAddPath(b, p)
	wire.PhaseRequestAddQuery(b, q)
	wire.PhaseRequestAddHost(b, h)
	wire.PhaseRequestAddClientAddr(b, c)
	wire.PhaseRequestAddScheme(b, sc)
	wire.PhaseRequestAddHttpVersion(b, v)
	wire.PhaseRequestAddRequestHeaders(b, rq)
	wire.PhaseRequestAddStatus(b, status)
	wire.PhaseRequestAddResponseHeaders(b, rs)
	if identifier {
		wire.FinishPhaseRequestBuffer(b, wire.PhaseRequestEnd(b))
	} else {
		b.Finish(wire.PhaseRequestEnd(b))
	}
	return b.FinishedBytes()
}

func TestViewFromPhaseRequestReadsLikeTheHostView(t *testing.T) {
	index, ok := core.Lookup("natsworker-echo")
	if !ok {
		t.Fatal("test plugin not registered")
	}
	const id = 1 << 40
	if err := core.Init(index, id, nil, 4); err != nil {
		t.Fatal(err)
	}
	defer core.Shutdown(id)
	out := make([]uint64, 512)
	var vb viewBuilder
	run := func(phase core.Phase, data []byte, slot, gen uint32) (core.Result, uint32) {
		t.Helper()
		var req wire.PhaseRequest
		req.Init(data, flatbuffers.GetUOffsetT(data))
		view, err := vb.build(&req, phase, slot, gen)
		if err != nil {
			t.Fatal(err)
		}
		v := (*core.RequestView)(view)
		if uintptr(view)%8 != 0 || v.ReqHeadersOff%4 != 0 || (v.RespHeaderCount > 0 && v.RespHeadersOff%4 != 0) || v.RequestID != 77 {
			t.Fatalf("bad layout: %+v", *v)
		}
		return core.Dispatch(id, uint32(phase), view, unsafe.Pointer(&out[0]), 4096)
	}

	reqHeaders := [][2]string{{"host", "example.com"}, {"x-bin", "a\xffb"}, {"accept", "*/*"}}
	res, n := run(core.PhaseRequestHeaders, phaseRequest(core.PhaseRequestHeaders, 0, reqHeaders, nil), 2, 1)
	if res != core.ResultOK || n != 0 {
		t.Fatalf("request phase: %v %d", res, n)
	}
	want := seen{method: "POST", path: "/a/b", query: "x=1", host: "example.com", client: "10.0.0.1:5",
		scheme: "https", version: "HTTP/2.0", reqHeaders: []string{"host=example.com", "x-bin=a\xffb", "accept=*/*"}, slotState: 1}
	if got := last; strings.Join(got.reqHeaders, ",") != strings.Join(want.reqHeaders, ",") || got.method != want.method ||
		got.path != want.path || got.query != want.query || got.host != want.host || got.client != want.client ||
		got.scheme != want.scheme || got.version != want.version || got.status != 0 || got.slotState != 1 {
		t.Fatalf("handler saw %+v, want %+v", got, want)
	}

	// Same slot and generation: the response phase sees the request's state and the response.
	res, n = run(core.PhaseResponseHeaders, phaseRequest(core.PhaseResponseHeaders, 204, reqHeaders, [][2]string{{"server", "up"}}), 2, 1)
	if res != core.ResultOK || n != uint32(core.RecordSize(len("x-echo"), 1)) {
		t.Fatalf("response phase: %v %d", res, n)
	}
	if last.status != 204 || strings.Join(last.respHeaders, ",") != "server=up" || last.slotState != 2 {
		t.Fatalf("response phase saw %+v", last)
	}
	// A new generation starts from the zero state.
	run(core.PhaseRequestHeaders, phaseRequest(core.PhaseRequestHeaders, 0, nil, nil), 2, 2)
	if last.slotState != 1 || len(last.reqHeaders) != 0 {
		t.Fatalf("new generation saw %+v", last)
	}
}

// call acquires key's slot for one call that ends at once (as serve does around a call).
func call(p *slotPool, key string) (slot, gen uint32, evicted bool) {
	slot, gen, evicted, ok := p.acquire(key)
	if !ok {
		panic("no slot for " + key)
	}
	p.done(slot)
	return slot, gen, evicted
}

func TestSlotPoolKeepsARequestOnOneSlotAndEvictsTheOldest(t *testing.T) {
	p := newSlotPool(2)
	s1, g1, _ := call(p, "h/1")
	if s, g, _ := call(p, "h/1"); s != s1 || g != g1 {
		t.Fatal("same request got another slot")
	}
	s2, _, _ := call(p, "h/2")
	if s2 == s1 {
		t.Fatal("two live requests share a slot")
	}
	p.release("h/1")
	s3, g3, evicted := call(p, "h/3")
	if evicted || s3 != s1 || g3 == g1 {
		t.Fatalf("released slot not reused with a new generation: %d %d %v", s3, g3, evicted)
	}
	// Full: h/2 (the oldest live request; h/1 was released) loses its slot.
	s4, _, evicted := call(p, "h/4")
	if !evicted || s4 != s2 {
		t.Fatalf("oldest live request not evicted: slot %d evicted %v", s4, evicted)
	}
	if _, g, _ := call(p, "h/2"); g == 0 || p.inUse() != 2 {
		t.Fatal("an evicted request comes back with a fresh slot")
	}
	// Many requests that never finish: the pool and its queue stay bounded.
	for i := range 100000 {
		call(p, "x/"+strconv.Itoa(i))
	}
	if p.inUse() != 2 || len(p.order)-p.head > 2*2+1024 {
		t.Fatalf("pool grew: %d in use, queue %d", p.inUse(), len(p.order)-p.head)
	}
}

func TestSlotPoolNeverEvictsASlotWithACallRunning(t *testing.T) {
	p := newSlotPool(2)
	a, _, _, _ := p.acquire("h/a") // a call running on a's slot
	b, _, _ := call(p, "h/b")      // b is idle
	// Full: the oldest live request (a) has a call running, so b goes.
	c, _, evicted, ok := p.acquire("h/c")
	if !ok || !evicted || c != b {
		t.Fatalf("evicted slot %d (ok %v, evicted %v), want b's %d, never a's %d", c, ok, evicted, b, a)
	}
	// Both slots have calls running: no slot, and nothing evicted.
	if _, _, _, ok := p.acquire("h/d"); ok {
		t.Fatal("a slot with a call running was given to another request")
	}
	if p.inUse() != 2 {
		t.Fatalf("%d in use", p.inUse())
	}
	p.done(a)
	if s, _, evicted, ok := p.acquire("h/d"); !ok || !evicted || s != a {
		t.Fatalf("after a's call ended: slot %d ok %v evicted %v", s, ok, evicted)
	}
}
