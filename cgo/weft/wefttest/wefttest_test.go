package wefttest_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

type counterState struct{ n int }

func init() {
	weft.Register(weft.Plugin[struct{}, counterState]{
		Name: "wefttest-counter",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, st *counterState) {
			st.n++
			if v, ok := ctx.RequestHeader("x-path"); ok {
				ctx.SetPath(v)
			}
			if _, ok := ctx.RequestHeader("x-crlf"); ok {
				ctx.SetRequestHeader("x-bad", "a\r\nb")
			}
			if _, ok := ctx.RequestHeader("x-deny"); ok {
				ctx.Reply(403, []byte("no"), "Content-Type", "text/plain")
			}
			ctx.AddRequestHeader("x-count", strconv.Itoa(st.n))
		},
		ResponseHeaders: func(ctx *weft.Context, _ *struct{}, st *counterState) {
			st.n++
			ctx.SetResponseHeader("x-count", strconv.Itoa(st.n))
			ctx.RemoveResponseHeader("server")
			if v, _ := ctx.RequestHeader("x-count"); v != "" {
				ctx.SetResponseHeader("x-req-count", v) // sees the request as modified
			}
		},
		Log: func(ctx *weft.Context, _ *struct{}, st *counterState) {
			st.n++
			ctx.Logf(weft.LogInfo, "n=%d path=%s status=%d", st.n, ctx.Path(), ctx.Status())
		},
	})
}

func TestExchange(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-counter", nil)
	x := h.Request(wefttest.Request{Path: "/a", Headers: [][2]string{{"X-Path", "/b"}}})
	if res := x.RequestHeaders(); res.Code != wefttest.OK || len(res.Mutations) != 2 {
		t.Fatalf("request headers: %+v", res)
	}
	if got := x.Request().Path; got != "/b" {
		t.Errorf("path %q, want /b", got)
	}
	x.Response(200, [][2]string{{"Server", "upstream"}})
	if res := x.ResponseHeaders(); res.Code != wefttest.OK {
		t.Fatalf("response headers: %+v", res)
	}
	if v, _ := x.ResponseHeader("x-count"); v != "2" {
		t.Errorf("x-count %q, want 2 (state carried)", v)
	}
	if v, _ := x.ResponseHeader("x-req-count"); v != "1" {
		t.Errorf("x-req-count %q, want 1", v)
	}
	if _, ok := x.ResponseHeader("server"); ok {
		t.Error("server header not removed")
	}
	res := x.Log()
	if len(res.Logs) != 1 || res.Logs[0].Msg != "n=3 path=/b status=200" || res.Logs[0].Level != weft.LogInfo {
		t.Errorf("log phase logs %+v", res.Logs)
	}
	// A new request starts from zero state even on a reused slot.
	for i := 0; i < 20; i++ {
		y := h.Request(wefttest.Request{})
		y.RequestHeaders()
		if v, _ := y.RequestHeader("x-count"); v != "1" {
			t.Fatalf("request %d: x-count %q, want 1", i, v)
		}
	}
	if n := len(h.Logs()); n != 1 {
		t.Errorf("%d host log lines, want 1", n)
	}
}

func TestValidationAndReply(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-counter", nil)
	tests := []struct {
		name    string
		headers [][2]string
		code    wefttest.Code
		reply   int
	}{
		{"plain", nil, wefttest.OK, 0},
		{"crlf", [][2]string{{"x-crlf", "1"}}, wefttest.InvalidMutation, 0},
		{"bad path", [][2]string{{"x-path", "nope"}}, wefttest.InvalidMutation, 0},
		{"deny", [][2]string{{"x-deny", "1"}}, wefttest.OK, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := h.Request(wefttest.Request{Headers: tt.headers})
			res := x.RequestHeaders()
			if res.Code != tt.code {
				t.Fatalf("code %v (%s), want %v", res.Code, res.Invalid, tt.code)
			}
			if tt.reply == 0 {
				if res.Reply != nil {
					t.Errorf("unexpected reply %+v", res.Reply)
				}
				return
			}
			if res.Reply == nil || res.Reply.Status != tt.reply || string(res.Reply.Body) != "no" {
				t.Fatalf("reply %+v", res.Reply)
			}
			if ct, _ := res.Reply.Header("content-type"); ct != "text/plain" {
				t.Errorf("reply content-type %q", ct)
			}
		})
	}
}

func TestOverflowAndErrors(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-counter", nil)
	h.BufferSize = 8
	if res := h.Request(wefttest.Request{}).RequestHeaders(); res.Code != wefttest.MutationOverflow {
		t.Errorf("code %v, want overflow", res.Code)
	}
	if _, err := wefttest.New("no-such-plugin", nil, 1); err == nil || !strings.Contains(err.Error(), "no plugin") {
		t.Errorf("unknown plugin: %v", err)
	}
	if _, err := wefttest.New("wefttest-counter", `{"x":1}`, 1); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("bad config: %v", err)
	}
}

func TestPrepared(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-counter", nil)
	p := h.Prepare(weft.PhaseRequestHeaders, wefttest.Request{}, nil)
	code, n := p.Dispatch()
	ms, err := p.Mutations(n)
	if code != wefttest.OK || err != nil || len(ms) != 1 || ms[0].Op != wefttest.OpAddRequestHeader {
		t.Fatalf("code %v mutations %v err %v", code, ms, err)
	}
}

func init() {
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name: "wefttest-sni",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.SetRequestHeader("x-sni", ctx.ServerName())
			ctx.SetRequestHeader("x-scheme", ctx.Scheme())
		},
	})
}

func TestServerName(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-sni", nil)
	for _, c := range []struct{ name, scheme string }{{"a.example", "https"}, {"", "https"}, {"", "http"}} {
		x := h.Request(wefttest.Request{ServerName: c.name, Scheme: c.scheme, Host: "other.example"})
		if res := x.RequestHeaders(); res.Code != wefttest.OK {
			t.Fatalf("%+v: %+v", c, res)
		}
		if v, _ := x.RequestHeader("x-sni"); v != c.name {
			t.Errorf("%+v: x-sni %q", c, v)
		}
		if v, _ := x.RequestHeader("x-scheme"); v != c.scheme {
			t.Errorf("%+v: x-scheme %q", c, v)
		}
	}
}
