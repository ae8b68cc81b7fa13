/* storage/checkpoint.c: keeps the write-ahead log (gale.db-wal) below
 * storage.wal_max_bytes.
 *
 * Commits append pages to the WAL; a checkpoint copies them into the database file,
 * and the writer's next transaction starts the log over from its beginning once every
 * frame is copied and no reader still reads an older snapshot out of it. Three parts:
 * - SQLite's automatic checkpoint runs inside the commit that crosses its threshold:
 *   that commit and every ack behind it would wait while the WAL is copied and synced.
 *   Instead the write connection's WAL hook notes the WAL's size after each commit and,
 *   from wal_wake_frames on (a quarter of the bound, at most STORE_CKPT_PAGES), wakes a
 *   checkpointer thread with a connection of its own, which runs a PASSIVE checkpoint:
 *   it copies concurrently with the next commits and blocks nobody.
 * - Under steady ingest that alone never restarts the log: the writer commits again
 *   while the passive checkpoint runs, so the log always ends in frames not yet copied.
 *   When it holds wal_high_frames (half the bound), the writer, between two
 *   transactions, runs a RESTART checkpoint on its own connection (store_wal_bound): it
 *   copies that tail (short: the checkpointer copied the rest) and waits up to
 *   STORE_WAL_WAIT_MS for readers of older snapshots to finish (queries renew their
 *   snapshot every STORE_SNAPSHOT_MAX_MS, query.c); the next commit restarts the log.
 *   A reader that holds one snapshot longer keeps the log from restarting: the writer
 *   logs it once per episode, tries again every STORE_WAL_RETRY_MS, and the log grows
 *   until the reader is done; journal_size_limit (the bound) then cuts the file back.
 * - At close, after the writer drained and every other connection closed, a TRUNCATE
 *   checkpoint copies the rest (store_wal_close); closing the last connection then
 *   removes the file.
 * The checkpointer's connection reads the schema once when it opens: on a connection
 * that never read the database, sqlite3_wal_checkpoint_v2 finds no WAL open, copies
 * nothing and still returns SQLITE_OK (with -1 frames).
 * s->ckpt_lock guards the wake-up flags and the counters; s->ckpt_run is held around
 * every checkpoint, so the writer's never runs into the checkpointer's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "gateway/log.h"
#include "storage/store_int.h"

#define WAL_HEADER_BYTES 32
#define WAL_FRAME_HEADER_BYTES 24

/* The last ack log record in the WAL, read before a checkpoint starts (any thread). */
static uint64_t wal_lsn(struct store *s)
{
    uint64_t lsn;

    uv_mutex_lock(&s->ckpt_lock);
    lsn = s->wal_lsn;
    uv_mutex_unlock(&s->ckpt_lock);
    return lsn;
}

/* Counts one checkpoint's outcome (any thread). nlog/ncopied as
 * sqlite3_wal_checkpoint_v2 reports them: frames in the log, frames of it copied; lsn the
 * last ack log record committed before it began. A checkpoint that copied every frame
 * has synced them into the database file (synchronous NORMAL or FULL): every record up to
 * lsn is there, whatever the commit's own synchronous was. */
static void wal_account(struct store *s, int rc, int nlog, int ncopied, uint64_t lsn)
{
    uv_mutex_lock(&s->ckpt_lock);
    if (rc == SQLITE_OK && nlog >= 0 && ncopied == nlog && lsn > s->ckpt_lsn)
        s->ckpt_lsn = lsn;
    if (nlog >= 0 && ncopied >= 0) {
        int64_t before = s->wal_seen_gen == s->wal_gen ? s->wal_seen_copied : 0;

        if (ncopied > before)
            s->wal.frames_copied += (uint64_t)(ncopied - before);
        s->wal_seen_gen = s->wal_gen;
        s->wal_seen_copied = ncopied;
    }
    if (rc == SQLITE_OK && nlog >= 0 && ncopied == nlog)
        s->wal.checkpoints++;
    else if (rc == SQLITE_BUSY) /* a passive one copying less is no sign: it never waits */
        s->wal.busy++;
    uv_mutex_unlock(&s->ckpt_lock);
}

/* Write connection, after each commit (whoever holds s->db_lock). The file's size follows
 * from the frames written since it was last cut back, which only happens when the log
 * starts over (journal_size_limit): only then does it cost a stat(). */
static int on_wal(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct store *s = arg;
    struct stat st;
    uint64_t bytes;

    (void)db;
    (void)name;
    if (frames < s->wal_frames && stat(s->wal_path, &st) == 0 && s->wal_frame_bytes > 0)
        s->wal_file_frames = st.st_size > WAL_HEADER_BYTES
                                 ? (int)((st.st_size - WAL_HEADER_BYTES) / s->wal_frame_bytes)
                                 : 0;
    if (frames > s->wal_file_frames)
        s->wal_file_frames = frames;
    bytes = s->wal_file_frames ? WAL_HEADER_BYTES + (uint64_t)s->wal_file_frames * s->wal_frame_bytes
                               : 0;
    uv_mutex_lock(&s->ckpt_lock);
    if (s->commit_lsn)
        s->wal_lsn = s->commit_lsn;
    if (frames < s->wal_frames)
        s->wal_gen++; /* the log started over */
    s->wal.bytes = bytes;
    if (frames >= s->wal_wake_frames) {
        s->ckpt_wanted = 1;
        uv_cond_signal(&s->ckpt_cond);
    }
    uv_mutex_unlock(&s->ckpt_lock);
    s->wal_frames = frames;
    return SQLITE_OK;
}

/* Makes db open the WAL (a read of the schema): SQLite result code. */
static int open_wal(sqlite3 *db)
{
    int64_t n = 0;

    return store_get_int64(db, "SELECT count(*) FROM sqlite_master", &n);
}

static void on_ckpt_thread(void *arg)
{
    struct store *s = arg;
    int failing = 0; /* log a failure once per episode (a full disk fails every one) */

    uv_mutex_lock(&s->ckpt_lock);
    for (;;) {
        int nlog = -1, ncopied = -1, rc;
        uint64_t t0, lsn;

        while (!s->ckpt_wanted && !s->ckpt_stop)
            uv_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
        if (s->ckpt_stop)
            break;
        s->ckpt_wanted = 0;
        lsn = s->wal_lsn;
        uv_mutex_unlock(&s->ckpt_lock);
        uv_mutex_lock(&s->ckpt_run);
        t0 = gw_mono_ms();
        rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog,
                                       &ncopied);
        if (rc == SQLITE_OK && nlog < 0 && open_wal(s->ckpt_db) == SQLITE_OK)
            rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, "main", SQLITE_CHECKPOINT_PASSIVE,
                                           &nlog, &ncopied);
        uv_mutex_unlock(&s->ckpt_run);
        wal_account(s, rc, nlog, ncopied, lsn);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            if (!failing++)
                log_warn("store: checkpoint failed rc=%d error=\"%s\"", rc,
                         sqlite3_errstr(rc));
        } else {
            if (failing)
                log_info("store: checkpoints succeed again after failures=%d", failing);
            failing = 0;
            log_debug("store: checkpoint wal_frames=%d copied=%d ms=%llu", nlog, ncopied,
                      (unsigned long long)(gw_mono_ms() - t0));
        }
        uv_mutex_lock(&s->ckpt_lock);
    }
    uv_mutex_unlock(&s->ckpt_lock);
}

/* The writer's RESTART checkpoint waits for readers until *arg (monotonic ms). */
static int wait_readers(void *arg, int n)
{
    const uint64_t *deadline = arg;

    (void)n;
    if (gw_mono_ms() >= *deadline)
        return 0;
    uv_sleep(1);
    return 1;
}

void store_wal_bound(struct store *s)
{
    int nlog = -1, ncopied = -1, rc;
    uint64_t now, deadline, lsn;

    if (s->wal_high_frames <= 0)
        return;
    if (s->wal_frames < s->wal_high_frames) {
        if (s->wal_stuck_ms) { /* the log started over (or a checkpoint caught up) */
            log_info("store: wal restarts again after ms=%llu",
                     (unsigned long long)(gw_mono_ms() - s->wal_stuck_ms));
            s->wal_stuck_ms = 0;
            s->wal_retry_ms = 0;
        }
        return;
    }
    if (s->wal_frames == s->wal_done_frames)
        return; /* checkpointed: the next commit starts the log over */
    now = gw_mono_ms();
    if (now < s->wal_retry_ms)
        return;
    lsn = wal_lsn(s);
    uv_mutex_lock(&s->ckpt_run);
    deadline = gw_mono_ms() + STORE_WAL_WAIT_MS;
    sqlite3_busy_handler(s->db, wait_readers, &deadline);
    rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_RESTART, &nlog, &ncopied);
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS); /* the connection's own handler */
    uv_mutex_unlock(&s->ckpt_run);
    wal_account(s, rc, nlog, ncopied, lsn);
    if (rc == SQLITE_OK) {
        if (s->wal_stuck_ms)
            log_info("store: wal restarts again after ms=%llu",
                     (unsigned long long)(gw_mono_ms() - s->wal_stuck_ms));
        log_debug("store: wal checkpoint by the writer frames=%d ms=%llu", nlog,
                  (unsigned long long)(gw_mono_ms() - now));
        s->wal_stuck_ms = 0;
        s->wal_done_frames = s->wal_frames;
        return;
    }
    s->wal_retry_ms = gw_mono_ms() + STORE_WAL_RETRY_MS;
    if (s->wal_stuck_ms)
        return; /* once per episode */
    s->wal_stuck_ms = now;
    if (rc == SQLITE_BUSY)
        log_warn("store: wal cannot restart: a reader holds an older snapshot"
                 " wal_frames=%d copied=%d wal_max_bytes=%zu waited_ms=%d; the log grows"
                 " until the reader is done", nlog, ncopied, s->cfg.wal_max_bytes,
                 STORE_WAL_WAIT_MS);
    else
        log_warn("store: wal checkpoint failed rc=%d error=\"%s\" wal_frames=%d",
                 rc, sqlite3_errstr(rc), s->wal_frames);
}

int store_checkpointer_start(struct store *s)
{
    size_t len = strlen(s->path), frames;
    int64_t page = 0;
    char sql[64];
    struct stat st;

    if (uv_mutex_init(&s->ckpt_lock) != 0)
        return -1;
    s->have_ckpt_lock = 1;
    if (uv_cond_init(&s->ckpt_cond) != 0)
        return -1;
    s->have_ckpt_cond = 1;
    if (uv_mutex_init(&s->ckpt_run) != 0)
        return -1;
    s->have_ckpt_run = 1;
    s->wal_path = xmalloc(len + 5);
    memcpy(s->wal_path, s->path, len);
    memcpy(s->wal_path + len, "-wal", 5);
    if (stat(s->wal_path, &st) == 0)
        s->wal.bytes = (uint64_t)st.st_size;

    if (store_get_int64(s->db, "PRAGMA page_size", &page) != SQLITE_OK || page <= 0)
        page = 4096;
    s->wal_frame_bytes = (int)page + WAL_FRAME_HEADER_BYTES;
    if (s->wal.bytes > WAL_HEADER_BYTES)
        s->wal_file_frames = (int)((s->wal.bytes - WAL_HEADER_BYTES) / (uint64_t)s->wal_frame_bytes);
    frames = (s->cfg.wal_max_bytes - WAL_HEADER_BYTES) / (size_t)(page + WAL_FRAME_HEADER_BYTES);
    s->wal_high_frames = frames / 2 > 2 ? (int)(frames / 2 < INT32_MAX ? frames / 2 : INT32_MAX)
                                        : 2;
    s->wal_wake_frames = frames / 4 < STORE_CKPT_PAGES ? (int)(frames / 4) : STORE_CKPT_PAGES;
    if (s->wal_wake_frames < 1)
        s->wal_wake_frames = 1;
    /* a restart after the log grew past the bound (a reader held it) cuts the file back */
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit=%zu", s->cfg.wal_max_bytes);
    if (store_exec(s->db, sql) != 0)
        return -1;

    if (sqlite3_open_v2(s->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        log_error("store: checkpoint connection path=%s: %s", s->path,
                  s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "no handle");
        return -1;
    }
    sqlite3_busy_timeout(s->ckpt_db, STORE_BUSY_TIMEOUT_MS);
    if (open_wal(s->ckpt_db) != SQLITE_OK) {
        log_error("store: checkpoint connection path=%s: %s", s->path,
                  sqlite3_errmsg(s->ckpt_db));
        return -1;
    }
    if (uv_thread_create(&s->ckpt_thread, on_ckpt_thread, s) != 0)
        return -1;
    s->have_ckpt_thread = 1;
    sqlite3_wal_hook(s->db, on_wal, s); /* replaces the automatic checkpoint */
    log_debug("store: wal_max_bytes=%zu wake_frames=%d high_frames=%d page=%lld",
              s->cfg.wal_max_bytes, s->wal_wake_frames, s->wal_high_frames, (long long)page);
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
    if (s->db)
        sqlite3_wal_hook(s->db, NULL, NULL);
    if (s->ckpt_db)
        sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    free(s->wal_path);
    s->wal_path = NULL;
    if (s->have_ckpt_cond)
        uv_cond_destroy(&s->ckpt_cond);
    if (s->have_ckpt_lock)
        uv_mutex_destroy(&s->ckpt_lock);
    if (s->have_ckpt_run)
        uv_mutex_destroy(&s->ckpt_run);
    s->have_ckpt_cond = s->have_ckpt_lock = s->have_ckpt_run = 0;
}

uint64_t store_wal_ckpt_lsn(struct store *s)
{
    uint64_t lsn;

    if (!s->have_ckpt_lock)
        return 0;
    uv_mutex_lock(&s->ckpt_lock);
    lsn = s->ckpt_lsn;
    uv_mutex_unlock(&s->ckpt_lock);
    return lsn;
}

void store_wal_checkpoint_now(struct store *s)
{
    int nlog = -1, ncopied = -1, rc;
    uint64_t lsn;

    if (!s->db || !s->have_ckpt_run)
        return;
    lsn = wal_lsn(s);
    uv_mutex_lock(&s->ckpt_run);
    rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &ncopied);
    uv_mutex_unlock(&s->ckpt_run);
    wal_account(s, rc, nlog, ncopied, lsn);
    if (rc != SQLITE_OK)
        log_warn("store: wal checkpoint failed rc=%d error=\"%s\"", rc, store_errmsg(s->db, rc));
}

void store_wal_close(struct store *s)
{
    int nlog = -1, ncopied = -1, rc;

    if (!s->db || s->wal_high_frames <= 0)
        return; /* the store never ran */
    rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_TRUNCATE, &nlog, &ncopied);
    if (rc == SQLITE_OK)
        log_info("store: wal checkpointed at close frames=%d", s->wal_frames);
    else
        log_warn("store: wal checkpoint at close failed rc=%d error=\"%s\"", rc,
                 store_errmsg(s->db, rc));
}
