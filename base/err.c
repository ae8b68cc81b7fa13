/* base/err.c: see err.h. */
#include "base/err.h"

#include <uv.h>

const char *gw_strerror(int err)
{
    switch (err) {
    case GW_EINVAL: return "invalid input";
    case GW_ESTORE: return "storage failure";
    case GW_ECONFIG: return "invalid configuration";
    case GW_ENOENT: return "not found";
    case GW_EEXIST: return "already exists";
    case GW_ELIMIT: return "limit reached";
    default: return err < 0 && err > GW_EINVAL ? uv_strerror(err) : "unknown error";
    }
}
