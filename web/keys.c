/* web/keys.c: the API key table (see keys.h). Keys are in a map by id and in a list in
 * creation order; a revoked key leaves both at once (the revoked hook closes what it
 * authenticated), and its row goes after. Loop thread only. */
#include "web/keys.h"

#include <cjson/cJSON.h>
#include <fnmatch.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/map.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/ticket.h"
#include "protocols/http/http.h"
#include "storage/store.h"
#include "web/rest_int.h"

#define KEYS_SECRET_BYTES 32   /* 256 random bits, hex in the key */
#define KEYS_MAX 10000         /* keys one gateway holds */
#define KEYS_MAX_GLOBS 64      /* globs in a device filter */
#define KEYS_MAX_GLOB_BYTES 128
#define BOOTSTRAP_ID "bootstrap"

struct keys {
    struct gw *gw;
    struct store *store;
    struct map by_id;            /* id -> struct api_key */
    struct list all;             /* struct api_key by link, creation order */
    keys_revoked_fn on_revoked;  /* NULL: none */
    void *revoked_ctx;
};

static const char *const role_names[] = {"none", "read", "operator", "admin"};

const char *keys_role_name(enum key_role role)
{
    return (unsigned)role < sizeof role_names / sizeof role_names[0] ? role_names[role] : "none";
}

static bool role_parse(const char *s, enum key_role *out)
{
    for (int i = KEY_ROLE_READ; s && i <= KEY_ROLE_ADMIN; i++)
        if (strcmp(s, role_names[i]) == 0)
            return (*out = (enum key_role)i), true;
    return false;
}

static void key_free(struct api_key *k)
{
    for (size_t i = 0; i < k->ndevices; i++)
        free(k->devices[i]);
    free(k->devices);
    free(k->devices_json);
    free(k);
}

/* Reads a device filter (a JSON array of globs) into k. False with *why when it is not
 * one. An empty array is refused: a key for no device is of no use. */
static bool read_filter(struct api_key *k, const cJSON *arr, const char **why)
{
    const cJSON *it;
    size_t n = 0;
    char *txt;

    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) < 1 ||
        cJSON_GetArraySize(arr) > KEYS_MAX_GLOBS) {
        *why = "devices must be an array of 1..64 device ids or globs (\"pump-*\")";
        return false;
    }
    cJSON_ArrayForEach(it, arr)
    {
        size_t len;
        if (!cJSON_IsString(it) || (len = strlen(it->valuestring)) == 0 ||
            len > KEYS_MAX_GLOB_BYTES) {
            *why = "each entry of devices must be a non-empty string of at most 128 bytes";
            return false;
        }
    }
    k->devices = xcalloc((size_t)cJSON_GetArraySize(arr), sizeof *k->devices);
    cJSON_ArrayForEach(it, arr)
        k->devices[n++] = xstrdup(it->valuestring);
    k->ndevices = n;
    txt = cJSON_PrintUnformatted(arr);
    k->devices_json = xstrdup(txt);
    cJSON_free(txt);
    return true;
}

bool keys_allows_device(const struct api_key *k, const char *device)
{
    if (!k)
        return false;
    if (k->ndevices == 0)
        return true;
    for (size_t i = 0; i < k->ndevices; i++)
        if (fnmatch(k->devices[i], device, 0) == 0)
            return true;
    return false;
}

static void hash_hex(const unsigned char h[32], char out[65])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[h[i] >> 4];
        out[2 * i + 1] = hex[h[i] & 15];
    }
    out[64] = '\0';
}

static bool hex_parse(const char *s, unsigned char out[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = s[2 * i + j];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= (unsigned)(c - 'a' + 10);
            else
                return false;
        }
        out[i] = (unsigned char)v;
    }
    return s[64] == '\0';
}

static void add(struct keys *ks, struct api_key *k)
{
    map_put(&ks->by_id, k->id, strlen(k->id), k);
    list_push_back(&ks->all, &k->link);
}

static struct api_key *find_name(struct keys *ks, const char *name)
{
    for (struct list_link *e = ks->all.head; e; e = e->next) {
        struct api_key *k = list_entry(e, struct api_key, link);
        if (strcmp(k->name, name) == 0)
            return k;
    }
    return NULL;
}

static uint64_t save(struct keys *ks, const struct api_key *k, int64_t revoked_ms)
{
    char hex[65];
    struct store_api_key sk = {k->id, k->name, keys_role_name(k->role), k->devices_json,
                               NULL, k->created_ms, revoked_ms};
    if (!k->bootstrap) {
        hash_hex(k->hash, hex);
        sk.hash = hex;
    }
    return store_put_api_key(ks->store, &sk);
}

/* ---- loading ---- */

struct load_ctx {
    struct keys *ks;
    bool bootstrap_seen;          /* its row exists */
    bool bootstrap_revoked;
    int64_t bootstrap_created_ms;
};

static void on_loaded(void *ctx, const struct store_api_key *sk)
{
    struct load_ctx *lc = ctx;
    struct api_key *k;
    cJSON *arr = NULL;
    const char *why;

    if (strcmp(sk->id, BOOTSTRAP_ID) == 0) {
        lc->bootstrap_seen = true;
        lc->bootstrap_revoked = sk->revoked_ms != 0;
        lc->bootstrap_created_ms = sk->created_ms;
        return;
    }
    if (sk->revoked_ms || strlen(sk->id) > KEYS_ID_MAX || strlen(sk->name) > KEYS_NAME_MAX)
        return;
    k = xcalloc(1, sizeof *k);
    snprintf(k->id, sizeof k->id, "%s", sk->id);
    snprintf(k->name, sizeof k->name, "%s", sk->name);
    k->created_ms = sk->created_ms;
    if (!role_parse(sk->role, &k->role) || !sk->hash || !hex_parse(sk->hash, k->hash) ||
        (sk->devices_json && (!(arr = cJSON_Parse(sk->devices_json)) ||
                              !read_filter(k, arr, &why)))) {
        log_warn("api key id=%s: stored record unreadable, skipped", sk->id);
        key_free(k);
    } else {
        add(lc->ks, k);
    }
    cJSON_Delete(arr);
}

struct keys *keys_new(struct gw *gw, struct store *store)
{
    struct keys *ks = xcalloc(1, sizeof *ks);
    struct load_ctx lc = {ks, false, false, 0};

    ks->gw = gw;
    ks->store = store;
    map_init(&ks->by_id);
    if (store_load_api_keys(store, on_loaded, &lc) != 0) {
        keys_free(ks);
        return NULL;
    }
    if (!lc.bootstrap_revoked && gw->api_key[0]) {
        struct api_key *k = xcalloc(1, sizeof *k);
        snprintf(k->id, sizeof k->id, "%s", BOOTSTRAP_ID);
        snprintf(k->name, sizeof k->name, "default");
        k->role = KEY_ROLE_ADMIN;
        k->bootstrap = true;
        k->created_ms = lc.bootstrap_seen ? lc.bootstrap_created_ms : gw_now_ms();
        map_put(&ks->by_id, k->id, strlen(k->id), k);
        list_push_front(&ks->all, &k->link);
        if (!lc.bootstrap_seen) /* its row keeps its creation time (and, later, a revocation) */
            save(ks, k, 0);
    } else if (lc.bootstrap_revoked) {
        log_info("api key id=bootstrap is revoked: the configured key is refused");
    }
    return ks;
}

void keys_free(struct keys *ks)
{
    if (!ks)
        return;
    while (ks->all.head) {
        struct api_key *k = list_entry(ks->all.head, struct api_key, link);
        list_remove(&ks->all, &k->link);
        key_free(k);
    }
    map_fini(&ks->by_id);
    free(ks);
}

void keys_set_revoked_hook(struct keys *ks, keys_revoked_fn fn, void *ctx)
{
    ks->on_revoked = fn;
    ks->revoked_ctx = ctx;
}

/* ---- checking ---- */

const struct api_key *keys_check(struct keys *ks, const char *secret)
{
    struct api_key *k = NULL;
    const char *sep;
    size_t idlen;

    if (!ks || !secret || !*secret)
        return NULL;
    /* gk_<id>_<secret>: the id finds the one hash to compare */
    if (strncmp(secret, "gk_", 3) == 0 && (sep = strchr(secret + 3, '_')) != NULL &&
        (idlen = (size_t)(sep - secret - 3)) > 0 && idlen <= KEYS_ID_MAX) {
        char id[KEYS_ID_MAX + 1];
        memcpy(id, secret + 3, idlen);
        id[idlen] = '\0';
        k = strcmp(id, BOOTSTRAP_ID) != 0 ? map_get(&ks->by_id, id, idlen) : NULL;
        if (k) {
            unsigned char h[32];
            SHA256((const unsigned char *)secret, strlen(secret), h);
            if (CRYPTO_memcmp(h, k->hash, sizeof h) != 0)
                k = NULL;
        }
    }
    if (!k) { /* the configured key, compared as it always was */
        struct api_key *b = map_get(&ks->by_id, BOOTSTRAP_ID, strlen(BOOTSTRAP_ID));
        const char *want = ks->gw->api_key;
        size_t klen = strlen(want);
        if (b && klen > 0 && strlen(secret) == klen && CRYPTO_memcmp(secret, want, klen) == 0)
            k = b;
    }
    if (k)
        k->last_used_ms = gw_now_ms();
    return k;
}

/* ---- REST ---- */

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > KEYS_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("_.:@-", *s)))
            return false;
    return true;
}

static void write_key(const struct api_key *k, struct buf *b)
{
    buf_append_str(b, "{\"id\":");
    buf_append_json_str(b, k->id, strlen(k->id));
    buf_append_str(b, ",\"name\":");
    buf_append_json_str(b, k->name, strlen(k->name));
    buf_printf(b, ",\"role\":\"%s\",\"devices\":%s,\"created\":%lld,\"last_used\":",
               keys_role_name(k->role), k->devices_json ? k->devices_json : "null",
               (long long)k->created_ms);
    if (k->last_used_ms)
        buf_printf(b, "%lld", (long long)k->last_used_ms);
    else
        buf_append_str(b, "null");
    if (k->bootstrap)
        buf_append_str(b, ",\"configured\":true");
}

static void list_keys(struct keys *ks, struct http_conn *h)
{
    struct buf b;
    size_t n = 0;

    buf_init(&b);
    buf_append_str(&b, "{\"keys\":[");
    for (struct list_link *e = ks->all.head; e; e = e->next) {
        if (n++)
            buf_append_str(&b, ",");
        write_key(list_entry(e, struct api_key, link), &b);
        buf_append_str(&b, "}");
    }
    buf_printf(&b, "],\"count\":%zu}", n);
    rest_reply_json(h, 200, &b);
    buf_fini(&b);
}

/* A created key's answer, waiting for its row to be durable; freed by on_created. */
struct created {
    struct keys *ks;
    char id[KEYS_ID_MAX + 1];
    struct buf body;     /* the 201 body, with the key */
};

/* The row is durable: 201 with the key. It failed, or the client went away first: the
 * key is forgotten (nobody was shown it) and the answer says nothing was stored. */
static void on_created(struct conn *c, uint64_t tag, int ok)
{
    struct created *p = (struct created *)(uintptr_t)tag;
    struct http_conn *h = ok >= 0 ? http_from_conn(c) : NULL;
    struct api_key *k;

    if (ok <= 0 && (k = map_get(&p->ks->by_id, p->id, strlen(p->id))) != NULL) {
        map_del(&p->ks->by_id, k->id, strlen(k->id));
        list_remove(&p->ks->all, &k->link);
        store_delete_api_key(p->ks->store, k->id); /* a row that made it, if any */
        key_free(k);
    }
    if (h && ok)
        rest_reply_json(h, 201, &p->body);
    else if (h && c->gw->storage_full)
        http_respond_error(h, 507, "storage_full", "storage full: no key was created");
    else if (h)
        http_respond_error(h, 503, "storage_error", "storage failure: no key was created");
    OPENSSL_cleanse(p->body.data, p->body.len);
    buf_fini(&p->body);
    free(p);
}

static void create_key(struct keys *ks, struct http_conn *h, struct http_req *req)
{
    static const char *const fields[] = {"name", "role", "devices", NULL};
    cJSON *root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(root, "role");
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(root, "devices");
    unsigned char rnd[8 + KEYS_SECRET_BYTES];
    char secret[3 + KEYS_ID_MAX + 1 + 2 * KEYS_SECRET_BYTES + 1];
    static const char hex[] = "0123456789abcdef";
    struct api_key *k = NULL;
    const char *why = NULL;
    struct ticket t = {0, 0};
    struct created *p;
    size_t n;

    if (!cJSON_IsObject(root)) {
        http_respond_error(h, 400, "bad_json",
                           "body must be a JSON object like "
                           "{\"name\":\"wall-display\",\"role\":\"read\"}");
        goto out;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        bool ok = false;
        for (const char *const *f = fields; !ok && *f; f++)
            ok = strcmp(it->string, *f) == 0;
        if (!ok) {
            char msg[160];
            snprintf(msg, sizeof msg, "unknown field \"%.64s\" (fields: name, role, devices)",
                     it->string);
            http_respond_error(h, 400, "unknown_field", msg);
            goto out;
        }
    }
    if (!cJSON_IsString(name) || !name_ok(name->valuestring)) {
        http_respond_error(h, 400, "invalid_name",
                           "name must be 1..64 characters of A-Z a-z 0-9 _ . : @ -");
        goto out;
    }
    k = xcalloc(1, sizeof *k);
    if (!cJSON_IsString(role) || !role_parse(role->valuestring, &k->role)) {
        http_respond_error(h, 400, "invalid_role", "role must be admin, operator or read");
        goto out;
    }
    if (devs && !cJSON_IsNull(devs) && !read_filter(k, devs, &why)) {
        http_respond_error(h, 400, "invalid_devices", why);
        goto out;
    }
    if (find_name(ks, name->valuestring)) {
        http_respond_error(h, 409, "name_taken", "a key with this name exists");
        goto out;
    }
    if (ks->all.len >= KEYS_MAX) {
        http_respond_error(h, 409, "too_many_keys", "this gateway holds 10000 keys already");
        goto out;
    }
    snprintf(k->name, sizeof k->name, "%s", name->valuestring);
    do {
        RAND_bytes(rnd, sizeof rnd);
        for (int i = 0; i < 8; i++) {
            k->id[2 * i] = hex[rnd[i] >> 4];
            k->id[2 * i + 1] = hex[rnd[i] & 15];
        }
        k->id[KEYS_ID_MAX] = '\0';
    } while (map_get(&ks->by_id, k->id, KEYS_ID_MAX));
    n = (size_t)snprintf(secret, sizeof secret, "gk_%s_", k->id);
    for (int i = 0; i < KEYS_SECRET_BYTES; i++) {
        secret[n++] = hex[rnd[8 + i] >> 4];
        secret[n++] = hex[rnd[8 + i] & 15];
    }
    secret[n] = '\0';
    SHA256((const unsigned char *)secret, n, k->hash);
    k->created_ms = gw_now_ms();
    add(ks, k);
    ticket_add(&t, save(ks, k, 0));
    log_info("api key id=%s name=%s role=%s created", k->id, k->name, keys_role_name(k->role));
    p = xcalloc(1, sizeof *p);
    p->ks = ks;
    snprintf(p->id, sizeof p->id, "%s", k->id);
    buf_init(&p->body);
    write_key(k, &p->body);
    buf_append_str(&p->body, ",\"key\":");
    buf_append_json_str(&p->body, secret, n);
    buf_append_str(&p->body, "}");
    OPENSSL_cleanse(secret, sizeof secret);
    OPENSSL_cleanse(rnd, sizeof rnd);
    k = NULL;
    gw_await_durable(http_conn_of(h), &t, (uint64_t)(uintptr_t)p, on_created);
out:
    if (k)
        key_free(k);
    cJSON_Delete(root);
}

/* Whether an admin key for every device other than k is left. */
static bool other_full_admin(struct keys *ks, const struct api_key *k)
{
    for (struct list_link *e = ks->all.head; e; e = e->next) {
        struct api_key *o = list_entry(e, struct api_key, link);
        if (o != k && o->role == KEY_ROLE_ADMIN && o->ndevices == 0)
            return true;
    }
    return false;
}

static void revoke_key(struct keys *ks, struct http_conn *h, const char *id)
{
    struct api_key *k = map_get(&ks->by_id, id, strlen(id));
    struct ticket t = {0, 0};
    struct buf b;

    if (!k) {
        http_respond_error(h, 404, "not_found", "no such key");
        return;
    }
    if (k->role == KEY_ROLE_ADMIN && k->ndevices == 0 && !other_full_admin(ks, k)) {
        http_respond_error(h, 409, "last_admin",
                           "this is the last admin key for every device: create another "
                           "before revoking it");
        return;
    }
    map_del(&ks->by_id, k->id, strlen(k->id));
    list_remove(&ks->all, &k->link);
    if (ks->on_revoked)
        ks->on_revoked(ks->revoked_ctx, k);
    /* the configured key's row remembers that it is revoked; any other row goes */
    ticket_add(&t, k->bootstrap ? save(ks, k, gw_now_ms()) : store_delete_api_key(ks->store, k->id));
    log_info("api key id=%s name=%s revoked", k->id, k->name);
    buf_init(&b);
    buf_append_str(&b, "{\"id\":");
    buf_append_json_str(&b, k->id, strlen(k->id));
    buf_append_str(&b, ",\"revoked\":true}");
    key_free(k);
    rest_reply_when_durable(h, &t, 200, &b, NULL);
    buf_fini(&b);
}

void keys_handle(struct keys *ks, struct http_conn *h, struct http_req *req)
{
    const char *path = req->path, *m = req->method;

    if (strcmp(path, "/api/keys") == 0) {
        if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
            list_keys(ks, h);
        else if (strcmp(m, "POST") == 0)
            create_key(ks, h, req);
        else
            rest_method_not_allowed(h, "GET, POST");
        return;
    }
    if (strncmp(path, "/api/keys/", 10) == 0 && path[10] && !strchr(path + 10, '/')) {
        if (strcmp(m, "DELETE") == 0)
            revoke_key(ks, h, path + 10);
        else
            rest_method_not_allowed(h, "DELETE");
        return;
    }
    http_respond_error(h, 404, "not_found", "no such resource");
}
