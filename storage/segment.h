/* storage/segment.h: the binary form of one group commit's points (a row of the
 * segments table, DESIGN.md "Storage"). Pure: no SQLite, no libuv; any thread.
 *
 * Committing a segment is what makes its points durable; the writer later moves them
 * into per-series chunks and deletes the segment. A segment is read back only on
 * start, to replay what was not yet chunked, so the decoder treats its input as
 * untrusted: every length is checked, nothing is allocated.
 *
 * Layout (varints LEB128): u8 SEGMENT_VERSION, then per point
 *   varint series id, zigzag varint of (ts - previous point's ts; the first against 0),
 *   u8 type (enum val_type), value: VAL_NUM 8 bytes (the double's bits, little-endian),
 *   VAL_BOOL u8 0|1, VAL_STR/VAL_JSON varint length + bytes.
 * About 12 bytes per numeric point of a 1000-device fleet. */
#ifndef GALE_STORAGE_SEGMENT_H
#define GALE_STORAGE_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/msg.h"

#define SEGMENT_VERSION 1

/* Builds a segment in a caller-owned buffer. */
struct segment_enc {
    struct buf *out;   /* the blob so far */
    int64_t prev_ts;   /* ts of the last point added */
    uint32_t npoints;  /* points added */
};

/* Empties out and starts a segment in it. */
void segment_enc_start(struct segment_enc *e, struct buf *out);
/* Appends p of series sid (p's key is not stored: sid names the series). */
void segment_enc_add(struct segment_enc *e, int64_t sid, const struct point *p);

struct segment_reader {
    const uint8_t *p, *end;
    int64_t prev_ts;
};

/* Starts reading blob[0..len): 0, or GW_EINVAL with *why (static) for an unknown
 * version or an empty blob. */
int segment_read_start(struct segment_reader *r, const uint8_t *blob, size_t len,
                       const char **why);
/* The next point: 1 (sid and p set; p->str points into the blob, not NUL-terminated,
 * p->key NULL), 0 at the end, or GW_EINVAL with *why for a truncated or malformed
 * point (an unknown type, a bool other than 0/1, a length past the end). */
int segment_read_next(struct segment_reader *r, int64_t *sid, struct point *p,
                      const char **why);

#endif
