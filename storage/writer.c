/* storage/writer.c: the only thread that writes SQLite.
 *
 * Writer thread: pops a sealed batch from the todo queue (batch.c fills it), BEGIN
 * IMMEDIATE, one bound insert into the arrival-ordered telemetry_log per point (device
 * and series ids come from a cache of the dictionaries), the other operations in order
 * (devices.c, state.c), COMMIT. A failed attempt rolls back and is retried after
 * 50/100/200 ms; after STORE_COMMIT_TRIES the batch is reported failed and the writer
 * goes on with the next. The batch's messages are released here, then it moves to the
 * done queue and uv_async_send() wakes the loop (batch.c reports it).
 * Off the ack path the writer compacts: when the log holds cfg.hot_max_points rows, or
 * has been idle STORE_IDLE_MS with a non-empty log, it moves the log sorted into the
 * (series, ts) table, refreshes `latest` and empties the log in one transaction.
 * Retention (cfg.retention_days) deletes expired rows in bounded passes.
 * s->lock guards the two queues and the seam counters only; SQLite runs outside it. */
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "gateway/log.h"
#include "storage/store_int.h"

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

static void cache_clear(struct store_cache *c)
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
        cache_clear(c); /* bounded: start over, misses cost one indexed SELECT */
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
        rc = store_bind_value(st, 3, p);
        if (rc == SQLITE_OK)
            rc = store_step(st);
        else
            sqlite3_clear_bindings(st);
        s->tx_log_rows++;
    }
    return rc;
}

static int apply_op(struct store *s, const struct store_op *op, int *compact)
{
    int rc;

    switch (op->kind) {
    case STORE_OP_COMPACT:
        *compact = 1;
        return SQLITE_OK;
    case STORE_OP_PUT_DEVICE:
    case STORE_OP_TOUCH_DEVICE:
        return store_apply_device_op(s, op);
    case STORE_OP_DELETE_DEVICE:
        rc = store_apply_device_op(s, op);
        /* ids of the device's series are gone; the cache forgets them (deletes are rare) */
        cache_clear(&s->cache);
        return rc;
    default:
        return store_apply_state_op(s, op);
    }
}

/* One attempt at committing b: SQLITE_OK, or the failure's code after rolling back. */
static int commit_batch(struct store *s, struct store_batch *b, int *compact)
{
    int rc, fail_rc = 0;

    *compact = 0;
    s->tx_log_rows = 0;
    rc = store_step(s->st[ST_BEGIN]);
    for (size_t i = 0; rc == SQLITE_OK && i < b->nitems; i++) {
        if (b->items[i].m)
            rc = insert_points(s, b->items[i].m);
        else
            rc = apply_op(s, b->items[i].op, compact);
    }
    if (rc == SQLITE_OK) {
        uv_mutex_lock(&s->lock);
        if (s->fail_commits > 0) {
            s->fail_commits--;
            fail_rc = s->fail_rc;
        }
        uv_mutex_unlock(&s->lock);
        rc = fail_rc ? fail_rc : store_step(s->st[ST_COMMIT]);
    }
    if (rc == SQLITE_OK) {
        s->log_rows += s->tx_log_rows;
        return SQLITE_OK;
    }
    log_debug("store: commit upto=%llu failed rc=%d error=\"%s\"%s",
             (unsigned long long)b->last_seq, rc, sqlite3_errstr(rc),
             fail_rc ? " (injected)" : "");
    if (!sqlite3_get_autocommit(s->db))
        store_step(s->st[ST_ROLLBACK]);
    /* ids created inside the rolled-back transaction are gone: forget them all */
    cache_clear(&s->cache);
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

    rc = store_step(s->st[ST_BEGIN]);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(s->st[ST_COMPACT_MOVE], 1, retention_cutoff(s));
        rc = store_step(s->st[ST_COMPACT_MOVE]);
    }
    if (rc == SQLITE_OK)
        rc = store_step(s->st[ST_COMPACT_LATEST]);
    if (rc == SQLITE_OK)
        rc = store_step(s->st[ST_COMPACT_CLEAR]);
    if (rc == SQLITE_OK)
        rc = store_step(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK) {
        s->log_rows = 0;
        s->compact_failed = 0;
        log_debug("store: compacted rows=%lld ms=%llu", (long long)rows,
                  (unsigned long long)(gw_mono_ms() - t0));
        return;
    }
    log_error("store: compaction of rows=%lld failed rc=%d error=\"%s\"", (long long)rows, rc,
              store_errmsg(s->db, rc));
    if (!sqlite3_get_autocommit(s->db))
        store_step(s->st[ST_ROLLBACK]);
    s->compact_failed = 1;
    s->compact_retry_rows = s->log_rows + (int64_t)s->cfg.hot_max_points;
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

    rc = store_step(s->st[ST_BEGIN]);
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
            rc = store_step(del);
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
        rc = store_step(s->st[ST_COMMIT]);
    if (rc != SQLITE_OK) {
        log_error("store: retention pass failed rc=%d error=\"%s\"", rc,
                  store_errmsg(s->db, rc));
        if (!sqlite3_get_autocommit(s->db))
            store_step(s->st[ST_ROLLBACK]);
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
    int ok = b->nitems == 0, compact_req = 0, rc = SQLITE_OK, tries = 0;

    while (!ok && tries < STORE_COMMIT_TRIES) {
        if (tries > 0)
            uv_sleep(STORE_RETRY_BASE_MS << (tries - 1));
        rc = commit_batch(s, b, &compact_req);
        ok = rc == SQLITE_OK;
        tries++;
        if (rc == SQLITE_MISMATCH)
            break; /* a value this build cannot store: no retry will store it */
    }
    if (!ok && s->failed_batches++ == 0) /* once per episode */
        log_error("store: batch upto=%llu rows=%zu failed after %d tries, not durable;"
                  " rc=%d error=\"%s\"", (unsigned long long)b->last_seq, b->nrows, tries, rc,
                  sqlite3_errstr(rc));
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

    if (s->log_rows >= (int64_t)s->cfg.hot_max_points)
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
        store_drain_done(s); /* the last on_durable calls, before store_close returns */
    }
    /* writes submitted by those last callbacks: no writer is left to commit them */
    store_discard_open(s);
    cache_clear(&s->cache);
    free(s->cache.slots);
    s->cache.slots = NULL;
    s->cache.cap = 0;
    free(s->scratch);
    s->scratch = NULL;
}

uint64_t store_compact(struct store *s)
{
    return store_submit_op(s, store_op_new(STORE_OP_COMPACT, NULL));
}
