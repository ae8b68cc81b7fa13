/* tests/fuzz/fuzz_mqtt.c: libFuzzer target for the MQTT codec and router
 * (protocols/mqtt/codec.c, topic.c, router.c).
 *
 * Input: the first byte is a control byte: bits 0-5 pick the read size (0 = the whole
 * stream in one read), bit 6 a small packet limit (64 bytes, else 64 KB), bit 7 the
 * connection's protocol version (4, else 0 = before CONNECT). The rest is the stream.
 * It is fed read by read into an exact-size buffer (so ASan sees any read past the end)
 * and decoded until NEED_MORE, consuming once per read, as a connection does. The same
 * stream decoded whole is the oracle: every packet (type, size) and the error must
 * match it however the reads split, else abort.
 * Each decoded packet is re-encoded and decoded again and must come back the same.
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
    size_t used;
    const char *why;
};

struct ref {          /* the reference subscription list */
    char *filter;
    size_t len;
    int sub;          /* 1..NSUBS */
    int qos;
};

struct state {
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

static void check_publish(struct state *st, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *p = &pkt->publish;
    struct mqtt_packet again;
    struct buf b;
    int want[NSUBS + 1], s;
    size_t i;

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

    /* Router vs reference. */
    for (s = 0; s <= NSUBS; s++)
        want[s] = st->got[s] = -1;
    for (i = 0; i < st->nrefs; i++)
        if (mqtt_topic_matches(st->refs[i].filter, st->refs[i].len, p->topic.p, p->topic.len)
            && st->refs[i].qos > want[st->refs[i].sub])
            want[st->refs[i].sub] = st->refs[i].qos;
    mqtt_router_match(st->router, p->topic.p, p->topic.len, on_match, st);
    for (s = 1; s <= NSUBS; s++)
        CHECK(st->got[s] == want[s]);
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

static void check_packet(struct state *st, const struct mqtt_packet *pkt, const uint8_t *p,
                         size_t used)
{
    switch (pkt->type) {
    case MQTT_PUBLISH: check_publish(st, pkt); break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE: check_filters(st, pkt); break;
    case MQTT_CONNECT: check_connect(pkt); break;
    default: check_other(pkt, p, used); break;
    }
}

/* Decodes the whole stream at once: the oracle. */
static size_t oracle(const struct mqtt_limits *lim, const uint8_t *s, size_t len,
                     struct event *ev)
{
    size_t off = 0, n = 0;

    while (off < len && n < MAX_EVENTS) {
        struct mqtt_packet pkt;
        const char *why = NULL;
        size_t used = 0;
        enum codec_rc rc = mqtt_decode(lim, s + off, len - off, &pkt, &used, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        ev[n].rc = rc;
        ev[n].why = why;
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
    struct mqtt_limits lim;
    struct state st;
    const uint8_t *s;
    uint8_t *conn = NULL;
    size_t chunk, len, nev, k = 0, fed = 0, conn_len = 0, i;
    int dead = 0;

    if (size == 0)
        return 0;
    chunk = data[0] & 0x3f;
    lim.max_packet_bytes = (data[0] & 0x40) ? 64 : 65536;
    lim.version = (data[0] & 0x80) ? MQTT_V311 : MQTT_V_UNKNOWN;
    s = data + 1;
    len = size - 1;
    if (chunk == 0)
        chunk = len ? len : 1;
    nev = oracle(&lim, s, len, ev);

    memset(&st, 0, sizeof st);
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
            size_t used = 0;
            enum codec_rc rc = mqtt_decode(&lim, conn + off, conn_len - off, &pkt, &used, &why);
            if (rc == CODEC_NEED_MORE)
                break;
            CHECK(k < nev && rc == ev[k].rc);
            if (rc == CODEC_ERROR) {
                CHECK(why && strcmp(why, ev[k].why) == 0);
                dead = 1;
                k++;
                break;
            }
            CHECK(used == ev[k].used && pkt.type == ev[k].type);
            CHECK(used <= (lim.max_packet_bytes ? lim.max_packet_bytes : used));
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
