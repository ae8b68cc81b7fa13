/* tools/sim/httpmsg.c: HTTP/1.1 messages for the simulator's client (shttp_): a request
 * built into a buffer, a response parsed from one. Responses are read by their
 * Content-Length (Gale's REST answers always carry one). Pure: no I/O. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tools/sim/sim.h"

long shttp_parse(const uint8_t *p, size_t len, struct shttp_resp *out)
{
    const char *s = (const char *)p;
    const char *end = memmem(s, len, "\r\n\r\n", 4);
    long clen = 0;

    if (!end)
        return len > 65536 ? -1 : 0;
    if (len < 12 || memcmp(s, "HTTP/1.", 7) != 0)
        return -1;
    out->status = atoi(s + 9);
    for (const char *l = s; (l = memchr(l, '\n', (size_t)(end - l))) != NULL;) {
        l++;
        if (end - l >= 15 && strncasecmp(l, "content-length:", 15) == 0)
            clen = atol(l + 15);
    }
    if (clen < 0 || clen > (1L << 24))
        return -1;
    size_t head = (size_t)(end - s) + 4;
    if (len < head + (size_t)clen)
        return 0;
    out->body = s + head;
    out->body_len = (size_t)clen;
    return (long)(head + (size_t)clen);
}

void shttp_request(struct buf *out, const char *method, const char *path, const char *host,
                   const char *auth, const char *body, size_t body_len)
{
    buf_printf(out, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: gale-sim\r\n", method, path,
               host);
    if (auth)
        buf_printf(out, "Authorization: Bearer %s\r\n", auth);
    if (body)
        buf_printf(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                   body_len);
    else
        buf_append_str(out, "Content-Length: 0\r\n\r\n");
    if (body)
        buf_append(out, body, body_len);
}
