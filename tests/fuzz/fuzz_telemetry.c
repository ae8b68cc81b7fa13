/* tests/fuzz/fuzz_telemetry.c: libFuzzer target for the telemetry JSON decoder
 * (gateway/telemetry.c). The whole input is one payload. Accepted payloads are checked
 * against the decoder's promises (limits, key and string shapes, ts range); JSON values
 * must parse back. Any breach aborts, so the fuzzer records it. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/telemetry.h"

#define NOW_MS 1700000000000LL

static void check(const struct telem_limits *lim, const struct telem *t)
{
    if (t->npoints == 0 || t->npoints > lim->max_points || !t->points || !t->arena)
        abort();
    for (size_t i = 0; i < t->npoints; i++) {
        const struct point *p = &t->points[i];
        size_t klen = strlen(p->key);
        if (klen == 0 || klen > lim->max_key_bytes)
            abort();
        if (p->ts_ms < 0 || p->ts_ms > 253402300799999LL)
            abort();
        if (p->type == VAL_STR || p->type == VAL_JSON) {
            if (!p->str || strlen(p->str) != p->str_len)
                abort();
        } else if (p->type == VAL_BOOL && p->num != 0 && p->num != 1) {
            abort();
        }
        if (p->type == VAL_JSON) {
            cJSON *back = cJSON_ParseWithLength(p->str, p->str_len);
            if (!back)
                abort();
            cJSON_Delete(back);
        }
    }
    if (t->has_seq && t->seq < 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct telem_limits lim = {100, 32};
    struct telem t;
    const char *why = NULL, *code = NULL;

    if (telem_decode(&lim, (const char *)data, size, NOW_MS, &t, &why, &code) == 0) {
        check(&lim, &t);
    } else if (!why || !code || t.points || t.arena || t.npoints) {
        abort();
    }
    telem_fini(&t);
    return 0;
}
