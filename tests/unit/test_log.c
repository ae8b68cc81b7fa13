/* tests/unit/test_log.c: logs a client cannot abuse (gateway/log.c).
 *
 * Checked: log_escape's table (quotes, backslashes, control bytes, DEL, invalid UTF-8,
 * valid UTF-8 kept, long strings cut with a marker, a small buffer never splits an
 * escape); a forged client string gives one line in both formats, with its value intact
 * in JSON; the refusal table's burst, window, summaries, episode end and size bound;
 * and a stderr nobody reads: log_write keeps returning, lines are dropped and counted,
 * and a "dropped" line says how many once the reader catches up. stderr is a pipe here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <cJSON.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "gateway/log.h"

#define FORGED "x\"\n2026-01-01T00:00:00.000Z level=error msg=forged"

/* ---- escaping ---- */

static void test_escape_table(void **state)
{
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"plain-id_1", 10, "plain-id_1"},
        {"a\"b", 3, "a\\\"b"},
        {"a\\b", 3, "a\\\\b"},
        {"end\\", 4, "end\\\\"},
        {"l1\nl2\r\t", 7, "l1\\nl2\\r\\t"},
        {"\x01\x1f\x7f", 3, "\\x01\\x1f\\x7f"},
        {"nul\0x", 5, "nul\\x00x"},
        {"caf\xc3\xa9 \xf0\x9d\x84\x9e", 10, "caf\xc3\xa9 \xf0\x9d\x84\x9e"}, /* kept */
        {"\xff\xfe", 2, "\\xff\\xfe"},
        {"\xc3", 1, "\\xc3"},                  /* truncated sequence */
        {"\xc0\xaf", 2, "\\xc0\\xaf"},         /* overlong '/' */
        {"\xed\xa0\x80", 3, "\\xed\\xa0\\x80"}, /* a surrogate */
        {"\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80"}, /* past U+10FFFF */
        {"\xe2\x82", 2, "\\xe2\\x82"},
    };
    char out[256];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = log_escape(out, sizeof out, cases[i].in, cases[i].len);
        assert_string_equal(out, cases[i].want);
        assert_int_equal(n, strlen(cases[i].want));
    }
    assert_string_equal(log_q(NULL), "");
    assert_string_equal(log_qn(NULL, 5), "");
    assert_string_equal(log_q(FORGED),
                        "x\\\"\\n2026-01-01T00:00:00.000Z level=error msg=forged");
}

static void test_escape_long_and_small(void **state)
{
    char in[1000], out[64];
    const char *q;
    (void)state;
    memset(in, 'a', sizeof in);
    q = log_qn(in, sizeof in);
    assert_int_equal(strspn(q, "a"), LOG_Q_MAX_BYTES);
    assert_string_equal(q + LOG_Q_MAX_BYTES, "...(+744 bytes)");
    /* all bytes escaped to 4: the slot still holds the kept part whole */
    memset(in, '\x01', sizeof in);
    q = log_qn(in, sizeof in);
    assert_int_equal(strlen(q), LOG_Q_MAX_BYTES * 4 + strlen("...(+744 bytes)"));
    /* a small buffer: cut before an escape, never inside one, and still marked */
    for (size_t cap = 1; cap < sizeof out; cap++) {
        size_t n = log_escape(out, cap, "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"", 20);
        assert_true(n < cap);
        assert_int_equal(strlen(out), n);
        for (size_t i = 0; i < n && out[i] != '.'; i += 2)
            assert_memory_equal(out + i, "\\\"", 2);
        if (cap > strlen("...(+20 bytes)") && cap <= 40) /* cut, with room to say so */
            assert_non_null(strstr(out, " bytes)"));
    }
}

/* ---- lines through a pipe in place of stderr ---- */

static int g_pipe[2];

static int setup_pipe(void **state)
{
    int saved = dup(STDERR_FILENO);
    (void)state;
    if (saved < 0 || pipe(g_pipe) != 0 || dup2(g_pipe[1], STDERR_FILENO) < 0)
        return -1;
    stderr = fdopen(saved, "w"); /* cmocka's reports still reach the terminal */
    fcntl(g_pipe[0], F_SETFL, fcntl(g_pipe[0], F_GETFL) | O_NONBLOCK);
    return 0;
}

/* Everything logged so far, after a flush (the pipe holds 64 KiB: enough here). */
static void read_log(struct buf *out)
{
    char chunk[4096];
    ssize_t n;
    log_flush();
    while ((n = read(g_pipe[0], chunk, sizeof chunk)) > 0)
        buf_append(out, chunk, (size_t)n);
    buf_append(out, "", 1);
    out->len--;
}

static size_t count_lines(const struct buf *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->len; i++)
        n += b->data[i] == '\n';
    return n;
}

static void test_forged_text_line(void **state)
{
    struct buf got;
    const char *v, *p;
    (void)state;
    buf_init(&got);
    log_setup(LOG_DEBUG, LOG_TEXT);
    log_warn("conn=1 peer=127.0.0.1:5 proto=mqtt client=\"%s\" user=\"%s\" end", log_q(FORGED),
             log_qn("u\\", 2));
    read_log(&got);
    assert_int_equal(count_lines(&got), 1);
    assert_int_equal(got.data[got.len - 1], '\n');
    v = strstr((char *)got.data, "client=\"");
    assert_true(strstr((char *)got.data, " level=warn conn=1 ") < v);
    assert_non_null(v);
    /* the value ends at its own closing quote, and the line goes on as written */
    for (p = v + 8; *p && *p != '"'; p += (*p == '\\') ? 2 : 1)
        ;
    assert_string_equal(p, "\" user=\"u\\\\\" end\n");
    buf_fini(&got);

    /* a string printed without log_q still cannot start a line */
    buf_init(&got);
    log_info("reason=\"%s\"", "a\nb\rc");
    read_log(&got);
    assert_int_equal(count_lines(&got), 1);
    assert_non_null(strstr((char *)got.data, "reason=\"a\\nb\\rc\""));
    buf_fini(&got);
}

static void test_forged_json_line(void **state)
{
    struct buf got;
    cJSON *js;
    (void)state;
    buf_init(&got);
    log_setup(LOG_DEBUG, LOG_JSON);
    log_warn("conn=7 client=\"%s\" topic=\"%s\" bin=\"%s\" forged", log_q(FORGED),
             log_q("a\\\"b"), log_qn("\xff", 1));
    read_log(&got);
    assert_int_equal(count_lines(&got), 1);
    js = cJSON_Parse((char *)got.data);
    assert_non_null(js);
    assert_string_equal(cJSON_GetObjectItem(js, "level")->valuestring, "warn");
    assert_int_equal(cJSON_GetObjectItem(js, "conn")->valueint, 7);
    assert_string_equal(cJSON_GetObjectItem(js, "client")->valuestring, FORGED);
    assert_string_equal(cJSON_GetObjectItem(js, "topic")->valuestring, "a\\\"b");
    assert_string_equal(cJSON_GetObjectItem(js, "bin")->valuestring, "\\xff");
    assert_string_equal(cJSON_GetObjectItem(js, "msg")->valuestring, "forged");
    assert_int_equal(cJSON_GetArraySize(js), 7); /* ts level conn client topic bin msg */
    cJSON_Delete(js);
    buf_fini(&got);
    log_setup(LOG_INFO, LOG_TEXT);
}

/* ---- a stderr that does not read ---- */

static void drain(void *arg)
{
    struct buf *out = arg;
    char chunk[65536];
    for (;;) {
        ssize_t n = read(g_pipe[0], chunk, sizeof chunk);
        if (n <= 0) {
            usleep(1000);
            continue;
        }
        buf_append(out, chunk, (size_t)n);
        buf_append(out, "", 1);
        out->len--;
        if (strstr((char *)out->data, "the end\n"))
            return;
    }
}

static void test_slow_stderr_drops(void **state)
{
    enum { LINES = 20000 };
    struct buf got;
    uv_thread_t reader;
    uint64_t t0;
    const char *d;
    unsigned long long dropped = 0;
    size_t kept = 0;
    (void)state;
    buf_init(&got);
    log_setup(LOG_INFO, LOG_TEXT);
    t0 = uv_hrtime();
    for (int i = 0; i < LINES; i++) /* ~2 MB into a 64 KiB pipe nobody reads */
        log_info("line=%d pad=%s", i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    /* the writer was never held up by the pipe (bounded generously for slow builds) */
    assert_true(uv_hrtime() - t0 < 5000000000ULL);
    assert_int_equal(uv_thread_create(&reader, drain, &got), 0);
    log_flush(); /* the queue is out, with its "dropped" line: room for the last one */
    log_info("the end");
    log_flush();
    uv_thread_join(&reader);
    for (d = (char *)got.data; (d = strstr(d, "log: dropped ")) != NULL; d++)
        dropped += strtoull(d + 13, NULL, 10);
    assert_true(dropped > 0);
    for (const char *p = (char *)got.data; (p = strstr(p, " line=")) != NULL; p++)
        kept++;
    assert_int_equal(kept + dropped, LINES);
    assert_non_null(strstr((char *)got.data, "level=info the end\n"));
    buf_fini(&got);
}

/* ---- refusal summaries ---- */

struct summaries {
    int n;
    char peer[64], reason[64];
    uint64_t refusals, window_ms;
};

static void on_summary(void *ctx, const char *peer, const char *reason, uint64_t refusals,
                       uint64_t window_ms)
{
    struct summaries *s = ctx;
    s->n++;
    snprintf(s->peer, sizeof s->peer, "%s", peer);
    snprintf(s->reason, sizeof s->reason, "%s", reason);
    s->refusals = refusals;
    s->window_ms = window_ms;
}

static void test_refusal_window(void **state)
{
    struct summaries s = {0};
    struct log_refusals *r = log_refusals_new(4, 10000, on_summary, &s);
    int logged = 0;
    (void)state;
    for (int i = 0; i < 200; i++) /* one peer, many ports, 200 refusals in 2 s */
        logged += log_refusals_note(r, i % 2 ? "10.0.0.7:1000" : "10.0.0.7:2000", "bad token",
                                    1000 + (uint64_t)i * 10);
    assert_int_equal(logged, LOG_REFUSAL_BURST);
    assert_int_equal(log_refusals_count(r), 1);
    log_refusals_sweep(r, 10999);
    assert_int_equal(s.n, 0); /* the window is not over */
    log_refusals_sweep(r, 11000);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.peer, "10.0.0.7");
    assert_string_equal(s.reason, "bad token");
    assert_int_equal(s.refusals, 200 - LOG_REFUSAL_BURST);
    assert_int_equal(s.window_ms, 10000);
    /* the episode goes on: its refusals are only summed up */
    for (int i = 0; i < 50; i++)
        logged += log_refusals_note(r, "10.0.0.7:3000", "bad token", 12000);
    assert_int_equal(logged, LOG_REFUSAL_BURST);
    assert_int_equal(log_refusals_note(r, "10.0.0.7:3000", "bad token", 21000), 0);
    assert_int_equal(s.n, 2); /* the note past the window summed up the 50 first */
    assert_int_equal(s.refusals, 50);
    log_refusals_sweep(r, 31000);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.refusals, 1);
    /* a quiet window ends the episode: the next refusal is logged again */
    log_refusals_sweep(r, 41000);
    assert_int_equal(s.n, 3);
    assert_int_equal(log_refusals_count(r), 0);
    assert_int_equal(log_refusals_note(r, "10.0.0.7:3000", "bad token", 42000), 1);
    /* reasons and peers have slots of their own; IPv6 loses only its port */
    assert_int_equal(log_refusals_note(r, "10.0.0.7:3000", "max connections reached", 42000), 1);
    assert_int_equal(log_refusals_note(r, "[::1]:5", "bad token", 42000), 1);
    assert_int_equal(log_refusals_count(r), 3);
    for (int i = 0; i < LOG_REFUSAL_BURST - 1; i++)
        assert_int_equal(log_refusals_note(r, "[::1]:6", "bad token", 42000), 1);
    assert_int_equal(log_refusals_note(r, "[::1]:7", "bad token", 42000), 0);
    log_refusals_sweep(r, 52000);
    assert_string_equal(s.peer, "[::1]");
    log_refusals_free(r);
}

static void test_refusal_bound(void **state)
{
    struct summaries s = {0};
    struct log_refusals *r = log_refusals_new(8, 10000, on_summary, &s);
    char peer[32];
    int logged = 0;
    (void)state;
    for (int i = 0; i < 10000; i++) { /* 10,000 addresses: 8 slots and "other" */
        snprintf(peer, sizeof peer, "10.%d.%d.%d:80", i >> 16, (i >> 8) & 255, i & 255);
        logged += log_refusals_note(r, peer, "bad token", 5000);
    }
    assert_int_equal(log_refusals_count(r), 9);
    assert_int_equal(logged, 8 + LOG_REFUSAL_BURST);
    log_refusals_sweep(r, 15000);
    assert_int_equal(s.n, 1); /* the 8 own slots had one refusal each: nothing to sum up */
    assert_string_equal(s.peer, "other");
    assert_int_equal(s.refusals, 10000 - 8 - LOG_REFUSAL_BURST);
    log_refusals_sweep(r, 25000);
    assert_int_equal(log_refusals_count(r), 0);
    log_refusals_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_table),
        cmocka_unit_test(test_escape_long_and_small),
        cmocka_unit_test(test_refusal_window),
        cmocka_unit_test(test_refusal_bound),
        cmocka_unit_test(test_forged_text_line),
        cmocka_unit_test(test_forged_json_line),
        cmocka_unit_test(test_slow_stderr_drops),
    };
    return cmocka_run_group_tests(tests, setup_pipe, NULL);
}
