"""What one callback sends a connection leaves in one socket write (gateway/conn.c, "staged
output"), through every transport, and the write fault seam still counts socket writes.

- A burst of 50 PUBLISH packets arriving in one segment reaches a subscriber as one write:
  with GALE_TEST_FAIL_WRITES=3 (every connection's third socket write fails) the subscriber
  gets all 50 (its first write is CONNACK + SUBACK, its second the burst), and the next
  burst, its third write, fails and cuts it. Written one delivery at a time, the third write
  was the first delivery and the subscriber got none.
- Bursts with deliveries of every size (small ones staged, ones past 16 KiB written without
  a copy after what was staged) reach subscribers on the plain, TLS, WebSocket and
  WebSocket-over-TLS listeners whole and in order: records and frames stay intact.
- A QoS 1 publisher's burst gets every PUBACK, in order.
Loopback only; every client has a timeout; gale is stopped by its PID."""
import os
import socket
import ssl
import tempfile

import mqttraw
from galetest import Check, Gale, RawWS, tls_args, wait_for
from tlscerts import CA

t = Check("test_write_coalescing")
D = tempfile.mkdtemp(prefix="gale-coalesce-")
ca = CA(D)
CERT, KEY = ca.issue("server", "localhost", server=True)
ANON = ["--set", "mqtt.allow_anonymous=true"]
TOPIC = "coalesce/t"


class TlsRaw(mqttraw.Raw):
    """mqttraw.Raw over TLS."""

    def __init__(self, port, timeout=10):
        c = ssl.create_default_context(cafile=ca.pem)
        self.sock = c.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout),
                                  server_hostname="localhost")
        self.buf = b""


class WsRaw(mqttraw.Raw):
    """mqttraw.Raw over the /mqtt WebSocket endpoint (binary messages in, packets out)."""

    def __init__(self, port, use_tls=False, timeout=10):
        self.ws = RawWS(port, "/mqtt", subprotocol="mqtt", timeout=timeout, handshake=False)
        if use_tls:
            c = ssl.create_default_context(cafile=ca.pem)
            self.ws.sock = c.wrap_socket(self.ws.sock, server_hostname="localhost")
        req = ("GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: mqtt\r\n\r\n" % self.ws.key)
        self.ws.sock.sendall(req.encode())
        if self.ws.read_head() != 101:
            raise AssertionError("upgrade refused: %d" % self.ws.status)
        self.sock = self.ws.sock
        self.buf = b""

    def send(self, data):
        self.ws.send(0x2, data)

    def _fill(self, n, timeout):
        while len(self.buf) < n:
            m = self.ws.recv_msg(timeout)
            if isinstance(m, tuple):
                raise ConnectionError("closed by server: %r" % (m,))
            self.buf += m.encode() if isinstance(m, str) else m


def burst(n, sizes=(8,), qos=0, first_pid=1):
    """n PUBLISH packets to TOPIC, payload i of sizes[i % len(sizes)] bytes, numbered."""
    out, payloads = b"", []
    for i in range(n):
        size = sizes[i % len(sizes)]
        p = (b"%06d:" % i + b"x" * size)[:max(size, 7)]
        payloads.append(p)
        out += mqttraw.publish(TOPIC, p, qos=qos, pid=first_pid + i)
    return out, payloads


def subscriber(c, client_id):
    c.send(mqttraw.connect(client_id, keepalive=30) + mqttraw.subscribe(1, [(TOPIC, 0)]))
    t.eq(c.recv_type(mqttraw.CONNACK).rc, 0, "%s: CONNACK" % client_id)
    t.eq(c.recv_type(mqttraw.SUBACK).codes, [0], "%s: SUBACK" % client_id)


def received(c, n, timeout=10):
    got = []
    for _ in range(n):
        p = c.recv_type(mqttraw.PUBLISH, timeout)
        got.append(p.payload)
    return got


def burst_is_one_write():
    with Gale(args=ANON + ["--set", "mqtt.port=0"], env={"GALE_TEST_FAIL_WRITES": "3"}) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "mqtt port")
        port = g.ports["mqtt"]
        sub = mqttraw.Raw(port)
        subscriber(sub, "co-sub")  # its first socket write: CONNACK and SUBACK
        pub = mqttraw.Raw(port)
        data, payloads = burst(50)
        pub.send(mqttraw.connect("co-pub", keepalive=30) + data)  # one segment, one read
        t.eq(pub.recv_type(mqttraw.CONNACK).rc, 0, "publisher: CONNACK (its first write)")
        try:
            got = received(sub, 50)
        except (ConnectionError, socket.timeout, OSError) as e:
            got = "cut: %r" % e
        t.eq(got, payloads, "the 50 deliveries of one read went out in the subscriber's "
                            "second socket write")
        data, _ = burst(5)
        pub.send(data)  # the subscriber's third write: the seam fails it
        t(sub.closed(timeout=10), "the seam still fails the subscriber's third socket write")
        g.wait_log(r"conn=\d+ peer=\S+ proto=mqtt close reason=\"(broken pipe|connection "
                   r"reset by peer)\"")
        sub.close()
        pub.close()
        t(g.alive(), "gale alive after the failed write")


def transports():
    with Gale(args=ANON + tls_args(CERT, KEY) + ["--set", "mqtt.port=0"]) as g:
        wait_for(lambda: all(p in g.ports for p in ("mqtt", "mqtts", "http", "https")), 10,
                 "ports")
        subs = [("plain", mqttraw.Raw(g.ports["mqtt"])),
                ("tls", TlsRaw(g.ports["mqtts"])),
                ("ws", WsRaw(g.ports["http"])),
                ("wss", WsRaw(g.ports["https"], use_tls=True))]
        for name, c in subs:
            subscriber(c, "co-" + name)
        pub = mqttraw.Raw(g.ports["mqtt"])
        t.eq(pub.connect("co-pub5", keepalive=30).rc, 0, "publisher connected")
        # small deliveries staged, and ones past 16 KiB written after them without a copy
        data, payloads = burst(120, sizes=(10, 300, 10, 20000, 10, 70000, 1000))
        pub.send(data)
        for name, c in subs:
            try:
                got = received(c, len(payloads), timeout=20)
            except (ConnectionError, socket.timeout, OSError, AssertionError) as e:
                got = "failed: %r" % e
            t(got == payloads, "%s: a burst of every size arrives whole and in order (%s)"
              % (name, got if isinstance(got, str) else "%d messages" % len(got)))
        data, _ = burst(30, qos=1, first_pid=100)
        pub.send(data)
        acks = []
        try:
            for _ in range(30):
                acks.append(pub.recv_type(mqttraw.PUBACK).pid)
        except (ConnectionError, socket.timeout, OSError, AssertionError) as e:
            acks.append("failed: %r" % e)
        t.eq(acks, list(range(100, 130)), "a QoS 1 burst: every PUBACK, in order")
        for name, c in subs:
            t.eq(len(received(c, 30)), 30, "%s: the QoS 1 burst delivered" % name)
            c.close()
        pub.close()
        t(g.alive(), "gale alive")


def main():
    burst_is_one_write()
    transports()


t.run(main)
