/*
 * async_plugin: two weft plugins in plain C11 (plus POSIX threads and the Linux futex system
 * call), written against include/weft.h only, that exercise the asynchronous parts of the ABI.
 * They double as the reference for a C author; docs/abi.md has the rules.
 *
 * "async-delay" (request and response headers): answers WEFT_RESULT_PENDING and finishes later
 *   with host->complete(), from another thread.
 *     request header x-delay-ms: N    request phase: pend, then complete after N ms with the
 *                                     mutation `x-async: done` (request header). N = 0 completes
 *                                     from the calling thread *before* returning PENDING (the
 *                                     host must cope with a completion that beats the answer).
 *                                     Without the header the call is answered inline with
 *                                     `x-async: inline`.
 *     request header x-resp-delay-ms  the same in the response phase, with `x-async-resp: done`.
 *     request header x-async-fail     complete with WEFT_RESULT_HANDLER_FAILED instead.
 *     request header x-reply-bytes: N request phase: instead of `x-async`, a local reply (200) with
 *                                     N bytes of body ('a'..'z' repeated) and a 2000-byte header
 *                                     `x-long`, written into the call's out buffer (inline, at
 *                                     completion, or by the blocking plugin's worker alike).
 *     request header x-complete: spin complete at once from a helper thread that spins on its
 *                                     queue (no sleep, no wake-up): the cost of the hand-off
 *                                     itself, for the benches. Takes precedence over x-delay-ms.
 *   The mutation records are written at completion time into the `out` buffer the call was given
 *   (out->ptr / out->cap stay valid and reserved until complete()).
 *
 * "async-log" (log phase only): request header x-log-delay-ms: N pends the log call and completes
 *   it after N ms (no records: the log phase changes nothing). The host's log thread must not
 *   wait for it before going on with other requests' log phases.
 *
 * "blocking" (request and response headers, log), flagged WEFT_PLUGIN_FLAG_BLOCKING: the host
 *   never calls it inline; it posts each call as a WeftJob to a worker ring attached with
 *   attach_worker(). Each ring gets one worker thread that consumes it with the documented
 *   protocol (docs/abi.md, "Worker rings"): acquire loads of `tail`, a release store of `head`,
 *   spin, then park with the `waiting` flag, a sequentially consistent fence, a re-check and
 *   FUTEX_WAIT; when `closed` is set and the ring drained it calls
 *   host->worker_exit_ring(ring, ring_id), naming the ring by the id its header held at attach.
 *     request header x-block-ms: N    the job sleeps N ms in the worker (a blocking handler).
 *   Results: request phase `x-blocking: done`, response phase `x-blocking-resp: done`.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"

static const WeftHostApi *host;

static void host_log(uint32_t level, uint64_t instance, const char *msg) {
    if (host != NULL && host->log != NULL) {
        host->log(level, instance, (const uint8_t *)msg, strlen(msg));
    }
}

/* ---- reading the view (bounds-checked: every WeftStr against view->size) ---- */

static int find_header(const WeftRequestView *view, const char *name, const uint8_t **value, uint32_t *len) {
    const uint8_t *base = (const uint8_t *)view;
    size_t nlen = strlen(name);
    if ((uint64_t)view->req_headers_off + (uint64_t)view->req_header_count * sizeof(WeftHeader) > view->size ||
        view->req_headers_off % 4 != 0) {
        return 0;
    }
    for (uint32_t i = 0; i < view->req_header_count; i++) {
        WeftHeader h;
        memcpy(&h, base + view->req_headers_off + (size_t)i * sizeof h, sizeof h);
        if ((uint64_t)h.name.off + h.name.len > view->size || (uint64_t)h.value.off + h.value.len > view->size) {
            return 0;
        }
        if (h.name.len == nlen && memcmp(base + h.name.off, name, nlen) == 0) {
            *value = base + h.value.off;
            *len = h.value.len;
            return 1;
        }
    }
    return 0;
}

/* The decimal value of a header: -1 when absent or not a number. */
static long header_number(const WeftRequestView *view, const char *name) {
    const uint8_t *v;
    uint32_t len;
    if (!find_header(view, name, &v, &len) || len == 0 || len > 9) {
        return -1;
    }
    long n = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return -1;
        }
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* Appends one mutation record at buf[*len], within cap. Returns 0 when it does not fit. */
static int put(uint8_t *buf, uint32_t cap, uint32_t *len, uint32_t op, const char *a, const char *b) {
    WeftMutation rec = {op, 0, (uint32_t)strlen(a), (uint32_t)strlen(b)};
    uint32_t need = (uint32_t)sizeof rec + ((rec.a_len + rec.b_len + 3u) & ~3u);
    if (buf == NULL || cap < *len || cap - *len < need) {
        return 0;
    }
    uint8_t *p = buf + *len;
    memset(p, 0, need);
    memcpy(p, &rec, sizeof rec);
    memcpy(p + sizeof rec, a, rec.a_len);
    memcpy(p + sizeof rec + rec.a_len, b, rec.b_len);
    *len += need;
    return 1;
}

/* Appends a local reply (200) with n body bytes and a 2000-byte `x-long` header. */
static int put_reply(uint8_t *buf, uint32_t cap, uint32_t *len, uint32_t n) {
    static char long_value[2001];
    WeftMutation reply = {WEFT_MUTATION_OP_LOCAL_REPLY, 200, n, 0};
    uint32_t need = (uint32_t)sizeof reply + ((n + 3u) & ~3u);
    if (buf == NULL || n > cap || cap < *len || cap - *len < need) {
        return 0;
    }
    uint8_t *p = buf + *len;
    memset(p, 0, need);
    memcpy(p, &reply, sizeof reply);
    for (uint32_t i = 0; i < n; i++) {
        p[sizeof reply + i] = (uint8_t)('a' + i % 26);
    }
    *len += need;
    if (long_value[0] == 0) {
        memset(long_value, 'v', 2000); /* idempotent, so a racing first use is harmless */
    }
    return put(buf, cap, len, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, "x-long", long_value);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* ---- async-delay: pending calls completed by a timer thread ---- */

struct pending {
    uint64_t due_ns;
    uint64_t instance;
    uint32_t slot, call, phase, result;
    long reply_bytes; /* x-reply-bytes, or -1 */
    uint8_t *out;
    uint32_t out_cap;
};

/* Writes the call's records into its out buffer and completes it. Runs on the timer thread (or
 * the calling thread for x-delay-ms: 0). */
static void finish(const struct pending *p) {
    uint32_t len = 0;
    if (p->result == WEFT_RESULT_OK && p->phase != WEFT_PHASE_LOG) {
        if (p->phase == WEFT_PHASE_REQUEST_HEADERS && p->reply_bytes >= 0) {
            put_reply(p->out, p->out_cap, &len, (uint32_t)p->reply_bytes);
        } else if (p->phase == WEFT_PHASE_REQUEST_HEADERS) {
            put(p->out, p->out_cap, &len, WEFT_MUTATION_OP_SET_REQUEST_HEADER, "x-async", "done");
        } else {
            put(p->out, p->out_cap, &len, WEFT_MUTATION_OP_SET_RESPONSE_HEADER, "x-async-resp", "done");
        }
    }
    uint32_t rc = host->complete(p->instance, p->slot, p->call, p->result, len);
    /* CANCELLED: the host stopped waiting (deadline, client gone); not an error of ours. */
    if (rc != WEFT_RESULT_OK && rc != WEFT_RESULT_CANCELLED) {
        host_log(WEFT_LOG_ERROR, p->instance, "async-delay: complete() refused a completion");
    }
}

/* A binary min-heap of pending calls by due time, served by one timer thread. */
#define HEAP_CAP (1u << 16)
static struct pending heap[HEAP_CAP];
static uint32_t heap_len;
static pthread_mutex_t heap_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t heap_cv;
static pthread_once_t timer_once = PTHREAD_ONCE_INIT;
static int timer_ok;

static void heap_push(const struct pending *p) {
    uint32_t i = heap_len++;
    heap[i] = *p;
    while (i > 0 && heap[(i - 1) / 2].due_ns > heap[i].due_ns) {
        struct pending t = heap[i];
        heap[i] = heap[(i - 1) / 2];
        heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static struct pending heap_pop(void) {
    struct pending top = heap[0];
    heap[0] = heap[--heap_len];
    uint32_t i = 0;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && heap[l].due_ns < heap[m].due_ns) {
            m = l;
        }
        if (r < heap_len && heap[r].due_ns < heap[m].due_ns) {
            m = r;
        }
        if (m == i) {
            return top;
        }
        struct pending t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
}

static void *timer_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&heap_mu);
    for (;;) {
        if (heap_len == 0) {
            pthread_cond_wait(&heap_cv, &heap_mu);
            continue;
        }
        uint64_t now = now_ns();
        if (heap[0].due_ns > now) {
            struct timespec ts;
            uint64_t due = heap[0].due_ns;
            ts.tv_sec = (time_t)(due / 1000000000u);
            ts.tv_nsec = (long)(due % 1000000000u);
            pthread_cond_timedwait(&heap_cv, &heap_mu, &ts);
            continue;
        }
        struct pending p = heap_pop();
        pthread_mutex_unlock(&heap_mu);
        finish(&p);
        pthread_mutex_lock(&heap_mu);
    }
    return NULL;
}

static void timer_start(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&heap_cv, &attr);
    pthread_condattr_destroy(&attr);
    pthread_t t;
    if (pthread_create(&t, NULL, timer_main, NULL) == 0) {
        pthread_detach(t);
        timer_ok = 1;
    }
}

/* The express lane (x-complete: spin): a queue served by a thread that spins while it is busy
 * and naps only after a long idle stretch. */
#define EXPRESS_CAP 4096u
static struct pending express_q[EXPRESS_CAP];
static uint32_t express_len;
static _Atomic uint32_t express_count;
static pthread_mutex_t express_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t express_once = PTHREAD_ONCE_INIT;
static int express_ok;

static void *express_main(void *arg) {
    (void)arg;
    struct pending batch[64];
    unsigned idle = 0;
    for (;;) {
        if (atomic_load_explicit(&express_count, memory_order_acquire) == 0) {
            if (++idle > (1u << 20)) {
                sleep_ms(1);
                idle = 0;
            }
            continue;
        }
        idle = 0;
        pthread_mutex_lock(&express_mu);
        uint32_t n = express_len < 64 ? express_len : 64;
        memcpy(batch, express_q + (express_len - n), n * sizeof batch[0]);
        express_len -= n;
        atomic_fetch_sub_explicit(&express_count, n, memory_order_relaxed);
        pthread_mutex_unlock(&express_mu);
        for (uint32_t i = 0; i < n; i++) {
            finish(&batch[i]);
        }
    }
    return NULL;
}

static void express_start(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, express_main, NULL) == 0) {
        pthread_detach(t);
        express_ok = 1;
    }
}

static int express_push(const struct pending *p) {
    pthread_once(&express_once, express_start);
    pthread_mutex_lock(&express_mu);
    int ok = express_ok && express_len < EXPRESS_CAP;
    if (ok) {
        express_q[express_len++] = *p;
        atomic_fetch_add_explicit(&express_count, 1, memory_order_release);
    }
    pthread_mutex_unlock(&express_mu);
    return ok;
}

static uint32_t delay_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
    const char *delay_header = phase == WEFT_PHASE_REQUEST_HEADERS    ? "x-delay-ms"
                               : phase == WEFT_PHASE_RESPONSE_HEADERS ? "x-resp-delay-ms"
                                                                      : "x-log-delay-ms";
    long delay = header_number(view, delay_header);
    const uint8_t *how;
    uint32_t how_len;
    int express = phase == WEFT_PHASE_REQUEST_HEADERS && find_header(view, "x-complete", &how, &how_len) &&
                  how_len == 4 && memcmp(how, "spin", 4) == 0;
    if (express) {
        delay = 0;
    }
    long reply_bytes = phase == WEFT_PHASE_REQUEST_HEADERS ? header_number(view, "x-reply-bytes") : -1;
    if (delay < 0) {
        int ok = phase != WEFT_PHASE_REQUEST_HEADERS ||
                 (reply_bytes >= 0
                      ? put_reply(out->ptr, out->cap, &out->len, (uint32_t)reply_bytes)
                      : put(out->ptr, out->cap, &out->len, WEFT_MUTATION_OP_SET_REQUEST_HEADER, "x-async", "inline"));
        return ok ? WEFT_RESULT_OK : WEFT_RESULT_MUTATION_OVERFLOW;
    }
    const uint8_t *v;
    uint32_t vlen;
    struct pending p = {
        .due_ns = now_ns() + (uint64_t)delay * 1000000u,
        .instance = instance,
        .slot = view->slot,
        .call = view->call,
        .phase = phase,
        .result = find_header(view, "x-async-fail", &v, &vlen) ? WEFT_RESULT_HANDLER_FAILED : WEFT_RESULT_OK,
        .reply_bytes = reply_bytes,
        /* The out buffer stays valid and ours until complete(); the WeftBuf struct does not. */
        .out = out->ptr,
        .out_cap = out->cap,
    };
    if (express) {
        if (!express_push(&p)) {
            finish(&p);
        }
        return WEFT_RESULT_PENDING;
    }
    if (delay == 0) {
        /* Complete before even answering PENDING: the host must find the completion anyway. */
        finish(&p);
        return WEFT_RESULT_PENDING;
    }
    pthread_once(&timer_once, timer_start);
    pthread_mutex_lock(&heap_mu);
    int queued = timer_ok && heap_len < HEAP_CAP;
    if (queued) {
        heap_push(&p);
        pthread_cond_signal(&heap_cv);
    }
    pthread_mutex_unlock(&heap_mu);
    if (!queued) {
        finish(&p);
    }
    return WEFT_RESULT_PENDING;
}

/* ---- blocking: jobs from worker rings ---- */

/* The ring layout is in weft.h (WEFT_RING_*); only the spin count is this plugin's choice. */
enum { SPINS = 1 << 12 };

struct worker {
    uint8_t *ring;
    uint64_t ring_id;
    uint32_t mask;
    const uint8_t *arena;
    uint32_t slot_size, slot_count;
};

static _Atomic uint32_t *word(uint8_t *ring, size_t off) {
    return (_Atomic uint32_t *)(void *)(ring + off);
}

static void run_job(const struct worker *w, const WeftJob *job) {
    uint32_t len = 0, result = WEFT_RESULT_OK;
    if (job->slot >= w->slot_count) {
        host_log(WEFT_LOG_ERROR, job->instance, "blocking: job names a slot out of range");
        host->complete(job->instance, job->slot, job->call, WEFT_RESULT_INVALID_ARGUMENT, 0);
        return;
    }
    const WeftRequestView *view = (const WeftRequestView *)(const void *)(w->arena + (size_t)job->slot * w->slot_size);
    /* The output location the host named: out_off bytes into slot out_slot, to the end of it. */
    uint8_t *out = NULL;
    uint32_t cap = 0;
    if (job->out_slot < w->slot_count && job->out_off % 8 == 0 && job->out_off <= w->slot_size) {
        out = (uint8_t *)(uintptr_t)(w->arena + (size_t)job->out_slot * w->slot_size + job->out_off);
        cap = w->slot_size - job->out_off;
    }
    if (view->call != job->call || view->slot != job->slot || out == NULL ||
        (job->out_slot == job->slot && job->out_off < view->size)) {
        host_log(WEFT_LOG_ERROR, job->instance, "blocking: view and job disagree, or the output location is invalid");
        result = WEFT_RESULT_INVALID_ARGUMENT;
    } else if (job->phase != WEFT_PHASE_LOG) {
        long block = header_number(view, "x-block-ms");
        if (block > 0) {
            sleep_ms(block); /* the point of a worker: blocking here stalls no host thread */
        }
        long reply_bytes = header_number(view, "x-reply-bytes");
        int ok = job->phase != WEFT_PHASE_REQUEST_HEADERS
                     ? put(out, cap, &len, WEFT_MUTATION_OP_SET_RESPONSE_HEADER, "x-blocking-resp", "done")
                 : reply_bytes >= 0 ? put_reply(out, cap, &len, (uint32_t)reply_bytes)
                                    : put(out, cap, &len, WEFT_MUTATION_OP_SET_REQUEST_HEADER, "x-blocking", "done");
        if (!ok) {
            result = WEFT_RESULT_MUTATION_OVERFLOW;
        }
    }
    uint32_t rc = host->complete(job->instance, job->slot, job->call, result, len);
    if (rc != WEFT_RESULT_OK && rc != WEFT_RESULT_CANCELLED) {
        host_log(WEFT_LOG_ERROR, job->instance, "blocking: complete() refused a job completion");
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    _Atomic uint32_t *closed = word(w->ring, WEFT_RING_OFFSET_CLOSED);
    _Atomic uint32_t *tail_w = word(w->ring, WEFT_RING_OFFSET_TAIL);
    _Atomic uint32_t *head_w = word(w->ring, WEFT_RING_OFFSET_HEAD);
    _Atomic uint32_t *waiting = word(w->ring, WEFT_RING_OFFSET_WAITING);
    const uint8_t *descs = w->ring + WEFT_RING_OFFSET_DESCRIPTORS;
    uint32_t head = atomic_load_explicit(head_w, memory_order_relaxed);
    for (;;) {
        /* Acquire: the descriptors published with this tail are visible. */
        uint32_t tail = atomic_load_explicit(tail_w, memory_order_acquire);
        if (head != tail) {
            WeftJob job;
            memcpy(&job, descs + (size_t)(head & w->mask) * sizeof job, sizeof job);
            head++;
            /* Release: our read of the entry happens-before the producer reuses it. */
            atomic_store_explicit(head_w, head, memory_order_release);
            run_job(w, &job);
            continue;
        }
        int found = 0;
        for (int i = 0; i < SPINS && !found; i++) {
            found = atomic_load_explicit(tail_w, memory_order_acquire) != head;
        }
        if (found) {
            continue;
        }
        if (atomic_load_explicit(closed, memory_order_acquire)) {
            /* The producer published everything before closing: one last look. */
            if (atomic_load_explicit(tail_w, memory_order_acquire) != head) {
                continue;
            }
            break;
        }
        /* Park: flag, full fence, re-check, then sleep while the flag is still set. */
        atomic_store_explicit(waiting, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(tail_w, memory_order_acquire) != head ||
            atomic_load_explicit(closed, memory_order_acquire)) {
            atomic_store_explicit(waiting, 0, memory_order_relaxed);
            continue;
        }
        while (atomic_load_explicit(waiting, memory_order_acquire) == 1) {
            /* Process-shared futex (no FUTEX_PRIVATE_FLAG); returns at once if the word is not 1. */
            syscall(SYS_futex, (uint32_t *)(void *)waiting, FUTEX_WAIT, 1u, NULL, NULL, 0);
        }
    }
    host->worker_exit_ring(w->ring, w->ring_id);
    free(w);
    return NULL;
}

static uint32_t attach_worker(void *ring, size_t ring_len, const uint8_t *arena, uint32_t slot_size,
                              uint32_t slot_count) {
    uint8_t *r = ring;
    uint32_t magic, version, capacity, desc_size;
    if (r == NULL || arena == NULL || ring_len < WEFT_RING_OFFSET_DESCRIPTORS) {
        return WEFT_RESULT_INVALID_ARGUMENT;
    }
    memcpy(&magic, r + WEFT_RING_OFFSET_MAGIC, 4);
    memcpy(&version, r + WEFT_RING_OFFSET_VERSION, 4);
    memcpy(&capacity, r + WEFT_RING_OFFSET_CAPACITY, 4);
    memcpy(&desc_size, r + WEFT_RING_OFFSET_DESC_SIZE, 4);
    uint64_t ring_id;
    memcpy(&ring_id, r + WEFT_RING_OFFSET_RING_ID, 8);
    if (magic != WEFT_RING_MAGIC || version != WEFT_RING_VERSION || desc_size != WEFT_RING_DESC_SIZE ||
        capacity < 2 || capacity > WEFT_RING_MAX_CAPACITY || (capacity & (capacity - 1)) != 0 ||
        ring_len < WEFT_RING_OFFSET_DESCRIPTORS + (size_t)capacity * WEFT_RING_DESC_SIZE) {
        return WEFT_RESULT_ABI_MISMATCH;
    }
    struct worker *w = malloc(sizeof *w);
    if (w == NULL) {
        return WEFT_RESULT_INTERNAL;
    }
    *w = (struct worker){r, ring_id, capacity - 1, arena, slot_size, slot_count};
    pthread_t t;
    if (pthread_create(&t, NULL, worker_main, w) != 0) {
        free(w);
        return WEFT_RESULT_INTERNAL;
    }
    pthread_detach(t);
    return WEFT_RESULT_OK;
}

/* ---- the descriptor ---- */

static uint32_t plugin_init(uint32_t plugin, uint64_t instance, const uint8_t *config, size_t config_len,
                            uint32_t slot_count, WeftBuf *err) {
    (void)instance;
    (void)config;
    (void)config_len;
    (void)slot_count;
    (void)err;
    return plugin <= 2 ? WEFT_RESULT_OK : WEFT_RESULT_UNKNOWN_PLUGIN;
}

static uint32_t plugin_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
    if (view == NULL || out == NULL || view->size < sizeof(WeftRequestView)) {
        return WEFT_RESULT_INVALID_ARGUMENT;
    }
    if (phase == WEFT_PHASE_REQUEST_HEADERS || phase == WEFT_PHASE_RESPONSE_HEADERS || phase == WEFT_PHASE_LOG) {
        return delay_phase(instance, phase, view, out);
    }
    /* The blocking plugin is never called here (its calls go to the worker rings). */
    return WEFT_RESULT_OK;
}

static const char name_delay[] = "async-delay";
static const char name_blocking[] = "blocking";
static const char name_log[] = "async-log";
static const WeftPluginInfo plugins[] = {
    {(const uint8_t *)name_delay, sizeof name_delay - 1,
     WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS, 0},
    {(const uint8_t *)name_blocking, sizeof name_blocking - 1,
     WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS | WEFT_PHASE_MASK_LOG,
     WEFT_PLUGIN_FLAG_BLOCKING},
    {(const uint8_t *)name_log, sizeof name_log - 1, WEFT_PHASE_MASK_LOG, 0},
};

static const WeftPluginDescriptor descriptor = {
    .abi_version = WEFT_ABI_VERSION,
    .descriptor_size = sizeof(WeftPluginDescriptor),
    .request_view_size = sizeof(WeftRequestView),
    .mutation_size = sizeof(WeftMutation),
    .host_api_size = sizeof(WeftHostApi),
    .runtime = WEFT_RUNTIME_NATIVE,
    .runtime_version = (const uint8_t *)"c11-async",
    .runtime_version_len = 9,
    .plugin_count = 3,
    .plugins = plugins,
    .init = plugin_init,
    .on_phase = plugin_phase,
    .thread_start = NULL,
    .shutdown = NULL,
    .attach_worker = attach_worker,
};

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *api) {
    /* complete() and worker_exit_ring() are needed: refuse to run on a host too old to have them. */
    if (api == NULL || api->size < sizeof(WeftHostApi) || api->complete == NULL || api->worker_exit_ring == NULL) {
        return NULL;
    }
    host = api;
    return &descriptor;
}
