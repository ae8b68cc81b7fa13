/* tools/sim/net.c: one TCP connection of the simulator (snet_). Bytes read are
 * appended to n->in; the reader consumes what it decoded. A write copies its bytes
 * into one allocation that lives until libuv's write callback. */
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "tools/sim/sim.h"

#define READ_CHUNK 16384

struct wreq {
    uv_write_t req;
    char data[];
};

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct snet *n = h->data;

    (void)hint;
    b->base = (char *)buf_reserve(&n->in, READ_CHUNK);
    b->len = READ_CHUNK;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct snet *n = s->data;

    (void)b;
    if (nread < 0) {
        n->read_error = (int)nread;
        snet_close(n);
        return;
    }
    if (nread == 0)
        return;
    buf_commit(&n->in, (size_t)nread);
    n->on_read(n);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct snet *n = req->data;

    if (!n->open) /* closed while connecting: the close callback reports it */
        return;
    if (status == 0) {
        n->connected = true;
        uv_tcp_nodelay(&n->tcp, 1);
        status = uv_read_start((uv_stream_t *)&n->tcp, on_alloc, on_read);
    }
    n->on_connect(n, status);
}

int snet_connect(struct snet *n, uv_loop_t *loop, const struct sockaddr *addr)
{
    int rc = uv_tcp_init(loop, &n->tcp);

    if (rc != 0)
        return rc;
    n->tcp.data = n;
    n->creq.data = n;
    n->open = true;
    n->inited = true;
    rc = uv_tcp_connect(&n->creq, &n->tcp, addr, on_connected);
    if (rc != 0)
        snet_close(n);
    return rc;
}

static void on_write(uv_write_t *req, int status)
{
    (void)status; /* a failed write ends the read side too; reported there */
    free(req);
}

void snet_write(struct snet *n, struct buf *b)
{
    if (b->len == 0)
        return;
    if (!n->open || !n->connected) {
        b->len = 0;
        return;
    }
    struct wreq *w = xmalloc(sizeof *w + b->len);
    memcpy(w->data, b->data, b->len);
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)b->len);
    b->len = 0;
    if (uv_write(&w->req, (uv_stream_t *)&n->tcp, &ub, 1, on_write) != 0) {
        free(w);
        snet_close(n);
    }
}

static void on_closed(uv_handle_t *h)
{
    struct snet *n = h->data;

    buf_fini(&n->in);
    n->on_close(n);
}

void snet_close(struct snet *n)
{
    if (!n->open)
        return;
    n->open = false;
    uv_close((uv_handle_t *)&n->tcp, on_closed);
}
