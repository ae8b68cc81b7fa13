/* tests/unit/test_base.c: base64url against RFC 4648's vectors (URL alphabet, no
 * padding) and round trips; the intrusive list's push/remove bookkeeping; the hash map,
 * ordinary and keyed by its values, against a plain array under random puts, deletes
 * (tombstones), lookups of keys that are prefixes of stored ones, and growth. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/b64.h"
#include "base/hist.h"
#include "base/list.h"
#include "base/map.h"

static void test_b64url_vectors(void **state)
{
    static const char *const vec[][2] = {{"", ""},         {"f", "Zg"},       {"fo", "Zm8"},
                                         {"foo", "Zm9v"},  {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"},
                                         {"foobar", "Zm9vYmFy"}};
    char out[32];
    (void)state;
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        size_t n = b64url_encode(vec[i][0], strlen(vec[i][0]), out);
        assert_int_equal(n, strlen(vec[i][1]));
        assert_string_equal(out, vec[i][1]);
    }
    /* the URL alphabet: 0xfb 0xff -> "-_8" (standard base64 says "+/8=") */
    assert_int_equal(b64url_encode("\xfb\xff", 2, out), 3);
    assert_string_equal(out, "-_8");
}

static void test_b64url_round_trip(void **state)
{
    unsigned char in[64];
    char enc[B64URL_LEN(sizeof in)];
    (void)state;
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (unsigned char)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof in; n++) {
        size_t len, elen = b64url_encode(in, n, enc);
        char *dec = b64url_decode(enc, &len);
        assert_true(elen < B64URL_LEN(n));
        assert_non_null(dec);
        assert_int_equal(len, n);
        assert_memory_equal(dec, in, n);
        free(dec);
    }
    assert_null(b64url_decode("Zm9vY", &(size_t){0})); /* 5 chars encode no byte count */
    assert_null(b64url_decode("Zm!v", &(size_t){0}));
}

struct item {
    int v;
    struct list_link link;
};

static void test_list(void **state)
{
    struct list l = {0};
    struct item a = {1, {0}}, b = {2, {0}}, c = {3, {0}};
    (void)state;
    list_push_back(&l, &a.link);
    list_push_back(&l, &b.link);
    list_push_front(&l, &c.link); /* c a b */
    assert_int_equal(l.len, 3);
    assert_int_equal(list_entry(l.head, struct item, link)->v, 3);
    assert_int_equal(list_entry(l.tail, struct item, link)->v, 2);
    list_remove(&l, &a.link); /* c b */
    assert_false(list_linked(&l, &a.link));
    assert_true(list_linked(&l, &c.link));
    assert_ptr_equal(l.head->next, &b.link);
    assert_ptr_equal(l.tail->prev, &c.link);
    list_remove(&l, &c.link);
    list_remove(&l, &b.link);
    assert_null(l.head);
    assert_null(l.tail);
    assert_int_equal(l.len, 0);
    assert_null(list_entry(l.head, struct item, link));
}

/* Each observation lands in the first bucket whose bound it does not exceed; a bound
 * itself belongs to its bucket, past the last one is +Inf. */
static void test_hist(void **state)
{
    struct hist h = {0};
    uint64_t sum = 0;
    (void)state;
    for (size_t i = 1; i < HIST_NBOUNDS; i++)
        assert_true(hist_bounds_us[i - 1] < hist_bounds_us[i]);
    hist_observe(&h, 0);
    hist_observe(&h, 100);
    hist_observe(&h, 101);
    hist_observe(&h, 10000000);
    hist_observe(&h, 10000001);
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 1);
    assert_int_equal(h.counts[HIST_NBOUNDS - 1], 1);
    assert_int_equal(h.counts[HIST_NBOUNDS], 1);
    for (size_t i = 0; i <= HIST_NBOUNDS; i++)
        sum += h.counts[i];
    assert_int_equal(sum, 5);
    assert_int_equal(h.count, 5);
    assert_int_equal(h.sum_us, 0 + 100 + 101 + 10000000 + 10000001);
}

/* A value that carries its key (a keyed map's) and an id the model checks. */
struct keyed {
    int id;
    char key[12];
};

#define MAP_NKEYS 3000

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Random operations on m and on present[] (the model: which items are in it); every few
 * hundred operations every key is looked up and the map iterated. Keys "k<n>" make some
 * keys prefixes of others ("k1", "k12"). */
static void map_model_run(struct map *m)
{
    static struct keyed items[MAP_NKEYS];
    static bool present[MAP_NKEYS];
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    size_t n = 0;

    for (int i = 0; i < MAP_NKEYS; i++) {
        items[i].id = i;
        snprintf(items[i].key, sizeof items[i].key, "k%d", i);
        present[i] = false;
    }
    for (int op = 0; op < 60000; op++) {
        int i = (int)(rng_next(&x) % (op < 20000 ? MAP_NKEYS : MAP_NKEYS / 3));
        struct keyed *it = &items[i];
        size_t klen = strlen(it->key);
        if (rng_next(&x) % 3) {
            void *old = map_put(m, it->key, klen, it);
            assert_ptr_equal(old, present[i] ? it : NULL);
            n += !present[i];
            present[i] = true;
        } else {
            void *old = map_del(m, it->key, klen);
            assert_ptr_equal(old, present[i] ? it : NULL);
            n -= present[i];
            present[i] = false;
        }
        assert_int_equal(m->len, n);
        if (op % 500 == 0) {
            size_t iter = 0, seen = 0;
            const char *k;
            void *v;
            for (int j = 0; j < MAP_NKEYS; j++) {
                const char *kj = items[j].key;
                assert_ptr_equal(map_get(m, kj, strlen(kj)), present[j] ? &items[j] : NULL);
                /* a key one byte shorter, or the stored key with a byte more */
                if (strlen(kj) > 2 && !present[atoi(kj + 1) / 10])
                    assert_null(map_get(m, kj, strlen(kj) - 1));
            }
            assert_null(map_get(m, "k1x", 3));
            while (map_next(m, &iter, &k, &v)) {
                struct keyed *e = v;
                assert_true(present[e->id]);
                assert_string_equal(k, e->key);
                seen++;
            }
            assert_int_equal(seen, n);
        }
    }
    /* the load stays under 70 % and slots are 24 bytes (ordinary) or 8 (keyed) */
    assert_true(m->used * 10 < (size_t)m->cap * 7);
}

static void test_map_model(void **state)
{
    struct map m;
    (void)state;
    map_init(&m);
    map_model_run(&m);
    map_fini(&m);
}

static void test_map_keyed_model(void **state)
{
    struct map m;
    (void)state;
    map_init_keyed(&m, offsetof(struct keyed, key));
    map_model_run(&m);
    map_fini(&m);
    assert_int_equal(m.len, 0);
    assert_null(map_get(&m, "k1", 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_round_trip),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_hist),
        cmocka_unit_test(test_map_model),
        cmocka_unit_test(test_map_keyed_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
