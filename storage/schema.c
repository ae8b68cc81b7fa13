/* storage/schema.c: the write connection: its pragmas, the schema and its
 * migrations (PRAGMA user_version), and the statement table prepared once.
 *
 * store_db_open runs on the loop thread in store_open, before the writer thread
 * starts; from then on the connection and its statements belong to the writer.
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
 * Schema v3 gives a persistent session's subscriptions a row each,
 * session_subs(PK(client_id, filter), qos) WITHOUT ROWID, so a SUBSCRIBE writes only the
 * filters it changed; the sessions row keeps the identity only (column subs renamed
 * identity).
 * Schema v4 replaces the row-per-point tiers (telemetry_log, telemetry, latest) with
 *   segments(id INTEGER PK AUTOINCREMENT, npoints, data)   one row per group commit
 *            (segment.h): what an ack stands on; deleted once its points are chunked
 *   chunks(id INTEGER PK, series, start_ts, end_ts, count, data)   the queryable form:
 *            up to ~STORE_CHUNK_POINTS points of one series (chunk.h), never
 *            overlapping another chunk of its series; UNIQUE(series, start_ts), and
 *            end_ts indexed for retention
 *   series.flushed_seg   every point of the series in segments <= it is in chunks
 * The conversion (convert_v3) folds the log into the main table as v3's compaction
 * did (the newest log row of a (series, ts) wins), encodes each series in chunks and
 * drops the old tables, in the migration's one transaction.
 * Schema v5 adds the bridge outbox (outbox.c): outbox(PK(upstream, id), device, topic,
 * payload, qos, ts) WITHOUT ROWID, the messages bound for each upstream broker in id
 * order (the migration from v4 only creates it).
 * Schema v6 adds the API keys (keys.c): api_keys(id PK, name, role, devices, hash,
 * created_ms, revoked_ms): hash is the hex SHA-256 of the whole key (NULL for the
 * configured key, id "bootstrap", whose row only records that it was revoked).
 * t (v1..v3) is enum val_type (0 number REAL, 1 bool INTEGER 0/1, 2 string TEXT,
 * 3 JSON TEXT), read only through store_read_value (sql.c).
 * device_ids is separate from devices: telemetry may arrive for a device that is not
 * provisioned (anonymous mode), and a dictionary id never depends on a TEXT rowid. */
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/log.h"
#include "storage/chunk.h"
#include "storage/store_int.h"

#define STORE_OPEN_FLAGS (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX)

/* migrations[v] takes a database from user_version v to v + 1 (v3 -> v4 with
 * convert_v3 and V4_DROP after it). */
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

    /* v3: one row per subscription. The subscriptions in v2's JSON records
     * ({"user":..,"role":..,"subs":[{"filter":"a/#","qos":1},...]}, or a bare subs array
     * with no identity) move into session_subs; entries without a text filter and a
     * numeric qos are dropped, as the v2 loader skipped them. json_type only ever sees
     * valid JSON: CASE tests its branches in order, WHERE terms may run in any. */
    "CREATE TABLE session_subs(client_id TEXT NOT NULL, filter TEXT NOT NULL,"
    " qos INTEGER NOT NULL, PRIMARY KEY(client_id, filter)) WITHOUT ROWID;"
    "INSERT OR REPLACE INTO session_subs(client_id, filter, qos)"
    " SELECT s.client_id, json_extract(e.value, '$.filter'),"
    " CAST(json_extract(e.value, '$.qos') AS INTEGER)"
    " FROM sessions AS s,"
    " json_each(CASE WHEN json_valid(s.subs) THEN s.subs ELSE '[]' END,"
    "  CASE WHEN NOT json_valid(s.subs) THEN '$'"
    "   WHEN json_type(s.subs) = 'object' THEN '$.subs' ELSE '$' END) AS e"
    " WHERE CASE WHEN e.type <> 'object' THEN 0"
    "  ELSE json_type(e.value, '$.filter') = 'text'"
    "   AND json_type(e.value, '$.qos') IN ('integer', 'real') END;"
    "ALTER TABLE sessions RENAME COLUMN subs TO identity;"
    "UPDATE sessions SET identity = CASE WHEN NOT json_valid(identity) THEN '{}'"
    " WHEN json_type(identity) = 'object' THEN json_remove(identity, '$.subs')"
    " ELSE '{}' END;"
    "PRAGMA user_version = 3;",

    /* v4: segments and chunks; convert_v3 moves the v3 rows, then V4_DROP runs */
    "CREATE TABLE segments(id INTEGER PRIMARY KEY AUTOINCREMENT, npoints INTEGER NOT NULL,"
    " data BLOB NOT NULL);"
    "CREATE TABLE chunks(id INTEGER PRIMARY KEY, series INTEGER NOT NULL,"
    " start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL, count INTEGER NOT NULL,"
    " data BLOB NOT NULL);"
    "CREATE UNIQUE INDEX chunks_by_series ON chunks(series, start_ts);"
    "CREATE INDEX chunks_by_end ON chunks(end_ts);"
    "ALTER TABLE series ADD COLUMN flushed_seg INTEGER NOT NULL DEFAULT 0;"
    "INSERT OR REPLACE INTO telemetry(series, ts, t, v)"
    " SELECT series, ts, t, v FROM telemetry_log ORDER BY series, ts, rowid;",

    /* v5: the bridge outbox (outbox.c) */
    "CREATE TABLE outbox(upstream TEXT NOT NULL, id INTEGER NOT NULL, device TEXT NOT NULL,"
    " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, ts INTEGER NOT NULL,"
    " PRIMARY KEY(upstream, id)) WITHOUT ROWID;"
    "PRAGMA user_version = 5;",

    /* v6: API keys (keys.c) */
    "CREATE TABLE api_keys(id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,"
    " role TEXT NOT NULL, devices TEXT, hash TEXT, created_ms INTEGER NOT NULL,"
    " revoked_ms INTEGER NOT NULL DEFAULT 0);"
    "PRAGMA user_version = 6;",

    /* v7: the last ack log record the database holds (acklog.c) */
    "CREATE TABLE log_state(lsn INTEGER NOT NULL);"
    "INSERT INTO log_state(lsn) VALUES (0);"
    "PRAGMA user_version = 7;",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "one migration per schema version");

static const char V4_DROP[] = "DROP TABLE telemetry_log; DROP TABLE telemetry; DROP TABLE latest;"
                              "PRAGMA user_version = 4;";

#define SQL_DEVICE_SERIES_SELECT \
    "SELECT s.id FROM series s JOIN device_ids d ON d.id = s.dev_id WHERE d.device = ?1"
#define SQL_DEVICE_SERIES "(" SQL_DEVICE_SERIES_SELECT ")"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_DEVID_GET] = "SELECT id FROM device_ids WHERE device = ?1",
    [ST_DEVID_ADD] = "INSERT INTO device_ids(device) VALUES (?1)",
    [ST_SERIES_GET] = "SELECT id FROM series WHERE dev_id = ?1 AND key = ?2",
    [ST_SERIES_ADD] = "INSERT INTO series(dev_id, key, flushed_seg) VALUES (?1, ?2, ?3)",
    [ST_SEGMENT_ADD] = "INSERT INTO segments(id, npoints, data) VALUES (?1, ?2, ?3)",
    [ST_DEV_PUT] =
        "INSERT INTO devices(id, token_hash, role, attrs, created_ms, last_seen_ms, protocol)"
        " VALUES (?1, ?2, coalesce(?3, 'device'), ?4, ?5, ?6, ?7)"
        " ON CONFLICT(id) DO UPDATE SET"
        " token_hash = coalesce(excluded.token_hash, devices.token_hash),"
        " role = excluded.role, attrs = excluded.attrs, created_ms = excluded.created_ms,"
        " last_seen_ms = excluded.last_seen_ms, protocol = excluded.protocol",
    [ST_DEV_TOUCH] =
        "UPDATE devices SET last_seen_ms = ?2, protocol = coalesce(?3, protocol) WHERE id = ?1",
    [ST_DEV_SERIES] = SQL_DEVICE_SERIES_SELECT,
    [ST_DEL_CHUNKS] = "DELETE FROM chunks WHERE series IN " SQL_DEVICE_SERIES,
    [ST_DEL_SERIES] =
        "DELETE FROM series WHERE dev_id IN (SELECT id FROM device_ids WHERE device = ?1)",
    [ST_DEL_DEVID] = "DELETE FROM device_ids WHERE device = ?1",
    [ST_DEL_DEVICE] = "DELETE FROM devices WHERE id = ?1",
    /* The chunks of series ?1 starting at or before ?2, newest first: the chunker walks
     * down while they overlap what it flushes, and takes the first one below too. */
    [ST_CHUNK_AROUND] = "SELECT id, start_ts, end_ts, count, data FROM chunks"
                        " WHERE series = ?1 AND start_ts <= ?2 ORDER BY start_ts DESC",
    [ST_CHUNK_DEL] = "DELETE FROM chunks WHERE id = ?1",
    [ST_CHUNK_ADD] =
        "INSERT INTO chunks(series, start_ts, end_ts, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_SERIES_FLUSHED] = "UPDATE series SET flushed_seg = ?2 WHERE id = ?1",
    [ST_SEGMENT_SUM] = "SELECT coalesce(sum(npoints), 0) FROM segments WHERE id < ?1",
    [ST_SEGMENT_DEL] = "DELETE FROM segments WHERE id < ?1",
    /* whole chunks only; bounded per slice */
    [ST_RET_DELETE] = "DELETE FROM chunks WHERE id IN"
                      " (SELECT id FROM chunks WHERE end_ts < ?1 LIMIT ?2)",
    [ST_RETAINED_PUT] =
        "INSERT OR REPLACE INTO retained(topic, payload, qos) VALUES (?1, ?2, ?3)",
    [ST_RETAINED_DEL] = "DELETE FROM retained WHERE topic = ?1",
    [ST_SESSION_PUT] =
        "INSERT INTO sessions(client_id, identity) VALUES (?1, ?2)"
        " ON CONFLICT(client_id) DO UPDATE SET identity = excluded.identity",
    [ST_SESSION_DEL] = "DELETE FROM sessions WHERE client_id = ?1",
    [ST_SESSION_SUBS_DEL] = "DELETE FROM session_subs WHERE client_id = ?1",
    [ST_SESSION_MSGS_DEL] = "DELETE FROM session_msgs WHERE client_id = ?1",
    [ST_SESSION_SUB_PUT] =
        "INSERT INTO session_subs(client_id, filter, qos) VALUES (?1, ?2, ?3)"
        " ON CONFLICT(client_id, filter) DO UPDATE SET qos = excluded.qos",
    [ST_SESSION_SUB_DEL] = "DELETE FROM session_subs WHERE client_id = ?1 AND filter = ?2",
    [ST_SESSION_MSG_PUT] =
        "INSERT OR REPLACE INTO session_msgs(client_id, msg_id, topic, payload, qos, retain)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_SESSION_MSG_DEL] = "DELETE FROM session_msgs WHERE client_id = ?1 AND msg_id = ?2",
    [ST_COMMAND_PUT] =
        "INSERT OR REPLACE INTO commands(id, device, name, params, status, reply, created_ms,"
        " updated_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_OUTBOX_PUT] =
        "INSERT OR REPLACE INTO outbox(upstream, id, device, topic, payload, qos, ts)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_OUTBOX_DEL] = "DELETE FROM outbox WHERE upstream = ?1 AND id BETWEEN ?2 AND ?3",
    [ST_API_KEY_PUT] =
        "INSERT OR REPLACE INTO api_keys(id, name, role, devices, hash, created_ms, revoked_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_API_KEY_DEL] = "DELETE FROM api_keys WHERE id = ?1",
    [ST_LOG_LSN] = "UPDATE log_state SET lsn = ?1",
};

/* v3 -> v4: every row of the (series, ts) table (the log is already folded in)
 * becomes part of a chunk. Inside the migration's transaction. */
static int convert_v3(struct store *s, int64_t *points)
{
    sqlite3_stmt *rd = NULL, *add = NULL;
    struct chunk_enc e;
    struct buf blob;
    int64_t cur = 0;
    int rc;

    chunk_enc_init(&e);
    buf_init(&blob);
    *points = 0;
    rc = sqlite3_prepare_v2(s->db, "SELECT series, ts, t, v FROM telemetry ORDER BY series, ts",
                            -1, &rd, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->db,
                                "INSERT INTO chunks(series, start_ts, end_ts, count, data)"
                                " VALUES (?1, ?2, ?3, ?4, ?5)",
                                -1, &add, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(rd)) == SQLITE_ROW) {
        int64_t sid = sqlite3_column_int64(rd, 0);
        struct point p = { 0 };
        int added;

        p.ts_ms = sqlite3_column_int64(rd, 1);
        rc = store_read_value(rd, 2, &p);
        if (rc == SQLITE_MISMATCH) {
            rc = SQLITE_OK; /* logged by store_read_value; v3 never served it either */
            continue;
        }
        if (rc != SQLITE_OK)
            break;
        if (sid != cur || e.stats.count >= STORE_CHUNK_POINTS)
            rc = store_write_chunk(add, cur, &e, &blob);
        cur = sid;
        added = rc == SQLITE_OK ? chunk_enc_add(&e, &p) : 0;
        if (added == GW_ELIMIT) { /* the texts filled the chunk */
            rc = store_write_chunk(add, cur, &e, &blob);
            added = rc == SQLITE_OK ? chunk_enc_add(&e, &p) : 0;
        }
        if (added != 0)
            log_warn("store: migration skipped a value of series=%lld ts=%lld", (long long)sid,
                     (long long)p.ts_ms);
        else if (rc == SQLITE_OK)
            (*points)++;
    }
    if (rc == SQLITE_DONE)
        rc = store_write_chunk(add, cur, &e, &blob);
    sqlite3_finalize(rd);
    sqlite3_finalize(add);
    chunk_enc_fini(&e);
    buf_fini(&blob);
    return rc;
}

/* Brings the schema to STORE_SCHEMA_VERSION, one transaction per step. */
static int migrate(struct store *s)
{
    const int known = STORE_SCHEMA_VERSION;
    int64_t v;
    int fresh;

    if (store_get_int64(s->db, "PRAGMA user_version", &v) != SQLITE_OK)
        return -1;
    if (v > known) {
        log_error("store: path=%s schema version %lld is newer than this build knows (%d);"
                  " run a newer gale on it", s->path, (long long)v, known);
        return -1;
    }
    fresh = v == 0; /* a new file: say so once, not once per step */
    for (; v < known; v++) {
        if (store_exec(s->db, "BEGIN IMMEDIATE") != 0)
            return -1;
        if (store_exec(s->db, migrations[v]) != 0) {
            store_exec(s->db, "ROLLBACK");
            return -1;
        }
        if (v == 3) {
            uint64_t t0 = gw_mono_ms();
            int64_t points = 0;
            int rc = convert_v3(s, &points);

            if (rc != SQLITE_OK || store_exec(s->db, V4_DROP) != 0) {
                log_error("store: path=%s converting rows into chunks failed: %s", s->path,
                          store_errmsg(s->db, rc));
                store_exec(s->db, "ROLLBACK");
                return -1;
            }
            if (!fresh)
                log_info("store: path=%s converted points=%lld into chunks in ms=%llu", s->path,
                         (long long)points, (unsigned long long)(gw_mono_ms() - t0));
        }
        if (store_exec(s->db, "COMMIT") != 0)
            return -1;
        if (!fresh)
            log_info("store: path=%s migrated schema to version %lld", s->path, (long long)v + 1);
    }
    if (fresh)
        log_info("store: path=%s created schema version %d", s->path, known);
    return 0;
}

const char *store_migration_sql(int v)
{
    return v >= 0 && v < STORE_SCHEMA_VERSION ? migrations[v] : NULL;
}

int store_db_open(struct store *s)
{
    /* In WAL mode FULL syncs the log at every commit (the commit survives a power
     * cut); NORMAL only at checkpoints (a commit survives a crash of the process). */
    const char *sync =
        s->cfg.sync == STORE_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL";

    if (sqlite3_open_v2(s->path, &s->db, STORE_OPEN_FLAGS, NULL) != SQLITE_OK)
        return -1;
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    if (store_exec(s->db, "PRAGMA journal_mode=WAL") != 0 || store_exec(s->db, sync) != 0 ||
        store_exec(s->db, "PRAGMA cache_size=-32768") != 0 || /* 32 MiB */
        store_exec(s->db, "PRAGMA temp_store=MEMORY") != 0 ||
        /* Debian builds SQLite with secure_delete on: every deleted segment would be
         * written again as zeros, through the WAL (a device delete still zeroes its
         * chunks, devices.c) */
        store_exec(s->db, "PRAGMA secure_delete=FAST") != 0 || migrate(s) != 0)
        return -1;
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK)
            return -1;
    }
    return 0;
}

void store_db_close(struct store *s)
{
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        log_error("store: close path=%s: %s", s->path, sqlite3_errmsg(s->db));
    s->db = NULL;
}
