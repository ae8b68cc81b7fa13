"""limits.preauth_total_bytes counts every byte an unauthenticated connection makes the
gateway hold, not only its unconsumed input (README "Security"):
- a partial HTTP request (a big head, part of its body) is copied out of the input into
  the request's head and body buffers: gale_preauth_bytes counts them while it waits,
  and nothing once it is gone
- so does a fragmented WebSocket message being reassembled (an unfinished first
  fragment on /ws/echo, which never authenticates)
- many such partial requests at once: connections are closed once the budget is spent,
  gale_preauth_bytes stays within it and RSS grows by at most the budget plus a margin
  (MARGIN_KB: per-connection state, allocator slack), while an authenticated client is
  still served."""
import os
import select
import socket
import time

from galetest import Check, Gale, RawWS, metric, wait_for

t = Check("test_preauth_memory")
BUDGET = 8 * 1024 * 1024
MARGIN_KB = 8 * 1024
MAX_HOGS = 400          # 400 x ~80 kB = ~32 MB: four times the budget
ARGS = ["--set", "limits.preauth_total_bytes=%d" % BUDGET,
        "--set", "limits.auth_timeout_ms=120000",
        "--set", "limits.max_connections_per_ip=0",
        "--set", "http.ws_echo=true"]

# a head of ~12 kB and 50000 of the 60000 body bytes it declares: parsed, copied out of
# the connection's input, and waiting for the rest
PARTIAL = (b"POST /api/devices HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 12000 +
           b"\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n" +
           b"b" * 50000)


def hog(g):
    s = socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=10)
    try:
        s.sendall(PARTIAL)
    except OSError:
        pass  # closed by gale while sending: refused
    return s


def is_closed(s):
    """True when gale closed s (readable: EOF, a reset, or a refusal)."""
    r, _, _ = select.select([s], [], [], 0)
    return bool(r)


def held_each(g):
    base = metric(g, "gale_preauth_bytes")
    t.eq(base, 0, "nothing held before")
    s = hog(g)
    got = wait_for(lambda: metric(g, "gale_preauth_bytes") >= 62000 and
                   metric(g, "gale_preauth_bytes"), 10, "a partial request counted")
    t(got >= 62000, "a partial HTTP request (12 kB head, 50 kB body) counts what its head "
      "and body buffers hold: gale_preauth_bytes=%d" % got)
    ws = RawWS(g.ports["http"], "/ws/echo")
    ws.send(0x2, b"w" * 40000, fin=False)  # the first fragment of a message
    got2 = wait_for(lambda: metric(g, "gale_preauth_bytes") >= got + 40000 and
                    metric(g, "gale_preauth_bytes"), 10, "a fragment counted")
    t(got2 >= got + 40000, "a fragmented WebSocket message counts its reassembly buffer: "
      "gale_preauth_bytes=%d" % got2)
    s.close()
    ws.close()
    wait_for(lambda: metric(g, "gale_preauth_bytes") == 0, 10, "released on close")
    t(True, "released when they close")


def flood(g):
    time.sleep(0.3)
    base = g.rss_kb()
    socks, closed = [], 0
    deadline = time.monotonic() + 60
    for _ in range(MAX_HOGS):
        if time.monotonic() > deadline:
            break
        socks.append(hog(g))
        time.sleep(0.005)
        closed = sum(1 for s in socks if is_closed(s))
        if closed >= 10:  # the budget is spent: more would only be refused
            break
    time.sleep(0.5)
    closed = sum(1 for s in socks if is_closed(s))
    held = metric(g, "gale_preauth_bytes")
    rss = g.rss_kb()
    print("hogs=%d closed=%d preauth_bytes=%d rss %d -> %d kB" %
          (len(socks), closed, held, base, rss))
    t(closed >= 1, "connections past the budget are closed (%d of %d)" % (closed, len(socks)))
    t(BUDGET // 2 <= held <= BUDGET, "gale_preauth_bytes reflects the held requests and "
      "stays within the budget: %d of %d" % (held, BUDGET))
    t(rss - base <= BUDGET // 1024 + MARGIN_KB, "RSS grew by at most the budget + %d kB: "
      "%d kB for %d partial requests" % (MARGIN_KB, rss - base, len(socks) - closed))
    st, js = g.http("GET", "/api/devices")
    t.eq(st, 200, "an authenticated client is served while the budget is spent")
    t(metric(g, "gale_preauth_refused_total") >= 1, "refusals counted")
    for s in socks:
        s.close()
    wait_for(lambda: metric(g, "gale_preauth_bytes") == 0, 20, "budget released")
    s = socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=10)
    s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
    s.close()
    t(reply.startswith(b"HTTP/1.1 200"), "a fresh unauthenticated client is served after")


def main():
    # under ASan, freed memory waits in a quarantine before reuse: keep it small, so that
    # RSS shows what is held (ignored by a build without ASan)
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=1"}
    with Gale(args=ARGS, env=env) as g:
        g.create_device("warm")
        held_each(g)
        flood(g)


if __name__ == "__main__":
    t.run(main)
