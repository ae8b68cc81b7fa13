/* base/hist.h: a latency histogram with fixed buckets, as Prometheus exposes one.
 * The bucket bounds are the same for every histogram of the process (HIST_BOUNDS_US),
 * so one written on a thread can be copied to another and rendered there. Plain
 * integers: the caller says which thread writes (or which lock guards) each one. */
#ifndef GALE_HIST_H
#define GALE_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_NBOUNDS 16 /* finite upper bounds; one more bucket holds the rest (+Inf) */

/* Upper bounds of the buckets, microseconds, increasing: 100 us ... 10 s. */
extern const uint64_t hist_bounds_us[HIST_NBOUNDS];

struct hist {
    uint64_t counts[HIST_NBOUNDS + 1]; /* per bucket (not cumulative); [HIST_NBOUNDS]: > 10 s */
    uint64_t count;                    /* observations */
    uint64_t sum_us;                   /* their sum, microseconds */
};

/* Counts one observation of us microseconds. */
void hist_observe(struct hist *h, uint64_t us);

#endif
