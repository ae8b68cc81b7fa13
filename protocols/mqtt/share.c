/* protocols/mqtt/share.c: shared subscriptions (share.h). Loop thread only.
 *
 * Groups are kept by "<name>/<filter>" and by a small index, the tag a message that came
 * through a group carries (struct out_msg.group), so a member that leaves can hand those
 * messages to another member. A tag always names a group its session is a member of:
 * leaving hands over or untags every message of the group first.
 *
 * Which member: round robin by default (mqtt.shared_subscription_strategy), over the
 * members that can take the message now; an offline persistent member takes its turn for
 * QoS 1/2 (queued for it, within its queue bounds), an offline one never gets QoS 0.
 * Sticky picks by rendezvous hashing of the publisher (its device id, else the topic) and
 * each member's client id. */
#include "protocols/mqtt/share.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/mqtt/broker_int.h"

/* ---- pure part ---- */

void share_groups_init(struct share_groups *sg)
{
    memset(sg, 0, sizeof *sg);
    map_init(&sg->by_key);
}

void share_groups_fini(struct share_groups *sg)
{
    for (size_t i = 1; i < sg->cap_idx; i++) {
        struct share_group *g = sg->by_idx[i];
        if (!g)
            continue;
        free(g->m);
        free(g->key);
        free(g);
    }
    free(sg->by_idx);
    map_fini(&sg->by_key);
    memset(sg, 0, sizeof *sg);
}

/* "<name>/<filter>" into a heap string. */
static char *group_key(const char *name, size_t name_len, const char *filter, size_t filter_len)
{
    char *k = xmalloc(name_len + 1 + filter_len + 1);
    memcpy(k, name, name_len);
    k[name_len] = '/';
    memcpy(k + name_len + 1, filter, filter_len);
    k[name_len + 1 + filter_len] = '\0';
    return k;
}

struct share_group *share_group_get(const struct share_groups *sg, const char *name,
                                    size_t name_len, const char *filter, size_t filter_len)
{
    char stack[256], *k = stack;
    size_t n = name_len + 1 + filter_len;
    struct share_group *g;
    if (n + 1 > sizeof stack)
        k = xmalloc(n + 1);
    memcpy(k, name, name_len);
    k[name_len] = '/';
    memcpy(k + name_len + 1, filter, filter_len);
    g = map_get(&sg->by_key, k, n);
    if (k != stack)
        free(k);
    return g;
}

struct share_group *share_group_at(const struct share_groups *sg, uint16_t idx)
{
    return idx && idx < sg->cap_idx ? sg->by_idx[idx] : NULL;
}

/* A free index, 0 when SHARE_MAX_GROUPS are in use. */
static uint16_t free_idx(struct share_groups *sg)
{
    size_t i;
    for (i = sg->free_from ? sg->free_from : 1; i < sg->cap_idx; i++)
        if (!sg->by_idx[i])
            return (uint16_t)(sg->free_from = i);
    if (i > SHARE_MAX_GROUPS)
        return 0;
    sg->cap_idx = sg->cap_idx ? sg->cap_idx * 2 : 16;
    if (sg->cap_idx > SHARE_MAX_GROUPS + 1)
        sg->cap_idx = SHARE_MAX_GROUPS + 1;
    sg->by_idx = xrealloc(sg->by_idx, sg->cap_idx * sizeof *sg->by_idx);
    memset(sg->by_idx + i, 0, (sg->cap_idx - i) * sizeof *sg->by_idx);
    return (uint16_t)(sg->free_from = i);
}

int share_join(struct share_groups *sg, const char *name, size_t name_len, const char *filter,
               size_t filter_len, void *sub, uint64_t hid, uint8_t qos, uint32_t opts,
               struct share_group **out)
{
    struct share_group *g = share_group_get(sg, name, name_len, filter, filter_len);
    int created = 0;

    if (!g) {
        uint16_t idx = free_idx(sg);
        if (!idx)
            return GW_ELIMIT;
        g = xcalloc(1, sizeof *g);
        g->key = group_key(name, name_len, filter, filter_len);
        g->name_len = name_len;
        g->idx = idx;
        sg->by_idx[idx] = g;
        map_put(&sg->by_key, g->key, name_len + 1 + filter_len, g);
        created = 1;
    }
    *out = g;
    opts &= ~(SHARE_OPT_GROUP | SHARE_OPT_MEMBER);
    for (uint32_t i = 0; i < g->n; i++) {
        if (g->m[i].sub == sub) {
            g->m[i].qos = qos;
            g->m[i].opts = opts;
            return created;
        }
    }
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 4;
        g->m = xrealloc(g->m, g->cap * sizeof *g->m);
    }
    g->m[g->n++] = (struct share_member){sub, hid, opts, qos};
    sg->members++;
    return created;
}

bool share_leave(struct share_groups *sg, struct share_group *g, void *sub)
{
    for (uint32_t i = 0; i < g->n; i++) {
        if (g->m[i].sub != sub)
            continue;
        memmove(&g->m[i], &g->m[i + 1], (g->n - i - 1) * sizeof *g->m);
        g->n--;
        sg->members--;
        /* the turn stays with the member that had it */
        if (g->next > i)
            g->next--;
        if (g->next >= g->n)
            g->next = 0;
        return true;
    }
    return false;
}

void share_group_free(struct share_groups *sg, struct share_group *g)
{
    sg->members -= g->n;
    map_del(&sg->by_key, g->key, strlen(g->key));
    sg->by_idx[g->idx] = NULL;
    if (g->idx < sg->free_from)
        sg->free_from = g->idx;
    free(g->m);
    free(g->key);
    free(g);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

struct share_member *share_pick(struct share_group *g, enum share_strategy how, uint8_t qos,
                                const char *key, size_t key_len, share_fit_fn fit, void *ctx)
{
    uint32_t n = g->n;
    int64_t later = -1, best = -1;

    if (n == 0)
        return NULL;
    if (how == SHARE_STICKY) {
        uint64_t kh = map_hash(key, key_len), top = 0;
        for (uint32_t i = 0; i < n; i++) {
            struct share_member *mb = &g->m[i];
            uint64_t w = mix64(kh ^ mb->hid);
            if ((best < 0 || w > top) &&
                fit(ctx, mb->sub, qos < mb->qos ? qos : mb->qos) != SHARE_FIT_NO) {
                best = i;
                top = w;
            }
        }
        return best < 0 ? NULL : &g->m[best];
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (g->next + k) % n;
        struct share_member *mb = &g->m[i];
        enum share_fit f = fit(ctx, mb->sub, qos < mb->qos ? qos : mb->qos);
        if (f == SHARE_FIT_NOW) {
            best = i;
            break;
        }
        if (f == SHARE_FIT_LATER && later < 0)
            later = i;
    }
    if (best < 0)
        best = later;
    if (best < 0)
        return NULL;
    g->next = (uint32_t)(best + 1) % n;
    return &g->m[best];
}

int share_parse(const char *filter, size_t len, struct mqtt_str *name, struct mqtt_str *inner)
{
    struct mqtt_str nm;
    int r = mqtt_filter_share(filter, len, &nm, inner);
    if (r == 0) {
        inner->p = filter;
        inner->len = len;
    }
    if (r == 1 && name)
        *name = nm;
    return r;
}

/* ---- the broker's side ---- */

static struct share_groups *groups_of(struct mqtt_broker *b)
{
    if (!b->share) {
        b->share = xmalloc(sizeof *b->share);
        share_groups_init(b->share);
    }
    return b->share;
}

/* Removes group g (empty) from the router and frees it. */
static void drop_group(struct mqtt_broker *b, struct share_group *g)
{
    const char *filter = g->key + g->name_len + 1;
    mqtt_router_unsubscribe(b->router, filter, strlen(filter), g);
    share_group_free(b->share, g);
}

int share_subscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                    size_t len, uint8_t qos, uint32_t opts)
{
    struct mqtt_str name, inner;
    struct share_group *g;
    int r;

    if (share_parse(filter, len, &name, &inner) != 1)
        return mqtt_router_subscribe_opts(b->router, filter, len, s, qos, opts);
    r = share_join(groups_of(b), name.p, name.len, inner.p, inner.len, s,
                   map_hash(s->client_id, strlen(s->client_id)), qos, opts, &g);
    if (r < 0)
        return r;
    /* the group takes every QoS: each member gets min(published, its own) */
    if (r == 1 &&
        mqtt_router_subscribe_opts(b->router, inner.p, inner.len, g, 2, SHARE_OPT_GROUP) < 0) {
        share_leave(b->share, g, s);
        share_group_free(b->share, g);
        return GW_EINVAL;
    }
    r = mqtt_router_subscribe_opts(b->router, filter, len, s, qos, opts | SHARE_OPT_MEMBER);
    if (r < 0) {
        share_leave(b->share, g, s);
        if (g->n == 0)
            drop_group(b, g);
    }
    return r;
}

struct handover {
    struct mqtt_broker *b;
    struct share_group *g;
    bool gone;              /* the session goes: what is kept is lost */
    size_t kept;
};

struct fit_ctx {
    struct mqtt_broker *b;
    const struct msg *m;
};

static enum share_fit fit_member(void *ctx, void *sub, uint8_t qos)
{
    struct fit_ctx *fc = ctx;
    return broker_share_fit(fc->b, sub, fc->m, qos);
}

/* The publisher key for sticky picking: the device that published, else the topic. */
static const char *sticky_key(const struct msg *m, size_t *len)
{
    const char *k = m->device[0] ? m->device : m->topic;
    *len = strlen(k);
    return k;
}

/* One member of g gets m: false when none can take it. */
static bool route_one(struct mqtt_broker *b, struct share_group *g, struct msg *m, uint8_t qos)
{
    size_t klen = 0;
    const char *key = NULL;
    enum share_strategy how = (enum share_strategy)b->gw->cfg->mqtt.shared_strategy;
    struct fit_ctx fc = {b, m};
    struct share_member *mb;

    if (how == SHARE_STICKY)
        key = sticky_key(m, &klen);
    mb = share_pick(g, how, qos, key, klen, fit_member, &fc);
    if (!mb)
        return false;
    g->sent++;
    b->gw->metrics.mqtt_shared_sent++;
    broker_share_deliver(b, mb->sub, m, qos < mb->qos ? qos : mb->qos, g->idx, mb->opts);
    return true;
}

static bool give_to_group(void *ctx, struct msg *m, uint8_t qos)
{
    struct handover *h = ctx;
    if (route_one(h->b, h->g, m, qos))
        return true;
    h->kept++;
    if (h->gone)
        h->b->gw->metrics.mqtt_shared_dropped++;
    return false;
}

/* s left g: what came through g and waits for s goes to the other members. */
static void hand_over(struct mqtt_broker *b, struct mqtt_session *s, struct share_group *g,
                      bool gone)
{
    struct handover h = {b, g, gone, 0};
    size_t moved = broker_share_take(b, s, g->idx, give_to_group, &h);
    if (moved || h.kept)
        log_info("mqtt client=\"%s\" left shared subscription share=\"%s\" filter=\"%s\" "
                 "handed_over=%zu %s=%zu",
                 log_q(s->client_id), log_qn(g->key, g->name_len), log_q(g->key + g->name_len + 1),
                 moved, gone ? "lost" : "kept", h.kept);
}

/* s leaves g (its router entry is gone or going): hand over, then drop an empty group. */
static void leave(struct mqtt_broker *b, struct mqtt_session *s, struct share_group *g,
                  bool gone)
{
    if (!share_leave(b->share, g, s))
        return;
    hand_over(b, s, g, gone);
    if (g->n == 0)
        drop_group(b, g);
}

int share_unsubscribe(struct mqtt_broker *b, struct mqtt_session *s, const char *filter,
                      size_t len)
{
    struct mqtt_str name, inner;
    struct share_group *g;

    if (mqtt_router_unsubscribe(b->router, filter, len, s) != 1)
        return 0;
    if (b->share && share_parse(filter, len, &name, &inner) == 1 &&
        (g = share_group_get(b->share, name.p, name.len, inner.p, inner.len)) != NULL)
        leave(b, s, g, false);
    return 1;
}

struct member_filters {
    char **f;
    size_t n, cap;
};

static void collect_member(void *ctx, const char *filter, size_t len, uint8_t qos, uint32_t opts)
{
    struct member_filters *mf = ctx;
    (void)qos;
    if (!(opts & SHARE_OPT_MEMBER))
        return;
    if (mf->n == mf->cap) {
        mf->cap = mf->cap ? mf->cap * 2 : 4;
        mf->f = xrealloc(mf->f, mf->cap * sizeof *mf->f);
    }
    mf->f[mf->n++] = xstrndup(filter, len);
}

void share_session_gone(struct mqtt_broker *b, struct mqtt_session *s)
{
    struct member_filters mf = {0};

    if (!b->share || b->share->members == 0)
        return;
    /* the router cannot change while it lists */
    mqtt_router_list(b->router, s, collect_member, &mf);
    for (size_t i = 0; i < mf.n; i++) {
        struct mqtt_str name, inner;
        struct share_group *g;
        size_t len = strlen(mf.f[i]);
        mqtt_router_unsubscribe(b->router, mf.f[i], len, s);
        if (share_parse(mf.f[i], len, &name, &inner) == 1 &&
            (g = share_group_get(b->share, name.p, name.len, inner.p, inner.len)) != NULL)
            leave(b, s, g, true);
        free(mf.f[i]);
    }
    free(mf.f);
}

void share_route(struct mqtt_broker *b, struct share_group *g, struct msg *m)
{
    if (route_one(b, g, m, m->qos))
        return;
    b->gw->metrics.mqtt_shared_dropped++;
}

size_t share_group_count(const struct mqtt_broker *b)
{
    return b->share ? b->share->by_key.len : 0;
}

void share_free(struct mqtt_broker *b)
{
    if (!b->share)
        return;
    share_groups_fini(b->share);
    free(b->share);
    b->share = NULL;
}
