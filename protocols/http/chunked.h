/* protocols/http/chunked.h: the chunked transfer coding of a response body (RFC 9112,
 * section 7.1), encoding only: what http_stream_write and http_stream_end put on the
 * wire. Pure: no I/O, no libuv. */
#ifndef GALE_HTTP_CHUNKED_H
#define GALE_HTTP_CHUNKED_H

#include <stddef.h>

#include "base/buf.h"

/* Appends data as one chunk to out: its size in hex, CRLF, the bytes, CRLF. len 0
 * appends nothing, since a chunk of size 0 would end the body. */
void http_chunk_append(struct buf *out, const void *data, size_t len);
/* Appends the last chunk ("0" CRLF), the trailer fields ("Name: value\r\n"..., or NULL
 * for none) and the CRLF that ends the message. */
void http_chunk_end(struct buf *out, const char *trailers);

#endif
