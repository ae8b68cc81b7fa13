/* tests/unit/test_mqtt_router.c: topic names and filters (protocols/mqtt/topic.c) and the
 * subscription trie (router.c).
 *
 * The matching table comes from the examples of MQTT 3.1.1 §4.7; every row is checked
 * with mqtt_topic_matches() and through a router, and a seeded random test compares the
 * router with mqtt_topic_matches() over many filters, topics and unsubscribes. The
 * router's own contract: one delivery per subscriber with its highest QoS, replace on
 * re-subscribe, pruning, remove_all, list, and a 100k-subscription build (correctness
 * only; bench_mqtt_router measures speed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/err.h"
#include "protocols/mqtt/mqtt.h"
#include "protocols/mqtt/mqtt_int.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define S(s) (s), strlen(s)
#define SUB(i) ((void *)(uintptr_t)(i))
#define MAX_SUBS 100001

/* What a match delivered: qos per subscriber (index = (uintptr_t)sub), -1 = nothing. */
struct got {
    int qos[MAX_SUBS];
    uint32_t opts[MAX_SUBS];
    size_t calls;
    int dup;                /* a subscriber was reported twice */
};

static void on_match(void *ctx, void *sub, uint8_t qos, uint32_t opts)
{
    struct got *g = ctx;
    uintptr_t i = (uintptr_t)sub;

    assert_true(i < MAX_SUBS);
    if (g->qos[i] >= 0)
        g->dup = 1;
    g->qos[i] = qos;
    g->opts[i] = opts;
    g->calls++;
}

static struct got *got_new(void)
{
    struct got *g = malloc(sizeof *g);
    size_t i;

    for (i = 0; i < MAX_SUBS; i++)
        g->qos[i] = -1;
    g->calls = 0;
    g->dup = 0;
    return g;
}

static void got_reset(struct got *g, size_t upto)
{
    size_t i;

    for (i = 0; i < upto && i < MAX_SUBS; i++)
        g->qos[i] = -1;
    g->calls = 0;
    g->dup = 0;
}

static size_t match(struct mqtt_router *r, const char *topic, struct got *g)
{
    size_t n;

    got_reset(g, 256);
    n = mqtt_router_match(r, S(topic), on_match, g);
    assert_int_equal(n, g->calls);
    assert_false(g->dup);
    return n;
}

/* ---- validation */

struct valid_case {
    const char *s;
    int topic;  /* valid as a topic name */
    int filter; /* valid as a topic filter */
};

static void test_topic_and_filter_validity(void **state)
{
    static const struct valid_case cases[] = {
        { "sport/tennis/player1", 1, 1 },
        { "sport/tennis/player1/#", 0, 1 },
        { "sport/#", 0, 1 },
        { "#", 0, 1 },
        { "sport/tennis#", 0, 0 },
        { "sport/tennis/#/ranking", 0, 0 },
        { "+", 0, 1 },
        { "+/tennis/#", 0, 1 },
        { "sport+", 0, 0 },
        { "sport/+/player1", 0, 1 },
        { "/+", 0, 1 },
        { "+/+", 0, 1 },
        { "++", 0, 0 },
        { "+#", 0, 0 },
        { "#+", 0, 0 },
        { "a/#/", 0, 0 },
        { "/#", 0, 1 },
        { "//", 1, 1 },
        { "/", 1, 1 },
        { "/finance", 1, 1 },
        { "a//b", 1, 1 },
        { "$SYS/monitor/Clients", 1, 1 },
        { "$SYS/#", 0, 1 },
        { "Accounts payable", 1, 1 },
        { " ", 1, 1 },
        { "", 0, 0 },
        { "a/b\xc3\xa9", 1, 1 },
        { "a/\xc3", 0, 0 },
        { "a/\xed\xa0\x80", 0, 0 },
    };
    size_t i;

    (void)state;
    for (i = 0; i < N(cases); i++) {
        if (mqtt_topic_valid(S(cases[i].s)) != cases[i].topic)
            fail_msg("topic \"%s\": want %d", cases[i].s, cases[i].topic);
        if (mqtt_filter_valid(S(cases[i].s)) != cases[i].filter)
            fail_msg("filter \"%s\": want %d", cases[i].s, cases[i].filter);
    }
    /* An embedded U+0000 and the 65535-byte limit. */
    assert_false(mqtt_topic_valid("a\0b", 3));
    assert_false(mqtt_filter_valid("a\0b", 3));
    {
        char *big = malloc(65536);
        memset(big, 'a', 65536);
        assert_true(mqtt_topic_valid(big, 65535));
        assert_false(mqtt_topic_valid(big, 65536));
        assert_true(mqtt_filter_valid(big, 65535));
        assert_false(mqtt_filter_valid(big, 65536));
        free(big);
    }
}

/* ---- matching: the spec's examples, and the corners around empty levels and '$' */

struct match_case {
    const char *filter, *topic;
    int match;
};

static const struct match_case match_cases[] = {
    /* 4.7.1.2 multi-level wildcard */
    { "sport/tennis/player1/#", "sport/tennis/player1", 1 },
    { "sport/tennis/player1/#", "sport/tennis/player1/ranking", 1 },
    { "sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", 1 },
    { "sport/tennis/player1/#", "sport/tennis/player2", 0 },
    { "sport/tennis/player1/#", "sport/tennis", 0 },
    { "sport/#", "sport", 1 },
    { "sport/#", "sport/", 1 },
    { "sport/#", "sports", 0 },
    { "#", "sport", 1 },
    { "#", "/", 1 },
    { "#", "/finance", 1 },
    { "#", "a//b", 1 },
    /* 4.7.1.3 single-level wildcard */
    { "sport/tennis/+", "sport/tennis/player1", 1 },
    { "sport/tennis/+", "sport/tennis/player2", 1 },
    { "sport/tennis/+", "sport/tennis/player1/ranking", 0 },
    { "sport/+", "sport", 0 },
    { "sport/+", "sport/", 1 },
    { "+", "sport", 1 },
    { "+", "/finance", 0 },
    { "+/+", "/finance", 1 },
    { "/+", "/finance", 1 },
    { "+/+", "/", 1 },
    { "+", "/", 0 },
    { "/#", "/", 1 },
    { "sport/+/player1", "sport/tennis/player1", 1 },
    { "sport/+/player1", "sport//player1", 1 },
    { "sport/+/player1", "sport/tennis/player2", 0 },
    { "+/tennis/#", "sport/tennis/player1/ranking", 1 },
    { "+/tennis/#", "sport/tennis", 1 },
    { "+/tennis/#", "sport/golf", 0 },
    /* empty levels */
    { "a//b", "a//b", 1 },
    { "a/+/b", "a//b", 1 },
    { "a/b", "a//b", 0 },
    { "+/+/+", "a//b", 1 },
    { "+/+", "a//b", 0 },
    { "a/#", "a//b", 1 },
    { "//", "//", 1 },
    { "+/+/+", "//", 1 },
    { "/", "/", 1 },
    { "/", "//", 0 },
    { "/finance", "/finance", 1 },
    { "/finance", "finance", 0 },
    { "finance", "/finance", 0 },
    /* 4.7.2 topics beginning with $ */
    { "#", "$SYS/monitor/Clients", 0 },
    { "+/monitor/Clients", "$SYS/monitor/Clients", 0 },
    { "$SYS/#", "$SYS/monitor/Clients", 1 },
    { "$SYS/monitor/+", "$SYS/monitor/Clients", 1 },
    { "$SYS/#", "$SYS", 1 },
    { "+", "$SYS", 0 },
    { "#", "$", 0 },
    { "+/#", "$SYS/x", 0 },
    { "a/#", "a/$b", 1 },
    { "a/+", "a/$b", 1 },
    { "+/$b", "a/$b", 1 },
    /* exact, case sensitive, no trimming */
    { "ACCOUNTS", "Accounts", 0 },
    { "Accounts payable", "Accounts payable", 1 },
    { "a", "a ", 0 },
    { "a/b/c", "a/b", 0 },
    { "a/b", "a/b/c", 0 },
    { "a/+", "a/b/c", 0 },
    { "a/+/+", "a/b/c", 1 },
};

static void test_topic_matches_table(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < N(match_cases); i++) {
        const struct match_case *c = &match_cases[i];
        assert_true(mqtt_filter_valid(S(c->filter)));
        assert_true(mqtt_topic_valid(S(c->topic)));
        if (mqtt_topic_matches(S(c->filter), S(c->topic)) != c->match)
            fail_msg("matches(\"%s\", \"%s\"): want %d", c->filter, c->topic, c->match);
    }
}

/* Each row through a router holding only that filter, then all filters at once. */
static void test_router_matches_table(void **state)
{
    struct got *g = got_new();
    struct mqtt_router *all = mqtt_router_new();
    size_t i, j;

    (void)state;
    for (i = 0; i < N(match_cases); i++) {
        const struct match_case *c = &match_cases[i];
        struct mqtt_router *r = mqtt_router_new();
        assert_int_equal(mqtt_router_subscribe(r, S(c->filter), SUB(1), 1), 1);
        if (match(r, c->topic, g) != (size_t)c->match)
            fail_msg("router(\"%s\", \"%s\"): want %d", c->filter, c->topic, c->match);
        mqtt_router_free(r);
        /* Same filter listed twice in the table: one subscription. */
        mqtt_router_subscribe(all, S(c->filter), SUB(i + 1), 0);
    }
    for (i = 0; i < N(match_cases); i++) {
        size_t want = 0;
        match(all, match_cases[i].topic, g);
        for (j = 0; j < N(match_cases); j++) {
            int m = mqtt_topic_matches(S(match_cases[j].filter), S(match_cases[i].topic));
            want += m;
            if ((g->qos[j + 1] >= 0) != m)
                fail_msg("all: \"%s\" on \"%s\": want %d", match_cases[j].filter,
                         match_cases[i].topic, m);
        }
        assert_int_equal(g->calls, want);
    }
    mqtt_router_free(all);
    free(g);
}

/* ---- the router's contract */

static void test_overlapping_filters_deliver_once_with_max_qos(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();

    (void)state;
    assert_int_equal(mqtt_router_subscribe(r, S("a/b"), SUB(1), 0), 1);
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(1), 2), 1);
    assert_int_equal(mqtt_router_subscribe(r, S("#"), SUB(1), 1), 1);
    assert_int_equal(mqtt_router_subscribe(r, S("a/#"), SUB(1), 0), 1);
    assert_int_equal(mqtt_router_subscribe_opts(r, S("a/b"), SUB(2), 1, 0xabc), 1);
    assert_int_equal(mqtt_router_subscribe(r, S("+/+"), SUB(3), 0), 1);
    assert_int_equal(mqtt_router_count(r), 6);
    assert_int_equal(mqtt_router_subscriber_count(r), 3);

    assert_int_equal(match(r, "a/b", g), 3);
    assert_int_equal(g->qos[1], 2);
    assert_int_equal(g->qos[2], 1);
    assert_int_equal(g->opts[2], 0xabc);
    assert_int_equal(g->qos[3], 0);

    assert_int_equal(match(r, "a", g), 1); /* "#" and "a/#" */
    assert_int_equal(g->qos[1], 1);

    assert_int_equal(match(r, "x/y/z", g), 1);
    assert_int_equal(g->qos[1], 1);

    /* Dropping the QoS 2 filter lowers the delivery to the next best. */
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/+"), SUB(1)), 1);
    assert_int_equal(match(r, "a/b", g), 3);
    assert_int_equal(g->qos[1], 1);
    mqtt_router_free(r);
    free(g);
}

static void test_resubscribe_replaces_qos(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();

    (void)state;
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(1), 0), 1);
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(1), 2), 0);
    assert_int_equal(mqtt_router_count(r), 1);
    assert_int_equal(match(r, "a/x", g), 1);
    assert_int_equal(g->qos[1], 2);
    assert_int_equal(mqtt_router_subscribe_opts(r, S("a/+"), SUB(1), 1, 7), 0);
    assert_int_equal(match(r, "a/x", g), 1);
    assert_int_equal(g->qos[1], 1);
    assert_int_equal(g->opts[1], 7);
    /* Another subscriber on the same filter is a new subscription. */
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(2), 0), 1);
    assert_int_equal(mqtt_router_count(r), 2);
    mqtt_router_free(r);
    free(g);
}

static void test_granted(void **state)
{
    struct mqtt_router *r = mqtt_router_new();

    (void)state;
    assert_int_equal(mqtt_router_granted(r, S("a/+"), SUB(1)), -1);
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(1), 2), 1);
    assert_int_equal(mqtt_router_granted(r, S("a/+"), SUB(1)), 2);
    assert_int_equal(mqtt_router_subscribe(r, S("a/+"), SUB(1), 0), 0);
    assert_int_equal(mqtt_router_granted(r, S("a/+"), SUB(1)), 0);
    /* exactly this filter and this subscriber: no matching, no prefix */
    assert_int_equal(mqtt_router_granted(r, S("a/b"), SUB(1)), -1);
    assert_int_equal(mqtt_router_granted(r, S("a"), SUB(1)), -1);
    assert_int_equal(mqtt_router_granted(r, S("a/+"), SUB(2)), -1);
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/+"), SUB(1)), 1);
    assert_int_equal(mqtt_router_granted(r, S("a/+"), SUB(1)), -1);
    mqtt_router_free(r);
}

static void test_invalid_subscriptions(void **state)
{
    static const char *const bad[] = { "", "a#", "a/#/b", "sport+", "+a", "a/\xff" };
    struct mqtt_router *r = mqtt_router_new();
    size_t i;

    (void)state;
    for (i = 0; i < N(bad); i++)
        assert_int_equal(mqtt_router_subscribe(r, S(bad[i]), SUB(1), 0), GW_EINVAL);
    assert_int_equal(mqtt_router_subscribe(r, S("a"), NULL, 0), GW_EINVAL);
    assert_int_equal(mqtt_router_subscribe(r, S("a"), SUB(1), 3), GW_EINVAL);
    assert_int_equal(mqtt_router_count(r), 0);
    assert_int_equal(mqtt_router_node_count(r), 0);
    assert_int_equal(mqtt_router_unsubscribe(r, S("a"), SUB(1)), 0);
    assert_int_equal(mqtt_router_unsubscribe(r, "", 0, SUB(1)), 0);
    assert_int_equal(mqtt_router_remove_all(r, SUB(1)), 0);
    assert_int_equal(mqtt_router_match(r, "", 0, on_match, NULL), 0);
    mqtt_router_free(r);
}

static void test_unsubscribe_prunes(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();

    (void)state;
    mqtt_router_subscribe(r, S("a/b/c"), SUB(1), 0);
    mqtt_router_subscribe(r, S("a/b"), SUB(1), 0);
    mqtt_router_subscribe(r, S("a/+/#"), SUB(2), 0);
    mqtt_router_subscribe(r, S("/finance"), SUB(2), 0);
    /* a, b, c, +, # (under +), "", finance */
    assert_int_equal(mqtt_router_node_count(r), 7);

    assert_int_equal(mqtt_router_unsubscribe(r, S("a/b/c"), SUB(2)), 0); /* not its */
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/b/c/d"), SUB(1)), 0);
    assert_int_equal(mqtt_router_unsubscribe(r, S("a"), SUB(1)), 0);     /* inner node */
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/b/c"), SUB(1)), 1);
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/b/c"), SUB(1)), 0);
    assert_int_equal(mqtt_router_node_count(r), 6);
    assert_int_equal(match(r, "a/b/c", g), 1); /* a/+/# only */
    assert_int_equal(g->qos[2], 0);

    assert_int_equal(mqtt_router_unsubscribe(r, S("a/b"), SUB(1)), 1);
    assert_int_equal(mqtt_router_node_count(r), 5); /* b went with it */
    assert_int_equal(mqtt_router_subscriber_count(r), 1);
    assert_int_equal(mqtt_router_unsubscribe(r, S("a/+/#"), SUB(2)), 1);
    assert_int_equal(mqtt_router_node_count(r), 2);
    assert_int_equal(match(r, "a/b", g), 0);
    assert_int_equal(mqtt_router_unsubscribe(r, S("/finance"), SUB(2)), 1);
    assert_int_equal(mqtt_router_node_count(r), 0);
    assert_int_equal(mqtt_router_count(r), 0);
    assert_int_equal(mqtt_router_subscriber_count(r), 0);
    assert_int_equal(match(r, "/finance", g), 0);
    /* The router is reusable after being emptied. */
    assert_int_equal(mqtt_router_subscribe(r, S("/finance"), SUB(3), 1), 1);
    assert_int_equal(match(r, "/finance", g), 1);
    mqtt_router_free(r);
    free(g);
}

struct listed {
    char text[512]; /* "filter:qos:opts," in list order, sorted by the test */
    size_t n;
};

static void on_list(void *ctx, const char *filter, size_t len, uint8_t qos, uint32_t opts)
{
    struct listed *l = ctx;
    size_t used = strlen(l->text);

    snprintf(l->text + used, sizeof l->text - used, "%.*s:%u:%u,", (int)len, filter, qos, opts);
    l->n++;
}

static void test_remove_all_and_list(void **state)
{
    static const char *const filters[] = { "#", "/finance", "a//b", "+/+", "a/+/c/#", "a" };
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();
    struct listed l = { "", 0 };
    size_t i;

    (void)state;
    for (i = 0; i < N(filters); i++)
        assert_int_equal(mqtt_router_subscribe_opts(r, S(filters[i]), SUB(1), i % 3, (uint32_t)i),
                         1);
    mqtt_router_subscribe(r, S("a"), SUB(2), 1);
    mqtt_router_subscribe(r, S("a//b"), SUB(3), 2);

    assert_int_equal(mqtt_router_list(r, SUB(1), on_list, &l), N(filters));
    assert_int_equal(l.n, N(filters));
    for (i = 0; i < N(filters); i++) {
        char item[64];
        snprintf(item, sizeof item, "%s:%zu:%zu,", filters[i], i % 3, i);
        if (!strstr(l.text, item))
            fail_msg("list lacks %s in %s", item, l.text);
    }
    assert_int_equal(mqtt_router_list(r, SUB(9), on_list, &l), 0);

    assert_int_equal(mqtt_router_remove_all(r, SUB(1)), N(filters));
    assert_int_equal(mqtt_router_remove_all(r, SUB(1)), 0);
    assert_int_equal(mqtt_router_count(r), 2);
    assert_int_equal(mqtt_router_subscriber_count(r), 2);
    assert_int_equal(mqtt_router_node_count(r), 3); /* a, "" below it, b */
    assert_int_equal(match(r, "a", g), 1);
    assert_int_equal(g->qos[2], 1);
    assert_int_equal(match(r, "a//b", g), 1);
    assert_int_equal(g->qos[3], 2);
    assert_int_equal(match(r, "x", g), 0);
    assert_int_equal(mqtt_router_remove_all(r, SUB(2)), 1);
    assert_int_equal(mqtt_router_remove_all(r, SUB(3)), 1);
    assert_int_equal(mqtt_router_node_count(r), 0);
    mqtt_router_free(r);
    free(g);
}

/* The callback may change subscriptions: the lookup is finished when it runs. */
struct unsub_ctx {
    struct mqtt_router *r;
    size_t calls;
};

static void on_match_unsubscribe(void *ctx, void *sub, uint8_t qos, uint32_t opts)
{
    struct unsub_ctx *u = ctx;

    (void)qos;
    (void)opts;
    u->calls++;
    mqtt_router_remove_all(u->r, sub);
}

static void test_callback_may_unsubscribe(void **state)
{
    struct unsub_ctx u = { mqtt_router_new(), 0 };
    uintptr_t i;

    (void)state;
    for (i = 1; i <= 100; i++) {
        mqtt_router_subscribe(u.r, S("t/+"), SUB(i), 0);
        mqtt_router_subscribe(u.r, S("t/#"), SUB(i), 1);
    }
    assert_int_equal(mqtt_router_match(u.r, S("t/x"), on_match_unsubscribe, &u), 100);
    assert_int_equal(u.calls, 100);
    assert_int_equal(mqtt_router_count(u.r), 0);
    assert_int_equal(mqtt_router_node_count(u.r), 0);
    mqtt_router_free(u.r);
}

/* ---- random differential test: router vs mqtt_topic_matches() */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static void random_levels(char *out, size_t cap, int filter)
{
    static const char *const levels[] = { "a", "b", "", "$s", "ab", "+", "#" };
    size_t n = 1 + rnd(4), i, len = 0;

    out[0] = '\0';
    for (i = 0; i < n; i++) {
        const char *lv = levels[rnd(filter ? 7 : 5)];
        if (lv[0] == '#' && i + 1 != n)
            lv = "+";
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "/" : "", lv);
    }
    if (len == 0) /* one empty level: not a valid name or filter; "/" is two */
        snprintf(out, cap, "/");
}

#define RFILTERS 60
#define RSUBS 8

static void test_random_against_reference(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();
    char filters[RFILTERS][64];
    int held[RFILTERS][RSUBS + 1]; /* granted qos, -1 = not subscribed */
    int round, k, s;

    (void)state;
    for (k = 0; k < RFILTERS; k++) {
        random_levels(filters[k], sizeof filters[k], 1);
        for (s = 0; s <= RSUBS; s++)
            held[k][s] = -1;
    }
    for (round = 0; round < 20000; round++) {
        int op = (int)rnd(10);
        k = (int)rnd(RFILTERS);
        s = 1 + (int)rnd(RSUBS);
        if (op < 4) {
            int q = (int)rnd(3);
            int rc = mqtt_router_subscribe(r, S(filters[k]), SUB(s), (uint8_t)q);
            /* The same text may appear twice among the random filters. */
            int existed = 0, k2;
            for (k2 = 0; k2 < RFILTERS; k2++)
                if (strcmp(filters[k2], filters[k]) == 0 && held[k2][s] >= 0)
                    existed = 1;
            assert_int_equal(rc, existed ? 0 : 1);
            for (k2 = 0; k2 < RFILTERS; k2++)
                if (strcmp(filters[k2], filters[k]) == 0)
                    held[k2][s] = q;
        } else if (op < 6) {
            int rc = mqtt_router_unsubscribe(r, S(filters[k]), SUB(s)), k2;
            assert_int_equal(rc, held[k][s] >= 0);
            for (k2 = 0; k2 < RFILTERS; k2++)
                if (strcmp(filters[k2], filters[k]) == 0)
                    held[k2][s] = -1;
        } else if (op == 6 && rnd(20) == 0) {
            mqtt_router_remove_all(r, SUB(s));
            for (k = 0; k < RFILTERS; k++)
                held[k][s] = -1;
        } else {
            char topic[64];
            int want[RSUBS + 1];
            random_levels(topic, sizeof topic, 0);
            for (s = 0; s <= RSUBS; s++)
                want[s] = -1;
            for (k = 0; k < RFILTERS; k++)
                if (mqtt_topic_matches(S(filters[k]), S(topic)))
                    for (s = 1; s <= RSUBS; s++)
                        if (held[k][s] > want[s])
                            want[s] = held[k][s];
            match(r, topic, g);
            for (s = 1; s <= RSUBS; s++)
                if (g->qos[s] != want[s])
                    fail_msg("round %d topic \"%s\" sub %d: got %d want %d", round, topic, s,
                             g->qos[s], want[s]);
        }
    }
    for (s = 1; s <= RSUBS; s++)
        mqtt_router_remove_all(r, SUB(s));
    assert_int_equal(mqtt_router_count(r), 0);
    assert_int_equal(mqtt_router_node_count(r), 0);
    mqtt_router_free(r);
    free(g);
}

/* ---- 100k subscriptions (correctness only) */

#define BIG 100000

static void test_100k_subscriptions(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();
    char f[64];
    size_t i, k;

    (void)state;
    /* Subscriber i (1-based) holds one filter of shape i % 3. */
    for (i = 1; i <= BIG; i++) {
        int n;
        switch (i % 3) {
        case 0: n = snprintf(f, sizeof f, "devices/%zu/telemetry", i); break;
        case 1: n = snprintf(f, sizeof f, "devices/+/status"); break;
        default: n = snprintf(f, sizeof f, "devices/%zu/#", i); break;
        }
        assert_int_equal(mqtt_router_subscribe(r, f, (size_t)n, SUB(i), (uint8_t)(i % 3)), 1);
    }
    assert_int_equal(mqtt_router_count(r), BIG);
    for (k = 1; k <= BIG; k += 997) {
        int n = snprintf(f, sizeof f, "devices/%zu/telemetry", k);
        size_t want = (k % 3 == 1) ? 0 : 1;
        got_reset(g, BIG + 1);
        assert_int_equal(mqtt_router_match(r, f, (size_t)n, on_match, g), want);
        if (want)
            assert_int_equal(g->qos[k], (int)(k % 3));
        n = snprintf(f, sizeof f, "devices/%zu/status", k);
        got_reset(g, BIG + 1);
        want = (BIG + 2) / 3 + (k % 3 == 2 ? 1 : 0); /* every i % 3 == 1, plus devices/k/# */
        assert_int_equal(mqtt_router_match(r, f, (size_t)n, on_match, g), want);
        assert_false(g->dup);
        assert_int_equal(g->qos[1], 1);
        assert_int_equal(g->qos[BIG], 1); /* 100000 % 3 == 1 */
    }
    /* A topic no one holds. */
    got_reset(g, BIG + 1);
    assert_int_equal(mqtt_router_match(r, S("devices/x/y/z"), on_match, g), 0);
    /* Unsubscribe half one by one, the rest by session. */
    for (i = 1; i <= BIG; i += 2) {
        int n;
        switch (i % 3) {
        case 0: n = snprintf(f, sizeof f, "devices/%zu/telemetry", i); break;
        case 1: n = snprintf(f, sizeof f, "devices/+/status"); break;
        default: n = snprintf(f, sizeof f, "devices/%zu/#", i); break;
        }
        assert_int_equal(mqtt_router_unsubscribe(r, f, (size_t)n, SUB(i)), 1);
    }
    assert_int_equal(mqtt_router_count(r), BIG / 2);
    for (i = 2; i <= BIG; i += 2)
        assert_int_equal(mqtt_router_remove_all(r, SUB(i)), 1);
    assert_int_equal(mqtt_router_count(r), 0);
    assert_int_equal(mqtt_router_node_count(r), 0);
    assert_int_equal(mqtt_router_subscriber_count(r), 0);
    mqtt_router_free(r);
    free(g);
}

/* Freeing a full router releases everything (checked under ASan/LSan). */
static void test_free_full_router(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    char f[64];
    size_t i;

    (void)state;
    for (i = 1; i <= 5000; i++) {
        int n = snprintf(f, sizeof f, "x/%zu/+/#", i % 100);
        mqtt_router_subscribe(r, f, (size_t)n, SUB(i), 0);
        mqtt_router_subscribe(r, S("#"), SUB(i), 1);
    }
    mqtt_router_free(r);
    mqtt_router_free(NULL);
}

/* A topic of 30000 levels against a filter just as deep: no recursion to overflow. */
static void test_deep_topic(void **state)
{
    struct mqtt_router *r = mqtt_router_new();
    struct got *g = got_new();
    size_t levels = 30000, i;
    char *t = malloc(levels * 2);

    (void)state;
    for (i = 0; i < levels; i++) {
        t[2 * i] = 'a';
        t[2 * i + 1] = '/';
    }
    assert_int_equal(mqtt_router_subscribe(r, t, levels * 2 - 1, SUB(1), 1), 1);
    t[levels * 2 - 4] = '+'; /* a/a/.../+/a */
    assert_int_equal(mqtt_router_subscribe(r, t, levels * 2 - 1, SUB(2), 2), 1);
    t[levels * 2 - 4] = 'a';
    got_reset(g, 8);
    assert_int_equal(mqtt_router_match(r, t, levels * 2 - 1, on_match, g), 2);
    assert_true(mqtt_topic_matches(t, levels * 2 - 1, t, levels * 2 - 1));
    mqtt_router_free(r);
    free(t);
    free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_and_filter_validity),
        cmocka_unit_test(test_topic_matches_table),
        cmocka_unit_test(test_router_matches_table),
        cmocka_unit_test(test_overlapping_filters_deliver_once_with_max_qos),
        cmocka_unit_test(test_resubscribe_replaces_qos),
        cmocka_unit_test(test_granted),
        cmocka_unit_test(test_invalid_subscriptions),
        cmocka_unit_test(test_unsubscribe_prunes),
        cmocka_unit_test(test_remove_all_and_list),
        cmocka_unit_test(test_callback_may_unsubscribe),
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_100k_subscriptions),
        cmocka_unit_test(test_free_full_router),
        cmocka_unit_test(test_deep_topic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
