/* protocols/http/http.h: HTTP/1.1 server glue over llhttp.
 *
 * The HTTP protocol assembles one request at a time (method, target, headers,
 * body) within the configured header and body limits, then pauses the parser
 * and hands the request to the handler. The handler answers with http_respond()
 * now or later (after a query or a durable commit); only then are pipelined
 * bytes parsed further, so replies keep their order. Errors become a JSON body
 * {"error":"...","code":"..."} with 400/413/431 and the connection closes.
 * Before the connection has authenticated, a request's head and body are capped at
 * limits.preauth_max_bytes unless its head carries credentials (http_server.authorized),
 * and only such a request ends the connection's auth deadline: a client that never
 * authenticates is closed at limits.auth_timeout_ms however many requests it sends.
 * Upgrade requests are handed over like any request with req->upgrade set; the
 * handler may switch the connection's protocol (conn_set_proto) and call
 * http_upgraded(). A reply too long to hold may be streamed instead (http_stream_*):
 * chunked on HTTP/1.1, ended by closing the connection on HTTP/1.0, written piece by
 * piece as the connection's send queue drains. Request assembly is
 * protocols/http/parser.h (pure); the request and its lookups are
 * protocols/http/request.h; the chunked coding is protocols/http/chunked.h. Loop thread
 * only. */
#ifndef GALE_HTTP_H
#define GALE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/conn.h"
#include "protocols/http/request.h"

struct http_conn;
/* Called for each complete request; req is valid until http_respond/http_upgraded. */
typedef void (*http_request_fn)(void *ctx, struct http_conn *h, struct http_req *req);

/* Called once per reply sent (an access log): req is the request answered (method and
 * path are NULL when it was refused before they were read), len the body's bytes, us
 * the microseconds from the request being complete to the reply. */
typedef void (*http_reply_fn)(void *ctx, struct http_conn *h, const struct http_req *req,
                              int status, size_t len, uint64_t us);

struct http_server {
    http_request_fn on_request;
    http_reply_fn on_reply;    /* NULL: none */
    void *ctx;
    /* Whether req (its head: a body is not read yet) carries valid credentials. Such a
     * request authenticates the connection (conn_authenticated) and may carry up to
     * max_body_bytes; any other, on a connection that has not authenticated, is capped
     * at limits.preauth_max_bytes (413 unread past it) and leaves the auth deadline
     * running. NULL: no request authenticates. */
    bool (*authorized)(void *ctx, const struct http_req *req);
    size_t max_header_bytes;   /* request line + headers */
    size_t max_body_bytes;
};

/* The proto ops for the HTTP listener; its ctx (proto_ops.open's) is the struct
 * http_server that answers, which must outlive the listener's connections. */
extern const struct proto_ops http_proto;

struct conn *http_conn_of(struct http_conn *h);
/* The HTTP state of c when c is open and still speaks HTTP, else NULL. */
struct http_conn *http_from_conn(struct conn *c);
/* The request being answered (NULL when none). */
struct http_req *http_current(struct http_conn *h);
/* Names who the current request authenticated as (an API key's name; copied, at most
 * 64 bytes) for the access log; NULL or "" clears it. Each request starts without. */
void http_set_user(struct http_conn *h, const char *user);
/* That name, "" when none. */
const char *http_user(const struct http_conn *h);

/* Sends the reply to the current request and moves on to the next one.
 * extra_headers: "Name: value\r\n..." or NULL. */
void http_respond(struct http_conn *h, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers);
/* {"error":msg,"code":code} with status. */
void http_respond_error(struct http_conn *h, int status, const char *code, const char *msg);
/* ---- streamed replies ----
 * http_stream_begin sends the head; http_stream_write sends body pieces while it
 * returns HTTP_STREAM_MORE; on HTTP_STREAM_WAIT the send queue is over its mark (a quarter
 * of limits.max_send_queue_bytes) and the producer waits with http_stream_wait before it
 * writes more, so a reply of any length holds at most about the send budget in memory.
 * http_stream_end finishes it and moves on to the next request. The access log and
 * metrics count it at its end, with the body bytes sent. A write that fails closes the
 * connection at once: then h is gone (HTTP_STREAM_CLOSED), and the producer releases
 * what it holds without another call. */
enum http_stream_rc {
    HTTP_STREAM_CLOSED = -1,  /* the connection closed: h is freed */
    HTTP_STREAM_WAIT = 0,     /* wait with http_stream_wait */
    HTTP_STREAM_MORE = 1,     /* write on */
};

/* Tells a producer waiting with http_stream_wait that it may write again (closed =
 * false), or that the connection closed first (closed = true: write nothing, release
 * what ctx holds; h is going away). */
typedef void (*http_stream_fn)(void *ctx, struct http_conn *h, bool closed);

/* Starts a streamed reply to the current request: status, content type, extra headers
 * ("Name: value\r\n..." or NULL) and, with trailer_names (e.g. "X-Gale-Next-Cursor")
 * non-NULL, a Trailer header announcing the fields http_stream_end may send. Returns
 * HTTP_STREAM_WAIT when no body is wanted (a HEAD request: the caller calls
 * http_stream_end at once), else HTTP_STREAM_MORE or HTTP_STREAM_CLOSED. */
enum http_stream_rc http_stream_begin(struct http_conn *h, int status, const char *content_type,
                       const char *extra_headers, const char *trailer_names);
/* Sends len bytes of the body (one chunk; nothing for len 0). */
enum http_stream_rc http_stream_write(struct http_conn *h, const void *data, size_t len);
/* Calls fn(ctx, h, false) once the send queue has drained to the mark (at once, before
 * it returns, when it already has), or fn(ctx, h, true) when the connection closes
 * first. One wait at a time. */
void http_stream_wait(struct http_conn *h, http_stream_fn fn, void *ctx);
/* Ends the streamed reply: on HTTP/1.1 the last chunk with trailers ("Name: value\r\n..."
 * or NULL), on HTTP/1.0 the connection closes once everything is written. */
void http_stream_end(struct http_conn *h, const char *trailers);

/* ---- a request that waits (a long poll) ----
 * http_wait_watch: the current request's answer will come later, maybe much later. The
 * connection reads on meanwhile, so that a peer that goes away (end of stream, reset) is
 * seen at once: then fn(ctx, h) runs from the close (no I/O; h is going away) and the
 * waiter releases what it holds. Bytes the client pipelines behind the request wait, up
 * to http_server.max_header_bytes (then reading pauses). The watch ends with the reply
 * (http_respond). */
typedef void (*http_close_fn)(void *ctx, struct http_conn *h);
void http_wait_watch(struct http_conn *h, http_close_fn fn, void *ctx);

/* After the handler switched the connection to another protocol: frees the HTTP
 * state (the new protocol now owns the connection and any bytes left in c->in). */
void http_upgraded(struct http_conn *h);

#endif
