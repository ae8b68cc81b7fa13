/* web/rest.c: REST routes (DESIGN.md "Interfaces") and the dashboard files; the
 * operations routes and /metrics are web/ops.c's, offered every request first.
 * Requests arrive complete from protocols/http; most answers come from the loop's
 * hot state (devices, presence, latest values) at once. Telemetry range queries run
 * on the libuv work pool (storage/query.c) and answer in their completion callback;
 * writes (device changes, HTTP telemetry) answer once storage reports them durable.
 * Errors are {"error":"...","code":"..."}.
 * Loop thread only. */
#include "web/rest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "gateway/tls.h"
#include "protocols/http/http.h"
#include "storage/store.h"
#include "web/assets.h"
#include "web/auth.h"
#include "web/commands.h"
#include "web/ops.h"

#define JSON "application/json"
#define MAX_QUERY_KEYS 64
#define DEFAULT_LIMIT 1000
#define MAX_LIMIT 100000

struct rest {
    struct http_server srv;         /* the HTTP listener's ctx; srv.ctx is this */
    struct gw *gw;
    struct store *store;            /* device writes and telemetry queries */
    struct commands *commands;
    struct ops *ops;                /* operations routes (web/ops.h), or NULL */
    rest_upgrade_fn on_upgrade;     /* NULL: upgrade requests are plain requests */
    void *upgrade_ctx;
    rest_device_deleted_fn on_device_deleted; /* NULL: nothing else to forget */
    void *device_deleted_ctx;
};

/* A reply that waits for a durable commit; freed by on_reply_durable. */
struct pending_reply {
    int status;
    struct buf body;
    char *undo_device;   /* device to forget if the commit fails (creation) */
};

static void reply_json(struct http_conn *h, int status, struct buf *b)
{
    http_respond(h, status, JSON, b->data, b->len, NULL);
}

static bool authorized(struct gw *gw, const struct http_req *req)
{
    return auth_api_key_ok(gw, http_bearer(req));
}

static void method_not_allowed(struct http_conn *h, const char *allow)
{
    char hdr[96], body[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":\"method not allowed (allowed: %s)\",\"code\":\"method_not_allowed\"}",
                     allow);
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    http_respond(h, 405, JSON, body, (size_t)n, hdr);
}

/* ---- durable replies ---- */

static void on_reply_durable(struct conn *c, uint64_t tag, int ok)
{
    struct pending_reply *p = (struct pending_reply *)(uintptr_t)tag;
    struct http_conn *h = ok >= 0 ? http_from_conn(c) : NULL;
    if (!ok && p->undo_device)
        devices_remove(c->gw->devices, p->undo_device);
    if (h) {
        if (ok)
            http_respond(h, p->status, JSON, p->body.data, p->body.len, NULL);
        else
            http_respond_error(h, 503, "storage_error", "storage failure: nothing was stored");
    }
    buf_fini(&p->body);
    free(p->undo_device);
    free(p);
}

static void reply_when_durable(struct http_conn *h, const struct ticket *t, int status, struct buf *body,
                               const char *undo_device)
{
    struct pending_reply *p = xcalloc(1, sizeof *p);
    p->status = status;
    p->body = *body; /* takes the bytes */
    buf_init(body);
    p->undo_device = undo_device ? xstrdup(undo_device) : NULL;
    gw_await_durable(http_conn_of(h), t, (uint64_t)(uintptr_t)p, on_reply_durable);
}

/* ---- devices ---- */

static void device_create(struct rest *r, struct http_conn *h, struct http_req *req)
{
    struct gw *gw = r->gw;
    struct ticket t;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(root, "role");
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(root, "attributes");
    char token[64], hash[DEVICE_TOKEN_HASH_HEX + 1];
    enum device_role dev_role = DEVICE_ROLE_DEVICE;
    struct device *dev;
    struct buf b;
    char *attrs_json = NULL;
    const char *role_name;
    uint64_t seq;

    if (!root || !cJSON_IsObject(root)) {
        http_respond_error(h, 400, "bad_json", "body must be a JSON object like {\"id\":\"dev-1\"}");
        goto out;
    }
    if (!cJSON_IsString(id) || !devices_valid_id(id->valuestring, strlen(id->valuestring))) {
        http_respond_error(h, 400, "invalid_id",
                           "id must be 1-64 characters of A-Z a-z 0-9 _ . : -");
        goto out;
    }
    if (role &&
        (!cJSON_IsString(role) || devices_role_parse(role->valuestring, &dev_role) != 0)) {
        http_respond_error(h, 400, "invalid_role", "role must be \"device\" or \"app\"");
        goto out;
    }
    if (attrs && !cJSON_IsObject(attrs)) {
        http_respond_error(h, 400, "invalid_attributes", "attributes must be a JSON object");
        goto out;
    }
    if (devices_find(gw->devices, id->valuestring)) {
        http_respond_error(h, 409, "exists", "a device with this id exists");
        goto out;
    }
    devices_new_token(token);
    devices_hash_token(gw->token_secret, token, strlen(token), hash);
    if (attrs)
        attrs_json = cJSON_PrintUnformatted(attrs);
    dev = devices_create(gw->devices, id->valuestring, hash, dev_role, attrs_json, gw_now_ms(),
                         &seq);
    role_name = devices_role_name(dev->role);
    buf_init(&b);
    buf_append_str(&b, "{\"id\":");
    buf_append_json_str(&b, dev->id, strlen(dev->id));
    buf_append_str(&b, ",\"token\":");
    buf_append_json_str(&b, token, strlen(token));
    buf_append_str(&b, ",\"role\":");
    buf_append_json_str(&b, role_name, strlen(role_name));
    buf_append_str(&b, "}");
    log_info("device=%s created role=%s", dev->id, role_name);
    t = ticket_one(seq);
    reply_when_durable(h, &t, 201, &b, dev->id);
    OPENSSL_cleanse(token, sizeof token);
out:
    cJSON_free(attrs_json);
    cJSON_Delete(root);
}

static void device_list(struct gw *gw, struct http_conn *h)
{
    size_t n;
    struct device **arr = devices_sorted(gw->devices, &n);
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"devices\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append_str(&b, ",");
        devices_write_json(arr[i], &b);
    }
    buf_printf(&b, "],\"count\":%zu}", n);
    reply_json(h, 200, &b);
    buf_fini(&b);
    free(arr);
}

static void device_delete(struct rest *r, struct http_conn *h, struct device *dev)
{
    struct gw *gw = r->gw;
    char id[DEVICE_ID_MAX + 1];
    struct buf b;
    struct ticket t;
    struct conn *self = http_conn_of(h), *c;
    struct conn_iter it;

    snprintf(id, sizeof id, "%s", dev->id);
    t = ticket_one(devices_delete(gw->devices, id));
    conn_iter_begin(&it, gw->conns);
    while ((c = conn_iter_next(&it)) != NULL)
        if (c != self && strcmp(c->device, id) == 0)
            conn_close(c, "device deleted");
    if (r->on_device_deleted) /* after the closes, so no presence update follows it */
        r->on_device_deleted(r->device_deleted_ctx, id, &t);
    log_info("device=%s deleted", id);
    buf_init(&b);
    buf_append_str(&b, "{\"deleted\":");
    buf_append_json_str(&b, id, strlen(id));
    buf_append_str(&b, "}");
    reply_when_durable(h, &t, 200, &b, NULL);
}

static void device_patch(struct rest *r, struct http_conn *h, struct http_req *req,
                         struct device *dev)
{
    struct gw *gw = r->gw;
    struct ticket t;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(root, "attributes");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    char token[64] = "";
    struct buf b;

    if (!root || !cJSON_IsObject(root) || (!attrs && !tok)) {
        http_respond_error(h, 400, "bad_json",
                           "body must be {\"attributes\":{...}} and/or {\"token\":\"rotate\"}");
        goto out;
    }
    if (attrs && !cJSON_IsObject(attrs)) {
        http_respond_error(h, 400, "invalid_attributes", "attributes must be a JSON object");
        goto out;
    }
    if (tok && !(cJSON_IsString(tok) && strcmp(tok->valuestring, "rotate") == 0)) {
        http_respond_error(h, 400, "invalid_token", "token may only be \"rotate\"");
        goto out;
    }
    if (attrs) {
        char *s = cJSON_PrintUnformatted(attrs);
        free(dev->attrs_json);
        dev->attrs_json = xstrdup(s);
        cJSON_free(s);
    }
    if (tok) {
        devices_new_token(token);
        devices_hash_token(gw->token_secret, token, strlen(token), dev->token_hash);
    }
    t = ticket_one(devices_save(gw->devices, dev));
    buf_init(&b);
    devices_write_json(dev, &b);
    if (token[0]) {
        b.len--; /* reopen the object for the new token */
        buf_append_str(&b, ",\"token\":");
        buf_append_json_str(&b, token, strlen(token));
        buf_append_str(&b, "}");
        OPENSSL_cleanse(token, sizeof token);
    }
    reply_when_durable(h, &t, 200, &b, NULL);
out:
    cJSON_Delete(root);
}

/* ---- telemetry ---- */

/* The one answer to ingest without valid credentials, for known and unknown ids alike,
 * so that it does not tell which device ids exist. */
static void unauthorized_ingest(struct gw *gw, struct http_conn *h)
{
    metrics_auth_failed(&gw->metrics, "http", "bad_device_token");
    http_respond_error(h, 401, "unauthorized", "API key or the device's token required");
}

static void telemetry_post(struct gw *gw, struct http_conn *h, struct http_req *req,
                           struct device *dev)
{
    struct session_result res;
    const char *why, *code;
    const char *tok = http_bearer(req);
    char topic[DEVICE_ID_MAX + 32];
    struct buf b;

    /* the API key, the device's token, or (mutual TLS) the device's certificate */
    if (!authorized(gw, req) &&
        !(tok && devices_check_token(gw->token_secret, dev, tok, strlen(tok))) &&
        !tls_peer_device(http_conn_of(h), dev->id)) {
        unauthorized_ingest(gw, h);
        return;
    }
    if (gw->ingest_paused) {
        http_respond(h, 503, JSON,
                     "{\"error\":\"storage is catching up, retry shortly\",\"code\":\"busy\"}", 62,
                     "Retry-After: 1\r\n");
        return;
    }
    snprintf(topic, sizeof topic, "devices/%s/telemetry", dev->id);
    if (session_ingest(gw, dev, topic, req->body, req->body_len, &res, &why, &code) != 0) {
        http_respond_error(h, 400, code, why);
        return;
    }
    buf_init(&b);
    buf_printf(&b, "{\"stored\":%zu}", res.npoints);
    reply_when_durable(h, &res.ticket, 200, &b, NULL);
}

struct query_ctx {
    struct conn *conn;
    int desc;
    size_t pending;             /* sub-queries still running */
    struct store_result *results[MAX_QUERY_KEYS];
    int64_t starts_ms[MAX_QUERY_KEYS]; /* where results[i]'s query began (from, or to
                                        * when descending): a cut series resumes there */
    size_t nresults;
    bool failed;
};

/* Bytes a telemetry reply may take on top of its points: the _next cursor (every key,
 * escaped, as JSON and then base64url) in the body, the same cursor as a header, and the
 * status line with the other headers. */
static size_t reply_reserve(const struct query_ctx *qc)
{
    size_t json = 2;
    for (size_t r = 0; r < qc->nresults; r++)
        for (size_t s = 0; s < qc->results[r]->nseries; s++)
            json += 6 * strlen(qc->results[r]->series[s].key) + 32; /* "k":-1.2345e+18, */
    return B64URL_LEN(json) + 16 + 2048;
}

static void finish_query(struct query_ctx *qc)
{
    struct http_conn *h = http_from_conn(qc->conn);
    if (h) {
        struct buf b;
        cJSON *next = NULL;
        buf_init(&b);
        if (qc->failed) {
            http_respond_error(h, 500, "storage_error", "query failed");
        } else {
            /* The reply must fit the connection's send budget, or conn_send would close
             * the connection instead of sending it: past the budget the points stop and
             * the cursor resumes every series where its reply stopped. At least one point
             * goes out, so paging always advances. */
            size_t budget = qc->conn->gw->cfg->limits.max_send_queue_bytes, nout = 0;
            size_t reserve = reply_reserve(qc), npts = 0;
            bool cut = false;
            budget = budget > reserve ? budget - reserve : 0;
            buf_append_str(&b, "{");
            for (size_t r = 0; r < qc->nresults; r++) {
                struct store_result *res = qc->results[r];
                for (size_t s = 0; s < res->nseries; s++) {
                    struct store_series *se = &res->series[s];
                    bool more = se->truncated && se->npoints > 0;
                    size_t i = 0;
                    int64_t resume = qc->starts_ms[r];
                    if (!cut) {
                        if (nout++)
                            buf_append_str(&b, ",");
                        buf_append_json_str(&b, se->key, strlen(se->key));
                        buf_append_str(&b, ":[");
                        for (; i < se->npoints; i++, npts++) {
                            size_t before = b.len;
                            if (i)
                                buf_append_str(&b, ",");
                            buf_printf(&b, "{\"ts\":%lld,\"value\":",
                                       (long long)se->points[i].ts_ms);
                            devices_write_value_json(&se->points[i], &b);
                            buf_append_str(&b, "}");
                            if (b.len > budget && npts > 0) {
                                b.len = before;
                                cut = true;
                                break;
                            }
                        }
                        buf_append_str(&b, "]");
                    }
                    if (cut && i < se->npoints)
                        more = true;
                    if (more) {
                        if (i > 0) {
                            int64_t last = se->points[i - 1].ts_ms;
                            resume = qc->desc ? last - 1 : last + 1;
                        }
                        if (!next)
                            next = cJSON_CreateObject();
                        cJSON_AddNumberToObject(next, se->key, (double)resume);
                    }
                }
            }
            if (next) {
                char *js = cJSON_PrintUnformatted(next);
                char hdr[1024];
                char *cur = xmalloc(B64URL_LEN(strlen(js)));
                size_t cur_len = b64url_encode(js, strlen(js), cur);
                buf_append_str(&b, ",\"_next\":");
                buf_append_json_str(&b, cur, cur_len);
                snprintf(hdr, sizeof hdr, "X-Gale-Next-Cursor: %.*s\r\n",
                         (int)(cur_len > 900 ? 900 : cur_len), cur);
                buf_append_str(&b, "}");
                http_respond(h, 200, JSON, b.data, b.len, cur_len <= 900 ? hdr : NULL);
                free(cur);
                cJSON_free(js);
                cJSON_Delete(next);
            } else {
                buf_append_str(&b, "}");
                reply_json(h, 200, &b);
            }
        }
        buf_fini(&b);
    }
    for (size_t r = 0; r < qc->nresults; r++)
        store_result_free(qc->results[r]);
    conn_unref(qc->conn);
    free(qc);
}

static void on_query_done(void *ctx, struct store_query *q, struct store_result *res)
{
    struct query_ctx *qc = ctx;
    qc->starts_ms[qc->nresults] = q->desc ? q->to_ms : q->from_ms;
    store_query_free(q);
    if (res->rc != 0)
        qc->failed = true;
    qc->results[qc->nresults++] = res;
    if (--qc->pending == 0)
        finish_query(qc);
}

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

static void telemetry_get(struct rest *r, struct http_conn *h, struct http_req *req,
                          struct device *dev)
{
    char val[4096], cursor[4096];
    struct store_query base;
    struct query_ctx *qc;
    cJSON *cur = NULL;
    int64_t n;
    char *keys[MAX_QUERY_KEYS];
    int64_t starts[MAX_QUERY_KEYS];
    size_t nkeys = 0;

    memset(&base, 0, sizeof base);
    base.from_ms = 0;
    base.to_ms = INT64_MAX;
    base.limit = DEFAULT_LIMIT;
    if (http_query_param(req, "from", val, sizeof val) && !parse_i64(val, &base.from_ms)) {
        http_respond_error(h, 400, "bad_param", "from must be epoch milliseconds");
        return;
    }
    if (http_query_param(req, "to", val, sizeof val) && !parse_i64(val, &base.to_ms)) {
        http_respond_error(h, 400, "bad_param", "to must be epoch milliseconds");
        return;
    }
    if (http_query_param(req, "limit", val, sizeof val)) {
        if (!parse_i64(val, &n) || n < 1 || n > MAX_LIMIT) {
            http_respond_error(h, 400, "bad_param", "limit must be an integer 1..100000");
            return;
        }
        base.limit = (size_t)n;
    }
    if (http_query_param(req, "order", val, sizeof val)) {
        if (strcmp(val, "asc") != 0 && strcmp(val, "desc") != 0) {
            http_respond_error(h, 400, "bad_param", "order must be asc or desc");
            return;
        }
        base.desc = strcmp(val, "desc") == 0;
    }
    if (http_query_param(req, "agg", val, sizeof val)) {
        static const char *const names[] = {"none", "avg", "min",   "max",
                                            "sum",  "count", "first", "last"};
        base.agg = STORE_AGG_NONE;
        for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
            if (strcmp(val, names[i]) == 0)
                base.agg = (enum store_agg)i;
        if (base.agg == STORE_AGG_NONE && strcmp(val, "none") != 0) {
            http_respond_error(h, 400, "bad_param", "agg must be avg, min, max, sum, count, first, last or none");
            return;
        }
    }
    if (base.agg != STORE_AGG_NONE) {
        if (!http_query_param(req, "interval", val, sizeof val) || !parse_i64(val, &n) || n < 1) {
            http_respond_error(h, 400, "bad_param",
                               "agg needs interval (bucket width in milliseconds, >= 1)");
            return;
        }
        base.interval_ms = n;
    }
    if (base.from_ms > base.to_ms) {
        http_respond_error(h, 400, "bad_param", "from is after to");
        return;
    }
    if (http_query_param(req, "cursor", cursor, sizeof cursor)) {
        size_t len;
        char *js = b64url_decode(cursor, &len);
        cJSON *it;
        cur = js ? cJSON_ParseWithLength(js, len) : NULL;
        free(js);
        /* a cursor this server issued maps 1..64 keys to numbers; anything else would
         * start no sub-query, and a request with none would never be answered */
        bool ok = cJSON_IsObject(cur) && cur->child;
        for (it = ok ? cur->child : NULL; it; it = it->next) {
            if (!cJSON_IsNumber(it) || nkeys == MAX_QUERY_KEYS) {
                ok = false;
                break;
            }
            keys[nkeys] = it->string;
            starts[nkeys++] = (int64_t)it->valuedouble;
        }
        if (!ok) {
            cJSON_Delete(cur);
            http_respond_error(h, 400, "bad_param", "cursor is not one this server issued");
            return;
        }
    } else if (http_query_param(req, "keys", val, sizeof val) && val[0]) {
        char *save = NULL;
        for (char *k = strtok_r(val, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
            if (nkeys == MAX_QUERY_KEYS) {
                http_respond_error(h, 400, "bad_param", "at most 64 keys per query");
                return;
            }
            keys[nkeys] = k;
            starts[nkeys++] = base.desc ? base.to_ms : base.from_ms;
        }
    }
    qc = xcalloc(1, sizeof *qc);
    qc->conn = http_conn_of(h);
    qc->desc = base.desc;
    conn_ref(qc->conn);
    /* One sub-query for all keys, or one per key when a cursor gives each its own start. */
    qc->pending = cur ? nkeys : 1;
    for (size_t i = 0; i < qc->pending; i++) {
        struct store_query *q = xcalloc(1, sizeof *q);
        *q = base;
        q->device = xstrdup(dev->id);
        if (cur) {
            q->keys = xmalloc(sizeof(char *));
            q->keys[0] = xstrdup(keys[i]);
            q->nkeys = 1;
            if (base.desc)
                q->to_ms = starts[i];
            else
                q->from_ms = starts[i];
        } else if (nkeys) {
            q->keys = xmalloc(nkeys * sizeof(char *));
            for (size_t k = 0; k < nkeys; k++)
                q->keys[k] = xstrdup(keys[k]);
            q->nkeys = nkeys;
        }
        if (store_query_telemetry(r->store, q, on_query_done, qc) != 0) {
            struct store_result *res = xcalloc(1, sizeof *res);
            res->rc = GW_ESTORE;
            on_query_done(qc, q, res);
        }
    }
    cJSON_Delete(cur);
}

/* ---- misc ---- */

static void health(struct gw *gw, struct http_conn *h)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"status\":\"ok\",\"version\":\"%s\",\"uptime_s\":%lld,\"connections\":%zu,"
               "\"devices\":%zu,\"storage\":{\"queued_rows\":%zu,\"ingest_paused\":%s}}",
               GALE_VERSION, (long long)((gw_now_ms() - gw->started_ms) / 1000),
               conn_registry_count(gw->conns), gw->devices->by_id.len, gw_storage_queued(gw),
               gw->ingest_paused ? "true" : "false");
    reply_json(h, 200, &b);
    buf_fini(&b);
}

static bool serve_asset(struct http_conn *h, const char *path)
{
    if (strcmp(path, "/") == 0)
        path = "/index.html";
    for (const struct asset *a = web_assets; a->path; a++) {
        if (strcmp(a->path, path) == 0) {
            http_respond(h, 200, a->content_type, a->data, a->len,
                         "Cache-Control: no-cache\r\n");
            return true;
        }
    }
    return false;
}

/* Splits "/api/devices/<id>/<rest>" into id and rest; returns false if not that shape. */
static bool split_device_path(const char *path, char *id, size_t idlen, const char **rest)
{
    const char *p = path + strlen("/api/devices/");
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= idlen)
        return false;
    memcpy(id, p, n);
    id[n] = '\0';
    *rest = slash ? slash : "";
    return true;
}

void rest_handle(void *ctx, struct http_conn *h, struct http_req *req)
{
    struct rest *r = ctx;
    struct gw *gw = r->gw;
    const char *path = req->path, *m = req->method, *rest;
    char id[DEVICE_ID_MAX + 2];
    struct device *dev;

    if (req->upgrade && r->on_upgrade) {
        r->on_upgrade(r->upgrade_ctx, h, req);
        return;
    }
    if (strcmp(path, "/api/health") == 0 || strcmp(path, "/healthz") == 0) {
        health(gw, h);
        return;
    }
    if (strcmp(path, "/api/openapi.json") == 0) {
        if (!serve_asset(h, "/openapi.json"))
            http_respond_error(h, 404, "not_found", "no OpenAPI document in this build");
        return;
    }
    if (r->ops && ops_handle(r->ops, h, req, authorized(gw, req)))
        return;
    if (strncmp(path, "/api/", 5) != 0) {
        if ((strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0) && serve_asset(h, path))
            return;
        http_respond_error(h, 404, "not_found", "no such resource");
        return;
    }
    /* device-token ingest is the one API route that takes a device's credentials */
    if (strncmp(path, "/api/devices/", 13) == 0 && split_device_path(path, id, sizeof id, &rest) &&
        strcmp(rest, "/telemetry") == 0 && strcmp(m, "POST") == 0) {
        dev = devices_find(gw->devices, id);
        if (dev)
            telemetry_post(gw, h, req, dev);
        else if (!authorized(gw, req)) /* without credentials an unknown id looks known */
            unauthorized_ingest(gw, h);
        else
            http_respond_error(h, 404, "not_found", "no such device");
        return;
    }
    if (!authorized(gw, req)) {
        metrics_auth_failed(&gw->metrics, "http", "bad_api_key");
        http_respond_error(h, 401, "unauthorized",
                           "missing or wrong API key (Authorization: Bearer <key>)");
        return;
    }
    if (strcmp(path, "/api/devices") == 0) {
        if (strcmp(m, "POST") == 0)
            device_create(r, h, req);
        else if (strcmp(m, "GET") == 0)
            device_list(gw, h);
        else
            method_not_allowed(h, "GET, POST");
        return;
    }
    if (strncmp(path, "/api/devices/", 13) == 0 && split_device_path(path, id, sizeof id, &rest)) {
        dev = devices_find(gw->devices, id);
        if (!dev) {
            http_respond_error(h, 404, "not_found", "no such device");
            return;
        }
        if (rest[0] == '\0') {
            struct buf b;
            if (strcmp(m, "GET") == 0) {
                buf_init(&b);
                devices_write_json(dev, &b);
                reply_json(h, 200, &b);
                buf_fini(&b);
            } else if (strcmp(m, "DELETE") == 0) {
                device_delete(r, h, dev);
            } else if (strcmp(m, "PATCH") == 0) {
                device_patch(r, h, req, dev);
            } else {
                method_not_allowed(h, "GET, PATCH, DELETE");
            }
            return;
        }
        if (strcmp(rest, "/latest") == 0) {
            if (strcmp(m, "GET") == 0) {
                struct buf b;
                buf_init(&b);
                devices_write_latest_json(dev, &b);
                reply_json(h, 200, &b);
                buf_fini(&b);
            } else {
                method_not_allowed(h, "GET");
            }
            return;
        }
        if (strcmp(rest, "/telemetry") == 0) {
            if (strcmp(m, "GET") == 0)
                telemetry_get(r, h, req, dev);
            else
                method_not_allowed(h, "GET, POST");
            return;
        }
        if (strcmp(rest, "/commands") == 0) {
            if (strcmp(m, "POST") == 0)
                commands_post(r->commands, h, req, dev);
            else if (strcmp(m, "GET") == 0)
                commands_list(r->commands, h, dev);
            else
                method_not_allowed(h, "GET, POST");
            return;
        }
        if (strncmp(rest, "/commands/", 10) == 0 && rest[10] && !strchr(rest + 10, '/')) {
            if (strcmp(m, "GET") == 0)
                commands_get(r->commands, h, dev, rest + 10);
            else
                method_not_allowed(h, "GET");
            return;
        }
    }
    http_respond_error(h, 404, "not_found", "no such resource");
}

struct rest *rest_new(struct gw *gw, struct store *store, struct commands *commands)
{
    struct rest *r = xcalloc(1, sizeof *r);
    r->gw = gw;
    r->store = store;
    r->commands = commands;
    r->srv.on_request = rest_handle;
    if (gw->cfg->http.access_log != CONFIG_ACCESS_LOG_OFF)
        r->srv.on_reply = ops_access_log;
    r->srv.ctx = r;
    r->srv.max_header_bytes = gw->cfg->http.max_header_bytes;
    r->srv.max_body_bytes = gw->cfg->http.max_body_bytes;
    return r;
}

void rest_free(struct rest *r)
{
    free(r);
}

struct http_server *rest_http_server(struct rest *r)
{
    return &r->srv;
}

void rest_set_device_deleted_hook(struct rest *r, rest_device_deleted_fn fn, void *ctx)
{
    r->on_device_deleted = fn;
    r->device_deleted_ctx = ctx;
}

void rest_set_ops(struct rest *r, struct ops *ops)
{
    r->ops = ops;
}

void rest_set_upgrade_handler(struct rest *r, rest_upgrade_fn fn, void *ctx)
{
    r->on_upgrade = fn;
    r->upgrade_ctx = ctx;
}
