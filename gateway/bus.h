/* gateway/bus.h: fan-out of published messages to sinks, on the loop thread.
 * bus_publish() stamps m->seq and calls every sink in registration order; a sink
 * that keeps the message takes a reference (msg_ref). */
#ifndef GALE_BUS_H
#define GALE_BUS_H

#include <stdint.h>

#include "gateway/msg.h"

typedef void (*bus_sink_fn)(void *ctx, struct msg *m);

struct bus;

struct bus *bus_new(void);
void bus_free(struct bus *b);
void bus_add_sink(struct bus *b, const char *name, bus_sink_fn fn, void *ctx);
/* m is borrowed; returns the seq it was given. */
uint64_t bus_publish(struct bus *b, struct msg *m);
/* Sequence of the last published message. */
uint64_t bus_last_seq(const struct bus *b);

#endif
