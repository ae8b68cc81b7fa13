/* protocols/line/handle.c: the raw TCP line protocol, one JSON object per line. The
 * line is only the framing: each line goes whole to the device session
 * (gateway/session.h), which authenticates, ingests, acks and answers; what it sends
 * goes out as one line each. A line longer than line.max_line_bytes gets an error
 * line and the connection closes. Loop thread only. */
#include "protocols/line/line.h"

#include <stddef.h>
#include <stdlib.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/session.h"
#include "protocols/line/line_proto.h"

struct line_conn {
    struct session s; /* first: c->proto_state is the session too */
    struct line_decoder dec;
};

_Static_assert(offsetof(struct line_conn, s) == 0, "the session leads the line state");

static void line_write(struct conn *c, struct buf *msg)
{
    buf_append(msg, "\n", 1);
    conn_send(c, msg->data, msg->len);
}

static void line_end(struct conn *c, const char *why)
{
    conn_close_after_write(c, why);
}

static const struct session_ops line_session = {"line", "line", line_write, line_end};

static void line_auth_timeout(struct conn *c)
{
    session_auth_timeout(c->proto_state); /* the session leads the line state */
}

static void *line_open(struct conn *c, void *ctx)
{
    (void)ctx;
    struct line_conn *l = xcalloc(1, sizeof *l);
    session_init(&l->s, c, &line_session);
    line_decoder_init(&l->dec, c->gw->cfg->line.max_line_bytes);
    return l;
}

static int line_feed(void *state, struct buf *in)
{
    struct line_conn *l = state;
    struct conn *c = l->s.conn;
    size_t off = 0;

    /* the first line (before authentication) is capped at limits.preauth_max_bytes */
    l->dec.max_line_bytes = guard_cap(c, c->gw->cfg->line.max_line_bytes);
    while (!c->closing && !c->close_after_write && off < in->len) {
        const uint8_t *line;
        size_t line_len, used;
        const char *why;
        enum codec_rc rc =
            line_decode(&l->dec, in->data + off, in->len - off, &line, &line_len, &used, &why);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            c->gw->metrics.line_errors++;
            session_refuse(&l->s, "line_too_long", why);
            break;
        }
        off += used;
        if (line_len > 0) {
            c->msgs_in++;
            session_message(&l->s, line, line_len); /* may close c */
        }
    }
    if (!c->closing)
        buf_consume(in, off);
    return c->closing ? -1 : 0;
}

static void line_close(void *state, const char *why)
{
    struct line_conn *l = state;
    (void)why;
    session_close(&l->s);
    free(l);
}

const struct proto_ops line_proto = {"line", line_open, line_feed, line_close, NULL, 0,
                                     line_auth_timeout, session_send_command};
