package core

import (
	"testing"
	"unsafe"
)

func TestBodyFlagsAndPhases(t *testing.T) {
	p := Plugin[struct{}, struct{}]{
		Name:                 "b",
		ResponseBody:         func(*Context, *struct{}, *struct{}) {},
		ResponseBodyBuffered: true,
		RequestBodyBuffered:  true, // without a RequestBody handler: no flag
	}
	if got, want := p.phases(), PhaseResponseBody.Mask(); got != want {
		t.Fatalf("phases %b, want %b", got, want)
	}
	if got := p.flags(); got != FlagResponseBodyBuffered {
		t.Fatalf("flags %b, want %b", got, FlagResponseBodyBuffered)
	}
}

func TestValidBody(t *testing.T) {
	b := []byte("xy")
	cases := []struct {
		phase Phase
		v     RequestView
		ok    bool
	}{
		{PhaseRequestBody, RequestView{}, true},
		{PhaseRequestBody, RequestView{Body: unsafe.Pointer(&b[0]), BodyLen: 2}, true},
		{PhaseResponseBody, RequestView{BodyLen: 2}, false},
		{PhaseRequestHeaders, RequestView{Body: unsafe.Pointer(&b[0]), BodyLen: 2}, false},
		{PhaseLog, RequestView{}, true},
	}
	for i, c := range cases {
		if got := validBody(c.phase, &c.v); got != c.ok {
			t.Errorf("case %d: validBody = %v, want %v", i, got, c.ok)
		}
	}
}

func TestBodyAccessorsOutsideBodyPhases(t *testing.T) {
	var c Context
	if c.Body() != nil || c.EndOfStream() || c.BodyBuffered() {
		t.Fatal("a context outside a call has no body")
	}
	b := []byte("chunk")
	v := RequestView{Body: unsafe.Pointer(&b[0]), BodyLen: 5, BodyFlags: BodyEndOfStream | BodyBuffered}
	c.view = &v
	if string(c.Body()) != "chunk" || !c.EndOfStream() || !c.BodyBuffered() {
		t.Fatalf("body %q eos %v buffered %v", c.Body(), c.EndOfStream(), c.BodyBuffered())
	}
	if unsafe.SliceData(c.Body()) != &b[0] {
		t.Fatal("Body must alias the host's bytes, not copy them")
	}
}
