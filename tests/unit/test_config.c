/* tests/unit/test_config.c: configuration loading. Tables of input -> expected
 * value or exact error for each source (JSON file text, --set, environment),
 * precedence across sources, cross-key validation, the redacted JSON view, the
 * reference, and config/gateway.json (path in argv[1]) against the embedded
 * defaults. A failed apply must leave the config exactly as it was. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "config/config.h"

static const char *gateway_json_path; /* argv[1] */

/* The value of "section.key" in config_to_json(cfg), as compact JSON text. */
static char *value_of(const struct config *cfg, const char *name)
{
    char *json = config_to_json(cfg), sec[64], *text;
    const char *dot = strchr(name, '.');
    cJSON *root = cJSON_Parse(json), *v;

    assert_non_null(root);
    assert_non_null(dot);
    memcpy(sec, name, (size_t)(dot - name));
    sec[dot - name] = '\0';
    v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, sec), dot + 1);
    assert_non_null(v);
    text = cJSON_PrintUnformatted(v);
    cJSON_Delete(root);
    free(json);
    return text;
}

static void assert_value(const struct config *cfg, const char *name, const char *want)
{
    char *got = value_of(cfg, name);
    if (strcmp(got, want) != 0)
        fail_msg("%s: got %s, want %s", name, got, want);
    cJSON_free(got);
}

/* Equal as far as anyone can see: every key's value, the redacted api_key too. */
static void assert_config_equal(const struct config *a, const struct config *b)
{
    char *ja = config_to_json(a), *jb = config_to_json(b);

    assert_string_equal(ja, jb);
    assert_string_equal(a->http.api_key, b->http.api_key);
    free(ja);
    free(jb);
}

/* Applies JSON text from an exact-size heap copy (no NUL after it, so ASan sees
 * any overread) and from a copy followed by junk that len excludes: both agree. */
static int apply_json_both(struct config *cfg, const char *json, char *err, size_t errlen)
{
    size_t len = strlen(json);
    char *exact = malloc(len ? len : 1), *junk = malloc(len + 8), err2[512];
    struct config c2 = *cfg;
    int rc, rc2;

    memcpy(exact, json, len);
    memcpy(junk, json, len);
    memcpy(junk + len, "}]x\"\n{[", 8);
    rc = config_apply_json(cfg, exact, len, err, errlen);
    rc2 = config_apply_json(&c2, junk, len, err2, sizeof err2);
    assert_int_equal(rc, rc2);
    if (rc != 0)
        assert_string_equal(err, err2);
    assert_config_equal(cfg, &c2);
    free(exact);
    free(junk);
    return rc;
}

struct value_case {
    const char *input;  /* JSON text, assignment, or env entries joined by '\n' */
    const char *err;    /* exact error, or NULL for success */
    const char *key;    /* on success: key to check */
    const char *value;  /* its value as compact JSON */
};

/* Runs one case; on error also checks that cfg did not change. */
static void check_case(const struct value_case *c, int (*apply)(struct config *, const char *,
                                                                 char *, size_t))
{
    struct config cfg, before;
    char err[512] = "";
    int rc;

    config_defaults(&cfg);
    before = cfg;
    rc = apply(&cfg, c->input, err, sizeof err);
    if (c->err) {
        if (rc == 0)
            fail_msg("input %s: succeeded, want error %s", c->input, c->err);
        if (strcmp(err, c->err) != 0)
            fail_msg("input %s:\n  got  %s\n  want %s", c->input, err, c->err);
        assert_config_equal(&before, &cfg);
    } else {
        if (rc != 0)
            fail_msg("input %s: %s", c->input, err);
        if (c->key)
            assert_value(&cfg, c->key, c->value);
    }
}

static int apply_json_str(struct config *cfg, const char *s, char *err, size_t errlen)
{
    return apply_json_both(cfg, s, err, errlen);
}

static int apply_set_str(struct config *cfg, const char *s, char *err, size_t errlen)
{
    return config_apply_set(cfg, s, err, errlen);
}

/* Splits s at '\n' into an environment array. */
static int apply_env_str(struct config *cfg, const char *s, char *err, size_t errlen)
{
    char *copy = strdup(s), *env[16], *save = NULL, *p;
    size_t n = 0;
    int rc;

    for (p = strtok_r(copy, "\n", &save); p && n < 15; p = strtok_r(NULL, "\n", &save))
        env[n++] = p;
    env[n] = NULL;
    rc = config_apply_env(cfg, env, err, errlen);
    free(copy);
    return rc;
}

static void test_defaults(void **state)
{
    struct config c;
    char err[256];

    (void)state;
    config_defaults(&c);
    assert_string_equal(c.data_dir, "./data");
    assert_string_equal(c.log.level, "info");
    assert_string_equal(c.log.format, "text");
    assert_string_equal(c.http.bind, "0.0.0.0");
    assert_int_equal(c.http.port, 8080);
    assert_string_equal(c.http.api_key, "");
    assert_int_equal(c.http.max_header_bytes, 16384);
    assert_int_equal(c.http.max_body_bytes, 1048576);
    assert_false(c.http.ws_echo);
    assert_int_equal(c.http.ws_max_message_bytes, 1048576);
    assert_true(c.http.ws_deflate);
    assert_true(c.line.enabled);
    assert_int_equal(c.line.port, 7000);
    assert_int_equal(c.line.max_line_bytes, 65536);
    assert_int_equal(c.line.max_errors, 10);
    assert_true(c.mqtt.enabled);
    assert_int_equal(c.mqtt.port, 1883);
    assert_int_equal(c.mqtt.max_packet_bytes, 1048576);
    assert_false(c.mqtt.allow_anonymous);
    assert_int_equal(c.mqtt.max_keepalive, 65535);
    assert_int_equal(c.mqtt.max_inflight, 20);
    assert_int_equal(c.mqtt.max_queued, 1000);
    assert_string_equal(c.mqtt.acl_json, "[]");
    assert_int_equal(c.mqtt.invalid_telemetry, CONFIG_INVALID_TELEMETRY_DISCONNECT);
    assert_int_equal(c.devices.auto_register, CONFIG_REGISTER_AUTO);
    assert_string_equal(c.storage.path, "");
    assert_int_equal(c.storage.sync, CONFIG_SYNC_FULL);
    assert_int_equal(c.storage.batch_rows, 10000);
    assert_int_equal(c.storage.batch_delay_ms, 5);
    assert_int_equal(c.storage.queue_high_bytes, 64 * 1024 * 1024);
    assert_int_equal(c.storage.queue_low_bytes, 32 * 1024 * 1024);
    assert_int_equal(c.storage.queue_high_rows, 200000);
    assert_int_equal(c.storage.queue_low_rows, 50000);
    assert_int_equal(c.storage.hot_max_points, 1000000);
    assert_int_equal(c.storage.retention_days, 0);
    assert_int_equal(c.limits.max_connections, 0); /* auto: from the fd limit at start */
    assert_int_equal(c.limits.auth_timeout_ms, 10000);
    assert_int_equal(c.limits.idle_timeout_ms, 300000);
    assert_int_equal(c.limits.max_points_per_message, 1000);
    assert_int_equal(c.limits.max_send_queue_bytes, 4194304);
    assert_int_equal(config_validate(&c, err, sizeof err), 0);
}

#define PORT_ERR(k, got) "config: " k ": must be an integer in 0..65535 (got " got ")"
#define LONG64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static const struct value_case json_cases[] = {
    { "{}", NULL, "http.port", "8080" },
    { " \n{ }\n\t", NULL, "http.port", "8080" },
    { "\xef\xbb\xbf{\"http\":{\"port\":9000}}", NULL, "http.port", "9000" },
    /* int */
    { "{\"http\":{\"port\":9000}}", NULL, "http.port", "9000" },
    { "{\"http\":{\"port\":0}}", NULL, "http.port", "0" },
    { "{\"http\":{\"port\":65535}}", NULL, "http.port", "65535" },
    { "{\"http\":{\"port\":9000.0}}", NULL, "http.port", "9000" },
    { "{\"http\":{\"port\":1,\"port\":2}}", NULL, "http.port", "2" },
    { "{\"http\":{\"port\":65536}}", PORT_ERR("http.port", "65536"), NULL, NULL },
    { "{\"mqtt\":{\"port\":-1}}", PORT_ERR("mqtt.port", "-1"), NULL, NULL },
    { "{\"line\":{\"port\":80.5}}", PORT_ERR("line.port", "80.5"), NULL, NULL },
    { "{\"http\":{\"port\":1e300}}", PORT_ERR("http.port", "1e+300"), NULL, NULL },
    { "{\"http\":{\"port\":\"8080\"}}", PORT_ERR("http.port", "a string"), NULL, NULL },
    { "{\"http\":{\"port\":true}}", PORT_ERR("http.port", "true"), NULL, NULL },
    { "{\"http\":{\"port\":null}}", PORT_ERR("http.port", "null"), NULL, NULL },
    { "{\"http\":{\"port\":[1]}}", PORT_ERR("http.port", "an array"), NULL, NULL },
    { "{\"storage\":{\"retention_days\":36501}}",
      "config: storage.retention_days: must be an integer in 0..36500 (got 36501)", NULL, NULL },
    /* size */
    { "{\"http\":{\"max_body_bytes\":0}}", NULL, "http.max_body_bytes", "0" },
    { "{\"line\":{\"max_line_bytes\":64}}", NULL, "line.max_line_bytes", "64" },
    { "{\"line\":{\"max_line_bytes\":63}}",
      "config: line.max_line_bytes: must be a size in 64..1073741824 (got 63)", NULL, NULL },
    { "{\"http\":{\"max_body_bytes\":-1}}",
      "config: http.max_body_bytes: must be a size in 0..1073741824 (got -1)", NULL, NULL },
    { "{\"http\":{\"max_body_bytes\":\"1m\"}}",
      "config: http.max_body_bytes: must be a size in 0..1073741824 (got a string)", NULL, NULL },
    { "{\"storage\":{\"batch_rows\":0}}",
      "config: storage.batch_rows: must be a size in 1..1000000 (got 0)", NULL, NULL },
    /* bool */
    { "{\"http\":{\"ws_echo\":true}}", NULL, "http.ws_echo", "true" },
    { "{\"http\":{\"ws_deflate\":false}}", NULL, "http.ws_deflate", "false" },
    { "{\"http\":{\"ws_echo\":1}}", "config: http.ws_echo: must be true or false (got a number)",
      NULL, NULL },
    { "{\"mqtt\":{\"enabled\":\"yes\"}}",
      "config: mqtt.enabled: must be true or false (got a string)", NULL, NULL },
    /* string */
    { "{\"gateway\":{\"data_dir\":\"/var/lib/gale\"}}", NULL, "gateway.data_dir",
      "\"/var/lib/gale\"" },
    { "{\"http\":{\"bind\":\"127.0.0.1\"}}", NULL, "http.bind", "\"127.0.0.1\"" },
    { "{\"http\":{\"bind\":\"" LONG64 "\"}}",
      "config: http.bind: must be at most 63 bytes long (got 64 bytes)", NULL, NULL },
    { "{\"http\":{\"bind\":\"\"}}", "config: http.bind: must not be empty", NULL, NULL },
    { "{\"gateway\":{\"data_dir\":\"\"}}", "config: gateway.data_dir: must not be empty", NULL,
      NULL },
    { "{\"storage\":{\"path\":\"\"}}", NULL, "storage.path", "\"\"" },
    { "{\"http\":{\"bind\":5}}", "config: http.bind: must be a string (got a number)", NULL,
      NULL },
    { "{\"http\":{\"api_key\":\"a\\u0000b\"}}", NULL, "http.api_key", "\"***\"" },
    /* enum */
    { "{\"log\":{\"level\":\"debug\"}}", NULL, "log.level", "\"debug\"" },
    { "{\"log\":{\"format\":\"json\"}}", NULL, "log.format", "\"json\"" },
    { "{\"log\":{\"level\":\"loud\"}}",
      "config: log.level: must be one of debug|info|warn|error (got \"loud\")", NULL, NULL },
    { "{\"log\":{\"level\":\"DEBUG\"}}",
      "config: log.level: must be one of debug|info|warn|error (got \"DEBUG\")", NULL, NULL },
    { "{\"log\":{\"format\":\"\"}}", "config: log.format: must be one of text|json (got \"\")",
      NULL, NULL },
    { "{\"storage\":{\"sync\":\"normal\"}}", NULL, "storage.sync", "\"normal\"" },
    { "{\"storage\":{\"sync\":\"off\"}}",
      "config: storage.sync: must be one of full|normal (got \"off\")", NULL, NULL },
    { "{\"devices\":{\"auto_register\":\"false\"}}", NULL, "devices.auto_register",
      "\"false\"" },
    { "{\"devices\":{\"auto_register\":\"no\"}}",
      "config: devices.auto_register: must be one of auto|true|false (got \"no\")", NULL, NULL },
    { "{\"mqtt\":{\"invalid_telemetry\":\"ack\"}}", NULL, "mqtt.invalid_telemetry",
      "\"ack\"" },
    { "{\"mqtt\":{\"invalid_telemetry\":\"drop\"}}",
      "config: mqtt.invalid_telemetry: must be one of disconnect|ack (got \"drop\")", NULL,
      NULL },
    { "{\"mqtt\":{\"invalid_telemetry\":true}}",
      "config: mqtt.invalid_telemetry: must be a string (got true)", NULL, NULL },
    /* json */
    { "{\"mqtt\":{\"acl\":[{\"topic\" : \"x/#\", \"allow\": [\"sub\"]}]}}", NULL, "mqtt.acl",
      "[{\"topic\":\"x/#\",\"allow\":[\"sub\"]}]" },
    { "{\"mqtt\":{\"acl\":{}}}", "config: mqtt.acl: must be a JSON array (got an object)", NULL,
      NULL },
    { "{\"mqtt\":{\"acl\":\"[]\"}}", "config: mqtt.acl: must be a JSON array (got a string)",
      NULL, NULL },
    /* shape */
    { "{\"http\":{\"prot\":1}}", "config: unknown key \"http.prot\" (did you mean http.port?)",
      NULL, NULL },
    { "{\"http\":{\"port\":9000,\"prot\":1}}",
      "config: unknown key \"http.prot\" (did you mean http.port?)", NULL, NULL },
    /* did you mean: the same leaf in another section, else a near name; far: nothing */
    { "{\"mqtt\":{\"max_connections\":5}}",
      "config: unknown key \"mqtt.max_connections\" (did you mean limits.max_connections?)",
      NULL, NULL },
    { "{\"storage\":{\"retention_day\":5}}",
      "config: unknown key \"storage.retention_day\" (did you mean storage.retention_days?)",
      NULL, NULL },
    { "{\"http\":{\"colour\":1}}", "config: unknown key \"http.colour\"", NULL, NULL },
    { "{\"htpp\":{}}", "config: unknown section \"htpp\" (did you mean http?)", NULL, NULL },
    /* every error of a document at once, one per line; nothing of it is applied */
    { "{\"http\":{\"prot\":1,\"port\":\"x\",\"ws_echo\":true},\"lgo\":{},\"line\":5}",
      "config: unknown key \"http.prot\" (did you mean http.port?)\n"
      "config: http.port: must be an integer in 0..65535 (got a string)\n"
      "config: unknown section \"lgo\" (did you mean log?)\n"
      "config: line: must be an object", NULL, NULL },
    { "{\"htp\":{}}", "config: unknown section \"htp\" (did you mean http?)", NULL, NULL },
    { "{\"network\":{}}", "config: unknown section \"network\"", NULL, NULL },
    { "{\"http\":5}", "config: http: must be an object", NULL, NULL },
    { "{\"http\":[]}", "config: http: must be an object", NULL, NULL },
    { "[]", "config: top level must be a JSON object", NULL, NULL },
    { "42", "config: top level must be a JSON object", NULL, NULL },
    /* bad JSON */
    { "", "config: invalid JSON near line 1", NULL, NULL },
    { "{\"http\":{\"port\":}}", "config: invalid JSON near line 1", NULL, NULL },
    { "{\n\"http\": {\n\"port\": }\n}", "config: invalid JSON near line 3", NULL, NULL },
    { "{}\n\nx", "config: invalid JSON near line 3", NULL, NULL },
    { "{\"http\":{\"port\":1}", "config: invalid JSON near line 1", NULL, NULL },
};

static void test_json(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof json_cases / sizeof json_cases[0]; i++)
        check_case(&json_cases[i], apply_json_str);
}

static void test_json_acl_too_long(void **state)
{
    struct config c;
    char json[8192], err[256];
    size_t o = (size_t)snprintf(json, sizeof json, "{\"mqtt\":{\"acl\":[");

    (void)state;
    for (int i = 0; i < 500; i++)
        o += (size_t)snprintf(json + o, sizeof json - o, "%s\"rule%04d\"", i ? "," : "", i);
    snprintf(json + o, sizeof json - o, "]}}");
    config_defaults(&c);
    assert_int_equal(apply_json_both(&c, json, err, sizeof err), -1);
    assert_string_equal(err, "config: mqtt.acl: must be at most 4095 bytes as compact JSON "
                             "(got 5501)");
    assert_string_equal(c.mqtt.acl_json, "[]");
}

#define BOOL_CASE(s, v) { "http.ws_echo=" s, NULL, "http.ws_echo", v }
#define BOOL_ERR(got) \
    "config: http.ws_echo: must be true, false, 1, 0, yes, no, on or off (got " got ")"
#define SIZE_ERR(k, range, got) \
    "config: " k ": must be a size in " range ", optionally with k, m or g (got " got ")"

static const struct value_case set_cases[] = {
    /* int */
    { "http.port=9002", NULL, "http.port", "9002" },
    { "http.port=+80", NULL, "http.port", "80" },
    { "http.port=0", NULL, "http.port", "0" },
    { "http.port=abc", PORT_ERR("http.port", "\"abc\""), NULL, NULL },
    { "http.port=", PORT_ERR("http.port", "\"\""), NULL, NULL },
    { "http.port= 80", PORT_ERR("http.port", "\" 80\""), NULL, NULL },
    { "http.port=80 ", PORT_ERR("http.port", "\"80 \""), NULL, NULL },
    { "http.port=0x50", PORT_ERR("http.port", "\"0x50\""), NULL, NULL },
    { "http.port=8k", PORT_ERR("http.port", "\"8k\""), NULL, NULL },
    { "http.port=-1", PORT_ERR("http.port", "\"-1\""), NULL, NULL },
    { "http.port=65536", PORT_ERR("http.port", "\"65536\""), NULL, NULL },
    { "http.port=99999999999999999999999", PORT_ERR("http.port", "\"99999999999999999999999\""),
      NULL, NULL },
    { "limits.idle_timeout_ms=0",
      "config: limits.idle_timeout_ms: must be an integer in 1..86400000 (got \"0\")", NULL,
      NULL },
    /* size */
    { "storage.batch_rows=500", NULL, "storage.batch_rows", "500" },
    { "storage.queue_high_bytes=128m", NULL, "storage.queue_high_bytes", "134217728" },
    { "storage.queue_high_bytes=1k",
      "config: storage.queue_high_bytes: must be a size in 4096..68719476736 (got \"1k\")",
      NULL, NULL },
    /* deprecated, no effect, still accepted so old configs load */
    { "storage.batch_delay_ms=60000", NULL, "storage.batch_delay_ms", "60000" },
    { "line.max_line_bytes=64k", NULL, "line.max_line_bytes", "65536" },
    { "http.max_body_bytes=2M", NULL, "http.max_body_bytes", "2097152" },
    { "http.max_body_bytes=1g", NULL, "http.max_body_bytes", "1073741824" },
    { "http.max_body_bytes=2g",
      "config: http.max_body_bytes: must be a size in 0..1073741824 (got \"2g\")", NULL, NULL },
    { "http.max_body_bytes=-5",
      "config: http.max_body_bytes: must be a size in 0..1073741824 (got \"-5\")", NULL, NULL },
    { "http.max_body_bytes=1kb", SIZE_ERR("http.max_body_bytes", "0..1073741824", "\"1kb\""),
      NULL, NULL },
    { "http.max_body_bytes=k", SIZE_ERR("http.max_body_bytes", "0..1073741824", "\"k\""), NULL,
      NULL },
    { "http.max_body_bytes=99999999999999999999g",
      SIZE_ERR("http.max_body_bytes", "0..1073741824", "\"99999999999999999999g\""), NULL,
      NULL },
    /* bool: every spelling */
    BOOL_CASE("true", "true"), BOOL_CASE("TRUE", "true"), BOOL_CASE("1", "true"),
    BOOL_CASE("yes", "true"), BOOL_CASE("Yes", "true"), BOOL_CASE("on", "true"),
    BOOL_CASE("ON", "true"), BOOL_CASE("false", "false"), BOOL_CASE("False", "false"),
    BOOL_CASE("0", "false"), BOOL_CASE("no", "false"), BOOL_CASE("NO", "false"),
    BOOL_CASE("off", "false"), BOOL_CASE("Off", "false"),
    { "http.ws_echo=maybe", BOOL_ERR("\"maybe\""), NULL, NULL },
    { "http.ws_echo=", BOOL_ERR("\"\""), NULL, NULL },
    { "http.ws_echo=2", BOOL_ERR("\"2\""), NULL, NULL },
    { "http.ws_echo=y", BOOL_ERR("\"y\""), NULL, NULL },
    { "http.ws_echo=\x01\"x", BOOL_ERR("\"\\x01\\\"x\""), NULL, NULL },
    { "http.ws_echo=" LONG64, BOOL_ERR("\"" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\""), NULL,
      NULL },
    /* string */
    { "gateway.data_dir=/srv/gale", NULL, "gateway.data_dir", "\"/srv/gale\"" },
    { "gateway.data_dir=", "config: gateway.data_dir: must not be empty", NULL, NULL },
    { "http.api_key=", NULL, "http.api_key", "\"\"" },
    { "http.api_key=a=b", NULL, "http.api_key", "\"***\"" },
    { "storage.path=/tmp/x.db", NULL, "storage.path", "\"/tmp/x.db\"" },
    { "http.bind=" LONG64, "config: http.bind: must be at most 63 bytes long (got 64 bytes)",
      NULL, NULL },
    /* enum */
    { "log.level=warn", NULL, "log.level", "\"warn\"" },
    { "log.level=error", NULL, "log.level", "\"error\"" },
    { "log.format=xml", "config: log.format: must be one of text|json (got \"xml\")", NULL, NULL },
    { "storage.sync=full", NULL, "storage.sync", "\"full\"" },
    { "storage.sync=normal", NULL, "storage.sync", "\"normal\"" },
    { "storage.sync=FULL", "config: storage.sync: must be one of full|normal (got \"FULL\")",
      NULL, NULL },
    { "devices.auto_register=true", NULL, "devices.auto_register", "\"true\"" },
    { "mqtt.invalid_telemetry=ack", NULL, "mqtt.invalid_telemetry", "\"ack\"" },
    { "mqtt.invalid_telemetry=disconnect", NULL, "mqtt.invalid_telemetry", "\"disconnect\"" },
    { "mqtt.invalid_telemetry=close",
      "config: mqtt.invalid_telemetry: must be one of disconnect|ack (got \"close\")", NULL,
      NULL },
    /* json */
    { "mqtt.acl=[1, 2]", NULL, "mqtt.acl", "[1,2]" },
    { "mqtt.acl=[]", NULL, "mqtt.acl", "[]" },
    { "mqtt.acl={}", "config: mqtt.acl: must be a JSON array", NULL, NULL },
    { "mqtt.acl=nope", "config: mqtt.acl: must be a JSON array (got invalid JSON \"nope\")", NULL,
      NULL },
    { "mqtt.acl=", "config: mqtt.acl: must be a JSON array (got invalid JSON \"\")", NULL, NULL },
    { "mqtt.acl=[] x", "config: mqtt.acl: must be a JSON array (got invalid JSON \"[] x\")",
      NULL, NULL },
    { "mqtt.acl= [ ] ", NULL, "mqtt.acl", "[]" },
    /* shape */
    { "http.prot=1", "config: unknown key \"http.prot\" (did you mean http.port?)", NULL, NULL },
    { "HTTP.PORT_=1", "config: unknown key \"HTTP.PORT_\" (did you mean http.port?)", NULL,
      NULL },
    { "nosuch.key=1", "config: unknown key \"nosuch.key\"", NULL, NULL },
    { "http.=1", "config: unknown key \"http.\"", NULL, NULL },
    { "port=1", "config: --set \"port=1\": expected section.key=value", NULL, NULL },
    { "http.port", "config: --set \"http.port\": expected section.key=value", NULL, NULL },
    { "", "config: --set \"\": expected section.key=value", NULL, NULL },
};

static void test_set(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof set_cases / sizeof set_cases[0]; i++)
        check_case(&set_cases[i], apply_set_str);
}

static const struct value_case env_cases[] = {
    { "GALE_HTTP_PORT=9001", NULL, "http.port", "9001" },
    { "GALE_HTTP_API_KEY=k1", NULL, "http.api_key", "\"***\"" },
    { "GALE_STORAGE_BATCH_ROWS=500", NULL, "storage.batch_rows", "500" },
    { "GALE_STORAGE_SYNC=normal", NULL, "storage.sync", "\"normal\"" },
    { "GALE_MQTT_INVALID_TELEMETRY=ack", NULL, "mqtt.invalid_telemetry", "\"ack\"" },
    { "GALE_GATEWAY_DATA_DIR=/srv/gale", NULL, "gateway.data_dir", "\"/srv/gale\"" },
    { "GALE_MQTT_ALLOW_ANONYMOUS=yes", NULL, "mqtt.allow_anonymous", "true" },
    { "GALE_LINE_MAX_LINE_BYTES=1k", NULL, "line.max_line_bytes", "1024" },
    { "GALE_MQTT_ACL=[\"a\"]", NULL, "mqtt.acl", "[\"a\"]" },
    { "GALE_LOG_LEVEL=debug", NULL, "log.level", "\"debug\"" },
    { "GALE_http_port=9003", NULL, "http.port", "9003" },
    { "GALE_HTTP_PORT=1\nGALE_HTTP_PORT=2", NULL, "http.port", "2" },
    /* not ours: ignored */
    { "PATH=/bin\nGALE_BIN=/usr/bin/gale\nGALE_CONFIG=x.json\nGALE_LOG=1\nGALE_FOO_BAR=1\n"
      "GALE_=1\nGALE_HTTP\nXGALE_HTTP_PROT=1\nGALE_HTTPX_PORT=1",
      NULL, "http.port", "8080" },
    /* errors */
    { "GALE_HTTP_PROT=1",
      "config: unknown key \"http.prot\" (did you mean http.port?) (from environment variable "
      "\"GALE_HTTP_PROT\")", NULL,
      NULL },
    { "GALE_LOG_FILE=/tmp/x",
      "config: unknown key \"log.file\" (from environment variable \"GALE_LOG_FILE\")", NULL,
      NULL },
    { "GALE_HTTP_=1", "config: unknown key \"http.\" (from environment variable \"GALE_HTTP_\")",
      NULL, NULL },
    { "GALE_HTTP_PORT=abc",
      PORT_ERR("http.port", "\"abc\"") " (from environment variable \"GALE_HTTP_PORT\")", NULL,
      NULL },
    { "GALE_HTTP_PORT=9001\nGALE_HTTP_PROT=1",
      "config: unknown key \"http.prot\" (did you mean http.port?) (from environment variable "
      "\"GALE_HTTP_PROT\")", NULL,
      NULL },
    { "GALE_HTTP_WS_ECHO=maybe",
      BOOL_ERR("\"maybe\"") " (from environment variable \"GALE_HTTP_WS_ECHO\")", NULL, NULL },
    /* every error at once, each naming its variable */
    { "GALE_HTTP_PORT=x\nGALE_LINE_PORTT=1\nGALE_MQTT_PORT=2",
      PORT_ERR("http.port", "\"x\"") " (from environment variable \"GALE_HTTP_PORT\")\n"
      "config: unknown key \"line.portt\" (did you mean line.port?) (from environment variable "
      "\"GALE_LINE_PORTT\")", NULL, NULL },
};

static void test_env(void **state)
{
    struct config c;
    char err[64];

    (void)state;
    for (size_t i = 0; i < sizeof env_cases / sizeof env_cases[0]; i++)
        check_case(&env_cases[i], apply_env_str);
    config_defaults(&c);
    assert_int_equal(config_apply_env(&c, NULL, err, sizeof err), 0);
}

static void test_api_key_redacted(void **state)
{
    struct config c;
    char err[256], *j;

    (void)state;
    config_defaults(&c);
    assert_int_equal(config_apply_set(&c, "http.api_key=s3cr3t-key", err, sizeof err), 0);
    assert_string_equal(c.http.api_key, "s3cr3t-key");
    j = config_to_json(&c);
    assert_null(strstr(j, "s3cr3t"));
    assert_non_null(strstr(j, "\"***\""));
    free(j);
}

static char *write_temp(const char *text, size_t len)
{
    char *path = strdup("/tmp/gale-test-config-XXXXXX");
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_precedence(void **state)
{
    const char *file = "{\"http\":{\"port\":9000},\"mqtt\":{\"port\":1900}}";
    char *env[] = { "GALE_HTTP_PORT=9001", "GALE_LINE_PORT=7001", NULL };
    char *path = write_temp(file, strlen(file)), err[256];
    struct config c;

    (void)state;
    config_defaults(&c);
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), 0);
    assert_int_equal(c.http.port, 9000);
    assert_int_equal(c.mqtt.port, 1900);
    assert_int_equal(c.line.port, 7000);
    assert_int_equal(config_apply_env(&c, env, err, sizeof err), 0);
    assert_int_equal(c.http.port, 9001);
    assert_int_equal(c.mqtt.port, 1900);
    assert_int_equal(c.line.port, 7001);
    assert_int_equal(config_apply_set(&c, "http.port=9002", err, sizeof err), 0);
    assert_int_equal(c.http.port, 9002);
    assert_int_equal(c.mqtt.port, 1900);
    assert_int_equal(c.line.port, 7001);
    assert_int_equal(config_validate(&c, err, sizeof err), 0);
    unlink(path);
    free(path);
}

static void test_file_errors(void **state)
{
    struct config c, before;
    char err[512], want[512], *path, *big;
    const char *bad = "{\n\"http\": {\n\"port\": }\n}";
    const size_t big_len = 1024 * 1024 + 1;

    (void)state;
    config_defaults(&c);
    before = c;
    assert_int_equal(config_apply_file(&c, "/nonexistent-gale/x.json", err, sizeof err), -1);
    assert_string_equal(err, "config: /nonexistent-gale/x.json: cannot read: No such file or "
                             "directory");
    assert_int_equal(config_apply_file(&c, "/", err, sizeof err), -1);
    assert_string_equal(err, "config: /: cannot read: Is a directory");

    path = write_temp(bad, strlen(bad));
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "config: %s: invalid JSON near line 3", path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);

    path = write_temp("", 0);
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "config: %s: invalid JSON near line 1", path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);

    path = write_temp("[1]", 3);
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "config: %s: top level must be a JSON object", path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);

    path = write_temp("{\"http\":{\"port\":\"x\"}}", 21);
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s (in %s)", PORT_ERR("http.port", "a string"), path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);

    big = malloc(big_len);
    memset(big, ' ', big_len);
    big[0] = '{';
    big[big_len - 1] = '}';
    path = write_temp(big, big_len);
    assert_int_equal(config_apply_file(&c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "config: %s: larger than 1048576 bytes", path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);
    free(big);

    assert_config_equal(&c, &before);
    /* err may be NULL or tiny: still -1, never an overflow */
    assert_int_equal(config_apply_set(&c, "http.port=x", NULL, 0), -1);
    assert_int_equal(config_apply_set(&c, "http.port=x", err, 4), -1);
    assert_string_equal(err, "con");
}

struct validate_case {
    const char *sets[4]; /* --set assignments applied to the defaults first */
    const char *err;     /* exact error, or NULL */
};

static const struct validate_case validate_cases[] = {
    { { NULL }, NULL },
    { { "storage.queue_low_rows=199999" }, NULL },
    { { "storage.queue_low_rows=200000" },
      "config: storage.queue_low_rows (200000) must be less than storage.queue_high_rows "
      "(200000)" },
    { { "storage.queue_high_rows=10", "storage.queue_low_rows=0" },
      "config: storage.batch_rows (10000) must not exceed storage.queue_high_rows (10)" },
    { { "storage.queue_high_rows=10000", "storage.queue_low_rows=0" }, NULL },
    { { "storage.queue_low_bytes=32m", "storage.queue_high_bytes=32m" },
      "config: storage.queue_low_bytes (33554432) must be less than storage.queue_high_bytes "
      "(33554432)" },
    { { "storage.queue_high_bytes=1m", "storage.queue_low_bytes=0" }, NULL },
    { { "line.port=8080" }, "config: http.port and line.port are both 8080" },
    { { "mqtt.port=7000" }, "config: line.port and mqtt.port are both 7000" },
    { { "mqtt.port=7000", "line.enabled=false" }, NULL },
    { { "mqtt.port=7000", "mqtt.enabled=off" }, NULL },
    { { "mqtt.port=7000", "mqtt.bind=127.0.0.1", "line.bind=127.0.0.2" }, NULL },
    { { "mqtt.port=7000", "mqtt.bind=127.0.0.1" },
      "config: line.port and mqtt.port are both 7000" },
    { { "http.port=0", "line.port=0", "mqtt.port=0" }, NULL },
};

static void test_validate(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof validate_cases / sizeof validate_cases[0]; i++) {
        const struct validate_case *v = &validate_cases[i];
        struct config c;
        char err[512] = "";
        config_defaults(&c);
        for (size_t j = 0; j < 4 && v->sets[j]; j++)
            if (config_apply_set(&c, v->sets[j], err, sizeof err) != 0)
                fail_msg("case %zu: %s", i, err);
        if (v->err) {
            assert_int_equal(config_validate(&c, err, sizeof err), -1);
            assert_string_equal(err, v->err);
        } else if (config_validate(&c, err, sizeof err) != 0) {
            fail_msg("case %zu: %s", i, err);
        }
    }
}

/* Fields written directly by code (not through the setters) are checked too. */
static void test_validate_fields(void **state)
{
    struct config c;
    char err[512];

    (void)state;
    config_defaults(&c);
    c.http.port = 70000;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, PORT_ERR("http.port", "70000"));

    config_defaults(&c); /* every error at once, one per line */
    c.http.port = 70000;
    c.storage.queue_low_rows = c.storage.queue_high_rows;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, PORT_ERR("http.port", "70000") "\n"
                             "config: storage.queue_low_rows (200000) must be less than "
                             "storage.queue_high_rows (200000)");

    config_defaults(&c);
    c.storage.batch_rows = 0;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: storage.batch_rows: must be a size in 1..1000000 (got 0)");

    config_defaults(&c);
    c.line.max_line_bytes = (size_t)-1;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "config: line.max_line_bytes: must be a size in 64..1073741824"));

    config_defaults(&c);
    strcpy(c.log.level, "loud");
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: log.level: must be one of debug|info|warn|error (got "
                             "\"loud\")");

    config_defaults(&c);
    c.devices.auto_register = (enum config_register)7;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: devices.auto_register: must be one of auto|true|false "
                             "(got 7)");

    config_defaults(&c);
    c.storage.sync = (enum config_sync)5;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: storage.sync: must be one of full|normal (got 5)");

    config_defaults(&c);
    c.mqtt.invalid_telemetry = (enum config_invalid_telemetry)2;
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: mqtt.invalid_telemetry: must be one of disconnect|ack "
                             "(got 2)");

    config_defaults(&c);
    strcpy(c.mqtt.acl_json, "{}");
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: mqtt.acl: must be a JSON array");

    config_defaults(&c);
    strcpy(c.mqtt.acl_json, "[");
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: mqtt.acl: must be a JSON array (got invalid JSON)");

    config_defaults(&c);
    memset(c.http.bind, 'a', sizeof c.http.bind);
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: http.bind: not NUL-terminated");

    config_defaults(&c);
    c.data_dir[0] = '\0';
    assert_int_equal(config_validate(&c, err, sizeof err), -1);
    assert_string_equal(err, "config: gateway.data_dir: must not be empty");
}

/* Every key of config_to_json(defaults), as "section.key", fed to fn. */
static void for_each_key(void (*fn)(const char *name, const char *env, void *ctx), void *ctx)
{
    struct config c;
    char *json, name[128], env[128];
    cJSON *root, *sec, *item;

    config_defaults(&c);
    json = config_to_json(&c);
    root = cJSON_Parse(json);
    assert_non_null(root);
    cJSON_ArrayForEach(sec, root) {
        cJSON_ArrayForEach(item, sec) {
            size_t i;
            snprintf(name, sizeof name, "%s.%s", sec->string, item->string);
            snprintf(env, sizeof env, "GALE_%s_%s", sec->string, item->string);
            for (i = 0; env[i]; i++)
                env[i] = (char)(env[i] >= 'a' && env[i] <= 'z' ? env[i] - 32 : env[i]);
            fn(name, env, ctx);
        }
    }
    cJSON_Delete(root);
    free(json);
}

struct ref_ctx {
    const char *text; /* the printed reference */
    int markdown;     /* 1: also expect a "| `key` |" table row */
    int nkeys;        /* keys seen */
};

static void check_in_reference(const char *name, const char *env, void *ctx)
{
    struct ref_ctx *r = ctx;
    char row[256];

    r->nkeys++;
    snprintf(row, sizeof row, "| `%s` |", name);
    if (strstr(r->text, name) == NULL || strstr(r->text, env) == NULL)
        fail_msg("reference lacks %s / %s", name, env);
    /* the Markdown table has a row for it */
    if (r->markdown && !strstr(r->text, row))
        fail_msg("markdown reference lacks row %s", row);
}

static void test_reference(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f;
    struct ref_ctx r = { NULL, 0, 0 };
    int rows = 0;

    (void)state;
    f = open_memstream(&text, &len);
    config_print_reference_markdown(f);
    fclose(f);
    r.text = text;
    r.markdown = 1;
    r.nkeys = 0;
    for_each_key(check_in_reference, &r);
    for (const char *p = text; (p = strstr(p, "\n| `")) != NULL; p++)
        rows++;
    assert_int_equal(rows + (strncmp(text, "| `", 3) == 0), r.nkeys);
    free(text);
}

/* Setting every key from its own to_json value through --set gives the same config. */
static void set_from_defaults(const char *name, const char *env, void *ctx)
{
    struct config *c = ctx;
    char *v = value_of(c, name), assign[4200], err[256];

    (void)env;
    if (v[0] == '"') { /* a JSON string: --set takes it bare */
        cJSON *s = cJSON_Parse(v);
        snprintf(assign, sizeof assign, "%s=%s", name, cJSON_GetStringValue(s));
        cJSON_Delete(s);
    } else {
        snprintf(assign, sizeof assign, "%s=%s", name, v);
    }
    if (config_apply_set(c, assign, err, sizeof err) != 0)
        fail_msg("%s: %s", assign, err);
    cJSON_free(v);
}

static void test_set_roundtrip(void **state)
{
    struct config a, b;
    char *ja, *jb;

    (void)state;
    config_defaults(&a);
    config_defaults(&b);
    for_each_key(set_from_defaults, &b);
    ja = config_to_json(&a);
    jb = config_to_json(&b);
    assert_string_equal(ja, jb);
    free(ja);
    free(jb);
}

static void test_gateway_json(void **state)
{
    struct config defaults, loaded;
    char err[512], *def_json, *text;
    cJSON *file, *want;
    FILE *f;
    long len;

    (void)state;
    assert_non_null(gateway_json_path);
    f = fopen(gateway_json_path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = calloc(1, (size_t)len + 1);
    assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
    fclose(f);

    /* same keys, same values, nothing extra: the file is the defaults written out */
    config_defaults(&defaults);
    def_json = config_to_json(&defaults);
    file = cJSON_Parse(text);
    want = cJSON_Parse(def_json);
    assert_non_null(file);
    assert_non_null(want);
    if (!cJSON_Compare(file, want, 1))
        fail_msg("config/gateway.json differs from the embedded defaults:\n%s", def_json);

    /* and it loads: applied over the defaults it changes nothing */
    config_defaults(&loaded);
    if (config_apply_file(&loaded, gateway_json_path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_config_equal(&loaded, &defaults);
    cJSON_Delete(file);
    cJSON_Delete(want);
    free(def_json);
    free(text);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_json_acl_too_long),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_api_key_redacted),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_validate_fields),
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_set_roundtrip),
        cmocka_unit_test(test_gateway_json),
    };

    if (argc != 2) {
        fprintf(stderr, "usage: %s path/to/config/gateway.json\n", argv[0]);
        return 2;
    }
    gateway_json_path = argv[1];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
