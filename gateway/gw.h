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

struct bus;
struct store;
struct devices;
struct feed;

struct gw_listener {
    uv_tcp_t tcp;
    const char *name;               /* "http", "line", "mqtt" */
    const struct proto_ops *proto;
    int port;                       /* bound port (resolved when 0 was asked) */
    bool open;
};

struct gw {
    /* public */
    uv_loop_t *loop;
    const struct config *cfg;
    struct bus *bus;
    struct store *store;
    struct devices *devices;
    struct metrics metrics;
    char api_key[CONFIG_STR_MAX];    /* REST and live feed key */
    unsigned char token_secret[32];  /* HMAC key for device tokens */
    int64_t started_ms;
    void *mqtt;                      /* MQTT broker state (protocols/mqtt), or NULL */
    void *rest;                      /* REST state (web/rest.c) */
    void *http;                      /* struct http_server for the HTTP listener */
    void *feed;                      /* live feed hub (web/feed.c), or NULL */
    void *commands;                  /* command tracking (web/commands.c) */
    /* a device went online (first connection) or offline (last one closed) */
    void (*on_presence)(struct gw *gw, const char *device, bool online);
    /* a device answered a command (any transport: gateway/session.c calls it) */
    void (*on_command_reply)(struct gw *gw, const char *device, const char *cmd_id,
                             const void *payload, size_t len);
    /* read-only */
    struct gw_listener listeners[8];
    int nlisteners;
    size_t nconns;                   /* live connections */
    bool ingest_paused;
    uint64_t durable_seq;            /* storage reported every write up to here */
    struct ticket failed[16];        /* the last failed write ranges (a ring) */
    unsigned nfailed;                /* failed ranges reported so far */
    bool started;                    /* gw_start ran: signal handlers exist */
    bool stopping;
    /* private */
    struct conn *conns;              /* registry list head */
    struct conn *waiting;            /* connections with durable waiters */
    uint64_t next_conn_id;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain;                /* shutdown: waits for storage to catch up */
    uint64_t stop_deadline_ms;       /* uv_now() limit for that wait */
};

/* Binds a listener; port 0 picks a free one. Logs "listening protocol=<p> port=<n>". */
int gw_listen(struct gw *gw, const char *name, const char *bind, int port,
              const struct proto_ops *proto);
/* Installs SIGINT/SIGTERM handlers that call gw_stop. */
int gw_start(struct gw *gw);
/* Stops accepting, closes connections; the loop then exits once storage drained. */
void gw_stop(struct gw *gw, const char *why);
/* Closes the gw's own handles (listeners, signals, timers). */
void gw_close_handles(struct gw *gw);

/* Constant-time check of an API key (REST, live feed). NULL is refused. */
bool gw_api_key_ok(const struct gw *gw, const char *key);

/* Calls fn(c, tag, ok) once every write of ticket t is durable (t may be NULL or empty:
 * nothing to wait for but the connection's earlier waiters); at once when nothing is
 * pending. ok = 0 when any write of t failed. */
void gw_await_durable(struct conn *c, const struct ticket *t, uint64_t tag, conn_durable_fn fn);

/* Storage callbacks (main wires them). */
void gw_on_durable(void *ctx, uint64_t upto_seq, int ok);
void gw_on_pressure(void *ctx, int paused);

#endif
