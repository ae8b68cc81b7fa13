/* tests/fuzz/fuzz_segment.c: libFuzzer target for the segment form (storage/segment.c),
 * which start-up replays from disk. Input: the first byte picks the test. Even: the rest
 * is a segment blob, read in an exact-size copy (ASan sees any read past the end); every
 * point read must be sane and an error must carry a reason. Odd: the rest describes
 * points (per point: a control byte for type and widths, then the bytes those need),
 * which are encoded, read back and compared bit for bit, else abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "storage/segment.h"

static void read_blob(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    struct segment_reader r;
    const char *why = NULL;
    struct point p;
    int64_t sid;
    int rc;

    memcpy(copy, data, size);
    if (segment_read_start(&r, copy, size, &why) != 0) {
        if (!why)
            abort();
        free(copy);
        return;
    }
    while ((rc = segment_read_next(&r, &sid, &p, &why)) == 1) {
        if (sid <= 0 || (unsigned)p.type > VAL_JSON)
            abort();
        if ((p.type == VAL_STR || p.type == VAL_JSON) &&
            (const uint8_t *)p.str + p.str_len > copy + size)
            abort();
        if (p.type == VAL_BOOL && p.num != 0 && p.num != 1)
            abort();
    }
    if (rc != 0 && !why)
        abort();
    free(copy);
}

static uint64_t take(const uint8_t **p, const uint8_t *end, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n && *p < end; i++)
        v |= (uint64_t)*(*p)++ << (8 * i);
    return v;
}

#define MAXP 512

static void round_trip(const uint8_t *p, const uint8_t *end)
{
    struct point pts[MAXP];
    int64_t sids[MAXP];
    size_t n = 0;
    struct buf b;
    struct segment_enc e;
    struct segment_reader r;
    const char *why = NULL;

    while (p < end && n < MAXP) {
        uint8_t ctl = *p++;
        struct point *q = &pts[n];
        uint64_t bits;

        memset(q, 0, sizeof *q);
        q->type = (enum val_type)(ctl & 3);
        sids[n] = (int64_t)(take(&p, end, 1 + ((ctl >> 2) & 7)) & INT64_MAX);
        if (sids[n] == 0)
            sids[n] = 1;
        q->ts_ms = (int64_t)take(&p, end, 1 + ((ctl >> 5) & 7));
        switch (q->type) {
        case VAL_NUM:
            bits = take(&p, end, 8);
            memcpy(&q->num, &bits, sizeof bits);
            break;
        case VAL_BOOL:
            q->num = take(&p, end, 1) & 1;
            break;
        default:
            q->str_len = (size_t)take(&p, end, 1) % 64;
            if (q->str_len > (size_t)(end - p))
                q->str_len = (size_t)(end - p);
            q->str = (const char *)p;
            p += q->str_len;
        }
        n++;
    }
    buf_init(&b);
    segment_enc_start(&e, &b);
    for (size_t i = 0; i < n; i++)
        segment_enc_add(&e, sids[i], &pts[i]);
    if (e.npoints != n || segment_read_start(&r, b.data, b.len, &why) != 0)
        abort();
    for (size_t i = 0; i < n; i++) {
        struct point got;
        int64_t sid;

        if (segment_read_next(&r, &sid, &got, &why) != 1 || sid != sids[i] ||
            got.ts_ms != pts[i].ts_ms || got.type != pts[i].type)
            abort();
        if (got.type == VAL_NUM || got.type == VAL_BOOL) {
            if (memcmp(&got.num, &pts[i].num, sizeof got.num) != 0)
                abort();
        } else if (got.str_len != pts[i].str_len ||
                   (got.str_len && memcmp(got.str, pts[i].str, got.str_len) != 0)) {
            abort();
        }
    }
    if (segment_read_next(&r, &sids[0], &pts[0], &why) != 0)
        abort();
    buf_fini(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        round_trip(data + 1, data + size);
    else
        read_blob(data + 1, size - 1);
    return 0;
}
