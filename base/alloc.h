/* base/alloc.h: allocation that never returns NULL. xmalloc() and friends log and
 * abort on failure: memory is bounded by the limits in config, not by NULL checks
 * at every call site. Any thread. */
#ifndef GALE_ALLOC_H
#define GALE_ALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
