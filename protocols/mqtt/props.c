/* protocols/mqtt/props.c: MQTT 5.0 properties (§2.2.2): one table of every property
 * identifier (its value type and the packets it may appear on), the validating decoder
 * the 5.0 packet decoder calls, the iterators over decoded properties, and the builder
 * that appends properties for the 5.0 encoders. Pure: no I/O, no globals, no allocation;
 * any thread.
 *
 * A packet's properties are decoded in one pass over the property block: each property
 * is checked against the table (an identifier unknown or not allowed on the packet is a
 * Malformed Packet, §2.2.2.2), against those already seen (a bit per identifier in
 * `present`: a second one is a Protocol Error unless the property may repeat) and
 * against its own range; the common ones are surfaced as fields of struct mqtt_props
 * (views into the input), and the block itself stays available as `raw` for the
 * iterators (User Property pairs, several Subscription Identifiers). Builders write the
 * identifier and value only; the packet encoders (codec5.c) write the Property Length
 * and check the whole block with the same decoder, so Gale never sends properties it
 * would refuse. */
#include "protocols/mqtt/mqtt.h"

#include <string.h>

#include "base/err.h"
#include "protocols/mqtt/mqtt_int.h"

#define W(t) (1u << (t))
#define W_WILL W(MQTT_PROPS_WILL)
#define W_MESSAGE (W(MQTT_PUBLISH) | W_WILL)
#define W_REASON                                                                              \
    (W(MQTT_CONNACK) | W(MQTT_PUBACK) | W(MQTT_PUBREC) | W(MQTT_PUBREL) | W(MQTT_PUBCOMP)    \
     | W(MQTT_SUBACK) | W(MQTT_UNSUBACK) | W(MQTT_DISCONNECT) | W(MQTT_AUTH))
#define W_ANY (W_REASON | W_MESSAGE | W(MQTT_CONNECT) | W(MQTT_SUBSCRIBE) | W(MQTT_UNSUBSCRIBE))

struct prop_def {
    uint8_t type;   /* enum mqtt_prop_type; MQTT_PT_NONE for an unassigned identifier */
    uint16_t where; /* W(packet type) bits, W_WILL for the Will Properties */
};

/* 5.0 §2.2.2.2, Table 2-4. */
static const struct prop_def defs[MQTT_PROP_ID_MAX + 1] = {
    [MQTT_PROP_PAYLOAD_FORMAT] = { MQTT_PT_BYTE, W_MESSAGE },
    [MQTT_PROP_MESSAGE_EXPIRY] = { MQTT_PT_U32, W_MESSAGE },
    [MQTT_PROP_CONTENT_TYPE] = { MQTT_PT_STR, W_MESSAGE },
    [MQTT_PROP_RESPONSE_TOPIC] = { MQTT_PT_STR, W_MESSAGE },
    [MQTT_PROP_CORRELATION_DATA] = { MQTT_PT_BIN, W_MESSAGE },
    [MQTT_PROP_SUBSCRIPTION_ID] = { MQTT_PT_VARINT, W(MQTT_PUBLISH) | W(MQTT_SUBSCRIBE) },
    [MQTT_PROP_SESSION_EXPIRY] = { MQTT_PT_U32,
                                   W(MQTT_CONNECT) | W(MQTT_CONNACK) | W(MQTT_DISCONNECT) },
    [MQTT_PROP_ASSIGNED_CLIENT_ID] = { MQTT_PT_STR, W(MQTT_CONNACK) },
    [MQTT_PROP_SERVER_KEEP_ALIVE] = { MQTT_PT_U16, W(MQTT_CONNACK) },
    [MQTT_PROP_AUTH_METHOD] = { MQTT_PT_STR, W(MQTT_CONNECT) | W(MQTT_CONNACK) | W(MQTT_AUTH) },
    [MQTT_PROP_AUTH_DATA] = { MQTT_PT_BIN, W(MQTT_CONNECT) | W(MQTT_CONNACK) | W(MQTT_AUTH) },
    [MQTT_PROP_REQUEST_PROBLEM_INFO] = { MQTT_PT_BYTE, W(MQTT_CONNECT) },
    [MQTT_PROP_WILL_DELAY] = { MQTT_PT_U32, W_WILL },
    [MQTT_PROP_REQUEST_RESPONSE_INFO] = { MQTT_PT_BYTE, W(MQTT_CONNECT) },
    [MQTT_PROP_RESPONSE_INFO] = { MQTT_PT_STR, W(MQTT_CONNACK) },
    [MQTT_PROP_SERVER_REFERENCE] = { MQTT_PT_STR, W(MQTT_CONNACK) | W(MQTT_DISCONNECT) },
    [MQTT_PROP_REASON_STRING] = { MQTT_PT_STR, W_REASON },
    [MQTT_PROP_RECEIVE_MAXIMUM] = { MQTT_PT_U16, W(MQTT_CONNECT) | W(MQTT_CONNACK) },
    [MQTT_PROP_TOPIC_ALIAS_MAXIMUM] = { MQTT_PT_U16, W(MQTT_CONNECT) | W(MQTT_CONNACK) },
    [MQTT_PROP_TOPIC_ALIAS] = { MQTT_PT_U16, W(MQTT_PUBLISH) },
    [MQTT_PROP_MAXIMUM_QOS] = { MQTT_PT_BYTE, W(MQTT_CONNACK) },
    [MQTT_PROP_RETAIN_AVAILABLE] = { MQTT_PT_BYTE, W(MQTT_CONNACK) },
    [MQTT_PROP_USER_PROPERTY] = { MQTT_PT_PAIR, W_ANY },
    [MQTT_PROP_MAXIMUM_PACKET_SIZE] = { MQTT_PT_U32, W(MQTT_CONNECT) | W(MQTT_CONNACK) },
    [MQTT_PROP_WILDCARD_SUB_AVAILABLE] = { MQTT_PT_BYTE, W(MQTT_CONNACK) },
    [MQTT_PROP_SUB_ID_AVAILABLE] = { MQTT_PT_BYTE, W(MQTT_CONNACK) },
    [MQTT_PROP_SHARED_SUB_AVAILABLE] = { MQTT_PT_BYTE, W(MQTT_CONNACK) },
};

#define WHERE_ANY 0xff /* read_prop(): skip the packet check (walking validated bytes) */

uint8_t mqtt_prop_type(uint8_t id)
{
    return id <= MQTT_PROP_ID_MAX ? defs[id].type : MQTT_PT_NONE;
}

int mqtt_prop_allowed(uint8_t where, uint8_t id)
{
    return where <= MQTT_AUTH && mqtt_prop_type(id) != MQTT_PT_NONE
           && (defs[id].where & W(where)) != 0;
}

/* One identifier and its value. The identifier is a Variable Byte Integer (all of 5.0's
 * fit one byte). */
static int read_prop(struct mqtt_reader *r, uint8_t where, struct mqtt_prop *p)
{
    uint32_t id;
    uint16_t u16;
    uint8_t u8;

    memset(p, 0, sizeof *p);
    if (mqtt_rd_varint(r, &id) != 0)
        return -1;
    if (id > MQTT_PROP_ID_MAX || defs[id].type == MQTT_PT_NONE)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "unknown property"); /* §2.2.2.2 */
    if (where != WHERE_ANY && !mqtt_prop_allowed(where, (uint8_t)id))
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "property not allowed on this packet");
    p->id = (uint8_t)id;
    p->type = defs[id].type;
    switch (p->type) {
    case MQTT_PT_BYTE:
        if (mqtt_rd_u8(r, &u8) != 0)
            return -1;
        p->u = u8;
        return 0;
    case MQTT_PT_U16:
        if (mqtt_rd_u16(r, &u16) != 0)
            return -1;
        p->u = u16;
        return 0;
    case MQTT_PT_U32:
        return mqtt_rd_u32(r, &p->u);
    case MQTT_PT_VARINT:
        return mqtt_rd_varint(r, &p->u);
    case MQTT_PT_STR:
        return mqtt_rd_str(r, &p->str);
    case MQTT_PT_BIN:
        return mqtt_rd_bin(r, &p->bin);
    default: /* MQTT_PT_PAIR */
        return mqtt_rd_str(r, &p->str) != 0 ? -1 : mqtt_rd_str(r, &p->value);
    }
}

/* A 0-or-1 byte property ("It is a Protocol Error ... to have a value other than 0 or 1"). */
static int check_bool(struct mqtt_reader *r, const struct mqtt_prop *p, uint8_t *field,
                      const char *why)
{
    if (p->u > 1)
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, why);
    *field = (uint8_t)p->u;
    return 0;
}

void mqtt_props_init(struct mqtt_props *o)
{
    memset(o, 0, sizeof *o);
    o->receive_maximum = 65535;
    o->request_problem_info = 1;
    o->maximum_qos = 2;
    o->retain_available = o->wildcard_sub_available = 1;
    o->sub_id_available = o->shared_sub_available = 1;
}

/* Decodes the property block r (the whole of r) for `where` into *o. */
static int parse_block(struct mqtt_reader *r, uint8_t where, struct mqtt_props *o)
{
    mqtt_props_init(o);
    o->raw.p = r->p;
    o->raw.len = r->len;
    while (r->off < r->len) {
        struct mqtt_prop p;
        uint64_t bit;
        int rc = 0;

        if (read_prop(r, where, &p) != 0)
            return -1;
        bit = (uint64_t)1 << p.id;
        /* Only User Property, and Subscription Identifier in PUBLISH, may repeat: each
         * property's section says including it twice is a Protocol Error. */
        if ((o->present & bit) && p.id != MQTT_PROP_USER_PROPERTY
            && !(p.id == MQTT_PROP_SUBSCRIPTION_ID && where == MQTT_PUBLISH))
            return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "duplicate property");
        o->present |= bit;
        switch (p.id) {
        case MQTT_PROP_PAYLOAD_FORMAT: /* §3.3.2.3.2: 0 or 1 */
            rc = check_bool(r, &p, &o->payload_format, "invalid payload format indicator");
            break;
        case MQTT_PROP_MESSAGE_EXPIRY:
            o->message_expiry_s = p.u;
            break;
        case MQTT_PROP_CONTENT_TYPE:
            o->content_type = p.str;
            break;
        case MQTT_PROP_RESPONSE_TOPIC: /* a Topic Name, no wildcards [MQTT-3.3.2-14] */
            if (p.str.len == 0 || memchr(p.str.p, '+', p.str.len)
                || memchr(p.str.p, '#', p.str.len))
                rc = mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "invalid response topic");
            o->response_topic = p.str;
            break;
        case MQTT_PROP_CORRELATION_DATA:
            o->correlation_data = p.bin;
            break;
        case MQTT_PROP_SUBSCRIPTION_ID: /* 1..268,435,455 (§3.3.2.3.8, §3.8.2.1.2) */
            if (p.u == 0)
                rc = mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "subscription identifier is 0");
            if (o->subscription_id_count++ == 0)
                o->subscription_id = p.u;
            break;
        case MQTT_PROP_SESSION_EXPIRY:
            o->session_expiry_s = p.u;
            break;
        case MQTT_PROP_ASSIGNED_CLIENT_ID:
            o->assigned_client_id = p.str;
            break;
        case MQTT_PROP_SERVER_KEEP_ALIVE:
            o->server_keep_alive_s = (uint16_t)p.u;
            break;
        case MQTT_PROP_AUTH_METHOD:
            o->auth_method = p.str;
            break;
        case MQTT_PROP_AUTH_DATA:
            o->auth_data = p.bin;
            break;
        case MQTT_PROP_REQUEST_PROBLEM_INFO: /* §3.1.2.11.7 */
            rc = check_bool(r, &p, &o->request_problem_info,
                            "invalid request problem information");
            break;
        case MQTT_PROP_WILL_DELAY:
            o->will_delay_s = p.u;
            break;
        case MQTT_PROP_REQUEST_RESPONSE_INFO: /* §3.1.2.11.6 */
            rc = check_bool(r, &p, &o->request_response_info,
                            "invalid request response information");
            break;
        case MQTT_PROP_RESPONSE_INFO:
            o->response_info = p.str;
            break;
        case MQTT_PROP_SERVER_REFERENCE:
            o->server_reference = p.str;
            break;
        case MQTT_PROP_REASON_STRING:
            o->reason_string = p.str;
            break;
        case MQTT_PROP_RECEIVE_MAXIMUM: /* §3.1.2.11.3, §3.2.2.3.3: not 0 */
            if (p.u == 0)
                rc = mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "receive maximum is 0");
            o->receive_maximum = (uint16_t)p.u;
            break;
        case MQTT_PROP_TOPIC_ALIAS_MAXIMUM:
            o->topic_alias_maximum = (uint16_t)p.u;
            break;
        case MQTT_PROP_TOPIC_ALIAS: /* 0 is not permitted [MQTT-3.3.2-8]: Topic Alias invalid */
            if (p.u == 0)
                rc = mqtt_rd_fail(r, MQTT_RC_TOPIC_ALIAS_INVALID, "topic alias is 0");
            o->topic_alias = (uint16_t)p.u;
            break;
        case MQTT_PROP_MAXIMUM_QOS: /* §3.2.2.3.4: 0 or 1 */
            rc = check_bool(r, &p, &o->maximum_qos, "invalid maximum QoS");
            break;
        case MQTT_PROP_RETAIN_AVAILABLE:
            rc = check_bool(r, &p, &o->retain_available, "invalid retain available");
            break;
        case MQTT_PROP_USER_PROPERTY:
            o->user_prop_count++;
            break;
        case MQTT_PROP_MAXIMUM_PACKET_SIZE: /* §3.1.2.11.4, §3.2.2.3.6: not 0 */
            if (p.u == 0)
                rc = mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "maximum packet size is 0");
            o->maximum_packet_size = p.u;
            break;
        case MQTT_PROP_WILDCARD_SUB_AVAILABLE:
            rc = check_bool(r, &p, &o->wildcard_sub_available,
                            "invalid wildcard subscription available");
            break;
        case MQTT_PROP_SUB_ID_AVAILABLE:
            rc = check_bool(r, &p, &o->sub_id_available,
                            "invalid subscription identifiers available");
            break;
        default: /* MQTT_PROP_SHARED_SUB_AVAILABLE */
            rc = check_bool(r, &p, &o->shared_sub_available,
                            "invalid shared subscription available");
            break;
        }
        if (rc != 0)
            return -1;
    }
    /* §3.1.2.11.10, §3.2.2.3.17, §3.15.2.2.3 */
    if (mqtt_props_has(o, MQTT_PROP_AUTH_DATA) && !mqtt_props_has(o, MQTT_PROP_AUTH_METHOD))
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "authentication data without method");
    return 0;
}

int mqtt_props_read(struct mqtt_reader *r, uint8_t where, struct mqtt_props *out)
{
    struct mqtt_reader block;
    uint32_t n;

    if (mqtt_rd_varint(r, &n) != 0)
        return -1;
    if (n > r->len - r->off)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "property length past the packet");
    block = (struct mqtt_reader){ r->p + r->off, n, 0, NULL, MQTT_RC_MALFORMED_PACKET };
    if (parse_block(&block, where, out) != 0)
        return mqtt_rd_fail(r, block.rc, block.why);
    r->off += n;
    return 0;
}

int mqtt_props_parse(uint8_t where, const uint8_t *p, size_t len, struct mqtt_props *out,
                     const char **why)
{
    struct mqtt_reader r = { p, len, 0, NULL, MQTT_RC_MALFORMED_PACKET };
    struct mqtt_props tmp;

    if (parse_block(&r, where, out ? out : &tmp) != 0) {
        *why = r.why;
        return r.rc;
    }
    return 0;
}

int mqtt_prop_next(const struct mqtt_props *ps, size_t *off, struct mqtt_prop *p)
{
    struct mqtt_reader r = { ps->raw.p, ps->raw.len, *off, NULL, 0 };

    if (*off >= ps->raw.len || read_prop(&r, WHERE_ANY, p) != 0)
        return 0;
    *off = r.off;
    return 1;
}

int mqtt_prop_find(const struct mqtt_props *ps, uint8_t id, size_t *off, struct mqtt_prop *p)
{
    while (mqtt_prop_next(ps, off, p))
        if (p->id == id)
            return 1;
    return 0;
}

/* ---- builder */

static void put_id(struct buf *b, uint8_t id)
{
    buf_append(b, &id, 1); /* every 5.0 identifier is < 128: a one-byte varint */
}

int mqtt_prop_put_int(struct buf *b, uint8_t id, uint32_t v)
{
    uint8_t w[4];
    size_t n;

    switch (mqtt_prop_type(id)) {
    case MQTT_PT_BYTE:
        if (v > 0xff)
            return GW_EINVAL;
        w[0] = (uint8_t)v;
        n = 1;
        break;
    case MQTT_PT_U16:
        if (v > 0xffff)
            return GW_EINVAL;
        w[0] = (uint8_t)(v >> 8);
        w[1] = (uint8_t)v;
        n = 2;
        break;
    case MQTT_PT_U32:
        w[0] = (uint8_t)(v >> 24);
        w[1] = (uint8_t)(v >> 16);
        w[2] = (uint8_t)(v >> 8);
        w[3] = (uint8_t)v;
        n = 4;
        break;
    case MQTT_PT_VARINT: /* Subscription Identifier: 1..268,435,455 */
        if (v == 0 || v > MQTT_MAX_REMAINING)
            return GW_EINVAL;
        n = mqtt_varint_put(w, v);
        break;
    default:
        return GW_EINVAL;
    }
    put_id(b, id);
    buf_append(b, w, n);
    return 0;
}

int mqtt_prop_put_str(struct buf *b, uint8_t id, const char *s, size_t len)
{
    if (mqtt_prop_type(id) != MQTT_PT_STR || len > MQTT_MAX_STRING)
        return GW_EINVAL;
    put_id(b, id);
    mqtt_put_field(b, s, len);
    return 0;
}

int mqtt_prop_put_bin(struct buf *b, uint8_t id, const void *p, size_t len)
{
    if (mqtt_prop_type(id) != MQTT_PT_BIN || len > MQTT_MAX_STRING)
        return GW_EINVAL;
    put_id(b, id);
    mqtt_put_field(b, p, len);
    return 0;
}

int mqtt_prop_put_user(struct buf *b, const char *name, size_t name_len, const char *value,
                       size_t value_len)
{
    if (name_len > MQTT_MAX_STRING || value_len > MQTT_MAX_STRING)
        return GW_EINVAL;
    put_id(b, MQTT_PROP_USER_PROPERTY);
    mqtt_put_field(b, name, name_len);
    mqtt_put_field(b, value, value_len);
    return 0;
}

int mqtt_prop_put(struct buf *b, const struct mqtt_prop *p)
{
    if (mqtt_prop_type(p->id) != p->type)
        return GW_EINVAL;
    switch (p->type) {
    case MQTT_PT_STR:
        return mqtt_prop_put_str(b, p->id, p->str.p, p->str.len);
    case MQTT_PT_BIN:
        return mqtt_prop_put_bin(b, p->id, p->bin.p, p->bin.len);
    case MQTT_PT_PAIR:
        return mqtt_prop_put_user(b, p->str.p, p->str.len, p->value.p, p->value.len);
    default:
        return mqtt_prop_put_int(b, p->id, p->u);
    }
}
