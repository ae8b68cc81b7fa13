/* tests/integration/mqtt_paho_c.c: Gale's MQTT server driven by the Eclipse Paho C
 * client (synchronous MQTTClient API), as a device and as an application client.
 *
 *   mqtt_paho_c PORT DEVICE TOKEN APP APP_TOKEN
 *
 * Checks, in order: a wrong token is refused with CONNACK 4; an application client with
 * a persistent session subscribes; the device publishes telemetry with QoS 0, 1 and 2
 * (each completes: PUBACK / PUBCOMP) and the application receives each with its QoS;
 * a retained message reaches a later subscriber with the retained flag; a QoS 1 message
 * published while the application is away is delivered when it resumes its session
 * (session present 1); unsubscribe stops delivery. Prints "ok <step>" per step and
 * exits 0, or prints "FAIL <step>: <why>" and exits 1. Run by test_mqtt_paho_c.py. */
#include <MQTTClient.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIMEOUT_MS 10000

static char g_uri[64];
static const char *g_step = "start";

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            printf("FAIL %s: ", g_step);                                                      \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void step(const char *name)
{
    if (strcmp(g_step, "start") != 0)
        printf("ok %s\n", g_step);
    fflush(stdout);
    g_step = name;
}

/* Connects a new client; returns the CONNACK code (0 = accepted), *sp = session present. */
static int open_client(MQTTClient *c, const char *id, const char *user, const char *pw,
                       int clean, int *sp)
{
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer;
    int rc = MQTTClient_create(c, g_uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL);
    CHECK(rc == MQTTCLIENT_SUCCESS, "MQTTClient_create rc=%d", rc);
    o.keepAliveInterval = 30;
    o.cleansession = clean;
    o.username = user;
    o.password = pw;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    rc = MQTTClient_connect(*c, &o);
    if (sp)
        *sp = o.returned.sessionPresent;
    return rc;
}

static void publish(MQTTClient c, const char *topic, const char *payload, int qos, int retained)
{
    MQTTClient_message m = MQTTClient_message_initializer;
    MQTTClient_deliveryToken tok;
    int rc;
    m.payload = (void *)payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = qos;
    m.retained = retained;
    rc = MQTTClient_publishMessage(c, topic, &m, &tok);
    CHECK(rc == MQTTCLIENT_SUCCESS, "publish %s rc=%d", topic, rc);
    rc = MQTTClient_waitForCompletion(c, tok, TIMEOUT_MS);
    CHECK(rc == MQTTCLIENT_SUCCESS, "completion of QoS %d publish to %s rc=%d", qos, topic, rc);
}

/* Receives the next message (fails after the timeout); caller frees with free_msg. */
static MQTTClient_message *receive(MQTTClient c, char **topic, int timeout_ms)
{
    MQTTClient_message *m = NULL;
    int len = 0, rc = MQTTClient_receive(c, topic, &len, &m, (unsigned long)timeout_ms);
    CHECK(rc == MQTTCLIENT_SUCCESS || rc == MQTTCLIENT_TOPICNAME_TRUNCATED, "receive rc=%d", rc);
    return m;
}

static void free_msg(MQTTClient_message *m, char *topic)
{
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
}

static void expect(MQTTClient c, const char *topic, const char *payload, int qos, int retained)
{
    char *t = NULL;
    MQTTClient_message *m = receive(c, &t, TIMEOUT_MS);
    CHECK(m != NULL, "no message (want %s %s)", topic, payload);
    CHECK(strcmp(t, topic) == 0, "topic %s, want %s", t, topic);
    CHECK(m->payloadlen == (int)strlen(payload) &&
              memcmp(m->payload, payload, strlen(payload)) == 0,
          "payload %.*s, want %s", m->payloadlen, (char *)m->payload, payload);
    CHECK(m->qos == qos, "qos %d, want %d", m->qos, qos);
    CHECK(m->retained == retained, "retained %d, want %d", m->retained, retained);
    free_msg(m, t);
}

static void expect_nothing(MQTTClient c, int ms)
{
    char *t = NULL;
    MQTTClient_message *m = receive(c, &t, ms);
    CHECK(m == NULL, "unexpected message on %s", t);
}

static void close_client(MQTTClient *c)
{
    MQTTClient_disconnect(*c, 1000);
    MQTTClient_destroy(c);
}

int main(int argc, char **argv)
{
    const char *dev, *tok, *app, *app_tok;
    char tel[128], echo[128], body[128];
    MQTTClient a, d, late, bad;
    int rc, sp = -1;
    int qoss[2] = {2, 1};
    char *subs[2];

    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT DEVICE TOKEN APP APP_TOKEN\n", argv[0]);
        return 2;
    }
    snprintf(g_uri, sizeof g_uri, "tcp://127.0.0.1:%s", argv[1]);
    dev = argv[2];
    tok = argv[3];
    app = argv[4];
    app_tok = argv[5];
    snprintf(tel, sizeof tel, "devices/%s/telemetry", dev);
    snprintf(echo, sizeof echo, "devices/%s/echo", dev);

    step("bad token refused with CONNACK 4");
    rc = open_client(&bad, "paho-c-bad", dev, "not-the-token", 1, NULL);
    CHECK(rc == 4, "connect rc=%d, want 4", rc);
    MQTTClient_destroy(&bad);

    step("application client with a persistent session subscribes");
    rc = open_client(&a, "paho-c-app", app, app_tok, 0, &sp);
    CHECK(rc == 0, "connect rc=%d", rc);
    CHECK(sp == 0, "session present %d on the first connect", sp);
    subs[0] = "devices/+/telemetry";
    subs[1] = echo;
    rc = MQTTClient_subscribeMany(a, 2, subs, qoss);
    CHECK(rc == MQTTCLIENT_SUCCESS, "subscribe rc=%d", rc);
    CHECK(qoss[0] == 2 && qoss[1] == 1, "granted %d %d", qoss[0], qoss[1]);

    step("device publishes telemetry with QoS 0, 1 and 2");
    rc = open_client(&d, "paho-c-dev", dev, tok, 1, NULL);
    CHECK(rc == 0, "device connect rc=%d", rc);
    for (int q = 0; q <= 2; q++) {
        snprintf(body, sizeof body, "{\"ts\":%d,\"values\":{\"paho_q\":%d}}",
                 1700000000 + q, q);
        publish(d, tel, body, q, 0);
    }

    step("application receives each with its QoS, in order");
    for (int q = 0; q <= 2; q++) {
        snprintf(body, sizeof body, "{\"ts\":%d,\"values\":{\"paho_q\":%d}}",
                 1700000000 + q, q);
        expect(a, tel, body, q, 0);
    }

    step("retained message reaches a later subscriber with the retained flag");
    publish(d, echo, "retained-hello", 1, 1);
    expect(a, echo, "retained-hello", 1, 0); /* an existing subscriber: retain 0 */
    rc = open_client(&late, "paho-c-late", app, app_tok, 1, NULL);
    CHECK(rc == 0, "late connect rc=%d", rc);
    rc = MQTTClient_subscribe(late, echo, 1);
    CHECK(rc == MQTTCLIENT_SUCCESS, "late subscribe rc=%d", rc);
    expect(late, echo, "retained-hello", 1, 1);
    close_client(&late);

    step("message sent while the application is away waits in its session");
    close_client(&a);
    publish(d, echo, "while-away", 1, 0);
    rc = open_client(&a, "paho-c-app", app, app_tok, 0, &sp);
    CHECK(rc == 0, "reconnect rc=%d", rc);
    CHECK(sp == 1, "session present %d on resume", sp);
    expect(a, echo, "while-away", 1, 0);

    step("unsubscribe stops delivery");
    rc = MQTTClient_unsubscribe(a, echo);
    CHECK(rc == MQTTCLIENT_SUCCESS, "unsubscribe rc=%d", rc);
    publish(d, echo, "after-unsubscribe", 1, 0);
    expect_nothing(a, 500);

    step("clean up");
    close_client(&d);
    /* leave no persistent session behind */
    MQTTClient_disconnect(a, 1000);
    MQTTClient_destroy(&a);
    rc = open_client(&a, "paho-c-app", app, app_tok, 1, NULL);
    CHECK(rc == 0, "clean connect rc=%d", rc);
    close_client(&a);
    step("done");
    return 0;
}
