/* storage/hot.c: the points acked but not yet chunked, held per series in memory.
 *
 * The writer adds every committed point here (writer.c, after its segment commits)
 * and removes a series once its points are in chunks (chunker.c); queries copy the
 * range they need (query.c). The writer changes this state only with s->hot_lock held,
 * so readers holding the lock see it whole; the writer itself reads without the lock.
 * Series are found by id in a table indexed by the id (ids are SQLite rowids: small
 * and dense). A series' points stay sorted by ts with one point per ts: a device
 * writes in order, so adding is an append; a late point is inserted in place, and a
 * point of an existing ts replaces it (the later write wins). */
#include <string.h>

#include "base/alloc.h"
#include "storage/store_int.h"

struct hot_series *hot_get(const struct hot *h, int64_t sid)
{
    return sid > 0 && (size_t)sid < h->cap ? h->tab[sid] : NULL;
}

size_t hot_lower_bound(const struct hot_series *hs, int64_t ts)
{
    size_t lo = 0, hi = hs->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (hs->pts[mid].ts < ts)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void hot_point_get(const struct hot_series *hs, size_t i, struct point *p)
{
    const struct hot_point *hp = &hs->pts[i];

    memset(p, 0, sizeof *p);
    p->ts_ms = hp->ts;
    p->type = (enum val_type)hp->type;
    if (hp->type == VAL_STR || hp->type == VAL_JSON) {
        p->str = (const char *)hs->strs.data + hp->v.text.off;
        p->str_len = hp->v.text.len;
        if (!p->str)
            p->str = "";
    } else {
        p->num = hp->v.num;
    }
}

static struct hot_series *series_for(struct hot *h, int64_t sid)
{
    struct hot_series *hs;

    if ((size_t)sid >= h->cap) {
        size_t cap = h->cap ? h->cap : 1024;
        while (cap <= (size_t)sid)
            cap *= 2;
        h->tab = xrealloc(h->tab, cap * sizeof *h->tab);
        memset(h->tab + h->cap, 0, (cap - h->cap) * sizeof *h->tab);
        h->cap = cap;
    }
    hs = h->tab[sid];
    if (!hs) {
        hs = xcalloc(1, sizeof *hs);
        hs->sid = sid;
        h->tab[sid] = hs;
    }
    return hs;
}

static void set_value(struct hot *h, struct hot_series *hs, struct hot_point *hp,
                      const struct point *p)
{
    hp->ts = p->ts_ms;
    hp->type = (uint8_t)p->type;
    if (p->type == VAL_STR || p->type == VAL_JSON) {
        hp->v.text.off = (uint32_t)hs->strs.len;
        hp->v.text.len = (uint32_t)p->str_len;
        buf_append(&hs->strs, p->str, p->str_len);
        h->nbytes += p->str_len;
    } else {
        hp->v.num = p->num;
    }
}

void hot_add(struct hot *h, int64_t sid, int64_t seg, const struct point *p)
{
    struct hot_series *hs = series_for(h, sid);
    size_t i = hs->n;

    if (hs->n > 0 && p->ts_ms <= hs->pts[hs->n - 1].ts) {
        i = hot_lower_bound(hs, p->ts_ms);
        if (hs->pts[i].ts == p->ts_ms) { /* a rewrite: the later one wins */
            set_value(h, hs, &hs->pts[i], p);
            return;
        }
    }
    if (hs->n == hs->cap) {
        hs->cap = hs->cap ? 2 * hs->cap : 64;
        hs->pts = xrealloc(hs->pts, hs->cap * sizeof *hs->pts);
    }
    memmove(hs->pts + i + 1, hs->pts + i, (hs->n - i) * sizeof *hs->pts);
    set_value(h, hs, &hs->pts[i], p);
    if (hs->n++ == 0) {
        hs->first_seg = seg; /* segments only grow: the list stays in first_seg order */
        list_push_back(&h->by_age, &hs->age);
    }
    h->npoints++;
    h->nbytes += sizeof *hs->pts;
    if (hs->n >= STORE_CHUNK_POINTS && !hs->in_ready && !hs->flushing) {
        hs->in_ready = 1;
        list_push_back(&h->ready, &hs->ready);
    }
}

void hot_drop(struct hot *h, int64_t sid)
{
    struct hot_series *hs = hot_get(h, sid);

    if (!hs)
        return;
    if (hs->n > 0)
        list_remove(&h->by_age, &hs->age);
    if (hs->in_ready)
        list_remove(&h->ready, &hs->ready);
    h->npoints -= hs->n;
    h->nbytes -= hs->n * sizeof *hs->pts + hs->strs.len;
    free(hs->pts);
    buf_fini(&hs->strs);
    free(hs);
    h->tab[sid] = NULL;
}

void hot_fini(struct hot *h)
{
    for (size_t i = 0; i < h->cap; i++) {
        if (h->tab[i]) {
            free(h->tab[i]->pts);
            buf_fini(&h->tab[i]->strs);
            free(h->tab[i]);
        }
    }
    free(h->tab);
    memset(h, 0, sizeof *h);
}
