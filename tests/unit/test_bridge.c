/* tests/unit/test_bridge.c: the bridge's loop-side logic with an in-memory outbox port
 * and a fake upstream link (no paho, no storage): send window and id order, range
 * deletes after acks, resend from the oldest after a lost connection, drops when full
 * (QoS 0 first, then the overflow policy), reads of payloads not in memory, and
 * bridge.upstreams parsing errors and topic filter matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/alloc.h"
#include "gateway/bridge/bridge.h"
#include "protocols/mqtt/mqtt.h"
#include "gateway/bus.h"
#include "gateway/gw.h"

/* ---- in-memory outbox ---- */
#define MAXM 4096
struct mem_msg {
    bool live;
    uint64_t id;
    char device[32], topic[128];
    char payload[256];
    size_t len;
    uint8_t qos;
    int64_t ts;
};
static struct mem_msg store[MAXM];
static uint64_t seq;
static int ndel, nreads;
static uint64_t del_first[MAXM], del_last[MAXM];

/* A put of this id is not stored (its batch failed, or has not committed yet). */
static uint64_t unstored_id[2];
static uint64_t put_seq[MAXM];   /* the seq each id's put returned */

static uint64_t mem_put(void *ctx, const char *up, const struct outbox_msg *m)
{
    (void)ctx;
    (void)up;
    put_seq[m->id % MAXM] = seq + 1;
    if (m->id == unstored_id[0] || m->id == unstored_id[1])
        return ++seq;
    struct mem_msg *s = &store[m->id % MAXM];
    *s = (struct mem_msg){true, m->id, "", "", "", m->payload_len, m->qos, m->ts_ms};
    snprintf(s->device, sizeof s->device, "%s", m->device);
    snprintf(s->topic, sizeof s->topic, "%s", m->topic);
    memcpy(s->payload, m->payload, m->payload_len);
    return ++seq;
}

static uint64_t mem_del(void *ctx, const char *up, uint64_t first, uint64_t last)
{
    (void)ctx;
    (void)up;
    for (uint64_t i = first; i <= last; i++)
        store[i % MAXM].live = false;
    del_first[ndel] = first;
    del_last[ndel++] = last;
    return ++seq;
}

static int mem_load(void *ctx, const char *up, outbox_index_fn fn, void *fctx)
{
    (void)ctx;
    (void)up;
    for (size_t i = 0; i < MAXM; i++)
        if (store[i].live) {
            struct outbox_msg m = {store[i].id, store[i].device, store[i].topic, NULL,
                                   store[i].len, store[i].qos, store[i].ts};
            fn(fctx, &m);
        }
    return 0;
}

/* Reads answer when answer_read() says so (as from the work pool), not at once. */
static bool async_reads;
static struct {
    bool pending;
    uint64_t after;
    size_t max_msgs;
    outbox_read_fn fn;
    void *fctx;
} held_read;

static void answer_now(uint64_t after, size_t max_msgs, outbox_read_fn fn, void *fctx)
{
    struct outbox_msg out[64];
    size_t n = 0;
    for (uint64_t id = after + 1; id < MAXM && n < max_msgs && n < 64; id++)
        if (store[id].live)
            out[n++] = (struct outbox_msg){store[id].id, store[id].device, store[id].topic,
                                           store[id].payload, store[id].len, store[id].qos,
                                           store[id].ts};
    fn(fctx, 0, out, n);
}

/* Answers the read in flight; false when there is none. */
static bool answer_read(void)
{
    if (!held_read.pending)
        return false;
    held_read.pending = false;
    answer_now(held_read.after, held_read.max_msgs, held_read.fn, held_read.fctx);
    return true;
}

static int mem_read(void *ctx, const char *up, uint64_t after, size_t max_msgs, size_t max_bytes,
                    outbox_read_fn fn, void *fctx)
{
    struct outbox_msg out[64];
    size_t n = 0;
    (void)ctx;
    (void)up;
    (void)max_bytes;
    nreads++;
    if (async_reads) {
        assert_false(held_read.pending); /* one read at a time */
        held_read.pending = true;
        held_read.after = after;
        held_read.max_msgs = max_msgs;
        held_read.fn = fn;
        held_read.fctx = fctx;
        return 0;
    }
    for (uint64_t id = after + 1; id < MAXM && n < max_msgs && n < 64; id++)
        if (store[id].live)
            out[n++] = (struct outbox_msg){store[id].id, store[id].device, store[id].topic,
                                           store[id].payload, store[id].len, store[id].qos,
                                           store[id].ts};
    fn(fctx, 0, out, n); /* synchronous here; the real one answers from the work pool */
    return 0;
}

static const struct outbox_port port = {NULL, mem_put, mem_del, mem_load, mem_read};

/* ---- fake link ---- */
struct fake {
    const struct upstream_events *ev;
    void *ctx;
    uint64_t sent[MAXM];
    size_t nsent;
};
static struct fake *link_;

static void *fake_open(uv_loop_t *loop, const struct bridge_upstream_cfg *cfg,
                       const struct upstream_events *ev, void *ctx, char *err, size_t errlen)
{
    (void)loop;
    (void)cfg;
    (void)err;
    (void)errlen;
    link_ = xcalloc(1, sizeof *link_);
    link_->ev = ev;
    link_->ctx = ctx;
    return link_;
}
static void fake_connect(void *l) { (void)l; }
static int fake_subscribe(void *l, char *const *f, size_t n, uint8_t q)
{
    (void)l; (void)f; (void)n; (void)q;
    return 0;
}
static int fake_send(void *l, uint64_t tag, const char *topic, const void *p, size_t len,
                     uint8_t qos)
{
    struct fake *f = l;
    (void)topic; (void)p; (void)len; (void)qos;
    f->sent[f->nsent++] = tag;
    return 0;
}
static void fake_close(void *l) { (void)l; }
static void fake_free(void *l) { free(l); }
static const struct upstream_ops fake_ops = {fake_open, fake_connect, fake_subscribe,
                                             fake_send, fake_close, fake_free};

/* ---- fixture ---- */
static uv_loop_t loop;
static struct gw gw;
static struct bridge_cfg bcfg;

static struct bridge *setup(const char *json)
{
    char err[256];
    assert_int_equal(bridge_cfg_parse(json, &bcfg, err, sizeof err), 0);
    uv_loop_init(&loop);
    memset(&gw, 0, sizeof gw);
    gw.loop = &loop;
    gw.bus = bus_new();
    return bridge_new(&gw, &bcfg, &port, &fake_ops, NULL);
}

static void teardown(struct bridge *b)
{
    bridge_close(b);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&loop), 0);
    bridge_free(b);
    bus_free(gw.bus);
    bridge_cfg_fini(&bcfg);
    memset(store, 0, sizeof store);
    ndel = nreads = 0;
    async_reads = false;
    unstored_id[0] = unstored_id[1] = 0;
}

static void publish(struct bridge *b, const char *dev, int n)
{
    char topic[64], body[32];
    struct ticket t = {0, 0};
    snprintf(topic, sizeof topic, "devices/%s/telemetry", dev);
    snprintf(body, sizeof body, "{\"n\":%d}", n);
    struct msg *m = msg_new(MSG_TELEMETRY, dev, topic, body, strlen(body), NULL, 0);
    bridge_sink(b, m, &t);
    msg_unref(m);
}

static struct bridge_stats stats(struct bridge *b)
{
    struct bridge_stats s;
    bridge_get_stats(b, 0, &s);
    return s;
}

static void test_window_order_and_range_deletes(void **state)
{
    (void)state;
    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"max_inflight\":4}]");
    link_->ev->connected(link_->ctx, "tcp://h:1", false);
    for (int i = 0; i < 10; i++)
        publish(b, "d1", i);
    assert_int_equal(link_->nsent, 4); /* the window */
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(link_->sent[i], i + 1);
    /* acks out of order: nothing is deleted until the head is acked, then one range */
    link_->ev->delivered(link_->ctx, 2, true);
    link_->ev->delivered(link_->ctx, 3, true);
    assert_int_equal(ndel, 0);
    link_->ev->delivered(link_->ctx, 1, true);
    assert_int_equal(ndel, 1);
    assert_int_equal(del_first[0], 1);
    assert_int_equal(del_last[0], 3);
    assert_int_equal(link_->nsent, 7);
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(link_->sent[i], i + 1); /* id order */
    assert_int_equal(stats(b).backlog, 7);
    assert_int_equal(stats(b).acked_total, 3);
    teardown(b);
}

static void test_resend_after_lost(void **state)
{
    (void)state;
    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"max_inflight\":3,"
                             "\"drain_rate\":0}]");
    link_->ev->connected(link_->ctx, "tcp://h:1", false);
    for (int i = 0; i < 5; i++)
        publish(b, "d1", i);
    link_->ev->delivered(link_->ctx, 1, true);
    assert_int_equal(link_->nsent, 4); /* 1..4 */
    link_->ev->lost(link_->ctx, "test");
    assert_false(stats(b).connected);
    assert_int_equal(stats(b).inflight, 0);
    link_->nsent = 0;
    link_->ev->connected(link_->ctx, "tcp://h:1", false);
    /* everything unacked again, from the oldest */
    assert_int_equal(link_->nsent, 3);
    assert_int_equal(link_->sent[0], 2);
    assert_int_equal(link_->sent[1], 3);
    assert_int_equal(link_->sent[2], 4);
    assert_int_equal(stats(b).resent_total, 3);
    assert_int_equal(stats(b).reconnects_total, 1);
    /* a late ack of paho's own retransmission still counts, a second one is ignored */
    link_->ev->delivered(link_->ctx, 2, true);
    link_->ev->delivered(link_->ctx, 2, true);
    assert_int_equal(stats(b).acked_total, 2);
    teardown(b);
}

static void test_drops_full(void **state)
{
    (void)state;
    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],"
                             "\"max_backlog_messages\":3}]");
    for (int i = 0; i < 5; i++)
        publish(b, "d1", i);
    assert_int_equal(stats(b).backlog, 3);
    assert_int_equal(stats(b).dropped_full, 2);
    assert_false(store[1].live); /* drop_oldest: 1 and 2 went */
    assert_false(store[2].live);
    assert_true(store[5].live);
    teardown(b);

    b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"max_backlog_messages\":3,"
              "\"overflow\":\"drop_newest\"}]");
    for (int i = 0; i < 5; i++)
        publish(b, "d1", i);
    assert_int_equal(stats(b).backlog, 3);
    assert_int_equal(stats(b).dropped_full, 2);
    assert_true(store[1].live);
    assert_false(store[4].live); /* never entered */
    teardown(b);
}

static void test_restart_reads_back(void **state)
{
    (void)state;
    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"drain_rate\":0}]");
    for (int i = 0; i < 6; i++)
        publish(b, i % 2 ? "a" : "b", i);
    bridge_close(b);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&loop), 0);
    bridge_free(b);
    bus_free(gw.bus);
    bridge_cfg_fini(&bcfg);
    /* a new bridge over the same outbox: the index comes back, payloads are read */
    b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"drain_rate\":0}]");
    assert_int_equal(stats(b).backlog, 6);
    link_->ev->connected(link_->ctx, "tcp://h:1", true);
    assert_true(nreads >= 1);
    assert_int_equal(link_->nsent, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(link_->sent[i], i + 1);
    publish(b, "c", 7); /* the next id follows the stored ones */
    assert_int_equal(link_->sent[6], 7);
    teardown(b);
}

/* Acks everything sent so far and answers the read in flight, rounds times or until
 * nothing moves; returns the rounds in which something moved. */
static int drain(size_t *acked, int rounds)
{
    int moved = 0;
    for (int r = 0; r < rounds; r++) {
        bool any = answer_read();
        while (*acked < link_->nsent) {
            link_->ev->delivered(link_->ctx, link_->sent[(*acked)++], true);
            any = true;
        }
        if (!any)
            break;
        moved++;
    }
    return moved;
}

static bool was_sent(uint64_t id)
{
    for (size_t i = 0; i < link_->nsent; i++)
        if (link_->sent[i] == id)
            return true;
    return false;
}

/* A storage batch that failed took an outbox row with it while its entry stayed in the
 * index (without a payload, to be read back): once storage has reported that write, the
 * drain drops the entry instead of reading it again forever; a write not reported yet
 * is waited for (one read per tick, no read loop) and is sent once it commits. */
static void test_missing_row_dropped(void **state)
{
    (void)state;
    const int N = 2100; /* past half the read-ahead: the last ones enter without payload */
    const uint64_t failed = 2070, late = 2080;
    size_t acked = 0;
    int reads;

    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"drain_rate\":0,"
                             "\"max_inflight\":64}]");
    unstored_id[0] = failed;
    unstored_id[1] = late;
    async_reads = true;
    for (int i = 0; i < N; i++)
        publish(b, "d1", i);
    assert_int_equal(stats(b).backlog, N);
    gw.durable_seq = put_seq[late] - 1; /* the failed write was reported, the late one not */
    link_->ev->connected(link_->ctx, "tcp://h:1", false);
    drain(&acked, 10000);
    assert_false(was_sent(failed));
    assert_true(was_sent(failed - 1));
    assert_false(was_sent(late)); /* not committed yet: waited for, not dropped */
    assert_int_equal(stats(b).backlog, N - (int)late + 1);
    reads = nreads;
    assert_int_equal(drain(&acked, 100), 0); /* no read loop while it waits */
    assert_int_equal(nreads, reads);
    bridge_tick(b); /* the tick reads again: still not there */
    assert_true(answer_read());
    assert_int_equal(stats(b).backlog, N - (int)late + 1);
    /* it commits */
    unstored_id[1] = 0;
    store[late] = (struct mem_msg){true, late, "d1", "devices/d1/telemetry", "{}", 2, 1, 0};
    gw.durable_seq = seq;
    bridge_tick(b);
    drain(&acked, 10000);
    assert_true(was_sent(late));
    assert_int_equal(stats(b).backlog, 0);
    assert_int_equal(stats(b).inflight, 0);
    assert_false(held_read.pending);
    teardown(b);
}

/* MQTT 5: a refused message (PUBACK >= 0x80) leaves the outbox at once, counted per code,
 * and the window goes on; a second copy's answer is ignored; the reason codes of
 * CONNACK and DISCONNECT are kept for the status. */
static void test_refused(void **state)
{
    (void)state;
    struct bridge *b = setup("[{\"name\":\"u\",\"addresses\":[\"tcp://h:1\"],\"protocol\":5,"
                             "\"max_inflight\":2}]");
    struct buf js;
    assert_int_equal(stats(b).connack.code, -1);
    link_->ev->reason(link_->ctx, UPSTREAM_CONNACK, 0, "Success", NULL);
    link_->ev->connected(link_->ctx, "tcp://h:1", false);
    for (int i = 0; i < 4; i++)
        publish(b, "d1", i);
    assert_int_equal(link_->nsent, 2);
    link_->ev->refused(link_->ctx, 1, 0x87, "Not authorized", "denied by ACL");
    link_->ev->refused(link_->ctx, 1, 0x87, "Not authorized", NULL); /* a second copy's */
    assert_int_equal(link_->nsent, 3);                                /* the window moved on */
    assert_false(store[1].live); /* out of the outbox */
    assert_true(store[2].live);
    link_->ev->delivered(link_->ctx, 2, true);
    link_->ev->refused(link_->ctx, 3, 0x97, "Quota exceeded", NULL);
    assert_int_equal(link_->nsent, 4);
    link_->ev->delivered(link_->ctx, 4, true);
    assert_int_equal(stats(b).backlog, 0);
    assert_int_equal(stats(b).inflight, 0);
    assert_int_equal(stats(b).acked_total, 2);
    assert_int_equal(stats(b).dropped_refused, 2);
    assert_int_equal(stats(b).refused_by[0x87], 1);
    assert_int_equal(stats(b).refused_by[0x97], 1);
    assert_int_equal(stats(b).refused.code, 0x97);
    assert_string_equal(stats(b).refused_topic, "devices/d1/telemetry");
    link_->ev->reason(link_->ctx, UPSTREAM_DISCONNECT, 0x8B, "Server shutting down", "bye");
    link_->ev->lost(link_->ctx, "disconnected by the upstream");
    assert_int_equal(stats(b).disconnect.code, 0x8B);
    assert_string_equal(stats(b).disconnect.reason_string, "bye");
    assert_string_equal(stats(b).protocol, "5");
    buf_init(&js);
    bridge_write_json(b, &js);
    if (!strstr(buf_cstr(&js), "\"dropped\":{\"full\":0,\"age\":0,\"refused\":2}") ||
        !strstr(buf_cstr(&js), "\"refused\":{\"0x87\":1,\"0x97\":1}") ||
        !strstr(buf_cstr(&js), "\"disconnect\":{\"code\":139,\"hex\":\"0x8B\","
                               "\"name\":\"Server shutting down\",\"reason_string\":\"bye\"}") ||
        !strstr(buf_cstr(&js), "\"connack\":{\"code\":0,"))
        fail_msg("%s", buf_cstr(&js));
    buf_fini(&js);
    teardown(b);
}

static void test_cfg_protocol(void **state)
{
    struct bridge_cfg c;
    char err[256];
    (void)state;
    static const char *const bad[] = {
        "[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"protocol\":\"4\"}]",
        "[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"protocol\":3}]",
        "[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"protocol\":true}]",
        "[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"session_expiry_s\":5}]",
        "[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"protocol\":5,"
        "\"session_expiry_s\":4294967296}]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(bridge_cfg_parse(bad[i], &c, err, sizeof err), 0);
        if (!strstr(err, "\"a\" (#0): protocol:") && !strstr(err, "\"a\" (#0): session_expiry_s:"))
            fail_msg("%s: %s", bad[i], err);
    }
    assert_int_equal(bridge_cfg_parse("[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"]}]", &c,
                                      err, sizeof err), 0);
    assert_int_equal(c.ups[0].protocol, 4);
    bridge_cfg_fini(&c);
    assert_int_equal(bridge_cfg_parse("[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],"
                                      "\"protocol\":\"5.0\"}]", &c, err, sizeof err), 0);
    assert_int_equal(c.ups[0].protocol, 5);
    assert_int_equal(c.ups[0].session_expiry_s, 3600);
    bridge_cfg_fini(&c);
    assert_int_equal(bridge_cfg_parse("[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],"
                                      "\"protocol\":5,\"clean_session\":true}]", &c, err,
                                      sizeof err), 0);
    assert_int_equal(c.ups[0].session_expiry_s, 0);
    bridge_cfg_fini(&c);
    assert_int_equal(bridge_cfg_parse("[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],"
                                      "\"protocol\":\"5\",\"session_expiry_s\":4294967295}]", &c,
                                      err, sizeof err), 0);
    assert_int_equal(c.ups[0].session_expiry_s, 4294967295u);
    bridge_cfg_fini(&c);
}

static void test_cfg_errors(void **state)
{
    struct bridge_cfg c;
    char err[256];
    (void)state;
    static const struct {
        const char *json, *want;
    } bad[] = {
        {"{}", "must be a JSON array"},
        {"[{\"addresses\":[\"tcp://h:1\"]}]", "name"},
        {"[{\"name\":\"a b\",\"addresses\":[\"tcp://h:1\"]}]", "name"},
        {"[{\"name\":\"a\"}]", "addresses"},
        {"[{\"name\":\"a\",\"addresses\":[\"mqtt://h:1\"]}]", "addresses"},
        {"[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"x\":1}]", "\"a\" (#0): x: unknown key"},
        {"[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"qos\":3}]", "qos"},
        {"[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"],\"forward\":[\"a/#/b\"]}]", "forward"},
        {"[{\"name\":\"a\",\"addresses\":[\"tcp://h:1\"]},{\"name\":\"a\",\"addresses\":"
         "[\"tcp://h:1\"]}]", "another upstream"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(bridge_cfg_parse(bad[i].json, &c, err, sizeof err), 0);
        if (!strstr(err, bad[i].want))
            fail_msg("%s: %s (want %s)", bad[i].json, err, bad[i].want);
    }
    assert_int_equal(bridge_cfg_parse("[{\"name\":\"a\",\"addresses\":[\"ssl://h:8883\"]}]", &c,
                                      err, sizeof err), 0);
    assert_string_equal(c.ups[0].client_id, "gale-a");
    assert_string_equal(c.ups[0].forward[0], "devices/+/telemetry");
    assert_int_equal(c.ups[0].qos, 1);
    assert_false(c.ups[0].clean_session);
    bridge_cfg_fini(&c);
}

/* The forward filters go through the MQTT codec's matcher: the cases the bridge relies on. */
static bool topic_match(const char *filter, const char *topic)
{
    return mqtt_topic_matches(filter, strlen(filter), topic, strlen(topic)) != 0;
}

static void test_topic_match(void **state)
{
    (void)state;
    assert_true(topic_match("devices/+/telemetry", "devices/d1/telemetry"));
    assert_false(topic_match("devices/+/telemetry", "devices/d1/x"));
    assert_false(topic_match("devices/+/telemetry", "devices/d1/telemetry/x"));
    assert_true(topic_match("a/#", "a"));
    assert_true(topic_match("a/#", "a/b/c"));
    assert_true(topic_match("#", "x/y"));
    assert_false(topic_match("#", "$SYS/x"));
    assert_false(topic_match("a/b", "a/bc"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_order_and_range_deletes),
        cmocka_unit_test(test_resend_after_lost),
        cmocka_unit_test(test_drops_full),
        cmocka_unit_test(test_restart_reads_back),
        cmocka_unit_test(test_missing_row_dropped),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_cfg_protocol),
        cmocka_unit_test(test_cfg_errors),
        cmocka_unit_test(test_topic_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
