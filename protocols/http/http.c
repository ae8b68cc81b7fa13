/* protocols/http/http.c: the HTTP protocol of a connection (see http.h): feeds
 * the connection's input to the request parser (parser.c), hands each complete
 * request to the handler and writes replies. While a request is with the
 * handler, bytes after it (pipelined requests) stay in the connection's input buffer
 * until the reply has been sent. Loop thread only. */
#include "protocols/http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "base/alloc.h"
#include "protocols/http/parser.h"

struct http_conn {
    struct conn *conn;
    const struct http_server *srv;
    struct http_parser parser;   /* request assembly; parser.req is the current request */
    bool busy;                   /* a request is with the handler */
    bool in_handler;             /* on_request is running: its reply must not re-enter feed */
    bool finished;               /* "Connection: close" sent: parse nothing more */
    uint64_t start_us;           /* uv_hrtime() / 1000 when the current request was complete */
};

/* The head of a request is complete: credentials in it authenticate the connection and
 * allow a full body; without them, on a connection still unauthenticated, the body is
 * capped before a byte of it is read. */
static size_t body_limit(void *ctx, const struct http_req *req)
{
    struct http_conn *h = ctx;
    struct conn *c = h->conn;
    if (h->srv->authorized && h->srv->authorized(h->srv->ctx, req) && !c->authenticated)
        conn_authenticated(c, NULL);
    return guard_cap(c, h->srv->max_body_bytes);
}

static void *http_open(struct conn *c, void *ctx)
{
    struct http_conn *h = xcalloc(1, sizeof *h);
    h->conn = c;
    h->srv = ctx;
    http_parser_init(&h->parser, h->srv->max_header_bytes, h->srv->max_body_bytes);
    h->parser.body_limit = body_limit;
    h->parser.body_limit_ctx = h;
    /* only a request with credentials ends this (no slow-drip openers, no health polls
     * that keep a slot) */
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
    return h;
}

static void http_free(struct http_conn *h)
{
    http_parser_fini(&h->parser);
    free(h);
}

static void http_close(void *state, const char *why)
{
    (void)why;
    http_free(state);
}

static void reject(struct http_conn *h, int status, const char *code, const char *why)
{
    struct conn *c = h->conn;
    log_info("conn=%llu peer=%s proto=http bad request status=%d reason=\"%s\"",
             (unsigned long long)c->id, c->peer, status, log_q(why));
    h->busy = true;
    h->start_us = uv_hrtime() / 1000;
    h->parser.req.keep_alive = false;
    http_respond_error(h, status, code, why);
}

static int http_feed(void *state, struct buf *in)
{
    struct http_conn *h = state;
    struct conn *c = h->conn;

    while (!h->busy && !h->finished && !c->closing && in->len > 0) {
        size_t used;
        int status;
        const char *why;
        enum http_parse_rc rc;
        h->parser.max_header_bytes = guard_cap(c, h->srv->max_header_bytes);
        rc = http_parser_feed(&h->parser, in->data, in->len, &used, &status,
                                                 &why);
        buf_consume(in, used);
        if (rc == HTTP_PARSE_NEED_MORE)
            break; /* a partial request waits; its size is capped by the parser */
        if (rc == HTTP_PARSE_EXPECT_CONTINUE) {
            conn_send(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            continue;
        }
        if (rc == HTTP_PARSE_ERROR) {
            if (status == 413 && !c->authenticated)
                why = "request body too large before authentication "
                      "(limits.preauth_max_bytes; send credentials with the request)";
            reject(h, status,
                   status == 431 ? "headers_too_large"
                   : status == 413 ? "body_too_large"
                                   : "bad_request",
                   why);
            return -1;
        }
        h->busy = true;
        h->start_us = uv_hrtime() / 1000;
        h->in_handler = true;
        c->msgs_in++;
        h->srv->on_request(h->srv->ctx, h, &h->parser.req);
        if (c->closing)
            return 0; /* h is gone */
        if (c->proto_state != h) { /* upgraded: the new layers take what is buffered */
            conn_refeed(c);
            return 0;
        }
        h->in_handler = false;
        if (h->busy)
            conn_pause(c); /* async reply: pipelined bytes wait in `in` */
    }
    return 0;
}

const struct proto_ops http_proto = {"http", http_open, http_feed, http_close};

struct conn *http_conn_of(struct http_conn *h)
{
    return h->conn;
}

struct http_conn *http_from_conn(struct conn *c)
{
    if (c->closing || c->proto != &http_proto)
        return NULL;
    return c->proto_state;
}

struct http_req *http_current(struct http_conn *h)
{
    return h->busy ? &h->parser.req : NULL;
}

void http_respond(struct http_conn *h, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers)
{
    struct conn *c = h->conn;
    struct buf out;
    bool keep = h->parser.req.keep_alive && !c->gw->stopping;

    buf_init(&out);
    buf_printf(&out, "HTTP/1.1 %d %s\r\nServer: gale/%s\r\nContent-Length: %zu\r\n", status,
               http_status_text(status), GALE_VERSION, len);
    if (content_type)
        buf_printf(&out, "Content-Type: %s\r\n", content_type);
    if (!keep)
        buf_append_str(&out, "Connection: close\r\n");
    if (extra_headers)
        buf_append_str(&out, extra_headers);
    buf_append_str(&out, "\r\n");
    if (strcmp(h->parser.req.method ? h->parser.req.method : "", "HEAD") != 0)
        buf_append(&out, body, len);
    conn_send(c, out.data, out.len);
    buf_fini(&out);
    c->msgs_out++;
    c->gw->metrics.http_requests++;
    if (status >= 100 && status < 600)
        c->gw->metrics.http_status[status / 100]++;
    {
        uint64_t us = uv_hrtime() / 1000 - h->start_us;
        hist_observe(&c->gw->metrics.http_latency, us);
        if (h->srv->on_reply)
            h->srv->on_reply(h->srv->ctx, h, &h->parser.req, status, len, us);
    }
    h->busy = false;
    if (!keep) {
        h->finished = true;
        conn_close_after_write(c, "http connection: close");
        return;
    }
    if (h->in_handler)
        return; /* http_feed goes on with pipelined requests */
    conn_resume(c);
    conn_refeed(c); /* pipelined requests already buffered */
}

void http_respond_error(struct http_conn *h, int status, const char *code, const char *msg)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"error\":");
    buf_append_json_str(&b, msg, strlen(msg));
    buf_append_str(&b, ",\"code\":");
    buf_append_json_str(&b, code, strlen(code));
    buf_append_str(&b, "}");
    http_respond(h, status, "application/json", b.data, b.len,
                 status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL);
    buf_fini(&b);
}

void http_upgraded(struct http_conn *h)
{
    struct conn *c = h->conn;
    bool in_handler = h->in_handler;
    http_free(h);
    conn_resume(c);
    if (!in_handler) /* else http_feed hands the buffered bytes over itself */
        conn_refeed(c);
}
