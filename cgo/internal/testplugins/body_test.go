package testplugins

import (
	"strings"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

func TestBodyUpperStreams(t *testing.T) {
	h := wefttest.MustNew(t, "test-body-upper", nil)
	x := h.Request(wefttest.Request{Method: "POST"})
	got, err := x.StreamRequestBody([]byte("hello, body"), 4)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "<bof>HELLO, BODY<eof>" {
		t.Fatalf("got %q", got)
	}
	x = h.Request(wefttest.Request{Method: "POST", Headers: [][2]string{{"x-test-drop", "1"}}})
	got, _ = x.StreamRequestBody([]byte("gone"), 2)
	if string(got) != "<bof><eof>" {
		t.Fatalf("dropped: got %q", got)
	}
	// An empty body still gets its end-of-stream call.
	x = h.Request(wefttest.Request{})
	if res := x.ResponseBody(nil, true); string(res.Out) != "<bof><eof>" {
		t.Fatalf("empty body: %+v", res)
	}
}

func TestBodyBufferReplyAndHead(t *testing.T) {
	h := wefttest.MustNew(t, "test-body-buffer", nil)
	x := h.Request(wefttest.Request{Method: "POST"})
	res := x.RequestBodyBuffered([]byte("abc"))
	if res.Code != wefttest.OK || string(res.Out) != "len=3;abc" {
		t.Fatalf("%+v", res)
	}
	if v, _ := x.RequestHeader("x-body-len"); v != "3" {
		t.Fatalf("x-body-len %q", v)
	}
	x = h.Request(wefttest.Request{Method: "POST"})
	if res := x.RequestBodyBuffered([]byte("reject")); res.Reply == nil || res.Reply.Status != 400 {
		t.Fatalf("%+v", res)
	}
	// The same head change in a streamed call is refused, as the host refuses it.
	x = h.Request(wefttest.Request{Method: "POST"})
	if res := x.RequestBody([]byte("abc"), true); res.Code != wefttest.InvalidMutation ||
		!strings.Contains(res.Invalid, "buffered") {
		t.Fatalf("%+v", res)
	}
}

func TestBodyPanicIsRecovered(t *testing.T) {
	h := wefttest.MustNew(t, "test-body-panic", nil)
	x := h.Request(wefttest.Request{Headers: [][2]string{{"x-test-panic-after", "3"}}})
	if res := x.ResponseBody([]byte("ab"), false); res.Code != wefttest.OK {
		t.Fatal(res.Code)
	}
	if res := x.ResponseBody([]byte("cd"), false); res.Code != wefttest.Panic {
		t.Fatalf("want panic, got %v", res.Code)
	}
}
