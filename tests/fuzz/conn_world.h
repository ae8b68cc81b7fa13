/* tests/fuzz/conn_world.h: what the connection fuzz targets (fuzz_mqtt_conn, fuzz_ws_conn,
 * fuzz_http_conn) share: a world of a libuv loop, a gw with fake storage and the device
 * registry, clients on real loopback sockets, the operations an input is read as, and a
 * close that must leave no handle open. Included by one target source each (static
 * functions: the replay build compiles each target alone).
 *
 * Operations, one op byte each (after the configuration byte, which the target reads):
 *   op & 3 = 0..2 (client k), (op >> 2) & 3:
 *       0: a length byte and that many bytes, written by client k in one write
 *          (the client connects on its first write)
 *       1: the same, each byte in its own write and read
 *       2: client k closes with a reset (SO_LINGER 0 + close)
 *       3: client k closes gracefully (FIN), then resets once the gateway answered
 *     with 0x10 on a write (0, 1): client k resets right after its bytes, before the loop
 *       runs: the gateway reads them and the reset together, or writes to a reset peer
 *     with 0x20 (any of 0..3): first client k turns deaf (stops reading what the gateway
 *       sends: its socket buffers fill, the gateway's send queue grows) or hears again
 *   op & 3 = 3:
 *     with 0x10: the write fault seam (conn_registry_fail_writes): three bytes follow,
 *       nth (0: off), p in 1/256ths (0: off), and the seed
 *     with 0x20: the target's asynchronous work completes (cw.async: deferred replies,
 *       a streamed reply's next piece); nothing where a target has none
 *     with 0xc0 (both bits; no text byte has them): time passes: a byte follows, and the
 *       loop runs for that many milliseconds (CW_WAIT_MAX_MS in all at most per input),
 *       so that deadlines and timers fire (the targets' configurations can make them
 *       short)
 *     with none of those, (op >> 2) & 3: 0 storage reports every write so far durable,
 *       1 every write so far failed, 2 storage pushes back, 3 storage drains.
 *   Bits 0x40 and 0x80 are otherwise ignored.
 * After each operation the loop runs until nothing more happens.
 *
 * To see what an input does: CW_TRACE=1 build-fuzz/tests/fuzz/fuzz_<name> FILE prints
 * the gateway's log at debug level and what each client receives. */
#ifndef GALE_FUZZ_CONN_WORLD_H
#define GALE_FUZZ_CONN_WORLD_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "config/config.h"
#include "gateway/bus.h"
#include "gateway/conn.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/msg.h"
#ifdef CW_MQTT
#include "protocols/mqtt/broker.h"
#endif

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)
#define CW_CLIENTS 3
#define CW_WAIT_MAX_MS 150 /* the time an input may let pass, in all */

struct cw_client {
    int fd;             /* -1: not connected */
    bool deaf;          /* stopped reading what the gateway sends */
    struct buf in;      /* what the gateway sent, not yet decoded */
    size_t nmsgs;       /* decoded so far (the target's check counts) */
    int state;          /* the target's check's */
};

struct cw {
    struct config cfg;
    uv_loop_t loop;
    struct gw gw;
    struct devices devices;
    uint64_t last_seq;  /* the fake storage's last write */
    int port;           /* the listener the clients connect to */
    /* small socket buffers: the clients' SO_RCVBUF and the gateway's SO_SNDBUF (set on
     * each connection once accepted), so that a client that does not read fills them
     * within a few KiB and the gateway's send queue grows (loopback otherwise takes
     * megabytes); 0: the system's */
    int rcvbuf, sndbuf;
    uint64_t sndbuf_id; /* connections up to this id have it */
    uint64_t received;  /* bytes all clients received (the loop's progress on queued writes) */
    unsigned waited_ms; /* time let pass so far (the 0x40 op) */
    struct cw_client clients[CW_CLIENTS];
    /* decodes what a client received (consumes it), aborts on what must not come */
    void (*check)(struct cw_client *cl);
    /* the 0x20 world op: the target's asynchronous work completes; NULL: none */
    void (*async)(struct cw *w);
    const char *name;   /* "fuzz_mqtt_conn": for messages */
};

/* ---- the fake storage: write seqs handed out, reported when the input says so ---- */

static uint64_t cw_next_seq(struct cw *w)
{
    return ++w->last_seq;
}

static bool cw_storage_pending(void *ctx)
{
    struct cw *w = ctx;
    return w->last_seq > w->gw.durable_seq;
}

static size_t cw_storage_queued(void *ctx)
{
    struct cw *w = ctx;
    return (size_t)(w->last_seq - w->gw.durable_seq);
}

static void cw_storage_flush(void *ctx)
{
    (void)ctx; /* writes are reported when the input says so */
}

static void cw_storage_sink(void *ctx, struct msg *m, struct ticket *t)
{
    if (m->kind == MSG_TELEMETRY && m->device && m->device[0] && m->npoints > 0)
        ticket_add(t, cw_next_seq(ctx));
}

static uint64_t cw_dev_put(void *ctx, const struct device *d)
{
    (void)d;
    return cw_next_seq(ctx);
}

static uint64_t cw_dev_remove(void *ctx, const char *id)
{
    (void)id;
    return cw_next_seq(ctx);
}

static void cw_add_device(struct cw *w, const char *id, const char *token,
                          enum device_role role)
{
    char hash[DEVICE_TOKEN_HASH_HEX + 1];
    if (token)
        devices_hash_token(w->gw.token_secret, token, strlen(token), hash);
    devices_add(&w->devices, id, token ? hash : NULL, role, 1700000000000LL);
}

/* The world up to the listeners: w->cfg is set (config_defaults and the input's
 * choices); the target adds its parts and its listener, then sets w->port. Devices:
 * dev1/tok1 a device, app1/tok2 an application, open1 a device without a token. */
static void cw_start(struct cw *w)
{
    CHECK(uv_loop_init(&w->loop) == 0);
    w->gw.loop = &w->loop;
    w->loop.data = &w->gw;
    w->gw.cfg = &w->cfg;
    w->gw.storage = (struct gw_storage){w, cw_storage_pending, cw_storage_queued,
                                        cw_storage_flush, NULL};
    devices_init(&w->devices);
    devices_set_store(&w->devices, &(struct devices_store){w, cw_dev_put, cw_dev_put,
                                                           cw_dev_remove, cw_dev_remove});
    w->gw.devices = &w->devices;
    cw_add_device(w, "dev1", "tok1", DEVICE_ROLE_DEVICE);
    cw_add_device(w, "app1", "tok2", DEVICE_ROLE_APP);
    cw_add_device(w, "open1", NULL, DEVICE_ROLE_DEVICE);
    w->gw.bus = bus_new();
    w->gw.conns = conn_registry_new();
    bus_add_sink(w->gw.bus, "storage", cw_storage_sink, w); /* first, as in main.c */
    bus_add_sink(w->gw.bus, "latest", devices_sink, &w->devices);
    for (int i = 0; i < CW_CLIENTS; i++) {
        w->clients[i].fd = -1;
        buf_init(&w->clients[i].in);
    }
}

#ifdef CW_MQTT
/* ---- the MQTT broker's store (CW_MQTT defined): every write a seq of the fake
 * storage ---- */

static uint64_t cw_put_retained(void *ctx, const char *topic, const void *payload, size_t len,
                             uint8_t qos)
{
    (void)topic, (void)payload, (void)len, (void)qos;
    return cw_next_seq(ctx);
}

static uint64_t cw_put_session(void *ctx, const char *client_id, const char *record)
{
    (void)client_id, (void)record;
    return cw_next_seq(ctx);
}

static uint64_t cw_delete_session(void *ctx, const char *client_id)
{
    (void)client_id;
    return cw_next_seq(ctx);
}

static uint64_t cw_put_session_msg(void *ctx, const char *client_id, uint64_t msg_id,
                                const char *topic, const void *payload, size_t len, uint8_t qos,
                                uint8_t flags)
{
    (void)client_id, (void)msg_id, (void)topic, (void)payload, (void)len, (void)qos, (void)flags;
    return cw_next_seq(ctx);
}

static uint64_t cw_delete_session_msg(void *ctx, const char *client_id, uint64_t msg_id)
{
    (void)client_id, (void)msg_id;
    return cw_next_seq(ctx);
}

static uint64_t cw_put_session_sub(void *ctx, const char *client_id, const char *filter,
                                uint64_t qos)
{
    (void)client_id, (void)filter, (void)qos;
    return cw_next_seq(ctx);
}

static uint64_t cw_delete_session_sub(void *ctx, const char *client_id, const char *filter)
{
    (void)client_id, (void)filter;
    return cw_next_seq(ctx);
}

static int cw_load_retained(void *ctx, mqtt_store_retained_fn fn, void *fn_ctx)
{
    (void)ctx, (void)fn, (void)fn_ctx;
    return 0;
}

static int cw_load_sessions(void *ctx, mqtt_store_session_fn on_session,
                         mqtt_store_session_sub_fn on_sub, mqtt_store_session_msg_fn on_msg,
                         void *fn_ctx)
{
    (void)ctx, (void)on_session, (void)on_sub, (void)on_msg, (void)fn_ctx;
    return 0;
}

/* A broker on the world's gw whose every write is a seq of the fake storage. */
static struct mqtt_broker *cw_mqtt_broker_new(struct cw *w)
{
    struct mqtt_broker *b = mqtt_broker_new(&w->gw, &(struct mqtt_store){
        .ctx = w, .put_retained = cw_put_retained, .put_session = cw_put_session,
        .delete_session = cw_delete_session, .put_session_msg = cw_put_session_msg,
        .delete_session_msg = cw_delete_session_msg, .put_session_sub = cw_put_session_sub,
        .delete_session_sub = cw_delete_session_sub, .load_retained = cw_load_retained,
        .load_sessions = cw_load_sessions});
    CHECK(b != NULL);
    return b;
}
#endif

/* ---- the clients ---- */

/* Closes a client's socket with a reset. */
static void cw_client_reset(struct cw_client *cl)
{
    struct linger lg = {1, 0};
    if (cl->fd < 0)
        return;
    setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(cl->fd);
    cl->fd = -1;
}

/* Reads what the gateway sent to every client that hears, without blocking. */
static void cw_clients_drain(struct cw *w)
{
    for (int i = 0; i < CW_CLIENTS; i++) {
        struct cw_client *cl = &w->clients[i];
        for (;;) {
            ssize_t n;
            if (cl->fd < 0 || cl->deaf)
                break;
            buf_reserve(&cl->in, 4096);
            n = recv(cl->fd, cl->in.data + cl->in.len, 4096, MSG_DONTWAIT);
            if (n <= 0) {
                if (n == 0 || (errno != EAGAIN && errno != EINTR))
                    cw_client_reset(cl); /* the gateway closed it */
                break;
            }
            if (getenv("CW_TRACE")) {
                fprintf(stderr, "client %d <- %zd: ", i, n);
                for (ssize_t j = 0; j < n && j < 160; j++) {
                    uint8_t ch = (uint8_t)cl->in.data[cl->in.len + (size_t)j];
                    fprintf(stderr, ch >= 32 && ch < 127 ? "%c" : "\\x%02x", ch);
                }
                fprintf(stderr, "\n");
            }
            buf_commit(&cl->in, (size_t)n);
            w->received += (uint64_t)n;
        }
        w->check(cl);
    }
}

/* Runs the loop until two turns in a row change nothing: loopback delivers a write
 * within the write call, so what the clients sent has then been read and answered, and
 * what the gateway queued for clients that hear has reached them. */
static void cw_pump(struct cw *w)
{
    int quiet = 0;
    for (int turns = 0; turns < 1024 && quiet < 2; turns++) {
        uint64_t in = w->gw.metrics.bytes_in, out = w->gw.metrics.bytes_out;
        uint64_t received = w->received;
        size_t nconns = conn_registry_count(w->gw.conns);
        size_t nclosing = conn_registry_closing(w->gw.conns);
        uv_run(&w->loop, UV_RUN_NOWAIT);
        cw_clients_drain(w);
        if (in == w->gw.metrics.bytes_in && out == w->gw.metrics.bytes_out &&
            received == w->received && nconns == conn_registry_count(w->gw.conns) &&
            nclosing == conn_registry_closing(w->gw.conns))
            quiet++;
        else
            quiet = 0;
    }
}

/* A connect that libFuzzer's timer signal interrupted goes on in the kernel: waits for
 * it. True when it succeeded. */
static bool cw_connect_finish(int fd)
{
    struct pollfd p = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;

    if (errno != EINTR)
        return false;
    while (poll(&p, 1, 5000) < 0 && errno == EINTR)
        ;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        errno = err ? err : errno;
        return false;
    }
    return true;
}

static void cw_client_connect(struct cw *w, struct cw_client *cl)
{
    struct sockaddr_in sa;
    int one = 1;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)w->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cl->fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(cl->fd >= 0);
    setsockopt(cl->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (w->rcvbuf)
        setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &w->rcvbuf, sizeof w->rcvbuf);
    if (connect(cl->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && !cw_connect_finish(cl->fd)) {
        /* not the gateway's doing (a shared machine's port range can run dry): the
         * client stays unconnected and its bytes are dropped */
        fprintf(stderr, "%s: connect: %s\n", w->name, strerror(errno));
        close(cl->fd);
        cl->fd = -1;
        return;
    }
    cl->in.len = 0;
    cl->nmsgs = 0;
    cl->state = 0;
    cw_pump(w);
    if (w->sndbuf) { /* the connection is accepted: its socket's buffer */
        struct conn_iter it;
        struct conn *c;
        conn_iter_begin(&it, w->gw.conns);
        while ((c = conn_iter_next(&it)) != NULL) {
            uv_os_fd_t fd;
            if (c->id > w->sndbuf_id && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &w->sndbuf, sizeof w->sndbuf);
            if (c->id > w->sndbuf_id)
                w->sndbuf_id = c->id;
        }
    }
}

/* Closes client k: a reset (no TIME_WAIT left behind) or a FIN, after which the reset
 * comes once the gateway answered: thousands of runs a second must not fill the port
 * range with TIME_WAIT sockets. */
static void cw_client_close(struct cw *w, struct cw_client *cl, bool reset)
{
    if (cl->fd < 0)
        return;
    if (!reset) {
        shutdown(cl->fd, SHUT_WR);
        cw_pump(w);
    }
    cw_client_reset(cl);
    cw_pump(w);
}

/* Client cl writes len bytes (one write, or a write per byte with the loop run after
 * each); with reset_after, it resets at once after the last one, before the loop runs. */
static void cw_client_write(struct cw *w, struct cw_client *cl, const uint8_t *p, size_t len,
                            bool bytewise, bool reset_after)
{
    if (cl->fd < 0)
        cw_client_connect(w, cl);
    if (cl->fd < 0)
        return;
    for (size_t off = 0; off < len && cl->fd >= 0;) {
        size_t n = bytewise ? 1 : len - off;
        ssize_t sent = send(cl->fd, p + off, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            break; /* the gateway closed the connection */
        off += (size_t)sent;
        if (off < len || !reset_after)
            cw_pump(w);
    }
    if (reset_after)
        cw_client_reset(cl);
    if (reset_after || len == 0)
        cw_pump(w); /* also after no bytes: a client that hears again reads now */
}

/* Time passes: the loop runs (timers fire) for ms milliseconds, then until quiet. */
static void cw_wait(struct cw *w, unsigned ms)
{
    uint64_t end;

    if (ms > CW_WAIT_MAX_MS - w->waited_ms)
        ms = CW_WAIT_MAX_MS - w->waited_ms;
    w->waited_ms += ms;
    end = uv_hrtime() + (uint64_t)ms * 1000000;
    while (uv_hrtime() < end) {
        uv_run(&w->loop, UV_RUN_NOWAIT);
        cw_clients_drain(w);
        usleep(1000);
    }
    cw_pump(w);
}

/* ---- the input ---- */

/* Runs the operations of data[0..size) (the configuration byte already read). */
static void cw_run(struct cw *w, const uint8_t *data, size_t size)
{
    size_t off = 0;

    while (off < size) {
        uint8_t op = data[off++];
        unsigned k = op & 3, what = (op >> 2) & 3;
        if (k == 3) {
            if (op & 0x10) {
                uint8_t b[3] = {0, 0, 0};
                for (int i = 0; i < 3 && off < size; i++)
                    b[i] = data[off++];
                conn_registry_fail_writes(w->gw.conns, b[0], b[1] / 256.0, b[2]);
            }
            if ((op & 0x20) && w->async)
                w->async(w);
            if ((op & 0xc0) == 0xc0 && off < size)
                cw_wait(w, data[off++]);
            if (!(op & 0x30) && (op & 0xc0) != 0xc0) {
                if (what == 0 || what == 1)
                    gw_on_durable(&w->gw, w->last_seq, what == 0);
                else
                    gw_on_pressure(&w->gw, what == 2);
            }
            cw_pump(w);
            continue;
        }
        if (op & 0x20)
            w->clients[k].deaf = !w->clients[k].deaf;
        if (what <= 1) {
            size_t len = off < size ? data[off++] : 0;
            if (len > size - off)
                len = size - off;
            cw_client_write(w, &w->clients[k], data + off, len, what == 1, (op & 0x10) != 0);
            off += len;
        } else {
            cw_client_close(w, &w->clients[k], what == 2);
        }
    }
}

static void cw_on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes the world as main() stops: storage drains (acks go to connections whose peers
 * may have gone), connections close and their close callbacks run, then every handle;
 * the loop must close with none left. The target then frees its parts and calls
 * cw_fini. */
static void cw_close(struct cw *w)
{
    for (int i = 0; i < CW_CLIENTS; i++) {
        cw_client_reset(&w->clients[i]);
        buf_fini(&w->clients[i].in);
    }
    gw_on_durable(&w->gw, w->last_seq, 1);
    w->gw.stopping = true;
    conn_registry_close_all(w->gw.conns, "shutting down");
    while (conn_registry_closing(w->gw.conns) > 0)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    if (w->async)
        w->async(w); /* producers learn their connections are gone */
    gw_close_handles(&w->gw);
    uv_walk(&w->loop, cw_on_walk_close, NULL);
    while (uv_run(&w->loop, UV_RUN_NOWAIT) != 0)
        ;
    CHECK(uv_loop_close(&w->loop) == 0);
}

static void cw_fini(struct cw *w)
{
    conn_registry_free(w->gw.conns);
    bus_free(w->gw.bus);
    devices_fini(&w->devices);
}

/* Once per process: a write to a reset peer must not kill it, and the gateway's logs
 * stay quiet but for errors. */
static void cw_once(void)
{
    static bool once;
    if (!once) {
        signal(SIGPIPE, SIG_IGN);
        log_setup(getenv("CW_TRACE") ? LOG_DEBUG : LOG_ERROR, LOG_TEXT);
        once = true;
    }
}

#endif
