/* protocols/http/parser.h: HTTP/1.1 request assembly over llhttp; pure (no I/O,
 * no clock). llhttp hands over the target and each header in as many pieces as
 * reads split them; the pieces are appended to one per-request buffer capped at
 * max_header_bytes, and pointers into it are fixed up once the headers are
 * complete. A complete request pauses the parser, so bytes after it (pipelined
 * requests) stay with the caller until it asks for the next one. What the buffers hold
 * is http_parser_held (the pre-auth budget counts it). */
#ifndef GALE_HTTP_PARSER_H
#define GALE_HTTP_PARSER_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "protocols/http/request.h"

enum http_parse_rc {
    HTTP_PARSE_ERROR = -1,          /* *status (400/413/431) and *why are set */
    HTTP_PARSE_NEED_MORE = 0,       /* everything given was consumed */
    HTTP_PARSE_REQUEST = 1,         /* p->req is complete */
    HTTP_PARSE_EXPECT_CONTINUE = 2, /* headers asked for "100 Continue": send it, call again */
};

/* The largest body the request whose head is req may carry (called once its head is
 * complete, before a byte of its body is taken); at most the parser's max_body_bytes. */
typedef size_t (*http_body_limit_fn)(void *ctx, const struct http_req *req);

struct http_parser {
    /* public, valid after HTTP_PARSE_REQUEST until the next call */
    struct http_req req;
    /* public, set by the owner: NULL = max_body_bytes for every request */
    http_body_limit_fn body_limit;
    void *body_limit_ctx;
    size_t max_header_bytes;       /* may be lowered or raised between requests */
    /* private */
    llhttp_t llhttp;
    llhttp_settings_t settings;
    size_t max_body_bytes;
    size_t req_body_bytes;         /* the current request's body cap (body_limit) */
    struct buf head;               /* target and header bytes of the current request */
    struct buf body;
    size_t url_off, url_len;
    struct {
        size_t name, name_len, value, value_len;
    } hdrs[HTTP_MAX_HEADERS];
    size_t nhdrs;
    int last;                      /* kind of the last field piece */
    int limit_status;              /* 413/431 when a limit stopped llhttp */
    bool in_headers_pause;         /* paused after headers for 100-continue */
    bool in_message;               /* a request has begun and is not complete yet */
    uint64_t nreq;
    char why[160];
};

void http_parser_init(struct http_parser *p, size_t max_header_bytes, size_t max_body_bytes);
void http_parser_fini(struct http_parser *p);
/* The memory the parser holds for the request being assembled (or the last one, until
 * the next call): its head and body buffers. Buffers over a few kB are given back
 * before the next request starts. */
size_t http_parser_held(const struct http_parser *p);
/* Parses data[0..len); *used is set to the bytes consumed (all of them on NEED_MORE). */
enum http_parse_rc http_parser_feed(struct http_parser *p, const uint8_t *data, size_t len,
                                    size_t *used, int *status, const char **why);

#endif
