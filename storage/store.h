/* storage/store.h: Gale's SQLite storage.
 *
 * Threads: store_open/store_load_* run on the loop thread before the loop runs
 * (start-up may block). Afterwards the loop thread only calls the non-blocking
 * submit functions below; one writer thread owns the write connection and
 * commits sealed batches in order (group commit); queries run on libuv's work
 * pool with read-only connections.
 *
 * Group commit never sleeps: a write submitted while the writer is idle is sealed
 * into a batch at the end of the loop iteration that made it; writes arriving while
 * the writer is busy ride in the next batch (up to batch_rows), which goes the
 * moment the writer is done. No timer sits between a write and its commit.
 *
 * Ordering and durability: every write operation (telemetry, device records,
 * retained messages, sessions, commands, bridge outbox messages) gets the next store
 * sequence number.
 * Batches commit in sequence order, so durability is a single watermark: when
 * on_durable(ctx, upto, ok) fires on the loop thread, every operation with
 * seq <= upto is durable (ok = 1: in the ack log, synced under sync=full, or committed;
 * acklog.c) or has failed for good (ok = 0, after the writer's retries). A query sees
 * every write reported durable before it was asked.
 *
 * Layout: an ack stands on one segment row per batch (every point of the batch in a
 * compact binary form); off the ack path the writer moves the points into compressed
 * per-series chunks in slices of about a millisecond. Until then they are held in
 * memory as hot points, so queries merge chunks and hot points and see every acked
 * point; a replayed (device, key, ts) replaces, never duplicates. */
#ifndef GALE_STORE_H
#define GALE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/hist.h"
#include "gateway/msg.h"

struct store;
struct ticket;

/* What an ack (on_durable ok = 1) survives. */
enum store_sync {
    STORE_SYNC_FULL = 0,       /* a power cut: each commit reaches the disk (fsync) */
    STORE_SYNC_NORMAL,         /* a crash of the process, not of the machine */
};

struct store_cfg {
    const char *path;          /* database file */
    enum store_sync sync;      /* default STORE_SYNC_FULL */
    size_t batch_rows;         /* rows per transaction at most (default 1000) */
    /* Longest a write nobody awaits (QoS 0 telemetry, presence) waits in the open batch
     * for company (default 5). A write an ack waits on never waits: store_flush. */
    unsigned batch_delay_ms;
    /* Backpressure: ingest pauses when either measure of what is queued for the writer
     * (open batch + sealed batches not yet reported) is above its high mark, and
     * resumes when both are below their low marks. 0 = default. */
    size_t queue_high_bytes;   /* bytes of every queued write (default 64 MiB) */
    size_t queue_low_bytes;    /* (default high / 2) */
    size_t queue_high_rows;    /* telemetry rows (default 200000) */
    size_t queue_low_rows;     /* (default high / 4) */
    size_t hot_max_points;       /* move the log into the main table at this many rows */
    unsigned retention_days;   /* 0 = keep forever */
    size_t wal_max_bytes;      /* bound on the WAL file (default 64 MiB) */
    /* Disk full: a batch is tried again at most this often (default 500 ms), or sooner
     * once the file system shows full_probe_free more bytes free than at the last try;
     * with no batch to try, a one-page probe commit runs once full_probe_free bytes are
     * free (default 1 MiB). */
    unsigned full_probe_ms;
    uint64_t full_probe_free;
    /* sync=normal: acks wait for the SQLite commit instead of the ack log (acklog.c). */
    bool no_ack_log;
};

/* Fired on the loop thread. */
typedef void (*store_durable_fn)(void *ctx, uint64_t upto_seq, int ok);
/* Fired on the loop thread when the writer queue crosses high (paused = 1)
 * or low (paused = 0) water. */
typedef void (*store_pressure_fn)(void *ctx, int paused);

/* Fired on the loop thread when the disk fills (full = 1: a commit met SQLITE_FULL or an
 * I/O error with ENOSPC or EDQUOT) and when a commit succeeds again (full = 0). In order
 * with on_durable: the writes that failed because the disk was full are reported after
 * on_full(1) and before on_full(0). While full, the writer refuses batches without trying
 * them (on_durable ok = 0 at once) and tries one now and then (cfg.full_probe_ms,
 * cfg.full_probe_free). */
typedef void (*store_full_fn)(void *ctx, int full);

int store_open(uv_loop_t *loop, const struct store_cfg *cfg, struct store **out);
void store_set_callbacks(struct store *s, store_durable_fn on_durable,
                         store_pressure_fn on_pressure, void *ctx);
/* on_full gets the ctx of store_set_callbacks. */
void store_set_full_callback(struct store *s, store_full_fn on_full);
/* Seals the open batch, waits until the writer has committed everything,
 * stops the writer thread, closes handles and the database. Loop thread;
 * blocks. Safe on a half-built store. Fires no callbacks after it returns.
 * The uv handles are closed: run the loop once more (UV_RUN_NOWAIT or
 * until uv_loop_alive is 0) before uv_loop_close. */
void store_close(struct store *s);

/* ---- devices ---- */
struct store_device {
    const char *id;         /* device id */
    const char *token_hash; /* hex HMAC-SHA-256 of the token; NULL keeps the old one */
    const char *role;       /* "device" or an application role, e.g. "app" */
    const char *attrs_json; /* JSON object text of user attributes, or NULL */
    int64_t created_ms;
    int64_t last_seen_ms;   /* 0 = never */
    const char *protocol;   /* last protocol seen, or NULL */
};
typedef void (*store_device_fn)(void *ctx, const struct store_device *d);
/* Start-up only (blocks): calls fn for every stored device. */
int store_load_devices(struct store *s, store_device_fn fn, void *ctx);

/* Start-up only (blocks): calls fn for the newest value of every (device, key). */
typedef void (*store_latest_fn)(void *ctx, const char *device, const struct point *p);
int store_load_latest(struct store *s, store_latest_fn fn, void *ctx);

/* ---- writes: loop thread, never block; return the operation's seq ---- */
/* Appends every point of m (kind MSG_TELEMETRY, device set); takes a reference. A
 * message without points still gets a seq, durable with its batch. */
uint64_t store_append(struct store *s, struct msg *m);
/* The storage sink of the message bus (a bus_sink_fn; ctx is the struct store *):
 * appends a telemetry message (kind MSG_TELEMETRY, device set, npoints > 0) and adds
 * its seq to t (t may be NULL); any other message is not stored. */
void store_sink(void *ctx, struct msg *m, struct ticket *t);
/* Inserts or replaces a device row (all fields copied). */
uint64_t store_put_device(struct store *s, const struct store_device *d);
/* Updates presence only. */
uint64_t store_touch_device(struct store *s, const char *id, int64_t last_seen_ms,
                            const char *protocol);
/* Deletes a device and all of its telemetry. */
uint64_t store_delete_device(struct store *s, const char *id);
/* Deletes a device's record only: its telemetry stays (a device created again under the
 * same id sees it). */
uint64_t store_forget_device(struct store *s, const char *id);
/* True while a submitted write is not yet reported through on_durable (committed or
 * failed): what a shutdown waits for. */
bool store_pending(const struct store *s);
/* Someone waits for the writes submitted so far (an ack, a shutdown): the open batch is
 * sealed at the end of this loop iteration when the writer is idle, or the moment it is
 * done with the batch it holds, with no delay. Loop thread. */
void store_flush(struct store *s);
/* Telemetry rows queued for the writer (open batch + sealed batches not yet reported):
 * for metrics and the backpressure log. */
size_t store_queued(const struct store *s);
/* Bytes of every write queued for the writer (telemetry, device records, retained
 * messages, sessions, commands, outbox messages), as the high/low water marks count
 * them. */
size_t store_queued_bytes(const struct store *s);

/* The write-ahead log (checkpoint.c). */
struct store_wal_stats {
    uint64_t bytes;             /* size of the WAL file after the last commit */
    uint64_t checkpoints;       /* checkpoints that copied every frame of the WAL */
    uint64_t frames_copied;     /* WAL frames copied into the database file */
    uint64_t busy;              /* writer checkpoints a reader kept from completing */
};

/* What the writer holds and has done, for metrics. Any thread (reads under a lock). */
struct store_stats {
    size_t hot_points;          /* acked, not yet in chunks (held in memory) */
    size_t hot_bytes;           /* their memory */
    int64_t log_points;         /* points in segments not yet deleted (the replay) */
    uint64_t slices;            /* chunk slices committed */
    uint64_t points_chunked;    /* points written into chunks (merges count again) */
    uint64_t chunks_written;
    uint64_t slice_us_total;    /* writer time of those slices */
    uint64_t slice_us_max;      /* the longest one */
    struct hist commit_latency; /* writer time per committed batch, retries included */
    struct store_wal_stats wal;
};
void store_get_stats(struct store *s, struct store_stats *out);

/* Test seam: the next n commit attempts fail with SQLite result code rc, retries
 * included (SQLITE_FULL acts as a full disk: no retries, probes). Loop thread. */
void store_fail_next_commits(struct store *s, int n, int rc);
/* Test seam: the next n commit attempts of batches the ack log has acked fail with rc
 * (the writer retries them until they commit). Any thread. */
void store_fail_next_logged_commits(struct store *s, int n, int rc);

/* ---- reads: run on libuv's work pool, result on the loop thread ---- */
/* first/last: the value of the bucket's oldest/newest numeric point. */
enum store_agg { STORE_AGG_NONE = 0, STORE_AGG_AVG, STORE_AGG_MIN, STORE_AGG_MAX,
                 STORE_AGG_SUM, STORE_AGG_COUNT, STORE_AGG_FIRST, STORE_AGG_LAST };

/* A time zone as a list of UTC offsets: from utc_ms on (until the next span's utc_ms),
 * local time = UTC + offset_ms. Spans are sorted by utc_ms; the first one also covers
 * everything before it. Built on the loop thread (web/rest_telemetry.c) so that the
 * pool threads never touch TZ or localtime. */
struct store_tz_span {
    int64_t utc_ms;
    int64_t offset_ms;
};

struct store_query {
    char *device;          /* owned by the query */
    char **keys;           /* owned; NULL/nkeys=0 means every key of the device */
    size_t nkeys;
    int64_t from_ms, to_ms; /* inclusive range */
    size_t limit;          /* max points per key */
    int desc;              /* 1 = newest first */
    enum store_agg agg;
    int64_t interval_ms;   /* bucket width when agg != NONE */
    /* owned; NULL: buckets start at multiples of interval_ms since the epoch (UTC). Else
     * at multiples of interval_ms since 1970-01-01 00:00 in local time, so with a whole
     * number of days a bucket is a local calendar day (23 or 25 hours across DST). */
    struct store_tz_span *tz;
    size_t ntz;
};

/* The start (UTC epoch ms) of the bucket of q that holds ts_ms (q->interval_ms > 0). */
int64_t store_bucket_start(const struct store_query *q, int64_t ts_ms);
/* Where a query like q continues after a reply whose last point (raw) or bucket start
 * (aggregate) was last_ts_ms, in q's order: the next ms (raw), the next bucket's start
 * (ascending buckets) or the ms before the bucket (descending). The next page then holds
 * whole buckets only. */
int64_t store_query_resume(const struct store_query *q, int64_t last_ts_ms);

struct store_series {
    char *key;
    struct point *points;  /* points[i].key == key; str owned via the series */
    size_t npoints;
    int truncated;         /* 1 when more points matched than limit */
};

struct store_result {
    int rc;                /* 0 or GW_ESTORE */
    struct store_series *series;
    size_t nseries;
    /* private: storage for strings */
    char **strs;
    size_t nstrs;
};

/* Done callback runs on the loop thread; it owns res (free with store_result_free)
 * and q (free with store_query_free). */
typedef void (*store_query_fn)(void *ctx, struct store_query *q, struct store_result *res);
/* Takes ownership of q. */
int store_query_telemetry(struct store *s, struct store_query *q, store_query_fn fn, void *ctx);
void store_query_free(struct store_query *q);
void store_result_free(struct store_result *r);

/* ---- MQTT broker state: retained messages, persistent sessions, commands ----
 * Same ordered write stream as everything above (each returns its seq); loads are
 * start-up only (block). */

/* Sets the retained message of topic; payload_len 0 deletes it. Copies everything. */
uint64_t store_put_retained(struct store *s, const char *topic, const void *payload,
                            size_t payload_len, uint8_t qos);
typedef void (*store_retained_fn)(void *ctx, const char *topic, const void *payload,
                                  size_t payload_len, uint8_t qos);
int store_load_retained(struct store *s, store_retained_fn fn, void *ctx);

/* A persistent session (clean session 0): identity_json is the broker's record of who
 * owns it ({"user":..,"role":..}; opaque to the store), replaced whole. Its
 * subscriptions are rows of their own (store_put_session_sub), so changing one rewrites
 * nothing else. (Schema v3 moved the subscriptions of older {"subs":[...]} records, and
 * of bare subs arrays, into those rows.) */
uint64_t store_put_session(struct store *s, const char *client_id, const char *identity_json);
/* Deletes the session, its subscriptions and every message queued for it. */
uint64_t store_delete_session(struct store *s, const char *client_id);
/* Adds subscription filter of a persistent session, or sets the options of the one it
 * has: qos is its QoS (bits 0..1) and the subscriber's options above them (opaque here). */
uint64_t store_put_session_sub(struct store *s, const char *client_id, const char *filter,
                               uint64_t qos);
/* Deletes subscription filter of a session (nothing happens when there is none). */
uint64_t store_delete_session_sub(struct store *s, const char *client_id, const char *filter);
/* A QoS 1/2 message queued or in flight for a persistent session; msg_id is the
 * session's own increasing number (delivery order). The `retain` byte carries flags:
 * bit 0 retain, bit 1 released (PUBREC received), bit 2 sent. */
uint64_t store_put_session_msg(struct store *s, const char *client_id, uint64_t msg_id,
                               const char *topic, const void *payload, size_t payload_len,
                               uint8_t qos, uint8_t retain);
uint64_t store_delete_session_msg(struct store *s, const char *client_id, uint64_t msg_id);
typedef void (*store_session_fn)(void *ctx, const char *client_id, const char *identity_json);
/* Called for each subscription of a session (in filter order), after that session's
 * store_session_fn. */
typedef void (*store_session_sub_fn)(void *ctx, const char *client_id, const char *filter,
                                     uint64_t qos);
/* Called in msg_id order per session, after that session's subscriptions. */
typedef void (*store_session_msg_fn)(void *ctx, const char *client_id, uint64_t msg_id,
                                     const char *topic, const void *payload,
                                     size_t payload_len, uint8_t qos, uint8_t retain);
/* on_sub and on_msg may be NULL. */
int store_load_sessions(struct store *s, store_session_fn on_session,
                        store_session_sub_fn on_sub, store_session_msg_fn on_msg, void *ctx);

/* Commands sent to devices (REST -> MQTT/line), with their status history. */
struct store_command {
    const char *id;           /* command id */
    const char *device;
    const char *name;
    const char *params_json;  /* JSON value text or NULL */
    const char *status;       /* "queued" | "delivered" | "replied" | "expired" */
    const char *reply_json;   /* JSON value text or NULL */
    int64_t created_ms, updated_ms, expires_ms;
};
/* Inserts or replaces by id. */
uint64_t store_put_command(struct store *s, const struct store_command *c);
typedef void (*store_command_fn)(void *ctx, const struct store_command *c);
/* Start-up only: every stored command created at or after since_ms. */
int store_load_commands(struct store *s, int64_t since_ms, store_command_fn fn, void *ctx);

/* ---- bridge outbox: messages bound for an upstream broker ----
 * Table outbox(upstream, id, device, topic, payload, qos, ts), keyed by (upstream, id).
 * Puts and deletes are writes of the same ordered stream as everything above: each is
 * copied on submit, counted in store_queued_bytes, gets the next seq and commits in the
 * group commit of the loop turn that made it (with that turn's telemetry), retried and
 * reported through on_durable like the rest. Deleting a device leaves the outbox alone:
 * what the device was acked for still goes upstream. */

/* One outbox message (the same fields as the bridge's struct outbox_msg). */
struct store_outbox_msg {
    uint64_t id;            /* per upstream, 1..INT64_MAX, increasing (the caller assigns) */
    const char *device;     /* originating device id, "" when none */
    const char *topic;      /* the remote topic, exactly as sent upstream */
    const void *payload;    /* binary-safe; NULL in an index entry */
    size_t payload_len;     /* bytes in payload (index entry: the stored length) */
    uint8_t qos;            /* 0, 1 or 2 upstream */
    int64_t ts_ms;          /* when it entered the outbox (epoch ms) */
};
/* One message of store_load_outbox_index: m and its strings are borrowed for the call. */
typedef void (*store_outbox_fn)(void *ctx, const struct store_outbox_msg *m);
/* The answer of store_read_outbox, on the loop thread: rc 0 with n messages (n may be 0)
 * in ascending id order, or a GW_E* code with none. msgs and everything they point at
 * are valid during the call only. */
typedef void (*store_outbox_read_fn)(void *ctx, int rc, const struct store_outbox_msg *msgs,
                                     size_t n);

/* Loop thread, never blocks: stores m under upstream, replacing a stored message of the
 * same (upstream, id). Copies everything (device and topic NULL store ""). Returns the
 * write's seq. */
uint64_t store_put_outbox(struct store *s, const char *upstream, const struct store_outbox_msg *m);
/* Loop thread, never blocks: deletes the messages of upstream with
 * first_id <= id <= last_id (one statement; ids nobody stored are no error). Returns the
 * write's seq. */
uint64_t store_delete_outbox(struct store *s, const char *upstream, uint64_t first_id,
                             uint64_t last_id);
/* Start-up only (loop thread, blocks on a read-only connection): calls fn for every
 * stored message of upstream in ascending id order without reading its payload
 * (payload NULL, payload_len = its stored length). 0 or GW_ESTORE (logged). */
int store_load_outbox_index(struct store *s, const char *upstream, store_outbox_fn fn,
                            void *ctx);
/* Loop thread, never blocks: reads on libuv's work pool, with a read-only connection,
 * the committed messages of upstream with id > after_id in ascending id order: at most
 * max_msgs (> 0) of them, and no more once their payloads reach max_bytes (the first
 * message always comes, however large). fn runs on the loop thread with the answer;
 * a read still in flight at store_close is answered during store_close. Returns 0, or
 * GW_EINVAL / GW_ESTORE (closing) / a libuv code, and then fn is not called. */
int store_read_outbox(struct store *s, const char *upstream, uint64_t after_id, size_t max_msgs,
                      size_t max_bytes, store_outbox_read_fn fn, void *ctx);

/* ---- online backup (backup.c) ---- */
struct store_backup_result {
    int rc;                 /* 0, or GW_ESTORE with error set */
    int full;               /* the failure was a full disk (ENOSPC, EDQUOT, SQLITE_FULL) */
    int exists;             /* the failure was that path exists */
    const char *path;       /* the snapshot: "<dir>/<name>" (valid during the call) */
    uint64_t bytes;         /* its size */
    uint64_t pages;         /* database pages copied */
    int64_t started_ms;     /* epoch ms of the snapshot's moment (its read transaction) */
    double seconds;         /* the whole backup, start to synced file */
    char error[768];        /* what failed, for people */
};
/* Fired on the loop thread. */
typedef void (*store_backup_fn)(void *ctx, const struct store_backup_result *r);
/* Loop thread, never blocks: copies the database, as of one moment while writes go on,
 * into dir/name (dir is created, one level, mode 0700; name is a file name, no '/')
 * on libuv's work pool, and calls fn with the outcome. The file under its name is
 * complete and synced; an existing file is never replaced (exists = 1). Every write
 * acknowledged before the call is in the copy. One backup at a time: GW_EEXIST while
 * one runs; GW_EINVAL for a bad argument, GW_ESTORE once store_close began, or a libuv
 * code (fn is then not called). store_close stops a backup in flight (fn is not called). */
int store_backup(struct store *s, const char *dir, const char *name, store_backup_fn fn,
                 void *ctx);
/* ---- API keys (web/keys.h keeps them in memory) ---- */
struct store_api_key {
    const char *id;           /* the key's public id */
    const char *name;
    const char *role;         /* "admin" | "operator" | "read" */
    const char *devices_json; /* JSON array of device globs, or NULL: every device */
    const char *hash;         /* hex SHA-256 of the whole key; NULL for "bootstrap" */
    int64_t created_ms;
    int64_t revoked_ms;       /* 0 = in force */
};
/* Inserts or replaces by id (all fields copied). */
uint64_t store_put_api_key(struct store *s, const struct store_api_key *k);
/* Deletes the key's row. */
uint64_t store_delete_api_key(struct store *s, const char *id);
typedef void (*store_api_key_fn)(void *ctx, const struct store_api_key *k);
/* Start-up only (blocks): calls fn for every stored key, in creation order. */
int store_load_api_keys(struct store *s, store_api_key_fn fn, void *ctx);

#endif
