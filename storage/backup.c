/* storage/backup.c: an online backup of the database (store_backup), off the loop.
 *
 * The copy runs on libuv's work pool with a read-only connection of its own. It opens
 * one read transaction and keeps it for the whole copy, so every page comes from one
 * snapshot: the database as of the last commit before the backup began, every write
 * acknowledged by then included (an ack follows its commit). SQLite's backup API
 * (sqlite3_backup_step) copies the pages BACKUP_STEP_PAGES at a time; since the source
 * connection holds its read transaction between steps, commits by the writer meanwhile
 * (WAL) neither block the copy nor make it start over, and the copy blocks no commit.
 * What it costs the writer: while the snapshot is held, the write-ahead log cannot
 * start over (checkpoint.c), so it grows by what is committed during the copy.
 *
 * The copy goes to "<dir>/.<name>.partial" (journal off: on any failure the file is
 * deleted, never used), is turned into a one-file database in rollback mode (the
 * copied header says WAL), synced, then linked to "<dir>/<name>" (which fails rather
 * than replace an existing file) and the directory is synced: a snapshot under its
 * name is complete. store_close stops a copy in flight between two steps. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/log.h"
#include "storage/store_int.h"

#define BACKUP_STEP_PAGES 1024 /* pages per sqlite3_backup_step: 4 MiB at 4 KiB pages */

struct store_backup_req {
    uv_work_t work;
    struct store *s;
    char *dir, *path, *tmp;
    store_backup_fn fn;
    void *ctx;
    atomic_int abort;           /* store_close: stop between two steps */
    int work_done;              /* s->pool_lock: the work callback has finished */
    int orphan;                 /* store_close gave up on it: answer nobody */
    struct store_backup_result res;
};

static void set_error(struct store_backup_req *r, int sqlite_rc, int err, const char *what)
{
    struct store_backup_result *res = &r->res;

    if (res->rc != 0)
        return; /* the first error is the one that counts */
    res->rc = GW_ESTORE;
    res->full = (sqlite_rc & 0xff) == SQLITE_FULL || err == ENOSPC || err == EDQUOT;
    if (err)
        snprintf(res->error, sizeof res->error, "%s: %s", what, strerror(err));
    else
        snprintf(res->error, sizeof res->error, "%s", what);
}

/* Syncs a file or directory by path. 0 or an errno. */
static int sync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    int err = 0;

    if (fd < 0)
        return errno;
    if (fsync(fd) != 0)
        err = errno;
    close(fd);
    return err;
}

/* The copy from src (in a read transaction) into r->tmp. */
static void copy(struct store_backup_req *r, sqlite3 *src)
{
    sqlite3 *dst = NULL;
    sqlite3_backup *b;
    char what[600];
    int rc;

    rc = sqlite3_open_v2(r->tmp, &dst,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(what, sizeof what, "cannot create %s", r->tmp);
        set_error(r, rc, dst ? sqlite3_system_errno(dst) : 0, what);
        sqlite3_close(dst);
        return;
    }
    store_exec(dst, "PRAGMA journal_mode=OFF");
    store_exec(dst, "PRAGMA synchronous=OFF"); /* synced once, below */
    b = sqlite3_backup_init(dst, "main", src, "main");
    if (!b) {
        snprintf(what, sizeof what, "backup: %s", sqlite3_errmsg(dst));
        set_error(r, sqlite3_errcode(dst), sqlite3_system_errno(dst), what);
        sqlite3_close(dst);
        return;
    }
    do {
        if (atomic_load(&r->abort)) {
            rc = SQLITE_INTERRUPT;
            break;
        }
        rc = sqlite3_backup_step(b, BACKUP_STEP_PAGES);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
            sqlite3_sleep(10);
            rc = SQLITE_OK;
        }
    } while (rc == SQLITE_OK);
    r->res.pages = (uint64_t)sqlite3_backup_pagecount(b);
    sqlite3_backup_finish(b);
    if (rc == SQLITE_INTERRUPT) {
        set_error(r, rc, 0, "stopped: the gateway is shutting down");
    } else if (rc != SQLITE_DONE) {
        int err = sqlite3_system_errno(dst);
        snprintf(what, sizeof what, "writing %s: %s", r->tmp, sqlite3_errstr(rc));
        set_error(r, rc, (rc & 0xff) == SQLITE_FULL && !err ? ENOSPC : err, what);
    }
    if (sqlite3_close(dst) != SQLITE_OK && r->res.rc == 0)
        set_error(r, 0, 0, "closing the copy failed");
    if (r->res.rc != 0)
        return;
    /* The copied header says WAL, as the source's does: make the copy one self-contained
     * file in rollback mode (opening it then creates no -wal or -shm beside it). */
    dst = NULL;
    rc = sqlite3_open_v2(r->tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = store_exec(dst, "PRAGMA journal_mode=DELETE") == 0 ? SQLITE_OK : SQLITE_ERROR;
    if (rc != SQLITE_OK) {
        snprintf(what, sizeof what, "finishing %s: %s", r->tmp,
                 dst ? sqlite3_errmsg(dst) : sqlite3_errstr(rc));
        set_error(r, dst ? sqlite3_errcode(dst) : rc, dst ? sqlite3_system_errno(dst) : 0,
                  what);
    }
    if (sqlite3_close(dst) != SQLITE_OK && r->res.rc == 0)
        set_error(r, 0, 0, "closing the copy failed");
}

static void on_backup_work(uv_work_t *w) /* a pool thread */
{
    struct store_backup_req *r = w->data;
    struct store *s = r->s;
    uint64_t t0 = gw_mono_us();
    sqlite3 *src = NULL;
    struct stat st;
    int64_t n;
    int rc, err;
    char what[600];

    if (mkdir(r->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(what, sizeof what, "cannot create %s", r->dir);
        set_error(r, 0, errno, what);
        goto out;
    }
    if (lstat(r->path, &st) == 0) {
        r->res.exists = 1;
        snprintf(what, sizeof what, "%s exists", r->path);
        set_error(r, 0, 0, what);
        goto out;
    }
    rc = sqlite3_open_v2(s->path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(src, STORE_BUSY_TIMEOUT_MS);
        rc = store_exec(src, "BEGIN");
    }
    /* the first read starts the transaction's snapshot: the backup's moment */
    if (rc == SQLITE_OK)
        rc = store_get_int64(src, "SELECT count(*) FROM sqlite_master", &n);
    r->res.started_ms = gw_now_ms();
    if (rc != SQLITE_OK) {
        snprintf(what, sizeof what, "reading the database: %s",
                 src ? sqlite3_errmsg(src) : sqlite3_errstr(rc));
        set_error(r, rc, 0, what);
        goto out;
    }
    unlink(r->tmp); /* a leftover of a copy that was cut short */
    copy(r, src);
    store_exec(src, "COMMIT");
    if (r->res.rc == 0 && (err = sync_path(r->tmp, O_RDONLY)) != 0) {
        snprintf(what, sizeof what, "syncing %s", r->tmp);
        set_error(r, 0, err, what);
    }
    if (r->res.rc == 0 && link(r->tmp, r->path) != 0) {
        r->res.exists = errno == EEXIST;
        snprintf(what, sizeof what, "naming the copy %s", r->path);
        set_error(r, 0, errno, what);
    }
    unlink(r->tmp);
    if (r->res.rc == 0 && (err = sync_path(r->dir, O_RDONLY | O_DIRECTORY)) != 0) {
        snprintf(what, sizeof what, "syncing %s", r->dir);
        set_error(r, 0, err, what);
    }
    if (r->res.rc == 0 && stat(r->path, &st) == 0)
        r->res.bytes = (uint64_t)st.st_size;
out:
    sqlite3_close(src);
    r->res.seconds = (double)(gw_mono_us() - t0) / 1e6;
    uv_mutex_lock(&s->pool_lock);
    r->work_done = 1;
    uv_cond_broadcast(&s->pool_cond);
    uv_mutex_unlock(&s->pool_lock);
}

static void req_free(struct store_backup_req *r)
{
    free(r->dir);
    free(r->path);
    free(r->tmp);
    free(r);
}

static void on_backup_done(uv_work_t *w, int status) /* loop thread */
{
    struct store_backup_req *r = w->data;

    if (status == UV_ECANCELED && r->res.rc == 0)
        set_error(r, 0, 0, "stopped: the gateway is shutting down");
    if (!r->orphan) {
        r->s->backup = NULL;
        r->res.path = r->path;
        r->fn(r->ctx, &r->res);
    }
    req_free(r);
}

int store_backup(struct store *s, const char *dir, const char *name, store_backup_fn fn,
                 void *ctx)
{
    struct store_backup_req *r;
    size_t dl, nl;
    int rc;

    if (!s || !dir || !name || !name[0] || strchr(name, '/') || !fn)
        return GW_EINVAL;
    if (s->closing)
        return GW_ESTORE;
    if (s->backup)
        return GW_EEXIST;
    dl = strlen(dir);
    nl = strlen(name);
    r = xcalloc(1, sizeof *r);
    r->work.data = r;
    r->s = s;
    r->dir = xstrdup(dir);
    r->path = xmalloc(dl + nl + 2);
    snprintf(r->path, dl + nl + 2, "%s/%s", dir, name);
    r->tmp = xmalloc(dl + nl + 12);
    snprintf(r->tmp, dl + nl + 12, "%s/.%s.partial", dir, name);
    r->fn = fn;
    r->ctx = ctx;
    rc = store_queue_read(s, &r->work, on_backup_work, on_backup_done);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    s->backup = r;
    return 0;
}

void store_backup_stop(struct store *s)
{
    struct store_backup_req *r = s->backup;

    if (!r)
        return;
    s->backup = NULL;
    atomic_store(&r->abort, 1);
    if (uv_cancel((uv_req_t *)&r->work) != 0) { /* running or finished: wait */
        uv_mutex_lock(&s->pool_lock);
        while (!r->work_done)
            uv_cond_wait(&s->pool_cond, &s->pool_lock);
        uv_mutex_unlock(&s->pool_lock);
    }
    log_warn("storage: a backup in progress was stopped by the shutdown");
    r->orphan = 1; /* on_backup_done still runs (loop) and frees r */
}
