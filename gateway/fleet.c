/* gateway/fleet.c: see fleet.h. */
#include "gateway/fleet.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "gateway/devices.h"

#define PREFIX "gft1."
#define PREFIX_LEN 5
#define MAC_B64_LEN 43 /* base64url of 32 bytes, no padding */
#define EXP_DIGITS_MAX 12

static bool valid_key_id(const char *s, size_t len)
{
    if (len < 1 || len > FLEET_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Reads a secret file (at most FLEET_SECRET_MAX bytes) without its trailing whitespace. */
static int read_secret(const char *path, struct fleet_key *k, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    unsigned char buf[FLEET_SECRET_MAX + 1];
    size_t n;

    if (!f) {
        snprintf(err, errlen, "auth.fleet_keys: key \"%s\": cannot read secret_file %s: %s",
                 k->id, path, strerror(errno));
        return -1;
    }
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (n > FLEET_SECRET_MAX) {
        snprintf(err, errlen, "auth.fleet_keys: key \"%s\": secret_file %s is larger than %d bytes",
                 k->id, path, FLEET_SECRET_MAX);
        return -1;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                 buf[n - 1] == '\t'))
        n--;
    k->secret = xmalloc(n ? n : 1);
    memcpy(k->secret, buf, n);
    k->secret_len = n;
    OPENSSL_cleanse(buf, sizeof buf);
    return 0;
}

int fleet_new(const char *json, struct fleet **out, char *err, size_t errlen)
{
    cJSON *doc = cJSON_Parse(json), *e;
    struct fleet *f = NULL;
    size_t i = 0;

    *out = NULL;
    if (!cJSON_IsArray(doc)) {
        snprintf(err, errlen, "auth.fleet_keys: must be a JSON array of {\"id\",\"secret\"}");
        goto fail;
    }
    if (cJSON_GetArraySize(doc) == 0) {
        cJSON_Delete(doc);
        return 0;
    }
    f = xcalloc(1, sizeof *f);
    f->keys = xcalloc((size_t)cJSON_GetArraySize(doc), sizeof *f->keys);
    cJSON_ArrayForEach(e, doc) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(e, "secret");
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(e, "secret_file");
        struct fleet_key *k = &f->keys[i];

        if (!cJSON_IsString(id) || !valid_key_id(id->valuestring, strlen(id->valuestring))) {
            snprintf(err, errlen,
                     "auth.fleet_keys: entry %zu: \"id\" must be 1..%d characters of "
                     "[A-Za-z0-9_-]",
                     i + 1, FLEET_KEY_ID_MAX);
            goto fail;
        }
        snprintf(k->id, sizeof k->id, "%s", id->valuestring);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(f->keys[j].id, k->id) == 0) {
                snprintf(err, errlen, "auth.fleet_keys: key id \"%s\" appears twice", k->id);
                goto fail;
            }
        }
        f->n = i + 1; /* from here on fleet_free releases this key too */
        if (cJSON_IsString(sec) == cJSON_IsString(file)) {
            snprintf(err, errlen,
                     "auth.fleet_keys: key \"%s\": give exactly one of \"secret\" and "
                     "\"secret_file\"",
                     k->id);
            goto fail;
        }
        if (cJSON_IsString(sec)) {
            k->secret_len = strlen(sec->valuestring);
            k->secret = xmalloc(k->secret_len + 1);
            memcpy(k->secret, sec->valuestring, k->secret_len + 1);
        } else if (read_secret(file->valuestring, k, err, errlen) != 0) {
            goto fail;
        }
        if (k->secret_len < FLEET_SECRET_MIN || k->secret_len > FLEET_SECRET_MAX) {
            snprintf(err, errlen,
                     "auth.fleet_keys: key \"%s\": the secret must be %d..%d bytes (e.g. "
                     "openssl rand -base64 32)",
                     k->id, FLEET_SECRET_MIN, FLEET_SECRET_MAX);
            goto fail;
        }
        i++;
    }
    cJSON_Delete(doc);
    *out = f;
    return 0;
fail:
    cJSON_Delete(doc);
    fleet_free(f);
    return -1;
}

void fleet_free(struct fleet *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++) {
        if (f->keys[i].secret)
            OPENSSL_cleanse(f->keys[i].secret, f->keys[i].secret_len);
        free(f->keys[i].secret);
    }
    free(f->keys);
    free(f);
}

static const struct fleet_key *find_key(const struct fleet *f, const char *id, size_t len)
{
    for (size_t i = 0; f && i < f->n; i++)
        if (strlen(f->keys[i].id) == len && memcmp(f->keys[i].id, id, len) == 0)
            return &f->keys[i];
    return NULL;
}

/* The base64url MAC of signed[0..len) under k into out (MAC_B64_LEN + 1 bytes). */
static void sign(const struct fleet_key *k, const char *signed_part, size_t len, char *out)
{
    unsigned char mac[32];
    unsigned int maclen = sizeof mac;

    HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const unsigned char *)signed_part, len,
         mac, &maclen);
    b64url_encode(mac, sizeof mac, out);
}

int fleet_issue(const struct fleet *f, const char *device, int64_t exp_s, const char *key_id,
                char *out, size_t outlen)
{
    const struct fleet_key *k = key_id ? find_key(f, key_id, strlen(key_id))
                                       : (f && f->n ? &f->keys[0] : NULL);
    char mac[MAC_B64_LEN + 1];
    int n;

    if (!k || exp_s < 0 || !devices_valid_id(device, strlen(device)))
        return -1;
    n = snprintf(out, outlen, PREFIX "%s.%" PRId64 ".%s", device, exp_s, k->id);
    if (n < 0 || (size_t)n + 1 + MAC_B64_LEN >= outlen)
        return -1;
    sign(k, out, (size_t)n, mac);
    out[n] = '.';
    memcpy(out + n + 1, mac, MAC_B64_LEN + 1);
    return n + 1 + MAC_B64_LEN;
}

bool fleet_is_token(const char *token, size_t len)
{
    return len > PREFIX_LEN && memcmp(token, PREFIX, PREFIX_LEN) == 0;
}

/* The last '.' in s[0..len), or NULL. */
static const char *last_dot(const char *s, size_t len)
{
    while (len--)
        if (s[len] == '.')
            return s + len;
    return NULL;
}

enum fleet_rc fleet_verify(const struct fleet *f, const char *device, size_t dlen,
                           const char *token, size_t len, int64_t now_s, const char **why)
{
    const char *dot_mac, *dot_kid, *dot_exp, *p;
    const struct fleet_key *k;
    char want[MAC_B64_LEN + 1];
    int64_t exp = 0;

    *why = "malformed fleet token";
    if (!fleet_is_token(token, len) || len > FLEET_TOKEN_MAX)
        return FLEET_BAD;
    /* from the right: .<mac>, .<kid>, .<exp>; the device is what is left */
    if (!(dot_mac = last_dot(token, len)) || len - (size_t)(dot_mac - token) - 1 != MAC_B64_LEN ||
        !(dot_kid = last_dot(token, (size_t)(dot_mac - token))) ||
        !(dot_exp = last_dot(token, (size_t)(dot_kid - token))) || dot_exp < token + PREFIX_LEN)
        return FLEET_BAD;
    if (dot_kid - dot_exp - 1 < 1 || dot_kid - dot_exp - 1 > EXP_DIGITS_MAX ||
        (dot_exp[1] == '0' && dot_kid - dot_exp - 1 > 1))
        return FLEET_BAD;
    for (p = dot_exp + 1; p < dot_kid; p++) {
        if (*p < '0' || *p > '9')
            return FLEET_BAD;
        exp = exp * 10 + (*p - '0');
    }
    if (!valid_key_id(dot_kid + 1, (size_t)(dot_mac - dot_kid - 1)))
        return FLEET_BAD;
    if ((size_t)(dot_exp - token - PREFIX_LEN) != dlen ||
        memcmp(token + PREFIX_LEN, device, dlen) != 0) {
        *why = "fleet token of another device";
        return FLEET_BAD;
    }
    if (!(k = find_key(f, dot_kid + 1, (size_t)(dot_mac - dot_kid - 1)))) {
        *why = "fleet token signed with a key id not in auth.fleet_keys";
        return FLEET_UNKNOWN_KEY;
    }
    sign(k, token, (size_t)(dot_mac - token), want);
    if (CRYPTO_memcmp(want, dot_mac + 1, MAC_B64_LEN) != 0) {
        *why = "fleet token signature does not verify";
        return FLEET_BAD;
    }
    if (exp != 0 && exp <= now_s) {
        *why = "fleet token expired";
        return FLEET_EXPIRED;
    }
    *why = NULL;
    return FLEET_OK;
}
