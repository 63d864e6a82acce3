package cabi

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo noescape weft_log
#cgo nocallback weft_log
#include "weft.h"

extern const WeftHostApi *weft_host;

static inline void weft_log(uint32_t level, uint64_t instance, const uint8_t *msg, size_t len) {
	const WeftHostApi *h = weft_host;
	if (h != NULL && h->log != NULL) {
		h->log(level, instance, msg, len);
	}
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
