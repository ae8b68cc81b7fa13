/* web/commands.c: see commands.h. Commands live in a map by id while pending and
 * for a while after (bounded by MAX_KEPT); storage keeps their history. */
#include "web/commands.h"

#include <cjson/cJSON.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "base/list.h"
#include "base/map.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/http/http.h"
#include "protocols/mqtt/broker.h"
#include "protocols/mqtt/mqtt.h"
#include "storage/store.h"

#define MAX_KEPT 10000
#define DEFAULT_TIMEOUT_MS 60000
#define MAX_TIMEOUT_MS (7 * 24 * 3600 * 1000LL)

/* The life of a command (commands.h); on the wire and in storage by its name. */
enum command_status {
    COMMAND_QUEUED,
    COMMAND_DELIVERED,
    COMMAND_REPLIED,
    COMMAND_EXPIRED,
};

static const char *const status_names[] = {"queued", "delivered", "replied", "expired"};

struct command {
    char id[33];
    char device[DEVICE_ID_MAX + 1];
    char *name;
    char *params_json;      /* JSON text or NULL */
    enum command_status status;
    char *reply_json;       /* JSON text or NULL */
    int64_t created_ms, updated_ms, expires_ms;
    struct msg *m;          /* the published message while not yet delivered */
    struct list_link age;   /* in the age list */
    struct list_link qlink; /* in its device's queue while queued */
};

/* A device's queued commands, oldest first: what an HTTP device takes (commands_take). */
struct cmd_queue {
    char device[DEVICE_ID_MAX + 1];
    struct list cmds;       /* struct command by qlink */
};

struct commands {
    struct gw *gw;
    struct store *store;    /* where every change of status is written */
    struct map by_id;
    struct list by_age;     /* struct command by age, oldest first */
    uv_timer_t timer;       /* expiry */
    commands_status_fn on_status; /* every change of status, or NULL */
    void *status_ctx;
    struct map queues;      /* device -> struct cmd_queue, while it has queued commands */
    commands_queued_fn on_queued; /* a new command was queued, or NULL */
    void *queued_ctx;
};

/* The status a stored name stands for (NULL, or a name this build does not know:
 * queued, as a command that was never delivered). */
static enum command_status status_parse(const char *name)
{
    for (size_t i = 0; name && i < sizeof status_names / sizeof status_names[0]; i++)
        if (strcmp(name, status_names[i]) == 0)
            return (enum command_status)i;
    return COMMAND_QUEUED;
}

static struct command *oldest(struct commands *cs)
{
    return list_entry(cs->by_age.head, struct command, age);
}

static void queue_push(struct commands *cs, struct command *c)
{
    struct cmd_queue *q = map_get(&cs->queues, c->device, strlen(c->device));
    if (!q) {
        q = xcalloc(1, sizeof *q);
        snprintf(q->device, sizeof q->device, "%s", c->device);
        map_put(&cs->queues, q->device, strlen(q->device), q);
    }
    list_push_back(&q->cmds, &c->qlink);
}

static void queue_remove(struct commands *cs, struct command *c)
{
    struct cmd_queue *q = map_get(&cs->queues, c->device, strlen(c->device));
    if (!q || !list_linked(&q->cmds, &c->qlink))
        return;
    list_remove(&q->cmds, &c->qlink);
    if (q->cmds.len == 0) {
        map_del(&cs->queues, q->device, strlen(q->device));
        free(q);
    }
}

static void cmd_free(struct command *c)
{
    free(c->name);
    free(c->params_json);
    free(c->reply_json);
    msg_unref(c->m);
    free(c);
}

static void keep_bounded(struct commands *cs)
{
    while (cs->by_id.len > MAX_KEPT && cs->by_age.head) {
        struct command *c = oldest(cs);
        list_remove(&cs->by_age, &c->age);
        map_del(&cs->by_id, c->id, strlen(c->id));
        queue_remove(cs, c);
        cmd_free(c);
    }
}

static uint64_t save(struct commands *cs, struct command *c)
{
    struct store_command sc = {c->id,
                               c->device,
                               c->name,
                               c->params_json,
                               status_names[c->status],
                               c->reply_json,
                               c->created_ms,
                               c->updated_ms,
                               c->expires_ms};
    return store_put_command(cs->store, &sc);
}

static uint64_t set_status(struct commands *cs, struct command *c, enum command_status status)
{
    uint64_t seq;
    c->status = status;
    c->updated_ms = gw_now_ms();
    if (status != COMMAND_QUEUED) {
        msg_unref(c->m);
        c->m = NULL;
        queue_remove(cs, c);
    }
    seq = save(cs, c);
    log_info("device=%s command=%s name=\"%s\" status=%s", c->device, c->id, log_q(c->name),
             status_names[status]);
    if (cs->on_status)
        cs->on_status(cs->status_ctx, c->device, c->id, status_names[status], c->reply_json);
    return seq;
}

static void write_json(const struct command *c, struct buf *b)
{
    buf_append_str(b, "{\"id\":");
    buf_append_json_str(b, c->id, strlen(c->id));
    buf_append_str(b, ",\"device\":");
    buf_append_json_str(b, c->device, strlen(c->device));
    buf_append_str(b, ",\"name\":");
    buf_append_json_str(b, c->name, strlen(c->name));
    buf_append_str(b, ",\"params\":");
    buf_append_str(b, c->params_json ? c->params_json : "null");
    buf_append_str(b, ",\"status\":");
    buf_append_json_str(b, status_names[c->status], strlen(status_names[c->status]));
    buf_printf(b, ",\"created\":%lld,\"updated\":%lld,\"expires\":%lld",
               (long long)c->created_ms, (long long)c->updated_ms, (long long)c->expires_ms);
    if (c->reply_json) {
        buf_append_str(b, ",\"reply\":");
        buf_append_str(b, c->reply_json);
    }
    buf_append_str(b, "}");
}

static void on_delivered(void *ctx, const char *device, struct msg *m)
{
    struct commands *cs = ctx;
    char topic[DEVICE_ID_MAX + 32];
    const cJSON *id;
    cJSON *js;
    struct command *c;

    /* every PUBACK of a device session comes here: only its commands topic matters */
    snprintf(topic, sizeof topic, "devices/%s/commands", device);
    if (strcmp(m->topic, topic) != 0)
        return;
    for (c = list_entry(cs->by_age.tail, struct command, age); c;
         c = list_entry(c->age.prev, struct command, age)) {
        if (c->m == m && strcmp(c->device, device) == 0) {
            set_status(cs, c, COMMAND_DELIVERED);
            return;
        }
    }
    /* a command queued before a restart comes back from storage as a new message:
     * recognise it by its id */
    js = cJSON_ParseWithLength((const char *)m->payload, m->payload_len);
    id = cJSON_GetObjectItemCaseSensitive(js, "id");
    c = cJSON_IsString(id) ? map_get(&cs->by_id, id->valuestring, strlen(id->valuestring)) : NULL;
    if (c && strcmp(c->device, device) == 0 && c->status == COMMAND_QUEUED)
        set_status(cs, c, COMMAND_DELIVERED);
    cJSON_Delete(js);
}

void commands_reply(struct commands *cs, const char *device, const char *cmd_id,
                    const void *payload, size_t len)
{
    commands_result(cs, device, cmd_id, payload, len, NULL);
}

int commands_result(struct commands *cs, const char *device, const char *cmd_id,
                    const void *payload, size_t len, struct ticket *t)
{
    struct command *c = map_get(&cs->by_id, cmd_id, strlen(cmd_id));
    cJSON *js;
    if (!c || strcmp(c->device, device) != 0)
        return GW_ENOENT;
    if (c->status == COMMAND_REPLIED)
        return GW_EEXIST;
    js = cJSON_ParseWithLength(payload, len);
    free(c->reply_json);
    if (js) {
        char *s = cJSON_PrintUnformatted(js);
        c->reply_json = xstrdup(s);
        cJSON_free(s);
    } else { /* not JSON: kept as a string */
        struct buf b;
        buf_init(&b);
        buf_append_json_str(&b, payload, len);
        c->reply_json = xstrdup(buf_cstr(&b));
        buf_fini(&b);
    }
    cJSON_Delete(js);
    ticket_add(t, set_status(cs, c, COMMAND_REPLIED));
    return 0;
}

static void on_expiry(uv_timer_t *t)
{
    struct commands *cs = t->data;
    int64_t now = gw_now_ms();
    for (struct list_link *e = cs->by_age.head; e; e = e->next) {
        struct command *c = list_entry(e, struct command, age);
        if ((c->status == COMMAND_QUEUED || c->status == COMMAND_DELIVERED) &&
            c->expires_ms <= now)
            set_status(cs, c, COMMAND_EXPIRED);
    }
}

static void on_loaded(void *ctx, const struct store_command *sc)
{
    struct commands *cs = ctx;
    struct command *c = xcalloc(1, sizeof *c);
    snprintf(c->id, sizeof c->id, "%s", sc->id);
    snprintf(c->device, sizeof c->device, "%s", sc->device);
    c->name = xstrdup(sc->name ? sc->name : "");
    c->params_json = sc->params_json ? xstrdup(sc->params_json) : NULL;
    c->reply_json = sc->reply_json ? xstrdup(sc->reply_json) : NULL;
    c->status = status_parse(sc->status);
    c->created_ms = sc->created_ms;
    c->updated_ms = sc->updated_ms;
    c->expires_ms = sc->expires_ms;
    map_put(&cs->by_id, c->id, strlen(c->id), c);
    list_push_back(&cs->by_age, &c->age);
    if (c->status == COMMAND_QUEUED)
        queue_push(cs, c);
    keep_bounded(cs);
}

struct commands *commands_new(struct gw *gw, struct store *store, struct mqtt_broker *broker)
{
    struct commands *cs = xcalloc(1, sizeof *cs);
    cs->gw = gw;
    cs->store = store;
    map_init(&cs->by_id);
    map_init(&cs->queues);
    if (store_load_commands(store, gw_now_ms() - 7 * 24 * 3600 * 1000LL, on_loaded, cs) != 0) {
        commands_free(cs);
        return NULL;
    }
    uv_timer_init(gw->loop, &cs->timer);
    cs->timer.data = cs;
    uv_timer_start(&cs->timer, on_expiry, 1000, 1000);
    uv_unref((uv_handle_t *)&cs->timer);
    mqtt_broker_set_command_hooks(broker, on_delivered, cs);
    return cs;
}

void commands_free(struct commands *cs)
{
    if (!cs)
        return;
    while (cs->by_age.head) {
        struct command *c = oldest(cs);
        list_remove(&cs->by_age, &c->age);
        queue_remove(cs, c);
        cmd_free(c);
    }
    map_fini(&cs->by_id);
    map_fini(&cs->queues);
    free(cs);
}

struct pending_202 {
    struct buf body;
};

static void on_stored(struct conn *conn, uint64_t tag, int ok)
{
    struct pending_202 *p = (struct pending_202 *)(uintptr_t)tag;
    struct http_conn *h = ok >= 0 ? http_from_conn(conn) : NULL;
    if (h) {
        if (ok)
            http_respond(h, 202, "application/json", p->body.data, p->body.len, NULL);
        else if (conn->gw->storage_full)
            http_respond_error(h, 507, "storage_full", "storage full: command not queued");
        else
            http_respond_error(h, 503, "storage_error", "storage failure: command not queued");
    }
    buf_fini(&p->body);
    free(p);
}

int commands_create(struct commands *cs, struct device *dev, const char *id, const char *name,
                    const char *params_json, int64_t timeout_ms, struct ticket *t,
                    char id_out[33])
{
    struct gw *gw = cs->gw;
    struct conn_iter it;
    struct conn *conn;
    unsigned char rnd[16];
    struct command *c;
    char topic[DEVICE_ID_MAX + 32];
    struct buf payload;

    if (!name || !name[0] || strlen(name) > 128 || timeout_ms < 1 || timeout_ms > MAX_TIMEOUT_MS)
        return GW_EINVAL;
    if (id && (!id[0] || strlen(id) > 32))
        return GW_EINVAL;
    if (id && map_get(&cs->by_id, id, strlen(id)))
        return GW_EEXIST;
    c = xcalloc(1, sizeof *c);
    if (id) {
        snprintf(c->id, sizeof c->id, "%s", id);
    } else {
        RAND_bytes(rnd, sizeof rnd);
        for (int i = 0; i < 16; i++)
            snprintf(c->id + 2 * i, 3, "%02x", rnd[i]);
    }
    snprintf(c->device, sizeof c->device, "%s", dev->id);
    c->name = xstrdup(name);
    c->params_json = params_json ? xstrdup(params_json) : NULL;
    c->status = COMMAND_QUEUED;
    c->created_ms = c->updated_ms = gw_now_ms();
    c->expires_ms = c->created_ms + timeout_ms;
    map_put(&cs->by_id, c->id, strlen(c->id), c);
    list_push_back(&cs->by_age, &c->age);
    queue_push(cs, c);
    ticket_add(t, save(cs, c));
    snprintf(id_out, 33, "%s", c->id);
    if (cs->on_status)
        cs->on_status(cs->status_ctx, c->device, c->id, status_names[c->status], NULL);

    buf_init(&payload);
    buf_append_str(&payload, "{\"id\":");
    buf_append_json_str(&payload, c->id, strlen(c->id));
    buf_append_str(&payload, ",\"name\":");
    buf_append_json_str(&payload, c->name, strlen(c->name));
    buf_append_str(&payload, ",\"params\":");
    buf_append_str(&payload, c->params_json ? c->params_json : "null");
    buf_append_str(&payload, "}");
    snprintf(topic, sizeof topic, "devices/%s/commands", dev->id);
    c->m = msg_new(MSG_PLAIN, dev->id, topic, payload.data, payload.len, NULL, 0);
    c->m->ts_ms = c->created_ms;
    c->m->qos = 1;
    {
        /* MQTT 5 devices also get where to reply (Response Topic, with the command id as
         * Correlation Data) and the command's lifetime (Message Expiry Interval): not
         * delivered once it expired */
        char reply[DEVICE_ID_MAX + 64];
        struct buf props;
        int n = snprintf(reply, sizeof reply, "devices/%s/commands/%s/reply", dev->id, c->id);
        buf_init(&props);
        mqtt_prop_put_str(&props, MQTT_PROP_RESPONSE_TOPIC, reply, (size_t)n);
        mqtt_prop_put_bin(&props, MQTT_PROP_CORRELATION_DATA, c->id, strlen(c->id));
        msg_set_props(c->m, props.data, props.len);
        buf_fini(&props);
        c->m->expiry_ms = c->expires_ms;
    }
    bus_publish(gw->bus, c->m, t);
    log_info("device=%s command=%s name=\"%s\" queued", dev->id, c->id, log_q(c->name));
    conn_iter_begin(&it, gw->conns); /* a failed write closes its connection */
    while ((conn = conn_iter_next(&it)) != NULL) {
        if (strcmp(conn->device, dev->id) == 0 && conn->proto->send_command && !conn->closing) {
            conn->proto->send_command(conn, (const char *)payload.data, payload.len);
            if (c->status == COMMAND_QUEUED)
                set_status(cs, c, COMMAND_DELIVERED);
        }
    }
    buf_fini(&payload);
    if (c->status == COMMAND_QUEUED && cs->on_queued) /* an HTTP device waiting for it */
        cs->on_queued(cs->queued_ctx, dev->id);
    keep_bounded(cs);
    return 0;
}

void commands_set_queued_hook(struct commands *cs, commands_queued_fn fn, void *ctx)
{
    cs->on_queued = fn;
    cs->queued_ctx = ctx;
}

bool commands_pending(struct commands *cs, const char *device)
{
    return map_get(&cs->queues, device, strlen(device)) != NULL;
}

size_t commands_take(struct commands *cs, const char *device, struct buf *out)
{
    struct cmd_queue *q = map_get(&cs->queues, device, strlen(device));
    size_t n = 0;

    buf_append_str(out, "[");
    while (q && q->cmds.head) { /* set_status frees q with its last command */
        struct command *c = list_entry(q->cmds.head, struct command, qlink);
        bool last = q->cmds.len == 1;
        if (n++)
            buf_append_str(out, ",");
        buf_append_str(out, "{\"id\":");
        buf_append_json_str(out, c->id, strlen(c->id));
        buf_append_str(out, ",\"name\":");
        buf_append_json_str(out, c->name, strlen(c->name));
        buf_append_str(out, ",\"params\":");
        buf_append_str(out, c->params_json ? c->params_json : "null");
        buf_append_str(out, "}");
        set_status(cs, c, COMMAND_DELIVERED);
        if (last)
            break;
    }
    buf_append_str(out, "]");
    return n;
}

void commands_set_status_hook(struct commands *cs, commands_status_fn fn, void *ctx)
{
    cs->on_status = fn;
    cs->status_ctx = ctx;
}

/* The first member of the command body obj that is not name, params or timeout_ms, or
 * NULL: a typo ("parms") is answered, not dropped. */
static const char *unknown_member(const cJSON *obj)
{
    const cJSON *m;

    cJSON_ArrayForEach(m, obj) {
        if (strcmp(m->string, "name") != 0 && strcmp(m->string, "params") != 0 &&
            strcmp(m->string, "timeout_ms") != 0)
            return m->string;
    }
    return NULL;
}

/* 400 {"error":"unknown field: <name> (allowed: ..)","code":"unknown_field","field":"<name>"} */
static void respond_unknown_field(struct http_conn *h, const char *name)
{
    struct buf b, msg;
    size_t n = strlen(name) > 64 ? 64 : strlen(name);

    buf_init(&msg);
    buf_printf(&msg, "unknown field: %.*s (allowed: name params timeout_ms)", (int)n, name);
    buf_init(&b);
    buf_append_str(&b, "{\"error\":");
    buf_append_json_str(&b, buf_cstr(&msg), msg.len);
    buf_append_str(&b, ",\"code\":\"unknown_field\",\"field\":");
    buf_append_json_str(&b, name, n);
    buf_append_str(&b, "}");
    buf_fini(&msg);
    http_respond(h, 400, "application/json", b.data, b.len, NULL);
    buf_fini(&b);
}

void commands_post(struct commands *cs, struct http_conn *h, struct http_req *req,
                   struct device *dev)
{
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
    const cJSON *tmo = cJSON_GetObjectItemCaseSensitive(root, "timeout_ms");
    struct pending_202 *p;
    char id[33], *params_json = NULL;
    struct ticket t = {0, 0};
    int64_t timeout = DEFAULT_TIMEOUT_MS;
    const char *unknown = cJSON_IsObject(root) ? unknown_member(root) : NULL;

    if (unknown) {
        respond_unknown_field(h, unknown);
        goto out;
    }
    if (!cJSON_IsObject(root) || !cJSON_IsString(name) || !name->valuestring[0] ||
        strlen(name->valuestring) > 128) {
        http_respond_error(h, 400, "bad_json",
                           "body must be {\"name\":\"<1-128 chars>\",\"params\":{...}}");
        goto out;
    }
    if (tmo) {
        if (!cJSON_IsNumber(tmo) || tmo->valuedouble < 1 || tmo->valuedouble > MAX_TIMEOUT_MS) {
            http_respond_error(h, 400, "bad_param", "timeout_ms must be 1..604800000");
            goto out;
        }
        timeout = (int64_t)tmo->valuedouble;
    }
    if (params)
        params_json = cJSON_PrintUnformatted(params);
    commands_create(cs, dev, NULL, name->valuestring, params_json, timeout, &t, id);
    cJSON_free(params_json);

    p = xcalloc(1, sizeof *p);
    buf_init(&p->body);
    buf_append_str(&p->body, "{\"id\":");
    buf_append_json_str(&p->body, id, strlen(id));
    buf_append_str(&p->body, ",\"status\":\"queued\"}");
    gw_await_durable(http_conn_of(h), &t, (uint64_t)(uintptr_t)p, on_stored);
out:
    cJSON_Delete(root);
}

void commands_get(struct commands *cs, struct http_conn *h, struct device *dev,
                  const char *cmd_id)
{
    struct command *c = map_get(&cs->by_id, cmd_id, strlen(cmd_id));
    struct buf b;
    if (!c || strcmp(c->device, dev->id) != 0) {
        http_respond_error(h, 404, "not_found", "no such command");
        return;
    }
    buf_init(&b);
    write_json(c, &b);
    http_respond(h, 200, "application/json", b.data, b.len, NULL);
    buf_fini(&b);
}

void commands_list(struct commands *cs, struct http_conn *h, struct device *dev)
{
    struct buf b;
    size_t n = 0;
    buf_init(&b);
    buf_append_str(&b, "{\"commands\":[");
    for (struct command *c = list_entry(cs->by_age.tail, struct command, age); c && n < 100;
         c = list_entry(c->age.prev, struct command, age)) {
        if (strcmp(c->device, dev->id) != 0)
            continue;
        if (n++)
            buf_append_str(&b, ",");
        write_json(c, &b);
    }
    buf_append_str(&b, "]}");
    http_respond(h, 200, "application/json", b.data, b.len, NULL);
    buf_fini(&b);
}
