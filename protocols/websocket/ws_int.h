/* protocols/websocket/ws_int.h: shared inside protocols/websocket/ and its unit tests
 * only. The zlib state of the permessage-deflate compressor and decompressor, and
 * the incremental UTF-8 validator the assembler runs over text fragments. Loop
 * thread (each object belongs to one connection or to the feed hub). */
#ifndef GALE_WS_INT_H
#define GALE_WS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "base/buf.h"
#include "protocols/websocket/ws.h"

struct ws_deflater {
    z_stream z;               /* raw deflate stream (negative windowBits) */
    bool ready;               /* z is initialised (lazily, on the first message) */
    bool broken;              /* zlib failed once: the stream is unusable */
    int window_bits;          /* 9..15 */
    int level;                /* zlib level, -1 = default */
    bool no_context_takeover; /* reset after each message */
};

struct ws_inflater {
    z_stream z;               /* raw inflate stream */
    int window_bits;          /* 9..15: the client's agreed window */
    bool no_context_takeover; /* reset after each message */
    bool ended;               /* a BFINAL block ended the stream inside the current
                                 message: the rest of this message is ignored */
};

/* A decompressor for a 2^window_bits window (9..15). */
struct ws_inflater *ws_inflater_new(int window_bits, bool no_context_takeover);
void ws_inflater_free(struct ws_inflater *z);
/* About the memory z holds: zlib's inflate state and its window (an estimate, for the
 * pre-auth budget; zlib does not say). */
size_t ws_inflater_held(const struct ws_inflater *z);
/* Decompresses the next piece p[0..len) of the current message and appends the
 * output to out, producing at most max_out + 1 bytes in out in all (the extra byte
 * tells "exactly full" from "too big"). fin: this is the last piece; the 00 00 ff ff
 * tail (RFC 7692 7.2.2) is fed after it and the message ends (the stream resets
 * when no_context_takeover). Returns 0; GW_ELIMIT when the output would exceed
 * max_out (the caller drops out's contents); GW_EINVAL for invalid deflate data
 * (*why says which). After an error the inflater must be freed. */
int ws_inflater_feed(struct ws_inflater *z, const uint8_t *p, size_t len, bool fin,
                     struct buf *out, size_t max_out, const char **why);

/* Incremental UTF-8 validation: s[0] = continuation bytes still needed, s[1..2] =
 * allowed range of the next byte. Start from {0,0,0}. Returns false at the first
 * invalid byte; a sequence may stop anywhere and continue in the next call. */
bool ws_utf8_feed(uint8_t s[3], const uint8_t *p, size_t len);
/* True when no sequence is left incomplete. */
static inline bool ws_utf8_complete(const uint8_t s[3])
{
    return s[0] == 0;
}

#endif
