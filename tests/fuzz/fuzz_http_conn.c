/* tests/fuzz/fuzz_http_conn.c: the HTTP server of a connection (protocols/http/http.c:
 * request assembly, pipelining, Expect: 100-continue, replies now and later, streamed
 * replies) and the REST routes that need no storage queries, driven from real loopback
 * sockets as the gateway runs them, with writes that fail and peers that reset.
 *
 * Each input builds a fresh world (tests/fuzz/conn_world.h): a libuv loop, a gw with an
 * HTTP listener on 127.0.0.1:0, the device registry (dev1/tok1 a device, app1/tok2 an
 * application, open1 a device without a token), API key "key1", the bus and a fake
 * storage that reports writes durable (or failed) when the input says so. The listener
 * answers with the REST state's server (its credentials check, its access log), its
 * request handler a small one of this file:
 *   /t/reply?n=N         200 with N bytes ("echo" in the query: the request's body)
 *   /t/close?n=N         the same with Connection: close
 *   /t/error             503 with the JSON error body
 *   /t/defer             the reply waits for the asynchronous work (the connection held
 *                        by conn_ref meanwhile, as a REST query holds it)
 *   /t/stream?n=N&piece=P[&async=1][&fail=1]
 *                        a streamed reply of N bytes in pieces of P (256 at most;
 *                        chunked on HTTP/1.1, ended by the close on 1.0); the
 *                        producer waits with http_stream_wait when the send queue
 *                        is over its mark, and with async=1 also for the
 *                        asynchronous work before each piece (a store query's next
 *                        page); fail=1: that work fails, and the producer closes the
 *                        connection mid-reply
 *   /api/health, /healthz, POST /api/devices/<id>/telemetry: the REST routes (the
 *                        ingest's reply waits for storage)
 *   anything else        404
 *
 * Input: byte 0 picks the configuration:
 *   bit 0: limits.max_send_queue_bytes 16384 (a stream's producer waits sooner)
 *   bit 1: small socket buffers (the clients' SO_RCVBUF 2048, the gateway's SO_SNDBUF
 *          4096): a deaf client's socket fills within KiB, the send queue grows
 *   bit 2: small request limits (http.max_header_bytes 256, http.max_body_bytes 1024,
 *          limits.preauth_max_bytes 64)
 *   bit 3: http.access_log = json
 *   bit 4: short deadlines (limits.auth_timeout_ms 30, limits.idle_timeout_ms 60): the
 *          0xc3 op lets them pass
 * then the operations of conn_world.h: clients 0..2 write (in one write or bytewise,
 * resetting right after or not), reset, close with a FIN, turn deaf and hear again; the
 * world reports storage writes durable or failed, pushes back, sets the write fault
 * seam (nth write, probability, seed), lets time pass, and (0x20) runs the asynchronous
 * work: deferred replies are sent, streams waiting on it write their next piece. After
 * each operation the loop runs until nothing more happens. What each client receives
 * must start as an HTTP/1.1 response; the world must then close with no handle left
 * open and no memory leaked (every producer released, every conn_ref dropped). */
#include "conn_world.h"

#include "protocols/http/http.h"
#include "web/rest.h"

#define REPLY_MAX 65536
#define STREAM_MAX (1 << 20)

enum work { WORK_DEFER, WORK_STREAM };

/* A reply in the making: deferred, or a streamed reply's producer. */
struct producer {
    struct producer *next;     /* in the world's list while waiting for the async work */
    struct conn *c;            /* referenced (conn_ref) while in that list */
    enum work kind;
    size_t left, piece, sent;
    bool async, fail;
};

struct world {
    struct cw w;               /* first: the storage callbacks' ctx is either */
    struct rest *rest;
    struct http_server srv;    /* the REST state's, with this file's handler */
    struct producer *waiting;  /* producers waiting for the async work */
    size_t nproducers;         /* alive (each one freed before the world closes) */
};

static struct world *the_world;

static struct producer *producer_new(enum work kind, struct conn *c)
{
    struct producer *p = calloc(1, sizeof *p);
    CHECK(p != NULL);
    p->kind = kind;
    p->c = c;
    the_world->nproducers++;
    return p;
}

static void producer_free(struct producer *p)
{
    the_world->nproducers--;
    free(p);
}

/* p waits for the async work, holding its connection. */
static void producer_hold(struct producer *p)
{
    conn_ref(p->c);
    p->next = the_world->waiting;
    the_world->waiting = p;
}

static size_t param(const struct http_req *req, const char *name, size_t dflt, size_t max)
{
    char v[32];
    size_t n;
    if (!http_query_param(req, name, v, sizeof v))
        return dflt;
    n = strtoul(v, NULL, 10);
    return n > max ? max : n;
}

static void produce(struct producer *p, struct http_conn *h);

static void on_stream_ready(void *ctx, struct http_conn *h, bool closed)
{
    struct producer *p = ctx;
    if (closed)
        producer_free(p);
    else
        produce(p, h);
}

/* Writes pieces until the send queue is over its mark (then waits for it to drain), a
 * piece needs the async work (then waits for that), or all is written (then ends). */
static void produce(struct producer *p, struct http_conn *h)
{
    static const char pattern[] = "0123456789abcdefghijklmnopqrstuvwxyz\n";
    char piece[4096];

    while (p->left > 0) {
        size_t n = p->left < p->piece ? p->left : p->piece;
        enum http_stream_rc rc;
        if (n > sizeof piece)
            n = sizeof piece;
        for (size_t i = 0; i < n; i++)
            piece[i] = pattern[(p->sent + i) % (sizeof pattern - 1)];
        rc = http_stream_write(h, piece, n);
        p->left -= n;
        p->sent += n;
        if (rc == HTTP_STREAM_CLOSED) { /* the write failed: h goes with the close */
            producer_free(p);
            return;
        }
        if (p->left == 0)
            break;
        if (rc == HTTP_STREAM_WAIT) {
            http_stream_wait(h, on_stream_ready, p);
            return;
        }
        if (p->async) {
            producer_hold(p);
            return;
        }
    }
    http_stream_end(h, "X-Fuzz-Sent: done\r\n");
    producer_free(p);
}

static void stream_start(struct http_conn *h, struct http_req *req)
{
    struct producer *p = producer_new(WORK_STREAM, http_conn_of(h));
    enum http_stream_rc rc;

    p->left = param(req, "n", 100, STREAM_MAX);
    p->piece = param(req, "piece", 1000, STREAM_MAX);
    if (p->piece < p->left / 256 + 1)
        p->piece = p->left / 256 + 1; /* 256 pieces at most: a run stays short */
    p->async = param(req, "async", 0, 1) != 0;
    p->fail = param(req, "fail", 0, 1) != 0;
    rc = http_stream_begin(h, 200, "text/plain", NULL, "X-Fuzz-Sent");
    if (rc != HTTP_STREAM_MORE) {
        if (rc == HTTP_STREAM_WAIT)
            http_stream_end(h, NULL); /* HEAD */
        producer_free(p);
        return;
    }
    if (p->async)
        producer_hold(p);
    else
        produce(p, h);
}

/* The async work completes: deferred replies go out, streams write on (or fail). */
static void run_async(struct cw *cw)
{
    struct world *w = (struct world *)cw;
    struct producer *p = w->waiting;

    w->waiting = NULL;
    while (p) {
        struct producer *next = p->next;
        struct conn *c = p->c;
        struct http_conn *h = http_from_conn(c);
        if (!h) { /* the client went away meanwhile */
            producer_free(p);
        } else if (p->kind == WORK_DEFER) {
            if (http_current(h))
                http_respond(h, 200, "text/plain", "deferred\n", 9, NULL);
            producer_free(p);
        } else if (p->fail) {
            conn_close(c, "producer failed while streaming");
            producer_free(p);
        } else {
            produce(p, h);
        }
        conn_unref(c);
        p = next;
    }
}

static bool rest_route(const struct http_req *req)
{
    const char *path = req->path;
    size_t len = strlen(path);
    if (strcmp(path, "/api/health") == 0 || strcmp(path, "/healthz") == 0)
        return true;
    return strcmp(req->method, "POST") == 0 && strncmp(path, "/api/devices/", 13) == 0 &&
           len > 13 + 10 && strcmp(path + len - 10, "/telemetry") == 0 &&
           memchr(path + 13, '/', len - 13 - 10) == NULL;
}

static void handle(void *ctx, struct http_conn *h, struct http_req *req)
{
    struct world *w = the_world;
    static char body[REPLY_MAX];
    const char *path = req->path;
    (void)ctx;

    if (strcmp(path, "/t/reply") == 0 || strcmp(path, "/t/close") == 0) {
        size_t n = param(req, "n", 16, REPLY_MAX);
        const void *b = body;
        if (strstr(req->query, "echo")) {
            b = req->body ? (const void *)req->body : "";
            n = req->body ? req->body_len : 0;
        } else {
            memset(body, 'r', n);
        }
        if (path[3] == 'c')
            req->keep_alive = false;
        http_respond(h, 200, "text/plain", b, n, "X-Fuzz: 1\r\n");
    } else if (strcmp(path, "/t/error") == 0) {
        http_respond_error(h, 503, "fuzz", "an error reply");
    } else if (strcmp(path, "/t/defer") == 0) {
        producer_hold(producer_new(WORK_DEFER, http_conn_of(h)));
    } else if (strcmp(path, "/t/stream") == 0) {
        stream_start(h, req);
    } else if (rest_route(req)) {
        rest_handle(w->rest, h, req);
    } else {
        http_respond_error(h, 404, "not_found", "no such resource");
    }
}

/* What a client receives starts as an HTTP/1.1 response. */
static void client_check(struct cw_client *cl)
{
    static const char start[] = "HTTP/1.1 ";
    if (cl->state == 0 && cl->in.len >= sizeof start - 1) {
        CHECK(memcmp(cl->in.data, start, sizeof start - 1) == 0);
        cl->state = 1;
    }
    if (cl->state == 1)
        cl->in.len = 0;
}

static void world_open(struct world *wd, uint8_t flags)
{
    struct cw *w = &wd->w;

    memset(wd, 0, sizeof *wd);
    the_world = wd;
    w->name = "fuzz_http_conn";
    w->check = client_check;
    w->async = run_async;
    config_defaults(&w->cfg);
    if (flags & 0x01)
        w->cfg.limits.max_send_queue_bytes = 16384;
    if (flags & 0x02) {
        w->rcvbuf = 2048;
        w->sndbuf = 4096;
    }
    if (flags & 0x04) {
        w->cfg.http.max_header_bytes = 256;
        w->cfg.http.max_body_bytes = 1024;
        w->cfg.limits.preauth_max_bytes = 64;
    }
    if (flags & 0x08)
        w->cfg.http.access_log = CONFIG_ACCESS_LOG_JSON;
    if (flags & 0x10) {
        w->cfg.limits.auth_timeout_ms = 30;
        w->cfg.limits.idle_timeout_ms = 60;
    }

    cw_start(w);
    snprintf(w->gw.api_key, sizeof w->gw.api_key, "key1");
    wd->rest = rest_new(&w->gw, NULL, NULL); /* no route of those served queries storage */
    wd->srv = *rest_http_server(wd->rest);
    wd->srv.on_request = handle;
    CHECK(gw_listen(&w->gw, &(struct gw_listen_cfg){"http", "127.0.0.1", 0, &http_proto,
                                                    &wd->srv, NULL, NULL, 0}) == 0);
    w->port = w->gw.listeners[0].port;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct world w;

    cw_once();
    if (size < 1)
        return 0;
    world_open(&w, data[0]);
    cw_run(&w.w, data + 1, size - 1);
    cw_close(&w.w);
    CHECK(w.waiting == NULL && w.nproducers == 0);
    rest_free(w.rest);
    cw_fini(&w.w);
    return 0;
}
