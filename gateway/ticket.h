/* gateway/ticket.h: durability tickets.
 *
 * Every write the loop hands to storage gets the next write seq. A ticket names the
 * writes one message caused (telemetry, a retained message, session queue entries,
 * device records) as the range [first, last] of their seqs: a message is handled
 * inside one loop callback, so nothing else writes in between. An ack waits on the
 * ticket (gw_await_durable) and fires only once every write in the range is
 * committed; when any of them failed, the device is told instead.
 * Plain values, loop thread only. */
#ifndef GALE_TICKET_H
#define GALE_TICKET_H

#include <stdbool.h>
#include <stdint.h>

struct ticket {
    uint64_t first; /* seq of the first write, 0 = none */
    uint64_t last;  /* seq of the last write */
};

/* Adds the write with seq to t (t may be NULL; seq 0 means nothing was written). */
static inline void ticket_add(struct ticket *t, uint64_t seq)
{
    if (!t || seq == 0)
        return;
    if (t->first == 0 || seq < t->first)
        t->first = seq;
    if (seq > t->last)
        t->last = seq;
}

/* The ticket of one write. */
static inline struct ticket ticket_one(uint64_t seq)
{
    return (struct ticket){seq, seq};
}

static inline bool ticket_empty(const struct ticket *t)
{
    return !t || t->first == 0;
}

#endif
