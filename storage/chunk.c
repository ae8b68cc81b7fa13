/* storage/chunk.c: the column codec of per-series chunks (see chunk.h for the contract).
 * The encoder keeps the points of one chunk in plain arrays and chooses each column's
 * form in chunk_enc_finish(); the decoder checks every length and bit it reads against
 * the blob's end and recomputes the header's stats from the values. Layout (integers
 * little-endian, varints LEB128, bit streams most significant bit first, padded with
 * zero bits to a byte):
 *   header   72 bytes: u8 version, u8 types, u16 0, u32 count, i64 first_ts,
 *            i64 last_ts, u32 nnum, u32 0, f64 min, max, sum, first, last
 *   then per column present: varint byte length, bytes
 *   ts       count - 1 delta-of-delta buckets (the first delta is taken against 0)
 *   type     2 bits per point              (only when types has more than one bit)
 *   num      u8 mode, then XOR: bit stream | DEC_VARINT: u8 k, varints of the deltas
 *            | DEC_DOD: u8 k, delta-of-delta bits | DEC_PACKED: u8 k, u8 width, varint
 *            first m, then each later delta zigzagged in exactly width bits
 *   bool     1 bit per VAL_BOOL point
 *   str      u8 0 + entries | u8 1 + varint raw length + zlib stream of the entries;
 *            an entry is varint 0 (the previous text again) or varint len + 1, bytes
 * Arithmetic on timestamps and decimal mantissas is done in uint64_t, so any int64
 * sequence wraps through the deltas and back without overflow. */
#include "storage/chunk.h"

#include <math.h>
#include <string.h>
#include <zlib.h>

#include "base/alloc.h"
#include "base/err.h"
#include "storage/varint.h"

enum num_mode { NUM_XOR = 0, NUM_DEC_VARINT = 1, NUM_DEC_DOD = 2, NUM_DEC_PACKED = 3 };

#define MAX_SCALE 15        /* 10^k exact as a double up to 10^22; 15 is plenty */
#define TYPES_ALL 0x0fu
#define TEXT_TYPES ((1u << VAL_STR) | (1u << VAL_JSON))
#define DEFLATE_MAX_RATIO 1032 /* zlib's bound on how much one input byte can inflate */

static const double pow10_tab[MAX_SCALE + 1] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                                1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* ---- small helpers ---- */

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- bit streams ---- */

struct bitw {
    struct buf *b;
    uint64_t acc; /* the low n bits are pending, oldest first */
    unsigned n;   /* 0..7 between calls */
};

static void put_bits(struct bitw *w, uint64_t v, unsigned n) /* the low n (<= 64) bits of v */
{
    if (n > 32) {
        put_bits(w, v >> 32, n - 32);
        n = 32;
    }
    w->acc = (w->acc << n) | (v & ((UINT64_C(1) << n) - 1));
    w->n += n;
    if (w->n >= 8) {
        uint8_t *t = buf_reserve(w->b, 5);
        size_t k = 0;
        while (w->n >= 8) {
            w->n -= 8;
            t[k++] = (uint8_t)(w->acc >> w->n);
        }
        buf_commit(w->b, k);
    }
}

static void flush_bits(struct bitw *w)
{
    if (w->n > 0) {
        uint8_t c = (uint8_t)(w->acc << (8 - w->n));
        buf_append(w->b, &c, 1);
        w->n = 0;
    }
}

struct bitr {
    const uint8_t *p;
    size_t len; /* bytes */
    size_t pos; /* bits read */
};

static int get_bits(struct bitr *r, unsigned n, uint64_t *out) /* n <= 64 */
{
    uint64_t v = 0;

    if (n > r->len * 8 - r->pos)
        return -1;
    while (n > 0) {
        unsigned off = (unsigned)(r->pos & 7), avail = 8 - off;
        unsigned take = n < avail ? n : avail;
        unsigned part = (r->p[r->pos >> 3] >> (avail - take)) & ((1u << take) - 1);
        v = (v << take) | part;
        r->pos += take;
        n -= take;
    }
    *out = v;
    return 0;
}

/* The stream must end inside its last byte, with zero padding. */
static int end_bits(const struct bitr *r)
{
    uint64_t pad;
    struct bitr t = *r;
    size_t left = r->len * 8 - r->pos;

    if (left >= 8)
        return -1;
    return left == 0 || (get_bits(&t, (unsigned)left, &pad) == 0 && pad == 0) ? 0 : -1;
}

/* Delta-of-delta buckets: a prefix of 1 bits ended by a 0 picks the payload width of
 * the zigzagged value; five 1 bits mean 64 bits follow. Widths suit milliseconds: 1 Hz
 * with tens of ms of jitter lands in the 7-bit bucket. */
static const unsigned dod_width[6] = {0, 7, 10, 16, 32, 64};

static void put_dod(struct bitw *w, uint64_t dod)
{
    uint64_t z = zigzag(dod);
    unsigned b = 0;

    while (b < 5 && dod_width[b] < 64 && z >> dod_width[b] != 0)
        b++;
    /* b ones then a zero (no zero after the fifth one) */
    if (b < 5)
        put_bits(w, ((UINT64_C(1) << b) - 1) << 1, b + 1);
    else
        put_bits(w, 0x1f, 5);
    if (dod_width[b])
        put_bits(w, z, dod_width[b]);
}

static int get_dod(struct bitr *r, uint64_t *dod)
{
    unsigned b = 0;
    uint64_t bit, z = 0;

    while (b < 5) {
        if (get_bits(r, 1, &bit) != 0)
            return -1;
        if (!bit)
            break;
        b++;
    }
    if (dod_width[b] && get_bits(r, dod_width[b], &z) != 0)
        return -1;
    *dod = unzigzag(z);
    return 0;
}

/* ---- stats ---- */

static int is_numeric(unsigned type)
{
    return type == VAL_NUM || type == VAL_BOOL;
}

static void stats_add(struct chunk_stats *st, unsigned type, int64_t ts, double v)
{
    if (st->count == 0)
        st->first_ts = ts;
    st->last_ts = ts;
    st->count++;
    st->types |= 1u << type;
    if (!is_numeric(type))
        return;
    if (st->nnum == 0) {
        st->min = st->max = st->first = v;
        st->sum = 0;
    } else {
        if (v < st->min)
            st->min = v;
        if (v > st->max)
            st->max = v;
    }
    st->sum += v;
    if (isnan(st->sum)) /* which NaN an addition returns is up to the compiler */
        st->sum = bitsd(UINT64_C(0x7ff8000000000000));
    st->last = v;
    st->nnum++;
}

static int stats_equal(const struct chunk_stats *a, const struct chunk_stats *b)
{
    return a->count == b->count && a->nnum == b->nnum && a->types == b->types &&
           a->first_ts == b->first_ts && a->last_ts == b->last_ts &&
           dbits(a->min) == dbits(b->min) && dbits(a->max) == dbits(b->max) &&
           dbits(a->sum) == dbits(b->sum) && dbits(a->first) == dbits(b->first) &&
           dbits(a->last) == dbits(b->last);
}

/* ---- encoder ---- */

void chunk_enc_init(struct chunk_enc *e)
{
    memset(e, 0, sizeof *e);
    buf_init(&e->strs);
}

void chunk_enc_fini(struct chunk_enc *e)
{
    free(e->ts);
    free(e->type);
    free(e->num);
    buf_fini(&e->strs);
    memset(e, 0, sizeof *e);
}

int chunk_enc_add(struct chunk_enc *e, const struct point *p)
{
    size_t n = e->stats.count;
    double v = 0;

    if ((unsigned)p->type > VAL_JSON)
        return GW_EINVAL;
    if (n > 0 && p->ts_ms < e->stats.last_ts)
        return GW_EINVAL;
    if (p->type == VAL_BOOL) {
        if (dbits(p->num) != dbits(0.0) && dbits(p->num) != dbits(1.0))
            return GW_EINVAL;
        v = p->num;
    } else if (p->type == VAL_NUM) {
        v = p->num;
    } else if (!p->str && p->str_len > 0) {
        return GW_EINVAL;
    }
    if (n >= CHUNK_MAX_POINTS)
        return GW_ELIMIT;
    if (!is_numeric(p->type)) {
        if (p->str_len > CHUNK_MAX_STR_BYTES - e->str_bytes)
            return GW_ELIMIT;
        if (e->have_prev && p->str_len == e->prev_len &&
            (p->str_len == 0 || memcmp(e->strs.data + e->prev_off, p->str, p->str_len) == 0)) {
            varint_put(&e->strs, 0);
        } else {
            varint_put(&e->strs, (uint64_t)p->str_len + 1);
            e->prev_off = e->strs.len;
            e->prev_len = p->str_len;
            e->have_prev = 1;
            if (p->str_len)
                buf_append(&e->strs, p->str, p->str_len);
        }
        e->str_bytes += p->str_len;
    }
    if (n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 64;
        e->ts = xrealloc(e->ts, e->cap * sizeof *e->ts);
        e->type = xrealloc(e->type, e->cap * sizeof *e->type);
        e->num = xrealloc(e->num, e->cap * sizeof *e->num);
    }
    e->ts[n] = p->ts_ms;
    e->type[n] = (uint8_t)p->type;
    e->num[n] = v;
    stats_add(&e->stats, (unsigned)p->type, p->ts_ms, v);
    return 0;
}

static void encode_ts(const struct chunk_enc *e, struct buf *col)
{
    struct bitw w = {col, 0, 0};
    uint64_t prev_delta = 0;

    for (size_t i = 1; i < e->stats.count; i++) {
        uint64_t delta = (uint64_t)e->ts[i] - (uint64_t)e->ts[i - 1];
        put_dod(&w, delta - prev_delta);
        prev_delta = delta;
    }
    flush_bits(&w);
}

static void encode_types(const struct chunk_enc *e, struct buf *col)
{
    struct bitw w = {col, 0, 0};

    for (size_t i = 0; i < e->stats.count; i++)
        put_bits(&w, e->type[i], 2);
    flush_bits(&w);
}

/* Gorilla XOR: '0' for a repeat; '10' + the meaningful bits inside the previous window;
 * '11' + 5 bits of leading zeros (at most 31) + 6 bits of length - 1 + the bits. */
static void encode_xor(const double *v, size_t n, struct buf *col)
{
    struct bitw w = {col, 0, 0};
    uint64_t prev = dbits(v[0]);
    unsigned lead = 64, trail = 64; /* no window yet */

    put_bits(&w, NUM_XOR, 8);
    put_bits(&w, prev, 64);
    for (size_t i = 1; i < n; i++) {
        uint64_t cur = dbits(v[i]), x = cur ^ prev;
        prev = cur;
        if (x == 0) {
            put_bits(&w, 0, 1);
            continue;
        }
        unsigned l = (unsigned)__builtin_clzll(x), t = (unsigned)__builtin_ctzll(x);
        if (l > 31)
            l = 31;
        if (lead < 64 && l >= lead && t >= trail) {
            put_bits(&w, 2, 2);
            put_bits(&w, x >> trail, 64 - lead - trail);
        } else {
            unsigned len = 64 - l - t;
            put_bits(&w, 3, 2);
            put_bits(&w, l, 5);
            put_bits(&w, len - 1, 6);
            put_bits(&w, x >> t, len);
            lead = l;
            trail = t;
        }
    }
    flush_bits(&w);
}

/* Whether v is exactly m / 10^k (m / 1 for k = 0) with m as the decoder divides it. */
static int exact_at(double v, unsigned k, int64_t *m)
{
    double s;

    if (k == 0) {
        if (!(v >= -0x1p63 && v < 0x1p63))
            return 0;
        *m = (int64_t)v;
        return dbits((double)*m) == dbits(v);
    }
    s = v * pow10_tab[k];
    if (!(fabs(s) < 0x1p53))
        return 0;
    *m = llround(s);
    return dbits((double)*m / pow10_tab[k]) == dbits(v);
}

/* The smallest k at which every value is a decimal m / 10^k, filling m[]; -1 if none. */
static int find_scale(const double *v, size_t n, int64_t *m)
{
    unsigned k = 0;

    for (size_t i = 0; i < n; i++) {
        while (k <= MAX_SCALE && !exact_at(v[i], k, &m[i]))
            k++;
        if (k > MAX_SCALE)
            return -1;
    }
    for (size_t i = 0; i < n; i++) /* values before the last raise of k, again at k */
        if (!exact_at(v[i], k, &m[i]))
            return -1;
    return (int)k;
}

static void encode_dec_varint(const int64_t *m, size_t n, unsigned k, struct buf *col)
{
    uint8_t hdr[2] = {NUM_DEC_VARINT, (uint8_t)k};
    uint64_t prev = 0;

    buf_append(col, hdr, 2);
    for (size_t i = 0; i < n; i++) {
        varint_put(col, zigzag((uint64_t)m[i] - prev));
        prev = (uint64_t)m[i];
    }
}

static void encode_dec_dod(const int64_t *m, size_t n, unsigned k, struct buf *col)
{
    struct bitw w = {col, 0, 0};
    uint64_t prev = 0, prev_delta = 0;

    put_bits(&w, NUM_DEC_DOD, 8);
    put_bits(&w, k, 8);
    for (size_t i = 0; i < n; i++) {
        uint64_t delta = (uint64_t)m[i] - prev;
        put_dod(&w, delta - prev_delta);
        prev = (uint64_t)m[i];
        prev_delta = delta;
    }
    flush_bits(&w);
}

/* Frame of reference: the deltas after the first in the fewest bits that hold them all
 * (0 bits when every delta is 0: a constant, or a counter at a constant rate is DOD). */
static void encode_dec_packed(const int64_t *m, size_t n, unsigned k, struct buf *col)
{
    uint8_t hdr[3] = {NUM_DEC_PACKED, (uint8_t)k, 0};
    uint64_t all = 0;
    struct bitw w = {col, 0, 0};

    for (size_t i = 1; i < n; i++)
        all |= zigzag((uint64_t)m[i] - (uint64_t)m[i - 1]);
    hdr[2] = (uint8_t)(all ? 64 - __builtin_clzll(all) : 0);
    buf_append(col, hdr, 3);
    varint_put(col, zigzag((uint64_t)m[0]));
    if (hdr[2])
        for (size_t i = 1; i < n; i++)
            put_bits(&w, zigzag((uint64_t)m[i] - (uint64_t)m[i - 1]), hdr[2]);
    flush_bits(&w);
}

/* Replaces col with alt when alt is shorter; empties alt. */
static void keep_shorter(struct buf *col, struct buf *alt)
{
    if (alt->len < col->len) {
        col->len = 0;
        buf_append(col, alt->data, alt->len);
    }
    alt->len = 0;
}

/* The VAL_NUM values in the smallest of the forms. */
static void encode_nums(const struct chunk_enc *e, struct buf *col)
{
    size_t n = 0;
    double *v = xmalloc(e->stats.count * sizeof *v);
    int64_t *m = xmalloc(e->stats.count * sizeof *m);
    struct buf alt;
    int k;

    for (size_t i = 0; i < e->stats.count; i++)
        if (e->type[i] == VAL_NUM)
            v[n++] = e->num[i];
    encode_xor(v, n, col);
    k = find_scale(v, n, m);
    if (k >= 0) {
        buf_init(&alt);
        encode_dec_varint(m, n, (unsigned)k, &alt);
        keep_shorter(col, &alt);
        encode_dec_dod(m, n, (unsigned)k, &alt);
        keep_shorter(col, &alt);
        encode_dec_packed(m, n, (unsigned)k, &alt);
        keep_shorter(col, &alt);
        buf_fini(&alt);
    }
    free(v);
    free(m);
}

static void encode_bools(const struct chunk_enc *e, struct buf *col)
{
    struct bitw w = {col, 0, 0};

    for (size_t i = 0; i < e->stats.count; i++)
        if (e->type[i] == VAL_BOOL)
            put_bits(&w, e->num[i] != 0, 1);
    flush_bits(&w);
}

static void encode_strs(const struct chunk_enc *e, struct buf *col)
{
    uLongf zlen = compressBound(e->strs.len);
    uint8_t *z = xmalloc(zlen);
    uint8_t flag = 1;

    if (compress2(z, &zlen, e->strs.data, e->strs.len, Z_DEFAULT_COMPRESSION) == Z_OK &&
        zlen + 10 < e->strs.len) {
        buf_append(col, &flag, 1);
        varint_put(col, e->strs.len);
        buf_append(col, z, zlen);
    } else {
        flag = 0;
        buf_append(col, &flag, 1);
        buf_append(col, e->strs.data, e->strs.len);
    }
    free(z);
}

static void write_header(const struct chunk_stats *st, uint8_t *h)
{
    memset(h, 0, CHUNK_HEADER_BYTES);
    h[0] = CHUNK_VERSION;
    h[1] = (uint8_t)st->types;
    put_u32(h + 4, st->count);
    put_u64(h + 8, (uint64_t)st->first_ts);
    put_u64(h + 16, (uint64_t)st->last_ts);
    put_u32(h + 24, st->nnum);
    put_u64(h + 32, dbits(st->min));
    put_u64(h + 40, dbits(st->max));
    put_u64(h + 48, dbits(st->sum));
    put_u64(h + 56, dbits(st->first));
    put_u64(h + 64, dbits(st->last));
}

static void append_column(struct buf *out, struct buf *col)
{
    varint_put(out, col->len);
    buf_append(out, col->data, col->len);
    col->len = 0;
}

int chunk_enc_finish(struct chunk_enc *e, struct buf *out)
{
    struct buf col;
    unsigned types = e->stats.types;

    if (e->stats.count == 0)
        return GW_EINVAL;
    write_header(&e->stats, buf_reserve(out, CHUNK_HEADER_BYTES));
    buf_commit(out, CHUNK_HEADER_BYTES);
    buf_init(&col);
    encode_ts(e, &col);
    append_column(out, &col);
    if (__builtin_popcount(types) > 1) {
        encode_types(e, &col);
        append_column(out, &col);
    }
    if (types & (1u << VAL_NUM)) {
        encode_nums(e, &col);
        append_column(out, &col);
    }
    if (types & (1u << VAL_BOOL)) {
        encode_bools(e, &col);
        append_column(out, &col);
    }
    if (types & TEXT_TYPES) {
        encode_strs(e, &col);
        append_column(out, &col);
    }
    buf_fini(&col);
    memset(&e->stats, 0, sizeof e->stats);
    e->strs.len = 0;
    e->str_bytes = 0;
    e->have_prev = 0;
    return 0;
}

/* ---- decoder ---- */

#define FAIL(reason)                                                                       \
    do {                                                                                   \
        *why = (reason);                                                                   \
        goto fail;                                                                         \
    } while (0)

int chunk_stats(const uint8_t *blob, size_t len, struct chunk_stats *st, const char **why)
{
    const uint8_t *h = blob;

    memset(st, 0, sizeof *st);
    if (len < CHUNK_HEADER_BYTES)
        FAIL("chunk shorter than its header");
    if (h[0] != CHUNK_VERSION)
        FAIL("unknown chunk version");
    if (h[1] == 0 || (h[1] & ~TYPES_ALL) || h[2] || h[3] || get_u32(h + 28))
        FAIL("bad chunk header flags");
    st->types = h[1];
    st->count = get_u32(h + 4);
    st->first_ts = (int64_t)get_u64(h + 8);
    st->last_ts = (int64_t)get_u64(h + 16);
    st->nnum = get_u32(h + 24);
    st->min = bitsd(get_u64(h + 32));
    st->max = bitsd(get_u64(h + 40));
    st->sum = bitsd(get_u64(h + 48));
    st->first = bitsd(get_u64(h + 56));
    st->last = bitsd(get_u64(h + 64));
    if (st->count == 0 || st->count > CHUNK_MAX_POINTS)
        FAIL("chunk point count out of range");
    if ((unsigned)__builtin_popcount(st->types) > st->count)
        FAIL("more chunk types than points");
    if (st->first_ts > st->last_ts || (st->count == 1 && st->first_ts != st->last_ts))
        FAIL("chunk timestamps out of order");
    if (st->nnum > st->count || (st->nnum > 0) != ((st->types & ~TEXT_TYPES) != 0))
        FAIL("bad chunk numeric count");
    if (st->nnum == 0 && (get_u64(h + 32) | get_u64(h + 40) | get_u64(h + 48) |
                          get_u64(h + 56) | get_u64(h + 64)))
        FAIL("stats without numeric points");
    return 0;
fail:
    memset(st, 0, sizeof *st);
    return GW_EINVAL;
}

/* The next column of blob: its bytes at *col, *col_len; *pos moves past it. */
static int next_column(const uint8_t *blob, size_t len, size_t *pos, const uint8_t **col,
                       size_t *col_len)
{
    uint64_t n;

    if (varint_get(blob, len, pos, &n) != 0 || n > len - *pos)
        return -1;
    *col = blob + *pos;
    *col_len = (size_t)n;
    *pos += (size_t)n;
    return 0;
}

static int decode_xor(const uint8_t *c, size_t len, double *v, size_t n, const char **why)
{
    struct bitr r = {c, len, 8};
    uint64_t prev, bit, x;
    unsigned lead = 64, trail = 64;

    if (get_bits(&r, 64, &prev) != 0)
        FAIL("num column truncated");
    v[0] = bitsd(prev);
    for (size_t i = 1; i < n; i++) {
        if (get_bits(&r, 1, &bit) != 0)
            FAIL("num column truncated");
        if (!bit) {
            v[i] = bitsd(prev);
            continue;
        }
        if (get_bits(&r, 1, &bit) != 0)
            FAIL("num column truncated");
        if (bit) {
            uint64_t l, len1;
            if (get_bits(&r, 5, &l) != 0 || get_bits(&r, 6, &len1) != 0)
                FAIL("num column truncated");
            if (l + len1 + 1 > 64)
                FAIL("bad xor window");
            lead = (unsigned)l;
            trail = 64 - lead - (unsigned)(len1 + 1);
        } else if (lead == 64) {
            FAIL("xor window before any");
        }
        if (get_bits(&r, 64 - lead - trail, &x) != 0)
            FAIL("num column truncated");
        if (x == 0)
            FAIL("empty xor value");
        prev ^= x << trail;
        v[i] = bitsd(prev);
    }
    if (end_bits(&r) != 0)
        FAIL("num column has trailing bits");
    return 0;
fail:
    return -1;
}

static int decode_dec(const uint8_t *c, size_t len, double *v, size_t n, const char **why)
{
    size_t pos = 2;
    unsigned k, width = 0;
    uint64_t prev = 0, prev_delta = 0, z, dod;
    struct bitr r = {c, len, 16};

    if (len < 2 || c[1] > MAX_SCALE)
        FAIL("bad num scale");
    k = c[1];
    if (c[0] == NUM_DEC_PACKED) {
        pos = 3;
        if (len < 3 || c[2] > 64)
            FAIL("bad num width");
        width = c[2];
        if (varint_get(c, len, &pos, &z) != 0)
            FAIL("num column truncated");
        prev = unzigzag(z);
        r = (struct bitr){c + pos, len - pos, 0};
        v[0] = (double)(int64_t)prev / pow10_tab[k];
    }
    for (size_t i = c[0] == NUM_DEC_PACKED; i < n; i++) {
        uint64_t delta;
        if (c[0] == NUM_DEC_PACKED) {
            z = 0;
            if (width && get_bits(&r, width, &z) != 0)
                FAIL("num column truncated");
            delta = unzigzag(z);
        } else if (c[0] == NUM_DEC_VARINT) {
            if (varint_get(c, len, &pos, &z) != 0)
                FAIL("num column truncated");
            delta = unzigzag(z);
        } else {
            if (get_dod(&r, &dod) != 0)
                FAIL("num column truncated");
            delta = prev_delta + dod;
            prev_delta = delta;
        }
        prev += delta;
        v[i] = (double)(int64_t)prev / pow10_tab[k];
    }
    if (c[0] == NUM_DEC_VARINT ? pos != len : end_bits(&r) != 0)
        FAIL("num column has trailing bytes");
    return 0;
fail:
    return -1;
}

static int decode_nums(const uint8_t *c, size_t len, double *v, size_t n, const char **why)
{
    if (len < 1)
        FAIL("num column empty");
    switch (c[0]) {
    case NUM_XOR: return decode_xor(c, len, v, n, why);
    case NUM_DEC_VARINT:
    case NUM_DEC_DOD:
    case NUM_DEC_PACKED: return decode_dec(c, len, v, n, why);
    default: FAIL("unknown num mode");
    }
fail:
    return -1;
}

/* Fills str/str_len of the text points of cp from the entries in e[0..len). */
static int decode_texts(const uint8_t *e, size_t len, struct chunk_points *cp,
                        const char **why)
{
    size_t pos = 0, out = 0;
    const char *prev = NULL;
    size_t prev_len = 0;

    cp->texts = xmalloc(len + cp->npoints + 1); /* every text and its NUL fit */
    for (size_t i = 0; i < cp->npoints; i++) {
        struct point *p = &cp->points[i];
        uint64_t v;
        if (is_numeric(p->type))
            continue;
        if (varint_get(e, len, &pos, &v) != 0)
            FAIL("str column truncated");
        if (v == 0) {
            if (!prev)
                FAIL("str repeat before any");
        } else {
            if (v - 1 > len - pos)
                FAIL("str longer than its column");
            prev = cp->texts + out;
            prev_len = (size_t)(v - 1);
            memcpy(cp->texts + out, e + pos, prev_len);
            cp->texts[out + prev_len] = '\0';
            out += prev_len + 1;
            pos += prev_len;
        }
        p->str = prev;
        p->str_len = prev_len;
    }
    if (pos != len)
        FAIL("str column has trailing bytes");
    return 0;
fail:
    return -1;
}

static int decode_strs(const uint8_t *c, size_t len, struct chunk_points *cp,
                       const char **why)
{
    size_t pos = 1;
    uint64_t raw_len;
    uint8_t *raw = NULL;
    uLongf got;
    uLong used;
    int rc;

    if (len < 1 || c[0] > 1)
        FAIL("bad str column flag");
    if (c[0] == 0)
        return decode_texts(c + 1, len - 1, cp, why);
    if (varint_get(c, len, &pos, &raw_len) != 0)
        FAIL("str column truncated");
    if (raw_len > CHUNK_MAX_STR_BYTES + (uint64_t)10 * cp->npoints ||
        raw_len > (uint64_t)(len - pos) * DEFLATE_MAX_RATIO)
        FAIL("str column too large");
    raw = xmalloc(raw_len ? (size_t)raw_len : 1);
    got = (uLongf)raw_len;
    used = (uLong)(len - pos);
    if (uncompress2(raw, &got, c + pos, &used) != Z_OK || got != raw_len || used != len - pos)
        FAIL("str column does not inflate");
    rc = decode_texts(raw, (size_t)raw_len, cp, why);
    free(raw);
    return rc;
fail:
    free(raw);
    return -1;
}

int chunk_decode(const uint8_t *blob, size_t len, struct chunk_points *out, const char **why)
{
    struct chunk_stats hdr, got = {0};
    size_t pos = CHUNK_HEADER_BYTES, col_len, nnum = 0, nbool = 0;
    const uint8_t *col;
    double *v = NULL;
    uint64_t prev_delta = 0, x;
    struct bitr r;

    memset(out, 0, sizeof *out);
    if (chunk_stats(blob, len, &hdr, why) != 0)
        return GW_EINVAL;
    /* every point after the first costs at least one bit of the ts column */
    if ((hdr.count - 1) / 8 > len - CHUNK_HEADER_BYTES)
        FAIL("chunk shorter than its points");
    out->npoints = hdr.count;
    out->points = xcalloc(hdr.count, sizeof *out->points);

    if (next_column(blob, len, &pos, &col, &col_len) != 0)
        FAIL("ts column truncated");
    r = (struct bitr){col, col_len, 0};
    out->points[0].ts_ms = hdr.first_ts;
    for (size_t i = 1; i < hdr.count; i++) {
        uint64_t dod, prev = (uint64_t)out->points[i - 1].ts_ms;
        if (get_dod(&r, &dod) != 0)
            FAIL("ts column truncated");
        prev_delta += dod;
        out->points[i].ts_ms = (int64_t)(prev + prev_delta);
        if (out->points[i].ts_ms < out->points[i - 1].ts_ms)
            FAIL("chunk timestamps out of order");
    }
    if (end_bits(&r) != 0)
        FAIL("ts column has trailing bits");

    if (__builtin_popcount(hdr.types) > 1) {
        if (next_column(blob, len, &pos, &col, &col_len) != 0)
            FAIL("type column truncated");
        r = (struct bitr){col, col_len, 0};
        for (size_t i = 0; i < hdr.count; i++) {
            if (get_bits(&r, 2, &x) != 0)
                FAIL("type column truncated");
            if (!(hdr.types & (1u << x)))
                FAIL("type not in chunk header");
            out->points[i].type = (enum val_type)x;
        }
        if (end_bits(&r) != 0)
            FAIL("type column has trailing bits");
    } else {
        for (size_t i = 0; i < hdr.count; i++)
            out->points[i].type = (enum val_type)__builtin_ctz(hdr.types);
    }
    for (size_t i = 0; i < hdr.count; i++) {
        nnum += out->points[i].type == VAL_NUM;
        nbool += out->points[i].type == VAL_BOOL;
    }

    if (nnum > 0) {
        size_t k = 0;
        if (next_column(blob, len, &pos, &col, &col_len) != 0)
            FAIL("num column truncated");
        v = xmalloc(nnum * sizeof *v);
        if (decode_nums(col, col_len, v, nnum, why) != 0)
            goto fail;
        for (size_t i = 0; i < hdr.count; i++)
            if (out->points[i].type == VAL_NUM)
                out->points[i].num = v[k++];
    }
    if (nbool > 0) {
        if (next_column(blob, len, &pos, &col, &col_len) != 0)
            FAIL("bool column truncated");
        r = (struct bitr){col, col_len, 0};
        for (size_t i = 0; i < hdr.count; i++) {
            if (out->points[i].type != VAL_BOOL)
                continue;
            if (get_bits(&r, 1, &x) != 0)
                FAIL("bool column truncated");
            out->points[i].num = x ? 1.0 : 0.0;
        }
        if (end_bits(&r) != 0)
            FAIL("bool column has trailing bits");
    }
    if (hdr.types & TEXT_TYPES) {
        if (next_column(blob, len, &pos, &col, &col_len) != 0)
            FAIL("str column truncated");
        if (decode_strs(col, col_len, out, why) != 0)
            goto fail;
    }
    if (pos != len)
        FAIL("bytes after the last chunk column");

    for (size_t i = 0; i < hdr.count; i++) {
        const struct point *p = &out->points[i];
        stats_add(&got, p->type, p->ts_ms, p->num);
    }
    if (!stats_equal(&got, &hdr))
        FAIL("chunk stats do not match its values");
    out->stats = hdr;
    free(v);
    return 0;
fail:
    free(v);
    chunk_points_fini(out);
    return GW_EINVAL;
}

void chunk_points_fini(struct chunk_points *cp)
{
    free(cp->points);
    free(cp->texts);
    memset(cp, 0, sizeof *cp);
}
