/* tests/bench/bench_mqtt.c: MQTT publish throughput, PUBACK latency, routing and
 * end-to-end latency against any MQTT 3.1.1 server (Gale or Mosquitto), from C
 * clients multiplexed with ppoll() in one thread; MQTT 3.1.1 by default, 5.0 on request.
 *
 *   bench_mqtt PORT CLIENTS MESSAGES_PER_CLIENT QOS [WINDOW]
 *              [--seconds S] [--rate MSGS_PER_S] [--subscribe FILTER [--sub-port P]
 *              [--subscribers N]] [--tls CAFILE] [--mqtt-version 4|5]
 *
 * Each publisher connects (client id bench-<i>, username bench-<i>, no password)
 * and publishes 4-key telemetry JSON of 74 bytes to devices/bench-<i>/telemetry, every
 * key a value the server stores ("seq" would be taken as an ack request by Gale):
 *   {"temperature": 21.50,"humidity": 43.0,"battery":3.300,"count":         7}
 * Every client is connected (and the subscriber's SUBACK in) before the clock starts.
 * QoS 1: at most WINDOW (default 100) unacknowledged PUBLISHes per client; a client
 * is done when every PUBACK is in; the time from each PUBLISH to its PUBACK is
 * recorded. QoS 0: every PUBLISH then a PINGREQ; done when the PINGRESP is in (the
 * server has read everything before it answers the ping).
 *   --seconds S   publishing stops after S seconds (outstanding acks still drain), so
 *                 a slow server costs time, not a hang; the rate counts what was sent.
 *   --rate R      R messages/s in total, spread evenly over the publishers, which take
 *                 turns (client i sends at t0 + (k * clients + i) / R); default: as fast
 *                 as the window and the socket allow.
 *   --subscribe F one more client (bench-sub) subscribes F at QoS 0 first and reads
 *                 every telemetry message; publish-to-receive latency is measured per
 *                 message (same process, same clock).
 *   --sub-port P  the subscriber connects to port P instead of PORT (another broker,
 *                 e.g. the upstream Gale bridges to: device -> Gale -> upstream latency).
 *   --subscribers N  N such clients (bench-sub-<j>) subscribe F, e.g. a shared
 *                 subscription $share/<group>/... that spreads the messages over them:
 *                 delivered counts what they all got, sub_min= and sub_max= what the
 *                 least and the most served one got.
 *   --tls CA      every client speaks TLS (server certificate checked against CA for
 *                 "localhost"): the handshake is done, blocking, at connect; then reads
 *                 and writes go through SSL_read/SSL_write in the same poll loop.
 *   --mqtt-version V  4 (3.1.1, the default) or 5: every client connects with level 5
 *                 and no properties, publishes with an empty property block, subscribes
 *                 with options QoS 0 and reads acks with 5.0 rules (a PUBACK's reason code
 *                 and properties are optional; a failure code, >= 0x80, ends the run).
 *                 A server's Receive Maximum below WINDOW lowers the window, as a client
 *                 must; window= in the output is the window used.
 * Prints one line of key=value:
 *   mqtt version= qos= clients= window= messages= seconds= msgs_per_s= [ack_p50_ms=
 *        ack_p99_ms= ack_p99_worst_10s_ms=]  (the last: the highest p99 over consecutive
 *        10 s windows of acks)
 *        [delivered= delivered_per_s= e2e_p50_ms= e2e_p99_ms= [sub_min= sub_max=]]
 * Bounded: connecting gives up after 30 s, the run S + 30 s after the start
 * (S defaults to 120); loopback only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "base/buf.h"
#include "protocols/mqtt/mqtt.h"

#define OUT_HIGH_BYTES 65536 /* QoS 0: stop encoding while this much waits to be written */
#define CONNECT_TIMEOUT_S 30
#define DRAIN_TIMEOUT_S 30
#define SUB_QUIET_S 2.0 /* after the publishers finish, the subscriber stops after this silence */

struct client {
    int fd;
    SSL *ssl;          /* --tls: the connection's TLS, else NULL */
    bool is_sub;
    bool connacked, subacked, ping_sent, done;
    long published, acked, limit;
    long got;          /* subscriber: telemetry of ours it received */
    double *sent_at;   /* QoS 1: send time by packet id (1..65535) */
    struct buf out;    /* bytes not yet written */
    struct buf in;     /* bytes read, not yet decoded */
    char id[32];
};

/* Latency samples in milliseconds; grows by doubling. */
struct samples {
    double *v;
    size_t n, cap;
};

struct run {
    int nclients, qos, window;
    long per;
    double seconds, rate;
    const char *filter;
    int sub_port;        /* --sub-port: the subscriber's server, else 0 (PORT) */
    int nsubs;           /* --subscribers: subscriber clients (1 with --subscribe) */
    SSL_CTX *tls;        /* --tls: client context, else NULL */
    struct client *cl;   /* nclients publishers, then the subscribers if any */
    int nfds;
    struct pollfd *pfd;
    double t0, t_stop, t_last_recv;
    bool started, stopped;
    long total_done;
    long delivered, foreign; /* subscriber: telemetry of ours received, anything else */
    double **pub_time;       /* subscriber: send time of message k of client i */
    struct samples ack, e2e;
    struct samples win;      /* acks of the current 10 s window */
    double win_start, win_worst_p99;
};

#define ACK_WINDOW_S 10.0

static const struct mqtt_limits lim = {0, MQTT_V311};
static uint8_t version = MQTT_V311; /* --mqtt-version */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_mqtt: %s\n", what);
    exit(1);
}

static void sample_add(struct samples *s, double ms)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            die("out of memory");
    }
    s->v[s->n++] = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* q-quantile of sorted samples (nearest rank). */
static double quantile(const struct samples *s, double q)
{
    size_t i;

    if (s->n == 0)
        return 0;
    i = (size_t)(q * (double)s->n);
    return s->v[i < s->n ? i : s->n - 1];
}

/* Closes the current ack window: its p99 may be the worst so far. */
static void window_close(struct run *r, double now)
{
    if (r->win.n >= 100) { /* fewer acks say little about a p99 */
        double p99;
        qsort(r->win.v, r->win.n, sizeof *r->win.v, cmp_double);
        p99 = quantile(&r->win, 0.99);
        if (p99 > r->win_worst_p99)
            r->win_worst_p99 = p99;
    }
    r->win.n = 0;
    r->win_start = now;
}

static void ack_add(struct run *r, double now, double ms)
{
    sample_add(&r->ack, ms);
    if (r->win_start == 0)
        r->win_start = now;
    if (now - r->win_start >= ACK_WINDOW_S)
        window_close(r, now);
    sample_add(&r->win, ms);
}

/* TLS handshake on c's (still blocking) socket. */
static void start_tls(struct client *c, SSL_CTX *ctx)
{
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    if (SSL_connect(c->ssl) != 1) {
        fprintf(stderr, "bench_mqtt: TLS handshake failed: %s\n",
                ERR_reason_error_string(ERR_get_error()));
        exit(1);
    }
}

/* read(2)/write(2), or through TLS: -1 with errno EAGAIN when TLS wants to wait. */
static ssize_t io_read(struct client *c, void *p, size_t n)
{
    int rc, e;
    if (!c->ssl)
        return read(c->fd, p, n);
    if ((rc = SSL_read(c->ssl, p, (int)n)) > 0)
        return rc;
    e = SSL_get_error(c->ssl, rc);
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
    return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

static ssize_t io_write(struct client *c, const void *p, size_t n)
{
    int rc, e;
    if (!c->ssl)
        return write(c->fd, p, n);
    if ((rc = SSL_write(c->ssl, p, (int)n)) > 0)
        return rc;
    e = SSL_get_error(c->ssl, rc);
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
    return -1;
}

static void open_client(struct client *c, int port, const char *id, bool is_sub, SSL_CTX *tls)
{
    struct sockaddr_in a = {0};
    struct mqtt_connect m = {0};
    int one = 1;

    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("bench_mqtt: connect");
        exit(1);
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (tls)
        start_tls(c, tls);
    /* non-blocking, so a full socket never stalls every other client */
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    snprintf(c->id, sizeof c->id, "%s", id);
    c->is_sub = is_sub;
    m.clean_session = true;
    m.keepalive_s = 60;
    m.client_id = (struct mqtt_str){c->id, strlen(c->id)};
    m.has_username = true;
    m.username = m.client_id;
    buf_init(&c->out);
    buf_init(&c->in);
    if (version == MQTT_V5)
        mqtt_encode_connect5(&c->out, &m, NULL, NULL); /* Property Length 0 */
    else
        mqtt_encode_connect(&c->out, &m);
}

/* Messages client i may have sent by now: its limit, or the schedule's count under --rate. */
static long allowed(const struct run *r, int i, double now)
{
    long lim_n = r->cl[i].limit;
    if (r->rate > 0) {
        /* client i's k-th message is due at t0 + (k * nclients + i) / rate: the clients
         * take turns, so the server sees a steady stream, not a burst per period */
        double due = (now - r->t0) * r->rate - i;
        long sched = due < 0 ? 0 : (long)(due / r->nclients) + 1;
        if (sched < lim_n)
            lim_n = sched;
    }
    return lim_n;
}

static void publish_one(struct run *r, struct client *c, int i, double now)
{
    char topic[64], payload[128];
    long k = c->published;
    uint16_t pid = (uint16_t)(r->qos ? (k % 65535) + 1 : 0);
    int tl = snprintf(topic, sizeof topic, "devices/%s/telemetry", c->id);
    int pl = snprintf(payload, sizeof payload,
                      "{\"temperature\":%6.2f,\"humidity\":%5.1f,\"battery\":%5.3f,"
                      "\"count\":%10ld}",
                      20.0 + (double)(k % 1000) / 100, 40.0 + (double)(k % 200) / 10,
                      3.0 + (double)(k % 500) / 1000, k);

    if (version == MQTT_V5)
        mqtt_encode_publish5(&c->out, topic, (size_t)tl, NULL, (const uint8_t *)payload,
                             (size_t)pl, (uint8_t)r->qos, false, false, pid);
    else
        mqtt_encode_publish(&c->out, topic, (size_t)tl, (const uint8_t *)payload, (size_t)pl,
                            (uint8_t)r->qos, false, false, pid);
    if (r->qos)
        c->sent_at[pid] = now;
    if (r->pub_time)
        r->pub_time[i][k] = now;
    c->published++;
}

static void top_up(struct run *r, double now)
{
    for (int i = 0; i < r->nclients; i++) {
        struct client *c = &r->cl[i];
        long n = allowed(r, i, now);

        while (c->published < n && (r->qos == 0 ? c->out.len < OUT_HIGH_BYTES
                                                : c->published - c->acked < r->window))
            publish_one(r, c, i, now);
        if (r->qos == 0 && c->published == c->limit && !c->ping_sent) {
            mqtt_encode_pingreq(&c->out);
            c->ping_sent = true;
        }
    }
}

static void finish_client(struct run *r, struct client *c)
{
    if (!c->done && !c->is_sub && c->published == c->limit && c->acked >= c->limit) {
        c->done = true;
        r->total_done++;
    }
}

static void on_publish(struct run *r, struct client *c, const struct mqtt_packet *pkt,
                       double now)
{
    const struct mqtt_publish *p = &pkt->publish;
    char topic[64], payload[128];
    const char *s;
    int i;
    long k;

    if (p->topic.len >= sizeof topic || p->payload_len >= sizeof payload) {
        r->foreign++;
        return;
    }
    memcpy(topic, p->topic.p, p->topic.len);
    topic[p->topic.len] = '\0';
    memcpy(payload, p->payload, p->payload_len);
    payload[p->payload_len] = '\0';
    s = strstr(payload, "\"count\":");
    if (sscanf(topic, "devices/bench-%d/telemetry", &i) != 1 || i < 0 || i >= r->nclients ||
        !s || sscanf(s + 8, "%ld", &k) != 1 || k < 0 || k >= r->cl[i].published) {
        r->foreign++;
        return;
    }
    r->delivered++;
    c->got++;
    r->t_last_recv = now;
    sample_add(&r->e2e, (now - r->pub_time[i][k]) * 1e3);
}

static void read_client(struct run *r, struct client *c, int i, double now)
{
    /* the subscriber may receive many times what one publisher sends: drain more */
    for (int rounds = c->is_sub ? 8 : 1; rounds > 0; rounds--) {
        ssize_t n = io_read(c, buf_reserve(&c->in, 65536), 65536);
        size_t off = 0, used;
        struct mqtt_packet pkt;
        const char *why;

        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            fprintf(stderr, "bench_mqtt: client %d: connection closed (published %ld acked %ld)\n",
                    i, c->published, c->acked);
            exit(1);
        }
        buf_commit(&c->in, (size_t)n);
        while (mqtt_decode_v(&lim, version, c->in.data + off, c->in.len - off, &pkt, &used,
                             &why, NULL) == CODEC_FRAME) {
            off += used;
            if (pkt.type == MQTT_CONNACK) {
                if (pkt.connack.rc != 0) {
                    fprintf(stderr, "bench_mqtt: client %d: CONNACK rc=%d\n", i, pkt.connack.rc);
                    exit(1);
                }
                /* 5.0: never more unacknowledged QoS 1 than the server's Receive Maximum */
                if (version == MQTT_V5 && r->qos && pkt.props.receive_maximum < r->window)
                    r->window = pkt.props.receive_maximum;
                c->connacked = true;
            } else if (pkt.type == MQTT_SUBACK) {
                if (pkt.suback.count < 1 || pkt.suback.codes[0] >= MQTT_SUBACK_FAILURE)
                    die("subscription refused");
                c->subacked = true;
            } else if (pkt.type == MQTT_PUBACK) {
                if (pkt.reason >= 0x80) { /* 5.0: the server refused the message */
                    fprintf(stderr, "bench_mqtt: client %d: PUBACK reason 0x%02x\n", i,
                            pkt.reason);
                    exit(1);
                }
                if (c->sent_at && pkt.id)
                    ack_add(r, now, (now - c->sent_at[pkt.id]) * 1e3);
                c->acked++;
            } else if (pkt.type == MQTT_PINGRESP) {
                c->acked = c->limit;
            } else if (pkt.type == MQTT_PUBLISH && c->is_sub) {
                on_publish(r, c, &pkt, now);
            }
        }
        buf_consume(&c->in, off);
        finish_client(r, c);
        if ((size_t)n < 65536 && !(c->ssl && SSL_pending(c->ssl)))
            return;
        if (rounds == 1 && c->ssl && SSL_pending(c->ssl))
            rounds++; /* decrypted bytes wait inside TLS: poll would not report them */
    }
}

static void write_client(struct client *c)
{
    ssize_t w = io_write(c, c->out.data, c->out.len);

    if (w > 0)
        buf_consume(&c->out, (size_t)w);
    else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        perror("bench_mqtt: write");
        exit(1);
    }
}

static bool all_ready(const struct run *r)
{
    for (int i = 0; i < r->nfds; i++)
        if (!r->cl[i].connacked || (r->cl[i].is_sub && !r->cl[i].subacked))
            return false;
    return true;
}

/* Seconds until ppoll should wake up on its own: the next scheduled publish. */
static double next_wake(const struct run *r, double now)
{
    double wake = 0.5;

    if (!r->started || r->rate <= 0 || r->stopped)
        return wake;
    for (int i = 0; i < r->nclients; i++) {
        const struct client *c = &r->cl[i];
        bool room = r->qos == 0 ? c->out.len < OUT_HIGH_BYTES
                                : c->published - c->acked < r->window;
        if (c->published < c->limit && room) { /* a full window waits for an ack instead */
            double at = r->t0 + ((double)c->published * r->nclients + i) / r->rate - now;
            if (at < wake)
                wake = at < 0 ? 0 : at;
        }
    }
    return wake;
}

static bool sub_finished(const struct run *r, double now)
{
    long sent = 0;

    if (!r->filter)
        return true;
    for (int i = 0; i < r->nclients; i++)
        sent += r->cl[i].published;
    if (r->delivered >= sent)
        return true;
    /* QoS 0 may be dropped on the way: give up after a silence */
    return now - (r->t_last_recv > r->t_stop ? r->t_last_recv : r->t_stop) > SUB_QUIET_S;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s PORT CLIENTS MESSAGES_PER_CLIENT QOS [WINDOW] [--seconds S]"
            " [--rate MSGS_PER_S] [--subscribe FILTER [--sub-port P] [--subscribers N]]"
            " [--tls CAFILE] [--mqtt-version 4|5]\n",
            argv0);
    exit(2);
}

static SSL_CTX *tls_context(const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        fprintf(stderr, "bench_mqtt: cannot load CA file %s\n", ca);
        exit(1);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

static void parse_args(struct run *r, int *port, int argc, char **argv)
{
    int pos = 0;

    r->window = 100;
    r->seconds = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0) {
            if (i + 1 >= argc)
                usage(argv[0]);
            if (strcmp(a, "--seconds") == 0)
                r->seconds = atof(argv[++i]);
            else if (strcmp(a, "--rate") == 0)
                r->rate = atof(argv[++i]);
            else if (strcmp(a, "--subscribe") == 0)
                r->filter = argv[++i];
            else if (strcmp(a, "--sub-port") == 0)
                r->sub_port = atoi(argv[++i]);
            else if (strcmp(a, "--subscribers") == 0)
                r->nsubs = atoi(argv[++i]);
            else if (strcmp(a, "--tls") == 0)
                r->tls = tls_context(argv[++i]);
            else if (strcmp(a, "--mqtt-version") == 0)
                version = (uint8_t)atoi(argv[++i]);
            else
                usage(argv[0]);
            continue;
        }
        switch (pos++) {
        case 0: *port = atoi(a); break;
        case 1: r->nclients = atoi(a); break;
        case 2: r->per = atol(a); break;
        case 3: r->qos = atoi(a); break;
        case 4: r->window = atoi(a); break;
        default: usage(argv[0]);
        }
    }
    if (pos < 4 || *port <= 0 || r->nclients < 1 || r->per < 1 || r->qos < 0 || r->qos > 1 ||
        r->window < 1 || r->window > 65535 || r->seconds <= 0 || r->rate < 0 ||
        r->sub_port < 0 || (r->sub_port && !r->filter) || r->nsubs < 0 || r->nsubs > 1000 ||
        (r->nsubs && !r->filter) || (version != MQTT_V311 && version != MQTT_V5))
        usage(argv[0]);
    if (r->filter && !r->nsubs)
        r->nsubs = 1;
}

int main(int argc, char **argv)
{
    struct run r = {0};
    struct rlimit rl;
    int port = 0;
    double secs, deadline;
    long sent = 0;

    parse_args(&r, &port, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* one fd per client: the soft limit may be raised up to the hard one */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    r.nfds = r.nclients + r.nsubs;
    r.cl = calloc((size_t)r.nfds, sizeof *r.cl);
    r.pfd = calloc((size_t)r.nfds, sizeof *r.pfd);
    if (!r.cl || !r.pfd)
        die("out of memory");
    for (int j = 0; j < r.nsubs; j++) {
        struct client *s = &r.cl[r.nclients + j];
        struct mqtt_sub_req req = {{r.filter, strlen(r.filter)}, 0};
        struct mqtt_sub_req5 req5 = {{r.filter, strlen(r.filter)}, 0};
        char id[32];
        if (r.nsubs == 1)
            snprintf(id, sizeof id, "bench-sub");
        else
            snprintf(id, sizeof id, "bench-sub-%d", j);
        open_client(s, r.sub_port ? r.sub_port : port, id, true, r.sub_port ? NULL : r.tls);
        if (version == MQTT_V5)
            mqtt_encode_subscribe5(&s->out, 1, NULL, &req5, 1);
        else
            mqtt_encode_subscribe(&s->out, 1, &req, 1);
    }
    if (r.filter)
        r.pub_time = calloc((size_t)r.nclients, sizeof *r.pub_time);
    for (int i = 0; i < r.nclients; i++) {
        char id[32];
        snprintf(id, sizeof id, "bench-%d", i);
        open_client(&r.cl[i], port, id, false, r.tls);
        r.cl[i].limit = r.per;
        if (r.qos && !(r.cl[i].sent_at = calloc(65536, sizeof(double))))
            die("out of memory");
        if (r.pub_time && !(r.pub_time[i] = calloc((size_t)r.per, sizeof(double))))
            die("out of memory");
    }
    deadline = now_s() + CONNECT_TIMEOUT_S;
    while (r.total_done < r.nclients) {
        double now = now_s(), wake;
        struct timespec ts;

        if (!r.started && all_ready(&r)) {
            r.started = true;
            r.t0 = now;
            deadline = now + r.seconds + DRAIN_TIMEOUT_S;
        }
        if (now > deadline) {
            fprintf(stderr, "bench_mqtt: timed out (%s): %ld of %d clients done\n",
                    r.started ? "running" : "connecting", r.total_done, r.nclients);
            return 1;
        }
        if (r.started && !r.stopped && now - r.t0 >= r.seconds) {
            /* out of time: what was sent is the run */
            r.stopped = true;
            for (int i = 0; i < r.nclients; i++) {
                r.cl[i].limit = r.cl[i].published;
                finish_client(&r, &r.cl[i]);
            }
            continue; /* every client may be done already */
        }
        if (r.started)
            top_up(&r, now);
        for (int i = 0; i < r.nfds; i++) {
            r.pfd[i].fd = r.cl[i].fd;
            r.pfd[i].events = POLLIN | (r.cl[i].out.len ? POLLOUT : 0);
            r.pfd[i].revents = 0;
        }
        wake = next_wake(&r, now);
        ts.tv_sec = (time_t)wake;
        ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
        if (ppoll(r.pfd, (nfds_t)r.nfds, &ts, NULL) <= 0)
            continue;
        now = now_s();
        for (int i = 0; i < r.nfds; i++) {
            if ((r.pfd[i].revents & POLLOUT) && r.cl[i].out.len)
                write_client(&r.cl[i]);
            if (r.pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                read_client(&r, &r.cl[i], i, now);
        }
    }
    secs = now_s() - r.t0;
    r.t_stop = now_s();
    for (int i = 0; i < r.nclients; i++)
        sent += r.cl[i].published;
    /* the subscribers go on reading until they have everything or the line goes quiet */
    while (r.filter && !sub_finished(&r, now_s()) && now_s() < deadline) {
        struct pollfd *p = r.pfd + r.nclients;
        for (int j = 0; j < r.nsubs; j++)
            p[j] = (struct pollfd){r.cl[r.nclients + j].fd, POLLIN, 0};
        if (poll(p, (nfds_t)r.nsubs, 100) <= 0)
            continue;
        for (int j = 0; j < r.nsubs; j++)
            if (p[j].revents)
                read_client(&r, &r.cl[r.nclients + j], r.nclients + j, now_s());
    }
    qsort(r.ack.v, r.ack.n, sizeof *r.ack.v, cmp_double);
    qsort(r.e2e.v, r.e2e.n, sizeof *r.e2e.v, cmp_double);
    printf("mqtt version=%d qos=%d clients=%d window=%d messages=%ld seconds=%.3f"
           " msgs_per_s=%.0f", version, r.qos, r.nclients, r.window, sent, secs,
           (double)sent / secs);
    if (r.qos) {
        window_close(&r, now_s());
        printf(" ack_p50_ms=%.3f ack_p99_ms=%.3f ack_p99_worst_10s_ms=%.3f", quantile(&r.ack, 0.5),
               quantile(&r.ack, 0.99), r.win_worst_p99);
    }
    if (r.filter)
        printf(" delivered=%ld foreign=%ld delivered_per_s=%.0f e2e_p50_ms=%.3f e2e_p99_ms=%.3f",
               r.delivered, r.foreign,
               r.t_last_recv > r.t0 ? (double)r.delivered / (r.t_last_recv - r.t0) : 0.0,
               quantile(&r.e2e, 0.5), quantile(&r.e2e, 0.99));
    if (r.nsubs > 1) {
        long lo = -1, hi = 0;
        for (int j = 0; j < r.nsubs; j++) {
            long got = r.cl[r.nclients + j].got;
            lo = lo < 0 || got < lo ? got : lo;
            hi = got > hi ? got : hi;
        }
        printf(" sub_min=%ld sub_max=%ld", lo, hi);
    }
    printf("\n");
    for (int i = 0; i < r.nfds; i++) {
        SSL_free(r.cl[i].ssl);
        close(r.cl[i].fd);
        buf_fini(&r.cl[i].out);
        buf_fini(&r.cl[i].in);
        free(r.cl[i].sent_at);
        if (r.pub_time && i < r.nclients)
            free(r.pub_time[i]);
    }
    free(r.pub_time);
    free(r.cl);
    free(r.pfd);
    free(r.ack.v);
    free(r.win.v);
    free(r.e2e.v);
    SSL_CTX_free(r.tls);
    return 0;
}
