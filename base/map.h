/* base/map.h: string-keyed hash map (open addressing, linear probing,
 * power-of-two capacity). Keys are borrowed: the caller keeps each key alive
 * while its entry exists (typically the key lives inside the value). */
#ifndef GALE_MAP_H
#define GALE_MAP_H

#include <stddef.h>
#include <stdint.h>

/* 24 bytes: the hash is kept in 32 bits (the table never reaches 2^32 slots) and keys
 * are shorter than 4 GiB, so a table of 32768 slots (one for each MQTT session of 19,000
 * connections) is 768 KiB. */
struct map_entry {
    const char *key; /* NULL = empty slot; MAP_TOMBSTONE = deleted */
    void *val;
    uint32_t hash;   /* low 32 bits of map_hash */
    uint32_t klen;
};

struct map {
    struct map_entry *slots;
    size_t cap;   /* slots allocated, power of two */
    size_t len;   /* live entries */
    size_t used;  /* live + tombstones */
};

void map_init(struct map *m);
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
