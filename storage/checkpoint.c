/* storage/checkpoint.c: WAL checkpoints off the writer thread.
 *
 * SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1000
 * pages: that commit (and every ack behind it) then waits while the WAL is copied into
 * the database file and synced, tens of milliseconds. Instead the write connection's
 * WAL hook only notes the WAL's size; past STORE_CKPT_PAGES it wakes a checkpointer
 * thread with a connection of its own, which runs a PASSIVE checkpoint: it copies what
 * no reader still needs, concurrently with the writer's next commits, and never blocks
 * them. The WAL restarts from its beginning at the first commit after a complete
 * checkpoint, so it stays about the size one checkpoint interval writes.
 * s->ckpt_lock guards the wake-up flags only. */
#include "base/clock.h"
#include "gateway/log.h"
#include "storage/store_int.h"

/* Write connection, after each commit (writer thread; before it starts, the loop). */
static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store *s = arg;

    (void)db;
    (void)name;
    if (pages >= STORE_CKPT_PAGES) { /* hooked only once the thread runs */
        uv_mutex_lock(&s->ckpt_lock);
        s->ckpt_wanted = 1;
        uv_cond_signal(&s->ckpt_cond);
        uv_mutex_unlock(&s->ckpt_lock);
    }
    return SQLITE_OK;
}

static void on_ckpt_thread(void *arg)
{
    struct store *s = arg;

    uv_mutex_lock(&s->ckpt_lock);
    for (;;) {
        int nlog = 0, ncopied = 0, rc;
        uint64_t t0;

        while (!s->ckpt_wanted && !s->ckpt_stop)
            uv_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
        if (s->ckpt_stop)
            break;
        s->ckpt_wanted = 0;
        uv_mutex_unlock(&s->ckpt_lock);
        t0 = gw_mono_ms();
        rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog,
                                       &ncopied);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_warn("store: checkpoint failed rc=%d error=\"%s\"", rc, sqlite3_errstr(rc));
        else
            log_debug("store: checkpoint wal_pages=%d copied=%d ms=%llu", nlog, ncopied,
                      (unsigned long long)(gw_mono_ms() - t0));
        uv_mutex_lock(&s->ckpt_lock);
    }
    uv_mutex_unlock(&s->ckpt_lock);
}

int store_checkpointer_start(struct store *s)
{
    if (uv_mutex_init(&s->ckpt_lock) != 0)
        return -1;
    s->have_ckpt_lock = 1;
    if (uv_cond_init(&s->ckpt_cond) != 0)
        return -1;
    s->have_ckpt_cond = 1;
    if (sqlite3_open_v2(s->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        log_error("store: checkpoint connection path=%s: %s", s->path,
                  s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "no handle");
        return -1;
    }
    sqlite3_busy_timeout(s->ckpt_db, STORE_BUSY_TIMEOUT_MS);
    if (uv_thread_create(&s->ckpt_thread, on_ckpt_thread, s) != 0)
        return -1;
    s->have_ckpt_thread = 1;
    sqlite3_wal_hook(s->db, on_wal, s); /* replaces the automatic checkpoint */
    return 0;
}

void store_checkpointer_stop(struct store *s)
{
    if (s->have_ckpt_thread) {
        uv_mutex_lock(&s->ckpt_lock);
        s->ckpt_stop = 1;
        uv_cond_signal(&s->ckpt_cond);
        uv_mutex_unlock(&s->ckpt_lock);
        uv_thread_join(&s->ckpt_thread);
        s->have_ckpt_thread = 0;
    }
    if (s->ckpt_db)
        sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    if (s->have_ckpt_cond)
        uv_cond_destroy(&s->ckpt_cond);
    if (s->have_ckpt_lock)
        uv_mutex_destroy(&s->ckpt_lock);
    s->have_ckpt_cond = s->have_ckpt_lock = 0;
}
