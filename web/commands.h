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

struct gw;
struct http_conn;
struct http_req;
struct device;

int commands_init(struct gw *gw);
void commands_fini(struct gw *gw);
/* REST: POST /api/devices/{id}/commands, GET .../commands, GET .../commands/{cmd}. */
void commands_post(struct gw *gw, struct http_conn *h, struct http_req *req, struct device *dev);
void commands_get(struct gw *gw, struct http_conn *h, struct device *dev, const char *cmd_id);
void commands_list(struct gw *gw, struct http_conn *h, struct device *dev);
/* A reply from a device over any transport. */
void commands_reply(struct gw *gw, const char *device, const char *cmd_id, const void *payload,
                    size_t len);

#endif
