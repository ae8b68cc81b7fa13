/* protocols/mqtt/handle.c: one MQTT connection. Decodes every complete packet in
 * the input (mqtt_decode), enforces the 3.1.1 session rules the decoder cannot
 * (CONNECT first and once, client id rules, credentials, keepalive, ACL), and
 * hands publishes to the bus. QoS 1/2 acknowledgements go out in arrival order
 * and only once what the message made storage write (telemetry, a retained message,
 * offline persistent sessions' queues) is durable (gw_await_durable).
 * Protocol violations close the connection with a log line naming the peer and
 * the reason [MQTT-4.8.0-1]. Loop thread only. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/ingest.h"
#include "gateway/log.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "protocols/mqtt/broker_int.h"
#include "storage/store.h"

#define TAG_PUBACK (1ULL << 32)
#define TAG_PUBREC (2ULL << 32)

static void finish_now(struct mqtt_conn *mc);

static void violation(struct mqtt_conn *mc, const char *why)
{
    log_warn("conn=%llu peer=%s proto=mqtt protocol error reason=\"%s\"",
             (unsigned long long)mc->c->id, mc->c->peer, why);
    conn_close(mc->c, why);
}

static void send_buf(struct mqtt_conn *mc)
{
    broker_send(mc);
}

static void connack(struct mqtt_conn *mc, bool sp, uint8_t rc)
{
    mc->out.len = 0;
    mqtt_encode_connack(&mc->out, sp, rc);
    send_buf(mc);
    if (rc != MQTT_CONNACK_ACCEPTED) {
        static const char *const why[] = {"", "unacceptable protocol version",
                                          "identifier rejected", "server unavailable",
                                          "bad user name or password", "not authorized"};
        log_warn("conn=%llu peer=%s proto=mqtt connect refused rc=%d reason=\"%s\"",
                 (unsigned long long)mc->c->id, mc->c->peer, rc, rc < 6 ? why[rc] : "?");
        conn_close_after_write(mc->c, rc < 6 ? why[rc] : "connect refused");
    }
}

/* ---- acks after durability ---- */

static void on_ack_ready(struct conn *c, uint64_t tag, int ok)
{
    struct mqtt_conn *mc = c->proto_state;
    uint16_t id = (uint16_t)(tag & 0xffff);
    if (ok < 0 || !mc) /* closed first: nothing to send */
        return;
    if (!ok) { /* not stored: no ack, so the client sends it again */
        conn_close(c, "storage failure: message not acknowledged");
        return;
    }
    mc->out.len = 0;
    if (tag & TAG_PUBREC)
        mqtt_encode_pubrec(&mc->out, id);
    else
        mqtt_encode_puback(&mc->out, id);
    send_buf(mc);
}

/* ---- CONNECT ---- */

static char *dup_str(struct mqtt_str s)
{
    return xstrndup(s.p ? s.p : "", s.len);
}

/* Anonymous access may name a device by username (no password) when that device has no
 * token: it registered itself through anonymous telemetry (devices.auto_register). */
static struct device *tokenless_device(struct gw *gw, const char *username)
{
    struct device *dev = username[0] ? devices_find(gw->devices, username) : NULL;
    return dev && !dev->token_hash[0] ? dev : NULL;
}

static void handle_connect(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *cp = &pkt->connect;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    struct device *dev = NULL, *presence = NULL;
    struct mqtt_session *s;
    char client_id[256];
    bool sp = false;

    if (cp->level != MQTT_V311 && cp->level != MQTT_V31) {
        connack(mc, false, MQTT_CONNACK_BAD_VERSION); /* [MQTT-3.1.2-2] */
        return;
    }
    mc->lim.version = cp->level;
    if (cp->client_id.len >= sizeof client_id ||
        (cp->level == MQTT_V31 && cp->client_id.len > 23)) { /* 3.1 allows 1..23 bytes */
        connack(mc, false, MQTT_CONNACK_ID_REJECTED);
        return;
    }
    if (cp->client_id.len == 0) {
        if (!cp->clean_session || cp->level == MQTT_V31) { /* [MQTT-3.1.3-8] */
            connack(mc, false, MQTT_CONNACK_ID_REJECTED);
            return;
        }
        /* a unique id for this one clean session [MQTT-3.1.3-6] */
        snprintf(client_id, sizeof client_id, "gale-%llx-%llu",
                 (unsigned long long)gw->started_ms, (unsigned long long)++b->next_anon);
    } else {
        memcpy(client_id, cp->client_id.p, cp->client_id.len);
        client_id[cp->client_id.len] = '\0';
    }
    if (cp->keepalive_s > gw->cfg->mqtt.max_keepalive ||
        (cp->keepalive_s == 0 && gw->cfg->mqtt.max_keepalive < 65535)) {
        /* 3.1.1 cannot tell a client to use a shorter keepalive (Mosquitto does the same) */
        connack(mc, false, MQTT_CONNACK_ID_REJECTED);
        return;
    }
    /* credentials: username = device id, password = token */
    if (cp->has_username && cp->username.len < sizeof mc->username) {
        memcpy(mc->username, cp->username.p, cp->username.len);
        mc->username[cp->username.len] = '\0';
    }
    if (cp->has_username && cp->has_password) {
        dev = ingest_auth(gw, mc->c, cp->username.p, cp->username.len,
                          (const char *)cp->password.p, cp->password.len);
        if (!dev) {
            connack(mc, false, MQTT_CONNACK_BAD_CREDENTIALS);
            return;
        }
        mc->role = strcmp(dev->role, "app") == 0 ? ACL_ROLE_APP : ACL_ROLE_DEVICE;
        if (mc->role == ACL_ROLE_DEVICE)
            snprintf(mc->device, sizeof mc->device, "%s", dev->id);
        presence = dev; /* applications are in the registry too: they get presence */
    } else if (gw->cfg->mqtt.allow_anonymous &&
               (!cp->has_username || !devices_find(gw->devices, mc->username) ||
                tokenless_device(gw, mc->username))) {
        /* a provisioned device's name needs its token, even here */
        mc->role = ACL_ROLE_ANONYMOUS;
        presence = tokenless_device(gw, mc->username);
    } else {
        gw->metrics.auth_failures++;
        connack(mc, false, cp->has_username ? MQTT_CONNACK_BAD_CREDENTIALS
                                            : MQTT_CONNACK_NOT_AUTHORIZED);
        return;
    }
    if (cp->will) {
        if (!acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL, client_id,
                       mc->device[0] ? mc->device : NULL, cp->will_topic.p, cp->will_topic.len,
                       ACL_PUBLISH)) {
            connack(mc, false, MQTT_CONNACK_NOT_AUTHORIZED);
            return;
        }
        mc->has_will = true;
        mc->will_topic = dup_str(cp->will_topic);
        mc->will_payload = xmalloc(cp->will_payload.len + 1);
        if (cp->will_payload.len)
            memcpy(mc->will_payload, cp->will_payload.p, cp->will_payload.len);
        mc->will_len = cp->will_payload.len;
        mc->will_qos = cp->will_qos;
        mc->will_retain = cp->will_retain;
    }
    /* A session of an authenticated client belongs to it: another identity may neither
     * take it over nor resume it (it would read that client's messages). Sessions of
     * anonymous clients are anyone's, as on any open broker. */
    s = broker_session_get(b, client_id);
    if (s && s->role != ACL_ROLE_ANONYMOUS &&
        (mc->role == ACL_ROLE_ANONYMOUS || strcmp(s->username, mc->username) != 0)) {
        log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused: the client "
                 "id belongs to another user",
                 (unsigned long long)mc->c->id, mc->c->peer, client_id, mc->username);
        connack(mc, false, MQTT_CONNACK_ID_REJECTED);
        return;
    }
    /* takeover: the existing connection of this client id is closed [MQTT-3.1.4-2]. It
     * ended without DISCONNECT, so its will is published (as MQTT 5.0 specifies). */
    if (s && s->conn) {
        struct mqtt_conn *old = s->conn;
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" takes over conn=%llu",
                 (unsigned long long)mc->c->id, mc->c->peer, client_id,
                 (unsigned long long)old->c->id);
        conn_close(old->c, "session taken over by a new connection");
        finish_now(old);
        s = broker_session_get(b, client_id); /* a clean session ended with it */
    }
    if (s && cp->clean_session) {
        broker_session_free(b, s); /* [MQTT-3.1.2-6] */
        s = NULL;
    }
    if (s) {
        sp = true; /* [MQTT-3.2.2-2] */
        broker_session_set_identity(b, s, mc->role, mc->username);
    } else {
        s = broker_session_new(b, client_id, cp->clean_session, mc->role, mc->username);
        if (!s->clean)
            broker_session_persist_subs(b, s);
    }
    mc->sess = s;
    mc->connected = true;
    if (++b->connected > b->max_connected)
        b->max_connected = b->connected;
    mc->c->idle_timeout_ms = (unsigned)cp->keepalive_s * 1500; /* 1.5x [MQTT-3.1.2-24] */
    conn_authenticated(mc->c, mc->device);
    connack(mc, sp, MQTT_CONNACK_ACCEPTED);
    log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" connected clean=%d "
             "keepalive=%u session_present=%d",
             (unsigned long long)mc->c->id, mc->c->peer, client_id, mc->username,
             cp->clean_session, cp->keepalive_s, sp);
    if (presence)
        ingest_online(gw, mc->c, presence, "mqtt");
    broker_session_attach(b, s, mc);
}

/* ---- PUBLISH from the client ---- */

static bool qos2_seen(struct mqtt_session *s, uint16_t id)
{
    for (size_t i = 0; i < s->nqos2_in; i++)
        if (s->qos2_in[i] == id)
            return true;
    return false;
}

static void qos2_add(struct mqtt_session *s, uint16_t id)
{
    if (s->nqos2_in == s->qos2_cap) {
        s->qos2_cap = s->qos2_cap ? s->qos2_cap * 2 : 8;
        s->qos2_in = xrealloc(s->qos2_in, s->qos2_cap * sizeof *s->qos2_in);
    }
    s->qos2_in[s->nqos2_in++] = id;
}

static void qos2_remove(struct mqtt_session *s, uint16_t id)
{
    for (size_t i = 0; i < s->nqos2_in; i++) {
        if (s->qos2_in[i] == id) {
            s->qos2_in[i] = s->qos2_in[--s->nqos2_in];
            return;
        }
    }
}

/* devices/<id>/<rest>: fills id and returns rest, or NULL. */
static const char *device_topic(const char *topic, char *id, size_t idlen)
{
    const char *p, *slash;
    if (strncmp(topic, "devices/", 8) != 0)
        return NULL;
    p = topic + 8;
    slash = strchr(p, '/');
    if (!slash || (size_t)(slash - p) >= idlen || !devices_valid_id(p, (size_t)(slash - p)))
        return NULL;
    memcpy(id, p, (size_t)(slash - p));
    id[slash - p] = '\0';
    return slash + 1;
}

static void merge_attributes(struct gw *gw, struct device *dev, const uint8_t *p, size_t len,
                             struct ticket *t)
{
    cJSON *upd = cJSON_ParseWithLength((const char *)p, len), *cur, *it;
    struct store_device sd;
    char *js;
    if (!cJSON_IsObject(upd)) {
        cJSON_Delete(upd);
        return;
    }
    cur = dev->attrs_json ? cJSON_Parse(dev->attrs_json) : NULL;
    if (!cJSON_IsObject(cur)) {
        cJSON_Delete(cur);
        cur = cJSON_CreateObject();
    }
    cJSON_ArrayForEach(it, upd) {
        cJSON_DeleteItemFromObjectCaseSensitive(cur, it->string);
        cJSON_AddItemToObject(cur, it->string, cJSON_Duplicate(it, 1));
    }
    js = cJSON_PrintUnformatted(cur);
    free(dev->attrs_json);
    dev->attrs_json = xstrdup(js);
    cJSON_free(js);
    cJSON_Delete(cur);
    cJSON_Delete(upd);
    sd = (struct store_device){dev->id, dev->token_hash, dev->role, dev->attrs_json,
                               dev->created_ms, dev->last_seen_ms, dev->protocol};
    ticket_add(t, store_put_device(gw->store, &sd));
}

/* The device "me" names in ThingsBoard-style topics: the authenticated device, or for an
 * anonymous client its username when that is a valid device id. NULL when none. */
static const char *self_device(const struct mqtt_conn *mc)
{
    if (mc->device[0])
        return mc->device;
    if (mc->role == ACL_ROLE_ANONYMOUS && devices_valid_id(mc->username, strlen(mc->username)))
        return mc->username;
    return NULL;
}

/* Registers device id on its first telemetry (devices.auto_register, which anonymous access
 * implies). An anonymous client whose username is that id is from then on the device's
 * connection for presence. */
static struct device *auto_register(struct mqtt_conn *mc, const char *id, struct ticket *t)
{
    struct gw *gw = mc->b->gw;
    struct device *dev;
    struct store_device sd;

    if (strcmp(gw->cfg->devices.auto_register, "true") != 0 &&
        !(strcmp(gw->cfg->devices.auto_register, "auto") == 0 && gw->cfg->mqtt.allow_anonymous))
        return NULL;
    dev = devices_add(gw->devices, id, NULL, "device", gw_now_ms());
    sd = (struct store_device){dev->id, "", dev->role, NULL, dev->created_ms, 0, NULL};
    ticket_add(t, store_put_device(gw->store, &sd));
    log_info("conn=%llu peer=%s proto=mqtt device=%s registered on first telemetry",
             (unsigned long long)mc->c->id, mc->c->peer, id);
    if (mc->role == ACL_ROLE_ANONYMOUS && !mc->c->device[0] && strcmp(mc->username, id) == 0)
        ingest_online(gw, mc->c, dev, "mqtt");
    return dev;
}

static void handle_publish(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *pp = &pkt->publish;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    char stack_topic[512], *topic = stack_topic, id[DEVICE_ID_MAX + 1];
    const char *rest;
    struct device *dev = NULL;
    struct msg *m = NULL;
    struct ticket t = {0, 0};
    const char *me = self_device(mc);

    b->publish_in++;
    mc->c->msgs_in++;
    if (pp->topic.len + 64 > sizeof stack_topic)
        topic = xmalloc(pp->topic.len + 64);
    /* ThingsBoard-style topics name the device through the credentials */
    if (me && pp->topic.len == 23 && memcmp(pp->topic.p, "v1/devices/me/telemetry", 23) == 0)
        snprintf(topic, pp->topic.len + 64, "devices/%s/telemetry", me);
    else if (me && pp->topic.len == 24 && memcmp(pp->topic.p, "v1/devices/me/attributes", 24) == 0)
        snprintf(topic, pp->topic.len + 64, "devices/%s/attributes", me);
    else {
        memcpy(topic, pp->topic.p, pp->topic.len);
        topic[pp->topic.len] = '\0';
    }
    if (pp->qos == 2 && qos2_seen(mc->sess, pkt->id))
        goto ack; /* a resent QoS 2 PUBLISH is not delivered twice [MQTT-4.3.3-2] */
    if (!acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL, mc->sess->client_id,
                   mc->device[0] ? mc->device : NULL, topic, strlen(topic), ACL_PUBLISH)) {
        b->acl_denied++;
        if (mc->denied_pub++ == 0)
            log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" publish denied topic=\"%s\"",
                     (unsigned long long)mc->c->id, mc->c->peer, mc->sess->client_id, topic);
        goto ack; /* 3.1.1 has no negative ack: acknowledged and dropped, as Mosquitto does */
    }
    rest = device_topic(topic, id, sizeof id);
    if (rest) {
        dev = devices_find(gw->devices, id);
        if (!dev && strcmp(rest, "telemetry") == 0)
            dev = auto_register(mc, id, &t);
    }
    if (dev && strcmp(rest, "telemetry") == 0) {
        struct ingest_result res;
        const char *why, *code;
        m = ingest_decode(gw, dev, topic, pp->payload, pp->payload_len, &res, &why, &code);
        if (!m && mc->bad_telemetry++ == 0) {
            log_info("conn=%llu peer=%s proto=mqtt device=%s telemetry not stored reason=\"%s\"",
                     (unsigned long long)mc->c->id, mc->c->peer, dev->id, why);
        }
    } else if (dev && strcmp(rest, "attributes") == 0) {
        merge_attributes(gw, dev, pp->payload, pp->payload_len, &t);
    } else if (dev && b->on_reply && strncmp(rest, "commands/", 9) == 0) {
        const char *cmd = rest + 9, *slash = strchr(cmd, '/');
        if (slash && strcmp(slash, "/reply") == 0) {
            char cmd_id[128];
            snprintf(cmd_id, sizeof cmd_id, "%.*s", (int)(slash - cmd), cmd);
            b->on_reply(b->hook_ctx, dev->id, cmd_id, pp->payload, pp->payload_len);
        }
    }
    if (!m)
        m = msg_new(dev && strcmp(rest, "attributes") == 0 ? MSG_ATTRIBUTES : MSG_PLAIN,
                    dev ? dev->id : mc->device, topic, pp->payload, pp->payload_len, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = pp->qos;
    m->retain = pp->retain;
    gw->metrics.messages_in++;
    /* whatever this message made storage write (telemetry rows, the retained message, the
     * queues of offline persistent sessions, a new device) joins t: durable before the ack */
    bus_publish(gw->bus, m, &t);
    msg_unref(m);
ack:
    if (topic != stack_topic)
        free(topic);
    if (pp->qos == 0 || mc->c->closing) /* closed meanwhile (cut off as a subscriber) */
        return;
    /* acks keep arrival order: behind earlier waiters, and behind this message's writes */
    if (pp->qos == 2 && !qos2_seen(mc->sess, pkt->id))
        qos2_add(mc->sess, pkt->id);
    gw_await_durable(mc->c, &t, (pp->qos == 1 ? TAG_PUBACK : TAG_PUBREC) | pkt->id,
                     on_ack_ready);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE ---- */

static void handle_subscribe(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    struct mqtt_broker *b = mc->b;
    uint8_t codes[256], *rc = codes;
    size_t off = 0, n = 0;
    struct mqtt_str f;
    uint8_t opts;

    if (pkt->subscribe.count > sizeof codes)
        rc = xmalloc(pkt->subscribe.count);
    while (mqtt_filter_next(pkt, &off, &f, &opts)) {
        uint8_t qos = opts & 3;
        if (!acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL,
                       mc->sess->client_id, mc->device[0] ? mc->device : NULL, f.p, f.len,
                       ACL_SUBSCRIBE)) {
            b->acl_denied++;
            if (mc->denied_sub++ == 0)
                log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe denied "
                         "filter=\"%.*s\"",
                         (unsigned long long)mc->c->id, mc->c->peer, mc->sess->client_id,
                         (int)f.len, f.p);
            rc[n++] = MQTT_SUBACK_FAILURE;
            continue;
        }
        if (mc->sess->nsubs >= b->gw->cfg->mqtt.max_subscriptions &&
            !mqtt_router_has(b->router, f.p, f.len, mc->sess)) {
            if (mc->denied_sub++ == 0)
                log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe refused "
                         "reason=\"mqtt.max_subscriptions reached\" limit=%zu",
                         (unsigned long long)mc->c->id, mc->c->peer, mc->sess->client_id,
                         b->gw->cfg->mqtt.max_subscriptions);
            rc[n++] = MQTT_SUBACK_FAILURE;
            continue;
        }
        if (mqtt_router_subscribe(b->router, f.p, f.len, mc->sess, qos) == 1)
            mc->sess->nsubs++;
        rc[n++] = qos;
    }
    mc->out.len = 0;
    mqtt_encode_suback(&mc->out, pkt->id, rc, n);
    send_buf(mc);
    broker_session_persist_subs(b, mc->sess);
    /* retained messages follow the SUBACK [MQTT-3.3.1-6] */
    off = n = 0;
    while (mqtt_filter_next(pkt, &off, &f, &opts)) {
        if (rc[n++] != MQTT_SUBACK_FAILURE)
            broker_send_retained(b, mc->sess, f.p, f.len, opts & 3);
    }
    if (rc != codes)
        free(rc);
}

static void handle_unsubscribe(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    size_t off = 0;
    struct mqtt_str f;
    uint8_t opts;
    while (mqtt_filter_next(pkt, &off, &f, &opts))
        if (mqtt_router_unsubscribe(mc->b->router, f.p, f.len, mc->sess) == 1)
            mc->sess->nsubs--;
    mc->out.len = 0;
    mqtt_encode_unsuback(&mc->out, pkt->id);
    send_buf(mc);
    broker_session_persist_subs(mc->b, mc->sess);
}

/* ---- dispatch ---- */

static void handle_packet(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    if (!mc->connected) {
        if (pkt->type != MQTT_CONNECT) {
            violation(mc, "first packet must be CONNECT"); /* [MQTT-3.1.0-1] */
            return;
        }
        handle_connect(mc, pkt);
        return;
    }
    switch (pkt->type) {
    case MQTT_CONNECT:
        violation(mc, "second CONNECT"); /* [MQTT-3.1.0-2] */
        break;
    case MQTT_PUBLISH:
        handle_publish(mc, pkt);
        break;
    case MQTT_PUBACK:
        broker_on_puback(mc->b, mc->sess, pkt->id);
        break;
    case MQTT_PUBREC:
        broker_on_pubrec(mc->b, mc->sess, pkt->id);
        break;
    case MQTT_PUBREL:
        qos2_remove(mc->sess, pkt->id);
        mc->out.len = 0;
        mqtt_encode_pubcomp(&mc->out, pkt->id);
        send_buf(mc);
        break;
    case MQTT_PUBCOMP:
        broker_on_pubcomp(mc->b, mc->sess, pkt->id);
        break;
    case MQTT_SUBSCRIBE:
        handle_subscribe(mc, pkt);
        break;
    case MQTT_UNSUBSCRIBE:
        handle_unsubscribe(mc, pkt);
        break;
    case MQTT_PINGREQ:
        mc->out.len = 0;
        mqtt_encode_pingresp(&mc->out);
        send_buf(mc);
        break;
    case MQTT_DISCONNECT:
        mc->got_disconnect = true; /* the will is discarded [MQTT-3.14.4-3] */
        conn_close(mc->c, "client disconnected");
        break;
    default: /* CONNACK, SUBACK, UNSUBACK, PINGRESP are server-to-client only */
        violation(mc, "packet type not allowed from a client");
        break;
    }
}

static void *mqtt_open(struct conn *c, void *ctx)
{
    struct mqtt_conn *mc = xcalloc(1, sizeof *mc);
    mc->c = c;
    mc->b = ctx;
    mc->lim.max_packet_bytes = c->gw->cfg->mqtt.max_packet_bytes;
    buf_init(&mc->out);
    c->ingest = true;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return mc;
}

static int mqtt_feed(void *state, struct buf *in)
{
    struct mqtt_conn *mc = state;
    struct conn *c = mc->c; /* conn_refeed holds a reference: valid after mc is gone */
    struct mqtt_broker *b = mc->b;
    size_t off = 0;

    broker_enter(b);
    while (!c->closing && !c->close_after_write && off < in->len) {
        struct mqtt_packet pkt;
        size_t used;
        const char *why;
        enum codec_rc rc = mqtt_decode(&mc->lim, in->data + off, in->len - off, &pkt, &used, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            violation(mc, why);
            break;
        }
        off += used;
        b->packets_in++;
        handle_packet(mc, &pkt);
    }
    if (!c->closing)
        buf_consume(in, off);
    broker_leave(b); /* may finish (free) mc when it closed meanwhile */
    return c->closing ? -1 : 0;
}

void mqtt_conn_finish(struct mqtt_conn *mc)
{
    struct mqtt_broker *b = mc->b;
    broker_enter(b); /* a will routed here finishes what it closes after this one */
    if (mc->denied_pub + mc->denied_sub + mc->bad_telemetry > 1)
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" refusals publish_denied=%llu "
                 "subscribe_denied=%llu telemetry_not_stored=%llu",
                 (unsigned long long)mc->c->id, mc->c->peer, mc->sess ? mc->sess->client_id : "",
                 (unsigned long long)mc->denied_pub, (unsigned long long)mc->denied_sub,
                 (unsigned long long)mc->bad_telemetry);
    if (mc->connected) {
        b->connected--;
        if (mc->has_will && !mc->got_disconnect) { /* [MQTT-3.1.2-8] */
            mqtt_broker_publish(b->gw, MSG_PLAIN, mc->device, mc->will_topic, mc->will_payload,
                                mc->will_len, mc->will_qos, mc->will_retain);
        }
        if (mc->sess && mc->sess->conn == mc)
            broker_session_detach(b, mc->sess);
        if (mc->c->device[0])
            ingest_offline(b->gw, mc->c);
    }
    b->bytes_in_closed += mc->c->bytes_in;
    b->bytes_out_closed += mc->c->bytes_out;
    free(mc->will_topic);
    free(mc->will_payload);
    buf_fini(&mc->out);
    free(mc);
    broker_leave(b);
}

/* Finishes mc now rather than at the end of the current broker work (a takeover needs
 * the old session detached before the new connection takes it). */
static void finish_now(struct mqtt_conn *mc)
{
    struct mqtt_conn **p = &mc->b->dead;
    while (*p && *p != mc)
        p = &(*p)->next_dead;
    if (*p) {
        *p = mc->next_dead;
        mqtt_conn_finish(mc);
    }
}

static void mqtt_close(void *state, const char *why)
{
    struct mqtt_conn *mc = state;
    struct mqtt_broker *b = mc->b;
    (void)why;
    if (b->depth > 0) { /* code up the stack may still use mc: finish after it */
        mc->next_dead = b->dead;
        b->dead = mc;
        return;
    }
    mqtt_conn_finish(mc);
}

const struct proto_ops mqtt_proto = {"mqtt", mqtt_open, mqtt_feed, mqtt_close};
