/* protocols/mqtt/mqtt_int.h: shared only inside protocols/mqtt/ and its unit tests.
 * Wire-level helpers (varint, the body reader the 3.1.1 and 5.0 decoders share, the
 * encoders' writers) and router introspection that tests use to check pruning.
 * Nothing here is part of the API other modules call. */
#ifndef GALE_MQTT_INT_H
#define GALE_MQTT_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "protocols/mqtt/mqtt.h"

/* Fixed header: type in the high nibble, flags in the low nibble. */
#define MQTT_HDR(type, flags) ((uint8_t)(((type) << 4) | (flags)))
/* Flags PUBREL, SUBSCRIBE and UNSUBSCRIBE must carry [MQTT-3.6.1-1] [MQTT-3.8.1-1]
 * [MQTT-3.10.1-1]; every other type except PUBLISH carries 0 [MQTT-2.2.2-1]. */
#define MQTT_FLAGS_RESERVED_0010 0x2
/* PUBLISH flag bits. */
#define MQTT_PUBLISH_DUP 0x08
#define MQTT_PUBLISH_QOS_SHIFT 1
#define MQTT_PUBLISH_RETAIN 0x01
/* CONNECT flag bits (3.1.1 §3.1.2.3). */
#define MQTT_CF_RESERVED 0x01
#define MQTT_CF_CLEAN 0x02
#define MQTT_CF_WILL 0x04
#define MQTT_CF_WILL_QOS_SHIFT 3
#define MQTT_CF_WILL_QOS_MASK 0x18
#define MQTT_CF_WILL_RETAIN 0x20
#define MQTT_CF_PASSWORD 0x40
#define MQTT_CF_USERNAME 0x80

/* Bytes a remaining length takes as a varint (1..4); rem <= MQTT_MAX_REMAINING. */
size_t mqtt_varint_size(uint32_t rem);
/* Writes rem as a minimal varint to out (room for 4 bytes); returns bytes written. */
size_t mqtt_varint_put(uint8_t *out, uint32_t rem);

/* ---- body reader: a cursor over the remaining-length bytes (or a property block).
 * The first failing read records why and the reason code; callers return at once. */
struct mqtt_reader {
    const uint8_t *p; /* body start */
    size_t len;       /* body bytes */
    size_t off;       /* bytes read so far */
    const char *why;  /* static reason of the first failure */
    uint8_t rc;       /* its 5.0 reason code (enum mqtt_rc) */
};

#define MQTT_WHY_TRUNCATED "truncated field"
#define MQTT_WHY_BAD_UTF8 "invalid UTF-8"

static inline int mqtt_rd_fail(struct mqtt_reader *r, uint8_t rc, const char *why)
{
    r->rc = rc;
    r->why = why;
    return -1;
}

static inline int mqtt_rd_u8(struct mqtt_reader *r, uint8_t *v)
{
    if (r->len - r->off < 1)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, MQTT_WHY_TRUNCATED);
    *v = r->p[r->off++];
    return 0;
}

static inline int mqtt_rd_u16(struct mqtt_reader *r, uint16_t *v)
{
    if (r->len - r->off < 2)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, MQTT_WHY_TRUNCATED);
    *v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return 0;
}

static inline int mqtt_rd_u32(struct mqtt_reader *r, uint32_t *v)
{
    const uint8_t *b = r->p + r->off;

    if (r->len - r->off < 4)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, MQTT_WHY_TRUNCATED);
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    r->off += 4;
    return 0;
}

/* Binary data: two-byte length, then that many bytes (3.1.1 §1.5.3, 5.0 §1.5.6). */
static inline int mqtt_rd_bin(struct mqtt_reader *r, struct mqtt_bin *v)
{
    uint16_t n;

    if (mqtt_rd_u16(r, &n) != 0)
        return -1;
    if (r->len - r->off < n)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, MQTT_WHY_TRUNCATED);
    v->p = r->p + r->off;
    v->len = n;
    r->off += n;
    return 0;
}

/* UTF-8 encoded string: well-formed, no U+0000, no surrogates [MQTT-1.5.3-1,2]
 * (5.0 [MQTT-1.5.4-1,2]: a Malformed Packet). */
static inline int mqtt_rd_str(struct mqtt_reader *r, struct mqtt_str *v)
{
    struct mqtt_bin b;

    if (mqtt_rd_bin(r, &b) != 0)
        return -1;
    if (!mqtt_utf8_valid((const char *)b.p, b.len))
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, MQTT_WHY_BAD_UTF8);
    v->p = (const char *)b.p;
    v->len = b.len;
    return 0;
}

/* 5.0 Variable Byte Integer: 1..4 bytes, minimal [MQTT-1.5.5-1]. */
static inline int mqtt_rd_varint(struct mqtt_reader *r, uint32_t *v)
{
    uint32_t x = 0;
    size_t i;

    for (i = 0; i < 4; i++) {
        uint8_t b;
        if (mqtt_rd_u8(r, &b) != 0)
            return -1;
        x |= (uint32_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            if (i > 0 && b == 0)
                break; /* a trailing zero byte: not minimal */
            *v = x;
            return 0;
        }
    }
    return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "malformed variable byte integer");
}

/* A packet identifier that must be non-zero [MQTT-2.3.1-1] (5.0 [MQTT-2.2.1-3]). */
static inline int mqtt_rd_packet_id(struct mqtt_reader *r, uint16_t *id)
{
    if (mqtt_rd_u16(r, id) != 0)
        return -1;
    if (*id == 0)
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "packet id is 0");
    return 0;
}

static inline int mqtt_rd_end(struct mqtt_reader *r)
{
    if (r->off != r->len)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "trailing bytes in packet");
    return 0;
}

/* A topic name: non-empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2] [MQTT-4.7.1-1].
 * UTF-8 was checked by mqtt_rd_str(). */
static inline int mqtt_rd_check_topic(struct mqtt_reader *r, const struct mqtt_str *t,
                                      const char *what)
{
    if (t->len == 0 || memchr(t->p, '+', t->len) || memchr(t->p, '#', t->len))
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, what);
    return 0;
}

/* ---- 5.0 decoding (props.c, codec5.c), called by codec.c */

/* No properties: every field at its default (a 5.0 packet whose properties are omitted). */
void mqtt_props_init(struct mqtt_props *o);
/* Reads a Property Length and the properties after it, validated for `where` (a packet
 * type or MQTT_PROPS_WILL), into *out. */
int mqtt_props_read(struct mqtt_reader *r, uint8_t where, struct mqtt_props *out);
/* A 5.0 CONNECT after the protocol level byte. */
int mqtt_decode_connect5(struct mqtt_reader *r, struct mqtt_packet *pkt);
/* Any other 5.0 packet body (the first byte was checked). */
int mqtt_decode_body5(struct mqtt_reader *r, struct mqtt_packet *pkt);
/* Remaining length a 5.0 packet type always has, or -1 when it varies. */
long mqtt_fixed_remaining5(uint8_t type);

/* ---- encoders' writers (codec.c) */

/* The fixed header; rem <= MQTT_MAX_REMAINING (checked by the caller). */
void mqtt_put_fixed(struct buf *out, uint8_t b0, size_t rem);
void mqtt_put_u16(struct buf *out, uint16_t v);
/* A length-prefixed field; n <= MQTT_MAX_STRING was checked by the caller. */
void mqtt_put_field(struct buf *out, const void *p, size_t n);

/* Router introspection for tests: trie nodes alive (the root not counted) and
 * subscribers that hold at least one subscription. */
size_t mqtt_router_node_count(const struct mqtt_router *r);
size_t mqtt_router_subscriber_count(const struct mqtt_router *r);

#endif
