/* web/static.h: the dashboard's embedded files (web/assets.h) served over HTTP with
 * their type, an ETag, Cache-Control and the build-time gzip form when the request
 * accepts it. Loop thread only (static_serve); the header checks are pure. */
#ifndef GALE_STATIC_H
#define GALE_STATIC_H

#include <stdbool.h>

struct http_conn;
struct http_req;

/* Answers a GET or HEAD of path ("/" is "/index.html") from the embedded files:
 * 304 when If-None-Match names the ETag of the form it would send, else 200 with
 * the gzip form when Accept-Encoding allows gzip, else the plain bytes. Every
 * answer says "Cache-Control: no-cache" (a browser keeps the file and revalidates
 * with its ETag, so a new binary's dashboard is seen at once) and
 * "Vary: Accept-Encoding". Returns false, sending nothing, when no file has that path. */
bool static_serve(struct http_conn *h, const struct http_req *req, const char *path);

/* True when an Accept-Encoding value (NULL: header absent) accepts gzip: a "gzip",
 * "x-gzip" or "*" coding whose q is not 0 (RFC 9110 12.5.3). */
bool static_accepts_gzip(const char *accept_encoding);

/* True when an If-None-Match value (NULL: absent) is "*" or lists etag; weak
 * validators ("W/...") match by their opaque tag, as RFC 9110 13.1.2 asks for GET. */
bool static_etag_matches(const char *if_none_match, const char *etag);

#endif
