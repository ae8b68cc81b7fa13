/* config/config.c */
typedef int gale_placeholder_config;
