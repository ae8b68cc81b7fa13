/* protocols/mqtt/mqtt.h: the pure parts of Gale's MQTT server, as other modules call them.
 *
 * - mqtt_decode(): an incremental, allocation-free decoder of MQTT 3.1.1 control
 *   packets (all 14 types, both directions). It reads at most one packet from the
 *   bytes it is given, rejects a declared size over the limit as soon as the fixed
 *   header is known, and returns CODEC_NEED_MORE, CODEC_FRAME or CODEC_ERROR with a
 *   static reason. A decoded packet is a set of views into the input: valid until
 *   the caller consumes those bytes.
 * - mqtt_encode_*(): append one packet to a struct buf; used by the server handler
 *   (CONNACK, PUBLISH, acks), and by test clients (CONNECT, SUBSCRIBE...).
 * - mqtt_topic_valid(), mqtt_filter_valid(), mqtt_topic_matches(): topic names and
 *   filters, validation and matching.
 * - mqtt_router_*: subscriptions by topic filter (a trie of levels with + and #
 *   children) mapping a published topic to each subscriber once, with its QoS.
 *
 * Protocol version: struct mqtt_limits carries the connection's protocol level, so
 * MQTT 5.0 can be added to the same decoder (properties, reason codes) later: reason
 * and return codes are uint8_t, and packets keep a view of their property bytes.
 * Today levels 3 (MQTT 3.1, "MQIsdp") and 4 (3.1.1) decode with 3.1.1 rules.
 *
 * Threads: everything here is pure or owned by one thread (the loop); a router is
 * not thread-safe. */
#ifndef GALE_MQTT_H
#define GALE_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "protocols/codec.h"

/* Protocol levels (CONNECT "protocol level" byte). */
enum mqtt_version {
    MQTT_V_UNKNOWN = 0, /* before CONNECT: decode with 3.1.1 rules */
    MQTT_V31 = 3,       /* MQTT 3.1, protocol name "MQIsdp" */
    MQTT_V311 = 4,      /* MQTT 3.1.1, protocol name "MQTT" */
    MQTT_V5 = 5,        /* MQTT 5.0: recognised in CONNECT only, not yet decoded */
};

/* Control packet types (high nibble of the first byte). */
enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
    /* 15 is AUTH in MQTT 5.0 and reserved in 3.1.1 */
};

/* CONNACK return codes (3.1.1 §3.2.2.3); a uint8_t so 5.0 reason codes fit. */
enum mqtt_connack_rc {
    MQTT_CONNACK_ACCEPTED = 0x00,
    MQTT_CONNACK_BAD_VERSION = 0x01,     /* unacceptable protocol version */
    MQTT_CONNACK_ID_REJECTED = 0x02,     /* identifier rejected */
    MQTT_CONNACK_UNAVAILABLE = 0x03,     /* server unavailable */
    MQTT_CONNACK_BAD_CREDENTIALS = 0x04, /* bad user name or password */
    MQTT_CONNACK_NOT_AUTHORIZED = 0x05,
};

/* SUBACK return codes: the granted QoS 0..2, or failure. */
#define MQTT_SUBACK_FAILURE 0x80

/* Largest remaining length a 4-byte varint can carry (268,435,455). */
#define MQTT_MAX_REMAINING 268435455u
/* Largest UTF-8 string / binary field (2-byte length prefix). */
#define MQTT_MAX_STRING 65535u

/* Decoder inputs; one per connection (the version changes once CONNECT is accepted). */
struct mqtt_limits {
    size_t max_packet_bytes; /* whole packet incl. fixed header; 0 = protocol maximum */
    uint8_t version;         /* enum mqtt_version of the connection; 0 before CONNECT */
};

/* A view of a UTF-8 string inside the decoder's input (not NUL-terminated). */
struct mqtt_str {
    const char *p; /* NULL or points into the input when len is 0 */
    size_t len;    /* bytes */
};

/* A view of binary data inside the decoder's input. */
struct mqtt_bin {
    const uint8_t *p;
    size_t len; /* bytes */
};

struct mqtt_connect {
    struct mqtt_str proto_name; /* "MQTT" or "MQIsdp" */
    uint8_t level;              /* enum mqtt_version; see mqtt_decode() for levels != 3, 4 */
    uint8_t flags;              /* raw connect flags byte */
    bool clean_session;
    uint16_t keepalive_s;       /* seconds; 0 = no keep alive */
    struct mqtt_str client_id;  /* may be empty */
    bool will;                  /* will flag: will_topic/will_payload present */
    uint8_t will_qos;           /* 0..2 */
    bool will_retain;
    struct mqtt_str will_topic;   /* valid topic name (non-empty, no wildcards) */
    struct mqtt_bin will_payload; /* may be empty */
    bool has_username, has_password;
    struct mqtt_str username;
    struct mqtt_bin password;   /* binary data in 3.1.1 */
    struct mqtt_bin will_props; /* 5.0 will properties; always empty today */
};

struct mqtt_connack {
    bool session_present;
    uint8_t rc;                 /* enum mqtt_connack_rc */
};

struct mqtt_publish {
    struct mqtt_str topic;      /* valid topic name: non-empty, UTF-8, no wildcards */
    const uint8_t *payload;     /* view; may be empty (then possibly NULL) */
    size_t payload_len;         /* bytes */
    uint8_t qos;                /* 0..2; packet id in mqtt_packet.id when > 0 */
    bool retain, dup;
};

/* SUBSCRIBE and UNSUBSCRIBE: the validated filter list, walked with mqtt_filter_next(). */
struct mqtt_subscribe {
    const uint8_t *list;        /* view of the payload: (len16, filter[, options]) entries */
    size_t list_len;            /* bytes */
    size_t count;               /* filters, >= 1 */
};

/* SUBACK: one return code per filter (0, 1, 2 or MQTT_SUBACK_FAILURE). */
struct mqtt_suback {
    const uint8_t *codes;       /* view */
    size_t count;               /* >= 1 */
};

struct mqtt_packet {
    uint8_t type;               /* enum mqtt_type */
    uint8_t flags;              /* low nibble of the first byte */
    uint16_t id;                /* packet identifier when the type has one, else 0 */
    struct mqtt_bin props;      /* 5.0 properties (raw); always empty today */
    union {
        struct mqtt_connect connect;     /* CONNECT */
        struct mqtt_connack connack;     /* CONNACK */
        struct mqtt_publish publish;     /* PUBLISH */
        struct mqtt_subscribe subscribe; /* SUBSCRIBE, UNSUBSCRIBE */
        struct mqtt_suback suback;       /* SUBACK */
    };
};

/* Decodes at most one packet from p[0..len).
 * CODEC_FRAME: *pkt is filled (views into p) and *used is the bytes the packet spans.
 * CODEC_NEED_MORE: nothing is filled; call again with more bytes (p[0..len) unchanged).
 * CODEC_ERROR: *why is a static reason; the connection must be closed. Sizes over
 * lim->max_packet_bytes are rejected as soon as the remaining length (or enough of it)
 * has arrived, before the body.
 * Every normative 3.1.1 rule a decoder can check is enforced (reserved flags, QoS,
 * packet ids, UTF-8 strings, topic names and filters, CONNECT flag consistency,
 * exact sizes). CONNECT with protocol name "MQTT" or "MQIsdp" and a level other than
 * 4 ("MQTT") or 3 ("MQIsdp") is returned as a frame with only proto_name and level
 * filled, so the handler can answer CONNACK 0x01 [MQTT-3.1.2-2]; any other protocol
 * name is an error. The decoder is direction-agnostic and stateless: which packets
 * are allowed when (CONNECT first [MQTT-3.1.0-1] and once [MQTT-3.1.0-2], no CONNACK,
 * SUBACK, UNSUBACK or PINGRESP to a server) is the handler's business, as are the
 * CONNECT checks that need policy: an empty client id with clean_session 0 is refused
 * with CONNACK 0x02 [MQTT-3.1.3-8], and MQTT 3.1 ("MQIsdp") wants 1..23 bytes. */
enum codec_rc mqtt_decode(const struct mqtt_limits *lim, const uint8_t *p, size_t len,
                          struct mqtt_packet *pkt, size_t *used, const char **why);

/* Walks the filters of a decoded SUBSCRIBE or UNSUBSCRIBE. Start with *off = 0.
 * Returns 1 with *filter set (and *options: the requested QoS byte of SUBSCRIBE,
 * 0 for UNSUBSCRIBE; 5.0 puts subscription options there), or 0 at the end. */
int mqtt_filter_next(const struct mqtt_packet *pkt, size_t *off, struct mqtt_str *filter,
                     uint8_t *options);

/* Short name of a packet type ("PUBLISH"), "?" for unknown. Static. */
const char *mqtt_type_name(uint8_t type);

/* ---- encoders: append one packet to out; return 0, or GW_EINVAL (nothing appended)
 * when a field does not fit the protocol (string > 65535 bytes, packet > 256 MB, QoS > 2,
 * packet id 0 where one is required, no filters). Strings are written as given: the
 * caller passes valid topics and filters. */

/* Encodes a 3.1.1 CONNECT from c: proto_name/level (empty name = "MQTT" level 4),
 * clean_session, keepalive_s, client_id, will*, has_username/username,
 * has_password/password. c->flags is ignored (rebuilt from the fields). */
int mqtt_encode_connect(struct buf *out, const struct mqtt_connect *c);
int mqtt_encode_connack(struct buf *out, bool session_present, uint8_t rc);
/* PUBLISH with its payload copied into out. id is written only when qos > 0. */
int mqtt_encode_publish(struct buf *out, const char *topic, size_t topic_len,
                        const uint8_t *payload, size_t payload_len, uint8_t qos, bool retain,
                        bool dup, uint16_t id);
/* PUBLISH without its payload: the fixed header, topic and id, declaring payload_len
 * more bytes, which the caller sends next (one shared payload for many subscribers). */
int mqtt_encode_publish_header(struct buf *out, const char *topic, size_t topic_len,
                               size_t payload_len, uint8_t qos, bool retain, bool dup,
                               uint16_t id);
int mqtt_encode_puback(struct buf *out, uint16_t id);
int mqtt_encode_pubrec(struct buf *out, uint16_t id);
int mqtt_encode_pubrel(struct buf *out, uint16_t id);
int mqtt_encode_pubcomp(struct buf *out, uint16_t id);

/* One SUBSCRIBE entry. */
struct mqtt_sub_req {
    struct mqtt_str filter;
    uint8_t qos;                /* requested QoS 0..2 */
};
int mqtt_encode_subscribe(struct buf *out, uint16_t id, const struct mqtt_sub_req *subs,
                          size_t n);
int mqtt_encode_suback(struct buf *out, uint16_t id, const uint8_t *codes, size_t n);
int mqtt_encode_unsubscribe(struct buf *out, uint16_t id, const struct mqtt_str *filters,
                            size_t n);
int mqtt_encode_unsuback(struct buf *out, uint16_t id);
int mqtt_encode_pingreq(struct buf *out);
int mqtt_encode_pingresp(struct buf *out);
int mqtt_encode_disconnect(struct buf *out);

/* ---- topics (protocols/mqtt/topic.c) */

/* 1 when s[0..len) is well-formed UTF-8 without U+0000 and without surrogates
 * (overlong forms and code points over U+10FFFF are ill-formed) [MQTT-1.5.3-1,2]. */
int mqtt_utf8_valid(const char *s, size_t len);
/* 1 when name is a valid topic name to publish to: 1..65535 bytes of valid UTF-8
 * without '+' or '#' [MQTT-4.7.3-1] [MQTT-3.3.2-2]. */
int mqtt_topic_valid(const char *name, size_t len);
/* 1 when filter is a valid topic filter: 1..65535 bytes of valid UTF-8 where '#' is
 * alone in the last level and '+' is alone in its level [MQTT-4.7.1-2,3]. */
int mqtt_filter_valid(const char *filter, size_t len);
/* 1 when the (valid) filter matches the (valid) topic name. "sport/#" matches
 * "sport" [MQTT-4.7.1-2]; a topic starting with '$' is not matched by a filter
 * starting with '+' or '#' [MQTT-4.7.2-1]. */
int mqtt_topic_matches(const char *filter, size_t filter_len, const char *topic,
                       size_t topic_len);

/* ---- router (protocols/mqtt/router.c): subscriptions by filter. Loop thread only. */

struct mqtt_router;

/* Called once per distinct matching subscriber, with the highest QoS among its
 * matching subscriptions and the option word of the subscription that gave it. */
typedef void (*mqtt_router_match_fn)(void *ctx, void *sub, uint8_t qos, uint32_t opts);
/* Called once per subscription a subscriber holds (mqtt_router_list). filter is a
 * view valid during the call only. */
typedef void (*mqtt_router_list_fn)(void *ctx, const char *filter, size_t len, uint8_t qos,
                                    uint32_t opts);

struct mqtt_router *mqtt_router_new(void);
/* Frees the router and every subscription in it (subscribers themselves are the
 * caller's). NULL is fine. */
void mqtt_router_free(struct mqtt_router *r);
/* Subscribes sub (an opaque, non-NULL key: typically the session) to filter with the
 * granted qos. Subscribing again to the same filter replaces qos (and opts).
 * Returns 1 when new, 0 when replaced, GW_EINVAL for an invalid filter or sub. */
int mqtt_router_subscribe(struct mqtt_router *r, const char *filter, size_t len, void *sub,
                          uint8_t qos);
/* Same with an opaque per-subscription option word (5.0: no-local, retain-as-published,
 * subscription identifier...); mqtt_router_subscribe() passes 0. */
int mqtt_router_subscribe_opts(struct mqtt_router *r, const char *filter, size_t len,
                               void *sub, uint8_t qos, uint32_t opts);
/* Removes sub's subscription to filter (compared byte for byte). Returns 1 when it
 * existed, 0 otherwise. Nodes left empty are freed. */
int mqtt_router_unsubscribe(struct mqtt_router *r, const char *filter, size_t len, void *sub);
/* The QoS granted to sub's subscription to exactly this filter, or -1 when it holds none. */
int mqtt_router_granted(struct mqtt_router *r, const char *filter, size_t len, void *sub);
/* Removes every subscription of sub in O(its subscriptions). Returns how many. */
size_t mqtt_router_remove_all(struct mqtt_router *r, void *sub);
/* Calls fn for each subscription sub holds (e.g. to persist a session). Returns how many.
 * fn must not change the router. */
size_t mqtt_router_list(struct mqtt_router *r, void *sub, mqtt_router_list_fn fn, void *ctx);
/* Calls fn once per distinct subscriber whose filters match topic (a valid topic
 * name), with the maximum granted QoS among them. Returns the number of calls.
 * fn runs after the lookup is complete: it may subscribe/unsubscribe, but must not
 * call mqtt_router_match() on the same router. */
size_t mqtt_router_match(struct mqtt_router *r, const char *topic, size_t len,
                         mqtt_router_match_fn fn, void *ctx);
/* Number of subscriptions (filter, subscriber pairs) held. */
size_t mqtt_router_count(const struct mqtt_router *r);

#endif
