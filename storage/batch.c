/* storage/batch.c: the loop side of the hand-off to the writer thread.
 *
 * Loop thread: store_append and store_submit_op add items to the open batch and give
 * each operation the next seq. Group commit without a timer: an open batch an ack waits
 * on is sealed at the end of the loop iteration that added to it (the check handle,
 * right after the I/O callbacks; the prepare handle catches writes made after it, before
 * the loop could block) when no sealed batch waits for the writer: the writer then always
 * has the next batch ready when it finishes one (no idle gap between commits, which
 * matters when each ends with an fsync), and arrivals ride in the open batch meanwhile,
 * sealed once it holds cfg.batch_rows rows or the writer takes the waiting one.
 * Sealing pushes the batch on the todo queue and wakes the writer.
 * The loop's own commit (sync=normal): when that batch is small and the writer is idle
 * (its lock free: uv_mutex_trylock, never a wait), the loop commits it itself
 * (store_commit_inline) and reports it at once: an ack costs no thread hand-off. A
 * commit into the page cache is the size of a write() of its pages; what may block
 * (fsync with sync=full, checkpoints, chunk slices, retries after a failure) stays on
 * the writer, which the loop kicks when such work is due.
 * The writer (writer.c) moves each batch it has finished to the done queue and wakes
 * the loop through the async handle; on_done drains the whole done queue (sends
 * coalesce), advances the durable watermark, calls on_durable and on_pressure.
 * s->lock guards the two queues only. */
#include <assert.h>
#include <string.h>

#include "base/alloc.h"
#include "gateway/log.h"
#include "storage/store_int.h"

/* ---- operations ---- */

struct store_op *store_op_new(enum store_op_kind kind, const char *id)
{
    struct store_op *op = xcalloc(1, sizeof *op);

    op->kind = kind;
    op->id = xstrdup(id ? id : "");
    return op;
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

char *store_dup(const char *p)
{
    return p ? xstrdup(p) : NULL;
}

uint8_t *store_dup_bytes(const void *p, size_t n)
{
    uint8_t *d = xmalloc(n ? n : 1);

    if (n)
        memcpy(d, p, n);
    return d;
}

/* ---- handles ---- */

static void on_handle_closed(uv_handle_t *handle)
{
    struct store_handles *h = handle->data;

    if (--h->nopen == 0)
        free(h);
}

static void sealer_stop(struct store *s)
{
    if (s->sealer_on) {
        uv_prepare_stop(&s->h->prepare);
        uv_check_stop(&s->h->check);
        s->sealer_on = 0;
    }
}

static void delay_stop(struct store *s)
{
    if (s->delay_on) {
        uv_timer_stop(&s->h->delay);
        s->delay_on = 0;
    }
}

/* Whether the loop may commit b itself: sync=normal, not full, no commit failure injected
 * (the seam counts the writer's tries), no compaction, small. Under s->lock. */
static int inline_ok(const struct store *s, const struct store_batch *b)
{
    return s->cfg.sync != STORE_SYNC_FULL && !s->full_state && !s->full_reported &&
           s->fail_commits == 0 && !b->compact && b->nrows <= STORE_INLINE_ROWS &&
           b->nbytes <= STORE_INLINE_BYTES;
}

/* Whether the ack log may ack writes: on, no sealed batch outstanding with writes it
 * lacks (acks go out in seq order), the store healthy (a failure or a full disk: acks wait
 * for the writer's outcome, as without the log). Under s->lock. */
static int log_ok(const struct store *s)
{
    return s->log.on && s->unlogged_out == 0 && !s->full_state && !s->full_reported &&
           s->fail_commits == 0 && !s->log_stuck;
}

/* Every write up to upto is in the ack log: durable as sync=normal promises. */
static void report_logged(struct store *s, uint64_t upto)
{
    if (upto <= s->durable_seq)
        return;
    s->durable_seq = upto;
    if (s->on_durable)
        s->on_durable(s->ctx, upto, 1);
}

/* The awaited open batch goes now: committed by the loop when it may (inline_ok, the
 * writer idle), else sealed for the writer. Nothing happens while a sealed batch still
 * waits for the writer: store_drain_done calls again when one is done. */
static void seal_awaited(struct store *s)
{
    struct store_batch *b = s->open;
    int waiting, may_inline, may_log, kick;

    uv_mutex_lock(&s->lock);
    waiting = s->todo_head != NULL;
    /* inline only with no batch anywhere between sealing and its report: one the writer
     * has taken but not finished would commit (and be reported) after this one */
    may_inline = s->nsealed == 0 && inline_ok(s, b);
    may_log = log_ok(s) && !b->compact; /* a compaction's seq means "chunked": no early ack */
    uv_mutex_unlock(&s->lock);
    if (may_log && store_log_write(s, b) == 0) {
        /* acked by the log (sync=full: once the syncer has synced it): the writer commits
         * it behind the acks, next when it is free */
        uint64_t upto = b->last_seq;
        if (!waiting)
            store_seal(s);
        if (s->log.sync)
            store_log_logged(s, upto);
        else
            report_logged(s, upto);
        return;
    }
    if (waiting)
        return;
    if (!may_inline || uv_mutex_trylock(&s->db_lock) != 0) {
        store_seal(s);
        return;
    }
    s->open = NULL;
    s->nsealed++;
    delay_stop(s);
    if (store_commit_inline(s, b) != 0) { /* rolled back: the writer tries it again */
        uv_mutex_unlock(&s->db_lock);
        s->open = b;
        s->nsealed--;
        store_seal(s);
        return;
    }
    kick = store_writer_work_due(s);
    uv_mutex_unlock(&s->db_lock);
    if (kick) {
        uv_mutex_lock(&s->lock);
        s->writer_kick = 1;
        uv_cond_signal(&s->cond);
        uv_mutex_unlock(&s->lock);
    }
    store_drain_done(s); /* the acks go out now */
}

static void seal_if_idle(struct store *s)
{
    sealer_stop(s); /* first: reporting a batch may start it again */
    if (s->log_unreported > s->durable_seq)
        report_logged(s, s->log_unreported);
    if (s->open && s->open->awaited)
        seal_awaited(s);
}

static void on_iteration_end(uv_check_t *c)
{
    struct store_handles *h = c->data;

    seal_if_idle(h->s);
}

static void on_before_poll(uv_prepare_t *p)
{
    struct store_handles *h = p->data;

    seal_if_idle(h->s);
}

static void sealer_start(struct store *s)
{
    if (!s->sealer_on) {
        uv_prepare_start(&s->h->prepare, on_before_poll);
        uv_check_start(&s->h->check, on_iteration_end);
        s->sealer_on = 1;
    }
}

/* Nobody awaited the open batch for batch_delay_ms: it goes now, or as soon as the
 * writer is free. */
static void on_delay(uv_timer_t *t)
{
    struct store_handles *h = t->data;
    struct store *s = h->s;

    s->delay_on = 0;
    if (!s->open)
        return;
    if (s->nsealed == 0)
        store_seal(s);
    else
        s->open->awaited = 1;
}

static void on_done(uv_async_t *a)
{
    struct store_handles *h = a->data;

    store_drain_done(h->s);
}

int store_handles_init(struct store *s)
{
    s->h = xcalloc(1, sizeof *s->h);
    s->h->s = s;
    if (uv_prepare_init(s->loop, &s->h->prepare) != 0)
        return -1;
    s->h->prepare.data = s->h;
    s->h->nopen++;
    uv_unref((uv_handle_t *)&s->h->prepare); /* the async handle holds the loop instead */
    if (uv_check_init(s->loop, &s->h->check) != 0)
        return -1;
    s->h->check.data = s->h;
    s->h->nopen++;
    uv_unref((uv_handle_t *)&s->h->check);
    if (uv_timer_init(s->loop, &s->h->delay) != 0)
        return -1;
    s->h->delay.data = s->h;
    s->h->nopen++;
    uv_unref((uv_handle_t *)&s->h->delay);
    if (uv_async_init(s->loop, &s->h->async, on_done) != 0)
        return -1;
    s->h->async.data = s->h;
    s->h->nopen++;
    uv_unref((uv_handle_t *)&s->h->async); /* ref'd while work is outstanding */
    return 0;
}

void store_handles_close(struct store *s)
{
    struct store_handles *h = s->h;
    int n;

    if (!h)
        return;
    sealer_stop(s);
    delay_stop(s);
    s->h = NULL;
    n = h->nopen; /* on_handle_closed frees h after the last close */
    if (n == 0) {
        free(h);
        return;
    }
    uv_close((uv_handle_t *)&h->prepare, on_handle_closed);
    if (n >= 2)
        uv_close((uv_handle_t *)&h->check, on_handle_closed);
    if (n >= 3)
        uv_close((uv_handle_t *)&h->delay, on_handle_closed);
    if (n >= 4)
        uv_close((uv_handle_t *)&h->async, on_handle_closed);
}

/* ---- reads after the acks they may be asked about ---- */

/* Queues the waiting reads whose writes are committed (all: every one). */
static void release_reads(struct store *s, int all)
{
    size_t keep = 0;

    for (size_t i = 0; i < s->ngated; i++) {
        struct store_gated *g = &s->gated[i];
        if (all || g->lsn <= s->log.committed_lsn) {
            if (uv_queue_work(s->loop, g->w, g->work, g->after) != 0)
                log_error("store: a read could not be queued");
        } else {
            s->gated[keep++] = *g;
        }
    }
    s->ngated = keep;
}

int store_queue_read(struct store *s, uv_work_t *w, uv_work_cb work, uv_after_work_cb after)
{
    int stuck;

    if (s->log.last_lsn <= s->log.committed_lsn)
        return uv_queue_work(s->loop, w, work, after);
    uv_mutex_lock(&s->lock);
    stuck = s->log_stuck || s->full_state;
    uv_mutex_unlock(&s->lock);
    if (stuck) /* the writer retries a batch: reads do not wait for it */
        return uv_queue_work(s->loop, w, work, after);
    if (s->ngated == s->gated_cap) {
        s->gated_cap = s->gated_cap ? 2 * s->gated_cap : 8;
        s->gated = xrealloc(s->gated, s->gated_cap * sizeof *s->gated);
    }
    s->gated[s->ngated++] = (struct store_gated){ w, work, after, s->log.last_lsn };
    if (s->open && s->open->nlogged > 0 && s->nsealed == 0)
        store_seal(s); /* the writer is idle: the logged writes go to it now */
    return 0;
}

void store_release_reads(struct store *s)
{
    release_reads(s, 1);
    free(s->gated);
    s->gated = NULL;
    s->ngated = s->gated_cap = 0;
}

/* ---- batching ---- */

/* The loop learns the writer's full state, in order with the outcomes. */
static void report_full(struct store *s, int full)
{
    if (full == s->full_reported)
        return;
    s->full_reported = full;
    if (s->on_full)
        s->on_full(s->ctx, full);
}

/* Consecutive batches with the same outcome (and full state) share one on_durable call
 * (upto = the last one's seq); a change of the full state is reported before the first
 * batch that carries it. Then the writer may be free: a waiting open batch goes at once. */
void store_drain_done(struct store *s)
{
    struct store_batch *b, *next;
    uint64_t reported, synced;
    int full_now, stuck;

    uv_mutex_lock(&s->lock);
    b = s->done_head;
    s->done_head = s->done_tail = NULL;
    full_now = s->full_state; /* newer than every batch taken here */
    stuck = s->log_stuck;
    uv_mutex_unlock(&s->lock);
    synced = store_log_synced(s); /* before the batches: their reports may pass it */
    reported = s->durable_seq; /* the ack log reports its batches before they commit */
    for (; b; b = next) {
        uint64_t upto = b->last_seq;
        int ok = b->ok, full = b->full;

        next = b->next;
        assert(s->queued_rows >= b->nrows && s->queued_bytes >= b->nbytes && s->nsealed > 0);
        s->queued_rows -= b->nrows;
        s->queued_bytes -= b->nbytes;
        s->nsealed--;
        if (upto > s->durable_seq)
            s->durable_seq = upto; /* a logged batch was reported when it was logged */
        if (b->unlogged)
            s->unlogged_out--;
        if (ok && b->lsn)
            store_log_committed(s, b->lsn);
        free(b);
        report_full(s, full);
        if ((!next || next->ok != ok || next->full != full) && upto > reported) {
            reported = upto;
            if (s->on_durable)
                s->on_durable(s->ctx, upto, ok);
        }
    }
    report_full(s, full_now);
    if (synced > s->durable_seq && !s->closing)
        report_logged(s, synced);
    release_reads(s, stuck || full_now);
    if (s->closing) /* store_writer_stop: the writer has exited */
        return;
    if (s->open && s->open->awaited)
        sealer_start(s); /* sealed (or committed) before the loop blocks again */
    if (s->loop_ref && s->durable_seq == s->last_seq) {
        uv_unref((uv_handle_t *)&s->h->async);
        s->loop_ref = 0;
    }
    if (s->paused && s->queued_rows < s->cfg.queue_low_rows &&
        s->queued_bytes < s->cfg.queue_low_bytes) {
        s->paused = 0;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 0);
    }
}

/* The batch the next write joins. The store keeps the loop alive while writes await
 * durability, and only then. */
static struct store_batch *open_batch(struct store *s)
{
    if (!s->loop_ref) {
        uv_ref((uv_handle_t *)&s->h->async);
        s->loop_ref = 1;
    }
    if (!s->open) {
        s->open = xcalloc(1, sizeof *s->open);
        if (!s->delay_on) {
            uv_timer_start(&s->h->delay, on_delay, s->cfg.batch_delay_ms, 0);
            s->delay_on = 1;
        }
    }
    return s->open;
}

static size_t str_bytes(const char *p)
{
    return p ? strlen(p) + 1 : 0;
}

/* The memory a message holds while queued (msg_new's one allocation). */
static size_t msg_bytes(const struct msg *m)
{
    size_t n = sizeof *m + m->payload_len + 1 + str_bytes(m->device) + str_bytes(m->topic);

    for (size_t i = 0; i < m->npoints; i++) {
        n += sizeof m->points[i] + str_bytes(m->points[i].key);
        if (m->points[i].str)
            n += m->points[i].str_len + 1;
    }
    return n;
}

static size_t op_bytes(const struct store_op *op)
{
    return sizeof *op + str_bytes(op->id) + str_bytes(op->token_hash) + str_bytes(op->role) +
           str_bytes(op->attrs_json) + str_bytes(op->protocol) + str_bytes(op->text) +
           str_bytes(op->topic) + str_bytes(op->device) + str_bytes(op->params_json) +
           str_bytes(op->status) + str_bytes(op->reply_json) + op->payload_len;
}

/* Adds an item (m or op) of nbytes to the open batch and the queue counters. */
static void push_item(struct store *s, struct msg *m, struct store_op *op, size_t nbytes)
{
    struct store_batch *b = s->open;

    if (b->nitems == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->items = xrealloc(b->items, b->cap * sizeof *b->items);
    }
    b->items[b->nitems].m = m;
    b->items[b->nitems].op = op;
    b->nitems++;
    nbytes += sizeof *b->items;
    b->nbytes += nbytes;
    s->queued_bytes += nbytes;
}

/* After a write joined the open batch: pressure, and the batch_rows bound. */
static void added(struct store *s)
{
    if (!s->paused &&
        (s->queued_rows > s->cfg.queue_high_rows || s->queued_bytes > s->cfg.queue_high_bytes)) {
        s->paused = 1;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 1);
    }
    if (s->open && s->open->nrows >= s->cfg.batch_rows)
        store_seal(s);
}

void store_seal(struct store *s)
{
    struct store_batch *b = s->open;

    if (!b)
        return;
    if (s->log.on && b->nlogged < b->nitems) {
        /* every write is logged before its batch is sealed, so the ack log holds batches
         * in the writer's order; one that could not be stops the log from acking until
         * the writer has reported it */
        int may_log;
        uv_mutex_lock(&s->lock);
        may_log = log_ok(s) && !b->compact;
        uv_mutex_unlock(&s->lock);
        if (!may_log || store_log_write(s, b) != 0)
            b->unlogged = 1;
    }
    /* a batch wholly in the log, after none that is not: its acks need not wait for the
     * writer (reported at the end of this iteration, not from inside the caller's write) */
    if (s->log.on && !b->unlogged && s->unlogged_out == 0 && b->last_seq > s->durable_seq)
        store_log_logged(s, b->last_seq);
    if (b->unlogged)
        s->unlogged_out++;
    s->open = NULL;
    s->nsealed++;
    sealer_stop(s);
    delay_stop(s);
    uv_mutex_lock(&s->lock);
    if (s->todo_tail)
        s->todo_tail->next = b;
    else
        s->todo_head = b;
    s->todo_tail = b;
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->lock);
    if (s->log_unreported > s->durable_seq && !s->closing)
        sealer_start(s);
}

void store_discard_open(struct store *s)
{
    struct store_batch *b = s->open;

    if (!b)
        return;
    s->open = NULL;
    for (size_t i = 0; i < b->nitems; i++) {
        msg_unref(b->items[i].m);
        store_op_free(b->items[i].op);
    }
    free(b->items);
    free(b);
}

void store_flush(struct store *s)
{
    if (!s->open || s->closing)
        return;
    s->open->awaited = 1;
    sealer_start(s);
}

uint64_t store_append(struct store *s, struct msg *m)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    /* a message without points still gets a seq, durable with its batch */
    if (m && m->kind == MSG_TELEMETRY && m->npoints > 0 && m->device && m->device[0]) {
        push_item(s, msg_ref(m), NULL, msg_bytes(m));
        b->nrows += m->npoints;
        s->queued_rows += m->npoints;
    }
    b->last_seq = seq;
    added(s);
    return seq;
}

uint64_t store_submit_op(struct store *s, struct store_op *op)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    push_item(s, NULL, op, op_bytes(op));
    if (op->kind == STORE_OP_COMPACT)
        b->compact = 1;
    b->last_seq = seq;
    added(s);
    return seq;
}
