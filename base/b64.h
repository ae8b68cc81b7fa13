/* base/b64.h: base64url (RFC 4648 section 5) without padding: device tokens and
 * REST cursors. Any thread. */
#ifndef GALE_B64_H
#define GALE_B64_H

#include <stddef.h>

/* Bytes b64url_encode writes for n input bytes, the NUL included. */
#define B64URL_LEN(n) (((n) * 4 + 2) / 3 + 1)

/* Encodes n bytes into out (at least B64URL_LEN(n) bytes); returns the length written
 * before the NUL. */
size_t b64url_encode(const void *in, size_t n, char *out);
/* Decodes the NUL-terminated in: a heap buffer (NUL-terminated, the caller's) with
 * *outlen bytes, or NULL when in is not base64url. */
char *b64url_decode(const char *in, size_t *outlen);

#endif
