/* gateway/telemetry.c: decodes a telemetry JSON payload into points, once per message.
 * Data flow: bytes -> lexical pre-check (NUL, stray control bytes) -> cJSON tree ->
 * pass 1 validates the shape, ts, seq, keys and values, and counts points and arena bytes
 * -> pass 2 fills the points array (keys and strings still pointing into the tree;
 * object/array values printed as compact JSON) -> keys and strings are copied into one
 * arena allocation and the tree is freed. Pure: no I/O, no clock, no globals; called on
 * the loop thread (or any thread: it shares nothing).
 * Rules beyond telemetry.h: "ts" is an integer (integer-valued doubles such as 1.7e12
 * count) or an RFC 3339 string ("2026-03-29T12:00:00.250Z", gw_parse_rfc3339), either in
 * 0..253402300799999 ms (1970 to the end of year 9999); "seq" an integer in 0..2^53-1, allowed
 * only at the top of a single object or of a batch envelope (inside an array it is
 * refused, not taken as a value); beside "values" only "ts" and "seq" may appear, beside
 * a top-level "batch" array only "seq"; "ts", "values", "seq" and "batch" are matched
 * case-sensitively and must not repeat, while repeated value keys are all kept, in order.
 * A top-level "batch" that is not an array is an ordinary value.
 * Numbers must be finite (1e999 is refused); strings, keys and nested JSON must be valid
 * UTF-8 without NUL (raw or \u0000: strings are NUL-terminated downstream); keys hold no
 * C0, DEL or C1 control characters. A payload whose values are all null is "empty".
 * Every error path frees what it took (the tree; points are allocated only after pass 1
 * has accepted the whole payload, and pass 2 cannot fail). */
#include "gateway/telemetry.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "base/alloc.h"
#include "base/clock.h"

#define TS_MAX_MS 253402300799999.0 /* 9999-12-31T23:59:59.999Z in epoch ms */
#define TS_RULE "ts must be epoch ms (an integer) or an RFC 3339 time (2026-03-29T12:00:00Z)"
#define SEQ_MAX 9007199254740991.0  /* 2^53 - 1: the largest integer a double holds exactly */

/* State shared by both passes over the tree. */
struct walk {
    const struct telem_limits *lim;
    int64_t now_ms;       /* ts of values without their own ts */
    struct point *points; /* NULL in pass 1 (validate, count); filled in pass 2 */
    size_t npoints;       /* points counted (pass 1) or filled (pass 2) */
    size_t arena_bytes;   /* pass 1: keys and string values, NULs included */
    int has_seq;          /* a top-level "seq" was present */
    int64_t seq;          /* its value */
    const char *why;      /* static reason of the first error */
    const char *code;     /* its machine code */
};

static int fail(struct walk *w, const char *why, const char *code)
{
    w->why = why;
    w->code = code;
    return -1;
}

/* Decodes one UTF-8 sequence at s[*i] (strict: no overlongs, no surrogates, at most
 * U+10FFFF). Returns the code point and advances *i, or returns -1. */
static long next_codepoint(const unsigned char *s, size_t len, size_t *i)
{
    unsigned char c = s[*i];
    size_t n, k;
    long cp, min;

    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (len - *i <= n)
        return -1;
    for (k = 1; k <= n; k++) {
        unsigned char cc = s[*i + k];
        if ((cc & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *i += n + 1;
    return cp;
}

static int valid_utf8(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len)
        if (next_codepoint((const unsigned char *)s, len, &i) < 0)
            return 0;
    return 1;
}

/* Rejects what cJSON lets through but Gale cannot keep: a NUL byte anywhere or a
 * \u0000 escape in a string (strings are NUL-terminated downstream, so they would be cut
 * short silently), and control bytes between tokens (cJSON skips them as whitespace).
 * Raw control bytes inside strings are tolerated, as cJSON does; keys are checked later. */
static const char *scan_text(const char *s, size_t len)
{
    int in_str = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0)
            return "NUL byte in JSON";
        if (in_str) {
            if (c == '"') {
                in_str = 0;
            } else if (c == '\\') {
                if (len - i > 5 && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
                    return "\\u0000 in a string";
                i++; /* the escaped byte cannot end the string */
            }
        } else if (c == '"') {
            in_str = 1;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            return "invalid JSON";
        }
    }
    return NULL;
}

static int check_key(struct walk *w, const char *key, size_t *len_out)
{
    size_t len = strlen(key), i = 0;

    if (len == 0)
        return fail(w, "empty key", "bad_key");
    if (len > w->lim->max_key_bytes)
        return fail(w, "key too long", "bad_key");
    while (i < len) {
        long cp = next_codepoint((const unsigned char *)key, len, &i);
        if (cp < 0)
            return fail(w, "key is not valid UTF-8", "bad_key");
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) /* C0, DEL, C1 */
            return fail(w, "key contains a control character", "bad_key");
    }
    *len_out = len;
    return 0;
}

/* A value that is an object or array: every number finite, every key and string valid
 * UTF-8. Depth is bounded by cJSON's nesting limit (CJSON_NESTING_LIMIT). */
static int check_nested(struct walk *w, const cJSON *item)
{
    const cJSON *c;

    if (item->string && !valid_utf8(item->string, strlen(item->string)))
        return fail(w, "key is not valid UTF-8", "bad_key");
    if (cJSON_IsNumber(item) && !isfinite(item->valuedouble))
        return fail(w, "number out of range", "bad_json");
    if (cJSON_IsString(item) && !valid_utf8(item->valuestring, strlen(item->valuestring)))
        return fail(w, "string is not valid UTF-8", "bad_json");
    for (c = item->child; c; c = c->next)
        if (check_nested(w, c) != 0)
            return -1;
    return 0;
}

/* One member of a values object (or of a plain-shape object): validate and count in
 * pass 1, fill a point in pass 2. null is skipped. */
static int add_value(struct walk *w, const cJSON *item, int64_t ts_ms)
{
    struct point *pt;
    size_t klen = 0;

    if (cJSON_IsNull(item))
        return 0;
    if (!w->points) {
        if (check_key(w, item->string, &klen) != 0)
            return -1;
        if (w->npoints >= w->lim->max_points)
            return fail(w, "too many values", "too_many_values");
        if (cJSON_IsNumber(item)) {
            if (!isfinite(item->valuedouble))
                return fail(w, "number out of range", "bad_json");
        } else if (cJSON_IsString(item)) {
            size_t slen = strlen(item->valuestring);
            if (!valid_utf8(item->valuestring, slen))
                return fail(w, "string is not valid UTF-8", "bad_json");
            w->arena_bytes += slen + 1;
        } else if (cJSON_IsObject(item) || cJSON_IsArray(item)) {
            if (check_nested(w, item) != 0)
                return -1;
        } else if (!cJSON_IsBool(item)) {
            return fail(w, "invalid JSON", "bad_json"); /* cJSON_Raw/Invalid: not produced */
        }
        w->arena_bytes += klen + 1;
        w->npoints++;
        return 0;
    }
    pt = &w->points[w->npoints++];
    pt->ts_ms = ts_ms;
    pt->key = item->string; /* moved into the arena once every size is known */
    if (cJSON_IsNumber(item)) {
        pt->type = VAL_NUM;
        pt->num = item->valuedouble;
    } else if (cJSON_IsBool(item)) {
        pt->type = VAL_BOOL;
        pt->num = cJSON_IsTrue(item) ? 1 : 0;
    } else if (cJSON_IsString(item)) {
        pt->type = VAL_STR;
        pt->str = item->valuestring;
        pt->str_len = strlen(item->valuestring);
    } else {
        char *text = cJSON_PrintUnformatted(item); /* freed when copied into the arena */
        if (!text) {
            log_error("telemetry: out of memory printing a JSON value");
            abort(); /* as xmalloc does: memory is bounded by limits, not NULL checks */
        }
        pt->type = VAL_JSON;
        pt->str = text;
        pt->str_len = strlen(text);
    }
    return 0;
}

static int parse_ts(struct walk *w, const cJSON *ts, int64_t *ts_ms)
{
    double d;

    if (cJSON_IsString(ts)) {
        int64_t ms;
        if (!gw_parse_rfc3339(ts->valuestring, &ms))
            return fail(w, TS_RULE, "bad_ts");
        d = (double)ms;
    } else if (!cJSON_IsNumber(ts)) {
        return fail(w, TS_RULE, "bad_ts");
    } else {
        d = ts->valuedouble;
    }
    if (!isfinite(d) || floor(d) != d)
        return fail(w, TS_RULE, "bad_ts");
    if (d < 0 || d > TS_MAX_MS)
        return fail(w, "ts out of range (1970 to the year 9999)", "bad_ts");
    *ts_ms = (int64_t)d;
    return 0;
}

static int parse_seq(struct walk *w, const cJSON *seq)
{
    double d = seq->valuedouble;

    if (!cJSON_IsNumber(seq) || !isfinite(d) || floor(d) != d || d < 0 || d > SEQ_MAX)
        return fail(w, "seq must be a non-negative integer", "bad_shape");
    w->has_seq = 1;
    w->seq = (int64_t)d;
    return 0;
}

/* One object: {"ts":..,"values":{..}} / {"values":{..}} / {"k":v,..}; "seq" allowed only
 * when top is set (the payload is this single object). */
static int walk_object(struct walk *w, const cJSON *obj, int top)
{
    const cJSON *m, *ts = NULL, *values = NULL, *seq = NULL;
    int64_t ts_ms = w->now_ms;
    size_t others = 0;

    for (m = obj->child; m; m = m->next) {
        if (strcmp(m->string, "ts") == 0) {
            if (ts)
                return fail(w, "duplicate ts", "bad_shape");
            ts = m;
        } else if (strcmp(m->string, "values") == 0) {
            if (values)
                return fail(w, "duplicate values", "bad_shape");
            values = m;
        } else if (strcmp(m->string, "seq") == 0) {
            if (!top)
                return fail(w, "seq is not allowed inside an array: send "
                               "{\"seq\":N,\"batch\":[...]}",
                            "bad_shape");
            if (seq)
                return fail(w, "duplicate seq", "bad_shape");
            seq = m;
        } else {
            others++;
        }
    }
    if (seq && !w->points && parse_seq(w, seq) != 0)
        return -1;
    if (!values) {
        if (ts)
            return fail(w, "ts requires values", "bad_shape");
        for (m = obj->child; m; m = m->next)
            if (m != seq && add_value(w, m, ts_ms) != 0)
                return -1;
        return 0;
    }
    if (!cJSON_IsObject(values))
        return fail(w, "values must be an object", "bad_shape");
    if (others)
        return fail(w, "only ts, values and seq are allowed beside values", "bad_shape");
    if (ts && parse_ts(w, ts, &ts_ms) != 0)
        return -1;
    for (m = values->child; m; m = m->next)
        if (add_value(w, m, ts_ms) != 0)
            return -1;
    return 0;
}

static int walk_array(struct walk *w, const cJSON *arr)
{
    const cJSON *el;

    for (el = arr->child; el; el = el->next) {
        if (!cJSON_IsObject(el))
            return fail(w, "array elements must be objects", "bad_shape");
        if (walk_object(w, el, 0) != 0)
            return -1;
    }
    return 0;
}

/* The batch envelope {"seq":N,"batch":[...]}: an array that carries one seq. Only "seq"
 * may appear beside "batch"; the elements follow the array rules. */
static int walk_batch(struct walk *w, const cJSON *obj, const cJSON *batch)
{
    const cJSON *m, *seq = NULL;

    for (m = obj->child; m; m = m->next) {
        if (m == batch)
            continue;
        if (strcmp(m->string, "batch") == 0)
            return fail(w, "duplicate batch", "bad_shape");
        if (strcmp(m->string, "seq") != 0)
            return fail(w, "only seq is allowed beside batch", "bad_shape");
        if (seq)
            return fail(w, "duplicate seq", "bad_shape");
        seq = m;
    }
    if (seq && !w->points && parse_seq(w, seq) != 0)
        return -1;
    return walk_array(w, batch);
}

static int walk_payload(struct walk *w, const cJSON *root)
{
    const cJSON *batch;

    if (cJSON_IsArray(root))
        return walk_array(w, root);
    if (!cJSON_IsObject(root))
        return fail(w, "expected an object or array", "bad_shape");
    batch = cJSON_GetObjectItemCaseSensitive(root, "batch");
    if (cJSON_IsArray(batch))
        return walk_batch(w, root, batch);
    return walk_object(w, root, 1);
}

/* The top-level seq of a payload that failed to decode, so the error can name it. */
static void peek_seq(const cJSON *root, struct telem *out)
{
    const cJSON *seq = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "seq") : NULL;
    struct walk w = {0};

    if (seq && parse_seq(&w, seq) == 0) {
        out->has_seq = 1;
        out->seq = w.seq;
    }
}

/* Pass 2 left keys and strings pointing into the tree (and JSON values in cJSON's
 * printed copies): move them all into one arena of the size now known. */
static char *pack_arena(struct point *pts, size_t n, size_t bytes)
{
    char *arena, *p;

    for (size_t i = 0; i < n; i++)
        if (pts[i].type == VAL_JSON)
            bytes += pts[i].str_len + 1;
    arena = p = xmalloc(bytes);
    for (size_t i = 0; i < n; i++) {
        size_t klen = strlen(pts[i].key);
        memcpy(p, pts[i].key, klen + 1);
        pts[i].key = p;
        p += klen + 1;
        if (pts[i].type == VAL_STR || pts[i].type == VAL_JSON) {
            memcpy(p, pts[i].str, pts[i].str_len + 1);
            if (pts[i].type == VAL_JSON)
                cJSON_free((void *)pts[i].str);
            pts[i].str = p;
            p += pts[i].str_len + 1;
        }
    }
    if ((size_t)(p - arena) != bytes)
        abort(); /* our own size computation disagrees with itself */
    return arena;
}

int telem_decode(const struct telem_limits *lim, const char *json, size_t len, int64_t now_ms,
                 struct telem *out, const char **why, const char **code)
{
    struct walk w = {.lim = lim, .now_ms = now_ms};
    const char *end = NULL, *bad;
    cJSON *root = NULL;
    size_t counted;

    memset(out, 0, sizeof *out);
    if (!json || len == 0) {
        fail(&w, "invalid JSON", "bad_json");
        goto fail;
    }
    if ((bad = scan_text(json, len)) != NULL) {
        fail(&w, bad, "bad_json");
        goto fail;
    }
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        fail(&w, "invalid JSON", "bad_json");
        goto fail;
    }
    for (; end < json + len; end++) /* cJSON stops after the value: only whitespace may follow */
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            fail(&w, "invalid JSON (data after the value)", "bad_json");
            goto fail;
        }
    if (walk_payload(&w, root) != 0)
        goto fail;
    if (w.npoints == 0) {
        fail(&w, "empty telemetry", "empty");
        goto fail;
    }
    counted = w.npoints;
    w.points = xcalloc(counted, sizeof *w.points);
    w.npoints = 0;
    if (walk_payload(&w, root) != 0 || w.npoints != counted)
        abort(); /* pass 2 revisits what pass 1 accepted */
    out->arena = pack_arena(w.points, counted, w.arena_bytes);
    out->points = w.points;
    out->npoints = counted;
    out->has_seq = w.has_seq;
    out->seq = w.seq;
    cJSON_Delete(root);
    return 0;
fail:
    peek_seq(root, out);
    cJSON_Delete(root);
    if (why)
        *why = w.why;
    if (code)
        *code = w.code;
    return -1;
}

void telem_fini(struct telem *t)
{
    free(t->points);
    free(t->arena);
    memset(t, 0, sizeof *t);
}
