// C side of the weft plugin entry point: the exact weft.h prototype of weft_plugin_entry and
// the function pointers to the exported Go functions (which cannot be taken in the preamble of
// a Go file with //export).

#include <stdint.h>
#include <time.h>

#include "_cgo_export.h"

const WeftHostApi *weft_host;

uint32_t weft_c_on_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out);

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *host) {
	return weft_go_entry((WeftHostApi *)host);
}

void weft_fill_fns(WeftPluginDescriptor *d) {
	d->init = (WeftInitFn)weft_go_init;
	d->on_phase = weft_c_on_phase;
	d->thread_start = (WeftThreadStartFn)weft_go_thread_start;
	d->shutdown = (WeftShutdownFn)weft_go_shutdown;
	d->attach_worker = (WeftAttachWorkerFn)weft_go_attach_worker;
	d->cancel = (WeftCancelFn)weft_go_cancel;
	d->run_on_thread = (WeftRunOnThreadFn)weft_go_run_on_thread;
}

// The Go scheduler's system monitor (sysmon) takes a P back from a thread that has run the same
// goroutine for 10 ms without passing through the scheduler, and a host thread calling phases
// does exactly that: every callback resumes the thread's one goroutine and never reschedules it.
// Each such retake hands the P to another thread and resets sysmon to its fastest period (20 µs),
// so under steady load sysmon woke thousands of times a second and the P moved between threads.
// A thread that calls phases therefore yields to the scheduler once every YIELD_EVERY_MS (a
// Gosched in weft_go_yield), which starts a new scheduling tick: no retake, and sysmon backs
// off to its 10 ms period. The clock is the coarse monotonic one (a vDSO read of a few ns).
#define YIELD_EVERY_MS 5

static _Thread_local int64_t weft_next_yield_ms;

static int weft_yield_due(void) {
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) {
		return 0;
	}
	int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	if (now < weft_next_yield_ms) {
		return 0;
	}
	weft_next_yield_ms = now + YIELD_EVERY_MS;
	return 1;
}

uint32_t weft_c_on_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
	uint32_t r = weft_go_on_phase(instance, phase, (WeftRequestView *)view, out);
	if (weft_yield_due()) {
		weft_go_yield();
	}
	return r;
}

// Called from Go by weft_go_run_on_thread: the host's thread body runs inside that Go call, so
// the phase calls it makes are callbacks nested in Go (see weft_go_run_on_thread).
void weft_call_body(WeftThreadBodyFn body, void *arg) {
	if (body != NULL) {
		body(arg);
	}
}
