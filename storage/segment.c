/* storage/segment.c: the binary form of one group commit's points (segment.h). */
#include "storage/segment.h"

#include <string.h>

#include "base/err.h"
#include "storage/varint.h"

static int get_varint(struct segment_reader *r, uint64_t *out)
{
    size_t pos = 0;

    if (varint_get(r->p, (size_t)(r->end - r->p), &pos, out) != 0)
        return -1;
    r->p += pos;
    return 0;
}

void segment_enc_start(struct segment_enc *e, struct buf *out)
{
    uint8_t v = SEGMENT_VERSION;

    e->out = out;
    e->prev_ts = 0;
    e->npoints = 0;
    out->len = 0;
    buf_append(out, &v, 1);
}

void segment_enc_add(struct segment_enc *e, int64_t sid, const struct point *p)
{
    /* the difference in uint64_t wraps, so any two int64 timestamps have one */
    uint64_t d = (uint64_t)p->ts_ms - (uint64_t)e->prev_ts;
    uint8_t type = (uint8_t)p->type, tail[8];

    varint_put(e->out, (uint64_t)sid);
    varint_put(e->out, zigzag(d));
    buf_append(e->out, &type, 1);
    switch (p->type) {
    case VAL_NUM: {
        uint64_t bits;
        memcpy(&bits, &p->num, sizeof bits);
        for (int i = 0; i < 8; i++)
            tail[i] = (uint8_t)(bits >> (8 * i));
        buf_append(e->out, tail, 8);
        break;
    }
    case VAL_BOOL:
        tail[0] = p->num != 0;
        buf_append(e->out, tail, 1);
        break;
    case VAL_STR:
    case VAL_JSON:
        varint_put(e->out, p->str_len);
        buf_append(e->out, p->str, p->str_len);
        break;
    }
    e->prev_ts = p->ts_ms;
    e->npoints++;
}

int segment_read_start(struct segment_reader *r, const uint8_t *blob, size_t len,
                       const char **why)
{
    if (len == 0 || blob[0] != SEGMENT_VERSION) {
        *why = len == 0 ? "empty segment" : "unknown segment version";
        return GW_EINVAL;
    }
    r->p = blob + 1;
    r->end = blob + len;
    r->prev_ts = 0;
    return 0;
}

int segment_read_next(struct segment_reader *r, int64_t *sid, struct point *p,
                      const char **why)
{
    uint64_t id, z, len;

    if (r->p == r->end)
        return 0;
    memset(p, 0, sizeof *p);
    if (get_varint(r, &id) != 0 || get_varint(r, &z) != 0 || r->p == r->end) {
        *why = "truncated point";
        return GW_EINVAL;
    }
    if (id == 0 || id > (uint64_t)INT64_MAX) {
        *why = "bad series id";
        return GW_EINVAL;
    }
    *sid = (int64_t)id;
    p->ts_ms = (int64_t)((uint64_t)r->prev_ts + unzigzag(z));
    r->prev_ts = p->ts_ms;
    switch (*r->p++) {
    case VAL_NUM: {
        uint64_t bits = 0;
        if (r->end - r->p < 8) {
            *why = "truncated number";
            return GW_EINVAL;
        }
        for (int i = 7; i >= 0; i--)
            bits = (bits << 8) | r->p[i];
        r->p += 8;
        memcpy(&p->num, &bits, sizeof bits);
        p->type = VAL_NUM;
        return 1;
    }
    case VAL_BOOL:
        if (r->p == r->end || *r->p > 1) {
            *why = r->p == r->end ? "truncated bool" : "bad bool";
            return GW_EINVAL;
        }
        p->type = VAL_BOOL;
        p->num = *r->p++;
        return 1;
    case VAL_STR:
    case VAL_JSON:
        p->type = (enum val_type)r->p[-1];
        if (get_varint(r, &len) != 0 || len > (uint64_t)(r->end - r->p)) {
            *why = "truncated text";
            return GW_EINVAL;
        }
        p->str = (const char *)r->p;
        p->str_len = (size_t)len;
        r->p += len;
        return 1;
    default:
        *why = "unknown value type";
        return GW_EINVAL;
    }
}
