/* storage/keys.c: the API keys table (schema v6, schema.c).
 *
 * Data flow: store_put_api_key / store_delete_api_key run on the loop thread; they copy
 * their arguments into a struct store_op (id, text = name, role, params_json = the
 * device globs, token_hash = the key's hash, created_ms, expires_ms = revoked_ms) and
 * hand it to the writer in the ordered stream (store_submit_op). The writer thread
 * applies it with store_apply_api_key_op inside the batch's transaction.
 * store_load_api_keys is start-up only: loop thread, blocking, on a pooled read-only
 * connection. Only hashes are stored, never a key. */
#include "base/alloc.h"
#include "base/err.h"
#include "storage/store_int.h"

static const char SQL_LOAD_API_KEYS[] =
    "SELECT id, name, role, devices, hash, created_ms, revoked_ms FROM api_keys"
    " ORDER BY created_ms, id";

uint64_t store_put_api_key(struct store *s, const struct store_api_key *k)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_API_KEY, k->id);

    op->text = xstrdup(k->name ? k->name : "");
    op->role = xstrdup(k->role ? k->role : "read");
    op->params_json = store_dup(k->devices_json);
    op->token_hash = store_dup(k->hash);
    op->created_ms = k->created_ms;
    op->expires_ms = k->revoked_ms;
    return store_submit_op(s, op);
}

uint64_t store_delete_api_key(struct store *s, const char *id)
{
    return store_submit_op(s, store_op_new(STORE_OP_DELETE_API_KEY, id));
}

int store_apply_api_key_op(struct store *s, const struct store_op *op)
{
    sqlite3_stmt *st;

    if (op->kind == STORE_OP_DELETE_API_KEY) {
        st = s->st[ST_API_KEY_DEL];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        return store_step(st);
    }
    st = s->st[ST_API_KEY_PUT];
    sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->role, -1, SQLITE_STATIC);
    store_bind_text_or_null(st, 4, op->params_json);
    store_bind_text_or_null(st, 5, op->token_hash);
    sqlite3_bind_int64(st, 6, op->created_ms);
    sqlite3_bind_int64(st, 7, op->expires_ms);
    return store_step(st);
}

int store_load_api_keys(struct store *s, store_api_key_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_API_KEYS, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_api_key k = {
            .id = store_col_text(st, 0),
            .name = store_col_text(st, 1),
            .role = store_col_text(st, 2),
            .devices_json = store_col_text(st, 3),
            .hash = store_col_text(st, 4),
            .created_ms = sqlite3_column_int64(st, 5),
            .revoked_ms = sqlite3_column_int64(st, 6),
        };
        if (k.id && k.name && k.role)
            fn(ctx, &k);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "api keys", st, NULL);
}
