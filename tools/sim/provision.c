/* tools/sim/provision.c: the devices' tokens from Gale's REST API (prov_).
 *
 * For each device: POST /api/devices {"id":…} → 201 {"token":…}; when it exists
 * already (409), POST /api/devices/<id>/token gives it a new token (the old one stops
 * working, so a second gale-sim on the same ids takes them over). A few keep-alive
 * connections work through the list in parallel. A refused API key, an unexpected
 * answer or a lost connection ends the run (exit 1). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "tools/sim/sim.h"

struct prov;

struct pconn {
    struct snet net;
    struct prov *p;
    int dev;            /* index of the device being provisioned, -1 when none */
    bool renewing;      /* the POST …/token step */
};

struct prov {
    struct sim *s;
    void (*done)(struct sim *s, int rc);
    struct pconn *conns;
    int nconns, open, next, finished;
    int rc;
    struct buf out;
};

static void next_request(struct pconn *c);

static void prov_fail(struct prov *p, const char *why)
{
    if (p->rc == 0)
        sim_log("provisioning: %s", why);
    p->rc = 1;
    for (int i = 0; i < p->nconns; i++)
        snet_close(&p->conns[i].net);
}

static void send_request(struct pconn *c)
{
    struct prov *p = c->p;
    struct dev *d = &p->s->devs[c->dev];
    char path[128];

    if (c->renewing) {
        snprintf(path, sizeof path, "/api/devices/%s/token", d->id);
        shttp_request(&p->out, "POST", path, p->s->http_host, p->s->o.key, NULL, 0);
    } else {
        char body[96];
        int n = snprintf(body, sizeof body, "{\"id\":\"%s\"}", d->id);
        shttp_request(&p->out, "POST", "/api/devices", p->s->http_host, p->s->o.key, body,
                      (size_t)n);
    }
    snet_write(&c->net, &p->out);
}

static void next_request(struct pconn *c)
{
    struct prov *p = c->p;

    if (p->rc != 0 || p->next >= p->s->o.devices) {
        c->dev = -1;
        snet_close(&c->net);
        return;
    }
    c->dev = p->next++;
    c->renewing = false;
    send_request(c);
}

static void on_response(struct pconn *c, const struct shttp_resp *r)
{
    struct prov *p = c->p;
    struct dev *d = &p->s->devs[c->dev];
    if (r->status == 409 && !c->renewing) {
        c->renewing = true;
        send_request(c);
        return;
    }
    if (r->status != 201 && r->status != 200) {
        char why[256];
        snprintf(why, sizeof why, "%s: HTTP %d%s: %.*s", d->id, r->status,
                 r->status == 401 || r->status == 403 ? " (the API key was refused)" : "",
                 (int)(r->body_len > 160 ? 160 : r->body_len), r->body);
        prov_fail(p, why);
        return;
    }
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "token");
    if (!cJSON_IsString(tok) || strlen(tok->valuestring) >= sizeof d->token) {
        cJSON_Delete(j);
        prov_fail(p, "no token in the answer");
        return;
    }
    snprintf(d->token, sizeof d->token, "%s", tok->valuestring);
    cJSON_Delete(j);
    p->finished++;
    next_request(c);
}

static void on_read(struct snet *n)
{
    struct pconn *c = n->owner;
    size_t off = 0;

    while (c->dev >= 0 && n->open) {
        struct shttp_resp r;
        long used = shttp_parse(n->in.data + off, n->in.len - off, &r);
        if (used == 0)
            break;
        if (used < 0) {
            prov_fail(c->p, "a malformed HTTP response");
            return;
        }
        off += (size_t)used;
        on_response(c, &r);
    }
    if (n->open)
        buf_consume(&n->in, off);
}

static void on_connect(struct snet *n, int status)
{
    struct pconn *c = n->owner;

    if (status != 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot connect to the HTTP port: %s", uv_strerror(status));
        prov_fail(c->p, why);
        return;
    }
    next_request(c);
}

static void on_close(struct snet *n)
{
    struct pconn *c = n->owner;
    struct prov *p = c->p;

    if (c->dev >= 0 && p->rc == 0)
        prov_fail(p, "the server closed the connection");
    if (--p->open > 0)
        return;
    struct sim *s = p->s;
    void (*done)(struct sim *, int) = p->done;
    int rc = p->rc;
    if (rc == 0)
        sim_log("provisioned %d devices", p->finished);
    buf_fini(&p->out);
    free(p->conns);
    free(p);
    done(s, rc);
}

void prov_run(struct sim *s, void (*done)(struct sim *s, int rc))
{
    struct prov *p = xcalloc(1, sizeof *p);
    int n = s->o.provision_parallel < s->o.devices ? s->o.provision_parallel : s->o.devices;

    p->s = s;
    p->done = done;
    p->nconns = n;
    p->conns = xcalloc((size_t)n, sizeof *p->conns);
    buf_init(&p->out);
    for (int i = 0; i < n; i++) {
        struct pconn *c = &p->conns[i];
        buf_init(&c->net.in);
        c->p = p;
        c->dev = -1;
        c->net.owner = c;
        c->net.on_connect = on_connect;
        c->net.on_read = on_read;
        c->net.on_close = on_close;
        snet_connect(&c->net, s->loop, (const struct sockaddr *)&s->http_addr);
        if (c->net.inited)
            p->open++; /* its close callback will come */
    }
    if (p->open == 0) {
        sim_log("provisioning: cannot connect to the HTTP port");
        buf_fini(&p->out);
        free(p->conns);
        free(p);
        done(s, 1);
    }
}

/* ---- --wait: GET /api/ready until 200, every WAIT_RETRY_MS, until a deadline */

#define WAIT_RETRY_MS 500

struct waiter {
    struct sim *s;
    void (*done)(struct sim *s, int rc);
    uv_timer_t timer;
    struct snet *net;
    uint64_t deadline;
    int last_status;        /* of the last answer, 0 when none */
    bool ready;
};

static void wait_try(uv_timer_t *t);

static void waiter_closed(uv_handle_t *h)
{
    struct waiter *w = h->data;
    struct sim *s = w->s;
    void (*done)(struct sim *, int) = w->done;
    bool ready = w->ready;

    free(w);
    if (!ready)
        sim_log("Gale did not become ready within %g s", s->o.wait_s);
    done(s, ready ? 0 : 1);
}

static void wait_net_closed(struct snet *n)
{
    struct waiter *w = n->owner;

    free(n);
    w->net = NULL;
    if (w->ready || sim_now_ms() >= w->deadline || w->s->stopping)
        uv_close((uv_handle_t *)&w->timer, waiter_closed);
    else
        uv_timer_start(&w->timer, wait_try, WAIT_RETRY_MS, 0);
}

static void wait_read(struct snet *n)
{
    struct waiter *w = n->owner;
    struct shttp_resp r;
    long used = shttp_parse(n->in.data, n->in.len, &r);

    if (used == 0)
        return;
    w->last_status = used > 0 ? r.status : 0;
    w->ready = used > 0 && r.status == 200;
    snet_close(n);
}

static void wait_connected(struct snet *n, int status)
{
    struct waiter *w = n->owner;
    struct buf b;

    if (status != 0) {
        snet_close(n);
        return;
    }
    buf_init(&b);
    shttp_request(&b, "GET", "/api/ready", w->s->http_host, NULL, NULL, 0);
    snet_write(n, &b);
    buf_fini(&b);
}

static void wait_try(uv_timer_t *t)
{
    struct waiter *w = t->data;
    struct snet *n = xcalloc(1, sizeof *n);

    buf_init(&n->in);
    n->owner = w;
    n->on_connect = wait_connected;
    n->on_read = wait_read;
    n->on_close = wait_net_closed;
    w->net = n;
    snet_connect(n, w->s->loop, (const struct sockaddr *)&w->s->http_addr);
    if (!n->inited) { /* nothing will call back: try again later */
        free(n);
        w->net = NULL;
        uv_timer_start(&w->timer, wait_try, WAIT_RETRY_MS, 0);
    }
}

void prov_wait_ready(struct sim *s, void (*done)(struct sim *s, int rc))
{
    struct waiter *w = xcalloc(1, sizeof *w);

    w->s = s;
    w->done = done;
    w->deadline = sim_now_ms() + (uint64_t)(s->o.wait_s * 1000);
    uv_timer_init(s->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, wait_try, 0, 0);
}
