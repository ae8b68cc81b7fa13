/* protocols/websocket/codec.c: WebSocket frames (RFC 6455 section 5) for the server.
 *
 * ws_decode_frame() reads at most one client frame from the connection's input
 * buffer and unmasks its payload in place; the message assembler joins fragments,
 * lets control frames through between them, checks sizes, UTF-8 and close payloads,
 * and inflates permessage-deflate messages fragment by fragment (deflate.c). A
 * single-frame uncompressed message leaves as a view into the input buffer; others
 * are built in the assembler's buffer, which is reused for the next message. The
 * encoders write server frames (never masked) into a struct buf. Loop thread; no
 * I/O, no clock, no globals. */
#include "protocols/websocket/ws.h"

#include <assert.h>
#include <string.h>

#include "base/err.h"
#include "protocols/websocket/ws_int.h"

/* ---- small helpers ------------------------------------------------------------ */

bool ws_close_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

void ws_mask(uint8_t *p, size_t len, const uint8_t key[4], size_t offset)
{
    uint8_t k[8];
    uint64_t kw;
    size_t i = 0;

    for (i = 0; i < 8; i++)
        k[i] = key[(offset + i) & 3];
    memcpy(&kw, k, sizeof kw);
    /* Eight bytes at a time; memcpy keeps it alignment-safe and compiles to loads. */
    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        w ^= kw;
        memcpy(p + i, &w, sizeof w);
    }
    for (; i < len; i++)
        p[i] ^= k[i & 7];
}

bool ws_utf8_feed(uint8_t s[3], const uint8_t *p, size_t len)
{
    uint8_t need = s[0], lo = s[1], hi = s[2];
    size_t i = 0;

    while (i < len) {
        uint8_t c = p[i];
        if (need > 0) {
            if (c < lo || c > hi)
                return false;
            need--;
            lo = 0x80;
            hi = 0xbf;
            i++;
            continue;
        }
        if (c < 0x80) {
            /* ASCII runs are the common case: skip them eight bytes at a time. */
            uint64_t w;
            while (i + 8 <= len && (memcpy(&w, p + i, 8), (w & 0x8080808080808080ull) == 0))
                i += 8;
            while (i < len && p[i] < 0x80)
                i++;
            continue;
        }
        lo = 0x80;
        hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c == 0xe0) {
            need = 2;
            lo = 0xa0; /* no overlong 3-byte forms */
        } else if (c == 0xed) {
            need = 2;
            hi = 0x9f; /* no UTF-16 surrogates U+D800..U+DFFF */
        } else if (c >= 0xe1 && c <= 0xef) {
            need = 2;
        } else if (c == 0xf0) {
            need = 3;
            lo = 0x90; /* no overlong 4-byte forms */
        } else if (c >= 0xf1 && c <= 0xf3) {
            need = 3;
        } else if (c == 0xf4) {
            need = 3;
            hi = 0x8f; /* nothing above U+10FFFF */
        } else {
            return false; /* continuation byte first, C0/C1 overlongs, F5..FF */
        }
        i++;
    }
    s[0] = need;
    s[1] = lo;
    s[2] = hi;
    return true;
}

bool ws_utf8_valid(const uint8_t *p, size_t len)
{
    uint8_t s[3] = {0, 0, 0};
    return ws_utf8_feed(s, p, len) && ws_utf8_complete(s);
}

static enum codec_rc fail(uint16_t *close_code, const char **why, uint16_t code,
                          const char *reason)
{
    *close_code = code;
    *why = reason;
    return CODEC_ERROR;
}

/* ---- decoder ------------------------------------------------------------------ */

static bool is_control(uint8_t opcode)
{
    return (opcode & 0x8) != 0;
}

static bool known_opcode(uint8_t opcode)
{
    return opcode <= WS_OP_BINARY || (opcode >= WS_OP_CLOSE && opcode <= WS_OP_PONG);
}

enum codec_rc ws_decode_frame(const struct ws_limits *lim, uint8_t *p, size_t len,
                              struct ws_frame *f, size_t *used, uint16_t *close_code,
                              const char **why)
{
    uint8_t b0, b1, opcode;
    uint64_t plen;
    size_t hdr = 2;

    if (len < 2)
        return CODEC_NEED_MORE;
    b0 = p[0];
    b1 = p[1];
    opcode = b0 & 0x0f;
    /* Everything the first two bytes can reveal fails before the rest arrives. */
    if (b0 & 0x30)
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "reserved bit set");
    if (!known_opcode(opcode))
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "unknown opcode");
    if (is_control(opcode)) {
        if (!(b0 & 0x80))
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "fragmented control frame");
        if ((b1 & 0x7f) > WS_MAX_CONTROL_PAYLOAD)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "control frame too long");
    }
    if (b0 & 0x40) {
        if (!lim->deflate)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "RSV1 set without deflate");
        if (is_control(opcode) || opcode == WS_OP_CONT)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "RSV1 set on a non-first frame");
    }
    if (!(b1 & 0x80))
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "client frame not masked");

    plen = b1 & 0x7f;
    if (plen == 126) {
        hdr = 4;
        if (len < hdr)
            return CODEC_NEED_MORE;
        plen = (uint64_t)p[2] << 8 | p[3];
    } else if (plen == 127) {
        hdr = 10;
        if (len < hdr)
            return CODEC_NEED_MORE;
        plen = 0;
        for (int i = 2; i < 10; i++)
            plen = plen << 8 | p[i];
        if (plen >> 63)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "64-bit length with top bit set");
    }
    /* Control frames are capped at 125 above; the message cap is for data frames. */
    if (!is_control(opcode) && plen > (uint64_t)lim->max_message_bytes)
        return fail(close_code, why, WS_CLOSE_TOO_BIG, "frame too big");
    hdr += 4;
    if (len < hdr || len - hdr < plen)
        return CODEC_NEED_MORE;

    f->fin = (b0 & 0x80) != 0;
    f->rsv1 = (b0 & 0x40) != 0;
    f->rsv2 = f->rsv3 = false;
    f->opcode = opcode;
    f->masked = true;
    memcpy(f->mask, p + hdr - 4, 4);
    f->payload = p + hdr;
    f->payload_len = (size_t)plen;
    f->header_len = hdr;
    ws_mask(f->payload, f->payload_len, f->mask, 0);
    *used = hdr + (size_t)plen;
    return CODEC_FRAME;
}

/* ---- assembler ---------------------------------------------------------------- */

void ws_assembler_init(struct ws_assembler *a, const struct ws_limits *lim,
                       const struct ws_deflate_params *pmd)
{
    memset(a, 0, sizeof *a);
    a->lim = *lim;
    if (pmd && pmd->enabled)
        a->pmd = *pmd;
    a->lim.deflate = a->pmd.enabled;
    buf_init(&a->msg);
}

void ws_assembler_fini(struct ws_assembler *a)
{
    ws_inflater_free(a->inflater);
    a->inflater = NULL;
    buf_fini(&a->msg);
}

const struct ws_limits *ws_assembler_limits(const struct ws_assembler *a)
{
    return &a->lim;
}

size_t ws_assembler_held(const struct ws_assembler *a)
{
    return a->msg.cap + (a->inflater ? ws_inflater_held(a->inflater) : 0);
}

void ws_assembler_trim(struct ws_assembler *a, size_t keep)
{
    if (a->open)
        return;
    a->msg.len = 0;
    buf_shrink(&a->msg, keep);
}

static enum codec_rc feed_control(const struct ws_frame *f, struct ws_event *ev,
                                  uint16_t *close_code, const char **why)
{
    if (!f->fin || f->payload_len > WS_MAX_CONTROL_PAYLOAD)
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "bad control frame");
    if (f->rsv1)
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "RSV1 set on a control frame");
    ev->data = f->payload;
    ev->len = f->payload_len;
    switch (f->opcode) {
    case WS_OP_PING:
        ev->type = WS_EV_PING;
        return CODEC_FRAME;
    case WS_OP_PONG:
        ev->type = WS_EV_PONG;
        return CODEC_FRAME;
    case WS_OP_CLOSE:
        ev->type = WS_EV_CLOSE;
        if (f->payload_len == 0) {
            ev->close_code = WS_CLOSE_NO_STATUS;
            return CODEC_FRAME;
        }
        if (f->payload_len == 1)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "close payload of 1 byte");
        ev->close_code = (uint16_t)(f->payload[0] << 8 | f->payload[1]);
        if (!ws_close_code_valid(ev->close_code))
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "invalid close code");
        ev->data = f->payload + 2;
        ev->len = f->payload_len - 2;
        if (!ws_utf8_valid(ev->data, ev->len))
            return fail(close_code, why, WS_CLOSE_INVALID_DATA, "close reason not UTF-8");
        return CODEC_FRAME;
    default:
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "unknown opcode");
    }
}

/* Appends a fragment's payload (inflating it when the message is compressed). */
static enum codec_rc append_fragment(struct ws_assembler *a, const struct ws_frame *f,
                                     uint16_t *close_code, const char **why)
{
    size_t max = a->lim.max_message_bytes;

    if (f->payload_len > max - a->wire_bytes)
        return fail(close_code, why, WS_CLOSE_TOO_BIG, "message too big");
    a->wire_bytes += f->payload_len;
    if (a->compressed) {
        int rc;
        if (!a->inflater) {
            a->inflater = ws_inflater_new(a->pmd.client_window_bits,
                                          a->pmd.client_no_context_takeover);
            if (!a->inflater)
                return fail(close_code, why, WS_CLOSE_INTERNAL, "inflate init failed");
        }
        rc = ws_inflater_feed(a->inflater, f->payload, f->payload_len, f->fin, &a->msg, max,
                              why);
        if (rc == GW_ELIMIT)
            return fail(close_code, why, WS_CLOSE_TOO_BIG, "decompressed message too big");
        if (rc != 0)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, *why);
        if (f->fin && a->pmd.client_no_context_takeover) {
            /* Nothing carries over: hold no zlib memory between messages. */
            ws_inflater_free(a->inflater);
            a->inflater = NULL;
        }
    } else {
        buf_append(&a->msg, f->payload, f->payload_len);
    }
    if (a->opcode == WS_OP_TEXT && a->msg.len > a->checked) {
        /* Validate what arrived now, so a bad byte fails before the message ends. */
        if (!ws_utf8_feed(a->utf8, a->msg.data + a->checked, a->msg.len - a->checked))
            return fail(close_code, why, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text");
        a->checked = a->msg.len;
    }
    return CODEC_FRAME;
}

enum codec_rc ws_assembler_feed(struct ws_assembler *a, const struct ws_frame *f,
                                struct ws_event *ev, uint16_t *close_code, const char **why)
{
    enum codec_rc rc;

    memset(ev, 0, sizeof *ev);
    if (!a->open)
        a->msg.len = 0; /* the previous message's bytes are no longer lent out */
    if (f->rsv2 || f->rsv3)
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "reserved bit set");
    if (is_control(f->opcode))
        return feed_control(f, ev, close_code, why);
    if (f->rsv1 && (!a->pmd.enabled || f->opcode == WS_OP_CONT))
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "RSV1 set without deflate");

    if (f->opcode == WS_OP_CONT) {
        if (!a->open)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "continuation without a message");
    } else if (f->opcode == WS_OP_TEXT || f->opcode == WS_OP_BINARY) {
        if (a->open)
            return fail(close_code, why, WS_CLOSE_PROTOCOL, "new message inside a fragmented one");
        a->opcode = f->opcode;
        a->compressed = f->rsv1;
        a->wire_bytes = 0;
        a->checked = 0;
        memset(a->utf8, 0, sizeof a->utf8);
        if (f->fin && !f->rsv1) {
            /* One plain frame: hand out the frame's own bytes, no copy. */
            if (f->payload_len > a->lim.max_message_bytes)
                return fail(close_code, why, WS_CLOSE_TOO_BIG, "message too big");
            if (f->opcode == WS_OP_TEXT && !ws_utf8_valid(f->payload, f->payload_len))
                return fail(close_code, why, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text");
            ev->type = WS_EV_MESSAGE;
            ev->opcode = f->opcode;
            ev->data = f->payload;
            ev->len = f->payload_len;
            return CODEC_FRAME;
        }
        a->open = true;
    } else {
        return fail(close_code, why, WS_CLOSE_PROTOCOL, "unknown opcode");
    }

    rc = append_fragment(a, f, close_code, why);
    if (rc != CODEC_FRAME)
        return rc;
    if (!f->fin)
        return CODEC_FRAME; /* ev->type stays WS_EV_NONE */
    a->open = false;
    if (a->opcode == WS_OP_TEXT && !ws_utf8_complete(a->utf8))
        return fail(close_code, why, WS_CLOSE_INVALID_DATA, "truncated UTF-8 in text");
    ev->type = WS_EV_MESSAGE;
    ev->opcode = a->opcode;
    ev->data = a->msg.len > 0 ? a->msg.data : (const uint8_t *)"";
    ev->len = a->msg.len;
    return CODEC_FRAME;
}

enum codec_rc ws_assembler_next(struct ws_assembler *a, uint8_t *p, size_t len,
                                struct ws_event *ev, size_t *used, uint16_t *close_code,
                                const char **why)
{
    struct ws_limits lim = a->lim;
    struct ws_frame f;
    enum codec_rc rc;

    /* Inside a fragmented message a data frame may only fill the room left, so an
     * oversized continuation fails on its header, not after its body arrived. */
    if (a->open)
        lim.max_message_bytes -= a->wire_bytes;
    rc = ws_decode_frame(&lim, p, len, &f, used, close_code, why);
    if (rc != CODEC_FRAME) {
        if (rc == CODEC_ERROR && *close_code == WS_CLOSE_TOO_BIG)
            *why = "message too big";
        return rc;
    }
    return ws_assembler_feed(a, &f, ev, close_code, why);
}

/* ---- encoders ----------------------------------------------------------------- */

void ws_encode_header(struct buf *out, uint8_t opcode, bool fin, bool rsv1, size_t len)
{
    uint8_t h[10];
    size_t n;

    h[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
    if (len < 126) {
        h[1] = (uint8_t)len;
        n = 2;
    } else if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        n = 4;
    } else {
        uint64_t l = len;
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(l >> (56 - 8 * i));
        n = 10;
    }
    buf_append(out, h, n);
}

void ws_encode_frame(struct buf *out, uint8_t opcode, bool fin, bool rsv1, const void *payload,
                     size_t len)
{
    assert(!is_control(opcode) || (fin && !rsv1 && len <= WS_MAX_CONTROL_PAYLOAD));
    ws_encode_header(out, opcode, fin, rsv1, len);
    buf_append(out, payload, len);
}

void ws_encode_text(struct buf *out, const void *p, size_t len)
{
    ws_encode_frame(out, WS_OP_TEXT, true, false, p, len);
}

void ws_encode_binary(struct buf *out, const void *p, size_t len)
{
    ws_encode_frame(out, WS_OP_BINARY, true, false, p, len);
}

void ws_encode_ping(struct buf *out, const void *p, size_t len)
{
    ws_encode_frame(out, WS_OP_PING, true, false, p, len);
}

void ws_encode_pong(struct buf *out, const void *p, size_t len)
{
    ws_encode_frame(out, WS_OP_PONG, true, false, p, len);
}

void ws_encode_close(struct buf *out, uint16_t code, const char *reason, size_t reason_len)
{
    uint8_t payload[WS_MAX_CONTROL_PAYLOAD];
    size_t cut = reason_len;

    if (code == 0) {
        ws_encode_frame(out, WS_OP_CLOSE, true, false, NULL, 0);
        return;
    }
    assert(ws_close_code_valid(code));
    if (cut > WS_MAX_CONTROL_PAYLOAD - 2) {
        /* Cut before a continuation byte would split a character. */
        cut = WS_MAX_CONTROL_PAYLOAD - 2;
        while (cut > 0 && ((uint8_t)reason[cut] & 0xc0) == 0x80)
            cut--;
    }
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)code;
    if (cut > 0)
        memcpy(payload + 2, reason, cut);
    ws_encode_frame(out, WS_OP_CLOSE, true, false, payload, cut + 2);
}

int ws_encode_message(struct buf *out, struct ws_deflater *d, uint8_t opcode, const void *p,
                      size_t len)
{
    struct buf z;
    int rc;

    assert(opcode == WS_OP_TEXT || opcode == WS_OP_BINARY);
    if (!d) {
        ws_encode_frame(out, opcode, true, false, p, len);
        return 0;
    }
    buf_init(&z);
    rc = ws_deflater_compress(d, p, len, &z);
    if (rc == 0)
        ws_encode_frame(out, opcode, true, true, z.data, z.len);
    buf_fini(&z);
    return rc;
}

int ws_encode_shared(struct buf *out, struct ws_deflater *d, uint8_t opcode, const void *p,
                     size_t len)
{
    if (d && !d->no_context_takeover)
        return GW_EINVAL;
    return ws_encode_message(out, d, opcode, p, len);
}

void ws_encode_client_frame(struct buf *out, uint8_t opcode, bool fin, bool rsv1,
                            const void *payload, size_t len, const uint8_t key[4])
{
    size_t start = out->len;
    size_t hdr;

    ws_encode_header(out, opcode, fin, rsv1, len);
    hdr = out->len - start;
    out->data[start + 1] |= 0x80;
    buf_append(out, key, 4);
    buf_append(out, payload, len);
    ws_mask(out->data + start + hdr + 4, len, key, 0);
}
