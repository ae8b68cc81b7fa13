/* tools/sim/jsonline.c: the line protocol (raw TCP, one JSON object a line) and the
 * WebSocket device protocol (/ws/device, one JSON object a text frame): the same
 * messages in two framings (sline_).
 *
 * First message {"device":…,"token":…}, answered {"ok":true}. Telemetry with QoS 1
 * carries "seq":N and counts as acked at {"ack":N}; an error naming a seq counts as an
 * error and releases its slot. A command {"command":{"id","name","params"}} is answered
 * {"reply":{"id":…,"result":…,"name":…}}. Over WebSocket the connection starts with
 * the upgrade (GET /ws/device) and credentials go in the first message, as over TCP
 * (they stay out of access logs); frames to Gale are masked, pings are answered. */
#define _GNU_SOURCE /* memmem */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "protocols/websocket/ws.h"
#include "tools/sim/sim.h"

struct sline {
    bool ws;
    bool upgraded;      /* ws: the 101 came */
    struct buf out;
};

static void fail(struct dev *d, const char *why)
{
    dev_error(d, why);
    snet_close(d->net);
}

/* Frames one message (JSON text, no newline) into l->out. */
static void put_message(struct dev *d, const char *p, size_t len)
{
    struct sline *l = d->pstate;

    if (l->ws) {
        uint64_t r = tele_rand(&d->tele.rng);
        uint8_t key[4] = {(uint8_t)r, (uint8_t)(r >> 8), (uint8_t)(r >> 16), (uint8_t)(r >> 24)};
        ws_encode_client_frame(&l->out, WS_OP_TEXT, true, false, p, len, key);
    } else {
        buf_append(&l->out, p, len);
        buf_append(&l->out, "\n", 1);
    }
}

static void send_hello(struct dev *d)
{
    struct sline *l = d->pstate;
    struct buf b;

    buf_init(&b);
    buf_append_str(&b, "{\"device\":");
    buf_append_json_str(&b, d->id, strlen(d->id));
    if (d->token[0]) {
        buf_append_str(&b, ",\"token\":");
        buf_append_json_str(&b, d->token, strlen(d->token));
    }
    buf_append_str(&b, "}");
    put_message(d, (const char *)b.data, b.len);
    buf_fini(&b);
    snet_write(d->net, &l->out);
}

static void start(struct dev *d, bool ws)
{
    struct sline *l = xcalloc(1, sizeof *l);

    buf_init(&l->out);
    l->ws = ws;
    d->pstate = l;
    if (!ws) {
        send_hello(d);
        return;
    }
    buf_printf(&l->out,
               "GET /ws/device HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nUser-Agent: gale-sim\r\n\r\n",
               d->sim->http_host);
    snet_write(d->net, &l->out);
}

static void sline_start(struct dev *d) { start(d, false); }
static void sws_start(struct dev *d) { start(d, true); }

static void answer_command(struct dev *d, const cJSON *cmd)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(cmd, "id");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");
    const char *nm = cJSON_IsString(name) ? name->valuestring : "";

    if (!cJSON_IsString(id)) {
        dev_error(d, "a command without an id");
        return;
    }
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"reply\":{\"id\":");
    buf_append_json_str(&b, id->valuestring, strlen(id->valuestring));
    buf_printf(&b, ",\"result\":\"%s\",\"name\":", dev_command_result(nm));
    buf_append_json_str(&b, nm, strlen(nm));
    buf_append_str(&b, "}}");
    put_message(d, (const char *)b.data, b.len);
    buf_fini(&b);
    d->sim->st.cmds++;
}

/* One JSON message from Gale. Returns false when the connection is being closed. */
static bool on_message(struct dev *d, const char *p, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(p, len);
    const cJSON *v;
    bool go_on = true;

    if (!cJSON_IsObject(j)) {
        fail(d, "a message from the server that is not a JSON object");
        cJSON_Delete(j);
        return false;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "ack")) != NULL) {
        dev_acked(d, 1);
    } else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok"))) {
        dev_ready(d);
    } else if ((v = cJSON_GetObjectItemCaseSensitive(j, "command")) != NULL) {
        answer_command(d, v);
    } else if ((v = cJSON_GetObjectItemCaseSensitive(j, "error")) != NULL) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
        char why[200];
        snprintf(why, sizeof why, "error from the server: %s (%s)",
                 cJSON_IsString(v) ? v->valuestring : "?",
                 cJSON_IsString(code) ? code->valuestring : "?");
        if (cJSON_GetObjectItemCaseSensitive(j, "seq") && d->unacked > 0)
            d->unacked--; /* that message will not be acked */
        if (d->state == D_CONNECTING) {
            fail(d, why);
            go_on = false;
        } else {
            dev_error(d, why);
        }
    }
    cJSON_Delete(j);
    return go_on;
}

static void read_lines(struct dev *d)
{
    struct buf *in = &d->net->in;
    size_t off = 0;

    while (off < in->len) {
        uint8_t *nl = memchr(in->data + off, '\n', in->len - off);
        if (!nl)
            break;
        size_t n = (size_t)(nl - (in->data + off));
        bool ok = on_message(d, (const char *)in->data + off, n);
        off += n + 1;
        if (!ok)
            return;
    }
    buf_consume(in, off);
}

/* The upgrade's answer: true once it is in and was 101. */
static bool read_upgrade(struct dev *d)
{
    struct sline *l = d->pstate;
    struct buf *in = &d->net->in;
    const char *end = memmem(in->data, in->len, "\r\n\r\n", 4);

    if (!end)
        return false;
    if (in->len < 12 || memcmp(in->data, "HTTP/1.1 101", 12) != 0) {
        char why[64];
        snprintf(why, sizeof why, "WebSocket upgrade refused: %.12s", (const char *)in->data);
        fail(d, why);
        return false;
    }
    buf_consume(in, (size_t)(end + 4 - (const char *)in->data));
    l->upgraded = true;
    send_hello(d);
    return true;
}

static void read_frames(struct dev *d)
{
    struct sline *l = d->pstate;
    struct buf *in = &d->net->in;
    size_t off = 0;

    for (;;) {
        const uint8_t *p = in->data + off;
        size_t avail = in->len - off, hdr = 2;
        if (avail < 2)
            break;
        uint8_t op = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        if (p[1] & 0x80) {
            fail(d, "a masked frame from the server");
            return;
        }
        if (len == 126) {
            hdr = 4;
            if (avail < hdr)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
        } else if (len == 127) {
            hdr = 10;
            if (avail < hdr)
                break;
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | p[i];
        }
        if (len > (1u << 24)) {
            fail(d, "a WebSocket frame over 16 MiB from the server");
            return;
        }
        if (avail < hdr + len)
            break;
        off += hdr + (size_t)len;
        const char *payload = (const char *)p + hdr;
        if (op == WS_OP_TEXT || op == WS_OP_BINARY) {
            if (!on_message(d, payload, (size_t)len))
                return;
        } else if (op == WS_OP_PING) {
            uint64_t r = tele_rand(&d->tele.rng);
            uint8_t key[4] = {(uint8_t)r, (uint8_t)(r >> 8), (uint8_t)(r >> 16),
                              (uint8_t)(r >> 24)};
            ws_encode_client_frame(&l->out, WS_OP_PONG, true, false, payload, (size_t)len, key);
        } else if (op == WS_OP_CLOSE) {
            char why[160];
            unsigned code = len >= 2 ? (unsigned)((uint8_t)payload[0] << 8 | (uint8_t)payload[1])
                                     : 1005;
            snprintf(why, sizeof why, "WebSocket closed by the server: %u %.*s", code,
                     len > 2 ? (int)(len - 2) : 0, payload + 2);
            fail(d, why);
            return;
        }
    }
    buf_consume(in, off);
}

static void sline_read(struct dev *d)
{
    struct sline *l = d->pstate;

    if (l->ws) {
        if (!l->upgraded && !read_upgrade(d))
            return;
        read_frames(d);
    } else {
        read_lines(d);
    }
    if (d->net->open)
        snet_write(d->net, &l->out);
}

static int sline_send(struct dev *d, const struct buf *msg)
{
    struct sline *l = d->pstate;

    if (d->sim->o.qos) {
        /* {"seq":N, + the object's members */
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "{\"seq\":%llu,", (unsigned long long)++d->seq);
        buf_append(&b, msg->data + 1, msg->len - 1);
        put_message(d, (const char *)b.data, b.len);
        buf_fini(&b);
        d->unacked++;
    } else {
        put_message(d, (const char *)msg->data, msg->len);
    }
    snet_write(d->net, &l->out);
    return 0;
}

static void sline_finish(struct dev *d)
{
    struct sline *l = d->pstate;

    if (l->ws && l->upgraded) {
        uint8_t key[4] = {1, 2, 3, 4};
        uint8_t code[2] = {1000 >> 8, 1000 & 0xff};
        ws_encode_client_frame(&l->out, WS_OP_CLOSE, true, false, code, 2, key);
        snet_write(d->net, &l->out);
    }
}

static void sline_free(struct dev *d)
{
    struct sline *l = d->pstate;

    if (!l)
        return;
    buf_fini(&l->out);
    free(l);
}

const struct proto_ops sline_ops = {sline_start, sline_read, sline_send, sline_finish,
                                    sline_free};
const struct proto_ops sws_ops = {sws_start, sline_read, sline_send, sline_finish, sline_free};
