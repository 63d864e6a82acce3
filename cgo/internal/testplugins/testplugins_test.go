package testplugins

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

func TestTestPlugins(t *testing.T) {
	tests := []struct {
		plugin  string
		headers [][2]string
		code    wefttest.Code
		log     string
	}{
		{"test-panic", nil, wefttest.OK, ""},
		{"test-panic", [][2]string{{"x-test-panic", "1"}}, wefttest.Panic, `plugin "test-panic" panicked in request_headers`},
		{"test-bad-header", nil, wefttest.OK, ""},
		{"test-bad-header", [][2]string{{"x-test-crlf", "1"}}, wefttest.InvalidMutation, ""},
		{"bench-header", [][2]string{{"user-agent", "bench"}, {"accept", "*/*"}}, wefttest.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.plugin, func(t *testing.T) {
			h := wefttest.MustNew(t, tt.plugin, nil)
			res := h.Request(wefttest.Request{Headers: tt.headers}).RequestHeaders()
			if res.Code != tt.code {
				t.Fatalf("code %v (%s), want %v", res.Code, res.Invalid, tt.code)
			}
			if tt.log != "" && (len(res.Logs) == 0 || !strings.Contains(res.Logs[0].Msg, tt.log)) {
				t.Errorf("logs %+v, want %q", res.Logs, tt.log)
			}
		})
	}
}

func TestBadHeaderRecord(t *testing.T) {
	h := wefttest.MustNew(t, "test-bad-header", nil)
	res := h.Request(wefttest.Request{Headers: [][2]string{{"x-test-crlf", "1"}}}).RequestHeaders()
	want := wefttest.Mutation{Op: wefttest.OpSetRequestHeader, A: "x-bad", B: "a\r\nb"}
	if len(res.Mutations) != 1 || res.Mutations[0] != want {
		t.Errorf("mutations %v, want %v", res.Mutations, want)
	}
}

func benchView(tb testing.TB) *wefttest.Prepared {
	h := wefttest.MustNew(tb, "bench-header", nil)
	return h.Prepare(weft.PhaseRequestHeaders, wefttest.Request{
		Path: "/bench/path",
		Headers: [][2]string{
			{"host", "example.com"}, {"user-agent", "weft-bench/1.0"}, {"accept", "*/*"},
			{"accept-encoding", "gzip"}, {"x-request-id", "0123456789abcdef"},
		},
	}, nil)
}

func BenchmarkBenchHeader(b *testing.B) {
	p := benchView(b)
	b.ReportAllocs()
	for b.Loop() {
		if code, _ := p.Dispatch(); code != wefttest.OK {
			b.Fatal(code)
		}
	}
}

func BenchmarkBenchHeaderParallel(b *testing.B) {
	h := wefttest.MustNew(b, "bench-header", nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// One slot per goroutine, as the host gives each in-flight request its own slot.
		p := h.Prepare(weft.PhaseRequestHeaders, wefttest.Request{Headers: [][2]string{{"user-agent", "x"}}}, nil)
		for pb.Next() {
			p.Dispatch()
		}
	})
}

func TestBenchHeaderAsync(t *testing.T) {
	h := wefttest.MustNew(t, "bench-header-async", nil)
	x := h.Request(wefttest.Request{Path: "/p", Headers: [][2]string{{"user-agent", "x"}}})
	res := x.RequestHeaders()
	if res.Code != wefttest.OK {
		t.Fatalf("request headers: %v", res.Code)
	}
	if v, _ := x.RequestHeader("x-bench"); v != "1" {
		t.Errorf("x-bench %q, want 1 (pending=%v)", v, res.Pending)
	}
}

func TestTestAsync(t *testing.T) {
	h := wefttest.MustNew(t, "test-async", nil)
	x := h.Request(wefttest.Request{Headers: [][2]string{{"x-delay-ms", "20"}}})
	res := x.RequestHeaders()
	if res.Code != wefttest.OK || !res.Pending {
		t.Fatalf("request headers: %v pending=%v", res.Code, res.Pending)
	}
	if v, _ := x.RequestHeader("x-async"); v != "done" {
		t.Errorf("x-async %q", v)
	}
	if res := x.ResponseHeaders(); res.Code != wefttest.OK || res.Pending {
		t.Fatalf("response headers: %v pending=%v", res.Code, res.Pending)
	}
	if v, _ := x.ResponseHeader("x-async-state"); v != "kept" {
		t.Errorf("x-async-state %q: the state set by the continuation is lost", v)
	}

	tests := []struct {
		header string
		code   wefttest.Code
		log    string
	}{
		{"x-panic", wefttest.Panic, `plugin "test-async" panicked in request_headers: test-async: x-panic header present`},
		{"x-fail", wefttest.HandlerFailed, `plugin "test-async" failed in request_headers: test-async: x-fail header present`},
	}
	for _, tt := range tests {
		x := h.Request(wefttest.Request{Headers: [][2]string{{tt.header, "1"}}})
		res := x.RequestHeaders()
		if res.Code != tt.code || len(res.Logs) == 0 || !strings.Contains(res.Logs[0].Msg, tt.log) {
			t.Errorf("%s: %v %+v", tt.header, res.Code, res.Logs)
		}
		if res := x.ResponseHeaders(); res.Code != wefttest.OK {
			t.Errorf("%s: response headers %v", tt.header, res.Code)
		}
		if _, ok := x.ResponseHeader("x-async-state"); ok {
			t.Errorf("%s: x-async-state set although the continuation failed", tt.header)
		}
	}
}

func TestTestBlocking(t *testing.T) {
	var info *core.PluginInfo
	for _, p := range core.Plugins() {
		if p.Name == "test-blocking" {
			info = &p
		}
	}
	if info == nil || info.Flags&core.FlagBlocking == 0 {
		t.Fatalf("test-blocking is not flagged blocking: %+v", info)
	}
	h := wefttest.MustNew(t, "test-blocking", nil)
	// Overlapping calls: each sees the others in flight.
	const n = 3
	results := make(chan string, n)
	release := make(chan struct{})
	for range n {
		go func() {
			<-release
			x := h.Request(wefttest.Request{Headers: [][2]string{{"x-delay-ms", "200"}}})
			if res := x.RequestHeaders(); res.Code != wefttest.OK {
				results <- "code " + res.Code.String()
				return
			}
			v, _ := x.RequestHeader("x-blocking")
			inflight, _ := x.RequestHeader("x-blocking-inflight")
			results <- v + " " + inflight
		}()
	}
	close(release)
	maxInflight := 0
	for range n {
		r := <-results
		done, inflight, _ := strings.Cut(r, " ")
		if done != "done" {
			t.Fatalf("result %q", r)
		}
		if k, err := strconv.Atoi(inflight); err != nil || k < 1 || k > n {
			t.Fatalf("x-blocking-inflight %q", inflight)
		} else {
			maxInflight = max(maxInflight, k)
		}
	}
	t.Logf("max x-blocking-inflight %d of %d overlapping calls", maxInflight, n)
	if res := h.Request(wefttest.Request{Headers: [][2]string{{"x-panic", "1"}}}).RequestHeaders(); res.Code != wefttest.Panic {
		t.Errorf("x-panic: %v", res.Code)
	}
}

func TestSlowLog(t *testing.T) {
	var info *core.PluginInfo
	for _, p := range core.Plugins() {
		if p.Name == "test-slow-log" {
			info = &p
		}
	}
	if info == nil || info.Phases != core.PhaseLog.Mask() {
		t.Fatalf("test-slow-log must declare only the log phase: %+v", info)
	}
	h := wefttest.MustNew(t, "test-slow-log", nil)
	x := h.Request(wefttest.Request{Path: "/slow", Headers: [][2]string{{"x-test-log-sleep-ms", "30"}}})
	x.Response(200, nil)
	start := time.Now()
	res := x.Log()
	if res.Code != wefttest.OK {
		t.Fatalf("log: %v", res.Code)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("log phase returned after %v, want at least the 30 ms asked for", d)
	}
	want := "test-slow-log slept_ms=30 path=/slow"
	if len(res.Logs) != 1 || res.Logs[0].Msg != want || res.Logs[0].Level != weft.LogInfo {
		t.Errorf("logs %+v, want one info line %q", res.Logs, want)
	}
}
