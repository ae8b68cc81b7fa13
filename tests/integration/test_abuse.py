"""Hostile clients made harmless: 3000 unauthenticated connections (from four loopback
addresses, under limits.max_connections_per_ip each) that send garbage, half packets,
a byte now and then, or nothing, and oversized MQTT CONNECTs and HTTP bodies, across the
MQTT, HTTP and line listeners. Meanwhile a provisioned device publishes over MQTT (QoS 1)
and the line protocol (seq/ack) and every message is acknowledged within a generous
timeout; new device connections are accepted throughout. Afterwards every attacking
connection is gone (the auth deadline closes the silent ones), nothing is held in the
pre-auth budget, and RSS is back near its baseline. Bounded: one gateway, ~40 s, loopback
only, well under the fd limit."""
import os
import random
import selectors
import socket
import threading
import time

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_abuse")
N = 3000
ADDRS = ["127.0.0.%d" % i for i in (10, 11, 12, 13)]
ACK_TIMEOUT = 5.0       # generous: a bound on starvation, not a latency target
FLOOD_S = 14            # past limits.auth_timeout_ms (10 s): the silent ones are closed


def attack_bytes(kind):
    """What an attacking connection sends first, and whether it keeps dripping bytes."""
    if kind == "garbage":
        return os.urandom(random.randint(1, 3000)), False
    if kind == "half-mqtt":
        return mr.connect("half", username="u", password="p")[:7], False
    if kind == "half-http":
        return b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ", False
    if kind == "half-line":
        return b'{"device":"dev-1","tok', False
    if kind == "big-connect":  # declares 900 KB, sends 60 KB of it
        return bytes([0x10]) + mr.varint(900000) + b"\x00\x04MQTT" + b"x" * 60000, False
    if kind == "big-body":     # 1 MB body announced, 60 KB sent, no credentials
        return (b"POST /api/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                + b"{" * 60000), False
    if kind == "slow":
        return b"\x10", True
    return b"", False          # nothing at all


KINDS = {"mqtt": ["garbage", "half-mqtt", "big-connect", "slow", "nothing"],
         "http": ["garbage", "half-http", "big-body", "slow", "nothing"],
         "line": ["garbage", "half-line", "slow", "nothing"]}


class Legit(threading.Thread):
    """A device publishing over MQTT and the line protocol during the flood."""

    def __init__(self, g, tok):
        super().__init__(daemon=True)
        self.g, self.tok = g, tok
        self.stop = threading.Event()
        self.worst, self.sent, self.failures, self.reconnects = 0.0, 0, [], 0

    def run(self):
        g, tok = self.g, self.tok
        try:
            mq = mr.session(g.ports["mqtt"], "legit-mqtt", username="dev-1", password=tok)
            line = g.line("dev-1", tok)
            pid = 0
            while not self.stop.is_set():
                pid = pid % 60000 + 1
                t0 = time.monotonic()
                mq.send(mr.publish("devices/dev-1/telemetry", '{"n":%d}' % pid, qos=1, pid=pid))
                p = mq.recv_type(mr.PUBACK, timeout=ACK_TIMEOUT)
                line.send_line({"n": pid, "seq": pid})
                r = line.read_line(timeout=ACK_TIMEOUT)
                if p.pid != pid or r != {"ack": pid}:
                    self.failures.append((pid, p.pid, r))
                self.worst = max(self.worst, time.monotonic() - t0)
                self.sent += 1
                if pid % 10 == 0:  # a new connection is accepted too
                    c = mr.session(g.ports["mqtt"], "legit-new-%d" % pid, username="dev-1",
                                   password=tok)
                    c.close()
                    self.reconnects += 1
                time.sleep(0.2)
            mq.close()
            line.close()
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            self.failures.append(repr(e))


def flood(g):
    sel = selectors.DefaultSelector()
    socks, slow = [], []
    ports = [("mqtt", g.ports["mqtt"]), ("http", g.ports["http"]), ("line", g.ports["line"])]
    refused = 0
    for i in range(N):
        name, port = ports[i % 3]
        kind = KINDS[name][(i // 3) % len(KINDS[name])]
        s = socket.socket()
        s.setblocking(False)
        s.bind((ADDRS[i % len(ADDRS)], 0))
        try:
            s.connect_ex(("127.0.0.1", port))
        except OSError:
            refused += 1
            s.close()
            continue
        data, drip = attack_bytes(kind)
        socks.append((s, data))
        if drip:
            slow.append(s)
        sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, data)
    pending = {s: d for s, d in socks}
    deadline = time.monotonic() + FLOOD_S
    last_drip = time.monotonic()
    closed = 0
    while time.monotonic() < deadline:
        for key, ev in sel.select(timeout=0.2):
            s = key.fileobj
            if ev & selectors.EVENT_READ:
                try:
                    if not s.recv(65536):
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(s)
                    closed += 1
                    continue
            if ev & selectors.EVENT_WRITE:
                d = pending.get(s, b"")
                try:
                    n = s.send(d) if d else 0
                    pending[s] = d[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    pending[s] = b""
                if not pending[s]:
                    sel.modify(s, selectors.EVENT_READ)
        if time.monotonic() - last_drip >= 1.0:  # a byte a second
            last_drip = time.monotonic()
            for s in slow:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass
    for s, _ in socks:
        s.close()
    return len(socks), closed, refused


def main():
    with Gale() as g:
        tok = g.create_device("dev-1")
        warm = mr.session(g.ports["mqtt"], "warm", username="dev-1", password=tok)
        warm.close()
        time.sleep(0.5)
        base = g.rss_kb()
        legit = Legit(g, tok)
        legit.start()
        peak = [base]

        def sample():
            while legit.is_alive():
                peak[0] = max(peak[0], g.rss_kb())
                time.sleep(0.25)
        threading.Thread(target=sample, daemon=True).start()
        opened, closed, refused = flood(g)
        legit.stop.set()
        legit.join(ACK_TIMEOUT * 3)
        t(g.alive(), "gale survived %d hostile connections" % opened)
        t(closed >= opened * 0.9, "gale closed them itself (%d of %d; %d refused at connect)"
          % (closed, opened, refused))
        t(not legit.failures, "every legitimate message acknowledged (%s)" % legit.failures[:3])
        t(legit.sent >= 20, "the device kept publishing throughout (%d round trips, worst "
          "%.2f s, %d new connections)" % (legit.sent, legit.worst, legit.reconnects))
        wait_for(lambda: metric(g, "gale_connections") <= 2, 15, "attackers gone")
        t.eq(metric(g, "gale_preauth_bytes"), 0, "nothing held in the pre-auth budget")
        t(metric(g, "gale_timeouts_total") > 0, "silent ones closed by the auth deadline")
        wait_for(lambda: g.rss_kb() < base + 32 * 1024, 15, "RSS back near its baseline")
        after = g.rss_kb()
        print("rss baseline=%d kB peak=%d kB after=%d kB" % (base, peak[0], after))
        t(after < base + 32 * 1024, "RSS back near its baseline (%d -> peak %d -> %d kB)"
          % (base, peak[0], after))
        c = mr.session(g.ports["mqtt"], "after", username="dev-1", password=tok)
        c.close()
        t(True, "a device is served after the flood")


if __name__ == "__main__":
    t.run(main)
