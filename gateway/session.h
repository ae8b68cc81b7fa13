/* gateway/session.h: a device's session, the same over every transport.
 *
 * Everything Gale does with a device lives here once: authentication, presence,
 * decoding its telemetry into one message on the bus, acks through durability
 * tickets, error replies (with the message's "seq" when it had one), error counting,
 * commands to the device and its replies. A transport only frames bytes.
 *
 * Message transports (the line protocol, /ws/device) embed a struct session as the
 * first member of their protocol state and hand it each whole message (a line, a
 * text frame): session_message does the rest and answers through the transport's
 * struct session_ops. The device's wire protocol:
 *   first message  {"device":"<id>","token":"<token>"}      -> {"ok":true}
 *                  (unless the handshake carried credentials: session_authenticated)
 *   telemetry      any shape of gateway/telemetry.h; with "seq":N (a single object or
 *                  the batch envelope {"seq":N,"batch":[...]}) -> {"ack":N} once every
 *                  write it caused is durable
 *   bad message    -> {"error":"..","code":"..","seq":N} ("seq" when the message had a
 *                  valid one); after line.max_errors of them -> too_many_errors, close
 *   bad auth       -> {"error":"..","code":"unauthorized"}, close
 *   commands       -> {"command":{"id":..,"name":..,"params":..}}; the device answers
 *                  {"reply":{"id":"<cmd-id>",...}}
 * HTTP ingest (web/rest.c) and the MQTT broker (protocols/mqtt/handle.c) use the
 * lower-level functions: session_authenticate, session_ingest / session_decode,
 * session_online / session_offline, and for MQTT session_mqtt_login,
 * session_mqtt_topic and session_mqtt_publish, which keep Gale's device model
 * (telemetry and attribute topics, ThingsBoard topics, auto-registration, command
 * replies, presence) out of the broker.
 *
 * Not an MQTT session (protocols/mqtt keeps those). Loop thread only. */
#ifndef GALE_SESSION_H
#define GALE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/devices.h"
#include "gateway/ticket.h"

struct gw;
struct conn;
struct msg;

/* ---- message transports ---------------------------------------------------------- */

/* How a transport frames what the session sends. */
struct session_ops {
    const char *presence; /* protocol the device shows in presence: "line", "ws" */
    const char *unit;     /* what one message is called in texts and logs: "line", "message" */
    /* Sends msg (one JSON object, no framing) as one message; may append its framing to
     * msg. May close the connection. */
    void (*write)(struct conn *c, struct buf *msg);
    /* Closes the connection after what was written (a fatal error was sent). */
    void (*close)(struct conn *c, const char *why);
};

struct session {
    /* private */
    struct conn *conn;
    const struct session_ops *ops;
    int errors; /* error replies sent for bad messages */
    bool authed;
    char topic[DEVICE_ID_MAX + 32]; /* devices/<id>/telemetry */
};

/* Starts the session of c. c->proto_state must point to s (the first member of the
 * transport's state): acks and commands find the session through it. */
void session_init(struct session *s, struct conn *c, const struct session_ops *ops);
/* The transport's handshake carried dev's credentials (checked with
 * session_authenticate): the device is online at once, no first message is expected. */
void session_authenticated(struct session *s, struct device *dev);
/* One whole message from the device (json is borrowed). May send and may close the
 * connection, which frees s: read nothing of s after it. */
void session_message(struct session *s, const void *json, size_t len);
/* A transport-level fatal error (a line too long): error object, then close. */
void session_refuse(struct session *s, const char *code, const char *why);
/* The auth deadline passed (proto_ops.auth_timeout): an error object with code
 * auth_timeout; the caller closes the connection. */
void session_auth_timeout(struct session *s);
/* The connection is closing: presence goes offline. No I/O; s may be freed after. */
void session_close(struct session *s);

/* ---- shared pieces ----------------------------------------------------------------- */

/* Checks the token of device id (valid, NUL-terminated): its per-device token or, when
 * auth.fleet_keys is set, a fleet token (gateway/fleet.h) for it; a device unknown here
 * whose fleet token verifies is registered now. Returns the device (borrowed), or NULL
 * with a static reason (logs, replies) and a metrics reason ("bad_token",
 * "expired_token", "unknown_key", "unknown_device"). Logs nothing else. */
struct device *session_check_token(struct gw *gw, const char *id, const char *token, size_t tlen,
                                   const char **why, const char **reason);
/* Checks device id and token (session_check_token); counts and logs failures with the
 * peer. Returns the device (borrowed) or NULL. */
struct device *session_authenticate(struct gw *gw, struct conn *c, const char *device, size_t dlen,
                                    const char *token, size_t tlen);
/* Presence: c now speaks for device (a registry id; nothing happens when it is gone)
 * over proto ("line", "ws", "mqtt"). */
void session_online(struct gw *gw, struct conn *c, const char *device, const char *proto);
/* Presence: c, which spoke for c->device (if any), has gone. */
void session_offline(struct gw *gw, struct conn *c);

struct session_result {
    struct ticket ticket; /* the writes the message caused: await it for durability */
    bool has_seq;         /* the payload carried a valid "seq" (also on a decode error) */
    int64_t seq;          /* its value */
    size_t npoints;
};

/* Decodes telemetry JSON of dev into a message (refs = 1, the caller's) without
 * publishing it; counts its points and marks dev seen. NULL with a static reason and
 * machine code when the payload is not telemetry (res->has_seq/seq still set when it
 * named one). */
struct msg *session_decode(struct gw *gw, struct device *dev, const char *topic, const void *json,
                           size_t len, struct session_result *res, const char **why,
                           const char **code);
/* Decodes telemetry JSON of dev and publishes it; res->ticket collects the writes.
 * Returns 0, or -1 with a static reason and machine code. */
int session_ingest(struct gw *gw, struct device *dev, const char *topic, const void *json,
                   size_t len, struct session_result *res, const char **why, const char **code);
/* proto_ops.send_command of the protocols whose state is (or starts with) a session, for
 * an authenticated one: {"command":<json>}. */
void session_send_command(struct conn *c, const char *json, size_t len);
/* A device's reply to command cmd_id, from any transport (payload borrowed). */
void session_command_reply(struct gw *gw, const char *device, const char *cmd_id,
                           const void *payload, size_t len);

/* ---- MQTT ---------------------------------------------------------------------------- */

enum session_login_rc {
    SESSION_LOGIN_OK = 0,
    SESSION_LOGIN_BAD_CREDENTIALS, /* wrong device/token, or a provisioned name without one */
    SESSION_LOGIN_NOT_AUTHORIZED,  /* no credentials and anonymous access is off */
};

/* Who an MQTT client is, as its CONNECT credentials establish. */
struct session_login {
    bool anonymous;                 /* no credentials (mqtt.allow_anonymous) */
    enum device_role role;          /* of the registry entry authenticated (not anonymous) */
    char device[DEVICE_ID_MAX + 1]; /* the registry entry whose presence the client carries:
                                     * the authenticated device or app, or for an anonymous
                                     * client a tokenless device its username names; "" */
};

/* CONNECT: username = device id, password = token (has_* say what was sent). Without a
 * password, and with mqtt.allow_anonymous, the client is anonymous unless its username
 * names a provisioned device that has a token. Counts and logs refusals. */
enum session_login_rc session_mqtt_login(struct gw *gw, struct conn *c, const char *user,
                                         size_t ulen, bool has_user, const void *pass, size_t plen,
                                         bool has_pass, struct session_login *out);

/* An MQTT client as the device model sees it on PUBLISH (plain values of the broker's
 * connection, borrowed). */
struct session_client {
    struct conn *conn;
    bool anonymous;       /* connected without credentials */
    const char *username; /* as sent, "" when none */
    const char *device;   /* the device it authenticated as, "" for apps and anonymous */
};

/* The topic a PUBLISH is routed under: ThingsBoard-style v1/devices/me/telemetry and
 * v1/devices/me/attributes name the client's own device (for an anonymous client: its
 * username when that is a valid device id) and become devices/<id>/telemetry|attributes;
 * any other topic is copied. Writes it NUL-terminated to out, cap >= len + 64. */
void session_mqtt_topic(const struct session_client *who, const char *topic, size_t len, char *out,
                        size_t cap);
/* What a PUBLISH on topic (already ACL-checked) means to Gale, done: telemetry on
 * devices/<id>/telemetry is decoded (registering an unknown id when
 * devices.auto_register allows and the payload decodes), devices/<id>/attributes are
 * merged into the device, devices/<id>/commands/<cmd>/reply answers a command. Returns
 * the message to route (refs = 1, the caller's; the caller sets qos, retain and
 * publishes it): telemetry with its points, attributes, or a plain message. Writes it
 * caused (a new device, attributes) join t. When telemetry did not decode, *not_stored
 * is its static reason, nothing was written and the message is a plain one (the caller
 * routes or drops it, as mqtt.invalid_telemetry says); else NULL. */
struct msg *session_mqtt_publish(struct gw *gw, const struct session_client *who, const char *topic,
                                 const void *payload, size_t len, struct ticket *t,
                                 const char **not_stored);

#endif
