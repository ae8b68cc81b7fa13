/* protocols/line/line_proto.h: the line protocol's connection handler. */
#ifndef GALE_LINE_PROTO_H
#define GALE_LINE_PROTO_H

#include "gateway/conn.h"

extern const struct proto_ops line_proto;

#endif
