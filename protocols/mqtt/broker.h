/* protocols/mqtt/broker.h: Gale's MQTT 3.1.1 server: sessions, subscriptions,
 * delivery with QoS 0/1/2, retained messages, wills, persistent sessions and
 * $SYS. The broker is a bus sink: every message on the bus (MQTT, line,
 * WebSocket, HTTP) reaches matching MQTT subscribers. Loop thread only. */
#ifndef GALE_MQTT_BROKER_H
#define GALE_MQTT_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
/* A subscription of a persistent session, loaded after its session. */
typedef void (*mqtt_store_session_sub_fn)(void *ctx, const char *client_id, const char *filter,
                                          uint8_t qos);
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
     * per subscription, whatever else the session holds. */
    uint64_t (*put_session_sub)(void *ctx, const char *client_id, const char *filter,
                                uint8_t qos);
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

/* Presence of any device (any protocol): retained devices/<id>/status online/offline. */
void mqtt_broker_presence(struct mqtt_broker *b, const char *device, bool online);
/* The device was deleted: its retained status topic, when there is one, is cleared (an
 * empty retained message, as a client would clear it, so subscribers see it go) and the
 * removal stored; the write is added to t (NULL: not awaited). NULL b is ignored. */
void mqtt_broker_forget_device(struct mqtt_broker *b, const char *device, struct ticket *t);

#endif
