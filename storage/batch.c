/* storage/batch.c: the loop side of the hand-off to the writer thread.
 *
 * Loop thread: store_append and store_submit_op add items to the open batch and give
 * each operation the next seq. The batch is sealed at cfg.batch_rows rows, after
 * cfg.batch_delay_ms (timer) or when a non-telemetry operation arrives, and pushed on
 * the todo queue; a sealed batch that the writer has not taken yet absorbs the next
 * one while both fit in batch_rows (group commit while the writer is busy).
 * The writer (writer.c) moves each batch it has finished to the done queue and wakes
 * the loop through the async handle; on_done drains the whole done queue (sends
 * coalesce), advances the durable watermark, calls on_durable and on_pressure.
 * s->lock guards the two queues only. */
#include <assert.h>
#include <string.h>

#include "base/alloc.h"
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

static void on_batch_timer(uv_timer_t *t)
{
    struct store_handles *h = t->data;

    store_seal(h->s);
}

static void on_done(uv_async_t *a)
{
    struct store_handles *h = a->data;

    store_drain_done(h->s, 1);
}

int store_handles_init(struct store *s)
{
    s->h = xcalloc(1, sizeof *s->h);
    s->h->s = s;
    if (uv_timer_init(s->loop, &s->h->timer) != 0)
        return -1;
    s->h->timer.data = s->h;
    s->h->nopen++;
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
    s->h = NULL;
    n = h->nopen; /* on_handle_closed frees h after the last close */
    if (n == 0) {
        free(h);
        return;
    }
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    if (n >= 2)
        uv_close((uv_handle_t *)&h->async, on_handle_closed);
}

/* ---- batching ---- */

static void check_pressure_high(struct store *s)
{
    if (!s->paused && s->queued_rows > s->cfg.queue_high_rows) {
        s->paused = 1;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 1);
    }
}

/* Consecutive batches with the same outcome share one on_durable call (upto = the
 * last one's seq). */
void store_drain_done(struct store *s, int report_pressure)
{
    struct store_batch *b, *next;

    uv_mutex_lock(&s->lock);
    b = s->done_head;
    s->done_head = s->done_tail = NULL;
    uv_mutex_unlock(&s->lock);
    for (; b; b = next) {
        uint64_t upto = b->last_seq;
        int ok = b->ok;

        next = b->next;
        assert(s->queued_rows >= b->nrows);
        s->queued_rows -= b->nrows;
        s->durable_seq = upto;
        free(b);
        if ((!next || next->ok != ok) && s->on_durable)
            s->on_durable(s->ctx, upto, ok);
    }
    if (s->loop_ref && s->durable_seq == s->last_seq && s->h) {
        uv_unref((uv_handle_t *)&s->h->async);
        s->loop_ref = 0;
    }
    if (report_pressure && s->paused && s->queued_rows < s->cfg.queue_low_rows) {
        s->paused = 0;
        if (s->on_pressure)
            s->on_pressure(s->ctx, 0);
    }
}

/* The store keeps the loop alive while operations await durability, and only then. */
static void hold_loop(struct store *s)
{
    if (!s->loop_ref) {
        uv_ref((uv_handle_t *)&s->h->async);
        s->loop_ref = 1;
    }
}

static struct store_batch *open_batch(struct store *s)
{
    hold_loop(s);
    if (!s->open) {
        s->open = xcalloc(1, sizeof *s->open);
        uv_timer_start(&s->h->timer, on_batch_timer, s->cfg.batch_delay_ms, 0);
    }
    return s->open;
}

static void push_item(struct store_batch *b, struct msg *m, struct store_op *op)
{
    if (b->nitems == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->items = xrealloc(b->items, b->cap * sizeof *b->items);
    }
    b->items[b->nitems].m = m;
    b->items[b->nitems].op = op;
    b->nitems++;
}

void store_seal(struct store *s)
{
    struct store_batch *b = s->open, *t;

    if (!b)
        return;
    s->open = NULL;
    uv_timer_stop(&s->h->timer);
    uv_mutex_lock(&s->lock);
    t = s->todo_tail;
    if (t && t->nrows + b->nrows <= s->cfg.batch_rows) {
        /* the writer has not taken t yet: ride along in its transaction */
        for (size_t i = 0; i < b->nitems; i++)
            push_item(t, b->items[i].m, b->items[i].op);
        t->nrows += b->nrows;
        t->last_seq = b->last_seq;
        free(b->items);
        free(b);
    } else if (t) {
        t->next = b;
        s->todo_tail = b;
    } else {
        s->todo_head = s->todo_tail = b;
    }
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->lock);
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

uint64_t store_append(struct store *s, struct msg *m)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    /* a message without points still gets a seq, durable with its batch */
    if (m && m->kind == MSG_TELEMETRY && m->npoints > 0 && m->device && m->device[0]) {
        push_item(b, msg_ref(m), NULL);
        b->nrows += m->npoints;
        s->queued_rows += m->npoints;
    }
    b->last_seq = seq;
    check_pressure_high(s);
    if (b->nrows >= s->cfg.batch_rows)
        store_seal(s);
    return seq;
}

uint64_t store_submit_op(struct store *s, struct store_op *op)
{
    uint64_t seq = ++s->last_seq;
    struct store_batch *b = open_batch(s);

    push_item(b, NULL, op);
    b->last_seq = seq;
    store_seal(s); /* an operation's durability is not delayed by the batch timer */
    return seq;
}
