/* protocols/mqtt/codec.c: MQTT packet decoder (the fixed header of every version and the
 * 3.1.1 bodies) and the 3.1.1 encoders. Pure: no I/O, no clock, no globals, no
 * allocation on the decode path; any thread.
 *
 * Bytes move one way: the connection's input buffer is handed to mqtt_decode() (or
 * mqtt_decode_v() with the connection's version), which reads the fixed header (type,
 * flags, remaining length), rejects what the header alone proves wrong (reserved types
 * and flags, sizes over the limit, fixed sizes) before the body arrives, then decodes
 * the body into views of the input: 3.1.1 bodies here, 5.0 bodies in codec5.c (with
 * the properties of props.c), both through the same struct mqtt_reader, which records
 * the first failure's static reason and its 5.0 reason code.
 * Encoders compute the remaining length first, so they either append one complete
 * packet to the output buffer or nothing.
 *
 * Rule ids in comments ([MQTT-x.x.x-y]) refer to the MQTT 3.1.1 OASIS standard. */
#include "protocols/mqtt/mqtt.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "base/err.h"
#include "protocols/mqtt/mqtt_int.h"

/* ---- remaining-length varint */

size_t mqtt_varint_size(uint32_t rem)
{
    return rem < 128 ? 1 : rem < 16384 ? 2 : rem < 2097152 ? 3 : 4;
}

size_t mqtt_varint_put(uint8_t *out, uint32_t rem)
{
    size_t n = 0;

    do {
        uint8_t b = rem & 0x7f;
        rem >>= 7;
        out[n++] = rem ? (uint8_t)(b | 0x80) : b;
    } while (rem && n < 4);
    return n;
}

/* ---- fixed header */

/* The reason the first byte is invalid, or NULL. Checked before anything else, so a
 * peer sending garbage is refused on its first byte. */
static const char *check_first_byte(uint8_t b0, int v5)
{
    uint8_t type = b0 >> 4, flags = b0 & 0x0f;

    switch (type) {
    case MQTT_PUBLISH:
        if (((flags >> MQTT_PUBLISH_QOS_SHIFT) & 3) == 3)
            return "invalid QoS"; /* [MQTT-3.3.1-4] */
        if ((flags & MQTT_PUBLISH_DUP) && ((flags >> MQTT_PUBLISH_QOS_SHIFT) & 3) == 0)
            return "DUP set on QoS 0 PUBLISH"; /* [MQTT-3.3.1-2] */
        return NULL;
    case MQTT_PUBREL:      /* [MQTT-3.6.1-1] */
    case MQTT_SUBSCRIBE:   /* [MQTT-3.8.1-1] */
    case MQTT_UNSUBSCRIBE: /* [MQTT-3.10.1-1] */
        return flags == MQTT_FLAGS_RESERVED_0010 ? NULL : "invalid fixed header flags";
    case MQTT_CONNECT:
    case MQTT_CONNACK:
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
    case MQTT_DISCONNECT:
        /* Reserved bits must be as listed; otherwise close [MQTT-2.2.2-1,2]. */
        return flags == 0 ? NULL : "invalid fixed header flags";
    case MQTT_AUTH: /* 5.0 §3.15.1 */
        if (!v5)
            return "reserved packet type"; /* 15 is reserved in 3.1.1 */
        return flags == 0 ? NULL : "invalid fixed header flags";
    default:
        return "reserved packet type"; /* 0 */
    }
}

/* Remaining length a type always has, or -1 when it varies. */
static long fixed_remaining(uint8_t type)
{
    switch (type) {
    case MQTT_CONNACK:
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return 2;
    case MQTT_PINGREQ:     /* [MQTT-3.12] has no variable header or payload */
    case MQTT_PINGRESP:
    case MQTT_DISCONNECT:
        return 0;
    default:
        return -1;
    }
}

/* ---- bodies */

/* with5: decode a level 5 CONNECT whole (mqtt_decode_v()); else return its name and
 * level only, as mqtt_decode() always has. */
static int decode_connect(struct mqtt_reader *r, struct mqtt_packet *pkt, int with5)
{
    struct mqtt_connect *c = &pkt->connect;
    struct mqtt_bin name;
    uint8_t f;

    /* The protocol name is compared bytewise, so a plain binary read is enough. */
    if (mqtt_rd_bin(r, &name) != 0 || mqtt_rd_u8(r, &c->level) != 0)
        return -1;
    c->proto_name.p = (const char *)name.p;
    c->proto_name.len = name.len;
    if (name.len == 4 && memcmp(name.p, "MQTT", 4) == 0) {
        if (c->level == MQTT_V5 && with5) {
            pkt->version = MQTT_V5;
            return mqtt_decode_connect5(r, pkt);
        }
        if (c->level != MQTT_V311)
            return 0; /* the handler answers CONNACK 0x01 [MQTT-3.1.2-2] */
    } else if (name.len == 6 && memcmp(name.p, "MQIsdp", 6) == 0) {
        if (c->level != MQTT_V31)
            return 0;
    } else {
        r->why = "unknown protocol name"; /* the server may close [MQTT-3.1.2-1] */
        return -1;
    }
    if (mqtt_rd_u8(r, &f) != 0 || mqtt_rd_u16(r, &c->keepalive_s) != 0)
        return -1;
    c->flags = f;
    if (f & MQTT_CF_RESERVED) {
        r->why = "reserved CONNECT flag set"; /* [MQTT-3.1.2-3] */
        return -1;
    }
    c->clean_session = (f & MQTT_CF_CLEAN) != 0;
    c->will = (f & MQTT_CF_WILL) != 0;
    c->will_qos = (f & MQTT_CF_WILL_QOS_MASK) >> MQTT_CF_WILL_QOS_SHIFT;
    c->will_retain = (f & MQTT_CF_WILL_RETAIN) != 0;
    c->has_username = (f & MQTT_CF_USERNAME) != 0;
    c->has_password = (f & MQTT_CF_PASSWORD) != 0;
    if (!c->will && (c->will_qos != 0 || c->will_retain)) {
        r->why = "will QoS or retain without will flag"; /* [MQTT-3.1.2-13] [MQTT-3.1.2-15] */
        return -1;
    }
    if (c->will_qos == 3) {
        r->why = "invalid will QoS"; /* [MQTT-3.1.2-14] */
        return -1;
    }
    if (c->has_password && !c->has_username) {
        r->why = "password flag without user name flag"; /* [MQTT-3.1.2-22] */
        return -1;
    }
    /* Payload order: client id, will topic, will message, user name, password
     * [MQTT-3.1.3-1]; each present exactly when its flag says so [MQTT-3.1.2-9]
     * [MQTT-3.1.2-19] [MQTT-3.1.2-21]. */
    if (mqtt_rd_str(r, &c->client_id) != 0) /* [MQTT-3.1.3-3] [MQTT-3.1.3-4] */
        return -1;
    if (c->will) {
        if (mqtt_rd_str(r, &c->will_topic) != 0 /* [MQTT-3.1.3-10] */
            || mqtt_rd_check_topic(r, &c->will_topic, "invalid will topic") != 0
            || mqtt_rd_bin(r, &c->will_payload) != 0)
            return -1;
    }
    if (c->has_username && mqtt_rd_str(r, &c->username) != 0) /* [MQTT-3.1.3-11] */
        return -1;
    if (c->has_password && mqtt_rd_bin(r, &c->password) != 0)
        return -1;
    return mqtt_rd_end(r);
}

static int decode_connack(struct mqtt_reader *r, struct mqtt_connack *a)
{
    uint8_t f;

    if (mqtt_rd_u8(r, &f) != 0 || mqtt_rd_u8(r, &a->rc) != 0)
        return -1;
    if (f & 0xfe) {
        r->why = "invalid CONNACK flags"; /* bits 7-1 reserved, 0 (3.1.1 §3.2.2.1) */
        return -1;
    }
    a->session_present = f & 1;
    if (a->rc > MQTT_CONNACK_NOT_AUTHORIZED) {
        r->why = "reserved CONNACK return code"; /* 6-255 reserved (3.1.1 §3.2.2.3) */
        return -1;
    }
    if (a->session_present && a->rc != MQTT_CONNACK_ACCEPTED) {
        r->why = "session present with a refusal"; /* [MQTT-3.2.2-4] */
        return -1;
    }
    return 0;
}

static int decode_publish(struct mqtt_reader *r, uint8_t flags, struct mqtt_packet *pkt)
{
    struct mqtt_publish *pub = &pkt->publish;

    pub->qos = (flags >> MQTT_PUBLISH_QOS_SHIFT) & 3;
    pub->dup = (flags & MQTT_PUBLISH_DUP) != 0;
    pub->retain = (flags & MQTT_PUBLISH_RETAIN) != 0;
    if (mqtt_rd_str(r, &pub->topic) != 0 /* [MQTT-3.3.2-1] */
        || mqtt_rd_check_topic(r, &pub->topic, "invalid topic name") != 0)
        return -1;
    if (pub->qos > 0 && mqtt_rd_packet_id(r, &pkt->id) != 0)
        return -1;
    pub->payload = r->p + r->off; /* the rest, possibly empty (3.1.1 §3.3.3) */
    pub->payload_len = r->len - r->off;
    r->off = r->len;
    return 0;
}

/* SUBSCRIBE (with a requested QoS byte per filter) and UNSUBSCRIBE. */
static int decode_filters(struct mqtt_reader *r, struct mqtt_packet *pkt, int with_qos)
{
    struct mqtt_subscribe *s = &pkt->subscribe;

    if (mqtt_rd_packet_id(r, &pkt->id) != 0)
        return -1;
    s->list = r->p + r->off;
    s->list_len = r->len - r->off;
    s->count = 0;
    while (r->off < r->len) {
        struct mqtt_str f;
        uint8_t q;

        if (mqtt_rd_str(r, &f) != 0) /* [MQTT-3.8.3-1] [MQTT-3.10.3-1] */
            return -1;
        if (!mqtt_filter_valid(f.p, f.len)) {
            r->why = "invalid topic filter"; /* [MQTT-4.7.1-2,3] [MQTT-4.7.3-1] */
            return -1;
        }
        if (with_qos) {
            if (mqtt_rd_u8(r, &q) != 0)
                return -1;
            if (q > 2) {
                r->why = "invalid requested QoS"; /* [MQTT-3.8.3-4] */
                return -1;
            }
        }
        s->count++;
    }
    if (s->count == 0) {
        r->why = with_qos ? "SUBSCRIBE without filters"   /* [MQTT-3.8.3-3] */
                          : "UNSUBSCRIBE without filters"; /* [MQTT-3.10.3-2] */
        return -1;
    }
    return 0;
}

static int decode_suback(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    size_t i;

    if (mqtt_rd_packet_id(r, &pkt->id) != 0)
        return -1;
    pkt->suback.codes = r->p + r->off;
    pkt->suback.count = r->len - r->off;
    r->off = r->len;
    if (pkt->suback.count == 0) {
        r->why = "SUBACK without return codes"; /* one per filter, and there is >= 1 */
        return -1;
    }
    for (i = 0; i < pkt->suback.count; i++) {
        uint8_t c = pkt->suback.codes[i];
        if (c > 2 && c != MQTT_SUBACK_FAILURE) {
            r->why = "invalid SUBACK return code"; /* [MQTT-3.9.3-2] */
            return -1;
        }
    }
    return 0;
}

/* version: the rules for every packet but CONNECT (MQTT_V5 or not); with5: see
 * decode_connect(). */
static int decode_body(uint8_t b0, const uint8_t *body, size_t rem, struct mqtt_packet *pkt,
                       uint8_t version, int with5, const char **why, uint8_t *reason)
{
    struct mqtt_reader r = { body, rem, 0, NULL, MQTT_RC_MALFORMED_PACKET };
    int rc;

    /* The properties are 5.0's: of them only what says "none" is cleared here, which
     * keeps the 3.1.1 hot path as cheap as it was (the 5.0 decoder initialises them). */
    memset(pkt, 0, offsetof(struct mqtt_packet, props));
    pkt->props.present = pkt->will_props.present = 0;
    pkt->props.raw = pkt->will_props.raw = (struct mqtt_bin){ NULL, 0 };
    pkt->type = b0 >> 4;
    pkt->flags = b0 & 0x0f;
    pkt->version = MQTT_V311;
    if (version == MQTT_V5 && pkt->type != MQTT_CONNECT) {
        pkt->version = MQTT_V5;
        rc = mqtt_decode_body5(&r, pkt);
    } else switch (pkt->type) {
    case MQTT_CONNECT:
        rc = decode_connect(&r, pkt, with5);
        break;
    case MQTT_CONNACK:
        rc = decode_connack(&r, &pkt->connack);
        break;
    case MQTT_PUBLISH:
        rc = decode_publish(&r, pkt->flags, pkt);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        rc = mqtt_rd_packet_id(&r, &pkt->id);
        break;
    case MQTT_SUBSCRIBE:
        rc = decode_filters(&r, pkt, 1);
        break;
    case MQTT_UNSUBSCRIBE:
        rc = decode_filters(&r, pkt, 0);
        break;
    case MQTT_SUBACK:
        rc = decode_suback(&r, pkt);
        break;
    default: /* PINGREQ, PINGRESP, DISCONNECT: empty, size checked with the header */
        rc = 0;
        break;
    }
    if (rc != 0) {
        *why = r.why;
        *reason = r.rc;
        return CODEC_ERROR;
    }
    return CODEC_FRAME;
}

static enum codec_rc decode(const struct mqtt_limits *lim, uint8_t version, int with5,
                            const uint8_t *p, size_t len, struct mqtt_packet *pkt, size_t *used,
                            const char **why, uint8_t *reason)
{
    uint64_t max = lim->max_packet_bytes ? lim->max_packet_bytes : 5 + MQTT_MAX_REMAINING;
    int v5 = version == MQTT_V5;
    uint32_t rem = 0;
    const char *bad;
    long fixed;
    size_t i;

    *reason = MQTT_RC_MALFORMED_PACKET;
    if (version != MQTT_V_UNKNOWN && version != MQTT_V31 && version != MQTT_V311
        && !(v5 && with5)) {
        *why = "protocol version not supported by the decoder";
        *reason = MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION;
        return CODEC_ERROR;
    }
    if (len == 0)
        return CODEC_NEED_MORE;
    if ((bad = check_first_byte(p[0], v5)) != NULL) {
        *why = bad;
        return CODEC_ERROR;
    }
    /* Remaining length: 1..4 bytes, 7 bits each, least significant first. Encodings
     * that are not minimal are accepted in 3.1.1 (it does not forbid them), not in 5.0
     * [MQTT-1.5.5-1]. The sum so far is a lower bound of the size, so an oversize
     * packet is refused early. */
    for (i = 1;; i++) {
        if (i > 4) {
            *why = "malformed remaining length";
            return CODEC_ERROR;
        }
        if (i >= len)
            return CODEC_NEED_MORE;
        rem |= (uint32_t)(p[i] & 0x7f) << (7 * (i - 1));
        if (1 + i + (uint64_t)rem > max) {
            *why = "packet too large";
            *reason = MQTT_RC_PACKET_TOO_LARGE;
            return CODEC_ERROR;
        }
        if ((p[i] & 0x80) == 0)
            break;
    }
    if (v5 && i > 1 && p[i] == 0) {
        *why = "malformed remaining length";
        return CODEC_ERROR;
    }
    fixed = v5 ? mqtt_fixed_remaining5(p[0] >> 4) : fixed_remaining(p[0] >> 4);
    if (fixed >= 0 && rem != (uint32_t)fixed) {
        *why = "invalid remaining length";
        return CODEC_ERROR;
    }
    if (len - 1 - i < rem)
        return CODEC_NEED_MORE;
    if (decode_body(p[0], p + 1 + i, rem, pkt, version, with5, why, reason) != CODEC_FRAME)
        return CODEC_ERROR;
    *used = 1 + i + rem;
    return CODEC_FRAME;
}

enum codec_rc mqtt_decode(const struct mqtt_limits *lim, const uint8_t *p, size_t len,
                          struct mqtt_packet *pkt, size_t *used, const char **why)
{
    uint8_t reason;

    return decode(lim, lim->version, 0, p, len, pkt, used, why, &reason);
}

enum codec_rc mqtt_decode_v(const struct mqtt_limits *lim, uint8_t version, const uint8_t *p,
                            size_t len, struct mqtt_packet *pkt, size_t *used,
                            const char **why, uint8_t *reason)
{
    uint8_t ignored;

    return decode(lim, version, 1, p, len, pkt, used, why, reason ? reason : &ignored);
}

int mqtt_filter_next(const struct mqtt_packet *pkt, size_t *off, struct mqtt_str *filter,
                     uint8_t *options)
{
    const uint8_t *l = pkt->subscribe.list;
    size_t n = pkt->subscribe.list_len, flen;
    int with_opts = pkt->type == MQTT_SUBSCRIBE;

    if ((pkt->type != MQTT_SUBSCRIBE && pkt->type != MQTT_UNSUBSCRIBE) || *off >= n
        || n - *off < 2)
        return 0;
    flen = (size_t)l[*off] << 8 | l[*off + 1];
    if (n - *off - 2 < flen + (with_opts ? 1 : 0))
        return 0; /* not a list mqtt_decode() validated */
    filter->p = (const char *)l + *off + 2;
    filter->len = flen;
    *off += 2 + flen;
    *options = with_opts ? l[(*off)++] : 0;
    return 1;
}

const char *mqtt_type_name(uint8_t type)
{
    static const char *const names[] = {
        "?", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
        "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
        "DISCONNECT",
    };
    return type < sizeof names / sizeof names[0] ? names[type] : "?";
}

/* ---- encoders */

void mqtt_put_fixed(struct buf *out, uint8_t b0, size_t rem)
{
    uint8_t *w = buf_reserve(out, 5);

    assert(rem <= MQTT_MAX_REMAINING); /* callers check before writing anything */
    w[0] = b0;
    buf_commit(out, 1 + mqtt_varint_put(w + 1, (uint32_t)rem));
}

void mqtt_put_u16(struct buf *out, uint16_t v)
{
    uint8_t b[2] = { (uint8_t)(v >> 8), (uint8_t)v };
    buf_append(out, b, 2);
}

void mqtt_put_field(struct buf *out, const void *p, size_t n)
{
    mqtt_put_u16(out, (uint16_t)n);
    buf_append(out, p, n);
}

static int encode_id_only(struct buf *out, uint8_t b0, uint16_t id)
{
    if (id == 0)
        return GW_EINVAL; /* [MQTT-2.3.1-1] */
    mqtt_put_fixed(out, b0, 2);
    mqtt_put_u16(out, id);
    return 0;
}

int mqtt_encode_connect(struct buf *out, const struct mqtt_connect *c)
{
    const char *name = c->proto_name.len ? c->proto_name.p : "MQTT";
    size_t name_len = c->proto_name.len ? c->proto_name.len : 4;
    uint8_t level = c->proto_name.len ? c->level : MQTT_V311;
    uint8_t f = 0;
    size_t rem;

    if (name_len > MQTT_MAX_STRING || c->client_id.len > MQTT_MAX_STRING
        || (c->will && (c->will_qos > 2 || c->will_topic.len > MQTT_MAX_STRING
                        || c->will_payload.len > MQTT_MAX_STRING))
        || (c->has_username && c->username.len > MQTT_MAX_STRING)
        || (c->has_password && (!c->has_username || c->password.len > MQTT_MAX_STRING)))
        return GW_EINVAL;
    rem = 2 + name_len + 1 + 1 + 2 + 2 + c->client_id.len;
    if (c->will) {
        rem += 2 + c->will_topic.len + 2 + c->will_payload.len;
        f |= MQTT_CF_WILL | (uint8_t)(c->will_qos << MQTT_CF_WILL_QOS_SHIFT);
        f |= c->will_retain ? MQTT_CF_WILL_RETAIN : 0;
    }
    if (c->has_username) {
        rem += 2 + c->username.len;
        f |= MQTT_CF_USERNAME;
    }
    if (c->has_password) {
        rem += 2 + c->password.len;
        f |= MQTT_CF_PASSWORD;
    }
    f |= c->clean_session ? MQTT_CF_CLEAN : 0;
    mqtt_put_fixed(out, MQTT_HDR(MQTT_CONNECT, 0), rem);
    mqtt_put_field(out, name, name_len);
    buf_append(out, &level, 1);
    buf_append(out, &f, 1);
    mqtt_put_u16(out, c->keepalive_s);
    mqtt_put_field(out, c->client_id.p, c->client_id.len);
    if (c->will) {
        mqtt_put_field(out, c->will_topic.p, c->will_topic.len);
        mqtt_put_field(out, c->will_payload.p, c->will_payload.len);
    }
    if (c->has_username)
        mqtt_put_field(out, c->username.p, c->username.len);
    if (c->has_password)
        mqtt_put_field(out, c->password.p, c->password.len);
    return 0;
}

int mqtt_encode_connack(struct buf *out, bool session_present, uint8_t rc)
{
    uint8_t b[4] = { MQTT_HDR(MQTT_CONNACK, 0), 2, session_present ? 1 : 0, rc };

    /* A refusal never claims a session [MQTT-3.2.2-4]. */
    if (session_present && rc != MQTT_CONNACK_ACCEPTED)
        return GW_EINVAL;
    buf_append(out, b, sizeof b);
    return 0;
}

int mqtt_encode_publish_header(struct buf *out, const char *topic, size_t topic_len,
                               size_t payload_len, uint8_t qos, bool retain, bool dup,
                               uint16_t id)
{
    uint8_t f;
    size_t rem;

    if (qos > 2 || (qos > 0 && id == 0) || (qos == 0 && dup) || topic_len == 0
        || topic_len > MQTT_MAX_STRING || payload_len > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    rem = 2 + topic_len + (qos ? 2 : 0) + payload_len;
    if (rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    f = (uint8_t)(qos << MQTT_PUBLISH_QOS_SHIFT) | (dup ? MQTT_PUBLISH_DUP : 0)
        | (retain ? MQTT_PUBLISH_RETAIN : 0);
    mqtt_put_fixed(out, MQTT_HDR(MQTT_PUBLISH, f), rem);
    mqtt_put_field(out, topic, topic_len);
    if (qos)
        mqtt_put_u16(out, id);
    return 0;
}

int mqtt_encode_publish(struct buf *out, const char *topic, size_t topic_len,
                        const uint8_t *payload, size_t payload_len, uint8_t qos, bool retain,
                        bool dup, uint16_t id)
{
    int rc = mqtt_encode_publish_header(out, topic, topic_len, payload_len, qos, retain, dup,
                                        id);
    if (rc == 0)
        buf_append(out, payload, payload_len);
    return rc;
}

int mqtt_encode_puback(struct buf *out, uint16_t id)
{
    return encode_id_only(out, MQTT_HDR(MQTT_PUBACK, 0), id);
}

int mqtt_encode_pubrec(struct buf *out, uint16_t id)
{
    return encode_id_only(out, MQTT_HDR(MQTT_PUBREC, 0), id);
}

int mqtt_encode_pubrel(struct buf *out, uint16_t id)
{
    return encode_id_only(out, MQTT_HDR(MQTT_PUBREL, MQTT_FLAGS_RESERVED_0010), id);
}

int mqtt_encode_pubcomp(struct buf *out, uint16_t id)
{
    return encode_id_only(out, MQTT_HDR(MQTT_PUBCOMP, 0), id);
}

int mqtt_encode_unsuback(struct buf *out, uint16_t id)
{
    return encode_id_only(out, MQTT_HDR(MQTT_UNSUBACK, 0), id);
}

int mqtt_encode_subscribe(struct buf *out, uint16_t id, const struct mqtt_sub_req *subs,
                          size_t n)
{
    size_t rem = 2, i;

    if (id == 0 || n == 0)
        return GW_EINVAL;
    for (i = 0; i < n; i++) {
        if (subs[i].filter.len > MQTT_MAX_STRING || subs[i].qos > 2)
            return GW_EINVAL;
        rem += 2 + subs[i].filter.len + 1;
        if (rem > MQTT_MAX_REMAINING)
            return GW_EINVAL;
    }
    mqtt_put_fixed(out, MQTT_HDR(MQTT_SUBSCRIBE, MQTT_FLAGS_RESERVED_0010), rem);
    mqtt_put_u16(out, id);
    for (i = 0; i < n; i++) {
        mqtt_put_field(out, subs[i].filter.p, subs[i].filter.len);
        buf_append(out, &subs[i].qos, 1);
    }
    return 0;
}

int mqtt_encode_suback(struct buf *out, uint16_t id, const uint8_t *codes, size_t n)
{
    size_t i;

    if (id == 0 || n == 0 || n > MQTT_MAX_REMAINING - 2)
        return GW_EINVAL;
    for (i = 0; i < n; i++)
        if (codes[i] > 2 && codes[i] != MQTT_SUBACK_FAILURE)
            return GW_EINVAL;
    mqtt_put_fixed(out, MQTT_HDR(MQTT_SUBACK, 0), 2 + n);
    mqtt_put_u16(out, id);
    buf_append(out, codes, n);
    return 0;
}

int mqtt_encode_unsubscribe(struct buf *out, uint16_t id, const struct mqtt_str *filters,
                            size_t n)
{
    size_t rem = 2, i;

    if (id == 0 || n == 0)
        return GW_EINVAL;
    for (i = 0; i < n; i++) {
        if (filters[i].len > MQTT_MAX_STRING)
            return GW_EINVAL;
        rem += 2 + filters[i].len;
        if (rem > MQTT_MAX_REMAINING)
            return GW_EINVAL;
    }
    mqtt_put_fixed(out, MQTT_HDR(MQTT_UNSUBSCRIBE, MQTT_FLAGS_RESERVED_0010), rem);
    mqtt_put_u16(out, id);
    for (i = 0; i < n; i++)
        mqtt_put_field(out, filters[i].p, filters[i].len);
    return 0;
}

static int encode_empty(struct buf *out, uint8_t type)
{
    uint8_t b[2] = { MQTT_HDR(type, 0), 0 };
    buf_append(out, b, 2);
    return 0;
}

int mqtt_encode_pingreq(struct buf *out)
{
    return encode_empty(out, MQTT_PINGREQ);
}

int mqtt_encode_pingresp(struct buf *out)
{
    return encode_empty(out, MQTT_PINGRESP);
}

int mqtt_encode_disconnect(struct buf *out)
{
    return encode_empty(out, MQTT_DISCONNECT);
}
