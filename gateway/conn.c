/* gateway/conn.c: connection objects, the registry of live connections, the
 * send path, auth/idle timers and durable waiters. Loop thread only.
 *
 * Reads land straight in c->in (on_alloc reserves room at its tail), the
 * protocol's feed() decodes and consumes. Writes try uv_try_write() first and
 * queue only what the kernel did not take. One timer per connection serves the
 * auth deadline and then the idle deadline (re-armed lazily from the time of the
 * last read, so a busy connection does not touch the timer heap per read). While
 * storage pushes back, an ingest connection is held: it stops reading (or, when its
 * protocol defers ingest itself, reads only up to ingest_hold_bytes) and its idle clock
 * stands still until the release.
 *
 * The registry keeps two lists: live connections, and those with durable waiters.
 * Where each running walk goes next is kept in the registry (a slot per walk), so
 * conn_close, which unlinks a connection at once, moves every walk about to visit it
 * on to the next one: code called during a walk may close any connection. */
#include "gateway/conn.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"
#include "gateway/log.h"
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

static void on_close(uv_handle_t *h);
static void write_socket(struct conn *c, const void *data, size_t len);

/* ---- TLS hook points (gateway/tls.h): records in on read, out on send and close ---- */

/* Writes what TLS has for the socket (handshake, records, alerts). */
static void flush_tls(struct conn *c)
{
    const void *p;
    size_t n = tls_conn_output(c->tls, &p);
    if (n) {
        write_socket(c, p, n);
        tls_conn_output_done(c->tls);
    }
}

/* A read of n ciphertext bytes at p: what they decrypt to goes to the layer above. */
static void read_tls(struct conn *c, const void *p, size_t n)
{
    const char *why = NULL;
    int rc = tls_conn_read(c->tls, p, n, c->xport ? &c->raw : &c->in, &why);
    flush_tls(c); /* the answer to a handshake flight, or the alert of a failure */
    if (rc > 0)   /* the peer's close_notify: what came before it is served first */
        conn_refeed(c);
    if (rc != 0)
        conn_close(c, why);
}
/* ---- end of TLS hook points ---- */

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, host, sizeof host);
        snprintf(out, n, "%s:%d", host, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, host, sizeof host);
        snprintf(out, n, "[%s]:%d", host, ntohs(a->sin6_port));
    } else {
        snprintf(out, n, "unknown");
    }
}

/* ---- the registry ---- */

#define WALKS_MAX 8 /* walks running at once (nested) */

struct conn_registry {
    struct list all;                 /* live connections, newest first (reg_link) */
    struct list waiting;             /* connections with durable waiters (wait_link) */
    struct walk {                    /* running walks: where each goes next */
        const struct list *list;     /* NULL: the slot is free */
        struct list_link *next;
    } walks[WALKS_MAX];
    uint64_t next_id;
};

struct conn_registry *conn_registry_new(void)
{
    return xcalloc(1, sizeof(struct conn_registry));
}

void conn_registry_free(struct conn_registry *r)
{
    if (!r)
        return;
    assert(r->all.len == 0 && r->waiting.len == 0);
    for (int i = 0; i < WALKS_MAX; i++)
        assert(r->walks[i].list == NULL);
    free(r);
}

size_t conn_registry_count(const struct conn_registry *r)
{
    return r->all.len;
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
    if (list_linked(&r->waiting, &c->wait_link))
        unlink_walked(r, &r->waiting, &c->wait_link);
}

/* Bytes received and not yet consumed by the protocol (what ingest_hold_bytes bounds). */
static size_t held_bytes(const struct conn *c)
{
    return c->in.len + c->raw.len;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct conn *c = h->data;
    struct buf *b = c->xport ? &c->raw : &c->in;
    (void)suggested;
    out->base = (char *)buf_reserve(b, READ_CHUNK);
    out->len = b->cap - b->len;
    if (c->held) { /* reading only while below ingest_hold_bytes: a read stops there */
        size_t room = c->ingest_hold_bytes > held_bytes(c) ? c->ingest_hold_bytes - held_bytes(c)
                                                           : 1;
        if (out->len > room)
            out->len = room;
    }
}

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
    if (c->tls)
        read_tls(c, b->base, (size_t)nread); /* TLS: b is room at the tail of the same buffer */
    else
        buf_commit(c->xport ? &c->raw : &c->in, (size_t)nread);
    conn_refeed(c);
}

void conn_refeed(struct conn *c)
{
    if (c->closing || (c->in.len == 0 && c->raw.len == 0))
        return;
    conn_ref(c);
    if (c->xport && c->raw.len)
        c->xport->feed(c->xport_state, &c->raw, &c->in);
    if (!c->closing && c->in.len)
        c->proto->feed(c->proto_state, &c->in);
    if (!c->closing) {
        buf_shrink(&c->in, 4 * READ_CHUNK);
        buf_shrink(&c->raw, 4 * READ_CHUNK);
        conn_update_reading(c); /* a held connection reads up to its ingest_hold_bytes */
    }
    conn_unref(c);
}

void conn_set_transport(struct conn *c, const struct transport_ops *t, void *state)
{
    c->xport = t;
    c->xport_state = state;
    if (c->in.len) { /* bytes after the upgrade request belong to the transport */
        buf_append(&c->raw, c->in.data, c->in.len);
        c->in.len = 0;
    }
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

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    uint64_t now = gw_mono_ms();
    if (c->closing)
        return;
    if (c->auth_timeout_ms) {
        c->gw->metrics.timeouts++;
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
        uv_timer_start(&c->timer, on_timer, c->idle_timeout_ms - idle, 0);
    }
}

static void start_timer(struct conn *c)
{
    unsigned ms = c->auth_timeout_ms ? c->auth_timeout_ms : c->idle_timeout_ms;
    if (ms)
        uv_timer_start(&c->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

struct conn *conn_accept(struct gw *gw, uv_stream_t *server, const struct conn_listener *l)
{
    struct conn_registry *r = gw->conns;
    struct conn *c = xcalloc(1, sizeof *c);
    struct sockaddr_storage ss;
    int len = sizeof ss, rc;

    c->gw = gw;
    c->refs = 1;
    buf_init(&c->in);
    buf_init(&c->raw);
    uv_tcp_init(gw->loop, &c->tcp);
    c->tcp.data = c;
    c->handles_open = 1;
    rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        log_warn("listener=%s accept failed reason=\"%s\"", l->name, uv_strerror(rc));
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    memset(&ss, 0, sizeof ss);
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    format_peer(&ss, c->peer, sizeof c->peer);
    if (gw->stopping || (int)r->all.len >= gw->cfg->limits.max_connections) {
        const char *why = gw->stopping ? "shutting down" : "max connections reached";
        gw->metrics.connections_refused++;
        if (log_refusal(c->peer, why))
            log_warn("listener=%s peer=%s refused reason=\"%s\" limit=%d", l->name, c->peer,
                     why, gw->cfg->limits.max_connections);
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
    c->idle_timeout_ms = (unsigned)gw->cfg->limits.idle_timeout_ms;
    uv_timer_init(gw->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    list_push_front(&r->all, &c->reg_link);
    gw->metrics.connections_total++;
    log_debug("conn=%llu peer=%s proto=%s open", (unsigned long long)c->id, c->peer,
              l->proto->name);
    if (l->tls)
        c->tls = tls_conn_new(l->tls, c, l->alpn);
    c->proto_state = l->proto->open(c, l->ctx);
    if (c->closing)
        return NULL;
    start_timer(c);
    conn_update_reading(c);
    return c;
}

void conn_set_proto(struct conn *c, const struct proto_ops *proto, void *state)
{
    c->proto = proto;
    c->proto_state = state;
}

void conn_authenticated(struct conn *c, const char *device)
{
    snprintf(c->device, sizeof c->device, "%s", device ? device : "");
    c->auth_timeout_ms = 0;
    start_timer(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->c;
    c->send_queued_bytes -= w->len;
    free(w);
    if (status < 0 && !c->closing)
        conn_close(c, uv_strerror(status));
    if (c->close_after_write && c->send_queued_bytes == 0 && !c->closing)
        conn_close(c, c->close_why);
    conn_unref(c);
}

void conn_send(struct conn *c, const void *data, size_t len)
{
    if (c->xport && !c->closing && len)
        c->xport->send(c->xport_state, data, len);
    else
        conn_send_raw(c, data, len);
}

void conn_send_raw(struct conn *c, const void *data, size_t len)
{
    const char *why = NULL;

    if (!c->tls) {
        write_socket(c, data, len);
    } else if (!c->closing && len) {
        if (tls_conn_write(c->tls, data, len, &why) != 0) {
            conn_close(c, why);
            return;
        }
        flush_tls(c);
    }
}

static void write_socket(struct conn *c, const void *data, size_t len)
{
    const char *p = data;
    struct write_req *w;
    uv_buf_t b;
    int n = 0;

    if (c->closing || len == 0)
        return;
    c->bytes_out += len;
    c->gw->metrics.bytes_out += len;
    if (c->send_queued_bytes == 0) {
        b = uv_buf_init((char *)p, (unsigned)len);
        n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == (int)len)
            return;
        if (n < 0 && n != UV_EAGAIN) {
            conn_close(c, uv_strerror(n));
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
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        c->send_queued_bytes -= len;
        free(w);
        conn_unref(c);
        conn_close(c, "write failed");
    }
}

void conn_close_after_write(struct conn *c, const char *why)
{
    if (c->closing)
        return;
    if (c->send_queued_bytes == 0) {
        conn_close(c, why);
        return;
    }
    snprintf(c->close_why, sizeof c->close_why, "%s", why);
    c->close_after_write = true;
    c->paused = true;
    conn_update_reading(c);
}

static void free_conn(struct conn *c)
{
    buf_fini(&c->in);
    buf_fini(&c->raw);
    tls_conn_free(c->tls);
    free(c->waiters);
    free(c);
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles_open == 0)
        conn_unref(c);
}

bool conn_refused(struct conn *c, const char *why)
{
    if (c->refusal == CONN_REFUSAL_NONE)
        c->refusal = log_refusal(c->peer, why) ? CONN_REFUSAL_LOGGED : CONN_REFUSAL_QUIET;
    return c->refusal == CONN_REFUSAL_LOGGED;
}

void conn_close(struct conn *c, const char *why)
{
    struct gw *gw = c->gw;
    struct conn_registry *r = gw->conns;
    if (c->closing)
        return;
    if (c->xport && c->xport->goodbye && c->xport_state) {
        c->xport->goodbye(c->xport_state, gw->stopping);
        if (c->closing)
            return; /* the goodbye's write failed and closed the connection */
    }
    if (c->tls) { /* close_notify: the peer can tell a close from a cut */
        tls_conn_shutdown(c->tls);
        flush_tls(c);
        if (c->closing)
            return;
    }
    c->closing = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    /* HTTP connections come and go by the thousand: their closes are debug noise; the
     * close of a refusal that is summarised is counted in that summary */
    if (c->refusal != CONN_REFUSAL_QUIET)
        log_write(strcmp(c->proto->name, "http") == 0 ? LOG_DEBUG : LOG_INFO,
                  "conn=%llu peer=%s proto=%s%s%s close reason=\"%s\" bytes_in=%llu "
                  "bytes_out=%llu",
                  (unsigned long long)c->id, c->peer, c->proto->name,
                  c->device[0] ? " device=" : "", c->device, log_q(why),
                  (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out);
    if (c->proto_state && c->proto->close)
        c->proto->close(c->proto_state, why);
    c->proto_state = NULL;
    if (c->xport_state && c->xport->close)
        c->xport->close(c->xport_state);
    c->xport_state = NULL;
    wait_list_remove(r, c);
    while (c->nwaiters) { /* ok = -1: cancelled, so owners of tags can free them */
        struct conn_waiter w = c->waiters[c->waiters_head];
        c->waiters_head = (c->waiters_head + 1) % c->waiters_cap;
        c->nwaiters--;
        w.fn(c, w.tag, -1);
    }
    unlink_walked(r, &r->all, &c->reg_link);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_close);
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
    if (c->closing)
        return;
    if (c->nwaiters == c->waiters_cap) {
        size_t cap = c->waiters_cap ? c->waiters_cap * 2 : 16;
        struct conn_waiter *w = xmalloc(cap * sizeof *w);
        for (size_t i = 0; i < c->nwaiters; i++)
            w[i] = c->waiters[(c->waiters_head + i) % c->waiters_cap];
        free(c->waiters);
        c->waiters = w;
        c->waiters_cap = cap;
        c->waiters_head = 0;
    }
    c->waiters[(c->waiters_head + c->nwaiters) % c->waiters_cap] =
        (struct conn_waiter){t ? *t : (struct ticket){0, 0}, tag, fn, failed, uv_hrtime() / 1000};
    c->nwaiters++;
    if (!list_linked(&r->waiting, &c->wait_link))
        list_push_front(&r->waiting, &c->wait_link);
}

void conn_registry_durable(struct conn_registry *r, uint64_t from_seq, uint64_t upto_seq,
                           int ok)
{
    struct conn_iter it;
    struct list_link *e;

    iter_start(&it, r, &r->waiting); /* a callback may close or unlink any connection */
    while ((e = iter_step(&it)) != NULL) {
        struct conn *c = list_entry(e, struct conn, wait_link);
        conn_ref(c);
        if (!ok) { /* every pending ticket that names a failed write fails */
            for (size_t i = 0; i < c->nwaiters; i++) {
                struct conn_waiter *w = &c->waiters[(c->waiters_head + i) % c->waiters_cap];
                if (!ticket_empty(&w->t) && w->t.first <= upto_seq && w->t.last > from_seq)
                    w->failed = true;
            }
        }
        while (c->nwaiters && !c->closing) {
            struct conn_waiter w = c->waiters[c->waiters_head];
            if (w.t.last > upto_seq)
                break;
            c->waiters_head = (c->waiters_head + 1) % c->waiters_cap;
            c->nwaiters--;
            if (!w.failed && !ticket_empty(&w.t))
                hist_observe(&c->gw->metrics.ack_latency, uv_hrtime() / 1000 - w.since_us);
            w.fn(c, w.tag, w.failed ? 0 : 1);
        }
        if (c->nwaiters == 0)
            wait_list_remove(r, c);
        conn_unref(c);
    }
}

void conn_registry_close_all(struct conn_registry *r, const char *why)
{
    while (r->all.head)
        conn_close(list_entry(r->all.head, struct conn, reg_link), why);
}
