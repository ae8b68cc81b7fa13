/* tests/unit/test_conn_registry.c: the connection registry and its iterators, on real
 * loopback connections accepted through gw_listen. A walk visits every live connection
 * once, whatever the code it hands them to closes (the current one, the next one, all
 * of them, from a nested walk); an ended walk frees its slot; durable waiters fire or
 * are cancelled once each when a waiter's callback closes other waiting connections; a
 * waiter whose writes span a failed and a committed report fails; backpressure holds
 * ingest connections only, and a held connection's idle clock stands still; an idle
 * connection allocates nothing besides its own block (its peer address is in it); a closed
 * connection is walked as closing until its close callback ran; what one read makes the
 * gateway send leaves in one socket write (the write fault seam counts it once), in order
 * whatever the sizes, and before a close after write.
 * Each test ends with every handle closed and uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "gateway/conn.h"
#include "gateway/gw.h"

#define NCONNS 8

struct server {                 /* the test protocol's server state (the listener's ctx) */
    int opened;                 /* proto open calls that got this ctx */
};

struct fixture {
    struct config cfg;
    struct gw gw;
    uv_loop_t loop;
    struct server srv;
    uv_tcp_t clients[NCONNS];
    uv_connect_t connects[NCONNS];
    int connected;
};

static void *test_open(struct conn *c, void *ctx)
{
    struct server *srv = ctx;
    srv->opened++;
    return c;
}

/* What the test protocol answers a read with (0: nothing). */
enum { REPLY_NONE, REPLY_THREE, REPLY_SIZES };
static int reply_mode;
static struct buf reply_want; /* REPLY_SIZES: every byte sent, in order */

static void send_fill(struct conn *c, char ch, size_t n)
{
    char *p = malloc(n);
    memset(p, ch, n);
    conn_send(c, p, n);
    buf_append(&reply_want, p, n);
    free(p);
}

static int test_feed(void *state, struct buf *in)
{
    struct conn *c = state;
    in->len = 0;
    if (reply_mode == REPLY_THREE) {
        conn_send(c, "one ", 4);
        conn_send(c, "two ", 4);
        conn_send(c, "three", 5);
    } else if (reply_mode == REPLY_SIZES) {
        /* small ones staged, large ones written without a copy after them, and more than
         * a connection stages at once */
        send_fill(c, 'a', 1);
        send_fill(c, 'b', 20000);
        send_fill(c, 'c', 3);
        for (int i = 0; i < 100; i++)
            send_fill(c, (char)('e' + i % 20), 1000);
        send_fill(c, 'z', 70000);
        send_fill(c, 'y', 5);
        conn_close_after_write(c, "reply sent");
    }
    return 0;
}

static void test_close(void *state, const char *why)
{
    (void)state;
    (void)why;
}

static const struct proto_ops test_proto = {"test", test_open, test_feed, test_close,
                                            NULL,   0,         NULL,      NULL};

/* What a client read, and whether it saw the end (EOF or a reset). */
static struct buf client_got;
static bool client_eof;

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    static char space[65536];
    (void)h;
    (void)suggested;
    *out = uv_buf_init(space, sizeof space);
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n < 0) {
        client_eof = true;
        uv_read_stop(s);
    } else if (n > 0) {
        buf_append(&client_got, b->base, (size_t)n);
    }
}

static void on_client_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

/* Client i sends one byte (one read for the server) and reads what comes back. */
static void client_poke(struct fixture *f, int i)
{
    uv_write_t *req = malloc(sizeof *req);
    uv_buf_t b = uv_buf_init("x", 1);
    assert_int_equal(uv_write(req, (uv_stream_t *)&f->clients[i], &b, 1, on_client_write), 0);
    uv_read_start((uv_stream_t *)&f->clients[i], on_client_alloc, on_client_read);
}

static size_t want_len;

static bool client_has_all_or_eof(struct fixture *f)
{
    (void)f;
    return client_eof || client_got.len >= want_len;
}

static bool client_at_eof(struct fixture *f)
{
    (void)f;
    return client_eof;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct fixture *f = req->data;
    assert_int_equal(status, 0);
    f->connected++;
}

static void run_until(struct fixture *f, bool (*done)(struct fixture *f))
{
    uint64_t deadline = uv_now(&f->loop) + 5000;
    while (!done(f)) {
        assert_true(uv_now(&f->loop) < deadline);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static bool all_accepted(struct fixture *f)
{
    return f->connected == NCONNS && conn_registry_count(f->gw.conns) == NCONNS;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct sockaddr_in addr;

    config_defaults(&f->cfg);
    uv_loop_init(&f->loop);
    f->gw.cfg = &f->cfg;
    f->gw.loop = &f->loop;
    f->loop.data = &f->gw;
    f->gw.conns = conn_registry_new();
    assert_int_equal(gw_listen(&f->gw, &(struct gw_listen_cfg){"test", "127.0.0.1", 0,
                                                                &test_proto, &f->srv, NULL, NULL, 0}),
                     0);
    uv_ip4_addr("127.0.0.1", f->gw.listeners[0].port, &addr);
    for (int i = 0; i < NCONNS; i++) {
        uv_tcp_init(&f->loop, &f->clients[i]);
        f->connects[i].data = f;
        assert_int_equal(uv_tcp_connect(&f->connects[i], &f->clients[i],
                                        (const struct sockaddr *)&addr, on_connect),
                         0);
    }
    run_until(f, all_accepted);
    *state = f;
    return 0;
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    conn_registry_close_all(f->gw.conns, "test over");
    gw_close_handles(&f->gw);
    uv_walk(&f->loop, on_walk_close, NULL); /* the clients */
    while (uv_run(&f->loop, UV_RUN_NOWAIT) != 0)
        ;
    assert_int_equal(uv_loop_close(&f->loop), 0);
    conn_registry_free(f->gw.conns);
    free(f);
    return 0;
}

/* Walks the registry: the ids seen, in order. */
static int walk_ids(struct fixture *f, uint64_t *ids)
{
    struct conn_iter it;
    struct conn *c;
    int n = 0;
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        assert_true(n < NCONNS);
        ids[n++] = c->id;
    }
    return n;
}

static void test_walk_visits_each_once(void **state)
{
    struct fixture *f = *state;
    uint64_t ids[NCONNS];
    struct conn_iter it;
    struct conn *c;

    assert_int_equal(f->srv.opened, NCONNS); /* every open got the listener's ctx */
    assert_int_equal(walk_ids(f, ids), NCONNS);
    for (int i = 0; i < NCONNS; i++) {
        for (int j = 0; j < i; j++)
            assert_true(ids[i] != ids[j]);
        if (i)
            assert_true(ids[i] < ids[i - 1]); /* newest first */
    }
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        assert_ptr_equal(c->listener, &f->gw.listeners[0].conn);
        assert_string_equal(c->listener->name, "test");
        assert_ptr_equal(c->listener->ctx, &f->srv);
    }
}

static void test_close_current_and_next(void **state)
{
    struct fixture *f = *state;
    uint64_t before[NCONNS], after[NCONNS];
    struct conn_iter it;
    struct conn *c;
    int n = 0;

    assert_int_equal(walk_ids(f, before), NCONNS);
    /* visiting the i-th connection closes it and the one the walk would visit next */
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        struct conn_iter peek;
        struct conn *d;
        assert_false(c->closing);
        assert_int_equal(c->id, before[2 * n]);
        n++;
        conn_iter_begin(&peek, f->gw.conns);
        while ((d = conn_iter_next(&peek)) != NULL && d != c)
            ;
        d = conn_iter_next(&peek);
        conn_iter_end(&peek);
        conn_close(c, "closed by the walk");
        if (d)
            conn_close(d, "closed ahead of the walk");
    }
    assert_int_equal(n, NCONNS / 2);
    assert_int_equal(conn_registry_count(f->gw.conns), 0);
    assert_int_equal(walk_ids(f, after), 0);
}

static void test_close_all_from_nested_walk(void **state)
{
    struct fixture *f = *state;
    struct conn_iter outer;
    struct conn *c;
    int visits = 0;

    conn_iter_begin(&outer, f->gw.conns);
    while ((c = conn_iter_next(&outer)) != NULL) {
        struct conn_iter inner;
        struct conn *d;
        visits++;
        conn_iter_begin(&inner, f->gw.conns);
        while ((d = conn_iter_next(&inner)) != NULL)
            conn_close(d, "closed by the inner walk");
    }
    assert_int_equal(visits, 1);
    assert_int_equal(conn_registry_count(f->gw.conns), 0);
}

static void test_ended_walks_free_their_slots(void **state)
{
    struct fixture *f = *state;
    uint64_t ids[NCONNS];

    /* far more walks left early than may run at once: each end frees its slot */
    for (int i = 0; i < 100; i++) {
        struct conn_iter it;
        conn_iter_begin(&it, f->gw.conns);
        assert_non_null(conn_iter_next(&it));
        conn_iter_end(&it);
        conn_iter_end(&it); /* again: harmless */
    }
    assert_int_equal(walk_ids(f, ids), NCONNS);
}

static int fired[NCONNS + 1], fired_ok[NCONNS + 1];
static struct fixture *current;

/* A waiter whose commit arrives closes every other connection still waiting. */
static void on_durable(struct conn *c, uint64_t tag, int ok)
{
    struct conn_iter it;
    struct conn *d;
    fired[tag]++;
    fired_ok[tag] = ok;
    if (ok != 1)
        return;
    conn_iter_begin(&it, current->gw.conns);
    while ((d = conn_iter_next(&it)) != NULL)
        if (d != c)
            conn_close(d, "closed by a waiter");
}

static void test_waiter_closes_other_waiters(void **state)
{
    struct fixture *f = *state;
    struct ticket t = {1, 1};
    struct conn_iter it;
    struct conn *c;
    uint64_t tag = 0;
    int ok = 0, cancelled = 0;

    current = f;
    memset(fired, 0, sizeof fired);
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL)
        gw_await_durable(c, &t, ++tag, on_durable);
    assert_int_equal(tag, NCONNS);
    for (int i = 1; i <= NCONNS; i++)
        assert_int_equal(fired[i], 0); /* all wait for seq 1 */
    gw_on_durable(&f->gw, 1, 1);
    for (int i = 1; i <= NCONNS; i++) {
        assert_int_equal(fired[i], 1);
        ok += fired_ok[i] == 1;
        cancelled += fired_ok[i] == -1;
    }
    assert_int_equal(ok, 1);
    assert_int_equal(cancelled, NCONNS - 1);
    assert_int_equal(conn_registry_count(f->gw.conns), 1);
}

/* Records each firing: how often, with which ok, in which order. */
static int fire_seq, fired_at[NCONNS + 1];

static void on_record(struct conn *c, uint64_t tag, int ok)
{
    (void)c;
    fired[tag]++;
    fired_ok[tag] = ok;
    fired_at[tag] = ++fire_seq;
}

/* An ack covers every write its message caused, across batch boundaries: a failure
 * reported for an earlier batch is not hidden by a later batch that committed. Writes 1..3
 * fail in one report, 4..5 commit in the next. */
static void test_failed_batch_not_hidden_by_later_commit(void **state)
{
    struct fixture *f = *state;
    struct conn *c[3];
    struct conn_iter it;

    memset(fired, 0, sizeof fired);
    memset(fired_ok, 0, sizeof fired_ok);
    fire_seq = 0;
    conn_iter_begin(&it, f->gw.conns);
    for (int i = 0; i < 3; i++)
        assert_non_null(c[i] = conn_iter_next(&it));
    conn_iter_end(&it);

    gw_await_durable(c[0], &(struct ticket){2, 5}, 1, on_record); /* spans both reports */
    gw_await_durable(c[0], NULL, 2, on_record); /* empty: waits for the one before it */
    gw_await_durable(c[1], &(struct ticket){4, 5}, 3, on_record); /* wholly committed */
    gw_on_durable(&f->gw, 3, 0);
    for (int tag = 1; tag <= 3; tag++)
        assert_int_equal(fired[tag], 0); /* every ticket ends after seq 3 */
    gw_on_durable(&f->gw, 5, 1);
    for (int tag = 1; tag <= 3; tag++)
        assert_int_equal(fired[tag], 1);
    assert_int_equal(fired_ok[1], 0);   /* write 2 or 3 failed */
    assert_int_equal(fired_ok[2], 1);   /* nothing of its own failed ... */
    assert_true(fired_at[2] > fired_at[1]); /* ... and it fires after the one before it */
    assert_int_equal(fired_ok[3], 1);

    /* tickets reported before they are awaited fire at once, failed if they overlap 1..3 */
    gw_await_durable(c[2], &(struct ticket){3, 4}, 4, on_record);
    assert_int_equal(fired[4], 1);
    assert_int_equal(fired_ok[4], 0);
    gw_await_durable(c[2], &(struct ticket){1, 1}, 5, on_record);
    assert_int_equal(fired[5], 1);
    assert_int_equal(fired_ok[5], 0);
    gw_await_durable(c[2], &(struct ticket){4, 5}, 6, on_record);
    assert_int_equal(fired[6], 1);
    assert_int_equal(fired_ok[6], 1);
    assert_int_equal(conn_registry_count(f->gw.conns), NCONNS); /* nobody closed */
}

/* Runs the loop for ms. */
static void run_for(struct fixture *f, uint64_t ms)
{
    uint64_t until = uv_now(&f->loop) + ms;
    while (uv_now(&f->loop) < until)
        uv_run(&f->loop, UV_RUN_ONCE); /* the connections' idle timers keep it ticking */
}

/* Storage backpressure holds ingest connections only, and the idle clock of a held one
 * stands still: it restarts at the release. */
static void test_pressure_holds_ingest_and_its_idle_clock(void **state)
{
    struct fixture *f = *state;
    struct conn *ingest, *other;
    struct conn_iter it;
    uint64_t released;

    conn_iter_begin(&it, f->gw.conns);
    ingest = conn_iter_next(&it);
    other = conn_iter_next(&it);
    conn_iter_end(&it);
    conn_ref(ingest);
    conn_ref(other);
    ingest->ingest = true;
    ingest->idle_timeout_ms = other->idle_timeout_ms = 100;
    conn_authenticated(ingest, ""); /* re-arms the idle timers */
    conn_authenticated(other, "");

    gw_on_pressure(&f->gw, 1);
    assert_true(ingest->held);
    assert_false(ingest->reading);
    assert_false(other->held);
    assert_true(other->reading);
    run_for(f, 350);
    assert_true(other->closing);  /* silent for 100 ms: closed */
    assert_false(ingest->closing); /* its silence is the gateway's */

    gw_on_pressure(&f->gw, 0);
    released = uv_now(&f->loop);
    assert_false(ingest->held);
    assert_true(ingest->reading);
    while (!ingest->closing)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(uv_now(&f->loop) - released >= 90); /* idle again, counted from the release */
    conn_unref(ingest);
    conn_unref(other);
}

/* An accepted plain TCP connection from an IPv4 address allocates nothing besides its own
 * block (test_conn_memory counts that block): its peer address is kept in it, as binary, and
 * shown as the text logs and the REST API print; its struct conn_extra is the shared empty
 * one until a field of it is written, and only that connection's then. */
static void test_idle_conn_holds_no_extra_blocks(void **state)
{
    struct fixture *f = *state;
    const struct conn_extra *none = NULL;
    char want[NCONNS][CONN_PEER_MAX], first_peer[CONN_PEER_MAX] = "";
    int nwant = 0, found = 0;
    struct conn_iter it;
    struct conn *c, *first = NULL;

    for (int i = 0; i < NCONNS; i++) {
        struct sockaddr_in local;
        int len = sizeof local;
        assert_int_equal(uv_tcp_getsockname(&f->clients[i], (struct sockaddr *)&local, &len), 0);
        snprintf(want[nwant++], CONN_PEER_MAX, "127.0.0.1:%d", ntohs(local.sin_port));
    }
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        const char *peer = conn_peer(c);
        if (!none)
            none = c->x;
        assert_ptr_equal(c->x, none); /* one shared, read-only copy */
        assert_null(c->x->tls);
        assert_null(c->x->xport);
        for (int i = 0; i < nwant; i++)
            if (strcmp(peer, want[i]) == 0) {
                found++;
                want[i][0] = '\0';
            }
        if (!first) {
            first = c;
            snprintf(first_peer, sizeof first_peer, "%s", peer);
        }
    }
    assert_int_equal(found, NCONNS); /* each client's own address and port */
    assert_ptr_not_equal(conn_extra(first), none);
    assert_ptr_equal(conn_extra(first), first->x); /* allocated once */
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL)
        if (c != first)
            assert_ptr_equal(c->x, none);
    assert_string_equal(conn_peer(first), first_peer); /* its peer is as it was */
}

/* A closed connection leaves the live walk at once and is in the walk over closing ones
 * until its close callback ran. */
static void test_closing_walk_until_close_callback(void **state)
{
    struct fixture *f = *state;
    struct conn_iter it;
    struct conn *c, *closed;
    int live = 0, closing = 0;

    conn_iter_begin(&it, f->gw.conns);
    closed = conn_iter_next(&it);
    conn_iter_end(&it);
    assert_non_null(closed);
    conn_ref(closed); /* read after its close callback */
    conn_close(closed, "test");
    conn_iter_begin(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        assert_ptr_not_equal(c, closed);
        live++;
    }
    assert_int_equal(live, NCONNS - 1);
    conn_iter_begin_closing(&it, f->gw.conns);
    while ((c = conn_iter_next(&it)) != NULL) {
        assert_ptr_equal(c, closed);
        closing++;
    }
    assert_int_equal(closing, 1);
    assert_int_equal(conn_registry_closing(f->gw.conns), 1);
    while (conn_registry_closing(f->gw.conns))
        uv_run(&f->loop, UV_RUN_ONCE);
    conn_iter_begin_closing(&it, f->gw.conns);
    assert_null(conn_iter_next(&it));
    conn_unref(closed);
}

/* Three sends while one read is served leave in one socket write: with every
 * connection's second socket write failing (the fault seam), all three arrive; the next
 * read's answer is that second write, which fails and closes the connection. */
static void test_sends_of_one_read_leave_in_one_write(void **state)
{
    struct fixture *f = *state;

    buf_init(&client_got);
    client_eof = false;
    reply_mode = REPLY_THREE;
    conn_registry_fail_writes(f->gw.conns, 2, 0, 0);
    client_poke(f, 0);
    want_len = 13;
    run_until(f, client_has_all_or_eof);
    assert_false(client_eof);
    assert_int_equal(client_got.len, 13);
    assert_memory_equal(client_got.data, "one two three", 13);

    client_poke(f, 0); /* its answer is the connection's second socket write */
    run_until(f, client_at_eof);
    assert_int_equal(client_got.len, 13);
    while (conn_registry_closing(f->gw.conns) > 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(conn_registry_count(f->gw.conns), NCONNS - 1);
    conn_registry_fail_writes(f->gw.conns, 0, 0, 0);
    reply_mode = REPLY_NONE;
    buf_fini(&client_got);
}

/* Sends of every size in one read (staged, written past a connection's staging limit,
 * large ones written without a copy) arrive in order, all of them before the close that
 * waits for them. */
static void test_sends_keep_their_order(void **state)
{
    struct fixture *f = *state;

    buf_init(&client_got);
    buf_init(&reply_want);
    client_eof = false;
    reply_mode = REPLY_SIZES;
    client_poke(f, 3);
    run_until(f, client_at_eof);
    assert_int_equal(client_got.len, reply_want.len);
    assert_memory_equal(client_got.data, reply_want.data, reply_want.len);
    reply_mode = REPLY_NONE;
    buf_fini(&client_got);
    buf_fini(&reply_want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_walk_visits_each_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_current_and_next, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_all_from_nested_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ended_walks_free_their_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_waiter_closes_other_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_batch_not_hidden_by_later_commit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pressure_holds_ingest_and_its_idle_clock, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_conn_holds_no_extra_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closing_walk_until_close_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sends_of_one_read_leave_in_one_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sends_keep_their_order, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
