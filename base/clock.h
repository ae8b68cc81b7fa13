/* base/clock.h: the two clocks. Any thread. */
#ifndef GALE_CLOCK_H
#define GALE_CLOCK_H

#include <stdint.h>

/* Wall clock in epoch milliseconds (telemetry timestamps). */
int64_t gw_now_ms(void);
/* Monotonic clock in milliseconds (timeouts, rates). */
uint64_t gw_mono_ms(void);
/* Monotonic clock in microseconds (work budgets). */
uint64_t gw_mono_us(void);

#endif
