/* gateway/bus.c: see bus.h. A handful of sinks; a plain array suffices. */
#include "gateway/bus.h"

#include <stdlib.h>

#include "base/alloc.h"

#define BUS_MAX_SINKS 8

struct bus_sink {
    const char *name;
    bus_sink_fn fn;
    void *ctx;
};

struct bus {
    struct bus_sink sinks[BUS_MAX_SINKS];
    int nsinks;
    uint64_t seq; /* last seq handed out */
};

struct bus *bus_new(void)
{
    return xcalloc(1, sizeof(struct bus));
}

void bus_free(struct bus *b)
{
    free(b);
}

void bus_add_sink(struct bus *b, const char *name, bus_sink_fn fn, void *ctx)
{
    if (b->nsinks == BUS_MAX_SINKS)
        abort(); /* programming error: raise BUS_MAX_SINKS */
    b->sinks[b->nsinks++] = (struct bus_sink){name, fn, ctx};
}

void bus_publish(struct bus *b, struct msg *m, struct ticket *t)
{
    struct ticket local = {0, 0};

    if (!t)
        t = &local;
    m->seq = ++b->seq;
    for (int i = 0; i < b->nsinks; i++)
        b->sinks[i].fn(b->sinks[i].ctx, m, t);
}
