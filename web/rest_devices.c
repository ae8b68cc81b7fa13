/* web/rest_devices.c: the device routes: list (filters, sort, paging), create, get is in
 * rest.c's table, patch (name, metadata, server-scope attributes), delete (with or
 * without its telemetry) and token rotation. Every answer comes from the loop's registry
 * (gateway/devices.h); a change answers once storage reports it durable. Bodies with a
 * member this API does not know are refused (400 unknown_field), so a typo never goes
 * unnoticed. Loop thread only. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "base/buf.h"
#include "base/clock.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/ticket.h"
#include "protocols/http/http.h"
#include "web/keys.h"
#include "web/rest_int.h"

#define LIST_DEFAULT_LIMIT 1000
#define LIST_MAX_LIMIT 10000
#define NAME_MAX_BYTES 128
#define TOKEN_MIN 16
#define TOKEN_MAX 128

/* ---- bodies ---- */

/* Every member of obj must be one of names (NULL-terminated); otherwise answers 400
 * unknown_field naming the first unknown one. */
static bool fields_ok(struct http_conn *h, const cJSON *obj, const char *const *names)
{
    const cJSON *it;

    cJSON_ArrayForEach(it, obj)
    {
        bool known = false;
        for (size_t i = 0; names[i] && !known; i++)
            known = strcmp(it->string, names[i]) == 0;
        if (!known) {
            struct buf msg;
            buf_init(&msg);
            buf_printf(&msg, "unknown field \"%.64s\" (allowed:", it->string);
            for (size_t i = 0; names[i]; i++)
                buf_printf(&msg, " %s", names[i]);
            buf_append_str(&msg, ")");
            http_respond_error(h, 400, "unknown_field", buf_cstr(&msg));
            buf_fini(&msg);
            return false;
        }
    }
    return true;
}

/* A token the caller chooses: 16..128 characters of A-Z a-z 0-9 - _ . ~ (URL-safe, so
 * it also works as ?token=). */
static bool token_ok(const char *t)
{
    size_t n = strlen(t);

    if (n < TOKEN_MIN || n > TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z') ||
              (t[i] >= '0' && t[i] <= '9') || t[i] == '-' || t[i] == '_' || t[i] == '.' ||
              t[i] == '~'))
            return false;
    return true;
}

/* Attributes (JSON text js) over limits.max_attribute_bytes: answers 413 and returns true. */
static bool attributes_too_large(struct gw *gw, struct http_conn *h, const char *js)
{
    char why[128];

    if (!js || strlen(js) <= gw->cfg->limits.max_attribute_bytes)
        return false;
    snprintf(why, sizeof why, "attributes larger than limits.max_attribute_bytes (%zu bytes)",
             gw->cfg->limits.max_attribute_bytes);
    http_respond_error(h, 413, "attributes_too_large", why);
    return true;
}

static char *print(const cJSON *v)
{
    char *txt = cJSON_PrintUnformatted(v), *out = xstrdup(txt);
    cJSON_free(txt);
    return out;
}

/* name: a string of 1..128 bytes (or null to clear, when allow_null). */
static bool name_ok(const cJSON *name, bool allow_null)
{
    return (allow_null && cJSON_IsNull(name)) ||
           (cJSON_IsString(name) && name->valuestring[0] &&
            strlen(name->valuestring) <= NAME_MAX_BYTES);
}

/* ---- create ---- */

void rest_device_create(struct rest *r, struct http_conn *h, struct http_req *req)
{
    static const char *const fields[] = {"id", "role", "name", "metadata", "attributes",
                                         "token", NULL};
    struct gw *gw = r->gw;
    struct ticket t;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(root, "role");
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(root, "attributes");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    char token[TOKEN_MAX + 1], hash[DEVICE_TOKEN_HASH_HEX + 1];
    enum device_role dev_role = DEVICE_ROLE_DEVICE;
    struct device *dev;
    struct buf b;
    char *attrs_json = NULL;
    const char *role_name;
    uint64_t seq;

    if (!root || !cJSON_IsObject(root)) {
        http_respond_error(h, 400, "bad_json", "body must be a JSON object like {\"id\":\"dev-1\"}");
        goto out;
    }
    if (!fields_ok(h, root, fields))
        goto out;
    if (!cJSON_IsString(id) || !devices_valid_id(id->valuestring, strlen(id->valuestring))) {
        http_respond_error(h, 400, "invalid_id",
                           "id must be 1-64 characters of A-Z a-z 0-9 _ . : -");
        goto out;
    }
    if (role &&
        (!cJSON_IsString(role) || devices_role_parse(role->valuestring, &dev_role) != 0)) {
        http_respond_error(h, 400, "invalid_role", "role must be \"device\" or \"app\"");
        goto out;
    }
    if (attrs && !cJSON_IsObject(attrs)) {
        http_respond_error(h, 400, "invalid_attributes", "attributes must be a JSON object");
        goto out;
    }
    if (name && !name_ok(name, false)) {
        http_respond_error(h, 400, "invalid_name", "name must be a string of 1-128 bytes");
        goto out;
    }
    if (meta && !cJSON_IsObject(meta)) {
        http_respond_error(h, 400, "invalid_metadata", "metadata must be a JSON object");
        goto out;
    }
    if (tok && (!cJSON_IsString(tok) || !token_ok(tok->valuestring))) {
        http_respond_error(h, 400, "invalid_token",
                           "token must be 16-128 characters of A-Z a-z 0-9 - _ . ~");
        goto out;
    }
    if (devices_find(gw->devices, id->valuestring)) {
        http_respond_error(h, 409, "exists", "a device with this id exists");
        goto out;
    }
    if (tok)
        snprintf(token, sizeof token, "%s", tok->valuestring);
    else
        devices_new_token(token);
    devices_hash_token(gw->token_secret, token, strlen(token), hash);
    if (attrs) {
        char *txt = print(attrs);
        devices_merge_attrs(&attrs_json, txt, strlen(txt)); /* null members: not set */
        free(txt);
    }
    if (attributes_too_large(gw, h, attrs_json))
        goto out;
    dev = devices_add(gw->devices, id->valuestring, hash, dev_role, gw_now_ms());
    dev->server_attrs = attrs_json;
    attrs_json = NULL;
    if (name)
        dev->name = xstrdup(name->valuestring);
    if (meta && meta->child)
        dev->metadata_json = print(meta);
    seq = devices_save(gw->devices, dev);
    role_name = devices_role_name(dev->role);
    buf_init(&b);
    buf_append_str(&b, "{\"id\":");
    buf_append_json_str(&b, dev->id, strlen(dev->id));
    buf_append_str(&b, ",\"token\":");
    buf_append_json_str(&b, token, strlen(token));
    buf_append_str(&b, ",\"role\":");
    buf_append_json_str(&b, role_name, strlen(role_name));
    buf_append_str(&b, "}");
    log_info("device=%s created role=%s token=%s", dev->id, role_name,
             tok ? "supplied" : "generated");
    t = ticket_one(seq);
    rest_reply_when_durable(h, &t, 201, &b, dev->id);
    OPENSSL_cleanse(token, sizeof token);
out:
    free(attrs_json);
    cJSON_Delete(root);
}

/* ---- list ---- */

enum sort_by { SORT_ID, SORT_CREATED, SORT_LAST_SEEN };

struct list_spec {
    enum sort_by sort;
    bool desc;
};

static int64_t sort_value(const struct device *d, enum sort_by by)
{
    return by == SORT_CREATED ? d->created_ms : by == SORT_LAST_SEEN ? d->last_seen_ms : 0;
}

/* Order of a and b under spec: by the sort value, then by id (ids are unique, so the
 * order is total and a cursor names one place in it). */
static int cmp_spec(const struct list_spec *sp, int64_t va, const char *ida, int64_t vb,
                    const char *idb)
{
    int c = va < vb ? -1 : va > vb ? 1 : strcmp(ida, idb);
    return sp->desc ? -c : c;
}

static struct list_spec *qsort_spec; /* qsort has no context; loop thread only */

static int cmp_devices(const void *a, const void *b)
{
    const struct device *x = *(struct device *const *)a, *y = *(struct device *const *)b;
    return cmp_spec(qsort_spec, sort_value(x, qsort_spec->sort), x->id,
                    sort_value(y, qsort_spec->sort), y->id);
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return n == 0;
}

void rest_devices_list(struct rest *r, struct http_conn *h, struct http_req *req,
                       const struct api_key *key)
{
    static const char *const params[] = {"limit", "cursor", "online", "prefix", "q",
                                         "role",  "sort",   "order",  NULL};
    struct gw *gw = r->gw;
    char val[256], prefix[DEVICE_ID_MAX + 1] = "", q[DEVICE_ID_MAX + 1] = "";
    struct list_spec sp = {SORT_ID, false};
    int online = -1;
    bool have_role = false, have_cursor = false;
    enum device_role role = DEVICE_ROLE_DEVICE;
    size_t limit = LIST_DEFAULT_LIMIT, n, m = 0, start = 0, out = 0;
    int64_t cur_v = 0;
    char cur_id[DEVICE_ID_MAX + 1] = "";
    struct device **arr;
    struct buf b;

    if (!rest_check_params(h, req, params))
        return;
    if (http_query_param(req, "limit", val, sizeof val)) {
        char *end;
        long long v;
        errno = 0;
        v = strtoll(val, &end, 10);
        if (errno || end == val || *end || v < 1 || v > LIST_MAX_LIMIT) {
            http_respond_error(h, 400, "bad_param", "limit must be an integer 1..10000");
            return;
        }
        limit = (size_t)v;
    }
    if (http_query_param(req, "online", val, sizeof val)) {
        if (strcmp(val, "true") != 0 && strcmp(val, "false") != 0) {
            http_respond_error(h, 400, "bad_param", "online must be true or false");
            return;
        }
        online = strcmp(val, "true") == 0;
    }
    http_query_param(req, "prefix", prefix, sizeof prefix);
    http_query_param(req, "q", q, sizeof q);
    if (http_query_param(req, "role", val, sizeof val)) {
        if (devices_role_parse(val, &role) != 0) {
            http_respond_error(h, 400, "bad_param", "role must be device or app");
            return;
        }
        have_role = true;
    }
    if (http_query_param(req, "sort", val, sizeof val)) {
        if (strcmp(val, "id") == 0)
            sp.sort = SORT_ID;
        else if (strcmp(val, "created") == 0)
            sp.sort = SORT_CREATED;
        else if (strcmp(val, "last_seen") == 0)
            sp.sort = SORT_LAST_SEEN;
        else {
            http_respond_error(h, 400, "bad_param", "sort must be id, created or last_seen");
            return;
        }
    }
    if (http_query_param(req, "order", val, sizeof val)) {
        if (strcmp(val, "asc") != 0 && strcmp(val, "desc") != 0) {
            http_respond_error(h, 400, "bad_param", "order must be asc or desc");
            return;
        }
        sp.desc = strcmp(val, "desc") == 0;
    }
    if (http_query_param(req, "cursor", val, sizeof val)) {
        /* {"v":<sort value>,"id":"<last id>"}: the next page starts after that device */
        size_t len;
        char *js = b64url_decode(val, &len);
        cJSON *c = js ? cJSON_ParseWithLength(js, len) : NULL;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "v");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        free(js);
        if (!cJSON_IsNumber(v) || !cJSON_IsString(id) ||
            !devices_valid_id(id->valuestring, strlen(id->valuestring))) {
            cJSON_Delete(c);
            http_respond_error(h, 400, "bad_param", "cursor is not one this server issued");
            return;
        }
        cur_v = (int64_t)v->valuedouble;
        snprintf(cur_id, sizeof cur_id, "%s", id->valuestring);
        have_cursor = true;
        cJSON_Delete(c);
    }
    arr = devices_sorted(gw->devices, &n);
    for (size_t i = 0; i < n; i++) { /* filter in place */
        struct device *d = arr[i];
        if ((online >= 0 && devices_online(d) != online) || (have_role && d->role != role) ||
            strncmp(d->id, prefix, strlen(prefix)) != 0 || !contains_ci(d->id, q) ||
            !keys_allows_device(key, d->id))
            continue;
        arr[m++] = d;
    }
    qsort_spec = &sp;
    qsort(arr, m, sizeof *arr, cmp_devices);
    qsort_spec = NULL;
    if (have_cursor)
        while (start < m &&
               cmp_spec(&sp, sort_value(arr[start], sp.sort), arr[start]->id, cur_v, cur_id) <= 0)
            start++;
    buf_init(&b);
    buf_append_str(&b, "{\"devices\":[");
    for (size_t i = start; i < m && out < limit; i++, out++) {
        if (out)
            buf_append_str(&b, ",");
        devices_write_json(arr[i], &b);
    }
    buf_printf(&b, "],\"count\":%zu,\"total\":%zu", out, m);
    if (start + out < m) {
        const struct device *last = arr[start + out - 1];
        char js[160], enc[B64URL_LEN(160) + 1];
        int len = snprintf(js, sizeof js, "{\"v\":%lld,\"id\":\"%s\"}",
                           (long long)sort_value(last, sp.sort), last->id);
        size_t elen = b64url_encode(js, (size_t)len, enc);
        buf_append_str(&b, ",\"_next\":");
        buf_append_json_str(&b, enc, elen);
    }
    buf_append_str(&b, "}");
    rest_reply_json(h, 200, &b);
    buf_fini(&b);
    free(arr);
}

/* ---- patch, delete, token ---- */

/* Closes every connection of device id but self's (its credentials changed or it went). */
static void close_device_conns(struct gw *gw, uint64_t self, const char *id, const char *why)
{
    struct conn_iter it;
    struct conn *c;

    conn_iter_begin(&it, gw->conns);
    while ((c = conn_iter_next(&it)) != NULL)
        if (c->id != self && strcmp(c->device, id) == 0)
            conn_close(c, why);
}

/* dev as JSON with the new token added (shown once). */
static void write_with_token(const struct device *dev, const char *token, struct buf *b)
{
    devices_write_json(dev, b);
    if (token) {
        b->len--; /* reopen the object for the new token */
        buf_append_str(b, ",\"token\":");
        buf_append_json_str(b, token, strlen(token));
        buf_append_str(b, "}");
    }
}

/* ---- changes that apply once durable ----
 * A patch, a rotation or a deletion is submitted to storage first and changes memory
 * (and closes the device's connections) only once storage reports it committed, from
 * devices_durable, whether or not the asking connection is still there. A failed commit
 * leaves everything as it was: the old token still works, the device is still there. */

struct rest_change {
    struct rest *r;
    char id[DEVICE_ID_MAX + 1];
    uint64_t self;              /* the asking connection: a rotation does not close it */
    struct device_change ch;    /* a patch or a rotation */
    bool del, keep;             /* a deletion, keeping the telemetry */
};

static void change_durable(void *arg, bool ok)
{
    struct rest_change *rc = arg;
    struct gw *gw = ok ? rc->r->gw : NULL;
    /* stopping: storage holds the change; memory goes away and writes no more */
    struct device *dev = gw && !gw->stopping ? devices_find(gw->devices, rc->id) : NULL;

    if (dev && rc->del) {
        struct ticket t = {0, 0};
        /* again: a write of the device submitted meanwhile (a record, telemetry) goes too */
        devices_delete(gw->devices, rc->id, rc->keep);
        close_device_conns(gw, rc->self, rc->id, "device deleted");
        if (rc->r->on_device_deleted) /* after the closes, so no presence update follows it */
            rc->r->on_device_deleted(rc->r->device_deleted_ctx, rc->id, &t);
        log_info("device=%s deleted data=%s", rc->id, rc->keep ? "kept" : "deleted");
    } else if (dev) {
        bool rotated = rc->ch.set_token;
        devices_apply(gw->devices, dev, &rc->ch);
        if (rotated) {
            /* a connection that authenticated with the old token goes too */
            close_device_conns(gw, rc->self, rc->id, "token rotated");
            log_info("device=%s token rotated", rc->id);
        }
    } /* failed (the store logged it, the reply says 503), or the registry went first */
    devices_change_free(&rc->ch);
    free(rc);
}

static struct rest_change *change_new(struct rest *r, struct http_conn *h, const char *id)
{
    struct rest_change *rc = xcalloc(1, sizeof *rc);
    rc->r = r;
    rc->self = http_conn_of(h)->id;
    snprintf(rc->id, sizeof rc->id, "%s", id);
    return rc;
}

/* dev as it will be once ch applies: a view for the reply (borrows everything). */
static struct device change_view(const struct device *dev, const struct device_change *ch)
{
    struct device v = *dev;
    if (ch->set_name)
        v.name = ch->name;
    if (ch->set_metadata)
        v.metadata_json = ch->metadata_json;
    if (ch->set_attrs)
        v.server_attrs = ch->server_attrs;
    return v;
}

/* Submits rc's change of dev and answers status with body once it is durable. */
static void submit_change(struct rest_change *rc, struct http_conn *h, const struct device *dev,
                          struct buf *body)
{
    struct gw *gw = rc->r->gw;
    struct ticket t = ticket_one(devices_stage(gw->devices, dev, &rc->ch));
    devices_when_durable(gw->devices, t.last, change_durable, rc);
    rest_reply_when_durable(h, &t, 200, body, NULL);
}

static void new_token(struct gw *gw, struct device_change *ch, char token[64])
{
    devices_new_token(token);
    devices_hash_token(gw->token_secret, token, strlen(token), ch->token_hash);
    ch->set_token = true;
}

void rest_device_patch(struct rest *r, struct http_conn *h, struct http_req *req,
                       struct device *dev)
{
    static const char *const fields[] = {"attributes", "name", "metadata", "token", NULL};
    struct gw *gw = r->gw;
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(root, "attributes");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "token");
    char token[64] = "";
    struct rest_change *rc;
    struct device view;
    struct buf b;

    if (!root || !cJSON_IsObject(root) || !root->child) {
        http_respond_error(h, 400, "bad_json",
                           "body must be a JSON object with attributes, name, metadata and/or "
                           "{\"token\":\"rotate\"}");
        goto out;
    }
    if (!fields_ok(h, root, fields))
        goto out;
    if (attrs && !cJSON_IsObject(attrs)) {
        http_respond_error(h, 400, "invalid_attributes", "attributes must be a JSON object");
        goto out;
    }
    if (name && !name_ok(name, true)) {
        http_respond_error(h, 400, "invalid_name", "name must be a string of 1-128 bytes or null");
        goto out;
    }
    if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta)) {
        http_respond_error(h, 400, "invalid_metadata", "metadata must be a JSON object or null");
        goto out;
    }
    if (tok && !(cJSON_IsString(tok) && strcmp(tok->valuestring, "rotate") == 0)) {
        http_respond_error(h, 400, "invalid_token", "token may only be \"rotate\"");
        goto out;
    }
    rc = change_new(r, h, dev->id);
    if (attrs) { /* the server scope only: what the device reported stays */
        char *txt = print(attrs), *merged = dev->server_attrs ? xstrdup(dev->server_attrs) : NULL;

        devices_merge_attrs(&merged, txt, strlen(txt));
        free(txt);
        rc->ch.set_attrs = true;
        rc->ch.server_attrs = merged;
        if (attributes_too_large(gw, h, merged)) {
            devices_change_free(&rc->ch);
            free(rc);
            goto out;
        }
    }
    if (name) {
        rc->ch.set_name = true;
        rc->ch.name = cJSON_IsString(name) ? xstrdup(name->valuestring) : NULL;
    }
    if (meta) { /* replaced whole */
        rc->ch.set_metadata = true;
        rc->ch.metadata_json = cJSON_IsObject(meta) && meta->child ? print(meta) : NULL;
    }
    if (tok)
        new_token(gw, &rc->ch, token);
    view = change_view(dev, &rc->ch);
    buf_init(&b);
    write_with_token(&view, token[0] ? token : NULL, &b);
    OPENSSL_cleanse(token, sizeof token);
    submit_change(rc, h, dev, &b);
out:
    cJSON_Delete(root);
}

void rest_device_patch_attrs(struct rest *r, struct http_conn *h, struct http_req *req,
                             struct device *dev)
{
    char *merged = dev->server_attrs ? xstrdup(dev->server_attrs) : NULL;
    struct rest_change *rc;
    struct device view;
    struct buf b;

    if (devices_merge_attrs(&merged, (const char *)req->body, req->body_len) != 0) {
        free(merged);
        http_respond_error(h, 400, "invalid_attributes",
                           "body must be a JSON object of attributes (null deletes one)");
        return;
    }
    if (attributes_too_large(r->gw, h, merged)) {
        free(merged);
        return;
    }
    rc = change_new(r, h, dev->id);
    rc->ch.set_attrs = true;
    rc->ch.server_attrs = merged;
    view = change_view(dev, &rc->ch);
    buf_init(&b);
    devices_write_attrs_json(&view, &b);
    submit_change(rc, h, dev, &b);
}

void rest_device_token(struct rest *r, struct http_conn *h, struct device *dev)
{
    struct rest_change *rc = change_new(r, h, dev->id);
    char token[64];
    struct buf b;

    new_token(r->gw, &rc->ch, token);
    buf_init(&b);
    buf_append_str(&b, "{\"id\":");
    buf_append_json_str(&b, dev->id, strlen(dev->id));
    buf_append_str(&b, ",\"token\":");
    buf_append_json_str(&b, token, strlen(token));
    buf_append_str(&b, "}");
    OPENSSL_cleanse(token, sizeof token);
    submit_change(rc, h, dev, &b);
}

void rest_device_delete(struct rest *r, struct http_conn *h, struct http_req *req,
                        struct device *dev)
{
    static const char *const params[] = {"data", NULL};
    struct gw *gw = r->gw;
    char val[16];
    bool keep = false;
    struct rest_change *rc;
    struct buf b;
    struct ticket t;

    if (!rest_check_params(h, req, params))
        return;
    if (http_query_param(req, "data", val, sizeof val)) {
        if (strcmp(val, "keep") != 0 && strcmp(val, "delete") != 0) {
            http_respond_error(h, 400, "bad_param", "data must be keep or delete");
            return;
        }
        keep = strcmp(val, "keep") == 0;
    }
    rc = change_new(r, h, dev->id);
    rc->del = true;
    rc->keep = keep;
    t = ticket_one(devices_stage_delete(gw->devices, rc->id, keep));
    buf_init(&b);
    buf_append_str(&b, "{\"deleted\":");
    buf_append_json_str(&b, rc->id, strlen(rc->id));
    buf_printf(&b, ",\"data\":\"%s\"}", keep ? "kept" : "deleted");
    devices_when_durable(gw->devices, t.last, change_durable, rc);
    rest_reply_when_durable(h, &t, 200, &b, NULL);
}
