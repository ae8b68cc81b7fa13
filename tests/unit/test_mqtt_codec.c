/* tests/unit/test_mqtt_codec.c: the MQTT 3.1.1 decoder and encoders (protocols/mqtt/codec.c)
 * and the UTF-8 check (topic.c).
 *
 * Cases are tables of bytes -> the decoded packet (as one line of text, see describe())
 * or the error reason. Every case is decoded whole, from every prefix (NEED_MORE, or the
 * same error early), split in two at every offset and fed one byte at a time through a
 * connection-like feed loop; all must agree. Bytes are written as hex with 'quoted text'
 * (see parse_spec()). Decoding always reads from an exact-size heap copy, so a sanitizer
 * build catches any read past the input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/buf.h"
#include "base/err.h"
#include "protocols/mqtt/mqtt.h"
#include "protocols/mqtt/mqtt_int.h"

#define DEFAULT_MAX 4096
#define NO_LIMIT ((size_t)-1) /* case.max: lim.max_packet_bytes = 0 (protocol maximum) */

/* ---- helpers */

/* "10 0c 'MQTT' 04": hex bytes and 'literal text', separated by spaces. */
static size_t parse_spec(const char *spec, uint8_t *out, size_t cap)
{
    size_t n = 0;
    const char *s = spec;

    while (*s) {
        if (*s == ' ') {
            s++;
        } else if (*s == '\'') {
            const char *end = strchr(s + 1, '\'');
            assert_non_null(end);
            assert_true(n + (size_t)(end - s - 1) <= cap);
            memcpy(out + n, s + 1, (size_t)(end - s - 1));
            n += (size_t)(end - s - 1);
            s = end + 1;
        } else {
            unsigned v;
            assert_int_equal(sscanf(s, "%2x", &v), 1);
            assert_true(n < cap);
            out[n++] = (uint8_t)v;
            s += 2;
        }
    }
    return n;
}

static void put_escaped(struct buf *b, const void *p, size_t n)
{
    const uint8_t *s = p;
    size_t i;

    buf_append(b, "'", 1);
    for (i = 0; i < n; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' && s[i] != '\\')
            buf_append(b, &s[i], 1);
        else
            buf_printf(b, "\\x%02x", s[i]);
    }
    buf_append(b, "'", 1);
}

/* One line of text per packet, with every decoded field. */
static void describe(struct buf *b, const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *c = &pkt->connect;
    const struct mqtt_publish *p = &pkt->publish;
    struct mqtt_str f;
    size_t off = 0, i;
    uint8_t opt;

    buf_append_str(b, mqtt_type_name(pkt->type));
    switch (pkt->type) {
    case MQTT_CONNECT:
        buf_printf(b, " %.*s/%u", (int)c->proto_name.len, c->proto_name.p, c->level);
        if (!((c->level == 4 && c->proto_name.len == 4)
              || (c->level == 3 && c->proto_name.len == 6)))
            break;
        buf_printf(b, " clean=%d keepalive=%u id=", c->clean_session, c->keepalive_s);
        put_escaped(b, c->client_id.p, c->client_id.len);
        if (c->will) {
            buf_printf(b, " will=q%u%s ", c->will_qos, c->will_retain ? "r" : "");
            put_escaped(b, c->will_topic.p, c->will_topic.len);
            buf_append_str(b, " ");
            put_escaped(b, c->will_payload.p, c->will_payload.len);
        }
        if (c->has_username) {
            buf_append_str(b, " user=");
            put_escaped(b, c->username.p, c->username.len);
        }
        if (c->has_password) {
            buf_append_str(b, " pass=");
            put_escaped(b, c->password.p, c->password.len);
        }
        break;
    case MQTT_CONNACK:
        buf_printf(b, " sp=%d rc=%u", pkt->connack.session_present, pkt->connack.rc);
        break;
    case MQTT_PUBLISH:
        buf_printf(b, " q%u%s%s id=%u ", p->qos, p->dup ? " dup" : "",
                   p->retain ? " retain" : "", pkt->id);
        put_escaped(b, p->topic.p, p->topic.len);
        buf_append_str(b, " ");
        put_escaped(b, p->payload, p->payload_len);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        buf_printf(b, " id=%u", pkt->id);
        while (mqtt_filter_next(pkt, &off, &f, &opt)) {
            buf_append_str(b, " ");
            put_escaped(b, f.p, f.len);
            if (pkt->type == MQTT_SUBSCRIBE)
                buf_printf(b, ":%u", opt);
        }
        break;
    case MQTT_SUBACK:
        buf_printf(b, " id=%u", pkt->id);
        for (i = 0; i < pkt->suback.count; i++)
            buf_printf(b, " %02x", pkt->suback.codes[i]);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        buf_printf(b, " id=%u", pkt->id);
        break;
    default:
        break;
    }
}

/* Decodes p[0..len) from an exact-size copy. Appends the description or "ERR <why>". */
static enum codec_rc decode_copy(const struct mqtt_limits *lim, const uint8_t *p, size_t len,
                                 size_t *used, struct buf *res)
{
    uint8_t *copy = malloc(len ? len : 1);
    struct mqtt_packet pkt;
    const char *why = NULL;
    enum codec_rc rc;

    memcpy(copy, p, len);
    *used = 0;
    rc = mqtt_decode(lim, copy, len, &pkt, used, &why);
    if (rc == CODEC_FRAME) {
        assert_true(*used >= 2 && *used <= len);
        describe(res, &pkt);
    } else if (rc == CODEC_ERROR) {
        assert_non_null(why);
        buf_printf(res, "ERR %s", why);
    }
    free(copy);
    return rc;
}

/* A connection's feed loop: bytes arrive in chunks ending at cuts[0..ncuts) and len;
 * each arrival decodes all complete packets and consumes once. One line per packet. */
static void feed(const struct mqtt_limits *lim, const uint8_t *p, size_t len,
                 const size_t *cuts, size_t ncuts, struct buf *res)
{
    struct buf in;
    size_t from = 0, k;
    int dead = 0;

    buf_init(&in);
    for (k = 0; k <= ncuts && !dead; k++) {
        size_t to = k < ncuts ? cuts[k] : len, off = 0;
        buf_append(&in, p + from, to - from);
        from = to;
        while (off < in.len) {
            size_t used;
            enum codec_rc rc = decode_copy(lim, in.data + off, in.len - off, &used, res);
            if (rc == CODEC_NEED_MORE)
                break;
            buf_append_str(res, "\n");
            if (rc == CODEC_ERROR) {
                dead = 1;
                break;
            }
            off += used;
        }
        buf_consume(&in, off);
    }
    if (!dead && in.len)
        buf_printf(res, "PARTIAL %zu\n", in.len);
    buf_fini(&in);
}

static void init_limits(struct mqtt_limits *lim, size_t max)
{
    lim->version = MQTT_V_UNKNOWN;
    lim->max_packet_bytes = max == 0 ? DEFAULT_MAX : max == NO_LIMIT ? 0 : max;
}

/* Checks one packet's bytes against an expected description or error, in every way
 * of arriving. want: the description, or "ERR <reason>". */
static void check_bytes(const char *name, const uint8_t *p, size_t len, size_t max,
                        const char *want)
{
    struct mqtt_limits lim;
    struct buf whole, res, line;
    size_t k, used, cut;
    int is_err = strncmp(want, "ERR ", 4) == 0, erred = 0;
    enum codec_rc rc;

    init_limits(&lim, max);
    buf_init(&whole);
    buf_init(&res);
    buf_init(&line);
    rc = decode_copy(&lim, p, len, &used, &line);
    if (strcmp(buf_cstr(&line), want) != 0 || (rc == CODEC_FRAME && used != len))
        fail_msg("%s: got \"%s\" (used %zu of %zu), want \"%s\"", name, buf_cstr(&line), used,
                 len, want);
    assert_int_equal(rc, is_err ? CODEC_ERROR : CODEC_FRAME);

    /* Every prefix: NEED_MORE, or (errors only) the same error, and then for good. */
    for (k = 0; k < len; k++) {
        line.len = 0;
        rc = decode_copy(&lim, p, k, &used, &line);
        if (rc == CODEC_FRAME || (rc == CODEC_NEED_MORE && erred)
            || (rc == CODEC_ERROR && (!is_err || strcmp(buf_cstr(&line), want) != 0)))
            fail_msg("%s: prefix %zu gave rc %d \"%s\"", name, k, rc, buf_cstr(&line));
        erred |= rc == CODEC_ERROR;
    }

    /* Fed whole, split at every offset, and a byte at a time: the same lines. */
    feed(&lim, p, len, NULL, 0, &whole);
    line.len = 0;
    buf_printf(&line, "%s\n", want);
    assert_string_equal(buf_cstr(&whole), buf_cstr(&line));
    for (cut = 1; cut < len; cut++) {
        res.len = 0;
        feed(&lim, p, len, &cut, 1, &res);
        if (strcmp(buf_cstr(&res), buf_cstr(&whole)) != 0)
            fail_msg("%s: split at %zu gave \"%s\"", name, cut, buf_cstr(&res));
    }
    {
        size_t *cuts = malloc(len * sizeof *cuts);
        for (k = 0; k + 1 < len; k++)
            cuts[k] = k + 1;
        res.len = 0;
        feed(&lim, p, len, cuts, len ? len - 1 : 0, &res);
        if (strcmp(buf_cstr(&res), buf_cstr(&whole)) != 0)
            fail_msg("%s: byte at a time gave \"%s\"", name, buf_cstr(&res));
        free(cuts);
    }
    buf_fini(&whole);
    buf_fini(&res);
    buf_fini(&line);
}

struct dcase {
    const char *name;
    const char *bytes;      /* parse_spec() text */
    const char *want;       /* description, or "ERR <reason>" */
    size_t max;             /* max_packet_bytes: 0 = DEFAULT_MAX, NO_LIMIT = 0 */
};

static void run_cases(const struct dcase *cases, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        uint8_t bytes[1024];
        size_t len = parse_spec(cases[i].bytes, bytes, sizeof bytes);
        check_bytes(cases[i].name, bytes, len, cases[i].max, cases[i].want);
    }
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- valid packets, every type */

static const struct dcase valid_cases[] = {
    { "connect minimal", "10 0c 00 04 'MQTT' 04 02 00 3c 00 00",
      "CONNECT MQTT/4 clean=1 keepalive=60 id=''", 0 },
    { "connect full",
      "10 1f 00 04 'MQTT' 04 ee 01 2c 00 02 'c1' 00 03 'a/b' 00 03 'bye' 00 01 'u' 00 02 'p' 00",
      "CONNECT MQTT/4 clean=1 keepalive=300 id='c1' will=q1r 'a/b' 'bye' user='u' "
      "pass='p\\x00'", 0 },
    { "connect will q2 no retain, persistent session",
      "10 12 00 04 'MQTT' 04 14 00 00 00 01 'x' 00 01 't' 00 00",
      "CONNECT MQTT/4 clean=0 keepalive=0 id='x' will=q2 't' ''", 0 },
    { "connect user only, utf-8 name",
      "10 11 00 04 'MQTT' 04 82 ff ff 00 01 'x' 00 02 c3 a9",
      "CONNECT MQTT/4 clean=1 keepalive=65535 id='x' user='\\xc3\\xa9'", 0 },
    { "connect empty password", "10 11 00 04 'MQTT' 04 c2 00 0a 00 00 00 01 'u' 00 00",
      "CONNECT MQTT/4 clean=1 keepalive=10 id='' user='u' pass=''", 0 },
    { "connect 3.1 MQIsdp", "10 0f 00 06 'MQIsdp' 03 02 00 0a 00 01 'x'",
      "CONNECT MQIsdp/3 clean=1 keepalive=10 id='x'", 0 },
    { "connect 5.0 is returned for CONNACK 0x01",
      "10 0d 00 04 'MQTT' 05 02 00 3c 00 00 00", "CONNECT MQTT/5", 0 },
    { "connect level 3 with name MQTT", "10 0c 00 04 'MQTT' 03 02 00 3c 00 00",
      "CONNECT MQTT/3", 0 },
    { "connect MQIsdp level 4", "10 0c 00 06 'MQIsdp' 04 02 00 00", "CONNECT MQIsdp/4", 0 },
    { "connect level 255, nothing after", "10 07 00 04 'MQTT' ff", "CONNECT MQTT/255", 0 },
    { "connect non-minimal remaining length",
      "10 8c 00 00 04 'MQTT' 04 02 00 3c 00 00", "CONNECT MQTT/4 clean=1 keepalive=60 id=''", 0 },
    { "connect 4-byte remaining length", "10 8c 80 80 00 00 04 'MQTT' 04 02 00 3c 00 00",
      "CONNECT MQTT/4 clean=1 keepalive=60 id=''", 0 },
    { "connack", "20 02 00 00", "CONNACK sp=0 rc=0", 0 },
    { "connack session present", "20 02 01 00", "CONNACK sp=1 rc=0", 0 },
    { "connack not authorized", "20 02 00 05", "CONNACK sp=0 rc=5", 0 },
    { "publish q0", "30 07 00 03 'a/b' 'hi'", "PUBLISH q0 id=0 'a/b' 'hi'", 0 },
    { "publish q0 retain, empty payload", "31 05 00 03 'a/b'",
      "PUBLISH q0 retain id=0 'a/b' ''", 0 },
    { "publish q1 dup retain", "3b 09 00 03 'a/b' 00 07 'hi'",
      "PUBLISH q1 dup retain id=7 'a/b' 'hi'", 0 },
    { "publish q2 empty payload", "34 07 00 03 'a/b' 12 34", "PUBLISH q2 id=4660 'a/b' ''", 0 },
    { "publish binary payload, utf-8 topic", "30 09 00 04 c3 bc '/x' 00 ff 'z'",
      "PUBLISH q0 id=0 '\\xc3\\xbc/x' '\\x00\\xffz'", 0 },
    { "publish $SYS topic", "30 08 00 06 '$SYS/x'", "PUBLISH q0 id=0 '$SYS/x' ''", 0 },
    { "publish topic /", "30 03 00 01 '/'", "PUBLISH q0 id=0 '/' ''", 0 },
    { "publish topic with space and 4-byte utf-8", "30 09 00 07 'a b' f0 9f 98 80",
      "PUBLISH q0 id=0 'a b\\xf0\\x9f\\x98\\x80' ''", 0 },
    { "puback", "40 02 00 01", "PUBACK id=1", 0 },
    { "pubrec", "50 02 12 34", "PUBREC id=4660", 0 },
    { "pubrel", "62 02 ff ff", "PUBREL id=65535", 0 },
    { "pubcomp", "70 02 00 05", "PUBCOMP id=5", 0 },
    { "subscribe #", "82 06 00 01 00 01 '#' 00", "SUBSCRIBE id=1 '#':0", 0 },
    { "subscribe three",
      "82 1d 00 0a 00 03 'a/+' 01 00 0e 'sport/tennis/#' 02 00 01 '+' 00",
      "SUBSCRIBE id=10 'a/+':1 'sport/tennis/#':2 '+':0", 0 },
    { "subscribe empty levels", "82 0e 00 02 00 02 '//' 01 00 04 '/+/#' 02",
      "SUBSCRIBE id=2 '//':1 '/+/#':2", 0 },
    { "suback", "90 05 00 01 00 01 80", "SUBACK id=1 00 01 80", 0 },
    { "suback one", "90 03 00 09 02", "SUBACK id=9 02", 0 },
    { "unsubscribe", "a2 07 00 02 00 03 'a/+'", "UNSUBSCRIBE id=2 'a/+'", 0 },
    { "unsubscribe two", "a2 0a 00 03 00 01 '#' 00 03 'x/y'", "UNSUBSCRIBE id=3 '#' 'x/y'", 0 },
    { "unsuback", "b0 02 00 02", "UNSUBACK id=2", 0 },
    { "pingreq", "c0 00", "PINGREQ", 0 },
    { "pingresp", "d0 00", "PINGRESP", 0 },
    { "disconnect", "e0 00", "DISCONNECT", 0 },
    { "pingreq, non-minimal length", "c0 80 00", "PINGREQ", 0 },
    { "publish under no limit", "30 07 00 03 'a/b' 'hi'", "PUBLISH q0 id=0 'a/b' 'hi'",
      NO_LIMIT },
    { "publish exactly at the limit", "30 07 00 03 'a/b' 'hi'", "PUBLISH q0 id=0 'a/b' 'hi'", 9 },
};

/* ---- malformed packets, with their reasons */

static const struct dcase error_cases[] = {
    /* fixed header */
    { "type 0", "00 00", "ERR reserved packet type", 0 },
    { "type 15 (5.0 AUTH)", "f0 00", "ERR reserved packet type", 0 },
    { "connect flags", "11 0c 00 04 'MQTT' 04 02 00 3c 00 00",
      "ERR invalid fixed header flags", 0 },
    { "connack flags", "28 02 00 00", "ERR invalid fixed header flags", 0 },
    { "puback flags", "42 02 00 01", "ERR invalid fixed header flags", 0 },
    { "pubrec flags", "52 02 00 01", "ERR invalid fixed header flags", 0 },
    { "pubrel flags 0", "60 02 00 01", "ERR invalid fixed header flags", 0 },
    { "pubrel flags 3", "63 02 00 01", "ERR invalid fixed header flags", 0 },
    { "pubcomp flags", "71 02 00 01", "ERR invalid fixed header flags", 0 },
    { "subscribe flags 0", "80 06 00 01 00 01 '#' 00", "ERR invalid fixed header flags", 0 },
    { "subscribe flags a", "8a 06 00 01 00 01 '#' 00", "ERR invalid fixed header flags", 0 },
    { "suback flags", "92 03 00 01 00", "ERR invalid fixed header flags", 0 },
    { "unsubscribe flags", "a0 05 00 01 00 01 '#'", "ERR invalid fixed header flags", 0 },
    { "unsuback flags", "b2 02 00 01", "ERR invalid fixed header flags", 0 },
    { "pingreq flags", "c1 00", "ERR invalid fixed header flags", 0 },
    { "pingresp flags", "d8 00", "ERR invalid fixed header flags", 0 },
    { "disconnect flags", "e2 00", "ERR invalid fixed header flags", 0 },
    { "publish qos 3", "36 05 00 03 'a/b'", "ERR invalid QoS", 0 },
    { "publish qos 3 dup retain", "3f 05 00 03 'a/b'", "ERR invalid QoS", 0 },
    { "publish dup on qos 0", "38 05 00 03 'a/b'", "ERR DUP set on QoS 0 PUBLISH", 0 },
    { "remaining length 5 bytes", "30 ff ff ff ff 7f", "ERR malformed remaining length",
      NO_LIMIT },
    { "remaining length 5 bytes of zeros", "30 80 80 80 80 00",
      "ERR malformed remaining length", 0 },
    { "too large once the header is known", "30 ff 7f 00 03 'a/b'", "ERR packet too large", 0 },
    { "too large before the header ends", "30 ff ff 01 00 03 'a/b'", "ERR packet too large", 100 },
    { "one byte over the limit", "30 07 00 03 'a/b' 'hi'", "ERR packet too large", 8 },
    { "pingreq with a body", "c0 01 00", "ERR invalid remaining length", 0 },
    { "pingresp with a body", "d0 01 00", "ERR invalid remaining length", 0 },
    { "disconnect with a body", "e0 02 00 00", "ERR invalid remaining length", 0 },
    { "puback short", "40 01 01", "ERR invalid remaining length", 0 },
    { "puback long", "40 03 00 01 00", "ERR invalid remaining length", 0 },
    { "connack long", "20 03 00 00 00", "ERR invalid remaining length", 0 },
    { "unsuback short", "b0 00", "ERR invalid remaining length", 0 },
    { "pubrel huge (rejected from the header)", "62 ff ff ff 7f", "ERR packet too large", 0 },
    { "pubrel huge, no limit", "62 ff ff ff 7f", "ERR invalid remaining length", NO_LIMIT },
    /* packet ids [MQTT-2.3.1-1] */
    { "puback id 0", "40 02 00 00", "ERR packet id is 0", 0 },
    { "pubrec id 0", "50 02 00 00", "ERR packet id is 0", 0 },
    { "pubrel id 0", "62 02 00 00", "ERR packet id is 0", 0 },
    { "pubcomp id 0", "70 02 00 00", "ERR packet id is 0", 0 },
    { "unsuback id 0", "b0 02 00 00", "ERR packet id is 0", 0 },
    { "publish q1 id 0", "32 07 00 03 'a/b' 00 00", "ERR packet id is 0", 0 },
    { "publish q2 id 0", "34 08 00 03 'a/b' 00 00 'x'", "ERR packet id is 0", 0 },
    { "subscribe id 0", "82 06 00 00 00 01 '#' 00", "ERR packet id is 0", 0 },
    { "unsubscribe id 0", "a2 05 00 00 00 01 '#'", "ERR packet id is 0", 0 },
    { "suback id 0", "90 03 00 00 00", "ERR packet id is 0", 0 },
    /* PUBLISH */
    { "publish empty topic", "30 02 00 00", "ERR invalid topic name", 0 },
    { "publish topic +", "30 05 00 03 'a/+'", "ERR invalid topic name", 0 },
    { "publish topic #", "30 03 00 01 '#'", "ERR invalid topic name", 0 },
    { "publish topic a#b", "30 05 00 03 'a#b'", "ERR invalid topic name", 0 },
    { "publish topic truncated", "30 03 00 05 'a'", "ERR truncated field", 0 },
    { "publish no topic length", "30 01 00", "ERR truncated field", 0 },
    { "publish empty body", "30 00", "ERR truncated field", 0 },
    { "publish q1 without id", "32 05 00 03 'a/b'", "ERR truncated field", 0 },
    { "publish q1 half an id", "32 06 00 03 'a/b' 00", "ERR truncated field", 0 },
    { "topic bad utf-8 (c3 28)", "30 04 00 02 c3 28", "ERR invalid UTF-8", 0 },
    { "topic U+0000", "30 05 00 03 'a' 00 'b'", "ERR invalid UTF-8", 0 },
    { "topic surrogate", "30 05 00 03 ed a0 80", "ERR invalid UTF-8", 0 },
    { "topic overlong /", "30 04 00 02 c0 af", "ERR invalid UTF-8", 0 },
    { "topic overlong 3-byte", "30 05 00 03 e0 80 af", "ERR invalid UTF-8", 0 },
    { "topic overlong 4-byte", "30 06 00 04 f0 80 80 af", "ERR invalid UTF-8", 0 },
    { "topic over U+10FFFF", "30 06 00 04 f4 90 80 80", "ERR invalid UTF-8", 0 },
    { "topic lead f5", "30 06 00 04 f5 80 80 80", "ERR invalid UTF-8", 0 },
    { "topic cut sequence", "30 04 00 02 'a' e2", "ERR invalid UTF-8", 0 },
    { "topic stray continuation", "30 04 00 02 80 'a'", "ERR invalid UTF-8", 0 },
    { "topic ff", "30 03 00 01 ff", "ERR invalid UTF-8", 0 },
    /* SUBSCRIBE / UNSUBSCRIBE */
    { "subscribe without filters", "82 02 00 01", "ERR SUBSCRIBE without filters", 0 },
    { "subscribe qos 3", "82 06 00 01 00 01 'a' 03", "ERR invalid requested QoS", 0 },
    { "subscribe reserved bits", "82 06 00 01 00 01 'a' 04", "ERR invalid requested QoS", 0 },
    { "subscribe reserved bit 7", "82 06 00 01 00 01 'a' 81", "ERR invalid requested QoS", 0 },
    { "subscribe missing qos", "82 05 00 01 00 01 'a'", "ERR truncated field", 0 },
    { "subscribe cut filter", "82 05 00 01 00 05 'a' ", "ERR truncated field", 0 },
    { "subscribe half a length", "82 03 00 01 00", "ERR truncated field", 0 },
    { "subscribe half an id", "82 01 00", "ERR truncated field", 0 },
    { "subscribe second entry bad", "82 0a 00 01 00 01 'a' 00 00 01 'b' 03",
      "ERR invalid requested QoS", 0 },
    { "subscribe empty filter", "82 05 00 01 00 00 00", "ERR invalid topic filter", 0 },
    { "subscribe a/#/b", "82 0a 00 01 00 05 'a/#/b' 00", "ERR invalid topic filter", 0 },
    { "subscribe a#", "82 07 00 01 00 02 'a#' 00", "ERR invalid topic filter", 0 },
    { "subscribe #/", "82 07 00 01 00 02 '#/' 00", "ERR invalid topic filter", 0 },
    { "subscribe ##", "82 07 00 01 00 02 '##' 00", "ERR invalid topic filter", 0 },
    { "subscribe a+", "82 07 00 01 00 02 'a+' 00", "ERR invalid topic filter", 0 },
    { "subscribe +a", "82 07 00 01 00 02 '+a' 00", "ERR invalid topic filter", 0 },
    { "subscribe sport+", "82 0b 00 01 00 06 'sport+' 00", "ERR invalid topic filter", 0 },
    { "subscribe a/b+/c", "82 0b 00 01 00 06 'a/b+/c' 00", "ERR invalid topic filter", 0 },
    { "subscribe bad utf-8", "82 07 00 01 00 02 'a' ff 00", "ERR invalid UTF-8", 0 },
    { "unsubscribe without filters", "a2 02 00 01", "ERR UNSUBSCRIBE without filters", 0 },
    { "unsubscribe bad filter", "a2 06 00 01 00 02 'a#'", "ERR invalid topic filter", 0 },
    { "unsubscribe empty filter", "a2 04 00 01 00 00", "ERR invalid topic filter", 0 },
    { "unsubscribe cut", "a2 05 00 01 00 03 'a'", "ERR truncated field", 0 },
    { "unsubscribe bad utf-8", "a2 06 00 01 00 02 ed bf", "ERR invalid UTF-8", 0 },
    /* SUBACK / CONNACK */
    { "suback without codes", "90 02 00 01", "ERR SUBACK without return codes", 0 },
    { "suback code 3", "90 04 00 01 00 03", "ERR invalid SUBACK return code", 0 },
    { "suback code 81", "90 03 00 01 81", "ERR invalid SUBACK return code", 0 },
    { "connack reserved flags", "20 02 02 00", "ERR invalid CONNACK flags", 0 },
    { "connack rc 6", "20 02 00 06", "ERR reserved CONNACK return code", 0 },
    { "connack session present with refusal", "20 02 01 05",
      "ERR session present with a refusal", 0 },
    /* CONNECT */
    { "connect unknown protocol", "10 0c 00 04 'MQTX' 04 02 00 3c 00 00",
      "ERR unknown protocol name", 0 },
    { "connect lower-case name", "10 0c 00 04 'mqtt' 04 02 00 3c 00 00",
      "ERR unknown protocol name", 0 },
    { "connect empty name", "10 08 00 00 04 02 00 3c 00 00", "ERR unknown protocol name", 0 },
    { "connect no level", "10 06 00 04 'MQTT'", "ERR truncated field", 0 },
    { "connect name cut", "10 04 00 04 'MQ'", "ERR truncated field", 0 },
    { "connect no flags", "10 07 00 04 'MQTT' 04", "ERR truncated field", 0 },
    { "connect no keepalive", "10 09 00 04 'MQTT' 04 02 00", "ERR truncated field", 0 },
    { "connect no client id", "10 0a 00 04 'MQTT' 04 02 00 3c", "ERR truncated field", 0 },
    { "connect reserved flag", "10 0c 00 04 'MQTT' 04 03 00 3c 00 00",
      "ERR reserved CONNECT flag set", 0 },
    { "connect will qos without will", "10 0c 00 04 'MQTT' 04 0a 00 3c 00 00",
      "ERR will QoS or retain without will flag", 0 },
    { "connect will retain without will", "10 0c 00 04 'MQTT' 04 22 00 3c 00 00",
      "ERR will QoS or retain without will flag", 0 },
    { "connect will qos 3", "10 11 00 04 'MQTT' 04 1e 00 3c 00 00 00 01 't' 00 00",
      "ERR invalid will QoS", 0 },
    { "connect password without user", "10 0e 00 04 'MQTT' 04 42 00 3c 00 00 00 00",
      "ERR password flag without user name flag", 0 },
    { "connect will missing", "10 0c 00 04 'MQTT' 04 06 00 3c 00 00", "ERR truncated field", 0 },
    { "connect will message missing", "10 0f 00 04 'MQTT' 04 06 00 3c 00 00 00 01 't'",
      "ERR truncated field", 0 },
    { "connect will topic empty", "10 10 00 04 'MQTT' 04 06 00 3c 00 00 00 00 00 00",
      "ERR invalid will topic", 0 },
    { "connect will topic wildcard", "10 12 00 04 'MQTT' 04 06 00 3c 00 00 00 02 'a#' 00 00",
      "ERR invalid will topic", 0 },
    { "connect will topic bad utf-8", "10 11 00 04 'MQTT' 04 06 00 3c 00 00 00 01 c0 00 00",
      "ERR invalid UTF-8", 0 },
    { "connect user missing", "10 0c 00 04 'MQTT' 04 82 00 3c 00 00", "ERR truncated field", 0 },
    { "connect password missing", "10 0f 00 04 'MQTT' 04 c2 00 3c 00 00 00 01 'u'",
      "ERR truncated field", 0 },
    { "connect client id bad utf-8", "10 0d 00 04 'MQTT' 04 02 00 3c 00 01 00",
      "ERR invalid UTF-8", 0 },
    { "connect user bad utf-8", "10 10 00 04 'MQTT' 04 82 00 3c 00 00 00 02 ed a0",
      "ERR invalid UTF-8", 0 },
    { "connect trailing bytes", "10 0d 00 04 'MQTT' 04 02 00 3c 00 00 'x'",
      "ERR trailing bytes in packet", 0 },
    { "connect user flag clear but user sent", "10 0f 00 04 'MQTT' 04 02 00 3c 00 00 00 01 'u'",
      "ERR trailing bytes in packet", 0 },
    { "connect 3.1 reserved flag", "10 0f 00 06 'MQIsdp' 03 03 00 0a 00 01 'x'",
      "ERR reserved CONNECT flag set", 0 },
};

static void test_valid_packets(void **state)
{
    (void)state;
    run_cases(valid_cases, N(valid_cases));
}

static void test_malformed_packets(void **state)
{
    (void)state;
    run_cases(error_cases, N(error_cases));
}

/* All valid packets back to back, fed in chunks of every size from 1 to 40 bytes. */
static void test_stream_of_packets(void **state)
{
    struct mqtt_limits lim;
    struct buf stream, want, got;
    size_t i, chunk;

    (void)state;
    init_limits(&lim, 0);
    buf_init(&stream);
    buf_init(&want);
    buf_init(&got);
    for (i = 0; i < N(valid_cases); i++) {
        uint8_t bytes[1024];
        size_t len = parse_spec(valid_cases[i].bytes, bytes, sizeof bytes);
        if (valid_cases[i].max != 0)
            continue; /* cases with their own limit */
        buf_append(&stream, bytes, len);
        buf_printf(&want, "%s\n", valid_cases[i].want);
    }
    for (chunk = 1; chunk <= 40; chunk++) {
        size_t ncuts = stream.len / chunk, *cuts = malloc((ncuts + 1) * sizeof *cuts);
        for (i = 0; i < ncuts; i++)
            cuts[i] = (i + 1) * chunk;
        got.len = 0;
        feed(&lim, stream.data, stream.len, cuts, ncuts, &got);
        assert_string_equal(buf_cstr(&got), buf_cstr(&want));
        free(cuts);
    }
    /* A malformed packet after good ones: the good ones decode, then the error. */
    buf_append(&stream, "\x30\x02\x00\x00", 4);
    buf_append_str(&want, "ERR invalid topic name\n");
    got.len = 0;
    feed(&lim, stream.data, stream.len, NULL, 0, &got);
    assert_string_equal(buf_cstr(&got), buf_cstr(&want));
    buf_fini(&stream);
    buf_fini(&want);
    buf_fini(&got);
}

/* An oversize packet is refused from its header alone: the body never has to arrive. */
static void test_oversize_rejected_early(void **state)
{
    struct mqtt_limits lim = { .max_packet_bytes = 1024, .version = MQTT_V311 };
    struct mqtt_packet pkt;
    const char *why = NULL;
    size_t used = 0;
    uint8_t hdr[5] = { 0x30, 0xff, 0xff, 0xff, 0x7f }; /* PUBLISH of 256 MB */
    uint8_t ok[4] = { 0x30, 0xfd, 0x07 };              /* 1021 + 3 = 1024: allowed */

    (void)state;
    assert_int_equal(mqtt_decode(&lim, hdr, 1, &pkt, &used, &why), CODEC_NEED_MORE);
    assert_int_equal(mqtt_decode(&lim, hdr, 2, &pkt, &used, &why), CODEC_NEED_MORE);
    assert_int_equal(mqtt_decode(&lim, hdr, 3, &pkt, &used, &why), CODEC_ERROR);
    assert_string_equal(why, "packet too large");
    assert_int_equal(mqtt_decode(&lim, ok, 3, &pkt, &used, &why), CODEC_NEED_MORE);
    ok[1] = 0xfe; /* 1022 + 3 */
    assert_int_equal(mqtt_decode(&lim, ok, 3, &pkt, &used, &why), CODEC_ERROR);
    /* The protocol maximum when no limit is set: 268,435,455 is declarable. */
    lim.max_packet_bytes = 0;
    assert_int_equal(mqtt_decode(&lim, hdr, 5, &pkt, &used, &why), CODEC_NEED_MORE);
}

static void test_version_field(void **state)
{
    static const uint8_t ping[2] = { 0xc0, 0x00 };
    struct mqtt_limits lim = { .max_packet_bytes = 100, .version = MQTT_V5 };
    struct mqtt_packet pkt;
    const char *why = NULL;
    size_t used = 0;

    (void)state;
    assert_int_equal(mqtt_decode(&lim, ping, 2, &pkt, &used, &why), CODEC_ERROR);
    assert_string_equal(why, "protocol version not supported by the decoder");
    lim.version = MQTT_V31;
    assert_int_equal(mqtt_decode(&lim, ping, 2, &pkt, &used, &why), CODEC_FRAME);
    lim.version = MQTT_V311;
    assert_int_equal(mqtt_decode(&lim, ping, 2, &pkt, &used, &why), CODEC_FRAME);
    assert_int_equal(used, 2);
    assert_int_equal(pkt.type, MQTT_PINGREQ);
}

/* Every first byte: only the 14 types with their listed flags are accepted. */
static void test_every_first_byte(void **state)
{
    struct mqtt_limits lim = { .max_packet_bytes = 100, .version = MQTT_V311 };
    int b0, accepted = 0;

    (void)state;
    for (b0 = 0; b0 < 256; b0++) {
        uint8_t p[1] = { (uint8_t)b0 };
        struct mqtt_packet pkt;
        const char *why = NULL;
        size_t used;
        if (mqtt_decode(&lim, p, 1, &pkt, &used, &why) == CODEC_NEED_MORE)
            accepted++;
        else
            assert_non_null(why);
    }
    /* 13 fixed types + PUBLISH with QoS 0..2 x retain, minus DUP on QoS 0: 13 + 10 */
    assert_int_equal(accepted, 23);
}

/* ---- encoders: round trips through the decoder, and exact bytes */

static void expect_encoded(struct buf *b, const char *want_hex, const char *want_desc)
{
    uint8_t bytes[1024];
    size_t len;

    if (want_hex) {
        len = parse_spec(want_hex, bytes, sizeof bytes);
        assert_int_equal(b->len, len);
        assert_memory_equal(b->data, bytes, len);
    }
    check_bytes(want_desc, b->data, b->len, NO_LIMIT, want_desc);
    b->len = 0;
}

static void test_encoders_round_trip(void **state)
{
    struct buf b;
    struct mqtt_connect c;
    static const uint8_t codes[3] = { 0, 1, MQTT_SUBACK_FAILURE };
    struct mqtt_sub_req subs[3] = {
        { { "a/+", 3 }, 1 }, { { "sport/tennis/#", 14 }, 2 }, { { "+", 1 }, 0 } };
    struct mqtt_str unsubs[2] = { { "#", 1 }, { "x/y", 3 } };

    (void)state;
    buf_init(&b);
    memset(&c, 0, sizeof c);
    c.clean_session = true;
    c.keepalive_s = 60;
    assert_int_equal(mqtt_encode_connect(&b, &c), 0);
    expect_encoded(&b, "10 0c 00 04 'MQTT' 04 02 00 3c 00 00",
                   "CONNECT MQTT/4 clean=1 keepalive=60 id=''");
    c.keepalive_s = 300;
    c.client_id = (struct mqtt_str){ "c1", 2 };
    c.will = true;
    c.will_qos = 1;
    c.will_retain = true;
    c.will_topic = (struct mqtt_str){ "a/b", 3 };
    c.will_payload = (struct mqtt_bin){ (const uint8_t *)"bye", 3 };
    c.has_username = c.has_password = true;
    c.username = (struct mqtt_str){ "u", 1 };
    c.password = (struct mqtt_bin){ (const uint8_t *)"p\0", 2 };
    assert_int_equal(mqtt_encode_connect(&b, &c), 0);
    expect_encoded(&b, "10 1f 00 04 'MQTT' 04 ee 01 2c 00 02 'c1' 00 03 'a/b' 00 03 'bye' 00 01 "
                       "'u' 00 02 'p' 00",
                   "CONNECT MQTT/4 clean=1 keepalive=300 id='c1' will=q1r 'a/b' 'bye' "
                   "user='u' pass='p\\x00'");
    memset(&c, 0, sizeof c);
    c.proto_name = (struct mqtt_str){ "MQIsdp", 6 };
    c.level = MQTT_V31;
    c.client_id = (struct mqtt_str){ "x", 1 };
    assert_int_equal(mqtt_encode_connect(&b, &c), 0);
    expect_encoded(&b, NULL, "CONNECT MQIsdp/3 clean=0 keepalive=0 id='x'");

    assert_int_equal(mqtt_encode_connack(&b, false, 0), 0);
    expect_encoded(&b, "20 02 00 00", "CONNACK sp=0 rc=0");
    assert_int_equal(mqtt_encode_connack(&b, true, 0), 0);
    expect_encoded(&b, "20 02 01 00", "CONNACK sp=1 rc=0");
    assert_int_equal(mqtt_encode_connack(&b, false, MQTT_CONNACK_BAD_VERSION), 0);
    expect_encoded(&b, "20 02 00 01", "CONNACK sp=0 rc=1");

    assert_int_equal(mqtt_encode_publish(&b, "a/b", 3, (const uint8_t *)"hi", 2, 0, false,
                                         false, 0), 0);
    expect_encoded(&b, "30 07 00 03 'a/b' 'hi'", "PUBLISH q0 id=0 'a/b' 'hi'");
    assert_int_equal(mqtt_encode_publish(&b, "a/b", 3, (const uint8_t *)"hi", 2, 1, true, true,
                                         7), 0);
    expect_encoded(&b, "3b 09 00 03 'a/b' 00 07 'hi'", "PUBLISH q1 dup retain id=7 'a/b' 'hi'");
    assert_int_equal(mqtt_encode_publish(&b, "a/b", 3, NULL, 0, 2, false, false, 0x1234), 0);
    expect_encoded(&b, "34 07 00 03 'a/b' 12 34", "PUBLISH q2 id=4660 'a/b' ''");
    /* Header only, payload sent separately: the same bytes as the whole packet. */
    assert_int_equal(mqtt_encode_publish_header(&b, "a/b", 3, 2, 1, false, false, 9), 0);
    buf_append(&b, "hi", 2);
    expect_encoded(&b, "32 09 00 03 'a/b' 00 09 'hi'", "PUBLISH q1 id=9 'a/b' 'hi'");

    assert_int_equal(mqtt_encode_puback(&b, 1), 0);
    expect_encoded(&b, "40 02 00 01", "PUBACK id=1");
    assert_int_equal(mqtt_encode_pubrec(&b, 0x1234), 0);
    expect_encoded(&b, "50 02 12 34", "PUBREC id=4660");
    assert_int_equal(mqtt_encode_pubrel(&b, 65535), 0);
    expect_encoded(&b, "62 02 ff ff", "PUBREL id=65535");
    assert_int_equal(mqtt_encode_pubcomp(&b, 5), 0);
    expect_encoded(&b, "70 02 00 05", "PUBCOMP id=5");
    assert_int_equal(mqtt_encode_subscribe(&b, 10, subs, 3), 0);
    expect_encoded(&b, "82 1d 00 0a 00 03 'a/+' 01 00 0e 'sport/tennis/#' 02 00 01 '+' 00",
                   "SUBSCRIBE id=10 'a/+':1 'sport/tennis/#':2 '+':0");
    assert_int_equal(mqtt_encode_suback(&b, 1, codes, 3), 0);
    expect_encoded(&b, "90 05 00 01 00 01 80", "SUBACK id=1 00 01 80");
    assert_int_equal(mqtt_encode_unsubscribe(&b, 3, unsubs, 2), 0);
    expect_encoded(&b, "a2 0a 00 03 00 01 '#' 00 03 'x/y'", "UNSUBSCRIBE id=3 '#' 'x/y'");
    assert_int_equal(mqtt_encode_unsuback(&b, 2), 0);
    expect_encoded(&b, "b0 02 00 02", "UNSUBACK id=2");
    assert_int_equal(mqtt_encode_pingreq(&b), 0);
    expect_encoded(&b, "c0 00", "PINGREQ");
    assert_int_equal(mqtt_encode_pingresp(&b), 0);
    expect_encoded(&b, "d0 00", "PINGRESP");
    assert_int_equal(mqtt_encode_disconnect(&b), 0);
    expect_encoded(&b, "e0 00", "DISCONNECT");
    buf_fini(&b);
}

/* Payload sizes around each varint boundary encode and decode back. */
static void test_publish_sizes(void **state)
{
    static const size_t sizes[] = { 0, 1, 120, 121, 16376, 16377, 2097144, 2097145 };
    struct mqtt_limits lim = { .max_packet_bytes = 0, .version = MQTT_V311 };
    uint8_t *payload = malloc(2097152);
    size_t i;
    struct buf b;

    (void)state;
    buf_init(&b);
    for (i = 0; i < 2097152; i++)
        payload[i] = (uint8_t)(i * 7);
    for (i = 0; i < N(sizes); i++) {
        struct mqtt_packet pkt;
        const char *why = NULL;
        size_t used = 0, rem = 2 + 3 + 2 + sizes[i];
        b.len = 0;
        assert_int_equal(mqtt_encode_publish(&b, "a/b", 3, payload, sizes[i], 1, false, false,
                                             42), 0);
        assert_int_equal(b.len, 1 + mqtt_varint_size((uint32_t)rem) + rem);
        assert_int_equal(mqtt_decode(&lim, b.data, b.len, &pkt, &used, &why), CODEC_FRAME);
        assert_int_equal(used, b.len);
        assert_int_equal(pkt.publish.payload_len, sizes[i]);
        assert_int_equal(pkt.id, 42);
        if (sizes[i])
            assert_memory_equal(pkt.publish.payload, payload, sizes[i]);
        assert_int_equal(mqtt_decode(&lim, b.data, b.len - 1, &pkt, &used, &why),
                         CODEC_NEED_MORE);
    }
    buf_fini(&b);
    free(payload);
}

static void test_varint(void **state)
{
    static const uint32_t vals[] = { 0, 127, 128, 16383, 16384, 2097151, 2097152,
                                     MQTT_MAX_REMAINING };
    static const size_t sizes[] = { 1, 1, 2, 2, 3, 3, 4, 4 };
    size_t i;

    (void)state;
    for (i = 0; i < N(vals); i++) {
        uint8_t out[4];
        assert_int_equal(mqtt_varint_size(vals[i]), sizes[i]);
        assert_int_equal(mqtt_varint_put(out, vals[i]), sizes[i]);
        assert_true((out[sizes[i] - 1] & 0x80) == 0);
    }
}

/* Encoders refuse what does not fit the protocol, and then append nothing. */
static void test_encoder_errors(void **state)
{
    struct buf b;
    struct mqtt_connect c;
    char *big = calloc(1, MQTT_MAX_STRING + 1);
    struct mqtt_sub_req sub = { { "a", 1 }, 3 };
    struct mqtt_sub_req bigsub = { { big, MQTT_MAX_STRING + 1 }, 0 };
    struct mqtt_str bigstr = { big, MQTT_MAX_STRING + 1 };
    static const uint8_t badcode[1] = { 3 };

    (void)state;
    memset(big, 'a', MQTT_MAX_STRING + 1);
    buf_init(&b);
    assert_int_equal(mqtt_encode_puback(&b, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_pubrec(&b, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_pubrel(&b, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_pubcomp(&b, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_unsuback(&b, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_connack(&b, true, MQTT_CONNACK_NOT_AUTHORIZED), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, "a", 1, NULL, 0, 3, false, false, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, "a", 1, NULL, 0, 1, false, false, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, "a", 1, NULL, 0, 0, false, true, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, "", 0, NULL, 0, 0, false, false, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, big, MQTT_MAX_STRING + 1, NULL, 0, 0, false,
                                         false, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish_header(&b, "a", 1, MQTT_MAX_REMAINING - 2, 0, false,
                                                false, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_publish_header(&b, "a", 1, MQTT_MAX_REMAINING - 3, 0, false,
                                                false, 0), 0);
    assert_int_equal(b.len, 1 + 4 + 3);
    b.len = 0;
    assert_int_equal(mqtt_encode_subscribe(&b, 1, &sub, 1), GW_EINVAL);
    sub.qos = 0;
    assert_int_equal(mqtt_encode_subscribe(&b, 0, &sub, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_subscribe(&b, 1, &sub, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_subscribe(&b, 1, &bigsub, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_suback(&b, 1, badcode, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_suback(&b, 1, badcode, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_suback(&b, 0, (const uint8_t *)"", 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_unsubscribe(&b, 1, &bigstr, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_unsubscribe(&b, 1, &bigstr, 0), GW_EINVAL);
    assert_int_equal(mqtt_encode_unsubscribe(&b, 0, (struct mqtt_str[]){ { "a", 1 } }, 1),
                     GW_EINVAL);
    memset(&c, 0, sizeof c);
    c.has_password = true;
    assert_int_equal(mqtt_encode_connect(&b, &c), GW_EINVAL);
    c.has_password = false;
    c.will = true;
    c.will_qos = 3;
    assert_int_equal(mqtt_encode_connect(&b, &c), GW_EINVAL);
    c.will_qos = 0;
    c.client_id = bigstr;
    assert_int_equal(mqtt_encode_connect(&b, &c), GW_EINVAL);
    assert_int_equal(b.len, 0);
    buf_fini(&b);
    free(big);
}

/* ---- UTF-8 and topic checks */

struct utf8_case {
    const char *bytes;
    int valid;
};

static void test_utf8(void **state)
{
    static const struct utf8_case cases[] = {
        { "", 1 },
        { "'plain ascii text that is longer than eight bytes'", 1 },
        { "'abcdefgh' 00 'abcdefgh'", 0 },     /* U+0000 inside a fast-path word */
        { "'abcdefg' 00", 0 },
        { "00", 0 },
        { "7f", 1 },                            /* control characters are allowed */
        { "01 1f", 1 },
        { "c2 80", 1 },                         /* U+0080 */
        { "c2 9f", 1 },
        { "df bf", 1 },                         /* U+07FF */
        { "e0 a0 80", 1 },                      /* U+0800 */
        { "ef bf bf", 1 },                      /* U+FFFF (a non-character: allowed) */
        { "ef bb bf 'x'", 1 },                  /* BOM is not skipped, but it is valid */
        { "ed 9f bf", 1 },                      /* U+D7FF */
        { "ed a0 80", 0 },                      /* U+D800 */
        { "ed bf bf", 0 },                      /* U+DFFF */
        { "ee 80 80", 1 },                      /* U+E000 */
        { "f0 90 80 80", 1 },                   /* U+10000 */
        { "f4 8f bf bf", 1 },                   /* U+10FFFF */
        { "f4 90 80 80", 0 },
        { "c0 80", 0 },                         /* overlong U+0000 */
        { "c1 bf", 0 },
        { "e0 9f bf", 0 },
        { "f0 8f bf bf", 0 },
        { "80", 0 },
        { "bf", 0 },
        { "c2", 0 },
        { "e0 a0", 0 },
        { "f0 90 80", 0 },
        { "c2 41", 0 },
        { "e0 a0 41", 0 },
        { "f0 90 80 41", 0 },
        { "f8 88 80 80 80", 0 },
        { "fe", 0 },
        { "ff", 0 },
        { "'abcdefgh' c3 a9 'abcdefgh'", 1 },
        { "'abcdefgh' c3", 0 },
    };
    size_t i;

    (void)state;
    for (i = 0; i < N(cases); i++) {
        uint8_t bytes[256];
        size_t len = parse_spec(cases[i].bytes, bytes, sizeof bytes);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, bytes, len);
        if (mqtt_utf8_valid(copy, len) != cases[i].valid)
            fail_msg("utf-8 \"%s\": want %d", cases[i].bytes, cases[i].valid);
        free(copy);
    }
}

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(mqtt_type_name(MQTT_CONNECT), "CONNECT");
    assert_string_equal(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
    assert_string_equal(mqtt_type_name(0), "?");
    assert_string_equal(mqtt_type_name(15), "?");
    assert_string_equal(mqtt_type_name(255), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_packets),
        cmocka_unit_test(test_malformed_packets),
        cmocka_unit_test(test_stream_of_packets),
        cmocka_unit_test(test_oversize_rejected_early),
        cmocka_unit_test(test_version_field),
        cmocka_unit_test(test_every_first_byte),
        cmocka_unit_test(test_encoders_round_trip),
        cmocka_unit_test(test_publish_sizes),
        cmocka_unit_test(test_varint),
        cmocka_unit_test(test_encoder_errors),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_type_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
