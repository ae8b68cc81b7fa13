/* gateway/bridge/upstream.c: upstream_paho, the link to one upstream over paho-mqtt-c's
 * MQTTAsync, MQTT 3.1.1 or MQTT 5 as the upstream's protocol says (see upstream.h for
 * what paho does across a reconnect).
 *
 * Threads: open/connect/subscribe/send/close run on the loop thread; paho's callbacks
 * run on paho's threads and only push a struct event on l->events (l->lock) and wake
 * the loop with uv_async_send; on_wake drains the queue on the loop and calls the
 * bridge's upstream_events. A send's context (struct send_ctx) is owned by paho until
 * one of its callbacks runs, which frees it, also across reconnects: a PUBLISH that paho
 * had queued but not written when the connection dropped stays in its command queue and
 * goes out, and calls back, after the next connect, with or without session. Contexts
 * paho never called back are freed at free, after MQTTAsync_destroy.
 *
 * The loop follows each link's phase (idle, connecting, up) and passes on only the events
 * that fit it: a connected upstream ends once (EV_LOST or EV_DISCONNECTED, whichever
 * comes first; paho versions differ in whether connectionLost follows an MQTT 5
 * DISCONNECT), and a connect failure counts only while an attempt is under way.
 *
 * MQTT 5 (cfg->protocol 5): Clean Start and a Session Expiry Interval replace cleansession;
 * the v5 callbacks carry reason codes, which go to the bridge as reason and refused
 * events. Messages go out without properties: Gale's messages carry none today (a
 * property to forward would be added to the message in paho_send). */
#include "gateway/bridge/upstream.h"

#include <MQTTAsync.h>
#include <MQTTProperties.h>
#include <MQTTReasonCodes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/err.h"
#include "base/list.h"
#include "gateway/bridge/bridge_cfg.h"
#include "gateway/log.h"

enum event_kind {
    EV_CONNECTED, EV_CONNECT_FAILED, EV_LOST, EV_DELIVERED, EV_MESSAGE,
    EV_REFUSED,              /* MQTT 5: a PUBACK/PUBREC with a reason code >= 0x80 */
    EV_DISCONNECTED,         /* MQTT 5: a DISCONNECT from the upstream */
    EV_SUBACK,               /* MQTT 5: a subscription refused (tag: its filter's index) */
};

enum phase { PH_IDLE, PH_CONNECTING, PH_UP };

struct event {
    struct list_link link;
    enum event_kind kind;
    uint64_t tag;            /* EV_DELIVERED, EV_REFUSED, EV_SUBACK */
    bool ok;                 /* EV_DELIVERED; EV_CONNECTED: session present */
    uint8_t qos;             /* EV_MESSAGE */
    bool retain;
    size_t len;              /* EV_MESSAGE: payload bytes; EV_CONNECTED: the upstream's
                              * Maximum Packet Size (MQTT 5), 0 when it set none */
    char *text;              /* EV_LOST, EV_CONNECT_FAILED, EV_DISCONNECTED: what happened;
                              * EV_MESSAGE topic */
    unsigned char *payload;  /* EV_MESSAGE */
    int code;                /* reason code (CONNACK, DISCONNECT, PUBACK, SUBACK); -1 none */
    char *reason_string;     /* the packet's Reason String, or NULL */
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
    enum phase phase;        /* loop thread */
    size_t max_packet;       /* the upstream's Maximum Packet Size, 0: none (loop thread) */
    bool v5;                 /* cfg->protocol is 5 */
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
    e->code = -1;
    return e;
}

/* A reason code's name: MQTT 5's, or MQTT 3.1.1's CONNACK return codes. Static. */
static const char *code_name(const struct link *l, int code)
{
    static const char *const v311[] = {
        "Connection Accepted", "Unacceptable protocol version", "Identifier rejected",
        "Server unavailable", "Bad user name or password", "Not authorized",
    };
    const char *n;
    if (!l->v5)
        return code >= 0 && code <= 5 ? v311[code] : "Unknown";
    if (code == 0)
        return "Success"; /* paho spells it SUCCESS */
    n = code > 0 ? MQTTReasonCode_toString((enum MQTTReasonCodes)code) : NULL;
    return n ? n : "Unknown";
}

/* A heap copy of the Reason String property of p, or NULL. */
static char *reason_string(MQTTProperties *p)
{
    MQTTProperty *rs = NULL;
    char *s;
    if (p && p->count)
        rs = MQTTProperties_getProperty(p, MQTTPROPERTY_CODE_REASON_STRING);
    if (!rs || rs->value.data.len <= 0 || !rs->value.data.data)
        return NULL;
    s = xmalloc((size_t)rs->value.data.len + 1);
    memcpy(s, rs->value.data.data, (size_t)rs->value.data.len);
    s[rs->value.data.len] = '\0';
    return s;
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
    struct event *e;
    snprintf(why, sizeof why, "connect failed: %s (code %d)",
             r && r->message ? r->message : MQTTAsync_strerror(r ? r->code : -1),
             r ? r->code : -1);
    e = event_new(EV_CONNECT_FAILED, why);
    if (r && r->code > 0 && r->code <= 5) /* paho's own errors are negative: the CONNACK's */
        e->code = r->code;
    push(ctx, e);
}

static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    struct event *e = event_new(EV_CONNECTED, NULL);
    e->ok = r && r->alt.connect.sessionPresent;
    e->code = r ? (int)r->reasonCode : 0;
    e->reason_string = r ? reason_string(&r->properties) : NULL;
    if (r && MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE))
        e->len = (unsigned)MQTTProperties_getNumericValue(&r->properties,
                                                         MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE);
    push(ctx, e);
}

/* A refusing CONNACK's reason code comes as code (paho 1.3) or as reasonCode. */
static void on_connect_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    struct link *l = ctx;
    char why[384];
    char *rs = r ? reason_string(&r->properties) : NULL;
    struct event *e;
    int code = !r ? -1
               : (int)r->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR ? (int)r->reasonCode
               : r->code >= MQTTREASONCODE_UNSPECIFIED_ERROR && r->code <= 0xFF ? r->code
                                                                              : -1;
    if (code >= 0)
        snprintf(why, sizeof why, "connect refused: CONNACK 0x%02X %s%s%.256s", (unsigned)code,
                 code_name(l, code), rs ? ": " : "", rs ? rs : "");
    else
        snprintf(why, sizeof why, "connect failed: %s (code %d)",
                 r && r->message ? r->message : MQTTAsync_strerror(r ? r->code : -1),
                 r ? r->code : -1);
    e = event_new(EV_CONNECT_FAILED, why);
    e->code = code;
    e->reason_string = rs;
    push(l, e);
}

static void on_connection_lost(void *ctx, char *cause)
{
    push(ctx, event_new(EV_LOST, cause && cause[0] ? cause : "connection lost"));
}

/* MQTT 5: the upstream sent DISCONNECT (paho closes the connection next). */
static void on_disconnected(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
    struct link *l = ctx;
    char why[384];
    char *rs = reason_string(props);
    struct event *e;
    snprintf(why, sizeof why, "disconnected by the upstream: 0x%02X %s%s%.256s", (unsigned)rc,
             code_name(l, (int)rc), rs ? ": " : "", rs ? rs : "");
    e = event_new(EV_DISCONNECTED, why);
    e->code = (int)rc;
    e->reason_string = rs;
    push(l, e);
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

static void on_send_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    send_done(ctx, true);
}

/* A reason code >= 0x80 comes only from the upstream's PUBACK/PUBREC: the message is
 * refused. Anything else (the connection went, paho's session was cleaned) is a failure
 * the bridge sends again after. */
static void on_send_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    struct send_ctx *s = ctx;
    struct link *l = s->l;
    struct event *e;

    if (!r || (int)r->reasonCode < MQTTREASONCODE_UNSPECIFIED_ERROR) {
        send_done(s, false);
        return;
    }
    e = event_new(EV_REFUSED, NULL);
    e->tag = s->tag;
    e->code = (int)r->reasonCode;
    e->reason_string = reason_string(&r->properties);
    uv_mutex_lock(&l->lock);
    list_remove(&l->sends, &s->link);
    list_push_back(&l->events, &e->link);
    uv_mutex_unlock(&l->lock);
    free(s);
    uv_async_send(&l->wake);
}

/* MQTT 5 SUBACK: one event per refused filter (context: the link). */
static void suback_refused(struct link *l, int index, int code)
{
    struct event *e = event_new(EV_SUBACK, NULL);
    e->tag = (uint64_t)index;
    e->code = code;
    push(l, e);
}

static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    if (!r)
        return;
    if (r->alt.sub.reasonCodeCount > 1 && r->alt.sub.reasonCodes) {
        for (int i = 0; i < r->alt.sub.reasonCodeCount; i++)
            if ((int)r->alt.sub.reasonCodes[i] >= MQTTREASONCODE_UNSPECIFIED_ERROR)
                suback_refused(ctx, i, (int)r->alt.sub.reasonCodes[i]);
    } else if ((int)r->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
        suback_refused(ctx, 0, (int)r->reasonCode);
    }
}

static void on_sub_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    /* one filter refused; a lost connection subscribes again at the next connect */
    if (r && (int)r->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR)
        suback_refused(ctx, 0, (int)r->reasonCode);
}

/* ---- the loop thread ---- */

static void connect_addr(struct link *l);

static void event_free(struct event *e)
{
    free(e->text);
    free(e->payload);
    free(e->reason_string);
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
                l->phase = PH_UP;
                l->max_packet = e->len;
                if (l->ev->reason)
                    l->ev->reason(l->ev_ctx, UPSTREAM_CONNACK, e->code < 0 ? 0 : e->code,
                                  code_name(l, e->code < 0 ? 0 : e->code), e->reason_string);
                l->ev->connected(l->ev_ctx, l->cfg->addresses[l->addr], e->ok);
                break;
            case EV_CONNECT_FAILED: /* the next address, or lost once every one failed */
                if (l->phase != PH_CONNECTING)
                    break; /* a stale report of an attempt that already ended */
                if (e->code >= 0 && l->ev->reason)
                    l->ev->reason(l->ev_ctx, UPSTREAM_CONNACK, e->code, code_name(l, e->code),
                                  e->reason_string);
                if (++l->tried < l->cfg->naddresses) {
                    l->addr = (l->addr + 1) % l->cfg->naddresses;
                    connect_addr(l);
                } else {
                    l->phase = PH_IDLE;
                    l->ev->lost(l->ev_ctx, e->text);
                }
                break;
            case EV_DISCONNECTED:
                if (l->phase != PH_UP)
                    break;
                if (l->ev->reason)
                    l->ev->reason(l->ev_ctx, UPSTREAM_DISCONNECT, e->code, code_name(l, e->code),
                                  e->reason_string);
                l->phase = PH_IDLE;
                l->ev->lost(l->ev_ctx, e->text);
                break;
            case EV_LOST:
                if (l->phase != PH_UP)
                    break; /* the DISCONNECT that ended it was reported */
                l->phase = PH_IDLE;
                l->ev->lost(l->ev_ctx, e->text);
                break;
            case EV_DELIVERED:
                l->ev->delivered(l->ev_ctx, e->tag, e->ok);
                break;
            case EV_REFUSED:
                if (l->ev->refused)
                    l->ev->refused(l->ev_ctx, e->tag, e->code, code_name(l, e->code),
                                   e->reason_string);
                else
                    l->ev->delivered(l->ev_ctx, e->tag, false);
                break;
            case EV_SUBACK:
                if (e->tag < l->cfg->nsubscribe)
                    log_warn("bridge upstream=%s subscribe refused filter=\"%s%s\" "
                             "reason=0x%02X (%s)", l->cfg->name, l->cfg->remote_prefix,
                             log_q(l->cfg->subscribe[e->tag]), (unsigned)e->code,
                             code_name(l, e->code));
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
    l->v5 = cfg->protocol == 5;
    for (size_t i = 0; i < cfg->naddresses; i++)
        if (strncmp(cfg->addresses[i], "ssl://", 6) == 0 ||
            strncmp(cfg->addresses[i], "wss://", 6) == 0)
            l->tls = true;
    /* our outbox is the persistence and we only send while connected; paho's buffer
     * limit also applies while connected, so it covers the window and paho's own
     * retransmissions */
    co.sendWhileDisconnected = 0;
    co.maxBufferedMessages = (int)(cfg->max_inflight * 3 + 64);
    co.MQTTVersion = l->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    rc = MQTTAsync_createWithOptions(&l->client, cfg->addresses[0], cfg->client_id,
                                     MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        snprintf(err, errlen, "bridge upstream=%s: cannot create the MQTT client: %s",
                 cfg->name, MQTTAsync_strerror(rc));
        free(l);
        return NULL;
    }
    MQTTAsync_setCallbacks(l->client, l, on_connection_lost, on_message, NULL);
    if (l->v5)
        MQTTAsync_setDisconnected(l->client, l, on_disconnected);
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
    MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;
    MQTTProperty expiry;
    const struct bridge_upstream_cfg *cfg = l->cfg;
    int rc;

    l->phase = PH_CONNECTING;
    if (l->v5)
        o = o5;
    o.keepAliveInterval = cfg->keepalive_s;
    if (l->v5) {
        /* Clean Start, and the session kept session_expiry_s after a loss (paho copies
         * the properties) */
        o.cleanstart = cfg->clean_session;
        memset(&expiry, 0, sizeof expiry);
        expiry.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
        expiry.value.integer4 = cfg->session_expiry_s;
        MQTTProperties_add(&props, &expiry);
        o.connectProperties = &props;
        o.onSuccess5 = on_connect_ok5;
        o.onFailure5 = on_connect_failed5;
    } else {
        o.cleansession = cfg->clean_session;
        o.onSuccess = on_connect_ok;
        o.onFailure = on_connect_failed;
    }
    o.maxInflight = (int)(cfg->max_inflight * 2 + 16); /* ours + paho's retransmissions */
    o.username = cfg->username;
    o.password = cfg->password;
    o.connectTimeout = 5;
    o.serverURIs = &cfg->addresses[l->addr];
    o.serverURIcount = 1;
    o.MQTTVersion = l->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    o.automaticReconnect = 0; /* the bridge's own backoff (loop timer) reconnects */
    o.context = l;
    if (l->tls) {
        ssl.trustStore = cfg->ca_file;
        ssl.keyStore = cfg->cert_file;
        ssl.privateKey = cfg->key_file;
        ssl.enableServerCertAuth = cfg->verify;
        ssl.verify = cfg->verify;
        o.ssl = &ssl;
    }
    rc = MQTTAsync_connect(l->client, &o);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
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

/* MQTT 5: No Local on every filter (what the bridge sends up never comes back down to
 * it), but on shared subscriptions, where the protocol forbids it; a refused filter is
 * logged (EV_SUBACK). */
static int paho_subscribe(void *link, char *const *filters, size_t n, uint8_t qos)
{
    struct link *l = link;
    int *qoss = xcalloc(n + 1, sizeof *qoss);
    MQTTSubscribe_options *opts = NULL;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int rc;

    for (size_t i = 0; i < n; i++)
        qoss[i] = qos;
    if (l->v5) {
        MQTTSubscribe_options init = MQTTSubscribe_options_initializer;
        opts = xcalloc(n + 1, sizeof *opts);
        for (size_t i = 0; i < n; i++) {
            opts[i] = init;
            opts[i].noLocal = strncmp(filters[i], "$share/", 7) != 0;
        }
        ro.subscribeOptions = opts[0]; /* paho reads this one when n is 1 */
        ro.subscribeOptionsCount = (int)n;
        ro.subscribeOptionsList = opts;
        ro.onSuccess5 = on_sub_ok5;
        ro.onFailure5 = on_sub_failed5;
        ro.context = l;
    }
    rc = MQTTAsync_subscribeMany(l->client, (int)n, filters, qoss, l->v5 ? &ro : NULL);
    free(qoss);
    free(opts);
    return rc == MQTTASYNC_SUCCESS ? 0 : GW_EINVAL;
}

/* Bytes of the PUBLISH packet for topic and len payload bytes, without properties. */
static size_t publish_size(const char *topic, size_t len, uint8_t qos)
{
    size_t rem = 2 + strlen(topic) + (qos ? 2 : 0) + 1 + len, n = 1;
    for (size_t r = rem; r >= 128; r /= 128)
        n++;
    return 1 + n + rem;
}

static int paho_send(void *link, uint64_t tag, const char *topic, const void *payload, size_t len,
                     uint8_t qos)
{
    struct link *l = link;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    struct send_ctx *s;
    int rc;

    /* MQTT 5: a packet past the upstream's Maximum Packet Size would make it disconnect
     * (0x95), again at every resend: it is refused here with that reason code */
    if (l->v5 && l->max_packet && publish_size(topic, len, qos) > l->max_packet) {
        struct event *e = event_new(EV_REFUSED, NULL);
        char why[96];
        snprintf(why, sizeof why, "larger than the upstream's Maximum Packet Size (%zu bytes)",
                 l->max_packet);
        e->tag = tag;
        e->code = MQTTREASONCODE_PACKET_TOO_LARGE;
        e->reason_string = xstrdup(why);
        push(l, e);
        return 0;
    }
    s = xcalloc(1, sizeof *s);
    s->l = l;
    s->tag = tag;
    m.payload = (void *)payload;
    m.payloadlen = (int)len;
    m.qos = qos;
    if (l->v5) {
        ro.onSuccess5 = on_send_ok5;
        ro.onFailure5 = on_send_failed5;
    } else {
        ro.onSuccess = on_send_ok;
        ro.onFailure = on_send_failed;
    }
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
