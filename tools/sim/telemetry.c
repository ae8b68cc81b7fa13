/* tools/sim/telemetry.c: what a simulated device measures (tele_).
 *
 * Keys of every regular message:
 *   temperature  °C, a slow daily swing around the device's own base, pulled back to it
 *                (mean reversion) with a little noise: it drifts, it does not jump
 *   humidity     %, the same kind of drift, kept within 0..100
 *   pulses       a counter that only grows (a meter)
 *   door_open    a boolean that flips now and then
 *   state        "idle", "running" or "fault" (a Markov chain: faults are rare and short)
 * A late message carries one point of temperature at a time up to a minute in the past
 * (as a device replaying a buffered reading). Regular points have strictly increasing
 * times per device. */
#include <math.h>
#include <stdio.h>

#include "tools/sim/sim.h"

static const char *const tele_states[] = {"idle", "running", "fault"};

uint64_t tele_rand(uint64_t *rng)
{
    uint64_t x = *rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

double tele_uniform(uint64_t *rng)
{
    return (double)(tele_rand(rng) >> 11) / 9007199254740992.0;
}

/* Roughly normal, mean 0, deviation 1 (the sum of four uniforms, rescaled). */
static double noise(uint64_t *rng)
{
    double s = 0;
    for (int i = 0; i < 4; i++)
        s += tele_uniform(rng);
    return (s - 2.0) * 1.732;
}

void tele_init(struct tele *t, uint64_t seed)
{
    t->rng = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (t->rng == 0)
        t->rng = 1;
    t->temp_base = 18 + 8 * tele_uniform(&t->rng);
    t->temp = t->temp_base + noise(&t->rng);
    t->hum_base = 35 + 30 * tele_uniform(&t->rng);
    t->hum = t->hum_base;
    t->phase = 2 * M_PI * tele_uniform(&t->rng);
    t->pulses = tele_rand(&t->rng) % 100000;
    t->door = false;
    t->state = 0;
    t->last_ts = 0;
}

static void step(struct tele *t, int64_t now_ms)
{
    double day = 2 * M_PI * (double)(now_ms % 86400000) / 86400000.0 + t->phase;
    double target = t->temp_base + 3 * sin(day);

    t->temp += 0.1 * (target - t->temp) + 0.08 * noise(&t->rng);
    t->hum += 0.05 * (t->hum_base - t->hum) + 0.3 * noise(&t->rng);
    t->hum = t->hum < 0 ? 0 : t->hum > 100 ? 100 : t->hum;
    t->pulses += tele_rand(&t->rng) % 6;
    if (tele_uniform(&t->rng) < 0.03)
        t->door = !t->door;
    double u = tele_uniform(&t->rng);
    switch (t->state) {
    case 0: t->state = u < 0.10 ? 1 : u < 0.105 ? 2 : 0; break;  /* idle */
    case 1: t->state = u < 0.05 ? 0 : u < 0.06 ? 2 : 1; break;   /* running */
    default: t->state = u < 0.3 ? 0 : 2; break;                  /* fault */
    }
}

int tele_message(struct tele *t, int64_t now_ms, double late_p, struct buf *out)
{
    if (t->last_ts > 0 && tele_uniform(&t->rng) < late_p) {
        int64_t back = 1000 + (int64_t)(tele_rand(&t->rng) % 59000);
        int64_t ts = t->last_ts - back;
        /* (on the time of a regular point it replaces that point, as a replay does) */
        buf_printf(out, "{\"ts\":%lld,\"values\":{\"temperature\":%.2f}}", (long long)ts,
                   t->temp + 0.05 * noise(&t->rng));
        return 1;
    }
    step(t, now_ms);
    int64_t ts = now_ms > t->last_ts ? now_ms : t->last_ts + 1;
    t->last_ts = ts;
    buf_printf(out,
               "{\"ts\":%lld,\"values\":{\"temperature\":%.2f,\"humidity\":%.1f,"
               "\"pulses\":%llu,\"door_open\":%s,\"state\":\"%s\"}}",
               (long long)ts, t->temp, t->hum, (unsigned long long)t->pulses,
               t->door ? "true" : "false", tele_states[t->state]);
    return 5;
}
