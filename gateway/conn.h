/* gateway/conn.h: a connection, and the registry of live connections with its
 * iterator.
 *
 * A connection is three layers picked by its listener: a TCP socket -> transport
 * (raw | websocket) -> protocol (mqtt | line | http). The protocol is a
 * small table of function pointers; it may be swapped mid-stream (HTTP upgraded
 * to WebSocket). Everything here runs on the loop thread.
 *
 * Lifetime (one rule): a connection, its transport (TLS, WebSocket) and its protocol
 * state are freed only after the outermost callback on the stack has returned: from the
 * socket's close callback (libuv runs it in a later phase of the loop), and the struct
 * itself once every reference (conn_ref, held by pending async work such as a REST query)
 * is dropped. conn_close() is idempotent: it marks the connection closing, stops reading,
 * writes its last words (a WebSocket close frame, TLS close_notify), logs once and closes
 * the handle; a write that fails marks the connection closing the same way and never
 * re-enters the close path. So code after a conn_close or a conn_send, anywhere up the
 * stack, may still use c and its protocol and transport state. Nothing is fed to a closing
 * connection, and what is sent to one is dropped. */
#ifndef GALE_CONN_H
#define GALE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "gateway/ticket.h"

struct conn;
struct conn_registry;
struct gw;
struct tls_conn;
struct tls_server;

struct proto_ops {
    const char *name;                             /* "mqtt", "line", "http" */
    /* Returns per-connection state. ctx is the protocol's server state: the
     * listener's ctx, or what the code switching protocols (an upgrade) passes. */
    void *(*open)(struct conn *c, void *ctx);
    /* Decodes what is in c->in, dispatches, consumes. Returns 0, or negative
     * after having closed the connection. */
    int (*feed)(void *state, struct buf *in);
    void (*close)(void *state, const char *why); /* release state; no I/O */
    /* Optional: the protocol's last words when the connection closes (conn_close), before
     * the transport's (an MQTT 5 DISCONNECT with its reason code); not called after a
     * failed write. stopping: the gateway is shutting down. */
    void (*goodbye)(void *state, const char *why, bool stopping);
    /* Optional: bytes of per-connection state that open may take from the connection's own
     * allocation (conn_state_space) rather than a block of its own; 0: none. */
    size_t state_bytes;
    /* Optional: the last words of a connection that missed its auth deadline (the line
     * protocol: an error saying so), before the close that follows at once. */
    void (*auth_timeout)(struct conn *c);
    /* Optional, for protocols that carry commands to their device (line, ws-device): sends
     * one to the device an authenticated connection (c->device set) speaks for. */
    void (*send_command)(struct conn *c, const char *json, size_t len);
};

/* A transport between the socket and the protocol (WebSocket): it decodes
 * raw socket bytes, appending the protocol's bytes to c->in, and wraps what the
 * protocol sends. */
struct transport_ops {
    const char *name;                             /* "websocket" */
    /* Decodes raw (consuming it) and appends payload to in. Returns 0, or negative
     * after having closed the connection. */
    int (*feed)(void *state, struct buf *raw, struct buf *in);
    /* Wraps data (in a frame) and writes it with conn_send_raw. */
    void (*send)(void *state, const void *data, size_t len);
    void (*close)(void *state);                   /* release state; no I/O */
    /* Optional: last words before the socket closes (a WebSocket close frame when
     * none was sent yet: 1001 when the gateway is stopping, else 1000). */
    void (*goodbye)(void *state, bool stopping);
};

/* What a listener hands every connection it accepts (gateway/gw.c owns it; it lives
 * as long as the gw). */
struct conn_listener {
    const char *name;               /* "http", "line", "mqtt" */
    const struct proto_ops *proto;  /* protocol of the accepted connections */
    void *ctx;                      /* that protocol's server state (proto->open's ctx) */
    struct tls_server *tls;         /* TLS under the transport (gateway/tls.h), or NULL */
    const char *alpn;               /* the protocol ALPN selects on it ("mqtt"), or NULL */
    /* PROXY protocol versions its connections open with (gateway/proxy.h enum proxy_accept;
     * 0: none): only peers in limits.proxy_trusted may connect, and each must send a
     * header first, whose client address becomes the connection's peer */
    unsigned proxy;
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
    uint64_t since_us;   /* uv_hrtime() / 1000 when the wait began (ack latency) */
};

struct conn_waiters;     /* a connection's FIFO ring of durable waiters (conn.c) */

/* Whether a connection was refused and how that is logged (conn_refused). */
enum conn_refusal { CONN_REFUSAL_NONE, CONN_REFUSAL_LOGGED, CONN_REFUSAL_QUIET };

/* What a connection holds only when it uses it: TLS, a transport, a PROXY header being read,
 * a drain hook, durable waiters, pre-auth accounting, a close pending behind its
 * writes, an IPv6 peer's address. Allocated zeroed by the first conn_extra(c). */
struct conn_extra {
    /* TLS between the socket and the rest (gateway/tls.h), or NULL: reads are decrypted
     * before the transport or the protocol sees them, conn_send_raw encrypts */
    struct tls_conn *tls;
    const struct transport_ops *xport;   /* NULL: the protocol reads the socket directly */
    void *xport_state;
    /* socket bytes for the transport (when xport is set), as struct conn's in */
    struct buf raw;
    char *close_why;                 /* heap: why, once all queued bytes are written; then
                                      * why it closed, for the protocol's close */
    /* conn_when_drained: called once send_queued_bytes falls to drain_mark_bytes */
    void (*on_drained)(struct conn *c);
    struct conn_waiters *waiters;    /* NULL until the first conn_await_durable */
    /* a listener with the PROXY protocol: the header's bytes so far, until it is complete
     * (the protocol is not open yet: proto_state is NULL); NULL otherwise */
    struct buf *proxy_in;
    /* gateway/guard.c's pre-auth accounting (only it writes this and guard_counted) */
    size_t guard_held;               /* its bytes in the pre-auth budget */
    /* Memory the protocol and the transport hold for it beyond in and raw (a request or a
     * fragmented message being assembled): each sets its own after a feed; the pre-auth
     * budget counts them with in and raw (gateway/guard.h). */
    size_t proto_held;
    size_t xport_held;
    uint32_t drain_mark_bytes;       /* conn_when_drained's mark */
    uint32_t nwrites;                /* socket writes so far (the write fault seam counts) */
    uint8_t peer6[16];               /* the peer's address when it is IPv6 (peer_family 6) */
};

/* Thousands of these are held at once, mostly idle: fields that most connections never
 * use live in struct conn_extra, allocated on first use, and integers are as small as
 * their ranges allow (sizes are bounded by config limits far below 4 GiB). */
struct conn {
    /* public */
    uint64_t id;                     /* unique for the process lifetime, from 1 */
    struct gw *gw;
    const struct conn_listener *listener; /* accepted by it (an upgrade keeps it) */
    const struct proto_ops *proto;
    void *proto_state;
    /* Never NULL: read its fields through it (until conn_extra allocated them, it points to
     * a shared read-only copy, all zero), write them through conn_extra(c) only. */
    struct conn_extra *x;
    const char *device;              /* device id after auth, else "" (never NULL) */
    int64_t connected_ms;            /* epoch ms */
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
    uint32_t auth_timeout_ms;        /* 0 = none; cleared by conn_authenticated */
    uint32_t idle_timeout_ms;        /* 0 = none */
    /* 0: an ingest connection stops reading while storage pushes back. Else the protocol
     * defers ingest itself (MQTT: PUBLISH waits, pings and acks are answered) and reading
     * goes on while fewer than this many bytes wait in in + raw. */
    uint32_t ingest_hold_bytes;
    /* an ingest connection: the gateway holds its reads while storage pushes back. Line,
     * ws-device and HTTP ingest are from the start; MQTT once a publish wrote storage
     * (a pure subscriber never is). Whoever sets it later calls conn_update_reading. */
    bool ingest;
    bool closing;                    /* conn_close ran: nothing is fed to it or written by it */
    bool authenticated;              /* conn_authenticated ran: pre-auth caps no longer apply */
    /* read-only */
    /* the gateway holds this ingest connection (storage pushes back): its idle clock (and
     * a transport's pings) stand still, and start again from the release */
    bool held;
    size_t send_queued_bytes;        /* bytes handed to uv_write not yet written */
    /* Bytes for the protocol, not yet consumed (x->raw: socket bytes for the transport).
     * During a feed it may be the loop-wide read buffer, lent; between reads it holds only
     * the unconsumed tail of a partial frame, and no memory at all when drained. Consumers
     * keep offsets into it, never pointers. */
    struct buf in;
    uint64_t last_read_mono_ms;
    /* private */
    uv_tcp_t tcp;
    uint64_t due_ms;                 /* uv_now() of its auth or idle deadline */
    uint32_t due_slot;               /* its place in the registry's deadline heap + 1; 0: none */
    int refs;
    struct list_link reg_link;       /* in the registry's list of live connections */
    /* the socket's peer, or the client a PROXY protocol header named (as text: conn_peer):
     * its IPv4 address (network order) or, when IPv6, x->peer6; its port */
    uint32_t peer4;
    uint16_t peer_port;
    uint8_t peer_family;             /* 4, 6, or 0: unknown */
    /* the one-byte fields together, leaving no padding between the wider ones */
    bool reading;
    bool paused;                     /* by backpressure or by the protocol */
    bool close_after_write;
    bool last_words;                 /* conn_close writes its goodbye: writes still go out */
    bool write_failed;               /* a socket write failed: nothing more is written */
    uint8_t refusal;                 /* enum conn_refusal, set by conn_refused */
    bool guard_counted;              /* gateway/guard.c: counted against its peer address */
    bool state_space_taken;          /* conn_state_space handed out the space after c */
};

/* The fields of c that most connections never use, allocated (zeroed) by the first call;
 * for writing them (c->x reads them). */
struct conn_extra *conn_extra(struct conn *c);
/* Longest text of a peer address, NUL included: "[" IPv6 "]:" port. */
#define CONN_PEER_MAX (INET6_ADDRSTRLEN + 8)
/* c's peer as text, "127.0.0.1:51512" or "[::1]:51512" ("unknown" when it has none), in
 * a thread-local buffer: valid until the CONN_PEER_SLOTS-th next call on the same thread
 * (use it inside one statement). */
#define CONN_PEER_SLOTS 4
const char *conn_peer(const struct conn *c);

/* Accepts a pending connection on server into gw->conns and opens l->proto on it
 * with l->ctx; returns NULL (and logs) when the limit is reached or accept fails.
 * Starts reading. l is borrowed for the connection's lifetime. On a listener with the
 * PROXY protocol (l->proxy), a peer outside limits.proxy_trusted is refused here, and
 * the protocol (TLS included) opens only once the header has been read, within
 * limits.proxy_header_timeout_ms: the pre-auth count against an address and everything
 * after it see the client's address. */
struct conn *conn_accept(struct gw *gw, uv_stream_t *server, const struct conn_listener *l);
/* The state_bytes of the listener's protocol, allocated zeroed right after c (aligned as
 * c is: for pointers and 64-bit integers), handed out once, for n bytes at most: NULL when there is none (another
 * protocol, already taken, too small), and the caller allocates its state itself. A
 * protocol's close does not free it: it goes with c, after that close. */
void *conn_state_space(struct conn *c, size_t n);
/* Swaps the protocol (state of the old one is released by the caller). From then on the
 * new state is the one released when c closes. */
void conn_set_proto(struct conn *c, const struct proto_ops *proto, void *state);
/* Puts a transport under the protocol; bytes already in c->in become raw input, in memory
 * of the connection's own. */
void conn_set_transport(struct conn *c, const struct transport_ops *t, void *state);
/* Sends protocol bytes: through the transport when there is one. Dropped when c is closing;
 * a failed write closes c (its state stays until the close callback). */
void conn_send(struct conn *c, const void *data, size_t len);
/* Copies data for the socket (on a TLS connection, encrypted first). What c is sent while
 * one callback runs is written with one write() when it returns (at the latest before
 * the loop waits for I/O again): uv_try_write first, the rest queued. */
void conn_send_raw(struct conn *c, const void *data, size_t len);
/* Arms fn to run (from a write's completion, never after c closed) once the bytes queued
 * for c's socket are at most mark_bytes: a producer of a long reply waits on it instead of
 * queueing past the send budget. Returns false, arming nothing, when they already are. One
 * watcher per connection: a call replaces the armed one; fn NULL disarms. It fires once. */
bool conn_when_drained(struct conn *c, size_t mark_bytes, void (*fn)(struct conn *c));
/* Closes once all queued bytes are written. */
void conn_close_after_write(struct conn *c, const char *why);
void conn_close(struct conn *c, const char *why);
/* Counts the refusal of c (a failed login, a refused CONNECT) against its peer address
 * (log_refusal). Returns true when the caller is to log it; false when it is summarised,
 * and then c's close is not logged either. Only the first call for a connection counts;
 * later ones return its answer. */
bool conn_refused(struct conn *c, const char *why);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* Marks the connection as authenticated by device (NULL or "": none; copied), stops the
 * auth deadline (the idle deadline applies from now on) and ends its pre-auth budgets
 * (gateway/guard.h). Only a check of credentials calls it (a device session, an MQTT
 * CONNECT accepted, an HTTP request with an API key or device token). */
void conn_authenticated(struct conn *c, const char *device);
/* Pauses / resumes reading on behalf of the protocol (e.g. HTTP waiting on a reply). */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
/* Feeds buffered input to the protocol again (after conn_resume / a reply). */
void conn_refeed(struct conn *c);
/* Queues a waiter behind the connection's earlier ones (acks keep arrival order). */
void conn_await_durable(struct conn *c, const struct ticket *t, bool failed, uint64_t tag,
                        conn_durable_fn fn);
/* Whether durable waiters of c have yet to fire. */
bool conn_has_waiters(const struct conn *c);

/* Starts or stops reading c as its state asks (closing, paused by its protocol, an
 * ingest connection while storage pushes back, up to its ingest_hold_bytes) and updates
 * held; releasing a held connection restarts its idle clock. */
void conn_update_reading(struct conn *c);

/* ---- the registry of live connections ------------------------------------------
 * A connection is in its gw's registry from conn_accept until conn_close. Walk it
 * only with an iterator: an iterator stays valid while the code it hands connections
 * to closes any of them (the current one, the next one, all of them), since a close
 * moves every iterator standing on the closed connection to the one after it.
 * Connections accepted during a walk are not visited. Newest first. */
struct conn_iter {
    /* private */
    struct conn_registry *r;
    int slot;                        /* the registry's record of this walk; -1: ended */
};

struct conn_registry *conn_registry_new(void);
/* The registry must be empty (conn_registry_close_all) and no walk running. Its deadline
 * timer, a handle of the connections' loop created with the first deadline, is closed
 * with the loop's other handles (uv_walk) before this. */
void conn_registry_free(struct conn_registry *r);
/* Live connections (not yet closed). */
size_t conn_registry_count(const struct conn_registry *r);
/* Closes every connection (shutdown). */
void conn_registry_close_all(struct conn_registry *r, const char *why);
/* Connections closed whose close callback has not run yet (their protocol state is still
 * to be released): shutdown runs the loop until none is left. */
size_t conn_registry_closing(const struct conn_registry *r);
/* on: what connections are sent is written at once rather than staged until the callback
 * returns, until called again with off; for a producer that batches its writes itself and
 * paces itself by the time they take (the live feed's pass). */
void conn_registry_write_direct(struct conn_registry *r, bool on);
/* Test seam (GALE_TEST_FAIL_WRITES): makes socket writes fail as a reset peer's do
 * (EPIPE, ECONNRESET), every connection's nth write (nth > 0) and/or each write with
 * probability p (0..1, a generator seeded with seed). 0 and 0.0 turn it off. */
void conn_registry_fail_writes(struct conn_registry *r, uint32_t nth, double p, uint64_t seed);
/* Parses the seam's setting: "N" (the nth write) or "p=P[,seed=S]". Returns 0, or -1 when
 * spec is not one of those. */
int conn_fail_writes_parse(const char *spec, uint32_t *nth, double *p, uint64_t *seed);
/* Storage reported the writes with seqs in (from_seq, upto_seq] committed (ok = 1) or
 * failed (ok = 0): waiters whose tickets overlap a failed range fail, and every waiter
 * whose ticket ends by upto_seq fires, connection by connection in arrival order. */
void conn_registry_durable(struct conn_registry *r, uint64_t from_seq, uint64_t upto_seq,
                           int ok);

/* Starts a walk over r. conn_iter_next returns each live connection once, then NULL
 * (which ends the walk); a loop left early must call conn_iter_end (which may be called
 * again, and after the end). Walks may nest, up to 8 deep. */
void conn_iter_begin(struct conn_iter *it, struct conn_registry *r);
/* A walk over the connections closed whose close callback has not run yet (no longer in
 * the registry's live list, their counters final), as conn_iter_begin's. */
void conn_iter_begin_closing(struct conn_iter *it, struct conn_registry *r);
struct conn *conn_iter_next(struct conn_iter *it);
void conn_iter_end(struct conn_iter *it);

#endif
