/* base/clock.h: the two clocks. Any thread. */
#ifndef GALE_CLOCK_H
#define GALE_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* Wall clock in epoch milliseconds (telemetry timestamps). */
int64_t gw_now_ms(void);
/* Monotonic clock in milliseconds (timeouts, rates). */
uint64_t gw_mono_ms(void);
/* Monotonic clock in microseconds (work budgets). */
uint64_t gw_mono_us(void);
/* An RFC 3339 time, NUL-terminated ("2026-03-29T00:00:00Z", "2026-03-29T01:30:00.250+02:00";
 * a space or t for T, z for Z; digits past milliseconds are cut) into epoch ms. Returns
 * false, *out untouched, when s is not one. Pure: any thread. */
bool gw_parse_rfc3339(const char *s, int64_t *out);

#endif
