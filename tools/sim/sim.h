/* tools/sim/sim.h: gale-sim, a fleet of simulated devices on one libuv loop.
 *
 * Modules (prefix = first word of every non-static name):
 *   main.c       options, the run (start, progress line, stop), exit status
 *   net.c        snet_   a TCP connection: connect, write a buffer, read into a buffer
 *   telemetry.c  tele_   one device's readings: drifts, counters, flags, states, gaps
 *   device.c     dev_    a device's life: connect slots, send ticks, reconnects, commands
 *   mqtt.c       smqtt_  the MQTT device (3.1.1 or 5) on Gale's own MQTT encoders
 *   jsonline.c   sline_  the line protocol and /ws/device (same JSON messages)
 *   http.c       shttp_  the HTTP ingest devices (keep-alive connections they share)
 *   httpmsg.c    shttp_  HTTP/1.1 requests built and responses parsed (pure)
 *   provision.c  prov_   devices created (or their token renewed) over the REST API, and
 *                        the wait for Gale's readiness (--wait)
 *
 * One thread: everything here runs on the loop. */
#ifndef GALE_SIM_H
#define GALE_SIM_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"

enum proto { P_MQTT, P_LINE, P_WS, P_HTTP, P_COUNT };
extern const char *const proto_name[P_COUNT];

/* ---- net.c: one TCP connection with an input buffer */
struct snet;
typedef void (*snet_connect_cb)(struct snet *n, int status);
typedef void (*snet_read_cb)(struct snet *n);  /* new bytes are in n->in */
typedef void (*snet_close_cb)(struct snet *n); /* the handle is closed; n may be freed */

struct snet {
    uv_tcp_t tcp;
    uv_connect_t creq;
    struct buf in;
    void *owner;
    snet_connect_cb on_connect;
    snet_read_cb on_read;
    snet_close_cb on_close;
    int read_error;   /* the libuv error that ended reading (UV_EOF on hang-up) */
    bool inited;      /* tcp initialised: on_close will be called once closed */
    bool open;        /* tcp initialised and not yet closing */
    bool connected;
};

/* Starts connecting n (owner and callbacks set by the caller). 0 or a libuv error;
 * after an error on_close still comes when n->inited. */
int snet_connect(struct snet *n, uv_loop_t *loop, const struct sockaddr *addr);
/* Queues b's bytes for writing (copied) and empties b. Nothing happens when closed. */
void snet_write(struct snet *n, struct buf *b);
/* Closes (idempotent); on_close runs from libuv's close callback. */
void snet_close(struct snet *n);

/* ---- telemetry.c: what one device measures */
struct tele {
    uint64_t rng;        /* xorshift state */
    double temp, temp_base, hum, hum_base;
    double phase;        /* of the slow daily swing */
    uint64_t pulses;     /* monotonic counter */
    bool door;
    int state;           /* index into tele_states */
    int64_t last_ts;     /* ms: the last regular point's time (strictly increasing) */
};
void tele_init(struct tele *t, uint64_t seed);
uint64_t tele_rand(uint64_t *rng);
double tele_uniform(uint64_t *rng); /* [0, 1) */
/* Appends one message's JSON object (no seq) for time now_ms to out: usually every key
 * at a fresh time; with probability late_p a single late point (a time in the past).
 * Returns the number of values written. */
int tele_message(struct tele *t, int64_t now_ms, double late_p, struct buf *out);

/* ---- the run's options and counters (main.c) */
struct sim_opts {
    const char *host;
    int mqtt_port, line_port, http_port;
    int devices;
    double rate;          /* messages per second per device */
    int qos;              /* 0 or 1 */
    int mqtt_version;     /* 4 (3.1.1) or 5 */
    enum proto protocol;  /* or -1 for mix */
    bool mix;
    const char *prefix;   /* device ids are prefix + number */
    const char *key;      /* API key: provision the devices when set */
    const char *key_file; /* ... or the file to read it from */
    double duration_s;    /* 0 = until a signal */
    long count;           /* messages per device; 0 = no limit */
    double drain_s;       /* at the stop, how long to wait for acks */
    double wait_s;        /* --wait: how long to wait for Gale to be ready; 0 = not */
    double gap_p, late_p; /* per send: skip it / send a late point */
    uint64_t seed;
    int connect_parallel; /* connections being set up at once */
    int provision_parallel;
    int http_connections; /* shared by the HTTP devices */
    int window;           /* unacknowledged messages per device before a send is skipped */
    bool quiet;
};

struct sim_stats {
    uint64_t sent, acked, errors, skipped, gaps, late, cmds, reconnects;
    long connected;       /* devices connected now */
    long connecting;      /* connections being set up now */
};

struct dev;
struct sim {
    uv_loop_t *loop;
    struct sim_opts o;
    struct sim_stats st;
    struct sockaddr_storage addr[P_COUNT]; /* where each protocol connects */
    struct sockaddr_storage http_addr;
    char http_host[300];  /* the Host header: host:port, [v6]:port */
    struct dev *devs;
    struct dev **waitq;   /* devices waiting for a connect slot (a ring) */
    size_t waitq_head, waitq_len;
    bool stopping;        /* no more sends; waiting for acks */
    int fatal;            /* exit status set by a fatal error */
    bool ever_connected;
    char *key_buf;        /* the key read from opts.key_file (owned) */
    uint64_t start_ms;
};

/* ---- device.c */
enum dev_state { D_IDLE, D_WAITING, D_CONNECTING, D_READY, D_DONE };

struct dev {
    struct sim *sim;
    int idx;
    enum proto proto;
    enum dev_state state;
    char id[65];
    char token[160];      /* empty: connect without one */
    struct snet *net;     /* the live connection, NULL when none */
    void *pstate;         /* the protocol's per-connection state */
    uv_timer_t timer;     /* the send tick */
    struct tele tele;
    long sent_n;          /* messages sent (for --count) */
    unsigned unacked;
    uint64_t seq;         /* line/ws "seq" */
    uint16_t next_pid;    /* MQTT packet ids */
    uint64_t retry_at;    /* ms: no reconnect before */
    unsigned backoff_ms;
    bool started;         /* dev_start ran: the timer exists */
    bool timer_on;
    bool done;            /* the run is over for it */
};

/* Milliseconds since an arbitrary origin (monotonic) and since the epoch. */
uint64_t sim_now_ms(void);
int64_t sim_epoch_ms(void);

void dev_start(struct dev *d);            /* jittered first tick */
void dev_stop(struct dev *d);             /* stops ticking; keeps the connection for acks */
void dev_ready(struct dev *d);            /* the protocol authenticated */
void dev_lost(struct dev *d, const char *why, bool error); /* the connection ended */
void dev_acked(struct dev *d, unsigned n);
void dev_error(struct dev *d, const char *what);
void dev_close_all(struct dev *d);        /* for the end of the run */
/* Builds the reply to a command; returns the result string. */
const char *dev_command_result(const char *name);

/* ---- the protocols: each connects d (d->net set up by device.c), sends one message,
 * and frees its state when the connection has ended. */
struct proto_ops {
    void (*start)(struct dev *d);       /* d->net just connected: authenticate */
    void (*read)(struct dev *d);        /* bytes arrived in d->net->in */
    int (*send)(struct dev *d, const struct buf *msg); /* one telemetry object; 0 sent */
    void (*finish)(struct dev *d);      /* say goodbye (DISCONNECT...) before a close */
    void (*free)(struct dev *d);        /* the connection ended */
};
extern const struct proto_ops smqtt_ops, sline_ops, sws_ops, shttp_dev_ops;

/* ---- httpmsg.c: HTTP/1.1 messages (pure) */
struct shttp_resp {
    int status;           /* 0 when the request failed (no reply) */
    const char *body;     /* a view into the parsed bytes (not NUL-terminated) */
    size_t body_len;
};
/* Parses one response from in (status line, Content-Length). Returns the bytes it
 * spans (> 0), 0 when incomplete, -1 when malformed. */
long shttp_parse(const uint8_t *p, size_t len, struct shttp_resp *out);
/* Appends a request to out. auth may be NULL; body may be NULL. */
void shttp_request(struct buf *out, const char *method, const char *path, const char *host,
                   const char *auth, const char *body, size_t body_len);

/* The HTTP devices' connections (n of them, shared; see http.c). */
void shttp_pool_init(struct sim *s, int n);
void shttp_pool_close(void);
void shttp_pool_free(void);

/* ---- provision.c: gives every device a token over REST, then calls done(sim, rc). */
void prov_run(struct sim *s, void (*done)(struct sim *s, int rc));
/* --wait: GET /api/ready every 0.5 s until it answers 200 (done(s, 0)) or opts.wait_s
 * has passed (done(s, 1), logged). */
void prov_wait_ready(struct sim *s, void (*done)(struct sim *s, int rc));

/* A log line on stderr (prefixed "gale-sim: "). */
void sim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
