/* tests/unit/test_chunk.c: the chunk column codec (storage/chunk.c). Every series is
 * encoded, decoded and compared bit for bit (ts, type, the double's bits, text bytes),
 * its stats against a direct computation here; blobs are then cut at every length and
 * flipped at every bit, and each of those must decode to an error or to some points,
 * never crash (the suite runs under ASan+UBSan). The 1 Hz size figures are of a
 * deterministic encoding of fixed pseudo-random series, so their bounds are exact. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/err.h"
#include "storage/chunk.h"

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next_rand(void) /* xorshift64*: fixed seed, same series every run */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1du;
}

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static struct point num_pt(int64_t ts, double v)
{
    struct point p = {.ts_ms = ts, .type = VAL_NUM, .num = v};
    return p;
}

static struct point text_pt(int64_t ts, enum val_type t, const char *s)
{
    struct point p = {.ts_ms = ts, .type = t, .str = s, .str_len = strlen(s)};
    return p;
}

/* The stats as storage/query.c would aggregate the points, written out plainly. */
static struct chunk_stats direct_stats(const struct point *p, size_t n)
{
    struct chunk_stats st = {0};

    st.count = (uint32_t)n;
    st.first_ts = p[0].ts_ms;
    st.last_ts = p[n - 1].ts_ms;
    for (size_t i = 0; i < n; i++) {
        st.types |= 1u << p[i].type;
        if (p[i].type != VAL_NUM && p[i].type != VAL_BOOL)
            continue;
        if (st.nnum == 0 || p[i].num < st.min)
            st.min = p[i].num;
        if (st.nnum == 0 || p[i].num > st.max)
            st.max = p[i].num;
        if (st.nnum == 0)
            st.first = p[i].num;
        st.last = p[i].num;
        st.sum += p[i].num;
        if (isnan(st.sum))
            st.sum = bitsd(0x7ff8000000000000u);
        st.nnum++;
    }
    return st;
}

static void assert_stats_equal(const struct chunk_stats *a, const struct chunk_stats *b)
{
    assert_int_equal(a->count, b->count);
    assert_int_equal(a->nnum, b->nnum);
    assert_int_equal(a->types, b->types);
    assert_true(a->first_ts == b->first_ts);
    assert_true(a->last_ts == b->last_ts);
    assert_true(dbits(a->min) == dbits(b->min));
    assert_true(dbits(a->max) == dbits(b->max));
    assert_true(dbits(a->sum) == dbits(b->sum));
    assert_true(dbits(a->first) == dbits(b->first));
    assert_true(dbits(a->last) == dbits(b->last));
}

/* Encodes p[0..n) into out (appended), asserting every add succeeds. */
static void encode(const struct point *p, size_t n, struct buf *out)
{
    struct chunk_enc e;

    chunk_enc_init(&e);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(chunk_enc_add(&e, &p[i]), 0);
    assert_int_equal(chunk_enc_finish(&e, out), 0);
    assert_int_equal(e.stats.count, 0);
    chunk_enc_fini(&e);
}

/* Decodes a blob that may be damaged: an error has a reason, a success sane points. */
static void decode_any(const uint8_t *blob, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan sees a read past the end */
    struct chunk_points cp;
    struct chunk_stats st;
    const char *why = NULL;

    memcpy(copy, blob, len);
    if (chunk_decode(copy, len, &cp, &why) == 0) {
        assert_true(cp.npoints >= 1 && cp.npoints <= CHUNK_MAX_POINTS);
        for (size_t i = 0; i < cp.npoints; i++)
            if (cp.points[i].type == VAL_STR || cp.points[i].type == VAL_JSON)
                assert_int_equal(cp.points[i].str[cp.points[i].str_len], '\0');
        assert_int_equal(chunk_stats(copy, len, &st, &why), 0);
        chunk_points_fini(&cp);
    } else {
        assert_non_null(why);
        assert_null(cp.points);
    }
    free(copy);
}

/* Every cut must fail; every single-bit flip must not crash. */
static void mutate_all(const uint8_t *blob, size_t len)
{
    uint8_t *m = malloc(len);
    struct chunk_points cp;
    const char *why;

    for (size_t cut = 0; cut < len; cut++) {
        why = NULL;
        assert_int_equal(chunk_decode(blob, cut, &cp, &why), GW_EINVAL);
        assert_non_null(why);
        decode_any(blob, cut);
    }
    for (size_t bit = 0; bit < len * 8; bit++) {
        memcpy(m, blob, len);
        m[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        decode_any(m, len);
    }
    free(m);
}

/* Round trip of p[0..n): returns the blob's size. */
static size_t roundtrip(const struct point *p, size_t n, int mutate)
{
    struct buf b;
    struct chunk_points cp;
    struct chunk_stats st, want = direct_stats(p, n);
    const char *why = NULL;
    size_t len;

    buf_init(&b);
    encode(p, n, &b);
    len = b.len;
    assert_int_equal(chunk_stats(b.data, b.len, &st, &why), 0);
    assert_stats_equal(&st, &want);
    if (chunk_decode(b.data, b.len, &cp, &why) != 0)
        fail_msg("decode: %s", why);
    assert_int_equal(cp.npoints, n);
    assert_stats_equal(&cp.stats, &want);
    for (size_t i = 0; i < n; i++) {
        const struct point *a = &p[i], *d = &cp.points[i];
        assert_true(a->ts_ms == d->ts_ms);
        assert_int_equal(a->type, d->type);
        if (a->type == VAL_NUM || a->type == VAL_BOOL) {
            if (dbits(a->num) != dbits(d->num))
                fail_msg("point %zu: %016llx decoded as %016llx", i,
                         (unsigned long long)dbits(a->num), (unsigned long long)dbits(d->num));
        } else {
            assert_int_equal(a->str_len, d->str_len);
            assert_memory_equal(a->str, d->str, a->str_len);
            assert_int_equal(d->str[d->str_len], '\0');
        }
    }
    chunk_points_fini(&cp);
    if (mutate)
        mutate_all(b.data, b.len);
    buf_fini(&b);
    return len;
}

static uint64_t read_varint(const uint8_t *p, size_t *pos)
{
    uint64_t v = 0;

    for (int shift = 0;; shift += 7) {
        uint8_t c = p[(*pos)++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return v;
    }
}

/* The mode byte of the num column (the column after ts, and after type when mixed). */
static int num_mode(const struct point *p, size_t n)
{
    struct buf b;
    size_t pos = CHUNK_HEADER_BYTES, len;
    int mode;

    buf_init(&b);
    encode(p, n, &b);
    len = read_varint(b.data, &pos); /* ts */
    pos += len;
    if (b.data[1] != (1u << VAL_NUM)) {
        len = read_varint(b.data, &pos); /* type */
        pos += len;
    }
    read_varint(b.data, &pos);
    mode = b.data[pos];
    buf_fini(&b);
    return mode;
}

static const uint64_t edge_bits[] = {
    0x7ff8000000000000u, /* quiet NaN */
    0x7ff8000000000001u, /* NaN with payload */
    0xfff0000000000001u, /* negative signalling NaN */
    0x7fffffffffffffffu, /* NaN, all payload bits */
    0x8000000000000000u, /* -0.0 */
    0x0000000000000000u, /* +0.0 */
    0x7ff0000000000000u, /* +inf */
    0xfff0000000000000u, /* -inf */
    0x0000000000000001u, /* smallest subnormal */
    0x000fffffffffffffu, /* largest subnormal */
    0x8000000000000001u, /* negative subnormal */
    0x0010000000000000u, /* DBL_MIN */
    0x7fefffffffffffffu, /* DBL_MAX */
    0xffefffffffffffffu, /* -DBL_MAX */
    0x3ff0000000000000u, /* 1.0 */
};

static void test_edge_doubles(void **state)
{
    size_t n = sizeof edge_bits / sizeof edge_bits[0];
    struct point p[64];
    (void)state;

    for (size_t i = 0; i < n; i++)
        p[i] = num_pt((int64_t)i * 1000, bitsd(edge_bits[i]));
    roundtrip(p, n, 1);
    assert_int_equal(num_mode(p, n), 0); /* XOR: NaN is no decimal */
    for (size_t i = 0; i < n; i++) /* each alone, and each repeated */
        for (size_t k = 1; k <= 3; k++) {
            for (size_t j = 0; j < k; j++)
                p[j] = num_pt((int64_t)j, bitsd(edge_bits[i]));
            roundtrip(p, k, k == 1);
        }
}

static void test_integer_values(void **state)
{
    const double v[] = {-0x1p63, 0x1p63 - 1024, 0, 1, -1, 0x1p53, 0x1p53 + 2, -0x1p62,
                        (double)INT64_MIN, 123456789, -0x1p63, 0x1p63 - 1024, 7};
    size_t n = sizeof v / sizeof v[0];
    struct point p[16];
    (void)state;

    for (size_t i = 0; i < n; i++)
        p[i] = num_pt((int64_t)i, v[i]);
    roundtrip(p, n, 1);
    assert_int_not_equal(num_mode(p, n), 0); /* integers: a decimal form */
    p[3] = num_pt(3, 0x1p63); /* just out of int64 range: XOR */
    roundtrip(p, n, 0);
    assert_int_equal(num_mode(p, n), 0);
}

static void test_timestamps(void **state)
{
    const int64_t ts[] = {INT64_MIN, INT64_MIN, INT64_MIN + 1, -1000000, -1, 0, 0, 0, 1,
                          999, 1000, 1001, 70000, 1700000000000, 1700000000000,
                          INT64_MAX - 1, INT64_MAX, INT64_MAX};
    size_t n = sizeof ts / sizeof ts[0];
    struct point p[32];
    (void)state;

    for (size_t i = 0; i < n; i++)
        p[i] = num_pt(ts[i], (double)i);
    roundtrip(p, n, 1);
    p[0] = num_pt(INT64_MIN, 1.5); /* the widest jump there is */
    p[1] = num_pt(INT64_MAX, 2.5);
    roundtrip(p, 2, 1);
    for (size_t i = 0; i < 20; i++) /* irregular: every bucket of delta-of-delta */
        p[i] = num_pt(i == 0 ? 0 : p[i - 1].ts_ms + (int64_t)(next_rand() >> (next_rand() % 64)),
                      0.25);
    roundtrip(p, 20, 1);
}

static void test_one_point(void **state)
{
    struct point p;
    (void)state;

    p = num_pt(INT64_MAX, -0.0);
    roundtrip(&p, 1, 1);
    p = (struct point){.ts_ms = INT64_MIN, .type = VAL_BOOL, .num = 1.0};
    roundtrip(&p, 1, 1);
    p = text_pt(42, VAL_STR, "");
    roundtrip(&p, 1, 1);
    p = text_pt(-42, VAL_JSON, "{\"a\":[1,2,{\"b\":null}]}");
    roundtrip(&p, 1, 1);
}

static void test_mixed_types(void **state)
{
    struct point p[12] = {
        num_pt(1, 21.5),
        {.ts_ms = 2, .type = VAL_BOOL, .num = 0.0},
        text_pt(3, VAL_STR, "on"),
        text_pt(3, VAL_STR, "on"),
        text_pt(4, VAL_JSON, "on"),
        text_pt(5, VAL_STR, ""),
        text_pt(5, VAL_STR, ""),
        num_pt(6, bitsd(0x7ff8000000000abcu)),
        {.ts_ms = 7, .type = VAL_BOOL, .num = 1.0},
        num_pt(8, -3.25),
        text_pt(9, VAL_STR, "on"),
        num_pt(10, 1e300),
    };
    (void)state;

    roundtrip(p, 12, 1);
    roundtrip(p + 1, 1, 0);
    roundtrip(p + 2, 4, 1); /* STR and JSON only: no numeric stats */
}

static void test_max_points(void **state)
{
    struct point *p = calloc(CHUNK_MAX_POINTS + 1, sizeof *p);
    struct chunk_enc e;
    (void)state;

    for (size_t i = 0; i <= CHUNK_MAX_POINTS; i++)
        p[i] = num_pt(1700000000000 + (int64_t)i * 1000, bitsd(next_rand()));
    roundtrip(p, CHUNK_MAX_POINTS, 0);
    chunk_enc_init(&e);
    for (size_t i = 0; i < CHUNK_MAX_POINTS; i++)
        assert_int_equal(chunk_enc_add(&e, &p[i]), 0);
    assert_int_equal(chunk_enc_add(&e, &p[CHUNK_MAX_POINTS]), GW_ELIMIT);
    assert_int_equal(e.stats.count, CHUNK_MAX_POINTS);
    chunk_enc_fini(&e);
    free(p);
}

static void test_rejects(void **state)
{
    struct chunk_enc e;
    struct buf b;
    struct point p = num_pt(10, 1.0), q;
    (void)state;

    buf_init(&b);
    chunk_enc_init(&e);
    assert_int_equal(chunk_enc_finish(&e, &b), GW_EINVAL); /* empty */
    assert_int_equal(b.len, 0);
    assert_int_equal(chunk_enc_add(&e, &p), 0);
    q = num_pt(9, 2.0);
    assert_int_equal(chunk_enc_add(&e, &q), GW_EINVAL); /* out of order */
    q = (struct point){.ts_ms = 10, .type = VAL_BOOL, .num = 0.5};
    assert_int_equal(chunk_enc_add(&e, &q), GW_EINVAL);
    q.num = -0.0;
    assert_int_equal(chunk_enc_add(&e, &q), GW_EINVAL);
    q = (struct point){.ts_ms = 10, .type = (enum val_type)4};
    assert_int_equal(chunk_enc_add(&e, &q), GW_EINVAL);
    q = (struct point){.ts_ms = 10, .type = VAL_STR, .str = NULL, .str_len = 3};
    assert_int_equal(chunk_enc_add(&e, &q), GW_EINVAL);
    assert_int_equal(e.stats.count, 1);
    assert_int_equal(chunk_enc_finish(&e, &b), 0); /* the chunk so far is intact */
    chunk_enc_fini(&e);
    decode_any(b.data, b.len);
    buf_fini(&b);
}

/* Random series: random types, bit patterns, decimals, integers, texts and repeats. */
static void test_random(void **state)
{
    static char texts[8][40];
    struct point p[300];
    (void)state;

    for (int t = 0; t < 8; t++)
        snprintf(texts[t], sizeof texts[t], t % 2 ? "{\"s\":%d}" : "text-%d", t * 7919);
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + next_rand() % 300;
        unsigned types = 1 + (unsigned)(next_rand() % 15), kind = (unsigned)(next_rand() % 4);
        int64_t ts = (int64_t)next_rand();
        for (size_t i = 0; i < n; i++) {
            enum val_type t;
            do
                t = (enum val_type)(next_rand() % 4);
            while (!(types & (1u << t)));
            if (i > 0 && ts < INT64_MAX - 100000)
                ts += (int64_t)(next_rand() % (next_rand() % 2 ? 3 : 100000));
            if (t == VAL_NUM) {
                double v = kind == 0 ? bitsd(next_rand())
                         : kind == 1 ? (double)(int64_t)(next_rand() % 2000) / 100
                         : kind == 2 ? (double)(int64_t)next_rand()
                                     : (double)(next_rand() % 4);
                p[i] = num_pt(ts, v);
            } else if (t == VAL_BOOL) {
                p[i] = (struct point){.ts_ms = ts, .type = VAL_BOOL,
                                      .num = (double)(next_rand() & 1)};
            } else {
                p[i] = text_pt(ts, t, texts[next_rand() % (next_rand() % 2 ? 2 : 8)]);
            }
        }
        roundtrip(p, n, round < 6 && n < 80);
    }
}

/* Bytes per point over a day of 1 Hz points in chunks of 1000. */
static double bytes_per_point(struct point *p, size_t n)
{
    size_t total = 0;

    for (size_t off = 0; off < n; off += 1000)
        total += roundtrip(p + off, n - off < 1000 ? n - off : 1000, 0);
    return (double)total / (double)n;
}

static void test_size_1hz(void **state)
{
    enum { N = 86400 };
    static const char *modes[] = {"idle", "running", "heating", "error"};
    struct point *p = calloc(N, sizeof *p);
    int64_t t0 = 1700000000000;
    double bpp, counter = 0;
    size_t mode = 0;
    (void)state;

    /* a slowly varying float with noise, two decimals, exact 1 s spacing */
    for (size_t i = 0; i < N; i++) {
        double x = 21.0 + 3.0 * sin((double)i / 3600.0) +
                   ((double)(next_rand() % 1001) - 500.0) / 10000.0;
        p[i] = num_pt(t0 + (int64_t)i * 1000, round(x * 100.0) / 100.0);
    }
    bpp = bytes_per_point(p, N);
    print_message("1 Hz float (2 decimals, noise):   %.3f bytes/point\n", bpp);
    assert_true(bpp <= 4.0);
    for (size_t i = 0; i < N; i++) /* the same with arrival-time jitter of +-20 ms */
        p[i].ts_ms = t0 + (int64_t)i * 1000 + (int64_t)(next_rand() % 41) - 20;
    bpp = bytes_per_point(p, N);
    print_message("same with +-20 ms ts jitter:      %.3f bytes/point\n", bpp);
    assert_true(bpp <= 4.0);
    /* a steady counter (uptime, messages at a fixed rate): +1 a second, rarely +0 or +2 */
    for (size_t i = 0; i < N; i++) {
        uint64_t r = next_rand() % 100;
        counter += r == 0 ? 0 : r == 1 ? 2 : 1;
        p[i] = num_pt(t0 + (int64_t)i * 1000, counter);
    }
    bpp = bytes_per_point(p, N);
    print_message("1 Hz steady counter:              %.3f bytes/point\n", bpp);
    assert_true(bpp <= 0.5);
    /* a busy counter: increments of 0..20 a second */
    for (size_t i = 0; i < N; i++) {
        counter += (double)(next_rand() % 21);
        p[i] = num_pt(t0 + (int64_t)i * 1000, counter);
    }
    bpp = bytes_per_point(p, N);
    print_message("1 Hz counter, +0..20 a second:    %.3f bytes/point\n", bpp);
    assert_true(bpp <= 1.0);
    /* a boolean that changes about every ten minutes */
    for (size_t i = 0; i < N; i++)
        p[i] = (struct point){.ts_ms = t0 + (int64_t)i * 1000, .type = VAL_BOOL,
                              .num = (double)((i / 600 + (next_rand() % 500 == 0)) & 1)};
    bpp = bytes_per_point(p, N);
    print_message("1 Hz boolean:                     %.3f bytes/point\n", bpp);
    assert_true(bpp <= 0.4);
    /* a few repeating strings, changing about every minute */
    for (size_t i = 0; i < N; i++) {
        if (next_rand() % 60 == 0)
            mode = next_rand() % 4;
        p[i] = text_pt(t0 + (int64_t)i * 1000, VAL_STR, modes[mode]);
    }
    bpp = bytes_per_point(p, N);
    print_message("1 Hz repeating strings:           %.3f bytes/point\n", bpp);
    assert_true(bpp <= 0.4);
    free(p);
}

/* Texts that do not repeat exactly but share most bytes are deflated. */
static void test_deflate(void **state)
{
    static char texts[200][64];
    struct point p[200];
    size_t raw = 0, len;
    (void)state;

    for (int i = 0; i < 200; i++) {
        snprintf(texts[i], sizeof texts[i], "{\"fw\":\"1.4.2\",\"rssi\":-%d,\"ok\":true}",
                 40 + i % 7);
        p[i] = text_pt(1000 * i, VAL_JSON, texts[i]);
        raw += strlen(texts[i]) + 1;
    }
    len = roundtrip(p, 200, 0);
    assert_true(len < raw / 4);
    roundtrip(p, 12, 1);
}

/* Headers alone: chunk_stats checks what it can without the columns. */
static void test_stats_header(void **state)
{
    struct point p[3] = {num_pt(5, 2.0), num_pt(6, -1.0), num_pt(9, 4.0)};
    struct chunk_stats st;
    struct buf b;
    const char *why = NULL;
    (void)state;

    buf_init(&b);
    encode(p, 3, &b);
    assert_int_equal(chunk_stats(b.data, CHUNK_HEADER_BYTES, &st, &why), 0);
    assert_true(st.min == -1.0 && st.max == 4.0 && st.sum == 5.0 && st.first == 2.0 &&
                st.last == 4.0 && st.first_ts == 5 && st.last_ts == 9 && st.count == 3);
    assert_int_equal(chunk_stats(b.data, CHUNK_HEADER_BYTES - 1, &st, &why), GW_EINVAL);
    assert_string_equal(why, "chunk shorter than its header");
    b.data[0] = 2;
    assert_int_equal(chunk_stats(b.data, b.len, &st, &why), GW_EINVAL);
    assert_string_equal(why, "unknown chunk version");
    b.data[0] = CHUNK_VERSION;
    b.data[4] = 0; /* count 0 */
    assert_int_equal(chunk_stats(b.data, b.len, &st, &why), GW_EINVAL);
    b.data[4] = 3;
    b.data[48] ^= 1; /* sum: the header alone cannot tell, the decoder can */
    assert_int_equal(chunk_stats(b.data, b.len, &st, &why), 0);
    decode_any(b.data, b.len);
    {
        struct chunk_points cp;
        assert_int_equal(chunk_decode(b.data, b.len, &cp, &why), GW_EINVAL);
        assert_string_equal(why, "chunk stats do not match its values");
    }
    buf_fini(&b);
}

/* Garbage after a plausible header, and headers declaring the most points. */
static void test_garbage(void **state)
{
    uint8_t blob[600];
    (void)state;

    for (int round = 0; round < 20000; round++) {
        size_t len = next_rand() % sizeof blob;
        for (size_t i = 0; i < len; i++)
            blob[i] = (uint8_t)next_rand();
        if (len >= CHUNK_HEADER_BYTES && round % 2) {
            memset(blob, 0, CHUNK_HEADER_BYTES);
            blob[0] = CHUNK_VERSION;
            blob[1] = (uint8_t)(1 + next_rand() % 15);
            blob[4] = (uint8_t)next_rand();
            blob[5] = (uint8_t)(next_rand() % 17);
            blob[24] = round % 4 == 1 ? blob[4] : 0;
            blob[25] = blob[5];
        }
        decode_any(blob, len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_doubles),  cmocka_unit_test(test_integer_values),
        cmocka_unit_test(test_timestamps),    cmocka_unit_test(test_one_point),
        cmocka_unit_test(test_mixed_types),   cmocka_unit_test(test_max_points),
        cmocka_unit_test(test_rejects),       cmocka_unit_test(test_random),
        cmocka_unit_test(test_size_1hz),      cmocka_unit_test(test_deflate),
        cmocka_unit_test(test_stats_header),  cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
