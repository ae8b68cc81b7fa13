/* web/rest_telemetry.c: telemetry over REST: HTTP ingest and range queries (raw points
 * or buckets) for one device or several, as JSON or CSV.
 *
 * A query is checked and resolved on the loop thread (times, durations, the time zone's
 * UTC offsets), then runs as one storage sub-query per device (or per device and key
 * when a cursor gives each key its own start) on the work pool; the reply is written
 * when the last sub-query is back. A reply is bounded by limit per key and by the
 * connection's send budget; a reply cut by either carries a cursor (JSON "_next" and the
 * X-Gale-Next-Cursor header) that resumes every cut key where its reply stopped: the ms
 * after its last point, or the start of the bucket after its last bucket (storage only
 * emits whole buckets, so no bucket is ever split between two pages).
 *
 * CSV asked with a limit over one page (STREAM_PAGE_POINTS) on HTTP/1.1 is streamed when
 * its range holds more than a page: the first pages come from the sub-queries as above,
 * then each key that has more is read on, one single-key page at a time (its next from
 * from store_query_resume), and the rows go out as chunks (http_stream_*). The writer
 * waits whenever the connection's send queue is over its mark and asks for the next
 * page only when the one in hand is written, so memory is bounded by the first pages,
 * one page and the send budget. limit still caps the points per key; keys it cuts are
 * named by a cursor in the X-Gale-Next-Cursor trailer. A client that goes away ends the
 * paging: the page in flight comes back to a closed connection and everything is freed.
 *
 * Time zones: TZ is switched (setenv + tzset) only here, on the loop thread, to read a
 * zone's offsets with localtime_r once; the pool threads get the offsets as a plain
 * list (struct store_tz_span) and never call localtime. No other Gale thread reads TZ.
 * Loop thread only. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/devices.h"
#include "gateway/fleet.h"
#include "gateway/log.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/session.h"
#include "gateway/tls.h"
#include "protocols/http/http.h"
#include "storage/store.h"
#include "web/httpdev.h"
#include "web/keys.h"
#include "web/rest_int.h"

#define MAX_QUERY_KEYS 64
#define MAX_QUERY_DEVICES 64
#define DEFAULT_LIMIT 1000
#define MAX_LIMIT 100000
#define STREAM_PAGE_POINTS 1000   /* points per key per storage query of a streamed CSV */
#define STREAM_FLUSH_BYTES 16384  /* CSV rows gathered into one chunk (at most) */
#define DAY_MS 86400000LL
/* Offsets are read for these years; before and after, the nearest one holds. */
#define TZ_FROM_S (-631152000LL)  /* 1950-01-01 */
#define TZ_TO_S 4102444800LL      /* 2100-01-01 */

/* ---- ingest ---- */

void rest_unauthorized_ingest(struct gw *gw, struct http_conn *h)
{
    metrics_auth_failed(&gw->metrics, "http", "bad_device_token");
    http_respond_error(h, 401, "unauthorized", "API key or the device's token required");
}

void rest_unauthorized_token(struct gw *gw, struct http_conn *h, const char *id, const char *why,
                             const char *reason)
{
    struct conn *c = http_conn_of(h);

    metrics_auth_failed(&gw->metrics, "http", reason);
    if (conn_refused(c, why))
        log_warn("conn=%llu peer=%s proto=http auth failed device=\"%s\" reason=\"%s\"",
                 (unsigned long long)c->id, conn_peer(c), log_q(id), why);
    http_respond_error(h, 401, "unauthorized", why);
}

/* A device's own telemetry POST waiting for its commit; freed by on_ingest_durable. */
struct ingest_reply {
    struct rest *r;
    size_t npoints;
    char device[DEVICE_ID_MAX + 1];
};

/* The commit of a device's POST: {"stored":N,"commands":[...]} with the commands queued
 * for it, taken (delivered) only now that the answer goes out. */
static void on_ingest_durable(struct conn *c, uint64_t tag, int ok)
{
    struct ingest_reply *p = (struct ingest_reply *)(uintptr_t)tag;
    struct http_conn *h = ok >= 0 ? http_from_conn(c) : NULL;
    struct buf b;

    if (h && ok) {
        buf_init(&b);
        buf_printf(&b, "{\"stored\":%zu,\"commands\":", p->npoints);
        httpdev_take(p->r->httpdev, p->device, &b);
        buf_append_str(&b, "}");
        rest_reply_json(h, 200, &b);
        buf_fini(&b);
    } else if (h && c->gw->storage_full) {
        http_respond_error(h, 507, "storage_full", "storage full: nothing was stored");
    } else if (h) {
        http_respond_error(h, 503, "storage_error", "storage failure: nothing was stored");
    }
    free(p);
}

void rest_telemetry_post(struct rest *r, struct http_conn *h, struct http_req *req,
                         struct device *dev)
{
    struct gw *gw = r->gw;
    struct session_result res;
    const char *why, *code;
    const char *tok = http_bearer(req);
    char topic[DEVICE_ID_MAX + 32];
    struct buf b;

    bool by_device;

    /* the API key, (mutual TLS) the device's certificate, or its token: per device or fleet */
    by_device = !rest_authorized(gw, req);
    if (by_device && !tls_peer_device(http_conn_of(h), dev->id)) {
        if (!tok) {
            rest_unauthorized_ingest(gw, h);
            return;
        }
        if (!session_check_token(gw, dev->id, tok, strlen(tok), &why, &code)) {
            /* a per-device token: the same answer for every id, known or not (a fleet
             * token's reason is the same for both) */
            if (!(gw->fleet && fleet_is_token(tok, strlen(tok))))
                rest_unauthorized_ingest(gw, h);
            else
                rest_unauthorized_token(gw, h, dev->id, why, code);
            return;
        }
    }
    if (by_device)
        httpdev_seen(r->httpdev, dev); /* online over HTTP, even when refused below */
    if (guard_rate(gw->guard, dev->id, gw_mono_ms()) != GUARD_RATE_OK) {
        /* disconnect: the reply says why, then the connection closes */
        if (gw->cfg->limits.device_rate_action == CONFIG_RATE_DISCONNECT)
            http_current(h)->keep_alive = false;
        static const char limited[] =
            "{\"error\":\"message rate over limits.device_rate_msgs_per_s\","
            "\"code\":\"rate_limited\"}";
        http_respond(h, 429, REST_JSON, limited, sizeof limited - 1, "Retry-After: 1\r\n");
        return;
    }
    if (gw->ingest_paused) {
        static const char busy[] =
            "{\"error\":\"storage is catching up, retry shortly\",\"code\":\"busy\"}";
        http_respond(h, 503, REST_JSON, busy, sizeof busy - 1, "Retry-After: 1\r\n");
        return;
    }
    snprintf(topic, sizeof topic, "devices/%s/telemetry", dev->id);
    if (session_ingest(gw, dev, topic, req->body, req->body_len, &res, &why, &code) != 0) {
        http_respond_error(h, 400, code, why);
        return;
    }
    if (by_device) { /* the reply also carries the device's queued commands */
        struct ingest_reply *p = xcalloc(1, sizeof *p);
        p->r = r;
        p->npoints = res.npoints;
        snprintf(p->device, sizeof p->device, "%s", dev->id);
        gw_await_durable(http_conn_of(h), &res.ticket, (uint64_t)(uintptr_t)p, on_ingest_durable);
        return;
    }
    buf_init(&b);
    buf_printf(&b, "{\"stored\":%zu}", res.npoints);
    rest_reply_when_durable(h, &res.ticket, 200, &b, NULL);
}

/* ---- parsing the query ---- */

static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

/* "250", "30s", "5m", "1h", "1d", "1w", "1h30m", "500ms": milliseconds (> 0). */
static bool parse_duration(const char *s, int64_t *out)
{
    int64_t total = 0;

    if (parse_i64(s, &total))
        return total > 0 && (*out = total, true);
    if (!*s)
        return false;
    while (*s) {
        char *end;
        int64_t unit;
        long long n;

        if (*s < '0' || *s > '9')
            return false;
        errno = 0;
        n = strtoll(s, &end, 10);
        if (errno || n < 0 || n > 100000000LL)
            return false;
        s = end;
        if (strncmp(s, "ms", 2) == 0) {
            unit = 1;
            s += 2;
        } else {
            switch (*s) {
            case 's': unit = 1000; break;
            case 'm': unit = 60000; break;
            case 'h': unit = 3600000; break;
            case 'd': unit = DAY_MS; break;
            case 'w': unit = 7 * DAY_MS; break;
            default: return false;
            }
            s++;
        }
        total += n * unit;
    }
    return total > 0 && (*out = total, true);
}

/* from/to: epoch ms, RFC 3339, or relative to now: "now", "-1h", "now-15m", "now+1d". */
static bool parse_time(const char *s, int64_t now_ms, int64_t *out)
{
    int64_t d;

    if (parse_i64(s, out))
        return true;
    if (strncmp(s, "now", 3) == 0) {
        if (!s[3])
            return (*out = now_ms, true);
        s += 3;
    }
    if ((*s == '-' || *s == '+') && parse_duration(s + 1, &d)) {
        *out = *s == '-' ? now_ms - d : now_ms + d;
        return true;
    }
    return gw_parse_rfc3339(s, out);
}

static bool parse_agg(const char *s, enum store_agg *out)
{
    static const char *const names[] = {"none", "avg", "min",   "max",
                                        "sum",  "count", "first", "last"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (enum store_agg)i;
            return true;
        }
    }
    return false;
}

bool rest_check_params(struct http_conn *h, const struct http_req *req,
                       const char *const *names)
{
    struct buf bad;
    const char *p = req->query;
    size_t nbad = 0;

    buf_init(&bad);
    while (p && *p) {
        size_t len = strcspn(p, "&"), nlen = strcspn(p, "=&");
        bool known = nlen == 0; /* "a=1&&b=2": an empty piece names nothing */
        for (size_t i = 0; names[i] && !known; i++)
            known = strlen(names[i]) == nlen && strncmp(names[i], p, nlen) == 0;
        if (!known && nbad < 16) {
            buf_printf(&bad, "%s%.*s", nbad ? ", " : "", (int)(nlen > 64 ? 64 : nlen), p);
            nbad++;
        }
        p += len;
        if (*p == '&')
            p++;
    }
    if (nbad) {
        struct buf msg;
        buf_init(&msg);
        buf_printf(&msg, "unknown parameter%s: %s (allowed:", nbad > 1 ? "s" : "",
                   buf_cstr(&bad));
        for (size_t i = 0; names[i]; i++)
            buf_printf(&msg, " %s", names[i]);
        buf_append_str(&msg, ")");
        http_respond_error(h, 400, "unknown_param", buf_cstr(&msg));
        buf_fini(&msg);
    }
    buf_fini(&bad);
    return nbad == 0;
}

/* ---- time zones ---- */

/* A zone name as the system tz database spells it, present in it. */
static bool tz_name_ok(const char *name)
{
    const char *dir = "/usr/share/zoneinfo";
    char path[192];

    if (!name[0] || strlen(name) >= 64 || name[0] == '/' || strstr(name, ".."))
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '_' || *p == '-' || *p == '+'))
            return false;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, R_OK) == 0;
}

static int64_t offset_at(time_t t)
{
    struct tm tm;
    return localtime_r(&t, &tm) ? (int64_t)tm.tm_gmtoff * 1000 : 0;
}

/* Reads the UTC offsets of zone name from the tz database: a day-by-day walk over
 * TZ_FROM_S..TZ_TO_S, each change located to the second. Blocks for a few ms, once per
 * zone (the result is cached). */
static void tz_compute(const char *name, struct store_tz_span **out, size_t *nout)
{
    const char *old = getenv("TZ");
    char *saved = old ? xstrdup(old) : NULL;
    size_t n = 0, cap = 64;
    struct store_tz_span *sp = xmalloc(cap * sizeof *sp);
    int64_t prev;

    setenv("TZ", name, 1);
    tzset();
    prev = offset_at((time_t)TZ_FROM_S);
    sp[n++] = (struct store_tz_span){INT64_MIN, prev};
    for (int64_t t = TZ_FROM_S + 86400; t <= TZ_TO_S; t += 86400) {
        int64_t off = offset_at((time_t)t), lo = t - 86400, hi = t;
        if (off == prev)
            continue;
        while (hi - lo > 1) { /* offset_at(lo) == prev, offset_at(hi) == off */
            int64_t mid = lo + (hi - lo) / 2;
            if (offset_at((time_t)mid) == prev)
                lo = mid;
            else
                hi = mid;
        }
        if (n == cap)
            sp = xrealloc(sp, (cap *= 2) * sizeof *sp);
        sp[n++] = (struct store_tz_span){hi * 1000, off};
        prev = off;
    }
    if (saved)
        setenv("TZ", saved, 1);
    else
        unsetenv("TZ");
    tzset();
    free(saved);
    *out = sp;
    *nout = n;
}

static const struct rest_tz *tz_get(struct rest *r, const char *name)
{
    struct rest_tz *z;

    for (size_t i = 0; i < r->ntz; i++)
        if (strcmp(r->tz[i].name, name) == 0)
            return &r->tz[i];
    if (!tz_name_ok(name))
        return NULL;
    if (r->ntz < REST_TZ_CACHE) {
        z = &r->tz[r->ntz++];
    } else {
        z = &r->tz[r->tz_next];
        r->tz_next = (r->tz_next + 1) % REST_TZ_CACHE;
        free(z->spans);
    }
    snprintf(z->name, sizeof z->name, "%s", name);
    tz_compute(name, &z->spans, &z->nspans);
    return z;
}

void rest_tz_free(struct rest *r)
{
    for (size_t i = 0; i < r->ntz; i++)
        free(r->tz[i].spans);
    r->ntz = 0;
}

/* ---- running the query ---- */

struct query_ctx;

/* One storage query: one device, its keys (or one key resumed from a cursor). */
struct sub_query {
    struct query_ctx *qc;
    struct store_query *q;     /* owned again once it is back (for store_query_resume) */
    struct store_result *res;  /* NULL while running */
    size_t dev;                /* index into qc->devices */
};

struct query_ctx {
    struct rest *rest;
    struct conn *conn;
    bool multi;                /* /api/telemetry: results grouped by device */
    bool csv;
    char **devices;            /* heap, owned */
    size_t ndevices;
    struct sub_query *subs;    /* heap; grouped by device, in request order */
    size_t nsubs, pending;
    bool failed;
    /* a streamed CSV: the sub-queries ran with STREAM_PAGE_POINTS per key */
    bool stream;
    size_t limit;              /* the caller's limit per key */
    size_t at_sub, at_series, at_point; /* the next point to write */
    size_t sent;               /* points of series at_series written */
    struct store_query *page_q; /* the single-key page of series at_series read on, */
    struct store_result *page;  /* or NULL while the sub-query's own result is written */
    cJSON *next;               /* the cursor of the keys limit cut */
    struct buf out;            /* rows not yet handed to http_stream_write */
};

/* A value in CSV (RFC 4180): numbers and booleans as in JSON; strings and JSON quoted
 * when they hold a comma, quote or line break. */
static void csv_value(const struct point *p, struct buf *b)
{
    struct buf v;
    bool quote;

    if (p->type != VAL_STR && p->type != VAL_JSON) {
        devices_write_value_json(p, b);
        return;
    }
    buf_init(&v);
    buf_append(&v, p->str ? p->str : "", p->str ? p->str_len : 0);
    quote = memchr(v.data, ',', v.len) || memchr(v.data, '"', v.len) ||
            memchr(v.data, '\n', v.len) || memchr(v.data, '\r', v.len);
    if (quote) {
        buf_append_str(b, "\"");
        for (size_t i = 0; i < v.len; i++)
            buf_append(b, v.data[i] == '"' ? "\"\"" : (const char *)&v.data[i],
                       v.data[i] == '"' ? 2 : 1);
        buf_append_str(b, "\"");
    } else {
        buf_append(b, v.data, v.len);
    }
    buf_fini(&v);
}

static void csv_field(struct buf *b, const char *s)
{
    struct point p = {.type = VAL_STR, .str = s, .str_len = strlen(s)};
    csv_value(&p, b);
}

/* Bytes a reply may take on top of its points: the cursor (every key, escaped, as JSON
 * and then base64url) in the body and again as a header, and the other headers. */
static size_t reply_reserve(const struct query_ctx *qc)
{
    size_t json = 2;
    for (size_t i = 0; i < qc->nsubs; i++) {
        const struct store_result *res = qc->subs[i].res;
        json += 6 * strlen(qc->devices[qc->subs[i].dev]) + 8;
        for (size_t s = 0; s < res->nseries; s++)
            json += 6 * strlen(res->series[s].key) + 32; /* "k":-1.2345e+18, */
    }
    return 2 * B64URL_LEN(json) + 2048;
}

static void write_point(const struct query_ctx *qc, const char *device, const char *key,
                        const struct point *p, bool first, struct buf *b)
{
    if (qc->csv) {
        buf_printf(b, "%lld,", (long long)p->ts_ms);
        if (qc->multi) {
            csv_field(b, device);
            buf_append_str(b, ",");
        }
        csv_field(b, key);
        buf_append_str(b, ",");
        csv_value(p, b);
        buf_append_str(b, "\n");
        return;
    }
    if (!first)
        buf_append_str(b, ",");
    buf_printf(b, "{\"ts\":%lld,\"value\":", (long long)p->ts_ms);
    devices_write_value_json(p, b);
    buf_append_str(b, "}");
}

/* The cursor of the keys cut: {"key":resume,...} or, over several devices,
 * {"device":{"key":resume,...},...}. */
static void cursor_add(cJSON **next, const struct query_ctx *qc, const char *device,
                       const char *key, int64_t resume)
{
    cJSON *into;

    if (!*next)
        *next = cJSON_CreateObject();
    into = *next;
    if (qc->multi) {
        into = cJSON_GetObjectItemCaseSensitive(*next, device);
        if (!into)
            into = cJSON_AddObjectToObject(*next, device);
    }
    cJSON_AddNumberToObject(into, key, (double)resume);
}

/* The cursor next as the base64url of its JSON (heap; *len its length). */
static char *cursor_encode(const cJSON *next, size_t *len)
{
    char *js = cJSON_PrintUnformatted(next);
    size_t js_len = strlen(js);
    char *cur = xmalloc(B64URL_LEN(js_len) + 1);

    *len = b64url_encode(js, js_len, cur);
    cJSON_free(js);
    return cur;
}

static void ctx_free(struct query_ctx *qc)
{
    for (size_t k = 0; k < qc->nsubs; k++) {
        store_result_free(qc->subs[k].res);
        store_query_free(qc->subs[k].q);
    }
    store_result_free(qc->page);
    store_query_free(qc->page_q);
    cJSON_Delete(qc->next);
    buf_fini(&qc->out);
    for (size_t i = 0; i < qc->ndevices; i++)
        free(qc->devices[i]);
    free(qc->devices);
    free(qc->subs);
    conn_unref(qc->conn);
    free(qc);
}

static void stream_start(struct query_ctx *qc, struct http_conn *h);

static void finish_query(struct query_ctx *qc)
{
    struct http_conn *h = http_from_conn(qc->conn);
    struct buf b;
    cJSON *next = NULL;
    /* The reply must fit the connection's send budget, or conn_send would close the
     * connection instead of sending it: past the budget the points stop and the cursor
     * resumes every series where its reply stopped. At least one point goes out, so
     * paging always advances. */
    size_t budget = qc->conn->gw->cfg->limits.max_send_queue_bytes, npts = 0;
    size_t reserve, nkeys_out = 0;
    size_t cur_dev = (size_t)-1;
    bool cut = false;

    if (!h)
        goto out;
    if (qc->failed) {
        http_respond_error(h, 500, "storage_error", "query failed");
        goto out;
    }
    if (qc->stream) {
        for (size_t k = 0; k < qc->nsubs; k++)
            for (size_t s = 0; s < qc->subs[k].res->nseries; s++)
                if (qc->subs[k].res->series[s].truncated) {
                    stream_start(qc, h);
                    return;
                }
    }
    reserve = reply_reserve(qc);
    budget = budget > reserve ? budget - reserve : 0;
    buf_init(&b);
    if (qc->csv)
        buf_append_str(&b, qc->multi ? "ts,device,key,value\n" : "ts,key,value\n");
    else
        buf_append_str(&b, qc->multi ? "{\"devices\":{" : "{");
    for (size_t k = 0; k < qc->nsubs; k++) {
        struct sub_query *sq = &qc->subs[k];
        const char *device = qc->devices[sq->dev];

        if (!qc->csv && qc->multi && sq->dev != cur_dev && !cut) {
            if (cur_dev != (size_t)-1)
                buf_append_str(&b, "}");
            buf_append_str(&b, cur_dev != (size_t)-1 ? "," : "");
            buf_append_json_str(&b, device, strlen(device));
            buf_append_str(&b, ":{");
            cur_dev = sq->dev;
            nkeys_out = 0;
        }
        for (size_t s = 0; s < sq->res->nseries; s++) {
            struct store_series *se = &sq->res->series[s];
            bool more = se->truncated && se->npoints > 0;
            size_t i = 0;
            int64_t resume = sq->q->desc ? sq->q->to_ms : sq->q->from_ms;

            if (!cut) {
                if (!qc->csv) {
                    if (nkeys_out++)
                        buf_append_str(&b, ",");
                    buf_append_json_str(&b, se->key, strlen(se->key));
                    buf_append_str(&b, ":[");
                }
                for (; i < se->npoints; i++, npts++) {
                    size_t before = b.len;
                    write_point(qc, device, se->key, &se->points[i], i == 0, &b);
                    if (b.len > budget && npts > 0) {
                        b.len = before;
                        cut = true;
                        break;
                    }
                }
                if (!qc->csv)
                    buf_append_str(&b, "]");
            }
            if (cut && i < se->npoints)
                more = true;
            if (more) {
                if (i > 0)
                    resume = store_query_resume(sq->q, se->points[i - 1].ts_ms);
                cursor_add(&next, qc, device, se->key, resume);
            }
        }
    }
    if (!qc->csv && qc->multi)
        buf_append_str(&b, cur_dev != (size_t)-1 ? "}}" : "}");
    {
        size_t cur_len = 0;
        char *cur = next ? cursor_encode(next, &cur_len) : NULL;
        char *hdr = NULL;
        if (cur) {
            hdr = xmalloc(cur_len + 64);
            snprintf(hdr, cur_len + 64, "X-Gale-Next-Cursor: %.*s\r\n", (int)cur_len, cur);
            if (!qc->csv) {
                buf_append_str(&b, ",\"_next\":");
                buf_append_json_str(&b, cur, cur_len);
            }
        }
        if (!qc->csv)
            buf_append_str(&b, "}");
        http_respond(h, 200, qc->csv ? "text/csv; charset=utf-8" : REST_JSON, b.data, b.len,
                     hdr);
        free(hdr);
        free(cur);
    }
    cJSON_Delete(next);
    buf_fini(&b);
out:
    ctx_free(qc);
}

/* ---- a streamed CSV ---- */

static struct store_query *query_new(const struct store_query *base, const char *device,
                                     char *const *keys, size_t nkeys);

static void pump(struct query_ctx *qc, struct http_conn *h);

static void on_stream_ready(void *ctx, struct http_conn *h, bool closed)
{
    struct query_ctx *qc = ctx;
    if (closed)
        ctx_free(qc);
    else
        pump(qc, h);
}

static void on_page_done(void *ctx, struct store_query *q, struct store_result *res)
{
    struct query_ctx *qc = ctx;
    struct http_conn *h = http_from_conn(qc->conn);

    qc->page_q = q;
    qc->page = res;
    qc->at_point = 0;
    if (!h) { /* the client went away: the paging ends here */
        ctx_free(qc);
        return;
    }
    if (res->rc != 0) {
        /* the head is sent: only a body without its last chunk says it is incomplete */
        conn_close(qc->conn, "telemetry query failed while streaming");
        ctx_free(qc);
        return;
    }
    pump(qc, h);
}

static void stream_start(struct query_ctx *qc, struct http_conn *h)
{
    enum http_stream_rc rc =
        http_stream_begin(h, 200, "text/csv; charset=utf-8", NULL, "X-Gale-Next-Cursor");

    if (rc != HTTP_STREAM_MORE) {
        if (rc == HTTP_STREAM_WAIT)
            http_stream_end(h, NULL); /* HEAD */
        ctx_free(qc);
        return;
    }
    buf_append_str(&qc->out, qc->multi ? "ts,device,key,value\n" : "ts,key,value\n");
    pump(qc, h);
}

/* Hands the rows gathered to the connection. */
static enum http_stream_rc flush(struct query_ctx *qc, struct http_conn *h)
{
    enum http_stream_rc rc = http_stream_write(h, qc->out.data, qc->out.len);
    qc->out.len = 0;
    return rc;
}

/* Asks for the next page of key after a page of query q ended at resume. */
static void read_on(struct rest *r, struct query_ctx *qc, const struct store_query *q,
                    const char *key, int64_t resume)
{
    char *k = xstrdup(key);
    struct store_query *nq = query_new(q, q->device, &k, 1);
    size_t left = qc->limit - qc->sent;

    free(k);
    if (nq->desc)
        nq->to_ms = resume;
    else
        nq->from_ms = resume;
    nq->limit = left < STREAM_PAGE_POINTS ? left : STREAM_PAGE_POINTS;
    store_result_free(qc->page); /* key may have pointed into it: copied above */
    store_query_free(qc->page_q);
    qc->page = NULL;
    qc->page_q = NULL;
    if (store_query_telemetry(r->store, nq, on_page_done, qc) != 0) {
        struct store_result *res = xcalloc(1, sizeof *res);
        res->rc = GW_ESTORE;
        on_page_done(qc, NULL, res);
    }
}

/* Writes rows until the send queue is over its mark (then waits for it), a key needs
 * its next page (then asks for it), or everything is written (then ends the reply). */
static void pump(struct query_ctx *qc, struct http_conn *h)
{
    struct rest *r = qc->rest;
    /* a chunk at the send queue's mark (a quarter of the budget) must still fit it */
    size_t budget = qc->conn->gw->cfg->limits.max_send_queue_bytes;
    size_t flush_bytes = budget / 4 < STREAM_FLUSH_BYTES ? budget / 4 : STREAM_FLUSH_BYTES;

    while (qc->at_sub < qc->nsubs) {
        struct sub_query *sq = &qc->subs[qc->at_sub];
        const char *device = qc->devices[sq->dev];
        const struct store_query *q = qc->page ? qc->page_q : sq->q;
        struct store_series *se;
        bool more;

        if (qc->at_series == sq->res->nseries) {
            store_result_free(sq->res); /* written: only the sub-queries to come stay */
            sq->res = NULL;
            qc->at_sub++;
            qc->at_series = 0;
            continue;
        }
        se = qc->page ? (qc->page->nseries ? &qc->page->series[0] : NULL)
                      : &sq->res->series[qc->at_series];
        for (; se && qc->at_point < se->npoints; qc->at_point++, qc->sent++) {
            enum http_stream_rc rc;
            write_point(qc, device, se->key, &se->points[qc->at_point], false, &qc->out);
            if (qc->out.len < flush_bytes || (rc = flush(qc, h)) == HTTP_STREAM_MORE)
                continue;
            if (rc == HTTP_STREAM_CLOSED) { /* the client went away */
                ctx_free(qc);
                return;
            }
            qc->at_point++;
            qc->sent++;
            http_stream_wait(h, on_stream_ready, qc);
            return;
        }
        more = se && se->truncated && se->npoints > 0;
        if (more) {
            int64_t resume = store_query_resume(q, se->points[se->npoints - 1].ts_ms);
            if (qc->sent < qc->limit) {
                read_on(r, qc, q, se->key, resume);
                return;
            }
            cursor_add(&qc->next, qc, device, se->key, resume);
        }
        store_result_free(qc->page);
        store_query_free(qc->page_q);
        qc->page = NULL;
        qc->page_q = NULL;
        qc->at_series++;
        qc->at_point = 0;
        qc->sent = 0;
    }
    {
        size_t cur_len = 0;
        char *cur = qc->next ? cursor_encode(qc->next, &cur_len) : NULL;
        char *trailer = NULL;

        if (cur) {
            trailer = xmalloc(cur_len + 64);
            snprintf(trailer, cur_len + 64, "X-Gale-Next-Cursor: %.*s\r\n", (int)cur_len, cur);
        }
        if (flush(qc, h) != HTTP_STREAM_CLOSED)
            http_stream_end(h, trailer);
        free(trailer);
        free(cur);
    }
    ctx_free(qc);
}

static void on_query_done(void *ctx, struct store_query *q, struct store_result *res)
{
    struct sub_query *sq = ctx;
    struct query_ctx *qc = sq->qc;

    sq->q = q;
    sq->res = res;
    if (res->rc != 0)
        qc->failed = true;
    if (--qc->pending == 0)
        finish_query(qc);
}

/* What the parameters ask for, checked; the keys and cursor starts point into bufs. */
struct query_spec {
    struct store_query base;  /* device, keys unset */
    bool csv;
    bool stream;              /* CSV streamed: base.limit is a page, limit the caller's */
    size_t limit;
    char *keys[MAX_QUERY_KEYS];
    size_t nkeys;
    cJSON *cursor;            /* owned; {"key":n} or {"device":{"key":n}} */
    char keybuf[4096];
};

static const char *const single_params[] = {"keys", "from", "to", "limit", "order", "agg",
                                            "interval", "tz", "cursor", "format", NULL};
static const char *const multi_params[] = {"devices", "keys", "from", "to", "limit", "order",
                                           "agg", "interval", "tz", "cursor", "format", NULL};

static bool bad(struct http_conn *h, const char *msg)
{
    http_respond_error(h, 400, "bad_param", msg);
    return false;
}

/* A cursor this server issued maps 1..64 keys to numbers (per device when multi). */
static bool cursor_ok(const cJSON *cur, bool multi)
{
    const cJSON *d, *k;
    size_t n = 0;

    if (!cJSON_IsObject(cur) || !cur->child)
        return false;
    cJSON_ArrayForEach(d, cur)
    {
        const cJSON *keys = multi ? d : cur;
        if (multi && (!cJSON_IsObject(d) || !d->child))
            return false;
        cJSON_ArrayForEach(k, keys)
            if (!cJSON_IsNumber(k) || ++n > (multi ? MAX_QUERY_KEYS * MAX_QUERY_DEVICES
                                                   : MAX_QUERY_KEYS))
                return false;
        if (!multi)
            break;
    }
    return true;
}

static bool parse_spec(struct rest *r, struct http_conn *h, struct http_req *req, bool multi,
                       struct query_spec *sp)
{
    char val[4096];
    int64_t n, now = gw_now_ms();
    struct store_query *b = &sp->base;
    const char *accept = http_header(req, "Accept");

    if (!rest_check_params(h, req, multi ? multi_params : single_params))
        return false;
    memset(b, 0, sizeof *b);
    b->from_ms = 0;
    b->to_ms = INT64_MAX;
    b->limit = DEFAULT_LIMIT;
    if (http_query_param(req, "from", val, sizeof val) && !parse_time(val, now, &b->from_ms))
        return bad(h, "from must be epoch ms, RFC 3339 (2026-03-29T00:00:00Z) or relative "
                      "(now, -1h, now-15m)");
    if (http_query_param(req, "to", val, sizeof val) && !parse_time(val, now, &b->to_ms))
        return bad(h, "to must be epoch ms, RFC 3339 (2026-03-29T00:00:00Z) or relative "
                      "(now, -1h, now-15m)");
    if (http_query_param(req, "limit", val, sizeof val)) {
        if (!parse_i64(val, &n) || n < 1 || n > MAX_LIMIT)
            return bad(h, "limit must be an integer 1..100000");
        b->limit = (size_t)n;
    }
    if (http_query_param(req, "order", val, sizeof val)) {
        if (strcasecmp(val, "asc") != 0 && strcasecmp(val, "desc") != 0)
            return bad(h, "order must be asc or desc");
        b->desc = strcasecmp(val, "desc") == 0;
    }
    if (http_query_param(req, "agg", val, sizeof val) && !parse_agg(val, &b->agg))
        return bad(h, "agg must be avg, min, max, sum, count, first, last or none");
    if (http_query_param(req, "interval", val, sizeof val)) {
        if (b->agg == STORE_AGG_NONE)
            return bad(h, "interval needs agg (avg, min, max, sum, count, first or last)");
        if (!parse_duration(val, &b->interval_ms))
            return bad(h, "interval must be a duration (30s, 5m, 1h, 1d, 1w) or milliseconds");
    } else if (b->agg != STORE_AGG_NONE) {
        return bad(h, "agg needs interval (a duration such as 5m or 1h, or milliseconds)");
    }
    if (http_query_param(req, "tz", val, sizeof val)) {
        const struct rest_tz *z;
        if (b->agg == STORE_AGG_NONE || b->interval_ms % DAY_MS != 0)
            return bad(h, "tz needs agg and an interval of whole days (1d, 7d)");
        z = tz_get(r, val);
        if (!z)
            return bad(h, "tz must be a time zone of the tz database, e.g. Europe/Berlin");
        b->tz = xmalloc(z->nspans * sizeof *b->tz);
        memcpy(b->tz, z->spans, z->nspans * sizeof *b->tz);
        b->ntz = z->nspans;
    }
    if (b->from_ms > b->to_ms)
        return bad(h, "from is after to");
    sp->csv = accept && strstr(accept, "text/csv") != NULL;
    if (http_query_param(req, "format", val, sizeof val)) {
        if (strcasecmp(val, "csv") != 0 && strcasecmp(val, "json") != 0)
            return bad(h, "format must be json or csv");
        sp->csv = strcasecmp(val, "csv") == 0;
    }
    sp->limit = b->limit;
    sp->stream = sp->csv && b->limit > STREAM_PAGE_POINTS &&
                 (req->http_major > 1 || (req->http_major == 1 && req->http_minor >= 1));
    if (sp->stream)
        b->limit = STREAM_PAGE_POINTS;
    if (http_query_param(req, "cursor", val, sizeof val)) {
        size_t len;
        char *js = b64url_decode(val, &len);
        sp->cursor = js ? cJSON_ParseWithLength(js, len) : NULL;
        free(js);
        if (!cursor_ok(sp->cursor, multi))
            return bad(h, "cursor is not one this server issued");
    }
    if (http_query_param(req, "keys", sp->keybuf, sizeof sp->keybuf) && sp->keybuf[0]) {
        char *save = NULL;
        for (char *k = strtok_r(sp->keybuf, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
            if (sp->nkeys == MAX_QUERY_KEYS)
                return bad(h, "at most 64 keys per query");
            sp->keys[sp->nkeys++] = k;
        }
    }
    return true;
}

static void spec_fini(struct query_spec *sp)
{
    free(sp->base.tz);
    cJSON_Delete(sp->cursor);
}

static struct store_query *query_new(const struct store_query *base, const char *device,
                                     char *const *keys, size_t nkeys)
{
    struct store_query *q = xcalloc(1, sizeof *q);

    *q = *base;
    q->device = xstrdup(device);
    q->keys = nkeys ? xmalloc(nkeys * sizeof *q->keys) : NULL;
    for (size_t k = 0; k < nkeys; k++)
        q->keys[k] = xstrdup(keys[k]);
    q->nkeys = nkeys;
    if (base->tz) {
        q->tz = xmalloc(base->ntz * sizeof *q->tz);
        memcpy(q->tz, base->tz, base->ntz * sizeof *q->tz);
    }
    return q;
}

static void add_sub(struct query_ctx *qc, size_t dev, struct store_query *q)
{
    struct sub_query *sq = &qc->subs[qc->nsubs++];
    sq->qc = qc;
    sq->q = q;
    sq->dev = dev;
}

/* Starts every sub-query of qc (their queries set in qc->subs[i].q); the reply goes out
 * when the last one is back. */
static void run(struct rest *r, struct query_ctx *qc)
{
    size_t n = qc->nsubs;

    qc->pending = n;
    qc->rest = r;
    conn_ref(qc->conn);
    for (size_t i = 0; i < n; i++) {
        struct sub_query *sq = &qc->subs[i];
        struct store_query *q = sq->q;
        sq->q = NULL; /* the store owns it until on_query_done */
        if (store_query_telemetry(r->store, q, on_query_done, sq) != 0) {
            struct store_result *res = xcalloc(1, sizeof *res);
            res->rc = GW_ESTORE;
            on_query_done(sq, NULL, res);
        }
    }
}

/* Sub-queries for one device: one for all keys, or one per key of the cursor (each with
 * its own start). cur: the device's part of the cursor or NULL. */
static void add_device(struct query_ctx *qc, const struct query_spec *sp, size_t dev,
                       const cJSON *cur)
{
    const cJSON *it;

    if (!cur) {
        add_sub(qc, dev, query_new(&sp->base, qc->devices[dev], sp->keys, sp->nkeys));
        return;
    }
    cJSON_ArrayForEach(it, cur)
    {
        char *key = it->string;
        struct store_query *q = query_new(&sp->base, qc->devices[dev], &key, 1);
        if (q->desc)
            q->to_ms = (int64_t)it->valuedouble;
        else
            q->from_ms = (int64_t)it->valuedouble;
        add_sub(qc, dev, q);
    }
}

static struct query_ctx *ctx_new(struct http_conn *h, bool multi, const struct query_spec *sp,
                                 size_t ndev, size_t nsubs)
{
    struct query_ctx *qc = xcalloc(1, sizeof *qc);
    qc->conn = http_conn_of(h);
    qc->multi = multi;
    qc->csv = sp->csv;
    qc->stream = sp->stream;
    qc->limit = sp->limit;
    buf_init(&qc->out);
    qc->devices = xcalloc(ndev ? ndev : 1, sizeof *qc->devices);
    qc->subs = xcalloc(nsubs ? nsubs : 1, sizeof *qc->subs);
    return qc;
}

void rest_telemetry_get(struct rest *r, struct http_conn *h, struct http_req *req,
                        struct device *dev)
{
    struct query_spec *sp = xcalloc(1, sizeof *sp);
    struct query_ctx *qc;

    if (!parse_spec(r, h, req, false, sp))
        goto out;
    qc = ctx_new(h, false, sp, 1, sp->cursor ? (size_t)cJSON_GetArraySize(sp->cursor) : 1);
    qc->devices[qc->ndevices++] = xstrdup(dev->id);
    add_device(qc, sp, 0, sp->cursor);
    run(r, qc);
out:
    spec_fini(sp);
    free(sp);
}

void rest_telemetry_query(struct rest *r, struct http_conn *h, struct http_req *req,
                          const struct api_key *key)
{
    struct query_spec *sp = xcalloc(1, sizeof *sp);
    char list[4096];
    char *ids[MAX_QUERY_DEVICES];
    size_t nids = 0, nsubs = 0;
    struct query_ctx *qc;

    if (!parse_spec(r, h, req, true, sp))
        goto out;
    if (sp->cursor) {
        const cJSON *d;
        cJSON_ArrayForEach(d, sp->cursor)
        {
            if (nids == MAX_QUERY_DEVICES || !devices_valid_id(d->string, strlen(d->string))) {
                bad(h, "cursor is not one this server issued");
                goto out;
            }
            ids[nids++] = d->string;
            nsubs += (size_t)cJSON_GetArraySize(d);
        }
    } else {
        char *save = NULL;
        if (!http_query_param(req, "devices", list, sizeof list) || !list[0]) {
            bad(h, "devices is required: a comma-separated list of device ids");
            goto out;
        }
        for (char *id = strtok_r(list, ",", &save); id; id = strtok_r(NULL, ",", &save)) {
            if (nids == MAX_QUERY_DEVICES) {
                bad(h, "at most 64 devices per query");
                goto out;
            }
            ids[nids++] = id;
        }
        nsubs = nids;
    }
    for (size_t i = 0; i < nids; i++) {
        if (!devices_find(r->gw->devices, ids[i]) || !keys_allows_device(key, ids[i])) {
            struct buf msg;
            buf_init(&msg);
            buf_printf(&msg, "no such device: %.64s", ids[i]);
            http_respond_error(h, 404, "not_found", buf_cstr(&msg));
            buf_fini(&msg);
            goto out;
        }
    }
    qc = ctx_new(h, true, sp, nids, nsubs);
    for (size_t i = 0; i < nids; i++) {
        qc->devices[qc->ndevices++] = xstrdup(ids[i]);
        add_device(qc, sp, i,
                   sp->cursor ? cJSON_GetObjectItemCaseSensitive(sp->cursor, ids[i]) : NULL);
    }
    run(r, qc);
out:
    spec_fini(sp);
    free(sp);
}
