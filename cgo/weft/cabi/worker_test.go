//go:build linux

package cabi

import (
	"encoding/binary"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft"
)

var cabiRelease = make(chan struct{})

func init() {
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name:     "cabi-blocking",
		Blocking: true,
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.SetRequestHeader("x-cabi", "1")
		},
	})
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name: "cabi-async",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.Go(func(ctx *weft.Context) error {
				<-cabiRelease
				ctx.SetRequestHeader("x-cabi-async", "1")
				return nil
			})
		},
	})
}

var nextInstance atomic.Uint64

// newInstance initialises plugin as the host does, through the exported init.
func newInstance(t *testing.T, plugin string, slots uint32) uint64 {
	t.Helper()
	idx, ok := core.Lookup(plugin)
	if !ok {
		t.Fatalf("%s not registered", plugin)
	}
	id := 70_000 + nextInstance.Add(1)
	if r := testInit(idx, id, slots); r != 0 {
		t.Fatalf("init %s: %d", plugin, r)
	}
	t.Cleanup(func() { testShutdown(id) })
	return id
}

// putView writes an empty request-headers view (no strings, no headers) at mem.
func putView(mem []byte, slot, gen, call uint32) {
	v := (*core.RequestView)(unsafe.Pointer(&mem[0]))
	*v = core.RequestView{Size: core.SizeofRequestView, Phase: uint32(core.PhaseRequestHeaders),
		RequestID: 1, Slot: slot, Generation: gen, ReqHeadersOff: core.SizeofRequestView,
		RespHeadersOff: core.SizeofRequestView, Call: call}
}

func mmap(t *testing.T, n int) []byte {
	mem, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(mem) })
	return mem
}

// waitFor polls cond; the bound only keeps a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// firstRecord decodes the name of the first mutation record in b.
func firstRecord(b []byte) string {
	if len(b) < core.SizeofMutation {
		return ""
	}
	aLen := binary.NativeEndian.Uint32(b[8:])
	return string(b[core.SizeofMutation : core.SizeofMutation+aLen])
}

func TestBlockingFlagInDescriptor(t *testing.T) {
	d := weft_go_entry(nil)
	found := false
	for _, p := range unsafe.Slice(d.plugins, d.plugin_count) {
		if string(unsafe.Slice((*byte)(unsafe.Pointer(p.name)), p.name_len)) == "cabi-blocking" {
			found = true
			if uint32(p.flags) != core.FlagBlocking {
				t.Errorf("cabi-blocking flags %#x, want WEFT_PLUGIN_FLAG_BLOCKING", p.flags)
			}
		}
	}
	if !found {
		t.Fatal("cabi-blocking not in the descriptor")
	}
}

// A host whose table ends before complete: async handlers and blocking plugins fail cleanly.
func TestOlderHostWithoutComplete(t *testing.T) {
	weft_go_entry(testHostAPI(true))
	before := testHostRecorded()
	id := newInstance(t, "cabi-async", 1)
	view := make([]uint64, 16)
	out := make([]byte, 256)
	putView(unsafe.Slice((*byte)(unsafe.Pointer(&view[0])), 128), 0, 1, 3)
	res, n := testOnPhase(id, uint32(core.PhaseRequestHeaders), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 256)
	if core.Result(res) != core.ResultHandlerFailed || n != 0 {
		t.Errorf("async handler on an older host: %v %d, want a failed phase", core.Result(res), n)
	}
	ring := mmap(t, 4096)
	if r := testAttach(unsafe.Pointer(&ring[0]), 4096, unsafe.Pointer(&out[0]), 128, 1); core.Result(r) != core.ResultABIMismatch {
		t.Errorf("attach_worker without complete: %v", core.Result(r))
	}
	after := testHostRecorded()
	if after.completes != before.completes {
		t.Error("complete was called although it is past the host table's size")
	}
	if after.logs == before.logs {
		t.Error("the failures were not logged through the older host's log")
	}
}

func TestCompleteGoesThroughTheHost(t *testing.T) {
	weft_go_entry(testHostAPI(false))
	testHostAnswer(uint32(core.ResultOK))
	id := newInstance(t, "cabi-async", 2)
	view := make([]uint64, 16)
	out := make([]byte, 256)
	putView(unsafe.Slice((*byte)(unsafe.Pointer(&view[0])), 128), 1, 1, 33)
	before := testHostRecorded()
	res, _ := testOnPhase(id, uint32(core.PhaseRequestHeaders), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 256)
	if core.Result(res) != core.ResultPending {
		t.Fatalf("on_phase: %v, want pending", core.Result(res))
	}
	cabiRelease <- struct{}{}
	waitFor(t, "the completion", func() bool { return testHostRecorded().completes == before.completes+1 })
	got := testHostRecorded().last
	if got[0] != id || got[1] != 1 || got[2] != 33 || got[3] != uint64(core.ResultOK) || got[4] == 0 {
		t.Fatalf("complete(instance, slot, call, result, out_len) = %v", got)
	}
	if name := firstRecord(out[:got[4]]); name != "x-cabi-async" {
		t.Errorf("record %q", name)
	}
}

// The whole path of a blocking plugin: attach_worker, a ring written like the host's, the job
// run on the pool, host->complete, host->worker_exit once the ring is closed and drained.
func TestWorkerRingThroughTheHost(t *testing.T) {
	weft_go_entry(testHostAPI(false))
	testHostAnswer(uint32(core.ResultOK))
	const slots, slotSize = 2, 1024
	id := newInstance(t, "cabi-blocking", slots)
	arena := mmap(t, slots*slotSize)
	putView(arena[slotSize:], 1, 4, 55)
	ring := mmap(t, 4096)
	word := func(off uintptr) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }
	*word(0), *word(4), *word(8), *word(12) = core.RingMagic, core.RingVersion, 4, core.SizeofJob
	*(*uint64)(unsafe.Pointer(&ring[core.RingOffsetRingID])) = 0x1234_5678_9abc
	outOff := (core.SizeofRequestView + 7) &^ 7
	*(*core.Job)(unsafe.Pointer(&ring[core.RingOffsetDescriptors])) = core.Job{Slot: 1, Generation: 4,
		Instance: id, Phase: uint32(core.PhaseRequestHeaders), Call: 55, OutSlot: 1, OutOff: uint32(outOff)}
	// Published and closed before the worker starts: it must run the job, then leave.
	atomic.StoreUint32(word(core.RingOffsetTail), 1)
	atomic.StoreUint32(word(core.RingOffsetClosed), 1)
	before := testHostRecorded()
	if r := testAttach(unsafe.Pointer(&ring[0]), 4096, unsafe.Pointer(&arena[0]), slotSize, slots); core.Result(r) != core.ResultOK {
		t.Fatalf("attach_worker: %v", core.Result(r))
	}
	waitFor(t, "worker_exit", func() bool { return testHostRecorded().exits == before.exits+1 })
	waitFor(t, "the completion", func() bool { return testHostRecorded().completes == before.completes+1 })
	got := testHostRecorded()
	if got.exitRing != uintptr(unsafe.Pointer(&ring[0])) || got.exitRingID != 0x1234_5678_9abc {
		t.Errorf("worker_exit_ring(%#x, %#x), want the ring %p and its id", got.exitRing, got.exitRingID, &ring[0])
	}
	if l := got.last; l[0] != id || l[1] != 1 || l[2] != 55 || l[3] != uint64(core.ResultOK) || l[4] == 0 {
		t.Fatalf("complete(instance, slot, call, result, out_len) = %v", l)
	}
	if name := firstRecord(arena[slotSize+outOff:][:got.last[4]]); name != "x-cabi" {
		t.Errorf("record %q at the job's output location", name)
	}
	if atomic.LoadUint32(word(core.RingOffsetHead)) != 1 {
		t.Error("the job's entry was not given back")
	}

	// A ring with a wrong magic is refused with an error code; nothing starts.
	*word(0) = 0
	if r := testAttach(unsafe.Pointer(&ring[0]), 4096, unsafe.Pointer(&arena[0]), slotSize, slots); core.Result(r) != core.ResultInvalidArgument {
		t.Errorf("attach_worker with a bad magic: %v", core.Result(r))
	}
	time.Sleep(10 * time.Millisecond) // a wrongly started worker would exit at once (closed)
	if n := testHostRecorded().exits; n != before.exits+1 {
		t.Errorf("%d worker exits, want exactly 1", n-before.exits)
	}
}
