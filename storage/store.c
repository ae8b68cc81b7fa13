/* storage/store.c */
typedef int gale_placeholder_store;
