package testplugins

import (
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// test-view-echo: writes the header lines it reads in its view, in view order, into the request
// header x-view-request (request phase) and the response header x-view-response (response
// phase), as name=value pairs joined by ';' (x-view-* lines left out), so the host's tests can
// check that a plugin sees exactly what earlier plugins left (`runtime/tests/go_plugins.rs`).
func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "test-view-echo",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			var b strings.Builder
			for n, v := range ctx.RequestHeaders() {
				echoLine(&b, n, v)
			}
			ctx.SetRequestHeader("x-view-request", b.String())
		},
		ResponseHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			var b strings.Builder
			for n, v := range ctx.ResponseHeaders() {
				echoLine(&b, n, v)
			}
			ctx.SetResponseHeader("x-view-response", b.String())
		},
	})
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
