/* gateway/metrics.h: counters, gauges and latency histograms kept by the loop
 * thread, exposed as Prometheus text on GET /metrics and as $SYS topics. Plain
 * integers: only the loop thread writes them. */
#ifndef GALE_METRICS_H
#define GALE_METRICS_H

#include <stdint.h>

#include "base/buf.h"
#include "base/hist.h"

#define METRICS_MAX_FAILURE_KINDS 32 /* distinct (protocol, reason) pairs counted */

/* Rejected credentials of one kind: gale_auth_failures_total{protocol,reason}. */
struct metrics_failure {
    const char *protocol;              /* static: "mqtt", "http", "line", ... */
    const char *reason;                /* static: "bad_token", "unknown_device", ... */
    uint64_t n;
};

struct metrics {
    uint64_t connections_total;        /* accepted since start */
    uint64_t connections_refused;      /* refused at limits.max_connections */
    uint64_t bytes_in, bytes_out;      /* all sockets */
    uint64_t messages_in;              /* messages published on the bus */
    uint64_t points_in;                /* telemetry values decoded */
    uint64_t line_errors;              /* error lines sent on the line protocol */
    /* rejected credentials by protocol and reason (metrics_auth_failed), first seen first */
    struct metrics_failure auth_failures[METRICS_MAX_FAILURE_KINDS];
    size_t nauth_failures;
    uint64_t http_requests;            /* requests answered */
    uint64_t http_status[6];           /* by class: [2] = 2xx ... [5] = 5xx */
    uint64_t storage_failures;         /* batches that failed for good */
    uint64_t storage_refused;          /* writes (store seqs) that failed on a full disk */
    uint64_t ingest_pauses;            /* backpressure episodes */
    uint64_t timeouts;                 /* connections closed by auth/idle timers */
    uint64_t mqtt_messages_sent;       /* PUBLISH packets sent to subscribers */
    uint64_t mqtt_dropped;             /* QoS 0 dropped, queue overflow */
    uint64_t mqtt_telemetry_rejected;  /* MQTT telemetry payloads that did not decode */
    /* MQTT refusals by per-identity limit (gale_mqtt_refused_total{limit="<config key>"}) */
    uint64_t mqtt_refused_subscriptions;     /* filters past mqtt.max_subscriptions */
    uint64_t mqtt_refused_sub_bytes;         /* ... past mqtt.max_subscription_bytes */
    uint64_t mqtt_refused_sub_levels;        /* ... past mqtt.max_subscription_levels */
    uint64_t device_refused_connections;     /* line/ws-device logins past
                                              * limits.max_connections_per_device */
    uint64_t mqtt_refused_connections;       /* CONNECTs past mqtt.max_connections_per_identity */
    uint64_t mqtt_refused_sessions;          /* CONNECTs refused at limits.max_sessions_per_device
                                              * (every session of the identity connected) */
    uint64_t mqtt_refused_anon_sessions;     /* ... at mqtt.max_anonymous_sessions */
    uint64_t mqtt_refused_queue_bytes;       /* messages dropped past mqtt.max_queued_bytes */
    uint64_t mqtt_refused_qos2;              /* connections closed past mqtt.max_qos2_pending */
    uint64_t mqtt_wills_dropped;             /* wills refused by the publish checks */
    uint64_t mqtt_too_large;                 /* MQTT 5: messages not sent to a client because
                                              * they exceed its Maximum Packet Size */
    uint64_t mqtt_expired;                   /* MQTT 5: messages not sent because their
                                              * Message Expiry Interval had passed */
    uint64_t mqtt_wills_delayed;             /* MQTT 5: wills published after their delay */
    uint64_t mqtt_wills_cancelled;           /* ... not published: the client came back */
    uint64_t mqtt_shared_sent;               /* messages given to a shared subscription's member */
    uint64_t mqtt_shared_dropped;            /* ... that no member could take (dropped) */
    uint64_t feed_dropped;             /* live-feed updates dropped for slow viewers */
    uint64_t feed_sent;                /* live-feed frames sent */
    uint64_t rate_limited_drop;        /* device messages over the rate, dropped */
    uint64_t rate_limited_disconnect;  /* ... and connections closed for it */
    uint64_t preauth_refused;          /* connections refused or closed by pre-auth budgets */
    /* PROXY protocol listeners (gale_proxy_connections_total{result=...}) */
    uint64_t proxy_accepted;           /* a valid header named the client */
    uint64_t proxy_untrusted;          /* refused: the peer is not in limits.proxy_trusted */
    uint64_t proxy_failed;             /* closed: bad or missing header, or its timeout */
    struct hist ack_latency;           /* a write's ack waiting for durability: from the
                                        * wait's start to the ack (conn_registry_durable) */
    struct hist http_latency;          /* HTTP request complete -> reply written */
};

/* Counts one rejected credential. protocol and reason must be static strings (kept by
 * pointer); past METRICS_MAX_FAILURE_KINDS kinds the last one and the rest count as
 * protocol "other", reason "other". */
void metrics_auth_failed(struct metrics *m, const char *protocol, const char *reason);
/* Every rejected credential so far, all kinds together. */
uint64_t metrics_auth_failures(const struct metrics *m);

struct gw;
/* Writes the Prometheus exposition of gw's metrics to out: the gateway's own, storage's
 * (gw->storage.stats) and the process's (CPU, memory, descriptors, read from /proc). */
void metrics_render(struct gw *gw, struct buf *out);

#endif
