/* web/httpdev.c: HTTP devices' presence and commands (see httpdev.h).
 *
 * State: the devices online by HTTP are gw->devices->http_active (a list ordered by
 * their last request: httpdev_seen moves a device to its tail), the waiting polls are a
 * map by device and a list ordered by deadline (inserted from the tail: polls mostly
 * share one wait, so that is O(1)). One uv timer is armed for the earliest of the two
 * heads. A poll ends by a command (the queued hook), its deadline, or its connection
 * closing (http_wait_watch's callback frees it without I/O). Loop thread only. */
#include "web/httpdev.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "base/list.h"
#include "base/map.h"
#include "gateway/devices.h"
#include "gateway/fleet.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/ticket.h"
#include "gateway/tls.h"
#include "protocols/http/http.h"
#include "web/commands.h"
#include "web/rest_int.h"

struct poll {
    struct httpdev *hd;
    struct http_conn *h;            /* answered through it; the watch frees us on a close */
    char device[DEVICE_ID_MAX + 1];
    uint64_t due_mono_ms;
    struct list_link link;          /* in hd->polls, by due_mono_ms */
};

struct httpdev {
    struct gw *gw;
    struct commands *cs;
    struct map by_device;           /* device -> struct poll */
    struct list polls;              /* struct poll by link, earliest deadline first */
    uv_timer_t timer;               /* the earliest presence expiry or poll deadline */
    uint64_t idle_ms;               /* http.device_idle_s */
};

bool httpdev_authenticated(struct gw *gw, struct http_conn *h, const struct http_req *req,
                           const struct device *dev)
{
    const char *tok = http_bearer(req), *why;
    if (tok && devices_check_token(gw->token_secret, dev, tok, strlen(tok)))
        return true;
    if (tok && gw->fleet && fleet_is_token(tok, strlen(tok))) /* a fleet token (fleet.h) */
        return dev->role == DEVICE_ROLE_DEVICE &&
               fleet_verify(gw->fleet, dev->id, strlen(dev->id), tok, strlen(tok),
                            gw_now_ms() / 1000, &why) == FLEET_OK;
    return !tok && tls_peer_device(http_conn_of(h), dev->id) != NULL;
}

/* ---- the timer ---- */

static void on_timer(uv_timer_t *t);

static void arm(struct httpdev *hd)
{
    struct device *head = list_entry(hd->gw->devices->http_active.head, struct device, http_link);
    struct poll *p = list_entry(hd->polls.head, struct poll, link);
    uint64_t due = UINT64_MAX, now = gw_mono_ms();

    if (head)
        due = (uint64_t)head->http_seen_mono_ms + hd->idle_ms;
    if (p && p->due_mono_ms < due)
        due = p->due_mono_ms;
    if (due == UINT64_MAX) {
        uv_timer_stop(&hd->timer);
        return;
    }
    uv_timer_start(&hd->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- presence ---- */

void httpdev_seen(struct httpdev *hd, struct device *dev)
{
    struct devices *ds = hd->gw->devices;
    struct gw *gw = hd->gw;
    bool was_idle = ds->http_active.head == NULL;

    dev->http_seen_mono_ms = (int64_t)gw_mono_ms();
    dev->last_seen_ms = gw_now_ms();
    if (dev->http_online) {
        list_remove(&ds->http_active, &dev->http_link);
        list_push_back(&ds->http_active, &dev->http_link);
        return;
    }
    dev->http_online = true;
    list_push_back(&ds->http_active, &dev->http_link);
    devices_touch(ds, dev, "http", dev->last_seen_ms);
    log_info("device=%s online proto=http", dev->id);
    if (dev->online == 0 && gw->on_presence)
        gw->on_presence(gw, dev->id, true);
    if (was_idle || !uv_is_active((uv_handle_t *)&hd->timer))
        arm(hd);
}

/* Devices whose last request is older than the idle time go offline; one with a poll
 * waiting is active (its request is still open). */
static void expire_presence(struct httpdev *hd, uint64_t now)
{
    struct devices *ds = hd->gw->devices;
    struct gw *gw = hd->gw;
    struct device *dev;

    while ((dev = list_entry(ds->http_active.head, struct device, http_link)) != NULL &&
           (uint64_t)dev->http_seen_mono_ms + hd->idle_ms <= now) {
        list_remove(&ds->http_active, &dev->http_link);
        if (map_get(&hd->by_device, dev->id, strlen(dev->id))) {
            dev->http_seen_mono_ms = (int64_t)now;
            list_push_back(&ds->http_active, &dev->http_link);
            continue;
        }
        dev->http_online = false;
        devices_touch(ds, dev, NULL, dev->last_seen_ms);
        log_info("device=%s offline proto=http reason=\"no request for http.device_idle_s\"",
                 dev->id);
        if (dev->online == 0 && gw->on_presence)
            gw->on_presence(gw, dev->id, false);
    }
}

/* ---- polls ---- */

static void poll_unlink(struct poll *p)
{
    struct httpdev *hd = p->hd;
    map_del(&hd->by_device, p->device, strlen(p->device));
    list_remove(&hd->polls, &p->link);
}

/* Answers p with the device's queued commands (none: []) and frees it. */
static void poll_answer(struct poll *p)
{
    struct httpdev *hd = p->hd;
    struct http_conn *h = p->h;
    struct device *dev = devices_find(hd->gw->devices, p->device);
    struct buf b;

    poll_unlink(p);
    buf_init(&b);
    buf_append_str(&b, "{\"commands\":");
    httpdev_take(hd, p->device, &b);
    buf_append_str(&b, "}");
    if (dev)
        httpdev_seen(hd, dev); /* the poll was activity until now */
    free(p);
    rest_reply_json(h, 200, &b);
    buf_fini(&b);
}

static void on_poll_closed(void *ctx, struct http_conn *h)
{
    struct poll *p = ctx;
    (void)h;
    poll_unlink(p);
    free(p);
}

static void on_queued(void *ctx, const char *device)
{
    struct httpdev *hd = ctx;
    struct poll *p = map_get(&hd->by_device, device, strlen(device));
    if (p)
        poll_answer(p);
}

static void on_timer(uv_timer_t *t)
{
    struct httpdev *hd = t->data;
    uint64_t now = gw_mono_ms();
    struct poll *p;

    while ((p = list_entry(hd->polls.head, struct poll, link)) != NULL && p->due_mono_ms <= now)
        poll_answer(p);
    expire_presence(hd, now);
    arm(hd);
}

void httpdev_take(struct httpdev *hd, const char *device, struct buf *out)
{
    commands_take(hd->cs, device, out);
}

void httpdev_poll(struct httpdev *hd, struct http_conn *h, struct http_req *req,
                  struct device *dev)
{
    static const char *const params[] = {"wait", NULL};
    const struct config *cfg = hd->gw->cfg;
    uint64_t max_ms = (uint64_t)cfg->http.command_wait_max_s * 1000, wait_ms = 0;
    char val[32], *end;
    struct poll *p, *at;

    if (!rest_check_params(h, req, params))
        return;
    if (http_query_param(req, "wait", val, sizeof val)) {
        double s = strtod(val, &end);
        if (end == val || *end || !(s >= 0) || s > 1e6) {
            http_respond_error(h, 400, "bad_param", "wait must be a number of seconds >= 0");
            return;
        }
        wait_ms = (uint64_t)(s * 1000);
    }
    /* an idle connection is closed at limits.idle_timeout_ms: the poll ends before */
    if (cfg->limits.idle_timeout_ms > 1000 && max_ms > (uint64_t)cfg->limits.idle_timeout_ms - 1000)
        max_ms = (uint64_t)cfg->limits.idle_timeout_ms - 1000;
    if (wait_ms > max_ms)
        wait_ms = max_ms;
    httpdev_seen(hd, dev);
    if (wait_ms == 0 || commands_pending(hd->cs, dev->id)) {
        struct buf b;
        buf_init(&b);
        buf_append_str(&b, "{\"commands\":");
        httpdev_take(hd, dev->id, &b);
        buf_append_str(&b, "}");
        rest_reply_json(h, 200, &b);
        buf_fini(&b);
        return;
    }
    if (map_get(&hd->by_device, dev->id, strlen(dev->id))) {
        http_respond_error(h, 409, "poll_in_progress",
                           "this device has a command poll waiting already (one at a time)");
        return;
    }
    if (hd->polls.len >= (size_t)cfg->http.command_polls_max) {
        static const char busy[] = "{\"error\":\"too many command polls waiting "
                                   "(http.command_polls_max)\",\"code\":\"busy\"}";
        http_respond(h, 503, REST_JSON, busy, sizeof busy - 1, "Retry-After: 1\r\n");
        return;
    }
    p = xcalloc(1, sizeof *p);
    p->hd = hd;
    p->h = h;
    snprintf(p->device, sizeof p->device, "%s", dev->id);
    p->due_mono_ms = gw_mono_ms() + wait_ms;
    map_put(&hd->by_device, p->device, strlen(p->device), p);
    for (at = list_entry(hd->polls.tail, struct poll, link); at && at->due_mono_ms > p->due_mono_ms;
         at = list_entry(at->link.prev, struct poll, link))
        ;
    if (!at) {
        list_push_front(&hd->polls, &p->link);
    } else { /* after at */
        p->link.prev = &at->link;
        p->link.next = at->link.next;
        if (at->link.next)
            at->link.next->prev = &p->link;
        else
            hd->polls.tail = &p->link;
        at->link.next = &p->link;
        hd->polls.len++;
    }
    http_wait_watch(h, on_poll_closed, p);
    if (hd->polls.head == &p->link)
        arm(hd);
}

/* ---- results ---- */

void httpdev_result(struct httpdev *hd, struct http_conn *h, struct http_req *req,
                    struct device *dev, const char *cmd_id)
{
    cJSON *js = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    struct ticket t = {0, 0};
    struct buf b;
    int rc;

    if (!js) {
        http_respond_error(h, 400, "bad_json",
                           "the body is the command's result as JSON, e.g. {\"ok\":true}");
        return;
    }
    cJSON_Delete(js);
    rc = commands_result(hd->cs, dev->id, cmd_id, req->body, req->body_len, &t);
    if (rc == GW_ENOENT) {
        http_respond_error(h, 404, "not_found", "no such command");
        return;
    }
    if (rc == GW_EEXIST) {
        http_respond_error(h, 409, "already_replied", "this command has its result already");
        return;
    }
    buf_init(&b);
    buf_append_str(&b, "{\"id\":");
    buf_append_json_str(&b, cmd_id, strlen(cmd_id));
    buf_append_str(&b, ",\"status\":\"replied\"}");
    rest_reply_when_durable(h, &t, 200, &b, NULL);
    buf_fini(&b);
}

/* ---- lifecycle ---- */

struct httpdev *httpdev_new(struct gw *gw, struct commands *cs)
{
    struct httpdev *hd = xcalloc(1, sizeof *hd);
    hd->gw = gw;
    hd->cs = cs;
    hd->idle_ms = (uint64_t)gw->cfg->http.device_idle_s * 1000;
    map_init(&hd->by_device);
    uv_timer_init(gw->loop, &hd->timer);
    hd->timer.data = hd;
    uv_unref((uv_handle_t *)&hd->timer);
    if (cs)
        commands_set_queued_hook(cs, on_queued, hd);
    return hd;
}

void httpdev_free(struct httpdev *hd)
{
    if (!hd)
        return;
    /* every poll went with its connection (the loop closed them all) */
    while (hd->polls.head) {
        struct poll *p = list_entry(hd->polls.head, struct poll, link);
        poll_unlink(p);
        free(p);
    }
    map_fini(&hd->by_device);
    free(hd);
}
