/* web/auth.h: the API key that REST, the WebSocket routes and the live feed ask of
 * their callers (Authorization: Bearer <key>, ?api_key=, or the feed's {"auth":..}).
 * The key itself is one of the gateway's secrets (gw->api_key, loaded by main).
 * Loop thread only. */
#ifndef GALE_WEB_AUTH_H
#define GALE_WEB_AUTH_H

#include <stdbool.h>

struct gw;

/* True when key is gw's API key; compared in constant time. NULL, and any key while
 * gw has none, are refused. */
bool auth_api_key_ok(const struct gw *gw, const char *key);

#endif
