/* web/rest_backup.c: online backups over REST (the API key).
 *
 *   POST /api/backup [{"name":"<file name>"}]
 *     → 200 {"path","name","bytes","pages","seconds","snapshot_ms"} once the snapshot is
 *       complete and synced (storage/backup.c makes it off the loop, while ingest goes on)
 *   GET /api/backup → {"running":bool,"dir":…,"last":{…}|null}
 *
 * Where: storage.backup_dir (default <data_dir>/backups), and nowhere else: a caller
 * names the file, never the directory, so the REST API cannot write outside it. The
 * default name is gale-<UTC time to the millisecond>.db (gale-20261207T031500.123Z.db).
 * One backup at a time (409 backup_running); an existing file is never replaced (409
 * backup_exists). A full disk is 507 disk_full, any other failure 500 backup_failed,
 * each with what failed; the partial file is removed and the gateway goes on. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/err.h"
#include "gateway/conn.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "protocols/http/http.h"
#include "protocols/http/request.h"
#include "storage/store.h"
#include "web/rest_int.h"

#define BACKUP_NAME_MAX 128

/* storage.backup_dir, or <data_dir>/backups. */
static void backup_dir(const struct config *cfg, char *out, size_t len)
{
    if (cfg->storage.backup_dir[0])
        snprintf(out, len, "%s", cfg->storage.backup_dir);
    else
        snprintf(out, len, "%s/backups", cfg->data_dir);
}

/* 1..128 of A-Z a-z 0-9 . _ - and not starting with '.': a plain file name. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > BACKUP_NAME_MAX || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void write_last(struct rest *r, struct buf *b)
{
    const struct metrics *m = &r->gw->metrics;

    if (m->backup_last_ms == 0) {
        buf_append_str(b, "null");
        return;
    }
    buf_append_str(b, "{\"path\":");
    buf_append_json_str(b, r->backup_last_path, strlen(r->backup_last_path));
    buf_printf(b, ",\"bytes\":%llu,\"seconds\":%.3f,\"snapshot_ms\":%lld}",
               (unsigned long long)m->backup_last_bytes, m->backup_last_seconds,
               (long long)m->backup_last_ms);
}

static void on_backup(void *ctx, const struct store_backup_result *res)
{
    struct rest *r = ctx;
    struct metrics *m = &r->gw->metrics;
    struct conn *c = r->backup_conn;
    struct http_conn *h = c ? http_from_conn(c) : NULL;
    struct buf b;

    r->backup_conn = NULL;
    m->backup_running = false;
    buf_init(&b);
    if (res->rc == 0) {
        const char *name = strrchr(res->path, '/');
        m->backups_ok++;
        m->backup_last_ms = res->started_ms;
        m->backup_last_bytes = res->bytes;
        m->backup_last_seconds = res->seconds;
        snprintf(r->backup_last_path, sizeof r->backup_last_path, "%s", res->path);
        log_info("backup done path=%s bytes=%llu pages=%llu seconds=%.3f", res->path,
                 (unsigned long long)res->bytes, (unsigned long long)res->pages,
                 res->seconds);
        buf_append_str(&b, "{\"path\":");
        buf_append_json_str(&b, res->path, strlen(res->path));
        buf_append_str(&b, ",\"name\":");
        buf_append_json_str(&b, name ? name + 1 : res->path,
                            strlen(name ? name + 1 : res->path));
        buf_printf(&b, ",\"bytes\":%llu,\"pages\":%llu,\"seconds\":%.3f,\"snapshot_ms\":%lld}",
                   (unsigned long long)res->bytes, (unsigned long long)res->pages,
                   res->seconds, (long long)res->started_ms);
        if (h)
            rest_reply_json(h, 200, &b);
    } else {
        m->backups_failed++;
        log_warn("backup failed path=%s reason=\"%s\"", res->path, res->error);
        if (h)
            http_respond_error(h, res->exists ? 409 : res->full ? 507 : 500,
                               res->exists ? "backup_exists"
                               : res->full ? "disk_full"
                                           : "backup_failed",
                               res->error);
    }
    buf_fini(&b);
    if (c)
        conn_unref(c);
}

static void backup_start(struct rest *r, struct http_conn *h, struct http_req *req)
{
    struct metrics *m = &r->gw->metrics;
    char dir[CONFIG_STR_MAX + 16], name[BACKUP_NAME_MAX + 1];
    cJSON *root = NULL;

    if (m->backup_running) {
        http_respond_error(h, 409, "backup_running", "a backup is running; try again later");
        return;
    }
    int64_t now_ms = gw_now_ms();
    time_t now = (time_t)(now_ms / 1000);
    struct tm tm;
    char stamp[32];
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    snprintf(name, sizeof name, "gale-%s.%03dZ.db", stamp, (int)(now_ms % 1000));
    if (req->body_len > 0) {
        const cJSON *it, *n;
        root = cJSON_ParseWithLength((const char *)req->body, req->body_len);
        if (!cJSON_IsObject(root)) {
            http_respond_error(h, 400, "bad_json", "the body must be a JSON object");
            goto out;
        }
        cJSON_ArrayForEach(it, root)
        {
            if (strcmp(it->string, "name") != 0) {
                http_respond_error(h, 400, "unknown_field",
                                   "unknown field (allowed: name)");
                goto out;
            }
        }
        n = cJSON_GetObjectItemCaseSensitive(root, "name");
        if (n) {
            if (!cJSON_IsString(n) || !name_ok(n->valuestring)) {
                http_respond_error(h, 400, "invalid_name",
                                   "name: a file name of 1-128 characters of A-Z a-z 0-9 . _ - "
                                   "not starting with '.'");
                goto out;
            }
            snprintf(name, sizeof name, "%s", n->valuestring);
        }
    }
    backup_dir(r->gw->cfg, dir, sizeof dir);
    int rc = store_backup(r->store, dir, name, on_backup, r);
    if (rc != 0) {
        http_respond_error(h, rc == GW_EEXIST ? 409 : 503,
                           rc == GW_EEXIST ? "backup_running" : "storage_error",
                           rc == GW_EEXIST ? "a backup is running; try again later"
                                           : "the backup could not start");
        goto out;
    }
    m->backup_running = true;
    r->backup_conn = http_conn_of(h);
    conn_ref(r->backup_conn);
    log_info("backup started path=%s/%s", dir, name);
out:
    cJSON_Delete(root);
}

void rest_backup(struct rest *r, struct http_conn *h, struct http_req *req)
{
    if (strcmp(req->method, "POST") == 0) {
        backup_start(r, h, req);
    } else if (strcmp(req->method, "GET") == 0) {
        char dir[CONFIG_STR_MAX + 16];
        struct buf b;
        buf_init(&b);
        backup_dir(r->gw->cfg, dir, sizeof dir);
        buf_printf(&b, "{\"running\":%s,\"dir\":",
                   r->gw->metrics.backup_running ? "true" : "false");
        buf_append_json_str(&b, dir, strlen(dir));
        buf_append_str(&b, ",\"last\":");
        write_last(r, &b);
        buf_append_str(&b, "}");
        rest_reply_json(h, 200, &b);
        buf_fini(&b);
    } else {
        rest_method_not_allowed(h, "GET, POST");
    }
}

void rest_backup_fini(struct rest *r)
{
    if (r->backup_conn) { /* the store stopped the backup: nobody will answer */
        conn_unref(r->backup_conn);
        r->backup_conn = NULL;
    }
}
