/* protocols/mqtt/codec5.c: MQTT 5.0 packet bodies (decoder and encoders) and reason codes.
 * Pure: no I/O, no clock, no globals, no allocation on the decode path; any thread.
 *
 * codec.c reads the fixed header for every version (in 5.0 also AUTH, and a remaining
 * length that must be minimal) and hands a 5.0 body here through the shared struct
 * mqtt_reader: the 5.0 variable header differs from 3.1.1 by the properties after it
 * (props.c), reason codes in CONNACK, the acks, SUBACK, UNSUBACK, DISCONNECT and AUTH
 * (checked against the list the spec gives for the packet type), subscription options
 * in SUBSCRIBE, and a PUBLISH topic that may be empty when a Topic Alias stands for it.
 * Every refusal carries the reason code 5.0 sends with it (§4.13): a Malformed Packet
 * (0x81) for bytes that do not parse as the spec says, a Protocol Error (0x82) for
 * parsed values the spec forbids, and the specific codes where the spec names one.
 * The encoders compute the remaining length first and check their properties with
 * the decoder's rules, so they append one packet the decoder accepts, or nothing.
 *
 * Rule ids in comments ([MQTT-x.x.x-y]) and sections (§) refer to MQTT Version 5.0. */
#include "protocols/mqtt/mqtt.h"

#include <string.h>

#include "base/err.h"
#include "protocols/mqtt/mqtt_int.h"

/* ---- reason codes (§2.4) */

struct rc_name {
    uint8_t rc;
    const char *name;
};

static const struct rc_name rc_names[] = {
    { 0x00, "Success" },
    { 0x01, "Granted QoS 1" },
    { 0x02, "Granted QoS 2" },
    { 0x04, "Disconnect with Will Message" },
    { 0x10, "No matching subscribers" },
    { 0x11, "No subscription existed" },
    { 0x18, "Continue authentication" },
    { 0x19, "Re-authenticate" },
    { 0x80, "Unspecified error" },
    { 0x81, "Malformed Packet" },
    { 0x82, "Protocol Error" },
    { 0x83, "Implementation specific error" },
    { 0x84, "Unsupported Protocol Version" },
    { 0x85, "Client Identifier not valid" },
    { 0x86, "Bad User Name or Password" },
    { 0x87, "Not authorized" },
    { 0x88, "Server unavailable" },
    { 0x89, "Server busy" },
    { 0x8A, "Banned" },
    { 0x8B, "Server shutting down" },
    { 0x8C, "Bad authentication method" },
    { 0x8D, "Keep Alive timeout" },
    { 0x8E, "Session taken over" },
    { 0x8F, "Topic Filter invalid" },
    { 0x90, "Topic Name invalid" },
    { 0x91, "Packet Identifier in use" },
    { 0x92, "Packet Identifier not found" },
    { 0x93, "Receive Maximum exceeded" },
    { 0x94, "Topic Alias invalid" },
    { 0x95, "Packet too large" },
    { 0x96, "Message rate too high" },
    { 0x97, "Quota exceeded" },
    { 0x98, "Administrative action" },
    { 0x99, "Payload format invalid" },
    { 0x9A, "Retain not supported" },
    { 0x9B, "QoS not supported" },
    { 0x9C, "Use another server" },
    { 0x9D, "Server moved" },
    { 0x9E, "Shared Subscriptions not supported" },
    { 0x9F, "Connection rate exceeded" },
    { 0xA0, "Maximum connect time" },
    { 0xA1, "Subscription Identifiers not supported" },
    { 0xA2, "Wildcard Subscriptions not supported" },
};

const char *mqtt_rc_name(uint8_t rc)
{
    size_t i;

    for (i = 0; i < sizeof rc_names / sizeof rc_names[0]; i++)
        if (rc_names[i].rc == rc)
            return rc_names[i].name;
    return "?";
}

/* The reason codes each packet type may carry (§3.2.2.2, §3.4.2.1, §3.5.2.1, §3.6.2.1,
 * §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1, §3.15.2.1), NUL-terminated after 0x00. */
static const uint8_t rc_connack[] = { 0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
                                      0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A,
                                      0x9B, 0x9C, 0x9D, 0x9F, 0 };
static const uint8_t rc_puback[] = { 0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99, 0 };
static const uint8_t rc_pubrel[] = { 0x00, 0x92, 0 };
static const uint8_t rc_suback[] = { 0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97,
                                     0x9E, 0xA1, 0xA2, 0 };
static const uint8_t rc_unsuback[] = { 0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91, 0 };
static const uint8_t rc_disconnect[] = { 0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89,
                                         0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
                                         0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D,
                                         0x9E, 0x9F, 0xA0, 0xA1, 0xA2, 0 };
static const uint8_t rc_auth[] = { 0x00, 0x18, 0x19, 0 };

int mqtt_rc_allowed(uint8_t type, uint8_t rc)
{
    const uint8_t *l;

    switch (type) {
    case MQTT_CONNACK: l = rc_connack; break;
    case MQTT_PUBACK:
    case MQTT_PUBREC: l = rc_puback; break;
    case MQTT_PUBREL:
    case MQTT_PUBCOMP: l = rc_pubrel; break;
    case MQTT_SUBACK: l = rc_suback; break;
    case MQTT_UNSUBACK: l = rc_unsuback; break;
    case MQTT_DISCONNECT: l = rc_disconnect; break;
    case MQTT_AUTH: l = rc_auth; break;
    default: return 0;
    }
    if (rc == 0)
        return 1;
    for (l++; *l; l++)
        if (*l == rc)
            return 1;
    return 0;
}

int mqtt_filter_share(const char *filter, size_t len, struct mqtt_str *share_name,
                      struct mqtt_str *share_filter)
{
    const char *name, *slash;
    size_t name_len;

    if (len < 7 || memcmp(filter, "$share/", 7) != 0)
        return 0;
    name = filter + 7;
    slash = memchr(name, '/', len - 7);
    if (slash == NULL) /* [MQTT-4.8.2-2]: the share name is followed by "/" */
        return -1;
    name_len = (size_t)(slash - name);
    /* [MQTT-4.8.2-1] at least one character; [MQTT-4.8.2-2] no "/", "+" or "#" */
    if (name_len == 0 || memchr(name, '+', name_len) || memchr(name, '#', name_len))
        return -1;
    share_name->p = name;
    share_name->len = name_len;
    share_filter->p = slash + 1;
    share_filter->len = len - 7 - name_len - 1;
    if (!mqtt_filter_valid(share_filter->p, share_filter->len))
        return -1; /* "/" followed by a Topic Filter */
    return 1;
}

/* ---- decoding */

long mqtt_fixed_remaining5(uint8_t type)
{
    return type == MQTT_PINGREQ || type == MQTT_PINGRESP ? 0 : -1;
}

static int read_reason(struct mqtt_reader *r, uint8_t type, uint8_t *rc)
{
    if (mqtt_rd_u8(r, rc) != 0)
        return -1;
    if (!mqtt_rc_allowed(type, *rc))
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid reason code");
    return 0;
}

int mqtt_decode_connect5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    struct mqtt_connect *c = &pkt->connect;
    uint8_t f;

    mqtt_props_init(&pkt->will_props);
    if (mqtt_rd_u8(r, &f) != 0 || mqtt_rd_u16(r, &c->keepalive_s) != 0)
        return -1;
    c->flags = f;
    if (f & MQTT_CF_RESERVED) /* [MQTT-3.1.2-3] */
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "reserved CONNECT flag set");
    c->clean_session = (f & MQTT_CF_CLEAN) != 0; /* Clean Start */
    c->will = (f & MQTT_CF_WILL) != 0;
    c->will_qos = (f & MQTT_CF_WILL_QOS_MASK) >> MQTT_CF_WILL_QOS_SHIFT;
    c->will_retain = (f & MQTT_CF_WILL_RETAIN) != 0;
    c->has_username = (f & MQTT_CF_USERNAME) != 0;
    c->has_password = (f & MQTT_CF_PASSWORD) != 0; /* allowed without a user name */
    if (!c->will && (c->will_qos != 0 || c->will_retain)) /* [MQTT-3.1.2-11] [MQTT-3.1.2-13] */
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "will QoS or retain without will flag");
    if (c->will_qos == 3) /* [MQTT-3.1.2-12] */
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid will QoS");
    if (mqtt_props_read(r, MQTT_CONNECT, &pkt->props) != 0)
        return -1;
    /* Payload order: client id, will properties, will topic, will payload, user name,
     * password [MQTT-3.1.3-1]. */
    if (mqtt_rd_str(r, &c->client_id) != 0)
        return -1;
    if (c->will) {
        if (mqtt_props_read(r, MQTT_PROPS_WILL, &pkt->will_props) != 0
            || mqtt_rd_str(r, &c->will_topic) != 0
            || mqtt_rd_check_topic(r, &c->will_topic, "invalid will topic") != 0
            || mqtt_rd_bin(r, &c->will_payload) != 0)
            return -1;
    }
    if (c->has_username && mqtt_rd_str(r, &c->username) != 0)
        return -1;
    if (c->has_password && mqtt_rd_bin(r, &c->password) != 0)
        return -1;
    return mqtt_rd_end(r);
}

static int decode_connack5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    struct mqtt_connack *a = &pkt->connack;
    uint8_t f;

    if (mqtt_rd_u8(r, &f) != 0)
        return -1;
    if (f & 0xfe) /* bits 7-1 reserved [MQTT-3.2.2-1] */
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid CONNACK flags");
    a->session_present = f & 1;
    if (read_reason(r, MQTT_CONNACK, &a->rc) != 0)
        return -1;
    if (a->session_present && a->rc >= 0x80) /* [MQTT-3.2.2-6] */
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "session present with a refusal");
    if (mqtt_props_read(r, MQTT_CONNACK, &pkt->props) != 0)
        return -1;
    return mqtt_rd_end(r);
}

static int decode_publish5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    struct mqtt_publish *pub = &pkt->publish;

    pub->qos = (pkt->flags >> MQTT_PUBLISH_QOS_SHIFT) & 3;
    pub->dup = (pkt->flags & MQTT_PUBLISH_DUP) != 0;
    pub->retain = (pkt->flags & MQTT_PUBLISH_RETAIN) != 0;
    if (mqtt_rd_str(r, &pub->topic) != 0)
        return -1;
    if (pub->topic.len > 0 /* no wildcards [MQTT-3.3.2-2] */
        && mqtt_rd_check_topic(r, &pub->topic, "invalid topic name") != 0)
        return -1;
    if (pub->qos > 0 && mqtt_rd_packet_id(r, &pkt->id) != 0)
        return -1;
    if (mqtt_props_read(r, MQTT_PUBLISH, &pkt->props) != 0)
        return -1;
    if (pub->topic.len == 0 && !mqtt_props_has(&pkt->props, MQTT_PROP_TOPIC_ALIAS))
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "empty topic without topic alias");
    pub->payload = r->p + r->off; /* the rest, possibly empty (§3.3.3) */
    pub->payload_len = r->len - r->off;
    r->off = r->len;
    return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP: with a remaining length of 2 the reason code is 0x00
 * and there are no properties; below 4 there is no Property Length (§3.4.2.1). */
static int decode_ack5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    if (mqtt_rd_packet_id(r, &pkt->id) != 0)
        return -1;
    if (r->off < r->len && read_reason(r, pkt->type, &pkt->reason) != 0)
        return -1;
    if (r->off < r->len && mqtt_props_read(r, pkt->type, &pkt->props) != 0)
        return -1;
    return mqtt_rd_end(r);
}

/* DISCONNECT and AUTH: remaining length 0 means reason code 0x00 and no properties, 1 the
 * reason code alone (§3.14.2.1, §3.15.2.1). */
static int decode_reason_only(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    if (r->off < r->len && read_reason(r, pkt->type, &pkt->reason) != 0)
        return -1;
    if (r->off < r->len && mqtt_props_read(r, pkt->type, &pkt->props) != 0)
        return -1;
    return mqtt_rd_end(r);
}

/* One SUBSCRIBE entry's options byte (§3.8.3.1). */
static int check_options(struct mqtt_reader *r, uint8_t o, int shared)
{
    if (o & MQTT_SUBOPT_RESERVED) /* [MQTT-3.8.3-5] */
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "reserved subscription option bits");
    if ((o & MQTT_SUBOPT_QOS_MASK) == 3)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid requested QoS");
    if ((o & MQTT_SUBOPT_RETAIN_HANDLING_MASK) >> MQTT_SUBOPT_RETAIN_HANDLING_SHIFT == 3)
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "invalid retain handling");
    if (shared && (o & MQTT_SUBOPT_NO_LOCAL)) /* [MQTT-3.8.3-4] */
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "no local on a shared subscription");
    return 0;
}

/* SUBSCRIBE (with an options byte per filter) and UNSUBSCRIBE. */
static int decode_filters5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    struct mqtt_subscribe *s = &pkt->subscribe;
    int with_opts = pkt->type == MQTT_SUBSCRIBE;

    if (mqtt_rd_packet_id(r, &pkt->id) != 0
        || mqtt_props_read(r, pkt->type, &pkt->props) != 0)
        return -1;
    s->list = r->p + r->off;
    s->list_len = r->len - r->off;
    s->count = 0;
    while (r->off < r->len) {
        struct mqtt_str f, name, rest;
        int shared;
        uint8_t o;

        if (mqtt_rd_str(r, &f) != 0)
            return -1;
        if (!mqtt_filter_valid(f.p, f.len)) /* [MQTT-4.7.1-1] [MQTT-4.7.3-1] */
            return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid topic filter");
        shared = mqtt_filter_share(f.p, f.len, &name, &rest);
        if (shared < 0) /* [MQTT-4.8.2-1,2] */
            return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR, "invalid shared subscription filter");
        if (with_opts && (mqtt_rd_u8(r, &o) != 0 || check_options(r, o, shared) != 0))
            return -1;
        s->count++;
    }
    if (s->count == 0) /* [MQTT-3.8.3-2] [MQTT-3.10.3-2]: a Protocol Error */
        return mqtt_rd_fail(r, MQTT_RC_PROTOCOL_ERROR,
                            with_opts ? "SUBSCRIBE without filters"
                                      : "UNSUBSCRIBE without filters");
    return 0;
}

/* SUBACK and UNSUBACK: properties, then a reason code per filter. */
static int decode_codes5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    size_t i;

    if (mqtt_rd_packet_id(r, &pkt->id) != 0
        || mqtt_props_read(r, pkt->type, &pkt->props) != 0)
        return -1;
    pkt->suback.codes = r->p + r->off;
    pkt->suback.count = r->len - r->off;
    r->off = r->len;
    if (pkt->suback.count == 0)
        return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "no reason codes");
    for (i = 0; i < pkt->suback.count; i++)
        if (!mqtt_rc_allowed(pkt->type, pkt->suback.codes[i]))
            return mqtt_rd_fail(r, MQTT_RC_MALFORMED_PACKET, "invalid reason code");
    return 0;
}

int mqtt_decode_body5(struct mqtt_reader *r, struct mqtt_packet *pkt)
{
    mqtt_props_init(&pkt->props);
    switch (pkt->type) {
    case MQTT_CONNACK:
        return decode_connack5(r, pkt);
    case MQTT_PUBLISH:
        return decode_publish5(r, pkt);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return decode_ack5(r, pkt);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return decode_filters5(r, pkt);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return decode_codes5(r, pkt);
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return decode_reason_only(r, pkt);
    default: /* PINGREQ, PINGRESP: empty, size checked with the header */
        return 0;
    }
}

/* ---- encoders */

/* Bytes the properties take with their length; 0 when they do not fit a packet. */
static size_t props_size(const struct mqtt_bin *props)
{
    size_t n = props ? props->len : 0;

    return n > MQTT_MAX_REMAINING ? 0 : mqtt_varint_size((uint32_t)n) + n;
}

/* 1 when props (NULL = none) are valid properties of `where`; *out (may be NULL) gets them. */
static int props_ok(uint8_t where, const struct mqtt_bin *props, struct mqtt_props *out)
{
    struct mqtt_props tmp;
    const char *why;

    if (props && props->len > MQTT_MAX_REMAINING)
        return 0;
    return mqtt_props_parse(where, props ? props->p : NULL, props ? props->len : 0,
                            out ? out : &tmp, &why) == 0;
}

static void put_props(struct buf *out, const struct mqtt_bin *props)
{
    size_t n = props ? props->len : 0;
    uint8_t v[4];

    buf_append(out, v, mqtt_varint_put(v, (uint32_t)n));
    if (n)
        buf_append(out, props->p, n);
}

int mqtt_encode_connect5(struct buf *out, const struct mqtt_connect *c,
                         const struct mqtt_bin *props, const struct mqtt_bin *will_props)
{
    uint8_t level = MQTT_V5, f = 0;
    size_t rem;

    if (c->client_id.len > MQTT_MAX_STRING || !props_ok(MQTT_CONNECT, props, NULL)
        || (c->will && (c->will_qos > 2 || c->will_topic.len > MQTT_MAX_STRING
                        || c->will_payload.len > MQTT_MAX_STRING
                        || !props_ok(MQTT_PROPS_WILL, will_props, NULL)))
        || (c->has_username && c->username.len > MQTT_MAX_STRING)
        || (c->has_password && c->password.len > MQTT_MAX_STRING))
        return GW_EINVAL;
    rem = 2 + 4 + 1 + 1 + 2 + props_size(props) + 2 + c->client_id.len;
    if (c->will) {
        rem += props_size(will_props) + 2 + c->will_topic.len + 2 + c->will_payload.len;
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
    if (rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    f |= c->clean_session ? MQTT_CF_CLEAN : 0;
    mqtt_put_fixed(out, MQTT_HDR(MQTT_CONNECT, 0), rem);
    mqtt_put_field(out, "MQTT", 4);
    buf_append(out, &level, 1);
    buf_append(out, &f, 1);
    mqtt_put_u16(out, c->keepalive_s);
    put_props(out, props);
    mqtt_put_field(out, c->client_id.p, c->client_id.len);
    if (c->will) {
        put_props(out, will_props);
        mqtt_put_field(out, c->will_topic.p, c->will_topic.len);
        mqtt_put_field(out, c->will_payload.p, c->will_payload.len);
    }
    if (c->has_username)
        mqtt_put_field(out, c->username.p, c->username.len);
    if (c->has_password)
        mqtt_put_field(out, c->password.p, c->password.len);
    return 0;
}

int mqtt_encode_connack5(struct buf *out, bool session_present, uint8_t rc,
                         const struct mqtt_bin *props)
{
    uint8_t b[2] = { session_present ? 1 : 0, rc };
    size_t rem = 2 + props_size(props);

    /* A refusal never claims a session [MQTT-3.2.2-6]. */
    if (!mqtt_rc_allowed(MQTT_CONNACK, rc) || (session_present && rc >= 0x80)
        || !props_ok(MQTT_CONNACK, props, NULL) || rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    mqtt_put_fixed(out, MQTT_HDR(MQTT_CONNACK, 0), rem);
    buf_append(out, b, 2);
    put_props(out, props);
    return 0;
}

int mqtt_encode_publish5_header(struct buf *out, const char *topic, size_t topic_len,
                                const struct mqtt_bin *props, size_t payload_len, uint8_t qos,
                                bool retain, bool dup, uint16_t id)
{
    struct mqtt_props ps;
    size_t rem;
    uint8_t f;

    if (qos > 2 || (qos > 0 && id == 0) || (qos == 0 && dup) || topic_len > MQTT_MAX_STRING
        || payload_len > MQTT_MAX_REMAINING || !props_ok(MQTT_PUBLISH, props, &ps)
        || (topic_len == 0 && !mqtt_props_has(&ps, MQTT_PROP_TOPIC_ALIAS)))
        return GW_EINVAL;
    rem = 2 + topic_len + (qos ? 2 : 0) + props_size(props) + payload_len;
    if (rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    f = (uint8_t)(qos << MQTT_PUBLISH_QOS_SHIFT) | (dup ? MQTT_PUBLISH_DUP : 0)
        | (retain ? MQTT_PUBLISH_RETAIN : 0);
    mqtt_put_fixed(out, MQTT_HDR(MQTT_PUBLISH, f), rem);
    mqtt_put_field(out, topic, topic_len);
    if (qos)
        mqtt_put_u16(out, id);
    put_props(out, props);
    return 0;
}

int mqtt_encode_publish5(struct buf *out, const char *topic, size_t topic_len,
                         const struct mqtt_bin *props, const uint8_t *payload,
                         size_t payload_len, uint8_t qos, bool retain, bool dup, uint16_t id)
{
    int rc = mqtt_encode_publish5_header(out, topic, topic_len, props, payload_len, qos, retain,
                                         dup, id);
    if (rc == 0 && payload_len)
        buf_append(out, payload, payload_len);
    return rc;
}

int mqtt_encode_ack5(struct buf *out, uint8_t type, uint16_t id, uint8_t rc,
                     const struct mqtt_bin *props)
{
    size_t n = props ? props->len : 0, rem;

    if ((type != MQTT_PUBACK && type != MQTT_PUBREC && type != MQTT_PUBREL
         && type != MQTT_PUBCOMP)
        || id == 0 || !mqtt_rc_allowed(type, rc) || !props_ok(type, props, NULL))
        return GW_EINVAL;
    rem = n ? 3 + props_size(props) : rc ? 3 : 2;
    if (rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    mqtt_put_fixed(out, MQTT_HDR(type, type == MQTT_PUBREL ? MQTT_FLAGS_RESERVED_0010 : 0), rem);
    mqtt_put_u16(out, id);
    if (rem > 2)
        buf_append(out, &rc, 1);
    if (n)
        put_props(out, props);
    return 0;
}

int mqtt_encode_subscribe5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                           const struct mqtt_sub_req5 *subs, size_t n)
{
    size_t rem = 2 + props_size(props), i;

    if (id == 0 || n == 0 || !props_ok(MQTT_SUBSCRIBE, props, NULL))
        return GW_EINVAL;
    for (i = 0; i < n; i++) {
        uint8_t o = subs[i].options;
        if (subs[i].filter.len > MQTT_MAX_STRING || (o & MQTT_SUBOPT_RESERVED)
            || (o & MQTT_SUBOPT_QOS_MASK) == 3
            || (o & MQTT_SUBOPT_RETAIN_HANDLING_MASK) == MQTT_SUBOPT_RETAIN_HANDLING_MASK)
            return GW_EINVAL;
        rem += 2 + subs[i].filter.len + 1;
        if (rem > MQTT_MAX_REMAINING)
            return GW_EINVAL;
    }
    mqtt_put_fixed(out, MQTT_HDR(MQTT_SUBSCRIBE, MQTT_FLAGS_RESERVED_0010), rem);
    mqtt_put_u16(out, id);
    put_props(out, props);
    for (i = 0; i < n; i++) {
        mqtt_put_field(out, subs[i].filter.p, subs[i].filter.len);
        buf_append(out, &subs[i].options, 1);
    }
    return 0;
}

int mqtt_encode_unsubscribe5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                             const struct mqtt_str *filters, size_t n)
{
    size_t rem = 2 + props_size(props), i;

    if (id == 0 || n == 0 || !props_ok(MQTT_UNSUBSCRIBE, props, NULL))
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
    put_props(out, props);
    for (i = 0; i < n; i++)
        mqtt_put_field(out, filters[i].p, filters[i].len);
    return 0;
}

static int encode_codes(struct buf *out, uint8_t type, uint16_t id,
                        const struct mqtt_bin *props, const uint8_t *codes, size_t n)
{
    size_t rem = 2 + props_size(props) + n, i;

    if (id == 0 || n == 0 || n > MQTT_MAX_REMAINING || rem > MQTT_MAX_REMAINING
        || !props_ok(type, props, NULL))
        return GW_EINVAL;
    for (i = 0; i < n; i++)
        if (!mqtt_rc_allowed(type, codes[i]))
            return GW_EINVAL;
    mqtt_put_fixed(out, MQTT_HDR(type, 0), rem);
    mqtt_put_u16(out, id);
    put_props(out, props);
    buf_append(out, codes, n);
    return 0;
}

int mqtt_encode_suback5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                        const uint8_t *codes, size_t n)
{
    return encode_codes(out, MQTT_SUBACK, id, props, codes, n);
}

int mqtt_encode_unsuback5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                          const uint8_t *codes, size_t n)
{
    return encode_codes(out, MQTT_UNSUBACK, id, props, codes, n);
}

static int encode_reason_only(struct buf *out, uint8_t type, uint8_t rc,
                              const struct mqtt_bin *props)
{
    size_t n = props ? props->len : 0, rem;

    if (!mqtt_rc_allowed(type, rc) || !props_ok(type, props, NULL))
        return GW_EINVAL;
    rem = n ? 1 + props_size(props) : rc ? 1 : 0;
    if (rem > MQTT_MAX_REMAINING)
        return GW_EINVAL;
    mqtt_put_fixed(out, MQTT_HDR(type, 0), rem);
    if (rem)
        buf_append(out, &rc, 1);
    if (n)
        put_props(out, props);
    return 0;
}

int mqtt_encode_disconnect5(struct buf *out, uint8_t rc, const struct mqtt_bin *props)
{
    return encode_reason_only(out, MQTT_DISCONNECT, rc, props);
}

int mqtt_encode_auth(struct buf *out, uint8_t rc, const struct mqtt_bin *props)
{
    return encode_reason_only(out, MQTT_AUTH, rc, props);
}
