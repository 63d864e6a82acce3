// Package testplugins holds plugins for the host's end-to-end tests and benchmarks; they are
// compiled into the same library as the examples.
//
//   - test-panic: panics in request headers when the request has an x-test-panic header.
//   - test-bad-header: sets the invalid request header value "a\r\nb" (x-bad) when the request
//     has an x-test-crlf header, so the host's mutation validation can be tested.
//   - test-sleep: sleeps for the milliseconds in the request's x-test-sleep-ms header (at most
//     5000) in request headers, so remote workers can be killed with requests in flight.
//   - bench-header: reads the path and the user-agent and accept headers and sets x-bench: 1;
//     the plugin of the host's criterion benchmark.
package testplugins

import (
	"strconv"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// None is the config and state type of the test plugins.
type None struct{}

func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "test-panic",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			if _, ok := ctx.RequestHeader("x-test-panic"); ok {
				panic("test-panic: x-test-panic header present")
			}
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name: "test-bad-header",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			if _, ok := ctx.RequestHeader("x-test-crlf"); ok {
				ctx.SetRequestHeader("x-bad", "a\r\nb")
			}
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name: "test-sleep",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			if v, ok := ctx.RequestHeader("x-test-sleep-ms"); ok {
				if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
					time.Sleep(time.Duration(min(ms, 5000)) * time.Millisecond)
				}
			}
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name:           "bench-header",
		RequestHeaders: benchHeader,
	})
}

// benchSink keeps the reads of bench-header observable.
var benchSink int

func benchHeader(ctx *weft.Context, _ *None, _ *None) {
	n := len(ctx.Path())
	if ua, ok := ctx.RequestHeader("user-agent"); ok {
		n += len(ua)
	}
	if acc, ok := ctx.RequestHeader("accept"); ok {
		n += len(acc)
	}
	if n < 0 { // never true; stops the reads from being optimised away without a shared write
		benchSink = n
	}
	ctx.SetRequestHeader("x-bench", "1")
}
