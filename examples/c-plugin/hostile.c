/*
 * hostile: a test plugin that breaks every rule of the weft ABI it can break from its side.
 * NOT an example to copy: docs/abi.md and header_stamp.c show the rules; this file exists so the
 * tests can prove that the host answers each misuse with an error code and a log line, applies
 * the failure policy, keeps serving and leaks nothing.
 *
 * Per request, the `x-hostile` request header names the misuse (table `misuses` below). A name
 * starting with "resp-" misbehaves in the response-headers phase instead of the request phase.
 * To add a misuse, add a function and a row to the table, and a row to the tests
 * (runtime/tests/hostile_c.rs and proxy/tests/e2e_c_plugin.rs).
 *
 * Load-time misuses are separate libraries built from this file with -DHOSTILE_LOAD=<n>
 * (scripts/build-c-plugins builds each): see the HOSTILE_LOAD block at the end.
 *
 * Misuses of the asynchronous ABI (modes "async-*", request phase; see async_misuse below) call
 * host->complete() wrongly from the calling thread: twice, with a forged or stale call or slot,
 * with another instance's id, with result PENDING, with out_len past the capacity, never, or
 * after the host cancelled, or from two threads at once after the host cancelled (modes
 * "async-never-race", then "async-release-stuck-racing"). The code complete() returned for the
 * misuse is kept per instance and reported by the next request with mode "report-rc" (header
 * x-hostile-rc).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "weft.h"

#ifndef HOSTILE_LOAD
#define HOSTILE_LOAD 0
#endif

static const WeftHostApi *host;

static int put(WeftBuf *out, uint32_t op, uint32_t arg, const void *a, uint32_t a_len, const void *b, uint32_t b_len) {
    uint32_t need = (uint32_t)sizeof(WeftMutation) + ((a_len + b_len + 3u) & ~3u);
    if (out->ptr == NULL || out->len + need > out->cap) {
        return 0;
    }
    WeftMutation rec = {op, arg, a_len, b_len};
    memcpy(out->ptr + out->len, &rec, sizeof rec);
    memcpy(out->ptr + out->len + sizeof rec, a, a_len);
    memcpy(out->ptr + out->len + sizeof rec + a_len, b, b_len);
    memset(out->ptr + out->len + sizeof rec + a_len + b_len, 0, need - sizeof rec - a_len - b_len);
    out->len += need;
    return 1;
}

#define PUT(out, op, arg, a, b) put(out, op, arg, a, (uint32_t)strlen(a), b, (uint32_t)strlen(b))

static uint32_t m_ok(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-ok", "1");
    return WEFT_RESULT_OK;
}
static uint32_t m_len_past_cap(WeftBuf *out) {
    out->len = out->cap + 1;
    return WEFT_RESULT_OK;
}
static uint32_t m_len_max(WeftBuf *out) {
    out->len = UINT32_MAX;
    return WEFT_RESULT_OK;
}
static uint32_t m_garbage(WeftBuf *out) {
    uint32_t x = 0x9e3779b9u;
    uint32_t n = out->cap < 256 ? out->cap : 256;
    for (uint32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        out->ptr[i] = (uint8_t)(x >> 24);
    }
    out->len = n;
    return WEFT_RESULT_OK;
}
static uint32_t m_overflow_lengths(WeftBuf *out) {
    WeftMutation rec = {WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, 0xFFFFFFF0u, 0x20u};
    memcpy(out->ptr, &rec, sizeof rec);
    memcpy(out->ptr + sizeof rec, "x-a\0", 4);
    out->len = sizeof rec + 4;
    return WEFT_RESULT_OK;
}
static uint32_t m_short_record(WeftBuf *out) {
    memset(out->ptr, 1, 7);
    out->len = 7;
    return WEFT_RESULT_OK;
}
static uint32_t m_unknown_op(WeftBuf *out) {
    PUT(out, 77, 0, "x-a", "b");
    return WEFT_RESULT_OK;
}
static uint32_t m_bad_status(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY, 99, "body", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_huge_status(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY, UINT32_MAX, "", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_bad_name(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "bad name", "v");
    return WEFT_RESULT_OK;
}
static uint32_t m_crlf_value(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-a", "v\r\nx-injected: 1");
    return WEFT_RESULT_OK;
}
static uint32_t m_nul_value(WeftBuf *out) {
    put(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-a", 3, "a\0b", 3);
    return WEFT_RESULT_OK;
}
static uint32_t m_reserved_header(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "transfer-encoding", "chunked");
    return WEFT_RESULT_OK;
}
static uint32_t m_orphan_reply_header(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, 0, "x-a", "b");
    return WEFT_RESULT_OK;
}
static uint32_t m_double_reply(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY, 200, "one", "");
    PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY, 200, "two", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_bad_path(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_PATH, 0, "no-slash", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_wrong_phase_op(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_STATUS, 200, "", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_unknown_result(WeftBuf *out) {
    (void)out;
    return 0xDEADBEEFu;
}
static uint32_t m_claims_overflow(WeftBuf *out) {
    (void)out;
    return WEFT_RESULT_MUTATION_OVERFLOW;
}
static uint32_t m_too_many_records(WeftBuf *out) {
    for (int i = 0; i < 300; i++) {
        if (!PUT(out, WEFT_MUTATION_OP_ADD_REQUEST_HEADER, 0, "x-a", "b")) {
            break;
        }
    }
    return WEFT_RESULT_OK;
}
/* Valid records written, but len says 0: the host must ignore everything past len. */
static uint32_t m_bytes_past_len(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-ignored", "1");
    out->len = 0;
    return WEFT_RESULT_OK;
}
/* Abuses the host log function, then succeeds: the request must go on normally. */
static uint32_t m_log_abuse(WeftBuf *out) {
    static uint8_t big[20000];
    if (host != NULL && host->log != NULL) {
        memset(big, 'A', sizeof big);
        memcpy(big, "hostile-big-line ", 17);
        host->log(WEFT_LOG_ERROR, 0, NULL, 100);          /* NULL with a length */
        host->log(WEFT_LOG_ERROR, 0, NULL, SIZE_MAX);     /* NULL with a huge length */
        host->log(99, UINT64_MAX, (const uint8_t *)"hostile-unknown-level-and-instance", 34);
        host->log(WEFT_LOG_WARN, 0, (const uint8_t *)"hostile-bad-utf8 \xff\xfe\xc0", 20);
        /* A huge length over a 20000-byte buffer: the host reads at most 16 KiB of it. */
        host->log(WEFT_LOG_INFO, 0, big, SIZE_MAX);
        host->log(WEFT_LOG_INFO, 0, (const uint8_t *)"hostile-log-done", 16);
    }
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-logged", "1");
    return WEFT_RESULT_OK;
}
/* Response phase. */
static uint32_t m_resp_bad_status(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_STATUS, 600, "", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_resp_request_op(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_PATH, 0, "/x", "");
    return WEFT_RESULT_OK;
}
static uint32_t m_resp_crlf(WeftBuf *out) {
    PUT(out, WEFT_MUTATION_OP_SET_RESPONSE_HEADER, 0, "x-a", "1\r\nset-cookie: evil");
    return WEFT_RESULT_OK;
}

struct misuse {
    const char *name;
    uint32_t (*run)(WeftBuf *out);
};

static const struct misuse misuses[] = {
    {"ok", m_ok},
    {"len-past-cap", m_len_past_cap},
    {"len-max", m_len_max},
    {"garbage", m_garbage},
    {"overflow-lengths", m_overflow_lengths},
    {"short-record", m_short_record},
    {"unknown-op", m_unknown_op},
    {"bad-status", m_bad_status},
    {"huge-status", m_huge_status},
    {"bad-name", m_bad_name},
    {"crlf-value", m_crlf_value},
    {"nul-value", m_nul_value},
    {"reserved-header", m_reserved_header},
    {"orphan-reply-header", m_orphan_reply_header},
    {"double-reply", m_double_reply},
    {"bad-path", m_bad_path},
    {"wrong-phase-op", m_wrong_phase_op},
    {"unknown-result", m_unknown_result},
    {"claims-overflow", m_claims_overflow},
    {"too-many-records", m_too_many_records},
    {"bytes-past-len", m_bytes_past_len},
    {"log-abuse", m_log_abuse},
    {"resp-bad-status", m_resp_bad_status},
    {"resp-request-op", m_resp_request_op},
    {"resp-crlf", m_resp_crlf},
};

/* ---- async misuses ---- */

/* Per instance (id modulo 64): the code complete() returned for the last misuse. */
static _Atomic uint32_t last_rc[64];
/* Calls answered PENDING and never completed: (slot << 32 | call), instance. List 0: mode
 * async-never (released by async-release-stuck); list 1: mode async-never-race (released by
 * async-release-stuck-racing), so tests running side by side do not release each other's calls. */
#define STUCK_CAP 64
static _Atomic uint64_t stuck_call[2][STUCK_CAP];
static _Atomic uint64_t stuck_instance[2][STUCK_CAP];

/* Two threads released together complete the same cancelled call at once. */
typedef struct {
    uint64_t instance;
    uint32_t slot, call, rc;
    _Atomic int *ready, *go;
} Racer;

static void *race_complete(void *arg) {
    Racer *r = arg;
    atomic_fetch_add(r->ready, 1);
    while (!atomic_load(r->go)) {
    }
    r->rc = host->complete(r->instance, r->slot, r->call, WEFT_RESULT_OK, 0);
    return NULL;
}

/* Completes call (instance, slot, call) from two threads at once; returns the two codes as
 * smaller * 100 + larger (1314: one Cancelled, one AlreadyCompleted), or 0 if no thread started. */
static uint32_t complete_twice_at_once(uint64_t instance, uint32_t slot, uint32_t call) {
    _Atomic int ready = 0, go = 0;
    Racer r[2] = {{instance, slot, call, 0, &ready, &go}, {instance, slot, call, 0, &ready, &go}};
    pthread_t t[2];
    if (pthread_create(&t[0], NULL, race_complete, &r[0]) != 0) {
        return 0;
    }
    if (pthread_create(&t[1], NULL, race_complete, &r[1]) != 0) {
        atomic_store(&go, 1);
        pthread_join(t[0], NULL);
        return 0;
    }
    while (atomic_load(&ready) < 2) { /* both spinning: they start complete() together */
    }
    atomic_store(&go, 1);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    uint32_t lo = r[0].rc < r[1].rc ? r[0].rc : r[1].rc, hi = r[0].rc < r[1].rc ? r[1].rc : r[0].rc;
    return lo * 100 + hi;
}

static uint32_t async_misuse(const char *mode, uint64_t instance, const WeftRequestView *view, WeftBuf *out) {
    /* Read before any complete(): afterwards the view is not ours to touch. */
    const uint32_t slot = view->slot, call = view->call, cap = out->cap;
    _Atomic uint32_t *rc = &last_rc[instance % 64];
    if (host == NULL || host->size < sizeof(WeftHostApi) || host->complete == NULL) {
        return WEFT_RESULT_INTERNAL;
    }
    const int never_race = strcmp(mode, "async-never-race") == 0;
    if (never_race || strcmp(mode, "async-never") == 0) {
        for (size_t i = 0; i < STUCK_CAP; i++) {
            uint64_t empty = 0;
            if (atomic_compare_exchange_strong(&stuck_call[never_race][i], &empty, (uint64_t)slot << 32 | call)) {
                atomic_store(&stuck_instance[never_race][i], instance);
                break;
            }
        }
        return WEFT_RESULT_PENDING; /* and never complete() */
    }
    const int racing = strcmp(mode, "async-release-stuck-racing") == 0;
    if (racing || strcmp(mode, "async-release-stuck") == 0) {
        /* Completes every never-completed call: the host gave up on them (CANCELLED expected).
         * Racing: the calls of async-never-race, each from two threads at once (one CANCELLED,
         * one ALREADY_COMPLETED); the code kept is the first pair that differs from that. */
        uint32_t released = 0, pairs = 1314;
        for (size_t i = 0; i < STUCK_CAP; i++) {
            uint64_t c = atomic_exchange(&stuck_call[racing][i], 0);
            if (c == 0) {
                continue;
            }
            uint64_t inst = atomic_load(&stuck_instance[racing][i]);
            uint32_t s = (uint32_t)(c >> 32), k = (uint32_t)c;
            if (racing) {
                uint32_t pair = complete_twice_at_once(inst, s, k);
                pairs = pairs == 1314 ? pair : pairs;
                atomic_store(rc, pairs);
            } else {
                atomic_store(rc, host->complete(inst, s, k, WEFT_RESULT_OK, 0));
            }
            released++;
        }
        char n[16];
        snprintf(n, sizeof n, "%u", released);
        PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-released", n);
        return WEFT_RESULT_OK;
    }
    /* Every other mode commits its misuse first, keeps the code, then completes correctly
     * (except async-twice, whose correct completion comes first), so the request goes on. */
    uint32_t len = 0;
    WeftBuf mine = {out->ptr, cap, 0};
    PUT(&mine, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-async", "1");
    len = mine.len;
    uint32_t misuse_rc;
    if (strcmp(mode, "async-twice") == 0) {
        host->complete(instance, slot, call, WEFT_RESULT_OK, len);
        misuse_rc = host->complete(instance, slot, call, WEFT_RESULT_OK, 0);
        atomic_store(rc, misuse_rc);
        return WEFT_RESULT_PENDING;
    } else if (strcmp(mode, "async-stale-call") == 0) {
        misuse_rc = host->complete(instance, slot, call + 1, WEFT_RESULT_OK, 0);
    } else if (strcmp(mode, "async-zero-call") == 0) {
        misuse_rc = host->complete(instance, slot, 0, WEFT_RESULT_OK, 0);
    } else if (strcmp(mode, "async-forged-slot") == 0) {
        misuse_rc = host->complete(instance, 0xFFFF0000u, call, WEFT_RESULT_OK, 0);
    } else if (strcmp(mode, "async-other-instance") == 0) {
        misuse_rc = host->complete(instance + 1, slot, call, WEFT_RESULT_OK, 0);
    } else if (strcmp(mode, "async-unknown-instance") == 0) {
        misuse_rc = host->complete(UINT64_MAX, slot, call, WEFT_RESULT_OK, 0);
    } else if (strcmp(mode, "async-result-pending") == 0) {
        misuse_rc = host->complete(instance, slot, call, WEFT_RESULT_PENDING, 0);
    } else if (strcmp(mode, "async-len-past-cap") == 0) {
        misuse_rc = host->complete(instance, slot, call, WEFT_RESULT_OK, cap + 1);
    } else {
        return WEFT_RESULT_OK;
    }
    atomic_store(rc, misuse_rc);
    host->complete(instance, slot, call, WEFT_RESULT_OK, len);
    return WEFT_RESULT_PENDING;
}

/* The value of request header x-hostile, copied into mode (NUL-terminated), or "" if absent. */
static void read_mode(const WeftRequestView *view, char *mode, size_t cap) {
    mode[0] = '\0';
    const uint8_t *base = (const uint8_t *)view;
    if ((uint64_t)view->req_headers_off + (uint64_t)view->req_header_count * sizeof(WeftHeader) > view->size) {
        return;
    }
    for (uint32_t i = 0; i < view->req_header_count; i++) {
        WeftHeader h;
        memcpy(&h, base + view->req_headers_off + i * sizeof(WeftHeader), sizeof h);
        if (h.name.len == 9 && (uint64_t)h.name.off + 9 <= view->size && memcmp(base + h.name.off, "x-hostile", 9) == 0 &&
            (uint64_t)h.value.off + h.value.len <= view->size && h.value.len < cap) {
            memcpy(mode, base + h.value.off, h.value.len);
            mode[h.value.len] = '\0';
            return;
        }
    }
}

static uint32_t hostile_init(uint32_t plugin, uint64_t instance, const uint8_t *config, size_t config_len,
                             uint32_t slot_count, WeftBuf *err) {
    (void)plugin;
    (void)instance;
    (void)slot_count;
    if (config_len >= 4 && memcmp(config, "\"bad", 4) == 0) {
        /* An init failure whose message claims more bytes than the buffer holds. */
        memcpy(err->ptr, "hostile init refused", 20);
        err->len = UINT32_MAX;
        return WEFT_RESULT_INIT_FAILED;
    }
    return WEFT_RESULT_OK;
}

static uint32_t hostile_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
    char mode[64];
    read_mode(view, mode, sizeof mode);
    int resp = strncmp(mode, "resp-", 5) == 0;
    if ((phase == WEFT_PHASE_REQUEST_HEADERS && resp) || (phase == WEFT_PHASE_RESPONSE_HEADERS && !resp) ||
        phase == WEFT_PHASE_LOG) {
        return WEFT_RESULT_OK;
    }
    if (strncmp(mode, "async-", 6) == 0) {
        return async_misuse(mode, instance, view, out);
    }
    if (strcmp(mode, "worker-exit-bogus") == 0) {
        /* worker_exit with pointers that name no attached ring: logged and ignored. */
        if (host != NULL && host->size >= sizeof(WeftHostApi) && host->worker_exit != NULL) {
            uint8_t fake[64] = {0};
            host->worker_exit(NULL);
            host->worker_exit(fake);
        }
        PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-ok", "1");
        return WEFT_RESULT_OK;
    }
    if (strcmp(mode, "report-rc") == 0) {
        char n[16];
        snprintf(n, sizeof n, "%u", atomic_load(&last_rc[instance % 64]));
        PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-rc", n);
        return WEFT_RESULT_OK;
    }
    for (size_t i = 0; i < sizeof misuses / sizeof misuses[0]; i++) {
        if (strcmp(mode, misuses[i].name) == 0) {
            return misuses[i].run(out);
        }
    }
    return WEFT_RESULT_OK;
}

/* Load-time variants. */
#if HOSTILE_LOAD == 1 /* non-UTF-8 plugin name */
static const char name0[] = "hostile-\xff\xfe";
#else
static const char name0[] = "hostile";
#endif
#if HOSTILE_LOAD == 8 /* two plugins with one name */
static const char name1[] = "hostile";
#else
static const char name1[] = "hostile-open";
#endif

static const WeftPluginInfo plugins[] = {
    {(const uint8_t *)name0, sizeof name0 - 1,
     WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS | WEFT_PHASE_MASK_LOG, 0},
    {(const uint8_t *)name1, sizeof name1 - 1, WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS, 0},
};

static WeftPluginDescriptor descriptor = {
    .abi_version = WEFT_ABI_VERSION,
    .descriptor_size = sizeof(WeftPluginDescriptor),
    .request_view_size = sizeof(WeftRequestView),
    .mutation_size = sizeof(WeftMutation),
    .host_api_size = sizeof(WeftHostApi),
    .runtime = WEFT_RUNTIME_NATIVE,
    .runtime_version = (const uint8_t *)"c11-hostile",
    .runtime_version_len = 11,
    .plugin_count = 2,
    .plugins = plugins,
    .init = hostile_init,
    .on_phase = hostile_phase,
    .thread_start = NULL,
    .shutdown = NULL,
};

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *api) {
    host = api;
    switch (HOSTILE_LOAD) {
    case 2: descriptor.descriptor_size += 8; break;                 /* wrong descriptor size */
    case 3: descriptor.request_view_size -= 8; break;               /* wrong view size */
    case 4: descriptor.host_api_size += 64; break;                  /* wants a newer host table */
    case 5: return NULL;                                            /* no descriptor */
    case 6: descriptor.abi_version = WEFT_ABI_VERSION + 1; break;   /* another ABI version */
    case 7: descriptor.on_phase = NULL; break;                      /* no phase function */
    case 9: descriptor.plugin_count = 100000; break;                /* absurd plugin count */
    case 10: descriptor.runtime_version = NULL; break;              /* NULL with a length */
    case 11:                                                        /* registration error */
        descriptor.plugin_count = 0;
        descriptor.load_error = (const uint8_t *)"hostile: two plugins registered as x";
        descriptor.load_error_len = 36;
        break;
    case 12: descriptor.mutation_size = 12; break;                  /* wrong record size */
    case 13: /* built against the first ABI v1 header, before attach_worker: still accepted */
        descriptor.descriptor_size = (uint32_t)offsetof(WeftPluginDescriptor, attach_worker);
        break;
    default: break;
    }
    return &descriptor;
}
