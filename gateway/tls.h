/* gateway/tls.h: TLS as a transport under any protocol, with OpenSSL driven through
 * memory BIOs. The socket stays with libuv: conn.c hands tls_conn_read the ciphertext a
 * read brought in the loop-wide read buffer, gets the plaintext back in that same buffer
 * (piece by piece, each handed to the WebSocket transport's raw input or the protocol's
 * c->in as a plain read's bytes are), and writes what tls_conn_output
 * holds (handshake records, encrypted data, alerts) to the socket; what the layer above
 * sends goes in through tls_conn_write. The protocol never knows.
 *
 * A struct tls_server is the server context built from the tls.* keys: TLS 1.2 minimum,
 * ECDHE with AES-GCM or ChaCha20-Poly1305 for 1.2 (OpenSSL's defaults for 1.3), one
 * certificate, SNI accepted and recorded, ALPN answered with the listener's protocol
 * ("mqtt", "http/1.1") when the client offers it, renegotiation refused. Session
 * tickets and the session cache are off: every connection does a full handshake (devices
 * hold long connections; no ticket key needs rotating). tls_server_watch reloads the
 * context on SIGHUP and when a file changes; connections keep the SSL_CTX they started
 * with (refcounted), new ones get the new one, a failed reload keeps the old.
 * Loop thread only. */
#ifndef GALE_TLS_H
#define GALE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config/config.h"

struct conn;
struct tls_server;
struct tls_conn;

/* Builds the server context from cfg->tls (cfg is borrowed for the server's lifetime;
 * its files are read again on reload). Returns NULL with err (naming the key and
 * OpenSSL's reason) when a file is unreadable, the key does not match the certificate or
 * the CA file does not parse. No I/O but reading those files, so --check-config calls
 * tls_server_check. */
struct tls_server *tls_server_new(const struct config *cfg, char *err, size_t errlen);
/* tls_server_new and free: 0, or -1 with err. */
int tls_server_check(const struct config *cfg, char *err, size_t errlen);
/* Reloads on SIGHUP and when the certificate, key or CA file changes (libuv stats them
 * every 2 s on its thread pool). Returns 0 or a libuv error. */
int tls_server_watch(struct tls_server *s, uv_loop_t *loop);
/* Builds a new context from the files; on success new connections use it, else the old
 * one stays and the reason is logged. Returns 0 or -1. */
int tls_server_reload(struct tls_server *s);
/* Closes the watch handles (the loop must run for them to finish closing). */
void tls_server_close(struct tls_server *s);
/* Frees the context (after tls_server_close has finished; connections still open keep
 * their SSL_CTX). NULL is ignored. */
void tls_server_free(struct tls_server *s);

/* A server-side TLS connection for c (borrowed: for logs and refusals) on the current
 * context; alpn is the protocol to select when the client offers ALPN (static; NULL =
 * none). */
struct tls_conn *tls_conn_new(struct tls_server *s, struct conn *c, const char *alpn);
void tls_conn_free(struct tls_conn *t);
/* tls_conn_read's results. */
enum tls_read_rc {
    TLS_READ_ERROR = -1, /* close once the output is written: a failed handshake, a bad record */
    TLS_READ_DONE = 0,   /* all the plaintext there is was put in out; more needs the socket */
    TLS_READ_CLOSED = 1, /* the peer's close_notify followed: serve out, then close */
    TLS_READ_MORE = 2,   /* out is full and more plaintext waits: call again with len 0 */
};
/* Takes len bytes read from the socket (copied at once, so data may be out itself) and
 * puts up to cap bytes of what they decrypt to at out (*n of them); the records to
 * answer with wait in tls_conn_output. A failed handshake is logged once with the peer
 * and OpenSSL's reason, summarised per peer like other refusals. *why (CLOSED, ERROR) is
 * the reason, valid until tls_conn_free. */
enum tls_read_rc tls_conn_read(struct tls_conn *t, const void *data, size_t len, void *out,
                               size_t cap, size_t *n, const char **why);
/* Encrypts len bytes of the layer above into the output (before the handshake is done
 * they wait for it). Returns 0, or -1 with a static reason when the connection is to
 * close. */
int tls_conn_write(struct tls_conn *t, const void *data, size_t len, const char **why);
/* Queues a close_notify alert (once the handshake is done). */
void tls_conn_shutdown(struct tls_conn *t);
/* The bytes waiting for the socket: *data is borrowed until tls_conn_output_done, which
 * the caller calls once it has written or copied them all. Returns their length. */
size_t tls_conn_output(struct tls_conn *t, const void **data);
void tls_conn_output_done(struct tls_conn *t);

/* Mutual TLS: the provisioned device that c's verified client certificate names (its
 * subject CN or a DNS SAN). With want non-empty, want itself when the certificate names
 * it and it is provisioned; else the first such name. NULL when c is not TLS, sent no
 * certificate, or names no provisioned device. Borrowed from the device registry. */
const char *tls_peer_device(const struct conn *c, const char *want);

#endif
