/*
 * c-header-stamp: a weft plugin in plain C11, written against include/weft.h only.
 *
 *   request headers:  adds `<header>: <value>` (and x-c-request-id) to the request, or, when the
 *                     path equals `reply_path`, answers locally with 200 and a text body.
 *   response headers: adds `<header>: <value>` and `x-c-saw-path: <request path>` to the response.
 *   log:              logs one line per request through the host's log function.
 *   shutdown:         frees the instance and logs "c-header-stamp: instance shut down".
 *   view headers:     none (it reads no header line), declared in the descriptor.
 *
 * Config (JSON object, every key optional):
 *   {"header": "x-c-stamp", "value": "from-c", "reply_path": "/c-hello"}
 *
 * It shows every rule of docs/abi.md a C author must follow: bounds-check every WeftStr against
 * view->size, write mutation records only within out->cap, keep no pointer into the view after
 * the call, never block, return a WeftResult.
 */
#include <stdlib.h>
#include <string.h>

#include "weft.h"

#define MAX_INSTANCES 64
#define MAX_TEXT 128

struct instance {
    int used;
    uint64_t id;
    char header[MAX_TEXT];
    char value[MAX_TEXT];
    char reply_path[MAX_TEXT];
    /* The lengths of header, value and reply_path, measured once at init rather than per call. */
    uint32_t header_len, value_len, reply_path_len;
};

static const WeftHostApi *host;
static struct instance instances[MAX_INSTANCES];

static void host_log_bytes(uint32_t level, uint64_t instance, const char *msg, size_t len) {
    if (host != NULL && host->log != NULL) {
        host->log(level, instance, (const uint8_t *)msg, len);
    }
}

static void host_log(uint32_t level, uint64_t instance, const char *msg) {
    host_log_bytes(level, instance, msg, strlen(msg));
}

/* Finds "key": "text" in a flat JSON object and copies text (no escapes) into out. Returns 1 when
 * found, 0 when absent, -1 when malformed or too long. */
static int json_string(const uint8_t *json, size_t len, const char *key, char *out, size_t cap) {
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen + 2 <= len; i++) {
        if (json[i] != '"' || memcmp(json + i + 1, key, klen) != 0 || json[i + 1 + klen] != '"') {
            continue;
        }
        size_t p = i + klen + 2;
        while (p < len && (json[p] == ' ' || json[p] == ':' || json[p] == '\t' || json[p] == '\n')) {
            p++;
        }
        if (p >= len || json[p] != '"') {
            return -1;
        }
        p++;
        size_t n = 0;
        while (p < len && json[p] != '"') {
            if (json[p] == '\\' || json[p] < 0x20 || n + 1 >= cap) {
                return -1;
            }
            out[n++] = (char)json[p++];
        }
        if (p >= len) {
            return -1;
        }
        out[n] = '\0';
        return 1;
    }
    return 0;
}

static void set_error(WeftBuf *err, const char *msg) {
    if (err == NULL || err->ptr == NULL) {
        return;
    }
    size_t n = strlen(msg);
    if (n > err->cap) {
        n = err->cap;
    }
    memcpy(err->ptr, msg, n);
    err->len = (uint32_t)n;
}

static uint32_t stamp_init(uint32_t plugin, uint64_t instance, const uint8_t *config, size_t config_len,
                           uint32_t slot_count, WeftBuf *err) {
    (void)slot_count;
    if (plugin != 0) {
        return WEFT_RESULT_UNKNOWN_PLUGIN;
    }
    struct instance *inst = NULL;
    for (size_t i = 0; i < MAX_INSTANCES; i++) {
        if (!instances[i].used) {
            inst = &instances[i];
            break;
        }
    }
    if (inst == NULL) {
        set_error(err, "c-header-stamp: too many instances");
        return WEFT_RESULT_INIT_FAILED;
    }
    memset(inst, 0, sizeof *inst);
    strcpy(inst->header, "x-c-stamp");
    strcpy(inst->value, "from-c");
    if (config_len > 0) {
        if (json_string(config, config_len, "header", inst->header, sizeof inst->header) < 0 ||
            json_string(config, config_len, "value", inst->value, sizeof inst->value) < 0 ||
            json_string(config, config_len, "reply_path", inst->reply_path, sizeof inst->reply_path) < 0) {
            set_error(err, "c-header-stamp: config values must be short JSON strings without escapes");
            return WEFT_RESULT_INIT_FAILED;
        }
    }
    inst->header_len = (uint32_t)strlen(inst->header);
    inst->value_len = (uint32_t)strlen(inst->value);
    inst->reply_path_len = (uint32_t)strlen(inst->reply_path);
    inst->id = instance;
    inst->used = 1;
    return WEFT_RESULT_OK;
}

static struct instance *find(uint64_t id) {
    for (size_t i = 0; i < MAX_INSTANCES; i++) {
        if (instances[i].used && instances[i].id == id) {
            return &instances[i];
        }
    }
    return NULL;
}

/* Returns a pointer to the bytes of s, or NULL when s is outside the view. */
static const uint8_t *view_str(const WeftRequestView *view, WeftStr s) {
    if ((uint64_t)s.off + s.len > view->size) {
        return NULL;
    }
    return (const uint8_t *)view + s.off;
}

/* Appends one mutation record; returns 0 when it does not fit. */
static int put_record(WeftBuf *out, uint32_t op, uint32_t arg, const void *a, uint32_t a_len, const void *b,
                      uint32_t b_len) {
    uint64_t need = sizeof(WeftMutation) + (((uint64_t)a_len + b_len + 3u) & ~(uint64_t)3u);
    if (out->ptr == NULL || (uint64_t)out->len + need > out->cap) {
        return 0;
    }
    uint8_t *p = out->ptr + out->len;
    WeftMutation rec = {op, arg, a_len, b_len};
    memcpy(p, &rec, sizeof rec);
    p += sizeof rec;
    if (a_len > 0) {
        memcpy(p, a, a_len);
    }
    if (b_len > 0) {
        memcpy(p + a_len, b, b_len);
    }
    memset(p + a_len + b_len, 0, (size_t)(need - sizeof rec - a_len - b_len));
    out->len += (uint32_t)need;
    return 1;
}

static int put_str(WeftBuf *out, uint32_t op, const char *a, const char *b) {
    return put_record(out, op, 0, a, (uint32_t)strlen(a), b, (uint32_t)strlen(b));
}

/* Writes v in decimal at out (room for 20 digits); returns the digit count. snprintf would do, at
 * about a thousand instructions a call in glibc (its format parser and FILE machinery): more than
 * the host spends on the whole call (scripts/callgrind-proxy). */
static size_t put_decimal(char *out, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    return n;
}

/* Appends len bytes of s to line at *at if they fit within cap; returns 0 when they do not. */
static int append(char *line, size_t cap, size_t *at, const void *s, size_t len) {
    if (len > cap - *at) {
        return 0;
    }
    memcpy(line + *at, s, len);
    *at += len;
    return 1;
}

static uint32_t stamp_phase(uint64_t instance, uint32_t phase, const WeftRequestView *view, WeftBuf *out) {
    struct instance *inst = find(instance);
    if (inst == NULL) {
        return WEFT_RESULT_UNKNOWN_PLUGIN;
    }
    if (view == NULL || out == NULL || view->size < sizeof(WeftRequestView) || view->phase != phase) {
        return WEFT_RESULT_INVALID_ARGUMENT;
    }
    const uint8_t *path = view_str(view, view->path);
    if (path == NULL) {
        return WEFT_RESULT_INVALID_ARGUMENT;
    }
    char buf[20];
    size_t id_len;
    switch (phase) {
    case WEFT_PHASE_REQUEST_HEADERS:
        if (inst->reply_path_len != 0 && view->path.len == inst->reply_path_len &&
            memcmp(path, inst->reply_path, view->path.len) == 0) {
            static const char body[] = "hello from C\n";
            if (!put_record(out, WEFT_MUTATION_OP_LOCAL_REPLY, 200, body, sizeof body - 1, NULL, 0) ||
                !put_str(out, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, "content-type", "text/plain") ||
                !put_str(out, WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, inst->header, inst->value)) {
                return WEFT_RESULT_MUTATION_OVERFLOW;
            }
            return WEFT_RESULT_OK;
        }
        id_len = put_decimal(buf, view->request_id);
        if (!put_record(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, inst->header, inst->header_len, inst->value,
                        inst->value_len) ||
            !put_record(out, WEFT_MUTATION_OP_SET_REQUEST_HEADER, 0, "x-c-request-id", 14, buf, (uint32_t)id_len)) {
            return WEFT_RESULT_MUTATION_OVERFLOW;
        }
        return WEFT_RESULT_OK;
    case WEFT_PHASE_RESPONSE_HEADERS:
        if (!put_record(out, WEFT_MUTATION_OP_SET_RESPONSE_HEADER, 0, inst->header, inst->header_len, inst->value,
                        inst->value_len) ||
            !put_record(out, WEFT_MUTATION_OP_SET_RESPONSE_HEADER, 0, "x-c-saw-path", 12, path, view->path.len)) {
            return WEFT_RESULT_MUTATION_OVERFLOW;
        }
        return WEFT_RESULT_OK;
    case WEFT_PHASE_LOG: {
        /* "c-header-stamp request=<id> status=<status> path=<path>", the path cut to fit (what
         * comes before it is at most 67 bytes: it always fits). */
        static const char request[] = "c-header-stamp request=", status[] = " status=", path_is[] = " path=";
        char line[256];
        size_t n = 0;
        append(line, sizeof line, &n, request, sizeof request - 1);
        n += put_decimal(line + n, view->request_id);
        append(line, sizeof line, &n, status, sizeof status - 1);
        n += put_decimal(line + n, view->status);
        append(line, sizeof line, &n, path_is, sizeof path_is - 1);
        size_t plen = view->path.len < sizeof line - n ? view->path.len : sizeof line - n;
        append(line, sizeof line, &n, path, plen);
        host_log_bytes(WEFT_LOG_INFO, instance, line, n);
        return WEFT_RESULT_OK;
    }
    default:
        return WEFT_RESULT_UNSUPPORTED_PHASE;
    }
}

static void stamp_shutdown(uint64_t instance) {
    struct instance *inst = find(instance);
    if (inst != NULL) {
        inst->used = 0;
        host_log(WEFT_LOG_INFO, instance, "c-header-stamp: instance shut down");
    }
}

static const char plugin_name[] = "c-header-stamp";

static const WeftPluginInfo plugins[] = {{
    (const uint8_t *)plugin_name,
    sizeof plugin_name - 1,
    WEFT_PHASE_MASK_REQUEST_HEADERS | WEFT_PHASE_MASK_RESPONSE_HEADERS | WEFT_PHASE_MASK_LOG,
    0,
}};

/* It reads no header line (the path, the status and the request id are view fields): an empty
 * list, so the host copies none into its views. NULL instead would mean every line. */
static const WeftViewHeaders view_headers[] = {{(const uint8_t *)"", 0}};

static const WeftPluginDescriptor descriptor = {
    .abi_version = WEFT_ABI_VERSION,
    .descriptor_size = sizeof(WeftPluginDescriptor),
    .request_view_size = sizeof(WeftRequestView),
    .mutation_size = sizeof(WeftMutation),
    .host_api_size = sizeof(WeftHostApi),
    .runtime = WEFT_RUNTIME_NATIVE,
    .runtime_version = (const uint8_t *)"c11",
    .runtime_version_len = 3,
    .plugin_count = 1,
    .plugins = plugins,
    .init = stamp_init,
    .on_phase = stamp_phase,
    .thread_start = NULL,
    .shutdown = stamp_shutdown,
    .view_headers = view_headers,
};

const WeftPluginDescriptor *weft_plugin_entry(const WeftHostApi *api) {
    if (api == NULL || api->abi_version != WEFT_ABI_VERSION || api->size < offsetof(WeftHostApi, log) + sizeof api->log) {
        return NULL;
    }
    host = api;
    return &descriptor;
}
