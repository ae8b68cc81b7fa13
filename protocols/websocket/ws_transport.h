/* protocols/websocket/ws_transport.h: WebSocket as a connection transport (DESIGN.md
 * "Layers"), and the device endpoint that rides on it.
 *
 * After the HTTP upgrade (web/ws_routes.c) a connection gets a WebSocket transport
 * under its new protocol. Raw socket bytes go to the transport's feed, which runs
 * the frame assembler (ws.h) over c->raw and, for each complete data message,
 * either
 *   - appends the payload to c->in (byte-stream protocols: MQTT, whose packets may
 *     be split across messages or packed several to a message), or
 *   - hands the whole message to the endpoint's message function (message-oriented
 *     protocols: /ws/device, /ws/live, /ws/echo). Their proto_ops have a feed that
 *     only consumes; their state is driven from here.
 * The transport answers pings, runs the close handshake, closes with the right code
 * (1002/1007/1009/1011) on bad input, pings idle peers and drops those that do not
 * answer, and enforces the protocol's auth deadline (c->auth_timeout_ms counted
 * from the upgrade). conn_send() on such a connection sends one message per call
 * (binary for MQTT, text for the JSON endpoints), compressed when permessage-deflate
 * was agreed and the endpoint allows it.
 *
 * Loop thread only. The transport state belongs to the connection: conn_close()
 * releases it (its timer is closed, and the state freed in the close callback). */
#ifndef GALE_WS_TRANSPORT_H
#define GALE_WS_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/conn.h"
#include "protocols/websocket/ws.h"

struct device;

/* A whole data message for a message-oriented endpoint. opcode is WS_OP_TEXT (valid
 * UTF-8) or WS_OP_BINARY; data is borrowed until the function returns. state is
 * c->proto_state. The function may send and may close the connection. */
typedef void (*ws_message_fn)(struct conn *c, void *state, uint8_t opcode, const uint8_t *data,
                              size_t len);

struct ws_conn_cfg {
    const char *endpoint;             /* "/mqtt", "/ws/device", ... (logs) */
    size_t max_message_bytes;         /* cap on a received message (1009 above it) */
    struct ws_deflate_params deflate; /* agreed in the handshake (.enabled or not) */
    bool compress_out;                /* compress what conn_send sends (when agreed) */
    uint8_t send_opcode;              /* opcode of conn_send messages: TEXT or BINARY */
    ws_message_fn on_message;         /* NULL: payloads are appended to c->in */
};

extern const struct transport_ops ws_transport;

/* Puts a WebSocket transport under c (conn_set_transport): bytes already read after
 * the upgrade request become frame input. Call after writing the 101 response. */
void ws_conn_attach(struct conn *c, const struct ws_conn_cfg *cfg);
/* True when c is open and carries a WebSocket transport. */
bool ws_conn_is(const struct conn *c);
/* The permessage-deflate parameters agreed for c (NULL when none or not WebSocket). */
const struct ws_deflate_params *ws_conn_deflate(const struct conn *c);
/* Sends one whole message (text or binary), compressed when cfg allowed it. Nothing
 * is sent once a close frame went out. */
void ws_conn_send(struct conn *c, uint8_t opcode, const void *data, size_t len);
/* Writes already-encoded frames as they are (the live feed's shared frames). */
void ws_conn_send_frames(struct conn *c, const void *frames, size_t len);
/* Starts the close handshake from our side: a close frame with code (a valid wire
 * code) and reason, then the TCP connection closes once the peer answers with its
 * own close, hangs up, or after a short grace period. Logs once. */
void ws_conn_close(struct conn *c, uint16_t code, const char *reason);

/* ---- /ws/device (device.c) ------------------------------------------------------ */

/* The device endpoint: one JSON object per message, with the device session's
 * semantics (gateway/session.h, the same as the line protocol's): telemetry with
 * optional "seq" acked as {"ack":N} once durable, {"error","code"} objects for bad
 * messages (closing with 1008 after line.max_errors), commands delivered as
 * {"command":{...}} and replies {"reply":{"id":..}}. proto.open expects the WebSocket
 * transport in place. */
extern const struct proto_ops ws_device_proto;
/* Marks the device connection as authenticated by dev (credentials came with the
 * upgrade request): it goes online at once. Otherwise the first message must be
 * {"device":"..","token":".."}, answered {"ok":true}. */
void ws_device_authenticated(struct conn *c, struct device *dev);
/* The message function for ws_device_proto (struct ws_conn_cfg.on_message). */
void ws_device_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *data,
                       size_t len);

#endif
