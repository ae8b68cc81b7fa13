/* tests/fuzz/fuzz_mqtt_conn.c: the MQTT connection state machine and broker
 * (protocols/mqtt/handle.c, broker.c, retained.c, the device session behind them),
 * driven from real loopback sockets as the gateway runs them.
 *
 * Each input builds a fresh world (tests/fuzz/conn_world.h): a libuv loop, a gw with an
 * MQTT listener on 127.0.0.1:0, the device registry (dev1/tok1 a device, app1/tok2 an
 * application, open1 a device without a token), the bus and the broker. Storage is a fake
 * that hands out write seqs and reports them durable (or failed) only when the input says
 * so, so acks wait, fire and fail as they do in the gateway.
 *
 * Input: byte 0 picks the configuration:
 *   bit 0: mqtt.allow_anonymous          bit 1: small limits (inflight 2, queued 4,
 *   bit 2: a few ACL rules                      subscriptions 4, retained 4, packet 256)
 *   bit 3: devices.auto_register = true  bit 4: = false (else auto)
 *   bit 5: small socket buffers (the clients' SO_RCVBUF 2048, the gateway's SO_SNDBUF
 *          4096) and limits.max_send_queue_bytes 16384: a deaf subscriber's socket
 *          fills within KiB, its send queue grows past the budget
 *   bit 6: limits.auth_timeout_ms 30 (the 0xc3 op lets it pass; a CONNECT's keepalive
 *          sets the idle deadline)
 * then operations, each one op byte (conn_world.h has them in full):
 *   op & 3 = 0..2 (client k), (op >> 2) & 3:
 *       0: a length byte and that many bytes, written by client k in one write
 *          (the client connects on its first write)
 *       1: the same, each byte in its own write and read
 *       2: client k closes with a reset      3: client k closes gracefully (FIN)
 *     0x10 on a write: client k resets right after it, before the loop runs
 *     0x20: client k first turns deaf (stops reading) or hears again
 *   op & 3 = 3: 0x10: the write fault seam, three bytes follow: nth (0: off), p in
 *       1/256ths, seed (every connection's nth socket write fails, and each with
 *       probability p, as a reset peer's do); 0xc0: time passes, a byte follows: the
 *       loop runs that many milliseconds (150 in all at most); 0x20 alone: nothing (no
 *       asynchronous work here); none of those: (op >> 2) & 3: 0 storage reports every
 *       write so far durable, 1 every write so far failed, 2 storage pushes back,
 *       3 storage drains.
 * After each operation the loop runs until nothing more happens. What each client
 * receives must be a well-formed stream of MQTT packets, the first a CONNACK; the world
 * must then close with no handle left open and no memory leaked. */
#define CW_MQTT /* the broker's store in conn_world.h */
#include "conn_world.h"

#include "protocols/mqtt/mqtt.h"

static const char acl_rules[] =
    "[{\"user\":\"app1\",\"topic\":\"devices/#\",\"action\":\"subscribe\",\"allow\":true},"
    "{\"topic\":\"test/nosub\",\"action\":\"subscribe\",\"allow\":false},"
    "{\"client\":\"c?\",\"topic\":\"c/%c/#\",\"allow\":true},"
    "{\"user\":\"open1\",\"topic\":\"devices/+/telemetry\",\"action\":\"publish\","
    "\"allow\":false}]";

struct world {
    struct cw w;        /* first: the storage callbacks' ctx is either */
    struct mqtt_broker *broker;
};

static void on_presence(struct gw *gw, const char *device, bool online)
{
    struct world *w = gw->hook_ctx;
    mqtt_broker_presence(w->broker, device, online);
}

/* Decodes what a client received: server packets, well formed, CONNACK first. The
 * version is the CONNACK's: an MQTT 5 one has a property block (remaining length > 2),
 * and every later packet is decoded with 5.0 rules (cl->state). */
static void client_check(struct cw_client *cl)
{
    static const struct mqtt_limits lim = {0, MQTT_V311};
    size_t off = 0;

    while (off < cl->in.len) {
        struct mqtt_packet pkt;
        const char *why = NULL;
        size_t used = 0;
        enum codec_rc rc;
        if (cl->nmsgs == 0 && cl->in.len - off >= 2 && cl->in.data[off] == 0x20 &&
            cl->in.data[off + 1] > 2)
            cl->state = MQTT_V5;
        rc = mqtt_decode_v(&lim, cl->state == MQTT_V5 ? MQTT_V5 : MQTT_V311, cl->in.data + off,
                           cl->in.len - off, &pkt, &used, &why, NULL);
        if (rc == CODEC_NEED_MORE)
            break;
        CHECK(rc == CODEC_FRAME);
        CHECK(cl->nmsgs > 0 || pkt.type == MQTT_CONNACK);
        switch (pkt.type) {
        case MQTT_CONNACK:
            CHECK(cl->nmsgs == 0);
            break;
        case MQTT_PUBLISH:
            CHECK(mqtt_topic_valid(pkt.publish.topic.p, pkt.publish.topic.len) ||
                  (cl->state == MQTT_V5 && pkt.publish.topic.len == 0 && pkt.props.topic_alias));
            break;
        case MQTT_DISCONNECT:
        case MQTT_AUTH:
            CHECK(cl->state == MQTT_V5);
            break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
        case MQTT_PINGRESP:
            break;
        default:
            abort(); /* a packet only a client sends */
        }
        cl->nmsgs++;
        off += used;
    }
    buf_consume(&cl->in, off);
}

static void world_open(struct world *wd, uint8_t flags)
{
    struct cw *w = &wd->w;

    memset(wd, 0, sizeof *wd);
    w->name = "fuzz_mqtt_conn";
    w->check = client_check;
    config_defaults(&w->cfg);
    w->cfg.mqtt.allow_anonymous = (flags & 0x01) != 0;
    if (flags & 0x02) {
        w->cfg.mqtt.max_inflight = 2;
        w->cfg.mqtt.max_queued = 4;
        w->cfg.mqtt.max_subscriptions = 4;
        w->cfg.mqtt.max_retained = 4;
        w->cfg.mqtt.max_packet_bytes = 256;
    }
    if (flags & 0x04)
        snprintf(w->cfg.mqtt.acl_json, sizeof w->cfg.mqtt.acl_json, "%s", acl_rules);
    if (flags & 0x08)
        w->cfg.devices.auto_register = CONFIG_REGISTER_ALWAYS;
    else if (flags & 0x10)
        w->cfg.devices.auto_register = CONFIG_REGISTER_NEVER;
    if (flags & 0x40)
        w->cfg.limits.auth_timeout_ms = 30;
    if (flags & 0x20) {
        w->rcvbuf = 2048;
        w->sndbuf = 4096;
        w->cfg.limits.max_send_queue_bytes = 16384;
    }

    cw_start(w);
    w->gw.hook_ctx = wd;
    w->gw.on_presence = on_presence;
    wd->broker = cw_mqtt_broker_new(w);
    CHECK(gw_listen(&w->gw, &(struct gw_listen_cfg){"mqtt", "127.0.0.1", 0, &mqtt_proto,
                                                    wd->broker, NULL, NULL, 0}) == 0);
    w->port = w->gw.listeners[0].port;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct world w;

    cw_once();
    if (size < 1)
        return 0;
    world_open(&w, data[0]);
    cw_run(&w.w, data + 1, size - 1);
    cw_close(&w.w);
    mqtt_broker_free(w.broker);
    cw_fini(&w.w);
    return 0;
}
