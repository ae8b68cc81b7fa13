/* gateway/gw.c: the event loop's lifecycle. Binds listeners, accepts
 * connections into the registry, wires storage durability and backpressure to
 * connections, and stops in order on SIGINT/SIGTERM: stop accepting, stop
 * reading, let storage make everything already received durable (acks still go
 * out), close connections, then stop the loop so main can close the store.
 * Loop thread only. */
#include "gateway/gw.h"

#include <stdio.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"
#include "gateway/devices.h"
#include "gateway/log.h"

#define STOP_DRAIN_MAX_MS 10000

static void on_connection(uv_stream_t *server, int status)
{
    struct gw_listener *l = server->data;
    if (status < 0) {
        log_warn("listener=%s accept error reason=\"%s\"", l->conn.name, uv_strerror(status));
        return;
    }
    conn_accept(server->loop->data, server, &l->conn);
}

int gw_parse_addr(const char *bind, int port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (strchr(bind, ':'))
        return uv_ip6_addr(bind, port, (struct sockaddr_in6 *)out);
    return uv_ip4_addr(bind, port, (struct sockaddr_in *)out);
}

int gw_listen(struct gw *gw, const struct gw_listen_cfg *cfg)
{
    const char *name = cfg->name, *bind = cfg->bind;
    int port = cfg->port;
    struct gw_listener *l;
    struct sockaddr_storage ss;
    int rc, len = sizeof ss;

    if (gw->nlisteners == (int)(sizeof gw->listeners / sizeof gw->listeners[0]))
        return GW_ELIMIT;
    l = &gw->listeners[gw->nlisteners];
    rc = gw_parse_addr(bind, port, &ss);
    if (rc != 0) {
        log_error("listener=%s bind=%s invalid address reason=\"%s\"", name, bind, uv_strerror(rc));
        return rc;
    }
    uv_tcp_init(gw->loop, &l->tcp);
    l->tcp.data = l;
    l->conn = (struct conn_listener){name, cfg->proto, cfg->ctx, cfg->tls, cfg->alpn, cfg->proxy};
    l->bind = bind;
    l->open = true;
    gw->nlisteners++;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
    if (rc != 0) {
        log_error("listener=%s bind=%s port=%d cannot listen reason=\"%s\"", name, bind, port,
                  uv_strerror(rc));
        return rc;
    }
    memset(&ss, 0, sizeof ss);
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len);
    l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

void gw_listener_set_ctx(struct gw *gw, const struct proto_ops *proto, void *ctx)
{
    for (int i = 0; i < gw->nlisteners; i++)
        if (gw->listeners[i].conn.proto == proto)
            gw->listeners[i].conn.ctx = ctx;
}

void gw_log_listening(const struct gw *gw)
{
    for (int i = 0; i < gw->nlisteners; i++) {
        unsigned proxy = gw->listeners[i].conn.proxy;
        if (proxy)
            log_info("listening protocol=%s port=%d bind=%s proxy_protocol=%s",
                     gw->listeners[i].conn.name, gw->listeners[i].port, gw->listeners[i].bind,
                     proxy == PROXY_ANY ? "any" : proxy == PROXY_V1 ? "v1" : "v2");
        else
            log_info("listening protocol=%s port=%d bind=%s", gw->listeners[i].conn.name,
                     gw->listeners[i].port, gw->listeners[i].bind);
    }
}

int gw_listener_port(const struct gw *gw, const char *name)
{
    for (int i = 0; i < gw->nlisteners; i++)
        if (strcmp(gw->listeners[i].conn.name, name) == 0)
            return gw->listeners[i].port;
    return -1;
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct gw *gw = s->data;
    gw_stop(gw, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

int gw_start(struct gw *gw)
{
    gw->loop->data = gw;
    gw->started_ms = gw_now_ms();
    uv_signal_init(gw->loop, &gw->sigint);
    uv_signal_init(gw->loop, &gw->sigterm);
    gw->sigint.data = gw->sigterm.data = gw;
    uv_signal_start(&gw->sigint, on_signal, SIGINT);
    uv_signal_start(&gw->sigterm, on_signal, SIGTERM);
    gw->started = true;
    return 0;
}

static bool storage_pending(const struct gw *gw)
{
    return gw->storage.ctx && gw->storage.pending(gw->storage.ctx);
}

static void storage_flush(const struct gw *gw)
{
    if (gw->storage.ctx)
        gw->storage.flush(gw->storage.ctx);
}

size_t gw_storage_queued(const struct gw *gw)
{
    return gw->storage.ctx ? gw->storage.queued(gw->storage.ctx) : 0;
}

static void on_drain_check(uv_timer_t *t)
{
    struct gw *gw = t->data;
    if (storage_pending(gw) && uv_now(gw->loop) < gw->stop_deadline_ms)
        return; /* acks for what was received still go out */
    uv_timer_stop(t);
    conn_registry_close_all(gw->conns, "shutting down");
    uv_close((uv_handle_t *)t, NULL);
    uv_stop(gw->loop);
}

void gw_stop(struct gw *gw, const char *why)
{
    struct conn_iter it;
    struct conn *c;

    if (gw->stopping)
        return;
    gw->stopping = true;
    storage_flush(gw); /* what was received is committed without waiting for company */
    log_info("stopping reason=%s connections=%zu", why, conn_registry_count(gw->conns));
    for (int i = 0; i < gw->nlisteners; i++) {
        if (gw->listeners[i].open) {
            uv_close((uv_handle_t *)&gw->listeners[i].tcp, NULL);
            gw->listeners[i].open = false;
        }
    }
    conn_iter_begin(&it, gw->conns);
    while ((c = conn_iter_next(&it)) != NULL)
        conn_pause(c);
    uv_signal_stop(&gw->sigint);
    uv_signal_stop(&gw->sigterm);
    gw->stop_deadline_ms = uv_now(gw->loop) + STOP_DRAIN_MAX_MS;
    uv_timer_init(gw->loop, &gw->drain);
    gw->drain.data = gw;
    uv_timer_start(&gw->drain, on_drain_check, 0, 10);
}

void gw_close_handles(struct gw *gw)
{
    for (int i = 0; i < gw->nlisteners; i++) {
        if (gw->listeners[i].open) {
            uv_close((uv_handle_t *)&gw->listeners[i].tcp, NULL);
            gw->listeners[i].open = false;
        }
    }
    if (!gw->started)
        return; /* start-up failed before the signal handlers existed */
    if (!uv_is_closing((uv_handle_t *)&gw->sigint))
        uv_close((uv_handle_t *)&gw->sigint, NULL);
    if (!uv_is_closing((uv_handle_t *)&gw->sigterm))
        uv_close((uv_handle_t *)&gw->sigterm, NULL);
}

void gw_on_durable(void *ctx, uint64_t upto_seq, int ok)
{
    struct gw *gw = ctx;
    uint64_t from = gw->durable_seq;

    if (upto_seq <= from)
        return;
    gw->durable_seq = upto_seq;
    if (!ok) {
        gw->metrics.storage_failures++;
        if (gw->storage_full)
            gw->metrics.storage_refused += upto_seq - from;
        gw->failed[gw->nfailed++ % 16] = (struct ticket){from + 1, upto_seq};
    }
    /* before any ack: an acked value is in latest for the very next read */
    if (gw->devices)
        devices_durable(gw->devices, upto_seq, ok != 0);
    if (gw->on_settled)
        gw->on_settled(gw->settled_ctx, from, upto_seq, ok);
    conn_registry_durable(gw->conns, from, upto_seq, ok);
}

void gw_on_storage_full(void *ctx, int full)
{
    struct gw *gw = ctx;

    gw->storage_full = full != 0;
}

/* A ticket whose writes were all reported already: did any of them fail? */
static bool reported_failed(const struct gw *gw, const struct ticket *t)
{
    unsigned n = gw->nfailed < 16 ? gw->nfailed : 16;
    for (unsigned i = 0; i < n; i++) {
        const struct ticket *f = &gw->failed[i];
        if (f->first <= t->last && f->last >= t->first)
            return true;
    }
    return false;
}

void gw_on_pressure(void *ctx, int paused)
{
    struct gw *gw = ctx;
    struct conn_iter it;
    struct conn *c;

    if (paused) {
        gw->metrics.ingest_pauses++;
        log_warn("storage queue above high water rows=%zu: pausing ingest reads",
                 gw_storage_queued(gw));
    } else {
        log_info("storage queue below low water rows=%zu: resuming ingest reads",
                 gw_storage_queued(gw));
    }
    gw->ingest_paused = paused != 0;
    /* Only ingest connections are held; a protocol that defers ingest itself has input
     * waiting, which the release feeds (that may push back again: a nested walk). */
    conn_iter_begin(&it, gw->conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        if (!c->ingest)
            continue;
        conn_update_reading(c);
        if (!paused && c->ingest_hold_bytes)
            conn_refeed(c);
    }
}

void gw_await_durable(struct conn *c, const struct ticket *t, uint64_t tag, conn_durable_fn fn)
{
    struct gw *gw = c->gw;
    bool done = ticket_empty(t) || t->last <= gw->durable_seq;
    bool failed = !ticket_empty(t) && done && reported_failed(gw, t);

    if (c->closing) { /* as a cancelled waiter: the owner of tag releases it, sends nothing */
        fn(c, tag, -1);
        return;
    }
    if (done && !conn_has_waiters(c)) {
        fn(c, tag, failed ? 0 : 1); /* nothing to wait for, or already reported */
        return;
    }
    if (!done)
        storage_flush(gw); /* an ack waits: its writes go without waiting for company */
    conn_await_durable(c, done ? NULL : t, failed, tag, fn);
}
