/* web/rest.h: the REST API, /metrics and the dashboard's static files, served on
 * the HTTP listener. Loop thread only. */
#ifndef GALE_REST_H
#define GALE_REST_H

struct commands;
struct gw;
struct http_conn;
struct http_req;
struct http_server;
struct rest;
struct store;

/* The REST state: device writes and telemetry queries go to store, command routes to
 * commands (both borrowed, outliving the REST state). */
struct rest *rest_new(struct gw *gw, struct store *store, struct commands *commands);
/* After the loop closed its handles (no request is pending); NULL is ignored. */
void rest_free(struct rest *r);
/* What the HTTP listener answers with (its ctx, protocols/http/http.h). */
struct http_server *rest_http_server(struct rest *r);
/* The request handler (struct http_server.on_request); ctx is the struct rest. */
void rest_handle(void *ctx, struct http_conn *h, struct http_req *req);

/* Hook for a deleted device: fn(ctx, id, t) runs once its connections are closed and adds
 * any write it makes to t, which the DELETE reply awaits. */
struct ticket;
typedef void (*rest_device_deleted_fn)(void *ctx, const char *device, struct ticket *t);
void rest_set_device_deleted_hook(struct rest *r, rest_device_deleted_fn fn, void *ctx);

/* The operations routes (web/ops.h; borrowed, outliving r): every request is offered to
 * them first. */
struct ops;
void rest_set_ops(struct rest *r, struct ops *ops);

/* Hook for the WebSocket endpoints: when set, upgrade requests go to fn(ctx, ...). */
typedef void (*rest_upgrade_fn)(void *ctx, struct http_conn *h, struct http_req *req);
void rest_set_upgrade_handler(struct rest *r, rest_upgrade_fn fn, void *ctx);

#endif
