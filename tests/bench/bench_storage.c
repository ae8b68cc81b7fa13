/* tests/bench/bench_storage.c: Gale's storage engine against today's row layout and the
 * raw SQLite row-append ceiling, in the same process, on the same disk (issue 9, item 6).
 *
 * Ours always goes through the public API (storage/store.h) plus the store_compact()
 * seam (store_int.h): msg_new + store_append on a uv loop, feeding paused while
 * on_pressure says so; queries through store_query_telemetry. The raw sides are plain
 * SQLite with the pragmas the engine sets, on one thread, committing every --batch-rows
 * points like the engine's group commit. Every run gets a fresh temporary DB in --dir.
 *
 * Parts (--parts, default all):
 *   e2e    1000 devices x 4 keys interleaved (one message = the 4 keys of one device, ts
 *          increasing), --points in total. Per round, in this order:
 *            ours                 timed until the last on_durable ("acked") and until a
 *                                 store_compact() issued then is durable ("chunked":
 *                                 every point in its queryable form); then a sample of
 *                                 series is queried back and checked (count and values)
 *            today's row layout   append into an arrival-ordered log table, INSERT OR
 *                                 REPLACE it sorted into a (series, ts) WITHOUT ROWID
 *                                 table (and refresh `latest`) every --move-rows rows and
 *                                 at the end: what the schema-v3 engine does
 *            raw row append       one prepared insert per point into a rowid table
 *          Ratios: ours chunked points/s against both, ours acked against the ceiling.
 *   disk   bytes on disk per point for 1 Hz telemetry: --disk-devices x 5 keys for
 *          --disk-hours (a slowly varying float with noise at two decimals, a second such
 *          float, a counter with integer increments (sometimes 0), a boolean and a string
 *          of "ok"/"warn"/"idle" that change rarely; 1 s apart with a few ms of jitter).
 *          Ours: load, store_compact, store_close; today's row layout: load with its moves,
 *          close. Each is measured by its files: (size of the database file + size of its
 *          WAL, as the close left them) / points; ours also by its pages in use
 *          ((page_count - freelist_count) * page_size: the rows without the free pages the
 *          segment log leaves in the file). Deterministic: run once.
 *   query  one series at 1 Hz for --query-days days (the same noisy float), built once per
 *          run for both sides (not timed; ours chunked by store_compact). After one untimed
 *          run of each, each round runs --query-reps repetitions of each query, ours and
 *          today's interleaved: a day of raw points (86,400; limit 100000) and hourly
 *          averages over all days
 *          (STORE_AGG_AVG, interval 3600000; raw SQL GROUP BY ts / 3600000). Results are
 *          checked against the generator. Ratio = today's ms / ours ms (> 1: ours faster).
 *   replay (only when asked for) the longest start-up the bounds allow: the e2e workload
 *          written until the hot points and the segments sit at their bounds
 *          (--hot-max-points hot, up to twice that in segments), closed without chunking,
 *          reopened: the time store_open takes to replay them.
 * Prints per-round lines (tests/bench/run.py parses them), then medians and ratios.
 * A wrong count or value in any check prints what differs and exits 1.
 *
 * --latency N instead times N writes one after another, each waiting for the previous
 * one's ack: ours (store_append, then on_durable) against raw (one insert, one commit),
 * interleaved round by round; prints p50/p99 per write. Both honour --sync, which sets
 * the raw connection's PRAGMA synchronous the same way storage.sync sets ours.
 * --smoke shrinks every size (explicit options still win) so the whole run takes seconds.
 *
 * Usage: bench_storage [--points N] [--rounds R] [--dir DIR] [--batch-rows N]
 *          [--hot-max-points N] [--move-rows N] [--sync full|normal] [--parts LIST]
 *          [--disk-devices N] [--disk-hours H] [--query-days N] [--query-reps N]
 *          [--smoke] [--latency N] */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "base/alloc.h"
#include "gateway/msg.h"
#include "storage/store.h"
#include "storage/store_int.h"

#define NDEV 1000                  /* e2e: devices */
#define NKEYS 4                    /* e2e: keys per device */
#define MAX_KEYS 5                 /* keys of the widest workload (disk) */
#define TS0 1700000000000LL        /* first ts of the e2e and disk workloads */
#define QTS0 1699920000000LL       /* query series: a UTC midnight, so hours align */
#define DAY_MS 86400000LL
#define HOUR_MS 3600000LL
#define DAY_POINTS 86400           /* 1 Hz for a day */
#define MAX_ROUNDS 15
#define MAX_REPS 15

static const char *const fleet_keys[NKEYS] = { "temp", "hum", "volt", "rssi" };
static const char *const disk_keys[MAX_KEYS] = { "temp", "hum", "count", "door", "state" };
static const char *const query_keys[1] = { "temp" };
static const char *const states[3] = { "ok", "warn", "idle" };

enum part { PART_E2E = 1, PART_DISK = 2, PART_QUERY = 4, PART_REPLAY = 8 };

struct opts {
    size_t points;          /* e2e points */
    int rounds;
    const char *dir;
    size_t batch_rows;      /* points per transaction, ours and raw */
    size_t hot_max_points;  /* ours: storage.hot_max_points */
    size_t move_rows;       /* today's row layout: log rows per sorted move */
    enum store_sync sync;
    unsigned parts;         /* enum part bits */
    size_t disk_devices;
    double disk_hours;
    size_t query_days;
    int query_reps;         /* repetitions of each query per round */
    size_t latency;         /* > 0: the sequential-ack run with this many writes */
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

static void dev_name(char *buf, size_t len, size_t d)
{
    snprintf(buf, len, "dev-%04zu", d);
}

/* ---- workloads: the same message stream for ours and the raw sides ---- */

static uint64_t mix64(uint64_t x) /* splitmix64's finalizer: a deterministic hash */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t next_rand(uint64_t *state)
{
    *state += 1;
    return mix64(*state);
}

/* Rounded to two decimals the way a device prints it (the double nearest k / 100). */
static double two_decimals(double x)
{
    return round(x * 100.0) / 100.0;
}

/* Noise in [-0.05, 0.05] from a hash. */
static double noise_of(uint64_t r)
{
    return (double)((int64_t)(r % 1001) - 500) / 10000.0;
}

static double fleet_value(size_t msg, int k)
{
    return (double)(msg % 1000) * 0.5 + k;
}

/* Point i of the query series: 1 Hz with 0..4 ms of jitter, a daily wave plus noise. */
static int64_t series_ts(size_t i)
{
    return QTS0 + (int64_t)i * 1000 + (int64_t)(mix64(i) >> 60) % 5;
}

static double series_value(size_t i)
{
    double wave = 21.0 + 3.0 * sin(2.0 * M_PI * (double)(i % DAY_POINTS) / DAY_POINTS);

    return two_decimals(wave + noise_of(mix64(i ^ 0x5eed)));
}

enum wl_kind {
    WL_FLEET = 0, /* e2e: NDEV x NKEYS, values from fleet_value */
    WL_DISK,      /* disk: realistic 1 Hz fleet, MAX_KEYS keys of every value type */
    WL_SERIES,    /* query: one series, series_ts / series_value */
};

/* WL_DISK: one device's evolving values. */
struct dev_state {
    uint64_t rng;           /* its random stream */
    double temp0, hum0;     /* base levels of the two floats */
    double count;           /* the counter's current value */
    int door;               /* the boolean */
    int state;              /* index into states[] */
    int64_t phase_ms;       /* its clock's offset inside each second, 0..994 */
};

struct workload {
    enum wl_kind kind;
    const char *const *keys;
    size_t ndev, nkeys;     /* every device sends every key in each message */
    size_t nmsgs, next;     /* messages in total, produced so far */
    struct dev_state *dev;  /* WL_DISK, ndev of them */
};

static void wl_init(struct workload *w, enum wl_kind kind, size_t ndev, size_t nmsgs)
{
    memset(w, 0, sizeof *w);
    w->kind = kind;
    w->ndev = ndev;
    w->nmsgs = nmsgs;
    w->keys = kind == WL_FLEET ? fleet_keys : kind == WL_DISK ? disk_keys : query_keys;
    w->nkeys = kind == WL_FLEET ? NKEYS : kind == WL_DISK ? MAX_KEYS : 1;
    if (kind != WL_DISK)
        return;
    w->dev = xcalloc(ndev, sizeof *w->dev);
    for (size_t d = 0; d < ndev; d++) {
        struct dev_state *st = &w->dev[d];

        st->rng = mix64(d + 1);
        st->temp0 = 18.0 + (double)(next_rand(&st->rng) % 800) / 100.0;
        st->hum0 = 35.0 + (double)(next_rand(&st->rng) % 2000) / 100.0;
        st->count = (double)(next_rand(&st->rng) % 100000);
        st->state = (int)(next_rand(&st->rng) % 3);
        st->phase_ms = (int64_t)(next_rand(&st->rng) % 995);
    }
}

static void wl_fini(struct workload *w)
{
    free(w->dev);
    w->dev = NULL;
}

/* The next message's points (w->nkeys, in key order, keys borrowed from w) and its
 * device index. */
static void wl_next(struct workload *w, size_t *dev, struct point *pts)
{
    size_t i = w->next++, d = i % w->ndev, sec = i / w->ndev;

    memset(pts, 0, w->nkeys * sizeof *pts);
    for (size_t k = 0; k < w->nkeys; k++) {
        pts[k].key = w->keys[k];
        pts[k].type = VAL_NUM;
    }
    *dev = d;
    switch (w->kind) {
    case WL_FLEET:
        for (int k = 0; k < NKEYS; k++) {
            pts[k].ts_ms = TS0 + (int64_t)sec * 1000;
            pts[k].num = fleet_value(i, k);
        }
        break;
    case WL_DISK: {
        struct dev_state *st = &w->dev[d];
        /* slow waves: a 4-hour cycle for the temperature, 6 hours for the humidity */
        double t = (double)sec + (double)d * 37.0;
        int64_t ts = TS0 + (int64_t)sec * 1000 + st->phase_ms +
                     (int64_t)(next_rand(&st->rng) % 5);
        uint64_t r = next_rand(&st->rng);

        pts[0].num = two_decimals(st->temp0 + 1.5 * sin(2.0 * M_PI * t / 14400.0) +
                                  noise_of(next_rand(&st->rng)));
        pts[1].num = two_decimals(st->hum0 + 6.0 * sin(2.0 * M_PI * t / 21600.0) +
                                  2.0 * noise_of(next_rand(&st->rng)));
        st->count += r % 8 == 0 ? 0 : (double)(1 + (r >> 8) % 5);
        pts[2].num = st->count;
        if ((r >> 16) % 1800 == 0)
            st->door = !st->door;
        pts[3].type = VAL_BOOL;
        pts[3].num = st->door;
        if ((r >> 32) % 3600 == 0)
            st->state = (st->state + 1 + (int)((r >> 48) % 2)) % 3;
        pts[4].type = VAL_STR;
        pts[4].str = states[st->state];
        pts[4].str_len = strlen(pts[4].str);
        for (int k = 0; k < MAX_KEYS; k++)
            pts[k].ts_ms = ts;
        break;
    }
    case WL_SERIES:
        pts[0].ts_ms = series_ts(i);
        pts[0].num = series_value(i);
        break;
    }
}

/* ---- ours: the real API on a uv loop ---- */

struct ours {
    uv_loop_t loop;
    uv_idle_t feeder;
    struct store *s;
    struct workload *w;          /* being loaded, or NULL */
    uint64_t last_seq;           /* seq of the last append */
    uint64_t compact_seq;        /* seq of the store_compact after the last ack */
    int feeding;                 /* feeder is running */
    int failed;                  /* an on_durable reported ok = 0 */
    int no_compact;              /* stop at the last ack: leave the hot points hot */
    double t0, t_acked, t_chunked;   /* load start; seconds after it */
    struct store_result *res;    /* the last query's result (owned) */
};

static void on_feed(uv_idle_t *h)
{
    struct ours *b = h->data;
    struct workload *w = b->w;
    struct point pts[MAX_KEYS];
    char name[32];

    for (int n = 0; n < 256 && w->next < w->nmsgs && b->feeding; n++) {
        size_t d;
        struct msg *m;

        wl_next(w, &d, pts);
        dev_name(name, sizeof name, d);
        m = msg_new(MSG_TELEMETRY, name, "devices/x/telemetry", NULL, 0, pts, w->nkeys);
        b->last_seq = store_append(b->s, m); /* may call on_pressure(1) */
        msg_unref(m);
    }
    if (w->next == w->nmsgs) {
        uv_idle_stop(h);
        b->feeding = 0;
    }
}

static void on_pressure(void *ctx, int paused)
{
    struct ours *b = ctx;

    if (!b->w)
        return;
    if (paused && b->feeding) {
        uv_idle_stop(&b->feeder);
        b->feeding = 0;
    } else if (!paused && b->w->next < b->w->nmsgs && !b->feeding) {
        b->feeding = 1;
        uv_idle_start(&b->feeder, on_feed);
    }
}

static void on_durable(void *ctx, uint64_t upto, int ok)
{
    struct ours *b = ctx;

    if (!ok)
        b->failed = 1;
    if (!b->w || b->w->next < b->w->nmsgs || upto < b->last_seq)
        return;
    if (b->t_acked == 0) {
        b->t_acked = now_s() - b->t0;
        if (b->no_compact) {
            b->t_chunked = b->t_acked;
            uv_stop(&b->loop);
            return;
        }
        b->compact_seq = store_compact(b->s);
    } else if (upto >= b->compact_seq && b->t_chunked == 0) {
        b->t_chunked = now_s() - b->t0;
        uv_stop(&b->loop);
    }
}

static void ours_open(struct ours *b, const struct opts *o, const char *path)
{
    struct store_cfg cfg = { .path = path, .sync = o->sync, .batch_rows = o->batch_rows,
                             .hot_max_points = o->hot_max_points };

    memset(b, 0, sizeof *b);
    if (uv_loop_init(&b->loop) != 0 || store_open(&b->loop, &cfg, &b->s) != 0)
        die("store_open failed");
    store_set_callbacks(b->s, on_durable, on_pressure, b);
    uv_idle_init(&b->loop, &b->feeder);
    b->feeder.data = b;
}

/* Feeds all of w; returns when the store_compact issued after the last ack is durable.
 * *acked and *chunked: seconds from the first append. */
static void ours_load(struct ours *b, struct workload *w, double *acked, double *chunked)
{
    b->w = w;
    b->t_acked = b->t_chunked = 0;
    b->feeding = 1;
    b->t0 = now_s();
    uv_idle_start(&b->feeder, on_feed);
    uv_run(&b->loop, UV_RUN_DEFAULT); /* on_durable stops it */
    b->w = NULL;
    if (b->failed || b->t_chunked == 0)
        die("ours: a write failed, or the loop ended before the compaction was durable");
    *acked = b->t_acked;
    *chunked = b->t_chunked;
}

static void on_query(void *ctx, struct store_query *q, struct store_result *res)
{
    struct ours *b = ctx;

    b->res = res;
    store_query_free(q);
    uv_stop(&b->loop);
}

static struct store_query *new_query(const char *device, const char *key, int64_t from_ms,
                                     int64_t to_ms, size_t limit, enum store_agg agg,
                                     int64_t interval_ms)
{
    struct store_query *q = xcalloc(1, sizeof *q);

    q->device = xstrdup(device);
    if (key) {
        q->keys = xcalloc(1, sizeof *q->keys);
        q->keys[0] = xstrdup(key);
        q->nkeys = 1;
    }
    q->from_ms = from_ms;
    q->to_ms = to_ms;
    q->limit = limit;
    q->agg = agg;
    q->interval_ms = interval_ms;
    return q;
}

/* Runs q (takes ownership) to completion; the result is the caller's. *ms: submit to
 * callback, when ms is not NULL. */
static struct store_result *ours_query(struct ours *b, struct store_query *q, double *ms)
{
    double t0 = now_s();

    b->res = NULL;
    if (store_query_telemetry(b->s, q, on_query, b) != 0)
        die("store_query_telemetry failed");
    uv_run(&b->loop, UV_RUN_DEFAULT); /* on_query stops it */
    if (ms)
        *ms = (now_s() - t0) * 1e3;
    if (!b->res || b->res->rc != 0)
        die("ours: query failed");
    return b->res;
}

static void ours_close(struct ours *b)
{
    store_close(b->s);
    uv_close((uv_handle_t *)&b->feeder, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&b->loop) != 0)
        die("loop not closed");
}

static void check(int ok, const char *what, double got, double want)
{
    if (ok)
        return;
    fprintf(stderr, "bench_storage: check failed: %s: got %.17g, expected %.17g\n", what, got,
            want);
    exit(1);
}

/* The s-th (0..3) of four indexes spread over 0..n-1, first and last included. */
static size_t spread(size_t n, int s)
{
    return (size_t)s * (n - 1) / 3;
}

/* A sample of series read back: count, and ts and value of the first, middle and last. */
static void check_fleet(struct ours *b, size_t nmsgs)
{
    static const size_t sample[] = { 0, 7, NDEV / 2 + 1, NDEV - 1 };
    char name[32], what[96];

    for (size_t n = 0; n < sizeof sample / sizeof *sample; n++) {
        size_t d = sample[n], want = nmsgs / NDEV + (d < nmsgs % NDEV);
        int k = (int)(n % NKEYS);
        struct store_result *res;
        struct store_series *se;

        dev_name(name, sizeof name, d);
        res = ours_query(b, new_query(name, fleet_keys[k], INT64_MIN, INT64_MAX,
                                      STORE_MAX_LIMIT, STORE_AGG_NONE, 0), NULL);
        snprintf(what, sizeof what, "e2e %s/%s series", name, fleet_keys[k]);
        check(res->nseries == 1, what, (double)res->nseries, 1);
        se = &res->series[0];
        snprintf(what, sizeof what, "e2e %s/%s points", name, fleet_keys[k]);
        check(se->npoints == want, what, (double)se->npoints, (double)want);
        for (int s = 0; s < 4; s++) {
            size_t j = spread(want, s), i = j * NDEV + d;
            const struct point *p = &se->points[j];

            snprintf(what, sizeof what, "e2e %s/%s point %zu ts", name, fleet_keys[k], j);
            check(p->ts_ms == TS0 + (int64_t)j * 1000, what, (double)p->ts_ms,
                  (double)(TS0 + (int64_t)j * 1000));
            snprintf(what, sizeof what, "e2e %s/%s point %zu value", name, fleet_keys[k], j);
            check(p->type == VAL_NUM && p->num == fleet_value(i, k), what, p->num,
                  fleet_value(i, k));
        }
        store_result_free(res);
    }
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

static int64_t get_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = prep(db, sql);
    int64_t v;

    if (sqlite3_step(st) != SQLITE_ROW)
        die(sqlite3_errmsg(db));
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void step_reset(sqlite3 *db, sqlite3_stmt *st)
{
    if (sqlite3_step(st) != SQLITE_DONE)
        die(sqlite3_errmsg(db));
    sqlite3_reset(st);
}

enum raw_layout {
    RAW_TODAY = 0, /* log + sorted moves into (series, ts) WITHOUT ROWID, with `latest` */
    RAW_APPEND,    /* one insert per point into a rowid table: the ceiling */
};

/* The log's sorted move into the main table, as the schema-v3 engine's compaction does. */
static void raw_move(sqlite3 *db, sqlite3_stmt *move, sqlite3_stmt *latest, sqlite3_stmt *clear)
{
    exec_or_die(db, "BEGIN IMMEDIATE");
    step_reset(db, move);
    step_reset(db, latest);
    step_reset(db, clear);
    exec_or_die(db, "COMMIT");
}

/* Loads w into a fresh database at path in layout lay; returns the seconds it took.
 * The row count is checked afterwards (not timed). The connection stays open in *out
 * when out is not NULL, else it is closed. */
static double raw_load(const struct opts *o, enum raw_layout lay, struct workload *w,
                       const char *path, sqlite3 **out)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins, *move = NULL, *latest = NULL, *clear = NULL;
    struct point pts[MAX_KEYS];
    size_t rows = 0, since_move = 0, total = 0;
    double t0;

    if (sqlite3_open(path, &db) != SQLITE_OK)
        die("sqlite3_open failed");
    exec_or_die(db, "PRAGMA journal_mode=WAL");
    exec_or_die(db, sync_pragma(o));
    exec_or_die(db, "PRAGMA cache_size=-32768");
    exec_or_die(db, "PRAGMA temp_store=MEMORY");
    exec_or_die(db, "CREATE TABLE telemetry_log(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
                    " t INTEGER NOT NULL, v)");
    ins = prep(db, "INSERT INTO telemetry_log(series, ts, t, v) VALUES (?1, ?2, ?3, ?4)");
    if (lay == RAW_TODAY) {
        sqlite3_stmt *dev, *ser;
        char name[32];

        exec_or_die(db, "CREATE TABLE device_ids(id INTEGER PRIMARY KEY,"
                        " device TEXT NOT NULL UNIQUE)");
        exec_or_die(db, "CREATE TABLE series(id INTEGER PRIMARY KEY, dev_id INTEGER NOT NULL,"
                        " key TEXT NOT NULL, UNIQUE(dev_id, key))");
        exec_or_die(db, "CREATE TABLE telemetry(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
                        " t INTEGER NOT NULL, v, PRIMARY KEY(series, ts)) WITHOUT ROWID");
        exec_or_die(db, "CREATE TABLE latest(series INTEGER PRIMARY KEY, ts INTEGER NOT NULL,"
                        " t INTEGER NOT NULL, v)");
        dev = prep(db, "INSERT INTO device_ids(id, device) VALUES (?1, ?2)");
        ser = prep(db, "INSERT INTO series(id, dev_id, key) VALUES (?1, ?2, ?3)");
        exec_or_die(db, "BEGIN");
        for (size_t d = 0; d < w->ndev; d++) {
            dev_name(name, sizeof name, d);
            sqlite3_bind_int64(dev, 1, (int64_t)d + 1);
            sqlite3_bind_text(dev, 2, name, -1, SQLITE_TRANSIENT);
            step_reset(db, dev);
            for (size_t k = 0; k < w->nkeys; k++) {
                sqlite3_bind_int64(ser, 1, (int64_t)(d * w->nkeys + k) + 1);
                sqlite3_bind_int64(ser, 2, (int64_t)d + 1);
                sqlite3_bind_text(ser, 3, w->keys[k], -1, SQLITE_STATIC);
                step_reset(db, ser);
            }
        }
        exec_or_die(db, "COMMIT");
        sqlite3_finalize(dev);
        sqlite3_finalize(ser);
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
    while (w->next < w->nmsgs) {
        size_t d;

        wl_next(w, &d, pts);
        for (size_t k = 0; k < w->nkeys; k++) {
            /* the (t, v) columns as the engine binds them (storage/sql.c) */
            sqlite3_bind_int64(ins, 1, (int64_t)(d * w->nkeys + k) + 1);
            sqlite3_bind_int64(ins, 2, pts[k].ts_ms);
            sqlite3_bind_int(ins, 3, (int)pts[k].type);
            if (pts[k].type == VAL_BOOL)
                sqlite3_bind_int(ins, 4, pts[k].num != 0);
            else if (pts[k].type == VAL_STR)
                sqlite3_bind_text(ins, 4, pts[k].str, (int)pts[k].str_len, SQLITE_STATIC);
            else
                sqlite3_bind_double(ins, 4, pts[k].num);
            step_reset(db, ins);
        }
        rows += w->nkeys;
        since_move += w->nkeys;
        total += w->nkeys;
        if (rows >= o->batch_rows || w->next == w->nmsgs) {
            exec_or_die(db, "COMMIT");
            rows = 0;
            if (lay == RAW_TODAY && (since_move >= o->move_rows || w->next == w->nmsgs)) {
                raw_move(db, move, latest, clear);
                since_move = 0;
            }
            if (w->next < w->nmsgs)
                exec_or_die(db, "BEGIN IMMEDIATE");
        }
    }
    t0 = now_s() - t0;
    sqlite3_finalize(ins);
    sqlite3_finalize(move);
    sqlite3_finalize(latest);
    sqlite3_finalize(clear);
    if (get_int(db, lay == RAW_TODAY ? "SELECT count(*) FROM telemetry"
                                     : "SELECT count(*) FROM telemetry_log") != (int64_t)total)
        die("raw: row count differs from the points written");
    if (out)
        *out = db;
    else
        sqlite3_close(db);
    return t0;
}

/* Bytes of the files of the database at path as its close left them: the database file
 * plus its WAL (free pages and all). Every connection to it must be closed. */
static double db_bytes(const char *path)
{
    char wal[320];
    struct stat st;
    double bytes = 0;

    if (stat(path, &st) != 0)
        die("stat of the database file failed");
    bytes += (double)st.st_size;
    snprintf(wal, sizeof wal, "%s-wal", path);
    if (stat(wal, &st) == 0)
        bytes += (double)st.st_size;
    return bytes;
}

/* Bytes of the pages in use in the database at path, (page_count - freelist_count) *
 * page_size: what its rows take, without the free pages the file keeps. After
 * db_bytes (opening it may create a WAL). */
static double db_used_bytes(const char *path)
{
    sqlite3 *db = NULL;
    double bytes;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        die("sqlite3_open failed");
    bytes = (double)(get_int(db, "PRAGMA page_count") - get_int(db, "PRAGMA freelist_count")) *
            (double)get_int(db, "PRAGMA page_size");
    sqlite3_close(db);
    return bytes;
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
    struct point p = { .ts_ms = TS0 + (int64_t)l->done, .key = fleet_keys[0], .type = VAL_NUM,
                       .num = (double)l->done };
    char name[32];
    struct msg *m;

    dev_name(name, sizeof name, l->done % NDEV);
    m = msg_new(MSG_TELEMETRY, name, "devices/x/telemetry", NULL, 0, &p, 1);
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

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS > MAX_REPS ? MAX_ROUNDS : MAX_REPS];

    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
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

/* ---- e2e ---- */

static void e2e_ours(const struct opts *o, double *acked, double *chunked)
{
    struct store_stats st;
    char dir[256], path[300];
    struct ours b;
    struct workload w;

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    ours_open(&b, o, path);
    wl_init(&w, WL_FLEET, NDEV, o->points / NKEYS);
    ours_load(&b, &w, acked, chunked);
    store_get_stats(b.s, &st);
    printf("ours: chunk slices=%llu points_chunked=%llu chunks=%llu slice writer time:"
           " mean %.0f us, max %llu us (commit included)\n", (unsigned long long)st.slices,
           (unsigned long long)st.points_chunked, (unsigned long long)st.chunks_written,
           st.slices ? (double)st.slice_us_total / (double)st.slices : 0.0,
           (unsigned long long)st.slice_us_max);
    check_fleet(&b, w.nmsgs);
    ours_close(&b);
    wl_fini(&w);
    drop_db(dir, path);
}

/* The longest start-up replay the bounds allow: the fleet workload written until the
 * hot points and the segment log sit at their bounds (hot_max_points hot, up to twice
 * that in segments), closed without chunking, then reopened; store_open replays. */
static void run_replay(const struct opts *o)
{
    double secs[MAX_ROUNDS], acked, chunked;
    size_t hot = 0, logged = 0;

    for (int r = 0; r < o->rounds; r++) {
        char dir[256], path[300];
        struct ours b;
        struct workload w;
        double t;

        fresh_db(o, dir, sizeof dir, path, sizeof path);
        ours_open(&b, o, path);
        b.no_compact = 1;
        wl_init(&w, WL_FLEET, NDEV, 2 * o->hot_max_points / NKEYS);
        ours_load(&b, &w, &acked, &chunked);
        wl_fini(&w);
        ours_close(&b);
        t = now_s();
        ours_open(&b, o, path);
        secs[r] = now_s() - t;
        hot = b.s->hot.npoints;
        logged = (size_t)b.s->log_points;
        ours_close(&b);
        drop_db(dir, path);
        printf("replay round %d: %.3fs for %zu hot points (%zu in the segments)\n", r + 1,
               secs[r], hot, logged);
    }
    printf("replay: start-up with hot_max_points %zu takes %.3f s (median), %.0f points/s\n",
           o->hot_max_points, median(secs, o->rounds), (double)logged / median(secs, o->rounds));
}

static double e2e_raw(const struct opts *o, enum raw_layout lay)
{
    char dir[256], path[300];
    struct workload w;
    double t;

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    wl_init(&w, WL_FLEET, NDEV, o->points / NKEYS);
    t = raw_load(o, lay, &w, path, NULL);
    wl_fini(&w);
    drop_db(dir, path);
    return t;
}

static void run_e2e(const struct opts *o)
{
    double ack[MAX_ROUNDS], chk[MAX_ROUNDS], today[MAX_ROUNDS], app[MAX_ROUNDS];
    double m_ack, m_chk, m_today, m_app, pts = (double)o->points;

    printf("e2e: %zu points = %zu msgs from %d devices x %d keys, interleaved; %zu-point"
           " commits; ours hot_max_points %zu, today's row layout moves every %zu rows;"
           " %d rounds\n",
           o->points, o->points / NKEYS, NDEV, NKEYS, o->batch_rows, o->hot_max_points,
           o->move_rows, o->rounds);
    fflush(stdout);
    for (int r = 0; r < o->rounds; r++) {
        e2e_ours(o, &ack[r], &chk[r]);
        today[r] = e2e_raw(o, RAW_TODAY);
        app[r] = e2e_raw(o, RAW_APPEND);
        printf("round %d: ours acked %.3fs chunked %.3fs | today's row layout %.3fs |"
               " raw row append %.3fs\n",
               r + 1, ack[r], chk[r], today[r], app[r]);
        fflush(stdout);
    }
    m_ack = median(ack, o->rounds);
    m_chk = median(chk, o->rounds);
    m_today = median(today, o->rounds);
    m_app = median(app, o->rounds);
    printf("\n%-60s %9s %11s\n", "e2e (median of the rounds)", "seconds", "points/s");
    printf("%-60s %9.3f %11.0f\n", "ours: acked (last on_durable)", m_ack, pts / m_ack);
    printf("%-60s %9.3f %11.0f\n", "ours: chunked (store_compact durable, all queryable)",
           m_chk, pts / m_chk);
    printf("%-60s %9.3f %11.0f\n", "today's row layout: log + sorted moves, final move",
           m_today, pts / m_today);
    printf("%-60s %9.3f %11.0f\n", "raw row append ceiling: rowid table, same commits", m_app,
           pts / m_app);
    printf("ratios (points/s, > 1 = ours faster): ours chunked / raw row append %.2f;"
           " ours chunked / today's row layout %.2f; ours acked / raw row append %.2f\n\n",
           m_app / m_chk, m_today / m_chk, m_app / m_ack);
    fflush(stdout);
}

/* ---- disk ---- */

/* After the load: one device's 5 series hold every second, and the counter and the string
 * end where the generator left them. */
static void check_disk(struct ours *b, const struct workload *w, size_t secs)
{
    struct store_result *res;
    char name[32], what[96];

    dev_name(name, sizeof name, 0);
    res = ours_query(b, new_query(name, NULL, INT64_MIN, INT64_MAX, STORE_MAX_LIMIT,
                                  STORE_AGG_NONE, 0), NULL);
    check(res->nseries == MAX_KEYS, "disk dev-0000 series", (double)res->nseries, MAX_KEYS);
    for (size_t n = 0; n < res->nseries; n++) {
        const struct store_series *se = &res->series[n];
        const struct point *last = se->npoints ? &se->points[se->npoints - 1] : NULL;

        snprintf(what, sizeof what, "disk dev-0000/%s points", se->key);
        check(se->npoints == secs, what, (double)se->npoints, (double)secs);
        if (strcmp(se->key, "count") == 0)
            check(last->num == w->dev[0].count, "disk dev-0000/count last value", last->num,
                  w->dev[0].count);
        if (strcmp(se->key, "state") == 0 &&
            (last->type != VAL_STR || strcmp(last->str, states[w->dev[0].state]) != 0)) {
            fprintf(stderr, "bench_storage: check failed: disk dev-0000/state last value: got"
                            " \"%s\", expected \"%s\"\n",
                    last->type == VAL_STR ? last->str : "(not a string)",
                    states[w->dev[0].state]);
            exit(1);
        }
    }
    store_result_free(res);
}

static void run_disk(const struct opts *o)
{
    char dir[256], path[300];
    size_t secs = (size_t)(o->disk_hours * 3600.0 + 0.5), n = o->disk_devices * secs;
    double pts = (double)(n * MAX_KEYS), acked, chunked, loaded, ob, tb, oused;
    struct workload w;
    struct ours b;

    printf("disk: 1 Hz fleet, %zu devices x %d keys (2 floats, a counter, a boolean, a string)"
           " for %.2f h = %.0f points\n",
           o->disk_devices, MAX_KEYS, o->disk_hours, pts);
    fflush(stdout);
    fresh_db(o, dir, sizeof dir, path, sizeof path);
    ours_open(&b, o, path);
    wl_init(&w, WL_DISK, o->disk_devices, n);
    ours_load(&b, &w, &acked, &chunked);
    check_disk(&b, &w, secs);
    ours_close(&b);
    wl_fini(&w);
    ob = db_bytes(path);
    oused = db_used_bytes(path);
    drop_db(dir, path);

    fresh_db(o, dir, sizeof dir, path, sizeof path);
    wl_init(&w, WL_DISK, o->disk_devices, n);
    loaded = raw_load(o, RAW_TODAY, &w, path, NULL);
    wl_fini(&w);
    tb = db_bytes(path);
    drop_db(dir, path);

    printf("disk: %.0f points: ours %.2f bytes/point (%.1f MB; pages in use %.2f"
           " bytes/point) | today's row layout %.2f bytes/point (%.1f MB)\n",
           pts, ob / pts, ob / 1e6, oused / pts, tb / pts, tb / 1e6);
    printf("disk: ours / today's row layout %.3f (< 1 = ours smaller); loads (not part of the"
           " figure): ours acked %.1fs chunked %.1fs (%.0f points/s), today's row layout"
           " %.1fs (%.0f points/s)\n\n",
           ob / tb, acked, chunked, pts / chunked, loaded, pts / loaded);
    fflush(stdout);
}

/* ---- query ---- */

struct qbench {
    struct ours b;              /* ours, loaded and chunked, open */
    char odir[256], opath[300];
    sqlite3 *db;                /* today's row layout, loaded, open */
    char rdir[256], rpath[300];
    sqlite3_stmt *day, *hourly; /* the raw queries */
    size_t days, npoints;
    int64_t day_from;           /* first ms of the day read back */
    size_t day_first;           /* index of its first point */
    size_t nbuckets;            /* hours in the series */
    double *avg;                /* expected hourly averages, nbuckets */
    struct point *rows;         /* raw: the rows read */
    size_t rows_cap;            /* max(DAY_POINTS, nbuckets) */
};

static void qbench_open(struct qbench *q, const struct opts *o)
{
    struct workload w;
    double acked, chunked, loaded;

    memset(q, 0, sizeof *q);
    q->days = o->query_days;
    q->npoints = q->days * DAY_POINTS;
    q->day_first = q->days / 2 * DAY_POINTS;
    q->day_from = QTS0 + (int64_t)(q->days / 2) * DAY_MS;
    q->nbuckets = q->days * 24;
    q->avg = xcalloc(q->nbuckets, sizeof *q->avg);
    for (size_t h = 0; h < q->nbuckets; h++) {
        double sum = 0;

        for (size_t i = h * 3600; i < (h + 1) * 3600; i++)
            sum += series_value(i);
        q->avg[h] = sum / 3600.0;
    }
    q->rows_cap = DAY_POINTS > q->nbuckets ? DAY_POINTS : q->nbuckets;
    q->rows = xcalloc(q->rows_cap, sizeof *q->rows);

    fresh_db(o, q->odir, sizeof q->odir, q->opath, sizeof q->opath);
    ours_open(&q->b, o, q->opath);
    wl_init(&w, WL_SERIES, 1, q->npoints);
    ours_load(&q->b, &w, &acked, &chunked);
    wl_fini(&w);

    fresh_db(o, q->rdir, sizeof q->rdir, q->rpath, sizeof q->rpath);
    wl_init(&w, WL_SERIES, 1, q->npoints);
    loaded = raw_load(o, RAW_TODAY, &w, q->rpath, &q->db);
    wl_fini(&w);
    q->day = prep(q->db, "SELECT ts, t, v FROM telemetry WHERE series = ?1 AND ts BETWEEN ?2"
                         " AND ?3 ORDER BY ts");
    q->hourly = prep(q->db, "SELECT ts / 3600000, avg(v) FROM telemetry WHERE series = ?1 AND"
                            " ts BETWEEN ?2 AND ?3 GROUP BY 1");
    printf("query: one series at 1 Hz, %zu days = %zu points (built in: ours chunked %.1fs,"
           " today's row layout %.1fs; not timed)\n",
           q->days, q->npoints, chunked, loaded);
    fflush(stdout);
}

static void qbench_close(struct qbench *q)
{
    sqlite3_finalize(q->day);
    sqlite3_finalize(q->hourly);
    sqlite3_close(q->db);
    drop_db(q->rdir, q->rpath);
    ours_close(&q->b);
    drop_db(q->odir, q->opath);
    free(q->avg);
    free(q->rows);
}

static void check_day(const char *who, const struct point *p, size_t n, size_t first)
{
    char what[96];

    snprintf(what, sizeof what, "query %s: day points", who);
    check(n == DAY_POINTS, what, (double)n, DAY_POINTS);
    for (int s = 0; s < 4; s++) {
        size_t j = spread(n, s);

        snprintf(what, sizeof what, "query %s: day point %zu ts", who, j);
        check(p[j].ts_ms == series_ts(first + j), what, (double)p[j].ts_ms,
              (double)series_ts(first + j));
        snprintf(what, sizeof what, "query %s: day point %zu value", who, j);
        check(p[j].type == VAL_NUM && p[j].num == series_value(first + j), what, p[j].num,
              series_value(first + j));
    }
}

/* Bucket keys are ms (ours) or hour numbers (raw SQL): hour_ms converts. */
static void check_hourly(const struct qbench *q, const char *who, const struct point *p,
                         size_t n, int64_t hour_ms)
{
    char what[96];

    snprintf(what, sizeof what, "query %s: hourly buckets", who);
    check(n == q->nbuckets, what, (double)n, (double)q->nbuckets);
    for (int s = 0; s < 4; s++) {
        size_t h = spread(n, s);
        double want = q->avg[h];

        snprintf(what, sizeof what, "query %s: bucket %zu ts", who, h);
        check(p[h].ts_ms * hour_ms == QTS0 + (int64_t)h * HOUR_MS, what,
              (double)(p[h].ts_ms * hour_ms), (double)(QTS0 + (int64_t)h * HOUR_MS));
        snprintf(what, sizeof what, "query %s: bucket %zu avg", who, h);
        check(fabs(p[h].num - want) <= 1e-9 * fabs(want), what, p[h].num, want);
    }
}

static double query_ours_day(struct qbench *q)
{
    double ms;
    struct store_result *res = ours_query(
        &q->b, new_query("dev-0000", query_keys[0], q->day_from, q->day_from + DAY_MS - 1,
                         100000, STORE_AGG_NONE, 0), &ms);

    check(res->nseries == 1, "query ours: day series", (double)res->nseries, 1);
    check_day("ours", res->series[0].points, res->series[0].npoints, q->day_first);
    store_result_free(res);
    return ms;
}

static double query_ours_hourly(struct qbench *q)
{
    double ms;
    struct store_result *res = ours_query(
        &q->b, new_query("dev-0000", query_keys[0], QTS0, QTS0 + (int64_t)q->days * DAY_MS - 1,
                         100000, STORE_AGG_AVG, HOUR_MS), &ms);

    check(res->nseries == 1, "query ours: hourly series", (double)res->nseries, 1);
    check_hourly(q, "ours", res->series[0].points, res->series[0].npoints, 1);
    store_result_free(res);
    return ms;
}

/* Steps the bound statement st into q->rows (ts, then the value); returns the row count. */
static size_t raw_rows(struct qbench *q, sqlite3_stmt *st, int typed)
{
    size_t n = 0;
    int rc;

    sqlite3_bind_int64(st, 1, 1); /* the only series */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct point *p = &q->rows[n++];

        p->ts_ms = sqlite3_column_int64(st, 0);
        p->type = typed ? (enum val_type)sqlite3_column_int(st, 1) : VAL_NUM;
        p->num = sqlite3_column_double(st, typed ? 2 : 1);
        if (n == q->rows_cap)
            break; /* more would not fit; the count check then fails */
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        die(sqlite3_errmsg(q->db));
    sqlite3_reset(st);
    return n;
}

static double query_raw_day(struct qbench *q)
{
    double t0 = now_s(), ms;
    size_t n;

    sqlite3_bind_int64(q->day, 2, q->day_from);
    sqlite3_bind_int64(q->day, 3, q->day_from + DAY_MS - 1);
    n = raw_rows(q, q->day, 1);
    ms = (now_s() - t0) * 1e3;
    check_day("today's", q->rows, n, q->day_first);
    return ms;
}

static double query_raw_hourly(struct qbench *q)
{
    double t0 = now_s(), ms;
    size_t n;

    sqlite3_bind_int64(q->hourly, 2, QTS0);
    sqlite3_bind_int64(q->hourly, 3, QTS0 + (int64_t)q->days * DAY_MS - 1);
    n = raw_rows(q, q->hourly, 0);
    ms = (now_s() - t0) * 1e3;
    check_hourly(q, "today's", q->rows, n, HOUR_MS);
    return ms;
}

static void run_query(const struct opts *o)
{
    struct qbench q;
    double od[MAX_ROUNDS], td[MAX_ROUNDS], oh[MAX_ROUNDS], th[MAX_ROUNDS];
    double a[MAX_REPS], b[MAX_REPS], c[MAX_REPS], d[MAX_REPS];
    double m_od, m_td, m_oh, m_th;

    qbench_open(&q, o);
    /* untimed: ours opens and prepares its pooled read connection on first use, raw has
     * had its connection and statements since the load */
    query_ours_day(&q);
    query_ours_hourly(&q);
    query_raw_day(&q);
    query_raw_hourly(&q);
    for (int r = 0; r < o->rounds; r++) {
        for (int i = 0; i < o->query_reps; i++) {
            a[i] = query_ours_day(&q);
            b[i] = query_raw_day(&q);
        }
        for (int i = 0; i < o->query_reps; i++) {
            c[i] = query_ours_hourly(&q);
            d[i] = query_raw_hourly(&q);
        }
        od[r] = median(a, o->query_reps);
        td[r] = median(b, o->query_reps);
        oh[r] = median(c, o->query_reps);
        th[r] = median(d, o->query_reps);
        printf("query round %d: day ours %.3f ms today %.3f ms | hourly ours %.3f ms today"
               " %.3f ms\n",
               r + 1, od[r], td[r], oh[r], th[r]);
        fflush(stdout);
    }
    qbench_close(&q);
    m_od = median(od, o->rounds);
    m_td = median(td, o->rounds);
    m_oh = median(oh, o->rounds);
    m_th = median(th, o->rounds);
    printf("\n%-56s %10s %10s %8s\n", "query (median of rounds of medians of reps), ms", "ours",
           "today's", "ratio");
    printf("%-56s %10.2f %10.2f %8.2f\n", "one series, a day of raw points (86400, limit 100000)",
           m_od, m_td, m_td / m_od);
    printf("%-56s %10.2f %10.2f %8.2f\n", "hourly avg over the whole series", m_oh, m_th,
           m_th / m_oh);
    printf("ratio = today's row layout ms / ours ms (> 1 = ours faster)\n");
}

/* ---- driver ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_storage [--points N] [--rounds R] [--dir DIR] [--batch-rows N]"
            " [--hot-max-points N] [--move-rows N] [--sync full|normal] [--parts e2e,disk,query]"
            " [--disk-devices N] [--disk-hours H] [--query-days N] [--query-reps N] [--smoke]"
            " [--latency N]\n");
    exit(2);
}

static unsigned parse_parts(const char *v)
{
    unsigned parts = 0;
    char buf[64], *tok, *save = NULL;

    snprintf(buf, sizeof buf, "%s", v);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "e2e") == 0)
            parts |= PART_E2E;
        else if (strcmp(tok, "replay") == 0)
            parts |= PART_REPLAY;
        else if (strcmp(tok, "disk") == 0)
            parts |= PART_DISK;
        else if (strcmp(tok, "query") == 0)
            parts |= PART_QUERY;
        else
            usage();
    }
    return parts;
}

int main(int argc, char **argv)
{
    struct opts o = { .points = 2000000, .rounds = 3, .dir = getenv("TMPDIR"),
                      .batch_rows = STORE_DEFAULT_BATCH_ROWS, .hot_max_points = 1000000, .move_rows = 100000,
                      .parts = PART_E2E | PART_DISK | PART_QUERY, .disk_devices = 200,
                      .disk_hours = 6, .query_days = 30, .query_reps = 3 };

    if (!o.dir || !o.dir[0])
        o.dir = "/tmp";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--smoke") == 0) { /* the sizes first: options below still win */
            o.points = 100000;
            o.rounds = 1;
            o.disk_devices = 20;
            o.disk_hours = 0.25;
            o.query_days = 2;
            o.query_reps = 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--smoke") == 0)
            continue;
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
        else if (strcmp(a, "--hot-max-points") == 0)
            o.hot_max_points = strtoull(v, NULL, 10);
        else if (strcmp(a, "--move-rows") == 0)
            o.move_rows = strtoull(v, NULL, 10);
        else if (strcmp(a, "--sync") == 0 && strcmp(v, "full") == 0)
            o.sync = STORE_SYNC_FULL;
        else if (strcmp(a, "--sync") == 0 && strcmp(v, "normal") == 0)
            o.sync = STORE_SYNC_NORMAL;
        else if (strcmp(a, "--parts") == 0)
            o.parts = parse_parts(v);
        else if (strcmp(a, "--disk-devices") == 0)
            o.disk_devices = strtoull(v, NULL, 10);
        else if (strcmp(a, "--disk-hours") == 0)
            o.disk_hours = strtod(v, NULL);
        else if (strcmp(a, "--query-days") == 0)
            o.query_days = strtoull(v, NULL, 10);
        else if (strcmp(a, "--query-reps") == 0)
            o.query_reps = atoi(v);
        else if (strcmp(a, "--latency") == 0)
            o.latency = strtoull(v, NULL, 10);
        else
            usage();
        i++;
    }
    if (o.points < NKEYS * NDEV || o.rounds < 1 || o.rounds > MAX_ROUNDS || o.batch_rows == 0 ||
        o.hot_max_points == 0 || o.move_rows == 0 || o.parts == 0 || o.disk_devices == 0 ||
        !(o.disk_hours * 3600.0 >= 1) || o.query_days == 0 || o.query_days > 3650 ||
        o.query_reps < 1 || o.query_reps > MAX_REPS)
        usage();
    o.points -= o.points % NKEYS;
    if (o.latency > 0)
        return run_latency(&o);

    printf("storage bench: sync=%s; dir %s; SQLite %s\n\n",
           o.sync == STORE_SYNC_NORMAL ? "normal" : "full", o.dir, sqlite3_libversion());
    if (o.parts & PART_E2E)
        run_e2e(&o);
    if (o.parts & PART_DISK)
        run_disk(&o);
    if (o.parts & PART_REPLAY)
        run_replay(&o);
    if (o.parts & PART_QUERY)
        run_query(&o);
    return 0;
}
