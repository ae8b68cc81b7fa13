/* storage/acklog.c: the ack log. An ack stands on a record appended to this log (and,
 * under storage.sync=full, synced), not on the SQLite commit behind it (docs/architecture.md
 * "Threads"):
 *
 * - Loop thread: at the end of a loop iteration in which an ack waits, the writes of the
 *   open batch not yet logged are encoded into one record and appended with one write()
 *   (the page cache; a crash of the process keeps it, as SQLite's own commit under
 *   synchronous=NORMAL would); then they are reported durable and the acks go out. Every
 *   write is logged before its batch is sealed, so records and batches follow the same
 *   order and the log always holds a prefix of what the writer has not yet committed.
 * - Writer thread: commits the batch as before, and in the same transaction sets
 *   log_state.lsn to the batch's last record: SQLite says which records it holds.
 * - The loop deletes a log file once every record in it is committed; a file is closed
 *   at STORE_LOG_FILE_BYTES and a new one started.
 * - Start-up (store_open, before the writer runs): the records of every log file past
 *   log_state.lsn are committed again, in order, then the files go. A record is trusted
 *   only whole and with its checksum: a torn tail ends that file's replay (it was never
 *   acked: its write() had not returned).
 * - Under storage.sync=full the record must reach the disk first: the syncer thread
 *   fdatasyncs the file (and the directory, for a new file) and the acks go when it is
 *   done; each sync covers every record written before it began, so publishers waiting
 *   together share one (group commit), and the loop goes on appending meanwhile.
 *   The writer commits a batch the log holds whole with synchronous=NORMAL (the log's
 *   sync is what the ack stands on; other batches keep FULL), so a file may go only once
 *   a checkpoint has copied its records into the database file and synced it
 *   (store_wal_ckpt_lsn), not at the commit: a power cut may take NORMAL commits back,
 *   and the next start commits them again from the log.
 * - A write that fails (a full disk) leaves the file: its writes are not acked by the
 *   log; they are acked when the writer commits them, or refused, as without the log;
 *   the log is tried again, in a new file, a second later.
 *
 * File: "<database>-ack.<n>", a sequence of records:
 *   u32 magic "GAL1" | u32 body bytes | u32 CRC-32 of (lsn, body) | u64 lsn | body
 * (little-endian), the body a sequence of items:
 *   'T' str device, varint points, per point: str key, zigzag varint ts, u8 type, value
 *       (VAL_NUM/VAL_BOOL: the double's 8 bytes; VAL_STR/VAL_JSON: str)
 *   'O' u8 kind, varint mask of the strings present, those strings in struct store_op
 *       order, [payload: varint length + bytes], varint msg_id, varint last_id, u8 qos,
 *       u8 retain, zigzag varints created_ms, last_seen_ms, expires_ms
 * where str is varint length + bytes + NUL. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zlib.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "gateway/log.h"
#include "storage/store_int.h"
#include "storage/varint.h"

#define LOG_MAGIC 0x314c4147u   /* "GAL1" */
#define LOG_HEADER 20
#define LOG_BODY_MAX (256u << 20) /* a larger length is a torn or foreign header */
#define LOG_RETRY_MS 1000       /* after a failed write, the log waits this long */
#define LOG_SPACE_CHECK_MS 100  /* free space is looked at this often */

/* ---- the codec (pure) ---- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_str(struct buf *b, const char *p, size_t n)
{
    varint_put(b, n);
    buf_append(b, p, n);
    buf_append(b, "", 1);
}

size_t store_log_begin(struct buf *b)
{
    size_t start = b->len;

    buf_reserve(b, LOG_HEADER);
    buf_commit(b, LOG_HEADER);
    return start;
}

/* A str at q, for store_log_put_msg: room was reserved for the worst case. */
static uint8_t *ptr_str(uint8_t *q, const char *p, size_t n)
{
    q = varint_write(q, n);
    memcpy(q, p, n);
    q[n] = 0;
    return q + n + 1;
}

/* One reservation for the whole message (the hot path: a message per call). */
void store_log_put_msg(struct buf *b, const struct msg *m)
{
    size_t dlen = strlen(m->device), most = 1 + 11 + dlen + 10, have;
    uint8_t *q, *q0;

    for (size_t i = 0; i < m->npoints; i++) {
        const struct point *p = &m->points[i];
        most += 11 + strlen(p->key) + 10 + 1 + 11 +
                (p->type == VAL_STR || p->type == VAL_JSON ? (p->str ? p->str_len : 0) : 8);
    }
    q = q0 = buf_reserve(b, most);
    *q++ = 'T';
    q = ptr_str(q, m->device, dlen);
    q = varint_write(q, m->npoints);
    for (size_t i = 0; i < m->npoints; i++) {
        const struct point *p = &m->points[i];

        q = ptr_str(q, p->key, strlen(p->key));
        q = varint_write(q, zigzag((uint64_t)p->ts_ms));
        *q++ = (uint8_t)p->type;
        if (p->type == VAL_STR || p->type == VAL_JSON) {
            q = ptr_str(q, p->str ? p->str : "", p->str ? p->str_len : 0);
        } else {
            uint64_t bits;
            memcpy(&bits, &p->num, sizeof bits);
            put_u64(q, bits);
            q += 8;
        }
    }
    have = (size_t)(q - q0);
    if (have > most)
        abort(); /* the reservation above disagrees with what was written */
    buf_commit(b, have);
}

/* The op's optional strings, in the order of the mask's bits. */
#define OP_STRINGS(op)                                                                    \
    { &(op)->id, &(op)->token_hash, &(op)->role, &(op)->attrs_json, &(op)->protocol,      \
      &(op)->text, &(op)->topic, &(op)->device, &(op)->params_json, &(op)->status,         \
      &(op)->reply_json }
#define OP_NSTRINGS 11
#define OP_HAS_PAYLOAD (1u << OP_NSTRINGS)

void store_log_put_op(struct buf *b, const struct store_op *op)
{
    char *const *strs[OP_NSTRINGS] = OP_STRINGS(op);
    uint64_t mask = op->payload ? OP_HAS_PAYLOAD : 0;
    uint8_t small[3] = { 'O', (uint8_t)op->kind, 0 };

    for (int i = 0; i < OP_NSTRINGS; i++)
        if (*strs[i])
            mask |= 1u << i;
    buf_append(b, small, 2);
    varint_put(b, mask);
    for (int i = 0; i < OP_NSTRINGS; i++)
        if (*strs[i])
            put_str(b, *strs[i], strlen(*strs[i]));
    if (op->payload) {
        varint_put(b, op->payload_len);
        buf_append(b, op->payload, op->payload_len);
    }
    varint_put(b, op->msg_id);
    varint_put(b, op->last_id);
    small[0] = op->qos;
    small[1] = op->retain;
    buf_append(b, small, 2);
    varint_put(b, zigzag((uint64_t)op->created_ms));
    varint_put(b, zigzag((uint64_t)op->last_seen_ms));
    varint_put(b, zigzag((uint64_t)op->expires_ms));
}

void store_log_end(struct buf *b, size_t start, uint64_t lsn)
{
    uint8_t *h = b->data + start;
    size_t body = b->len - start - LOG_HEADER;

    put_u32(h, LOG_MAGIC);
    put_u32(h + 4, (uint32_t)body);
    put_u64(h + 12, lsn);
    put_u32(h + 8, (uint32_t)crc32(0, h + 12, (uInt)(8 + body)));
}

long store_log_record(const uint8_t *p, size_t len, uint64_t *lsn, const uint8_t **body,
                      size_t *body_len, const char **why)
{
    uint32_t n;

    if (len < LOG_HEADER) {
        *why = "truncated header";
        return 0;
    }
    n = get_u32(p + 4);
    if (get_u32(p) != LOG_MAGIC || n > LOG_BODY_MAX) {
        *why = "bad header";
        return -1;
    }
    if (len - LOG_HEADER < n) {
        *why = "truncated body";
        return 0;
    }
    if ((uint32_t)crc32(0, p + 12, (uInt)(8 + (size_t)n)) != get_u32(p + 8)) {
        *why = "checksum mismatch";
        return -1;
    }
    *lsn = get_u64(p + 12);
    *body = p + LOG_HEADER;
    *body_len = n;
    return (long)(LOG_HEADER + n);
}

/* A str at p[*pos..len): NUL-terminated in place, the length without it. */
static int get_str(const uint8_t *p, size_t len, size_t *pos, const char **s, size_t *n)
{
    uint64_t v;

    if (varint_get(p, len, pos, &v) != 0 || v >= len - *pos || p[*pos + v] != 0)
        return -1;
    *s = (const char *)p + *pos;
    *n = (size_t)v;
    *pos += (size_t)v + 1;
    return 0;
}

static int get_i64(const uint8_t *p, size_t len, size_t *pos, int64_t *out)
{
    uint64_t v;

    if (varint_get(p, len, pos, &v) != 0)
        return -1;
    *out = (int64_t)unzigzag(v);
    return 0;
}

static struct msg *get_msg(const uint8_t *p, size_t len, size_t *pos, const char **why)
{
    const char *device;
    size_t dlen, n;
    uint64_t np;
    struct point *pts;
    struct msg *m = NULL;

    if (get_str(p, len, pos, &device, &dlen) != 0 || dlen == 0 || strlen(device) != dlen ||
        varint_get(p, len, pos, &np) != 0 || np == 0 || np > (len - *pos) / 4) {
        *why = "bad telemetry header";
        return NULL;
    }
    pts = xcalloc((size_t)np, sizeof *pts);
    for (n = 0; n < np; n++) {
        struct point *pt = &pts[n];
        size_t klen;

        if (get_str(p, len, pos, &pt->key, &klen) != 0 || klen == 0 || klen > 128 ||
            strlen(pt->key) != klen || get_i64(p, len, pos, &pt->ts_ms) != 0 || *pos >= len ||
            p[*pos] > VAL_JSON) {
            *why = "bad point";
            goto out;
        }
        pt->type = (enum val_type)p[(*pos)++];
        if (pt->type == VAL_STR || pt->type == VAL_JSON) {
            if (get_str(p, len, pos, &pt->str, &pt->str_len) != 0) {
                *why = "bad point text";
                goto out;
            }
        } else {
            uint64_t bits;
            if (len - *pos < 8) {
                *why = "truncated number";
                goto out;
            }
            bits = get_u64(p + *pos);
            *pos += 8;
            memcpy(&pt->num, &bits, sizeof bits);
            if (pt->type == VAL_BOOL && pt->num != 0 && pt->num != 1) {
                *why = "bad bool";
                goto out;
            }
        }
    }
    m = msg_new(MSG_TELEMETRY, device, "", NULL, 0, pts, (size_t)np);
out:
    free(pts);
    return m;
}

static struct store_op *get_op(const uint8_t *p, size_t len, size_t *pos, const char **why)
{
    struct store_op *op;
    uint64_t mask, v;
    int64_t i64[3];

    if (*pos >= len || p[*pos] > STORE_OP_DELETE_API_KEY) {
        *why = "bad operation kind";
        return NULL;
    }
    op = xcalloc(1, sizeof *op);
    op->kind = (enum store_op_kind)p[(*pos)++];
    if (varint_get(p, len, pos, &mask) != 0 || mask >= (OP_HAS_PAYLOAD << 1) || !(mask & 1)) {
        *why = "bad operation mask";
        goto fail;
    }
    {
        char **strs[OP_NSTRINGS] = OP_STRINGS(op);
        for (int i = 0; i < OP_NSTRINGS; i++) {
            const char *s;
            size_t n;
            if (!(mask & (1u << i)))
                continue;
            if (get_str(p, len, pos, &s, &n) != 0) {
                *why = "bad operation text";
                goto fail;
            }
            *strs[i] = xstrndup(s, n);
        }
    }
    if (mask & OP_HAS_PAYLOAD) {
        if (varint_get(p, len, pos, &v) != 0 || v > len - *pos) {
            *why = "bad operation payload";
            goto fail;
        }
        op->payload = store_dup_bytes(p + *pos, (size_t)v);
        op->payload_len = (size_t)v;
        *pos += (size_t)v;
    }
    if (varint_get(p, len, pos, &op->msg_id) != 0 || varint_get(p, len, pos, &op->last_id) != 0 ||
        len - *pos < 2) {
        *why = "bad operation ids";
        goto fail;
    }
    op->qos = p[(*pos)++];
    op->retain = p[(*pos)++];
    for (int i = 0; i < 3; i++) {
        if (get_i64(p, len, pos, &i64[i]) != 0) {
            *why = "bad operation times";
            goto fail;
        }
    }
    op->created_ms = i64[0];
    op->last_seen_ms = i64[1];
    op->expires_ms = i64[2];
    return op;
fail:
    store_op_free(op);
    return NULL;
}

int store_log_item(const uint8_t *body, size_t len, size_t *pos, struct msg **m,
                   struct store_op **op, const char **why)
{
    uint8_t tag;

    *m = NULL;
    *op = NULL;
    if (*pos >= len)
        return 0;
    tag = body[(*pos)++];
    if (tag == 'T')
        *m = get_msg(body, len, pos, why);
    else if (tag == 'O')
        *op = get_op(body, len, pos, why);
    else
        *why = "unknown item";
    return *m || *op ? 1 : -1;
}

/* ---- the files (loop thread; start-up) ---- */

static char *file_path(const struct store *s, uint64_t no)
{
    size_t n = strlen(s->path) + 32;
    char *p = xmalloc(n);

    snprintf(p, n, "%s-ack.%llu", s->path, (unsigned long long)no);
    return p;
}

static void file_unlink(struct store *s, uint64_t no)
{
    char *p = file_path(s, no);

    if (unlink(p) != 0 && errno != ENOENT)
        log_warn("store: cannot remove ack log file=%s: %s", p, strerror(errno));
    free(p);
}

static void file_close_current(struct store_log *l)
{
    if (l->fd < 0)
        return;
    if (l->sync) { /* the syncer syncs what it holds first, then closes it */
        uv_mutex_lock(&l->sync_lock);
        if (l->nretired == l->retired_cap) {
            l->retired_cap = l->retired_cap ? 2 * l->retired_cap : 4;
            l->retired = xrealloc(l->retired, l->retired_cap * sizeof *l->retired);
        }
        l->retired[l->nretired++] = l->fd;
        l->sync_fd = -1;
        uv_mutex_unlock(&l->sync_lock);
    } else {
        close(l->fd);
    }
    l->fd = -1;
    if (l->nfiles == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 8;
        l->files = xrealloc(l->files, l->cap * sizeof *l->files);
    }
    l->files[l->nfiles].no = l->no;
    l->files[l->nfiles++].last_lsn = l->cur_last_lsn;
}

/* Whether the file system has room for what the log may ack and SQLite then needs: at
 * least cfg.queue_high_bytes + cfg.wal_max_bytes free (checked at most every
 * LOG_SPACE_CHECK_MS). Below it acks wait for commits, so a disk that fills refuses new
 * writes per protocol rather than holding acked ones it cannot commit. */
static int space_ok(struct store *s)
{
    struct store_log *l = &s->log;
    uint64_t now = gw_mono_ms();
    struct statvfs v;

    if (now >= l->space_checked_ms + LOG_SPACE_CHECK_MS || l->space_checked_ms == 0) {
        uint64_t floor = (uint64_t)s->cfg.queue_high_bytes + s->cfg.wal_max_bytes, avail;
        l->space_checked_ms = now;
        avail = statvfs(s->path, &v) == 0 ? (uint64_t)v.f_bavail * v.f_frsize : 0;
        if (l->space_ok && avail < floor)
            log_info("store: bytes_free=%llu below %llu: acks wait for commits until there is"
                     " more", (unsigned long long)avail, (unsigned long long)floor);
        l->space_ok = avail >= floor;
    }
    return l->space_ok;
}

/* Every write of b not yet logged, as one record (loop thread). 0: logged (or nothing
 * to log), -1: not logged (the log is off, or the write failed). */
int store_log_write(struct store *s, struct store_batch *b)
{
    struct store_log *l = &s->log;
    size_t start, off = 0;
    uint64_t lsn;

    if (b->nlogged == b->nitems)
        return 0;
    if (!l->on || gw_mono_ms() < l->retry_ms || !space_ok(s))
        return -1;
    if (l->fd < 0) {
        char *p = file_path(s, ++l->no);
        l->fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (l->fd < 0) {
            log_warn("store: cannot create ack log file=%s: %s; acks wait for commits",
                     p, strerror(errno));
            free(p);
            l->retry_ms = gw_mono_ms() + LOG_RETRY_MS;
            return -1;
        }
        free(p);
        l->size = 0;
        l->cur_last_lsn = 0;
        if (l->sync) {
            uv_mutex_lock(&l->sync_lock);
            l->sync_fd = l->fd;
            l->sync_dir = 1; /* the file's name must survive a power cut too */
            uv_mutex_unlock(&l->sync_lock);
        }
    }
    lsn = l->next_lsn;
    l->rec.len = 0;
    start = store_log_begin(&l->rec);
    for (size_t i = b->nlogged; i < b->nitems; i++) {
        if (b->items[i].m)
            store_log_put_msg(&l->rec, b->items[i].m);
        else
            store_log_put_op(&l->rec, b->items[i].op);
    }
    store_log_end(&l->rec, start, lsn);
    while (off < l->rec.len) {
        ssize_t n = write(l->fd, l->rec.data + off, l->rec.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* the file may end in a torn record now: nothing more goes into it */
            if (!l->failed_logged)
                log_warn("store: ack log write failed: %s; acks wait for commits until it"
                         " works again", n < 0 ? strerror(errno) : "no progress");
            l->failed_logged = 1;
            l->failures++;
            file_close_current(l);
            l->retry_ms = gw_mono_ms() + LOG_RETRY_MS;
            return -1;
        }
        off += (size_t)n;
    }
    if (l->failed_logged) {
        log_info("store: ack log writes work again");
        l->failed_logged = 0;
    }
    l->next_lsn++;
    l->last_lsn = lsn;
    l->cur_last_lsn = lsn;
    l->size += l->rec.len;
    l->records++;
    l->bytes += l->rec.len;
    b->nlogged = b->nitems;
    b->lsn = lsn;
    if (l->size >= l->file_bytes)
        file_close_current(l);
    if (l->rec.cap > (4u << 20))
        buf_fini(&l->rec); /* a big batch's buffer is not kept */
    return 0;
}

/* ---- sync=full: the syncer thread ---- */

static int sync_dir(const struct store *s)
{
    const char *slash = strrchr(s->path, '/');
    char *dir = slash ? xstrndup(s->path, (size_t)(slash - s->path + 1)) : xstrdup(".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0 || fsync(fd) != 0)
        rc = errno ? errno : EIO;
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

static void on_sync_thread(void *arg)
{
    struct store *s = arg;
    struct store_log *l = &s->log;

    uv_mutex_lock(&l->sync_lock);
    for (;;) {
        uint64_t want;
        int fd, dir, err = 0, *retired;
        size_t nretired;

        while (!l->sync_stop && l->sync_want <= l->sync_done && l->nretired == 0)
            uv_cond_wait(&l->sync_cond, &l->sync_lock);
        if (l->sync_stop && l->sync_want <= l->sync_done && l->nretired == 0)
            break;
        want = l->sync_want; /* every record written up to now: one sync for all of them */
        fd = l->sync_fd >= 0 ? dup(l->sync_fd) : -1; /* the loop may retire it meanwhile */
        dir = l->sync_dir;
        l->sync_dir = 0;
        retired = l->retired;
        nretired = l->nretired;
        l->retired = NULL;
        l->nretired = l->retired_cap = 0;
        uv_mutex_unlock(&l->sync_lock);
        for (size_t i = 0; i < nretired; i++) {
            if (fdatasync(retired[i]) != 0 && !err)
                err = errno;
            close(retired[i]);
        }
        free(retired);
        if (fd >= 0) {
            if (fdatasync(fd) != 0 && !err)
                err = errno;
            close(fd);
        }
        if (dir && !err)
            err = sync_dir(s);
        uv_mutex_lock(&l->sync_lock);
        if (err) {
            l->sync_err = err;
        } else if (want > l->sync_done) {
            l->sync_done = want;
        }
        uv_mutex_unlock(&l->sync_lock);
        uv_async_send(&s->h->async); /* store_drain_done reports it */
        uv_mutex_lock(&l->sync_lock);
    }
    uv_mutex_unlock(&l->sync_lock);
}

void store_log_logged(struct store *s, uint64_t seq)
{
    struct store_log *l = &s->log;

    if (!l->sync) {
        if (seq > s->log_unreported)
            s->log_unreported = seq;
        return;
    }
    uv_mutex_lock(&l->sync_lock);
    if (seq > l->sync_want) {
        l->sync_want = seq;
        uv_cond_signal(&l->sync_cond);
    }
    uv_mutex_unlock(&l->sync_lock);
}

uint64_t store_log_synced(struct store *s)
{
    struct store_log *l = &s->log;
    uint64_t done;
    int err;

    if (!l->sync)
        return 0;
    uv_mutex_lock(&l->sync_lock);
    done = l->sync_done;
    err = l->sync_err;
    l->sync_err = 0;
    uv_mutex_unlock(&l->sync_lock);
    if (err && l->on) {
        /* what that sync covered may not be on the disk, and a later sync that succeeds
         * would not say it is: the log acks nothing more in this process; every ack waits
         * for the writer's commit (SQLite syncs its own log) */
        log_error("store: ack log sync failed: %s; acks wait for commits from now on",
                  strerror(err));
        l->failures++;
        l->on = 0;
        file_close_current(l);
    }
    return l->on ? done : 0;
}

void store_log_committed(struct store *s, uint64_t lsn)
{
    struct store_log *l = &s->log;
    uint64_t gone;
    size_t keep = 0;

    if (lsn > l->committed_lsn)
        l->committed_lsn = lsn;
    gone = l->committed_lsn; /* sync=normal: committed is as safe as the log's record */
    if (l->sync && l->nfiles > 0) {
        uint64_t synced = store_wal_ckpt_lsn(s);
        if (synced < gone)
            gone = synced;
    }
    for (size_t i = 0; i < l->nfiles; i++) {
        if (l->files[i].last_lsn <= gone)
            file_unlink(s, l->files[i].no);
        else
            l->files[keep++] = l->files[i];
    }
    l->nfiles = keep;
}

/* Reads a whole file (start-up). NULL when it cannot be read (logged). */
static uint8_t *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    uint8_t *p;
    size_t off = 0;

    if (fd < 0 || fstat(fd, &st) != 0) {
        log_error("store: cannot read ack log file=%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    p = xmalloc((size_t)st.st_size + 1);
    while (off < (size_t)st.st_size) {
        ssize_t n = read(fd, p + off, (size_t)st.st_size - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    *len = off;
    return p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* The numbers of the log files beside the database, ascending. */
static uint64_t *list_files(const struct store *s, size_t *n)
{
    const char *slash = strrchr(s->path, '/');
    char *dir = slash ? xstrndup(s->path, (size_t)(slash - s->path + 1)) : xstrdup(".");
    const char *base = slash ? slash + 1 : s->path;
    size_t blen = strlen(base), cap = 0;
    uint64_t *nos = NULL;
    DIR *d = opendir(dir[0] ? dir : "/");
    struct dirent *e;

    *n = 0;
    while (d && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        char *end;
        unsigned long long no;

        if (strncmp(name, base, blen) != 0 || strncmp(name + blen, "-ack.", 5) != 0 ||
            name[blen + 5] < '0' || name[blen + 5] > '9')
            continue;
        no = strtoull(name + blen + 5, &end, 10);
        if (*end)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            nos = xrealloc(nos, cap * sizeof *nos);
        }
        nos[(*n)++] = no;
    }
    if (d)
        closedir(d);
    free(dir);
    if (*n)
        qsort(nos, *n, sizeof *nos, cmp_u64);
    return nos;
}

/* The records of one file past the committed lsn, committed again in order. */
static int replay_file(struct store *s, const char *path, uint64_t *max_lsn, int64_t *batches,
                       int64_t *items)
{
    size_t len = 0, off = 0;
    uint8_t *data = read_file(path, &len);

    if (!data)
        return -1;
    while (off < len) {
        uint64_t lsn;
        const uint8_t *body;
        size_t blen, pos = 0;
        const char *why = NULL;
        long n = store_log_record(data + off, len - off, &lsn, &body, &blen, &why);
        struct store_batch b = { 0 };
        struct msg *m;
        struct store_op *op;
        int got;

        if (n <= 0) {
            log_warn("store: ack log file=%s ends in a partial record at offset=%zu (%s):"
                     " it was never acked", path, off, why);
            break;
        }
        off += (size_t)n;
        if (lsn > *max_lsn)
            *max_lsn = lsn;
        if (lsn <= s->log.committed_lsn)
            continue;
        while ((got = store_log_item(body, blen, &pos, &m, &op, &why)) == 1) {
            if (b.nitems == b.cap) {
                b.cap = b.cap ? 2 * b.cap : 64;
                b.items = xrealloc(b.items, b.cap * sizeof *b.items);
            }
            b.items[b.nitems].m = m;
            b.items[b.nitems++].op = op;
            if (m)
                b.nrows += m->npoints;
        }
        if (got < 0) { /* a checksummed record that does not decode: a foreign file */
            log_error("store: ack log file=%s record lsn=%llu does not decode (%s)", path,
                      (unsigned long long)lsn, why);
            store_batch_release(&b);
            free(data);
            return -1;
        }
        b.lsn = lsn;
        if (store_commit_replayed(s, &b) != 0) {
            free(data);
            return -1;
        }
        s->log.committed_lsn = lsn;
        (*batches)++;
        *items += (int64_t)b.nitems;
    }
    free(data);
    return 0;
}

int store_log_open(struct store *s)
{
    struct store_log *l = &s->log;
    uint64_t *nos, max_lsn;
    size_t n;
    int64_t committed = 0, batches = 0, items = 0;
    int rc = 0;

    l->fd = -1;
    l->file_bytes = STORE_LOG_FILE_BYTES;
    buf_init(&l->rec);
    if (store_get_int64(s->db, "SELECT lsn FROM log_state", &committed) != SQLITE_OK)
        return -1;
    l->committed_lsn = (uint64_t)committed;
    max_lsn = l->committed_lsn;
    nos = list_files(s, &n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char *p = file_path(s, nos[i]);
        rc = replay_file(s, p, &max_lsn, &batches, &items);
        free(p);
    }
    if (rc == 0) {
        if (batches > 0)
            log_info("store: ack log replayed batches=%lld writes=%lld up to lsn=%llu",
                     (long long)batches, (long long)items,
                     (unsigned long long)l->committed_lsn);
        for (size_t i = 0; i < n; i++)
            file_unlink(s, nos[i]); /* all of it is in SQLite now */
        l->no = n ? nos[n - 1] : 0;
    }
    free(nos);
    l->next_lsn = max_lsn + 1;
    l->last_lsn = max_lsn;
    l->on = rc == 0 && !s->cfg.no_ack_log && strncmp(s->path, ":memory:", 8) != 0 &&
            strncmp(s->path, "file:", 5) != 0;
    if (l->on && s->cfg.sync == STORE_SYNC_FULL) {
        l->sync_fd = -1;
        if (uv_mutex_init(&l->sync_lock) != 0 || uv_cond_init(&l->sync_cond) != 0)
            return -1;
        l->sync = 1; /* the thread starts with the handles (store_log_start) */
    }
    return rc;
}

int store_log_start(struct store *s)
{
    struct store_log *l = &s->log;

    if (!l->sync)
        return 0;
    if (uv_thread_create(&l->sync_thread, on_sync_thread, s) != 0) {
        l->on = 0;
        return -1;
    }
    l->sync_started = 1;
    return 0;
}

void store_log_close(struct store *s)
{
    struct store_log *l = &s->log;

    file_close_current(l);
    if (l->sync)
        store_wal_checkpoint_now(s); /* the NORMAL commits into the database file, synced */
    store_log_committed(s, l->committed_lsn); /* what is safe without the log goes */
    if (l->sync) {
        if (l->sync_started) { /* it syncs and closes what it holds, then ends */
            uv_mutex_lock(&l->sync_lock);
            l->sync_stop = 1;
            uv_cond_signal(&l->sync_cond);
            uv_mutex_unlock(&l->sync_lock);
            uv_thread_join(&l->sync_thread);
            l->sync_started = 0;
        }
        for (size_t i = 0; i < l->nretired; i++)
            close(l->retired[i]);
        free(l->retired);
        l->retired = NULL;
        l->nretired = 0;
        uv_cond_destroy(&l->sync_cond);
        uv_mutex_destroy(&l->sync_lock);
        l->sync = 0;
    }
    if (l->nfiles > 0)
        log_warn("store: ack log files=%zu kept: they hold acked writes not yet committed"
                 " (or not yet synced into the database file); the next start commits them",
                 l->nfiles);
    free(l->files);
    l->files = NULL;
    l->nfiles = l->cap = 0;
    buf_fini(&l->rec);
}
