//go:build linux

package core

import (
	"syscall"
	"unsafe"
)

const (
	futexWaitOp = 0 // FUTEX_WAIT, process-shared (no FUTEX_PRIVATE_FLAG): the host may map the ring
	futexWakeOp = 1 // FUTEX_WAKE
)

// futexWait sleeps while *addr == val (returns early on a wake, a signal or a spurious wake-up;
// callers re-check).
func futexWait(addr *uint32, val uint32) {
	_, _, _ = syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), 0, 0, 0)
}

// futexWake wakes up to n waiters on addr (the producer's side; used by tests).
func futexWake(addr *uint32, n int) {
	_, _, _ = syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(n), 0, 0, 0)
}
