/* gateway/gw.h: the gateway context that main builds and passes down, and the
 * event loop's lifecycle: listeners, signals, limits, start and orderly stop.
 * Loop thread only. */
#ifndef GALE_GW_H
#define GALE_GW_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/conn.h"
#include "gateway/metrics.h"
#include "gateway/proxy.h"

struct bus;
struct devices;
struct fleet;
struct guard;
struct keys;

/* What the loop needs to know of storage, filled by main (gateway/ never includes
 * storage/). Both functions are called on the loop thread; a NULL ctx means there is
 * no storage (start-up failed): nothing is pending, nothing queued. */
/* What storage holds and has done, for /metrics (plain numbers). */
struct gw_storage_stats {
    uint64_t hot_points;             /* acked, not yet in the queryable form */
    uint64_t hot_bytes;
    uint64_t log_points;             /* what a restart replays, at most */
    uint64_t slices, points_chunked, chunks_written;
    double slice_seconds_total, slice_seconds_max;
    struct hist commit_latency;      /* writer time per committed batch */
    uint64_t wal_bytes;              /* size of the write-ahead log file */
    uint64_t wal_checkpoints, wal_frames_copied, wal_checkpoint_busy;
};

struct gw_storage {
    void *ctx;
    bool (*pending)(void *ctx);      /* writes accepted but not yet reported durable */
    size_t (*queued)(void *ctx);     /* what waits for the writer (for logs, metrics) */
    void (*flush)(void *ctx);        /* an ack waits on the writes so far: no delay */
    void (*stats)(void *ctx, struct gw_storage_stats *out); /* may be NULL */
};

/* A listener to bind (gw_listen). */
struct gw_listen_cfg {
    const char *name;               /* "http", "line", "mqtt"; must outlive the gw */
    const char *bind;               /* an IPv4 or IPv6 address */
    int port;                       /* 0: pick a free one */
    const struct proto_ops *proto;  /* protocol of its connections */
    void *ctx;                      /* the protocol's server state (proto->open's ctx) */
    struct tls_server *tls;         /* TLS under every connection (gateway/tls.h), or NULL */
    const char *alpn;               /* protocol ALPN selects ("mqtt"; static), or NULL */
    unsigned proxy;                 /* PROXY protocol versions (enum proxy_accept), 0: off */
};

struct gw_listener {
    struct conn_listener conn;      /* what each accepted connection carries */
    uv_tcp_t tcp;
    const char *bind;               /* the address it is bound to (the config's text) */
    int port;                       /* bound port (resolved when 0 was asked) */
    bool open;
};

struct gw {
    /* public */
    uv_loop_t *loop;
    const struct config *cfg;
    struct bus *bus;
    struct devices *devices;
    struct gw_storage storage;
    struct metrics metrics;
    char api_key[CONFIG_STR_MAX];    /* the configured key: API key "bootstrap" (web/keys.h) */
    struct keys *keys;               /* the API keys (web/keys.h, set by main); NULL: none */
    unsigned char token_secret[32];  /* HMAC key for device tokens */
    struct proxy_trust proxy_trust;  /* limits.proxy_trusted, parsed (main fills it) */
    struct fleet *fleet;             /* auth.fleet_keys (gateway/fleet.h); NULL: none */
    int64_t started_ms;
    /* a device went online (first connection) or offline (last one closed) */
    void (*on_presence)(struct gw *gw, const char *device, bool online);
    /* a device answered a command (any transport: gateway/session.c calls it) */
    void (*on_command_reply)(struct gw *gw, const char *device, const char *cmd_id,
                             const void *payload, size_t len);
    void *hook_ctx;                  /* main's state for the two hooks above */
    /* storage reported the writes (from_seq, upto_seq] committed (ok = 1) or failed
     * (ok = 0), before any waiter fires: the MQTT broker remembers, per session, the
     * QoS 2 ids whose first copy failed (NULL: none) */
    void (*on_settled)(void *ctx, uint64_t from_seq, uint64_t upto_seq, int ok);
    void *settled_ctx;
    struct conn_registry *conns;     /* live connections (conn.h) */
    struct guard *guard;             /* pre-auth budgets, device rates (guard.h); NULL: none */
    /* read-only */
    struct gw_listener listeners[8];
    int nlisteners;
    bool ingest_paused;
    bool storage_full;               /* the disk is full: writes fail (gw_on_storage_full) */
    bool ready;                      /* storage loaded and every listener up (main sets it):
                                      * GET /api/ready answers 200 */
    uint64_t durable_seq;            /* storage reported every write up to here */
    struct ticket failed[16];        /* the last failed write ranges (a ring) */
    unsigned nfailed;                /* failed ranges reported so far */
    bool started;                    /* gw_start ran: signal handlers exist */
    bool stopping;
    /* private */
    uv_signal_t sigint, sigterm;
    uv_timer_t drain;                /* shutdown: waits for storage to catch up */
    uint64_t stop_deadline_ms;       /* uv_now() limit for that wait */
};

/* Parses a listener's bind address (IPv6 when it holds a ':', else IPv4) with port into
 * out. Returns 0 or a libuv error; no I/O, so configuration checks call it before start. */
int gw_parse_addr(const char *bind, int port, struct sockaddr_storage *out);
/* Binds a listener and listens: the kernel queues connections from here on, and the
 * loop accepts them once it runs; they get &listener->conn (name, proto, ctx), so the
 * ctx may be filled in (gw_listener_set_ctx) until then. Start-up binds first, before
 * anything is created on disk. Returns 0, GW_ELIMIT past 8 listeners, or a libuv
 * error (logged). */
int gw_listen(struct gw *gw, const struct gw_listen_cfg *l);
/* Gives every listener of protocol proto its server state (proto->open's ctx). */
void gw_listener_set_ctx(struct gw *gw, const struct proto_ops *proto, void *ctx);
/* Logs "listening protocol=<name> port=<n> bind=<addr>" for each listener (the line
 * tests and operators read the ports from), once the loop is about to accept. */
void gw_log_listening(const struct gw *gw);
/* The bound port of the listener named name, or -1 when there is none. */
int gw_listener_port(const struct gw *gw, const char *name);
/* Installs SIGINT/SIGTERM handlers that call gw_stop. */
int gw_start(struct gw *gw);
/* Stops accepting, closes connections; the loop then exits once storage drained. */
void gw_stop(struct gw *gw, const char *why);
/* Closes the gw's own handles (listeners, signals, timers). */
void gw_close_handles(struct gw *gw);

/* Calls fn(c, tag, ok) once every write of ticket t is durable (t may be NULL or empty:
 * nothing to wait for but the connection's earlier waiters); at once when nothing is
 * pending. ok = 0 when any write of t failed. */
void gw_await_durable(struct conn *c, const struct ticket *t, uint64_t tag, conn_durable_fn fn);

/* Storage callbacks (main wires them; ctx is the gw). Every write up to upto_seq was
 * committed (ok = 1) or failed (ok = 0): gw_on_durable settles the latest values waiting
 * for those writes (devices_durable, when gw->devices is set), then fires the waiters.
 * The writer's queue crossed its high (paused = 1) or low water mark: ingest connections
 * are held (conn_update_reading) or released, and input a released connection's protocol
 * deferred is fed. */
void gw_on_durable(void *ctx, uint64_t upto_seq, int ok);
void gw_on_pressure(void *ctx, int paused);
/* Storage found the disk full (full = 1: every write fails until it is not) or writes fit
 * again (full = 0); in order with gw_on_durable, so a failure reported while
 * gw->storage_full is set failed for want of space: the protocols say so (line and
 * /ws/device "storage_full", HTTP 507). Storage logs the change. */
void gw_on_storage_full(void *ctx, int full);

/* What waits for the storage writer (gw->storage.queued); 0 when no storage is wired. */
size_t gw_storage_queued(const struct gw *gw);

#endif
