// Package timing is the timing-logger example plugin. It numbers requests (request header
// x-weft-seq), reports the time spent between the request and response phases (response
// headers server-timing and x-weft-seq) and logs one line per request in the log phase:
//
//	timing-logger seq=<seq> method=<method> path=<path> status=<status> dur_us=<micros>
//
// It takes no configuration and shows per-request state carried across phases.
package timing

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// State is the per-request state.
type State struct {
	start time.Time
	seq   uint64
}

// Config is empty: the plugin takes no options.
type Config struct{}

var seqCounter atomic.Uint64

func requestHeaders(ctx *weft.Context, _ *Config, st *State) {
	st.start = time.Now()
	st.seq = seqCounter.Add(1)
	var b [20]byte
	ctx.SetRequestHeader("x-weft-seq", string(strconv.AppendUint(b[:0], st.seq, 10)))
}

func responseHeaders(ctx *weft.Context, _ *Config, st *State) {
	if st.seq == 0 {
		return // the request phase did not run for this request
	}
	var b [64]byte
	v := append(b[:0], "weft;dur="...)
	v = strconv.AppendFloat(v, float64(time.Since(st.start).Nanoseconds())/1e6, 'f', 3, 64)
	ctx.AddResponseHeader("server-timing", string(v))
	ctx.SetResponseHeader("x-weft-seq", string(strconv.AppendUint(b[:0], st.seq, 10)))
}

func logPhase(ctx *weft.Context, _ *Config, st *State) {
	if st.seq == 0 {
		ctx.Log(weft.LogWarn, "timing-logger state=missing")
		return
	}
	var b [256]byte
	line := append(b[:0], "timing-logger seq="...)
	line = strconv.AppendUint(line, st.seq, 10)
	line = append(line, " method="...)
	line = append(line, ctx.Method()...)
	line = append(line, " path="...)
	line = append(line, ctx.Path()...)
	line = append(line, " status="...)
	line = strconv.AppendInt(line, int64(ctx.Status()), 10)
	line = append(line, " dur_us="...)
	line = strconv.AppendInt(line, time.Since(st.start).Microseconds(), 10)
	ctx.Log(weft.LogInfo, string(line))
}

func init() {
	weft.Register(weft.Plugin[Config, State]{
		Name:            "timing-logger",
		RequestHeaders:  requestHeaders,
		ResponseHeaders: responseHeaders,
		// Reads no header line: the host lays out none.
		ViewHeaders: []string{},
		Log:         logPhase,
	})
}
