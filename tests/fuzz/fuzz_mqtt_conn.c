/* tests/fuzz/fuzz_mqtt_conn.c: the MQTT connection state machine and broker
 * (protocols/mqtt/handle.c, broker.c, retained.c, the device session behind them),
 * driven from real loopback sockets as the gateway runs them.
 *
 * Each input builds a fresh world: a libuv loop, a gw with an MQTT listener on
 * 127.0.0.1:0, the device registry (dev1/tok1 a device, app1/tok2 an application, open1
 * a device without a token), the bus and the broker. Storage is a fake that hands out
 * write seqs and reports them durable (or failed) only when the input says so, so acks
 * wait, fire and fail as they do in the gateway.
 *
 * Input: byte 0 picks the configuration:
 *   bit 0: mqtt.allow_anonymous          bit 1: small limits (inflight 2, queued 4,
 *   bit 2: a few ACL rules                      subscriptions 4, retained 4, packet 256)
 *   bit 3: devices.auto_register = true  bit 4: = false (else auto)
 * then operations, each one op byte:
 *   op & 3 = 0..2 (client k), (op >> 2) & 3:
 *       0: a length byte and that many bytes, written by client k in one write
 *          (the client connects on its first write)
 *       1: the same, each byte in its own write and read
 *       2: client k closes with a reset      3: client k closes gracefully (FIN)
 *   op & 3 = 3, (op >> 2) & 3: 0 storage reports every write so far durable,
 *       1 every write so far failed, 2 storage pushes back, 3 storage drains.
 * After each operation the loop runs until nothing more happens. What each client
 * receives must be a well-formed stream of MQTT packets, the first a CONNACK; the world
 * must then close with no handle left open and no memory leaked. */
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
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/msg.h"
#include "protocols/mqtt/broker.h"
#include "protocols/mqtt/mqtt.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)
#define NCLIENTS 3

static const char acl_rules[] =
    "[{\"user\":\"app1\",\"topic\":\"devices/#\",\"action\":\"subscribe\",\"allow\":true},"
    "{\"topic\":\"test/nosub\",\"action\":\"subscribe\",\"allow\":false},"
    "{\"client\":\"c?\",\"topic\":\"c/%c/#\",\"allow\":true},"
    "{\"user\":\"open1\",\"topic\":\"devices/+/telemetry\",\"action\":\"publish\","
    "\"allow\":false}]";

struct client {
    int fd;             /* -1: not connected */
    struct buf in;      /* what the gateway sent, not yet decoded */
    size_t npackets;    /* decoded so far */
};

struct world {
    struct config cfg;
    uv_loop_t loop;
    struct gw gw;
    struct devices devices;
    struct mqtt_broker *broker;
    uint64_t last_seq;  /* the fake storage's last write */
    int port;
    struct client clients[NCLIENTS];
};

/* ---- the fake storage ---- */

static uint64_t next_seq(struct world *w)
{
    return ++w->last_seq;
}

static bool storage_pending(void *ctx)
{
    struct world *w = ctx;
    return w->last_seq > w->gw.durable_seq;
}

static size_t storage_queued(void *ctx)
{
    struct world *w = ctx;
    return (size_t)(w->last_seq - w->gw.durable_seq);
}

static void storage_flush(void *ctx)
{
    (void)ctx; /* writes are reported when the input says so */
}

static void storage_sink(void *ctx, struct msg *m, struct ticket *t)
{
    if (m->kind == MSG_TELEMETRY && m->device && m->device[0] && m->npoints > 0)
        ticket_add(t, next_seq(ctx));
}

static uint64_t dev_put(void *ctx, const struct device *d)
{
    (void)d;
    return next_seq(ctx);
}

static uint64_t dev_remove(void *ctx, const char *id)
{
    (void)id;
    return next_seq(ctx);
}

static uint64_t put_retained(void *ctx, const char *topic, const void *payload, size_t len,
                             uint8_t qos)
{
    (void)topic, (void)payload, (void)len, (void)qos;
    return next_seq(ctx);
}

static uint64_t put_session(void *ctx, const char *client_id, const char *record)
{
    (void)client_id, (void)record;
    return next_seq(ctx);
}

static uint64_t delete_session(void *ctx, const char *client_id)
{
    (void)client_id;
    return next_seq(ctx);
}

static uint64_t put_session_msg(void *ctx, const char *client_id, uint64_t msg_id,
                                const char *topic, const void *payload, size_t len, uint8_t qos,
                                uint8_t flags)
{
    (void)client_id, (void)msg_id, (void)topic, (void)payload, (void)len, (void)qos, (void)flags;
    return next_seq(ctx);
}

static uint64_t delete_session_msg(void *ctx, const char *client_id, uint64_t msg_id)
{
    (void)client_id, (void)msg_id;
    return next_seq(ctx);
}

static uint64_t put_session_sub(void *ctx, const char *client_id, const char *filter,
                                uint8_t qos)
{
    (void)client_id, (void)filter, (void)qos;
    return next_seq(ctx);
}

static uint64_t delete_session_sub(void *ctx, const char *client_id, const char *filter)
{
    (void)client_id, (void)filter;
    return next_seq(ctx);
}

static int load_retained(void *ctx, mqtt_store_retained_fn fn, void *fn_ctx)
{
    (void)ctx, (void)fn, (void)fn_ctx;
    return 0;
}

static int load_sessions(void *ctx, mqtt_store_session_fn on_session,
                         mqtt_store_session_sub_fn on_sub, mqtt_store_session_msg_fn on_msg,
                         void *fn_ctx)
{
    (void)ctx, (void)on_session, (void)on_sub, (void)on_msg, (void)fn_ctx;
    return 0;
}

static void on_presence(struct gw *gw, const char *device, bool online)
{
    struct world *w = gw->hook_ctx;
    mqtt_broker_presence(w->broker, device, online);
}

/* ---- the world ---- */

static void add_device(struct world *w, const char *id, const char *token, enum device_role role)
{
    char hash[DEVICE_TOKEN_HASH_HEX + 1];
    if (token)
        devices_hash_token(w->gw.token_secret, token, strlen(token), hash);
    devices_add(&w->devices, id, token ? hash : NULL, role, 1700000000000LL);
}

static void world_open(struct world *w, uint8_t flags)
{
    memset(w, 0, sizeof *w);
    config_defaults(&w->cfg);
    w->cfg.mqtt.allow_anonymous = (flags & 0x01) != 0;
    if (flags & 0x02) {
        w->cfg.mqtt.max_inflight = 2;
        w->cfg.mqtt.max_queued = 4;
        w->cfg.mqtt.max_subscriptions = 4;
        w->cfg.mqtt.max_retained = 4;
        w->cfg.mqtt.max_packet_bytes = 256;
    }
    if (flags & 0x04)
        snprintf(w->cfg.mqtt.acl_json, sizeof w->cfg.mqtt.acl_json, "%s", acl_rules);
    if (flags & 0x08)
        w->cfg.devices.auto_register = CONFIG_REGISTER_ALWAYS;
    else if (flags & 0x10)
        w->cfg.devices.auto_register = CONFIG_REGISTER_NEVER;

    CHECK(uv_loop_init(&w->loop) == 0);
    w->gw.loop = &w->loop;
    w->loop.data = &w->gw;
    w->gw.cfg = &w->cfg;
    w->gw.hook_ctx = w;
    w->gw.on_presence = on_presence;
    w->gw.storage = (struct gw_storage){w, storage_pending, storage_queued, storage_flush, NULL};
    devices_init(&w->devices);
    devices_set_store(&w->devices, &(struct devices_store){w, dev_put, dev_put, dev_remove, dev_remove});
    w->gw.devices = &w->devices;
    add_device(w, "dev1", "tok1", DEVICE_ROLE_DEVICE);
    add_device(w, "app1", "tok2", DEVICE_ROLE_APP);
    add_device(w, "open1", NULL, DEVICE_ROLE_DEVICE);
    w->gw.bus = bus_new();
    w->gw.conns = conn_registry_new();
    bus_add_sink(w->gw.bus, "storage", storage_sink, w); /* first, as in main.c */
    bus_add_sink(w->gw.bus, "latest", devices_sink, &w->devices);
    w->broker = mqtt_broker_new(&w->gw, &(struct mqtt_store){
        .ctx = w, .put_retained = put_retained, .put_session = put_session,
        .delete_session = delete_session, .put_session_msg = put_session_msg,
        .delete_session_msg = delete_session_msg, .put_session_sub = put_session_sub,
        .delete_session_sub = delete_session_sub, .load_retained = load_retained,
        .load_sessions = load_sessions});
    CHECK(w->broker != NULL);
    CHECK(gw_listen(&w->gw, &(struct gw_listen_cfg){"mqtt", "127.0.0.1", 0, &mqtt_proto,
                                                    w->broker, NULL, NULL}) == 0);
    w->port = w->gw.listeners[0].port;
    for (int i = 0; i < NCLIENTS; i++) {
        w->clients[i].fd = -1;
        buf_init(&w->clients[i].in);
    }
}

/* Decodes what a client received: server packets, well formed, CONNACK first. */
static void client_check(struct client *cl)
{
    static const struct mqtt_limits lim = {0, MQTT_V311};
    size_t off = 0;

    while (off < cl->in.len) {
        struct mqtt_packet pkt;
        const char *why = NULL;
        size_t used = 0;
        enum codec_rc rc = mqtt_decode(&lim, cl->in.data + off, cl->in.len - off, &pkt, &used,
                                       &why);
        if (rc == CODEC_NEED_MORE)
            break;
        CHECK(rc == CODEC_FRAME);
        CHECK(cl->npackets > 0 || pkt.type == MQTT_CONNACK);
        switch (pkt.type) {
        case MQTT_CONNACK:
            CHECK(cl->npackets == 0);
            break;
        case MQTT_PUBLISH:
            CHECK(mqtt_topic_valid(pkt.publish.topic.p, pkt.publish.topic.len));
            break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
        case MQTT_PINGRESP:
            break;
        default:
            abort(); /* a packet only a client sends */
        }
        cl->npackets++;
        off += used;
    }
    buf_consume(&cl->in, off);
}

/* Closes a client's socket with a reset. */
static void client_reset(struct client *cl)
{
    struct linger lg = {1, 0};
    if (cl->fd < 0)
        return;
    setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(cl->fd);
    cl->fd = -1;
}

/* Reads what the gateway sent to every client, without blocking. */
static void clients_drain(struct world *w)
{
    for (int i = 0; i < NCLIENTS; i++) {
        struct client *cl = &w->clients[i];
        for (;;) {
            ssize_t n;
            if (cl->fd < 0)
                break;
            buf_reserve(&cl->in, 4096);
            n = recv(cl->fd, cl->in.data + cl->in.len, 4096, MSG_DONTWAIT);
            if (n <= 0) {
                if (n == 0 || (errno != EAGAIN && errno != EINTR))
                    client_reset(cl); /* the gateway closed it */
                break;
            }
            buf_commit(&cl->in, (size_t)n);
        }
        client_check(cl);
    }
}

/* Runs the loop until two turns in a row change nothing: loopback delivers a write
 * within the write call, so what the clients sent has then been read and answered. */
static void pump(struct world *w)
{
    int quiet = 0;
    for (int turns = 0; turns < 256 && quiet < 2; turns++) {
        uint64_t in = w->gw.metrics.bytes_in, out = w->gw.metrics.bytes_out;
        size_t nconns = conn_registry_count(w->gw.conns);
        uv_run(&w->loop, UV_RUN_NOWAIT);
        clients_drain(w);
        if (in == w->gw.metrics.bytes_in && out == w->gw.metrics.bytes_out &&
            nconns == conn_registry_count(w->gw.conns))
            quiet++;
        else
            quiet = 0;
    }
}

/* A connect that libFuzzer's timer signal interrupted goes on in the kernel: waits for
 * it. True when it succeeded. */
static bool connect_finish(int fd)
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

static void client_connect(struct world *w, struct client *cl)
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
    if (connect(cl->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && !connect_finish(cl->fd)) {
        /* not the gateway's doing (a shared machine's port range can run dry): the
         * client stays unconnected and its bytes are dropped */
        fprintf(stderr, "fuzz_mqtt_conn: connect: %s\n", strerror(errno));
        close(cl->fd);
        cl->fd = -1;
        return;
    }
    cl->in.len = 0;
    cl->npackets = 0;
    pump(w);
}

/* Closes client k: a reset (no TIME_WAIT left behind) or a FIN, after which the reset
 * comes once the gateway answered: thousands of runs a second must not fill the port
 * range with TIME_WAIT sockets. */
static void client_close(struct world *w, struct client *cl, bool reset)
{
    if (cl->fd < 0)
        return;
    if (!reset) {
        shutdown(cl->fd, SHUT_WR);
        pump(w);
    }
    client_reset(cl);
    pump(w);
}

static void client_write(struct world *w, struct client *cl, const uint8_t *p, size_t len,
                         bool bytewise)
{
    if (cl->fd < 0)
        client_connect(w, cl);
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
        pump(w);
    }
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void world_close(struct world *w)
{
    for (int i = 0; i < NCLIENTS; i++) {
        client_reset(&w->clients[i]);
        buf_fini(&w->clients[i].in);
    }
    /* as main() stops: storage drains (acks go to connections whose peers may have gone),
     * connections close, then the handles */
    gw_on_durable(&w->gw, w->last_seq, 1);
    w->gw.stopping = true;
    conn_registry_close_all(w->gw.conns, "shutting down");
    gw_close_handles(&w->gw);
    uv_walk(&w->loop, on_walk_close, NULL);
    while (uv_run(&w->loop, UV_RUN_NOWAIT) != 0)
        ;
    CHECK(uv_loop_close(&w->loop) == 0);
    mqtt_broker_free(w->broker);
    conn_registry_free(w->gw.conns);
    bus_free(w->gw.bus);
    devices_fini(&w->devices);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct world w;
    static bool once;
    size_t off = 1;

    if (!once) {
        signal(SIGPIPE, SIG_IGN);
        log_setup(LOG_ERROR, LOG_TEXT);
        once = true;
    }
    if (size < 1)
        return 0;
    world_open(&w, data[0]);
    while (off < size) {
        uint8_t op = data[off++];
        unsigned k = op & 3, what = (op >> 2) & 3;
        if (k == 3) {
            if (what == 0 || what == 1)
                gw_on_durable(&w.gw, w.last_seq, what == 0);
            else
                gw_on_pressure(&w.gw, what == 2);
            pump(&w);
        } else if (what <= 1) {
            size_t len = off < size ? data[off++] : 0;
            if (len > size - off)
                len = size - off;
            client_write(&w, &w.clients[k], data + off, len, what == 1);
            off += len;
        } else {
            client_close(&w, &w.clients[k], what == 2);
        }
    }
    world_close(&w);
    return 0;
}
