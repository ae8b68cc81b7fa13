/* protocols/line/codec.c */
typedef int gale_placeholder_codec;
