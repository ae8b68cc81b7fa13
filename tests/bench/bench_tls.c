/* tests/bench/bench_tls.c: TLS handshakes per second against a server on loopback.
 *
 *   bench_tls PORT CAFILE [--inflight K] [--seconds S]
 *
 * Keeps K full handshakes in flight (non-blocking sockets, one poll loop, no session
 * resumption: every connection is a new session), closes each connection as soon as its
 * handshake completes, and prints one line:
 *   tls handshakes=N seconds=S handshakes_per_s=R failures=F
 * Run by tests/bench/run.py against Gale's MQTT TLS port and `openssl s_server`. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define INFLIGHT_MAX 256

struct slot {
    int fd;     /* -1: free */
    SSL *ssl;
    bool connected; /* TCP connect finished */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void slot_close(struct slot *s)
{
    SSL_free(s->ssl);
    close(s->fd);
    s->ssl = NULL;
    s->fd = -1;
}

static void slot_open(struct slot *s, SSL_CTX *ctx, int port)
{
    struct sockaddr_in a = {0};
    int one = 1;

    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd < 0) {
        perror("bench_tls: socket");
        exit(1);
    }
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
    s->connected = connect(s->fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (!s->connected && errno != EINPROGRESS) {
        perror("bench_tls: connect");
        exit(1);
    }
    s->ssl = SSL_new(ctx);
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_tlsext_host_name(s->ssl, "localhost");
    SSL_set1_host(s->ssl, "localhost");
}

/* Advances one handshake: 1 done, 0 in progress (*events set), -1 failed. */
static int step(struct slot *s, short *events)
{
    int rc = SSL_connect(s->ssl), e;
    if (rc == 1)
        return 1;
    e = SSL_get_error(s->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        *events = POLLIN;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *events = POLLOUT;
        return 0;
    }
    ERR_clear_error();
    return -1;
}

int main(int argc, char **argv)
{
    struct slot slots[INFLIGHT_MAX];
    struct pollfd pfd[INFLIGHT_MAX];
    int port, inflight = 8;
    double seconds = 3, t0, end;
    long done = 0, failures = 0;
    SSL_CTX *ctx;

    if (argc < 3)
        goto usage;
    port = atoi(argv[1]);
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--inflight") == 0)
            inflight = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else
            goto usage;
    }
    if (port <= 0 || inflight < 1 || inflight > INFLIGHT_MAX || seconds <= 0)
        goto usage;
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_load_verify_locations(ctx, argv[2], NULL) != 1) {
        fprintf(stderr, "bench_tls: cannot load CA file %s\n", argv[2]);
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* full handshakes only */
    for (int i = 0; i < inflight; i++)
        slot_open(&slots[i], ctx, port);
    for (int i = 0; i < inflight; i++)
        pfd[i] = (struct pollfd){slots[i].fd, POLLOUT, 0};
    t0 = now_s();
    end = t0 + seconds;
    while (now_s() < end) {
        if (poll(pfd, (nfds_t)inflight, 100) < 0 && errno != EINTR) {
            perror("bench_tls: poll");
            return 1;
        }
        for (int i = 0; i < inflight; i++) {
            short ev = POLLOUT;
            int rc;
            if (!pfd[i].revents)
                continue;
            slots[i].connected = true; /* a refused connect fails in SSL_connect */
            while ((rc = slots[i].connected ? step(&slots[i], &ev) : 0) != 0) {
                /* finished (or failed): the slot starts a new handshake */
                if (rc > 0)
                    done++;
                else if (++failures > 100) {
                    fprintf(stderr, "bench_tls: more than 100 handshakes failed\n");
                    return 1;
                }
                slot_close(&slots[i]);
                slot_open(&slots[i], ctx, port);
                ev = POLLOUT;
            }
            pfd[i] = (struct pollfd){slots[i].fd, ev, 0};
        }
    }
    printf("tls handshakes=%ld seconds=%.3f handshakes_per_s=%.0f failures=%ld\n", done,
           now_s() - t0, (double)done / (now_s() - t0), failures);
    for (int i = 0; i < inflight; i++)
        slot_close(&slots[i]);
    SSL_CTX_free(ctx);
    return 0;
usage:
    fprintf(stderr, "usage: %s PORT CAFILE [--inflight K] [--seconds S]\n", argv[0]);
    return 2;
}
