/* config/config.c: Gale's configuration, driven by one table of keys.
 * Data moves one way: config_defaults() fills a struct config from the table's
 * default texts, then each source overrides it in turn (the --config JSON file,
 * GALE_<SECTION>_<KEY> environment variables, --set section.key=value flags).
 * Every source decodes a value with the key's type from the table, checks its
 * bounds and names the key in any error. Each apply works on a copy, so a
 * failed call leaves the caller's config as it was. Runs on the main thread at
 * startup, before the loop exists; no globals are written. */
#include "config/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "base/alloc.h"

#define CONFIG_FILE_MAX_BYTES (1024 * 1024) /* a config file larger than this is refused */
#define GOT_MAX 40                          /* bytes of a bad value quoted in an error */
#define QUOTED_MAX (GOT_MAX * 4 + 8)        /* those bytes quoted and escaped, NUL included */
#define MIB (1024LL * 1024)
#define GIB (1024LL * MIB)

enum key_type {
    KEY_INT,  /* int field; JSON number, text integer; bounds min..max */
    KEY_SIZE, /* size_t field; bytes or counts; plain integer, text may end in k|m|g */
    KEY_BOOL, /* bool field; JSON true/false, text true/false/1/0/yes/no/on/off */
    KEY_STR,  /* char[] field; min..(field size - 1) bytes */
    KEY_ENUM, /* char[] field holding one of the '|'-separated words in choices */
    KEY_CHOICE, /* enum field: the position of one of the '|'-separated words in choices */
    KEY_JSON, /* char[] field holding a JSON array as compact text */
    KEY_LIST, /* as KEY_JSON, an array of strings; text may also be "a, b, c" */
};

struct key {
    const char *name;    /* "section.key" */
    enum key_type type;
    size_t offset;       /* of the field in struct config */
    size_t size;         /* of the field, bytes (char[] capacity, NUL included) */
    long long min, max;  /* KEY_INT/KEY_SIZE: value bounds; KEY_STR: min length, bytes */
    const char *choices; /* KEY_ENUM, KEY_CHOICE: "debug|info|warn|error" */
    const char *def;     /* default, as text in the key's --set syntax */
    const char *help;    /* one line */
};

#define FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)
#define INT(n, f, lo, hi, d, h) { n, KEY_INT, FIELD(f), lo, hi, NULL, d, h }
#define SIZE(n, f, lo, hi, d, h) { n, KEY_SIZE, FIELD(f), lo, hi, NULL, d, h }
#define BOOL(n, f, d, h) { n, KEY_BOOL, FIELD(f), 0, 0, NULL, d, h }
#define STR(n, f, minlen, d, h) { n, KEY_STR, FIELD(f), minlen, 0, NULL, d, h }
#define ENUM(n, f, c, d, h) { n, KEY_ENUM, FIELD(f), 0, 0, c, d, h }
#define CHOICE(n, f, c, d, h) { n, KEY_CHOICE, FIELD(f), 0, 0, c, d, h }
#define JSON(n, f, d, h) { n, KEY_JSON, FIELD(f), 0, 0, NULL, d, h }
#define LIST(n, f, d, h) { n, KEY_LIST, FIELD(f), 0, 0, NULL, d, h }

/* The one list of keys: parsing, validation, defaults, gateway.json and the
 * reference (gale --config-reference, README) all come from here. Order = output order. */
static const struct key keys[] = {
    STR("gateway.data_dir", data_dir, 1, "./data",
        "Directory for the database, the generated API key and other state."),
    ENUM("log.level", log.level, "debug|info|warn|error", "info",
         "Lowest level of log lines written."),
    ENUM("log.format", log.format, "text|json", "text",
         "Log line format: key=value text or one JSON object per line."),
    STR("http.bind", http.bind, 1, "0.0.0.0", "Address the HTTP/WebSocket listener binds."),
    INT("http.port", http.port, 0, 65535, "8080",
        "HTTP port (REST, dashboard, WebSocket); 0 picks a free port."),
    CHOICE("http.proxy_protocol", http.proxy_protocol, "off|v1|v2|any", "off",
           "PROXY protocol on http.port and http.tls_port (behind a TCP load balancer): "
           "v1, v2 or any = each connection must open with a header of that version, which "
           "names the client (its address is then the peer in logs, limits, metrics and the "
           "connection list); only peers in limits.proxy_trusted may connect."),
    INT("http.tls_port", http.tls_port, -1, 65535, "8443",
        "HTTPS and WSS port (the same routes over TLS); on only with tls.cert_file; 0 = off, "
        "-1 picks a free port."),
    STR("http.api_key", http.api_key, 0, "",
        "API key for REST and the live feed (the admin key \"bootstrap\"); empty = generate "
        "one into the data dir."),
    SIZE("http.max_header_bytes", http.max_header_bytes, 256, 16 * MIB, "16384",
         "Largest request head (request line + headers), bytes."),
    SIZE("http.max_body_bytes", http.max_body_bytes, 0, GIB, "1048576",
         "Largest request body, bytes."),
    BOOL("http.ws_echo", http.ws_echo, "false",
         "Serve /ws/echo, which sends every WebSocket message back as received "
         "(for testing proxies and load balancers)."),
    SIZE("http.ws_max_message_bytes", http.ws_max_message_bytes, 125, GIB, "1048576",
         "Largest WebSocket message (all fragments together), bytes."),
    BOOL("http.ws_deflate", http.ws_deflate, "true",
         "Offer permessage-deflate compression to WebSocket clients."),
    CHOICE("http.access_log", http.access_log, "off|common|json", "off",
           "One log line per HTTP reply: off; common = NCSA combined format (client, time, "
           "request, status, bytes, referer, user agent) plus the duration; json = the same "
           "fields as one JSON object."),
    BOOL("http.metrics_auth", http.metrics_auth, "false",
         "GET /metrics needs the API key; false = readable without it (Prometheus scrapers)."),
    INT("http.device_idle_s", http.device_idle_s, 1, 86400, "60",
        "A device that talks HTTP with its own credentials is online (protocol http) until "
        "this many seconds after its last request."),
    INT("http.command_wait_max_s", http.command_wait_max_s, 0, 3600, "60",
        "Longest wait of a command long poll (GET /api/devices/{id}/commands?wait=S), "
        "seconds; larger waits are cut to it (and to limits.idle_timeout_ms)."),
    INT("http.command_polls_max", http.command_polls_max, 0, 1000000, "10000",
        "Command long polls waiting at once (one per device); past it a poll answers 503."),
    BOOL("line.enabled", line.enabled, "true", "Run the raw TCP line-protocol listener."),
    STR("line.bind", line.bind, 1, "0.0.0.0", "Address the line-protocol listener binds."),
    INT("line.port", line.port, 0, 65535, "7000",
        "Line-protocol TCP port; 0 picks a free port."),
    CHOICE("line.proxy_protocol", line.proxy_protocol, "off|v1|v2|any", "off",
           "PROXY protocol on line.port and line.tls_port, as http.proxy_protocol."),
    INT("line.tls_port", line.tls_port, -1, 65535, "7443",
        "Line protocol over TLS port; on only with tls.cert_file; 0 = off, -1 picks a free "
        "port."),
    SIZE("line.max_line_bytes", line.max_line_bytes, 64, GIB, "65536",
         "Longest line (one JSON message), bytes."),
    INT("line.max_errors", line.max_errors, 0, 1000000, "10",
        "Bad lines after which a line-protocol connection is closed."),
    BOOL("mqtt.enabled", mqtt.enabled, "true", "Run the MQTT listener."),
    STR("mqtt.bind", mqtt.bind, 1, "0.0.0.0", "Address the MQTT listener binds."),
    INT("mqtt.port", mqtt.port, 0, 65535, "1883", "MQTT TCP port; 0 picks a free port."),
    CHOICE("mqtt.proxy_protocol", mqtt.proxy_protocol, "off|v1|v2|any", "off",
           "PROXY protocol on mqtt.port and mqtt.tls_port, as http.proxy_protocol."),
    INT("mqtt.tls_port", mqtt.tls_port, -1, 65535, "8883",
        "MQTT over TLS port (ALPN \"mqtt\"); on only with tls.cert_file; 0 = off, -1 picks a "
        "free port."),
    SIZE("mqtt.max_packet_bytes", mqtt.max_packet_bytes, 64, 268435460, "1048576",
         "Largest MQTT packet (fixed header included), bytes."),
    BOOL("mqtt.allow_anonymous", mqtt.allow_anonymous, "false",
         "Accept MQTT clients without device credentials."),
    INT("mqtt.max_keepalive", mqtt.max_keepalive, 0, 65535, "65535",
        "Largest keep-alive a client may ask for, seconds."),
    SIZE("mqtt.max_inflight", mqtt.max_inflight, 1, 65535, "20",
         "Unacknowledged QoS 1/2 messages in flight per client."),
    SIZE("mqtt.max_queued", mqtt.max_queued, 0, 10000000, "1000",
         "Messages queued per session; past it the oldest QoS 0 is dropped, and a connected "
         "client whose QoS 1/2 overflow is disconnected."),
    SIZE("mqtt.max_subscriptions", mqtt.max_subscriptions, 1, 10000000, "10000",
         "Subscriptions one session may hold; more are refused in SUBACK (0x80)."),
    SIZE("mqtt.max_queued_bytes", mqtt.max_queued_bytes, 0, 64 * GIB, "8388608",
         "Bytes (topics and payloads) of the messages queued per session; past it as past "
         "mqtt.max_queued; 0 = no limit."),
    SIZE("mqtt.max_subscription_bytes", mqtt.max_subscription_bytes, 0, GIB, "1048576",
         "Bytes of the topic filters one session holds together; a filter past it is refused "
         "in SUBACK (0x80); 0 = no limit."),
    SIZE("mqtt.max_subscription_levels", mqtt.max_subscription_levels, 0, GIB, "50000",
         "Topic levels of the filters one session holds together (a/b/# is 3); a filter past "
         "it is refused in SUBACK (0x80); 0 = no limit."),
    SIZE("mqtt.receive_maximum", mqtt.receive_maximum, 1, 65535, "1024",
         "MQTT 5: QoS 1/2 publishes a client may have unacknowledged at once (Receive "
         "Maximum in CONNACK); one more gets DISCONNECT 0x93."),
    SIZE("mqtt.topic_alias_maximum", mqtt.topic_alias_maximum, 0, 65535, "32",
         "MQTT 5: topic aliases per connection, both ways (Topic Alias Maximum in CONNACK, "
         "and the most Gale assigns to a client that allows them); 0 = none."),
    SIZE("mqtt.max_qos2_pending", mqtt.max_qos2_pending, 1, 65535, "1000",
         "QoS 2 packet ids one session has received and not yet seen PUBREL for; a client "
         "that opens one more is disconnected."),
    SIZE("mqtt.max_connections_per_identity", mqtt.max_connections_per_identity, 0, 10000000,
         "32",
         "MQTT connections one device or application (its username) holds at once; one more "
         "gets CONNACK 0x03 (server unavailable). An anonymous client is one identity per "
         "client id (a second connection takes the first one over); 0 = no limit."),
    SIZE("mqtt.max_anonymous_sessions", mqtt.max_anonymous_sessions, 0, 100000000, "1000",
         "Persistent sessions of anonymous clients, all together; a new one past it replaces "
         "the longest-unused offline one (CONNACK 0x05 when all of them are connected); "
         "0 = no limit."),
    SIZE("mqtt.max_retained", mqtt.max_retained, 1, 100000000, "100000",
         "Retained topics kept; a new one past this is delivered but not retained."),
    CHOICE("mqtt.invalid_telemetry", mqtt.invalid_telemetry, "disconnect|ack", "disconnect",
           "A publish on a telemetry topic whose payload does not decode (never stored): "
           "disconnect = no PUBACK/PUBREC, not routed, the connection is closed (an MQTT 5 "
           "client's QoS 1/2 publish gets PUBACK/PUBREC 0x99 instead and it stays connected); "
           "ack = acknowledged and routed as a plain message. Counted and logged either way."),
    CHOICE("mqtt.shared_subscription_strategy", mqtt.shared_strategy, "round_robin|sticky",
           "round_robin",
           "Which member of a shared subscription ($share/<group>/<filter>) gets a message: "
           "round_robin = the next member that can take it; sticky = one publisher's "
           "messages (by its device, else by topic) go to the same member while it stays "
           "one."),
    INT("mqtt.session_expiry_s", mqtt.session_expiry_s, 0, 2000000000, "604800",
        "Seconds a persistent session may stay unused (offline) before it is deleted with "
        "its subscriptions and queued messages; 0 = never. MQTT 5 clients choose their own "
        "Session Expiry Interval, capped by this."),
    JSON("mqtt.acl", mqtt.acl_json, "[]",
         "Extra ACL rules (a JSON array); devices always own devices/<id>/#."),
    STR("tls.cert_file", tls.cert_file, 0, "",
        "Server certificate chain (PEM) for the TLS listeners; empty = no TLS listener. "
        "Reloaded on SIGHUP and when the file changes."),
    STR("tls.key_file", tls.key_file, 0, "",
        "Private key (PEM) of tls.cert_file; empty = the key is in tls.cert_file."),
    STR("tls.ca_file", tls.ca_file, 0, "",
        "CA certificates (PEM) that client certificates must verify against (mutual TLS); "
        "needed unless tls.client_auth is off."),
    CHOICE("tls.client_auth", tls.client_auth, "off|optional|required", "off",
           "Client certificates: off = not asked for; optional = asked for, and one that is "
           "sent must verify; required = a client without one fails the handshake. A verified "
           "certificate whose CN or a DNS SAN is a provisioned device id authenticates that "
           "device without a token."),
    CHOICE("devices.auto_register", devices.auto_register, "auto|true|false", "auto",
         "Register an unknown device on its first telemetry (MQTT); auto = only when "
         "mqtt.allow_anonymous is on."),
    STR("storage.path", storage.path, 0, "",
        "SQLite database file; empty = <data_dir>/gale.db."),
    CHOICE("storage.sync", storage.sync, "full|normal", "full",
         "What an ack survives: full = a power cut (every commit is synced to disk), "
         "normal = a crash of the gateway process, not of the machine (faster)."),
    BOOL("storage.ack_log", storage.ack_log, "true",
         "With storage.sync=normal: a write is acked once it is appended to the ack log "
         "(<storage.path>-ack.<n>, one write() per loop iteration that has acks waiting), "
         "and the writer thread commits it to SQLite behind the ack; a crash of the process "
         "loses nothing acked (the next start commits the log). false = every ack waits for "
         "its SQLite commit. No effect with storage.sync=full."),
    SIZE("storage.batch_rows", storage.batch_rows, 1, 1000000, "10000",
         "Most points per write transaction (group commit): arrivals while the writer is "
         "busy ride in the next one, up to this size (one segment row; each commit costs "
         "a sync, so bigger batches carry more points per sync)."),
    INT("storage.batch_delay_ms", storage.batch_delay_ms, 0, 60000, "5",
        "Longest a write nobody waits for (QoS 0 telemetry, presence) waits for company in "
        "the open batch, milliseconds; a write an ack waits on is committed as soon as the "
        "writer is free, with no delay."),
    SIZE("storage.queue_high_bytes", storage.queue_high_bytes, 4096, 64 * GIB, "67108864",
         "Bytes of everything queued for the storage writer (telemetry, sessions, retained "
         "messages, commands, device records) above which ingest sockets stop reading."),
    SIZE("storage.queue_low_bytes", storage.queue_low_bytes, 0, 64 * GIB, "33554432",
         "Queued bytes below which ingest sockets read again (with the rows below their "
         "low mark too)."),
    SIZE("storage.queue_high_rows", storage.queue_high_rows, 1, 1000000000, "200000",
         "Queued telemetry rows at which ingest sockets stop reading (a second bound "
         "beside the bytes)."),
    SIZE("storage.queue_low_rows", storage.queue_low_rows, 0, 1000000000, "50000",
         "Queued telemetry rows below which ingest sockets read again (with the bytes "
         "below their low mark too)."),
    SIZE("storage.hot_max_points", storage.hot_max_points, 1000, 1000000000, "1000000",
         "Points acknowledged but not yet in compressed chunks that the writer holds in "
         "memory (about 24 bytes each); past it the oldest series are chunked first. It "
         "also bounds the log replayed on start (at most twice as many points)."),
    INT("storage.retention_days", storage.retention_days, 0, 36500, "0",
        "Days of telemetry kept; 0 keeps everything."),
    SIZE("storage.wal_max_bytes", storage.wal_max_bytes, 1 * MIB, 64 * GIB, "67108864",
         "Bound on the write-ahead log file (gale.db-wal), bytes. Checkpoints copy the log "
         "into gale.db in the background; when the log reaches half of this, the writer "
         "completes a checkpoint itself (waiting up to 250 ms for readers) before its next "
         "commit. A reader that keeps an old snapshot can hold the log past it (logged)."),
    STR("storage.backup_dir", storage.backup_dir, 0, "",
        "Directory online backups (POST /api/backup, gale --backup) are written to, and "
        "the only one; empty = <data_dir>/backups."),
    INT("limits.max_connections", limits.max_connections, 0, 10000000, "0",
        "Open connections (all listeners) before new ones are refused; 0 = what the "
        "open-file limit allows: RLIMIT_NOFILE (raised to its hard limit at start) minus "
        "128 kept for the database files, listeners and the process's own."),
    INT("limits.auth_timeout_ms", limits.auth_timeout_ms, 1, 3600000, "10000",
        "Time a new connection has to authenticate, milliseconds."),
    INT("limits.idle_timeout_ms", limits.idle_timeout_ms, 1, 86400000, "300000",
        "Silence after which a connection is closed, milliseconds."),
    LIST("limits.proxy_trusted", limits.proxy_trusted_json, "[]",
         "Peers (IPv4 or IPv6 addresses or CIDRs, e.g. 10.0.0.0/8, ::1/128) allowed to connect "
         "to a listener with the PROXY protocol on, and whose header is believed; any other "
         "peer is refused there. A JSON array, or comma-separated in the environment and "
         "--set."),
    INT("limits.proxy_header_timeout_ms", limits.proxy_header_timeout_ms, 1, 3600000, "5000",
        "Time a connection to a PROXY protocol listener has to send its whole header, "
        "milliseconds."),
    SIZE("limits.max_points_per_message", limits.max_points_per_message, 1, 1000000, "1000",
         "Telemetry key/value points accepted in one message."),
    SIZE("limits.max_send_queue_bytes", limits.max_send_queue_bytes, 1024, GIB, "4194304",
         "Bytes queued for one slow client before it loses data or is closed."),
    /* pre-authentication budgets and per-identity limits (README "Security") */
    SIZE("limits.preauth_max_bytes", limits.preauth_max_bytes, 64, GIB, "65536",
         "Largest first packet before authentication, bytes: an MQTT CONNECT (refused as "
         "soon as its fixed header says so), the first line, the first WebSocket message, "
         "an unauthenticated HTTP request body (413 unread)."),
    SIZE("limits.preauth_total_bytes", limits.preauth_total_bytes, 4096, 64 * GIB, "33554432",
         "Bytes all connections not yet authenticated may make the gateway hold together "
         "(unconsumed input, HTTP request heads and bodies being read, WebSocket messages "
         "being reassembled); a connection whose bytes would pass it is closed, and new "
         "connections are refused while it is full."),
    INT("limits.max_connections_per_ip", limits.max_connections_per_ip, 0, 10000000, "1000",
        "Connections from one peer address not yet authenticated, before more from it are "
        "refused; authenticated ones do not count (a fleet behind one NAT address is not "
        "capped); 0 = no limit."),
    INT("limits.max_connections_per_device", limits.max_connections_per_device, 0, 10000000,
        "32",
        "Live connections of one device over the line protocol and /ws/device, counting its "
        "MQTT ones too, before another line or /ws/device login is refused (MQTT has "
        "mqtt.max_connections_per_identity); 0 = no limit."),
    SIZE("limits.max_sessions_per_device", limits.max_sessions_per_device, 1, 1000000, "8",
         "Persistent MQTT sessions one device may hold; a new one past it replaces the "
         "device's longest-unused offline session (refused when all of them are connected)."),
    SIZE("limits.max_retained_per_device", limits.max_retained_per_device, 0, 100000000, "1000",
         "Retained topics under devices/<id>/ (its status topic included); a retained "
         "PUBLISH past it is acknowledged, logged and dropped; 0 = no limit."),
    SIZE("limits.max_retained_bytes_per_device", limits.max_retained_bytes_per_device, 0,
         64 * GIB, "1048576",
         "Bytes (topics and payloads) of the retained messages under devices/<id>/; a "
         "retained PUBLISH past it is acknowledged, logged and dropped; 0 = no limit."),
    SIZE("limits.max_attribute_bytes", limits.max_attribute_bytes, 2, GIB, "65536",
         "Largest attribute object of one device (JSON text), bytes: a PATCH or create past "
         "it gets 413, an attribute publish past it is logged and not merged."),
    INT("limits.device_rate_msgs_per_s", limits.device_rate_msgs_per_s, 0, 100000000, "0",
        "Messages per second one device may send, all its connections together (a token "
        "bucket); 0 = no limit."),
    INT("limits.device_rate_burst", limits.device_rate_burst, 1, 100000000, "100",
        "Messages a device may send at once above its rate (the bucket's size)."),
    CHOICE("limits.device_rate_action", limits.device_rate_action, "drop|disconnect", "drop",
           "What a message over the device rate gets: drop = not taken (MQTT: acknowledged "
           "and dropped; line and WebSocket: an error with code rate_limited; HTTP: 429), "
           "disconnect = the connection is closed. Counted in gale_rate_limited_total."),
    JSON("auth.fleet_keys", auth.fleet_keys_json, "[]",
         "Fleet keys (a JSON array of {\"id\":..,\"secret\":..} or {\"id\":..,"
         "\"secret_file\":..}): every instance with the same key accepts the fleet tokens "
         "it signs (gale --issue-token, POST /api/fleet/tokens; docs/deployment.md). The "
         "first key signs new tokens, all of them verify; [] = no fleet tokens."),
    JSON("bridge.upstreams", bridge.upstreams_json, "[]",
         "Upstream MQTT brokers the bridge forwards to (a JSON array of objects: name, "
         "addresses, protocol 3.1.1 or 5, forward, remote_prefix, subscribe, outbox limits, "
         "...; docs/bridge.md); [] = no bridge."),
};

#define NKEYS (sizeof keys / sizeof keys[0])

/* ---- errors ---- */

/* Formats the error into err (if any) and returns -1. */
static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Writes s[0..n) into out (QUOTED_MAX bytes) double-quoted, with control bytes,
 * quotes and backslashes escaped and at most GOT_MAX bytes of s shown. */
static const char *quote(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0, i;

    assert(outlen >= QUOTED_MAX);
    out[o++] = '"';
    for (i = 0; i < n && i < GOT_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (i < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* Appends one error (line, already formatted) and from (a source such as " (in g.json)",
 * or "") to err as a line of its own: a source reports all its errors at once. Returns -1. */
static int add_error(char *err, size_t errlen, const char *line, const char *from)
{
    size_t used;

    if (!err || errlen == 0)
        return -1;
    used = strnlen(err, errlen);
    if (used > 0 && used + 1 < errlen)
        err[used++] = '\n';
    if (used < errlen)
        snprintf(err + used, errlen - used, "%s%s", line, from);
    return -1;
}

/* ---- the table ---- */

static const struct key *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strlen(keys[i].name) == len && memcmp(keys[i].name, name, len) == 0)
            return &keys[i];
    return NULL;
}

/* Length of the section part of a key name ("http" in "http.port"). */
static size_t section_len(const struct key *k)
{
    return (size_t)(strchr(k->name, '.') - k->name);
}

static int is_section(const char *s, size_t len)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (section_len(&keys[i]) == len && memcmp(keys[i].name, s, len) == 0)
            return 1;
    return 0;
}

/* Edit distance of a and b, case-insensitive, an adjacent swap counting as one edit
 * (optimal string alignment); names longer than 63 bytes count as far from everything. */
static size_t edit_distance(const char *a, size_t al, const char *b, size_t bl)
{
    size_t rows[3][64], *pp = rows[0], *p = rows[1], *cur = rows[2], *t;

    if (al >= 64 || bl >= 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= bl; j++)
        p[j] = j;
    for (size_t i = 1; i <= al; i++) {
        int ca = tolower((unsigned char)a[i - 1]);
        cur[0] = i;
        for (size_t j = 1; j <= bl; j++) {
            int cb = tolower((unsigned char)b[j - 1]);
            size_t d = p[j] + 1;
            if (cur[j - 1] + 1 < d)
                d = cur[j - 1] + 1;
            if (p[j - 1] + (ca != cb) < d)
                d = p[j - 1] + (ca != cb);
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && pp[j - 2] + 1 < d)
                d = pp[j - 2] + 1; /* a swap: "prot" for "port" */
            cur[j] = d;
        }
        t = pp;
        pp = p;
        p = cur;
        cur = t;
    }
    return p[bl];
}

/* A known key an unknown name[0..len) was probably meant to be, or NULL: the same key
 * in another section ("http.max_connections" -> limits.max_connections), else the
 * nearest name within a small edit distance ("http.prot" -> http.port). */
static const char *suggest_key(const char *name, size_t len)
{
    const char *dot = memchr(name, '.', len), *best = NULL;
    size_t best_d = SIZE_MAX, limit = len < 8 ? 1 : len < 16 ? 2 : 3;

    if (dot) {
        size_t leaf = len - (size_t)(dot + 1 - name);
        for (size_t i = 0; i < NKEYS; i++) {
            const char *kl = keys[i].name + section_len(&keys[i]) + 1;
            if (leaf > 0 && strlen(kl) == leaf && strncasecmp(kl, dot + 1, leaf) == 0)
                return keys[i].name;
        }
    }
    for (size_t i = 0; i < NKEYS; i++) {
        size_t d = edit_distance(name, len, keys[i].name, strlen(keys[i].name));
        if (d < best_d) {
            best_d = d;
            best = keys[i].name;
        }
    }
    return best_d <= limit ? best : NULL;
}

/* The same for a section name ("htpp" -> http), or NULL. */
static const char *suggest_section(const char *name, size_t len, char *out, size_t outlen)
{
    size_t best_d = SIZE_MAX;

    for (size_t i = 0; i < NKEYS; i++) {
        size_t sl = section_len(&keys[i]);
        size_t d = edit_distance(name, len, keys[i].name, sl);
        if (d < best_d) {
            best_d = d;
            snprintf(out, outlen, "%.*s", (int)sl, keys[i].name);
        }
    }
    return best_d <= (len < 6 ? 1 : 2) ? out : NULL;
}

/* " (did you mean X?)" for an unknown key, or "". */
static const char *did_you_mean(const char *name, size_t len, char *out, size_t outlen)
{
    const char *k = suggest_key(name, len);
    if (!k)
        return "";
    snprintf(out, outlen, " (did you mean %s?)", k);
    return out;
}

/* GALE_ + upper(section) + _ + upper(key). */
static void env_name(const struct key *k, char *out, size_t outlen)
{
    size_t o = (size_t)snprintf(out, outlen, "GALE_");
    for (const char *p = k->name; *p && o + 1 < outlen; p++)
        out[o++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    out[o] = '\0';
}

static void *field(struct config *cfg, const struct key *k)
{
    return (char *)cfg + k->offset;
}

static const void *cfield(const struct config *cfg, const struct key *k)
{
    return (const char *)cfg + k->offset;
}

/* Position of s[0..len) among the '|'-separated words of choices, or -1. */
static int choice_index(const char *choices, const char *s, size_t len)
{
    const char *p = choices;

    for (int i = 0;; i++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && memcmp(p, s, len) == 0)
            return i;
        if (!bar)
            return -1;
        p = bar + 1;
    }
}

/* The word at position i of choices into out; "" when there is none. */
static const char *choice_word(const char *choices, int i, char *out, size_t outlen)
{
    const char *p = choices;

    for (; i > 0 && p; i--) {
        p = strchr(p, '|');
        p = p ? p + 1 : NULL;
    }
    if (!p || i < 0) {
        snprintf(out, outlen, "%s", "");
        return out;
    }
    snprintf(out, outlen, "%.*s", (int)strcspn(p, "|"), p);
    return out;
}

static const char *type_name(enum key_type t)
{
    switch (t) {
    case KEY_INT: return "int";
    case KEY_SIZE: return "size";
    case KEY_BOOL: return "bool";
    case KEY_STR: return "string";
    case KEY_ENUM:
    case KEY_CHOICE: return "enum";
    case KEY_JSON: return "json array";
    case KEY_LIST: return "list";
    }
    return "?";
}

/* ---- storing a value once it is decoded ---- */

static int store_int(struct config *cfg, const struct key *k, long long v, const char *got,
                     char *err, size_t errlen)
{
    if (v < k->min || v > k->max) {
        if (k->type == KEY_INT)
            return fail(err, errlen, "config: %s: must be an integer in %lld..%lld (got %s)",
                        k->name, k->min, k->max, got);
        return fail(err, errlen, "config: %s: must be a size in %lld..%lld (got %s)", k->name,
                    k->min, k->max, got);
    }
    if (k->type == KEY_INT)
        *(int *)field(cfg, k) = (int)v;
    else
        *(size_t *)field(cfg, k) = (size_t)v;
    return 0;
}

static int store_str(struct config *cfg, const struct key *k, const char *s, size_t len,
                     char *err, size_t errlen)
{
    char q[QUOTED_MAX];

    if (memchr(s, '\0', len))
        return fail(err, errlen, "config: %s: must not contain a NUL byte", k->name);
    if (k->type == KEY_ENUM || k->type == KEY_CHOICE) {
        if (choice_index(k->choices, s, len) < 0)
            return fail(err, errlen, "config: %s: must be one of %s (got %s)", k->name,
                        k->choices, quote(s, len, q, sizeof q));
    } else if (len + 1 > k->size) {
        return fail(err, errlen, "config: %s: must be at most %zu bytes long (got %zu bytes)",
                    k->name, k->size - 1, len);
    } else if ((long long)len < k->min) {
        return fail(err, errlen, "config: %s: must not be empty", k->name);
    }
    if (k->type == KEY_CHOICE) {
        *(int *)field(cfg, k) = choice_index(k->choices, s, len);
        return 0;
    }
    memcpy(field(cfg, k), s, len);
    ((char *)field(cfg, k))[len] = '\0';
    return 0;
}

/* Stores a parsed JSON value for KEY_JSON keys: an array, kept as compact text. */
static int store_json(struct config *cfg, const struct key *k, const cJSON *v, char *err,
                      size_t errlen)
{
    char *text;
    int rc;

    if (!cJSON_IsArray(v))
        return fail(err, errlen, "config: %s: must be a JSON array", k->name);
    if (k->type == KEY_LIST) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsString(e))
                return fail(err, errlen, "config: %s: must be a list of strings", k->name);
        }
    }
    text = cJSON_PrintUnformatted(v);
    if (!text)
        return fail(err, errlen, "config: %s: cannot encode value", k->name);
    if (strlen(text) + 1 > k->size)
        rc = fail(err, errlen, "config: %s: must be at most %zu bytes as compact JSON (got %zu)",
                  k->name, k->size - 1, strlen(text));
    else
        rc = store_str(cfg, k, text, strlen(text), err, errlen);
    cJSON_free(text);
    return rc;
}

/* ---- decoding text values (environment, --set, defaults) ---- */

static int parse_bool_text(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "1", "yes", "on" };
    static const char *const no[] = { "false", "0", "no", "off" };

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Decimal integer, optional sign; when suffix is set, an optional k|m|g (x1024^n).
 * Values beyond +-2^62 are refused, which every key's bounds are far inside. */
static int parse_int_text(const char *s, int suffix, long long *out)
{
    const long long lim = 1LL << 62;
    long long v = 0;
    int neg = 0, digits = 0;

    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        if (v > (lim - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    if (!digits)
        return -1;
    if (suffix && *s) {
        int shift = 0;
        switch (*s) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -1;
        }
        if (v > (lim >> shift))
            return -1;
        v <<= shift;
        s++;
    }
    if (*s)
        return -1;
    *out = neg ? -v : v;
    return 0;
}

static int set_text(struct config *cfg, const struct key *k, const char *s, char *err,
                    size_t errlen)
{
    char q[QUOTED_MAX];
    long long v;
    bool b;
    cJSON *j;
    int rc;

    switch (k->type) {
    case KEY_INT:
    case KEY_SIZE:
        quote(s, strlen(s), q, sizeof q);
        if (parse_int_text(s, k->type == KEY_SIZE, &v) != 0) {
            if (k->type == KEY_INT)
                return fail(err, errlen, "config: %s: must be an integer in %lld..%lld (got %s)",
                            k->name, k->min, k->max, q);
            return fail(err, errlen,
                        "config: %s: must be a size in %lld..%lld, optionally with k, m or g "
                        "(got %s)",
                        k->name, k->min, k->max, q);
        }
        return store_int(cfg, k, v, q, err, errlen);
    case KEY_BOOL:
        if (parse_bool_text(s, &b) != 0)
            return fail(err, errlen,
                        "config: %s: must be true, false, 1, 0, yes, no, on or off (got %s)",
                        k->name, quote(s, strlen(s), q, sizeof q));
        *(bool *)field(cfg, k) = b;
        return 0;
    case KEY_STR:
    case KEY_ENUM:
    case KEY_CHOICE:
        return store_str(cfg, k, s, strlen(s), err, errlen);
    case KEY_LIST:
        if (s[strspn(s, " ")] != '[') { /* "a, b, c": comma-separated, spaces trimmed */
            j = cJSON_CreateArray();
            for (const char *p = s; *p;) {
                size_t n = strcspn(p, ",");
                const char *b = p, *e = p + n;
                while (b < e && *b == ' ')
                    b++;
                while (e > b && e[-1] == ' ')
                    e--;
                if (e > b) {
                    char *item = xmalloc((size_t)(e - b) + 1);
                    memcpy(item, b, (size_t)(e - b));
                    item[e - b] = '\0';
                    cJSON_AddItemToArray(j, cJSON_CreateString(item));
                    free(item);
                }
                p += n + (p[n] == ',');
            }
            rc = store_json(cfg, k, j, err, errlen);
            cJSON_Delete(j);
            return rc;
        }
        __attribute__((fallthrough)); /* a JSON array */
    case KEY_JSON:
        j = cJSON_ParseWithOpts(s, NULL, 1); /* nothing may follow the value */
        if (!j)
            return fail(err, errlen, "config: %s: must be a JSON array (got invalid JSON %s)",
                        k->name, quote(s, strlen(s), q, sizeof q));
        rc = store_json(cfg, k, j, err, errlen);
        cJSON_Delete(j);
        return rc;
    }
    return fail(err, errlen, "config: %s: bad key type", k->name);
}

/* ---- decoding JSON values (config file) ---- */

static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsTrue(v)) return "true";
    if (cJSON_IsFalse(v)) return "false";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

static int set_json(struct config *cfg, const struct key *k, const cJSON *v, char *err,
                    size_t errlen)
{
    char got[64];
    double d;

    switch (k->type) {
    case KEY_INT:
    case KEY_SIZE:
        if (!cJSON_IsNumber(v)) {
            snprintf(got, sizeof got, "%s", json_kind(v));
        } else {
            d = v->valuedouble;
            snprintf(got, sizeof got, "%.15g", d);
            /* range first, so the cast that tests for a fraction is defined */
            if (isfinite(d) && d >= (double)k->min && d <= (double)k->max &&
                d == (double)(long long)d)
                return store_int(cfg, k, (long long)d, got, err, errlen);
        }
        if (k->type == KEY_INT)
            return fail(err, errlen, "config: %s: must be an integer in %lld..%lld (got %s)",
                        k->name, k->min, k->max, got);
        return fail(err, errlen, "config: %s: must be a size in %lld..%lld (got %s)", k->name,
                    k->min, k->max, got);
    case KEY_BOOL:
        if (!cJSON_IsBool(v))
            return fail(err, errlen, "config: %s: must be true or false (got %s)", k->name,
                        json_kind(v));
        *(bool *)field(cfg, k) = cJSON_IsTrue(v);
        return 0;
    case KEY_STR:
    case KEY_ENUM:
    case KEY_CHOICE:
        if (!cJSON_IsString(v))
            return fail(err, errlen, "config: %s: must be a string (got %s)", k->name,
                        json_kind(v));
        return store_str(cfg, k, v->valuestring, strlen(v->valuestring), err, errlen);
    case KEY_JSON:
    case KEY_LIST:
        if (!cJSON_IsArray(v))
            return fail(err, errlen, "config: %s: must be a JSON array (got %s)", k->name,
                        json_kind(v));
        return store_json(cfg, k, v, err, errlen);
    }
    return fail(err, errlen, "config: %s: bad key type", k->name);
}

/* ---- public API ---- */

void config_defaults(struct config *cfg)
{
    char err[256];

    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        int rc;
        assert(strchr(k->name, '.') != NULL);
        assert(k->type != KEY_INT || k->size == sizeof(int));
        assert(k->type != KEY_SIZE || k->size == sizeof(size_t));
        assert(k->type != KEY_BOOL || k->size == sizeof(bool));
        assert(k->type != KEY_CHOICE || k->size == sizeof(int));
        rc = set_text(cfg, k, k->def, err, sizeof err);
        assert(rc == 0); /* a default that fails its own key is a bug in the table */
        (void)rc;
    }
}

/* Applies a parsed document; cfg is a scratch copy. */
static int apply_doc(struct config *cfg, const cJSON *doc, const char *src, char *err,
                     size_t errlen)
{
    char q[QUOTED_MAX], from[CONFIG_STR_MAX + 8] = "";
    const cJSON *sec, *item;
    int rc = 0;

    if (!cJSON_IsObject(doc))
        return fail(err, errlen, "config: %s%stop level must be a JSON object", src ? src : "",
                    src ? ": " : "");
    if (err && errlen)
        err[0] = '\0';
    if (src)
        snprintf(from, sizeof from, " (in %s)", src);
    cJSON_ArrayForEach(sec, doc) {
        size_t slen = strlen(sec->string);
        char one[1024], hint[96], word[64];
        if (!is_section(sec->string, slen)) {
            const char *s = suggest_section(sec->string, slen, word, sizeof word);
            if (s)
                snprintf(hint, sizeof hint, " (did you mean %s?)", s);
            fail(one, sizeof one, "config: unknown section %s%s",
                 quote(sec->string, slen, q, sizeof q), s ? hint : "");
            rc = add_error(err, errlen, one, from);
            continue;
        }
        if (!cJSON_IsObject(sec)) {
            fail(one, sizeof one, "config: %s: must be an object", sec->string);
            rc = add_error(err, errlen, one, from);
            continue;
        }
        cJSON_ArrayForEach(item, sec) {
            char name[256];
            const struct key *k;
            int n = snprintf(name, sizeof name, "%s.%s", sec->string, item->string);
            k = n > 0 && (size_t)n < sizeof name ? find_key(name, (size_t)n) : NULL;
            if (!k) {
                size_t nl = strnlen(name, sizeof name);
                fail(one, sizeof one, "config: unknown key %s%s", quote(name, nl, q, sizeof q),
                     did_you_mean(name, nl, hint, sizeof hint));
                rc = add_error(err, errlen, one, from);
            } else if (set_json(cfg, k, item, one, sizeof one) != 0) {
                rc = add_error(err, errlen, one, from);
            }
        }
    }
    return rc;
}

static int apply_json_from(struct config *cfg, const char *json, size_t len, const char *src,
                           char *err, size_t errlen)
{
    const char *end = NULL;
    cJSON *doc;
    struct config *tmp;
    int rc;

    doc = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (doc && end) {
        /* cJSON stops after the first value; anything but whitespace after it is an error */
        while (end < json + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        if (end < json + len) {
            cJSON_Delete(doc);
            doc = NULL;
        }
    }
    if (!doc) {
        int line = 1;
        if (!end || end < json || end > json + len)
            end = json + len;
        for (const char *p = json; p < end; p++)
            line += *p == '\n';
        return fail(err, errlen, "config: %s%sinvalid JSON near line %d", src ? src : "",
                    src ? ": " : "", line);
    }
    tmp = xmalloc(sizeof *tmp);
    *tmp = *cfg;
    rc = apply_doc(tmp, doc, src, err, errlen);
    if (rc == 0)
        *cfg = *tmp;
    free(tmp);
    cJSON_Delete(doc);
    return rc;
}

int config_apply_json(struct config *cfg, const char *json, size_t len, char *err, size_t errlen)
{
    return apply_json_from(cfg, json, len, NULL, err, errlen);
}

int config_apply_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *data;
    size_t len = 0, n;
    int rc;

    if (!f)
        return fail(err, errlen, "config: %s: cannot read: %s", path, strerror(errno));
    data = xmalloc(CONFIG_FILE_MAX_BYTES + 1);
    while ((n = fread(data + len, 1, CONFIG_FILE_MAX_BYTES + 1 - len, f)) > 0)
        len += n;
    if (ferror(f)) {
        rc = fail(err, errlen, "config: %s: cannot read: %s", path, strerror(errno));
    } else if (len > CONFIG_FILE_MAX_BYTES) {
        rc = fail(err, errlen, "config: %s: larger than %d bytes", path, CONFIG_FILE_MAX_BYTES);
    } else {
        rc = apply_json_from(cfg, data, len, path, err, errlen);
    }
    free(data);
    fclose(f);
    return rc;
}

int config_apply_set(struct config *cfg, const char *assignment, char *err, size_t errlen)
{
    char q[QUOTED_MAX];
    const char *eq = strchr(assignment, '=');
    const struct key *k;

    if (!eq || !memchr(assignment, '.', (size_t)(eq - assignment)))
        return fail(err, errlen, "config: --set %s: expected section.key=value",
                    quote(assignment, strlen(assignment), q, sizeof q));
    k = find_key(assignment, (size_t)(eq - assignment));
    if (!k) {
        char hint[96];
        return fail(err, errlen, "config: unknown key %s%s",
                    quote(assignment, (size_t)(eq - assignment), q, sizeof q),
                    did_you_mean(assignment, (size_t)(eq - assignment), hint, sizeof hint));
    }
    /* set_text stores only after the value passed every check, so cfg stays whole */
    return set_text(cfg, k, eq + 1, err, errlen);
}

/* 1 when s[0..len) names a known section, in any case ("HTTP"). */
static int is_env_section(const char *s, size_t len)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (section_len(&keys[i]) == len && strncasecmp(keys[i].name, s, len) == 0)
            return 1;
    return 0;
}

/* Applies one "NAME=value" entry to cfg; 0 also when it is not ours. The part
 * after GALE_ matches in any case (GALE_HTTP_PORT, GALE_http_port). */
static int apply_env_var(struct config *cfg, const char *var, char *err, size_t errlen)
{
    char q[QUOTED_MAX], q2[QUOTED_MAX], name[128], key[256], hint[96], one[1024];
    const char *eq = strchr(var, '='), *sec = var + 5, *us;
    size_t nlen, kl = 0;

    if (!eq || strncmp(var, "GALE_", 5) != 0)
        return 0;
    nlen = (size_t)(eq - var);
    us = memchr(sec, '_', (size_t)(eq - sec));
    /* GALE_BIN, GALE_CONFIG, ...: not SECTION_KEY of a known section, so not ours */
    if (!us || !is_env_section(sec, (size_t)(us - sec)))
        return 0;
    for (size_t i = 0; i < NKEYS; i++) {
        env_name(&keys[i], name, sizeof name);
        if (strlen(name) == nlen && strncasecmp(name, var, nlen) == 0) {
            if (set_text(cfg, &keys[i], eq + 1, one, sizeof one) == 0)
                return 0;
            return fail(err, errlen, "%s (from environment variable %s)", one,
                        quote(var, nlen, q2, sizeof q2));
        }
    }
    /* report it as the key it would name: GALE_HTTP_PROT -> http.prot */
    for (const char *p = sec; p < eq && kl + 1 < sizeof key; p++)
        key[kl++] = p == us ? '.' : (char)tolower((unsigned char)*p);
    return fail(err, errlen, "config: unknown key %s%s (from environment variable %s)",
                quote(key, kl, q, sizeof q), did_you_mean(key, kl, hint, sizeof hint),
                quote(var, nlen, q2, sizeof q2));
}

int config_apply_env(struct config *cfg, char *const *envp, char *err, size_t errlen)
{
    struct config *tmp;
    int rc = 0;

    if (!envp)
        return 0;
    tmp = xmalloc(sizeof *tmp);
    *tmp = *cfg;
    if (err && errlen)
        err[0] = '\0';
    for (size_t i = 0; envp[i]; i++) {
        char one[1200];
        if (apply_env_var(tmp, envp[i], one, sizeof one) != 0)
            rc = add_error(err, errlen, one, "");
    }
    if (rc == 0)
        *cfg = *tmp;
    free(tmp);
    return rc;
}

/* Checks one key's stored value against the table, as the setters would have. */
static int check_key(const struct config *cfg, const struct key *k, char *err, size_t errlen)
{
    struct config scratch;
    const char *s = cfield(cfg, k);
    char got[32];
    cJSON *j;
    int rc;

    switch (k->type) {
    case KEY_INT:
        snprintf(got, sizeof got, "%d", *(const int *)s);
        return store_int(&scratch, k, *(const int *)s, got, err, errlen);
    case KEY_SIZE:
        snprintf(got, sizeof got, "%zu", *(const size_t *)s);
        if (*(const size_t *)s > (size_t)k->max)
            return store_int(&scratch, k, k->max + 1, got, err, errlen);
        return store_int(&scratch, k, (long long)*(const size_t *)s, got, err, errlen);
    case KEY_BOOL:
        return 0;
    case KEY_CHOICE:
        if (!choice_word(k->choices, *(const int *)s, got, sizeof got)[0])
            return fail(err, errlen, "config: %s: must be one of %s (got %d)", k->name,
                        k->choices, *(const int *)s);
        return 0;
    case KEY_STR:
    case KEY_ENUM:
        if (!memchr(s, '\0', k->size))
            return fail(err, errlen, "config: %s: not NUL-terminated", k->name);
        return store_str(&scratch, k, s, strlen(s), err, errlen);
    case KEY_JSON:
    case KEY_LIST:
        if (!memchr(s, '\0', k->size))
            return fail(err, errlen, "config: %s: not NUL-terminated", k->name);
        j = cJSON_ParseWithOpts(s, NULL, 1);
        if (!j)
            return fail(err, errlen, "config: %s: must be a JSON array (got invalid JSON)",
                        k->name);
        rc = store_json(&scratch, k, j, err, errlen);
        cJSON_Delete(j);
        return rc;
    }
    return 0;
}

static int same_address(const char *a, const char *b)
{
    return strcmp(a, b) == 0 || strcmp(a, "0.0.0.0") == 0 || strcmp(b, "0.0.0.0") == 0 ||
           strcmp(a, "::") == 0 || strcmp(b, "::") == 0;
}

int config_validate(const struct config *cfg, char *err, size_t errlen)
{
    const bool tls = cfg->tls.cert_file[0] != '\0';
    const struct {
        const char *name;
        bool on;
        const char *bind;
        int port;
    } ports[] = {
        { "http.port", true, cfg->http.bind, cfg->http.port },
        { "line.port", cfg->line.enabled, cfg->line.bind, cfg->line.port },
        { "mqtt.port", cfg->mqtt.enabled, cfg->mqtt.bind, cfg->mqtt.port },
        { "http.tls_port", tls, cfg->http.bind, cfg->http.tls_port },
        { "line.tls_port", tls && cfg->line.enabled, cfg->line.bind, cfg->line.tls_port },
        { "mqtt.tls_port", tls && cfg->mqtt.enabled, cfg->mqtt.bind, cfg->mqtt.tls_port },
    };
    const size_t nports = sizeof ports / sizeof ports[0];
    char one[1024];
    int rc = 0;

    if (err && errlen)
        err[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++)
        if (check_key(cfg, &keys[i], one, sizeof one) != 0)
            rc = add_error(err, errlen, one, "");
    if (cfg->storage.queue_low_rows >= cfg->storage.queue_high_rows) {
        fail(one, sizeof one,
             "config: storage.queue_low_rows (%zu) must be less than storage.queue_high_rows "
             "(%zu)",
             cfg->storage.queue_low_rows, cfg->storage.queue_high_rows);
        rc = add_error(err, errlen, one, "");
    }
    if (cfg->storage.queue_low_bytes >= cfg->storage.queue_high_bytes) {
        fail(one, sizeof one,
             "config: storage.queue_low_bytes (%zu) must be less than "
             "storage.queue_high_bytes (%zu)",
             cfg->storage.queue_low_bytes, cfg->storage.queue_high_bytes);
        rc = add_error(err, errlen, one, "");
    }
    if (cfg->storage.batch_rows > cfg->storage.queue_high_rows) {
        fail(one, sizeof one,
             "config: storage.batch_rows (%zu) must not exceed storage.queue_high_rows (%zu)",
             cfg->storage.batch_rows, cfg->storage.queue_high_rows);
        rc = add_error(err, errlen, one, "");
    }
    if (!tls && cfg->tls.key_file[0])
        rc = add_error(err, errlen, "config: tls.key_file is set but tls.cert_file is not", "");
    if (tls && cfg->tls.client_auth != CONFIG_CLIENT_AUTH_OFF && !cfg->tls.ca_file[0])
        rc = add_error(err, errlen,
                       "config: tls.client_auth needs tls.ca_file (the CAs that client "
                       "certificates verify against)",
                       "");
    for (size_t i = 0; i < nports; i++)
        for (size_t j = i + 1; j < nports; j++)
            if (ports[i].on && ports[j].on && ports[i].port > 0 &&
                ports[i].port == ports[j].port && same_address(ports[i].bind, ports[j].bind)) {
                fail(one, sizeof one, "config: %s and %s are both %d", ports[i].name,
                     ports[j].name, ports[i].port);
                rc = add_error(err, errlen, one, "");
            }
    return rc;
}

/* Adds one key's value to its section object in root. */
/* Upstream passwords are never printed (--check-config, logs): "***" in their place. */
static void hide_passwords(cJSON *upstreams)
{
    const cJSON *u;

    cJSON_ArrayForEach(u, upstreams) {
        cJSON *pw = cJSON_GetObjectItemCaseSensitive(u, "password");
        if (cJSON_IsString(pw) && pw->valuestring[0])
            cJSON_ReplaceItemInObjectCaseSensitive((cJSON *)u, "password", cJSON_CreateString("***"));
    }
}

/* Fleet key secrets likewise (a secret_file's name is shown). */
static void hide_secrets(cJSON *keys)
{
    const cJSON *k;

    cJSON_ArrayForEach(k, keys) {
        cJSON *s = cJSON_GetObjectItemCaseSensitive(k, "secret");
        if (cJSON_IsString(s) && s->valuestring[0])
            cJSON_ReplaceItemInObjectCaseSensitive((cJSON *)k, "secret",
                                                   cJSON_CreateString("***"));
    }
}

static void add_value(cJSON *root, const struct config *cfg, const struct key *k)
{
    char sec[32];
    size_t slen = section_len(k);
    const char *leaf = k->name + slen + 1;
    const void *f = cfield(cfg, k);
    char word[32];
    cJSON *obj, *v;

    assert(slen < sizeof sec);
    memcpy(sec, k->name, slen);
    sec[slen] = '\0';
    obj = cJSON_GetObjectItemCaseSensitive(root, sec);
    if (!obj)
        obj = cJSON_AddObjectToObject(root, sec);
    switch (k->type) {
    case KEY_INT: v = cJSON_CreateNumber(*(const int *)f); break;
    case KEY_SIZE: v = cJSON_CreateNumber((double)*(const size_t *)f); break;
    case KEY_BOOL: v = cJSON_CreateBool(*(const bool *)f); break;
    case KEY_CHOICE:
        v = cJSON_CreateString(choice_word(k->choices, *(const int *)f, word, sizeof word));
        break;
    case KEY_JSON:
    case KEY_LIST:
        v = cJSON_Parse(f);
        if (!v)
            v = cJSON_CreateString(f); /* not validated; show what is there */
        else if (strcmp(k->name, "bridge.upstreams") == 0)
            hide_passwords(v);
        else if (strcmp(k->name, "auth.fleet_keys") == 0)
            hide_secrets(v);
        break;
    default:
        if (strcmp(k->name, "http.api_key") == 0 && *(const char *)f)
            v = cJSON_CreateString("***");
        else
            v = cJSON_CreateString(f);
        break;
    }
    cJSON_AddItemToObject(obj, leaf, v);
}

char *config_to_json(const struct config *cfg)
{
    cJSON *root = cJSON_CreateObject();
    char *text, *out;

    for (size_t i = 0; i < NKEYS; i++)
        add_value(root, cfg, &keys[i]);
    text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return xstrdup("{}");
    out = xstrdup(text);
    cJSON_free(text);
    return out;
}

/* "int 0..65535", "size 64..1073741824", "enum debug|info|warn|error", ... */
static void describe_type(const struct key *k, char *out, size_t outlen, const char *bar)
{
    switch (k->type) {
    case KEY_INT:
    case KEY_SIZE:
        snprintf(out, outlen, "%s %lld..%lld", type_name(k->type), k->min, k->max);
        break;
    case KEY_ENUM:
    case KEY_CHOICE: {
        size_t o = (size_t)snprintf(out, outlen, "enum ");
        for (const char *p = k->choices; *p && o + 4 < outlen; p++) {
            if (*p == '|') {
                o += (size_t)snprintf(out + o, outlen - o, "%s", bar);
            } else {
                out[o++] = *p;
                out[o] = '\0';
            }
        }
        break;
    }
    case KEY_STR:
        snprintf(out, outlen, "string (max %zu)", k->size - 1);
        break;
    default:
        snprintf(out, outlen, "%s", type_name(k->type));
        break;
    }
}

/* The default as shown in the reference: strings quoted, so "" is visible. */
static void describe_default(const struct key *k, char *out, size_t outlen)
{
    snprintf(out, outlen, k->type == KEY_STR ? "\"%s\"" : "%s", k->def);
}

/* Writes s with the characters that Markdown tables or HTML would eat escaped. */
static void put_markdown(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", out);
        else if (*s == '>')
            fputs("&gt;", out);
        else if (*s == '|')
            fputs("\\|", out);
        else
            fputc(*s, out);
    }
}

void config_print_reference_markdown(FILE *out)
{
    char env[96], type[96], def[64];

    fputs("| key | type | default | environment | description |\n", out);
    fputs("|---|---|---|---|---|\n", out);
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        env_name(k, env, sizeof env);
        describe_type(k, type, sizeof type, ", ");
        describe_default(k, def, sizeof def);
        fprintf(out, "| `%s` | ", k->name);
        put_markdown(out, type);
        fprintf(out, " | `%s` | `%s` | ", def, env);
        put_markdown(out, k->help);
        fputs(" |\n", out);
    }
    fputs("\nSizes accept a `k`, `m` or `g` suffix (x1024, x1024^2, x1024^3) in the environment "
          "and `--set`; booleans accept `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` there.\n",
          out);
}
