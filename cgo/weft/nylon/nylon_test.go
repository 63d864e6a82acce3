package nylon_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/nylon"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

var (
	initialized atomic.Int32
	logged      = make(chan string, 16)
)

// The shape of Nylon's examples/go "authz" entry: per-request state in the phase handler's
// closure, a request filter that answers or continues, response and body filters, logging.
func init() {
	plugin := nylon.NewNylonPlugin()
	plugin.Initialize(nylon.NewInitializer(func(cfg struct {
		Token string `json:"token"`
	}) {
		if cfg.Token != "" {
			initialized.Add(1)
		}
	}))
	plugin.AddPhaseHandler("nylon-test-authz", func(phase *nylon.PhaseHandler) {
		state := map[string]bool{"authz": false}
		phase.RequestFilter(func(ctx *nylon.PhaseRequestFilter) {
			token, _ := ctx.GetPayload()["token"].(string)
			if ctx.Request().Header("Authorization") != "Bearer "+token {
				res := ctx.Response()
				res.SetStatus(nylon.StatusUnauthorized)
				res.SetHeader("X-RequestFilter", "denied")
				res.BodyJSON(map[string]string{"error": "unauthorized"})
				ctx.End()
				return
			}
			state["authz"] = true
			ctx.Response().SetHeader("X-RequestFilter", "authz-1")
			ctx.Next()
		})
		phase.ResponseFilter(func(ctx *nylon.PhaseResponseFilter) {
			ctx.SetResponseHeader("X-ResponseFilter", "authz-2")
			ctx.SetResponseHeader("X-Authz", strconv.FormatBool(state["authz"]))
			ctx.RemoveResponseHeader("Content-Length") // framing: weft's business, ignored
			ctx.SetResponseHeader("Transfer-Encoding", "chunked")
			ctx.Next()
		})
		phase.ResponseBodyFilter(func(ctx *nylon.PhaseResponseBodyFilter) {
			res := ctx.Response()
			res.BodyRaw(append(res.ReadBody(), "\n<!-- Modified by Authz plugin -->"...))
			ctx.Next()
		})
		phase.Logging(func(ctx *nylon.PhaseLogging) {
			req, res := ctx.Request(), ctx.Response()
			logged <- fmt.Sprintf("%s %s %d %s %s", req.Method(), req.Path(), res.Status(), req.ClientIP(), req.URL())
			ctx.Next()
		})
	})
	plugin.AddPhaseHandler("nylon-test-late", func(phase *nylon.PhaseHandler) {
		phase.RequestFilter(func(ctx *nylon.PhaseRequestFilter) {
			lateNext = ctx.Next // called after the filter returned: logged, ignored
		})
	})
}

var (
	lateNext  func()
	shutdowns atomic.Int32
)

// Nylon's shutdown hook runs once, when the last instance shuts down (tests do not run in
// parallel here, and each closes its hosts when it ends).
func TestShutdownRunsOnceAfterTheLastInstance(t *testing.T) {
	shutdowns.Store(0)
	nylon.NewNylonPlugin().Shutdown(func() { shutdowns.Add(1) })
	a, err := wefttest.New("nylon-test-late", nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wefttest.New("nylon-test-authz", map[string]any{"token": "x"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	if n := shutdowns.Load(); n != 0 {
		t.Fatalf("shutdown ran %d times with an instance still up", n)
	}
	_ = b.Close()
	if n := shutdowns.Load(); n != 1 {
		t.Fatalf("shutdown ran %d times after the last instance, want 1", n)
	}
}

func authz(t testing.TB) *wefttest.Host {
	return wefttest.MustNew(t, "nylon-test-authz", map[string]any{"token": "s3cret"})
}

func TestAuthzPasses(t *testing.T) {
	h := authz(t)
	if initialized.Load() == 0 {
		t.Error("Initialize did not get the instance config")
	}
	x := h.Request(wefttest.Request{Path: "/p", Query: "a=1", Host: "example.com",
		Headers: [][2]string{{"authorization", "Bearer s3cret"}}})
	if res := x.RequestHeaders(); res.Code != wefttest.OK || res.Reply != nil {
		t.Fatalf("request filter: %+v", res)
	}
	x.Response(200, [][2]string{{"content-type", "text/html"}})
	if res := x.ResponseHeaders(); res.Code != wefttest.OK {
		t.Fatalf("response filter: %+v (%s)", res, res.Invalid)
	}
	for name, want := range map[string]string{"x-requestfilter": "authz-1", "x-responsefilter": "authz-2", "x-authz": "true"} {
		if v, _ := x.ResponseHeader(name); v != want {
			t.Errorf("%s = %q, want %q", name, v, want)
		}
	}
	if _, ok := x.ResponseHeader("transfer-encoding"); ok {
		t.Error("transfer-encoding reached the response")
	}
	body := x.ResponseBodyBuffered([]byte("<html></html>"))
	if body.Code != wefttest.OK || string(body.Out) != "<html></html>\n<!-- Modified by Authz plugin -->" {
		t.Fatalf("body filter: %+v %q", body.Result, body.Out)
	}
	if res := x.Log(); res.Code != wefttest.OK {
		t.Fatalf("logging: %+v", res)
	}
	if got, want := <-logged, "GET /p 200 192.0.2.1 http://example.com/p?a=1"; got != want {
		t.Errorf("logged %q, want %q", got, want)
	}
}

func TestAuthzDenies(t *testing.T) {
	x := authz(t).Request(wefttest.Request{Headers: [][2]string{{"authorization", "Bearer nope"}}})
	res := x.RequestHeaders()
	if res.Code != wefttest.OK || res.Reply == nil || res.Reply.Status != 401 {
		t.Fatalf("request filter: %+v", res)
	}
	if ct, _ := res.Reply.Header("content-type"); ct != nylon.ContentTypeJSON || string(res.Reply.Body) != `{"error":"unauthorized"}` {
		t.Errorf("reply %q %q", ct, res.Reply.Body)
	}
	if v, _ := res.Reply.Header("x-requestfilter"); v != "denied" {
		t.Errorf("x-requestfilter %q, want denied", v)
	}
}

// A response without a body filter is not handed to the plugin; state is per request.
func TestSkipsBodyWithoutFilterAndResetsState(t *testing.T) {
	h := wefttest.MustNew(t, "nylon-test-late", nil)
	for range 3 {
		x := h.Request(wefttest.Request{})
		if res := x.RequestHeaders(); res.Code != wefttest.OK {
			t.Fatalf("%+v", res)
		}
		lateNext()
		x.Response(200, nil)
		res := x.ResponseHeaders()
		if res.Code != wefttest.OK || len(res.Mutations) != 1 || res.Mutations[0].Op != wefttest.OpSkipBody {
			t.Fatalf("response headers: %+v", res)
		}
		if !lateReported(res.Logs) {
			t.Errorf("a late Next was not reported: %+v", res.Logs)
		}
	}
}

func lateReported(logs []wefttest.LogLine) bool {
	for _, l := range logs {
		if l.Level == weft.LogWarn && strings.Contains(l.Msg, "after its filter returned") {
			return true
		}
	}
	return false
}

// The same work written against weft's API, for the benchmark.
type nativeCfg struct {
	Token string `json:"token"`
}

type nativeState struct{ authz bool }

func init() {
	weft.Register(weft.Plugin[nativeCfg, nativeState]{
		Name: "nylon-bench-native",
		RequestHeaders: func(ctx *weft.Context, cfg *nativeCfg, st *nativeState) {
			v, _ := ctx.RequestHeader("authorization")
			st.authz = len(v) == len("Bearer ")+len(cfg.Token) && v[len("Bearer "):] == cfg.Token
		},
		ResponseHeaders: func(ctx *weft.Context, cfg *nativeCfg, st *nativeState) {
			ctx.SetResponseHeader("x-requestfilter", "authz-1")
			ctx.SetResponseHeader("x-authz", strconv.FormatBool(st.authz))
		},
		ResponseBody: func(ctx *weft.Context, cfg *nativeCfg, st *nativeState) {
			ctx.AppendBody([]byte("\n<!-- Modified -->"))
		},
		ResponseBodyBuffered: true,
		Log: func(ctx *weft.Context, cfg *nativeCfg, st *nativeState) {
			_, _, _ = ctx.Method(), ctx.Path(), ctx.Status()
		},
	})
	nylon.NewNylonPlugin().AddPhaseHandler("nylon-bench-compat", func(phase *nylon.PhaseHandler) {
		authz := false
		phase.RequestFilter(func(ctx *nylon.PhaseRequestFilter) {
			token, _ := ctx.GetPayload()["token"].(string)
			authz = ctx.Request().Header("authorization") == "Bearer "+token
			ctx.Next()
		})
		phase.ResponseFilter(func(ctx *nylon.PhaseResponseFilter) {
			ctx.SetResponseHeader("x-requestfilter", "authz-1")
			ctx.SetResponseHeader("x-authz", strconv.FormatBool(authz))
			ctx.Next()
		})
		phase.ResponseBodyFilter(func(ctx *nylon.PhaseResponseBodyFilter) {
			res := ctx.Response()
			res.BodyRaw(append(res.ReadBody(), "\n<!-- Modified -->"...))
			ctx.Next()
		})
		phase.Logging(func(ctx *nylon.PhaseLogging) {
			_, _, _ = ctx.Request().Method(), ctx.Request().Path(), ctx.Response().Status()
			ctx.Next()
		})
	})
}

// BenchmarkPhase compares one phase call of the compatibility layer with the same work on
// weft's API (nylon-bench-compat against nylon-bench-native, phase by phase). The call repeats
// within one request, so the compatibility layer's once-per-request setup (running the
// plugin's phase handler, which allocates its closures) is not in these numbers.
func BenchmarkPhase(b *testing.B) {
	req := wefttest.Request{Path: "/p", Headers: [][2]string{{"authorization", "Bearer s3cret"}, {"accept", "*/*"}}}
	resp := &wefttest.Response{Status: 200, Headers: [][2]string{{"content-type", "text/html"}}}
	phases := []weft.Phase{weft.PhaseRequestHeaders, weft.PhaseResponseHeaders, weft.PhaseLog}
	for _, plugin := range []string{"nylon-bench-native", "nylon-bench-compat"} {
		h := wefttest.MustNew(b, plugin, map[string]any{"token": "s3cret"})
		for _, phase := range phases {
			b.Run(plugin+"/"+phase.String(), func(b *testing.B) {
				p := h.Prepare(phase, req, resp)
				b.ReportAllocs()
				for b.Loop() {
					if code, _ := p.Dispatch(); code != wefttest.OK {
						b.Fatal(code)
					}
				}
			})
		}
	}
}
