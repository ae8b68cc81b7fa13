/* web/commands.h: commands sent to devices. POST /api/devices/{id}/commands
 * publishes {"id","name","params"} on devices/<id>/commands (QoS 1) for MQTT
 * subscribers and writes it as a {"command":...} message to the device's session
 * connections (line protocol, /ws/device: conn->send_command). Status: queued ->
 * delivered (a device connection took it: PUBACK, or written to a session) ->
 * replied (commands_reply, which main wires as gw->on_command_reply: a message on
 * devices/<id>/commands/<cmd-id>/reply, or a {"reply":{"id":..}} message), or
 * expired when no reply came within its timeout. Every change is stored.
 * Loop thread only. */
#ifndef GALE_COMMANDS_H
#define GALE_COMMANDS_H

#include <stddef.h>

struct commands;
struct device;
struct gw;
struct http_conn;
struct http_req;
struct mqtt_broker;
struct store;

/* Loads the commands of the last 7 days from store (start-up, blocks), starts the
 * expiry timer and hooks into broker's deliveries and replies. Returns NULL when
 * loading failed. */
struct commands *commands_new(struct gw *gw, struct store *store, struct mqtt_broker *broker);
/* Frees every command (NULL is ignored); after the loop closed its handles. */
void commands_free(struct commands *cs);
/* REST: POST /api/devices/{id}/commands, GET .../commands, GET .../commands/{cmd}. */
void commands_post(struct commands *cs, struct http_conn *h, struct http_req *req,
                   struct device *dev);
void commands_get(struct commands *cs, struct http_conn *h, struct device *dev,
                  const char *cmd_id);
void commands_list(struct commands *cs, struct http_conn *h, struct device *dev);
/* A reply from a device over any transport. */
void commands_reply(struct commands *cs, const char *device, const char *cmd_id,
                    const void *payload, size_t len);

#endif
