//go:build !race

package natsworker

import (
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// A warm builder lays out a view without allocating: the worker builds one per call.
func TestViewBuildDoesNotAllocate(t *testing.T) {
	data := phaseRequest(core.PhaseResponseHeaders, 200,
		[][2]string{{"host", "example.com"}, {"accept", "*/*"}}, [][2]string{{"server", "up"}})
	var req wire.PhaseRequest
	req.Init(data, flatbuffers.GetUOffsetT(data))
	var vb viewBuilder
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := vb.build(&req, core.PhaseResponseHeaders, 1, 2); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per view build, want 0", allocs)
	}
}
