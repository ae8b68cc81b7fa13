/* gateway/bridge/bridge_cfg.c: see bridge_cfg.h. One table of the object keys an
 * upstream may have; every value is checked against it and an error names the upstream
 * and the key. Runs at start-up (main thread). */
#include "gateway/bridge/bridge_cfg.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "protocols/mqtt/mqtt.h"

#define MIB (1024ULL * 1024)

static const char *const known_keys[] = {
    "name", "addresses", "client_id", "username", "password", "keepalive_s",
    "clean_session", "forward", "remote_prefix", "subscribe", "qos", "format",
    "max_inflight", "drain_rate", "max_backlog_messages", "max_backlog_bytes", "max_age_s",
    "overflow", "ca_file", "cert_file", "key_file", "verify", "protocol", "session_expiry_s",
};

struct ctx {
    char *err;
    size_t errlen;
    size_t index;      /* of the upstream in the array */
    const char *name;  /* its name, once known */
};

static int fail(struct ctx *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct ctx *c, const char *key, const char *fmt, ...)
{
    char why[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (c->name)
        snprintf(c->err, c->errlen, "config: bridge.upstreams: upstream \"%s\" (#%zu): %s: %s",
                 c->name, c->index, key, why);
    else
        snprintf(c->err, c->errlen, "config: bridge.upstreams: upstream #%zu: %s: %s", c->index,
                 key, why);
    return GW_ECONFIG;
}

static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > BRIDGE_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.' || *s == '-'))
            return false;
    return true;
}

static bool address_valid(const char *s)
{
    static const char *const schemes[] = {"tcp://", "ssl://", "ws://", "wss://"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i]);
        if (strncmp(s, schemes[i], n) == 0) {
            const char *colon = strrchr(s + n, ':');
            return s[n] && colon && colon[1] >= '0' && colon[1] <= '9';
        }
    }
    return false;
}

/* A valid MQTT topic filter ([MQTT-4.7.1]: the codec's rules). */
static bool filter_ok(const char *f)
{
    return mqtt_filter_valid(f, strlen(f)) != 0;
}

static int get_string(struct ctx *c, const cJSON *o, const char *key, size_t maxlen, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!cJSON_IsString(v) || strlen(v->valuestring) > maxlen)
        return fail(c, key, "must be a string of at most %zu bytes", maxlen);
    *out = xstrdup(v->valuestring);
    return 0;
}

static int get_number(struct ctx *c, const cJSON *o, const char *key, double lo, double hi,
                      double def, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = def;
    if (!v)
        return 0;
    /* the range first: a double past long long's range must not be converted (UB) */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) ||
        v->valuedouble != (double)(long long)v->valuedouble)
        return fail(c, key, "must be an integer %.0f..%.0f", lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(struct ctx *c, const cJSON *o, const char *key, bool def, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = def;
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return fail(c, key, "must be true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A list of strings; each must pass ok (NULL: any) when given; def when absent. */
static int get_list(struct ctx *c, const cJSON *o, const char *key, const char *def,
                    bool (*ok)(const char *), const char *what, char ***out, size_t *n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key), *e;
    size_t i = 0;

    *out = NULL;
    *n = 0;
    if (!v) {
        if (def) {
            *out = xcalloc(1, sizeof **out);
            (*out)[0] = xstrdup(def);
            *n = 1;
        }
        return 0;
    }
    if (!cJSON_IsArray(v))
        return fail(c, key, "must be a list of %s", what);
    *out = xcalloc((size_t)cJSON_GetArraySize(v) + 1, sizeof **out);
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e) || (ok && !ok(e->valuestring)))
            return fail(c, key, "item %zu: must be %s", i, what);
        (*out)[i++] = xstrdup(e->valuestring);
        *n = i;
    }
    return 0;
}

static void upstream_fini(struct bridge_upstream_cfg *u)
{
    char **lists[] = {u->addresses, u->forward, u->subscribe};
    size_t ns[] = {u->naddresses, u->nforward, u->nsubscribe};
    for (size_t l = 0; l < 3; l++) {
        for (size_t i = 0; i < ns[l]; i++)
            free(lists[l][i]);
        free(lists[l]);
    }
    free(u->client_id);
    free(u->username);
    free(u->password);
    free(u->remote_prefix);
    free(u->ca_file);
    free(u->cert_file);
    free(u->key_file);
    memset(u, 0, sizeof *u);
}

static int parse_one(struct ctx *c, const cJSON *o, struct bridge_upstream_cfg *u)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name"), *k, *v;
    double d;
    int rc;

    if (!cJSON_IsObject(o))
        return fail(c, "upstream", "must be an object");
    if (!cJSON_IsString(name) || !name_valid(name->valuestring))
        return fail(c, "name", "required: 1..%d characters of [A-Za-z0-9_.-]", BRIDGE_NAME_MAX);
    snprintf(u->name, sizeof u->name, "%s", name->valuestring);
    c->name = u->name;
    cJSON_ArrayForEach(k, o) {
        size_t i;
        for (i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++)
            if (strcmp(k->string, known_keys[i]) == 0)
                break;
        if (i == sizeof known_keys / sizeof known_keys[0])
            return fail(c, k->string, "unknown key");
    }
    if ((rc = get_list(c, o, "addresses", NULL, address_valid,
                       "a tcp://, ssl://, ws:// or wss:// URI with a port", &u->addresses,
                       &u->naddresses)) != 0)
        return rc;
    if (u->naddresses == 0)
        return fail(c, "addresses", "required: a non-empty list of URIs");
    if ((rc = get_string(c, o, "client_id", 65535, &u->client_id)) != 0 ||
        (rc = get_string(c, o, "username", 65535, &u->username)) != 0 ||
        (rc = get_string(c, o, "password", 65535, &u->password)) != 0 ||
        (rc = get_string(c, o, "remote_prefix", 65535, &u->remote_prefix)) != 0 ||
        (rc = get_string(c, o, "ca_file", 4096, &u->ca_file)) != 0 ||
        (rc = get_string(c, o, "cert_file", 4096, &u->cert_file)) != 0 ||
        (rc = get_string(c, o, "key_file", 4096, &u->key_file)) != 0)
        return rc;
    if (u->client_id && !u->client_id[0])
        return fail(c, "client_id", "must not be empty");
    if (!u->client_id) {
        size_t n = strlen(u->name) + 6;
        u->client_id = xmalloc(n);
        snprintf(u->client_id, n, "gale-%s", u->name);
    }
    if (!u->remote_prefix)
        u->remote_prefix = xstrdup("");
    if (strchr(u->remote_prefix, '+') || strchr(u->remote_prefix, '#'))
        return fail(c, "remote_prefix", "must not hold + or #");
    if ((rc = get_list(c, o, "forward", "devices/+/telemetry", filter_ok,
                       "an MQTT topic filter", &u->forward, &u->nforward)) != 0 ||
        (rc = get_list(c, o, "subscribe", "devices/+/commands", filter_ok,
                       "an MQTT topic filter", &u->subscribe, &u->nsubscribe)) != 0)
        return rc;
    if ((rc = get_number(c, o, "keepalive_s", 0, 65535, 60, &d)) != 0)
        return rc;
    u->keepalive_s = (int)d;
    if ((rc = get_number(c, o, "qos", 0, 2, 1, &d)) != 0)
        return rc;
    u->qos = (uint8_t)d;
    if ((rc = get_number(c, o, "max_inflight", 1, 65535, 100, &d)) != 0)
        return rc;
    u->max_inflight = (size_t)d;
    if ((rc = get_number(c, o, "drain_rate", 0, 10000000, 5000, &d)) != 0)
        return rc;
    u->drain_rate = (unsigned)d;
    if ((rc = get_number(c, o, "max_backlog_messages", 1, 1e9, 1000000, &d)) != 0)
        return rc;
    u->max_backlog_messages = (size_t)d;
    if ((rc = get_number(c, o, "max_backlog_bytes", 1024, 1e12, 256.0 * MIB, &d)) != 0)
        return rc;
    u->max_backlog_bytes = (size_t)d;
    if ((rc = get_number(c, o, "max_age_s", 0, 1e9, 0, &d)) != 0)
        return rc;
    u->max_age_s = (int64_t)d;
    if ((rc = get_bool(c, o, "clean_session", false, &u->clean_session)) != 0 ||
        (rc = get_bool(c, o, "verify", true, &u->verify)) != 0)
        return rc;
    /* "3.1.1" or "5" ("5.0" and the number 5 too) */
    v = cJSON_GetObjectItemCaseSensitive(o, "protocol");
    u->protocol = 4;
    if (v && cJSON_IsString(v) && strcmp(v->valuestring, "3.1.1") == 0)
        u->protocol = 4;
    else if (v && ((cJSON_IsString(v) && (strcmp(v->valuestring, "5") == 0 ||
                                          strcmp(v->valuestring, "5.0") == 0)) ||
                   (cJSON_IsNumber(v) && v->valuedouble == 5)))
        u->protocol = 5;
    else if (v)
        return fail(c, "protocol", "must be \"3.1.1\" or \"5\"");
    if (cJSON_GetObjectItemCaseSensitive(o, "session_expiry_s") && u->protocol != 5)
        return fail(c, "session_expiry_s", "needs protocol 5 (MQTT 3.1.1 has clean_session)");
    if ((rc = get_number(c, o, "session_expiry_s", 0, 4294967295.0, u->clean_session ? 0 : 3600,
                         &d)) != 0)
        return rc;
    u->session_expiry_s = (uint32_t)d;
    v = cJSON_GetObjectItemCaseSensitive(o, "format");
    if (v && !(cJSON_IsString(v) && (strcmp(v->valuestring, "raw") == 0 ||
                                     strcmp(v->valuestring, "normalized") == 0)))
        return fail(c, "format", "must be \"raw\" or \"normalized\"");
    u->format = v && strcmp(v->valuestring, "normalized") == 0 ? BRIDGE_FORMAT_NORMALIZED
                                                                : BRIDGE_FORMAT_RAW;
    v = cJSON_GetObjectItemCaseSensitive(o, "overflow");
    if (v && !(cJSON_IsString(v) && (strcmp(v->valuestring, "drop_oldest") == 0 ||
                                     strcmp(v->valuestring, "drop_newest") == 0)))
        return fail(c, "overflow", "must be \"drop_oldest\" or \"drop_newest\"");
    u->overflow = v && strcmp(v->valuestring, "drop_newest") == 0 ? BRIDGE_DROP_NEWEST
                                                                   : BRIDGE_DROP_OLDEST;
    return 0;
}

int bridge_cfg_parse(const char *json, struct bridge_cfg *out, char *err, size_t errlen)
{
    cJSON *root = cJSON_Parse(json), *o;
    struct ctx c = {err, errlen, 0, NULL};
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (!cJSON_IsArray(root)) {
        snprintf(err, errlen, "config: bridge.upstreams: must be a JSON array of upstreams");
        cJSON_Delete(root);
        return GW_ECONFIG;
    }
    out->ups = xcalloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *out->ups);
    cJSON_ArrayForEach(o, root) {
        struct bridge_upstream_cfg *u = &out->ups[out->n++];
        c.name = NULL;
        if ((rc = parse_one(&c, o, u)) != 0)
            break;
        for (size_t i = 0; i + 1 < out->n; i++)
            if (strcmp(out->ups[i].name, u->name) == 0) {
                rc = fail(&c, "name", "another upstream has this name");
                break;
            }
        if (rc)
            break;
        c.index++;
    }
    cJSON_Delete(root);
    if (rc)
        bridge_cfg_fini(out);
    return rc;
}

void bridge_cfg_fini(struct bridge_cfg *c)
{
    for (size_t i = 0; i < c->n; i++)
        upstream_fini(&c->ups[i]);
    free(c->ups);
    c->ups = NULL;
    c->n = 0;
}
