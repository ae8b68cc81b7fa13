/* tests/unit/test_fleet.c: fleet tokens (gateway/fleet.c): a token signed by one fleet
 * verifies with the same key anywhere, for its device only, until it expires; rotation
 * (several keys, the first signs); tampering with any part, another key's signature and
 * an unknown key id are refused with their reasons; keys from files; bad key lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gateway/fleet.h"

#define NOW 1800000000LL

static struct fleet *make(const char *json)
{
    struct fleet *f = NULL;
    char err[300];
    if (fleet_new(json, &f, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_non_null(f);
    return f;
}

static enum fleet_rc verify(const struct fleet *f, const char *dev, const char *tok,
                            const char **why)
{
    return fleet_verify(f, dev, strlen(dev), tok, strlen(tok), NOW, why);
}

static void test_sign_verify(void **state)
{
    struct fleet *a = make("[{\"id\":\"k1\",\"secret\":\"0123456789abcdef0123456789abcdef\"}]");
    struct fleet *b = make("[{\"id\":\"k1\",\"secret\":\"0123456789abcdef0123456789abcdef\"}]");
    char tok[FLEET_TOKEN_MAX + 1];
    const char *why = "x";
    int n;

    (void)state;
    n = fleet_issue(a, "dev-1", NOW + 60, NULL, tok, sizeof tok);
    assert_int_equal(n, (int)strlen(tok));
    assert_true(fleet_is_token(tok, strlen(tok)));
    assert_int_equal(strncmp(tok, "gft1.dev-1.1800000060.k1.", 25), 0);
    assert_int_equal(strlen(tok), 25 + 43);
    for (const char *p = tok; *p; p++) /* URL-safe */
        assert_non_null(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                               "-_.",
                               *p));
    /* another instance with the same key accepts it */
    assert_int_equal(verify(b, "dev-1", tok, &why), FLEET_OK);
    assert_null(why);
    /* for its own device only */
    assert_int_equal(verify(b, "dev-2", tok, &why), FLEET_BAD);
    assert_string_equal(why, "fleet token of another device");
    assert_int_equal(verify(b, "dev-", tok, &why), FLEET_BAD);
    /* a device id with dots and colons parses from the right */
    n = fleet_issue(a, "site.a:dev.7", 0, NULL, tok, sizeof tok);
    assert_true(n > 0);
    assert_int_equal(verify(b, "site.a:dev.7", tok, &why), FLEET_OK);
    assert_int_equal(verify(b, "site.a:dev", tok, &why), FLEET_BAD);
    /* an invalid device id gets no token */
    assert_int_equal(fleet_issue(a, "bad/id", 0, NULL, tok, sizeof tok), -1);
    assert_int_equal(fleet_issue(a, "", 0, NULL, tok, sizeof tok), -1);
    fleet_free(a);
    fleet_free(b);
}

static void test_expiry(void **state)
{
    struct fleet *f = make("[{\"id\":\"k1\",\"secret\":\"0123456789abcdef\"}]");
    char tok[FLEET_TOKEN_MAX + 1];
    const char *why;

    (void)state;
    fleet_issue(f, "d", NOW, NULL, tok, sizeof tok); /* expires now: refused */
    assert_int_equal(verify(f, "d", tok, &why), FLEET_EXPIRED);
    assert_string_equal(why, "fleet token expired");
    fleet_issue(f, "d", NOW + 1, NULL, tok, sizeof tok);
    assert_int_equal(verify(f, "d", tok, &why), FLEET_OK);
    assert_int_equal(fleet_verify(f, "d", 1, tok, strlen(tok), NOW + 1, &why), FLEET_EXPIRED);
    fleet_issue(f, "d", 0, NULL, tok, sizeof tok); /* never */
    assert_int_equal(strncmp(tok, "gft1.d.0.k1.", 12), 0);
    assert_int_equal(fleet_verify(f, "d", 1, tok, strlen(tok), INT64_MAX / 2, &why), FLEET_OK);
    fleet_free(f);
}

static void test_rotation(void **state)
{
    /* old fleet: k1 only; during rotation: k2 signs, k1 still verifies; after: k2 only */
    struct fleet *old = make("[{\"id\":\"k1\",\"secret\":\"first-secret-0123456789\"}]");
    struct fleet *mid = make("[{\"id\":\"k2\",\"secret\":\"second-secret-0123456789\"},"
                             "{\"id\":\"k1\",\"secret\":\"first-secret-0123456789\"}]");
    struct fleet *neu = make("[{\"id\":\"k2\",\"secret\":\"second-secret-0123456789\"}]");
    char t1[FLEET_TOKEN_MAX + 1], t2[FLEET_TOKEN_MAX + 1], t3[FLEET_TOKEN_MAX + 1];
    const char *why;

    (void)state;
    fleet_issue(old, "d", 0, NULL, t1, sizeof t1);
    fleet_issue(mid, "d", 0, NULL, t2, sizeof t2);
    assert_non_null(strstr(t2, ".k2."));
    assert_int_equal(fleet_issue(mid, "d", 0, "k1", t3, sizeof t3), (int)strlen(t1));
    assert_string_equal(t3, t1); /* --key-id k1 signs as the old fleet did */
    assert_int_equal(fleet_issue(mid, "d", 0, "k9", t3, sizeof t3), -1);
    assert_int_equal(verify(mid, "d", t1, &why), FLEET_OK);
    assert_int_equal(verify(mid, "d", t2, &why), FLEET_OK);
    assert_int_equal(verify(neu, "d", t2, &why), FLEET_OK);
    assert_int_equal(verify(neu, "d", t1, &why), FLEET_UNKNOWN_KEY); /* k1 retired */
    assert_string_equal(why, "fleet token signed with a key id not in auth.fleet_keys");
    assert_int_equal(verify(old, "d", t2, &why), FLEET_UNKNOWN_KEY);
    fleet_free(old);
    fleet_free(mid);
    fleet_free(neu);
}

static void test_tampering(void **state)
{
    struct fleet *f = make("[{\"id\":\"k1\",\"secret\":\"0123456789abcdef\"},"
                           "{\"id\":\"k2\",\"secret\":\"fedcba9876543210\"}]");
    struct fleet *other = make("[{\"id\":\"k1\",\"secret\":\"another-secret-0000\"}]");
    char tok[FLEET_TOKEN_MAX + 1], bad[FLEET_TOKEN_MAX + 1];
    const char *why;
    size_t n;

    (void)state;
    fleet_issue(f, "dev-1", NOW + 100, NULL, tok, sizeof tok);
    n = strlen(tok);
    /* any byte changed */
    for (size_t i = 0; i < n; i++) {
        memcpy(bad, tok, n + 1);
        bad[i] = bad[i] == 'A' ? 'B' : bad[i] == '.' ? '_' : bad[i] == '9' ? '8' : 'A';
        assert_int_not_equal(fleet_verify(f, "dev-1", 5, bad, n, NOW, &why), FLEET_OK);
    }
    /* a later expiry with the old signature */
    memcpy(bad, tok, n + 1);
    bad[strlen("gft1.dev-1.")] = '9';
    assert_int_equal(verify(f, "dev-1", bad, &why), FLEET_BAD);
    assert_string_equal(why, "fleet token signature does not verify");
    /* signed by k1, relabelled k2 */
    memcpy(bad, tok, n + 1);
    bad[strlen("gft1.dev-1.1800000100.k")] = '2';
    assert_int_equal(verify(f, "dev-1", bad, &why), FLEET_BAD);
    /* the same key id with another secret (another fleet) */
    assert_int_equal(verify(other, "dev-1", tok, &why), FLEET_BAD);
    assert_string_equal(why, "fleet token signature does not verify");
    /* truncated, extended, malformed */
    assert_int_equal(fleet_verify(f, "dev-1", 5, tok, n - 1, NOW, &why), FLEET_BAD);
    memcpy(bad, tok, n);
    memcpy(bad + n, "A", 2);
    assert_int_equal(verify(f, "dev-1", bad, &why), FLEET_BAD);
#define MAC43 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    static const char *const junk[] = {"gft1.", "gft1.dev-1", "gft1.dev-1.1.k1", "gft1....",
                                       "gft1.dev-1.01.k1." MAC43, "gft1.dev-1.x.k1." MAC43,
                                       "gft1.dev-1.1.k!." MAC43, "gft1.dev-1.1.." MAC43,
                                       "gft1..1.k1." MAC43, "gft2.dev-1.1.k1." MAC43};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(verify(f, "dev-1", junk[i], &why), FLEET_BAD);
    assert_false(fleet_is_token("plain-per-device-token", 22));
    assert_false(fleet_is_token("gft1.", 5));
    fleet_free(f);
    fleet_free(other);
}

static void test_keys(void **state)
{
    char path[] = "/tmp/test_fleet_XXXXXX", json[256], err[300];
    struct fleet *f = NULL, *g;
    char t1[FLEET_TOKEN_MAX + 1], t2[FLEET_TOKEN_MAX + 1];
    const char *why;
    FILE *fp;
    int fd;

    (void)state;
    assert_int_equal(fleet_new("[]", &f, err, sizeof err), 0);
    assert_null(f); /* no keys: no fleet */
    /* a secret file: its trailing newline is not part of the secret */
    fd = mkstemp(path);
    assert_true(fd >= 0);
    fp = fdopen(fd, "w");
    fputs("file-secret-0123456789\n", fp);
    fclose(fp);
    snprintf(json, sizeof json, "[{\"id\":\"f\",\"secret_file\":\"%s\"}]", path);
    f = make(json);
    g = make("[{\"id\":\"f\",\"secret\":\"file-secret-0123456789\"}]");
    fleet_issue(f, "d", 0, NULL, t1, sizeof t1);
    fleet_issue(g, "d", 0, NULL, t2, sizeof t2);
    assert_string_equal(t1, t2);
    assert_int_equal(verify(g, "d", t1, &why), FLEET_OK);
    fleet_free(f);
    fleet_free(g);
    unlink(path);

    static const char *const bad[] = {
        "{}", "[1]", "[{\"secret\":\"0123456789abcdef\"}]",
        "[{\"id\":\"a.b\",\"secret\":\"0123456789abcdef\"}]",
        "[{\"id\":\"\",\"secret\":\"0123456789abcdef\"}]",
        "[{\"id\":\"k\",\"secret\":\"short\"}]", "[{\"id\":\"k\"}]",
        "[{\"id\":\"k\",\"secret\":\"0123456789abcdef\",\"secret_file\":\"/x\"}]",
        "[{\"id\":\"k\",\"secret_file\":\"/nonexistent/fleet.key\"}]",
        "[{\"id\":\"k\",\"secret\":\"0123456789abcdef\"},"
        "{\"id\":\"k\",\"secret\":\"0123456789abcdeg\"}]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        f = (struct fleet *)1;
        assert_int_equal(fleet_new(bad[i], &f, err, sizeof err), -1);
        assert_null(f);
        assert_non_null(strstr(err, "auth.fleet_keys"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verify), cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_rotation), cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
