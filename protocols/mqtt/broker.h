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

/* Proto ops for the MQTT listener (and for MQTT over WebSocket). */
extern const struct proto_ops mqtt_proto;

/* Creates the broker, loads retained messages and persistent sessions from storage
 * (start-up, blocks), adds the bus sink and sets gw->mqtt. Returns 0 or -1 (logged). */
int mqtt_broker_init(struct gw *gw);
/* Closes its timer; frees sessions and state (after connections are closed). */
void mqtt_broker_fini(struct gw *gw);

/* Publishes a message from the gateway itself (commands, presence, $SYS) through
 * the bus, as a client would: retained when retain is set. */
void mqtt_broker_publish(struct gw *gw, enum msg_kind kind, const char *device,
                         const char *topic, const void *payload, size_t len, uint8_t qos,
                         bool retain);

/* Called when a device's MQTT session acknowledged (PUBACK/PUBCOMP) message m. (Replies
 * to commands reach gw->on_command_reply through gateway/session.h, as from every
 * transport.) */
typedef void (*mqtt_delivered_fn)(void *ctx, const char *device, struct msg *m);
void mqtt_broker_set_command_hooks(struct gw *gw, mqtt_delivered_fn delivered, void *ctx);

/* Presence of any device (any protocol): retained devices/<id>/status online/offline. */
void mqtt_broker_presence(struct gw *gw, const char *device, bool online);

#endif
