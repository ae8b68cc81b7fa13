/* gateway/health.h: `gale --health`, the probe a container's HEALTHCHECK runs, and the
 * file it reads.
 *
 * A running gale writes <data_dir>/listeners once its listeners are bound (one
 * "<name> <bind> <port>" line each: http, line, mqtt, https, lines, mqtts) and removes it
 * at a clean stop. The probe reads the same configuration the server does (file < env <
 * flags), takes the HTTP address from that file when there is one (a port picked at
 * random, or set by a flag only the server saw), else from http.bind and http.port, and
 * asks GET /api/health with a deadline. Plain blocking sockets: never on the loop. */
#ifndef GALE_GATEWAY_HEALTH_H
#define GALE_GATEWAY_HEALTH_H

#include <stddef.h>
#include <stdio.h>

struct health_listener {
    const char *name; /* "http", "line", "mqtt", "https", "lines", "mqtts" */
    const char *bind; /* the address it is bound to */
    int port;         /* the bound port (resolved when 0 was asked) */
};

/* Replaces <data_dir>/listeners with one line per listener (written under a temporary
 * name, then renamed). Returns 0 or -errno. */
int health_record(const char *data_dir, const struct health_listener *ls, size_t n);

/* Removes <data_dir>/listeners (a clean stop). */
void health_forget(const char *data_dir);

/* Probes the gale whose data dir and HTTP listener the arguments name; prints one line
 * to out (healthy or why not). Returns 0 when /api/health answered 200 within
 * timeout_ms, 1 otherwise. */
int health_probe(const char *data_dir, const char *http_bind, int port, int timeout_ms, FILE *out);

#endif
