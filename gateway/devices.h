/* gateway/devices.h: the device registry and the hot state the loop keeps in
 * memory (DESIGN.md "Threads"): devices, their token hashes, presence and the
 * latest value per (device, key). The durable copy lives behind a port
 * (struct devices_store, wired by main): every devices_* function that changes a
 * record submits the change through it and returns the write's seq, which the
 * caller adds to its ticket when an answer waits for durability.
 * Latest values follow the commits: a telemetry message waits in a FIFO of pending
 * values (devices_sink) until storage reports the write that stores it
 * (devices_durable, called by gw_on_durable before any ack goes out), so `latest` shows
 * a value as soon as it is acknowledged and never one whose commit failed. Loop thread
 * only. */
#ifndef GALE_DEVICES_H
#define GALE_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/list.h"
#include "base/map.h"
#include "gateway/msg.h"

struct ticket;

#define DEVICE_ID_MAX 64

/* Device ids: 1..64 chars of [A-Za-z0-9_.:-]. Returns 1 when valid. */
int devices_valid_id(const char *s, size_t len);
#define DEVICE_TOKEN_HASH_HEX 64

struct latest_val {
    char *key;           /* heap, owned */
    struct point p;      /* p.key == key; p.str heap, owned */
};

/* What a registry entry is: a device (publishes under devices/<id>/...) or an
 * application client (a backend, a historian). Its name on the wire, in REST and in
 * SQLite is "device" / "app". */
enum device_role { DEVICE_ROLE_DEVICE = 0, DEVICE_ROLE_APP = 1 };

/* "device" or "app". */
const char *devices_role_name(enum device_role role);
/* Parses "device" / "app". Returns 0, or -1 (out untouched) for any other text. */
int devices_role_parse(const char *name, enum device_role *out);

struct device {
    char id[DEVICE_ID_MAX + 1];
    char token_hash[DEVICE_TOKEN_HASH_HEX + 1]; /* hex HMAC-SHA-256 of the token; "" = none
                                                 * (registered by its first telemetry) */
    enum device_role role;
    int64_t created_ms;
    int64_t last_seen_ms;   /* 0 = never */
    char protocol[16];      /* last protocol seen: "line", "mqtt", "http", "ws" */
    int online;             /* live authenticated connections */
    /* Presence from HTTP requests with the device's own credentials (web/httpdev.h): online
     * until http.device_idle_s after the last one. http_link is in devices.http_active
     * while http_online. */
    bool http_online;
    int64_t http_seen_mono_ms; /* gw_mono_ms() of its last such request */
    struct list_link http_link;
    char *name;             /* heap display name or NULL */
    char *metadata_json;    /* heap JSON object text or NULL: the operator's, opaque */
    /* Attributes in two scopes, each a heap JSON object text or NULL (none): */
    char *server_attrs;     /* set over REST (PATCH), changed by nobody else */
    char *reported_attrs;   /* published by the device on devices/<id>/attributes */
    /* read-only: the four above as the one text storage keeps for the device,
     * {"$gale":2,"name":..,"metadata":{..},"server":{..},"reported":{..}} (members
     * present when set), or NULL when none is set; rebuilt by devices_save. */
    char *record_json;
    uint64_t put_seq;       /* the write of its last devices_save (0: none yet) */
    struct map latest;      /* key -> struct latest_val */
};

/* The registry's persistence (main wires storage into it). Each function submits one
 * write without blocking and returns its seq (0 = nothing written); the record is
 * borrowed for the call only. */
struct devices_store {
    void *ctx;
    /* inserts or replaces the whole record */
    uint64_t (*put)(void *ctx, const struct device *d);
    /* presence only: last_seen_ms and protocol */
    uint64_t (*touch)(void *ctx, const struct device *d);
    /* the record and all of the device's telemetry */
    uint64_t (*remove)(void *ctx, const char *id);
    /* the record only; the telemetry stays */
    uint64_t (*forget)(void *ctx, const char *id);
};

/* A telemetry message whose values wait for their commit. */
struct devices_pending {
    struct msg *m; /* reference held; NULL once its device was removed */
    uint64_t seq;  /* the storage write that stores m */
};

/* A change of a device's record that applies to memory only once its write is
 * durable (devices_stage, devices_apply): REST changes nothing a failed commit would
 * leave behind. A set_* member replaces that field; the strings are heap, owned. */
struct device_change {
    bool set_name, set_metadata, set_attrs, set_token;
    char *name;
    char *metadata_json;
    char *server_attrs;
    char token_hash[DEVICE_TOKEN_HASH_HEX + 1];
    /* set by devices_stage */
    uint64_t seq;           /* the write that stores the record as changed */
    char *record_json;      /* that record's text (what record_json becomes) */
};

/* Called once the write seq is durable (ok) or failed (!ok); also with !ok when the
 * registry goes away first. */
typedef void (*devices_durable_fn)(void *arg, bool ok);

struct devices_staged {
    struct devices_staged *next;
    uint64_t seq;
    devices_durable_fn fn;
    void *arg;
};

struct devices {
    /* public */
    struct map by_id;           /* id -> struct device */
    struct list http_active;    /* struct device online by HTTP, by http_link, oldest request
                                 * first (web/httpdev.c keeps it) */
    struct devices_store store; /* all zero until devices_set_store: nothing is written */
    /* private */
    /* FIFO ring of values awaiting their commit, seq increasing. One entry per stored
     * telemetry message not yet reported durable: the writer queue's high water mark
     * (storage.queue_high_bytes) stops ingest reads, which bounds it. */
    struct devices_pending *pending;
    size_t pending_head, pending_len, pending_cap;
    /* devices_when_durable's callbacks, seq increasing */
    struct devices_staged *staged, *staged_last;
};

void devices_init(struct devices *d);
void devices_fini(struct devices *d);
void devices_set_store(struct devices *d, const struct devices_store *store);
struct device *devices_find(struct devices *d, const char *id);
/* Whether dev is online: a live connection, or HTTP activity within http.device_idle_s. */
static inline bool devices_online(const struct device *dev)
{
    return dev->online > 0 || dev->http_online;
}
/* Start-up: adds a device read from storage (id valid and new); nothing is written. */
struct device *devices_add(struct devices *d, const char *id, const char *token_hash,
                           enum device_role role, int64_t created_ms);
/* Registers a new device (id valid and new; token_hash NULL = none; attrs_json NULL or
 * a JSON object's text, copied as its server-scope attributes) and submits its record;
 * *seq = that write. */
struct device *devices_create(struct devices *d, const char *id, const char *token_hash,
                              enum device_role role, const char *attrs_json, int64_t created_ms,
                              uint64_t *seq);
/* Submits dev's whole record after the caller changed it (name, metadata, attributes,
 * token); rebuilds dev->record_json first. */
uint64_t devices_save(struct devices *d, struct device *dev);
/* Submits dev's whole record as it will be with ch applied, leaving dev as it is;
 * sets ch->seq and ch->record_json and returns ch->seq. */
uint64_t devices_stage(struct devices *d, const struct device *dev, struct device_change *ch);
/* Applies ch (its write committed) to dev, taking its strings. When another write of
 * dev's record was submitted after ch's (it carried the old fields), dev's record is
 * submitted again. ch is left empty (devices_change_free is still safe). */
void devices_apply(struct devices *d, struct device *dev, struct device_change *ch);
void devices_change_free(struct device_change *ch);
/* Submits the deletion of device id's record (and of its telemetry unless keep_data)
 * without forgetting it: devices_delete once it is durable. */
uint64_t devices_stage_delete(struct devices *d, const char *id, bool keep_data);
/* Calls fn(arg, ok) from devices_durable once write seq is reported (at once, ok, for
 * seq 0: nothing was written), whatever becomes of the connection that asked. */
void devices_when_durable(struct devices *d, uint64_t seq, devices_durable_fn fn, void *arg);
/* Start-up: sets name, metadata and both attribute scopes from the stored text (what
 * record_json was). A plain JSON object, as Gale stored before attributes had scopes,
 * becomes the server scope. NULL or unreadable text sets nothing. */
void devices_load_record(struct device *dev, const char *text);
/* Merges the JSON object patch into *attrs (a heap JSON object text or NULL): each
 * member replaces the one of that name, a null member deletes it; an empty result is
 * NULL. Returns 0, or -1 (nothing changed) when patch is not a JSON object. */
int devices_merge_attrs(char **attrs, const char *patch, size_t len);
/* Marks dev seen now over protocol ("line", "mqtt", "ws", ...; NULL keeps the last
 * one) and submits its presence. */
uint64_t devices_touch(struct devices *d, struct device *dev, const char *protocol,
                       int64_t now_ms);
/* Forgets the device and submits the deletion of its record and, unless keep_data, of
 * its telemetry. */
uint64_t devices_delete(struct devices *d, const char *id, bool keep_data);
/* Forgets the device in memory only (a creation whose write failed), with its values
 * still waiting for their commit: a device created again under the same id starts empty. */
void devices_remove(struct devices *d, const char *id);
/* Bus sink (ctx = struct devices *), registered right after the storage sink, so t->last
 * is the seq of the write that stores m. A telemetry message with points from a known
 * device takes a reference and waits for that write (devices_durable); anything else is
 * ignored. An empty t (no storage sink wired: nothing will be reported) updates the
 * latest values at once. Writes nothing. */
void devices_sink(void *ctx, struct msg *m, struct ticket *t);
/* Storage reported every write up to upto_seq: committed (ok) or failed. Each pending
 * message with seq <= upto_seq updates its device's latest values (ok) or is dropped,
 * and its reference released; devices_when_durable callbacks of those writes run. Call
 * before the acks of those writes go out. */
void devices_durable(struct devices *d, uint64_t upto_seq, bool ok);
/* Updates the latest values from a telemetry message (newest ts wins). */
void devices_update_latest(struct device *dev, const struct msg *m);
void devices_set_latest(struct device *dev, const struct point *p);
/* Sorted array of borrowed device pointers (free the array). */
struct device **devices_sorted(struct devices *d, size_t *n);

/* Writes {"id":..,"role":..,"created":..,"online":..,"last_seen":..,"protocol":..,
 * "connections":..} and, when set, "name", "metadata" and "attributes" (both scopes in
 * one object; the server's value wins a name both have). */
void devices_write_json(const struct device *dev, struct buf *out);
/* Writes {"server":{..},"reported":{..}}: the attributes by scope. */
void devices_write_attrs_json(const struct device *dev, struct buf *out);
/* Writes {"key":{"ts":..,"value":..},...} */
void devices_write_latest_json(const struct device *dev, struct buf *out);
/* Writes a point's value as JSON (number, true/false, string, or raw JSON). */
void devices_write_value_json(const struct point *p, struct buf *out);

/* Tokens: 256-bit random, base64url (43 chars). hash = hex HMAC-SHA-256(secret, token). */
void devices_new_token(char out[64]);
void devices_hash_token(const unsigned char secret[32], const char *token, size_t len,
                        char out[DEVICE_TOKEN_HASH_HEX + 1]);
/* Constant-time check of token against the device's stored hash. */
bool devices_check_token(const unsigned char secret[32], const struct device *dev,
                         const char *token, size_t len);

#endif
