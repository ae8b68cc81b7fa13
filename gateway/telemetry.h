/* gateway/telemetry.h: decodes telemetry JSON once into points.
 * Accepted shapes (DESIGN.md "Telemetry payloads"):
 *   {"temp":21.5,"on":true}                 values at now_ms
 *   {"ts":1700000000000,"values":{...}}     values at ts (epoch ms)
 *   {"ts":"2026-03-29T12:00:00Z","values":{...}}   the same with an RFC 3339 ts
 *   [ <either of the above>, ... ]
 *   {"seq":N,"batch":[ <either of the above>, ... ]}   the batch envelope: an array
 *                                           with one seq for all of it
 * Values: number, boolean, string, or JSON object/array (kept as compact JSON text).
 * null values are skipped. A "seq" member at top level of a single object or of the
 * batch envelope is not a value: it is returned in out->seq (line protocol and device
 * WebSocket acks); inside an array it is refused.
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
    int has_seq;          /* 1 when a valid top-level "seq" was present (also set when
                           * the payload was refused, so its error can carry it) */
    int64_t seq;          /* its value */
};

/* Returns 0 and fills *out (free with telem_fini), or -1 with *why set to a static
 * reason ("invalid JSON", "expected an object or array", "ts must be epoch ms (an
 * integer) or an RFC 3339 time ...", "values must be an object", "too many values",
 * "key too long", "empty telemetry", ...) and *code to a machine code ("bad_json",
 * "bad_shape", "bad_ts", "too_many_values", "bad_key"). On -1 only out->has_seq and
 * out->seq may be set: when the JSON parsed and carried a valid top-level seq. */
int telem_decode(const struct telem_limits *lim, const char *json, size_t len, int64_t now_ms,
                 struct telem *out, const char **why, const char **code);
void telem_fini(struct telem *t);

#endif
