/* tests/bench/bench_feed.c: live-feed fan-out load generator and meter.
 *
 * One process plays both ends of a dashboard broadcast:
 *   - a publisher thread opens one WebSocket to the ingest path (Gale's /ws/device,
 *     or the Tornado server's equivalent) and sends {"t":<send time, monotonic us>}
 *     text frames at --rate messages/s for --seconds, paced against a schedule;
 *   - the main thread holds --viewers WebSocket connections to the live path, sends
 *     each a {"subscribe":{}} message, and reads every frame with epoll. For each
 *     telemetry frame it finds the "t" point's value and records receive time minus
 *     send time in a histogram (10 us buckets).
 * After the publisher stops, reading goes on until every expected frame arrived or
 * --grace seconds passed. Prints one JSON line: frames sent, expected and received,
 * delivered frames/s (received / (last receive - first send)), p50/p99/max latency.
 *
 * Server frames are parsed here (they are unmasked, which Gale's decoder refuses);
 * client frames are built with Gale's encoder and the accept key checked with its
 * handshake code (gale_websocket). Loopback only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "protocols/websocket/ws.h"

#define BUCKET_US 10
#define NBUCKETS 2000000 /* 20 s of 10 us buckets; later arrivals go in the last one */

struct viewer {
    int fd;
    uint8_t *buf; /* unparsed bytes */
    size_t len, cap;
};

static int port = 0;
static int nviewers = 1000, rate = 1000, seconds = 10, grace = 5;
static const char *ingest_path = "/ws/device";
static const char *live_path = "/ws/live";
static const char *subscribe_msg = "{\"subscribe\":{}}";

static volatile int pub_done;
static volatile uint64_t pub_first_us, pub_sent;
static uint32_t *hist;
static uint64_t received, other_frames, last_recv_us;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_feed: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write");
        c += w;
        n -= (size_t)w;
    }
}

/* Connects and upgrades; returns the fd (blocking). Leftover bytes after the 101
 * go to *extra (caller frees). */
static int ws_connect(const char *path, uint8_t **extra, size_t *extra_len)
{
    struct sockaddr_in a = {0};
    char req[1024], resp[4096], expect[29];
    uint8_t raw[16];
    char key[32];
    size_t got = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    if (fd < 0)
        die("socket");
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < 16; i++)
        raw[i] = (uint8_t)rand();
    for (int i = 0, o = 0; i < 16; i += 3) { /* base64 of 16 bytes: 24 chars */
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < 16 ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < 16 ? raw[i + 2] : 0);
        key[o++] = b64[(v >> 18) & 63];
        key[o++] = b64[(v >> 12) & 63];
        key[o++] = i + 1 < 16 ? b64[(v >> 6) & 63] : '=';
        key[o++] = i + 2 < 16 ? b64[v & 63] : '=';
        key[o] = '\0';
    }
    snprintf(req, sizeof req,
             "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
             path, port, key);
    write_all(fd, req, strlen(req));
    for (;;) {
        ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
        char *end;
        if (r <= 0)
            die("handshake read");
        got += (size_t)r;
        resp[got] = '\0';
        if ((end = strstr(resp, "\r\n\r\n")) != NULL) {
            size_t head = (size_t)(end + 4 - resp);
            ws_accept_key(key, strlen(key), expect);
            if (strncmp(resp, "HTTP/1.1 101", 12) != 0 || !strstr(resp, expect)) {
                fprintf(stderr, "bench_feed: upgrade refused on %s:\n%s\n", path, resp);
                exit(1);
            }
            *extra_len = got - head;
            *extra = malloc(*extra_len + 1);
            memcpy(*extra, resp + head, *extra_len);
            return fd;
        }
        if (got == sizeof resp - 1) {
            fprintf(stderr, "bench_feed: handshake response too long\n");
            exit(1);
        }
    }
}

static void send_text(int fd, const char *s)
{
    struct buf b;
    uint8_t key[4] = {(uint8_t)rand(), (uint8_t)rand(), (uint8_t)rand(), (uint8_t)rand()};
    buf_init(&b);
    ws_encode_client_frame(&b, WS_OP_TEXT, true, false, s, strlen(s), key);
    write_all(fd, b.data, b.len);
    buf_fini(&b);
}

static void *publisher(void *arg)
{
    uint8_t *extra;
    size_t extra_len;
    int fd = ws_connect(ingest_path, &extra, &extra_len);
    uint64_t total = (uint64_t)rate * (uint64_t)seconds, start;
    char msg[64];
    (void)arg;
    free(extra);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); /* replies are read and dropped */
    start = now_us();
    pub_first_us = start;
    for (uint64_t i = 0; i < total; i++) {
        uint64_t due = start + i * 1000000u / (uint64_t)rate, t;
        char sink[4096];
        while ((t = now_us()) < due) {
            struct timespec ts = {0, (long)((due - t) * 1000)};
            nanosleep(&ts, NULL);
        }
        snprintf(msg, sizeof msg, "{\"t\":%llu}", (unsigned long long)now_us());
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        send_text(fd, msg);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        while (read(fd, sink, sizeof sink) > 0)
            ;
        pub_sent = i + 1;
    }
    pub_done = 1;
    return NULL;
}

/* A server frame's payload: find the "t" point and record its latency. */
static void on_payload(const uint8_t *p, size_t n, uint64_t t_recv)
{
    static const char k[] = "\"key\":\"t\"";
    const uint8_t *q = memmem(p, n, k, sizeof k - 1), *v;
    uint64_t sent = 0, lat;
    if (!q) {
        other_frames++;
        return;
    }
    v = memmem(q, n - (size_t)(q - p), "\"value\":", 8);
    if (!v) {
        other_frames++;
        return;
    }
    for (v += 8; v < p + n && *v >= '0' && *v <= '9'; v++)
        sent = sent * 10 + (uint64_t)(*v - '0');
    lat = t_recv > sent ? t_recv - sent : 0;
    lat /= BUCKET_US;
    hist[lat < NBUCKETS ? lat : NBUCKETS - 1]++;
    received++;
    last_recv_us = t_recv;
}

static void parse(struct viewer *v, uint64_t t)
{
    size_t off = 0;
    while (v->len - off >= 2) {
        const uint8_t *h = v->buf + off;
        uint64_t n = h[1] & 0x7f;
        size_t hl = 2;
        if (n == 126) {
            if (v->len - off < 4)
                break;
            n = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (n == 127) {
            if (v->len - off < 10)
                break;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | h[2 + i];
            hl = 10;
        }
        if (v->len - off < hl + n)
            break;
        if ((h[0] & 0x0f) == WS_OP_TEXT)
            on_payload(h + hl, (size_t)n, t);
        else if ((h[0] & 0x0f) == WS_OP_PING) { /* answer: keep the feed alive */
            struct buf b;
            uint8_t key[4] = {1, 2, 3, 4};
            buf_init(&b);
            ws_encode_client_frame(&b, WS_OP_PONG, true, false, h + hl, (size_t)n, key);
            if (write(v->fd, b.data, b.len) < 0)
                (void)0;
            buf_fini(&b);
        }
        off += hl + (size_t)n;
    }
    memmove(v->buf, v->buf + off, v->len - off);
    v->len -= off;
}

static double pct(double p)
{
    uint64_t want = (uint64_t)(p * (double)received), acc = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        acc += hist[i];
        if (acc > want)
            return (double)(i * BUCKET_US) / 1000.0;
    }
    return (double)NBUCKETS * BUCKET_US / 1000.0;
}

int main(int argc, char **argv)
{
    struct viewer *vs;
    struct epoll_event evs[256];
    pthread_t pub;
    int ep;
    uint64_t deadline = 0, expected;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--viewers"))
            nviewers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate"))
            rate = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--grace"))
            grace = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ingest-path"))
            ingest_path = argv[i + 1];
        else if (!strcmp(argv[i], "--live-path"))
            live_path = argv[i + 1];
        else if (!strcmp(argv[i], "--subscribe"))
            subscribe_msg = argv[i + 1];
        else {
            fprintf(stderr, "usage: bench_feed --port P [--viewers N] [--rate R] [--seconds S] "
                            "[--grace G] [--ingest-path P] [--live-path P] [--subscribe JSON]\n");
            return 2;
        }
    }
    if (port <= 0) {
        fprintf(stderr, "bench_feed: --port is required\n");
        return 2;
    }
    hist = calloc(NBUCKETS, sizeof *hist);
    vs = calloc((size_t)nviewers, sizeof *vs);
    ep = epoll_create1(0);
    for (int i = 0; i < nviewers; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &vs[i]};
        uint8_t *extra;
        size_t extra_len;
        vs[i].fd = ws_connect(live_path, &extra, &extra_len);
        vs[i].cap = 1 << 16;
        vs[i].buf = malloc(vs[i].cap);
        memcpy(vs[i].buf, extra, extra_len);
        vs[i].len = extra_len;
        free(extra);
        send_text(vs[i].fd, subscribe_msg);
        fcntl(vs[i].fd, F_SETFL, fcntl(vs[i].fd, F_GETFL) | O_NONBLOCK);
        if (epoll_ctl(ep, EPOLL_CTL_ADD, vs[i].fd, &e) != 0)
            die("epoll_ctl");
    }
    /* let every subscription land before the first message */
    for (uint64_t until = now_us() + 1000000; now_us() < until;) {
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            struct viewer *v = evs[i].data.ptr;
            ssize_t r = read(v->fd, v->buf + v->len, v->cap - v->len);
            if (r > 0) {
                v->len += (size_t)r;
                parse(v, now_us());
            }
        }
    }
    other_frames = 0;
    pthread_create(&pub, NULL, publisher, NULL);
    expected = (uint64_t)rate * (uint64_t)seconds * (uint64_t)nviewers;
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 100);
        uint64_t t = now_us();
        for (int i = 0; i < n; i++) {
            struct viewer *v = evs[i].data.ptr;
            for (;;) {
                ssize_t r;
                if (v->cap - v->len < 16384) {
                    v->cap *= 2;
                    v->buf = realloc(v->buf, v->cap);
                }
                r = read(v->fd, v->buf + v->len, v->cap - v->len);
                if (r <= 0) {
                    if (r == 0) {
                        fprintf(stderr, "bench_feed: viewer closed by server\n");
                        epoll_ctl(ep, EPOLL_CTL_DEL, v->fd, NULL);
                    }
                    break;
                }
                v->len += (size_t)r;
                parse(v, t);
                if ((size_t)r < 16384)
                    break;
            }
        }
        if (pub_done && !deadline)
            deadline = now_us() + (uint64_t)grace * 1000000u;
        if (deadline && (received >= expected || now_us() >= deadline))
            break;
    }
    pthread_join(pub, NULL);
    {
        double span = (double)(last_recv_us - pub_first_us) / 1e6;
        printf("{\"viewers\":%d,\"rate\":%d,\"seconds\":%d,\"sent\":%llu,\"expected\":%llu,"
               "\"received\":%llu,\"fraction\":%.4f,\"delivered_per_s\":%.0f,\"p50_ms\":%.2f,"
               "\"p99_ms\":%.2f,\"max_ms\":%.2f,\"other_frames\":%llu}\n",
               nviewers, rate, seconds, (unsigned long long)pub_sent, (unsigned long long)expected,
               (unsigned long long)received, expected ? (double)received / (double)expected : 0.0,
               span > 0 ? (double)received / span : 0.0, pct(0.50), pct(0.99), pct(1.0 - 1e-12),
               (unsigned long long)other_frames);
    }
    return 0;
}
