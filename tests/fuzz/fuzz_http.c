/* tests/fuzz/fuzz_http.c: the HTTP request parser (protocols/http/parser.c).
 * Byte 0 picks the read size (0 = everything at once) and small or default
 * limits; the rest is a client byte stream (pipelined requests welcome). It is
 * fed as a connection would be: bytes appended to a buffer, the parser run until
 * it needs more, consumed bytes dropped. Checks: consumed never exceeds what was
 * given; a request's strings are NUL-terminated and inside their limits; the
 * split run and the whole run see the same requests and both fail or neither. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "protocols/http/parser.h"

struct outcome {
    uint64_t hash;   /* of every request's method, target, headers and body */
    int nreq;
    int status;      /* error status, or 0 */
};

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static struct outcome run(const uint8_t *data, size_t size, size_t chunk, size_t max_head,
                          size_t max_body)
{
    struct http_parser p;
    struct buf in;
    struct outcome o = {1469598103934665603ULL, 0, 0};
    size_t fed = 0;

    http_parser_init(&p, max_head, max_body);
    buf_init(&in);
    while (fed < size || in.len) {
        size_t n = chunk ? chunk : size;
        if (n > size - fed)
            n = size - fed;
        buf_append(&in, data + fed, n);
        fed += n;
        for (;;) {
            size_t used;
            int status = 0;
            const char *why = NULL;
            enum http_parse_rc rc = http_parser_feed(&p, in.data, in.len, &used, &status, &why);
            assert(used <= in.len);
            buf_consume(&in, used);
            if (rc == HTTP_PARSE_ERROR) {
                assert(status == 400 || status == 413 || status == 431);
                assert(why && *why);
                o.status = status;
                goto out;
            }
            if (rc == HTTP_PARSE_NEED_MORE)
                break;
            if (rc == HTTP_PARSE_EXPECT_CONTINUE)
                continue;
            struct http_req *r = &p.req;
            assert(r->body_len <= max_body);
            assert(r->nheaders <= HTTP_MAX_HEADERS);
            assert(strlen(r->path) <= strlen(r->target));
            o.hash = mix(o.hash, r->method, strlen(r->method));
            o.hash = mix(o.hash, r->target, strlen(r->target) + 1);
            for (size_t i = 0; i < r->nheaders; i++) {
                assert(r->headers[i].name[r->headers[i].name_len] == '\0');
                assert(r->headers[i].value[r->headers[i].value_len] == '\0');
                o.hash = mix(o.hash, r->headers[i].name, r->headers[i].name_len + 1);
                o.hash = mix(o.hash, r->headers[i].value, r->headers[i].value_len + 1);
            }
            o.hash = mix(o.hash, r->body, r->body_len);
            o.nreq++;
            if (r->upgrade)
                goto out; /* bytes after an upgrade belong to another protocol */
        }
        if (fed == size && in.len == 0)
            break;
        if (fed == size) /* leftover partial request: nothing more will come */
            break;
    }
out:
    buf_fini(&in);
    http_parser_fini(&p);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t chunk, max_head, max_body;
    struct outcome whole, split;
    if (size < 1)
        return 0;
    chunk = data[0] & 0x3f;
    max_head = (data[0] & 0x40) ? 256 : 16384;
    max_body = (data[0] & 0x80) ? 64 : 1048576;
    data++;
    size--;
    whole = run(data, size, 0, max_head, max_body);
    split = run(data, size, chunk ? chunk : 1, max_head, max_body);
    assert(whole.nreq == split.nreq);
    /* which limit or syntax check trips first may depend on how reads split a
     * field (llhttp reports a field span when it ends or when the read ends), so
     * both runs must fail or succeed together, not necessarily with one status */
    assert((whole.status == 0) == (split.status == 0));
    assert(whole.hash == split.hash);
    return 0;
}
