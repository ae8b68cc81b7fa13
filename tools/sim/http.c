/* tools/sim/http.c: the HTTP ingest devices (shttp_).
 *
 * Requests go out on keep-alive connections, pipelined; responses come back in order
 * (httpmsg.c builds and parses them). An HTTP device POSTs each message to
 * /api/devices/<id>/telemetry with its own token as the bearer; a 200 (sent once the
 * points are durable) is its ack. Its queued commands come in that reply
 * ({"stored":N,"commands":[{"id","name","params"}…]}); each is answered with
 * POST /api/devices/<id>/commands/<cmd>/result {"result":…,"name":…}. */
#include <cjson/cJSON.h>
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

struct hreq {
    struct dev *d;
    bool result;            /* a command's result, not telemetry */
};

struct hconn {
    struct snet *net;       /* NULL when none */
    struct hreq *fifo;      /* the requests that await their response, in order */
    size_t head, len, cap;
    struct buf out;         /* requests not yet written (while connecting) */
    uint64_t retry_at;      /* ms: no new connection before */
};

static struct {
    struct sim *s;
    struct hconn *c;
    int n;
} pool;

static void fifo_push(struct hconn *h, struct dev *d, bool result)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct hreq *f = xcalloc(cap, sizeof *f);
        for (size_t i = 0; i < h->len; i++)
            f[i] = h->fifo[(h->head + i) % h->cap];
        free(h->fifo);
        h->fifo = f;
        h->head = 0;
        h->cap = cap;
    }
    h->fifo[(h->head + h->len++) % h->cap] = (struct hreq){d, result};
}

static bool fifo_pop(struct hconn *h, struct hreq *out)
{
    if (h->len == 0)
        return false;
    *out = h->fifo[h->head];
    h->head = (h->head + 1) % h->cap;
    h->len--;
    return true;
}

/* Queues the results of the commands in a telemetry reply's "commands". */
static void answer_commands(struct hconn *h, struct dev *d, const struct shttp_resp *r)
{
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    const cJSON *cmd;

    cJSON_ArrayForEach(cmd, cJSON_GetObjectItemCaseSensitive(j, "commands"))
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(cmd, "id");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");
        const char *nm = cJSON_IsString(name) ? name->valuestring : "";
        char path[200];
        struct buf body;

        if (!cJSON_IsString(id) || strlen(id->valuestring) > 64) {
            dev_error(d, "a command without an id");
            continue;
        }
        buf_init(&body);
        buf_printf(&body, "{\"result\":\"%s\",\"name\":", dev_command_result(nm));
        buf_append_json_str(&body, nm, strlen(nm));
        buf_append_str(&body, "}");
        snprintf(path, sizeof path, "/api/devices/%s/commands/%s/result", d->id,
                 id->valuestring);
        shttp_request(&h->out, "POST", path, pool.s->http_host, d->token,
                      (const char *)body.data, body.len);
        buf_fini(&body);
        fifo_push(h, d, true);
        pool.s->st.cmds++;
    }
    cJSON_Delete(j);
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
        struct hreq q;
        if (!fifo_pop(h, &q)) {
            pool.s->st.errors++; /* a response nobody asked for */
            snet_close(n);
            return;
        }
        struct dev *d = q.d;
        if (used < 0) {
            if (!q.result && d->unacked > 0)
                d->unacked--;
            dev_error(d, "a malformed HTTP response");
            snet_close(n);
            return;
        }
        off += (size_t)used;
        if (q.result) {
            if (r.status != 200) {
                char why[200];
                snprintf(why, sizeof why, "a command's result: HTTP %d: %.*s", r.status,
                         (int)(r.body_len > 120 ? 120 : r.body_len), r.body);
                dev_error(d, why);
            }
        } else if (r.status == 200) {
            dev_acked(d, 1);
            if (d->token[0])
                answer_commands(h, d, &r);
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
    snet_write(n, &h->out);
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
    struct hreq q;
    unsigned lost = 0;

    while (fifo_pop(h, &q)) {
        if (!q.result && q.d->unacked > 0)
            q.d->unacked--;
        if (lost++ == 0 && !pool.s->stopping)
            dev_error(q.d, n->connected ? "HTTP connection closed with requests unanswered"
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
    fifo_push(h, d, false);
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
