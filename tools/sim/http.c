/* tools/sim/http.c: the HTTP ingest devices (shttp_).
 *
 * Requests go out on keep-alive connections, pipelined; responses come back in order
 * (httpmsg.c builds and parses them). An HTTP device POSTs each message to
 * /api/devices/<id>/telemetry with its own token as the bearer; a 200 (sent once the
 * points are durable) is its ack. Commands do not reach an HTTP device (it holds no
 * connection Gale could send them on). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "tools/sim/sim.h"

/* ---- the HTTP ingest devices: requests ride a small pool of keep-alive connections
 * (device i on connection i % n), each request with its own device's token. A
 * connection per device would not do: an HTTP connection is never "authenticated", so
 * Gale counts every idle one against limits.max_connections_per_ip; and a connection
 * per request would run the machine out of ports (TIME_WAIT). */

struct hconn {
    struct snet *net;       /* NULL when none */
    struct dev **fifo;      /* the devices whose requests await their response, in order */
    size_t head, len, cap;
    struct buf out;         /* requests not yet written (while connecting) */
    uint64_t retry_at;      /* ms: no new connection before */
};

static struct {
    struct sim *s;
    struct hconn *c;
    int n;
} pool;

static void fifo_push(struct hconn *h, struct dev *d)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct dev **f = xcalloc(cap, sizeof *f);
        for (size_t i = 0; i < h->len; i++)
            f[i] = h->fifo[(h->head + i) % h->cap];
        free(h->fifo);
        h->fifo = f;
        h->head = 0;
        h->cap = cap;
    }
    h->fifo[(h->head + h->len++) % h->cap] = d;
}

static struct dev *fifo_pop(struct hconn *h)
{
    if (h->len == 0)
        return NULL;
    struct dev *d = h->fifo[h->head];
    h->head = (h->head + 1) % h->cap;
    h->len--;
    return d;
}

static void hconn_read(struct snet *n)
{
    struct hconn *h = n->owner;
    struct buf *in = &n->in;
    size_t off = 0;

    for (;;) {
        struct shttp_resp r;
        long used = shttp_parse(in->data + off, in->len - off, &r);
        if (used == 0)
            break;
        struct dev *d = fifo_pop(h);
        if (used < 0 || !d) {
            if (d && d->unacked > 0)
                d->unacked--;
            if (d)
                dev_error(d, "a malformed HTTP response");
            else
                pool.s->st.errors++; /* a response nobody asked for */
            snet_close(n);
            return;
        }
        off += (size_t)used;
        if (r.status == 200) {
            dev_acked(d, 1);
        } else {
            char why[200];
            snprintf(why, sizeof why, "HTTP %d: %.*s", r.status,
                     (int)(r.body_len > 120 ? 120 : r.body_len), r.body);
            if (d->unacked > 0)
                d->unacked--;
            dev_error(d, why);
        }
    }
    buf_consume(in, off);
}

static void hconn_connected(struct snet *n, int status)
{
    struct hconn *h = n->owner;

    if (status != 0) {
        snet_close(n);
        return;
    }
    snet_write(n, &h->out);
}

static void hconn_closed(struct snet *n)
{
    struct hconn *h = n->owner;
    struct dev *d;
    unsigned lost = 0;

    while ((d = fifo_pop(h)) != NULL) {
        if (d->unacked > 0)
            d->unacked--;
        if (lost++ == 0 && !pool.s->stopping)
            dev_error(d, n->connected ? "HTTP connection closed with requests unanswered"
                                      : "cannot connect to the HTTP port");
    }
    if (lost > 1 && !pool.s->stopping)
        pool.s->st.errors += lost - 1;
    h->out.len = 0;
    h->net = NULL;
    h->retry_at = sim_now_ms() + 1000;
    free(n);
}

void shttp_pool_init(struct sim *s, int n)
{
    pool.s = s;
    pool.n = n;
    pool.c = xcalloc((size_t)n, sizeof *pool.c);
    for (int i = 0; i < n; i++)
        buf_init(&pool.c[i].out);
}

void shttp_pool_close(void)
{
    for (int i = 0; i < pool.n; i++)
        if (pool.c[i].net)
            snet_close(pool.c[i].net);
}

void shttp_pool_free(void)
{
    for (int i = 0; i < pool.n; i++) {
        buf_fini(&pool.c[i].out);
        free(pool.c[i].fifo);
    }
    free(pool.c);
    pool.c = NULL;
    pool.n = 0;
}

static void hdev_start(struct dev *d)
{
    (void)d; /* not called: an HTTP device needs no connection of its own */
}

static void hdev_read(struct dev *d)
{
    (void)d;
}

static int hdev_send(struct dev *d, const struct buf *msg)
{
    struct sim *s = d->sim;
    struct hconn *h = &pool.c[d->idx % pool.n];
    char path[128];

    if (!h->net) {
        if (sim_now_ms() < h->retry_at)
            return -1;
        struct snet *n = xcalloc(1, sizeof *n);
        buf_init(&n->in);
        n->owner = h;
        n->on_connect = hconn_connected;
        n->on_read = hconn_read;
        n->on_close = hconn_closed;
        h->net = n;
        if (snet_connect(n, s->loop, (const struct sockaddr *)&s->addr[P_HTTP]) != 0 &&
            !n->inited) {
            free(n);
            h->net = NULL;
            h->retry_at = sim_now_ms() + 1000;
            dev_error(d, "cannot open a socket");
            return -1;
        }
    }
    snprintf(path, sizeof path, "/api/devices/%s/telemetry", d->id);
    shttp_request(&h->out, "POST", path, s->http_host, d->token[0] ? d->token : NULL,
                  (const char *)msg->data, msg->len);
    fifo_push(h, d);
    d->unacked++;
    if (h->net->connected)
        snet_write(h->net, &h->out);
    return 0;
}

static void hdev_finish(struct dev *d)
{
    (void)d;
}

static void hdev_free(struct dev *d)
{
    (void)d;
}

const struct proto_ops shttp_dev_ops = {hdev_start, hdev_read, hdev_send, hdev_finish,
                                        hdev_free};
