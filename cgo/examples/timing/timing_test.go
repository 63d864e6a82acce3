package timing

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

var (
	serverTiming = regexp.MustCompile(`^weft;dur=\d+\.\d{3}$`)
	logLine      = regexp.MustCompile(`^timing-logger seq=(\d+) method=POST path=/orders status=201 dur_us=\d+$`)
)

func TestTimingLogger(t *testing.T) {
	h := wefttest.MustNew(t, "timing-logger", nil)
	x := h.Request(wefttest.Request{Method: "POST", Path: "/orders"})
	if res := x.RequestHeaders(); res.Code != wefttest.OK {
		t.Fatalf("request headers: %v", res.Code)
	}
	seq, _ := x.RequestHeader("x-weft-seq")
	if n, err := strconv.ParseUint(seq, 10, 64); err != nil || n == 0 {
		t.Fatalf("x-weft-seq %q", seq)
	}
	x.Response(201, [][2]string{{"server-timing", "db;dur=1"}})
	if res := x.ResponseHeaders(); res.Code != wefttest.OK {
		t.Fatalf("response headers: %v %s", res.Code, res.Invalid)
	}
	timings := x.ResponseHeaderValues("server-timing")
	if len(timings) != 2 || timings[0] != "db;dur=1" || !serverTiming.MatchString(timings[1]) {
		t.Errorf("server-timing %q", timings)
	}
	if v, _ := x.ResponseHeader("x-weft-seq"); v != seq {
		t.Errorf("response x-weft-seq %q, want %q", v, seq)
	}
	res := x.Log()
	if len(res.Logs) != 1 || res.Logs[0].Level != weft.LogInfo {
		t.Fatalf("logs %+v", res.Logs)
	}
	m := logLine.FindStringSubmatch(res.Logs[0].Msg)
	if m == nil || m[1] != seq {
		t.Errorf("log line %q (seq %s)", res.Logs[0].Msg, seq)
	}
}

func TestSequenceIncreases(t *testing.T) {
	h := wefttest.MustNew(t, "timing-logger", nil)
	var last uint64
	for i := 0; i < 3; i++ {
		x := h.Request(wefttest.Request{})
		x.RequestHeaders()
		v, _ := x.RequestHeader("x-weft-seq")
		n, _ := strconv.ParseUint(v, 10, 64)
		if n <= last {
			t.Fatalf("seq %d after %d", n, last)
		}
		last = n
	}
}

func TestMissingState(t *testing.T) {
	h := wefttest.MustNew(t, "timing-logger", nil)
	x := h.Request(wefttest.Request{}) // request phase skipped, e.g. an earlier plugin replied
	x.Response(200, nil)
	if res := x.ResponseHeaders(); res.Code != wefttest.OK || len(res.Mutations) != 0 {
		t.Errorf("response headers without state: %+v", res)
	}
	res := x.Log()
	if len(res.Logs) != 1 || res.Logs[0].Msg != "timing-logger state=missing" {
		t.Errorf("logs %+v", res.Logs)
	}
}
