/* protocols/mqtt/acl.c: see acl.h. Rules are parsed once at start-up; checks
 * build the substituted filter on the stack and compare level by level. */
#include "protocols/mqtt/acl.h"

#include <cjson/cJSON.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "protocols/mqtt/mqtt.h"

struct acl_rule {
    char *user;    /* glob */
    char *client;  /* glob */
    char *topic;   /* filter with %u / %c */
    int action;    /* enum acl_action bits */
    bool allow;
};

struct acl {
    struct acl_rule *rules;
    size_t n;
    bool sub_denials;  /* a rule with allow false applies to subscribe */
};

struct acl *acl_new(const char *json, char *err, size_t errlen)
{
    cJSON *root = cJSON_Parse(json && *json ? json : "[]"), *it;
    struct acl *a;
    size_t i = 0;

    if (!cJSON_IsArray(root)) {
        snprintf(err, errlen, "mqtt.acl: must be a JSON array of rules");
        cJSON_Delete(root);
        return NULL;
    }
    a = xcalloc(1, sizeof *a);
    a->rules = xcalloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *a->rules);
    cJSON_ArrayForEach(it, root) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(it, "user");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "client");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "topic");
        const cJSON *ac = cJSON_GetObjectItemCaseSensitive(it, "action");
        const cJSON *al = cJSON_GetObjectItemCaseSensitive(it, "allow");
        struct acl_rule *r = &a->rules[i];
        if (!cJSON_IsObject(it) || !cJSON_IsString(t) || (u && !cJSON_IsString(u)) ||
            (c && !cJSON_IsString(c)) || (ac && !cJSON_IsString(ac)) || !cJSON_IsBool(al)) {
            snprintf(err, errlen,
                     "mqtt.acl[%zu]: a rule needs \"topic\" (string) and \"allow\" (bool); "
                     "\"user\", \"client\", \"action\" are strings",
                     i);
            goto fail;
        }
        for (const cJSON *k = it->child; k; k = k->next) { /* a typo must not widen a rule */
            if (strcmp(k->string, "user") != 0 && strcmp(k->string, "client") != 0 &&
                strcmp(k->string, "topic") != 0 && strcmp(k->string, "action") != 0 &&
                strcmp(k->string, "allow") != 0) {
                snprintf(err, errlen, "mqtt.acl[%zu]: unknown key \"%s\"", i, k->string);
                goto fail;
            }
        }
        if (!mqtt_filter_valid(t->valuestring, strlen(t->valuestring))) {
            snprintf(err, errlen, "mqtt.acl[%zu]: topic \"%s\" is not a valid MQTT filter", i,
                     t->valuestring);
            goto fail;
        }
        r->action = ACL_ALL;
        if (ac) {
            if (strcmp(ac->valuestring, "publish") == 0)
                r->action = ACL_PUBLISH;
            else if (strcmp(ac->valuestring, "subscribe") == 0)
                r->action = ACL_SUBSCRIBE;
            else if (strcmp(ac->valuestring, "all") != 0) {
                snprintf(err, errlen,
                         "mqtt.acl[%zu]: action must be publish, subscribe or all", i);
                goto fail;
            }
        }
        r->user = xstrdup(u ? u->valuestring : "*");
        r->client = xstrdup(c ? c->valuestring : "*");
        r->topic = xstrdup(t->valuestring);
        r->allow = cJSON_IsTrue(al);
        if (!r->allow && (r->action & ACL_SUBSCRIBE))
            a->sub_denials = true;
        a->n = ++i;
    }
    cJSON_Delete(root);
    return a;
fail:
    cJSON_Delete(root);
    acl_free(a);
    return NULL;
}

void acl_free(struct acl *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->rules[i].user);
        free(a->rules[i].client);
        free(a->rules[i].topic);
    }
    free(a->rules);
    free(a);
}

bool acl_has_subscribe_denials(const struct acl *a)
{
    return a && a->sub_denials;
}

/* Next level of s[*pos..len): returns its length and advances *pos past the '/'. */
static size_t next_level(const char *s, size_t len, size_t *pos, const char **lvl, bool *more)
{
    size_t start = *pos, i = start;
    while (i < len && s[i] != '/')
        i++;
    *lvl = s + start;
    *more = i < len;
    *pos = i + 1;
    return i - start;
}

bool acl_filter_covers(const char *outer, size_t olen, const char *inner, size_t ilen)
{
    size_t op = 0, ip = 0;
    bool omore = true, imore = true;

    /* '$' topics are only covered by rules that name them (as matching does) */
    if (ilen && inner[0] == '$' && olen && (outer[0] == '+' || outer[0] == '#'))
        return false;
    while (omore) {
        const char *ol, *il;
        size_t on = next_level(outer, olen, &op, &ol, &omore);
        if (on == 1 && ol[0] == '#')
            return true; /* covers the rest, including the parent level */
        if (!imore)
            return false;
        size_t in = next_level(inner, ilen, &ip, &il, &imore);
        if (on == 1 && ol[0] == '+') {
            if (in == 1 && il[0] == '#')
                return false; /* '#' spans more than one level */
            continue;
        }
        if (on != in || memcmp(ol, il, on) != 0)
            return false;
    }
    return !imore;
}

/* Writes rule topic with %u / %c substituted; returns length or -1 when too long. */
static int substitute(const char *pat, const char *user, const char *client, char *out,
                      size_t cap)
{
    size_t o = 0;
    for (const char *p = pat; *p; p++) {
        const char *rep = NULL;
        if (p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
            rep = p[1] == 'u' ? user : client;
            if (!rep || !*rep || strpbrk(rep, "+#/"))
                return -1; /* a missing or wildcard-bearing name never matches */
            size_t n = strlen(rep);
            if (o + n >= cap)
                return -1;
            memcpy(out + o, rep, n);
            o += n;
            p++;
            continue;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = *p;
    }
    out[o] = '\0';
    return (int)o;
}

static bool rule_matches_topic(const char *filter, size_t flen, const char *topic, size_t tlen,
                               enum acl_action action)
{
    if (action == ACL_SUBSCRIBE)
        return acl_filter_covers(filter, flen, topic, tlen);
    return mqtt_topic_matches(filter, flen, topic, tlen);
}

bool acl_check(const struct acl *a, enum acl_role role, const char *username,
               const char *client_id, const char *device, const char *topic, size_t topic_len,
               enum acl_action action)
{
    char buf[1024];
    for (size_t i = 0; a && i < a->n; i++) {
        const struct acl_rule *r = &a->rules[i];
        int n;
        if (!(r->action & action))
            continue;
        if (fnmatch(r->user, username ? username : "", 0) != 0 ||
            fnmatch(r->client, client_id ? client_id : "", 0) != 0)
            continue;
        n = substitute(r->topic, username, client_id, buf, sizeof buf);
        if (n < 0)
            continue;
        if (rule_matches_topic(buf, (size_t)n, topic, topic_len, action))
            return r->allow;
    }
    /* '$' topics are the server's ($SYS): clients publish there only by an explicit rule */
    if (action == ACL_PUBLISH && topic_len && topic[0] == '$')
        return false;
    if (role == ACL_ROLE_APP || role == ACL_ROLE_ANONYMOUS)
        return true;
    if (!device)
        return false;
    /* devices/<id>/# */
    int n = snprintf(buf, sizeof buf, "devices/%s/#", device);
    return n > 0 && (size_t)n < sizeof buf &&
           rule_matches_topic(buf, (size_t)n, topic, topic_len, action);
}
