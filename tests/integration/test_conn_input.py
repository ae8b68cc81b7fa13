"""Connection input and limits: reads go through one loop-wide buffer and a connection
keeps only the tail of a partial frame, so every protocol must parse a stream split at any
byte (MQTT, line, HTTP, WebSocket; each split point on its own connection, then one byte
per write). limits.max_connections = 0 (auto) is the open-file limit, raised to its hard
limit at start, minus 128: both are logged, and a connection beyond it is refused with a
log line while a fresh one is served once a slot is free.

This process lowers its own RLIMIT_NOFILE (soft 250, hard 300) before starting Gale, which
inherits it: auto is then 300 - 128 = 172."""
import json
import re
import resource
import socket
import struct
import time

from galetest import Check, Gale, RawWS, wait_for

t = Check("test_conn_input")

SOFT, HARD, RESERVE = 250, 300, 128


def mqtt_str(s):
    return struct.pack("!H", len(s)) + s


def mqtt_stream(client_id):
    """CONNECT (clean, keep-alive 60), PUBLISH QoS 1 id 1, PINGREQ; and the answers."""
    var = mqtt_str(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + mqtt_str(client_id)
    connect = bytes([0x10, len(var)]) + var
    body = mqtt_str(b"split/t") + struct.pack("!H", 1) + b"hello"
    publish = bytes([0x32, len(body)]) + body
    return connect + publish + b"\xc0\x00", b"\x20\x02\x00\x00\x40\x02\x00\x01\xd0\x00"


def exchange(port, chunks, want, until=None, timeout=5):
    """Writes chunks (a pause between them, so each is its own read) and reads until want
    bytes arrived (or until(data) holds); returns what was read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    try:
        for i, c in enumerate(chunks):
            if i:
                time.sleep(0.003)
            s.sendall(c)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (until(got) if until else len(got) >= len(want)):
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    return got


def splits(stream):
    """Each split point as two writes, then one byte per write."""
    for k in range(1, len(stream)):
        yield "split at %d" % k, [stream[:k], stream[k:]]
    yield "a byte per write", [stream[i:i + 1] for i in range(len(stream))]


def check_splits(name, port, make, want_of):
    bad = []
    n = 0
    for i, (what, _) in enumerate(splits(make(0)[0])):
        stream, want = make(i)
        chunks = list(splits(stream))[i][1]
        got = exchange(port, chunks, want, until=want_of(want))
        n += 1
        if not want_of(want)(got):
            bad.append("%s: got %r" % (what, got[:200]))
    t(not bad, "%s: %d split streams all answered%s" % (name, n, "" if not bad else
                                                          ": " + "; ".join(bad[:3])))


def check_mqtt(g):
    port = g.ports["mqtt"]
    check_splits("mqtt", port, lambda i: mqtt_stream(b"split-%03d" % i),
                 lambda want: lambda got: got == want)


def check_line(g):
    token = g.create_device("split-dev")
    auth = json.dumps({"device": "split-dev", "token": token}).encode() + b"\n"
    line = json.dumps({"temp": 21.5, "seq": 7}).encode() + b"\n"
    want = b'{"ok":true}\n{"ack":7}\n'
    check_splits("line", g.ports["line"], lambda i: (auth + line, want),
                 lambda want: lambda got: got.replace(b" ", b"") == want)


def check_http(g):
    req = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    stream = req + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    check_splits("http (two pipelined requests)", g.ports["http"], lambda i: (stream, b""),
                 lambda want: lambda got: got.count(b"HTTP/1.1 200") == 2)


def check_ws(g):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    up = ("GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode()
    stream = up + RawWS.frame(1, "split me") + RawWS.frame(1, "and me")
    want = b"\x81\x08split me\x81\x06and me"
    check_splits("websocket (upgrade and two frames)", g.ports["http"], lambda i: (stream, want),
                 lambda want: lambda got: got.endswith(want) and b" 101 " in got)


def live_connections(g):
    st, body = g.http("GET", "/metrics")
    m = re.search(r"^gale_connections (\d+)", body if isinstance(body, str) else str(body), re.M)
    return int(m.group(1)) if m else -1


def check_max_connections(g):
    limit = HARD - RESERVE
    t(re.search(r"open file limit raised from %d to %d" % (SOFT, HARD), g.log()) is not None,
      "the raised open-file limit is logged")
    t(re.search(r"limits max_connections=%d \(auto" % limit, g.log()) is not None,
      "the effective max_connections (auto) is logged: %d" % limit)
    # only the /metrics request itself is left open
    wait_for(lambda: live_connections(g) == 1, 10, "earlier connections closed")
    held = [socket.create_connection(("127.0.0.1", g.ports["line"]), timeout=5)
            for _ in range(limit)]
    extra = socket.create_connection(("127.0.0.1", g.ports["line"]), timeout=5)
    extra.settimeout(5)
    try:
        closed = extra.recv(1) == b""
    except (ConnectionResetError, socket.timeout) as e:
        closed = not isinstance(e, socket.timeout)
    t(closed, "connection %d (beyond the limit) is closed at once" % (limit + 1))
    g.wait_log(r'refused reason="max connections reached" limit=%d' % limit)
    t(True, "the refusal is logged with the limit")
    for s in held[:limit - 1]:
        s.close()
    wait_for(lambda: live_connections(g) <= 3, 10, "held connections closed")
    st, js = g.http("GET", "/api/health")
    t.eq(st, 200, "a fresh client is served once slots are free")
    for s in held[limit - 1:] + [extra]:
        s.close()


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))
    with Gale(args=["--set", "mqtt.allow_anonymous=true", "--set", "http.ws_echo=true",
                    "--set", "limits.auth_timeout_ms=60000"]) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "the MQTT listener")
        check_mqtt(g)
        check_line(g)
        check_http(g)
        check_ws(g)
        check_max_connections(g)


t.run(main)
