/* gateway/guard.h: what a connection may cost before it has proven itself, and how
 * fast a device may send once it has.
 *
 * Pre-authentication budgets (README "Security"): until conn_authenticated, a
 * connection counts against its peer address (limits.max_connections_per_ip) and the
 * memory it makes the gateway hold counts against one budget shared by every such
 * connection (limits.preauth_total_bytes): its unconsumed input and what its protocol and
 * transport assembled from it (c->x->proto_held, c->x->xport_held: an HTTP head and body, a
 * fragmented WebSocket message); its first packet, line or message is capped at
 * limits.preauth_max_bytes (guard_cap, applied by each protocol where it knows the
 * declared size). conn.c calls the four hooks; nothing else changes the counts. Every
 * function takes a NULL guard (none wired, as in unit tests) and then limits nothing.
 *
 * When the unauthenticated connections of an episode of a thousand or more are all gone,
 * the heap's free pages go back to the system (malloc_trim), so RSS returns to where it
 * was before the flood.
 *
 * Per-device message rate: a token bucket per device id (limits.device_rate_msgs_per_s,
 * limits.device_rate_burst), shared by all its connections and transports.
 *
 * Loop thread only. */
#ifndef GALE_GUARD_H
#define GALE_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct conn;
struct guard;
struct metrics;

/* cfg and m are borrowed for the guard's lifetime. */
struct guard *guard_new(const struct config *cfg, struct metrics *m);
/* The connections it counted must be gone (closed). NULL is ignored. */
void guard_free(struct guard *g);

/* ---- conn.c's hooks ---- */

/* A connection was accepted (c->peer is set). Returns NULL and counts c against its
 * address, or a static reason to refuse it: its address has max_connections_per_ip
 * connections still authenticating, or the pre-auth byte budget is spent. */
const char *guard_accept(struct guard *g, struct conn *c);
/* c now holds held bytes of input it has not consumed, besides c->x->proto_held and
 * c->x->xport_held. Returns NULL, or a static reason to close it: unauthenticated, its
 * unconsumed input is more than preauth_max_bytes, or all it holds would take all
 * unauthenticated connections past preauth_total_bytes. An authenticated connection
 * always gets NULL. */
const char *guard_held(struct guard *g, struct conn *c, size_t held);
/* c authenticated: it stops counting against its address and the byte budget. */
void guard_authenticated(struct guard *g, struct conn *c);
/* c closed: whatever it still counted is released. */
void guard_close(struct guard *g, struct conn *c);

/* ---- for protocols ---- */

/* limit, or limits.preauth_max_bytes when that is smaller and c has not authenticated
 * yet: the size cap of what c may send before it has. */
size_t guard_cap(const struct conn *c, size_t limit);

enum guard_rate {
    GUARD_RATE_OK = 0,
    GUARD_RATE_DROP,        /* over the rate: do not take the message */
    GUARD_RATE_DISCONNECT,  /* over the rate: close the connection */
};
/* One message from device (an id of up to 64 bytes) at now_ms (monotonic). Over its
 * rate, the configured action is counted in metrics (gale_rate_limited_total) and
 * returned. NULL g (no guard wired) always allows. */
enum guard_rate guard_rate(struct guard *g, const char *device, uint64_t now_ms);

/* Bytes the unauthenticated connections hold now, as counted at their last check (for
 * tests and metrics). */
size_t guard_preauth_bytes(const struct guard *g);

#endif
