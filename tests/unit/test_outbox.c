/* tests/unit/test_outbox.c: the bridge outbox of the storage layer against a temporary
 * database and a real uv loop: puts read back in pages (every field byte for byte,
 * binary payloads), replacing an id, range deletes across a reopen, the start-up index,
 * one group commit with telemetry (success and injected failure), page limits, two
 * upstreams apart, device deletes, a read in flight at close, the v4 -> v5 migration.
 * With GALE_OUTBOX_BENCH set, test_bench_put also times 1,000,000 puts (printed, no
 * assertion on the time). Tests wait for conditions by running the loop (UV_RUN_ONCE,
 * a 10 ms tick keeps it turning) until a deadline; every test ends with
 * uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <uv.h>

#include "base/alloc.h"
#include "base/err.h"
#include "gateway/msg.h"
#include "storage/store.h"
#include "storage/store_int.h"

#define WAIT_MS 20000

/* A message as the test keeps it (owned copies). */
struct kept {
    uint64_t id;
    char device[64];
    char topic[128];
    uint8_t payload[2048];
    size_t payload_len;
    int payload_null;           /* the store handed payload NULL (index entries) */
    uint8_t qos;
    int64_t ts_ms;
};

struct fixture {
    uv_loop_t loop;
    uv_timer_t tick;             /* keeps UV_RUN_ONCE from sleeping past the deadline */
    char dir[64];
    char path[128];
    struct store_cfg cfg;
    struct store *s;
    uint64_t last_upto;          /* on_durable: the watermark */
    int last_ok;
    size_t nevents;
    uint64_t fail_upto;          /* the highest upto reported with ok = 0 */
    /* the last read's answer */
    int read_done;               /* answers received */
    int read_rc;
    struct kept *got;            /* read or index entries */
    size_t ngot, capgot;
};

/* ---- fixture ---- */

static void on_durable(void *ctx, uint64_t upto, int ok)
{
    struct fixture *f = ctx;

    assert_true(upto > f->last_upto); /* the watermark only advances */
    f->last_upto = upto;
    f->last_ok = ok;
    f->nevents++;
    if (!ok)
        f->fail_upto = upto;
}

static void do_open(struct fixture *f)
{
    f->last_upto = 0; /* seqs start over with every open */
    f->fail_upto = 0;
    f->nevents = 0;
    assert_int_equal(store_open(&f->loop, &f->cfg, &f->s), 0);
    store_set_callbacks(f->s, on_durable, NULL, f);
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
    strcpy(f->dir, "/tmp/gale-test-outbox-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/gale.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    f->cfg.path = f->path;
    f->cfg.no_ack_log = true; /* acks wait for commits: the tests read the database after */
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    const char *sfx[] = { "", "-wal", "-shm", "-journal" };
    char p[160];

    if (f->s)
        do_close(f);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, sfx[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f->got);
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
    return f->last_upto >= *(const uint64_t *)arg;
}

static void wait_durable(struct fixture *f, uint64_t seq)
{
    assert_true(wait_until(f, is_durable, &seq));
}

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

/* ---- messages ---- */

/* The message the tests store as id under upstream: device, topic, qos and ts follow
 * from id; the payload is binary (NULs included), of len bytes. */
static struct kept make(uint64_t id, size_t len)
{
    struct kept k = { .id = id, .qos = (uint8_t)(id % 3), .ts_ms = 1700000000000 + (int64_t)id };

    snprintf(k.device, sizeof k.device, "dev-%llu", (unsigned long long)(id % 4));
    snprintf(k.topic, sizeof k.topic, "site/devices/dev-%llu/telemetry",
             (unsigned long long)(id % 4));
    assert_true(len <= sizeof k.payload);
    for (size_t i = 0; i < len; i++)
        k.payload[i] = (uint8_t)((id * 31 + i * 7) % 256); /* 0 bytes in it too */
    if (len > 1)
        k.payload[1] = 0;
    k.payload_len = len;
    return k;
}

static uint64_t put(struct fixture *f, const char *upstream, const struct kept *k)
{
    struct store_outbox_msg m = {
        .id = k->id, .device = k->device, .topic = k->topic, .payload = k->payload,
        .payload_len = k->payload_len, .qos = k->qos, .ts_ms = k->ts_ms,
    };

    return store_put_outbox(f->s, upstream, &m);
}

static void keep(struct fixture *f, const struct store_outbox_msg *m)
{
    struct kept *k;

    if (f->ngot == f->capgot) {
        f->capgot = f->capgot ? 2 * f->capgot : 64;
        f->got = xrealloc(f->got, f->capgot * sizeof *f->got);
    }
    k = &f->got[f->ngot++];
    memset(k, 0, sizeof *k);
    assert_non_null(m->device);
    assert_non_null(m->topic);
    assert_true(strlen(m->device) < sizeof k->device && strlen(m->topic) < sizeof k->topic);
    k->id = m->id;
    strcpy(k->device, m->device);
    strcpy(k->topic, m->topic);
    k->payload_null = m->payload == NULL;
    k->payload_len = m->payload_len;
    if (m->payload) {
        assert_true(m->payload_len <= sizeof k->payload);
        memcpy(k->payload, m->payload, m->payload_len);
    }
    k->qos = m->qos;
    k->ts_ms = m->ts_ms;
}

static void on_read(void *ctx, int rc, const struct store_outbox_msg *msgs, size_t n)
{
    struct fixture *f = ctx;

    f->read_done++;
    f->read_rc = rc;
    f->ngot = 0;
    if (rc != 0)
        assert_int_equal(n, 0);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            assert_true(msgs[i].id > msgs[i - 1].id);
        keep(f, &msgs[i]);
    }
}

static int read_finished(struct fixture *f, const void *arg)
{
    (void)arg;
    return f->read_done > 0;
}

/* One page of upstream after after_id, kept in f->got[0..ngot). */
static size_t read_page(struct fixture *f, const char *upstream, uint64_t after_id,
                        size_t max_msgs, size_t max_bytes)
{
    f->read_done = 0;
    assert_int_equal(store_read_outbox(f->s, upstream, after_id, max_msgs, max_bytes, on_read, f),
                     0);
    assert_true(wait_until(f, read_finished, NULL));
    assert_int_equal(f->read_done, 1);
    assert_int_equal(f->read_rc, 0);
    return f->ngot;
}

static void on_index(void *ctx, const struct store_outbox_msg *m)
{
    struct fixture *f = ctx;

    if (f->ngot > 0)
        assert_true(m->id > f->got[f->ngot - 1].id);
    keep(f, m);
}

static size_t load_index(struct fixture *f, const char *upstream)
{
    f->ngot = 0;
    assert_int_equal(store_load_outbox_index(f->s, upstream, on_index, f), 0);
    return f->ngot;
}

static void assert_same(const struct kept *got, const struct kept *want, int with_payload)
{
    assert_int_equal(got->id, want->id);
    assert_string_equal(got->device, want->device);
    assert_string_equal(got->topic, want->topic);
    assert_int_equal(got->payload_len, want->payload_len);
    assert_int_equal(got->qos, want->qos);
    assert_int_equal(got->ts_ms, want->ts_ms);
    if (with_payload) {
        assert_false(got->payload_null);
        assert_memory_equal(got->payload, want->payload, want->payload_len ? want->payload_len : 1);
    } else {
        assert_true(got->payload_null);
    }
}

static size_t payload_len_of(uint64_t id)
{
    return id % 5 == 0 ? 0 : 10 * (size_t)id; /* some empty payloads */
}

/* ---- tests ---- */

/* N messages read back in pages of 7 with after_id: every field byte for byte. */
static void test_put_read_pages(void **state)
{
    struct fixture *f = *state;
    const uint64_t n = 40;
    uint64_t seq = 0, after = 0, seen = 0;
    size_t queued;

    do_open(f);
    for (uint64_t id = 1; id <= n; id++) {
        struct kept k = make(id, payload_len_of(id));
        seq = put(f, "up", &k);
    }
    queued = store_queued_bytes(f->s);
    assert_true(queued >= 6400 + n * sizeof(struct store_op)); /* payloads and records */
    wait_durable(f, seq);
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(store_queued_bytes(f->s), 0);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), (int64_t)n);
    for (;;) {
        size_t got = read_page(f, "up", after, 7, SIZE_MAX);

        if (got == 0)
            break;
        assert_true(got <= 7);
        for (size_t i = 0; i < got; i++) {
            struct kept want = make(seen + 1, payload_len_of(seen + 1));

            assert_same(&f->got[i], &want, 1);
            seen++;
        }
        after = f->got[got - 1].id;
    }
    assert_int_equal(seen, n);
    /* after the last id, and for an upstream nobody wrote: an empty page */
    assert_int_equal(read_page(f, "up", n, 10, SIZE_MAX), 0);
    assert_int_equal(read_page(f, "other", 0, 10, SIZE_MAX), 0);
}

/* A put of an existing (upstream, id) replaces the message. */
static void test_replace_same_id(void **state)
{
    struct fixture *f = *state;
    struct kept a = make(5, 30), b = make(6, 80);
    uint64_t seq;

    do_open(f);
    put(f, "up", &a);
    b.id = 5; /* same id, other device, topic, payload, qos, ts */
    seq = put(f, "up", &b);
    wait_durable(f, seq);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 1);
    assert_int_equal(read_page(f, "up", 0, 10, SIZE_MAX), 1);
    assert_same(&f->got[0], &b, 1);
    /* and in a later batch too */
    seq = put(f, "up", &a);
    wait_durable(f, seq);
    assert_int_equal(read_page(f, "up", 0, 10, SIZE_MAX), 1);
    assert_same(&f->got[0], &a, 1);
}

/* Range deletes survive a reopen; the index after the reopen lists what is left, with
 * the payload lengths and without the payloads. */
static void test_range_delete_reopen_index(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;
    size_t j = 0;

    do_open(f);
    for (uint64_t id = 1; id <= 20; id++) {
        struct kept k = make(id, payload_len_of(id));
        put(f, "up", &k);
    }
    store_delete_outbox(f->s, "up", 3, 7);
    store_delete_outbox(f->s, "up", 15, 15);
    store_delete_outbox(f->s, "up", 40, 50); /* nothing there: no error */
    seq = store_delete_outbox(f->s, "up", 19, UINT64_MAX);
    wait_durable(f, seq);
    assert_int_equal(f->last_ok, 1);
    do_close(f);

    do_open(f);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 12);
    assert_int_equal(load_index(f, "up"), 12);
    for (uint64_t id = 1; id <= 20; id++) {
        struct kept want = make(id, payload_len_of(id));

        if ((id >= 3 && id <= 7) || id == 15 || id >= 19)
            continue;
        assert_same(&f->got[j++], &want, 0);
    }
    assert_int_equal(j, 12);
    assert_int_equal(read_page(f, "up", 0, 100, SIZE_MAX), 12);
    assert_int_equal(f->got[2].id, 8);
    assert_int_equal(load_index(f, "none"), 0);
}

/* Deletes that continue each other in one open batch widen one range (one statement,
 * the same seq); one after a gap, of another upstream or after a put is a write of its
 * own. Every deleted id is gone after the commit, and nothing else. */
static void test_contiguous_deletes_coalesce(void **state)
{
    struct fixture *f = *state;
    uint64_t a, b, c, d, e, g;

    do_open(f);
    for (uint64_t id = 1; id <= 30; id++) {
        struct kept k = make(id, 8);
        put(f, "up", &k);
        put(f, "other", &k);
    }
    a = store_delete_outbox(f->s, "up", 1, 1);
    b = store_delete_outbox(f->s, "up", 2, 2);
    c = store_delete_outbox(f->s, "up", 3, 5);
    assert_int_equal(a, b);
    assert_int_equal(b, c);
    assert_int_equal(f->s->open->items[f->s->open->nitems - 1].op->last_id, 5);
    d = store_delete_outbox(f->s, "up", 8, 9);      /* a gap: 6 and 7 stay */
    assert_true(d > c);
    e = store_delete_outbox(f->s, "other", 10, 10); /* another upstream */
    assert_true(e > d);
    g = store_delete_outbox(f->s, "up", 10, 10);    /* not the batch's last op */
    assert_true(g > e);
    wait_durable(f, g);
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox WHERE upstream='up'"),
                     30 - 8);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox WHERE upstream='up' AND "
                                         "id IN (6, 7, 11)"), 3);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox WHERE upstream='other'"),
                     29);
}

/* A telemetry append and an outbox put of one loop turn commit in one transaction:
 * one on_durable covers both; after injected failures neither is there. */
static void test_same_group_commit(void **state)
{
    struct fixture *f = *state;
    struct point p = { .ts_ms = 1000, .key = "temp", .type = VAL_NUM, .num = 21.5 };
    struct kept k = make(1, 100);
    struct msg *m;
    uint64_t a, b;

    do_open(f);
    m = msg_new(MSG_TELEMETRY, "dev-1", "devices/dev-1/telemetry", "{}", 2, &p, 1);
    a = store_append(f->s, m);
    b = put(f, "up", &k);
    assert_int_equal(b, a + 1);
    assert_non_null(f->s->open);
    assert_int_equal(f->s->open->nitems, 2); /* one batch holds both */
    store_flush(f->s);
    wait_durable(f, b);
    assert_int_equal(f->nevents, 1); /* one watermark report for both */
    assert_int_equal(f->last_upto, b);
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 1);
    assert_int_equal(count_rows(f->path, "SELECT coalesce(sum(npoints), 0) FROM segments"), 1);

    /* the failure path: both fail, neither is stored */
    store_fail_next_commits(f->s, STORE_COMMIT_TRIES, SQLITE_IOERR);
    p.ts_ms = 2000;
    k = make(2, 100);
    a = store_append(f->s, m);
    b = put(f, "up", &k);
    assert_int_equal(f->s->open->nitems, 2);
    store_flush(f->s);
    wait_durable(f, b);
    assert_int_equal(f->nevents, 2);
    assert_int_equal(f->last_ok, 0);
    assert_true(f->fail_upto >= b);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 1);
    assert_int_equal(count_rows(f->path, "SELECT coalesce(sum(npoints), 0) FROM segments"), 1);
    assert_int_equal(read_page(f, "up", 0, 10, SIZE_MAX), 1);
    assert_int_equal(f->got[0].id, 1);
    (void)a;

    /* a transient failure is retried: both are there */
    store_fail_next_commits(f->s, 1, SQLITE_BUSY);
    a = store_append(f->s, m);
    b = put(f, "up", &k);
    store_flush(f->s);
    wait_durable(f, b);
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 2);
    assert_int_equal(count_rows(f->path, "SELECT coalesce(sum(npoints), 0) FROM segments"), 2);
    msg_unref(m);
}

/* max_msgs and max_bytes bound a page; the first message always comes. */
static void test_page_limits(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;
    struct kept big = make(11, 1500);

    do_open(f);
    for (uint64_t id = 1; id <= 10; id++) {
        struct kept k = make(id, 100);
        seq = put(f, "up", &k);
    }
    put(f, "up", &big);
    seq = put(f, "up", &(struct kept){ .id = 12, .device = "", .topic = "t" });
    wait_durable(f, seq);
    assert_int_equal(read_page(f, "up", 0, 4, SIZE_MAX), 4);
    assert_int_equal(f->got[3].id, 4);
    assert_int_equal(read_page(f, "up", 0, 100, 250), 3);   /* 300 >= 250: stop */
    assert_int_equal(read_page(f, "up", 0, 100, 300), 3);   /* reached exactly */
    assert_int_equal(read_page(f, "up", 0, 100, 301), 4);
    assert_int_equal(read_page(f, "up", 2, 100, 0), 1);     /* at least one */
    assert_int_equal(f->got[0].id, 3);
    assert_int_equal(read_page(f, "up", 10, 100, 10), 1);   /* one, however large */
    assert_same(&f->got[0], &big, 1);
    assert_int_equal(read_page(f, "up", 10, 100, 2000), 2); /* an empty payload adds 0 */
    assert_int_equal(f->got[1].id, 12);
    assert_int_equal(f->got[1].payload_len, 0);
    assert_string_equal(f->got[1].device, "");
    assert_int_equal(read_page(f, "up", 0, 3, 0), 1);
    assert_int_equal(store_read_outbox(f->s, "up", 0, 0, 100, on_read, f), GW_EINVAL);
    assert_int_equal(store_read_outbox(f->s, NULL, 0, 1, 100, on_read, f), GW_EINVAL);
    assert_int_equal(store_read_outbox(f->s, "up", 0, 1, 100, NULL, f), GW_EINVAL);
}

/* Two upstreams with the same ids: reads, deletes and indexes never cross. */
static void test_two_upstreams(void **state)
{
    struct fixture *f = *state;
    uint64_t seq = 0;

    do_open(f);
    for (uint64_t id = 1; id <= 6; id++) {
        struct kept a = make(id, 10), b = make(id, 20);
        put(f, "a", &a);
        seq = put(f, "b", &b);
    }
    store_delete_outbox(f->s, "a", 1, 4);
    seq = store_delete_outbox(f->s, "b", 5, 6);
    wait_durable(f, seq);
    assert_int_equal(read_page(f, "a", 0, 100, SIZE_MAX), 2);
    assert_int_equal(f->got[0].id, 5);
    assert_int_equal(f->got[0].payload_len, 10);
    assert_int_equal(read_page(f, "b", 0, 100, SIZE_MAX), 4);
    assert_int_equal(f->got[3].id, 4);
    assert_int_equal(f->got[3].payload_len, 20);
    assert_int_equal(load_index(f, "a"), 2);
    assert_int_equal(load_index(f, "b"), 4);
}

/* Deleting a device leaves its outbox messages: they were acked to the device. */
static void test_device_delete_keeps_outbox(void **state)
{
    struct fixture *f = *state;
    struct point p = { .ts_ms = 1000, .key = "temp", .type = VAL_NUM, .num = 1 };
    struct kept k = make(4, 50); /* device "dev-0" */
    struct msg *m;
    uint64_t seq;

    do_open(f);
    m = msg_new(MSG_TELEMETRY, "dev-0", "devices/dev-0/telemetry", "{}", 2, &p, 1);
    store_put_device(f->s, &(struct store_device){ .id = "dev-0", .token_hash = "h" });
    store_append(f->s, m);
    msg_unref(m);
    put(f, "up", &k);
    seq = store_delete_device(f->s, "dev-0");
    wait_durable(f, seq);
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM devices"), 0);
    assert_int_equal(read_page(f, "up", 0, 10, SIZE_MAX), 1);
    assert_same(&f->got[0], &k, 1);
}

/* A read still in flight when the store closes is answered once, during the close. */
static void test_read_in_flight_at_close(void **state)
{
    struct fixture *f = *state;
    struct kept k = make(1, 10);

    do_open(f);
    wait_durable(f, put(f, "up", &k));
    f->read_done = 0;
    for (int i = 0; i < 8; i++)
        assert_int_equal(store_read_outbox(f->s, "up", 0, 10, SIZE_MAX, on_read, f), 0);
    do_close(f);
    assert_int_equal(f->read_done, 8);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* the after_work callbacks only free */
    assert_int_equal(f->read_done, 8);
}

#define SQL_HAS_OUTBOX "SELECT count(*) FROM sqlite_master WHERE name = 'outbox'"

/* A v4 database (built with the migrations of the v4 build) gets the outbox table and
 * keeps what it held. */
static void test_migration_v4_to_v5(void **state)
{
    struct fixture *f = *state;
    struct kept k = make(1, 64);
    sqlite3 *db;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    for (int v = 0; v < 4; v++)
        assert_int_equal(sqlite3_exec(db, store_migration_sql(v), NULL, NULL, NULL), SQLITE_OK);
    /* the rest of v3 -> v4 (its conversion has no rows to move here) */
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE telemetry_log; DROP TABLE telemetry;"
                                  " DROP TABLE latest; PRAGMA user_version = 4;"
                                  "INSERT INTO devices(id, token_hash) VALUES ('d', 'h');",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(count_rows(f->path, SQL_HAS_OUTBOX), 0);

    do_open(f);
    /* on to the newest schema, through v5 */
    assert_int_equal(count_rows(f->path, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_true(STORE_SCHEMA_VERSION >= 5);
    assert_int_equal(count_rows(f->path, SQL_HAS_OUTBOX), 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM devices"), 1);
    wait_durable(f, put(f, "up", &k));
    assert_int_equal(read_page(f, "up", 0, 10, SIZE_MAX), 1);
    assert_same(&f->got[0], &k, 1);
}

static void on_count(void *ctx, const struct store_outbox_msg *m)
{
    struct fixture *f = ctx;

    assert_null(m->payload);
    f->ngot++;
}

/* With GALE_OUTBOX_BENCH set: 1,000,000 puts of 100-byte payloads with sync=normal,
 * submitted as a bridge would (a loop turn of puts at a time, never past the queue's
 * high-water mark), timed from the first put to the last one durable. */
static void test_bench_put(void **state)
{
    struct fixture *f = *state;
    const uint64_t n = 1000000, per_turn = 1000;
    struct kept k = make(1, 100);
    uint64_t id = 0, seq = 0, t0, t1, submit_ns = 0;

    if (!getenv("GALE_OUTBOX_BENCH"))
        skip();
    f->cfg.sync = STORE_SYNC_NORMAL;
    do_open(f);
    t0 = uv_hrtime();
    uv_timer_start(&f->tick, on_tick, 10, 10);
    while (id < n) {
        if (store_queued_bytes(f->s) > f->s->cfg.queue_high_bytes / 2) {
            uv_run(&f->loop, UV_RUN_ONCE); /* wait for the writer */
            continue;
        }
        t1 = uv_hrtime();
        for (uint64_t i = 0; i < per_turn && id < n; i++) {
            k.id = ++id;
            seq = put(f, "up", &k);
        }
        submit_ns += uv_hrtime() - t1;
        store_flush(f->s);
        uv_run(&f->loop, UV_RUN_NOWAIT); /* the turn ends: the batch is sealed */
    }
    uv_timer_stop(&f->tick);
    wait_durable(f, seq);
    t1 = uv_hrtime();
    assert_int_equal(f->last_ok, 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), (int64_t)n);
    printf("outbox bench: puts=%llu payload=100 sync=normal s=%.3f per_msg_us=%.3f"
           " msgs_per_s=%.0f loop_us_per_put=%.3f durable_reports=%zu\n",
           (unsigned long long)n, (double)(t1 - t0) / 1e9, (double)(t1 - t0) / 1e3 / (double)n,
           (double)n / ((double)(t1 - t0) / 1e9), (double)submit_ns / 1e3 / (double)n,
           f->nevents);
    t0 = uv_hrtime();
    f->ngot = 0;
    assert_int_equal(store_load_outbox_index(f->s, "up", on_count, f), 0);
    assert_int_equal(f->ngot, n);
    t1 = uv_hrtime();
    printf("outbox bench: index of %llu messages in s=%.3f\n", (unsigned long long)n,
           (double)(t1 - t0) / 1e9);
    t0 = uv_hrtime();
    for (id = 0; read_page(f, "up", id, 1000, 1u << 20) > 0; id = f->got[f->ngot - 1].id)
        ;
    t1 = uv_hrtime();
    assert_int_equal(id, n);
    printf("outbox bench: read back in pages of 1000 in s=%.3f; file bytes per message=%.0f\n",
           (double)(t1 - t0) / 1e9,
           (double)count_rows(f->path, "SELECT page_count * page_size FROM pragma_page_count,"
                                       " pragma_page_size") / (double)n);
    t0 = uv_hrtime();
    for (id = 0; id < n; id += 100)
        seq = store_delete_outbox(f->s, "up", id + 1, id + 100);
    store_flush(f->s);
    wait_durable(f, seq);
    t1 = uv_hrtime();
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM outbox"), 0);
    printf("outbox bench: deleted in ranges of 100 in s=%.3f\n", (double)(t1 - t0) / 1e9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_read_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_same_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range_delete_reopen_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_contiguous_deletes_coalesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_upstreams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_delete_keeps_outbox, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_in_flight_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_v4_to_v5, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bench_put, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
