/* web/feed.c: the live feed hub (see feed.h).
 *
 * How an update moves: bus_publish -> feed_sink (loop thread): for each filter
 * group whose device globs match, one shared frame (refcounted bytes: the whole
 * message, or the group's key subset) -> a reference pushed on each viewer's ring
 * (oldest dropped past the byte budget) -> the viewer goes on the pending list ->
 * the uv_check handle, after the loop iteration's I/O, flushes every pending viewer:
 * its frames copied back to back into one buffer and written with one
 * conn_send_raw, at once rather than staged (conn_registry_write_direct; a compressed
 * variant, made once per frame, for viewers that negotiated permessage-deflate).
 * Flushing is paced: after a pass that took t, the next one waits at least t/2, so under
 * load a write carries many updates and the loop keeps a third of its time for ingest
 * (measured with 1000 viewers at 1000 msg/s: waiting t costs ~2x the latency for ~2/3 of
 * the CPU; not waiting, a core). A viewer whose socket is past its budget stays pending
 * and is retried every FEED_STALL_RETRY_MS or on the next pass.
 *
 * Memory per viewer: ring references up to the budget (the frames are shared), and
 * at most the budget of unwritten bytes in its connection's send queue. Loop thread
 * only. */
#include "web/feed.h"

#include <cjson/cJSON.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/list.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/websocket/ws_transport.h"
#include "web/keys.h"

#define FEED_MAX_GLOBS 64          /* globs per list in a subscription */
#define FEED_MAX_GLOB_BYTES 128    /* bytes per glob */
#define FEED_MAX_QUEUE 65536       /* frames waiting per viewer */
#define FEED_MIN_BUDGET 65536      /* bytes: smallest per-viewer budget */
#define FEED_STALL_RETRY_MS 20     /* retry viewers stalled on their budget */
#define FEED_DEFLATE_MIN_BYTES 128 /* smaller frames are not worth compressing */
#define FEED_KEEP_BYTES 262144     /* scratch memory kept between flushes */
#define FEED_PACE_DIVISOR 2        /* between passes wait (last pass time / this) */

struct feed_frame {
    unsigned refs;
    size_t len; /* bytes of the plain frame at data */
    size_t hdr; /* header bytes: the payload is data[hdr..len) */
    uint8_t *z; /* permessage-deflate variant (heap), or NULL */
    size_t zlen;
    bool z_tried; /* compression was attempted (z may still be NULL) */
    uint8_t data[];
};

struct feed_viewer;

struct feed_group {
    struct list_link link; /* in the hub's groups while it has viewers */
    char *sig;   /* canonical filter text: equal filters share a group */
    char **devs; /* device globs; ndevs 0 = every device */
    size_t ndevs;
    char **keys; /* key globs; nkeys 0 = every key */
    size_t nkeys;
    bool presence; /* wants presence events */
    char **kdevs;  /* the viewers' API key's device filter (globs); nkdevs 0 = every device */
    size_t nkdevs;
    struct list viewers; /* struct feed_viewer, by glink */
};

struct feed_viewer {
    struct conn *conn;
    struct feed *hub;
    struct feed_group *group; /* NULL until subscribed */
    struct list_link glink;   /* in the group's viewers */
    struct list_link plink;   /* in the hub's pending list while frames wait */
    struct list_link vlink;   /* in the hub's viewers once authenticated */
    bool authed;
    char key_id[KEYS_ID_MAX + 1]; /* the API key it authenticated with */
    char **kdevs;             /* that key's device filter (heap copies); nkdevs 0 = all */
    size_t nkdevs;
    bool deflate;             /* gets compressed variants of shared frames */
    int errors;               /* error messages sent */
    struct feed_frame **ring; /* frames waiting, oldest at head */
    size_t head, n, cap;
    size_t ring_bytes; /* plain frame bytes in the ring */
    uint64_t dropped;  /* dropped since the last report */
    uint64_t dropped_total;
};

struct feed {
    struct gw *gw;
    struct list groups;          /* struct feed_group with viewers, by link */
    struct list pending;         /* struct feed_viewer with frames waiting, by plink */
    struct list viewers;         /* authenticated struct feed_viewer, by vlink (revocation) */
    size_t budget_bytes;         /* per viewer: ring bytes, and unwritten socket bytes */
    uv_check_t check;            /* flush after each loop iteration's I/O */
    uv_timer_t timer;            /* flush when paced or stalled */
    bool check_on;
    uint64_t next_flush_ns;          /* uv_hrtime() before which no pass starts */
    struct ws_deflater *z;           /* no-context-takeover compressor, 15-bit window */
    struct buf json, hdr, zbuf, out; /* scratch */
};

/* ---- frames ------------------------------------------------------------------- */

static struct feed_frame *frame_new(struct feed *hub, const struct buf *payload)
{
    struct feed_frame *f;
    hub->hdr.len = 0;
    ws_encode_header(&hub->hdr, WS_OP_TEXT, true, false, payload->len);
    f = xmalloc(sizeof *f + hub->hdr.len + payload->len);
    f->refs = 1;
    f->hdr = hub->hdr.len;
    f->len = hub->hdr.len + payload->len;
    f->z = NULL;
    f->zlen = 0;
    f->z_tried = false;
    memcpy(f->data, hub->hdr.data, hub->hdr.len);
    memcpy(f->data + f->hdr, payload->data, payload->len);
    return f;
}

static void frame_unref(struct feed_frame *f)
{
    if (f && --f->refs == 0) {
        free(f->z);
        free(f);
    }
}

/* The bytes to send to a viewer: the compressed variant when it has one. */
static const uint8_t *frame_bytes(struct feed *hub, struct feed_frame *f, bool deflate, size_t *len)
{
    if (deflate && !f->z_tried && hub->z && f->len - f->hdr >= FEED_DEFLATE_MIN_BYTES) {
        f->z_tried = true;
        hub->zbuf.len = 0;
        if (ws_encode_shared(&hub->zbuf, hub->z, WS_OP_TEXT, f->data + f->hdr, f->len - f->hdr) ==
                0 &&
            hub->zbuf.len < f->len) {
            f->z = xmalloc(hub->zbuf.len);
            memcpy(f->z, hub->zbuf.data, hub->zbuf.len);
            f->zlen = hub->zbuf.len;
        }
    }
    if (deflate && f->z) {
        *len = f->zlen;
        return f->z;
    }
    *len = f->len;
    return f->data;
}

/* ---- matching ----------------------------------------------------------------- */

static bool match_any(char *const *globs, size_t n, const char *s)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (fnmatch(globs[i], s, 0) == 0)
            return true;
    return false;
}

/* {"type":"telemetry",...} with the points of m whose keys g accepts (g NULL: all).
 * NULL when no point matches. */
static struct feed_frame *encode_telemetry(struct feed *hub, const struct msg *m,
                                           const struct feed_group *g)
{
    struct buf *b = &hub->json;
    size_t n = 0;

    b->len = 0;
    buf_append_str(b, "{\"type\":\"telemetry\",\"device\":");
    buf_append_json_str(b, m->device, strlen(m->device));
    buf_printf(b, ",\"seq\":%llu,\"points\":[", (unsigned long long)m->seq);
    for (size_t i = 0; i < m->npoints; i++) {
        const struct point *p = &m->points[i];
        if (g && !match_any(g->keys, g->nkeys, p->key))
            continue;
        buf_append_str(b, n++ ? ",{\"key\":" : "{\"key\":");
        buf_append_json_str(b, p->key, strlen(p->key));
        buf_printf(b, ",\"ts\":%lld,\"value\":", (long long)p->ts_ms);
        devices_write_value_json(p, b);
        buf_append_str(b, "}");
    }
    buf_append_str(b, "]}");
    return n ? frame_new(hub, b) : NULL;
}

/* ---- viewer queues ------------------------------------------------------------ */

static void on_check(uv_check_t *h);

static void pending_add(struct feed *hub, struct feed_viewer *v)
{
    if (list_linked(&hub->pending, &v->plink))
        return;
    list_push_front(&hub->pending, &v->plink);
    if (!hub->check_on) {
        hub->check_on = true;
        uv_check_start(&hub->check, on_check);
    }
}

static void pending_remove(struct feed *hub, struct feed_viewer *v)
{
    if (list_linked(&hub->pending, &v->plink))
        list_remove(&hub->pending, &v->plink);
}

static void drop_oldest(struct feed *hub, struct feed_viewer *v)
{
    struct feed_frame *f = v->ring[v->head];
    if (v->dropped == 0)
        log_info("conn=%llu peer=%s proto=ws-live feed dropping oldest updates "
                 "(viewer too slow) budget_bytes=%zu send_queued_bytes=%zu",
                 (unsigned long long)v->conn->id, conn_peer(v->conn), hub->budget_bytes,
                 v->conn->send_queued_bytes);
    v->ring_bytes -= f->len;
    v->head = (v->head + 1) % v->cap;
    v->n--;
    frame_unref(f);
    v->dropped++;
    v->dropped_total++;
    hub->gw->metrics.feed_dropped++;
}

static void viewer_push(struct feed *hub, struct feed_viewer *v, struct feed_frame *f)
{
    if (v->conn->closing)
        return;
    if (f->len > hub->budget_bytes) { /* could never be sent within the budget */
        v->dropped++;
        v->dropped_total++;
        hub->gw->metrics.feed_dropped++;
        return;
    }
    while (v->n && (v->ring_bytes + f->len > hub->budget_bytes || v->n >= FEED_MAX_QUEUE))
        drop_oldest(hub, v);
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        struct feed_frame **r = xmalloc(cap * sizeof *r);
        for (size_t i = 0; i < v->n; i++)
            r[i] = v->ring[(v->head + i) % v->cap];
        free(v->ring);
        v->ring = r;
        v->cap = cap;
        v->head = 0;
    }
    f->refs++;
    v->ring[(v->head + v->n) % v->cap] = f;
    v->n++;
    v->ring_bytes += f->len;
    pending_add(hub, v);
}

static void viewer_clear(struct feed_viewer *v)
{
    while (v->n) {
        frame_unref(v->ring[v->head]);
        v->head = (v->head + 1) % v->cap;
        v->n--;
    }
    v->ring_bytes = 0;
}

enum flush_rc { FLUSH_DONE, FLUSH_STALLED, FLUSH_GONE };

static enum flush_rc viewer_flush(struct feed *hub, struct feed_viewer *v)
{
    struct conn *c = v->conn;
    size_t room, nframes = 0;

    if (c->closing)
        return FLUSH_GONE;
    if (c->send_queued_bytes >= hub->budget_bytes)
        return FLUSH_STALLED;
    room = hub->budget_bytes - c->send_queued_bytes;
    hub->out.len = 0;
    if (v->dropped) {
        hub->json.len = 0;
        buf_printf(&hub->json, "{\"type\":\"dropped\",\"count\":%llu,\"total\":%llu}",
                   (unsigned long long)v->dropped, (unsigned long long)v->dropped_total);
        ws_encode_frame(&hub->out, WS_OP_TEXT, true, false, hub->json.data, hub->json.len);
        v->dropped = 0;
    }
    while (v->n) {
        struct feed_frame *f = v->ring[v->head];
        size_t len;
        const uint8_t *p = frame_bytes(hub, f, v->deflate, &len);
        if (hub->out.len + len > room && hub->out.len > 0)
            break;
        buf_append(&hub->out, p, len);
        v->ring_bytes -= f->len;
        v->head = (v->head + 1) % v->cap;
        v->n--;
        frame_unref(f);
        nframes++;
    }
    hub->gw->metrics.feed_sent += nframes;
    c->msgs_out += nframes;
    ws_conn_send_frames(c, hub->out.data, hub->out.len);
    if (c->closing)
        return FLUSH_GONE; /* closed: the viewer goes with the close callback */
    return v->n ? FLUSH_STALLED : FLUSH_DONE;
}

static void on_timer(uv_timer_t *t);

static void flush(struct feed *hub)
{
    struct list_link *e, *next;
    uint64_t t0 = uv_hrtime(), t1;
    bool stalled = false;

    /* each viewer's frames are one write, made now: the pass is paced by its writes */
    conn_registry_write_direct(hub->gw->conns, true);
    for (e = hub->pending.head; e; e = next) {
        struct feed_viewer *v = list_entry(e, struct feed_viewer, plink);
        next = e->next;
        switch (viewer_flush(hub, v)) {
        case FLUSH_DONE:
            pending_remove(hub, v);
            break;
        case FLUSH_STALLED:
            stalled = true;
            break;
        case FLUSH_GONE:
            break;
        }
    }
    conn_registry_write_direct(hub->gw->conns, false);
    hub->out.len = 0;
    hub->zbuf.len = 0;
    buf_shrink(&hub->out, FEED_KEEP_BYTES);
    buf_shrink(&hub->zbuf, FEED_KEEP_BYTES);
    t1 = uv_hrtime();
    /* busy: the next pass waits half as long as this one took, so flushing takes at
     * most two thirds of the loop and each write carries more updates */
    hub->next_flush_ns = t1 + (t1 - t0) / FEED_PACE_DIVISOR;
    if (!hub->pending.head && hub->check_on) {
        uv_check_stop(&hub->check);
        hub->check_on = false;
    }
    if (stalled)
        uv_timer_start(&hub->timer, on_timer, FEED_STALL_RETRY_MS, 0);
}

static void maybe_flush(struct feed *hub)
{
    uint64_t now = uv_hrtime();
    if (!hub->pending.head)
        return;
    if (now < hub->next_flush_ns) {
        uint64_t ms = (hub->next_flush_ns - now + 999999) / 1000000;
        if (!uv_is_active((uv_handle_t *)&hub->timer) || uv_timer_get_due_in(&hub->timer) > ms)
            uv_timer_start(&hub->timer, on_timer, ms, 0);
        return;
    }
    flush(hub);
}

static void on_check(uv_check_t *h)
{
    maybe_flush(h->data);
}

static void on_timer(uv_timer_t *t)
{
    maybe_flush(t->data);
}

/* ---- viewers ------------------------------------------------------------------ */

static void send_json(struct conn *c, const struct buf *b)
{
    ws_conn_send(c, WS_OP_TEXT, b->data, b->len);
}

/* {"type":"error","error":why,"code":code[,"field":field]} */
static void send_error_field(struct feed_viewer *v, const char *code, const char *why,
                             const char *field)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"type\":\"error\",\"error\":");
    buf_append_json_str(&b, why, strlen(why));
    buf_append_str(&b, ",\"code\":");
    buf_append_json_str(&b, code, strlen(code));
    if (field) {
        buf_append_str(&b, ",\"field\":");
        buf_append_json_str(&b, field, strlen(field));
    }
    buf_append_str(&b, "}");
    send_json(v->conn, &b);
    buf_fini(&b);
}

static void send_error(struct feed_viewer *v, const char *code, const char *why)
{
    send_error_field(v, code, why, NULL);
}

/* The first member of obj whose name is not among the NULL-terminated names, or NULL. */
static const char *unknown_member(const cJSON *obj, const char *const *names)
{
    const cJSON *m;

    cJSON_ArrayForEach(m, obj) {
        size_t i = 0;
        while (names[i] && strcmp(names[i], m->string) != 0)
            i++;
        if (!names[i])
            return m->string;
    }
    return NULL;
}

static void group_free(struct feed_group *g)
{
    for (size_t i = 0; i < g->ndevs; i++)
        free(g->devs[i]);
    for (size_t i = 0; i < g->nkeys; i++)
        free(g->keys[i]);
    for (size_t i = 0; i < g->nkdevs; i++)
        free(g->kdevs[i]);
    free(g->devs);
    free(g->keys);
    free(g->kdevs);
    free(g->sig);
    free(g);
}

static void group_leave(struct feed *hub, struct feed_viewer *v)
{
    struct feed_group *g = v->group;
    if (!g)
        return;
    list_remove(&g->viewers, &v->glink);
    v->group = NULL;
    if (g->viewers.len == 0) {
        list_remove(&hub->groups, &g->link);
        group_free(g);
    }
}

static void group_join(struct feed *hub, struct feed_viewer *v, struct feed_group *g)
{
    v->group = g;
    list_push_front(&g->viewers, &v->glink);
    if (!list_linked(&hub->groups, &g->link)) /* a new group */
        list_push_front(&hub->groups, &g->link);
}

/* Reads a glob list: absent, [] or one containing "*" mean "all" (n = 0). Returns
 * false with *why on a bad list. */
static bool read_globs(const cJSON *arr, const char *name, char ***out, size_t *n, struct buf *sig,
                       const char **why)
{
    const cJSON *it;
    bool all = false;
    size_t count = 0;

    *out = NULL;
    *n = 0;
    if (!arr || cJSON_IsNull(arr))
        return true;
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) > FEED_MAX_GLOBS) {
        *why = strcmp(name, "devices") == 0
                   ? "\"devices\" must be an array of at most 64 glob strings"
                   : "\"keys\" must be an array of at most 64 glob strings";
        return false;
    }
    cJSON_ArrayForEach(it, arr)
    {
        size_t len;
        if (!cJSON_IsString(it) || (len = strlen(it->valuestring)) == 0 ||
            len > FEED_MAX_GLOB_BYTES) {
            *why = "globs must be non-empty strings of at most 128 bytes";
            return false;
        }
        if (strcmp(it->valuestring, "*") == 0)
            all = true;
        count++;
    }
    if (all || count == 0)
        return true;
    *out = xcalloc(count, sizeof(char *));
    cJSON_ArrayForEach(it, arr)
    {
        (*out)[(*n)++] = xstrdup(it->valuestring);
        buf_append(sig, "\x1f", 1);
        buf_append_str(sig, it->valuestring);
    }
    return true;
}

static void write_globs(struct buf *b, char *const *globs, size_t n)
{
    buf_append_str(b, "[");
    if (n == 0)
        buf_append_str(b, "\"*\"");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append_str(b, ",");
        buf_append_json_str(b, globs[i], strlen(globs[i]));
    }
    buf_append_str(b, "]");
}

static void subscribe(struct feed_viewer *v, const cJSON *msg, const cJSON *sub)
{
    static const char *const top_names[] = {"subscribe", "auth", NULL};
    static const char *const sub_names[] = {"devices", "keys", "presence", NULL};
    struct feed *hub = v->hub;
    struct feed_group *g, tmp;
    const cJSON *pres = cJSON_GetObjectItemCaseSensitive(sub, "presence");
    const char *why = NULL, *unknown;
    struct buf sig, b;

    memset(&tmp, 0, sizeof tmp);
    buf_init(&sig);
    /* a typo ("device") is answered, not taken for "all devices" */
    if ((unknown = unknown_member(msg, top_names)) != NULL ||
        (cJSON_IsObject(sub) && (unknown = unknown_member(sub, sub_names)) != NULL)) {
        struct buf why;
        char name[65];
        snprintf(name, sizeof name, "%s", unknown);
        buf_init(&why);
        buf_printf(&why, "unknown field: %s (allowed: {\"subscribe\":{\"devices\":[globs],"
                         "\"keys\":[globs],\"presence\":bool}})", name);
        send_error_field(v, "unknown_field", buf_cstr(&why), name);
        buf_fini(&why);
        goto out;
    }
    if (!cJSON_IsObject(sub) || (pres && !cJSON_IsBool(pres))) {
        send_error(v, "bad_request",
                   "subscribe takes {\"devices\":[globs],\"keys\":[globs],\"presence\":bool}");
        goto out;
    }
    tmp.presence = !pres || cJSON_IsTrue(pres);
    buf_append_str(&sig, tmp.presence ? "p1\x1e" : "p0\x1e");
    if (!read_globs(cJSON_GetObjectItemCaseSensitive(sub, "devices"), "devices", &tmp.devs,
                    &tmp.ndevs, &sig, &why))
        goto bad;
    buf_append(&sig, "\x1e", 1);
    if (!read_globs(cJSON_GetObjectItemCaseSensitive(sub, "keys"), "keys", &tmp.keys, &tmp.nkeys,
                    &sig, &why))
        goto bad;
    /* the API key's device filter bounds what the group sees: part of its identity */
    buf_append(&sig, "\x1e", 1);
    if (v->nkdevs) {
        tmp.kdevs = xcalloc(v->nkdevs, sizeof(char *));
        for (size_t i = 0; i < v->nkdevs; i++) {
            tmp.kdevs[tmp.nkdevs++] = xstrdup(v->kdevs[i]);
            buf_append(&sig, "\x1f", 1);
            buf_append_str(&sig, v->kdevs[i]);
        }
    }
    for (g = list_entry(hub->groups.head, struct feed_group, link); g;
         g = list_entry(g->link.next, struct feed_group, link))
        if (strcmp(g->sig, buf_cstr(&sig)) == 0)
            break;
    if (!g) {
        g = xcalloc(1, sizeof *g);
        *g = tmp;
        g->sig = xstrdup(buf_cstr(&sig));
        memset(&tmp, 0, sizeof tmp);
    }
    if (v->group != g) {
        group_leave(hub, v);
        group_join(hub, v, g);
    }
    buf_init(&b);
    buf_append_str(&b, "{\"type\":\"subscribed\",\"devices\":");
    write_globs(&b, g->devs, g->ndevs);
    buf_append_str(&b, ",\"keys\":");
    write_globs(&b, g->keys, g->nkeys);
    buf_printf(&b, ",\"presence\":%s}", g->presence ? "true" : "false");
    send_json(v->conn, &b);
    buf_fini(&b);
    goto out;
bad:
    send_error(v, "bad_request", why);
out:
    for (size_t i = 0; i < tmp.ndevs; i++)
        free(tmp.devs[i]);
    for (size_t i = 0; i < tmp.nkeys; i++)
        free(tmp.keys[i]);
    for (size_t i = 0; i < tmp.nkdevs; i++)
        free(tmp.kdevs[i]);
    free(tmp.devs);
    free(tmp.keys);
    free(tmp.kdevs);
    buf_fini(&sig);
}

static void viewer_authed(struct feed_viewer *v, const struct api_key *k)
{
    const struct ws_deflate_params *pmd = ws_conn_deflate(v->conn);
    v->authed = true;
    snprintf(v->key_id, sizeof v->key_id, "%s", k->id);
    if (k->ndevices) {
        v->kdevs = xcalloc(k->ndevices, sizeof(char *));
        for (size_t i = 0; i < k->ndevices; i++)
            v->kdevs[v->nkdevs++] = xstrdup(k->devices[i]);
    }
    list_push_back(&v->hub->viewers, &v->vlink);
    v->deflate = pmd && pmd->server_window_bits >= 15;
    conn_authenticated(v->conn, NULL);
    ws_conn_send(v->conn, WS_OP_TEXT, "{\"type\":\"ready\"}", 16);
}

void feed_viewer_authenticated(struct conn *c, const struct api_key *k)
{
    struct feed_viewer *v = c->proto_state;
    if (c->proto == &feed_viewer_proto && v && !v->authed)
        viewer_authed(v, k);
}

void feed_key_revoked(struct feed *hub, const char *key_id)
{
    struct list_link *e, *next;

    if (!hub)
        return;
    for (e = hub->viewers.head; e; e = next) {
        struct feed_viewer *v = list_entry(e, struct feed_viewer, vlink);
        next = e->next;
        if (strcmp(v->key_id, key_id) != 0)
            continue;
        list_remove(&hub->viewers, &v->vlink); /* once: the close completes later */
        v->key_id[0] = '\0';
        group_leave(hub, v);
        pending_remove(hub, v);
        viewer_clear(v);
        send_error(v, "key_revoked", "the API key of this connection was revoked");
        ws_conn_close(v->conn, WS_CLOSE_POLICY, "api key revoked");
    }
}

static void viewer_error(struct feed_viewer *v, const char *code, const char *why)
{
    send_error(v, code, why);
    if (++v->errors >= v->conn->gw->cfg->line.max_errors)
        ws_conn_close(v->conn, WS_CLOSE_POLICY, "too many bad messages");
}

void feed_viewer_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *data,
                         size_t len)
{
    struct feed_viewer *v = state;
    cJSON *root;
    const cJSON *it;

    (void)opcode;
    if (!v)
        return;
    root = cJSON_ParseWithLength((const char *)data, len);
    if (!cJSON_IsObject(root)) {
        if (!v->authed)
            goto unauthorized;
        viewer_error(v, "bad_json", "messages must be JSON objects");
        goto out;
    }
    if (!v->authed) {
        const struct api_key *k;
        it = cJSON_GetObjectItemCaseSensitive(root, "auth");
        if (!cJSON_IsString(it) || (k = keys_check(c->gw->keys, it->valuestring)) == NULL)
            goto unauthorized;
        viewer_authed(v, k);
        goto out;
    }
    if ((it = cJSON_GetObjectItemCaseSensitive(root, "subscribe")) != NULL) {
        subscribe(v, root, it);
    } else if (cJSON_GetObjectItemCaseSensitive(root, "unsubscribe")) {
        group_leave(v->hub, v);
        viewer_clear(v);
        ws_conn_send(c, WS_OP_TEXT, "{\"type\":\"unsubscribed\"}", 23);
    } else if (cJSON_GetObjectItemCaseSensitive(root, "auth")) {
        ws_conn_send(c, WS_OP_TEXT, "{\"type\":\"ready\"}", 16);
    } else {
        viewer_error(v, "unknown_message",
                     "expected {\"subscribe\":{...}} or {\"unsubscribe\":true}");
    }
    goto out;
unauthorized:
    metrics_auth_failed(&c->gw->metrics, "ws-live", "bad_api_key");
    if (conn_refused(c, "no valid API key"))
        log_warn("conn=%llu peer=%s proto=ws-live auth failed reason=\"no valid API key\"",
                 (unsigned long long)c->id, conn_peer(c));
    send_error(v, "unauthorized",
               "send the API key first: {\"auth\":\"<key>\"} (or with the upgrade: "
               "Authorization: Bearer <key> or ?api_key=<key>)");
    ws_conn_close(c, WS_CLOSE_POLICY, "unauthorized");
out:
    cJSON_Delete(root);
}

static void *viewer_open(struct conn *c, void *ctx)
{
    struct feed_viewer *v = xcalloc(1, sizeof *v);
    v->conn = c;
    v->hub = ctx;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return v;
}

static int viewer_feed(void *state, struct buf *in)
{
    (void)state;
    in->len = 0; /* messages come whole through feed_viewer_message */
    return 0;
}

static void viewer_close(void *state, const char *why)
{
    struct feed_viewer *v = state;
    (void)why;
    group_leave(v->hub, v);
    pending_remove(v->hub, v);
    viewer_clear(v);
    if (list_linked(&v->hub->viewers, &v->vlink))
        list_remove(&v->hub->viewers, &v->vlink);
    for (size_t i = 0; i < v->nkdevs; i++)
        free(v->kdevs[i]);
    free(v->kdevs);
    free(v->ring);
    free(v);
}

const struct proto_ops feed_viewer_proto = {"ws-live", viewer_open, viewer_feed, viewer_close,
                                           NULL, 0, NULL, NULL};

/* ---- the sink and presence ---------------------------------------------------- */

static void feed_sink(void *ctx, struct msg *m, struct ticket *t)
{
    struct feed *hub = ctx;
    struct feed_frame *full = NULL;

    (void)t;

    if (m->kind != MSG_TELEMETRY || m->npoints == 0 || !hub->groups.head)
        return;
    for (struct list_link *ge = hub->groups.head; ge; ge = ge->next) {
        struct feed_group *g = list_entry(ge, struct feed_group, link);
        struct feed_frame *f;
        if (!match_any(g->devs, g->ndevs, m->device) || !match_any(g->kdevs, g->nkdevs, m->device))
            continue;
        if (g->nkeys == 0) {
            if (!full)
                full = encode_telemetry(hub, m, NULL);
            f = full;
        } else {
            f = encode_telemetry(hub, m, g);
        }
        if (!f)
            continue;
        for (struct list_link *ve = g->viewers.head; ve; ve = ve->next)
            viewer_push(hub, list_entry(ve, struct feed_viewer, glink), f);
        if (f != full)
            frame_unref(f);
    }
    frame_unref(full);
    hub->json.len = 0;
    buf_shrink(&hub->json, FEED_KEEP_BYTES);
}

void feed_presence(struct feed *hub, const char *device, bool online)
{
    struct feed_frame *f = NULL;

    if (!hub)
        return;
    for (struct list_link *ge = hub->groups.head; ge; ge = ge->next) {
        struct feed_group *g = list_entry(ge, struct feed_group, link);
        if (!g->presence || !match_any(g->devs, g->ndevs, device) ||
            !match_any(g->kdevs, g->nkdevs, device))
            continue;
        if (!f) {
            hub->json.len = 0;
            buf_append_str(&hub->json, "{\"type\":\"presence\",\"device\":");
            buf_append_json_str(&hub->json, device, strlen(device));
            buf_printf(&hub->json, ",\"online\":%s,\"ts\":%lld}", online ? "true" : "false",
                       (long long)gw_now_ms());
            f = frame_new(hub, &hub->json);
        }
        for (struct list_link *ve = g->viewers.head; ve; ve = ve->next)
            viewer_push(hub, list_entry(ve, struct feed_viewer, glink), f);
    }
    frame_unref(f);
}

struct feed *feed_new(struct gw *gw)
{
    struct feed *hub = xcalloc(1, sizeof *hub);
    size_t budget = gw->cfg->limits.max_send_queue_bytes / 4;

    hub->gw = gw;
    hub->budget_bytes = budget < FEED_MIN_BUDGET ? FEED_MIN_BUDGET : budget;
    uv_check_init(gw->loop, &hub->check);
    hub->check.data = hub;
    uv_unref((uv_handle_t *)&hub->check);
    uv_timer_init(gw->loop, &hub->timer);
    hub->timer.data = hub;
    uv_unref((uv_handle_t *)&hub->timer);
    if (gw->cfg->http.ws_deflate)
        hub->z = ws_deflater_new(15, true, -1);
    buf_init(&hub->json);
    buf_init(&hub->hdr);
    buf_init(&hub->zbuf);
    buf_init(&hub->out);
    bus_add_sink(gw->bus, "feed", feed_sink, hub);
    return hub;
}

void feed_free(struct feed *hub)
{
    if (!hub)
        return;
    while (hub->groups.head) { /* viewers are gone with their connections; be safe anyway */
        struct feed_group *g = list_entry(hub->groups.head, struct feed_group, link);
        list_remove(&hub->groups, &g->link);
        group_free(g);
    }
    ws_deflater_free(hub->z);
    buf_fini(&hub->json);
    buf_fini(&hub->hdr);
    buf_fini(&hub->zbuf);
    buf_fini(&hub->out);
    free(hub);
}
