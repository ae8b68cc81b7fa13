/* protocols/websocket/deflate.c: permessage-deflate (RFC 7692) over zlib raw deflate.
 *
 * Sending: ws_deflater_compress() deflates one whole message with Z_SYNC_FLUSH and
 * strips the trailing empty stored block (00 00 ff ff). Receiving: the assembler
 * hands each fragment of a compressed message to ws_inflater_feed() as it arrives,
 * then the tail 00 00 ff ff at the end; output is appended to the message buffer
 * and never grows past the caller's cap (a small bomb cannot expand into memory).
 * Context takeover keeps the stream (and its window) between messages; without it
 * the stream is reset after each message. Loop thread; each object has one owner.
 *
 * zlib quirk: raw deflate with windowBits 8 silently uses 9, so window sizes here
 * are 9..15 and the handshake never agrees to 8 for our compressor. */
#include "protocols/websocket/ws_int.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"

#define CHUNK_BYTES 16384 /* output produced per zlib call */

static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};

static int clamp_bits(int bits)
{
    return bits < 9 ? 9 : bits > 15 ? 15 : bits;
}

/* ---- compressor --------------------------------------------------------------- */

struct ws_deflater *ws_deflater_new(int window_bits, bool no_context_takeover, int level)
{
    struct ws_deflater *d = xcalloc(1, sizeof *d);
    d->window_bits = clamp_bits(window_bits);
    d->level = (level < -1 || level > 9) ? -1 : level;
    d->no_context_takeover = no_context_takeover;
    return d;
}

struct ws_deflater *ws_deflater_for(const struct ws_deflate_params *pmd, int level)
{
    if (!pmd || !pmd->enabled)
        return NULL;
    return ws_deflater_new(pmd->server_window_bits, pmd->server_no_context_takeover, level);
}

void ws_deflater_free(struct ws_deflater *d)
{
    if (!d)
        return;
    if (d->ready)
        deflateEnd(&d->z);
    free(d);
}

int ws_deflater_compress(struct ws_deflater *d, const uint8_t *p, size_t len, struct buf *out)
{
    size_t start = out->len;

    if (d->broken)
        return GW_EINVAL;
    if (len == 0) {
        /* zlib emits nothing for a flush with no new input, so write the empty
         * message by hand: an empty stored block's header bits, the tail stripped.
         * The stream is byte-aligned after every sync flush and the window is
         * unchanged, so this is what zlib would have sent. */
        buf_append(out, "\x00", 1);
        return 0;
    }
    if (!d->ready) {
        /* memLevel follows the window: 8 (zlib's default) at 15 bits, less below,
         * so a small window also means a small hash table. */
        int mem_level = d->window_bits - 7 < 1 ? 1 : d->window_bits - 7;
        memset(&d->z, 0, sizeof d->z);
        if (deflateInit2(&d->z, d->level, Z_DEFLATED, -d->window_bits, mem_level,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            d->broken = true;
            return GW_EINVAL;
        }
        d->ready = true;
    }
    d->z.next_in = (Bytef *)(uintptr_t)p;
    /* Feed in pieces that fit uInt; only the last piece flushes. */
    do {
        size_t piece = len > (size_t)UINT32_MAX / 2 ? (size_t)UINT32_MAX / 2 : len;
        int flush = piece == len ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        d->z.avail_in = (uInt)piece;
        len -= piece;
        do {
            size_t room = deflateBound(&d->z, d->z.avail_in) + 16;
            int rc;
            if (room > CHUNK_BYTES * 4)
                room = CHUNK_BYTES * 4;
            d->z.next_out = buf_reserve(out, room);
            d->z.avail_out = (uInt)room;
            rc = deflate(&d->z, flush);
            buf_commit(out, room - d->z.avail_out);
            if (rc != Z_OK && rc != Z_BUF_ERROR) {
                d->broken = true;
                out->len = start;
                return GW_EINVAL;
            }
        } while (d->z.avail_in > 0 || d->z.avail_out == 0);
    } while (len > 0);
    /* Z_SYNC_FLUSH after new input always ends in an empty stored block whose 3
     * header bits come before the aligned 00 00 ff ff: at least one byte is left. */
    if (out->len - start < 5 || memcmp(out->data + out->len - 4, tail, 4) != 0) {
        d->broken = true;
        out->len = start;
        return GW_EINVAL;
    }
    out->len -= 4;
    if (d->no_context_takeover && deflateReset(&d->z) != Z_OK) {
        d->broken = true;
        out->len = start;
        return GW_EINVAL;
    }
    return 0;
}

/* ---- decompressor ------------------------------------------------------------- */

static int inflater_init(struct ws_inflater *z)
{
    memset(&z->z, 0, sizeof z->z);
    return inflateInit2(&z->z, -z->window_bits) == Z_OK ? 0 : GW_EINVAL;
}

/* zlib's struct inflate_state with its code tables: about 7 kB on 64-bit builds. */
#define INFLATE_STATE_BYTES 7200

size_t ws_inflater_held(const struct ws_inflater *z)
{
    return sizeof *z + INFLATE_STATE_BYTES + ((size_t)1 << z->window_bits);
}

struct ws_inflater *ws_inflater_new(int window_bits, bool no_context_takeover)
{
    struct ws_inflater *z = xcalloc(1, sizeof *z);
    z->window_bits = clamp_bits(window_bits);
    z->no_context_takeover = no_context_takeover;
    if (inflater_init(z) != 0) {
        free(z);
        return NULL;
    }
    return z;
}

void ws_inflater_free(struct ws_inflater *z)
{
    if (!z)
        return;
    inflateEnd(&z->z);
    free(z);
}

/* A BFINAL block ended the deflate stream before the message did (RFC 7692 allows
 * a sender to flush that way). Start a new stream for the next message, carrying
 * the window over when context takeover is in effect. */
static int restart_stream(struct ws_inflater *z)
{
    if (!z->no_context_takeover) {
        uInt dict_len = 0;
        uint8_t *dict = xmalloc((size_t)1 << z->window_bits);
        int rc = inflateGetDictionary(&z->z, dict, &dict_len);
        if (rc == Z_OK)
            rc = inflateReset(&z->z);
        if (rc == Z_OK && dict_len > 0)
            rc = inflateSetDictionary(&z->z, dict, dict_len);
        free(dict);
        return rc == Z_OK ? 0 : GW_EINVAL;
    }
    return inflateReset(&z->z) == Z_OK ? 0 : GW_EINVAL;
}

/* Inflates p[0..len) into out within max_out. */
static int inflate_piece(struct ws_inflater *z, const uint8_t *p, size_t len, struct buf *out,
                         size_t max_out, const char **why)
{
    if (z->ended)
        return 0;
    z->z.next_in = (Bytef *)(uintptr_t)p;
    while (len > 0 || z->z.avail_in > 0) {
        size_t piece;
        if (z->z.avail_in == 0) {
            piece = len > (size_t)UINT32_MAX / 2 ? (size_t)UINT32_MAX / 2 : len;
            z->z.avail_in = (uInt)piece;
            len -= piece;
        }
        for (;;) {
            /* One byte of room past the cap tells "exactly full" from "too big". */
            size_t left = max_out - out->len;
            size_t room = left >= CHUNK_BYTES ? CHUNK_BYTES : left + 1;
            int rc;
            z->z.next_out = buf_reserve(out, room);
            z->z.avail_out = (uInt)room;
            rc = inflate(&z->z, Z_SYNC_FLUSH);
            buf_commit(out, room - z->z.avail_out);
            if (out->len > max_out) {
                *why = "decompressed message too big";
                return GW_ELIMIT;
            }
            if (rc == Z_STREAM_END) {
                z->ended = true;
                z->z.avail_in = 0;
                if (restart_stream(z) != 0) {
                    *why = "inflate restart failed";
                    return GW_EINVAL;
                }
                return 0;
            }
            if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_STREAM_ERROR ||
                rc == Z_MEM_ERROR) {
                *why = "invalid compressed data";
                return GW_EINVAL;
            }
            /* Z_OK or Z_BUF_ERROR: done with this input once zlib had room to spare. */
            if (z->z.avail_out > 0)
                break;
        }
        if (z->z.avail_in > 0) {
            /* Room was left yet input remains: zlib cannot make progress. */
            *why = "invalid compressed data";
            return GW_EINVAL;
        }
    }
    return 0;
}

int ws_inflater_feed(struct ws_inflater *z, const uint8_t *p, size_t len, bool fin,
                     struct buf *out, size_t max_out, const char **why)
{
    int rc = inflate_piece(z, p, len, out, max_out, why);
    if (rc == 0 && fin) {
        rc = inflate_piece(z, tail, sizeof tail, out, max_out, why);
        z->ended = false;
        if (rc == 0 && z->no_context_takeover && inflateReset(&z->z) != Z_OK) {
            *why = "inflate reset failed";
            rc = GW_EINVAL;
        }
    }
    return rc;
}
