package testplugins

import (
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// test-view-echo: writes the header lines it reads in its view, in view order, into the request
// header x-view-request (request phase) and the response header x-view-response (response
// phase), as name=value pairs joined by ';' (x-view-* lines left out), so the host's tests can
// check that a plugin sees exactly what earlier plugins left (`runtime/tests/go_plugins.rs`).
//
// test-view-echo-declared: the same, declaring the header lines it reads (ViewHeaders: x-a), and
// writing also what RequestHeader("x-b") (undeclared) returned into x-view-request-b ("absent"
// when not found), so the tests can check that it sees x-a lines only, whatever the host laid out.
func init() {
	weft.Register(weft.Plugin[None, None]{
		Name:            "test-view-echo",
		RequestHeaders:  echoRequest,
		ResponseHeaders: echoResponse,
	})
	weft.Register(weft.Plugin[None, None]{
		Name: "test-view-echo-declared",
		RequestHeaders: func(ctx *weft.Context, cfg *None, st *None) {
			echoRequest(ctx, cfg, st)
			b, ok := ctx.RequestHeader("X-B")
			if !ok {
				b = "absent"
			}
			ctx.SetRequestHeader("x-view-request-b", b)
		},
		ResponseHeaders: echoResponse,
		ViewHeaders:     []string{"X-A"},
	})
}

func echoRequest(ctx *weft.Context, _ *None, _ *None) {
	var b strings.Builder
	for n, v := range ctx.RequestHeaders() {
		echoLine(&b, n, v)
	}
	ctx.SetRequestHeader("x-view-request", b.String())
}

func echoResponse(ctx *weft.Context, _ *None, _ *None) {
	var b strings.Builder
	for n, v := range ctx.ResponseHeaders() {
		echoLine(&b, n, v)
	}
	ctx.SetResponseHeader("x-view-response", b.String())
}

func echoLine(b *strings.Builder, name, value string) {
	if strings.HasPrefix(name, "x-view-") {
		return
	}
	if b.Len() > 0 {
		b.WriteByte(';')
	}
	b.WriteString(name)
	b.WriteByte('=')
	b.WriteString(value)
}
