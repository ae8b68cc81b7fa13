/* storage/store_int.h: shared inside storage/ and its unit tests only (store.h is the
 * public contract). Holds struct store, the batch and operation records that travel
 * from the loop thread to the writer thread, the write connection's statement table,
 * the points not yet chunked, the functions the storage files call in each other and
 * the test seams.
 *
 * Calls between the storage files go one way only: a file calls only files listed
 * below it (batch.c, hot.c and sql.c call nothing else in storage/):
 *   store.c      open/close, the bus sink, the counters the loop reads
 *   writer.c     the writer thread: commits batches as segments, runs chunk slices
 *   checkpoint.c the WAL bound: the checkpointer thread, the writer's own checkpoint
 *   chunker.c    chunk slices (segments -> per-series chunks), retention, start-up replay
 *   devices.c    device records         state.c  broker state and commands
 *   outbox.c     the bridge outbox (also its reads on the work pool)
 *   backup.c     online backups (a read-only connection on the work pool)
 *                (build ops on the loop, apply them on the writer, start-up loads)
 *   batch.c      loop side of the hand-off: ops, the open batch, sealing, done reports
 *   schema.c     the write connection: pragmas, migrations, prepared statements
 *   query.c      read-only connections: the pool, telemetry queries, the latest load
 *   hot.c        the points acked but not yet chunked, per series (writer + readers)
 *   sql.c        SQL helpers and the one value <-> (t, v) column mapping
 * The start-up loads in devices.c, state.c and outbox.c, and the outbox reads, borrow
 * query.c's reader pool; the codecs (chunk.c, segment.c) are a library of their own
 * below all of these.
 *
 * Who touches what: fields under "loop thread" are read and written only on the loop
 * thread; "lock" fields only with s->lock held; "writer thread" fields only on the
 * writer thread once it runs (store_open fills them before starting it, store_close
 * reads them after joining it); the reader pool is guarded by s->pool_lock; the hot
 * points are changed by the writer with s->hot_lock held and read by queries with it
 * held (the writer reads them without it: nobody else changes them). */
#ifndef GALE_STORE_INT_H
#define GALE_STORE_INT_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "storage/store.h"

#define STORE_SCHEMA_VERSION 7          /* PRAGMA user_version after migrations */
#define STORE_COMMIT_TRIES 4            /* a batch is tried this often: first + 3 retries */
#define STORE_RETRY_BASE_MS 50          /* backoff before retry i: 50, 100, 200 ms */
#define STORE_BUSY_TIMEOUT_MS 5000      /* sqlite3_busy_timeout on every connection */
#define STORE_RETENTION_PERIOD_MS 60000 /* start a retention sweep at most this often */
#define STORE_RETENTION_PASS_CHUNKS 2000   /* chunks deleted per chunk slice, at most */
#define STORE_CHUNK_POINTS 1000         /* points per chunk the chunker aims at */
#define STORE_CHUNK_MIN 128             /* a smaller chunk is merged into by the next flush */
#define STORE_SLICE_US 1000             /* writer time one chunk slice may take (then commit) */
#define STORE_SLICE_MAX_POINTS 16384    /* hot points one slice chunks, at most (+ one series) */
#define STORE_CHUNK_RETRY_MS 1000       /* after a failed slice, wait this long */
#define STORE_FULL_PROBE_MS 500         /* default cfg.full_probe_ms */
#define STORE_FULL_PROBE_FREE (1u << 20) /* default cfg.full_probe_free */
#define STORE_HOT_BYTES_PER_POINT 64    /* hot bytes allowed per hot_max_points point */
#define STORE_CKPT_PAGES 1000           /* WAL frames that wake the checkpointer, at most */
#define STORE_WAL_WAIT_MS 250           /* the writer's checkpoint waits this long for readers */
#define STORE_WAL_RETRY_MS 1000         /* ... and after failing, tries again this much later */
#define STORE_SNAPSHOT_MAX_MS 200       /* a query renews its read snapshot this often */
#define STORE_SERIES_CACHE_MAX (1u << 20)  /* cached (device, key) ids before a reset */
#define STORE_POOL_MAX 4                /* idle read-only connections kept */
/* A batch the loop commits itself (sync=normal, writer idle: store_commit_inline) holds at
 * most this many rows and bytes: a commit into the page cache of that size takes tens of
 * microseconds; a larger one goes to the writer thread. */
#define STORE_INLINE_ROWS 128
#define STORE_INLINE_BYTES (512u << 10)
/* The ack log (acklog.c): a file is closed at this size and a new one started. */
#define STORE_LOG_FILE_BYTES (4u << 20)
#define STORE_LOG_RETRY_MAX_MS 1000     /* a logged batch's commit is retried at least this often */
#define STORE_DEFAULT_LIMIT 1000        /* query limit 0 means this */
#define STORE_MAX_LIMIT 1000000         /* larger query limits are clamped to this */

/* Defaults for zero fields of struct store_cfg (same values as config.c). */
#define STORE_DEFAULT_BATCH_ROWS 10000
#define STORE_DEFAULT_HIGH_ROWS 200000
#define STORE_DEFAULT_HIGH_BYTES (64u << 20)
#define STORE_DEFAULT_HOT_MAX_POINTS 1000000
#define STORE_DEFAULT_WAL_MAX_BYTES (64u << 20)

enum store_op_kind {
    STORE_OP_PUT_DEVICE = 0,
    STORE_OP_TOUCH_DEVICE,
    STORE_OP_DELETE_DEVICE,
    STORE_OP_FORGET_DEVICE,   /* the record only; its telemetry stays */
    STORE_OP_COMPACT, /* chunk every hot point + retention pass after the batch commits */
    /* broker state and commands (state.c) */
    STORE_OP_PUT_RETAINED,      /* payload_len 0 deletes */
    STORE_OP_PUT_SESSION,
    STORE_OP_DELETE_SESSION,    /* with its subscriptions and messages */
    STORE_OP_PUT_SESSION_SUB,
    STORE_OP_DELETE_SESSION_SUB,
    STORE_OP_PUT_SESSION_MSG,
    STORE_OP_DELETE_SESSION_MSG,
    STORE_OP_PUT_COMMAND,
    /* the bridge outbox (outbox.c) */
    STORE_OP_PUT_OUTBOX,        /* replaces a message of the same (upstream, id) */
    STORE_OP_DELETE_OUTBOX,     /* the range msg_id..last_id */
    /* API keys (keys.c) */
    STORE_OP_PUT_API_KEY,       /* inserts or replaces */
    STORE_OP_DELETE_API_KEY,
};

/* A write other than telemetry, in the same ordered stream. Every pointer is owned
 * (or NULL); which fields a kind uses is said on the right. */
struct store_op {
    enum store_op_kind kind;
    char *id;           /* device id | retained topic | session client id | command id |
                         * outbox upstream; "" for STORE_OP_COMPACT */
    char *token_hash;   /* device put: NULL keeps the old hash */
    char *role;         /* device put */
    char *attrs_json;   /* device put */
    char *protocol;     /* device put / touch (touch: NULL keeps the old one) */
    char *text;         /* session: identity JSON | command: name */
    char *topic;        /* session msg / outbox: topic | session sub: filter */
    char *device;       /* command / outbox */
    char *params_json;  /* command */
    char *status;       /* command */
    char *reply_json;   /* command */
    uint8_t *payload;   /* retained / session msg / outbox */
    size_t payload_len; /* bytes in payload */
    uint64_t msg_id;    /* session msg | outbox: id (delete: first id of the range) |
                         * session sub: its qos and options */
    uint64_t last_id;   /* outbox delete: last id of the range */
    uint8_t qos;        /* retained / session msg / session sub / outbox */
    uint8_t retain;     /* session msg */
    int64_t created_ms; /* device / command / outbox (its ts), epoch ms */
    int64_t last_seen_ms; /* device (0 = never) | command: updated_ms */
    int64_t expires_ms; /* command, epoch ms */
};

/* One entry of a batch: exactly one of m and op is set. */
struct store_item {
    struct msg *m;              /* a reference, released on the writer thread */
    struct store_op *op;        /* owned */
};

/* A group of operations committed in one transaction. Built on the loop thread,
 * owned by the writer from the todo queue on, back on the loop via the done queue. */
struct store_batch {
    struct store_batch *next;   /* todo / done queue link */
    struct store_item *items;   /* in seq order; freed by the writer after commit */
    size_t nitems, cap;
    size_t nrows;               /* telemetry points in items (counted in queued_rows) */
    size_t nbytes;              /* memory its items hold (counted in queued_bytes) */
    uint64_t last_seq;          /* every seq <= last_seq not in an earlier batch is here */
    int ok;                     /* set by the writer: 1 committed, 0 failed for good */
    int full;                   /* set by the writer: the disk was full after this batch */
    int awaited;                /* an ack waits on a write here (store_flush): no delay */
    int compact;                /* holds a STORE_OP_COMPACT (never committed inline) */
    size_t nlogged;             /* items[0..nlogged) are in the ack log (loop thread) */
    uint64_t lsn;               /* the ack log's record holding items[nlogged - 1], or 0 */
    int unlogged;               /* sealed with items not in the ack log */
};

/* The ack log (acklog.c). Loop thread after store_open. */
struct store_log_file {
    uint64_t no;                /* "<path>-ack.<no>" */
    uint64_t last_lsn;          /* its last record (0: none) */
};
struct store_log {
    int on;                     /* sync=normal and the log opened */
    int fd;                     /* the file being appended to, or -1 */
    uint64_t no;                /* its number (the newest file's) */
    uint64_t size;              /* its bytes */
    uint64_t cur_last_lsn;      /* its last record */
    struct store_log_file *files; /* closed files not yet deleted, oldest first */
    size_t nfiles, cap;
    uint64_t next_lsn;          /* the next record's */
    uint64_t last_lsn;          /* the last record written */
    uint64_t committed_lsn;     /* every record up to it is in SQLite */
    uint64_t file_bytes;        /* a file is closed at this size (STORE_LOG_FILE_BYTES) */
    uint64_t retry_ms;          /* after a failed write: not used before this */
    int failed_logged;          /* the failure episode is logged */
    int space_ok;               /* the file system had room at the last look */
    uint64_t space_checked_ms;  /* monotonic ms of that look */
    uint64_t records, bytes, failures; /* counters */
    struct buf rec;             /* the record being written */
    /* sync=full: acks wait for the syncer thread's fdatasync of the log (one per round,
     * covering every record written before the round began: group commit). sync_lock
     * guards the fields below it. */
    int sync;                   /* read-only after store_log_open: sync=full, a syncer */
    int sync_started;           /* its thread runs */
    uv_thread_t sync_thread;
    uv_mutex_t sync_lock;
    uv_cond_t sync_cond;
    int sync_fd;                /* the file records go to now, or -1 */
    int *retired;               /* files closed by the loop: synced, then closed */
    size_t nretired, retired_cap;
    int sync_dir;               /* a new file: the directory is synced too */
    uint64_t sync_want;         /* writes up to this seq are in the log, to be synced */
    uint64_t sync_done;         /* ... and up to this one synced */
    int sync_err;               /* errno of a failed sync, for the loop (then 0) */
    int sync_stop;
};

/* A read (query, outbox read, backup) waiting for the writer to commit what the ack log
 * acked before it arrived (store_queue_read). */
struct store_gated {
    uv_work_t *w;
    uv_work_cb work;
    uv_after_work_cb after;
    uint64_t lsn;
};

/* uv handles live apart from struct store: store_close frees the store at once, the
 * handles are freed by their close callbacks when the loop runs next. */
struct store_handles {
    uv_prepare_t prepare;       /* seals an open batch before the loop blocks ... */
    uv_check_t check;           /* ... and at the end of the iteration that filled it */
    uv_timer_t delay;           /* seals a batch nobody awaits after cfg.batch_delay_ms */
    uv_async_t async;           /* writer -> loop: the done queue is not empty */
    int nopen;                  /* initialised handles not yet closed */
    struct store *s;            /* the store, for the callbacks */
};

/* A read-only connection with its prepared statements (query.c). */
struct store_reader {
    sqlite3 *db;
    sqlite3_stmt *dev;          /* device name -> dev_id */
    sqlite3_stmt *series_one;   /* (dev_id, key) -> series id */
    sqlite3_stmt *series_all;   /* dev_id -> every (series id, key) */
    sqlite3_stmt *chunks_asc;   /* chunks of a series overlapping a range, oldest first */
    sqlite3_stmt *chunks_desc;  /* ... newest first (the caller stops below the range) */
};

/* Writer-thread cache of the device and series dictionaries: byte key -> id. */
struct store_cache_slot {
    uint64_t hash;
    char *key;                  /* owned; NULL = empty slot */
    size_t len;                 /* bytes in key */
    int64_t id;
};
struct store_cache {
    struct store_cache_slot *slots;
    size_t cap;                 /* power of two, 0 before first use */
    size_t count;
};

/* A point acked but not yet chunked. */
struct hot_point {
    int64_t ts;
    union {
        double num;             /* VAL_NUM; VAL_BOOL 0 or 1 */
        struct {
            uint32_t off, len;  /* VAL_STR / VAL_JSON: the text in the series' strs */
        } text;
    } v;
    uint8_t type;               /* enum val_type */
};

/* The hot points of one series: sorted by ts, one per ts (a later write of the same
 * ts replaced the earlier one in place). */
struct hot_series {
    int64_t sid;
    struct hot_point *pts;
    size_t n, cap;
    struct buf strs;            /* texts (a replaced text stays until the flush) */
    int64_t first_seg;          /* oldest segment holding one of these points */
    struct list_link age;       /* in hot.by_age while n > 0: oldest first_seg first */
    struct list_link ready;     /* in hot.ready while n >= STORE_CHUNK_POINTS */
    uint8_t in_ready;
    uint8_t flushing;           /* chunked by the slice being committed */
};

struct hot {
    struct hot_series **tab;    /* by series id; NULL = no hot points */
    size_t cap;                 /* entries in tab */
    struct list by_age, ready;
    size_t npoints;             /* hot points of every series */
    size_t nbytes;              /* their memory: points and texts */
};

/* Statements of the write connection, prepared once by store_db_open (schema.c). */
enum store_stmt {
    ST_BEGIN = 0, ST_COMMIT, ST_ROLLBACK,
    ST_DEVID_GET, ST_DEVID_ADD, ST_SERIES_GET, ST_SERIES_ADD, ST_SEGMENT_ADD,
    ST_DEV_PUT, ST_DEV_TOUCH, ST_DEV_SERIES,
    ST_DEL_CHUNKS, ST_DEL_SERIES, ST_DEL_DEVID, ST_DEL_DEVICE,
    ST_CHUNK_AROUND, ST_CHUNK_DEL, ST_CHUNK_ADD, ST_SERIES_FLUSHED,
    ST_SEGMENT_SUM, ST_SEGMENT_DEL, ST_RET_DELETE,
    ST_RETAINED_PUT, ST_RETAINED_DEL, ST_SESSION_PUT, ST_SESSION_DEL, ST_SESSION_SUBS_DEL,
    ST_SESSION_MSGS_DEL, ST_SESSION_SUB_PUT, ST_SESSION_SUB_DEL, ST_SESSION_MSG_PUT,
    ST_SESSION_MSG_DEL, ST_COMMAND_PUT, ST_OUTBOX_PUT, ST_OUTBOX_DEL,
    ST_API_KEY_PUT, ST_API_KEY_DEL, ST_LOG_LSN,
    ST_COUNT
};

struct store {
    /* read-only after store_open */
    uv_loop_t *loop;
    struct store_cfg cfg;       /* copy with defaults applied; cfg.path points at path */
    char *path;                 /* owned copy of the database path */
    struct store_handles *h;    /* NULL until created */

    /* loop thread */
    store_durable_fn on_durable;
    store_pressure_fn on_pressure;
    store_full_fn on_full;
    void *ctx;
    struct store_batch *open;   /* batch being filled, or NULL */
    size_t nsealed;             /* batches sealed and not yet reported: writer busy if > 0 */
    int sealer_on;              /* prepare and check handles started */
    int delay_on;               /* the delay timer runs for the open batch */
    uint64_t last_seq;          /* seq of the last submitted operation */
    uint64_t durable_seq;       /* seq up to which the outcome has been reported */
    size_t queued_rows;         /* points submitted and not yet reported done */
    size_t queued_bytes;        /* bytes of the writes submitted and not yet reported */
    int paused;                 /* 1 after on_pressure(1) until on_pressure(0) */
    int loop_ref;               /* async handle ref'd: operations await durability */
    int closing;                /* store_close has started */
    int full_reported;          /* the last on_full said full */
    struct list queries;        /* queries in flight (struct query_req) */
    struct list outbox_reads;   /* outbox reads in flight (struct outbox_req, outbox.c) */
    struct store_backup_req *backup; /* the backup in flight (backup.c), or NULL */
    struct store_log log;       /* the ack log (acklog.c) */
    size_t unlogged_out;        /* sealed batches with writes not in the log, not reported */
    uint64_t log_unreported;    /* writes up to this seq are in the log, reported at the end
                                 * of the iteration */
    struct store_gated *gated;  /* reads waiting for committed_lsn (store_queue_read) */
    size_t ngated, gated_cap;

    /* s->lock: the two queues, the stop flag and the commit-failure seam */
    uv_mutex_t lock;
    uv_cond_t cond;             /* wakes the writer: todo not empty or stopping */
    struct store_batch *todo_head, *todo_tail;  /* sealed, waiting for the writer */
    struct store_batch *done_head, *done_tail;  /* committed or failed, for the loop */
    int stopping;               /* writer: drain todo, then exit */
    int fail_commits;           /* test seam: commits left to fail (batches whose acks wait
                                 * for the commit; while it is armed the ack log acks nothing) */
    int fail_logged;            /* test seam: commits of batches the ack log acked, to fail */
    int writer_kick;            /* the loop committed inline: chunk slices or the WAL bound
                                 * may be due (the writer looks) */
    int fail_rc;                /* ... with this SQLite result code */
    int log_stuck;              /* a batch the ack log acked failed to commit: reads do not
                                 * wait for it (the writer retries it) */
    int full_state;             /* the writer's s->full as last published (for on_full) */

    /* s->hot_lock: the points acked and not yet chunked (hot.c) */
    uv_mutex_t hot_lock;
    struct hot hot;
    struct store_stats stats;   /* the writer's counters (hot_* filled on read) */

    /* s->pool_lock: idle read-only connections, query completion */
    uv_mutex_t pool_lock;
    uv_cond_t pool_cond;        /* a query's work callback has finished */
    struct store_reader *pool[STORE_POOL_MAX];
    size_t npool;

    /* read-only after store_open (a test seam changes it before any query) */
    unsigned snapshot_ms;       /* a query renews its read snapshot this often */
    uint64_t snapshot_renewals; /* atomic: snapshots renewed (for tests) */

    /* writer thread, and the loop while it commits inline: s->db_lock guards the write
     * connection and everything in this section and the next. The writer holds it around
     * each batch, chunk slice, probe and checkpoint of its own; the loop only ever tries it
     * (uv_mutex_trylock), so it never waits for SQLite (store_commit_inline). */
    uv_mutex_t db_lock;
    struct batch_ctx *inline_bc; /* the loop's batch context (writer.c) */
    sqlite3 *db;                /* the write connection */
    sqlite3_stmt *st[ST_COUNT];
    struct store_cache cache;   /* device and series ids */
    char *scratch;              /* cache key buffer */
    size_t scratch_cap;
    struct buf segbuf;          /* the segment being built for a batch */
    int64_t seg_last;           /* id of the newest committed segment (0: none yet) */
    int64_t tx_seg;             /* id of the segment the open transaction builds */
    int64_t seg_floor;          /* every segment below this id is deleted */
    int64_t log_points;         /* points in the segments not yet deleted */
    int force_chunk;            /* chunk every hot point (STORE_OP_COMPACT) */
    uint64_t chunk_retry_ms;    /* after a failed slice: none before this monotonic ms */
    uint64_t failed_batches;    /* batches failed for good since the last success */
    /* batches the ack log acked whose commit failed, in order: tried again until they
     * commit (writer.c); later batches wait behind them or are refused */
    struct store_batch *stuck_head, *stuck_tail;
    uint64_t stuck_retry_ms;    /* monotonic ms of the next try */
    unsigned stuck_delay_ms;    /* the back-off after the next failure */
    uint64_t stuck_tries;       /* tries in this episode */
    /* Disk full (SQLITE_FULL, or an I/O error with ENOSPC/EDQUOT): no retries; a batch
     * is refused untried until full_probe_ms or until the file system gained
     * cfg.full_probe_free, then the next one is tried (the probe); chunk slices wait.
     * A commit that succeeds ends it. */
    int full;
    uint64_t full_probe_ms;     /* monotonic ms: the next try while full */
    uint64_t full_since_ms;     /* monotonic ms: when it began */
    uint64_t full_refused;      /* batches refused in this episode */
    uint64_t full_free;         /* bytes free (statvfs) at the last try that failed */
    int last_full;              /* the last failed commit or slice met a full disk */
    char last_err[192];         /* ... and what SQLite said (rc, message, errno) */
    int ret_behind;             /* retention: last pass stopped at its budget */
    uint64_t ret_last_ms;       /* retention: monotonic ms of the last full sweep's end */

    /* checkpoints (checkpoint.c). The checkpointer thread owns ckpt_db; s->ckpt_lock
     * guards the two flags and the WAL counters; s->ckpt_run is held around every
     * checkpoint of either connection (the checkpointer's and the writer's). */
    sqlite3 *ckpt_db;
    char *wal_path;             /* path + "-wal" (owned) */
    uv_mutex_t ckpt_lock;
    uv_cond_t ckpt_cond;
    uv_mutex_t ckpt_run;
    int ckpt_wanted, ckpt_stop;
    uv_thread_t ckpt_thread;
    int wal_wake_frames;        /* read-only after start: frames that wake the checkpointer */
    int wal_high_frames;        /* ... at which the writer completes a checkpoint itself */
    struct store_wal_stats wal; /* s->ckpt_lock */
    uint64_t wal_gen;           /* s->ckpt_lock: the log restarted this often (hook) */
    uint64_t wal_seen_gen;      /* s->ckpt_lock: generation of wal_seen_copied */
    int64_t wal_seen_copied;    /* s->ckpt_lock: frames known copied in that generation */
    int wal_frames;             /* writer thread (the WAL hook): frames after the last commit */
    /* sync=full with the ack log: a batch the log holds whole commits with
     * synchronous=NORMAL (the log's sync is its durability), so a log file may go only once
     * a checkpoint has copied its records into the database file and synced it. */
    int db_sync_normal;         /* s->db_lock: the write connection's synchronous is NORMAL */
    uint64_t commit_lsn;        /* s->db_lock: the log record the commit running holds (hook) */
    uint64_t wal_lsn;           /* s->ckpt_lock: the last log record committed into the WAL */
    uint64_t ckpt_lsn;          /* s->ckpt_lock: ... and copied into the database file, synced */
    int wal_frame_bytes;        /* page size + frame header: a frame's bytes in the file */
    int wal_file_frames;        /* frames the WAL file holds room for (its size, known) */
    int wal_done_frames;        /* writer thread: wal_frames when its checkpoint completed */
    uint64_t wal_retry_ms;      /* writer thread: no checkpoint of its own before this */
    uint64_t wal_stuck_ms;      /* writer thread: the log cannot restart since (0 = it can) */

    /* which parts exist (for store_close on a half-built store) */
    unsigned have_lock : 1, have_cond : 1, have_pool_lock : 1, have_pool_cond : 1,
        have_hot_lock : 1, have_db_lock : 1, have_thread : 1, have_ckpt_lock : 1,
        have_ckpt_cond : 1, have_ckpt_thread : 1, have_ckpt_run : 1;
    uv_thread_t thread;
};

/* ---- writer.c ---- */
/* Starts the writer thread (store_open, after store_handles_init). */
int store_writer_start(struct store *s);
/* Seals, waits for the writer to drain, joins it and reports what is done; frees the
 * writer's caches (store_close). */
void store_writer_stop(struct store *s);
/* Loop thread, holding s->db_lock (taken with trylock), the todo queue empty: commits b
 * (detached from s->open, counted in nsealed) in one attempt, as the writer would, and
 * moves it to the done queue (the caller drains it). Returns 0, or -1 when the attempt
 * failed and was rolled back: the caller hands b to the writer, which retries it. */
int store_commit_inline(struct store *s, struct store_batch *b);
/* Loop thread, holding s->db_lock: background work (a chunk slice, the WAL bound) is due
 * that only the writer does. */
int store_writer_work_due(const struct store *s);

/* Start-up (store_log_open, before the writer starts): commits a batch replayed from the
 * ack log (b->lsn set), its points become hot; frees its items. 0 or -1 (logged). */
int store_commit_replayed(struct store *s, struct store_batch *b);
/* Frees b's items (not b). */
void store_batch_release(struct store_batch *b);

/* ---- acklog.c ---- */
/* Start-up, after store_replay: commits the records of the log files that SQLite does not
 * hold yet (log_state.lsn), removes the files, turns the log on under sync=normal.
 * 0 or -1 (logged). */
int store_log_open(struct store *s);
/* store_open, after the handles exist: starts the syncer (sync=full). 0 or -1. */
int store_log_start(struct store *s);
/* Loop thread: appends b's writes not yet logged as one record. 0: they are logged (or
 * there were none), -1: not (the log is off, backing off, or the write failed). */
int store_log_write(struct store *s, struct store_batch *b);
/* Loop thread: every record up to lsn is committed; files holding only such go. */
void store_log_committed(struct store *s, uint64_t lsn);
/* store_close, after the writer: closes the file, removes what is committed. */
void store_log_close(struct store *s);
/* Loop thread: the writes up to seq are in the log: sync=normal reports them at the end
 * of the iteration, sync=full asks the syncer to sync them first. */
void store_log_logged(struct store *s, uint64_t seq);
/* Loop thread (store_drain_done): what the syncer has synced since, or 0; a failed sync
 * ends the file (acks then wait for commits until the log works again). */
uint64_t store_log_synced(struct store *s);
/* The record codec (pure; tests and the fuzz target use it). A record is built in b:
 * start = store_log_begin(b), items, store_log_end(b, start, lsn). */
size_t store_log_begin(struct buf *b);
void store_log_put_msg(struct buf *b, const struct msg *m);
void store_log_put_op(struct buf *b, const struct store_op *op);
void store_log_end(struct buf *b, size_t start, uint64_t lsn);
/* The record at p[0..len): its size (> 0) with lsn and body set; 0 when p holds only part
 * of one; -1 when it is not a record (bad header or checksum). *why says which. */
long store_log_record(const uint8_t *p, size_t len, uint64_t *lsn, const uint8_t **body,
                      size_t *body_len, const char **why);
/* The next item of a record's body: 1 with *m (a new message, refs 1) or *op (owned)
 * set, 0 at the end, -1 when malformed (*why). */
int store_log_item(const uint8_t *body, size_t len, size_t *pos, struct msg **m,
                   struct store_op **op, const char **why);

/* ---- checkpoint.c ---- */
/* Opens the checkpointer's connection, starts its thread and hooks the write
 * connection's commits (store_open, before the writer starts). 0 or -1 (logged). */
int store_checkpointer_start(struct store *s);
/* Stops and joins it and closes its connection (store_close, after the writer). */
void store_checkpointer_stop(struct store *s);
/* Writer thread, between transactions: when the WAL holds wal_high_frames, completes a
 * checkpoint on the write connection (the next commit then restarts the log), waiting
 * up to STORE_WAL_WAIT_MS for readers of older snapshots; logs once per episode when
 * a reader keeps the log from restarting. */
void store_wal_bound(struct store *s);
/* Every ack log record up to the returned one is in the database file and synced
 * (a checkpoint copied it; any thread). */
uint64_t store_wal_ckpt_lsn(struct store *s);
/* A passive checkpoint on the write connection, now (its holder: the writer, or
 * store_close once the writer is gone). */
void store_wal_checkpoint_now(struct store *s);
/* store_close, after the writer, the checkpointer and every reader are gone: copies the
 * whole WAL into the database and truncates it (the close then removes it). */
void store_wal_close(struct store *s);

/* ---- chunker.c (writer thread, own transactions) ---- */
/* True when a chunk slice has work: a series holds STORE_CHUNK_POINTS, the hot points
 * or the log are past their bounds, a forced chunking runs, or retention is due. */
int store_chunk_due(const struct store *s);
/* True when the hot points or the log are so far past their bounds that the writer
 * chunks before it takes the next batch (ingest then backs up into the queue). */
int store_chunk_overdue(const struct store *s);
/* One slice: chunks series for about STORE_SLICE_US of writer time, deletes the
 * segments no hot point needs and expired chunks, commits. Returns 1 when it
 * committed, 0 when it failed (logged; retried after STORE_CHUNK_RETRY_MS). */
int store_chunk_slice(struct store *s);
/* Start-up (store_open, before the writer starts): reads the segment counters and
 * replays the segments' points that are not yet in chunks into the hot points.
 * 0 or -1 (logged). */
int store_replay(struct store *s);

/* ---- devices.c (writer thread, inside the batch's transaction) ---- */
/* Applies a device put, touch or delete: SQLite result code. */
int store_apply_device_op(struct store *s, const struct store_op *op);

/* ---- state.c (writer thread, inside the batch's transaction) ---- */
/* Applies a broker-state or command operation: SQLite result code. */
int store_apply_state_op(struct store *s, const struct store_op *op);
/* keys.c: STORE_OP_PUT_API_KEY / STORE_OP_DELETE_API_KEY (writer thread). */
int store_apply_api_key_op(struct store *s, const struct store_op *op);

/* ---- outbox.c ---- */
/* Writer thread, inside the batch's transaction: applies an outbox put or delete.
 * SQLite result code. */
int store_apply_outbox_op(struct store *s, const struct store_op *op);
/* Answers the outbox reads still in flight (store_close, before the writer stops):
 * queued work is cancelled, running work is waited for. */
void store_outbox_reads_finish(struct store *s);

/* ---- batch.c (loop thread) ---- */
/* A zeroed operation of kind with a copy of id (NULL: ""). */
struct store_op *store_op_new(enum store_op_kind kind, const char *id);
void store_op_free(struct store_op *op);
/* A copy of p, or NULL for NULL. */
char *store_dup(const char *p);
/* A copy of n bytes (one byte allocated when n is 0). */
uint8_t *store_dup_bytes(const void *p, size_t n);
/* Takes ownership of op: adds it to the open batch, returns the op's seq. */
uint64_t store_submit_op(struct store *s, struct store_op *op);
/* Seals the open batch: it moves to the todo queue and the writer is woken. */
void store_seal(struct store *s);
/* Reports finished batches (done queue) through on_durable, then seals a waiting open
 * batch when the writer is free and reports low water. Once s->closing is set
 * (store_writer_stop, writer joined) it only reports. */
void store_drain_done(struct store *s);
/* Frees the open batch without committing it (store_close: nothing can commit it). */
void store_discard_open(struct store *s);
/* Queues a read on the work pool once the writer has committed every write the ack log
 * has acked so far (at once when it has): a read sees every acked write. Loop thread. */
int store_queue_read(struct store *s, uv_work_t *w, uv_work_cb work, uv_after_work_cb after);
/* Queues every waiting read now (store_close). */
void store_release_reads(struct store *s);
/* Creates the loop handles (store_open); store_handles_close uv_close()s them, they
 * are freed when the loop runs. */
int store_handles_init(struct store *s);
void store_handles_close(struct store *s);

/* ---- schema.c ---- */
/* Opens the write connection at s->path, sets its pragmas, migrates the schema to
 * STORE_SCHEMA_VERSION, counts the log and prepares s->st: 0 or -1 (logged). */
int store_db_open(struct store *s);
/* Finalizes s->st and closes the write connection (safe when half open). */
void store_db_close(struct store *s);

/* ---- query.c ---- */
/* Borrows a read-only connection from the pool (opens one when none is idle). */
struct store_reader *store_reader_get(struct store *s);
void store_reader_put(struct store *s, struct store_reader *r);
/* Ends a start-up load: logs a failure (rc is the last sqlite3_step result),
 * finalizes a and b (either may be NULL), returns the reader. 0 or GW_ESTORE. */
int store_end_load(struct store *s, struct store_reader *r, int rc, const char *what,
                   sqlite3_stmt *a, sqlite3_stmt *b);
/* Completes queries in flight before the store goes away (store_close). */
void store_queries_finish(struct store *s);
/* Closes the idle connections (store_close, after store_queries_finish). */
void store_pool_close(struct store *s);

/* ---- hot.c ---- */
/* The writer, with s->hot_lock held: adds p (series sid, from segment seg) to the hot
 * points; a point of the same ts replaces the one there. */
void hot_add(struct hot *h, int64_t sid, int64_t seg, const struct point *p);
/* The writer, with s->hot_lock held: drops every hot point of sid. */
void hot_drop(struct hot *h, int64_t sid);
/* The hot points of sid, or NULL (the writer without the lock, readers with it). */
struct hot_series *hot_get(const struct hot *h, int64_t sid);
/* The hot point i of hs as a point (str borrowed from hs, NOT NUL-terminated). */
void hot_point_get(const struct hot_series *hs, size_t i, struct point *p);
/* First index in hs whose ts >= ts. */
size_t hot_lower_bound(const struct hot_series *hs, int64_t ts);
void hot_fini(struct hot *h);

/* ---- backup.c: stops the backup in flight, waiting for its work callback
 * (store_close, loop thread). */
void store_backup_stop(struct store *s);

/* ---- sql.c (any thread, on the connection the caller owns) ---- */
/* Runs SQL text without results; logs a failure. 0 or -1. */
int store_exec(sqlite3 *db, const char *sql);
/* The first column of the first row of sql as an integer. SQLite result code. */
int store_get_int64(sqlite3 *db, const char *sql, int64_t *out);
/* The text for rc: the connection's own message when rc is its last error (it names
 * the table or column), else SQLite's generic text. */
const char *store_errmsg(sqlite3 *db, int rc);
/* A write on db failed with rc (before the rollback): 1 when that means the disk or the
 * quota is full (SQLITE_FULL, or an I/O error whose errno is ENOSPC or EDQUOT), else 0.
 * Writes what SQLite said to err (rc, message, errno); injected: rc came from the test
 * seam, not from db. */
int store_failure(sqlite3 *db, int rc, int injected, char *err, size_t len);
/* Steps a bound statement to completion, then resets it and clears its bindings.
 * SQLITE_OK (a row it returns is ignored) or the error code. */
int store_step(sqlite3_stmt *st);
void store_bind_text_or_null(sqlite3_stmt *st, int i, const char *p);
/* Binds n bytes as a blob; zero bytes bind an empty blob, never NULL. SQLITE_STATIC. */
void store_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n);
const char *store_col_text(sqlite3_stmt *st, int i);
/* Column i as bytes (never NULL; "" when empty) and their length. */
const void *store_col_blob(sqlite3_stmt *st, int i, size_t *len);
/* The value columns: t (enum val_type) at tcol, v at tcol + 1. Both directions answer
 * a type outside enum val_type with SQLITE_MISMATCH and a log line: such a value is
 * neither stored nor served. store_bind_value binds p's strings SQLITE_STATIC;
 * store_read_value sets p->type, p->num, p->str and p->str_len (str borrowed from st:
 * valid until its next step or reset; never NULL for strings). */
int store_bind_value(sqlite3_stmt *st, int tcol, const struct point *p);
/* Finishes the chunk in e (nothing when it is empty) into blob and inserts it with add,
 * "INSERT INTO chunks(series, start_ts, end_ts, count, data) VALUES (?1..?5)" (the
 * chunker and the v3 conversion). SQLite result code. */
struct chunk_enc;
int store_write_chunk(sqlite3_stmt *add, int64_t sid, struct chunk_enc *e, struct buf *blob);
int store_read_value(sqlite3_stmt *st, int tcol, struct point *p);

/* ---- test seams ---- */
/* The SQL that took a database from schema version v to v + 1 (for v3 -> v4 only the
 * part before the conversion), or NULL: tests build the layouts of older versions. */
const char *store_migration_sql(int v);
/* Queues a forced chunking of every hot point (and a retention pass when
 * retention_days > 0) in the ordered stream: its seq is reported durable once that has
 * run. Loop thread (writer.c). */
uint64_t store_compact(struct store *s);
/* A query renews its read snapshot every ms (0: between every two chunks); before any
 * query runs. Loop thread (store.c). */
void store_set_snapshot_ms(struct store *s, unsigned ms);

#endif
