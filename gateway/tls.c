/* gateway/tls.c: see tls.h. Bytes move: socket read -> tls_conn_read: BIO_write into
 * the input memory BIO, SSL_do_handshake until it is done, then SSL_read into the
 * caller's flat buffer (conn.c's loop-wide read buffer) up to its size; the layer
 * above's sends -> tls_conn_write: SSL_write into the output memory BIO; conn.c takes
 * the output BIO's bytes (tls_conn_output) and writes them to the socket. OpenSSL never
 * sees a file descriptor. The server context is rebuilt from the files on reload; each
 * SSL holds a reference to the SSL_CTX it was made from, so a reload never touches open
 * connections. Loop thread only. */
#include "gateway/tls.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "gateway/conn.h"
#include "gateway/devices.h"
#include "gateway/gw.h"
#include "gateway/log.h"

/* TLS 1.2 suites: forward secrecy (ECDHE) with an AEAD only. TLS 1.3 keeps OpenSSL's
 * defaults (all of which are AEADs). */
#define TLS12_CIPHERS                                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define OUT_KEEP_BYTES 16384   /* an output BIO that grew past this is replaced when drained */
#define WATCH_INTERVAL_MS 2000 /* how often libuv stats the certificate files */

struct tls_server {
    const struct config *cfg; /* tls.* keys: the files read on each (re)load */
    SSL_CTX *ctx;             /* for new connections; open ones hold their own reference */
    uv_signal_t sighup;
    uv_fs_poll_t polls[3];    /* cert, key, CA file */
    int npolls;
    bool watching;
};

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio;  /* owned by ssl: records from the socket, records for it */
    struct conn *conn; /* borrowed: the connection this runs under (logs, refusals) */
    const char *alpn;  /* protocol to select when the client offers ALPN, or NULL */
    bool done;         /* handshake finished */
    struct buf early;  /* plaintext sent before the handshake finished */
    char why[192];     /* the reason of the last failure, for the close */
};

/* OpenSSL's reason for the last failure (its error queue, emptied), or fallback. */
static void ssl_reason(char *out, size_t n, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(out, n, "%s", r ? r : fallback);
    ERR_clear_error();
}

/* ---- the server context -------------------------------------------------------------- */

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)ssl, (void)alert, (void)arg;
    return SSL_TLSEXT_ERR_OK; /* one certificate serves every name; the name is recorded */
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    const struct tls_conn *t = SSL_get_app_data(ssl);
    unsigned char wire[32];
    size_t n = t && t->alpn ? strlen(t->alpn) : 0;

    (void)arg;
    if (n == 0 || n >= sizeof wire)
        return SSL_TLSEXT_ERR_NOACK;
    wire[0] = (unsigned char)n;
    memcpy(wire + 1, t->alpn, n);
    /* out points into in (the client's list) when they overlap */
    if (SSL_select_next_proto((unsigned char **)out, outlen, wire, (unsigned)n + 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* a client without our protocol is served as it asked */
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *build_ctx(const struct config *cfg, char *err, size_t errlen)
{
    const char *cert = cfg->tls.cert_file;
    const char *key = cfg->tls.key_file[0] ? cfg->tls.key_file : cert;
    const char *ca = cfg->tls.ca_file;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    STACK_OF(X509_NAME) *names;
    char why[160];
    int mode = SSL_VERIFY_NONE;

    ERR_clear_error();
    if (!ctx) {
        ssl_reason(why, sizeof why, "cannot create a context");
        snprintf(err, errlen, "tls: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle connections hold no record buffers */
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        ssl_reason(why, sizeof why, "no cipher");
        snprintf(err, errlen, "tls: cipher list: %s", why);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_reason(why, sizeof why, "unreadable");
        snprintf(err, errlen, "config: tls.cert_file: %s: %s", cert, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(why, sizeof why, "unreadable");
        snprintf(err, errlen, "config: %s: %s: %s",
                 cfg->tls.key_file[0] ? "tls.key_file" : "tls.cert_file (no tls.key_file)", key,
                 why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(why, sizeof why, "mismatch");
        snprintf(err, errlen, "config: tls.key_file: %s does not match tls.cert_file %s (%s)", key,
                 cert, why);
        goto fail;
    }
    if (ca[0]) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
            (names = SSL_load_client_CA_file(ca)) == NULL) {
            ssl_reason(why, sizeof why, "no certificate in it");
            snprintf(err, errlen, "config: tls.ca_file: %s: %s", ca, why);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* takes ownership */
    }
    if (cfg->tls.client_auth == CONFIG_CLIENT_AUTH_OPTIONAL)
        mode = SSL_VERIFY_PEER;
    else if (cfg->tls.client_auth == CONFIG_CLIENT_AUTH_REQUIRED)
        mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

struct tls_server *tls_server_new(const struct config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = build_ctx(cfg, err, errlen);
    struct tls_server *s;

    if (!ctx)
        return NULL;
    s = xcalloc(1, sizeof *s);
    s->cfg = cfg;
    s->ctx = ctx;
    return s;
}

int tls_server_check(const struct config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = build_ctx(cfg, err, errlen);
    SSL_CTX_free(ctx);
    return ctx ? 0 : -1;
}

int tls_server_reload(struct tls_server *s)
{
    char err[CONFIG_STR_MAX + 256];
    SSL_CTX *ctx = build_ctx(s->cfg, err, sizeof err);

    if (!ctx) {
        log_warn("tls reload failed, keeping the current certificate reason=\"%s\"", log_q(err));
        return -1;
    }
    SSL_CTX_free(s->ctx); /* connections made from it keep their reference */
    s->ctx = ctx;
    log_info("tls reloaded cert_file=%s", s->cfg->tls.cert_file);
    return 0;
}

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    tls_server_reload(h->data);
}

static void on_file_changed(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
                            const uv_stat_t *cur)
{
    (void)prev, (void)cur;
    if (status == 0) /* a file that vanished (status < 0) is half-way through a replace */
        tls_server_reload(h->data);
}

int tls_server_watch(struct tls_server *s, uv_loop_t *loop)
{
    const char *files[3] = {s->cfg->tls.cert_file, s->cfg->tls.key_file, s->cfg->tls.ca_file};
    int rc;

    if ((rc = uv_signal_init(loop, &s->sighup)) != 0)
        return rc;
    s->sighup.data = s;
    s->watching = true;
    if ((rc = uv_signal_start(&s->sighup, on_sighup, SIGHUP)) != 0)
        return rc;
    for (int i = 0; i < 3; i++) {
        if (!files[i][0])
            continue;
        uv_fs_poll_init(loop, &s->polls[s->npolls]);
        s->polls[s->npolls].data = s;
        rc = uv_fs_poll_start(&s->polls[s->npolls++], on_file_changed, files[i],
                              WATCH_INTERVAL_MS);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void tls_server_close(struct tls_server *s)
{
    if (!s || !s->watching)
        return;
    uv_close((uv_handle_t *)&s->sighup, NULL);
    for (int i = 0; i < s->npolls; i++)
        uv_close((uv_handle_t *)&s->polls[i], NULL);
    s->watching = false;
}

void tls_server_free(struct tls_server *s)
{
    if (!s)
        return;
    SSL_CTX_free(s->ctx);
    free(s);
}

/* ---- connections ------------------------------------------------------------------------ */

struct tls_conn *tls_conn_new(struct tls_server *s, struct conn *c, const char *alpn)
{
    struct tls_conn *t = xcalloc(1, sizeof *t);

    t->ssl = SSL_new(s->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) { /* OpenSSL out of memory: as xmalloc does */
        log_error("tls: cannot create a connection (out of memory)");
        abort();
    }
    BIO_set_mem_eof_return(t->rbio, -1); /* an empty input BIO means "more to come" */
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    SSL_set_app_data(t->ssl, t);
    t->conn = c;
    t->alpn = alpn;
    buf_init(&t->early);
    return t;
}

void tls_conn_free(struct tls_conn *t)
{
    if (!t)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    buf_fini(&t->early);
    free(t);
}

static void log_handshake(const struct tls_conn *t)
{
    const struct conn *c = t->conn;
    const char *sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    char subject[128] = "";
    X509 *peer = SSL_get0_peer_certificate(t->ssl);

    if (peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, subject,
                                  sizeof subject);
    SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
    log_debug("conn=%llu peer=%s listener=%s tls handshake done version=%s cipher=%s "
              "sni=\"%s\" alpn=\"%s\" client_cn=\"%s\"",
              (unsigned long long)c->id, conn_peer(c), c->listener->name, SSL_get_version(t->ssl),
              SSL_get_cipher_name(t->ssl), log_q(sni), log_qn(alpn, alpn_len), log_q(subject));
}

/* The handshake failed: reason from OpenSSL (and the certificate check), logged once per
 * connection, summarised per peer like other refusals. */
static void handshake_failed(struct tls_conn *t, int err)
{
    struct conn *c = t->conn;
    long verify = SSL_get_verify_result(t->ssl);
    char reason[128], detail[160];

    if (err == SSL_ERROR_SSL)
        ssl_reason(reason, sizeof reason, "protocol error");
    else
        snprintf(reason, sizeof reason, "%s", err == SSL_ERROR_SYSCALL ? "unexpected eof" : "error");
    ERR_clear_error();
    if (verify != X509_V_OK)
        snprintf(detail, sizeof detail, "%s (%s)", reason, X509_verify_cert_error_string(verify));
    else
        snprintf(detail, sizeof detail, "%s", reason);
    snprintf(t->why, sizeof t->why, "tls handshake failed: %s", detail);
    metrics_auth_failed(&c->gw->metrics, "tls", "handshake_failed");
    if (conn_refused(c, "tls handshake failed"))
        log_warn("conn=%llu peer=%s listener=%s tls handshake failed reason=\"%s\"",
                 (unsigned long long)c->id, conn_peer(c), c->listener->name, log_q(detail));
}

enum tls_read_rc tls_conn_read(struct tls_conn *t, const void *data, size_t len, void *out,
                               size_t cap, size_t *n, const char **why)
{
    uint8_t *p = out;
    int r, e;

    *n = 0;
    ERR_clear_error();
    if (len && BIO_write(t->rbio, data, (int)len) != (int)len) {
        *why = "tls: cannot buffer input";
        return TLS_READ_ERROR;
    }
    if (!t->done) {
        r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return TLS_READ_DONE; /* the next flight is in the output */
            handshake_failed(t, e);
            *why = t->why;
            return TLS_READ_ERROR;
        }
        t->done = true;
        log_handshake(t);
        if (t->early.len) {
            int rc = tls_conn_write(t, t->early.data, t->early.len, why);
            buf_fini(&t->early);
            buf_init(&t->early);
            if (rc != 0)
                return TLS_READ_ERROR;
        }
    }
    while (*n < cap) {
        size_t room = cap - *n;
        r = SSL_read(t->ssl, p + *n, room > INT_MAX ? INT_MAX : (int)room);
        if (r > 0) {
            *n += (size_t)r;
            continue;
        }
        e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return TLS_READ_DONE;
        if (e == SSL_ERROR_ZERO_RETURN) {
            *why = "peer closed (tls close_notify)";
            return TLS_READ_CLOSED;
        }
        ssl_reason(t->why + 5, sizeof t->why - 5, "bad record");
        memcpy(t->why, "tls: ", 5);
        *why = t->why;
        return TLS_READ_ERROR;
    }
    return TLS_READ_MORE;
}

int tls_conn_write(struct tls_conn *t, const void *data, size_t len, const char **why)
{
    const char *p = data;

    if (!t->done) {
        buf_append(&t->early, data, len);
        return 0;
    }
    ERR_clear_error();
    while (len) {
        int n = SSL_write(t->ssl, p, len > INT_MAX ? INT_MAX : (int)len);
        if (n <= 0) {
            ssl_reason(t->why + 5, sizeof t->why - 5, "cannot encrypt");
            memcpy(t->why, "tls: ", 5);
            *why = t->why;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void tls_conn_shutdown(struct tls_conn *t)
{
    if (t->done && !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
        SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t tls_conn_output(struct tls_conn *t, const void **data)
{
    char *p = NULL;
    long n = BIO_get_mem_data(t->wbio, &p);
    *data = p;
    return n > 0 ? (size_t)n : 0;
}

void tls_conn_output_done(struct tls_conn *t)
{
    BUF_MEM *m = NULL;

    BIO_get_mem_ptr(t->wbio, &m);
    if (m && m->max > OUT_KEEP_BYTES) { /* a large reply went out: give its memory back */
        BIO *b = BIO_new(BIO_s_mem());
        if (!b) {
            log_error("tls: cannot create a buffer (out of memory)");
            abort();
        }
        SSL_set0_wbio(t->ssl, b); /* frees the old one */
        t->wbio = b;
        return;
    }
    (void)BIO_reset(t->wbio);
}

/* ---- mutual TLS ------------------------------------------------------------------------- */

/* The provisioned device id that n bytes at p spell (want: only that one), or NULL. */
static const char *provisioned(struct gw *gw, const unsigned char *p, int n, const char *want)
{
    char id[DEVICE_ID_MAX + 1];
    struct device *dev;

    if (n <= 0 || n > DEVICE_ID_MAX || !devices_valid_id((const char *)p, (size_t)n))
        return NULL;
    memcpy(id, p, (size_t)n);
    id[n] = '\0';
    if (want && want[0] && strcmp(id, want) != 0)
        return NULL;
    dev = devices_find(gw->devices, id);
    return dev ? dev->id : NULL;
}

const char *tls_peer_device(const struct conn *c, const char *want)
{
    const struct tls_conn *t = c->x->tls;
    X509 *x;
    X509_NAME *subject;
    GENERAL_NAMES *sans;
    const char *found = NULL;
    int i = -1;

    if (!t || !t->done || (x = SSL_get0_peer_certificate(t->ssl)) == NULL ||
        SSL_get_verify_result(t->ssl) != X509_V_OK)
        return NULL;
    subject = X509_get_subject_name(x);
    while (!found && (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0) {
        const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
        found = provisioned(c->gw, ASN1_STRING_get0_data(s), ASN1_STRING_length(s), want);
    }
    sans = found ? NULL : X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (i = 0; sans && !found && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS)
            found = provisioned(c->gw, ASN1_STRING_get0_data(g->d.dNSName),
                                ASN1_STRING_length(g->d.dNSName), want);
    }
    GENERAL_NAMES_free(sans);
    return found;
}
