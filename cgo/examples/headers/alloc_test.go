//go:build !race

package headers

import (
	"testing"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

func TestZeroAllocs(t *testing.T) {
	h := wefttest.MustNew(t, "header-rewriter", config)
	p := h.Prepare(weft.PhaseRequestHeaders, wefttest.Request{Headers: [][2]string{{"cookie", "a"}, {"accept", "*/*"}}}, nil)
	allocs := testing.AllocsPerRun(1000, func() {
		if code, _ := p.Dispatch(); code != wefttest.OK {
			t.Fatal(code)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request-headers dispatch, want 0", allocs)
	}
}
