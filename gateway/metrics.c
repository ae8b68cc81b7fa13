/* gateway/metrics.c: Prometheus text exposition of gw's counters and gauges. */
#include "gateway/metrics.h"

#include <string.h>

#include "base/clock.h"
#include "gateway/devices.h"
#include "gateway/guard.h"
#include "gateway/gw.h"

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
               (unsigned long long)v);
}

static void gauge(struct buf *b, const char *name, const char *help, double v)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

void metrics_render(struct gw *gw, struct buf *b)
{
    const struct metrics *m = &gw->metrics;
    size_t online = 0, it = 0;
    void *v;
    while (map_next(&gw->devices->by_id, &it, NULL, &v))
        online += ((struct device *)v)->online > 0;
    gauge(b, "gale_uptime_seconds", "Seconds since start", (double)(gw_now_ms() - gw->started_ms) / 1000);
    gauge(b, "gale_connections", "Live connections", (double)conn_registry_count(gw->conns));
    {
        /* live connections by protocol (http, line, mqtt, ws-device, ws-live, ...) */
        const char *names[16];
        size_t counts[16], n = 0;
        struct conn_iter ci;
        struct conn *c;
        conn_iter_begin(&ci, gw->conns);
        while ((c = conn_iter_next(&ci)) != NULL) {
            size_t i;
            for (i = 0; i < n && strcmp(names[i], c->proto->name) != 0; i++)
                ;
            if (i == n && n < 16) {
                names[n] = c->proto->name;
                counts[n++] = 0;
            }
            if (i < n)
                counts[i]++;
        }
        buf_append_str(b, "# HELP gale_connections_by_protocol Live connections by protocol\n"
                          "# TYPE gale_connections_by_protocol gauge\n");
        for (size_t i = 0; i < n; i++)
            buf_printf(b, "gale_connections_by_protocol{protocol=\"%s\"} %zu\n", names[i],
                       counts[i]);
    }
    counter(b, "gale_connections_total", "Connections accepted", m->connections_total);
    counter(b, "gale_connections_refused_total", "Connections refused at max_connections",
            m->connections_refused);
    gauge(b, "gale_devices", "Provisioned devices", (double)gw->devices->by_id.len);
    gauge(b, "gale_devices_online", "Devices with a live connection", (double)online);
    counter(b, "gale_bytes_received_total", "Bytes read from sockets", m->bytes_in);
    counter(b, "gale_bytes_sent_total", "Bytes written to sockets", m->bytes_out);
    counter(b, "gale_messages_received_total", "Messages published on the bus", m->messages_in);
    counter(b, "gale_points_received_total", "Telemetry values decoded", m->points_in);
    counter(b, "gale_line_errors_total", "Error lines sent on the line protocol", m->line_errors);
    counter(b, "gale_auth_failures_total", "Rejected credentials", m->auth_failures);
    counter(b, "gale_timeouts_total", "Connections closed by auth or idle timers", m->timeouts);
    counter(b, "gale_http_requests_total", "HTTP requests answered", m->http_requests);
    buf_printf(b, "# HELP gale_http_responses_total HTTP responses by status class\n"
                  "# TYPE gale_http_responses_total counter\n");
    for (int i = 1; i < 6; i++)
        buf_printf(b, "gale_http_responses_total{class=\"%dxx\"} %llu\n", i,
                   (unsigned long long)m->http_status[i]);
    gauge(b, "gale_storage_queued_rows", "Rows waiting for the storage writer",
          (double)gw_storage_queued(gw));
    gauge(b, "gale_storage_ingest_paused", "1 while ingest reads are paused by backpressure",
          gw->ingest_paused ? 1 : 0);
    counter(b, "gale_storage_ingest_pauses_total", "Backpressure episodes", m->ingest_pauses);
    if (gw->storage.ctx && gw->storage.stats) {
        struct gw_storage_stats st;

        gw->storage.stats(gw->storage.ctx, &st);
        gauge(b, "gale_storage_hot_points", "Acked points not yet in compressed chunks",
              (double)st.hot_points);
        gauge(b, "gale_storage_hot_bytes", "Memory of those points", (double)st.hot_bytes);
        gauge(b, "gale_storage_log_points", "Points in the segment log (what a restart replays)",
              (double)st.log_points);
        counter(b, "gale_storage_chunk_slices_total", "Chunk slices committed", st.slices);
        counter(b, "gale_storage_points_chunked_total", "Points written into chunks",
                st.points_chunked);
        counter(b, "gale_storage_chunks_written_total", "Chunks written", st.chunks_written);
        buf_printf(b, "# HELP gale_storage_chunk_slice_seconds_total Writer time in chunk slices\n"
                      "# TYPE gale_storage_chunk_slice_seconds_total counter\n"
                      "gale_storage_chunk_slice_seconds_total %.6f\n"
                      "# HELP gale_storage_chunk_slice_seconds_max The longest chunk slice\n"
                      "# TYPE gale_storage_chunk_slice_seconds_max gauge\n"
                      "gale_storage_chunk_slice_seconds_max %.6f\n",
                   st.slice_seconds_total, st.slice_seconds_max);
    }
    counter(b, "gale_storage_failures_total", "Batches that failed for good", m->storage_failures);
    counter(b, "gale_mqtt_messages_sent_total", "PUBLISH packets sent to subscribers",
            m->mqtt_messages_sent);
    counter(b, "gale_mqtt_dropped_total", "MQTT messages dropped (queue limits)", m->mqtt_dropped);
    /* a label, so other transports can count theirs under the same name */
    buf_printf(b, "# HELP gale_telemetry_rejected_total Telemetry payloads that did not decode "
                  "(not stored)\n# TYPE gale_telemetry_rejected_total counter\n"
                  "gale_telemetry_rejected_total{proto=\"mqtt\"} %llu\n",
               (unsigned long long)m->mqtt_telemetry_rejected);
    counter(b, "gale_feed_sent_total", "Live-feed frames sent", m->feed_sent);
    buf_printf(b, "# HELP gale_rate_limited_total Device messages over "
                  "limits.device_rate_msgs_per_s, by action\n"
                  "# TYPE gale_rate_limited_total counter\n"
                  "gale_rate_limited_total{action=\"drop\"} %llu\n"
                  "gale_rate_limited_total{action=\"disconnect\"} %llu\n",
               (unsigned long long)m->rate_limited_drop,
               (unsigned long long)m->rate_limited_disconnect);
    counter(b, "gale_preauth_refused_total",
            "Connections refused or closed by pre-authentication budgets", m->preauth_refused);
    gauge(b, "gale_preauth_bytes", "Bytes held by connections not yet authenticated",
          (double)guard_preauth_bytes(gw->guard));
    counter(b, "gale_feed_dropped_total", "Live-feed updates dropped for slow viewers",
            m->feed_dropped);
}
