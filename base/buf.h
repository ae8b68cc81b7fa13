/* base/buf.h: growable byte buffer. Readers reserve room at the tail,
 * commit what arrived, and decoders consume from the head once per read. */
#ifndef GALE_BUF_H
#define GALE_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data; /* heap, owned; NULL when empty and never grown */
    size_t len;    /* bytes in use */
    size_t cap;    /* bytes allocated */
};

void buf_init(struct buf *b);
void buf_fini(struct buf *b);
/* Makes room for at least n more bytes; returns the tail (data + len). */
uint8_t *buf_reserve(struct buf *b, size_t n);
/* Marks n reserved bytes as used. */
void buf_commit(struct buf *b, size_t n);
/* Drops n bytes from the head. */
void buf_consume(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, const char *s);
/* printf-style append. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void buf_append_json_str(struct buf *b, const char *s, size_t n);
/* Releases memory when the buffer is empty and larger than keep bytes. */
void buf_shrink(struct buf *b, size_t keep);
/* Returns the contents with a trailing NUL (not counted in len). */
const char *buf_cstr(struct buf *b);

#endif
