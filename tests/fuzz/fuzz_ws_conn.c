/* tests/fuzz/fuzz_ws_conn.c: the WebSocket transport (protocols/websocket/transport.c:
 * frames, fragments, permessage-deflate, pings, the close handshake) under each endpoint
 * of web/ws_routes.c (/ws/device with its device session, /mqtt with the MQTT broker,
 * /ws/live with the live feed, /ws/echo), and the upgrade from HTTP that puts it there,
 * driven from real loopback sockets as the gateway runs them, with writes that fail and
 * peers that reset (right after an upgrade request, mid-frame, mid-message).
 *
 * Each input builds a fresh world (tests/fuzz/conn_world.h) wired as gateway/main.c
 * wires it: a libuv loop, a gw with an HTTP listener on 127.0.0.1:0, the device registry
 * (dev1/tok1 a device, app1/tok2 an application, open1 a device without a token), API
 * key "key1", the bus, the MQTT broker, the live feed and the WebSocket routes, with a
 * fake storage that reports writes durable (or failed) when the input says so. The
 * listener answers with the REST state's server; upgrade requests for the WebSocket
 * paths go to the REST handler and so to the routes, any other request is answered
 * "200 ok" here (the REST routes that query storage are not wired).
 *
 * Input: byte 0 picks the configuration:
 *   bit 0: http.ws_deflate = false       bit 1: http.ws_echo = true
 *   bit 2: small limits (http.ws_max_message_bytes 256, http.max_header_bytes 512)
 *   bit 3: limits.max_send_queue_bytes 16384 and small socket buffers (the clients'
 *          SO_RCVBUF 2048, the gateway's SO_SNDBUF 4096): a deaf client's socket fills
 *          within KiB, the send queue grows, the feed drops updates for it
 *   bit 4: mqtt.allow_anonymous
 *   bit 5: short deadlines (limits.auth_timeout_ms 30, limits.idle_timeout_ms 150: a
 *          ping every 100 ms): the 0xc3 op lets them pass
 * then the operations of conn_world.h: clients 0..2 write (in one write or bytewise,
 * resetting right after or not), reset, close with a FIN, turn deaf and hear again; the
 * world reports storage writes durable or failed, pushes back, sets the write fault
 * seam (nth write, probability, seed), lets time pass, and (0x20) sends a command to
 * every connection that carries them (a device session's send_command, as a REST
 * command does). After each operation the loop runs until nothing more happens. What
 * each client receives must start as an HTTP/1.1 response; the world must then close
 * with no handle left open and no memory leaked. */
#define CW_MQTT /* the broker's store in conn_world.h */
#include "conn_world.h"

#include "protocols/http/http.h"
#include "protocols/mqtt/mqtt.h"
#include "web/feed.h"
#include "web/rest.h"
#include "web/ws_routes.h"

struct world {
    struct cw w;               /* first: the storage callbacks' ctx is either */
    struct mqtt_broker *broker;
    struct feed *feed;
    struct rest *rest;
    struct ws_routes *routes;
    struct http_server srv;    /* the REST state's, with this file's handler */
    uint64_t ncommands;
};

static void on_presence(struct gw *gw, const char *device, bool online)
{
    struct world *w = gw->hook_ctx;
    mqtt_broker_presence(w->broker, device, online);
    feed_presence(w->feed, device, online);
}

static void handle(void *ctx, struct http_conn *h, struct http_req *req)
{
    struct world *w = (struct world *)http_conn_of(h)->gw->hook_ctx;
    const char *path = req->path;
    (void)ctx;

    if (req->upgrade && (strcmp(path, "/ws/device") == 0 || strcmp(path, "/mqtt") == 0 ||
                         strcmp(path, "/ws/live") == 0 || strcmp(path, "/ws/echo") == 0) &&
        (path[4] != 'e' || w->w.cfg.http.ws_echo)) {
        rest_handle(w->rest, h, req);
        return;
    }
    http_respond(h, 200, "text/plain", "ok\n", 3, NULL);
}

/* The 0x20 world op: a command to every connection that carries them. */
static void send_commands(struct cw *cw)
{
    struct world *w = (struct world *)cw;
    struct conn_iter it;
    struct conn *c;
    char json[96];

    conn_iter_begin(&it, cw->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        int n;
        if (!c->proto->send_command || !c->device[0])
            continue;
        n = snprintf(json, sizeof json,
                     "{\"id\":\"c%llu\",\"name\":\"reboot\",\"params\":{}}",
                     (unsigned long long)++w->ncommands);
        c->proto->send_command(c, json, (size_t)n);
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
    w->name = "fuzz_ws_conn";
    w->check = client_check;
    w->async = send_commands;
    config_defaults(&w->cfg);
    if (flags & 0x01)
        w->cfg.http.ws_deflate = false;
    if (flags & 0x02)
        w->cfg.http.ws_echo = true;
    if (flags & 0x04) {
        w->cfg.http.ws_max_message_bytes = 256;
        w->cfg.http.max_header_bytes = 512;
    }
    if (flags & 0x08) {
        w->cfg.limits.max_send_queue_bytes = 16384;
        w->rcvbuf = 2048;
        w->sndbuf = 4096;
    }
    w->cfg.mqtt.allow_anonymous = (flags & 0x10) != 0;
    if (flags & 0x20) {
        w->cfg.limits.auth_timeout_ms = 30;
        w->cfg.limits.idle_timeout_ms = 150;
    }

    cw_start(w);
    snprintf(w->gw.api_key, sizeof w->gw.api_key, "key1");
    w->gw.hook_ctx = wd;
    w->gw.on_presence = on_presence;
    wd->broker = cw_mqtt_broker_new(w);
    wd->rest = rest_new(&w->gw, NULL, NULL); /* only upgrades reach it */
    wd->feed = feed_new(&w->gw);
    wd->routes = ws_routes_new(&w->gw, wd->rest, wd->feed, wd->broker);
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
    ws_routes_free(w.routes);
    rest_free(w.rest);
    feed_free(w.feed);
    mqtt_broker_free(w.broker);
    cw_fini(&w.w);
    return 0;
}
