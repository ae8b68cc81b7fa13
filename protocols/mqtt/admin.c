/* protocols/mqtt/admin.c: the broker's operations API (broker.h, "operations"): sessions,
 * subscriptions and retained messages listed as plain snapshots and removed on request
 * from REST (web/ops.c). Removals go through the persistence port like the broker's own,
 * so their writes join the caller's ticket. Loop thread only; never inside broker work. */
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "protocols/mqtt/broker_int.h"

static void fill_info(const struct mqtt_session *s, struct mqtt_session_info *out)
{
    static const struct mqtt_deliv none;
    const struct mqtt_deliv *d = s->dv ? s->dv : &none;
    *out = (struct mqtt_session_info){
        .client_id = s->client_id, .username = s->username, .device = session_device(s),
        .clean = s->clean, .conn_id = s->conn ? s->conn->c->id : 0,
        .subscriptions = d->nsubs, .queued = d->queue.len, .inflight = d->ninflight,
        .dropped = d->dropped,
        .protocol = s->conn ? s->conn->lim.version : 0,
        .session_expiry_s = s->clean ? 0 : s->expiry_s,
        .will_pending = d->will != NULL,
    };
    if (s->conn && s->conn->v5) {
        const struct mqtt5_conn *v5 = s->conn->v5;
        size_t in = 0;
        if (v5->alias_in)
            for (size_t i = 1; i <= v5->alias_max_in; i++)
                in += v5->alias_in[i] != NULL;
        out->receive_maximum = v5->recv_max_out;
        out->topic_aliases = (uint32_t)(in + v5->alias_out_n);
    }
}

void mqtt_broker_sessions(struct mqtt_broker *b, mqtt_session_info_fn fn, void *ctx)
{
    size_t it = 0;
    void *v;
    while (map_next(&b->sessions, &it, NULL, &v)) {
        struct mqtt_session_info info;
        fill_info(v, &info);
        fn(ctx, &info);
    }
}

int mqtt_broker_session(struct mqtt_broker *b, const char *client_id, mqtt_session_info_fn fn,
                        void *ctx)
{
    struct mqtt_session *s = broker_session_get(b, client_id);
    struct mqtt_session_info info;
    if (!s)
        return GW_ENOENT;
    fill_info(s, &info);
    fn(ctx, &info);
    return 0;
}

struct list_ctx {
    const char *client_id;
    mqtt_sub_info_fn fn;
    void *ctx;
};

static void on_sub(void *ctx, const char *filter, size_t len, uint8_t qos, uint32_t opts)
{
    struct list_ctx *lc = ctx;
    (void)opts;
    lc->fn(lc->ctx, lc->client_id, filter, len, qos);
}

int mqtt_broker_subscriptions(struct mqtt_broker *b, const char *client_id, mqtt_sub_info_fn fn,
                              void *ctx)
{
    size_t it = 0;
    void *v;
    if (client_id) {
        struct mqtt_session *s = broker_session_get(b, client_id);
        struct list_ctx lc = {client_id, fn, ctx};
        if (!s)
            return GW_ENOENT;
        mqtt_router_list(b->router, s, on_sub, &lc);
        return 0;
    }
    while (map_next(&b->sessions, &it, NULL, &v)) {
        struct mqtt_session *s = v;
        struct list_ctx lc = {s->client_id, fn, ctx};
        mqtt_router_list(b->router, s, on_sub, &lc);
    }
    return 0;
}

int mqtt_broker_session_discard(struct mqtt_broker *b, const char *client_id, struct ticket *t)
{
    struct mqtt_session *s = broker_session_get(b, client_id);
    if (!s)
        return GW_ENOENT;
    if (s->conn) {
        /* detached now (its close callback comes later): a clean session is gone with it */
        broker_disconnect(s->conn, MQTT_RC_ADMINISTRATIVE_ACTION, "session discarded by the API");
        broker_conn_finish_now(s->conn);
        s = broker_session_get(b, client_id);
        if (!s)
            return 0;
    }
    ticket_add(t, broker_session_free(b, s));
    return 0;
}

int mqtt_broker_session_unsubscribe(struct mqtt_broker *b, const char *client_id,
                                    const char *filter, struct ticket *t)
{
    struct mqtt_session *s = broker_session_get(b, client_id);
    /* as broker_session_unsubscribe, but the row's deletion joins the caller's ticket */
    if (!s || share_unsubscribe(b, s, filter, strlen(filter)) != 1)
        return GW_ENOENT;
    broker_session_count_sub(s, filter, strlen(filter), -1);
    if (!s->clean)
        ticket_add(t, b->store.delete_session_sub(b->store.ctx, s->client_id, filter));
    return 0;
}

static int group_cmp(const void *a, const void *b)
{
    const struct share_group *x = *(struct share_group *const *)a;
    const struct share_group *y = *(struct share_group *const *)b;
    return strcmp(x->key, y->key);
}

void mqtt_broker_shared(struct mqtt_broker *b, mqtt_share_info_fn fn, void *ctx)
{
    struct share_group **all;
    size_t n = 0, it = 0;
    void *v;

    if (!b || !b->share || b->share->by_key.len == 0)
        return;
    all = xcalloc(b->share->by_key.len, sizeof *all);
    while (map_next(&b->share->by_key, &it, NULL, &v))
        all[n++] = v;
    qsort(all, n, sizeof *all, group_cmp);
    for (size_t i = 0; i < n; i++) {
        const struct share_group *g = all[i];
        struct mqtt_share_info info = {g->key, g->name_len, g->key + g->name_len + 1, g->n, 0,
                                       g->sent};
        for (uint32_t k = 0; k < g->n; k++)
            info.connected += ((const struct mqtt_session *)g->m[k].sub)->conn != NULL;
        fn(ctx, &info);
    }
    free(all);
}

struct ret_ctx {
    mqtt_retained_info_fn fn;
    void *ctx;
};

static void on_retained(void *ctx, struct retained *r)
{
    struct ret_ctx *rc = ctx;
    rc->fn(rc->ctx, r->topic, r->m->payload, r->m->payload_len, r->qos, r->m->ts_ms);
}

void mqtt_broker_retained(struct mqtt_broker *b, const char *filter, mqtt_retained_info_fn fn,
                          void *ctx)
{
    struct ret_ctx rc = {fn, ctx};
    retained_match(&b->retained, filter, strlen(filter), on_retained, &rc);
}

int mqtt_broker_retained_clear(struct mqtt_broker *b, const char *topic, struct ticket *t)
{
    struct msg *m;
    if (!map_get(&b->retained.by_topic, topic, strlen(topic)))
        return GW_ENOENT;
    m = msg_new(MSG_PLAIN, NULL, topic, "", 0, NULL, 0);
    retained_put(&b->retained, m); /* an empty message clears the topic */
    msg_unref(m);
    if (topic[0] != '$') {
        b->nretained--;
        ticket_add(t, b->store.put_retained(b->store.ctx, topic, "", 0, 0));
    }
    return 0;
}
