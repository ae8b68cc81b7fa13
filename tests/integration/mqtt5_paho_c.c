/* tests/integration/mqtt5_paho_c.c: Gale's MQTT server driven by the Eclipse Paho C
 * client's asynchronous API (MQTTAsync) in MQTT 5 mode, as a device and an application.
 *
 *   mqtt5_paho_c PORT DEVICE TOKEN APP APP_TOKEN
 *
 * Checks, in order: CONNACK of a 5.0 connect carries the server's Receive Maximum and Topic
 * Alias Maximum; the application subscribes with a Subscription Identifier and No Local;
 * the device publishes telemetry at QoS 1 with a User Property and Content Type, and its
 * PUBACK has reason code 0; the application receives it with the properties and its
 * Subscription Identifier; a publish the ACL denies (another device's topic) gets PUBACK
 * 0x87; the application's session (Session Expiry 60) keeps a QoS 1 message while it is
 * away and gets it on return with session present. Prints "ok <step>" per step and exits
 * 0, or "FAIL <step>: <why>" and exits 1. Run by test_mqtt5_clients.py. */
#include <MQTTAsync.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* One asynchronous outcome, filled by the callbacks and polled by wait(). */
struct result {
    volatile int done;  /* 1 success, -1 failure */
    int reason;         /* MQTT 5 reason code */
    int session_present;
    int recv_max, alias_max;
};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void wait(struct result *r)
{
    for (int i = 0; i < 1000 && !r->done; i++)
        sleep_ms(10);
    CHECK(r->done != 0, "no answer within 10 s");
}

static void on_connect5(void *ctx, MQTTAsync_successData5 *d)
{
    struct result *r = ctx;
    r->reason = d->reasonCode;
    r->session_present = d->alt.connect.sessionPresent;
    r->recv_max = MQTTProperties_getNumericValue(&d->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    r->alias_max =
        MQTTProperties_getNumericValue(&d->properties, MQTTPROPERTY_CODE_TOPIC_ALIAS_MAXIMUM);
    r->done = 1;
}

static void on_success5(void *ctx, MQTTAsync_successData5 *d)
{
    struct result *r = ctx;
    r->reason = d->reasonCode;
    r->done = 1;
}

static void on_failure5(void *ctx, MQTTAsync_failureData5 *d)
{
    struct result *r = ctx;
    r->reason = d->reasonCode;
    r->done = -1;
}

/* Messages an application received. */
#define MAX_MSGS 16
static struct {
    char topic[128], payload[256], user[64], ctype[64];
    int qos, subid;
} g_msgs[MAX_MSGS];
static volatile int g_nmsgs;

static int on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    (void)ctx;
    if (g_nmsgs < MAX_MSGS && strncmp(topic, "devices/", 8) == 0 && !strstr(topic, "/status")) {
        int i = g_nmsgs;
        MQTTProperty *p;
        snprintf(g_msgs[i].topic, sizeof g_msgs[i].topic, "%.*s", tlen ? tlen : (int)strlen(topic),
                 topic);
        snprintf(g_msgs[i].payload, sizeof g_msgs[i].payload, "%.*s", m->payloadlen,
                 (char *)m->payload);
        g_msgs[i].qos = m->qos;
        g_msgs[i].subid =
            MQTTProperties_getNumericValue(&m->properties, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER);
        if ((p = MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_USER_PROPERTY)))
            snprintf(g_msgs[i].user, sizeof g_msgs[i].user, "%.*s=%.*s", p->value.data.len,
                     p->value.data.data, p->value.value.len, p->value.value.data);
        if ((p = MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_CONTENT_TYPE)))
            snprintf(g_msgs[i].ctype, sizeof g_msgs[i].ctype, "%.*s", p->value.data.len,
                     p->value.data.data);
        g_nmsgs = i + 1;
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

static MQTTAsync open5(const char *uri, const char *id, const char *user, const char *pw,
                       int clean, unsigned expiry, struct result *r)
{
    MQTTAsync c;
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer5;
    MQTTProperties props = MQTTProperties_initializer;
    MQTTProperty p;
    int rc = MQTTAsync_createWithOptions(&c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    CHECK(rc == MQTTASYNC_SUCCESS, "create rc=%d", rc);
    MQTTAsync_setCallbacks(c, NULL, NULL, on_message, NULL);
    p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
    p.value.integer4 = expiry;
    MQTTProperties_add(&props, &p);
    o.keepAliveInterval = 30;
    o.cleanstart = clean;
    o.username = user;
    o.password = pw;
    o.connectProperties = &props;
    o.onSuccess5 = on_connect5;
    o.onFailure5 = on_failure5;
    o.context = r;
    memset(r, 0, sizeof *r);
    rc = MQTTAsync_connect(c, &o);
    CHECK(rc == MQTTASYNC_SUCCESS, "connect rc=%d", rc);
    wait(r);
    MQTTProperties_free(&props);
    return c;
}

static void publish5(MQTTAsync c, const char *topic, const char *payload, struct result *r)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    MQTTProperty p;
    int rc;
    m.payload = (void *)payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = 1;
    p.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
    p.value.data.data = "site";
    p.value.data.len = 4;
    p.value.value.data = "north";
    p.value.value.len = 5;
    MQTTProperties_add(&m.properties, &p);
    p.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE;
    p.value.data.data = "application/json";
    p.value.data.len = 16;
    MQTTProperties_add(&m.properties, &p);
    ro.onSuccess5 = on_success5;
    ro.onFailure5 = on_failure5;
    ro.context = r;
    memset(r, 0, sizeof *r);
    rc = MQTTAsync_sendMessage(c, topic, &m, &ro);
    CHECK(rc == MQTTASYNC_SUCCESS, "sendMessage rc=%d", rc);
    wait(r);
    MQTTProperties_free(&m.properties);
}

static void wait_msgs(int n)
{
    for (int i = 0; i < 1000 && g_nmsgs < n; i++)
        sleep_ms(10);
    CHECK(g_nmsgs >= n, "%d messages received, want %d", g_nmsgs, n);
}

static void disconnect(MQTTAsync c)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
    d.timeout = 1000;
    MQTTAsync_disconnect(c, &d);
    sleep_ms(200);
    MQTTAsync_destroy(&c);
}

int main(int argc, char **argv)
{
    char uri[64], topic[160];
    struct result r;
    MQTTAsync dev, app;
    MQTTAsync_responseOptions so = MQTTAsync_responseOptions_initializer;
    MQTTProperties sp = MQTTProperties_initializer;
    MQTTProperty p;
    int rc;

    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT DEVICE TOKEN APP APP_TOKEN\n", argv[0]);
        return 2;
    }
    snprintf(uri, sizeof uri, "tcp://127.0.0.1:%s", argv[1]);
    snprintf(topic, sizeof topic, "devices/%s/telemetry", argv[2]);

    step("5.0 CONNACK carries Receive Maximum and Topic Alias Maximum");
    app = open5(uri, "paho5-app", argv[4], argv[5], 1, 60, &r);
    CHECK(r.done == 1 && r.reason == 0, "connect reason %d", r.reason);
    CHECK(r.recv_max > 0 && r.alias_max > 0, "receive max %d, alias max %d", r.recv_max,
          r.alias_max);

    step("application subscribes with a Subscription Identifier");
    p.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER;
    p.value.integer4 = 42;
    MQTTProperties_add(&sp, &p);
    so.subscribeOptions.noLocal = 1;
    so.properties = sp;
    so.onSuccess5 = on_success5;
    so.onFailure5 = on_failure5;
    so.context = &r;
    memset(&r, 0, sizeof r);
    rc = MQTTAsync_subscribe(app, "devices/#", 1, &so);
    CHECK(rc == MQTTASYNC_SUCCESS, "subscribe rc=%d", rc);
    wait(&r);
    CHECK(r.done == 1 && r.reason == 1, "SUBACK reason %d", r.reason);
    MQTTProperties_free(&sp);

    step("device publishes at QoS 1 with properties: PUBACK reason 0");
    dev = open5(uri, "paho5-dev", argv[2], argv[3], 1, 0, &r);
    CHECK(r.done == 1 && r.reason == 0, "device connect reason %d", r.reason);
    publish5(dev, topic, "{\"paho5\":1}", &r);
    CHECK(r.done == 1 && r.reason == 0, "PUBACK reason %d", r.reason);

    step("application receives it with the properties and its Subscription Identifier");
    wait_msgs(1);
    CHECK(strcmp(g_msgs[0].payload, "{\"paho5\":1}") == 0, "payload %s", g_msgs[0].payload);
    CHECK(strcmp(g_msgs[0].user, "site=north") == 0, "user property '%s'", g_msgs[0].user);
    CHECK(strcmp(g_msgs[0].ctype, "application/json") == 0, "content type '%s'",
          g_msgs[0].ctype);
    CHECK(g_msgs[0].subid == 42, "subscription identifier %d", g_msgs[0].subid);

    step("a denied publish gets PUBACK 0x87");
    publish5(dev, "devices/someone-else/telemetry", "{\"x\":1}", &r);
    CHECK(r.reason == 0x87, "PUBACK reason 0x%02x", r.reason);

    step("the application's session keeps a message while it is away");
    disconnect(app);
    g_nmsgs = 0;
    publish5(dev, topic, "{\"paho5\":2}", &r);
    CHECK(r.done == 1 && r.reason == 0, "PUBACK reason %d", r.reason);
    app = open5(uri, "paho5-app", argv[4], argv[5], 0, 60, &r);
    CHECK(r.done == 1 && r.session_present == 1, "session present %d", r.session_present);
    wait_msgs(1);
    CHECK(strcmp(g_msgs[0].payload, "{\"paho5\":2}") == 0, "payload %s", g_msgs[0].payload);

    step("done");
    disconnect(dev);
    disconnect(app);
    printf("ok all\n");
    return 0;
}
