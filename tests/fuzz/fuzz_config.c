/* tests/fuzz/fuzz_config.c: libFuzzer target for config loading. The input is
 * JSON config text for config_apply_json(); if it holds a 0xff byte, the bytes
 * after the first one are also applied as a --set assignment and as one
 * environment entry. Whatever was accepted must pass the per-key checks of
 * config_validate() and survive a round trip through config_to_json(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

/* config_validate() also runs cross-key checks that a single source may
 * legitimately break; only its per-key part ("must be", "not NUL") is an invariant. */
static int per_key_error(const char *err)
{
    return strstr(err, "must be a") || strstr(err, "must be one of") ||
           strstr(err, "must not be empty") || strstr(err, "bytes long") ||
           strstr(err, "NUL-terminated") || strstr(err, "must be true");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *mark = memchr(data, 0xff, size);
    size_t json_len = mark ? (size_t)(mark - data) : size;
    struct config cfg, again;
    char err[512], *json, *json2, *rest = NULL;

    config_defaults(&cfg);
    config_apply_json(&cfg, (const char *)data, json_len, err, sizeof err);
    if (mark) {
        size_t n = size - json_len - 1;
        char *env[2];
        rest = malloc(n + 1);
        memcpy(rest, mark + 1, n);
        rest[n] = '\0';
        config_apply_set(&cfg, rest, err, sizeof err);
        env[0] = rest;
        env[1] = NULL;
        config_apply_env(&cfg, env, err, sizeof err);
    }
    if (config_validate(&cfg, err, sizeof err) != 0 && per_key_error(err))
        abort(); /* a setter stored a value its own key rejects */

    /* what config_to_json() shows loads back to the same view */
    json = config_to_json(&cfg);
    config_defaults(&again);
    if (config_apply_json(&again, json, strlen(json), err, sizeof err) != 0)
        abort();
    json2 = config_to_json(&again);
    if (strcmp(json, json2) != 0)
        abort();
    free(json);
    free(json2);
    free(rest);
    return 0;
}
