/* protocols/http/request.h: an assembled HTTP/1.1 request (what parser.h fills and
 * http.h hands to a handler) and pure lookups on it: headers, the bearer credential,
 * query parameters, status texts. No I/O, no libuv: the codec library's half of
 * protocols/http. */
#ifndef GALE_HTTP_REQUEST_H
#define GALE_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* Case-insensitive header lookup; NULL if absent. */
const char *http_header(const struct http_req *req, const char *name);
/* The credential of an "Authorization: Bearer <credential>" header, or NULL. */
const char *http_bearer(const struct http_req *req);
/* Query parameter lookup; decodes %XX and '+'. Returns 1 and fills out when found. */
int http_query_param(const struct http_req *req, const char *name, char *out, size_t outlen);
/* The reason phrase of status ("Not Found"), "Unknown" for one we never send. */
const char *http_status_text(int status);

#endif
