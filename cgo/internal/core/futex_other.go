//go:build !linux

package core

import (
	"sync/atomic"
	"time"
)

// futexWait without a futex: poll the word. The host parks a Rust consumer with its own
// mechanism off Linux, so a Go consumer there cannot be woken and polls instead.
func futexWait(addr *uint32, val uint32) {
	for atomic.LoadUint32(addr) == val {
		time.Sleep(50 * time.Microsecond)
	}
}

func futexWake(addr *uint32, n int) {}
