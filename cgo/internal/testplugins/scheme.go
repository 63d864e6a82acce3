package testplugins

import "github.com/weftrs/weft/cgo/weft"

// test-scheme: sets the request headers x-seen-scheme and x-seen-sni to the scheme (http, or
// https on a TLS listener) and the TLS server name (empty without SNI) the plugin sees, so the
// host's TLS tests can check what plugins are told.
func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "test-scheme",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			ctx.SetRequestHeader("x-seen-scheme", ctx.Scheme())
			ctx.SetRequestHeader("x-seen-sni", ctx.ServerName())
		},
	})
}
