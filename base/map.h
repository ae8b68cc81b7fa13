/* base/map.h: string-keyed hash map (open addressing, linear probing,
 * power-of-two capacity). Keys are borrowed: the caller keeps each key alive
 * while its entry exists (typically the key lives inside the value).
 *
 * A map whose key is always a NUL-terminated string at a fixed place inside its value
 * (map_init_keyed) keeps only the value in each slot: 8 bytes a slot instead of 24, for
 * tables with an entry per connection (MQTT sessions by client id). Its lookups read the
 * key of each value probed; the API is the same. */
#ifndef GALE_MAP_H
#define GALE_MAP_H

#include <stddef.h>
#include <stdint.h>

/* A slot of an ordinary map, 24 bytes: the hash is kept in 32 bits (the table never
 * reaches 2^32 slots) and keys are shorter than 4 GiB. */
struct map_entry {
    const char *key; /* NULL = empty slot; MAP_TOMBSTONE = deleted */
    void *val;
    uint32_t hash;   /* low 32 bits of map_hash */
    uint32_t klen;
};

struct map {
    void *slots;      /* struct map_entry[cap], or for a keyed map void *[cap] */
    size_t len;       /* live entries */
    uint32_t cap;     /* slots allocated, power of two */
    uint32_t used;    /* live + tombstones */
    uint32_t key_at;  /* 0: an ordinary map; else 1 + the key's offset in each value */
};

void map_init(struct map *m);
/* A map whose values carry their key, NUL-terminated, key_offset bytes into them: map_put's
 * key must be that one. */
void map_init_keyed(struct map *m, size_t key_offset);
void map_fini(struct map *m);
void *map_get(const struct map *m, const char *key, size_t klen);
/* Inserts or replaces; returns the previous value or NULL. */
void *map_put(struct map *m, const char *key, size_t klen, void *val);
/* Removes; returns the removed value or NULL. */
void *map_del(struct map *m, const char *key, size_t klen);
/* Iteration: start with *it = 0; returns 0 at the end. Do not modify the map while iterating. */
int map_next(const struct map *m, size_t *it, const char **key, void **val);
uint64_t map_hash(const char *key, size_t klen);

#endif
