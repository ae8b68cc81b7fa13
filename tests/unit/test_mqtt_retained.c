/* tests/unit/test_mqtt_retained.c: the retained-message store of the MQTT broker
 * (protocols/mqtt/retained.c): set, replace, clear with an empty payload, and the trie
 * walk that finds the retained messages a new subscription's filter matches.
 *
 * A table of topics and filters from MQTT 3.1.1 §4.7 ('#' matching the parent level,
 * '+' one level, empty levels, '$' topics hidden from leading wildcards), then a seeded
 * random comparison of retained_match() with mqtt_topic_matches() over every stored
 * topic, with topics cleared in between (pruning must not lose or invent matches). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/mqtt/broker_int.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void put(struct retained_store *rs, const char *topic, const char *payload, uint8_t qos)
{
    struct msg *m = msg_new(MSG_PLAIN, "", topic, payload, strlen(payload), NULL, 0);
    m->qos = qos;
    m->retain = 1;
    retained_put(rs, m);
    msg_unref(m);
}

struct hits {
    char names[4096];       /* the matched topics, sorted, joined with ' ' */
    size_t n;
    const char *seen[1024]; /* as found */
};

static void on_hit(void *ctx, struct retained *r)
{
    struct hits *h = ctx;
    assert_true(h->n < N(h->seen));
    h->seen[h->n++] = r->topic;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The matched topics, sorted, joined with ' '. */
static const char *match(struct retained_store *rs, const char *filter, struct hits *h)
{
    size_t o = 0;
    h->n = 0;
    retained_match(rs, filter, strlen(filter), on_hit, h);
    qsort(h->seen, h->n, sizeof h->seen[0], cmp_str);
    h->names[0] = '\0';
    for (size_t i = 0; i < h->n; i++) {
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(h->seen[i], h->seen[j]); /* each topic once */
        o += (size_t)snprintf(h->names + o, sizeof h->names - o, "%s%s", i ? " " : "",
                              h->seen[i]);
    }
    return h->names;
}

static void test_table(void **state)
{
    static const char *const topics[] = {
        "sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
        "sport/tennis/player2", "sport/", "/finance", "finance", "$SYS/broker/uptime",
        "$SYS", "a//c", "devices/dev-1/status", "devices/dev-2/status",
    };
    static const struct {
        const char *filter, *want;
    } rows[] = {
        {"sport/tennis/player1/#", "sport/tennis/player1 sport/tennis/player1/ranking"},
        {"sport/#", "sport sport/ sport/tennis sport/tennis/player1 "
                    "sport/tennis/player1/ranking sport/tennis/player2"},
        {"sport/tennis/#", "sport/tennis sport/tennis/player1 sport/tennis/player1/ranking "
                           "sport/tennis/player2"},
        {"sport/tennis/+", "sport/tennis/player1 sport/tennis/player2"},
        {"sport/+", "sport/ sport/tennis"},
        {"+/+", "/finance sport/ sport/tennis"},
        {"/+", "/finance"},
        {"+", "finance sport"},
        {"#", "/finance a//c devices/dev-1/status devices/dev-2/status finance sport sport/ "
              "sport/tennis sport/tennis/player1 sport/tennis/player1/ranking "
              "sport/tennis/player2"},
        {"+/monitor/Clients", ""},
        {"$SYS/#", "$SYS $SYS/broker/uptime"},
        {"$SYS/+/uptime", "$SYS/broker/uptime"},
        {"+/broker/uptime", ""},
        {"a/+/c", "a//c"},
        {"devices/+/status", "devices/dev-1/status devices/dev-2/status"},
        {"devices/dev-1/#", "devices/dev-1/status"},
        {"devices/dev-1/status", "devices/dev-1/status"},
        {"devices/dev-3/status", ""},
        {"sport/tennis/player1/ranking/#", "sport/tennis/player1/ranking"},
    };
    struct retained_store rs;
    struct hits h;
    (void)state;
    retained_init(&rs);
    for (size_t i = 0; i < N(topics); i++)
        put(&rs, topics[i], "v", 1);
    assert_int_equal(retained_count(&rs), N(topics));
    for (size_t i = 0; i < N(rows); i++) {
        const char *got = match(&rs, rows[i].filter, &h);
        if (strcmp(got, rows[i].want) != 0)
            fail_msg("filter %s: got \"%s\" want \"%s\"", rows[i].filter, got, rows[i].want);
    }
    retained_fini(&rs);
    retained_fini(&rs); /* twice is fine */
}

static void test_replace_and_clear(void **state)
{
    struct retained_store rs;
    struct retained *r;
    struct hits h;
    (void)state;
    retained_init(&rs);
    put(&rs, "a/b/c", "one", 2);
    put(&rs, "a/b/c", "two", 0); /* replaces: newest wins, its QoS */
    assert_int_equal(retained_count(&rs), 1);
    r = map_get(&rs.by_topic, "a/b/c", 5);
    assert_non_null(r);
    assert_memory_equal(r->m->payload, "two", 3);
    assert_int_equal(r->qos, 0);
    put(&rs, "a/b", "parent", 1);
    put(&rs, "a/b/c", "", 1); /* empty payload clears [MQTT-3.3.1-10] */
    assert_int_equal(retained_count(&rs), 1);
    assert_string_equal(match(&rs, "a/#", &h), "a/b");
    assert_string_equal(match(&rs, "a/b/c", &h), "");
    put(&rs, "a/b", "", 0);
    put(&rs, "never/set", "", 0); /* clearing nothing is fine */
    assert_int_equal(retained_count(&rs), 0);
    assert_string_equal(match(&rs, "#", &h), "");
    put(&rs, "a/b/c", "again", 1); /* a pruned path is rebuilt */
    assert_string_equal(match(&rs, "a/+/c", &h), "a/b/c");
    retained_fini(&rs);
}

static uint64_t rng = 88172645463325252ULL;

static unsigned next_rand(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static void random_name(char *out, int filter)
{
    static const char *const lv[] = {"a", "b", "c", "", "$SYS", "dev"};
    int levels = 1 + (int)next_rand(4);
    size_t o = 0;
    for (int i = 0; i < levels; i++) {
        const char *l = lv[next_rand(N(lv))];
        if (filter && next_rand(5) == 0)
            l = "+";
        if (filter && i == levels - 1 && next_rand(4) == 0)
            l = "#";
        if (i)
            out[o++] = '/';
        memcpy(out + o, l, strlen(l));
        o += strlen(l);
    }
    out[o] = '\0';
}

static void test_random_against_reference(void **state)
{
    struct retained_store rs;
    static char topics[300][64];
    static struct hits h;
    size_t nt = 0;
    (void)state;
    retained_init(&rs);
    for (int round = 0; round < 40; round++) {
        for (int i = 0; i < 10 && nt < N(topics); i++) {
            int known = 0;
            random_name(topics[nt], 0);
            for (size_t j = 0; j < nt; j++)
                known |= strcmp(topics[j], topics[nt]) == 0;
            if (known || !mqtt_topic_valid(topics[nt], strlen(topics[nt])))
                continue;
            put(&rs, topics[nt], "x", 1);
            nt++;
        }
        for (int i = 0; i < 3 && nt; i++) { /* clear a few */
            size_t k = next_rand((unsigned)nt);
            put(&rs, topics[k], "", 0);
            memmove(topics[k], topics[nt - 1], sizeof topics[k]);
            nt--;
        }
        for (int f = 0; f < 50; f++) {
            char filter[64], want[4096] = "";
            const char *sorted[300];
            size_t ns = 0, o = 0;
            random_name(filter, 1);
            if (!mqtt_filter_valid(filter, strlen(filter)))
                continue;
            for (size_t i = 0; i < nt; i++) {
                if (mqtt_topic_matches(filter, strlen(filter), topics[i],
                                               strlen(topics[i])))
                    sorted[ns++] = topics[i];
            }
            qsort(sorted, ns, sizeof sorted[0], cmp_str);
            for (size_t i = 0; i < ns; i++)
                o += (size_t)snprintf(want + o, sizeof want - o, "%s%s", i ? " " : "",
                                      sorted[i]);
            const char *got = match(&rs, filter, &h);
            if (strcmp(got, want) != 0)
                fail_msg("round %d filter \"%s\": got \"%s\" want \"%s\"", round, filter, got,
                         want);
        }
    }
    retained_fini(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_replace_and_clear),
        cmocka_unit_test(test_random_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
