/* tests/bench/bench_mqtt_router.c: MQTT router throughput (protocols/mqtt/router.c).
 *
 * Builds a router of N subscriptions (default 100k) in three shapes, one per subscriber:
 * devices/<i>/telemetry, devices/+/status and devices/<i>/#; then runs M topic lookups
 * (default 1M) on devices/<k>/telemetry and devices/<k>/status for random k, and prints
 * subscribe, match and unsubscribe rates plus deliveries per match. A status topic
 * fans out to every devices/+/status subscriber (a third of N), so the mix is chosen by
 * --status-every (default: one status topic per 1000 lookups).
 * Usage: bench_mqtt_router [subscriptions] [matches] [status-every] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "protocols/mqtt/mqtt.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int filter_of(size_t i, char *f, size_t cap)
{
    switch (i % 3) {
    case 0: return snprintf(f, cap, "devices/%zu/telemetry", i);
    case 1: return snprintf(f, cap, "devices/+/status");
    default: return snprintf(f, cap, "devices/%zu/#", i);
    }
}

static void on_match(void *ctx, void *sub, uint8_t qos, uint32_t opts)
{
    uint64_t *sum = ctx;
    (void)opts;
    *sum += (uintptr_t)sub + qos;
}

int main(int argc, char **argv)
{
    size_t nsubs = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    size_t nmatch = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
    size_t status_every = argc > 3 ? strtoul(argv[3], NULL, 10) : 1000;
    struct mqtt_router *r = mqtt_router_new();
    uint64_t sum = 0, delivered = 0;
    char f[64];
    double t0, t1, t2, t3;
    size_t i;

    if (nsubs == 0 || status_every == 0)
        return 2;
    t0 = now_s();
    for (i = 1; i <= nsubs; i++) {
        int n = filter_of(i, f, sizeof f);
        mqtt_router_subscribe(r, f, (size_t)n, (void *)(uintptr_t)i, (uint8_t)(i % 3));
    }
    t1 = now_s();
    for (i = 0; i < nmatch; i++) {
        size_t k = 1 + rnd() % nsubs;
        int n = i % status_every == status_every - 1
                    ? snprintf(f, sizeof f, "devices/%zu/status", k)
                    : snprintf(f, sizeof f, "devices/%zu/telemetry", k);
        delivered += mqtt_router_match(r, f, (size_t)n, on_match, &sum);
    }
    t2 = now_s();
    for (i = 1; i <= nsubs; i++)
        mqtt_router_remove_all(r, (void *)(uintptr_t)i);
    t3 = now_s();
    printf("subscriptions=%zu subscribe_per_s=%.0f\n", nsubs, (double)nsubs / (t1 - t0));
    printf("matches=%zu matches_per_s=%.0f deliveries=%llu deliveries_per_match=%.2f "
           "status_every=%zu\n",
           nmatch, (double)nmatch / (t2 - t1), (unsigned long long)delivered,
           nmatch ? (double)delivered / (double)nmatch : 0.0, status_every);
    printf("remove_all_per_s=%.0f left=%zu checksum=%llu\n", (double)nsubs / (t3 - t2),
           mqtt_router_count(r), (unsigned long long)sum);
    mqtt_router_free(r);
    return 0;
}
