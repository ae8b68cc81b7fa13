/* config/config.h: Gale's configuration.
 * Precedence: --set flag > environment GALE_<SECTION>_<KEY> > --config file > default.
 * Every key lives in one table in config.c (name, type, bounds, default, help),
 * from which parsing, validation, --help text and the README reference come.
 * Errors name the key: "config: http.port: must be an integer 0..65535 (got \"x\")", and an
 * unknown key the one it probably meant ("(did you mean http.port?)"). A source reports
 * every error it holds at once, one per line in err (a file's and the environment's each
 * name their source); a source with any error is applied not at all. */
#ifndef GALE_CONFIG_H
#define GALE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CONFIG_STR_MAX 512

/* devices.auto_register: register an unknown device on its first MQTT telemetry.
 * The order is the order of the config words "auto|true|false". */
enum config_register {
    CONFIG_REGISTER_AUTO = 0,   /* "auto": only while mqtt.allow_anonymous is on */
    CONFIG_REGISTER_ALWAYS = 1, /* "true" */
    CONFIG_REGISTER_NEVER = 2,  /* "false" */
};

/* storage.sync: what an ack survives. The order is the order of the config words
 * "full|normal". */
enum config_sync {
    CONFIG_SYNC_FULL = 0,       /* "full": a power cut (every commit reaches the disk) */
    CONFIG_SYNC_NORMAL = 1,     /* "normal": a crash of the process, not of the machine */
};

/* mqtt.invalid_telemetry: what a publish on a telemetry topic whose payload does not
 * decode gets. The order is the order of the config words "disconnect|ack". */
enum config_invalid_telemetry {
    CONFIG_INVALID_TELEMETRY_DISCONNECT = 0, /* no PUBACK/PUBREC, not routed, connection closed */
    CONFIG_INVALID_TELEMETRY_ACK = 1,        /* acknowledged and routed as a plain message */
};

/* http.access_log: one log line per HTTP reply, in which format. The order is the order
 * of the config words "off|common|json". */
enum config_access_log {
    CONFIG_ACCESS_LOG_OFF = 0,    /* "off": no line */
    CONFIG_ACCESS_LOG_COMMON = 1, /* "common": NCSA combined format (common + referer, agent) */
    CONFIG_ACCESS_LOG_JSON = 2,   /* "json": one JSON object */
};

/* tls.client_auth: whether TLS clients present a certificate. The order is the order of
 * the config words "off|optional|required". */
enum config_client_auth {
    CONFIG_CLIENT_AUTH_OFF = 0,      /* "off": none is asked for */
    CONFIG_CLIENT_AUTH_OPTIONAL = 1, /* "optional": asked for; one sent must verify */
    CONFIG_CLIENT_AUTH_REQUIRED = 2, /* "required": a client without one fails the handshake */
};

/* limits.device_rate_action: what a message over a device's rate gets. The order is the
 * order of the config words "drop|disconnect". */
enum config_rate_action {
    CONFIG_RATE_DROP = 0,       /* "drop": not taken, the sender told where it can be */
    CONFIG_RATE_DISCONNECT = 1, /* "disconnect": the connection is closed */
};

struct config {
    char data_dir[CONFIG_STR_MAX];       /* gateway.data_dir, default "./data" */
    struct {
        char level[16];                  /* log.level: debug|info|warn|error */
        char format[16];                 /* log.format: text|json */
    } log;
    struct {
        char bind[64];                   /* http.bind, default "0.0.0.0" */
        int port;                        /* http.port, default 8080; 0 = pick */
        int proxy_protocol;              /* http.proxy_protocol: off|v1|v2|any as 0..3, the
                                          * mask of versions of gateway/proxy.h */
        int tls_port;                    /* http.tls_port (HTTPS, WSS), default 8443; 0 = off,
                                          * -1 = pick; only with tls.cert_file */
        char api_key[CONFIG_STR_MAX];    /* http.api_key; "" = generate into data dir */
        size_t max_header_bytes;         /* http.max_header_bytes, default 16384 */
        size_t max_body_bytes;           /* http.max_body_bytes, default 1048576 */
        bool ws_echo;                    /* http.ws_echo, default false */
        size_t ws_max_message_bytes;     /* http.ws_max_message_bytes, default 1048576 */
        bool ws_deflate;                 /* http.ws_deflate, default true */
        enum config_access_log access_log; /* http.access_log, default off */
        bool metrics_auth;               /* http.metrics_auth: /metrics needs the API key;
                                          * default false */
        int device_idle_s;               /* http.device_idle_s: HTTP presence lasts, default 60 */
        int command_wait_max_s;          /* http.command_wait_max_s: long poll cap, default 60 */
        int command_polls_max;           /* http.command_polls_max: polls at once, 10000 */
    } http;
    struct {
        bool enabled;                    /* line.enabled, default true */
        char bind[64];                   /* line.bind */
        int port;                        /* line.port, default 7000 */
        int proxy_protocol;              /* line.proxy_protocol, as http's */
        int tls_port;                    /* line.tls_port, default 7443; as http.tls_port */
        size_t max_line_bytes;           /* line.max_line_bytes, default 65536 */
        int max_errors;                  /* line.max_errors, default 10: errors before close */
    } line;
    struct {
        bool enabled;                    /* mqtt.enabled, default true */
        char bind[64];                   /* mqtt.bind */
        int port;                        /* mqtt.port, default 1883 */
        int proxy_protocol;              /* mqtt.proxy_protocol, as http's */
        int tls_port;                    /* mqtt.tls_port, default 8883; as http.tls_port */
        size_t max_packet_bytes;         /* mqtt.max_packet_bytes, default 1048576 */
        bool allow_anonymous;            /* mqtt.allow_anonymous, default false */
        int max_keepalive;               /* mqtt.max_keepalive seconds, default 65535 */
        size_t max_inflight;             /* mqtt.max_inflight, default 20 */
        size_t max_queued;               /* mqtt.max_queued messages per session, default 1000 */
        size_t max_subscriptions;        /* mqtt.max_subscriptions per session, default 10000 */
        size_t max_queued_bytes;         /* mqtt.max_queued_bytes per session, default 8 MiB */
        size_t max_subscription_bytes;   /* mqtt.max_subscription_bytes per session, 1 MiB */
        size_t max_subscription_levels;  /* mqtt.max_subscription_levels per session, 50000 */
        size_t receive_maximum;          /* mqtt.receive_maximum (MQTT 5), default 1024 */
        size_t topic_alias_maximum;      /* mqtt.topic_alias_maximum (MQTT 5), default 32 */
        size_t max_qos2_pending;         /* mqtt.max_qos2_pending per session, default 1000 */
        size_t max_connections_per_identity; /* mqtt.max_connections_per_identity, 32 */
        size_t max_anonymous_sessions;   /* mqtt.max_anonymous_sessions, default 1000 */
        size_t max_retained;             /* mqtt.max_retained topics, default 100000 */
        enum config_invalid_telemetry invalid_telemetry; /* mqtt.invalid_telemetry, default
                                                          * disconnect */
        int session_expiry_s;            /* mqtt.session_expiry_s, default 604800; 0 never */
        int shared_strategy;             /* mqtt.shared_subscription_strategy: enum
                                          * share_strategy, default round_robin */
        char acl_json[4096];             /* mqtt.acl: JSON array of rules, default "[]" */
    } mqtt;
    struct {
        char cert_file[CONFIG_STR_MAX];  /* tls.cert_file (PEM chain); "" = no TLS listener */
        char key_file[CONFIG_STR_MAX];   /* tls.key_file (PEM); "" = the key is in cert_file */
        char ca_file[CONFIG_STR_MAX];    /* tls.ca_file: CAs that client certificates verify
                                          * against; needed unless client_auth is off */
        enum config_client_auth client_auth; /* tls.client_auth, default off */
    } tls;
    struct {
        enum config_register auto_register; /* devices.auto_register, default auto */
    } devices;
    struct {
        char path[CONFIG_STR_MAX];       /* storage.path; "" = <data_dir>/gale.db */
        enum config_sync sync;           /* storage.sync, default full */
        bool ack_log;                    /* storage.ack_log, default true */
        size_t batch_rows;               /* storage.batch_rows, default 1000 */
        int batch_delay_ms;              /* storage.batch_delay_ms: deprecated, unused */
        size_t queue_high_bytes;         /* storage.queue_high_bytes, default 64 MiB */
        size_t queue_low_bytes;          /* storage.queue_low_bytes, default 32 MiB */
        size_t queue_high_rows;          /* storage.queue_high_rows, default 200000 */
        size_t queue_low_rows;           /* storage.queue_low_rows, default 50000 */
        size_t hot_max_points;           /* storage.hot_max_points, default 1000000 */
        int retention_days;              /* storage.retention_days, default 0 (forever) */
        size_t wal_max_bytes;            /* storage.wal_max_bytes, default 64 MiB */
        char backup_dir[CONFIG_STR_MAX]; /* storage.backup_dir; "" = <data_dir>/backups */
    } storage;
    struct {
        int max_connections;             /* limits.max_connections, default 0 = from the fd limit */
        int auth_timeout_ms;             /* limits.auth_timeout_ms, default 10000 */
        int idle_timeout_ms;             /* limits.idle_timeout_ms, default 300000 */
        char proxy_trusted_json[4096];   /* limits.proxy_trusted: JSON array of CIDRs, "[]" */
        int proxy_header_timeout_ms;     /* limits.proxy_header_timeout_ms, default 5000 */
        size_t max_points_per_message;   /* limits.max_points_per_message, default 1000 */
        size_t max_send_queue_bytes;     /* limits.max_send_queue_bytes, default 4194304 */
        size_t preauth_max_bytes;        /* limits.preauth_max_bytes, default 65536 */
        size_t preauth_total_bytes;      /* limits.preauth_total_bytes, default 32 MiB */
        int max_connections_per_ip;      /* limits.max_connections_per_ip, default 1000; 0 off */
        int max_connections_per_device;  /* limits.max_connections_per_device, 32; 0 off */
        size_t max_sessions_per_device;  /* limits.max_sessions_per_device, default 8 */
        size_t max_retained_per_device;  /* limits.max_retained_per_device, default 1000 */
        size_t max_retained_bytes_per_device; /* limits.max_retained_bytes_per_device, 1 MiB */
        size_t max_attribute_bytes;      /* limits.max_attribute_bytes, default 65536 */
        int device_rate_msgs_per_s;      /* limits.device_rate_msgs_per_s, default 0 (off) */
        int device_rate_burst;           /* limits.device_rate_burst, default 100 */
        enum config_rate_action device_rate_action; /* limits.device_rate_action, default drop */
    } limits;
    struct {
        char fleet_keys_json[4096];      /* auth.fleet_keys: JSON array of {id, secret |
                                          * secret_file}, "[]" */
    } auth;
    struct {
        char upstreams_json[16384];      /* bridge.upstreams: JSON array of upstreams, "[]" */
    } bridge;
};

/* Fills cfg with the embedded defaults. */
void config_defaults(struct config *cfg);

/* Applies the JSON text of a config file: {"http":{"port":8080},...}.
 * Returns 0, or -1 with err (size errlen) naming the key. */
int config_apply_json(struct config *cfg, const char *json, size_t len, char *err, size_t errlen);
/* Reads and applies a file. -1 with err on unreadable file or bad content. */
int config_apply_file(struct config *cfg, const char *path, char *err, size_t errlen);
/* Applies GALE_<SECTION>_<KEY> variables from envp (NULL-terminated "K=V" strings).
 * A GALE_ variable that names no key is an error. */
int config_apply_env(struct config *cfg, char *const *envp, char *err, size_t errlen);
/* Applies one "section.key=value" assignment (value parsed by the key's type). */
int config_apply_set(struct config *cfg, const char *assignment, char *err, size_t errlen);
/* Cross-key checks (low water < high water, ...). */
int config_validate(const struct config *cfg, char *err, size_t errlen);
/* Writes the reference (every key, type, default, env name, help) as a Markdown table:
 * gale --config-reference, and the README's config section. */
void config_print_reference_markdown(FILE *out);
/* Writes the effective config as JSON (api_key redacted). Returns heap string. */
char *config_to_json(const struct config *cfg);

#endif
