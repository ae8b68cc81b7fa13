/* base/list.h: intrusive doubly-linked lists (the links live inside the element).
 * An element is on at most one list per struct list_link it embeds; unlinking is O(1)
 * and leaves the link zeroed, so list_linked() tells whether it is on a list. */
#ifndef GALE_LIST_H
#define GALE_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list_link {
    struct list_link *prev, *next;
};

struct list {
    struct list_link *head, *tail;
    size_t len;
};

/* The element that embeds link as member (link may be NULL: then NULL). */
#define list_entry(link, type, member)                                                       \
    ((link) ? (type *)(void *)((char *)(link) - offsetof(type, member)) : (type *)NULL)

static inline bool list_linked(const struct list *l, const struct list_link *e)
{
    return e->prev || e->next || l->head == e;
}

static inline void list_push_front(struct list *l, struct list_link *e)
{
    e->prev = NULL;
    e->next = l->head;
    if (l->head)
        l->head->prev = e;
    else
        l->tail = e;
    l->head = e;
    l->len++;
}

static inline void list_push_back(struct list *l, struct list_link *e)
{
    e->next = NULL;
    e->prev = l->tail;
    if (l->tail)
        l->tail->next = e;
    else
        l->head = e;
    l->tail = e;
    l->len++;
}

static inline void list_remove(struct list *l, struct list_link *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        l->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        l->tail = e->prev;
    e->prev = e->next = NULL;
    l->len--;
}

#endif
