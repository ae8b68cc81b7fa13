/* protocols/mqtt/share.h: shared subscriptions "$share/<name>/<filter>" (MQTT 5.0 §4.8.2),
 * for 3.1.1 and 5.0 clients alike. Loop thread only.
 *
 * A group is one (share name, filter) pair and its members (sessions, each with its
 * granted QoS and options). The router holds a group once, under the group itself, with
 * SHARE_OPT_GROUP in its option word; each member also holds its full "$share/..." filter
 * in the router (SHARE_OPT_MEMBER: it delivers nothing itself), so a session's shared
 * subscriptions are listed, counted against its bounds, stored and dropped with its other
 * subscriptions. A message the group's filter matches goes to one member (share_pick).
 *
 * The first half is pure (groups, members, picking; unit tested with opaque members);
 * the second half is the broker's side (broker_int.h). */
#ifndef GALE_MQTT_SHARE_H
#define GALE_MQTT_SHARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/map.h"
#include "protocols/mqtt/mqtt.h"

/* Bits of the router's per-subscription option word (the high two: 5.0's options and
 * subscription identifiers use the low 30). */
#define SHARE_OPT_GROUP 0x80000000u  /* the subscriber is a struct share_group */
#define SHARE_OPT_MEMBER 0x40000000u /* a session's own "$share/..." entry */

/* mqtt.shared_subscription_strategy (the order of the config words). */
enum share_strategy {
    SHARE_ROUND_ROBIN = 0,  /* each message to the next member that can take it */
    SHARE_STICKY = 1,       /* one publisher's messages to one member (rendezvous hash) */
};

/* How well a member can take a message now (the broker's view of its session). */
enum share_fit {
    SHARE_FIT_NO = 0,       /* cannot take it (offline clean, offline for QoS 0, queue full) */
    SHARE_FIT_LATER,        /* would queue it behind others (window full, socket busy) */
    SHARE_FIT_NOW,          /* takes it now, or an offline persistent session queues it */
};
typedef enum share_fit (*share_fit_fn)(void *ctx, void *sub, uint8_t qos);

struct share_member {
    void *sub;              /* the session */
    uint64_t hid;           /* hash of its client id: its place in sticky picking */
    uint32_t opts;          /* its subscription options (SHARE_OPT_* cleared) */
    uint8_t qos;            /* granted QoS */
};

struct share_group {
    char *key;              /* "<name>/<filter>" (map key, heap) */
    size_t name_len;        /* key[0, name_len) is the share name, the filter follows '/' */
    struct share_member *m; /* members, in joining order */
    uint32_t n, cap;
    uint32_t next;          /* round robin: the member to try first */
    uint16_t idx;           /* its tag on the messages it delivered (1..65535) */
    uint64_t sent;          /* messages delivered through it */
};

/* Every group of a broker. */
struct share_groups {
    struct map by_key;              /* "<name>/<filter>" -> struct share_group */
    struct share_group **by_idx;    /* [idx]; NULL = free; [0] never used */
    size_t cap_idx;
    size_t free_from;               /* no free index below it */
    size_t members;                 /* memberships of every group */
};

#define SHARE_MAX_GROUPS 65535

/* ---- pure part ---- */

void share_groups_init(struct share_groups *sg);
/* Frees every group (members are the caller's). */
void share_groups_fini(struct share_groups *sg);
/* The group of name and filter, or NULL. */
struct share_group *share_group_get(const struct share_groups *sg, const char *name,
                                    size_t name_len, const char *filter, size_t filter_len);
/* The group tagged idx, or NULL. */
struct share_group *share_group_at(const struct share_groups *sg, uint16_t idx);
/* Adds sub to the group of name and filter (created when new), or updates its qos and
 * opts. Returns 1 when the group is new (the caller adds it to the router), 0 when it
 * existed, GW_ELIMIT when SHARE_MAX_GROUPS groups exist. *out is the group (not on
 * GW_ELIMIT). */
int share_join(struct share_groups *sg, const char *name, size_t name_len, const char *filter,
               size_t filter_len, void *sub, uint64_t hid, uint8_t qos, uint32_t opts,
               struct share_group **out);
/* Removes sub from g: true when it was a member. A group left empty stays until
 * share_group_free. */
bool share_leave(struct share_groups *sg, struct share_group *g, void *sub);
void share_group_free(struct share_groups *sg, struct share_group *g);
/* The member that gets a message of qos (before the member's own granted QoS) published
 * under key (its publisher), or NULL when none can take it. Round robin: from g->next,
 * the first member fit NOW, else the first fit LATER; g->next moves past it. Sticky: the
 * member fit at all that ranks highest for key (rendezvous hashing: a member joining or
 * leaving moves only the publishers it takes or had). */
struct share_member *share_pick(struct share_group *g, enum share_strategy how, uint8_t qos,
                                const char *key, size_t key_len, share_fit_fn fit, void *ctx);
/* The filter of a SUBSCRIBE entry the ACL judges: a shared subscription's own filter,
 * else the whole. Returns 1 for a shared subscription (*name set too when not NULL),
 * 0 for another filter, -1 for a malformed "$share/..." one. */
int share_parse(const char *filter, size_t len, struct mqtt_str *name, struct mqtt_str *inner);

/* ---- the broker's side (share.c; broker_int.h) ---- */

struct mqtt_broker;
struct mqtt_session;
struct msg;

/* mqtt_router_subscribe for session s with options opts, that also joins the group of a
 * "$share/..." filter. Returns as mqtt_router_subscribe (1 new, 0 replaced, < 0 refused:
 * GW_ELIMIT at SHARE_MAX_GROUPS). */
int share_subscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                    size_t len, uint8_t qos, uint32_t opts);
/* mqtt_router_unsubscribe for session s; a member leaving its group hands the messages
 * that came through the group and wait for it to another member (share_session_gone).
 * Returns 1 when s held filter. */
int share_unsubscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                      size_t len);
/* s is being freed: it leaves every group it is in, handing them its messages (queued
 * and in flight but not yet PUBREC'd) as new messages to other members. */
void share_session_gone(struct mqtt_broker *b, struct mqtt_session *s);
/* Routes m to one member of group g (the router's match callback). */
void share_route(struct mqtt_broker *b, struct share_group *g, struct msg *m);
/* Groups held (the router's count holds them as subscriptions too). */
size_t share_group_count(const struct mqtt_broker *b);
/* Frees every group (broker shutdown). */
void share_free(struct mqtt_broker *b);

/* broker.c, for share.c */
/* How well s can take m with (effective) qos now. */
enum share_fit broker_share_fit(struct mqtt_broker *b, struct mqtt_session *s,
                                const struct msg *m, uint8_t qos);
/* deliver() with the group's tag on the message (struct out_msg.group). */
void broker_share_deliver(struct mqtt_broker *b, struct mqtt_session *s, struct msg *m,
                          uint8_t qos, uint16_t group, uint32_t opts);
/* Called for each message of s tagged group that may go to another member: true when it
 * went (s then lets it go), false to keep it (untagged). */
typedef bool (*broker_share_give_fn)(void *ctx, struct msg *m, uint8_t qos);
/* Offers give the messages of s tagged group: queued ones, and in flight ones too when s
 * is offline, except those PUBREC'd (the client has them). Returns how many went. */
size_t broker_share_take(struct mqtt_broker *b, struct mqtt_session *s, uint16_t group,
                         broker_share_give_fn give, void *ctx);

#endif
