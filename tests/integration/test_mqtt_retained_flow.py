"""Flow control of what a subscriber is sent:
- Retained messages a SUBSCRIBE matches go out as the in-flight window (mqtt.max_inflight)
  and the socket allow, never all at once: a backend subscribing to devices/+/status in a
  fleet of 1100 devices (retained QoS 1 status each) receives every one of them, with a
  window of 20, and stays connected (the window and queue are no reason to cut it off).
- A QoS 1 message queued while the subscriber's socket was past its send budget is sent
  once the socket drains, with no other event to push it (no ack, no new message)."""
import socket
import time

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_mqtt_retained_flow")
FLEET = 1100


def retained_fleet():
    with Gale() as g:
        port = g.ports["mqtt"]
        tok = g.create_device("backend-r", role="app")
        pub = mr.session(port, "fleet-pub", username="backend-r", password=tok)
        pub.send(b"".join(mr.publish("devices/d%04d/status" % i, b"online", qos=1, retain=True,
                                     pid=i + 1) for i in range(FLEET)))
        acks = set()
        while len(acks) < FLEET:
            acks.add(pub.recv_type(mr.PUBACK).pid)
        pub.close()

        sub = mr.session(port, "fleet-sub", username="backend-r", password=tok)
        sub.send(mr.subscribe(1, [("devices/+/status", 1)]))
        t.eq(sub.recv_type(mr.SUBACK).codes, [1], "subscribed")
        # the fleet's and the backend's own (presence: devices/backend-r/status)
        want = FLEET + 1
        topics, flags = set(), set()
        deadline = time.monotonic() + 60
        while len(topics) < want and time.monotonic() < deadline:
            try:
                p = sub.recv(timeout=5)
            except (socket.timeout, ConnectionError) as e:
                t(False, "retained messages stop after %d: %r" % (len(topics), e))
                break
            if p.type != mr.PUBLISH:
                continue
            topics.add(p.topic)
            flags.add((p.retain, p.qos))
            sub.send(mr.ack(mr.PUBACK, p.pid))
        t.eq(len(topics), want, "every retained status of the fleet received")
        sub.send(mr.PINGREQ_BYTES)
        t.eq(sub.recv(timeout=5).type, mr.PINGRESP, "the subscriber is still connected")
        t.eq(metric(g, "gale_mqtt_dropped_total"), 0, "nothing dropped")
        t.eq(flags, {(True, 1)}, "each with the retain flag, at QoS 1")
        t("subscriber too slow" not in g.log(), "no subscriber cut off as too slow")

        # unacknowledged: the window holds 20 in flight and the rest waits, no disconnect
        lazy = mr.session(port, "fleet-lazy", username="backend-r", password=tok)
        lazy.send(mr.subscribe(1, [("devices/+/status", 1)]))
        t.eq(lazy.recv_type(mr.SUBACK).codes, [1], "subscribed again, acking nothing")
        got = []
        try:
            while True:
                got.append(lazy.recv(timeout=1))
        except socket.timeout:
            pass
        t.eq(len([p for p in got if p.type == mr.PUBLISH]), 20,
             "a subscriber that acks nothing gets its window's worth")
        lazy.send(mr.PINGREQ_BYTES)
        t.eq(lazy.recv(timeout=5).type, mr.PINGRESP, "and stays connected")
        for p in got:
            lazy.send(mr.ack(mr.PUBACK, p.pid))
        more = lazy.recv_type(mr.PUBLISH, timeout=5)
        t(more.topic not in {p.topic for p in got}, "acks let the next ones out")
        lazy.close()
        sub.close()


def drained_socket_pumps():
    # small sockets: the subscriber's receive buffer and a 64 KiB send budget (32 KiB half)
    with Gale(args=["--set", "limits.max_send_queue_bytes=65536"]) as g:
        port = g.ports["mqtt"]
        tok = g.create_device("backend-d", role="app")
        sub = mr.Raw.__new__(mr.Raw)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        sub.sock, sub.buf = s, b""
        t.eq(sub.connect("slow-sub", username="backend-d", password=tok).rc, 0, "connected")
        t.eq(sub.sub(1, [("load/#", 1)]), [1], "subscribed")
        pub = mr.session(port, "load-pub", username="backend-d", password=tok)
        chunk = b"x" * 16384
        # QoS 0 until the subscriber's socket is past half its budget (the broker then drops
        # QoS 0 for it): it reads nothing meanwhile
        for i in range(2000):
            pub.send(mr.publish("load/zero", chunk, qos=0))
            if i % 20 == 19:
                pub.send(mr.PINGREQ_BYTES)
                pub.recv_type(mr.PINGRESP)
                if metric(g, "gale_mqtt_dropped_total") > 0:
                    break
        t(metric(g, "gale_mqtt_dropped_total") > 0, "the subscriber's socket is past its budget")
        pub.send(mr.publish("load/one", b"the QoS 1 message", qos=1, pid=1))
        t.eq(pub.recv_type(mr.PUBACK).pid, 1, "published")
        # the subscriber reads everything now; nothing else happens on the broker
        deadline = time.monotonic() + 20
        found = None
        while time.monotonic() < deadline and not found:
            try:
                p = sub.recv(timeout=3)
            except socket.timeout:
                break
            if p.type == mr.PUBLISH and p.topic == "load/one":
                found = p
        t(found is not None and found.payload == b"the QoS 1 message",
          "the QoS 1 message queued past the budget arrives once the socket drains")
        if found:
            sub.send(mr.ack(mr.PUBACK, found.pid))
        sub.send(mr.PINGREQ_BYTES)
        wait_for(lambda: sub.recv(timeout=5).type == mr.PINGRESP, 10, "PINGRESP")
        sub.close()
        pub.close()


def main():
    retained_fleet()
    drained_socket_pumps()


t.run(main)
