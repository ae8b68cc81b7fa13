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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct commands;
struct device;
struct gw;
struct http_conn;
struct http_req;
struct mqtt_broker;
struct store;
struct ticket;

/* A command's status changed to status ("queued", "delivered", "replied" with reply_json,
 * the device's reply as JSON text, or "expired"); strings valid during the call. */
typedef void (*commands_status_fn)(void *ctx, const char *device, const char *cmd_id,
                                   const char *status, const char *reply_json);

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
/* Creates a command for dev exactly as POST does (stored, published on
 * devices/<id>/commands, written to the device's session connections), for callers that
 * are not HTTP (the bridge, through main). id: 1..32 bytes chosen by the caller, or NULL
 * for a random one; params_json: JSON text or NULL; timeout_ms 1..604800000. The writes
 * join t (may be NULL); id_out gets the id. Returns 0, GW_EINVAL (bad name, id or
 * timeout) or GW_EEXIST (a command with that id exists: nothing is done). */
int commands_create(struct commands *cs, struct device *dev, const char *id, const char *name,
                    const char *params_json, int64_t timeout_ms, struct ticket *t,
                    char id_out[33]);
/* Every status change from now on goes to fn (NULL: none), "queued" included. */
void commands_set_status_hook(struct commands *cs, commands_status_fn fn, void *ctx);
/* A reply from a device over any transport. */
void commands_reply(struct commands *cs, const char *device, const char *cmd_id,
                    const void *payload, size_t len);
/* The same, saying what happened: 0 (status replied; its write joins t, which may be
 * NULL), GW_ENOENT (no such command of device) or GW_EEXIST (replied already). */
int commands_result(struct commands *cs, const char *device, const char *cmd_id,
                    const void *payload, size_t len, struct ticket *t);

/* ---- HTTP devices: they take their queued commands ---- */
/* A command was queued for device and no connection took it. */
typedef void (*commands_queued_fn)(void *ctx, const char *device);
void commands_set_queued_hook(struct commands *cs, commands_queued_fn fn, void *ctx);
/* Whether device has queued commands. */
bool commands_pending(struct commands *cs, const char *device);
/* Appends device's queued commands, oldest first, as a JSON array
 * [{"id","name","params"},...] to out and marks them delivered. Returns how many. */
size_t commands_take(struct commands *cs, const char *device, struct buf *out);

#endif
