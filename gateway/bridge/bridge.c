/* gateway/bridge/bridge.c: see bridge.h. Loop thread only.
 *
 * Each upstream keeps its outbox index as a ring of struct bridge_entry in id order.
 * An entry is waiting (not on the wire), sent (in flight) or done (acknowledged or
 * dropped, kept until it reaches the head, so that deletes go as ranges of contiguous
 * ids). Order per device: a device's messages hash to one of NBUCKETS buckets, and a
 * message may go out ahead of the waiting ones (a live message while the backlog
 * drains) only when its bucket has nothing waiting; everything else goes in id order
 * from the cursor, the first waiting entry. A lost connection turns every sent entry
 * back into a waiting one (upstream.h says why) and moves the cursor to the head.
 *
 * After a reconnect, entries up to the boundary (the last id before it) are the backlog:
 * they go at most drain_rate per second (a token bucket refilled by the tick timer)
 * and into at most three quarters of the window, so live messages find room.
 * Payloads stay in memory for live messages while the window has room and for what
 * port.read brought back; a waiting entry without one is read from the outbox (work
 * pool) before it is sent. */
#include "gateway/bridge/bridge.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/err.h"
#include "base/list.h"
#include "base/map.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/mqtt/mqtt.h"

#define NBUCKETS 4096
#define RING_MIN 1024
#define MAX_ORIGINS 10000             /* commands from upstreams whose status is tracked */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define TICK_BUSY_MS 10
#define TICK_IDLE_MS 500
#define MAX_AGE_DROPS_PER_TICK 10000
#define DEFAULT_COMMAND_TIMEOUT_MS 60000

enum entry_state { ENTRY_WAITING = 0, ENTRY_SENT = 1, ENTRY_DONE = 2 };
enum drop_reason { DROP_FULL = 0, DROP_AGE = 1, DROP_REFUSED = 2, NDROP_REASONS };
static const char *const drop_names[] = {"full", "age", "refused"};

/* A message in memory: topic and payload in one allocation. */
struct bridge_payload {
    size_t len;
    const char *topic;
    const unsigned char *payload;
    char data[];
};

/* An outbox entry's id and the seq of the write that stores its row. */
struct mark {
    uint64_t id, seq;
};

struct up {
    struct bridge *b;
    const struct bridge_upstream_cfg *cfg;
    void *link;                      /* ops->open's */
    /* the index */
    struct bridge_entry *ring;
    size_t cap, head, count;         /* cap: a power of two */
    size_t cursor;                   /* ring position (from head): nothing waits before it */
    uint64_t next_id;
    uint64_t boundary;               /* ids up to here are the backlog of the last connect */
    uint32_t *waiting_in;            /* waiting entries per bucket */
    uint64_t backlog, backlog_bytes; /* entries not done */
    size_t waiting_qos0;
    size_t inflight;
    size_t mem_msgs, mem_bytes;      /* payloads held */
    bool reading;
    /* Writes of entries entered without a payload that storage has not reported yet, in
     * id (and seq) order: a row a read does not find is missing for good only when its
     * write was reported before the read began (it failed); until then it may commit. */
    struct mark *marks;
    size_t marks_head, marks_len, marks_cap;
    uint64_t read_after;             /* the read in flight: ids after this one */
    uint64_t read_unsettled;         /* ... and from this id on, writes were not reported */
    bool read_hold;                  /* a row was not there yet: read again at the tick */
    /* the connection */
    bool connected, ever_connected;
    char *address;
    uv_timer_t retry;
    uint64_t backoff_ms;
    double tokens;                   /* backlog sends allowed now */
    uint64_t tokens_ms;              /* uv_now of the last refill */
    /* stats */
    uint64_t sent, acked, resent, received, reconnects, dropped[NDROP_REASONS];
    uint64_t drops_unlogged[NDROP_REASONS];
    uint64_t drops_logged_ms;
    /* reason codes: the last CONNACK, the last DISCONNECT from the upstream, the last
     * refused message (code -1: none yet); names are static, the rest heap copies */
    struct bridge_reason connack, disconnect, refused;
    char *refused_topic;
    uint64_t refused_by[256];        /* refused messages per reason code */
    uint8_t refused_logged[32];      /* codes logged since the last connect (bits) */
};

/* A command that came from an upstream: its status goes back there. */
struct origin {
    char id[33];
    char device[DEVICE_ID_MAX + 1];
    struct up *u;
    struct list_link age;
};

struct bridge {
    struct gw *gw;
    const struct bridge_cfg *cfg;
    struct outbox_port port;
    const struct upstream_ops *ops;
    struct bridge_hooks hooks;
    struct up *ups;
    size_t n;
    struct up *down_from;            /* while publishing what came down from it */
    uv_timer_t tick;
    struct map origins;              /* struct origin by id */
    struct list origin_age;          /* oldest first */
    uint64_t cmd_seq;
    bool closed;
};

static void pump(struct up *u);

static void reason_set(struct bridge_reason *r, int code, const char *name,
                       const char *reason_string)
{
    free(r->reason_string);
    r->code = code;
    r->name = name;
    r->reason_string = reason_string ? xstrdup(reason_string) : NULL;
}

/* ---- the index ---- */

static struct bridge_entry *at(const struct up *u, size_t i)
{
    return &u->ring[(u->head + i) & (u->cap - 1)];
}

static void ring_resize(struct up *u, size_t cap)
{
    struct bridge_entry *r = xcalloc(cap, sizeof *r);
    for (size_t i = 0; i < u->count; i++)
        r[i] = *at(u, i);
    free(u->ring);
    u->ring = r;
    u->cap = cap;
    u->head = 0;
}

static struct bridge_entry *push_entry(struct up *u, uint64_t id, int64_t ts_ms, size_t bytes,
                                       uint16_t bucket, uint8_t qos)
{
    struct bridge_entry *e;
    if (u->count == u->cap)
        ring_resize(u, u->cap * 2);
    e = at(u, u->count++);
    *e = (struct bridge_entry){id, ts_ms, NULL, (uint32_t)bytes, bucket, qos, ENTRY_WAITING, 0};
    u->waiting_in[bucket]++;
    u->waiting_qos0 += qos == 0;
    u->backlog++;
    u->backlog_bytes += bytes;
    return e;
}

/* Position of id in the ring, or -1. */
static long find(const struct up *u, uint64_t id)
{
    size_t lo = 0, hi = u->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t v = at(u, mid)->id;
        if (v == id)
            return (long)mid;
        if (v < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static uint16_t bucket_of(const char *device)
{
    return (uint16_t)(map_hash(device ? device : "", device ? strlen(device) : 0) % NBUCKETS);
}

static void set_payload(struct up *u, struct bridge_entry *e, const char *topic,
                        const void *payload, size_t len)
{
    size_t tl = strlen(topic);
    struct bridge_payload *p = xmalloc(sizeof *p + tl + 1 + len);
    memcpy(p->data, topic, tl + 1);
    memcpy(p->data + tl + 1, payload, len);
    p->topic = p->data;
    p->payload = (const unsigned char *)p->data + tl + 1;
    p->len = len;
    e->p = p;
    u->mem_msgs++;
    u->mem_bytes += tl + len;
}

static void drop_payload(struct up *u, struct bridge_entry *e)
{
    if (!e->p)
        return;
    u->mem_msgs--;
    u->mem_bytes -= strlen(e->p->topic) + e->p->len;
    free(e->p);
    e->p = NULL;
}

static void unwait(struct up *u, struct bridge_entry *e)
{
    u->waiting_in[e->bucket]--;
    u->waiting_qos0 -= e->qos == 0;
}

static void rewait(struct up *u, size_t i, struct bridge_entry *e)
{
    e->state = ENTRY_WAITING;
    u->waiting_in[e->bucket]++;
    u->waiting_qos0 += e->qos == 0;
    u->inflight--;
    if (i < u->cursor)
        u->cursor = i;
}

static void finish(struct up *u, struct bridge_entry *e)
{
    if (e->state == ENTRY_WAITING)
        unwait(u, e);
    else if (e->state == ENTRY_SENT)
        u->inflight--;
    e->state = ENTRY_DONE;
    u->backlog--;
    u->backlog_bytes -= e->bytes;
    drop_payload(u, e);
}

/* Removes the done entries at the head; their outbox rows go in one range delete. */
static void collect(struct up *u)
{
    uint64_t first = 0, last = 0;
    while (u->count && at(u, 0)->state == ENTRY_DONE) {
        if (!first)
            first = at(u, 0)->id;
        last = at(u, 0)->id;
        u->head = (u->head + 1) & (u->cap - 1);
        u->count--;
        if (u->cursor)
            u->cursor--;
    }
    if (first)
        u->b->port.del(u->b->port.ctx, u->cfg->name, first, last);
    if (u->cap > RING_MIN && u->count < u->cap / 4) /* give back what a big backlog took */
        ring_resize(u, u->cap / 2);
}

static void drop(struct up *u, size_t i, enum drop_reason why)
{
    struct bridge_entry *e = at(u, i);
    /* at once, so that a restart does not bring it back */
    u->b->port.del(u->b->port.ctx, u->cfg->name, e->id, e->id);
    finish(u, e);
    u->dropped[why]++;
    u->drops_unlogged[why]++;
}

/* First waiting entry from the cursor on (QoS 0 only when qos0), or -1. */
static long first_waiting(struct up *u, bool qos0)
{
    for (size_t i = u->cursor; i < u->count; i++) {
        struct bridge_entry *e = at(u, i);
        if (e->state == ENTRY_WAITING && (!qos0 || e->qos == 0))
            return (long)i;
    }
    return -1;
}

/* Makes room for a message of bytes; false when the message itself is to be dropped. */
static bool make_room(struct up *u, size_t bytes)
{
    const struct bridge_upstream_cfg *c = u->cfg;
    while (u->backlog + 1 > c->max_backlog_messages ||
           u->backlog_bytes + bytes > c->max_backlog_bytes) {
        long i = u->waiting_qos0 ? first_waiting(u, true) : -1;
        if (i < 0 && c->overflow == BRIDGE_DROP_OLDEST && bytes <= c->max_backlog_bytes)
            i = first_waiting(u, false);
        if (i < 0) {
            u->dropped[DROP_FULL]++;
            u->drops_unlogged[DROP_FULL]++;
            return false;
        }
        drop(u, (size_t)i, DROP_FULL);
    }
    collect(u);
    return true;
}

/* ---- sending ---- */

static bool send_entry(struct up *u, struct bridge_entry *e)
{
    const struct bridge_payload *p = e->p;
    if (u->b->ops->send(u->link, e->id, p->topic, p->payload, p->len, e->qos) != 0)
        return false;
    unwait(u, e);
    e->state = ENTRY_SENT;
    u->inflight++;
    u->sent++;
    if (e->resend)
        u->resent++;
    e->resend = 1;
    return true;
}

/* ---- writes not reported yet ---- */

static void mark_unsettled(struct up *u, uint64_t id, uint64_t seq)
{
    if (seq == 0) /* nothing written (no storage) */
        return;
    if (u->marks_head + u->marks_len == u->marks_cap) {
        if (u->marks_head) { /* slide down before growing */
            memmove(u->marks, u->marks + u->marks_head, u->marks_len * sizeof *u->marks);
            u->marks_head = 0;
        }
        if (u->marks_len == u->marks_cap) {
            u->marks_cap = u->marks_cap ? 2 * u->marks_cap : 64;
            u->marks = xrealloc(u->marks, u->marks_cap * sizeof *u->marks);
        }
    }
    u->marks[u->marks_head + u->marks_len++] = (struct mark){id, seq};
}

/* Forgets the marks of writes storage has reported; returns the first id whose write it
 * has not (UINT64_MAX: none). */
static uint64_t first_unsettled(struct up *u)
{
    while (u->marks_len && u->marks[u->marks_head].seq <= u->b->gw->durable_seq) {
        u->marks_head++;
        u->marks_len--;
    }
    if (!u->marks_len) {
        u->marks_head = 0;
        if (u->marks_cap > 1024) {
            free(u->marks);
            u->marks = NULL;
            u->marks_cap = 0;
        }
        return UINT64_MAX;
    }
    return u->marks[u->marks_head].id;
}

/* First ring position with an id above id. */
static size_t after_pos(const struct up *u, uint64_t id)
{
    size_t lo = 0, hi = u->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (at(u, mid)->id <= id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* After a read of the ids after u->read_after: a waiting entry without a payload whose
 * row the page should have held and did not is missing. Its write failed (a storage
 * batch that failed: the message was never acknowledged to its publisher) when storage
 * had reported it before the read began: it leaves the index, else the drain would read
 * it again forever. A write not reported yet may still commit: the drain waits for the
 * tick (no read loop) and reads again. */
static void settle_missing(struct up *u, const struct outbox_msg *msgs, size_t n)
{
    uint64_t end = n ? msgs[n - 1].id : UINT64_MAX, first = 0, last = 0, count = 0;
    size_t k = 0;

    for (size_t i = after_pos(u, u->read_after); i < u->count && at(u, i)->id <= end; i++) {
        struct bridge_entry *e = at(u, i);
        while (k < n && msgs[k].id < e->id)
            k++;
        if ((k < n && msgs[k].id == e->id) || e->state != ENTRY_WAITING || e->p)
            continue;
        if (e->id >= u->read_unsettled) {
            u->read_hold = true;
            break;
        }
        if (!first)
            first = e->id;
        last = e->id;
        count++;
        finish(u, e);
    }
    if (count) {
        log_warn("bridge upstream=%s outbox rows missing count=%llu first_id=%llu "
                 "last_id=%llu: their write failed, dropped from the outbox index",
                 u->cfg->name, (unsigned long long)count, (unsigned long long)first,
                 (unsigned long long)last);
        collect(u);
    }
}

static void on_read(void *ctx, int rc, const struct outbox_msg *msgs, size_t n)
{
    struct up *u = ctx;
    u->reading = false;
    if (u->b->closed)
        return;
    if (rc != 0) {
        log_warn("bridge upstream=%s outbox read failed: %s", u->cfg->name, gw_strerror(rc));
        return; /* the tick tries again */
    }
    for (size_t k = 0; k < n; k++) {
        long i = find(u, msgs[k].id);
        struct bridge_entry *e = i >= 0 ? at(u, (size_t)i) : NULL;
        if (e && e->state == ENTRY_WAITING && !e->p)
            set_payload(u, e, msgs[k].topic, msgs[k].payload, msgs[k].payload_len);
    }
    settle_missing(u, msgs, n);
    pump(u);
}

static void read_from(struct up *u, const struct bridge_entry *e)
{
    size_t msgs = u->mem_msgs < BRIDGE_READAHEAD_MSGS ? BRIDGE_READAHEAD_MSGS - u->mem_msgs : 1;
    size_t bytes = u->mem_bytes < BRIDGE_READAHEAD_BYTES ? BRIDGE_READAHEAD_BYTES - u->mem_bytes
                                                         : 1;
    struct outbox_port *port = &u->b->port;
    u->reading = true;
    u->read_after = e->id - 1;
    u->read_unsettled = first_unsettled(u); /* before the read: what it must find */
    if (port->read(port->ctx, u->cfg->name, e->id - 1, msgs, bytes, on_read, u) != 0)
        u->reading = false;
}

/* Refills the backlog's token bucket (drain_rate per second, 50 ms of burst). */
static void refill(struct up *u)
{
    uint64_t now = uv_now(u->b->gw->loop);
    double cap = u->cfg->drain_rate / 20.0;
    if (cap < 1)
        cap = 1;
    u->tokens += (double)(now - u->tokens_ms) * u->cfg->drain_rate / 1000.0;
    if (u->tokens > cap)
        u->tokens = cap;
    u->tokens_ms = now;
}

/* Sends waiting entries in id order from the cursor while the window, the drain rate and
 * the payloads in memory allow. */
static void pump(struct up *u)
{
    size_t max = u->cfg->max_inflight, backlog_max = max - max / 4;

    if (!u->connected || u->b->closed)
        return;
    refill(u);
    while (u->cursor < u->count && at(u, u->cursor)->state != ENTRY_WAITING)
        u->cursor++;
    for (size_t i = u->cursor; i < u->count && u->inflight < max; i++) {
        struct bridge_entry *e = at(u, i);
        bool old = e->id <= u->boundary;
        if (e->state != ENTRY_WAITING)
            continue;
        if (old && (u->inflight >= backlog_max || (u->cfg->drain_rate && u->tokens < 1)))
            break;
        if (!e->p) {
            if (!u->reading && !u->read_hold)
                read_from(u, e);
            break;
        }
        if (!send_entry(u, e))
            break;
        if (old && u->cfg->drain_rate)
            u->tokens -= 1;
    }
}

/* Enters one message into u's outbox (its write joins t) and sends it when it may go at
 * once. */
static void enqueue(struct up *u, const char *device, const char *topic, const void *payload,
                    size_t len, struct ticket *t)
{
    size_t bytes = strlen(topic) + len;
    uint16_t bucket = bucket_of(device);
    bool may_send;
    struct bridge_entry *e;
    struct outbox_msg om;
    uint64_t seq;

    if (!make_room(u, bytes))
        return;
    /* nothing of this device waits before it: it may overtake the backlog */
    may_send = u->connected && u->waiting_in[bucket] == 0 && u->inflight < u->cfg->max_inflight;
    om = (struct outbox_msg){u->next_id++, device ? device : "", topic, payload, len,
                             u->cfg->qos, gw_now_ms()};
    seq = u->b->port.put(u->b->port.ctx, u->cfg->name, &om);
    ticket_add(t, seq);
    e = push_entry(u, om.id, om.ts_ms, bytes, bucket, om.qos);
    if (may_send || (u->mem_msgs < BRIDGE_READAHEAD_MSGS / 2 &&
                     u->mem_bytes < BRIDGE_READAHEAD_BYTES / 2))
        set_payload(u, e, topic, payload, len);
    else
        mark_unsettled(u, om.id, seq); /* to be read back: its row may not be there yet */
    if (may_send && send_entry(u, e))
        return;
    if (u->connected)
        pump(u);
}

/* ---- events from the link ---- */

static void on_connected(void *ctx, const char *uri, bool session_present)
{
    struct up *u = ctx;
    const struct bridge_upstream_cfg *c = u->cfg;
    size_t plen = strlen(c->remote_prefix);
    char **filters = xcalloc(c->nsubscribe + 1, sizeof *filters);

    u->connected = true;
    free(u->address);
    u->address = xstrdup(uri);
    if (u->ever_connected)
        u->reconnects++;
    u->ever_connected = true;
    u->backoff_ms = BACKOFF_MIN_MS;
    u->boundary = u->next_id - 1;
    u->tokens = 0;
    u->tokens_ms = uv_now(u->b->gw->loop);
    memset(u->refused_logged, 0, sizeof u->refused_logged);
    log_info("bridge connected upstream=%s address=%s protocol=%s session_present=%d "
             "backlog=%llu", c->name, uri, c->protocol == 5 ? "5" : "3.1.1", session_present,
             (unsigned long long)u->backlog);
    for (size_t i = 0; i < c->nsubscribe; i++) {
        size_t fl = strlen(c->subscribe[i]);
        filters[i] = xmalloc(plen + fl + 1);
        memcpy(filters[i], c->remote_prefix, plen);
        memcpy(filters[i] + plen, c->subscribe[i], fl + 1);
    }
    if (c->nsubscribe && u->b->ops->subscribe(u->link, filters, c->nsubscribe, c->qos) != 0)
        log_warn("bridge upstream=%s subscribe failed", c->name);
    for (size_t i = 0; i < c->nsubscribe; i++)
        free(filters[i]);
    free(filters);
    pump(u);
}

static void on_retry(uv_timer_t *t)
{
    struct up *u = t->data;
    if (!u->b->closed && !u->connected)
        u->b->ops->connect(u->link);
}

static void on_lost(void *ctx, const char *reason)
{
    struct up *u = ctx;
    uint64_t delay;

    if (u->connected) {
        log_warn("bridge connection lost upstream=%s reason=\"%s\"", u->cfg->name,
                 log_q(reason));
        /* everything unacknowledged goes again, oldest first */
        for (size_t i = 0; i < u->count && u->inflight; i++)
            if (at(u, i)->state == ENTRY_SENT)
                rewait(u, i, at(u, i));
        u->cursor = 0;
    } else {
        log_warn("bridge connect failed upstream=%s reason=\"%s\" retry_ms=%llu", u->cfg->name,
                 log_q(reason), (unsigned long long)u->backoff_ms);
    }
    u->connected = false;
    free(u->address);
    u->address = NULL;
    /* 1 s doubling to 30 s, each wait between half and all of it */
    delay = u->backoff_ms / 2 + (uint64_t)rand() % (u->backoff_ms / 2 + 1);
    u->backoff_ms = u->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : u->backoff_ms * 2;
    if (!u->b->closed)
        uv_timer_start(&u->retry, on_retry, delay, 0);
}

static void on_delivered(void *ctx, uint64_t tag, bool ok)
{
    struct up *u = ctx;
    long i = find(u, tag);
    struct bridge_entry *e = i >= 0 ? at(u, (size_t)i) : NULL;

    if (!e || e->state == ENTRY_DONE)
        return; /* a second copy's ack */
    if (ok) {
        u->acked++;
        finish(u, e);
        collect(u);
    } else if (e->state == ENTRY_SENT) {
        rewait(u, (size_t)i, e);
    }
    pump(u);
}

/* MQTT 5: the upstream will not take the message (PUBACK/PUBREC >= 0x80). Sending it
 * again would get the same answer and hold up the window: it leaves the outbox, counted
 * as dropped "refused" and per reason code; the first refusal of each code after a
 * connect is logged with its topic, the rest are counted in the drop log. */
static void on_refused(void *ctx, uint64_t tag, int code, const char *name,
                       const char *reason_string)
{
    struct up *u = ctx;
    long i = find(u, tag);
    struct bridge_entry *e = i >= 0 ? at(u, (size_t)i) : NULL;
    const char *topic;
    uint8_t c = (uint8_t)code;

    if (!e || e->state == ENTRY_DONE)
        return; /* a second copy's answer */
    topic = e->p ? e->p->topic : NULL;
    reason_set(&u->refused, code, name, reason_string);
    free(u->refused_topic);
    u->refused_topic = topic ? xstrdup(topic) : NULL;
    u->refused_by[c]++;
    if (!(u->refused_logged[c / 8] & (1u << (c % 8)))) {
        u->refused_logged[c / 8] |= (uint8_t)(1u << (c % 8));
        log_warn("bridge refused upstream=%s reason=0x%02X (%s) reason_string=\"%s\" "
                 "topic=\"%s\": dropped from the outbox", u->cfg->name, (unsigned)c, name,
                 log_q(reason_string ? reason_string : ""), log_q(topic ? topic : ""));
    }
    drop(u, (size_t)i, DROP_REFUSED);
    collect(u);
    pump(u);
}

static void on_reason(void *ctx, enum upstream_packet what, int code, const char *name,
                      const char *reason_string)
{
    struct up *u = ctx;
    reason_set(what == UPSTREAM_CONNACK ? &u->connack : &u->disconnect, code, name,
               reason_string);
}

static struct origin *origin_add(struct bridge *b, struct up *u, const char *id,
                                 const char *device)
{
    struct origin *o = xcalloc(1, sizeof *o);
    snprintf(o->id, sizeof o->id, "%s", id);
    snprintf(o->device, sizeof o->device, "%s", device);
    o->u = u;
    map_put(&b->origins, o->id, strlen(o->id), o);
    list_push_back(&b->origin_age, &o->age);
    while (b->origin_age.len > MAX_ORIGINS) {
        struct origin *old = list_entry(b->origin_age.head, struct origin, age);
        list_remove(&b->origin_age, &old->age);
        map_del(&b->origins, old->id, strlen(old->id));
        free(old);
    }
    return o;
}

static void origin_remove(struct bridge *b, struct origin *o)
{
    list_remove(&b->origin_age, &o->age);
    map_del(&b->origins, o->id, strlen(o->id));
    free(o);
}

static bool id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* devices/<id>/commands for a local device: a command. Returns false when the message
 * is not one (it is then published as a plain message). */
static bool take_command(struct up *u, const char *local, const void *payload, size_t len)
{
    struct bridge *b = u->b;
    char device[DEVICE_ID_MAX + 1], idbuf[33];
    const char *rest;
    cJSON *js, *name, *id, *params, *tmo;
    char *params_json = NULL;
    struct origin *o = NULL;
    int64_t timeout_ms = DEFAULT_COMMAND_TIMEOUT_MS;
    size_t dl;
    int rc;

    if (!b->hooks.command || strncmp(local, "devices/", 8) != 0)
        return false;
    rest = strchr(local + 8, '/');
    if (!rest || strcmp(rest, "/commands") != 0 || (dl = (size_t)(rest - local - 8)) == 0 ||
        dl > DEVICE_ID_MAX)
        return false;
    memcpy(device, local + 8, dl);
    device[dl] = '\0';
    if (!b->gw->devices || !devices_find(b->gw->devices, device))
        return false;
    js = cJSON_ParseWithLength(payload, len);
    name = cJSON_GetObjectItemCaseSensitive(js, "name");
    id = cJSON_GetObjectItemCaseSensitive(js, "id");
    params = cJSON_GetObjectItemCaseSensitive(js, "params");
    tmo = cJSON_GetObjectItemCaseSensitive(js, "timeout_s");
    if (!cJSON_IsObject(js) || !cJSON_IsString(name) || (id && !cJSON_IsString(id)) ||
        (id && !id_valid(id->valuestring)) ||
        /* the range before the conversion: a huge double must not reach int64_t (UB) */
        (tmo && !(cJSON_IsNumber(tmo) && tmo->valuedouble > 0 && tmo->valuedouble <= 604800))) {
        log_warn("bridge upstream=%s device=%s command refused: want {\"id\"?,\"name\","
                 "\"params\"?,\"timeout_s\"? (0..604800)}", u->cfg->name, device);
        cJSON_Delete(js);
        return true;
    }
    if (id) {
        snprintf(idbuf, sizeof idbuf, "%s", id->valuestring);
    } else { /* ours, so the status hook can find it from the first change on */
        snprintf(idbuf, sizeof idbuf, "b%015llx%08llx", (unsigned long long)gw_now_ms(),
                 (unsigned long long)(++b->cmd_seq ^ ((uint64_t)rand() << 12)) & 0xffffffffULL);
    }
    if (tmo)
        timeout_ms = (int64_t)(tmo->valuedouble * 1000);
    if (params)
        params_json = cJSON_PrintUnformatted(params);
    if (!map_get(&b->origins, idbuf, strlen(idbuf)))
        o = origin_add(b, u, idbuf, device);
    b->down_from = u;
    rc = b->hooks.command(b->hooks.ctx, device, idbuf, name->valuestring, params_json,
                          timeout_ms);
    b->down_from = NULL;
    if (rc != 0 && rc != GW_EEXIST) {
        log_warn("bridge upstream=%s device=%s command=%s refused: %s", u->cfg->name, device,
                 idbuf, gw_strerror(rc));
        if (o && map_get(&b->origins, idbuf, strlen(idbuf)) == o)
            origin_remove(b, o);
    }
    cJSON_free(params_json);
    cJSON_Delete(js);
    return true;
}

static void on_message(void *ctx, const char *topic, const void *payload, size_t len,
                       uint8_t qos, bool retain)
{
    struct up *u = ctx;
    struct bridge *b = u->b;
    size_t plen = strlen(u->cfg->remote_prefix);
    const char *local = strncmp(topic, u->cfg->remote_prefix, plen) == 0 ? topic + plen : topic;
    struct msg *m;

    u->received++;
    if (!local[0] || take_command(u, local, payload, len))
        return;
    m = msg_new(MSG_PLAIN, NULL, local, payload, len, NULL, 0);
    m->ts_ms = gw_now_ms();
    m->qos = qos;
    m->retain = retain;
    b->down_from = u; /* never sent back up to where it came from */
    bus_publish(b->gw->bus, m, NULL);
    b->down_from = NULL;
    msg_unref(m);
}

static const struct upstream_events events = {on_connected, on_lost,   on_delivered,
                                              on_message,   on_refused, on_reason};

/* ---- the timer ---- */

static void drop_old(struct up *u)
{
    int64_t cutoff = gw_now_ms() - u->cfg->max_age_s * 1000;
    size_t n = 0;
    for (size_t i = 0; i < u->count && n < MAX_AGE_DROPS_PER_TICK; i++) {
        struct bridge_entry *e = at(u, i);
        if (e->ts_ms >= cutoff)
            break;
        if (e->state == ENTRY_WAITING) {
            drop(u, i, DROP_AGE);
            n++;
        }
    }
    if (n)
        collect(u);
}

static void log_drops(struct up *u)
{
    uint64_t now = gw_mono_ms();
    if (now - u->drops_logged_ms < 1000)
        return;
    for (int r = 0; r < NDROP_REASONS; r++) {
        if (!u->drops_unlogged[r])
            continue;
        log_warn("bridge dropped upstream=%s reason=%s count=%llu", u->cfg->name, drop_names[r],
                 (unsigned long long)u->drops_unlogged[r]);
        u->drops_unlogged[r] = 0;
        u->drops_logged_ms = now;
    }
}

static void on_tick(uv_timer_t *t);

void bridge_tick(struct bridge *b)
{
    bool busy = false;
    for (size_t i = 0; i < b->n; i++) {
        struct up *u = &b->ups[i];
        if (u->cfg->max_age_s)
            drop_old(u);
        log_drops(u);
        first_unsettled(u); /* forgets the marks of reported writes (also while down) */
        u->read_hold = false;
        pump(u);
        busy |= u->connected && u->backlog > u->inflight;
    }
    if (!b->closed)
        uv_timer_start(&b->tick, on_tick, busy ? TICK_BUSY_MS : TICK_IDLE_MS, 0);
}

static void on_tick(uv_timer_t *t)
{
    bridge_tick(t->data);
}

/* ---- up: the bus sink ---- */

/* {"device":..,"ts":..,"values":{..}} of a telemetry message. */
static void normalize(const struct msg *m, struct buf *out)
{
    buf_append_str(out, "{\"device\":");
    buf_append_json_str(out, m->device, strlen(m->device));
    buf_printf(out, ",\"ts\":%lld,\"values\":{",
               (long long)(m->npoints ? m->points[0].ts_ms : m->ts_ms));
    for (size_t i = 0; i < m->npoints; i++) {
        const struct point *p = &m->points[i];
        if (i)
            buf_append_str(out, ",");
        buf_append_json_str(out, p->key, strlen(p->key));
        buf_append_str(out, ":");
        if (p->type == VAL_NUM)
            buf_printf(out, "%.17g", p->num);
        else if (p->type == VAL_BOOL)
            buf_append_str(out, p->num != 0 ? "true" : "false");
        else if (p->type == VAL_STR)
            buf_append_json_str(out, p->str, p->str_len);
        else
            buf_append(out, p->str, p->str_len);
    }
    buf_append_str(out, "}}");
}

void bridge_sink(void *ctx, struct msg *m, struct ticket *t)
{
    struct bridge *b = ctx;
    struct buf topic, body;
    size_t tlen = strlen(m->topic);

    /* also after bridge_close: what is still published goes into the outbox */
    buf_init(&topic);
    buf_init(&body);
    for (size_t i = 0; i < b->n; i++) {
        struct up *u = &b->ups[i];
        const struct bridge_upstream_cfg *c = u->cfg;
        size_t f;
        if (u == b->down_from)
            continue;
        for (f = 0; f < c->nforward; f++)
            if (mqtt_topic_matches(c->forward[f], strlen(c->forward[f]), m->topic, tlen))
                break;
        if (f == c->nforward)
            continue;
        buf_shrink(&topic, 0);
        buf_append_str(&topic, c->remote_prefix);
        buf_append_str(&topic, m->topic);
        if (c->format == BRIDGE_FORMAT_NORMALIZED && m->kind == MSG_TELEMETRY) {
            buf_shrink(&body, 0);
            normalize(m, &body);
            enqueue(u, m->device, buf_cstr(&topic), body.data, body.len, t);
        } else {
            enqueue(u, m->device, buf_cstr(&topic), m->payload, m->payload_len, t);
        }
    }
    buf_fini(&topic);
    buf_fini(&body);
}

void bridge_command_status(struct bridge *b, const char *device, const char *cmd_id,
                           const char *status, const char *reply_json)
{
    struct origin *o = b ? map_get(&b->origins, cmd_id, strlen(cmd_id)) : NULL;
    struct buf topic, body;

    if (!o || strcmp(o->device, device) != 0)
        return;
    buf_init(&topic);
    buf_init(&body);
    buf_printf(&topic, "%sdevices/%s/commands/%s/status", o->u->cfg->remote_prefix, device,
               cmd_id);
    buf_append_str(&body, "{\"id\":");
    buf_append_json_str(&body, cmd_id, strlen(cmd_id));
    buf_append_str(&body, ",\"status\":");
    buf_append_json_str(&body, status, strlen(status));
    if (reply_json) {
        buf_append_str(&body, ",\"reply\":");
        buf_append_str(&body, reply_json);
    }
    buf_append_str(&body, "}");
    enqueue(o->u, device, buf_cstr(&topic), body.data, body.len, NULL);
    if (strcmp(status, "replied") == 0 || strcmp(status, "expired") == 0)
        origin_remove(b, o);
    buf_fini(&topic);
    buf_fini(&body);
}

/* ---- stats ---- */

size_t bridge_count(const struct bridge *b)
{
    return b ? b->n : 0;
}

void bridge_get_stats(const struct bridge *b, size_t i, struct bridge_stats *out)
{
    const struct up *u = &b->ups[i];
    int64_t oldest = 0;
    for (size_t k = 0; k < u->count; k++)
        if (at(u, k)->state != ENTRY_DONE) {
            oldest = at(u, k)->ts_ms;
            break;
        }
    *out = (struct bridge_stats){
        .name = u->cfg->name, .connected = u->connected, .address = u->address,
        .backlog = u->backlog, .backlog_bytes = u->backlog_bytes,
        .oldest_age_s = oldest ? (double)(gw_now_ms() - oldest) / 1000.0 : 0,
        .inflight = u->inflight, .sent_total = u->sent, .acked_total = u->acked,
        .resent_total = u->resent, .received_total = u->received,
        .reconnects_total = u->reconnects, .dropped_full = u->dropped[DROP_FULL],
        .dropped_age = u->dropped[DROP_AGE], .dropped_refused = u->dropped[DROP_REFUSED],
        .protocol = u->cfg->protocol == 5 ? "5" : "3.1.1", .connack = u->connack,
        .disconnect = u->disconnect, .refused = u->refused, .refused_topic = u->refused_topic,
        .refused_by = u->refused_by,
    };
    if (out->oldest_age_s < 0)
        out->oldest_age_s = 0;
}

/* {"code","name","reason_string"(,"topic")} or null */
static void reason_json(struct buf *out, const struct bridge_reason *r, const char *topic)
{
    if (r->code < 0) {
        buf_append_str(out, "null");
        return;
    }
    buf_printf(out, "{\"code\":%d,\"hex\":\"0x%02X\",\"name\":", r->code, (unsigned)r->code);
    buf_append_json_str(out, r->name, strlen(r->name));
    buf_append_str(out, ",\"reason_string\":");
    if (r->reason_string)
        buf_append_json_str(out, r->reason_string, strlen(r->reason_string));
    else
        buf_append_str(out, "null");
    if (topic) {
        buf_append_str(out, ",\"topic\":");
        buf_append_json_str(out, topic, strlen(topic));
    }
    buf_append_str(out, "}");
}

void bridge_write_json(void *ctx, struct buf *out)
{
    struct bridge *b = ctx;
    struct bridge_stats s;
    buf_append_str(out, "[");
    for (size_t i = 0; i < bridge_count(b); i++) {
        bridge_get_stats(b, i, &s);
        if (i)
            buf_append_str(out, ",");
        buf_append_str(out, "{\"name\":");
        buf_append_json_str(out, s.name, strlen(s.name));
        buf_printf(out, ",\"connected\":%s,\"address\":", s.connected ? "true" : "false");
        if (s.address)
            buf_append_json_str(out, s.address, strlen(s.address));
        else
            buf_append_str(out, "null");
        buf_printf(out,
                   ",\"backlog\":%llu,\"backlog_bytes\":%llu,\"oldest_age_s\":%.3f,"
                   "\"inflight\":%llu,\"sent_total\":%llu,\"acked_total\":%llu,"
                   "\"resent_total\":%llu,\"received_total\":%llu,\"reconnects_total\":%llu,"
                   "\"dropped_total\":%llu,\"dropped\":{\"full\":%llu,\"age\":%llu,"
                   "\"refused\":%llu}",
                   (unsigned long long)s.backlog, (unsigned long long)s.backlog_bytes,
                   s.oldest_age_s, (unsigned long long)s.inflight,
                   (unsigned long long)s.sent_total, (unsigned long long)s.acked_total,
                   (unsigned long long)s.resent_total, (unsigned long long)s.received_total,
                   (unsigned long long)s.reconnects_total,
                   (unsigned long long)(s.dropped_full + s.dropped_age + s.dropped_refused),
                   (unsigned long long)s.dropped_full, (unsigned long long)s.dropped_age,
                   (unsigned long long)s.dropped_refused);
        buf_printf(out, ",\"protocol\":\"%s\",\"connack\":", s.protocol);
        reason_json(out, &s.connack, NULL);
        buf_append_str(out, ",\"disconnect\":");
        reason_json(out, &s.disconnect, NULL);
        buf_append_str(out, ",\"refused\":{");
        for (int c = 0, n = 0; c < 256; c++)
            if (s.refused_by[c])
                buf_printf(out, "%s\"0x%02X\":%llu", n++ ? "," : "", (unsigned)c,
                           (unsigned long long)s.refused_by[c]);
        buf_append_str(out, "},\"last_refused\":");
        reason_json(out, &s.refused, s.refused_topic);
        buf_append_str(out, "}");
    }
    buf_append_str(out, "]");
}

void bridge_write_metrics(void *ctx, struct buf *out)
{
    struct bridge *b = ctx;
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"gale_bridge_connected", "gauge", "1 while the upstream is connected."},
        {"gale_bridge_backlog_messages", "gauge", "Messages in the upstream's outbox."},
        {"gale_bridge_backlog_bytes", "gauge", "Topic and payload bytes in the outbox."},
        {"gale_bridge_oldest_age_seconds", "gauge", "Age of the oldest outbox message."},
        {"gale_bridge_sent_total", "counter", "PUBLISH packets sent upstream."},
        {"gale_bridge_acked_total", "counter", "Messages the upstream acknowledged."},
        {"gale_bridge_dropped_total", "counter", "Outbox messages dropped, by reason."},
        {"gale_bridge_reconnects_total", "counter", "Connections after the first."},
        {"gale_bridge_received_total", "counter", "Messages received from the upstream."},
        {"gale_bridge_resent_total", "counter", "Messages sent again after a lost connection."},
        {"gale_bridge_inflight", "gauge", "Messages sent and not yet acknowledged."},
        {"gale_bridge_connack_reason_code", "gauge",
         "Reason code of the last CONNACK (0 accepted); -1 before any."},
        {"gale_bridge_refused_total", "counter",
         "Messages the upstream refused (MQTT 5 PUBACK/PUBREC reason code >= 0x80), by code."},
    };
    struct bridge_stats s;
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name,
                   fam[f].type);
        for (size_t i = 0; i < bridge_count(b); i++) {
            double v[] = {0};
            bridge_get_stats(b, i, &s);
            switch (f) {
            case 0: v[0] = s.connected; break;
            case 1: v[0] = (double)s.backlog; break;
            case 2: v[0] = (double)s.backlog_bytes; break;
            case 3: v[0] = s.oldest_age_s; break;
            case 4: v[0] = (double)s.sent_total; break;
            case 5: v[0] = (double)s.acked_total; break;
            case 6:
                buf_printf(out, "%s{upstream=\"%s\",reason=\"full\"} %llu\n", fam[f].name, s.name,
                           (unsigned long long)s.dropped_full);
                buf_printf(out, "%s{upstream=\"%s\",reason=\"age\"} %llu\n", fam[f].name, s.name,
                           (unsigned long long)s.dropped_age);
                buf_printf(out, "%s{upstream=\"%s\",reason=\"refused\"} %llu\n", fam[f].name,
                           s.name, (unsigned long long)s.dropped_refused);
                continue;
            case 7: v[0] = (double)s.reconnects_total; break;
            case 8: v[0] = (double)s.received_total; break;
            case 9: v[0] = (double)s.resent_total; break;
            case 10: v[0] = (double)s.inflight; break;
            case 11: v[0] = s.connack.code; break;
            default:
                for (int c = 0; c < 256; c++)
                    if (s.refused_by[c])
                        buf_printf(out, "%s{upstream=\"%s\",code=\"0x%02X\"} %llu\n",
                                   fam[f].name, s.name, (unsigned)c,
                                   (unsigned long long)s.refused_by[c]);
                continue;
            }
            if (v[0] == (double)(int64_t)v[0])
                buf_printf(out, "%s{upstream=\"%s\"} %lld\n", fam[f].name, s.name,
                           (long long)v[0]);
            else
                buf_printf(out, "%s{upstream=\"%s\"} %.3f\n", fam[f].name, s.name, v[0]);
        }
    }
}

/* ---- lifecycle ---- */

static void on_index_entry(void *ctx, const struct outbox_msg *m)
{
    struct up *u = ctx;
    if (u->count && m->id <= at(u, u->count - 1)->id)
        return; /* the port promises ascending ids; keep the ring sorted regardless */
    push_entry(u, m->id, m->ts_ms, strlen(m->topic) + m->payload_len, bucket_of(m->device),
               m->qos);
    u->next_id = m->id + 1;
}

static void up_fini(struct up *u)
{
    for (size_t k = 0; k < u->count; k++)
        free(at(u, k)->p);
    free(u->ring);
    free(u->waiting_in);
    free(u->address);
    free(u->marks);
    free(u->connack.reason_string);
    free(u->disconnect.reason_string);
    free(u->refused.reason_string);
    free(u->refused_topic);
}

struct bridge *bridge_new(struct gw *gw, const struct bridge_cfg *cfg,
                          const struct outbox_port *port, const struct upstream_ops *ops,
                          const struct bridge_hooks *hooks)
{
    struct bridge *b = xcalloc(1, sizeof *b);
    char err[512];

    b->gw = gw;
    b->cfg = cfg;
    b->port = *port;
    b->ops = ops;
    if (hooks)
        b->hooks = *hooks;
    map_init(&b->origins);
    b->n = cfg->n;
    b->ups = xcalloc(b->n + 1, sizeof *b->ups);
    /* the indexes first: a failure there leaves no handle to close */
    for (size_t i = 0; i < b->n; i++) {
        struct up *u = &b->ups[i];
        u->b = b;
        u->cfg = &cfg->ups[i];
        u->cap = RING_MIN;
        u->ring = xcalloc(u->cap, sizeof *u->ring);
        u->waiting_in = xcalloc(NBUCKETS, sizeof *u->waiting_in);
        u->next_id = 1;
        u->backoff_ms = BACKOFF_MIN_MS;
        u->connack.code = u->disconnect.code = u->refused.code = -1;
        if (port->load_index(port->ctx, u->cfg->name, on_index_entry, u) != 0) {
            log_error("bridge upstream=%s: cannot load the outbox", u->cfg->name);
            for (size_t k = 0; k <= i; k++)
                up_fini(&b->ups[k]);
            free(b->ups);
            map_fini(&b->origins);
            free(b);
            return NULL;
        }
        u->boundary = u->next_id - 1;
    }
    uv_timer_init(gw->loop, &b->tick);
    b->tick.data = b;
    uv_unref((uv_handle_t *)&b->tick);
    for (size_t i = 0; i < b->n; i++) {
        struct up *u = &b->ups[i];
        uv_timer_init(gw->loop, &u->retry);
        u->retry.data = u;
        uv_unref((uv_handle_t *)&u->retry);
        /* config checks make this fail only on resources; the outbox keeps filling */
        if ((u->link = ops->open(gw->loop, u->cfg, &events, u, err, sizeof err)) == NULL)
            log_error("%s", err);
        else
            ops->connect(u->link);
        log_info("bridge upstream=%s addresses=%zu backlog=%llu bytes=%llu", u->cfg->name,
                 u->cfg->naddresses, (unsigned long long)u->backlog,
                 (unsigned long long)u->backlog_bytes);
    }
    uv_timer_start(&b->tick, on_tick, TICK_IDLE_MS, 0);
    return b;
}

void bridge_close(struct bridge *b)
{
    if (!b || b->closed)
        return;
    b->closed = true;
    for (size_t i = 0; i < b->n; i++) {
        struct up *u = &b->ups[i];
        u->connected = false;
        if (u->link)
            b->ops->close(u->link);
        uv_close((uv_handle_t *)&u->retry, NULL);
    }
    uv_close((uv_handle_t *)&b->tick, NULL);
}

void bridge_free(struct bridge *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++) {
        if (b->ups[i].link)
            b->ops->free(b->ups[i].link);
        up_fini(&b->ups[i]);
    }
    free(b->ups);
    while (b->origin_age.head) {
        struct origin *o = list_entry(b->origin_age.head, struct origin, age);
        list_remove(&b->origin_age, &o->age);
        free(o);
    }
    map_fini(&b->origins);
    free(b);
}
