/* base/hist.c: fixed-bucket latency histograms (see hist.h). */
#include "base/hist.h"

const uint64_t hist_bounds_us[HIST_NBOUNDS] = {
    100,    250,    500,     1000,    2500,    5000,    10000,   25000,
    50000,  100000, 250000,  500000,  1000000, 2500000, 5000000, 10000000,
};

void hist_observe(struct hist *h, uint64_t us)
{
    size_t i = 0;
    while (i < HIST_NBOUNDS && us > hist_bounds_us[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum_us += us;
}
