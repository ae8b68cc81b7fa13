/* gateway/devices.h: the device registry and the hot state the loop keeps in
 * memory (DESIGN.md "Threads"): devices, their token hashes, presence and the
 * latest value per (device, key). SQLite holds the durable copy; this module
 * never touches it — callers submit changes to storage. Loop thread only. */
#ifndef GALE_DEVICES_H
#define GALE_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/map.h"
#include "gateway/msg.h"

#define DEVICE_ID_MAX 64

/* Device ids: 1..64 chars of [A-Za-z0-9_.:-]. Returns 1 when valid. */
int devices_valid_id(const char *s, size_t len);
#define DEVICE_TOKEN_HASH_HEX 64

struct latest_val {
    char *key;           /* heap, owned */
    struct point p;      /* p.key == key; p.str heap, owned */
};

struct device {
    char id[DEVICE_ID_MAX + 1];
    char token_hash[DEVICE_TOKEN_HASH_HEX + 1]; /* hex HMAC-SHA-256 of the token */
    char role[16];          /* "device" or "app" */
    int64_t created_ms;
    int64_t last_seen_ms;   /* 0 = never */
    char protocol[16];      /* last protocol seen: "line", "mqtt", "http", "ws" */
    int online;             /* live authenticated connections */
    char *attrs_json;       /* heap JSON object text or NULL */
    struct map latest;      /* key -> struct latest_val */
};

struct devices {
    struct map by_id;       /* id -> struct device */
};

void devices_init(struct devices *d);
void devices_fini(struct devices *d);
struct device *devices_find(struct devices *d, const char *id);
/* Adds a device (id must be valid and new); returns it. */
struct device *devices_add(struct devices *d, const char *id, const char *token_hash,
                           const char *role, int64_t created_ms);
void devices_remove(struct devices *d, const char *id);
/* Updates the latest values from a telemetry message (newest ts wins). */
void devices_update_latest(struct device *dev, const struct msg *m);
void devices_set_latest(struct device *dev, const struct point *p);
/* Sorted array of borrowed device pointers (free the array). */
struct device **devices_sorted(struct devices *d, size_t *n);

/* Writes {"id":..,"role":..,"created":..,"online":..,"last_seen":..,"protocol":..} */
void devices_write_json(const struct device *dev, struct buf *out);
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
