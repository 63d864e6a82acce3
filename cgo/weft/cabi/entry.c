// C side of the weft plugin entry point: the exact weft.h prototype of weft_plugin_entry and
// the function pointers to the exported Go functions (which cannot be taken in the preamble of
// a Go file with //export).

#include "_cgo_export.h"

const WeftHostApi *weft_host;

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *host) {
	return weft_go_entry((WeftHostApi *)host);
}

void weft_fill_fns(WeftPluginDescriptor *d) {
	d->init = (WeftInitFn)weft_go_init;
	d->on_phase = (WeftPhaseFn)weft_go_on_phase;
	d->thread_start = (WeftThreadStartFn)weft_go_thread_start;
	d->shutdown = (WeftShutdownFn)weft_go_shutdown;
	d->attach_worker = (WeftAttachWorkerFn)weft_go_attach_worker;
}
