// Package cabi exports the weft C ABI from a Go plugin library. It is the only package of the
// SDK that uses cgo. Import it for its side effects in the main package of the library:
//
//	package main
//
//	import (
//		_ "example.com/myplugins/auth"
//		_ "github.com/weftrs/weft/cgo/weft/cabi"
//	)
//
//	func main() {}
//
// and build with go build -buildmode=c-shared. The library then exports
// weft_plugin_entry (see weft.h in this directory, a copy of the repository's include/weft.h),
// which reports every plugin registered with weft.Register.
//
// Nothing here runs at Go init time: the descriptor is built on the first weft_plugin_entry
// call, in C memory that is never freed (Go libraries are never unloaded).
package cabi

/*
#cgo CFLAGS: -I${SRCDIR}
#include <stdlib.h>
#include "weft.h"

// Defined in entry.c.
extern const WeftHostApi *weft_host;
extern void weft_fill_fns(WeftPluginDescriptor *d);
extern void weft_call_body(WeftThreadBodyFn body, void *arg);
*/
import "C"

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
)

// abiVersionOverride, when set with
// -ldflags "-X github.com/weftrs/weft/cgo/weft/cabi.abiVersionOverride=99", replaces the ABI
// version the library reports (for host tests of the version check). Empty means
// WEFT_ABI_VERSION; a value that is not a number reports 0.
var abiVersionOverride string

func abiVersion() C.uint32_t {
	if abiVersionOverride == "" {
		return C.WEFT_ABI_VERSION
	}
	v, err := strconv.ParseUint(abiVersionOverride, 10, 32)
	if err != nil {
		return 0
	}
	return C.uint32_t(v)
}

var (
	descOnce sync.Once
	desc     *C.WeftPluginDescriptor
)

// weft_go_entry is called by weft_plugin_entry (entry.c), which has the exact prototype of
// weft.h (cgo cannot export const-qualified signatures).
//
//export weft_go_entry
func weft_go_entry(host *C.WeftHostApi) (d *C.WeftPluginDescriptor) {
	defer func() {
		if r := recover(); r != nil {
			hostLogger(core.LogError, 0, fmt.Sprintf("weft: panic in weft_plugin_entry: %v", r))
			d = nil
		}
	}()
	if host != nil {
		// Each host function is used only if the host's table is long enough to hold it and
		// it is set: an older host has a shorter table (no complete: no async handlers and no
		// blocking plugins, which fail cleanly instead).
		C.weft_host = host
		if hostHasLog(host) {
			core.SetLogger(hostLogger)
		}
		if hostHasComplete(host) {
			core.SetCompleter(hostComplete)
		} else {
			core.SetCompleter(nil)
		}
	}
	descOnce.Do(func() { desc = buildDescriptor() })
	return desc
}

// buildDescriptor fills the descriptor from the registry, in C memory that lives for the
// life of the process.
func buildDescriptor() *C.WeftPluginDescriptor {
	d := (*C.WeftPluginDescriptor)(C.calloc(1, C.sizeof_WeftPluginDescriptor))
	d.abi_version = abiVersion()
	d.descriptor_size = C.sizeof_WeftPluginDescriptor
	d.request_view_size = C.sizeof_WeftRequestView
	d.mutation_size = C.sizeof_WeftMutation
	d.host_api_size = C.sizeof_WeftHostApi
	d.runtime = C.WEFT_RUNTIME_GO
	d.runtime_version, d.runtime_version_len = cString(runtime.Version())
	if err := core.LoadError(); err != nil {
		d.load_error, d.load_error_len = cString(err.Error())
	} else if plugins := core.Plugins(); len(plugins) > 0 {
		infos := unsafe.Slice((*C.WeftPluginInfo)(C.calloc(C.size_t(len(plugins)), C.sizeof_WeftPluginInfo)), len(plugins))
		for i, p := range plugins {
			infos[i].name, infos[i].name_len = cString(p.Name)
			infos[i].phases = C.uint32_t(p.Phases)
			infos[i].flags = C.uint32_t(p.Flags)
		}
		d.plugins = &infos[0]
		d.plugin_count = C.uint32_t(len(plugins))
		d.view_headers = viewHeaders(plugins)
	}
	C.weft_fill_fns(d)
	return d
}

// viewHeaders builds the descriptor's WeftViewHeaders array (never freed): one comma-separated
// list per plugin, NULL for a plugin that reads every header; NULL when none declared a list.
func viewHeaders(plugins []core.PluginInfo) *C.WeftViewHeaders {
	if !slices.ContainsFunc(plugins, func(p core.PluginInfo) bool { return p.ViewHeaders != nil }) {
		return nil
	}
	lists := unsafe.Slice((*C.WeftViewHeaders)(C.calloc(C.size_t(len(plugins)), C.sizeof_WeftViewHeaders)), len(plugins))
	for i, p := range plugins {
		if p.ViewHeaders == nil {
			continue
		}
		// An empty list is a non-NULL pointer with length 0 (no header), unlike NULL (every header).
		names := strings.Join(p.ViewHeaders, ",")
		lists[i].names = (*C.uint8_t)(C.calloc(C.size_t(max(len(names), 1)), 1))
		copy(unsafe.Slice((*byte)(unsafe.Pointer(lists[i].names)), len(names)), names)
		lists[i].names_len = C.size_t(len(names))
	}
	return &lists[0]
}

// cString copies s into never-freed C memory (not NUL-terminated).
func cString(s string) (*C.uint8_t, C.size_t) {
	if s == "" {
		return nil, 0
	}
	return (*C.uint8_t)(C.CBytes([]byte(s))), C.size_t(len(s))
}

//export weft_go_init
func weft_go_init(plugin C.uint32_t, instance C.uint64_t, config *C.uint8_t, configLen C.size_t, slotCount C.uint32_t, errBuf *C.WeftBuf) (res C.uint32_t) {
	defer func() {
		if r := recover(); r != nil {
			msg := fmt.Sprintf("weft: panic in plugin init: %v", r)
			hostLogger(core.LogError, uint64(instance), msg)
			writeErr(errBuf, msg)
			res = C.uint32_t(core.ResultPanic)
		}
	}()
	if config == nil && configLen > 0 {
		writeErr(errBuf, "config is NULL with a non-zero length")
		return C.uint32_t(core.ResultInvalidArgument)
	}
	var cfg []byte
	if configLen > 0 {
		// Copied: the config outlives this call in decoded form and must not alias host memory.
		cfg = C.GoBytes(unsafe.Pointer(config), C.int(configLen))
	}
	err := core.Init(uint32(plugin), uint64(instance), cfg, uint32(slotCount))
	if err != nil {
		writeErr(errBuf, err.Error())
	}
	return C.uint32_t(core.InitResult(err))
}

// writeErr copies msg into the host's error buffer, truncated at a UTF-8 boundary.
func writeErr(buf *C.WeftBuf, msg string) {
	if buf == nil || buf.ptr == nil || buf.cap == 0 {
		return
	}
	if len(msg) > int(buf.cap) {
		msg = msg[:buf.cap]
		for len(msg) > 0 && !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(buf.ptr)), buf.cap), msg)
	buf.len = C.uint32_t(len(msg))
}

//export weft_go_on_phase
func weft_go_on_phase(instance C.uint64_t, phase C.uint32_t, view *C.WeftRequestView, out *C.WeftBuf) (res C.uint32_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLogger(core.LogError, uint64(instance), fmt.Sprintf("weft: panic in phase dispatch: %v", r))
			res = C.uint32_t(core.ResultPanic)
		}
	}()
	if out == nil {
		return C.uint32_t(core.ResultInvalidArgument)
	}
	out.len = 0
	r, n := core.Dispatch(uint64(instance), uint32(phase), unsafe.Pointer(view), unsafe.Pointer(out.ptr), uint32(out.cap))
	out.len = C.uint32_t(n)
	return C.uint32_t(r)
}

// weft_go_thread_start does nothing: calling any exported Go function on a host thread makes
// the Go runtime bind an M to that thread (kept until the thread exits), so the first phase
// call on the thread does not pay for it.
//
// weft_go_attach_worker starts the consumer of a worker ring (plugins flagged
// WEFT_PLUGIN_FLAG_BLOCKING); see core.AttachWorker. It returns at once.
//
//export weft_go_attach_worker
func weft_go_attach_worker(ring unsafe.Pointer, ringLen C.size_t, arena *C.uint8_t, slotSize, slotCount C.uint32_t) (res C.uint32_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLogger(core.LogError, 0, fmt.Sprintf("weft: panic in attach_worker: %v", r))
			res = C.uint32_t(core.ResultPanic)
		}
	}()
	if !hostHasComplete(C.weft_host) {
		hostLogger(core.LogError, 0, "weft: attach_worker: the host has no complete function, so jobs could not be answered")
		return C.uint32_t(core.ResultABIMismatch)
	}
	// The ring's id, read now: the exit call names the ring by address and id, so a late call
	// cannot be taken for a ring mapped at the same address later.
	var ringID uint64
	if ring != nil && uintptr(ringLen) >= core.RingOffsetRingID+8 && uintptr(ring)%8 == 0 {
		ringID = atomic.LoadUint64((*uint64)(unsafe.Add(ring, core.RingOffsetRingID)))
	}
	err := core.AttachWorker(ring, uintptr(ringLen),
		core.Arena{Base: unsafe.Pointer(arena), SlotSize: uint32(slotSize), SlotCount: uint32(slotCount)},
		core.WorkerHost{Complete: hostComplete, Exit: func() { hostWorkerExit(ring, ringID) }})
	if err != nil {
		hostLogger(core.LogError, 0, "weft: attach_worker: "+err.Error())
		return C.uint32_t(core.ResultInvalidArgument)
	}
	return C.uint32_t(core.ResultOK)
}

//export weft_go_thread_start
func weft_go_thread_start() {}

// weft_go_run_on_thread is the descriptor's run_on_thread: it calls the host's body(arg) from
// inside this Go call and returns when body does. The host runs a serving thread's whole event
// loop in it, so every phase call the thread makes is a callback nested in a Go call. The Go
// runtime's entry for a thread that runs no Go (a receive from its main_init_done channel, under
// one lock shared by every such thread, on each call) is then skipped: two threads calling at
// once paid 107 ns a call each that way against 53 ns nested (scripts/cgo-entry). arg is the
// host's and is only passed through.
//
//export weft_go_run_on_thread
func weft_go_run_on_thread(body C.WeftThreadBodyFn, arg unsafe.Pointer) {
	nestedThreads.add(1)
	defer nestedThreads.add(-1)
	C.weft_call_body(body, arg)
}

// nestedThreads gives each host thread inside run_on_thread a P of its own. Such a thread is
// in a cgo call whenever it is not in a phase callback, holding its P. sysmon's retake leaves a
// P in a syscall alone (for up to 10 ms) only while its run queue is empty and some P is idle or
// some M spinning; with GOMAXPROCS at the CPU count and one serving thread per CPU no P is idle,
// so every P whose thread spent one sysmon tick (20 µs) outside Go is taken and handed off, each
// retake keeps sysmon at its 20 µs period, and the thread takes a P back under the scheduler's
// lock at its next call. Under load the Go runtime's threads then used 1.0–2.9 µs of CPU a
// request in three of four runs, 0.27–0.33 µs in four of four with this (scripts/prof-delta,
// docs/performance-log.md). One more P per nested thread keeps an idle P there; Go's own
// goroutines keep the Ps they had. Two side effects: during a GC cycle an idle P may run an idle
// mark worker (the same marking work, done sooner on one more thread), and once GOMAXPROCS was
// set here the runtime no longer adjusts it to the CPU limit by itself (the base is what it was
// when the first thread came in).
var nestedThreads threadPs

type threadPs struct {
	sync.Mutex
	n    int
	base int // GOMAXPROCS before the first nested thread came in
}

func (t *threadPs) add(d int) {
	t.Lock()
	defer t.Unlock()
	if t.n == 0 {
		t.base = runtime.GOMAXPROCS(0)
	}
	t.n += d
	runtime.GOMAXPROCS(t.base + t.n)
}

// weft_go_yield passes the calling host thread's goroutine through the scheduler once (see
// weft_c_on_phase in entry.c, which calls it every few milliseconds per thread).
//
//export weft_go_yield
func weft_go_yield() {
	runtime.Gosched()
}

// weft_go_cancel is the host's notice that it stopped waiting for a pending call: the call's
// context.Context is cancelled (core.CancelCall). It never blocks.
//
//export weft_go_cancel
func weft_go_cancel(instance C.uint64_t, slot, call C.uint32_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLogger(core.LogError, uint64(instance), fmt.Sprintf("weft: panic in cancel: %v", r))
		}
	}()
	core.CancelCall(uint64(instance), uint32(slot), uint32(call))
}

//export weft_go_shutdown
func weft_go_shutdown(instance C.uint64_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLogger(core.LogError, uint64(instance), fmt.Sprintf("weft: panic in shutdown: %v", r))
		}
	}()
	_ = core.Shutdown(uint64(instance))
}
