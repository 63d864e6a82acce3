// A Go library with one no-op export, entered two ways by main.c: from a thread that runs no
// Go (how a host's serving thread calls a plugin today), and from inside a Go call that called
// back into C (Nest), where the Go runtime counts the thread as running a cgo call already.
// Built by scripts/cgo-entry; not part of the SDK.
package main

/*
typedef void (*loop_fn)(void *);
static inline void call_loop(loop_fn f, void *arg) { f(arg); }
*/
import "C"

import "unsafe"

//export Noop
func Noop(x C.int) C.int { return x + 1 }

// Nest calls f(arg) from inside this Go call; the Noop calls f makes are nested callbacks.
//
//export Nest
func Nest(f unsafe.Pointer, arg unsafe.Pointer) { C.call_loop(C.loop_fn(f), arg) }

func main() {}
