/* storage/writer.c: the only thread that writes SQLite.
 *
 * Writer thread: pops a sealed batch from the todo queue (batch.c fills it), BEGIN
 * IMMEDIATE, encodes every telemetry point of the batch into one segment row (device
 * and series ids come from a cache of the dictionaries; segment.h), applies the other
 * operations in order (devices.c, state.c, outbox.c), COMMIT: the batch is durable.
 * Only then are its points added to the hot points (hot.c), where queries see them at
 * once, before the batch is reported done. A failed attempt rolls back and is retried after
 * 50/100/200 ms; after STORE_COMMIT_TRIES the batch is reported failed and the writer
 * goes on with the next. The batch's messages are released here, then it moves to the
 * done queue and uv_async_send() wakes the loop (batch.c reports it).
 * A full disk is not retried: the batch fails at once and the store is full (logged once,
 * published to the loop with the batches: on_full). While full, batches are refused
 * without touching SQLite, chunk slices wait, and the next batch is tried for real every
 * cfg.full_probe_ms, or at once when statvfs shows cfg.full_probe_free more free than
 * at the last try (when no batch comes: a one-page probe commit once that much is free);
 * the first commit that succeeds ends it (logged once).
 * Nothing of a failed batch stays: its transaction is rolled back, the dictionary cache
 * forgets the ids it created, its points never became hot.
 * Off the ack path, between batches, the writer runs chunk slices (chunker.c): at most
 * one after each batch while ingest flows, back to back while it is idle, and before
 * the next batch only when the hot points are far past their bound.
 * s->lock guards the two queues, the seam counters and the published full state only;
 * SQLite runs outside it. */
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "gateway/log.h"
#include "storage/segment.h"
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
    /* points in earlier segments are not this series' (an id reused after a device
     * delete): replay skips them */
    sqlite3_bind_int64(s->st[ST_SERIES_ADD], 3, s->tx_seg - 1);
    rc = lookup_or_add(s, s->st[ST_SERIES_GET], s->st[ST_SERIES_ADD], sid);
    if (rc == SQLITE_OK)
        cache_put(&s->cache, scratch(s, n), n, *sid);
    return rc;
}

/* ---- writer thread: batches ---- */

/* What to do with the hot points once the batch has committed: add point p of
 * series sid, or (p NULL) drop every hot point of sid (its device was deleted). */
struct post {
    int64_t sid;
    int64_t seg;                /* the segment holding p */
    const struct point *p;
};

struct batch_ctx {
    struct segment_enc seg;
    int64_t tx_points;          /* points in the segments written by this transaction */
    struct post *posts;
    size_t nposts, cap;
};

static void post_push(struct batch_ctx *bc, int64_t sid, int64_t seg, const struct point *p)
{
    if (bc->nposts == bc->cap) {
        bc->cap = bc->cap ? 2 * bc->cap : 1024;
        bc->posts = xrealloc(bc->posts, bc->cap * sizeof *bc->posts);
    }
    bc->posts[bc->nposts].sid = sid;
    bc->posts[bc->nposts].seg = seg;
    bc->posts[bc->nposts++].p = p;
}

static int encode_points(struct store *s, struct batch_ctx *bc, const struct msg *m)
{
    int64_t dev_id = 0, sid = 0;
    int rc = resolve_device(s, m->device, &dev_id);

    for (size_t i = 0; rc == SQLITE_OK && i < m->npoints; i++) {
        const struct point *p = &m->points[i];

        if ((unsigned)p->type > VAL_JSON) {
            log_error("store: device=\"%s\" key=\"%s\" has value type %d this build cannot"
                      " store", log_q(m->device), log_q(p->key), (int)p->type);
            return SQLITE_MISMATCH;
        }
        rc = resolve_series(s, dev_id, p->key, &sid);
        if (rc != SQLITE_OK)
            break;
        segment_enc_add(&bc->seg, sid, p);
        post_push(bc, sid, s->tx_seg, p);
    }
    return rc;
}

/* Writes the segment built so far as row tx_seg and starts the next one. */
static int put_segment(struct store *s, struct batch_ctx *bc)
{
    sqlite3_stmt *st = s->st[ST_SEGMENT_ADD];
    int rc;

    if (bc->seg.npoints == 0)
        return SQLITE_OK;
    sqlite3_bind_int64(st, 1, s->tx_seg);
    sqlite3_bind_int64(st, 2, bc->seg.npoints);
    store_bind_blob(st, 3, s->segbuf.data, s->segbuf.len);
    rc = store_step(st);
    if (rc == SQLITE_OK) {
        bc->tx_points += bc->seg.npoints;
        s->tx_seg++;
        segment_enc_start(&bc->seg, &s->segbuf);
    }
    return rc;
}

/* Before a device delete: its series ids, for the hot points to drop after commit.
 * The segment so far is closed first: a series created after the delete may reuse an
 * id of the deleted ones, and replay tells them apart by segment. */
static int note_device_series(struct store *s, struct batch_ctx *bc, const char *device)
{
    sqlite3_stmt *st = s->st[ST_DEV_SERIES];
    int rc;

    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        post_push(bc, sqlite3_column_int64(st, 0), 0, NULL);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int apply_op(struct store *s, struct batch_ctx *bc, const struct store_op *op,
                    int *compact)
{
    int rc;

    switch (op->kind) {
    case STORE_OP_COMPACT:
        *compact = 1;
        return SQLITE_OK;
    case STORE_OP_PUT_DEVICE:
    case STORE_OP_TOUCH_DEVICE:
    case STORE_OP_FORGET_DEVICE:
        return store_apply_device_op(s, op);
    case STORE_OP_DELETE_DEVICE:
        rc = put_segment(s, bc);
        if (rc == SQLITE_OK)
            rc = note_device_series(s, bc, op->id);
        if (rc == SQLITE_OK)
            rc = store_apply_device_op(s, op);
        /* ids of the device's series are gone; the cache forgets them (deletes are rare) */
        cache_clear(&s->cache);
        return rc;
    case STORE_OP_PUT_OUTBOX:
    case STORE_OP_DELETE_OUTBOX:
        return store_apply_outbox_op(s, op);
    default:
        return store_apply_state_op(s, op);
    }
}

/* sync=full with the ack log: a batch the log holds whole (synced before its acks go)
 * commits with synchronous=NORMAL, one fsync fewer per batch; the log files stay until a
 * checkpoint has synced their records into the database file (acklog.c). Any other batch
 * (a write the log lacks waits for this commit's own sync) commits with FULL, which also
 * syncs the NORMAL commits before it. */
static void set_sync(struct store *s, int normal)
{
    if (s->cfg.sync != STORE_SYNC_FULL || normal == s->db_sync_normal)
        return; /* sync=normal: NORMAL throughout */
    if (sqlite3_exec(s->db, normal ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL",
                     NULL, NULL, NULL) == SQLITE_OK)
        s->db_sync_normal = normal;
}

/* One attempt at committing b: SQLITE_OK, or the failure's code after rolling back. */
static int commit_batch(struct store *s, struct store_batch *b, struct batch_ctx *bc,
                        int *compact)
{
    int rc, fail_rc = 0;

    *compact = 0;
    bc->nposts = 0;
    bc->tx_points = 0;
    s->tx_seg = s->seg_last + 1;
    segment_enc_start(&bc->seg, &s->segbuf);
    set_sync(s, s->log.sync && b->lsn && b->nlogged == b->nitems);
    rc = store_step(s->st[ST_BEGIN]);
    for (size_t i = 0; rc == SQLITE_OK && i < b->nitems; i++) {
        if (b->items[i].m)
            rc = encode_points(s, bc, b->items[i].m);
        else
            rc = apply_op(s, bc, b->items[i].op, compact);
    }
    if (rc == SQLITE_OK)
        rc = put_segment(s, bc);
    if (rc == SQLITE_OK && b->lsn) { /* the ack log's records up to b->lsn are in here */
        sqlite3_bind_int64(s->st[ST_LOG_LSN], 1, (int64_t)b->lsn);
        rc = store_step(s->st[ST_LOG_LSN]);
    }
    if (rc == SQLITE_OK) {
        uv_mutex_lock(&s->lock);
        int *seam = b->lsn ? &s->fail_logged : &s->fail_commits;
        if (*seam > 0) {
            (*seam)--;
            fail_rc = s->fail_rc;
        }
        uv_mutex_unlock(&s->lock);
        s->commit_lsn = b->lsn; /* for the WAL hook, which runs inside the commit */
        rc = fail_rc ? fail_rc : store_step(s->st[ST_COMMIT]);
        s->commit_lsn = 0;
    }
    if (rc == SQLITE_OK) {
        s->seg_last = s->tx_seg - 1;
        s->log_points += bc->tx_points;
        return SQLITE_OK;
    }
    s->last_full = store_failure(s->db, rc, fail_rc != 0, s->last_err, sizeof s->last_err);
    log_debug("store: commit upto=%llu failed %s", (unsigned long long)b->last_seq,
              s->last_err);
    if (!sqlite3_get_autocommit(s->db))
        store_step(s->st[ST_ROLLBACK]);
    /* ids created inside the rolled-back transaction are gone: forget them all */
    cache_clear(&s->cache);
    *compact = 0;
    return rc;
}

/* The committed batch's points become hot (visible to queries) in one lock hold. */
static void apply_posts(struct store *s, const struct batch_ctx *bc)
{
    if (bc->nposts == 0)
        return;
    uv_mutex_lock(&s->hot_lock);
    s->stats.log_points = s->log_points;
    for (size_t i = 0; i < bc->nposts; i++) {
        if (bc->posts[i].p)
            hot_add(&s->hot, bc->posts[i].sid, bc->posts[i].seg, bc->posts[i].p);
        else
            hot_drop(&s->hot, bc->posts[i].sid);
    }
    uv_mutex_unlock(&s->hot_lock);
}

/* ---- writer thread: a full disk ---- */

#define STORE_STR_(x) #x
#define STORE_STR(x) STORE_STR_(x)

/* Bytes the file system of the database has free for us (0 when statvfs fails). */
static uint64_t free_bytes(const struct store *s)
{
    struct statvfs v;

    return statvfs(s->path, &v) == 0 ? (uint64_t)v.f_bavail * v.f_frsize : 0;
}

/* A try met a full disk (s->last_err says how): the next one waits for the probe
 * interval, or for free space to grow. The first such try logs, once. */
static void full_failed(struct store *s)
{
    uint64_t now = gw_mono_ms();

    s->full_probe_ms = now + s->cfg.full_probe_ms;
    s->full_free = free_bytes(s);
    if (s->full)
        return;
    s->full = 1;
    s->full_since_ms = now;
    s->full_refused = 0;
    log_warn("store: disk full, refusing writes until space returns: %s; trying again every"
             " %u ms", s->last_err, s->cfg.full_probe_ms);
}

/* A commit succeeded. */
static void full_end(struct store *s)
{
    if (!s->full)
        return;
    s->full = 0;
    log_info("store: disk space is back, writes accepted again after full_ms=%llu"
             " refused_batches=%llu", (unsigned long long)(gw_mono_ms() - s->full_since_ms),
             (unsigned long long)s->full_refused);
}

/* Whether a batch is worth a try while full: the probe interval is over, or the file
 * system gained cfg.full_probe_free since the last try (someone freed space). */
static int full_try_due(const struct store *s)
{
    uint64_t now_free;

    if (gw_mono_ms() >= s->full_probe_ms)
        return 1;
    now_free = free_bytes(s);
    return now_free > s->full_free && now_free - s->full_free >= s->cfg.full_probe_free;
}

/* Tells the loop the writer's full state (the batches carry it too: b->full). */
static void publish_full(struct store *s)
{
    uv_mutex_lock(&s->lock);
    s->full_state = s->full;
    uv_mutex_unlock(&s->lock);
    uv_async_send(&s->h->async);
}

/* A chunk slice; one that met a full disk makes the store full. */
static int chunk_slice(struct store *s)
{
    int ok;

    s->last_full = 0; /* a slice that backs off tries nothing */
    ok = store_chunk_slice(s);
    if (!ok && s->last_full && !s->full) {
        full_failed(s);
        publish_full(s);
    }
    return ok;
}

/* Full with no batch to try: once the file system shows cfg.full_probe_free free, a
 * commit that rewrites one page (the schema's own user_version) tells whether writes fit
 * again. (Less free space waits for a batch to try: one page could fit while batches
 * do not, and the state would flap.) */
static void full_probe(struct store *s)
{
    int rc;

    s->full_probe_ms = gw_mono_ms() + s->cfg.full_probe_ms;
    if (free_bytes(s) < s->cfg.full_probe_free)
        return;
    rc = store_step(s->st[ST_BEGIN]);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "PRAGMA user_version = " STORE_STR(STORE_SCHEMA_VERSION), NULL,
                          NULL, NULL);
    if (rc == SQLITE_OK)
        rc = store_step(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK) {
        full_end(s);
        publish_full(s);
        return;
    }
    if (store_failure(s->db, rc, 0, s->last_err, sizeof s->last_err))
        full_failed(s);
    if (!sqlite3_get_autocommit(s->db))
        store_step(s->st[ST_ROLLBACK]);
}

/* ---- writer thread: the loop over batches ---- */

/* A finished batch's messages and operations go (the writer's references). */
void store_batch_release(struct store_batch *b)
{
    for (size_t i = 0; i < b->nitems; i++) {
        msg_unref(b->items[i].m);
        store_op_free(b->items[i].op);
    }
    free(b->items);
    b->items = NULL;
    b->nitems = b->cap = 0;
}

/* b was committed: its points become hot, its commit latency counts, a failure episode
 * ends. */
static void committed(struct store *s, struct store_batch *b, const struct batch_ctx *bc,
                      uint64_t start_ns)
{
    apply_posts(s, bc);
    if (b->nitems == 0)
        return;
    uv_mutex_lock(&s->hot_lock);
    hist_observe(&s->stats.commit_latency, (uv_hrtime() - start_ns) / 1000);
    uv_mutex_unlock(&s->hot_lock);
    full_end(s);
    if (s->failed_batches > 0) {
        log_warn("store: commits recovered after failed_batches=%llu",
                 (unsigned long long)s->failed_batches);
        s->failed_batches = 0;
    }
}

/* b's outcome goes to the loop: the done queue, with the full state; wake: through the
 * async handle (the writer thread), else the caller drains it (the loop's own commit). */
static void push_done(struct store *s, struct store_batch *b, int wake)
{
    uv_mutex_lock(&s->lock);
    if (s->done_tail)
        s->done_tail->next = b;
    else
        s->done_head = b;
    s->done_tail = b;
    s->full_state = s->full;
    uv_mutex_unlock(&s->lock);
    if (wake)
        uv_async_send(&s->h->async);
}

/* The loop learns that a batch the ack log acked is stuck (reads stop waiting for it), or
 * committed after all. */
static void set_stuck(struct store *s, int stuck)
{
    uv_mutex_lock(&s->lock);
    s->log_stuck = stuck;
    uv_mutex_unlock(&s->lock);
    uv_async_send(&s->h->async);
}

/* Batches with writes the ack log has acked are never refused nor given up, since their
 * acks are out: one whose commit fails waits in the stuck list (in order) and is tried
 * again, 50 ms doubling to STORE_LOG_RETRY_MAX_MS apart (a full disk: when a probe is due),
 * until it commits. Meanwhile no later batch may commit before it: later batches the log
 * acked join the list, the others are refused (reported failed) at once, as with a full
 * disk, so devices hear about it. Only a stop ends the tries: the log file keeps the
 * batches and the next start commits them. */
static void stuck_push(struct store *s, struct store_batch *b)
{
    b->next = NULL;
    if (s->stuck_tail)
        s->stuck_tail->next = b;
    else
        s->stuck_head = b;
    s->stuck_tail = b;
}

/* One commit of the stuck list's head failed: the next try waits. */
static void stuck_backoff(struct store *s)
{
    if (s->last_full && !s->full) {
        full_failed(s);
        publish_full(s);
    }
    s->stuck_retry_ms = gw_mono_ms() + (s->full ? s->cfg.full_probe_ms : s->stuck_delay_ms);
    if (s->stuck_delay_ms < STORE_LOG_RETRY_MAX_MS)
        s->stuck_delay_ms *= 2;
}

/* A logged batch's first commit failed. */
static void stuck_begin(struct store *s, struct store_batch *b)
{
    if (!s->stuck_head) {
        log_error("store: batch upto=%llu rows=%zu acked through the ack log failed to commit:"
                  " %s; trying again until it does", (unsigned long long)b->last_seq, b->nrows,
                  s->last_err);
        s->stuck_delay_ms = STORE_RETRY_BASE_MS;
        s->stuck_tries = 1;
        set_stuck(s, 1);
    }
    stuck_push(s, b);
    stuck_backoff(s);
}

/* Tries the stuck batches in order while they commit (when a try is due). */
static void stuck_retry(struct store *s, struct batch_ctx *bc)
{
    while (s->stuck_head) {
        struct store_batch *b = s->stuck_head;
        uint64_t start_ns = uv_hrtime();
        int compact = 0;

        if (gw_mono_ms() < s->stuck_retry_ms || (s->full && !full_try_due(s)))
            return;
        s->stuck_tries++;
        if (commit_batch(s, b, bc, &compact) != SQLITE_OK) {
            stuck_backoff(s);
            return;
        }
        s->stuck_head = b->next;
        if (!s->stuck_head)
            s->stuck_tail = NULL;
        committed(s, b, bc, start_ns);
        store_batch_release(b);
        b->ok = 1;
        b->full = s->full;
        push_done(s, b, 1);
        s->stuck_retry_ms = 0;
    }
    log_warn("store: the batches the ack log acked are committed after tries=%llu",
             (unsigned long long)s->stuck_tries);
    set_stuck(s, 0);
}

/* A stop: what is still stuck stays in the log files for the next start. */
static void stuck_give_up(struct store *s)
{
    struct store_batch *b;

    if (s->stuck_head)
        log_warn("store: batches the ack log acked stay in its files for the next start"
                 " (upto=%llu)", (unsigned long long)s->stuck_tail->last_seq);
    while ((b = s->stuck_head) != NULL) {
        s->stuck_head = b->next;
        store_batch_release(b);
        b->ok = 0;
        b->full = s->full;
        push_done(s, b, 1);
    }
    s->stuck_tail = NULL;
}

static void process_batch(struct store *s, struct store_batch *b, struct batch_ctx *bc)
{
    int ok = b->nitems == 0, compact_req = 0, rc = SQLITE_OK, tries = 0, full = 0;
    uint64_t start_ns = uv_hrtime();

    if (!ok && s->stuck_head)
        stuck_retry(s, bc);
    if (!ok && s->stuck_head) { /* it may not commit before them */
        if (b->lsn) {
            stuck_push(s, b);
            return;
        }
        s->full_refused += s->full;
        tries = STORE_COMMIT_TRIES; /* refused untried */
    } else if (!ok && b->lsn) {
        rc = commit_batch(s, b, bc, &compact_req);
        ok = rc == SQLITE_OK;
        if (!ok) {
            stuck_begin(s, b);
            return;
        }
        tries = STORE_COMMIT_TRIES;
    } else if (!ok && s->full && !full_try_due(s)) {
        s->full_refused++; /* refused untried: SQLite would only say the same */
        tries = STORE_COMMIT_TRIES;
    }
    while (!ok && tries < STORE_COMMIT_TRIES) {
        if (tries > 0)
            uv_sleep(STORE_RETRY_BASE_MS << (tries - 1));
        rc = commit_batch(s, b, bc, &compact_req);
        ok = rc == SQLITE_OK;
        tries++;
        if (rc == SQLITE_MISMATCH)
            break; /* a value this build cannot store: no retry will store it */
        if (!ok && s->last_full) {
            full = 1; /* no retry either: probes follow */
            break;
        }
    }
    if (ok)
        committed(s, b, bc, start_ns);
    if (full) {
        full_failed(s);
        s->full_refused++;
    } else if (!ok && !s->full && s->failed_batches++ == 0) { /* once per episode */
        log_error("store: batch upto=%llu rows=%zu failed after %d tries, not durable; %s",
                  (unsigned long long)b->last_seq, b->nrows, tries, s->last_err);
    }
    store_batch_release(b);
    b->ok = ok;
    b->full = s->full;
    if (compact_req) { /* before done: the op's seq means "chunked" */
        s->force_chunk = 1;
        s->chunk_retry_ms = 0;
        while (s->force_chunk && chunk_slice(s))
            ;
        s->force_chunk = 0;
    }
    push_done(s, b, 1);
}

int store_commit_inline(struct store *s, struct store_batch *b)
{
    int compact = 0, rc;
    uint64_t start_ns = uv_hrtime();

    if (!s->inline_bc)
        s->inline_bc = xcalloc(1, sizeof *s->inline_bc);
    /* the loop never waits on SQLite: a lock held elsewhere fails the attempt at once */
    sqlite3_busy_timeout(s->db, 0);
    rc = commit_batch(s, b, s->inline_bc, &compact);
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK)
        return -1; /* rolled back, nothing of it stays: the writer tries it again */
    committed(s, b, s->inline_bc, start_ns);
    store_batch_release(b);
    b->ok = 1;
    b->full = s->full;
    push_done(s, b, 0);
    return 0;
}

int store_commit_replayed(struct store *s, struct store_batch *b)
{
    struct batch_ctx bc = { 0 };
    int compact = 0, rc = SQLITE_OK;
    uint64_t start_ns = uv_hrtime();

    for (int tries = 0; tries < STORE_COMMIT_TRIES; tries++) {
        if (tries > 0)
            uv_sleep(STORE_RETRY_BASE_MS << (tries - 1));
        rc = commit_batch(s, b, &bc, &compact);
        if (rc == SQLITE_OK || rc == SQLITE_MISMATCH)
            break;
    }
    if (rc == SQLITE_OK)
        committed(s, b, &bc, start_ns);
    else
        log_error("store: the ack log's record lsn=%llu cannot be committed: %s",
                  (unsigned long long)b->lsn, s->last_err);
    store_batch_release(b);
    free(bc.posts);
    return rc == SQLITE_OK ? 0 : -1;
}

int store_writer_work_due(const struct store *s)
{
    return store_chunk_due(s) || (s->wal_high_frames > 0 && s->wal_frames >= s->wal_high_frames);
}

/* Runs f (a chunk slice, the WAL bound or a probe) with the write connection. */
static void with_db(struct store *s, int slice, int probe)
{
    uv_mutex_lock(&s->db_lock);
    if (probe) {
        full_probe(s);
    } else {
        if (slice)
            chunk_slice(s); /* a failure backs off: then it is not due */
        store_wal_bound(s); /* between transactions: the WAL stays bounded */
    }
    uv_mutex_unlock(&s->db_lock);
}

static void on_writer_thread(void *arg)
{
    struct store *s = arg;
    struct batch_ctx bc = { 0 };

    for (;;) {
        struct store_batch *b;
        int overdue, due, full, timed, stuck;
        uint64_t probe_ms, stuck_ms, now;

        /* the writer-side state, read under the lock the loop's inline commits hold */
        uv_mutex_lock(&s->db_lock);
        overdue = store_chunk_overdue(s);
        due = store_chunk_due(s);
        full = s->full;
        probe_ms = s->full_probe_ms;
        timed = s->cfg.retention_days > 0 || s->chunk_retry_ms > 0;
        stuck = s->stuck_head != NULL;
        stuck_ms = s->stuck_retry_ms;
        uv_mutex_unlock(&s->db_lock);

        uv_mutex_lock(&s->lock); /* never held while waiting for s->db_lock */
        b = s->todo_head;
        if (b && !overdue) {
            s->todo_head = b->next;
            if (!s->todo_head)
                s->todo_tail = NULL;
            b->next = NULL;
            uv_mutex_unlock(&s->lock);
            uv_mutex_lock(&s->db_lock);
            process_batch(s, b, &bc);
            if (store_chunk_due(s))
                chunk_slice(s); /* one slice per batch: acks wait ~1 ms at most */
            store_wal_bound(s);
            uv_mutex_unlock(&s->db_lock);
            continue;
        }
        if (s->writer_kick) { /* the loop committed inline: what follows a batch */
            s->writer_kick = 0;
            uv_mutex_unlock(&s->lock);
            with_db(s, due, 0);
            continue;
        }
        if (s->stopping && !b) {
            uv_mutex_unlock(&s->lock);
            uv_mutex_lock(&s->db_lock);
            stuck_give_up(s);
            uv_mutex_unlock(&s->db_lock);
            break; /* what is hot is in the segments: the next start replays it */
        }
        now = gw_mono_ms();
        if (stuck && now >= stuck_ms) {
            uv_mutex_unlock(&s->lock);
            uv_mutex_lock(&s->db_lock);
            stuck_retry(s, &bc);
            uv_mutex_unlock(&s->db_lock);
            continue;
        }
        if (b || due) { /* b waits: the hot points are overdue */
            uv_mutex_unlock(&s->lock);
            with_db(s, 1, 0);
            continue;
        }
        if (stuck && !(full && probe_ms < stuck_ms)) {
            uv_cond_timedwait(&s->cond, &s->lock, (stuck_ms - now) * 1000000);
        } else if (full) {
            if (now >= probe_ms) {
                uv_mutex_unlock(&s->lock);
                with_db(s, 0, 1);
                continue;
            }
            uv_cond_timedwait(&s->cond, &s->lock, (probe_ms - now) * 1000000);
        } else if (timed) {
            uv_cond_timedwait(&s->cond, &s->lock, (uint64_t)STORE_CHUNK_RETRY_MS * 1000000);
        } else {
            uv_cond_wait(&s->cond, &s->lock);
        }
        uv_mutex_unlock(&s->lock);
    }
    free(bc.posts);
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
    if (s->inline_bc) {
        free(s->inline_bc->posts);
        free(s->inline_bc);
        s->inline_bc = NULL;
    }
    cache_clear(&s->cache);
    free(s->cache.slots);
    s->cache.slots = NULL;
    s->cache.cap = 0;
    free(s->scratch);
    s->scratch = NULL;
    buf_fini(&s->segbuf);
}

uint64_t store_compact(struct store *s)
{
    return store_submit_op(s, store_op_new(STORE_OP_COMPACT, NULL));
}
