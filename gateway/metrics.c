/* gateway/metrics.c: Prometheus text exposition (format 0.0.4) of gw's counters,
 * gauges and histograms, of storage's (through gw->storage.stats) and of the
 * process's own. Process figures come from procfs at scrape time: those reads are
 * answered by the kernel from memory, never by a disk, so the loop may make them.
 * Loop thread only. */
#include "gateway/metrics.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/clock.h"
#include "gateway/devices.h"
#include "gateway/guard.h"
#include "gateway/gw.h"

/* Protocols whose gauges exist from the start, at 0 while none is connected. */
static const char *const known_protocols[] = {"http", "line", "mqtt", "ws-device", "ws-live"};
#define NKNOWN (sizeof known_protocols / sizeof known_protocols[0])
#define MAX_PROTOCOLS 16

void metrics_auth_failed(struct metrics *m, const char *protocol, const char *reason)
{
    size_t i;
    for (i = 0; i < m->nauth_failures; i++)
        if (strcmp(m->auth_failures[i].protocol, protocol) == 0 &&
            strcmp(m->auth_failures[i].reason, reason) == 0)
            break;
    if (i == m->nauth_failures) {
        if (i == METRICS_MAX_FAILURE_KINDS) { /* the last slot takes what does not fit */
            i--;
            m->auth_failures[i].protocol = "other";
            m->auth_failures[i].reason = "other";
        } else {
            m->auth_failures[i] = (struct metrics_failure){protocol, reason, 0};
            m->nauth_failures++;
        }
    }
    m->auth_failures[i].n++;
}

uint64_t metrics_auth_failures(const struct metrics *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->nauth_failures; i++)
        n += m->auth_failures[i].n;
    return n;
}

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
    head(b, name, "counter", help);
    buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* Integral gauges print as integers, the rest with millisecond precision: a scrape
 * reads "143.937", not the float's full expansion. */
static void gauge(struct buf *b, const char *name, const char *help, double v)
{
    head(b, name, "gauge", help);
    if (v == (double)(int64_t)v)
        buf_printf(b, "%s %lld\n", name, (long long)v);
    else
        buf_printf(b, "%s %.3f\n", name, v);
}

static void histogram(struct buf *b, const char *name, const char *help, const struct hist *h)
{
    uint64_t cum = 0;
    head(b, name, "histogram", help);
    for (size_t i = 0; i < HIST_NBOUNDS; i++) {
        cum += h->counts[i];
        buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, (double)hist_bounds_us[i] / 1e6,
                   (unsigned long long)cum);
    }
    buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
               (unsigned long long)h->count, name, (double)h->sum_us / 1e6, name,
               (unsigned long long)h->count);
}

static void render_connections(struct gw *gw, struct buf *b)
{
    const char *names[MAX_PROTOCOLS];
    size_t counts[MAX_PROTOCOLS], n = 0;
    struct conn_iter ci;
    struct conn *c;

    for (; n < NKNOWN; n++) {
        names[n] = known_protocols[n];
        counts[n] = 0;
    }
    conn_iter_begin(&ci, gw->conns);
    while ((c = conn_iter_next(&ci)) != NULL) {
        size_t i;
        for (i = 0; i < n && strcmp(names[i], c->proto->name) != 0; i++)
            ;
        if (i == n && n < MAX_PROTOCOLS) {
            names[n] = c->proto->name;
            counts[n++] = 0;
        }
        if (i < n)
            counts[i]++;
    }
    head(b, "gale_connections_by_protocol", "gauge", "Live connections by protocol");
    for (size_t i = 0; i < n; i++)
        buf_printf(b, "gale_connections_by_protocol{protocol=\"%s\"} %zu\n", names[i], counts[i]);
}

static void render_auth_failures(const struct metrics *m, struct buf *b)
{
    head(b, "gale_auth_failures_total", "counter",
         "Rejected credentials by protocol and reason");
    for (size_t i = 0; i < m->nauth_failures; i++)
        buf_printf(b, "gale_auth_failures_total{protocol=\"%s\",reason=\"%s\"} %llu\n",
                   m->auth_failures[i].protocol, m->auth_failures[i].reason,
                   (unsigned long long)m->auth_failures[i].n);
}

static size_t count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    size_t n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n - 1 : 0; /* the directory's own descriptor is not the process's */
}

static void render_process(struct gw *gw, struct buf *b)
{
    struct rusage ru;
    struct rlimit rl;
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vsize_pages = 0, rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f) {
        if (fscanf(f, "%llu %llu", &vsize_pages, &rss_pages) != 2)
            vsize_pages = rss_pages = 0;
        fclose(f);
    }
    getrusage(RUSAGE_SELF, &ru);
    head(b, "process_cpu_seconds_total", "counter", "User and system CPU time spent, seconds");
    buf_printf(b, "process_cpu_seconds_total %.6f\n",
               (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                   (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    gauge(b, "process_resident_memory_bytes", "Resident memory, bytes",
          (double)rss_pages * (double)page);
    gauge(b, "process_virtual_memory_bytes", "Virtual memory, bytes",
          (double)vsize_pages * (double)page);
    gauge(b, "process_open_fds", "Open file descriptors", (double)count_open_fds());
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        gauge(b, "process_max_fds", "Limit of open file descriptors", (double)rl.rlim_cur);
    gauge(b, "process_start_time_seconds", "Start time since the Unix epoch, seconds",
          (double)(gw->started_ms / 1000));
}

static void render_storage(struct gw *gw, struct buf *b)
{
    struct gw_storage_stats st;

    if (!gw->storage.ctx || !gw->storage.stats)
        return;
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
    gauge(b, "gale_storage_wal_bytes", "Size of the write-ahead log file, bytes",
          (double)st.wal_bytes);
    counter(b, "gale_storage_wal_checkpoints_total",
            "Checkpoints that copied every frame of the write-ahead log", st.wal_checkpoints);
    counter(b, "gale_storage_wal_frames_copied_total",
            "Write-ahead log frames copied into the database file", st.wal_frames_copied);
    counter(b, "gale_storage_wal_checkpoint_busy_total",
            "Writer checkpoints a reader of an older snapshot kept from completing",
            st.wal_checkpoint_busy);
    histogram(b, "gale_storage_commit_seconds",
              "Writer time to commit one group-commit batch (retries included)",
              &st.commit_latency);
}

void metrics_render(struct gw *gw, struct buf *b)
{
    const struct metrics *m = &gw->metrics;
    size_t online = 0, it = 0;
    void *v;
    while (map_next(&gw->devices->by_id, &it, NULL, &v))
        online += devices_online(v);
    head(b, "gale_build_info", "gauge", "Build and library versions (always 1)");
    buf_printf(b, "gale_build_info{version=\"%s\",libuv=\"%s\",openssl=\"%s\"} 1\n",
               GALE_VERSION, uv_version_string(), OpenSSL_version(OPENSSL_VERSION_STRING));
    gauge(b, "gale_uptime_seconds", "Seconds since start",
          (double)(gw_now_ms() - gw->started_ms) / 1000);
    render_process(gw, b);
    gauge(b, "gale_connections", "Live connections", (double)conn_registry_count(gw->conns));
    render_connections(gw, b);
    counter(b, "gale_connections_total", "Connections accepted", m->connections_total);
    counter(b, "gale_connections_refused_total", "Connections refused at max_connections",
            m->connections_refused);
    gauge(b, "gale_devices", "Provisioned devices", (double)gw->devices->by_id.len);
    gauge(b, "gale_devices_online",
          "Devices online (a live connection, or HTTP requests within http.device_idle_s)",
          (double)online);
    counter(b, "gale_bytes_received_total", "Bytes read from sockets", m->bytes_in);
    counter(b, "gale_bytes_sent_total", "Bytes written to sockets", m->bytes_out);
    counter(b, "gale_messages_received_total", "Messages published on the bus", m->messages_in);
    counter(b, "gale_points_received_total", "Telemetry values decoded", m->points_in);
    counter(b, "gale_line_errors_total", "Error lines sent on the line protocol", m->line_errors);
    render_auth_failures(m, b);
    counter(b, "gale_timeouts_total", "Connections closed by auth or idle timers", m->timeouts);
    counter(b, "gale_http_requests_total", "HTTP requests answered", m->http_requests);
    head(b, "gale_http_responses_total", "counter", "HTTP responses by status class");
    for (int i = 1; i < 6; i++)
        buf_printf(b, "gale_http_responses_total{class=\"%dxx\"} %llu\n", i,
                   (unsigned long long)m->http_status[i]);
    histogram(b, "gale_http_request_seconds", "From a complete HTTP request to its reply",
              &m->http_latency);
    histogram(b, "gale_ack_seconds",
              "From a write's arrival to its ack (PUBACK, {\"ack\":N}, HTTP reply) once durable",
              &m->ack_latency);
    gauge(b, "gale_storage_queued_rows", "Rows waiting for the storage writer",
          (double)gw_storage_queued(gw));
    gauge(b, "gale_storage_ingest_paused", "1 while ingest reads are paused by backpressure",
          gw->ingest_paused ? 1 : 0);
    counter(b, "gale_storage_ingest_pauses_total", "Backpressure episodes", m->ingest_pauses);
    render_storage(gw, b);
    counter(b, "gale_storage_failures_total", "Batches that failed for good", m->storage_failures);
    gauge(b, "gale_storage_full", "1 while the disk is full and writes are refused",
          gw->storage_full ? 1 : 0);
    counter(b, "gale_storage_writes_refused_total",
            "Writes refused (not acknowledged) because the disk was full", m->storage_refused);
    counter(b, "gale_mqtt_messages_sent_total", "PUBLISH packets sent to subscribers",
            m->mqtt_messages_sent);
    counter(b, "gale_mqtt_dropped_total", "MQTT messages dropped (queue limits)", m->mqtt_dropped);
    counter(b, "gale_mqtt_too_large_total",
            "MQTT 5 messages not sent to a client: larger than its Maximum Packet Size",
            m->mqtt_too_large);
    counter(b, "gale_mqtt_expired_total",
            "MQTT 5 messages not sent: their Message Expiry Interval had passed",
            m->mqtt_expired);
    counter(b, "gale_mqtt_wills_delayed_total",
            "MQTT 5 wills published after their Will Delay Interval", m->mqtt_wills_delayed);
    counter(b, "gale_mqtt_wills_cancelled_total",
            "MQTT 5 wills not published: the client reconnected within the delay",
            m->mqtt_wills_cancelled);
    buf_printf(b, "# HELP gale_mqtt_refused_total MQTT subscriptions, connections and "
                  "messages refused by a per-identity limit, by its config key\n"
                  "# TYPE gale_mqtt_refused_total counter\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_subscriptions\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_subscription_bytes\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_subscription_levels\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_connections_per_identity\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"limits.max_sessions_per_device\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_anonymous_sessions\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_queued_bytes\"} %llu\n"
                  "gale_mqtt_refused_total{limit=\"mqtt.max_qos2_pending\"} %llu\n",
               (unsigned long long)m->mqtt_refused_subscriptions,
               (unsigned long long)m->mqtt_refused_sub_bytes,
               (unsigned long long)m->mqtt_refused_sub_levels,
               (unsigned long long)m->mqtt_refused_connections,
               (unsigned long long)m->mqtt_refused_sessions,
               (unsigned long long)m->mqtt_refused_anon_sessions,
               (unsigned long long)m->mqtt_refused_queue_bytes,
               (unsigned long long)m->mqtt_refused_qos2);
    buf_printf(b, "# HELP gale_device_refused_total Line and /ws/device logins refused by a "
                  "per-device limit, by its config key\n"
                  "# TYPE gale_device_refused_total counter\n"
                  "gale_device_refused_total{limit=\"limits.max_connections_per_device\"} %llu\n",
               (unsigned long long)m->device_refused_connections);
    counter(b, "gale_mqtt_wills_dropped_total",
            "Wills not published: refused by the checks a PUBLISH goes through",
            m->mqtt_wills_dropped);
    counter(b, "gale_mqtt_shared_sent_total",
            "Messages given to one member of a shared subscription ($share/...)",
            m->mqtt_shared_sent);
    counter(b, "gale_mqtt_shared_dropped_total",
            "Messages a shared subscription matched that no member could take (dropped)",
            m->mqtt_shared_dropped);
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
    buf_printf(b, "# HELP gale_proxy_connections_total Connections to PROXY protocol "
                  "listeners, by outcome of their header\n"
                  "# TYPE gale_proxy_connections_total counter\n"
                  "gale_proxy_connections_total{result=\"accepted\"} %llu\n"
                  "gale_proxy_connections_total{result=\"untrusted\"} %llu\n"
                  "gale_proxy_connections_total{result=\"failed\"} %llu\n",
               (unsigned long long)m->proxy_accepted, (unsigned long long)m->proxy_untrusted,
               (unsigned long long)m->proxy_failed);
    counter(b, "gale_preauth_refused_total",
            "Connections refused or closed by pre-authentication budgets", m->preauth_refused);
    gauge(b, "gale_preauth_bytes", "Bytes held by connections not yet authenticated",
          (double)guard_preauth_bytes(gw->guard));
    counter(b, "gale_feed_dropped_total", "Live-feed updates dropped for slow viewers",
            m->feed_dropped);
}
