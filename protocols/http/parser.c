/* protocols/http/parser.c: see parser.h. */
#include "protocols/http/parser.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum field_kind { FIELD_NONE, FIELD_URL, FIELD_NAME, FIELD_VALUE };

/* Between requests, a head or body buffer larger than this is given back: one large
 * request does not make a kept-alive connection hold its size until it closes. */
#define KEEP_BYTES 4096

static int fail_limit(struct http_parser *p, int status)
{
    p->limit_status = status;
    return -1;
}

static int append_field(struct http_parser *p, enum field_kind kind, const char *at, size_t len)
{
    if (p->head.len + len + 2 > p->max_header_bytes)
        return fail_limit(p, 431);
    if (kind == FIELD_URL) {
        if (p->last != FIELD_URL)
            p->url_off = p->head.len;
        p->url_len += len;
    } else if (kind == FIELD_NAME) {
        if (p->last != FIELD_NAME) {
            if (p->nhdrs == HTTP_MAX_HEADERS)
                return fail_limit(p, 431);
            p->hdrs[p->nhdrs].name = p->head.len;
            p->hdrs[p->nhdrs].name_len = 0;
            p->hdrs[p->nhdrs].value = 0;
            p->hdrs[p->nhdrs].value_len = 0;
            p->nhdrs++;
        }
        p->hdrs[p->nhdrs - 1].name_len += len;
    } else {
        if (p->last != FIELD_VALUE)
            p->hdrs[p->nhdrs - 1].value = p->head.len;
        p->hdrs[p->nhdrs - 1].value_len += len;
    }
    buf_append(&p->head, at, len);
    p->last = kind;
    return 0;
}

/* Field pieces arrive back to back, so terminating NULs go in at the boundaries. */
static void terminate_field(struct http_parser *p)
{
    buf_append(&p->head, "", 1);
}

static int on_message_begin(llhttp_t *l)
{
    struct http_parser *p = l->data;
    p->in_message = true;
    p->head.len = 0;
    p->body.len = 0;
    p->url_off = p->url_len = 0;
    p->nhdrs = 0;
    p->last = FIELD_NONE;
    return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len)
{
    return append_field(l->data, FIELD_URL, at, len);
}

static int on_header_field(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = l->data;
    if (p->last == FIELD_URL || p->last == FIELD_VALUE)
        terminate_field(p);
    return append_field(p, FIELD_NAME, at, len);
}

static int on_header_value(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = l->data;
    if (p->last == FIELD_NAME)
        terminate_field(p);
    return append_field(p, FIELD_VALUE, at, len);
}

static int on_headers_complete(llhttp_t *l)
{
    struct http_parser *p = l->data;
    struct http_req *r = &p->req;
    const char *expect;
    char *q;

    if (p->last == FIELD_NAME) { /* header with an empty value */
        terminate_field(p);
        p->hdrs[p->nhdrs - 1].value = p->head.len;
    }
    terminate_field(p);
    if (p->last == FIELD_NONE) /* no target at all */
        p->url_off = p->head.len - 1;
    /* a NUL-terminated copy of the target becomes path and query */
    buf_reserve(&p->head, p->url_len + 1); /* may move data: copy by offset after */
    memcpy(p->head.data + p->head.len, p->head.data + p->url_off, p->url_len);
    p->head.data[p->head.len + p->url_len] = '\0';
    buf_commit(&p->head, p->url_len + 1);
    memset(r, 0, sizeof *r);
    r->method = llhttp_method_name((llhttp_method_t)l->method);
    r->target = (const char *)p->head.data + p->url_off;
    r->path = (const char *)p->head.data + p->head.len - p->url_len - 1;
    q = strchr((char *)r->path, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    } else {
        r->query = "";
    }
    for (size_t i = 0; i < p->nhdrs; i++) {
        r->headers[i].name = (const char *)p->head.data + p->hdrs[i].name;
        r->headers[i].name_len = p->hdrs[i].name_len;
        r->headers[i].value = (const char *)p->head.data + p->hdrs[i].value;
        r->headers[i].value_len = p->hdrs[i].value_len;
    }
    r->nheaders = p->nhdrs;
    r->http_major = l->http_major;
    r->http_minor = l->http_minor;
    r->keep_alive = llhttp_should_keep_alive(l);
    r->upgrade = l->upgrade;
    p->req_body_bytes = p->body_limit ? p->body_limit(p->body_limit_ctx, r) : p->max_body_bytes;
    if (p->req_body_bytes > p->max_body_bytes)
        p->req_body_bytes = p->max_body_bytes;
    if ((l->flags & F_CONTENT_LENGTH) && l->content_length > p->req_body_bytes)
        return fail_limit(p, 413); /* before a byte of the body arrives */
    expect = http_header(r, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && r->http_minor >= 1 &&
        l->content_length > 0) {
        p->in_headers_pause = true;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = l->data;
    if (p->body.len + len > p->req_body_bytes)
        return fail_limit(p, 413);
    buf_append(&p->body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *l)
{
    struct http_parser *p = l->data;
    p->in_message = false;
    p->req.body = (const uint8_t *)buf_cstr(&p->body);
    p->req.body_len = p->body.len;
    p->req.seq = ++p->nreq;
    p->req.keep_alive = llhttp_should_keep_alive(l);
    return HPE_PAUSED;
}

void http_parser_init(struct http_parser *p, size_t max_header_bytes, size_t max_body_bytes)
{
    memset(p, 0, sizeof *p);
    p->max_header_bytes = max_header_bytes;
    p->max_body_bytes = max_body_bytes;
    buf_init(&p->head);
    buf_init(&p->body);
    llhttp_settings_init(&p->settings);
    p->settings.on_message_begin = on_message_begin;
    p->settings.on_url = on_url;
    p->settings.on_header_field = on_header_field;
    p->settings.on_header_value = on_header_value;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    llhttp_init(&p->llhttp, HTTP_REQUEST, &p->settings);
    p->llhttp.data = p;
}

size_t http_parser_held(const struct http_parser *p)
{
    return p->head.cap + p->body.cap;
}

void http_parser_fini(struct http_parser *p)
{
    buf_fini(&p->head);
    buf_fini(&p->body);
}

enum http_parse_rc http_parser_feed(struct http_parser *p, const uint8_t *data, size_t len,
                                    size_t *used, int *status, const char **why)
{
    const char *start = (const char *)data;
    llhttp_errno_t err;

    *used = 0;
    if (len == 0)
        return HTTP_PARSE_NEED_MORE;
    if (!p->in_message) { /* the last request is no longer lent out */
        p->head.len = p->body.len = 0;
        buf_shrink(&p->head, KEEP_BYTES);
        buf_shrink(&p->body, KEEP_BYTES);
    }
    err = llhttp_execute(&p->llhttp, start, len);
    if (err == HPE_OK) {
        *used = len;
        return HTTP_PARSE_NEED_MORE;
    }
    if (err == HPE_PAUSED) {
        *used = (size_t)(llhttp_get_error_pos(&p->llhttp) - start);
        llhttp_resume(&p->llhttp);
        if (p->in_headers_pause) {
            p->in_headers_pause = false;
            return HTTP_PARSE_EXPECT_CONTINUE;
        }
        return HTTP_PARSE_REQUEST;
    }
    if (p->limit_status == 431) {
        *status = 431;
        *why = "request headers too large";
    } else if (p->limit_status == 413) {
        *status = 413;
        *why = "request body too large";
    } else {
        *status = 400;
        snprintf(p->why, sizeof p->why, "malformed HTTP request: %s",
                 llhttp_get_error_reason(&p->llhttp));
        *why = p->why;
    }
    return HTTP_PARSE_ERROR;
}
