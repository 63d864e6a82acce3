package testplugins

import (
	"bytes"
	"strconv"

	"github.com/weftrs/weft/cgo/weft"
)

// Body test plugins:
//
//   - bench-body-pass: streamed request and response body, passes every chunk unchanged (it
//     reads the length only); the plugin of the body throughput benchmark.
//   - test-body-count: streamed request and response body, passes every chunk and logs
//     "body-count <phase> bytes=N chunks=M" at the end of each body.
//   - test-body-upper: streamed request and response body: prepends "<bof>" to the first
//     chunk, replaces every chunk with its ASCII upper case (or drops it when the request has
//     x-test-drop), appends "<eof>" at the end of the body.
//   - test-body-panic: streamed response body; panics once the body passed the number of
//     bytes in the request's x-test-panic-after header.
//   - test-body-buffer: buffered request body: answers 400 when the body is "reject", else
//     replaces it with "len=N;" followed by the body and sets x-body-len: N.

// BodyCount is the per-request state of test-body-count.
type BodyCount struct {
	bytes, chunks int
}

// BodyUpper is the per-request state of test-body-upper.
type BodyUpper struct {
	started [2]bool
	buf     []byte
}

// BodyPanic is the per-request state of test-body-panic.
type BodyPanic struct {
	seen int
}

func countBody(ctx *weft.Context, _ *None, st *BodyCount) {
	st.bytes += len(ctx.Body())
	st.chunks++
	if ctx.EndOfStream() {
		ctx.Logf(weft.LogInfo, "body-count %s bytes=%d chunks=%d", ctx.Phase(), st.bytes, st.chunks)
		*st = BodyCount{}
	}
}

func upperBody(ctx *weft.Context, _ *None, st *BodyUpper) {
	side := 0
	if ctx.Phase() == weft.PhaseResponseBody {
		side = 1
	}
	if !st.started[side] {
		st.started[side] = true
		ctx.PrependBody([]byte("<bof>"))
	}
	if _, drop := ctx.RequestHeader("x-test-drop"); drop {
		ctx.DropBody()
	} else if b := ctx.Body(); len(b) > 0 {
		st.buf = append(st.buf[:0], b...)
		for i, c := range st.buf {
			if 'a' <= c && c <= 'z' {
				st.buf[i] = c - ('a' - 'A')
			}
		}
		ctx.ReplaceBody(st.buf)
	}
	if ctx.EndOfStream() {
		ctx.AppendBody([]byte("<eof>"))
	}
}

func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "bench-body-pass",
		RequestBody: func(ctx *weft.Context, _ *None, _ *None) {
			benchSink += len(ctx.Body()) & 0
		},
		ResponseBody: func(ctx *weft.Context, _ *None, _ *None) {
			benchSink += len(ctx.Body()) & 0
		},
	})
	weft.Register(weft.Plugin[None, BodyCount]{
		Name:         "test-body-count",
		RequestBody:  countBody,
		ResponseBody: countBody,
	})
	weft.Register(weft.Plugin[None, BodyUpper]{
		Name:         "test-body-upper",
		RequestBody:  upperBody,
		ResponseBody: upperBody,
	})
	weft.Register(weft.Plugin[None, BodyPanic]{
		Name: "test-body-panic",
		ResponseBody: func(ctx *weft.Context, _ *None, st *BodyPanic) {
			st.seen += len(ctx.Body())
			if v, ok := ctx.RequestHeader("x-test-panic-after"); ok {
				if n, err := strconv.Atoi(v); err == nil && st.seen > n {
					panic("test-body-panic: x-test-panic-after reached")
				}
			}
		},
	})
	weft.Register(weft.Plugin[None, None]{
		Name:                "test-body-buffer",
		RequestBodyBuffered: true,
		RequestBody: func(ctx *weft.Context, _ *None, _ *None) {
			b := ctx.Body()
			if bytes.Equal(b, []byte("reject")) {
				ctx.Reply(400, []byte("rejected by test-body-buffer\n"), "content-type", "text/plain")
				return
			}
			n := strconv.Itoa(len(b))
			ctx.SetRequestHeader("x-body-len", n)
			ctx.PrependBody([]byte("len=" + n + ";"))
		},
	})
}
