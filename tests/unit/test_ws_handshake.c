/* tests/unit/test_ws_handshake.c: WebSocket opening handshake: validation (RFC 6455
 * 4.2.1), Sec-WebSocket-Accept, subprotocol choice and permessage-deflate
 * negotiation (RFC 7692 7.1). Requests are tables of "Name: value" lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"
#include "protocols/websocket/ws.h"

#define MAXH 12

/* Builds a request from "Name: value" lines (NULL-terminated). */
struct req_fixture {
    struct ws_header h[MAXH];
    struct ws_request req;
};

static void make_req(struct req_fixture *fx, const char *method, int major, int minor,
                     const char *const *lines)
{
    size_t n = 0;
    for (; lines[n]; n++) {
        const char *colon = strchr(lines[n], ':');
        assert_true(n < MAXH && colon != NULL);
        fx->h[n].name = lines[n];
        fx->h[n].name_len = (size_t)(colon - lines[n]);
        fx->h[n].value = colon + 1; /* leading space kept: OWS is the parser's job */
        fx->h[n].value_len = strlen(colon + 1);
    }
    fx->req.method = method;
    fx->req.http_major = major;
    fx->req.http_minor = minor;
    fx->req.headers = fx->h;
    fx->req.nheaders = n;
}

#define BASE_HOST "Host: gw.example:8080"
#define BASE_UPGRADE "Upgrade: websocket"
#define BASE_CONN "Connection: Upgrade"
#define BASE_KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
#define BASE_VERSION "Sec-WebSocket-Version: 13"

static const char *const no_protocols[] = {NULL};
static const char *const mqtt_protocols[] = {"mqtt", NULL};

static void test_accept_key_rfc_example(void **state)
{
    char out[29];
    (void)state;
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_full_response(void **state)
{
    static const char *const lines[] = {
        BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION,
        "Sec-WebSocket-Protocol: mqttv3.1, mqtt",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits", NULL};
    struct ws_endpoint ep = {mqtt_protocols, {true, 15, false}};
    struct req_fixture fx;
    struct ws_accept acc;
    struct buf out;
    const char *why = NULL;
    (void)state;

    make_req(&fx, "GET", 1, 1, lines);
    assert_int_equal(ws_handshake_accept(&fx.req, &ep, &acc, &why), 101);
    assert_string_equal(acc.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_string_equal(acc.subprotocol, "mqtt");
    assert_true(acc.deflate.enabled);
    buf_init(&out);
    ws_handshake_write(&out, &acc, "X-Gale: 1\r\n");
    assert_string_equal(buf_cstr(&out), "HTTP/1.1 101 Switching Protocols\r\n"
                                        "Upgrade: websocket\r\n"
                                        "Connection: Upgrade\r\n"
                                        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                        "Sec-WebSocket-Protocol: mqtt\r\n"
                                        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                                        "X-Gale: 1\r\n"
                                        "\r\n");
    buf_fini(&out);

    /* No subprotocol, no extension: neither header appears. */
    {
        static const char *const plain[] = {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY,
                                            BASE_VERSION, NULL};
        make_req(&fx, "GET", 1, 1, plain);
        assert_int_equal(ws_handshake_accept(&fx.req, &ep, &acc, &why), 101);
        assert_null(acc.subprotocol);
        assert_false(acc.deflate.enabled);
        buf_init(&out);
        ws_handshake_write(&out, &acc, NULL);
        assert_string_equal(buf_cstr(&out),
                            "HTTP/1.1 101 Switching Protocols\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            "\r\n");
        buf_fini(&out);
    }
}

/* ---- validation table --------------------------------------------------------- */

struct validation_case {
    const char *name;
    const char *method;
    int major, minor;
    const char *lines[MAXH];
    int status;
};

static const struct validation_case validation[] = {
    {"valid", "GET", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION}, 101},
    {"HTTP/2.0 framing of 1.x fields", "GET", 2, 0,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION}, 101},
    {"lowercase names, odd case values", "GET", 1, 1,
     {"host: x", "upgrade: WebSocket", "connection: keep-alive, UPGRADE",
      "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version: 13"},
     101},
    {"token lists and OWS", "GET", 1, 1,
     {BASE_HOST, "Upgrade: foo/2 ,\twebsocket ", "Connection: keep-alive", "Connection: Upgrade",
      "Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  ", "Sec-WebSocket-Version:  13 "},
     101},
    {"POST", "POST", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION}, 400},
    {"get lowercase", "get", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION},
     400},
    {"HTTP/1.0", "GET", 1, 0, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION},
     400},
    {"no Host", "GET", 1, 1, {BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION}, 400},
    {"no Upgrade", "GET", 1, 1, {BASE_HOST, BASE_CONN, BASE_KEY, BASE_VERSION}, 400},
    {"Upgrade h2c", "GET", 1, 1, {BASE_HOST, "Upgrade: h2c", BASE_CONN, BASE_KEY, BASE_VERSION},
     400},
    {"Upgrade websocketx", "GET", 1, 1,
     {BASE_HOST, "Upgrade: websocketx", BASE_CONN, BASE_KEY, BASE_VERSION}, 400},
    {"no Connection", "GET", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_KEY, BASE_VERSION}, 400},
    {"Connection keep-alive", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, "Connection: keep-alive", BASE_KEY, BASE_VERSION}, 400},
    {"Connection upgraded", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, "Connection: upgraded", BASE_KEY, BASE_VERSION}, 400},
    {"no version", "GET", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY}, 426},
    {"version 8", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, "Sec-WebSocket-Version: 8"}, 426},
    {"version 14", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, "Sec-WebSocket-Version: 14"}, 426},
    {"version 130", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, "Sec-WebSocket-Version: 130"}, 426},
    {"version twice", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION, "Sec-WebSocket-Version: 8"},
     426},
    {"version checked before key", "GET", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN}, 426},
    {"no key", "GET", 1, 1, {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_VERSION}, 400},
    {"empty key", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: ", BASE_VERSION}, 400},
    {"key of 15 bytes", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA",
      BASE_VERSION},
     400},
    {"key of 17 bytes", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=",
      BASE_VERSION},
     400},
    {"key without padding", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
      BASE_VERSION},
     400},
    {"key with bad symbol", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ*==",
      BASE_VERSION},
     400},
    {"key url-safe alphabet", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ-==",
      BASE_VERSION},
     400},
    {"key twice", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_KEY, BASE_VERSION}, 400},
    {"key with + and /", "GET", 1, 1,
     {BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: ++++////AAAAzzzz0123AA==",
      BASE_VERSION},
     101},
};

static void test_validation_table(void **state)
{
    struct ws_endpoint ep = {no_protocols, {false, 15, false}};
    (void)state;
    for (size_t i = 0; i < sizeof validation / sizeof validation[0]; i++) {
        const struct validation_case *c = &validation[i];
        const char *lines[MAXH + 1] = {NULL};
        struct req_fixture fx;
        struct ws_accept acc;
        const char *why = NULL;
        int status;
        memcpy(lines, c->lines, sizeof c->lines);
        make_req(&fx, c->method, c->major, c->minor, lines);
        status = ws_handshake_accept(&fx.req, &ep, &acc, &why);
        if (status != c->status)
            fail_msg("%s: got %d (%s), want %d", c->name, status, why ? why : "-", c->status);
        if (status != 101)
            assert_non_null(why);
        else
            assert_int_equal(strlen(acc.accept_key), 28);
    }
}

static void test_key_trimmed(void **state)
{
    static const char *const lines[] = {
        BASE_HOST, BASE_UPGRADE, BASE_CONN, "Sec-WebSocket-Key: \t dGhlIHNhbXBsZSBub25jZQ== \t",
        BASE_VERSION, NULL};
    struct req_fixture fx;
    struct ws_accept acc;
    const char *why = NULL;
    size_t len = 0;
    (void)state;
    make_req(&fx, "GET", 1, 1, lines);
    assert_int_equal(ws_handshake_accept(&fx.req, NULL, &acc, &why), 101);
    assert_string_equal(acc.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_non_null(ws_header_get(&fx.req, "SEC-WEBSOCKET-KEY", &len));
    assert_null(ws_header_get(&fx.req, "Sec-WebSocket-Ke", &len));
    assert_string_equal(WS_VERSION_HEADER, "Sec-WebSocket-Version: 13\r\n");
}

/* ---- subprotocols ------------------------------------------------------------- */

struct proto_case {
    const char *const *server;
    const char *client[3]; /* Sec-WebSocket-Protocol header values */
    const char *want;      /* NULL: none chosen */
};

static const char *const pref_ba[] = {"b", "a", NULL};

static const struct proto_case proto_cases[] = {
    {mqtt_protocols, {"mqtt"}, "mqtt"},
    {mqtt_protocols, {"mqttv3.1, mqtt"}, "mqtt"},
    {mqtt_protocols, {"mqttv3.1", " mqtt "}, "mqtt"},
    {mqtt_protocols, {NULL}, NULL},
    {mqtt_protocols, {"MQTT"}, NULL}, /* subprotocol names compare exactly */
    {mqtt_protocols, {"mqttx, xmqtt"}, NULL},
    {no_protocols, {"mqtt"}, NULL},
    {NULL, {"mqtt"}, NULL},
    {pref_ba, {"a, b"}, "b"}, /* server preference wins */
    {pref_ba, {"a"}, "a"},
};

static void test_subprotocols(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof proto_cases / sizeof proto_cases[0]; i++) {
        const struct proto_case *c = &proto_cases[i];
        const char *lines[MAXH] = {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION};
        char hdr[3][64];
        size_t n = 5;
        struct ws_endpoint ep = {c->server, {false, 15, false}};
        struct req_fixture fx;
        struct ws_accept acc;
        const char *why = NULL;
        for (size_t j = 0; j < 3 && c->client[j]; j++) {
            snprintf(hdr[j], sizeof hdr[j], "Sec-WebSocket-Protocol:%s", c->client[j]);
            lines[n++] = hdr[j];
        }
        lines[n] = NULL;
        make_req(&fx, "GET", 1, 1, lines);
        assert_int_equal(ws_handshake_accept(&fx.req, &ep, &acc, &why), 101);
        if (c->want == NULL)
            assert_null(acc.subprotocol);
        else
            assert_string_equal(acc.subprotocol, c->want);
    }
}

/* ---- permessage-deflate negotiation ------------------------------------------ */

struct ext_case {
    const char *name;
    const char *offers[3];       /* Sec-WebSocket-Extensions header values */
    struct ws_deflate_policy pol;
    const char *want;            /* response value; "" = declined */
    uint8_t server_bits, client_bits;
    bool server_nct, client_nct;
};

#define POL {true, 15, false}
#define POL12 {true, 12, false}
#define POL_NCT {true, 15, true}

static const struct ext_case ext_cases[] = {
    {"plain offer", {"permessage-deflate"}, POL, "permessage-deflate", 15, 15, false, false},
    {"browser offer", {"permessage-deflate; client_max_window_bits"}, POL, "permessage-deflate",
     15, 15, false, false},
    {"browser offer, policy 12", {"permessage-deflate; client_max_window_bits"}, POL12,
     "permessage-deflate; client_max_window_bits=12", 12, 12, false, false},
    {"no client bits in offer: cannot limit the client", {"permessage-deflate"}, POL12,
     "permessage-deflate", 12, 15, false, false},
    {"server bits 10", {"permessage-deflate; server_max_window_bits=10"}, POL,
     "permessage-deflate; server_max_window_bits=10", 10, 15, false, false},
    {"server bits 15 with policy 12", {"permessage-deflate; server_max_window_bits=15"}, POL12,
     "permessage-deflate; server_max_window_bits=12", 12, 15, false, false},
    {"server bits 8 declined", {"permessage-deflate; server_max_window_bits=8"}, POL, "", 0, 0,
     false, false},
    {"server bits 8 then fallback",
     {"permessage-deflate; server_max_window_bits=8, permessage-deflate"}, POL,
     "permessage-deflate", 15, 15, false, false},
    /* never answered above the offer (RFC 7692 7.1.2.2) */
    {"client bits 8 answered 8", {"permessage-deflate; client_max_window_bits=8"}, POL,
     "permessage-deflate; client_max_window_bits=8", 15, 8, false, false},
    {"client bits 8, policy 12: 8", {"permessage-deflate; client_max_window_bits=8"}, POL12,
     "permessage-deflate; client_max_window_bits=8", 12, 8, false, false},
    {"client bits 10 quoted", {"permessage-deflate; client_max_window_bits=\"10\""}, POL,
     "permessage-deflate; client_max_window_bits=10", 15, 10, false, false},
    {"both no_context_takeover",
     {"permessage-deflate; server_no_context_takeover; client_no_context_takeover"}, POL,
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15, 15, true,
     true},
    {"policy no_context_takeover", {"permessage-deflate"}, POL_NCT,
     "permessage-deflate; client_no_context_takeover", 15, 15, true, true},
    {"everything",
     {"permessage-deflate;server_no_context_takeover;client_no_context_takeover;"
      "server_max_window_bits=11;client_max_window_bits=13"},
     POL12,
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=11; client_max_window_bits=12",
     11, 12, true, true},
    {"server bits without value declined", {"permessage-deflate; server_max_window_bits"}, POL,
     "", 0, 0, false, false},
    {"server bits 16 declined", {"permessage-deflate; server_max_window_bits=16"}, POL, "", 0,
     0, false, false},
    {"server bits 08 declined", {"permessage-deflate; server_max_window_bits=08"}, POL, "", 0,
     0, false, false},
    {"client bits 7 declined", {"permessage-deflate; client_max_window_bits=7"}, POL, "", 0, 0,
     false, false},
    {"unknown parameter declined", {"permessage-deflate; foo=1"}, POL, "", 0, 0, false, false},
    {"repeated parameter declined",
     {"permessage-deflate; server_no_context_takeover; server_no_context_takeover"}, POL, "", 0,
     0, false, false},
    {"valued flag declined", {"permessage-deflate; client_no_context_takeover=1"}, POL, "", 0, 0,
     false, false},
    {"other extensions ignored", {"x-webkit-deflate-frame, permessage-deflate; foo, "
                                  "permessage-deflate; client_max_window_bits"},
     POL12, "permessage-deflate; client_max_window_bits=12", 12, 12, false, false},
    {"offer in a second header", {"foo; bar=\"a,b;c\"", "permessage-deflate"}, POL,
     "permessage-deflate", 15, 15, false, false},
    {"extension name case-insensitive", {"PerMessage-Deflate"}, POL, "permessage-deflate", 15,
     15, false, false},
    {"policy off", {"permessage-deflate"}, {false, 15, false}, "", 0, 0, false, false},
    {"syntax error: empty parameter", {"permessage-deflate;;"}, POL, "", 0, 0, false, false},
    {"syntax error: unterminated quote", {"permessage-deflate; client_max_window_bits=\"10"},
     POL, "", 0, 0, false, false},
    {"syntax error before a good offer", {"@@@, permessage-deflate"}, POL, "", 0, 0, false,
     false},
    {"empty list elements", {" , ,permessage-deflate ,"}, POL, "permessage-deflate", 15, 15,
     false, false},
    {"no header", {NULL}, POL, "", 0, 0, false, false},
};

static void test_extensions(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof ext_cases / sizeof ext_cases[0]; i++) {
        const struct ext_case *c = &ext_cases[i];
        const char *lines[MAXH] = {BASE_HOST, BASE_UPGRADE, BASE_CONN, BASE_KEY, BASE_VERSION};
        char hdr[3][200];
        size_t n = 5;
        struct ws_endpoint ep = {NULL, c->pol};
        struct req_fixture fx;
        struct ws_accept acc;
        const char *why = NULL;
        struct buf out;
        for (size_t j = 0; j < 3 && c->offers[j]; j++) {
            snprintf(hdr[j], sizeof hdr[j], "Sec-WebSocket-Extensions: %s", c->offers[j]);
            lines[n++] = hdr[j];
        }
        lines[n] = NULL;
        make_req(&fx, "GET", 1, 1, lines);
        assert_int_equal(ws_handshake_accept(&fx.req, &ep, &acc, &why), 101);
        if (strcmp(acc.extensions, c->want) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", c->name, acc.extensions, c->want);
        assert_int_equal(acc.deflate.enabled, c->want[0] != '\0');
        buf_init(&out);
        ws_handshake_write(&out, &acc, NULL);
        assert_int_equal(strstr(buf_cstr(&out), "Sec-WebSocket-Extensions") != NULL,
                         c->want[0] != '\0');
        buf_fini(&out);
        if (!acc.deflate.enabled)
            continue;
        if (acc.deflate.server_window_bits != c->server_bits ||
            acc.deflate.client_window_bits != c->client_bits ||
            acc.deflate.server_no_context_takeover != c->server_nct ||
            acc.deflate.client_no_context_takeover != c->client_nct)
            fail_msg("%s: params %u/%u nct %d/%d", c->name, acc.deflate.server_window_bits,
                     acc.deflate.client_window_bits, acc.deflate.server_no_context_takeover,
                     acc.deflate.client_no_context_takeover);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key_rfc_example),
        cmocka_unit_test(test_full_response),
        cmocka_unit_test(test_validation_table),
        cmocka_unit_test(test_key_trimmed),
        cmocka_unit_test(test_subprotocols),
        cmocka_unit_test(test_extensions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
