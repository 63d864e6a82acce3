/*
 * phase-count: a test plugin that counts the phase calls it receives, so the tests can prove
 * that the host calls an instance only for the phases its plugin declared. NOT an example to
 * copy (header_stamp.c is the example).
 *
 *   count-all              declares request headers, request body (streamed), response headers,
 *                          response body (streamed) and log.
 *   count-request-headers  declares request headers only.
 *
 * Both plugins share one on_phase function, which counts every call it gets, declared or not,
 * per plugin and per phase number (numbers past the last known phase share one bucket), and
 * answers OK with no mutation records. The counts are read with the exported
 * weft_phase_count_calls(plugin, phase) (dlsym; plugin is the index above).
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "weft.h"

#define PLUGINS 2
#define PHASES 9 /* WEFT_PHASE_REQUEST_HEADERS .. WEFT_PHASE_WEB_SOCKET_CLOSE, then "other" */
#define MAX_INSTANCES 64

static _Atomic uint64_t calls[PLUGINS][PHASES];

/* Instance id -> plugin index (+1; 0: free entry). Written at init, before any phase call. */
static struct {
    uint64_t id;
    _Atomic uint32_t plugin;
} instances[MAX_INSTANCES];

static uint32_t count_init(uint32_t plugin, uint64_t instance, const uint8_t *config, size_t config_len,
                           uint32_t slot_count, WeftBuf *err) {
    (void)config;
    (void)config_len;
    (void)slot_count;
    (void)err;
    if (plugin >= PLUGINS) {
        return WEFT_RESULT_UNKNOWN_PLUGIN;
    }
    for (size_t i = 0; i < MAX_INSTANCES; i++) {
        if (atomic_load(&instances[i].plugin) == 0) {
            instances[i].id = instance;
            atomic_store(&instances[i].plugin, plugin + 1);
            return WEFT_RESULT_OK;
        }
    }
    return WEFT_RESULT_INIT_FAILED;
}

static uint32_t count_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
    (void)view;
    (void)out;
    for (size_t i = 0; i < MAX_INSTANCES; i++) {
        uint32_t p = atomic_load(&instances[i].plugin);
        if (p != 0 && instances[i].id == instance) {
            atomic_fetch_add(&calls[p - 1][phase < PHASES - 1 ? phase : PHASES - 1], 1);
            return WEFT_RESULT_OK;
        }
    }
    return WEFT_RESULT_UNKNOWN_PLUGIN;
}

static void count_shutdown(uint64_t instance) {
    for (size_t i = 0; i < MAX_INSTANCES; i++) {
        if (atomic_load(&instances[i].plugin) != 0 && instances[i].id == instance) {
            atomic_store(&instances[i].plugin, 0);
        }
    }
}

/* Calls of `phase` that instances of plugin `plugin` received (UINT64_MAX for a bad index). */
uint64_t weft_phase_count_calls(uint32_t plugin, uint32_t phase) {
    if (plugin >= PLUGINS || phase >= PHASES) {
        return UINT64_MAX;
    }
    return atomic_load(&calls[plugin][phase]);
}

static const char name_all[] = "count-all";
static const char name_request_headers[] = "count-request-headers";

static const WeftPluginInfo plugins[PLUGINS] = {
    {(const uint8_t *)name_all, sizeof name_all - 1,
     WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_REQUEST_BODY | WEFT_PHASE_MASK_RESPONSE_HEADERS |
         WEFT_PHASE_MASK_RESPONSE_BODY | WEFT_PHASE_MASK_LOG,
     0},
    {(const uint8_t *)name_request_headers, sizeof name_request_headers - 1, WEFT_PHASE_MASK_REQUEST_HEADERS, 0},
};

static const WeftPluginDescriptor descriptor = {
    .abi_version = WEFT_ABI_VERSION,
    .descriptor_size = sizeof(WeftPluginDescriptor),
    .request_view_size = sizeof(WeftRequestView),
    .mutation_size = sizeof(WeftMutation),
    .host_api_size = sizeof(WeftHostApi),
    .runtime = WEFT_RUNTIME_NATIVE,
    .runtime_version = (const uint8_t *)"c11-phase-count",
    .runtime_version_len = 15,
    .plugin_count = PLUGINS,
    .plugins = plugins,
    .init = count_init,
    .on_phase = count_phase,
    .thread_start = NULL,
    .shutdown = count_shutdown,
};

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *api) {
    if (api == NULL || api->abi_version != WEFT_ABI_VERSION) {
        return NULL;
    }
    return &descriptor;
}
