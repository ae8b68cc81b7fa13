/* gateway/health.c: `gale --health` (see health.h). The server side writes its
 * listeners' addresses into <data_dir>/listeners; the probe side, a separate short-lived
 * process, reads the HTTP one and asks GET /api/health over a plain socket, every step
 * under one deadline. A gale that is stopped (SIGSTOP) or stuck still accepts
 * connections into the kernel's backlog but never answers: the deadline turns that into
 * "unhealthy". */
#include "gateway/health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int health_record(const char *data_dir, const struct health_listener *ls, size_t n)
{
    char path[1024], tmp[1040];
    FILE *f;
    int rc = 0;

    snprintf(path, sizeof path, "%s/listeners", data_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL)
        return -errno;
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s %s %d\n", ls[i].name, ls[i].bind, ls[i].port);
    if (ferror(f))
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        unlink(tmp);
    return rc;
}

void health_forget(const char *data_dir)
{
    char path[1024];

    snprintf(path, sizeof path, "%s/listeners", data_dir);
    unlink(path);
}

/* The "http <addr> <port>" line of <data_dir>/listeners, if a gale wrote one. */
static int read_recorded(const char *data_dir, char *addr, size_t addrlen, int *port)
{
    char path[1024], line[256], a[64];
    FILE *f;
    int p, rc = -1;

    snprintf(path, sizeof path, "%s/listeners", data_dir);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (rc != 0 && fgets(line, sizeof line, f)) {
        if (sscanf(line, "http %63s %d", a, &p) == 2 && p > 0 && p <= 65535) {
            snprintf(addr, addrlen, "%s", a);
            *port = p;
            rc = 0;
        }
    }
    fclose(f);
    return rc;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline_ms; 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline_ms)
{
    struct pollfd pfd = {fd, events, 0};
    int rc;

    for (;;) {
        int64_t left = deadline_ms - now_ms();
        if (left <= 0)
            return 0;
        rc = poll(&pfd, 1, (int)left);
        if (rc >= 0 || errno != EINTR)
            return rc < 0 ? -1 : rc;
    }
}

/* GET /api/health at addr:port; 0 on a 200, else 1 with *why set. */
static int ask(const char *addr, int port, int64_t deadline_ms, char *why, size_t whylen)
{
    static const char req[] = "GET /api/health HTTP/1.0\r\nHost: localhost\r\n\r\n";
    struct sockaddr_storage ss;
    socklen_t sslen;
    char resp[256];
    size_t got = 0;
    int fd, err = 0, status = 0, rc = 1;
    socklen_t errlen = sizeof err;

    memset(&ss, 0, sizeof ss);
    if (strchr(addr, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, addr, &s6->sin6_addr) != 1)
            goto bad_addr;
        sslen = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, addr, &s4->sin_addr) != 1)
            goto bad_addr;
        sslen = sizeof *s4;
    }
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return 1;
    }
    if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 && errno != EINPROGRESS) {
        snprintf(why, whylen, "connect: %s", strerror(errno));
        goto out;
    }
    if (wait_fd(fd, POLLOUT, deadline_ms) <= 0) {
        snprintf(why, whylen, "connect: no answer in time");
        goto out;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0 || err != 0) {
        snprintf(why, whylen, "connect: %s", strerror(err ? err : errno));
        goto out;
    }
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        snprintf(why, whylen, "send: %s", strerror(errno));
        goto out;
    }
    while (got < sizeof resp - 1 && !memchr(resp, '\n', got)) {
        ssize_t n;
        if (wait_fd(fd, POLLIN, deadline_ms) <= 0) {
            snprintf(why, whylen, "no answer in time");
            goto out;
        }
        n = recv(fd, resp + got, sizeof resp - 1 - got, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            snprintf(why, whylen, "closed before answering%s%s", n < 0 ? ": " : "",
                     n < 0 ? strerror(errno) : "");
            goto out;
        }
        got += (size_t)n;
    }
    resp[got] = '\0';
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(why, whylen, "not an HTTP answer");
        goto out;
    }
    if (status != 200) {
        snprintf(why, whylen, "GET /api/health answered %d", status);
        goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
bad_addr:
    snprintf(why, whylen, "not an IPv4 or IPv6 address");
    return 1;
}

int health_probe(const char *data_dir, const char *http_bind, int port, int timeout_ms, FILE *out)
{
    char addr[64], why[256] = "";
    int64_t deadline = now_ms() + timeout_ms;
    const char *from = "config", *lb, *rb;

    if (read_recorded(data_dir, addr, sizeof addr, &port) == 0)
        from = "listeners";
    else
        snprintf(addr, sizeof addr, "%s", http_bind);
    /* a wildcard bind answers on loopback */
    if (strcmp(addr, "0.0.0.0") == 0)
        snprintf(addr, sizeof addr, "127.0.0.1");
    else if (strcmp(addr, "::") == 0)
        snprintf(addr, sizeof addr, "::1");
    if (port <= 0) {
        fprintf(out,
                "gale: unhealthy: no HTTP port known (http.port is %d, %s/listeners has "
                "none)\n",
                port, data_dir);
        return 1;
    }
    lb = strchr(addr, ':') ? "[" : ""; /* an IPv6 address in brackets */
    rb = lb[0] ? "]" : "";
    if (ask(addr, port, deadline, why, sizeof why) != 0) {
        fprintf(out, "gale: unhealthy: http %s%s%s:%d (from %s): %s\n", lb, addr, rb, port, from,
                why);
        return 1;
    }
    fprintf(out, "gale: healthy: http %s%s%s:%d answered 200\n", lb, addr, rb, port);
    return 0;
}
