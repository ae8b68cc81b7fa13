/* tests/unit/test_segment.c: the segment form (storage/segment.c): every value type
 * and extreme timestamps round-trip bit for bit, and every truncation or corruption of
 * a valid segment is refused with a reason, never read past its end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"
#include "storage/segment.h"

static struct point num(int64_t ts, double v)
{
    return (struct point){ .ts_ms = ts, .type = VAL_NUM, .num = v };
}

static const char long_text[] = "{\"text\":\"past 127 bytes, so its length takes a two-byte"
                                " varint: quotes, UTF-8 \xc3\xa9, spaces and padding....\"}";

static void build(struct buf *b, struct point *pts, int64_t *sids, size_t *n)
{
    struct segment_enc e;
    size_t k = 0;

    pts[k] = num(INT64_MIN, -0.0), sids[k++] = 1;
    pts[k] = num(INT64_MAX, NAN), sids[k++] = INT64_MAX;
    pts[k] = num(0, INFINITY), sids[k++] = 127;
    pts[k] = num(-1, 4.9406564584124654e-324), sids[k++] = 128;
    pts[k] = (struct point){ .ts_ms = 1700000000000, .type = VAL_BOOL, .num = 1 };
    sids[k++] = 5;
    pts[k] = (struct point){ .ts_ms = 1700000000000, .type = VAL_STR, .str = "",
                             .str_len = 0 };
    sids[k++] = 5;
    pts[k] = (struct point){ .ts_ms = 1699999999999, .type = VAL_JSON, .str = long_text,
                             .str_len = sizeof long_text - 1 };
    sids[k++] = 6;
    buf_init(b);
    segment_enc_start(&e, b);
    for (size_t i = 0; i < k; i++)
        segment_enc_add(&e, sids[i], &pts[i]);
    assert_int_equal(e.npoints, k);
    *n = k;
}

static void test_round_trip(void **state)
{
    struct point pts[8], got;
    int64_t sids[8], sid;
    struct segment_reader r;
    const char *why = NULL;
    struct buf b;
    size_t n;

    (void)state;
    build(&b, pts, sids, &n);
    assert_int_equal(segment_read_start(&r, b.data, b.len, &why), 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(segment_read_next(&r, &sid, &got, &why), 1);
        assert_int_equal(sid, sids[i]);
        assert_int_equal(got.ts_ms, pts[i].ts_ms);
        assert_int_equal(got.type, pts[i].type);
        if (got.type == VAL_STR || got.type == VAL_JSON) {
            assert_int_equal(got.str_len, pts[i].str_len);
            if (got.str_len)
                assert_memory_equal(got.str, pts[i].str, got.str_len);
        } else {
            assert_memory_equal(&got.num, &pts[i].num, sizeof got.num);
        }
    }
    assert_int_equal(segment_read_next(&r, &sid, &got, &why), 0);
    buf_fini(&b);
}

/* Every prefix of a valid segment ends cleanly at a point boundary or is refused with a
 * reason; every single-byte corruption is read without going past the end. */
static void test_truncation_and_corruption(void **state)
{
    struct point pts[8], got;
    int64_t sids[8], sid;
    struct segment_reader r;
    const char *why;
    struct buf b;
    size_t n, whole = 0, refused = 0;

    (void)state;
    build(&b, pts, sids, &n);
    for (size_t len = 0; len < b.len; len++) {
        uint8_t copy[512];
        size_t got_n = 0;
        int rc;

        memcpy(copy, b.data, len);
        why = NULL;
        if (segment_read_start(&r, copy, len, &why) != 0) {
            assert_non_null(why);
            refused++;
            continue;
        }
        while ((rc = segment_read_next(&r, &sid, &got, &why)) == 1)
            got_n++;
        if (rc == 0)
            whole++;
        else
            assert_non_null(why), refused++;
        assert_true(got_n < n);
    }
    assert_true(refused > 0);
    assert_true(whole >= 1); /* the version byte alone: an empty segment */
    for (size_t i = 0; i < b.len; i++) {
        uint8_t copy[512];

        memcpy(copy, b.data, b.len);
        copy[i] ^= 0xff;
        why = NULL;
        if (segment_read_start(&r, copy, b.len, &why) != 0)
            continue;
        while (segment_read_next(&r, &sid, &got, &why) == 1)
            assert_true(sid > 0 && (unsigned)got.type <= VAL_JSON);
    }
    buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_truncation_and_corruption),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
