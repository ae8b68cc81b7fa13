/* gateway/devices.c: see devices.h. The pending values are a ring (no allocation per
 * message); an entry whose device is removed keeps its slot with m = NULL until its
 * write is reported. */
#include "gateway/devices.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/b64.h"
#include "gateway/ticket.h"

/* An emptied ring larger than this is freed: a burst does not pin its peak. */
#define PENDING_KEEP 4096

static const char *const role_names[] = {[DEVICE_ROLE_DEVICE] = "device",
                                         [DEVICE_ROLE_APP] = "app"};

const char *devices_role_name(enum device_role role)
{
    return (unsigned)role < sizeof role_names / sizeof role_names[0] ? role_names[role]
                                                                     : "device";
}

int devices_role_parse(const char *name, enum device_role *out)
{
    for (unsigned i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
        if (name && strcmp(name, role_names[i]) == 0) {
            *out = (enum device_role)i;
            return 0;
        }
    }
    return -1;
}

void devices_init(struct devices *d)
{
    memset(d, 0, sizeof *d);
    map_init(&d->by_id);
}

void devices_set_store(struct devices *d, const struct devices_store *store)
{
    d->store = *store;
}

static void free_latest(struct latest_val *lv)
{
    free(lv->key);
    free((char *)lv->p.str);
    free(lv);
}

static void free_device(struct device *dev)
{
    size_t it = 0;
    void *v;
    while (map_next(&dev->latest, &it, NULL, &v))
        free_latest(v);
    map_fini(&dev->latest);
    free(dev->name);
    free(dev->metadata_json);
    free(dev->server_attrs);
    free(dev->reported_attrs);
    free(dev->record_json);
    free(dev);
}

static struct devices_pending *pending_at(struct devices *d, size_t i)
{
    return &d->pending[(d->pending_head + i) % d->pending_cap];
}

static void pending_push(struct devices *d, struct msg *m, uint64_t seq)
{
    if (d->pending_len == d->pending_cap) {
        size_t cap = d->pending_cap ? 2 * d->pending_cap : 64;
        struct devices_pending *ring = xmalloc(cap * sizeof *ring);
        for (size_t i = 0; i < d->pending_len; i++)
            ring[i] = *pending_at(d, i);
        free(d->pending);
        d->pending = ring;
        d->pending_cap = cap;
        d->pending_head = 0;
    }
    *pending_at(d, d->pending_len++) = (struct devices_pending){msg_ref(m), seq};
}

/* Takes the oldest entry off the ring; the caller owns its reference. */
static struct devices_pending pending_pop(struct devices *d)
{
    struct devices_pending p = d->pending[d->pending_head];
    d->pending_head = (d->pending_head + 1) % d->pending_cap;
    d->pending_len--;
    return p;
}

void devices_fini(struct devices *d)
{
    size_t it = 0;
    void *v;
    while (d->pending_len > 0)
        msg_unref(pending_pop(d).m);
    free(d->pending);
    while (d->staged) {
        struct devices_staged *st = d->staged;
        d->staged = st->next;
        st->fn(st->arg, false);
        free(st);
    }
    while (map_next(&d->by_id, &it, NULL, &v))
        free_device(v);
    map_fini(&d->by_id);
}

struct device *devices_find(struct devices *d, const char *id)
{
    return map_get(&d->by_id, id, strlen(id));
}

struct device *devices_add(struct devices *d, const char *id, const char *token_hash,
                           enum device_role role, int64_t created_ms)
{
    struct device *dev = xcalloc(1, sizeof *dev);
    snprintf(dev->id, sizeof dev->id, "%s", id);
    snprintf(dev->token_hash, sizeof dev->token_hash, "%s", token_hash ? token_hash : "");
    dev->role = role;
    dev->created_ms = created_ms;
    map_init(&dev->latest);
    map_put(&d->by_id, dev->id, strlen(dev->id), dev);
    return dev;
}

struct device *devices_create(struct devices *d, const char *id, const char *token_hash,
                              enum device_role role, const char *attrs_json, int64_t created_ms,
                              uint64_t *seq)
{
    struct device *dev = devices_add(d, id, token_hash, role, created_ms);
    if (attrs_json)
        dev->server_attrs = xstrdup(attrs_json);
    *seq = devices_save(d, dev);
    return dev;
}

static void add_raw(cJSON *to, const char *name, const char *json)
{
    cJSON *v = json ? cJSON_Parse(json) : NULL;
    if (v)
        cJSON_AddItemToObject(to, name, v);
}

static char *record_of(const struct device *dev)
{
    cJSON *rec;
    char *txt, *out;

    if (!dev->name && !dev->metadata_json && !dev->server_attrs && !dev->reported_attrs)
        return NULL;
    rec = cJSON_CreateObject();
    cJSON_AddNumberToObject(rec, "$gale", 2);
    if (dev->name)
        cJSON_AddStringToObject(rec, "name", dev->name);
    add_raw(rec, "metadata", dev->metadata_json);
    add_raw(rec, "server", dev->server_attrs);
    add_raw(rec, "reported", dev->reported_attrs);
    txt = cJSON_PrintUnformatted(rec);
    out = xstrdup(txt);
    cJSON_free(txt);
    cJSON_Delete(rec);
    return out;
}

uint64_t devices_save(struct devices *d, struct device *dev)
{
    free(dev->record_json);
    dev->record_json = record_of(dev);
    dev->put_seq = d->store.put ? d->store.put(d->store.ctx, dev) : 0;
    return dev->put_seq;
}

uint64_t devices_stage(struct devices *d, const struct device *dev, struct device_change *ch)
{
    struct device tmp = *dev; /* the fields record_of and the store read; nothing owned */

    if (ch->set_name)
        tmp.name = ch->name;
    if (ch->set_metadata)
        tmp.metadata_json = ch->metadata_json;
    if (ch->set_attrs)
        tmp.server_attrs = ch->server_attrs;
    if (ch->set_token)
        memcpy(tmp.token_hash, ch->token_hash, sizeof tmp.token_hash);
    free(ch->record_json);
    ch->record_json = tmp.record_json = record_of(&tmp);
    ch->seq = d->store.put ? d->store.put(d->store.ctx, &tmp) : 0;
    return ch->seq;
}

static void take_str(char **field, char **value)
{
    free(*field);
    *field = *value;
    *value = NULL;
}

void devices_apply(struct devices *d, struct device *dev, struct device_change *ch)
{
    if (ch->set_name)
        take_str(&dev->name, &ch->name);
    if (ch->set_metadata)
        take_str(&dev->metadata_json, &ch->metadata_json);
    if (ch->set_attrs)
        take_str(&dev->server_attrs, &ch->server_attrs);
    if (ch->set_token)
        memcpy(dev->token_hash, ch->token_hash, sizeof dev->token_hash);
    ch->set_name = ch->set_metadata = ch->set_attrs = ch->set_token = false;
    if (dev->put_seq > ch->seq) { /* a later write stored the old fields: store these */
        devices_save(d, dev);
        return;
    }
    free(dev->record_json); /* the record as ch's committed write stored it */
    dev->record_json = record_of(dev);
    dev->put_seq = ch->seq;
}

void devices_change_free(struct device_change *ch)
{
    free(ch->name);
    free(ch->metadata_json);
    free(ch->server_attrs);
    free(ch->record_json);
    memset(ch, 0, sizeof *ch);
}

void devices_when_durable(struct devices *d, uint64_t seq, devices_durable_fn fn, void *arg)
{
    struct devices_staged *st;

    if (seq == 0) {
        fn(arg, true);
        return;
    }
    st = xcalloc(1, sizeof *st);
    st->seq = seq;
    st->fn = fn;
    st->arg = arg;
    if (d->staged_last)
        d->staged_last->next = st;
    else
        d->staged = st;
    d->staged_last = st;
}

/* The text of member name of rec when it is a JSON object, else NULL. */
static char *object_text(const cJSON *rec, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, name);
    char *txt, *out;

    if (!cJSON_IsObject(v) || !v->child)
        return NULL;
    txt = cJSON_PrintUnformatted(v);
    out = xstrdup(txt);
    cJSON_free(txt);
    return out;
}

void devices_load_record(struct device *dev, const char *text)
{
    cJSON *rec = text ? cJSON_Parse(text) : NULL;
    const cJSON *mark = cJSON_GetObjectItemCaseSensitive(rec, "$gale");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(rec, "name");

    if (!cJSON_IsObject(rec)) {
        cJSON_Delete(rec);
        return;
    }
    if (cJSON_IsNumber(mark) && mark->valueint == 2) {
        if (cJSON_IsString(name))
            dev->name = xstrdup(name->valuestring);
        dev->metadata_json = object_text(rec, "metadata");
        dev->server_attrs = object_text(rec, "server");
        dev->reported_attrs = object_text(rec, "reported");
    } else if (rec->child) {
        dev->server_attrs = xstrdup(text);
    }
    dev->record_json = record_of(dev);
    cJSON_Delete(rec);
}

int devices_merge_attrs(char **attrs, const char *patch, size_t len)
{
    cJSON *upd = cJSON_ParseWithLength(patch, len), *cur, *it;
    char *txt;

    if (!cJSON_IsObject(upd)) {
        cJSON_Delete(upd);
        return -1;
    }
    cur = *attrs ? cJSON_Parse(*attrs) : NULL;
    if (!cJSON_IsObject(cur)) {
        cJSON_Delete(cur);
        cur = cJSON_CreateObject();
    }
    cJSON_ArrayForEach(it, upd)
    {
        cJSON_DeleteItemFromObjectCaseSensitive(cur, it->string);
        if (!cJSON_IsNull(it))
            cJSON_AddItemToObject(cur, it->string, cJSON_Duplicate(it, 1));
    }
    free(*attrs);
    *attrs = NULL;
    if (cur->child) {
        txt = cJSON_PrintUnformatted(cur);
        *attrs = xstrdup(txt);
        cJSON_free(txt);
    }
    cJSON_Delete(cur);
    cJSON_Delete(upd);
    return 0;
}

uint64_t devices_touch(struct devices *d, struct device *dev, const char *protocol,
                       int64_t now_ms)
{
    dev->last_seen_ms = now_ms;
    if (protocol)
        snprintf(dev->protocol, sizeof dev->protocol, "%s", protocol);
    return d->store.touch ? d->store.touch(d->store.ctx, dev) : 0;
}

uint64_t devices_delete(struct devices *d, const char *id, bool keep_data)
{
    char copy[DEVICE_ID_MAX + 1];
    snprintf(copy, sizeof copy, "%s", id); /* id may be the record's own, freed here */
    devices_remove(d, copy);
    if (keep_data)
        return d->store.forget ? d->store.forget(d->store.ctx, copy) : 0;
    return d->store.remove ? d->store.remove(d->store.ctx, copy) : 0;
}

uint64_t devices_stage_delete(struct devices *d, const char *id, bool keep_data)
{
    if (keep_data)
        return d->store.forget ? d->store.forget(d->store.ctx, id) : 0;
    return d->store.remove ? d->store.remove(d->store.ctx, id) : 0;
}

void devices_remove(struct devices *d, const char *id)
{
    struct device *dev = map_del(&d->by_id, id, strlen(id));
    if (!dev)
        return;
    if (dev->http_online)
        list_remove(&d->http_active, &dev->http_link);
    free_device(dev);
    for (size_t i = 0; i < d->pending_len; i++) { /* deletions are rare: a walk will do */
        struct devices_pending *p = pending_at(d, i);
        if (p->m && strcmp(p->m->device, id) == 0) {
            msg_unref(p->m);
            p->m = NULL;
        }
    }
}

void devices_sink(void *ctx, struct msg *m, struct ticket *t)
{
    struct devices *d = ctx;
    struct device *dev;

    if (m->kind != MSG_TELEMETRY || !m->device[0] || m->npoints == 0)
        return;
    dev = devices_find(d, m->device);
    if (!dev)
        return;
    if (ticket_empty(t))
        devices_update_latest(dev, m);
    else
        pending_push(d, m, t->last);
}

void devices_durable(struct devices *d, uint64_t upto_seq, bool ok)
{
    while (d->pending_len > 0 && d->pending[d->pending_head].seq <= upto_seq) {
        struct devices_pending p = pending_pop(d);
        struct device *dev = ok && p.m ? devices_find(d, p.m->device) : NULL;
        if (dev)
            devices_update_latest(dev, p.m);
        msg_unref(p.m);
    }
    while (d->staged && d->staged->seq <= upto_seq) {
        struct devices_staged *st = d->staged;
        d->staged = st->next;
        if (!d->staged)
            d->staged_last = NULL;
        st->fn(st->arg, ok);
        free(st);
    }
    if (d->pending_len == 0 && d->pending_cap > PENDING_KEEP) {
        free(d->pending);
        d->pending = NULL;
        d->pending_cap = d->pending_head = 0;
    }
}

void devices_set_latest(struct device *dev, const struct point *p)
{
    size_t klen = strlen(p->key);
    struct latest_val *lv = map_get(&dev->latest, p->key, klen);
    if (lv && lv->p.ts_ms > p->ts_ms)
        return;
    if (!lv) {
        lv = xcalloc(1, sizeof *lv);
        lv->key = xstrndup(p->key, klen);
        map_put(&dev->latest, lv->key, klen, lv);
    }
    free((char *)lv->p.str);
    lv->p = *p;
    lv->p.key = lv->key;
    lv->p.str = p->str ? xstrndup(p->str, p->str_len) : NULL;
}

void devices_update_latest(struct device *dev, const struct msg *m)
{
    for (size_t i = 0; i < m->npoints; i++)
        devices_set_latest(dev, &m->points[i]);
}

static int cmp_dev(const void *a, const void *b)
{
    return strcmp((*(struct device *const *)a)->id, (*(struct device *const *)b)->id);
}

struct device **devices_sorted(struct devices *d, size_t *n)
{
    struct device **arr = xmalloc((d->by_id.len + 1) * sizeof *arr);
    size_t it = 0, i = 0;
    void *v;
    while (map_next(&d->by_id, &it, NULL, &v))
        arr[i++] = v;
    qsort(arr, i, sizeof *arr, cmp_dev);
    *n = i;
    return arr;
}

void devices_write_value_json(const struct point *p, struct buf *out)
{
    switch (p->type) {
    case VAL_NUM:
        if (isfinite(p->num) && p->num == (double)(int64_t)p->num && fabs(p->num) < 9e15)
            buf_printf(out, "%lld", (long long)p->num);
        else if (isfinite(p->num)) {
            char tmp[32];
            /* the shortest of %.15g/%.16g/%.17g that reads back as the same double */
            for (int prec = 15; prec <= 17; prec++) {
                snprintf(tmp, sizeof tmp, "%.*g", prec, p->num);
                if (strtod(tmp, NULL) == p->num)
                    break;
            }
            buf_append_str(out, tmp);
        }
        else
            buf_append_str(out, "null");
        break;
    case VAL_BOOL:
        buf_append_str(out, p->num != 0 ? "true" : "false");
        break;
    case VAL_STR:
        buf_append_json_str(out, p->str ? p->str : "", p->str ? p->str_len : 0);
        break;
    case VAL_JSON:
        buf_append(out, p->str ? p->str : "null", p->str ? p->str_len : 4);
        break;
    }
}

void devices_write_json(const struct device *dev, struct buf *out)
{
    const char *role = devices_role_name(dev->role);

    buf_append_str(out, "{\"id\":");
    buf_append_json_str(out, dev->id, strlen(dev->id));
    buf_append_str(out, ",\"role\":");
    buf_append_json_str(out, role, strlen(role));
    buf_printf(out, ",\"created\":%lld,\"online\":%s,\"last_seen\":", (long long)dev->created_ms,
               devices_online(dev) ? "true" : "false");
    if (dev->last_seen_ms)
        buf_printf(out, "%lld", (long long)dev->last_seen_ms);
    else
        buf_append_str(out, "null");
    buf_append_str(out, ",\"protocol\":");
    if (dev->protocol[0])
        buf_append_json_str(out, dev->protocol, strlen(dev->protocol));
    else
        buf_append_str(out, "null");
    buf_printf(out, ",\"connections\":%d", dev->online);
    if (dev->name) {
        buf_append_str(out, ",\"name\":");
        buf_append_json_str(out, dev->name, strlen(dev->name));
    }
    if (dev->metadata_json) {
        buf_append_str(out, ",\"metadata\":");
        buf_append_str(out, dev->metadata_json);
    }
    if (dev->server_attrs || dev->reported_attrs) {
        char *both = dev->reported_attrs ? xstrdup(dev->reported_attrs) : NULL;
        if (dev->server_attrs)
            devices_merge_attrs(&both, dev->server_attrs, strlen(dev->server_attrs));
        buf_append_str(out, ",\"attributes\":");
        buf_append_str(out, both ? both : "{}");
        free(both);
    }
    buf_append_str(out, "}");
}

void devices_write_attrs_json(const struct device *dev, struct buf *out)
{
    buf_append_str(out, "{\"server\":");
    buf_append_str(out, dev->server_attrs ? dev->server_attrs : "{}");
    buf_append_str(out, ",\"reported\":");
    buf_append_str(out, dev->reported_attrs ? dev->reported_attrs : "{}");
    buf_append_str(out, "}");
}

static int cmp_latest(const void *a, const void *b)
{
    return strcmp((*(struct latest_val *const *)a)->key, (*(struct latest_val *const *)b)->key);
}

void devices_write_latest_json(const struct device *dev, struct buf *out)
{
    struct latest_val **arr = xmalloc((dev->latest.len + 1) * sizeof *arr);
    size_t it = 0, n = 0;
    void *v;
    while (map_next(&dev->latest, &it, NULL, &v))
        arr[n++] = v;
    qsort(arr, n, sizeof *arr, cmp_latest);
    buf_append_str(out, "{");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append_str(out, ",");
        buf_append_json_str(out, arr[i]->key, strlen(arr[i]->key));
        buf_printf(out, ":{\"ts\":%lld,\"value\":", (long long)arr[i]->p.ts_ms);
        devices_write_value_json(&arr[i]->p, out);
        buf_append_str(out, "}");
    }
    buf_append_str(out, "}");
    free(arr);
}

void devices_new_token(char out[64])
{
    unsigned char raw[32];

    if (RAND_bytes(raw, sizeof raw) != 1)
        abort(); /* no randomness: refuse to mint guessable tokens */
    b64url_encode(raw, sizeof raw, out); /* 43 characters */
}

void devices_hash_token(const unsigned char secret[32], const char *token, size_t len,
                        char out[DEVICE_TOKEN_HASH_HEX + 1])
{
    unsigned char mac[32];
    unsigned int maclen = sizeof mac;
    HMAC(EVP_sha256(), secret, 32, (const unsigned char *)token, len, mac, &maclen);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

bool devices_check_token(const unsigned char secret[32], const struct device *dev,
                         const char *token, size_t len)
{
    char h[DEVICE_TOKEN_HASH_HEX + 1];
    if (!dev->token_hash[0] || len == 0 || len > 256)
        return false;
    devices_hash_token(secret, token, len, h);
    return CRYPTO_memcmp(h, dev->token_hash, DEVICE_TOKEN_HASH_HEX) == 0;
}

int devices_valid_id(const char *s, size_t len)
{
    if (len < 1 || len > DEVICE_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}
