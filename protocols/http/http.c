/* protocols/http/http.c: llhttp glue (see http.h). llhttp hands over the target
 * and each header in as many pieces as reads split them; the pieces are appended
 * to one per-request buffer capped at max_header_bytes, and pointers into it are
 * fixed up once the headers are complete. A complete message returns HPE_PAUSED,
 * so bytes after it (pipelined requests) stay in the connection's input buffer
 * until the reply has been sent. Loop thread only. */
#include "protocols/http/http.h"

#include <ctype.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/util.h"

enum field_kind { FIELD_NONE, FIELD_URL, FIELD_NAME, FIELD_VALUE };

struct hdr_off {
    size_t name, name_len, value, value_len;
};

struct http_conn {
    struct conn *conn;
    const struct http_server *srv;
    llhttp_t parser;
    llhttp_settings_t settings;
    struct buf head;             /* target and header bytes of the request being read */
    struct buf body;
    size_t url_off, url_len;
    struct hdr_off hdrs[HTTP_MAX_HEADERS];
    size_t nhdrs;
    enum field_kind last;
    int limit_status;            /* 413/431 when a limit stopped the parser */
    bool busy;                   /* a request is with the handler */
    bool in_handler;             /* on_request is running: its reply must not re-enter feed */
    bool finished;               /* "Connection: close" sent: parse nothing more */
    uint64_t nreq;
    struct http_req req;
};

static int fail_limit(struct http_conn *h, int status)
{
    h->limit_status = status;
    return -1;
}

static int append_field(struct http_conn *h, enum field_kind kind, const char *at, size_t len)
{
    if (h->head.len + len + 2 > h->srv->max_header_bytes)
        return fail_limit(h, 431);
    if (kind == FIELD_URL) {
        if (h->last != FIELD_URL)
            h->url_off = h->head.len;
        h->url_len += len;
    } else if (kind == FIELD_NAME) {
        if (h->last != FIELD_NAME) {
            if (h->nhdrs == HTTP_MAX_HEADERS)
                return fail_limit(h, 431);
            h->hdrs[h->nhdrs++] = (struct hdr_off){h->head.len, 0, 0, 0};
        }
        h->hdrs[h->nhdrs - 1].name_len += len;
    } else {
        if (h->last != FIELD_VALUE)
            h->hdrs[h->nhdrs - 1].value = h->head.len;
        h->hdrs[h->nhdrs - 1].value_len += len;
    }
    buf_append(&h->head, at, len);
    h->last = kind;
    return 0;
}

/* Field pieces arrive back to back, so terminating NULs go in at the boundaries. */
static void terminate_field(struct http_conn *h)
{
    buf_append(&h->head, "", 1);
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *h = p->data;
    h->head.len = 0;
    h->body.len = 0;
    h->url_off = h->url_len = 0;
    h->nhdrs = 0;
    h->last = FIELD_NONE;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return append_field(p->data, FIELD_URL, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *h = p->data;
    if (h->last == FIELD_URL || h->last == FIELD_VALUE)
        terminate_field(h);
    return append_field(h, FIELD_NAME, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *h = p->data;
    if (h->last == FIELD_NAME)
        terminate_field(h);
    return append_field(h, FIELD_VALUE, at, len);
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *h = p->data;
    struct http_req *r = &h->req;
    const char *expect;
    char *q;

    if (h->last == FIELD_NAME) { /* header with an empty value */
        terminate_field(h);
        h->hdrs[h->nhdrs - 1].value = h->head.len;
    }
    terminate_field(h);
    if (h->last == FIELD_NONE) { /* no target at all */
        h->url_off = h->head.len - 1;
    }
    /* the path copy and the query follow the fields */
    buf_reserve(&h->head, h->url_len + 1); /* may move data: copy by offset after */
    memcpy(h->head.data + h->head.len, h->head.data + h->url_off, h->url_len);
    h->head.data[h->head.len + h->url_len] = '\0';
    buf_commit(&h->head, h->url_len + 1);
    memset(r, 0, sizeof *r);
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->target = (const char *)h->head.data + h->url_off;
    r->path = (const char *)h->head.data + h->head.len - h->url_len - 1;
    q = strchr((char *)r->path, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    } else {
        r->query = "";
    }
    for (size_t i = 0; i < h->nhdrs; i++) {
        struct hdr_off *o = &h->hdrs[i];
        r->headers[i] = (struct http_header){(const char *)h->head.data + o->name,
                                             (const char *)h->head.data + o->value, o->name_len,
                                             o->value_len};
    }
    r->nheaders = h->nhdrs;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->keep_alive = llhttp_should_keep_alive(p);
    r->upgrade = p->upgrade;
    if (p->content_length > h->srv->max_body_bytes && p->content_length != UINT64_MAX &&
        (p->flags & F_CONTENT_LENGTH))
        return fail_limit(h, 413);
    expect = http_header(r, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && r->http_minor >= 1)
        conn_send(h->conn, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *h = p->data;
    if (h->body.len + len > h->srv->max_body_bytes)
        return fail_limit(h, 413);
    buf_append(&h->body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *h = p->data;
    h->req.body = (const uint8_t *)buf_cstr(&h->body);
    h->req.body_len = h->body.len;
    h->req.seq = ++h->nreq;
    h->req.keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static void *http_open(struct conn *c)
{
    struct http_conn *h = xcalloc(1, sizeof *h);
    h->conn = c;
    h->srv = c->gw->http;
    buf_init(&h->head);
    buf_init(&h->body);
    llhttp_settings_init(&h->settings);
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_url = on_url;
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
    llhttp_init(&h->parser, HTTP_REQUEST, &h->settings);
    h->parser.data = h;
    return h;
}

static void http_free(struct http_conn *h)
{
    buf_fini(&h->head);
    buf_fini(&h->body);
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
             (unsigned long long)c->id, c->peer, status, why);
    h->busy = true;
    h->req.keep_alive = false;
    http_respond_error(h, status, code, why);
}

static int http_feed(void *state, struct buf *in)
{
    struct http_conn *h = state;
    struct conn *c = h->conn;

    while (!h->busy && !h->finished && !c->closing && in->len > 0) {
        const char *start = (const char *)in->data;
        llhttp_errno_t err = llhttp_execute(&h->parser, start, in->len);
        if (err == HPE_OK) {
            buf_consume(in, in->len);
            break;
        }
        if (err == HPE_PAUSED) {
            size_t used = (size_t)(llhttp_get_error_pos(&h->parser) - start);
            buf_consume(in, used);
            llhttp_resume(&h->parser);
            h->busy = true;
            h->in_handler = true;
            c->msgs_in++;
            h->srv->on_request(h->srv->ctx, h, &h->req);
            if (c->closing)
                return 0; /* h is gone */
            if (c->proto_state != h) /* upgraded: the new protocol takes the rest */
                return in->len ? c->proto->feed(c->proto_state, in) : 0;
            h->in_handler = false;
            if (h->busy)
                conn_pause(c); /* async reply: pipelined bytes wait in `in` */
            continue;
        }
        if (h->limit_status == 431) {
            reject(h, 431, "headers_too_large", "request headers too large");
        } else if (h->limit_status == 413) {
            reject(h, 413, "body_too_large", "request body too large");
        } else {
            char why[160];
            snprintf(why, sizeof why, "malformed HTTP request: %s", llhttp_get_error_reason(&h->parser));
            reject(h, 400, "bad_request", why);
        }
        return -1;
    }
    /* a partial request waits for more bytes; its size is capped by the callbacks */
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
    return h->busy ? &h->req : NULL;
}

const char *http_header(const struct http_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int http_query_param(const struct http_req *req, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = req->query;
    while (p && *p) {
        const char *end = strchr(p, '&'), *eq;
        size_t seglen = end ? (size_t)(end - p) : strlen(p);
        eq = memchr(p, '=', seglen);
        size_t klen = eq ? (size_t)(eq - p) : seglen;
        if (klen == nlen && memcmp(p, name, nlen) == 0) {
            const char *v = eq ? eq + 1 : p + seglen;
            const char *vend = p + seglen;
            size_t o = 0;
            while (v < vend && o + 1 < outlen) {
                if (*v == '%' && vend - v >= 3 && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
                    out[o++] = (char)(hexval(v[1]) * 16 + hexval(v[2]));
                    v += 3;
                } else {
                    out[o++] = *v == '+' ? ' ' : *v;
                    v++;
                }
            }
            out[o] = '\0';
            return 1;
        }
        p = end ? end + 1 : NULL;
    }
    return 0;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

void http_respond(struct http_conn *h, int status, const char *content_type, const void *body,
                  size_t len, const char *extra_headers)
{
    struct conn *c = h->conn;
    struct buf out;
    bool keep = h->req.keep_alive && !c->gw->stopping;

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
    if (strcmp(h->req.method ? h->req.method : "", "HEAD") != 0)
        buf_append(&out, body, len);
    conn_send(c, out.data, out.len);
    buf_fini(&out);
    c->msgs_out++;
    c->gw->metrics.http_requests++;
    if (status >= 100 && status < 600)
        c->gw->metrics.http_status[status / 100]++;
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
