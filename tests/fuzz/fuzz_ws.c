/* tests/fuzz/fuzz_ws.c: WebSocket frame decoder + message assembler (+ deflate).
 *
 * Input: byte 0 picks the run, the rest is the client byte stream.
 *   bits 0-3: read size (1, 2, 3, 5, 7, 11, 16, 31, 64, 127, 256, 1000, 4096, whole...)
 *   bit 4:    permessage-deflate negotiated
 *   bit 5:    client_no_context_takeover
 *   bits 6-7: max_message_bytes (16, 200, 4096, 65536)
 * The stream is fed twice, whole and in reads of the chosen size; both runs must
 * produce the same events and the same outcome. Every event is checked against the
 * contract (text is UTF-8, sizes within limits, close codes valid), and every data
 * message is re-encoded by the server encoders (compressed when deflate is on),
 * masked like a client and decoded again by a mirror assembler: it must come back
 * unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "protocols/websocket/ws.h"

static const size_t read_sizes[16] = {1, 2, 3, 5, 7, 11, 16, 31, 64, 127, 256, 1000, 4096,
                                      (size_t)-1, (size_t)-1, (size_t)-1};
static const size_t max_sizes[4] = {16, 200, 4096, 65536};
static const uint8_t key[4] = {0xa5, 0x5a, 0x0f, 0xf0};

struct run {
    uint64_t hash;      /* over every event and the outcome */
    unsigned nevents;
};

static void mix(struct run *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        r->hash = (r->hash ^ b[i]) * 1099511628211ull;
}

/* Decodes one server-encoded data message through the mirror assembler. */
static void mirror_check(struct ws_assembler *mirror, const struct buf *srv, const uint8_t *want,
                         size_t want_len, uint8_t opcode)
{
    struct buf cli;
    size_t hdr = (srv->data[1] & 0x7f) == 126 ? 4 : (srv->data[1] & 0x7f) == 127 ? 10 : 2;
    struct ws_event ev;
    size_t used = 0;
    uint16_t code = 0;
    const char *why = NULL;

    buf_init(&cli);
    buf_append(&cli, srv->data, hdr);
    cli.data[1] |= 0x80;
    buf_append(&cli, key, 4);
    buf_append(&cli, srv->data + hdr, srv->len - hdr);
    ws_mask(cli.data + hdr + 4, srv->len - hdr, key, 0);
    if (ws_assembler_next(mirror, cli.data, cli.len, &ev, &used, &code, &why) != CODEC_FRAME ||
        used != cli.len || ev.type != WS_EV_MESSAGE || ev.opcode != opcode ||
        ev.len != want_len || (want_len > 0 && memcmp(ev.data, want, want_len) != 0))
        abort();
    buf_fini(&cli);
}

static void check_event(const struct ws_event *ev, size_t max)
{
    switch (ev->type) {
    case WS_EV_NONE:
        break;
    case WS_EV_MESSAGE:
        if (ev->len > max || !ev->data)
            abort();
        if (ev->opcode == WS_OP_TEXT) {
            if (!ws_utf8_valid(ev->data, ev->len))
                abort();
        } else if (ev->opcode != WS_OP_BINARY) {
            abort();
        }
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        if (ev->len > WS_MAX_CONTROL_PAYLOAD)
            abort();
        break;
    case WS_EV_CLOSE:
        if (ev->close_code != WS_CLOSE_NO_STATUS && !ws_close_code_valid(ev->close_code))
            abort();
        if (ev->close_code == WS_CLOSE_NO_STATUS && ev->len != 0)
            abort();
        if (!ws_utf8_valid(ev->data, ev->len) || ev->len > WS_MAX_CONTROL_PAYLOAD - 2)
            abort();
        break;
    default:
        abort();
    }
}

static void run_stream(const uint8_t *in, size_t len, size_t step, const struct ws_limits *lim,
                       const struct ws_deflate_params *pmd, bool mirror_on, struct run *r)
{
    struct ws_assembler a, mirror;
    struct ws_deflater *d = mirror_on ? ws_deflater_for(pmd, 1) : NULL;
    struct buf inbuf, srv;
    size_t fed = 0;
    int outcome = 0;
    struct ws_limits mirror_lim = *lim;

    /* Compression may grow a small random message: the mirror's frames get room. */
    mirror_lim.max_message_bytes = lim->max_message_bytes * 2 + 64;
    ws_assembler_init(&a, lim, pmd);
    ws_assembler_init(&mirror, &mirror_lim, pmd);
    buf_init(&inbuf);
    buf_init(&srv);
    r->hash = 14695981039346656037ull;
    r->nevents = 0;
    while (fed < len && outcome == 0) {
        size_t n = len - fed < step ? len - fed : step, off = 0;
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
                if (!why || (code != WS_CLOSE_PROTOCOL && code != WS_CLOSE_INVALID_DATA &&
                             code != WS_CLOSE_TOO_BIG && code != WS_CLOSE_INTERNAL))
                    abort();
                mix(r, &code, sizeof code);
                outcome = -1;
                break;
            }
            if (used == 0 || used > inbuf.len - off)
                abort();
            off += used;
            check_event(&ev, lim->max_message_bytes);
            mix(r, &ev.type, sizeof ev.type);
            mix(r, &ev.opcode, sizeof ev.opcode);
            mix(r, &ev.close_code, sizeof ev.close_code);
            mix(r, ev.data, ev.len);
            if (ev.type != WS_EV_NONE)
                r->nevents++;
            if (mirror_on && ev.type == WS_EV_MESSAGE) {
                srv.len = 0;
                if (ws_encode_message(&srv, d, ev.opcode, ev.data, ev.len) != 0)
                    abort();
                mirror_check(&mirror, &srv, ev.data, ev.len, ev.opcode);
            }
            if (mirror_on && ev.type == WS_EV_CLOSE) {
                /* The close reply must itself be a valid close frame. */
                srv.len = 0;
                ws_encode_close(&srv, ev.close_code == WS_CLOSE_NO_STATUS ? 0 : ev.close_code,
                                (const char *)ev.data, ev.len);
                if (srv.len > 2 + WS_MAX_CONTROL_PAYLOAD)
                    abort();
            }
        }
        buf_consume(&inbuf, off);
    }
    mix(r, &outcome, sizeof outcome);
    ws_deflater_free(d);
    ws_assembler_fini(&a);
    ws_assembler_fini(&mirror);
    buf_fini(&inbuf);
    buf_fini(&srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ws_limits lim;
    struct ws_deflate_params pmd = {false, false, false, 15, 15};
    struct run whole, split;
    uint8_t flags;

    if (size < 1)
        return 0;
    flags = data[0];
    lim.max_message_bytes = max_sizes[flags >> 6];
    lim.deflate = (flags & 0x10) != 0;
    if (lim.deflate) {
        pmd.enabled = true;
        pmd.client_no_context_takeover = (flags & 0x20) != 0;
        pmd.server_no_context_takeover = (flags & 0x20) != 0;
    }
    run_stream(data + 1, size - 1, (size_t)-1, &lim, &pmd, true, &whole);
    run_stream(data + 1, size - 1, read_sizes[flags & 0x0f], &lim, &pmd, false, &split);
    if (whole.hash != split.hash || whole.nevents != split.nevents)
        abort();
    return 0;
}
