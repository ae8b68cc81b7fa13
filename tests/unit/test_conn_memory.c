/* tests/unit/test_conn_memory.c: what an idle MQTT connection costs in memory, structure
 * by structure. Thousands of idle connections are held at once, so each structure's size
 * is a budget: a field added without packing it, or a table laid out wider, fails here
 * rather than in a benchmark. The bounds are the sizes README "Performance" reports; heap
 * blocks are counted as glibc's malloc lays them out on 64-bit Linux (an 8-byte header,
 * 16-byte alignment, 32 bytes at least). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/map.h"
#include "config/config.h"
#include "gateway/gw.h"
#include "gateway/conn.h"
#include "protocols/mqtt/broker.h"
#include "protocols/mqtt/broker_int.h"

/* The bytes glibc's malloc takes for a request of n bytes. */
static size_t chunk(size_t n)
{
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

static void test_structure_sizes(void **state)
{
    (void)state;
    /* TLS, a transport, PROXY, drain and pre-auth state are in struct conn_extra, allocated
     * on first use; the peer address is binary in the struct (an IPv6 one in the extra) */
    assert_true(sizeof(struct conn) <= 448);
    assert_true(sizeof(struct conn_extra) <= 128);
    /* MQTT 5's DISCONNECT reason is in struct mqtt5_conn; no list links the MQTT states
     * (the connection registry is walked for $SYS) */
    assert_true(sizeof(struct mqtt_conn) <= 104);
    /* the client id starts in the session's tail padding (allocated by offsetof); what it
     * holds to deliver messages is allocated with its first use */
    assert_true(offsetof(struct mqtt_session, client_id) <= 39);
    assert_true(sizeof(struct map_entry) <= 24);
    assert_true(sizeof(struct map) <= 32);
}

/* The heap blocks of one idle MQTT 3.1.1 connection from an IPv4 address with a client id
 * of 10 characters ("idle-12345", as tests/bench/bench_conn names them): the connection
 * with its MQTT state and its peer address in the same block, and its clean session without
 * delivery state (no subscription, no message for it, no QoS 2 id). Two blocks, 624 bytes:
 * a connection's peer text of its own and its struct conn_extra are none of them
 * (test_conn_registry checks that an accepted connection allocates neither). */
static void test_idle_mqtt_blocks(void **state)
{
    size_t conn = chunk(sizeof(struct conn) + mqtt_proto.state_bytes);
    size_t sess = chunk(offsetof(struct mqtt_session, client_id) + sizeof "idle-12345");
    (void)state;
    /* the MQTT listener's connections carry their struct mqtt_conn (conn_state_space) */
    assert_true(mqtt_proto.state_bytes >= sizeof(struct mqtt_conn));
    assert_int_equal(conn, 560);
    assert_int_equal(sess, 64);
}

/* A session starts without delivery state, which its first subscription allocates. */
static void test_session_delivery_state_on_first_use(void **state)
{
    struct config cfg;
    struct gw gw;
    struct mqtt_broker b;
    struct mqtt_session *s;
    (void)state;
    memset(&gw, 0, sizeof gw);
    memset(&b, 0, sizeof b);
    config_defaults(&cfg);
    gw.cfg = &cfg;
    b.gw = &gw;
    map_init_keyed(&b.sessions, offsetof(struct mqtt_session, client_id));
    s = broker_session_new(&b, "idle-12345", true, ACL_ROLE_DEVICE, "idle-12345");
    assert_null(s->dv);
    assert_string_equal(session_device(s), "idle-12345");
    broker_session_count_sub(s, "a/b", 3, 1);
    assert_non_null(s->dv);
    assert_ptr_equal(s->dv->s, s);
    assert_int_equal(s->dv->nsubs, 1);
    assert_int_equal(s->dv->sub_levels, 2);
    map_fini(&b.sessions);
    free(s->dv);
    free((char *)s->username);
    free(s);
}

/* The sessions map of 19,000 connections, keyed by the sessions' own client ids as the
 * broker's is (map_init_keyed): 32768 slots of 8 bytes. */
static void test_sessions_map_bytes(void **state)
{
    enum { N = 19000 };
    size_t off = offsetof(struct mqtt_session, client_id);
    static struct mqtt_session *sessions[N];
    struct map m;
    (void)state;
    map_init_keyed(&m, off);
    for (int i = 0; i < N; i++) {
        sessions[i] = calloc(1, off + 16);
        assert_non_null(sessions[i]);
        snprintf(sessions[i]->client_id, 16, "idle-%d", i);
        assert_null(map_put(&m, sessions[i]->client_id, strlen(sessions[i]->client_id),
                            sessions[i]));
    }
    assert_int_equal(m.len, N);
    assert_int_equal(m.cap, 32768);
    assert_true(m.cap * sizeof(void *) <= 256 * 1024);
    for (int i = 0; i < N; i += 97)
        assert_ptr_equal(map_get(&m, sessions[i]->client_id, strlen(sessions[i]->client_id)),
                         sessions[i]);
    map_fini(&m);
    for (int i = 0; i < N; i++)
        free(sessions[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_structure_sizes),
        cmocka_unit_test(test_idle_mqtt_blocks),
        cmocka_unit_test(test_sessions_map_bytes),
        cmocka_unit_test(test_session_delivery_state_on_first_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
