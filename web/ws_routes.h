/* web/ws_routes.h: the WebSocket endpoints on the HTTP listener.
 *   /ws/device  devices, JSON text messages (protocols/websocket/device.c)
 *   /mqtt       MQTT over WebSocket, subprotocol "mqtt" (or "mqttv3.1"): the MQTT
 *               protocol (mqtt_proto) fed by the WebSocket transport
 *   /ws/live    dashboards: the live feed (web/feed.c), API key required
 *   /ws/echo    echoes every message (only when http.ws_echo is true)
 * An upgrade request for any other path is served as a plain HTTP request. A
 * refused upgrade is answered with the JSON error body: 400 (malformed upgrade, no
 * mqtt subprotocol), 426 (version), 401 (wrong credentials). Loop thread only. */
#ifndef GALE_WS_ROUTES_H
#define GALE_WS_ROUTES_H

struct feed;
struct gw;
struct mqtt_broker;
struct rest;
struct ws_routes;

/* Registers the upgrade handler with rest: /ws/live viewers join feed, /mqtt
 * connections broker (all borrowed; they outlive the routes). */
struct ws_routes *ws_routes_new(struct gw *gw, struct rest *rest, struct feed *feed,
                                struct mqtt_broker *broker);
/* Call next to rest_free, after the loop closed its handles; NULL is ignored. */
void ws_routes_free(struct ws_routes *w);

#endif
