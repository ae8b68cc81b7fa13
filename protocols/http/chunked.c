/* protocols/http/chunked.c: chunked transfer coding of a response body (see chunked.h). */
#include "protocols/http/chunked.h"

void http_chunk_append(struct buf *out, const void *data, size_t len)
{
    if (len == 0)
        return;
    buf_printf(out, "%zx\r\n", len);
    buf_append(out, data, len);
    buf_append_str(out, "\r\n");
}

void http_chunk_end(struct buf *out, const char *trailers)
{
    buf_append_str(out, "0\r\n");
    if (trailers)
        buf_append_str(out, trailers);
    buf_append_str(out, "\r\n");
}
