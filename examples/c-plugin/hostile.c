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
 *
 * Late writers (modes "late-write*"): the plugin keeps writing its output buffer from another
 * thread after it returned or completed, putting CR/LF into the header values (and the body) the
 * host has already validated. The thread waits for the test to call the exported
 * hostile_late_write(), so the write lands after validation; "late-write-race" instead writes
 * while the host decodes.
 *
 * "stall": sleeps 600 ms inline (what a blocking handler does to the thread that called it).
 *
 * Built with -DHOSTILE_RINGS=1 (libweft_c_hostile_rings.so) it also has attach_worker and a
 * plugin "hostile-blocking" flagged WEFT_PLUGIN_FLAG_BLOCKING, whose worker misuses the ring
 * exit calls (see the "worker rings" block below).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weft.h"

#ifndef HOSTILE_LOAD
#define HOSTILE_LOAD 0
#endif
#ifndef HOSTILE_RINGS
#define HOSTILE_RINGS 0
#endif

static const WeftHostApi *host;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

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

/* ---- late writers ---- */

#define LATE_VALUE_LEN 2000u
#define LATE_BODY_LEN 256u

/* What the late-writer thread overwrites: bytes of the output buffer the host was given. */
static struct {
    uint8_t *spans[3];
    uint32_t lens[3];
    uint64_t instance;
    uint32_t slot, call, out_len;
    int complete_first; /* late-write-pending: complete(), then wait for the trigger */
    int race;           /* late-write-race: write at once, many times */
} late;
static atomic_int late_busy;  /* a late writer is running */
static atomic_int late_go;    /* set by hostile_late_write() */
static atomic_int late_done;  /* the late bytes are written */
static atomic_int late_started; /* the late writer runs (late-write-race returns only then) */

static void late_scribble(void) {
    for (int s = 0; s < 3; s++) {
        for (uint32_t i = 0; late.spans[s] != NULL && i + 1 < late.lens[s]; i += 2) {
            late.spans[s][i] = '\r';
            late.spans[s][i + 1] = '\n';
        }
    }
}

static void *late_main(void *arg) {
    (void)arg;
    atomic_store(&late_started, 1);
    if (late.complete_first) {
        host->complete(late.instance, late.slot, late.call, WEFT_RESULT_OK, late.out_len);
    }
    if (late.race) {
        /* Flip one byte of the value between 'v' and LF while the host decodes. */
        volatile uint8_t *b = late.spans[0] + LATE_VALUE_LEN / 2; /* every store happens */
        for (int n = 0; n < 4000000; n++) {
            *b = (n & 1) ? '\n' : 'v';
        }
        *b = 'v';
    } else {
        for (int waited = 0; !atomic_load(&late_go) && waited < 10000; waited++) {
            sleep_ms(1);
        }
        late_scribble();
    }
    atomic_store(&late_go, 0);
    atomic_store(&late_done, 1);
    atomic_store(&late_busy, 0);
    return NULL;
}

/* Called by the test once the host has validated the batch: the late writer writes CR/LF now.
 * Returns 1 once it has written (within 5 s), else 0. */
int hostile_late_write(void) {
    atomic_store(&late_go, 1);
    for (int waited = 0; waited < 5000; waited++) {
        if (atomic_exchange(&late_done, 0)) {
            return 1;
        }
        sleep_ms(1);
    }
    return 0;
}

/* Writes a local reply (or, with set_header, a request header) whose long value and body the
 * late writer overwrites; returns 0 if a late writer is still running or out is too small. */
static int late_records(WeftBuf *out, int set_header) {
    static uint8_t value[LATE_VALUE_LEN], body[LATE_BODY_LEN];
    memset(value, 'v', sizeof value);
    memset(body, 'b', sizeof body);
    late.spans[0] = late.spans[1] = late.spans[2] = NULL;
    uint32_t at = out->len;
    if (set_header) {
        if (!put(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-long", 6, value, LATE_VALUE_LEN)) {
            return 0;
        }
        late.spans[0] = out->ptr + at + sizeof(WeftMutation) + 6;
        late.lens[0] = LATE_VALUE_LEN;
        return 1;
    }
    if (!put(out, WEFT_MUTATION_OP_LOCAL_REPLY, 200, body, LATE_BODY_LEN, "", 0)) {
        return 0;
    }
    late.spans[2] = out->ptr + at + sizeof(WeftMutation);
    late.lens[2] = LATE_BODY_LEN;
    at = out->len;
    if (!put(out, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, 0, "x-long", 6, value, LATE_VALUE_LEN)) {
        return 0;
    }
    late.spans[0] = out->ptr + at + sizeof(WeftMutation) + 6;
    late.lens[0] = LATE_VALUE_LEN;
    at = out->len;
    if (!PUT(out, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, 0, "x-short", "short-value")) {
        return 0;
    }
    late.spans[1] = out->ptr + at + sizeof(WeftMutation) + 7;
    late.lens[1] = 11;
    return 1;
}

static uint32_t late_write(const char *mode, uint64_t instance, const WeftRequestView *view, WeftBuf *out) {
    int expected = 0;
    if (host == NULL || !atomic_compare_exchange_strong(&late_busy, &expected, 1)) {
        return WEFT_RESULT_INTERNAL;
    }
    int pending = strcmp(mode, "late-write-pending") == 0;
    late.complete_first = pending;
    late.race = strcmp(mode, "late-write-race") == 0;
    late.instance = instance;
    late.slot = view->slot;
    late.call = view->call;
    WeftBuf mine = {out->ptr, out->cap, 0};
    if (!late_records(&mine, strcmp(mode, "late-write-set") == 0)) {
        atomic_store(&late_busy, 0);
        return WEFT_RESULT_MUTATION_OVERFLOW;
    }
    late.out_len = mine.len;
    if (!pending) {
        out->len = mine.len;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, late_main, NULL) != 0) {
        atomic_store(&late_busy, 0);
        return WEFT_RESULT_INTERNAL;
    }
    pthread_detach(t);
    while (late.race && !atomic_exchange(&late_started, 0)) {
        /* the decode must overlap the writes */
    }
    return pending ? WEFT_RESULT_PENDING : WEFT_RESULT_OK;
}

static uint32_t m_stall(WeftBuf *out) {
    sleep_ms(600); /* inline, on the host's thread: what `blocking: true` is for */
    PUT(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-ok", "1");
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
    {"stall", m_stall},
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

/* ---- worker rings (HOSTILE_RINGS) ----
 *
 * attach_worker refuses the next N rings after a hostile-blocking instance was created with the
 * config "fail-attach-N" (N: 1..9; any other config: none). Each ring gets a worker thread that polls the ring (no futex: this
 * is not about speed). Per job, the x-hostile header of its view says what the worker does
 * after (or before) completing it; every job answers the request header x-hostile-ring with the
 * ring's id, so a test sees which ring served a call:
 *   ring-exit-early          complete, then worker_exit_ring(ring, id) on the open ring and leave
 *   ring-exit-early-legacy   complete, then worker_exit(ring) on the open ring and leave
 *   ring-stale-exit          worker_exit(ring) and go on serving: what a late call for an
 *                            earlier ring at the same address looks like
 *   ring-stale-exit-id       worker_exit_ring(ring, id + 1) and go on serving (its return code
 *                            in x-hostile-exit-rc)
 * Once `closed` is set and the ring drained, the worker calls worker_exit_ring and leaves.
 */
static atomic_int attach_fail_left;

struct hostile_worker {
    uint8_t *ring;
    uint64_t ring_id;
    uint32_t mask;
    const uint8_t *arena;
    uint32_t slot_size, slot_count;
};

/* What the worker does after a job: 0 go on, 1 leave (it called an exit function). */
static int ring_job(struct hostile_worker *w, const WeftJob *job) {
    char mode[64] = "";
    uint8_t *out = NULL;
    uint32_t cap = 0, result = WEFT_RESULT_OK;
    const WeftRequestView *view = NULL;
    if (job->slot < w->slot_count && job->out_slot < w->slot_count && job->out_off % 8 == 0 &&
        job->out_off <= w->slot_size) {
        view = (const WeftRequestView *)(const void *)(w->arena + (size_t)job->slot * w->slot_size);
        out = (uint8_t *)(uintptr_t)(w->arena + (size_t)job->out_slot * w->slot_size + job->out_off);
        cap = w->slot_size - job->out_off;
        read_mode(view, mode, sizeof mode);
    } else {
        result = WEFT_RESULT_INVALID_ARGUMENT;
    }
    char id[24], rc[16] = "";
    snprintf(id, sizeof id, "%llu", (unsigned long long)w->ring_id);
    if (strcmp(mode, "ring-stale-exit") == 0) {
        host->worker_exit(w->ring);
    } else if (strcmp(mode, "ring-stale-exit-id") == 0) {
        snprintf(rc, sizeof rc, "%u", host->worker_exit_ring(w->ring, w->ring_id + 1));
    }
    WeftBuf b = {out, cap, 0};
    if (out != NULL && job->phase == WEFT_PHASE_REQUEST_HEADERS) {
        PUT(&b, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-ring", id);
        if (rc[0] != '\0') {
            PUT(&b, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-hostile-exit-rc", rc);
        }
    }
    host->complete(job->instance, job->slot, job->call, result, b.len);
    if (strcmp(mode, "ring-exit-early") == 0 && job->phase == WEFT_PHASE_REQUEST_HEADERS) {
        host->worker_exit_ring(w->ring, w->ring_id);
        return 1;
    }
    if (strcmp(mode, "ring-exit-early-legacy") == 0 && job->phase == WEFT_PHASE_REQUEST_HEADERS) {
        host->worker_exit(w->ring);
        return 1;
    }
    return 0;
}

static void *ring_main(void *arg) {
    struct hostile_worker *w = arg;
    _Atomic uint32_t *closed = (_Atomic uint32_t *)(void *)(w->ring + WEFT_RING_OFFSET_CLOSED);
    _Atomic uint32_t *tail_w = (_Atomic uint32_t *)(void *)(w->ring + WEFT_RING_OFFSET_TAIL);
    _Atomic uint32_t *head_w = (_Atomic uint32_t *)(void *)(w->ring + WEFT_RING_OFFSET_HEAD);
    uint32_t head = atomic_load_explicit(head_w, memory_order_relaxed);
    for (;;) {
        uint32_t tail = atomic_load_explicit(tail_w, memory_order_acquire);
        if (head != tail) {
            WeftJob job;
            memcpy(&job, w->ring + WEFT_RING_OFFSET_DESCRIPTORS + (size_t)(head & w->mask) * sizeof job, sizeof job);
            atomic_store_explicit(head_w, ++head, memory_order_release);
            if (ring_job(w, &job)) {
                free(w);
                return NULL;
            }
            continue;
        }
        if (atomic_load_explicit(closed, memory_order_acquire) &&
            atomic_load_explicit(tail_w, memory_order_acquire) == head) {
            break;
        }
        sleep_ms(1);
    }
    host->worker_exit_ring(w->ring, w->ring_id);
    free(w);
    return NULL;
}

static uint32_t hostile_attach(void *ring, size_t ring_len, const uint8_t *arena, uint32_t slot_size,
                               uint32_t slot_count) {
    int left = atomic_load(&attach_fail_left);
    while (left > 0 && !atomic_compare_exchange_weak(&attach_fail_left, &left, left - 1)) {
    }
    if (left > 0) {
        return WEFT_RESULT_INTERNAL; /* refused: no worker started */
    }
    uint32_t capacity;
    struct hostile_worker *w = malloc(sizeof *w);
    if (w == NULL || ring == NULL || ring_len < WEFT_RING_OFFSET_DESCRIPTORS || host->size < sizeof(WeftHostApi)) {
        free(w);
        return WEFT_RESULT_INVALID_ARGUMENT;
    }
    w->ring = ring;
    memcpy(&capacity, w->ring + WEFT_RING_OFFSET_CAPACITY, 4);
    memcpy(&w->ring_id, w->ring + WEFT_RING_OFFSET_RING_ID, 8);
    w->mask = capacity - 1;
    w->arena = arena;
    w->slot_size = slot_size;
    w->slot_count = slot_count;
    pthread_t t;
    if (pthread_create(&t, NULL, ring_main, w) != 0) {
        free(w);
        return WEFT_RESULT_INTERNAL;
    }
    pthread_detach(t);
    return WEFT_RESULT_OK;
}

static uint32_t hostile_init(uint32_t plugin, uint64_t instance, const uint8_t *config, size_t config_len,
                             uint32_t slot_count, WeftBuf *err) {
    (void)plugin;
    (void)instance;
    (void)slot_count;
    if (plugin == 2) {
        int fail = config_len == 15 && memcmp(config, "\"fail-attach-", 13) == 0 && config[13] >= '1' &&
                   config[13] <= '9';
        atomic_store(&attach_fail_left, fail ? config[13] - '0' : 0);
    }
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
    if (strncmp(mode, "late-write", 10) == 0) {
        return late_write(mode, instance, view, out);
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

static const char name2[] = "hostile-blocking";

static const WeftPluginInfo plugins[] = {
    {(const uint8_t *)name0, sizeof name0 - 1,
     WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS | WEFT_PHASE_MASK_LOG, 0},
    {(const uint8_t *)name1, sizeof name1 - 1, WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS, 0},
    {(const uint8_t *)name2, sizeof name2 - 1, WEFT_PHASE_MASK_REQUEST_HEADERS, WEFT_PLUGIN_FLAG_BLOCKING},
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
    .plugin_count = HOSTILE_RINGS ? 3 : 2,
    .plugins = plugins,
    .init = hostile_init,
    .on_phase = hostile_phase,
    .thread_start = NULL,
    .shutdown = NULL,
    .attach_worker = HOSTILE_RINGS ? hostile_attach : NULL,
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
