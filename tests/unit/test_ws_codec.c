/* tests/unit/test_ws_codec.c: WebSocket frame decoder, message assembler, encoders
 * and permessage-deflate.
 *
 * The stream table holds client byte streams (built from frame specs, masked like a
 * client, or raw bytes) and the event log they must produce. Every stream is fed
 * whole, split at every offset (sampled for the few large streams) and one byte at a
 * time; all runs must log the same events. Encoders round-trip through the decoder
 * after being masked like a client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"
#include "base/alloc.h"
#include "base/err.h"
#include "protocols/websocket/ws.h"
#include "protocols/websocket/ws_int.h"

#define MB (1024 * 1024)
#define S(s) s, sizeof(s) - 1

static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d}; /* RFC 6455 5.7's example key */

static const struct ws_deflate_params pmd_takeover = {true, false, false, 15, 15};
static const struct ws_deflate_params pmd_no_takeover = {true, true, true, 15, 15};

/* ---- stream building ---------------------------------------------------------- */

struct fr {
    uint8_t op;      /* opcode (any 4-bit value) */
    bool fin;
    uint8_t rsv;     /* extra bits for byte 0: 0x40 RSV1, 0x20 RSV2, 0x10 RSV3 */
    bool nomask;     /* send unmasked (a protocol error from a client) */
    bool z;          /* compress the payload with a fresh deflater and set RSV1 */
    const char *p;   /* payload */
    size_t n;        /* payload bytes */
};

#define FR(op, fin, s) {op, fin, 0, false, false, s, sizeof(s) - 1}
#define FRX(op, fin, rsv, nomask, z, s) {op, fin, rsv, nomask, z, s, sizeof(s) - 1}

/* Appends one client frame for spec f. */
static void build_frame(struct buf *out, const struct fr *f)
{
    struct buf z;
    const void *p = f->p;
    size_t n = f->n, start = out->len;
    uint8_t rsv = f->rsv;

    buf_init(&z);
    if (f->z) {
        struct ws_deflater *d = ws_deflater_new(15, true, -1);
        assert_int_equal(ws_deflater_compress(d, (const uint8_t *)f->p, f->n, &z), 0);
        ws_deflater_free(d);
        p = z.data;
        n = z.len;
        rsv |= 0x40;
    }
    if (f->nomask)
        ws_encode_frame(out, 0, f->fin, false, p, n);
    else
        ws_encode_client_frame(out, 0, f->fin, false, p, n, key);
    out->data[start] |= (uint8_t)((f->op & 0x0f) | rsv);
    buf_fini(&z);
}

/* ---- event log ---------------------------------------------------------------- */

static void log_bytes(struct buf *log, const uint8_t *p, size_t n)
{
    if (n > 64) {
        uint32_t h = 2166136261u; /* FNV-1a: long payloads log as a hash */
        for (size_t i = 0; i < n; i++)
            h = (h ^ p[i]) * 16777619u;
        buf_printf(log, "#%08x", h);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            buf_printf(log, "%c", p[i]);
        else
            buf_printf(log, "\\x%02x", p[i]);
    }
}

static void log_event(struct buf *log, const struct ws_event *ev)
{
    switch (ev->type) {
    case WS_EV_NONE:
        return;
    case WS_EV_MESSAGE:
        buf_printf(log, "%c%zu:", ev->opcode == WS_OP_TEXT ? 'T' : 'B', ev->len);
        break;
    case WS_EV_PING:
        buf_printf(log, "PING%zu:", ev->len);
        break;
    case WS_EV_PONG:
        buf_printf(log, "PONG%zu:", ev->len);
        break;
    case WS_EV_CLOSE:
        buf_printf(log, "CLOSE%u:", ev->close_code);
        break;
    }
    assert_non_null(ev->data);
    log_bytes(log, ev->data, ev->len);
    buf_append_str(log, ";");
}

/* Runs a client stream through one assembler, reads of `first` bytes then `step`
 * bytes, the way a socket would deliver them; logs events, then "ERR<code>" on error
 * or "+<n>" when n bytes of an unfinished frame are left. */
static void run_stream(const uint8_t *in, size_t len, size_t max,
                       const struct ws_deflate_params *pmd, size_t first, size_t step,
                       struct buf *log)
{
    struct ws_limits lim = {max, false};
    struct ws_assembler a;
    struct buf inbuf;
    size_t fed = 0;

    ws_assembler_init(&a, &lim, pmd);
    buf_init(&inbuf);
    buf_init(log);
    while (fed < len) {
        size_t n = fed == 0 ? first : step, off = 0;
        if (n > len - fed)
            n = len - fed;
        buf_append(&inbuf, in + fed, n);
        fed += n;
        while (off < inbuf.len) {
            struct ws_event ev;
            size_t used = 0;
            uint16_t code = 0;
            const char *why = NULL;
            enum codec_rc rc = ws_assembler_next(&a, inbuf.data + off, inbuf.len - off, &ev,
                                                 &used, &code, &why);
            if (rc == CODEC_NEED_MORE)
                break;
            if (rc == CODEC_ERROR) {
                assert_non_null(why);
                buf_printf(log, "ERR%u", code);
                goto done;
            }
            assert_true(used > 0 && used <= inbuf.len - off);
            off += used;
            log_event(log, &ev);
        }
        buf_consume(&inbuf, off);
    }
    if (inbuf.len > 0)
        buf_printf(log, "+%zu", inbuf.len);
done:
    ws_assembler_fini(&a);
    buf_fini(&inbuf);
}

/* Feeds the stream whole, split at every offset (or a sample for long streams) and
 * byte by byte; all must give `expect`. */
static void check_stream(const char *name, const uint8_t *in, size_t len, size_t max,
                         const struct ws_deflate_params *pmd, const char *expect)
{
    struct buf log;

    run_stream(in, len, max, pmd, len, len, &log);
    if (strcmp(buf_cstr(&log), expect) != 0)
        fail_msg("%s: whole: got \"%s\", want \"%s\"", name, buf_cstr(&log), expect);
    buf_fini(&log);
    for (size_t k = 1; k < len; k++) {
        if (len > 2048 && k > 64 && k < len - 64 && k % 997 != 0)
            continue;
        run_stream(in, len, max, pmd, k, len, &log);
        if (strcmp(buf_cstr(&log), expect) != 0)
            fail_msg("%s: split at %zu: got \"%s\", want \"%s\"", name, k, buf_cstr(&log),
                     expect);
        buf_fini(&log);
    }
    run_stream(in, len, max, pmd, 1, 1, &log);
    if (strcmp(buf_cstr(&log), expect) != 0)
        fail_msg("%s: bytewise: got \"%s\", want \"%s\"", name, buf_cstr(&log), expect);
    buf_fini(&log);
}

/* ---- the stream table --------------------------------------------------------- */

struct stream_case {
    const char *name;
    const char *raw;     /* raw client bytes, or NULL to build from frames */
    size_t raw_len;
    struct fr frames[8];
    size_t max;          /* max_message_bytes; 0 = 1 MiB */
    int deflate;         /* 0 none, 1 with context takeover, 2 without */
    const char *expect;
};

#define RAW(s) s, sizeof(s) - 1

static const struct stream_case cases[] = {
    /* single frames */
    {"text", NULL, 0, {FR(1, 1, "Hello")}, 0, 0, "T5:Hello;"},
    {"rfc6455 masked Hello", RAW("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"), {{0}}, 0, 0,
     "T5:Hello;"},
    {"binary", NULL, 0, {FR(2, 1, "\x00\x01\xff")}, 0, 0, "B3:\\x00\\x01\\xff;"},
    {"empty text", NULL, 0, {FR(1, 1, "")}, 0, 0, "T0:;"},
    {"empty binary", NULL, 0, {FR(2, 1, "")}, 0, 0, "B0:;"},
    {"two messages", NULL, 0, {FR(1, 1, "a"), FR(2, 1, "b")}, 0, 0, "T1:a;B1:b;"},
    {"partial frame left", RAW("\x81\x85\x00\x00\x00\x00Hel"), {{0}}, 0, 0, "+9"},
    {"non-minimal 16-bit length", RAW("\x81\xfe\x00\x02\x00\x00\x00\x00hi"), {{0}}, 0, 0,
     "T2:hi;"},
    {"non-minimal 64-bit length",
     RAW("\x82\xff\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00hi"), {{0}}, 0, 0, "B2:hi;"},
    {"unmasked client frame", NULL, 0, {FRX(1, 1, 0, true, false, "Hello")}, 0, 0, "ERR1002"},
    {"unmasked header only", RAW("\x81\x05"), {{0}}, 0, 0, "ERR1002"},
    /* reserved bits and opcodes */
    {"rsv1 without deflate", NULL, 0, {FRX(1, 1, 0x40, false, false, "x")}, 0, 0, "ERR1002"},
    {"rsv2", NULL, 0, {FRX(1, 1, 0x20, false, false, "x")}, 0, 0, "ERR1002"},
    {"rsv3", NULL, 0, {FRX(1, 1, 0x10, false, false, "x")}, 0, 0, "ERR1002"},
    {"rsv2 with deflate", NULL, 0, {FRX(1, 1, 0x20, false, false, "x")}, 0, 1, "ERR1002"},
    {"rsv1 on continuation", NULL, 0,
     {FR(1, 0, "a"), FRX(0, 1, 0x40, false, false, "b")}, 0, 1, "ERR1002"},
    {"rsv1 on ping", NULL, 0, {FRX(9, 1, 0x40, false, false, "")}, 0, 1, "ERR1002"},
    {"opcode 3", NULL, 0, {FR(3, 1, "")}, 0, 0, "ERR1002"},
    {"opcode 7", NULL, 0, {FR(7, 1, "")}, 0, 0, "ERR1002"},
    {"opcode 0xb", NULL, 0, {FR(0xb, 1, "")}, 0, 0, "ERR1002"},
    {"opcode 0xf", NULL, 0, {FR(0xf, 1, "")}, 0, 0, "ERR1002"},
    {"unknown opcode after a message", NULL, 0, {FR(1, 1, "ok"), FR(4, 1, "")}, 0, 0,
     "T2:ok;ERR1002"},
    /* control frames */
    {"ping", NULL, 0, {FR(9, 1, "hb")}, 0, 0, "PING2:hb;"},
    {"pong", NULL, 0, {FR(10, 1, "")}, 0, 0, "PONG0:;"},
    {"ping 125 bytes", NULL, 0,
     {FR(9, 1, "0123456789012345678901234567890123456789012345678901234567890123456789"
               "0123456789012345678901234567890123456789012345678901234")},
     0, 0, "PING125:#6ab7bd0f;"},
    {"ping 126 bytes", RAW("\x89\xfe\x00\x7e"), {{0}}, 0, 0, "ERR1002"},
    {"fragmented ping", NULL, 0, {FR(9, 0, "a")}, 0, 0, "ERR1002"},
    {"fragmented close", RAW("\x08\x80"), {{0}}, 0, 0, "ERR1002"},
    /* close payloads */
    {"close empty", NULL, 0, {FR(8, 1, "")}, 0, 0, "CLOSE1005:;"},
    {"close 1000 reason", NULL, 0, {FR(8, 1, "\x03\xe8" "bye")}, 0, 0, "CLOSE1000:bye;"},
    {"close 1 byte", NULL, 0, {FR(8, 1, "\x03")}, 0, 0, "ERR1002"},
    /* the next byte would complete a valid code (0x0fa0 = 4000) if it were read */
    {"close 1 byte then more", RAW("\x88\x81\x00\x00\x00\x00\x0f\xa0"), {{0}}, 0, 0,
     "ERR1002"},
    {"close 1001", NULL, 0, {FR(8, 1, "\x03\xe9")}, 0, 0, "CLOSE1001:;"},
    {"close 1002", NULL, 0, {FR(8, 1, "\x03\xea")}, 0, 0, "CLOSE1002:;"},
    {"close 1003", NULL, 0, {FR(8, 1, "\x03\xeb")}, 0, 0, "CLOSE1003:;"},
    {"close 1007", NULL, 0, {FR(8, 1, "\x03\xef")}, 0, 0, "CLOSE1007:;"},
    {"close 1008", NULL, 0, {FR(8, 1, "\x03\xf0")}, 0, 0, "CLOSE1008:;"},
    {"close 1009", NULL, 0, {FR(8, 1, "\x03\xf1")}, 0, 0, "CLOSE1009:;"},
    {"close 1010", NULL, 0, {FR(8, 1, "\x03\xf2")}, 0, 0, "CLOSE1010:;"},
    {"close 1011", NULL, 0, {FR(8, 1, "\x03\xf3")}, 0, 0, "CLOSE1011:;"},
    {"close 3000", NULL, 0, {FR(8, 1, "\x0b\xb8")}, 0, 0, "CLOSE3000:;"},
    {"close 3999", NULL, 0, {FR(8, 1, "\x0f\x9f")}, 0, 0, "CLOSE3999:;"},
    {"close 4000", NULL, 0, {FR(8, 1, "\x0f\xa0")}, 0, 0, "CLOSE4000:;"},
    {"close 4999", NULL, 0, {FR(8, 1, "\x13\x87" "ok")}, 0, 0, "CLOSE4999:ok;"},
    {"close 0", NULL, 0, {FR(8, 1, "\x00\x00")}, 0, 0, "ERR1002"},
    {"close 999", NULL, 0, {FR(8, 1, "\x03\xe7")}, 0, 0, "ERR1002"},
    {"close 1004", NULL, 0, {FR(8, 1, "\x03\xec")}, 0, 0, "ERR1002"},
    {"close 1005", NULL, 0, {FR(8, 1, "\x03\xed")}, 0, 0, "ERR1002"},
    {"close 1006", NULL, 0, {FR(8, 1, "\x03\xee")}, 0, 0, "ERR1002"},
    {"close 1012", NULL, 0, {FR(8, 1, "\x03\xf4")}, 0, 0, "ERR1002"},
    {"close 1015", NULL, 0, {FR(8, 1, "\x03\xf7")}, 0, 0, "ERR1002"},
    {"close 2999", NULL, 0, {FR(8, 1, "\x0b\xb7")}, 0, 0, "ERR1002"},
    {"close 5000", NULL, 0, {FR(8, 1, "\x13\x88")}, 0, 0, "ERR1002"},
    {"close 65535", NULL, 0, {FR(8, 1, "\xff\xff")}, 0, 0, "ERR1002"},
    {"close reason bad utf8", NULL, 0, {FR(8, 1, "\x03\xe8\xc0\xaf")}, 0, 0, "ERR1007"},
    {"close reason utf8", NULL, 0, {FR(8, 1, "\x03\xe8\xce\xba")}, 0, 0,
     "CLOSE1000:\\xce\\xba;"},
    /* lengths and limits */
    {"64-bit length top bit", RAW("\x82\xff\x80\x00\x00\x00\x00\x00\x00\x05"), {{0}}, 0, 0,
     "ERR1002"},
    {"too big on header", RAW("\x82\x8b"), {{0}}, 10, 0, "ERR1009"},
    {"too big 16-bit", RAW("\x82\xfe\x01\x00"), {{0}}, 255, 0, "ERR1009"},
    {"exactly the cap", NULL, 0, {FR(1, 1, "0123456789")}, 10, 0, "T10:0123456789;"},
    {"fragments over the cap", NULL, 0, {FR(1, 0, "Hello"), FR(0, 1, "World!")}, 10, 0,
     "ERR1009"},
    {"fragments exactly the cap", NULL, 0, {FR(1, 0, "Hello"), FR(0, 1, "World")}, 10, 0,
     "T10:HelloWorld;"},
    {"continuation over the cap fails on header", RAW("\x01\x85\x00\x00\x00\x00Hello\x80\x86"),
     {{0}}, 10, 0, "ERR1009"},
    {"ping does not count against the cap", NULL, 0,
     {FR(1, 0, "Hello"), FR(9, 1, "0123456789ab"), FR(0, 1, "World")}, 10, 0,
     "PING12:0123456789ab;T10:HelloWorld;"},
    /* fragmentation */
    {"fragmented text", NULL, 0, {FR(1, 0, "Hel"), FR(0, 1, "lo")}, 0, 0, "T5:Hello;"},
    {"fragmented binary 3", NULL, 0, {FR(2, 0, "a"), FR(0, 0, ""), FR(0, 1, "b")}, 0, 0,
     "B2:ab;"},
    {"fragments with interleaved control", NULL, 0,
     {FR(1, 0, "Hel"), FR(9, 1, "p"), FR(0, 0, "l"), FR(10, 1, ""), FR(0, 1, "o")}, 0, 0,
     "PING1:p;PONG0:;T5:Hello;"},
    {"close inside a fragmented message", NULL, 0, {FR(1, 0, "Hel"), FR(8, 1, "\x03\xe8")}, 0,
     0, "CLOSE1000:;"},
    {"continuation without start", NULL, 0, {FR(0, 1, "x")}, 0, 0, "ERR1002"},
    {"continuation after a complete message", NULL, 0, {FR(1, 1, "a"), FR(0, 1, "b")}, 0, 0,
     "T1:a;ERR1002"},
    {"new text inside fragmented", NULL, 0, {FR(1, 0, "a"), FR(1, 1, "b")}, 0, 0, "ERR1002"},
    {"new binary inside fragmented", NULL, 0, {FR(2, 0, "a"), FR(2, 0, "b")}, 0, 0,
     "ERR1002"},
    {"message after fragmented", NULL, 0, {FR(2, 0, "a"), FR(0, 1, "b"), FR(1, 1, "c")}, 0, 0,
     "B2:ab;T1:c;"},
    /* UTF-8 */
    {"utf8 valid", NULL, 0, {FR(1, 1, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")}, 0, 0,
     "T11:\\xce\\xba\\xe1\\xbd\\xb9\\xcf\\x83\\xce\\xbc\\xce\\xb5;"},
    {"utf8 4-byte and U+10FFFF", NULL, 0, {FR(1, 1, "\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf")}, 0,
     0, "T8:\\xf0\\x9f\\x98\\x80\\xf4\\x8f\\xbf\\xbf;"},
    {"utf8 split across fragments", NULL, 0,
     {FR(1, 0, "\xce"), FR(0, 0, ""), FR(0, 1, "\xba")}, 0, 0, "T2:\\xce\\xba;"},
    {"utf8 4-byte split 1+3", NULL, 0, {FR(1, 0, "a\xf0"), FR(0, 1, "\x9f\x98\x80")}, 0, 0,
     "T5:a\\xf0\\x9f\\x98\\x80;"},
    {"utf8 4-byte split 3+1", NULL, 0, {FR(1, 0, "\xf0\x9f\x98"), FR(0, 1, "\x80")}, 0, 0,
     "T4:\\xf0\\x9f\\x98\\x80;"},
    {"utf8 overlong 2-byte", NULL, 0, {FR(1, 1, "\xc0\xaf")}, 0, 0, "ERR1007"},
    {"utf8 overlong C1", NULL, 0, {FR(1, 1, "\xc1\xbf")}, 0, 0, "ERR1007"},
    {"utf8 overlong 3-byte", NULL, 0, {FR(1, 1, "\xe0\x80\xaf")}, 0, 0, "ERR1007"},
    {"utf8 overlong 4-byte", NULL, 0, {FR(1, 1, "\xf0\x80\x80\xaf")}, 0, 0, "ERR1007"},
    {"utf8 surrogate", NULL, 0, {FR(1, 1, "\xed\xa0\x80")}, 0, 0, "ERR1007"},
    {"utf8 surrogate split across fragments", NULL, 0, {FR(1, 0, "\xed"), FR(0, 1, "\xa0\x80")},
     0, 0, "ERR1007"},
    {"utf8 above U+10FFFF", NULL, 0, {FR(1, 1, "\xf4\x90\x80\x80")}, 0, 0, "ERR1007"},
    {"utf8 F5", NULL, 0, {FR(1, 1, "\xf5\x80\x80\x80")}, 0, 0, "ERR1007"},
    {"utf8 lone continuation", NULL, 0, {FR(1, 1, "a\x80")}, 0, 0, "ERR1007"},
    {"utf8 truncated at end", NULL, 0, {FR(1, 1, "a\xce")}, 0, 0, "ERR1007"},
    {"utf8 truncated across fragments", NULL, 0, {FR(1, 0, "a"), FR(0, 1, "\xe1\xbd")}, 0, 0,
     "ERR1007"},
    {"utf8 fails fast in first fragment", NULL, 0, {FR(1, 0, "ok\xff")}, 0, 0, "ERR1007"},
    {"utf8 bad byte in a later fragment", NULL, 0,
     {FR(1, 0, "\xce\xba"), FR(0, 0, "\xce\xba\xc0"), FR(0, 1, "x")}, 0, 0, "ERR1007"},
    {"binary is not utf8-checked", NULL, 0, {FR(2, 1, "\xc0\xaf")}, 0, 0, "B2:\\xc0\\xaf;"},
    /* permessage-deflate */
    {"rfc7692 7.2.3.1 Hello", RAW("\xc1\x87\x00\x00\x00\x00\xf2\x48\xcd\xc9\xc9\x07\x00"),
     {{0}}, 0, 1, "T5:Hello;"},
    {"rfc7692 7.2.3.2 shared window",
     RAW("\xc1\x87\x00\x00\x00\x00\xf2\x48\xcd\xc9\xc9\x07\x00"
         "\xc1\x85\x00\x00\x00\x00\xf2\x00\x11\x00\x00"),
     {{0}}, 0, 1, "T5:Hello;T5:Hello;"},
    {"rfc7692 7.2.3.3 stored block",
     RAW("\xc1\x8b\x00\x00\x00\x00\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00"), {{0}}, 0, 1,
     "T5:Hello;"},
    {"rfc7692 7.2.3.4 two blocks",
     RAW("\xc1\x8d\x00\x00\x00\x00\xf2\x48\x05\x00\x00\x00\xff\xff\xca\xc9\xc9\x07\x00"),
     {{0}}, 0, 1, "T5:Hello;"},
    {"BFINAL block then shared window",
     RAW("\xc1\x87\x00\x00\x00\x00\xf3\x48\xcd\xc9\xc9\x07\x00"
         "\xc1\x85\x00\x00\x00\x00\xf2\x00\x11\x00\x00"),
     {{0}}, 0, 1, "T5:Hello;T5:Hello;"},
    {"BFINAL block, bytes after it ignored",
     RAW("\xc1\x88\x00\x00\x00\x00\xf3\x48\xcd\xc9\xc9\x07\x00\x00"
         "\xc1\x85\x00\x00\x00\x00\xf2\x00\x11\x00\x00"),
     {{0}}, 0, 1, "T5:Hello;T5:Hello;"},
    {"compressed fragments with ping",
     RAW("\x41\x83\x00\x00\x00\x00\xf2\x48\xcd"
         "\x89\x80\x00\x00\x00\x00"
         "\x80\x84\x00\x00\x00\x00\xc9\xc9\x07\x00"),
     {{0}}, 0, 1, "PING0:;T5:Hello;"},
    {"compressed empty message", RAW("\xc1\x81\x00\x00\x00\x00\x00"), {{0}}, 0, 1, "T0:;"},
    {"compressed then plain", NULL, 0,
     {FRX(1, 1, 0, false, true, "compressed"), FR(1, 1, "plain")}, 0, 1,
     "T10:compressed;T5:plain;"},
    {"compressed binary", NULL, 0, {FRX(2, 1, 0, false, true, "\x00\x01\x02")}, 0, 2,
     "B3:\\x00\\x01\\x02;"},
    {"compressed bad data", RAW("\xc1\x83\x00\x00\x00\x00\xff\xff\xff"), {{0}}, 0, 1,
     "ERR1002"},
    {"compressed bad utf8", NULL, 0, {FRX(1, 1, 0, false, true, "ok\xc0\xaf")}, 0, 1,
     "ERR1007"},
    {"compressed truncated utf8", NULL, 0, {FRX(1, 1, 0, false, true, "ok\xce")}, 0, 2,
     "ERR1007"},
    {"decompressed over the cap", NULL, 0,
     {FRX(1, 1, 0, false, true,
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")},
     64, 1, "ERR1009"},
    {"decompressed exactly the cap", NULL, 0,
     {FRX(1, 1, 0, false, true,
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")},
     64, 2, "T64:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;"},
};

static void build_case(const struct stream_case *c, struct buf *out)
{
    buf_init(out);
    if (c->raw) {
        buf_append(out, c->raw, c->raw_len);
        return;
    }
    for (size_t i = 0; i < 8 && (c->frames[i].p != NULL); i++)
        build_frame(out, &c->frames[i]);
}

static const struct ws_deflate_params *case_pmd(int deflate)
{
    return deflate == 1 ? &pmd_takeover : deflate == 2 ? &pmd_no_takeover : NULL;
}

static void test_stream_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct stream_case *c = &cases[i];
        struct buf in;
        build_case(c, &in);
        check_stream(c->name, in.data, in.len, c->max ? c->max : MB, case_pmd(c->deflate),
                     c->expect);
        buf_fini(&in);
    }
}

/* Large frames: 16-bit and 64-bit lengths, fragmented and not, sampled splits. */
static void test_large_frames(void **state)
{
    static const size_t sizes[] = {125, 126, 127, 65535, 65536, 70000};
    (void)state;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint8_t *p = xmalloc(n);
        struct buf in, want, log;
        for (size_t j = 0; j < n; j++)
            p[j] = (uint8_t)('a' + j % 26);
        buf_init(&in);
        ws_encode_client_frame(&in, WS_OP_BINARY, true, false, p, n, key);
        ws_encode_client_frame(&in, WS_OP_TEXT, false, false, p, n / 2, key);
        ws_encode_client_frame(&in, WS_OP_CONT, true, false, p + n / 2, n - n / 2, key);
        buf_init(&want);
        buf_printf(&want, "B%zu:", n);
        log_bytes(&want, p, n);
        buf_printf(&want, ";T%zu:", n);
        log_bytes(&want, p, n);
        buf_append_str(&want, ";");
        check_stream("large", in.data, in.len, MB, NULL, buf_cstr(&want));
        /* one byte under the size: the first frame fails on its header */
        run_stream(in.data, in.len, n - 1, NULL, in.len, in.len, &log);
        assert_string_equal(buf_cstr(&log), "ERR1009");
        buf_fini(&log);
        buf_fini(&want);
        buf_fini(&in);
        free(p);
    }
}

/* ---- decoder details ---------------------------------------------------------- */

static void test_decode_fields(void **state)
{
    uint8_t frame[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0xAA};
    uint8_t copy[sizeof frame];
    struct ws_limits lim = {MB, false};
    struct ws_frame f;
    size_t used = 0;
    uint16_t code = 0;
    const char *why = NULL;
    (void)state;

    /* NEED_MORE at every prefix leaves the bytes untouched. */
    memcpy(copy, frame, sizeof frame);
    for (size_t n = 0; n < 11; n++) {
        assert_int_equal(ws_decode_frame(&lim, frame, n, &f, &used, &code, &why),
                         CODEC_NEED_MORE);
        assert_memory_equal(frame, copy, sizeof frame);
    }
    assert_int_equal(ws_decode_frame(&lim, frame, sizeof frame, &f, &used, &code, &why),
                     CODEC_FRAME);
    assert_int_equal(used, 11);
    assert_true(f.fin);
    assert_false(f.rsv1 || f.rsv2 || f.rsv3);
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_true(f.masked);
    assert_memory_equal(f.mask, key, 4);
    assert_int_equal(f.header_len, 6);
    assert_int_equal(f.payload_len, 5);
    assert_ptr_equal(f.payload, frame + 6);
    assert_memory_equal(f.payload, "Hello", 5); /* unmasked in place */
    assert_int_equal(frame[11], 0xAA);         /* nothing past the frame touched */
}

static void test_decode_errors_untouched(void **state)
{
    uint8_t frame[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    uint8_t copy[sizeof frame];
    struct ws_limits lim = {MB, false};
    struct ws_frame f;
    size_t used = 0;
    uint16_t code = 0;
    const char *why = NULL;
    (void)state;

    memcpy(copy, frame, sizeof frame);
    assert_int_equal(ws_decode_frame(&lim, frame, sizeof frame, &f, &used, &code, &why),
                     CODEC_ERROR);
    assert_int_equal(code, WS_CLOSE_PROTOCOL);
    assert_non_null(why);
    assert_memory_equal(frame, copy, sizeof frame);
}

static void test_control_frames_ignore_small_cap(void **state)
{
    uint8_t ping[] = {0x89, 0x83, 0, 0, 0, 0, 'a', 'b', 'c'};
    struct ws_limits lim = {1, false};
    struct ws_frame f;
    size_t used = 0;
    uint16_t code = 0;
    const char *why = NULL;
    (void)state;

    assert_int_equal(ws_decode_frame(&lim, ping, sizeof ping, &f, &used, &code, &why),
                     CODEC_FRAME);
    assert_int_equal(f.payload_len, 3);
}

static void test_mask_offsets(void **state)
{
    uint8_t whole[37], pieces[37];
    (void)state;
    for (size_t i = 0; i < sizeof whole; i++)
        whole[i] = pieces[i] = (uint8_t)(i * 7);
    ws_mask(whole, sizeof whole, key, 0);
    for (size_t cut = 0; cut <= sizeof whole; cut++) {
        uint8_t tmp[37];
        memcpy(tmp, pieces, sizeof tmp);
        ws_mask(tmp, cut, key, 0);
        ws_mask(tmp + cut, sizeof tmp - cut, key, cut);
        assert_memory_equal(tmp, whole, sizeof whole);
    }
    ws_mask(whole, sizeof whole, key, 0);
    assert_memory_equal(whole, pieces, sizeof whole);
}

/* ---- UTF-8 -------------------------------------------------------------------- */

static const struct {
    const char *s;
    size_t n;
    bool valid;
} utf8_cases[] = {
    {S(""), true},
    {S("plain ascii, long enough to take the eight-byte path"), true},
    {S("\x7f"), true},
    {S("\xc2\x80"), true},
    {S("\xdf\xbf"), true},
    {S("\xe0\xa0\x80"), true},
    {S("\xed\x9f\xbf"), true},   /* U+D7FF */
    {S("\xee\x80\x80"), true},   /* U+E000 */
    {S("\xef\xbf\xbf"), true},   /* U+FFFF */
    {S("\xf0\x90\x80\x80"), true},
    {S("\xf4\x8f\xbf\xbf"), true},
    {S("\xc0\x80"), false},
    {S("\xc1\xbf"), false},
    {S("\xe0\x9f\xbf"), false},  /* overlong */
    {S("\xed\xa0\x80"), false},  /* U+D800 */
    {S("\xed\xbf\xbf"), false},  /* U+DFFF */
    {S("\xf0\x8f\xbf\xbf"), false},
    {S("\xf4\x90\x80\x80"), false},
    {S("\xf8\x88\x80\x80\x80"), false},
    {S("\xff"), false},
    {S("\x80"), false},
    {S("\xc2"), false},
    {S("\xe0\xa0"), false},
    {S("\xf0\x90\x80"), false},
    {S("\xc2\x41"), false},
    {S("abcdefgh\xce\xba" "abcdefgh\xff"), false},
};

static void test_utf8_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof utf8_cases / sizeof utf8_cases[0]; i++) {
        const uint8_t *p = (const uint8_t *)utf8_cases[i].s;
        size_t n = utf8_cases[i].n;
        assert_int_equal(ws_utf8_valid(p, n), utf8_cases[i].valid);
        for (size_t k = 0; k <= n; k++) {
            uint8_t st[3] = {0, 0, 0};
            bool ok = ws_utf8_feed(st, p, k) && ws_utf8_feed(st, p + k, n - k) &&
                      ws_utf8_complete(st);
            if (ok != utf8_cases[i].valid)
                fail_msg("utf8 case %zu split at %zu: got %d", i, k, ok);
        }
    }
}

/* ---- encoders ----------------------------------------------------------------- */

/* Turns a server frame (unmasked) at f[0..len) into a client frame in out. */
static void mask_like_client(const uint8_t *f, size_t len, struct buf *out)
{
    size_t hdr = (f[1] & 0x7f) == 126 ? 4 : (f[1] & 0x7f) == 127 ? 10 : 2;
    size_t start;
    assert_false(f[1] & 0x80);
    buf_append(out, f, hdr);
    out->data[out->len - hdr + 1] |= 0x80;
    buf_append(out, key, 4);
    start = out->len;
    buf_append(out, f + hdr, len - hdr);
    ws_mask(out->data + start, len - hdr, key, 0);
}

static void test_header_lengths(void **state)
{
    static const struct {
        size_t len, hdr;
    } t[] = {{0, 2}, {125, 2}, {126, 4}, {65535, 4}, {65536, 10}, {(size_t)1 << 32, 10}};
    (void)state;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct buf b;
        buf_init(&b);
        ws_encode_header(&b, WS_OP_BINARY, true, false, t[i].len);
        assert_int_equal(b.len, t[i].hdr);
        assert_int_equal(b.data[0], 0x82);
        assert_false(b.data[1] & 0x80); /* server frames are never masked */
        buf_fini(&b);
    }
}

static void test_encode_roundtrip(void **state)
{
    static const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70001};
    struct ws_limits lim = {MB, true};
    (void)state;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int variant = 0; variant < 4; variant++) {
            uint8_t opcode = variant == 0 ? WS_OP_TEXT : variant == 1 ? WS_OP_BINARY : WS_OP_CONT;
            bool fin = variant != 2, rsv1 = variant == 1;
            size_t n = sizes[i];
            uint8_t *p = xmalloc(n + 1);
            struct buf srv, cli;
            struct ws_frame f;
            size_t used = 0;
            uint16_t code = 0;
            const char *why = NULL;
            for (size_t j = 0; j < n; j++)
                p[j] = (uint8_t)(j * 31 + 7);
            if (variant == 3) {
                opcode = WS_OP_PING;
                n = n > 125 ? 125 : n;
            }
            buf_init(&srv);
            buf_init(&cli);
            ws_encode_frame(&srv, opcode, fin, rsv1, p, n);
            mask_like_client(srv.data, srv.len, &cli);
            assert_int_equal(ws_decode_frame(&lim, cli.data, cli.len, &f, &used, &code, &why),
                             CODEC_FRAME);
            assert_int_equal(used, cli.len);
            assert_int_equal(f.opcode, opcode);
            assert_int_equal(f.fin, fin);
            assert_int_equal(f.rsv1, rsv1);
            assert_int_equal(f.payload_len, n);
            if (n > 0)
                assert_memory_equal(f.payload, p, n);
            buf_fini(&srv);
            buf_fini(&cli);
            free(p);
        }
    }
}

/* Runs server-encoded frames, masked like a client, through an assembler. */
static void assemble_server_frames(const struct buf *srv, const struct ws_deflate_params *pmd,
                                   struct buf *log)
{
    struct buf cli;
    size_t off = 0;
    buf_init(&cli);
    while (off < srv->len) {
        const uint8_t *f = srv->data + off;
        size_t l7 = f[1] & 0x7f, hdr = l7 == 126 ? 4 : l7 == 127 ? 10 : 2, plen = l7;
        if (l7 == 126)
            plen = (size_t)f[2] << 8 | f[3];
        else if (l7 == 127)
            for (int i = 0; i < 8; i++)
                plen = (i ? plen : 0) << 8 | f[2 + i];
        mask_like_client(f, hdr + plen, &cli);
        off += hdr + plen;
    }
    run_stream(cli.data, cli.len, MB, pmd, cli.len, cli.len, log);
    buf_fini(&cli);
}

static void test_encode_helpers(void **state)
{
    struct buf srv, log;
    char reason[200];
    (void)state;

    buf_init(&srv);
    ws_encode_text(&srv, "hi", 2);
    ws_encode_binary(&srv, "\x00\xff", 2);
    ws_encode_ping(&srv, "p", 1);
    ws_encode_pong(&srv, "q", 1);
    ws_encode_frame(&srv, WS_OP_TEXT, false, false, "frag", 4);
    ws_encode_frame(&srv, WS_OP_CONT, true, false, "ment", 4);
    ws_encode_close(&srv, 1001, "bye", 3);
    assemble_server_frames(&srv, NULL, &log);
    assert_string_equal(buf_cstr(&log),
                        "T2:hi;B2:\\x00\\xff;PING1:p;PONG1:q;T8:fragment;CLOSE1001:bye;");
    buf_fini(&log);
    buf_fini(&srv);

    /* Empty close; a long reason is cut at a character boundary within 123 bytes. */
    buf_init(&srv);
    ws_encode_close(&srv, 0, NULL, 0);
    assert_int_equal(srv.len, 2);
    assert_memory_equal(srv.data, "\x88\x00", 2);
    buf_fini(&srv);
    for (size_t i = 0; i < 62; i++)
        memcpy(reason + 2 * i, "\xc3\xa9", 2); /* é, 124 bytes */
    buf_init(&srv);
    ws_encode_close(&srv, 4000, reason, 124);
    assert_int_equal(srv.data[1], 2 + 122);
    assemble_server_frames(&srv, NULL, &log);
    assert_int_equal(strncmp(buf_cstr(&log), "CLOSE4000:", 10), 0);
    buf_fini(&log);
    buf_fini(&srv);
    memset(reason, 'r', sizeof reason);
    buf_init(&srv);
    ws_encode_close(&srv, 1000, reason, sizeof reason);
    assert_int_equal(srv.data[1], 125);
    buf_fini(&srv);
}

/* ---- permessage-deflate ------------------------------------------------------- */

static void test_rfc7692_hello(void **state)
{
    static const uint8_t hello_z[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
    static const uint8_t hello_again_z[] = {0xf2, 0x00, 0x11, 0x00, 0x00};
    struct ws_deflater *d = ws_deflater_new(15, false, -1);
    struct ws_inflater *z = ws_inflater_new(15, false);
    struct buf out;
    const char *why = NULL;
    (void)state;

    /* Our compressor produces the RFC's bytes, and with context takeover the
     * second "Hello" is the RFC 7692 7.2.3.2 back-reference. */
    buf_init(&out);
    assert_int_equal(ws_deflater_compress(d, (const uint8_t *)"Hello", 5, &out), 0);
    assert_int_equal(out.len, sizeof hello_z);
    assert_memory_equal(out.data, hello_z, sizeof hello_z);
    out.len = 0;
    assert_int_equal(ws_deflater_compress(d, (const uint8_t *)"Hello", 5, &out), 0);
    assert_int_equal(out.len, sizeof hello_again_z);
    assert_memory_equal(out.data, hello_again_z, sizeof hello_again_z);

    out.len = 0;
    assert_int_equal(ws_inflater_feed(z, hello_z, sizeof hello_z, true, &out, 100, &why), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "Hello", 5);
    out.len = 0;
    assert_int_equal(
        ws_inflater_feed(z, hello_again_z, sizeof hello_again_z, true, &out, 100, &why), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "Hello", 5);

    /* Without context takeover the back-reference has nothing to refer to. */
    ws_inflater_free(z);
    z = ws_inflater_new(15, true);
    out.len = 0;
    assert_int_equal(ws_inflater_feed(z, hello_z, sizeof hello_z, true, &out, 100, &why), 0);
    out.len = 0;
    assert_int_equal(
        ws_inflater_feed(z, hello_again_z, sizeof hello_again_z, true, &out, 100, &why),
        GW_EINVAL);
    assert_non_null(why);

    ws_inflater_free(z);
    ws_deflater_free(d);
    buf_fini(&out);
}

static void test_inflate_bounded(void **state)
{
    uint8_t *big = xcalloc(1, 1 << 20);
    struct ws_deflater *d = ws_deflater_new(15, true, 9);
    struct ws_inflater *z = ws_inflater_new(15, true);
    struct buf zbuf, out;
    const char *why = NULL;
    (void)state;

    buf_init(&zbuf);
    buf_init(&out);
    assert_int_equal(ws_deflater_compress(d, big, 1 << 20, &zbuf), 0);
    assert_true(zbuf.len < 2048); /* a megabyte of zeros is a tiny bomb */
    assert_int_equal(ws_inflater_feed(z, zbuf.data, zbuf.len, true, &out, 1000, &why),
                     GW_ELIMIT);
    assert_true(out.len <= 1001);
    ws_inflater_free(z);
    /* The exact size passes. */
    z = ws_inflater_new(15, true);
    out.len = 0;
    assert_int_equal(ws_inflater_feed(z, zbuf.data, zbuf.len, true, &out, 1 << 20, &why), 0);
    assert_int_equal(out.len, 1 << 20);
    assert_memory_equal(out.data, big, 1 << 20);
    ws_inflater_free(z);
    ws_deflater_free(d);
    buf_fini(&zbuf);
    buf_fini(&out);
    free(big);
}

/* Messages compressed by ws_encode_message, masked like a client, decoded by an
 * assembler with the same parameters: with and without context takeover, at
 * several window sizes, in one stream and split every way. */
static void test_deflate_roundtrip(void **state)
{
    static const char *msgs[] = {
        "{\"temp\":21.5,\"hum\":40}", "{\"temp\":21.5,\"hum\":41}", "", "x",
        "{\"temp\":21.6,\"hum\":41,\"note\":\"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\"}",
    };
    static const int bits[] = {9, 12, 15};
    (void)state;
    for (int takeover = 0; takeover < 2; takeover++) {
        for (size_t b = 0; b < sizeof bits / sizeof bits[0]; b++) {
            struct ws_deflate_params pmd = {true, !takeover, !takeover, (uint8_t)bits[b],
                                            (uint8_t)bits[b]};
            struct ws_deflater *d = ws_deflater_for(&pmd, -1);
            struct buf srv, cli, want;
            size_t first_len = 0, second_len = 0;
            buf_init(&srv);
            buf_init(&want);
            for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
                size_t before = srv.len;
                assert_int_equal(
                    ws_encode_message(&srv, d, WS_OP_TEXT, msgs[i], strlen(msgs[i])), 0);
                assert_int_equal(srv.data[before] & 0x40, 0x40); /* RSV1 */
                if (i == 0)
                    first_len = srv.len - before;
                if (i == 1)
                    second_len = srv.len - before;
                buf_printf(&want, "T%zu:", strlen(msgs[i]));
                log_bytes(&want, (const uint8_t *)msgs[i], strlen(msgs[i]));
                buf_append_str(&want, ";");
            }
            /* Takeover makes the near-repeat much smaller; without it, no gain. */
            if (takeover)
                assert_true(second_len < first_len);
            else
                assert_int_equal(second_len, first_len);
            buf_init(&cli);
            for (size_t off = 0; off < srv.len;) {
                size_t plen = srv.data[off + 1] & 0x7f;
                assert_true(plen < 126);
                mask_like_client(srv.data + off, 2 + plen, &cli);
                off += 2 + plen;
            }
            check_stream("deflate roundtrip", cli.data, cli.len, MB, &pmd, buf_cstr(&want));
            buf_fini(&cli);
            buf_fini(&srv);
            buf_fini(&want);
            ws_deflater_free(d);
        }
    }
}

/* A client that exceeds the agreed window fails: with context takeover, a message
 * that repeats the previous one refers ~1000 bytes back, beyond a 9-bit window.
 * (zlib also lets a small window resolve references into output produced within
 * the same call, so the check bites across messages, which is what bounds memory.) */
static void test_inflate_window_enforced(void **state)
{
    uint8_t msg[1000];
    struct ws_deflater *d = ws_deflater_new(15, false, 9);
    struct buf z1, z2, out;
    const char *why = NULL;
    uint32_t x = 12345;
    (void)state;

    for (size_t i = 0; i < sizeof msg; i++) {
        x = x * 1103515245u + 12345u;
        msg[i] = (uint8_t)(x >> 16);
    }
    buf_init(&z1);
    buf_init(&z2);
    buf_init(&out);
    assert_int_equal(ws_deflater_compress(d, msg, sizeof msg, &z1), 0);
    assert_int_equal(ws_deflater_compress(d, msg, sizeof msg, &z2), 0);
    assert_true(z2.len < 100); /* one back-reference */
    for (int bits = 9; bits <= 15; bits += 6) {
        struct ws_inflater *z = ws_inflater_new(bits, false);
        out.len = 0;
        assert_int_equal(ws_inflater_feed(z, z1.data, z1.len, true, &out, MB, &why), 0);
        assert_memory_equal(out.data, msg, sizeof msg);
        out.len = 0;
        assert_int_equal(ws_inflater_feed(z, z2.data, z2.len, true, &out, MB, &why),
                         bits == 9 ? GW_EINVAL : 0);
        if (bits == 15)
            assert_memory_equal(out.data, msg, sizeof msg);
        ws_inflater_free(z);
    }
    ws_deflater_free(d);
    buf_fini(&z1);
    buf_fini(&z2);
    buf_fini(&out);
}

/* Shared frames are byte-identical whoever they go to, and decode on connections
 * with and without context takeover, even after other traffic. */
static void test_shared_frames(void **state)
{
    struct ws_deflater *shared = ws_deflater_new(15, true, -1);
    struct ws_deflater *own = ws_deflater_new(15, false, -1);
    struct buf a, b, srv, log;
    const char *msg = "{\"dev\":\"d1\",\"temp\":21.5}";
    (void)state;

    buf_init(&a);
    buf_init(&b);
    assert_int_equal(ws_encode_shared(&a, own, WS_OP_TEXT, msg, strlen(msg)), GW_EINVAL);
    assert_int_equal(a.len, 0);
    assert_int_equal(ws_encode_shared(&a, shared, WS_OP_TEXT, msg, strlen(msg)), 0);
    assert_int_equal(ws_encode_shared(&b, shared, WS_OP_TEXT, msg, strlen(msg)), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    b.len = 0;
    assert_int_equal(ws_encode_shared(&b, NULL, WS_OP_TEXT, msg, strlen(msg)), 0);
    assert_int_equal(b.data[0], 0x81); /* plain variant: no RSV1 */

    /* Connection 1 (takeover) got a plain message and a ping first. */
    buf_init(&srv);
    ws_encode_text(&srv, "first", 5);
    ws_encode_ping(&srv, "", 0);
    buf_append(&srv, a.data, a.len);
    assemble_server_frames(&srv, &pmd_takeover, &log);
    assert_string_equal(buf_cstr(&log), "T5:first;PING0:;T24:{\"dev\":\"d1\",\"temp\":21.5};");
    buf_fini(&log);
    /* Connection 2 (no takeover) gets the same bytes twice. */
    srv.len = 0;
    buf_append(&srv, a.data, a.len);
    buf_append(&srv, a.data, a.len);
    assemble_server_frames(&srv, &pmd_no_takeover, &log);
    assert_string_equal(buf_cstr(&log),
                        "T24:{\"dev\":\"d1\",\"temp\":21.5};T24:{\"dev\":\"d1\",\"temp\":21.5};");
    buf_fini(&log);
    /* A connection without deflate refuses the compressed variant. */
    assemble_server_frames(&srv, NULL, &log);
    assert_string_equal(buf_cstr(&log), "ERR1002");
    buf_fini(&log);

    buf_fini(&srv);
    buf_fini(&a);
    buf_fini(&b);
    ws_deflater_free(shared);
    ws_deflater_free(own);
}

/* ---- assembler memory --------------------------------------------------------- */

static void test_assembler_trim(void **state)
{
    struct ws_limits lim = {MB, false};
    struct ws_assembler a;
    struct buf in;
    uint8_t payload[10000];
    size_t off = 0;
    (void)state;

    memset(payload, 'z', sizeof payload);
    buf_init(&in);
    ws_encode_client_frame(&in, WS_OP_BINARY, false, false, payload, 5000, key);
    ws_encode_client_frame(&in, WS_OP_CONT, true, false, payload, 5000, key);
    ws_assembler_init(&a, &lim, NULL);
    assert_false(ws_assembler_limits(&a)->deflate);
    while (off < in.len) {
        struct ws_event ev;
        size_t used;
        uint16_t code;
        const char *why;
        assert_int_equal(ws_assembler_next(&a, in.data + off, in.len - off, &ev, &used, &code,
                                           &why),
                         CODEC_FRAME);
        off += used;
        if (ev.type == WS_EV_MESSAGE)
            assert_int_equal(ev.len, 10000);
    }
    assert_true(a.msg.cap >= 10000);
    ws_assembler_trim(&a, 4096);
    assert_int_equal(a.msg.cap, 0);
    ws_assembler_fini(&a);
    buf_fini(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_table),
        cmocka_unit_test(test_large_frames),
        cmocka_unit_test(test_decode_fields),
        cmocka_unit_test(test_decode_errors_untouched),
        cmocka_unit_test(test_control_frames_ignore_small_cap),
        cmocka_unit_test(test_mask_offsets),
        cmocka_unit_test(test_utf8_table),
        cmocka_unit_test(test_header_lengths),
        cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_encode_helpers),
        cmocka_unit_test(test_rfc7692_hello),
        cmocka_unit_test(test_inflate_bounded),
        cmocka_unit_test(test_deflate_roundtrip),
        cmocka_unit_test(test_inflate_window_enforced),
        cmocka_unit_test(test_shared_frames),
        cmocka_unit_test(test_assembler_trim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
