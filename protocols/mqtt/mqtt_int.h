/* protocols/mqtt/mqtt_int.h: shared only inside protocols/mqtt/ and its unit tests.
 * Wire-level helpers (remaining-length varint) and router introspection that tests
 * use to check pruning. Nothing here is part of the API other modules call. */
#ifndef GALE_MQTT_INT_H
#define GALE_MQTT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "protocols/mqtt/mqtt.h"

/* Fixed header: type in the high nibble, flags in the low nibble. */
#define MQTT_HDR(type, flags) ((uint8_t)(((type) << 4) | (flags)))
/* Flags PUBREL, SUBSCRIBE and UNSUBSCRIBE must carry [MQTT-3.6.1-1] [MQTT-3.8.1-1]
 * [MQTT-3.10.1-1]; every other type except PUBLISH carries 0 [MQTT-2.2.2-1]. */
#define MQTT_FLAGS_RESERVED_0010 0x2
/* PUBLISH flag bits. */
#define MQTT_PUBLISH_DUP 0x08
#define MQTT_PUBLISH_QOS_SHIFT 1
#define MQTT_PUBLISH_RETAIN 0x01
/* CONNECT flag bits (3.1.1 §3.1.2.3). */
#define MQTT_CF_RESERVED 0x01
#define MQTT_CF_CLEAN 0x02
#define MQTT_CF_WILL 0x04
#define MQTT_CF_WILL_QOS_SHIFT 3
#define MQTT_CF_WILL_QOS_MASK 0x18
#define MQTT_CF_WILL_RETAIN 0x20
#define MQTT_CF_PASSWORD 0x40
#define MQTT_CF_USERNAME 0x80

/* Bytes a remaining length takes as a varint (1..4); rem <= MQTT_MAX_REMAINING. */
size_t mqtt_varint_size(uint32_t rem);
/* Writes rem as a minimal varint to out (room for 4 bytes); returns bytes written. */
size_t mqtt_varint_put(uint8_t *out, uint32_t rem);

/* Router introspection for tests: trie nodes alive (the root not counted) and
 * subscribers that hold at least one subscription. */
size_t mqtt_router_node_count(const struct mqtt_router *r);
size_t mqtt_router_subscriber_count(const struct mqtt_router *r);

#endif
