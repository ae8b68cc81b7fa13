/* storage/chunk.h: the column codec of a per-series chunk (the queryable form of
 * stored telemetry, DESIGN.md "Storage"). Pure: no SQLite, no libuv, no clock, no
 * globals; any thread, one encoder or decoded chunk per thread at a time.
 *
 * A chunk holds 1..CHUNK_MAX_POINTS points of one series in non-decreasing ts order
 * (equal timestamps are kept as given; the engine deduplicates before encoding). A
 * series may change type inside a chunk: a type column is written only when the chunk
 * holds more than one type. The blob is a fixed header (version, count, first/last ts,
 * the types present, and count/min/max/sum/first/last over the numeric points) that
 * chunk_stats() reads alone, then the columns, each preceded by its byte length:
 *   ts     delta-of-delta, bit-packed in buckets (Gorilla, VLDB 2015, sec. 4.1.1)
 *   type   2 bits per point (only when the chunk mixes types)
 *   num    VAL_NUM values, the smallest of: Gorilla XOR (sec. 4.1.2), or, when every
 *          value is m / 10^k for integers m and a k <= 15, zigzag varints of the
 *          deltas of m, or m's delta-of-delta bit-packed as the timestamps are
 *   bool   VAL_BOOL values, one bit each
 *   str    VAL_STR and VAL_JSON texts, varint length-prefixed (a repeat of the
 *          previous text is one byte), the column deflated when that is smaller
 * Every double round-trips bit-exactly (NaN payloads, -0.0, infinities, subnormals),
 * every int64 timestamp too. README "Storage" describes the byte layout. */
#ifndef GALE_STORAGE_CHUNK_H
#define GALE_STORAGE_CHUNK_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "gateway/msg.h"

#define CHUNK_VERSION 1
#define CHUNK_MAX_POINTS 4096              /* points per chunk, encoder and decoder */
#define CHUNK_MAX_STR_BYTES (8u << 20)     /* string/JSON bytes per chunk, undeflated */
#define CHUNK_HEADER_BYTES 72              /* what chunk_stats() reads */

/* What the header says; an aggregate over a whole chunk reads only this. The numeric
 * fields cover the VAL_NUM and VAL_BOOL points (a bool counts as 0 or 1), in ts order,
 * as storage/query.c aggregates them: sum adds left to right, min/max start at the
 * first numeric value and are replaced by a strictly smaller/larger one (so a NaN
 * first value stays); a NaN sum is the quiet NaN 0x7ff8000000000000 whatever the
 * NaNs added (so every build writes the same bits). They are +0.0 when nnum is 0. */
struct chunk_stats {
    uint32_t count;   /* points in the chunk, 1..CHUNK_MAX_POINTS */
    uint32_t nnum;    /* numeric points (VAL_NUM or VAL_BOOL), 0..count */
    unsigned types;   /* bit (1u << enum val_type) for each type present */
    int64_t first_ts; /* ts_ms of the first point */
    int64_t last_ts;  /* ts_ms of the last point, >= first_ts */
    double min, max, sum;
    double first, last; /* values of the first and last numeric point */
};

/* An encoder buffers the points of one chunk (columns are chosen at the end). */
struct chunk_enc {
    /* read-only */
    struct chunk_stats stats; /* of the points added so far (count 0: none) */
    /* private */
    int64_t *ts;            /* [count] */
    uint8_t *type;          /* [count] enum val_type */
    double *num;            /* [count] VAL_NUM value, VAL_BOOL 0/1, else 0 */
    size_t cap;             /* entries allocated in ts/type/num */
    struct buf strs;        /* the str column, undeflated */
    size_t str_bytes;       /* text bytes added (the CHUNK_MAX_STR_BYTES budget) */
    size_t prev_off, prev_len; /* the previous text, inside strs */
    int have_prev;          /* a text was added */
};

void chunk_enc_init(struct chunk_enc *e);
void chunk_enc_fini(struct chunk_enc *e);
/* Appends one point (its key is ignored; str is copied). Returns 0; GW_EINVAL when p
 * is before the last point added (out of order: nothing is reordered), its type is
 * unknown, a VAL_BOOL num is not exactly 0.0 or 1.0, or str is NULL with str_len > 0;
 * GW_ELIMIT when the chunk holds CHUNK_MAX_POINTS points or the text would pass
 * CHUNK_MAX_STR_BYTES. On error nothing is added and the chunk so far stays valid. */
int chunk_enc_add(struct chunk_enc *e, const struct point *p);
/* Appends the chunk's blob to out and empties the encoder for the next chunk.
 * Returns 0, or GW_EINVAL when no point was added. */
int chunk_enc_finish(struct chunk_enc *e, struct buf *out);

/* Reads the header of blob[0..len) only. Returns 0, or GW_EINVAL with *why (static)
 * when the header is short or inconsistent in itself (the columns are not read). */
int chunk_stats(const uint8_t *blob, size_t len, struct chunk_stats *st, const char **why);

/* A decoded chunk. */
struct chunk_points {
    /* public */
    struct point *points; /* [npoints], ts order; key is NULL (a chunk does not know
                             its series); str points into this object, NUL-terminated */
    size_t npoints;
    struct chunk_stats stats;
    /* private */
    char *texts; /* the texts str points into */
};

/* Decodes and validates the whole blob: every length, count, bit position, padding
 * bit, the ts order and the header's stats against the decoded values. Allocates at
 * most what the header declares, once the blob is long enough to hold it. Returns 0
 * (then chunk_points_fini() releases out), or GW_EINVAL with *why (static) and out
 * empty. */
int chunk_decode(const uint8_t *blob, size_t len, struct chunk_points *out, const char **why);
void chunk_points_fini(struct chunk_points *cp);

#endif
