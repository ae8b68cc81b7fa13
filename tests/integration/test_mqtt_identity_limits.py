"""Per-identity bounds of the MQTT broker, at their defaults unless named:
- mqtt.max_subscription_levels (50000) and mqtt.max_subscription_bytes (1 MiB): a filter
  that would pass them gets SUBACK 0x80 (the others in the packet are granted), counted
  in gale_mqtt_refused_total{limit=...} and logged.
- mqtt.max_connections_per_identity (32): one more connection of the same device or
  application gets CONNACK 3 (server unavailable) and a log line with peer and reason; a
  takeover (same client id) still works at the limit.
- mqtt.max_queued_bytes (8 MiB): an offline persistent session queues no more bytes than
  that; the message past it is dropped and counted.
- mqtt.max_qos2_pending (1000): a client that leaves more QoS 2 ids without PUBREL is
  disconnected with a logged reason.
- mqtt.max_anonymous_sessions: anonymous persistent sessions share one bound; a new one
  replaces the longest-unused offline one, and is refused (CONNACK 5) when all are
  connected."""
import socket

import mqttraw as mr
from galetest import Check, Gale, metric

t = Check("test_mqtt_identity_limits")


def refused(g, limit):
    return metric(g, 'gale_mqtt_refused_total{limit="%s"}' % limit)


def subscription_bounds(g, port, tok):
    c = mr.session(port, "subs", username="app-i", password=tok)
    # 25001 levels in 50 KB each: one trie node per level
    deep = ["/".join([x] * 25001) for x in "ab"]
    t.eq(c.sub(1, [("ok/1", 0), (deep[0], 0), (deep[1], 0), ("ok/2", 1)]), [0, 0, 0x80, 1],
         "a filter past mqtt.max_subscription_levels is refused, the others granted")
    t.eq(refused(g, "mqtt.max_subscription_levels"), 1, "counted")
    g.wait_log(r'client="subs" subscribe refused reason="mqtt.max_subscription_levels reached" '
               r'limit=50000')
    c.close()
    c = mr.session(port, "subs-b", username="app-i", password=tok)
    wide = ["w%d/" % i + "x" * 60000 for i in range(20)]  # 2 levels each, 1.2 MB together
    codes = []
    for i in range(0, 20, 4):
        codes += c.sub(10 + i, [(f, 0) for f in wide[i:i + 4]])
    t.eq(codes, [0] * 17 + [0x80] * 3,
         "filters past mqtt.max_subscription_bytes (1 MiB together) are refused")
    t.eq(refused(g, "mqtt.max_subscription_bytes"), 3, "counted")
    c.send(mr.unsubscribe(30, wide[:2]))
    c.recv_type(mr.UNSUBACK)
    t.eq(c.sub(31, [(wide[17], 0)]), [0], "an unsubscribe makes room")
    c.close()


def connections_per_identity(g, port, tok):
    conns = [mr.session(port, "many-%d" % i, username="app-i", password=tok) for i in range(32)]
    c = mr.Raw(port)
    t.eq(c.connect("many-32", username="app-i", password=tok).rc, 3,
         "the 33rd connection of one identity gets CONNACK 3 (server unavailable)")
    t(c.closed(), "and is closed")
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=mqtt client="many-32" user="app-i" refused '
               r'reason="mqtt.max_connections_per_identity reached" limit=32')
    t.eq(refused(g, "mqtt.max_connections_per_identity"), 1, "counted")
    again = mr.session(port, "many-5", username="app-i", password=tok)
    t(conns[5].closed(), "a takeover at the limit replaces the old connection")
    other = g.create_device("app-j", role="app")
    mr.session(port, "other", username="app-j", password=other).close()
    for x in conns:
        x.close()
    again.close()


def queue_bytes(g, port, tok):
    c = mr.session(port, "offline-q", clean=False, username="app-i", password=tok)
    t.eq(c.sub(1, [("big/#", 1)]), [1], "persistent subscriber")
    c.send(mr.DISCONNECT_BYTES)
    c.close()
    p = mr.session(port, "big-pub", username="app-i", password=tok)
    body = b"m" * 1000000
    for i in range(9):  # 9 MB for a session whose queue holds 8 MiB
        p.send(mr.publish("big/%d" % i, body, qos=1, pid=i + 1))
        t.eq(p.recv_type(mr.PUBACK).pid, i + 1, "published %d" % i)
    p.close()
    t.eq(refused(g, "mqtt.max_queued_bytes"), 1, "the ninth megabyte is refused")
    c = mr.session(port, "offline-q", clean=False, username="app-i", password=tok)
    got = []
    while True:
        try:
            m = c.recv(timeout=2)
        except socket.timeout:
            break
        if m.type == mr.PUBLISH:
            got.append(m.topic)
            c.send(mr.ack(mr.PUBACK, m.pid))
    t.eq(got, ["big/%d" % i for i in range(8)], "eight queued megabytes delivered, in order")
    g.wait_log(r'client="offline-q" dropping messages reason="session queue bytes full"')
    c.send(mr.DISCONNECT_BYTES)
    c.close()


def qos2_pending(g, port, tok):
    c = mr.session(port, "q2-hoard", username="app-i", password=tok)
    c.send(b"".join(mr.publish("hoard/x", b"v", qos=2, pid=i + 1) for i in range(1000)))
    recs = [c.recv_type(mr.PUBREC).pid for _ in range(1000)]
    t.eq(len(recs), 1000, "1000 QoS 2 ids held (PUBREC, no PUBREL)")
    c.send(mr.publish("hoard/x", b"v", qos=2, pid=1))  # a resend of a held id is fine
    t.eq(c.recv_type(mr.PUBREC).pid, 1, "a resend of a held id is acknowledged")
    c.send(mr.ack(mr.PUBREL, 2))
    t.eq(c.recv_type(mr.PUBCOMP).pid, 2, "a PUBREL releases one")
    c.send(mr.publish("hoard/x", b"v", qos=2, pid=2000))
    t.eq(c.recv_type(mr.PUBREC).pid, 2000, "which makes room for one more")
    c.send(mr.publish("hoard/x", b"v", qos=2, pid=2001))
    t(c.closed(), "one past mqtt.max_qos2_pending is disconnected")
    g.wait_log(r'client="q2-hoard" closed reason="mqtt.max_qos2_pending reached')
    t.eq(refused(g, "mqtt.max_qos2_pending"), 1, "counted")


def identity():
    with Gale() as g:
        port = g.ports["mqtt"]
        tok = g.create_device("app-i", role="app")
        subscription_bounds(g, port, tok)
        connections_per_identity(g, port, tok)
        queue_bytes(g, port, tok)
        qos2_pending(g, port, tok)
        fresh = mr.session(port, "fresh", username="app-i", password=tok)
        fresh.send(mr.PINGREQ_BYTES)
        t.eq(fresh.recv().type, mr.PINGRESP, "a fresh client is served")
        fresh.close()


def anonymous_sessions():
    with Gale(args=["--set", "mqtt.allow_anonymous=true",
                    "--set", "mqtt.max_anonymous_sessions=2"]) as g:
        port = g.ports["mqtt"]
        a = mr.session(port, "anon-a", clean=False)
        a.send(mr.DISCONNECT_BYTES)
        a.close()
        b = mr.session(port, "anon-b", clean=False)
        c = mr.session(port, "anon-c", clean=False)
        t.eq(c.session_present, 0, "a third anonymous session replaces the offline one")
        g.wait_log(r'client="anon-a" session deleted reason="mqtt.max_anonymous_sessions')
        d = mr.Raw(port)
        t.eq(d.connect("anon-d", clean=False).rc, 5,
             "refused (CONNACK 5) while every anonymous session is connected")
        t.eq(refused(g, "mqtt.max_anonymous_sessions"), 1, "counted")
        e = mr.session(port, "anon-e", clean=True)
        t.eq(e.session_present, 0, "a clean anonymous session is not bounded by it")
        b.send(mr.DISCONNECT_BYTES)
        t(b.closed(), "anon-b goes offline")
        a = mr.session(port, "anon-a", clean=False)
        t.eq(a.session_present, 0, "the replaced session is gone (and replaces anon-b's)")
        for x in (b, c, e, a):
            x.close()


def main():
    identity()
    anonymous_sessions()


t.run(main)
