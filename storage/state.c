/* storage/state.c: the MQTT broker's durable state (retained messages, persistent
 * sessions and their queued QoS 1/2 messages) and device commands.
 *
 * Data flow: the store_put_* / store_delete_* functions run on the loop thread; they
 * copy their arguments into a struct store_op and hand it to the writer in the same
 * ordered stream as telemetry (store_submit_op, batch.c: one seq each, durable when
 * its batch commits). The writer thread applies it with store_apply_state_op inside
 * the batch's transaction, using statements prepared once by store_db_open
 * (schema.c). The loads are start-up only: loop thread, blocking, on a pooled
 * read-only connection (query.c). Tables (schema v3, schema.c): retained, sessions (the
 * identity), session_subs (one row per subscription), session_msgs, commands. */
#include "base/alloc.h"
#include "base/err.h"
#include "storage/store_int.h"

/* ---- submit (loop thread) ---- */

uint64_t store_put_retained(struct store *s, const char *topic, const void *payload,
                            size_t payload_len, uint8_t qos)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_RETAINED, topic);

    op->payload = payload_len ? store_dup_bytes(payload, payload_len) : NULL;
    op->payload_len = payload_len;
    op->qos = qos;
    return store_submit_op(s, op);
}

uint64_t store_put_session(struct store *s, const char *client_id, const char *identity_json)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_SESSION, client_id);

    op->text = xstrdup(identity_json ? identity_json : "{}");
    return store_submit_op(s, op);
}

uint64_t store_delete_session(struct store *s, const char *client_id)
{
    return store_submit_op(s, store_op_new(STORE_OP_DELETE_SESSION, client_id));
}

uint64_t store_put_session_sub(struct store *s, const char *client_id, const char *filter,
                               uint64_t qos)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_SESSION_SUB, client_id);

    op->topic = xstrdup(filter ? filter : "");
    op->msg_id = qos;
    return store_submit_op(s, op);
}

uint64_t store_delete_session_sub(struct store *s, const char *client_id, const char *filter)
{
    struct store_op *op = store_op_new(STORE_OP_DELETE_SESSION_SUB, client_id);

    op->topic = xstrdup(filter ? filter : "");
    return store_submit_op(s, op);
}

uint64_t store_put_session_msg(struct store *s, const char *client_id, uint64_t msg_id,
                               const char *topic, const void *payload, size_t payload_len,
                               uint8_t qos, uint8_t retain)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_SESSION_MSG, client_id);

    op->msg_id = msg_id;
    op->topic = xstrdup(topic ? topic : "");
    op->payload = store_dup_bytes(payload, payload_len);
    op->payload_len = payload_len;
    op->qos = qos;
    op->retain = retain;
    return store_submit_op(s, op);
}

uint64_t store_delete_session_msg(struct store *s, const char *client_id, uint64_t msg_id)
{
    struct store_op *op = store_op_new(STORE_OP_DELETE_SESSION_MSG, client_id);

    op->msg_id = msg_id;
    return store_submit_op(s, op);
}

uint64_t store_put_command(struct store *s, const struct store_command *c)
{
    struct store_op *op = store_op_new(STORE_OP_PUT_COMMAND, c->id);

    op->device = xstrdup(c->device ? c->device : "");
    op->text = xstrdup(c->name ? c->name : "");
    op->params_json = store_dup(c->params_json);
    op->status = xstrdup(c->status ? c->status : "queued");
    op->reply_json = store_dup(c->reply_json);
    op->created_ms = c->created_ms;
    op->last_seen_ms = c->updated_ms;
    op->expires_ms = c->expires_ms;
    return store_submit_op(s, op);
}

/* ---- apply (writer thread, inside the batch's transaction) ---- */

static int run_with_id(struct store *s, enum store_stmt which, const char *id)
{
    sqlite3_stmt *st = s->st[which];

    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return store_step(st);
}

int store_apply_state_op(struct store *s, const struct store_op *op)
{
    sqlite3_stmt *st;
    int rc;

    switch (op->kind) {
    case STORE_OP_PUT_RETAINED:
        if (op->payload_len == 0)
            return run_with_id(s, ST_RETAINED_DEL, op->id);
        st = s->st[ST_RETAINED_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        store_bind_blob(st, 2, op->payload, op->payload_len);
        sqlite3_bind_int(st, 3, op->qos);
        return store_step(st);
    case STORE_OP_PUT_SESSION:
        st = s->st[ST_SESSION_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->text, -1, SQLITE_STATIC);
        return store_step(st);
    case STORE_OP_DELETE_SESSION:
        rc = run_with_id(s, ST_SESSION_MSGS_DEL, op->id);
        if (rc == SQLITE_OK)
            rc = run_with_id(s, ST_SESSION_SUBS_DEL, op->id);
        return rc == SQLITE_OK ? run_with_id(s, ST_SESSION_DEL, op->id) : rc;
    case STORE_OP_PUT_SESSION_SUB:
        st = s->st[ST_SESSION_SUB_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->topic, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)op->msg_id);
        return store_step(st);
    case STORE_OP_DELETE_SESSION_SUB:
        st = s->st[ST_SESSION_SUB_DEL];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->topic, -1, SQLITE_STATIC);
        return store_step(st);
    case STORE_OP_PUT_SESSION_MSG:
        st = s->st[ST_SESSION_MSG_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)op->msg_id);
        sqlite3_bind_text(st, 3, op->topic, -1, SQLITE_STATIC);
        store_bind_blob(st, 4, op->payload, op->payload_len);
        sqlite3_bind_int(st, 5, op->qos);
        sqlite3_bind_int(st, 6, op->retain);
        return store_step(st);
    case STORE_OP_DELETE_SESSION_MSG:
        st = s->st[ST_SESSION_MSG_DEL];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)op->msg_id);
        return store_step(st);
    case STORE_OP_PUT_COMMAND:
        st = s->st[ST_COMMAND_PUT];
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->device, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, op->text, -1, SQLITE_STATIC);
        store_bind_text_or_null(st, 4, op->params_json);
        sqlite3_bind_text(st, 5, op->status, -1, SQLITE_STATIC);
        store_bind_text_or_null(st, 6, op->reply_json);
        sqlite3_bind_int64(st, 7, op->created_ms);
        sqlite3_bind_int64(st, 8, op->last_seen_ms);
        sqlite3_bind_int64(st, 9, op->expires_ms);
        return store_step(st);
    case STORE_OP_PUT_API_KEY:
    case STORE_OP_DELETE_API_KEY:
        return store_apply_api_key_op(s, op);
    default:
        return SQLITE_MISUSE;
    }
}

/* ---- start-up loads (loop thread, blocking) ---- */

static const char SQL_LOAD_RETAINED[] = "SELECT topic, payload, qos FROM retained ORDER BY topic";
static const char SQL_LOAD_SESSIONS[] =
    "SELECT client_id, identity FROM sessions ORDER BY client_id";
static const char SQL_LOAD_SESSION_SUBS[] =
    "SELECT filter, qos FROM session_subs WHERE client_id = ?1 ORDER BY filter";
static const char SQL_LOAD_SESSION_MSGS[] =
    "SELECT msg_id, topic, payload, qos, retain FROM session_msgs WHERE client_id = ?1"
    " ORDER BY msg_id";
static const char SQL_LOAD_COMMANDS[] =
    "SELECT id, device, name, params, status, reply, created_ms, updated_ms, expires_ms"
    " FROM commands WHERE created_ms >= ?1 ORDER BY created_ms, id";

int store_load_retained(struct store *s, store_retained_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_RETAINED, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        const void *payload = store_col_blob(st, 1, &len);
        const char *topic = store_col_text(st, 0);

        if (topic)
            fn(ctx, topic, payload, len, (uint8_t)sqlite3_column_int(st, 2));
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "retained", st, NULL);
}

/* Feeds the subscriptions of client_id to on_sub: SQLITE_OK or the error code. */
static int load_session_subs(sqlite3_stmt *subs, const char *client_id,
                             store_session_sub_fn on_sub, void *ctx)
{
    int rc;

    sqlite3_bind_text(subs, 1, client_id, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(subs)) == SQLITE_ROW) {
        const char *filter = store_col_text(subs, 0);
        sqlite3_int64 qos = sqlite3_column_int64(subs, 1);

        if (filter && qos >= 0 && (qos & 0xff) <= 2)
            on_sub(ctx, client_id, filter, (uint64_t)qos);
    }
    sqlite3_reset(subs);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Feeds the messages of client_id to on_msg: SQLITE_OK or the error code. */
static int load_session_msgs(sqlite3_stmt *msgs, const char *client_id,
                             store_session_msg_fn on_msg, void *ctx)
{
    int rc;

    sqlite3_bind_text(msgs, 1, client_id, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(msgs)) == SQLITE_ROW) {
        size_t len;
        const void *payload = store_col_blob(msgs, 2, &len);
        const char *topic = store_col_text(msgs, 1);

        on_msg(ctx, client_id, (uint64_t)sqlite3_column_int64(msgs, 0), topic ? topic : "",
               payload, len, (uint8_t)sqlite3_column_int(msgs, 3),
               (uint8_t)sqlite3_column_int(msgs, 4));
    }
    sqlite3_reset(msgs);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int store_load_sessions(struct store *s, store_session_fn on_session,
                        store_session_sub_fn on_sub, store_session_msg_fn on_msg, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL, *subs = NULL, *msgs = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_SESSIONS, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(r->db, SQL_LOAD_SESSION_SUBS, -1, &subs, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(r->db, SQL_LOAD_SESSION_MSGS, -1, &msgs, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL); /* one snapshot for all three */
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *client_id = store_col_text(st, 0), *identity = store_col_text(st, 1);

        rc = SQLITE_OK;
        if (!client_id)
            continue;
        on_session(ctx, client_id, identity ? identity : "{}");
        if (on_sub)
            rc = load_session_subs(subs, client_id, on_sub, ctx);
        if (rc == SQLITE_OK && on_msg)
            rc = load_session_msgs(msgs, client_id, on_msg, ctx);
    }
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_finalize(subs); /* store_end_load finalizes two statements */
    return store_end_load(s, r, rc, "sessions", st, msgs);
}

int store_load_commands(struct store *s, int64_t since_ms, store_command_fn fn, void *ctx)
{
    struct store_reader *r = store_reader_get(s);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!r)
        return GW_ESTORE;
    rc = sqlite3_prepare_v2(r->db, SQL_LOAD_COMMANDS, -1, &st, NULL);
    if (rc == SQLITE_OK)
        sqlite3_bind_int64(st, 1, since_ms);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_command c = {
            .id = store_col_text(st, 0),
            .device = store_col_text(st, 1),
            .name = store_col_text(st, 2),
            .params_json = store_col_text(st, 3),
            .status = store_col_text(st, 4),
            .reply_json = store_col_text(st, 5),
            .created_ms = sqlite3_column_int64(st, 6),
            .updated_ms = sqlite3_column_int64(st, 7),
            .expires_ms = sqlite3_column_int64(st, 8),
        };
        if (c.id && c.device)
            fn(ctx, &c);
        rc = SQLITE_OK;
    }
    return store_end_load(s, r, rc, "commands", st, NULL);
}
