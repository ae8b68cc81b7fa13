/* tests/fuzz/fuzz_bridge.c: libFuzzer target for the bridge's configuration parser and
 * its topic filters. The input up to the first 0xff byte is the text of
 * bridge.upstreams for bridge_cfg_parse(); what follows is "filter\0topic" for
 * the MQTT codec's mqtt_filter_valid() and mqtt_topic_matches() as the bridge uses them.
 * Invariants: an accepted configuration
 * has at least one address per upstream, unique non-empty names, a QoS of 0..2 and
 * valid forward/subscribe filters; a refused one says why; a filter without wildcards
 * that is valid matches itself as a topic, and "#" matches every topic not starting
 * with '$'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/bridge/bridge_cfg.h"
#include "protocols/mqtt/mqtt.h"

static bool valid_filter(const char *f)
{
    return mqtt_filter_valid(f, strlen(f)) != 0;
}

static bool match(const char *f, const char *t)
{
    return mqtt_topic_matches(f, strlen(f), t, strlen(t)) != 0;
}

static void check_cfg(const char *json)
{
    struct bridge_cfg c;
    char err[512] = "";

    if (bridge_cfg_parse(json, &c, err, sizeof err) != 0) {
        if (!err[0])
            abort(); /* refused without a reason */
        return;
    }
    for (size_t i = 0; i < c.n; i++) {
        const struct bridge_upstream_cfg *u = &c.ups[i];
        if (!u->name[0] || u->naddresses == 0 || u->qos > 2 || !u->client_id)
            abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(c.ups[j].name, u->name) == 0)
                abort();
        for (size_t k = 0; k < u->nforward; k++)
            if (!valid_filter(u->forward[k]))
                abort();
        for (size_t k = 0; k < u->nsubscribe; k++)
            if (!valid_filter(u->subscribe[k]))
                abort();
    }
    bridge_cfg_fini(&c);
}

static void check_filter(const char *filter, const char *topic)
{
    bool topic_ok = mqtt_topic_valid(topic, strlen(topic)) != 0;

    if (!valid_filter(filter) || !topic_ok)
        return; /* the matcher's contract: a valid filter and a valid topic name */
    (void)match(filter, topic);
    if (!strpbrk(filter, "+#") && !match(filter, filter))
        abort();
    if (topic[0] != '$' && !match("#", topic))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *mark = memchr(data, 0xff, size);
    size_t json_len = mark ? (size_t)(mark - data) : size;
    char *json = malloc(json_len + 1);

    memcpy(json, data, json_len);
    json[json_len] = '\0';
    check_cfg(json);
    free(json);
    if (mark) {
        size_t n = size - json_len - 1;
        char *rest = calloc(1, n + 2); /* "filter\0topic", both NUL-terminated */
        const char *topic;
        memcpy(rest, mark + 1, n);
        topic = rest + strlen(rest) + 1;
        if (topic > rest + n)
            topic = rest + n + 1;
        check_filter(rest, topic);
        free(rest);
    }
    return 0;
}
