/* tests/fuzz/fuzz_ws_handshake.c: the WebSocket opening handshake and the
 * permessage-deflate negotiation (protocols/websocket/handshake.c), behind the HTTP
 * request parser that hands it a request, as web/ws_routes.c does.
 *
 * Input: byte 0 picks the endpoint's policy, the rest is the client's bytes.
 *   bit 0:    permessage-deflate accepted at all
 *   bit 1:    the endpoint offers the "mqtt" subprotocol (else none)
 *   bit 2:    no_context_takeover in the policy
 *   bits 3-5: max_window_bits (0 = 15, else 8 + value: 9..15)
 * Each complete request goes through ws_handshake_accept(). Checks: the status is
 * 101, 400 or 426 (with a reason when not 101); on 101 the accept key is the one
 * computed from the request's Sec-WebSocket-Key, the subprotocol is the endpoint's
 * own string, agreed window bits are 9..15 and within the policy, the extensions
 * value fits and only appears when deflate was agreed, and the 101 response is
 * one well-formed head. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "protocols/http/parser.h"
#include "protocols/websocket/ws.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static const char *const mqtt_subprotocols[] = {"mqtt", NULL};

/* When the response value carries name=N, N is what was agreed. */
static void check_param(const char *ext, const char *name, unsigned agreed)
{
    const char *at = strstr(ext, name);
    if (at)
        CHECK(strtoul(at + strlen(name), NULL, 10) == agreed);
}

static void check_accept(const struct ws_request *wr, const struct ws_endpoint *ep,
                         const struct ws_accept *acc)
{
    const char *key;
    size_t key_len, ext_len = strnlen(acc->extensions, sizeof acc->extensions);
    char want[29];
    struct buf out;
    uint8_t pol_bits = ep->deflate.max_window_bits ? ep->deflate.max_window_bits : 15;

    key = ws_header_get(wr, "Sec-WebSocket-Key", &key_len);
    CHECK(key != NULL);
    while (key_len && (*key == ' ' || *key == '\t')) {
        key++;
        key_len--;
    }
    while (key_len && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t'))
        key_len--;
    ws_accept_key(key, key_len, want);
    CHECK(strlen(acc->accept_key) == 28 && strcmp(acc->accept_key, want) == 0);

    CHECK(acc->subprotocol == NULL ||
          (ep->subprotocols && acc->subprotocol == ep->subprotocols[0]));

    CHECK(ext_len < sizeof acc->extensions);
    if (acc->deflate.enabled) {
        CHECK(ep->deflate.enabled);
        CHECK(acc->deflate.server_window_bits >= 9 && acc->deflate.server_window_bits <= 15);
        CHECK(acc->deflate.client_window_bits >= 9 && acc->deflate.client_window_bits <= 15);
        CHECK(acc->deflate.server_window_bits <= pol_bits);
        CHECK(strncmp(acc->extensions, "permessage-deflate", 18) == 0);
        if (ep->deflate.no_context_takeover)
            CHECK(acc->deflate.client_no_context_takeover);
        /* the response value says what was agreed: the client configures itself by it */
        CHECK((strstr(acc->extensions, "client_no_context_takeover") != NULL) ==
              acc->deflate.client_no_context_takeover);
        CHECK((strstr(acc->extensions, "client_max_window_bits=") != NULL) ==
              (acc->deflate.client_window_bits < 15));
        check_param(acc->extensions, "client_max_window_bits=", acc->deflate.client_window_bits);
        check_param(acc->extensions, "server_max_window_bits=", acc->deflate.server_window_bits);
        CHECK(strpbrk(acc->extensions, "\r\n") == NULL);
    } else {
        CHECK(ext_len == 0);
    }

    buf_init(&out);
    ws_handshake_write(&out, acc, NULL);
    CHECK(out.len > 16 && memcmp(out.data, "HTTP/1.1 101 ", 13) == 0);
    CHECK(out.len >= 4 && memcmp(out.data + out.len - 4, "\r\n\r\n", 4) == 0);
    CHECK(memmem(out.data, out.len, "\r\n\r\n", 4) == out.data + out.len - 4);
    CHECK(memmem(out.data, out.len, acc->accept_key, 28) != NULL);
    CHECK(memchr(out.data, '\0', out.len) == NULL);
    buf_fini(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_parser p;
    struct ws_endpoint ep;
    struct ws_header hdrs[HTTP_MAX_HEADERS];
    size_t off = 0;
    unsigned bits;

    if (size < 1)
        return 0;
    memset(&ep, 0, sizeof ep);
    ep.deflate.enabled = (data[0] & 0x01) != 0;
    ep.subprotocols = (data[0] & 0x02) ? mqtt_subprotocols : NULL;
    ep.deflate.no_context_takeover = (data[0] & 0x04) != 0;
    bits = (data[0] >> 3) & 0x07;
    ep.deflate.max_window_bits = bits ? (uint8_t)(8 + bits) : 0;
    data++;
    size--;

    http_parser_init(&p, 16384, 4096);
    while (off < size) {
        size_t used = 0;
        int status = 0;
        const char *why = NULL;
        enum http_parse_rc rc = http_parser_feed(&p, data + off, size - off, &used, &status, &why);
        struct ws_request wr;
        struct ws_accept acc;
        struct http_req *r = &p.req;

        CHECK(used <= size - off);
        off += used;
        if (rc == HTTP_PARSE_ERROR || rc == HTTP_PARSE_NEED_MORE)
            break;
        if (rc == HTTP_PARSE_EXPECT_CONTINUE)
            continue;
        for (size_t i = 0; i < r->nheaders; i++)
            hdrs[i] = (struct ws_header){r->headers[i].name, r->headers[i].name_len,
                                         r->headers[i].value, r->headers[i].value_len};
        wr = (struct ws_request){r->method, r->http_major, r->http_minor, hdrs, r->nheaders};
        memset(&acc, 0, sizeof acc);
        why = NULL;
        status = ws_handshake_accept(&wr, &ep, &acc, &why);
        CHECK(status == 101 || status == 400 || status == 426);
        if (status == 101)
            check_accept(&wr, &ep, &acc);
        else
            CHECK(why && *why);
        if (r->upgrade)
            break; /* what follows an upgrade request is frames */
    }
    http_parser_fini(&p);
    return 0;
}
