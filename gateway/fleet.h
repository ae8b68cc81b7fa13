/* gateway/fleet.h: fleet tokens, device credentials that every Gale instance holding the
 * same fleet key verifies without a shared registry (auth.fleet_keys).
 *
 * A token is compact and URL-safe:
 *     gft1.<device>.<exp>.<kid>.<mac>
 * device is the device id (README "Device identity"; it may itself hold dots), exp the
 * expiry in epoch seconds (0: never), kid the id of the key that signed it
 * ([A-Za-z0-9_-], 1..32 chars), and mac the base64url (no padding, 43 chars) of
 * HMAC-SHA-256(key secret, "gft1.<device>.<exp>.<kid>"). It is parsed from the right, so
 * a device id with dots is unambiguous. Several keys may be configured at once: a token
 * names the key that verifies it, so a new key can be added (and made the signing one,
 * by putting it first) while tokens of the old one are still accepted, then the old one
 * removed. Pure functions of their arguments (no clock, no I/O but fleet_new reading
 * secret files); any thread. */
#ifndef GALE_FLEET_H
#define GALE_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FLEET_KEY_ID_MAX 32
#define FLEET_SECRET_MIN 16       /* bytes of a secret, at least */
#define FLEET_SECRET_MAX 4096
#define FLEET_TOKEN_MAX 200       /* a token's length, at most, NUL excluded */
/* The token hash a device registered by its fleet token carries in the registry: no
 * per-device token matches it (it is not hex), so only fleet tokens and a token
 * provisioned for it later authenticate it. */
#define FLEET_TOKEN_HASH "fleet"

struct fleet_key {
    char id[FLEET_KEY_ID_MAX + 1];
    unsigned char *secret;        /* heap */
    size_t secret_len;
};

struct fleet {
    struct fleet_key *keys;       /* heap; keys[0] signs */
    size_t n;
};

/* Parses auth.fleet_keys (a JSON array of {"id":..,"secret":..} or {"id":..,
 * "secret_file":..}; a file's trailing whitespace is not part of its secret). Sets *out
 * to NULL for an empty array. Returns 0, or -1 with err naming the entry. */
int fleet_new(const char *json, struct fleet **out, char *err, size_t errlen);
void fleet_free(struct fleet *f);

/* Writes the token of device (a valid device id) expiring at exp_s (epoch seconds, 0:
 * never), signed by the key key_id (NULL: the first), into out (at least
 * FLEET_TOKEN_MAX + 1 bytes). Returns its length, or -1 when key_id is not configured. */
int fleet_issue(const struct fleet *f, const char *device, int64_t exp_s, const char *key_id,
                char *out, size_t outlen);

enum fleet_rc {
    FLEET_OK = 0,
    FLEET_BAD,                    /* malformed, another device's, or a wrong signature */
    FLEET_EXPIRED,                /* signed, and past its expiry */
    FLEET_UNKNOWN_KEY,            /* names a key id that is not configured */
};

/* Whether token has the form of a fleet token (its prefix): a per-device token never has. */
bool fleet_is_token(const char *token, size_t len);
/* Checks token (len bytes) as the credentials of device (dlen bytes) at now_s (epoch
 * seconds): the MAC is compared in constant time. On anything but FLEET_OK *why is a
 * static reason for logs and replies. */
enum fleet_rc fleet_verify(const struct fleet *f, const char *device, size_t dlen,
                           const char *token, size_t len, int64_t now_s, const char **why);

#endif
