/* protocols/http/http.h: HTTP/1.1 server glue over llhttp.
 *
 * The HTTP protocol assembles one request at a time (method, target, headers,
 * body) within the configured header and body limits, then pauses the parser
 * and hands the request to the handler. The handler answers with http_respond()
 * now or later (after a query or a durable commit); only then are pipelined
 * bytes parsed further, so replies keep their order. Errors become a JSON body
 * {"error":"...","code":"..."} with 400/413/431 and the connection closes.
 * Upgrade requests are handed over like any request with req->upgrade set; the
 * handler may switch the connection's protocol (conn_set_proto) and call
 * http_upgraded(). Loop thread only. */
#ifndef GALE_HTTP_H
#define GALE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/conn.h"

#define HTTP_MAX_HEADERS 64

struct http_header {
    const char *name, *value;  /* NUL-terminated, inside the request's storage */
    size_t name_len, value_len;
};

struct http_req {
    const char *method;        /* "GET", "POST", ... */
    const char *target;        /* raw request target, NUL-terminated */
    const char *path;          /* target up to '?', NUL-terminated copy */
    const char *query;         /* after '?', or "" */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t nheaders;
    const uint8_t *body;       /* NUL-terminated for convenience */
    size_t body_len;
    int http_major, http_minor;
    bool keep_alive;           /* reply keeps the connection open */
    bool upgrade;              /* Upgrade request (WebSocket) */
    uint64_t seq;              /* request number on this connection, from 1 */
};

struct http_conn;
/* Called for each complete request; req is valid until http_respond/http_upgraded. */
typedef void (*http_request_fn)(void *ctx, struct http_conn *h, struct http_req *req);

struct http_server {
    http_request_fn on_request;
    void *ctx;
    size_t max_header_bytes;   /* request line + headers */
    size_t max_body_bytes;
};

/* The proto ops for the HTTP listener; gw->http must point at a struct http_server. */
extern const struct proto_ops http_proto;

struct conn *http_conn_of(struct http_conn *h);
/* The HTTP state of c when c is open and still speaks HTTP, else NULL. */
struct http_conn *http_from_conn(struct conn *c);
/* The request being answered (NULL when none). */
struct http_req *http_current(struct http_conn *h);
/* Case-insensitive header lookup; NULL if absent. */
const char *http_header(const struct http_req *req, const char *name);
/* The credential of an "Authorization: Bearer <credential>" header, or NULL. */
const char *http_bearer(const struct http_req *req);
/* Query parameter lookup; decodes %XX and '+'. Returns 1 and fills out when found. */
int http_query_param(const struct http_req *req, const char *name, char *out, size_t outlen);

/* Sends the reply to the current request and moves on to the next one.
 * extra_headers: "Name: value\r\n..." or NULL. */
void http_respond(struct http_conn *h, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers);
/* {"error":msg,"code":code} with status. */
void http_respond_error(struct http_conn *h, int status, const char *code, const char *msg);
/* After the handler switched the connection to another protocol: frees the HTTP
 * state (the new protocol now owns the connection and any bytes left in c->in). */
void http_upgraded(struct http_conn *h);
const char *http_status_text(int status);

#endif
