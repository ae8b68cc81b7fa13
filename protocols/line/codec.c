/* protocols/line/codec.c: newline framing for the raw TCP line protocol (line.h).
 * Data flow: the connection's input buffer -> line_decode() -> one line as a view into
 * that buffer. Runs on the loop thread; pure apart from the decoder's scan offset.
 *
 * Contract between the decoder and its caller (the feed loop):
 *   - p always starts at the first byte of the current (unfinished) line, and the bytes
 *     passed on an earlier call are passed again, unchanged, followed by whatever
 *     arrived since (the buffer only grows at its tail until the line is consumed);
 *   - after CODEC_FRAME the caller consumes exactly *used bytes (buf_consume, or an
 *     offset it adds before the next call, as the STYLE.md feed loop does): the decoder
 *     has already reset d->scanned to 0 for the line that follows;
 *   - after CODEC_ERROR the connection is closed; the decoder is reset all the same.
 * d->scanned counts the leading bytes of p known to hold no '\n', so each byte is
 * examined once however the reads split the line, and at most max_line_bytes + 2 bytes
 * (the line, an optional '\r', the '\n') are ever examined for one line.
 * The limit counts the line as returned: "abcd\n" and "abcd\r\n" both fit in 4 bytes.
 * So a line is refused as soon as max_line_bytes + 1 bytes are scanned without a '\n',
 * unless the last of them is '\r' (then the next byte decides: '\n' ends a line that fits,
 * anything else makes it too long). */
#include "protocols/line/line.h"

#include <stdint.h>
#include <string.h>

void line_decoder_init(struct line_decoder *d, size_t max_line_bytes)
{
    d->max_line_bytes = max_line_bytes;
    d->scanned = 0;
}

enum codec_rc line_decode(struct line_decoder *d, const uint8_t *p, size_t len,
                          const uint8_t **line, size_t *line_len, size_t *used, const char **why)
{
    size_t max = d->max_line_bytes < SIZE_MAX - 2 ? d->max_line_bytes : SIZE_MAX - 2;
    size_t end = len < max + 2 ? len : max + 2; /* never look past line + "\r\n" */
    size_t start = d->scanned, n;
    const uint8_t *nl;

    if (start > end)
        start = 0; /* the caller broke the contract (shrank p): rescan rather than skip */
    nl = end > start ? memchr(p + start, '\n', end - start) : NULL;
    if (nl) {
        n = (size_t)(nl - p);
        *used = n + 1;
        if (n > 0 && p[n - 1] == '\r')
            n--;
        d->scanned = 0;
        if (n > max) {
            *why = "line too long";
            return CODEC_ERROR;
        }
        *line = p;
        *line_len = n;
        return CODEC_FRAME;
    }
    /* No newline in p[0..end): the line holds at least `end` bytes, or end - 1 when the
     * last one is a '\r' that a '\n' may still follow. */
    if (end > max + 1 || (end == max + 1 && p[max] != '\r')) {
        d->scanned = 0;
        *why = "line too long";
        return CODEC_ERROR;
    }
    d->scanned = end;
    return CODEC_NEED_MORE;
}
