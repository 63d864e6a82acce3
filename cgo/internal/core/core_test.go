package core

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// testView lays out a view like the host: struct, request headers, response headers, strings.
func testView(phase Phase, slot, gen uint32, path string, reqHeaders, respHeaders [][2]string) []uint64 {
	buf := make([]byte, 0, 1024)
	buf = append(buf, make([]byte, SizeofRequestView+SizeofHeader*(len(reqHeaders)+len(respHeaders)))...)
	put := func(s string) Str {
		st := Str{Off: uint32(len(buf)), Len: uint32(len(s))}
		buf = append(buf, s...)
		return st
	}
	v := RequestView{Phase: uint32(phase), RequestID: 1, Slot: slot, Generation: gen, Status: 200}
	v.Method, v.Path, v.Query = put("GET"), put(path), put("a=1")
	v.Host, v.ClientAddr, v.Scheme, v.Version = put("example.com"), put("10.0.0.1:5"), put("http"), put("HTTP/1.1")
	v.ReqHeadersOff, v.ReqHeaderCount = SizeofRequestView, uint32(len(reqHeaders))
	v.RespHeadersOff = SizeofRequestView + SizeofHeader*uint32(len(reqHeaders))
	v.RespHeaderCount = uint32(len(respHeaders))
	var hdrs []Header
	for _, h := range append(append([][2]string{}, reqHeaders...), respHeaders...) {
		hdrs = append(hdrs, Header{Name: put(h[0]), Value: put(h[1])})
	}
	v.Size = uint32(len(buf))
	words := make([]uint64, (len(buf)+7)/8)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	copy(b, buf)
	*(*RequestView)(unsafe.Pointer(&words[0])) = v
	for i, h := range hdrs {
		*(*Header)(unsafe.Pointer(&b[SizeofRequestView+i*SizeofHeader])) = h
	}
	return words
}

func viewOf(w []uint64) *RequestView { return (*RequestView)(unsafe.Pointer(&w[0])) }

func run(t *testing.T, id uint64, phase Phase, view []uint64, outCap int) (Result, []byte) {
	t.Helper()
	out := make([]byte, outCap+1)
	res, n := Dispatch(id, uint32(phase), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), uint32(outCap))
	return res, out[:n]
}

type rec struct {
	op   MutationOp
	arg  uint32
	a, b string
}

func decode(t *testing.T, buf []byte) []rec {
	t.Helper()
	var out []rec
	for len(buf) > 0 {
		op, arg := binary.NativeEndian.Uint32(buf), binary.NativeEndian.Uint32(buf[4:])
		a, b := int(binary.NativeEndian.Uint32(buf[8:])), int(binary.NativeEndian.Uint32(buf[12:]))
		size := RecordSize(a, b)
		if size > len(buf) || size%4 != 0 {
			t.Fatalf("bad record size %d (buffer %d)", size, len(buf))
		}
		out = append(out, rec{MutationOp(op), arg, string(buf[16 : 16+a]), string(buf[16+a : 16+a+b])})
		for _, p := range buf[16+a+b : size] {
			if p != 0 {
				t.Fatal("non-zero padding")
			}
		}
		buf = buf[size:]
	}
	return out
}

type captured struct {
	mu    sync.Mutex
	lines []string
}

var logs captured

func init() {
	SetLogger(func(level Level, instance uint64, msg string) {
		logs.mu.Lock()
		logs.lines = append(logs.lines, level.String()+" "+msg)
		logs.mu.Unlock()
	})
}

type probeState struct {
	calls int
	saved string
}

type probeConfig struct {
	Mode string `json:"mode"`
}

var nextID uint64 = 1000

func newInstance(t *testing.T, name string, config string, slots uint32) uint64 {
	t.Helper()
	idx, ok := Lookup(name)
	if !ok {
		t.Fatalf("plugin %q not registered", name)
	}
	nextID++
	if err := Init(idx, nextID, []byte(config), slots); err != nil {
		t.Fatalf("Init: %v", err)
	}
	id := nextID
	t.Cleanup(func() { _ = Shutdown(id) })
	return id
}

func init() {
	Register(Plugin[probeConfig, probeState]{
		Name: "probe",
		Init: func(c *probeConfig) error {
			if c.Mode == "refuse" {
				return errors.New("refused by config")
			}
			if c.Mode == "panic" {
				panic("init boom")
			}
			return nil
		},
		RequestHeaders: func(ctx *Context, c *probeConfig, st *probeState) {
			st.calls++
			switch c.Mode {
			case "hpanic":
				panic("boom")
			case "fail":
				ctx.SetRequestHeader("x-dropped", "1")
				ctx.Fail(errors.New("nope"))
				return
			case "odd":
				ctx.Reply(400, nil, "content-type")
				return
			case "all":
				ctx.SetRequestHeader("x-set", "v")
				ctx.AddRequestHeader("x-add", "vv")
				ctx.RemoveRequestHeader("x-rm")
				ctx.SetPath("/new")
				ctx.SetQuery("q=2")
				ctx.SetResponseHeader("x-rs", "1")
				ctx.AddResponseHeader("x-ra", "12")
				ctx.RemoveResponseHeader("x-rr")
				ctx.SetStatus(418)
				ctx.Reply(403, []byte("denied"), "content-type", "text/plain")
				return
			}
			ua, _ := ctx.RequestHeader("User-Agent")
			st.saved = strings.Clone(ua)
		},
		ResponseHeaders: func(ctx *Context, c *probeConfig, st *probeState) {
			st.calls++
			ctx.SetResponseHeader("x-calls", strings.Repeat("x", st.calls))
			ctx.SetResponseHeader("x-saved", st.saved)
		},
	})
}

var got map[string]any

func init() {
	Register(Plugin[struct{}, struct{}]{
		Name: "accessors",
		RequestHeaders: func(ctx *Context, _ *struct{}, _ *struct{}) {
			var all []string
			for n, v := range ctx.RequestHeaders() {
				all = append(all, n+"="+v)
			}
			var vals []string
			for v := range ctx.RequestHeaderValues("X-Multi") {
				vals = append(vals, v)
			}
			first, ok := ctx.RequestHeader("x-multi")
			upper, uok := ctx.RequestHeader("X-MULTI")
			_, missing := ctx.RequestHeader("x-none")
			rh, _ := ctx.ResponseHeader("Server")
			got = map[string]any{
				"phase": ctx.Phase(), "id": ctx.RequestID(), "method": ctx.Method(), "path": ctx.Path(),
				"query": ctx.Query(), "host": ctx.Host(), "client": ctx.ClientAddr(), "scheme": ctx.Scheme(),
				"version": ctx.Version(), "status": ctx.Status(), "all": strings.Join(all, ","),
				"vals": strings.Join(vals, ","), "first": first, "ok": ok, "upper": upper, "uok": uok,
				"missing": missing, "resp": rh,
			}
		},
	})
}

// Header strings are checked when an accessor reads them (Dispatch checks the arrays only): each
// accessor that meets a string outside the view reads it as absent and fails the call with
// ResultInvalidArgument; a bad string no accessor reads does not fail it.
func TestMalformedHeaderStrings(t *testing.T) {
	accessors := newInstance(t, "accessors", "", 1)
	probe := newInstance(t, "probe", "", 1)
	req := [][2]string{{"x-multi", "1"}, {"a", "b"}}
	resp := [][2]string{{"server", "s"}}
	entry := func(v *RequestView, off uint32, i uintptr) *Header {
		return (*Header)(unsafe.Add(unsafe.Pointer(v), uintptr(off)+i*SizeofHeader))
	}
	tests := []struct {
		name   string
		id     uint64
		mutate func(v *RequestView)
		want   Result
	}{
		{"all: name past end", accessors, func(v *RequestView) { entry(v, v.ReqHeadersOff, 1).Name.Off = v.Size }, ResultInvalidArgument},
		{"all: value length overflow", accessors, func(v *RequestView) {
			h := entry(v, v.ReqHeadersOff, 1)
			h.Value.Off, h.Value.Len = 8, 0xffffffff
		}, ResultInvalidArgument},
		{"values: value past end", accessors, func(v *RequestView) { entry(v, v.ReqHeadersOff, 0).Value.Off = v.Size }, ResultInvalidArgument},
		{"response header value past end", accessors, func(v *RequestView) { entry(v, v.RespHeadersOff, 0).Value.Len = v.Size }, ResultInvalidArgument},
		{"unread entry past end", probe, func(v *RequestView) { entry(v, v.ReqHeadersOff, 1).Value.Off = v.Size }, ResultOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view := testView(PhaseRequestHeaders, 0, 1, "/", [][2]string{{"user-agent", "x"}, req[1]}, resp)
			if tt.id == accessors {
				view = testView(PhaseRequestHeaders, 0, 1, "/", req, resp)
			}
			tt.mutate(viewOf(view))
			if res, out := run(t, tt.id, PhaseRequestHeaders, view, 256); res != tt.want || (res != ResultOK && len(out) != 0) {
				t.Errorf("result %v with %d bytes, want %v", res, len(out), tt.want)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	id := newInstance(t, "accessors", "", 4)
	view := testView(PhaseRequestHeaders, 2, 1, "/p", [][2]string{{"x-multi", "1"}, {"a", "b"}, {"x-multi", "2"}},
		[][2]string{{"server", "s"}})
	if res, _ := run(t, id, PhaseRequestHeaders, view, 256); res != ResultOK {
		t.Fatalf("result %v", res)
	}
	want := map[string]any{
		"phase": PhaseRequestHeaders, "id": uint64(1), "method": "GET", "path": "/p", "query": "a=1",
		"host": "example.com", "client": "10.0.0.1:5", "scheme": "http", "version": "HTTP/1.1", "status": 200,
		"all": "x-multi=1,a=b,x-multi=2", "vals": "1,2", "first": "1", "ok": true, "upper": "1", "uok": true,
		"missing": false, "resp": "s",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
}

func TestMutationEncoding(t *testing.T) {
	id := newInstance(t, "probe", `{"mode":"all"}`, 4)
	res, out := run(t, id, PhaseRequestHeaders, testView(PhaseRequestHeaders, 0, 1, "/", nil, nil), 1024)
	if res != ResultOK {
		t.Fatalf("result %v", res)
	}
	want := []rec{
		{OpSetRequestHeader, 0, "x-set", "v"},
		{OpAddRequestHeader, 0, "x-add", "vv"},
		{OpRemoveRequestHeader, 0, "x-rm", ""},
		{OpSetPath, 0, "/new", ""},
		{OpSetQuery, 0, "q=2", ""},
		{OpSetResponseHeader, 0, "x-rs", "1"},
		{OpAddResponseHeader, 0, "x-ra", "12"},
		{OpRemoveResponseHeader, 0, "x-rr", ""},
		{OpSetStatus, 418, "", ""},
		{OpLocalReply, 403, "denied", ""},
		{OpLocalReplyHeader, 0, "content-type", "text/plain"},
	}
	got := decode(t, out)
	if len(got) != len(want) {
		t.Fatalf("got %d records %v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// Every prefix-sized buffer that cuts a record overflows; the exact size fits.
	for _, capacity := range []int{0, 16, len(out) - 4} {
		if res, n := run(t, id, PhaseRequestHeaders, testView(PhaseRequestHeaders, 0, 1, "/", nil, nil), capacity); res != ResultMutationOverflow || len(n) != 0 {
			t.Errorf("cap %d: result %v len %d, want overflow", capacity, res, len(n))
		}
	}
	if res, _ := run(t, id, PhaseRequestHeaders, testView(PhaseRequestHeaders, 0, 1, "/", nil, nil), len(out)); res != ResultOK {
		t.Errorf("exact cap: %v", res)
	}
}

func TestResults(t *testing.T) {
	tests := []struct {
		mode string
		want Result
		log  string
	}{
		{"", ResultOK, ""},
		{"hpanic", ResultPanic, `error plugin "probe" panicked in request_headers: boom`},
		{"fail", ResultHandlerFailed, `error plugin "probe" failed in request_headers: nope`},
		{"odd", ResultHandlerFailed, "odd number of header strings"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			id := newInstance(t, "probe", `{"mode":"`+tt.mode+`"}`, 2)
			logs.mu.Lock()
			logs.lines = nil
			logs.mu.Unlock()
			res, out := run(t, id, PhaseRequestHeaders, testView(PhaseRequestHeaders, 1, 1, "/", nil, nil), 512)
			if res != tt.want {
				t.Errorf("result %v, want %v", res, tt.want)
			}
			if res != ResultOK && len(out) != 0 {
				t.Errorf("%d mutation bytes reported with result %v", len(out), res)
			}
			logs.mu.Lock()
			joined := strings.Join(logs.lines, "\n")
			logs.mu.Unlock()
			if !strings.Contains(joined, tt.log) {
				t.Errorf("logs %q do not contain %q", joined, tt.log)
			}
		})
	}
}

func TestStatePerSlotAndGeneration(t *testing.T) {
	id := newInstance(t, "probe", "", 2)
	hdr := [][2]string{{"user-agent", "ua-1"}}
	step := func(phase Phase, slot, gen uint32, headers [][2]string) []rec {
		res, out := run(t, id, phase, testView(phase, slot, gen, "/", headers, nil), 512)
		if res != ResultOK {
			t.Fatalf("result %v", res)
		}
		return decode(t, out)
	}
	step(PhaseRequestHeaders, 0, 1, hdr)
	step(PhaseRequestHeaders, 1, 1, [][2]string{{"user-agent", "ua-other"}})
	got := step(PhaseResponseHeaders, 0, 1, nil)
	if got[0].b != "xx" || got[1].b != "ua-1" {
		t.Errorf("same request: %v, want calls xx and saved ua-1", got)
	}
	got = step(PhaseResponseHeaders, 0, 2, nil) // new generation: state reset
	if got[0].b != "x" || got[1].b != "" {
		t.Errorf("new generation: %v, want fresh state", got)
	}
}

func TestMalformedView(t *testing.T) {
	id := newInstance(t, "probe", "", 4)
	tests := []struct {
		name   string
		mutate func(v *RequestView)
		phase  Phase
		want   Result
	}{
		{"ok", func(*RequestView) {}, PhaseRequestHeaders, ResultOK},
		{"size too small", func(v *RequestView) { v.Size = SizeofRequestView - 1 }, PhaseRequestHeaders, ResultInvalidArgument},
		{"path past end", func(v *RequestView) { v.Path.Off = v.Size }, PhaseRequestHeaders, ResultInvalidArgument},
		{"len overflow", func(v *RequestView) { v.Method.Off, v.Method.Len = 8, 0xffffffff }, PhaseRequestHeaders, ResultInvalidArgument},
		{"headers past end", func(v *RequestView) { v.ReqHeaderCount = 1000 }, PhaseRequestHeaders, ResultInvalidArgument},
		{"headers misaligned", func(v *RequestView) { v.ReqHeadersOff++ }, PhaseRequestHeaders, ResultInvalidArgument},
		{"header count overflow", func(v *RequestView) { v.ReqHeaderCount = 0xffffffff }, PhaseRequestHeaders, ResultInvalidArgument},
		{"header string past end", func(v *RequestView) {
			(*Header)(unsafe.Add(unsafe.Pointer(v), v.ReqHeadersOff)).Value.Len = v.Size
		}, PhaseRequestHeaders, ResultInvalidArgument},
		{"header name past end", func(v *RequestView) {
			(*Header)(unsafe.Add(unsafe.Pointer(v), v.ReqHeadersOff)).Name.Off = v.Size
		}, PhaseRequestHeaders, ResultInvalidArgument},
		{"resp headers past end", func(v *RequestView) { v.RespHeaderCount = 1 << 20 }, PhaseRequestHeaders, ResultInvalidArgument},
		{"slot out of range", func(v *RequestView) { v.Slot = 4 }, PhaseRequestHeaders, ResultInvalidArgument},
		{"phase mismatch", func(v *RequestView) { v.Phase = uint32(PhaseResponseHeaders) }, PhaseRequestHeaders, ResultInvalidArgument},
		{"undeclared phase", func(v *RequestView) { v.Phase = uint32(PhaseLog) }, PhaseLog, ResultUnsupportedPhase},
		{"reserved phase", func(v *RequestView) { v.Phase = 40 }, 40, ResultUnsupportedPhase},
	}
	// Each fixed string, one byte past the end: validView checks every one of them.
	fixed := map[string]func(v *RequestView) *Str{
		"method": func(v *RequestView) *Str { return &v.Method }, "path": func(v *RequestView) *Str { return &v.Path },
		"query": func(v *RequestView) *Str { return &v.Query }, "host": func(v *RequestView) *Str { return &v.Host },
		"client": func(v *RequestView) *Str { return &v.ClientAddr }, "scheme": func(v *RequestView) *Str { return &v.Scheme },
		"version": func(v *RequestView) *Str { return &v.Version }, "server name": func(v *RequestView) *Str { return &v.ServerName },
	}
	for name, field := range fixed {
		tests = append(tests, struct {
			name   string
			mutate func(v *RequestView)
			phase  Phase
			want   Result
		}{name + " one byte past end", func(v *RequestView) {
			s := field(v)
			s.Off, s.Len = v.Size-1, 2
		}, PhaseRequestHeaders, ResultInvalidArgument})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view := testView(PhaseRequestHeaders, 0, 1, "/", [][2]string{{"user-agent", "x"}}, nil)
			tt.mutate(viewOf(view))
			if res, _ := run(t, id, tt.phase, view, 256); res != tt.want {
				t.Errorf("result %v, want %v", res, tt.want)
			}
		})
	}
	t.Run("nil and unknown", func(t *testing.T) {
		out := make([]byte, 16)
		if res, _ := Dispatch(id, 0, nil, unsafe.Pointer(&out[0]), 16); res != ResultInvalidArgument {
			t.Errorf("nil view: %v", res)
		}
		view := testView(PhaseRequestHeaders, 0, 1, "/", nil, nil)
		if res, _ := Dispatch(id, 0, unsafe.Pointer(&view[0]), nil, 16); res != ResultInvalidArgument {
			t.Errorf("nil out with cap: %v", res)
		}
		if res, _ := Dispatch(999999, 0, unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 16); res != ResultUnknownPlugin {
			t.Errorf("unknown instance: %v", res)
		}
	})
}

func TestInitErrors(t *testing.T) {
	idx, _ := Lookup("probe")
	tests := []struct {
		name   string
		plugin uint32
		config string
		want   Result
		msg    string
	}{
		{"unknown plugin", 9999, "", ResultUnknownPlugin, "unknown plugin"},
		{"unknown field", idx, `{"mode":"","extra":1}`, ResultInitFailed, `unknown field "extra"`},
		{"bad json", idx, `{"mode":`, ResultInitFailed, "invalid config"},
		{"trailing", idx, `{} {}`, ResultInitFailed, "trailing data"},
		{"init error", idx, `{"mode":"refuse"}`, ResultInitFailed, "refused by config"},
		{"init panic", idx, `{"mode":"panic"}`, ResultInitFailed, "panicked during init: init boom"},
		{"null config", idx, `null`, ResultOK, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint64(5000 + i)
			err := Init(tt.plugin, id, []byte(tt.config), 1)
			if got := InitResult(err); got != tt.want {
				t.Errorf("result %v (%v), want %v", got, err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
			if err == nil {
				if err := Init(tt.plugin, id, nil, 1); InitResult(err) != ResultInvalidArgument {
					t.Errorf("duplicate instance: %v", err)
				}
				if err := Shutdown(id); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestRegistryErrors(t *testing.T) {
	noop := func(*Context, *struct{}, *struct{}) {}
	var r registry
	register(&r, Plugin[struct{}, struct{}]{Name: "a", RequestHeaders: noop})
	if r.loadError() != nil || len(r.plugins()) != 1 {
		t.Fatalf("valid registration: %v", r.loadError())
	}
	register(&r, Plugin[struct{}, struct{}]{Name: "a", Log: noop})
	register(&r, Plugin[struct{}, struct{}]{Name: "", Log: noop})
	register(&r, Plugin[struct{}, struct{}]{Name: "b"})
	err := r.loadError()
	for _, want := range []string{`"a" registered twice`, "empty name", `"b" has no phase handler`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load error %v does not mention %q", err, want)
		}
	}
	if r.plugins() != nil {
		t.Error("plugins reported despite a load error")
	}
	if _, err := r.definition(0); !errors.Is(err, ErrUnknownPlugin) {
		t.Errorf("definition after load error: %v", err)
	}
}

func TestViewHeadersRegistration(t *testing.T) {
	noop := func(*Context, *struct{}, *struct{}) {}
	var r registry
	register(&r, Plugin[struct{}, struct{}]{Name: "all", RequestHeaders: noop})
	register(&r, Plugin[struct{}, struct{}]{Name: "none", RequestHeaders: noop, ViewHeaders: []string{}})
	register(&r, Plugin[struct{}, struct{}]{Name: "two", RequestHeaders: noop, ViewHeaders: []string{"X-Api-Key", "accept", "x-api-key"}})
	if err := r.loadError(); err != nil {
		t.Fatal(err)
	}
	got := r.plugins()
	if got[0].ViewHeaders != nil || got[1].ViewHeaders == nil || len(got[1].ViewHeaders) != 0 ||
		strings.Join(got[2].ViewHeaders, ",") != "x-api-key,accept" {
		t.Errorf("view headers %q %q %q", got[0].ViewHeaders, got[1].ViewHeaders, got[2].ViewHeaders)
	}
	tooMany := make([]string, MaxViewHeaders+1)
	for i := range tooMany {
		tooMany[i] = "x"
	}
	for _, bad := range [][]string{{""}, {"x a"}, {"x\r\n"}, {"é"}, {strings.Repeat("a", MaxHeaderNameLen+1)}, tooMany} {
		var r registry
		register(&r, Plugin[struct{}, struct{}]{Name: "p", RequestHeaders: noop, ViewHeaders: bad})
		if err := r.loadError(); err == nil || !strings.Contains(err.Error(), `plugin "p": ViewHeaders`) {
			t.Errorf("%q: load error %v", bad, err)
		}
	}
}

// A Context of a plugin that declared ViewHeaders reads only those names, in any case, even when
// the view holds more lines (another plugin on the chain asked for them).
func TestDeclaredHeadersAreTheOnlyOnesRead(t *testing.T) {
	buf := testView(PhaseRequestHeaders, 0, 1, "/", [][2]string{{"x-a", "1"}, {"x-b", "2"}, {"x-a", "3"}}, nil)
	var c Context
	c.begin(unsafe.Pointer(&buf[0]), viewOf(buf).Size, PhaseRequestHeaders, 1, nil, 0)
	defer c.end()
	c.shown = []string{"x-a"}
	if v, ok := c.RequestHeader("X-A"); !ok || v != "1" {
		t.Errorf("x-a: %q %v", v, ok)
	}
	if v, ok := c.RequestHeader("x-b"); ok {
		t.Errorf("x-b read though undeclared: %q", v)
	}
	var lines, values []string
	for n, v := range c.RequestHeaders() {
		lines = append(lines, n+"="+v)
	}
	for v := range c.RequestHeaderValues("x-b") {
		values = append(values, v)
	}
	if strings.Join(lines, ";") != "x-a=1;x-a=3" || values != nil {
		t.Errorf("lines %q, x-b values %q", lines, values)
	}
	c.shown = nil
	if v, ok := c.RequestHeader("x-b"); !ok || v != "2" {
		t.Errorf("undeclared plugin: x-b %q %v", v, ok)
	}
}

func TestPhaseMask(t *testing.T) {
	noop := func(*Context, *struct{}, *struct{}) {}
	p := Plugin[struct{}, struct{}]{ResponseHeaders: noop, Log: noop}
	if got := p.phases(); got != 1<<2|1<<4 {
		t.Errorf("phases %#x", got)
	}
}

func TestEqualFoldASCII(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"content-type", "Content-Type", true},
		{"x", "X", true},
		{"k", "\u212a", false}, // Kelvin sign folds to k in Unicode, not in ASCII
		{"ab", "abc", false},
		{"a-b", "a_b", false},
	}
	for _, tt := range tests {
		if got := equalFoldASCII(tt.a, tt.b); got != tt.want {
			t.Errorf("equalFoldASCII(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}

// Ids the in-process host hands out (small, dense) are found by index, any other id in the
// map part; both are forgotten by Shutdown, and neither shadows the other.
func TestInstanceTableDenseAndSparseIDs(t *testing.T) {
	idx, ok := Lookup("probe")
	if !ok {
		t.Fatal("probe not registered")
	}
	for _, id := range []uint64{7, denseIDs - 1, denseIDs, 1 << 40} {
		if err := Init(idx, id, nil, 1); err != nil {
			t.Fatalf("Init %d: %v", id, err)
		}
		if inst := lookupInstance(id); inst == nil || inst.id != id {
			t.Fatalf("instance %d not found after Init", id)
		}
	}
	for _, id := range []uint64{7, denseIDs - 1, denseIDs, 1 << 40} {
		if err := Shutdown(id); err != nil {
			t.Fatalf("Shutdown %d: %v", id, err)
		}
		if lookupInstance(id) != nil {
			t.Fatalf("instance %d still found after Shutdown", id)
		}
		if err := Shutdown(id); InitResult(err) != ResultUnknownPlugin {
			t.Fatalf("second Shutdown %d: %v", id, err)
		}
	}
}
