/* gateway/guard.c: see guard.h. The counts live in two maps: peer address -> connections
 * of it still authenticating, device id -> its token bucket. A connection records what
 * it counts (c->guard_counted, c->x->guard_held), so release is exact whatever the order of
 * authentication and close. Loop thread only. */
#include "gateway/guard.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/map.h"
#include "config/config.h"
#include "gateway/conn.h"
#include "gateway/gw.h"
#include "gateway/metrics.h"

struct addr_count {
    size_t n;            /* connections of the address not yet authenticated */
    char addr[64];       /* map key: the peer without its port */
};

struct bucket {
    double tokens;       /* messages the device may send now */
    uint64_t last_ms;    /* monotonic time tokens was computed at */
    char device[65];     /* map key */
};

struct guard {
    const struct config *cfg;
    struct metrics *m;
    struct map addrs;    /* addr -> struct addr_count (entries with n > 0 only) */
    struct map buckets;  /* device -> struct bucket */
    size_t preauth_bytes; /* held by unauthenticated connections, all together */
    size_t preauth_conns; /* connections counted against their address */
    bool flood;           /* preauth_conns passed FLOOD_CONNS since it was last 0 */
};

/* Unauthenticated connections at once that make an episode worth giving memory back
 * after: their buffers were freed into the heap, which keeps them otherwise. */
#define FLOOD_CONNS 1000

struct guard *guard_new(const struct config *cfg, struct metrics *m)
{
    struct guard *g = xcalloc(1, sizeof *g);
    g->cfg = cfg;
    g->m = m;
    map_init(&g->addrs);
    map_init(&g->buckets);
    return g;
}

static void free_values(struct map *m)
{
    size_t it = 0;
    void *v;
    while (map_next(m, &it, NULL, &v))
        free(v);
    map_fini(m);
}

void guard_free(struct guard *g)
{
    if (!g)
        return;
    free_values(&g->addrs);
    free_values(&g->buckets);
    free(g);
}

/* The address part of a peer ("10.0.0.7:51512" -> "10.0.0.7", "[::1]:5" -> "[::1]"). */
static size_t addr_len(const char *peer)
{
    const char *colon = strrchr(peer, ':');
    return colon && colon != peer ? (size_t)(colon - peer) : strlen(peer);
}

static struct addr_count *addr_get(struct guard *g, const char *peer, bool create)
{
    size_t len = addr_len(peer);
    struct addr_count *a;

    if (len >= sizeof a->addr)
        len = sizeof a->addr - 1;
    a = map_get(&g->addrs, peer, len);
    if (a || !create)
        return a;
    a = xcalloc(1, sizeof *a);
    memcpy(a->addr, peer, len);
    map_put(&g->addrs, a->addr, len, a);
    return a;
}

/* Stops counting c against its address. */
static void uncount(struct guard *g, struct conn *c)
{
    struct addr_count *a;
    if (!c->guard_counted)
        return;
    c->guard_counted = false;
    if (--g->preauth_conns == 0 && g->flood) { /* the episode is over: RSS returns */
        g->flood = false;
        malloc_trim(0);
    }
    a = addr_get(g, conn_peer(c), false);
    if (a && --a->n == 0) {
        map_del(&g->addrs, a->addr, strlen(a->addr));
        free(a);
    }
}

static void release_bytes(struct guard *g, struct conn *c)
{
    if (!c->x->guard_held)
        return;
    g->preauth_bytes -= c->x->guard_held;
    c->x->guard_held = 0;
}

const char *guard_accept(struct guard *g, struct conn *c)
{
    int per_ip;
    struct addr_count *a;

    if (!g)
        return NULL;
    per_ip = g->cfg->limits.max_connections_per_ip;
    if (g->preauth_bytes >= g->cfg->limits.preauth_total_bytes)
        return "pre-authentication memory budget spent (limits.preauth_total_bytes)";
    a = addr_get(g, conn_peer(c), true);
    if (per_ip > 0 && a->n >= (size_t)per_ip)
        return "too many unauthenticated connections from this address "
               "(limits.max_connections_per_ip)";
    a->n++;
    c->guard_counted = true;
    if (++g->preauth_conns >= FLOOD_CONNS)
        g->flood = true;
    return NULL;
}

const char *guard_held(struct guard *g, struct conn *c, size_t held)
{
    if (!g || c->authenticated)
        return NULL;
    release_bytes(g, c);
    if (held > g->cfg->limits.preauth_max_bytes)
        return "too many bytes before authentication (limits.preauth_max_bytes)";
    held += c->x->proto_held + c->x->xport_held; /* what was assembled from it counts too */
    if (g->preauth_bytes + held > g->cfg->limits.preauth_total_bytes)
        return "pre-authentication memory budget spent (limits.preauth_total_bytes)";
    g->preauth_bytes += held;
    if (held)
        conn_extra(c)->guard_held = held;
    return NULL;
}

void guard_authenticated(struct guard *g, struct conn *c)
{
    if (!g)
        return;
    uncount(g, c);
    release_bytes(g, c);
}

void guard_close(struct guard *g, struct conn *c)
{
    if (!g)
        return;
    uncount(g, c);
    release_bytes(g, c);
}

size_t guard_cap(const struct conn *c, size_t limit)
{
    size_t cap = c->gw->cfg->limits.preauth_max_bytes;
    return !c->authenticated && cap < limit ? cap : limit;
}

size_t guard_preauth_bytes(const struct guard *g)
{
    return g ? g->preauth_bytes : 0;
}

enum guard_rate guard_rate(struct guard *g, const char *device, uint64_t now_ms)
{
    int rate = g ? g->cfg->limits.device_rate_msgs_per_s : 0;
    double burst;
    struct bucket *b;
    size_t len;

    if (rate <= 0 || !device || !device[0])
        return GUARD_RATE_OK;
    burst = (double)g->cfg->limits.device_rate_burst;
    len = strlen(device);
    b = map_get(&g->buckets, device, len);
    if (!b) {
        b = xcalloc(1, sizeof *b);
        snprintf(b->device, sizeof b->device, "%s", device);
        b->tokens = burst;
        b->last_ms = now_ms;
        map_put(&g->buckets, b->device, strlen(b->device), b);
    }
    b->tokens += (double)(now_ms - b->last_ms) * rate / 1000.0;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ms = now_ms;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return GUARD_RATE_OK;
    }
    if (g->cfg->limits.device_rate_action == CONFIG_RATE_DISCONNECT) {
        g->m->rate_limited_disconnect++;
        return GUARD_RATE_DISCONNECT;
    }
    g->m->rate_limited_drop++;
    return GUARD_RATE_DROP;
}
