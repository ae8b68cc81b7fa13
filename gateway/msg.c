/* gateway/msg.c: packs a message and its strings into one allocation. */
#include "gateway/msg.h"

#include <string.h>

#include "base/alloc.h"

struct msg *msg_new(enum msg_kind kind, const char *device, const char *topic,
                    const void *payload, size_t payload_len, const struct point *points,
                    size_t npoints)
{
    size_t dlen = device ? strlen(device) : 0, tlen = topic ? strlen(topic) : 0;
    size_t size = sizeof(struct msg), off;
    struct msg *m;
    char *p;

    /* points first (aligned), then strings */
    size += npoints * sizeof(struct point);
    for (size_t i = 0; i < npoints; i++) {
        size += strlen(points[i].key) + 1;
        if (points[i].type == VAL_STR || points[i].type == VAL_JSON)
            size += points[i].str_len + 1;
    }
    size += dlen + 1 + tlen + 1 + payload_len + 1;
    m = xmalloc(size);
    memset(m, 0, sizeof *m);
    atomic_init(&m->refs, 1);
    m->kind = kind;
    m->npoints = npoints;
    m->points = (struct point *)m->data;
    off = npoints * sizeof(struct point);
    p = m->data + off;
    for (size_t i = 0; i < npoints; i++) {
        struct point *d = &m->points[i];
        size_t kl = strlen(points[i].key);
        *d = points[i];
        memcpy(p, points[i].key, kl + 1);
        d->key = p;
        p += kl + 1;
        if (d->type == VAL_STR || d->type == VAL_JSON) {
            memcpy(p, points[i].str, points[i].str_len);
            p[points[i].str_len] = '\0';
            d->str = p;
            p += points[i].str_len + 1;
        } else {
            d->str = NULL;
            d->str_len = 0;
        }
    }
    memcpy(p, device ? device : "", dlen + 1);
    m->device = p;
    p += dlen + 1;
    memcpy(p, topic ? topic : "", tlen + 1);
    m->topic = p;
    p += tlen + 1;
    if (payload_len)
        memcpy(p, payload, payload_len);
    p[payload_len] = '\0';
    m->payload = (const uint8_t *)p;
    m->payload_len = payload_len;
    return m;
}

void msg_set_props(struct msg *m, const void *p, size_t len)
{
    free(m->props);
    m->props = NULL;
    m->props_len = 0;
    if (len) {
        m->props = xmalloc(len);
        memcpy(m->props, p, len);
        m->props_len = (uint32_t)len;
    }
}
