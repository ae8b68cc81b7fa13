/* gateway/ingest.h: what every transport does with a device: authenticate it,
 * mark it online/offline, turn its telemetry JSON into one message on the bus,
 * and tell the caller which store seq makes it durable. Also installs the bus
 * sinks that every message passes: latest values (hot state) and storage.
 * Loop thread only. */
#ifndef GALE_INGEST_H
#define GALE_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/ticket.h"

struct gw;
struct conn;
struct device;

/* Adds the latest-values and storage sinks to gw->bus. */
void ingest_init(struct gw *gw);

/* Checks device id and token; counts and logs failures with the peer.
 * Returns the device or NULL. */
struct device *ingest_auth(struct gw *gw, struct conn *c, const char *device, size_t dlen,
                           const char *token, size_t tlen);
/* Presence: the connection c now speaks for dev over proto / has gone. */
void ingest_online(struct gw *gw, struct conn *c, struct device *dev, const char *proto);
void ingest_offline(struct gw *gw, struct conn *c);

struct ingest_result {
    struct ticket ticket; /* the writes the message caused: await it for durability */
    bool has_seq;        /* the payload carried "seq" */
    int64_t seq;         /* its value */
    size_t npoints;
};

/* Appends {"error":why,"code":code[,"seq":seq]} (the device protocols' error object). */
struct buf;
void ingest_write_error(struct buf *out, const char *code, const char *why, bool has_seq,
                        int64_t seq);

/* Decodes telemetry JSON of dev into a message (refs = 1, the caller's) without
 * publishing it; counts its points and marks dev seen. NULL with a static reason
 * and machine code when the payload is not telemetry. */
struct msg *ingest_decode(struct gw *gw, struct device *dev, const char *topic, const void *json,
                          size_t len, struct ingest_result *res, const char **why,
                          const char **code);
/* Decodes telemetry JSON of dev and publishes it. Returns 0, or -1 with a static
 * reason and machine code (the connection stays usable). */
int ingest_telemetry(struct gw *gw, struct device *dev, const char *topic, const void *json,
                     size_t len, struct ingest_result *res, const char **why,
                     const char **code);

#endif
