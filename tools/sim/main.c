/* tools/sim/main.c: gale-sim's options, the run and its end (see --help and the
 * README's "Device simulator" section).
 *
 * The run: provision the devices when an API key is given, start every device's tick,
 * print a progress line each second on stderr, and stop at --duration, once every
 * device has sent --count messages, or at SIGINT/SIGTERM: no more sends, up to --drain
 * seconds for the outstanding acks, then each connection says goodbye and closes.
 * A summary goes to stdout as one JSON object.
 * Exit status: 0 after a run in which devices connected, 1 when provisioning failed or
 * no device ever connected, 2 on bad usage. A second signal exits at once (1). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "base/alloc.h"
#include "tools/sim/sim.h"


const char *const proto_name[P_COUNT] = {"mqtt", "line", "ws", "http"};

static const char usage[] =
    "usage: gale-sim [options]\n"
    "Simulates a fleet of devices sending telemetry to Gale and answering its commands.\n"
    "\n"
    "  --devices N          devices (default 10)\n"
    "  --protocol P         mqtt, line, ws, http or mix (default mix: the four in turn)\n"
    "  --rate R             messages per second per device (default 1; up to 1000)\n"
    "  --qos 0|1            1 (default): every message asks for an ack (MQTT QoS 1, line\n"
    "                       and /ws/device \"seq\"); 0: none (HTTP is always answered)\n"
    "  --mqtt-version V     3.1.1 (or 4, default) or 5\n"
    "  --host H             Gale's address (default 127.0.0.1)\n"
    "  --mqtt-port P        (default 1883)   --line-port P (default 7000)\n"
    "  --http-port P        (default 8080: REST, /ws/device and HTTP ingest)\n"
    "  --key KEY            API key: provision the devices over REST first\n"
    "  --key-file FILE      the API key from a file (e.g. data/api_key); without either,\n"
    "                       the environment's GALE_HTTP_API_KEY when set\n"
    "  --wait S             first wait up to S seconds for Gale to be ready (GET /api/ready)\n"
    "  --prefix S           device ids are S followed by a number (default sim-)\n"
    "  --duration S         stop after S seconds (default: at SIGINT/SIGTERM)\n"
    "  --count N            stop once every device has sent N messages\n"
    "  --drain S            at the stop, wait up to S seconds for acks (default 5)\n"
    "  --gaps P             probability that a device skips a send (default 0.02)\n"
    "  --late P             probability that a message is a late point (default 0.01)\n"
    "  --window N           unacknowledged messages per device before it skips sends\n"
    "                       (default 32)\n"
    "  --connect-parallel N connections being set up at once (default 100)\n"
    "  --http-connections N keep-alive connections the HTTP devices share (default 32)\n"
    "  --seed N             random seed (default 1): each device's base values and drift\n"
    "  --quiet              no progress line\n"
    "  --help\n"
    "\n"
    "Without a key devices connect without a token: MQTT then needs Gale's anonymous\n"
    "access (mqtt.allow_anonymous); line, ws and http devices need tokens.\n";

static struct sim S;
static uv_timer_t progress_timer, drain_timer;
static uv_signal_t sig_int, sig_term;
static struct sim_stats last;
static bool closing;

void sim_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gale-sim: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

uint64_t sim_now_ms(void)
{
    return uv_hrtime() / 1000000;
}

int64_t sim_epoch_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* The end: goodbye on every connection, close every handle; uv_run then returns. */
static void close_everything(void)
{
    if (closing)
        return;
    closing = true;
    for (int i = 0; i < S.o.devices; i++)
        dev_close_all(&S.devs[i]);
    shttp_pool_close();
    uv_close((uv_handle_t *)&progress_timer, on_handle_closed);
    uv_close((uv_handle_t *)&drain_timer, on_handle_closed);
    uv_close((uv_handle_t *)&sig_int, on_handle_closed);
    uv_close((uv_handle_t *)&sig_term, on_handle_closed);
}

static unsigned long unacked_total(void)
{
    unsigned long n = 0;
    for (int i = 0; i < S.o.devices; i++)
        n += S.devs[i].unacked;
    return n;
}

static uint64_t drain_deadline;

static void on_drain_tick(uv_timer_t *t)
{
    (void)t;
    if (unacked_total() == 0 || sim_now_ms() >= drain_deadline)
        close_everything();
}

static void stop_run(const char *why)
{
    if (S.stopping)
        return;
    S.stopping = true;
    if (!S.o.quiet)
        sim_log("stopping (%s): waiting up to %g s for acks", why, S.o.drain_s);
    for (int i = 0; i < S.o.devices; i++)
        dev_stop(&S.devs[i]);
    drain_deadline = sim_now_ms() + (uint64_t)(S.o.drain_s * 1000);
    uv_timer_start(&drain_timer, on_drain_tick, 0, 50);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    if (S.stopping) {
        sim_log("second signal: exiting at once");
        exit(1);
    }
    stop_run(signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_progress(uv_timer_t *t)
{
    (void)t;
    double el = (double)(sim_now_ms() - S.start_ms) / 1000.0;
    if (!S.o.quiet)
        fprintf(stderr,
                "gale-sim: t=%.0fs connected=%ld/%d sent=%llu acked=%llu errors=%llu "
                "rate=%llu/s acks=%llu/s cmds=%llu gaps=%llu late=%llu skipped=%llu\n",
                el, S.st.connected, S.o.devices, (unsigned long long)S.st.sent,
                (unsigned long long)S.st.acked, (unsigned long long)S.st.errors,
                (unsigned long long)(S.st.sent - last.sent),
                (unsigned long long)(S.st.acked - last.acked), (unsigned long long)S.st.cmds,
                (unsigned long long)S.st.gaps, (unsigned long long)S.st.late,
                (unsigned long long)S.st.skipped);
    last = S.st;
    if (S.stopping)
        return;
    if (S.o.duration_s > 0 && el >= S.o.duration_s) {
        stop_run("duration reached");
        return;
    }
    if (S.o.count > 0) {
        for (int i = 0; i < S.o.devices; i++)
            if (S.devs[i].sent_n < S.o.count)
                return;
        stop_run("count reached");
    }
}

static void start_fleet(struct sim *s, int rc)
{
    if (rc != 0) {
        s->fatal = 1;
        close_everything();
        return;
    }
    s->start_ms = sim_now_ms();
    for (int i = 0; i < s->o.devices; i++)
        dev_start(&s->devs[i]);
    uv_timer_start(&progress_timer, on_progress, 1000, 1000);
}

static int read_key_file(const char *path, char **out)
{
    FILE *f = fopen(path, "r");
    char line[600];

    if (!f) {
        sim_log("--key-file %s: %s", path, strerror(errno));
        return -1;
    }
    if (!fgets(line, sizeof line, f))
        line[0] = 0;
    fclose(f);
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) {
        sim_log("--key-file %s: empty", path);
        return -1;
    }
    *out = xstrdup(line);
    return 0;
}

/* After the wait for readiness (rc 0), or at once without --wait. */
static void provision(struct sim *s, int rc)
{
    if (rc == 0 && s->o.key_file && read_key_file(s->o.key_file, &s->key_buf) != 0)
        rc = 1;
    if (s->key_buf)
        s->o.key = s->key_buf;
    if (rc != 0)
        start_fleet(s, rc);
    else if (s->o.key)
        prov_run(s, start_fleet);
    else
        start_fleet(s, 0);
}

static bool num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, struct sim_opts *o)
{
    *o = (struct sim_opts){.host = "127.0.0.1", .mqtt_port = 1883, .line_port = 7000,
                           .http_port = 8080, .devices = 10, .rate = 1, .qos = 1,
                           .mqtt_version = 4, .mix = true, .prefix = "sim-", .gap_p = 0.02,
                           .late_p = 0.01, .seed = 1, .drain_s = 5, .connect_parallel = 100,
                           .provision_parallel = 16, .window = 32,
                           .http_connections = 32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(a, "--quiet") == 0) {
            o->quiet = true;
            continue;
        }
        if (!v) {
            sim_log("%s needs a value (see --help)", a);
            return -1;
        }
        i++;
#define NUM(name, lo, hi, dst)                                                   \
    if (strcmp(a, name) == 0) {                                                  \
        if (!num(v, lo, hi, &x)) {                                               \
            sim_log("%s: %s is not a number in %g..%g", name, v, (double)(lo),   \
                    (double)(hi));                                               \
            return -1;                                                           \
        }                                                                        \
        dst = x;                                                                 \
        continue;                                                                \
    }
        NUM("--devices", 1, 1000000, o->devices)
        NUM("--rate", 0.001, 1000, o->rate)
        NUM("--qos", 0, 1, o->qos)
        NUM("--mqtt-port", 1, 65535, o->mqtt_port)
        NUM("--line-port", 1, 65535, o->line_port)
        NUM("--http-port", 1, 65535, o->http_port)
        NUM("--duration", 0, 1e9, o->duration_s)
        NUM("--count", 0, 1e12, o->count)
        NUM("--drain", 0, 3600, o->drain_s)
        NUM("--wait", 0, 86400, o->wait_s)
        NUM("--gaps", 0, 1, o->gap_p)
        NUM("--late", 0, 1, o->late_p)
        NUM("--window", 1, 65000, o->window)
        NUM("--connect-parallel", 1, 100000, o->connect_parallel)
        NUM("--http-connections", 1, 100000, o->http_connections)
        NUM("--seed", 0, 9007199254740992.0, o->seed)
#undef NUM
        if (strcmp(a, "--host") == 0) {
            o->host = v;
        } else if (strcmp(a, "--prefix") == 0) {
            o->prefix = v;
        } else if (strcmp(a, "--key") == 0) {
            o->key = v;
        } else if (strcmp(a, "--key-file") == 0) {
            o->key_file = v; /* read once Gale is ready (it may write it at its first start) */
        } else if (strcmp(a, "--mqtt-version") == 0) {
            if (strcmp(v, "3.1.1") == 0 || strcmp(v, "4") == 0 || strcmp(v, "3") == 0) {
                o->mqtt_version = 4;
            } else if (strcmp(v, "5") == 0 || strcmp(v, "5.0") == 0) {
                o->mqtt_version = 5;
            } else {
                sim_log("--mqtt-version: %s is not 3.1.1 or 5", v);
                return -1;
            }
        } else if (strcmp(a, "--protocol") == 0) {
            o->mix = strcmp(v, "mix") == 0;
            int p = -1;
            for (int k = 0; k < P_COUNT; k++)
                if (strcmp(v, proto_name[k]) == 0)
                    p = k;
            if (!o->mix && p < 0) {
                sim_log("--protocol: %s is not mqtt, line, ws, http or mix", v);
                return -1;
            }
            o->protocol = p < 0 ? P_MQTT : (enum proto)p;
        } else {
            sim_log("unknown option %s (see --help)", a);
            return -1;
        }
    }
    /* the key Gale itself may be given, as compose files and scripts set it */
    if (!o->key && !o->key_file && getenv("GALE_HTTP_API_KEY") && getenv("GALE_HTTP_API_KEY")[0])
        o->key = getenv("GALE_HTTP_API_KEY");
    if (strlen(o->prefix) > 48) {
        sim_log("--prefix: longer than 48 characters");
        return -1;
    }
    return 0;
}

static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    uv_getaddrinfo_t req;
    char ps[8];

    snprintf(ps, sizeof ps, "%d", port);
    int rc = uv_getaddrinfo(uv_default_loop(), &req, NULL, host, ps, &hints);
    if (rc != 0) {
        sim_log("%s: %s", host, uv_strerror(rc));
        return -1;
    }
    memcpy(out, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    return 0;
}

/* Raises the soft open-file limit to the hard one and says when the fleet needs more. */
static void check_fd_limit(int devices)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)devices + 64 > rl.rlim_cur)
        sim_log("warning: %d devices need %d open files; the limit is %llu", devices,
                devices + 64, (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
    struct sim *s = &S;

    if (parse_args(argc, argv, &s->o) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    check_fd_limit(s->o.devices);
    s->loop = uv_default_loop();
    if (resolve(s->o.host, s->o.mqtt_port, &s->addr[P_MQTT]) != 0 ||
        resolve(s->o.host, s->o.line_port, &s->addr[P_LINE]) != 0 ||
        resolve(s->o.host, s->o.http_port, &s->addr[P_WS]) != 0)
        return 1;
    s->addr[P_HTTP] = s->addr[P_WS];
    snprintf(s->http_host, sizeof s->http_host,
             strchr(s->o.host, ':') ? "[%.256s]:%d" : "%.256s:%d", s->o.host, s->o.http_port);
    s->http_addr = s->addr[P_WS];

    s->devs = xcalloc((size_t)s->o.devices, sizeof *s->devs);
    s->waitq = xcalloc((size_t)s->o.devices, sizeof *s->waitq);
    int width = 1;
    for (int n = s->o.devices - 1; n >= 10; n /= 10)
        width++;
    width = width < 4 ? 4 : width;
    for (int i = 0; i < s->o.devices; i++) {
        struct dev *d = &s->devs[i];
        d->sim = s;
        d->idx = i;
        d->proto = s->o.mix ? (enum proto)(i % P_COUNT) : s->o.protocol;
        char num[16];
        snprintf(num, sizeof num, "%0*d", width & 15, (i + 1) & 0xfffffff);
        snprintf(d->id, sizeof d->id, "%.48s%s", s->o.prefix, num);
    }

    shttp_pool_init(s, s->o.http_connections);
    uv_timer_init(s->loop, &progress_timer);
    uv_timer_init(s->loop, &drain_timer);
    uv_signal_init(s->loop, &sig_int);
    uv_signal_init(s->loop, &sig_term);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    if (s->o.wait_s > 0)
        prov_wait_ready(s, provision);
    else
        provision(s, 0);
    uv_run(s->loop, UV_RUN_DEFAULT);

    double el = s->start_ms ? (double)(sim_now_ms() - s->start_ms) / 1000.0 : 0;
    int rc = s->fatal ? s->fatal : s->ever_connected ? 0 : 1;
    if (!s->fatal && !s->ever_connected)
        sim_log("no device connected");
    printf("{\"devices\":%d,\"sent\":%llu,\"acked\":%llu,\"errors\":%llu,\"commands\":%llu,"
           "\"gaps\":%llu,\"late\":%llu,\"skipped\":%llu,\"reconnects\":%llu,"
           "\"seconds\":%.3f,\"exit\":%d}\n",
           s->o.devices, (unsigned long long)s->st.sent, (unsigned long long)s->st.acked,
           (unsigned long long)s->st.errors, (unsigned long long)s->st.cmds,
           (unsigned long long)s->st.gaps, (unsigned long long)s->st.late,
           (unsigned long long)s->st.skipped, (unsigned long long)s->st.reconnects, el, rc);
    uv_loop_close(s->loop);
    shttp_pool_free();
    free(s->devs);
    free(s->waitq);
    free(s->key_buf);
    return rc;
}
