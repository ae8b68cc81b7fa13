/* tools/sim/mqtt.c: the MQTT device (smqtt_), 3.1.1 or 5.0, built on Gale's own MQTT
 * encoders and decoder (protocols/mqtt/mqtt.h) on the simulator's loop.
 *
 * (paho-mqtt-c's MQTTAsync was measured first: its calls scan every client it holds;
 * sending one message for each of 2,000 clients took 0.3-0.7 s of calls, for 6,000 about
 * 5 s, so it cannot keep 6,000 devices at one message a second. One loop with these
 * codecs holds 10,000.)
 *
 * CONNECT with client id = username = device id and password = token (none without a
 * token: Gale's anonymous access, when it is on), clean session; then SUBSCRIBE
 * devices/<id>/commands at QoS 1. Telemetry goes to devices/<id>/telemetry at the run's
 * QoS; a QoS 1 message counts as acked at its PUBACK. A command (a PUBLISH on the
 * commands topic, {"id","name","params"}) is answered on
 * devices/<id>/commands/<cmd-id>/reply with {"result":…,"name":…} at QoS 1; over MQTT 5
 * on the command's Response Topic, with its Correlation Data, when it has them. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "protocols/mqtt/mqtt.h"
#include "tools/sim/sim.h"

#define REPLY_IDS 8 /* command replies awaiting their PUBACK (not telemetry acks) */

struct smqtt {
    uint8_t version;        /* MQTT_V311 or MQTT_V5 */
    bool connacked;
    uint16_t reply_ids[REPLY_IDS];
    struct buf out;
};

static uint16_t next_id(struct dev *d)
{
    if (++d->next_pid == 0)
        d->next_pid = 1;
    return d->next_pid;
}

static void flush(struct dev *d)
{
    struct smqtt *m = d->pstate;
    snet_write(d->net, &m->out);
}

static void fail(struct dev *d, const char *why)
{
    dev_error(d, why);
    snet_close(d->net);
}

static void smqtt_start(struct dev *d)
{
    struct sim *s = d->sim;
    struct smqtt *m = xcalloc(1, sizeof *m);
    struct mqtt_connect c = {0};
    /* a keep-alive the send ticks keep alive, with room for gaps */
    double ka = s->o.rate > 0 ? 10.0 / s->o.rate : 60;

    buf_init(&m->out);
    d->pstate = m;
    m->version = s->o.mqtt_version == 5 ? MQTT_V5 : MQTT_V311;
    c.clean_session = true;
    c.keepalive_s = ka < 60 ? 60 : ka > 65535 ? 65535 : (uint16_t)ka;
    c.client_id = (struct mqtt_str){d->id, strlen(d->id)};
    c.has_username = true;
    c.username = c.client_id;
    if (d->token[0]) {
        c.has_password = true;
        c.password = (struct mqtt_bin){(const uint8_t *)d->token, strlen(d->token)};
    }
    if (m->version == MQTT_V5)
        mqtt_encode_connect5(&m->out, &c, NULL, NULL);
    else
        mqtt_encode_connect(&m->out, &c);
    flush(d);
}

static void subscribe_commands(struct dev *d)
{
    struct smqtt *m = d->pstate;
    char filter[96];
    int n = snprintf(filter, sizeof filter, "devices/%s/commands", d->id);
    uint16_t id = next_id(d);

    if (m->version == MQTT_V5) {
        struct mqtt_sub_req5 r = {{filter, (size_t)n}, 1};
        mqtt_encode_subscribe5(&m->out, id, NULL, &r, 1);
    } else {
        struct mqtt_sub_req r = {{filter, (size_t)n}, 1};
        mqtt_encode_subscribe(&m->out, id, &r, 1);
    }
}

static void publish(struct dev *d, const char *topic, const void *p, size_t len, uint8_t qos,
                    uint16_t id, const struct mqtt_bin *props)
{
    struct smqtt *m = d->pstate;

    if (m->version == MQTT_V5)
        mqtt_encode_publish5(&m->out, topic, strlen(topic), props, p, len, qos, false, false,
                             id);
    else
        mqtt_encode_publish(&m->out, topic, strlen(topic), p, len, qos, false, false, id);
}

static void answer_command(struct dev *d, const struct mqtt_packet *pkt)
{
    const struct mqtt_publish *pub = &pkt->publish;
    struct smqtt *m = d->pstate;
    cJSON *cmd = cJSON_ParseWithLength((const char *)pub->payload, pub->payload_len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(cmd, "id");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");

    if (!cJSON_IsString(id) || strlen(id->valuestring) > 64) {
        dev_error(d, "a command without an id");
        cJSON_Delete(cmd);
        return;
    }
    const char *nm = cJSON_IsString(name) ? name->valuestring : "";
    const struct mqtt_props *pp = &pkt->props;
    char topic[200], body[256];
    struct buf props;
    buf_init(&props);
    /* MQTT 5 request/response: the Response Topic and Correlation Data Gale sent */
    if (pp->present & (1ull << MQTT_PROP_RESPONSE_TOPIC) &&
        pp->response_topic.len < sizeof topic) {
        snprintf(topic, sizeof topic, "%.*s", (int)pp->response_topic.len,
                 pp->response_topic.p);
        if (pp->present & (1ull << MQTT_PROP_CORRELATION_DATA))
            mqtt_prop_put_bin(&props, MQTT_PROP_CORRELATION_DATA, pp->correlation_data.p,
                              pp->correlation_data.len);
    } else {
        snprintf(topic, sizeof topic, "devices/%s/commands/%s/reply", d->id, id->valuestring);
    }
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{\"result\":\"%s\",\"name\":", dev_command_result(nm));
    buf_append_json_str(&b, nm, strlen(nm));
    buf_append_str(&b, "}");
    snprintf(body, sizeof body, "%s", buf_cstr(&b));
    buf_fini(&b);
    uint16_t pid = next_id(d);
    for (int i = 0; i < REPLY_IDS; i++) {
        if (m->reply_ids[i] == 0) {
            m->reply_ids[i] = pid;
            break;
        }
    }
    struct mqtt_bin pb = {props.data, props.len};
    publish(d, topic, body, strlen(body), 1, pid, props.len ? &pb : NULL);
    buf_fini(&props);
    d->sim->st.cmds++;
    cJSON_Delete(cmd);
}

static bool is_reply_ack(struct smqtt *m, uint16_t id)
{
    for (int i = 0; i < REPLY_IDS; i++) {
        if (m->reply_ids[i] == id) {
            m->reply_ids[i] = 0;
            return true;
        }
    }
    return false;
}

/* One packet from the server. Returns false when the connection is being closed. */
static bool on_packet(struct dev *d, const struct mqtt_packet *p)
{
    struct smqtt *m = d->pstate;
    char why[96];

    switch (p->type) {
    case MQTT_CONNACK:
        if (p->connack.rc != 0) {
            snprintf(why, sizeof why, "CONNACK %u%s", p->connack.rc,
                     p->connack.rc == 1 ? " (the server does not speak this MQTT version)"
                     : p->connack.rc == 4 || p->connack.rc == 0x86 ? " (bad credentials)"
                     : p->connack.rc == 5 || p->connack.rc == 0x87 ? " (not authorized)"
                                                                   : "");
            fail(d, why);
            return false;
        }
        m->connacked = true;
        subscribe_commands(d);
        dev_ready(d);
        return true;
    case MQTT_PUBACK:
        if (is_reply_ack(m, p->id))
            return true;
        if (p->reason >= 0x80) {
            snprintf(why, sizeof why, "PUBACK reason 0x%02x", p->reason);
            dev_error(d, why);
        }
        dev_acked(d, 1);
        return true;
    case MQTT_SUBACK:
        if (p->suback.count < 1 || p->suback.codes[0] >= 0x80)
            dev_error(d, "SUBSCRIBE to its commands refused");
        return true;
    case MQTT_PUBLISH:
        if (p->publish.qos == 1) {
            if (m->version == MQTT_V5)
                mqtt_encode_ack5(&m->out, MQTT_PUBACK, p->id, 0, NULL);
            else
                mqtt_encode_puback(&m->out, p->id);
        } else if (p->publish.qos == 2) {
            if (m->version == MQTT_V5)
                mqtt_encode_ack5(&m->out, MQTT_PUBREC, p->id, 0, NULL);
            else
                mqtt_encode_pubrec(&m->out, p->id);
        }
        answer_command(d, p);
        return true;
    case MQTT_PUBREL:
        if (m->version == MQTT_V5)
            mqtt_encode_ack5(&m->out, MQTT_PUBCOMP, p->id, 0, NULL);
        else
            mqtt_encode_pubcomp(&m->out, p->id);
        return true;
    case MQTT_DISCONNECT:
        snprintf(why, sizeof why, "DISCONNECT from the server, reason 0x%02x", p->reason);
        fail(d, why);
        return false;
    default:
        return true; /* PINGRESP, UNSUBACK */
    }
}

static void smqtt_read(struct dev *d)
{
    struct smqtt *m = d->pstate;
    struct buf *in = &d->net->in;
    struct mqtt_limits lim = {0, m->version};
    size_t off = 0;

    for (;;) {
        struct mqtt_packet p;
        size_t used;
        const char *why = NULL;
        enum codec_rc rc = mqtt_decode_v(&lim, m->version, in->data + off, in->len - off, &p,
                                         &used, &why, NULL);
        /* a 3.1.1 server refuses a 5.0 CONNECT with a 3.1.1 CONNACK (0x01) */
        if (rc == CODEC_ERROR && !m->connacked && m->version == MQTT_V5)
            rc = mqtt_decode_v(&lim, MQTT_V311, in->data + off, in->len - off, &p, &used,
                               &why, NULL);
        if (rc == CODEC_NEED_MORE)
            break;
        if (rc == CODEC_ERROR) {
            char msg[128];
            snprintf(msg, sizeof msg, "bad MQTT from the server: %s", why);
            fail(d, msg);
            return;
        }
        off += used;
        if (!on_packet(d, &p))
            return;
    }
    buf_consume(in, off);
    flush(d);
}

static int smqtt_send(struct dev *d, const struct buf *msg)
{
    struct sim *s = d->sim;
    char topic[96];
    uint16_t id = s->o.qos ? next_id(d) : 0;

    snprintf(topic, sizeof topic, "devices/%s/telemetry", d->id);
    publish(d, topic, msg->data, msg->len, (uint8_t)s->o.qos, id, NULL);
    if (s->o.qos)
        d->unacked++;
    flush(d);
    return 0;
}

static void smqtt_finish(struct dev *d)
{
    struct smqtt *m = d->pstate;

    if (m->version == MQTT_V5)
        mqtt_encode_disconnect5(&m->out, 0, NULL);
    else
        mqtt_encode_disconnect(&m->out);
    flush(d);
}

static void smqtt_free(struct dev *d)
{
    struct smqtt *m = d->pstate;

    if (!m)
        return;
    buf_fini(&m->out);
    free(m);
}

const struct proto_ops smqtt_ops = {smqtt_start, smqtt_read, smqtt_send, smqtt_finish,
                                    smqtt_free};
