package cabi

import (
	"os"
	"regexp"
	"runtime"
	"testing"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft"
)

func TestLayoutMatchesHeader(t *testing.T) {
	var (
		s core.Str
		h core.Header
		m core.Mutation
		b core.Buf
		v core.RequestView
		j core.Job
	)
	tests := []struct {
		name  string
		which int
		goLay []uintptr
	}{
		{"WeftStr", 0, []uintptr{unsafe.Sizeof(s), unsafe.Offsetof(s.Off), unsafe.Offsetof(s.Len)}},
		{"WeftHeader", 1, []uintptr{unsafe.Sizeof(h), unsafe.Offsetof(h.Name), unsafe.Offsetof(h.Value)}},
		{"WeftMutation", 2, []uintptr{unsafe.Sizeof(m), unsafe.Offsetof(m.Op), unsafe.Offsetof(m.Arg),
			unsafe.Offsetof(m.ALen), unsafe.Offsetof(m.BLen)}},
		{"WeftBuf", 3, []uintptr{unsafe.Sizeof(b), unsafe.Offsetof(b.Ptr), unsafe.Offsetof(b.Cap), unsafe.Offsetof(b.Len)}},
		{"WeftRequestView", 4, []uintptr{unsafe.Sizeof(v),
			unsafe.Offsetof(v.Size), unsafe.Offsetof(v.Phase), unsafe.Offsetof(v.RequestID),
			unsafe.Offsetof(v.Slot), unsafe.Offsetof(v.Generation), unsafe.Offsetof(v.Method),
			unsafe.Offsetof(v.Path), unsafe.Offsetof(v.Query), unsafe.Offsetof(v.Host),
			unsafe.Offsetof(v.ClientAddr), unsafe.Offsetof(v.Scheme), unsafe.Offsetof(v.Version),
			unsafe.Offsetof(v.ReqHeadersOff), unsafe.Offsetof(v.ReqHeaderCount), unsafe.Offsetof(v.Status),
			unsafe.Offsetof(v.RespHeadersOff), unsafe.Offsetof(v.RespHeaderCount), unsafe.Offsetof(v.Call),
			unsafe.Offsetof(v.Body), unsafe.Offsetof(v.BodyLen), unsafe.Offsetof(v.BodyFlags),
			unsafe.Offsetof(v.ServerName)}},
		{"WeftJob", 5, []uintptr{unsafe.Sizeof(j), unsafe.Offsetof(j.Slot), unsafe.Offsetof(j.Generation),
			unsafe.Offsetof(j.Instance), unsafe.Offsetof(j.Phase), unsafe.Offsetof(j.Call), unsafe.Offsetof(j.OutSlot),
			unsafe.Offsetof(j.OutOff)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cLayout(tt.which, len(tt.goLay)-1)
			for i := range c {
				if c[i] != tt.goLay[i] {
					what := "size"
					if i > 0 {
						what = "offset of field " + string(rune('0'+i-1))
					}
					t.Errorf("%s: C %d, Go %d", what, c[i], tt.goLay[i])
				}
			}
		})
	}
	if got := unsafe.Sizeof(v); got != core.SizeofRequestView {
		t.Errorf("core.SizeofRequestView = %d, want %d", core.SizeofRequestView, got)
	}
	if got := unsafe.Sizeof(m); got != core.SizeofMutation {
		t.Errorf("core.SizeofMutation = %d, want %d", core.SizeofMutation, got)
	}
	if got := unsafe.Sizeof(h); got != core.SizeofHeader {
		t.Errorf("core.SizeofHeader = %d, want %d", core.SizeofHeader, got)
	}
}

func TestConstantsMatchHeader(t *testing.T) {
	for name, v := range cConstants() {
		if v[0] != v[1] {
			t.Errorf("%s: C %d, Go %d", name, v[0], v[1])
		}
	}
}

// The ring layout core reads without cgo must be the header's, constant by constant, and every
// WEFT_RING_* constant the header defines must be checked here.
func TestRingLayoutMatchesHeader(t *testing.T) {
	ring := cRingConstants()
	for name, v := range ring {
		if v[0] != v[1] {
			t.Errorf("%s: C %d, Go %d", name, v[0], v[1])
		}
	}
	header, err := os.ReadFile("../../../include/weft.h")
	if err != nil {
		t.Fatal(err)
	}
	defined := regexp.MustCompile(`(?m)^#define (WEFT_RING_[A-Z0-9_]+)\s`).FindAllSubmatch(header, -1)
	if len(defined) == 0 {
		t.Fatal("no WEFT_RING_* constant in include/weft.h")
	}
	for _, m := range defined {
		if _, ok := ring[string(m[1])]; !ok {
			t.Errorf("%s is in weft.h but not compared with core (add it to cRingConstants)", m[1])
		}
	}
}

func init() {
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name:           "cabi-test",
		RequestHeaders: func(*weft.Context, *struct{}, *struct{}) {},
		Log:            func(*weft.Context, *struct{}, *struct{}) {},
	})
}

func TestDescriptor(t *testing.T) {
	d := weft_go_entry(nil)
	if d == nil {
		t.Fatal("weft_go_entry returned nil")
	}
	if d2 := weft_go_entry(nil); d2 != d {
		t.Error("second entry call returned another descriptor")
	}
	if d.abi_version != core.ABIVersion || d.runtime != core.RuntimeGo {
		t.Errorf("abi_version %d runtime %d", d.abi_version, d.runtime)
	}
	if d.request_view_size != core.SizeofRequestView || d.mutation_size != core.SizeofMutation {
		t.Errorf("sizes: view %d mutation %d", d.request_view_size, d.mutation_size)
	}
	if got := string(unsafe.Slice((*byte)(unsafe.Pointer(d.runtime_version)), d.runtime_version_len)); got != runtime.Version() {
		t.Errorf("runtime_version %q", got)
	}
	if d.load_error != nil {
		t.Fatalf("load_error %q", unsafe.Slice((*byte)(unsafe.Pointer(d.load_error)), d.load_error_len))
	}
	if d.plugin_count == 0 || int(d.plugin_count) != len(core.Plugins()) {
		t.Fatalf("plugin_count %d, registered %d", d.plugin_count, len(core.Plugins()))
	}
	p := unsafe.Slice(d.plugins, d.plugin_count)[0]
	if name := string(unsafe.Slice((*byte)(unsafe.Pointer(p.name)), p.name_len)); name != "cabi-test" {
		t.Errorf("plugin name %q", name)
	}
	if want := core.PhaseRequestHeaders.Mask() | core.PhaseLog.Mask(); uint32(p.phases) != want {
		t.Errorf("phases %#x, want %#x", p.phases, want)
	}
	if p.flags != 0 {
		t.Errorf("flags %#x for a plugin that is not blocking", p.flags)
	}
	if d.init == nil || d.on_phase == nil || d.thread_start == nil || d.shutdown == nil || d.attach_worker == nil ||
		d.cancel == nil || d.run_on_thread == nil {
		t.Error("missing function pointer")
	}
}

func TestRunOnThreadRunsTheBody(t *testing.T) {
	if !testRunOnThread() {
		t.Error("run_on_thread did not run the host's body with its argument")
	}
}

// Each host thread inside run_on_thread adds a P, and the last one out restores GOMAXPROCS.
func TestNestedThreadsEachAddAP(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	var ps threadPs
	for i := 1; i <= 2; i++ {
		ps.add(1)
		if got := runtime.GOMAXPROCS(0); got != before+i {
			t.Fatalf("%d nested threads: GOMAXPROCS %d, want %d", i, got, before+i)
		}
	}
	ps.add(-1)
	ps.add(-1)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("after the nested threads left: GOMAXPROCS %d, want %d", got, before)
	}
}
