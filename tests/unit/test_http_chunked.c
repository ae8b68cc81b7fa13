/* tests/unit/test_http_chunked.c: the chunked coding of a response body
 * (protocols/http/chunked.c). Encoded bodies are decoded again by llhttp in response
 * mode, whole, split at every offset and a byte at a time: body and trailer fields must
 * come back as they went in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include <llhttp.h>

#include "protocols/http/chunked.h"

struct decoded {
    struct buf body;
    struct buf trailers;  /* "name: value\n" per field after the body */
    bool in_trailers;
    bool complete;
};

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct decoded *d = p->data;
    buf_append(&d->body, at, len);
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    struct decoded *d = p->data;
    d->in_trailers = true; /* only the last chunk's header fields follow its completion */
    return 0;
}

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct decoded *d = p->data;
    if (d->in_trailers)
        buf_append(&d->trailers, at, len);
    return 0;
}

static int on_field_done(llhttp_t *p)
{
    struct decoded *d = p->data;
    if (d->in_trailers)
        buf_append_str(&d->trailers, ": ");
    return 0;
}

static int on_value_done(llhttp_t *p)
{
    struct decoded *d = p->data;
    if (d->in_trailers)
        buf_append_str(&d->trailers, "\n");
    return 0;
}

static int on_complete(llhttp_t *p)
{
    struct decoded *d = p->data;
    d->complete = true;
    return 0;
}

/* Decodes head + wire fed in pieces of step bytes (0: whole). */
static void decode(const struct buf *wire, size_t step, struct decoded *d)
{
    llhttp_settings_t set;
    llhttp_t p;
    const char *head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                       "Trailer: X-Next\r\n\r\n";

    llhttp_settings_init(&set);
    set.on_body = on_body;
    set.on_chunk_complete = on_chunk_complete;
    set.on_header_field = on_field;
    set.on_header_value = on_field;
    set.on_header_field_complete = on_field_done;
    set.on_header_value_complete = on_value_done;
    set.on_message_complete = on_complete;
    llhttp_init(&p, HTTP_RESPONSE, &set);
    memset(d, 0, sizeof *d);
    buf_init(&d->body);
    buf_init(&d->trailers);
    p.data = d;
    assert_int_equal(llhttp_execute(&p, head, strlen(head)), HPE_OK);
    for (size_t off = 0; off < wire->len;) {
        size_t n = step && wire->len - off > step ? step : wire->len - off;
        assert_int_equal(llhttp_execute(&p, (const char *)wire->data + off, n), HPE_OK);
        off += n;
    }
}

static void check(const struct buf *wire, const struct buf *body, const char *trailers)
{
    size_t steps[] = {0, 1, 2, 3, 7};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        struct decoded d;
        decode(wire, steps[s], &d);
        assert_true(d.complete);
        assert_int_equal(d.body.len, body->len);
        assert_memory_equal(d.body.data, body->data, body->len);
        assert_string_equal(buf_cstr(&d.trailers), trailers);
        buf_fini(&d.body);
        buf_fini(&d.trailers);
    }
    for (size_t cut = 1; cut < wire->len; cut++) { /* split at every offset */
        struct buf a;
        struct decoded d;
        buf_init(&a);
        buf_append(&a, wire->data, wire->len);
        decode(&a, cut, &d);
        assert_true(d.complete);
        assert_int_equal(d.body.len, body->len);
        buf_fini(&d.body);
        buf_fini(&d.trailers);
        buf_fini(&a);
    }
}

static void test_exact_bytes(void **state)
{
    struct buf w;
    (void)state;
    buf_init(&w);
    http_chunk_append(&w, "hello", 5);
    http_chunk_append(&w, "", 0); /* nothing: a 0 chunk would end the body */
    http_chunk_append(&w, "0123456789abcdefX", 17);
    http_chunk_end(&w, NULL);
    assert_string_equal(buf_cstr(&w), "5\r\nhello\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n");
    buf_fini(&w);
    buf_init(&w);
    http_chunk_end(&w, "X-Next: abc\r\n");
    assert_string_equal(buf_cstr(&w), "0\r\nX-Next: abc\r\n\r\n");
    buf_fini(&w);
}

static void test_round_trip(void **state)
{
    struct buf w, body;
    (void)state;
    buf_init(&w);
    buf_init(&body);
    for (size_t i = 0; i < 40; i++) { /* pieces of 0..39 bytes, binary ones included */
        char piece[64];
        for (size_t k = 0; k < i; k++)
            piece[k] = (char)(k * 37 + i);
        http_chunk_append(&w, piece, i);
        buf_append(&body, piece, i);
    }
    http_chunk_end(&w, "X-Next: eyJ2IjoxfQ\r\n");
    check(&w, &body, "X-Next: eyJ2IjoxfQ\n");
    buf_fini(&w);
    buf_init(&w);
    http_chunk_end(&w, NULL); /* an empty body */
    buf_fini(&body);
    buf_init(&body);
    check(&w, &body, "");
    buf_fini(&w);
    buf_fini(&body);
}

static void test_large_chunk(void **state)
{
    struct buf w, body;
    (void)state;
    buf_init(&w);
    buf_init(&body);
    for (size_t i = 0; i < 70000; i++) {
        char ch = (char)('a' + i % 10);
        buf_append(&body, &ch, 1);
    }
    http_chunk_append(&w, body.data, body.len);
    http_chunk_end(&w, NULL);
    assert_memory_equal(w.data, "11170\r\n", 7); /* 70000 in hex */
    {
        struct decoded d;
        decode(&w, 4096, &d);
        assert_true(d.complete);
        assert_int_equal(d.body.len, body.len);
        assert_memory_equal(d.body.data, body.data, body.len);
        buf_fini(&d.body);
        buf_fini(&d.trailers);
    }
    buf_fini(&w);
    buf_fini(&body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_bytes),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_large_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
