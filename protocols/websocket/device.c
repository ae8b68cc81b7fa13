/* protocols/websocket/device.c: /ws/device, devices over WebSocket. One JSON object
 * per text (or binary) message, with the line protocol's semantics
 * (protocols/line/handle.c):
 *   auth         credentials with the upgrade (Authorization: Bearer <token> with
 *                ?device=<id>, or ?device=..&token=..), checked by web/ws_routes.c;
 *                or a first message {"device":"dev-1","token":"..."} -> {"ok":true}
 *   telemetry    any shape of DESIGN.md, optionally with "seq":N -> {"ack":N} once
 *                durable (the same ingest path as every transport: gateway/ingest.h)
 *   bad message  -> {"error":"...","code":"..."}; after line.max_errors of them the
 *                connection closes with 1008
 *   bad auth     -> error object, then close 1008
 *   commands     -> {"command":{"id":..,"name":..,"params":..}} text messages;
 *                {"reply":{"id":"<cmd-id>",...}} from the device is its reply.
 * Messages arrive whole from the WebSocket transport (ws_device_message); the
 * proto's feed only consumes. Loop thread only. */
#define _GNU_SOURCE /* memmem */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/ingest.h"
#include "gateway/log.h"
#include "base/alloc.h"
#include "protocols/websocket/ws_transport.h"

struct ws_device {
    struct conn *conn;
    int errors; /* error objects sent so far */
    bool authed;
    char topic[DEVICE_ID_MAX + 32]; /* devices/<id>/telemetry */
};

static void send_text(struct conn *c, struct buf *b)
{
    ws_conn_send(c, WS_OP_TEXT, b->data, b->len);
    c->msgs_out++;
}

static void send_error(struct ws_device *d, const char *code, const char *why, bool has_seq,
                       int64_t seq)
{
    struct buf b;
    buf_init(&b);
    ingest_write_error(&b, code, why, has_seq, seq);
    send_text(d->conn, &b);
    buf_fini(&b);
}

static void fatal(struct ws_device *d, const char *code, const char *why)
{
    send_error(d, code, why, false, 0);
    ws_conn_close(d->conn, WS_CLOSE_POLICY, why);
}

static void on_durable(struct conn *c, uint64_t tag, int ok)
{
    struct ws_device *d = c->proto_state;
    char out[64];
    int n;
    if (ok < 0 || !d)
        return;
    if (ok) {
        n = snprintf(out, sizeof out, "{\"ack\":%llu}", (unsigned long long)tag);
        ws_conn_send(c, WS_OP_TEXT, out, (size_t)n);
        c->msgs_out++;
    } else {
        send_error(d, "storage_error", "storage failure: not stored, send again", true,
                   (int64_t)tag);
    }
}

static void ws_device_send_command(struct conn *c, const char *json, size_t len)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"command\":");
    buf_append(&b, json, len);
    buf_append_str(&b, "}");
    send_text(c, &b);
    buf_fini(&b);
}

static void go_online(struct ws_device *d, struct device *dev)
{
    d->authed = true;
    d->conn->send_command = ws_device_send_command;
    snprintf(d->topic, sizeof d->topic, "devices/%s/telemetry", dev->id);
    ingest_online(d->conn->gw, d->conn, dev, "ws");
}

void ws_device_authenticated(struct conn *c, struct device *dev)
{
    struct ws_device *d = c->proto_state;
    if (c->proto == &ws_device_proto && d && !d->authed)
        go_online(d, dev);
}

static void handle_auth(struct ws_device *d, const uint8_t *p, size_t len)
{
    struct gw *gw = d->conn->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)p, len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "device");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    struct device *dev;

    if (!cJSON_IsObject(root) || !cJSON_IsString(id) || !cJSON_IsString(tok)) {
        gw->metrics.auth_failures++;
        log_warn("conn=%llu peer=%s proto=ws-device auth failed reason=\"first message must be "
                 "{\\\"device\\\":..,\\\"token\\\":..}\"",
                 (unsigned long long)d->conn->id, d->conn->peer);
        cJSON_Delete(root);
        fatal(d, "unauthorized",
              "first message must be {\"device\":\"<id>\",\"token\":\"<token>\"}");
        return;
    }
    dev = ingest_auth(gw, d->conn, id->valuestring, strlen(id->valuestring), tok->valuestring,
                      strlen(tok->valuestring));
    cJSON_Delete(root);
    if (!dev) {
        fatal(d, "unauthorized", "authentication failed");
        return;
    }
    go_online(d, dev);
    ws_conn_send(d->conn, WS_OP_TEXT, "{\"ok\":true}", 11);
}

/* {"reply":{"id":"<cmd-id>",...}}: a command reply. Returns true when it was one. */
static bool handle_reply(struct ws_device *d, const uint8_t *p, size_t len)
{
    struct gw *gw = d->conn->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)p, len);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "reply");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
    bool done = false;
    if (cJSON_IsObject(r) && cJSON_IsString(id) && cJSON_GetArraySize(root) == 1) {
        char *js = cJSON_PrintUnformatted(r);
        if (gw->on_command_reply)
            gw->on_command_reply(gw, d->conn->device, id->valuestring, js, strlen(js));
        cJSON_free(js);
        done = true;
    }
    cJSON_Delete(root);
    return done;
}

void ws_device_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *p, size_t len)
{
    struct ws_device *d = state;
    struct gw *gw = c->gw;
    struct device *dev;
    struct ingest_result res;
    const char *why = NULL, *code = NULL;

    (void)opcode; /* text or binary: both must hold JSON */
    if (!d)
        return;
    if (!d->authed) {
        handle_auth(d, p, len);
        return;
    }
    dev = devices_find(gw->devices, c->device);
    if (!dev) {
        fatal(d, "unauthorized", "device was deleted");
        return;
    }
    if (len > 9 && memmem(p, len < 32 ? len : 32, "\"reply\"", 7) && handle_reply(d, p, len))
        return;
    if (ingest_telemetry(gw, dev, d->topic, p, len, &res, &why, &code) != 0) {
        gw->metrics.line_errors++;
        d->errors++;
        log_info("conn=%llu peer=%s proto=ws-device device=%s bad message reason=\"%s\" "
                 "errors=%d",
                 (unsigned long long)c->id, c->peer, dev->id, why, d->errors);
        send_error(d, code, why, false, 0);
        if (d->errors >= gw->cfg->line.max_errors)
            fatal(d, "too_many_errors", "too many bad messages, closing");
        return;
    }
    if (res.has_seq)
        gw_await_durable(c, &res.ticket, (uint64_t)res.seq, on_durable);
}

static void *wsdev_open(struct conn *c, void *ctx)
{
    (void)ctx;
    struct ws_device *d = xcalloc(1, sizeof *d);
    d->conn = c;
    c->ingest = true;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return d;
}

static int wsdev_feed(void *state, struct buf *in)
{
    (void)state;
    in->len = 0; /* messages come whole through ws_device_message */
    return 0;
}

static void wsdev_close(void *state, const char *why)
{
    struct ws_device *d = state;
    (void)why;
    if (d->authed)
        ingest_offline(d->conn->gw, d->conn);
    free(d);
}

const struct proto_ops ws_device_proto = {"ws-device", wsdev_open, wsdev_feed, wsdev_close};
