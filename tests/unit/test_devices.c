/* tests/unit/test_devices.c: latest values follow the commits (gateway/devices.c).
 *
 * devices_sink parks a telemetry message under the seq of the write that stores it;
 * devices_durable applies it (committed) or drops it (failed). Checked: nothing shows
 * before the report, a failed range never shows, reports settle exactly seq <= upto in
 * order across ring growth and wrap-around, a removed device drops its pending values,
 * messages that are not stored never wait, and devices_fini releases what still waits
 * (the ASan build checks the references). A staged change (devices_stage) is written
 * as changed and leaves memory as it was until devices_apply, which writes the record
 * again when another write of it went after the staged one; devices_when_durable fires
 * once per write, with its outcome. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/devices.h"
#include "gateway/ticket.h"

/* Publishes {key: value} at ts from device as if the storage write had seq. */
static void publish(struct devices *d, const char *device, const char *key, double value,
                    int64_t ts, uint64_t seq)
{
    struct point p = {.ts_ms = ts, .key = key, .type = VAL_NUM, .num = value};
    struct msg *m = msg_new(MSG_TELEMETRY, device, "t", "{}", 2, &p, 1);
    struct ticket t = ticket_one(seq);
    devices_sink(d, m, &t);
    msg_unref(m);
}

/* The latest value of key, or -1 when there is none. */
static double latest(struct devices *d, const char *device, const char *key)
{
    struct device *dev = devices_find(d, device);
    struct latest_val *lv = dev ? map_get(&dev->latest, key, strlen(key)) : NULL;
    return lv ? lv->p.num : -1;
}

static void test_commit_and_failure(void **state)
{
    struct devices d;
    (void)state;
    devices_init(&d);
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0);

    publish(&d, "dev-1", "x", 1, 100, 1);
    assert_true(latest(&d, "dev-1", "x") == -1); /* not before its commit */
    devices_durable(&d, 1, true);
    assert_true(latest(&d, "dev-1", "x") == 1);

    publish(&d, "dev-1", "x", 2, 200, 2);
    publish(&d, "dev-1", "y", 2, 200, 3);
    publish(&d, "dev-1", "x", 4, 400, 4);
    devices_durable(&d, 3, false); /* 2 and 3 failed */
    assert_true(latest(&d, "dev-1", "x") == 1);
    assert_true(latest(&d, "dev-1", "y") == -1);
    assert_int_equal(d.pending_len, 1);
    devices_durable(&d, 4, true);
    assert_true(latest(&d, "dev-1", "x") == 4);
    assert_int_equal(d.pending_len, 0);
    devices_fini(&d);
}

static void test_order_across_growth(void **state)
{
    struct devices d;
    uint64_t seq = 0, settled = 0;
    (void)state;
    devices_init(&d);
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0);

    /* uneven pushes and reports: the ring wraps and grows with entries in it */
    for (int round = 0; round < 200; round++) {
        int n = (round * 37) % 101 + 1;
        for (int i = 0; i < n; i++) {
            seq++;
            publish(&d, "dev-1", "x", (double)seq, (int64_t)seq, seq);
        }
        settled += (seq - settled + 1) * 2 / 3;
        devices_durable(&d, settled, true);
        assert_true(latest(&d, "dev-1", "x") == (double)settled);
        assert_int_equal(d.pending_len, seq - settled);
    }
    devices_durable(&d, seq, true);
    assert_true(latest(&d, "dev-1", "x") == (double)seq);
    assert_int_equal(d.pending_len, 0);
    devices_fini(&d);
}

static void test_removed_device(void **state)
{
    struct devices d;
    (void)state;
    devices_init(&d);
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0);
    devices_add(&d, "dev-2", NULL, DEVICE_ROLE_DEVICE, 0);

    publish(&d, "dev-1", "x", 1, 100, 1);
    publish(&d, "dev-2", "x", 2, 100, 2);
    devices_remove(&d, "dev-1");
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0); /* created again */
    devices_durable(&d, 2, true);
    assert_true(latest(&d, "dev-1", "x") == -1);
    assert_true(latest(&d, "dev-2", "x") == 2);
    devices_fini(&d);
}

static void test_not_stored(void **state)
{
    struct devices d;
    struct point p = {.ts_ms = 1, .key = "x", .type = VAL_NUM, .num = 7};
    struct ticket t = ticket_one(1), none = {0, 0};
    struct msg *m;
    (void)state;
    devices_init(&d);
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0);

    publish(&d, "nobody", "x", 1, 1, 1); /* no such device */
    m = msg_new(MSG_TELEMETRY, "dev-1", "t", "{}", 2, NULL, 0); /* no points */
    devices_sink(&d, m, &t);
    msg_unref(m);
    m = msg_new(MSG_PLAIN, "dev-1", "t", "{}", 2, &p, 1); /* not telemetry */
    devices_sink(&d, m, &t);
    msg_unref(m);
    assert_int_equal(d.pending_len, 0);

    m = msg_new(MSG_TELEMETRY, "dev-1", "t", "{}", 2, &p, 1);
    devices_sink(&d, m, &none); /* nothing written for it: nothing will be reported */
    msg_unref(m);
    assert_int_equal(d.pending_len, 0);
    assert_true(latest(&d, "dev-1", "x") == 7);
    devices_fini(&d);
}

static void test_fini_releases_pending(void **state)
{
    struct devices d;
    (void)state;
    devices_init(&d);
    devices_add(&d, "dev-1", NULL, DEVICE_ROLE_DEVICE, 0);
    for (uint64_t s = 1; s <= 100; s++)
        publish(&d, "dev-1", "x", (double)s, (int64_t)s, s);
    devices_durable(&d, 30, true);
    devices_fini(&d); /* 70 references still held: LeakSanitizer would see them */
}

/* ---- changes applied once durable (devices_stage, devices_apply) ---- */

static uint64_t put_seqno;
static char last_record[512], last_hash[DEVICE_TOKEN_HASH_HEX + 1];
static int nputs;

static uint64_t fake_put(void *ctx, const struct device *d)
{
    (void)ctx;
    snprintf(last_record, sizeof last_record, "%s", d->record_json ? d->record_json : "");
    snprintf(last_hash, sizeof last_hash, "%s", d->token_hash);
    nputs++;
    return ++put_seqno;
}

static int fired, fired_ok;
static void on_fired(void *arg, bool ok)
{
    (void)arg;
    fired++;
    fired_ok += ok;
}

static void test_stage_then_apply(void **state)
{
    struct devices d;
    struct device *dev;
    struct device_change ch = {0};
    (void)state;
    devices_init(&d);
    devices_set_store(&d, &(struct devices_store){.put = fake_put});
    dev = devices_add(&d, "dev-1", "aaaa", DEVICE_ROLE_DEVICE, 0);

    /* staged: written as changed, memory untouched until applied */
    ch.set_name = true;
    ch.name = strdup("new");
    ch.set_token = true;
    snprintf(ch.token_hash, sizeof ch.token_hash, "bbbb");
    assert_int_equal(devices_stage(&d, dev, &ch), 1);
    assert_non_null(strstr(last_record, "\"name\":\"new\""));
    assert_string_equal(last_hash, "bbbb");
    assert_null(dev->name);
    assert_string_equal(dev->token_hash, "aaaa");
    devices_when_durable(&d, ch.seq, on_fired, NULL);
    devices_durable(&d, 0, true);
    assert_int_equal(fired, 0);
    devices_durable(&d, 1, true);
    assert_int_equal(fired_ok, 1);
    devices_apply(&d, dev, &ch);
    assert_string_equal(dev->name, "new");
    assert_string_equal(dev->token_hash, "bbbb");
    assert_non_null(strstr(dev->record_json, "\"name\":\"new\""));
    assert_int_equal(nputs, 1); /* nothing else was written: no second write */
    devices_change_free(&ch);

    /* another write of the record went after the staged one (with the old fields): the
     * applied change is written again, so storage ends with both */
    ch.set_metadata = true;
    ch.metadata_json = strdup("{\"m\":1}");
    devices_stage(&d, dev, &ch);
    dev->reported_attrs = strdup("{\"r\":1}");
    devices_save(&d, dev); /* e.g. the device reported attributes meanwhile */
    assert_null(strstr(last_record, "\"m\":1"));
    devices_apply(&d, dev, &ch);
    assert_int_equal(nputs, 4);
    assert_non_null(strstr(last_record, "\"m\":1"));
    assert_non_null(strstr(last_record, "\"r\":1"));
    devices_change_free(&ch);

    /* a failed write fires with !ok; one still waiting at fini fires with !ok too */
    devices_when_durable(&d, 10, on_fired, NULL);
    devices_durable(&d, 10, false);
    assert_int_equal(fired, 2);
    assert_int_equal(fired_ok, 1);
    devices_when_durable(&d, 11, on_fired, NULL);
    devices_fini(&d);
    assert_int_equal(fired, 3);
    assert_int_equal(fired_ok, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_and_failure),
        cmocka_unit_test(test_order_across_growth),
        cmocka_unit_test(test_removed_device),
        cmocka_unit_test(test_not_stored),
        cmocka_unit_test(test_fini_releases_pending),
        cmocka_unit_test(test_stage_then_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
