/* protocols/line/handle.c: the raw TCP line protocol, one JSON object per line.
 *   first line   {"device":"dev-1","token":"..."}   -> {"ok":true}
 *   then         telemetry (any shape of DESIGN.md), optionally with "seq":N
 *                -> {"ack":N} once the line is durable
 *   bad line     -> {"error":"...","code":"..."} (and "seq" when known); the
 *                   connection survives until line.max_errors errors
 *   bad auth / line too long -> error line, then close
 * Commands for the device are written to it as {"command":{...}} lines.
 * Loop thread only. */
#define _GNU_SOURCE /* memmem */
#include "protocols/line/line.h"

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
#include "protocols/line/line_proto.h"

struct line_conn {
    struct conn *conn;
    struct line_decoder dec;
    int errors;         /* error lines sent so far */
    bool authed;
    char topic[DEVICE_ID_MAX + 32]; /* devices/<id>/telemetry */
};

static void send_error(struct line_conn *l, const char *code, const char *why, bool has_seq,
                       int64_t seq)
{
    struct buf b;
    buf_init(&b);
    ingest_write_error(&b, code, why, has_seq, seq);
    buf_append_str(&b, "\n");
    conn_send(l->conn, b.data, b.len);
    l->conn->msgs_out++;
    buf_fini(&b);
}

static void fatal(struct line_conn *l, const char *code, const char *why)
{
    send_error(l, code, why, false, 0);
    conn_close_after_write(l->conn, why);
}

static void on_durable(struct conn *c, uint64_t tag, int ok)
{
    struct line_conn *l = c->proto_state;
    char out[64];
    int n;
    if (ok < 0)
        return;
    if (ok) {
        n = snprintf(out, sizeof out, "{\"ack\":%llu}\n", (unsigned long long)tag);
        conn_send(c, out, (size_t)n);
        c->msgs_out++;
    } else {
        send_error(l, "storage_error", "storage failure: not stored, send again", true,
                   (int64_t)tag);
    }
}

static void handle_auth(struct line_conn *l, const uint8_t *line, size_t len)
{
    struct gw *gw = l->conn->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)line, len);
    const cJSON *dev = cJSON_GetObjectItemCaseSensitive(root, "device");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    struct device *d;

    if (!root || !cJSON_IsObject(root) || !cJSON_IsString(dev) || !cJSON_IsString(tok)) {
        gw->metrics.auth_failures++;
        log_warn("conn=%llu peer=%s proto=line auth failed reason=\"first line must be "
                 "{\\\"device\\\":..,\\\"token\\\":..}\"",
                 (unsigned long long)l->conn->id, l->conn->peer);
        cJSON_Delete(root);
        fatal(l, "unauthorized", "first line must be {\"device\":\"<id>\",\"token\":\"<token>\"}");
        return;
    }
    d = ingest_auth(gw, l->conn, dev->valuestring, strlen(dev->valuestring), tok->valuestring,
                    strlen(tok->valuestring));
    cJSON_Delete(root);
    if (!d) {
        fatal(l, "unauthorized", "authentication failed");
        return;
    }
    l->authed = true;
    l->conn->send_command = line_send_command;
    snprintf(l->topic, sizeof l->topic, "devices/%s/telemetry", d->id);
    ingest_online(gw, l->conn, d, "line");
    conn_send(l->conn, "{\"ok\":true}\n", 12);
}

/* {"reply":{"id":"<cmd-id>",...}}: a command reply. Returns true when it was one. */
static bool handle_reply(struct line_conn *l, const uint8_t *line, size_t len)
{
    cJSON *root = cJSON_ParseWithLength((const char *)line, len);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "reply");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
    bool done = false;
    if (cJSON_IsObject(r) && cJSON_IsString(id) && cJSON_GetArraySize(root) == 1) {
        char *js = cJSON_PrintUnformatted(r);
        l->conn->gw->on_command_reply(l->conn->gw, l->conn->device, id->valuestring, js,
                                      strlen(js));
        cJSON_free(js);
        done = true;
    }
    cJSON_Delete(root);
    return done;
}

static void handle_line(struct line_conn *l, const uint8_t *line, size_t len)
{
    struct gw *gw = l->conn->gw;
    struct device *dev;
    struct ingest_result res;
    const char *why = NULL, *code = NULL;

    l->conn->msgs_in++;
    if (!l->authed) {
        handle_auth(l, line, len);
        return;
    }
    dev = devices_find(gw->devices, l->conn->device);
    if (!dev) {
        fatal(l, "unauthorized", "device was deleted");
        return;
    }
    if (len > 9 && memmem(line, len < 32 ? len : 32, "\"reply\"", 7) && handle_reply(l, line, len))
        return;
    if (ingest_telemetry(gw, dev, l->topic, line, len, &res, &why, &code) != 0) {
        gw->metrics.line_errors++;
        l->errors++;
        log_info("conn=%llu peer=%s proto=line device=%s bad line reason=\"%s\" errors=%d",
                 (unsigned long long)l->conn->id, l->conn->peer, dev->id, why, l->errors);
        if (l->errors >= gw->cfg->line.max_errors) {
            send_error(l, code, why, false, 0);
            fatal(l, "too_many_errors", "too many bad lines, closing");
            return;
        }
        send_error(l, code, why, false, 0);
        return;
    }
    if (res.has_seq)
        gw_await_durable(l->conn, &res.ticket, (uint64_t)res.seq, on_durable);
}

static void *line_open(struct conn *c, void *ctx)
{
    (void)ctx;
    struct line_conn *l = xcalloc(1, sizeof *l);
    l->conn = c;
    line_decoder_init(&l->dec, c->gw->cfg->line.max_line_bytes);
    c->ingest = true;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return l;
}

static int line_feed(void *state, struct buf *in)
{
    struct line_conn *l = state;
    struct conn *c = l->conn;
    size_t off = 0;

    while (!c->closing && !c->close_after_write && off < in->len) {
        const uint8_t *line;
        size_t line_len, used;
        const char *why;
        enum codec_rc rc = line_decode(&l->dec, in->data + off, in->len - off, &line, &line_len,
                                       &used, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            c->gw->metrics.line_errors++;
            fatal(l, "line_too_long", why);
            break;
        }
        off += used;
        if (line_len > 0)
            handle_line(l, line, line_len);
    }
    if (!c->closing)
        buf_consume(in, off);
    return c->closing ? -1 : 0;
}

static void line_close(void *state, const char *why)
{
    struct line_conn *l = state;
    (void)why;
    if (l->authed)
        ingest_offline(l->conn->gw, l->conn);
    free(l);
}

const struct proto_ops line_proto = {"line", line_open, line_feed, line_close};

void line_send_command(struct conn *c, const char *json, size_t len)
{
    conn_send(c, "{\"command\":", 11);
    conn_send(c, json, len);
    conn_send(c, "}\n", 2);
    c->msgs_out++;
}
