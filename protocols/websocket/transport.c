/* protocols/websocket/transport.c: the WebSocket transport (see ws_transport.h).
 *
 * The path of a byte: on_read puts socket bytes in c->x->raw; ws_feed runs the
 * assembler over them (frames are unmasked in place), answers PINGs, handles the
 * close handshake, and passes each data message up: appended to c->in for MQTT,
 * or to the endpoint's message function. conn_send() comes back through ws_send,
 * which frames (and maybe compresses) one message per call and writes it with
 * conn_send_raw().
 *
 * Closing: a peer's close frame is echoed and the connection closes once that is
 * written. Our own close (bad input, auth failure, dead peer) sends a close frame
 * with the code and keeps reading for a short grace period, discarding data, until
 * the peer answers with its close frame or hangs up: closing at once with unread
 * input would reset the connection and the peer could lose our close frame.
 *
 * One timer per connection, re-armed lazily from the time of the last read (as
 * conn.c does): the auth deadline, the idle ping and its pong deadline, and the
 * close grace period. Its state is freed in the timer's close callback, after
 * conn_close. Loop thread only. */
#include "protocols/websocket/ws_transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "base/alloc.h"
#include "base/clock.h"

#define WS_PING_MAX_MS 30000      /* ping an idle peer at least this often */
#define WS_PING_MIN_MS 100        /* ...and no more often than this */
#define WS_CLOSE_GRACE_MS 1000    /* wait this long for the peer's close frame */
#define WS_DEFLATE_MIN_BYTES 128  /* smaller messages are sent uncompressed */
#define WS_SPLIT_SEND_BYTES 16384 /* above this, header and payload are sent apart */
#define WS_KEEP_BYTES 65536       /* assembler / scratch memory kept between messages */

enum ws_state {
    WS_OPEN,    /* messages flow */
    WS_CLOSING, /* our close frame went out; frames are skipped until the peer's close */
    WS_DISCARD, /* our close frame went out after a framing error: input is dropped */
};

struct ws_conn {
    struct conn *c;
    struct ws_conn_cfg cfg;
    struct ws_assembler as;       /* frames -> messages */
    struct ws_deflater *deflater; /* outgoing compression, or NULL */
    struct buf out;               /* scratch for one outgoing frame */
    enum ws_state state;
    uv_timer_t timer;           /* auth deadline, pings, close grace */
    uint64_t opened_ms;         /* monotonic ms of the upgrade */
    uint64_t ping_sent_ms;      /* monotonic ms of the unanswered ping */
    bool ping_out;              /* a ping is waiting for its pong (or any input) */
    uint64_t close_deadline_ms; /* WS_CLOSING / WS_DISCARD: hang up at this time */
    char close_why[128];        /* reason logged when the TCP connection closes */
};

static struct ws_conn *ws_of(const struct conn *c)
{
    return c->x->xport == &ws_transport ? c->x->xport_state : NULL;
}

static uint64_t ping_interval_ms(const struct conn *c)
{
    uint64_t p = c->idle_timeout_ms ? c->idle_timeout_ms / 3 : WS_PING_MAX_MS;
    return p > WS_PING_MAX_MS ? WS_PING_MAX_MS : p < WS_PING_MIN_MS ? WS_PING_MIN_MS : p;
}

static void on_timer(uv_timer_t *t);

static void arm(struct ws_conn *ws, uint64_t now)
{
    struct conn *c = ws->c;
    uint64_t due, interval = ping_interval_ms(c);

    if (c->closing)
        return;
    if (ws->state != WS_OPEN) {
        due = ws->close_deadline_ms;
    } else {
        uint64_t last = c->last_read_mono_ms > ws->opened_ms ? c->last_read_mono_ms : ws->opened_ms;
        if (c->held) /* storage holds its reads: no ping until the release */
            due = now + interval;
        else
            due = ws->ping_out ? ws->ping_sent_ms + interval : last + interval;
        if (c->auth_timeout_ms && ws->opened_ms + c->auth_timeout_ms < due)
            due = ws->opened_ms + c->auth_timeout_ms;
    }
    uv_timer_start(&ws->timer, on_timer, due > now ? due - now : 0, 0);
}

static void send_close_frame(struct ws_conn *ws, uint16_t code, const char *reason)
{
    ws->out.len = 0;
    ws_encode_close(&ws->out, code, reason, reason ? strlen(reason) : 0);
    conn_send_raw(ws->c, ws->out.data, ws->out.len);
}

/* Sends our close frame and waits (a little) for the peer's. in_sync: the input is
 * still at a frame boundary, so the peer's close frame can be recognised. */
static void begin_close(struct ws_conn *ws, uint16_t code, const char *reason, bool in_sync)
{
    struct conn *c = ws->c;
    if (ws->state != WS_OPEN || c->closing)
        return;
    log_info("conn=%llu peer=%s proto=%s endpoint=%s websocket close sent code=%u reason=\"%s\"",
             (unsigned long long)c->id, conn_peer(c), c->proto->name, ws->cfg.endpoint, code,
             log_q(reason));
    snprintf(ws->close_why, sizeof ws->close_why, "websocket close %u: %s", code, reason);
    send_close_frame(ws, code, reason);
    ws->state = in_sync ? WS_CLOSING : WS_DISCARD;
    ws->close_deadline_ms = gw_mono_ms() + WS_CLOSE_GRACE_MS;
    arm(ws, gw_mono_ms());
}

static void on_timer(uv_timer_t *t)
{
    struct ws_conn *ws = t->data;
    struct conn *c = ws->c;
    uint64_t now = gw_mono_ms();

    if (c->closing)
        return;
    if (ws->state != WS_OPEN) {
        if (now >= ws->close_deadline_ms) {
            conn_close(c, ws->close_why);
            return;
        }
    } else if (c->auth_timeout_ms && now - ws->opened_ms >= c->auth_timeout_ms) {
        c->gw->metrics.timeouts++;
        begin_close(ws, WS_CLOSE_POLICY, "authentication timeout", true);
        return;
    } else if (c->held) { /* storage holds its reads: a pong could not be read */
        ws->ping_out = false;
    } else if (ws->ping_out && c->last_read_mono_ms < ws->ping_sent_ms) {
        if (now - ws->ping_sent_ms >= ping_interval_ms(c)) {
            /* a dead peer reads nothing: no grace period, the frame is a courtesy */
            c->gw->metrics.timeouts++;
            log_info("conn=%llu peer=%s proto=%s endpoint=%s websocket ping unanswered "
                     "after_ms=%llu",
                     (unsigned long long)c->id, conn_peer(c), c->proto->name, ws->cfg.endpoint,
                     (unsigned long long)(now - ws->ping_sent_ms));
            send_close_frame(ws, WS_CLOSE_INTERNAL, "ping timeout");
            conn_close(c, "websocket ping timeout (no pong)");
            return;
        }
    } else {
        uint64_t last = c->last_read_mono_ms > ws->opened_ms ? c->last_read_mono_ms : ws->opened_ms;
        ws->ping_out = false; /* any input since the ping proves the peer alive */
        if (now - last >= ping_interval_ms(c)) {
            ws->out.len = 0;
            ws_encode_ping(&ws->out, "gale", 4);
            conn_send_raw(c, ws->out.data, ws->out.len);
            ws->ping_out = true;
            ws->ping_sent_ms = now;
        }
    }
    arm(ws, now);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct ws_conn *ws = h->data;
    buf_fini(&ws->out); /* again: a send may have run after ws_xclose */
    free(ws);
}

/* After our close frame: skip frames until the peer's close. */
static size_t feed_closing(struct ws_conn *ws, uint8_t *p, size_t len)
{
    struct ws_limits lim = {ws->cfg.max_message_bytes, true};
    size_t off = 0;

    while (ws->state == WS_CLOSING && !ws->c->closing && off < len) {
        struct ws_frame f;
        size_t used = 0;
        uint16_t code;
        const char *why;
        enum codec_rc rc = ws_decode_frame(&lim, p + off, len - off, &f, &used, &code, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            ws->state = WS_DISCARD;
            return len;
        }
        off += used;
        if (f.opcode == WS_OP_CLOSE)
            conn_close_after_write(ws->c, ws->close_why);
    }
    return ws->state == WS_DISCARD ? len : off;
}

static void handle_event(struct ws_conn *ws, struct buf *in, const struct ws_event *ev)
{
    struct conn *c = ws->c;

    switch (ev->type) {
    case WS_EV_MESSAGE:
        c->msgs_in++;
        if (ws->cfg.on_message) {
            ws->cfg.on_message(c, c->proto_state, ev->opcode, ev->data, ev->len);
        } else if (ev->opcode != WS_OP_BINARY) {
            /* MQTT over WebSocket: binary frames only [MQTT-6.0.0-1] */
            begin_close(ws, WS_CLOSE_UNSUPPORTED, "only binary messages are accepted", true);
        } else {
            buf_append(in, ev->data, ev->len);
        }
        break;
    case WS_EV_PING:
        ws->out.len = 0;
        ws_encode_pong(&ws->out, ev->data, ev->len);
        conn_send_raw(c, ws->out.data, ws->out.len);
        break;
    case WS_EV_PONG:
        ws->ping_out = false;
        break;
    case WS_EV_CLOSE:
        ws->out.len = 0;
        /* echo the peer's code; an empty close is answered with an empty close */
        ws_encode_close(&ws->out, ev->close_code == WS_CLOSE_NO_STATUS ? 0 : ev->close_code, NULL,
                        0);
        conn_send_raw(c, ws->out.data, ws->out.len);
        snprintf(ws->close_why, sizeof ws->close_why, "websocket closed by peer code=%u",
                 ev->close_code);
        ws->state = WS_CLOSING;
        ws->close_deadline_ms = gw_mono_ms() + WS_CLOSE_GRACE_MS;
        arm(ws, gw_mono_ms());
        conn_close_after_write(c, ws->close_why);
        break;
    case WS_EV_NONE:
        break;
    }
}

static int ws_feed(void *state, struct buf *raw, struct buf *in)
{
    struct ws_conn *ws = state;
    struct conn *c = ws->c;
    size_t off = 0;

    while (!c->closing && !c->close_after_write && off < raw->len) {
        struct ws_event ev;
        size_t used = 0;
        uint16_t code = 0;
        const char *why = NULL;
        enum codec_rc rc;

        /* before authentication a message is capped at limits.preauth_max_bytes */
        ws->as.lim.max_message_bytes = guard_cap(c, ws->cfg.max_message_bytes);
        if (ws->state != WS_OPEN) {
            off += ws->state == WS_CLOSING ? feed_closing(ws, raw->data + off, raw->len - off)
                                           : raw->len - off;
            break;
        }
        rc = ws_assembler_next(&ws->as, raw->data + off, raw->len - off, &ev, &used, &code, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            /* used is set only when the frame itself decoded: then the stream is in
             * sync and the peer's close frame can still be found after it */
            off += used;
            begin_close(ws, code, why, used > 0);
            continue;
        }
        off += used;
        handle_event(ws, in, &ev);
    }
    if (!c->closing) {
        buf_consume(raw, off);
        ws_assembler_trim(&ws->as, WS_KEEP_BYTES);
        /* in the pre-auth budget (gateway/guard.h) */
        conn_extra(c)->xport_held = ws_assembler_held(&ws->as) + ws->out.cap;
    }
    return c->closing ? -1 : 0;
}

static void send_message(struct ws_conn *ws, uint8_t opcode, const void *data, size_t len)
{
    struct conn *c = ws->c;

    if (ws->state != WS_OPEN || c->closing)
        return;
    ws->out.len = 0;
    if (ws->deflater && len >= WS_DEFLATE_MIN_BYTES) {
        if (ws_encode_message(&ws->out, ws->deflater, opcode, data, len) != 0) {
            begin_close(ws, WS_CLOSE_INTERNAL, "compression failed", true);
            return;
        }
    } else if (len > WS_SPLIT_SEND_BYTES) {
        ws_encode_header(&ws->out, opcode, true, false, len); /* spare a copy of the payload */
        conn_send_raw(c, ws->out.data, ws->out.len);
        conn_send_raw(c, data, len);
        return;
    } else {
        ws_encode_frame(&ws->out, opcode, true, false, data, len);
    }
    conn_send_raw(c, ws->out.data, ws->out.len);
    ws->out.len = 0;
    buf_shrink(&ws->out, WS_KEEP_BYTES);
}

static void ws_send(void *state, const void *data, size_t len)
{
    struct ws_conn *ws = state;
    send_message(ws, ws->cfg.send_opcode, data, len);
}

static void ws_xclose(void *state)
{
    struct ws_conn *ws = state;
    ws_assembler_fini(&ws->as);
    ws_deflater_free(ws->deflater);
    buf_fini(&ws->out);
    uv_timer_stop(&ws->timer);
    uv_close((uv_handle_t *)&ws->timer, on_timer_closed);
}

/* The connection is closing without a close handshake of ours (a protocol's
 * DISCONNECT, the gateway stopping): say so in a close frame. */
static void ws_goodbye(void *state, bool stopping)
{
    struct ws_conn *ws = state;
    if (ws->state != WS_OPEN)
        return;
    ws->state = WS_DISCARD; /* first: a failing write closes the connection again */
    send_close_frame(ws, stopping ? WS_CLOSE_GOING_AWAY : WS_CLOSE_NORMAL,
                     stopping ? "server shutting down" : "");
}

const struct transport_ops ws_transport = {"websocket", ws_feed, ws_send, ws_xclose, ws_goodbye};

void ws_conn_attach(struct conn *c, const struct ws_conn_cfg *cfg)
{
    struct ws_conn *ws = xcalloc(1, sizeof *ws);
    struct ws_limits lim = {cfg->max_message_bytes, cfg->deflate.enabled};

    ws->c = c;
    ws->cfg = *cfg;
    ws_assembler_init(&ws->as, &lim, &cfg->deflate);
    if (cfg->compress_out)
        ws->deflater = ws_deflater_for(&cfg->deflate, -1);
    buf_init(&ws->out);
    uv_timer_init(c->gw->loop, &ws->timer);
    ws->timer.data = ws;
    ws->opened_ms = gw_mono_ms();
    conn_set_transport(c, &ws_transport, ws);
    arm(ws, ws->opened_ms);
}

bool ws_conn_is(const struct conn *c)
{
    return !c->closing && ws_of(c) != NULL;
}

const struct ws_deflate_params *ws_conn_deflate(const struct conn *c)
{
    struct ws_conn *ws = ws_of(c);
    return ws && ws->cfg.deflate.enabled ? &ws->cfg.deflate : NULL;
}

void ws_conn_send(struct conn *c, uint8_t opcode, const void *data, size_t len)
{
    struct ws_conn *ws = ws_of(c);
    if (ws)
        send_message(ws, opcode, data, len);
}

void ws_conn_send_frames(struct conn *c, const void *frames, size_t len)
{
    struct ws_conn *ws = ws_of(c);
    if (ws && ws->state == WS_OPEN)
        conn_send_raw(c, frames, len);
}

void ws_conn_close(struct conn *c, uint16_t code, const char *reason)
{
    struct ws_conn *ws = ws_of(c);
    if (ws)
        begin_close(ws, code, reason, true);
    else
        conn_close(c, reason);
}
