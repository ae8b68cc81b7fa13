/* web/auth.c: see auth.h. */
#include "web/auth.h"

#include <openssl/crypto.h>
#include <string.h>

#include "gateway/gw.h"

bool auth_api_key_ok(const struct gw *gw, const char *key)
{
    size_t klen = strlen(gw->api_key);
    return key && klen > 0 && strlen(key) == klen && CRYPTO_memcmp(key, gw->api_key, klen) == 0;
}
