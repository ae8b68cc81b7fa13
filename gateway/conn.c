/* gateway/conn.c: connection objects, the registry of live connections, the
 * send path, auth/idle timers and durable waiters. Loop thread only.
 *
 * Reads land straight in c->in (on_alloc reserves room at its tail), the
 * protocol's feed() decodes and consumes. Writes try uv_try_write() first and
 * queue only what the kernel did not take. One timer per connection serves the
 * auth deadline and then the idle deadline (re-armed lazily from the time of the
 * last read, so a busy connection does not touch the timer heap per read). */
#include "gateway/conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"
#include "gateway/log.h"
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
static void start_timer(struct conn *c);

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

static void registry_add(struct gw *gw, struct conn *c)
{
    c->next = gw->conns;
    if (gw->conns)
        gw->conns->prev = c;
    gw->conns = c;
    gw->nconns++;
}

static void registry_remove(struct gw *gw, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (gw->conns == c)
        gw->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    gw->nconns--;
}

static void wait_list_remove(struct gw *gw, struct conn *c)
{
    if (!c->on_wait_list)
        return;
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        gw->waiting = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    c->wprev = c->wnext = NULL;
    c->on_wait_list = false;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct conn *c = h->data;
    struct buf *b = c->xport ? &c->raw : &c->in;
    (void)suggested;
    out->base = (char *)buf_reserve(b, READ_CHUNK);
    out->len = b->cap - b->len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    (void)b;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? "peer closed" : uv_strerror((int)nread));
        return;
    }
    buf_commit(c->xport ? &c->raw : &c->in, (size_t)nread);
    c->bytes_in += (uint64_t)nread;
    c->gw->metrics.bytes_in += (uint64_t)nread;
    c->last_read_mono_ms = gw_mono_ms();
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
    bool want = !c->closing && !c->paused && !(c->ingest && c->gw->ingest_paused);
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
        uint64_t idle = now - c->last_read_mono_ms;
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

struct conn *conn_accept(struct gw *gw, uv_stream_t *server, const char *listener,
                         const struct proto_ops *proto)
{
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
        log_warn("listener=%s accept failed reason=\"%s\"", listener, uv_strerror(rc));
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    memset(&ss, 0, sizeof ss);
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    format_peer(&ss, c->peer, sizeof c->peer);
    if (gw->stopping || (int)gw->nconns >= gw->cfg->limits.max_connections) {
        gw->metrics.connections_refused++;
        log_warn("listener=%s peer=%s refused reason=\"%s\" limit=%d", listener, c->peer,
                 gw->stopping ? "shutting down" : "max connections reached",
                 gw->cfg->limits.max_connections);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return NULL;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->id = ++gw->next_conn_id;
    c->listener = listener;
    c->proto = proto;
    c->connected_ms = gw_now_ms();
    c->last_read_mono_ms = gw_mono_ms();
    c->idle_timeout_ms = (unsigned)gw->cfg->limits.idle_timeout_ms;
    uv_timer_init(gw->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    registry_add(gw, c);
    gw->metrics.connections_total++;
    log_debug("conn=%llu peer=%s proto=%s open", (unsigned long long)c->id, c->peer, proto->name);
    c->proto_state = proto->open(c);
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
    free(c->waiters);
    free(c);
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles_open == 0)
        conn_unref(c);
}

void conn_close(struct conn *c, const char *why)
{
    struct gw *gw = c->gw;
    if (c->closing)
        return;
    if (c->xport && c->xport->goodbye && c->xport_state) {
        c->xport->goodbye(c->xport_state, gw->stopping);
        if (c->closing)
            return; /* the goodbye's write failed and closed the connection */
    }
    c->closing = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    /* HTTP connections come and go by the thousand: their closes are debug noise */
    log_write(strcmp(c->proto->name, "http") == 0 ? LOG_DEBUG : LOG_INFO,
              "conn=%llu peer=%s proto=%s%s%s close reason=\"%s\" bytes_in=%llu bytes_out=%llu",
             (unsigned long long)c->id, c->peer, c->proto->name, c->device[0] ? " device=" : "",
             c->device, why, (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out);
    if (c->proto_state && c->proto->close)
        c->proto->close(c->proto_state, why);
    c->proto_state = NULL;
    if (c->xport_state && c->xport->close)
        c->xport->close(c->xport_state);
    c->xport_state = NULL;
    wait_list_remove(gw, c);
    while (c->nwaiters) { /* ok = -1: cancelled, so owners of tags can free them */
        struct conn_waiter w = c->waiters[c->waiters_head];
        c->waiters_head = (c->waiters_head + 1) % c->waiters_cap;
        c->nwaiters--;
        w.fn(c, w.tag, -1);
    }
    registry_remove(gw, c);
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
    struct gw *gw = c->gw;
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
        (struct conn_waiter){t ? *t : (struct ticket){0, 0}, tag, fn, failed};
    c->nwaiters++;
    if (!c->on_wait_list) {
        c->wnext = gw->waiting;
        c->wprev = NULL;
        if (gw->waiting)
            gw->waiting->wprev = c;
        gw->waiting = c;
        c->on_wait_list = true;
    }
}

void conn_registry_durable(struct gw *gw, uint64_t from_seq, uint64_t upto_seq, int ok)
{
    struct conn *c = gw->waiting, *next;
    while (c) {
        next = c->wnext;
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
            w.fn(c, w.tag, w.failed ? 0 : 1);
        }
        if (c->nwaiters == 0)
            wait_list_remove(gw, c);
        if (c->on_wait_list) /* a callback may have changed the list around c */
            next = c->wnext;
        conn_unref(c);
        c = next;
    }
}

void conn_registry_pause_ingest(struct gw *gw, bool paused)
{
    gw->ingest_paused = paused;
    for (struct conn *c = gw->conns; c; c = c->next)
        if (c->ingest)
            conn_update_reading(c);
}

void conn_registry_close_all(struct gw *gw, const char *why)
{
    while (gw->conns)
        conn_close(gw->conns, why);
}
