/* web/ops.h: operations and observability routes of the REST API: readiness, /metrics,
 * the API docs page, connections (list, kick), the MQTT broker's sessions,
 * subscriptions and retained messages (list, remove), publishing to any topic, and the
 * HTTP access log. web/rest.c hands it every request first. Loop thread only. */
#ifndef GALE_OPS_H
#define GALE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct gw;
struct http_conn;
struct http_req;
struct mqtt_broker;
struct ops;

/* broker (borrowed, outliving the ops state) answers the /api/mqtt routes. */
struct ops *ops_new(struct gw *gw, struct mqtt_broker *broker);
/* NULL is ignored. */
void ops_free(struct ops *o);
/* The upstream bridge as the ops routes see it (main wires gateway/bridge/bridge.h's
 * bridge_write_json and bridge_write_metrics, so web/ never includes the bridge). */
struct ops_bridge {
    void *ctx;
    void (*write_json)(void *ctx, struct buf *out);    /* GET /api/bridges: a JSON array */
    void (*write_metrics)(void *ctx, struct buf *out); /* appended to /metrics */
};
/* Without it (or with ctx NULL) GET /api/bridges answers [] and /metrics has no bridge
 * families. b is copied. */
void ops_set_bridge(struct ops *o, const struct ops_bridge *b);
/* Answers req when it is one of the operations routes and returns true; returns false,
 * answering nothing, for any other path. authorized: req carries the API key. */
bool ops_handle(struct ops *o, struct http_conn *h, struct http_req *req, bool authorized);
/* The access log (struct http_server.on_reply; ctx unused): one line per reply in the
 * http.access_log format, nothing when it is off. */
void ops_access_log(void *ctx, struct http_conn *h, const struct http_req *req, int status,
                    size_t len, uint64_t us);

#endif
