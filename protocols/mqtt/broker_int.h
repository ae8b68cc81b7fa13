/* protocols/mqtt/broker_int.h: state shared by broker.c (sessions, delivery, retained,
 * connections' lifetime, $SYS) and handle.c (one connection's packets). Loop thread only.
 *
 * Calls run one way: handle.c -> broker.c -> retained.c, router.c, acl.c, codec.c (and the
 * persistence port, struct mqtt_store). broker.c never calls into handle.c: what must run
 * when a connection ends (will, session detach, presence, free) is broker.c's own
 * (broker_conn_close), and handle.c only opens connections and feeds their packets. */
#ifndef GALE_MQTT_BROKER_INT_H
#define GALE_MQTT_BROKER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "base/map.h"
#include "gateway/msg.h"
#include "gateway/ticket.h"
#include "protocols/mqtt/acl.h"
#include "protocols/mqtt/broker.h"
#include "protocols/mqtt/mqtt.h"
#include "protocols/mqtt/share.h"

enum out_state { OUT_QUEUED = 0, OUT_WAIT_PUBACK, OUT_WAIT_PUBREC, OUT_WAIT_PUBCOMP };

/* One message on its way to one session. */
struct out_msg {
    struct msg *m;          /* shared message (reference held) */
    uint8_t qos;            /* effective QoS: min(published, granted) */
    bool retain;            /* retain flag to send (set only for retained-on-subscribe) */
    uint8_t state;          /* enum out_state (OUT_WAIT_PUBCOMP while queued: loaded from
                             * storage after PUBREC, so only PUBREL is resent) */
    bool sent;              /* a PUBLISH of it went out (maybe before a restart): any
                             * further one carries DUP */
    uint16_t pkt_id;        /* assigned when sent with QoS > 0 */
    uint16_t group;         /* share.c tag of the shared subscription it came through
                             * (struct share_group.idx), 0: none */
    uint64_t store_id;      /* id in storage for persistent sessions; 0 = not stored */
    struct list_link link;  /* in the session's queue while queued */
    uint32_t subid;         /* MQTT 5 Subscription Identifier it matched (0: none) */
    uint32_t *subids;       /* when several matched: all of them, 0-terminated (heap) */
};

/* Router option word of a subscription (mqtt_router_subscribe_opts): the MQTT 5
 * subscription options that matter after SUBSCRIBE. */
#define SUBOPT_ID_MASK 0x0FFFFFFFu   /* Subscription Identifier, 0 = none */
#define SUBOPT_NO_LOCAL (1u << 28)   /* not delivered to the session that published it */
#define SUBOPT_RAP (1u << 29)        /* Retain As Published */

/* An incoming QoS 2 packet id between its PUBLISH and PUBREL (a session's are sorted by
 * id). */
struct qos2_in {
    uint16_t id;
    bool failed;            /* storage reported a write of t failed: a resend is taken as a
                             * first copy (stored, then PUBREC'd) */
    struct ticket t;        /* the writes of its first copy: a resend is PUBREC'd only once
                             * they are durable */
};

/* Retained messages a SUBSCRIBE matched, sent as the in-flight window and the socket allow
 * (pump), each only while it is still the topic's retained message. Each filter adds its
 * matches (a message two filters match may be sent twice, as Mosquitto does); duplicates
 * are removed each time the backlog doubled, so it holds at most twice as many entries as
 * retained messages it names. */
struct ret_entry {
    struct msg *m;          /* reference held */
    uint32_t subid;         /* MQTT 5 Subscription Identifier of the SUBSCRIBE, or 0 */
    uint8_t qos;            /* min(retained QoS, granted QoS) */
};
struct ret_backlog {
    struct ret_entry *e;    /* [head, n) wait */
    size_t head, n, cap;
    size_t ahead;           /* queued messages older than the SUBSCRIBE: sent first */
    size_t checked;         /* entries waiting after the last duplicate check */
};

/* What a session holds to deliver and receive messages beyond its identity: its
 * subscriptions' counts, its queue and in-flight table, its incoming QoS 2 ids, a retained
 * backlog and a will waiting for its delay. Allocated with the first of them (broker_deliv:
 * a subscription, a message for it, a QoS 2 id, a delayed will, a stored message loaded)
 * and kept until the session ends; a session that only publishes QoS 0 and 1 (most
 * devices) never has one. Its counters are as small as their limits. */
struct mqtt_deliv {
    struct mqtt_session *s;     /* its session */
    struct list queue;          /* struct out_msg waiting for a free in-flight slot or a
                                 * connection, oldest first */
    struct out_msg **inflight;  /* sent, unacknowledged, in send order (mqtt.max_inflight
                                 * + 1 slots, allocated with the first send) */
    struct qos2_in *qos2_in;    /* incoming QoS 2 ids between PUBLISH and PUBREL, by id
                                 * (at most mqtt.max_qos2_pending) */
    struct ret_backlog *backlog; /* retained messages still to send, or NULL */
    struct list_link watch_link; /* in b->qos2_watch while qos2_watched */
    uint64_t qos2_last;         /* highest write seq of its QoS 2 ids not yet reported */
    size_t queued_bytes;        /* topics and payloads in queue (mqtt.max_queued_bytes) */
    uint64_t next_store_id;     /* persistent message numbering */
    uint64_t dropped;           /* messages dropped by the queue limit */
    struct mqtt_will *will;     /* a will waiting for its delay (MQTT 5), or NULL */
    int64_t will_at_ms;         /* epoch ms it is published unless the client is back */
    uint32_t nsubs;             /* subscriptions held (mqtt.max_subscriptions) */
    uint32_t sub_bytes;         /* bytes of their filters (mqtt.max_subscription_bytes) */
    uint32_t sub_levels;        /* levels of their filters (mqtt.max_subscription_levels) */
    uint32_t nsubids;           /* subscriptions carrying a Subscription Identifier */
    uint32_t nqos2_in, qos2_cap;
    uint16_t ninflight;         /* at most mqtt.max_inflight (65535) */
    uint16_t next_id;           /* last packet id handed out */
    bool drop_logged;           /* one log line per overflow episode */
    bool qos2_watched;          /* in b->qos2_watch: storage reports may fail its ids */
};

/* A session, clean or persistent: one per client id, so one per connection at least, and
 * most of them idle: what it holds to deliver messages is allocated with its first use
 * (struct mqtt_deliv). */
struct mqtt_session {
    const char *username;       /* username of the session's client: heap when not empty,
                                 * else "" */
    struct mqtt_conn *conn;     /* NULL while offline */
    struct mqtt_deliv *dv;      /* NULL until first used (broker_deliv) */
    int64_t seen_ms;            /* epoch ms it was last attached or detached (expiry) */
    uint32_t expiry_s;          /* a persistent session's expiry once offline, seconds
                                 * (UINT32_MAX: never); 3.1.1: mqtt.session_expiry_s */
    uint8_t role;               /* enum acl_role of that client. A session of an
                                 * authenticated client (device, app) is its own: no other
                                 * identity may take it over or resume it */
    bool clean;                 /* clean session: discarded at disconnect (3.1.1 clean
                                 * session 1, or MQTT 5 Session Expiry Interval 0) */
    bool own_expiry;            /* expiry_s was chosen by an MQTT 5 client (stored) */
    char client_id[];           /* NUL-terminated; the key in b->sessions; starts in the
                                 * struct's tail padding (allocated by offsetof) */
};

/* The device a session speaks for (a device's username is its id), or "". */
static inline const char *session_device(const struct mqtt_session *s)
{
    return s->role == ACL_ROLE_DEVICE ? s->username : "";
}

/* The delivery state of s, allocated zeroed when it has none yet. */
struct mqtt_deliv *broker_deliv(struct mqtt_session *s);

struct ret_node;

struct retained {
    char *topic;                /* heap; map key */
    struct msg *m;              /* the retained message (reference held) */
    uint8_t qos;                /* QoS it was published with */
    struct ret_node *node;      /* its node in the trie */
};

/* retained.c: retained messages, by topic and in a trie of levels (filter walks). */
struct retained_store {
    struct ret_node *root;      /* the trie */
    struct map by_topic;        /* topic -> struct retained */
};

struct mqtt_broker {
    struct gw *gw;
    struct mqtt_store store;    /* persistence (copy of the port main.c passed) */
    struct mqtt_router *router;
    struct map sessions;        /* client id -> struct mqtt_session */
    struct retained_store retained;
    struct acl *acl;
    uv_timer_t sys_timer;       /* $SYS publication */
    size_t connected;           /* MQTT connections past CONNACK */
    size_t max_connected;       /* highest value of connected */
    uint64_t packets_in;        /* control packets received (every type) */
    uint64_t packets_out;       /* control packets sent (every type) */
    uint64_t publish_in;        /* PUBLISH packets received */
    uint64_t publish_out;       /* PUBLISH packets sent */
    uint64_t acl_denied;        /* publishes and subscriptions refused by the ACL */
    uint64_t retained_refused;  /* new retained topics refused at mqtt.max_retained */
    size_t nretained;           /* retained topics kept, $SYS not counted */
    /* bytes received / sent by MQTT connections whose close callback ran ($SYS adds the
     * others' from the connection registry) */
    uint64_t bytes_in_closed;
    uint64_t bytes_out_closed;
    mqtt_delivered_fn on_delivered;
    void *hook_ctx;
    uint64_t next_anon;         /* for server-assigned client ids */
    struct ticket *ticket;      /* while routing a message: its publisher's ticket, which
                                 * the writes routing causes join (NULL otherwise) */
    struct map retained_use;    /* device id -> struct retained_use: its namespace's share */
    uv_timer_t expiry_timer;    /* deletes persistent sessions unused past mqtt.session_expiry_s */
    struct map identities;      /* username -> struct identity: its connections past CONNACK */
    struct list qos2_watch;     /* sessions with QoS 2 ids whose writes are not reported yet */
    struct mqtt_session *origin; /* while routing a client's PUBLISH: its session (No Local) */
    struct buf props;           /* scratch: the properties of a PUBLISH being sent */
    struct buf spare;           /* the memory of the last packet sent, for the next (broker_out) */
    /* while a message is routed (sink_mqtt): it, and its MQTT 3.1.1 QoS 0 PUBLISH once
     * encoded (len 0 until then), sent as is to every such subscriber; else NULL */
    struct msg *shared_m;
    struct buf shared;
    size_t delayed_wills;       /* sessions holding a will that waits for its delay */
    char *auth_method;          /* MQTT 5 enhanced authentication (mqtt_broker_set_auth) */
    mqtt_auth_fn auth_fn;
    void *auth_ctx;
    struct share_groups *share; /* shared subscriptions (share.c), NULL until the first */
};

/* A will message: kept from CONNECT until the connection ends (MQTT 5: or until its
 * delay has passed, held by the session). */
struct mqtt_will {
    char *topic;                /* heap */
    size_t len;                 /* payload bytes */
    uint8_t qos;
    bool retain;
    uint32_t delay_s;           /* MQTT 5 Will Delay Interval */
    uint32_t expiry_s;          /* MQTT 5 Message Expiry Interval, 0 = none */
    uint8_t *props;             /* MQTT 5 properties it carries (msg props), heap or NULL */
    size_t props_len;
    uint8_t payload[];
};

/* MQTT 5 state of a connection (allocated only for 5.0 clients). */
struct mqtt5_conn {
    uint32_t max_packet_out;    /* the client's Maximum Packet Size; 0 = protocol max */
    uint32_t session_expiry_s;  /* as CONNECT (or DISCONNECT) set it, capped */
    uint16_t recv_max_out;      /* the client's Receive Maximum: our window towards it */
    uint16_t alias_max_out;     /* aliases we may assign it: min(its max, ours) */
    uint16_t alias_max_in;      /* aliases it may use: mqtt.topic_alias_maximum */
    uint16_t alias_out_n;       /* aliases assigned so far */
    uint32_t in_flight;         /* its QoS 1/2 publishes we have not finished acking */
    bool problem_info;          /* Request Problem Information: reason strings on acks */
    bool expiry_was_zero;       /* CONNECT's Session Expiry Interval was 0 */
    bool auth_method;           /* CONNECT named the enhanced authentication method */
    bool peer_disconnect;       /* the client sent DISCONNECT: no DISCONNECT back */
    uint8_t disconnect_rc;      /* the reason code of the DISCONNECT sent when the connection
                                 * closes (0: none, or chosen by the cause) */
    const char *disconnect_why; /* the Reason String (static) of that DISCONNECT, or NULL */
    char **alias_in;            /* [alias_max_in + 1]: topics it named, heap, or NULL */
    size_t alias_in_bytes;      /* their bytes (bounded by mqtt.max_subscription_bytes) */
    struct map alias_out;       /* topic -> alias number (uintptr_t) we assigned */
};

/* One connection's MQTT state, held for every connection (most of them idle): what few
 * have (a will, a username) is on the heap, counters are 32 bits. Accepted by an MQTT
 * listener, it lives in the connection's own block (conn_state_space). */
struct mqtt_conn {
    struct conn *c;             /* valid until finished (the conn is freed later still) */
    struct mqtt_broker *b;
    struct mqtt_limits lim;
    struct mqtt_session *sess;
    /* the CONNECT's username: heap when not empty, else "" (never NULL). The device id when
     * role is device is the connection's (c->device). */
    const char *username;
    struct mqtt_will *will;     /* NULL: none */
    struct mqtt5_conn *v5;      /* MQTT 5 state, NULL for 3.1.1 */
    struct buf out;             /* encoding scratch, emptied by each send (broker_send) */
    /* while a PUBLISH waits for storage: bytes at the head of the input already scanned
     * for pings and acks (take_ahead; fewer than the hold cap plus one packet) */
    uint32_t ahead;
    /* refusals: the first of each kind is logged, the rest counted and summed up at close */
    uint32_t denied_pub;        /* publishes the ACL dropped */
    uint32_t denied_sub;        /* filters the ACL refused (SUBACK 0x80) */
    uint32_t bad_telemetry;     /* telemetry payloads that did not decode (not stored) */
    uint8_t role;               /* enum acl_role */
    bool in_conn;               /* in c's block (conn_state_space): freed with c */
    bool connected;             /* CONNACK 0 sent */
    bool got_disconnect;        /* DISCONNECT received: no will */
    bool finished;              /* broker_conn_finish_now ran (will, detach, presence) */
    bool rejected;              /* closing for such a payload (mqtt.invalid_telemetry =
                                 * disconnect): later packets are not handled */
};

/* ---- per-identity limits and ACL completeness (broker.c) ---- */

/* limits.max_sessions_per_device (a device or application: username is its registry id)
 * or mqtt.max_anonymous_sessions (role anonymous: all anonymous clients together): makes
 * room for a new persistent session. At the limit the offline session unused longest is
 * deleted (with what it holds, logged); returns GW_ELIMIT when every one of them is
 * connected, else 0. */
int broker_session_make_room(struct mqtt_broker *b, enum acl_role role, const char *username);
/* MQTT connections past CONNACK that username (a device or application) holds now. */
size_t broker_identity_conns(struct mqtt_broker *b, const char *username);
/* mc was accepted (CONNACK 0 is going out): counted as connected, and for its identity. */
void broker_conn_connected(struct mqtt_conn *mc);

/* What a PUBLISH (or a will) from mc may do. */
enum publish_verdict {
    PUBLISH_OK = 0,
    PUBLISH_DROP,           /* refused (rate, ACL, a provisioned device's namespace, a
                             * retained quota): counted and logged, not routed; a 3.1.1
                             * PUBLISH is still acknowledged (3.1.1 has no negative ack),
                             * a 5.0 one gets the reason code in its PUBACK/PUBREC */
    PUBLISH_CLOSE,          /* over the device rate with action disconnect */
};
/* The checks every message from a client passes before it is routed, a PUBLISH and the
 * will alike: the device rate (limits.device_rate_msgs_per_s), the ACL, an anonymous
 * client kept out of provisioned devices' namespaces (broker_anon_denied) and the retained
 * quotas of devices (broker_retained_room) for a retained one. topic is the name routed
 * (NUL-terminated). Refusals are counted and the first of each connection logged. */
enum publish_verdict broker_publish_check(struct mqtt_conn *mc, const char *topic,
                                          size_t payload_len, bool retain, uint8_t *reason);

/* ---- MQTT 5 (broker.c) ---- */

/* Closes mc's connection; a 5.0 client past CONNACK first gets DISCONNECT rc with why as
 * its Reason String (why is static). 3.1.1: conn_close. */
void broker_disconnect(struct mqtt_conn *mc, uint8_t rc, const char *why);
/* The properties of a PUBLISH (or will) that travel with the message (msg props):
 * payload format, content type, response topic, correlation data, user properties. */
void broker_forward_props(const struct mqtt_props *ps, struct buf *out);
/* A session's expiry to keep, from what a 5.0 client asked: capped by
 * mqtt.session_expiry_s when that is not 0. */
uint32_t broker_expiry_cap(const struct mqtt_broker *b, uint32_t asked);
/* Whether s is offline past its expiry (the timer deletes such sessions each second). */
bool broker_session_expired(const struct mqtt_session *s, int64_t now);
/* Stores a persistent session's record again (its expiry changed). */
void broker_session_expiry(struct mqtt_broker *b, struct mqtt_session *s, uint32_t expiry_s);
/* The client of s is back: a will waiting for its delay is dropped. */
void broker_will_cancel(struct mqtt_broker *b, struct mqtt_session *s);
/* Frees a will. */
void broker_will_free(struct mqtt_will *w);

/* ---- incoming QoS 2 ids of a session (broker.c; sorted, found by binary search) ---- */
struct qos2_in *broker_qos2_find(struct mqtt_session *s, uint16_t id);
/* Adds id with the ticket of its first copy; storage reports for t mark it failed. */
void broker_qos2_add(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id,
                     const struct ticket *t);
void broker_qos2_remove(struct mqtt_session *s, uint16_t id);
/* Drops the subscriptions of s that its identity may no longer hold (the ACL changed, an
 * anonymous filter names a provisioned device's commands), each with a log line and its
 * stored row deleted. Returns how many were dropped. */
size_t broker_session_recheck(struct mqtt_broker *b, struct mqtt_session *s);
/* For an anonymous client: true when topic (a name for ACL_PUBLISH, a filter for
 * ACL_SUBSCRIBE) lies in a provisioned device's namespace devices/<id>/... (publish) or
 * names its commands topic devices/<id>/commands[/...] (subscribe). Provisioned: in the
 * registry with a token (a device that registered itself anonymously has none). */
bool broker_anon_denied(const struct mqtt_broker *b, const char *topic, size_t len,
                        enum acl_action action);
/* Whether a retained message of len payload bytes on topic fits its device's share
 * (limits.max_retained_per_device, limits.max_retained_bytes_per_device; topics outside
 * devices/<id>/ are bounded by mqtt.max_retained only). Else *why is a static reason. */
bool broker_retained_room(struct mqtt_broker *b, const char *topic, size_t len,
                          const char **why);

/* retained.c */
void retained_init(struct retained_store *rs);
/* Frees every node and message (references dropped). */
void retained_fini(struct retained_store *rs);
/* Sets the retained message of m->topic to m (reference taken), or clears the topic when
 * m's payload is empty [MQTT-3.3.1-10]. */
void retained_put(struct retained_store *rs, struct msg *m);
size_t retained_count(const struct retained_store *rs);
typedef void (*retained_fn)(void *ctx, struct retained *r);
/* Calls fn for each retained message whose topic the (valid) filter matches, '$' topics
 * excluded from leading wildcards. fn must not change the store. */
void retained_match(const struct retained_store *rs, const char *filter, size_t len,
                    retained_fn fn, void *ctx);

/* broker.c */

/* The MQTT state of connection c (zeroed but for c, b and out; not connected yet). */
struct mqtt_conn *broker_conn_new(struct mqtt_broker *b, struct conn *c);
/* The connection's close callback (gateway/conn.h: no code of c's is on the stack):
 * finishes mc when that has not happened yet, and frees it. */
void broker_conn_close(struct mqtt_conn *mc);
/* Finishes mc, whose connection is closing, now (publishes the will, detaches the session,
 * updates presence; once): a takeover needs the old session detached before the new
 * connection takes it, which must not wait for the old connection's close callback. */
void broker_conn_finish_now(struct mqtt_conn *mc);
/* Sends the packet encoded in mc->out (and empties it); counts it for $SYS. Its memory
 * goes on to the next packet of any connection (broker_out): a connection keeps none. */
void broker_send(struct mqtt_conn *mc);
/* mc->out emptied, on the memory of the last packet sent when it has none: encoding a
 * packet allocates nothing. */
struct buf *broker_out(struct mqtt_conn *mc);
struct mqtt_session *broker_session_get(struct mqtt_broker *b, const char *client_id);
/* role and username: the client's identity (ACL checks on delivery, ownership). */
struct mqtt_session *broker_session_new(struct mqtt_broker *b, const char *client_id, bool clean,
                                        enum acl_role role, const char *username);
/* Sets the identity of a resumed session (persisted when it changed). */
void broker_session_set_identity(struct mqtt_broker *b, struct mqtt_session *s,
                                 enum acl_role role, const char *username);
/* Writes the identity record of a persistent session (a new one; nothing for clean). */
void broker_session_persist(struct mqtt_broker *b, struct mqtt_session *s);
/* Returns the seq of the session's deletion from storage (0: a clean session, none). */
uint64_t broker_session_free(struct mqtt_broker *b, struct mqtt_session *s);
/* Attaches a connection: resends in-flight messages (DUP) and pumps the queue. */
void broker_session_attach(struct mqtt_broker *b, struct mqtt_session *s, struct mqtt_conn *mc);
void broker_session_detach(struct mqtt_broker *b, struct mqtt_session *s);
/* Subscribes s to filter (len bytes, valid) with qos, or changes the qos it has; s->nsubs
 * counts a new filter. A persistent session writes that one subscription. */
void broker_session_subscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                              size_t len, uint8_t qos, uint32_t opts);
/* Whether s may hold one more filter (len bytes, valid): NULL, or the config key of the
 * limit it would pass (mqtt.max_subscriptions, mqtt.max_subscription_bytes,
 * mqtt.max_subscription_levels), counted in metrics, with the limit in *limit. */
const char *broker_subscribe_room(struct mqtt_broker *b, const struct mqtt_session *s,
                                  const char *filter, size_t len, size_t *limit);
/* Counts (sign 1) or uncounts (-1) a subscription of s to filter in its nsubs, sub_bytes
 * and sub_levels. */
void broker_session_count_sub(struct mqtt_session *s, const char *filter, size_t len, int sign);
/* Removes s's subscription to filter: true when it had one (then a persistent session
 * deletes that one row). */
bool broker_session_unsubscribe(struct mqtt_broker *b, struct mqtt_session *s,
                                const char *filter, size_t len);
/* Client acks for messages the broker sent. */
void broker_on_puback(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id);
/* rc: the MQTT 5 reason code (0 for 3.1.1); one >= 0x80 ends the flow. */
void broker_on_pubrec(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id, uint8_t rc);
void broker_on_pubcomp(struct mqtt_broker *b, struct mqtt_session *s, uint16_t id);
/* Adds the retained messages matching filter, with at most qos, to s's backlog and sends
 * what the in-flight window and the socket allow now; the rest follows (pump). */
void broker_send_retained(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                          size_t len, uint8_t qos, uint32_t subid);

#endif
