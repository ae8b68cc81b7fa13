/* gateway/metrics.h: counters and gauges kept by the loop thread, exposed as
 * Prometheus text on GET /metrics and as $SYS topics. Plain integers: only the
 * loop thread writes them. */
#ifndef GALE_METRICS_H
#define GALE_METRICS_H

#include <stdint.h>

#include "base/buf.h"

struct metrics {
    uint64_t connections_total;        /* accepted since start */
    uint64_t connections_refused;      /* refused at limits.max_connections */
    uint64_t bytes_in, bytes_out;      /* all sockets */
    uint64_t messages_in;              /* messages published on the bus */
    uint64_t points_in;                /* telemetry values decoded */
    uint64_t line_errors;              /* error lines sent on the line protocol */
    uint64_t auth_failures;            /* rejected credentials, any protocol */
    uint64_t http_requests;            /* requests answered */
    uint64_t http_status[6];           /* by class: [2] = 2xx ... [5] = 5xx */
    uint64_t storage_failures;         /* batches that failed for good */
    uint64_t ingest_pauses;            /* backpressure episodes */
    uint64_t timeouts;                 /* connections closed by auth/idle timers */
    uint64_t mqtt_messages_sent;       /* PUBLISH packets sent to subscribers */
    uint64_t mqtt_dropped;             /* QoS 0 dropped, queue overflow */
    uint64_t mqtt_telemetry_rejected;  /* MQTT telemetry payloads that did not decode */
    uint64_t feed_dropped;             /* live-feed updates dropped for slow viewers */
    uint64_t feed_sent;                /* live-feed frames sent */
    uint64_t rate_limited_drop;        /* device messages over the rate, dropped */
    uint64_t rate_limited_disconnect;  /* ... and connections closed for it */
    uint64_t preauth_refused;          /* connections refused or closed by pre-auth budgets */
};

struct gw;
/* Writes the Prometheus exposition of gw's metrics to out. */
void metrics_render(struct gw *gw, struct buf *out);

#endif
