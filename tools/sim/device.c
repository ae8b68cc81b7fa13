/* tools/sim/device.c: the life of one simulated device (dev_).
 *
 * A device ticks at its rate from a random offset within its first period, so a large
 * fleet does not send in lockstep. A tick of a connected device sends one message
 * (or skips it: a gap, or too many unacknowledged); a tick of a device without a
 * connection queues it for a connect slot. At most opts.connect_parallel connections
 * are being set up at once (Gale caps the unauthenticated connections of one address);
 * a device whose connection failed or ended waits before trying again (0.5 s doubling
 * to 30 s, with jitter). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "tools/sim/sim.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define WRITE_QUEUE_MAX 65536 /* bytes a device may have waiting for its socket */
#define ERROR_LOG_MAX 20 /* errors logged one by one; the progress line counts the rest */

static const struct proto_ops *ops_of(const struct dev *d)
{
    static const struct proto_ops *const ops[P_COUNT] = {&smqtt_ops, &sline_ops, &sws_ops,
                                                         &shttp_dev_ops};
    return ops[d->proto];
}

static void pump_connects(struct sim *s);

void dev_error(struct dev *d, const char *what)
{
    struct sim *s = d->sim;

    if (s->st.errors++ < ERROR_LOG_MAX)
        sim_log("device %s (%s): %s%s", d->id, proto_name[d->proto], what,
                s->st.errors == ERROR_LOG_MAX ? " (further errors are only counted)" : "");
}

static void on_net_close(struct snet *n)
{
    struct dev *d = n->owner;
    struct sim *s = d->sim;

    if (d->state == D_CONNECTING)
        s->st.connecting--;
    else if (d->state == D_READY)
        s->st.connected--;
    if (!d->done && !s->stopping && n->read_error != 0 &&
        (d->state == D_READY || d->state == D_CONNECTING))
        dev_error(d, n->read_error == UV_EOF
                         ? (d->state == D_READY ? "connection closed by the server"
                                                : "connection closed by the server while "
                                                  "logging in")
                         : uv_strerror(n->read_error));
    d->state = d->done ? D_DONE : D_IDLE;
    ops_of(d)->free(d);
    d->pstate = NULL;
    free(n);
    d->net = NULL;
    d->unacked = 0;
    d->backoff_ms = d->backoff_ms ? d->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (d->backoff_ms > BACKOFF_MAX_MS)
        d->backoff_ms = BACKOFF_MAX_MS;
    d->retry_at = sim_now_ms() + d->backoff_ms / 2 +
                  tele_rand(&d->tele.rng) % (d->backoff_ms / 2 + 1);
    pump_connects(s);
}

static void on_net_connect(struct snet *n, int status)
{
    struct dev *d = n->owner;

    if (status != 0) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
        dev_error(d, why);
        snet_close(n);
        return;
    }
    ops_of(d)->start(d);
}

static void on_net_read(struct snet *n)
{
    ops_of((struct dev *)n->owner)->read(n->owner);
}

static void dev_connect(struct dev *d)
{
    struct sim *s = d->sim;
    struct snet *n = xcalloc(1, sizeof *n);

    buf_init(&n->in);
    n->owner = d;
    n->on_connect = on_net_connect;
    n->on_read = on_net_read;
    n->on_close = on_net_close;
    d->net = n;
    d->state = D_CONNECTING;
    s->st.connecting++;
    int rc = snet_connect(n, s->loop, (const struct sockaddr *)&s->addr[d->proto]);
    if (rc != 0) {
        dev_error(d, uv_strerror(rc));
        if (!n->inited) { /* nothing will call back */
            s->st.connecting--;
            free(n);
            d->net = NULL;
            d->state = D_IDLE;
            d->retry_at = sim_now_ms() + BACKOFF_MAX_MS;
        }
    }
}

static void pump_connects(struct sim *s)
{
    size_t cap = (size_t)s->o.devices;

    while (!s->stopping && s->waitq_len > 0 && s->st.connecting < s->o.connect_parallel) {
        struct dev *d = s->waitq[s->waitq_head];
        s->waitq_head = (s->waitq_head + 1) % cap;
        s->waitq_len--;
        if (d->state == D_WAITING)
            dev_connect(d);
    }
}

static void wait_for_slot(struct dev *d)
{
    struct sim *s = d->sim;
    size_t cap = (size_t)s->o.devices;

    d->state = D_WAITING;
    s->waitq[(s->waitq_head + s->waitq_len) % cap] = d;
    s->waitq_len++;
    pump_connects(s);
}

static void on_tick(uv_timer_t *t)
{
    struct dev *d = t->data;
    struct sim *s = d->sim;

    if (s->stopping)
        return;
    if (d->state == D_IDLE) {
        if (sim_now_ms() >= d->retry_at) {
            if (d->retry_at != 0)
                s->st.reconnects++;
            wait_for_slot(d);
        }
        return;
    }
    if (d->state != D_READY)
        return;
    if (tele_uniform(&d->tele.rng) < s->o.gap_p) {
        s->st.gaps++;
        return;
    }
    /* too many unacknowledged, or (QoS 0) too much not yet written: Gale pushes back */
    if (d->unacked >= (unsigned)s->o.window ||
        (d->net && uv_stream_get_write_queue_size((uv_stream_t *)&d->net->tcp) > WRITE_QUEUE_MAX)) {
        s->st.skipped++;
        return;
    }
    struct buf msg;
    buf_init(&msg);
    int n = tele_message(&d->tele, sim_epoch_ms(), s->o.late_p, &msg);
    if (ops_of(d)->send(d, &msg) == 0) {
        s->st.sent++;
        if (n == 1)
            s->st.late++;
        if (++d->sent_n == s->o.count) {
            uv_timer_stop(&d->timer);
            d->timer_on = false;
        }
    }
    buf_fini(&msg);
}

void dev_start(struct dev *d)
{
    struct sim *s = d->sim;
    uint64_t period = (uint64_t)(1000.0 / s->o.rate);

    if (period == 0)
        period = 1;
    tele_init(&d->tele, s->o.seed ^ ((uint64_t)d->idx * 0x100000001B3ULL));
    uv_timer_init(s->loop, &d->timer);
    d->timer.data = d;
    d->started = true;
    /* the first tick connects; the first message follows one period later */
    uv_timer_start(&d->timer, on_tick, tele_rand(&d->tele.rng) % period, period);
    d->timer_on = true;
    if (d->proto == P_HTTP) { /* credentials go with each request on a shared connection */
        d->state = D_CONNECTING;
        s->st.connecting++;
        dev_ready(d);
    }
}

void dev_stop(struct dev *d)
{
    if (d->timer_on) {
        uv_timer_stop(&d->timer);
        d->timer_on = false;
    }
}

void dev_ready(struct dev *d)
{
    struct sim *s = d->sim;

    if (d->state != D_CONNECTING)
        return;
    d->state = D_READY;
    d->backoff_ms = 0;
    s->st.connecting--;
    s->st.connected++;
    s->ever_connected = true;
    pump_connects(s);
}

void dev_acked(struct dev *d, unsigned n)
{
    d->unacked = d->unacked > n ? d->unacked - n : 0;
    d->sim->st.acked += n;
}

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void dev_close_all(struct dev *d)
{
    dev_stop(d);
    if (d->started && !uv_is_closing((uv_handle_t *)&d->timer))
        uv_close((uv_handle_t *)&d->timer, on_timer_closed);
    if (d->net && d->net->open) {
        if (d->state == D_READY)
            ops_of(d)->finish(d);
        snet_close(d->net);
    }
    d->done = true;
    if (!d->net) {
        if (d->state == D_READY)
            d->sim->st.connected--;
        d->state = D_DONE;
    }
}

const char *dev_command_result(const char *name)
{
    if (name && strcmp(name, "ping") == 0)
        return "pong";
    return "ok";
}
