/* base/map.c: see map.h. FNV-1a hashing; grows at 70% load (tombstones counted). */
#include "base/map.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

static const char tombstone_key[] = "";
#define MAP_TOMBSTONE tombstone_key

uint64_t map_hash(const char *key, size_t klen)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < klen; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

void map_init(struct map *m)
{
    memset(m, 0, sizeof *m);
}

void map_fini(struct map *m)
{
    free(m->slots);
    map_init(m);
}

static struct map_entry *find(const struct map *m, const char *key, size_t klen, uint32_t h)
{
    if (!m->cap)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        struct map_entry *e = &m->slots[i];
        if (!e->key)
            return NULL;
        if (e->key != MAP_TOMBSTONE && e->hash == h && e->klen == klen &&
            memcmp(e->key, key, klen) == 0)
            return e;
    }
}

static void grow(struct map *m)
{
    struct map_entry *old = m->slots;
    size_t oldcap = m->cap;
    m->cap = m->cap ? (m->len * 2 >= m->cap ? m->cap * 2 : m->cap) : 16;
    m->slots = xcalloc(m->cap, sizeof *m->slots);
    m->used = 0;
    for (size_t i = 0; i < oldcap; i++) {
        struct map_entry *e = &old[i];
        if (e->key && e->key != MAP_TOMBSTONE) {
            size_t j = e->hash & (m->cap - 1);
            while (m->slots[j].key)
                j = (j + 1) & (m->cap - 1);
            m->slots[j] = *e;
            m->used++;
        }
    }
    free(old);
}

void *map_get(const struct map *m, const char *key, size_t klen)
{
    struct map_entry *e = find(m, key, klen, (uint32_t)map_hash(key, klen));
    return e ? e->val : NULL;
}

void *map_put(struct map *m, const char *key, size_t klen, void *val)
{
    uint32_t h = (uint32_t)map_hash(key, klen);
    struct map_entry *e = find(m, key, klen, h);
    size_t i;

    assert(klen <= UINT32_MAX);
    if (e) {
        void *old = e->val;
        e->val = val;
        e->key = key;
        return old;
    }
    if ((m->used + 1) * 10 >= m->cap * 7)
        grow(m);
    for (i = h & (m->cap - 1); m->slots[i].key && m->slots[i].key != MAP_TOMBSTONE;
         i = (i + 1) & (m->cap - 1))
        ;
    if (!m->slots[i].key)
        m->used++;
    m->slots[i] = (struct map_entry){key, val, h, (uint32_t)klen};
    m->len++;
    return NULL;
}

void *map_del(struct map *m, const char *key, size_t klen)
{
    struct map_entry *e = find(m, key, klen, (uint32_t)map_hash(key, klen));
    void *val;
    if (!e)
        return NULL;
    val = e->val;
    e->key = MAP_TOMBSTONE;
    e->val = NULL;
    m->len--;
    return val;
}

int map_next(const struct map *m, size_t *it, const char **key, void **val)
{
    while (*it < m->cap) {
        struct map_entry *e = &m->slots[(*it)++];
        if (e->key && e->key != MAP_TOMBSTONE) {
            if (key)
                *key = e->key;
            if (val)
                *val = e->val;
            return 1;
        }
    }
    return 0;
}
