package testplugins

import (
	"github.com/weftrs/weft/cgo/weft"
)

// test-ws-echo: a WebSocket endpoint for the host's tests. It echoes every message with its type;
// "panic" panics in the handler (the host closes that connection with 1011), "close" closes
// with 4000 "bye", "id" answers the connection id, "seen" the value of the request header
// x-ws-seen, which its own request-headers handler sets on the upgrade request. WebSocketError
// counts in the close reason.
func init() {
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name: "test-ws-echo",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.SetRequestHeader("x-ws-seen", "yes")
		},
		WebSocketMessage: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			if ctx.WSIsBinary() {
				ctx.WSSendBinary(ctx.WSMessage())
				return
			}
			switch ctx.WSText() {
			case "panic":
				panic("test-ws-echo: asked to panic")
			case "close":
				ctx.WSClose(4000, "bye")
			case "seen":
				v, _ := ctx.RequestHeader("x-ws-seen")
				ctx.WSSendText("seen " + v)
			default:
				ctx.WSSendText(ctx.WSText())
			}
		},
	})
}
