/* protocols/codec.h: the result every incremental decoder returns. */
#ifndef GALE_CODEC_H
#define GALE_CODEC_H

enum codec_rc { CODEC_ERROR = -1, CODEC_NEED_MORE = 0, CODEC_FRAME = 1 };

#endif
