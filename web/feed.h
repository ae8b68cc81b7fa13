/* web/feed.h: the live feed hub behind /ws/live (dashboards).
 *
 * A bus sink turns each telemetry message into WebSocket text frames encoded ONCE
 * and shared, as the same bytes, by every matching viewer (server frames are
 * unmasked, so a frame fits any connection). Viewers with identical filters form a
 * group; per message each group is matched once (device glob, key globs) and gets
 * the frame with every point (groups without a key filter share one frame) or a
 * frame with only its matching points. Presence changes become frames the same way.
 *
 * Frames wait in a per-viewer queue of references and are written once per loop
 * iteration, all of a viewer's pending frames in one write; when flushing gets
 * expensive the hub spaces its passes (flushing two thirds of the time at most), so
 * each write carries more updates (coalescing when busy). Each viewer has a byte
 * budget: past it (bytes the socket has not taken + bytes queued here) the oldest
 * pending updates are dropped, counted in gw->metrics.feed_dropped and reported to
 * the viewer as {"type":"dropped","count":N,"total":T} before its next update.
 *
 * Wire format (viewer -> hub): {"auth":"<api key>"} (when the upgrade carried no
 * key), {"subscribe":{"devices":["dev-*"],"keys":["temp"],"presence":true}},
 * {"unsubscribe":true}. Hub -> viewer: {"type":"ready"}, {"type":"subscribed",...},
 * {"type":"telemetry","device":..,"seq":..,"points":[{"key":..,"ts":..,"value":..}]},
 * {"type":"presence","device":..,"online":true,"ts":..}, {"type":"dropped",...},
 * {"type":"error","error":"...","code":"..."}. Loop thread only. */
#ifndef GALE_FEED_H
#define GALE_FEED_H

#include <stdbool.h>

#include "gateway/conn.h"

struct feed;
struct gw;

/* Creates the hub and adds its bus sink. */
struct feed *feed_new(struct gw *gw);
/* Frees the hub (NULL is ignored). Call once the loop has closed every handle (after
 * uv_loop_close, like rest_free), when no viewer is left. */
void feed_free(struct feed *hub);

/* A device went online / offline: tells subscribed viewers whose filters match
 * (hub may be NULL: nothing to tell). */
void feed_presence(struct feed *hub, const char *device, bool online);

/* The /ws/live protocol: open()'s ctx is the hub. open() expects the WebSocket
 * transport (web/ws_routes.c attaches it); messages arrive through
 * feed_viewer_message. */
extern const struct proto_ops feed_viewer_proto;
struct api_key;
/* The viewer presented API key k (web/keys.h; borrowed for the call) with the upgrade
 * request: no auth message. A key with a device filter sees only those devices. */
void feed_viewer_authenticated(struct conn *c, const struct api_key *k);
/* API key key_id was revoked: its viewers get {"type":"error","code":"key_revoked"}
 * and close (hub may be NULL). */
void feed_key_revoked(struct feed *hub, const char *key_id);
void feed_viewer_message(struct conn *c, void *state, uint8_t opcode, const uint8_t *data,
                         size_t len);

#endif
