/* gateway/session.c: see session.h. A message from a device goes: transport (framing)
 * -> session_message -> the first one authenticates (login), a {"reply":..} answers a
 * command, anything else is telemetry: session_ingest decodes it once and publishes it
 * on the bus, whose sinks add their writes to the message's ticket -> the ack waits on
 * that ticket (gw_await_durable) -> on_durable writes {"ack":N} or the storage error
 * through the transport. Loop thread only. */
#define _GNU_SOURCE /* memmem */
#include "gateway/session.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "gateway/bus.h"
#include "gateway/fleet.h"
#include "gateway/guard.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/telemetry.h"
#include "gateway/tls.h"

/* ---- shared pieces ------------------------------------------------------------------- */

struct device *session_check_token(struct gw *gw, const char *id, const char *token, size_t tlen,
                                   const char **why, const char **reason)
{
    struct device *dev = devices_find(gw->devices, id);
    enum fleet_rc rc;
    uint64_t seq;

    if (gw->fleet && fleet_is_token(token, tlen)) {
        rc = fleet_verify(gw->fleet, id, strlen(id), token, tlen, gw_now_ms() / 1000, why);
        if (rc != FLEET_OK) {
            *reason = rc == FLEET_EXPIRED       ? "expired_token"
                      : rc == FLEET_UNKNOWN_KEY ? "unknown_key"
                                                : "bad_token";
            return NULL;
        }
        if (dev && dev->role != DEVICE_ROLE_DEVICE) {
            *why = "fleet token for an application entry (fleet tokens are for devices)";
            *reason = "bad_token";
            return NULL;
        }
        if (!dev) { /* first valid connect here: registered, as if provisioned */
            dev = devices_create(gw->devices, id, FLEET_TOKEN_HASH, DEVICE_ROLE_DEVICE, NULL,
                                 gw_now_ms(), &seq);
            log_info("device=%s registered by its fleet token", id);
        }
        return dev;
    }
    if (!dev) {
        *why = "unknown device";
        *reason = "unknown_device";
    } else if (!devices_check_token(gw->token_secret, dev, token, tlen)) {
        dev = NULL;
        *why = "bad token";
        *reason = "bad_token";
    }
    return dev;
}

struct device *session_authenticate(struct gw *gw, struct conn *c, const char *device, size_t dlen,
                                    const char *token, size_t tlen)
{
    char id[DEVICE_ID_MAX + 1];
    struct device *dev = NULL;
    const char *why = "unknown device", *reason = "unknown_device";

    if (!devices_valid_id(device, dlen)) {
        why = "invalid device id";
        reason = "invalid_id";
    } else {
        memcpy(id, device, dlen);
        id[dlen] = '\0';
        dev = session_check_token(gw, id, token, tlen, &why, &reason);
    }
    if (!dev) {
        metrics_auth_failed(&gw->metrics, c->proto->name, reason);
        if (conn_refused(c, why))
            log_warn("conn=%llu peer=%s proto=%s auth failed device=\"%s\" reason=\"%s\"",
                     (unsigned long long)c->id, conn_peer(c), c->proto->name,
                     log_qn(device, dlen), why);
    }
    return dev;
}

void session_online(struct gw *gw, struct conn *c, const char *device, const char *proto)
{
    struct device *dev = devices_find(gw->devices, device);
    if (!dev)
        return;
    conn_authenticated(c, dev->id);
    dev->online++;
    devices_touch(gw->devices, dev, proto, gw_now_ms());
    if (dev->online == 1 && !dev->http_online && gw->on_presence)
        gw->on_presence(gw, dev->id, true);
    log_info("conn=%llu peer=%s proto=%s device=%s online", (unsigned long long)c->id, conn_peer(c),
             proto, dev->id);
}

void session_offline(struct gw *gw, struct conn *c)
{
    struct device *dev;
    if (!c->device[0])
        return;
    dev = devices_find(gw->devices, c->device);
    if (!dev)
        return; /* deleted while connected */
    if (dev->online > 0)
        dev->online--;
    devices_touch(gw->devices, dev, NULL, gw_now_ms());
    if (dev->online == 0 && !dev->http_online && gw->on_presence)
        gw->on_presence(gw, dev->id, false);
}

/* A ts below this is in seconds: 1e11 ms is 1973-03-03, while 1e11 s is the year 5138. */
#define SESSION_SECONDS_BELOW 100000000000LL

static struct telem_limits telem_limits_of(const struct gw *gw)
{
    return (struct telem_limits){gw->cfg->limits.max_points_per_message, 128};
}

struct msg *session_decode(struct gw *gw, struct device *dev, const char *topic, const void *json,
                           size_t len, struct session_result *res, const char **why,
                           const char **code)
{
    struct telem_limits lim = telem_limits_of(gw);
    struct telem t;
    struct msg *m;
    int64_t now = gw_now_ms();
    int rc;

    memset(res, 0, sizeof *res);
    rc = telem_decode(&lim, json, len, now, &t, why, code);
    res->has_seq = t.has_seq;
    res->seq = t.seq;
    if (rc != 0)
        return NULL;
    /* A device that sends seconds would land in 1970: a ts below 1e11 is taken for
     * seconds (README "Telemetry payloads"). Points without a ts of their own carry now,
     * so only an explicit ts can be this small. */
    for (size_t i = 0; i < t.npoints; i++)
        if (t.points[i].ts_ms < SESSION_SECONDS_BELOW)
            t.points[i].ts_ms *= 1000;
    res->npoints = t.npoints;
    m = msg_new(MSG_TELEMETRY, dev->id, topic, json, len, t.points, t.npoints);
    m->ts_ms = now;
    telem_fini(&t);
    dev->last_seen_ms = now;
    gw->metrics.points_in += m->npoints;
    return m;
}

int session_ingest(struct gw *gw, struct device *dev, const char *topic, const void *json,
                   size_t len, struct session_result *res, const char **why, const char **code)
{
    struct msg *m = session_decode(gw, dev, topic, json, len, res, why, code);
    if (!m)
        return -1;
    gw->metrics.messages_in++;
    bus_publish(gw->bus, m, &res->ticket);
    msg_unref(m);
    return 0;
}

void session_command_reply(struct gw *gw, const char *device, const char *cmd_id,
                           const void *payload, size_t len)
{
    if (gw->on_command_reply)
        gw->on_command_reply(gw, device, cmd_id, payload, len);
}

/* ---- message transports -------------------------------------------------------------- */

/* Sends the JSON object in b through the transport. Returns false when the connection
 * closed meanwhile (the session stays until the close callback). */
static bool send_msg(struct conn *c, const struct session_ops *ops, struct buf *b)
{
    ops->write(c, b);
    c->msgs_out++;
    return !c->closing;
}

static bool send_error(struct session *s, const char *code, const char *why, bool has_seq,
                       int64_t seq)
{
    struct conn *c = s->conn;
    struct buf b;
    bool open;

    buf_init(&b);
    buf_append_str(&b, "{\"error\":");
    buf_append_json_str(&b, why, strlen(why));
    buf_append_str(&b, ",\"code\":");
    buf_append_json_str(&b, code, strlen(code));
    if (has_seq)
        buf_printf(&b, ",\"seq\":%lld", (long long)seq);
    buf_append_str(&b, "}");
    open = send_msg(c, s->ops, &b);
    buf_fini(&b);
    return open;
}

void session_refuse(struct session *s, const char *code, const char *why)
{
    struct conn *c = s->conn;
    const struct session_ops *ops = s->ops;
    if (send_error(s, code, why, false, 0))
        ops->close(c, why);
}

void session_auth_timeout(struct session *s)
{
    char why[160];

    snprintf(why, sizeof why,
             "authentication timeout: no login within limits.auth_timeout_ms (%d ms); send "
             "{\"device\":\"<id>\",\"token\":\"<token>\"} first",
             s->conn->gw->cfg->limits.auth_timeout_ms);
    send_error(s, "auth_timeout", why, false, 0);
}

static void on_durable(struct conn *c, uint64_t tag, int ok)
{
    struct session *s = c->proto_state;
    struct buf b;

    if (ok < 0) /* closed first: nothing to send */
        return;
    if (!ok && c->gw->storage_full) {
        send_error(s, "storage_full", "storage full: not stored, send again later", true,
                   (int64_t)tag);
        return;
    }
    if (!ok) {
        send_error(s, "storage_error", "storage failure: not stored, send again", true,
                   (int64_t)tag);
        return;
    }
    buf_init(&b);
    buf_printf(&b, "{\"ack\":%llu}", (unsigned long long)tag);
    send_msg(c, s->ops, &b);
    buf_fini(&b);
}

void session_send_command(struct conn *c, const char *json, size_t len)
{
    struct session *s = c->proto_state;
    struct buf b;

    buf_init(&b);
    buf_append_str(&b, "{\"command\":");
    buf_append(&b, json, len);
    buf_append_str(&b, "}");
    send_msg(c, s->ops, &b);
    buf_fini(&b);
}

/* limits.max_connections_per_device: dev has that many live connections (any transport)
 * already, so this login is refused (said, counted, logged once per episode). */
static bool over_connection_cap(struct session *s, const struct device *dev)
{
    struct conn *c = s->conn;
    int cap = c->gw->cfg->limits.max_connections_per_device;

    if (cap <= 0 || dev->online < cap)
        return false;
    c->gw->metrics.device_refused_connections++;
    if (conn_refused(c, "limits.max_connections_per_device reached"))
        log_warn("conn=%llu peer=%s proto=%s device=%s refused "
                 "reason=\"limits.max_connections_per_device reached\" limit=%d",
                 (unsigned long long)c->id, conn_peer(c), c->proto->name, dev->id, cap);
    session_refuse(s, "too_many_connections",
                   "limits.max_connections_per_device reached: this device has that many "
                   "connections open already");
    return true;
}

static void go_online(struct session *s, struct device *dev)
{
    s->authed = true;
    snprintf(s->topic, sizeof s->topic, "devices/%s/telemetry", dev->id);
    session_online(s->conn->gw, s->conn, dev->id, s->ops->presence);
}

void session_init(struct session *s, struct conn *c, const struct session_ops *ops)
{
    memset(s, 0, sizeof *s);
    s->conn = c;
    s->ops = ops;
    c->ingest = true;
    c->auth_timeout_ms = (unsigned)c->gw->cfg->limits.auth_timeout_ms;
}

void session_authenticated(struct session *s, struct device *dev)
{
    if (!s->authed && !over_connection_cap(s, dev))
        go_online(s, dev);
}

/* The first message: {"device":"<id>","token":"<token>"}, or {"device":"<id>"} from a
 * client whose verified TLS certificate names the device (mutual TLS). */
static void login(struct session *s, const void *json, size_t len)
{
    struct conn *c = s->conn;
    struct gw *gw = c->gw;
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "device");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    const char *cert_id = cJSON_IsString(id) && !tok ? tls_peer_device(c, id->valuestring) : NULL;
    struct device *dev;
    char why[96];

    if (!cJSON_IsObject(root) || !cJSON_IsString(id) || (!cJSON_IsString(tok) && !cert_id)) {
        metrics_auth_failed(&gw->metrics, c->proto->name, "bad_first_message");
        if (conn_refused(c, "bad first message"))
            log_warn("conn=%llu peer=%s proto=%s auth failed reason=\"first %s must be "
                     "{\\\"device\\\":..,\\\"token\\\":..}\"",
                     (unsigned long long)c->id, conn_peer(c), c->proto->name, s->ops->unit);
        cJSON_Delete(root);
        snprintf(why, sizeof why, "first %s must be {\"device\":\"<id>\",\"token\":\"<token>\"}",
                 s->ops->unit);
        session_refuse(s, "unauthorized", why);
        return;
    }
    dev = cert_id ? devices_find(gw->devices, cert_id)
                  : session_authenticate(gw, c, id->valuestring, strlen(id->valuestring),
                                         tok->valuestring, strlen(tok->valuestring));
    cJSON_Delete(root);
    if (!dev) {
        session_refuse(s, "unauthorized", "authentication failed");
        return;
    }
    if (over_connection_cap(s, dev))
        return;
    go_online(s, dev);
    if (!c->closing) {
        struct buf b;
        buf_init(&b);
        buf_append_str(&b, "{\"ok\":true}");
        send_msg(c, s->ops, &b);
        buf_fini(&b);
    }
}

/* {"reply":{"id":"<cmd-id>",...}}: a command reply. Returns true when it was one. */
static bool command_reply(struct session *s, const void *json, size_t len)
{
    cJSON *root;
    const cJSON *r, *id;
    bool done = false;

    /* a cheap look first: telemetry is the common case and must not be parsed twice */
    if (len <= 9 || !memmem(json, len < 32 ? len : 32, "\"reply\"", 7))
        return false;
    root = cJSON_ParseWithLength(json, len);
    r = cJSON_GetObjectItemCaseSensitive(root, "reply");
    id = cJSON_GetObjectItemCaseSensitive(r, "id");
    if (cJSON_IsObject(r) && cJSON_IsString(id) && cJSON_GetArraySize(root) == 1) {
        char *js = cJSON_PrintUnformatted(r);
        session_command_reply(s->conn->gw, s->conn->device, id->valuestring, js, strlen(js));
        cJSON_free(js);
        done = true;
    }
    cJSON_Delete(root);
    return done;
}

static void bad_message(struct session *s, const struct device *dev,
                        const struct session_result *res, const char *code, const char *why)
{
    struct conn *c = s->conn;
    struct gw *gw = c->gw;
    char closing[64];

    gw->metrics.line_errors++;
    s->errors++;
    log_info("conn=%llu peer=%s proto=%s device=%s bad %s reason=\"%s\" errors=%d",
             (unsigned long long)c->id, conn_peer(c), c->proto->name, dev->id, s->ops->unit,
             log_q(why), s->errors);
    if (!send_error(s, code, why, res->has_seq, res->seq))
        return;
    if (s->errors >= gw->cfg->line.max_errors) {
        snprintf(closing, sizeof closing, "too many bad %ss, closing", s->ops->unit);
        session_refuse(s, "too_many_errors", closing);
    }
}

/* The device is over limits.device_rate_msgs_per_s: the message (json) is not taken.
 * drop: an error with code rate_limited and the message's seq, when it had one (parsed
 * only here, off the common path); disconnect: the error, then close. */
static void rate_limited(struct session *s, enum guard_rate r, const void *json, size_t len)
{
    struct conn *c = s->conn;
    static const char why[] = "message rate over limits.device_rate_msgs_per_s: not stored";
    cJSON *root;
    const cJSON *seq;

    if (log_refusal(conn_peer(c), "rate limited"))
        log_warn("conn=%llu peer=%s proto=%s device=%s rate limited action=%s limit=%d",
                 (unsigned long long)c->id, conn_peer(c), c->proto->name, c->device,
                 r == GUARD_RATE_DISCONNECT ? "disconnect" : "drop",
                 c->gw->cfg->limits.device_rate_msgs_per_s);
    if (r == GUARD_RATE_DISCONNECT) {
        session_refuse(s, "rate_limited", why);
        return;
    }
    root = cJSON_ParseWithLength(json, len);
    seq = cJSON_GetObjectItemCaseSensitive(root, "seq");
    send_error(s, "rate_limited", why, cJSON_IsNumber(seq),
               cJSON_IsNumber(seq) ? (int64_t)seq->valuedouble : 0);
    cJSON_Delete(root);
}

void session_message(struct session *s, const void *json, size_t len)
{
    enum guard_rate rate;
    struct conn *c = s->conn;
    struct gw *gw = c->gw;
    struct device *dev;
    struct session_result res;
    const char *why = NULL, *code = NULL;

    if (!s->authed) {
        login(s, json, len);
        return;
    }
    dev = devices_find(gw->devices, c->device);
    if (!dev) {
        session_refuse(s, "unauthorized", "device was deleted");
        return;
    }
    if ((rate = guard_rate(gw->guard, dev->id, gw_mono_ms())) != GUARD_RATE_OK) {
        rate_limited(s, rate, json, len);
        return;
    }
    if (command_reply(s, json, len))
        return;
    if (session_ingest(gw, dev, s->topic, json, len, &res, &why, &code) != 0) {
        bad_message(s, dev, &res, code, why);
        return;
    }
    if (res.has_seq)
        gw_await_durable(c, &res.ticket, (uint64_t)res.seq, on_durable);
}

void session_close(struct session *s)
{
    if (s->authed)
        session_offline(s->conn->gw, s->conn);
}

/* ---- MQTT ------------------------------------------------------------------------------ */

/* Anonymous access may name a device by username (no password) when that device has no
 * token: it registered itself through anonymous telemetry (devices.auto_register). */
static struct device *tokenless_device(struct gw *gw, const char *username)
{
    struct device *dev = username[0] ? devices_find(gw->devices, username) : NULL;
    return dev && !dev->token_hash[0] ? dev : NULL;
}

enum session_login_rc session_mqtt_login(struct gw *gw, struct conn *c, const char *user,
                                         size_t ulen, bool has_user, const void *pass, size_t plen,
                                         bool has_pass, struct session_login *out)
{
    char name[256] = ""; /* a longer username names no device */
    const char *cert_id;
    struct device *dev;

    memset(out, 0, sizeof *out);
    if (has_user && ulen < sizeof name) {
        memcpy(name, user, ulen);
        name[ulen] = '\0';
    }
    if (has_user && has_pass) {
        dev = session_authenticate(gw, c, user, ulen, pass, plen);
        if (!dev)
            return SESSION_LOGIN_BAD_CREDENTIALS;
        out->role = dev->role;
        snprintf(out->device, sizeof out->device, "%s", dev->id);
        return SESSION_LOGIN_OK;
    }
    /* mutual TLS: a verified certificate naming the device (the username, when one is
     * sent) stands for its token */
    cert_id = !has_pass && (!has_user || ulen == 0 || name[0]) ? tls_peer_device(c, name) : NULL;
    if (cert_id && (dev = devices_find(gw->devices, cert_id)) != NULL) {
        out->role = dev->role;
        snprintf(out->device, sizeof out->device, "%s", dev->id);
        return SESSION_LOGIN_OK;
    }
    /* a provisioned device's name needs its token, even with anonymous access */
    if (gw->cfg->mqtt.allow_anonymous &&
        (!has_user || !devices_find(gw->devices, name) || tokenless_device(gw, name))) {
        out->anonymous = true;
        dev = tokenless_device(gw, name);
        if (dev)
            snprintf(out->device, sizeof out->device, "%s", dev->id);
        return SESSION_LOGIN_OK;
    }
    metrics_auth_failed(&gw->metrics, "mqtt", has_user ? "bad_credentials" : "no_credentials");
    return has_user ? SESSION_LOGIN_BAD_CREDENTIALS : SESSION_LOGIN_NOT_AUTHORIZED;
}

/* The device "me" names in ThingsBoard-style topics: the authenticated device, or for an
 * anonymous client its username when that is a valid device id. NULL when none. */
static const char *self_device(const struct session_client *who)
{
    if (who->device[0])
        return who->device;
    if (who->anonymous && devices_valid_id(who->username, strlen(who->username)))
        return who->username;
    return NULL;
}

void session_mqtt_topic(const struct session_client *who, const char *topic, size_t len, char *out,
                        size_t cap)
{
    const char *me = self_device(who);

    if (me && len == 23 && memcmp(topic, "v1/devices/me/telemetry", 23) == 0) {
        snprintf(out, cap, "devices/%s/telemetry", me);
    } else if (me && len == 24 && memcmp(topic, "v1/devices/me/attributes", 24) == 0) {
        snprintf(out, cap, "devices/%s/attributes", me);
    } else {
        memcpy(out, topic, len);
        out[len] = '\0';
    }
}

/* devices/<id>/<rest>: fills id and returns rest, or NULL. */
static const char *device_topic(const char *topic, char *id, size_t idlen)
{
    const char *p, *slash;
    if (strncmp(topic, "devices/", 8) != 0)
        return NULL;
    p = topic + 8;
    slash = strchr(p, '/');
    if (!slash || (size_t)(slash - p) >= idlen || !devices_valid_id(p, (size_t)(slash - p)))
        return NULL;
    memcpy(id, p, (size_t)(slash - p));
    id[slash - p] = '\0';
    return slash + 1;
}

/* What the device publishes on devices/<id>/attributes: its reported scope, merged. */
static void merge_attributes(struct gw *gw, struct device *dev, const void *p, size_t len,
                             struct ticket *t)
{
    char *merged = dev->reported_attrs ? xstrdup(dev->reported_attrs) : NULL;

    if (devices_merge_attrs(&merged, p, len) != 0) {
        free(merged);
        return;
    }
    if (merged && strlen(merged) > gw->cfg->limits.max_attribute_bytes) {
        /* attributes would merge forever: not past the limit */
        log_warn("device=%s attributes not merged reason=\"over limits.max_attribute_bytes\" "
                 "bytes=%zu limit=%zu",
                 log_q(dev->id), strlen(merged), gw->cfg->limits.max_attribute_bytes);
        free(merged);
        return;
    }
    free(dev->reported_attrs);
    dev->reported_attrs = merged;
    ticket_add(t, devices_save(gw->devices, dev));
}

static bool registers_devices(const struct config *cfg)
{
    return cfg->devices.auto_register == CONFIG_REGISTER_ALWAYS ||
           (cfg->devices.auto_register == CONFIG_REGISTER_AUTO && cfg->mqtt.allow_anonymous);
}

/* Whether payload is telemetry; else *why is the reason. Decodes it once more, on the
 * first telemetry of an unknown device only: a payload that would not be stored must not
 * register a device either. */
static bool decodes(struct gw *gw, const void *payload, size_t len, const char **why)
{
    struct telem_limits lim = telem_limits_of(gw);
    struct telem tm;
    const char *code;

    if (telem_decode(&lim, payload, len, gw_now_ms(), &tm, why, &code) != 0)
        return false;
    telem_fini(&tm);
    return true;
}

/* Registers device id on its first telemetry (devices.auto_register, which anonymous access
 * implies: the caller checks). An anonymous client whose username is that id is from then
 * on the device's connection for presence. */
static struct device *auto_register(struct gw *gw, const struct session_client *who, const char *id,
                                    struct ticket *t)
{
    struct device *dev;
    uint64_t seq;

    dev = devices_create(gw->devices, id, NULL, DEVICE_ROLE_DEVICE, NULL, gw_now_ms(), &seq);
    ticket_add(t, seq);
    log_info("conn=%llu peer=%s proto=mqtt device=%s registered on first telemetry",
             (unsigned long long)who->conn->id, conn_peer(who->conn), id);
    if (who->anonymous && !who->conn->device[0] && strcmp(who->username, id) == 0)
        session_online(gw, who->conn, dev->id, "mqtt");
    return dev;
}

struct msg *session_mqtt_publish(struct gw *gw, const struct session_client *who, const char *topic,
                                 const void *payload, size_t len, struct ticket *t,
                                 const char **not_stored)
{
    char id[DEVICE_ID_MAX + 1];
    const char *rest = device_topic(topic, id, sizeof id);
    struct device *dev = NULL;
    struct msg *m = NULL;

    *not_stored = NULL;
    if (rest) {
        dev = devices_find(gw->devices, id);
        if (!dev && strcmp(rest, "telemetry") == 0 && registers_devices(gw->cfg) &&
            decodes(gw, payload, len, not_stored))
            dev = auto_register(gw, who, id, t);
    }
    if (dev && strcmp(rest, "telemetry") == 0) {
        struct session_result res;
        const char *code;
        m = session_decode(gw, dev, topic, payload, len, &res, not_stored, &code);
    } else if (dev && strcmp(rest, "attributes") == 0) {
        merge_attributes(gw, dev, payload, len, t);
        return msg_new(MSG_ATTRIBUTES, dev->id, topic, payload, len, NULL, 0);
    } else if (dev && strncmp(rest, "commands/", 9) == 0) {
        const char *cmd = rest + 9, *slash = strchr(cmd, '/');
        if (slash && strcmp(slash, "/reply") == 0) {
            char cmd_id[128];
            snprintf(cmd_id, sizeof cmd_id, "%.*s", (int)(slash - cmd), cmd);
            session_command_reply(gw, dev->id, cmd_id, payload, len);
        }
    }
    if (!m)
        m = msg_new(MSG_PLAIN, dev ? dev->id : who->device, topic, payload, len, NULL, 0);
    return m;
}
