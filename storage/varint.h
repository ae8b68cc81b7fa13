/* storage/varint.h: LEB128 varints and zigzag, shared by the two storage codecs
 * (chunk.c, segment.c). Pure, header-only. */
#ifndef GALE_STORAGE_VARINT_H
#define GALE_STORAGE_VARINT_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* Writes v at q (room for 10 bytes); returns the byte after it. */
static inline uint8_t *varint_write(uint8_t *q, uint64_t v)
{
    while (v >= 0x80) {
        *q++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *q++ = (uint8_t)v;
    return q;
}

static inline void varint_put(struct buf *b, uint64_t v)
{
    uint8_t tmp[10];

    buf_append(b, tmp, (size_t)(varint_write(tmp, v) - tmp));
}

/* Reads a varint at p[*pos..len); rejects one running past len or 64 bits: 0 or -1. */
static inline int varint_get(const uint8_t *p, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;

    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t c;
        if (*pos >= len)
            return -1;
        c = p[(*pos)++];
        if (shift == 63 && c > 1)
            return -1;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* An int64 (two's complement in v) as an unsigned number small for small magnitudes. */
static inline uint64_t zigzag(uint64_t v)
{
    return (v << 1) ^ (0 - (v >> 63));
}

static inline uint64_t unzigzag(uint64_t z)
{
    return (z >> 1) ^ (0 - (z & 1));
}

#endif
