package cabi

/*
#cgo CFLAGS: -I${SRCDIR}
#include <stddef.h>
#include <stdatomic.h>
#include "weft.h"

// A host function table for this package's tests (test files cannot use cgo). It records the
// calls it gets in C atomics; it never calls into Go. Not used by the library itself.
static _Atomic uint64_t weft_th_completes, weft_th_exits, weft_th_logs;
static _Atomic uint64_t weft_th_last[5];
static _Atomic uintptr_t weft_th_exit_ring;
static _Atomic uint64_t weft_th_exit_ring_id;
static _Atomic uint32_t weft_th_answer;

static uint32_t weft_th_complete(uint64_t instance, uint32_t slot, uint32_t call, uint32_t result, uint32_t out_len) {
	weft_th_last[0] = instance;
	weft_th_last[1] = slot;
	weft_th_last[2] = call;
	weft_th_last[3] = result;
	weft_th_last[4] = out_len;
	atomic_fetch_add(&weft_th_completes, 1);
	return weft_th_answer;
}

static void weft_th_exit(const void *ring) {
	weft_th_exit_ring = (uintptr_t)ring;
	weft_th_exit_ring_id = 0;
	atomic_fetch_add(&weft_th_exits, 1);
}

static uint32_t weft_th_exit_by_id(const void *ring, uint64_t ring_id) {
	weft_th_exit_ring = (uintptr_t)ring;
	weft_th_exit_ring_id = ring_id;
	atomic_fetch_add(&weft_th_exits, 1);
	return WEFT_RESULT_OK;
}

static void weft_th_log(uint32_t level, uint64_t instance, const uint8_t *msg, size_t len) {
	(void)level; (void)instance; (void)msg; (void)len;
	atomic_fetch_add(&weft_th_logs, 1);
}

static const WeftHostApi weft_th_api = {WEFT_ABI_VERSION, sizeof(WeftHostApi), NULL, weft_th_log,
	weft_th_complete, weft_th_exit, weft_th_exit_by_id};
// A host built before complete existed: its table ends after log (the function pointers past
// `size` must not be used even though they are set here).
static const WeftHostApi weft_th_old_api = {WEFT_ABI_VERSION, offsetof(WeftHostApi, complete), NULL,
	weft_th_log, weft_th_complete, weft_th_exit, weft_th_exit_by_id};

// A thread body for weft_go_run_on_thread's test: records the argument it was given.
static char weft_th_marker;
static _Atomic uintptr_t weft_th_body_arg;
static void weft_th_body(void *arg) { weft_th_body_arg = (uintptr_t)arg; }
static WeftThreadBodyFn weft_th_body_fn(void) { return weft_th_body; }
static void *weft_th_marker_ptr(void) { return &weft_th_marker; }
static int weft_th_body_ran_with_marker(void) { return weft_th_body_arg == (uintptr_t)&weft_th_marker; }

static const WeftHostApi *weft_th_host(int old) { return old ? &weft_th_old_api : &weft_th_api; }
static uint64_t weft_th_counter(int which) {
	switch (which) {
	case 0: return weft_th_completes;
	case 1: return weft_th_exits;
	case 2: return weft_th_logs;
	case 3: return weft_th_exit_ring;
	case 9: return weft_th_exit_ring_id;
	}
	return weft_th_last[which - 4];
}
static void weft_th_set_answer(uint32_t a) { weft_th_answer = a; }
*/
import "C"

import "unsafe"

// testHostAPI returns the test host table (old: one without complete and worker_exit).
func testHostAPI(old bool) *C.WeftHostApi {
	o := C.int(0)
	if old {
		o = 1
	}
	return (*C.WeftHostApi)(unsafe.Pointer(C.weft_th_host(o)))
}

// testHostState is what the test host recorded.
type testHostState struct {
	completes, exits, logs uint64
	exitRing               uintptr
	exitRingID             uint64    // 0: the exit came through worker_exit
	last                   [5]uint64 // instance, slot, call, result, out_len of the last complete
}

func testHostRecorded() testHostState {
	var s testHostState
	s.completes = uint64(C.weft_th_counter(0))
	s.exits = uint64(C.weft_th_counter(1))
	s.logs = uint64(C.weft_th_counter(2))
	s.exitRing = uintptr(C.weft_th_counter(3))
	s.exitRingID = uint64(C.weft_th_counter(9))
	for i := range s.last {
		s.last[i] = uint64(C.weft_th_counter(C.int(4 + i)))
	}
	return s
}

func testHostAnswer(r uint32) { C.weft_th_set_answer(C.uint32_t(r)) }

// testAttach calls the exported attach_worker as the host would.
func testAttach(ring unsafe.Pointer, ringLen uintptr, arena unsafe.Pointer, slotSize, slotCount uint32) uint32 {
	return uint32(weft_go_attach_worker(ring, C.size_t(ringLen), (*C.uint8_t)(arena), C.uint32_t(slotSize), C.uint32_t(slotCount)))
}

// testOnPhase calls the exported on_phase as the host would.
func testOnPhase(instance uint64, phase uint32, view unsafe.Pointer, out unsafe.Pointer, outCap uint32) (uint32, uint32) {
	buf := C.WeftBuf{ptr: (*C.uint8_t)(out), cap: C.uint32_t(outCap)}
	r := weft_go_on_phase(C.uint64_t(instance), C.uint32_t(phase), (*C.WeftRequestView)(view), &buf)
	return uint32(r), uint32(buf.len)
}

// testInit and testShutdown call the exported init and shutdown as the host would.
func testInit(plugin uint32, instance uint64, slots uint32) uint32 {
	return uint32(weft_go_init(C.uint32_t(plugin), C.uint64_t(instance), nil, 0, C.uint32_t(slots), nil))
}

func testShutdown(instance uint64) { weft_go_shutdown(C.uint64_t(instance)) }

// testRunOnThread calls the descriptor's run_on_thread with a C body and reports whether that
// body ran with the argument given.
func testRunOnThread() bool {
	weft_go_run_on_thread(C.weft_th_body_fn(), C.weft_th_marker_ptr())
	return C.weft_th_body_ran_with_marker() != 0
}
