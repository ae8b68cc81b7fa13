/* protocols/mqtt/broker.h: Gale's MQTT 3.1.1 server: sessions, subscriptions,
 * delivery with QoS 0/1/2, retained messages, wills, persistent sessions and
 * $SYS. The broker is a bus sink: every message on the bus (MQTT, line,
 * WebSocket, HTTP) reaches matching MQTT subscribers. Loop thread only. */
#ifndef GALE_MQTT_BROKER_H
#define GALE_MQTT_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/conn.h"
#include "gateway/msg.h"

struct gw;
struct mqtt_broker;

/* Proto ops for the MQTT listener (and for MQTT over WebSocket); open()'s ctx is the
 * struct mqtt_broker. */
extern const struct proto_ops mqtt_proto;

/* ---- persistence port: what the broker needs kept across restarts, in plain types.
 * main.c wires storage into it. Writes are queued in the order made and never block;
 * each returns the seq of its write (0: nothing queued), which the broker adds to the
 * ticket of the message being routed, so that message's ack waits for it. Loads run at
 * start-up only and may block; they return 0 or negative. */

/* A retained message loaded at start-up. */
typedef void (*mqtt_store_retained_fn)(void *ctx, const char *topic, const void *payload,
                                       size_t len, uint8_t qos);
/* A persistent session loaded at start-up: record is what put_session stored. */
typedef void (*mqtt_store_session_fn)(void *ctx, const char *client_id, const char *record);
/* A subscription of a persistent session, loaded after its session: qos is what
 * put_session_sub stored. */
typedef void (*mqtt_store_session_sub_fn)(void *ctx, const char *client_id, const char *filter,
                                          uint64_t qos);
/* A message of a persistent session, loaded after its subscriptions, in msg_id order. */
typedef void (*mqtt_store_session_msg_fn)(void *ctx, const char *client_id, uint64_t msg_id,
                                          const char *topic, const void *payload, size_t len,
                                          uint8_t qos, uint8_t flags);

struct mqtt_store {
    void *ctx;  /* passed to every function below */
    /* Sets the retained message of topic; len 0 deletes it. Copies everything. */
    uint64_t (*put_retained)(void *ctx, const char *topic, const void *payload, size_t len,
                             uint8_t qos);
    /* Creates or replaces the record of a persistent session (its identity, as JSON the
     * broker reads back; opaque to the store). */
    uint64_t (*put_session)(void *ctx, const char *client_id, const char *record);
    /* Deletes the session, its subscriptions and every message kept for it. */
    uint64_t (*delete_session)(void *ctx, const char *client_id);
    /* Adds subscription filter of a persistent session, or replaces its qos: one write
     * per subscription, whatever else the session holds. qos is the QoS in bits 0..1 and
     * the MQTT 5 options (router option word) from bit 8 up. */
    uint64_t (*put_session_sub)(void *ctx, const char *client_id, const char *filter,
                                uint64_t qos);
    uint64_t (*delete_session_sub)(void *ctx, const char *client_id, const char *filter);
    /* Creates or replaces message msg_id (the session's own increasing number) of a
     * persistent session; flags is a byte the broker reads back as it wrote it. */
    uint64_t (*put_session_msg)(void *ctx, const char *client_id, uint64_t msg_id,
                                const char *topic, const void *payload, size_t len,
                                uint8_t qos, uint8_t flags);
    uint64_t (*delete_session_msg)(void *ctx, const char *client_id, uint64_t msg_id);
    int (*load_retained)(void *ctx, mqtt_store_retained_fn fn, void *fn_ctx);
    /* Calls on_session per session, then on_sub for each of its subscriptions, then
     * on_msg for each of its messages. */
    int (*load_sessions)(void *ctx, mqtt_store_session_fn on_session,
                         mqtt_store_session_sub_fn on_sub, mqtt_store_session_msg_fn on_msg,
                         void *fn_ctx);
};

/* Creates the broker, loads retained messages and persistent sessions through store
 * (start-up, blocks; the port is copied) and adds the bus sink. Returns NULL on failure
 * (logged). */
struct mqtt_broker *mqtt_broker_new(struct gw *gw, const struct mqtt_store *store);
/* Closes its timer; frees sessions and state (after connections are closed). NULL is
 * ignored. */
void mqtt_broker_free(struct mqtt_broker *b);

/* Publishes a message from the gateway itself (commands, presence, $SYS) through
 * the bus, as a client would: retained when retain is set. */
void mqtt_broker_publish(struct gw *gw, enum msg_kind kind, const char *device,
                         const char *topic, const void *payload, size_t len, uint8_t qos,
                         bool retain);

/* Called when a device's MQTT session acknowledged (PUBACK/PUBCOMP) message m. (Replies
 * to commands reach gw->on_command_reply through gateway/session.h, as from every
 * transport.) */
typedef void (*mqtt_delivered_fn)(void *ctx, const char *device, struct msg *m);
void mqtt_broker_set_command_hooks(struct mqtt_broker *b, mqtt_delivered_fn delivered,
                                   void *ctx);

/* MQTT 5 enhanced authentication (5.0 §4.12): a method Gale answers. fn is called with
 * the Authentication Data of a CONNECT (or of an AUTH asking for re-authentication, 0x19)
 * naming method, and the CONNECT's user name; it may append Authentication Data to
 * reply, and returns MQTT_RC_SUCCESS (the client is let in: the user name and password
 * checks still apply) or a CONNACK reason code >= 0x80 (refused with it). Single-step
 * methods only: a CONNECT naming any other method, or any method while none is set, is
 * refused with 0x8C (Bad authentication method). One method; NULL method removes it. */
typedef uint8_t (*mqtt_auth_fn)(void *ctx, const char *username, size_t username_len,
                                const uint8_t *data, size_t len, struct buf *reply);
void mqtt_broker_set_auth(struct mqtt_broker *b, const char *method, mqtt_auth_fn fn, void *ctx);

/* Presence of any device (any protocol): retained devices/<id>/status online/offline. */
void mqtt_broker_presence(struct mqtt_broker *b, const char *device, bool online);
/* The device was deleted: its retained status topic, when there is one, is cleared (an
 * empty retained message, as a client would clear it, so subscribers see it go) and the
 * removal stored; the write is added to t (NULL: not awaited). NULL b is ignored. */
void mqtt_broker_forget_device(struct mqtt_broker *b, const char *device, struct ticket *t);

/* ---- operations (REST /api/mqtt/...: web/ops.c), protocols/mqtt/admin.c ----
 * Snapshots in plain types; every string is borrowed for the call only. */
struct mqtt_session_info {
    const char *client_id;
    const char *username;       /* "" for none */
    const char *device;         /* the device the session speaks for, or "" */
    bool clean;                 /* discarded at disconnect */
    uint64_t conn_id;           /* its connection (gateway/conn.h id), 0 while offline */
    size_t subscriptions;
    size_t queued;              /* messages waiting for a connection or an in-flight slot */
    size_t inflight;            /* sent, not yet acknowledged */
    uint64_t dropped;           /* dropped by mqtt.max_queued */
    uint8_t protocol;           /* its connection's protocol level (3, 4, 5), 0 offline */
    uint32_t session_expiry_s;  /* kept this long offline; UINT32_MAX never (clean: 0) */
    uint32_t receive_maximum;   /* MQTT 5: the client's Receive Maximum (0 otherwise) */
    uint32_t topic_aliases;     /* MQTT 5: aliases in use on its connection, both ways */
    bool will_pending;          /* MQTT 5: a will waits for its delay */
};
typedef void (*mqtt_session_info_fn)(void *ctx, const struct mqtt_session_info *s);
typedef void (*mqtt_sub_info_fn)(void *ctx, const char *client_id, const char *filter,
                                 size_t len, uint8_t qos);
typedef void (*mqtt_retained_info_fn)(void *ctx, const char *topic, const void *payload,
                                      size_t len, uint8_t qos, int64_t ts_ms);

/* Calls fn once per session, in no particular order. */
void mqtt_broker_sessions(struct mqtt_broker *b, mqtt_session_info_fn fn, void *ctx);
/* Calls fn for client_id's session. Returns 0, or GW_ENOENT when there is none. */
int mqtt_broker_session(struct mqtt_broker *b, const char *client_id, mqtt_session_info_fn fn,
                        void *ctx);
/* Calls fn for each subscription of client_id's session (every session's when client_id
 * is NULL). Returns 0, or GW_ENOENT when client_id has no session. */
int mqtt_broker_subscriptions(struct mqtt_broker *b, const char *client_id, mqtt_sub_info_fn fn,
                              void *ctx);
/* Discards client_id's session: its connection is closed (the will, if any, is published
 * as for a lost connection), then its subscriptions and queued messages go, in storage
 * too for a persistent one (the write is added to t). Returns 0 or GW_ENOENT. */
int mqtt_broker_session_discard(struct mqtt_broker *b, const char *client_id, struct ticket *t);
/* Removes client_id's subscription to exactly filter (its row too, added to t). Returns 0,
 * or GW_ENOENT when there is no such session or subscription. */
int mqtt_broker_session_unsubscribe(struct mqtt_broker *b, const char *client_id,
                                    const char *filter, struct ticket *t);
/* A shared subscription group ($share/<share>/<filter>). */
struct mqtt_share_info {
    const char *share;          /* its name, share_len bytes (not NUL-terminated) */
    size_t share_len;
    const char *filter;         /* its filter */
    size_t members;
    size_t connected;           /* members with a connection */
    uint64_t sent;              /* messages given to a member since it was created */
};
typedef void (*mqtt_share_info_fn)(void *ctx, const struct mqtt_share_info *g);
/* Calls fn for each shared subscription group, sorted by name, then filter. */
void mqtt_broker_shared(struct mqtt_broker *b, mqtt_share_info_fn fn, void *ctx);
/* Calls fn for each retained message whose topic the valid filter matches ($SYS topics
 * only for filters that start with '$'). */
void mqtt_broker_retained(struct mqtt_broker *b, const char *filter, mqtt_retained_info_fn fn,
                          void *ctx);
/* Clears the retained message of topic, kept and stored (the write is added to t), without
 * sending anything to subscribers. Returns 0, or GW_ENOENT when topic retains nothing. */
int mqtt_broker_retained_clear(struct mqtt_broker *b, const char *topic, struct ticket *t);

#endif
