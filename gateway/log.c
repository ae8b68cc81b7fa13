/* gateway/log.c: one line per event. Text format:
 *   2026-11-24T22:52:48.123Z level=info conn=3 peer=127.0.0.1:5000 msg="..."
 * JSON format turns each key=value pair of the message into a member.
 * The calling thread formats the whole line and appends it to one queue (g_out.pending,
 * at most LOG_QUEUE_BYTES, under g_out.lock), so lines of the loop and the writer thread
 * never interleave. The log thread takes the whole queue at once and writes it to
 * stderr outside the lock; a slow stderr fills the queue, and then lines are dropped
 * and counted instead of blocking the caller. The log thread also sweeps the
 * process-wide refusal table once a second, writing its summaries. */
#include "gateway/log.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/clock.h"

#define LOG_QUEUE_BYTES (256 * 1024) /* lines waiting for stderr; over it they are dropped */
#define LOG_MSG_BYTES 8192           /* one formatted message, before the line's prefix */
/* one log_q result: every kept byte escaped to 4, plus the cut marker */
#define LOG_Q_SLOT_BYTES (LOG_Q_MAX_BYTES * 4 + 32)
#define LOG_SWEEP_NS 1000000000ULL   /* the log thread's refusal sweep period */
#define LOG_REFUSAL_SLOTS 256
#define LOG_REFUSAL_WINDOW_MS 10000

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

static struct {
    uv_once_t once;
    bool threaded;          /* the log thread runs; else lines are written at once */
    uv_mutex_t lock;        /* guards everything below */
    uv_cond_t wake;         /* lines queued, or a flush asked */
    uv_cond_t drained;      /* the log thread wrote all it had taken */
    struct buf pending;     /* complete lines, in order */
    bool writing;           /* the log thread holds lines not yet written */
    unsigned long long dropped; /* lines dropped since the last "dropped" line */
    uv_thread_t thread;
} g_out = {.once = UV_ONCE_INIT};

static uv_mutex_t g_refusals_lock; /* guards g_refusals; taken before g_out.lock */
static struct log_refusals *g_refusals;

static _Thread_local char q_slots[LOG_Q_SLOTS][LOG_Q_SLOT_BYTES];
static _Thread_local unsigned q_next;

void log_setup(enum log_level level, enum log_format format)
{
    g_level = level;
    g_format = format;
}

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

/* ---- escaping ---- */

/* Length of the valid UTF-8 sequence at p (1..4), 0 if p[0] does not start one
 * (overlong forms, surrogates and code points past U+10FFFF are not valid). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* The escape of the character at p into e (NUL-terminated); returns the input bytes it
 * spans. quotes: '"' and '\' are escaped too (a value); else only control bytes and
 * invalid UTF-8 are (the safety net over a whole message). */
static size_t escape_one(const unsigned char *p, size_t n, bool quotes, char e[8])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char c = p[0];
    size_t len;

    if (quotes && (c == '"' || c == '\\')) {
        e[0] = '\\', e[1] = (char)c, e[2] = '\0';
        return 1;
    }
    if (c == '\n' || c == '\r' || c == '\t') {
        e[0] = '\\', e[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't', e[2] = '\0';
        return 1;
    }
    len = c < 0x20 || c == 0x7f ? 0 : utf8_len(p, n);
    if (len == 0) {
        e[0] = '\\', e[1] = 'x', e[2] = hex[c >> 4], e[3] = hex[c & 15], e[4] = '\0';
        return 1;
    }
    memcpy(e, p, len);
    e[len] = '\0';
    return len;
}

/* Escapes whole characters of p[0..keep) while they fit under cap - 1 bytes of out;
 * *used: the input bytes taken. Returns the bytes written. */
static size_t escape_fit(char *out, size_t cap, const unsigned char *p, size_t n, size_t keep,
                         size_t *used)
{
    size_t i = 0, o = 0;
    char e[8];
    while (i < keep) {
        size_t len = escape_one(p + i, n - i, true, e), elen = strlen(e);
        if (o + elen >= cap)
            break;
        memcpy(out + o, e, elen);
        o += elen;
        i += len;
    }
    *used = i;
    return o;
}

size_t log_escape(char *out, size_t cap, const void *s, size_t n)
{
    const unsigned char *p = s;
    size_t i, o, keep = n > LOG_Q_MAX_BYTES ? LOG_Q_MAX_BYTES : n;
    char marker[40];
    size_t mlen = (size_t)snprintf(marker, sizeof marker, "...(+%zu bytes)", n);

    o = escape_fit(out, cap, p, n, keep, &i);
    if (i < n && mlen < cap) { /* cut: again, leaving room for the marker (sized for n) */
        o = escape_fit(out, cap - mlen, p, n, keep, &i);
        o += (size_t)snprintf(out + o, cap - o, "...(+%zu bytes)", n - i);
    }
    out[o] = '\0';
    return o;
}

const char *log_qn(const void *s, size_t n)
{
    char *slot = q_slots[q_next++ % LOG_Q_SLOTS];
    if (!s)
        n = 0;
    log_escape(slot, LOG_Q_SLOT_BYTES, s ? s : "", n);
    return slot;
}

const char *log_q(const char *s)
{
    return log_qn(s, s ? strlen(s) : 0);
}

/* ---- formatting ---- */

static void format_time(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* A message with its control bytes and invalid UTF-8 escaped: whatever a caller
 * printed unescaped, it stays one line. */
static void append_sanitized(struct buf *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    char e[8];
    for (size_t i = 0; i < n;)
        i += escape_one(p + i, n - i, false, e), buf_append_str(out, e);
}

static int is_integer(const char *v, size_t n)
{
    size_t i = (n > 0 && v[0] == '-') ? 1 : 0;
    if (i == n || n > 18)
        return 0;
    if (v[i] == '0' && n > i + 1)
        return 0;
    for (; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

/* A quoted text value as a JSON string: its \" \\ \n \r \t escapes become the
 * characters they stand for (and JSON escapes again); \xHH stays as those four
 * characters, since a JSON string cannot hold a byte that is not UTF-8. */
static void append_json_value(struct buf *out, const char *v, size_t n)
{
    struct buf tmp;
    buf_init(&tmp);
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (c == '\\' && i + 1 < n) {
            char d = v[i + 1];
            if (d == '"' || d == '\\' || d == 'n' || d == 'r' || d == 't') {
                c = d == 'n' ? '\n' : d == 'r' ? '\r' : d == 't' ? '\t' : d;
                i++;
            }
        }
        buf_append(&tmp, &c, 1);
    }
    buf_append_json_str(out, (const char *)tmp.data, tmp.len);
    buf_fini(&tmp);
}

/* Splits "a=1 b=\"x y\" word" into JSON members; bare words join "msg". */
static void append_json_pairs(struct buf *out, const char *s)
{
    struct buf words;
    buf_init(&words);
    while (*s) {
        const char *k, *eq, *v;
        size_t klen, vlen;
        int quoted = 0;
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        k = s;
        while (*s && *s != ' ' && *s != '=')
            s++;
        if (*s != '=') { /* bare word */
            if (words.len)
                buf_append(&words, " ", 1);
            buf_append(&words, k, (size_t)(s - k));
            continue;
        }
        eq = s;
        klen = (size_t)(eq - k);
        s++;
        if (*s == '"') {
            quoted = 1;
            v = ++s;
            while (*s && *s != '"') /* an escaped quote (or backslash) is part of it */
                s += (*s == '\\' && s[1]) ? 2 : 1;
            vlen = (size_t)(s - v);
            if (*s)
                s++;
        } else {
            v = s;
            while (*s && *s != ' ')
                s++;
            vlen = (size_t)(s - v);
        }
        buf_append(out, ",", 1);
        buf_append_json_str(out, k, klen);
        buf_append(out, ":", 1);
        if (quoted)
            append_json_value(out, v, vlen);
        else if (is_integer(v, vlen))
            buf_append(out, v, vlen); /* numbers stay numbers */
        else
            buf_append_json_str(out, v, vlen);
    }
    if (words.len) {
        buf_append_str(out, ",\"msg\":");
        buf_append_json_str(out, (const char *)words.data, words.len);
    }
    buf_fini(&words);
}

static void format_line(struct buf *line, enum log_level level, const char *msg, size_t n)
{
    char ts[64];
    format_time(ts, sizeof ts);
    if (g_format == LOG_JSON) {
        struct buf clean;
        buf_init(&clean);
        append_sanitized(&clean, msg, n);
        buf_append(&clean, "", 1); /* NUL: append_json_pairs reads a C string */
        buf_printf(line, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, level_names[level]);
        append_json_pairs(line, (const char *)clean.data);
        buf_append_str(line, "}\n");
        buf_fini(&clean);
    } else {
        buf_printf(line, "%s level=%s ", ts, level_names[level]);
        append_sanitized(line, msg, n);
        buf_append_str(line, "\n");
    }
}

static void emit(struct buf *line);

/* ---- output ---- */

/* Writes all of p to stderr, waiting while it is full; gives up on an error. */
static void write_all(const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = STDERR_FILENO, .events = POLLOUT};
            poll(&pfd, 1, 100);
        } else {
            return; /* stderr is gone: nothing else to tell it */
        }
    }
}

static void on_summary(void *ctx, const char *peer, const char *reason, uint64_t refusals,
                       uint64_t window_ms)
{
    (void)ctx;
    log_warn("peer=%s refusals=%llu in last %llus reason=\"%s\"", log_q(peer),
             (unsigned long long)refusals, (unsigned long long)((window_ms + 999) / 1000),
             log_q(reason));
}

static void sweep_refusals(void)
{
    uv_mutex_lock(&g_refusals_lock);
    log_refusals_sweep(g_refusals, gw_mono_ms());
    uv_mutex_unlock(&g_refusals_lock);
}

static void log_thread(void *arg)
{
    struct buf taken;
    uint64_t next_sweep = uv_hrtime() + LOG_SWEEP_NS;
    (void)arg;
    buf_init(&taken);
    uv_mutex_lock(&g_out.lock);
    for (;;) {
        unsigned long long dropped;
        struct buf swap;
        uint64_t now = uv_hrtime();

        if (now >= next_sweep) {
            uv_mutex_unlock(&g_out.lock);
            sweep_refusals(); /* its summaries queue lines: not under g_out.lock */
            uv_mutex_lock(&g_out.lock);
            next_sweep = now + LOG_SWEEP_NS;
            continue;
        }
        if (g_out.pending.len == 0 && g_out.dropped == 0) {
            uv_cond_timedwait(&g_out.wake, &g_out.lock, next_sweep - now);
            continue;
        }
        swap = g_out.pending;
        g_out.pending = taken;
        taken = swap;
        dropped = g_out.dropped;
        g_out.dropped = 0;
        g_out.writing = true;
        uv_mutex_unlock(&g_out.lock);
        if (dropped) {
            char msg[96];
            int n = snprintf(msg, sizeof msg, "log: dropped %llu lines reason=\"stderr too slow\"",
                             dropped);
            format_line(&taken, LOG_WARN, msg, (size_t)n);
        }
        write_all(taken.data, taken.len);
        taken.len = 0;
        buf_shrink(&taken, 64 * 1024); /* a burst's buffer is not kept */
        uv_mutex_lock(&g_out.lock);
        g_out.writing = false;
        uv_cond_broadcast(&g_out.drained);
    }
}

static void on_exit_flush(void)
{
    log_flush();
}

static void init_output(void)
{
    const char *w = getenv("GALE_TEST_REFUSAL_WINDOW_MS");
    uint64_t window_ms = w && atoll(w) > 0 ? (uint64_t)atoll(w) : LOG_REFUSAL_WINDOW_MS;

    if (uv_mutex_init(&g_refusals_lock) != 0 || uv_mutex_init(&g_out.lock) != 0 ||
        uv_cond_init(&g_out.wake) != 0 || uv_cond_init(&g_out.drained) != 0)
        abort(); /* as xmalloc does: no way to log at all */
    g_refusals = log_refusals_new(LOG_REFUSAL_SLOTS, window_ms, on_summary, NULL);
    buf_init(&g_out.pending);
    g_out.threaded = uv_thread_create(&g_out.thread, log_thread, NULL) == 0;
    if (g_out.threaded)
        atexit(on_exit_flush);
}

void log_flush(void)
{
    uv_once(&g_out.once, init_output);
    if (!g_out.threaded)
        return;
    uv_mutex_lock(&g_out.lock);
    while (g_out.pending.len > 0 || g_out.writing || g_out.dropped) {
        uv_cond_signal(&g_out.wake);
        uv_cond_wait(&g_out.drained, &g_out.lock);
    }
    uv_mutex_unlock(&g_out.lock);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char msg[LOG_MSG_BYTES];
    struct buf line;
    va_list ap;
    int n;

    if (level < g_level)
        return;
    uv_once(&g_out.once, init_output);
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg) { /* cut: say so rather than end inside an escape */
        static const char cut[] = "...(cut)";
        memcpy(msg + sizeof msg - sizeof cut, cut, sizeof cut);
        n = (int)sizeof msg - 1;
    }
    buf_init(&line);
    format_line(&line, level, msg, (size_t)n);
    emit(&line);
}

/* A JSON text with every byte that is not part of valid UTF-8 replaced by U+FFFD, so
 * that the line stays valid JSON whatever bytes a client sent. */
static void append_utf8(struct buf *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = p[i] < 0x80 ? 1 : utf8_len(p + i, n - i);
        if (len == 0) {
            buf_append_str(out, "\xef\xbf\xbd");
            i++;
            continue;
        }
        buf_append(out, p + i, len);
        i += len;
    }
}

void log_write_json(enum log_level level, const char *json)
{
    struct buf line;
    size_t n = strlen(json);
    char ts[64];

    if (level < g_level)
        return;
    uv_once(&g_out.once, init_output);
    buf_init(&line);
    if (g_format == LOG_JSON && n >= 2 && json[0] == '{' && json[n - 1] == '}') {
        format_time(ts, sizeof ts);
        buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\"%s", ts, level_names[level],
                   n > 2 ? "," : "");
        append_utf8(&line, json + 1, n - 1);
        buf_append_str(&line, "\n");
    } else {
        format_line(&line, level, json, n);
    }
    emit(&line);
}

/* Hands a formatted line to the log thread (or writes it, before the thread runs). */
static void emit(struct buf *line_buf)
{
    struct buf line = *line_buf;

    if (!g_out.threaded) {
        write_all(line.data, line.len);
        buf_fini(&line);
        return;
    }
    uv_mutex_lock(&g_out.lock);
    if (g_out.pending.len + line.len > LOG_QUEUE_BYTES) {
        g_out.dropped++;
    } else {
        buf_append(&g_out.pending, line.data, line.len);
        uv_cond_signal(&g_out.wake);
    }
    uv_mutex_unlock(&g_out.lock);
    buf_fini(&line);
}

/* ---- refusal summaries ---- */

struct refusal_slot {
    char addr[48];           /* the peer's address, no port; "" = slot free */
    char reason[64];
    uint64_t window_start_ms; /* monotonic */
    uint64_t logged;         /* refusals the caller logged in this window */
    uint64_t counted;        /* refusals counted, not logged, in this window */
};

struct log_refusals {
    struct refusal_slot *slots;
    size_t max_slots, used;
    struct refusal_slot other; /* every (peer, reason) that found no slot */
    uint64_t window_ms;
    log_summary_fn fn;
    void *ctx;
};

struct log_refusals *log_refusals_new(size_t max_slots, uint64_t window_ms, log_summary_fn fn,
                                      void *ctx)
{
    struct log_refusals *r = xcalloc(1, sizeof *r);
    r->slots = xcalloc(max_slots ? max_slots : 1, sizeof *r->slots);
    r->max_slots = max_slots;
    r->window_ms = window_ms;
    r->fn = fn;
    r->ctx = ctx;
    return r;
}

void log_refusals_free(struct log_refusals *r)
{
    if (!r)
        return;
    free(r->slots);
    free(r);
}

/* "1.2.3.4:5678" -> "1.2.3.4", "[::1]:5678" -> "[::1]"; anything else stays whole. */
static void peer_addr(const char *peer, char *out, size_t cap)
{
    const char *end = NULL, *colon = strchr(peer, ':');
    size_t n;

    if (peer[0] == '[' && (end = strchr(peer, ']')) != NULL)
        end++;
    else if (colon && !strchr(colon + 1, ':'))
        end = colon;
    n = end ? (size_t)(end - peer) : strlen(peer);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, peer, n);
    out[n] = '\0';
}

/* Ends the window of slot if it is over: a summary when refusals were counted (the
 * episode goes on, with no more single lines), else the slot is freed. Returns true if
 * the slot is still in use. */
static bool end_window(struct log_refusals *r, struct refusal_slot *slot, uint64_t now_ms)
{
    if (now_ms - slot->window_start_ms < r->window_ms)
        return true;
    if (slot->counted == 0) {
        slot->addr[0] = '\0';
        if (slot != &r->other)
            r->used--;
        return false;
    }
    if (r->fn)
        r->fn(r->ctx, slot->addr, slot->reason, slot->counted, now_ms - slot->window_start_ms);
    slot->window_start_ms = now_ms;
    slot->logged = LOG_REFUSAL_BURST;
    slot->counted = 0;
    return true;
}

static void start_slot(struct refusal_slot *slot, const char *addr, const char *reason,
                       uint64_t now_ms)
{
    snprintf(slot->addr, sizeof slot->addr, "%s", addr);
    snprintf(slot->reason, sizeof slot->reason, "%s", reason);
    slot->window_start_ms = now_ms;
    slot->logged = 0;
    slot->counted = 0;
}

int log_refusals_note(struct log_refusals *r, const char *peer, const char *reason,
                      uint64_t now_ms)
{
    struct refusal_slot *slot = NULL, *free_slot = NULL;
    char addr[48], why[64];

    peer_addr(peer ? peer : "", addr, sizeof addr);
    snprintf(why, sizeof why, "%s", reason ? reason : "");
    for (size_t i = 0; i < r->max_slots && !slot; i++) {
        struct refusal_slot *s = &r->slots[i];
        if (!s->addr[0])
            free_slot = free_slot ? free_slot : s;
        else if (strcmp(s->addr, addr) == 0 && strcmp(s->reason, why) == 0 &&
                 end_window(r, s, now_ms))
            slot = s;
        else if (!s->addr[0])
            free_slot = free_slot ? free_slot : s; /* its episode just ended */
    }
    if (!slot && free_slot) {
        slot = free_slot;
        start_slot(slot, addr, why, now_ms);
        r->used++;
    } else if (!slot) {
        slot = &r->other;
        if (!slot->addr[0] || !end_window(r, slot, now_ms))
            start_slot(slot, "other", why, now_ms);
        else /* the summary names the latest reason */
            snprintf(slot->reason, sizeof slot->reason, "%s", why);
    }
    if (slot->logged < LOG_REFUSAL_BURST) {
        slot->logged++;
        return 1;
    }
    slot->counted++;
    return 0;
}

void log_refusals_sweep(struct log_refusals *r, uint64_t now_ms)
{
    for (size_t i = 0; i < r->max_slots; i++)
        if (r->slots[i].addr[0])
            end_window(r, &r->slots[i], now_ms);
    if (r->other.addr[0])
        end_window(r, &r->other, now_ms);
}

size_t log_refusals_count(const struct log_refusals *r)
{
    return r->used + (r->other.addr[0] ? 1 : 0);
}

int log_refusal(const char *peer, const char *reason)
{
    int rc;
    uv_once(&g_out.once, init_output);
    uv_mutex_lock(&g_refusals_lock);
    rc = log_refusals_note(g_refusals, peer, reason, gw_mono_ms());
    uv_mutex_unlock(&g_refusals_lock);
    return rc;
}
