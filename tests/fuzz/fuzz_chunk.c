/* tests/fuzz/fuzz_chunk.c: libFuzzer target for the chunk column codec (storage/chunk.c).
 * Input: the first byte picks the test. Even: the rest is a blob for chunk_decode() and
 * chunk_stats(), in an exact-size copy (ASan sees any read past the end); an error needs
 * a reason, a success sane points and a header chunk_stats() accepts. Odd: the rest
 * describes points (per point one control byte: type, ts step width, value form; then
 * the bytes those need), encoded in ts order, decoded, and compared bit for bit, else
 * abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage/chunk.h"

static void decode_blob(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    struct chunk_points cp;
    struct chunk_stats st;
    const char *why = NULL;

    memcpy(copy, data, size);
    if (chunk_decode(copy, size, &cp, &why) == 0) {
        if (cp.npoints == 0 || cp.npoints > CHUNK_MAX_POINTS ||
            chunk_stats(copy, size, &st, &why) != 0 || st.count != cp.npoints)
            abort();
        for (size_t i = 0; i < cp.npoints; i++)
            if ((cp.points[i].type == VAL_STR || cp.points[i].type == VAL_JSON) &&
                cp.points[i].str[cp.points[i].str_len] != '\0')
                abort();
        chunk_points_fini(&cp);
    } else if (!why || cp.points) {
        abort();
    }
    chunk_stats(copy, size, &st, &why);
    free(copy);
}

/* Takes n bytes (fewer at the end) as a little-endian integer. */
static uint64_t take(const uint8_t **p, const uint8_t *end, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n && *p < end; i++)
        v |= (uint64_t)*(*p)++ << (8 * i);
    return v;
}

static void roundtrip(const uint8_t *p, const uint8_t *end)
{
    static const double scale[4] = {1, 10, 100, 1000};
    static const size_t step_bytes[8] = {0, 1, 1, 2, 2, 3, 4, 8};
    struct point *pts = calloc(CHUNK_MAX_POINTS, sizeof *pts);
    struct chunk_enc e;
    struct chunk_points cp;
    struct buf b;
    const char *why = NULL;
    size_t n = 0;
    uint64_t ts = take(&p, end, 8);

    while (p < end && n < CHUNK_MAX_POINTS) {
        unsigned c = *p++;
        struct point *q = &pts[n];
        ts += take(&p, end, step_bytes[(c >> 2) & 7]);
        q->ts_ms = (int64_t)ts;
        q->type = (enum val_type)(c & 3);
        if (q->type == VAL_NUM) {
            if (c & 0x20) {
                uint64_t bits = take(&p, end, 8);
                memcpy(&q->num, &bits, sizeof q->num);
            } else {
                q->num = (double)(int16_t)take(&p, end, 2) / scale[c >> 6];
            }
        } else if (q->type == VAL_BOOL) {
            q->num = (c >> 5) & 1;
        } else {
            q->str_len = (size_t)(end - p) < (c >> 5) ? (size_t)(end - p) : (c >> 5);
            q->str = (const char *)p;
            p += q->str_len;
        }
        if (n > 0 && q->ts_ms < pts[n - 1].ts_ms)
            q->ts_ms = pts[n - 1].ts_ms; /* ts wrapped: keep the order the encoder wants */
        n++;
    }
    if (n == 0)
        goto out;
    chunk_enc_init(&e);
    buf_init(&b);
    for (size_t i = 0; i < n; i++)
        if (chunk_enc_add(&e, &pts[i]) != 0)
            abort();
    if (chunk_enc_finish(&e, &b) != 0 || chunk_decode(b.data, b.len, &cp, &why) != 0 ||
        cp.npoints != n)
        abort();
    for (size_t i = 0; i < n; i++) {
        const struct point *a = &pts[i], *d = &cp.points[i];
        if (a->ts_ms != d->ts_ms || a->type != d->type)
            abort();
        if (a->type == VAL_NUM || a->type == VAL_BOOL) {
            if (memcmp(&a->num, &d->num, sizeof a->num) != 0)
                abort();
        } else if (a->str_len != d->str_len || memcmp(a->str, d->str, a->str_len) != 0 ||
                   d->str[d->str_len] != '\0') {
            abort();
        }
    }
    chunk_points_fini(&cp);
    buf_fini(&b);
    chunk_enc_fini(&e);
out:
    free(pts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        roundtrip(data + 1, data + size);
    else
        decode_blob(data + 1, size - 1);
    return 0;
}
