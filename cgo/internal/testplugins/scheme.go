package testplugins

import "github.com/weftrs/weft/cgo/weft"

// test-scheme: sets the request header x-seen-scheme to the scheme the plugin sees (http, or
// https on a TLS listener), so the host's TLS tests can check what plugins are told.
func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "test-scheme",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			ctx.SetRequestHeader("x-seen-scheme", ctx.Scheme())
		},
	})
}
