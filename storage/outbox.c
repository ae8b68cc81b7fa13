/* storage/outbox.c: the bridge outbox: the messages bound for each upstream broker,
 * kept until the bridge deletes them (acknowledged upstream, or dropped).
 *
 * Data flow: store_put_outbox / store_delete_outbox run on the loop thread; they copy
 * their arguments into a struct store_op and hand it to the writer in the same ordered
 * stream as telemetry (store_submit_op, batch.c: one seq each, counted in the queued
 * bytes, durable when its batch commits). The writer thread applies it with
 * store_apply_outbox_op inside the batch's transaction, with the statements schema.c
 * prepared once. store_read_outbox queues a uv_work_t: a pool thread borrows a
 * read-only connection (query.c's pool), reads one page of messages into one buffer,
 * and the after_work callback (loop thread) hands the page to the caller.
 * store_load_outbox_index is start-up only (loop thread, blocking) and reads no
 * payload. Table (schema v5, schema.c): outbox(upstream, id, device, topic, payload,
 * qos, ts), PRIMARY KEY(upstream, id) WITHOUT ROWID, so a page is one range scan.
 *
 * store_close answers the reads still in flight (store_outbox_reads_finish), as
 * query.c does for queries: queued work is cancelled, running work is waited for, the
 * caller's callback runs during store_close, and the after_work callback then only
 * frees the request. */
#include <assert.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "gateway/log.h"
#include "storage/store_int.h"

struct outbox_req {
    uv_work_t work;             /* work.data = this */
    struct store *s;
    char *upstream;             /* owned */
    uint64_t after_id;
    size_t max_msgs, max_bytes;
    store_outbox_read_fn fn;
    void *ctx;
    /* set by the work callback, before work_done */
    int rc;                     /* 0 or GW_ESTORE (also when the work never ran) */
    struct store_outbox_msg *msgs; /* the page; strings and payloads point into data */
    size_t n, cap;
    struct buf data;            /* per message: device NUL topic NUL payload */
    int work_done;              /* s->pool_lock: the work callback has finished */
    int orphan;                 /* loop: fn already ran in store_close; only free */
    struct list_link link;      /* in s->outbox_reads (loop thread) */
};

static const char SQL_READ[] =
    "SELECT id, device, topic, payload, qos, ts FROM outbox"
    " WHERE upstream = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
static const char SQL_INDEX[] =
    "SELECT id, device, topic, length(payload), qos, ts FROM outbox"
    " WHERE upstream = ?1 ORDER BY id";

/* SQLite integers are signed: ids above INT64_MAX are outside the contract, and a
 * bound above it (a range end, a LIMIT) means "everything". */
static int64_t int64_arg(uint64_t v)
{
    return v > INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* ---- submit (loop thread) ---- */

uint64_t store_put_outbox(struct store *s, const char *upstream, const struct store_outbox_msg *m)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_OUTBOX, upstream);

    assert(m->id <= INT64_MAX);
    op->msg_id = m->id;
    op->device = xstrdup(m->device ? m->device : "");
    op->topic = xstrdup(m->topic ? m->topic : "");
    op->payload = store_dup_bytes(m->payload, m->payload_len);
    op->payload_len = m->payload_len;
    op->qos = m->qos;
    op->created_ms = m->ts_ms;
    return store_submit_op(s, op);
}

uint64_t store_delete_outbox(struct store *s, const char *upstream, uint64_t first_id,
                             uint64_t last_id)
{
    struct store_batch *b = s->open;
    struct store_op *op;

    /* A drain acknowledges one message at a time: a range that continues the delete the
     * open batch ends with widens it instead of costing a statement of its own. That
     * write's seq is the batch's last, so it is durable exactly when this one would be. */
    if (b && b->nitems && (op = b->items[b->nitems - 1].op) != NULL &&
        op->kind == STORE_OP_DELETE_OUTBOX && strcmp(op->id, upstream) == 0 &&
        first_id >= op->msg_id && first_id <= op->last_id + 1 && op->last_id != UINT64_MAX) {
        if (last_id > op->last_id)
            op->last_id = last_id;
        return b->last_seq;
    }
    op = store_op_new(STORE_OP_DELETE_OUTBOX, upstream);

    op->msg_id = first_id;
    op->last_id = last_id;
    return store_submit_op(s, op);
}

/* ---- apply (writer thread, inside the batch's transaction) ---- */

int store_apply_outbox_op(struct store *s, const struct store_op *op)
{
    sqlite3_stmt *st;

    switch (op->kind) {
    case STORE_OP_PUT_OUTBOX:
        st = s->st[ST_OUTBOX_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, int64_arg(op->msg_id));
        sqlite3_bind_text(st, 3, op->device, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, op->topic, -1, SQLITE_STATIC);
        store_bind_blob(st, 5, op->payload, op->payload_len);
        sqlite3_bind_int(st, 6, op->qos);
        sqlite3_bind_int64(st, 7, op->created_ms);
        return store_step(st);
    case STORE_OP_DELETE_OUTBOX:
        st = s->st[ST_OUTBOX_DEL];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, int64_arg(op->msg_id));
        sqlite3_bind_int64(st, 3, int64_arg(op->last_id));
        return store_step(st);
    default:
        return SQLITE_MISUSE;
    }
}

/* ---- start-up index (loop thread, blocking) ---- */

int store_load_outbox_index(struct store *s, const char *upstream, store_outbox_fn fn,
                            void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_INDEX, -1, &st, NULL);
    if (rc == SQLITE_OK)
        sqlite3_bind_text(st, 1, upstream ? upstream : "", -1, SQLITE_STATIC);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *device = store_col_text(st, 1), *topic = store_col_text(st, 2);
        struct store_outbox_msg m = {
            .id = (uint64_t)sqlite3_column_int64(st, 0),
            .device = device ? device : "",
            .topic = topic ? topic : "",
            .payload = NULL,
            .payload_len = (size_t)sqlite3_column_int64(st, 3),
            .qos = (uint8_t)sqlite3_column_int(st, 4),
            .ts_ms = sqlite3_column_int64(st, 5),
        };

        fn(ctx, &m);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "outbox index", st, NULL);
}

/* ---- reads (pool thread, then the loop) ---- */

/* Appends the current row of st to the page; returns its payload bytes. */
static size_t add_row(struct outbox_req *req, sqlite3_stmt *st, size_t *offs)
{
    const char *device = store_col_text(st, 1), *topic = store_col_text(st, 2);
    size_t len;
    const void *payload = store_col_blob(st, 3, &len);
    struct store_outbox_msg *m;

    if (req->n == req->cap) {
        req->cap = req->cap ? 2 * req->cap : 64;
        req->msgs = xrealloc(req->msgs, req->cap * sizeof *req->msgs);
    }
    m = &req->msgs[req->n];
    offs[req->n++] = req->data.len;
    buf_append(&req->data, device ? device : "", device ? strlen(device) + 1 : 1);
    buf_append(&req->data, topic ? topic : "", topic ? strlen(topic) + 1 : 1);
    buf_append(&req->data, payload, len);
    m->id = (uint64_t)sqlite3_column_int64(st, 0);
    m->payload_len = len;
    m->qos = (uint8_t)sqlite3_column_int(st, 4);
    m->ts_ms = sqlite3_column_int64(st, 5);
    return len;
}

/* Reads one page into req (the pointers are set once data no longer moves).
 * SQLite result code. */
static int read_page(struct store_reader *r, struct outbox_req *req)
{
    sqlite3_stmt *st = NULL;
    size_t *offs = NULL, offs_cap = 0, bytes = 0;
    int rc;

    /* prepared per page: one prepare is small next to a page of messages, and the
     * reader pool's statements belong to query.c */
    rc = sqlite3_prepare_v2(r->db, SQL_READ, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, req->upstream, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, int64_arg(req->after_id));
        sqlite3_bind_int64(st, 3, int64_arg(req->max_msgs));
    }
    while (rc == SQLITE_OK && (req->n == 0 || bytes < req->max_bytes) &&
           (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (req->n == offs_cap) {
            offs_cap = offs_cap ? 2 * offs_cap : 64;
            offs = xrealloc(offs, offs_cap * sizeof *offs);
        }
        bytes += add_row(req, st, offs);
        rc = SQLITE_OK;
    }
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    if (rc != SQLITE_OK)
        log_error("store: outbox read upstream=\"%s\": %s", log_q(req->upstream),
                  store_errmsg(r->db, rc));
    sqlite3_finalize(st);
    for (size_t i = 0; rc == SQLITE_OK && i < req->n; i++) {
        struct store_outbox_msg *m = &req->msgs[i];
        const char *p = (const char *)req->data.data + offs[i];

        m->device = p;
        m->topic = p + strlen(p) + 1;
        m->payload = m->topic + strlen(m->topic) + 1;
    }
    free(offs);
    return rc;
}

static void on_read_work(uv_work_t *w) /* pool thread */
{
    struct outbox_req *req = w->data;
    struct store *s = req->s;
    struct store_reader *r = store_reader_get(s);
    int rc = GW_ESTORE;

    if (r) {
        rc = read_page(r, req) == SQLITE_OK ? 0 : GW_ESTORE;
        store_reader_put(s, r);
    }
    uv_mutex_lock(&s->pool_lock);
    req->rc = rc;
    if (rc != 0)
        req->n = 0;
    req->work_done = 1;
    uv_cond_broadcast(&s->pool_cond);
    uv_mutex_unlock(&s->pool_lock);
}

static void req_free(struct outbox_req *req)
{
    free(req->upstream);
    free(req->msgs);
    buf_fini(&req->data);
    free(req);
}

static void answer(struct outbox_req *req)
{
    req->fn(req->ctx, req->rc, req->rc == 0 ? req->msgs : NULL, req->rc == 0 ? req->n : 0);
}

static void on_read_done(uv_work_t *w, int status) /* loop thread */
{
    struct outbox_req *req = w->data;

    (void)status; /* a cancelled read kept rc = GW_ESTORE */
    if (req->orphan) { /* store_close has answered it */
        req_free(req);
        return;
    }
    list_remove(&req->s->outbox_reads, &req->link);
    answer(req);
    req_free(req);
}

int store_read_outbox(struct store *s, const char *upstream, uint64_t after_id, size_t max_msgs,
                      size_t max_bytes, store_outbox_read_fn fn, void *ctx)
{
    struct outbox_req *req;
    int rc;

    if (!s || !upstream || !fn || max_msgs == 0)
        return GW_EINVAL;
    if (s->closing)
        return GW_ESTORE;
    req = xcalloc(1, sizeof *req);
    req->work.data = req;
    req->s = s;
    req->upstream = xstrdup(upstream);
    req->after_id = after_id;
    req->max_msgs = max_msgs;
    req->max_bytes = max_bytes;
    req->fn = fn;
    req->ctx = ctx;
    req->rc = GW_ESTORE;
    buf_init(&req->data);
    rc = store_queue_read(s, &req->work, on_read_work, on_read_done);
    if (rc != 0) {
        req_free(req);
        return rc;
    }
    list_push_back(&s->outbox_reads, &req->link);
    return 0;
}

void store_outbox_reads_finish(struct store *s)
{
    struct outbox_req *req;

    if (!s->have_pool_lock || !s->have_pool_cond)
        return;
    while ((req = list_entry(s->outbox_reads.head, struct outbox_req, link)) != NULL) {
        list_remove(&s->outbox_reads, &req->link);
        if (uv_cancel((uv_req_t *)&req->work) != 0) { /* running or finished: wait */
            uv_mutex_lock(&s->pool_lock);
            while (!req->work_done)
                uv_cond_wait(&s->pool_cond, &s->pool_lock);
            uv_mutex_unlock(&s->pool_lock);
        }
        req->orphan = 1; /* on_read_done still runs (loop) and frees req */
        answer(req);
    }
}
