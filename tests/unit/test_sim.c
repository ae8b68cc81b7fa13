/* tests/unit/test_sim.c: gale-sim's pure parts (tools/sim/telemetry.c, httpmsg.c).
 * - the telemetry model over many messages: regular points have strictly increasing
 *   times and every key with its kind (pulses never goes down, humidity within 0..100,
 *   state one of three, temperature moves in small steps); late points are single
 *   temperature points up to a minute before the newest regular one; late_p 0 sends
 *   none, late_p 1 all but the first; the same seed gives the same readings;
 * - HTTP responses: whole, split at every offset, pipelined, case of the header name,
 *   malformed and oversized. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <cjson/cJSON.h>

#include "tools/sim/sim.h"

#define T0 1800000000000LL

/* One message of t at now_ms, parsed. */
static cJSON *message(struct tele *t, int64_t now_ms, double late_p, int *nvalues)
{
    struct buf b;
    buf_init(&b);
    *nvalues = tele_message(t, now_ms, late_p, &b);
    cJSON *j = cJSON_ParseWithLength((const char *)b.data, b.len);
    buf_fini(&b);
    assert_non_null(j);
    return j;
}

static void test_regular_points(void **state)
{
    struct tele t;
    int64_t last_ts = 0, now = T0;
    double last_temp = 0, last_pulses = -1;
    int states[3] = {0}, doors[2] = {0};

    (void)state;
    tele_init(&t, 7);
    for (int i = 0; i < 20000; i++) {
        int n;
        now += i % 3 == 0 ? 0 : 1000; /* the same ms now and then: ts still increases */
        cJSON *j = message(&t, now, 0, &n);
        assert_int_equal(n, 5);
        int64_t ts = (int64_t)cJSON_GetObjectItem(j, "ts")->valuedouble;
        assert_true(ts > last_ts);
        assert_true(ts >= now);
        last_ts = ts;
        cJSON *v = cJSON_GetObjectItem(j, "values");
        double temp = cJSON_GetObjectItem(v, "temperature")->valuedouble;
        double hum = cJSON_GetObjectItem(v, "humidity")->valuedouble;
        double pulses = cJSON_GetObjectItem(v, "pulses")->valuedouble;
        cJSON *door = cJSON_GetObjectItem(v, "door_open");
        const char *st = cJSON_GetObjectItem(v, "state")->valuestring;
        assert_true(temp > 0 && temp < 45);
        if (i > 0)
            assert_true(temp - last_temp < 1.5 && last_temp - temp < 1.5);
        assert_true(hum >= 0 && hum <= 100);
        assert_true(pulses >= last_pulses);
        assert_true(cJSON_IsBool(door));
        doors[cJSON_IsTrue(door)]++;
        if (strcmp(st, "idle") == 0)
            states[0]++;
        else if (strcmp(st, "running") == 0)
            states[1]++;
        else if (strcmp(st, "fault") == 0)
            states[2]++;
        else
            fail_msg("state %s", st);
        last_temp = temp;
        last_pulses = pulses;
        cJSON_Delete(j);
    }
    /* every state and both door positions occur, faults are the rarest */
    assert_true(states[0] > 0 && states[1] > 0 && states[2] > 0);
    assert_true(states[2] < states[0] && states[2] < states[1]);
    assert_true(doors[0] > 0 && doors[1] > 0);
}

static void test_late_points(void **state)
{
    struct tele t;
    int64_t now = T0;
    int late = 0;

    (void)state;
    tele_init(&t, 3);
    for (int i = 0; i < 5000; i++) {
        int n;
        now += 1000;
        int64_t newest = t.last_ts;
        cJSON *j = message(&t, now, 0.1, &n);
        int64_t ts = (int64_t)cJSON_GetObjectItem(j, "ts")->valuedouble;
        cJSON *v = cJSON_GetObjectItem(j, "values");
        if (n == 1) {
            late++;
            assert_true(ts < newest && ts >= newest - 60000);
            assert_int_equal(cJSON_GetArraySize(v), 1);
            assert_non_null(cJSON_GetObjectItem(v, "temperature"));
        } else {
            assert_int_equal(n, 5);
            assert_true(ts > newest);
        }
        cJSON_Delete(j);
    }
    assert_true(late > 300 && late < 700); /* about a tenth */

    int n;
    tele_init(&t, 3);
    cJSON_Delete(message(&t, now, 1, &n));
    assert_int_equal(n, 5); /* nothing to be late for before the first point */
    for (int i = 0; i < 100; i++) {
        cJSON_Delete(message(&t, now + i, 1, &n));
        assert_int_equal(n, 1);
    }
}

static void test_same_seed(void **state)
{
    struct tele a, b;
    struct buf x, y;

    (void)state;
    tele_init(&a, 42);
    tele_init(&b, 42);
    buf_init(&x);
    buf_init(&y);
    for (int i = 0; i < 100; i++) {
        tele_message(&a, T0 + i * 1000, 0.05, &x);
        tele_message(&b, T0 + i * 1000, 0.05, &y);
    }
    assert_int_equal(x.len, y.len);
    assert_memory_equal(x.data, y.data, x.len);
    buf_fini(&x);
    buf_fini(&y);
}

static const char RESP[] = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                           "content-LENGTH: 14\r\n\r\n{\"token\":\"ab\"}";

static void test_http_parse(void **state)
{
    struct shttp_resp r;
    size_t n = sizeof RESP - 1;

    (void)state;
    assert_int_equal(shttp_parse((const uint8_t *)RESP, n, &r), (long)n);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, 14);
    assert_memory_equal(r.body, "{\"token\":\"ab\"}", 14);
    for (size_t cut = 0; cut < n; cut++) { /* any prefix: incomplete, never an error */
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, RESP, cut);
        assert_int_equal(shttp_parse(p, cut, &r), 0);
        free(p);
    }
    /* two pipelined: the first, then the second from where it ended */
    char two[2 * sizeof RESP];
    memcpy(two, RESP, n);
    memcpy(two + n, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38);
    assert_int_equal(shttp_parse((const uint8_t *)two, n + 38, &r), (long)n);
    assert_int_equal(shttp_parse((const uint8_t *)two + n, 38, &r), 38);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    /* malformed */
    assert_int_equal(shttp_parse((const uint8_t *)"SSH-2.0-x\r\n\r\n", 13, &r), -1);
    assert_int_equal(
        shttp_parse((const uint8_t *)"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", 39, &r), -1);
    assert_int_equal(
        shttp_parse((const uint8_t *)"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", 45,
                    &r),
        -1);
    /* a head that never ends */
    size_t big = 70000;
    uint8_t *p = malloc(big);
    memset(p, 'a', big);
    assert_int_equal(shttp_parse(p, big, &r), -1);
    free(p);
}

static void test_http_request(void **state)
{
    struct buf b;

    (void)state;
    buf_init(&b);
    shttp_request(&b, "POST", "/api/devices", "127.0.0.1:8080", "k", "{}", 2);
    assert_string_equal(buf_cstr(&b), "POST /api/devices HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                                      "User-Agent: gale-sim\r\nAuthorization: Bearer k\r\n"
                                      "Content-Type: application/json\r\nContent-Length: 2\r\n"
                                      "\r\n{}");
    b.len = 0;
    shttp_request(&b, "POST", "/x", "h", NULL, NULL, 0);
    assert_string_equal(buf_cstr(&b), "POST /x HTTP/1.1\r\nHost: h\r\nUser-Agent: gale-sim\r\n"
                                      "Content-Length: 0\r\n\r\n");
    buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regular_points), cmocka_unit_test(test_late_points),
        cmocka_unit_test(test_same_seed),      cmocka_unit_test(test_http_parse),
        cmocka_unit_test(test_http_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
