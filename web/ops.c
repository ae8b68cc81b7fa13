/* web/ops.c: the operations and observability routes (web/ops.h). web/rest.c offers
 * each request here first; what is not ours goes back to it.
 *
 *   GET    /api/ready                      200 once storage loaded and listeners are up
 *   GET    /metrics                        Prometheus text (the key only with
 *                                          http.metrics_auth)
 *   GET    /api/docs                       the API reference page (assets/docs.html)
 *   GET    /api/connections                paging (limit, cursor) and filters
 *   GET    /api/connections/{id}           one connection
 *   DELETE /api/connections/{id}           kick: closes it
 *   GET    /api/mqtt/sessions              paging and a client id prefix
 *   GET    /api/mqtt/sessions/{client}     one session with its subscriptions
 *   DELETE /api/mqtt/sessions/{client}     disconnects it and discards the session
 *   GET    /api/mqtt/subscriptions         every subscription, or one client's
 *   DELETE /api/mqtt/subscriptions         one subscription (?client_id=&filter=)
 *   GET    /api/mqtt/shared                shared subscription groups, members counted
 *   GET    /api/mqtt/retained              retained messages matching ?topic= (a filter)
 *   DELETE /api/mqtt/retained              clears one topic (?topic=)
 *   POST   /api/publish                    a message to any topic, as a client would
 *   GET    /api/bridges                    the upstream bridges' state and counters
 *   GET    /api/info                       version, the listeners' ports, the caller's role
 *
 * Everything here is answered from loop state at once, except removals and publishes
 * that write storage: those answer once the writes are durable. Lists are sorted by
 * their key (connection id, client id, topic) and a cut list carries "_next", a cursor
 * that resumes after the last item (also as the X-Gale-Next-Cursor header). Errors are
 * {"error":"...","code":"..."}. Loop thread only. */
#include "web/ops.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/msg.h"
#include "protocols/http/http.h"
#include "protocols/mqtt/broker.h"
#include "protocols/mqtt/mqtt.h"
#include "protocols/mqtt/mqtt.h"
#include "web/assets.h"
#include "web/keys.h"
#include "web/rest_int.h"

#define JSON "application/json"
#define DEFAULT_LIMIT 100
#define MAX_LIMIT 1000
#define MAX_PARAM 1024 /* bytes of one decoded query parameter */

struct ops {
    struct gw *gw;
    struct mqtt_broker *broker;
    struct ops_bridge bridge;       /* ctx NULL: no bridge */
};

void ops_set_bridge(struct ops *o, const struct ops_bridge *b)
{
    o->bridge = *b;
}

static void bridges(struct ops *o, struct http_conn *h)
{
    struct buf b;
    buf_init(&b);
    if (o->bridge.ctx)
        o->bridge.write_json(o->bridge.ctx, &b);
    else
        buf_append_str(&b, "[]");
    http_respond(h, 200, JSON, b.data, b.len, NULL);
    buf_fini(&b);
}

struct ops *ops_new(struct gw *gw, struct mqtt_broker *broker)
{
    struct ops *o = xcalloc(1, sizeof *o);
    o->gw = gw;
    o->broker = broker;
    return o;
}

void ops_free(struct ops *o)
{
    free(o);
}

/* ---- replies ---- */

static void reply(struct http_conn *h, int status, struct buf *b, const char *headers)
{
    http_respond(h, status, JSON, b->data, b->len, headers);
    buf_fini(b);
}

static bool is(const struct http_req *req, const char *method)
{
    return strcmp(req->method, method) == 0;
}

/* ---- query parameters and paths ---- */


/* ?limit=: 1..MAX_LIMIT, DEFAULT_LIMIT when absent. Answers 400 and returns false when bad. */
static bool parse_limit(struct http_conn *h, const struct http_req *req, size_t *limit)
{
    char val[32], *end;
    long long v;
    *limit = DEFAULT_LIMIT;
    if (!http_query_param(req, "limit", val, sizeof val))
        return true;
    errno = 0;
    v = strtoll(val, &end, 10);
    if (errno || end == val || *end || v < 1 || v > MAX_LIMIT) {
        http_respond_error(h, 400, "bad_param", "limit must be an integer 1..1000");
        return false;
    }
    *limit = (size_t)v;
    return true;
}

/* ?cursor=: a key this module issued (base64url of the last key of a page), decoded into
 * out; "" when absent. Answers 400 and returns false when it is not one. */
static bool parse_cursor(struct http_conn *h, const struct http_req *req, char *out, size_t cap)
{
    char val[MAX_PARAM];
    size_t len;
    char *key;
    out[0] = '\0';
    if (!http_query_param(req, "cursor", val, sizeof val))
        return true;
    key = b64url_decode(val, &len);
    if (!key || len == 0 || len >= cap || memchr(key, '\0', len)) {
        free(key);
        http_respond_error(h, 400, "bad_param", "cursor is not one this server issued");
        return false;
    }
    memcpy(out, key, len);
    out[len] = '\0';
    free(key);
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes the path segment s into out (cap bytes). False when it is malformed,
 * empty, too long or decodes to a NUL. */
static bool decode_segment(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    for (; *s; s++) {
        int c = (unsigned char)*s;
        if (c == '%') {
            int hi = hexval(s[1]), lo = hi >= 0 ? hexval(s[2]) : -1;
            if (lo < 0 || (hi == 0 && lo == 0))
                return false;
            c = hi * 16 + lo;
            s += 2;
        }
        if (n + 1 >= cap)
            return false;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return n > 0;
}

/* Appends "_next" (the cursor of key) to an open JSON object in b and fills hdr with the
 * matching X-Gale-Next-Cursor header. */
static void add_next(struct buf *b, const char *key, char *hdr, size_t hdrcap)
{
    size_t n = strlen(key);
    char *cur = xmalloc(B64URL_LEN(n));
    size_t len = b64url_encode(key, n, cur);
    buf_append_str(b, ",\"_next\":");
    buf_append_json_str(b, cur, len);
    if (len < hdrcap - 32)
        snprintf(hdr, hdrcap, "X-Gale-Next-Cursor: %s\r\n", cur);
    free(cur);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- readiness, metrics, docs ---- */

static void ready(struct ops *o, struct http_conn *h)
{
    struct gw *gw = o->gw;
    const char *state = gw->stopping ? "stopping" : !gw->ready ? "starting" : NULL;
    struct buf b;
    if (!state && !gw->storage.ctx)
        state = "no storage";
    if (state) {
        buf_init(&b);
        buf_printf(&b, "{\"error\":\"not ready: %s\",\"code\":\"not_ready\",\"status\":\"%s\"}",
                   state, state);
        reply(h, 503, &b, "Retry-After: 1\r\n");
        return;
    }
    buf_init(&b);
    buf_append_str(&b, "{\"status\":\"ready\"}");
    reply(h, 200, &b, NULL);
}

static void metrics(struct ops *o, struct http_conn *h)
{
    struct buf b;
    buf_init(&b);
    metrics_render(o->gw, &b);
    if (o->bridge.ctx)
        o->bridge.write_metrics(o->bridge.ctx, &b);
    http_respond(h, 200, "text/plain; version=0.0.4", b.data, b.len, NULL);
    buf_fini(&b);
}

static void docs(struct http_conn *h)
{
    for (const struct asset *a = web_assets; a->path; a++) {
        if (strcmp(a->path, "/docs.html") == 0) {
            http_respond(h, 200, a->content_type, a->data, a->len, "Cache-Control: no-cache\r\n");
            return;
        }
    }
    http_respond_error(h, 404, "not_found", "no API docs page in this build");
}

/* The version and every open listener with its bound port, so that a client (the
 * dashboard's connect snippets) names the real ports rather than the defaults; and the
 * role of the key asking. */
static void info(struct ops *o, struct http_conn *h, const struct http_req *req)
{
    struct gw *gw = o->gw;
    const struct api_key *k = keys_check(gw->keys, http_bearer(req));
    struct buf b;
    int n = 0;
    buf_init(&b);
    buf_printf(&b, "{\"version\":\"%s\",", GALE_VERSION);
    if (k) { /* the key asking: what it may do (the dashboard hides the rest) */
        buf_printf(&b, "\"role\":\"%s\",\"key\":", keys_role_name(k->role));
        buf_append_json_str(&b, k->name, strlen(k->name));
        buf_printf(&b, ",\"all_devices\":%s,", k->ndevices ? "false" : "true");
    }
    buf_append_str(&b, "\"listeners\":[");
    for (int i = 0; i < gw->nlisteners; i++) {
        const struct gw_listener *l = &gw->listeners[i];
        if (!l->open)
            continue;
        buf_append_str(&b, n++ ? ",{\"name\":" : "{\"name\":");
        buf_append_json_str(&b, l->conn.name, strlen(l->conn.name));
        buf_printf(&b, ",\"port\":%d,\"tls\":%s}", l->port, l->conn.tls ? "true" : "false");
    }
    buf_append_str(&b, "]}");
    reply(h, 200, &b, NULL);
}

/* ---- connections ---- */

static void write_conn(struct buf *b, const struct conn *c)
{
    const char *peer;
    buf_printf(b, "{\"id\":%llu,\"peer\":", (unsigned long long)c->id);
    peer = conn_peer(c);
    buf_append_json_str(b, peer, strlen(peer));
    buf_append_str(b, ",\"listener\":");
    buf_append_json_str(b, c->listener->name, strlen(c->listener->name));
    buf_append_str(b, ",\"protocol\":");
    buf_append_json_str(b, c->proto->name, strlen(c->proto->name));
    if (c->x->xport) {
        buf_append_str(b, ",\"transport\":");
        buf_append_json_str(b, c->x->xport->name, strlen(c->x->xport->name));
    }
    buf_printf(b, ",\"tls\":%s,\"device\":", c->x->tls ? "true" : "false");
    if (c->device[0])
        buf_append_json_str(b, c->device, strlen(c->device));
    else
        buf_append_str(b, "null");
    buf_printf(b,
               ",\"connected\":%lld,\"bytes_in\":%llu,\"bytes_out\":%llu,"
               "\"messages_in\":%llu,\"messages_out\":%llu,\"send_queued_bytes\":%zu}",
               (long long)c->connected_ms, (unsigned long long)c->bytes_in,
               (unsigned long long)c->bytes_out, (unsigned long long)c->msgs_in,
               (unsigned long long)c->msgs_out, c->send_queued_bytes);
}

static int cmp_conn_id(const void *a, const void *b)
{
    uint64_t x = (*(struct conn *const *)a)->id, y = (*(struct conn *const *)b)->id;
    return x < y ? -1 : x > y;
}

static void connections_list(struct ops *o, struct http_conn *h, struct http_req *req)
{
    static const char *const params[] = {"limit", "cursor", "protocol", "device", "listener",
                                         "peer", NULL};
    char protocol[64], device[DEVICE_ID_MAX + 1], listener[64], peer[64], after[32];
    bool f_proto, f_dev, f_lis, f_peer;
    size_t limit, n = 0, cap = 64, total;
    struct conn **arr;
    struct conn_iter it;
    struct conn *c;
    uint64_t after_id = 0;
    char hdr[256] = "";
    struct buf b;

    if (!rest_check_params(h, req, params) || !parse_limit(h, req, &limit) ||
        !parse_cursor(h, req, after, sizeof after))
        return;
    if (after[0]) {
        char *end;
        after_id = strtoull(after, &end, 10);
        if (*end) {
            http_respond_error(h, 400, "bad_param", "cursor is not one this server issued");
            return;
        }
    }
    f_proto = http_query_param(req, "protocol", protocol, sizeof protocol);
    f_dev = http_query_param(req, "device", device, sizeof device);
    f_lis = http_query_param(req, "listener", listener, sizeof listener);
    f_peer = http_query_param(req, "peer", peer, sizeof peer);
    arr = xmalloc(cap * sizeof *arr);
    conn_iter_begin(&it, o->gw->conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        if (c->id <= after_id || (f_proto && strcmp(c->proto->name, protocol) != 0) ||
            (f_dev && strcmp(c->device, device) != 0) ||
            (f_lis && strcmp(c->listener->name, listener) != 0) ||
            (f_peer && strncmp(conn_peer(c), peer, strlen(peer)) != 0))
            continue;
        if (n == cap)
            arr = xrealloc(arr, (cap *= 2) * sizeof *arr);
        arr[n++] = c;
    }
    qsort(arr, n, sizeof *arr, cmp_conn_id);
    total = n;
    if (n > limit)
        n = limit;
    buf_init(&b);
    buf_append_str(&b, "{\"connections\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append_str(&b, ",");
        write_conn(&b, arr[i]);
    }
    buf_printf(&b, "],\"count\":%zu", n);
    if (total > n) {
        char key[32];
        snprintf(key, sizeof key, "%llu", (unsigned long long)arr[n - 1]->id);
        add_next(&b, key, hdr, sizeof hdr);
    }
    buf_append_str(&b, "}");
    reply(h, 200, &b, hdr[0] ? hdr : NULL);
    free(arr);
}

static struct conn *find_conn(struct gw *gw, uint64_t id)
{
    struct conn_iter it;
    struct conn *c;
    conn_iter_begin(&it, gw->conns);
    while ((c = conn_iter_next(&it)) != NULL)
        if (c->id == id)
            break;
    conn_iter_end(&it);
    return c;
}

static void connection_one(struct ops *o, struct http_conn *h, struct http_req *req,
                           const char *idtext)
{
    char *end;
    unsigned long long id;
    struct conn *c;
    struct buf b;

    errno = 0;
    id = strtoull(idtext, &end, 10);
    if (errno || end == idtext || *end || id == 0) {
        http_respond_error(h, 400, "bad_param", "a connection id is a positive integer");
        return;
    }
    if (!is(req, "GET") && !is(req, "DELETE")) {
        rest_method_not_allowed(h, "GET, DELETE");
        return;
    }
    if ((c = find_conn(o->gw, id)) == NULL) {
        http_respond_error(h, 404, "not_found", "no such connection");
        return;
    }
    buf_init(&b);
    if (is(req, "GET")) {
        write_conn(&b, c);
        reply(h, 200, &b, NULL);
        return;
    }
    if (c == http_conn_of(h)) {
        buf_fini(&b);
        http_respond_error(h, 409, "self", "a connection cannot kick itself");
        return;
    }
    log_info("conn=%llu peer=%s kicked by api from=%s", id, conn_peer(c),
             conn_peer(http_conn_of(h)));
    conn_close(c, "kicked by the API");
    buf_printf(&b, "{\"kicked\":%llu}", id);
    reply(h, 200, &b, NULL);
}

/* ---- MQTT sessions and subscriptions ---- */

static void write_session(struct buf *b, const struct mqtt_session_info *s)
{
    buf_append_str(b, "{\"client_id\":");
    buf_append_json_str(b, s->client_id, strlen(s->client_id));
    buf_append_str(b, ",\"username\":");
    buf_append_json_str(b, s->username, strlen(s->username));
    buf_append_str(b, ",\"device\":");
    if (s->device[0])
        buf_append_json_str(b, s->device, strlen(s->device));
    else
        buf_append_str(b, "null");
    buf_printf(b, ",\"clean\":%s,\"connected\":%s,\"connection\":", s->clean ? "true" : "false",
               s->conn_id ? "true" : "false");
    if (s->conn_id)
        buf_printf(b, "%llu", (unsigned long long)s->conn_id);
    else
        buf_append_str(b, "null");
    buf_printf(b, ",\"subscriptions\":%zu,\"queued\":%zu,\"inflight\":%zu,\"dropped\":%llu",
               s->subscriptions, s->queued, s->inflight, (unsigned long long)s->dropped);
    /* protocol: the connected client's level (5 = MQTT 5.0), null offline; expiry null =
     * never */
    buf_append_str(b, ",\"protocol\":");
    if (s->protocol)
        buf_printf(b, "%u", (unsigned)s->protocol);
    else
        buf_append_str(b, "null");
    buf_append_str(b, ",\"session_expiry_s\":");
    if (s->session_expiry_s == UINT32_MAX)
        buf_append_str(b, "null");
    else
        buf_printf(b, "%lu", (unsigned long)s->session_expiry_s);
    buf_printf(b, ",\"will_pending\":%s", s->will_pending ? "true" : "false");
    if (s->protocol == 5)
        buf_printf(b, ",\"receive_maximum\":%lu,\"topic_aliases\":%lu",
                   (unsigned long)s->receive_maximum, (unsigned long)s->topic_aliases);
    buf_append_str(b, "}");
}

struct names {
    char **v;
    size_t n, cap;
    const char *prefix;  /* keep only names starting with it ("" = all) */
    const char *after;   /* keep only names sorting after it ("" = all) */
};

static void names_add(struct names *ns, const char *s)
{
    if (strncmp(s, ns->prefix, strlen(ns->prefix)) != 0 ||
        (ns->after[0] && strcmp(s, ns->after) <= 0))
        return;
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? ns->cap * 2 : 64;
        ns->v = xrealloc(ns->v, ns->cap * sizeof *ns->v);
    }
    ns->v[ns->n++] = xstrdup(s);
}

static void names_free(struct names *ns)
{
    for (size_t i = 0; i < ns->n; i++)
        free(ns->v[i]);
    free(ns->v);
}

static void on_session_name(void *ctx, const struct mqtt_session_info *s)
{
    names_add(ctx, s->client_id);
}

static void on_session_json(void *ctx, const struct mqtt_session_info *s)
{
    write_session(ctx, s);
}

static void sessions_list(struct ops *o, struct http_conn *h, struct http_req *req)
{
    static const char *const params[] = {"limit", "cursor", "prefix", NULL};
    char prefix[256] = "", after[MAX_PARAM];
    struct names ns = {0};
    char hdr[1200] = "";
    size_t limit, n;
    struct buf b;

    if (!rest_check_params(h, req, params) || !parse_limit(h, req, &limit) ||
        !parse_cursor(h, req, after, sizeof after))
        return;
    http_query_param(req, "prefix", prefix, sizeof prefix);
    ns.prefix = prefix;
    ns.after = after;
    mqtt_broker_sessions(o->broker, on_session_name, &ns);
    if (ns.n) /* none: ns.v is NULL, which qsort must not be given */
        qsort(ns.v, ns.n, sizeof *ns.v, cmp_str);
    n = ns.n > limit ? limit : ns.n;
    buf_init(&b);
    buf_append_str(&b, "{\"sessions\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append_str(&b, ",");
        mqtt_broker_session(o->broker, ns.v[i], on_session_json, &b);
    }
    buf_printf(&b, "],\"count\":%zu", n);
    if (ns.n > n)
        add_next(&b, ns.v[n - 1], hdr, sizeof hdr);
    buf_append_str(&b, "}");
    reply(h, 200, &b, hdr[0] ? hdr : NULL);
    names_free(&ns);
}

struct subs_out {
    struct buf *b;
    size_t n;
    const char *filter;  /* keep only this exact filter, or NULL */
};

static void on_sub_json(void *ctx, const char *client_id, const char *filter, size_t len,
                        uint8_t qos)
{
    struct subs_out *so = ctx;
    struct mqtt_str share, inner;
    if (so->filter && (strlen(so->filter) != len || memcmp(so->filter, filter, len) != 0))
        return;
    if (so->n++)
        buf_append_str(so->b, ",");
    buf_append_str(so->b, "{\"client_id\":");
    buf_append_json_str(so->b, client_id, strlen(client_id));
    buf_append_str(so->b, ",\"filter\":");
    buf_append_json_str(so->b, filter, len);
    buf_printf(so->b, ",\"qos\":%u", qos);
    if (mqtt_filter_share(filter, len, &share, &inner) == 1) { /* a shared subscription */
        buf_append_str(so->b, ",\"share\":");
        buf_append_json_str(so->b, share.p, share.len);
    }
    buf_append_str(so->b, "}");
}

static void session_one(struct ops *o, struct http_conn *h, struct http_req *req,
                        const char *client_id)
{
    struct buf b;
    if (is(req, "DELETE")) {
        struct ticket t = {0, 0};
        if (mqtt_broker_session_discard(o->broker, client_id, &t) != 0) {
            http_respond_error(h, 404, "not_found", "no such session");
            return;
        }
        log_info("mqtt session discarded by api client=\"%s\"", log_q(client_id));
        buf_init(&b);
        buf_append_str(&b, "{\"deleted\":");
        buf_append_json_str(&b, client_id, strlen(client_id));
        buf_append_str(&b, "}");
        rest_reply_when_durable(h, &t, 200, &b, NULL);
        return;
    }
    if (!is(req, "GET")) {
        rest_method_not_allowed(h, "GET, DELETE");
        return;
    }
    buf_init(&b);
    if (mqtt_broker_session(o->broker, client_id, on_session_json, &b) != 0) {
        buf_fini(&b);
        http_respond_error(h, 404, "not_found", "no such session");
        return;
    }
    {
        struct subs_out so = {&b, 0, NULL};
        b.len--; /* reopen the object for the list */
        buf_append_str(&b, ",\"subscription_list\":[");
        mqtt_broker_subscriptions(o->broker, client_id, on_sub_json, &so);
        buf_append_str(&b, "]}");
    }
    reply(h, 200, &b, NULL);
}

static void subscriptions(struct ops *o, struct http_conn *h, struct http_req *req)
{
    static const char *const params[] = {"client_id", "filter", NULL};
    char client_id[MAX_PARAM], filter[MAX_PARAM];
    bool has_client, has_filter;
    struct buf b;

    if (!rest_check_params(h, req, params))
        return;
    has_client = http_query_param(req, "client_id", client_id, sizeof client_id);
    has_filter = http_query_param(req, "filter", filter, sizeof filter);
    if (is(req, "DELETE")) {
        struct ticket t = {0, 0};
        if (!has_client || !has_filter) {
            http_respond_error(h, 400, "bad_param", "DELETE needs ?client_id= and ?filter=");
            return;
        }
        if (mqtt_broker_session_unsubscribe(o->broker, client_id, filter, &t) != 0) {
            http_respond_error(h, 404, "not_found", "no such session or subscription");
            return;
        }
        buf_init(&b);
        buf_append_str(&b, "{\"deleted\":{\"client_id\":");
        buf_append_json_str(&b, client_id, strlen(client_id));
        buf_append_str(&b, ",\"filter\":");
        buf_append_json_str(&b, filter, strlen(filter));
        buf_append_str(&b, "}}");
        rest_reply_when_durable(h, &t, 200, &b, NULL);
        return;
    }
    if (!is(req, "GET")) {
        rest_method_not_allowed(h, "GET, DELETE");
        return;
    }
    buf_init(&b);
    buf_append_str(&b, "{\"subscriptions\":[");
    {
        struct subs_out so = {&b, 0, has_filter ? filter : NULL};
        if (mqtt_broker_subscriptions(o->broker, has_client ? client_id : NULL, on_sub_json,
                                      &so) != 0) {
            buf_fini(&b);
            http_respond_error(h, 404, "not_found", "no such session");
            return;
        }
        buf_printf(&b, "],\"count\":%zu}", so.n);
    }
    reply(h, 200, &b, NULL);
}

static void on_share_json(void *ctx, const struct mqtt_share_info *g)
{
    struct subs_out *so = ctx;
    if (so->n++)
        buf_append_str(so->b, ",");
    buf_append_str(so->b, "{\"share\":");
    buf_append_json_str(so->b, g->share, g->share_len);
    buf_append_str(so->b, ",\"filter\":");
    buf_append_json_str(so->b, g->filter, strlen(g->filter));
    buf_printf(so->b, ",\"members\":%zu,\"connected\":%zu,\"sent\":%llu}", g->members,
               g->connected, (unsigned long long)g->sent);
}

/* GET /api/mqtt/shared: every group (at most 65535), not paged. */
static void shared_groups(struct ops *o, struct http_conn *h)
{
    struct buf b;
    struct subs_out so = {&b, 0, NULL};
    buf_init(&b);
    buf_append_str(&b, "{\"groups\":[");
    mqtt_broker_shared(o->broker, on_share_json, &so);
    buf_printf(&b, "],\"count\":%zu}", so.n);
    reply(h, 200, &b, NULL);
}

/* ---- retained messages ---- */

struct retained_item {
    char *topic;
    uint8_t *payload;
    size_t len;
    uint8_t qos;
    int64_t ts_ms;
};

struct retained_list {
    struct retained_item *v;
    size_t n, cap;
    const char *after;
};

static void on_retained(void *ctx, const char *topic, const void *payload, size_t len,
                        uint8_t qos, int64_t ts_ms)
{
    struct retained_list *rl = ctx;
    if (rl->after[0] && strcmp(topic, rl->after) <= 0)
        return;
    if (rl->n == rl->cap) {
        rl->cap = rl->cap ? rl->cap * 2 : 64;
        rl->v = xrealloc(rl->v, rl->cap * sizeof *rl->v);
    }
    rl->v[rl->n].topic = xstrdup(topic);
    rl->v[rl->n].payload = xmalloc(len + 1);
    memcpy(rl->v[rl->n].payload, payload, len);
    rl->v[rl->n].len = len;
    rl->v[rl->n].qos = qos;
    rl->v[rl->n++].ts_ms = ts_ms;
}

static int cmp_retained(const void *a, const void *b)
{
    return strcmp(((const struct retained_item *)a)->topic,
                  ((const struct retained_item *)b)->topic);
}

/* A payload as JSON: text when it is valid UTF-8, else standard base64. */
static void write_payload(struct buf *b, const uint8_t *p, size_t len)
{
    if (mqtt_utf8_valid((const char *)p, len)) {
        buf_append_str(b, "\"payload\":");
        buf_append_json_str(b, (const char *)p, len);
        buf_append_str(b, ",\"payload_encoding\":\"plain\"");
        return;
    }
    {
        char *enc = xmalloc(4 * ((len + 2) / 3) + 1);
        int n = EVP_EncodeBlock((unsigned char *)enc, p, (int)len);
        buf_append_str(b, "\"payload\":");
        buf_append_json_str(b, enc, (size_t)n);
        buf_append_str(b, ",\"payload_encoding\":\"base64\"");
        free(enc);
    }
}

static void retained(struct ops *o, struct http_conn *h, struct http_req *req)
{
    static const char *const params[] = {"topic", "limit", "cursor", NULL};
    char topic[MAX_PARAM] = "#", after[MAX_PARAM], hdr[1200] = "";
    struct retained_list rl = {0};
    size_t limit, n;
    struct buf b;
    bool has_topic;

    if (!rest_check_params(h, req, params))
        return;
    has_topic = http_query_param(req, "topic", topic, sizeof topic);
    if (is(req, "DELETE")) {
        struct ticket t = {0, 0};
        if (!has_topic || !mqtt_topic_valid(topic, strlen(topic))) {
            http_respond_error(h, 400, "bad_param",
                               "DELETE needs ?topic= (a topic name, no wildcards)");
            return;
        }
        if (mqtt_broker_retained_clear(o->broker, topic, &t) != 0) {
            http_respond_error(h, 404, "not_found", "no retained message on this topic");
            return;
        }
        buf_init(&b);
        buf_append_str(&b, "{\"deleted\":");
        buf_append_json_str(&b, topic, strlen(topic));
        buf_append_str(&b, "}");
        rest_reply_when_durable(h, &t, 200, &b, NULL);
        return;
    }
    if (!is(req, "GET")) {
        rest_method_not_allowed(h, "GET, DELETE");
        return;
    }
    if (!parse_limit(h, req, &limit) || !parse_cursor(h, req, after, sizeof after))
        return;
    if (!mqtt_filter_valid(topic, strlen(topic))) {
        http_respond_error(h, 400, "bad_param", "topic must be a valid MQTT topic filter");
        return;
    }
    rl.after = after;
    mqtt_broker_retained(o->broker, topic, on_retained, &rl);
    if (rl.n)
        qsort(rl.v, rl.n, sizeof *rl.v, cmp_retained);
    n = rl.n > limit ? limit : rl.n;
    buf_init(&b);
    buf_append_str(&b, "{\"retained\":[");
    for (size_t i = 0; i < n; i++) {
        buf_append_str(&b, i ? ",{\"topic\":" : "{\"topic\":");
        buf_append_json_str(&b, rl.v[i].topic, strlen(rl.v[i].topic));
        buf_append_str(&b, ",");
        write_payload(&b, rl.v[i].payload, rl.v[i].len);
        buf_printf(&b, ",\"qos\":%u,\"bytes\":%zu,\"ts\":%lld}", rl.v[i].qos, rl.v[i].len,
                   (long long)rl.v[i].ts_ms);
    }
    buf_printf(&b, "],\"count\":%zu", n);
    if (rl.n > n)
        add_next(&b, rl.v[n - 1].topic, hdr, sizeof hdr);
    buf_append_str(&b, "}");
    reply(h, 200, &b, hdr[0] ? hdr : NULL);
    for (size_t i = 0; i < rl.n; i++) {
        free(rl.v[i].topic);
        free(rl.v[i].payload);
    }
    free(rl.v);
}

/* ---- publish ---- */

static void publish(struct ops *o, struct http_conn *h, struct http_req *req)
{
    struct gw *gw = o->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *topic = cJSON_GetObjectItemCaseSensitive(root, "topic");
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(root, "payload");
    const cJSON *enc = cJSON_GetObjectItemCaseSensitive(root, "payload_encoding");
    const cJSON *qos = cJSON_GetObjectItemCaseSensitive(root, "qos");
    const cJSON *retain = cJSON_GetObjectItemCaseSensitive(root, "retain");
    static const char *const fields[] = {"topic", "payload", "payload_encoding", "qos", "retain",
                                         NULL};
    unsigned char *bytes = NULL;
    size_t len = 0;
    struct ticket t = {0, 0};
    struct msg *m;
    struct buf b;

    if (!cJSON_IsObject(root)) {
        http_respond_error(h, 400, "bad_json",
                           "body must be a JSON object like "
                           "{\"topic\":\"a/b\",\"payload\":\"hi\"}");
        goto out;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        bool ok = false;
        for (const char *const *f = fields; !ok && *f; f++)
            ok = strcmp(it->string, *f) == 0;
        if (!ok) {
            char msg[160];
            snprintf(msg, sizeof msg, "unknown field \"%.64s\"", it->string);
            http_respond_error(h, 400, "unknown_field", msg);
            goto out;
        }
    }
    if (!cJSON_IsString(topic) ||
        !mqtt_topic_valid(topic->valuestring, strlen(topic->valuestring))) {
        http_respond_error(h, 400, "invalid_topic",
                           "topic must be an MQTT topic name (1..65535 bytes, no + or #)");
        goto out;
    }
    if (topic->valuestring[0] == '$') {
        http_respond_error(h, 400, "invalid_topic", "topics starting with $ are the server's");
        goto out;
    }
    if (payload && !cJSON_IsString(payload)) {
        http_respond_error(h, 400, "invalid_payload", "payload must be a string");
        goto out;
    }
    if (enc && !(cJSON_IsString(enc) && (strcmp(enc->valuestring, "plain") == 0 ||
                                         strcmp(enc->valuestring, "base64") == 0))) {
        http_respond_error(h, 400, "invalid_encoding", "payload_encoding must be plain or base64");
        goto out;
    }
    if (qos && !(cJSON_IsNumber(qos) && (qos->valuedouble == 0 || qos->valuedouble == 1 ||
                                         qos->valuedouble == 2))) {
        http_respond_error(h, 400, "invalid_qos", "qos must be 0, 1 or 2");
        goto out;
    }
    if (retain && !cJSON_IsBool(retain)) {
        http_respond_error(h, 400, "invalid_retain", "retain must be true or false");
        goto out;
    }
    if (payload && enc && strcmp(enc->valuestring, "base64") == 0) {
        size_t in = strlen(payload->valuestring);
        int n;
        bytes = xmalloc(in / 4 * 3 + 3);
        n = in % 4 ? -1 : EVP_DecodeBlock(bytes, (const unsigned char *)payload->valuestring,
                                          (int)in);
        if (n < 0) {
            http_respond_error(h, 400, "invalid_payload", "payload is not base64");
            goto out;
        }
        len = (size_t)n; /* EVP_DecodeBlock counts the padding as zero bytes */
        if (in >= 1 && payload->valuestring[in - 1] == '=')
            len--;
        if (in >= 2 && payload->valuestring[in - 2] == '=')
            len--;
    } else if (payload) {
        len = strlen(payload->valuestring);
        bytes = (unsigned char *)xstrdup(payload->valuestring);
    }
    if (len + strlen(topic->valuestring) + 16 > gw->cfg->mqtt.max_packet_bytes) {
        http_respond_error(h, 413, "payload_too_large",
                           "the message would exceed mqtt.max_packet_bytes");
        goto out;
    }
    m = msg_new(MSG_PLAIN, NULL, topic->valuestring, bytes ? bytes : (const unsigned char *)"",
                len, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = qos ? (uint8_t)qos->valuedouble : 0;
    m->retain = cJSON_IsTrue(retain);
    /* the writes routing causes (a retained topic, persistent sessions' queues) join t */
    bus_publish(gw->bus, m, &t);
    buf_init(&b);
    buf_append_str(&b, "{\"topic\":");
    buf_append_json_str(&b, m->topic, strlen(m->topic));
    buf_printf(&b, ",\"qos\":%u,\"retain\":%s,\"bytes\":%zu}", m->qos, m->retain ? "true" : "false",
               len);
    msg_unref(m);
    rest_reply_when_durable(h, &t, 200, &b, NULL);
out:
    free(bytes);
    cJSON_Delete(root);
}

/* ---- routing ---- */

bool ops_handle(struct ops *o, struct http_conn *h, struct http_req *req, bool authorized)
{
    const char *path = req->path;
    char seg[MAX_PARAM];

    if (strcmp(path, "/api/ready") == 0) {
        if (is(req, "GET") || is(req, "HEAD"))
            ready(o, h);
        else
            rest_method_not_allowed(h, "GET");
        return true;
    }
    if (strcmp(path, "/api/docs") == 0) {
        if (is(req, "GET") || is(req, "HEAD"))
            docs(h);
        else
            rest_method_not_allowed(h, "GET");
        return true;
    }
    if (strcmp(path, "/metrics") != 0 && strcmp(path, "/api/connections") != 0 &&
        strncmp(path, "/api/connections/", 17) != 0 && strcmp(path, "/api/publish") != 0 &&
        strncmp(path, "/api/mqtt/", 10) != 0 && strcmp(path, "/api/bridges") != 0 &&
        strcmp(path, "/api/info") != 0)
        return false;
    if (!authorized && !(strcmp(path, "/metrics") == 0 && !o->gw->cfg->http.metrics_auth)) {
        metrics_auth_failed(&o->gw->metrics, "http", "bad_api_key");
        http_respond_error(h, 401, "unauthorized",
                           "missing or wrong API key (Authorization: Bearer <key>)");
        return true;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (is(req, "GET") || is(req, "HEAD"))
            metrics(o, h);
        else
            rest_method_not_allowed(h, "GET");
    } else if (strcmp(path, "/api/connections") == 0) {
        if (is(req, "GET"))
            connections_list(o, h, req);
        else
            rest_method_not_allowed(h, "GET");
    } else if (strncmp(path, "/api/connections/", 17) == 0) {
        connection_one(o, h, req, path + 17);
    } else if (strcmp(path, "/api/publish") == 0) {
        if (is(req, "POST"))
            publish(o, h, req);
        else
            rest_method_not_allowed(h, "POST");
    } else if (strcmp(path, "/api/mqtt/sessions") == 0) {
        if (is(req, "GET"))
            sessions_list(o, h, req);
        else
            rest_method_not_allowed(h, "GET");
    } else if (strncmp(path, "/api/mqtt/sessions/", 19) == 0) {
        if (strchr(path + 19, '/') || !decode_segment(path + 19, seg, sizeof seg))
            http_respond_error(h, 404, "not_found", "no such resource");
        else
            session_one(o, h, req, seg);
    } else if (strcmp(path, "/api/mqtt/subscriptions") == 0) {
        subscriptions(o, h, req);
    } else if (strcmp(path, "/api/mqtt/shared") == 0) {
        if (is(req, "GET"))
            shared_groups(o, h);
        else
            rest_method_not_allowed(h, "GET");
    } else if (strcmp(path, "/api/mqtt/retained") == 0) {
        retained(o, h, req);
    } else if (strcmp(path, "/api/bridges") == 0) {
        if (is(req, "GET"))
            bridges(o, h);
        else
            rest_method_not_allowed(h, "GET");
    } else if (strcmp(path, "/api/info") == 0) {
        if (is(req, "GET"))
            info(o, h, req);
        else
            rest_method_not_allowed(h, "GET");
    } else {
        http_respond_error(h, 404, "not_found", "no such resource");
    }
    return true;
}

/* ---- access log ---- */

/* The request target with the values of credential parameters (token, key, api_key)
 * replaced, so that no secret reaches the log. */
static void redacted_target(const struct http_req *req, char *out, size_t cap)
{
    const char *q = req->query;
    size_t n = (size_t)snprintf(out, cap, "%s", req->path ? req->path : "-");
    if (!q || !*q || n >= cap)
        return;
    n += (size_t)snprintf(out + n, cap - n, "?");
    while (*q && n < cap) {
        size_t name = strcspn(q, "=&"), all = strcspn(q, "&");
        bool secret = (name == 5 && strncmp(q, "token", 5) == 0) ||
                      (name == 3 && strncmp(q, "key", 3) == 0) ||
                      (name == 7 && strncmp(q, "api_key", 7) == 0);
        if (secret && q[name] == '=')
            n += (size_t)snprintf(out + n, cap - n, "%.*s=REDACTED", (int)name, q);
        else
            n += (size_t)snprintf(out + n, cap - n, "%.*s", (int)all, q);
        q += all;
        if (*q == '&') {
            q++;
            if (n < cap)
                n += (size_t)snprintf(out + n, cap - n, "&");
        }
    }
}

void ops_access_log(void *ctx, struct http_conn *h, const struct http_req *req, int status,
                    size_t len, uint64_t us)
{
    struct conn *c = http_conn_of(h);
    enum config_access_log fmt = c->gw->cfg->http.access_log;
    const char *method = req->method ? req->method : "-";
    const char *referer = req->method ? http_header(req, "Referer") : NULL;
    const char *agent = req->method ? http_header(req, "User-Agent") : NULL;
    const char *user = http_user(h); /* a key name: [A-Za-z0-9_.:@-] only */
    char target[1024], host[64], when[64];
    const char *colon, *peer;
    time_t now;
    struct tm tm;

    (void)ctx;
    if (fmt == CONFIG_ACCESS_LOG_OFF)
        return;
    /* the client's address without its port, as access logs give it */
    peer = conn_peer(c);
    snprintf(host, sizeof host, "%s", peer[0] == '[' ? peer + 1 : peer);
    colon = strrchr(host, peer[0] == '[' ? ']' : ':');
    if (colon)
        host[colon - host] = '\0';
    if (req->method)
        redacted_target(req, target, sizeof target);
    else
        snprintf(target, sizeof target, "-");
    if (fmt == CONFIG_ACCESS_LOG_COMMON) {
        /* The NCSA line is one string: with log.format=json it is one member ("msg"),
         * never split into key=value pairs (a client's "level=" would become one). */
        struct buf line;
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
        buf_init(&line);
        /* the NCSA user field names the API key that authenticated the request */
        buf_printf(&line, "%s - %s [%s] \"%s %s HTTP/%d.%d\" %d %zu \"%s\" \"%s\" %.6f", host,
                   user[0] ? user : "-", when, method, log_q(target), req->http_major,
                   req->http_minor, status, len,
                   referer ? log_q(referer) : "-", agent ? log_q(agent) : "-", (double)us / 1e6);
        if (strcmp(c->gw->cfg->log.format, "json") == 0) {
            struct buf js;
            buf_init(&js);
            buf_append_str(&js, "{\"msg\":");
            buf_append_json_str(&js, (const char *)line.data, line.len);
            buf_append_str(&js, "}");
            log_write_json(LOG_INFO, buf_cstr(&js));
            buf_fini(&js);
        } else {
            log_info("%s", buf_cstr(&line));
        }
        buf_fini(&line);
        return;
    }
    {
        cJSON *o = cJSON_CreateObject();
        char *js;
        cJSON_AddStringToObject(o, "type", "access");
        cJSON_AddStringToObject(o, "remote", host);
        cJSON_AddNumberToObject(o, "time", (double)gw_now_ms());
        cJSON_AddStringToObject(o, "method", method);
        cJSON_AddStringToObject(o, "target", target);
        cJSON_AddNumberToObject(o, "status", status);
        cJSON_AddNumberToObject(o, "bytes", (double)len);
        cJSON_AddNumberToObject(o, "duration_ms", (double)us / 1000);
        if (referer)
            cJSON_AddStringToObject(o, "referer", referer);
        if (agent)
            cJSON_AddStringToObject(o, "user_agent", agent);
        if (user[0])
            cJSON_AddStringToObject(o, "key", user);
        cJSON_AddNumberToObject(o, "conn", (double)c->id);
        js = cJSON_PrintUnformatted(o);
        log_write_json(LOG_INFO, js); /* with log.format=json: members of the line itself */
        cJSON_free(js);
        cJSON_Delete(o);
    }
}
