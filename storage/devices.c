/* storage/devices.c: device records (the devices table and the telemetry a device
 * owns).
 *
 * Data flow: store_put_device / store_touch_device / store_delete_device run on the
 * loop thread; they copy their arguments into a struct store_op and hand it to the
 * writer in the same ordered stream as telemetry (store_submit_op, batch.c). The writer
 * thread applies it with store_apply_device_op inside the batch's transaction, using
 * the statements prepared once by store_db_open (schema.c). store_load_devices is
 * start-up only: loop thread, blocking, on a pooled read-only connection (query.c). */
#include "base/err.h"
#include "storage/store_int.h"

static const char SQL_LOAD_DEVICES[] =
    "SELECT id, token_hash, role, attrs, created_ms, last_seen_ms, protocol"
    " FROM devices ORDER BY id";

/* ---- submit (loop thread) ---- */

uint64_t store_put_device(struct store *s, const struct store_device *d)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_DEVICE, d->id);

    op->token_hash = store_dup(d->token_hash);
    op->role = store_dup(d->role);
    op->attrs_json = store_dup(d->attrs_json);
    op->protocol = store_dup(d->protocol);
    op->created_ms = d->created_ms;
    op->last_seen_ms = d->last_seen_ms;
    return store_submit_op(s, op);
}

uint64_t store_touch_device(struct store *s, const char *id, int64_t last_seen_ms,
                            const char *protocol)
{
    struct store_op *op = store_op_new(STORE_OP_TOUCH_DEVICE, id);

    op->last_seen_ms = last_seen_ms;
    op->protocol = store_dup(protocol);
    return store_submit_op(s, op);
}

uint64_t store_delete_device(struct store *s, const char *id)
{
    return store_submit_op(s, store_op_new(STORE_OP_DELETE_DEVICE, id));
}

uint64_t store_forget_device(struct store *s, const char *id)
{
    return store_submit_op(s, store_op_new(STORE_OP_FORGET_DEVICE, id));
}

/* ---- apply (writer thread, inside the batch's transaction) ---- */

/* The write connection runs with secure_delete=FAST (schema.c): the segment log's
 * deleted pages are not zeroed. A device delete zeroes what it deletes. */
static int delete_device(struct store *s, const char *id)
{
    static const enum store_stmt order[] = { ST_DEL_CHUNKS, ST_DEL_SERIES, ST_DEL_DEVID,
                                             ST_DEL_DEVICE };
    int rc = store_exec(s->db, "PRAGMA secure_delete=ON") == 0 ? SQLITE_OK : SQLITE_ERROR;

    for (size_t i = 0; rc == SQLITE_OK && i < sizeof order / sizeof order[0]; i++) {
        sqlite3_stmt *st = s->st[order[i]];

        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        rc = store_step(st);
    }
    store_exec(s->db, "PRAGMA secure_delete=FAST");
    return rc;
}

int store_apply_device_op(struct store *s, const struct store_op *op)
{
    sqlite3_stmt *st;

    switch (op->kind) {
    case STORE_OP_PUT_DEVICE:
        st = s->st[ST_DEV_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        store_bind_text_or_null(st, 2, op->token_hash);
        store_bind_text_or_null(st, 3, op->role);
        store_bind_text_or_null(st, 4, op->attrs_json);
        sqlite3_bind_int64(st, 5, op->created_ms);
        sqlite3_bind_int64(st, 6, op->last_seen_ms);
        store_bind_text_or_null(st, 7, op->protocol);
        return store_step(st);
    case STORE_OP_TOUCH_DEVICE:
        st = s->st[ST_DEV_TOUCH];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, op->last_seen_ms);
        store_bind_text_or_null(st, 3, op->protocol);
        return store_step(st);
    case STORE_OP_DELETE_DEVICE:
        return delete_device(s, op->id);
    case STORE_OP_FORGET_DEVICE:
        st = s->st[ST_DEL_DEVICE];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        return store_step(st);
    default:
        return SQLITE_MISUSE;
    }
}

/* ---- start-up load (loop thread, blocking) ---- */

int store_load_devices(struct store *s, store_device_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_DEVICES, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_device d = {
            .id = store_col_text(st, 0),
            .token_hash = store_col_text(st, 1),
            .role = store_col_text(st, 2),
            .attrs_json = store_col_text(st, 3),
            .created_ms = sqlite3_column_int64(st, 4),
            .last_seen_ms = sqlite3_column_int64(st, 5),
            .protocol = store_col_text(st, 6),
        };
        fn(ctx, &d);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "devices", st, NULL);
}
