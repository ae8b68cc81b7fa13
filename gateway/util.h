/* gateway/util.h: allocation that never returns NULL, clocks, error codes.
 * xmalloc() and friends log and abort on failure: memory is bounded by the
 * limits in config, not by NULL checks at every call site. */
#ifndef GALE_UTIL_H
#define GALE_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Wall clock in epoch milliseconds (telemetry timestamps). */
int64_t gw_now_ms(void);
/* Monotonic clock in milliseconds (timeouts, rates). */
uint64_t gw_mono_ms(void);

/* Gale's own error codes live below libuv's range; libuv codes pass through. */
enum gw_err {
    GW_EINVAL = -10001,  /* invalid argument or input */
    GW_ESTORE = -10002,  /* storage failure */
    GW_ECONFIG = -10003, /* invalid configuration */
    GW_ENOENT = -10004,  /* no such object */
    GW_EEXIST = -10005,  /* object exists */
    GW_ELIMIT = -10006,  /* a configured limit was reached */
};
const char *gw_strerror(int err);

/* Device ids: 1..64 chars of [A-Za-z0-9_.:-]. Returns 1 when valid. */
int gw_valid_device_id(const char *s, size_t len);

#endif
