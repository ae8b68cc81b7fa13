/* tests/soak/soak_load.c: the soak's load generator and meter (driven by soak.py).
 *
 *   soak_load --mqtt-port P --line-port P --http-port P --api-key KEY --devices FILE
 *             --rate MSGS_PER_S --seconds S [--drain S] [--window W] [--acked FILE]
 *             [--sub ID TOKEN] [--feed]
 *
 * FILE has one device a line, "<id> <token> <kind>", kind q0 (MQTT QoS 0), q1 (MQTT
 * QoS 1) or line (line protocol, every message with "seq"). Each device publishes the
 * same 4-key message, a function of its message number k (0, 1, ...):
 *   {"ts":T,"values":{"n":k,"temp":15+(k%200)/10,"hum":(7k)%100,"bat":3+(k%1000)/1000}}
 * (the line protocol adds "seq":k), T the wall clock in ms, strictly increasing per
 * device, so every value can be queried back and checked.
 *
 * One thread, epoll. Clients connect at most CONNECT_IN_FLIGHT at a time (Gale counts
 * unauthenticated connections per address); once all are in (and the subscriber's
 * SUBACK and the feed's "subscribed"), it prints {"event":"ready"} and the clock starts.
 * The rate is paced, not flat out: message j of the run is due at t0 + j / rate and
 * goes to device j % N, so every device sends rate / N messages a second, spread
 * evenly. A device that cannot send (QoS 1 / line: W unacknowledged; QoS 0: 64 KiB not
 * yet written) owes its messages and sends them as soon as it can. At t0 + S nothing
 * new is sent (what is still owed is counted as not sent); then for at most --drain
 * seconds it waits for every ack, and for the PINGRESP of each QoS 0 publisher (Gale
 * has read all of it once it answers).
 *
 * --sub ID TOKEN: an application client subscribes "#" at QoS 0 and counts what it
 * receives. --feed: one /ws/live viewer (API key in the upgrade) subscribed to every
 * device, key "n" only, counts telemetry messages and reported drops.
 *
 * Output (stdout, one JSON object a line): each second of the run and drain
 *   {"sec":i,"sent":N,"sent_q0":..,"sent_q1":..,"sent_line":..,"acked_q1":..,
 *    "acked_line":..,"puback_p50_ms":..,"puback_p99_ms":..,"line_p50_ms":..,
 *    "line_p99_ms":..,"sub_rx":..,"feed_rx":..,"feed_dropped":..,"owed":..,"unacked":..,
 *    "late_ms":..}
 * (counts are of that second; owed and unacked are totals at its end; a p50/p99 is
 * null when that second had no ack; late_ms: how long after the second's end the row
 * was written, high when this process itself did not get the CPU), each minute of the
 * run {"minute":m,...} with that minute's ack quantiles (the last one with the drain's
 * acks), then one {"summary":...}. --acked FILE gets a line per device:
 * "<id> <kind> <sent> <acked ranges k-k,k-k or ->".
 * Latency quantiles come from a histogram with 2 % wide buckets.
 *
 * Exit 0 when the run completed (whatever was acked; soak.py judges), 1 when a
 * connection was refused or closed by the server, or a deadline passed while
 * connecting; 2 on bad usage. Loopback only; every phase has a deadline. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "protocols/mqtt/mqtt.h"
#include "protocols/websocket/ws.h"

#define CONNECT_IN_FLIGHT 100
#define CONNECT_TIMEOUT_S 60.0
#define OUT_HIGH_BYTES 65536 /* QoS 0: stop encoding while this much waits to be written */
#define KEEPALIVE_S 300      /* MQTT keep-alive asked for; the subscriber pings each 30 s */
#define SUB_PING_S 30.0
#define TICK_S 0.001   /* the pacing tick */
#define HIST_BASE 1.02 /* latency histogram: bucket i holds [1.02^i, 1.02^(i+1)) us */
#define HIST_N 1000    /* 1.02^1000 us is far beyond any deadline here */

enum kind { K_Q0, K_Q1, K_LINE, K_SUB, K_FEED };
static const char *const kind_name[] = {"q0", "q1", "line", "sub", "feed"};

enum state { S_IDLE, S_HANDSHAKE, S_READY, S_DONE };

struct client {
    int fd;
    enum kind kind;
    enum state state;
    char id[72];
    char token[136];
    struct buf out;      /* bytes not yet written */
    struct buf in;       /* bytes read, not yet decoded */
    bool pollout;        /* EPOLLOUT is registered */
    long sent;           /* messages sent; the next one is k = sent */
    long acked;          /* acks received (QoS 1, line) */
    long owed;           /* messages due by the schedule, not yet sent */
    long max_k;          /* messages this device may send in the run */
    int64_t last_ts;     /* ms of the last message sent */
    double *ring_t;      /* QoS 1 / line: send time (s) of unacked message k at k % window */
    uint8_t *acked_bits; /* bit k: message k was acknowledged */
    bool ping_sent;      /* QoS 0: the drain PINGREQ is out */
    bool pong;           /* QoS 0: its PINGRESP came */
    double next_ping;    /* subscriber: when to send the next PINGREQ */
    int ws_step;         /* feed: 0 upgrade sent, 1 101 read, 2 ready, 3 subscribed */
};

struct hist {
    uint64_t n;
    uint32_t b[HIST_N];
};

struct second {
    long sent[3], acked[3];
    long sub_rx, feed_rx, feed_dropped;
    struct hist puback, line;
};

static struct {
    int mqtt_port, line_port, http_port, window;
    const char *api_key, *devices_path, *acked_path, *sub_id, *sub_token;
    bool feed;
    double rate, seconds, drain;
    struct client *cl;
    int n;    /* clients in cl: devices, then the subscriber and the feed */
    int ndev; /* devices: cl[0..ndev) */
    int ep;
    double t0;
    long total, scheduled; /* messages in the run; messages handed out so far */
    bool running, stopped;
    struct second sec;
    struct hist min_puback, min_line, all_puback, all_line;
    long tot_sent[3], tot_acked[3], tot_sub_rx, tot_feed_rx, tot_feed_dropped, not_sent;
} g;

static const struct mqtt_limits lim = {0, MQTT_V311};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "soak_load: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static void hist_add(struct hist *h, double ms)
{
    double us = ms * 1000.0;
    int i = us < 1.0 ? 0 : (int)(log(us) / log(HIST_BASE));
    h->b[i < HIST_N ? i : HIST_N - 1]++;
    h->n++;
}

/* The q-quantile in ms (the upper edge of its bucket), or -1 without samples. */
static double hist_q(const struct hist *h, double q)
{
    uint64_t want, seen = 0;
    if (h->n == 0)
        return -1;
    want = (uint64_t)ceil(q * (double)h->n);
    if (want < 1)
        want = 1;
    for (int i = 0; i < HIST_N; i++) {
        seen += h->b[i];
        if (seen >= want)
            return pow(HIST_BASE, i + 1) / 1000.0;
    }
    return pow(HIST_BASE, HIST_N) / 1000.0;
}

static void lat_add(enum kind k, double ms)
{
    if (k == K_Q1) {
        hist_add(&g.sec.puback, ms);
        hist_add(&g.min_puback, ms);
        hist_add(&g.all_puback, ms);
    } else {
        hist_add(&g.sec.line, ms);
        hist_add(&g.min_line, ms);
        hist_add(&g.all_line, ms);
    }
}

/* Appends ,"name":<ms or null> to a report line. */
static void put_q(struct buf *b, const char *name, const struct hist *h, double q)
{
    double v = hist_q(h, q);
    if (v < 0)
        buf_printf(b, ",\"%s\":null", name);
    else
        buf_printf(b, ",\"%s\":%.3f", name, v);
}

static void emit(struct buf *b)
{
    buf_append_str(b, "}\n");
    fwrite(b->data, 1, b->len, stdout);
    fflush(stdout);
    b->len = 0;
}

/* ---- sockets ---- */

static void watch(struct client *c, bool want_out)
{
    struct epoll_event ev = {EPOLLIN | (want_out ? EPOLLOUT : 0), {.u32 = (uint32_t)(c - g.cl)}};
    if (want_out != c->pollout) {
        epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->pollout = want_out;
    }
}

static void lost(struct client *c, const char *why)
{
    fprintf(stderr, "soak_load: %s %s (%s): %s (sent %ld, acked %ld)\n", kind_name[c->kind], c->id,
            c->state == S_READY ? "running" : "connecting", why, c->sent, c->acked);
    exit(1);
}

static void flush(struct client *c)
{
    while (c->out.len) {
        ssize_t w = write(c->fd, c->out.data, c->out.len);
        if (w > 0) {
            buf_consume(&c->out, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        lost(c, strerror(errno));
    }
    watch(c, c->out.len > 0);
}

static int tcp_connect(int port)
{
    struct sockaddr_in a = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void ws_send(struct client *c, uint8_t op, const void *p, size_t n)
{
    uint8_t key[4] = {(uint8_t)rand(), (uint8_t)rand(), (uint8_t)rand(), (uint8_t)rand()};
    ws_encode_client_frame(&c->out, op, true, false, p, n, key);
}

/* Starts c's connection and its handshake. */
static void open_client(struct client *c)
{
    struct epoll_event ev = {EPOLLIN, {.u32 = (uint32_t)(c - g.cl)}};
    bool mqtt = c->kind == K_Q0 || c->kind == K_Q1 || c->kind == K_SUB;

    c->fd = tcp_connect(mqtt ? g.mqtt_port : c->kind == K_LINE ? g.line_port : g.http_port);
    epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = S_HANDSHAKE;
    if (mqtt) {
        struct mqtt_connect m = {0};
        m.clean_session = true;
        m.keepalive_s = KEEPALIVE_S;
        m.client_id = (struct mqtt_str){c->id, strlen(c->id)};
        m.has_username = m.has_password = true;
        m.username = m.client_id;
        m.password = (struct mqtt_bin){(const uint8_t *)c->token, strlen(c->token)};
        mqtt_encode_connect(&c->out, &m);
    } else if (c->kind == K_LINE) {
        buf_printf(&c->out, "{\"device\":\"%s\",\"token\":\"%s\"}\n", c->id, c->token);
    } else {
        buf_printf(&c->out,
                   "GET /ws/live HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: c29hay1mZWVkLXZpZXdlcg==\r\n"
                   "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
                   g.http_port, g.api_key);
    }
    flush(c);
}

/* ---- publishing ---- */

static bool can_send(const struct client *c)
{
    if (c->state != S_READY || c->sent >= c->max_k)
        return false;
    if (c->kind == K_Q0)
        return c->out.len < OUT_HIGH_BYTES;
    return c->sent - c->acked < g.window;
}

static void send_one(struct client *c, double now)
{
    char payload[192], topic[96];
    long k = c->sent;
    int64_t ts = wall_ms();
    int pl;

    if (ts <= c->last_ts)
        ts = c->last_ts + 1;
    c->last_ts = ts;
    pl = snprintf(payload, sizeof payload,
                  "{\"ts\":%lld,\"values\":{\"n\":%ld,\"temp\":%.1f,\"hum\":%ld,\"bat\":%.3f}",
                  (long long)ts, k, 15.0 + (double)(k % 200) / 10.0, (7 * k) % 100,
                  3.0 + (double)(k % 1000) / 1000.0);
    if (c->kind == K_LINE) {
        buf_printf(&c->out, "%.*s,\"seq\":%ld}\n", pl, payload, k);
    } else {
        int tl = snprintf(topic, sizeof topic, "devices/%s/telemetry", c->id);
        payload[pl++] = '}';
        mqtt_encode_publish(&c->out, topic, (size_t)tl, (const uint8_t *)payload, (size_t)pl,
                            c->kind == K_Q1 ? 1 : 0, false, false,
                            c->kind == K_Q1 ? (uint16_t)(k % 65535 + 1) : 0);
    }
    if (c->ring_t)
        c->ring_t[k % g.window] = now;
    c->sent++;
    g.sec.sent[c->kind]++;
    g.tot_sent[c->kind]++;
}

static void pump(struct client *c, double now)
{
    bool any = false;
    while (c->owed > 0 && !g.stopped && can_send(c)) {
        send_one(c, now);
        c->owed--;
        any = true;
    }
    if (any)
        flush(c);
}

static void on_ack(struct client *c, long k, double now)
{
    if (k < 0 || k >= c->sent || k < c->acked || k - c->acked >= g.window) {
        char why[96];
        snprintf(why, sizeof why, "unexpected ack %ld (acked %ld)", k, c->acked);
        lost(c, why);
    }
    /* acks come in the order the messages went (MQTT and line both promise it) */
    if (k != c->acked) {
        char why[96];
        snprintf(why, sizeof why, "ack %ld out of order (expected %ld)", k, c->acked);
        lost(c, why);
    }
    lat_add(c->kind, (now - c->ring_t[k % g.window]) * 1e3);
    c->acked_bits[k / 8] |= (uint8_t)(1u << (k % 8));
    c->acked++;
    g.sec.acked[c->kind]++;
    g.tot_acked[c->kind]++;
    pump(c, now);
}

/* ---- reading ---- */

static void on_mqtt(struct client *c, const struct mqtt_packet *p, double now)
{
    switch (p->type) {
    case MQTT_CONNACK:
        if (p->connack.rc != 0) {
            char why[48];
            snprintf(why, sizeof why, "CONNACK rc=%d", p->connack.rc);
            lost(c, why);
        }
        if (c->kind == K_SUB) {
            struct mqtt_sub_req req = {{"#", 1}, 0};
            mqtt_encode_subscribe(&c->out, 1, &req, 1);
            flush(c);
            c->next_ping = now + SUB_PING_S;
        } else {
            c->state = S_READY;
        }
        break;
    case MQTT_SUBACK:
        if (p->suback.count < 1 || p->suback.codes[0] == MQTT_SUBACK_FAILURE)
            lost(c, "subscription to # refused");
        c->state = S_READY;
        break;
    case MQTT_PUBACK:
        if (c->kind != K_Q1)
            lost(c, "PUBACK for a QoS 0 publisher");
        /* packet id k % 65535 + 1, and the window is far below 65535 */
        on_ack(c, c->acked + (long)((p->id - 1 - c->acked % 65535 + 65535) % 65535), now);
        break;
    case MQTT_PINGRESP:
        if (c->kind == K_Q0 && c->ping_sent)
            c->pong = true;
        break;
    case MQTT_PUBLISH:
        if (c->kind == K_SUB) {
            g.sec.sub_rx++;
            g.tot_sub_rx++;
        }
        break;
    default:
        break;
    }
}

static void on_line(struct client *c, char *s, double now)
{
    long v;
    if (c->state == S_HANDSHAKE) {
        if (strcmp(s, "{\"ok\":true}") != 0)
            lost(c, s);
        c->state = S_READY;
    } else if (sscanf(s, "{\"ack\":%ld}", &v) == 1) {
        on_ack(c, v, now);
    } else if (strncmp(s, "{\"command\"", 10) != 0) {
        lost(c, s);
    }
}

/* One complete feed frame (server frames are not masked). */
static void on_feed_frame(struct client *c, uint8_t op, const uint8_t *p, size_t n)
{
    static const char sub[] =
        "{\"subscribe\":{\"devices\":[\"*\"],\"keys\":[\"n\"],\"presence\":false}}";
    const uint8_t *d;

    if (op == WS_OP_PING) {
        ws_send(c, WS_OP_PONG, p, n);
        flush(c);
    } else if (op == WS_OP_CLOSE) {
        lost(c, "the feed sent a close frame");
    } else if (op == WS_OP_TEXT) {
        if (n >= 20 && memcmp(p, "{\"type\":\"telemetry\"", 19) == 0) {
            g.sec.feed_rx++;
            g.tot_feed_rx++;
        } else if ((d = memmem(p, n, "\"type\":\"dropped\",\"count\":", 25)) != NULL) {
            long cnt = strtol((const char *)d + 25, NULL, 10);
            g.sec.feed_dropped += cnt;
            g.tot_feed_dropped += cnt;
        } else if (c->ws_step == 1 && memmem(p, n, "\"ready\"", 7)) {
            c->ws_step = 2;
            ws_send(c, WS_OP_TEXT, sub, sizeof sub - 1);
            flush(c);
        } else if (c->ws_step == 2 && memmem(p, n, "\"subscribed\"", 12)) {
            c->ws_step = 3;
            c->state = S_READY;
        } else if (memmem(p, n, "\"error\"", 7)) {
            lost(c, "the feed answered an error");
        }
    }
}

/* Decodes what c has read; returns bytes used. */
static size_t decode(struct client *c, double now)
{
    uint8_t *p = c->in.data;
    size_t len = c->in.len, off = 0;

    if (c->kind == K_LINE) {
        uint8_t *nl;
        while ((nl = memchr(p + off, '\n', len - off)) != NULL) {
            *nl = '\0';
            on_line(c, (char *)p + off, now);
            off = (size_t)(nl - p) + 1;
        }
    } else if (c->kind == K_FEED) {
        if (c->ws_step == 0) {
            uint8_t *end = memmem(p, len, "\r\n\r\n", 4);
            if (!end)
                return 0;
            if (len < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0)
                lost(c, "the /ws/live upgrade was refused");
            c->ws_step = 1;
            off = (size_t)(end + 4 - p);
        }
        while (len - off >= 2) {
            uint8_t b0 = p[off], b1 = p[off + 1];
            size_t hl = 2, n = b1 & 0x7f;
            if (n == 126) {
                if (len - off < 4)
                    break;
                n = (size_t)p[off + 2] << 8 | p[off + 3];
                hl = 4;
            } else if (n == 127) {
                if (len - off < 10)
                    break;
                n = 0;
                for (int i = 0; i < 8; i++)
                    n = n << 8 | p[off + 2 + i];
                hl = 10;
            }
            if (len - off - hl < n)
                break;
            on_feed_frame(c, b0 & 0x0f, p + off + hl, n);
            off += hl + n;
        }
    } else {
        struct mqtt_packet pkt;
        size_t used;
        const char *why;
        enum codec_rc rc;
        while ((rc = mqtt_decode(&lim, p + off, len - off, &pkt, &used, &why)) == CODEC_FRAME) {
            off += used;
            on_mqtt(c, &pkt, now);
        }
        if (rc == CODEC_ERROR)
            lost(c, why);
    }
    return off;
}

static void on_readable(struct client *c, double now)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t r = read(c->fd, buf_reserve(&c->in, 65536), 65536);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0)
            lost(c, r == 0 ? "connection closed by the server" : strerror(errno));
        buf_commit(&c->in, (size_t)r);
        buf_consume(&c->in, decode(c, now));
        if (r < 65536)
            return;
    }
}

/* ---- the run ---- */

static void schedule(double now)
{
    long due;
    if (!g.running || g.stopped)
        return;
    due = (long)((now - g.t0) * g.rate);
    if (due > g.total)
        due = g.total;
    for (; g.scheduled < due; g.scheduled++) {
        struct client *c = &g.cl[g.scheduled % g.ndev];
        if (c->owed + c->sent < c->max_k)
            c->owed++;
        pump(c, now);
    }
}

static void report_second(long sec, double late_s)
{
    struct buf b;
    long owed = 0, unacked = 0;
    for (int i = 0; i < g.ndev; i++) {
        owed += g.cl[i].owed;
        if (g.cl[i].kind != K_Q0)
            unacked += g.cl[i].sent - g.cl[i].acked;
    }
    buf_init(&b);
    buf_printf(&b,
               "{\"sec\":%ld,\"phase\":\"%s\",\"sent\":%ld,\"sent_q0\":%ld,\"sent_q1\":%ld,"
               "\"sent_line\":%ld,\"acked_q1\":%ld,\"acked_line\":%ld",
               sec, g.stopped ? "drain" : "run",
               g.sec.sent[K_Q0] + g.sec.sent[K_Q1] + g.sec.sent[K_LINE], g.sec.sent[K_Q0],
               g.sec.sent[K_Q1], g.sec.sent[K_LINE], g.sec.acked[K_Q1], g.sec.acked[K_LINE]);
    put_q(&b, "puback_p50_ms", &g.sec.puback, 0.5);
    put_q(&b, "puback_p99_ms", &g.sec.puback, 0.99);
    put_q(&b, "line_p50_ms", &g.sec.line, 0.5);
    put_q(&b, "line_p99_ms", &g.sec.line, 0.99);
    buf_printf(&b,
               ",\"sub_rx\":%ld,\"feed_rx\":%ld,\"feed_dropped\":%ld,\"owed\":%ld,"
               "\"unacked\":%ld,\"late_ms\":%.0f",
               g.sec.sub_rx, g.sec.feed_rx, g.sec.feed_dropped, owed, unacked, late_s * 1e3);
    emit(&b);
    buf_fini(&b);
    memset(&g.sec, 0, sizeof g.sec);
}

static void report_minute(long m)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{\"minute\":%ld,\"puback_n\":%llu,\"line_n\":%llu", m,
               (unsigned long long)g.min_puback.n, (unsigned long long)g.min_line.n);
    put_q(&b, "puback_p50_ms", &g.min_puback, 0.5);
    put_q(&b, "puback_p99_ms", &g.min_puback, 0.99);
    put_q(&b, "line_p50_ms", &g.min_line, 0.5);
    put_q(&b, "line_p99_ms", &g.min_line, 0.99);
    emit(&b);
    buf_fini(&b);
    memset(&g.min_puback, 0, sizeof g.min_puback);
    memset(&g.min_line, 0, sizeof g.min_line);
}

static bool drained(void)
{
    for (int i = 0; i < g.ndev; i++) {
        const struct client *c = &g.cl[i];
        if (c->kind == K_Q0 ? !c->pong : c->acked < c->sent)
            return false;
    }
    return true;
}

static void write_acked(void)
{
    FILE *f = fopen(g.acked_path, "w");
    if (!f)
        die("cannot write %s", g.acked_path);
    for (int i = 0; i < g.ndev; i++) {
        const struct client *c = &g.cl[i];
        bool first = true;
        fprintf(f, "%s %s %ld ", c->id, kind_name[c->kind], c->sent);
        for (long k = 0; k < c->sent && c->kind != K_Q0; k++) {
            long e;
            if (!(c->acked_bits[k / 8] & (1u << (k % 8))))
                continue;
            for (e = k; e + 1 < c->sent && (c->acked_bits[(e + 1) / 8] & (1u << ((e + 1) % 8)));
                 e++)
                ;
            fprintf(f, "%s%ld-%ld", first ? "" : ",", k, e);
            first = false;
            k = e;
        }
        fprintf(f, "%s\n", first ? "-" : "");
    }
    if (fclose(f) != 0)
        die("cannot write %s", g.acked_path);
}

static void load_devices(void)
{
    FILE *f = fopen(g.devices_path, "r");
    char id[72], token[136], kind[8];
    int cap = 1024;

    if (!f)
        die("cannot read %s", g.devices_path);
    g.cl = calloc((size_t)cap + 2, sizeof *g.cl);
    while (g.cl && fscanf(f, "%71s %135s %7s", id, token, kind) == 3) {
        struct client *c;
        if (g.ndev == cap) {
            cap *= 2;
            g.cl = realloc(g.cl, ((size_t)cap + 2) * sizeof *g.cl);
            if (!g.cl)
                break;
        }
        c = &g.cl[g.ndev++];
        memset(c, 0, sizeof *c);
        snprintf(c->id, sizeof c->id, "%s", id);
        snprintf(c->token, sizeof c->token, "%s", token);
        if (strcmp(kind, "q0") == 0)
            c->kind = K_Q0;
        else if (strcmp(kind, "q1") == 0)
            c->kind = K_Q1;
        else if (strcmp(kind, "line") == 0)
            c->kind = K_LINE;
        else
            die("unknown device kind %s", kind);
    }
    fclose(f);
    if (!g.cl)
        die("%s", "out of memory");
    if (g.ndev == 0)
        die("no devices in %s", g.devices_path);
}

static void usage(void)
{
    fprintf(stderr, "usage: soak_load --mqtt-port P --line-port P --http-port P --api-key KEY "
                    "--devices FILE --rate R --seconds S [--drain S] [--window W] "
                    "[--acked FILE] [--sub ID TOKEN] [--feed]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    g.window = 64;
    g.drain = 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (strcmp(a, "--feed") == 0)
            g.feed = true;
        else if (strcmp(a, "--sub") == 0 && i + 2 < argc) {
            g.sub_id = argv[++i];
            g.sub_token = argv[++i];
        } else if (!more)
            usage();
        else if (strcmp(a, "--mqtt-port") == 0)
            g.mqtt_port = atoi(argv[++i]);
        else if (strcmp(a, "--line-port") == 0)
            g.line_port = atoi(argv[++i]);
        else if (strcmp(a, "--http-port") == 0)
            g.http_port = atoi(argv[++i]);
        else if (strcmp(a, "--api-key") == 0)
            g.api_key = argv[++i];
        else if (strcmp(a, "--devices") == 0)
            g.devices_path = argv[++i];
        else if (strcmp(a, "--acked") == 0)
            g.acked_path = argv[++i];
        else if (strcmp(a, "--rate") == 0)
            g.rate = atof(argv[++i]);
        else if (strcmp(a, "--seconds") == 0)
            g.seconds = atof(argv[++i]);
        else if (strcmp(a, "--drain") == 0)
            g.drain = atof(argv[++i]);
        else if (strcmp(a, "--window") == 0)
            g.window = atoi(argv[++i]);
        else
            usage();
    }
    if (g.mqtt_port <= 0 || g.line_port <= 0 || !g.devices_path || g.rate <= 0 || g.seconds <= 0 ||
        g.drain < 0 || g.window < 1 || g.window > 1000 ||
        (g.feed && (g.http_port <= 0 || !g.api_key)))
        usage();
}

int main(int argc, char **argv)
{
    struct rlimit rl;
    struct epoll_event evs[256];
    double deadline, next_sec = 0, t_stop = 0;
    long sec = 0, minute = 0;
    int opened = 0;

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    load_devices();
    g.n = g.ndev;
    if (g.sub_id) {
        struct client *c = &g.cl[g.n++];
        memset(c, 0, sizeof *c);
        c->kind = K_SUB;
        snprintf(c->id, sizeof c->id, "%s", g.sub_id);
        snprintf(c->token, sizeof c->token, "%s", g.sub_token);
    }
    if (g.feed) {
        struct client *c = &g.cl[g.n++];
        memset(c, 0, sizeof *c);
        c->kind = K_FEED;
        snprintf(c->id, sizeof c->id, "ws-live");
    }
    g.total = (long)(g.rate * g.seconds);
    for (int i = 0; i < g.ndev; i++) {
        struct client *c = &g.cl[i];
        c->max_k = g.total / g.ndev + 1;
        c->acked_bits = calloc((size_t)c->max_k / 8 + 1, 1);
        if (c->kind != K_Q0)
            c->ring_t = calloc((size_t)g.window, sizeof *c->ring_t);
        if (!c->acked_bits || (c->kind != K_Q0 && !c->ring_t))
            die("%s", "out of memory");
    }
    if ((g.ep = epoll_create1(0)) < 0)
        die("epoll: %s", strerror(errno));

    deadline = now_s() + CONNECT_TIMEOUT_S;
    for (;;) {
        double now = now_s(), wait_s;
        int ready = 0, in_flight = 0, nev;

        for (int i = 0; i < opened && !g.running; i++) {
            ready += g.cl[i].state == S_READY;
            in_flight += g.cl[i].state == S_HANDSHAKE;
        }
        if (!g.running && ready == g.n) {
            g.running = true;
            g.t0 = now;
            next_sec = now + 1;
            deadline = now + g.seconds + g.drain + 1;
            printf("{\"event\":\"ready\",\"clients\":%d}\n", g.n);
            fflush(stdout);
        }
        while (!g.running && opened < g.n && in_flight < CONNECT_IN_FLIGHT) {
            open_client(&g.cl[opened++]);
            in_flight++;
        }
        if (now > deadline) {
            if (!g.running) {
                fprintf(stderr, "soak_load: only %d of %d clients connected within %.0f s\n", ready,
                        g.n, CONNECT_TIMEOUT_S);
                return 1;
            }
            break; /* the drain is over, whatever is still missing */
        }
        schedule(now);
        /* one row per second of the clock: after a stall of this process the rows it
         * missed follow at once (the counts in the first), each saying how late it is */
        while (g.running && now >= next_sec) {
            report_second(sec++, now - next_sec);
            next_sec += 1;
            /* the last minute of the run takes the drain's acks with it */
            if (!g.stopped && sec % 60 == 0 && (double)sec < g.seconds)
                report_minute(minute++);
        }
        if (g.running && !g.stopped && now - g.t0 >= g.seconds) {
            g.stopped = true;
            t_stop = now;
            for (int i = 0; i < g.ndev; i++) {
                struct client *c = &g.cl[i];
                g.not_sent += c->owed;
                c->owed = 0;
                if (c->kind == K_Q0) {
                    mqtt_encode_pingreq(&c->out);
                    c->ping_sent = true;
                    flush(c);
                }
            }
            g.not_sent += g.total - g.scheduled;
        }
        if (g.stopped && drained())
            break;
        for (int i = g.ndev; i < g.n; i++) {
            struct client *c = &g.cl[i];
            if (c->kind == K_SUB && c->state == S_READY && now >= c->next_ping) {
                mqtt_encode_pingreq(&c->out);
                flush(c);
                c->next_ping = now + SUB_PING_S;
            }
        }
        wait_s = g.running ? TICK_S : 0.05;
        nev = epoll_wait(g.ep, evs, 256, (int)ceil(wait_s * 1000));
        now = now_s();
        for (int e = 0; e < nev; e++) {
            struct client *c = &g.cl[evs[e].data.u32];
            if (evs[e].events & EPOLLOUT)
                flush(c);
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c, now);
        }
    }
    report_second(sec++, 0);
    if (minute == 0 || g.min_puback.n + g.min_line.n > 0)
        report_minute(minute++); /* the last, partial minute (acks of the drain included) */
    {
        long sent = g.tot_sent[K_Q0] + g.tot_sent[K_Q1] + g.tot_sent[K_LINE];
        long q0_unread = 0;
        struct rusage ru;
        struct buf b;
        for (int i = 0; i < g.ndev; i++)
            q0_unread += g.cl[i].kind == K_Q0 && !g.cl[i].pong;
        buf_init(&b);
        buf_printf(&b,
                   "{\"summary\":true,\"devices\":%d,\"seconds\":%.3f,\"drain_s\":%.3f,"
                   "\"target\":%ld,\"sent\":%ld,\"not_sent\":%ld,\"rate\":%.1f,"
                   "\"sent_q0\":%ld,\"sent_q1\":%ld,\"sent_line\":%ld,\"acked_q1\":%ld,"
                   "\"acked_line\":%ld,\"unacked\":%ld,\"q0_unconfirmed_devices\":%ld,"
                   "\"sub_rx\":%ld,\"feed_rx\":%ld,\"feed_dropped\":%ld",
                   g.ndev, t_stop - g.t0, now_s() - t_stop, g.total, sent, g.not_sent,
                   (double)sent / (t_stop - g.t0), g.tot_sent[K_Q0], g.tot_sent[K_Q1],
                   g.tot_sent[K_LINE], g.tot_acked[K_Q1], g.tot_acked[K_LINE],
                   g.tot_sent[K_Q1] + g.tot_sent[K_LINE] - g.tot_acked[K_Q1] - g.tot_acked[K_LINE],
                   q0_unread, g.tot_sub_rx, g.tot_feed_rx, g.tot_feed_dropped);
        put_q(&b, "puback_p50_ms", &g.all_puback, 0.5);
        put_q(&b, "puback_p99_ms", &g.all_puback, 0.99);
        put_q(&b, "line_p50_ms", &g.all_line, 0.5);
        put_q(&b, "line_p99_ms", &g.all_line, 0.99);
        if (getrusage(RUSAGE_SELF, &ru) == 0)
            buf_printf(&b, ",\"cpu_s\":%.2f",
                       (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
        emit(&b);
        buf_fini(&b);
    }
    if (g.acked_path)
        write_acked();
    for (int i = 0; i < g.n; i++) {
        if (g.cl[i].state != S_IDLE)
            close(g.cl[i].fd);
        buf_fini(&g.cl[i].out);
        buf_fini(&g.cl[i].in);
        free(g.cl[i].ring_t);
        free(g.cl[i].acked_bits);
    }
    free(g.cl);
    close(g.ep);
    return 0;
}
