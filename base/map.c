/* base/map.c: see map.h. FNV-1a hashing; grows at 70% load (tombstones counted). */
#include "base/map.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

static const char tombstone_key[] = "";
#define MAP_TOMBSTONE tombstone_key
static char tombstone_val;                 /* a keyed map's deleted slot */
#define VAL_TOMBSTONE ((void *)&tombstone_val)

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

void map_init_keyed(struct map *m, size_t key_offset)
{
    assert(key_offset < UINT32_MAX);
    map_init(m);
    m->key_at = (uint32_t)key_offset + 1;
}

void map_fini(struct map *m)
{
    uint32_t key_at = m->key_at;
    free(m->slots);
    map_init(m);
    m->key_at = key_at;
}

static struct map_entry *entries(const struct map *m)
{
    return m->slots;
}

static void **vals(const struct map *m)
{
    return m->slots;
}

static const char *key_of(const struct map *m, const void *val)
{
    return (const char *)val + (m->key_at - 1);
}

/* Slot i holds nothing and never did: a probe ends there. */
static bool slot_empty(const struct map *m, size_t i)
{
    return m->key_at ? !vals(m)[i] : !entries(m)[i].key;
}

static bool slot_live(const struct map *m, size_t i)
{
    if (m->key_at)
        return vals(m)[i] && vals(m)[i] != VAL_TOMBSTONE;
    return entries(m)[i].key && entries(m)[i].key != MAP_TOMBSTONE;
}

static void *slot_val(const struct map *m, size_t i)
{
    return m->key_at ? vals(m)[i] : entries(m)[i].val;
}

static const char *slot_key(const struct map *m, size_t i)
{
    return m->key_at ? key_of(m, vals(m)[i]) : entries(m)[i].key;
}

/* Whether live slot i holds key (h: its 32-bit hash). A keyed map compares the value's own
 * key, reading no further than its NUL. */
static bool slot_is(const struct map *m, size_t i, const char *key, size_t klen, uint32_t h)
{
    if (m->key_at) {
        const char *k = key_of(m, vals(m)[i]);
        return strnlen(k, klen + 1) == klen && memcmp(k, key, klen) == 0;
    }
    const struct map_entry *e = &entries(m)[i];
    return e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0;
}

/* The slot holding key, or -1. */
static long find(const struct map *m, const char *key, size_t klen, uint32_t h)
{
    if (!m->cap)
        return -1;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (slot_empty(m, i))
            return -1;
        if (slot_live(m, i) && slot_is(m, i, key, klen, h))
            return (long)i;
    }
}

/* Stores val (key, h) in the first free slot of its probe (a tombstone or an empty one). */
static void place(struct map *m, const char *key, size_t klen, uint32_t h, void *val)
{
    size_t i = h & (m->cap - 1);
    while (slot_live(m, i))
        i = (i + 1) & (m->cap - 1);
    if (slot_empty(m, i))
        m->used++;
    if (m->key_at)
        vals(m)[i] = val;
    else
        entries(m)[i] = (struct map_entry){key, val, h, (uint32_t)klen};
}

static void grow(struct map *m)
{
    void *old = m->slots;
    struct map oldm = *m;
    size_t slot = m->key_at ? sizeof(void *) : sizeof(struct map_entry);

    m->cap = m->cap ? (m->len * 2 >= m->cap ? m->cap * 2 : m->cap) : 16;
    assert(m->cap > 0);
    m->slots = xcalloc(m->cap, slot);
    m->used = 0;
    for (size_t i = 0; i < oldm.cap; i++) {
        if (slot_live(&oldm, i)) {
            const char *k = slot_key(&oldm, i);
            size_t klen = m->key_at ? strlen(k) : entries(&oldm)[i].klen;
            uint32_t h = m->key_at ? (uint32_t)map_hash(k, klen) : entries(&oldm)[i].hash;
            place(m, k, klen, h, slot_val(&oldm, i));
        }
    }
    free(old);
}

void *map_get(const struct map *m, const char *key, size_t klen)
{
    long i = find(m, key, klen, (uint32_t)map_hash(key, klen));
    return i < 0 ? NULL : slot_val(m, (size_t)i);
}

void *map_put(struct map *m, const char *key, size_t klen, void *val)
{
    uint32_t h = (uint32_t)map_hash(key, klen);
    long i = find(m, key, klen, h);

    assert(klen <= UINT32_MAX);
    assert(!m->key_at || key == key_of(m, val));
    if (i >= 0) {
        void *old = slot_val(m, (size_t)i);
        if (m->key_at) {
            vals(m)[i] = val;
        } else {
            entries(m)[i].val = val;
            entries(m)[i].key = key;
        }
        return old;
    }
    if (((size_t)m->used + 1) * 10 >= (size_t)m->cap * 7)
        grow(m);
    place(m, key, klen, h, val);
    m->len++;
    return NULL;
}

void *map_del(struct map *m, const char *key, size_t klen)
{
    long i = find(m, key, klen, (uint32_t)map_hash(key, klen));
    void *val;
    if (i < 0)
        return NULL;
    val = slot_val(m, (size_t)i);
    if (m->key_at) {
        vals(m)[i] = VAL_TOMBSTONE;
    } else {
        entries(m)[i].key = MAP_TOMBSTONE;
        entries(m)[i].val = NULL;
    }
    m->len--;
    return val;
}

int map_next(const struct map *m, size_t *it, const char **key, void **val)
{
    while (*it < m->cap) {
        size_t i = (*it)++;
        if (slot_live(m, i)) {
            if (key)
                *key = slot_key(m, i);
            if (val)
                *val = slot_val(m, i);
            return 1;
        }
    }
    return 0;
}
