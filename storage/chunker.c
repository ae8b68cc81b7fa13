/* storage/chunker.c: moving acked points from the segment log into per-series chunks,
 * off the ack path, in bounded slices; retention; the replay of the log on start.
 *
 * Writer thread. A slice is one transaction: it takes series from the hot points
 * (hot.c) while its writer time stays under STORE_SLICE_US, and for each one
 *   - reads the chunks that hold a ts of one of its points (walking down from its newest
 *     ts) and the one just below them when that one is smaller than STORE_CHUNK_MIN;
 *     chunks in between that hold none stay as they are, and the new chunks are cut
 *     around them (a late point rewrites its own chunk, not the history since),
 *   - merges their points with the hot ones (the hot point wins a tie: it is newer),
 *   - replaces those chunks with the merged points cut into chunks of about
 *     STORE_CHUNK_POINTS (never overlapping: the chunks of a series are disjoint in ts),
 *   - records in series.flushed_seg that its points in every segment so far are chunked;
 * then deletes the segments below the oldest segment any remaining hot point needs,
 * and (when due) a bounded number of expired chunks. Only after COMMIT are the series
 * dropped from the hot points, so a query always finds a point in one or the other.
 * A slice also stops after STORE_SLICE_MAX_POINTS points, whatever the clock says.
 * Which series: first those holding STORE_CHUNK_POINTS points (full chunks), then,
 * while the hot points or the log are past their bounds (or a forced chunking runs),
 * the series holding the oldest segment, which also frees segments.
 *
 * Replay (start-up): every point of the remaining segments newer than its series'
 * flushed_seg goes back into the hot points, in segment order, so a later write of a
 * (series, ts) still wins. Segments of deleted series are skipped (no series row). */
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/log.h"
#include "storage/chunk.h"
#include "storage/segment.h"
#include "storage/store_int.h"

/* ---- bounds ---- */

static int64_t retention_cutoff(const struct store *s)
{
    if (s->cfg.retention_days == 0)
        return INT64_MIN;
    return gw_now_ms() - (int64_t)s->cfg.retention_days * 86400000;
}

static int over_bound(const struct store *s, size_t mult)
{
    size_t max = s->cfg.hot_max_points;

    return s->hot.npoints > mult * max ||
           s->hot.nbytes > mult * max * STORE_HOT_BYTES_PER_POINT ||
           (size_t)s->log_points > 2 * mult * max;
}

static int retention_due(const struct store *s)
{
    return s->cfg.retention_days > 0 &&
           (s->ret_behind || gw_mono_ms() - s->ret_last_ms >= STORE_RETENTION_PERIOD_MS);
}

static int backing_off(const struct store *s)
{
    return s->chunk_retry_ms > 0 && gw_mono_ms() < s->chunk_retry_ms;
}

int store_chunk_due(const struct store *s)
{
    if (backing_off(s) || s->full) /* full: the writer's probes find out when space is back */
        return 0;
    return s->hot.ready.head || (s->force_chunk && s->hot.by_age.head) || over_bound(s, 1) ||
           retention_due(s);
}

int store_chunk_overdue(const struct store *s)
{
    return !backing_off(s) && !s->full && over_bound(s, 2);
}

/* ---- one series ---- */

/* The chunks a flush replaces, decoded (ascending ts once collected). */
struct old_chunks {
    struct chunk_points *cp;
    int64_t *ids;
    size_t n, cap;
    /* chunks inside the hot points' span that hold none of their ts: they stay, and the
     * new chunks are cut so as not to overlap them (ascending once collected) */
    int64_t (*kept)[2];             /* [start_ts, end_ts] */
    size_t nkept, kept_cap;
};

static void old_free(struct old_chunks *o)
{
    for (size_t i = 0; i < o->n; i++)
        chunk_points_fini(&o->cp[i]);
    o->n = 0;
    o->nkept = 0;
}

static void old_keep(struct old_chunks *o, int64_t start, int64_t end)
{
    if (o->nkept == o->kept_cap) {
        o->kept_cap = o->kept_cap ? 2 * o->kept_cap : 8;
        o->kept = xrealloc(o->kept, o->kept_cap * sizeof *o->kept);
    }
    o->kept[o->nkept][0] = start;
    o->kept[o->nkept++][1] = end;
}

static int old_take(struct store *s, struct old_chunks *o, int64_t id, const void *blob,
                    size_t len)
{
    const char *why = NULL;

    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 4;
        o->cp = xrealloc(o->cp, o->cap * sizeof *o->cp);
        o->ids = xrealloc(o->ids, o->cap * sizeof *o->ids);
    }
    if (chunk_decode(blob, len, &o->cp[o->n], &why) != 0) {
        log_error("store: chunk id=%lld is corrupt (%s); rewriting it without its points",
                  (long long)id, why);
        memset(&o->cp[o->n], 0, sizeof o->cp[o->n]);
    }
    o->ids[o->n++] = id;
    (void)s;
    return SQLITE_OK;
}

/* Reads the chunks that hold a ts of a hot point of hs (they are rewritten), the one
 * just below the oldest hot point when it is small (merged into), and notes the
 * chunks between that hold none (they stay): a late point rewrites the chunk it
 * falls into, not the history between it and now. */
static int find_old(struct store *s, const struct hot_series *hs, struct old_chunks *o)
{
    sqlite3_stmt *st = s->st[ST_CHUNK_AROUND];
    int64_t lo = hs->pts[0].ts;
    int rc;

    sqlite3_bind_int64(st, 1, hs->sid);
    sqlite3_bind_int64(st, 2, hs->pts[hs->n - 1].ts);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0), start = sqlite3_column_int64(st, 1);
        int64_t end = sqlite3_column_int64(st, 2), count = sqlite3_column_int64(st, 3);
        size_t len, j;
        const void *blob;

        if (end < lo && count >= STORE_CHUNK_MIN)
            break; /* below the points and big enough to stay */
        j = hot_lower_bound(hs, start);
        if (end >= lo && (j == hs->n || hs->pts[j].ts > end)) {
            old_keep(o, start, end); /* no hot point inside */
            continue;
        }
        blob = store_col_blob(st, 4, &len);
        old_take(s, o, id, blob, len);
        if (end < lo)
            break; /* the small one below: merged, and nothing further down */
    }
    for (size_t i = 0; i < o->nkept / 2; i++) {
        int64_t a = o->kept[i][0], b = o->kept[i][1];
        o->kept[i][0] = o->kept[o->nkept - 1 - i][0];
        o->kept[i][1] = o->kept[o->nkept - 1 - i][1];
        o->kept[o->nkept - 1 - i][0] = a;
        o->kept[o->nkept - 1 - i][1] = b;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    /* collected newest first: make it ascending */
    for (size_t i = 0; i < o->n / 2; i++) {
        struct chunk_points t = o->cp[i];
        int64_t id = o->ids[i];
        o->cp[i] = o->cp[o->n - 1 - i];
        o->ids[i] = o->ids[o->n - 1 - i];
        o->cp[o->n - 1 - i] = t;
        o->ids[o->n - 1 - i] = id;
    }
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Walks the merge of the old chunks' points and the hot ones in ts order. */
struct merge {
    const struct old_chunks *o;
    const struct hot_series *hs;
    size_t ci, pi;  /* old chunk, point inside it */
    size_t hi;      /* hot point */
};

static const struct point *old_peek(struct merge *m)
{
    while (m->ci < m->o->n) {
        const struct chunk_points *cp = &m->o->cp[m->ci];
        if (m->pi < cp->npoints)
            return &cp->points[m->pi];
        m->ci++;
        m->pi = 0;
    }
    return NULL;
}

/* The next merged point in *p: 1, or 0 at the end. */
static int merge_next(struct merge *m, struct point *p)
{
    const struct point *op = old_peek(m);
    int have_hot = m->hi < m->hs->n;

    if (!op && !have_hot)
        return 0;
    if (have_hot && (!op || m->hs->pts[m->hi].ts <= op->ts_ms)) {
        if (op && m->hs->pts[m->hi].ts == op->ts_ms)
            m->pi++; /* replaced by the newer hot point */
        hot_point_get(m->hs, m->hi++, p);
        return 1;
    }
    *p = *op;
    m->pi++;
    return 1;
}

static int write_chunk(sqlite3_stmt *add, int64_t sid, struct chunk_enc *e, struct buf *blob,
                       size_t *nchunks)
{
    if (e->stats.count > 0)
        (*nchunks)++;
    return store_write_chunk(add, sid, e, blob);
}

/* Replaces the old chunks of hs with chunks of the merged points (those older than
 * cutoff, the retention bound, are left out). */
static int flush_series(struct store *s, const struct hot_series *hs, struct old_chunks *o,
                        struct chunk_enc *e, struct buf *blob, int64_t cutoff, size_t *npoints,
                        size_t *nchunks)
{
    struct merge m = { .o = o, .hs = hs };
    size_t total = hs->n, per, k, ki = 0;
    struct point p;
    int rc = find_old(s, hs, o);

    for (size_t i = 0; i < o->n; i++)
        total += o->cp[i].npoints;
    /* cut into k nearly equal chunks of at most STORE_CHUNK_POINTS (1001 -> 501 + 500) */
    k = (total + STORE_CHUNK_POINTS - 1) / STORE_CHUNK_POINTS;
    per = k ? (total + k - 1) / k : STORE_CHUNK_POINTS;
    for (size_t i = 0; rc == SQLITE_OK && i < o->n; i++) {
        sqlite3_bind_int64(s->st[ST_CHUNK_DEL], 1, o->ids[i]);
        rc = store_step(s->st[ST_CHUNK_DEL]);
    }
    *npoints = 0;
    while (rc == SQLITE_OK && merge_next(&m, &p)) {
        int added;

        if (p.ts_ms < cutoff)
            continue; /* expired already: not worth a chunk */
        /* a chunk that stays lies between the last point and this one: cut here */
        for (; ki < o->nkept && o->kept[ki][1] < p.ts_ms; ki++)
            if (rc == SQLITE_OK && e->stats.count > 0 && e->stats.last_ts < o->kept[ki][0])
                rc = write_chunk(s->st[ST_CHUNK_ADD], hs->sid, e, blob, nchunks);
        if (e->stats.count >= per)
            rc = write_chunk(s->st[ST_CHUNK_ADD], hs->sid, e, blob, nchunks);
        added = rc == SQLITE_OK ? chunk_enc_add(e, &p) : 0;
        if (added == GW_ELIMIT) { /* its texts filled the chunk */
            rc = write_chunk(s->st[ST_CHUNK_ADD], hs->sid, e, blob, nchunks);
            added = rc == SQLITE_OK ? chunk_enc_add(e, &p) : 0;
        }
        if (added != 0) { /* ingest validates values, so this is a bug: never stall on it */
            log_error("store: series=%lld ts=%lld: a value the chunk codec refuses (%d) is"
                      " left out of its chunk", (long long)hs->sid, (long long)p.ts_ms, added);
            continue;
        }
        (*npoints)++;
    }
    if (rc == SQLITE_OK)
        rc = write_chunk(s->st[ST_CHUNK_ADD], hs->sid, e, blob, nchunks);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(s->st[ST_SERIES_FLUSHED], 1, hs->sid);
        sqlite3_bind_int64(s->st[ST_SERIES_FLUSHED], 2, s->seg_last);
        rc = store_step(s->st[ST_SERIES_FLUSHED]);
    }
    old_free(o);
    if (rc != SQLITE_OK) {
        chunk_enc_fini(e); /* drop a half-built chunk */
        chunk_enc_init(e);
    }
    return rc;
}

/* ---- a slice ---- */

static struct hot_series *pick(struct store *s)
{
    struct hot *h = &s->hot;
    struct list_link *l;

    if (h->ready.head) {
        struct hot_series *hs = list_entry(h->ready.head, struct hot_series, ready);
        list_remove(&h->ready, &hs->ready); /* the writer only: readers never look at it */
        hs->in_ready = 0;
        return hs;
    }
    if (!s->force_chunk && !over_bound(s, 1))
        return NULL;
    for (l = h->by_age.head; l; l = l->next) {
        struct hot_series *hs = list_entry(l, struct hot_series, age);
        if (!hs->flushing)
            return hs;
    }
    return NULL;
}

/* The oldest segment a hot point not flushed by this slice still needs. */
static int64_t segments_needed_from(const struct store *s)
{
    for (struct list_link *l = s->hot.by_age.head; l; l = l->next) {
        const struct hot_series *hs = list_entry(l, struct hot_series, age);
        if (!hs->flushing)
            return hs->first_seg;
    }
    return s->seg_last + 1;
}


int store_chunk_slice(struct store *s)
{
    uint64_t t0 = gw_mono_us();
    struct hot_series **done = NULL;
    size_t ndone = 0, cap = 0, points = 0, npoints, nchunks = 0;
    int64_t keep = 0, freed = 0, expired = 0;
    struct old_chunks o = { 0 };
    struct chunk_enc e;
    struct buf blob;
    int rc, ret = retention_due(s);
    int64_t cutoff = retention_cutoff(s);
    struct hot_series *hs;

    if (backing_off(s))
        return 0;
    chunk_enc_init(&e);
    buf_init(&blob);
    rc = store_step(s->st[ST_BEGIN]);
    while (rc == SQLITE_OK && (hs = pick(s)) != NULL) {
        rc = flush_series(s, hs, &o, &e, &blob, cutoff, &npoints, &nchunks);
        if (ndone == cap) {
            cap = cap ? 2 * cap : 64;
            done = xrealloc(done, cap * sizeof *done);
        }
        done[ndone++] = hs;
        hs->flushing = 1;
        points += npoints;
        if (gw_mono_us() - t0 >= STORE_SLICE_US || points >= STORE_SLICE_MAX_POINTS)
            break;
    }
    if (rc == SQLITE_OK) {
        keep = segments_needed_from(s);
        if (keep > s->seg_floor) {
            sqlite3_bind_int64(s->st[ST_SEGMENT_SUM], 1, keep);
            rc = sqlite3_step(s->st[ST_SEGMENT_SUM]);
            if (rc == SQLITE_ROW) {
                freed = sqlite3_column_int64(s->st[ST_SEGMENT_SUM], 0);
                rc = SQLITE_OK;
            }
            sqlite3_reset(s->st[ST_SEGMENT_SUM]);
            if (rc == SQLITE_OK) {
                sqlite3_bind_int64(s->st[ST_SEGMENT_DEL], 1, keep);
                rc = store_step(s->st[ST_SEGMENT_DEL]);
            }
        }
    }
    if (rc == SQLITE_OK && ret) {
        sqlite3_bind_int64(s->st[ST_RET_DELETE], 1, cutoff);
        sqlite3_bind_int64(s->st[ST_RET_DELETE], 2, STORE_RETENTION_PASS_CHUNKS);
        rc = store_step(s->st[ST_RET_DELETE]);
        expired = sqlite3_changes(s->db);
    }
    if (rc == SQLITE_OK)
        rc = store_step(s->st[ST_COMMIT]);
    chunk_enc_fini(&e);
    buf_fini(&blob);
    free(o.cp);
    free(o.ids);
    free(o.kept);
    if (rc != SQLITE_OK) {
        s->last_full = store_failure(s->db, rc, 0, s->last_err, sizeof s->last_err);
        if (!s->last_full) /* a full disk is logged once by the writer */
            log_error("store: chunk slice of series=%zu failed %s; retrying in %d ms", ndone,
                      s->last_err, STORE_CHUNK_RETRY_MS);
        if (!sqlite3_get_autocommit(s->db))
            store_step(s->st[ST_ROLLBACK]);
        for (size_t i = 0; i < ndone; i++) { /* still hot; full ones are ready again */
            done[i]->flushing = 0;
            if (done[i]->n >= STORE_CHUNK_POINTS && !done[i]->in_ready) {
                done[i]->in_ready = 1;
                list_push_back(&s->hot.ready, &done[i]->ready);
            }
        }
        free(done);
        s->chunk_retry_ms = gw_mono_ms() + STORE_CHUNK_RETRY_MS;
        return 0;
    }
    s->chunk_retry_ms = 0;
    if (keep > s->seg_floor) {
        s->seg_floor = keep;
        s->log_points -= freed;
    }
    uv_mutex_lock(&s->hot_lock);
    for (size_t i = 0; i < ndone; i++)
        hot_drop(&s->hot, done[i]->sid);
    t0 = gw_mono_us() - t0;
    s->stats.slices++;
    s->stats.points_chunked += points;
    s->stats.chunks_written += nchunks;
    s->stats.slice_us_total += t0;
    if (t0 > s->stats.slice_us_max)
        s->stats.slice_us_max = t0;
    s->stats.log_points = s->log_points;
    uv_mutex_unlock(&s->hot_lock);
    free(done);
    if (ret) {
        s->ret_behind = expired >= STORE_RETENTION_PASS_CHUNKS;
        if (!s->ret_behind)
            s->ret_last_ms = gw_mono_ms();
        if (expired)
            log_info("store: retention deleted chunks=%lld", (long long)expired);
    }
    if (s->force_chunk && !s->hot.by_age.head)
        s->force_chunk = 0;
    log_debug("store: chunk slice series=%zu points=%zu chunks=%zu us=%llu", ndone, points,
              nchunks, (unsigned long long)t0);
    return 1;
}

/* ---- start-up replay ---- */

int store_replay(struct store *s)
{
    uint64_t t0 = gw_mono_ms();
    int64_t *flushed = NULL, nflushed = 0, seq = 0, nseg = 0, replayed = 0, skipped = 0;
    sqlite3_stmt *st = NULL;
    int rc;

    rc = store_get_int64(s->db, "SELECT coalesce(max(id), 0) FROM series", &nflushed);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->db, "SELECT id, flushed_seg FROM series", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        flushed = xcalloc((size_t)nflushed + 1, sizeof *flushed);
        for (int64_t i = 0; i <= nflushed; i++)
            flushed[i] = INT64_MAX; /* no such series: skip its points */
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            flushed[sqlite3_column_int64(st, 0)] = sqlite3_column_int64(st, 1);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* AUTOINCREMENT keeps the largest id ever used, also once every segment is gone */
    if (rc == SQLITE_OK &&
        store_get_int64(s->db, "SELECT coalesce(max(seq), 0) FROM sqlite_sequence"
                               " WHERE name = 'segments'", &seq) != SQLITE_OK)
        rc = SQLITE_ERROR;
    s->seg_last = seq;
    s->seg_floor = seq + 1;
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->db, "SELECT id, npoints, data FROM segments ORDER BY id", -1,
                                &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0), sid;
        size_t len;
        const uint8_t *blob = store_col_blob(st, 2, &len);
        struct segment_reader r;
        const char *why = NULL;
        struct point p;
        int got;

        if (nseg++ == 0)
            s->seg_floor = id;
        s->log_points += sqlite3_column_int64(st, 1);
        got = segment_read_start(&r, blob, len, &why);
        while (got == 0 && (got = segment_read_next(&r, &sid, &p, &why)) == 1) {
            if (sid <= nflushed && id > flushed[sid]) {
                hot_add(&s->hot, sid, id, &p);
                replayed++;
            } else {
                skipped++;
            }
            got = 0;
        }
        if (got != 0)
            log_error("store: path=%s segment id=%lld is corrupt (%s): its remaining points"
                      " are lost", s->path, (long long)id, why);
        rc = SQLITE_OK;
    }
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_finalize(st);
    free(flushed);
    if (rc != SQLITE_OK) {
        log_error("store: path=%s replaying the segments failed: %s", s->path,
                  store_errmsg(s->db, rc));
        return -1;
    }
    if (nseg > 0)
        log_info("store: path=%s replayed segments=%lld points=%lld (already chunked %lld)"
                 " in ms=%llu", s->path, (long long)nseg, (long long)replayed,
                 (long long)skipped, (unsigned long long)(gw_mono_ms() - t0));
    return 0;
}
