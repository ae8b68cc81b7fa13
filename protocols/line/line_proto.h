/* protocols/line/line_proto.h: the line protocol's connection handler. */
#ifndef GALE_LINE_PROTO_H
#define GALE_LINE_PROTO_H

#include <stddef.h>

#include "gateway/conn.h"

extern const struct proto_ops line_proto;
/* Writes {"command":<json>} as one line to a line-protocol connection. */
void line_send_command(struct conn *c, const char *json, size_t len);

#endif
