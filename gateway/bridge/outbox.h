/* gateway/bridge/outbox.h: the bridge's persistence port (DESIGN.md "Code layers"): the
 * outbox of messages bound upstream, one ordered list per upstream. main.c wires the
 * storage implementation (store_put_outbox, ...) into it; unit tests use an in-memory
 * one. Plain types only: no sqlite3.h, no uv.h. */
#ifndef GALE_BRIDGE_OUTBOX_H
#define GALE_BRIDGE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

/* One message bound upstream. Strings and payload are borrowed for the call. */
struct outbox_msg {
    uint64_t id;            /* per upstream, strictly increasing (bridge assigns: max stored id + 1) */
    const char *device;     /* originating device id, "" when none (order is kept per device) */
    const char *topic;      /* the remote topic, exactly as sent upstream */
    const void *payload;
    size_t payload_len;
    uint8_t qos;            /* 0, 1 or 2 upstream */
    int64_t ts_ms;          /* when it entered the outbox (epoch ms): max_age_s counts from it */
};
/* Loop thread. rc 0 or a GW_E* code; msgs (ascending id) valid during the call only. */
typedef void (*outbox_read_fn)(void *ctx, int rc, const struct outbox_msg *msgs, size_t n);
/* Start-up: every stored message of an upstream, ascending id, payload NOT included
 * (payload NULL, payload_len = its stored length): to rebuild the bridge's index. */
typedef void (*outbox_index_fn)(void *ctx, const struct outbox_msg *m);

struct outbox_port {
    void *ctx;
    /* Loop thread, never blocks; returns the write's seq (ticket_add it) like every store_* write:
     * the row commits in the same group commit as the telemetry of the same loop callback. */
    uint64_t (*put)(void *ctx, const char *upstream, const struct outbox_msg *m);
    /* Loop thread, never blocks: deletes the upstream's messages with first_id <= id <= last_id. */
    uint64_t (*del)(void *ctx, const char *upstream, uint64_t first_id, uint64_t last_id);
    /* Start-up only (blocks): calls fn for every stored message of upstream (no payloads). */
    int (*load_index)(void *ctx, const char *upstream, outbox_index_fn fn, void *fctx);
    /* libuv work pool, read-only connection: up to max_msgs messages (and about max_bytes of
     * payload, at least one message) of upstream with id > after_id, ascending, committed ones
     * only; fn runs on the loop thread. Returns 0 or a GW_E* code (fn is then not called). */
    int (*read)(void *ctx, const char *upstream, uint64_t after_id, size_t max_msgs,
                size_t max_bytes, outbox_read_fn fn, void *fctx);
};

#endif
