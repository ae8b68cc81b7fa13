/* protocols/mqtt/topic.c: MQTT strings, topic names and topic filters. Pure functions,
 * any thread. UTF-8 validation follows RFC 3629 with MQTT's extra ban on U+0000
 * [MQTT-1.5.3-1,2]; matching follows 3.1.1 §4.7 level by level, and is the reference
 * the router (router.c) must agree with (the fuzz target checks that it does). */
#include "protocols/mqtt/mqtt.h"

#include <string.h>

#include "protocols/mqtt/mqtt_int.h"

/* A word has a zero byte: the classic (w - 0x01..) & ~w & 0x80.. test. */
#define HAS_ZERO_BYTE(w) (((w) - 0x0101010101010101ull) & ~(w) & 0x8080808080808080ull)

int mqtt_utf8_valid(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;

    while (i < len) {
        uint8_t c = s[i];

        if (c < 0x80) {
            /* ASCII runs dominate topics: check eight bytes at a time. */
            while (i + 8 <= len) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if ((w & 0x8080808080808080ull) || HAS_ZERO_BYTE(w))
                    break;
                i += 8;
            }
            if (i < len && s[i] < 0x80) {
                if (s[i] == 0)
                    return 0; /* U+0000 [MQTT-1.5.3-2] */
                i++;
            }
            continue;
        }
        if (c < 0xc2 || c > 0xf4)
            return 0; /* stray continuation, overlong 2-byte lead, or > U+10FFFF */
        if (c < 0xe0) {
            if (i + 1 >= len || (s[i + 1] & 0xc0) != 0x80)
                return 0;
            i += 2;
        } else if (c < 0xf0) {
            if (i + 2 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return 0;
            if (c == 0xe0 && s[i + 1] < 0xa0)
                return 0; /* overlong */
            if (c == 0xed && s[i + 1] >= 0xa0)
                return 0; /* U+D800..U+DFFF surrogates [MQTT-1.5.3-1] */
            i += 3;
        } else {
            if (i + 3 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80
                || (s[i + 3] & 0xc0) != 0x80)
                return 0;
            if (c == 0xf0 && s[i + 1] < 0x90)
                return 0; /* overlong */
            if (c == 0xf4 && s[i + 1] >= 0x90)
                return 0; /* > U+10FFFF */
            i += 4;
        }
    }
    return 1;
}

int mqtt_topic_valid(const char *name, size_t len)
{
    if (len == 0 || len > MQTT_MAX_STRING) /* [MQTT-4.7.3-1] [MQTT-4.7.3-3] */
        return 0;
    if (memchr(name, '+', len) || memchr(name, '#', len)) /* [MQTT-3.3.2-2] [MQTT-4.7.1-1] */
        return 0;
    return mqtt_utf8_valid(name, len);
}

int mqtt_filter_valid(const char *f, size_t len)
{
    size_t i;

    if (len == 0 || len > MQTT_MAX_STRING) /* [MQTT-4.7.3-1] [MQTT-4.7.3-3] */
        return 0;
    for (i = 0; i < len; i++) {
        if (f[i] != '+' && f[i] != '#')
            continue;
        /* A wildcard occupies a whole level [MQTT-4.7.1-2] [MQTT-4.7.1-3]... */
        if (i > 0 && f[i - 1] != '/')
            return 0;
        if (f[i] == '+' && i + 1 < len && f[i + 1] != '/')
            return 0;
        /* ...and '#' is the last character of the filter [MQTT-4.7.1-2]. */
        if (f[i] == '#' && i + 1 != len)
            return 0;
    }
    return mqtt_utf8_valid(f, len);
}

/* End of the level starting at i: the next '/' or len. */
static size_t level_end(const char *s, size_t len, size_t i)
{
    const char *slash = i < len ? memchr(s + i, '/', len - i) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

int mqtt_topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen)
{
    size_t fi = 0, ti = 0;
    int topic_more = 1; /* the topic has a level starting at ti */

    if (flen == 0 || tlen == 0)
        return 0;
    /* Wildcards at the first level do not match '$' topics [MQTT-4.7.2-1]. */
    if (topic[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
        return 0;
    for (;;) {
        size_t fe = level_end(filter, flen, fi), te;

        /* '#' matches this level, all below, and the parent level alone:
         * "sport/#" matches "sport" [MQTT-4.7.1-2]. */
        if (fe - fi == 1 && filter[fi] == '#')
            return 1;
        if (!topic_more)
            return 0;
        te = level_end(topic, tlen, ti);
        if (!(fe - fi == 1 && filter[fi] == '+')
            && (fe - fi != te - ti || memcmp(filter + fi, topic + ti, fe - fi) != 0))
            return 0;
        if (fe == flen)
            return te == tlen;
        fi = fe + 1;
        if (te == tlen)
            topic_more = 0;
        else
            ti = te + 1;
    }
}
