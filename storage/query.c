/* storage/query.c: the read-only side: a pool of read-only connections, telemetry
 * queries on libuv's work pool and the start-up load of the latest values. Calls
 * only sql.c; the other start-up loads (devices.c, state.c) borrow its pool.
 *
 * Data flow: store_query_telemetry (loop thread) queues a uv_work_t. The work
 * callback (a pool thread) borrows a read-only connection from a small pool
 * (s->pool_lock), opens a read transaction (one WAL snapshot for both tiers), resolves
 * the device and its series ids, scans the device's rows still in telemetry_log once,
 * then for each series merges them with the (series, ts) table in ts order: a log row
 * replaces a main-table row of the same ts, and among log rows of one ts the highest
 * rowid (the newest arrival) wins. Raw points stop at limit (+1 to report truncated);
 * aggregations fold the merged stream into interval buckets. The after_work callback
 * (loop thread) hands the result to the caller.
 *
 * store_close completes queries still in flight (store_queries_finish): queued work is
 * cancelled, running work is waited for, and the caller's callback runs during
 * store_close; the after_work callback then only frees the request. */
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "base/alloc.h"
#include "base/err.h"
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

/* A log row of the queried device: where it is, not what it holds. */
struct log_ent {
    int64_t series, ts, rowid;
};

/* One series being answered. */
struct qseries {
    int64_t id;                 /* 0 = the key has no series */
    char *key;                  /* owned until moved into the result */
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
    int64_t bucket;             /* its key (floor(ts / interval) * interval) */
    int64_t min_ts, max_ts;     /* earliest and latest numeric ts in it */
    double sum, min, max;
    double first, last;         /* values at min_ts and max_ts */
    uint64_t count;             /* numeric and bool values in it */
};

static const char SQL_DEV[] = "SELECT id FROM device_ids WHERE device = ?1";
static const char SQL_SERIES_ONE[] = "SELECT id FROM series WHERE dev_id = ?1 AND key = ?2";
static const char SQL_SERIES_ALL[] = "SELECT id, key FROM series WHERE dev_id = ?1 ORDER BY key";
static const char SQL_LOG_SCAN[] =
    "SELECT series, ts, rowid FROM telemetry_log"
    " WHERE series IN (SELECT id FROM series WHERE dev_id = ?1) AND ts BETWEEN ?2 AND ?3";
static const char SQL_LOG_VALUE[] = "SELECT t, v FROM telemetry_log WHERE rowid = ?1";
static const char SQL_MAIN_ASC[] =
    "SELECT ts, t, v FROM telemetry WHERE series = ?1 AND ts BETWEEN ?2 AND ?3"
    " ORDER BY ts ASC LIMIT ?4";
static const char SQL_MAIN_DESC[] =
    "SELECT ts, t, v FROM telemetry WHERE series = ?1 AND ts BETWEEN ?2 AND ?3"
    " ORDER BY ts DESC LIMIT ?4";

/* The latest table, overlaid with the newest log row of each series (the log row wins
 * when it is as new or newer: a replay of the same ts arrived later). */
static const char SQL_LOAD_LATEST[] =
    "WITH lognew AS MATERIALIZED ("
    "  SELECT series, ts, t, v FROM ("
    "   SELECT series, ts, t, v, row_number() OVER"
    "    (PARTITION BY series ORDER BY ts DESC, rowid DESC) AS rn FROM telemetry_log)"
    "  WHERE rn = 1),"
    " merged AS ("
    "  SELECT n.series, n.ts, n.t, n.v FROM lognew n LEFT JOIN latest l ON l.series = n.series"
    "   WHERE l.series IS NULL OR n.ts >= l.ts"
    "  UNION ALL"
    "  SELECT l.series, l.ts, l.t, l.v FROM latest l LEFT JOIN lognew n ON n.series = l.series"
    "   WHERE n.series IS NULL OR n.ts < l.ts)"
    " SELECT d.device, s.key, m.ts, m.t, m.v FROM merged m"
    " JOIN series s ON s.id = m.series JOIN device_ids d ON d.id = s.dev_id"
    " ORDER BY d.device, s.key";

/* ---- the reader pool ---- */

static void reader_close(struct store_reader *r)
{
    if (!r)
        return;
    sqlite3_finalize(r->dev);
    sqlite3_finalize(r->series_one);
    sqlite3_finalize(r->series_all);
    sqlite3_finalize(r->log_scan);
    sqlite3_finalize(r->log_value);
    sqlite3_finalize(r->main_asc);
    sqlite3_finalize(r->main_desc);
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
        prepare(r->db, SQL_LOG_SCAN, &r->log_scan) ||
        prepare(r->db, SQL_LOG_VALUE, &r->log_value) ||
        prepare(r->db, SQL_MAIN_ASC, &r->main_asc) || prepare(r->db, SQL_MAIN_DESC, &r->main_desc))
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

/* Reads the (t, v) columns at tcol into p; strings are copied only when wanted.
 * SQLite result code. */
static int read_value(sqlite3_stmt *st, int tcol, struct point *p, struct store_result *res,
                      int want_str)
{
    int rc = store_read_value(st, tcol, p);

    if (rc != SQLITE_OK)
        return rc;
    if (p->type == VAL_STR || p->type == VAL_JSON) {
        if (want_str) {
            char *copy = xstrndup(p->str, p->str_len);
            keep_str(res, copy);
            p->str = copy;
        } else {
            p->str = NULL; /* borrowed from st, gone at its next step */
            p->str_len = 0;
        }
    }
    return SQLITE_OK;
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

static int64_t bucket_of(int64_t ts, int64_t iv)
{
    int64_t q;

    if (iv <= 0)
        return 0; /* one bucket for the whole range */
    q = ts / iv;
    if (ts % iv != 0 && ts < 0)
        q--;
    if (q < INT64_MIN / iv)
        return INT64_MIN;
    return q * iv;
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

static void emit(struct emitter *e, const struct point *p)
{
    int64_t b;

    if (e->q->agg == STORE_AGG_NONE) {
        push_point(e, p);
        return;
    }
    b = bucket_of(p->ts_ms, e->q->interval_ms);
    if (e->have && b != e->bucket) {
        flush_bucket(e);
        if (e->stop)
            return;
    }
    if (!e->have) {
        e->have = 1;
        e->bucket = b;
        e->count = 0;
        e->sum = 0;
    }
    if (p->type != VAL_NUM && p->type != VAL_BOOL)
        return;
    if (e->count == 0 || p->num < e->min)
        e->min = p->num;
    if (e->count == 0 || p->num > e->max)
        e->max = p->num;
    if (e->count == 0 || p->ts_ms < e->min_ts) {
        e->min_ts = p->ts_ms;
        e->first = p->num;
    }
    if (e->count == 0 || p->ts_ms > e->max_ts) {
        e->max_ts = p->ts_ms;
        e->last = p->num;
    }
    e->sum += p->num;
    e->count++;
}

static int read_log_value(struct store_reader *r, int64_t rowid, struct point *p,
                          struct emitter *e)
{
    int rc;

    sqlite3_bind_int64(r->log_value, 1, rowid);
    rc = sqlite3_step(r->log_value);
    if (rc == SQLITE_ROW)
        rc = read_value(r->log_value, 0, p, e->res, e->q->agg == STORE_AGG_NONE);
    else if (rc == SQLITE_DONE)
        rc = SQLITE_CORRUPT; /* the scan saw this row in the same snapshot */
    sqlite3_reset(r->log_value);
    return rc;
}

/* Merges the main-table rows of series sid with its log rows lg[0..nlg) (ascending ts,
 * one per ts) in the query's order. */
static int merge_series(struct store_reader *r, struct emitter *e, int64_t sid,
                        const struct log_ent *lg, size_t nlg)
{
    const struct store_query *q = e->q;
    sqlite3_stmt *st = q->desc ? r->main_desc : r->main_asc;
    int raw = q->agg == STORE_AGG_NONE, have_main, rc;
    size_t li = 0;

    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, q->from_ms);
    sqlite3_bind_int64(st, 3, q->to_ms);
    /* the first limit + 1 distinct ts of the union are among the first limit + 1 main rows */
    sqlite3_bind_int64(st, 4, raw ? (int64_t)e->limit + 1 : -1);
    rc = sqlite3_step(st);
    have_main = rc == SQLITE_ROW;
    while (!e->stop && (rc == SQLITE_ROW || rc == SQLITE_DONE) && (have_main || li < nlg)) {
        const struct log_ent *le = li < nlg ? &lg[q->desc ? nlg - 1 - li : li] : NULL;
        int64_t mts = have_main ? sqlite3_column_int64(st, 0) : 0;
        struct point p = { 0 };

        if (raw && e->out->npoints >= e->limit) {
            e->out->truncated = 1; /* one more point exists */
            break;
        }
        if (le && (!have_main || le->ts == mts || (q->desc ? le->ts > mts : le->ts < mts))) {
            int shadowed = have_main && le->ts == mts; /* the log row replaces it */
            rc = read_log_value(r, le->rowid, &p, e);
            if (rc != SQLITE_OK)
                break;
            p.ts_ms = le->ts;
            li++;
            rc = SQLITE_DONE;
            if (shadowed) {
                rc = sqlite3_step(st);
                have_main = rc == SQLITE_ROW;
            }
        } else {
            p.ts_ms = mts;
            rc = read_value(st, 1, &p, e->res, raw);
            if (rc != SQLITE_OK)
                break;
            rc = sqlite3_step(st);
            have_main = rc == SQLITE_ROW;
        }
        emit(e, &p);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    if (!raw && !e->stop)
        flush_bucket(e);
    return SQLITE_OK;
}

static int cmp_log_ent(const void *a, const void *b)
{
    const struct log_ent *x = a, *y = b;

    if (x->series != y->series)
        return x->series < y->series ? -1 : 1;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->rowid < y->rowid ? -1 : x->rowid > y->rowid;
}

/* First index in lg[0..n) whose series is >= sid. */
static size_t lower_bound(const struct log_ent *lg, size_t n, int64_t sid)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lg[mid].series < sid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
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
            ser[n].id = sqlite3_column_int64(r->series_all, 0);
            ser[n++].key = xstrdup(key ? key : "");
        }
        sqlite3_reset(r->series_all);
    }
    *out = ser;
    *nout = n;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int scan_log(struct store_reader *r, const struct store_query *q, int64_t dev_id,
                    struct log_ent **out, size_t *nout)
{
    struct log_ent *lg = NULL;
    size_t n = 0, cap = 0;
    int rc;

    sqlite3_bind_int64(r->log_scan, 1, dev_id);
    sqlite3_bind_int64(r->log_scan, 2, q->from_ms);
    sqlite3_bind_int64(r->log_scan, 3, q->to_ms);
    while ((rc = sqlite3_step(r->log_scan)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            lg = xrealloc(lg, cap * sizeof *lg);
        }
        lg[n].series = sqlite3_column_int64(r->log_scan, 0);
        lg[n].ts = sqlite3_column_int64(r->log_scan, 1);
        lg[n].rowid = sqlite3_column_int64(r->log_scan, 2);
        n++;
    }
    sqlite3_reset(r->log_scan);
    if (n > 1)
        qsort(lg, n, sizeof *lg, cmp_log_ent);
    *out = lg;
    *nout = n;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void run_query(struct store_reader *r, const struct store_query *q,
                      struct store_result *res)
{
    struct qseries *ser = NULL;
    struct log_ent *lg = NULL;
    size_t nser = 0, nlg = 0, limit = q->limit;
    int64_t dev_id = 0;
    int rc;

    if (limit == 0)
        limit = STORE_DEFAULT_LIMIT;
    if (limit > STORE_MAX_LIMIT)
        limit = STORE_MAX_LIMIT;
    rc = sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL); /* one snapshot for both tiers */
    if (rc != SQLITE_OK)
        goto out;
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
    if (rc == SQLITE_OK)
        rc = scan_log(r, q, dev_id, &lg, &nlg);
    if (rc != SQLITE_OK)
        goto out;
    res->series = xcalloc(nser ? nser : 1, sizeof *res->series);
    for (size_t i = 0; i < nser && rc == SQLITE_OK; i++) {
        struct store_series *out = &res->series[res->nseries];
        struct emitter e = { .q = q, .res = res, .out = out, .limit = limit };
        size_t lo = 0, hi = 0, w;

        out->key = ser[i].key;
        ser[i].key = NULL;
        if (ser[i].id != 0) {
            lo = lower_bound(lg, nlg, ser[i].id);
            for (hi = lo; hi < nlg && lg[hi].series == ser[i].id; hi++)
                ;
            /* one entry per ts: the last of a run (highest rowid, the newest arrival) */
            w = lo;
            for (size_t j = lo; j < hi; j++) {
                if (j + 1 < hi && lg[j + 1].ts == lg[j].ts)
                    continue;
                lg[w++] = lg[j];
            }
            rc = merge_series(r, &e, ser[i].id, lg + lo, w - lo);
        }
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
    for (size_t i = 0; i < nser; i++)
        free(ser[i].key);
    free(ser);
    free(lg);
}

/* ---- start-up loads (loop thread, blocking) ---- */

int store_load_latest(struct store *s, store_latest_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_LATEST, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct point p = { 0 };
        const char *device = store_col_text(st, 0);
        p.key = store_col_text(st, 1);
        p.ts_ms = sqlite3_column_int64(st, 2);
        rc = store_read_value(st, 3, &p);
        if (rc != SQLITE_OK)
            break;
        if (device && p.key)
            fn(ctx, device, &p);
    }
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
        run_query(r, req->q, res);
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
    rc = uv_queue_work(s->loop, &req->work, on_query_work, on_query_done);
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
