/* protocols/http/http.c: the HTTP protocol of a connection (see http.h): feeds
 * the connection's input to the request parser (parser.c), hands each complete
 * request to the handler and writes replies. While a request is with the
 * handler, bytes after it (pipelined requests) stay in the connection's input buffer
 * until the reply has been sent. A streamed reply (http_stream_*) keeps the request
 * current until http_stream_end; its producer waits for the send queue to drain through
 * conn_when_drained. Loop thread only. */
#include "protocols/http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "base/alloc.h"
#include "protocols/http/chunked.h"
#include "protocols/http/parser.h"

struct http_conn {
    struct conn *conn;
    const struct http_server *srv;
    struct http_parser parser;   /* request assembly; parser.req is the current request */
    bool busy;                   /* a request is with the handler */
    bool in_handler;             /* on_request is running: its reply must not re-enter feed */
    bool finished;               /* "Connection: close" sent: parse nothing more */
    uint64_t start_us;           /* uv_hrtime() / 1000 when the current request was complete */
    char user[65];               /* http_set_user: who the request authenticated as, or "" */
    /* a streamed reply (http_stream_begin .. http_stream_end) */
    bool stream_chunked;         /* HTTP/1.1: chunked; else the close ends the body */
    bool stream_body;            /* false for HEAD: pieces are counted, not sent */
    int stream_status;
    size_t stream_bytes;         /* body bytes sent so far */
    http_stream_fn wait_fn;      /* http_stream_wait's producer, or NULL */
    void *wait_ctx;
    http_close_fn watch_fn;      /* http_wait_watch's waiter, or NULL */
    void *watch_ctx;
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
    struct http_conn *h = state;
    http_stream_fn fn = h->wait_fn;
    http_close_fn wfn = h->watch_fn;
    (void)why;
    h->wait_fn = NULL;
    h->watch_fn = NULL;
    if (fn)
        fn(h->wait_ctx, h, true);
    if (wfn)
        wfn(h->watch_ctx, h);
    http_free(h);
}

/* Whether the connection stays open after the current reply. */
static bool reply_keeps(const struct http_conn *h)
{
    return h->parser.req.keep_alive && !h->conn->gw->stopping;
}

static void reject(struct http_conn *h, int status, const char *code, const char *why)
{
    struct conn *c = h->conn;
    log_info("conn=%llu peer=%s proto=http bad request status=%d reason=\"%s\"",
             (unsigned long long)c->id, conn_peer(c), status, log_q(why));
    h->busy = true;
    h->start_us = uv_hrtime() / 1000;
    h->user[0] = '\0';
    h->parser.req.keep_alive = false;
    http_respond_error(h, status, code, why);
}

static int http_feed(void *state, struct buf *in)
{
    struct http_conn *h = state;
    struct conn *c = h->conn;
    size_t held;

    if (h->busy && h->watch_fn && in->len > h->srv->max_header_bytes)
        conn_pause(c); /* a waiting request: what is pipelined behind it stays bounded */
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
        h->user[0] = '\0';
        h->in_handler = true;
        c->msgs_in++;
        h->srv->on_request(h->srv->ctx, h, &h->parser.req);
        if (c->proto_state != h) { /* upgraded: the new layers take what is buffered */
            conn_refeed(c);
            return 0;
        }
        h->in_handler = false;
        if (h->busy && (!h->watch_fn || in->len > h->srv->max_header_bytes))
            conn_pause(c); /* async reply: pipelined bytes wait in `in` */
    }
    held = http_parser_held(&h->parser); /* in the pre-auth budget (guard.h) */
    if (held || c->x->proto_held)
        conn_extra(c)->proto_held = held;
    return 0;
}

const struct proto_ops http_proto = {"http", http_open, http_feed, http_close, NULL, 0, NULL, NULL};

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

void http_wait_watch(struct http_conn *h, http_close_fn fn, void *ctx)
{
    h->watch_fn = fn;
    h->watch_ctx = ctx;
    if (!h->in_handler)
        conn_resume(h->conn); /* http_feed leaves it reading after the handler */
}

void http_set_user(struct http_conn *h, const char *user)
{
    snprintf(h->user, sizeof h->user, "%s", user ? user : "");
}

const char *http_user(const struct http_conn *h)
{
    return h->user;
}

/* The head of a reply: status line, our headers, extra ones, and the blank line. */
static void write_head(struct http_conn *h, struct buf *out, int status,
                       const char *content_type, const char *framing, const char *extra_headers)
{
    buf_printf(out, "HTTP/1.1 %d %s\r\nServer: gale/%s\r\n%s", status,
               http_status_text(status), GALE_VERSION, framing);
    if (content_type)
        buf_printf(out, "Content-Type: %s\r\n", content_type);
    if (!reply_keeps(h))
        buf_append_str(out, "Connection: close\r\n");
    if (extra_headers)
        buf_append_str(out, extra_headers);
    buf_append_str(out, "\r\n");
}

/* The reply has been written: counts it, logs it, and moves on to the next request (or
 * closes the connection once everything is written). */
static void reply_done(struct http_conn *h, int status, size_t len, bool keep)
{
    struct conn *c = h->conn;
    uint64_t us = uv_hrtime() / 1000 - h->start_us;

    c->msgs_out++;
    c->gw->metrics.http_requests++;
    if (status >= 100 && status < 600)
        c->gw->metrics.http_status[status / 100]++;
    hist_observe(&c->gw->metrics.http_latency, us);
    if (h->srv->on_reply)
        h->srv->on_reply(h->srv->ctx, h, &h->parser.req, status, len, us);
    h->busy = false;
    h->watch_fn = NULL;
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

static bool is_head(const struct http_conn *h)
{
    return strcmp(h->parser.req.method ? h->parser.req.method : "", "HEAD") == 0;
}

void http_respond(struct http_conn *h, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers)
{
    struct conn *c = h->conn;
    struct buf out;
    char framing[64];
    bool keep = reply_keeps(h);

    h->watch_fn = NULL; /* answered: a close from here on is no waiter's business */
    buf_init(&out);
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", len);
    write_head(h, &out, status, content_type, framing, extra_headers);
    if (!is_head(h))
        buf_append(&out, body, len);
    conn_send(c, out.data, out.len);
    buf_fini(&out);
    if (c->closing)
        return; /* the write failed: the close freed h */
    reply_done(h, status, len, keep);
}

enum http_stream_rc http_stream_begin(struct http_conn *h, int status, const char *content_type,
                                      const char *extra_headers, const char *trailer_names)
{
    struct conn *c = h->conn;
    struct buf out, extra;
    const struct http_req *req = &h->parser.req;

    h->stream_status = status;
    h->stream_bytes = 0;
    h->stream_body = !is_head(h);
    h->stream_chunked = req->http_major > 1 || (req->http_major == 1 && req->http_minor >= 1);
    if (!h->stream_chunked)
        h->parser.req.keep_alive = false; /* the close is what ends the body */
    buf_init(&out);
    buf_init(&extra);
    if (extra_headers)
        buf_append_str(&extra, extra_headers);
    if (trailer_names && h->stream_chunked)
        buf_printf(&extra, "Trailer: %s\r\n", trailer_names);
    write_head(h, &out, status, content_type,
               h->stream_chunked ? "Transfer-Encoding: chunked\r\n" : "",
               extra.len ? buf_cstr(&extra) : NULL);
    conn_send(c, out.data, out.len);
    buf_fini(&extra);
    buf_fini(&out);
    if (c->closing)
        return HTTP_STREAM_CLOSED;
    return h->stream_body ? HTTP_STREAM_MORE : HTTP_STREAM_WAIT;
}

/* The send queue a streamed reply may fill before its producer waits: a quarter of the
 * budget, so a piece written at the mark still fits. */
static size_t stream_mark(const struct http_conn *h)
{
    return h->conn->gw->cfg->limits.max_send_queue_bytes / 4;
}

enum http_stream_rc http_stream_write(struct http_conn *h, const void *data, size_t len)
{
    struct conn *c = h->conn;

    h->stream_bytes += len;
    if (!h->stream_body || len == 0)
        return HTTP_STREAM_MORE;
    if (h->stream_chunked) {
        struct buf out;
        buf_init(&out);
        http_chunk_append(&out, data, len);
        conn_send(c, out.data, out.len);
        buf_fini(&out);
    } else {
        conn_send(c, data, len);
    }
    if (c->closing)
        return HTTP_STREAM_CLOSED; /* the close freed h */
    return c->send_queued_bytes <= stream_mark(h) ? HTTP_STREAM_MORE : HTTP_STREAM_WAIT;
}

static void on_stream_drained(struct conn *c)
{
    struct http_conn *h = http_from_conn(c);
    http_stream_fn fn = h ? h->wait_fn : NULL;

    if (!fn)
        return;
    h->wait_fn = NULL;
    fn(h->wait_ctx, h, false);
}

void http_stream_wait(struct http_conn *h, http_stream_fn fn, void *ctx)
{
    h->wait_fn = fn;
    h->wait_ctx = ctx;
    if (!conn_when_drained(h->conn, stream_mark(h), on_stream_drained)) {
        h->wait_fn = NULL;
        fn(ctx, h, false);
    }
}

void http_stream_end(struct http_conn *h, const char *trailers)
{
    struct conn *c = h->conn;
    bool keep = reply_keeps(h);

    if (h->stream_body && h->stream_chunked) {
        struct buf out;
        buf_init(&out);
        http_chunk_end(&out, trailers);
        conn_send(c, out.data, out.len);
        buf_fini(&out);
    }
    reply_done(h, h->stream_status, h->stream_bytes, keep);
}

/* A 401 is a refusal: logged with the peer, what was asked and why, a few per peer and
 * window and then summed up (log_refusal), as failed device logins are. */
static void log_unauthorized(struct http_conn *h, const char *msg)
{
    struct conn *c = h->conn;
    const struct http_req *req = http_current(h);
    const char *auth = "none";

    if (!log_refusal(conn_peer(c), msg))
        return;
    if (req && http_bearer(req))
        auth = "bearer";
    else if (req && req->target && strstr(req->target, "api_key="))
        auth = "query";
    log_warn("conn=%llu peer=%s proto=http refused status=401 method=%s path=\"%s\" "
             "credentials=%s reason=\"%s\"",
             (unsigned long long)c->id, conn_peer(c), req ? log_q(req->method) : "-",
             req ? log_q(req->path) : "", auth, log_q(msg));
}

void http_respond_error(struct http_conn *h, int status, const char *code, const char *msg)
{
    struct buf b;
    if (status == 401)
        log_unauthorized(h, msg);
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
    if (c->x->proto_held)
        c->x->proto_held = 0;
    http_free(h);
    conn_resume(c);
    if (!in_handler) /* else http_feed hands the buffered bytes over itself */
        conn_refeed(c);
}
