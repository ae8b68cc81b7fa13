/* tests/unit/test_mqtt_acl.c: MQTT access rules (protocols/mqtt/acl.c).
 *
 * Tables of (rules, role, user, client, device, topic, action) -> allowed, covering:
 * role defaults (a device owns devices/<id>/#, apps and anonymous clients everything,
 * nobody publishes to '$' topics without a rule), first match wins, user and client
 * globs, %u / %c substitution (and names that could inject wildcards), actions, and
 * subscribe coverage: a filter is allowed only when every topic it can match is matched
 * by the rule (acl_filter_covers, checked against mqtt_topic_matches on sample topics).
 * Invalid rule sets are refused with a message naming the rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/mqtt/acl.h"
#include "protocols/mqtt/mqtt.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define P ACL_PUBLISH
#define S ACL_SUBSCRIBE
#define DEV ACL_ROLE_DEVICE
#define APP ACL_ROLE_APP
#define ANON ACL_ROLE_ANONYMOUS

struct acl_case {
    enum acl_role role;
    const char *user;    /* NULL = none */
    const char *client;
    const char *device;  /* NULL for apps and anonymous clients */
    const char *topic;   /* topic name (publish) or filter (subscribe) */
    enum acl_action action;
    bool allow;
};

static struct acl *make(const char *json)
{
    char err[256] = "";
    struct acl *a = acl_new(json, err, sizeof err);
    if (!a)
        fail_msg("acl_new(%s): %s", json, err);
    return a;
}

static void run_table(const char *rules, const struct acl_case *cases, size_t n)
{
    struct acl *a = make(rules);
    for (size_t i = 0; i < n; i++) {
        const struct acl_case *c = &cases[i];
        bool got = acl_check(a, c->role, c->user, c->client, c->device, c->topic,
                             strlen(c->topic), c->action);
        if (got != c->allow)
            fail_msg("rules %s: case %zu (role %d user %s client %s %s \"%s\"): got %d want %d",
                     rules, i, c->role, c->user ? c->user : "(none)", c->client,
                     c->action == P ? "publish" : "subscribe", c->topic, got, c->allow);
    }
    acl_free(a);
}

/* No rules: the defaults by role. */
static void test_role_defaults(void **state)
{
    static const struct acl_case cases[] = {
        /* a device: devices/<its id>/... both ways, nothing else */
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1/telemetry", P, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1/a/b/c", P, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1", P, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-2/telemetry", P, false},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-10/telemetry", P, false},
        {DEV, "dev-1", "c1", "dev-1", "devices", P, false},
        {DEV, "dev-1", "c1", "dev-1", "other/topic", P, false},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1/#", S, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1/commands", S, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/dev-1/+/reply", S, true},
        {DEV, "dev-1", "c1", "dev-1", "devices/+/telemetry", S, false},
        {DEV, "dev-1", "c1", "dev-1", "devices/#", S, false},
        {DEV, "dev-1", "c1", "dev-1", "#", S, false},
        {DEV, "dev-1", "c1", "dev-1", "+/dev-1/#", S, false},
        {DEV, "dev-1", "c1", "dev-1", "$SYS/#", S, false},
        {DEV, "dev-1", "c1", NULL, "devices/dev-1/x", P, false}, /* no device: nothing */
        /* an application client: everything, $SYS included for reading */
        {APP, "backend-1", "b1", NULL, "devices/dev-1/commands", P, true},
        {APP, "backend-1", "b1", NULL, "any/topic", P, true},
        {APP, "backend-1", "b1", NULL, "#", S, true},
        {APP, "backend-1", "b1", NULL, "$SYS/#", S, true},
        /* anonymous (allow_anonymous): no default restriction */
        {ANON, NULL, "x", NULL, "devices/dev-1/telemetry", P, true},
        {ANON, NULL, "x", NULL, "#", S, true},
        {ANON, "someone", "x", NULL, "a/b", P, true},
        /* '$' topics are the server's: no default lets a client publish there */
        {APP, "backend-1", "b1", NULL, "$SYS/broker/uptime", P, false},
        {ANON, NULL, "x", NULL, "$anything", P, false},
        {DEV, "dev-1", "c1", "dev-1", "$SYS/x", P, false},
    };
    struct acl *a = make("[{\"topic\":\"x\",\"action\":\"publish\",\"allow\":false}]");
    (void)state;
    run_table("[]", cases, N(cases));
    run_table("", cases, N(cases)); /* empty text = no rules */
    assert_false(acl_has_subscribe_denials(a)); /* a publish-only denial */
    acl_free(a);
    assert_false(acl_has_subscribe_denials(NULL));
}

/* The example of the issue and README, plus first match wins. */
static void test_first_match_wins(void **state)
{
    static const char rules[] =
        "[{\"user\":\"backend-*\",\"topic\":\"devices/#\",\"action\":\"subscribe\","
        "\"allow\":true},"
        " {\"topic\":\"test/nosubscribe\",\"action\":\"subscribe\",\"allow\":false},"
        " {\"topic\":\"devices/dev-1/secret\",\"allow\":false},"
        " {\"topic\":\"devices/dev-1/secret\",\"allow\":true},"
        " {\"user\":\"dev-1\",\"topic\":\"shared/#\",\"allow\":true}]";
    static const struct acl_case cases[] = {
        /* rule 0: backend-* may subscribe to devices/# (a device could not) */
        {DEV, "backend-7", "b", "backend-7", "devices/#", S, true},
        {DEV, "backend-7", "b", "backend-7", "devices/+/telemetry", S, true},
        {DEV, "backend-7", "b", "backend-7", "devices/#", P, false}, /* subscribe only */
        {DEV, "dev-1", "c", "dev-1", "devices/#", S, false},
        /* rule 1 denies even what the role default allows */
        {APP, "historian", "h", NULL, "test/nosubscribe", S, false},
        {APP, "historian", "h", NULL, "test/nosubscribe", P, true},
        {ANON, NULL, "h", NULL, "test/nosubscribe", S, false},
        {APP, "historian", "h", NULL, "test/other", S, true},
        /* rule 2 comes before rule 3: denied both ways, even to its own device */
        {DEV, "dev-1", "c", "dev-1", "devices/dev-1/secret", P, false},
        {DEV, "dev-1", "c", "dev-1", "devices/dev-1/secret", S, false},
        {DEV, "dev-1", "c", "dev-1", "devices/dev-1/public", P, true},
        /* ... a filter that could match the secret topic is not covered by rule 2, so
         * rule 2 does not decide it: the default allows it, and because this rule set
         * denies subscribing, the broker checks each delivery by topic name (above) */
        {DEV, "dev-1", "c", "dev-1", "devices/dev-1/#", S, true},
        /* rule 4 widens dev-1 only */
        {DEV, "dev-1", "c", "dev-1", "shared/x", P, true},
        {DEV, "dev-1", "c", "dev-1", "shared/#", S, true},
        {DEV, "dev-2", "c", "dev-2", "shared/x", P, false},
        /* rule 0 also decides for backend-* topics it matches on subscribe */
        {APP, "backend-1", "b", NULL, "devices/dev-1/secret", S, true},
    };
    struct acl *a = make(rules);
    (void)state;
    run_table(rules, cases, N(cases));
    assert_true(acl_has_subscribe_denials(a));
    acl_free(a);
}

/* user and client globs; %u and %c substitution. */
static void test_globs_and_substitution(void **state)
{
    static const char rules[] =
        "[{\"client\":\"sensor-??\",\"topic\":\"sensors/%c/#\",\"allow\":true},"
        " {\"user\":\"[ab]*\",\"topic\":\"users/%u/inbox\",\"action\":\"all\",\"allow\":true},"
        " {\"user\":\"*\",\"client\":\"*\",\"topic\":\"home/%u/%c\",\"action\":\"publish\","
        "\"allow\":true}]";
    static const struct acl_case cases[] = {
        {DEV, "d", "sensor-01", "d", "sensors/sensor-01/temp", P, true},
        {DEV, "d", "sensor-01", "d", "sensors/sensor-01/#", S, true},
        {DEV, "d", "sensor-01", "d", "sensors/sensor-02/temp", P, false},
        {DEV, "d", "sensor-001", "d", "sensors/sensor-001/temp", P, false}, /* ?? = 2 */
        {DEV, "alice", "c", "alice", "users/alice/inbox", P, true},
        {DEV, "alice", "c", "alice", "users/alice/inbox", S, true},
        {DEV, "bob", "c", "bob", "users/bob/inbox", S, true},
        {DEV, "carol", "c", "carol", "users/carol/inbox", S, false},
        {DEV, "alice", "c", "alice", "users/bob/inbox", P, false},
        {DEV, "alice", "c", "alice", "users/+/inbox", S, false},
        {DEV, "zed", "k9", "zed", "home/zed/k9", P, true},
        {DEV, "zed", "k9", "zed", "home/zed/k9", S, false},  /* publish only */
        {DEV, "zed", "k9", "zed", "home/zed/k8", P, false},
        /* no username: a rule with %u never matches (the default decides) */
        {ANON, NULL, "k9", NULL, "home//k9", P, true},       /* anonymous default */
        {DEV, NULL, "k9", "zed", "home//k9", P, false},
        /* names carrying wildcards or '/' never substitute (no widening by a name) */
        {ANON, "a+", "c", NULL, "users/a+/inbox", S, true},  /* anonymous default only */
        {DEV, "a+", "c", "x", "users/+/inbox", S, false},
        {DEV, "a#", "c", "x", "users/#", S, false},
        {DEV, "a/b", "c", "x", "users/a/b/inbox", P, false},
        {DEV, "d", "sensor-/#", "d", "sensors/sensor-/#", S, false},
    };
    (void)state;
    run_table(rules, cases, N(cases));
}

/* Deny rules restrict the permissive roles; '$' needs an explicit rule. */
static void test_deny_and_dollar(void **state)
{
    static const char rules[] =
        "[{\"user\":\"monitor\",\"topic\":\"$SYS/#\",\"action\":\"publish\",\"allow\":true},"
        " {\"topic\":\"#\",\"action\":\"publish\",\"allow\":false}]";
    static const struct acl_case cases[] = {
        {APP, "monitor", "m", NULL, "$SYS/custom", P, true},
        {APP, "other", "m", NULL, "$SYS/custom", P, false},
        {APP, "other", "m", NULL, "a/b", P, false},     /* rule 1: read-only broker */
        {ANON, NULL, "m", NULL, "a/b", P, false},
        {DEV, "dev-1", "m", "dev-1", "devices/dev-1/telemetry", P, false},
        {APP, "other", "m", NULL, "a/b", S, true},      /* subscribe: default */
        {APP, "other", "m", NULL, "$SYS/#", S, true},
    };
    (void)state;
    run_table(rules, cases, N(cases));
}

/* acl_filter_covers(outer, inner): table, then a cross-check with mqtt_topic_matches:
 * when outer covers inner, every sample topic inner matches, outer matches too. */
static void test_filter_covers(void **state)
{
    static const struct {
        const char *outer, *inner;
        bool covers;
    } rows[] = {
        {"#", "#", true},
        {"#", "a/b/c", true},
        {"#", "+/+", true},
        {"#", "$SYS/x", false},          /* '$' is only covered by a rule naming it */
        {"+/#", "$SYS/#", false},
        {"$SYS/#", "$SYS/broker/+", true},
        {"$SYS/#", "#", false},
        {"a/#", "a", true},              /* a/# matches its parent level */
        {"a/#", "a/#", true},
        {"a/#", "a/+/c", true},
        {"a/#", "b/#", false},
        {"a/+", "a/b", true},
        {"a/+", "a/+", true},
        {"a/+", "a/#", false},           /* '#' spans several levels */
        {"a/+", "a/b/c", false},
        {"a/+", "a", false},
        {"a/b", "a/+", false},
        {"a/b", "a/b", true},
        {"a/b", "a/b/c", false},
        {"a", "a/#", false},
        {"+", "#", false},
        {"+/+", "a/b", true},
        {"+/b", "a/+", false},
        {"a//c", "a/+/c", false},
        {"a/+/c", "a//c", true},
        {"a/", "a/", true},
        {"a/", "a", false},
        {"devices/dev-1/#", "devices/dev-1/commands/+/reply", true},
        {"devices/dev-1/#", "devices/dev-10/#", false},
    };
    static const char *const topics[] = {
        "a", "a/b", "a/b/c", "a/b/c/d", "a//c", "a/", "b", "b/x", "$SYS/x", "$SYS/broker/up",
        "devices/dev-1/commands/7/reply", "devices/dev-10/x", "x/b", "/b", "a/x/c",
    };
    (void)state;
    for (size_t i = 0; i < N(rows); i++) {
        bool got = acl_filter_covers(rows[i].outer, strlen(rows[i].outer), rows[i].inner,
                                     strlen(rows[i].inner));
        if (got != rows[i].covers)
            fail_msg("covers(%s, %s) = %d, want %d", rows[i].outer, rows[i].inner, got,
                     rows[i].covers);
        if (!got)
            continue;
        for (size_t j = 0; j < N(topics); j++) {
            const char *tp = topics[j];
            if (mqtt_topic_matches(rows[i].inner, strlen(rows[i].inner), tp, strlen(tp)) &&
                !mqtt_topic_matches(rows[i].outer, strlen(rows[i].outer), tp, strlen(tp)))
                fail_msg("covers(%s, %s) but %s matches only the inner filter", rows[i].outer,
                         rows[i].inner, tp);
        }
    }
}

static void test_invalid_rules(void **state)
{
    static const struct {
        const char *json;
        const char *err_part;
    } rows[] = {
        {"{}", "JSON array"},
        {"[1]", "mqtt.acl[0]"},
        {"[{\"allow\":true}]", "mqtt.acl[0]"},                          /* no topic */
        {"[{\"topic\":\"a\"}]", "mqtt.acl[0]"},                         /* no allow */
        {"[{\"topic\":\"a\",\"allow\":\"yes\"}]", "mqtt.acl[0]"},       /* allow not bool */
        {"[{\"topic\":\"a\",\"allow\":true,\"user\":5}]", "mqtt.acl[0]"},
        {"[{\"topic\":\"a\",\"allow\":true},{\"topic\":\"a/#/b\",\"allow\":true}]",
         "mqtt.acl[1]: topic"},
        {"[{\"topic\":\"a\",\"allow\":true,\"action\":\"read\"}]", "action must be"},
        {"[{\"topic\":\"a\",\"allow\":true,\"acton\":\"publish\"}]", "unknown key \"acton\""},
        {"[{\"topic\":\"\",\"allow\":true}]", "mqtt.acl[0]: topic"},
        {"[", "JSON array"},
    };
    (void)state;
    for (size_t i = 0; i < N(rows); i++) {
        char err[256] = "";
        struct acl *a = acl_new(rows[i].json, err, sizeof err);
        if (a) {
            acl_free(a);
            fail_msg("acl_new(%s) accepted", rows[i].json);
        }
        if (!strstr(err, rows[i].err_part))
            fail_msg("acl_new(%s): error \"%s\" lacks \"%s\"", rows[i].json, err,
                     rows[i].err_part);
    }
    acl_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role_defaults),
        cmocka_unit_test(test_first_match_wins),
        cmocka_unit_test(test_globs_and_substitution),
        cmocka_unit_test(test_deny_and_dollar),
        cmocka_unit_test(test_filter_covers),
        cmocka_unit_test(test_invalid_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
