/* protocols/line/line.h: newline framing for the raw TCP line protocol.
 * Pure and incremental: the decoder remembers how far it has scanned, so a
 * one-byte read never rescans the line, and the cap applies to the scanned
 * length (a line longer than max_line_bytes is rejected before its newline
 * arrives). Lines end in "\n"; a trailing "\r" is stripped; empty lines are
 * skipped by the caller (returned with len 0). */
#ifndef GALE_LINE_H
#define GALE_LINE_H

#include <stddef.h>
#include <stdint.h>

#include "protocols/codec.h"

struct line_decoder {
    size_t max_line_bytes; /* limit, excluding the newline */
    size_t scanned;        /* private: bytes of the current line already scanned */
};

void line_decoder_init(struct line_decoder *d, size_t max_line_bytes);
/* Decodes at most one line from p[0..len): on CODEC_FRAME, *line and *line_len are a view
 * into p (no newline, no trailing \r) and *used is the bytes to consume, newline
 * included. On CODEC_ERROR, *why is "line too long". NEED_MORE leaves p as is. */
enum codec_rc line_decode(struct line_decoder *d, const uint8_t *p, size_t len,
                          const uint8_t **line, size_t *line_len, size_t *used,
                          const char **why);

#endif
