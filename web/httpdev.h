/* web/httpdev.h: devices that speak plain HTTP, as first-class as connected ones.
 *
 * Presence: a request with the device's own credentials (its token, or its TLS
 * certificate) makes it online with protocol "http" (GET /api/devices/{id}, the device
 * list, gale_devices_online, presence events on the live feed and the MQTT status topic,
 * as a connection would) until http.device_idle_s after its last such request (a long
 * poll waiting counts as activity); then it goes offline with the usual transition.
 * Devices online this way are kept in gw->devices->http_active, oldest request first:
 * one timer, armed for the head of that list, expires them, never a timer per device.
 *
 * Commands: a device takes its queued commands (web/commands.h) in the reply to its
 * telemetry POST ("commands":[...]) or with a long poll,
 *   GET /api/devices/{id}/commands?wait=S
 * which answers at once when commands are queued, else when one is queued (woken at
 * once) or after S seconds (cut to http.command_wait_max_s and below
 * limits.idle_timeout_ms) with {"commands":[]}; the commands it answers with are marked
 * delivered. One poll per device at a time (another answers 409 poll_in_progress), at
 * most http.command_polls_max in all (then 503 busy); a poll whose client goes away is
 * dropped at once (protocols/http: http_wait_watch). The device answers a command with
 *   POST /api/devices/{id}/commands/{cmd}/result   (any JSON body: the reply)
 * which sets the command's status to replied, as a reply over MQTT or the line protocol
 * does. The same timer serves the polls' deadlines. Loop thread only. */
#ifndef GALE_HTTPDEV_H
#define GALE_HTTPDEV_H

#include <stdbool.h>

struct buf;
struct commands;
struct device;
struct gw;
struct http_conn;
struct http_req;
struct httpdev;

/* cs (borrowed, outliving it) holds the commands; its queued hook is taken. */
struct httpdev *httpdev_new(struct gw *gw, struct commands *cs);
/* After the loop closed its handles (the timer); NULL is ignored. */
void httpdev_free(struct httpdev *hd);
/* Whether req carries dev's own credentials: its token as the bearer, or (mutual TLS)
 * its certificate. */
bool httpdev_authenticated(struct gw *gw, struct http_conn *h, const struct http_req *req,
                           const struct device *dev);
/* dev made a request with its own credentials just now: online over HTTP. */
void httpdev_seen(struct httpdev *hd, struct device *dev);
/* Appends device's queued commands as a JSON array to out, marking them delivered. */
void httpdev_take(struct httpdev *hd, const char *device, struct buf *out);
/* GET /api/devices/{id}/commands with the device's credentials (checked by the caller). */
void httpdev_poll(struct httpdev *hd, struct http_conn *h, struct http_req *req,
                  struct device *dev);
/* POST /api/devices/{id}/commands/{cmd}/result (the device's credentials or an operator
 * key, checked by the caller). */
void httpdev_result(struct httpdev *hd, struct http_conn *h, struct http_req *req,
                    struct device *dev, const char *cmd_id);

#endif
