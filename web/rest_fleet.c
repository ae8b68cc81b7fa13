/* web/rest_fleet.c: POST /api/fleet/tokens, a fleet token (gateway/fleet.h) signed by
 * this instance's fleet key, which every instance with the same key accepts: the same
 * token `gale --issue-token` prints. Nothing is stored; the device registers itself on the
 * instance it first connects to. Loop thread. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/buf.h"
#include "base/clock.h"
#include "gateway/devices.h"
#include "gateway/fleet.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/http/http.h"
#include "web/rest_int.h"

#define DEFAULT_EXPIRES_S (365LL * 86400)
#define MAX_EXPIRES_S (100LL * 366 * 86400)

void rest_fleet_token(struct rest *r, struct http_conn *h, struct http_req *req)
{
    struct gw *gw = r->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len), *it;
    const cJSON *dev = cJSON_GetObjectItemCaseSensitive(root, "device");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(root, "expires_s");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(root, "key_id");
    char tok[FLEET_TOKEN_MAX + 1];
    long long expires_s = DEFAULT_EXPIRES_S, at = 0;
    struct buf b;

    if (!gw->fleet) {
        http_respond_error(h, 409, "fleet_disabled",
                           "no fleet key on this instance (auth.fleet_keys)");
        goto out;
    }
    if (!root || !cJSON_IsObject(root)) {
        http_respond_error(h, 400, "bad_json",
                           "body must be a JSON object like {\"device\":\"dev-1\"}");
        goto out;
    }
    cJSON_ArrayForEach(it, root) {
        if (strcmp(it->string, "device") != 0 && strcmp(it->string, "expires_s") != 0 &&
            strcmp(it->string, "key_id") != 0) {
            http_respond_error(h, 400, "unknown_field",
                               "unknown field (allowed: device expires_s key_id)");
            goto out;
        }
    }
    if (!cJSON_IsString(dev) || !devices_valid_id(dev->valuestring, strlen(dev->valuestring))) {
        http_respond_error(h, 400, "invalid_id",
                           "device must be 1-64 characters of A-Z a-z 0-9 _ . : -");
        goto out;
    }
    if (exp) {
        if (!cJSON_IsNumber(exp) || exp->valuedouble < 0 || exp->valuedouble > MAX_EXPIRES_S ||
            exp->valuedouble != (double)(long long)exp->valuedouble) {
            http_respond_error(h, 400, "invalid_expires",
                               "expires_s must be whole seconds from now (0 = never)");
            goto out;
        }
        expires_s = (long long)exp->valuedouble;
    }
    if (kid && !cJSON_IsString(kid)) {
        http_respond_error(h, 400, "unknown_key", "key_id must be the id of a fleet key");
        goto out;
    }
    if (expires_s)
        at = gw_now_ms() / 1000 + expires_s;
    if (fleet_issue(gw->fleet, dev->valuestring, at, kid ? kid->valuestring : NULL, tok,
                    sizeof tok) < 0) {
        http_respond_error(h, 400, "unknown_key", "key_id names no key of auth.fleet_keys");
        goto out;
    }
    log_info("fleet token issued device=%s key=%s expires=%lld", dev->valuestring,
             kid ? kid->valuestring : gw->fleet->keys[0].id, at);
    buf_init(&b);
    buf_printf(&b, "{\"device\":\"%s\",\"token\":\"%s\",\"expires\":%lld,\"key_id\":\"%s\"}",
               dev->valuestring, tok, at, kid ? kid->valuestring : gw->fleet->keys[0].id);
    rest_reply_json(h, 201, &b);
    buf_fini(&b);
out:
    cJSON_Delete(root);
}
