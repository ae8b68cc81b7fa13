/* tests/bench/bench_storage.c: Gale's storage path against the raw SQLite ceiling of
 * the same shape, in the same process, on the same disk.
 *
 * Workload (DESIGN.md "Storage layout"): 1000 devices x 4 keys arriving interleaved
 * (round-robin over devices, one message = 4 keys of one device, ts increasing), N
 * points in total. Runs, interleaved round by round, each on a fresh temporary DB:
 *   ours   the real API: msg_new + store_append on a uv loop (respecting on_pressure),
 *          timed until the last on_durable ("durable": acked; the writer also compacts
 *          every compact_rows rows on the way) and until a forced final compaction is
 *          durable ("compacted": all rows in the (series, ts) table), then checked with
 *          a query.
 *   ours ack-only  the same with compact_rows above N: the ack path alone, until the
 *          last on_durable (the check query then reads the rows from the log).
 *   raw a  one thread, one prepared insert into the same log-table shape, same commit
 *          size: the ceiling of the ack path.
 *   raw b  one thread, INSERT OR REPLACE in arrival order straight into a
 *          (series, ts) WITHOUT ROWID table, same commit size: the naive layout.
 *   raw c  raw a plus the same sorted moves every compact_rows rows and at the end:
 *          the ceiling of the two-tier layout end to end.
 * Prints per-round times, medians and ours/raw rate ratios.
 * --latency N instead times N writes one after another, each waiting for the previous
 * one's ack: ours (store_append, then on_durable) against raw (one insert, one commit),
 * interleaved round by round; prints p50/p99 per write. Both honour --sync, which sets
 * the raw connection's PRAGMA synchronous the same way storage.sync sets ours.
 *
 * Usage: bench_storage [--points N] [--rounds R] [--dir DIR] [--batch-rows N]
 *                      [--compact-rows N] [--skip-b] [--sync full|normal] [--latency N] */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "gateway/msg.h"
#include "base/alloc.h"
#include "storage/store.h"
#include "storage/store_int.h"

#define NDEV 1000
#define NKEYS 4
#define TS0 1700000000000LL
#define MAX_ROUNDS 15

static const char *const keys[NKEYS] = { "temp", "hum", "volt", "rssi" };
static char dev_names[NDEV][16];

struct opts {
    size_t points;
    int rounds;
    const char *dir;
    size_t batch_rows;
    size_t compact_rows;
    int skip_b;
    enum store_sync sync;
    size_t latency;      /* > 0: the sequential-ack run with this many writes */
};

static const char *sync_pragma(const struct opts *o)
{
    return o->sync == STORE_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL";
}

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_storage: %s\n", what);
    exit(1);
}

static void fresh_db(const struct opts *o, char *dir, size_t dirlen, char *path, size_t plen)
{
    snprintf(dir, dirlen, "%s/gale-bench-XXXXXX", o->dir);
    if (!mkdtemp(dir))
        die("mkdtemp failed");
    snprintf(path, plen, "%s/bench.db", dir);
}

static void drop_db(const char *dir, const char *path)
{
    char p[512];
    const char *sfx[] = { "", "-wal", "-shm" };

    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
}

static double value_of(size_t msg, int k)
{
    return (double)(msg % 1000) * 0.5 + k;
}

/* ---- ours ---- */

struct ours {
    const struct opts *o;
    uv_loop_t loop;
    uv_idle_t feeder;
    struct store *s;
    size_t nmsgs, next;          /* messages to send, sent */
    uint64_t last_seq;           /* seq of the last append */
    uint64_t compact_seq;        /* seq of the final compaction */
    int feeding;                 /* feeder is running */
    int ack_only;                /* no compaction: stop timing at durable */
    int failed;                  /* an on_durable reported ok = 0 */
    double t0, t_durable, t_compacted;
    size_t query_points;         /* points of the check query */
};

static void on_feed(uv_idle_t *h)
{
    struct ours *b = h->data;
    struct point pts[NKEYS];

    for (int n = 0; n < 256 && b->next < b->nmsgs && b->feeding; n++) {
        size_t i = b->next++;
        struct msg *m;

        for (int k = 0; k < NKEYS; k++) {
            memset(&pts[k], 0, sizeof pts[k]);
            pts[k].ts_ms = TS0 + (int64_t)(i / NDEV) * 1000;
            pts[k].key = keys[k];
            pts[k].type = VAL_NUM;
            pts[k].num = value_of(i, k);
        }
        m = msg_new(MSG_TELEMETRY, dev_names[i % NDEV], "devices/x/telemetry", NULL, 0, pts,
                    NKEYS);
        b->last_seq = store_append(b->s, m); /* may call on_pressure(1) */
        msg_unref(m);
    }
    if (b->next == b->nmsgs) {
        uv_idle_stop(h);
        b->feeding = 0;
    }
}

static void on_pressure(void *ctx, int paused)
{
    struct ours *b = ctx;

    if (paused && b->feeding) {
        uv_idle_stop(&b->feeder);
        b->feeding = 0;
    } else if (!paused && b->next < b->nmsgs && !b->feeding) {
        b->feeding = 1;
        uv_idle_start(&b->feeder, on_feed);
    }
}

static void on_query(void *ctx, struct store_query *q, struct store_result *res)
{
    struct ours *b = ctx;

    if (res->rc == 0 && res->nseries == 1)
        b->query_points = res->series[0].npoints;
    store_query_free(q);
    store_result_free(res);
    uv_stop(&b->loop);
}

static void start_check_query(struct ours *b)
{
    struct store_query *q = xcalloc(1, sizeof *q);

    q->device = xstrdup(dev_names[7]);
        q->keys = xcalloc(1, sizeof *q->keys);
        q->keys[0] = xstrdup(keys[2]);
        q->nkeys = 1;
        q->from_ms = INT64_MIN;
        q->to_ms = INT64_MAX;
        q->limit = STORE_MAX_LIMIT;
    if (store_query_telemetry(b->s, q, on_query, b) != 0)
        die("query failed");
}

static void on_durable(void *ctx, uint64_t upto, int ok)
{
    struct ours *b = ctx;

    if (!ok)
        b->failed = 1;
    if (b->next < b->nmsgs || upto < b->last_seq)
        return;
    if (b->t_durable == 0) {
        b->t_durable = now_s() - b->t0;
        if (b->ack_only)
            start_check_query(b); /* the rows are still in the log: queries read it too */
        else
            b->compact_seq = store_compact(b->s);
    } else if (b->compact_seq && upto >= b->compact_seq && b->t_compacted == 0) {
        b->t_compacted = now_s() - b->t0;
        start_check_query(b);
    }
}

/* ack_only: compact_rows above N, so the run measures the ack path alone. */
static void run_ours(const struct opts *o, int ack_only, double *durable, double *compacted)
{
    char dir[256], path[300];
    struct ours b = { .o = o, .ack_only = ack_only };
    struct store_cfg cfg = {
        .path = path, .sync = o->sync, .batch_rows = o->batch_rows,
        .queue_high_rows = 200000, .queue_low_rows = 50000,
        .hot_max_points = ack_only ? 2 * o->points + 1 : o->compact_rows,
    };
    size_t expect;

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    b.nmsgs = o->points / NKEYS;
    if (uv_loop_init(&b.loop) != 0 || store_open(&b.loop, &cfg, &b.s) != 0)
        die("store_open failed");
    store_set_callbacks(b.s, on_durable, on_pressure, &b);
    uv_idle_init(&b.loop, &b.feeder);
    b.feeder.data = &b;
    b.feeding = 1;
    b.t0 = now_s();
    uv_idle_start(&b.feeder, on_feed);
    uv_run(&b.loop, UV_RUN_DEFAULT); /* on_query stops it */
    store_close(b.s);
    uv_close((uv_handle_t *)&b.feeder, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&b.loop) != 0)
        die("loop not closed");
    expect = b.nmsgs / NDEV + (7 < b.nmsgs % NDEV);
    if (b.failed || b.query_points != expect) {
        fprintf(stderr, "bench_storage: check failed: failed=%d points=%zu expected=%zu\n",
                b.failed, b.query_points, expect);
        exit(1);
    }
    drop_db(dir, path);
    *durable = b.t_durable;
    if (compacted)
        *compacted = b.t_compacted;
}

/* ---- raw SQLite ---- */

static void exec_or_die(sqlite3 *db, const char *sql)
{
    char *err = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_storage: %s: %s\n", sql, err ? err : "?");
        exit(1);
    }
}

static sqlite3_stmt *prep(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        die(sqlite3_errmsg(db));
    return st;
}

enum raw_kind { RAW_LOG = 0, RAW_PK = 1, RAW_TWO_TIER = 2 };

static void raw_compact(sqlite3_stmt *move, sqlite3_stmt *latest, sqlite3_stmt *clear,
                        sqlite3 *db)
{
    exec_or_die(db, "BEGIN IMMEDIATE");
    if (sqlite3_step(move) != SQLITE_DONE || sqlite3_step(latest) != SQLITE_DONE ||
        sqlite3_step(clear) != SQLITE_DONE)
        die(sqlite3_errmsg(db));
    sqlite3_reset(move);
    sqlite3_reset(latest);
    sqlite3_reset(clear);
    exec_or_die(db, "COMMIT");
}

static double run_raw(const struct opts *o, enum raw_kind kind)
{
    char dir[256], path[300];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins, *move = NULL, *latest = NULL, *clear = NULL;
    size_t nmsgs = o->points / NKEYS, rows = 0, since_compact = 0;
    double t0;

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    if (sqlite3_open(path, &db) != SQLITE_OK)
        die("sqlite3_open failed");
    exec_or_die(db, "PRAGMA journal_mode=WAL");
    exec_or_die(db, sync_pragma(o));
    exec_or_die(db, "PRAGMA cache_size=-32768");
    exec_or_die(db, "PRAGMA temp_store=MEMORY");
    exec_or_die(db, "CREATE TABLE telemetry_log(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
                    " t INTEGER NOT NULL, v)");
    exec_or_die(db, "CREATE TABLE telemetry(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
                    " t INTEGER NOT NULL, v, PRIMARY KEY(series, ts)) WITHOUT ROWID");
    exec_or_die(db, "CREATE TABLE latest(series INTEGER PRIMARY KEY, ts INTEGER NOT NULL,"
                    " t INTEGER NOT NULL, v)");
    ins = prep(db, kind == RAW_PK
                       ? "INSERT OR REPLACE INTO telemetry(series, ts, t, v) VALUES (?1,?2,?3,?4)"
                       : "INSERT INTO telemetry_log(series, ts, t, v) VALUES (?1, ?2, ?3, ?4)");
    if (kind == RAW_TWO_TIER) {
        move = prep(db, "INSERT OR REPLACE INTO telemetry(series, ts, t, v)"
                        " SELECT series, ts, t, v FROM telemetry_log ORDER BY series, ts, rowid");
        latest = prep(db,
                      "INSERT OR REPLACE INTO latest(series, ts, t, v)"
                      " SELECT m.series, m.ts, m.t, m.v FROM (SELECT DISTINCT series FROM"
                      " telemetry_log) AS l JOIN telemetry AS m ON m.series = l.series"
                      " WHERE m.ts = (SELECT max(ts) FROM telemetry WHERE series = l.series)");
        clear = prep(db, "DELETE FROM telemetry_log");
    }
    t0 = now_s();
    exec_or_die(db, "BEGIN IMMEDIATE");
    for (size_t i = 0; i < nmsgs; i++) {
        for (int k = 0; k < NKEYS; k++) {
            sqlite3_bind_int64(ins, 1, (int64_t)(i % NDEV) * NKEYS + k + 1);
            sqlite3_bind_int64(ins, 2, TS0 + (int64_t)(i / NDEV) * 1000);
            sqlite3_bind_int(ins, 3, VAL_NUM);
            sqlite3_bind_double(ins, 4, value_of(i, k));
            if (sqlite3_step(ins) != SQLITE_DONE)
                die(sqlite3_errmsg(db));
            sqlite3_reset(ins);
            rows++;
            since_compact++;
        }
        if (rows >= o->batch_rows || i + 1 == nmsgs) {
            exec_or_die(db, "COMMIT");
            rows = 0;
            if (kind == RAW_TWO_TIER && (since_compact >= o->compact_rows || i + 1 == nmsgs)) {
                raw_compact(move, latest, clear, db);
                since_compact = 0;
            }
            if (i + 1 < nmsgs)
                exec_or_die(db, "BEGIN IMMEDIATE");
        }
    }
    t0 = now_s() - t0;
    sqlite3_finalize(ins);
    sqlite3_finalize(move);
    sqlite3_finalize(latest);
    sqlite3_finalize(clear);
    sqlite3_close(db);
    drop_db(dir, path);
    return t0;
}

/* ---- sequential acks ---- */

struct lat {
    uv_loop_t loop;
    struct store *s;
    size_t n, done;
    uint64_t seq, t0;        /* the write in flight, its start (ns) */
    double *us;              /* per-write latency, microseconds */
    int failed;
};

static void lat_write(struct lat *l)
{
    struct point p = { .ts_ms = TS0 + (int64_t)l->done, .key = keys[0], .type = VAL_NUM,
                       .num = (double)l->done };
    struct msg *m = msg_new(MSG_TELEMETRY, dev_names[l->done % NDEV], "devices/x/telemetry",
                            NULL, 0, &p, 1);

    l->t0 = uv_hrtime();
    l->seq = store_append(l->s, m);
    msg_unref(m);
}

static void on_lat_durable(void *ctx, uint64_t upto, int ok)
{
    struct lat *l = ctx;

    if (!ok)
        l->failed = 1;
    if (upto < l->seq)
        return;
    l->us[l->done++] = (double)(uv_hrtime() - l->t0) / 1e3;
    if (l->done < l->n)
        lat_write(l); /* the next write starts from the ack, as a window-1 client does */
}

static void run_lat_ours(const struct opts *o, double *us)
{
    char dir[256], path[300];
    struct lat l = { .n = o->latency, .us = us };
    struct store_cfg cfg = { .path = path, .sync = o->sync, .batch_rows = o->batch_rows };

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    if (uv_loop_init(&l.loop) != 0 || store_open(&l.loop, &cfg, &l.s) != 0)
        die("store_open failed");
    store_set_callbacks(l.s, on_lat_durable, NULL, &l);
    lat_write(&l);
    uv_run(&l.loop, UV_RUN_DEFAULT); /* returns once nothing awaits durability */
    store_close(l.s);
    uv_run(&l.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&l.loop) != 0 || l.failed || l.done != l.n)
        die("latency run failed");
    drop_db(dir, path);
}

static void run_lat_raw(const struct opts *o, double *us)
{
    char dir[256], path[300];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins;

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    if (sqlite3_open(path, &db) != SQLITE_OK)
        die("sqlite3_open failed");
    exec_or_die(db, "PRAGMA journal_mode=WAL");
    exec_or_die(db, sync_pragma(o));
    exec_or_die(db, "CREATE TABLE telemetry_log(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
                    " t INTEGER NOT NULL, v)");
    ins = prep(db, "INSERT INTO telemetry_log(series, ts, t, v) VALUES (?1, ?2, ?3, ?4)");
    for (size_t i = 0; i < o->latency; i++) {
        uint64_t t0 = uv_hrtime();

        exec_or_die(db, "BEGIN IMMEDIATE");
        sqlite3_bind_int64(ins, 1, (int64_t)(i % NDEV) + 1);
        sqlite3_bind_int64(ins, 2, TS0 + (int64_t)i);
        sqlite3_bind_int(ins, 3, VAL_NUM);
        sqlite3_bind_double(ins, 4, (double)i);
        if (sqlite3_step(ins) != SQLITE_DONE)
            die(sqlite3_errmsg(db));
        sqlite3_reset(ins);
        exec_or_die(db, "COMMIT");
        us[i] = (double)(uv_hrtime() - t0) / 1e3;
    }
    sqlite3_finalize(ins);
    sqlite3_close(db);
    drop_db(dir, path);
}

/* ---- driver ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];

    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_storage [--points N] [--rounds R] [--dir DIR]"
                    " [--batch-rows N] [--compact-rows N] [--skip-b] [--sync full|normal]"
                    " [--latency N]\n");
    exit(2);
}

/* The q-quantile of v[0..n) (sorts v). */
static double quantile(double *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_double);
    return v[(size_t)(q * (double)(n - 1))];
}

static int run_latency(const struct opts *o)
{
    double *ours = xcalloc(o->latency, sizeof *ours), *raw = xcalloc(o->latency, sizeof *raw);
    double o50[MAX_ROUNDS], o99[MAX_ROUNDS], r50[MAX_ROUNDS], r99[MAX_ROUNDS];

    printf("sequential acks: %zu writes of 1 point, each after the previous ack; sync=%s;"
           " %d rounds; dir %s; SQLite %s\n",
           o->latency, o->sync == STORE_SYNC_NORMAL ? "normal" : "full", o->rounds, o->dir,
           sqlite3_libversion());
    for (int r = 0; r < o->rounds; r++) {
        run_lat_ours(o, ours);
        run_lat_raw(o, raw);
        o50[r] = quantile(ours, o->latency, 0.5);
        o99[r] = quantile(ours, o->latency, 0.99);
        r50[r] = quantile(raw, o->latency, 0.5);
        r99[r] = quantile(raw, o->latency, 0.99);
        printf("round %d: ours p50 %.0f us p99 %.0f us | raw p50 %.0f us p99 %.0f us\n", r + 1,
               o50[r], o99[r], r50[r], r99[r]);
        fflush(stdout);
    }
    printf("median: ours p50 %.0f us p99 %.0f us (%.0f acks/s) | raw p50 %.0f us p99 %.0f us"
           " (%.0f commits/s)\n",
           median(o50, o->rounds), median(o99, o->rounds), 1e6 / median(o50, o->rounds),
           median(r50, o->rounds), median(r99, o->rounds), 1e6 / median(r50, o->rounds));
    free(ours);
    free(raw);
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = { .points = 2000000, .rounds = 3, .dir = getenv("TMPDIR"),
                      .batch_rows = 1000, .compact_rows = 100000 };
    double dur[MAX_ROUNDS], comp[MAX_ROUNDS], ack[MAX_ROUNDS], ra[MAX_ROUNDS], rb[MAX_ROUNDS],
        rc[MAX_ROUNDS];
    double m_dur, m_comp, m_ack, m_a, m_b = 0, m_c, pts;

    if (!o.dir || !o.dir[0])
        o.dir = "/tmp";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--skip-b") == 0) {
            o.skip_b = 1;
            continue;
        }
        if (!v)
            usage();
        if (strcmp(a, "--points") == 0)
            o.points = strtoull(v, NULL, 10);
        else if (strcmp(a, "--rounds") == 0)
            o.rounds = atoi(v);
        else if (strcmp(a, "--dir") == 0)
            o.dir = v;
        else if (strcmp(a, "--batch-rows") == 0)
            o.batch_rows = strtoull(v, NULL, 10);
        else if (strcmp(a, "--compact-rows") == 0)
            o.compact_rows = strtoull(v, NULL, 10);
        else if (strcmp(a, "--sync") == 0 && strcmp(v, "full") == 0)
            o.sync = STORE_SYNC_FULL;
        else if (strcmp(a, "--sync") == 0 && strcmp(v, "normal") == 0)
            o.sync = STORE_SYNC_NORMAL;
        else if (strcmp(a, "--latency") == 0)
            o.latency = strtoull(v, NULL, 10);
        else
            usage();
        i++;
    }
    if (o.points < NKEYS * NDEV || o.rounds < 1 || o.rounds > MAX_ROUNDS || o.batch_rows == 0 ||
        o.compact_rows == 0)
        usage();
    o.points -= o.points % NKEYS;
    pts = (double)o.points;
    for (int d = 0; d < NDEV; d++)
        snprintf(dev_names[d], sizeof dev_names[d], "dev-%04d", d);
    if (o.latency > 0)
        return run_latency(&o);

    printf("storage bench: %zu points = %zu msgs from %d devices x %d keys, interleaved;"
           " %zu-row commits, compaction every %zu rows; %d rounds; dir %s; SQLite %s\n",
           o.points, o.points / NKEYS, NDEV, NKEYS, o.batch_rows, o.compact_rows, o.rounds,
           o.dir, sqlite3_libversion());
    for (int r = 0; r < o.rounds; r++) {
        run_ours(&o, 0, &dur[r], &comp[r]);
        ra[r] = run_raw(&o, RAW_LOG);
        run_ours(&o, 1, &ack[r], NULL);
        rb[r] = o.skip_b ? 0 : run_raw(&o, RAW_PK);
        rc[r] = run_raw(&o, RAW_TWO_TIER);
        printf("round %d: ours durable %.2fs compacted %.2fs | raw a %.2fs | ours ack-only"
               " %.2fs | raw b %.2fs | raw c %.2fs\n",
               r + 1, dur[r], comp[r], ra[r], ack[r], rb[r], rc[r]);
        fflush(stdout);
    }
    m_dur = median(dur, o.rounds);
    m_comp = median(comp, o.rounds);
    m_a = median(ra, o.rounds);
    m_ack = median(ack, o.rounds);
    if (!o.skip_b)
        m_b = median(rb, o.rounds);
    m_c = median(rc, o.rounds);

    printf("\n%-58s %9s %11s  %s\n", "run (median)", "seconds", "rows/s", "ours/raw (rate)");
    printf("%-58s %9.2f %11.0f\n", "ours: durable (acked, rows in the log)", m_dur, pts / m_dur);
    printf("%-58s %9.2f %11.0f\n", "ours: compacted (all rows in the (series,ts) table)",
           m_comp, pts / m_comp);
    printf("%-58s %9.2f %11.0f\n", "ours: ack path only (no compaction during the run)",
           m_ack, pts / m_ack);
    printf("%-58s %9.2f %11.0f  %.2f (ours ack only), %.2f (ours durable)\n",
           "raw a: log table, same commits", m_a, pts / m_a, m_a / m_ack, m_a / m_dur);
    if (!o.skip_b)
        printf("%-58s %9.2f %11.0f  %.2f (ours compacted)\n",
               "raw b: (series,ts) WITHOUT ROWID, arrival order", m_b, pts / m_b, m_b / m_comp);
    printf("%-58s %9.2f %11.0f  %.2f (ours compacted)\n",
           "raw c: two tiers, log + sorted moves, final move", m_c, pts / m_c, m_c / m_comp);
    return 0;
}
