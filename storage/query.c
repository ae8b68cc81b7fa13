/* storage/query.c: the read-only side: a pool of read-only connections, telemetry
 * queries on libuv's work pool and the start-up load of the latest values. Calls
 * hot.c and sql.c; the other start-up loads (devices.c, state.c) borrow its pool.
 *
 * Data flow: store_query_telemetry (loop thread) queues a uv_work_t. The work
 * callback (a pool thread) borrows a read-only connection from a small pool
 * (s->pool_lock), resolves the device and its series ids, copies each series' hot
 * points in the range (s->hot_lock), and only then opens a read transaction for the
 * chunks: the writer drops hot points only after their chunks committed, so a point
 * the copy missed is in the snapshot, and a point in both is the same value (the hot
 * copy wins a tie, as the newer write always does). A snapshot older than
 * STORE_SNAPSHOT_MAX_MS is ended between two series or two chunks and a new one begun
 * (it would keep the WAL from starting over, checkpoint.c); the walk goes on after the
 * last chunk read, and the argument above holds for every later snapshot. Per series
 * it walks the chunks overlapping the range in the query's order and merges their
 * points with the hot ones. Raw points stop at limit (+1 to report truncated); aggregations fold the
 * merged stream into interval buckets and fold a chunk's header statistics instead of
 * its points when the chunk lies inside one bucket, holds only numbers and booleans,
 * no NaN, and no hot point inside its span. The after_work callback (loop thread)
 * hands the result to the caller.
 *
 * store_close completes queries still in flight (store_queries_finish): queued work is
 * cancelled, running work is waited for, and the caller's callback runs during
 * store_close; the after_work callback then only frees the request. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "storage/chunk.h"
#include "storage/store_int.h"

struct query_req {
    uv_work_t work;             /* work.data = this */
    struct store *s;
    struct store_query *q;      /* owned until handed to fn */
    struct store_result *res;   /* set by the work callback (under s->pool_lock) */
    store_query_fn fn;
    void *ctx;
    int work_done;              /* s->pool_lock: the work callback has finished */
    int orphan;                 /* loop: fn already ran in store_close; only free */
    struct list_link link;      /* in s->queries (loop thread) */
};

/* One series being answered. */
struct qseries {
    int64_t id;                 /* 0 = the key has no series */
    char *key;                  /* owned until moved into the result */
    struct point *hot;          /* its hot points in the range, ascending ts */
    size_t nhot;
};

/* Collects the merged points of one series: raw (up to limit) or aggregated. */
struct emitter {
    const struct store_query *q;
    struct store_result *res;
    struct store_series *out;
    size_t cap;                 /* points allocated in out */
    size_t limit;               /* points (or buckets) wanted */
    int stop;                   /* limit reached */
    int have;                   /* a bucket is open */
    int64_t bucket;             /* its start (store_bucket_start) */
    int64_t min_ts, max_ts;     /* earliest and latest numeric ts in it */
    double sum, min, max;
    double first, last;         /* values at min_ts and max_ts */
    uint64_t count;             /* numeric and bool values in it */
};

static const char SQL_DEV[] = "SELECT id FROM device_ids WHERE device = ?1";
static const char SQL_SERIES_ONE[] = "SELECT id FROM series WHERE dev_id = ?1 AND key = ?2";
static const char SQL_SERIES_ALL[] = "SELECT id, key FROM series WHERE dev_id = ?1 ORDER BY key";
/* From the chunk that may hold ?2 (the last one starting at or before it) on. */
static const char SQL_CHUNKS_ASC[] =
    "SELECT start_ts, end_ts, data FROM chunks WHERE series = ?1 AND start_ts >= coalesce("
    "(SELECT max(start_ts) FROM chunks WHERE series = ?1 AND start_ts <= ?2), ?2)"
    " AND start_ts <= ?3 ORDER BY start_ts";
/* Newest first from ?3 down; the caller stops at the first chunk ending before ?2. */
static const char SQL_CHUNKS_DESC[] =
    "SELECT start_ts, end_ts, data FROM chunks WHERE series = ?1 AND start_ts <= ?3"
    " AND ?2 = ?2 ORDER BY start_ts DESC";
/* The newest chunk of every series, with its names. */
static const char SQL_LOAD_LATEST[] =
    "SELECT s.id, d.device, s.key, (SELECT data FROM chunks WHERE series = s.id"
    " ORDER BY start_ts DESC LIMIT 1) FROM series s JOIN device_ids d ON d.id = s.dev_id"
    " ORDER BY d.device, s.key";

/* ---- the reader pool ---- */

static void reader_close(struct store_reader *r)
{
    if (!r)
        return;
    sqlite3_finalize(r->dev);
    sqlite3_finalize(r->series_one);
    sqlite3_finalize(r->series_all);
    sqlite3_finalize(r->chunks_asc);
    sqlite3_finalize(r->chunks_desc);
    sqlite3_close(r->db);
    free(r);
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) == SQLITE_OK
               ? 0
               : -1;
}

static struct store_reader *reader_open(const char *path)
{
    struct store_reader *r = xcalloc(1, sizeof *r);

    if (sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(r->db, STORE_BUSY_TIMEOUT_MS);
    if (prepare(r->db, SQL_DEV, &r->dev) || prepare(r->db, SQL_SERIES_ONE, &r->series_one) ||
        prepare(r->db, SQL_SERIES_ALL, &r->series_all) ||
        prepare(r->db, SQL_CHUNKS_ASC, &r->chunks_asc) ||
        prepare(r->db, SQL_CHUNKS_DESC, &r->chunks_desc))
        goto fail;
    return r;
fail:
    log_error("store: read-only open path=%s failed: %s", path,
              r->db ? sqlite3_errmsg(r->db) : "no handle");
    reader_close(r);
    return NULL;
}

struct store_reader *store_reader_get(struct store *s)
{
    struct store_reader *r = NULL;

    uv_mutex_lock(&s->pool_lock);
    if (s->npool > 0)
        r = s->pool[--s->npool];
    uv_mutex_unlock(&s->pool_lock);
    return r ? r : reader_open(s->path);
}

void store_reader_put(struct store *s, struct store_reader *r)
{
    uv_mutex_lock(&s->pool_lock);
    if (s->npool < STORE_POOL_MAX) {
        s->pool[s->npool++] = r;
        r = NULL;
    }
    uv_mutex_unlock(&s->pool_lock);
    reader_close(r);
}

void store_pool_close(struct store *s)
{
    uv_mutex_lock(&s->pool_lock);
    while (s->npool > 0)
        reader_close(s->pool[--s->npool]);
    uv_mutex_unlock(&s->pool_lock);
}

/* ---- the query (pool thread) ---- */

static void keep_str(struct store_result *res, char *p)
{
    if ((res->nstrs & (res->nstrs - 1)) == 0) /* 0, 1, 2, 4, ...: grow to the next power */
        res->strs = xrealloc(res->strs, (res->nstrs ? 2 * res->nstrs : 1) * sizeof *res->strs);
    res->strs[res->nstrs++] = p;
}

static void push_point(struct emitter *e, const struct point *p)
{
    struct store_series *out = e->out;

    if (out->npoints == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 16;
        out->points = xrealloc(out->points, e->cap * sizeof *out->points);
    }
    out->points[out->npoints] = *p;
    out->points[out->npoints].key = out->key;
    out->npoints++;
}

static int64_t floor_to(int64_t ts, int64_t iv)
{
    int64_t q = ts / iv;

    if (ts % iv != 0 && ts < 0)
        q--;
    if (q < INT64_MIN / iv)
        return INT64_MIN;
    if (q > INT64_MAX / iv)
        return INT64_MAX;
    return q * iv;
}

/* The offset of the span holding utc (binary search: a zone has a few spans a year). */
static int64_t tz_offset(const struct store_query *q, int64_t utc)
{
    size_t lo = 0, hi = q->ntz;

    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->tz[mid].utc_ms <= utc)
            lo = mid;
        else
            hi = mid;
    }
    return q->tz[lo].offset_ms;
}

/* The UTC instant of local time local_ms. A local time that happens twice (clocks going
 * back) maps to its first instant; one that never happens (clocks going forward) to the
 * moment the clocks jumped past it. */
static int64_t utc_of_local(const struct store_query *q, int64_t local_ms)
{
    int64_t u = local_ms - tz_offset(q, local_ms);
    int64_t o = tz_offset(q, u);

    u = local_ms - o;
    if (tz_offset(q, u) != o)
        u = local_ms - tz_offset(q, u);
    return u;
}

int64_t store_bucket_start(const struct store_query *q, int64_t ts_ms)
{
    if (q->interval_ms <= 0)
        return 0; /* one bucket for the whole range */
    if (q->ntz == 0)
        return floor_to(ts_ms, q->interval_ms);
    return utc_of_local(q, floor_to(ts_ms + tz_offset(q, ts_ms), q->interval_ms));
}

int64_t store_query_resume(const struct store_query *q, int64_t last_ts_ms)
{
    int64_t local;

    if (q->desc)
        return last_ts_ms > INT64_MIN ? last_ts_ms - 1 : last_ts_ms;
    if (q->agg == STORE_AGG_NONE || q->interval_ms <= 0)
        return last_ts_ms < INT64_MAX ? last_ts_ms + 1 : last_ts_ms;
    if (q->ntz == 0)
        return last_ts_ms <= INT64_MAX - q->interval_ms ? last_ts_ms + q->interval_ms : INT64_MAX;
    local = floor_to(last_ts_ms + tz_offset(q, last_ts_ms), q->interval_ms);
    return utc_of_local(q, local + q->interval_ms);
}

static void flush_bucket(struct emitter *e)
{
    struct point p = { 0 };

    if (!e->have)
        return;
    e->have = 0;
    if (e->count == 0)
        return; /* only strings or JSON in it: no bucket */
    if (e->out->npoints >= e->limit) {
        e->out->truncated = 1;
        e->stop = 1;
        return;
    }
    p.ts_ms = e->q->interval_ms > 0 ? e->bucket : e->min_ts;
    p.type = VAL_NUM;
    switch (e->q->agg) {
    case STORE_AGG_AVG: p.num = e->sum / (double)e->count; break;
    case STORE_AGG_MIN: p.num = e->min; break;
    case STORE_AGG_MAX: p.num = e->max; break;
    case STORE_AGG_SUM: p.num = e->sum; break;
    case STORE_AGG_COUNT: p.num = (double)e->count; break;
    case STORE_AGG_FIRST: p.num = e->first; break;
    case STORE_AGG_LAST: p.num = e->last; break;
    case STORE_AGG_NONE: break;
    }
    push_point(e, &p);
}

/* Makes the bucket holding ts the open one (the one open before is flushed first).
 * Returns 0 when that flush reached the limit: the series is done. */
static int enter_bucket(struct emitter *e, int64_t ts)
{
    int64_t b = store_bucket_start(e->q, ts);

    if (e->have && b != e->bucket) {
        flush_bucket(e);
        if (e->stop)
            return 0;
    }
    if (!e->have) {
        e->have = 1;
        e->bucket = b;
        e->count = 0;
        e->sum = 0;
    }
    return 1;
}

/* Adds n numeric values to the open bucket: one point (all its statistics are its
 * value) or a whole chunk's header. min/max keep the first value unless a later one is
 * strictly smaller/larger, as a left-to-right fold does. */
static void fold(struct emitter *e, const struct chunk_stats *st)
{
    if (e->count == 0 || st->min < e->min)
        e->min = st->min;
    if (e->count == 0 || st->max > e->max)
        e->max = st->max;
    if (e->count == 0 || st->first_ts < e->min_ts) {
        e->min_ts = st->first_ts;
        e->first = st->first;
    }
    if (e->count == 0 || st->last_ts > e->max_ts) {
        e->max_ts = st->last_ts;
        e->last = st->last;
    }
    e->sum += st->sum;
    e->count += st->nnum;
}

static void emit(struct emitter *e, const struct point *p)
{
    struct chunk_stats one;

    if (e->q->agg == STORE_AGG_NONE) {
        push_point(e, p);
        return;
    }
    if (!enter_bucket(e, p->ts_ms) || (p->type != VAL_NUM && p->type != VAL_BOOL))
        return;
    one = (struct chunk_stats){ .nnum = 1, .first_ts = p->ts_ms, .last_ts = p->ts_ms,
                                .min = p->num, .max = p->num, .sum = p->num,
                                .first = p->num, .last = p->num };
    fold(e, &one);
}

/* Emits p unless the raw limit is reached (then truncated: one more point exists).
 * A text not yet owned by the result (a decoded chunk's) is copied first. Returns 0
 * once the series is done. */
static int out_point(struct emitter *e, const struct point *p, int borrowed)
{
    struct point c = *p;

    if (e->q->agg == STORE_AGG_NONE && e->out->npoints >= e->limit) {
        e->out->truncated = 1;
        e->stop = 1;
        return 0;
    }
    if (e->q->agg == STORE_AGG_NONE && borrowed && (p->type == VAL_STR || p->type == VAL_JSON)) {
        char *copy = xstrndup(p->str ? p->str : "", p->str_len);
        keep_str(e->res, copy);
        c.str = copy;
    }
    emit(e, &c);
    return !e->stop;
}

/* Folds a whole chunk's header statistics into the buckets (see can_fold). */
static void fold_stats(struct emitter *e, const struct chunk_stats *st)
{
    if (enter_bucket(e, st->first_ts))
        fold(e, st);
}

/* A chunk's statistics stand for its points in an aggregate when it lies inside the
 * range and inside one bucket, holds only numbers and booleans (so its first and last
 * numeric points are its first and last), no NaN (NaN makes min and max depend on the
 * order they are seen in) and no hot point replaces one of its points. */
static int can_fold(const struct emitter *e, const struct chunk_stats *st, int hot_inside)
{
    const struct store_query *q = e->q;

    if (q->agg == STORE_AGG_NONE || hot_inside || st->first_ts < q->from_ms ||
        st->last_ts > q->to_ms || (st->types & ~((1u << VAL_NUM) | (1u << VAL_BOOL))) ||
        st->nnum != st->count || isnan(st->sum))
        return 0;
    return q->interval_ms <= 0 ||
           store_bucket_start(q, st->first_ts) == store_bucket_start(q, st->last_ts);
}

/* Ends the read snapshot and starts the next one once it is STORE_SNAPSHOT_MAX_MS old
 * (*since_ms: when it began), so that a long query never keeps the WAL from starting
 * over (checkpoint.c). The hot points were copied before the first snapshot began: a
 * later snapshot also holds every point the copy missed. No statement of r may be
 * running. SQLite result code. */
static int renew_snapshot(struct store *s, struct store_reader *r, uint64_t *since_ms)
{
    uint64_t now = gw_mono_ms();

    if (now - *since_ms < s->snapshot_ms)
        return SQLITE_OK;
    *since_ms = now;
    __atomic_fetch_add(&s->snapshot_renewals, 1, __ATOMIC_RELAXED);
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL);
}

/* Merges the chunks of series qs with its hot points (ascending) in the query's order.
 * The snapshot is renewed between two chunks when it is old (renew_snapshot): the walk
 * goes on after the last chunk it read. SQLite result code. */
static int merge_series(struct store *s, struct store_reader *r, struct emitter *e,
                        const struct qseries *qs, uint64_t *snap_ms)
{
    const struct store_query *q = e->q;
    sqlite3_stmt *st = q->desc ? r->chunks_desc : r->chunks_asc;
    const struct point *hot = qs->hot;
    size_t nhot = qs->nhot, hi = 0; /* hot points emitted (from the query's start) */
    int rc = SQLITE_DONE, walked = 0, renew_ok = 0;
    int64_t last_start = 0;         /* of the last chunk read, when walked */

/* hot point i in the query's order, and "it comes before ts in that order" */
#define HOT(i) (&hot[q->desc ? nhot - 1 - (i) : (i)])
#define HOT_BEFORE(i, ts) (q->desc ? HOT(i)->ts_ms > (ts) : HOT(i)->ts_ms < (ts))

    sqlite3_bind_int64(st, 1, qs->id);
    sqlite3_bind_int64(st, 2, q->from_ms);
    sqlite3_bind_int64(st, 3, q->to_ms);
    while (!e->stop) {
        int64_t start, end;
        size_t len, hot_in = 0;
        const void *blob;
        struct chunk_stats cs;
        struct chunk_points cp;
        const char *why = NULL;

        if (renew_ok && gw_mono_ms() - *snap_ms >= s->snapshot_ms) {
            sqlite3_reset(st);
            rc = renew_snapshot(s, r, snap_ms);
            if (rc != SQLITE_OK)
                break;
            renew_ok = 0; /* not again before the walk has moved on by a chunk */
            if (walked && q->desc && last_start == INT64_MIN) {
                rc = SQLITE_DONE;
                break;
            }
            if (walked) /* on from the last chunk read (ascending: it comes again) */
                sqlite3_bind_int64(st, q->desc ? 3 : 2, q->desc ? last_start - 1 : last_start);
        }
        if ((rc = sqlite3_step(st)) != SQLITE_ROW)
            break;
        start = sqlite3_column_int64(st, 0);
        end = sqlite3_column_int64(st, 1);
        if (walked && (q->desc ? start >= last_start : start <= last_start))
            continue; /* read before the snapshot was renewed */
        walked = renew_ok = 1;
        last_start = start;
        if (q->desc ? end < q->from_ms : start > q->to_ms) {
            rc = SQLITE_DONE;
            break;
        }
        if (!q->desc && end < q->from_ms)
            continue; /* the chunk before from */
        while (hi < nhot && HOT_BEFORE(hi, q->desc ? end : start) && out_point(e, HOT(hi), 0))
            hi++;
        if (e->stop)
            break;
        while (hi + hot_in < nhot && HOT(hi + hot_in)->ts_ms >= start &&
               HOT(hi + hot_in)->ts_ms <= end)
            hot_in++;
        blob = store_col_blob(st, 2, &len);
        if (chunk_stats(blob, len, &cs, &why) == 0 && can_fold(e, &cs, hot_in > 0)) {
            fold_stats(e, &cs);
            continue;
        }
        if (chunk_decode(blob, len, &cp, &why) != 0) {
            log_error("store: series=%lld chunk at ts=%lld is corrupt (%s)", (long long)qs->id,
                      (long long)start, why);
            rc = SQLITE_CORRUPT; /* an error, not a silent hole in the answer */
            break;
        }
        for (size_t k = 0; k < cp.npoints && !e->stop; k++) {
            const struct point *p = &cp.points[q->desc ? cp.npoints - 1 - k : k];

            while (hi < nhot && HOT_BEFORE(hi, p->ts_ms) && out_point(e, HOT(hi), 0))
                hi++;
            if (e->stop)
                break;
            if (hi < nhot && HOT(hi)->ts_ms == p->ts_ms)
                continue; /* the hot point replaces it; emitted next */
            if (p->ts_ms >= q->from_ms && p->ts_ms <= q->to_ms)
                out_point(e, p, 1);
        }
        chunk_points_fini(&cp);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    while (!e->stop && hi < nhot && out_point(e, HOT(hi), 0))
        hi++;
#undef HOT_BEFORE
#undef HOT
    if (q->agg != STORE_AGG_NONE && !e->stop)
        flush_bucket(e);
    return SQLITE_OK;
}

static int collect_series(struct store_reader *r, const struct store_query *q, int64_t dev_id,
                          struct qseries **out, size_t *nout)
{
    struct qseries *ser;
    size_t n = 0, cap;
    int rc = SQLITE_DONE;

    if (q->nkeys > 0) {
        ser = xcalloc(q->nkeys, sizeof *ser);
        for (size_t i = 0; i < q->nkeys; i++) {
            const char *key = q->keys[i] ? q->keys[i] : "";
            sqlite3_bind_int64(r->series_one, 1, dev_id);
            sqlite3_bind_text(r->series_one, 2, key, -1, SQLITE_STATIC);
            rc = sqlite3_step(r->series_one);
            ser[n].id = rc == SQLITE_ROW ? sqlite3_column_int64(r->series_one, 0) : 0;
            ser[n++].key = xstrdup(key);
            sqlite3_reset(r->series_one);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                break;
            rc = SQLITE_DONE;
        }
    } else {
        cap = 16;
        ser = xcalloc(cap, sizeof *ser);
        sqlite3_bind_int64(r->series_all, 1, dev_id);
        while ((rc = sqlite3_step(r->series_all)) == SQLITE_ROW) {
            const char *key = (const char *)sqlite3_column_text(r->series_all, 1);
            if (n == cap) {
                cap *= 2;
                ser = xrealloc(ser, cap * sizeof *ser);
            }
            memset(&ser[n], 0, sizeof ser[n]);
            ser[n].id = sqlite3_column_int64(r->series_all, 0);
            ser[n++].key = xstrdup(key ? key : "");
        }
        sqlite3_reset(r->series_all);
    }
    *out = ser;
    *nout = n;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Copies the hot points of every series in the range, in one hold of s->hot_lock and
 * before the chunks' snapshot (see the top of the file). Texts are copied into res
 * when the query returns them. */
static void copy_hot(struct store *s, const struct store_query *q, struct qseries *ser,
                     size_t nser, struct store_result *res)
{
    int want_str = q->agg == STORE_AGG_NONE;

    uv_mutex_lock(&s->hot_lock);
    for (size_t i = 0; i < nser; i++) {
        const struct hot_series *hs = hot_get(&s->hot, ser[i].id);
        size_t lo, hi;

        if (!hs)
            continue;
        lo = hot_lower_bound(hs, q->from_ms);
        for (hi = lo; hi < hs->n && hs->pts[hi].ts <= q->to_ms; hi++)
            ;
        if (hi == lo)
            continue;
        ser[i].hot = xmalloc((hi - lo) * sizeof *ser[i].hot);
        for (size_t k = lo; k < hi; k++) {
            struct point *p = &ser[i].hot[ser[i].nhot++];

            hot_point_get(hs, k, p);
            if (p->type != VAL_STR && p->type != VAL_JSON)
                continue;
            if (want_str) {
                char *copy = xstrndup(p->str, p->str_len);
                keep_str(res, copy);
                p->str = copy;
            } else {
                p->str = NULL;
                p->str_len = 0;
            }
        }
    }
    uv_mutex_unlock(&s->hot_lock);
}

static void run_query(struct store *s, struct store_reader *r, const struct store_query *q,
                      struct store_result *res)
{
    struct qseries *ser = NULL;
    size_t nser = 0, limit = q->limit;
    int64_t dev_id = 0;
    uint64_t snap_ms;
    int rc;

    if (limit == 0)
        limit = STORE_DEFAULT_LIMIT;
    if (limit > STORE_MAX_LIMIT)
        limit = STORE_MAX_LIMIT;
    sqlite3_bind_text(r->dev, 1, q->device, -1, SQLITE_STATIC);
    rc = sqlite3_step(r->dev);
    if (rc == SQLITE_ROW)
        dev_id = sqlite3_column_int64(r->dev, 0);
    sqlite3_reset(r->dev);
    if (rc != SQLITE_ROW) { /* unknown device: empty result */
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        goto out;
    }
    rc = collect_series(r, q, dev_id, &ser, &nser);
    if (rc != SQLITE_OK)
        goto out;
    copy_hot(s, q, ser, nser, res);
    snap_ms = gw_mono_ms();
    rc = sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL); /* one snapshot, renewed when old */
    if (rc != SQLITE_OK)
        goto out;
    res->series = xcalloc(nser ? nser : 1, sizeof *res->series);
    for (size_t i = 0; i < nser && rc == SQLITE_OK; i++) {
        struct store_series *out = &res->series[res->nseries];
        struct emitter e = { .q = q, .res = res, .out = out, .limit = limit };

        out->key = ser[i].key;
        ser[i].key = NULL;
        if (ser[i].id != 0)
            rc = renew_snapshot(s, r, &snap_ms);
        if (ser[i].id != 0 && rc == SQLITE_OK)
            rc = merge_series(s, r, &e, &ser[i], &snap_ms);
        if (q->nkeys == 0 && out->npoints == 0) { /* every key: only those with points */
            free(out->key);
            free(out->points);
            memset(out, 0, sizeof *out);
        } else {
            res->nseries++;
        }
    }
out:
    if (rc != SQLITE_OK) {
        log_error("store: query device=\"%s\" failed rc=%d error=\"%s\"", log_q(q->device), rc,
                  store_errmsg(r->db, rc));
        res->rc = GW_ESTORE;
    }
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL); /* read-only: ends the snapshot */
    for (size_t i = 0; i < nser; i++) {
        free(ser[i].key);
        free(ser[i].hot);
    }
    free(ser);
}

/* ---- start-up loads (loop thread, blocking) ---- */

/* The newest value of each series: the newer of its newest chunk's last point and its
 * newest hot point (a hot point of the same ts is the later write). */
int store_load_latest(struct store *s, store_latest_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_LATEST, -1, &st, NULL);
    /* held from before the snapshot starts (the first step) to its end: a chunk slice
     * that commits meanwhile cannot drop hot points this load has not seen in chunks */
    uv_mutex_lock(&s->hot_lock);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t sid = sqlite3_column_int64(st, 0);
        const char *device = store_col_text(st, 1), *key = store_col_text(st, 2), *why = NULL;
        struct chunk_points cp = { 0 };
        struct point p = { 0 };
        struct chunk_stats cs;
        const struct hot_series *hs;
        int have = 0;
        size_t len;
        const void *blob = sqlite3_column_type(st, 3) == SQLITE_NULL
                               ? NULL : store_col_blob(st, 3, &len);

        if (blob && chunk_stats(blob, len, &cs, &why) == 0) {
            if (cs.nnum == cs.count && !(cs.types & ~(1u << VAL_NUM))) {
                p.ts_ms = cs.last_ts; /* numbers only: the header has it */
                p.type = VAL_NUM;
                p.num = cs.last;
                have = 1;
            } else if (chunk_decode(blob, len, &cp, &why) == 0) {
                p = cp.points[cp.npoints - 1];
                have = 1;
            }
        }
        if (blob && !have) {
            log_error("store: series=%lld newest chunk is corrupt (%s)", (long long)sid, why);
            rc = SQLITE_CORRUPT;
            break;
        }
        hs = hot_get(&s->hot, sid);
        if (hs && hs->n > 0 && (!have || hs->pts[hs->n - 1].ts >= p.ts_ms)) {
            hot_point_get(hs, hs->n - 1, &p);
            have = 1;
        }
        if (have && device && key) {
            char *text = NULL;
            if (p.type == VAL_STR || p.type == VAL_JSON) /* NUL-terminated for fn */
                p.str = text = xstrndup(p.str ? p.str : "", p.str_len);
            p.key = key;
            fn(ctx, device, &p);
            free(text);
        }
        chunk_points_fini(&cp);
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    uv_mutex_unlock(&s->hot_lock);
    return store_end_load(s, r, rc, "latest", st, NULL);
}

int store_end_load(struct store *s, struct store_reader *r, int rc, const char *what,
                   sqlite3_stmt *a, sqlite3_stmt *b)
{
    if (rc != SQLITE_DONE)
        log_error("store: load %s: %s", what, store_errmsg(r->db, rc));
    sqlite3_finalize(a);
    sqlite3_finalize(b);
    store_reader_put(s, r);
    return rc == SQLITE_DONE ? 0 : GW_ESTORE;
}


/* ---- requests ---- */

static struct store_result *error_result(void)
{
    struct store_result *res = xcalloc(1, sizeof *res);

    res->rc = GW_ESTORE;
    return res;
}

static void on_query_work(uv_work_t *w) /* pool thread */
{
    struct query_req *req = w->data;
    struct store *s = req->s;
    struct store_result *res = xcalloc(1, sizeof *res);
    struct store_reader *r = store_reader_get(s);

    if (r) {
        run_query(s, r, req->q, res);
        store_reader_put(s, r);
    } else {
        res->rc = GW_ESTORE;
    }
    uv_mutex_lock(&s->pool_lock);
    req->res = res;
    req->work_done = 1;
    uv_cond_broadcast(&s->pool_cond);
    uv_mutex_unlock(&s->pool_lock);
}

static void on_query_done(uv_work_t *w, int status) /* loop thread */
{
    struct query_req *req = w->data;
    struct store_result *res;

    (void)status;
    if (req->orphan) { /* store_close has answered it */
        free(req);
        return;
    }
    list_remove(&req->s->queries, &req->link);
    res = req->res ? req->res : error_result();
    req->fn(req->ctx, req->q, res);
    free(req);
}

int store_query_telemetry(struct store *s, struct store_query *q, store_query_fn fn, void *ctx)
{
    struct query_req *req;
    int rc;

    if (!s || !q || !q->device || !fn) {
        store_query_free(q);
        return GW_EINVAL;
    }
    if (s->closing) {
        store_query_free(q);
        return GW_ESTORE;
    }
    req = xcalloc(1, sizeof *req);
    req->work.data = req;
    req->s = s;
    req->q = q;
    req->fn = fn;
    req->ctx = ctx;
    rc = store_queue_read(s, &req->work, on_query_work, on_query_done);
    if (rc != 0) {
        store_query_free(q);
        free(req);
        return rc;
    }
    list_push_back(&s->queries, &req->link);
    return 0;
}

void store_queries_finish(struct store *s)
{
    struct query_req *req;

    if (!s->have_pool_lock || !s->have_pool_cond)
        return;
    while ((req = list_entry(s->queries.head, struct query_req, link)) != NULL) {
        struct store_query *q;
        struct store_result *res;

        list_remove(&s->queries, &req->link);
        if (uv_cancel((uv_req_t *)&req->work) != 0) { /* running or finished: wait */
            uv_mutex_lock(&s->pool_lock);
            while (!req->work_done)
                uv_cond_wait(&s->pool_cond, &s->pool_lock);
            uv_mutex_unlock(&s->pool_lock);
        }
        q = req->q;
        res = req->res ? req->res : error_result();
        req->q = NULL;
        req->res = NULL;
        req->orphan = 1; /* on_query_done still runs (loop) and frees req */
        req->fn(req->ctx, q, res);
    }
}

void store_query_free(struct store_query *q)
{
    if (!q)
        return;
    free(q->device);
    for (size_t i = 0; i < q->nkeys; i++)
        free(q->keys[i]);
    free(q->keys);
    free(q->tz);
    free(q);
}

void store_result_free(struct store_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nseries; i++) {
        free(r->series[i].key);
        free(r->series[i].points);
    }
    free(r->series);
    for (size_t i = 0; i < r->nstrs; i++)
        free(r->strs[i]);
    free(r->strs);
    free(r);
}
