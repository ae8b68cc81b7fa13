/* protocols/mqtt/router.c: subscriptions by topic filter. Loop thread only.
 *
 * A trie of topic levels: each node is one level of some filter ("devices", "+",
 * "#", or "" for an empty level) and holds the subscriptions whose filter ends there.
 * Children are found through one router-wide hash table keyed by (parent node, level
 * bytes), so a node with 100k siblings below it costs one probe, not a list scan; the
 * '+' and '#' children are also cached on their parent for the match walk.
 *
 * Each subscription is one struct rsub, reachable three ways:
 * - from its node's array (the match walk reads these),
 * - from a table keyed by (node, subscriber) (subscribe-again and unsubscribe),
 * - from its subscriber's list (struct rclient, found by a table keyed by subscriber),
 *   so removing a session's subscriptions costs O(its subscriptions), never a trie walk.
 * Nodes with no subscription and no child are freed as soon as they become empty.
 *
 * mqtt_router_match() walks the trie with an explicit stack (a topic may have 32k
 * levels), collects each subscriber once with its highest QoS (a per-subscriber
 * generation mark makes this O(matches)), and then calls back. */
#include "protocols/mqtt/mqtt.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "base/list.h"
#include "protocols/mqtt/mqtt_int.h"

struct rsub;

struct rnode {
    struct rnode *parent;   /* NULL for the root */
    struct rnode *plus;     /* the "+" child, or NULL (also in the level table) */
    struct rnode *hash;     /* the "#" child, or NULL (also in the level table) */
    size_t nchildren;       /* children of every kind */
    struct rsub **subs;     /* subscriptions whose filter ends here; owned array */
    size_t nsubs, cap_subs; /* entries used / allocated */
    uint64_t h;             /* hash of (parent, level): its level-table key */
    size_t level_len;       /* bytes of level[] */
    char level[];           /* this level's text, not NUL-terminated */
};

struct rclient {            /* everything one subscriber holds */
    void *sub;              /* the caller's opaque key */
    struct list subs;       /* its subscriptions (struct rsub), >= 1 while it exists */
    uint64_t gen;           /* match generation that last collected it */
    size_t out;             /* its index in r->out during that match */
};

struct rsub {               /* one (filter, subscriber) pair */
    struct rnode *node;     /* where the filter ends */
    struct rclient *client;
    struct list_link link;  /* in client->subs */
    size_t slot;            /* index in node->subs */
    uint32_t opts;          /* opaque option word (5.0 subscription options) */
    uint8_t qos;            /* granted QoS */
};

/* Open addressing, linear probing, power-of-two capacity, backward-shift deletion
 * (no tombstones). Holds pointers to objects that carry their own key. */
struct tslot {
    uint64_t h;
    void *obj;              /* NULL = empty */
};

struct table {
    struct tslot *slots;
    size_t cap;             /* slots, power of two, or 0 */
    size_t len;             /* objects held */
};

struct match_out {
    void *sub;
    uint32_t opts;
    uint8_t qos;
    uint8_t multi;          /* more than one of its subscriptions matched */
};

struct frame {
    struct rnode *node;
    size_t off;             /* start of the topic level to match; > topic length at the end */
};

struct mqtt_router {
    struct rnode *root;     /* the empty level above the first one; never freed early */
    struct table levels;    /* (parent, level) -> struct rnode */
    struct table pairs;     /* (node, sub) -> struct rsub */
    struct table clients;   /* sub -> struct rclient */
    size_t nsubs;           /* subscriptions */
    size_t nnodes;          /* nodes, root excluded */
    uint64_t seed;          /* hash seed, per router */
    uint64_t gen;           /* match generation */
    int in_match;           /* guards against re-entrant matching */
    int cur_multi;          /* the subscriber being called back had several matches */
    struct match_out *out;  /* scratch: this match's subscribers */
    size_t nout, cap_out;
    struct frame *stack;    /* scratch: the match walk */
    size_t cap_stack;
    char *path;             /* scratch: a filter rebuilt by mqtt_router_list() */
    size_t cap_path;
};

/* ---- hashing */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t hash_level(const struct mqtt_router *r, const struct rnode *parent,
                           const char *s, size_t n)
{
    uint64_t h = r->seed ^ mix64((uintptr_t)parent + n);

    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix64(h ^ w);
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = mix64(h ^ w ^ ((uint64_t)n << 59));
    }
    return h;
}

static uint64_t hash_pair(const struct mqtt_router *r, const struct rnode *node,
                          const void *sub)
{
    return mix64(r->seed ^ mix64((uintptr_t)node) ^ (uintptr_t)sub);
}

static uint64_t hash_client(const struct mqtt_router *r, const void *sub)
{
    return mix64(r->seed ^ (uintptr_t)sub);
}

/* ---- table */

static void tab_place(struct tslot *slots, size_t cap, uint64_t h, void *obj)
{
    size_t i = h & (cap - 1);

    while (slots[i].obj)
        i = (i + 1) & (cap - 1);
    slots[i].h = h;
    slots[i].obj = obj;
}

static void tab_resize(struct table *t, size_t cap)
{
    struct tslot *old = t->slots;
    size_t i, old_cap = t->cap;

    t->slots = xcalloc(cap, sizeof *t->slots);
    t->cap = cap;
    for (i = 0; i < old_cap; i++)
        if (old[i].obj)
            tab_place(t->slots, cap, old[i].h, old[i].obj);
    free(old);
}

static void tab_insert(struct table *t, uint64_t h, void *obj)
{
    if ((t->len + 1) * 4 > t->cap * 3)
        tab_resize(t, t->cap ? t->cap * 2 : 16);
    tab_place(t->slots, t->cap, h, obj);
    t->len++;
}

/* Removes obj (present, hashed h); shifts the rest of its cluster back into place. */
static void tab_remove(struct table *t, uint64_t h, const void *obj)
{
    size_t mask = t->cap - 1, i = h & mask, j;

    while (t->slots[i].obj != obj) {
        assert(t->slots[i].obj != NULL);
        i = (i + 1) & mask;
    }
    for (j = (i + 1) & mask; t->slots[j].obj; j = (j + 1) & mask) {
        size_t home = t->slots[j].h & mask;
        /* The entry at j may move to the hole at i unless its home lies in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].obj = NULL;
    t->len--;
    if (t->cap > 16 && t->len * 8 < t->cap)
        tab_resize(t, t->cap / 2);
}

/* ---- lookups */

static struct rnode *find_level(const struct mqtt_router *r, const struct rnode *parent,
                                const char *s, size_t n, uint64_t h)
{
    size_t mask = r->levels.cap - 1, i;

    if (r->levels.len == 0)
        return NULL;
    for (i = h & mask; r->levels.slots[i].obj; i = (i + 1) & mask) {
        struct rnode *c = r->levels.slots[i].obj;
        if (r->levels.slots[i].h == h && c->parent == parent && c->level_len == n
            && memcmp(c->level, s, n) == 0)
            return c;
    }
    return NULL;
}

static struct rsub *find_pair(const struct mqtt_router *r, const struct rnode *node,
                              const void *sub, uint64_t h)
{
    size_t mask = r->pairs.cap - 1, i;

    if (r->pairs.len == 0)
        return NULL;
    for (i = h & mask; r->pairs.slots[i].obj; i = (i + 1) & mask) {
        struct rsub *e = r->pairs.slots[i].obj;
        if (r->pairs.slots[i].h == h && e->node == node && e->client->sub == sub)
            return e;
    }
    return NULL;
}

static struct rclient *find_client(const struct mqtt_router *r, const void *sub)
{
    uint64_t h = hash_client(r, sub);
    size_t mask = r->clients.cap - 1, i;

    if (r->clients.len == 0)
        return NULL;
    for (i = h & mask; r->clients.slots[i].obj; i = (i + 1) & mask) {
        struct rclient *c = r->clients.slots[i].obj;
        if (c->sub == sub)
            return c;
    }
    return NULL;
}

/* The child of parent for one filter level, created when create is set. */
static struct rnode *get_child(struct mqtt_router *r, struct rnode *parent, const char *s,
                               size_t n, int create)
{
    struct rnode **cache = NULL, *c;
    uint64_t h;

    if (n == 1 && s[0] == '+')
        cache = &parent->plus;
    else if (n == 1 && s[0] == '#')
        cache = &parent->hash;
    if (cache && (*cache || !create))
        return *cache;
    h = hash_level(r, parent, s, n);
    if (!cache && (c = find_level(r, parent, s, n, h)) != NULL)
        return c;
    if (!create)
        return NULL;
    c = xcalloc(1, sizeof *c + n);
    c->parent = parent;
    c->h = h;
    c->level_len = n;
    memcpy(c->level, s, n);
    tab_insert(&r->levels, h, c);
    if (cache)
        *cache = c;
    parent->nchildren++;
    r->nnodes++;
    return c;
}

/* End of the level starting at i: the next '/' or len. */
static size_t level_end(const char *s, size_t len, size_t i)
{
    const char *slash = i < len ? memchr(s + i, '/', len - i) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

/* The node where filter ends, or NULL when absent and !create. */
static struct rnode *walk_filter(struct mqtt_router *r, const char *f, size_t len, int create)
{
    struct rnode *n = r->root;
    size_t i = 0;

    for (;;) {
        size_t e = level_end(f, len, i);
        if ((n = get_child(r, n, f + i, e - i, create)) == NULL || e == len)
            return n;
        i = e + 1;
    }
}

/* Frees node and its ancestors while they hold nothing. */
static void prune(struct mqtt_router *r, struct rnode *n)
{
    while (n != r->root && n->nsubs == 0 && n->nchildren == 0) {
        struct rnode *parent = n->parent;
        if (parent->plus == n)
            parent->plus = NULL;
        else if (parent->hash == n)
            parent->hash = NULL;
        tab_remove(&r->levels, n->h, n);
        parent->nchildren--;
        r->nnodes--;
        free(n->subs);
        free(n);
        n = parent;
    }
}

static void remove_entry(struct mqtt_router *r, struct rsub *e)
{
    struct rnode *n = e->node;
    struct rclient *c = e->client;
    struct rsub *last = n->subs[--n->nsubs];

    tab_remove(&r->pairs, hash_pair(r, n, c->sub), e);

    /* Swap-remove from the node's array. */
    if (last != e) {
        n->subs[e->slot] = last;
        last->slot = e->slot;
    }
    if (n->cap_subs > 8 && n->nsubs * 4 < n->cap_subs) {
        n->cap_subs /= 2;
        n->subs = xrealloc(n->subs, n->cap_subs * sizeof *n->subs);
    }
    list_remove(&c->subs, &e->link);
    if (c->subs.len == 0) {
        tab_remove(&r->clients, hash_client(r, c->sub), c);
        free(c);
    }
    free(e);
    r->nsubs--;
    prune(r, n);
}

/* ---- API */

struct mqtt_router *mqtt_router_new(void)
{
    struct mqtt_router *r = xcalloc(1, sizeof *r);
    int local;

    r->root = xcalloc(1, sizeof *r->root);
    /* Not a secret, but differs between runs (ASLR), so crafted level names that
     * collide in one process need not collide in another. */
    r->seed = mix64((uintptr_t)r ^ mix64((uintptr_t)&local));
    return r;
}

void mqtt_router_free(struct mqtt_router *r)
{
    size_t i;

    if (!r)
        return;
    /* No pruning needed: every node, pair and client sits in a table. */
    for (i = 0; i < r->levels.cap; i++) {
        struct rnode *n = r->levels.slots[i].obj;
        if (n) {
            free(n->subs);
            free(n);
        }
    }
    for (i = 0; i < r->pairs.cap; i++)
        free(r->pairs.slots[i].obj);
    for (i = 0; i < r->clients.cap; i++)
        free(r->clients.slots[i].obj);
    free(r->levels.slots);
    free(r->pairs.slots);
    free(r->clients.slots);
    free(r->root->subs);
    free(r->root);
    free(r->out);
    free(r->stack);
    free(r->path);
    free(r);
}

int mqtt_router_subscribe(struct mqtt_router *r, const char *filter, size_t len, void *sub,
                          uint8_t qos)
{
    return mqtt_router_subscribe_opts(r, filter, len, sub, qos, 0);
}

int mqtt_router_subscribe_opts(struct mqtt_router *r, const char *filter, size_t len,
                               void *sub, uint8_t qos, uint32_t opts)
{
    struct rnode *n;
    struct rclient *c;
    struct rsub *e;
    uint64_t h;

    if (!sub || qos > 2 || !mqtt_filter_valid(filter, len))
        return GW_EINVAL;
    n = walk_filter(r, filter, len, 1);
    h = hash_pair(r, n, sub);
    if ((e = find_pair(r, n, sub, h)) != NULL) {
        e->qos = qos;
        e->opts = opts;
        return 0;
    }
    if ((c = find_client(r, sub)) == NULL) {
        c = xcalloc(1, sizeof *c);
        c->sub = sub;
        tab_insert(&r->clients, hash_client(r, sub), c);
    }
    e = xcalloc(1, sizeof *e);
    e->node = n;
    e->client = c;
    e->qos = qos;
    e->opts = opts;
    list_push_front(&c->subs, &e->link);
    if (n->nsubs == n->cap_subs) {
        n->cap_subs = n->cap_subs ? n->cap_subs * 2 : 2;
        n->subs = xrealloc(n->subs, n->cap_subs * sizeof *n->subs);
    }
    e->slot = n->nsubs;
    n->subs[n->nsubs++] = e;
    tab_insert(&r->pairs, h, e);
    r->nsubs++;
    return 1;
}

int mqtt_router_unsubscribe(struct mqtt_router *r, const char *filter, size_t len, void *sub)
{
    struct rnode *n;
    struct rsub *e;

    if (len == 0 || (n = walk_filter(r, filter, len, 0)) == NULL)
        return 0;
    if ((e = find_pair(r, n, sub, hash_pair(r, n, sub))) == NULL)
        return 0;
    remove_entry(r, e);
    return 1;
}

int mqtt_router_granted(struct mqtt_router *r, const char *filter, size_t len, void *sub)
{
    return mqtt_router_granted_opts(r, filter, len, sub, NULL);
}

int mqtt_router_granted_opts(struct mqtt_router *r, const char *filter, size_t len, void *sub,
                             uint32_t *opts)
{
    struct rnode *n;
    struct rsub *e;
    if (len == 0 || (n = walk_filter(r, filter, len, 0)) == NULL)
        return -1;
    e = find_pair(r, n, sub, hash_pair(r, n, sub));
    if (e && opts)
        *opts = e->opts;
    return e ? e->qos : -1;
}

size_t mqtt_router_remove_all(struct mqtt_router *r, void *sub)
{
    struct rclient *c = find_client(r, sub);
    size_t i, n;

    if (!c)
        return 0;
    /* The client is freed with its last subscription. */
    n = c->subs.len;
    for (i = 0; i < n; i++)
        remove_entry(r, list_entry(c->subs.head, struct rsub, link));
    return n;
}

size_t mqtt_router_list(struct mqtt_router *r, void *sub, mqtt_router_list_fn fn, void *ctx)
{
    struct rclient *c = find_client(r, sub);
    struct rsub *e;
    size_t count = 0;

    if (!c)
        return 0;
    for (e = list_entry(c->subs.head, struct rsub, link); e;
         e = list_entry(e->link.next, struct rsub, link)) {
        struct rnode *n;
        size_t len = 0, pos;

        for (n = e->node; n != r->root; n = n->parent)
            len += n->level_len + 1;
        len--; /* no '/' before the first level */
        if (len + 1 > r->cap_path) {
            r->cap_path = len + 1;
            r->path = xrealloc(r->path, r->cap_path);
        }
        pos = len;
        for (n = e->node; n != r->root; n = n->parent) {
            pos -= n->level_len;
            memcpy(r->path + pos, n->level, n->level_len);
            if (pos > 0)
                r->path[--pos] = '/';
        }
        fn(ctx, r->path, len, e->qos, e->opts);
        count++;
    }
    return count;
}

/* Collects the subscriptions of node: each subscriber once, with its highest QoS. */
static void collect(struct mqtt_router *r, const struct rnode *n)
{
    size_t i;

    for (i = 0; i < n->nsubs; i++) {
        const struct rsub *e = n->subs[i];
        struct rclient *c = e->client;
        struct match_out *o;

        if (c->gen == r->gen) {
            o = &r->out[c->out];
            o->multi = 1;
            if (e->qos > o->qos) {
                o->qos = e->qos;
                o->opts = e->opts;
            }
            continue;
        }
        if (r->nout == r->cap_out) {
            r->cap_out = r->cap_out ? r->cap_out * 2 : 64;
            r->out = xrealloc(r->out, r->cap_out * sizeof *r->out);
        }
        c->gen = r->gen;
        c->out = r->nout;
        o = &r->out[r->nout++];
        o->sub = c->sub;
        o->qos = e->qos;
        o->opts = e->opts;
        o->multi = 0;
    }
}

static void push(struct mqtt_router *r, size_t *depth, struct rnode *n, size_t off)
{
    if (*depth == r->cap_stack) {
        r->cap_stack = r->cap_stack ? r->cap_stack * 2 : 64;
        r->stack = xrealloc(r->stack, r->cap_stack * sizeof *r->stack);
    }
    r->stack[*depth].node = n;
    r->stack[*depth].off = off;
    (*depth)++;
}

size_t mqtt_router_match(struct mqtt_router *r, const char *topic, size_t len,
                         mqtt_router_match_fn fn, void *ctx)
{
    size_t depth = 0, i, nout;
    int dollar;

    if (len == 0)
        return 0;
    assert(!r->in_match);
    dollar = topic[0] == '$';
    r->gen++;
    r->nout = 0;
    push(r, &depth, r->root, 0);
    while (depth > 0) {
        struct frame f = r->stack[--depth];
        struct rnode *child;
        size_t end, next;
        int wild_ok;

        if (f.off > len) {
            /* The topic ended at f.node's level: its own subscriptions, and those of
             * its "#" child ("sport/#" matches "sport") [MQTT-4.7.1-2]. */
            collect(r, f.node);
            if (f.node->hash)
                collect(r, f.node->hash);
            continue;
        }
        end = level_end(topic, len, f.off);
        next = end == len ? len + 1 : end + 1;
        /* Wildcards at the first level do not match '$' topics [MQTT-4.7.2-1]. */
        wild_ok = !(f.off == 0 && dollar);
        if (wild_ok && f.node->hash)
            collect(r, f.node->hash);
        if (f.node->nchildren == 0)
            continue;
        child = find_level(r, f.node, topic + f.off, end - f.off,
                           hash_level(r, f.node, topic + f.off, end - f.off));
        if (child)
            push(r, &depth, child, next);
        if (wild_ok && f.node->plus)
            push(r, &depth, f.node->plus, next);
    }
    nout = r->nout;
    r->in_match = 1;
    for (i = 0; i < nout; i++) {
        r->cur_multi = r->out[i].multi;
        fn(ctx, r->out[i].sub, r->out[i].qos, r->out[i].opts);
    }
    r->cur_multi = 0;
    r->in_match = 0;
    return nout;
}

int mqtt_router_multi(const struct mqtt_router *r)
{
    return r->cur_multi;
}

size_t mqtt_router_count(const struct mqtt_router *r)
{
    return r->nsubs;
}

size_t mqtt_router_node_count(const struct mqtt_router *r)
{
    return r->nnodes;
}

size_t mqtt_router_subscriber_count(const struct mqtt_router *r)
{
    return r->clients.len;
}
