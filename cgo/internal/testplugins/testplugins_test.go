package testplugins

import (
	"strings"
	"testing"

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
