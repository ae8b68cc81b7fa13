/* gateway/proxy.c: see proxy.h. The PROXY protocol as HAProxy specifies it
 * (doc/proxy-protocol.txt): v1 is one text line "PROXY TCP4|TCP6|UNKNOWN ...\r\n" of at
 * most 107 bytes; v2 is a 12-byte signature, a version/command byte, a family byte, a
 * 16-bit length and that many bytes of addresses and TLVs (the TLVs are skipped). */
#include "gateway/proxy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

static const uint8_t V1_SIG[6] = {'P', 'R', 'O', 'X', 'Y', ' '};
static const uint8_t V2_SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Whether the bytes so far agree with sig (as far as both go). */
static bool prefix_of(const uint8_t *p, size_t len, const uint8_t *sig, size_t siglen)
{
    return memcmp(p, sig, len < siglen ? len : siglen) == 0;
}

static enum proxy_rc fail(const char **why, const char *reason)
{
    *why = reason;
    return PROXY_ERROR;
}

/* A decimal port: 1..5 digits, no sign, at most 65535. */
static int parse_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* Fills ss from an address text of family af and a port text. */
static int set_addr(int af, const char *addr, const char *port, struct sockaddr_storage *ss)
{
    uint16_t pt;

    memset(ss, 0, sizeof *ss);
    if (parse_port(port, &pt) != 0)
        return -1;
    if (af == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(pt);
        return inet_pton(AF_INET, addr, &a->sin_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(pt);
    return inet_pton(AF_INET6, addr, &a->sin6_addr) == 1 ? 0 : -1;
}

/* v1: "PROXY " proto SP src SP dst SP sport SP dport CRLF, or "PROXY UNKNOWN...CRLF". */
static enum proxy_rc decode_v1(const uint8_t *p, size_t len, struct proxy_header *out,
                               size_t *used, const char **why)
{
    char line[PROXY_V1_MAX + 1], *f[6];
    size_t n = len < PROXY_V1_MAX ? len : PROXY_V1_MAX, end = 0, nf = 0;
    int af;

    /* byte by byte, so the first bad byte names the reason however the reads split */
    for (size_t i = sizeof V1_SIG; i < n && !end; i++) {
        if (p[i] == '\n') {
            if (p[i - 1] != '\r')
                return fail(why, "PROXY v1 line not ended by CRLF");
            end = i;
        } else if (p[i] < 0x20 && p[i] != '\r') {
            return fail(why, "PROXY v1 line with a control byte");
        } else if (p[i] > 0x7e) {
            return fail(why, "PROXY v1 line with a non-ASCII byte");
        } else if (p[i] == '\r' && i + 1 < n && p[i + 1] != '\n') {
            return fail(why, "PROXY v1 line with CR before its end");
        }
    }
    if (!end)
        return len >= PROXY_V1_MAX ? fail(why, "PROXY v1 line longer than 107 bytes")
                                   : PROXY_NEED_MORE;
    memcpy(line, p, end - 1);
    line[end - 1] = '\0';
    memset(out, 0, sizeof *out);
    out->version = 1;
    *used = end + 1;
    if (strncmp(line + 6, "UNKNOWN", 7) == 0) { /* the rest of the line is ignored */
        out->local = true;
        return PROXY_DONE;
    }
    /* split on single spaces: PROXY, proto, src, dst, sport, dport */
    for (char *s = line;; s++) {
        if (nf == 6)
            return fail(why, "PROXY v1 line with too many fields");
        f[nf++] = s;
        s = strchr(s, ' ');
        if (!s)
            break;
        *s = '\0';
    }
    if (nf != 6)
        return fail(why, "PROXY v1 line with too few fields");
    if (strcmp(f[1], "TCP4") == 0)
        af = AF_INET;
    else if (strcmp(f[1], "TCP6") == 0)
        af = AF_INET6;
    else
        return fail(why, "PROXY v1 protocol not TCP4, TCP6 or UNKNOWN");
    if (set_addr(af, f[2], f[4], &out->src) != 0 || set_addr(af, f[3], f[5], &out->dst) != 0)
        return fail(why, "PROXY v1 address or port invalid");
    return PROXY_DONE;
}

/* v2: signature, ver_cmd, fam, len (network order), then len bytes. */
static enum proxy_rc decode_v2(const uint8_t *p, size_t len, struct proxy_header *out,
                               size_t *used, const char **why)
{
    size_t n;
    int cmd;

    if (len < 13)
        return PROXY_NEED_MORE;
    if ((p[12] >> 4) != 2)
        return fail(why, "PROXY v2 version not 2");
    cmd = p[12] & 0x0f;
    if (cmd != 0 && cmd != 1)
        return fail(why, "PROXY v2 command not LOCAL or PROXY");
    if (len < 16)
        return PROXY_NEED_MORE;
    n = (size_t)p[14] << 8 | p[15];
    if (n > PROXY_V2_ADDR_MAX)
        return fail(why, "PROXY v2 header longer than 2064 bytes");
    if (len < 16 + n)
        return PROXY_NEED_MORE;
    memset(out, 0, sizeof *out);
    out->version = 2;
    *used = 16 + n;
    if (cmd == 0) { /* LOCAL: the balancer's own connection (a health check) */
        out->local = true;
        return PROXY_DONE;
    }
    p += 16;
    switch (p[-3]) {
    case 0x00: /* UNSPEC: the receiver keeps the connection's own address */
        out->local = true;
        return PROXY_DONE;
    case 0x11: { /* TCP over IPv4: src 4, dst 4, sport 2, dport 2 */
        struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
        if (n < 12)
            return fail(why, "PROXY v2 TCP4 addresses shorter than 12 bytes");
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, p, 4);
        memcpy(&d->sin_addr, p + 4, 4);
        memcpy(&s->sin_port, p + 8, 2);
        memcpy(&d->sin_port, p + 10, 2);
        return PROXY_DONE;
    }
    case 0x21: { /* TCP over IPv6: src 16, dst 16, sport 2, dport 2 */
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
        if (n < 36)
            return fail(why, "PROXY v2 TCP6 addresses shorter than 36 bytes");
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, p, 16);
        memcpy(&d->sin6_addr, p + 16, 16);
        memcpy(&s->sin6_port, p + 32, 2);
        memcpy(&d->sin6_port, p + 34, 2);
        return PROXY_DONE;
    }
    default:
        return fail(why, "PROXY v2 family not TCP4, TCP6 or UNSPEC");
    }
}

enum proxy_rc proxy_decode(unsigned accept, const uint8_t *p, size_t len, struct proxy_header *out,
                           size_t *used, const char **why)
{
    if (len == 0)
        return PROXY_NEED_MORE;
    if ((accept & PROXY_V1) && prefix_of(p, len, V1_SIG, sizeof V1_SIG))
        return len <= sizeof V1_SIG ? PROXY_NEED_MORE : decode_v1(p, len, out, used, why);
    if ((accept & PROXY_V2) && prefix_of(p, len, V2_SIG, sizeof V2_SIG))
        return decode_v2(p, len, out, used, why);
    /* the other version's signature: named once it is whole, so every split agrees */
    if (accept == PROXY_V1 && prefix_of(p, len, V2_SIG, sizeof V2_SIG))
        return len < sizeof V2_SIG ? PROXY_NEED_MORE
                                   : fail(why, "PROXY v2 header where v1 is expected");
    if (accept == PROXY_V2 && prefix_of(p, len, V1_SIG, sizeof V1_SIG))
        return len < sizeof V1_SIG ? PROXY_NEED_MORE
                                   : fail(why, "PROXY v1 header where v2 is expected");
    return fail(why, "no PROXY header");
}

/* ---- trusted peers ---- */

static int parse_cidr(const char *s, struct proxy_cidr *c)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    unsigned maxbits;

    if (hl == 0 || hl >= sizeof host)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    memset(c, 0, sizeof *c);
    if (inet_pton(AF_INET, host, c->addr) == 1) {
        c->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, host, c->addr) == 1) {
        c->family = AF_INET6;
        maxbits = 128;
    } else {
        return -1;
    }
    c->bits = maxbits;
    if (slash) {
        const char *d = slash + 1;
        unsigned v = 0;
        size_t nd = strlen(d);
        if (nd == 0 || nd > 3)
            return -1;
        for (size_t i = 0; i < nd; i++) {
            if (d[i] < '0' || d[i] > '9')
                return -1;
            v = v * 10 + (unsigned)(d[i] - '0');
        }
        if (v > maxbits)
            return -1;
        c->bits = v;
    }
    return 0;
}

int proxy_trust_parse(const char *json, struct proxy_trust *t, char *err, size_t errlen)
{
    cJSON *doc = cJSON_Parse(json), *e;
    size_t i = 0;

    memset(t, 0, sizeof *t);
    if (!cJSON_IsArray(doc)) {
        snprintf(err, errlen, "limits.proxy_trusted: must be a JSON array of CIDRs");
        cJSON_Delete(doc);
        return -1;
    }
    t->n = (size_t)cJSON_GetArraySize(doc);
    t->v = t->n ? xcalloc(t->n, sizeof *t->v) : NULL;
    cJSON_ArrayForEach(e, doc) {
        if (!cJSON_IsString(e) || parse_cidr(e->valuestring, &t->v[i]) != 0) {
            snprintf(err, errlen,
                     "limits.proxy_trusted: entry %zu is not an IPv4 or IPv6 address or CIDR "
                     "(\"10.0.0.0/8\", \"::1/128\")",
                     i + 1);
            cJSON_Delete(doc);
            proxy_trust_fini(t);
            return -1;
        }
        i++;
    }
    cJSON_Delete(doc);
    return 0;
}

void proxy_trust_fini(struct proxy_trust *t)
{
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *net, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;

    if (memcmp(a, net, whole) != 0)
        return false;
    return rest == 0 || ((a[whole] ^ net[whole]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool proxy_trusted(const struct proxy_trust *t, const struct sockaddr *addr)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const uint8_t *a4 = NULL, *a6 = NULL;

    if (addr->sa_family == AF_INET) {
        a4 = (const uint8_t *)&((const struct sockaddr_in *)addr)->sin_addr;
    } else if (addr->sa_family == AF_INET6) {
        a6 = (const uint8_t *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
        if (memcmp(a6, mapped, sizeof mapped) == 0)
            a4 = a6 + 12;
    }
    for (size_t i = 0; i < t->n; i++) {
        const struct proxy_cidr *c = &t->v[i];
        if (c->family == AF_INET && a4 && prefix_match(a4, c->addr, c->bits))
            return true;
        if (c->family == AF_INET6 && a6 && prefix_match(a6, c->addr, c->bits))
            return true;
    }
    return false;
}
