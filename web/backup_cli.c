/* web/backup_cli.c: `gale --backup DEST`, an online backup of a running gale.
 *
 * With the same configuration as the running instance (config file, environment, --set,
 * --data-dir) it finds that instance's HTTP port (http.port; an http.bind of 0.0.0.0 or
 * :: is reached on loopback) and its API key (http.api_key, else <data_dir>/api_key),
 * asks it for a snapshot (POST /api/backup, which writes it into storage.backup_dir
 * while ingest goes on) and moves the snapshot to DEST: a new file, or a file of the
 * same name inside DEST when DEST is a directory. An existing file is never replaced.
 * It prints the instance's answer with the final path (one JSON object) and exits 0; 1
 * when anything failed (the reason on stderr), 2 on bad usage. Blocking code: it runs
 * instead of the gateway, never inside it. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "config/config.h"
#include "web/backup_cli.h"

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "gale --backup: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* The API key the instance uses: http.api_key or the one it generated. */
static int api_key(const struct config *cfg, char *out, size_t len)
{
    char path[CONFIG_STR_MAX + 16];
    FILE *f;

    if (cfg->http.api_key[0]) {
        snprintf(out, len, "%s", cfg->http.api_key);
        return 0;
    }
    snprintf(path, sizeof path, "%s/api_key", cfg->data_dir);
    if (!(f = fopen(path, "r")))
        return fail("no API key: http.api_key is not set and %s: %s", path, strerror(errno));
    if (!fgets(out, (int)len, f))
        out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    return out[0] ? 0 : fail("no API key in %s", path);
}

/* Connects to the instance's HTTP listener. A socket or -1. */
static int connect_http(const struct config *cfg, char *where, size_t len)
{
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    const char *bind = cfg->http.bind;
    int fd;

    if (strcmp(bind, "0.0.0.0") == 0)
        bind = "127.0.0.1";
    else if (strcmp(bind, "::") == 0)
        bind = "::1";
    if (strchr(bind, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)cfg->http.port);
        inet_pton(AF_INET6, bind, &a->sin6_addr);
        sl = sizeof *a;
        snprintf(where, len, "[%s]:%d", bind, cfg->http.port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)cfg->http.port);
        inet_pton(AF_INET, bind, &a->sin_addr);
        sl = sizeof *a;
        snprintf(where, len, "%s:%d", bind, cfg->http.port);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sl) != 0) {
        fail("no gale answers on %s (%s): is it running with this configuration?", where,
             strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* POST /api/backup; the status and the body (in out). 0 or 1. */
static int request(int fd, const char *where, const char *key, int *status, struct buf *out)
{
    struct buf req;
    char chunk[4096];
    ssize_t n;

    buf_init(&req);
    buf_printf(&req,
               "POST /api/backup HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
               "User-Agent: gale --backup\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
               where, key);
    for (size_t off = 0; off < req.len; off += (size_t)n) {
        n = write(fd, req.data + off, req.len - off);
        if (n <= 0) {
            buf_fini(&req);
            return fail("writing to %s: %s", where, strerror(errno));
        }
    }
    buf_fini(&req);
    while ((n = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(out, chunk, (size_t)n);
    const char *s = buf_cstr(out), *body = strstr(s, "\r\n\r\n");
    if (!body || sscanf(s, "HTTP/1.%*d %d", status) != 1)
        return fail("no HTTP answer from %s", where);
    buf_consume(out, (size_t)(body + 4 - s));
    return 0;
}

/* Copies src to dst (a new file), synced. 0 or an errno. */
static int copy_file(const char *src, const char *dst)
{
    char chunk[1 << 16];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, err = 0;
    ssize_t n;

    if (in < 0)
        return errno;
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        err = errno;
        close(in);
        return err;
    }
    while (!err && (n = read(in, chunk, sizeof chunk)) != 0) {
        if (n < 0) {
            err = errno;
            break;
        }
        for (ssize_t off = 0, w; off < n; off += w)
            if ((w = write(out, chunk + off, (size_t)(n - off))) < 0) {
                err = errno;
                break;
            }
    }
    if (!err && fsync(out) != 0)
        err = errno;
    close(in);
    close(out);
    if (err)
        unlink(dst);
    return err;
}

int backup_cli(const struct config *cfg, const char *dest)
{
    char key[CONFIG_STR_MAX], where[80], dir[CONFIG_STR_MAX + 16], src[2 * CONFIG_STR_MAX];
    char final[2 * CONFIG_STR_MAX];
    struct stat st;
    struct buf body;
    int fd, status = 0, rc = 1;
    bool dest_is_dir = stat(dest, &st) == 0 && S_ISDIR(st.st_mode);

    if (!dest_is_dir && lstat(dest, &st) == 0)
        return fail("%s exists; name a new file or a directory", dest);
    if (cfg->http.port == 0)
        return fail("http.port is 0 (a random port): give the instance's port with "
                    "--set http.port=N");
    if (api_key(cfg, key, sizeof key) != 0 || (fd = connect_http(cfg, where, sizeof where)) < 0)
        return 1;
    buf_init(&body);
    if (request(fd, where, key, &status, &body) != 0)
        goto out;
    cJSON *js = cJSON_ParseWithLength((const char *)body.data, body.len);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
    if (status != 200 || !cJSON_IsString(name)) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(js, "error");
        fail("the backup failed (HTTP %d): %s", status, cJSON_IsString(e) ? e->valuestring : "?");
        cJSON_Delete(js);
        goto out;
    }
    if (cfg->storage.backup_dir[0])
        snprintf(dir, sizeof dir, "%s", cfg->storage.backup_dir);
    else
        snprintf(dir, sizeof dir, "%s/backups", cfg->data_dir);
    snprintf(src, sizeof src, "%s/%s", dir, name->valuestring);
    if (dest_is_dir) {
        size_t dl = strlen(dest);
        while (dl > 1 && dest[dl - 1] == '/')
            dl--;
        snprintf(final, sizeof final, "%.*s/%s", (int)dl, dest, name->valuestring);
    }
    else
        snprintf(final, sizeof final, "%s", dest);
    if (stat(src, &st) != 0) {
        fail("the snapshot is not at %s (%s): run gale --backup from the instance's working "
             "directory, or give it absolute paths", src, strerror(errno));
    } else if (link(src, final) == 0 || (errno == EXDEV && (errno = copy_file(src, final)) == 0)) {
        unlink(src);
        cJSON_ReplaceItemInObjectCaseSensitive(js, "path", cJSON_CreateString(final));
        char *out = cJSON_PrintUnformatted(js);
        printf("%s\n", out);
        free(out);
        rc = 0;
    } else {
        fail("moving the snapshot to %s: %s", final, strerror(errno));
        fprintf(stderr, "gale --backup: the snapshot stays at %s\n", src);
    }
    cJSON_Delete(js);
out:
    close(fd);
    buf_fini(&body);
    return rc;
}
