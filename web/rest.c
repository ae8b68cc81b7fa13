/* web/rest.c: the REST route table (DESIGN.md "Interfaces"), health and the dashboard
 * files; telemetry handlers live in rest_telemetry.c, device handlers in rest_devices.c
 * (shared state: rest_int.h), the operations routes and /metrics in web/ops.c, offered
 * every request first. Requests arrive complete from protocols/http; most answers come
 * from the loop's hot state (devices, presence, latest values) at once. Telemetry range
 * queries run on the libuv work pool (storage/query.c) and answer in their completion
 * callback; writes (device changes, HTTP telemetry) answer once storage reports them
 * durable. Errors are {"error":"...","code":"..."}.
 * Loop thread only. */
#include "web/rest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/devices.h"
#include "gateway/fleet.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "gateway/tls.h"
#include "protocols/http/http.h"
#include "storage/store.h"
#include "web/commands.h"
#include "web/httpdev.h"
#include "web/keys.h"
#include "web/ops.h"
#include "web/rest_int.h"
#include "web/static.h"

#define JSON REST_JSON

/* A reply that waits for a durable commit; freed by on_reply_durable. */
struct pending_reply {
    int status;
    struct buf body;
    char *undo_device;   /* device to forget if the commit fails (creation) */
};

void rest_reply_json(struct http_conn *h, int status, struct buf *b)
{
    http_respond(h, status, JSON, b->data, b->len, NULL);
}

bool rest_authorized(struct gw *gw, const struct http_req *req)
{
    return keys_check(gw->keys, http_bearer(req)) != NULL;
}

void rest_method_not_allowed(struct http_conn *h, const char *allow)
{
    char hdr[96], body[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":\"method not allowed (allowed: %s)\",\"code\":\"method_not_allowed\"}",
                     allow);
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    http_respond(h, 405, JSON, body, (size_t)n, hdr);
}

/* ---- durable replies ---- */

static void on_reply_durable(struct conn *c, uint64_t tag, int ok)
{
    struct pending_reply *p = (struct pending_reply *)(uintptr_t)tag;
    struct http_conn *h = ok >= 0 ? http_from_conn(c) : NULL;
    if (!ok && p->undo_device)
        devices_remove(c->gw->devices, p->undo_device);
    if (h) {
        if (ok)
            http_respond(h, p->status, JSON, p->body.data, p->body.len, NULL);
        else if (c->gw->storage_full)
            http_respond_error(h, 507, "storage_full", "storage full: nothing was stored");
        else
            http_respond_error(h, 503, "storage_error", "storage failure: nothing was stored");
    }
    buf_fini(&p->body);
    free(p->undo_device);
    free(p);
}

void rest_reply_when_durable(struct http_conn *h, const struct ticket *t, int status,
                             struct buf *body, const char *undo_device)
{
    struct pending_reply *p = xcalloc(1, sizeof *p);
    p->status = status;
    p->body = *body; /* takes the bytes */
    buf_init(body);
    p->undo_device = undo_device ? xstrdup(undo_device) : NULL;
    gw_await_durable(http_conn_of(h), t, (uint64_t)(uintptr_t)p, on_reply_durable);
}

static void health(struct gw *gw, struct http_conn *h)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"status\":\"ok\",\"version\":\"%s\",\"uptime_s\":%lld,\"connections\":%zu,"
               "\"devices\":%zu,\"storage\":{\"state\":\"%s\",\"queued_rows\":%zu,"
               "\"ingest_paused\":%s}}",
               GALE_VERSION, (long long)((gw_now_ms() - gw->started_ms) / 1000),
               conn_registry_count(gw->conns), gw->devices->by_id.len,
               gw->storage_full ? "full" : "ok", gw_storage_queued(gw),
               gw->ingest_paused ? "true" : "false");
    rest_reply_json(h, 200, &b);
    buf_fini(&b);
}

/* Splits "/api/devices/<id>/<rest>" into id and rest; returns false if not that shape. */
static bool split_device_path(const char *path, char *id, size_t idlen, const char **rest)
{
    const char *p = path + strlen("/api/devices/");
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= idlen)
        return false;
    memcpy(id, p, n);
    id[n] = '\0';
    *rest = slash ? slash : "";
    return true;
}

/* ---- who may call what: every route with the role it needs ----
 * One table for the whole HTTP listener (web/ops.c's routes included), checked before
 * any handler runs; README "API keys" and the OpenAPI document (x-gale-role) say the
 * same. A path under /api/ that no entry names needs a key of any role (then 404 or
 * 405); any other path outside /api/ is the dashboard's files (public). */
enum route_flag {
    ROUTE_DEVICE_TOKEN = 1, /* the device's own token (or certificate) serves as well */
    ROUTE_ALL_DEVICES = 2,  /* not about one device: a key with a device filter is refused */
    ROUTE_METRICS = 4,      /* public unless http.metrics_auth */
};

struct route {
    const char *method;     /* GET also serves HEAD */
    const char *path;       /* a "*" segment stands for any one segment */
    enum key_role role;     /* KEY_ROLE_NONE: public */
    unsigned flags;
};

#define R KEY_ROLE_READ
#define O KEY_ROLE_OPERATOR
#define A KEY_ROLE_ADMIN
static const struct route routes[] = {
    {"GET", "/api/health", KEY_ROLE_NONE, 0},
    {"GET", "/healthz", KEY_ROLE_NONE, 0},
    {"GET", "/api/ready", KEY_ROLE_NONE, 0},
    {"GET", "/api/openapi.json", KEY_ROLE_NONE, 0},
    {"GET", "/api/docs", KEY_ROLE_NONE, 0},
    {"GET", "/metrics", R, ROUTE_METRICS},
    {"GET", "/ws/live", R, 0}, /* the upgrade: web/ws_routes.c checks the key */
    {"GET", "/api/devices", R, 0},
    {"POST", "/api/devices", A, ROUTE_ALL_DEVICES},
    {"GET", "/api/devices/*", R, 0},
    {"PATCH", "/api/devices/*", A, 0},
    {"DELETE", "/api/devices/*", A, 0},
    {"POST", "/api/devices/*/token", A, 0},
    {"GET", "/api/devices/*/attributes", R, 0},
    {"PATCH", "/api/devices/*/attributes", O, 0},
    {"GET", "/api/devices/*/latest", R, 0},
    {"GET", "/api/devices/*/telemetry", R, 0},
    {"POST", "/api/devices/*/telemetry", O, ROUTE_DEVICE_TOKEN},
    {"GET", "/api/devices/*/commands", R, ROUTE_DEVICE_TOKEN},
    {"POST", "/api/devices/*/commands", O, 0},
    {"GET", "/api/devices/*/commands/*", R, 0},
    {"POST", "/api/devices/*/commands/*/result", O, ROUTE_DEVICE_TOKEN},
    {"GET", "/api/telemetry", R, 0},
    {"GET", "/api/connections", R, ROUTE_ALL_DEVICES},
    {"GET", "/api/connections/*", R, ROUTE_ALL_DEVICES},
    {"DELETE", "/api/connections/*", O, ROUTE_ALL_DEVICES},
    {"GET", "/api/mqtt/sessions", R, ROUTE_ALL_DEVICES},
    {"GET", "/api/mqtt/sessions/*", R, ROUTE_ALL_DEVICES},
    {"DELETE", "/api/mqtt/sessions/*", A, ROUTE_ALL_DEVICES},
    {"GET", "/api/mqtt/subscriptions", R, ROUTE_ALL_DEVICES},
    {"DELETE", "/api/mqtt/subscriptions", A, ROUTE_ALL_DEVICES},
    {"GET", "/api/mqtt/retained", R, ROUTE_ALL_DEVICES},
    {"DELETE", "/api/mqtt/retained", A, ROUTE_ALL_DEVICES},
    {"POST", "/api/publish", O, ROUTE_ALL_DEVICES},
    {"GET", "/api/bridges", R, ROUTE_ALL_DEVICES},
    {"GET", "/api/info", R, 0},
    {"GET", "/api/keys", A, ROUTE_ALL_DEVICES},
    {"POST", "/api/keys", A, ROUTE_ALL_DEVICES},
    {"DELETE", "/api/keys/*", A, ROUTE_ALL_DEVICES},
    {"POST", "/api/fleet/tokens", A, ROUTE_ALL_DEVICES}, /* credentials any instance takes */
};
#undef R
#undef O
#undef A

static const struct route route_api_other = {NULL, NULL, KEY_ROLE_READ, 0};
static const struct route route_files = {NULL, NULL, KEY_ROLE_NONE, 0};

/* Whether path matches pattern, segment by segment. */
static bool path_matches(const char *pattern, const char *path)
{
    while (*pattern && *path) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0)
                return false;
            path += n;
            pattern++;
        } else if (*pattern++ != *path++) {
            return false;
        }
    }
    return *pattern == '\0' && *path == '\0';
}

static const struct route *route_of(const struct http_req *req)
{
    const char *m = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
    const struct route *least = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!path_matches(routes[i].path, req->path))
            continue;
        if (strcmp(routes[i].method, m) == 0)
            return &routes[i];
        if (!least || routes[i].role < least->role)
            least = &routes[i];
    }
    if (least) /* another method: its 405 needs no more than the path's least role */
        return least;
    if (strncmp(req->path, "/api/", 5) == 0 || strcmp(req->path, "/metrics") == 0)
        return &route_api_other;
    return &route_files;
}

static void unauthorized(struct gw *gw, struct http_conn *h)
{
    metrics_auth_failed(&gw->metrics, "http", "bad_api_key");
    http_respond_error(h, 401, "unauthorized",
                       "missing or wrong API key (Authorization: Bearer <key>)");
}

/* 403 naming the role the route needs (and, for a key with a device filter on a route
 * about every device, that it needs a key for every device). */
static void forbidden(struct http_conn *h, const struct route *rt, const struct api_key *k)
{
    const char *need = keys_role_name(rt->role);
    struct buf b;

    buf_init(&b);
    if (k->role < rt->role)
        buf_printf(&b,
                   "{\"error\":\"this needs a key with role %s (this key's role is %s)\","
                   "\"code\":\"forbidden\",\"role_needed\":\"%s\"}",
                   need, keys_role_name(k->role), need);
    else
        buf_printf(&b,
                   "{\"error\":\"this needs a key for every device (this key has a device "
                   "filter)\",\"code\":\"forbidden\",\"role_needed\":\"%s\","
                   "\"devices_needed\":\"all\"}",
                   need);
    rest_reply_json(h, 403, &b);
    buf_fini(&b);
}

/* Checks req against the route table. Returns true when the handler may run, with *key
 * the API key the request carries (NULL: none, on a public route or one a device's token
 * serves, whose handler checks that); else answers 401, 403 or 404 (a device the key's
 * filter hides looks absent). */
static bool authorize(struct rest *r, struct http_conn *h, struct http_req *req,
                      const struct api_key **key)
{
    struct gw *gw = r->gw;
    const struct route *rt = route_of(req);
    const struct api_key *k = keys_check(gw->keys, http_bearer(req));
    char id[DEVICE_ID_MAX + 2];
    const char *rest;

    *key = k;
    if (k)
        http_set_user(h, k->name);
    if (rt->role == KEY_ROLE_NONE || ((rt->flags & ROUTE_METRICS) && !gw->cfg->http.metrics_auth))
        return true;
    if (!k) {
        if (rt->flags & ROUTE_DEVICE_TOKEN)
            return true;
        unauthorized(gw, h);
        return false;
    }
    if (k->role < rt->role || ((rt->flags & ROUTE_ALL_DEVICES) && k->ndevices)) {
        forbidden(h, rt, k);
        return false;
    }
    if (strncmp(req->path, "/api/devices/", 13) == 0 &&
        split_device_path(req->path, id, sizeof id, &rest) && !keys_allows_device(k, id)) {
        http_respond_error(h, 404, "not_found", "no such device");
        return false;
    }
    return true;
}

/* "/commands/<cmd>/result" (the rest of a device path): the command id into cmd. */
static bool command_of_result(const char *rest, char *cmd, size_t cap)
{
    const char *p = rest + 10, *slash;
    if (strncmp(rest, "/commands/", 10) != 0 || (slash = strchr(p, '/')) == NULL ||
        slash == p || (size_t)(slash - p) >= cap || strcmp(slash, "/result") != 0)
        return false;
    memcpy(cmd, p, (size_t)(slash - p));
    cmd[slash - p] = '\0';
    return true;
}

void rest_handle(void *ctx, struct http_conn *h, struct http_req *req)
{
    struct rest *r = ctx;
    struct gw *gw = r->gw;
    const char *path = req->path, *m = req->method, *rest;
    char id[DEVICE_ID_MAX + 2], cmd[64];
    struct device *dev;
    const struct api_key *key;

    if (req->upgrade && r->on_upgrade) {
        r->on_upgrade(r->upgrade_ctx, h, req);
        return;
    }
    if (!authorize(r, h, req, &key))
        return;
    if (strcmp(path, "/api/health") == 0 || strcmp(path, "/healthz") == 0) {
        health(gw, h);
        return;
    }
    if (strcmp(path, "/api/openapi.json") == 0) {
        if (!static_serve(h, req, "/openapi.json"))
            http_respond_error(h, 404, "not_found", "no OpenAPI document in this build");
        return;
    }
    if (r->ops && ops_handle(r->ops, h, req, true))
        return;
    if (strncmp(path, "/api/", 5) != 0) {
        if ((strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0) && static_serve(h, req, path))
            return;
        http_respond_error(h, 404, "not_found", "no such resource");
        return;
    }
    /* device-token ingest is the one API route that takes a device's credentials */
    if (strncmp(path, "/api/devices/", 13) == 0 && split_device_path(path, id, sizeof id, &rest) &&
        strcmp(rest, "/telemetry") == 0 && strcmp(m, "POST") == 0) {
        const char *tok = http_bearer(req), *why, *reason;
        dev = devices_find(gw->devices, id);
        if (!dev && tok && gw->fleet && fleet_is_token(tok, strlen(tok)) &&
            !(dev = session_check_token(gw, id, tok, strlen(tok), &why, &reason))) {
            rest_unauthorized_token(gw, h, id, why, reason);
            return;
        }
        if (dev)
            rest_telemetry_post(r, h, req, dev);
        else if (!key) /* without credentials an unknown id looks known */
            rest_unauthorized_ingest(gw, h);
        else
            http_respond_error(h, 404, "not_found", "no such device");
        return;
    }
    /* the other routes a device's own credentials serve: its commands (HTTP devices) */
    if (!key && strncmp(path, "/api/devices/", 13) == 0 &&
        split_device_path(path, id, sizeof id, &rest) &&
        (route_of(req)->flags & ROUTE_DEVICE_TOKEN)) {
        dev = devices_find(gw->devices, id);
        if (!dev || !httpdev_authenticated(gw, h, req, dev)) {
            rest_unauthorized_ingest(gw, h); /* the same for known and unknown ids */
        } else if (strcmp(rest, "/commands") == 0) {
            if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
                httpdev_poll(r->httpdev, h, req, dev);
            else
                rest_method_not_allowed(h, "GET, POST");
        } else if (command_of_result(rest, cmd, sizeof cmd)) {
            httpdev_seen(r->httpdev, dev);
            if (strcmp(m, "POST") == 0)
                httpdev_result(r->httpdev, h, req, dev, cmd);
            else
                rest_method_not_allowed(h, "POST");
        } else {
            http_respond_error(h, 404, "not_found", "no such resource");
        }
        return;
    }
    if (!key) { /* a route a device's token serves, without a key: not one of those */
        unauthorized(gw, h);
        return;
    }
    if (strcmp(path, "/api/keys") == 0 || strncmp(path, "/api/keys/", 10) == 0) {
        keys_handle(gw->keys, h, req);
        return;
    }
    if (strcmp(path, "/api/devices") == 0) {
        if (strcmp(m, "POST") == 0)
            rest_device_create(r, h, req);
        else if (strcmp(m, "GET") == 0)
            rest_devices_list(r, h, req, key);
        else
            rest_method_not_allowed(h, "GET, POST");
        return;
    }
    if (strcmp(path, "/api/fleet/tokens") == 0) {
        if (strcmp(m, "POST") == 0)
            rest_fleet_token(r, h, req);
        else
            rest_method_not_allowed(h, "POST");
        return;
    }
    if (strcmp(path, "/api/telemetry") == 0) {
        if (strcmp(m, "GET") == 0)
            rest_telemetry_query(r, h, req, key);
        else
            rest_method_not_allowed(h, "GET");
        return;
    }
    if (strncmp(path, "/api/devices/", 13) == 0 && split_device_path(path, id, sizeof id, &rest)) {
        dev = devices_find(gw->devices, id);
        if (!dev) {
            http_respond_error(h, 404, "not_found", "no such device");
            return;
        }
        if (rest[0] == '\0') {
            struct buf b;
            if (strcmp(m, "GET") == 0) {
                buf_init(&b);
                devices_write_json(dev, &b);
                rest_reply_json(h, 200, &b);
                buf_fini(&b);
            } else if (strcmp(m, "DELETE") == 0) {
                rest_device_delete(r, h, req, dev);
            } else if (strcmp(m, "PATCH") == 0) {
                rest_device_patch(r, h, req, dev);
            } else {
                rest_method_not_allowed(h, "GET, PATCH, DELETE");
            }
            return;
        }
        if (strcmp(rest, "/token") == 0) {
            if (strcmp(m, "POST") == 0)
                rest_device_token(r, h, dev);
            else
                rest_method_not_allowed(h, "POST");
            return;
        }
        if (strcmp(rest, "/attributes") == 0) {
            if (strcmp(m, "GET") == 0) {
                struct buf b;
                buf_init(&b);
                devices_write_attrs_json(dev, &b);
                rest_reply_json(h, 200, &b);
                buf_fini(&b);
            } else if (strcmp(m, "PATCH") == 0) {
                rest_device_patch_attrs(r, h, req, dev);
            } else {
                rest_method_not_allowed(h, "GET, PATCH");
            }
            return;
        }
        if (strcmp(rest, "/latest") == 0) {
            if (strcmp(m, "GET") == 0) {
                struct buf b;
                buf_init(&b);
                devices_write_latest_json(dev, &b);
                rest_reply_json(h, 200, &b);
                buf_fini(&b);
            } else {
                rest_method_not_allowed(h, "GET");
            }
            return;
        }
        if (strcmp(rest, "/telemetry") == 0) {
            if (strcmp(m, "GET") == 0)
                rest_telemetry_get(r, h, req, dev);
            else
                rest_method_not_allowed(h, "GET, POST");
            return;
        }
        if (strcmp(rest, "/commands") == 0) {
            if (strcmp(m, "POST") == 0)
                commands_post(r->commands, h, req, dev);
            else if (strcmp(m, "GET") == 0)
                commands_list(r->commands, h, dev);
            else
                rest_method_not_allowed(h, "GET, POST");
            return;
        }
        if (command_of_result(rest, cmd, sizeof cmd)) {
            if (strcmp(m, "POST") == 0)
                httpdev_result(r->httpdev, h, req, dev, cmd);
            else
                rest_method_not_allowed(h, "POST");
            return;
        }
        if (strncmp(rest, "/commands/", 10) == 0 && rest[10] && !strchr(rest + 10, '/')) {
            if (strcmp(m, "GET") == 0)
                commands_get(r->commands, h, dev, rest + 10);
            else
                rest_method_not_allowed(h, "GET");
            return;
        }
    }
    http_respond_error(h, 404, "not_found", "no such resource");
}

/* The head of req carries credentials: an API key, or a device's token on a route its
 * token serves (ROUTE_DEVICE_TOKEN) for that device. Checked before the body is read. */
static bool head_authorized(void *ctx, const struct http_req *req)
{
    struct rest *r = ctx;
    const char *tok = http_bearer(req), *rest;
    char id[DEVICE_ID_MAX + 2];
    struct device *dev;

    if (rest_authorized(r->gw, req))
        return true;
    if (!tok || !(route_of(req)->flags & ROUTE_DEVICE_TOKEN) ||
        !split_device_path(req->path, id, sizeof id, &rest))
        return false;
    dev = devices_find(r->gw->devices, id);
    if (dev && devices_check_token(r->gw->token_secret, dev, tok, strlen(tok)))
        return true;
    /* a fleet token: checked again, and its device registered, by the route */
    return r->gw->fleet && fleet_is_token(tok, strlen(tok)) &&
           fleet_verify(r->gw->fleet, id, strlen(id), tok, strlen(tok), gw_now_ms() / 1000,
                        &(const char *){NULL}) == FLEET_OK;
}

struct rest *rest_new(struct gw *gw, struct store *store, struct commands *commands)
{
    struct rest *r = xcalloc(1, sizeof *r);
    r->gw = gw;
    r->store = store;
    r->commands = commands;
    r->srv.on_request = rest_handle;
    r->srv.authorized = head_authorized;
    if (gw->cfg->http.access_log != CONFIG_ACCESS_LOG_OFF)
        r->srv.on_reply = ops_access_log;
    r->srv.ctx = r;
    r->srv.max_header_bytes = gw->cfg->http.max_header_bytes;
    r->srv.max_body_bytes = gw->cfg->http.max_body_bytes;
    r->httpdev = httpdev_new(gw, commands);
    return r;
}

void rest_free(struct rest *r)
{
    if (!r)
        return;
    rest_tz_free(r);
    httpdev_free(r->httpdev);
    free(r);
}

struct http_server *rest_http_server(struct rest *r)
{
    return &r->srv;
}

void rest_set_device_deleted_hook(struct rest *r, rest_device_deleted_fn fn, void *ctx)
{
    r->on_device_deleted = fn;
    r->device_deleted_ctx = ctx;
}

void rest_set_ops(struct rest *r, struct ops *ops)
{
    r->ops = ops;
}

void rest_set_upgrade_handler(struct rest *r, rest_upgrade_fn fn, void *ctx)
{
    r->on_upgrade = fn;
    r->upgrade_ctx = ctx;
}
