/* storage/sql.c: the SQL helpers every storage file shares, and the one mapping of a
 * telemetry value to its (t, v) columns and back.
 *
 * Stateless: each function works on the connection or statement it is given, on the
 * thread that owns it (the writer thread for the write connection, a pool thread or
 * the loop at start-up for a read-only one). The bottom of storage/: calls nothing
 * else in it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "gateway/log.h"
#include "storage/chunk.h"
#include "storage/store_int.h"

int store_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);

    if (rc != SQLITE_OK) {
        log_error("store: sql failed rc=%d error=\"%s\"", rc, err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

int store_get_int64(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_ERROR; /* no row */
        }
    }
    sqlite3_finalize(st);
    return rc;
}

const char *store_errmsg(sqlite3 *db, int rc)
{
    return db && sqlite3_errcode(db) == rc ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
}

int store_failure(sqlite3 *db, int rc, int injected, char *err, size_t len)
{
    int prim = rc & 0xff, e = 0, n;

    if (!injected && (prim == SQLITE_FULL || prim == SQLITE_IOERR))
        e = sqlite3_system_errno(db); /* the errno of the file operation that failed */
    n = snprintf(err, len, "rc=%d error=\"%s\"", rc,
                 injected ? sqlite3_errstr(rc) : store_errmsg(db, rc));
    if (n > 0 && (size_t)n < len && e)
        n += snprintf(err + n, len - (size_t)n, " errno=%d (%s)", e, strerror(e));
    if (n > 0 && (size_t)n < len && injected)
        snprintf(err + n, len - (size_t)n, " (injected)");
    return prim == SQLITE_FULL || (prim == SQLITE_IOERR && (e == ENOSPC || e == EDQUOT));
}

int store_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st); /* no bound pointer outlives the caller's buffers */
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

void store_bind_text_or_null(sqlite3_stmt *st, int i, const char *p)
{
    if (p)
        sqlite3_bind_text(st, i, p, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

void store_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    sqlite3_bind_blob(st, i, p && n ? p : "", (int)n, SQLITE_STATIC);
}

const char *store_col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

const void *store_col_blob(sqlite3_stmt *st, int i, size_t *len)
{
    const void *p = sqlite3_column_blob(st, i);

    *len = (size_t)sqlite3_column_bytes(st, i);
    return p ? p : "";
}

/* ---- the value columns ---- */

int store_bind_value(sqlite3_stmt *st, int tcol, const struct point *p)
{
    switch (p->type) {
    case VAL_NUM:
        sqlite3_bind_double(st, tcol + 1, p->num);
        break;
    case VAL_BOOL:
        sqlite3_bind_int(st, tcol + 1, p->num != 0);
        break;
    case VAL_STR:
    case VAL_JSON:
        sqlite3_bind_text(st, tcol + 1, p->str ? p->str : "", p->str ? (int)p->str_len : 0,
                          SQLITE_STATIC);
        break;
    default:
        log_error("store: key=%s has unknown value type=%d: not stored", p->key ? p->key : "",
                  (int)p->type);
        return SQLITE_MISMATCH;
    }
    sqlite3_bind_int(st, tcol, (int)p->type);
    return SQLITE_OK;
}

int store_read_value(sqlite3_stmt *st, int tcol, struct point *p)
{
    int t = sqlite3_column_int(st, tcol);

    switch (t) {
    case VAL_NUM:
        p->num = sqlite3_column_double(st, tcol + 1);
        break;
    case VAL_BOOL:
        p->num = sqlite3_column_int(st, tcol + 1) != 0;
        break;
    case VAL_STR:
    case VAL_JSON:
        p->str = store_col_text(st, tcol + 1);
        p->str_len = p->str ? (size_t)sqlite3_column_bytes(st, tcol + 1) : 0;
        if (!p->str)
            p->str = "";
        break;
    default:
        log_error("store: stored value has unknown type=%d: not served", t);
        return SQLITE_MISMATCH;
    }
    p->type = (enum val_type)t;
    return SQLITE_OK;
}

int store_write_chunk(sqlite3_stmt *add, int64_t sid, struct chunk_enc *e, struct buf *blob)
{
    struct chunk_stats st = e->stats;

    blob->len = 0;
    if (st.count == 0)
        return SQLITE_OK;
    chunk_enc_finish(e, blob);
    sqlite3_bind_int64(add, 1, sid);
    sqlite3_bind_int64(add, 2, st.first_ts);
    sqlite3_bind_int64(add, 3, st.last_ts);
    sqlite3_bind_int64(add, 4, st.count);
    store_bind_blob(add, 5, blob->data, blob->len);
    return store_step(add);
}
