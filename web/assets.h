/* web/assets.h: the dashboard's files, embedded at build time by web/embed_assets.cmake
 * (the files of web/assets, and uPlot from node_modules under /vendor). Read-only data;
 * any thread. */
#ifndef GALE_ASSETS_H
#define GALE_ASSETS_H

#include <stddef.h>

struct asset {
    const char *path;          /* "/index.html" */
    const char *content_type;  /* "text/html; charset=utf-8" */
    const char *etag;          /* strong ETag of the plain bytes, quotes included */
    const char *etag_gz;       /* strong ETag of the gzip form (a representation of its own) */
    const unsigned char *data; /* the file; a NUL follows data[len] */
    size_t len;
    const unsigned char *gz; /* gzip -9 of data, or NULL when it would not save a tenth */
    size_t gz_len;
};

extern const struct asset web_assets[]; /* ends with a NULL path */

#endif
