/* storage/writer.c: the only thread that writes SQLite, and the loop-side batching
 * that feeds it.
 *
 * Loop thread: store_append / store_submit_op add items to the open batch and give
 * each operation the next seq. The batch is sealed at cfg.batch_rows rows, after
 * cfg.batch_delay_ms (timer) or when a device operation arrives, and pushed on the
 * todo queue; a sealed batch that the writer has not taken yet absorbs the next one
 * while both fit in batch_rows (group commit while the writer is busy).
 *
 * Writer thread: pops a batch, BEGIN IMMEDIATE, one bound insert into the
 * arrival-ordered telemetry_log per point (device and series ids come from a cache of
 * the dictionaries), device operations in order, COMMIT. A failed attempt rolls back
 * and is retried after 50/100/200 ms; after STORE_COMMIT_TRIES the batch is reported
 * failed and the writer goes on with the next. The batch's messages are released
 * here, then it moves to the done queue and uv_async_send() wakes the loop.
 * Off the ack path the writer compacts: when the log holds cfg.compact_rows rows, or
 * has been idle STORE_IDLE_MS with a non-empty log, it moves the log sorted into the
 * (series, ts) table, refreshes `latest` and empties the log in one transaction.
 * Retention (cfg.retention_days) deletes expired rows in bounded passes.
 *
 * Loop thread again: on_done drains the whole done queue (sends coalesce), advances
 * the durable watermark, calls on_durable and on_pressure.
 * s->lock guards the two queues and the seam counters only; SQLite runs outside it. */
#include <assert.h>
#include <string.h>

#include "gateway/log.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "storage/store_int.h"

/* ---- loop thread: batching ---- */

static void on_handle_closed(uv_handle_t *handle)
{
    struct store_handles *h = handle->data;

    if (--h->nopen == 0)
        free(h);
}

static void on_batch_timer(uv_timer_t *t)
{
    struct store_handles *h = t->data;

    store_seal(h->s);
}

static void check_pressure_high(struct store *s)
{
    if (!s->paused && s->queued_rows > s->cfg.queue_high_rows) {
        s->paused = 1;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 1);
    }
}

/* Reports finished batches in order; consecutive batches with the same outcome share
 * one on_durable call (upto = the last one's seq). */
static void drain_done(struct store *s, int report_pressure)
{
    struct store_batch *b, *next;

    uv_mutex_lock(&s->lock);
    b = s->done_head;
    s->done_head = s->done_tail = NULL;
    uv_mutex_unlock(&s->lock);
    for (; b; b = next) {
        uint64_t upto = b->last_seq;
        int ok = b->ok;

        next = b->next;
        assert(s->queued_rows >= b->nrows);
        s->queued_rows -= b->nrows;
        s->durable_seq = upto;
        free(b);
        if ((!next || next->ok != ok) && s->on_durable)
            s->on_durable(s->ctx, upto, ok);
    }
    if (s->loop_ref && s->durable_seq == s->last_seq && s->h) {
        uv_unref((uv_handle_t *)&s->h->async);
        s->loop_ref = 0;
    }
    if (report_pressure && s->paused && s->queued_rows < s->cfg.queue_low_rows) {
        s->paused = 0;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 0);
    }
}

static void on_done(uv_async_t *a)
{
    struct store_handles *h = a->data;

    drain_done(h->s, 1);
}

/* The store keeps the loop alive while operations await durability, and only then. */
static void hold_loop(struct store *s)
{
    if (!s->loop_ref) {
        uv_ref((uv_handle_t *)&s->h->async);
        s->loop_ref = 1;
    }
}

static struct store_batch *open_batch(struct store *s)
{
    hold_loop(s);
    if (!s->open) {
        s->open = xcalloc(1, sizeof *s->open);
        uv_timer_start(&s->h->timer, on_batch_timer, s->cfg.batch_delay_ms, 0);
    }
    return s->open;
}

static void push_item(struct store_batch *b, struct msg *m, struct store_op *op)
{
    if (b->nitems == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->items = xrealloc(b->items, b->cap * sizeof *b->items);
    }
    b->items[b->nitems].m = m;
    b->items[b->nitems].op = op;
    b->nitems++;
}

void store_seal(struct store *s)
{
    struct store_batch *b = s->open, *t;

    if (!b)
        return;
    s->open = NULL;
    uv_timer_stop(&s->h->timer);
    uv_mutex_lock(&s->lock);
    t = s->todo_tail;
    if (t && t->nrows + b->nrows <= s->cfg.batch_rows) {
        /* the writer has not taken t yet: ride along in its transaction */
        for (size_t i = 0; i < b->nitems; i++)
            push_item(t, b->items[i].m, b->items[i].op);
        t->nrows += b->nrows;
        t->last_seq = b->last_seq;
        free(b->items);
        free(b);
    } else if (t) {
        t->next = b;
        s->todo_tail = b;
    } else {
        s->todo_head = s->todo_tail = b;
    }
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->lock);
}

uint64_t store_append(struct store *s, struct msg *m)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    /* a message without points still gets a seq, durable with its batch */
    if (m && m->kind == MSG_TELEMETRY && m->npoints > 0 && m->device && m->device[0]) {
        push_item(b, msg_ref(m), NULL);
        b->nrows += m->npoints;
        s->queued_rows += m->npoints;
    }
    b->last_seq = seq;
    check_pressure_high(s);
    if (b->nrows >= s->cfg.batch_rows)
        store_seal(s);
    return seq;
}

uint64_t store_submit_op(struct store *s, struct store_op *op)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    push_item(b, NULL, op);
    b->last_seq = seq;
    store_seal(s); /* an operation's durability is not delayed by the batch timer */
    return seq;
}

/* ---- writer thread: the dictionary cache ---- */

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

void store_cache_clear(struct store_cache *c)
{
    for (size_t i = 0; i < c->cap; i++)
        free(c->slots[i].key);
    if (c->cap)
        memset(c->slots, 0, c->cap * sizeof *c->slots);
    c->count = 0;
}

static struct store_cache_slot *cache_slot(struct store_cache *c, const char *key, size_t len,
                                           uint64_t hash)
{
    size_t mask = c->cap - 1, i = (size_t)hash & mask;

    for (;;) {
        struct store_cache_slot *sl = &c->slots[i];
        if (!sl->key || (sl->hash == hash && sl->len == len && memcmp(sl->key, key, len) == 0))
            return sl;
        i = (i + 1) & mask;
    }
}

static int cache_get(struct store_cache *c, const char *key, size_t len, int64_t *id)
{
    struct store_cache_slot *sl;

    if (c->cap == 0)
        return 0;
    sl = cache_slot(c, key, len, hash_bytes(key, len));
    if (!sl->key)
        return 0;
    *id = sl->id;
    return 1;
}

static void cache_put(struct store_cache *c, const char *key, size_t len, int64_t id)
{
    uint64_t hash = hash_bytes(key, len);
    struct store_cache_slot *sl;

    if (c->count >= STORE_SERIES_CACHE_MAX)
        store_cache_clear(c); /* bounded: start over, misses cost one indexed SELECT */
    if (2 * (c->count + 1) > c->cap) {
        struct store_cache old = *c;
        c->cap = old.cap ? 2 * old.cap : 1024;
        c->slots = xcalloc(c->cap, sizeof *c->slots);
        for (size_t i = 0; i < old.cap; i++) {
            if (old.slots[i].key)
                *cache_slot(c, old.slots[i].key, old.slots[i].len, old.slots[i].hash) =
                    old.slots[i];
        }
        free(old.slots);
    }
    sl = cache_slot(c, key, len, hash);
    if (!sl->key) {
        sl->key = xstrndup(key, len);
        sl->len = len;
        sl->hash = hash;
        c->count++;
    }
    sl->id = id;
}

/* Cache keys: 'D' + device name, or 'S' + 8 bytes of dev_id + key. */
static char *scratch(struct store *s, size_t n)
{
    if (n > s->scratch_cap) {
        s->scratch_cap = n < 256 ? 256 : 2 * n;
        s->scratch = xrealloc(s->scratch, s->scratch_cap);
    }
    return s->scratch;
}

/* Looks id up with the bound statement get (one row, one column) or inserts with add.
 * Both are bound by the caller; SQLITE_OK or an error code. */
static int lookup_or_add(struct store *s, sqlite3_stmt *get, sqlite3_stmt *add, int64_t *id)
{
    int rc = sqlite3_step(get);

    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(get, 0);
    sqlite3_reset(get);
    if (rc == SQLITE_ROW)
        return SQLITE_OK;
    if (rc != SQLITE_DONE)
        return rc;
    rc = sqlite3_step(add);
    sqlite3_reset(add);
    if (rc != SQLITE_DONE)
        return rc;
    *id = sqlite3_last_insert_rowid(s->db);
    return SQLITE_OK;
}

static int resolve_device(struct store *s, const char *device, int64_t *dev_id)
{
    size_t dlen = strlen(device);
    char *k = scratch(s, dlen + 1);
    int rc;

    k[0] = 'D';
    memcpy(k + 1, device, dlen);
    if (cache_get(&s->cache, k, dlen + 1, dev_id))
        return SQLITE_OK;
    sqlite3_bind_text(s->st[ST_DEVID_GET], 1, device, (int)dlen, SQLITE_STATIC);
    sqlite3_bind_text(s->st[ST_DEVID_ADD], 1, device, (int)dlen, SQLITE_STATIC);
    rc = lookup_or_add(s, s->st[ST_DEVID_GET], s->st[ST_DEVID_ADD], dev_id);
    if (rc == SQLITE_OK)
        cache_put(&s->cache, scratch(s, dlen + 1), dlen + 1, *dev_id);
    return rc;
}

static int resolve_series(struct store *s, int64_t dev_id, const char *key, int64_t *sid)
{
    size_t klen = strlen(key), n = 1 + sizeof dev_id + klen;
    char *k = scratch(s, n);
    int rc;

    k[0] = 'S';
    memcpy(k + 1, &dev_id, sizeof dev_id);
    memcpy(k + 1 + sizeof dev_id, key, klen);
    if (cache_get(&s->cache, k, n, sid))
        return SQLITE_OK;
    sqlite3_bind_int64(s->st[ST_SERIES_GET], 1, dev_id);
    sqlite3_bind_text(s->st[ST_SERIES_GET], 2, key, (int)klen, SQLITE_STATIC);
    sqlite3_bind_int64(s->st[ST_SERIES_ADD], 1, dev_id);
    sqlite3_bind_text(s->st[ST_SERIES_ADD], 2, key, (int)klen, SQLITE_STATIC);
    rc = lookup_or_add(s, s->st[ST_SERIES_GET], s->st[ST_SERIES_ADD], sid);
    if (rc == SQLITE_OK)
        cache_put(&s->cache, scratch(s, n), n, *sid);
    return rc;
}

/* ---- writer thread: batches ---- */

static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int insert_points(struct store *s, const struct msg *m)
{
    sqlite3_stmt *st = s->st[ST_LOG_ADD];
    int64_t dev_id = 0, sid = 0;
    int rc = resolve_device(s, m->device, &dev_id);

    for (size_t i = 0; rc == SQLITE_OK && i < m->npoints; i++) {
        const struct point *p = &m->points[i];

        rc = resolve_series(s, dev_id, p->key, &sid);
        if (rc != SQLITE_OK)
            break;
        sqlite3_bind_int64(st, 1, sid);
        sqlite3_bind_int64(st, 2, p->ts_ms);
        sqlite3_bind_int(st, 3, (int)p->type);
        switch (p->type) {
        case VAL_NUM:
            sqlite3_bind_double(st, 4, p->num);
            break;
        case VAL_BOOL:
            sqlite3_bind_int(st, 4, p->num != 0);
            break;
        case VAL_STR:
        case VAL_JSON:
            sqlite3_bind_text(st, 4, p->str ? p->str : "", p->str ? (int)p->str_len : 0,
                              SQLITE_STATIC);
            break;
        default:
            sqlite3_bind_null(st, 4);
            break;
        }
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        s->tx_log_rows++;
    }
    return rc;
}

/* One attempt at committing b: SQLITE_OK, or the failure's code after rolling back. */
static int commit_batch(struct store *s, struct store_batch *b, int *compact)
{
    int rc, fail_rc = 0;

    *compact = 0;
    s->tx_log_rows = 0;
    rc = step_once(s->st[ST_BEGIN]);
    for (size_t i = 0; rc == SQLITE_OK && i < b->nitems; i++) {
        if (b->items[i].m)
            rc = insert_points(s, b->items[i].m);
        else
            rc = store_apply_op(s, b->items[i].op, compact);
    }
    if (rc == SQLITE_OK) {
        uv_mutex_lock(&s->lock);
        if (s->fail_commits > 0) {
            s->fail_commits--;
            fail_rc = s->fail_rc;
        }
        uv_mutex_unlock(&s->lock);
        rc = fail_rc ? fail_rc : step_once(s->st[ST_COMMIT]);
    }
    if (rc == SQLITE_OK) {
        s->log_rows += s->tx_log_rows;
        return SQLITE_OK;
    }
    log_debug("store: commit upto=%llu failed rc=%d error=\"%s\"%s",
             (unsigned long long)b->last_seq, rc, sqlite3_errstr(rc),
             fail_rc ? " (injected)" : "");
    if (!sqlite3_get_autocommit(s->db))
        step_once(s->st[ST_ROLLBACK]);
    /* ids created inside the rolled-back transaction are gone: forget them all */
    store_cache_clear(&s->cache);
    *compact = 0;
    return rc;
}

/* ---- writer thread: compaction and retention ---- */

static int64_t retention_cutoff(const struct store *s)
{
    if (s->cfg.retention_days == 0)
        return INT64_MIN;
    return gw_now_ms() - (int64_t)s->cfg.retention_days * 86400000;
}

/* Moves the whole log into the main table in one transaction. */
static void compact(struct store *s)
{
    uint64_t t0 = gw_mono_ms();
    int64_t rows = s->log_rows;
    int rc;

    rc = step_once(s->st[ST_BEGIN]);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(s->st[ST_COMPACT_MOVE], 1, retention_cutoff(s));
        rc = step_once(s->st[ST_COMPACT_MOVE]);
    }
    if (rc == SQLITE_OK)
        rc = step_once(s->st[ST_COMPACT_LATEST]);
    if (rc == SQLITE_OK)
        rc = step_once(s->st[ST_COMPACT_CLEAR]);
    if (rc == SQLITE_OK)
        rc = step_once(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK) {
        s->log_rows = 0;
        s->compact_failed = 0;
        log_debug("store: compacted rows=%lld ms=%llu", (long long)rows,
                  (unsigned long long)(gw_mono_ms() - t0));
        return;
    }
    log_error("store: compaction of rows=%lld failed rc=%d error=\"%s\"", (long long)rows, rc,
              sqlite3_errmsg(s->db));
    if (!sqlite3_get_autocommit(s->db))
        step_once(s->st[ST_ROLLBACK]);
    s->compact_failed = 1;
    s->compact_retry_rows = s->log_rows + (int64_t)s->cfg.compact_rows;
}

/* Deletes expired rows of the main table, at most STORE_RETENTION_PASS_ROWS rows and
 * STORE_RETENTION_PASS_SERIES series per call (one transaction); a sweep over every
 * series may take several passes (ret_cursor remembers where it stopped). */
static void retention_pass(struct store *s)
{
    sqlite3_stmt *list = s->st[ST_RET_SERIES], *bound = s->st[ST_RET_BOUND],
                 *del = s->st[ST_RET_DELETE];
    int64_t cutoff = retention_cutoff(s), budget = STORE_RETENTION_PASS_ROWS, deleted = 0;
    int64_t ids[256], cursor = s->ret_cursor;
    size_t visited = 0;
    int rc, swept = 0;

    rc = step_once(s->st[ST_BEGIN]);
    while (rc == SQLITE_OK && budget > 0 && visited < STORE_RETENTION_PASS_SERIES) {
        size_t n = 0;

        sqlite3_bind_int64(list, 1, cursor);
        sqlite3_bind_int(list, 2, (int)(sizeof ids / sizeof ids[0]));
        while ((rc = sqlite3_step(list)) == SQLITE_ROW)
            ids[n++] = sqlite3_column_int64(list, 0);
        sqlite3_reset(list);
        if (rc != SQLITE_DONE)
            break;
        rc = SQLITE_OK;
        for (size_t i = 0; rc == SQLITE_OK && i < n && budget > 0; i++) {
            int64_t below = cutoff;

            sqlite3_bind_int64(bound, 1, ids[i]);
            sqlite3_bind_int64(bound, 2, cutoff);
            sqlite3_bind_int64(bound, 3, budget);
            rc = sqlite3_step(bound);
            if (rc == SQLITE_ROW)
                below = sqlite3_column_int64(bound, 0); /* more than budget expired rows */
            sqlite3_reset(bound);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                break;
            sqlite3_bind_int64(del, 1, ids[i]);
            sqlite3_bind_int64(del, 2, below);
            rc = step_once(del);
            if (rc != SQLITE_OK)
                break;
            budget -= sqlite3_changes(s->db);
            deleted += sqlite3_changes(s->db);
            visited++;
            /* a series cut short by the budget is visited again next pass */
            cursor = below == cutoff ? ids[i] : ids[i] - 1;
        }
        if (rc == SQLITE_OK && n < sizeof ids / sizeof ids[0] && budget > 0) {
            swept = 1;
            break;
        }
    }
    if (rc == SQLITE_OK)
        rc = step_once(s->st[ST_COMMIT]);
    if (rc != SQLITE_OK) {
        log_error("store: retention pass failed rc=%d error=\"%s\"", rc, sqlite3_errmsg(s->db));
        if (!sqlite3_get_autocommit(s->db))
            step_once(s->st[ST_ROLLBACK]);
        s->ret_behind = 0;
        s->ret_last_ms = gw_mono_ms(); /* try again next period */
        return;
    }
    if (deleted)
        log_info("store: retention deleted rows=%lld", (long long)deleted);
    s->ret_cursor = swept ? 0 : cursor;
    s->ret_behind = !swept;
    if (swept)
        s->ret_last_ms = gw_mono_ms();
}

static void maintain(struct store *s, int force)
{
    if (s->log_rows > 0 && (force || !s->compact_failed || s->log_rows >= s->compact_retry_rows))
        compact(s);
    if (s->cfg.retention_days > 0 &&
        (force || s->ret_behind || gw_mono_ms() - s->ret_last_ms >= STORE_RETENTION_PERIOD_MS))
        retention_pass(s);
}

static void process_batch(struct store *s, struct store_batch *b)
{
    int ok = 0, compact_req = 0, rc = SQLITE_OK;

    if (b->nitems == 0)
        ok = 1;
    for (int attempt = 0; !ok && attempt < STORE_COMMIT_TRIES; attempt++) {
        if (attempt > 0)
            uv_sleep(STORE_RETRY_BASE_MS << (attempt - 1));
        rc = commit_batch(s, b, &compact_req);
        ok = rc == SQLITE_OK;
    }
    if (!ok && s->failed_batches++ == 0) /* once per episode */
        log_error("store: batch upto=%llu rows=%zu failed after %d tries, not durable;"
                  " rc=%d error=\"%s\"", (unsigned long long)b->last_seq, b->nrows,
                  STORE_COMMIT_TRIES, rc, sqlite3_errstr(rc));
    if (ok && b->nitems > 0 && s->failed_batches > 0) {
        log_warn("store: commits recovered after failed_batches=%llu",
                 (unsigned long long)s->failed_batches);
        s->failed_batches = 0;
    }
    for (size_t i = 0; i < b->nitems; i++) {
        msg_unref(b->items[i].m);
        store_op_free(b->items[i].op);
    }
    free(b->items);
    b->items = NULL;
    b->nitems = b->cap = 0;
    b->ok = ok;
    if (compact_req)
        maintain(s, 1); /* before done: the op's seq means "compacted" */

    uv_mutex_lock(&s->lock);
    if (s->done_tail)
        s->done_tail->next = b;
    else
        s->done_head = b;
    s->done_tail = b;
    uv_mutex_unlock(&s->lock);
    uv_async_send(&s->h->async);

    if (s->log_rows >= (int64_t)s->cfg.compact_rows)
        maintain(s, 0); /* acks for b are already on their way */
}

static void on_writer_thread(void *arg)
{
    struct store *s = arg;

    uv_mutex_lock(&s->lock);
    for (;;) {
        struct store_batch *b = s->todo_head;

        if (b) {
            s->todo_head = b->next;
            if (!s->todo_head)
                s->todo_tail = NULL;
            b->next = NULL;
            uv_mutex_unlock(&s->lock);
            process_batch(s, b);
            uv_mutex_lock(&s->lock);
            continue;
        }
        if (s->stopping)
            break;
        /* log_rows and the retention fields are the writer's own: reading them under
         * s->lock is fine */
        if (s->log_rows > 0 || s->cfg.retention_days > 0) {
            int rc = uv_cond_timedwait(&s->cond, &s->lock, (uint64_t)STORE_IDLE_MS * 1000000);
            if (rc == UV_ETIMEDOUT && !s->todo_head && !s->stopping) {
                uv_mutex_unlock(&s->lock);
                maintain(s, 0);
                uv_mutex_lock(&s->lock);
            }
        } else {
            uv_cond_wait(&s->cond, &s->lock);
        }
    }
    uv_mutex_unlock(&s->lock);
}

int store_writer_start(struct store *s)
{
    s->h = xcalloc(1, sizeof *s->h);
    s->h->s = s;
    if (uv_timer_init(s->loop, &s->h->timer) != 0)
        return -1;
    s->h->timer.data = s->h;
    s->h->nopen++;
    if (uv_async_init(s->loop, &s->h->async, on_done) != 0)
        return -1;
    s->h->async.data = s->h;
    s->h->nopen++;
    uv_unref((uv_handle_t *)&s->h->async); /* ref'd while work is outstanding */
    s->ret_last_ms = gw_mono_ms() - STORE_RETENTION_PERIOD_MS; /* first sweep when idle */
    if (uv_thread_create(&s->thread, on_writer_thread, s) != 0)
        return -1;
    s->have_thread = 1;
    return 0;
}

void store_writer_stop(struct store *s)
{
    if (s->have_thread) {
        store_seal(s);
        uv_mutex_lock(&s->lock);
        s->stopping = 1;
        uv_cond_signal(&s->cond);
        uv_mutex_unlock(&s->lock);
        uv_thread_join(&s->thread);
        s->have_thread = 0;
        drain_done(s, 0); /* the last on_durable calls, before store_close returns */
    }
    if (s->open) { /* half-built store: nothing can commit it */
        for (size_t i = 0; i < s->open->nitems; i++) {
            msg_unref(s->open->items[i].m);
            store_op_free(s->open->items[i].op);
        }
        free(s->open->items);
        free(s->open);
        s->open = NULL;
    }
}

void store_handles_close(struct store *s)
{
    struct store_handles *h = s->h;
    int n;

    if (!h)
        return;
    s->h = NULL;
    n = h->nopen; /* on_handle_closed frees h after the last close */
    if (n == 0) {
        free(h);
        return;
    }
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    if (n >= 2)
        uv_close((uv_handle_t *)&h->async, on_handle_closed);
}
