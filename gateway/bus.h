/* gateway/bus.h: fan-out of published messages to sinks, on the loop thread.
 * bus_publish() stamps m->seq and calls every sink in registration order; a sink
 * that keeps the message takes a reference (msg_ref), and a sink that writes to
 * storage adds each write's seq to the publisher's ticket. */
#ifndef GALE_BUS_H
#define GALE_BUS_H

#include <stdint.h>

#include "gateway/msg.h"
#include "gateway/ticket.h"

/* t: the publisher's ticket, or NULL when nobody waits for durability. */
typedef void (*bus_sink_fn)(void *ctx, struct msg *m, struct ticket *t);

struct bus;

struct bus *bus_new(void);
void bus_free(struct bus *b);
void bus_add_sink(struct bus *b, const char *name, bus_sink_fn fn, void *ctx);
/* m is borrowed; t (may be NULL) collects the writes the sinks made for m. */
void bus_publish(struct bus *b, struct msg *m, struct ticket *t);

#endif
