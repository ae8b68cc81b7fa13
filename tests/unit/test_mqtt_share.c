/* tests/unit/test_mqtt_share.c: shared subscription groups (protocols/mqtt/share.c, its
 * pure part): "$share/<name>/<filter>" parsing, joining and leaving, the round robin order
 * (which keeps its turn as members leave), picking with members that cannot take a
 * message now or at all (offline), and sticky picking: each publisher keeps its member,
 * and a member leaving or joining moves only the publishers it had or takes.
 *
 * Members are opaque: a table of fake members says how each can take a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/err.h"
#include "protocols/mqtt/share.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* A fake member: its fit for QoS 0 and for QoS 1/2. */
struct fake {
    enum share_fit fit0, fit1;
};

static enum share_fit fake_fit(void *ctx, void *sub, uint8_t qos)
{
    (void)ctx;
    const struct fake *f = sub;
    return qos == 0 ? f->fit0 : f->fit1;
}

static struct fake members[8];

static void reset_members(void)
{
    for (size_t i = 0; i < N(members); i++)
        members[i] = (struct fake){SHARE_FIT_NOW, SHARE_FIT_NOW};
}

static struct share_group *join(struct share_groups *sg, const char *name, const char *filter,
                                int i, uint8_t qos)
{
    struct share_group *g = NULL;
    int r = share_join(sg, name, strlen(name), filter, strlen(filter), &members[i],
                       0x9e3779b97f4a7c15ull * (uint64_t)(i + 1), qos, 0, &g);
    assert_true(r == 0 || r == 1);
    return g;
}

/* The index of the member picked, -1 for none. */
static int pick(struct share_group *g, enum share_strategy how, uint8_t qos, const char *key)
{
    struct share_member *m =
        share_pick(g, how, qos, key, key ? strlen(key) : 0, fake_fit, NULL);
    return m ? (int)((struct fake *)m->sub - members) : -1;
}

static void test_parse(void **state)
{
    struct mqtt_str name, inner;
    (void)state;
    assert_int_equal(share_parse("$share/g/devices/+/telemetry", 28, &name, &inner), 1);
    assert_int_equal(name.len, 1);
    assert_memory_equal(name.p, "g", 1);
    assert_int_equal(inner.len, 19);
    assert_memory_equal(inner.p, "devices/+/telemetry", 19);
    /* another filter is judged whole */
    assert_int_equal(share_parse("a/#", 3, &name, &inner), 0);
    assert_int_equal(inner.len, 3);
    assert_int_equal(share_parse("$share", 6, &name, &inner), 0);
    /* malformed: no filter, an empty name, a wildcard in the name, an invalid filter */
    assert_int_equal(share_parse("$share/g", 8, &name, &inner), -1);
    assert_int_equal(share_parse("$share//a", 9, &name, &inner), -1);
    assert_int_equal(share_parse("$share/+/a", 10, &name, &inner), -1);
    assert_int_equal(share_parse("$share/g/a#", 11, &name, &inner), -1);
}

static void test_join_leave(void **state)
{
    struct share_groups sg;
    struct share_group *g, *h, *again = NULL;
    (void)state;
    reset_members();
    share_groups_init(&sg);
    g = join(&sg, "g", "a/+", 0, 1);
    assert_non_null(g);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->idx, 1);
    assert_ptr_equal(share_group_at(&sg, g->idx), g);
    /* the same member again updates its QoS; the group is not new */
    assert_int_equal(share_join(&sg, "g", 1, "a/+", 3, &members[0], 1, 2, 0, &again), 0);
    assert_ptr_equal(again, g);
    assert_int_equal(g->n, 1);
    assert_int_equal(g->m[0].qos, 2);
    join(&sg, "g", "a/+", 1, 1);
    assert_int_equal(g->n, 2);
    assert_int_equal(sg.members, 2);
    /* another name or another filter is another group */
    h = join(&sg, "h", "a/+", 2, 1);
    assert_ptr_not_equal(h, g);
    assert_ptr_not_equal(join(&sg, "g", "a/#", 3, 1), g);
    assert_int_equal(sg.by_key.len, 3);
    assert_ptr_equal(share_group_get(&sg, "g", 1, "a/+", 3), g);
    assert_null(share_group_get(&sg, "g", 1, "a/b", 3));
    /* leaving */
    assert_true(share_leave(&sg, g, &members[0]));
    assert_false(share_leave(&sg, g, &members[0]));
    assert_int_equal(g->n, 1);
    assert_ptr_equal(g->m[0].sub, &members[1]);
    assert_true(share_leave(&sg, g, &members[1]));
    assert_int_equal(g->n, 0);
    share_group_free(&sg, g);
    assert_null(share_group_get(&sg, "g", 1, "a/+", 3));
    assert_null(share_group_at(&sg, 1));
    /* its index is free again */
    g = join(&sg, "k", "b", 4, 0);
    assert_int_equal(g->idx, 1);
    assert_int_equal(sg.members, 3);
    share_groups_fini(&sg);
}

static void test_round_robin(void **state)
{
    struct share_groups sg;
    struct share_group *g;
    int counts[4] = {0};
    (void)state;
    reset_members();
    share_groups_init(&sg);
    for (int i = 0; i < 4; i++)
        g = join(&sg, "g", "t", i, 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 2);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 3);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    for (int i = 0; i < 400; i++)
        counts[pick(g, SHARE_ROUND_ROBIN, 1, NULL)]++;
    for (int i = 0; i < 4; i++)
        assert_int_equal(counts[i], 100);
    /* next is 1; member 1 leaves: the turn goes to the one after it (2) */
    assert_true(share_leave(&sg, g, &members[1]));
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 2);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 3);
    /* next is 0: the member before the turn leaves; the turn stays with member 0 */
    assert_true(share_leave(&sg, g, &members[3]));
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 2);
    /* a newcomer takes its turn after the last member */
    join(&sg, "g", "t", 5, 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 2);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 5);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    share_groups_fini(&sg);
}

static void test_pick_with_offline_and_busy(void **state)
{
    struct share_groups sg;
    struct share_group *g;
    (void)state;
    reset_members();
    share_groups_init(&sg);
    for (int i = 0; i < 3; i++)
        g = join(&sg, "g", "t", i, 1);
    /* member 1 is offline and persistent: QoS 1 in its turn (queued), never QoS 0 */
    members[1] = (struct fake){SHARE_FIT_NO, SHARE_FIT_NOW};
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 0, NULL), 2);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 0, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 0, NULL), 2); /* 1 skipped */
    /* member 2's window is full: the others take its turns */
    members[2] = (struct fake){SHARE_FIT_LATER, SHARE_FIT_LATER};
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    /* nobody can take it now: the first one that can queue it, from the turn on */
    members[0] = (struct fake){SHARE_FIT_LATER, SHARE_FIT_LATER};
    members[1] = (struct fake){SHARE_FIT_NO, SHARE_FIT_NO}; /* queue full */
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 2);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 0);
    /* every member offline (QoS 0) or full: none */
    for (int i = 0; i < 3; i++)
        members[i] = (struct fake){SHARE_FIT_NO, SHARE_FIT_NO};
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 0, NULL), -1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), -1);
    assert_int_equal(pick(g, SHARE_STICKY, 1, "dev-1"), -1);
    share_groups_fini(&sg);
}

static void test_qos_is_the_members(void **state)
{
    struct share_groups sg;
    struct share_group *g;
    (void)state;
    reset_members();
    share_groups_init(&sg);
    /* member 0 granted QoS 0: a QoS 1 message reaches it as QoS 0, which it cannot take
     * while offline */
    g = join(&sg, "g", "t", 0, 0);
    join(&sg, "g", "t", 1, 1);
    members[0] = (struct fake){SHARE_FIT_NO, SHARE_FIT_NOW};
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 1);
    assert_int_equal(pick(g, SHARE_ROUND_ROBIN, 1, NULL), 1);
    share_groups_fini(&sg);
}

static void test_sticky(void **state)
{
    struct share_groups sg;
    struct share_group *g;
    char key[32];
    int owner[200], counts[4] = {0};
    (void)state;
    reset_members();
    share_groups_init(&sg);
    for (int i = 0; i < 4; i++)
        g = join(&sg, "g", "t", i, 1);
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "dev-%d", k);
        owner[k] = pick(g, SHARE_STICKY, 1, key);
        assert_true(owner[k] >= 0);
        counts[owner[k]]++;
        /* the same publisher again: the same member */
        for (int r = 0; r < 3; r++)
            assert_int_equal(pick(g, SHARE_STICKY, 1, key), owner[k]);
    }
    for (int i = 0; i < 4; i++) /* spread: no member without publishers */
        assert_true(counts[i] > 0);
    /* member 2 leaves: only its publishers move */
    assert_true(share_leave(&sg, g, &members[2]));
    for (int k = 0; k < 200; k++) {
        int now;
        snprintf(key, sizeof key, "dev-%d", k);
        now = pick(g, SHARE_STICKY, 1, key);
        if (owner[k] != 2)
            assert_int_equal(now, owner[k]);
        else
            assert_true(now >= 0 && now != 2);
    }
    /* it joins again: every publisher is back where it was */
    join(&sg, "g", "t", 2, 1);
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "dev-%d", k);
        assert_int_equal(pick(g, SHARE_STICKY, 1, key), owner[k]);
    }
    /* a member that cannot take a message: its publishers go elsewhere meanwhile */
    members[1] = (struct fake){SHARE_FIT_NO, SHARE_FIT_NO};
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "dev-%d", k);
        int now = pick(g, SHARE_STICKY, 1, key);
        assert_int_equal(now == owner[k], owner[k] != 1);
    }
    share_groups_fini(&sg);
}

static void test_group_limit(void **state)
{
    struct share_groups sg;
    struct share_group *g = NULL;
    char name[16];
    (void)state;
    reset_members();
    share_groups_init(&sg);
    for (int i = 0; i < SHARE_MAX_GROUPS; i++) {
        snprintf(name, sizeof name, "g%d", i);
        assert_int_equal(share_join(&sg, name, strlen(name), "t", 1, &members[0], 1, 1, 0, &g), 1);
    }
    assert_int_equal(share_join(&sg, "one-more", 8, "t", 1, &members[0], 1, 1, 0, &g),
                     GW_ELIMIT);
    /* an existing group still takes members */
    assert_int_equal(share_join(&sg, "g7", 2, "t", 1, &members[1], 2, 1, 0, &g), 0);
    assert_int_equal(g->n, 2);
    share_groups_fini(&sg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_join_leave),
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_pick_with_offline_and_busy),
        cmocka_unit_test(test_qos_is_the_members),
        cmocka_unit_test(test_sticky),
        cmocka_unit_test(test_group_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
