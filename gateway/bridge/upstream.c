/* gateway/bridge/upstream.c: upstream_paho, the link to one upstream over paho-mqtt-c's
 * MQTTAsync (see upstream.h for what paho does across a reconnect).
 *
 * Threads: open/connect/subscribe/send/close run on the loop thread; paho's callbacks
 * run on paho's threads and only push a struct event on l->events (l->lock) and wake
 * the loop with uv_async_send; on_wake drains the queue on the loop and calls the
 * bridge's upstream_events. A send's context (struct send_ctx) is owned by paho until
 * one of its callbacks runs, which frees it, also across reconnects: a PUBLISH that paho
 * had queued but not written when the connection dropped stays in its command queue and
 * goes out, and calls back, after the next connect, with or without session. Contexts
 * paho never called back are freed at free, after MQTTAsync_destroy. */
#include "gateway/bridge/upstream.h"

#include <MQTTAsync.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/err.h"
#include "base/list.h"
#include "gateway/bridge/bridge_cfg.h"
#include "gateway/log.h"

enum event_kind { EV_CONNECTED, EV_CONNECT_FAILED, EV_LOST, EV_DELIVERED, EV_MESSAGE };

struct event {
    struct list_link link;
    enum event_kind kind;
    uint64_t tag;            /* EV_DELIVERED */
    bool ok;                 /* EV_DELIVERED; EV_CONNECTED: session present */
    uint8_t qos;             /* EV_MESSAGE */
    bool retain;
    size_t len;              /* EV_MESSAGE: payload bytes */
    char *text;              /* EV_CONNECTED uri, EV_LOST reason, EV_MESSAGE topic */
    unsigned char *payload;  /* EV_MESSAGE */
};

struct send_ctx {
    struct list_link link;   /* in l->sends */
    struct link *l;
    uint64_t tag;
};

struct link {
    const struct bridge_upstream_cfg *cfg;
    const struct upstream_events *ev;
    void *ev_ctx;
    MQTTAsync client;
    uv_async_t wake;
    uv_mutex_t lock;         /* guards events and sends */
    struct list events;      /* struct event, oldest first */
    struct list sends;       /* struct send_ctx paho holds */
    size_t addr;             /* the address of the attempt under way (loop thread) */
    size_t tried;            /* addresses this attempt has tried so far */
    bool closed;
    bool tls;                /* some address is ssl:// or wss:// */
};

static void push(struct link *l, struct event *e)
{
    uv_mutex_lock(&l->lock);
    list_push_back(&l->events, &e->link);
    uv_mutex_unlock(&l->lock);
    uv_async_send(&l->wake);
}

static struct event *event_new(enum event_kind kind, const char *text)
{
    struct event *e = xcalloc(1, sizeof *e);
    e->kind = kind;
    e->text = text ? xstrdup(text) : NULL;
    return e;
}

/* ---- paho's threads ---- */

/* The address is not taken from r: paho 1.3 reports its first serverURI there after a
 * reconnect of a client that was connected before. Each attempt names one address, so
 * the loop knows which one answered (l->addr). */
static void on_connect_ok(void *ctx, MQTTAsync_successData *r)
{
    struct event *e = event_new(EV_CONNECTED, NULL);
    e->ok = r && r->alt.connect.sessionPresent;
    push(ctx, e);
}

static void on_connect_failed(void *ctx, MQTTAsync_failureData *r)
{
    char why[256];
    snprintf(why, sizeof why, "connect failed: %s (code %d)",
             r && r->message ? r->message : MQTTAsync_strerror(r ? r->code : -1),
             r ? r->code : -1);
    push(ctx, event_new(EV_CONNECT_FAILED, why));
}

static void on_connection_lost(void *ctx, char *cause)
{
    push(ctx, event_new(EV_LOST, cause && cause[0] ? cause : "connection lost"));
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
    struct event *e = event_new(EV_MESSAGE, NULL);
    size_t tl = topic_len > 0 ? (size_t)topic_len : strlen(topic);
    e->text = xmalloc(tl + 1);
    memcpy(e->text, topic, tl);
    e->text[tl] = '\0';
    e->len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0;
    e->payload = xmalloc(e->len + 1);
    if (e->len)
        memcpy(e->payload, m->payload, e->len);
    e->qos = (uint8_t)m->qos;
    e->retain = m->retained != 0;
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    push(ctx, e);
    return 1;
}

static void send_done(struct send_ctx *s, bool ok)
{
    struct link *l = s->l;
    struct event *e = event_new(EV_DELIVERED, NULL);
    e->tag = s->tag;
    e->ok = ok;
    uv_mutex_lock(&l->lock);
    list_remove(&l->sends, &s->link);
    list_push_back(&l->events, &e->link);
    uv_mutex_unlock(&l->lock);
    free(s);
    uv_async_send(&l->wake);
}

static void on_send_ok(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    send_done(ctx, true);
}

static void on_send_failed(void *ctx, MQTTAsync_failureData *r)
{
    (void)r;
    send_done(ctx, false);
}

/* ---- the loop thread ---- */

static void connect_addr(struct link *l);

static void event_free(struct event *e)
{
    free(e->text);
    free(e->payload);
    free(e);
}

static void on_wake(uv_async_t *a)
{
    struct link *l = a->data;
    struct list todo;

    uv_mutex_lock(&l->lock);
    todo = l->events;
    l->events = (struct list){0};
    uv_mutex_unlock(&l->lock);
    while (todo.head) {
        struct event *e = list_entry(todo.head, struct event, link);
        list_remove(&todo, &e->link);
        if (!l->closed) {
            switch (e->kind) {
            case EV_CONNECTED:
                l->ev->connected(l->ev_ctx, l->cfg->addresses[l->addr], e->ok);
                break;
            case EV_CONNECT_FAILED: /* the next address, or lost once every one failed */
                if (++l->tried < l->cfg->naddresses) {
                    l->addr = (l->addr + 1) % l->cfg->naddresses;
                    connect_addr(l);
                } else {
                    l->ev->lost(l->ev_ctx, e->text);
                }
                break;
            case EV_LOST:
                l->ev->lost(l->ev_ctx, e->text);
                break;
            case EV_DELIVERED:
                l->ev->delivered(l->ev_ctx, e->tag, e->ok);
                break;
            case EV_MESSAGE:
                l->ev->message(l->ev_ctx, e->text, e->payload, e->len, e->qos, e->retain);
                break;
            }
        }
        event_free(e);
    }
}

static void *paho_open(uv_loop_t *loop, const struct bridge_upstream_cfg *cfg,
                       const struct upstream_events *ev, void *ev_ctx, char *err, size_t errlen)
{
    struct link *l = xcalloc(1, sizeof *l);
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    int rc;

    l->cfg = cfg;
    l->ev = ev;
    l->ev_ctx = ev_ctx;
    for (size_t i = 0; i < cfg->naddresses; i++)
        if (strncmp(cfg->addresses[i], "ssl://", 6) == 0 ||
            strncmp(cfg->addresses[i], "wss://", 6) == 0)
            l->tls = true;
    /* our outbox is the persistence and we only send while connected; paho's buffer
     * limit also applies while connected, so it covers the window and paho's own
     * retransmissions */
    co.sendWhileDisconnected = 0;
    co.maxBufferedMessages = (int)(cfg->max_inflight * 3 + 64);
    co.MQTTVersion = MQTTVERSION_3_1_1;
    rc = MQTTAsync_createWithOptions(&l->client, cfg->addresses[0], cfg->client_id,
                                     MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        snprintf(err, errlen, "bridge upstream=%s: cannot create the MQTT client: %s",
                 cfg->name, MQTTAsync_strerror(rc));
        free(l);
        return NULL;
    }
    MQTTAsync_setCallbacks(l->client, l, on_connection_lost, on_message, NULL);
    uv_mutex_init(&l->lock);
    uv_async_init(loop, &l->wake, on_wake);
    l->wake.data = l;
    uv_unref((uv_handle_t *)&l->wake);
    return l;
}

/* One connect attempt to l->addr; its outcome comes as EV_CONNECTED or EV_CONNECT_FAILED. */
static void connect_addr(struct link *l)
{
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    const struct bridge_upstream_cfg *cfg = l->cfg;
    int rc;

    o.keepAliveInterval = cfg->keepalive_s;
    o.cleansession = cfg->clean_session;
    o.maxInflight = (int)(cfg->max_inflight * 2 + 16); /* ours + paho's retransmissions */
    o.username = cfg->username;
    o.password = cfg->password;
    o.connectTimeout = 5;
    o.serverURIs = &cfg->addresses[l->addr];
    o.serverURIcount = 1;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    o.automaticReconnect = 0; /* the bridge's own backoff (loop timer) reconnects */
    o.onSuccess = on_connect_ok;
    o.onFailure = on_connect_failed;
    o.context = l;
    if (l->tls) {
        ssl.trustStore = cfg->ca_file;
        ssl.keyStore = cfg->cert_file;
        ssl.privateKey = cfg->key_file;
        ssl.enableServerCertAuth = cfg->verify;
        ssl.verify = cfg->verify;
        o.ssl = &ssl;
    }
    if ((rc = MQTTAsync_connect(l->client, &o)) != MQTTASYNC_SUCCESS) {
        char why[160];
        snprintf(why, sizeof why, "connect failed: %s", MQTTAsync_strerror(rc));
        push(l, event_new(EV_CONNECT_FAILED, why));
    }
}

/* Every address in order, from the first (a recovered primary is preferred again). */
static void paho_connect(void *link)
{
    struct link *l = link;

    l->addr = 0;
    l->tried = 0;
    connect_addr(l);
}

static int paho_subscribe(void *link, char *const *filters, size_t n, uint8_t qos)
{
    struct link *l = link;
    int *qoss = xcalloc(n + 1, sizeof *qoss);
    int rc;

    for (size_t i = 0; i < n; i++)
        qoss[i] = qos;
    rc = MQTTAsync_subscribeMany(l->client, (int)n, filters, qoss, NULL);
    free(qoss);
    return rc == MQTTASYNC_SUCCESS ? 0 : GW_EINVAL;
}

static int paho_send(void *link, uint64_t tag, const char *topic, const void *payload, size_t len,
                     uint8_t qos)
{
    struct link *l = link;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    struct send_ctx *s = xcalloc(1, sizeof *s);
    int rc;

    s->l = l;
    s->tag = tag;
    m.payload = (void *)payload;
    m.payloadlen = (int)len;
    m.qos = qos;
    ro.onSuccess = on_send_ok;
    ro.onFailure = on_send_failed;
    ro.context = s;
    /* listed before the call: its callback may run on paho's thread at once */
    uv_mutex_lock(&l->lock);
    list_push_back(&l->sends, &s->link);
    uv_mutex_unlock(&l->lock);
    rc = MQTTAsync_sendMessage(l->client, topic, &m, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        uv_mutex_lock(&l->lock);
        list_remove(&l->sends, &s->link);
        uv_mutex_unlock(&l->lock);
        free(s);
        return GW_ELIMIT;
    }
    return 0;
}

static void paho_close(void *link)
{
    struct link *l = link;
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;

    l->closed = true;
    if (MQTTAsync_isConnected(l->client)) {
        d.timeout = 500;
        if (MQTTAsync_disconnect(l->client, &d) == MQTTASYNC_SUCCESS)
            for (int i = 0; i < 100 && MQTTAsync_isConnected(l->client); i++)
                usleep(10000);
    }
    MQTTAsync_destroy(&l->client); /* no callback runs after it */
    uv_close((uv_handle_t *)&l->wake, NULL);
}

static void paho_free(void *link)
{
    struct link *l = link;
    if (!l)
        return;
    while (l->events.head) {
        struct event *e = list_entry(l->events.head, struct event, link);
        list_remove(&l->events, &e->link);
        event_free(e);
    }
    while (l->sends.head) {
        struct send_ctx *s = list_entry(l->sends.head, struct send_ctx, link);
        list_remove(&l->sends, &s->link);
        free(s);
    }
    uv_mutex_destroy(&l->lock);
    free(l);
}

const struct upstream_ops upstream_paho = {
    paho_open, paho_connect, paho_subscribe, paho_send, paho_close, paho_free,
};
