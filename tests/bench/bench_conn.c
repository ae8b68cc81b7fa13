/* tests/bench/bench_conn.c: MQTT connection setup rate and idle connections, against
 * any MQTT 3.1.1 server (Gale or Mosquitto).
 *
 *   bench_conn PORT N INFLIGHT [--hold-seconds S]
 *
 * Opens N MQTT connections (client id idle-<i>, clean session, keep-alive 300 s, no
 * credentials), with at most INFLIGHT handshakes (TCP connect + CONNECT + CONNACK) in
 * flight at once, and prints
 *   conn n=<N> inflight=<K> seconds=<s> connects_per_s=<r>
 * when every CONNACK is in. Then it holds the connections idle, so the caller can
 * measure the server's memory, until a line (or EOF) arrives on stdin or S seconds
 * (default 60) pass, and prints
 *   held n=<N> closed_by_server=<c>
 * before closing them all with a reset (no TIME_WAIT left behind).
 * RLIMIT_NOFILE is raised up to the hard limit, never past it; N must fit under it.
 * Bounded: connecting gives up after 60 s. Loopback only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
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

#define CONNECT_TIMEOUT_S 60
#define FD_RESERVE 16 /* stdio, epoll and a margin */

enum stage { STAGE_CONNECTING, STAGE_WAIT_CONNACK, STAGE_DONE };

struct conn {
    int fd;
    enum stage stage;
    unsigned char in[4]; /* CONNACK is exactly 4 bytes */
    size_t in_len;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(int i, const char *what)
{
    fprintf(stderr, "bench_conn: connection %d: %s: %s\n", i, what, strerror(errno));
    exit(1);
}

static void start_connect(struct conn *c, int i, int ep, int port)
{
    struct sockaddr_in a = {0};
    struct epoll_event ev = {0};
    int one = 1;

    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        fail(i, "socket");
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS)
        fail(i, "connect");
    c->stage = STAGE_CONNECTING;
    ev.events = EPOLLOUT;
    ev.data.u32 = (uint32_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        fail(i, "epoll_ctl");
}

static void send_connect(struct conn *c, int i, int ep)
{
    struct mqtt_connect m = {0};
    struct epoll_event ev = {0};
    struct buf out;
    char id[32];
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        errno = err;
        fail(i, "connect");
    }
    snprintf(id, sizeof id, "idle-%d", i);
    m.clean_session = true;
    m.keepalive_s = 300;
    m.client_id = (struct mqtt_str){id, strlen(id)};
    buf_init(&out);
    mqtt_encode_connect(&out, &m);
    /* a fresh socket's send buffer takes a CONNECT of a few dozen bytes whole */
    if (write(c->fd, out.data, out.len) != (ssize_t)out.len)
        fail(i, "write CONNECT");
    buf_fini(&out);
    c->stage = STAGE_WAIT_CONNACK;
    ev.events = EPOLLIN;
    ev.data.u32 = (uint32_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        fail(i, "epoll_ctl");
}

/* Returns 1 once the CONNACK is complete and accepted. */
static int read_connack(struct conn *c, int i, int ep)
{
    ssize_t r = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);

    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0)
        fail(i, r == 0 ? "closed before CONNACK" : "read");
    c->in_len += (size_t)r;
    if (c->in_len < sizeof c->in)
        return 0;
    if (c->in[0] != 0x20 || c->in[1] != 2 || c->in[3] != 0) {
        fprintf(stderr, "bench_conn: connection %d: refused (CONNACK %02x %02x %02x %02x)\n", i,
                c->in[0], c->in[1], c->in[2], c->in[3]);
        exit(1);
    }
    c->stage = STAGE_DONE;
    /* idle from now on: nothing more to wait for */
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    return 1;
}

/* Waits for a line or EOF on stdin, or hold_s seconds. */
static void hold(double hold_s)
{
    struct pollfd p = {STDIN_FILENO, POLLIN, 0};
    char line[64];

    if (poll(&p, 1, (int)(hold_s * 1000)) > 0)
        (void)!read(STDIN_FILENO, line, sizeof line);
}

/* Connections the server closed while they were idle. */
static int count_closed(const struct conn *cs, int n)
{
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    int closed = 0;

    if (!p)
        return -1;
    for (int i = 0; i < n; i++) {
        p[i].fd = cs[i].fd;
        p[i].events = POLLIN;
    }
    poll(p, (nfds_t)n, 0);
    for (int i = 0; i < n; i++)
        closed += (p[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
    free(p);
    return closed;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s PORT N INFLIGHT [--hold-seconds S]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    struct epoll_event evs[256];
    struct rlimit rl;
    struct linger lg = {1, 0};
    struct conn *cs;
    int port, n, inflight, started = 0, active = 0, done = 0, ep;
    double hold_s = 60, t0, secs;

    if (argc != 4 && !(argc == 6 && strcmp(argv[4], "--hold-seconds") == 0))
        usage(argv[0]);
    port = atoi(argv[1]);
    n = atoi(argv[2]);
    inflight = atoi(argv[3]);
    if (argc == 6)
        hold_s = atof(argv[5]);
    if (port <= 0 || n < 1 || inflight < 1 || hold_s < 0)
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        fail(-1, "getrlimit");
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)n + FD_RESERVE > rl.rlim_cur) {
        fprintf(stderr, "bench_conn: %d connections need more than the open-file limit %lu\n", n,
                (unsigned long)rl.rlim_cur);
        return 2;
    }
    cs = calloc((size_t)n, sizeof *cs);
    ep = epoll_create1(0);
    if (!cs || ep < 0)
        fail(-1, "setup");
    t0 = now_s();
    while (done < n) {
        int k;

        while (started < n && active < inflight) {
            start_connect(&cs[started], started, ep, port);
            started++;
            active++;
        }
        if (now_s() - t0 > CONNECT_TIMEOUT_S) {
            fprintf(stderr, "bench_conn: timed out: %d of %d connected\n", done, n);
            return 1;
        }
        k = epoll_wait(ep, evs, 256, 1000);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u32;
            struct conn *c = &cs[i];
            if (c->stage == STAGE_CONNECTING)
                send_connect(c, i, ep);
            else if (c->stage == STAGE_WAIT_CONNACK && read_connack(c, i, ep)) {
                done++;
                active--;
            }
        }
    }
    secs = now_s() - t0;
    printf("conn n=%d inflight=%d seconds=%.3f connects_per_s=%.0f\n", n, inflight, secs,
           (double)n / secs);
    fflush(stdout);
    hold(hold_s);
    printf("held n=%d closed_by_server=%d\n", n, count_closed(cs, n));
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        setsockopt(cs[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(cs[i].fd);
    }
    close(ep);
    free(cs);
    return 0;
}
