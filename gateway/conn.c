/* gateway/conn.c: connection objects, the registry of live connections, the
 * send path, auth/idle timers and durable waiters. Loop thread only.
 *
 * Reads land in one loop-wide buffer (the registry's, 64 KiB): on_alloc hands it to
 * every read, and take_input lends it to the connection as c->in (c->x->raw under a
 * transport) while the protocol decodes and consumes. Only the unconsumed tail of a
 * partial frame is copied into memory of the connection's own, which is freed once it
 * is drained: an idle connection holds no input buffer. What a callback sends a
 * connection is staged and written with one write() when the callback is over (see
 * "staged output"); a write tries uv_try_write() first and queues only what the kernel
 * did not take, in a request allocated for that write and freed by its callback. Auth
 * and idle deadlines sit in one min-heap of the registry under a single uv_timer_t armed
 * for the earliest (a uv_timer_t each would cost 152 bytes a connection); a connection's
 * deadline is the auth deadline, then the idle one, re-armed lazily from the time of the
 * last read, so a busy connection does not touch the heap per read. While storage pushes
 * back, an ingest connection is held: it stops reading (or, when its protocol defers
 * ingest itself, reads only up to ingest_hold_bytes) and its idle clock stands still
 * until the release.
 *
 * Lifetime: conn_close marks a connection closing and closes its socket; its protocol
 * and transport state are released in the socket's close callback (on_close), which libuv
 * runs in the loop's close phase, after whatever callback closed it has returned. A
 * failed write is a close like any other. One rule instead of a guard in every protocol:
 * a connection can close inside any write, any write happens deep inside some protocol's
 * handler, and the handler up the stack still holds pointers into that state.
 *
 * The registry keeps two lists: live connections, and those with durable waiters
 * (whose ring, allocated on the first wait, carries the link).
 * Where each running walk goes next is kept in the registry (a slot per walk), so
 * conn_close, which unlinks a connection at once, moves every walk about to visit it
 * on to the next one: code called during a walk may close any connection. */
#include "gateway/conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/proxy.h"
#include "gateway/tls.h"
#include "base/alloc.h"
#include "base/clock.h"

#define READ_CHUNK 65536

struct write_req {
    uv_write_t req;
    struct conn *c;
    size_t len;
    char data[];
};

/* A connection's durable waiters: a FIFO ring, and its link in the registry's list of
 * connections with waiters. Kept from the first wait until the connection is freed; the
 * ring grows apart from the link, which a running walk may be standing on. */
struct conn_waiters {
    struct list_link link;           /* in the registry's waiting list while n > 0 */
    struct conn *c;
    uint32_t n, head, cap;
    struct conn_waiter *ring;
};

static void on_close(uv_handle_t *h);
static void write_socket(struct conn *c, const void *data, size_t len);
static void write_now(struct conn *c, const void *data, size_t len);
static void stage_start(struct conn_registry *r, uv_loop_t *loop);
static void stage_flush_all(struct conn_registry *r);
static void take_input(struct conn *c, size_t n);

/* ---- TLS hook points (gateway/tls.h): records in on read, out on send and close ---- */

/* Writes what TLS has for the socket (handshake, records, alerts). */
static void flush_tls(struct conn *c)
{
    const void *p;
    size_t n = tls_conn_output(c->x->tls, &p);
    if (n) {
        write_socket(c, p, n);
        tls_conn_output_done(c->x->tls);
    }
}

/* A read of n ciphertext bytes at p, the start of the loop-wide read buffer: TLS takes
 * them and decrypts into that same buffer (the plaintext of a record is never longer than
 * the record), and each piece goes to the layer above through take_input. All the
 * plaintext they carry is handed on, as a plain read's bytes are: what the layer above
 * leaves (paused, held) is kept by keep_input, none stays behind in OpenSSL. */
static void read_tls(struct conn *c, uint8_t *p, size_t n)
{
    const char *why = NULL;
    size_t len;
    int rc = tls_conn_read(c->x->tls, p, n, p, READ_CHUNK, &len, &why);

    for (;;) {
        flush_tls(c); /* the answer to a handshake flight, or the alert of a failure */
        if (len && !c->closing)
            take_input(c, len);
        if (rc != TLS_READ_MORE || c->closing)
            break;
        rc = tls_conn_read(c->x->tls, NULL, 0, p, READ_CHUNK, &len, &why);
    }
    /* TLS_READ_CLOSED: the peer's close_notify, after what came before it was served */
    if (rc == TLS_READ_CLOSED || rc == TLS_READ_ERROR)
        conn_close(c, why);
}
/* ---- end of TLS hook points ---- */

/* What a connection that uses none of struct conn_extra points to: read-only, so a write
 * that did not go through conn_extra faults at once. */
static const struct conn_extra no_extra;

struct conn_extra *conn_extra(struct conn *c)
{
    if (c->x == &no_extra)
        c->x = xcalloc(1, sizeof *c->x);
    return c->x;
}

/* Keeps the peer address ss in c (binary: formatted by conn_peer when shown). */
static void set_peer(struct conn *c, const struct sockaddr_storage *ss)
{
    c->peer_family = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        c->peer4 = a->sin_addr.s_addr;
        c->peer_port = ntohs(a->sin_port);
        c->peer_family = 4;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        memcpy(conn_extra(c)->peer6, &a->sin6_addr, sizeof c->x->peer6);
        c->peer_port = ntohs(a->sin6_port);
        c->peer_family = 6;
    }
}

const char *conn_peer(const struct conn *c)
{
    static _Thread_local char slots[CONN_PEER_SLOTS][CONN_PEER_MAX];
    static _Thread_local unsigned next;
    char *out = slots[next++ % CONN_PEER_SLOTS], host[INET6_ADDRSTRLEN] = "?";

    if (c->peer_family == 4) {
        inet_ntop(AF_INET, &c->peer4, host, sizeof host);
        snprintf(out, CONN_PEER_MAX, "%s:%u", host, (unsigned)c->peer_port);
    } else if (c->peer_family == 6) {
        inet_ntop(AF_INET6, c->x->peer6, host, sizeof host);
        snprintf(out, CONN_PEER_MAX, "[%s]:%u", host, (unsigned)c->peer_port);
    } else {
        snprintf(out, CONN_PEER_MAX, "unknown");
    }
    return out;
}

/* ---- the registry ---- */

#define WALKS_MAX 8 /* walks running at once (nested) */

/* Output staged for one connection during a loop iteration (see "Staged output"). */
struct staged {
    struct conn *c;                  /* its connection (the key, kept after it is written) */
    bool live;                       /* false: written (or dropped); a new write takes a new one */
    struct buf b;                    /* bytes in the order they were sent */
};

/* The connections with staged output, in the order they got their first byte, and an
 * index on them (open addressing on the connection's address, 0: empty, else entry + 1).
 * Entries past n keep their memory for the next iterations, up to STAGE_KEEP_BYTES. */
struct staging {
    struct staged *e;
    size_t n, cap;
    uint32_t *slots;
    size_t nslots;                   /* power of two, at least twice n */
    size_t last;                     /* the entry written last + 1 (most writes repeat it) */
};

struct conn_registry {
    struct list all;                 /* live connections, newest first (reg_link) */
    struct list waiting;             /* connections with durable waiters (their link) */
    struct walk {                    /* running walks: where each goes next */
        const struct list *list;     /* NULL: the slot is free */
        struct list_link *next;
    } walks[WALKS_MAX];
    uint64_t next_id;
    /* connections closed whose close callback has not run yet (reg_link), newest first */
    struct list closing;
    struct {                         /* the write fault seam (conn_registry_fail_writes) */
        uint32_t nth;
        uint32_t p_scaled;           /* probability * 2^32, 0: off */
        uint64_t rng;
    } fail;
    struct conn **heap;              /* deadline min-heap on due_ms (conn->due_slot) */
    size_t nheap, heap_cap;
    uv_timer_t timer;                /* fires at heap[0]'s deadline */
    bool timer_ready;                /* timer initialised (on the first deadline) */
    /* the loop-wide read buffer (READ_CHUNK bytes): lent as the input of one connection
     * at a time, from its read until take_input returns */
    uint8_t *rbuf;
    struct staging st;               /* output of this loop iteration, per connection */
    uv_check_t flush_check;          /* writes it after the iteration's I/O callbacks */
    uv_prepare_t flush_prepare;      /* ...and before the loop waits for I/O again */
    bool flush_ready;                /* both initialised (with the first connection) */
    bool write_direct;               /* conn_registry_write_direct: nothing is staged */
};

struct conn_registry *conn_registry_new(void)
{
    struct conn_registry *r = xcalloc(1, sizeof *r);
    r->rbuf = xmalloc(READ_CHUNK);
    return r;
}

void conn_registry_free(struct conn_registry *r)
{
    if (!r)
        return;
    assert(r->all.len == 0 && r->waiting.len == 0);
    for (int i = 0; i < WALKS_MAX; i++)
        assert(r->walks[i].list == NULL);
    for (size_t i = 0; i < r->st.cap; i++)
        buf_fini(&r->st.e[i].b);
    free(r->st.e);
    free(r->st.slots);
    free(r->heap);
    free(r->rbuf);
    free(r);
}

size_t conn_registry_count(const struct conn_registry *r)
{
    return r->all.len;
}

size_t conn_registry_closing(const struct conn_registry *r)
{
    return r->closing.len;
}

/* ---- the write fault seam (tests only; off unless GALE_TEST_FAIL_WRITES is set) ---- */

void conn_registry_fail_writes(struct conn_registry *r, uint32_t nth, double p, uint64_t seed)
{
    r->fail.nth = nth;
    r->fail.p_scaled = p <= 0 ? 0 : p >= 1 ? UINT32_MAX : (uint32_t)(p * 4294967296.0);
    r->fail.rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

int conn_fail_writes_parse(const char *spec, uint32_t *nth, double *p, uint64_t *seed)
{
    char *end;
    *nth = 0;
    *p = 0;
    *seed = 0;
    if (strncmp(spec, "p=", 2) == 0) {
        *p = strtod(spec + 2, &end);
        if (end == spec + 2 || !(*p >= 0 && *p <= 1))
            return -1;
        if (strncmp(end, ",seed=", 6) == 0) {
            const char *s = end + 6;
            *seed = strtoull(s, &end, 10);
            if (end == s)
                return -1;
        }
        return *end ? -1 : 0;
    }
    unsigned long n = strtoul(spec, &end, 10);
    if (end == spec || *end || n == 0 || n > UINT32_MAX)
        return -1;
    *nth = (uint32_t)n;
    return 0;
}

/* The error the seam makes this write of c fail with (a reset peer's), or 0. */
static int injected_write_error(struct conn_registry *r, struct conn *c)
{
    bool fail = false;

    if (!r->fail.nth && !r->fail.p_scaled)
        return 0;
    if (++conn_extra(c)->nwrites == r->fail.nth)
        fail = true;
    if (r->fail.p_scaled) { /* xorshift64*: reproducible from the seed */
        r->fail.rng ^= r->fail.rng >> 12;
        r->fail.rng ^= r->fail.rng << 25;
        r->fail.rng ^= r->fail.rng >> 27;
        fail |= (uint32_t)((r->fail.rng * 0x2545F4914F6CDD1DULL) >> 32) < r->fail.p_scaled;
    }
    return fail ? ((c->x->nwrites & 1) ? UV_EPIPE : UV_ECONNRESET) : 0;
}

static void iter_start(struct conn_iter *it, struct conn_registry *r, const struct list *l)
{
    int i = 0;
    while (i < WALKS_MAX && r->walks[i].list)
        i++;
    assert(i < WALKS_MAX); /* deeper nesting than any caller needs: a walk was not ended */
    r->walks[i] = (struct walk){l, l->head};
    it->r = r;
    it->slot = i;
}

void conn_iter_begin(struct conn_iter *it, struct conn_registry *r)
{
    iter_start(it, r, &r->all);
}

void conn_iter_begin_closing(struct conn_iter *it, struct conn_registry *r)
{
    iter_start(it, r, &r->closing);
}

void conn_iter_end(struct conn_iter *it)
{
    if (it->slot < 0)
        return;
    it->r->walks[it->slot] = (struct walk){NULL, NULL};
    it->slot = -1;
}

/* The next entry of it's list as a link, advancing it (NULL ends the walk). */
static struct list_link *iter_step(struct conn_iter *it)
{
    struct list_link *e = it->slot >= 0 ? it->r->walks[it->slot].next : NULL;
    if (!e) {
        conn_iter_end(it);
        return NULL;
    }
    it->r->walks[it->slot].next = e->next;
    return e;
}

struct conn *conn_iter_next(struct conn_iter *it)
{
    struct list_link *e = iter_step(it); /* list_entry reads its argument twice */
    return list_entry(e, struct conn, reg_link);
}

/* Unlinks e from l, moving every walk about to visit e on to the entry after it. */
static void unlink_walked(struct conn_registry *r, struct list *l, struct list_link *e)
{
    for (int i = 0; i < WALKS_MAX; i++)
        if (r->walks[i].list == l && r->walks[i].next == e)
            r->walks[i].next = e->next;
    list_remove(l, e);
}

static void wait_list_remove(struct conn_registry *r, struct conn *c)
{
    if (c->x->waiters && list_linked(&r->waiting, &c->x->waiters->link))
        unlink_walked(r, &r->waiting, &c->x->waiters->link);
}

/* Bytes received and not yet consumed by the protocol (what ingest_hold_bytes bounds). */
static size_t held_bytes(const struct conn *c)
{
    return c->in.len + c->x->raw.len;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct conn *c = h->data;
    (void)suggested;
    out->base = (char *)c->gw->conns->rbuf;
    out->len = READ_CHUNK;
    if (c->held) { /* reading only while below ingest_hold_bytes: a read stops there */
        size_t room = c->ingest_hold_bytes > held_bytes(c) ? c->ingest_hold_bytes - held_bytes(c)
                                                           : 1;
        if (out->len > room)
            out->len = room;
    }
}

/* After a feed: b keeps only what its consumer left, in memory of its own. A tail in the
 * loop-wide buffer is copied out (dropped when c is closing), a drained buffer is freed
 * and one much larger than its tail (after a large frame) shrinks to fit. */
static void keep_input(struct conn *c, struct buf *b)
{
    struct buf tail;

    if (b->data == c->gw->conns->rbuf) {
        buf_init(&tail);
        if (!c->closing)
            buf_append(&tail, b->data, b->len);
        *b = tail;
    } else if (b->len == 0) {
        buf_fini(b);
    } else if (b->cap > 4 * b->len && b->cap > 4096) {
        b->data = xrealloc(b->data, b->len);
        b->cap = b->len;
    }
}

/* Hands the first n bytes of the loop-wide read buffer to c's transport (or protocol).
 * A layer under the transport (TLS) puts what it made of the socket bytes there (the
 * plaintext of a record is never longer than the record) and calls this once per piece. */
static void take_input(struct conn *c, size_t n)
{
    struct buf *b = c->x->xport ? &c->x->raw : &c->in;
    uint8_t *p = c->gw->conns->rbuf;

    if (b->len == 0) { /* the common case: lend the read buffer, copy nothing */
        buf_fini(b);
        *b = (struct buf){p, n, READ_CHUNK};
    } else {
        buf_append(b, p, n); /* after a partial frame kept from an earlier read */
    }
    conn_refeed(c);
}

/* ---- pre-auth budgets (gateway/guard.h): bytes held before authentication ----
 * Counted after the protocol has taken what it could (conn_refeed): what one read brought
 * is bounded by the read size, what stays is what a connection costs. */
static bool guard_ok(struct conn *c)
{
    const char *why = guard_held(c->gw->guard, c, held_bytes(c));
    if (!why)
        return true;
    c->gw->metrics.preauth_refused++;
    if (conn_refused(c, why))
        log_warn("conn=%llu peer=%s proto=%s closed before authentication reason=\"%s\"",
                 (unsigned long long)c->id, conn_peer(c), c->proto->name, why);
    conn_close(c, why);
    return false;
}
/* ---- end of pre-auth budgets ---- */

/* ---- the PROXY protocol header (gateway/proxy.h): before anything else, TLS included ---- */

static void start_timer(struct conn *c);

/* The protocol (and TLS under it) of c's listener takes over: c is counted against its
 * peer address (guard.h) and opened. */
static void open_layers(struct conn *c)
{
    const struct conn_listener *l = c->listener;

    if (l->tls)
        conn_extra(c)->tls = tls_conn_new(l->tls, c, l->alpn);
    c->proto_state = l->proto->open(c, l->ctx);
    if (c->closing)
        return;
    start_timer(c);
    conn_update_reading(c);
}

/* c's PROXY header did not come, or was not one: closed, logged once per episode. */
static void proxy_refuse(struct conn *c, const char *why)
{
    c->gw->metrics.proxy_failed++;
    if (conn_refused(c, why))
        log_warn("conn=%llu peer=%s listener=%s PROXY header refused reason=\"%s\"",
                 (unsigned long long)c->id, conn_peer(c), c->listener->name, why);
    conn_close(c, why);
}

/* The header of c named its client (unless it is the balancer's own connection). */
static void proxy_done(struct conn *c, const struct proxy_header *h)
{
    const char *why;

    c->gw->metrics.proxy_accepted++;
    if (!h->local) {
        char via[CONN_PEER_MAX];
        snprintf(via, sizeof via, "%s", conn_peer(c));
        set_peer(c, &h->src);
        log_debug("conn=%llu peer=%s via=%s PROXY v%d header", (unsigned long long)c->id,
                  conn_peer(c), via, h->version);
    }
    if ((why = guard_accept(c->gw->guard, c)) != NULL) { /* now against the client's address */
        c->gw->metrics.connections_refused++;
        c->gw->metrics.preauth_refused++;
        if (conn_refused(c, why))
            log_warn("listener=%s peer=%s refused reason=\"%s\"", c->listener->name,
                     conn_peer(c), why);
        conn_close(c, why);
        return;
    }
    open_layers(c);
}

/* n bytes read at p (the start of the loop-wide read buffer) while c's PROXY header is
 * not complete. Returns how many bytes follow the header, moved to p for the layers above,
 * or 0 (header incomplete, or c closed). A header split over reads is kept in c->x->proxy_in,
 * at most PROXY_HEADER_MAX bytes (proxy_decode refuses any longer). */
static size_t read_proxy(struct conn *c, uint8_t *p, size_t n)
{
    struct buf *in = c->x->proxy_in;
    const uint8_t *data = p;
    size_t len = n, used = 0, rest;
    struct proxy_header h;
    const char *why = NULL;
    enum proxy_rc rc;

    if (in->len) {
        buf_append(in, p, n);
        data = in->data;
        len = in->len;
    }
    rc = proxy_decode(c->listener->proxy, data, len, &h, &used, &why);
    if (rc == PROXY_NEED_MORE) {
        if (data == p)
            buf_append(in, p, n);
        return 0;
    }
    if (rc == PROXY_ERROR) {
        proxy_refuse(c, why);
        return 0;
    }
    rest = len - used; /* fewer than n: the bytes kept before were all header */
    memmove(p, data + used, rest);
    buf_fini(in);
    free(in);
    c->x->proxy_in = NULL;
    proxy_done(c, &h);
    return c->closing ? 0 : rest;
}
/* ---- end of the PROXY protocol header ---- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? "peer closed" : uv_strerror((int)nread));
        return;
    }
    c->bytes_in += (uint64_t)nread;
    c->gw->metrics.bytes_in += (uint64_t)nread;
    c->last_read_mono_ms = gw_mono_ms();
    if (c->x->proxy_in &&
        (nread = (ssize_t)read_proxy(c, (uint8_t *)b->base, (size_t)nread)) == 0)
        return; /* the header is not complete, or was refused */
    if (c->x->tls) /* b is the loop-wide read buffer (on_alloc): decrypted there, by pieces */
        read_tls(c, (uint8_t *)b->base, (size_t)nread);
    else
        take_input(c, (size_t)nread);
    /* what the read made the gateway send goes now (publishing clients' reads come in
     * bursts: a delivery does not wait for the others' decoding) */
    stage_flush_all(c->gw->conns);
}

/* keep_input on both buffers (raw is c's own only under a transport) */
static void keep_inputs(struct conn *c)
{
    keep_input(c, &c->in);
    if (c->x->xport)
        keep_input(c, &c->x->raw);
}

void conn_refeed(struct conn *c)
{
    struct conn_extra *x = c->x;
    if (c->closing || (c->in.len == 0 && x->raw.len == 0)) {
        keep_inputs(c);
        return;
    }
    conn_ref(c);
    if (x->xport && x->raw.len)
        x->xport->feed(x->xport_state, &x->raw, &c->in);
    if (!c->closing && c->in.len) {
        assert(c->proto_state); /* released only by on_close, after c was closing */
        c->proto->feed(c->proto_state, &c->in);
    }
    /* closing or not: the read buffer is lent only until here */
    keep_inputs(c);
    if (!c->closing && guard_ok(c)) /* what the protocol left, now kept, counts as held */
        conn_update_reading(c); /* a held connection reads up to its ingest_hold_bytes */
    conn_unref(c);
}

void conn_set_transport(struct conn *c, const struct transport_ops *t, void *state)
{
    struct conn_extra *x = conn_extra(c);
    x->xport = t;
    x->xport_state = state;
    if (c->in.len) /* bytes after the upgrade request belong to the transport */
        buf_append(&x->raw, c->in.data, c->in.len);
    /* c->in may be the lent read buffer: the transport appends to c->in from now on (a
     * message it inflated can be larger than that buffer), so it starts on memory of c's
     * own, and the lent buffer is left to the read that lent it */
    if (c->in.data == c->gw->conns->rbuf)
        buf_init(&c->in);
    else
        c->in.len = 0;
}

void conn_update_reading(struct conn *c)
{
    bool held = !c->closing && c->ingest && c->gw->ingest_paused;
    bool want = !c->closing && !c->paused && !(held && held_bytes(c) >= c->ingest_hold_bytes);

    if (c->held && !held) /* its silence while held was ours: the idle clock starts now */
        c->last_read_mono_ms = gw_mono_ms();
    c->held = held;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* ---- deadlines: one min-heap of connections on due_ms, one timer ---- */

static void heap_place(struct conn_registry *r, size_t i, struct conn *c)
{
    r->heap[i] = c;
    c->due_slot = (uint32_t)i + 1;
}

static void heap_up(struct conn_registry *r, size_t i)
{
    struct conn *c = r->heap[i];
    while (i > 0 && c->due_ms < r->heap[(i - 1) / 2]->due_ms) {
        heap_place(r, i, r->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_place(r, i, c);
}

static void heap_down(struct conn_registry *r, size_t i)
{
    struct conn *c = r->heap[i];
    for (;;) {
        size_t m = 2 * i + 1;
        if (m >= r->nheap)
            break;
        if (m + 1 < r->nheap && r->heap[m + 1]->due_ms < r->heap[m]->due_ms)
            m++;
        if (r->heap[m]->due_ms >= c->due_ms)
            break;
        heap_place(r, i, r->heap[m]);
        i = m;
    }
    heap_place(r, i, c);
}

static void heap_remove(struct conn_registry *r, struct conn *c)
{
    size_t i = c->due_slot - 1;
    struct conn *last;

    if (c->due_slot == 0)
        return;
    c->due_slot = 0;
    last = r->heap[--r->nheap];
    if (i == r->nheap)
        return;
    heap_place(r, i, last);
    heap_down(r, i);
    heap_up(r, last->due_slot - 1);
}

static void on_deadline(uv_timer_t *t);

/* Arms the registry's timer for the earliest deadline (stops it when there is none). */
static void arm_timer(struct conn_registry *r, uv_loop_t *loop)
{
    uint64_t now = uv_now(loop), due;

    if (r->nheap == 0) {
        if (r->timer_ready)
            uv_timer_stop(&r->timer);
        return;
    }
    if (!r->timer_ready) {
        uv_timer_init(loop, &r->timer);
        r->timer.data = r;
        r->timer_ready = true;
    }
    due = r->heap[0]->due_ms;
    uv_timer_start(&r->timer, on_deadline, due > now ? due - now : 0, 0);
}

/* Sets c's deadline ms from now (0: none). */
static void set_deadline(struct conn *c, uint64_t ms)
{
    struct conn_registry *r = c->gw->conns;
    bool was_first = c->due_slot == 1;

    heap_remove(r, c);
    if (ms) {
        if (r->nheap == r->heap_cap) {
            r->heap_cap = r->heap_cap ? 2 * r->heap_cap : 64;
            r->heap = xrealloc(r->heap, r->heap_cap * sizeof *r->heap);
        }
        c->due_ms = uv_now(c->gw->loop) + ms;
        heap_place(r, r->nheap++, c);
        heap_up(r, r->nheap - 1);
    }
    if (was_first || c->due_slot == 1) /* the earliest deadline changed */
        arm_timer(r, c->gw->loop);
}

/* c's deadline passed. */
static void on_due(struct conn *c)
{
    uint64_t now = gw_mono_ms();
    if (c->x->proxy_in) {
        c->gw->metrics.timeouts++;
        proxy_refuse(c, "PROXY header timeout (limits.proxy_header_timeout_ms)");
        return;
    }
    if (c->auth_timeout_ms) {
        c->gw->metrics.timeouts++;
        if (c->proto->auth_timeout && c->proto_state)
            c->proto->auth_timeout(c);
        conn_close(c, "authentication timeout");
        return;
    }
    if (c->idle_timeout_ms) {
        /* held: the gateway stopped reading (or processing) it, so the peer is not idle */
        uint64_t idle = c->held ? 0 : now - c->last_read_mono_ms;
        if (idle >= c->idle_timeout_ms) {
            c->gw->metrics.timeouts++;
            conn_close(c, "idle timeout");
            return;
        }
        set_deadline(c, c->idle_timeout_ms - idle);
    }
}

static void on_deadline(uv_timer_t *t)
{
    struct conn_registry *r = t->data;
    uint64_t now = uv_now(t->loop);

    /* each one taken off first: on_due may re-arm it, or close any connection */
    while (r->nheap && r->heap[0]->due_ms <= now) {
        struct conn *c = r->heap[0];
        heap_remove(r, c);
        on_due(c);
    }
    arm_timer(r, t->loop);
}

static void start_timer(struct conn *c)
{
    set_deadline(c, c->auth_timeout_ms ? c->auth_timeout_ms : c->idle_timeout_ms);
}

struct conn *conn_accept(struct gw *gw, uv_stream_t *server, const struct conn_listener *l)
{
    struct conn_registry *r = gw->conns;
    /* the protocol's state, when it asks for it, in the same block (conn_state_space) */
    struct conn *c = xcalloc(1, sizeof *c + l->proto->state_bytes);
    struct sockaddr_storage ss;
    int len = sizeof ss, rc;
    const char *why;

    stage_start(r, gw->loop);
    c->gw = gw;
    c->refs = 1;
    c->x = (struct conn_extra *)&no_extra;
    c->device = "";
    buf_init(&c->in);
    uv_tcp_init(gw->loop, &c->tcp);
    c->tcp.data = c;
    rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        log_warn("listener=%s accept failed reason=\"%s\"", l->name, uv_strerror(rc));
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    memset(&ss, 0, sizeof ss);
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    set_peer(c, &ss);
    if (l->proxy && !proxy_trusted(&gw->proxy_trust, (const struct sockaddr *)&ss)) {
        why = "PROXY protocol listener: peer not in limits.proxy_trusted";
        gw->metrics.proxy_untrusted++;
        if (log_refusal(conn_peer(c), why))
            log_warn("listener=%s peer=%s refused reason=\"%s\"", l->name, conn_peer(c), why);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    /* 0 (auto) is resolved from the fd limit at start (main.c); unresolved, none applies */
    if (gw->stopping || (gw->cfg->limits.max_connections > 0 &&
                         (int)r->all.len >= gw->cfg->limits.max_connections)) {
        why = gw->stopping ? "shutting down" : "max connections reached";
        gw->metrics.connections_refused++;
        if (log_refusal(conn_peer(c), why))
            log_warn("listener=%s peer=%s refused reason=\"%s\" limit=%d", l->name, conn_peer(c),
                     why, gw->cfg->limits.max_connections);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    /* pre-auth budgets (guard.h); behind a balancer, once the header named the client */
    if (!l->proxy && (why = guard_accept(gw->guard, c)) != NULL) {
        gw->metrics.connections_refused++;
        gw->metrics.preauth_refused++;
        if (log_refusal(conn_peer(c), why))
            log_warn("listener=%s peer=%s refused reason=\"%s\"", l->name, conn_peer(c), why);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->id = ++r->next_id;
    c->listener = l;
    c->proto = l->proto;
    c->connected_ms = gw_now_ms();
    c->last_read_mono_ms = gw_mono_ms();
    c->idle_timeout_ms = (uint32_t)gw->cfg->limits.idle_timeout_ms;
    list_push_front(&r->all, &c->reg_link);
    gw->metrics.connections_total++;
    log_debug("conn=%llu peer=%s proto=%s open", (unsigned long long)c->id, conn_peer(c),
              l->proto->name);
    if (l->proxy) { /* the layers open once the header is read (read_proxy) */
        struct conn_extra *x = conn_extra(c);
        x->proxy_in = xcalloc(1, sizeof *x->proxy_in);
        buf_init(x->proxy_in);
        set_deadline(c, (uint64_t)gw->cfg->limits.proxy_header_timeout_ms);
        conn_update_reading(c);
        return c;
    }
    open_layers(c);
    return c->closing ? NULL : c;
}

void *conn_state_space(struct conn *c, size_t n)
{
    if (c->state_space_taken || !c->listener || n > c->listener->proto->state_bytes)
        return NULL;
    c->state_space_taken = true;
    return c + 1;
}

void conn_set_proto(struct conn *c, const struct proto_ops *proto, void *state)
{
    c->proto = proto;
    c->proto_state = state;
}

void conn_authenticated(struct conn *c, const char *device)
{
    const char *old = c->device; /* freed after the copy: device may be c->device itself */

    c->device = device && device[0] ? xstrdup(device) : "";
    if (old[0])
        free((char *)old);
    c->auth_timeout_ms = 0;
    c->authenticated = true;
    guard_authenticated(c->gw->guard, c);
    if (!c->closing)
        start_timer(c);
}

/* A socket write of c failed: nothing more is written, and c closes (at most once). */
static void write_failed(struct conn *c, int err)
{
    c->write_failed = true;
    conn_close(c, uv_strerror(err));
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->c;
    c->send_queued_bytes -= w->len;
    free(w);
    if (status < 0)
        write_failed(c, status);
    if (c->close_after_write && c->send_queued_bytes == 0 && !c->closing)
        conn_close(c, c->x->close_why);
    if (c->x->on_drained && c->send_queued_bytes <= c->x->drain_mark_bytes && !c->closing) {
        void (*fn)(struct conn *c) = c->x->on_drained;
        c->x->on_drained = NULL;
        fn(c);
    }
    conn_unref(c);
}

bool conn_when_drained(struct conn *c, size_t mark_bytes, void (*fn)(struct conn *c))
{
    struct conn_extra *x;
    if (c->x->on_drained)
        c->x->on_drained = NULL;
    if (!fn || c->send_queued_bytes <= mark_bytes)
        return false;
    x = conn_extra(c);
    x->on_drained = fn;
    x->drain_mark_bytes = (uint32_t)mark_bytes;
    return true;
}

/* Whether c may write now: not closing (or writing its last words), no write failed. */
static bool may_write(const struct conn *c)
{
    return (!c->closing || c->last_words) && !c->write_failed;
}

void conn_send(struct conn *c, const void *data, size_t len)
{
    if ((c->closing && !c->last_words) || !len) /* last words: the protocol's goodbye */
        return;
    if (c->x->xport)
        c->x->xport->send(c->x->xport_state, data, len);
    else
        conn_send_raw(c, data, len);
}

void conn_send_raw(struct conn *c, const void *data, size_t len)
{
    const char *why = NULL;

    if (!may_write(c) || !len)
        return;
    if (!c->x->tls) {
        write_socket(c, data, len);
    } else {
        if (tls_conn_write(c->x->tls, data, len, &why) != 0) {
            conn_close(c, why);
            return;
        }
        flush_tls(c);
    }
}

/* Writes data to c's socket now: uv_try_write when nothing is queued, the rest copied
 * into a request of its own and queued (c closes past max_send_queue_bytes). */
static void write_now(struct conn *c, const void *data, size_t len)
{
    const char *p = data;
    struct write_req *w;
    uv_buf_t b;
    int n = 0;

    /* a closing connection writes only its last words, and nothing after a failed write */
    if (!may_write(c) || len == 0)
        return;
    if ((n = injected_write_error(c->gw->conns, c)) != 0) {
        write_failed(c, n);
        return;
    }
    c->bytes_out += len;
    c->gw->metrics.bytes_out += len;
    if (c->send_queued_bytes == 0) {
        b = uv_buf_init((char *)p, (unsigned)len);
        n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == (int)len)
            return;
        if (n < 0 && n != UV_EAGAIN) {
            write_failed(c, n);
            return;
        }
        if (n < 0)
            n = 0;
    }
    p += n;
    len -= (size_t)n;
    if (c->send_queued_bytes + len > c->gw->cfg->limits.max_send_queue_bytes) {
        conn_close(c, "send queue over budget (peer not reading)");
        return;
    }
    w = xmalloc(sizeof *w + len);
    memcpy(w->data, p, len);
    w->len = len;
    w->c = c;
    c->send_queued_bytes += len;
    conn_ref(c);
    b = uv_buf_init(w->data, (unsigned)len);
    if ((n = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write)) != 0) {
        c->send_queued_bytes -= len;
        free(w);
        conn_unref(c);
        write_failed(c, n);
    }
}

/* ---- staged output ----
 * What a connection is sent while one callback runs leaves in one write(): bytes for the
 * socket (after TLS and the WebSocket framing, so records and frames stay whole) are
 * appended to the connection's entry in the registry's staging, and every entry is
 * written at the end of the read callback that produced them, after the iteration's
 * other I/O callbacks (a check handle: acks handed back by storage) and before the loop
 * waits for I/O again (a prepare handle: what timers and close callbacks sent). No byte
 * waits past its loop iteration, nor for a timer. libuv runs a phase's handles most
 * recently started first; these two start with the first connection and never stop, so
 * the check and prepare handles of storage (acks of inline commits) and of the live
 * feed, which start and stop, run before them. A connection with STAGE_FLUSH_BYTES
 * staged writes them at once; a write of STAGE_DIRECT_BYTES or more, and any while the
 * registry writes directly (the live feed's paced pass), is not copied (what was staged
 * goes first); a close writes what was staged with its last words. Nothing is
 * kept for an idle connection: the staging is the registry's, its memory reused from one
 * iteration to the next (STAGE_KEEP_ENTRIES buffers of up to STAGE_KEEP_BYTES), and the
 * fault seam and the send budget apply to each socket write as before. */

#define STAGE_FLUSH_BYTES 65536
#define STAGE_DIRECT_BYTES 16384
#define STAGE_KEEP_ENTRIES 16
#define STAGE_KEEP_BYTES 65536

static size_t stage_hash(const struct conn *c)
{
    uint64_t x = (uintptr_t)c;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

/* Rebuilds the index for want entries; a connection maps to its latest entry. */
static void stage_index(struct staging *st, size_t want)
{
    size_t n = 16;

    while (n < 2 * want)
        n *= 2;
    free(st->slots);
    st->slots = xcalloc(n, sizeof *st->slots);
    st->nslots = n;
    for (size_t i = 0; i < st->n; i++) {
        size_t h = stage_hash(st->e[i].c) & (n - 1);
        while (st->slots[h] && st->e[st->slots[h] - 1].c != st->e[i].c)
            h = (h + 1) & (n - 1);
        st->slots[h] = (uint32_t)i + 1;
    }
}

/* The slot of c in the index: its latest entry's, or the empty one it would take. */
static size_t stage_slot(const struct staging *st, const struct conn *c)
{
    size_t h = stage_hash(c) & (st->nslots - 1);

    while (st->slots[h] && st->e[st->slots[h] - 1].c != c)
        h = (h + 1) & (st->nslots - 1);
    return h;
}

/* c's live entry + 1, or 0. */
static size_t stage_find(const struct staging *st, const struct conn *c)
{
    size_t h;

    if (st->last && st->e[st->last - 1].c == c && st->e[st->last - 1].live)
        return st->last;
    if (!st->n)
        return 0;
    h = stage_slot(st, c);
    return st->slots[h] && st->e[st->slots[h] - 1].live ? st->slots[h] : 0;
}

/* c's live entry, made when it has none. */
static size_t stage_entry(struct staging *st, struct conn *c)
{
    size_t h, i = stage_find(st, c);

    if (i) {
        st->last = i;
        return i - 1;
    }
    if (2 * (st->n + 1) > st->nslots)
        stage_index(st, st->n + 1);
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 16;
        st->e = xrealloc(st->e, cap * sizeof *st->e);
        memset(st->e + st->cap, 0, (cap - st->cap) * sizeof *st->e);
        st->cap = cap;
    }
    h = stage_slot(st, c);
    i = st->n++;
    st->e[i].c = c;
    st->e[i].live = true;
    st->e[i].b.len = 0;
    st->slots[h] = (uint32_t)i + 1;
    st->last = i + 1;
    return i;
}

/* Writes what entry i holds. Whatever is sent to its connection meanwhile (the last
 * words of a close the write caused) is staged after it. */
static void stage_write(struct conn_registry *r, size_t i)
{
    struct buf b = r->st.e[i].b;
    struct conn *c = r->st.e[i].c;

    if (!b.len)
        return;
    buf_init(&r->st.e[i].b);
    write_now(c, b.data, b.len);
    b.len = 0;
    if (!r->st.e[i].b.data) /* its memory back for the next bytes */
        r->st.e[i].b = b;
    else
        buf_fini(&b);
}

/* Writes c's staged bytes now: before a write that is not staged, and before a close.
 * done: nothing more is staged for c (it closes); a later write would take a new entry. */
static void stage_flush(struct conn_registry *r, struct conn *c, bool done)
{
    size_t i;

    while ((i = stage_find(&r->st, c)) != 0) {
        if (done)
            r->st.e[i - 1].live = false;
        stage_write(r, i - 1);
        if (!done)
            break;
    }
}

/* The end of the iteration: every entry is written, in the order of their first bytes. */
static void stage_flush_all(struct conn_registry *r)
{
    struct staging *st = &r->st;

    if (!st->n)
        return;
    /* an entry is done before its write: what is sent meanwhile takes a new one, which
     * this loop reaches too */
    for (size_t i = 0; i < st->n; i++) {
        if (!st->e[i].live)
            continue;
        st->e[i].live = false;
        stage_write(r, i);
    }
    for (size_t i = 0; i < st->n; i++) {
        st->e[i].b.len = 0;
        if (i >= STAGE_KEEP_ENTRIES || st->e[i].b.cap > STAGE_KEEP_BYTES)
            buf_fini(&st->e[i].b);
    }
    st->n = 0;
    st->last = 0;
    if (st->cap > 256) { /* after a fan-out to many connections */
        for (size_t i = 0; i < STAGE_KEEP_ENTRIES; i++)
            buf_fini(&st->e[i].b);
        free(st->e);
        free(st->slots);
        st->e = NULL;
        st->slots = NULL;
        st->cap = st->nslots = 0;
    } else {
        memset(st->slots, 0, st->nslots * sizeof *st->slots);
    }
}

static void on_flush_check(uv_check_t *h)
{
    stage_flush_all(h->data);
}

static void on_flush_prepare(uv_prepare_t *h)
{
    stage_flush_all(h->data);
}

/* Starts the handles that write the staging (with the first connection: the registry
 * knows no loop before). Unreferenced: they do not keep the loop alive. */
static void stage_start(struct conn_registry *r, uv_loop_t *loop)
{
    if (r->flush_ready)
        return;
    uv_check_init(loop, &r->flush_check);
    r->flush_check.data = r;
    uv_check_start(&r->flush_check, on_flush_check);
    uv_unref((uv_handle_t *)&r->flush_check);
    uv_prepare_init(loop, &r->flush_prepare);
    r->flush_prepare.data = r;
    uv_prepare_start(&r->flush_prepare, on_flush_prepare);
    uv_unref((uv_handle_t *)&r->flush_prepare);
    r->flush_ready = true;
}

/* Sends bytes to c's socket: staged for the end of the iteration (see above). */
static void write_socket(struct conn *c, const void *data, size_t len)
{
    struct conn_registry *r = c->gw->conns;
    size_t i;

    if (!may_write(c) || len == 0)
        return;
    if (!r->flush_ready || r->write_direct || len >= STAGE_DIRECT_BYTES) {
        stage_flush(r, c, false);
        write_now(c, data, len);
        return;
    }
    i = stage_entry(&r->st, c);
    if (r->st.e[i].b.len + len > STAGE_FLUSH_BYTES) {
        stage_write(r, i);
        if (!may_write(c)) /* that write failed, or closed c */
            return;
        i = stage_entry(&r->st, c);
    }
    buf_append(&r->st.e[i].b, data, len);
}
void conn_registry_write_direct(struct conn_registry *r, bool on)
{
    r->write_direct = on;
}
/* ---- end of staged output ---- */

void conn_close_after_write(struct conn *c, const char *why)
{
    if (c->closing || c->close_after_write)
        return;
    stage_flush(c->gw->conns, c, false); /* what it was sent counts as queued */
    if (c->send_queued_bytes == 0) {
        conn_close(c, why);
        return;
    }
    conn_extra(c)->close_why = xstrdup(why);
    c->close_after_write = true;
    c->paused = true;
    conn_update_reading(c);
}

static void free_conn(struct conn *c)
{
    struct conn_extra *x = c->x;
    buf_fini(&c->in);
    if (x != &no_extra) {
        if (x->proxy_in)
            buf_fini(x->proxy_in);
        free(x->proxy_in);
        buf_fini(&x->raw);
        tls_conn_free(x->tls);
        if (x->waiters)
            free(x->waiters->ring);
        free(x->waiters);
        free(x->close_why);
        free(x);
    }
    if (c->device[0])
        free((char *)c->device);
    free(c);
}

/* The socket is closed and no callback of c's is on the stack: its layers go now. */
static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    const char *why = c->x->close_why ? c->x->close_why : "closed";

    if (c->proto_state && c->proto->close)
        c->proto->close(c->proto_state, why);
    c->proto_state = NULL;
    if (c->x->xport_state && c->x->xport->close)
        c->x->xport->close(c->x->xport_state);
    if (c->x->xport_state)
        c->x->xport_state = NULL;
    if (c->id) /* accepted (a refused one was never in the registry) */
        unlink_walked(c->gw->conns, &c->gw->conns->closing, &c->reg_link);
    conn_unref(c);
}

bool conn_refused(struct conn *c, const char *why)
{
    if (c->refusal == CONN_REFUSAL_NONE)
        c->refusal = log_refusal(conn_peer(c), why) ? CONN_REFUSAL_LOGGED : CONN_REFUSAL_QUIET;
    return c->refusal == CONN_REFUSAL_LOGGED;
}

void conn_close(struct conn *c, const char *why)
{
    struct gw *gw = c->gw;
    struct conn_registry *r = gw->conns;
    char *old_why;
    if (c->closing)
        return;
    c->closing = true; /* first: a write below that fails comes back here and returns */
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    c->last_words = true;
    if (c->proto->goodbye && c->proto_state && !c->write_failed)
        c->proto->goodbye(c->proto_state, why, gw->stopping);
    if (c->x->xport && c->x->xport->goodbye && c->x->xport_state)
        c->x->xport->goodbye(c->x->xport_state, gw->stopping);
    if (c->x->tls && !c->write_failed) { /* close_notify: the peer can tell a close from a cut */
        tls_conn_shutdown(c->x->tls);
        flush_tls(c);
    }
    stage_flush(r, c, true); /* what was staged, and the last words, go before the close */
    c->last_words = false;
    /* HTTP connections come and go by the thousand: their closes are debug noise; the
     * close of a refusal that is summarised is counted in that summary */
    if (c->refusal != CONN_REFUSAL_QUIET)
        log_write(strcmp(c->proto->name, "http") == 0 ? LOG_DEBUG : LOG_INFO,
                  "conn=%llu peer=%s proto=%s%s%s close reason=\"%s\" bytes_in=%llu "
                  "bytes_out=%llu",
                  (unsigned long long)c->id, conn_peer(c), c->proto->name,
                  c->device[0] ? " device=" : "", c->device, log_q(why),
                  (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out);
    old_why = c->x->close_why; /* why may be it (a close after write): copied first */
    conn_extra(c)->close_why = xstrdup(why ? why : "closed"); /* for the protocol's close */
    free(old_why);
    wait_list_remove(r, c);
    while (c->x->waiters && c->x->waiters->n) { /* ok = -1: cancelled: owners of tags free them */
        struct conn_waiters *ws = c->x->waiters;
        struct conn_waiter w = ws->ring[ws->head];
        ws->head = (ws->head + 1) % ws->cap;
        ws->n--;
        w.fn(c, w.tag, -1);
    }
    unlink_walked(r, &r->all, &c->reg_link);
    list_push_front(&r->closing, &c->reg_link);
    guard_close(gw->guard, c);
    set_deadline(c, 0);
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    if (--c->refs == 0)
        free_conn(c);
}

void conn_pause(struct conn *c)
{
    c->paused = true;
    conn_update_reading(c);
}

void conn_resume(struct conn *c)
{
    c->paused = false;
    conn_update_reading(c);
}

void conn_await_durable(struct conn *c, const struct ticket *t, bool failed, uint64_t tag,
                        conn_durable_fn fn)
{
    struct conn_registry *r = c->gw->conns;
    struct conn_waiters *ws = c->x->waiters;

    if (c->closing)
        return;
    if (!ws) {
        ws = conn_extra(c)->waiters = xcalloc(1, sizeof *ws);
        ws->c = c;
    }
    if (ws->n == ws->cap) {
        uint32_t cap = ws->cap ? 2 * ws->cap : 4;
        struct conn_waiter *ring = xmalloc(cap * sizeof *ring);
        for (uint32_t i = 0; i < ws->n; i++)
            ring[i] = ws->ring[(ws->head + i) % ws->cap];
        free(ws->ring);
        ws->ring = ring;
        ws->cap = cap;
        ws->head = 0;
    }
    ws->ring[(ws->head + ws->n) % ws->cap] =
        (struct conn_waiter){t ? *t : (struct ticket){0, 0}, tag, fn, failed, uv_hrtime() / 1000};
    ws->n++;
    if (!list_linked(&r->waiting, &ws->link))
        list_push_front(&r->waiting, &ws->link);
}

bool conn_has_waiters(const struct conn *c)
{
    return c->x->waiters && c->x->waiters->n;
}

void conn_registry_durable(struct conn_registry *r, uint64_t from_seq, uint64_t upto_seq,
                           int ok)
{
    struct conn_iter it;
    struct list_link *e;

    iter_start(&it, r, &r->waiting); /* a callback may close or unlink any connection */
    while ((e = iter_step(&it)) != NULL) {
        struct conn *c = list_entry(e, struct conn_waiters, link)->c;
        struct conn_waiters *ws = c->x->waiters;
        conn_ref(c);
        if (!ok) { /* every pending ticket that names a failed write fails */
            for (uint32_t i = 0; i < ws->n; i++) {
                struct conn_waiter *w = &ws->ring[(ws->head + i) % ws->cap];
                if (!ticket_empty(&w->t) && w->t.first <= upto_seq && w->t.last > from_seq)
                    w->failed = true;
            }
        }
        /* a callback may queue more waiters: the ring may move, so it is read anew */
        while (c->x->waiters->n && !c->closing) {
            struct conn_waiter w = c->x->waiters->ring[c->x->waiters->head];
            if (w.t.last > upto_seq)
                break;
            c->x->waiters->head = (c->x->waiters->head + 1) % c->x->waiters->cap;
            c->x->waiters->n--;
            if (!w.failed && !ticket_empty(&w.t))
                hist_observe(&c->gw->metrics.ack_latency, uv_hrtime() / 1000 - w.since_us);
            w.fn(c, w.tag, w.failed ? 0 : 1);
        }
        if (c->x->waiters->n == 0)
            wait_list_remove(r, c);
        conn_unref(c);
    }
}

void conn_registry_close_all(struct conn_registry *r, const char *why)
{
    while (r->all.head)
        conn_close(list_entry(r->all.head, struct conn, reg_link), why);
}
