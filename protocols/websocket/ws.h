/* protocols/websocket/ws.h: the pure parts of Gale's RFC 6455 WebSocket server.
 *
 * Four pieces, none of which does I/O or keeps a clock; all run on the loop thread
 * (nothing here is shared between threads, so nothing locks):
 *   - the frame decoder (ws_decode_frame): one client frame from the connection's
 *     input buffer, incremental, limits checked as soon as the header is known;
 *   - the message assembler (struct ws_assembler): per-connection state that turns
 *     frames into events (MESSAGE, PING, PONG, CLOSE), joins fragments, validates
 *     UTF-8 and close payloads, and inflates permessage-deflate messages (RFC 7692);
 *   - the encoders: server frames (unmasked), compressed messages, shared frames;
 *   - the handshake (ws_handshake_accept / ws_handshake_write): upgrade validation
 *     per RFC 6455 4.2.1, Sec-WebSocket-Accept, subprotocol and extension choice.
 *
 * The path of a byte: socket -> conn input buffer -> ws_assembler_next() decodes a
 * frame in place (the payload is unmasked inside the input buffer, no copy) ->
 * event -> the protocol above (device JSON, MQTT codec, live feed). A single-frame
 * uncompressed message is delivered as a view into the input buffer; fragmented or
 * compressed messages are assembled in the assembler's own buffer.
 *
 * Errors carry the close code the server should send (1002 protocol error, 1007
 * invalid payload data, 1009 message too big) and a static reason. After an error
 * the connection must be closed; the assembler may only be finalized. */
#ifndef GALE_WS_H
#define GALE_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "protocols/codec.h"

/* ---- frames ------------------------------------------------------------------- */

enum ws_opcode {
    WS_OP_CONT = 0x0,   /* continuation of a fragmented data message */
    WS_OP_TEXT = 0x1,   /* UTF-8 text message */
    WS_OP_BINARY = 0x2, /* binary message */
    WS_OP_CLOSE = 0x8,  /* close handshake: optional code + UTF-8 reason */
    WS_OP_PING = 0x9,   /* answered with a PONG carrying the same payload */
    WS_OP_PONG = 0xA,   /* answer to a ping, or unsolicited heartbeat */
};

/* Close codes (RFC 6455 7.4.1) the server sends or reports. */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,       /* normal closure */
    WS_CLOSE_GOING_AWAY = 1001,   /* server shutting down, page left */
    WS_CLOSE_PROTOCOL = 1002,     /* protocol error */
    WS_CLOSE_UNSUPPORTED = 1003,  /* data type the endpoint cannot accept */
    WS_CLOSE_NO_STATUS = 1005,    /* reported only: the close frame had no code */
    WS_CLOSE_ABNORMAL = 1006,     /* reported only: closed without a close frame */
    WS_CLOSE_INVALID_DATA = 1007, /* payload inconsistent with its type (bad UTF-8) */
    WS_CLOSE_POLICY = 1008,       /* policy violation (auth, ACL) */
    WS_CLOSE_TOO_BIG = 1009,      /* message larger than max_message_bytes */
    WS_CLOSE_EXTENSION = 1010,    /* client expected an extension we did not agree */
    WS_CLOSE_INTERNAL = 1011,     /* unexpected server condition */
};

#define WS_MAX_CONTROL_PAYLOAD 125 /* bytes: control frames are never larger */
#define WS_MAX_HEADER_BYTES 14     /* bytes: 2 + 8 (64-bit length) + 4 (mask key) */

struct ws_limits {
    size_t max_message_bytes; /* largest frame payload, and largest assembled message
                                 (after decompression); http.ws_max_message_bytes */
    bool deflate;             /* permessage-deflate was negotiated: RSV1 is allowed on
                                 the first frame of a data message (never elsewhere) */
};

struct ws_frame {
    bool fin;             /* last frame of its message */
    bool rsv1, rsv2, rsv3; /* reserved bits; rsv1 = "compressed" under permessage-deflate */
    uint8_t opcode;       /* enum ws_opcode */
    bool masked;          /* the frame carried a mask (always true for accepted frames) */
    uint8_t mask[4];      /* the masking key, as received */
    uint8_t *payload;     /* view into the caller's input, already unmasked in place */
    size_t payload_len;   /* bytes */
    size_t header_len;    /* bytes before the payload (2..14) */
};

/* Decodes at most one client frame from p[0..len).
 *   CODEC_NEED_MORE: the frame is incomplete; p is left untouched.
 *   CODEC_FRAME: *f describes the frame, *used is the bytes it spans (header +
 *     payload). The payload is UNMASKED IN PLACE inside p (hence non-const p): this
 *     is what spares a copy of every payload. Call once per frame, then consume
 *     *used bytes; decoding the same bytes twice would unmask them twice.
 *   CODEC_ERROR: *close_code (1002 or 1009) and *why (static) say why; p untouched.
 * Server rules: frames must be masked; RSV2/RSV3 never set; RSV1 only when
 * lim->deflate and only on TEXT/BINARY frames; unknown opcodes refused; control
 * frames at most 125 bytes and never fragmented; a 64-bit length with the top bit
 * set is refused; non-minimal length encodings are accepted. A data frame whose
 * declared length is above lim->max_message_bytes fails with 1009 as soon as the
 * length is known, before the payload arrives (control frames are held to 125
 * bytes instead). Otherwise pure: no allocation, no state. */
enum codec_rc ws_decode_frame(const struct ws_limits *lim, uint8_t *p, size_t len,
                              struct ws_frame *f, size_t *used, uint16_t *close_code,
                              const char **why);

/* XORs p[0..len) with the 4-byte key, starting at key position offset % 4. */
void ws_mask(uint8_t *p, size_t len, const uint8_t key[4], size_t offset);

/* 1 when code may appear in a close frame on the wire (RFC 6455 7.4):
 * 1000-1003, 1007-1011, 3000-4999. */
bool ws_close_code_valid(unsigned code);

/* 1 when p[0..len) is complete, valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
bool ws_utf8_valid(const uint8_t *p, size_t len);

/* ---- permessage-deflate (RFC 7692) -------------------------------------------- */

/* What the server is willing to do for one endpoint. */
struct ws_deflate_policy {
    bool enabled;            /* accept permessage-deflate offers at all (http.ws_deflate) */
    uint8_t max_window_bits; /* 9..15 (0 = 15): cap on our compressor's window, and on
                                the client's when its offer lets us choose (memory per
                                connection: ~2^bits for inflate, ~4*2^bits for deflate) */
    bool no_context_takeover; /* reset both directions after every message: less
                                 memory held between messages, worse compression */
};

/* Agreed parameters for one connection (from the handshake). */
struct ws_deflate_params {
    bool enabled;                    /* permessage-deflate is in effect */
    bool server_no_context_takeover; /* our compressor resets after each message */
    bool client_no_context_takeover; /* the client resets after each message: our
                                        inflater is dropped between messages */
    uint8_t server_window_bits;      /* 9..15: our compressor's window */
    uint8_t client_window_bits;      /* 8..15: window the client may use; our inflater's
                                        is this, at least 9 (zlib's raw minimum) */
};

/* Per-connection (or per-hub) compressor; opaque, defined in ws_int.h. */
struct ws_deflater;

/* A compressor with a 2^window_bits window (9..15). With no_context_takeover each
 * message is compressed on its own (needed for shared frames). level: zlib level
 * 1..9, or -1 for zlib's default. zlib memory is allocated on first use. */
struct ws_deflater *ws_deflater_new(int window_bits, bool no_context_takeover, int level);
/* The compressor for the agreed parameters (server side), or NULL when !pmd->enabled. */
struct ws_deflater *ws_deflater_for(const struct ws_deflate_params *pmd, int level);
void ws_deflater_free(struct ws_deflater *d);
/* Compresses one whole message and appends it to out, without the 00 00 ff ff tail
 * (RFC 7692 7.2.1). Returns 0, or GW_EINVAL if zlib failed (the compressor is then
 * unusable: with context takeover the peer's window no longer matches). */
int ws_deflater_compress(struct ws_deflater *d, const uint8_t *p, size_t len, struct buf *out);

/* ---- message assembler -------------------------------------------------------- */

enum ws_event_type {
    WS_EV_NONE = 0, /* the frame was accepted, nothing to deliver yet (a fragment) */
    WS_EV_MESSAGE,  /* a complete data message (opcode TEXT or BINARY) */
    WS_EV_PING,     /* answer with ws_encode_pong(data, len) */
    WS_EV_PONG,
    WS_EV_CLOSE,    /* peer's close: echo a close frame (its code, or an empty one when
                       the code is 1005), then close the connection */
};

struct ws_event {
    enum ws_event_type type;
    uint8_t opcode;        /* MESSAGE: WS_OP_TEXT (valid UTF-8) or WS_OP_BINARY */
    const uint8_t *data;   /* payload (MESSAGE, PING, PONG) or reason (CLOSE), borrowed:
                              valid until the next ws_assembler_* call and until the
                              input bytes of the frame are consumed */
    size_t len;            /* bytes at data */
    uint16_t close_code;   /* CLOSE: the peer's code (valid per RFC 6455 7.4), or 1005
                              (WS_CLOSE_NO_STATUS) when the close frame was empty */
};

struct ws_inflater; /* internal, ws_int.h */

struct ws_assembler {
    /* private */
    struct ws_limits lim;          /* frame/message cap, deflate flag */
    struct ws_deflate_params pmd;  /* agreed permessage-deflate parameters */
    struct ws_inflater *inflater;  /* created on the first compressed message; dropped
                                      after each message when client_no_context_takeover */
    bool open;                     /* a fragmented message has started and not ended */
    uint8_t opcode;                /* its opcode (TEXT or BINARY) */
    bool compressed;               /* its first frame had RSV1 */
    size_t wire_bytes;             /* payload bytes received for it (compressed size) */
    size_t checked;                /* bytes of msg already UTF-8 validated */
    uint8_t utf8[3];               /* incremental UTF-8 state: need, lo, hi */
    struct buf msg;                /* the message so far (decompressed when compressed) */
};

/* lim and pmd are copied. pmd is NULL (or !enabled) when deflate was not negotiated;
 * lim->deflate is ignored and set from pmd (see ws_assembler_limits). */
void ws_assembler_init(struct ws_assembler *a, const struct ws_limits *lim,
                       const struct ws_deflate_params *pmd);
void ws_assembler_fini(struct ws_assembler *a);
/* The limits to decode this connection's frames with. */
const struct ws_limits *ws_assembler_limits(const struct ws_assembler *a);

/* Feeds one decoded frame. Returns CODEC_FRAME when the frame was accepted, with
 * *ev set (ev->type WS_EV_NONE when it was a non-final fragment), or CODEC_ERROR with
 * *close_code and *why. Checks: continuation without a started message (1002), a new
 * data frame while a fragmented message is open (1002), RSV1 without deflate (1002),
 * message size above the cap, compressed or not (1009), UTF-8 of text messages as
 * fragments arrive and at the end (1007), close payloads (1-byte payload or invalid
 * code: 1002; reason not UTF-8: 1007), bad compressed data (1002), zlib failing to
 * start (1011). Control frames may arrive between the fragments of a message. */
enum codec_rc ws_assembler_feed(struct ws_assembler *a, const struct ws_frame *f,
                                struct ws_event *ev, uint16_t *close_code, const char **why);

/* Decodes one frame from p[0..len) (unmasking in place) and feeds it. While a
 * fragmented message is open, a data frame may only fill the room left in it
 * (counted in wire bytes), so an oversized fragment fails on its header. Returns CODEC_NEED_MORE
 * (p untouched), CODEC_FRAME (*used bytes consumed, *ev as for ws_assembler_feed)
 * or CODEC_ERROR. The feed loop:
 *     while (off < in->len) {
 *         rc = ws_assembler_next(a, in->data + off, in->len - off, &ev, &used, &code, &why);
 *         if (rc == CODEC_NEED_MORE) break;
 *         if (rc == CODEC_ERROR) { send close(code, why); conn_close(c, why); break; }
 *         off += used;
 *         if (ev.type != WS_EV_NONE) handle(&ev);    // before the next call
 *     }
 *     buf_consume(in, off); */
enum codec_rc ws_assembler_next(struct ws_assembler *a, uint8_t *p, size_t len,
                                struct ws_event *ev, size_t *used, uint16_t *close_code,
                                const char **why);

/* Releases buffer memory above keep bytes when no message is open (idle connections
 * stay small). Invalidates the last event's data. */
void ws_assembler_trim(struct ws_assembler *a, size_t keep);
/* The memory a holds: its message buffer and its decompressor (what the pre-auth budget
 * counts of a fragmented or compressed message being assembled). */
size_t ws_assembler_held(const struct ws_assembler *a);

/* ---- encoders (server frames: never masked) ----------------------------------- */

/* Appends a frame header for a len-byte payload (minimal length encoding). */
void ws_encode_header(struct buf *out, uint8_t opcode, bool fin, bool rsv1, size_t len);
/* Appends one whole frame. Control frames must have fin and len <= 125 (asserted). */
void ws_encode_frame(struct buf *out, uint8_t opcode, bool fin, bool rsv1, const void *payload,
                     size_t len);
void ws_encode_text(struct buf *out, const void *p, size_t len);
void ws_encode_binary(struct buf *out, const void *p, size_t len);
void ws_encode_ping(struct buf *out, const void *p, size_t len); /* len <= 125 */
void ws_encode_pong(struct buf *out, const void *p, size_t len); /* len <= 125 */
/* A close frame. code 0 sends an empty payload (no code, no reason); otherwise code
 * must be valid to send (ws_close_code_valid, asserted). The reason is cut to 123
 * bytes at a UTF-8 character boundary. */
void ws_encode_close(struct buf *out, uint16_t code, const char *reason, size_t reason_len);
/* One data message in one frame; compressed (RSV1) when d is not NULL. Returns 0, or
 * GW_EINVAL when compression failed (nothing appended). */
int ws_encode_message(struct buf *out, struct ws_deflater *d, uint8_t opcode, const void *p,
                      size_t len);
/* A frame whose bytes can be sent, as they are, to any number of connections (the
 * live feed encodes a message once and shares it). Server frames are unmasked, so
 * an encoded frame is connection-independent unless it is compressed with context
 * takeover. Hence: d must be NULL (plain frame, valid for every connection) or a
 * no_context_takeover compressor (returns GW_EINVAL otherwise). A compressed shared
 * frame may only go to connections that negotiated permessage-deflate with
 * server_window_bits >= d's window bits, and which are not also sent messages from
 * a context-takeover compressor (the client's window would then differ from it);
 * the others need the plain variant. */
int ws_encode_shared(struct buf *out, struct ws_deflater *d, uint8_t opcode, const void *p,
                     size_t len);
/* A client frame, masked with key (tests, tools): the counterpart of the decoder. */
void ws_encode_client_frame(struct buf *out, uint8_t opcode, bool fin, bool rsv1,
                            const void *payload, size_t len, const uint8_t key[4]);

/* ---- handshake (handshake.c) -------------------------------------------------- */

struct ws_header {
    const char *name;  /* view, not necessarily NUL-terminated */
    size_t name_len;
    const char *value; /* view, raw field value */
    size_t value_len;
};

/* The parts of an HTTP request the upgrade needs (views, borrowed). */
struct ws_request {
    const char *method;              /* NUL-terminated, e.g. "GET" */
    int http_major, http_minor;      /* request version */
    const struct ws_header *headers; /* in arrival order; a name may repeat */
    size_t nheaders;
};

/* What the server offers on one endpoint (path). */
struct ws_endpoint {
    const char *const *subprotocols; /* NULL-terminated, server preference order, or
                                        NULL: e.g. {"mqtt", NULL} for /mqtt */
    struct ws_deflate_policy deflate;
};

/* The outcome of a valid upgrade request. */
struct ws_accept {
    char accept_key[29];             /* Sec-WebSocket-Accept value, NUL-terminated */
    const char *subprotocol;         /* borrowed from ep->subprotocols, or NULL when the
                                        client offered none we support (the caller
                                        decides whether that is acceptable) */
    struct ws_deflate_params deflate; /* .enabled when permessage-deflate was agreed */
    char extensions[160];            /* Sec-WebSocket-Extensions response value, or "" */
};

/* Value of the first header called name (case-insensitive), or NULL; *len its length. */
const char *ws_header_get(const struct ws_request *req, const char *name, size_t *len);

/* Validates an upgrade request (RFC 6455 4.2.1) and negotiates. Returns 101 with *acc
 * filled, or an HTTP status with *why (static): 400 for a malformed request (not
 * GET, HTTP < 1.1, no Host, Upgrade without "websocket", Connection without
 * "upgrade", missing or bad Sec-WebSocket-Key), 426 when Sec-WebSocket-Version is
 * missing or not 13 (answer with WS_VERSION_HEADER among the response headers).
 * Subprotocol: the first of ep's list (server preference) that the client offered.
 * Extensions: the first acceptable permessage-deflate offer, parameters the server
 * cannot honour make that offer declined (server_max_window_bits=8, unknown or
 * repeated parameters, bad values); unknown extensions are ignored. */
int ws_handshake_accept(const struct ws_request *req, const struct ws_endpoint *ep,
                        struct ws_accept *acc, const char **why);
/* Appends the complete "HTTP/1.1 101 Switching Protocols" response for acc.
 * extra_headers: "Name: value\r\n..." or NULL. */
void ws_handshake_write(struct buf *out, const struct ws_accept *acc, const char *extra_headers);
/* Computes Sec-WebSocket-Accept for a key (SHA-1 of key + GUID, base64): 28 chars. */
void ws_accept_key(const char *key, size_t key_len, char out[29]);

#define WS_VERSION_HEADER "Sec-WebSocket-Version: 13\r\n" /* for 426 replies */

#endif
