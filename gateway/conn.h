/* gateway/conn.h: a connection and the registry of live connections.
 *
 * A connection is three layers picked by its listener: listener (tcp | tls) ->
 * transport (raw | websocket) -> protocol (mqtt | line | http). The protocol is a
 * small table of function pointers; it may be swapped mid-stream (HTTP upgraded
 * to WebSocket). Everything here runs on the loop thread.
 *
 * Lifetime: struct conn embeds its uv_tcp_t and is freed only after the close
 * callback has run and every reference (conn_ref, held by pending async work such
 * as a REST query) is dropped. conn_close() is idempotent: it marks the connection
 * closing, stops reading, logs once and closes the handle; code after it in the
 * same callback may still read c. */
#ifndef GALE_CONN_H
#define GALE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "gateway/ticket.h"

struct conn;
struct gw;

struct proto_ops {
    const char *name;                             /* "mqtt", "line", "http" */
    void *(*open)(struct conn *c);                /* returns per-connection state */
    /* Decodes what is in c->in, dispatches, consumes. Returns 0, or negative
     * after having closed the connection. */
    int (*feed)(void *state, struct buf *in);
    void (*close)(void *state, const char *why); /* release state; no I/O */
};

/* A transport between the socket and the protocol (WebSocket, TLS): it decodes
 * raw socket bytes, appending the protocol's bytes to c->in, and wraps what the
 * protocol sends. */
struct transport_ops {
    const char *name;                             /* "websocket", "tls" */
    /* Decodes raw (consuming it) and appends payload to in. Returns 0, or negative
     * after having closed the connection. */
    int (*feed)(void *state, struct buf *raw, struct buf *in);
    /* Wraps data (a frame, a TLS record) and writes it with conn_send_raw. */
    void (*send)(void *state, const void *data, size_t len);
    void (*close)(void *state);                   /* release state; no I/O */
    /* Optional: last words before the socket closes (a WebSocket close frame when
     * none was sent yet: 1001 when the gateway is stopping, else 1000). */
    void (*goodbye)(void *state, bool stopping);
};

/* Called when every write of a ticket has become durable (ok = 1), when any of
 * them failed for good (ok = 0), or when the connection closed first (ok = -1:
 * send nothing, only release what tag refers to). */
typedef void (*conn_durable_fn)(struct conn *c, uint64_t tag, int ok);

struct conn_waiter {
    struct ticket t;     /* the writes awaited (empty: only the waiters before it) */
    uint64_t tag;        /* caller's value (line seq, request id, packet id) */
    conn_durable_fn fn;
    bool failed;         /* a write of t failed: fires with ok = 0 */
};

struct conn {
    /* public */
    uint64_t id;                     /* unique for the process lifetime, from 1 */
    struct gw *gw;
    char peer[64];                   /* "127.0.0.1:51512" or "[::1]:51512" */
    const char *listener;            /* "http", "line", "mqtt" */
    const struct proto_ops *proto;
    void *proto_state;
    const struct transport_ops *xport;   /* NULL: the protocol reads the socket directly */
    void *xport_state;
    /* set by protocols that can carry commands to their device (line, ws-device) */
    void (*send_command)(struct conn *c, const char *json, size_t len);
    char device[65];                 /* device id after auth, else "" */
    bool ingest;                     /* reads pause under storage backpressure */
    bool closing;
    int64_t connected_ms;            /* epoch ms */
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
    unsigned auth_timeout_ms;        /* 0 = none; cleared by conn_authenticated */
    unsigned idle_timeout_ms;        /* 0 = none */
    /* read-only */
    size_t send_queued_bytes;        /* bytes handed to uv_write not yet written */
    struct buf in;                   /* bytes for the protocol, not yet consumed */
    struct buf raw;                  /* socket bytes for the transport (when xport is set) */
    /* private */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uint64_t last_read_mono_ms;
    int refs;
    int handles_open;
    bool reading;
    bool paused;                     /* by backpressure or by the protocol */
    bool close_after_write;
    char close_why[128];
    struct conn *prev, *next;        /* registry list */
    struct conn *wprev, *wnext;      /* list of connections with waiters */
    bool on_wait_list;
    struct conn_waiter *waiters;     /* FIFO ring of durable waiters */
    size_t nwaiters, waiters_head, waiters_cap;
};

/* Accepts a pending connection on server; returns NULL (and logs) when the limit
 * is reached or accept fails. Starts reading. */
struct conn *conn_accept(struct gw *gw, uv_stream_t *server, const char *listener,
                         const struct proto_ops *proto);
/* Swaps the protocol (state of the old one is released by the caller). */
void conn_set_proto(struct conn *c, const struct proto_ops *proto, void *state);
/* Puts a transport under the protocol; bytes already in c->in become raw input. */
void conn_set_transport(struct conn *c, const struct transport_ops *t, void *state);
/* Sends protocol bytes: through the transport when there is one. */
void conn_send(struct conn *c, const void *data, size_t len);
/* Copies data and writes it to the socket (uv_try_write first, the rest queued). */
void conn_send_raw(struct conn *c, const void *data, size_t len);
/* Closes once all queued bytes are written. */
void conn_close_after_write(struct conn *c, const char *why);
void conn_close(struct conn *c, const char *why);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* Marks the connection as authenticated by device (stops the auth timer). */
void conn_authenticated(struct conn *c, const char *device);
/* Pauses / resumes reading on behalf of the protocol (e.g. HTTP waiting on a reply). */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
/* Feeds buffered input to the protocol again (after conn_resume / a reply). */
void conn_refeed(struct conn *c);
/* Queues a waiter behind the connection's earlier ones (acks keep arrival order). */
void conn_await_durable(struct conn *c, const struct ticket *t, bool failed, uint64_t tag,
                        conn_durable_fn fn);

/* Registry-level operations (gw calls these). Storage reported the writes with seqs in
 * (from_seq, upto_seq] committed (ok = 1) or failed (ok = 0): waiters whose tickets
 * overlap a failed range fail, and every waiter whose ticket ends by upto_seq fires. */
void conn_registry_durable(struct gw *gw, uint64_t from_seq, uint64_t upto_seq, int ok);
void conn_registry_pause_ingest(struct gw *gw, bool paused);
/* Closes every connection (shutdown). */
void conn_registry_close_all(struct gw *gw, const char *why);
/* Reads which ingest connections should be reading now. */
void conn_update_reading(struct conn *c);

#endif
