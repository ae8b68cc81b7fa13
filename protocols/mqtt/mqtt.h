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
 * Protocol version: mqtt_decode() decodes levels 3 (MQTT 3.1, "MQIsdp") and 4 (3.1.1)
 * with 3.1.1 rules and refuses version 5, exactly as a 3.1.1-only server needs.
 * mqtt_decode_v() is the same decoder with the connection's version given explicitly:
 * version 5 decodes every packet with MQTT 5.0 rules (properties, reason codes, AUTH)
 * and reports the reason code to send when a packet is refused. MQTT 5.0 properties,
 * their decoder and builder, reason codes and the 5.0 encoders are declared in the
 * second half of this header (protocols/mqtt/props.c, codec5.c).
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
    MQTT_V5 = 5,        /* MQTT 5.0: decoded by mqtt_decode_v() */
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
    MQTT_AUTH = 15, /* MQTT 5.0 only; reserved in 3.1.1 */
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
    /* whole packet incl. fixed header; 0 = protocol maximum (at most 268,435,460: 32 bits
     * leave struct mqtt_conn no padding here) */
    uint32_t max_packet_bytes;
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

/* MQTT 5.0 properties of one packet (§2.2.2), decoded and validated. raw is a view of
 * the property bytes (after the Property Length) for mqtt_prop_next(); the properties
 * Gale uses are surfaced as fields. A field whose property is absent holds the spec's
 * default (noted), else 0 or an empty view; `present` tells them apart. */
struct mqtt_props {
    struct mqtt_bin raw;            /* the property bytes; empty when none */
    uint64_t present;               /* bit (1 << id) for each enum mqtt_prop_id seen */
    uint32_t session_expiry_s;      /* 0x11 Session Expiry Interval, seconds */
    uint32_t message_expiry_s;      /* 0x02 Message Expiry Interval, seconds */
    uint32_t will_delay_s;          /* 0x18 Will Delay Interval, seconds */
    uint32_t maximum_packet_size;   /* 0x27 bytes, >= 1; 0 when absent (no limit) */
    uint32_t subscription_id;       /* 0x0B the first Subscription Identifier (1..2^28-1) */
    size_t subscription_id_count;   /* how many (PUBLISH may carry several) */
    size_t user_prop_count;         /* 0x26 User Property pairs (walk with mqtt_prop_find) */
    uint16_t receive_maximum;       /* 0x21, >= 1; 65535 when absent */
    uint16_t topic_alias_maximum;   /* 0x22; 0 when absent */
    uint16_t topic_alias;           /* 0x23, >= 1; 0 when absent */
    uint16_t server_keep_alive_s;   /* 0x13 Server Keep Alive, seconds */
    uint8_t payload_format;         /* 0x01 Payload Format Indicator: 0 bytes, 1 UTF-8 */
    uint8_t request_problem_info;   /* 0x17, 0 or 1; 1 when absent */
    uint8_t request_response_info;  /* 0x19, 0 or 1; 0 when absent */
    uint8_t maximum_qos;            /* 0x24, 0 or 1; 2 when absent */
    uint8_t retain_available;       /* 0x25, 0 or 1; 1 when absent */
    uint8_t wildcard_sub_available; /* 0x28, 0 or 1; 1 when absent */
    uint8_t sub_id_available;       /* 0x29, 0 or 1; 1 when absent */
    uint8_t shared_sub_available;   /* 0x2A, 0 or 1; 1 when absent */
    struct mqtt_str content_type;   /* 0x03 */
    struct mqtt_str response_topic; /* 0x08, a valid topic name */
    struct mqtt_bin correlation_data;   /* 0x09 */
    struct mqtt_str assigned_client_id; /* 0x12 */
    struct mqtt_str auth_method;    /* 0x15 */
    struct mqtt_bin auth_data;      /* 0x16, only with auth_method */
    struct mqtt_str response_info;  /* 0x1A Response Information */
    struct mqtt_str server_reference;   /* 0x1C */
    struct mqtt_str reason_string;  /* 0x1F */
};

struct mqtt_connect {
    struct mqtt_str proto_name; /* "MQTT" or "MQIsdp" */
    uint8_t level;              /* enum mqtt_version; see mqtt_decode() for levels != 3, 4, 5 */
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
    struct mqtt_bin password;   /* binary data; 5.0 allows a password without user name */
};

struct mqtt_connack {
    bool session_present;
    uint8_t rc;                 /* enum mqtt_connack_rc */
};

struct mqtt_publish {
    struct mqtt_str topic;      /* valid topic name: UTF-8, no wildcards, non-empty except in
                                 * 5.0 with a Topic Alias (props.topic_alias) */
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

/* SUBACK: one return code per filter (0, 1, 2 or MQTT_SUBACK_FAILURE; in 5.0 a SUBACK
 * reason code). Also 5.0 UNSUBACK: one UNSUBACK reason code per filter. */
struct mqtt_suback {
    const uint8_t *codes;       /* view */
    size_t count;               /* >= 1 */
};

struct mqtt_packet {
    uint8_t type;               /* enum mqtt_type */
    uint8_t flags;              /* low nibble of the first byte */
    uint16_t id;                /* packet identifier when the type has one, else 0 */
    uint8_t version;            /* the rules it was decoded with: MQTT_V311 or MQTT_V5 */
    uint8_t reason;             /* 5.0 PUBACK..PUBCOMP, DISCONNECT, AUTH: the reason code
                                 * (0 when omitted); CONNACK's is connack.rc */
    union {
        struct mqtt_connect connect;     /* CONNECT */
        struct mqtt_connack connack;     /* CONNACK */
        struct mqtt_publish publish;     /* PUBLISH */
        struct mqtt_subscribe subscribe; /* SUBSCRIBE, UNSUBSCRIBE */
        struct mqtt_suback suback;       /* SUBACK; 5.0 UNSUBACK */
    };
    /* Last, so a 3.1.1 decode clears only what precedes them: in a packet decoded with
     * 3.1.1 rules (version != MQTT_V5) only their `present` (0) and `raw` (empty) are
     * set, the other fields are not. */
    struct mqtt_props props;      /* 5.0: the packet's properties */
    struct mqtt_props will_props; /* 5.0 CONNECT with a will: the Will Properties; else
                                   * none (present 0) */
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

/* The same decoder with the connection's protocol version given explicitly (lim->version
 * is not read) and the reason code to send when a packet is refused.
 * version: MQTT_V_UNKNOWN before CONNECT (a CONNECT of level 3, 4 or 5 is decoded whole;
 * pkt->connect.level tells the handler which one it got, and any other packet decodes
 * with 3.1.1 rules), MQTT_V31 / MQTT_V311 (3.1.1 rules, as mqtt_decode()), MQTT_V5
 * (5.0 rules: properties after the variable header, reason codes in acks, DISCONNECT
 * and AUTH; the remaining length must be minimal [MQTT-1.5.5-1]).
 * reason (may be NULL): on CODEC_ERROR, the reason code for the CONNACK or DISCONNECT
 * that 5.0 sends before closing (§4.13): MQTT_RC_MALFORMED_PACKET, MQTT_RC_PROTOCOL_ERROR,
 * MQTT_RC_PACKET_TOO_LARGE, MQTT_RC_TOPIC_ALIAS_INVALID, or
 * MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION for a version argument other than 0, 3, 4, 5;
 * also set for 3.1.1 packets (where nothing is sent with it).
 * What the 5.0 decoder checks beyond the framing: property identifiers allowed on the
 * packet (else 0x81), properties that may appear once (else 0x82), property values in
 * range (Receive Maximum, Maximum Packet Size and Subscription Identifier not 0, the
 * 0-or-1 bytes, a Response Topic without wildcards, Authentication Data only with a
 * method: 0x82; Topic Alias 0: 0x94), UTF-8 (0x81), reason codes listed for the packet
 * type (0x81), subscription options (reserved bits and QoS 3: 0x81, Retain Handling 3,
 * No Local on a shared subscription and a malformed $share filter: 0x82), an empty
 * topic without a Topic Alias (0x82). Rules that need connection state (topic alias
 * maximum, receive maximum, which side may send what) are the handler's. */
enum codec_rc mqtt_decode_v(const struct mqtt_limits *lim, uint8_t version, const uint8_t *p,
                            size_t len, struct mqtt_packet *pkt, size_t *used,
                            const char **why, uint8_t *reason);

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

/* ---- MQTT 5.0 (protocols/mqtt/props.c, codec5.c) */

/* Reason codes (5.0 §2.4). One byte; several codes share a value. */
enum mqtt_rc {
    MQTT_RC_SUCCESS = 0x00,               /* also Normal disconnection, Granted QoS 0 */
    MQTT_RC_NORMAL_DISCONNECTION = 0x00,
    MQTT_RC_GRANTED_QOS0 = 0x00,
    MQTT_RC_GRANTED_QOS1 = 0x01,
    MQTT_RC_GRANTED_QOS2 = 0x02,
    MQTT_RC_DISCONNECT_WITH_WILL = 0x04,
    MQTT_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    MQTT_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
    MQTT_RC_CONTINUE_AUTHENTICATION = 0x18,
    MQTT_RC_REAUTHENTICATE = 0x19,
    MQTT_RC_UNSPECIFIED_ERROR = 0x80,
    MQTT_RC_MALFORMED_PACKET = 0x81,
    MQTT_RC_PROTOCOL_ERROR = 0x82,
    MQTT_RC_IMPLEMENTATION_SPECIFIC_ERROR = 0x83,
    MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84,
    MQTT_RC_CLIENT_ID_NOT_VALID = 0x85,
    MQTT_RC_BAD_USER_NAME_OR_PASSWORD = 0x86,
    MQTT_RC_NOT_AUTHORIZED = 0x87,
    MQTT_RC_SERVER_UNAVAILABLE = 0x88,
    MQTT_RC_SERVER_BUSY = 0x89,
    MQTT_RC_BANNED = 0x8A,
    MQTT_RC_SERVER_SHUTTING_DOWN = 0x8B,
    MQTT_RC_BAD_AUTHENTICATION_METHOD = 0x8C,
    MQTT_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    MQTT_RC_SESSION_TAKEN_OVER = 0x8E,
    MQTT_RC_TOPIC_FILTER_INVALID = 0x8F,
    MQTT_RC_TOPIC_NAME_INVALID = 0x90,
    MQTT_RC_PACKET_ID_IN_USE = 0x91,
    MQTT_RC_PACKET_ID_NOT_FOUND = 0x92,
    MQTT_RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93,
    MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    MQTT_RC_PACKET_TOO_LARGE = 0x95,
    MQTT_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
    MQTT_RC_QUOTA_EXCEEDED = 0x97,
    MQTT_RC_ADMINISTRATIVE_ACTION = 0x98,
    MQTT_RC_PAYLOAD_FORMAT_INVALID = 0x99,
    MQTT_RC_RETAIN_NOT_SUPPORTED = 0x9A,
    MQTT_RC_QOS_NOT_SUPPORTED = 0x9B,
    MQTT_RC_USE_ANOTHER_SERVER = 0x9C,
    MQTT_RC_SERVER_MOVED = 0x9D,
    MQTT_RC_SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E,
    MQTT_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
    MQTT_RC_MAXIMUM_CONNECT_TIME = 0xA0,
    MQTT_RC_SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1,
    MQTT_RC_WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2,
};

/* The spec's name of a reason code ("Malformed Packet"); for 0x00 "Success". "?" when
 * the value is not a 5.0 reason code. Static. */
const char *mqtt_rc_name(uint8_t rc);
/* 1 when rc is one of the reason codes 5.0 lists for packet type (CONNACK, PUBACK,
 * PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH), else 0. */
int mqtt_rc_allowed(uint8_t type, uint8_t rc);

/* Property identifiers (5.0 §2.2.2.2). */
enum mqtt_prop_id {
    MQTT_PROP_PAYLOAD_FORMAT = 0x01,          /* byte: PUBLISH, Will */
    MQTT_PROP_MESSAGE_EXPIRY = 0x02,          /* four-byte: PUBLISH, Will */
    MQTT_PROP_CONTENT_TYPE = 0x03,            /* string: PUBLISH, Will */
    MQTT_PROP_RESPONSE_TOPIC = 0x08,          /* string: PUBLISH, Will */
    MQTT_PROP_CORRELATION_DATA = 0x09,        /* binary: PUBLISH, Will */
    MQTT_PROP_SUBSCRIPTION_ID = 0x0B,         /* varint: PUBLISH (repeats), SUBSCRIBE */
    MQTT_PROP_SESSION_EXPIRY = 0x11,          /* four-byte: CONNECT, CONNACK, DISCONNECT */
    MQTT_PROP_ASSIGNED_CLIENT_ID = 0x12,      /* string: CONNACK */
    MQTT_PROP_SERVER_KEEP_ALIVE = 0x13,       /* two-byte: CONNACK */
    MQTT_PROP_AUTH_METHOD = 0x15,             /* string: CONNECT, CONNACK, AUTH */
    MQTT_PROP_AUTH_DATA = 0x16,               /* binary: CONNECT, CONNACK, AUTH */
    MQTT_PROP_REQUEST_PROBLEM_INFO = 0x17,    /* byte: CONNECT */
    MQTT_PROP_WILL_DELAY = 0x18,              /* four-byte: Will */
    MQTT_PROP_REQUEST_RESPONSE_INFO = 0x19,   /* byte: CONNECT */
    MQTT_PROP_RESPONSE_INFO = 0x1A,           /* string: CONNACK */
    MQTT_PROP_SERVER_REFERENCE = 0x1C,        /* string: CONNACK, DISCONNECT */
    MQTT_PROP_REASON_STRING = 0x1F,           /* string: CONNACK, acks, DISCONNECT, AUTH */
    MQTT_PROP_RECEIVE_MAXIMUM = 0x21,         /* two-byte: CONNECT, CONNACK */
    MQTT_PROP_TOPIC_ALIAS_MAXIMUM = 0x22,     /* two-byte: CONNECT, CONNACK */
    MQTT_PROP_TOPIC_ALIAS = 0x23,             /* two-byte: PUBLISH */
    MQTT_PROP_MAXIMUM_QOS = 0x24,             /* byte: CONNACK */
    MQTT_PROP_RETAIN_AVAILABLE = 0x25,        /* byte: CONNACK */
    MQTT_PROP_USER_PROPERTY = 0x26,           /* string pair: every packet with properties,
                                               * repeats */
    MQTT_PROP_MAXIMUM_PACKET_SIZE = 0x27,     /* four-byte: CONNECT, CONNACK */
    MQTT_PROP_WILDCARD_SUB_AVAILABLE = 0x28,  /* byte: CONNACK */
    MQTT_PROP_SUB_ID_AVAILABLE = 0x29,        /* byte: CONNACK */
    MQTT_PROP_SHARED_SUB_AVAILABLE = 0x2A,    /* byte: CONNACK */
};
#define MQTT_PROP_ID_MAX 0x2A

/* Property value types (5.0 §1.5, §2.2.2.2). */
enum mqtt_prop_type {
    MQTT_PT_NONE = 0, /* not a property identifier */
    MQTT_PT_BYTE,
    MQTT_PT_U16,      /* Two Byte Integer */
    MQTT_PT_U32,      /* Four Byte Integer */
    MQTT_PT_VARINT,   /* Variable Byte Integer */
    MQTT_PT_STR,      /* UTF-8 Encoded String */
    MQTT_PT_BIN,      /* Binary Data */
    MQTT_PT_PAIR,     /* UTF-8 String Pair */
};

/* One property, as mqtt_prop_next() returns it (views into the packet). */
struct mqtt_prop {
    uint8_t id;            /* enum mqtt_prop_id */
    uint8_t type;          /* enum mqtt_prop_type */
    uint32_t u;            /* BYTE, U16, U32, VARINT */
    struct mqtt_str str;   /* STR; PAIR: the name */
    struct mqtt_str value; /* PAIR: the value */
    struct mqtt_bin bin;   /* BIN */
};

/* Where a property appears: a packet type, or MQTT_PROPS_WILL for CONNECT's Will
 * Properties (type 0 is no packet). */
#define MQTT_PROPS_WILL 0

/* The type of property id, MQTT_PT_NONE when id is not one. */
uint8_t mqtt_prop_type(uint8_t id);
/* 1 when property id may appear in `where` (a packet type or MQTT_PROPS_WILL). */
int mqtt_prop_allowed(uint8_t where, uint8_t id);
/* 1 when props holds property id. */
static inline int mqtt_props_has(const struct mqtt_props *ps, uint8_t id)
{
    return id <= MQTT_PROP_ID_MAX && ((ps->present >> id) & 1);
}
/* Walks the properties of a decoded packet in wire order. Start with *off = 0; returns 1
 * with *p filled, or 0 at the end. */
int mqtt_prop_next(const struct mqtt_props *ps, size_t *off, struct mqtt_prop *p);
/* Same, only the properties with identifier id (User Property, Subscription Identifier). */
int mqtt_prop_find(const struct mqtt_props *ps, uint8_t id, size_t *off, struct mqtt_prop *p);
/* Validates raw property bytes (without their length prefix) as the properties of `where`,
 * with every rule the decoder applies. Returns 0, or the reason code (0x81, 0x82, 0x94)
 * with *why set. out (may be NULL) receives the decoded view. */
int mqtt_props_parse(uint8_t where, const uint8_t *p, size_t len, struct mqtt_props *out,
                     const char **why);

/* ---- property builder: append one property (identifier and value) to b, to pass to a
 * 5.0 encoder as a struct mqtt_bin (the encoder writes the Property Length). Each returns
 * 0, or GW_EINVAL (nothing appended) when id does not have that type or the value does
 * not fit it (a byte > 255, a Subscription Identifier 0 or > 268,435,455, a string over
 * 65535 bytes). Rules across properties (duplicates, the packet) are checked by the
 * encoder. */
int mqtt_prop_put_int(struct buf *b, uint8_t id, uint32_t v); /* BYTE, U16, U32, VARINT */
int mqtt_prop_put_str(struct buf *b, uint8_t id, const char *s, size_t len);
int mqtt_prop_put_bin(struct buf *b, uint8_t id, const void *p, size_t len);
int mqtt_prop_put_user(struct buf *b, const char *name, size_t name_len, const char *value,
                       size_t value_len);
/* Any property as mqtt_prop_next() returns it (to copy properties from one packet). */
int mqtt_prop_put(struct buf *b, const struct mqtt_prop *p);

/* Subscription options byte of a 5.0 SUBSCRIBE entry (§3.8.3.1). */
#define MQTT_SUBOPT_QOS_MASK 0x03
#define MQTT_SUBOPT_NO_LOCAL 0x04
#define MQTT_SUBOPT_RETAIN_AS_PUBLISHED 0x08
#define MQTT_SUBOPT_RETAIN_HANDLING_SHIFT 4 /* 0 send, 1 send if new, 2 do not send */
#define MQTT_SUBOPT_RETAIN_HANDLING_MASK 0x30
#define MQTT_SUBOPT_RESERVED 0xC0

/* A shared subscription filter "$share/{ShareName}/{filter}" (5.0 §4.8.2). Returns 1
 * with the share name and the filter set when filter is one, 0 when it does not start
 * with "$share/", -1 when it does but is malformed (empty share name, '+', '#' or '/'
 * in it, no filter after it, or an invalid filter). */
int mqtt_filter_share(const char *filter, size_t len, struct mqtt_str *share_name,
                      struct mqtt_str *share_filter);

/* ---- 5.0 encoders. Same contract as the 3.1.1 ones (one packet or nothing, GW_EINVAL),
 * and more: props (NULL = none) are property bytes built with mqtt_prop_put_*(), checked
 * with mqtt_props_parse() for the packet, and a reason code must be one listed for the
 * packet type. */

/* CONNECT level 5 from c (as mqtt_encode_connect(); proto_name and level are ignored),
 * with the CONNECT properties and, when c->will, the Will Properties. */
int mqtt_encode_connect5(struct buf *out, const struct mqtt_connect *c,
                         const struct mqtt_bin *props, const struct mqtt_bin *will_props);
int mqtt_encode_connack5(struct buf *out, bool session_present, uint8_t rc,
                         const struct mqtt_bin *props);
/* PUBLISH: topic may be empty when props carry a Topic Alias. */
int mqtt_encode_publish5(struct buf *out, const char *topic, size_t topic_len,
                         const struct mqtt_bin *props, const uint8_t *payload,
                         size_t payload_len, uint8_t qos, bool retain, bool dup, uint16_t id);
/* Without the payload, as mqtt_encode_publish_header(). */
int mqtt_encode_publish5_header(struct buf *out, const char *topic, size_t topic_len,
                                const struct mqtt_bin *props, size_t payload_len, uint8_t qos,
                                bool retain, bool dup, uint16_t id);
/* PUBACK, PUBREC, PUBREL or PUBCOMP (type): reason code and properties, both omitted when
 * rc is 0 and there are none (remaining length 2), the property length omitted when
 * there are none (§3.4.2.1). */
int mqtt_encode_ack5(struct buf *out, uint8_t type, uint16_t id, uint8_t rc,
                     const struct mqtt_bin *props);

/* One 5.0 SUBSCRIBE entry. */
struct mqtt_sub_req5 {
    struct mqtt_str filter;
    uint8_t options;            /* QoS | MQTT_SUBOPT_* */
};
int mqtt_encode_subscribe5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                           const struct mqtt_sub_req5 *subs, size_t n);
int mqtt_encode_suback5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                        const uint8_t *codes, size_t n);
int mqtt_encode_unsubscribe5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                             const struct mqtt_str *filters, size_t n);
int mqtt_encode_unsuback5(struct buf *out, uint16_t id, const struct mqtt_bin *props,
                          const uint8_t *codes, size_t n);
/* DISCONNECT and AUTH: remaining length 0 when rc is 0 and there are no properties, the
 * reason code alone when there are none (§3.14.2.1, §3.15.2.1). */
int mqtt_encode_disconnect5(struct buf *out, uint8_t rc, const struct mqtt_bin *props);
int mqtt_encode_auth(struct buf *out, uint8_t rc, const struct mqtt_bin *props);

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
 * matching subscriptions and the option word of the subscription that gave it
 * (mqtt_router_multi() tells, during the call, whether more than one matched). */
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
/* Same, and the subscription's option word in *opts (may be NULL) when it exists. */
int mqtt_router_granted_opts(struct mqtt_router *r, const char *filter, size_t len, void *sub,
                             uint32_t *opts);
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
/* During a mqtt_router_match() callback: 1 when more than one subscription of that
 * subscriber matched the topic (overlapping filters), else 0. */
int mqtt_router_multi(const struct mqtt_router *r);
/* Number of subscriptions (filter, subscriber pairs) held. */
size_t mqtt_router_count(const struct mqtt_router *r);

#endif
