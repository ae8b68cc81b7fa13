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

struct gw;

/* Creates the live feed hub and registers the upgrade handler with REST. Call after
 * rest_init. Returns 0. */
int ws_routes_init(struct gw *gw);
/* Frees the hub; call next to rest_fini, after the loop closed its handles. */
void ws_routes_fini(struct gw *gw);

#endif
