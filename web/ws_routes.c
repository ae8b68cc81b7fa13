/* web/ws_routes.c: the WebSocket endpoints (see ws_routes.h).
 *
 * An HTTP request with Upgrade arrives complete from protocols/http through
 * rest_handle. For a WebSocket path it is validated (ws_handshake_accept: method,
 * version, key, subprotocol, permessage-deflate), credentials that came with it are
 * checked, the 101 response is written, and the connection switches: the new
 * protocol (MQTT, device, live viewer, echo) gets its state, the WebSocket
 * transport goes underneath, and the HTTP state is freed (http_upgraded); bytes
 * the client sent right behind its request then reach the transport. Loop thread
 * only. */
#include "web/ws_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "gateway/tls.h"
#include "protocols/http/http.h"
#include "protocols/mqtt/broker.h"
#include "protocols/websocket/ws.h"
#include "protocols/websocket/ws_transport.h"
#include "web/feed.h"
#include "web/keys.h"
#include "web/rest.h"

#define LIVE_MAX_MESSAGE_BYTES 65536 /* a viewer only sends small control messages */
#define DEVICE_WINDOW_BITS 12        /* per-connection zlib memory: ~32 KiB, not ~400 */

enum endpoint { EP_DEVICE, EP_MQTT, EP_LIVE, EP_ECHO };

struct ws_routes {
    struct gw *gw;
    struct rest *rest;          /* serves upgrade requests for other paths */
    struct feed *feed;          /* /ws/live viewers' hub */
    struct mqtt_broker *broker; /* /mqtt connections' broker */
};

static const char *const mqtt_subprotocols[] = {"mqtt", "mqttv3.1", NULL};

/* ---- /ws/echo ------------------------------------------------------------------ */

static void echo_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *data,
                         size_t len)
{
    (void)state;
    ws_conn_send(c, opcode, data, len);
    c->msgs_out++;
}

static void *echo_open(struct conn *c, void *ctx)
{
    (void)ctx;
    return c; /* no state of its own; non-NULL so the proto counts as open */
}

static int echo_feed(void *state, struct buf *in)
{
    (void)state;
    in->len = 0;
    return 0;
}

static void echo_close(void *state, const char *why)
{
    (void)state;
    (void)why;
}

static const struct proto_ops echo_proto = {"ws-echo", echo_open,  echo_feed, echo_close,
                                            NULL,      0,          NULL,       NULL};

/* ---- credentials --------------------------------------------------------------- */

static void unauthorized(struct gw *gw, struct http_conn *h, const char *msg)
{
    metrics_auth_failed(&gw->metrics, "ws", "unauthorized");
    http_respond_error(h, 401, "unauthorized", msg);
}

/* Device credentials with the upgrade: Bearer token + ?device=, or ?device=&token=.
 * Returns 1 with *dev, 0 when none were given, -1 after answering 401. */
static int device_creds(struct gw *gw, struct http_conn *h, struct http_req *req,
                        struct device **dev)
{
    char id[DEVICE_ID_MAX + 2], token[256];
    const char *tok = http_bearer(req);
    bool has_id = http_query_param(req, "device", id, sizeof id);

    const char *cert_id;

    if (!tok && http_query_param(req, "token", token, sizeof token))
        tok = token;
    /* mutual TLS: a verified certificate naming the device (?device=, if sent) is enough */
    if (!tok && (cert_id = tls_peer_device(http_conn_of(h), has_id ? id : NULL)) != NULL) {
        *dev = devices_find(gw->devices, cert_id);
        return 1;
    }
    if (!tok && !has_id)
        return 0;
    if (!tok || !has_id) {
        unauthorized(gw, h,
                     "send both the device id (?device=) and its token "
                     "(Authorization: Bearer <token> or ?token=)");
        return -1;
    }
    *dev = session_authenticate(gw, http_conn_of(h), id, strlen(id), tok, strlen(tok));
    if (!*dev) {
        unauthorized(gw, h, "authentication failed");
        return -1;
    }
    return 1;
}

/* API key with the upgrade: Bearer or ?api_key=. 1 ok (*key set), 0 none, -1 after a
 * 401. Any role may watch the live feed (read is the least). */
static int live_creds(struct gw *gw, struct http_conn *h, struct http_req *req,
                      const struct api_key **key)
{
    char buf[CONFIG_STR_MAX];
    const char *k = http_bearer(req);
    if (!k && http_query_param(req, "api_key", buf, sizeof buf))
        k = buf;
    if (!k)
        return 0;
    if ((*key = keys_check(gw->keys, k)) == NULL) {
        if (conn_refused(http_conn_of(h), "wrong API key"))
            log_warn("conn=%llu peer=%s proto=ws-live auth failed reason=\"wrong API key\"",
                     (unsigned long long)http_conn_of(h)->id, conn_peer(http_conn_of(h)));
        unauthorized(gw, h, "wrong API key");
        return -1;
    }
    return 1;
}

/* ---- the upgrade --------------------------------------------------------------- */

static void respond_426(struct http_conn *h, const char *why)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "{\"error\":");
    buf_append_json_str(&b, why, strlen(why));
    buf_append_str(&b, ",\"code\":\"upgrade_required\"}");
    http_respond(h, 426, "application/json", b.data, b.len, WS_VERSION_HEADER);
    buf_fini(&b);
}

static void on_upgrade(void *ctx, struct http_conn *h, struct http_req *req)
{
    struct ws_routes *w = ctx;
    struct gw *gw = w->gw;
    const struct config *cfg = gw->cfg;
    struct conn *c = http_conn_of(h);
    struct ws_header hdrs[HTTP_MAX_HEADERS];
    struct ws_request wr;
    struct ws_endpoint ep;
    struct ws_accept acc;
    struct ws_conn_cfg wcfg;
    const struct proto_ops *proto;
    struct device *dev = NULL;
    const struct api_key *key = NULL;
    enum endpoint which;
    int status, live = 0;
    const char *why = NULL;
    struct buf out;
    void *state, *proto_ctx = NULL;

    if (strcmp(req->path, "/ws/device") == 0) {
        which = EP_DEVICE;
    } else if (strcmp(req->path, "/mqtt") == 0) {
        which = EP_MQTT;
    } else if (strcmp(req->path, "/ws/live") == 0) {
        which = EP_LIVE;
    } else if (strcmp(req->path, "/ws/echo") == 0 && cfg->http.ws_echo) {
        which = EP_ECHO;
    } else { /* not a WebSocket endpoint: an ordinary request that names an upgrade */
        req->upgrade = false;
        req->keep_alive = false;
        rest_handle(w->rest, h, req);
        return;
    }
    req->keep_alive = false; /* refused: what the client sends next may be frames */
    for (size_t i = 0; i < req->nheaders; i++)
        hdrs[i] = (struct ws_header){req->headers[i].name, req->headers[i].name_len,
                                     req->headers[i].value, req->headers[i].value_len};
    wr = (struct ws_request){req->method, req->http_major, req->http_minor, hdrs, req->nheaders};
    memset(&ep, 0, sizeof ep);
    ep.subprotocols = which == EP_MQTT ? mqtt_subprotocols : NULL;
    ep.deflate.enabled = cfg->http.ws_deflate;
    ep.deflate.max_window_bits = (which == EP_DEVICE || which == EP_MQTT) ? DEVICE_WINDOW_BITS : 15;
    status = ws_handshake_accept(&wr, &ep, &acc, &why);
    if (status == 426) {
        respond_426(h, why);
        return;
    }
    if (status != 101) {
        http_respond_error(h, status, "bad_upgrade", why);
        return;
    }
    if (which == EP_MQTT && !acc.subprotocol) {
        http_respond_error(h, 400, "subprotocol_required",
                           "MQTT over WebSocket needs Sec-WebSocket-Protocol: mqtt");
        return;
    }
    if (which == EP_DEVICE && device_creds(gw, h, req, &dev) < 0)
        return;
    if (which == EP_LIVE && (live = live_creds(gw, h, req, &key)) < 0)
        return;

    buf_init(&out);
    ws_handshake_write(&out, &acc, NULL);
    conn_send_raw(c, out.data, out.len);
    buf_fini(&out);
    c->msgs_out++;
    gw->metrics.http_requests++;
    gw->metrics.http_status[1]++;

    memset(&wcfg, 0, sizeof wcfg);
    wcfg.max_message_bytes = cfg->http.ws_max_message_bytes;
    wcfg.deflate = acc.deflate;
    wcfg.compress_out = true;
    wcfg.send_opcode = WS_OP_TEXT;
    switch (which) {
    case EP_DEVICE:
        proto = &ws_device_proto;
        wcfg.endpoint = "/ws/device";
        wcfg.on_message = ws_device_message;
        break;
    case EP_MQTT:
        proto = &mqtt_proto;
        proto_ctx = w->broker;
        wcfg.endpoint = "/mqtt";
        wcfg.send_opcode = WS_OP_BINARY;
        break;
    case EP_LIVE:
        proto = &feed_viewer_proto;
        proto_ctx = w->feed;
        wcfg.endpoint = "/ws/live";
        wcfg.on_message = feed_viewer_message;
        wcfg.compress_out = false; /* shared frames: the hub compresses them once */
        if (wcfg.max_message_bytes > LIVE_MAX_MESSAGE_BYTES)
            wcfg.max_message_bytes = LIVE_MAX_MESSAGE_BYTES;
        break;
    default:
        proto = &echo_proto;
        wcfg.endpoint = "/ws/echo";
        wcfg.on_message = echo_message;
        break;
    }
    log_info("conn=%llu peer=%s websocket upgrade endpoint=%s subprotocol=%s deflate=%s",
             (unsigned long long)c->id, conn_peer(c), wcfg.endpoint,
             acc.subprotocol ? acc.subprotocol : "-", acc.deflate.enabled ? "yes" : "no");
    state = proto->open(c, proto_ctx);
    conn_set_proto(c, proto, state);
    ws_conn_attach(c, &wcfg);
    if (dev)
        ws_device_authenticated(c, dev);
    if (live > 0)
        feed_viewer_authenticated(c, key);
    http_upgraded(h); /* frames sent right behind the request are fed by protocols/http */
}

struct ws_routes *ws_routes_new(struct gw *gw, struct rest *rest, struct feed *feed,
                                struct mqtt_broker *broker)
{
    struct ws_routes *w = xcalloc(1, sizeof *w);
    *w = (struct ws_routes){gw, rest, feed, broker};
    rest_set_upgrade_handler(rest, on_upgrade, w);
    return w;
}

void ws_routes_free(struct ws_routes *w)
{
    free(w);
}
