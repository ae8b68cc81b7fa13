/* gateway/proxy.h: the PROXY protocol (HAProxy's, versions 1 and 2), with which a TCP
 * load balancer tells the server, in the first bytes of a connection, whose connection
 * it carries; and the list of peers whose header is believed (limits.proxy_trusted).
 *
 * proxy_decode is a pure function of the bytes received so far: no I/O, no clock, no
 * state between calls. The caller keeps the bytes of a header that is not complete yet
 * (at most PROXY_HEADER_MAX) and calls it again with all of them; it rejects a
 * wrong byte as soon as it arrives and a v2 length over the cap as soon as the length
 * is known. Any thread. */
#ifndef GALE_PROXY_H
#define GALE_PROXY_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Which versions a listener takes: its <listener>.proxy_protocol, as config words
 * "off|v1|v2|any" in this order (the value is a bit mask of versions). */
enum proxy_accept {
    PROXY_OFF = 0,
    PROXY_V1 = 1,
    PROXY_V2 = 2,
    PROXY_ANY = 3,
};

#define PROXY_V1_MAX 107          /* a v1 line, CRLF included (the specification's bound) */
#define PROXY_V2_ADDR_MAX 2048    /* the v2 length (addresses and TLVs) taken, bytes */
#define PROXY_HEADER_MAX (16 + PROXY_V2_ADDR_MAX)

enum proxy_rc { PROXY_ERROR = -1, PROXY_NEED_MORE = 0, PROXY_DONE = 1 };

struct proxy_header {
    int version;                  /* 1 or 2 */
    /* the connection's own address stands (v2 LOCAL, a v2 PROXY with AF_UNSPEC, v1
     * UNKNOWN: a balancer's health check); src and dst are then zero */
    bool local;
    struct sockaddr_storage src;  /* the client, as the balancer saw it (port included) */
    struct sockaddr_storage dst;  /* the address the client connected to */
};

/* Decodes the header at the start of p[0..len) for a listener that takes the versions
 * in accept (PROXY_V1, PROXY_V2 or both). PROXY_DONE: *out is set and *used is the
 * header's length (what follows it is the client's first bytes). PROXY_NEED_MORE:
 * every byte so far fits a header; call again with more. PROXY_ERROR: *why is a static
 * reason. */
enum proxy_rc proxy_decode(unsigned accept, const uint8_t *p, size_t len, struct proxy_header *out,
                           size_t *used, const char **why);

/* ---- trusted peers ---- */

struct proxy_cidr {
    int family;                   /* AF_INET or AF_INET6 */
    uint8_t addr[16];             /* network bytes (4 used for AF_INET) */
    unsigned bits;                /* prefix length */
};

struct proxy_trust {
    struct proxy_cidr *v;         /* heap; NULL when none */
    size_t n;
};

/* Parses a JSON array of CIDR texts ("10.0.0.0/8", "::1/128", or a bare address for
 * one host) into t (empty for "[]"). Returns 0, or -1 with err naming the bad entry. */
int proxy_trust_parse(const char *json, struct proxy_trust *t, char *err, size_t errlen);
void proxy_trust_fini(struct proxy_trust *t);
/* Whether addr (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as the IPv4
 * one) is inside one of t's networks. */
bool proxy_trusted(const struct proxy_trust *t, const struct sockaddr *addr);

#endif
