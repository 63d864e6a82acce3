// Package testplugins holds plugins for the host's end-to-end tests and benchmarks; they are
// compiled into the same library as the examples.
//
//   - test-panic: panics in request headers when the request has an x-test-panic header.
//   - test-bad-header: sets the invalid request header value "a\r\nb" (x-bad) when the request
//     has an x-test-crlf header, so the host's mutation validation can be tested.
//   - test-sleep: sleeps for the milliseconds in the request's x-test-sleep-ms header (at most
//     5000) in request headers, so remote workers can be killed with requests in flight.
//   - bench-header: reads the path and the user-agent and accept headers and sets x-bench: 1;
//     the plugin of the host's criterion benchmark. It declares the two headers it reads
//     (ViewHeaders), so the host lays out only those lines.
//   - bench-header-every-line: bench-header without the declaration: the host lays out every
//     line of the head (the benchmark's comparison row).
//   - bench-header-async: bench-header's work done in a Context.Go continuation, so the call
//     goes asynchronous (Pending, then complete from the goroutine); the criterion benchmark of
//     the async path against the inline one.
//   - test-async: request headers go asynchronous (Context.Go): the goroutine waits for the
//     milliseconds in x-delay-ms (at most 5000), then sets the request header x-async: done and
//     records it in the per-request state; the response-headers phase (synchronous) then sets
//     the response header x-async-state: kept. With x-panic the goroutine panics (result
//     Panic); with x-fail it returns an error (result HandlerFailed). When the host gives up on
//     the call first (deadline, client gone), the call's context.Context ends the wait and the
//     goroutine logs "test-async: stopped early: <cause>".
//   - test-blocking: flagged Blocking, so the host posts its calls to a worker ring; request
//     headers time.Sleep for x-delay-ms (at most 5000), then set x-blocking: done and
//     x-blocking-inflight: <test-blocking calls running at that moment, this one included>, which
//     exceeds 1 when calls overlap on the worker pool. With x-panic it panics.
//   - test-slow-log: declares only the log phase, which time.Sleeps for the milliseconds in the
//     request's x-test-log-sleep-ms header (at most 5000) and then logs
//     "test-slow-log slept_ms=<ms> path=<path>", so the host can show that a slow log phase
//     never delays the client's response.
package testplugins

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// AsyncState is the per-request state of test-async.
type AsyncState struct{ completed bool }

// blockingInFlight counts test-blocking calls running at once.
var blockingInFlight atomic.Int32

// delay returns the duration in request header name (milliseconds, at most 5 s).
func delay(ctx *weft.Context, name string) time.Duration {
	if v, ok := ctx.RequestHeader(name); ok {
		if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
			return time.Duration(min(ms, 5000)) * time.Millisecond
		}
	}
	return 0
}

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
		ViewHeaders:    []string{"user-agent", "accept"},
	})
	weft.Register(weft.Plugin[None, None]{
		Name:           "bench-header-every-line",
		RequestHeaders: benchHeader,
	})
	weft.Register(weft.Plugin[None, None]{
		Name: "bench-header-async",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			ctx.Go(benchHeaderAsync)
		},
	})
	weft.Register(weft.Plugin[None, AsyncState]{
		Name: "test-async",
		RequestHeaders: func(ctx *weft.Context, _ *None, st *AsyncState) {
			ctx.Go(func(ctx *weft.Context) error {
				select {
				case <-time.After(delay(ctx, "x-delay-ms")):
				case <-ctx.Context().Done():
					cause := context.Cause(ctx.Context())
					ctx.Logf(weft.LogInfo, "test-async: stopped early: %v", cause)
					return cause
				}
				if _, ok := ctx.RequestHeader("x-panic"); ok {
					panic("test-async: x-panic header present")
				}
				if _, ok := ctx.RequestHeader("x-fail"); ok {
					return errors.New("test-async: x-fail header present")
				}
				st.completed = true
				ctx.SetRequestHeader("x-async", "done")
				return nil
			})
		},
		ResponseHeaders: func(ctx *weft.Context, _ *None, st *AsyncState) {
			if st.completed {
				ctx.SetResponseHeader("x-async-state", "kept")
			}
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name:     "test-blocking",
		Blocking: true,
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			blockingInFlight.Add(1)
			defer blockingInFlight.Add(-1)
			time.Sleep(delay(ctx, "x-delay-ms"))
			if _, ok := ctx.RequestHeader("x-panic"); ok {
				panic("test-blocking: x-panic header present")
			}
			ctx.SetRequestHeader("x-blocking", "done")
			ctx.SetRequestHeader("x-blocking-inflight", strconv.Itoa(int(blockingInFlight.Load())))
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name: "test-slow-log",
		Log: func(ctx *weft.Context, _ *None, _ *None) {
			d := delay(ctx, "x-test-log-sleep-ms")
			time.Sleep(d)
			ctx.Logf(weft.LogInfo, "test-slow-log slept_ms=%d path=%s", d.Milliseconds(), ctx.Path())
		},
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

// benchHeaderAsync is bench-header as a Context.Go continuation (a function value, so the call
// allocates no closure of its own).
func benchHeaderAsync(ctx *weft.Context) error {
	benchHeader(ctx, nil, nil)
	return nil
}
