/* web/static.c: serves the dashboard's files embedded in the binary (web/assets.h).
 * Both forms of each file (plain and gzip -9) were made at build time, so a request
 * costs a table lookup and one send. Loop thread only; the header checks are pure. */
#include "web/static.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "protocols/http/http.h"
#include "web/assets.h"

#define SP(c) ((c) == ' ' || (c) == '\t')

/* One comma-separated element of a header list: [p, *end) with surrounding blanks cut;
 * returns the start of the next element (or the terminating NUL). */
static const char *next_element(const char *p, const char **start, const char **end)
{
    const char *e;
    while (SP(*p) || *p == ',')
        p++;
    *start = p;
    e = strchr(p, ',');
    if (!e)
        e = p + strlen(p);
    *end = e;
    while (*end > *start && SP((*end)[-1]))
        (*end)--;
    return e;
}

/* The q of one Accept-Encoding element's parameters ("; q=0.5"); 1 when absent. */
static bool q_is_zero(const char *params, const char *end)
{
    for (const char *p = params; p < end; p++) {
        if ((*p == 'q' || *p == 'Q') && p + 1 < end && p[1] == '=') {
            for (p += 2; p < end && (*p == '0' || *p == '.'); p++)
                ;
            return p == end || SP(*p) || *p == ';';
        }
    }
    return false;
}

bool static_accepts_gzip(const char *accept_encoding)
{
    const char *p = accept_encoding, *s, *e;
    bool star = false, gzip_seen = false, gzip_ok = false;

    if (!p)
        return false;
    while (*p) {
        p = next_element(p, &s, &e);
        const char *semi = memchr(s, ';', (size_t)(e - s));
        const char *name_end = semi ? semi : e;
        size_t n;
        while (name_end > s && SP(name_end[-1]))
            name_end--;
        n = (size_t)(name_end - s);
        bool zero = semi && q_is_zero(semi, e);
        if ((n == 4 && strncasecmp(s, "gzip", 4) == 0) ||
            (n == 6 && strncasecmp(s, "x-gzip", 6) == 0)) {
            gzip_seen = true;
            gzip_ok = gzip_ok || !zero;
        } else if (n == 1 && *s == '*') {
            star = !zero;
        }
    }
    return gzip_seen ? gzip_ok : star; /* a named coding overrides "*" */
}

bool static_etag_matches(const char *if_none_match, const char *etag)
{
    const char *p = if_none_match, *s, *e;
    size_t n = strlen(etag);

    if (!p)
        return false;
    while (*p) {
        p = next_element(p, &s, &e);
        if (e - s == 1 && *s == '*')
            return true;
        if (e - s > 2 && s[0] == 'W' && s[1] == '/')
            s += 2;
        if ((size_t)(e - s) == n && memcmp(s, etag, n) == 0)
            return true;
    }
    return false;
}

bool static_serve(struct http_conn *h, const struct http_req *req, const char *path)
{
    const struct asset *a;
    char hdr[160];
    bool gz;
    const char *etag;

    if (strcmp(path, "/") == 0)
        path = "/index.html";
    for (a = web_assets; a->path; a++)
        if (strcmp(a->path, path) == 0)
            break;
    if (!a->path)
        return false;
    gz = a->gz && static_accepts_gzip(http_header(req, "Accept-Encoding"));
    etag = gz ? a->etag_gz : a->etag;
    snprintf(hdr, sizeof hdr, "ETag: %s\r\nCache-Control: no-cache\r\nVary: Accept-Encoding\r\n%s",
             etag, gz ? "Content-Encoding: gzip\r\n" : "");
    if (static_etag_matches(http_header(req, "If-None-Match"), etag))
        http_respond(h, 304, NULL, NULL, 0, hdr);
    else if (gz)
        http_respond(h, 200, a->content_type, a->gz, a->gz_len, hdr);
    else
        http_respond(h, 200, a->content_type, a->data, a->len, hdr);
    return true;
}
