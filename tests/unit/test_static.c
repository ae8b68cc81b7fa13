/* tests/unit/test_static.c: the header checks of the dashboard's file server
 * (web/static.h): which Accept-Encoding values get the gzip form, which
 * If-None-Match values get a 304; and the embedded table's own invariants. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "web/assets.h"
#include "web/static.h"

static void test_accepts_gzip(void **state)
{
    static const struct {
        const char *value;
        bool gzip;
    } vec[] = {
        {NULL, false},
        {"", false},
        {"identity", false},
        {"gzip", true},
        {"GZip", true},
        {"x-gzip", true},
        {"gzip, deflate, br", true},
        {"br;q=1.0, gzip;q=0.8, *;q=0.1", true},
        {"deflate,gzip", true},
        {"gzip;q=0", false},
        {"gzip; q=0.000", false},
        {"gzip;q=0.001", true},
        {"*", true},
        {"*;q=0", false},
        {"gzip;q=0, *", false}, /* the named coding wins over "*" */
        {"gzipx, deflate", false},
        {" gzip ;q=0.5 ", true},
    };
    (void)state;
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        if (static_accepts_gzip(vec[i].value) != vec[i].gzip)
            fail_msg("Accept-Encoding: %s", vec[i].value ? vec[i].value : "(absent)");
    }
}

static void test_etag_matches(void **state)
{
    const char *tag = "\"abc\"";
    (void)state;
    assert_false(static_etag_matches(NULL, tag));
    assert_false(static_etag_matches("", tag));
    assert_true(static_etag_matches("\"abc\"", tag));
    assert_true(static_etag_matches("W/\"abc\"", tag));
    assert_true(static_etag_matches("\"x\", \"abc\"", tag));
    assert_true(static_etag_matches("*", tag));
    assert_false(static_etag_matches("\"abc-gz\"", tag));
    assert_false(static_etag_matches("\"ab\"", tag));
    assert_false(static_etag_matches("abc", tag));
}

static void test_table(void **state)
{
    bool index = false;
    (void)state;
    for (const struct asset *a = web_assets; a->path; a++) {
        assert_true(a->path[0] == '/');
        assert_non_null(a->content_type);
        assert_true(a->etag[0] == '"' && strcmp(a->etag, a->etag_gz) != 0);
        assert_int_equal(a->data[a->len], 0);
        if (a->gz) /* kept only when it saves at least a tenth; gzip's magic first */
            assert_true(a->gz_len <= a->len * 9 / 10 && a->gz[0] == 0x1f && a->gz[1] == 0x8b);
        index = index || strcmp(a->path, "/index.html") == 0;
    }
    assert_true(index);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_gzip),
        cmocka_unit_test(test_etag_matches),
        cmocka_unit_test(test_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
