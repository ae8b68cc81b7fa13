/* gateway/bridge/upstream.h: the bridge's link to one upstream broker, as a small table of
 * operations: upstream_paho (upstream.c) speaks MQTT 3.1.1 or MQTT 5 (the upstream's
 * protocol) through paho-mqtt-c's MQTTAsync; unit tests put a fake in its place. Every
 * operation is called on the loop thread and never blocks (close excepted); every event
 * is delivered on the loop thread.
 *
 * paho runs its own threads. Its callbacks (connected, connection lost, a send's
 * onSuccess/onFailure, message arrived) only copy what they carry into an event, push it
 * on a mutex-guarded queue and uv_async_send(); the loop drains the queue and calls the
 * events below. No loop state is touched from paho's threads and paho is never called
 * from its own callbacks.
 *
 * What paho does with QoS 1/2 messages in flight when the connection drops (1.3.x, with
 * MQTTCLIENT_PERSISTENCE_NONE and cleansession 0): it keeps them in its in-memory session
 * (MQTTAsync_closeSession cleans only with cleansession set). After the next CONNACK, with
 * session present it retransmits them (DUP set) and their onSuccess fires on the PUBACK;
 * with session present 0 (the upstream lost our session) it empties its session and
 * fails their pending responses (onFailure, before the connect's onSuccess). A PUBLISH
 * that paho had queued but not yet written at the loss (its socket was full, or the send
 * raced the loss) stays in its command queue and goes out after the next connect, with or
 * without session, and calls back as usual: a send's context therefore lives until its
 * callback, however many reconnects later. The bridge never waits on a send across a
 * reconnect: on connection lost it takes every unacknowledged message back and resends
 * it, oldest first, after the next connect; a late onSuccess from paho's own copy still
 * acknowledges the message. Copies per message in flight at a loss: at most two more
 * (paho's and ours), each counted by the bridge as resent when it is ours.
 *
 * MQTT 5: paho keeps the same in-memory session while the Session Expiry Interval is not
 * 0 (Clean Start 0 plays cleansession 0's part). A PUBACK/PUBREC with a reason code
 * >= 0x80 ends that send with the refusal (refused, below) instead of an acknowledgement;
 * a DISCONNECT from the upstream ends the connection with its reason code. */
#ifndef GALE_BRIDGE_UPSTREAM_H
#define GALE_BRIDGE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct bridge_upstream_cfg;

/* What an upstream's reason code answered (reason events). */
enum upstream_packet {
    UPSTREAM_CONNACK = 0,     /* the last CONNACK: 0 accepted, else the refusal */
    UPSTREAM_DISCONNECT = 1,  /* a DISCONNECT the upstream sent (MQTT 5) */
};

/* What a link reports, on the loop thread, to ctx. */
struct upstream_events {
    /* Connected to uri (one of the configured addresses). */
    void (*connected)(void *ctx, const char *uri, bool session_present);
    /* A connect attempt failed or an established connection dropped (reason: static or
     * valid during the call). The link does not retry by itself: the bridge calls connect
     * again after its backoff. */
    void (*lost)(void *ctx, const char *reason);
    /* The send with tag was acknowledged (QoS 1 PUBACK, QoS 2 PUBCOMP, QoS 0: written):
     * ok = true; or failed (ok = false). */
    void (*delivered)(void *ctx, uint64_t tag, bool ok);
    /* A message on a subscribed filter; everything valid during the call only. */
    void (*message)(void *ctx, const char *topic, const void *payload, size_t len,
                    uint8_t qos, bool retain);
    /* MQTT 5: the upstream answered the send with tag by a reason code >= 0x80 (PUBACK,
     * PUBREC): it does not take the message, and would answer a resend the same way. Also
     * 0x95 (Packet too large) for a message past the Maximum Packet Size of the upstream's
     * CONNACK, which the link does not send.
     * name: static; reason_string (the packet's Reason String) NULL when none. */
    void (*refused)(void *ctx, uint64_t tag, int code, const char *name,
                    const char *reason_string);
    /* The reason code of a CONNACK (MQTT 3.1.1: its return code) or of the upstream's
     * DISCONNECT, just before the connected or lost it leads to. name: static;
     * reason_string NULL when none. */
    void (*reason)(void *ctx, enum upstream_packet what, int code, const char *name,
                   const char *reason_string);
};

struct upstream_ops {
    /* Creates the link (does not connect yet). ev and ev_ctx are borrowed and outlive the
     * link; cfg too. Returns NULL (err filled) when the client cannot be created. */
    void *(*open)(uv_loop_t *loop, const struct bridge_upstream_cfg *cfg,
                  const struct upstream_events *ev, void *ev_ctx, char *err, size_t errlen);
    /* Starts one connect attempt over every address in order; the result comes as
     * connected or lost. */
    void (*connect)(void *link);
    /* Subscribes to n filters (remote topics, prefix included) at qos; MQTT 5: with No
     * Local (not on $share/ filters), a refused filter is logged. 0 or a GW_E* code. */
    int (*subscribe)(void *link, char *const *filters, size_t n, uint8_t qos);
    /* Queues one PUBLISH; its outcome comes as delivered(tag). Returns 0, or a GW_E* code
     * when it was not taken (not connected, paho's queue full): no event follows then. */
    int (*send)(void *link, uint64_t tag, const char *topic, const void *payload, size_t len,
                uint8_t qos);
    /* Disconnects (waiting at most about a second), stops every event and closes the
     * link's handles; the loop must run once more before free. */
    void (*close)(void *link);
    /* Frees the link (after close, once its handles are closed). */
    void (*free)(void *link);
};

/* The paho-mqtt-c MQTTAsync implementation. */
extern const struct upstream_ops upstream_paho;

#endif
