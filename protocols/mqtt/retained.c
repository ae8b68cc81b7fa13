/* protocols/mqtt/retained.c: retained messages by topic. Loop thread only.
 *
 * A trie of topic levels (one node per level, children in a map by level text), so a
 * new subscription visits only the topics its filter can match: a device subscribing
 * to devices/<id>/# on connect walks its own subtree, not every retained message of
 * the fleet. Every message is also in a flat map by topic (exact lookups, counting).
 * Nodes left without a message and without children are freed at once.
 *
 * The match walk uses an explicit stack: a topic may have 32k levels. */
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "protocols/mqtt/broker_int.h"

struct ret_node {
    struct ret_node *parent; /* NULL for the root */
    struct map children;     /* level text -> struct ret_node */
    struct retained *r;      /* the message retained on the topic ending here, or NULL */
    size_t len;              /* bytes of level[] */
    char level[];            /* this level's text, NUL-terminated (the parent's map key) */
};

static struct ret_node *node_new(struct ret_node *parent, const char *level, size_t len)
{
    struct ret_node *n = xcalloc(1, sizeof *n + len + 1);
    n->parent = parent;
    map_init(&n->children);
    n->len = len;
    memcpy(n->level, level, len);
    if (parent)
        map_put(&parent->children, n->level, len, n);
    return n;
}

void retained_init(struct retained_store *rs)
{
    rs->root = node_new(NULL, "", 0);
    map_init(&rs->by_topic);
}

static void free_retained(struct retained *r)
{
    msg_unref(r->m);
    free(r->topic);
    free(r);
}

void retained_fini(struct retained_store *rs)
{
    struct ret_node **stack;
    size_t n = 0, cap = 16;

    if (!rs->root)
        return;
    stack = xmalloc(cap * sizeof *stack);
    stack[n++] = rs->root;
    while (n) {
        struct ret_node *node = stack[--n];
        size_t it = 0;
        void *v;
        while (map_next(&node->children, &it, NULL, &v)) {
            if (n == cap)
                stack = xrealloc(stack, (cap *= 2) * sizeof *stack);
            stack[n++] = v;
        }
        if (node->r)
            free_retained(node->r);
        map_fini(&node->children);
        free(node);
    }
    free(stack);
    map_fini(&rs->by_topic);
    rs->root = NULL;
}

/* Frees n and its ancestors while they hold nothing. */
static void prune(struct ret_node *n)
{
    while (n->parent && !n->r && n->children.len == 0) {
        struct ret_node *p = n->parent;
        map_del(&p->children, n->level, n->len);
        map_fini(&n->children);
        free(n);
        n = p;
    }
}

void retained_put(struct retained_store *rs, struct msg *m)
{
    size_t tlen = strlen(m->topic), off = 0;
    struct retained *r = map_get(&rs->by_topic, m->topic, tlen);
    struct ret_node *n;

    if (m->payload_len == 0) { /* an empty retained message clears the topic */
        if (r) {
            map_del(&rs->by_topic, m->topic, tlen);
            r->node->r = NULL;
            prune(r->node);
            free_retained(r);
        }
        return;
    }
    if (r) {
        msg_unref(r->m);
        r->m = msg_ref(m);
        r->qos = m->qos;
        return;
    }
    n = rs->root;
    for (;;) { /* one node per level, created as needed */
        const char *lvl = m->topic + off, *slash = memchr(lvl, '/', tlen - off);
        size_t len = slash ? (size_t)(slash - lvl) : tlen - off;
        struct ret_node *c = map_get(&n->children, lvl, len);
        n = c ? c : node_new(n, lvl, len);
        if (!slash)
            break;
        off += len + 1;
    }
    r = xcalloc(1, sizeof *r);
    r->topic = xstrdup(m->topic);
    r->m = msg_ref(m);
    r->qos = m->qos;
    r->node = n;
    n->r = r;
    map_put(&rs->by_topic, r->topic, tlen, r);
}

size_t retained_count(const struct retained_store *rs)
{
    return rs->by_topic.len;
}

struct walk {
    const struct ret_node **nodes; /* stack of nodes to visit */
    size_t *offs;                  /* with the filter offset of their level */
    size_t n, cap;
};

static void walk_push(struct walk *w, const struct ret_node *node, size_t off)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->nodes = xrealloc(w->nodes, w->cap * sizeof *w->nodes);
        w->offs = xrealloc(w->offs, w->cap * sizeof *w->offs);
    }
    w->nodes[w->n] = node;
    w->offs[w->n++] = off;
}

/* Pushes the children of n, leaving out '$' topics below the root: a filter that starts
 * with a wildcard does not match them [MQTT-4.7.2-1]. */
static void push_children(struct walk *w, const struct ret_node *n, size_t off)
{
    size_t it = 0;
    void *v;
    while (map_next(&n->children, &it, NULL, &v)) {
        const struct ret_node *c = v;
        if (!n->parent && c->len && c->level[0] == '$')
            continue;
        walk_push(w, c, off);
    }
}

#define WHOLE_SUBTREE ((size_t)-1)

void retained_match(const struct retained_store *rs, const char *filter, size_t len,
                    retained_fn fn, void *ctx)
{
    struct walk w = {0};

    if (!rs->root || len == 0)
        return;
    walk_push(&w, rs->root, 0);
    while (w.n) {
        const struct ret_node *n = w.nodes[--w.n];
        size_t off = w.offs[w.n], end, next;

        if (off == WHOLE_SUBTREE) { /* below a '#': everything */
            if (n->r)
                fn(ctx, n->r);
            push_children(&w, n, WHOLE_SUBTREE);
            continue;
        }
        if (off > len) { /* the filter ended at this level */
            if (n->r)
                fn(ctx, n->r);
            continue;
        }
        end = off;
        while (end < len && filter[end] != '/')
            end++;
        next = end == len ? len + 1 : end + 1;
        if (end - off == 1 && filter[off] == '#') {
            if (n->r) /* "sport/#" matches "sport" [MQTT-4.7.1-2] */
                fn(ctx, n->r);
            push_children(&w, n, WHOLE_SUBTREE);
        } else if (end - off == 1 && filter[off] == '+') {
            push_children(&w, n, next);
        } else {
            const struct ret_node *c = map_get(&n->children, filter + off, end - off);
            if (c)
                walk_push(&w, c, next);
        }
    }
    free(w.nodes);
    free(w.offs);
}
