/* protocols/websocket/device.c: /ws/device, devices over WebSocket. One JSON object per
 * text (or binary) message; each message goes whole to the device session
 * (gateway/session.h), the same as a line of the line protocol, and what the session
 * sends goes out as one text message each. Credentials that came with the upgrade are
 * checked by web/ws_routes.c (ws_device_authenticated); otherwise the first message
 * authenticates. A fatal error closes with 1008. Messages arrive whole from the
 * WebSocket transport (ws_device_message); the proto's feed only consumes. Loop thread
 * only. */
#include <stddef.h>
#include <stdlib.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "gateway/session.h"
#include "protocols/websocket/ws_transport.h"

static void ws_write(struct conn *c, struct buf *msg)
{
    ws_conn_send(c, WS_OP_TEXT, msg->data, msg->len);
}

static void ws_end(struct conn *c, const char *why)
{
    ws_conn_close(c, WS_CLOSE_POLICY, why);
}

static const struct session_ops ws_session = {"ws", "message", ws_write, ws_end};

void ws_device_authenticated(struct conn *c, struct device *dev)
{
    if (c->proto == &ws_device_proto && c->proto_state)
        session_authenticated(c->proto_state, dev);
}

void ws_device_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *p, size_t len)
{
    (void)c;
    (void)opcode; /* text or binary: both must hold JSON */
    if (state)
        session_message(state, p, len);
}

static void *wsdev_open(struct conn *c, void *ctx)
{
    struct session *s = xcalloc(1, sizeof *s);

    (void)ctx;
    session_init(s, c, &ws_session);
    return s;
}

static int wsdev_feed(void *state, struct buf *in)
{
    (void)state;
    in->len = 0; /* messages come whole through ws_device_message */
    return 0;
}

static void wsdev_close(void *state, const char *why)
{
    (void)why;
    session_close(state);
    free(state);
}

const struct proto_ops ws_device_proto = {"ws-device", wsdev_open, wsdev_feed, wsdev_close,
                                         NULL, 0, NULL, session_send_command};
