package testplugins

import (
	"strconv"

	"github.com/weftrs/weft/cgo/weft"
)

// test-log-abuse logs, in request headers, one line that tries to forge a log line of its own
// ("test-log-abuse forged\nERROR weft::fake: forged\x1b[31m") and then the number of lines in
// the request's x-log-lines header (at most 100000) as "test-log-abuse line <i>", so the host's
// escaping and per-instance rate limit of plugin log lines can be tested.
func init() {
	weft.Register(weft.Plugin[None, None]{
		Name: "test-log-abuse",
		RequestHeaders: func(ctx *weft.Context, _ *None, _ *None) {
			ctx.Log(weft.LogWarn, "test-log-abuse forged\nERROR weft::fake: forged\r\x1b[31mred")
			n := 0
			if v, ok := ctx.RequestHeader("x-log-lines"); ok {
				n, _ = strconv.Atoi(v)
			}
			for i := range min(n, 100000) {
				ctx.Log(weft.LogInfo, "test-log-abuse line "+strconv.Itoa(i))
			}
		},
	})
}
