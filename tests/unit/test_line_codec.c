/* tests/unit/test_line_codec.c: newline framing (protocols/line/codec.c).
 * Each table input is fed whole, split at every offset, and one byte at a time through a
 * simulated connection buffer (append what arrived, decode until NEED_MORE, consume once),
 * and the three must produce the same lines, error and leftover bytes. Every decode call
 * sees an exact-size heap copy of the unconsumed bytes, so ASan catches any read past
 * the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/buf.h"
#include "protocols/line/line.h"

/* clang-format off */
#define S(lit) {lit, sizeof(lit) - 1}
/* clang-format on */

struct bytes {
    const char *p;
    size_t n;
};

struct line_case {
    const char *name;
    struct bytes in;       /* the whole stream */
    size_t max_line_bytes; /* decoder limit */
    struct bytes lines[8]; /* expected lines, in order; ends at the first {NULL, 0} */
    int error;             /* 1: "line too long" after those lines */
    size_t err_at;         /* fed a byte at a time: stream bytes fed when the error shows */
    size_t pending;        /* no error: bytes left unconsumed at the end */
};

static const struct line_case cases[] = {
    {"one line", S("hello\n"), 64, {S("hello")}, 0, 0, 0},
    {"three lines", S("a\nbb\nccc\n"), 64, {S("a"), S("bb"), S("ccc")}, 0, 0, 0},
    {"crlf stripped", S("a\r\nb\r\n"), 64, {S("a"), S("b")}, 0, 0, 0},
    {"empty lines", S("\n\n\r\n"), 64, {S(""), S(""), S("")}, 0, 0, 0},
    {"partial line waits", S("partial"), 64, {{NULL, 0}}, 0, 0, 7},
    {"line then partial", S("x\ny"), 64, {S("x")}, 0, 0, 1},
    {"partial ends in cr", S("x\r"), 64, {{NULL, 0}}, 0, 0, 2},
    {"inner cr kept", S("a\rb\n"), 64, {S("a\rb")}, 0, 0, 0},
    {"only the last cr stripped", S("a\r\r\n"), 64, {S("a\r")}, 0, 0, 0},
    {"nul bytes are data", S("a\0b\n"), 64, {S("a\0b")}, 0, 0, 0},
    {"json lines",
     S("{\"device\":\"d\",\"token\":\"t\"}\n{\"temp\":1}\r\n"),
     64,
     {S("{\"device\":\"d\",\"token\":\"t\"}"), S("{\"temp\":1}")},
     0,
     0,
     0},
    {"at the limit", S("abcd\n"), 4, {S("abcd")}, 0, 0, 0},
    {"at the limit with crlf", S("abcd\r\nefgh\r\n"), 4, {S("abcd"), S("efgh")}, 0, 0, 0},
    {"limit then partial cr", S("abcd\r"), 4, {{NULL, 0}}, 0, 0, 5},
    {"one over the limit", S("abcde\n"), 4, {{NULL, 0}}, 1, 5, 0},
    {"over the limit, no newline yet", S("abcdefghij"), 4, {{NULL, 0}}, 1, 5, 0},
    {"cr not followed by newline", S("abcd\rx\n"), 4, {{NULL, 0}}, 1, 6, 0},
    {"cr cr at the limit", S("abcd\r\r\n"), 4, {{NULL, 0}}, 1, 6, 0},
    {"good line then too long", S("ab\nabcdefgh\nzz\n"), 4, {S("ab")}, 1, 8, 0},
    {"zero limit allows empty lines", S("\n\r\n"), 0, {S(""), S("")}, 0, 0, 0},
    {"zero limit rejects a byte", S("\na\n"), 0, {S("")}, 1, 2, 0},
    {"empty stream", S(""), 64, {{NULL, 0}}, 0, 0, 0},
};

/* Serialises a run's outcome so runs can be compared byte for byte. */
static void note_line(struct buf *out, const uint8_t *p, size_t n)
{
    buf_printf(out, "L%zu:", n);
    buf_append(out, p, n);
    buf_append_str(out, "\n");
}

static void expected_outcome(const struct line_case *c, struct buf *out)
{
    for (size_t i = 0; i < 8 && c->lines[i].p; i++)
        note_line(out, (const uint8_t *)c->lines[i].p, c->lines[i].n);
    if (c->error)
        buf_append_str(out, "E\n");
    else
        buf_printf(out, "P%zu\n", c->pending);
}

/* Feeds in[0..len) as a first chunk of `first` bytes, then chunks of `step` bytes. After
 * each chunk, decodes until NEED_MORE (as a connection's feed loop does) and consumes
 * once. Records lines, the error, and how many bytes had been fed when it showed. */
static void run_stream(size_t max, const uint8_t *in, size_t len, size_t first, size_t step,
                       struct buf *out, size_t *err_at)
{
    struct line_decoder d;
    struct buf conn;
    size_t fed = 0, chunks = 0;

    line_decoder_init(&d, max);
    buf_init(&conn);
    *err_at = 0;
    while (fed < len || chunks == 0) {
        size_t n = chunks++ == 0 ? first : step, off = 0;
        if (n > len - fed)
            n = len - fed;
        buf_append(&conn, in + fed, n);
        fed += n;
        for (;;) {
            size_t avail = conn.len - off, line_len = 0, used = 0;
            uint8_t *copy = malloc(avail ? avail : 1);
            const uint8_t *line = NULL;
            const char *why = NULL;
            enum codec_rc rc;

            memcpy(copy, conn.data ? conn.data + off : copy, avail);
            rc = line_decode(&d, copy, avail, &line, &line_len, &used, &why);
            if (rc == CODEC_FRAME) {
                assert_ptr_equal(line, copy); /* a view of the line's first byte */
                assert_true(line_len <= max);
                assert_true(used > line_len && used <= avail);
                assert_int_equal(copy[used - 1], '\n');
                assert_int_equal(d.scanned, 0);
                note_line(out, line, line_len);
                off += used;
                free(copy);
                continue;
            }
            free(copy);
            if (rc == CODEC_ERROR) {
                assert_string_equal(why, "line too long");
                buf_append_str(out, "E\n");
                *err_at = fed;
                buf_fini(&conn);
                return;
            }
            assert_int_equal(rc, CODEC_NEED_MORE);
            /* everything available was scanned once: the next call starts past it */
            assert_int_equal(d.scanned, avail);
            break;
        }
        buf_consume(&conn, off);
    }
    buf_printf(out, "P%zu\n", conn.len);
    buf_fini(&conn);
}

/* Outcomes hold line bytes, NULs included: compare lengths and bytes. */
static int same(const struct buf *a, const struct buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static void check_stream(const char *name, size_t max, const uint8_t *in, size_t len,
                         struct buf *want, int want_err_at, size_t err_at_one)
{
    struct buf got;
    size_t err_at;

    /* whole */
    buf_init(&got);
    run_stream(max, in, len, len, len, &got, &err_at);
    if (!same(&got, want))
        fail_msg("%s (whole): got\n%s\nwant\n%s", name, buf_cstr(&got), buf_cstr(want));
    buf_fini(&got);
    /* split at every offset */
    for (size_t k = 0; k <= len; k++) {
        buf_init(&got);
        run_stream(max, in, len, k, len, &got, &err_at);
        if (!same(&got, want))
            fail_msg("%s (split at %zu): got\n%s\nwant\n%s", name, k, buf_cstr(&got),
                     buf_cstr(want));
        buf_fini(&got);
    }
    /* one byte at a time: the error shows as soon as the line is known too long */
    buf_init(&got);
    run_stream(max, in, len, 1, 1, &got, &err_at);
    if (!same(&got, want))
        fail_msg("%s (byte at a time): got\n%s\nwant\n%s", name, buf_cstr(&got), buf_cstr(want));
    if (want_err_at && err_at != err_at_one)
        fail_msg("%s (byte at a time): error after %zu bytes, want %zu", name, err_at, err_at_one);
    buf_fini(&got);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct line_case *c = &cases[i];
        struct buf want;
        buf_init(&want);
        expected_outcome(c, &want);
        check_stream(c->name, c->max_line_bytes, (const uint8_t *)c->in.p, c->in.n, &want, c->error,
                     c->err_at);
        buf_fini(&want);
    }
}

/* Many lines in one chunk, mixed endings, then the same stream in every other feeding. */
static void test_many_lines(void **state)
{
    struct buf in, want;
    (void)state;
    buf_init(&in);
    buf_init(&want);
    for (int i = 0; i < 300; i++) {
        char line[32];
        int n = snprintf(line, sizeof line, "{\"n\":%d}", i);
        buf_append(&in, line, (size_t)n);
        buf_append_str(&in, i % 3 == 0 ? "\r\n" : "\n");
        if (i % 50 == 0)
            buf_append_str(&in, "\n"); /* an empty line now and then */
        note_line(&want, (const uint8_t *)line, (size_t)n);
        if (i % 50 == 0)
            note_line(&want, (const uint8_t *)"", 0);
    }
    buf_append_str(&want, "P0\n");
    check_stream("many lines", 16, in.data, in.len, &want, 0, 0);
    buf_fini(&in);
    buf_fini(&want);
}

/* A line far longer than the limit is refused after limit + 1 bytes, long before the
 * newline; nothing past limit + 2 bytes is ever looked at. */
static void test_long_line_rejected_early(void **state)
{
    enum { MAX = 1000, TOTAL = 1 << 20 };
    uint8_t *in = malloc(TOTAL);
    (void)state;
    memset(in, 'x', TOTAL);
    in[TOTAL - 1] = '\n';
    {
        struct buf got;
        size_t err_at;
        buf_init(&got);
        run_stream(MAX, in, TOTAL, 1, 1, &got, &err_at);
        assert_string_equal(buf_cstr(&got), "E\n");
        assert_int_equal(err_at, MAX + 1);
        buf_fini(&got);
        buf_init(&got);
        run_stream(MAX, in, TOTAL, 700, 700, &got, &err_at);
        assert_string_equal(buf_cstr(&got), "E\n");
        assert_int_equal(err_at, 1400);
        buf_fini(&got);
    }
    free(in);
}

/* The decoder reads at most max_line_bytes + 2 bytes of a line, whatever len says: the
 * bytes after those sit on an inaccessible page, so a longer scan faults in any build. */
static void test_scan_is_bounded(void **state)
{
    enum { MAX = 100 };
    long page = sysconf(_SC_PAGESIZE);
    uint8_t *map = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *p = map + page - (MAX + 2); /* the last MAX + 2 readable bytes */
    struct line_decoder d;
    const uint8_t *line;
    size_t line_len, used;
    const char *why = NULL;
    (void)state;

    assert_true(map != MAP_FAILED);
    assert_int_equal(mprotect(map + page, (size_t)page, PROT_NONE), 0);
    memset(p, 'x', MAX + 2);
    line_decoder_init(&d, MAX);
    assert_int_equal(line_decode(&d, p, MAX + 2 + 1000, &line, &line_len, &used, &why),
                     CODEC_ERROR);
    assert_string_equal(why, "line too long");
    p[MAX] = '\r'; /* "x...x\r" + one more byte that is not '\n' */
    assert_int_equal(line_decode(&d, p, MAX + 2 + 1000, &line, &line_len, &used, &why),
                     CODEC_ERROR);
    p[MAX + 1] = '\n'; /* exactly at the limit with "\r\n" */
    assert_int_equal(line_decode(&d, p, MAX + 2 + 1000, &line, &line_len, &used, &why),
                     CODEC_FRAME);
    assert_int_equal(line_len, MAX);
    assert_int_equal(used, MAX + 2);
    munmap(map, (size_t)page * 2);
}

/* Bytes already scanned are not looked at again: the decoder resumes at d->scanned. */
static void test_resumes_where_it_stopped(void **state)
{
    struct line_decoder d;
    uint8_t stream[8] = "abc";
    const uint8_t *line;
    size_t line_len, used;
    const char *why = NULL;
    (void)state;

    line_decoder_init(&d, 64);
    assert_int_equal(line_decode(&d, stream, 3, &line, &line_len, &used, &why), CODEC_NEED_MORE);
    assert_int_equal(d.scanned, 3);
    /* a '\n' planted in the scanned part is not seen: only new bytes are scanned */
    stream[1] = '\n';
    memcpy(stream + 3, "de\n", 3);
    assert_int_equal(line_decode(&d, stream, 6, &line, &line_len, &used, &why), CODEC_FRAME);
    assert_int_equal(line_len, 5);
    assert_int_equal(used, 6);
    assert_int_equal(d.scanned, 0);
    /* the next line starts fresh and finds a newline at once */
    assert_int_equal(line_decode(&d, stream + 1, 1, &line, &line_len, &used, &why), CODEC_FRAME);
    assert_int_equal(line_len, 0);
    assert_int_equal(used, 1);
    /* a shrunken p (a broken contract) is rescanned, not skipped or overread */
    assert_int_equal(line_decode(&d, stream, 3, &line, &line_len, &used, &why), CODEC_FRAME);
    assert_int_equal(line_len, 1);
    assert_int_equal(line_decode(&d, (const uint8_t *)"abcdefgh", 8, &line, &line_len, &used, &why),
                     CODEC_NEED_MORE);
    assert_int_equal(d.scanned, 8);
    assert_int_equal(line_decode(&d, (const uint8_t *)"a\n", 2, &line, &line_len, &used, &why),
                     CODEC_FRAME);
    assert_int_equal(line_len, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_many_lines),
        cmocka_unit_test(test_long_line_rejected_early),
        cmocka_unit_test(test_scan_is_bounded),
        cmocka_unit_test(test_resumes_where_it_stopped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
