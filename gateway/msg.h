/* gateway/msg.h: the message every transport produces and every sink reads.
 * One allocation holds the struct, its strings, the raw payload and the decoded
 * telemetry points. Immutable once published; shared by reference between the
 * loop thread and the storage writer thread. */
#ifndef GALE_MSG_H
#define GALE_MSG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

enum val_type { VAL_NUM = 0, VAL_BOOL = 1, VAL_STR = 2, VAL_JSON = 3 };

/* One decoded telemetry value. */
struct point {
    int64_t ts_ms;      /* device time, or arrival time when absent */
    const char *key;    /* NUL-terminated, 1..128 bytes */
    enum val_type type; /* how to read the value */
    double num;         /* VAL_NUM: the number; VAL_BOOL: 0 or 1 */
    const char *str;    /* VAL_STR: the string; VAL_JSON: compact JSON text; NUL-terminated */
    size_t str_len;     /* bytes in str */
};

enum msg_kind {
    MSG_TELEMETRY = 0,  /* decoded points, stored */
    MSG_ATTRIBUTES = 1, /* device attributes (payload JSON object) */
    MSG_PLAIN = 2,      /* any other topic: routed, not stored as telemetry */
};

struct msg {
    atomic_uint refs;         /* released on the loop and on the writer thread */
    enum msg_kind kind;
    int64_t ts_ms;            /* arrival time, epoch ms */
    uint64_t seq;             /* set by bus_publish: global, increasing */
    uint8_t qos;              /* MQTT QoS it was published with (0 for non-MQTT) */
    uint8_t retain;           /* MQTT retain flag */
    const char *device;       /* points into data[]; "" when not from a device */
    const char *topic;        /* points into data[] */
    const uint8_t *payload;   /* points into data[] */
    size_t payload_len;
    /* MQTT 5.0 properties that travel with the message (payload format, content type,
     * response topic, correlation data, user properties: property bytes as on the wire,
     * Message Expiry excluded), a separate allocation owned by the message; NULL when
     * none. Set once, before the message is published. */
    uint8_t *props;
    uint32_t props_len;
    int64_t expiry_ms;        /* epoch ms after which it is not delivered; 0 = never */
    size_t npoints;           /* decoded telemetry values */
    struct point *points;     /* points into data[] */
    char data[];              /* one allocation holds every string */
};

static inline struct msg *msg_ref(struct msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

static inline void msg_unref(struct msg *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        free(m->props);
        free(m);
    }
}

/* Builds a message with refs = 1 (the caller's). points may be NULL when npoints is 0;
 * their key/str are copied. device/topic may be NULL (stored as ""). */
/* Gives m (not yet published) a copy of the property bytes p[0..len) (len 0: none). */
void msg_set_props(struct msg *m, const void *p, size_t len);

struct msg *msg_new(enum msg_kind kind, const char *device, const char *topic,
                    const void *payload, size_t payload_len, const struct point *points,
                    size_t npoints);

#endif
