/* tests/bench/bench_line.c: one device streaming telemetry lines over the raw TCP
 * line protocol, every line carrying "seq"; measures lines/s from the first byte
 * sent until the last {"ack":N} (every line durable in SQLite).
 *
 *   bench_line PORT DEVICE TOKEN [N]
 *
 * Prints one line: "line N=<n> seconds=<s> lines_per_s=<r>". Bounded: gives up
 * after 120 s. Writes and reads are interleaved with poll(), so the kernel's TCP
 * window (and Gale's backpressure) paces the sender. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return (int)n;
}

int main(int argc, char **argv)
{
    struct sockaddr_in a;
    char line[512], rbuf[65536];
    size_t cap, len = 0, sent = 0, rlen = 0;
    long n = argc > 4 ? atol(argv[4]) : 100000, acked = 0, last_ack = -1;
    char *out;
    int fd, one = 1;
    double t0, deadline;

    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT DEVICE TOKEN [N]\n", argv[0]);
        return 2;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    snprintf(line, sizeof line, "{\"device\":\"%s\",\"token\":\"%s\"}\n", argv[2], argv[3]);
    if (write(fd, line, strlen(line)) < 0 || read_line(fd, line, sizeof line) < 0 ||
        strstr(line, "\"ok\"") == NULL) {
        fprintf(stderr, "auth failed: %s\n", line);
        return 1;
    }
    cap = (size_t)n * 96;
    out = malloc(cap);
    for (long i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, cap - len,
                                "{\"ts\":%ld,\"values\":{\"temp\":%.1f,\"hum\":%ld},\"seq\":%ld}\n",
                                1700000000000L + i, 20.0 + (double)(i % 100) / 10, i % 60, i);
    t0 = now_s();
    deadline = t0 + 120;
    while (acked < n && now_s() < deadline) {
        struct pollfd p = {fd, POLLIN | (sent < len ? POLLOUT : 0), 0};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        if ((p.revents & POLLOUT) && sent < len) {
            ssize_t w = write(fd, out + sent, len - sent > 262144 ? 262144 : len - sent);
            if (w > 0)
                sent += (size_t)w;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(fd, rbuf + rlen, sizeof rbuf - rlen - 1);
            char *s, *nl;
            if (r <= 0) {
                fprintf(stderr, "connection closed after %ld acks\n", acked);
                return 1;
            }
            rlen += (size_t)r;
            rbuf[rlen] = '\0';
            s = rbuf;
            while ((nl = memchr(s, '\n', rlen - (size_t)(s - rbuf))) != NULL) {
                long v;
                if (sscanf(s, "{\"ack\":%ld}", &v) == 1) {
                    if (v != last_ack + 1) {
                        fprintf(stderr, "ack out of order: %ld after %ld\n", v, last_ack);
                        return 1;
                    }
                    last_ack = v;
                    acked++;
                } else {
                    fprintf(stderr, "unexpected reply: %.*s\n", (int)(nl - s), s);
                    return 1;
                }
                s = nl + 1;
            }
            rlen -= (size_t)(s - rbuf);
            memmove(rbuf, s, rlen);
        }
    }
    double secs = now_s() - t0;
    if (acked < n) {
        fprintf(stderr, "timed out: %ld of %ld acked\n", acked, n);
        return 1;
    }
    printf("line N=%ld seconds=%.3f lines_per_s=%.0f\n", n, secs, (double)n / secs);
    free(out);
    close(fd);
    return 0;
}
