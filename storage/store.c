/* storage/store.c: the top of storage/: opening and closing the store, the bus sink
 * that appends telemetry, and the counters the loop reads.
 *
 * store_open (loop thread, before the loop runs) builds the locks, opens the write
 * connection (schema.c), replays the segments not yet chunked (chunker.c), creates the
 * loop handles (batch.c) and starts the writer thread (writer.c). store_close undoes
 * it in reverse order: queries and outbox reads in flight are answered (query.c,
 * outbox.c), the writer drains and stops, the checkpointer stops and the readers
 * close, the WAL is checkpointed into the database (checkpoint.c), the database
 * closes. */
#include "storage/store.h"

#include "base/alloc.h"
#include "base/err.h"
#include "gateway/log.h"
#include "gateway/ticket.h"
#include "storage/store_int.h"

static void apply_defaults(struct store_cfg *c)
{
    if (c->batch_rows == 0)
        c->batch_rows = STORE_DEFAULT_BATCH_ROWS;
    if (c->hot_max_points == 0)
        c->hot_max_points = STORE_DEFAULT_HOT_MAX_POINTS;
    if (c->queue_high_rows == 0)
        c->queue_high_rows = STORE_DEFAULT_HIGH_ROWS;
    if (c->queue_low_rows == 0 || c->queue_low_rows > c->queue_high_rows)
        c->queue_low_rows = c->queue_high_rows / 4;
    if (c->queue_high_bytes == 0)
        c->queue_high_bytes = STORE_DEFAULT_HIGH_BYTES;
    if (c->queue_low_bytes == 0 || c->queue_low_bytes > c->queue_high_bytes)
        c->queue_low_bytes = c->queue_high_bytes / 2;
    if (c->wal_max_bytes == 0)
        c->wal_max_bytes = STORE_DEFAULT_WAL_MAX_BYTES;
    if (c->wal_max_bytes < (1u << 20))
        c->wal_max_bytes = 1u << 20;
    if (c->full_probe_ms == 0)
        c->full_probe_ms = STORE_FULL_PROBE_MS;
    if (c->full_probe_free == 0)
        c->full_probe_free = STORE_FULL_PROBE_FREE;
}

int store_open(uv_loop_t *loop, const struct store_cfg *cfg, struct store **out)
{
    struct store *s;

    *out = NULL;
    if (!loop || !cfg || !cfg->path || !cfg->path[0])
        return GW_EINVAL;
    s = xcalloc(1, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    apply_defaults(&s->cfg);
    s->path = xstrdup(cfg->path);
    s->cfg.path = s->path;
    s->snapshot_ms = STORE_SNAPSHOT_MAX_MS;
    s->log.fd = -1;

    if (uv_mutex_init(&s->lock) != 0)
        goto fail;
    s->have_lock = 1;
    if (uv_cond_init(&s->cond) != 0)
        goto fail;
    s->have_cond = 1;
    if (uv_mutex_init(&s->pool_lock) != 0)
        goto fail;
    s->have_pool_lock = 1;
    if (uv_cond_init(&s->pool_cond) != 0)
        goto fail;
    s->have_pool_cond = 1;
    if (uv_mutex_init(&s->hot_lock) != 0)
        goto fail;
    s->have_hot_lock = 1;
    if (uv_mutex_init(&s->db_lock) != 0)
        goto fail;
    s->have_db_lock = 1;

    if (store_db_open(s) != 0 || store_replay(s) != 0 || store_log_open(s) != 0 ||
        store_handles_init(s) != 0 || store_log_start(s) != 0 ||
        store_checkpointer_start(s) != 0 || store_writer_start(s) != 0)
        goto fail;
    *out = s;
    return 0;
fail:
    log_error("store: open path=%s failed: %s", cfg->path,
              !s->db ? "no handle"
              : sqlite3_errcode(s->db) != SQLITE_OK ? sqlite3_errmsg(s->db)
                                                    : "see the line above");
    store_close(s);
    return GW_ESTORE;
}

void store_set_callbacks(struct store *s, store_durable_fn on_durable,
                         store_pressure_fn on_pressure, void *ctx)
{
    s->on_durable = on_durable;
    s->on_pressure = on_pressure;
    s->ctx = ctx;
}

void store_set_full_callback(struct store *s, store_full_fn on_full)
{
    s->on_full = on_full;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    s->closing = 1;
    store_release_reads(s); /* queued now: the finishing below answers them */
    store_queries_finish(s);
    store_outbox_reads_finish(s);
    store_backup_stop(s);
    store_writer_stop(s); /* seals, drains, joins, fires the last on_durable */
    store_log_close(s);   /* its files go once everything in them is committed */
    store_checkpointer_stop(s);
    if (s->have_pool_lock)
        store_pool_close(s);
    store_wal_close(s); /* the write connection is the last one: the WAL goes */
    store_handles_close(s);
    store_db_close(s);
    if (s->have_pool_cond)
        uv_cond_destroy(&s->pool_cond);
    if (s->have_pool_lock)
        uv_mutex_destroy(&s->pool_lock);
    hot_fini(&s->hot);
    if (s->have_hot_lock)
        uv_mutex_destroy(&s->hot_lock);
    if (s->have_db_lock)
        uv_mutex_destroy(&s->db_lock);
    if (s->have_cond)
        uv_cond_destroy(&s->cond);
    if (s->have_lock)
        uv_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

void store_sink(void *ctx, struct msg *m, struct ticket *t)
{
    struct store *s = ctx;

    if (m->kind == MSG_TELEMETRY && m->device && m->device[0] && m->npoints > 0)
        ticket_add(t, store_append(s, m));
}

bool store_pending(const struct store *s)
{
    return s->durable_seq < s->last_seq;
}

size_t store_queued(const struct store *s)
{
    return s->queued_rows;
}

size_t store_queued_bytes(const struct store *s)
{
    return s->queued_bytes;
}

void store_get_stats(struct store *s, struct store_stats *out)
{
    uv_mutex_lock(&s->hot_lock);
    *out = s->stats;
    out->hot_points = s->hot.npoints;
    out->hot_bytes = s->hot.nbytes;
    uv_mutex_unlock(&s->hot_lock);
    uv_mutex_lock(&s->ckpt_lock);
    out->wal = s->wal;
    uv_mutex_unlock(&s->ckpt_lock);
}

void store_fail_next_commits(struct store *s, int n, int rc)
{
    uv_mutex_lock(&s->lock);
    s->fail_commits = n;
    s->fail_rc = rc ? rc : SQLITE_IOERR;
    uv_mutex_unlock(&s->lock);
}

void store_fail_next_logged_commits(struct store *s, int n, int rc)
{
    uv_mutex_lock(&s->lock);
    s->fail_logged = n;
    s->fail_rc = rc ? rc : SQLITE_IOERR;
    uv_mutex_unlock(&s->lock);
}

void store_set_snapshot_ms(struct store *s, unsigned ms)
{
    s->snapshot_ms = ms;
}
