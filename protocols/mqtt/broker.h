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

/* Creates the broker, loads retained messages and persistent sessions from storage
 * (start-up, blocks) and adds the bus sink. Returns NULL on failure (logged). */
struct mqtt_broker *mqtt_broker_new(struct gw *gw);
/* Closes its timer; frees sessions and state (after connections are closed). NULL is
 * ignored. */
void mqtt_broker_free(struct mqtt_broker *b);

/* Publishes a message from the gateway itself (commands, presence, $SYS) through
 * the bus, as a client would: retained when retain is set. */
void mqtt_broker_publish(struct gw *gw, enum msg_kind kind, const char *device,
                         const char *topic, const void *payload, size_t len, uint8_t qos,
                         bool retain);

/* Called when a device's MQTT session acknowledged (PUBACK/PUBCOMP) message m. */
typedef void (*mqtt_delivered_fn)(void *ctx, const char *device, struct msg *m);
/* Called for every message published on devices/<id>/commands/<cmd>/reply. */
typedef void (*mqtt_reply_fn)(void *ctx, const char *device, const char *cmd_id,
                              const void *payload, size_t len);
void mqtt_broker_set_command_hooks(struct mqtt_broker *b, mqtt_delivered_fn delivered,
                                   mqtt_reply_fn reply, void *ctx);

/* Presence of any device (any protocol): retained devices/<id>/status online/offline. */
void mqtt_broker_presence(struct mqtt_broker *b, const char *device, bool online);

#endif
