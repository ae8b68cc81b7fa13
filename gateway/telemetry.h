/* gateway/telemetry.h: decodes telemetry JSON once into points.
 * Accepted shapes (DESIGN.md "Telemetry payloads"):
 *   {"temp":21.5,"on":true}                 values at now_ms
 *   {"ts":1700000000000,"values":{...}}     values at ts (epoch ms)
 *   [ <either of the above>, ... ]
 * Values: number, boolean, string, or JSON object/array (kept as compact JSON text).
 * null values are skipped. A "seq" member at top level of an object is not a value:
 * it is returned in *seq (line protocol and device WebSocket acks) — only for a
 * single top-level object, not inside arrays.
 * Pure: no I/O, no clock (the caller passes now_ms). */
#ifndef GALE_TELEMETRY_H
#define GALE_TELEMETRY_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/msg.h"

struct telem_limits {
    size_t max_points;    /* reject payloads with more values than this */
    size_t max_key_bytes; /* reject keys longer than this (default 128) */
};

struct telem {
    struct point *points; /* heap array, owned; keys/strings point into arena */
    size_t npoints;
    char *arena;          /* heap, owned: every key and string value */
    int has_seq;          /* 1 when a top-level "seq" number was present */
    int64_t seq;          /* its value */
};

/* Returns 0 and fills *out (free with telem_fini), or -1 with *why set to a static
 * reason ("invalid JSON", "expected an object or array", "ts must be an integer
 * (epoch ms)", "values must be an object", "too many values", "key too long",
 * "empty telemetry", ...) and *code to a machine code ("bad_json", "bad_shape",
 * "bad_ts", "too_many_values", "bad_key"). */
int telem_decode(const struct telem_limits *lim, const char *json, size_t len, int64_t now_ms,
                 struct telem *out, const char **why, const char **code);
void telem_fini(struct telem *t);

#endif
