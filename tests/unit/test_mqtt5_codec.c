/* tests/unit/test_mqtt5_codec.c: the MQTT 5.0 decoder and encoders (protocols/mqtt/codec5.c),
 * its properties (props.c) and reason codes, through mqtt_decode_v().
 *
 * Cases are tables of bytes (hand-written from the packet layouts of MQTT 5.0 §3) ->
 * the decoded packet as one line of text (describe()), or "ERR <reason code> <reason>".
 * Every case is decoded whole, from every prefix (NEED_MORE, or the same error early),
 * split in two at every offset and fed one byte at a time through a connection-like feed
 * loop; all must agree. Each decoded packet's surfaced property fields are checked
 * against a walk of its properties (check_props()). Encoders are compared with
 * hand-written bytes and decoded back. Decoding always reads from an exact-size heap
 * copy, so a sanitizer build catches any read past the input. */
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
#define N(a) (sizeof(a) / sizeof((a)[0]))

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

static int str_eq(struct mqtt_str a, struct mqtt_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static int bin_eq(struct mqtt_bin a, struct mqtt_bin b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* The surfaced fields agree with a walk of the properties, and absent ones hold their
 * defaults. */
static void check_props(const struct mqtt_props *ps)
{
    struct mqtt_prop p;
    size_t off = 0, users = 0, subs = 0;
    uint64_t seen = 0;

    while (mqtt_prop_next(ps, &off, &p)) {
        assert_int_equal(p.type, mqtt_prop_type(p.id));
        seen |= (uint64_t)1 << p.id;
        switch (p.id) {
        case MQTT_PROP_PAYLOAD_FORMAT: assert_int_equal(ps->payload_format, p.u); break;
        case MQTT_PROP_MESSAGE_EXPIRY: assert_int_equal(ps->message_expiry_s, p.u); break;
        case MQTT_PROP_CONTENT_TYPE: assert_true(str_eq(ps->content_type, p.str)); break;
        case MQTT_PROP_RESPONSE_TOPIC: assert_true(str_eq(ps->response_topic, p.str)); break;
        case MQTT_PROP_CORRELATION_DATA:
            assert_true(bin_eq(ps->correlation_data, p.bin));
            break;
        case MQTT_PROP_SUBSCRIPTION_ID:
            if (subs++ == 0)
                assert_int_equal(ps->subscription_id, p.u);
            break;
        case MQTT_PROP_SESSION_EXPIRY: assert_int_equal(ps->session_expiry_s, p.u); break;
        case MQTT_PROP_ASSIGNED_CLIENT_ID:
            assert_true(str_eq(ps->assigned_client_id, p.str));
            break;
        case MQTT_PROP_SERVER_KEEP_ALIVE: assert_int_equal(ps->server_keep_alive_s, p.u); break;
        case MQTT_PROP_AUTH_METHOD: assert_true(str_eq(ps->auth_method, p.str)); break;
        case MQTT_PROP_AUTH_DATA: assert_true(bin_eq(ps->auth_data, p.bin)); break;
        case MQTT_PROP_REQUEST_PROBLEM_INFO:
            assert_int_equal(ps->request_problem_info, p.u);
            break;
        case MQTT_PROP_WILL_DELAY: assert_int_equal(ps->will_delay_s, p.u); break;
        case MQTT_PROP_REQUEST_RESPONSE_INFO:
            assert_int_equal(ps->request_response_info, p.u);
            break;
        case MQTT_PROP_RESPONSE_INFO: assert_true(str_eq(ps->response_info, p.str)); break;
        case MQTT_PROP_SERVER_REFERENCE:
            assert_true(str_eq(ps->server_reference, p.str));
            break;
        case MQTT_PROP_REASON_STRING: assert_true(str_eq(ps->reason_string, p.str)); break;
        case MQTT_PROP_RECEIVE_MAXIMUM: assert_int_equal(ps->receive_maximum, p.u); break;
        case MQTT_PROP_TOPIC_ALIAS_MAXIMUM:
            assert_int_equal(ps->topic_alias_maximum, p.u);
            break;
        case MQTT_PROP_TOPIC_ALIAS: assert_int_equal(ps->topic_alias, p.u); break;
        case MQTT_PROP_MAXIMUM_QOS: assert_int_equal(ps->maximum_qos, p.u); break;
        case MQTT_PROP_RETAIN_AVAILABLE: assert_int_equal(ps->retain_available, p.u); break;
        case MQTT_PROP_USER_PROPERTY: users++; break;
        case MQTT_PROP_MAXIMUM_PACKET_SIZE:
            assert_int_equal(ps->maximum_packet_size, p.u);
            break;
        case MQTT_PROP_WILDCARD_SUB_AVAILABLE:
            assert_int_equal(ps->wildcard_sub_available, p.u);
            break;
        case MQTT_PROP_SUB_ID_AVAILABLE: assert_int_equal(ps->sub_id_available, p.u); break;
        case MQTT_PROP_SHARED_SUB_AVAILABLE:
            assert_int_equal(ps->shared_sub_available, p.u);
            break;
        default: fail_msg("unknown property %02x walked", p.id);
        }
    }
    assert_int_equal(off, ps->raw.len);
    assert_true(seen == ps->present);
    assert_int_equal(users, ps->user_prop_count);
    assert_int_equal(subs, ps->subscription_id_count);
    if (!mqtt_props_has(ps, MQTT_PROP_RECEIVE_MAXIMUM))
        assert_int_equal(ps->receive_maximum, 65535);
    if (!mqtt_props_has(ps, MQTT_PROP_MAXIMUM_QOS))
        assert_int_equal(ps->maximum_qos, 2);
    if (!mqtt_props_has(ps, MQTT_PROP_REQUEST_PROBLEM_INFO))
        assert_int_equal(ps->request_problem_info, 1);
    if (!mqtt_props_has(ps, MQTT_PROP_RETAIN_AVAILABLE))
        assert_int_equal(ps->retain_available, 1);
}

/* " [11=3600 26='k':'v']": every property in wire order, ids in hex. */
static void describe_props(struct buf *b, const struct mqtt_props *ps)
{
    struct mqtt_prop p;
    size_t off = 0;
    int first = 1;

    check_props(ps);
    buf_append_str(b, " [");
    while (mqtt_prop_next(ps, &off, &p)) {
        buf_printf(b, "%s%02x=", first ? "" : " ", p.id);
        first = 0;
        switch (p.type) {
        case MQTT_PT_STR: put_escaped(b, p.str.p, p.str.len); break;
        case MQTT_PT_BIN: put_escaped(b, p.bin.p, p.bin.len); break;
        case MQTT_PT_PAIR:
            put_escaped(b, p.str.p, p.str.len);
            buf_append_str(b, ":");
            put_escaped(b, p.value.p, p.value.len);
            break;
        default: buf_printf(b, "%u", p.u); break;
        }
    }
    buf_append_str(b, "]");
}

static const char *type_name(uint8_t type)
{
    return type == MQTT_AUTH ? "AUTH" : mqtt_type_name(type);
}

/* One line of text per packet, with every decoded field. */
static void describe(struct buf *b, const struct mqtt_packet *pkt)
{
    const struct mqtt_connect *c = &pkt->connect;
    const struct mqtt_publish *p = &pkt->publish;
    struct mqtt_str f;
    size_t off = 0, i;
    uint8_t opt;

    buf_append_str(b, type_name(pkt->type));
    switch (pkt->type) {
    case MQTT_CONNECT:
        buf_printf(b, " %.*s/%u", (int)c->proto_name.len, c->proto_name.p, c->level);
        if (pkt->version != MQTT_V5)
            break;
        buf_printf(b, " clean=%d keepalive=%u id=", c->clean_session, c->keepalive_s);
        put_escaped(b, c->client_id.p, c->client_id.len);
        describe_props(b, &pkt->props);
        if (c->will) {
            buf_printf(b, " will=q%u%s ", c->will_qos, c->will_retain ? "r" : "");
            put_escaped(b, c->will_topic.p, c->will_topic.len);
            buf_append_str(b, " ");
            put_escaped(b, c->will_payload.p, c->will_payload.len);
            describe_props(b, &pkt->will_props);
        } else {
            assert_int_equal(pkt->will_props.present, 0);
        }
        if (c->has_username) {
            buf_append_str(b, " user=");
            put_escaped(b, c->username.p, c->username.len);
        }
        if (c->has_password) {
            buf_append_str(b, " pass=");
            put_escaped(b, c->password.p, c->password.len);
        }
        return;
    case MQTT_CONNACK:
        buf_printf(b, " sp=%d rc=%02x", pkt->connack.session_present, pkt->connack.rc);
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
                buf_printf(b, ":%02x", opt);
        }
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        buf_printf(b, " id=%u", pkt->id);
        for (i = 0; i < pkt->suback.count; i++)
            buf_printf(b, " %02x", pkt->suback.codes[i]);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        buf_printf(b, " id=%u rc=%02x", pkt->id, pkt->reason);
        break;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        buf_printf(b, " rc=%02x", pkt->reason);
        break;
    default: /* PINGREQ, PINGRESP: nothing but the type */
        return;
    }
    if (pkt->version == MQTT_V5)
        describe_props(b, &pkt->props);
}

/* Decodes p[0..len) from an exact-size copy. Appends the description or
 * "ERR <reason code> <why>". */
static enum codec_rc decode_copy(const struct mqtt_limits *lim, uint8_t version,
                                 const uint8_t *p, size_t len, size_t *used, struct buf *res)
{
    uint8_t *copy = malloc(len ? len : 1);
    struct mqtt_packet pkt;
    const char *why = NULL;
    uint8_t reason = 0;
    enum codec_rc rc;

    memcpy(copy, p, len);
    *used = 0;
    rc = mqtt_decode_v(lim, version, copy, len, &pkt, used, &why, &reason);
    if (rc == CODEC_FRAME) {
        assert_true(*used >= 2 && *used <= len);
        describe(res, &pkt);
    } else if (rc == CODEC_ERROR) {
        assert_non_null(why);
        buf_printf(res, "ERR %02x %s", reason, why);
    }
    free(copy);
    return rc;
}

/* A connection's feed loop: bytes arrive in chunks ending at cuts[0..ncuts) and len;
 * each arrival decodes all complete packets and consumes once. One line per packet. */
static void feed(const struct mqtt_limits *lim, uint8_t version, const uint8_t *p, size_t len,
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
            enum codec_rc rc = decode_copy(lim, version, in.data + off, in.len - off, &used,
                                           res);
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

/* Checks one packet's bytes against an expected description or error, in every way
 * of arriving. */
static void check_bytes(const char *name, uint8_t version, const uint8_t *p, size_t len,
                        size_t max, const char *want)
{
    struct mqtt_limits lim = { max ? max : DEFAULT_MAX, MQTT_V_UNKNOWN };
    struct buf whole, res, line;
    size_t k, used, cut, *cuts;
    int is_err = strncmp(want, "ERR ", 4) == 0, erred = 0;
    enum codec_rc rc;

    buf_init(&whole);
    buf_init(&res);
    buf_init(&line);
    rc = decode_copy(&lim, version, p, len, &used, &line);
    if (strcmp(buf_cstr(&line), want) != 0 || (rc == CODEC_FRAME && used != len))
        fail_msg("%s: got \"%s\" (used %zu of %zu), want \"%s\"", name, buf_cstr(&line), used,
                 len, want);
    assert_int_equal(rc, is_err ? CODEC_ERROR : CODEC_FRAME);

    /* Every prefix: NEED_MORE, or (errors only) the same error, and then for good. */
    for (k = 0; k < len; k++) {
        line.len = 0;
        rc = decode_copy(&lim, version, p, k, &used, &line);
        if (rc == CODEC_FRAME || (rc == CODEC_NEED_MORE && erred)
            || (rc == CODEC_ERROR && (!is_err || strcmp(buf_cstr(&line), want) != 0)))
            fail_msg("%s: prefix %zu gave rc %d \"%s\"", name, k, rc, buf_cstr(&line));
        erred |= rc == CODEC_ERROR;
    }

    /* Fed whole, split at every offset, and a byte at a time: the same lines. */
    feed(&lim, version, p, len, NULL, 0, &whole);
    line.len = 0;
    buf_printf(&line, "%s\n", want);
    assert_string_equal(buf_cstr(&whole), buf_cstr(&line));
    for (cut = 1; cut < len; cut++) {
        res.len = 0;
        feed(&lim, version, p, len, &cut, 1, &res);
        if (strcmp(buf_cstr(&res), buf_cstr(&whole)) != 0)
            fail_msg("%s: split at %zu gave \"%s\"", name, cut, buf_cstr(&res));
    }
    cuts = malloc((len ? len : 1) * sizeof *cuts);
    for (k = 0; k + 1 < len; k++)
        cuts[k] = k + 1;
    res.len = 0;
    feed(&lim, version, p, len, cuts, len ? len - 1 : 0, &res);
    if (strcmp(buf_cstr(&res), buf_cstr(&whole)) != 0)
        fail_msg("%s: byte at a time gave \"%s\"", name, buf_cstr(&res));
    free(cuts);
    buf_fini(&whole);
    buf_fini(&res);
    buf_fini(&line);
}

struct dcase {
    const char *name;
    const char *bytes;      /* parse_spec() text */
    const char *want;       /* description, or "ERR <rc> <reason>" */
    uint8_t version;        /* 0 = MQTT_V5; else the version given to mqtt_decode_v() */
};

#define BEFORE_CONNECT 0xff /* dcase.version: MQTT_V_UNKNOWN */

static void run_cases(const struct dcase *cases, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        uint8_t bytes[1024];
        size_t len = parse_spec(cases[i].bytes, bytes, sizeof bytes);
        uint8_t v = cases[i].version == 0                ? MQTT_V5
                    : cases[i].version == BEFORE_CONNECT ? MQTT_V_UNKNOWN
                                                         : cases[i].version;
        check_bytes(cases[i].name, v, bytes, len, 0, cases[i].want);
    }
}

/* ---- valid packets, every type, every property */

static const struct dcase valid_cases[] = {
    /* CONNECT (§3.1): decoded whole before CONNECT, the level reported */
    { "connect minimal", "10 0d 00 04 'MQTT' 05 02 00 3c 00 00 00",
      "CONNECT MQTT/5 clean=1 keepalive=60 id='' []", BEFORE_CONNECT },
    { "connect 3.1.1 before CONNECT", "10 0c 00 04 'MQTT' 04 02 00 3c 00 00",
      "CONNECT MQTT/4", BEFORE_CONNECT },
    { "connect level 6 name and level only", "10 07 00 04 'MQTT' 06", "CONNECT MQTT/6",
      BEFORE_CONNECT },
    /* §3.1.2.11: every CONNECT property */
    { "connect every property",
      "10 3c 00 04 'MQTT' 05 02 00 0a"
      " 2d 11 00 00 0e 10 21 00 14 27 00 00 10 00 22 00 0a 19 01 17 00"
      " 26 00 01 'k' 00 01 'v' 26 00 01 'k' 00 00 15 00 04 'SCRA' 16 00 02 01 02"
      " 00 02 'c1'",
      "CONNECT MQTT/5 clean=1 keepalive=10 id='c1' [11=3600 21=20 27=4096 22=10 19=1 17=0 "
      "26='k':'v' 26='k':'' 15='SCRA' 16='\\x01\\x02']", BEFORE_CONNECT },
    /* §3.1.3.2: every Will property; password without user name is allowed in 5.0 */
    { "connect will properties",
      "10 40 00 04 'MQTT' 05 6c 00 00 00 00 01 'x'"
      " 25 18 00 00 00 05 01 01 02 00 00 00 3c 03 00 04 'json' 08 00 03 'r/t'"
      " 09 00 02 ab cd 26 00 01 'a' 00 01 'b'"
      " 00 01 't' 00 03 'bye' 00 02 'pw'",
      "CONNECT MQTT/5 clean=0 keepalive=0 id='x' [] will=q1r 't' 'bye' [18=5 01=1 02=60 "
      "03='json' 08='r/t' 09='\\xab\\xcd' 26='a':'b'] pass='pw'", BEFORE_CONNECT },
    { "connect user and password", "10 15 00 04 'MQTT' 05 c0 00 3c 00 00 01 'x' 00 01 'u' 00 02 'p' 00",
      "CONNECT MQTT/5 clean=0 keepalive=60 id='x' [] user='u' pass='p\\x00'", BEFORE_CONNECT },
    /* CONNACK (§3.2) */
    { "connack", "20 03 00 00 00", "CONNACK sp=0 rc=00 []", 0 },
    { "connack session present", "20 03 01 00 00", "CONNACK sp=1 rc=00 []", 0 },
    { "connack refusal", "20 03 00 84 00", "CONNACK sp=0 rc=84 []", 0 },
    { "connack every property",
      "20 50 00 00 4d"
      " 11 00 00 00 3c 21 00 64 24 01 25 00 27 00 01 00 00 12 00 04 'auto' 22 00 05"
      " 1f 00 02 'ok' 26 00 01 'k' 00 01 'v' 28 00 29 00 2a 01 13 00 1e"
      " 1a 00 04 'resp' 1c 00 08 'srv:1883' 15 00 04 'SCRA' 16 00 01 ff",
      "CONNACK sp=0 rc=00 [11=60 21=100 24=1 25=0 27=65536 12='auto' 22=5 1f='ok' 26='k':'v' "
      "28=0 29=0 2a=1 13=30 1a='resp' 1c='srv:1883' 15='SCRA' 16='\\xff']", 0 },
    /* PUBLISH (§3.3) */
    { "publish q0 no properties", "30 07 00 03 'a/b' 00 'h'", "PUBLISH q0 id=0 'a/b' 'h' []", 0 },
    { "publish q1 every property",
      "3b 39 00 03 'a/b' 00 07"
      " 2f 01 01 02 00 00 00 0a 23 00 02 08 00 03 'r/s' 09 00 03 'cid'"
      " 0b 05 0b 80 01 26 00 01 'k' 00 01 'v' 03 00 0a 'text/plain'"
      " 'hi'",
      "PUBLISH q1 dup retain id=7 'a/b' 'hi' [01=1 02=10 23=2 08='r/s' 09='cid' 0b=5 0b=128 "
      "26='k':'v' 03='text/plain']", 0 },
    { "publish empty topic with alias", "30 07 00 00 03 23 00 05 'x'",
      "PUBLISH q0 id=0 '' 'x' [23=5]", 0 },
    { "publish q2 empty payload", "34 08 00 03 'a/b' 12 34 00",
      "PUBLISH q2 id=4660 'a/b' '' []", 0 },
    { "publish subscription id at the maximum", "30 09 00 01 'a' 05 0b ff ff ff 7f",
      "PUBLISH q0 id=0 'a' '' [0b=268435455]", 0 },
    /* PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4.2.1): both optional */
    { "puback length 2", "40 02 00 01", "PUBACK id=1 rc=00 []", 0 },
    { "puback reason code only", "40 03 00 01 10", "PUBACK id=1 rc=10 []", 0 },
    { "puback empty properties", "40 04 00 01 00 00", "PUBACK id=1 rc=00 []", 0 },
    { "puback reason string", "40 08 00 01 80 04 1f 00 01 'x'", "PUBACK id=1 rc=80 [1f='x']",
      0 },
    { "pubrec quota exceeded, user property", "50 0b 12 34 97 07 26 00 01 'a' 00 01 'b'",
      "PUBREC id=4660 rc=97 [26='a':'b']", 0 },
    { "pubrel", "62 02 00 05", "PUBREL id=5 rc=00 []", 0 },
    { "pubrel not found", "62 03 00 05 92", "PUBREL id=5 rc=92 []", 0 },
    { "pubcomp", "70 04 ff ff 92 00", "PUBCOMP id=65535 rc=92 []", 0 },
    /* SUBSCRIBE (§3.8) */
    { "subscribe options",
      "82 1d 00 0a 02 0b 07 00 03 'a/+' 01 00 01 '#' 2e 00 0b '$share/g/x/' 1a",
      "SUBSCRIBE id=10 'a/+':01 '#':2e '$share/g/x/':1a [0b=7]", 0 },
    { "subscribe user properties", "82 13 00 01 0c 26 00 01 'a' 00 00 26 00 01 'a' 00 00 00 01 '#' 00",
      "SUBSCRIBE id=1 '#':00 [26='a':'' 26='a':'']", 0 },
    { "suback codes", "90 08 00 01 00 00 01 02 87 a2", "SUBACK id=1 00 01 02 87 a2 []", 0 },
    { "suback reason string", "90 08 00 01 04 1f 00 01 'n' 9e", "SUBACK id=1 9e [1f='n']", 0 },
    /* UNSUBSCRIBE, UNSUBACK (§3.10, §3.11) */
    { "unsubscribe", "a2 0d 00 02 00 00 03 'a/+' 00 03 'x/#'", "UNSUBSCRIBE id=2 'a/+' 'x/#' []",
      0 },
    { "unsubscribe shared", "a2 0f 00 02 00 00 0a '$share/g/#'",
      "UNSUBSCRIBE id=2 '$share/g/#' []", 0 },
    { "unsuback", "b0 05 00 02 00 00 11", "UNSUBACK id=2 00 11 []", 0 },
    /* PINGREQ, PINGRESP, DISCONNECT (§3.14), AUTH (§3.15) */
    { "pingreq", "c0 00", "PINGREQ", 0 },
    { "pingresp", "d0 00", "PINGRESP", 0 },
    { "disconnect empty", "e0 00", "DISCONNECT rc=00 []", 0 },
    { "disconnect with will", "e0 01 04", "DISCONNECT rc=04 []", 0 },
    { "disconnect properties",
      "e0 1d 8b 1b 11 00 00 00 00 1c 00 08 'other:99' 1f 00 03 'bye' 26 00 00 00 00",
      "DISCONNECT rc=8b [11=0 1c='other:99' 1f='bye' 26='':'']", 0 },
    { "auth empty", "f0 00", "AUTH rc=00 []", 0 },
    { "auth continue", "f0 0f 18 0d 15 00 04 'SCRA' 16 00 03 'abc'",
      "AUTH rc=18 [15='SCRA' 16='abc']", 0 },
    { "auth reason string", "f0 07 19 05 1f 00 02 'ok'", "AUTH rc=19 [1f='ok']", 0 },
};

/* ---- refused packets, with their reason codes */

static const struct dcase error_cases[] = {
    /* fixed header */
    { "auth flags", "f1 00", "ERR 81 invalid fixed header flags", 0 },
    { "auth in 3.1.1", "f0 00", "ERR 81 reserved packet type", MQTT_V311 },
    { "non-minimal remaining length", "c0 80 00", "ERR 81 malformed remaining length", 0 },
    { "non-minimal remaining length, 4 bytes", "30 85 80 80 00",
      "ERR 81 malformed remaining length", 0 },
    { "too large", "30 ff 7f", "ERR 95 packet too large", 0 },
    { "pingreq with a body", "c0 01 00", "ERR 81 invalid remaining length", 0 },
    { "publish qos 3", "36 05 00 03 'a/b'", "ERR 81 invalid QoS", 0 },
    { "packet id 0", "40 02 00 00", "ERR 82 packet id is 0", 0 },
    /* property framing */
    { "property length past the packet", "30 08 00 03 'a/b' 05 01 01",
      "ERR 81 property length past the packet", 0 },
    { "property value past the property length", "30 09 00 03 'a/b' 02 02 00 00",
      "ERR 81 truncated field", 0 },
    { "property length not minimal", "30 08 00 03 'a/b' 80 00 'x'",
      "ERR 81 malformed variable byte integer", 0 },
    { "property length 5 bytes", "30 0a 00 03 'a/b' 80 80 80 80 01",
      "ERR 81 malformed variable byte integer", 0 },
    { "property length missing", "30 05 00 03 'a/b'", "ERR 81 truncated field", 0 },
    { "unknown property 0x04", "30 08 00 03 'a/b' 02 04 00", "ERR 81 unknown property", 0 },
    { "unknown property 0x2b", "30 08 00 03 'a/b' 02 2b 00", "ERR 81 unknown property", 0 },
    { "two-byte property identifier", "30 09 00 03 'a/b' 03 81 01 00",
      "ERR 81 unknown property", 0 },
    /* a property on the wrong packet is malformed (§2.2.2.2) */
    { "session expiry on publish", "30 0b 00 03 'a/b' 05 11 00 00 00 01",
      "ERR 81 property not allowed on this packet", 0 },
    { "topic alias on connect", "10 10 00 04 'MQTT' 05 02 00 3c 03 23 00 01 00 00",
      "ERR 81 property not allowed on this packet", BEFORE_CONNECT },
    { "session expiry in will properties",
      "10 18 00 04 'MQTT' 05 06 00 3c 00 00 00 05 11 00 00 00 01 00 01 't' 00 00",
      "ERR 81 property not allowed on this packet", BEFORE_CONNECT },
    { "will delay on connect", "10 12 00 04 'MQTT' 05 02 00 3c 05 18 00 00 00 01 00 00",
      "ERR 81 property not allowed on this packet", BEFORE_CONNECT },
    { "content type on puback", "40 08 00 01 00 04 03 00 01 'x'",
      "ERR 81 property not allowed on this packet", 0 },
    { "subscription id on unsubscribe", "a2 08 00 01 02 0b 01 00 01 '#'",
      "ERR 81 property not allowed on this packet", 0 },
    { "reason string on subscribe", "82 0b 00 01 04 1f 00 01 'x' 00 01 '#' 00",
      "ERR 81 property not allowed on this packet", 0 },
    { "server reference on auth", "f0 06 00 04 1c 00 01 'x'",
      "ERR 81 property not allowed on this packet", 0 },
    { "maximum qos on connect", "10 0f 00 04 'MQTT' 05 02 00 3c 02 24 01 00 00",
      "ERR 81 property not allowed on this packet", BEFORE_CONNECT },
    /* duplicates are Protocol Errors; User Property and PUBLISH Subscription Ids repeat */
    { "duplicate payload format", "30 0a 00 03 'a/b' 04 01 01 01 00",
      "ERR 82 duplicate property", 0 },
    { "duplicate session expiry on connect",
      "10 17 00 04 'MQTT' 05 02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 00",
      "ERR 82 duplicate property", BEFORE_CONNECT },
    { "duplicate subscription id on subscribe", "82 0b 00 01 04 0b 01 0b 02 00 01 '#' 00",
      "ERR 82 duplicate property", 0 },
    { "duplicate reason string on puback", "40 0c 00 01 80 08 1f 00 01 'a' 1f 00 01 'b'",
      "ERR 82 duplicate property", 0 },
    { "duplicate topic alias", "30 0c 00 03 'a/b' 06 23 00 01 23 00 01",
      "ERR 82 duplicate property", 0 },
    { "duplicate will delay",
      "10 1d 00 04 'MQTT' 05 06 00 3c 00 00 00 0a 18 00 00 00 01 18 00 00 00 01 00 01 't' 00 00",
      "ERR 82 duplicate property", BEFORE_CONNECT },
    { "duplicate maximum qos on connack", "20 07 00 00 04 24 00 24 00",
      "ERR 82 duplicate property", 0 },
    /* values out of range */
    { "receive maximum 0", "10 10 00 04 'MQTT' 05 02 00 3c 03 21 00 00 00 00",
      "ERR 82 receive maximum is 0", BEFORE_CONNECT },
    { "maximum packet size 0", "10 12 00 04 'MQTT' 05 02 00 3c 05 27 00 00 00 00 00 00",
      "ERR 82 maximum packet size is 0", BEFORE_CONNECT },
    { "request problem information 2", "10 0f 00 04 'MQTT' 05 02 00 3c 02 17 02 00 00",
      "ERR 82 invalid request problem information", BEFORE_CONNECT },
    { "request response information 2", "10 0f 00 04 'MQTT' 05 02 00 3c 02 19 02 00 00",
      "ERR 82 invalid request response information", BEFORE_CONNECT },
    { "connack receive maximum 0", "20 06 00 00 03 21 00 00", "ERR 82 receive maximum is 0", 0 },
    { "connack maximum qos 2", "20 05 00 00 02 24 02", "ERR 82 invalid maximum QoS", 0 },
    { "connack retain available 2", "20 05 00 00 02 25 02", "ERR 82 invalid retain available",
      0 },
    { "connack wildcard available 2", "20 05 00 00 02 28 02",
      "ERR 82 invalid wildcard subscription available", 0 },
    { "connack subscription ids available 2", "20 05 00 00 02 29 ff",
      "ERR 82 invalid subscription identifiers available", 0 },
    { "connack shared available 2", "20 05 00 00 02 2a 02",
      "ERR 82 invalid shared subscription available", 0 },
    { "payload format 2", "30 08 00 03 'a/b' 02 01 02", "ERR 82 invalid payload format indicator",
      0 },
    { "will payload format 2",
      "10 15 00 04 'MQTT' 05 06 00 3c 00 00 00 02 01 02 00 01 't' 00 00",
      "ERR 82 invalid payload format indicator", BEFORE_CONNECT },
    { "subscription id 0 on publish", "30 08 00 03 'a/b' 02 0b 00",
      "ERR 82 subscription identifier is 0", 0 },
    { "subscription id 0 on subscribe", "82 09 00 01 02 0b 00 00 01 '#' 00",
      "ERR 82 subscription identifier is 0", 0 },
    { "subscription id not minimal", "30 09 00 03 'a/b' 03 0b 81 00",
      "ERR 81 malformed variable byte integer", 0 },
    { "topic alias 0", "30 09 00 03 'a/b' 03 23 00 00", "ERR 94 topic alias is 0", 0 },
    { "empty topic without alias", "30 03 00 00 00", "ERR 82 empty topic without topic alias",
      0 },
    { "response topic with a wildcard", "30 0d 00 03 'a/b' 07 08 00 04 'r/#/'",
      "ERR 82 invalid response topic", 0 },
    { "empty response topic", "30 09 00 03 'a/b' 03 08 00 00", "ERR 82 invalid response topic",
      0 },
    { "auth data without method", "f0 06 18 04 16 00 01 'x'",
      "ERR 82 authentication data without method", 0 },
    /* UTF-8 (§1.5.4): malformed */
    { "content type bad utf-8", "30 0b 00 03 'a/b' 05 03 00 02 c3 28",
      "ERR 81 invalid UTF-8", 0 },
    { "user property value bad utf-8", "30 0e 00 03 'a/b' 08 26 00 01 'k' 00 02 ed a0",
      "ERR 81 invalid UTF-8", 0 },
    { "user property name U+0000", "40 0b 00 01 00 07 26 00 01 00 00 01 'v'",
      "ERR 81 invalid UTF-8", 0 },
    { "reason string bad utf-8", "e0 06 80 04 1f 00 01 ff", "ERR 81 invalid UTF-8", 0 },
    { "topic bad utf-8", "30 05 00 02 c0 af 00", "ERR 81 invalid UTF-8", 0 },
    { "topic with a wildcard", "30 06 00 03 'a/+' 00", "ERR 81 invalid topic name", 0 },
    /* reason codes not listed for the packet */
    { "puback rc 01", "40 03 00 01 01", "ERR 81 invalid reason code", 0 },
    { "pubrel rc 10", "62 03 00 01 10", "ERR 81 invalid reason code", 0 },
    { "pubcomp rc 80", "70 03 00 01 80", "ERR 81 invalid reason code", 0 },
    { "disconnect rc 01", "e0 01 01", "ERR 81 invalid reason code", 0 },
    { "disconnect rc 84", "e0 01 84", "ERR 81 invalid reason code", 0 },
    { "auth rc 80", "f0 01 80", "ERR 81 invalid reason code", 0 },
    { "connack rc 01", "20 03 00 01 00", "ERR 81 invalid reason code", 0 },
    { "suback code 03", "90 04 00 01 00 03", "ERR 81 invalid reason code", 0 },
    { "unsuback code 01", "b0 04 00 01 00 01", "ERR 81 invalid reason code", 0 },
    { "suback without codes", "90 03 00 01 00", "ERR 81 no reason codes", 0 },
    { "connack session present with refusal", "20 03 01 80 00",
      "ERR 82 session present with a refusal", 0 },
    { "connack reserved flags", "20 03 02 00 00", "ERR 81 invalid CONNACK flags", 0 },
    { "connack without properties", "20 02 00 00", "ERR 81 truncated field", 0 },
    { "puback trailing byte", "40 05 00 01 00 00 ff", "ERR 81 trailing bytes in packet", 0 },
    /* subscription options (§3.8.3.1) */
    { "subscribe reserved bit 6", "82 07 00 01 00 00 01 '#' 40",
      "ERR 81 reserved subscription option bits", 0 },
    { "subscribe reserved bit 7", "82 07 00 01 00 00 01 '#' 80",
      "ERR 81 reserved subscription option bits", 0 },
    { "subscribe qos 3", "82 07 00 01 00 00 01 '#' 03", "ERR 81 invalid requested QoS", 0 },
    { "subscribe retain handling 3", "82 07 00 01 00 00 01 '#' 30",
      "ERR 82 invalid retain handling", 0 },
    { "subscribe no local on shared", "82 10 00 01 00 00 0a '$share/g/#' 04",
      "ERR 82 no local on a shared subscription", 0 },
    { "subscribe shared without filter", "82 0f 00 01 00 00 09 '$share/g/' 00",
      "ERR 82 invalid shared subscription filter", 0 },
    { "subscribe shared without name", "82 0f 00 01 00 00 09 '$share//#' 00",
      "ERR 82 invalid shared subscription filter", 0 },
    { "subscribe shared name +", "82 10 00 01 00 00 0a '$share/+/a' 00",
      "ERR 82 invalid shared subscription filter", 0 },
    { "subscribe shared name only", "82 0e 00 01 00 00 08 '$share/g' 00",
      "ERR 82 invalid shared subscription filter", 0 },
    { "subscribe without filters", "82 03 00 01 00", "ERR 82 SUBSCRIBE without filters", 0 },
    { "subscribe missing options", "82 06 00 01 00 00 01 '#'", "ERR 81 truncated field", 0 },
    { "subscribe bad filter", "82 08 00 01 00 00 02 'a#' 00", "ERR 81 invalid topic filter", 0 },
    { "unsubscribe without filters", "a2 03 00 01 00", "ERR 82 UNSUBSCRIBE without filters", 0 },
    /* CONNECT 5.0 flags and payload */
    { "connect reserved flag", "10 0d 00 04 'MQTT' 05 03 00 3c 00 00 00",
      "ERR 81 reserved CONNECT flag set", BEFORE_CONNECT },
    { "connect will qos without will", "10 0d 00 04 'MQTT' 05 0a 00 3c 00 00 00",
      "ERR 81 will QoS or retain without will flag", BEFORE_CONNECT },
    { "connect will qos 3", "10 13 00 04 'MQTT' 05 1e 00 3c 00 00 00 00 00 01 't' 00 00",
      "ERR 81 invalid will QoS", BEFORE_CONNECT },
    { "connect will topic wildcard", "10 13 00 04 'MQTT' 05 06 00 3c 00 00 00 00 00 01 '#' 00 00",
      "ERR 81 invalid will topic", BEFORE_CONNECT },
    { "connect without properties", "10 0c 00 04 'MQTT' 05 02 00 3c 00 00",
      "ERR 81 truncated field", BEFORE_CONNECT },
    { "connect trailing bytes", "10 0e 00 04 'MQTT' 05 02 00 3c 00 00 00 'x'",
      "ERR 81 trailing bytes in packet", BEFORE_CONNECT },
    { "connect will properties past the packet",
      "10 11 00 04 'MQTT' 05 06 00 3c 00 00 00 09 00 00 00",
      "ERR 81 property length past the packet", BEFORE_CONNECT },
};

static void test_valid_packets(void **state)
{
    (void)state;
    run_cases(valid_cases, N(valid_cases));
}

static void test_refused_packets(void **state)
{
    (void)state;
    run_cases(error_cases, N(error_cases));
}

/* All valid 5.0 packets after CONNECT back to back, fed in chunks of every size. */
static void test_stream_of_packets(void **state)
{
    struct mqtt_limits lim = { DEFAULT_MAX, MQTT_V_UNKNOWN };
    struct buf stream, want, got;
    size_t i, chunk;

    (void)state;
    buf_init(&stream);
    buf_init(&want);
    buf_init(&got);
    for (i = 0; i < N(valid_cases); i++) {
        uint8_t bytes[1024];
        size_t len = parse_spec(valid_cases[i].bytes, bytes, sizeof bytes);
        if (valid_cases[i].version != 0 || strncmp(valid_cases[i].want, "ERR", 3) == 0)
            continue;
        buf_append(&stream, bytes, len);
        buf_printf(&want, "%s\n", valid_cases[i].want);
    }
    for (chunk = 1; chunk <= 40; chunk++) {
        size_t ncuts = stream.len / chunk, *cuts = malloc((ncuts + 1) * sizeof *cuts);
        for (i = 0; i < ncuts; i++)
            cuts[i] = (i + 1) * chunk;
        got.len = 0;
        feed(&lim, MQTT_V5, stream.data, stream.len, cuts, ncuts, &got);
        assert_string_equal(buf_cstr(&got), buf_cstr(&want));
        free(cuts);
    }
    buf_fini(&stream);
    buf_fini(&want);
    buf_fini(&got);
}

/* mqtt_decode() is unchanged: version 5 refused, a level 5 CONNECT returned as name and
 * level only, AUTH reserved; mqtt_decode_v() with 3.1.1 gives what mqtt_decode() gives. */
static void test_3_1_1_unchanged(void **state)
{
    static const char *const specs[] = {
        "10 0c 00 04 'MQTT' 04 02 00 3c 00 00", "30 07 00 03 'a/b' 'hi'", "40 02 00 01",
        "82 06 00 01 00 01 '#' 00", "90 03 00 09 02", "e0 00", "c0 80 00",
        "40 03 00 01 00",
    };
    struct mqtt_limits lim = { 100, MQTT_V311 };
    struct mqtt_packet a, b;
    const char *why = NULL, *why2 = NULL;
    uint8_t bytes[64], reason = 0;
    size_t i, used = 0, used2 = 0;

    (void)state;
    for (i = 0; i < N(specs); i++) {
        size_t len = parse_spec(specs[i], bytes, sizeof bytes);
        enum codec_rc r1 = mqtt_decode(&lim, bytes, len, &a, &used, &why);
        enum codec_rc r2 = mqtt_decode_v(&lim, MQTT_V311, bytes, len, &b, &used2, &why2,
                                         &reason);
        assert_int_equal(r1, r2);
        if (r1 == CODEC_FRAME) {
            assert_int_equal(used, used2);
            assert_int_equal(a.type, b.type);
            assert_int_equal(a.id, b.id);
            assert_int_equal(b.version, MQTT_V311);
            assert_int_equal(b.props.present, 0);
        } else {
            assert_string_equal(why, why2);
        }
    }
    /* A level 5 CONNECT with a property: mqtt_decode() still stops at the level. */
    lim.version = MQTT_V_UNKNOWN;
    i = parse_spec("10 10 00 04 'MQTT' 05 02 00 3c 03 21 00 00 00 00", bytes, sizeof bytes);
    assert_int_equal(mqtt_decode(&lim, bytes, i, &a, &used, &why), CODEC_FRAME);
    assert_int_equal(a.connect.level, 5);
    assert_int_equal(a.version, MQTT_V311);
    assert_int_equal(mqtt_decode_v(&lim, MQTT_V_UNKNOWN, bytes, i, &b, &used, &why, &reason),
                     CODEC_ERROR);
    assert_int_equal(reason, MQTT_RC_PROTOCOL_ERROR);
    lim.version = MQTT_V5;
    assert_int_equal(mqtt_decode(&lim, bytes, i, &a, &used, &why), CODEC_ERROR);
    assert_string_equal(why, "protocol version not supported by the decoder");
    assert_int_equal(mqtt_decode_v(&lim, 6, bytes, i, &a, &used, &why, &reason), CODEC_ERROR);
    assert_int_equal(reason, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    /* NULL reason is fine */
    assert_int_equal(mqtt_decode_v(&lim, 6, bytes, i, &a, &used, &why, NULL), CODEC_ERROR);
}

/* Every first byte in 5.0: the 3.1.1 set and AUTH. */
static void test_every_first_byte(void **state)
{
    struct mqtt_limits lim = { 100, MQTT_V_UNKNOWN };
    int b0, accepted = 0;

    (void)state;
    for (b0 = 0; b0 < 256; b0++) {
        uint8_t p[1] = { (uint8_t)b0 };
        struct mqtt_packet pkt;
        const char *why = NULL;
        uint8_t reason = 0;
        size_t used;
        if (mqtt_decode_v(&lim, MQTT_V5, p, 1, &pkt, &used, &why, &reason) == CODEC_NEED_MORE)
            accepted++;
        else
            assert_int_equal(reason, MQTT_RC_MALFORMED_PACKET);
    }
    assert_int_equal(accepted, 24);
}

/* ---- property table, builder, reason codes */

static void test_property_table(void **state)
{
    static const struct {
        uint8_t id, type;
        const char *where; /* packet types (hex digit each), 'W' for Will */
    } table[] = {
        { 0x01, MQTT_PT_BYTE, "3W" },     { 0x02, MQTT_PT_U32, "3W" },
        { 0x03, MQTT_PT_STR, "3W" },      { 0x08, MQTT_PT_STR, "3W" },
        { 0x09, MQTT_PT_BIN, "3W" },      { 0x0B, MQTT_PT_VARINT, "38" },
        { 0x11, MQTT_PT_U32, "12e" },     { 0x12, MQTT_PT_STR, "2" },
        { 0x13, MQTT_PT_U16, "2" },       { 0x15, MQTT_PT_STR, "12f" },
        { 0x16, MQTT_PT_BIN, "12f" },     { 0x17, MQTT_PT_BYTE, "1" },
        { 0x18, MQTT_PT_U32, "W" },       { 0x19, MQTT_PT_BYTE, "1" },
        { 0x1A, MQTT_PT_STR, "2" },       { 0x1C, MQTT_PT_STR, "2e" },
        { 0x1F, MQTT_PT_STR, "245679bef" }, { 0x21, MQTT_PT_U16, "12" },
        { 0x22, MQTT_PT_U16, "12" },      { 0x23, MQTT_PT_U16, "3" },
        { 0x24, MQTT_PT_BYTE, "2" },      { 0x25, MQTT_PT_BYTE, "2" },
        { 0x26, MQTT_PT_PAIR, "123W456789abef" }, { 0x27, MQTT_PT_U32, "12" },
        { 0x28, MQTT_PT_BYTE, "2" },      { 0x29, MQTT_PT_BYTE, "2" },
        { 0x2A, MQTT_PT_BYTE, "2" },
    };
    size_t i, listed = 0;
    int id;

    (void)state;
    for (i = 0; i < N(table); i++) {
        int where;
        assert_int_equal(mqtt_prop_type(table[i].id), table[i].type);
        for (where = 0; where <= 15; where++) {
            char c = where == MQTT_PROPS_WILL ? 'W' : "0123456789abcdef"[where];
            int want = strchr(table[i].where, c) != NULL;
            if (mqtt_prop_allowed((uint8_t)where, table[i].id) != want)
                fail_msg("property %02x on %c: want %d", table[i].id, c, want);
        }
    }
    for (id = 0; id < 256; id++)
        listed += mqtt_prop_type((uint8_t)id) != MQTT_PT_NONE;
    assert_int_equal(listed, N(table));
    assert_int_equal(mqtt_prop_allowed(MQTT_PINGREQ, MQTT_PROP_USER_PROPERTY), 0);
}

static void test_reason_codes(void **state)
{
    int rc, n = 0;

    (void)state;
    assert_string_equal(mqtt_rc_name(MQTT_RC_SUCCESS), "Success");
    assert_string_equal(mqtt_rc_name(MQTT_RC_MALFORMED_PACKET), "Malformed Packet");
    assert_string_equal(mqtt_rc_name(MQTT_RC_PROTOCOL_ERROR), "Protocol Error");
    assert_string_equal(mqtt_rc_name(MQTT_RC_TOPIC_ALIAS_INVALID), "Topic Alias invalid");
    assert_string_equal(mqtt_rc_name(MQTT_RC_WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
                        "Wildcard Subscriptions not supported");
    assert_string_equal(mqtt_rc_name(0x03), "?");
    assert_string_equal(mqtt_rc_name(0xA3), "?");
    for (rc = 0; rc < 256; rc++)
        n += strcmp(mqtt_rc_name((uint8_t)rc), "?") != 0;
    assert_int_equal(n, 43);
    /* Per packet type: counts of the lists in §3 */
    {
        static const struct { uint8_t type; int count; } counts[] = {
            { MQTT_CONNACK, 22 }, { MQTT_PUBACK, 9 }, { MQTT_PUBREC, 9 },
            { MQTT_PUBREL, 2 },   { MQTT_PUBCOMP, 2 }, { MQTT_SUBACK, 12 },
            { MQTT_UNSUBACK, 7 }, { MQTT_DISCONNECT, 29 }, { MQTT_AUTH, 3 },
            { MQTT_PUBLISH, 0 },  { MQTT_CONNECT, 0 },
        };
        size_t i;
        for (i = 0; i < N(counts); i++) {
            int c = 0;
            for (rc = 0; rc < 256; rc++)
                c += mqtt_rc_allowed(counts[i].type, (uint8_t)rc);
            if (c != counts[i].count)
                fail_msg("type %u: %d reason codes, want %d", counts[i].type, c,
                         counts[i].count);
        }
    }
    assert_true(mqtt_rc_allowed(MQTT_DISCONNECT, MQTT_RC_DISCONNECT_WITH_WILL));
    assert_false(mqtt_rc_allowed(MQTT_CONNACK, MQTT_RC_DISCONNECT_WITH_WILL));
    assert_true(mqtt_rc_allowed(MQTT_PUBREL, MQTT_RC_PACKET_ID_NOT_FOUND));
    assert_true(mqtt_rc_allowed(MQTT_AUTH, MQTT_RC_REAUTHENTICATE));
}

static void test_filter_share(void **state)
{
    static const struct {
        const char *filter;
        int rc;
        const char *name, *rest;
    } cases[] = {
        { "$share/g/a/b", 1, "g", "a/b" }, { "$share/group/#", 1, "group", "#" },
        { "$share/g//", 1, "g", "/" },     { "$share/g/+", 1, "g", "+" },
        { "a/b", 0, NULL, NULL },          { "$share", 0, NULL, NULL },
        { "$shared/g/a", 0, NULL, NULL },  { "$SHARE/g/a", 0, NULL, NULL },
        { "$share/", -1, NULL, NULL },     { "$share/g", -1, NULL, NULL },
        { "$share//a", -1, NULL, NULL },   { "$share/g/", -1, NULL, NULL },
        { "$share/+/a", -1, NULL, NULL },  { "$share/#/a", -1, NULL, NULL },
        { "$share/a+/a", -1, NULL, NULL }, { "$share/g/a#", -1, NULL, NULL },
    };
    size_t i;

    (void)state;
    for (i = 0; i < N(cases); i++) {
        struct mqtt_str name = { 0 }, rest = { 0 };
        int rc = mqtt_filter_share(cases[i].filter, strlen(cases[i].filter), &name, &rest);
        if (rc != cases[i].rc)
            fail_msg("%s: got %d", cases[i].filter, rc);
        if (rc == 1) {
            assert_int_equal(name.len, strlen(cases[i].name));
            assert_memory_equal(name.p, cases[i].name, name.len);
            assert_int_equal(rest.len, strlen(cases[i].rest));
            assert_memory_equal(rest.p, cases[i].rest, rest.len);
        }
    }
}

static void expect_hex(const struct buf *b, const char *want_hex)
{
    uint8_t bytes[1024];
    size_t len = parse_spec(want_hex, bytes, sizeof bytes);

    if (b->len != len || memcmp(b->data, bytes, len) != 0) {
        struct buf got;
        buf_init(&got);
        put_escaped(&got, b->data, b->len);
        fail_msg("got %s, want %s", buf_cstr(&got), want_hex);
    }
}

static void test_property_builder(void **state)
{
    struct buf b;
    struct mqtt_props ps;
    struct mqtt_prop p;
    const char *why = NULL;
    size_t off = 0;

    (void)state;
    buf_init(&b);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_PAYLOAD_FORMAT, 1), 0);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_TOPIC_ALIAS, 0x1234), 0);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_MESSAGE_EXPIRY, 0x01020304), 0);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_SUBSCRIPTION_ID, 128), 0);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_SUBSCRIPTION_ID, 16384), 0);
    assert_int_equal(mqtt_prop_put_str(&b, MQTT_PROP_CONTENT_TYPE, "ct", 2), 0);
    assert_int_equal(mqtt_prop_put_bin(&b, MQTT_PROP_CORRELATION_DATA, "\0\1", 2), 0);
    assert_int_equal(mqtt_prop_put_user(&b, "k", 1, "v", 1), 0);
    expect_hex(&b, "01 01 23 12 34 02 01 02 03 04 0b 80 01 0b 80 80 01 03 00 02 'ct'"
                   " 09 00 02 00 01 26 00 01 'k' 00 01 'v'");
    assert_int_equal(mqtt_props_parse(MQTT_PUBLISH, b.data, b.len, &ps, &why), 0);
    assert_int_equal(ps.topic_alias, 0x1234);
    assert_int_equal(ps.subscription_id, 128);
    assert_int_equal(ps.subscription_id_count, 2);
    assert_int_equal(ps.user_prop_count, 1);
    assert_true(mqtt_prop_find(&ps, MQTT_PROP_SUBSCRIPTION_ID, &off, &p));
    assert_int_equal(p.u, 128);
    assert_true(mqtt_prop_find(&ps, MQTT_PROP_SUBSCRIPTION_ID, &off, &p));
    assert_int_equal(p.u, 16384);
    assert_false(mqtt_prop_find(&ps, MQTT_PROP_SUBSCRIPTION_ID, &off, &p));
    /* The same bytes are not valid on a SUBSCRIBE (payload format) */
    assert_int_equal(mqtt_props_parse(MQTT_SUBSCRIBE, b.data, b.len, NULL, &why),
                     MQTT_RC_MALFORMED_PACKET);
    assert_string_equal(why, "property not allowed on this packet");
    /* Copying every property rebuilds the same bytes. */
    {
        struct buf c;
        buf_init(&c);
        off = 0;
        while (mqtt_prop_next(&ps, &off, &p))
            assert_int_equal(mqtt_prop_put(&c, &p), 0);
        assert_int_equal(c.len, b.len);
        assert_memory_equal(c.data, b.data, b.len);
        buf_fini(&c);
    }
    /* Type and range errors append nothing. */
    b.len = 0;
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_PAYLOAD_FORMAT, 256), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_RECEIVE_MAXIMUM, 65536), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_SUBSCRIPTION_ID, 0), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_SUBSCRIPTION_ID, MQTT_MAX_REMAINING + 1),
                     GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&b, MQTT_PROP_CONTENT_TYPE, 1), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&b, 0x04, 1), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_str(&b, MQTT_PROP_CORRELATION_DATA, "x", 1), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_bin(&b, MQTT_PROP_CONTENT_TYPE, "x", 1), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_str(&b, MQTT_PROP_REASON_STRING, "x", MQTT_MAX_STRING + 1),
                     GW_EINVAL);
    assert_int_equal(b.len, 0);
    buf_fini(&b);
}

/* ---- encoders: exact bytes, then decoded back in every split */

static void expect_encoded(struct buf *b, const char *want_hex, const char *want_desc)
{
    expect_hex(b, want_hex);
    check_bytes(want_desc, MQTT_V5, b->data, b->len, 0, want_desc);
    b->len = 0;
}

static void test_encoders_round_trip(void **state)
{
    struct buf b, pb, wb;
    struct mqtt_bin props, wprops;
    struct mqtt_connect c;
    static const uint8_t subcodes[3] = { 0x00, 0x02, 0x9e }, unsubcodes[2] = { 0x00, 0x11 };
    struct mqtt_sub_req5 subs[2] = { { { "a/+", 3 }, 0x01 }, { { "$share/g/#", 10 }, 0x2a } };
    struct mqtt_str unsubs[1] = { { "a/+", 3 } };

    (void)state;
    buf_init(&b);
    buf_init(&pb);
    buf_init(&wb);

    /* CONNECT with properties, a will with properties, user name and password */
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SESSION_EXPIRY, 3600), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_RECEIVE_MAXIMUM, 20), 0);
    assert_int_equal(mqtt_prop_put_int(&wb, MQTT_PROP_WILL_DELAY, 5), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    wprops = (struct mqtt_bin){ wb.data, wb.len };
    memset(&c, 0, sizeof c);
    c.clean_session = true;
    c.keepalive_s = 30;
    c.client_id = (struct mqtt_str){ "c1", 2 };
    c.will = true;
    c.will_qos = 2;
    c.will_topic = (struct mqtt_str){ "w", 1 };
    c.will_payload = (struct mqtt_bin){ (const uint8_t *)"bye", 3 };
    c.has_username = c.has_password = true;
    c.username = (struct mqtt_str){ "u", 1 };
    c.password = (struct mqtt_bin){ (const uint8_t *)"p", 1 };
    assert_int_equal(mqtt_encode_connect5(&b, &c, &props, &wprops), 0);
    expect_hex(&b, "10 2b 00 04 'MQTT' 05 d6 00 1e 08 11 00 00 0e 10 21 00 14 00 02 'c1'"
                   " 05 18 00 00 00 05 00 01 'w' 00 03 'bye' 00 01 'u' 00 01 'p'");
    check_bytes("connect5", MQTT_V_UNKNOWN, b.data, b.len, 0,
                "CONNECT MQTT/5 clean=1 keepalive=30 id='c1' [11=3600 21=20] will=q2 'w' 'bye' "
                "[18=5] user='u' pass='p'");
    b.len = 0;
    /* Minimal CONNECT: no properties, no will */
    memset(&c, 0, sizeof c);
    assert_int_equal(mqtt_encode_connect5(&b, &c, NULL, NULL), 0);
    expect_hex(&b, "10 0d 00 04 'MQTT' 05 00 00 00 00 00 00");
    b.len = 0;

    /* CONNACK with the properties a server announces */
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_RECEIVE_MAXIMUM, 100), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_MAXIMUM_QOS, 1), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_TOPIC_ALIAS_MAXIMUM, 10), 0);
    assert_int_equal(mqtt_prop_put_str(&pb, MQTT_PROP_ASSIGNED_CLIENT_ID, "auto-1", 6), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SHARED_SUB_AVAILABLE, 0), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_connack5(&b, false, 0, &props), 0);
    expect_encoded(&b, "20 16 00 00 13 21 00 64 24 01 22 00 0a 12 00 06 'auto-1' 2a 00",
                   "CONNACK sp=0 rc=00 [21=100 24=1 22=10 12='auto-1' 2a=0]");
    assert_int_equal(mqtt_encode_connack5(&b, true, 0, NULL), 0);
    expect_encoded(&b, "20 03 01 00 00", "CONNACK sp=1 rc=00 []");
    assert_int_equal(mqtt_encode_connack5(&b, false, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION, NULL),
                     0);
    expect_encoded(&b, "20 03 00 84 00", "CONNACK sp=0 rc=84 []");

    /* PUBLISH with message properties and two subscription identifiers */
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_PAYLOAD_FORMAT, 1), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_MESSAGE_EXPIRY, 60), 0);
    assert_int_equal(mqtt_prop_put_str(&pb, MQTT_PROP_RESPONSE_TOPIC, "r", 1), 0);
    assert_int_equal(mqtt_prop_put_bin(&pb, MQTT_PROP_CORRELATION_DATA, "id", 2), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SUBSCRIPTION_ID, 1), 0);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SUBSCRIPTION_ID, 300), 0);
    assert_int_equal(mqtt_prop_put_user(&pb, "k", 1, "v", 1), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_publish5(&b, "a/b", 3, &props, (const uint8_t *)"hi", 2, 1,
                                          false, false, 9), 0);
    expect_encoded(&b, "32 26 00 03 'a/b' 00 09 1c 01 01 02 00 00 00 3c 08 00 01 'r'"
                       " 09 00 02 'id' 0b 01 0b ac 02 26 00 01 'k' 00 01 'v' 'hi'",
                   "PUBLISH q1 id=9 'a/b' 'hi' [01=1 02=60 08='r' 09='id' 0b=1 0b=300 "
                   "26='k':'v']");
    /* An alias instead of the topic */
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_TOPIC_ALIAS, 3), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_publish5(&b, "", 0, &props, (const uint8_t *)"x", 1, 0, true,
                                          false, 0), 0);
    expect_encoded(&b, "31 07 00 00 03 23 00 03 'x'", "PUBLISH q0 retain id=0 '' 'x' [23=3]");
    assert_int_equal(mqtt_encode_publish5(&b, "t", 1, NULL, NULL, 0, 2, false, true, 1), 0);
    expect_encoded(&b, "3c 06 00 01 't' 00 01 00", "PUBLISH q2 dup id=1 't' '' []");
    /* Header only: the same bytes as the whole packet */
    assert_int_equal(mqtt_encode_publish5_header(&b, "t", 1, NULL, 2, 0, false, false, 0), 0);
    buf_append(&b, "hi", 2);
    expect_encoded(&b, "30 06 00 01 't' 00 'hi'", "PUBLISH q0 id=0 't' 'hi' []");

    /* Acks: success without properties is 2 bytes, a code alone 3, properties after */
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBACK, 1, 0, NULL), 0);
    expect_encoded(&b, "40 02 00 01", "PUBACK id=1 rc=00 []");
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBREC, 2, MQTT_RC_NO_MATCHING_SUBSCRIBERS, NULL),
                     0);
    expect_encoded(&b, "50 03 00 02 10", "PUBREC id=2 rc=10 []");
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_str(&pb, MQTT_PROP_REASON_STRING, "no", 2), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBREL, 3, MQTT_RC_PACKET_ID_NOT_FOUND, &props),
                     0);
    expect_encoded(&b, "62 09 00 03 92 05 1f 00 02 'no'", "PUBREL id=3 rc=92 [1f='no']");
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBCOMP, 4, 0, &props), 0);
    expect_encoded(&b, "70 09 00 04 00 05 1f 00 02 'no'", "PUBCOMP id=4 rc=00 [1f='no']");

    /* SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK */
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SUBSCRIPTION_ID, 7), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_subscribe5(&b, 10, &props, subs, 2), 0);
    expect_encoded(&b, "82 18 00 0a 02 0b 07 00 03 'a/+' 01 00 0a '$share/g/#' 2a",
                   "SUBSCRIBE id=10 'a/+':01 '$share/g/#':2a [0b=7]");
    assert_int_equal(mqtt_encode_suback5(&b, 10, NULL, subcodes, 3), 0);
    expect_encoded(&b, "90 06 00 0a 00 00 02 9e", "SUBACK id=10 00 02 9e []");
    assert_int_equal(mqtt_encode_unsubscribe5(&b, 11, NULL, unsubs, 1), 0);
    expect_encoded(&b, "a2 08 00 0b 00 00 03 'a/+'", "UNSUBSCRIBE id=11 'a/+' []");
    assert_int_equal(mqtt_encode_unsuback5(&b, 11, NULL, unsubcodes, 2), 0);
    expect_encoded(&b, "b0 05 00 0b 00 00 11", "UNSUBACK id=11 00 11 []");

    /* DISCONNECT and AUTH */
    assert_int_equal(mqtt_encode_disconnect5(&b, 0, NULL), 0);
    expect_encoded(&b, "e0 00", "DISCONNECT rc=00 []");
    assert_int_equal(mqtt_encode_disconnect5(&b, MQTT_RC_SERVER_SHUTTING_DOWN, NULL), 0);
    expect_encoded(&b, "e0 01 8b", "DISCONNECT rc=8b []");
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_str(&pb, MQTT_PROP_SERVER_REFERENCE, "s", 1), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_disconnect5(&b, MQTT_RC_USE_ANOTHER_SERVER, &props), 0);
    expect_encoded(&b, "e0 06 9c 04 1c 00 01 's'", "DISCONNECT rc=9c [1c='s']");
    assert_int_equal(mqtt_encode_auth(&b, 0, NULL), 0);
    expect_encoded(&b, "f0 00", "AUTH rc=00 []");
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_str(&pb, MQTT_PROP_AUTH_METHOD, "m", 1), 0);
    assert_int_equal(mqtt_prop_put_bin(&pb, MQTT_PROP_AUTH_DATA, "d", 1), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_auth(&b, MQTT_RC_CONTINUE_AUTHENTICATION, &props), 0);
    expect_encoded(&b, "f0 0a 18 08 15 00 01 'm' 16 00 01 'd'", "AUTH rc=18 [15='m' 16='d']");
    buf_fini(&b);
    buf_fini(&pb);
    buf_fini(&wb);
}

/* Encoders refuse what the decoder would refuse, and then append nothing. */
static void test_encoder_errors(void **state)
{
    struct buf b, pb;
    struct mqtt_bin props;
    struct mqtt_connect c;
    struct mqtt_sub_req5 sub = { { "a", 1 }, 0x40 };
    static const uint8_t bad_suback[1] = { 0x11 };

    (void)state;
    buf_init(&b);
    buf_init(&pb);
    /* properties not allowed on the packet, duplicated, or out of range */
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SESSION_EXPIRY, 1), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_publish5(&b, "t", 1, &props, NULL, 0, 0, false, false, 0),
                     GW_EINVAL);
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBACK, 1, 0, &props), GW_EINVAL);
    assert_int_equal(mqtt_encode_auth(&b, 0, &props), GW_EINVAL);
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_SESSION_EXPIRY, 2), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_connack5(&b, false, 0, &props), GW_EINVAL);
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_RECEIVE_MAXIMUM, 0), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    assert_int_equal(mqtt_encode_connack5(&b, false, 0, &props), GW_EINVAL);
    /* reason codes not listed for the packet */
    assert_int_equal(mqtt_encode_connack5(&b, false, 0x01, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_connack5(&b, true, 0x80, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBREL, 1, 0x10, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_SUBACK, 1, 0, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_ack5(&b, MQTT_PUBACK, 0, 0, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_disconnect5(&b, 0x18, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_auth(&b, 0x04, NULL), GW_EINVAL);
    assert_int_equal(mqtt_encode_suback5(&b, 1, NULL, bad_suback, 1), GW_EINVAL);
    assert_int_equal(mqtt_encode_unsuback5(&b, 1, NULL, bad_suback, 0), GW_EINVAL);
    /* PUBLISH: empty topic without alias, QoS, ids */
    assert_int_equal(mqtt_encode_publish5(&b, "", 0, NULL, NULL, 0, 0, false, false, 0),
                     GW_EINVAL);
    assert_int_equal(mqtt_encode_publish5(&b, "t", 1, NULL, NULL, 0, 3, false, false, 1),
                     GW_EINVAL);
    assert_int_equal(mqtt_encode_publish5(&b, "t", 1, NULL, NULL, 0, 1, false, false, 0),
                     GW_EINVAL);
    /* SUBSCRIBE options */
    assert_int_equal(mqtt_encode_subscribe5(&b, 1, NULL, &sub, 1), GW_EINVAL);
    sub.options = 0x30;
    assert_int_equal(mqtt_encode_subscribe5(&b, 1, NULL, &sub, 1), GW_EINVAL);
    sub.options = 0x03;
    assert_int_equal(mqtt_encode_subscribe5(&b, 1, NULL, &sub, 1), GW_EINVAL);
    sub.options = 0;
    assert_int_equal(mqtt_encode_subscribe5(&b, 1, NULL, &sub, 0), GW_EINVAL);
    /* CONNECT: will properties not allowed on a will */
    pb.len = 0;
    assert_int_equal(mqtt_prop_put_int(&pb, MQTT_PROP_TOPIC_ALIAS, 1), 0);
    props = (struct mqtt_bin){ pb.data, pb.len };
    memset(&c, 0, sizeof c);
    c.will = true;
    c.will_topic = (struct mqtt_str){ "w", 1 };
    assert_int_equal(mqtt_encode_connect5(&b, &c, NULL, &props), GW_EINVAL);
    assert_int_equal(mqtt_encode_connect5(&b, &c, &props, NULL), GW_EINVAL);
    c.will_qos = 3;
    assert_int_equal(mqtt_encode_connect5(&b, &c, NULL, NULL), GW_EINVAL);
    assert_int_equal(b.len, 0);
    buf_fini(&b);
    buf_fini(&pb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_packets),
        cmocka_unit_test(test_refused_packets),
        cmocka_unit_test(test_stream_of_packets),
        cmocka_unit_test(test_3_1_1_unchanged),
        cmocka_unit_test(test_every_first_byte),
        cmocka_unit_test(test_property_table),
        cmocka_unit_test(test_reason_codes),
        cmocka_unit_test(test_filter_share),
        cmocka_unit_test(test_property_builder),
        cmocka_unit_test(test_encoders_round_trip),
        cmocka_unit_test(test_encoder_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
