/* base/b64.c: see b64.h. OpenSSL's EVP block coder with the URL alphabet swapped in. */
#include "base/b64.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

size_t b64url_encode(const void *in, size_t n, char *out)
{
    char *tmp = xmalloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)tmp, in, (int)n);

    for (int i = 0; i < len; i++) {
        if (tmp[i] == '=') {
            len = i;
            break;
        }
        out[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
    }
    out[len] = '\0';
    free(tmp);
    return (size_t)len;
}

char *b64url_decode(const char *in, size_t *outlen)
{
    size_t n = strlen(in), padded = (n + 3) / 4 * 4;
    char *tmp;
    unsigned char *out;
    int len;

    if (n % 4 == 1)
        return NULL; /* no byte count encodes to this length */
    tmp = xmalloc(padded + 1);
    out = xmalloc(padded + 1);
    for (size_t i = 0; i < padded; i++) {
        char c = i < n ? in[i] : '=';
        tmp[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    tmp[padded] = '\0';
    len = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)padded);
    free(tmp);
    if (len < 0) {
        free(out);
        return NULL;
    }
    len -= (int)(padded - n); /* EVP_DecodeBlock counts the padding */
    out[len] = '\0';
    *outlen = (size_t)len;
    return (char *)out;
}
