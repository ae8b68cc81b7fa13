/* protocols/mqtt/broker.c: sessions, delivery, retained messages, presence and $SYS.
 *
 * The broker is a bus sink: every message on the bus (MQTT, line, WebSocket, HTTP, the
 * gateway's own) updates the retained store (retained.c) when it carries the retain flag,
 * then the router (a trie of filters) names the matching sessions, and each gets it with
 * min(published, granted) QoS. A session has an in-flight window (mqtt.max_inflight) and
 * a queue (mqtt.max_queued) behind it; offline persistent sessions only queue. QoS 1/2
 * messages of persistent sessions (clean session 0) are kept through the persistence port
 * (struct mqtt_store, wired by main.c), with flags that say how far each got (sent, PUBREC
 * received), until acknowledged, so a restart resumes them; their packet ids derive from
 * their stored number, so a resend keeps its id. A persistent session's identity is one
 * record and each of its subscriptions a row of its own, so a SUBSCRIBE or UNSUBSCRIBE
 * writes only the filters it changed. Writes made while routing a message join its
 * publisher's ticket (b->ticket).
 *
 * What waits for a subscriber (its queue, and the retained messages a SUBSCRIBE matched,
 * kept apart in its backlog and never counted against the queue's limits) goes out as the
 * in-flight window and its socket allow: pump runs again on each ack that frees a slot and
 * when a socket past its send budget has drained (conn_when_drained). Per-identity bounds
 * live here too: subscription bytes and levels, queued bytes, connections per device or
 * application, QoS 2 ids awaiting PUBREL, anonymous persistent sessions; and the checks
 * every message from a client passes, a PUBLISH and the will alike (broker_publish_check).
 *
 * A connection that closes while routing or its packets run (a slow subscriber cut off, a
 * failed send) keeps its MQTT state until its close callback (gateway/conn.h), which runs
 * when no code of the broker is on the stack: it is finished (will, session detach,
 * presence) there, so a will is never routed inside another routing. The lifetime of a
 * connection's MQTT state (broker_conn_new .. broker_conn_close) is kept here, so handle.c
 * calls into this file and never the other way round.
 *
 * Where MQTT 5.0 plugs in: return and reason codes are uint8_t all the way, the router
 * keeps a per-subscription option word (no-local, retain-as-published, identifiers), and
 * limits are read per session from config (receive maximum = the in-flight window).
 * Loop thread only. */
#include "protocols/mqtt/broker_int.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "protocols/mqtt/mqtt_int.h"

#define SYS_INTERVAL_MS 10000

/* ---- sending ---- */

/* Flags kept with a persistent session's stored message (the store's retain byte), so a
 * restart resumes each message where it was: bit 0 the retain flag to send, bit 1 PUBREC
 * received (only PUBREL is left to send), bit 2 sent once (a resend carries DUP). */
#define STORED_RETAIN 0x01
#define STORED_RELEASED 0x02
#define STORED_SENT 0x04
/* bit 3: the stored payload starts with the message's MQTT 5 properties (pack_props); the
 * same bit in a retained message's stored QoS byte */
#define STORED_PROPS 0x08

/* A message's payload as stored: when it has MQTT 5 properties or an expiry, prefixed with
 * them (u32 length, the property bytes, i64 expiry epoch ms, big-endian) in tmp, and true;
 * else the payload itself. */
static bool pack_props(const struct msg *m, struct buf *tmp, const uint8_t **p, size_t *len)
{
    uint8_t hdr[8];
    uint64_t e = (uint64_t)m->expiry_ms;
    if (!m->props_len && !m->expiry_ms) {
        *p = m->payload;
        *len = m->payload_len;
        return false;
    }
    for (int i = 0; i < 4; i++)
        hdr[i] = (uint8_t)(m->props_len >> (24 - 8 * i));
    buf_append(tmp, hdr, 4);
    if (m->props_len)
        buf_append(tmp, m->props, m->props_len);
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)(e >> (56 - 8 * i));
    buf_append(tmp, hdr, 8);
    buf_append(tmp, m->payload, m->payload_len);
    *p = tmp->data;
    *len = tmp->len;
    return true;
}

/* A message loaded from storage, its properties unpacked when packed (pack_props). */
static struct msg *unpack_msg(const char *topic, const uint8_t *p, size_t len, bool packed)
{
    uint32_t plen = 0;
    uint64_t e = 0;
    struct msg *m;
    if (!packed || len < 12)
        return msg_new(MSG_PLAIN, "", topic, p, len, NULL, 0);
    for (int i = 0; i < 4; i++)
        plen = plen << 8 | p[i];
    if (plen > len - 12)
        return msg_new(MSG_PLAIN, "", topic, p, len, NULL, 0);
    for (int i = 0; i < 8; i++)
        e = e << 8 | p[4 + plen + i];
    m = msg_new(MSG_PLAIN, "", topic, p + 12 + plen, len - 12 - plen, NULL, 0);
    msg_set_props(m, p + 4, plen);
    m->expiry_ms = (int64_t)e;
    return m;
}

static size_t send_budget(const struct mqtt_broker *b)
{
    return b->gw->cfg->limits.max_send_queue_bytes / 2;
}

/* Encoding scratch kept between packets; a larger one (a big PUBLISH) is freed. */
#define SPARE_MAX_BYTES 4096

/* mc->out's memory goes back to the broker (or is freed): a connection keeps none. */
static void out_release(struct mqtt_conn *mc)
{
    struct mqtt_broker *b = mc->b;
    if (!b->spare.data && mc->out.cap <= SPARE_MAX_BYTES) {
        b->spare = mc->out;
        b->spare.len = 0;
        buf_init(&mc->out);
    } else {
        buf_fini(&mc->out);
    }
}

void broker_send(struct mqtt_conn *mc)
{
    conn_send(mc->c, mc->out.data, mc->out.len);
    out_release(mc); /* conn_send copied it */
    mc->b->packets_out++;
}

struct buf *broker_out(struct mqtt_conn *mc)
{
    if (!mc->out.data && mc->b->spare.data) {
        mc->out = mc->b->spare;
        buf_init(&mc->b->spare);
    }
    mc->out.len = 0;
    return &mc->out;
}

/* Seconds left before m expires (at least 1), 0 when it has no expiry. */
static uint32_t expiry_left(const struct msg *m, int64_t now)
{
    int64_t left;
    if (!m->expiry_ms)
        return 0;
    left = (m->expiry_ms - now + 999) / 1000;
    return left < 1 ? 1 : left > UINT32_MAX ? UINT32_MAX : (uint32_t)left;
}

/* The alias of topic towards mc's client: an existing one (*is_new false), a new one when
 * the client allows more (*is_new true: not yet recorded, see alias_record), or 0. */
static uint16_t alias_out(const struct mqtt5_conn *v5, const char *topic, size_t len,
                          bool *is_new)
{
    void *v;
    *is_new = false;
    if (!v5->alias_max_out)
        return 0;
    if ((v = map_get(&v5->alias_out, topic, len)) != NULL)
        return (uint16_t)(uintptr_t)v;
    if (v5->alias_out_n >= v5->alias_max_out)
        return 0;
    *is_new = true;
    return (uint16_t)(v5->alias_out_n + 1);
}

static void alias_record(struct mqtt5_conn *v5, const char *topic, size_t len, uint16_t alias)
{
    char *key = xstrndup(topic, len);
    map_put(&v5->alias_out, key, len, (void *)(uintptr_t)alias);
    v5->alias_out_n++;
}

static void count_publish(struct mqtt_broker *b, struct mqtt_conn *mc)
{
    mc->c->msgs_out++;
    b->publish_out++;
    b->gw->metrics.mqtt_messages_sent++;
}

/* Sends m to mc. MQTT 5: with the message's properties, the remaining expiry, its
 * subscription identifiers (subid, or the 0-terminated subids) and a topic alias when
 * the client allows them; a message larger than the client's Maximum Packet Size is not
 * sent (counted) [MQTT-3.1.2-25]. Returns false when it was not sent for that reason. */
static bool send_publish(struct mqtt_broker *b, struct mqtt_conn *mc, struct msg *m, uint8_t qos,
                         bool retain, bool dup, uint16_t id, uint32_t subid,
                         const uint32_t *subids)
{
    size_t tlen = strlen(m->topic);
    if (!mc->v5 && qos == 0 && !retain && m == b->shared_m) {
        /* the same bytes for every 3.1.1 subscriber of the message being routed: encoded
         * for the first one, copied by conn_send for each */
        if (!b->shared.len && mqtt_encode_publish(&b->shared, m->topic, tlen, m->payload,
                                                  m->payload_len, 0, false, false, 0) != 0)
            return true;
        conn_send(mc->c, b->shared.data, b->shared.len);
        b->packets_out++;
        count_publish(b, mc);
        return true;
    }
    broker_out(mc);
    if (!mc->v5) {
        if (mqtt_encode_publish(&mc->out, m->topic, tlen, m->payload, m->payload_len, qos,
                                retain, dup, id) != 0) {
            out_release(mc);
            return true;
        }
    } else {
        struct mqtt5_conn *v5 = mc->v5;
        struct buf *pb = &b->props;
        struct mqtt_bin props;
        uint32_t left = expiry_left(m, gw_now_ms());
        bool is_new;
        uint16_t alias = alias_out(v5, m->topic, tlen, &is_new);
        size_t size, rem;

        pb->len = 0;
        if (m->props_len)
            buf_append(pb, m->props, m->props_len);
        if (left)
            mqtt_prop_put_int(pb, MQTT_PROP_MESSAGE_EXPIRY, left);
        if (subids) {
            for (size_t i = 0; subids[i]; i++)
                mqtt_prop_put_int(pb, MQTT_PROP_SUBSCRIPTION_ID, subids[i]);
        } else if (subid) {
            mqtt_prop_put_int(pb, MQTT_PROP_SUBSCRIPTION_ID, subid);
        }
        if (alias)
            mqtt_prop_put_int(pb, MQTT_PROP_TOPIC_ALIAS, alias);
        if (alias && !is_new)
            tlen = 0; /* the client knows the topic by its alias */
        rem = 2 + tlen + (qos ? 2 : 0) + mqtt_varint_size((uint32_t)pb->len) + pb->len +
              m->payload_len;
        size = 1 + mqtt_varint_size(rem > MQTT_MAX_REMAINING ? MQTT_MAX_REMAINING : (uint32_t)rem) +
               rem;
        if (v5->max_packet_out && size > v5->max_packet_out) {
            b->gw->metrics.mqtt_too_large++;
            out_release(mc);
            return false;
        }
        props = (struct mqtt_bin){pb->data, pb->len};
        if (mqtt_encode_publish5(&mc->out, m->topic, tlen, &props, m->payload, m->payload_len,
                                 qos, retain, dup, id) != 0) {
            out_release(mc);
            return true;
        }
        if (is_new)
            alias_record(v5, m->topic, tlen, alias);
    }
    broker_send(mc);
    count_publish(b, mc);
    return true;
}

/* Whether m expired before it could be sent (counted). */
static bool expired(struct mqtt_broker *b, const struct msg *m)
{
    if (!m->expiry_ms || gw_now_ms() < m->expiry_ms)
        return false;
    b->gw->metrics.mqtt_expired++;
    return true;
}

/* In-flight window of s: mqtt.max_inflight, or less when its MQTT 5 client's Receive
 * Maximum is lower [MQTT-3.3.4-7]. */
static size_t window(const struct mqtt_broker *b, const struct mqtt_session *s)
{
    size_t max = b->gw->cfg->mqtt.max_inflight;
    if (s->conn && s->conn->v5 && s->conn->v5->recv_max_out < max)
        return s->conn->v5->recv_max_out;
    return max;
}

static void send_pubrel(struct mqtt_conn *mc, uint16_t id)
{
    broker_out(mc);
    mqtt_encode_pubrel(&mc->out, id);
    broker_send(mc);
}

static void out_free(struct out_msg *o)
{
    msg_unref(o->m);
    free(o->subids);
    free(o);
}

static bool id_in_use(const struct mqtt_session *s, uint16_t id)
{
    for (size_t i = 0; i < s->dv->ninflight; i++)
        if (s->dv->inflight[i]->pkt_id == id)
            return true;
    return false;
}

/* Packet id for o. A persistent session's message takes one derived from its stored
 * number, so after a gateway restart it is resent with the id the client may still hold
 * QoS 2 state for (it then answers PUBREC instead of delivering twice [MQTT-4.3.3-2]).
 * Otherwise, or when that id is taken, the next free one. */
static uint16_t pick_id(struct mqtt_session *s, const struct out_msg *o)
{
    if (o->store_id) {
        uint16_t id = (uint16_t)((o->store_id - 1) % 65535 + 1);
        if (!id_in_use(s, id))
            return id;
    }
    do
        s->dv->next_id = (uint16_t)(s->dv->next_id == 65535 ? 1 : s->dv->next_id + 1);
    while (id_in_use(s, s->dv->next_id));
    return s->dv->next_id;
}

/* Writes the stored copy of a persistent session's message (replacing the older one). */
static void store_msg(struct mqtt_broker *b, struct mqtt_session *s, const struct out_msg *o)
{
    uint8_t flags = (uint8_t)((o->retain ? STORED_RETAIN : 0) |
                              (o->state == OUT_WAIT_PUBCOMP ? STORED_RELEASED : 0) |
                              (o->sent ? STORED_SENT : 0));
    struct buf tmp;
    const uint8_t *p;
    size_t len;
    buf_init(&tmp);
    if (pack_props(o->m, &tmp, &p, &len))
        flags |= STORED_PROPS;
    ticket_add(b->ticket, b->store.put_session_msg(b->store.ctx, s->client_id, o->store_id,
                                                   o->m->topic, p, len, o->qos, flags));
    buf_fini(&tmp);
}

/* QoS 1/2 messages of persistent sessions are numbered (delivery order) and stored. */
static void number_msg(struct mqtt_session *s, struct out_msg *o)
{
    if (!s->clean && o->qos > 0)
        o->store_id = ++s->dv->next_store_id;
}

static void completed(struct mqtt_broker *b, struct mqtt_session *s, struct out_msg *o);

/* Sends o into the in-flight window. A message the client's Maximum Packet Size refuses
 * is done with as if it had been acknowledged [MQTT-3.1.2-25]; false then. */
static bool send_inflight(struct mqtt_broker *b, struct mqtt_session *s, struct out_msg *o)
{
    bool dup = o->sent; /* sent before a restart [MQTT-3.3.1-1]; else a first attempt */
    o->pkt_id = pick_id(s, o);
    if (!s->dv->inflight) /* most sessions never have a message in flight */
        s->dv->inflight = xcalloc(b->gw->cfg->mqtt.max_inflight + 1, sizeof *s->dv->inflight);
    s->dv->inflight[s->dv->ninflight++] = o;
    if (o->state == OUT_WAIT_PUBCOMP) { /* released before a restart: finish the flow */
        send_pubrel(s->conn, o->pkt_id);
        return true;
    }
    o->state = o->qos == 1 ? OUT_WAIT_PUBACK : OUT_WAIT_PUBREC;
    if (!send_publish(b, s->conn, o->m, o->qos, o->retain, dup, o->pkt_id, o->subid,
                      o->subids)) {
        s->dv->ninflight--;
        o->state = OUT_QUEUED;
        completed(b, s, o);
        return false;
    }
    if (!o->sent) {
        o->sent = true;
        if (o->store_id)
            store_msg(b, s, o);
    }
    return true;
}

static bool over_budget(struct mqtt_broker *b, struct mqtt_session *s)
{
    return s->conn->c->send_queued_bytes > send_budget(b);
}

static size_t msg_bytes(const struct msg *m)
{
    return strlen(m->topic) + m->payload_len;
}

static void queue_push(struct mqtt_session *s, struct out_msg *o)
{
    list_push_back(&s->dv->queue, &o->link);
    s->dv->queued_bytes += msg_bytes(o->m);
}

static void queue_remove(struct mqtt_session *s, struct out_msg *o)
{
    list_remove(&s->dv->queue, &o->link);
    s->dv->queued_bytes -= msg_bytes(o->m);
    if (s->dv->backlog && s->dv->backlog->ahead > s->dv->queue.len)
        s->dv->backlog->ahead = s->dv->queue.len; /* one of those was dropped */
}

/* Whether s may get a message on topic: its filter was allowed, but a rule may deny this
 * topic, and an anonymous wildcard may reach a provisioned device's commands. */
static bool may_receive(struct mqtt_broker *b, const struct mqtt_session *s, const char *topic)
{
    if (acl_has_subscribe_denials(b->acl) &&
        !acl_check(b->acl, s->role, s->username[0] ? s->username : NULL, s->client_id,
                   session_device(s)[0] ? session_device(s) : NULL, topic, strlen(topic),
                   ACL_SUBSCRIBE))
        return false;
    return s->role != ACL_ROLE_ANONYMOUS ||
           !broker_anon_denied(b, topic, strlen(topic), ACL_SUBSCRIBE);
}

static bool backlog_waits(const struct mqtt_session *s)
{
    return s->dv && s->dv->backlog && s->dv->backlog->head < s->dv->backlog->n;
}

static void backlog_free(struct mqtt_session *s)
{
    struct ret_backlog *bl = s->dv ? s->dv->backlog : NULL;
    if (!bl)
        return;
    for (size_t i = bl->head; i < bl->n; i++)
        msg_unref(bl->e[i].m);
    free(bl->e);
    free(bl);
    s->dv->backlog = NULL;
}

/* Sends the next retained message of the backlog when it is still its topic's (a newer
 * one, or its clearing, reached s as a live message, queued behind); false when the
 * in-flight window is full. */
static bool backlog_send_one(struct mqtt_broker *b, struct mqtt_session *s)
{
    struct ret_backlog *bl = s->dv->backlog;
    struct ret_entry e = bl->e[bl->head];
    const struct retained *r;

    if (e.qos > 0 && s->dv->ninflight >= window(b, s))
        return false;
    bl->head++;
    r = map_get(&b->retained.by_topic, e.m->topic, strlen(e.m->topic));
    if (r && r->m == e.m && may_receive(b, s, e.m->topic) && !expired(b, e.m)) {
        if (e.qos == 0) {
            send_publish(b, s->conn, e.m, 0, true, false, 0, e.subid, NULL);
        } else {
            struct out_msg *o = xcalloc(1, sizeof *o);
            o->m = msg_ref(e.m);
            o->qos = e.qos;
            o->retain = true;
            o->subid = e.subid;
            number_msg(s, o);
            send_inflight(b, s, o); /* stores it, marked sent */
        }
    }
    msg_unref(e.m);
    if (bl->head == bl->n)
        backlog_free(s);
    return true;
}

static void on_drained(struct conn *c);
static void unpersist_msg(struct mqtt_broker *b, struct mqtt_session *s, struct out_msg *o);

/* Sends what waits while the connection keeps up: queued messages older than the retained
 * backlog, the backlog, then the rest of the queue, QoS 1/2 into free in-flight slots.
 * Past the send budget it goes on once the socket drained (on_drained); a full window goes
 * on with the acks that free it. */
static void pump(struct mqtt_broker *b, struct mqtt_session *s)
{
    size_t max = window(b, s);
    if (!s->dv) /* nothing was ever queued for it */
        return;
    while (s->conn && !s->conn->c->closing && (s->dv->queue.head || backlog_waits(s))) {
        struct out_msg *o;
        if (over_budget(b, s)) {
            conn_when_drained(s->conn->c, send_budget(b) / 2, on_drained);
            break;
        }
        if (backlog_waits(s) && s->dv->backlog->ahead == 0) {
            if (!backlog_send_one(b, s))
                break;
            continue;
        }
        o = list_entry(s->dv->queue.head, struct out_msg, link);
        if (o->qos > 0 && s->dv->ninflight >= max)
            break;
        if (s->dv->backlog && s->dv->backlog->ahead)
            s->dv->backlog->ahead--;
        queue_remove(s, o);
        if (o->state != OUT_WAIT_PUBCOMP && expired(b, o->m)) { /* never sent after expiry */
            unpersist_msg(b, s, o);
            out_free(o);
        } else if (o->qos == 0) {
            send_publish(b, s->conn, o->m, 0, o->retain, false, 0, o->subid, o->subids);
            out_free(o);
        } else {
            send_inflight(b, s, o);
        }
    }
}

/* The socket of a subscriber that was past its send budget drained: what waits goes on. */
static void on_drained(struct conn *c)
{
    struct mqtt_conn *mc = c->proto == &mqtt_proto ? c->proto_state : NULL;
    if (mc && mc->sess && mc->sess->conn == mc)
        pump(mc->b, mc->sess);
}

static void unpersist_msg(struct mqtt_broker *b, struct mqtt_session *s, struct out_msg *o)
{
    if (o->store_id)
        b->store.delete_session_msg(b->store.ctx, s->client_id, o->store_id);
}

/* Makes room under max_queued: drops the oldest QoS 0 message. Returns false when
 * every queued message is QoS 1/2. */
static bool drop_oldest_qos0(struct mqtt_session *s)
{
    for (struct list_link *l = s->dv->queue.head; l; l = l->next) {
        struct out_msg *o = list_entry(l, struct out_msg, link);
        if (o->qos != 0)
            continue;
        queue_remove(s, o);
        out_free(o);
        return true;
    }
    return false;
}

static void count_drop(struct mqtt_broker *b, struct mqtt_session *s, const char *why)
{
    const struct config *cfg = b->gw->cfg;
    s->dv->dropped++;
    b->gw->metrics.mqtt_dropped++;
    if (!s->dv->drop_logged) {
        s->dv->drop_logged = true;
        log_warn("mqtt client=\"%s\" dropping messages reason=\"%s\" queued=%zu limit=%zu "
                 "queued_bytes=%zu limit_bytes=%zu",
                 log_q(s->client_id), why, s->dv->queue.len, cfg->mqtt.max_queued,
                 s->dv->queued_bytes, cfg->mqtt.max_queued_bytes);
    }
}

/* Whether one more message of bytes fits the session's queue limits. */
static bool queue_fits(const struct mqtt_broker *b, const struct mqtt_session *s, size_t bytes)
{
    const struct config *cfg = b->gw->cfg;
    return s->dv->queue.len < cfg->mqtt.max_queued &&
           (!cfg->mqtt.max_queued_bytes ||
            s->dv->queued_bytes + bytes <= cfg->mqtt.max_queued_bytes);
}

/* Delivers m to session s with effective qos (and the subscription identifiers it
 * matched: subid, or the 0-terminated subids, which s takes over). */
static void deliver(struct mqtt_broker *b, struct mqtt_session *s, struct msg *m, uint8_t qos,
                    bool retain, uint32_t subid, uint32_t *subids, uint16_t group)
{
    struct out_msg *o;
    size_t bytes = msg_bytes(m);
    /* retained messages a SUBSCRIBE matched go first: what follows them waits */
    bool behind = broker_deliv(s)->queue.head || backlog_waits(s);

    if (!may_receive(b, s, m->topic) || (!s->conn && s->clean)) {
        free(subids);
        return;
    }
    if (s->conn && qos == 0 && !behind) {
        if (over_budget(b, s))
            count_drop(b, s, "subscriber not reading (QoS 0 dropped)");
        else
            send_publish(b, s->conn, m, 0, retain, false, 0, subid, subids);
        free(subids);
        return;
    }
    o = xcalloc(1, sizeof *o);
    o->m = msg_ref(m);
    o->qos = qos;
    o->retain = retain;
    o->subid = subid;
    o->subids = subids;
    o->group = group;
    if (s->conn && qos > 0 && !behind && s->dv->ninflight < window(b, s) && !over_budget(b, s)) {
        number_msg(s, o);
        send_inflight(b, s, o); /* stores it, marked sent */
        return;
    }
    if (!queue_fits(b, s, bytes)) {
        bool by_bytes = s->dv->queue.len < b->gw->cfg->mqtt.max_queued;
        /* the oldest QoS 0 messages make room; failing that, the new one is dropped */
        count_drop(b, s, by_bytes ? "session queue bytes full" : "session queue full");
        if (by_bytes)
            b->gw->metrics.mqtt_refused_queue_bytes++;
        while (!queue_fits(b, s, bytes) && drop_oldest_qos0(s))
            ;
        if (!queue_fits(b, s, bytes)) {
            out_free(o);
            /* a live subscriber that lets QoS 1/2 pile up past the limit is cut off */
            if (qos > 0 && s->conn)
                broker_disconnect(s->conn, MQTT_RC_QUOTA_EXCEEDED,
                                  "subscriber too slow: session queue full");
            return;
        }
    }
    number_msg(s, o);
    if (o->store_id)
        store_msg(b, s, o);
    queue_push(s, o);
    if (s->conn)
        pump(b, s);
}

/* ---- routing (bus sink) ---- */

struct route_ctx {
    struct mqtt_broker *b;
    struct msg *m;
};

struct subid_hits {
    const char *topic;
    uint32_t *ids;
    size_t n, cap;
};

static void collect_subid(void *ctx, const char *filter, size_t len, uint8_t qos, uint32_t opts)
{
    struct subid_hits *h = ctx;
    uint32_t id = opts & SUBOPT_ID_MASK;
    (void)qos;
    if (!id || !mqtt_topic_matches(filter, len, h->topic, strlen(h->topic)))
        return;
    for (size_t i = 0; i < h->n; i++)
        if (h->ids[i] == id)
            return;
    if (h->n + 1 >= h->cap) {
        h->cap = h->cap ? h->cap * 2 : 4;
        h->ids = xrealloc(h->ids, h->cap * sizeof *h->ids);
    }
    h->ids[h->n++] = id;
    h->ids[h->n] = 0;
}

static void on_match(void *ctx, void *sub, uint8_t qos, uint32_t opts)
{
    struct route_ctx *rc = ctx;
    struct mqtt_session *s = sub;
    uint8_t q = rc->m->qos < qos ? rc->m->qos : qos;
    uint32_t *ids = NULL;

    if (opts & (SHARE_OPT_GROUP | SHARE_OPT_MEMBER)) {
        if (opts & SHARE_OPT_GROUP) /* one of its members gets it */
            share_route(rc->b, sub, rc->m);
        return; /* a member's own "$share/..." entry delivers nothing itself */
    }
    if ((opts & SUBOPT_NO_LOCAL) && s == rc->b->origin)
        return; /* [MQTT-3.8.3-3] */
    if (mqtt_router_multi(rc->b->router) && s->dv->nsubids) {
        /* overlapping subscriptions: one copy carrying every matching identifier */
        struct subid_hits h = {rc->m->topic, NULL, 0, 0};
        mqtt_router_list(rc->b->router, s, collect_subid, &h);
        if (h.n > 1)
            ids = h.ids;
        else
            free(h.ids);
    }
    /* retain is 0 to existing subscribers [MQTT-3.3.1-9], unless Retain As Published */
    deliver(rc->b, s, rc->m, q, (opts & SUBOPT_RAP) && rc->m->retain, opts & SUBOPT_ID_MASK,
            ids, 0);
}

/* ---- MQTT 5 ---- */

void broker_disconnect(struct mqtt_conn *mc, uint8_t rc, const char *why)
{
    if (mc->v5 && mc->connected && !mc->c->closing && !mc->v5->disconnect_rc) {
        mc->v5->disconnect_rc = rc;
        mc->v5->disconnect_why = why;
    }
    conn_close(mc->c, why);
}

void broker_forward_props(const struct mqtt_props *ps, struct buf *out)
{
    struct mqtt_prop p;
    size_t off = 0;
    while (mqtt_prop_next(ps, &off, &p)) {
        switch (p.id) {
        case MQTT_PROP_PAYLOAD_FORMAT:
        case MQTT_PROP_CONTENT_TYPE:
        case MQTT_PROP_RESPONSE_TOPIC:
        case MQTT_PROP_CORRELATION_DATA:
        case MQTT_PROP_USER_PROPERTY:
            mqtt_prop_put(out, &p);
            break;
        default: /* expiry is kept as a deadline; aliases and identifiers are per hop */
            break;
        }
    }
}

uint32_t broker_expiry_cap(const struct mqtt_broker *b, uint32_t asked)
{
    int cap = b->gw->cfg->mqtt.session_expiry_s;
    return cap > 0 && asked > (uint32_t)cap ? (uint32_t)cap : asked;
}

void broker_will_free(struct mqtt_will *w)
{
    if (!w)
        return;
    free(w->topic);
    free(w->props);
    free(w);
}

/* Publishes a will as device's (checked by broker_publish_check when its connection ended). */
static void will_publish(struct mqtt_broker *b, const char *device, const struct mqtt_will *w)
{
    struct msg *m = msg_new(MSG_PLAIN, device, w->topic, w->payload, w->len, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = w->qos;
    m->retain = w->retain;
    if (w->props_len)
        msg_set_props(m, w->props, w->props_len);
    if (w->expiry_s)
        m->expiry_ms = m->ts_ms + (int64_t)w->expiry_s * 1000;
    bus_publish(b->gw->bus, m, NULL);
    msg_unref(m);
}

void broker_will_cancel(struct mqtt_broker *b, struct mqtt_session *s)
{
    if (!s->dv || !s->dv->will)
        return;
    log_info("mqtt client=\"%s\" will not published topic=\"%s\" reason=\"the client "
             "reconnected within its will delay\"",
             log_q(s->client_id), log_q(s->dv->will->topic));
    broker_will_free(s->dv->will);
    s->dv->will = NULL;
    b->delayed_wills--;
    b->gw->metrics.mqtt_wills_cancelled++;
}

/* The will s held for its delay goes out now (the delay passed, or the session ends). */
static void will_fire(struct mqtt_broker *b, struct mqtt_session *s)
{
    struct mqtt_will *w = s->dv->will;
    s->dv->will = NULL;
    b->delayed_wills--;
    b->gw->metrics.mqtt_wills_delayed++;
    will_publish(b, session_device(s), w);
    broker_will_free(w);
}

void broker_session_expiry(struct mqtt_broker *b, struct mqtt_session *s, uint32_t expiry_s)
{
    bool changed = !s->own_expiry || s->expiry_s != expiry_s;
    s->own_expiry = true;
    s->expiry_s = expiry_s;
    if (expiry_s == 0) {
        if (!s->clean) { /* ends with its connection now: nothing of it is kept */
            ticket_add(b->ticket, b->store.delete_session(b->store.ctx, s->client_id));
            s->clean = true;
        }
        return;
    }
    if (s->clean) { /* a new MQTT 5 session that outlives its connection */
        s->clean = false;
        broker_session_persist(b, s);
        return;
    }
    if (changed)
        broker_session_persist(b, s);
}

/* ---- connections ---- */

/* Connections of one device or application (mqtt.max_connections_per_identity). */
struct identity {
    size_t conns;
    char name[]; /* its username; map key */
};

/* Adds delta to the connections of mc's identity (anonymous clients are not counted: one
 * client id has one connection at most). */
static void identity_count(struct mqtt_broker *b, const struct mqtt_conn *mc, int delta)
{
    size_t n = strlen(mc->username);
    struct identity *id;
    if (mc->role == ACL_ROLE_ANONYMOUS || n == 0)
        return;
    id = map_get(&b->identities, mc->username, n);
    if (!id) {
        id = xcalloc(1, sizeof *id + n + 1);
        memcpy(id->name, mc->username, n);
        map_put(&b->identities, id->name, n, id);
    }
    id->conns = delta > 0 ? id->conns + 1 : id->conns - 1;
    if (id->conns == 0) {
        map_del(&b->identities, id->name, n);
        free(id);
    }
}

size_t broker_identity_conns(struct mqtt_broker *b, const char *username)
{
    const struct identity *id = map_get(&b->identities, username, strlen(username));
    return id ? id->conns : 0;
}

void broker_conn_connected(struct mqtt_conn *mc)
{
    struct mqtt_broker *b = mc->b;
    mc->connected = true;
    if (++b->connected > b->max_connected)
        b->max_connected = b->connected;
    identity_count(b, mc, 1);
}

struct mqtt_conn *broker_conn_new(struct mqtt_broker *b, struct conn *c)
{
    /* in the connection's own block when it was accepted by an MQTT listener */
    struct mqtt_conn *mc = conn_state_space(c, sizeof *mc);
    bool in_conn = mc != NULL;

    if (!in_conn)
        mc = xcalloc(1, sizeof *mc);
    mc->in_conn = in_conn;
    mc->c = c;
    mc->b = b;
    mc->username = "";
    buf_init(&mc->out);
    return mc;
}

void broker_conn_finish_now(struct mqtt_conn *mc)
{
    struct mqtt_broker *b = mc->b;

    if (mc->finished)
        return;
    mc->finished = true;
    if (mc->denied_pub + mc->denied_sub + mc->bad_telemetry > 1)
        log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" refusals publish_denied=%llu "
                 "subscribe_denied=%llu telemetry_not_stored=%llu",
                 (unsigned long long)mc->c->id, conn_peer(mc->c),
                 log_q(mc->sess ? mc->sess->client_id : NULL),
                 (unsigned long long)mc->denied_pub, (unsigned long long)mc->denied_sub,
                 (unsigned long long)mc->bad_telemetry);
    if (mc->connected) {
        struct mqtt_will *w = mc->will;
        b->connected--;
        identity_count(b, mc, -1);
        /* [MQTT-3.1.2-8]; published as the client's own PUBLISH would be, or not at all */
        if (w && !mc->got_disconnect) {
            struct mqtt_session *s = mc->sess;
            if (broker_publish_check(mc, w->topic, w->len, w->retain, NULL) != PUBLISH_OK) {
                b->gw->metrics.mqtt_wills_dropped++;
                log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" will not published "
                         "topic=\"%s\" reason=\"refused as a publish would be\"",
                         (unsigned long long)mc->c->id, conn_peer(mc->c),
                         log_q(mc->sess->client_id), log_q(w->topic));
            } else if (w->delay_s && s && s->conn == mc && !s->clean) {
                /* MQTT 5 Will Delay Interval: held by the session, published when the delay
                 * passes or the session ends, dropped when the client is back first */
                if (broker_deliv(s)->will)
                    broker_will_free(s->dv->will);
                else
                    b->delayed_wills++;
                s->dv->will = w;
                s->dv->will_at_ms = gw_now_ms() + (int64_t)w->delay_s * 1000;
                mc->will = NULL;
            } else {
                will_publish(b, mc->c->device, w);
            }
        }
        if (mc->sess && mc->sess->conn == mc)
            broker_session_detach(b, mc->sess);
        if (mc->c->device[0])
            session_offline(b->gw, mc->c);
    }
}

void broker_conn_close(struct mqtt_conn *mc)
{
    struct mqtt_broker *b = mc->b;

    broker_conn_finish_now(mc);
    b->bytes_in_closed += mc->c->bytes_in;
    b->bytes_out_closed += mc->c->bytes_out;
    broker_will_free(mc->will);
    if (mc->v5) {
        struct mqtt5_conn *v5 = mc->v5;
        size_t it = 0;
        const char *key;
        if (v5->alias_in) {
            for (size_t i = 0; i <= v5->alias_max_in; i++)
                free(v5->alias_in[i]);
            free(v5->alias_in);
        }
        while (map_next(&v5->alias_out, &it, &key, NULL))
            free((char *)key);
        map_fini(&v5->alias_out);
        free(v5);
    }
    if (mc->username[0])
        free((char *)mc->username);
    buf_fini(&mc->out);
    if (!mc->in_conn)
        free(mc);
}

/* ---- retained messages per device namespace ---- */

struct retained_use {
    size_t n;                   /* retained topics under devices/<id>/ */
    size_t bytes;               /* their topics and payloads */
    char id[DEVICE_ID_MAX + 1]; /* map key */
};

/* Length of <id> when topic is devices/<id>/..., else 0. */
static size_t topic_device(const char *topic, size_t len, const char **id)
{
    const char *slash;
    if (len <= 8 || memcmp(topic, "devices/", 8) != 0)
        return 0;
    slash = memchr(topic + 8, '/', len - 8);
    if (!slash || slash == topic + 8 || (size_t)(slash - topic - 8) > DEVICE_ID_MAX)
        return 0;
    *id = topic + 8;
    return (size_t)(slash - topic - 8);
}

static struct retained_use *use_of(struct mqtt_broker *b, const char *topic, bool create)
{
    const char *id;
    size_t n = topic_device(topic, strlen(topic), &id);
    struct retained_use *u;
    if (n == 0)
        return NULL;
    u = map_get(&b->retained_use, id, n);
    if (u || !create)
        return u;
    u = xcalloc(1, sizeof *u);
    memcpy(u->id, id, n);
    map_put(&b->retained_use, u->id, n, u);
    return u;
}

static size_t retained_size(const struct retained *r)
{
    return r ? strlen(r->topic) + r->m->payload_len : 0;
}

bool broker_retained_room(struct mqtt_broker *b, const char *topic, size_t len,
                          const char **why)
{
    const struct config *cfg = b->gw->cfg;
    const struct retained_use *u;
    const struct retained *old;
    const char *id;
    size_t n, bytes;

    if (len == 0 || topic_device(topic, strlen(topic), &id) == 0)
        return true; /* a removal, or outside any device's namespace */
    u = use_of(b, topic, false);
    old = map_get(&b->retained.by_topic, topic, strlen(topic));
    n = (u ? u->n : 0) + (old ? 0 : 1);
    bytes = (u ? u->bytes : 0) - retained_size(old) + strlen(topic) + len;
    if (cfg->limits.max_retained_per_device && n > cfg->limits.max_retained_per_device) {
        *why = "limits.max_retained_per_device reached";
        return false;
    }
    if (cfg->limits.max_retained_bytes_per_device &&
        bytes > cfg->limits.max_retained_bytes_per_device) {
        *why = "limits.max_retained_bytes_per_device reached";
        return false;
    }
    return true;
}

/* retained_put that keeps b->nretained (topics outside $SYS) and the namespaces' shares
 * in step. */
static void retained_put_counted(struct mqtt_broker *b, struct msg *m)
{
    size_t tlen = strlen(m->topic);
    const struct retained *r = map_get(&b->retained.by_topic, m->topic, tlen);
    bool had = r != NULL;
    size_t old_size = retained_size(r);
    struct retained_use *u;

    retained_put(&b->retained, m);
    if (m->topic[0] == '$')
        return;
    r = map_get(&b->retained.by_topic, m->topic, tlen);
    if (r && !had)
        b->nretained++;
    else if (had && !r)
        b->nretained--;
    if ((u = use_of(b, m->topic, r != NULL)) == NULL)
        return;
    u->n = u->n + (r != NULL) - had;
    u->bytes = u->bytes + retained_size(r) - old_size;
    if (u->n == 0) {
        map_del(&b->retained_use, u->id, strlen(u->id));
        free(u);
    }
}

/* Stores the retained message m (with its MQTT 5 properties). */
static uint64_t put_retained(struct mqtt_broker *b, const struct msg *m)
{
    struct buf tmp;
    const uint8_t *p;
    size_t len;
    uint8_t qos = m->qos;
    uint64_t seq;
    buf_init(&tmp);
    if (m->payload_len && pack_props(m, &tmp, &p, &len))
        qos |= STORED_PROPS;
    else
        p = m->payload, len = m->payload_len;
    seq = b->store.put_retained(b->store.ctx, m->topic, p, len, qos);
    buf_fini(&tmp);
    return seq;
}

static void sink_mqtt(void *ctx, struct msg *m, struct ticket *t)
{
    struct mqtt_broker *b = ctx;
    struct route_ctx rc = {b, m};
    struct ticket *outer = b->ticket;
    struct msg *outer_m = b->shared_m;

    b->ticket = t;
    b->shared_m = m; /* its 3.1.1 QoS 0 PUBLISH is encoded once (send_publish) */
    b->shared.len = 0;
    if (m->retain && m->payload_len > 0 && m->topic[0] != '$' &&
        b->nretained >= b->gw->cfg->mqtt.max_retained &&
        !map_get(&b->retained.by_topic, m->topic, strlen(m->topic))) {
        /* delivered as usual, but not kept: memory stays bounded */
        if (b->retained_refused++ == 0)
            log_warn("mqtt retained message not kept topic=\"%s\" reason=\"mqtt.max_retained "
                     "reached\" limit=%zu (logged once)",
                     log_q(m->topic), b->gw->cfg->mqtt.max_retained);
    } else if (m->retain) {
        retained_put_counted(b, m);
        if (m->topic[0] != '$') /* $SYS is the server's own: rebuilt, never stored */
            ticket_add(t, put_retained(b, m));
    }
    mqtt_router_match(b->router, m->topic, strlen(m->topic), on_match, &rc);
    b->ticket = outer;
    b->shared_m = outer_m; /* a routing this one ran inside encodes its own again */
    b->shared.len = 0;
    buf_shrink(&b->shared, SPARE_MAX_BYTES);
}

struct retained_hits {
    struct ret_backlog *bl;
    uint8_t qos;                /* granted */
    uint32_t subid;
};

static void collect_retained(void *ctx, struct retained *r)
{
    struct retained_hits *h = ctx;
    struct ret_backlog *bl = h->bl;
    if (bl->n == bl->cap) {
        bl->cap = bl->cap ? bl->cap * 2 : 16;
        bl->e = xrealloc(bl->e, bl->cap * sizeof *bl->e);
    }
    bl->e[bl->n++] = (struct ret_entry){msg_ref(r->m), h->subid, r->qos < h->qos ? r->qos : h->qos};
}

static int entry_cmp(const void *a, const void *b)
{
    const struct ret_entry *x = a, *y = b;
    return x->m < y->m ? -1 : x->m > y->m;
}

/* Keeps each waiting message once, with the highest QoS asked for it (the order of
 * different topics' retained messages is free). */
static void backlog_dedup(struct ret_backlog *bl)
{
    size_t out = bl->head;
    qsort(bl->e + bl->head, bl->n - bl->head, sizeof *bl->e, entry_cmp);
    for (size_t i = bl->head; i < bl->n; i++) {
        if (out > bl->head && bl->e[out - 1].m == bl->e[i].m) {
            if (bl->e[i].qos > bl->e[out - 1].qos)
                bl->e[out - 1].qos = bl->e[i].qos;
            msg_unref(bl->e[i].m);
            continue;
        }
        bl->e[out++] = bl->e[i];
    }
    bl->n = out;
}

void broker_send_retained(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                          size_t len, uint8_t qos, uint32_t subid)
{
    struct retained_hits h = {broker_deliv(s)->backlog, qos, subid};
    bool had = h.bl != NULL;
    struct mqtt_str af;

    if (share_parse(filter, len, NULL, &af) != 0)
        return; /* none on a shared subscription (5.0 §4.8.2) */

    if (!h.bl) {
        h.bl = xcalloc(1, sizeof *h.bl);
        h.bl->ahead = s->dv->queue.len; /* queued before the SUBSCRIBE: they go first */
    }
    /* collected first (references held): sending must not run inside the walk, and goes
     * as the window and the socket allow */
    retained_match(&b->retained, filter, len, collect_retained, &h);
    if (h.bl->head == h.bl->n) {
        s->dv->backlog = h.bl;
        backlog_free(s);
        return;
    }
    /* memory: duplicates (a message several filters match) are dropped each time the
     * backlog doubled since the last check, so it holds at most twice the messages it names */
    if (had && h.bl->n - h.bl->head > 2 * h.bl->checked) {
        backlog_dedup(h.bl);
        h.bl->checked = h.bl->n - h.bl->head;
    } else if (!had) {
        h.bl->checked = h.bl->n; /* one filter matches each retained message once */
    }
    s->dv->backlog = h.bl;
    pump(b, s);
}

void mqtt_broker_publish(struct gw *gw, enum msg_kind kind, const char *device, const char *topic,
                         const void *payload, size_t len, uint8_t qos, bool retain)
{
    struct msg *m = msg_new(kind, device, topic, payload, len, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = qos;
    m->retain = retain;
    bus_publish(gw->bus, m, NULL);
    msg_unref(m);
}

/* ---- sessions ---- */

struct mqtt_session *broker_session_get(struct mqtt_broker *b, const char *client_id)
{
    return map_get(&b->sessions, client_id, strlen(client_id));
}

static void set_identity(struct mqtt_session *s, enum acl_role role, const char *username)
{
    if (s->username && s->username[0])
        free((char *)s->username);
    s->username = username && username[0] ? xstrdup(username) : "";
    s->role = (uint8_t)role;
}

struct mqtt_session *broker_session_new(struct mqtt_broker *b, const char *client_id, bool clean,
                                        enum acl_role role, const char *username)
{
    size_t n = strlen(client_id) + 1;
    /* the id starts in the struct's tail padding */
    struct mqtt_session *s = xcalloc(1, offsetof(struct mqtt_session, client_id) + n);
    memcpy(s->client_id, client_id, n);
    set_identity(s, role, username);
    s->clean = clean;
    s->expiry_s = b->gw->cfg->mqtt.session_expiry_s > 0 ? (uint32_t)b->gw->cfg->mqtt.session_expiry_s
                                                        : UINT32_MAX;
    s->seen_ms = gw_now_ms();
    map_put(&b->sessions, s->client_id, strlen(s->client_id), s);
    return s;
}

struct mqtt_deliv *broker_deliv(struct mqtt_session *s)
{
    if (!s->dv) {
        s->dv = xcalloc(1, sizeof *s->dv);
        s->dv->s = s;
    }
    return s->dv;
}

/* Frees the session's memory only (shutdown, or after it was unlinked). */
static void session_release(struct mqtt_session *s)
{
    struct mqtt_deliv *d = s->dv;
    if (d) {
        broker_will_free(d->will); /* shutdown: a will waiting for its delay is not kept */
        backlog_free(s);
        while (d->queue.head) {
            struct out_msg *o = list_entry(d->queue.head, struct out_msg, link);
            queue_remove(s, o);
            out_free(o);
        }
        for (size_t i = 0; i < d->ninflight; i++)
            out_free(d->inflight[i]);
        free(d->inflight);
        free(d->qos2_in);
        free(d);
    }
    if (s->username[0])
        free((char *)s->username);
    free(s);
}

uint64_t broker_session_free(struct mqtt_broker *b, struct mqtt_session *s)
{
    uint64_t seq = 0;
    if (s->dv && s->dv->will) /* the session ends before the will's delay: it goes now */
        will_fire(b, s);
    share_session_gone(b, s); /* its shared subscriptions' messages go to other members */
    map_del(&b->sessions, s->client_id, strlen(s->client_id));
    mqtt_router_remove_all(b->router, s);
    if (s->dv && s->dv->qos2_watched)
        list_remove(&b->qos2_watch, &s->dv->watch_link);
    if (!s->clean) { /* joins the ticket of what is being done (a device deleted), if any */
        seq = b->store.delete_session(b->store.ctx, s->client_id);
        ticket_add(b->ticket, seq);
    }
    session_release(s);
    return seq;
}

void broker_session_attach(struct mqtt_broker *b, struct mqtt_session *s, struct mqtt_conn *mc)
{
    size_t max, pubs = 0, keep = 0;

    s->conn = mc;
    s->seen_ms = gw_now_ms();
    if (!s->dv)
        return; /* nothing in flight or queued */
    s->dv->drop_logged = false;
    /* resend what was in flight, with DUP, in the original order [MQTT-4.4.0-1], but no more
     * PUBLISHes than the new connection's window (an MQTT 5 client's Receive Maximum may be
     * lower than the last one's [MQTT-3.3.4-7]): the rest go back to the head of the queue,
     * in order, and are resent as acks free the window, as after a restart (DUP, and the
     * packet id pick_id derives from the stored number) */
    max = window(b, s);
    for (size_t i = 0; i < s->dv->ninflight; i++)
        pubs += s->dv->inflight[i]->state != OUT_WAIT_PUBCOMP;
    for (size_t i = s->dv->ninflight; i-- > 0 && pubs > max;) {
        struct out_msg *o = s->dv->inflight[i];
        if (o->state == OUT_WAIT_PUBCOMP)
            continue;
        pubs--;
        o->state = OUT_QUEUED;
        list_push_front(&s->dv->queue, &o->link);
        s->dv->queued_bytes += msg_bytes(o->m);
        if (s->dv->backlog)
            s->dv->backlog->ahead++; /* older than a retained backlog */
        s->dv->inflight[i] = NULL;
    }
    for (size_t i = 0; i < s->dv->ninflight; i++) {
        struct out_msg *o = s->dv->inflight[i];
        if (!o)
            continue;
        s->dv->inflight[keep++] = o;
        if (o->state == OUT_WAIT_PUBCOMP)
            send_pubrel(mc, o->pkt_id);
        else
            send_publish(b, mc, o->m, o->qos, o->retain, true, o->pkt_id, o->subid, o->subids);
    }
    s->dv->ninflight = (uint16_t)keep;
    pump(b, s);
}

void broker_session_detach(struct mqtt_broker *b, struct mqtt_session *s)
{
    s->conn = NULL;
    s->seen_ms = gw_now_ms();
    if (s->clean)
        broker_session_free(b, s);
}

static const char *const role_names[] = {"device", "app", "anonymous"};

void broker_session_set_identity(struct mqtt_broker *b, struct mqtt_session *s,
                                 enum acl_role role, const char *username)
{
    if (s->role == role && strcmp(s->username, username) == 0)
        return;
    set_identity(s, role, username);
    broker_session_persist(b, s);
}

/* Stored as {"user":"dev-1","role":"device"}; a record without them (a session stored
 * with no identity) is anonymous. The subscriptions are rows of their own. When a session
 * was last used is not stored (a disconnect writes nothing): a loaded session counts as
 * used at start-up, so mqtt.session_expiry_s runs from its last use or the last start,
 * whichever is later. */
void broker_session_persist(struct mqtt_broker *b, struct mqtt_session *s)
{
    cJSON *root;
    char *js;
    if (s->clean)
        return;
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "user", s->username);
    cJSON_AddStringToObject(root, "role", role_names[s->role]);
    if (s->own_expiry) /* MQTT 5: the session's own Session Expiry Interval */
        cJSON_AddNumberToObject(root, "expiry", s->expiry_s);
    js = cJSON_PrintUnformatted(root);
    b->store.put_session(b->store.ctx, s->client_id, js);
    cJSON_free(js);
    cJSON_Delete(root);
}

/* Levels of a filter: a/b/# is 3. */
static uint32_t filter_levels(const char *filter, size_t len)
{
    uint32_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += filter[i] == '/';
    return n;
}

void broker_session_count_sub(struct mqtt_session *s, const char *filter, size_t len, int sign)
{
    uint32_t levels = filter_levels(filter, len);
    broker_deliv(s);
    if (sign > 0) {
        s->dv->nsubs++;
        s->dv->sub_bytes += (uint32_t)len;
        s->dv->sub_levels += levels;
    } else {
        s->dv->nsubs--;
        s->dv->sub_bytes -= (uint32_t)len;
        s->dv->sub_levels -= levels;
    }
}

const char *broker_subscribe_room(struct mqtt_broker *b, const struct mqtt_session *s,
                                  const char *filter, size_t len, size_t *limit)
{
    const struct config *cfg = b->gw->cfg;
    static const struct mqtt_deliv none;
    const struct mqtt_deliv *d = s->dv ? s->dv : &none;
    if (d->nsubs >= cfg->mqtt.max_subscriptions) {
        b->gw->metrics.mqtt_refused_subscriptions++;
        *limit = cfg->mqtt.max_subscriptions;
        return "mqtt.max_subscriptions";
    }
    if (cfg->mqtt.max_subscription_bytes &&
        d->sub_bytes + len > cfg->mqtt.max_subscription_bytes) {
        b->gw->metrics.mqtt_refused_sub_bytes++;
        *limit = cfg->mqtt.max_subscription_bytes;
        return "mqtt.max_subscription_bytes";
    }
    if (cfg->mqtt.max_subscription_levels &&
        d->sub_levels + filter_levels(filter, len) > cfg->mqtt.max_subscription_levels) {
        b->gw->metrics.mqtt_refused_sub_levels++;
        *limit = cfg->mqtt.max_subscription_levels;
        return "mqtt.max_subscription_levels";
    }
    if (share_group_count(b) >= SHARE_MAX_GROUPS) {
        struct mqtt_str name, inner;
        if (share_parse(filter, len, &name, &inner) == 1 &&
            !share_group_get(b->share, name.p, name.len, inner.p, inner.len)) {
            *limit = SHARE_MAX_GROUPS;
            return "shared subscription groups";
        }
    }
    return NULL;
}

/* Subscribes s in the router (a "$share/..." filter joins its group), keeping its counts.
 * Returns as share_subscribe. */
static int router_subscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                            size_t len, uint8_t qos, uint32_t opts)
{
    uint32_t old = 0;
    int had = mqtt_router_granted_opts(b->router, filter, len, s, &old);
    int r;
    broker_deliv(s); /* before the router can hand it a message */
    r = share_subscribe(b, s, filter, len, qos, opts);
    if (r < 0)
        return r;
    if (had < 0)
        broker_session_count_sub(s, filter, len, 1);
    else if (old & SUBOPT_ID_MASK)
        s->dv->nsubids--;
    if (opts & SUBOPT_ID_MASK)
        s->dv->nsubids++;
    return r;
}

void broker_session_subscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                              size_t len, uint8_t qos, uint32_t opts)
{
    char *f;
    int r = router_subscribe(b, s, filter, len, qos, opts);
    if (s->clean || r < 0)
        return;
    f = xstrndup(filter, len);
    b->store.put_session_sub(b->store.ctx, s->client_id, f, qos | (uint64_t)opts << 8);
    free(f);
}

bool broker_session_unsubscribe(struct mqtt_broker *b, struct mqtt_session *s,
                                const char *filter, size_t len)
{
    char *f;
    uint32_t opts = 0;
    if (mqtt_router_granted_opts(b->router, filter, len, s, &opts) < 0 ||
        share_unsubscribe(b, s, filter, len) != 1)
        return false;
    broker_session_count_sub(s, filter, len, -1);
    if (opts & SUBOPT_ID_MASK)
        s->dv->nsubids--;
    if (!s->clean) {
        f = xstrndup(filter, len);
        b->store.delete_session_sub(b->store.ctx, s->client_id, f);
        free(f);
    }
    return true;
}

/* ---- per-identity limits and ACL completeness ---- */

/* s speaks for the registry entry id (a device or an application it authenticated as). */
static bool session_of(const struct mqtt_session *s, const char *id)
{
    return s->role != ACL_ROLE_ANONYMOUS && strcmp(s->username, id) == 0;
}

int broker_session_make_room(struct mqtt_broker *b, enum acl_role role, const char *username)
{
    bool anon = role == ACL_ROLE_ANONYMOUS;
    const struct config *cfg = b->gw->cfg;
    size_t limit = anon ? cfg->mqtt.max_anonymous_sessions : cfg->limits.max_sessions_per_device;
    size_t it = 0, n = 0;
    struct mqtt_session *oldest = NULL;
    void *v;

    if (limit == 0)
        return 0;
    while (map_next(&b->sessions, &it, NULL, &v)) {
        struct mqtt_session *s = v;
        if (s->clean || (anon ? s->role != ACL_ROLE_ANONYMOUS : !session_of(s, username)))
            continue;
        n++;
        if (!s->conn && (!oldest || s->seen_ms < oldest->seen_ms))
            oldest = s;
    }
    if (n < limit)
        return 0;
    if (!oldest)
        return GW_ELIMIT;
    if (anon)
        log_info("mqtt client=\"%s\" session deleted reason=\"mqtt.max_anonymous_sessions "
                 "reached: a new session replaces the one unused longest\" limit=%zu",
                 log_q(oldest->client_id), limit);
    else
        log_info("mqtt client=\"%s\" device=%s session deleted "
                 "reason=\"limits.max_sessions_per_device reached: a new session replaces the "
                 "one unused longest\" limit=%zu",
                 log_q(oldest->client_id), username, limit);
    broker_session_free(b, oldest);
    return 0;
}

/* Filters of one session (mqtt_router_list may not run while the router changes). */
struct filters {
    char **f;
    size_t n, cap;
};

static void collect_filter(void *ctx, const char *filter, size_t len, uint8_t qos, uint32_t opts)
{
    struct filters *fs = ctx;
    (void)qos;
    (void)opts;
    if (fs->n == fs->cap) {
        fs->cap = fs->cap ? fs->cap * 2 : 8;
        fs->f = xrealloc(fs->f, fs->cap * sizeof *fs->f);
    }
    fs->f[fs->n++] = xstrndup(filter, len);
}

size_t broker_session_recheck(struct mqtt_broker *b, struct mqtt_session *s)
{
    struct filters fs = {0};
    size_t dropped = 0;

    mqtt_router_list(b->router, s, collect_filter, &fs);
    for (size_t i = 0; i < fs.n; i++) {
        size_t len = strlen(fs.f[i]);
        struct mqtt_str af; /* the ACL judges a shared subscription's own filter */
        share_parse(fs.f[i], len, NULL, &af);
        if (!acl_check(b->acl, s->role, s->username[0] ? s->username : NULL, s->client_id,
                       session_device(s)[0] ? session_device(s) : NULL, af.p, af.len,
                       ACL_SUBSCRIBE) ||
            (s->role == ACL_ROLE_ANONYMOUS && broker_anon_denied(b, af.p, af.len, ACL_SUBSCRIBE))) {
            log_info("mqtt client=\"%s\" subscription dropped filter=\"%s\" "
                     "reason=\"no longer allowed by the ACL\"",
                     log_q(s->client_id), log_q(fs.f[i]));
            broker_session_unsubscribe(b, s, fs.f[i], len);
            dropped++;
        }
        free(fs.f[i]);
    }
    free(fs.f);
    return dropped;
}

enum publish_verdict broker_publish_check(struct mqtt_conn *mc, const char *topic,
                                          size_t payload_len, bool retain, uint8_t *reason)
{
    uint8_t unused;
    struct mqtt_broker *b = mc->b;
    struct gw *gw = b->gw;
    const char *client = mc->sess ? mc->sess->client_id : "";
    const char *why;
    size_t len = strlen(topic);
    enum guard_rate rate;

    if (!reason)
        reason = &unused;
    if (mc->c->device[0] &&
        (rate = guard_rate(gw->guard, mc->c->device, gw_mono_ms())) != GUARD_RATE_OK) {
        if (log_refusal(conn_peer(mc->c), "rate limited"))
            log_warn("conn=%llu peer=%s proto=mqtt device=%s rate limited action=%s limit=%d",
                     (unsigned long long)mc->c->id, conn_peer(mc->c), mc->c->device,
                     rate == GUARD_RATE_DROP ? "drop" : "disconnect",
                     gw->cfg->limits.device_rate_msgs_per_s);
        *reason = MQTT_RC_MESSAGE_RATE_TOO_HIGH;
        return rate == GUARD_RATE_DISCONNECT ? PUBLISH_CLOSE : PUBLISH_DROP;
    }
    if ((mc->role == ACL_ROLE_ANONYMOUS && broker_anon_denied(b, topic, len, ACL_PUBLISH)) ||
        !acl_check(b->acl, mc->role, mc->username[0] ? mc->username : NULL, client,
                   mc->c->device[0] ? mc->c->device : NULL, topic, len, ACL_PUBLISH)) {
        b->acl_denied++;
        if (mc->denied_pub++ == 0 && log_refusal(conn_peer(mc->c), "publish denied"))
            log_info("conn=%llu peer=%s proto=mqtt client=\"%s\" publish denied topic=\"%s\"",
                     (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client), log_q(topic));
        *reason = MQTT_RC_NOT_AUTHORIZED;
        return PUBLISH_DROP;
    }
    if (retain && !broker_retained_room(b, topic, payload_len, &why)) {
        b->retained_refused++;
        if (mc->denied_pub++ == 0 && log_refusal(conn_peer(mc->c), "retained refused"))
            log_warn("conn=%llu peer=%s proto=mqtt client=\"%s\" retained publish dropped "
                     "topic=\"%s\" reason=\"%s\"",
                     (unsigned long long)mc->c->id, conn_peer(mc->c), log_q(client), log_q(topic),
                     why);
        *reason = MQTT_RC_QUOTA_EXCEEDED;
        return PUBLISH_DROP;
    }
    return PUBLISH_OK;
}

/* ---- incoming QoS 2 ids ---- */

/* Index of id in s->dv->qos2_in, or of where it would go. */
static size_t qos2_index(const struct mqtt_session *s, uint16_t id)
{
    size_t lo = 0, hi = s->dv ? s->dv->nqos2_in : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->dv->qos2_in[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct qos2_in *broker_qos2_find(struct mqtt_session *s, uint16_t id)
{
    size_t i = qos2_index(s, id);
    return s->dv && i < s->dv->nqos2_in && s->dv->qos2_in[i].id == id ? &s->dv->qos2_in[i] : NULL;
}

void broker_qos2_add(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id,
                     const struct ticket *t)
{
    size_t i = qos2_index(s, id);
    broker_deliv(s);
    if (i < s->dv->nqos2_in && s->dv->qos2_in[i].id == id) {
        s->dv->qos2_in[i] = (struct qos2_in){id, false, *t};
    } else {
        if (s->dv->nqos2_in == s->dv->qos2_cap) {
            s->dv->qos2_cap = s->dv->qos2_cap ? s->dv->qos2_cap * 2 : 8;
            s->dv->qos2_in = xrealloc(s->dv->qos2_in, s->dv->qos2_cap * sizeof *s->dv->qos2_in);
        }
        memmove(&s->dv->qos2_in[i + 1], &s->dv->qos2_in[i],
                (s->dv->nqos2_in - i) * sizeof *s->dv->qos2_in);
        s->dv->qos2_in[i] = (struct qos2_in){id, false, *t};
        s->dv->nqos2_in++;
    }
    if (ticket_empty(t) || t->last <= b->gw->durable_seq)
        return;
    /* its writes are not reported yet: a failure marks it, whatever happens to the
     * connection meanwhile (on_settled) */
    if (t->last > s->dv->qos2_last)
        s->dv->qos2_last = t->last;
    if (!s->dv->qos2_watched) {
        s->dv->qos2_watched = true;
        list_push_back(&b->qos2_watch, &s->dv->watch_link);
    }
}

void broker_qos2_remove(struct mqtt_session *s, uint16_t id)
{
    size_t i = qos2_index(s, id);
    if (s->dv && i < s->dv->nqos2_in && s->dv->qos2_in[i].id == id) {
        memmove(&s->dv->qos2_in[i], &s->dv->qos2_in[i + 1],
                (s->dv->nqos2_in - i - 1) * sizeof *s->dv->qos2_in);
        s->dv->nqos2_in--;
    }
}

/* Storage reported the writes (from, upto]: the QoS 2 ids whose first copy had a failed
 * write among them are marked, and sessions whose ids are all reported are let go. */
static void on_settled(void *ctx, uint64_t from, uint64_t upto, int ok)
{
    struct mqtt_broker *b = ctx;
    struct list_link *l = b->qos2_watch.head;
    while (l) {
        struct mqtt_session *s = list_entry(l, struct mqtt_deliv, watch_link)->s;
        l = l->next;
        if (!ok) {
            for (size_t i = 0; i < s->dv->nqos2_in; i++) {
                struct qos2_in *q = &s->dv->qos2_in[i];
                if (!ticket_empty(&q->t) && q->t.first <= upto && q->t.last > from)
                    q->failed = true;
            }
        }
        if (s->dv->qos2_last <= upto) {
            list_remove(&b->qos2_watch, &s->dv->watch_link);
            s->dv->qos2_watched = false;
        }
    }
}

bool broker_anon_denied(const struct mqtt_broker *b, const char *topic, size_t len,
                        enum acl_action action)
{
    char id[DEVICE_ID_MAX + 1];
    const char *p, *rest;
    size_t n = topic_device(topic, len, &p), rlen;
    const struct device *dev;

    if (n == 0 || memchr(p, '+', n) || memchr(p, '#', n))
        return false; /* a wildcard id: deliveries are checked one by one (deliver) */
    memcpy(id, p, n);
    id[n] = '\0';
    dev = devices_find(b->gw->devices, id);
    if (!dev || !dev->token_hash[0])
        return false;
    if (action == ACL_PUBLISH)
        return true;
    rest = p + n + 1; /* the first level after the id: commands, or a wildcard over it */
    rlen = len - (size_t)(rest - topic);
    for (size_t i = 0; i < rlen; i++)
        if (rest[i] == '/')
            rlen = i;
    return (rlen == 8 && memcmp(rest, "commands", 8) == 0) ||
           (rlen == 1 && (rest[0] == '+' || rest[0] == '#'));
}

/* Whether s (offline, persistent) outlived its expiry: mqtt.session_expiry_s, or its MQTT 5
 * client's Session Expiry Interval (capped by it). */
bool broker_session_expired(const struct mqtt_session *s, int64_t now)
{
    if (s->conn || s->clean || s->expiry_s == UINT32_MAX)
        return false;
    return now - s->seen_ms >= (int64_t)s->expiry_s * 1000;
}

/* Persistent sessions offline past their expiry are deleted; wills whose delay passed are
 * published. */
static void expire_sessions(struct mqtt_broker *b)
{
    int64_t now = gw_now_ms();
    struct mqtt_session **old = NULL;
    size_t it = 0, n = 0, cap = 0;
    void *v;

    if (b->sessions.len <= b->connected && !b->delayed_wills)
        return; /* every session is connected: none can expire */
    while (map_next(&b->sessions, &it, NULL, &v)) {
        struct mqtt_session *s = v;
        bool gone = broker_session_expired(s, now);
        if (!gone && !(s->dv && s->dv->will && now >= s->dv->will_at_ms))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            old = xrealloc(old, cap * sizeof *old);
        }
        old[n++] = s;
    }
    for (size_t i = 0; i < n; i++) {
        struct mqtt_session *s = old[i];
        if (s->dv && s->dv->will && now >= s->dv->will_at_ms)
            will_fire(b, s);
        if (!broker_session_expired(s, now))
            continue;
        log_info("mqtt client=\"%s\" session expired unused_s=%lld limit=%lu",
                 log_q(s->client_id), (long long)((now - s->seen_ms) / 1000),
                 (unsigned long)s->expiry_s);
        broker_session_free(b, s);
    }
    free(old);
}

static void on_expiry_timer(uv_timer_t *t)
{
    expire_sessions(t->data);
}

/* Start-up: sessions of devices no longer in the registry are deleted and the others'
 * loaded subscriptions re-checked against the ACL. */
static void check_loaded_sessions(struct mqtt_broker *b)
{
    struct mqtt_session **all = xcalloc(b->sessions.len + 1, sizeof *all);
    size_t it = 0, n = 0;
    void *v;

    while (map_next(&b->sessions, &it, NULL, &v))
        all[n++] = v;
    for (size_t i = 0; i < n; i++) {
        struct mqtt_session *s = all[i];
        if (s->role != ACL_ROLE_ANONYMOUS && !devices_find(b->gw->devices, s->username)) {
            log_info("mqtt client=\"%s\" session deleted reason=\"its device %s no longer "
                     "exists\"",
                     log_q(s->client_id), log_q(s->username));
            broker_session_free(b, s);
            continue;
        }
        broker_session_recheck(b, s);
    }
    free(all);
}

static struct out_msg *take_inflight(struct mqtt_session *s, uint16_t id, uint8_t state)
{
    if (!s->dv) /* nothing was ever sent to it */
        return NULL;
    for (size_t i = 0; i < s->dv->ninflight; i++) {
        struct out_msg *o = s->dv->inflight[i];
        if (o->pkt_id != id || o->state != state)
            continue;
        if (state == OUT_WAIT_PUBREC)
            return o; /* stays in flight, waiting for PUBCOMP */
        memmove(&s->dv->inflight[i], &s->dv->inflight[i + 1],
                (s->dv->ninflight - i - 1) * sizeof o);
        s->dv->ninflight--;
        return o;
    }
    return NULL;
}

static void completed(struct mqtt_broker *b, struct mqtt_session *s, struct out_msg *o)
{
    if (b->on_delivered && session_device(s)[0])
        b->on_delivered(b->hook_ctx, session_device(s), o->m);
    unpersist_msg(b, s, o);
    out_free(o);
    pump(b, s);
}

void broker_on_puback(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id)
{
    struct out_msg *o = take_inflight(s, id, OUT_WAIT_PUBACK);
    if (o)
        completed(b, s, o);
}

void broker_on_pubrec(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id, uint8_t rc)
{
    struct out_msg *o = take_inflight(s, id, OUT_WAIT_PUBREC);
    if (o && rc >= 0x80) {
        /* MQTT 5: the client refused it, which ends the flow: no PUBREL (5.0 §4.3.3) */
        o->state = OUT_WAIT_PUBCOMP; /* take it out of the window as a PUBCOMP would */
        o = take_inflight(s, id, OUT_WAIT_PUBCOMP);
        completed(b, s, o);
        return;
    }
    if (rc >= 0x80)
        return;
    if (o) {
        o->state = OUT_WAIT_PUBCOMP;
        if (o->store_id) /* after a restart only PUBREL may be resent, never the PUBLISH */
            store_msg(b, s, o);
    }
    if (s->conn) /* PUBREL even for an unknown id, so the client can finish */
        send_pubrel(s->conn, id);
}

void broker_on_pubcomp(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id)
{
    struct out_msg *o = take_inflight(s, id, OUT_WAIT_PUBCOMP);
    if (o)
        completed(b, s, o);
}

/* ---- presence and $SYS ---- */

void mqtt_broker_presence(struct mqtt_broker *b, const char *device, bool online)
{
    char topic[DEVICE_ID_MAX + 32];
    const char *v = online ? "online" : "offline";
    if (!b)
        return;
    snprintf(topic, sizeof topic, "devices/%s/status", device);
    mqtt_broker_publish(b->gw, MSG_PLAIN, device, topic, v, strlen(v), 1, true);
}

void mqtt_broker_forget_device(struct mqtt_broker *b, const char *device, struct ticket *t)
{
    char topic[DEVICE_ID_MAX + 32];
    struct mqtt_session **mine;
    struct ticket *outer;
    struct msg *m;
    size_t it = 0, n = 0;
    void *v;

    if (!b)
        return;
    /* its persistent sessions go with it (its connections are closed already) */
    mine = xcalloc(b->sessions.len + 1, sizeof *mine);
    while (map_next(&b->sessions, &it, NULL, &v))
        if (!((struct mqtt_session *)v)->conn && session_of(v, device))
            mine[n++] = v;
    outer = b->ticket;
    b->ticket = t;
    for (size_t i = 0; i < n; i++)
        broker_session_free(b, mine[i]);
    b->ticket = outer;
    free(mine);
    if (n)
        log_info("device=%s deleted with its mqtt sessions=%zu", device, n);
    snprintf(topic, sizeof topic, "devices/%s/status", device);
    if (!map_get(&b->retained.by_topic, topic, strlen(topic)))
        return; /* never connected: nothing to clear (the store holds what memory does) */
    m = msg_new(MSG_PLAIN, device, topic, "", 0, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = 1;
    m->retain = 1;
    bus_publish(b->gw->bus, m, t);
    msg_unref(m);
}

static void sys_pub(struct gw *gw, const char *topic, const char *fmt, unsigned long long v)
{
    char val[64];
    int n = snprintf(val, sizeof val, fmt, v);
    mqtt_broker_publish(gw, MSG_PLAIN, "", topic, val, (size_t)n, 0, true);
}

/* Adds the bytes the MQTT connections of the walk it received and sent so far. */
static void add_conn_bytes(struct conn_iter *it, unsigned long long *in, unsigned long long *out)
{
    const struct conn *c;
    while ((c = conn_iter_next(it)) != NULL) {
        if (c->proto != &mqtt_proto)
            continue;
        *in += c->bytes_in;
        *out += c->bytes_out;
    }
}

/* The Mosquitto $SYS/broker/... tree (the parts that apply), retained, every 10 s. */
static void on_sys_timer(uv_timer_t *t)
{
    struct mqtt_broker *b = t->data;
    struct gw *gw = b->gw;
    const struct metrics *m = &gw->metrics;
    unsigned long long total = b->sessions.len;
    unsigned long long bytes_in = b->bytes_in_closed, bytes_out = b->bytes_out_closed;
    struct conn_iter it;
    mqtt_broker_publish(gw, MSG_PLAIN, "", "$SYS/broker/version", "gale " GALE_VERSION,
                        strlen("gale " GALE_VERSION), 0, true);
    sys_pub(gw, "$SYS/broker/uptime", "%llu seconds",
            (unsigned long long)((gw_now_ms() - gw->started_ms) / 1000));
    sys_pub(gw, "$SYS/broker/clients/connected", "%llu", b->connected);
    sys_pub(gw, "$SYS/broker/clients/active", "%llu", b->connected);
    sys_pub(gw, "$SYS/broker/clients/disconnected", "%llu",
            total > b->connected ? total - b->connected : 0);
    sys_pub(gw, "$SYS/broker/clients/total", "%llu", total);
    sys_pub(gw, "$SYS/broker/clients/maximum", "%llu", b->max_connected);
    sys_pub(gw, "$SYS/broker/messages/received", "%llu", b->packets_in);
    sys_pub(gw, "$SYS/broker/messages/sent", "%llu", b->packets_out);
    sys_pub(gw, "$SYS/broker/publish/messages/received", "%llu", b->publish_in);
    sys_pub(gw, "$SYS/broker/publish/messages/sent", "%llu", b->publish_out);
    sys_pub(gw, "$SYS/broker/publish/messages/dropped", "%llu", m->mqtt_dropped);
    /* the live ones and those closed whose close callback (which adds their bytes to the
     * closed ones') is still to run */
    conn_iter_begin(&it, gw->conns);
    add_conn_bytes(&it, &bytes_in, &bytes_out);
    conn_iter_begin_closing(&it, gw->conns);
    add_conn_bytes(&it, &bytes_in, &bytes_out);
    sys_pub(gw, "$SYS/broker/bytes/received", "%llu", bytes_in);
    sys_pub(gw, "$SYS/broker/bytes/sent", "%llu", bytes_out);
    sys_pub(gw, "$SYS/broker/subscriptions/count", "%llu",
            mqtt_router_count(b->router) - share_group_count(b)); /* a group is none */
    sys_pub(gw, "$SYS/broker/shared/messages/sent", "%llu", m->mqtt_shared_sent);
    sys_pub(gw, "$SYS/broker/shared/messages/dropped", "%llu", m->mqtt_shared_dropped);
    sys_pub(gw, "$SYS/broker/retained messages/count", "%llu",
            (unsigned long long)retained_count(&b->retained));
}

/* ---- start-up ---- */

static void on_retained_loaded(void *ctx, const char *topic, const void *payload, size_t len,
                               uint8_t qos)
{
    struct mqtt_broker *b = ctx;
    struct msg *m = unpack_msg(topic, payload, len, (qos & STORED_PROPS) != 0);
    m->qos = qos & 3;
    m->retain = 1;
    retained_put_counted(b, m);
    msg_unref(m);
}

static void on_session_loaded(void *ctx, const char *client_id, const char *record)
{
    struct mqtt_broker *b = ctx;
    cJSON *root = cJSON_Parse(record);
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(root, "role");
    const cJSON *expiry = cJSON_GetObjectItemCaseSensitive(root, "expiry");
    enum acl_role r = ACL_ROLE_ANONYMOUS;
    struct mqtt_session *s;

    if (cJSON_IsString(role) && strcmp(role->valuestring, "device") == 0)
        r = ACL_ROLE_DEVICE;
    else if (cJSON_IsString(role) && strcmp(role->valuestring, "app") == 0)
        r = ACL_ROLE_APP;
    s = broker_session_new(b, client_id, false, r, cJSON_IsString(user) ? user->valuestring : "");
    if (cJSON_IsNumber(expiry) && expiry->valuedouble >= 1 && expiry->valuedouble <= UINT32_MAX) {
        s->own_expiry = true; /* capped again: the cap may be lower now */
        s->expiry_s = broker_expiry_cap(b, (uint32_t)expiry->valuedouble);
    }
    cJSON_Delete(root);
}

static void on_session_sub_loaded(void *ctx, const char *client_id, const char *filter,
                                  uint64_t qos)
{
    struct mqtt_broker *b = ctx;
    struct mqtt_session *s = broker_session_get(b, client_id);
    if (s)
        router_subscribe(b, s, filter, strlen(filter), (uint8_t)(qos & 3),
                         (uint32_t)(qos >> 8) & ~(SHARE_OPT_GROUP | SHARE_OPT_MEMBER));
}

static void on_session_msg_loaded(void *ctx, const char *client_id, uint64_t msg_id,
                                  const char *topic, const void *payload, size_t len, uint8_t qos,
                                  uint8_t retain)
{
    struct mqtt_broker *b = ctx;
    struct mqtt_session *s = broker_session_get(b, client_id);
    struct out_msg *o;
    if (!s)
        return;
    o = xcalloc(1, sizeof *o);
    o->m = unpack_msg(topic, payload, len, (retain & STORED_PROPS) != 0);
    o->m->qos = qos;
    o->qos = qos;
    o->retain = (retain & STORED_RETAIN) != 0;
    o->sent = (retain & STORED_SENT) != 0;
    if (retain & STORED_RELEASED)
        o->state = OUT_WAIT_PUBCOMP;
    o->store_id = msg_id;
    if (msg_id > broker_deliv(s)->next_store_id)
        s->dv->next_store_id = msg_id;
    queue_push(s, o);
}

struct mqtt_broker *mqtt_broker_new(struct gw *gw, const struct mqtt_store *store)
{
    struct mqtt_broker *b = xcalloc(1, sizeof *b);
    char err[256];

    b->gw = gw;
    b->store = *store;
    b->router = mqtt_router_new();
    buf_init(&b->props);
    map_init_keyed(&b->sessions, offsetof(struct mqtt_session, client_id)); /* 8-byte slots */
    map_init(&b->retained_use);
    map_init(&b->identities);
    retained_init(&b->retained);
    b->acl = acl_new(gw->cfg->mqtt.acl_json, err, sizeof err);
    if (!b->acl) {
        log_error("config: %s", err);
        mqtt_router_free(b->router);
        free(b);
        return NULL;
    }
    if (b->store.load_retained(b->store.ctx, on_retained_loaded, b) != 0 ||
        b->store.load_sessions(b->store.ctx, on_session_loaded, on_session_sub_loaded,
                               on_session_msg_loaded, b) != 0) {
        mqtt_broker_free(b);
        return NULL;
    }
    check_loaded_sessions(b);
    bus_add_sink(gw->bus, "mqtt", sink_mqtt, b);
    gw->on_settled = on_settled;
    gw->settled_ctx = b;
    /* every second: MQTT 5 clients choose expiries and will delays in seconds */
    uv_timer_init(gw->loop, &b->expiry_timer);
    b->expiry_timer.data = b;
    uv_timer_start(&b->expiry_timer, on_expiry_timer, 1000, 1000);
    uv_unref((uv_handle_t *)&b->expiry_timer);
    uv_timer_init(gw->loop, &b->sys_timer);
    b->sys_timer.data = b;
    uv_timer_start(&b->sys_timer, on_sys_timer, 100, SYS_INTERVAL_MS);
    uv_unref((uv_handle_t *)&b->sys_timer);
    log_info("mqtt retained=%zu sessions=%zu", retained_count(&b->retained), b->sessions.len);
    return b;
}

void mqtt_broker_free(struct mqtt_broker *b)
{
    size_t it = 0;
    void *v;
    if (!b)
        return;
    if (b->sys_timer.data && !uv_is_closing((uv_handle_t *)&b->sys_timer))
        uv_close((uv_handle_t *)&b->sys_timer, NULL);
    if (b->expiry_timer.data && !uv_is_closing((uv_handle_t *)&b->expiry_timer))
        uv_close((uv_handle_t *)&b->expiry_timer, NULL);
    while (map_next(&b->sessions, &it, NULL, &v))
        session_release(v);
    map_fini(&b->sessions);
    it = 0;
    while (map_next(&b->retained_use, &it, NULL, &v))
        free(v);
    map_fini(&b->retained_use);
    it = 0;
    while (map_next(&b->identities, &it, NULL, &v))
        free(v);
    map_fini(&b->identities);
    if (b->gw->settled_ctx == b)
        b->gw->on_settled = NULL;
    share_free(b);
    retained_fini(&b->retained);
    mqtt_router_free(b->router);
    acl_free(b->acl);
    buf_fini(&b->props);
    buf_fini(&b->spare);
    buf_fini(&b->shared);
    free(b->auth_method);
    free(b);
}

void mqtt_broker_set_auth(struct mqtt_broker *b, const char *method, mqtt_auth_fn fn, void *ctx)
{
    if (!b)
        return;
    free(b->auth_method);
    b->auth_method = method ? xstrdup(method) : NULL;
    b->auth_fn = method ? fn : NULL;
    b->auth_ctx = ctx;
}

void mqtt_broker_set_command_hooks(struct mqtt_broker *b, mqtt_delivered_fn delivered,
                                   void *ctx)
{
    if (!b)
        return;
    b->on_delivered = delivered;
    b->hook_ctx = ctx;
}

/* ---- shared subscriptions (share.c's side) ---- */

enum share_fit broker_share_fit(struct mqtt_broker *b, struct mqtt_session *s,
                                const struct msg *m, uint8_t qos)
{
    const struct mqtt_conn *mc = s->conn && !s->conn->c->closing ? s->conn : NULL;
    if ((!mc && (s->clean || qos == 0)) || !may_receive(b, s, m->topic))
        return SHARE_FIT_NO; /* gone, QoS 0 for one offline, or a topic the ACL denies it */
    if (!mc) /* an offline persistent member takes its turn, queued */
        return queue_fits(b, s, msg_bytes(m)) ? SHARE_FIT_NOW : SHARE_FIT_NO;
    if (!s->dv->queue.head && !backlog_waits(s) && !over_budget(b, s) &&
        (qos == 0 || s->dv->ninflight < window(b, s)))
        return SHARE_FIT_NOW;
    return qos == 0 || queue_fits(b, s, msg_bytes(m)) ? SHARE_FIT_LATER : SHARE_FIT_NO;
}

void broker_share_deliver(struct mqtt_broker *b, struct mqtt_session *s, struct msg *m,
                          uint8_t qos, uint16_t group, uint32_t opts)
{
    /* the member's own options: Retain As Published, its Subscription Identifier */
    deliver(b, s, m, qos, (opts & SUBOPT_RAP) && m->retain, opts & SUBOPT_ID_MASK, NULL, group);
}

size_t broker_share_take(struct mqtt_broker *b, struct mqtt_session *s, uint16_t group,
                         broker_share_give_fn give, void *ctx)
{
    size_t moved = 0, i = 0;
    struct list_link *l = s->dv->queue.head;

    while (l) {
        struct out_msg *o = list_entry(l, struct out_msg, link);
        l = l->next;
        if (o->group != group)
            continue;
        o->group = 0;
        if (o->qos == 0 || !give(ctx, o->m, o->qos))
            continue;
        queue_remove(s, o);
        unpersist_msg(b, s, o);
        out_free(o);
        moved++;
    }
    /* in flight: its connection would still acknowledge them; offline, they move too */
    while (i < s->dv->ninflight) {
        struct out_msg *o = s->dv->inflight[i];
        if (o->group != group) {
            i++;
            continue;
        }
        o->group = 0;
        if (s->conn || o->state == OUT_WAIT_PUBCOMP || !give(ctx, o->m, o->qos)) {
            i++;
            continue;
        }
        memmove(&s->dv->inflight[i], &s->dv->inflight[i + 1],
                (s->dv->ninflight - i - 1) * sizeof o);
        s->dv->ninflight--;
        unpersist_msg(b, s, o);
        out_free(o);
        moved++;
    }
    return moved;
}
