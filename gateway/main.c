/* gateway/main.c: flags, config, wiring, run, orderly shutdown.
 *
 *   gale [--config FILE] [--set section.key=value]... [--data-dir DIR]
 *        [--log-format text|json] [--log-level LEVEL] [--check-config] [--health]
 *        [--config-reference] [--backup DEST] [--help] [--version]
 *   gale [config options] --issue-token DEVICE [--expires DURATION|never] [--key-id ID]
 *
 * Start-up (may block): load config (defaults < file < env < flags) and check all
 * of it (check_config, which --check-config runs too; every error of every source is
 * reported), bind the listeners (nothing exists on disk yet, so a port in use leaves
 * nothing behind), create and lock the data dir, open its secrets and the database,
 * load devices and latest values into the loop's hot state, give the listeners their
 * protocols' state and log them and the banner. Then the loop runs (and accepts what
 * the listeners queued meanwhile) until SIGINT or SIGTERM; gw_stop lets
 * storage make everything received durable, and main closes the store (draining
 * the writer) and every handle before exiting 0.
 * Exit codes: 0 clean stop, 1 runtime failure (bind, database), 2 bad config or a
 * data dir another gale holds; a code 2 exit never opens the database.
 * --health probes the gale this configuration describes (gateway/health.h) and exits
 * 0 when it is healthy, 1 when not. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/bridge/bridge.h"
#include "gateway/bus.h"
#include "gateway/devices.h"
#include "gateway/fleet.h"
#include "gateway/guard.h"
#include "gateway/health.h"
#include "gateway/gw.h"
#include "gateway/log.h"
#include "gateway/tls.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/err.h"
#include "protocols/http/http.h"
#include "protocols/line/line_proto.h"
#include "protocols/mqtt/acl.h"
#include "protocols/mqtt/broker.h"
#include "storage/store.h"
#include "web/backup_cli.h"
#include "web/commands.h"
#include "web/feed.h"
#include "web/keys.h"
#include "web/ops.h"
#include "web/rest.h"
#include "web/ws_routes.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: gale [options]\n"
            "Gale is an IoT device gateway: devices send telemetry over MQTT, a line protocol\n"
            "(JSON lines over TCP), WebSocket or HTTP; Gale stores it in SQLite and serves it\n"
            "over REST, a live feed and a dashboard.\n"
            "\n"
            "options:\n"
            "  --config FILE          read a JSON config file (see config/gateway.json)\n"
            "  --set section.key=val  set one key (repeatable); beats environment and file\n"
            "  --data-dir DIR         where the database and the API key live (default ./data)\n"
            "  --log-format text|json log line format (log.format)\n"
            "  --log-level LEVEL      debug, info, warn or error (log.level)\n"
            "  --check-config         check the configuration, print it as JSON, and exit\n"
            "  --config-reference     every configuration key: type, default, environment\n"
            "                         variable and meaning (a Markdown table)\n"
            "  --issue-token DEVICE   print a fleet token for DEVICE (auth.fleet_keys) and exit\n"
            "  --expires DURATION     its lifetime: N followed by s, m, h or d, or never\n"
            "                         (default 365d)\n"
            "  --key-id ID            the fleet key that signs it (default: the first)\n"
            "  --backup DEST          ask the gale running with this configuration for an\n"
            "                         online backup and move it to DEST (a new file or a dir)\n"
            "  --health               ask the gale this configuration describes for\n"
            "                         GET /api/health; exit 0 if healthy, 1 if not\n"
            "  --version              print the version and exit\n"
            "  --help                 this text\n"
            "\n"
            "Every key can also come from the environment as GALE_<SECTION>_<KEY>, e.g.\n"
            "GALE_HTTP_PORT=8080 for http.port. Precedence: --set > environment > file > default.\n"
            "Often set: http.port (8080), line.port (7000), mqtt.port (1883), *.bind (0.0.0.0),\n"
            "http.api_key (generated into the data dir when empty), storage.sync (full|normal),\n"
            "storage.retention_days, tls.cert_file and tls.key_file (the TLS listeners).\n"
            "\n"
            "Exit codes: 0 clean stop, 1 runtime failure (a port in use, the database),\n"
            "2 bad configuration (every error is listed) or a data directory in use.\n"
            "More: README.md (quick start), docs/operations.md, docs/configuration.md; once\n"
            "running, the dashboard at http://localhost:8080/ and the REST API at /api/docs.\n");
}

static const char *backup_dest; /* --backup DEST: run backup_cli instead of the gateway */
static bool health_only;        /* --health: run health_probe instead of the gateway */

/* Prints each error line (err holds one per line) and returns the exit code 2. */
static int bad_config(const char *err, int n)
{
    const char *p = err;

    while (*p) {
        size_t len = strcspn(p, "\n");
        fprintf(stderr, "gale: %.*s\n", (int)len, p);
        p += len + (p[len] == '\n');
    }
    if (n > 1)
        fprintf(stderr, "gale: %d errors in the configuration\n", n);
    return 2;
}

/* Appends the lines of err, each followed by from, to the errors so far. */
static void add_errors(struct buf *errs, int *n, const char *err, const char *from)
{
    const char *p = err;

    while (*p) {
        size_t len = strcspn(p, "\n");
        buf_printf(errs, "%.*s%s\n", (int)len, p, from);
        (*n)++;
        p += len + (p[len] == '\n');
    }
}

/* What a start would otherwise reject only once storage is open: the MQTT ACL rules
 * (parsed again by the broker), the bridge's upstreams (parsed again at start) and the
 * bind address of every enabled listener. Every error goes to errs. */
static void check_config(const struct config *cfg, struct buf *errs, int *n)
{
    const struct {
        const char *key;
        bool on;
        const char *bind;
    } binds[] = {
        {"http.bind", true, cfg->http.bind},
        {"line.bind", cfg->line.enabled, cfg->line.bind},
        {"mqtt.bind", cfg->mqtt.enabled, cfg->mqtt.bind},
    };
    struct sockaddr_storage ss;
    char why[400], err[8192];
    struct acl *acl;

    if (config_validate(cfg, err, sizeof err) != 0)
        add_errors(errs, n, err, "");
    for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++) {
        if (binds[i].on && gw_parse_addr(binds[i].bind, 0, &ss) != 0) {
            snprintf(err, sizeof err,
                     "config: %s: must be an IPv4 or IPv6 address (got \"%s\")", binds[i].key,
                     binds[i].bind);
            add_errors(errs, n, err, "");
        }
    }
    if ((acl = acl_new(cfg->mqtt.acl_json, why, sizeof why)) == NULL) {
        snprintf(err, sizeof err, "config: %s", why);
        add_errors(errs, n, err, "");
    }
    acl_free(acl);
    if (cfg->tls.cert_file[0] && tls_server_check(cfg, err, sizeof err) != 0)
        add_errors(errs, n, err, "");
    {
        struct proxy_trust t;
        struct fleet *f;
        if (fleet_new(cfg->auth.fleet_keys_json, &f, why, sizeof why) == 0) {
            fleet_free(f);
        } else {
            snprintf(err, sizeof err, "config: %s", why);
            add_errors(errs, n, err, "");
        }
        if (proxy_trust_parse(cfg->limits.proxy_trusted_json, &t, why, sizeof why) != 0) {
            snprintf(err, sizeof err, "config: %s", why);
            add_errors(errs, n, err, "");
        } else if (t.n == 0 && (cfg->http.proxy_protocol ||
                                (cfg->line.enabled && cfg->line.proxy_protocol) ||
                                (cfg->mqtt.enabled && cfg->mqtt.proxy_protocol))) {
            snprintf(err, sizeof err,
                     "config: %s.proxy_protocol is on but limits.proxy_trusted is empty: every "
                     "connection to it would be refused (name the load balancer's address)",
                     cfg->http.proxy_protocol   ? "http"
                     : cfg->mqtt.proxy_protocol ? "mqtt"
                                                : "line");
            add_errors(errs, n, err, "");
        }
        proxy_trust_fini(&t);
    }
    {
        struct bridge_cfg bc;
        if (bridge_cfg_parse(cfg->bridge.upstreams_json, &bc, err, sizeof err) != 0)
            add_errors(errs, n, err, "");
        else
            bridge_cfg_fini(&bc);
    }
}

static const char *backup_dest; /* --backup DEST: run backup_cli instead of the gateway */

/* gale --issue-token: what to issue (load_config fills it). */
static struct {
    const char *device;
    const char *expires;  /* "365d", "never", ... */
    const char *key_id;   /* NULL: the first key */
} issue = {NULL, "365d", NULL};

/* Prints a fleet token for issue.device, signed with the configured fleet keys, and
 * returns the exit code: 0, or 2 for a bad device id, duration, key id or no fleet key. */
static int issue_token(const struct config *cfg)
{
    struct fleet *f = NULL;
    char err[600], tok[FLEET_TOKEN_MAX + 1], unit = 's';
    long long n = 0, exp = 0;
    int len;

    if (fleet_new(cfg->auth.fleet_keys_json, &f, err, sizeof err) != 0)
        return bad_config(err, 1);
    if (!f)
        return bad_config("--issue-token needs auth.fleet_keys (the fleet key that signs)", 1);
    if (!devices_valid_id(issue.device, strlen(issue.device))) {
        fleet_free(f);
        return bad_config("--issue-token: a device id is 1..64 characters of [A-Za-z0-9_.:-]",
                          1);
    }
    if (strcmp(issue.expires, "never") != 0) {
        const char *e = issue.expires;
        size_t digits = strspn(e, "0123456789");
        if (digits == 0 || digits > 6 || !e[digits] || e[digits + 1] ||
            !strchr("smhd", e[digits])) {
            fleet_free(f);
            return bad_config("--expires: N followed by s, m, h or d (e.g. 365d), or never", 1);
        }
        n = atoll(e);
        unit = e[digits];
        exp = (long long)time(NULL) +
              n * (unit == 'd' ? 86400 : unit == 'h' ? 3600 : unit == 'm' ? 60 : 1);
    }
    len = fleet_issue(f, issue.device, exp, issue.key_id, tok, sizeof tok);
    fleet_free(f);
    if (len < 0)
        return bad_config("--key-id: no such key in auth.fleet_keys", 1);
    printf("%s\n", tok);
    return 0;
}

/* Parses flags into cfg, collecting every error of every source (file, environment,
 * flags) before it reports them; returns -1 to exit with *code. */
static int load_config(int argc, char **argv, struct config *cfg, bool *check_only, int *code)
{
    char err[8192], set[CONFIG_STR_MAX + 32];
    const char *file = NULL;
    const struct {
        const char *flag, *key;
    } shorthands[] = {
        {"--data-dir", "gateway.data_dir"},
        {"--log-format", "log.format"},
        {"--log-level", "log.level"},
    };
    struct buf errs;
    int i, n = 0;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc, known = false;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            *code = 0;
            return -1;
        } else if (strcmp(a, "--config-reference") == 0) { /* the README's table */
            config_print_reference_markdown(stdout);
            *code = 0;
            return -1;
        } else if (strcmp(a, "--version") == 0) {
            printf("gale %s\n", GALE_VERSION);
            *code = 0;
            return -1;
        } else if (strcmp(a, "--check-config") == 0) {
            *check_only = true;
            continue;
        } else if (strcmp(a, "--health") == 0) {
            health_only = true;
            continue;
        } else if (strcmp(a, "--backup") == 0 && has_next) {
            backup_dest = argv[++i];
            continue;
        } else if (strcmp(a, "--config") == 0 && has_next) {
            file = argv[++i];
            continue;
        } else if (strcmp(a, "--set") == 0 && has_next) {
            i++; /* applied below, after file and env */
            continue;
        } else if (strcmp(a, "--issue-token") == 0 && has_next) {
            issue.device = argv[++i];
            continue;
        } else if (strcmp(a, "--expires") == 0 && has_next) {
            issue.expires = argv[++i];
            continue;
        } else if (strcmp(a, "--key-id") == 0 && has_next) {
            issue.key_id = argv[++i];
            continue;
        } else if (strcmp(a, "--backup") == 0 && has_next) {
            backup_dest = argv[++i];
            continue;
        }
        for (size_t s = 0; s < sizeof shorthands / sizeof shorthands[0]; s++)
            if (strcmp(a, shorthands[s].flag) == 0 && has_next) {
                i++;
                known = true;
            }
        if (!known) {
            fprintf(stderr, "gale: unknown or incomplete option \"%s\" (see --help)\n", a);
            *code = 2;
            return -1;
        }
    }
    buf_init(&errs);
    config_defaults(cfg);
    if (file && config_apply_file(cfg, file, err, sizeof err) != 0)
        add_errors(&errs, &n, err, "");
    if (config_apply_env(cfg, environ, err, sizeof err) != 0)
        add_errors(&errs, &n, err, "");
    /* --set and its shorthands in the order given: the last one of a key wins */
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--config") == 0 || strcmp(a, "--issue-token") == 0 ||
             strcmp(a, "--expires") == 0 || strcmp(a, "--key-id") == 0 ||
             strcmp(a, "--backup") == 0) &&
            i + 1 < argc) {
            i++;
        } else if (strcmp(a, "--set") == 0 && i + 1 < argc) {
            if (config_apply_set(cfg, argv[++i], err, sizeof err) != 0)
                add_errors(&errs, &n, err, " (from --set)");
        } else {
            for (size_t s = 0; s < sizeof shorthands / sizeof shorthands[0]; s++) {
                if (strcmp(a, shorthands[s].flag) != 0 || i + 1 >= argc)
                    continue;
                snprintf(set, sizeof set, "%s=%s", shorthands[s].key, argv[++i]);
                if (config_apply_set(cfg, set, err, sizeof err) != 0) {
                    char from[48];
                    snprintf(from, sizeof from, " (from %s)", shorthands[s].flag);
                    add_errors(&errs, &n, err, from);
                }
                break;
            }
        }
    }
    if (n == 0) /* cross-key checks of a configuration that holds what was asked for */
        check_config(cfg, &errs, &n);
    if (n > 0) {
        *code = bad_config(buf_cstr(&errs), n);
        buf_fini(&errs);
        return -1;
    }
    buf_fini(&errs);
    return 0;
}

/* File descriptors a connection may not take: stdio, the loop's own (epoll, signal pipe,
 * async wake-ups), up to 8 listeners, the data-dir lock, the SQLite writer's and readers'
 * database, WAL and shm files (4 pooled readers and the ones in flight), and files opened
 * now and then (token key, config, REST assets). */
#define FD_RESERVE 128

/* gale --health's deadline: below the image's HEALTHCHECK --timeout (3 s) */
#define HEALTH_TIMEOUT_MS 2000

/* Raises the soft open-file limit to the hard one (as nginx's worker_rlimit_nofile does)
 * and, when limits.max_connections is 0 (auto), sets it to what that limit allows. */
static void apply_fd_limit(struct config *cfg)
{
    struct rlimit rl;
    rlim_t soft;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        log_warn("getrlimit RLIMIT_NOFILE failed: %s", strerror(errno));
        rl.rlim_cur = rl.rlim_max = 1024;
    }
    soft = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
            log_info("open file limit raised from %llu to %llu", (unsigned long long)soft,
                     (unsigned long long)rl.rlim_max);
            soft = rl.rlim_max;
        } else {
            log_warn("open file limit stays at %llu (hard %llu): %s", (unsigned long long)soft,
                     (unsigned long long)rl.rlim_max, strerror(errno));
        }
    }
    if (cfg->limits.max_connections == 0) {
        rlim_t n = soft > FD_RESERVE + 1 ? soft - FD_RESERVE : 1;
        cfg->limits.max_connections = n > 10000000 ? 10000000 : (int)n;
        log_info("limits max_connections=%d (auto: open file limit %llu minus %d reserved)",
                 cfg->limits.max_connections, (unsigned long long)soft, FD_RESERVE);
    } else {
        log_info("limits max_connections=%d (open file limit %llu)",
                 cfg->limits.max_connections, (unsigned long long)soft);
    }
}

/* Takes an exclusive lock on <dir>/gale.lock, held by the returned fd for the process
 * lifetime: the kernel drops it when the process ends, kill -9 included, so a stale file
 * never blocks a restart. The file holds the holder's pid for the next one's message.
 * Returns the fd, or -1 (logged) with *busy set when another process holds the lock.
 * Without create, a missing file (or directory) is no error and nothing is created: the
 * check before the listeners bind, whose lock main drops again. */
static int lock_data_dir(const char *dir, bool create, bool *busy)
{
    char path[CONFIG_STR_MAX + 16], pid[32] = "";
    int fd, n;

    *busy = false;
    snprintf(path, sizeof path, "%s/gale.lock", dir);
    fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0 && !create && errno == ENOENT)
        return -1; /* the check before binding: no lock file, nobody holds the dir */
    if (fd < 0) {
        log_error("cannot open lock file %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        *busy = errno == EWOULDBLOCK;
        if (*busy && (n = (int)pread(fd, pid, sizeof pid - 1, 0)) > 0)
            pid[n] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (*busy)
            log_error("data dir %s is in use by another gale (pid %s, lock file %s); stop it "
                      "or choose another --data-dir",
                      dir, pid[0] ? pid : "unknown", path);
        else
            log_error("cannot lock %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("cannot write pid to lock file %s: %s", path, strerror(errno));
    return fd;
}

/* The data dir must be writable by this process: a directory owned by another user (a
 * bind mount owned by root, a container run with another --user) or a read-only mount
 * gets a message that names both users and the fix, not just "Permission denied". */
static int check_data_dir(const char *dir)
{
    struct stat st;
    int e;

    if (access(dir, W_OK | X_OK) == 0)
        return 0;
    e = errno;
    if (e == EROFS)
        log_error("data dir %s is on a read-only file system: mount a writable volume or "
                  "directory there (or choose another --data-dir)", dir);
    else if (e == EACCES && stat(dir, &st) == 0)
        log_error("data dir %s is not writable by uid %d gid %d (it belongs to uid %d gid %d, "
                  "mode %04o): give uid %d write access to it (e.g. chown -R %d:%d on it, or "
                  "on the host directory mounted there) or run gale as uid %d",
                  dir, (int)getuid(), (int)getgid(), (int)st.st_uid, (int)st.st_gid,
                  (unsigned)(st.st_mode & 07777), (int)getuid(), (int)getuid(),
                  (int)getgid(), (int)st.st_uid);
    else
        log_error("data dir %s: %s", dir, strerror(e));
    return -1;
}

/* <data_dir>/listeners for gale --health and scripts: every bound listener, random
 * ports included. */
static void record_listeners(const struct gw *gw, const char *data_dir)
{
    struct health_listener ls[sizeof gw->listeners / sizeof gw->listeners[0]];
    int rc;

    for (int i = 0; i < gw->nlisteners; i++)
        ls[i] = (struct health_listener){gw->listeners[i].conn.name, gw->listeners[i].bind,
                                         gw->listeners[i].port};
    if ((rc = health_record(data_dir, ls, (size_t)gw->nlisteners)) != 0)
        log_warn("cannot write %s/listeners: %s", data_dir, strerror(-rc));
}

/* Reads a secret file, or creates it with n random bytes (hex when text). */
static int load_secret(const char *path, unsigned char *out, size_t n, bool *created)
{
    FILE *f = fopen(path, "rb");
    *created = false;
    if (f) {
        size_t got = fread(out, 1, n, f);
        fclose(f);
        if (got == n)
            return 0;
        log_error("secret file %s is truncated (want %zu bytes)", path, n);
        return -1;
    }
    if (errno != ENOENT || RAND_bytes(out, (int)n) != 1) {
        log_error("cannot read secret file %s: %s", path, strerror(errno));
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, out, n) != (ssize_t)n || fsync(fd) != 0) {
        log_error("cannot write secret file %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    *created = true;
    return 0;
}

/* Replaces the file at path with text and a newline, mode 0600 from its creation on. */
static void write_private(const char *path, const char *text)
{
    char tmp[CONFIG_STR_MAX + 48];
    size_t n = strlen(text);
    bool ok;
    int fd;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp); /* left by a crash: O_EXCL makes the new one ours, with our mode */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_warn("cannot write %s: %s", tmp, strerror(errno));
        return;
    }
    ok = write(fd, text, n) == (ssize_t)n && write(fd, "\n", 1) == 1;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        log_warn("cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

static int load_api_key(struct gw *gw, const struct config *cfg)
{
    char path[CONFIG_STR_MAX + 32];
    unsigned char raw[24];
    bool created;
    static const char hex[] = "0123456789abcdef";

    if (cfg->http.api_key[0]) {
        snprintf(gw->api_key, sizeof gw->api_key, "%s", cfg->http.api_key);
        return 0;
    }
    snprintf(path, sizeof path, "%s/api_key.bin", cfg->data_dir);
    if (load_secret(path, raw, sizeof raw, &created) != 0)
        return -1;
    memcpy(gw->api_key, "gk_", 3);
    for (size_t i = 0; i < sizeof raw; i++) {
        gw->api_key[3 + 2 * i] = hex[raw[i] >> 4];
        gw->api_key[4 + 2 * i] = hex[raw[i] & 15];
    }
    gw->api_key[3 + 2 * sizeof raw] = '\0';
    /* a readable copy for the operator: created 0600 under a temporary name and renamed
     * over the old one, so no moment shows it to the group or others */
    snprintf(path, sizeof path, "%s/api_key", cfg->data_dir);
    write_private(path, gw->api_key);
    log_info("api key %s path=%s (set http.api_key or GALE_HTTP_API_KEY to choose one)",
             created ? "generated" : "loaded", path);
    return 0;
}

/* ---- the device registry's port (gateway/devices.h) over storage ---- */

static struct store_device store_record(const struct device *d)
{
    return (struct store_device){d->id, d->token_hash, devices_role_name(d->role), d->record_json,
                                 d->created_ms, d->last_seen_ms,
                                 d->protocol[0] ? d->protocol : NULL};
}

static uint64_t devices_put_stored(void *ctx, const struct device *d)
{
    struct store_device sd = store_record(d);
    return store_put_device(ctx, &sd);
}

static uint64_t devices_touch_stored(void *ctx, const struct device *d)
{
    return store_touch_device(ctx, d->id, d->last_seen_ms, d->protocol[0] ? d->protocol : NULL);
}

static uint64_t devices_remove_stored(void *ctx, const char *id)
{
    return store_delete_device(ctx, id);
}

static uint64_t devices_forget_stored(void *ctx, const char *id)
{
    return store_forget_device(ctx, id);
}

static void on_device_loaded(void *ctx, const struct store_device *d)
{
    struct gw *gw = ctx;
    enum device_role role = DEVICE_ROLE_DEVICE; /* the default, as in the schema */
    struct device *dev;

    devices_role_parse(d->role, &role);
    dev = devices_add(gw->devices, d->id, d->token_hash, role, d->created_ms);
    dev->last_seen_ms = d->last_seen_ms;
    if (d->protocol)
        snprintf(dev->protocol, sizeof dev->protocol, "%s", d->protocol);
    devices_load_record(dev, d->attrs_json);
}

static void on_latest_loaded(void *ctx, const char *device, const struct point *p)
{
    struct gw *gw = ctx;
    struct device *dev = devices_find(gw->devices, device);
    if (dev)
        devices_set_latest(dev, p);
}

/* The parts main wires together; gw->hook_ctx points here. */
struct parts {
    struct mqtt_broker *broker;
    struct commands *commands;
    struct rest *rest;
    struct feed *feed;
    struct ws_routes *ws_routes;
    struct ops *ops;
    struct bridge *bridge;           /* NULL: no upstream configured */
};

/* Presence changes fan out to every part that reports them. */
static void on_presence(struct gw *gw, const char *device, bool online)
{
    struct parts *p = gw->hook_ctx;
    mqtt_broker_presence(p->broker, device, online);
    feed_presence(p->feed, device, online);
}

/* A revoked API key's live-feed viewers close at once. */
static void on_key_revoked(void *ctx, const struct api_key *k)
{
    struct parts *p = ctx;
    feed_key_revoked(p->feed, k->id);
}

/* A deleted device leaves no presence behind. */
static void on_device_deleted(void *ctx, const char *device, struct ticket *t)
{
    mqtt_broker_forget_device(ctx, device, t);
}

static void on_command_reply(struct gw *gw, const char *device, const char *cmd_id,
                             const void *payload, size_t len)
{
    struct parts *p = gw->hook_ctx;
    commands_reply(p->commands, device, cmd_id, payload, len);
}

/* ---- the bridge's hooks: commands from upstreams, their status going back ---- */

static int bridge_command(void *ctx, const char *device, const char *id, const char *name,
                          const char *params_json, int64_t timeout_ms)
{
    struct gw *gw = ctx;
    struct parts *p = gw->hook_ctx;
    struct device *dev = devices_find(gw->devices, device);
    char id_out[33];

    if (!dev)
        return GW_ENOENT;
    return commands_create(p->commands, dev, id, name, params_json, timeout_ms, NULL, id_out);
}

static void on_command_status(void *ctx, const char *device, const char *cmd_id,
                              const char *status, const char *reply_json)
{
    struct parts *p = ctx;
    bridge_command_status(p->bridge, device, cmd_id, status, reply_json);
}

/* ---- the bridge's outbox port (gateway/bridge/outbox.h) over storage ---- */

static struct store_outbox_msg store_outbox(const struct outbox_msg *m)
{
    return (struct store_outbox_msg){m->id, m->device, m->topic, m->payload, m->payload_len,
                                     m->qos, m->ts_ms};
}

static struct outbox_msg bridge_outbox(const struct store_outbox_msg *m)
{
    return (struct outbox_msg){m->id, m->device, m->topic, m->payload, m->payload_len, m->qos,
                               m->ts_ms};
}

static uint64_t outbox_put(void *ctx, const char *upstream, const struct outbox_msg *m)
{
    struct store_outbox_msg sm = store_outbox(m);
    return store_put_outbox(ctx, upstream, &sm);
}

static uint64_t outbox_del(void *ctx, const char *upstream, uint64_t first_id, uint64_t last_id)
{
    return store_delete_outbox(ctx, upstream, first_id, last_id);
}

/* The bridge's callback and its context, carried through storage's. */
struct outbox_call {
    union {
        outbox_index_fn index;
        outbox_read_fn read;
    } fn;
    void *ctx;
};

static void on_outbox_index(void *ctx, const struct store_outbox_msg *m)
{
    struct outbox_call *c = ctx;
    struct outbox_msg om = bridge_outbox(m);
    c->fn.index(c->ctx, &om);
}

static int outbox_load_index(void *ctx, const char *upstream, outbox_index_fn fn, void *fctx)
{
    struct outbox_call c = {.fn.index = fn, .ctx = fctx};
    return store_load_outbox_index(ctx, upstream, on_outbox_index, &c);
}

static void on_outbox_read(void *ctx, int rc, const struct store_outbox_msg *msgs, size_t n)
{
    struct outbox_call *c = ctx;
    struct outbox_msg *om = xcalloc(n + 1, sizeof *om);
    for (size_t i = 0; i < n; i++)
        om[i] = bridge_outbox(&msgs[i]);
    c->fn.read(c->ctx, rc, om, n);
    free(om);
    free(c);
}

static int outbox_read(void *ctx, const char *upstream, uint64_t after_id, size_t max_msgs,
                       size_t max_bytes, outbox_read_fn fn, void *fctx)
{
    struct outbox_call *c = xcalloc(1, sizeof *c);
    int rc;
    c->fn.read = fn;
    c->ctx = fctx;
    rc = store_read_outbox(ctx, upstream, after_id, max_msgs, max_bytes, on_outbox_read, c);
    if (rc != 0)
        free(c);
    return rc;
}

/* The loop's storage port (struct gw_storage) over the store. */
static bool storage_pending(void *ctx)
{
    return store_pending(ctx);
}

static size_t storage_queued(void *ctx)
{
    return store_queued(ctx);
}

static void storage_stats(void *ctx, struct gw_storage_stats *out)
{
    struct store_stats st;

    store_get_stats(ctx, &st);
    *out = (struct gw_storage_stats){
        .hot_points = st.hot_points, .hot_bytes = st.hot_bytes,
        .log_points = st.log_points > 0 ? (uint64_t)st.log_points : 0, .slices = st.slices,
        .points_chunked = st.points_chunked, .chunks_written = st.chunks_written,
        .slice_seconds_total = (double)st.slice_us_total / 1e6,
        .slice_seconds_max = (double)st.slice_us_max / 1e6,
        .commit_latency = st.commit_latency,
        .wal_bytes = st.wal.bytes, .wal_checkpoints = st.wal.checkpoints,
        .wal_frames_copied = st.wal.frames_copied, .wal_checkpoint_busy = st.wal.busy,
    };
}

static void storage_flush(void *ctx)
{
    store_flush(ctx);
}

/* ---- the MQTT broker's persistence port, over storage ---- */

static uint64_t mqtt_put_retained(void *ctx, const char *topic, const void *payload, size_t len,
                                  uint8_t qos)
{
    return store_put_retained(ctx, topic, payload, len, qos);
}

static uint64_t mqtt_put_session(void *ctx, const char *client_id, const char *record)
{
    return store_put_session(ctx, client_id, record);
}

static uint64_t mqtt_delete_session(void *ctx, const char *client_id)
{
    return store_delete_session(ctx, client_id);
}

static uint64_t mqtt_put_session_sub(void *ctx, const char *client_id, const char *filter,
                                     uint64_t qos)
{
    return store_put_session_sub(ctx, client_id, filter, qos);
}

static uint64_t mqtt_delete_session_sub(void *ctx, const char *client_id, const char *filter)
{
    return store_delete_session_sub(ctx, client_id, filter);
}

static uint64_t mqtt_put_session_msg(void *ctx, const char *client_id, uint64_t msg_id,
                                     const char *topic, const void *payload, size_t len,
                                     uint8_t qos, uint8_t flags)
{
    return store_put_session_msg(ctx, client_id, msg_id, topic, payload, len, qos, flags);
}

static uint64_t mqtt_delete_session_msg(void *ctx, const char *client_id, uint64_t msg_id)
{
    return store_delete_session_msg(ctx, client_id, msg_id);
}

static int mqtt_load_retained(void *ctx, mqtt_store_retained_fn fn, void *fn_ctx)
{
    return store_load_retained(ctx, fn, fn_ctx);
}

static int mqtt_load_sessions(void *ctx, mqtt_store_session_fn on_session,
                              mqtt_store_session_sub_fn on_sub, mqtt_store_session_msg_fn on_msg,
                              void *fn_ctx)
{
    return store_load_sessions(ctx, on_session, on_sub, on_msg, fn_ctx);
}

static struct mqtt_store mqtt_store_port(struct store *s)
{
    return (struct mqtt_store){.ctx = s,
                               .put_retained = mqtt_put_retained,
                               .put_session = mqtt_put_session,
                               .delete_session = mqtt_delete_session,
                               .put_session_sub = mqtt_put_session_sub,
                               .delete_session_sub = mqtt_delete_session_sub,
                               .put_session_msg = mqtt_put_session_msg,
                               .delete_session_msg = mqtt_delete_session_msg,
                               .load_retained = mqtt_load_retained,
                               .load_sessions = mqtt_load_sessions};
}

/* ---- test seam: storage failures on demand ----
 * With GALE_TEST_FAIL_COMMITS=n in the environment, each SIGUSR2 makes storage's next n
 * commit attempts fail (store_fail_next_commits), so integration tests can check what is
 * acknowledged when a commit fails: n equal to the writer's tries fails a batch, fewer
 * only delay it. GALE_TEST_FAIL_LOGGED_COMMITS=n does the same for the commits of batches
 * the ack log has acked (the writer retries those until they commit), so a test can kill
 * the process while acked writes are only in the log. Off unless a variable is set. */
static uv_signal_t fault_signal;
static int fault_commits, fault_logged;

static void on_fault_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    if (fault_commits > 0) {
        store_fail_next_commits(h->data, fault_commits, 0);
        log_warn("test seam: the next %d storage commit attempts fail", fault_commits);
    }
    if (fault_logged > 0) {
        store_fail_next_logged_commits(h->data, fault_logged, 0);
        log_warn("test seam: the next %d commit attempts of acked batches fail", fault_logged);
    }
}

static void fault_seam_init(uv_loop_t *loop, struct store *store)
{
    const char *v = getenv("GALE_TEST_FAIL_COMMITS");
    const char *w = getenv("GALE_TEST_FAIL_LOGGED_COMMITS");
    fault_commits = v ? atoi(v) : 0;
    fault_logged = w ? atoi(w) : 0;
    if (fault_commits <= 0 && fault_logged <= 0)
        return;
    uv_signal_init(loop, &fault_signal);
    fault_signal.data = store;
    uv_signal_start(&fault_signal, on_fault_signal, SIGUSR2);
    uv_unref((uv_handle_t *)&fault_signal);
}

/* ---- test seam: failing socket writes ----
 * GALE_TEST_FAIL_WRITES=N makes every connection's Nth socket write fail as a reset
 * peer's does (EPIPE or ECONNRESET); =p=P[,seed=S] makes each write fail with probability
 * P. Tests use it to close connections inside any write of any protocol step. Off unless
 * the variable is set; a malformed value is an error at start. */
static int write_fault_seam_init(struct gw *gw)
{
    const char *v = getenv("GALE_TEST_FAIL_WRITES");
    uint32_t nth;
    double p;
    uint64_t seed;

    if (!v || !v[0])
        return 0;
    if (conn_fail_writes_parse(v, &nth, &p, &seed) != 0) {
        log_error("GALE_TEST_FAIL_WRITES=%s: expected N (the Nth write of each connection "
                  "fails) or p=P[,seed=S] (each write fails with probability P)", v);
        return -1;
    }
    conn_registry_fail_writes(gw->conns, nth, p, seed);
    log_warn("test seam: socket writes fail (GALE_TEST_FAIL_WRITES=%s)", v);
    return 0;
}

/* ---- test seam: a slow start ----
 * Start-up loads storage before the loop runs, so no request can see it loading. With
 * GALE_TEST_READY_DELAY_MS=n, readiness comes n ms after the listeners are up, so tests
 * see /api/ready answer 503 meanwhile. Off unless the variable is set. */
static uv_timer_t ready_timer;

static void on_ready_delay(uv_timer_t *t)
{
    ((struct gw *)t->data)->ready = true;
    log_info("test seam: ready");
}

static bool ready_seam(uv_loop_t *loop, struct gw *gw)
{
    const char *v = getenv("GALE_TEST_READY_DELAY_MS");
    if (!v || atoi(v) <= 0)
        return false;
    uv_timer_init(loop, &ready_timer);
    ready_timer.data = gw;
    uv_timer_start(&ready_timer, on_ready_delay, (uint64_t)atoi(v), 0);
    uv_unref((uv_handle_t *)&ready_timer);
    return true;
}

/* A TLS listener's port as gw_listen takes it: -1 (pick a free one) is its 0. */
static int tls_port(int port)
{
    return port < 0 ? 0 : port;
}

/* Binds every enabled listener (gw_listen); their protocols' server state is set once
 * it exists (gw_listener_set_ctx). Returns 0 or the first error (logged). */
static int bind_listeners(struct gw *gw, const struct config *cfg, struct tls_server *tls)
{
    bool t = tls != NULL;
    /* PROXY protocol versions per listener section (config words in mask order) */
    unsigned hp = (unsigned)cfg->http.proxy_protocol, lp = (unsigned)cfg->line.proxy_protocol,
             mp = (unsigned)cfg->mqtt.proxy_protocol;
    const struct {
        bool on;
        struct gw_listen_cfg l;
    } ls[] = {
        {true, {"http", cfg->http.bind, cfg->http.port, &http_proto, NULL, NULL, NULL, hp}},
        {cfg->line.enabled,
         {"line", cfg->line.bind, cfg->line.port, &line_proto, NULL, NULL, NULL, lp}},
        {cfg->mqtt.enabled,
         {"mqtt", cfg->mqtt.bind, cfg->mqtt.port, &mqtt_proto, NULL, NULL, NULL, mp}},
        {t && cfg->http.tls_port,
         {"https", cfg->http.bind, tls_port(cfg->http.tls_port), &http_proto, NULL, tls,
          "http/1.1", hp}},
        {t && cfg->line.enabled && cfg->line.tls_port,
         {"lines", cfg->line.bind, tls_port(cfg->line.tls_port), &line_proto, NULL, tls, NULL,
          lp}},
        {t && cfg->mqtt.enabled && cfg->mqtt.tls_port,
         {"mqtts", cfg->mqtt.bind, tls_port(cfg->mqtt.tls_port), &mqtt_proto, NULL, tls,
          "mqtt", mp}},
    };
    int rc;

    for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++)
        if (ls[i].on && (rc = gw_listen(gw, &ls[i].l)) != 0)
            return rc;
    return 0;
}

/* The host a local client reaches a listener bound to bind at: localhost for the
 * wildcard addresses, else the address itself (IPv6 in brackets). */
static void client_host(const char *bind, char *out, size_t outlen)
{
    if (strcmp(bind, "0.0.0.0") == 0 || strcmp(bind, "::") == 0)
        snprintf(out, outlen, "localhost");
    else if (strchr(bind, ':'))
        snprintf(out, outlen, "[%s]", bind);
    else
        snprintf(out, outlen, "%s", bind);
}

/* The start-up banner, after the listeners are up: where the dashboard is, where the API
 * key is, and one example per protocol with the ports actually bound (a port of 0 picks
 * one). The key itself is never logged. The examples hold no '=' (so that in JSON logs
 * they stay one "msg"); dev-1 and $TOKEN are those of the README's quick start. */
static void log_banner(const struct gw *gw, const struct config *cfg)
{
    char host[80], key[CONFIG_STR_MAX + 48];
    int http = gw_listener_port(gw, "http"), line = gw_listener_port(gw, "line");
    int mqtt = gw_listener_port(gw, "mqtt");

    if (cfg->http.api_key[0])
        snprintf(key, sizeof key, "api_key_from=http.api_key");
    else
        snprintf(key, sizeof key, "api_key_file=%s/api_key", cfg->data_dir);
    client_host(cfg->http.bind, host, sizeof host);
    log_info("dashboard url=http://%s:%d/ %s rest=http://%s:%d/api/docs", host, http, key, host,
             http);
    log_info("try: add a device: curl -H 'Authorization: Bearer <API key>' -d "
             "'{\"id\":\"dev-1\"}' http://%s:%d/api/devices (its token is in the reply)",
             host, http);
    if (mqtt >= 0) {
        client_host(cfg->mqtt.bind, host, sizeof host);
        log_info("try: MQTT: mosquitto_pub -h %s -p %d -u dev-1 -P \"$TOKEN\" -q 1 -t "
                 "devices/dev-1/telemetry -m '{\"temp\":21.5}'", host, mqtt);
    }
    if (line >= 0) {
        client_host(cfg->line.bind, host, sizeof host);
        log_info("try: line protocol: nc %s %d, then type {\"device\":\"dev-1\",\"token\":"
                 "\"$TOKEN\"} and {\"temp\":21.5,\"seq\":1}", host, line);
    }
    client_host(cfg->http.bind, host, sizeof host);
    log_info("try: WebSocket: ws://%s:%d/ws/device, first message "
             "{\"device\":\"dev-1\",\"token\":\"$TOKEN\"}, then {\"temp\":21.5}", host,
             http);
    log_info("try: HTTP: curl -H \"Authorization: Bearer $TOKEN\" -d '{\"temp\":21.5}' "
             "http://%s:%d/api/devices/dev-1/telemetry", host, http);
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    static struct config cfg;
    static struct bridge_cfg bcfg;
    struct gw gw;
    struct parts parts = {0};
    struct devices devices;
    struct store_cfg scfg;
    struct mqtt_store mqtt_store;
    struct store *store = NULL;
    struct tls_server *tls = NULL;
    uv_loop_t loop;
    char dbpath[CONFIG_STR_MAX + 16], secret_path[CONFIG_STR_MAX + 32];
    bool check_only = false, created, busy;
    int code = 1, lock_fd;

    if (load_config(argc, argv, &cfg, &check_only, &code) != 0)
        return code;
    if (health_only)
        return health_probe(cfg.data_dir, cfg.http.bind, cfg.http.port, HEALTH_TIMEOUT_MS,
                            stdout);
    log_setup((enum log_level)log_parse_level(cfg.log.level),
              strcmp(cfg.log.format, "json") == 0 ? LOG_JSON : LOG_TEXT);
    if (issue.device)
        return issue_token(&cfg);
    if (backup_dest)
        return backup_cli(&cfg, backup_dest);
    if (check_only) {
        char *js = config_to_json(&cfg);
        printf("%s\n", js);
        free(js);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    apply_fd_limit(&cfg);
    /* another gale on this data dir: said before anything else, and nothing is created */
    if ((lock_fd = lock_data_dir(cfg.data_dir, false, &busy)) >= 0)
        close(lock_fd);
    else if (busy)
        return 2;
    lock_fd = -1;
    memset(&gw, 0, sizeof gw);
    gw.cfg = &cfg;
    uv_loop_init(&loop);
    gw.loop = &loop;
    loop.data = &gw;
    devices_init(&devices);
    gw.devices = &devices;
    gw.bus = bus_new();
    gw.conns = conn_registry_new();
    gw.guard = guard_new(&cfg, &gw.metrics);
    gw.hook_ctx = &parts;
    if (write_fault_seam_init(&gw) != 0)
        goto out;
    {
        char err[600]; /* checked by check_config: only a secret file changed since fails */
        if (proxy_trust_parse(cfg.limits.proxy_trusted_json, &gw.proxy_trust, err, sizeof err) !=
                0 ||
            fleet_new(cfg.auth.fleet_keys_json, &gw.fleet, err, sizeof err) != 0) {
            log_error("config: %s", err);
            goto out;
        }
        if (gw.fleet)
            log_info("fleet keys=%zu signing=%s", gw.fleet->n, gw.fleet->keys[0].id);
    }
    /* the listeners first: a port in use ends the start before anything exists on disk
     * (no data dir, key or database); what they queue is accepted once the loop runs */
    if (cfg.tls.cert_file[0]) { /* checked by check_config: only a file changed since fails */
        char err[CONFIG_STR_MAX + 256];
        if ((tls = tls_server_new(&cfg, err, sizeof err)) == NULL) {
            log_error("%s", err);
            goto out;
        }
    }
    if (bind_listeners(&gw, &cfg, tls) != 0)
        goto out;
    if (mkdir(cfg.data_dir, 0700) != 0 && errno != EEXIST) {
        log_error("cannot create data dir %s: %s", cfg.data_dir, strerror(errno));
        goto out;
    }
    if (check_data_dir(cfg.data_dir) != 0)
        goto out;
    if ((lock_fd = lock_data_dir(cfg.data_dir, true, &busy)) < 0) {
        code = busy ? 2 : 1;
        goto out;
    }

    snprintf(secret_path, sizeof secret_path, "%s/token.key", cfg.data_dir);
    if (load_secret(secret_path, gw.token_secret, sizeof gw.token_secret, &created) != 0 ||
        load_api_key(&gw, &cfg) != 0)
        goto out;
    if (cfg.storage.path[0])
        snprintf(dbpath, sizeof dbpath, "%s", cfg.storage.path);
    else
        snprintf(dbpath, sizeof dbpath, "%s/gale.db", cfg.data_dir);
    scfg = (struct store_cfg){
        .path = dbpath,
        .sync = cfg.storage.sync == CONFIG_SYNC_NORMAL ? STORE_SYNC_NORMAL : STORE_SYNC_FULL,
        .batch_rows = cfg.storage.batch_rows,
        .batch_delay_ms = (unsigned)cfg.storage.batch_delay_ms,
        .queue_high_bytes = cfg.storage.queue_high_bytes,
        .queue_low_bytes = cfg.storage.queue_low_bytes,
        .queue_high_rows = cfg.storage.queue_high_rows,
        .queue_low_rows = cfg.storage.queue_low_rows,
        .hot_max_points = cfg.storage.hot_max_points,
        .retention_days = (unsigned)cfg.storage.retention_days,
        .wal_max_bytes = cfg.storage.wal_max_bytes,
        .no_ack_log = !cfg.storage.ack_log,
    };
    if (store_open(&loop, &scfg, &store) != 0)
        goto out;
    store_set_callbacks(store, gw_on_durable, gw_on_pressure, &gw);
    store_set_full_callback(store, gw_on_storage_full);
    fault_seam_init(&loop, store);
    gw.storage = (struct gw_storage){store, storage_pending, storage_queued, storage_flush,
                                     storage_stats};
    if (store_load_devices(store, on_device_loaded, &gw) != 0 ||
        store_load_latest(store, on_latest_loaded, &gw) != 0)
        goto out;
    log_info("storage path=%s devices=%zu", dbpath, devices.by_id.len);

    devices_set_store(&devices, &(struct devices_store){store, devices_put_stored,
                                                        devices_touch_stored,
                                                        devices_remove_stored,
                                                        devices_forget_stored});
    /* storage first: the latest sink reads the seq of the write that stores a message */
    bus_add_sink(gw.bus, "storage", store_sink, store);
    bus_add_sink(gw.bus, "latest", devices_sink, &devices);
    mqtt_store = mqtt_store_port(store);
    if ((parts.broker = mqtt_broker_new(&gw, &mqtt_store)) == NULL)
        goto out;
    gw.on_presence = on_presence;
    if ((parts.commands = commands_new(&gw, store, parts.broker)) == NULL)
        goto out;
    gw.on_command_reply = on_command_reply;
    if ((gw.keys = keys_new(&gw, store)) == NULL)
        goto out;
    keys_set_revoked_hook(gw.keys, on_key_revoked, &parts);
    parts.rest = rest_new(&gw, store, parts.commands);
    rest_set_device_deleted_hook(parts.rest, on_device_deleted, parts.broker);
    parts.ops = ops_new(&gw, parts.broker);
    rest_set_ops(parts.rest, parts.ops);
    parts.feed = feed_new(&gw);
    parts.ws_routes = ws_routes_new(&gw, parts.rest, parts.feed, parts.broker);
    {
        char err[512];
        if (bridge_cfg_parse(cfg.bridge.upstreams_json, &bcfg, err, sizeof err) != 0) {
            log_error("%s", err); /* checked by check_config: not reached */
            goto out;
        }
    }
    if (bcfg.n) {
        struct outbox_port port = {store, outbox_put, outbox_del, outbox_load_index,
                                   outbox_read};
        if ((parts.bridge = bridge_new(&gw, &bcfg, &port, &upstream_paho,
                                       &(struct bridge_hooks){&gw, bridge_command})) == NULL)
            goto out;
        /* after storage: a device's ack waits on the outbox row too (ticket) */
        bus_add_sink(gw.bus, "bridge", bridge_sink, parts.bridge);
        commands_set_status_hook(parts.commands, on_command_status, &parts);
        ops_set_bridge(parts.ops, &(struct ops_bridge){parts.bridge, bridge_write_json,
                                                       bridge_write_metrics});
    }
    gw_start(&gw);
    if (tls && tls_server_watch(tls, &loop) != 0)
        log_warn("tls: cannot watch the certificate files; SIGHUP still reloads them");
    gw_listener_set_ctx(&gw, &http_proto, rest_http_server(parts.rest));
    gw_listener_set_ctx(&gw, &mqtt_proto, parts.broker);
    gw_log_listening(&gw);
    record_listeners(&gw, cfg.data_dir);
    gw.ready = !ready_seam(&loop, &gw);
    log_info("gale %s started data_dir=%s", GALE_VERSION, cfg.data_dir);
    log_banner(&gw, &cfg);
    uv_run(&loop, UV_RUN_DEFAULT);
    code = 0;
out:
    gw.stopping = true;
    bridge_close(parts.bridge); /* stops sending, disconnects; the outbox keeps the rest */
    conn_registry_close_all(gw.conns, "shutting down");
    /* their close callbacks release their protocols' state, which may still write storage
     * (a session's last state, a will): before storage drains and closes */
    while (conn_registry_closing(gw.conns) > 0)
        uv_run(&loop, UV_RUN_NOWAIT);
    gw_close_handles(&gw);
    tls_server_close(tls);
    if (store) {
        store_close(store); /* drains the writer: everything received is committed */
        store = NULL;
        gw.storage = (struct gw_storage){0};
    }
    uv_walk(&loop, on_walk_close, NULL);
    while (uv_run(&loop, UV_RUN_NOWAIT) != 0)
        ;
    if (uv_loop_close(&loop) != 0)
        log_warn("loop closed with live handles");
    bridge_free(parts.bridge);
    bridge_cfg_fini(&bcfg);
    ws_routes_free(parts.ws_routes);
    rest_free(parts.rest);
    ops_free(parts.ops);
    feed_free(parts.feed);
    commands_free(parts.commands);
    keys_free(gw.keys);
    mqtt_broker_free(parts.broker);
    conn_registry_free(gw.conns);
    tls_server_free(tls);
    guard_free(gw.guard);
    proxy_trust_fini(&gw.proxy_trust);
    fleet_free(gw.fleet);
    bus_free(gw.bus);
    devices_fini(&devices);
    log_info("stopped code=%d", code);
    if (lock_fd >= 0) {
        health_forget(cfg.data_dir);
        close(lock_fd); /* last: the next gale may open the data dir now */
    }
    return code;
}
