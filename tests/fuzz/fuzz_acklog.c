/* tests/fuzz/fuzz_acklog.c: libFuzzer target for the ack log's records (storage/acklog.c),
 * which start-up reads back from disk after a crash. Input: the first byte picks the test.
 * Even: the rest is a log file, read record by record as replay does, in an exact-size
 * copy (ASan sees any read past the end). Odd: the rest is a record's body (no checksum to
 * get past), decoded item by item. Every decoded message and operation must be sane and
 * freed; a malformed one must carry a reason. What decodes is encoded again, and that
 * decodes and encodes to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "storage/store_int.h"

/* Decodes body item by item into out (encoded again); 1 when all of it decoded. */
static int reencode(const uint8_t *body, size_t len, struct buf *out)
{
    size_t pos = 0;
    const char *why = NULL;
    struct msg *m;
    struct store_op *op;
    int got;

    while ((got = store_log_item(body, len, &pos, &m, &op, &why)) == 1) {
        if (!m == !op || pos > len)
            abort();
        if (m) {
            if (!m->device[0] || m->npoints == 0)
                abort();
            for (size_t i = 0; i < m->npoints; i++)
                if (!m->points[i].key[0] || (unsigned)m->points[i].type > VAL_JSON)
                    abort();
            store_log_put_msg(out, m);
            msg_unref(m);
        } else {
            if (!op->id)
                abort();
            store_log_put_op(out, op);
            store_op_free(op);
        }
    }
    if (got < 0 && !why)
        abort();
    return got == 0;
}

/* What decodes encodes to bytes that decode to the same again (the input itself may use
 * longer varints than the encoder writes). */
static void check_body(const uint8_t *body, size_t len)
{
    struct buf once, twice;

    buf_init(&once);
    buf_init(&twice);
    if (reencode(body, len, &once)) {
        if (!reencode(once.data, once.len, &twice) || twice.len != once.len ||
            (once.len && memcmp(once.data, twice.data, once.len) != 0))
            abort();
    }
    buf_fini(&once);
    buf_fini(&twice);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy;
    size_t off = 0;

    if (size == 0)
        return 0;
    copy = malloc(size - 1 ? size - 1 : 1);
    memcpy(copy, data + 1, size - 1);
    if (data[0] & 1) {
        check_body(copy, size - 1);
    } else {
        while (off < size - 1) {
            uint64_t lsn;
            const uint8_t *body;
            size_t blen;
            const char *why = NULL;
            long n = store_log_record(copy + off, size - 1 - off, &lsn, &body, &blen, &why);
            if (n <= 0) {
                if (!why)
                    abort();
                break;
            }
            if (body + blen > copy + size - 1)
                abort();
            check_body(body, blen);
            off += (size_t)n;
        }
    }
    free(copy);
    return 0;
}
