/* gateway/bridge/bridge_cfg.h: the upstreams of the bridge, parsed from the JSON text of
 * the config key bridge.upstreams (an array of objects, README "Bridge"), and the MQTT
 * topic filter match the bridge's forward rules use. Pure: no I/O, no loop; main's
 * configuration check and the bridge itself call it. */
#ifndef GALE_BRIDGE_CFG_H
#define GALE_BRIDGE_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIDGE_NAME_MAX 64

/* format: what a forwarded telemetry message carries upstream. */
enum bridge_format {
    BRIDGE_FORMAT_RAW = 0,        /* "raw": the payload as the device sent it */
    BRIDGE_FORMAT_NORMALIZED = 1, /* "normalized": {"device":..,"ts":..,"values":{..}} */
};

/* overflow: what a full outbox gives up once no QoS 0 message is left to drop. */
enum bridge_overflow {
    BRIDGE_DROP_OLDEST = 0, /* "drop_oldest": the oldest waiting message */
    BRIDGE_DROP_NEWEST = 1, /* "drop_newest": the new message is not enqueued */
};

/* One upstream. Strings are heap copies owned by the struct (NULL when absent). */
struct bridge_upstream_cfg {
    char name[BRIDGE_NAME_MAX + 1];  /* [A-Za-z0-9_.-], unique */
    char **addresses;                /* tcp://, ssl://, ws://, wss:// URIs, tried in order */
    size_t naddresses;
    char *client_id;                 /* default "gale-<name>" */
    char *username, *password;
    int keepalive_s;                 /* default 60 */
    uint8_t protocol;                /* MQTT protocol level: 4 = 3.1.1 (default), 5 = 5.0 */
    bool clean_session;              /* default false: the upstream keeps what it owes;
                                      * MQTT 5: the Clean Start flag */
    uint32_t session_expiry_s;       /* MQTT 5 Session Expiry Interval: default 3600
                                      * (0 with clean_session); 0xFFFFFFFF = never */
    char **forward;                  /* local topic filters sent up */
    size_t nforward;
    char *remote_prefix;             /* prepended upstream, stripped coming down; "" */
    char **subscribe;                /* remote filters without the prefix */
    size_t nsubscribe;
    uint8_t qos;                     /* QoS of every message sent up (0..2), default 1 */
    enum bridge_format format;
    size_t max_inflight;             /* unacknowledged sends, default 100 */
    unsigned drain_rate;             /* backlog messages/s after a reconnect; 0 unlimited */
    size_t max_backlog_messages;     /* default 1000000 */
    size_t max_backlog_bytes;        /* default 256 MiB (topic + payload bytes) */
    int64_t max_age_s;               /* 0 = forever */
    enum bridge_overflow overflow;
    char *ca_file, *cert_file, *key_file; /* TLS (ssl://, wss://) */
    bool verify;                     /* verify the upstream's certificate, default true */
};

struct bridge_cfg {
    struct bridge_upstream_cfg *ups;
    size_t n;
};

/* Parses json (the text of bridge.upstreams) into out. Returns 0, or GW_ECONFIG with err
 * "config: bridge.upstreams: upstream \"<name>\" (#<i>): <key>: <why>" naming the
 * upstream and key (unknown keys and bad values alike); out is then empty. */
int bridge_cfg_parse(const char *json, struct bridge_cfg *out, char *err, size_t errlen);
/* Frees what parse allocated; the struct may be parsed into again. */
void bridge_cfg_fini(struct bridge_cfg *c);

#endif
