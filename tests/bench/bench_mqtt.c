/* tests/bench/bench_mqtt.c: MQTT publish throughput against any MQTT 3.1.1
 * server (Gale or Mosquitto), from C clients multiplexed with poll().
 *
 *   bench_mqtt PORT CLIENTS MESSAGES_PER_CLIENT QOS [WINDOW]
 *
 * Each client connects (client id bench-<i>, username bench-<i>, no password),
 * then publishes 64-byte JSON telemetry to devices/bench-<i>/telemetry.
 * QoS 1: at most WINDOW (default 100) unacknowledged PUBLISHes per client; done
 * when every PUBACK is in. QoS 0: every PUBLISH then a PINGREQ; done when every
 * PINGRESP is in (the server has read everything before it answers the ping).
 * Prints "mqtt qos=<q> clients=<c> messages=<n> seconds=<s> msgs_per_s=<r>".
 * Bounded: gives up after 120 s. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "protocols/mqtt/mqtt.h"

struct client {
    int fd;
    long published, acked, to_send;
    bool ping_sent, done, connacked;
    struct buf out;   /* bytes not yet written */
    struct buf in;    /* bytes read, not yet decoded */
    char id[32];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int port, nclients, qos, window;
    long per;
    struct client *cl;
    struct pollfd *pfd;
    struct mqtt_limits lim = {0, MQTT_V311};
    long total_done = 0;
    double t0, deadline;

    if (argc < 5) {
        fprintf(stderr, "usage: %s PORT CLIENTS MESSAGES_PER_CLIENT QOS [WINDOW]\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    nclients = atoi(argv[2]);
    per = atol(argv[3]);
    qos = atoi(argv[4]);
    window = argc > 5 ? atoi(argv[5]) : 100;
    cl = calloc((size_t)nclients, sizeof *cl);
    pfd = calloc((size_t)nclients, sizeof *pfd);
    for (int i = 0; i < nclients; i++) {
        struct sockaddr_in a = {0};
        struct mqtt_connect c = {0};
        int one = 1;
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cl[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(cl[i].fd, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("connect");
            return 1;
        }
        setsockopt(cl[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        snprintf(cl[i].id, sizeof cl[i].id, "bench-%d", i);
        c.clean_session = true;
        c.keepalive_s = 60;
        c.client_id = (struct mqtt_str){cl[i].id, strlen(cl[i].id)};
        c.has_username = true;
        c.username = c.client_id;
        buf_init(&cl[i].out);
        buf_init(&cl[i].in);
        mqtt_encode_connect(&cl[i].out, &c);
        cl[i].to_send = per;
    }
    t0 = now_s();
    deadline = t0 + 120;
    while (total_done < nclients && now_s() < deadline) {
        for (int i = 0; i < nclients; i++) {
            struct client *c = &cl[i];
            char topic[64], payload[65];
            /* top up the window */
            while (c->connacked && c->published < per &&
                   (qos == 0 ? c->out.len < 65536 : c->published - c->acked < window)) {
                int tl = snprintf(topic, sizeof topic, "devices/%s/telemetry", c->id);
                int pl = snprintf(payload, sizeof payload,
                                  "{\"temp\":%5.1f,\"hum\":%3ld,\"seq\":%10ld,\"v\":1}",
                                  20.0 + (double)(c->published % 100) / 10, c->published % 100,
                                  c->published);
                mqtt_encode_publish(&c->out, topic, (size_t)tl, (const uint8_t *)payload,
                                    (size_t)pl, (uint8_t)qos, false, false,
                                    (uint16_t)(qos ? (c->published % 65535) + 1 : 0));
                c->published++;
            }
            if (qos == 0 && c->connacked && c->published == per && !c->ping_sent) {
                mqtt_encode_pingreq(&c->out);
                c->ping_sent = true;
            }
            pfd[i].fd = c->fd;
            pfd[i].events = POLLIN | (c->out.len ? POLLOUT : 0);
            pfd[i].revents = 0;
        }
        if (poll(pfd, (nfds_t)nclients, 1000) <= 0)
            continue;
        for (int i = 0; i < nclients; i++) {
            struct client *c = &cl[i];
            if ((pfd[i].revents & POLLOUT) && c->out.len) {
                ssize_t w = write(c->fd, c->out.data, c->out.len);
                if (w > 0)
                    buf_consume(&c->out, (size_t)w);
            }
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = read(c->fd, buf_reserve(&c->in, 65536), 65536);
                size_t off = 0, used;
                struct mqtt_packet pkt;
                const char *why;
                if (r <= 0) {
                    fprintf(stderr, "client %d: connection closed (published %ld acked %ld)\n", i,
                            c->published, c->acked);
                    return 1;
                }
                buf_commit(&c->in, (size_t)r);
                while (mqtt_decode(&lim, c->in.data + off, c->in.len - off, &pkt, &used, &why) ==
                       CODEC_FRAME) {
                    off += used;
                    if (pkt.type == MQTT_CONNACK) {
                        if (pkt.connack.rc != 0) {
                            fprintf(stderr, "client %d: CONNACK rc=%d\n", i, pkt.connack.rc);
                            return 1;
                        }
                        c->connacked = true;
                    } else if (pkt.type == MQTT_PUBACK) {
                        c->acked++;
                    } else if (pkt.type == MQTT_PINGRESP) {
                        c->acked = per;
                    }
                }
                buf_consume(&c->in, off);
                if (!c->done && c->acked >= per && c->published >= per) {
                    c->done = true;
                    total_done++;
                }
            }
        }
    }
    double secs = now_s() - t0;
    if (total_done < nclients) {
        fprintf(stderr, "timed out: %ld of %d clients done\n", total_done, nclients);
        return 1;
    }
    printf("mqtt qos=%d clients=%d messages=%ld seconds=%.3f msgs_per_s=%.0f\n", qos, nclients,
           per * nclients, secs, (double)(per * nclients) / secs);
    for (int i = 0; i < nclients; i++) {
        close(cl[i].fd);
        buf_fini(&cl[i].out);
        buf_fini(&cl[i].in);
    }
    free(cl);
    free(pfd);
    return 0;
}
