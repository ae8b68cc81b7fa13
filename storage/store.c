/* storage/store.c: opening Gale's SQLite database, its schema and migrations
 * (PRAGMA user_version), the write connection's statements, device operations and
 * the start-up loads.
 *
 * Data flow: store_open (loop thread, before the loop runs) opens the write
 * connection, migrates, prepares every write statement once and starts the writer
 * thread (writer.c). Device operations are built here on the loop thread and handed
 * to the writer in the same ordered stream as telemetry (store_submit_op); the writer
 * calls store_apply_op inside its transaction. store_load_* borrow a read-only
 * connection from the reader pool (query.c) and block: start-up only.
 *
 * Schema v1 (all ids are integers, so the hot tables stay compact):
 *   devices(id TEXT PK, token_hash, role, attrs, created_ms, last_seen_ms, protocol)
 *   device_ids(id INTEGER PK, device TEXT UNIQUE)   dictionary: device name -> dev_id
 *   series(id INTEGER PK, dev_id, key, UNIQUE(dev_id, key))   (dev_id, key) -> series
 *   telemetry_log(series, ts, t, v)        arrival order (rowid), the ack path
 *   telemetry(series, ts, t, v, PK(series, ts)) WITHOUT ROWID   the compacted tier
 *   latest(series PK, ts, t, v)            newest compacted value per series
 * Schema v2 adds the MQTT broker state and device commands (state.c): retained(topic PK),
 * sessions(client_id PK), session_msgs(PK(client_id, msg_id)) WITHOUT ROWID,
 * commands(id PK, ..., created_ms indexed).
 * t is enum val_type (0 number REAL, 1 bool INTEGER 0/1, 2 string TEXT, 3 JSON TEXT).
 * device_ids is separate from devices: telemetry may arrive for a device that is not
 * provisioned (anonymous mode), and a dictionary id never depends on a TEXT rowid. */
#include "storage/store.h"

#include <string.h>

#include "gateway/log.h"
#include "base/alloc.h"
#include "base/err.h"
#include "storage/store_int.h"

#define STORE_OPEN_FLAGS (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX)

/* migrations[v] takes a database from user_version v to v + 1. */
static const char *const migrations[] = {
    "CREATE TABLE devices("
    " id TEXT PRIMARY KEY NOT NULL,"
    " token_hash TEXT,"
    " role TEXT NOT NULL DEFAULT 'device',"
    " attrs TEXT,"
    " created_ms INTEGER NOT NULL DEFAULT 0,"
    " last_seen_ms INTEGER NOT NULL DEFAULT 0,"
    " protocol TEXT);"
    "CREATE TABLE device_ids(id INTEGER PRIMARY KEY, device TEXT NOT NULL UNIQUE);"
    "CREATE TABLE series(id INTEGER PRIMARY KEY, dev_id INTEGER NOT NULL, key TEXT NOT NULL,"
    " UNIQUE(dev_id, key));"
    "CREATE TABLE telemetry_log(series INTEGER NOT NULL, ts INTEGER NOT NULL,"
    " t INTEGER NOT NULL, v);"
    "CREATE TABLE telemetry(series INTEGER NOT NULL, ts INTEGER NOT NULL, t INTEGER NOT NULL,"
    " v, PRIMARY KEY(series, ts)) WITHOUT ROWID;"
    "CREATE TABLE latest(series INTEGER PRIMARY KEY, ts INTEGER NOT NULL,"
    " t INTEGER NOT NULL, v);"
    "PRAGMA user_version = 1;",

    /* v2: MQTT broker state and device commands (state.c) */
    "CREATE TABLE retained(topic TEXT PRIMARY KEY NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL);"
    "CREATE TABLE sessions(client_id TEXT PRIMARY KEY NOT NULL, subs TEXT NOT NULL);"
    "CREATE TABLE session_msgs(client_id TEXT NOT NULL, msg_id INTEGER NOT NULL,"
    " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,"
    " retain INTEGER NOT NULL, PRIMARY KEY(client_id, msg_id)) WITHOUT ROWID;"
    "CREATE TABLE commands(id TEXT PRIMARY KEY NOT NULL, device TEXT NOT NULL,"
    " name TEXT NOT NULL, params TEXT, status TEXT NOT NULL, reply TEXT,"
    " created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);"
    "CREATE INDEX commands_by_created ON commands(created_ms);"
    "PRAGMA user_version = 2;",
};

#define SQL_DEVICE_SERIES \
    "(SELECT s.id FROM series s JOIN device_ids d ON d.id = s.dev_id WHERE d.device = ?1)"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_DEVID_GET] = "SELECT id FROM device_ids WHERE device = ?1",
    [ST_DEVID_ADD] = "INSERT INTO device_ids(device) VALUES (?1)",
    [ST_SERIES_GET] = "SELECT id FROM series WHERE dev_id = ?1 AND key = ?2",
    [ST_SERIES_ADD] = "INSERT INTO series(dev_id, key) VALUES (?1, ?2)",
    [ST_LOG_ADD] = "INSERT INTO telemetry_log(series, ts, t, v) VALUES (?1, ?2, ?3, ?4)",
    [ST_DEV_PUT] =
        "INSERT INTO devices(id, token_hash, role, attrs, created_ms, last_seen_ms, protocol)"
        " VALUES (?1, ?2, coalesce(?3, 'device'), ?4, ?5, ?6, ?7)"
        " ON CONFLICT(id) DO UPDATE SET"
        " token_hash = coalesce(excluded.token_hash, devices.token_hash),"
        " role = excluded.role, attrs = excluded.attrs, created_ms = excluded.created_ms,"
        " last_seen_ms = excluded.last_seen_ms, protocol = excluded.protocol",
    [ST_DEV_TOUCH] =
        "UPDATE devices SET last_seen_ms = ?2, protocol = coalesce(?3, protocol) WHERE id = ?1",
    [ST_DEL_TELEMETRY] = "DELETE FROM telemetry WHERE series IN " SQL_DEVICE_SERIES,
    [ST_DEL_LOG] = "DELETE FROM telemetry_log WHERE series IN " SQL_DEVICE_SERIES,
    [ST_DEL_LATEST] = "DELETE FROM latest WHERE series IN " SQL_DEVICE_SERIES,
    [ST_DEL_SERIES] =
        "DELETE FROM series WHERE dev_id IN (SELECT id FROM device_ids WHERE device = ?1)",
    [ST_DEL_DEVID] = "DELETE FROM device_ids WHERE device = ?1",
    [ST_DEL_DEVICE] = "DELETE FROM devices WHERE id = ?1",
    /* Sorted by (series, ts) so the WITHOUT ROWID table is filled in key order; among
     * replays of one (series, ts) the newest log row (highest rowid) comes last and wins.
     * ?1 = retention cutoff (rows older are dropped on the way). */
    [ST_COMPACT_MOVE] =
        "INSERT OR REPLACE INTO telemetry(series, ts, t, v)"
        " SELECT series, ts, t, v FROM telemetry_log WHERE ts >= ?1"
        " ORDER BY series, ts, rowid",
    /* After the move, the newest row of each touched series is the main table's max(ts). */
    [ST_COMPACT_LATEST] =
        "INSERT INTO latest(series, ts, t, v)"
        " SELECT m.series, m.ts, m.t, m.v FROM (SELECT DISTINCT series FROM telemetry_log) AS l"
        " JOIN telemetry AS m ON m.series = l.series"
        " WHERE m.ts = (SELECT max(ts) FROM telemetry WHERE series = l.series)"
        " ON CONFLICT(series) DO UPDATE SET ts = excluded.ts, t = excluded.t, v = excluded.v"
        " WHERE excluded.ts >= latest.ts",
    [ST_COMPACT_CLEAR] = "DELETE FROM telemetry_log",
    [ST_RET_SERIES] = "SELECT id FROM series WHERE id > ?1 ORDER BY id LIMIT ?2",
    /* The ts of the (?3 + 1)-th oldest expired row: delete below it to stay in budget. */
    [ST_RET_BOUND] =
        "SELECT ts FROM telemetry WHERE series = ?1 AND ts < ?2 ORDER BY ts LIMIT 1 OFFSET ?3",
    [ST_RET_DELETE] = "DELETE FROM telemetry WHERE series = ?1 AND ts < ?2",
    [ST_RETAINED_PUT] =
        "INSERT OR REPLACE INTO retained(topic, payload, qos) VALUES (?1, ?2, ?3)",
    [ST_RETAINED_DEL] = "DELETE FROM retained WHERE topic = ?1",
    [ST_SESSION_PUT] =
        "INSERT INTO sessions(client_id, subs) VALUES (?1, ?2)"
        " ON CONFLICT(client_id) DO UPDATE SET subs = excluded.subs",
    [ST_SESSION_DEL] = "DELETE FROM sessions WHERE client_id = ?1",
    [ST_SESSION_MSGS_DEL] = "DELETE FROM session_msgs WHERE client_id = ?1",
    [ST_SESSION_MSG_PUT] =
        "INSERT OR REPLACE INTO session_msgs(client_id, msg_id, topic, payload, qos, retain)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_SESSION_MSG_DEL] = "DELETE FROM session_msgs WHERE client_id = ?1 AND msg_id = ?2",
    [ST_COMMAND_PUT] =
        "INSERT OR REPLACE INTO commands(id, device, name, params, status, reply, created_ms,"
        " updated_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
};

static const char SQL_LOAD_DEVICES[] =
    "SELECT id, token_hash, role, attrs, created_ms, last_seen_ms, protocol"
    " FROM devices ORDER BY id";

/* The latest table, overlaid with the newest log row of each series (the log row wins
 * when it is as new or newer: a replay of the same ts arrived later). */
static const char SQL_LOAD_LATEST[] =
    "WITH lognew AS MATERIALIZED ("
    "  SELECT series, ts, t, v FROM ("
    "   SELECT series, ts, t, v, row_number() OVER"
    "    (PARTITION BY series ORDER BY ts DESC, rowid DESC) AS rn FROM telemetry_log)"
    "  WHERE rn = 1),"
    " merged AS ("
    "  SELECT n.series, n.ts, n.t, n.v FROM lognew n LEFT JOIN latest l ON l.series = n.series"
    "   WHERE l.series IS NULL OR n.ts >= l.ts"
    "  UNION ALL"
    "  SELECT l.series, l.ts, l.t, l.v FROM latest l LEFT JOIN lognew n ON n.series = l.series"
    "   WHERE n.series IS NULL OR n.ts < l.ts)"
    " SELECT d.device, s.key, m.ts, m.t, m.v FROM merged m"
    " JOIN series s ON s.id = m.series JOIN device_ids d ON d.id = s.dev_id"
    " ORDER BY d.device, s.key";

static int exec_sql(sqlite3 *db, const char *sql)
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

static int user_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);

    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        *version = sqlite3_column_int(st, 0);
    else
        rc = SQLITE_ERROR;
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Brings the schema to STORE_SCHEMA_VERSION, one transaction per step. */
static int migrate(struct store *s)
{
    const int known = (int)(sizeof migrations / sizeof migrations[0]);
    int v;

    if (user_version(s->db, &v) != 0)
        return -1;
    if (v > known) {
        log_error("store: path=%s schema version %d is newer than this build (%d)", s->path, v,
                  known);
        return -1;
    }
    for (; v < known; v++) {
        if (exec_sql(s->db, "BEGIN IMMEDIATE") != 0)
            return -1;
        if (exec_sql(s->db, migrations[v]) != 0) {
            exec_sql(s->db, "ROLLBACK");
            return -1;
        }
        if (exec_sql(s->db, "COMMIT") != 0)
            return -1;
        log_info("store: path=%s migrated schema to version %d", s->path, v + 1);
    }
    return 0;
}

static int count_log_rows(struct store *s)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT count(*) FROM telemetry_log", -1, &st, NULL);

    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        s->log_rows = sqlite3_column_int64(st, 0);
    else
        rc = SQLITE_ERROR;
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -1;
}

static void apply_defaults(struct store_cfg *c)
{
    if (c->batch_rows == 0)
        c->batch_rows = STORE_DEFAULT_BATCH_ROWS;
    if (c->compact_rows == 0)
        c->compact_rows = STORE_DEFAULT_COMPACT_ROWS;
    if (c->queue_high_rows == 0)
        c->queue_high_rows = STORE_DEFAULT_HIGH_ROWS;
    if (c->queue_low_rows == 0 || c->queue_low_rows > c->queue_high_rows)
        c->queue_low_rows = c->queue_high_rows / 4;
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

    if (sqlite3_open_v2(s->path, &s->db, STORE_OPEN_FLAGS, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    if (exec_sql(s->db, "PRAGMA journal_mode=WAL") != 0 ||
        exec_sql(s->db, "PRAGMA synchronous=NORMAL") != 0 ||
        exec_sql(s->db, "PRAGMA cache_size=-32768") != 0 || /* 32 MiB for compaction */
        exec_sql(s->db, "PRAGMA temp_store=MEMORY") != 0 ||
        migrate(s) != 0 || count_log_rows(s) != 0)
        goto fail;
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK)
            goto fail;
    }

    if (store_writer_start(s) != 0) /* creates the uv handles, then the thread */
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

void store_close(struct store *s)
{
    if (!s)
        return;
    s->closing = 1;
    store_queries_finish(s);
    store_writer_stop(s); /* seals, drains, joins, fires the last on_durable */
    store_handles_close(s);
    store_cache_clear(&s->cache);
    free(s->cache.slots);
    free(s->scratch);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        log_error("store: close path=%s: %s", s->path, sqlite3_errmsg(s->db));
    if (s->have_pool_lock)
        store_pool_close(s);
    if (s->have_pool_cond)
        uv_cond_destroy(&s->pool_cond);
    if (s->have_pool_lock)
        uv_mutex_destroy(&s->pool_lock);
    if (s->have_cond)
        uv_cond_destroy(&s->cond);
    if (s->have_lock)
        uv_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

/* ---- device operations (loop thread builds, writer thread applies) ---- */

static char *dup_or_null(const char *p)
{
    return p ? xstrdup(p) : NULL;
}

void store_op_free(struct store_op *op)
{
    if (!op)
        return;
    free(op->id);
    free(op->token_hash);
    free(op->role);
    free(op->attrs_json);
    free(op->protocol);
    free(op->text);
    free(op->topic);
    free(op->device);
    free(op->params_json);
    free(op->status);
    free(op->reply_json);
    free(op->payload);
    free(op);
}

uint64_t store_put_device(struct store *s, const struct store_device *d)
{
    struct store_op *op = xcalloc(1, sizeof *op);

    op->kind = STORE_OP_PUT_DEVICE;
    op->id = xstrdup(d->id ? d->id : "");
    op->token_hash = dup_or_null(d->token_hash);
    op->role = dup_or_null(d->role);
    op->attrs_json = dup_or_null(d->attrs_json);
    op->protocol = dup_or_null(d->protocol);
    op->created_ms = d->created_ms;
    op->last_seen_ms = d->last_seen_ms;
    return store_submit_op(s, op);
}

uint64_t store_touch_device(struct store *s, const char *id, int64_t last_seen_ms,
                            const char *protocol)
{
    struct store_op *op = xcalloc(1, sizeof *op);

    op->kind = STORE_OP_TOUCH_DEVICE;
    op->id = xstrdup(id ? id : "");
    op->last_seen_ms = last_seen_ms;
    op->protocol = dup_or_null(protocol);
    return store_submit_op(s, op);
}

uint64_t store_delete_device(struct store *s, const char *id)
{
    struct store_op *op = xcalloc(1, sizeof *op);

    op->kind = STORE_OP_DELETE_DEVICE;
    op->id = xstrdup(id ? id : "");
    return store_submit_op(s, op);
}

uint64_t store_compact(struct store *s)
{
    struct store_op *op = xcalloc(1, sizeof *op);

    op->kind = STORE_OP_COMPACT;
    return store_submit_op(s, op);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *p)
{
    if (p)
        sqlite3_bind_text(st, i, p, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Steps a bound statement that returns no rows; SQLITE_OK or the error code. */
static int run_bound(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int delete_device(struct store *s, const char *id)
{
    static const enum store_stmt order[] = { ST_DEL_TELEMETRY, ST_DEL_LOG, ST_DEL_LATEST,
                                             ST_DEL_SERIES, ST_DEL_DEVID, ST_DEL_DEVICE };
    int rc;

    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        sqlite3_stmt *st = s->st[order[i]];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        rc = run_bound(st);
        if (rc != SQLITE_OK)
            return rc;
        if (order[i] == ST_DEL_LOG)
            s->tx_log_rows -= sqlite3_changes(s->db);
    }
    /* ids of the device's series are gone; the cache forgets them (deletes are rare) */
    store_cache_clear(&s->cache);
    return SQLITE_OK;
}

int store_apply_op(struct store *s, const struct store_op *op, int *compact)
{
    sqlite3_stmt *st;

    switch (op->kind) {
    case STORE_OP_PUT_DEVICE:
        st = s->st[ST_DEV_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        bind_text_or_null(st, 2, op->token_hash);
        bind_text_or_null(st, 3, op->role);
        bind_text_or_null(st, 4, op->attrs_json);
        sqlite3_bind_int64(st, 5, op->created_ms);
        sqlite3_bind_int64(st, 6, op->last_seen_ms);
        bind_text_or_null(st, 7, op->protocol);
        return run_bound(st);
    case STORE_OP_TOUCH_DEVICE:
        st = s->st[ST_DEV_TOUCH];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, op->last_seen_ms);
        bind_text_or_null(st, 3, op->protocol);
        return run_bound(st);
    case STORE_OP_DELETE_DEVICE:
        return delete_device(s, op->id);
    case STORE_OP_COMPACT:
        *compact = 1;
        return SQLITE_OK;
    default:
        return store_apply_state_op(s, op);
    }
}

/* ---- start-up loads (loop thread, blocking, on a pooled read-only connection) ---- */

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

int store_load_devices(struct store *s, store_device_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_DEVICES, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_device d = {
            .id = col_text(st, 0),
            .token_hash = col_text(st, 1),
            .role = col_text(st, 2),
            .attrs_json = col_text(st, 3),
            .created_ms = sqlite3_column_int64(st, 4),
            .last_seen_ms = sqlite3_column_int64(st, 5),
            .protocol = col_text(st, 6),
        };
        fn(ctx, &d);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "devices", st, NULL);
}

int store_load_latest(struct store *s, store_latest_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_LATEST, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct point p = { 0 };
        const char *device = col_text(st, 0);
        p.key = col_text(st, 1);
        p.ts_ms = sqlite3_column_int64(st, 2);
        p.type = (enum val_type)sqlite3_column_int(st, 3);
        switch (p.type) {
        case VAL_NUM:
            p.num = sqlite3_column_double(st, 4);
            break;
        case VAL_BOOL:
            p.num = sqlite3_column_int(st, 4) ? 1 : 0;
            break;
        case VAL_STR:
        case VAL_JSON:
            p.str = col_text(st, 4);
            p.str_len = (size_t)sqlite3_column_bytes(st, 4);
            if (!p.str)
                p.str = "";
            break;
        }
        if (device && p.key)
            fn(ctx, device, &p);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "latest", st, NULL);
}

int store_end_load(struct store *s, struct store_reader *r, int rc, const char *what,
                   sqlite3_stmt *a, sqlite3_stmt *b)
{
    if (rc != SQLITE_DONE)
        log_error("store: load %s: %s", what, sqlite3_errmsg(r->db));
    sqlite3_finalize(a);
    sqlite3_finalize(b);
    store_reader_put(s, r);
    return rc == SQLITE_DONE ? 0 : GW_ESTORE;
}

/* ---- counters and seams (loop thread) ---- */

uint64_t store_last_seq(const struct store *s)
{
    return s->last_seq;
}

uint64_t store_durable_seq(const struct store *s)
{
    return s->durable_seq;
}

size_t store_queued_rows(const struct store *s)
{
    return s->queued_rows;
}

void store_fail_next_commits(struct store *s, int n, int rc)
{
    uv_mutex_lock(&s->lock);
    s->fail_commits = n;
    s->fail_rc = rc ? rc : SQLITE_IOERR;
    uv_mutex_unlock(&s->lock);
}
