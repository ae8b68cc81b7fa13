/* gateway/bus.h: fan-out of published messages to sinks, on the loop thread.
 * bus_publish() stamps m->seq and calls every sink in registration order; a sink
 * that keeps the message takes a reference (msg_ref), and a sink that writes to
 * storage adds each write's seq to the publisher's ticket, so a later sink sees the
 * seqs of the writes the earlier ones made (the "latest" sink follows "storage"). */
#ifndef GALE_BUS_H
#define GALE_BUS_H

#include <stdint.h>

#include "gateway/msg.h"
#include "gateway/ticket.h"

/* t: never NULL; the publisher's ticket, or one of bus_publish's own when nobody waits. */
typedef void (*bus_sink_fn)(void *ctx, struct msg *m, struct ticket *t);

struct bus;

struct bus *bus_new(void);
void bus_free(struct bus *b);
void bus_add_sink(struct bus *b, const char *name, bus_sink_fn fn, void *ctx);
/* m is borrowed; t (may be NULL: the sinks get a local ticket) collects the writes the
 * sinks made for m. */
void bus_publish(struct bus *b, struct msg *m, struct ticket *t);

#endif
