/* tests/unit/test_http_parser.c: HTTP request assembly (protocols/http/parser.c).
 * Each case is a client byte stream and the requests (or the error) it must
 * produce; every case is fed whole, split at every offset and one byte at a time,
 * and the three runs must agree with the expectation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/http/parser.h"

#define MAX_REQ 4

struct expect_req {
    const char *method, *path, *query, *host, *body;
    bool keep_alive, upgrade;
};

struct tcase {
    const char *name;
    const char *input;
    size_t len;                     /* 0 = strlen(input) */
    size_t max_head, max_body;
    struct expect_req req[MAX_REQ];
    int nreq;
    int error;                      /* expected status after the requests, 0 = none */
    int continues;                  /* expected 100-continue pauses */
};

static const struct tcase cases[] = {
    {"simple GET", "GET /api/health HTTP/1.1\r\nHost: a\r\n\r\n", 0, 4096, 1024,
     {{"GET", "/api/health", "", "a", "", true, false}}, 1, 0, 0},
    {"query split off the path", "GET /x/y?keys=a,b&limit=5 HTTP/1.1\r\nHost: h\r\n\r\n", 0,
     4096, 1024, {{"GET", "/x/y", "keys=a,b&limit=5", "h", "", true, false}}, 1, 0, 0},
    {"body by content-length",
     "POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n{\"id\":\"x\"}\n", 0, 4096, 1024,
     {{"POST", "/d", "", "h", "{\"id\":\"x\"}\n", true, false}}, 1, 0, 0},
    {"chunked body",
     "POST /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 0,
     4096, 1024, {{"POST", "/d", "", NULL, "abcde", true, false}}, 1, 0, 0},
    {"pipelined three",
     "GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\n"
     "Connection: close\r\n\r\n",
     0, 4096, 1024,
     {{"GET", "/1", "", NULL, "", true, false},
      {"POST", "/2", "", NULL, "hi", true, false},
      {"GET", "/3", "", NULL, "", false, false}},
     3, 0, 0},
    {"HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 0, 4096, 1024,
     {{"GET", "/", "", NULL, "", false, false}}, 1, 0, 0},
    {"upgrade flagged",
     "GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 0,
     4096, 1024, {{"GET", "/mqtt", "", "h", "", true, true}}, 1, 0, 0},
    {"empty header value", "GET / HTTP/1.1\r\nX-Empty:\r\nHost: z\r\n\r\n", 0, 4096, 1024,
     {{"GET", "/", "", "z", "", true, false}}, 1, 0, 0},
    {"expect 100-continue pauses once",
     "POST /t HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", 0, 4096, 1024,
     {{"POST", "/t", "", NULL, "ok", true, false}}, 1, 0, 1},
    {"declared body over the limit: 413 from the headers",
     "POST /t HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 0, 4096, 1024, {{0}}, 0, 413, 0},
    {"chunked body over the limit: 413",
     "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
     "10\r\n0123456789abcdef\r\n0\r\n\r\n",
     0, 4096, 20, {{0}}, 0, 413, 0},
    {"headers over the limit: 431",
     "GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
     0, 100, 1024, {{0}}, 0, 431, 0},
    {"bad request line: 400", "BLAH\x01 / HTTP/1.1\r\n\r\n", 0, 4096, 1024, {{0}}, 0, 400, 0},
    {"bad content-length: 400", "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 0, 4096, 1024,
     {{0}}, 0, 400, 0},
    {"a good request then garbage",
     "GET /ok HTTP/1.1\r\n\r\n\x01\x02garbage\r\n\r\n", 0, 4096, 1024,
     {{"GET", "/ok", "", NULL, "", true, false}}, 1, 400, 0},
};

struct result {
    struct expect_req req[MAX_REQ];
    char store[MAX_REQ][4][512];
    int nreq;
    int error;
    int continues;
};

static void copy(char *dst, const char *src)
{
    snprintf(dst, 512, "%s", src ? src : "");
}

/* Feeds input through a connection-like buffer: the first `split` bytes (0 = none
 * apart), then chunks of `step` bytes (0 = all the rest at once). */
static void run(const struct tcase *tc, size_t split, size_t step, struct result *res)
{
    struct http_parser p;
    struct buf in;
    size_t len = tc->len ? tc->len : strlen(tc->input), fed = 0;

    memset(res, 0, sizeof *res);
    http_parser_init(&p, tc->max_head, tc->max_body);
    buf_init(&in);
    while (fed < len && !res->error) {
        size_t n = (split && fed == 0) ? split : step ? step : len;
        if (n > len - fed)
            n = len - fed;
        buf_append(&in, tc->input + fed, n);
        fed += n;
        for (;;) {
            size_t used;
            int status = 0;
            const char *why = NULL;
            enum http_parse_rc rc = http_parser_feed(&p, in.data, in.len, &used, &status, &why);
            assert_true(used <= in.len);
            buf_consume(&in, used);
            if (rc == HTTP_PARSE_NEED_MORE)
                break;
            if (rc == HTTP_PARSE_EXPECT_CONTINUE) {
                res->continues++;
                continue;
            }
            if (rc == HTTP_PARSE_ERROR) {
                assert_non_null(why);
                res->error = status;
                break;
            }
            assert_true(res->nreq < MAX_REQ);
            struct expect_req *r = &res->req[res->nreq];
            copy(res->store[res->nreq][0], p.req.method);
            copy(res->store[res->nreq][1], p.req.path);
            copy(res->store[res->nreq][2], p.req.query);
            copy(res->store[res->nreq][3], (const char *)p.req.body);
            r->method = res->store[res->nreq][0];
            r->path = res->store[res->nreq][1];
            r->query = res->store[res->nreq][2];
            r->body = res->store[res->nreq][3];
            r->host = http_header(&p.req, "HOST"); /* case-insensitive lookup */
            r->host = r->host ? "present" : NULL;
            r->keep_alive = p.req.keep_alive;
            r->upgrade = p.req.upgrade;
            assert_int_equal(p.req.body_len, strlen(r->body));
            res->nreq++;
            if (p.req.upgrade)
                goto out;
        }
    }
out:
    buf_fini(&in);
    http_parser_fini(&p);
}

static void check(const struct tcase *tc, const struct result *res, size_t split)
{
    char where[160];
    snprintf(where, sizeof where, "%s (split %zu)", tc->name, split);
    if (res->nreq != tc->nreq || res->error != tc->error || res->continues != tc->continues)
        fail_msg("%s: %d requests, error %d, %d continues; want %d, %d, %d", where, res->nreq,
                 res->error, res->continues, tc->nreq, tc->error, tc->continues);
    for (int i = 0; i < tc->nreq; i++) {
        const struct expect_req *w = &tc->req[i], *g = &res->req[i];
        if (strcmp(w->method, g->method) || strcmp(w->path, g->path) ||
            strcmp(w->query, g->query) || strcmp(w->body, g->body) ||
            (w->host != NULL) != (g->host != NULL) || w->keep_alive != g->keep_alive ||
            w->upgrade != g->upgrade)
            fail_msg("%s: request %d: got %s %s ? %s body=%s keep=%d upgrade=%d", where, i,
                     g->method, g->path, g->query, g->body, g->keep_alive, g->upgrade);
    }
}

static void test_cases(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct tcase *tc = &cases[c];
        size_t len = tc->len ? tc->len : strlen(tc->input);
        struct result res;
        run(tc, 0, 0, &res); /* whole */
        check(tc, &res, 0);
        for (size_t split = 1; split < len; split++) { /* split at every offset */
            run(tc, split, 0, &res);
            check(tc, &res, split);
        }
        run(tc, 0, 1, &res); /* one byte at a time */
        check(tc, &res, 1);
    }
}

static void test_strings_are_terminated(void **state)
{
    struct http_parser p;
    const char *req = "GET /a?b HTTP/1.1\r\nOne: 1\r\nTwo: 22\r\n\r\n";
    size_t used;
    int status;
    const char *why;
    (void)state;
    http_parser_init(&p, 4096, 1024);
    assert_int_equal(http_parser_feed(&p, (const uint8_t *)req, strlen(req), &used, &status, &why),
                     HTTP_PARSE_REQUEST);
    assert_int_equal(used, strlen(req));
    assert_int_equal(p.req.nheaders, 2);
    assert_string_equal(p.req.headers[0].name, "One");
    assert_string_equal(p.req.headers[0].value, "1");
    assert_int_equal(p.req.headers[1].value_len, 2);
    assert_string_equal(p.req.target, "/a?b");
    assert_string_equal(p.req.path, "/a");
    assert_string_equal(p.req.query, "b");
    http_parser_fini(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_strings_are_terminated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
