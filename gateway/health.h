/* gateway/health.h: `gale --health`, the probe a container's HEALTHCHECK runs.
 *
 * A running gale records its HTTP listener's address in <data_dir>/gale.lock, the
 * file it holds locked (health_record, after the listeners are bound). The probe
 * reads the same configuration the server does (file < env < flags), takes the
 * address from that file when a gale recorded one there (a port picked at random,
 * or set by a flag only the server saw), else from http.bind and http.port, and asks
 * GET /api/health with a deadline. Plain blocking sockets: never on the loop. */
#ifndef GALE_GATEWAY_HEALTH_H
#define GALE_GATEWAY_HEALTH_H

#include <stdio.h>

/* Writes "<pid>\nhttp <bind> <port>\n" over the lock file fd. Returns 0 or -errno. */
int health_record(int lock_fd, const char *http_bind, int port);

/* Probes the gale whose data dir and HTTP listener the arguments name; prints one line
 * to out (healthy or why not). Returns 0 when /api/health answered 200 within
 * timeout_ms, 1 otherwise. */
int health_probe(const char *data_dir, const char *http_bind, int port, int timeout_ms, FILE *out);

#endif
