"""Shared subscriptions ($share/<group>/<filter>) with MQTT 3.1.1 clients (python3-paho-mqtt
and the byte-level mqttraw): three consumers get disjoint shares whose union is everything
published, evenly, while a plain subscriber gets every message; a member that leaves (its
clean session ends, or it unsubscribes, or its connection is reset) hands what waited for it
to the others, nothing lost and nothing twice; a persistent member keeps receiving its QoS 1
share while offline and gets it on reconnect, QoS 0 goes to connected members only (else
dropped and counted); no retained message on a shared subscription; the ACL judges the
filter after "$share/<group>/"; a malformed one is refused; the sticky strategy keeps each
publishing device on one member; a persistent shared subscription survives a restart and
is listed with its group."""
import queue
import shutil
import socket
import tempfile
import threading
import time

import paho.mqtt.client as paho

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_mqtt_shared")
# the queue limit is not what is tested here: a slow (sanitizer) build must not cut off a
# subscriber that falls behind the bulk publisher
ANON = ["--set", "mqtt.allow_anonymous=true", "--set", "mqtt.max_queued=100000"]


def same(got, want, what):
    """got (a list) holds exactly the items of want, each once; reports what differs."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    doubled = len(got) - len(set(got))
    t(not missing and not extra and not doubled,
      "%s: %d missing %r, %d extra %r, %d doubled" % (what, len(missing), missing[:10],
                                                     len(extra), extra[:10], doubled))


class Consumer:
    """A paho 3.1.1 client that records every payload it receives (acks as paho does)."""

    def __init__(self, port, cid, filt=None, qos=1):
        self.got = []
        self.lock = threading.Lock()
        self.subacks = queue.Queue()
        self.connacks = queue.Queue()
        self.c = paho.Client(client_id=cid, clean_session=True, protocol=paho.MQTTv311,
                             reconnect_on_failure=False)
        self.c.max_inflight_messages_set(100)
        self.c.on_connect = lambda c, u, flags, rc: self.connacks.put(rc)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda c, u, mid, granted: self.subacks.put(list(granted))
        self.c.connect("127.0.0.1", port, 60)
        self.c.loop_start()
        assert self.connacks.get(timeout=10) == 0
        if filt:
            self.c.subscribe(filt, qos)
            t.eq(self.subacks.get(timeout=10), [qos], "%s subscribed to %s" % (cid, filt))

    def _on_message(self, c, u, m):
        with self.lock:
            self.got.append(m.payload.decode())

    def count(self):
        with self.lock:
            return len(self.got)

    def payloads(self):
        with self.lock:
            return list(self.got)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def publish_many(port, topic_of, payloads, qos=1):
    """Publishes with paho (up to 100 in flight); returns once every one is acknowledged."""
    c = paho.Client(client_id="pub-%d" % time.monotonic_ns(), protocol=paho.MQTTv311)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    infos = [c.publish(topic_of(i), p, qos) for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(60)
    ok = all(info.is_published() for info in infos)
    c.disconnect()
    c.loop_stop()
    return ok


def drain(c, ack=True, quiet=1.0):
    """Reads PUBLISH packets until none comes for `quiet` seconds; acks QoS 1 when ack."""
    out = []
    while True:
        try:
            p = c.recv(timeout=quiet)
        except socket.timeout:
            return out
        if p.type != mr.PUBLISH:
            continue
        if ack and p.qos == 1:
            c.send(mr.ack(mr.PUBACK, p.pid))
        out.append(p)


def spread(g):
    """3 consumers: disjoint, complete, even; a plain subscriber alongside gets all."""
    port = g.ports["mqtt"]
    n = 3000
    cons = [Consumer(port, "c%d" % i, "$share/g/fleet/+/data") for i in range(3)]
    plain = Consumer(port, "plain", "fleet/+/data")
    sent0 = metric(g, "gale_mqtt_shared_sent_total")
    want = [str(i) for i in range(n)]
    t(publish_many(port, lambda i: "fleet/p%d/data" % (i % 7), want), "all published")
    try:
        wait_for(lambda: sum(c.count() for c in cons) >= n and plain.count() >= n, 60,
                 "every message delivered")
    except AssertionError:
        pass
    time.sleep(0.3)  # anything extra (a duplicate) would show now
    shares = [c.payloads() for c in cons]
    union = [p for s in shares for p in s]
    same(union, want, "each message reached exactly one member (%s)" % [len(s) for s in shares])
    for i, s in enumerate(shares):
        t(n / 3 * 0.5 <= len(s) <= n / 3 * 1.5, "member %d got a fair share (%d of %d)"
          % (i, len(s), n))
    same(plain.payloads(), want, "the plain subscriber got every message")
    t.eq(metric(g, "gale_mqtt_shared_sent_total") - sent0, n, "metric: messages sent via groups")
    st, js = g.http("GET", "/api/mqtt/shared")
    t.eq((st, js), (200, {"groups": [{"share": "g", "filter": "fleet/+/data", "members": 3,
                                      "connected": 3, "sent": n}], "count": 1}),
         "the group listed with its members")
    for c in cons + [plain]:
        c.stop()
    wait_for(lambda: g.http("GET", "/api/mqtt/shared")[1]["count"] == 0, 10,
             "the group gone with its last member")


def leave_clean_mid_stream(g):
    """A member with unacknowledged messages ends its clean session (DISCONNECT): they go
    to the other members; nothing lost, nothing twice among those acknowledged."""
    port = g.ports["mqtt"]
    cons = [Consumer(port, "l%d" % i, "$share/l/line/#") for i in range(2)]
    lazy = mr.session(port, "lazy")
    t.eq(lazy.sub(1, [("$share/l/line/#", 1)]), [1], "the lazy member subscribed")
    first = [str(i) for i in range(300)]
    t(publish_many(port, lambda i: "line/%d" % (i % 3), first), "first half published")
    held = drain(lazy, ack=False)  # received, never acknowledged
    t(len(held) > 0, "the lazy member got some messages (%d), acked none" % len(held))
    lazy.send(mr.DISCONNECT_BYTES)
    lazy.close()
    second = [str(i) for i in range(300, 600)]
    t(publish_many(port, lambda i: "line/%d" % (i % 3), second), "second half published")
    want = first + second
    try:
        wait_for(lambda: sum(c.count() for c in cons) >= len(want), 30,
                 "the lazy member's messages handed over")
    except AssertionError:
        pass
    time.sleep(0.3)
    union = [p for c in cons for p in c.payloads()]
    same(union, want, "nothing lost or doubled when a member's clean session ends")
    g.wait_log(r'client="lazy" left shared subscription share="l" filter="line/#" '
                      r'handed_over=\d+')
    moved = [int(l.split("handed_over=")[1].split()[0]) for l in g.log_lines
             if 'client="lazy" left shared' in l]
    t(moved and moved[0] >= len(held), "logged: handed over %r (held %d)" % (moved, len(held)))
    for c in cons:
        c.stop()


def leave_by_unsubscribe(g):
    """Two members that do not ack: 20 in flight each (mqtt.max_inflight), the rest queued
    behind. One unsubscribes: its queued messages go to the other; its in-flight ones stay
    on its connection (acknowledged there)."""
    port = g.ports["mqtt"]
    a = mr.session(port, "ua")
    b = mr.session(port, "ub")
    for c in (a, b):
        t.eq(c.sub(1, [("$share/u/unsub/x", 1)]), [1], "member subscribed")
    p = mr.session(port, "upub")
    for i in range(60):
        p.send(mr.publish("unsub/x", str(i), qos=1, pid=i + 1))
        p.recv_type(mr.PUBACK)
    a_flight = drain(a, ack=False)
    t.eq(len(a_flight), 20, "member a: its in-flight window is full")
    a.send(mr.unsubscribe(2, ["$share/u/unsub/x"]))
    t.eq(a.recv_type(mr.UNSUBACK).pid, 2, "member a unsubscribed")
    for m in a_flight:
        a.send(mr.ack(mr.PUBACK, m.pid))
    for i in range(60, 70):
        p.send(mr.publish("unsub/x", str(i), qos=1, pid=i + 1))
        p.recv_type(mr.PUBACK)
    b_got = drain(b)
    t(a.nothing(0.5), "member a gets nothing more once it acked its in-flight messages")
    got_a = [m.payload.decode() for m in a_flight]
    got_b = [m.payload.decode() for m in b_got]
    t.eq(len(got_b), 50, "member b: its 30, a's 10 queued and the 10 published after")
    same(got_a + got_b, [str(i) for i in range(70)],
         "nothing lost or doubled when a member unsubscribes")
    for c in (a, b, p):
        c.close()


def reset_member(g):
    """A member whose connection is reset with messages in flight: they go to the other."""
    port = g.ports["mqtt"]
    a = mr.session(port, "ra")
    b = mr.session(port, "rb")
    for c in (a, b):
        t.eq(c.sub(1, [("$share/r/reset/x", 1)]), [1], "member subscribed")
    p = mr.session(port, "rpub")
    for i in range(30):
        p.send(mr.publish("reset/x", str(i), qos=1, pid=i + 1))
        p.recv_type(mr.PUBACK)
    a.abort()
    got = drain(b)
    same([m.payload.decode() for m in got], [str(i) for i in range(30)],
         "a reset member's in-flight messages went to the other member")
    t.eq(sum(1 for m in got if m.dup), 0, "handed over as new messages (no DUP)")
    b.close()
    p.close()


def persistent_offline(g):
    """A persistent member offline gets its QoS 1 share queued (and on reconnect); QoS 0
    goes to connected members only; with none connected it is dropped and counted."""
    port = g.ports["mqtt"]
    off = mr.session(port, "p-off", clean=False)
    t.eq(off.sub(1, [("$share/h/plant/x", 1)]), [1], "persistent member subscribed")
    off.send(mr.DISCONNECT_BYTES)
    off.close()
    live = mr.session(port, "p-live")
    t.eq(live.sub(1, [("$share/h/plant/x", 1)]), [1], "live member subscribed")
    p = mr.session(port, "p-pub")
    for i in range(30):
        p.send(mr.publish("plant/x", "q1-%d" % i, qos=1, pid=i + 1))
        p.recv_type(mr.PUBACK)
    for i in range(10):
        p.send(mr.publish("plant/x", "q0-%d" % i, qos=0))
    got_live = [m.payload.decode() for m in drain(live)]
    q0 = [x for x in got_live if x.startswith("q0-")]
    q1_live = [x for x in got_live if x.startswith("q1-")]
    t.eq(q0, ["q0-%d" % i for i in range(10)], "QoS 0 went to the connected member only")
    t.eq(len(q1_live), 15, "QoS 1: the live member got its half")
    off = mr.Raw(port)
    ack = off.connect("p-off", clean=False)
    t.eq((ack.rc, ack.session_present), (0, 1), "persistent member back, session present")
    q1_off = [m.payload.decode() for m in drain(off)]
    t.eq(len(q1_off), 15, "the offline member's half waited for it")
    same(q1_live + q1_off, ["q1-%d" % i for i in range(30)], "QoS 1: disjoint halves, nothing lost")
    # no connected member: QoS 0 is dropped and counted; QoS 1 queues for the offline one
    live.send(mr.DISCONNECT_BYTES)
    live.close()
    off.send(mr.DISCONNECT_BYTES)
    off.close()
    dropped0 = metric(g, "gale_mqtt_shared_dropped_total")
    p.send(mr.publish("plant/x", "lost", qos=0))
    p.send(mr.publish("plant/x", "kept", qos=1, pid=100))
    p.recv_type(mr.PUBACK)
    t.eq(metric(g, "gale_mqtt_shared_dropped_total") - dropped0, 1,
         "QoS 0 with no connected member: dropped and counted")
    off = mr.session(port, "p-off", clean=False)
    t.eq([m.payload for m in drain(off)], [b"kept"], "QoS 1 kept for the offline member")
    off.close()
    p.close()


def rest_unsubscribe_offline(g):
    """A persistent member offline with a message in flight and one queued: removing its
    shared subscription over REST hands both to the connected member."""
    port = g.ports["mqtt"]
    off = mr.session(port, "x-off", clean=False)
    live = mr.session(port, "x-live")
    for c in (off, live):
        t.eq(c.sub(1, [("$share/x/ops/x", 1)]), [1], "member subscribed")
    p = mr.session(port, "x-pub")
    p.send(mr.publish("ops/x", "0", qos=1, pid=1))  # to x-off (first in turn), not acked
    p.recv_type(mr.PUBACK)
    t.eq(off.recv().payload, b"0", "the persistent member has one in flight")
    off.abort()
    wait_for(lambda: g.http("GET", "/api/mqtt/sessions/x-off")[1].get("connected") is False,
             10, "x-off offline")
    for i in (1, 2, 3):
        p.send(mr.publish("ops/x", str(i), qos=1, pid=i + 1))
        p.recv_type(mr.PUBACK)
    got = [m.payload for m in drain(live)]
    st, js = g.http("GET", "/api/mqtt/sessions/x-off")
    t.eq((js.get("inflight"), js.get("queued")), (1, 1), "x-off: 1 in flight, its turn queued")
    t.eq(got, [b"1", b"3"], "the live member took its turns")
    st, _ = g.http("DELETE",
                   "/api/mqtt/subscriptions?client_id=x-off&filter=%24share%2Fx%2Fops%2Fx")
    t.eq(st, 200, "the offline member's shared subscription removed over REST")
    got += [m.payload for m in drain(live)]
    same(got, [b"0", b"1", b"2", b"3"], "what waited for the offline member went to the other")
    st, js = g.http("GET", "/api/mqtt/sessions/x-off")
    t.eq((js.get("inflight"), js.get("queued")), (0, 0), "x-off holds nothing of the group")
    live.close()
    p.close()


def no_retained_acl_malformed(g):
    port = g.ports["mqtt"]
    p = mr.session(port, "ret-pub")
    p.send(mr.publish("ret/x", "old", qos=1, retain=True, pid=1))
    p.recv_type(mr.PUBACK)
    c = mr.session(port, "ret-sub")
    t.eq(c.sub(1, [("$share/r/ret/x", 1)]), [1], "shared subscription granted")
    t(c.nothing(0.5), "no retained message on a shared subscription")
    p.send(mr.publish("ret/x", "new", qos=1, pid=2))
    p.recv_type(mr.PUBACK)
    m = c.recv()
    t.eq((m.payload, m.retain), (b"new", False), "a live message arrives")
    c.send(mr.ack(mr.PUBACK, m.pid))
    # the ACL judges the filter after $share/<group>/: a device owns devices/<id>/#
    tok = g.create_device("dev-a")
    d = mr.session(port, "dev-a-c", username="dev-a", password=tok)
    t.eq(d.sub(1, [("$share/g/devices/dev-a/inbox", 1), ("$share/g/devices/dev-b/inbox", 1),
                   ("$share/g", 1), ("$share//x", 1)]),
         [1, 0x80, 0x80, 0x80],
         "own namespace granted, another device's refused, malformed refused")
    d.send(mr.publish("devices/dev-a/inbox", "hi", qos=1, pid=3))
    m = d.recv()  # its own message (3.1.1 has no No Local), and the PUBACK
    if m.type != mr.PUBLISH:
        m = d.recv()
    t.eq((m.topic, m.payload), ("devices/dev-a/inbox", b"hi"), "delivered through the group")
    st, js = g.http("GET", "/api/mqtt/subscriptions?client_id=dev-a-c")
    t.eq(st, 200, "subscriptions listed")
    t.eq(js["subscriptions"], [{"client_id": "dev-a-c", "filter": "$share/g/devices/dev-a/inbox",
                                "qos": 1, "share": "g"}], "listed with its group")
    for x in (c, d, p):
        x.close()


def sticky():
    """mqtt.shared_subscription_strategy=sticky: each device's messages to one member."""
    with Gale(args=ANON + ["--set", "mqtt.shared_subscription_strategy=sticky"]) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "the MQTT port")
        port = g.ports["mqtt"]
        cons = [Consumer(port, "s%d" % i, "$share/s/devices/+/events/#") for i in range(3)]
        devs = ["dev-%d" % i for i in range(8)]
        for d in devs:
            tok = g.create_device(d)
            c = paho.Client(client_id=d + "-c", protocol=paho.MQTTv311)
            c.username_pw_set(d, tok)
            c.connect("127.0.0.1", port, 60)
            c.loop_start()
            # two topics per device: the device decides, not the topic
            infos = [c.publish("devices/%s/events/%s" % (d, "ab"[i % 2]), "%s:%d" % (d, i), 1)
                     for i in range(20)]
            for info in infos:
                info.wait_for_publish(30)
            c.disconnect()
            c.loop_stop()
        wait_for(lambda: sum(c.count() for c in cons) >= 20 * len(devs), 30,
                 "every event delivered")
        owner = {}
        for i, c in enumerate(cons):
            for p in c.payloads():
                owner.setdefault(p.split(":")[0], set()).add(i)
        t.eq(sorted(owner), sorted(devs), "every device's events arrived")
        t(all(len(v) == 1 for v in owner.values()),
          "each device's messages went to one member: %r" % owner)
        t(len({min(v) for v in owner.values()}) >= 2, "devices spread over the members")
        for c in cons:
            c.stop()


def restart():
    """A persistent member's shared subscription is stored and joins its group again."""
    d = tempfile.mkdtemp(prefix="gale-shared-")
    try:
        with Gale(data_dir=d, args=ANON) as g:
            wait_for(lambda: "mqtt" in g.ports, 10, "the MQTT port")
            k = mr.session(g.ports["mqtt"], "keeper", clean=False)
            t.eq(k.sub(1, [("$share/k/keep/#", 1)]), [1], "persistent shared subscription")
            k.send(mr.DISCONNECT_BYTES)
            k.close()
        with Gale(data_dir=d, args=ANON) as g:
            wait_for(lambda: "mqtt" in g.ports, 10, "the MQTT port")
            port = g.ports["mqtt"]
            st, js = g.http("GET", "/api/mqtt/subscriptions?client_id=keeper")
            t.eq(js.get("subscriptions"), [{"client_id": "keeper", "filter": "$share/k/keep/#",
                                            "qos": 1, "share": "k"}],
                 "the shared subscription is back after the restart")
            p = mr.session(port, "kpub")
            p.send(mr.publish("keep/1", "after", qos=1, pid=1))
            p.recv_type(mr.PUBACK)
            k = mr.Raw(port)
            t.eq(k.connect("keeper", clean=False).session_present, 1, "session present")
            t.eq([m.payload for m in drain(k)], [b"after"], "delivered after the restart")
            # it leaves with clean start: its group is gone, nothing goes anywhere
            k.close()
            p.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    with Gale(args=ANON) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "the MQTT port")
        for f in (spread, leave_clean_mid_stream, leave_by_unsubscribe, reset_member,
                  persistent_offline, rest_unsubscribe_offline, no_retained_acl_malformed):
            try:
                f(g)
            except Exception as e:
                import traceback
                traceback.print_exc()
                t(False, "exception in %s: %r" % (f.__name__, e))
    for f in (sticky, restart):
        try:
            f()
        except Exception as e:
            import traceback
            traceback.print_exc()
            t(False, "exception in %s: %r" % (f.__name__, e))


main()
t.done()
