/* tests/unit/test_store_prop.c: a property test of the storage layer against a plain
 * in-memory model kept here: per device, per key, a sorted array ts -> value in which a
 * later write of the same (device, key, ts) replaces the earlier one.
 *
 * Each seed drives one random workload through a real store on a real uv loop: appends
 * of 1..8 points of every value type (NaN, -0.0, infinities, subnormals, huge and tiny
 * numbers, booleans, empty and ~5 KB strings, JSON), mostly increasing timestamps with
 * jitter, late and far-past points, exact duplicates, same-ts overwrites that change
 * the type, timestamps near the int64 limits; forced chunking (store_compact) at random
 * moments; restarts (store_close + store_open on the same file); device deletes. After
 * waiting for everything submitted to be durable, every query (raw asc/desc with random
 * ranges and limits, aggregates over random intervals) is answered by the model too and
 * the two results must agree exactly: doubles bit for bit, strings byte for byte, the
 * truncated flags as well. Only what the order of folding decides is looser: sums and
 * averages agree within a tolerance (chunk statistics change the order of the
 * additions), and a min or max over both zeros may be either zero. After each restart
 * the latest values store_load_latest reports must be the model's newest points.
 *
 * Replay: GALE_PROP_SEED=n runs seed n alone; GALE_PROP_ITERS=k sets the workload steps
 * per seed (default PROP_STEPS). A mismatch prints the seed, the step, the query and
 * the first differing point. Loop thread only; the store's writer and reader threads
 * are the store's own. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <uv.h>

#include "base/alloc.h"
#include "gateway/msg.h"
#include "storage/store.h"
#include "storage/store_int.h"

#define PROP_STEPS 1200 /* workload steps per seed unless GALE_PROP_ITERS says */
#define WAIT_MS 30000   /* deadline of one wait for durability or a query */
#define MAX_DEVICES 20
#define MAX_KEYS 6 /* keys per device */
#define MAX_MSG_POINTS 8
#define LONG_STR_BYTES 5000 /* longest generated string */
#define TOLERANCE 1e-9      /* relative, for sum and avg */

/* ---- seeded PRNG (splitmix64: tiny, good enough, the same on every platform) ---- */

static uint64_t rng_next(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* In [0, n); n > 0 (the modulo bias does not matter here). */
static uint64_t rnd(uint64_t *st, uint64_t n)
{
    return rng_next(st) % n;
}

/* In [lo, hi], lo <= hi; unsigned arithmetic, as the span may not fit int64. */
static int64_t rnd_range(uint64_t *st, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)hi - (uint64_t)lo;

    return (int64_t)((uint64_t)lo + (span == UINT64_MAX ? rng_next(st) : rnd(st, span + 1)));
}

/* True with probability pct / 100. */
static int chance(uint64_t *st, unsigned pct)
{
    return rnd(st, 100) < pct;
}

static double from_bits(uint64_t b)
{
    double d;

    memcpy(&d, &b, sizeof d);
    return d;
}

/* ---- the model ---- */

struct mval {
    int64_t ts;
    enum val_type type;
    double num; /* VAL_NUM value, VAL_BOOL 0 or 1 */
    char *str;  /* VAL_STR / VAL_JSON text, owned; NULL otherwise */
    size_t len; /* bytes in str */
};

struct mseries {
    const char *key; /* borrowed from key_pool */
    struct mval *v;  /* sorted by ts, one entry per ts */
    size_t n, cap;
    /* generator state */
    int64_t cursor;     /* where "mostly increasing" continues */
    enum val_type type; /* the type most writes keep */
    double level;       /* slowly varying numeric value */
    char last_str[64];  /* a string to repeat now and then */
};

struct mdevice {
    char id[32];
    int known; /* written since the last delete: the store knows the id */
    struct mseries ser[MAX_KEYS];
    size_t nkeys;
};

/* Uppercase and punctuation on purpose: "every key" results sort by bytes. */
static const char *const key_pool[] = {
    "temp", "hum", "Z", "a.b", "k-1", "k10", "k2", "on", "msg", "x_y", "A", "cfg",
};
#define KEY_POOL_N (sizeof key_pool / sizeof key_pool[0])

/* What one query asks, in plain values (turned into a struct store_query per run). */
struct qspec {
    size_t dev;          /* index into devices */
    const char *keys[4]; /* borrowed; nkeys 0 = every key */
    size_t nkeys;
    int64_t from, to;
    size_t limit;
    int desc;
    enum store_agg agg;
    int64_t interval;
};

/* One expected point: a raw value or a bucket with what the tolerance needs. */
struct xpt {
    int64_t ts;
    enum val_type type;
    double num;
    const char *str; /* borrowed from the model */
    size_t len;
    double abs_sum;      /* sum of |x| of the bucket's finite values */
    uint64_t count;      /* numeric points in the bucket */
    int nan, pinf, ninf; /* the bucket holds a NaN / +inf / -inf value */
    int both_zeros;      /* ... and +0.0 and -0.0 */
};

struct xseries {
    const char *key;
    struct xpt *pts;
    size_t n, total; /* kept, and matching before the limit */
    int truncated;
};

struct prop {
    /* the loop and the store */
    uv_loop_t loop;
    uv_timer_t tick; /* keeps UV_RUN_ONCE from sleeping past a deadline */
    char dir[64], path[128];
    struct store_cfg cfg;
    struct store *s;
    uint64_t last_seq;    /* seq of the last write submitted since the open */
    uint64_t durable_seq; /* on_durable's watermark since the open */
    int write_failed;     /* on_durable reported ok = 0 */
    int query_done;
    struct store_result *res;

    /* the workload */
    uint64_t seed, rng;
    unsigned step, nsteps;
    struct mdevice dev[MAX_DEVICES];
    size_t ndev;
    char strbuf[MAX_MSG_POINTS][LONG_STR_BYTES + 1]; /* texts of the message being built */
    unsigned long nqueries, npoints, ncompact, nrestart, ndelete;
    unsigned long ncompared, ntruncated; /* points compared, series truncated */
};

/* ---- the store on a loop ---- */

static void on_durable(void *ctx, uint64_t upto, int ok)
{
    struct prop *p = ctx;

    if (!ok)
        p->write_failed = 1;
    if (upto > p->durable_seq)
        p->durable_seq = upto;
}

static void on_pressure(void *ctx, int paused)
{
    (void)ctx;
    (void)paused; /* the test never waits on pressure; the store handles it alone */
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void open_store(struct prop *p)
{
    p->last_seq = 0; /* seqs start over with every open */
    p->durable_seq = 0;
    assert_int_equal(store_open(&p->loop, &p->cfg, &p->s), 0);
    store_set_callbacks(p->s, on_durable, on_pressure, p);
}

static void close_store(struct prop *p)
{
    store_close(p->s);
    p->s = NULL;
    uv_run(&p->loop, UV_RUN_NOWAIT); /* the store's handles finish closing */
    assert_false(p->write_failed);
}

static void note_seq(struct prop *p, uint64_t seq)
{
    if (seq > p->last_seq)
        p->last_seq = seq;
}

/* Runs the loop until *done_flag is set (done_flag NULL: until the durable watermark
 * reaches *seq) or WAIT_MS pass; returns whether it happened. */
static int run_until(struct prop *p, const int *done_flag, const uint64_t *seq)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)WAIT_MS * 1000000;
    int ok;

    uv_timer_start(&p->tick, on_tick, 10, 10);
    while (!(ok = done_flag ? *done_flag : p->durable_seq >= *seq) && uv_hrtime() < deadline)
        uv_run(&p->loop, UV_RUN_ONCE);
    uv_timer_stop(&p->tick);
    return ok;
}

/* Read your writes: everything submitted so far is durable before a query runs. */
static void wait_all_durable(struct prop *p)
{
    uint64_t seq = p->last_seq;

    store_flush(p->s);
    if (!run_until(p, NULL, &seq))
        fail_msg("seed=%" PRIu64 " step=%u: seq %" PRIu64 " not durable in %d ms", p->seed, p->step,
                 seq, WAIT_MS);
    if (p->write_failed)
        fail_msg("seed=%" PRIu64 " step=%u: a write failed", p->seed, p->step);
}

static void on_query(void *ctx, struct store_query *q, struct store_result *res)
{
    struct prop *p = ctx;

    store_query_free(q);
    store_result_free(p->res);
    p->res = res;
    p->query_done = 1;
}

static const struct store_result *query_store(struct prop *p, const struct qspec *qs)
{
    struct store_query *q = xcalloc(1, sizeof *q);

    q->device = xstrdup(p->dev[qs->dev].id);
    if (qs->nkeys > 0) {
        q->nkeys = qs->nkeys;
        q->keys = xcalloc(qs->nkeys, sizeof *q->keys);
        for (size_t i = 0; i < qs->nkeys; i++)
            q->keys[i] = xstrdup(qs->keys[i]);
    }
    q->from_ms = qs->from;
    q->to_ms = qs->to;
    q->limit = qs->limit;
    q->desc = qs->desc;
    q->agg = qs->agg;
    q->interval_ms = qs->interval;
    p->query_done = 0;
    assert_int_equal(store_query_telemetry(p->s, q, on_query, p), 0);
    if (!run_until(p, &p->query_done, NULL))
        fail_msg("seed=%" PRIu64 " step=%u: query not answered in %d ms", p->seed, p->step,
                 WAIT_MS);
    return p->res;
}

/* ---- the model's writes ---- */

static void clear_mval(struct mval *v)
{
    free(v->str);
    v->str = NULL;
    v->len = 0;
}

/* First index with ts >= t. */
static size_t lower_index(const struct mseries *ms, int64_t t)
{
    size_t lo = 0, hi = ms->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ms->v[mid].ts < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct mseries *find_series(struct mdevice *d, const char *key)
{
    for (size_t i = 0; i < d->nkeys; i++) {
        if (strcmp(d->ser[i].key, key) == 0)
            return &d->ser[i];
    }
    return NULL;
}

/* A later write of (device, key, ts) replaces the earlier one. */
static void remember_point(struct mseries *ms, const struct point *pt)
{
    size_t i = lower_index(ms, pt->ts_ms);
    struct mval nv = {.ts = pt->ts_ms, .type = pt->type, .num = pt->num};

    if (pt->type == VAL_STR || pt->type == VAL_JSON) {
        nv.str = xmalloc(pt->str_len + 1);
        memcpy(nv.str, pt->str, pt->str_len);
        nv.str[pt->str_len] = '\0';
        nv.len = pt->str_len;
    }
    if (i < ms->n && ms->v[i].ts == pt->ts_ms) {
        clear_mval(&ms->v[i]);
        ms->v[i] = nv;
        return;
    }
    if (ms->n == ms->cap) {
        ms->cap = ms->cap ? 2 * ms->cap : 64;
        ms->v = xrealloc(ms->v, ms->cap * sizeof *ms->v);
    }
    memmove(&ms->v[i + 1], &ms->v[i], (ms->n - i) * sizeof *ms->v);
    ms->v[i] = nv;
    ms->n++;
}

static void forget_device(struct mdevice *d)
{
    for (size_t k = 0; k < d->nkeys; k++) {
        struct mseries *ms = &d->ser[k];
        for (size_t i = 0; i < ms->n; i++)
            clear_mval(&ms->v[i]);
        free(ms->v);
        ms->v = NULL;
        ms->n = ms->cap = 0;
    }
    d->known = 0;
}

/* ---- the workload: values ---- */

static double gen_special(uint64_t *r)
{
    switch (rnd(r, 16)) {
    case 0:
        return NAN;
    case 1:
        return from_bits(0x7ff8000000000000ull | (rng_next(r) & 0x0007ffffffffffffull));
    case 2:
        return from_bits(0xfff0000000000001ull | (rng_next(r) & 0x000fffffffffffffull));
    case 3:
        return -0.0;
    case 4:
        return 0.0;
    case 5:
        return INFINITY;
    case 6:
        return -INFINITY;
    case 7:
        return from_bits(1 + rnd(r, 0x000fffffffffffffull)); /* subnormal */
    case 8:
        return -from_bits(1 + rnd(r, 0x000fffffffffffffull));
    case 9:
        return DBL_MAX;
    case 10:
        return -DBL_MAX;
    case 11:
        return DBL_MIN;
    case 12:
        return (double)rnd_range(r, 1, 1000) * 1e300; /* huge */
    case 13:
        return (double)rnd_range(r, -1000, 1000) * 1e-300; /* tiny */
    case 14:
        return 9007199254740993.0 * (chance(r, 50) ? 1 : -1); /* 2^53 + 1 rounds */
    default:
        return (double)INT64_MAX * (chance(r, 50) ? 1 : -1);
    }
}

static double gen_num(uint64_t *r, struct mseries *ms)
{
    switch (rnd(r, 10)) {
    case 0:
        return gen_special(r);
    case 1:
    case 2:
        return (double)rnd_range(r, -1000000, 1000000); /* integers */
    case 3:
    case 4:
        return (double)rnd_range(r, -100000, 100000) / 100.0; /* decimals */
    case 5:
        return from_bits(rng_next(r)); /* any bit pattern, NaNs included */
    default: /* slowly varying with noise at two decimals, as sensors are */
        ms->level += (double)rnd_range(r, -50, 50) / 100.0;
        return round(ms->level * 100.0) / 100.0;
    }
}

static size_t gen_text(uint64_t *r, struct mseries *ms, enum val_type type, char *out)
{
    static const char *const utf8[] = {
        "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x8c\xa1", "\"", "\\", " ", "\t"};
    size_t n = 0, want;

    if (type == VAL_JSON) {
        switch (rnd(r, 5)) {
        case 0:
            return (size_t)sprintf(out, "{}");
        case 1:
            return (size_t)sprintf(out, "[%d,%d,\"x\"]", (int)rnd(r, 100), (int)rnd(r, 9));
        case 2:
            return (size_t)sprintf(out, "null");
        default:
            return (size_t)sprintf(out, "{\"a\":%d,\"b\":{\"c\":[true,%d.%02d]}}",
                                   (int)rnd(r, 100000), (int)rnd(r, 1000), (int)rnd(r, 100));
        }
    }
    switch (rnd(r, 20)) {
    case 0:
    case 1:
        return 0; /* empty */
    case 2:
    case 3:
    case 4: /* a repeat of the series' previous text */
        n = strlen(ms->last_str);
        memcpy(out, ms->last_str, n);
        return n;
    case 5:
        want = (size_t)rnd_range(r, 1000, LONG_STR_BYTES - 8);
        break;
    default:
        want = (size_t)rnd_range(r, 1, 40);
        break;
    }
    while (n < want) {
        if (chance(r, 10)) {
            const char *u = utf8[rnd(r, sizeof utf8 / sizeof utf8[0])];
            size_t ul = strlen(u);
            memcpy(out + n, u, ul);
            n += ul;
        } else {
            out[n++] = (char)('!' + rnd(r, 94));
        }
    }
    if (n < sizeof ms->last_str) {
        memcpy(ms->last_str, out, n);
        ms->last_str[n] = '\0';
    }
    return n;
}

static enum val_type gen_type(uint64_t *r)
{
    unsigned x = (unsigned)rnd(r, 100);

    return x < 55 ? VAL_NUM : x < 70 ? VAL_BOOL : x < 90 ? VAL_STR : VAL_JSON;
}

/* A fresh value of the series' current type (which now and then changes). */
static void gen_value(struct prop *p, struct mseries *ms, struct point *pt, char *buf)
{
    if (chance(&p->rng, 8))
        ms->type = gen_type(&p->rng); /* a key may change type */
    pt->type = ms->type;
    pt->str = NULL;
    pt->str_len = 0;
    pt->num = 0;
    switch (pt->type) {
    case VAL_NUM:
        pt->num = gen_num(&p->rng, ms);
        break;
    case VAL_BOOL:
        pt->num = chance(&p->rng, 50) ? 1 : 0;
        break;
    case VAL_STR:
    case VAL_JSON:
        pt->str_len = gen_text(&p->rng, ms, pt->type, buf);
        buf[pt->str_len] = '\0';
        pt->str = buf;
        break;
    }
}

/* ---- the workload: timestamps ---- */

static int64_t gen_extreme_ts(uint64_t *r)
{
    switch (rnd(r, 8)) {
    case 0:
        return INT64_MIN;
    case 1:
        return INT64_MAX;
    case 2:
        return INT64_MIN + rnd_range(r, 1, 100000);
    case 3:
        return INT64_MAX - rnd_range(r, 1, 100000);
    case 4:
        return rnd_range(r, -5, 5);
    default:
        return -rnd_range(r, 1, INT64_C(1) << 50);
    }
}

/* Fills pt->ts_ms and the value: usually the next ts of the series with jitter, else a
 * late point, a far-past one, an exact duplicate, a same-ts overwrite or an extreme. */
static void gen_point(struct prop *p, struct mseries *ms, struct point *pt, char *buf)
{
    uint64_t *r = &p->rng;
    unsigned x = (unsigned)rnd(r, 100);

    pt->key = ms->key;
    if (x < 12 && ms->n > 0) {
        const struct mval *old = &ms->v[rnd(r, ms->n)];
        pt->ts_ms = old->ts;
        if (x < 6) { /* exact duplicate of what is stored */
            pt->type = old->type;
            pt->num = old->num;
            pt->str = old->str;
            pt->str_len = old->len;
        } else { /* same ts, another value and maybe another type */
            if (chance(r, 50))
                ms->type = gen_type(r);
            gen_value(p, ms, pt, buf);
        }
        return;
    }
    gen_value(p, ms, pt, buf);
    if (x < 20 && ms->n > 1) { /* late: inside the range already written */
        pt->ts_ms = rnd_range(r, ms->v[0].ts, ms->v[ms->n - 1].ts);
    } else if (x < 24) { /* far in the past */
        pt->ts_ms = ms->cursor - rnd_range(r, 1000000, INT64_C(100000000000));
    } else if (x < 26) {
        pt->ts_ms = gen_extreme_ts(r);
    } else if (x < 30) { /* a little out of order */
        pt->ts_ms = ms->cursor - rnd_range(r, 0, 50);
    } else {
        ms->cursor += rnd_range(r, 1, 2000);
        pt->ts_ms = ms->cursor;
    }
}

/* ---- workload steps ---- */

static void append_message(struct prop *p, size_t di)
{
    struct mdevice *d = &p->dev[di];
    struct point pts[MAX_MSG_POINTS];
    size_t n = (size_t)rnd_range(&p->rng, 1, MAX_MSG_POINTS);
    struct msg *m;

    for (size_t i = 0; i < n; i++) {
        struct mseries *ms = &d->ser[rnd(&p->rng, d->nkeys)];
        if (i > 0 && chance(&p->rng, 5)) {
            /* the same (key, ts) twice in one message: the later point wins */
            ms = find_series(d, pts[i - 1].key);
            gen_value(p, ms, &pts[i], p->strbuf[i]);
            pts[i].key = ms->key;
            pts[i].ts_ms = pts[i - 1].ts_ms;
            continue;
        }
        gen_point(p, ms, &pts[i], p->strbuf[i]);
    }
    m = msg_new(MSG_TELEMETRY, d->id, "devices/x/telemetry", "{}", 2, pts, n);
    /* the model learns from the message's own copies, in the message's order */
    for (size_t i = 0; i < m->npoints; i++)
        remember_point(find_series(d, m->points[i].key), &m->points[i]);
    d->known = 1;
    p->npoints += n;
    note_seq(p, store_append(p->s, m));
    msg_unref(m); /* the store holds its own reference */
}

static void force_compaction(struct prop *p)
{
    note_seq(p, store_compact(p->s));
    p->ncompact++;
    if (chance(&p->rng, 50))
        wait_all_durable(p); /* chunked now; else it happens among later writes */
}

static void restart_store(struct prop *p)
{
    if (chance(&p->rng, 50))
        wait_all_durable(p);
    close_store(p); /* commits everything submitted */
    open_store(p);
    p->nrestart++;
}

static void delete_random_device(struct prop *p)
{
    struct mdevice *d = &p->dev[rnd(&p->rng, p->ndev)];

    note_seq(p, store_delete_device(p->s, d->id));
    forget_device(d);
    p->ndelete++;
}

/* ---- the model's answer ---- */

/* floor(ts / iv) * iv, clamped to INT64_MIN where that is below it; one bucket for the
 * whole range when iv <= 0. */
static int64_t bucket_of(int64_t ts, int64_t iv)
{
    int64_t q, b;

    if (iv <= 0)
        return 0;
    q = ts / iv;
    if (ts % iv != 0 && ts < 0)
        q--;
    if (__builtin_mul_overflow(q, iv, &b))
        return INT64_MIN;
    return b;
}

struct bucket {
    int open;
    int64_t key, min_ts, max_ts;
    double sum, min, max, first, last, abs_sum;
    uint64_t count;
    int nan, pinf, ninf;
    int pzero, nzero; /* a +0.0 / -0.0 value */
};

static void push_expected(struct xseries *xs, const struct xpt *x, size_t *cap)
{
    if (xs->total == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        xs->pts = xrealloc(xs->pts, *cap * sizeof *xs->pts);
    }
    xs->pts[xs->total++] = *x;
}

static void close_bucket(const struct qspec *qs, struct bucket *b, struct xseries *xs, size_t *cap)
{
    struct xpt x = {.type = VAL_NUM};

    if (!b->open || b->count == 0) { /* strings or JSON only: no bucket */
        b->open = 0;
        return;
    }
    b->open = 0;
    x.ts = qs->interval > 0 ? b->key : b->min_ts;
    x.abs_sum = b->abs_sum;
    x.count = b->count;
    x.nan = b->nan;
    x.pinf = b->pinf;
    x.ninf = b->ninf;
    x.both_zeros = b->pzero && b->nzero;
    switch (qs->agg) {
    case STORE_AGG_AVG:
        x.num = b->sum / (double)b->count;
        break;
    case STORE_AGG_MIN:
        x.num = b->min;
        break;
    case STORE_AGG_MAX:
        x.num = b->max;
        break;
    case STORE_AGG_SUM:
        x.num = b->sum;
        break;
    case STORE_AGG_COUNT:
        x.num = (double)b->count;
        break;
    case STORE_AGG_FIRST:
        x.num = b->first;
        break;
    case STORE_AGG_LAST:
        x.num = b->last;
        break;
    case STORE_AGG_NONE:
        break;
    }
    push_expected(xs, &x, cap);
}

/* Folds one value into the bucket the way query.c's emitter does, in the order the
 * query streams (newest first for desc): min and max start at the first numeric value
 * seen and move only to a strictly smaller / larger one. */
static void fold(struct bucket *b, const struct mval *v)
{
    if (v->type != VAL_NUM && v->type != VAL_BOOL)
        return;
    if (b->count == 0 || v->num < b->min)
        b->min = v->num;
    if (b->count == 0 || v->num > b->max)
        b->max = v->num;
    if (b->count == 0 || v->ts < b->min_ts) {
        b->min_ts = v->ts;
        b->first = v->num;
    }
    if (b->count == 0 || v->ts > b->max_ts) {
        b->max_ts = v->ts;
        b->last = v->num;
    }
    b->sum += v->num;
    if (isnan(v->num))
        b->nan = 1;
    else if (v->num == INFINITY)
        b->pinf = 1;
    else if (v->num == -INFINITY)
        b->ninf = 1;
    else
        b->abs_sum += fabs(v->num);
    if (v->num == 0 && signbit(v->num))
        b->nzero = 1;
    else if (v->num == 0)
        b->pzero = 1;
    b->count++;
}

static size_t effective_limit(size_t limit)
{
    if (limit == 0)
        return STORE_DEFAULT_LIMIT;
    return limit > STORE_MAX_LIMIT ? STORE_MAX_LIMIT : limit;
}

/* The expected series for key of device d (ms NULL: the key was never written). */
static void expect_series(const struct qspec *qs, const struct mseries *ms, const char *key,
                          struct xseries *xs)
{
    size_t lo = 0, hi = 0, cap = 0, limit = effective_limit(qs->limit);
    struct bucket b = {0};

    memset(xs, 0, sizeof *xs);
    xs->key = key;
    if (ms && qs->from <= qs->to) {
        lo = lower_index(ms, qs->from);
        hi = lo;
        while (hi < ms->n && ms->v[hi].ts <= qs->to)
            hi++;
    }
    for (size_t k = 0; k < hi - lo; k++) {
        const struct mval *v = &ms->v[qs->desc ? hi - 1 - k : lo + k];
        if (qs->agg == STORE_AGG_NONE) {
            struct xpt x = {
                .ts = v->ts, .type = v->type, .num = v->num, .str = v->str, .len = v->len};
            push_expected(xs, &x, &cap);
            continue;
        }
        if (b.open && bucket_of(v->ts, qs->interval) != b.key)
            close_bucket(qs, &b, xs, &cap);
        if (!b.open) {
            memset(&b, 0, sizeof b);
            b.open = 1;
            b.key = bucket_of(v->ts, qs->interval);
        }
        fold(&b, v);
    }
    if (qs->agg != STORE_AGG_NONE)
        close_bucket(qs, &b, xs, &cap);
    xs->n = xs->total < limit ? xs->total : limit;
    xs->truncated = xs->total > limit;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The whole expected result; returns the number of series. */
static size_t expect_result(struct prop *p, const struct qspec *qs, struct xseries *out)
{
    struct mdevice *d = &p->dev[qs->dev];
    const char *sorted[MAX_KEYS];
    size_t n = 0;

    if (!d->known)
        return 0; /* an unknown device: no series at all, even for named keys */
    if (qs->nkeys > 0) {
        for (size_t i = 0; i < qs->nkeys; i++)
            expect_series(qs, find_series(d, qs->keys[i]), qs->keys[i], &out[n++]);
        return n;
    }
    for (size_t i = 0; i < d->nkeys; i++)
        sorted[i] = d->ser[i].key;
    qsort(sorted, d->nkeys, sizeof *sorted, cmp_key);
    for (size_t i = 0; i < d->nkeys; i++) {
        expect_series(qs, find_series(d, sorted[i]), sorted[i], &out[n]);
        if (out[n].total > 0) /* every key: only those with points in the answer */
            n++;
        else
            free(out[n].pts);
    }
    return n;
}

/* ---- comparing ---- */

static const char *agg_name(enum store_agg a)
{
    static const char *const names[] = {"raw", "avg",   "min",   "max",
                                        "sum", "count", "first", "last"};
    return (unsigned)a < sizeof names / sizeof names[0] ? names[a] : "?";
}

static void describe(const struct prop *p, const struct qspec *qs, char *out, size_t cap)
{
    int n = snprintf(out, cap, "device=%s keys=", p->dev[qs->dev].id);

    if (qs->nkeys == 0)
        n += snprintf(out + n, cap - (size_t)n, "(all)");
    for (size_t i = 0; i < qs->nkeys; i++)
        n += snprintf(out + n, cap - (size_t)n, "%s%s", i ? "," : "", qs->keys[i]);
    n += snprintf(out + n, cap - (size_t)n, " from=%" PRId64 " to=%" PRId64 " limit=%zu %s %s",
                  qs->from, qs->to, qs->limit, qs->desc ? "desc" : "asc", agg_name(qs->agg));
    if (qs->agg != STORE_AGG_NONE)
        snprintf(out + n, cap - (size_t)n, " interval=%" PRId64, qs->interval);
}

static void format_num(double d, char *out, size_t cap)
{
    uint64_t b;

    memcpy(&b, &d, sizeof b);
    snprintf(out, cap, "%.17g (0x%016" PRIx64 ")", d, b);
}

static int same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Sums and averages: the engine may add in another order (whole-chunk sums), so they
 * agree within TOLERANCE of the sum of magnitudes; a NaN must stay NaN and an infinity
 * the same infinity. When the finite magnitudes alone overflow, the order of additions
 * decides between a finite value, an infinity and NaN: any of them is right. */
static int sum_matches(const struct xpt *x, double got, int avg)
{
    double scale = avg ? x->abs_sum / (double)x->count : x->abs_sum;

    if (same_bits(x->num, got))
        return 1;
    if (x->nan)
        return isnan(got);
    if (isinf(x->abs_sum))
        return 1;
    if (x->pinf && x->ninf)
        return isnan(got);
    if (x->pinf || x->ninf)
        return isinf(got) && (got > 0) == (x->pinf != 0);
    return isfinite(got) && fabs(got - x->num) <= TOLERANCE * scale;
}

/* 0 when the point matches; else fills why. */
static int point_matches(const struct qspec *qs, const struct xpt *x, const struct point *g,
                         const char *key, char *why, size_t cap)
{
    char a[64], b[64];

    if (g->ts_ms != x->ts || g->type != x->type) {
        snprintf(why, cap, "ts/type: want ts=%" PRId64 " type=%d, got ts=%" PRId64 " type=%d",
                 x->ts, (int)x->type, g->ts_ms, (int)g->type);
        return -1;
    }
    if (!g->key || strcmp(g->key, key) != 0) {
        snprintf(why, cap, "point key: want %s, got %s", key, g->key ? g->key : "(null)");
        return -1;
    }
    if (x->type == VAL_STR || x->type == VAL_JSON) {
        if (g->str_len != x->len || (x->len && memcmp(g->str, x->str, x->len) != 0)) {
            snprintf(why, cap, "text: want %zu bytes \"%.40s\", got %zu bytes \"%.40s\"", x->len,
                     x->str ? x->str : "", g->str_len, g->str ? g->str : "(null)");
            return -1;
        }
        return 0;
    }
    if (qs->agg == STORE_AGG_SUM || qs->agg == STORE_AGG_AVG
            ? sum_matches(x, g->num, qs->agg == STORE_AGG_AVG)
            : same_bits(x->num, g->num))
        return 0;
    /* +0.0 and -0.0 compare equal, so which of them is the bucket's min or max depends
     * on the order the values are folded in (a desc query's or a chunk header's): with
     * both in the bucket, either zero is right */
    if ((qs->agg == STORE_AGG_MIN || qs->agg == STORE_AGG_MAX) && x->both_zeros && x->num == 0 &&
        g->num == 0)
        return 0;
    format_num(x->num, a, sizeof a);
    format_num(g->num, b, sizeof b);
    if (qs->agg == STORE_AGG_NONE)
        snprintf(why, cap, "value at ts=%" PRId64 ": want %s, got %s", x->ts, a, b);
    else
        snprintf(why, cap, "bucket ts=%" PRId64 " of %" PRIu64 " values: want %s, got %s", x->ts,
                 x->count, a, b);
    return -1;
}

static void mismatch(const struct prop *p, const struct qspec *qs, const char *fmt, ...)
{
    char q[512], why[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    describe(p, qs, q, sizeof q);
    fail_msg("store vs model mismatch: seed=%" PRIu64 " step=%u query #%lu: %s\n  %s\n"
             "  replay: GALE_PROP_SEED=%" PRIu64 " GALE_PROP_ITERS=%u",
             p->seed, p->step, p->nqueries, q, why, p->seed, p->nsteps);
}

static void check_query(struct prop *p, const struct qspec *qs)
{
    struct xseries want[MAX_KEYS + 4];
    size_t nwant = expect_result(p, qs, want);
    const struct store_result *got = query_store(p, qs);
    char why[400];

    p->nqueries++;
    if (got->rc != 0)
        mismatch(p, qs, "query failed rc=%d", got->rc);
    if (got->nseries != nwant)
        mismatch(p, qs, "series: want %zu, got %zu", nwant, got->nseries);
    for (size_t i = 0; i < nwant; i++) {
        const struct store_series *gs = &got->series[i];
        const struct xseries *xs = &want[i];
        if (strcmp(gs->key, xs->key) != 0)
            mismatch(p, qs, "series %zu key: want %s, got %s", i, xs->key, gs->key);
        for (size_t j = 0; j < xs->n && j < gs->npoints; j++) {
            if (point_matches(qs, &xs->pts[j], &gs->points[j], xs->key, why, sizeof why))
                mismatch(p, qs, "key %s point %zu of %zu: %s", xs->key, j, xs->n, why);
        }
        if (gs->npoints != xs->n)
            mismatch(p, qs, "key %s: want %zu points (of %zu matching), got %zu", xs->key, xs->n,
                     xs->total, gs->npoints);
        if (gs->truncated != xs->truncated)
            mismatch(p, qs, "key %s truncated: want %d, got %d", xs->key, xs->truncated,
                     gs->truncated);
        p->ncompared += xs->n;
        p->ntruncated += (unsigned long)xs->truncated;
    }
    for (size_t i = 0; i < nwant; i++)
        free(want[i].pts);
}

/* ---- the latest values a start-up loads ---- */

struct latest_check {
    struct prop *p;
    unsigned char seen[MAX_DEVICES][MAX_KEYS]; /* times each series was reported */
    char why[512];                             /* the first mismatch, "" while none */
};

static void on_latest(void *ctx, const char *device, const struct point *pt)
{
    struct latest_check *lc = ctx;
    const struct qspec raw = {0};
    struct mseries *ms = NULL;
    struct xpt x = {0};
    unsigned char *seen = NULL;
    char why[400];

    if (lc->why[0])
        return;
    for (size_t i = 0; i < lc->p->ndev && !ms; i++) {
        if (strcmp(lc->p->dev[i].id, device) == 0 && lc->p->dev[i].known)
            ms = find_series(&lc->p->dev[i], pt->key);
        if (ms)
            seen = &lc->seen[i][ms - lc->p->dev[i].ser];
    }
    if (!ms || ms->n == 0 || (*seen)++ > 0) {
        snprintf(lc->why, sizeof lc->why, "latest: device=%s key=%s: %s", device, pt->key,
                 ms && ms->n ? "reported twice" : "no points in the model");
        return;
    }
    /* the newest ts wins, not the newest write */
    x.ts = ms->v[ms->n - 1].ts;
    x.type = ms->v[ms->n - 1].type;
    x.num = ms->v[ms->n - 1].num;
    x.str = ms->v[ms->n - 1].str;
    x.len = ms->v[ms->n - 1].len;
    if (point_matches(&raw, &x, pt, ms->key, why, sizeof why))
        snprintf(lc->why, sizeof lc->why, "latest: device=%s key=%s: %s", device, ms->key, why);
}

/* store_load_latest after a restart: one newest point per (device, key) with points. */
static void check_latest(struct prop *p)
{
    struct latest_check lc = {.p = p};

    assert_int_equal(store_load_latest(p->s, on_latest, &lc), 0);
    for (size_t i = 0; i < p->ndev && !lc.why[0]; i++) {
        for (size_t k = 0; k < p->dev[i].nkeys && !lc.why[0]; k++) {
            const struct mseries *ms = &p->dev[i].ser[k];
            if (p->dev[i].known && ms->n > 0 && !lc.seen[i][k])
                snprintf(lc.why, sizeof lc.why,
                         "latest: device=%s key=%s (%zu points, newest ts=%" PRId64
                         ") not reported",
                         p->dev[i].id, ms->key, ms->n, ms->v[ms->n - 1].ts);
        }
    }
    if (lc.why[0])
        fail_msg("store vs model mismatch: seed=%" PRIu64 " step=%u after a restart: %s\n"
                 "  replay: GALE_PROP_SEED=%" PRIu64 " GALE_PROP_ITERS=%u",
                 p->seed, p->step, lc.why, p->seed, p->nsteps);
}

/* ---- random queries ---- */

/* A timestamp around the device's data: an existing one, or one near it. */
static int64_t pick_ts(struct prop *p, const struct mdevice *d)
{
    const struct mseries *ms = &d->ser[rnd(&p->rng, d->nkeys)];
    int64_t t;

    if (ms->n == 0)
        return ms->cursor - rnd_range(&p->rng, 0, 100000);
    t = ms->v[rnd(&p->rng, ms->n)].ts;
    if (chance(&p->rng, 30) && t > INT64_MIN + 1000 && t < INT64_MAX - 1000)
        t += rnd_range(&p->rng, -999, 999);
    return t;
}

static void pick_range(struct prop *p, const struct mdevice *d, struct qspec *qs)
{
    int64_t a, b;

    switch (rnd(&p->rng, 10)) {
    case 0:
    case 1:
    case 2:
        qs->from = INT64_MIN;
        qs->to = INT64_MAX;
        return;
    case 3: /* empty: from after to */
        a = pick_ts(p, d);
        qs->from = a == INT64_MAX ? a : a + 1;
        qs->to = a == INT64_MAX ? a - 1 : a;
        return;
    case 4: /* one instant */
        qs->from = qs->to = pick_ts(p, d);
        return;
    case 5:
        qs->from = INT64_MIN;
        qs->to = pick_ts(p, d);
        return;
    case 6:
        qs->from = pick_ts(p, d);
        qs->to = INT64_MAX;
        return;
    default:
        a = pick_ts(p, d);
        b = pick_ts(p, d);
        qs->from = a < b ? a : b;
        qs->to = a < b ? b : a;
        return;
    }
}

static int64_t pick_interval(struct prop *p, const struct qspec *qs)
{
    /* the span in unsigned arithmetic: INT64_MIN..INT64_MAX does not fit int64 */
    uint64_t span = qs->from <= qs->to ? (uint64_t)qs->to - (uint64_t)qs->from : 0;

    switch (rnd(&p->rng, 9)) {
    case 0:
        return 1;
    case 1:
        return rnd_range(&p->rng, 2, 100);
    case 2:
        return rnd_range(&p->rng, 100, 100000);
    case 3:
        return rnd_range(&p->rng, 100000, INT64_C(100000000));
    case 4: /* a few buckets over the range */
        span /= (uint64_t)rnd_range(&p->rng, 2, 20);
        return span < 2 ? 7 : span > INT64_MAX ? INT64_MAX : (int64_t)span;
    case 5:
        return span < INT64_MAX ? (int64_t)span + 1 : INT64_MAX; /* bigger than the range */
    case 6:
        return INT64_MAX;
    case 7:
        return 0; /* one bucket for the whole range */
    default:
        return -rnd_range(&p->rng, 1, 1000);
    }
}

static void pick_keys(struct prop *p, const struct mdevice *d, struct qspec *qs)
{
    size_t want;

    qs->nkeys = 0;
    if (chance(&p->rng, 35))
        return; /* every key */
    want = (size_t)rnd_range(&p->rng, 1, 3);
    for (size_t i = 0; i < want; i++) {
        const char *k = chance(&p->rng, 10) ? "no-such-key" : d->ser[rnd(&p->rng, d->nkeys)].key;
        int dup = 0;
        for (size_t j = 0; j < qs->nkeys; j++)
            dup |= strcmp(qs->keys[j], k) == 0;
        if (!dup)
            qs->keys[qs->nkeys++] = k;
    }
}

/* 1, small, the exact count of the first key's answer, just above it, larger, 0. */
static void pick_limit(struct prop *p, struct qspec *qs)
{
    struct xseries xs[MAX_KEYS + 4];
    size_t n, total = 0;

    switch (rnd(&p->rng, 7)) {
    case 0:
        qs->limit = 1;
        return;
    case 1:
        qs->limit = (size_t)rnd_range(&p->rng, 2, 10);
        return;
    case 2:
        qs->limit = 0;
        return; /* the default limit */
    case 3:
        qs->limit = (size_t)rnd_range(&p->rng, 100, 20000);
        return;
    default:
        break;
    }
    qs->limit = STORE_MAX_LIMIT;
    n = expect_result(p, qs, xs);
    for (size_t i = 0; i < n; i++) {
        if (i == 0)
            total = xs[i].total;
        free(xs[i].pts);
    }
    qs->limit = total + (size_t)rnd(&p->rng, 3); /* exact, one more, two more */
    if (qs->limit == 0)
        qs->limit = 1;
}

static void check_random_queries(struct prop *p)
{
    size_t nq = (size_t)rnd_range(&p->rng, 1, 6);

    wait_all_durable(p);
    for (size_t i = 0; i < nq; i++) {
        struct qspec qs = {.dev = rnd(&p->rng, p->ndev)};
        const struct mdevice *d = &p->dev[qs.dev];
        pick_keys(p, d, &qs);
        pick_range(p, d, &qs);
        qs.desc = chance(&p->rng, 50);
        qs.agg = chance(&p->rng, 55)
                     ? STORE_AGG_NONE
                     : (enum store_agg)rnd_range(&p->rng, STORE_AGG_AVG, STORE_AGG_LAST);
        if (qs.agg != STORE_AGG_NONE)
            qs.interval = pick_interval(p, &qs);
        pick_limit(p, &qs);
        check_query(p, &qs);
    }
}

/* ---- one seed ---- */

static void make_devices(struct prop *p)
{
    uint64_t *r = &p->rng;

    p->ndev = (size_t)rnd_range(r, 3, MAX_DEVICES);
    for (size_t i = 0; i < p->ndev; i++) {
        struct mdevice *d = &p->dev[i];
        size_t order[KEY_POOL_N];
        int64_t start;

        snprintf(d->id, sizeof d->id, i % 3 == 2 ? "d:%zu.x" : "dev-%zu", i);
        for (size_t k = 0; k < KEY_POOL_N; k++)
            order[k] = k;
        for (size_t k = KEY_POOL_N - 1; k > 0; k--) { /* shuffle, take the first nkeys */
            size_t j = (size_t)rnd(r, k + 1), t = order[k];
            order[k] = order[j];
            order[j] = t;
        }
        switch (rnd(r, 4)) {
        case 0:
            start = rnd_range(r, 0, 1000);
            break;
        case 1:
            start = -rnd_range(r, 1, INT64_C(1) << 40);
            break;
        default:
            start = INT64_C(1700000000000) + rnd_range(r, 0, INT64_C(1) << 30);
            break;
        }
        d->nkeys = (size_t)rnd_range(r, 1, MAX_KEYS);
        for (size_t k = 0; k < d->nkeys; k++) {
            struct mseries *ms = &d->ser[k];
            ms->key = key_pool[order[k]];
            ms->cursor = start + rnd_range(r, 0, 10000);
            ms->type = gen_type(r);
            ms->level = (double)rnd_range(r, -5000, 5000) / 100.0;
        }
    }
}

static unsigned read_env_unsigned(const char *name, unsigned dflt)
{
    const char *v = getenv(name);

    return v && *v ? (unsigned)strtoul(v, NULL, 0) : dflt;
}

static void run_seed(uint64_t seed)
{
    struct prop *p = xcalloc(1, sizeof *p);
    uint64_t t0 = uv_hrtime();
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    char path[160];

    p->seed = seed;
    p->rng = seed;
    p->nsteps = read_env_unsigned("GALE_PROP_ITERS", PROP_STEPS);
    strcpy(p->dir, "/tmp/gale-test-prop-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    snprintf(p->path, sizeof p->path, "%s/gale.db", p->dir);
    assert_int_equal(uv_loop_init(&p->loop), 0);
    assert_int_equal(uv_timer_init(&p->loop, &p->tick), 0);

    /* small batches and a small bound of points not yet chunked, so chunking and its
     * bounded slices happen all through the run */
    p->cfg.path = p->path;
    p->cfg.sync = chance(&p->rng, 15) ? STORE_SYNC_FULL : STORE_SYNC_NORMAL;
    /* an fsync per commit: fewer, larger commits keep such a seed's run short */
    p->cfg.batch_rows = (size_t)rnd_range(&p->rng, p->cfg.sync == STORE_SYNC_FULL ? 32 : 1, 64);
    p->cfg.hot_max_points = (size_t)rnd_range(&p->rng, 50, 5000);
    make_devices(p);
    open_store(p);

    for (p->step = 0; p->step < p->nsteps; p->step++) {
        unsigned x = (unsigned)rnd(&p->rng, 100);
        if (x < 50) {
            append_message(p, rnd(&p->rng, p->ndev));
        } else if (x < 62) { /* a burst: enough rows to cross hot_max_points */
            size_t n = (size_t)rnd_range(&p->rng, 10, 120);
            for (size_t i = 0; i < n; i++)
                append_message(p, rnd(&p->rng, p->ndev));
        } else if (x < 85) {
            check_random_queries(p);
        } else if (x < 95) {
            force_compaction(p);
        } else if (x < 98) {
            restart_store(p);
            check_latest(p);
        } else {
            delete_random_device(p);
        }
    }
    /* a last look at every device, after chunking everything */
    note_seq(p, store_compact(p->s));
    wait_all_durable(p);
    for (size_t i = 0; i < p->ndev; i++) {
        struct qspec qs = {.dev = i, .from = INT64_MIN, .to = INT64_MAX, .limit = STORE_MAX_LIMIT};
        check_query(p, &qs);
        qs.desc = 1;
        check_query(p, &qs);
    }
    print_message("seed=%" PRIu64 " steps=%u devices=%zu hot_max_points=%zu batch_rows=%zu "
                  "sync=%s points=%lu queries=%lu compared=%lu truncated=%lu compactions=%lu "
                  "restarts=%lu deletes=%lu ms=%" PRIu64 "\n",
                  seed, p->nsteps, p->ndev, p->cfg.hot_max_points, p->cfg.batch_rows,
                  p->cfg.sync == STORE_SYNC_FULL ? "full" : "normal", p->npoints, p->nqueries,
                  p->ncompared, p->ntruncated, p->ncompact, p->nrestart, p->ndelete,
                  (uv_hrtime() - t0) / 1000000);

    close_store(p);
    store_result_free(p->res);
    for (size_t i = 0; i < p->ndev; i++)
        forget_device(&p->dev[i]);
    uv_close((uv_handle_t *)&p->tick, NULL);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&p->loop), 0);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        snprintf(path, sizeof path, "%s%s", p->path, sfx[i]);
        unlink(path);
    }
    rmdir(p->dir);
    free(p);
}

static void test_prop(void **state)
{
    run_seed(*(const uint64_t *)*state);
}

/* 120: the latest load once raced a chunk slice (hot points dropped between the
 * chunks' snapshot and the hot read) */
static uint64_t seeds[] = {1, 2, 3, 4, 42, 120, 1234567, 20261201, 0xdeadbeef};
static uint64_t replay_seed;

int main(void)
{
    const char *env = getenv("GALE_PROP_SEED");
    struct CMUnitTest tests[sizeof seeds / sizeof seeds[0]];
    static char names[sizeof seeds / sizeof seeds[0]][32];
    size_t n = 0;

    if (env && *env) {
        replay_seed = strtoull(env, NULL, 0);
        tests[n++] = (struct CMUnitTest)cmocka_unit_test_prestate(test_prop, &replay_seed);
        snprintf(names[0], sizeof names[0], "seed_%" PRIu64, replay_seed);
        tests[0].name = names[0];
    } else {
        for (; n < sizeof seeds / sizeof seeds[0]; n++) {
            tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_prop, &seeds[n]);
            snprintf(names[n], sizeof names[n], "seed_%" PRIu64, seeds[n]);
            tests[n].name = names[n];
        }
    }
    return _cmocka_run_group_tests("store_prop", tests, n, NULL, NULL);
}
