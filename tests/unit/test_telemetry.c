/* tests/unit/test_telemetry.c: telemetry JSON -> points (gateway/telemetry.c).
 * A table of payload -> expected points (key, ts, type, value) or expected code and
 * reason. Each payload is decoded from an exact-size heap copy (ASan catches reads past
 * the end), the copy is freed before the points are checked (the points must not point
 * into the input), and every proper prefix of an accepted payload must be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"
#include "gateway/telemetry.h"

#define TS_RULE "ts must be epoch ms (an integer) or an RFC 3339 time (2026-03-29T12:00:00Z)"

#define NOW 1700000000123LL
/* clang-format off */
#define BAD(n, js, maxp, maxk, c, w)                                                       \
    {.name = n, .json = js, .json_len = sizeof(js) - 1, .max_points = maxp,                   \
     .max_key_bytes = maxk, .code = c, .why = w}
#define OK(n, js, maxp, maxk, hs, sq, ...)                                                     \
    {.name = n, .json = js, .json_len = sizeof(js) - 1, .max_points = maxp,                   \
     .max_key_bytes = maxk, .has_seq = hs, .seq = sq, .pts = {__VA_ARGS__}}
#define NUM(k, ts, v) {k, ts, VAL_NUM, v, NULL}
#define BOOL(k, ts, v) {k, ts, VAL_BOOL, v, NULL}
#define STR(k, ts, s) {k, ts, VAL_STR, 0, s}
#define JSON(k, ts, s) {k, ts, VAL_JSON, 0, s}
/* clang-format on */

struct want_point {
    const char *key;
    int64_t ts_ms;
    enum val_type type;
    double num;      /* VAL_NUM, VAL_BOOL */
    const char *str; /* VAL_STR, VAL_JSON */
};

struct telem_case {
    const char *name;
    const char *json;
    size_t json_len;
    size_t max_points;    /* 0: 100 */
    size_t max_key_bytes; /* 0: 128 */
    const char *code;     /* NULL: accepted */
    const char *why;      /* NULL: any reason */
    int has_seq;
    int64_t seq;
    struct want_point pts[6]; /* ends at the first NULL key */
};

static const struct telem_case cases[] = {
    /* shapes */
    OK("plain object", "{\"temp\":21.5,\"on\":true}", 0, 0, 0, 0, NUM("temp", NOW, 21.5),
       BOOL("on", NOW, 1)),
    OK("false is 0", "{\"off\":false}", 0, 0, 0, 0, BOOL("off", NOW, 0)),
    OK("ts and values", "{\"ts\":1700000000000,\"values\":{\"temp\":1,\"hum\":2}}", 0, 0, 0, 0,
       NUM("temp", 1700000000000LL, 1), NUM("hum", 1700000000000LL, 2)),
    OK("values without ts means now", "{\"values\":{\"a\":1}}", 0, 0, 0, 0, NUM("a", NOW, 1)),
    OK("values before ts", "{\"values\":{\"a\":1},\"ts\":5}", 0, 0, 0, 0, NUM("a", 5, 1)),
    OK("array of shapes",
       "[{\"ts\":1,\"values\":{\"a\":1}},{\"b\":\"x\"},{\"values\":{\"c\":[1,2]}}]", 0, 0, 0, 0,
       NUM("a", 1, 1), STR("b", NOW, "x"), JSON("c", NOW, "[1,2]")),
    OK("array keeps each ts", "[{\"ts\":2,\"values\":{\"a\":1}},{\"ts\":1,\"values\":{\"a\":0}}]",
       0, 0, 0, 0, NUM("a", 2, 1), NUM("a", 1, 0)),
    OK("whitespace around", " \t\r\n{ \"a\" : 1 }\r\n", 0, 0, 0, 0, NUM("a", NOW, 1)),
    OK("utf-8 bom", "\xef\xbb\xbf{\"a\":1}", 0, 0, 0, 0, NUM("a", NOW, 1)),
    OK("TS is a value, not ts", "{\"TS\":1,\"Values\":2}", 0, 0, 0, 0, NUM("TS", NOW, 1),
       NUM("Values", NOW, 2)),
    OK("duplicate value keys kept", "{\"a\":1,\"a\":2}", 0, 0, 0, 0, NUM("a", NOW, 1),
       NUM("a", NOW, 2)),
    /* values */
    OK("numbers", "{\"a\":-1.5e3,\"b\":12345678901234,\"c\":0,\"d\":-0.25}", 0, 0, 0, 0,
       NUM("a", NOW, -1500), NUM("b", NOW, 12345678901234.0), NUM("c", NOW, 0),
       NUM("d", NOW, -0.25)),
    OK("nested object as json text",
       "{\"gps\":{ \"lat\":1.5, \"lon\":-2, \"fix\":true, \"name\":\"x y\", \"n\":null }}", 0, 0, 0,
       0, JSON("gps", NOW, "{\"lat\":1.5,\"lon\":-2,\"fix\":true,\"name\":\"x y\",\"n\":null}")),
    OK("empty containers", "{\"o\":{},\"l\":[ ]}", 0, 0, 0, 0, JSON("o", NOW, "{}"),
       JSON("l", NOW, "[]")),
    OK("deep nesting", "{\"d\":[[[[{\"x\":[1]}]]]]}", 0, 0, 0, 0,
       JSON("d", NOW, "[[[[{\"x\":[1]}]]]]")),
    OK("string escapes", "{\"s\":\"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\"}", 0, 0, 0, 0,
       STR("s", NOW, "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80")),
    OK("empty string", "{\"s\":\"\"}", 0, 0, 0, 0, STR("s", NOW, "")),
    OK("escaped backslash then u0000", "{\"s\":\"\\\\u0000\"}", 0, 0, 0, 0,
       STR("s", NOW, "\\u0000")),
    OK("null skipped", "{\"a\":null,\"b\":1,\"c\":null}", 0, 0, 0, 0, NUM("b", NOW, 1)),
    /* seq */
    OK("seq is not a value", "{\"seq\":42,\"temp\":1}", 0, 0, 1, 42, NUM("temp", NOW, 1)),
    OK("seq with ts and values", "{\"seq\":0,\"ts\":5,\"values\":{\"a\":\"s\"}}", 0, 0, 1, 0,
       STR("a", 5, "s")),
    OK("seq inside values is a value", "{\"values\":{\"seq\":3}}", 0, 0, 0, 0, NUM("seq", NOW, 3)),
    OK("largest seq", "{\"seq\":9007199254740991,\"a\":1}", 0, 0, 1, 9007199254740991LL,
       NUM("a", NOW, 1)),
    BAD("negative seq", "{\"seq\":-1,\"a\":1}", 0, 0, "bad_shape",
        "seq must be a non-negative integer"),
    BAD("fractional seq", "{\"seq\":1.5,\"a\":1}", 0, 0, "bad_shape",
        "seq must be a non-negative integer"),
    BAD("string seq", "{\"seq\":\"1\",\"a\":1}", 0, 0, "bad_shape",
        "seq must be a non-negative integer"),
    BAD("null seq", "{\"seq\":null,\"a\":1}", 0, 0, "bad_shape",
        "seq must be a non-negative integer"),
    BAD("huge seq", "{\"seq\":1e300,\"a\":1}", 0, 0, "bad_shape",
        "seq must be a non-negative integer"),
    BAD("duplicate seq", "{\"seq\":1,\"seq\":2,\"a\":1}", 0, 0, "bad_shape", "duplicate seq"),
    BAD("seq inside an array", "[{\"seq\":1,\"a\":1}]", 0, 0, "bad_shape", NULL),
    BAD("only seq", "{\"seq\":7}", 0, 0, "empty", "empty telemetry"),
    /* the batch envelope */
    OK("batch envelope", "{\"seq\":3,\"batch\":[{\"ts\":1,\"values\":{\"a\":1}},{\"b\":2}]}", 0,
       0, 1, 3, NUM("a", 1, 1), NUM("b", NOW, 2)),
    OK("batch before seq", "{\"batch\":[{\"a\":1}],\"seq\":0}", 0, 0, 1, 0, NUM("a", NOW, 1)),
    OK("batch without seq", "{\"batch\":[{\"a\":1}]}", 0, 0, 0, 0, NUM("a", NOW, 1)),
    OK("batch that is not an array is a value", "{\"batch\":\"A7\",\"seq\":1}", 0, 0, 1, 1,
       STR("batch", NOW, "A7")),
    OK("batch inside an array is a value", "[{\"batch\":[1]}]", 0, 0, 0, 0,
       JSON("batch", NOW, "[1]")),
    BAD("other key beside batch", "{\"batch\":[{\"a\":1}],\"b\":2}", 0, 0, "bad_shape",
        "only seq is allowed beside batch"),
    BAD("duplicate batch", "{\"batch\":[{\"a\":1}],\"batch\":[{\"b\":1}]}", 0, 0, "bad_shape",
        "duplicate batch"),
    BAD("duplicate seq beside batch", "{\"seq\":1,\"batch\":[{\"a\":1}],\"seq\":2}", 0, 0,
        "bad_shape", "duplicate seq"),
    BAD("seq inside a batch element", "{\"batch\":[{\"seq\":1,\"a\":1}]}", 0, 0, "bad_shape",
        NULL),
    BAD("batch of non-objects", "{\"batch\":[1]}", 0, 0, "bad_shape",
        "array elements must be objects"),
    BAD("empty batch", "{\"seq\":1,\"batch\":[]}", 0, 0, "empty", "empty telemetry"),
    BAD("batch over the point limit", "{\"batch\":[{\"a\":1,\"b\":2},{\"c\":3,\"d\":4}]}", 3, 0,
        "too_many_values", "too many values"),
    /* ts */
    OK("ts zero", "{\"ts\":0,\"values\":{\"a\":1}}", 0, 0, 0, 0, NUM("a", 0, 1)),
    OK("ts in exponent form", "{\"ts\":1.7e12,\"values\":{\"a\":1}}", 0, 0, 0, 0,
       NUM("a", 1700000000000LL, 1)),
    OK("ts at year 9999", "{\"ts\":253402300799999,\"values\":{\"a\":1}}", 0, 0, 0, 0,
       NUM("a", 253402300799999LL, 1)),
    BAD("ts past year 9999", "{\"ts\":253402300800000,\"values\":{\"a\":1}}", 0, 0, "bad_ts", NULL),
    BAD("negative ts", "{\"ts\":-1,\"values\":{\"a\":1}}", 0, 0, "bad_ts", NULL),
    BAD("fractional ts", "{\"ts\":1.5,\"values\":{\"a\":1}}", 0, 0, "bad_ts",
        TS_RULE),
    BAD("digits in a string ts", "{\"ts\":\"1700000000000\",\"values\":{\"a\":1}}", 0, 0,
        "bad_ts", TS_RULE),
    /* RFC 3339 ts (the same parser as the queries' from/to) */
    OK("RFC 3339 ts", "{\"ts\":\"2023-11-14T22:13:20Z\",\"values\":{\"a\":1}}", 0, 0, 0, 0,
       NUM("a", 1700000000000LL, 1)),
    OK("RFC 3339 ts with ms and offset",
       "{\"ts\":\"2023-11-15T00:13:20.250+02:00\",\"values\":{\"a\":1}}", 0, 0, 0, 0,
       NUM("a", 1700000000250LL, 1)),
    OK("RFC 3339 ts, lower case, space, microseconds cut",
       "{\"ts\":\"2023-11-14 22:13:20.123456z\",\"values\":{\"a\":1}}", 0, 0, 0, 0,
       NUM("a", 1700000000123LL, 1)),
    OK("RFC 3339 ts at the epoch", "[{\"ts\":\"1970-01-01T00:00:00Z\",\"values\":{\"a\":1}}]",
       0, 0, 0, 0, NUM("a", 0, 1)),
    OK("RFC 3339 ts in a batch", "{\"seq\":1,\"batch\":[{\"ts\":\"2023-11-14T22:13:20Z\","
       "\"values\":{\"a\":1}}]}", 0, 0, 1, 1, NUM("a", 1700000000000LL, 1)),
    BAD("RFC 3339 ts without a zone", "{\"ts\":\"2023-11-14T22:13:20\",\"values\":{\"a\":1}}",
        0, 0, "bad_ts", TS_RULE),
    BAD("RFC 3339 ts, month 13", "{\"ts\":\"2023-13-14T22:13:20Z\",\"values\":{\"a\":1}}",
        0, 0, "bad_ts", NULL),
    BAD("RFC 3339 ts, trailing bytes", "{\"ts\":\"2023-11-14T22:13:20Zx\",\"values\":{\"a\":1}}",
        0, 0, "bad_ts", NULL),
    BAD("RFC 3339 ts before 1970", "{\"ts\":\"1969-12-31T23:59:59Z\",\"values\":{\"a\":1}}",
        0, 0, "bad_ts", "ts out of range (1970 to the year 9999)"),
    BAD("a word for ts", "{\"ts\":\"yesterday\",\"values\":{\"a\":1}}", 0, 0, "bad_ts", NULL),
    BAD("null ts", "{\"ts\":null,\"values\":{\"a\":1}}", 0, 0, "bad_ts", NULL),
    BAD("infinite ts", "{\"ts\":1e999,\"values\":{\"a\":1}}", 0, 0, "bad_ts", NULL),
    BAD("bad ts inside an array", "[{\"a\":1},{\"ts\":true,\"values\":{\"a\":1}}]", 0, 0, "bad_ts",
        NULL),
    /* shape errors */
    BAD("ts without values", "{\"ts\":1,\"temp\":2}", 0, 0, "bad_shape", "ts requires values"),
    BAD("values not an object", "{\"ts\":1,\"values\":5}", 0, 0, "bad_shape",
        "values must be an object"),
    BAD("values an array", "{\"values\":[1]}", 0, 0, "bad_shape", "values must be an object"),
    BAD("extra member beside values", "{\"ts\":1,\"values\":{\"a\":1},\"b\":2}", 0, 0, "bad_shape",
        NULL),
    BAD("duplicate ts", "{\"ts\":1,\"ts\":2,\"values\":{\"a\":1}}", 0, 0, "bad_shape",
        "duplicate ts"),
    BAD("duplicate values", "{\"values\":{\"a\":1},\"values\":{\"b\":1}}", 0, 0, "bad_shape",
        "duplicate values"),
    BAD("number at top", "42", 0, 0, "bad_shape", "expected an object or array"),
    BAD("string at top", "\"x\"", 0, 0, "bad_shape", "expected an object or array"),
    BAD("null at top", "null", 0, 0, "bad_shape", "expected an object or array"),
    BAD("nested array", "[[{\"a\":1}]]", 0, 0, "bad_shape", NULL),
    BAD("number in array", "[{\"a\":1},2]", 0, 0, "bad_shape", NULL),
    /* empty */
    BAD("empty object", "{}", 0, 0, "empty", "empty telemetry"),
    BAD("empty array", "[]", 0, 0, "empty", "empty telemetry"),
    BAD("array of empty objects", "[{},{\"values\":{}}]", 0, 0, "empty", "empty telemetry"),
    BAD("only nulls", "{\"a\":null}", 0, 0, "empty", "empty telemetry"),
    BAD("empty values", "{\"ts\":1,\"values\":{}}", 0, 0, "empty", "empty telemetry"),
    /* JSON syntax */
    BAD("no input", "", 0, 0, "bad_json", "invalid JSON"),
    BAD("only whitespace", " \n", 0, 0, "bad_json", NULL),
    BAD("truncated", "{\"a\":1", 0, 0, "bad_json", NULL),
    BAD("trailing garbage", "{\"a\":1}x", 0, 0, "bad_json", NULL),
    BAD("two objects", "{\"a\":1} {\"b\":2}", 0, 0, "bad_json", NULL),
    BAD("trailing comma", "{\"a\":1,}", 0, 0, "bad_json", NULL),
    BAD("single quotes", "{'a':1}", 0, 0, "bad_json", NULL),
    BAD("control byte between tokens", "{\x01\"a\":1}", 0, 0, "bad_json", NULL),
    BAD("nul byte after the value", "{\"a\":1}\0", 0, 0, "bad_json", NULL),
    BAD("nul byte in a string", "{\"a\":\"x\0y\"}", 0, 0, "bad_json", NULL),
    BAD("escaped nul in a string", "{\"a\":\"x\\u0000y\"}", 0, 0, "bad_json", NULL),
    BAD("escaped nul in a key", "{\"a\\u0000b\":1}", 0, 0, "bad_json", NULL),
    BAD("lone surrogate", "{\"a\":\"\\ud800\"}", 0, 0, "bad_json", NULL),
    BAD("infinite number", "{\"a\":1e999}", 0, 0, "bad_json", "number out of range"),
    BAD("infinite nested number", "{\"a\":[1,-1e999]}", 0, 0, "bad_json", "number out of range"),
    BAD("invalid utf-8 string", "{\"a\":\"\xff\"}", 0, 0, "bad_json", "string is not valid UTF-8"),
    BAD("invalid utf-8 nested string", "{\"a\":{\"b\":[\"\xc3\"]}}", 0, 0, "bad_json",
        "string is not valid UTF-8"),
    /* keys */
    OK("unicode keys",
       "{\"temp\xc3\xa9rature\":1,\"\xe6\x97\xa5\xe6\x9c\xac\":2,"
       "\"\xf0\x9f\x98\x80\":3,\"\\u00e9t\\u00e9\":4}",
       0, 0, 0, 0, NUM("temp\xc3\xa9rature", NOW, 1), NUM("\xe6\x97\xa5\xe6\x9c\xac", NOW, 2),
       NUM("\xf0\x9f\x98\x80", NOW, 3), NUM("\xc3\xa9t\xc3\xa9", NOW, 4)),
    OK("key at the limit", "{\"abcd\":1}", 0, 4, 0, 0, NUM("abcd", NOW, 1)),
    BAD("key over the limit", "{\"abcde\":1}", 0, 4, "bad_key", "key too long"),
    BAD("multibyte key over the limit", "{\"\xc3\xa9\xc3\xa9\xc3\xa9\":1}", 0, 5, "bad_key",
        "key too long"),
    BAD("empty key", "{\"\":1}", 0, 0, "bad_key", "empty key"),
    BAD("escaped control in key", "{\"a\\u0001\":1}", 0, 0, "bad_key",
        "key contains a control character"),
    BAD("raw control in key", "{\"a\tb\":1}", 0, 0, "bad_key", "key contains a control character"),
    BAD("unit separator in key", "{\"a\\u001f\":1}", 0, 0, "bad_key",
        "key contains a control character"),
    OK("space and tilde in key", "{\" a~\":1}", 0, 0, 0, 0, NUM(" a~", NOW, 1)),
    OK("U+00A0 in key", "{\"\\u00a0\":1}", 0, 0, 0, 0, NUM("\xc2\xa0", NOW, 1)),
    BAD("del in key", "{\"a\\u007f\":1}", 0, 0, "bad_key", "key contains a control character"),
    BAD("c1 control in key", "{\"\\u0085\":1}", 0, 0, "bad_key",
        "key contains a control character"),
    BAD("invalid utf-8 key", "{\"\xff\":1}", 0, 0, "bad_key", "key is not valid UTF-8"),
    BAD("overlong utf-8 key", "{\"\xc0\xaf\":1}", 0, 0, "bad_key", "key is not valid UTF-8"),
    BAD("surrogate utf-8 key", "{\"\xed\xa0\x80\":1}", 0, 0, "bad_key", "key is not valid UTF-8"),
    BAD("truncated utf-8 key", "{\"a\xe6\x97\":1}", 0, 0, "bad_key", "key is not valid UTF-8"),
    BAD("above U+10FFFF key", "{\"\xf4\x90\x80\x80\":1}", 0, 0, "bad_key",
        "key is not valid UTF-8"),
    BAD("invalid key in values", "{\"values\":{\"\xff\":1}}", 0, 0, "bad_key", NULL),
    BAD("invalid key in a nested value", "{\"a\":{\"\xff\":1}}", 0, 0, "bad_key", NULL),
    OK("bad key on a null value", "{\"\xff\":null,\"a\":1}", 0, 0, 0, 0, NUM("a", NOW, 1)),
    /* limits */
    OK("points at the limit", "{\"a\":1,\"b\":2,\"c\":3}", 3, 0, 0, 0, NUM("a", NOW, 1),
       NUM("b", NOW, 2), NUM("c", NOW, 3)),
    BAD("points over the limit", "{\"a\":1,\"b\":2,\"c\":3,\"d\":4}", 3, 0, "too_many_values",
        "too many values"),
    BAD("points over the limit across an array", "[{\"a\":1,\"b\":2},{\"c\":3,\"d\":4}]", 3, 0,
        "too_many_values", "too many values"),
    OK("nulls do not count", "{\"a\":1,\"b\":null,\"c\":2,\"d\":null,\"e\":3}", 3, 0, 0, 0,
       NUM("a", NOW, 1), NUM("c", NOW, 2), NUM("e", NOW, 3)),
};

static void check_points(const struct telem_case *c, const struct telem *t)
{
    size_t n = 0;

    while (n < 6 && c->pts[n].key)
        n++;
    if (t->npoints != n)
        fail_msg("%s: %zu points, want %zu", c->name, t->npoints, n);
    if (t->has_seq != c->has_seq || (c->has_seq && t->seq != c->seq))
        fail_msg("%s: seq %d/%lld, want %d/%lld", c->name, t->has_seq, (long long)t->seq,
                 c->has_seq, (long long)c->seq);
    assert_non_null(t->arena);
    for (size_t i = 0; i < n; i++) {
        const struct point *p = &t->points[i];
        const struct want_point *w = &c->pts[i];
        if (strcmp(p->key, w->key) != 0 || p->ts_ms != w->ts_ms || p->type != w->type)
            fail_msg("%s: point %zu is %s@%lld type %d, want %s@%lld type %d", c->name, i, p->key,
                     (long long)p->ts_ms, p->type, w->key, (long long)w->ts_ms, w->type);
        if ((w->type == VAL_NUM || w->type == VAL_BOOL) && (p->num != w->num || p->str))
            fail_msg("%s: point %zu value %.17g, want %.17g", c->name, i, p->num, w->num);
        if ((w->type == VAL_STR || w->type == VAL_JSON) &&
            (!p->str || p->str_len != strlen(w->str) || strcmp(p->str, w->str) != 0))
            fail_msg("%s: point %zu value %s, want %s", c->name, i, p->str ? p->str : "(null)",
                     w->str);
    }
}

/* Decodes json[0..len) from an exact-size copy, freed before returning. */
static int decode_copy(const struct telem_limits *lim, const char *json, size_t len,
                       struct telem *t, const char **why, const char **code)
{
    char *copy = malloc(len ? len : 1);
    int rc;

    memcpy(copy, json, len);
    rc = telem_decode(lim, copy, len, NOW, t, why, code);
    memset(copy, '#', len); /* the points must not be views into the input */
    free(copy);
    return rc;
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct telem_case *c = &cases[i];
        struct telem_limits lim = {c->max_points ? c->max_points : 100,
                                   c->max_key_bytes ? c->max_key_bytes : 128};
        struct telem t;
        const char *why = NULL, *code = NULL;
        int rc = decode_copy(&lim, c->json, c->json_len, &t, &why, &code);

        if (c->code) {
            if (rc != -1 || !code || strcmp(code, c->code) != 0)
                fail_msg("%s: rc %d code %s (%s), want %s", c->name, rc, code ? code : "-",
                         why ? why : "-", c->code);
            if (!why || (c->why && strcmp(why, c->why) != 0))
                fail_msg("%s: reason \"%s\", want \"%s\"", c->name, why ? why : "(null)",
                         c->why ? c->why : "any");
            assert_null(t.points);
            assert_null(t.arena);
            assert_int_equal(t.npoints, 0);
            telem_fini(&t); /* safe on a failed decode */
            continue;
        }
        if (rc != 0)
            fail_msg("%s: refused: %s (%s)", c->name, why, code);
        check_points(c, &t);
        telem_fini(&t);
        assert_null(t.points);
        telem_fini(&t); /* and twice */
    }
}

/* Every proper prefix of an accepted object or array is refused as bad JSON (a decoder
 * that reads past len, or accepts half a payload, fails here). */
static void test_prefixes_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct telem_case *c = &cases[i];
        struct telem_limits lim = {c->max_points ? c->max_points : 100,
                                   c->max_key_bytes ? c->max_key_bytes : 128};
        size_t end = c->json_len;
        if (c->code)
            continue;
        while (end > 0 && strchr(" \t\r\n", c->json[end - 1]))
            end--; /* trailing whitespace is optional */
        for (size_t k = 0; k + 1 < end; k++) {
            struct telem t;
            const char *why = NULL, *code = NULL;
            if (decode_copy(&lim, c->json, k, &t, &why, &code) != -1 ||
                strcmp(code, "bad_json") != 0)
                fail_msg("%s: prefix of %zu bytes: code %s", c->name, k, code ? code : "-");
            telem_fini(&t);
        }
    }
}

static void test_default_key_limit(void **state)
{
    struct telem_limits lim = {10, 128};
    char key[130];
    struct buf json;
    struct telem t;
    const char *why = NULL, *code = NULL;
    (void)state;

    memset(key, 'k', sizeof key);
    for (size_t n = 127; n <= 129; n++) {
        buf_init(&json);
        buf_append_str(&json, "{\"");
        buf_append(&json, key, n);
        buf_append_str(&json, "\":1}");
        if (n <= 128) {
            assert_int_equal(decode_copy(&lim, buf_cstr(&json), json.len, &t, &why, &code), 0);
            assert_int_equal(strlen(t.points[0].key), n);
        } else {
            assert_int_equal(decode_copy(&lim, buf_cstr(&json), json.len, &t, &why, &code), -1);
            assert_string_equal(code, "bad_key");
        }
        telem_fini(&t);
        buf_fini(&json);
    }
}

/* A big array: exactly max_points is fine, one more is refused; every point keeps its
 * own key, ts and value. */
static void test_many_points(void **state)
{
    struct telem_limits lim = {1000, 128};
    struct buf json;
    struct telem t;
    const char *why = NULL, *code = NULL;
    (void)state;

    buf_init(&json);
    buf_append_str(&json, "[");
    for (int i = 0; i < 500; i++)
        buf_printf(&json, "%s{\"ts\":%d,\"values\":{\"k%d\":%d,\"s\":\"v%d\"}}", i ? "," : "", i, i,
                   i, i);
    buf_append_str(&json, "]");
    assert_int_equal(decode_copy(&lim, buf_cstr(&json), json.len, &t, &why, &code), 0);
    assert_int_equal(t.npoints, 1000);
    for (size_t i = 0; i < 1000; i += 2) {
        char k[16], v[16];
        snprintf(k, sizeof k, "k%zu", i / 2);
        snprintf(v, sizeof v, "v%zu", i / 2);
        assert_string_equal(t.points[i].key, k);
        assert_int_equal(t.points[i].ts_ms, (int64_t)(i / 2));
        assert_true(t.points[i].num == (double)(i / 2));
        assert_string_equal(t.points[i + 1].key, "s");
        assert_string_equal(t.points[i + 1].str, v);
    }
    telem_fini(&t);
    lim.max_points = 999;
    assert_int_equal(decode_copy(&lim, buf_cstr(&json), json.len, &t, &why, &code), -1);
    assert_string_equal(code, "too_many_values");
    telem_fini(&t);
    buf_fini(&json);
}

/* A refused payload still reports its top-level seq when it parsed and named a valid
 * one, so the device's error reply can carry it. */
static void test_seq_of_refused(void **state)
{
    static const struct {
        const char *json;
        int has_seq;
        int64_t seq;
    } cases[] = {
        {"{\"seq\":4,\"ts\":\"x\",\"values\":{\"a\":1}}", 1, 4},
        {"{\"seq\":5,\"batch\":[1]}", 1, 5},
        {"{\"batch\":[],\"seq\":6}", 1, 6},
        {"{\"seq\":8}", 1, 8},
        {"{\"seq\":-1,\"a\":1}", 0, 0},
        {"{\"seq\":\"9\",\"a\":1}", 0, 0},
        {"{\"seq\":6,\"a\":", 0, 0},
        {"[{\"seq\":7,\"a\":1}]", 0, 0},
    };
    struct telem_limits lim = {100, 128};
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct telem t;
        const char *why = NULL, *code = NULL;
        if (decode_copy(&lim, cases[i].json, strlen(cases[i].json), &t, &why, &code) != -1)
            fail_msg("%s: accepted", cases[i].json);
        if (t.has_seq != cases[i].has_seq || t.seq != cases[i].seq)
            fail_msg("%s: seq %d/%lld, want %d/%lld", cases[i].json, t.has_seq,
                     (long long)t.seq, cases[i].has_seq, (long long)cases[i].seq);
        assert_null(t.points);
        telem_fini(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_prefixes_refused),
        cmocka_unit_test(test_default_key_limit),
        cmocka_unit_test(test_many_points),
        cmocka_unit_test(test_seq_of_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
