/* web/assets.h: dashboard files embedded at build time (web/embed_assets.cmake). */
#ifndef GALE_ASSETS_H
#define GALE_ASSETS_H

#include <stddef.h>

struct asset {
    const char *path;          /* "/index.html" */
    const char *content_type;
    const unsigned char *data;
    size_t len;
};

extern const struct asset web_assets[]; /* ends with a NULL path */

#endif
