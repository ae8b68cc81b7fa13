/* tests/fuzz/fuzz_line.c: libFuzzer target for newline framing (protocols/line/codec.c)
 * and the telemetry decoder behind it. Input: the first byte picks the read size
 * (0 = the whole stream in one read), the rest is the stream. The stream is fed read by
 * read into an exact-size buffer (so ASan sees any read past the end), decoded until
 * NEED_MORE and consumed once per read, as the line handler does; every line goes
 * through telem_decode. A plain whole-stream splitter is the oracle: lines, error and
 * leftover must match it however the reads split, else abort. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/telemetry.h"
#include "protocols/line/line.h"

#define MAX_LINE 100

/* The reference: the next event for the line starting at s[pos], from the whole stream. */
static enum codec_rc ref_next(const uint8_t *s, size_t len, size_t pos, size_t *line_len,
                              size_t *used)
{
    const uint8_t *nl = memchr(s + pos, '\n', len - pos);
    size_t n;

    if (!nl) {
        n = len - pos;
        if (n > MAX_LINE + 1 || (n == MAX_LINE + 1 && s[pos + MAX_LINE] != '\r'))
            return CODEC_ERROR;
        return CODEC_NEED_MORE;
    }
    n = (size_t)(nl - (s + pos));
    *used = n + 1;
    if (n > 0 && s[pos + n - 1] == '\r')
        n--;
    if (n > MAX_LINE)
        return CODEC_ERROR;
    *line_len = n;
    return CODEC_FRAME;
}

static void decode_telemetry(const uint8_t *line, size_t len)
{
    struct telem_limits lim = {64, 128};
    struct telem t;
    const char *why, *code;

    if (telem_decode(&lim, (const char *)line, len, 0, &t, &why, &code) == 0 &&
        (t.npoints == 0 || t.npoints > lim.max_points))
        abort();
    telem_fini(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct line_decoder d;
    const uint8_t *s;
    uint8_t *conn = NULL; /* the connection buffer, exactly conn_len bytes */
    size_t chunk, len, fed = 0, conn_len = 0, line_start = 0; /* stream offset of conn[0] */
    int failed = 0;

    if (size == 0)
        return 0;
    chunk = data[0];
    s = data + 1;
    len = size - 1;
    if (chunk == 0)
        chunk = len ? len : 1;
    line_decoder_init(&d, MAX_LINE);
    while (fed < len && !failed) {
        size_t n = len - fed < chunk ? len - fed : chunk, off = 0;
        uint8_t *grown = malloc(conn_len + n);
        if (conn_len)
            memcpy(grown, conn, conn_len);
        memcpy(grown + conn_len, s + fed, n);
        free(conn);
        conn = grown;
        conn_len += n;
        fed += n;
        for (;;) {
            const uint8_t *line = NULL;
            size_t line_len = 0, used = 0, want_len = 0, want_used = 0;
            const char *why = NULL;
            enum codec_rc rc =
                line_decode(&d, conn + off, conn_len - off, &line, &line_len, &used, &why);
            enum codec_rc want;
            if (rc == CODEC_NEED_MORE) {
                if (d.scanned != conn_len - off)
                    abort(); /* everything available is scanned once */
                break;
            }
            want = ref_next(s, len, line_start + off, &want_len, &want_used);
            if (rc == CODEC_ERROR) {
                if (want != CODEC_ERROR || !why)
                    abort();
                failed = 1;
                break;
            }
            if (want != CODEC_FRAME || line != conn + off || line_len != want_len ||
                used != want_used || off + used > conn_len)
                abort();
            decode_telemetry(line, line_len);
            off += used;
        }
        /* consume once per read */
        memmove(conn, conn + off, conn_len - off);
        conn_len -= off;
        line_start += off;
    }
    if (!failed) {
        size_t want_len, want_used;
        if (ref_next(s, len, line_start, &want_len, &want_used) != CODEC_NEED_MORE)
            abort();
    }
    free(conn);
    return 0;
}
