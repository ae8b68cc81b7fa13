/* web/rest.h: the REST API, /metrics and the dashboard's static files, served on
 * the HTTP listener. Loop thread only. */
#ifndef GALE_REST_H
#define GALE_REST_H

struct gw;
struct http_conn;
struct http_req;

/* Sets gw->http so the HTTP listener routes requests here. */
void rest_init(struct gw *gw);
void rest_fini(struct gw *gw);
/* The request handler (struct http_server.on_request). */
void rest_handle(void *ctx, struct http_conn *h, struct http_req *req);

/* Hook for the WebSocket endpoints: when set, upgrade requests go here. */
typedef void (*rest_upgrade_fn)(struct gw *gw, struct http_conn *h, struct http_req *req);
void rest_set_upgrade_handler(struct gw *gw, rest_upgrade_fn fn);

#endif
