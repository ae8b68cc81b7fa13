/* tests/unit/test_buf.c: growable buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"

static void test_reserve_commit_consume(void **state)
{
    struct buf b;
    (void)state;
    buf_init(&b);
    memcpy(buf_reserve(&b, 5), "hello", 5);
    buf_commit(&b, 5);
    buf_append_str(&b, " world");
    assert_int_equal(b.len, 11);
    buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "world", 5);
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    buf_fini(&b);
}

static void test_grows(void **state)
{
    struct buf b;
    (void)state;
    buf_init(&b);
    for (int i = 0; i < 10000; i++)
        buf_append(&b, "x", 1);
    assert_int_equal(b.len, 10000);
    assert_true(b.cap >= 10000);
    buf_fini(&b);
}

static void test_json_escape(void **state)
{
    struct buf b;
    (void)state;
    buf_init(&b);
    buf_append_json_str(&b, "a\"b\\c\n\x01", 7);
    assert_string_equal(buf_cstr(&b), "\"a\\\"b\\\\c\\n\\u0001\"");
    buf_fini(&b);
}

static void test_printf(void **state)
{
    struct buf b;
    (void)state;
    buf_init(&b);
    buf_printf(&b, "%d-%s", 42, "x");
    buf_printf(&b, "%s", "");
    assert_string_equal(buf_cstr(&b), "42-x");
    buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_commit_consume),
        cmocka_unit_test(test_grows),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_printf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
