package cabi

/*
#cgo CFLAGS: -I${SRCDIR}
#cgo noescape weft_log
#cgo nocallback weft_log
#cgo noescape weft_complete
#cgo nocallback weft_complete
#cgo nocallback weft_worker_exit_ring
#include <stddef.h>
#include "weft.h"

extern const WeftHostApi *weft_host;

// Whether the host's table (of h->size bytes) has the function pointer `field`, non-NULL: a
// host built against an older header has a shorter table (docs/abi.md, versioning).
#define WEFT_HOST_HAS(h, field) \
	((h) != NULL && (h)->size >= offsetof(WeftHostApi, field) + sizeof((h)->field) && (h)->field != NULL)

static inline int weft_host_has_log(const WeftHostApi *h) { return WEFT_HOST_HAS(h, log); }
static inline int weft_host_has_complete(const WeftHostApi *h) { return WEFT_HOST_HAS(h, complete); }

static inline void weft_log(uint32_t level, uint64_t instance, const uint8_t *msg, size_t len) {
	const WeftHostApi *h = weft_host;
	if (WEFT_HOST_HAS(h, log)) {
		h->log(level, instance, msg, len);
	}
}

static inline uint32_t weft_complete(uint64_t instance, uint32_t slot, uint32_t call, uint32_t result, uint32_t out_len) {
	const WeftHostApi *h = weft_host;
	if (!WEFT_HOST_HAS(h, complete)) {
		return WEFT_RESULT_INTERNAL;
	}
	return h->complete(instance, slot, call, result, out_len);
}

static inline void weft_worker_exit(const void *ring) {
	const WeftHostApi *h = weft_host;
	if (WEFT_HOST_HAS(h, worker_exit)) {
		h->worker_exit(ring);
	}
}

// worker_exit_ring names the ring by address and id; a host without it (or a ring without an
// id: an older host) gets worker_exit.
static inline void weft_worker_exit_ring(const void *ring, uint64_t ring_id) {
	const WeftHostApi *h = weft_host;
	if (ring_id != 0 && WEFT_HOST_HAS(h, worker_exit_ring)) {
		h->worker_exit_ring(ring, ring_id);
		return;
	}
	weft_worker_exit(ring);
}
*/
import "C"

import (
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
)

// hostLogger sends a log line to the host's log callback. msg is only read during the call.
func hostLogger(level core.Level, instance uint64, msg string) {
	C.weft_log(C.uint32_t(level), C.uint64_t(instance), (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(msg))), C.size_t(len(msg)))
}

// hostComplete finishes a pending call or a worker job through the host's complete function
// (core's CompleteFunc). Installed only when the host has one.
func hostComplete(instance uint64, slot, call uint32, result core.Result, outLen uint32) core.Result {
	return core.Result(C.weft_complete(C.uint64_t(instance), C.uint32_t(slot), C.uint32_t(call), C.uint32_t(result), C.uint32_t(outLen)))
}

// hostWorkerExit tells the host the worker of ring (whose header holds ringID) has left it.
func hostWorkerExit(ring unsafe.Pointer, ringID uint64) {
	C.weft_worker_exit_ring(ring, C.uint64_t(ringID))
}

func hostHasLog(h *C.WeftHostApi) bool      { return C.weft_host_has_log(h) != 0 }
func hostHasComplete(h *C.WeftHostApi) bool { return C.weft_host_has_complete(h) != 0 }
