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
#define TAG_RC_SHIFT 40        /* MQTT 5: the ack's reason code */
#define TAG_RC(rc) ((uint64_t)(rc) << TAG_RC_SHIFT)
/* Input a held connection reads while its PUBLISH packets wait (conn ingest_hold_bytes):
 * room for the pings and acks behind them, not for more ingest. */
#define MQTT_HOLD_BYTES (16 * 1024)
/* Usernames this long or longer are not kept (no device id or application name is). */
#define USERNAME_MAX 256

/* A protocol violation closes the connection [MQTT-4.8.0-1]; an MQTT 5 client past CONNACK
 * first gets DISCONNECT with the reason code (rc; 0 = Protocol Error). */
static void violation(struct mqtt_conn *mc, const char *why, uint8_t rc)
{
    /* before CONNECT (garbage, an oversized CONNECT) the peer's refusals are summarised */
    if (mc->connected || conn_refused(mc->c, why))
        log_warn("conn=%llu peer=%s proto=mqtt protocol error reason=\"%s\"%s%s",
                 (unsigned long long)mc->c->id, conn_peer(mc->c), why, mc->v5 ? " rc=" : "",
                 mc->v5 ? mqtt_rc_name(rc ? rc : MQTT_RC_PROTOCOL_ERROR) : "");
    broker_disconnect(mc, rc ? rc : MQTT_RC_PROTOCOL_ERROR, why);
}

static void send_buf(struct mqtt_conn *mc)
{
    broker_send(mc);
}

/* MQTT 5: whether the packet encoded in mc->out from byte start on is larger than the
 * client's Maximum Packet Size. A Reason String must not make a packet larger than that
 * [MQTT-3.2.2-19] [MQTT-3.4.2-2] [MQTT-3.14.2-3]: the caller encodes the packet again
 * without it. */
static bool too_large(const struct mqtt_conn *mc, size_t start)
{
    return mc->v5 && mc->v5->max_packet_out && mc->out.len - start > mc->v5->max_packet_out;
}

/* The 3.1.1 CONNACK return code for a 5.0 CONNACK reason code. */
static uint8_t connack_rc311(uint8_t rc)
{
    switch (rc) {
    case MQTT_RC_SUCCESS:
        return MQTT_CONNACK_ACCEPTED;
    case MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION:
        return MQTT_CONNACK_BAD_VERSION;
    case MQTT_RC_CLIENT_ID_NOT_VALID:
        return MQTT_CONNACK_ID_REJECTED;
    case MQTT_RC_SERVER_UNAVAILABLE:
    case MQTT_RC_SERVER_BUSY:
    case MQTT_RC_QUOTA_EXCEEDED:
        return MQTT_CONNACK_UNAVAILABLE;
    case MQTT_RC_BAD_USER_NAME_OR_PASSWORD:
        return MQTT_CONNACK_BAD_CREDENTIALS;
    default:
        return MQTT_CONNACK_NOT_AUTHORIZED;
    }
}

/* CONNACK with reason code rc (a 5.0 code; a 3.1.1 client gets its equivalent). props: the
 * 5.0 properties of an accepted CONNECT (NULL: none); a refusal carries why as its Reason
 * String, is logged and closes the connection. */
static void connack(struct mqtt_conn *mc, bool sp, uint8_t rc, struct buf *props,
                    const char *why)
{
    mc->out.len = 0;
    if (mc->v5) {
        struct buf pb;
        struct mqtt_bin bin = {NULL, 0};
        buf_init(&pb);
        if (props)
            buf_append(&pb, props->data, props->len);
        if (rc != MQTT_RC_SUCCESS && why)
            mqtt_prop_put_str(&pb, MQTT_PROP_REASON_STRING, why, strlen(why));
        bin = (struct mqtt_bin){pb.data, pb.len};
        mqtt_encode_connack5(&mc->out, sp, rc, &bin);
        if (rc != MQTT_RC_SUCCESS && why && too_large(mc, 0)) { /* without the Reason String */
            mc->out.len = 0;
            bin.len = props ? props->len : 0;
            mqtt_encode_connack5(&mc->out, sp, rc, &bin);
        }
        buf_fini(&pb);
    } else {
        mqtt_encode_connack(&mc->out, sp, connack_rc311(rc));
    }
    send_buf(mc);
    if (rc != MQTT_RC_SUCCESS) {
        if (!why)
            why = mqtt_rc_name(rc);
        if (conn_refused(mc->c, why))
            log_warn("conn=%llu peer=%s proto=mqtt connect refused rc=%d reason=\"%s\"",
                     (unsigned long long)mc->c->id, conn_peer(mc->c),
                     mc->v5 ? rc : connack_rc311(rc), why);
        conn_close_after_write(mc->c, why);
    }
}

/* The Reason String of a negative 5.0 PUBACK/PUBREC. */
static const char *ack_why(uint8_t rc)
{
    switch (rc) {
    case MQTT_RC_NOT_AUTHORIZED:
        return "publish not authorized (ACL or another device's namespace)";
    case MQTT_RC_MESSAGE_RATE_TOO_HIGH:
        return "device message rate over limits.device_rate_msgs_per_s";
    case MQTT_RC_QUOTA_EXCEEDED:
        return "quota exceeded (a retained-message quota, or storage is full)";
    case MQTT_RC_PAYLOAD_FORMAT_INVALID:
        return "payload format invalid: telemetry that does not decode, or not UTF-8 as its "
               "Payload Format Indicator says";
    default:
        return mqtt_rc_name(rc);
    }
}

/* Appends the PUBACK/PUBREC/PUBCOMP (type) of id with reason rc for the client. */
static void encode_ack(struct mqtt_conn *mc, uint8_t type, uint16_t id, uint8_t rc)
{
    if (!mc->v5 || rc == 0) { /* a 5.0 success ack may omit the reason: 3.1.1's encoding */
        switch (type) {
        case MQTT_PUBACK:
            mqtt_encode_puback(&mc->out, id);
            break;
        case MQTT_PUBREC:
            mqtt_encode_pubrec(&mc->out, id);
            break;
        default:
            mqtt_encode_pubcomp(&mc->out, id);
            break;
        }
        return;
    }
    if (mc->v5->problem_info && rc >= 0x80) {
        struct buf pb;
        struct mqtt_bin bin;
        const char *why = ack_why(rc);
        size_t start = mc->out.len;
        buf_init(&pb);
        mqtt_prop_put_str(&pb, MQTT_PROP_REASON_STRING, why, strlen(why));
        bin = (struct mqtt_bin){pb.data, pb.len};
        mqtt_encode_ack5(&mc->out, type, id, rc, &bin);
        buf_fini(&pb);
        if (!too_large(mc, start))
            return;
        mc->out.len = start; /* without the Reason String */
    }
    mqtt_encode_ack5(&mc->out, type, id, rc, NULL);
}

/* ---- acks after durability ---- */

static void on_ack_ready(struct conn *c, uint64_t tag, int ok)
{
    struct mqtt_conn *mc = c->proto_state;
    uint16_t id = (uint16_t)(tag & 0xffff);
    uint8_t rc = (uint8_t)(tag >> TAG_RC_SHIFT);
    if (ok < 0 || !mc) /* closed first: nothing to send (a QoS 2 id stays: a resend waits) */
        return;
    if (tag & TAG_CLOSE) { /* after the acks just sent, which the client must still get */
        if (mc->v5)
            mc->v5->disconnect_rc = MQTT_RC_PAYLOAD_FORMAT_INVALID;
        conn_close_after_write(c, "telemetry that does not decode, not acknowledged");
        return;
    }
    if (!ok) { /* not stored */
        if (tag & TAG_PUBREC) /* that copy must be stored, not taken for a duplicate */
            broker_qos2_remove(mc->sess, id);
        if (mc->v5 && c->gw->storage_full) {
            /* MQTT 5: refused with Quota Exceeded (the disk is full: a resend would be too) */
            rc = MQTT_RC_QUOTA_EXCEEDED;
        } else {
            /* no ack, so the client sends it again on its next connection (3.1.1 has no
             * negative ack; a transient failure is worth the resend on 5.0 too) */
            broker_disconnect(mc, MQTT_RC_UNSPECIFIED_ERROR,
                              c->gw->storage_full ? "storage full: message not acknowledged"
                                                  : "storage failure: message not acknowledged");
            return;
        }
    }
    if (mc->v5 && mc->v5->in_flight && ((tag & TAG_PUBACK) || rc >= 0x80))
        mc->v5->in_flight--; /* a QoS 2 one is done at PUBREL, or now when refused */
    broker_out(mc);
    encode_ack(mc, (tag & TAG_PUBREC) ? MQTT_PUBREC : MQTT_PUBACK, id, rc);
    send_buf(mc);
}

/* ---- CONNECT ---- */

static char *dup_str(struct mqtt_str s)
{
    return xstrndup(s.p ? s.p : "", s.len);
}

/* MQTT 5: the Will Properties of cp kept with the will w; false when its payload is
 * flagged UTF-8 and is not. */
static bool will_props5(struct mqtt_will *w, const struct mqtt_packet *pkt)
{
    const struct mqtt_props *wp = &pkt->will_props;
    struct buf fb;

    if (wp->payload_format == 1 &&
        !mqtt_utf8_valid((const char *)w->payload, w->len))
        return false;
    w->delay_s = wp->will_delay_s;
    w->expiry_s = mqtt_props_has(wp, MQTT_PROP_MESSAGE_EXPIRY) ? wp->message_expiry_s : 0;
    buf_init(&fb);
    broker_forward_props(wp, &fb);
    if (fb.len) {
        w->props = xmalloc(fb.len);
        memcpy(w->props, fb.data, fb.len);
        w->props_len = fb.len;
    }
    buf_fini(&fb);
    return true;
}

static void handle_connect(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *cp = &pkt->connect;
    const struct mqtt_props *ps = &pkt->props;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    const struct config *cfg = gw->cfg;
    struct session_login login;
    enum session_login_rc login_rc;
    struct mqtt_session *s;
    char client_id[256];
    const char *device = ""; /* the device the client is, when its role is device */
    bool sp = false, v5 = cp->level == MQTT_V5, assigned = false, persistent;
    unsigned keepalive = cp->keepalive_s;
    bool keepalive_capped = false;
    uint32_t expiry = 0;
    struct buf props; /* CONNACK properties (5.0) */

    if (cp->level != MQTT_V311 && cp->level != MQTT_V31 && !v5) {
        connack(mc, false, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION, NULL,
                "unacceptable protocol version"); /* [MQTT-3.1.2-2] */
        return;
    }
    mc->lim.version = cp->level;
    if (v5) {
        struct mqtt5_conn *x = mc->v5 = xcalloc(1, sizeof *mc->v5);
        map_init(&x->alias_out);
        x->recv_max_out = ps->receive_maximum;
        x->max_packet_out = ps->maximum_packet_size;
        x->alias_max_in = (uint16_t)cfg->mqtt.topic_alias_maximum;
        x->alias_max_out = ps->topic_alias_maximum < x->alias_max_in ? ps->topic_alias_maximum
                                                                      : x->alias_max_in;
        x->problem_info = ps->request_problem_info != 0;
        expiry = broker_expiry_cap(b, ps->session_expiry_s);
        x->session_expiry_s = expiry;
        x->expiry_was_zero = ps->session_expiry_s == 0;
        if (mqtt_props_has(ps, MQTT_PROP_AUTH_METHOD)) { /* enhanced authentication */
            if (!b->auth_fn || strlen(b->auth_method) != ps->auth_method.len ||
                memcmp(b->auth_method, ps->auth_method.p, ps->auth_method.len) != 0) {
                connack(mc, false, MQTT_RC_BAD_AUTHENTICATION_METHOD, NULL,
                        b->auth_fn ? "authentication method not supported"
                                   : "no enhanced authentication method is configured");
                return;
            }
            x->auth_method = true;
        }
    }
    if (cp->client_id.len >= sizeof client_id ||
        (cp->level == MQTT_V31 && cp->client_id.len > 23)) { /* 3.1 allows 1..23 bytes */
        connack(mc, false, MQTT_RC_CLIENT_ID_NOT_VALID, NULL, "client id too long");
        return;
    }
    if (cp->client_id.len == 0) {
        if (!v5 && (!cp->clean_session || cp->level == MQTT_V31)) { /* [MQTT-3.1.3-8] */
            connack(mc, false, MQTT_RC_CLIENT_ID_NOT_VALID, NULL,
                    "empty client id with a persistent session");
            return;
        }
        /* a unique id for this client [MQTT-3.1.3-6]; 5.0 tells it (Assigned Client
         * Identifier), so it may resume the session later */
        snprintf(client_id, sizeof client_id, "gale-%llx-%llu",
                 (unsigned long long)gw->started_ms, (unsigned long long)++b->next_anon);
        assigned = v5;
    } else {
        memcpy(client_id, cp->client_id.p, cp->client_id.len);
        client_id[cp->client_id.len] = '\0';
    }
    if (keepalive > (unsigned)cfg->mqtt.max_keepalive ||
        (keepalive == 0 && cfg->mqtt.max_keepalive < 65535)) {
        if (!v5) {
            /* 3.1.1 cannot tell a client to use a shorter keepalive (Mosquitto does the same) */
            connack(mc, false, MQTT_RC_CLIENT_ID_NOT_VALID, NULL,
                    "keep alive above mqtt.max_keepalive");
            return;
        }
        keepalive = (unsigned)cfg->mqtt.max_keepalive; /* Server Keep Alive [MQTT-3.2.2-21] */
        keepalive_capped = true;
    }
    /* credentials: username = device id, password = token */
    if (cp->has_username && cp->username.len > 0 && cp->username.len < USERNAME_MAX)
        mc->username = dup_str(cp->username);
    login_rc = session_mqtt_login(gw, mc->c, cp->username.p, cp->username.len, cp->has_username,
                                  cp->password.p, cp->password.len, cp->has_password, &login);
    if (login_rc != SESSION_LOGIN_OK) {
        connack(mc, false,
                login_rc == SESSION_LOGIN_BAD_CREDENTIALS ? MQTT_RC_BAD_USER_NAME_OR_PASSWORD
                                                          : MQTT_RC_NOT_AUTHORIZED,
                NULL,
                login_rc == SESSION_LOGIN_BAD_CREDENTIALS ? "bad user name or password"
                                                          : "not authorized");
        return;
    }
    buf_init(&props);
    if (v5 && mc->v5->auth_method) {
        uint8_t arc = b->auth_fn(b->auth_ctx, cp->username.p, cp->username.len,
                                 ps->auth_data.p, ps->auth_data.len, &props);
        if (arc != MQTT_RC_SUCCESS) {
            buf_fini(&props);
            connack(mc, false, arc >= 0x80 ? arc : MQTT_RC_NOT_AUTHORIZED, NULL,
                    "enhanced authentication failed");
            return;
        }
        if (props.len) { /* what the method answers goes in Authentication Data */
            struct buf data = props;
            buf_init(&props);
            mqtt_prop_put_bin(&props, MQTT_PROP_AUTH_DATA, data.data, data.len);
            buf_fini(&data);
        }
        mqtt_prop_put_str(&props, MQTT_PROP_AUTH_METHOD, b->auth_method, strlen(b->auth_method));
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
            buf_fini(&props);
            connack(mc, false, MQTT_RC_NOT_AUTHORIZED, NULL, "will topic not authorized");
            return;
        }
        w = mc->will = xcalloc(1, sizeof *w + cp->will_payload.len + 1);
        w->topic = dup_str(cp->will_topic);
        if (cp->will_payload.len)
            memcpy(w->payload, cp->will_payload.p, cp->will_payload.len);
        w->len = cp->will_payload.len;
        w->qos = cp->will_qos;
        w->retain = cp->will_retain;
        if (v5 && !will_props5(w, pkt)) {
            buf_fini(&props);
            connack(mc, false, MQTT_RC_PAYLOAD_FORMAT_INVALID, NULL,
                    "will payload is not UTF-8 as its Payload Format Indicator says");
            return;
        }
    }
    /* A session of an authenticated client belongs to it: another identity may neither
     * take it over nor resume it (it would read that client's messages). Sessions of
     * anonymous clients are anyone's, as on any open broker. */
    s = broker_session_get(b, client_id);
    if (s && broker_session_expired(s, gw_now_ms())) { /* before the timer got to it */
        broker_session_free(b, s);
        s = NULL;
    }
    if (s && s->role != ACL_ROLE_ANONYMOUS &&
        (mc->role == ACL_ROLE_ANONYMOUS || strcmp(s->username, mc->username) != 0)) {
        if (conn_refused(mc->c, "client id of another user"))
            log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused: the "
                     "client id belongs to another user",
                     (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                     log_q(mc->username));
        buf_fini(&props);
        connack(mc, false, MQTT_RC_CLIENT_ID_NOT_VALID, NULL,
                "the client id belongs to another user");
        return;
    }
    /* mqtt.max_connections_per_identity; a takeover replaces one of them */
    if (mc->role != ACL_ROLE_ANONYMOUS && cfg->mqtt.max_connections_per_identity &&
        broker_identity_conns(b, mc->username) -
                (s && s->conn && s->conn->role == mc->role ? 1 : 0) >=
            cfg->mqtt.max_connections_per_identity) {
        gw->metrics.mqtt_refused_connections++;
        if (conn_refused(mc->c, "mqtt.max_connections_per_identity reached"))
            log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused "
                     "reason=\"mqtt.max_connections_per_identity reached\" limit=%zu",
                     (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                     log_q(mc->username), cfg->mqtt.max_connections_per_identity);
        buf_fini(&props);
        connack(mc, false, v5 ? MQTT_RC_QUOTA_EXCEEDED : MQTT_RC_SERVER_UNAVAILABLE, NULL,
                "mqtt.max_connections_per_identity reached");
        return;
    }
    /* takeover: the existing connection of this client id is closed [MQTT-3.1.4-2]. It
     * ended without DISCONNECT, so its will is published (as MQTT 5.0 specifies; after
     * its delay, unless this connection resumes the session). */
    if (s && s->conn) {
        struct mqtt_conn *old = s->conn;
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" takes over conn=%llu",
                 (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                 (unsigned long long)old->c->id);
        broker_disconnect(old, MQTT_RC_SESSION_TAKEN_OVER, "session taken over by a new connection");
        broker_conn_finish_now(old);
        s = broker_session_get(b, client_id); /* a clean session ended with it */
    }
    if (s && cp->clean_session) { /* 5.0: Clean Start */
        broker_session_free(b, s); /* [MQTT-3.1.2-6]; a will waiting for its delay goes now */
        s = NULL;
    }
    persistent = v5 ? expiry > 0 : !cp->clean_session;
    if (s) {
        sp = true; /* [MQTT-3.2.2-2] */
        broker_will_cancel(b, s); /* back within the will's delay [MQTT-3.1.3-9] */
        broker_session_set_identity(b, s, mc->role, mc->username);
        broker_session_recheck(b, s); /* the ACL may have changed since it subscribed */
        if (v5) {
            broker_session_expiry(b, s, expiry);
        } else if (s->own_expiry) { /* a 3.1.1 client now: mqtt.session_expiry_s applies */
            s->own_expiry = false;
            s->expiry_s = cfg->mqtt.session_expiry_s > 0 ? (uint32_t)cfg->mqtt.session_expiry_s
                                                         : UINT32_MAX;
            broker_session_persist(b, s);
        }
    } else {
        if (persistent && broker_session_make_room(b, mc->role, mc->username) != 0) {
            bool anon = mc->role == ACL_ROLE_ANONYMOUS;
            if (anon)
                gw->metrics.mqtt_refused_anon_sessions++;
            else
                gw->metrics.mqtt_refused_sessions++;
            if (conn_refused(mc->c, "session limit reached"))
                log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" refused "
                         "reason=\"%s reached, all connected\" limit=%zu",
                         (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                         log_q(mc->username),
                         anon ? "mqtt.max_anonymous_sessions" : "limits.max_sessions_per_device",
                         anon ? cfg->mqtt.max_anonymous_sessions
                              : cfg->limits.max_sessions_per_device);
            buf_fini(&props);
            connack(mc, false, v5 ? MQTT_RC_QUOTA_EXCEEDED : MQTT_RC_NOT_AUTHORIZED, NULL,
                    "session limit reached");
            return;
        }
        s = broker_session_new(b, client_id, !persistent, mc->role, mc->username);
        if (v5 && persistent) {
            s->own_expiry = true;
            s->expiry_s = expiry;
        }
        broker_session_persist(b, s);
    }
    mc->sess = s;
    broker_conn_connected(mc);
    mc->c->idle_timeout_ms = keepalive * 1500; /* 1.5x [MQTT-3.1.2-24] */
    conn_authenticated(mc->c, device);
    if (v5) { /* what Gale allows, where it differs from the defaults [MQTT-3.2.2] */
        if (expiry != ps->session_expiry_s)
            mqtt_prop_put_int(&props, MQTT_PROP_SESSION_EXPIRY, expiry);
        if (cfg->mqtt.receive_maximum < 65535)
            mqtt_prop_put_int(&props, MQTT_PROP_RECEIVE_MAXIMUM,
                              (uint32_t)cfg->mqtt.receive_maximum);
        mqtt_prop_put_int(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                          (uint32_t)(cfg->mqtt.max_packet_bytes < UINT32_MAX
                                         ? cfg->mqtt.max_packet_bytes
                                         : UINT32_MAX));
        if (mc->v5->alias_max_in)
            mqtt_prop_put_int(&props, MQTT_PROP_TOPIC_ALIAS_MAXIMUM, mc->v5->alias_max_in);
        if (assigned)
            mqtt_prop_put_str(&props, MQTT_PROP_ASSIGNED_CLIENT_ID, client_id,
                              strlen(client_id));
        if (keepalive_capped)
            mqtt_prop_put_int(&props, MQTT_PROP_SERVER_KEEP_ALIVE, keepalive);
    }
    connack(mc, sp, MQTT_RC_SUCCESS, &props, NULL);
    buf_fini(&props);
    if (v5)
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" connected "
                 "protocol=5 clean_start=%d session_expiry_s=%lu keepalive=%u "
                 "session_present=%d",
                 (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                 log_q(mc->username), cp->clean_session, (unsigned long)expiry, keepalive, sp);
    else
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" user=\"%s\" connected clean=%d "
                 "keepalive=%u session_present=%d",
                 (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client_id),
                 log_q(mc->username), cp->clean_session, keepalive, sp);
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
                                 const char *why, uint8_t qos)
{
    struct gw *gw = mc->b->gw;
    bool ack = gw->cfg->mqtt.invalid_telemetry == CONFIG_INVALID_TELEMETRY_ACK;
    bool nack = !ack && mc->v5 && qos > 0; /* MQTT 5 says so in the PUBACK/PUBREC */

    gw->metrics.mqtt_telemetry_rejected++;
    if (mc->bad_telemetry++ == 0)
        log_write(ack ? LOG_INFO : LOG_WARN,
                  "conn=%llu peer=%s proto=mqtt client=\"%s\" device=%s telemetry not stored "
                  "reason=\"%s\" topic=\"%s\" action=%s%s",
                  (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(mc->sess->client_id),
                  device, why, log_q(topic), ack ? "ack" : nack ? "nack" : "disconnect",
                  ack ? "" : " hint=\"while developing, --set mqtt.invalid_telemetry=ack "
                             "(or GALE_MQTT_INVALID_TELEMETRY=ack) acknowledges such publishes "
                             "and keeps the connection\"");
    if (ack)
        return true;
    if (nack)
        return false;
    mc->rejected = true;
    conn_pause(mc->c);
    gw_await_durable(mc->c, NULL, TAG_CLOSE, on_ack_ready);
    return false;
}

/* MQTT 5: the topic a PUBLISH names through its Topic Alias (5.0 §3.3.2.3.4). Sets *tp;
 * false after closing the connection for a bad alias. */
static bool resolve_alias(struct mqtt_conn *mc, const struct mqtt_packet *pkt,
                          struct mqtt_str *tp)
{
    struct mqtt5_conn *v5 = mc->v5;
    uint16_t a = pkt->props.topic_alias;
    size_t cap = mc->b->gw->cfg->mqtt.max_subscription_bytes;

    if (!a)
        return true;
    if (a > v5->alias_max_in) {
        violation(mc, "topic alias above the Topic Alias Maximum", MQTT_RC_TOPIC_ALIAS_INVALID);
        return false;
    }
    if (tp->len == 0) {
        if (!v5->alias_in || !v5->alias_in[a]) {
            violation(mc, "topic alias not set on this connection", MQTT_RC_PROTOCOL_ERROR);
            return false;
        }
        tp->p = v5->alias_in[a];
        tp->len = strlen(v5->alias_in[a]);
        return true;
    }
    if (!v5->alias_in)
        v5->alias_in = xcalloc((size_t)v5->alias_max_in + 1, sizeof *v5->alias_in);
    if (v5->alias_in[a])
        v5->alias_in_bytes -= strlen(v5->alias_in[a]);
    /* what a client makes Gale keep: bounded like its subscriptions' filters */
    if (cap && v5->alias_in_bytes + tp->len > cap) {
        free(v5->alias_in[a]);
        v5->alias_in[a] = NULL;
        violation(mc, "topic aliases past mqtt.max_subscription_bytes", MQTT_RC_QUOTA_EXCEEDED);
        return false;
    }
    free(v5->alias_in[a]);
    v5->alias_in[a] = dup_str(*tp);
    v5->alias_in_bytes += tp->len;
    return true;
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
    struct mqtt_str tp = pp->topic;
    uint8_t reason = 0; /* MQTT 5: the reason code of the ack */

    b->publish_in++;
    mc->c->msgs_in++;
    if (mc->v5 && !resolve_alias(mc, pkt, &tp))
        return;
    q2 = pp->qos == 2 ? broker_qos2_find(mc->sess, pkt->id) : NULL;
    if (mc->v5 && pp->qos > 0 && !(q2 && !q2->failed)) {
        /* Receive Maximum: QoS 1/2 publishes not yet acknowledged [MQTT-3.3.4-9] */
        if (mc->v5->in_flight >= gw->cfg->mqtt.receive_maximum) {
            violation(mc, "more unacknowledged QoS 1/2 publishes than Receive Maximum",
                      MQTT_RC_RECEIVE_MAXIMUM_EXCEEDED);
            return;
        }
        mc->v5->in_flight++;
    }
    if (mc->v5 && pkt->props.payload_format == 1 &&
        !mqtt_utf8_valid((const char *)pp->payload, pp->payload_len)) {
        if (pp->qos == 0) {
            violation(mc, "payload is not UTF-8 as its Payload Format Indicator says",
                      MQTT_RC_PAYLOAD_FORMAT_INVALID);
            return;
        }
        reason = MQTT_RC_PAYLOAD_FORMAT_INVALID;
        goto ack_only;
    }
    if (tp.len + 64 > sizeof stack_topic)
        topic = xmalloc(tp.len + 64);
    session_mqtt_topic(&who, tp.p, tp.len, topic, tp.len + 64);
    if (q2) {
        if (!q2->failed) {
            /* a resent QoS 2 PUBLISH is not delivered twice [MQTT-4.3.3-2]; its PUBREC waits
             * for the first copy's writes, on this connection or the one that sent that copy */
            t = q2->t;
            goto ack;
        }
        /* storage lost the first copy (even after its connection closed): this one is it */
        broker_qos2_remove(mc->sess, pkt->id);
    } else if (pp->qos == 2 && mc->sess->dv &&
               mc->sess->dv->nqos2_in >= gw->cfg->mqtt.max_qos2_pending) {
        gw->metrics.mqtt_refused_qos2++;
        log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" closed reason=\"mqtt.max_qos2_pending "
                 "reached: QoS 2 ids never released with PUBREL\" limit=%zu",
                 (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(mc->sess->client_id),
                 gw->cfg->mqtt.max_qos2_pending);
        if (topic != stack_topic)
            free(topic);
        broker_disconnect(mc, MQTT_RC_QUOTA_EXCEEDED, "mqtt.max_qos2_pending reached");
        return;
    }
    switch (broker_publish_check(mc, topic, pp->payload_len, pp->retain, &reason)) {
    case PUBLISH_OK:
        reason = 0;
        break;
    case PUBLISH_DROP: /* 3.1.1 has no negative ack: acknowledged and dropped, as Mosquitto
                        * does; 5.0 says why in the ack */
        if (!mc->v5)
            reason = 0;
        goto ack;
    case PUBLISH_CLOSE:
        if (topic != stack_topic)
            free(topic);
        broker_disconnect(mc, MQTT_RC_MESSAGE_RATE_TOO_HIGH,
                          "message rate over limits.device_rate_msgs_per_s");
        return;
    }
    /* Gale's device model (telemetry, attributes, command replies) decides what the
     * message is; the broker routes it */
    m = session_mqtt_publish(gw, &who, topic, pp->payload, pp->payload_len, &t, &not_stored);
    if (not_stored && !accept_bad_telemetry(mc, topic, m->device, not_stored, pp->qos)) {
        msg_unref(m);
        if (topic != stack_topic)
            free(topic);
        if (mc->v5 && pp->qos > 0 && !mc->rejected) { /* 5.0: refused in the ack */
            reason = MQTT_RC_PAYLOAD_FORMAT_INVALID;
            goto ack_only;
        }
        return; /* no ack, and no QoS 2 id kept: a resend is looked at afresh */
    }
    m->ts_ms = gw_now_ms();
    m->qos = pp->qos;
    m->retain = pp->retain;
    if (mc->v5 && pkt->props.present) {
        mc->out.len = 0; /* free until the acks: scratch for the properties */
        broker_forward_props(&pkt->props, &mc->out);
        msg_set_props(m, mc->out.data, mc->out.len);
        mc->out.len = 0;
        if (mqtt_props_has(&pkt->props, MQTT_PROP_MESSAGE_EXPIRY))
            m->expiry_ms = m->ts_ms + (int64_t)pkt->props.message_expiry_s * 1000;
    }
    gw->metrics.messages_in++;
    /* whatever this message made storage write (telemetry rows, the retained message, the
     * queues of offline persistent sessions, a new device) joins t: durable before the ack */
    b->origin = mc->sess; /* No Local */
    bus_publish(gw->bus, m, &t);
    b->origin = NULL;
    msg_unref(m);
    if (!ticket_empty(&t) && !mc->c->ingest) { /* it writes storage: storage may hold it */
        mc->c->ingest = true;
        conn_update_reading(mc->c);
    }
ack:
    if (topic != stack_topic)
        free(topic);
    /* accepted, even when the connection closed meanwhile: a resend is not delivered again
     * unless this copy's writes fail (on_ack_ready); a refused one (5.0) ends its flow */
    if (pp->qos == 2 && reason < 0x80 && !broker_qos2_find(mc->sess, pkt->id))
        broker_qos2_add(b, mc->sess, pkt->id, &t);
ack_only:
    if (pp->qos == 0 || mc->c->closing) /* closed meanwhile (cut off as a subscriber) */
        return;
    /* acks keep arrival order: behind earlier waiters, and behind this message's writes */
    gw_await_durable(mc->c, &t,
                     (pp->qos == 1 ? TAG_PUBACK : TAG_PUBREC) | TAG_RC(reason) | pkt->id,
                     on_ack_ready);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE ---- */

static void handle_subscribe(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    struct mqtt_broker *b = mc->b;
    uint8_t codes[256], *rc = codes, denied = mc->v5 ? MQTT_RC_NOT_AUTHORIZED : MQTT_SUBACK_FAILURE;
    bool fresh_stack[256], *fresh = fresh_stack;
    size_t off = 0, n = 0;
    struct mqtt_str f;
    uint8_t opts;
    const char *full;
    size_t limit;
    /* MQTT 5: the Subscription Identifier of this SUBSCRIBE, kept with each filter */
    uint32_t subid = mc->v5 ? pkt->props.subscription_id : 0;

    if (pkt->subscribe.count > sizeof codes) {
        rc = xmalloc(pkt->subscribe.count);
        fresh = xmalloc(pkt->subscribe.count * sizeof *fresh);
    }
    while (mqtt_filter_next(pkt, &off, &f, &opts)) {
        uint8_t qos = opts & MQTT_SUBOPT_QOS_MASK;
        uint32_t ropts = 0, old_opts = 0;
        int granted;
        struct mqtt_str af; /* the ACL judges a shared subscription's own filter */
        fresh[n] = false;
        if (share_parse(f.p, f.len, NULL, &af) < 0) { /* a malformed "$share/..." */
            rc[n++] = mc->v5 ? MQTT_RC_TOPIC_FILTER_INVALID : MQTT_SUBACK_FAILURE;
            continue;
        }
        if ((mc->role == ACL_ROLE_ANONYMOUS &&
             broker_anon_denied(b, af.p, af.len, ACL_SUBSCRIBE)) ||
            !acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL,
                       mc->sess->client_id, mc->c->device[0] ? mc->c->device : NULL, af.p,
                       af.len, ACL_SUBSCRIBE)) {
            b->acl_denied++;
            if (mc->denied_sub++ == 0 && log_refusal(conn_peer(mc->c), "subscribe denied"))
                log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe denied "
                         "filter=\"%s\"",
                         (unsigned long long)mc->c->id, conn_peer(mc->c),
                         log_q(mc->sess->client_id), log_qn(f.p, f.len));
            rc[n++] = denied;
            continue;
        }
        granted = mqtt_router_granted_opts(b->router, f.p, f.len, mc->sess, &old_opts);
        if (granted < 0 && (full = broker_subscribe_room(b, mc->sess, f.p, f.len, &limit))) {
            if (mc->denied_sub++ == 0)
                log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" subscribe refused "
                         "reason=\"%s reached\" limit=%zu",
                         (unsigned long long)mc->c->id, conn_peer(mc->c),
                         log_q(mc->sess->client_id), full, limit);
            rc[n++] = mc->v5 ? MQTT_RC_QUOTA_EXCEEDED : MQTT_SUBACK_FAILURE;
            continue;
        }
        if (mc->v5)
            ropts = subid | (opts & MQTT_SUBOPT_NO_LOCAL ? SUBOPT_NO_LOCAL : 0) |
                    (opts & MQTT_SUBOPT_RETAIN_AS_PUBLISHED ? SUBOPT_RAP : 0);
        /* a new filter or new options are one write for a persistent session; a client that
         * subscribes again on every connect writes nothing */
        if (granted != qos || old_opts != ropts)
            broker_session_subscribe(b, mc->sess, f.p, f.len, qos, ropts);
        fresh[n] = granted < 0;
        rc[n++] = qos;
    }
    /* sent at once: it does not wait for those writes to commit (a crash right after it
     * may lose them, and the client subscribes again) */
    mc->out.len = 0;
    if (mc->v5)
        mqtt_encode_suback5(&mc->out, pkt->id, NULL, rc, n);
    else
        mqtt_encode_suback(&mc->out, pkt->id, rc, n);
    send_buf(mc);
    /* retained messages follow the SUBACK [MQTT-3.3.1-6]; 5.0 Retain Handling: 0 always,
     * 1 only for a new subscription, 2 never [MQTT-3.3.1-9..11] */
    off = n = 0;
    while (mqtt_filter_next(pkt, &off, &f, &opts)) {
        uint8_t rh = mc->v5 ? (opts & MQTT_SUBOPT_RETAIN_HANDLING_MASK) >>
                                  MQTT_SUBOPT_RETAIN_HANDLING_SHIFT
                            : 0;
        bool ok = rc[n] < 0x80, is_new = fresh[n];
        n++;
        if (ok && (rh == 0 || (rh == 1 && is_new)))
            broker_send_retained(b, mc->sess, f.p, f.len, opts & MQTT_SUBOPT_QOS_MASK, subid);
    }
    if (rc != codes) {
        free(rc);
        free(fresh);
    }
}

static void handle_unsubscribe(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    uint8_t codes[256], *rc = codes;
    size_t off = 0, n = 0;
    struct mqtt_str f;
    uint8_t opts;

    if (pkt->subscribe.count > sizeof codes)
        rc = xmalloc(pkt->subscribe.count);
    while (mqtt_filter_next(pkt, &off, &f, &opts)) /* a row each it removes */
        rc[n++] = broker_session_unsubscribe(mc->b, mc->sess, f.p, f.len)
                      ? MQTT_RC_SUCCESS
                      : MQTT_RC_NO_SUBSCRIPTION_EXISTED;
    mc->out.len = 0;
    if (mc->v5)
        mqtt_encode_unsuback5(&mc->out, pkt->id, NULL, rc, n);
    else
        mqtt_encode_unsuback(&mc->out, pkt->id);
    send_buf(mc);
    if (rc != codes)
        free(rc);
}

/* ---- MQTT 5: DISCONNECT and AUTH from the client ---- */

static void handle_disconnect(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    struct mqtt5_conn *v5 = mc->v5;

    if (!v5) {
        mc->got_disconnect = true; /* the will is discarded [MQTT-3.14.4-3] */
        conn_close(mc->c, "client disconnected");
        return;
    }
    v5->peer_disconnect = true;
    if (mqtt_props_has(&pkt->props, MQTT_PROP_SESSION_EXPIRY)) {
        if (v5->expiry_was_zero && pkt->props.session_expiry_s != 0) {
            /* not a valid DISCONNECT: the will stays, and the client gets DISCONNECT 0x82 */
            v5->peer_disconnect = false;
            violation(mc, "Session Expiry Interval set by DISCONNECT after 0 in CONNECT",
                      MQTT_RC_PROTOCOL_ERROR); /* [MQTT-3.14.2-2] */
            return;
        }
        broker_session_expiry(mc->b, mc->sess, broker_expiry_cap(mc->b, pkt->props.session_expiry_s));
    }
    /* only Normal disconnection (0x00) discards the will [MQTT-3.1.2-8] [MQTT-3.14.4-3]:
     * 0x04 (Disconnect with Will Message) and the error codes publish it */
    mc->got_disconnect = pkt->reason == MQTT_RC_SUCCESS;
    conn_close(mc->c, pkt->reason == 0 ? "client disconnected"
                                       : "client disconnected with a reason code");
}

static void handle_auth(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    struct mqtt_broker *b = mc->b;
    const struct mqtt_props *ps = &pkt->props;
    struct buf reply, props;
    struct mqtt_bin bin;
    uint8_t rc;

    /* re-authentication only, with the method of the CONNECT [MQTT-4.12.1-1] */
    if (!mc->v5->auth_method || pkt->reason != MQTT_RC_REAUTHENTICATE ||
        !mqtt_props_has(ps, MQTT_PROP_AUTH_METHOD) ||
        strlen(b->auth_method) != ps->auth_method.len ||
        memcmp(b->auth_method, ps->auth_method.p, ps->auth_method.len) != 0) {
        violation(mc, "AUTH without the authentication method of the CONNECT",
                  MQTT_RC_PROTOCOL_ERROR);
        return;
    }
    buf_init(&reply);
    rc = b->auth_fn(b->auth_ctx, mc->username, strlen(mc->username), ps->auth_data.p,
                    ps->auth_data.len, &reply);
    if (rc != MQTT_RC_SUCCESS) {
        buf_fini(&reply);
        violation(mc, "re-authentication failed", rc >= 0x80 ? rc : MQTT_RC_NOT_AUTHORIZED);
        return;
    }
    buf_init(&props);
    mqtt_prop_put_str(&props, MQTT_PROP_AUTH_METHOD, b->auth_method, strlen(b->auth_method));
    if (reply.len)
        mqtt_prop_put_bin(&props, MQTT_PROP_AUTH_DATA, reply.data, reply.len);
    bin = (struct mqtt_bin){props.data, props.len};
    mc->out.len = 0;
    mqtt_encode_auth(&mc->out, MQTT_RC_SUCCESS, &bin);
    send_buf(mc);
    buf_fini(&props);
    buf_fini(&reply);
}

/* ---- dispatch ---- */

static void handle_packet(struct mqtt_conn *mc, const struct mqtt_packet *pkt)
{
    if (!mc->connected) {
        if (pkt->type != MQTT_CONNECT) {
            violation(mc, "first packet must be CONNECT", 0); /* [MQTT-3.1.0-1] */
            return;
        }
        handle_connect(mc, pkt);
        return;
    }
    switch (pkt->type) {
    case MQTT_CONNECT:
        violation(mc, "second CONNECT", 0); /* [MQTT-3.1.0-2] */
        break;
    case MQTT_PUBLISH:
        handle_publish(mc, pkt);
        break;
    case MQTT_PUBACK:
        broker_on_puback(mc->b, mc->sess, pkt->id);
        break;
    case MQTT_PUBREC:
        broker_on_pubrec(mc->b, mc->sess, pkt->id, mc->v5 ? pkt->reason : 0);
        break;
    case MQTT_PUBREL: {
        bool known = broker_qos2_find(mc->sess, pkt->id) != NULL;
        broker_qos2_remove(mc->sess, pkt->id);
        if (mc->v5 && known && mc->v5->in_flight)
            mc->v5->in_flight--;
        broker_out(mc);
        encode_ack(mc, MQTT_PUBCOMP, pkt->id, known ? 0 : MQTT_RC_PACKET_ID_NOT_FOUND);
        send_buf(mc);
        break;
    }
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
        broker_out(mc);
        mqtt_encode_pingresp(&mc->out);
        send_buf(mc);
        break;
    case MQTT_DISCONNECT:
        handle_disconnect(mc, pkt);
        break;
    case MQTT_AUTH:
        handle_auth(mc, pkt);
        break;
    default: /* CONNACK, SUBACK, UNSUBACK, PINGRESP are server-to-client only */
        violation(mc, "packet type not allowed from a client", 0);
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
        if (mqtt_decode_v(&mc->lim, mc->lim.version, in->data + pos, in->len - pos, &pkt, &used,
                          &why, NULL) != CODEC_FRAME)
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
        uint8_t reason = 0;
        /* before CONNECT is accepted a packet is capped at limits.preauth_max_bytes: a larger
         * CONNECT is refused as soon as its fixed header says so, not buffered. Set per
         * packet: what follows an accepted CONNECT in the same read has the full limit. */
        mc->lim.max_packet_bytes = guard_cap(c, c->gw->cfg->mqtt.max_packet_bytes);
        rc = mqtt_decode_v(&mc->lim, mc->lim.version, in->data + off, in->len - off, &pkt, &used,
                           &why, &reason);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            violation(mc, why, reason);
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

/* MQTT 5: the server's DISCONNECT, with the reason its cause chose (broker_disconnect),
 * Server Shutting Down (0x8B) or Keep Alive Timeout (0x8D); none after the client's own
 * DISCONNECT, nor for a close without a reason (the peer went away). */
static void mqtt_goodbye(void *state, const char *why, bool stopping)
{
    struct mqtt_conn *mc = state;
    uint8_t rc;
    const char *text;
    struct buf pb;
    struct mqtt_bin bin;

    if (!mc->v5 || !mc->connected || mc->v5->peer_disconnect)
        return;
    rc = mc->v5->disconnect_rc;
    text = mc->v5->disconnect_why;
    if (!rc && stopping) {
        rc = MQTT_RC_SERVER_SHUTTING_DOWN;
        text = "server shutting down";
    } else if (!rc && why && strcmp(why, "idle timeout") == 0) {
        rc = MQTT_RC_KEEP_ALIVE_TIMEOUT;
        text = "keep alive timeout";
    }
    if (!rc)
        return;
    buf_init(&pb);
    if (text)
        mqtt_prop_put_str(&pb, MQTT_PROP_REASON_STRING, text, strlen(text));
    bin = (struct mqtt_bin){pb.data, pb.len};
    mc->out.len = 0;
    mqtt_encode_disconnect5(&mc->out, rc, &bin);
    if (too_large(mc, 0)) { /* without the Reason String */
        mc->out.len = 0;
        mqtt_encode_disconnect5(&mc->out, rc, NULL);
    }
    send_buf(mc);
    buf_fini(&pb);
}

const struct proto_ops mqtt_proto = {"mqtt", mqtt_open, mqtt_feed, mqtt_close, mqtt_goodbye,
                                     sizeof(struct mqtt_conn), NULL, NULL};
