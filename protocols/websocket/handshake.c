/* protocols/websocket/handshake.c: the server side of the opening handshake
 * (RFC 6455 4.2.1-4.2.2) and permessage-deflate negotiation (RFC 7692 section 7).
 *
 * The HTTP layer hands over a parsed request (method, version, header views);
 * ws_handshake_accept() validates it and decides the subprotocol and extension
 * parameters, ws_handshake_write() appends the 101 response to the connection's
 * output. Pure apart from SHA-1 (OpenSSL EVP) for Sec-WebSocket-Accept; loop thread.
 *
 * Negotiation choices: subprotocols in the server's preference order; for
 * permessage-deflate the first offer whose parameters can all be honoured.
 * server_max_window_bits=8 is declined (zlib's raw deflate cannot make an 8-bit
 * window); client windows are capped by the policy when the client lets us
 * (client_max_window_bits in its offer) and are never answered above the client's own
 * value (RFC 7692 7.1.2.2): an offer of 8 is answered 8, and our inflater uses a 9-bit
 * window for it (a larger window inflates what a smaller one made).
 * server_no_context_takeover is echoed only when offered (an unrequested one
 * confuses some clients, RFC 7692 erratum 4982); without it our compressor may
 * still reset per message, which the client cannot tell apart.
 * client_no_context_takeover is sent when offered or when the policy wants it. */
#include "protocols/websocket/ws.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_CHARS 24 /* base64 of 16 bytes */

/* ---- header helpers ----------------------------------------------------------- */

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (lower(a[i]) != lower(b[i]))
            return false;
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **p, size_t *len)
{
    while (*len > 0 && is_ows(**p)) {
        (*p)++;
        (*len)--;
    }
    while (*len > 0 && is_ows((*p)[*len - 1]))
        (*len)--;
}

/* RFC 7230 tchar. */
static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

const char *ws_header_get(const struct ws_request *req, const char *name, size_t *len)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_header *h = &req->headers[i];
        if (ieq(h->name, h->name_len, name)) {
            *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

static size_t count_headers(const struct ws_request *req, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < req->nheaders; i++)
        if (ieq(req->headers[i].name, req->headers[i].name_len, name))
            n++;
    return n;
}

/* True when a comma-separated list in any header called name holds token.
 * nocase: compare case-insensitively (Upgrade, Connection), else exactly. */
static bool list_has(const struct ws_request *req, const char *name, const char *token,
                     bool nocase)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_header *h = &req->headers[i];
        const char *v = h->value, *end = h->value + h->value_len;
        if (!ieq(h->name, h->name_len, name))
            continue;
        while (v < end) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            const char *item = v;
            size_t ilen = (size_t)((comma ? comma : end) - v);
            trim(&item, &ilen);
            if (nocase ? ieq(item, ilen, token)
                       : (ilen == tlen && memcmp(item, token, tlen) == 0))
                return true;
            v = comma ? comma + 1 : end;
        }
    }
    return false;
}

static bool is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* A base64 string that decodes to exactly 16 bytes: 22 symbols then "==". The
 * 4 unused bits of the last symbol are not checked (lenient decoders ignore them). */
static bool valid_key(const char *k, size_t len)
{
    if (len != WS_KEY_CHARS || k[22] != '=' || k[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(k[i]))
            return false;
    return true;
}

void ws_accept_key(const char *key, size_t key_len, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, key, key_len) == 1 &&
             EVP_DigestUpdate(ctx, WS_GUID, sizeof WS_GUID - 1) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        out[0] = '\0'; /* cannot happen short of a broken libcrypto; the client rejects */
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
}

/* ---- Sec-WebSocket-Extensions ------------------------------------------------- */

struct cursor {
    const char *p, *end;
};

static void skip_ows(struct cursor *c)
{
    while (c->p < c->end && is_ows(*c->p))
        c->p++;
}

static bool take_token(struct cursor *c, const char **tok, size_t *len)
{
    const char *s = c->p;
    while (c->p < c->end && is_tchar(*c->p))
        c->p++;
    *tok = s;
    *len = (size_t)(c->p - s);
    return *len > 0;
}

/* A parameter value: token or quoted-string, unquoted into val (cut at cap - 1;
 * *len keeps the full length so the caller can tell it was too long). */
static bool take_value(struct cursor *c, char *val, size_t cap, size_t *len)
{
    size_t n = 0;
    if (c->p < c->end && *c->p == '"') {
        c->p++;
        for (;;) {
            char ch;
            if (c->p >= c->end)
                return false;
            ch = *c->p++;
            if (ch == '"')
                break;
            if (ch == '\\') {
                if (c->p >= c->end)
                    return false;
                ch = *c->p++;
            }
            if (n + 1 < cap)
                val[n] = ch;
            n++;
        }
    } else {
        const char *tok;
        if (!take_token(c, &tok, &n))
            return false;
        memcpy(val, tok, n + 1 < cap ? n : cap - 1);
    }
    val[n + 1 < cap ? n : cap - 1] = '\0';
    *len = n;
    return true;
}

/* "8".."15" with no leading zero; -1 otherwise. */
static int window_bits(const char *v, size_t len)
{
    if (len == 1 && (v[0] == '8' || v[0] == '9'))
        return v[0] - '0';
    if (len == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + (v[1] - '0');
    return -1;
}

struct pmd_offer {
    bool valid;        /* every parameter was known, well-formed and single */
    bool snct, cnct;   /* server_/client_no_context_takeover present */
    int smwb;          /* server_max_window_bits value, or -1 when absent */
    int cmwb;          /* client_max_window_bits: -1 absent, 0 present without value */
};

static void offer_param(struct pmd_offer *o, const char *name, size_t name_len,
                        bool has_value, const char *v, size_t vlen)
{
    if (ieq(name, name_len, "server_no_context_takeover")) {
        if (o->snct || has_value)
            o->valid = false;
        o->snct = true;
    } else if (ieq(name, name_len, "client_no_context_takeover")) {
        if (o->cnct || has_value)
            o->valid = false;
        o->cnct = true;
    } else if (ieq(name, name_len, "server_max_window_bits")) {
        int bits = has_value ? window_bits(v, vlen) : -1;
        if (o->smwb != -1 || bits < 0)
            o->valid = false;
        o->smwb = bits < 0 ? 15 : bits;
    } else if (ieq(name, name_len, "client_max_window_bits")) {
        int bits = has_value ? window_bits(v, vlen) : 0;
        if (o->cmwb != -1 || bits < 0)
            o->valid = false;
        o->cmwb = bits < 0 ? 15 : bits;
    } else {
        o->valid = false; /* unknown parameter: decline this offer */
    }
}

/* Turns an acceptable offer into agreed parameters and the response value.
 * Returns false to decline the offer. */
static bool agree(const struct pmd_offer *o, const struct ws_deflate_policy *pol,
                  struct ws_deflate_params *out, char *resp, size_t cap)
{
    int max = pol->max_window_bits == 0 ? 15 : pol->max_window_bits;
    int n;

    if (!o->valid || o->smwb == 8)
        return false;
    max = max < 9 ? 9 : max > 15 ? 15 : max;
    memset(out, 0, sizeof *out);
    out->enabled = true;
    out->server_window_bits = (uint8_t)(o->smwb > 0 && o->smwb < max ? o->smwb : max);
    out->server_no_context_takeover = o->snct || pol->no_context_takeover;
    out->client_no_context_takeover = o->cnct || pol->no_context_takeover;
    out->client_window_bits = 15;
    if (o->cmwb >= 0) /* never above the client's value (RFC 7692 7.1.2.2): 8 stays 8 */
        out->client_window_bits = (uint8_t)(o->cmwb > 0 && o->cmwb < max ? o->cmwb : max);
    n = snprintf(resp, cap, "permessage-deflate%s%s", o->snct ? "; server_no_context_takeover" : "",
                 out->client_no_context_takeover ? "; client_no_context_takeover" : "");
    if (o->smwb > 0)
        n += snprintf(resp + n, cap - (size_t)n, "; server_max_window_bits=%d",
                      out->server_window_bits);
    if (out->client_window_bits < 15)
        n += snprintf(resp + n, cap - (size_t)n, "; client_max_window_bits=%d",
                      out->client_window_bits);
    return n > 0 && (size_t)n < cap;
}

/* Walks every Sec-WebSocket-Extensions header; stops at the first permessage-deflate
 * offer that agree() accepts. A syntax error ends the walk: nothing more is agreed. */
static void negotiate_deflate(const struct ws_request *req, const struct ws_deflate_policy *pol,
                              struct ws_accept *acc)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_header *h = &req->headers[i];
        struct cursor c = {h->value, h->value + h->value_len};
        if (!ieq(h->name, h->name_len, "Sec-WebSocket-Extensions"))
            continue;
        for (;;) {
            const char *ext;
            size_t ext_len;
            struct pmd_offer o = {true, false, false, -1, -1};
            skip_ows(&c);
            if (c.p >= c.end)
                break;
            if (*c.p == ',') { /* empty list element */
                c.p++;
                continue;
            }
            if (!take_token(&c, &ext, &ext_len))
                return;
            skip_ows(&c);
            while (c.p < c.end && *c.p == ';') {
                const char *pname;
                size_t pname_len, vlen = 0;
                char v[8] = "";
                bool has_value = false;
                c.p++;
                skip_ows(&c);
                if (!take_token(&c, &pname, &pname_len))
                    return;
                skip_ows(&c);
                if (c.p < c.end && *c.p == '=') {
                    c.p++;
                    skip_ows(&c);
                    if (!take_value(&c, v, sizeof v, &vlen))
                        return;
                    has_value = true;
                    skip_ows(&c);
                }
                offer_param(&o, pname, pname_len, has_value, v, vlen);
            }
            if (c.p < c.end && *c.p != ',')
                return;
            if (ieq(ext, ext_len, "permessage-deflate") &&
                agree(&o, pol, &acc->deflate, acc->extensions, sizeof acc->extensions))
                return;
            memset(&acc->deflate, 0, sizeof acc->deflate);
            acc->extensions[0] = '\0';
        }
    }
}

/* ---- the handshake ------------------------------------------------------------ */

int ws_handshake_accept(const struct ws_request *req, const struct ws_endpoint *ep,
                        struct ws_accept *acc, const char **why)
{
    const char *key, *version;
    size_t key_len, version_len, n;

    memset(acc, 0, sizeof *acc);
    if (!req->method || strcmp(req->method, "GET") != 0) {
        *why = "WebSocket upgrade must be a GET";
        return 400;
    }
    if (req->http_major < 1 || (req->http_major == 1 && req->http_minor < 1)) {
        *why = "WebSocket upgrade needs HTTP/1.1";
        return 400;
    }
    if (!ws_header_get(req, "Host", &n)) {
        *why = "missing Host header";
        return 400;
    }
    if (!list_has(req, "Upgrade", "websocket", true)) {
        *why = "Upgrade header does not name websocket";
        return 400;
    }
    if (!list_has(req, "Connection", "upgrade", true)) {
        *why = "Connection header does not name upgrade";
        return 400;
    }
    /* Version before key: a pre-RFC client (no version header) learns "13" from 426. */
    version = ws_header_get(req, "Sec-WebSocket-Version", &version_len);
    if (version)
        trim(&version, &version_len);
    if (!version || count_headers(req, "Sec-WebSocket-Version") != 1 || version_len != 2 ||
        memcmp(version, "13", 2) != 0) {
        *why = "unsupported Sec-WebSocket-Version (13 required)";
        return 426;
    }
    key = ws_header_get(req, "Sec-WebSocket-Key", &key_len);
    if (!key || count_headers(req, "Sec-WebSocket-Key") != 1) {
        *why = "missing or repeated Sec-WebSocket-Key";
        return 400;
    }
    trim(&key, &key_len);
    if (!valid_key(key, key_len)) {
        *why = "Sec-WebSocket-Key is not 16 bytes of base64";
        return 400;
    }

    ws_accept_key(key, key_len, acc->accept_key);
    for (size_t i = 0; ep && ep->subprotocols && ep->subprotocols[i]; i++) {
        if (list_has(req, "Sec-WebSocket-Protocol", ep->subprotocols[i], false)) {
            acc->subprotocol = ep->subprotocols[i];
            break;
        }
    }
    if (ep && ep->deflate.enabled)
        negotiate_deflate(req, &ep->deflate, acc);
    return 101;
}

void ws_handshake_write(struct buf *out, const struct ws_accept *acc, const char *extra_headers)
{
    buf_printf(out,
               "HTTP/1.1 101 Switching Protocols\r\n"
               "Upgrade: websocket\r\n"
               "Connection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\n",
               acc->accept_key);
    if (acc->subprotocol)
        buf_printf(out, "Sec-WebSocket-Protocol: %s\r\n", acc->subprotocol);
    if (acc->deflate.enabled && acc->extensions[0])
        buf_printf(out, "Sec-WebSocket-Extensions: %s\r\n", acc->extensions);
    if (extra_headers)
        buf_append_str(out, extra_headers);
    buf_append(out, "\r\n", 2);
}
