/* tests/bench/paho_pub.c: the bridge-drain reference: one Eclipse Paho C client
 * (MQTTAsync, the library the bridge uses) publishing QoS 1 to a broker with at most
 * WINDOW messages in flight, as fast as the acks come back.
 *
 *   paho_pub URI MESSAGES [WINDOW] [--seconds S]
 *
 * Messages are the bench telemetry of bench_mqtt.c (74 bytes of JSON) on
 * devices/bench-<k % 10>/telemetry, the shape of the backlog the bridge drains.
 * The clock starts after CONNACK and stops at the last acknowledgement (onSuccess).
 * Prints one line:  paho messages= window= seconds= msgs_per_s=
 * Bounded: connecting gives up after 30 s, publishing after S seconds (default 300). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <MQTTAsync.h>

struct run {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long acked, failed;
    int connected; /* 1 connected, -1 refused */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void signal_locked(struct run *r, long *counter, int *flag, int value)
{
    pthread_mutex_lock(&r->mu);
    if (counter)
        (*counter)++;
    if (flag)
        *flag = value;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* paho's threads: each callback only counts and wakes the publishing thread */
static void on_sent(void *ctx, MQTTAsync_successData *d)
{
    struct run *r = ctx;
    (void)d;
    signal_locked(r, &r->acked, NULL, 0);
}

static void on_send_failed(void *ctx, MQTTAsync_failureData *d)
{
    struct run *r = ctx;
    (void)d;
    signal_locked(r, &r->failed, NULL, 0);
}

static void on_connected(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    signal_locked(ctx, NULL, &((struct run *)ctx)->connected, 1);
}

static void on_connect_failed(void *ctx, MQTTAsync_failureData *d)
{
    (void)d;
    signal_locked(ctx, NULL, &((struct run *)ctx)->connected, -1);
}

static void usage(void)
{
    fprintf(stderr, "usage: paho_pub URI MESSAGES [WINDOW] [--seconds S]\n");
    exit(2);
}

/* Waits (mutex held) until pred or the deadline; returns 0 on timeout. */
static int wait_until(struct run *r, int (*pred)(struct run *, long), long arg, double deadline)
{
    while (!pred(r, arg)) {
        struct timespec ts;
        if (now_s() > deadline)
            return 0;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    return 1;
}

static int is_connected(struct run *r, long arg)
{
    (void)arg;
    return r->connected != 0;
}

/* a slot in the window is free once fewer than arg messages are unanswered */
static int acked_at_least(struct run *r, long arg)
{
    return r->acked + r->failed >= arg;
}

int main(int argc, char **argv)
{
    struct run r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    MQTTAsync client;
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    const char *uri = NULL;
    long messages = 0, window = 100;
    double seconds = 300, t0, t1, deadline;
    int pos = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
            continue;
        }
        switch (pos++) {
        case 0: uri = argv[i]; break;
        case 1: messages = atol(argv[i]); break;
        case 2: window = atol(argv[i]); break;
        default: usage();
        }
    }
    if (!uri || messages < 1 || window < 1 || window > 65535 || seconds <= 0)
        usage();
    if (MQTTAsync_create(&client, uri, "bench-paho-pub", MQTTCLIENT_PERSISTENCE_NONE, NULL) !=
        MQTTASYNC_SUCCESS) {
        fprintf(stderr, "paho_pub: cannot create a client for %s\n", uri);
        return 1;
    }
    co.keepAliveInterval = 60;
    co.cleansession = 1;
    co.maxInflight = (int)window;
    co.onSuccess = on_connected;
    co.onFailure = on_connect_failed;
    co.context = &r;
    if (MQTTAsync_connect(client, &co) != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "paho_pub: connect to %s refused\n", uri);
        return 1;
    }
    pthread_mutex_lock(&r.mu);
    if (!wait_until(&r, is_connected, 0, now_s() + 30) || r.connected < 0) {
        fprintf(stderr, "paho_pub: no CONNACK from %s\n", uri);
        return 1;
    }
    pthread_mutex_unlock(&r.mu);

    t0 = now_s();
    deadline = t0 + seconds;
    for (long k = 0; k < messages; k++) {
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        char topic[64], payload[128];
        int pl, rc;

        pthread_mutex_lock(&r.mu);
        if (!wait_until(&r, acked_at_least, k - window + 1, deadline)) {
            fprintf(stderr, "paho_pub: timed out after %ld messages\n", k);
            return 1;
        }
        pthread_mutex_unlock(&r.mu);
        snprintf(topic, sizeof topic, "devices/bench-%ld/telemetry", k % 10);
        pl = snprintf(payload, sizeof payload,
                      "{\"temperature\":%6.2f,\"humidity\":%5.1f,\"battery\":%5.3f,"
                      "\"count\":%10ld}",
                      20.0 + (double)(k % 1000) / 100, 40.0 + (double)(k % 200) / 10,
                      3.0 + (double)(k % 500) / 1000, k);
        ro.onSuccess = on_sent;
        ro.onFailure = on_send_failed;
        ro.context = &r;
        rc = MQTTAsync_send(client, topic, pl, payload, 1, 0, &ro);
        if (rc != MQTTASYNC_SUCCESS) {
            fprintf(stderr, "paho_pub: send %ld failed: %s\n", k, MQTTAsync_strerror(rc));
            return 1;
        }
    }
    pthread_mutex_lock(&r.mu);
    if (!wait_until(&r, acked_at_least, messages, deadline)) {
        fprintf(stderr, "paho_pub: timed out waiting for %ld acks\n", messages - r.acked);
        return 1;
    }
    pthread_mutex_unlock(&r.mu);
    t1 = now_s();
    if (r.failed) {
        fprintf(stderr, "paho_pub: %ld sends failed\n", r.failed);
        return 1;
    }
    printf("paho messages=%ld window=%ld seconds=%.3f msgs_per_s=%.0f\n", messages, window,
           t1 - t0, (double)messages / (t1 - t0));
    MQTTAsync_disconnect(client, NULL);
    MQTTAsync_destroy(&client);
    return 0;
}
