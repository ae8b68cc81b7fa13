/* protocols/mqtt/handle.c: one MQTT connection. Decodes every complete packet in
 * the input (mqtt_decode), enforces the 3.1.1 session rules the decoder cannot
 * (CONNECT first and once, client id rules, keepalive, ACL), and hands publishes
 * to the bus. Who a client is (its credentials) and what a publish means to Gale's
 * device model (telemetry, attributes, command replies, presence) are asked of the
 * device session layer (gateway/session.h) in plain values. QoS 1/2
 * acknowledgements go out in arrival order and only once what the message made
 * storage write (telemetry, a retained message, offline persistent sessions' queues,
 * a new device) is durable (gw_await_durable).
 * A resent QoS 2 PUBLISH is PUBREC'd once its first copy is durable; if that copy
 * failed (storage reports mark the session's id, whatever became of the connection), the
 * resend is taken as a first copy and stored. A session holds at most
 * mqtt.max_qos2_pending ids awaiting PUBREL; a client that opens one more is closed.
 * A telemetry payload that does not decode is never acknowledged as if stored: by
 * default (mqtt.invalid_telemetry = disconnect) it gets no PUBACK/PUBREC, is not routed,
 * and the connection closes once the acks of earlier messages are out; with ack it is
 * acknowledged and routed as a plain message. Counted and logged either way.
 * Backpressure: a connection counts as ingest once a publish of it wrote storage. While
 * storage pushes back, its PUBLISH packets wait in the input (read up to a small cap),
 * and everything after them too, in order, except PINGREQ and the acks of our deliveries,
 * which are answered at once: a publisher that also subscribes keeps receiving and its
 * keep-alive is answered. A pure subscriber is never held.
 * Protocol violations close the connection with a log line naming the peer and
 * the reason [MQTT-4.8.0-1]. Loop thread only. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/bus.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "protocols/mqtt/broker_int.h"

#define TAG_PUBACK (1ULL << 32)
#define TAG_PUBREC (2ULL << 32)
#define TAG_CLOSE (4ULL << 32) /* not an ack: close once the acks ahead of it are out */
/* Input a held connection reads while its PUBLISH packets wait (conn ingest_hold_bytes):
 * room for the pings and acks behind them, not for more ingest. */
#define MQTT_HOLD_BYTES (16 * 1024)
/* Usernames this long or longer are not kept (no device id or application name is). */
#define USERNAME_MAX 256

static void violation(struct mqtt_conn *mc, const char *why)
{
    /* before CONNECT (garbage, an oversized CONNECT) the peer's refusals are summarised */
    if (mc->connected || conn_refused(mc->c, why))
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
        if (conn_refused(mc->c, rc < 6 ? why[rc] : "?"))
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
    if (ok < 0 || !mc) /* closed first: nothing to send (a QoS 2 id stays: a resend waits) */
        return;
    if (tag & TAG_CLOSE) { /* after the acks just sent, which the client must still get */
        conn_close_after_write(c, "telemetry that does not decode, not acknowledged");
        return;
    }
    if (!ok) { /* not stored: no ack, so the client sends it again */
        if (tag & TAG_PUBREC) /* ... and that copy must be stored, not taken for a duplicate */
            broker_qos2_remove(mc->sess, id);
        /* 3.1.1 has no negative ack, so the connection closes. The reason an MQTT 5
         * PUBACK/PUBREC would carry belongs here: 0x97 (quota exceeded) when the disk is
         * full (c->gw->storage_full), 0x80 (unspecified error) otherwise. */
        conn_close(c, c->gw->storage_full ? "storage full: message not acknowledged"
                                          : "storage failure: message not acknowledged");
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

static void handle_connect(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *cp = &pkt->connect;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    struct session_login login;
    enum session_login_rc login_rc;
    struct mqtt_session *s;
    char client_id[256];
    const char *device = ""; /* the device the client is, when its role is device */
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
    if (cp->has_username && cp->username.len > 0 && cp->username.len < USERNAME_MAX)
        mc->username = dup_str(cp->username);
    login_rc = session_mqtt_login(gw, mc->c, cp->username.p, cp->username.len, cp->has_username,
                                  cp->password.p, cp->password.len, cp->has_password, &login);
    if (login_rc != SESSION_LOGIN_OK) {
        connack(mc, false, login_rc == SESSION_LOGIN_BAD_CREDENTIALS
                               ? MQTT_CONNACK_BAD_CREDENTIALS
                               : MQTT_CONNACK_NOT_AUTHORIZED);
        return;
    }
    if (login.anonymous)
        mc->role = ACL_ROLE_ANONYMOUS;
    else
        mc->role = login.role == DEVICE_ROLE_APP ? ACL_ROLE_APP : ACL_ROLE_DEVICE;
    if (mc->role == ACL_ROLE_DEVICE)
        device = login.device;
    if (cp->will) {
        struct mqtt_will *w;
        if (!acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL, client_id,
                       device[0] ? device : NULL, cp->will_topic.p, cp->will_topic.len,
                       ACL_PUBLISH)) {
            connack(mc, false, MQTT_CONNACK_NOT_AUTHORIZED);
            return;
        }
        w = mc->will = xmalloc(sizeof *w + cp->will_payload.len + 1);
        w->topic = dup_str(cp->will_topic);
        if (cp->will_payload.len)
            memcpy(w->payload, cp->will_payload.p, cp->will_payload.len);
        w->len = cp->will_payload.len;
        w->qos = cp->will_qos;
        w->retain = cp->will_retain;
    }
    /* A session of an authenticated client belongs to it: another identity may neither
     * take it over nor resume it (it would read that client's messages). Sessions of
     * anonymous clients are anyone's, as on any open broker. */
    s = broker_session_get(b, client_id);
    if (s && s->role != ACL_ROLE_ANONYMOUS &&
        (mc->role == ACL_ROLE_ANONYMOUS || strcmp(s->username, mc->username) != 0)) {
        if (conn_refused(mc->c, "client id of another user"))
            log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused: the "
                     "client id belongs to another user",
                     (unsigned long long)mc->c->id, mc->c->peer, log_q(client_id),
                     log_q(mc->username));
        connack(mc, false, MQTT_CONNACK_ID_REJECTED);
        return;
    }
    /* mqtt.max_connections_per_identity; a takeover replaces one of them */
    if (mc->role != ACL_ROLE_ANONYMOUS && gw->cfg->mqtt.max_connections_per_identity &&
        broker_identity_conns(b, mc->username) -
                (s && s->conn && s->conn->role == mc->role ? 1 : 0) >=
            gw->cfg->mqtt.max_connections_per_identity) {
        gw->metrics.mqtt_refused_connections++;
        if (conn_refused(mc->c, "mqtt.max_connections_per_identity reached"))
            log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused "
                     "reason=\"mqtt.max_connections_per_identity reached\" limit=%zu",
                     (unsigned long long)mc->c->id, mc->c->peer, log_q(client_id),
                     log_q(mc->username), gw->cfg->mqtt.max_connections_per_identity);
        connack(mc, false, MQTT_CONNACK_UNAVAILABLE);
        return;
    }
    /* takeover: the existing connection of this client id is closed [MQTT-3.1.4-2]. It
     * ended without DISCONNECT, so its will is published (as MQTT 5.0 specifies). */
    if (s && s->conn) {
        struct mqtt_conn *old = s->conn;
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" takes over conn=%llu",
                 (unsigned long long)mc->c->id, mc->c->peer, log_q(client_id),
                 (unsigned long long)old->c->id);
        conn_close(old->c, "session taken over by a new connection");
        broker_conn_finish_now(old);
        s = broker_session_get(b, client_id); /* a clean session ended with it */
    }
    if (s && cp->clean_session) {
        broker_session_free(b, s); /* [MQTT-3.1.2-6] */
        s = NULL;
    }
    if (s) {
        sp = true; /* [MQTT-3.2.2-2] */
        broker_session_set_identity(b, s, mc->role, mc->username);
        broker_session_recheck(b, s); /* the ACL may have changed since it subscribed */
    } else {
        if (!cp->clean_session && broker_session_make_room(b, mc->role, mc->username) != 0) {
            bool anon = mc->role == ACL_ROLE_ANONYMOUS;
            if (anon)
                gw->metrics.mqtt_refused_anon_sessions++;
            else
                gw->metrics.mqtt_refused_sessions++;
            if (conn_refused(mc->c, "session limit reached"))
                log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused "
                         "reason=\"%s reached, all connected\" limit=%zu",
                         (unsigned long long)mc->c->id, mc->c->peer, log_q(client_id),
                         log_q(mc->username),
                         anon ? "mqtt.max_anonymous_sessions" : "limits.max_sessions_per_device",
                         anon ? gw->cfg->mqtt.max_anonymous_sessions
                              : gw->cfg->limits.max_sessions_per_device);
            connack(mc, false, MQTT_CONNACK_NOT_AUTHORIZED);
            return;
        }
        s = broker_session_new(b, client_id, cp->clean_session, mc->role, mc->username);
        broker_session_persist(b, s);
    }
    mc->sess = s;
    broker_conn_connected(mc);
    mc->c->idle_timeout_ms = (unsigned)cp->keepalive_s * 1500; /* 1.5x [MQTT-3.1.2-24] */
    conn_authenticated(mc->c, device);
    connack(mc, sp, MQTT_CONNACK_ACCEPTED);
    log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" connected clean=%d "
             "keepalive=%u session_present=%d",
             (unsigned long long)mc->c->id, mc->c->peer, log_q(client_id), log_q(mc->username),
             cp->clean_session, cp->keepalive_s, sp);
    if (login.device[0]) /* applications are in the registry too: they get presence */
        session_online(gw, mc->c, login.device, "mqtt");
    broker_session_attach(b, s, mc);
}

/* ---- PUBLISH from the client ---- */

/* Telemetry on topic did not decode (why, static): counted, and logged once per connection
 * (the rest are summed up at close). Returns true when it is to be routed and acknowledged
 * as a plain message (mqtt.invalid_telemetry = ack). Else (disconnect) it is neither: an
 * ack would say "stored", and 3.1.1 has no negative one. The connection handles no more
 * packets and closes once the acks of the messages before it are out: those keep their
 * acks, and nothing from this one on is taken. */
static bool accept_bad_telemetry(struct mqtt_conn *mc, const char *topic, const char *device,
                                 const char *why)
{
    struct gw *gw = mc->b->gw;
    bool ack = gw->cfg->mqtt.invalid_telemetry == CONFIG_INVALID_TELEMETRY_ACK;

    gw->metrics.mqtt_telemetry_rejected++;
    if (mc->bad_telemetry++ == 0)
        log_write(ack ? LOG_INFO : LOG_WARN,
                  "conn=%llu peer=%s proto=mqtt client=\"%s\" device=%s telemetry not stored "
                  "reason=\"%s\" topic=\"%s\" action=%s",
                  (unsigned long long)mc->c->id, mc->c->peer, log_q(mc->sess->client_id), device,
                  why, log_q(topic), ack ? "ack" : "disconnect");
    if (ack)
        return true;
    mc->rejected = true;
    conn_pause(mc->c);
    gw_await_durable(mc->c, NULL, TAG_CLOSE, on_ack_ready);
    return false;
}

static void handle_publish(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *pp = &pkt->publish;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    char stack_topic[512], *topic = stack_topic;
    struct msg *m;
    struct ticket t = {0, 0};
    const char *not_stored;
    struct session_client who = {mc->c, mc->role == ACL_ROLE_ANONYMOUS, mc->username,
                                 mc->c->device};
    struct qos2_in *q2;

    b->publish_in++;
    mc->c->msgs_in++;
    if (pp->topic.len + 64 > sizeof stack_topic)
        topic = xmalloc(pp->topic.len + 64);
    session_mqtt_topic(&who, pp->topic.p, pp->topic.len, topic, pp->topic.len + 64);
    if (pp->qos == 2 && (q2 = broker_qos2_find(mc->sess, pkt->id)) != NULL) {
        if (!q2->failed) {
            /* a resent QoS 2 PUBLISH is not delivered twice [MQTT-4.3.3-2]; its PUBREC waits
             * for the first copy's writes, on this connection or the one that sent that copy */
            t = q2->t;
            goto ack;
        }
        /* storage lost the first copy (even after its connection closed): this one is it */
        broker_qos2_remove(mc->sess, pkt->id);
    } else if (pp->qos == 2 && mc->sess->nqos2_in >= gw->cfg->mqtt.max_qos2_pending) {
        gw->metrics.mqtt_refused_qos2++;
        log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" closed reason=\"mqtt.max_qos2_pending "
                 "reached: QoS 2 ids never released with PUBREL\" limit=%zu",
                 (unsigned long long)mc->c->id, mc->c->peer, log_q(mc->sess->client_id),
                 gw->cfg->mqtt.max_qos2_pending);
        if (topic != stack_topic)
            free(topic);
        conn_close(mc->c, "mqtt.max_qos2_pending reached");
        return;
    }
    switch (broker_publish_check(mc, topic, pp->payload_len, pp->retain)) {
    case PUBLISH_OK:
        break;
    case PUBLISH_DROP: /* 3.1.1 has no negative ack: acknowledged and dropped, as Mosquitto does */
        goto ack;
    case PUBLISH_CLOSE:
        if (topic != stack_topic)
            free(topic);
        conn_close(mc->c, "message rate over limits.device_rate_msgs_per_s");
        return;
    }
    /* Gale's device model (telemetry, attributes, command replies) decides what the
     * message is; the broker routes it */
    m = session_mqtt_publish(gw, &who, topic, pp->payload, pp->payload_len, &t, &not_stored);
    if (not_stored && !accept_bad_telemetry(mc, topic, m->device, not_stored)) {
        msg_unref(m);
        if (topic != stack_topic)
            free(topic);
        return; /* no ack, and no QoS 2 id kept: a resend is looked at afresh */
    }
    m->ts_ms = gw_now_ms();
    m->qos = pp->qos;
    m->retain = pp->retain;
    gw->metrics.messages_in++;
    /* whatever this message made storage write (telemetry rows, the retained message, the
     * queues of offline persistent sessions, a new device) joins t: durable before the ack */
    bus_publish(gw->bus, m, &t);
    msg_unref(m);
    if (!ticket_empty(&t) && !mc->c->ingest) { /* it writes storage: storage may hold it */
        mc->c->ingest = true;
        conn_update_reading(mc->c);
    }
ack:
    if (topic != stack_topic)
        free(topic);
    /* accepted, even when the connection closed meanwhile: a resend is not delivered again
     * unless this copy's writes fail (on_ack_ready) */
    if (pp->qos == 2 && !broker_qos2_find(mc->sess, pkt->id))
        broker_qos2_add(b, mc->sess, pkt->id, &t);
    if (pp->qos == 0 || mc->c->closing) /* closed meanwhile (cut off as a subscriber) */
        return;
    /* acks keep arrival order: behind earlier waiters, and behind this message's writes */
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
    const char *full;
    size_t limit;

    if (pkt->subscribe.count > sizeof codes)
        rc = xmalloc(pkt->subscribe.count);
    while (mqtt_filter_next(pkt, &off, &f, &opts)) {
        uint8_t qos = opts & 3;
        int granted;
        struct mqtt_str af; /* the ACL judges a shared subscription's own filter */
        if (share_parse(f.p, f.len, NULL, &af) < 0) { /* a malformed "$share/..." */
            rc[n++] = MQTT_SUBACK_FAILURE;
            continue;
        }
        if ((mc->role == ACL_ROLE_ANONYMOUS &&
             broker_anon_denied(b, af.p, af.len, ACL_SUBSCRIBE)) ||
            !acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL,
                       mc->sess->client_id, mc->c->device[0] ? mc->c->device : NULL, af.p,
                       af.len, ACL_SUBSCRIBE)) {
            b->acl_denied++;
            if (mc->denied_sub++ == 0 && log_refusal(mc->c->peer, "subscribe denied"))
                log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe denied "
                         "filter=\"%s\"",
                         (unsigned long long)mc->c->id, mc->c->peer, log_q(mc->sess->client_id),
                         log_qn(f.p, f.len));
            rc[n++] = MQTT_SUBACK_FAILURE;
            continue;
        }
        granted = mqtt_router_granted(b->router, f.p, f.len, mc->sess);
        if (granted < 0 && (full = broker_subscribe_room(b, mc->sess, f.p, f.len, &limit))) {
            if (mc->denied_sub++ == 0)
                log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe refused "
                         "reason=\"%s reached\" limit=%zu",
                         (unsigned long long)mc->c->id, mc->c->peer, log_q(mc->sess->client_id),
                         full, limit);
            rc[n++] = MQTT_SUBACK_FAILURE;
            continue;
        }
        /* a new filter or a new QoS is one write for a persistent session; a client that
         * subscribes again on every connect writes nothing */
        if (granted != qos)
            broker_session_subscribe(b, mc->sess, f.p, f.len, qos);
        rc[n++] = qos;
    }
    /* sent at once: it does not wait for those writes to commit (a crash right after it
     * may lose them, and the client subscribes again) */
    mc->out.len = 0;
    mqtt_encode_suback(&mc->out, pkt->id, rc, n);
    send_buf(mc);
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
        broker_session_unsubscribe(mc->b, mc->sess, f.p, f.len); /* a row each it removes */
    mc->out.len = 0;
    mqtt_encode_unsuback(&mc->out, pkt->id);
    send_buf(mc);
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
        broker_qos2_remove(mc->sess, pkt->id);
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
    struct mqtt_conn *mc = broker_conn_new(ctx, c);
    c->ingest_hold_bytes = MQTT_HOLD_BYTES;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return mc;
}

/* A packet that may pass packets waiting for storage: it brings no ingest (an ack of a
 * persistent session's delivery updates that session, bounded by mqtt.max_inflight) and
 * none of the packets it passes means anything different for it. */
static bool may_go_ahead(uint8_t type)
{
    return type == MQTT_PINGREQ || type == MQTT_PUBACK || type == MQTT_PUBREC ||
           type == MQTT_PUBCOMP;
}

/* A packet that waits behind a waiting PUBLISH, and that others may pass. The rest
 * (DISCONNECT, a second CONNECT, server-only types) ends the connection in its turn: no
 * packet after it may be handled first. */
static bool may_be_passed(uint8_t type)
{
    return type == MQTT_PUBLISH || type == MQTT_PUBREL || type == MQTT_SUBSCRIBE ||
           type == MQTT_UNSUBSCRIBE;
}

/* The input starts with a PUBLISH that waits for storage, and bytes [0, from) are packets
 * that wait too. Handles the packets after them that may go ahead, removes them from in and
 * closes up the rest, which keeps its order; stops at an incomplete packet, one that does
 * not decode (reported in its turn, once storage lets the PUBLISH through) or one that
 * ends the connection. */
static void take_ahead(struct mqtt_conn *mc, struct buf *in, size_t from)
{
    struct conn *c = mc->c;
    size_t pos = from, keep = from;

    assert(from <= in->len); /* in changed only here and by consuming, which resets ahead */

    while (!c->closing && !c->close_after_write && pos < in->len) {
        struct mqtt_packet pkt;
        size_t used;
        const char *why;
        if (mqtt_decode(&mc->lim, in->data + pos, in->len - pos, &pkt, &used, &why) !=
            CODEC_FRAME)
            break;
        if (may_go_ahead(pkt.type)) {
            mc->b->packets_in++;
            handle_packet(mc, &pkt);
        } else if (may_be_passed(pkt.type)) {
            if (keep != pos)
                memmove(in->data + keep, in->data + pos, used);
            keep += used;
        } else {
            break;
        }
        pos += used;
    }
    if (c->closing)
        return;
    if (keep != pos)
        memmove(in->data + keep, in->data + pos, in->len - pos);
    in->len -= pos - keep;
    mc->ahead = keep;
}

static int mqtt_feed(void *state, struct buf *in)
{
    struct mqtt_conn *mc = state;
    struct conn *c = mc->c;
    struct mqtt_broker *b = mc->b;
    size_t off = 0, used = 0;
    bool waits = false;

    while (!c->closing && !c->close_after_write && !mc->rejected && off < in->len) {
        struct mqtt_packet pkt;
        const char *why;
        enum codec_rc rc;
        /* before CONNECT is accepted a packet is capped at limits.preauth_max_bytes: a larger
         * CONNECT is refused as soon as its fixed header says so, not buffered. Set per
         * packet: what follows an accepted CONNECT in the same read has the full limit. */
        mc->lim.max_packet_bytes = guard_cap(c, c->gw->cfg->mqtt.max_packet_bytes);
        rc = mqtt_decode(&mc->lim, in->data + off, in->len - off, &pkt, &used, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            violation(mc, why);
            break;
        }
        if (pkt.type == MQTT_PUBLISH && c->held) { /* storage pushes back: it waits */
            waits = true;
            break;
        }
        off += used;
        b->packets_in++;
        handle_packet(mc, &pkt);
    }
    if (!c->closing) {
        buf_consume(in, off);
        if (off || !waits)
            mc->ahead = 0;
        if (waits)
            take_ahead(mc, in, mc->ahead ? mc->ahead : used);
    }
    return c->closing ? -1 : 0;
}

static void mqtt_close(void *state, const char *why)
{
    (void)why;
    broker_conn_close(state);
}

const struct proto_ops mqtt_proto = {"mqtt", mqtt_open, mqtt_feed, mqtt_close};
