/* web/keys.h: the API keys that REST, the WebSocket routes and the live feed ask of
 * their callers (Authorization: Bearer <key>, ?api_key=, or the feed's {"auth":..}).
 *
 * Each key has a role and an optional device filter:
 *   read      queries, device lists, the live feed, the dashboard's views
 *   operator  what read may, plus commands, attributes, telemetry posted with the key,
 *             publishing and kicking connections
 *   admin     everything: devices (create, change, delete, rotate tokens), MQTT state,
 *             the keys themselves
 * A filter ("devices": ["pump-*","meter-1"], globs as the live feed takes them) limits
 * the key to the devices it matches: others look absent, and routes that are not
 * about one device (connections, MQTT state, publish, bridges, keys) refuse it.
 *
 * Keys look like gk_<id>_<secret>: the id finds the key in a map, and the SHA-256 of
 * the whole key is compared in constant time with the stored hash (the secret itself
 * is never stored). The configured key (http.api_key, or the one generated into the
 * data dir) is the admin key "bootstrap" (name "default"); it can be revoked once
 * another admin key for every device exists, and stays revoked in that database. The
 * last admin key for every device cannot be revoked.
 *
 * Keys live in memory (loop thread) and in SQLite (storage/keys.c); a change answers
 * once its write is durable, but takes effect at once. Loop thread only. */
#ifndef GALE_KEYS_H
#define GALE_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/list.h"

struct gw;
struct http_conn;
struct http_req;
struct store;

#define KEYS_ID_MAX 16   /* hex characters of a generated key id */
#define KEYS_NAME_MAX 64

/* Ordered: a key may do what every lower role may. */
enum key_role { KEY_ROLE_NONE = 0, KEY_ROLE_READ, KEY_ROLE_OPERATOR, KEY_ROLE_ADMIN };

struct api_key {
    /* read-only */
    char id[KEYS_ID_MAX + 1];       /* public id ("bootstrap" for the configured key) */
    char name[KEYS_NAME_MAX + 1];   /* unique; what the access log shows */
    enum key_role role;
    char **devices;                 /* device globs (heap); ndevices 0 = every device */
    size_t ndevices;
    int64_t created_ms;
    int64_t last_used_ms;           /* since this process started; 0 = not yet */
    /* private */
    char *devices_json;             /* the filter as stored, or NULL */
    unsigned char hash[32];         /* SHA-256 of the whole key (not for "bootstrap") */
    bool bootstrap;
    struct list_link link;          /* in the table's list, creation order */
};

struct keys;

/* Called when a key is revoked, before it is freed (k valid during the call): open
 * connections it authenticated close (the live feed's viewers). */
typedef void (*keys_revoked_fn)(void *ctx, const struct api_key *k);

/* Loads the stored keys (start-up, blocks) and adds the configured key gw->api_key as
 * "bootstrap" unless a stored row says it was revoked. NULL when loading failed. */
struct keys *keys_new(struct gw *gw, struct store *store);
/* NULL is ignored. */
void keys_free(struct keys *ks);
void keys_set_revoked_hook(struct keys *ks, keys_revoked_fn fn, void *ctx);

/* The key secret stands for (borrowed: valid until the key is revoked), or NULL when
 * it is none of them (also for NULL). Marks it used now. ks NULL: always NULL. */
const struct api_key *keys_check(struct keys *ks, const char *secret);
/* Whether k may see and act on device (k NULL: no). */
bool keys_allows_device(const struct api_key *k, const char *device);
/* "admin", "operator", "read" ("none" for KEY_ROLE_NONE). */
const char *keys_role_name(enum key_role role);

/* The /api/keys routes (admin keys for every device only: the caller checked):
 *   POST /api/keys {"name","role"[,"devices"]}   201 with "key", shown once
 *   GET /api/keys                                 every key, without secrets
 *   DELETE /api/keys/{id}                         revokes at once
 * Answers req; path is req->path. */
void keys_handle(struct keys *ks, struct http_conn *h, struct http_req *req);

#endif
