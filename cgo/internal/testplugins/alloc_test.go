//go:build !race

package testplugins

import (
	"testing"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

// bench-header reads the path and two headers and sets one (the handler of benches/phase.rs):
// Dispatch, the accessors' bounds checks and the record allocate nothing.
func TestBenchHeaderZeroAllocs(t *testing.T) {
	p := benchView(t)
	allocs := testing.AllocsPerRun(1000, func() {
		if code, n := p.Dispatch(); code != wefttest.OK || n == 0 {
			t.Fatal(code, n)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request-headers dispatch, want 0", allocs)
	}
}

// The synchronous phase of a plugin whose other phase goes asynchronous allocates nothing.
func TestAsyncPluginSyncPhaseZeroAllocs(t *testing.T) {
	h := wefttest.MustNew(t, "test-async", nil)
	p := h.Prepare(weft.PhaseResponseHeaders, wefttest.Request{}, &wefttest.Response{Status: 200})
	allocs := testing.AllocsPerRun(1000, func() {
		if code, _ := p.Dispatch(); code != wefttest.OK {
			t.Fatal(code)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per response-headers dispatch, want 0", allocs)
	}
}
