/* tests/fuzz/fuzz_proxy.c: libFuzzer target for the PROXY protocol header decoder
 * (gateway/proxy.c). Input: the first byte picks the versions accepted (bits 0-1; 0 is
 * taken as both) and the read size (bits 2-7; 0 = the whole stream at once); the rest is
 * the stream. It is fed read by read into an exact-size buffer holding every byte so far,
 * as conn.c keeps a header split over reads. The oracle is the decode of the whole
 * stream: a prefix may only say NEED_MORE, or what the whole says (the same error, or the
 * same header and length once the header is in); a header's length never passes
 * PROXY_HEADER_MAX or the bytes given. Any disagreement aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_header whole, part;
    const char *why_whole = NULL, *why = NULL;
    size_t used_whole = 0, used = 0, chunk, fed = 0;
    enum proxy_rc rc_whole, rc;
    unsigned accept;

    if (size == 0)
        return 0;
    accept = data[0] & 3 ? data[0] & 3 : PROXY_ANY;
    chunk = data[0] >> 2;
    data++;
    size--;
    memset(&whole, 0, sizeof whole);
    rc_whole = proxy_decode(accept, data, size, &whole, &used_whole, &why_whole);
    if (rc_whole == PROXY_DONE && (used_whole > size || used_whole > PROXY_HEADER_MAX))
        abort();
    if (rc_whole == PROXY_ERROR && !why_whole)
        abort();
    if (rc_whole == PROXY_NEED_MORE && size >= PROXY_HEADER_MAX)
        abort(); /* never waits for more than the bound */
    while (fed < size) {
        uint8_t *buf;
        fed += chunk ? chunk : size;
        if (fed > size)
            fed = size;
        buf = malloc(fed);
        memcpy(buf, data, fed);
        memset(&part, 0, sizeof part);
        rc = proxy_decode(accept, buf, fed, &part, &used, &why);
        free(buf);
        if (rc == PROXY_NEED_MORE)
            continue;
        if (rc != rc_whole)
            abort();
        if (rc == PROXY_ERROR && strcmp(why, why_whole) != 0)
            abort();
        if (rc == PROXY_DONE && (used != used_whole || part.local != whole.local ||
                                 part.version != whole.version ||
                                 memcmp(&part.src, &whole.src, sizeof part.src) != 0))
            abort();
        break; /* the decoder's answer is final: the connection stops feeding it here */
    }
    return 0;
}
