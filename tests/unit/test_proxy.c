/* tests/unit/test_proxy.c: the PROXY protocol header decoder and the trusted-peer list
 * (gateway/proxy.c). Each table input is fed whole, then grown a byte at a time (as a
 * connection that keeps the header's bytes between reads does): every prefix shorter
 * than the header must be NEED_MORE (or the expected error, from the byte it shows at),
 * and the whole input must give the expected header, length or reason. Every decode
 * sees an exact-size heap copy, so ASan catches a read past the end. */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/proxy.h"

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

struct pcase {
    const char *name;
    unsigned accept;
    const char *in;
    size_t len;            /* 0: strlen(in) */
    int rc;                /* PROXY_DONE or PROXY_ERROR (the whole input) */
    size_t used;           /* DONE: header length */
    bool local;
    const char *src;       /* DONE, not local: "addr" */
    int sport;
    const char *why;       /* ERROR: the reason */
    size_t err_at;         /* ERROR: bytes fed when it shows (0: only with the whole) */
};

/* clang-format off */
static const struct pcase cases[] = {
    {"v1 tcp4", PROXY_ANY, "PROXY TCP4 192.0.2.1 198.51.100.2 51000 1883\r\nMQTT", 0,
     PROXY_DONE, 46, false, "192.0.2.1", 51000, NULL, 0},
    {"v1 tcp6", PROXY_V1, "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n", 0,
     PROXY_DONE, 36, false, "2001:db8::1", 65535, NULL, 0},
    {"v1 unknown", PROXY_V1, "PROXY UNKNOWN ffff::1 whatever\r\nx", 0,
     PROXY_DONE, 32, true, NULL, 0, NULL, 0},
    {"v1 bare unknown", PROXY_V1, "PROXY UNKNOWN\r\n", 0, PROXY_DONE, 15, true, NULL, 0, NULL, 0},
    {"v1 on a v2 listener", PROXY_V2, "PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\n", 0, PROXY_ERROR, 0,
     false, NULL, 0, "PROXY v1 header where v2 is expected", 6},
    {"no header", PROXY_ANY, "\x10\x20", 2, PROXY_ERROR, 0, false, NULL, 0, "no PROXY header", 1},
    {"wrong 4th byte", PROXY_V1, "PROXz", 0, PROXY_ERROR, 0, false, NULL, 0, "no PROXY header", 5},
    {"v1 port too big", PROXY_V1, "PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n", 0, PROXY_ERROR, 0,
     false, NULL, 0, "PROXY v1 address or port invalid", 0},
    {"v1 port leading zero", PROXY_V1, "PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n", 0, PROXY_ERROR, 0,
     false, NULL, 0, "PROXY v1 address or port invalid", 0},
    {"v1 v6 address in tcp4", PROXY_V1, "PROXY TCP4 ::1 ::1 1 1\r\n", 0, PROXY_ERROR, 0, false,
     NULL, 0, "PROXY v1 address or port invalid", 0},
    {"v1 two spaces", PROXY_V1, "PROXY TCP4 1.2.3.4  1.2.3.4 1 1\r\n", 0, PROXY_ERROR, 0, false,
     NULL, 0, "PROXY v1 line with too many fields", 0},
    {"v1 too few", PROXY_V1, "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", 0, PROXY_ERROR, 0, false, NULL,
     0, "PROXY v1 line with too few fields", 0},
    {"v1 udp", PROXY_V1, "PROXY UDP4 1.2.3.4 1.2.3.4 1 1\r\n", 0, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v1 protocol not TCP4, TCP6 or UNKNOWN", 0},
    {"v1 bare LF", PROXY_V1, "PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", 0, PROXY_ERROR, 0, false, NULL,
     0, "PROXY v1 line not ended by CRLF", 0},
    {"v1 CR inside", PROXY_V1, "PROXY TCP4\r 1", 0, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v1 line with CR before its end", 12},
    {"v1 NUL inside", PROXY_V1, "PROXY TCP4\0", 11, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v1 line with a control byte", 11},
    {"v1 108 bytes", PROXY_V1,
     "PROXY UNKNOWN 012345678901234567890123456789012345678901234567890123456789"
     "0123456789012345678901234567890123", 0, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v1 line longer than 107 bytes", 107},
    {"v1 107 bytes exactly", PROXY_V1,
     "PROXY UNKNOWN 012345678901234567890123456789012345678901234567890123456789"
     "0123456789012345678901234567890\r\n", 0, PROXY_DONE, 107, true, NULL, 0, NULL, 0},
    {"v2 tcp4", PROXY_ANY, V2SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\x7f\x00\x00\x01"
     "\xc7\x38" "\x07\x5b" "MQ", 30, PROXY_DONE, 28, false, "192.0.2.1", 51000, NULL, 0},
    {"v2 tcp4 with TLVs", PROXY_V2, V2SIG "\x21\x11\x00\x13" "\xc0\x00\x02\x01" "\x7f\x00\x00\x01"
     "\x00\x50" "\x07\x5b" "\x05\x00\x04" "abcd", 35, PROXY_DONE, 35, false, "192.0.2.1", 80,
     NULL, 0},
    {"v2 tcp6", PROXY_V2, V2SIG "\x21\x21\x00\x24"
     "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x07" "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01"
     "\x01\x00" "\x07\x5b", 52, PROXY_DONE, 52, false, "2001:db8::7", 256, NULL, 0},
    {"v2 local", PROXY_V2, V2SIG "\x20\x00\x00\x00", 16, PROXY_DONE, 16, true, NULL, 0, NULL, 0},
    {"v2 local with addresses", PROXY_V2, V2SIG "\x20\x11\x00\x0c" "123456789012", 28,
     PROXY_DONE, 28, true, NULL, 0, NULL, 0},
    {"v2 proxy unspec", PROXY_V2, V2SIG "\x21\x00\x00\x00", 16, PROXY_DONE, 16, true, NULL, 0,
     NULL, 0},
    {"v2 on a v1 listener", PROXY_V1, V2SIG "\x21\x11\x00\x0c", 16, PROXY_ERROR, 0, false, NULL,
     0, "PROXY v2 header where v1 is expected", 12},
    {"v2 version 1", PROXY_V2, V2SIG "\x11\x11\x00\x00", 16, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v2 version not 2", 13},
    {"v2 command 2", PROXY_V2, V2SIG "\x22\x11\x00\x00", 16, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v2 command not LOCAL or PROXY", 13},
    {"v2 over the cap", PROXY_V2, V2SIG "\x21\x11\x08\x01", 16, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v2 header longer than 2064 bytes", 16},
    {"v2 tcp4 short", PROXY_V2, V2SIG "\x21\x11\x00\x04" "abcd", 20, PROXY_ERROR, 0, false, NULL,
     0, "PROXY v2 TCP4 addresses shorter than 12 bytes", 0},
    {"v2 udp", PROXY_V2, V2SIG "\x21\x12\x00\x0c" "123456789012", 28, PROXY_ERROR, 0, false,
     NULL, 0, "PROXY v2 family not TCP4, TCP6 or UNSPEC", 0},
    {"v2 unix", PROXY_V2, V2SIG "\x21\x31\x00\x00", 16, PROXY_ERROR, 0, false, NULL, 0,
     "PROXY v2 family not TCP4, TCP6 or UNSPEC", 0},
};
/* clang-format on */

static enum proxy_rc decode_copy(const struct pcase *c, size_t n, struct proxy_header *h,
                                 size_t *used, const char **why)
{
    uint8_t *p = malloc(n ? n : 1);
    enum proxy_rc rc;

    memcpy(p, c->in, n);
    rc = proxy_decode(c->accept, p, n, h, used, why);
    free(p);
    return rc;
}

static void check_src(const struct pcase *c, const struct proxy_header *h)
{
    char host[INET6_ADDRSTRLEN] = "";
    int port;

    assert_int_equal(h->local, c->local);
    if (c->local)
        return;
    if (h->src.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&h->src;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&h->src;
        assert_int_equal(h->src.ss_family, AF_INET6);
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    }
    assert_string_equal(host, c->src);
    assert_int_equal(port, c->sport);
}

static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct pcase *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->in), used = 0;
        struct proxy_header h;
        const char *why = NULL;
        enum proxy_rc rc;

        print_message("case: %s\n", c->name);
        rc = decode_copy(c, len, &h, &used, &why);
        assert_int_equal(rc, c->rc);
        if (rc == PROXY_DONE) {
            assert_int_equal(used, c->used);
            check_src(c, &h);
        } else {
            assert_string_equal(why, c->why);
        }
        /* a byte at a time: NEED_MORE until the header is whole (or the error shows) */
        for (size_t n = 0; n <= len; n++) {
            why = NULL;
            rc = decode_copy(c, n, &h, &used, &why);
            if (c->rc == PROXY_DONE) {
                assert_int_equal(rc, n < c->used ? PROXY_NEED_MORE : PROXY_DONE);
                if (rc == PROXY_DONE) {
                    assert_int_equal(used, c->used);
                    check_src(c, &h);
                }
            } else if (c->err_at) {
                assert_int_equal(rc, n < c->err_at ? PROXY_NEED_MORE : PROXY_ERROR);
                if (rc == PROXY_ERROR)
                    assert_string_equal(why, c->why);
            } else { /* the error shows once the line or the block is complete */
                assert_int_equal(rc, n < len ? PROXY_NEED_MORE : PROXY_ERROR);
            }
        }
    }
}

static bool trusted(const struct proxy_trust *t, const char *addr)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, addr, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
        ss.ss_family = AF_INET6;
    }
    return proxy_trusted(t, (const struct sockaddr *)&ss);
}

static void test_trust(void **state)
{
    struct proxy_trust t;
    char err[256];

    (void)state;
    assert_int_equal(proxy_trust_parse("[\"10.0.0.0/8\",\"192.168.1.7\",\"2001:db8::/32\","
                                       "\"172.16.0.0/12\",\"::1/128\"]",
                                       &t, err, sizeof err),
                     0);
    assert_int_equal(t.n, 5);
    assert_true(trusted(&t, "10.1.2.3"));
    assert_true(trusted(&t, "10.255.255.255"));
    assert_false(trusted(&t, "11.0.0.0"));
    assert_true(trusted(&t, "192.168.1.7"));
    assert_false(trusted(&t, "192.168.1.8"));
    assert_true(trusted(&t, "172.31.0.1"));
    assert_false(trusted(&t, "172.32.0.1"));
    assert_true(trusted(&t, "2001:db8:ffff::1"));
    assert_false(trusted(&t, "2001:db9::1"));
    assert_true(trusted(&t, "::1"));
    assert_false(trusted(&t, "::2"));
    assert_true(trusted(&t, "::ffff:10.9.9.9")); /* IPv4-mapped: the IPv4 networks apply */
    assert_false(trusted(&t, "::ffff:11.9.9.9"));
    proxy_trust_fini(&t);

    assert_int_equal(proxy_trust_parse("[]", &t, err, sizeof err), 0);
    assert_false(trusted(&t, "127.0.0.1")); /* nobody is trusted by default */
    proxy_trust_fini(&t);
    assert_int_equal(proxy_trust_parse("[\"0.0.0.0/0\"]", &t, err, sizeof err), 0);
    assert_true(trusted(&t, "203.0.113.1"));
    assert_false(trusted(&t, "::1"));
    proxy_trust_fini(&t);

    static const char *const bad[] = {"[\"10.0.0.0/33\"]", "[\"::/129\"]", "[\"10.0.0/8\"]",
                                      "[\"host.example\"]", "[\"10.0.0.0/\"]", "[7]", "{}",
                                      "[\"10.0.0.0/8x\"]", "[\"/8\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(proxy_trust_parse(bad[i], &t, err, sizeof err), -1);
        assert_non_null(strstr(err, "limits.proxy_trusted"));
        assert_null(t.v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_trust),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
