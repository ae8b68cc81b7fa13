/* base/err.h: Gale's own error codes. They live below libuv's range, so libuv codes
 * pass through unchanged and gw_strerror() names both. */
#ifndef GALE_ERR_H
#define GALE_ERR_H

enum gw_err {
    GW_EINVAL = -10001,  /* invalid argument or input */
    GW_ESTORE = -10002,  /* storage failure */
    GW_ECONFIG = -10003, /* invalid configuration */
    GW_ENOENT = -10004,  /* no such object */
    GW_EEXIST = -10005,  /* object exists */
    GW_ELIMIT = -10006,  /* a configured limit was reached */
};

/* A static description of err (one of ours, or a libuv code). */
const char *gw_strerror(int err);

#endif
