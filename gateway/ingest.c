/* gateway/ingest.c: see ingest.h. */
#include "gateway/ingest.h"

#include <stdio.h>
#include <string.h>

#include "base/buf.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/telemetry.h"
#include "base/clock.h"
#include "storage/store.h"

static void sink_latest(void *ctx, struct msg *m, struct ticket *t)
{
    struct gw *gw = ctx;
    (void)t;
    struct device *dev;
    if (m->kind != MSG_TELEMETRY || !m->device[0] || m->npoints == 0)
        return;
    dev = devices_find(gw->devices, m->device);
    if (dev)
        devices_update_latest(dev, m);
}

void ingest_init(struct gw *gw)
{
    bus_add_sink(gw->bus, "latest", sink_latest, gw);
}

struct device *ingest_auth(struct gw *gw, struct conn *c, const char *device, size_t dlen,
                           const char *token, size_t tlen)
{
    char id[DEVICE_ID_MAX + 1];
    struct device *dev = NULL;
    const char *why = "unknown device";

    if (!devices_valid_id(device, dlen)) {
        why = "invalid device id";
    } else {
        memcpy(id, device, dlen);
        id[dlen] = '\0';
        dev = devices_find(gw->devices, id);
        if (dev && !devices_check_token(gw->token_secret, dev, token, tlen)) {
            dev = NULL;
            why = "bad token";
        }
    }
    if (!dev) {
        gw->metrics.auth_failures++;
        log_warn("conn=%llu peer=%s proto=%s auth failed device=\"%.*s\" reason=\"%s\"",
                 (unsigned long long)c->id, c->peer, c->proto->name, (int)(dlen > 64 ? 64 : dlen),
                 device, why);
    }
    return dev;
}

void ingest_online(struct gw *gw, struct conn *c, struct device *dev, const char *proto)
{
    conn_authenticated(c, dev->id);
    dev->online++;
    dev->last_seen_ms = gw_now_ms();
    snprintf(dev->protocol, sizeof dev->protocol, "%s", proto);
    store_touch_device(gw->store, dev->id, dev->last_seen_ms, dev->protocol);
    if (dev->online == 1 && gw->on_presence)
        gw->on_presence(gw, dev->id, true);
    log_info("conn=%llu peer=%s proto=%s device=%s online", (unsigned long long)c->id, c->peer,
             proto, dev->id);
}

void ingest_offline(struct gw *gw, struct conn *c)
{
    struct device *dev;
    if (!c->device[0])
        return;
    dev = devices_find(gw->devices, c->device);
    if (!dev)
        return; /* deleted while connected */
    if (dev->online > 0)
        dev->online--;
    dev->last_seen_ms = gw_now_ms();
    store_touch_device(gw->store, dev->id, dev->last_seen_ms, dev->protocol);
    if (dev->online == 0 && gw->on_presence)
        gw->on_presence(gw, dev->id, false);
}

struct msg *ingest_decode(struct gw *gw, struct device *dev, const char *topic, const void *json,
                          size_t len, struct ingest_result *res, const char **why,
                          const char **code)
{
    struct telem_limits lim = {gw->cfg->limits.max_points_per_message, 128};
    struct telem t;
    struct msg *m;
    int64_t now = gw_now_ms();

    memset(res, 0, sizeof *res);
    if (telem_decode(&lim, json, len, now, &t, why, code) != 0)
        return NULL;
    res->has_seq = t.has_seq;
    res->seq = t.seq;
    res->npoints = t.npoints;
    m = msg_new(MSG_TELEMETRY, dev->id, topic, json, len, t.points, t.npoints);
    m->ts_ms = now;
    telem_fini(&t);
    dev->last_seen_ms = now;
    gw->metrics.points_in += m->npoints;
    return m;
}

int ingest_telemetry(struct gw *gw, struct device *dev, const char *topic, const void *json,
                     size_t len, struct ingest_result *res, const char **why, const char **code)
{
    struct msg *m = ingest_decode(gw, dev, topic, json, len, res, why, code);
    if (!m)
        return -1;
    gw->metrics.messages_in++;
    bus_publish(gw->bus, m, &res->ticket);
    msg_unref(m);
    return 0;
}

void ingest_write_error(struct buf *out, const char *code, const char *why, bool has_seq,
                        int64_t seq)
{
    buf_append_str(out, "{\"error\":");
    buf_append_json_str(out, why, strlen(why));
    buf_append_str(out, ",\"code\":");
    buf_append_json_str(out, code, strlen(code));
    if (has_seq)
        buf_printf(out, ",\"seq\":%lld", (long long)seq);
    buf_append_str(out, "}");
}
