/* gateway/bridge/bridge.h: the upstream bridge (README "Bridge"). A bus sink puts every
 * message matching an upstream's forward filters into that upstream's outbox (the port of
 * outbox.h, in the same group commit as the message's telemetry) and sends it upstream;
 * it leaves the outbox once the upstream acknowledged it, or when a limit drops it.
 * Messages on subscribed remote filters come down: commands for local devices become
 * commands (through bridge_hooks.command), the rest is published on the local bus.
 *
 * Memory: per backlog message one index entry of sizeof(struct bridge_entry) = 40 bytes
 * (id, time, size, QoS, state, device bucket, payload pointer) in a ring that at most
 * doubles; payloads only for a bounded window (in flight + a read-ahead of at most
 * BRIDGE_READAHEAD_MSGS messages / BRIDGE_READAHEAD_BYTES), the rest is read back from the
 * outbox in id order. Loop thread only (paho's threads stay in upstream.c). */
#ifndef GALE_BRIDGE_H
#define GALE_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/bridge/bridge_cfg.h"
#include "gateway/bridge/outbox.h"
#include "gateway/bridge/upstream.h"
#include "gateway/msg.h"
#include "gateway/ticket.h"

#define BRIDGE_READAHEAD_MSGS 4096
#define BRIDGE_READAHEAD_BYTES (4u << 20)

struct bridge;
struct gw;

/* One backlog message in the index (ascending id). */
struct bridge_entry {
    uint64_t id;
    int64_t ts_ms;                   /* entered the outbox, epoch ms */
    struct bridge_payload *p;        /* the message while in memory, else NULL */
    uint32_t bytes;                  /* topic + payload bytes */
    uint16_t bucket;                 /* device hash bucket (order is kept per bucket) */
    uint8_t qos;
    uint8_t state;                   /* waiting, sent (in flight) or done */
    uint8_t resend;                  /* was sent before: the next send is a resend */
};

/* What main wires so that the bridge never includes web/. */
struct bridge_hooks {
    void *ctx;
    /* Creates the command id (1..32 of [A-Za-z0-9_-]) for the local device as
     * POST /api/devices/<id>/commands would; params_json is JSON text or NULL.
     * Returns 0, GW_ENOENT (no such device), GW_EEXIST (id known: a redelivery) or
     * GW_EINVAL (bad name, params or timeout). */
    int (*command)(void *ctx, const char *device, const char *id, const char *name,
                   const char *params_json, int64_t timeout_ms);
};

/* A reason code the upstream answered with (code -1: none yet). name is static. */
struct bridge_reason {
    int code;
    const char *name;
    char *reason_string;             /* the packet's Reason String (MQTT 5), or NULL */
};

/* Counters and gauges of one upstream (GET /api/bridges, /metrics). */
struct bridge_stats {
    const char *name;
    bool connected;
    const char *address;             /* the connected URI, or NULL */
    uint64_t backlog, backlog_bytes; /* messages in the outbox and their bytes */
    double oldest_age_s;             /* of the oldest one; 0 when empty */
    uint64_t inflight;
    uint64_t sent_total, acked_total, resent_total, received_total, reconnects_total;
    uint64_t dropped_full, dropped_age, dropped_refused;
    const char *protocol;            /* "3.1.1" or "5" */
    /* borrowed from the bridge, valid until it changes (loop thread) */
    struct bridge_reason connack;    /* the last CONNACK */
    struct bridge_reason disconnect; /* the last DISCONNECT from the upstream (MQTT 5) */
    struct bridge_reason refused;    /* the last message the upstream refused (MQTT 5) */
    const char *refused_topic;       /* its topic, or NULL */
    const uint64_t *refused_by;      /* [256]: refused messages per reason code */
};

/* Builds the bridge over gw's loop, bus and devices for every upstream of cfg (borrowed,
 * outliving the bridge), loads each upstream's outbox index through port (start-up:
 * blocks) and starts connecting. ops: upstream_paho, or a fake in tests; hooks may be
 * NULL (no commands come down). Returns NULL (logged) when an index cannot be loaded or
 * a client cannot be created. */
struct bridge *bridge_new(struct gw *gw, const struct bridge_cfg *cfg,
                          const struct outbox_port *port, const struct upstream_ops *ops,
                          const struct bridge_hooks *hooks);
/* Stops sending and receiving, disconnects every upstream (about a second at most) and
 * closes the bridge's handles; nothing pending is lost (it is in the outbox). NULL is
 * ignored. The loop must run once more before bridge_free. */
void bridge_close(struct bridge *b);
/* Frees the bridge (NULL is ignored). */
void bridge_free(struct bridge *b);

/* The bus sink (ctx: the bridge): forwards m to every upstream whose filters match,
 * adding each outbox write to t. */
void bridge_sink(void *ctx, struct msg *m, struct ticket *t);
/* A command's status changed (main wires it to web/commands.c's hook); status "queued",
 * "delivered", "replied" (reply_json: the reply) or "expired". Commands that came from an
 * upstream report back there on <prefix>devices/<id>/commands/<cmd-id>/status. */
void bridge_command_status(struct bridge *b, const char *device, const char *cmd_id,
                           const char *status, const char *reply_json);

/* Upstreams configured, and the stats of upstream i < bridge_count(). */
size_t bridge_count(const struct bridge *b);
void bridge_get_stats(const struct bridge *b, size_t i, struct bridge_stats *out);
/* GET /api/bridges: a JSON array, one object per upstream. */
void bridge_write_json(void *b, struct buf *out);
/* The gale_bridge_* families of /metrics (Prometheus text). */
void bridge_write_metrics(void *b, struct buf *out);
/* Runs one round of the bridge's timer work now (drain, age drops, drop logs): tests. */
void bridge_tick(struct bridge *b);

#endif
