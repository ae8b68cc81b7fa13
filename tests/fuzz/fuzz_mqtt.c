/* tests/fuzz/fuzz_mqtt.c: libFuzzer target for the MQTT codec and router
 * (protocols/mqtt/codec.c, codec5.c, props.c, topic.c, router.c).
 *
 * Input: the first byte is a control byte: bits 0-4 pick the read size (0 = the whole
 * stream in one read), bit 5 MQTT 5.0 (decode with mqtt_decode_v(): bit 7 then means
 * version 5, else before CONNECT, where a level 5 CONNECT decodes whole), bit 6 a small
 * packet limit (64 bytes, else 64 KB), bit 7 the connection's protocol version (without
 * bit 5: 4, else 0 = before CONNECT). The rest is the stream.
 * It is fed read by read into an exact-size buffer (so ASan sees any read past the end)
 * and decoded until NEED_MORE, consuming once per read, as a connection does. The same
 * stream decoded whole is the oracle: every packet (type, size) and the error must
 * match it however the reads split, else abort.
 * Each decoded packet is re-encoded and decoded again and must come back the same; a 5.0
 * packet's properties are rebuilt one by one with the property builder (the same bytes),
 * re-encoded with the 5.0 encoders (which check them again), and must decode back to the
 * same properties. A refusal's 5.0 reason code must match the oracle's too.
 * SUBSCRIBE / UNSUBSCRIBE also drive a router (subscriber = packet id % 4 + 1) next to
 * a plain list of (filter, subscriber, qos); each PUBLISH topic is matched through both,
 * and the router must deliver exactly what mqtt_topic_matches() over the list says. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "protocols/mqtt/mqtt.h"

#define MAX_EVENTS 4096
#define MAX_REF 64
#define NSUBS 4

struct event {
    int rc;           /* enum codec_rc: FRAME or ERROR */
    uint8_t type;
    uint8_t reason;   /* 5.0 reason code of an ERROR */
    size_t used;
    const char *why;
};

/* How this input is decoded. */
struct mode {
    struct mqtt_limits lim;
    int v5;           /* decode with mqtt_decode_v() */
    uint8_t version;  /* its version argument: MQTT_V5 or MQTT_V_UNKNOWN */
};

struct ref {          /* the reference subscription list */
    char *filter;
    size_t len;
    int sub;          /* 1..NSUBS */
    int qos;
};

struct state {
    int v5;             /* the input decodes 5.0 */
    struct mqtt_router *router;
    struct ref refs[MAX_REF];
    size_t nrefs;
    int got[NSUBS + 1]; /* QoS the router delivered per subscriber, -1 = none */
};

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static int view_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static void decode_one(const uint8_t *p, size_t len, struct mqtt_packet *pkt)
{
    struct mqtt_limits lim = { 0, MQTT_V311 };
    const char *why = NULL;
    size_t used = 0;

    CHECK(mqtt_decode(&lim, p, len, pkt, &used, &why) == CODEC_FRAME && used == len);
}

static void on_match(void *ctx, void *sub, uint8_t qos, uint32_t opts)
{
    struct state *st = ctx;
    uintptr_t s = (uintptr_t)sub;

    (void)opts;
    CHECK(s >= 1 && s <= NSUBS && st->got[s] < 0 && qos <= 2);
    st->got[s] = qos;
}

/* The router delivers to exactly the subscribers the reference list says match topic. */
static void route_publish(struct state *st, const struct mqtt_str *topic)
{
    int want[NSUBS + 1], s;
    size_t i;

    for (s = 0; s <= NSUBS; s++)
        want[s] = st->got[s] = -1;
    for (i = 0; i < st->nrefs; i++)
        if (mqtt_topic_matches(st->refs[i].filter, st->refs[i].len, topic->p, topic->len)
            && st->refs[i].qos > want[st->refs[i].sub])
            want[st->refs[i].sub] = st->refs[i].qos;
    mqtt_router_match(st->router, topic->p, topic->len, on_match, st);
    for (s = 1; s <= NSUBS; s++)
        CHECK(st->got[s] == want[s]);
}

static void check_publish(struct state *st, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *p = &pkt->publish;
    struct mqtt_packet again;
    struct buf b;

    CHECK(mqtt_topic_valid(p->topic.p, p->topic.len));
    CHECK(p->qos <= 2 && (p->qos > 0) == (pkt->id != 0));
    buf_init(&b);
    CHECK(mqtt_encode_publish(&b, p->topic.p, p->topic.len, p->payload, p->payload_len, p->qos,
                              p->retain, p->dup, pkt->id) == 0);
    decode_one(b.data, b.len, &again);
    CHECK(again.type == MQTT_PUBLISH && again.id == pkt->id && again.publish.qos == p->qos
          && again.publish.retain == p->retain && again.publish.dup == p->dup);
    CHECK(view_eq(again.publish.topic.p, again.publish.topic.len, p->topic.p, p->topic.len));
    CHECK(view_eq(again.publish.payload, again.publish.payload_len, p->payload,
                  p->payload_len));
    buf_fini(&b);
    route_publish(st, &p->topic);
}

static void ref_subscribe(struct state *st, const struct mqtt_str *f, int sub, int qos)
{
    size_t i;
    int rc;

    for (i = 0; i < st->nrefs; i++) {
        if (st->refs[i].sub == sub && view_eq(st->refs[i].filter, st->refs[i].len, f->p, f->len)) {
            st->refs[i].qos = qos;
            CHECK(mqtt_router_subscribe(st->router, f->p, f->len, (void *)(uintptr_t)sub,
                                        (uint8_t)qos) == 0);
            return;
        }
    }
    if (st->nrefs == MAX_REF)
        return;
    rc = mqtt_router_subscribe(st->router, f->p, f->len, (void *)(uintptr_t)sub, (uint8_t)qos);
    CHECK(rc == 1);
    st->refs[st->nrefs].filter = malloc(f->len);
    memcpy(st->refs[st->nrefs].filter, f->p, f->len);
    st->refs[st->nrefs].len = f->len;
    st->refs[st->nrefs].sub = sub;
    st->refs[st->nrefs].qos = qos;
    st->nrefs++;
}

static void ref_unsubscribe(struct state *st, const struct mqtt_str *f, int sub)
{
    size_t i;
    int found = 0;

    for (i = 0; i < st->nrefs; i++) {
        if (st->refs[i].sub == sub && view_eq(st->refs[i].filter, st->refs[i].len, f->p, f->len)) {
            free(st->refs[i].filter);
            st->refs[i] = st->refs[--st->nrefs];
            found = 1;
            break;
        }
    }
    CHECK(mqtt_router_unsubscribe(st->router, f->p, f->len, (void *)(uintptr_t)sub) == found);
}

static void check_filters(struct state *st, const struct mqtt_packet *pkt)
{
    struct mqtt_sub_req reqs[64];
    struct mqtt_str strs[64];
    struct mqtt_packet again;
    struct mqtt_str f, g;
    size_t off = 0, off2 = 0, n = 0;
    uint8_t opt, opt2;
    struct buf b;
    int sub = pkt->id % NSUBS + 1;

    while (mqtt_filter_next(pkt, &off, &f, &opt)) {
        CHECK(mqtt_filter_valid(f.p, f.len));
        CHECK(pkt->type == MQTT_SUBSCRIBE ? opt <= 2 : opt == 0);
        if (n < 64) {
            reqs[n].filter = strs[n] = f;
            reqs[n].qos = opt;
        }
        n++;
        if (pkt->type == MQTT_SUBSCRIBE)
            ref_subscribe(st, &f, sub, opt);
        else
            ref_unsubscribe(st, &f, sub);
    }
    CHECK(n == pkt->subscribe.count && n > 0);
    if (n > 64)
        return;
    buf_init(&b);
    if (pkt->type == MQTT_SUBSCRIBE)
        CHECK(mqtt_encode_subscribe(&b, pkt->id, reqs, n) == 0);
    else
        CHECK(mqtt_encode_unsubscribe(&b, pkt->id, strs, n) == 0);
    decode_one(b.data, b.len, &again);
    CHECK(again.type == pkt->type && again.id == pkt->id && again.subscribe.count == n);
    off = 0;
    while (mqtt_filter_next(pkt, &off, &f, &opt)) {
        CHECK(mqtt_filter_next(&again, &off2, &g, &opt2));
        CHECK(view_eq(f.p, f.len, g.p, g.len) && opt == opt2);
    }
    buf_fini(&b);
}

static void check_connect(const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *c = &pkt->connect;
    const struct mqtt_connect *d;
    struct mqtt_packet again;
    struct buf b;

    if (!((c->level == 4 && c->proto_name.len == 4) || (c->level == 3 && c->proto_name.len == 6)))
        return; /* unsupported level: only name and level are decoded */
    buf_init(&b);
    CHECK(mqtt_encode_connect(&b, c) == 0);
    decode_one(b.data, b.len, &again);
    d = &again.connect;
    CHECK(again.type == MQTT_CONNECT && d->level == c->level && d->flags == c->flags
          && d->keepalive_s == c->keepalive_s);
    CHECK(view_eq(d->proto_name.p, d->proto_name.len, c->proto_name.p, c->proto_name.len));
    CHECK(view_eq(d->client_id.p, d->client_id.len, c->client_id.p, c->client_id.len));
    CHECK(view_eq(d->will_topic.p, d->will_topic.len, c->will_topic.p, c->will_topic.len));
    CHECK(view_eq(d->will_payload.p, d->will_payload.len, c->will_payload.p,
                  c->will_payload.len));
    CHECK(view_eq(d->username.p, d->username.len, c->username.p, c->username.len));
    CHECK(view_eq(d->password.p, d->password.len, c->password.p, c->password.len));
    buf_fini(&b);
}

static void check_other(const struct mqtt_packet *pkt, const uint8_t *p, size_t used)
{
    struct mqtt_packet again;
    struct buf b;
    int rc = 0;

    buf_init(&b);
    switch (pkt->type) {
    case MQTT_CONNACK: rc = mqtt_encode_connack(&b, pkt->connack.session_present,
                                                pkt->connack.rc); break;
    case MQTT_PUBACK: rc = mqtt_encode_puback(&b, pkt->id); break;
    case MQTT_PUBREC: rc = mqtt_encode_pubrec(&b, pkt->id); break;
    case MQTT_PUBREL: rc = mqtt_encode_pubrel(&b, pkt->id); break;
    case MQTT_PUBCOMP: rc = mqtt_encode_pubcomp(&b, pkt->id); break;
    case MQTT_SUBACK: rc = mqtt_encode_suback(&b, pkt->id, pkt->suback.codes,
                                              pkt->suback.count); break;
    case MQTT_UNSUBACK: rc = mqtt_encode_unsuback(&b, pkt->id); break;
    case MQTT_PINGREQ: rc = mqtt_encode_pingreq(&b); break;
    case MQTT_PINGRESP: rc = mqtt_encode_pingresp(&b); break;
    case MQTT_DISCONNECT: rc = mqtt_encode_disconnect(&b); break;
    default: abort();
    }
    CHECK(rc == 0);
    decode_one(b.data, b.len, &again);
    CHECK(again.type == pkt->type && again.id == pkt->id);
    /* Fixed-size packets re-encode to the same bytes unless the input's length was
     * not minimal; the body (after the header) is always the same. */
    {
        size_t hlen = 2; /* the re-encoded header: type byte and a minimal varint */
        while (b.data[hlen - 1] & 0x80)
            hlen++;
        CHECK(b.len <= used
              && memcmp(b.data + hlen, p + (used - (b.len - hlen)), b.len - hlen) == 0);
    }
    buf_fini(&b);
}


/* ---- MQTT 5.0 round trips */

static void decode_one5(const uint8_t *p, size_t len, uint8_t version, struct mqtt_packet *pkt)
{
    struct mqtt_limits lim = { 0, MQTT_V_UNKNOWN };
    const char *why = NULL;
    uint8_t reason = 0;
    size_t used = 0;

    CHECK(mqtt_decode_v(&lim, version, p, len, pkt, &used, &why, &reason) == CODEC_FRAME
          && used == len && pkt->version == MQTT_V5);
}

/* Rebuilds a packet's properties one by one with the builder: the same bytes, which the
 * standalone parser accepts for the same packet. */
static void rebuild_props(const struct mqtt_props *ps, uint8_t where, struct buf *out)
{
    struct mqtt_props again;
    struct mqtt_prop p;
    const char *why = NULL;
    size_t off = 0, n = 0;

    while (mqtt_prop_next(ps, &off, &p)) {
        CHECK(mqtt_prop_allowed(where, p.id) && p.type == mqtt_prop_type(p.id));
        CHECK(mqtt_prop_put(out, &p) == 0);
        n++;
    }
    CHECK(off == ps->raw.len && n >= ps->user_prop_count + ps->subscription_id_count);
    CHECK(view_eq(out->data, out->len, ps->raw.p, ps->raw.len));
    CHECK(mqtt_props_parse(where, ps->raw.p, ps->raw.len, &again, &why) == 0);
    CHECK(again.present == ps->present);
}

static void props_eq(const struct mqtt_props *a, const struct mqtt_props *b)
{
    CHECK(a->present == b->present && view_eq(a->raw.p, a->raw.len, b->raw.p, b->raw.len));
    CHECK(a->user_prop_count == b->user_prop_count
          && a->subscription_id_count == b->subscription_id_count
          && a->subscription_id == b->subscription_id && a->topic_alias == b->topic_alias
          && a->receive_maximum == b->receive_maximum && a->maximum_qos == b->maximum_qos
          && a->session_expiry_s == b->session_expiry_s
          && a->message_expiry_s == b->message_expiry_s
          && a->payload_format == b->payload_format);
    CHECK(view_eq(a->reason_string.p, a->reason_string.len, b->reason_string.p,
                  b->reason_string.len));
    CHECK(view_eq(a->correlation_data.p, a->correlation_data.len, b->correlation_data.p,
                  b->correlation_data.len));
}

static void check_connect5(const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *c = &pkt->connect, *d;
    struct buf b, pb, wb;
    struct mqtt_bin props, wprops;
    struct mqtt_packet again;

    buf_init(&b);
    buf_init(&pb);
    buf_init(&wb);
    rebuild_props(&pkt->props, MQTT_CONNECT, &pb);
    props = (struct mqtt_bin){ pb.data, pb.len };
    if (c->will)
        rebuild_props(&pkt->will_props, MQTT_PROPS_WILL, &wb);
    wprops = (struct mqtt_bin){ wb.data, wb.len };
    CHECK(mqtt_encode_connect5(&b, c, &props, &wprops) == 0);
    decode_one5(b.data, b.len, MQTT_V_UNKNOWN, &again);
    d = &again.connect;
    CHECK(again.type == MQTT_CONNECT && d->level == MQTT_V5 && d->flags == c->flags
          && d->keepalive_s == c->keepalive_s);
    CHECK(view_eq(d->client_id.p, d->client_id.len, c->client_id.p, c->client_id.len));
    CHECK(view_eq(d->will_topic.p, d->will_topic.len, c->will_topic.p, c->will_topic.len));
    CHECK(view_eq(d->will_payload.p, d->will_payload.len, c->will_payload.p,
                  c->will_payload.len));
    CHECK(view_eq(d->username.p, d->username.len, c->username.p, c->username.len));
    CHECK(view_eq(d->password.p, d->password.len, c->password.p, c->password.len));
    props_eq(&again.props, &pkt->props);
    props_eq(&again.will_props, &pkt->will_props);
    buf_fini(&b);
    buf_fini(&pb);
    buf_fini(&wb);
}

static void check_filters5(struct state *st, const struct mqtt_packet *pkt,
                           const struct mqtt_bin *props, struct buf *b)
{
    struct mqtt_sub_req5 reqs[64];
    struct mqtt_str strs[64];
    struct mqtt_str f;
    size_t off = 0, n = 0;
    uint8_t opt;
    int sub = pkt->id % NSUBS + 1;

    while (mqtt_filter_next(pkt, &off, &f, &opt)) {
        CHECK(mqtt_filter_valid(f.p, f.len));
        CHECK(pkt->type == MQTT_SUBSCRIBE
                  ? (opt & MQTT_SUBOPT_RESERVED) == 0 && (opt & MQTT_SUBOPT_QOS_MASK) < 3
                  : opt == 0);
        if (n < 64) {
            reqs[n].filter = strs[n] = f;
            reqs[n].options = opt;
        }
        n++;
        if (pkt->type == MQTT_SUBSCRIBE)
            ref_subscribe(st, &f, sub, opt & MQTT_SUBOPT_QOS_MASK);
        else
            ref_unsubscribe(st, &f, sub);
    }
    CHECK(n == pkt->subscribe.count && n > 0);
    if (n > 64)
        return;
    if (pkt->type == MQTT_SUBSCRIBE)
        CHECK(mqtt_encode_subscribe5(b, pkt->id, props, reqs, n) == 0);
    else
        CHECK(mqtt_encode_unsubscribe5(b, pkt->id, props, strs, n) == 0);
}

static void check_packet5(struct state *st, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *p = &pkt->publish;
    struct mqtt_packet again;
    struct mqtt_bin props;
    struct buf b, pb;
    uint8_t where = pkt->type;

    if (pkt->type == MQTT_CONNECT) {
        if (pkt->version == MQTT_V5) /* not "MQIsdp" level 5: name and level only */
            check_connect5(pkt);
        else
            check_connect(pkt);
        return;
    }
    CHECK(pkt->version == MQTT_V5);
    buf_init(&b);
    buf_init(&pb);
    if (pkt->type != MQTT_PINGREQ && pkt->type != MQTT_PINGRESP)
        rebuild_props(&pkt->props, where, &pb);
    props = (struct mqtt_bin){ pb.data, pb.len };
    switch (pkt->type) {
    case MQTT_CONNACK:
        CHECK(mqtt_encode_connack5(&b, pkt->connack.session_present, pkt->connack.rc, &props)
              == 0);
        break;
    case MQTT_PUBLISH:
        CHECK(p->qos <= 2 && (p->qos > 0) == (pkt->id != 0));
        CHECK(p->topic.len ? mqtt_topic_valid(p->topic.p, p->topic.len)
                           : mqtt_props_has(&pkt->props, MQTT_PROP_TOPIC_ALIAS));
        CHECK(mqtt_encode_publish5(&b, p->topic.p, p->topic.len, &props, p->payload,
                                   p->payload_len, p->qos, p->retain, p->dup, pkt->id) == 0);
        if (p->topic.len)
            route_publish(st, &p->topic);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        CHECK(mqtt_encode_ack5(&b, pkt->type, pkt->id, pkt->reason, &props) == 0);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        check_filters5(st, pkt, &props, &b);
        break;
    case MQTT_SUBACK:
        CHECK(mqtt_encode_suback5(&b, pkt->id, &props, pkt->suback.codes, pkt->suback.count)
              == 0);
        break;
    case MQTT_UNSUBACK:
        CHECK(mqtt_encode_unsuback5(&b, pkt->id, &props, pkt->suback.codes,
                                    pkt->suback.count) == 0);
        break;
    case MQTT_PINGREQ: CHECK(mqtt_encode_pingreq(&b) == 0); break;
    case MQTT_PINGRESP: CHECK(mqtt_encode_pingresp(&b) == 0); break;
    case MQTT_DISCONNECT:
        CHECK(mqtt_encode_disconnect5(&b, pkt->reason, &props) == 0);
        break;
    case MQTT_AUTH: CHECK(mqtt_encode_auth(&b, pkt->reason, &props) == 0); break;
    default: abort();
    }
    if (b.len) { /* empty when a SUBSCRIBE had too many filters to copy */
        decode_one5(b.data, b.len, MQTT_V5, &again);
        CHECK(again.type == pkt->type && again.flags == pkt->flags && again.id == pkt->id
              && again.reason == pkt->reason);
        props_eq(&again.props, &pkt->props);
        switch (pkt->type) {
        case MQTT_CONNACK:
            CHECK(again.connack.rc == pkt->connack.rc
                  && again.connack.session_present == pkt->connack.session_present);
            break;
        case MQTT_PUBLISH:
            CHECK(view_eq(again.publish.topic.p, again.publish.topic.len, p->topic.p,
                          p->topic.len));
            CHECK(view_eq(again.publish.payload, again.publish.payload_len, p->payload,
                          p->payload_len));
            break;
        case MQTT_SUBSCRIBE:
        case MQTT_UNSUBSCRIBE:
            CHECK(view_eq(again.subscribe.list, again.subscribe.list_len, pkt->subscribe.list,
                          pkt->subscribe.list_len));
            break;
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
            CHECK(view_eq(again.suback.codes, again.suback.count, pkt->suback.codes,
                          pkt->suback.count));
            break;
        default:
            break;
        }
    }
    buf_fini(&b);
    buf_fini(&pb);
}

static void check_packet(struct state *st, const struct mqtt_packet *pkt, const uint8_t *p,
                         size_t used)
{
    if (st->v5 && (pkt->version == MQTT_V5 || pkt->type == MQTT_CONNECT)) {
        check_packet5(st, pkt);
        return;
    }
    switch (pkt->type) {
    case MQTT_PUBLISH: check_publish(st, pkt); break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE: check_filters(st, pkt); break;
    case MQTT_CONNECT: check_connect(pkt); break;
    default: check_other(pkt, p, used); break;
    }
}

static enum codec_rc decode(const struct mode *m, const uint8_t *p, size_t len,
                            struct mqtt_packet *pkt, size_t *used, const char **why,
                            uint8_t *reason)
{
    *reason = 0;
    if (m->v5)
        return mqtt_decode_v(&m->lim, m->version, p, len, pkt, used, why, reason);
    return mqtt_decode(&m->lim, p, len, pkt, used, why);
}

/* Decodes the whole stream at once: the oracle. */
static size_t oracle(const struct mode *m, const uint8_t *s, size_t len, struct event *ev)
{
    size_t off = 0, n = 0;

    while (off < len && n < MAX_EVENTS) {
        struct mqtt_packet pkt;
        const char *why = NULL;
        uint8_t reason;
        size_t used = 0;
        enum codec_rc rc = decode(m, s + off, len - off, &pkt, &used, &why, &reason);
        if (rc == CODEC_NEED_MORE)
            break;
        ev[n].rc = rc;
        ev[n].why = why;
        ev[n].reason = reason;
        ev[n].type = rc == CODEC_FRAME ? pkt.type : 0;
        ev[n].used = used;
        n++;
        if (rc == CODEC_ERROR)
            break;
        off += used;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct event ev[MAX_EVENTS];
    struct mode m;
    struct state st;
    const uint8_t *s;
    uint8_t *conn = NULL;
    size_t chunk, len, nev, k = 0, fed = 0, conn_len = 0, i;
    int dead = 0;

    if (size == 0)
        return 0;
    chunk = data[0] & 0x1f;
    m.v5 = (data[0] & 0x20) != 0;
    m.lim.max_packet_bytes = (data[0] & 0x40) ? 64 : 65536;
    m.lim.version = (data[0] & 0x80) && !m.v5 ? MQTT_V311 : MQTT_V_UNKNOWN;
    m.version = (data[0] & 0x80) ? MQTT_V5 : MQTT_V_UNKNOWN;
    s = data + 1;
    len = size - 1;
    if (chunk == 0)
        chunk = len ? len : 1;
    nev = oracle(&m, s, len, ev);

    memset(&st, 0, sizeof st);
    st.v5 = m.v5;
    st.router = mqtt_router_new();
    while (fed < len && !dead && k < MAX_EVENTS) {
        size_t n = len - fed < chunk ? len - fed : chunk, off = 0;
        uint8_t *grown = malloc(conn_len + n);
        if (conn_len)
            memcpy(grown, conn, conn_len);
        memcpy(grown + conn_len, s + fed, n);
        free(conn);
        conn = grown;
        conn_len += n;
        fed += n;
        while (off < conn_len && k < MAX_EVENTS) {
            struct mqtt_packet pkt;
            const char *why = NULL;
            uint8_t reason;
            size_t used = 0;
            enum codec_rc rc = decode(&m, conn + off, conn_len - off, &pkt, &used, &why,
                                      &reason);
            if (rc == CODEC_NEED_MORE)
                break;
            CHECK(k < nev && rc == ev[k].rc);
            if (rc == CODEC_ERROR) {
                CHECK(why && strcmp(why, ev[k].why) == 0 && reason == ev[k].reason);
                dead = 1;
                k++;
                break;
            }
            CHECK(used == ev[k].used && pkt.type == ev[k].type);
            CHECK(used <= (m.lim.max_packet_bytes ? m.lim.max_packet_bytes : used));
            check_packet(&st, &pkt, conn + off, used);
            off += used;
            k++;
        }
        /* Consume once per read: keep the partial tail in an exact-size buffer. */
        if (off) {
            uint8_t *tail = conn_len - off ? malloc(conn_len - off) : NULL;
            if (tail)
                memcpy(tail, conn + off, conn_len - off);
            free(conn);
            conn = tail;
            conn_len -= off;
        }
    }
    CHECK(k == nev || k == MAX_EVENTS);
    free(conn);
    for (i = 0; i < st.nrefs; i++)
        free(st.refs[i].filter);
    mqtt_router_free(st.router);
    return 0;
}
