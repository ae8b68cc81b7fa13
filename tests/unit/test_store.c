/* tests/unit/test_store.c: the storage layer against a temporary database and a real
 * uv loop: append -> durable -> query (four value types, order, limit, aggregation),
 * rewrites before and after chunking, devices, latest after reopen, injected commit
 * failures, backpressure, close/reopen, retention, broker state and commands,
 * persistent sessions' subscription rows, migrations from schema v1 and v2, the query's
 * snapshot renewed between chunks, the WAL checkpointed at close. Tests wait
 * for conditions by running the loop (UV_RUN_ONCE, a 10 ms tick keeps it turning) until
 * a deadline; every test ends with uv_loop_close() == 0. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <uv.h>

#include "gateway/msg.h"
#include "gateway/ticket.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "storage/store.h"
#include "storage/store_int.h"

#define WAIT_MS 20000

struct event {
    uint64_t upto;
    int ok;
};

struct fixture {
    uv_loop_t loop;
    uv_timer_t tick;             /* keeps UV_RUN_ONCE from sleeping past the deadline */
    char dir[64];
    char path[128];
    struct store_cfg cfg;
    struct store *s;
    struct event events[4096];   /* on_durable calls */
    size_t nevents;
    int pressure[64];            /* on_pressure values */
    size_t npressure;
    int fulls[64];               /* on_full values */
    size_t full_at[64];          /* ... and nevents when each came */
    size_t nfulls;
    int query_done;
    struct store_result *res;
};

/* ---- fixture ---- */

static void on_durable(void *ctx, uint64_t upto, int ok)
{
    struct fixture *f = ctx;

    assert_true(f->nevents < sizeof f->events / sizeof f->events[0]);
    if (f->nevents > 0)
        assert_true(upto > f->events[f->nevents - 1].upto); /* watermark only advances */
    f->events[f->nevents].upto = upto;
    f->events[f->nevents].ok = ok;
    f->nevents++;
}

static void on_pressure(void *ctx, int paused)
{
    struct fixture *f = ctx;

    assert_true(f->npressure < sizeof f->pressure / sizeof f->pressure[0]);
    f->pressure[f->npressure++] = paused;
}

static void on_full(void *ctx, int full)
{
    struct fixture *f = ctx;

    assert_true(f->nfulls < sizeof f->fulls / sizeof f->fulls[0]);
    f->full_at[f->nfulls] = f->nevents;
    f->fulls[f->nfulls++] = full;
}

static void default_cfg(struct fixture *f)
{
    memset(&f->cfg, 0, sizeof f->cfg);
    f->cfg.path = f->path;
    f->cfg.batch_rows = 1000;
    f->cfg.queue_high_rows = 200000;
    f->cfg.queue_low_rows = 50000;
    f->cfg.hot_max_points = 100000;
    /* acks wait for commits: most tests read the database right after an ack; the ack
     * log has tests of its own (test_ack_log_*) */
    f->cfg.no_ack_log = true;
}

static void do_open(struct fixture *f)
{
    f->nevents = 0; /* seqs start over with every open */
    assert_int_equal(store_open(&f->loop, &f->cfg, &f->s), 0);
    assert_non_null(f->s);
    store_set_callbacks(f->s, on_durable, on_pressure, f);
    store_set_full_callback(f->s, on_full);
    f->nfulls = 0;
}

static void do_close(struct fixture *f)
{
    store_close(f->s);
    f->s = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the store's handles finish closing */
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    strcpy(f->dir, "/tmp/gale-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/gale.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    default_cfg(f);
    *state = f;
    return 0;
}

static void remove_db(const char *path)
{
    char p[160];
    const char *sfx[] = { "", "-wal", "-shm", "-journal" };

    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->s)
        do_close(f);
    store_result_free(f->res);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    remove_db(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

typedef int (*cond_fn)(struct fixture *f, const void *arg);

/* Runs the loop until cond holds or WAIT_MS pass; returns cond's final value. */
static int wait_until(struct fixture *f, cond_fn cond, const void *arg)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)WAIT_MS * 1000000;
    int ok;

    uv_timer_start(&f->tick, on_tick, 10, 10);
    while (!(ok = cond(f, arg)) && uv_hrtime() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
    return ok;
}

static int is_durable(struct fixture *f, const void *arg)
{
    return f->s->durable_seq >= *(const uint64_t *)arg;
}

static void wait_durable(struct fixture *f, uint64_t seq)
{
    assert_true(wait_until(f, is_durable, &seq));
}

/* ok of the on_durable call that covered seq (-1 if none did). */
static int outcome_of(const struct fixture *f, uint64_t seq)
{
    for (size_t i = 0; i < f->nevents; i++) {
        if (f->events[i].upto >= seq)
            return f->events[i].ok;
    }
    return -1;
}

/* ---- building messages ---- */

static struct point pnum(const char *key, int64_t ts, double v)
{
    struct point p = { .ts_ms = ts, .key = key, .type = VAL_NUM, .num = v };
    return p;
}

static struct point pbool(const char *key, int64_t ts, int v)
{
    struct point p = { .ts_ms = ts, .key = key, .type = VAL_BOOL, .num = v ? 1 : 0 };
    return p;
}

static struct point ptext(const char *key, int64_t ts, enum val_type type, const char *v)
{
    struct point p = { .ts_ms = ts, .key = key, .type = type, .str = v, .str_len = strlen(v) };
    return p;
}

static uint64_t append(struct fixture *f, const char *dev, const struct point *pts, size_t n)
{
    struct msg *m = msg_new(MSG_TELEMETRY, dev, "devices/x/telemetry", "{}", 2, pts, n);
    uint64_t seq = store_append(f->s, m);

    msg_unref(m); /* the store holds its own reference */
    return seq;
}

static uint64_t append1(struct fixture *f, const char *dev, struct point p)
{
    return append(f, dev, &p, 1);
}

static void compact_now(struct fixture *f)
{
    wait_durable(f, store_compact(f->s));
}

/* ---- queries ---- */

static void on_query(void *ctx, struct store_query *q, struct store_result *res)
{
    struct fixture *f = ctx;

    store_query_free(q);
    store_result_free(f->res);
    f->res = res;
    f->query_done = 1;
}

static int query_finished(struct fixture *f, const void *arg)
{
    (void)arg;
    return f->query_done;
}

struct qspec {
    const char *device;
    const char *keys[4];        /* NULL-terminated; none = every key */
    int64_t from, to;
    size_t limit;
    int desc;
    enum store_agg agg;
    int64_t interval;
};

static const struct store_result *query(struct fixture *f, const struct qspec *spec)
{
    struct store_query *q = calloc(1, sizeof *q);

    assert_non_null(q);
    q->device = xstrdup(spec->device);
    while (q->nkeys < 4 && spec->keys[q->nkeys])
        q->nkeys++;
    if (q->nkeys) {
        q->keys = xcalloc(q->nkeys, sizeof *q->keys);
        for (size_t i = 0; i < q->nkeys; i++)
            q->keys[i] = xstrdup(spec->keys[i]);
    }
    q->from_ms = spec->from;
    q->to_ms = spec->to ? spec->to : INT64_MAX;
    q->limit = spec->limit ? spec->limit : 1000;
    q->desc = spec->desc;
    q->agg = spec->agg;
    q->interval_ms = spec->interval;
    f->query_done = 0;
    assert_int_equal(store_query_telemetry(f->s, q, on_query, f), 0);
    assert_true(wait_until(f, query_finished, NULL));
    assert_int_equal(f->res->rc, 0);
    return f->res;
}

/* ---- direct SQLite inspection ---- */

static int64_t count_rows(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* Points in chunks (the queryable form), and points in the segment log. */
#define SQL_CHUNKED "SELECT coalesce(sum(count), 0) FROM chunks"
#define SQL_LOGGED "SELECT coalesce(sum(npoints), 0) FROM segments"

/* Points acked and not yet chunked: held by the writer (read under its lock). */
static size_t hot_points(struct fixture *f)
{
    size_t n;

    uv_mutex_lock(&f->s->hot_lock);
    n = f->s->hot.npoints;
    uv_mutex_unlock(&f->s->hot_lock);
    return n;
}

static int log_within_bound(struct fixture *f, const void *arg)
{
    struct store_stats st;

    (void)arg;
    store_get_stats(f->s, &st);
    return st.log_points <= 2 * (int64_t)f->cfg.hot_max_points;
}

static int hot_within_bound(struct fixture *f, const void *arg)
{
    (void)arg;
    return hot_points(f) <= f->cfg.hot_max_points;
}

/* ---- tests ---- */

static void test_value_types(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    const struct store_series *ser;
    struct point pts[] = {
        pnum("n", 1000, 21.5), pbool("b", 1000, 1), ptext("s", 1000, VAL_STR, "hello"),
        ptext("j", 1000, VAL_JSON, "{\"a\":[1,2]}"), pnum("n", 2000, -3), pbool("b", 2000, 0),
        ptext("s", 2000, VAL_STR, ""),
    };
    uint64_t seq;

    do_open(f);
    seq = append(f, "dev-1", pts, sizeof pts / sizeof pts[0]);
    assert_int_equal(seq, f->s->last_seq);
    assert_int_equal(store_queued(f->s), 7);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(store_queued(f->s), 0);

    r = query(f, &(struct qspec){ .device = "dev-1", .keys = { "n", "b", "s", "j" } });
    assert_int_equal(r->nseries, 4);
    ser = &r->series[0];
    assert_string_equal(ser->key, "n");
    assert_int_equal(ser->npoints, 2);
    assert_int_equal(ser->points[0].type, VAL_NUM);
    assert_int_equal(ser->points[0].ts_ms, 1000);
    assert_true(ser->points[0].num == 21.5);
    assert_true(ser->points[1].num == -3);
    assert_string_equal(ser->points[1].key, "n");
    ser = &r->series[1];
    assert_string_equal(ser->key, "b");
    assert_int_equal(ser->points[0].type, VAL_BOOL);
    assert_true(ser->points[0].num == 1);
    assert_true(ser->points[1].num == 0);
    ser = &r->series[2];
    assert_int_equal(ser->points[0].type, VAL_STR);
    assert_string_equal(ser->points[0].str, "hello");
    assert_int_equal(ser->points[0].str_len, 5);
    assert_string_equal(ser->points[1].str, "");
    ser = &r->series[3];
    assert_int_equal(ser->points[0].type, VAL_JSON);
    assert_string_equal(ser->points[0].str, "{\"a\":[1,2]}");
    assert_int_equal(ser->truncated, 0);

    /* every key: sorted by key */
    r = query(f, &(struct qspec){ .device = "dev-1" });
    assert_int_equal(r->nseries, 4);
    assert_string_equal(r->series[0].key, "b");
    assert_string_equal(r->series[1].key, "j");
    assert_string_equal(r->series[2].key, "n");
    assert_string_equal(r->series[3].key, "s");

    /* the same after compaction */
    compact_now(f);
    r = query(f, &(struct qspec){ .device = "dev-1", .keys = { "j", "b" } });
    assert_int_equal(r->nseries, 2);
    assert_string_equal(r->series[0].points[0].str, "{\"a\":[1,2]}");
    assert_int_equal(r->series[1].points[0].type, VAL_BOOL);

    /* unknown key: an empty series; unknown device: an empty result */
    r = query(f, &(struct qspec){ .device = "dev-1", .keys = { "nope" } });
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 0);
    r = query(f, &(struct qspec){ .device = "ghost" });
    assert_int_equal(r->nseries, 0);
}

/* Expected ts sequences for key "x" holding ts 1..10 (value = ts * 1.5). */
static const struct {
    struct qspec q;
    int64_t ts[10];
    size_t n;
    int truncated;
} order_cases[] = {
    { { .device = "d", .keys = { "x" }, .limit = 3 }, { 1, 2, 3 }, 3, 1 },
    { { .device = "d", .keys = { "x" }, .limit = 3, .desc = 1 }, { 10, 9, 8 }, 3, 1 },
    { { .device = "d", .keys = { "x" }, .limit = 10 }, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, 10, 0 },
    { { .device = "d", .keys = { "x" }, .limit = 9, .desc = 1 },
      { 10, 9, 8, 7, 6, 5, 4, 3, 2 }, 9, 1 },
    { { .device = "d", .keys = { "x" }, .limit = 50, .desc = 1 },
      { 10, 9, 8, 7, 6, 5, 4, 3, 2, 1 }, 10, 0 },
    { { .device = "d", .keys = { "x" }, .from = 3, .to = 5 }, { 3, 4, 5 }, 3, 0 },
    { { .device = "d", .keys = { "x" }, .from = 4, .to = 8, .limit = 2, .desc = 1 },
      { 8, 7 }, 2, 1 },
    { { .device = "d", .keys = { "x" }, .from = 4, .to = 6, .limit = 3 }, { 4, 5, 6 }, 3, 0 },
    { { .device = "d", .keys = { "x" }, .from = 11, .to = 20 }, { 0 }, 0, 0 },
};

static void check_order_cases(struct fixture *f)
{
    for (size_t c = 0; c < sizeof order_cases / sizeof order_cases[0]; c++) {
        const struct store_result *r = query(f, &order_cases[c].q);
        const struct store_series *ser = &r->series[0];

        assert_int_equal(r->nseries, 1);
        assert_int_equal(ser->npoints, order_cases[c].n);
        assert_int_equal(ser->truncated, order_cases[c].truncated);
        for (size_t i = 0; i < ser->npoints; i++) {
            assert_int_equal(ser->points[i].ts_ms, order_cases[c].ts[i]);
            assert_true(ser->points[i].num == (double)ser->points[i].ts_ms * 1.5);
        }
    }
}

static void test_order_limit_both_tiers(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    do_open(f);
    /* all in the log */
    for (int ts = 10; ts >= 1; ts--) /* arrival order is not ts order */
        seq = append1(f, "d", pnum("x", ts, ts * 1.5));
    wait_durable(f, seq);
    check_order_cases(f);
    /* all in the main table */
    compact_now(f);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 10);
    assert_int_equal(hot_points(f), 0);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM segments"), 0);
    check_order_cases(f);
    /* split: odd ts written again (same values), so chunks and hot points both hold them */
    for (int ts = 1; ts <= 10; ts += 2)
        seq = append1(f, "d", pnum("x", ts, ts * 1.5));
    wait_durable(f, seq);
    assert_int_equal(hot_points(f), 5);
    check_order_cases(f);
    /* and a fresh mix: main holds 1..5, the log 6..10 */
    store_delete_device(f->s, "d");
    for (int ts = 1; ts <= 5; ts++)
        append1(f, "d", pnum("x", ts, ts * 1.5));
    compact_now(f);
    for (int ts = 6; ts <= 10; ts++)
        seq = append1(f, "d", pnum("x", ts, ts * 1.5));
    wait_durable(f, seq);
    check_order_cases(f);
}

static const struct {
    struct qspec q;
    int64_t ts[8];
    double v[8];
    size_t n;
    int truncated;
} agg_cases[] = {
    /* key v: ts 0..99, value = ts */
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_AVG, .interval = 10, .limit = 3 },
      { 0, 10, 20 }, { 4.5, 14.5, 24.5 }, 3, 1 },
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_MIN, .interval = 50 },
      { 0, 50 }, { 0, 50 }, 2, 0 },
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_MAX, .interval = 50, .desc = 1 },
      { 50, 0 }, { 99, 49 }, 2, 0 },
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_SUM, .interval = 100 },
      { 0 }, { 4950 }, 1, 0 },
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_COUNT, .interval = 30, .limit = 2,
        .desc = 1 },
      { 90, 60 }, { 10, 30 }, 2, 1 },
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_COUNT, .interval = 30, .from = 25,
        .to = 64 },
      { 0, 30, 60 }, { 5, 30, 5 }, 3, 0 },
    /* interval <= 0: one bucket stamped with its earliest ts */
    { { .device = "a", .keys = { "v" }, .agg = STORE_AGG_AVG, .interval = 0, .from = 10,
        .to = 19 },
      { 10 }, { 14.5 }, 1, 0 },
    /* key b: bool, true on even ts */
    { { .device = "a", .keys = { "b" }, .agg = STORE_AGG_AVG, .interval = 100 },
      { 0 }, { 0.5 }, 1, 0 },
    /* key s: strings only, no bucket */
    { { .device = "a", .keys = { "s" }, .agg = STORE_AGG_COUNT, .interval = 10 },
      { 0 }, { 0 }, 0, 0 },
    /* key neg: ts -25, -15, -5, 5: buckets floor toward minus infinity */
    { { .device = "a", .keys = { "neg" }, .agg = STORE_AGG_SUM, .interval = 10,
        .from = INT64_MIN },
      { -30, -20, -10, 0 }, { 1, 2, 3, 4 }, 4, 0 },
};

static void check_agg_cases(struct fixture *f)
{
    for (size_t c = 0; c < sizeof agg_cases / sizeof agg_cases[0]; c++) {
        const struct store_result *r = query(f, &agg_cases[c].q);
        const struct store_series *ser = &r->series[0];

        assert_int_equal(r->nseries, 1);
        assert_int_equal(ser->npoints, agg_cases[c].n);
        assert_int_equal(ser->truncated, agg_cases[c].truncated);
        for (size_t i = 0; i < ser->npoints; i++) {
            assert_int_equal(ser->points[i].ts_ms, agg_cases[c].ts[i]);
            assert_int_equal(ser->points[i].type, VAL_NUM);
            assert_true(ser->points[i].num == agg_cases[c].v[i]);
        }
    }
}

static void test_aggregation(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    do_open(f);
    for (int ts = 0; ts < 100; ts++) {
        struct point pts[] = { pnum("v", ts, ts), pbool("b", ts, ts % 2 == 0),
                               ptext("s", ts, VAL_STR, "x") };
        seq = append(f, "a", pts, 3);
        if (ts == 49) /* first half compacted, second half in the log */
            compact_now(f);
    }
    for (int i = 0; i < 4; i++)
        seq = append1(f, "a", pnum("neg", -25 + 10 * i, i + 1));
    wait_durable(f, seq);
    check_agg_cases(f);
    compact_now(f);
    check_agg_cases(f);
}

static void test_replay_replaces(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    struct point twice[] = { pnum("k", 5, 4), pnum("k", 5, 5) };
    uint64_t seq;

    do_open(f);
    append1(f, "d", pnum("k", 5, 1));
    seq = append1(f, "d", pnum("k", 5, 2));
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 2);

    compact_now(f);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 1);
    assert_int_equal(hot_points(f), 0);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 2);

    /* a replay in the log shadows the main table */
    seq = append1(f, "d", pnum("k", 5, 3));
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" }, .desc = 1 });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 3);

    /* two replays in one message: the later one wins, before and after compaction */
    seq = append(f, "d", twice, 2);
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d" });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 5);
    compact_now(f);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 1);
    r = query(f, &(struct qspec){ .device = "d", .agg = STORE_AGG_COUNT, .interval = 10 });
    assert_true(r->series[0].points[0].num == 1);
    r = query(f, &(struct qspec){ .device = "d" });
    assert_true(r->series[0].points[0].num == 5);
}

/* Chunking is cut into slices of bounded work, each its own transaction: 40 series of
 * 900 points (below the 1000 that make a series ready) chunked by a forced chunking
 * take at least 36000 / (STORE_SLICE_MAX_POINTS + 900) slices, every point ends in a
 * chunk exactly once, the segments are gone and the counters say so. */
static void test_chunking_in_bounded_slices(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    struct store_stats st;
    struct point pts[16];
    char key[16];
    uint64_t seq = 0;

    do_open(f);
    for (int ts = 0; ts < 900; ts++) {
        for (int k = 0; k < 40; k += 16) {
            size_t n = 0;
            for (int j = k; j < k + 16 && j < 40; j++) {
                snprintf(key, sizeof key, "k%02d", j);
                pts[n] = pnum("", ts, ts * 0.5 + j);
                pts[n++].key = strdup(key);
            }
            seq = append(f, "d", pts, n);
            for (size_t i = 0; i < n; i++)
                free((char *)pts[i].key);
        }
    }
    wait_durable(f, seq);
    store_get_stats(f->s, &st);
    assert_int_equal(st.hot_points, 36000);
    assert_int_equal(st.slices, 0);
    assert_int_equal(st.log_points, 36000);
    compact_now(f);
    store_get_stats(f->s, &st);
    assert_int_equal(st.hot_points, 0);
    assert_int_equal(st.log_points, 0);
    assert_true(st.slices >= (36000 + STORE_SLICE_MAX_POINTS + 900 - 1) /
                                 (STORE_SLICE_MAX_POINTS + 900));
    assert_int_equal(st.points_chunked, 36000);
    assert_int_equal(st.chunks_written, 40);
    assert_true(st.slice_us_max > 0 && st.slice_us_total >= st.slice_us_max);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 36000);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM segments"), 0);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k07" }, .from = 899 });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 899 * 0.5 + 7);
}

/* A late point rewrites the chunk it falls into, not the history between it and the
 * present; the chunks of a series never overlap. */
static void test_late_point_rewrites_one_chunk(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    struct store_stats before, after;
    uint64_t seq = 0;

    do_open(f);
    for (int ts = 0; ts < 10000; ts++)
        seq = append1(f, "d", pnum("k", ts, ts));
    wait_durable(f, seq);
    compact_now(f);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM chunks"), 10);
    store_get_stats(f->s, &before);
    append1(f, "d", pnum("k", 500, -1));    /* a rewrite inside the first chunk */
    append1(f, "d", pnum("k", 20000, 7));   /* and the present */
    seq = append1(f, "d", pnum("k", 5000, -2) /* a rewrite inside the sixth */);
    wait_durable(f, seq);
    compact_now(f);
    store_get_stats(f->s, &after);
    /* two chunks rewritten (1000 points each) and the new point: not 10,000 */
    assert_int_equal(after.points_chunked - before.points_chunked, 2001);
    assert_int_equal(count_rows(f->path,
                                "SELECT count(*) FROM chunks a JOIN chunks b ON"
                                " a.series = b.series AND a.id <> b.id AND"
                                " a.start_ts <= b.end_ts AND b.start_ts <= a.end_ts"),
                     0);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 10001);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" }, .limit = 100000 });
    assert_int_equal(r->series[0].npoints, 10001);
    assert_true(r->series[0].points[500].num == -1);
    assert_true(r->series[0].points[5000].num == -2);
    assert_int_equal(r->series[0].points[10000].ts_ms, 20000);
    for (size_t i = 1; i < r->series[0].npoints; i++)
        assert_true(r->series[0].points[i].ts_ms > r->series[0].points[i - 1].ts_ms);
}

static void test_compaction_by_rows(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t seq = 0;

    f->cfg.hot_max_points = 8;
    do_open(f);
    for (int i = 0; i < 3; i++) {
        struct point pts[] = { pnum("a", i, i), pnum("b", i, i), pnum("c", i, i),
                               pnum("a", i, 10 + i) /* replay in the same message */ };
        seq = append(f, "dev", pts, 4);
    }
    wait_durable(f, seq);
    /* 9 distinct points > hot_max_points: the writer chunks the oldest series without
     * being asked until the hot points are within the bound again */
    assert_true(wait_until(f, hot_within_bound, NULL));
    assert_true(count_rows(f->path, SQL_CHUNKED) >= 3);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED) + (int64_t)hot_points(f), 9);
    /* 100 rewrites of one point: one hot point, 100 points in the segments; the log
     * (what a restart replays) is brought back within twice the bound too */
    for (int i = 0; i < 100; i++)
        seq = append1(f, "dev", pnum("z", 5, i));
    wait_durable(f, seq);
    assert_true(wait_until(f, log_within_bound, NULL));
    r = query(f, &(struct qspec){ .device = "dev", .keys = { "z" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_true(r->series[0].points[0].num == 99);
    r = query(f, &(struct qspec){ .device = "dev", .keys = { "a" } });
    assert_int_equal(r->series[0].npoints, 3);
    for (int i = 0; i < 3; i++)
        assert_true(r->series[0].points[i].num == 10 + i);
}

struct devices_seen {
    size_t n;
    char ids[8][16];
    char token[8][16];
    char role[8][16];
    char attrs[8][32];
    char protocol[8][16];
    int64_t created[8], seen[8];
};

static void copy_or_dash(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "-");
}

static void on_device(void *ctx, const struct store_device *d)
{
    struct devices_seen *ds = ctx;

    assert_true(ds->n < 8);
    copy_or_dash(ds->ids[ds->n], 16, d->id);
    copy_or_dash(ds->token[ds->n], 16, d->token_hash);
    copy_or_dash(ds->role[ds->n], 16, d->role);
    copy_or_dash(ds->attrs[ds->n], 32, d->attrs_json);
    copy_or_dash(ds->protocol[ds->n], 16, d->protocol);
    ds->created[ds->n] = d->created_ms;
    ds->seen[ds->n] = d->last_seen_ms;
    ds->n++;
}

struct latest_seen {
    size_t n;
    char dev[16][16], key[16][16], str[16][32];
    int64_t ts[16];
    int type[16];
    double num[16];
};

static void on_latest(void *ctx, const char *device, const struct point *p)
{
    struct latest_seen *ls = ctx;

    assert_true(ls->n < 16);
    snprintf(ls->dev[ls->n], 16, "%s", device);
    snprintf(ls->key[ls->n], 16, "%s", p->key);
    snprintf(ls->str[ls->n], 32, "%s", p->str ? p->str : "");
    ls->ts[ls->n] = p->ts_ms;
    ls->type[ls->n] = p->type;
    ls->num[ls->n] = p->num;
    ls->n++;
}

static void test_devices(void **state)
{
    struct fixture *f = *state;
    struct devices_seen ds = { 0 };
    struct latest_seen ls = { 0 };
    const struct store_result *r;
    uint64_t seq;

    do_open(f);
    store_put_device(f->s, &(struct store_device){ .id = "d1", .token_hash = "h1",
                                                   .role = "device", .attrs_json = "{\"a\":1}",
                                                   .created_ms = 100 });
    store_put_device(f->s, &(struct store_device){ .id = "d2", .token_hash = "h2",
                                                   .created_ms = 200, .protocol = "line" });
    store_touch_device(f->s, "d1", 500, "mqtt");
    store_touch_device(f->s, "d2", 600, NULL); /* keeps its protocol */
    /* replace d1 without a token: the hash stays */
    seq = store_put_device(f->s, &(struct store_device){ .id = "d1", .role = "app",
                                                         .created_ms = 100,
                                                         .last_seen_ms = 700,
                                                         .protocol = "ws" });
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(store_load_devices(f->s, on_device, &ds), 0);
    assert_int_equal(ds.n, 2);
    assert_string_equal(ds.ids[0], "d1");
    assert_string_equal(ds.token[0], "h1");
    assert_string_equal(ds.role[0], "app");
    assert_string_equal(ds.attrs[0], "-");
    assert_string_equal(ds.protocol[0], "ws");
    assert_int_equal(ds.created[0], 100);
    assert_int_equal(ds.seen[0], 700);
    assert_string_equal(ds.ids[1], "d2");
    assert_string_equal(ds.token[1], "h2");
    assert_string_equal(ds.role[1], "device");
    assert_string_equal(ds.protocol[1], "line");
    assert_int_equal(ds.seen[1], 600);

    /* telemetry of both, in both tiers, then delete d1 */
    append1(f, "d1", pnum("t", 1, 1));
    append1(f, "d2", pnum("t", 1, 2));
    compact_now(f);
    append1(f, "d1", pnum("t", 2, 1));
    append1(f, "d1", pnum("u", 2, 1));
    append1(f, "d2", pnum("t", 2, 2));
    seq = store_delete_device(f->s, "d1");
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d1" });
    assert_int_equal(r->nseries, 0);
    r = query(f, &(struct qspec){ .device = "d2" });
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 2);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM series"), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM device_ids"), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(DISTINCT series) FROM chunks"), 1);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 1);
    assert_int_equal(hot_points(f), 1);

    /* the id can come back with fresh telemetry (the writer's id cache was reset) */
    seq = append1(f, "d1", pnum("t", 3, 9));
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d1" });
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, 3);
    seq = store_delete_device(f->s, "d1");
    wait_durable(f, seq);

    /* reopen: d2 only */
    do_close(f);
    do_open(f);
    memset(&ds, 0, sizeof ds);
    assert_int_equal(store_load_devices(f->s, on_device, &ds), 0);
    assert_int_equal(ds.n, 1);
    assert_string_equal(ds.ids[0], "d2");
    assert_int_equal(store_load_latest(f->s, on_latest, &ls), 0);
    assert_int_equal(ls.n, 1);
    assert_string_equal(ls.dev[0], "d2");
    assert_int_equal(ls.ts[0], 2);
}

static void check_latest(struct fixture *f)
{
    static const struct {
        const char *dev, *key;
        int64_t ts;
        int type;
        double num;
        const char *str;
    } want[] = {
        { "d", "a", 10, VAL_NUM, 1, "" },     /* main newer than an old ts in the log */
        { "d", "b", 20, VAL_NUM, 2, "" },     /* log newer than main */
        { "d", "c", 7, VAL_STR, 0, "only" },  /* log only */
        { "d", "e", 10, VAL_NUM, 2, "" },     /* replay in the log beats main */
        { "d", "f", 3, VAL_BOOL, 1, "" },     /* main only */
        { "z", "j", 1, VAL_JSON, 0, "[1]" },
    };
    struct latest_seen ls = { 0 };

    assert_int_equal(store_load_latest(f->s, on_latest, &ls), 0);
    assert_int_equal(ls.n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < ls.n; i++) {
        assert_string_equal(ls.dev[i], want[i].dev);
        assert_string_equal(ls.key[i], want[i].key);
        assert_int_equal(ls.ts[i], want[i].ts);
        assert_int_equal(ls.type[i], want[i].type);
        assert_true(ls.num[i] == want[i].num);
        assert_string_equal(ls.str[i], want[i].str);
    }
}

static void test_latest_after_reopen(void **state)
{
    struct fixture *f = *state;
    uint64_t seq;

    do_open(f);
    append1(f, "d", pnum("a", 10, 1));
    append1(f, "d", pnum("b", 10, 1));
    append1(f, "d", pnum("e", 10, 1));
    append1(f, "d", pbool("f", 3, 1));
    compact_now(f);
    append1(f, "d", pnum("a", 5, 99));
    append1(f, "d", pnum("b", 20, 2));
    append1(f, "d", ptext("c", 7, VAL_STR, "only"));
    append1(f, "d", pnum("e", 10, 2));
    seq = append1(f, "z", ptext("j", 1, VAL_JSON, "[1]"));
    wait_durable(f, seq);
    do_close(f);

    do_open(f);
    check_latest(f); /* latest table overlaid with the log */
    compact_now(f);
    check_latest(f); /* latest table alone */
    do_close(f);
    do_open(f);
    check_latest(f);
}

static void test_commit_failure(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t a, b, b2, c, d;

    do_open(f);
    a = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, a);
    assert_int_equal(outcome_of(f, a), 1);

    /* every try of the next batch fails: reported not durable, rows absent */
    store_fail_next_commits(f->s, STORE_COMMIT_TRIES, SQLITE_IOERR);
    b = append1(f, "d", pnum("k", 2, 2));
    b2 = store_put_device(f->s, &(struct store_device){ .id = "d", .token_hash = "x" });
    wait_durable(f, b2);
    assert_int_equal(outcome_of(f, b), 0);
    assert_int_equal(outcome_of(f, b2), 0);
    for (size_t i = 0; i < f->nevents; i++) { /* nothing covering b was ever ok */
        if (f->events[i].upto >= b) {
            assert_int_equal(f->events[i].ok, 0);
            break;
        }
    }

    /* later batches are fine; a transient failure is retried and succeeds */
    c = append1(f, "d", pnum("k", 3, 3));
    wait_durable(f, c);
    assert_int_equal(outcome_of(f, c), 1);
    store_fail_next_commits(f->s, 1, SQLITE_BUSY);
    d = append1(f, "d", pnum("k", 4, 4));
    wait_durable(f, d);
    assert_int_equal(outcome_of(f, d), 1);

    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 3);
    assert_int_equal(r->series[0].points[0].ts_ms, 1);
    assert_int_equal(r->series[0].points[1].ts_ms, 3);
    assert_int_equal(r->series[0].points[2].ts_ms, 4);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM devices"), 0);
}

/* Index of the on_durable call that covered seq (-1 if none did). */
static int event_of(const struct fixture *f, uint64_t seq)
{
    for (size_t i = 0; i < f->nevents; i++) {
        if (f->events[i].upto >= seq)
            return (int)i;
    }
    return -1;
}

static int seam_left(struct fixture *f)
{
    int n;

    uv_mutex_lock(&f->s->lock);
    n = f->s->fail_commits;
    uv_mutex_unlock(&f->s->lock);
    return n;
}

/* A full disk is not retried, and while full a batch is refused without a try: here the
 * probe interval and the free-space trigger are out of reach, so only the first batch is
 * tried. The loop hears on_full(1) before the failure it caused. Nothing refused is
 * stored, and a reopened store is not full. */
static void test_disk_full_refuses_untried(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t a, b, b2, c;

    f->cfg.full_probe_ms = 3600 * 1000;
    f->cfg.full_probe_free = UINT64_MAX / 4;
    do_open(f);
    a = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, a);
    assert_int_equal(outcome_of(f, a), 1);
    assert_int_equal(f->nfulls, 0);

    store_fail_next_commits(f->s, 1, SQLITE_FULL); /* one try only: no retries */
    b = append1(f, "d", pnum("k", 2, 2));
    b2 = store_put_device(f->s, &(struct store_device){ .id = "d", .token_hash = "x" });
    wait_durable(f, b2);
    assert_int_equal(outcome_of(f, b), 0);
    assert_int_equal(outcome_of(f, b2), 0);
    assert_int_equal(seam_left(f), 0);
    assert_int_equal(f->nfulls, 1);
    assert_int_equal(f->fulls[0], 1);
    assert_true((int)f->full_at[0] <= event_of(f, b)); /* full, then the failure */
    assert_int_equal(f->s->full_reported, 1);

    /* the seam is spent: a try would commit c; it is refused untried */
    c = append1(f, "d", pnum("k", 3, 3));
    wait_durable(f, c);
    assert_int_equal(outcome_of(f, c), 0);
    assert_int_equal(f->nfulls, 1);
    do_close(f);

    default_cfg(f);
    do_open(f);
    assert_int_equal(f->s->full_reported, 0);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM devices"), 0);
}

/* While full, a batch is tried every full_probe_ms (here 1 ms): each try that fails
 * keeps the store full, the first that commits ends it (on_full(0) before its ok).
 * Exactly the committed points are stored. */
static void test_disk_full_probes_and_recovers(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t seqs[200];
    int first_ok = -1;
    size_t n = 0;

    f->cfg.full_probe_ms = 1;
    f->cfg.full_probe_free = UINT64_MAX / 4;
    do_open(f);
    store_fail_next_commits(f->s, 3, SQLITE_FULL);
    while (n < 200 && first_ok < 0) {
        seqs[n] = append1(f, "d", pnum("k", (int64_t)n + 1, (double)n));
        wait_durable(f, seqs[n]);
        if (outcome_of(f, seqs[n]) == 1)
            first_ok = (int)n;
        n++;
    }
    assert_true(first_ok >= 3); /* three tries failed (refusals in between, maybe) */
    assert_int_equal(seam_left(f), 0);
    assert_int_equal(f->nfulls, 2);
    assert_int_equal(f->fulls[0], 1);
    assert_int_equal(f->fulls[1], 0);
    assert_true((int)f->full_at[0] <= event_of(f, seqs[0]));
    assert_true(f->full_at[1] > (size_t)event_of(f, seqs[first_ok - 1]));
    assert_true((int)f->full_at[1] <= event_of(f, seqs[first_ok]));

    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, first_ok + 1);
}

static int full_ended(struct fixture *f, const void *arg)
{
    (void)arg;
    return f->nfulls == 2;
}

/* With no batch to try, the idle writer probes with a one-page commit and reports the
 * end of a full disk by itself. */
static void test_disk_full_idle_probe(void **state)
{
    struct fixture *f = *state;
    uint64_t b, c;

    f->cfg.full_probe_ms = 1;
    f->cfg.full_probe_free = 1; /* any free space is worth a probe */
    do_open(f);
    store_fail_next_commits(f->s, 1, SQLITE_FULL);
    b = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, b);
    assert_int_equal(outcome_of(f, b), 0);
    assert_true(wait_until(f, full_ended, NULL));
    assert_int_equal(f->fulls[0], 1);
    assert_int_equal(f->fulls[1], 0);
    c = append1(f, "d", pnum("k", 2, 2));
    wait_durable(f, c);
    assert_int_equal(outcome_of(f, c), 1);
    assert_int_equal(f->nfulls, 2);
}

static void test_backpressure(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    f->cfg.queue_high_rows = 10;
    f->cfg.queue_low_rows = 5;
    do_open(f);
    for (int i = 0; i < 2; i++) {
        struct point pts[] = { pnum("a", i, i), pnum("b", i, i), pnum("c", i, i),
                               pnum("d", i, i) };
        seq = append(f, "dev", pts, 4);
    }
    assert_int_equal(store_queued(f->s), 8);
    assert_int_equal(f->npressure, 0);
    for (int i = 2; i < 6; i++) {
        struct point pts[] = { pnum("a", i, i), pnum("b", i, i), pnum("c", i, i),
                               pnum("d", i, i) };
        seq = append(f, "dev", pts, 4);
    }
    assert_int_equal(store_queued(f->s), 24);
    assert_int_equal(f->npressure, 1); /* once, at the crossing */
    assert_int_equal(f->pressure[0], 1);
    wait_durable(f, seq);
    assert_int_equal(store_queued(f->s), 0);
    assert_int_equal(f->npressure, 2);
    assert_int_equal(f->pressure[1], 0);
}

static void test_close_flushes_and_reopen(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t seq = 0;

    f->cfg.batch_rows = 7;
    do_open(f); /* the loop never runs: only size and close seal */
    for (int i = 0; i < 200; i++) {
        struct point pts[] = { pnum("a", i, i), ptext("s", i, VAL_STR, "v") };
        seq = append(f, "dev", pts, 2);
    }
    do_close(f); /* without running the loop: close commits and reports everything */
    assert_true(f->nevents > 0);
    assert_int_equal(f->events[f->nevents - 1].upto, seq);
    assert_int_equal(outcome_of(f, seq), 1);

    do_open(f);
    r = query(f, &(struct qspec){ .device = "dev", .limit = 1000 });
    assert_int_equal(r->nseries, 2);
    assert_int_equal(r->series[0].npoints, 200);
    assert_int_equal(r->series[1].npoints, 200);
    assert_int_equal(r->series[0].truncated, 0);
}

static void test_non_telemetry_gets_seq(void **state)
{
    struct fixture *f = *state;
    struct msg *m;
    uint64_t s1, s2;

    do_open(f);
    m = msg_new(MSG_PLAIN, "dev", "some/topic", "x", 1, NULL, 0);
    s1 = store_append(f->s, m);
    msg_unref(m);
    m = msg_new(MSG_TELEMETRY, "dev", "devices/dev/telemetry", "{}", 2, NULL, 0);
    s2 = store_append(f->s, m);
    msg_unref(m);
    assert_int_equal(s2, s1 + 1);
    assert_int_equal(store_queued(f->s), 0);
    wait_durable(f, s2);
    assert_int_equal(outcome_of(f, s2), 1);
}

/* ---- broker state and commands ---- */

struct state_seen {
    char log[2048]; /* one line per callback, in call order */
};

static void seen_add(struct state_seen *ss, const char *line)
{
    size_t n = strlen(ss->log);

    assert_true(n + strlen(line) + 2 < sizeof ss->log);
    snprintf(ss->log + n, sizeof ss->log - n, "%s\n", line);
}

static void on_retained(void *ctx, const char *topic, const void *payload, size_t len,
                        uint8_t qos)
{
    char line[128];

    snprintf(line, sizeof line, "R %s %.*s q%d", topic, (int)len, (const char *)payload, qos);
    seen_add(ctx, line);
}

static void on_session(void *ctx, const char *client_id, const char *identity_json)
{
    char line[128];

    snprintf(line, sizeof line, "S %s %s", client_id, identity_json);
    seen_add(ctx, line);
}

static void on_session_sub(void *ctx, const char *client_id, const char *filter, uint64_t qos)
{
    char line[128];

    snprintf(line, sizeof line, "F %s %s q%d", client_id, filter, (int)qos);
    seen_add(ctx, line);
}

static void on_session_msg(void *ctx, const char *client_id, uint64_t msg_id, const char *topic,
                           const void *payload, size_t len, uint8_t qos, uint8_t retain)
{
    char line[128];

    snprintf(line, sizeof line, "M %s %llu %s [%.*s] q%d r%d", client_id,
             (unsigned long long)msg_id, topic, (int)len, (const char *)payload, qos, retain);
    seen_add(ctx, line);
}

static void on_command(void *ctx, const struct store_command *c)
{
    char line[256];

    snprintf(line, sizeof line, "C %s %s %s %s %s %s %lld %lld %lld", c->id, c->device, c->name,
             c->params_json ? c->params_json : "-", c->status, c->reply_json ? c->reply_json : "-",
             (long long)c->created_ms, (long long)c->updated_ms, (long long)c->expires_ms);
    seen_add(ctx, line);
}

static void check_state(struct fixture *f)
{
    struct state_seen ss = { { 0 } };

    assert_int_equal(store_load_retained(f->s, on_retained, &ss), 0);
    assert_int_equal(store_load_sessions(f->s, on_session, on_session_sub, on_session_msg, &ss), 0);
    assert_int_equal(store_load_commands(f->s, 1000, on_command, &ss), 0);
    assert_string_equal(ss.log,
                        "R a/1 one q1\n"
                        "R a/3 three q0\n"
                        "S c1 [{\"filter\":\"x/#\",\"qos\":1}]\n"
                        "M c1 1 t/1 [p1] q1 r0\n"
                        "M c1 3 t/3 [] q2 r1\n"
                        "S c3 []\n"
                        "C k2 dev cfg - queued - 1000 1000 9000\n"
                        "C k1 dev reboot {\"now\":true} replied {\"ok\":1} 2000 2500 9000\n");
}

static void test_broker_state_and_commands(void **state)
{
    struct fixture *f = *state;
    uint64_t seq;

    do_open(f);
    store_put_retained(f->s, "a/1", "old", 3, 0);
    store_put_retained(f->s, "a/1", "one", 3, 1); /* replaces */
    store_put_retained(f->s, "a/2", "two", 3, 1);
    store_put_retained(f->s, "a/2", NULL, 0, 0);  /* empty payload deletes */
    store_put_retained(f->s, "a/3", "three", 5, 0);
    store_put_session(f->s, "c1", "[]");
    store_put_session(f->s, "c1", "[{\"filter\":\"x/#\",\"qos\":1}]");
    store_put_session_msg(f->s, "c1", 3, "t/3", "", 0, 2, 1); /* out of order, empty payload */
    store_put_session_msg(f->s, "c1", 1, "t/1", "p1", 2, 1, 0);
    store_put_session_msg(f->s, "c1", 2, "t/2", "p2", 2, 1, 0);
    store_delete_session_msg(f->s, "c1", 2);
    store_put_session(f->s, "c2", "[]");
    store_put_session_msg(f->s, "c2", 1, "t/1", "gone", 4, 1, 0);
    store_delete_session(f->s, "c2"); /* with its messages */
    store_put_session(f->s, "c3", "[]");
    store_put_command(f->s, &(struct store_command){ .id = "k1", .device = "dev",
                                                     .name = "reboot",
                                                     .params_json = "{\"now\":true}",
                                                     .status = "queued", .created_ms = 2000,
                                                     .updated_ms = 2000, .expires_ms = 9000 });
    store_put_command(f->s, &(struct store_command){ .id = "k1", .device = "dev",
                                                     .name = "reboot",
                                                     .params_json = "{\"now\":true}",
                                                     .status = "replied",
                                                     .reply_json = "{\"ok\":1}",
                                                     .created_ms = 2000, .updated_ms = 2500,
                                                     .expires_ms = 9000 });
    store_put_command(f->s, &(struct store_command){ .id = "k2", .device = "dev",
                                                     .name = "cfg", .status = "queued",
                                                     .created_ms = 1000, .updated_ms = 1000,
                                                     .expires_ms = 9000 });
    seq = store_put_command(f->s, &(struct store_command){ .id = "k0", .device = "dev",
                                                           .name = "old", .status = "expired",
                                                           .created_ms = 999 });
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM session_msgs"), 2);
    check_state(f);
    do_close(f);
    do_open(f);
    check_state(f);
}

/* A version 1 database (telemetry only) is upgraded in place and keeps its data. */
/* Builds the schema of version v at f->path as the builds of that version made it
 * (their migration SQL), plus extra SQL; the store is closed. */
static void make_old_db(struct fixture *f, int v, const char *extra)
{
    sqlite3 *db;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    for (int i = 0; i < v; i++)
        assert_int_equal(sqlite3_exec(db, store_migration_sql(i), NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, extra, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* v1 (rows per point: a compacted table and a log) -> chunks: every value survives,
 * the newest log row of a (series, ts) wins over the table and older log rows. */
static void test_migration_v1_to_chunks(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t seq;

    make_old_db(f, 1,
                "INSERT INTO device_ids VALUES (1, 'd'), (2, 'e');"
                "INSERT INTO series VALUES (1, 1, 'k'), (2, 1, 's'), (3, 2, 'k');"
                "INSERT INTO telemetry VALUES (1, 1, 0, 42.5), (1, 2, 0, 1.0), (2, 1, 2, 'x'),"
                " (3, 5, 1, 1);"
                "INSERT INTO latest VALUES (1, 2, 0, 1.0);"
                "INSERT INTO telemetry_log VALUES (1, 2, 0, 7.0), (1, 2, 0, 8.0), (1, 3, 3,"
                " '{\"a\":1}'), (2, 0, 2, 'y');");
    do_open(f);
    assert_int_equal(count_rows(f->path, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM sqlite_master"
                                         " WHERE name IN ('telemetry', 'telemetry_log', 'latest')"),
                     0);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 6);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 3);
    assert_true(r->series[0].points[0].num == 42.5);
    assert_true(r->series[0].points[1].num == 8.0);
    assert_int_equal(r->series[0].points[2].type, VAL_JSON);
    assert_string_equal(r->series[0].points[2].str, "{\"a\":1}");
    r = query(f, &(struct qspec){ .device = "d", .keys = { "s" }, .from = INT64_MIN });
    assert_int_equal(r->series[0].npoints, 2);
    assert_string_equal(r->series[0].points[0].str, "y");
    assert_string_equal(r->series[0].points[1].str, "x");
    r = query(f, &(struct qspec){ .device = "e" });
    assert_int_equal(r->series[0].points[0].type, VAL_BOOL);
    /* the converted series take new writes, and a rewrite of a converted point wins */
    seq = append1(f, "d", pnum("k", 1, 99));
    wait_durable(f, seq);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_true(r->series[0].points[0].num == 99);
    compact_now(f);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 3);
    assert_true(r->series[0].points[0].num == 99);
    seq = store_put_retained(f->s, "x", "y", 1, 0);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
}

/* A persistent session's subscriptions are rows of their own: put adds or replaces one,
 * delete removes one, deleting the session removes them all; the load feeds them after
 * their session and before its messages. */
static void test_session_subs(void **state)
{
    struct fixture *f = *state;
    static const char want[] = "S c1 {\"user\":\"u\",\"role\":\"app\"}\n"
                               "F c1 a/# q2\n"
                               "F c1 c q0\n"
                               "M c1 1 a/1 [p] q1 r0\n"
                               "S c3 {}\n"
                               "F c3 z q1\n";
    struct state_seen ss = { { 0 } };
    uint64_t seq, prev;

    do_open(f);
    store_put_session(f->s, "c1", "{\"user\":\"u\",\"role\":\"app\"}");
    prev = store_put_session_sub(f->s, "c1", "a/#", 1);
    seq = store_put_session_sub(f->s, "c1", "b/+", 0);
    assert_int_equal(seq, prev + 1); /* each write has its own seq */
    store_put_session_sub(f->s, "c1", "a/#", 2); /* replaces the qos */
    store_delete_session_sub(f->s, "c1", "b/+");
    store_delete_session_sub(f->s, "c1", "never"); /* none: nothing happens */
    store_put_session_sub(f->s, "c1", "c", 0);
    store_put_session_msg(f->s, "c1", 1, "a/1", "p", 1, 1, 0);
    store_put_session(f->s, "c2", "{}");
    store_put_session_sub(f->s, "c2", "x/#", 1);
    store_put_session_sub(f->s, "c2", "y", 0);
    store_delete_session(f->s, "c2"); /* with its subscriptions */
    store_put_session(f->s, "c3", "{}");
    seq = store_put_session_sub(f->s, "c3", "z", 1);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM session_subs"), 3);
    assert_int_equal(
        count_rows(f->path, "SELECT count(*) FROM session_subs WHERE client_id = 'c2'"), 0);
    assert_int_equal(store_load_sessions(f->s, on_session, on_session_sub, on_session_msg, &ss),
                     0);
    assert_string_equal(ss.log, want);
    memset(&ss, 0, sizeof ss);
    assert_int_equal(store_load_sessions(f->s, on_session, NULL, NULL, &ss), 0);
    assert_string_equal(ss.log, "S c1 {\"user\":\"u\",\"role\":\"app\"}\nS c3 {}\n");
    do_close(f);
    do_open(f);
    memset(&ss, 0, sizeof ss);
    assert_int_equal(store_load_sessions(f->s, on_session, on_session_sub, on_session_msg, &ss),
                     0);
    assert_string_equal(ss.log, want);
}

/* A version 2 database keeps each session's identity and subscriptions in one JSON record
 * ({"user","role","subs":[...]}, or a bare subs array): the upgrade moves every well-formed
 * subscription into session_subs and leaves the identity in sessions. */
static void test_migration_v2_to_v3(void **state)
{
    struct fixture *f = *state;
    struct state_seen ss = { { 0 } };
    uint64_t seq;

    /* the v2 layout of the sessions: the v2 table, no session_subs */
    make_old_db(f, 2,
                     "INSERT INTO sessions VALUES"
                     " ('obj', '{\"user\":\"dev-1\",\"role\":\"device\",\"subs\":"
                     "[{\"filter\":\"a/#\",\"qos\":1},{\"filter\":\"b\",\"qos\":0}]}'),"
                     " ('bare', '[{\"filter\":\"x/+\",\"qos\":2}]'),"
                     " ('junk', 'not json'),"
                     " ('nosubs', '{\"user\":\"u\",\"role\":\"app\"}'),"
                     " ('odd', '{\"user\":\"u\",\"subs\":[{\"filter\":1,\"qos\":1},"
                     "{\"qos\":1},\"str\",7,{\"filter\":\"ok\",\"qos\":1.0},"
                     "{\"filter\":\"no\",\"qos\":\"1\"},{\"filter\":\"ok\",\"qos\":2}]}'),"
                     " ('strsubs', '{\"subs\":\"a/#\"}');"
                     "INSERT INTO session_msgs VALUES ('obj', 1, 'a/1', x'70', 1, 0);");

    do_open(f);
    assert_int_equal(count_rows(f->path, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(store_load_sessions(f->s, on_session, on_session_sub, on_session_msg, &ss),
                     0);
    assert_string_equal(ss.log, "S bare {}\n"
                                "F bare x/+ q2\n"
                                "S junk {}\n"
                                "S nosubs {\"user\":\"u\",\"role\":\"app\"}\n"
                                "S obj {\"user\":\"dev-1\",\"role\":\"device\"}\n"
                                "F obj a/# q1\n"
                                "F obj b q0\n"
                                "M obj 1 a/1 [p] q1 r0\n"
                                "S odd {\"user\":\"u\"}\n"
                                "F odd ok q2\n"
                                "S strsubs {}\n");
    /* the upgraded tables take the new writes */
    store_delete_session(f->s, "obj");
    seq = store_put_session_sub(f->s, "bare", "y", 1);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM session_subs"), 3);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM session_msgs"), 0);
}

/* The store keeps the loop alive exactly while operations await durability, so
 * uv_run(UV_RUN_DEFAULT) returns once everything submitted is reported. */
static void test_loop_alive_while_pending(void **state)
{
    struct fixture *f = *state;
    uint64_t seq;

    do_open(f);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    append1(f, "d", pnum("k", 1, 1));
    seq = store_put_device(f->s, &(struct store_device){ .id = "d" });
    assert_int_equal(uv_loop_alive(&f->loop), 1);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->s->durable_seq, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    struct store *s = (struct store *)1;
    sqlite3 *db;

    snprintf(f->path, sizeof f->path, "%s/missing/dir/gale.db", f->dir);
    assert_int_equal(store_open(&f->loop, &f->cfg, &s), GW_ESTORE);
    assert_null(s);

    /* a database from a newer build is refused */
    snprintf(f->path, sizeof f->path, "%s/gale.db", f->dir);
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(store_open(&f->loop, &f->cfg, &s), GW_ESTORE);
    assert_null(s);
    remove_db(f->path);

    /* a fresh one is migrated to the current version */
    do_open(f);
    assert_int_equal(count_rows(f->path, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    store_close(NULL);
}

static void test_retention(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    int64_t now = gw_now_ms(), old = now - 3 * 86400000LL;
    uint64_t seq;

    /* old rows reach the main table while retention is off */
    do_open(f);
    append1(f, "d", pnum("k", old, 1));
    append1(f, "d", pnum("k", old + 1, 2));
    compact_now(f);
    do_close(f);

    f->cfg.retention_days = 1;
    do_open(f);
    append1(f, "d", pnum("k", old + 2, 3)); /* expired on arrival: dropped at compaction */
    seq = append1(f, "d", pnum("k", now, 4));
    wait_durable(f, seq);
    compact_now(f);
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" }, .from = INT64_MIN });
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, now);
    assert_int_equal(count_rows(f->path, SQL_CHUNKED), 1);
}

static void on_query_at_close(void *ctx, struct store_query *q, struct store_result *res)
{
    int *calls = ctx;

    (*calls)++;
    store_query_free(q);
    store_result_free(res);
}

static void test_queries_in_flight_at_close(void **state)
{
    struct fixture *f = *state;
    int calls = 0;
    uint64_t seq;

    do_open(f);
    seq = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, seq);
    for (int i = 0; i < 8; i++) {
        struct store_query *q = xcalloc(1, sizeof *q);
        q->device = xstrdup("d");
        q->to_ms = INT64_MAX;
        q->limit = 10;
        assert_int_equal(store_query_telemetry(f->s, q, on_query_at_close, &calls), 0);
    }
    do_close(f); /* answers all eight, one way or the other */
    assert_int_equal(calls, 8);
}

static void on_latest_count(void *ctx, const char *device, const struct point *p)
{
    (void)device;
    (void)p;
    (*(int *)ctx)++;
}

/* The bus sink stores telemetry only and names the write in the publisher's ticket;
 * store_pending holds until that write is reported. */
static void test_sink_and_pending(void **state)
{
    struct fixture *f = *state;
    struct point p = pnum("k", 5, 1.5);
    struct ticket t = { 0 }, none = { 0 };
    struct msg *m;

    do_open(f);
    assert_false(store_pending(f->s));
    m = msg_new(MSG_PLAIN, "dev", "some/topic", "x", 1, NULL, 0);
    store_sink(f->s, m, &none);
    msg_unref(m);
    m = msg_new(MSG_TELEMETRY, "", "devices/x/telemetry", "{}", 2, &p, 1); /* no device */
    store_sink(f->s, m, &none);
    msg_unref(m);
    assert_true(ticket_empty(&none));
    assert_false(store_pending(f->s));

    m = msg_new(MSG_TELEMETRY, "dev", "devices/dev/telemetry", "{}", 2, &p, 1);
    store_sink(f->s, m, &t);
    store_sink(f->s, m, NULL); /* nobody waits: still stored */
    msg_unref(m);
    assert_int_equal(t.first, 1);
    assert_int_equal(t.last, 1);
    assert_true(store_pending(f->s));
    assert_int_equal(store_queued(f->s), 2);
    wait_durable(f, 2);
    assert_false(store_pending(f->s));
    assert_int_equal(outcome_of(f, 1), 1);
    assert_int_equal(count_rows(f->path, SQL_LOGGED), 2);
}

/* A value type outside enum val_type is an error both ways: never stored, never served. */
static void test_unknown_value_type(void **state)
{
    struct fixture *f = *state;
    struct point bad = pnum("k", 2, 2);
    struct store_query *q;
    sqlite3 *db;
    uint64_t a, b;
    int calls = 0;

    bad.type = (enum val_type)7;
    do_open(f);
    a = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, a);
    b = append1(f, "d", bad);
    wait_durable(f, b);
    assert_int_equal(outcome_of(f, a), 1);
    assert_int_equal(outcome_of(f, b), 0);
    assert_int_equal(count_rows(f->path, SQL_LOGGED), 1);

    /* a chunk the codec refuses fails the query and the latest load */
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO chunks(series, start_ts, end_ts, count, data)"
                                      " SELECT id, 9, 9, 1, x'0107' FROM series",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    q = xcalloc(1, sizeof *q);
    q->device = xstrdup("d");
    q->to_ms = INT64_MAX;
    q->limit = 10;
    f->query_done = 0;
    assert_int_equal(store_query_telemetry(f->s, q, on_query, f), 0);
    assert_true(wait_until(f, query_finished, NULL));
    assert_int_equal(f->res->rc, GW_ESTORE);
    assert_int_equal(store_load_latest(f->s, on_latest_count, &calls), GW_ESTORE);
}

/* Group commit never sleeps: with the writer idle, a write is sealed in the loop
 * iteration that made it and is durable after one commit, with no timer between. */
static void test_idle_writer_seals_at_once(void **state)
{
    struct fixture *f = *state;
    uint64_t t0, seq;

    f->cfg.batch_delay_ms = 60000; /* what nobody awaits may wait: an ack never does */
    do_open(f);
    seq = append1(f, "d", pnum("k", 1, 1));
    assert_non_null(f->s->open);
    store_flush(f->s); /* an ack waits on it */
    uv_run(&f->loop, UV_RUN_NOWAIT); /* one iteration, no waiting */
    assert_null(f->s->open);
    assert_int_equal(f->s->nsealed, 1);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);

    /* the same for operations other than telemetry, and every time */
    for (int i = 0; i < 20; i++) {
        t0 = uv_hrtime();
        seq = store_put_retained(f->s, "t", "v", 1, 0);
        store_flush(f->s);
        wait_durable(f, seq);
        assert_true(uv_hrtime() - t0 < 2000ull * 1000000); /* one commit, not a delay */
    }
    assert_int_equal(outcome_of(f, seq), 1);

    /* a write nobody awaits waits for company (batch_delay_ms) until someone does */
    seq = append1(f, "d", pnum("k", 2, 2));
    for (int i = 0; i < 5; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_non_null(f->s->open);
    assert_int_equal(f->s->nsealed, 0);
    store_flush(f->s);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_null(f->s->open);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
}

/* A write nobody awaits is committed batch_delay_ms after it opened its batch: not at
 * the end of the iteration (the timer holds it, due within the delay), and without anyone
 * flushing. No wall-clock assertion: a loaded machine only makes the wait longer. */
static void test_unawaited_write_waits_at_most_the_delay(void **state)
{
    struct fixture *f = *state;
    uint64_t seq;

    f->cfg.batch_delay_ms = 60000;
    do_open(f);
    seq = append1(f, "d", pnum("k", 1, 1));
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_non_null(f->s->open); /* not sealed at the end of the iteration... */
    assert_true(f->s->delay_on && uv_is_active((uv_handle_t *)&f->s->h->delay));
    assert_true(uv_timer_get_due_in(&f->s->h->delay) <= 60000); /* ...the delay timer holds it */
    do_close(f); /* (close seals and commits it) */

    f->cfg.batch_delay_ms = 5;
    do_open(f);
    seq = append1(f, "d", pnum("k", 2, 2));
    wait_durable(f, seq); /* ...and committed by it, with nobody flushing */
    assert_int_equal(outcome_of(f, seq), 1);
}

static int todo_empty(struct fixture *f, const void *arg)
{
    int empty;
    (void)arg;
    uv_mutex_lock(&f->s->lock);
    empty = f->s->todo_head == NULL;
    uv_mutex_unlock(&f->s->lock);
    return empty;
}

/* While the writer commits one batch, the next awaited one is sealed at once, so the
 * writer finds it the moment it is done (no idle gap); arrivals after that ride in the
 * open batch (sealed at batch_rows) until the writer takes the waiting one. */
static void test_busy_writer_rides_next_batch(void **state)
{
    struct fixture *f = *state;
    uint64_t a, b, c, d;

    f->cfg.batch_rows = 2;
    f->cfg.batch_delay_ms = 60000;
    do_open(f);
    store_fail_next_commits(f->s, 2, SQLITE_BUSY); /* the first batch takes >= 150 ms */
    a = append1(f, "d", pnum("k", 1, 1));
    store_flush(f->s);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_null(f->s->open);
    assert_true(wait_until(f, todo_empty, NULL)); /* the writer took a: it is busy */
    b = append1(f, "d", pnum("k", 2, 2));
    store_flush(f->s);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_null(f->s->open); /* sealed behind a, ready for the writer */
    assert_int_equal(f->s->nsealed, 2);
    c = append1(f, "d", pnum("k", 3, 3));
    store_flush(f->s);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_non_null(f->s->open); /* b waits for the writer: c rides in the open batch */
    assert_int_equal(f->s->open->nitems, 1);
    d = append1(f, "d", pnum("k", 4, 4)); /* batch_rows reached: sealed behind b */
    assert_null(f->s->open);
    assert_int_equal(f->s->nsealed, 3);

    wait_durable(f, d);
    assert_int_equal(outcome_of(f, a), 1);
    assert_int_equal(outcome_of(f, b), 1);
    assert_int_equal(outcome_of(f, c), 1);
    assert_int_equal(outcome_of(f, d), 1);
    assert_int_equal(count_rows(f->path, SQL_LOGGED), 4);
}

/* storage.sync=normal: the loop commits an awaited batch itself while the writer is idle
 * (no thread hand-off), and hands it to the writer while the writer holds the write
 * connection (here, its chunk slices, which the loop's commits keep making due). Every
 * write is durable once, in order; the hot points and chunks hold every value. Under TSan
 * (make test-tsan) this is the race between the loop's commits and the writer's work. */
static void test_inline_commits_race_the_writer(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0, inline_seen = 0;
    const struct store_result *r;
    struct store_stats st;

    f->cfg.sync = STORE_SYNC_NORMAL;
    f->cfg.no_ack_log = true; /* acks wait for commits: the loop's own, or the writer's */
    f->cfg.batch_delay_ms = 60000;
    do_open(f);
    for (int i = 0; i < 3000; i++) {
        seq = append1(f, i % 3 == 0 ? "a" : "b", pnum("k", i, i));
        store_flush(f->s);
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (!f->s->open && f->s->durable_seq == seq)
            inline_seen++; /* committed and reported within the iteration: by the loop */
        if (i % 500 == 499)
            store_compact(f->s); /* chunk slices on the writer, between the loop's commits */
    }
    wait_durable(f, seq);
    assert_true(inline_seen > 0);
    assert_int_equal(outcome_of(f, seq), 1);
    store_get_stats(f->s, &st);
    assert_int_equal(st.hot_points + st.points_chunked >= 3000, 1);
    r = query(f, &(struct qspec){ .device = "b", .keys = { "k" }, .limit = 5000 });
    assert_int_equal(r->series[0].npoints, 2000);
    r = query(f, &(struct qspec){ .device = "a", .keys = { "k" }, .limit = 5000 });
    assert_int_equal(r->series[0].npoints, 1000);
}

/* ---- the ack log (sync=normal) ---- */

/* Files "gale.db-ack.<n>" beside the database. */
static int count_log_files(const struct fixture *f)
{
    DIR *d = opendir(f->dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "gale.db-ack.", 12) == 0;
    closedir(d);
    return n;
}

static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* A record: one point of dev (key "k"), and a device put of put_id when set. */
static void log_record(struct buf *b, uint64_t lsn, const char *dev, int64_t ts,
                       const char *put_id)
{
    size_t start = store_log_begin(b);
    struct point p = pnum("k", ts, (double)ts);
    struct msg *m = msg_new(MSG_TELEMETRY, dev, "", NULL, 0, &p, 1);

    store_log_put_msg(b, m);
    msg_unref(m);
    if (put_id) {
        struct store_op *op = store_op_new(STORE_OP_PUT_DEVICE, put_id);
        op->role = xstrdup("device");
        op->created_ms = 5;
        store_log_put_op(b, op);
        store_op_free(op);
    }
    store_log_end(b, start, lsn);
}

static int log_caught_up(struct fixture *f, const void *arg)
{
    (void)arg;
    return f->s->log.committed_lsn == f->s->log.last_lsn;
}

/* An ack stands on the log: with the writer held off the write connection, a flushed
 * write is still reported durable, one record in one file; a query waits until the writer
 * has committed it (a read sees every acked write), and the clean close leaves no file.
 * Without the log the same write waits for the writer. */
static void test_ack_log_acks_before_the_commit(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    struct store_query *q;
    uint64_t seq;

    f->cfg.sync = STORE_SYNC_NORMAL;
    f->cfg.no_ack_log = false;
    do_open(f);
    wait_durable(f, append1(f, "d", pnum("k", 1, 1))); /* the writer is idle after this */
    uv_mutex_lock(&f->s->db_lock); /* the writer cannot commit now */
    seq = append1(f, "d", pnum("k", 2, 2));
    store_flush(f->s);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(count_log_files(f), 1);
    assert_true(f->s->log.records >= 2);
    assert_true(f->s->log.committed_lsn < f->s->log.last_lsn);
    q = calloc(1, sizeof *q);
    assert_non_null(q);
    q->device = xstrdup("d");
    q->to_ms = INT64_MAX;
    q->limit = 10;
    f->query_done = 0;
    assert_int_equal(store_query_telemetry(f->s, q, on_query, f), 0);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->query_done, 0); /* waits for the commit */
    uv_mutex_unlock(&f->s->db_lock);
    assert_true(wait_until(f, query_finished, NULL));
    r = f->res;
    assert_int_equal(r->rc, 0);
    assert_int_equal(r->nseries, 1);
    assert_int_equal(r->series[0].npoints, 2);
    do_close(f);
    assert_int_equal(count_log_files(f), 0);

    f->cfg.no_ack_log = true;
    do_open(f);
    wait_durable(f, append1(f, "d", pnum("k", 3, 3)));
    uv_mutex_lock(&f->s->db_lock);
    seq = append1(f, "d", pnum("k", 4, 4));
    store_flush(f->s);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(f->s->durable_seq < seq); /* the ack waits for the writer */
    uv_mutex_unlock(&f->s->db_lock);
    wait_durable(f, seq);
    assert_int_equal(count_log_files(f), 0);
}

/* sync=full: the ack waits for the syncer's fdatasync of the log, not for the writer; a
 * compaction (its seq means "chunked") is never acked by the log. */
static void test_ack_log_full_syncs(void **state)
{
    struct fixture *f = *state;
    uint64_t seq;

    f->cfg.sync = STORE_SYNC_FULL;
    f->cfg.no_ack_log = false;
    do_open(f);
    assert_true(f->s->log.sync);
    wait_durable(f, append1(f, "d", pnum("k", 1, 1)));
    uv_mutex_lock(&f->s->db_lock);
    for (int i = 2; i < 50; i++)
        seq = append1(f, "d", pnum("k", i, i));
    store_flush(f->s);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    uv_mutex_lock(&f->s->log.sync_lock);
    assert_true(f->s->log.sync_done >= seq);
    uv_mutex_unlock(&f->s->log.sync_lock);
    seq = store_compact(f->s);
    store_flush(f->s);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(f->s->durable_seq < seq);
    uv_mutex_unlock(&f->s->db_lock);
    wait_durable(f, seq);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM segments"), 0);
    do_close(f);
    assert_int_equal(count_log_files(f), 0);
}

static int log_is_stuck(struct fixture *f, const void *arg)
{
    int stuck;

    (void)arg;
    uv_mutex_lock(&f->s->lock);
    stuck = f->s->log_stuck;
    uv_mutex_unlock(&f->s->lock);
    return stuck;
}

/* Caught up and no longer stuck. */
static int log_recovered(struct fixture *f, const void *arg)
{
    return log_caught_up(f, arg) && !log_is_stuck(f, arg);
}

/* A batch the log acked whose commit fails is tried until it commits, never reported
 * failed; while it is stuck a later write is refused (reported failed) rather than
 * committed before it, and reads do not wait for it. */
static void test_ack_log_failed_commit_retried(void **state)
{
    struct fixture *f = *state;
    const struct store_result *r;
    uint64_t seq, seq2;

    f->cfg.sync = STORE_SYNC_NORMAL;
    f->cfg.no_ack_log = false;
    do_open(f);
    store_fail_next_logged_commits(f->s, 1000000, SQLITE_IOERR);
    seq = append1(f, "d", pnum("k", 1, 1));
    store_flush(f->s);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_true(wait_until(f, log_is_stuck, NULL));
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } }); /* answered meanwhile */
    assert_int_equal(r->rc, 0);
    seq2 = append1(f, "d", pnum("k", 2, 2));
    store_flush(f->s);
    wait_durable(f, seq2);
    assert_int_equal(outcome_of(f, seq2), 0); /* refused, not committed ahead of seq */
    store_fail_next_logged_commits(f->s, 0, SQLITE_IOERR);
    /* the writer reports the commit before it clears the flag: wait for both */
    assert_true(wait_until(f, log_recovered, NULL));
    r = query(f, &(struct qspec){ .device = "d", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, 1);
    assert_int_equal(outcome_of(f, seq), 1);
}

static int write_conn_synchronous(struct fixture *f)
{
    int64_t v = -1;

    uv_mutex_lock(&f->s->db_lock);
    assert_int_equal(store_get_int64(f->s->db, "PRAGMA synchronous", &v), SQLITE_OK);
    uv_mutex_unlock(&f->s->db_lock);
    return (int)v;
}

/* sync=full: a batch the log holds whole commits with synchronous=NORMAL (one fsync per
 * batch: the log's), so its log file stays until a checkpoint has synced its records
 * into the database file; a batch the log lacks (a compaction) commits with FULL. */
static void test_ack_log_full_files_wait_for_a_checkpoint(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    f->cfg.sync = STORE_SYNC_FULL;
    f->cfg.no_ack_log = false;
    do_open(f);
    f->s->log.file_bytes = 1; /* a file per record */
    for (int i = 1; i <= 5; i++) {
        seq = append1(f, "d", pnum("k", i, i));
        store_flush(f->s);
        wait_durable(f, seq);
    }
    assert_true(wait_until(f, log_caught_up, NULL));
    assert_int_equal(write_conn_synchronous(f), 1); /* NORMAL */
    assert_true(store_wal_ckpt_lsn(f->s) < f->s->log.committed_lsn);
    assert_int_equal(count_log_files(f), 5); /* committed, not yet in the database file */
    uv_mutex_lock(&f->s->db_lock);
    store_wal_checkpoint_now(f->s);
    uv_mutex_unlock(&f->s->db_lock);
    assert_int_equal(store_wal_ckpt_lsn(f->s), f->s->log.committed_lsn);
    store_log_committed(f->s, 0);
    assert_int_equal(count_log_files(f), 0);
    seq = store_compact(f->s);
    store_flush(f->s);
    wait_durable(f, seq);
    assert_int_equal(write_conn_synchronous(f), 2); /* FULL */
    /* a clean close checkpoints and leaves no file */
    seq = append1(f, "d", pnum("k", 6, 6));
    store_flush(f->s);
    wait_durable(f, seq);
    assert_int_equal(count_log_files(f), 1);
    do_close(f);
    assert_int_equal(count_log_files(f), 0);
}

/* Start-up commits the records SQLite lacks (past log_state.lsn), in order, stops at a
 * torn record, and removes the files. */
static void test_ack_log_replay(void **state)
{
    struct fixture *f = *state;
    struct devices_seen ds = { 0 };
    const struct store_result *r;
    struct buf b;
    char p[200];
    FILE *fp;
    size_t whole;

    f->cfg.sync = STORE_SYNC_NORMAL;
    f->cfg.no_ack_log = false;
    do_open(f);
    do_close(f);
    exec_sql(f->path, "UPDATE log_state SET lsn = 1");
    buf_init(&b);
    log_record(&b, 1, "a", 1, "ghost");   /* committed already: skipped */
    log_record(&b, 2, "a", 2, NULL);
    log_record(&b, 3, "b", 3, "real");
    whole = b.len;
    log_record(&b, 4, "a", 4, NULL);      /* torn below: never acked */
    snprintf(p, sizeof p, "%s-ack.7", f->path);
    fp = fopen(p, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b.data, 1, whole + (b.len - whole) / 2, fp),
                     whole + (b.len - whole) / 2);
    fclose(fp);
    buf_fini(&b);

    do_open(f);
    assert_int_equal(count_log_files(f), 0);
    assert_int_equal(count_rows(f->path, "SELECT lsn FROM log_state"), 3);
    r = query(f, &(struct qspec){ .device = "a", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, 2);
    r = query(f, &(struct qspec){ .device = "b", .keys = { "k" } });
    assert_int_equal(r->series[0].npoints, 1);
    assert_int_equal(r->series[0].points[0].ts_ms, 3);
    assert_int_equal(store_load_devices(f->s, on_device, &ds), 0);
    assert_int_equal(ds.n, 1);
    assert_string_equal(ds.ids[0], "real");
    /* the next record numbers go on past the replayed ones */
    assert_true(f->s->log.next_lsn > 3);
}

/* Every field of an operation and a message survives the record codec; a flipped byte
 * fails the checksum; a cut record is partial. */
static void test_ack_log_codec(void **state)
{
    struct buf b;
    struct store_op *op = store_op_new(STORE_OP_PUT_SESSION_MSG, "client");
    struct point pts[3] = { pnum("n", -5, 2.5), pbool("b", 7, 1),
                            ptext("s", 1700000000000, VAL_STR, "text") };
    struct msg *m = msg_new(MSG_TELEMETRY, "dev", "", NULL, 0, pts, 3), *m2 = NULL;
    struct store_op *op2 = NULL;
    const uint8_t *body;
    const char *why = NULL;
    size_t blen, pos = 0, start;
    uint64_t lsn = 0;

    (void)state;
    op->topic = xstrdup("t/1");
    op->text = xstrdup("{}");
    op->payload = store_dup_bytes("\0\1\2", 3);
    op->payload_len = 3;
    op->msg_id = 300;
    op->last_id = 1ull << 40;
    op->qos = 2;
    op->retain = 1;
    op->created_ms = -1;
    op->expires_ms = 1700000000000;
    buf_init(&b);
    start = store_log_begin(&b);
    store_log_put_op(&b, op);
    store_log_put_msg(&b, m);
    store_log_end(&b, start, 42);
    assert_int_equal(store_log_record(b.data, b.len, &lsn, &body, &blen, &why), (long)b.len);
    assert_int_equal(lsn, 42);
    assert_int_equal(store_log_item(body, blen, &pos, &m2, &op2, &why), 1);
    assert_non_null(op2);
    assert_int_equal(op2->kind, STORE_OP_PUT_SESSION_MSG);
    assert_string_equal(op2->id, "client");
    assert_string_equal(op2->topic, "t/1");
    assert_string_equal(op2->text, "{}");
    assert_null(op2->device);
    assert_int_equal(op2->payload_len, 3);
    assert_memory_equal(op2->payload, "\0\1\2", 3);
    assert_int_equal(op2->msg_id, 300);
    assert_int_equal(op2->last_id, 1ull << 40);
    assert_int_equal(op2->qos, 2);
    assert_int_equal(op2->retain, 1);
    assert_int_equal(op2->created_ms, -1);
    assert_int_equal(op2->expires_ms, 1700000000000);
    store_op_free(op2);
    assert_int_equal(store_log_item(body, blen, &pos, &m2, &op2, &why), 1);
    assert_non_null(m2);
    assert_string_equal(m2->device, "dev");
    assert_int_equal(m2->npoints, 3);
    assert_int_equal(m2->points[0].ts_ms, -5);
    assert_true(m2->points[0].num == 2.5);
    assert_int_equal(m2->points[1].type, VAL_BOOL);
    assert_true(m2->points[1].num == 1);
    assert_string_equal(m2->points[2].str, "text");
    assert_int_equal(m2->points[2].ts_ms, 1700000000000);
    msg_unref(m2);
    assert_int_equal(store_log_item(body, blen, &pos, &m2, &op2, &why), 0);
    assert_int_equal(store_log_record(b.data, b.len - 1, &lsn, &body, &blen, &why), 0);
    b.data[b.len - 3] ^= 0x10;
    assert_int_equal(store_log_record(b.data, b.len, &lsn, &body, &blen, &why), -1);
    assert_string_equal(why, "checksum mismatch");
    buf_fini(&b);
    store_op_free(op);
    msg_unref(m);
}

/* A pragma's value on the write connection, as text (read before any write, so the
 * writer thread is not using the connection). */
static void write_conn_pragma(struct fixture *f, const char *sql, char *out, size_t len)
{
    sqlite3_stmt *st = NULL;

    assert_int_equal(sqlite3_prepare_v2(f->s->db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    snprintf(out, len, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

/* storage.sync: full (the default) syncs every commit, normal only checkpoints; both
 * in WAL mode. */
static void test_sync_modes(void **state)
{
    struct fixture *f = *state;
    char v[16];
    uint64_t seq;

    do_open(f); /* cfg.sync zeroed: the default */
    write_conn_pragma(f, "PRAGMA synchronous", v, sizeof v);
    assert_string_equal(v, "2"); /* FULL */
    write_conn_pragma(f, "PRAGMA journal_mode", v, sizeof v);
    assert_string_equal(v, "wal");
    seq = append1(f, "d", pnum("k", 1, 1));
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    do_close(f);

    f->cfg.sync = STORE_SYNC_NORMAL;
    do_open(f);
    write_conn_pragma(f, "PRAGMA synchronous", v, sizeof v);
    assert_string_equal(v, "1"); /* NORMAL */
    seq = append1(f, "d", pnum("k", 2, 2));
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    do_close(f);

    f->cfg.sync = STORE_SYNC_FULL;
    do_open(f);
    write_conn_pragma(f, "PRAGMA synchronous", v, sizeof v);
    assert_string_equal(v, "2");
}

/* The water marks count the bytes of every queued write: retained messages and session
 * queues alone (no telemetry rows) pause ingest and resume it once committed. */
static void test_backpressure_counts_bytes(void **state)
{
    struct fixture *f = *state;
    char payload[1024];
    uint64_t seq = 0;
    char topic[32];

    memset(payload, 'x', sizeof payload);
    f->cfg.queue_high_bytes = 64 * 1024;
    f->cfg.queue_low_bytes = 32 * 1024;
    do_open(f);
    for (int i = 0; i < 30; i++) {
        snprintf(topic, sizeof topic, "r/%d", i);
        store_put_retained(f->s, topic, payload, sizeof payload, 1);
    }
    assert_int_equal(f->npressure, 0);
    assert_true(store_queued_bytes(f->s) > 30 * sizeof payload);
    for (int i = 0; i < 40; i++)
        seq = store_put_session_msg(f->s, "c1", (uint64_t)i + 1, "t/1", payload, sizeof payload,
                                    1, 0);
    assert_int_equal(store_queued(f->s), 0); /* not a single telemetry row */
    assert_int_equal(f->npressure, 1);        /* once, at the crossing */
    assert_int_equal(f->pressure[0], 1);
    wait_durable(f, seq);
    assert_int_equal(outcome_of(f, seq), 1);
    assert_int_equal(store_queued_bytes(f->s), 0);
    assert_int_equal(f->npressure, 2);
    assert_int_equal(f->pressure[1], 0);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM session_msgs"), 40);
}

/* ---- the read snapshot and the WAL ---- */

/* The result as text: series, truncated, every point (ts, type, value). */
static char *render_result(const struct store_result *r)
{
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);

    assert_non_null(m);
    for (size_t i = 0; i < r->nseries; i++) {
        const struct store_series *se = &r->series[i];

        fprintf(m, "%s%s:", se->key, se->truncated ? "+" : "");
        for (size_t k = 0; k < se->npoints; k++)
            fprintf(m, " %lld/%d/%.17g", (long long)se->points[k].ts_ms, se->points[k].type,
                    se->points[k].num);
        fputc('\n', m);
    }
    fclose(m);
    return text;
}

static const struct qspec renew_cases[] = {
    { .device = "r", .keys = { "x" }, .limit = 100000 },
    { .device = "r", .keys = { "x" }, .limit = 100000, .desc = 1 },
    { .device = "r", .keys = { "x" }, .from = 1500, .to = 3700, .limit = 100000 },
    { .device = "r", .keys = { "x" }, .from = 1500, .to = 3700, .limit = 100000, .desc = 1 },
    { .device = "r", .keys = { "x" }, .from = 999, .to = 4000, .limit = 2500 },
    { .device = "r", .keys = { "x" }, .limit = 1700, .desc = 1 },
    { .device = "r", .keys = { "x", "y" }, .agg = STORE_AGG_AVG, .interval = 700 },
    { .device = "r", .keys = { "y" }, .agg = STORE_AGG_COUNT, .interval = 1000, .from = 500,
      .desc = 1 },
    { .device = "r", .limit = 100000 },
};

/* A query renews its read snapshot between two chunks once it is old (the seam makes
 * that every chunk): the walk goes on after the last chunk it read, so each answer is
 * the one a single snapshot gives. */
static void test_snapshot_renewed_between_chunks(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    do_open(f);
    for (int ts = 0; ts < 6000; ts++) {
        struct point pts[] = { pnum("x", ts, ts * 0.5), pnum("y", ts, ts) };
        seq = append(f, "r", pts, 2);
    }
    wait_durable(f, seq);
    compact_now(f);
    assert_true(count_rows(f->path, "SELECT count(*) FROM chunks") >= 12);
    /* hot points inside chunks (they win) and past them */
    for (int ts = 0; ts < 6000; ts += 777)
        seq = append1(f, "r", pnum("x", ts, -1.0 - ts));
    for (int ts = 6000; ts < 6100; ts++)
        seq = append1(f, "r", pnum("x", ts, -1.0 - ts));
    wait_durable(f, seq);
    assert_true(hot_points(f) > 100);
    for (size_t c = 0; c < sizeof renew_cases / sizeof renew_cases[0]; c++) {
        char *one, *renewed;
        uint64_t before;

        store_set_snapshot_ms(f->s, 60000); /* one snapshot per query */
        before = __atomic_load_n(&f->s->snapshot_renewals, __ATOMIC_RELAXED);
        one = render_result(query(f, &renew_cases[c]));
        assert_int_equal(__atomic_load_n(&f->s->snapshot_renewals, __ATOMIC_RELAXED), before);
        store_set_snapshot_ms(f->s, 0); /* a new one before every chunk */
        renewed = render_result(query(f, &renew_cases[c]));
        assert_true(__atomic_load_n(&f->s->snapshot_renewals, __ATOMIC_RELAXED) > before);
        if (strcmp(one, renewed) != 0)
            fail_msg("case %zu: one snapshot:\n%.300s\nrenewed:\n%.300s", c, one, renewed);
        free(one);
        free(renewed);
    }
    do_close(f);
}

static off_t file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* store_close leaves a checkpointed database: the WAL is copied in and removed. */
static void test_close_checkpoints_wal(void **state)
{
    struct fixture *f = *state;
    char wal[160];
    uint64_t seq = 0;

    snprintf(wal, sizeof wal, "%s-wal", f->path);
    do_open(f);
    for (int ts = 0; ts < 3000; ts++)
        seq = append1(f, "w", pnum("v", ts, ts));
    wait_durable(f, seq);
    assert_true(file_size(wal) > 0);
    do_close(f);
    assert_true(file_size(wal) <= 0); /* gone (or empty) */
    assert_true(file_size(f->path) > 4096);
    do_open(f);
    assert_int_equal(query(f, &(struct qspec){ .device = "w", .limit = 5000 })->series[0].npoints,
                     3000);
    do_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_value_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_limit_both_tiers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aggregation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction_by_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunking_in_bounded_slices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_point_rewrites_one_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_latest_after_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_refuses_untried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_probes_and_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_idle_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_flushes_and_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_telemetry_gets_seq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_state_and_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_v1_to_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_subs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_v2_to_v3, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_alive_while_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queries_in_flight_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sink_and_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_value_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unawaited_write_waits_at_most_the_delay, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_writer_seals_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_writer_rides_next_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inline_commits_race_the_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_log_acks_before_the_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_log_full_syncs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_log_failed_commit_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_log_full_files_wait_for_a_checkpoint, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ack_log_replay, setup, teardown),
        cmocka_unit_test(test_ack_log_codec),
        cmocka_unit_test_setup_teardown(test_backpressure_counts_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_renewed_between_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_checkpoints_wal, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
