"""MQTT 3.1.1 server conformance at the packet level, with a byte-level client
(mqttraw.py): CONNECT rules and CONNACK codes, session present, takeover, will,
keepalive, every malformed packet the standard says closes the connection (each
followed by a fresh client being served), QoS 0/1/2 in both directions, packet ids,
PUBACK order, in-flight window, DUP on resume, QoS downgrade, overlapping
subscriptions, wildcards and $-topics, SUBACK 0x80, UNSUBSCRIBE, retained messages."""
import socket
import time
import traceback

import mqttraw as mr
from galetest import Check, Gale

t = Check("test_mqtt_conformance")
C = {}  # credentials: id -> token


def dev(port, cid, who="dev-1", **kw):
    return mr.session(port, cid, username=who, password=C[who], **kw)


def app(port, cid, **kw):
    return mr.session(port, cid, username="backend-1", password=C["backend-1"], **kw)


def still_serves(g, what):
    """A fresh client connects, subscribes, publishes and receives: the server lives."""
    c = app(g.ports["mqtt"], "fresh-after-" + what.replace(" ", "-")[:40])
    t.eq(c.sub(1, [("fresh/x", 1)]), [1], "%s: fresh client subscribes" % what)
    c.send(mr.publish("fresh/x", b"alive", qos=1, pid=2))
    got = sorted([c.recv(), c.recv()], key=lambda p: p.type)
    t.eq([p.type for p in got], [mr.PUBLISH, mr.PUBACK], "%s: fresh client served" % what)
    c.send(mr.ack(mr.PUBACK, got[0].pid))
    c.send(mr.DISCONNECT_BYTES)
    c.close()


def connect_rules(g):
    port = g.ports["mqtt"]
    # unsupported protocol level -> 0x01 then close [MQTT-3.1.2-2]
    c = mr.Raw(port)
    a = c.connect("lvl", level=6)
    t.eq((a.rc, a.session_present), (1, 0), "protocol level 6 -> CONNACK 0x01")
    t(c.closed(), "closed after CONNACK 0x01")
    # empty client id without clean session -> 0x02 [MQTT-3.1.3-8]
    c = mr.Raw(port)
    t.eq(c.connect("", clean=False, username="dev-1", password=C["dev-1"]).rc, 2,
         "empty client id with clean session 0 -> 0x02")
    t(c.closed(), "closed after 0x02")
    # empty client id with clean session -> server-assigned id [MQTT-3.1.3-6]
    c = mr.Raw(port)
    a = c.connect("", username="dev-1", password=C["dev-1"])
    t.eq((a.rc, a.session_present), (0, 0), "empty client id with clean session accepted")
    g.wait_log(r'client="gale-[0-9a-f]+-\d+" user="dev-1" connected')
    c.send(mr.PINGREQ_BYTES)
    t.eq(c.recv().type, mr.PINGRESP, "PINGREQ -> PINGRESP")
    c.close()
    # MQTT 3.1 (MQIsdp, level 3) is accepted; its client id is 1..23 bytes
    c = mr.Raw(port)
    t.eq(c.connect("v31-client", proto=b"MQIsdp", level=3, username="dev-1",
                   password=C["dev-1"]).rc, 0, "MQTT 3.1 CONNECT accepted")
    c.close()
    c = mr.Raw(port)
    t.eq(c.connect("x" * 24, proto=b"MQIsdp", level=3, username="dev-1",
                   password=C["dev-1"]).rc, 2, "MQTT 3.1 client id over 23 bytes -> 0x02")
    c.close()
    # credentials: username = device id, password = token
    for user, pw, want, what in [("dev-1", "wrong", 4, "bad token"),
                                 ("nobody", C["dev-1"], 4, "unknown device"),
                                 ("dev-1", None, 4, "username without password"),
                                 (None, None, 5, "no credentials (anonymous off)")]:
        c = mr.Raw(port)
        a = c.connect("cred-test", username=user, password=pw)
        t.eq(a.rc, want, "%s -> CONNACK 0x%02x" % (what, want))
        t(c.closed(), "%s: closed after refusal" % what)
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=mqtt connect refused rc=4 '
               r'reason="bad user name or password"')
    g.wait_log(r'auth failed device="dev-1" reason="bad token"')

    # session present [MQTT-3.2.2-1..3]
    c = dev(port, "sp-1", clean=False)
    t.eq(c.session_present, 0, "first persistent connect: session present 0")
    c.send(mr.DISCONNECT_BYTES)
    c.close()
    c = dev(port, "sp-1", clean=False)
    t.eq(c.session_present, 1, "persistent reconnect: session present 1")
    c.close()
    c = dev(port, "sp-1", clean=True)
    t.eq(c.session_present, 0, "clean session: session present 0 (old session discarded)")
    c.close()
    time.sleep(0.1)
    c = dev(port, "sp-1", clean=False)
    t.eq(c.session_present, 0, "after a clean session the state is gone")
    c.close()

    # a client id owned by another authenticated identity is refused
    c = dev(port, "owned-id", clean=False)
    other = mr.Raw(port)
    t.eq(other.connect("owned-id", username="dev-2", password=C["dev-2"]).rc, 2,
         "another device cannot take over a client id it does not own -> 0x02")
    t(c.nothing(0.3), "the owner stays connected")
    c.close()
    g.wait_log(r'client="owned-id" user="dev-2" refused: the client id belongs to another user')


def takeover_and_will(g):
    port = g.ports["mqtt"]
    watcher = app(port, "will-watcher")
    t.eq(watcher.sub(1, [("devices/dev-1/will/#", 2)]), [2], "watcher subscribed")

    # takeover: the old connection is closed, the new one works [MQTT-3.1.4-2]; the old
    # one ended without DISCONNECT, so its will is published
    old = dev(port, "tk-1", will=("devices/dev-1/will/tk", b"gone-tk", 1, False))
    new = dev(port, "tk-1")
    t(old.closed(), "takeover closes the existing connection")
    p = watcher.recv()
    t.eq((p.topic, p.payload, p.qos), ("devices/dev-1/will/tk", b"gone-tk", 1),
         "will of the taken-over connection published with its QoS")
    watcher.send(mr.ack(mr.PUBACK, p.pid))
    new.send(mr.PINGREQ_BYTES)
    t.eq(new.recv().type, mr.PINGRESP, "the new connection is served")
    g.wait_log(r'client="tk-1" takes over conn=\d+')
    # DISCONNECT discards the will [MQTT-3.14.4-3]
    new.send(mr.DISCONNECT_BYTES)
    t(new.closed(), "DISCONNECT closes")
    c = dev(port, "will-2", will=("devices/dev-1/will/w2", b"never", 0, False))
    c.send(mr.DISCONNECT_BYTES)
    c.close()
    t(watcher.nothing(0.5), "no will after DISCONNECT")
    # abnormal close: will published, QoS 2 and retain kept [MQTT-3.1.2-8]
    c = dev(port, "will-3", will=("devices/dev-1/will/w3", b"lost", 2, True))
    c.abort()
    p = watcher.recv()
    t.eq((p.topic, p.payload, p.qos, p.retain), ("devices/dev-1/will/w3", b"lost", 2, False),
         "will on abnormal close (QoS 2; retain 0 to an existing subscriber)")
    watcher.send(mr.ack(mr.PUBREC, p.pid))
    t.eq(watcher.recv().type, mr.PUBREL, "PUBREL for the will")
    watcher.send(mr.ack(mr.PUBCOMP, p.pid))
    late = app(port, "will-late")
    late.send(mr.subscribe(1, [("devices/dev-1/will/w3", 1)]))
    t.eq(late.recv().type, mr.SUBACK, "SUBACK first")
    p = late.recv()
    t.eq((p.payload, p.retain, p.qos), (b"lost", True, 1),
         "retained will delivered to a later subscriber with retain 1, QoS min(2,1)")
    late.send(mr.ack(mr.PUBACK, p.pid))
    late.close()
    # will after a protocol error
    c = dev(port, "will-4", will=("devices/dev-1/will/w4", b"bad", 0, False))
    c.send(mr.publish("a/+", b"x"))
    t(c.closed(), "wildcard publish closes")
    p = watcher.recv()
    t.eq((p.topic, p.payload), ("devices/dev-1/will/w4", b"bad"), "will after protocol error")
    # a will on a topic the ACL denies -> 0x05
    c = mr.Raw(port)
    t.eq(c.connect("will-5", username="dev-1", password=C["dev-1"],
                   will=("devices/dev-2/x", b"y", 0, False)).rc, 5,
         "will topic outside the device's ACL -> CONNACK 0x05")
    c.close()
    watcher.close()


def malformed(g):
    port = g.ports["mqtt"]
    cases = [
        ("remaining length over 4 bytes", None, b"\x30\x80\x80\x80\x80\x01",
         "remaining length"),
        ("packet before CONNECT", "raw", mr.PINGREQ_BYTES, "first packet must be CONNECT"),
        ("second CONNECT", "auth", mr.connect("second", username="dev-1", password="x"),
         "second CONNECT"),
        ("CONNECT reserved flag", "raw",
         mr.connect("rsv", username="dev-1", password="x", flags_extra=0x01), "reserved"),
        ("SUBSCRIBE reserved flags 0000", "auth",
         mr.packet(0x80, b"\x00\x01" + mr.s16("a") + b"\x00"), "flags"),
        ("PUBREL reserved flags 0000", "auth", mr.packet(0x60, b"\x00\x01"), "flags"),
        ("PINGREQ reserved flags 0001", "auth", mr.packet(0xC1), "flags"),
        ("PUBLISH QoS 3", "auth", bytes([0x36]) + mr.varint(5) + mr.s16("a") + b"\x00",
         "QoS"),
        ("invalid UTF-8 in topic", "auth",
         mr.packet(0x30, mr.s16(b"devices/dev-1/\xff\xfe") + b"x"), "UTF-8"),
        ("U+0000 in topic", "auth", mr.packet(0x30, mr.s16(b"devices/dev-1/a\x00b") + b"x"),
         "UTF-8"),
        ("'+' in a PUBLISH topic", "auth", mr.publish("devices/+/x", b"x"), "wildcard"),
        ("'#' in a PUBLISH topic", "auth", mr.publish("devices/dev-1/#", b"x"), "wildcard"),
        ("SUBSCRIBE without filters", "auth", mr.packet(0x82, b"\x00\x01"), ""),
        ("invalid filter a/#/b", "auth", mr.subscribe(3, [("a/#/b", 0)]), "filter"),
        ("CONNACK from a client", "auth", mr.packet(0x20, b"\x00\x00"), "not allowed"),
        ("reserved packet type 15", "auth", mr.packet(0xF0), ""),
        ("packet over mqtt.max_packet_bytes", "auth", b"\x30\x80\x80\x40", "too large"),
    ]
    for what, mode, data, reason in cases:
        c = mr.Raw(port)
        if mode == "auth":
            t.eq(c.connect("mal-" + str(len(what)), username="dev-1",
                           password=C["dev-1"]).rc, 0, "%s: CONNECT ok" % what)
        c.send(data)
        t(c.closed(), "%s: connection closed" % what)
        c.close()
        still_serves(g, what)
    # each close is logged with the peer and the reason
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=mqtt protocol error reason="[^"]*remaining length')
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=mqtt protocol error '
               r'reason="first packet must be CONNECT"')
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=mqtt protocol error reason="second CONNECT"')
    g.wait_log(r'proto=mqtt protocol error reason="invalid topic name"')
    g.wait_log(r'proto=mqtt protocol error reason="invalid UTF-8"')
    g.wait_log(r'proto=mqtt protocol error reason="invalid fixed header flags"')
    g.wait_log(r'proto=mqtt protocol error reason="reserved CONNECT flag set"')
    g.wait_log(r'proto=mqtt protocol error reason="[^"]*too large[^"]*"')
    log = g.log()
    n = log.count("proto=mqtt protocol error reason=")
    t(n >= len(cases), "one protocol-error log line per malformed packet (%d)" % n)
    # a declared huge packet is refused from its header: the server does not wait for it
    c = dev(port, "huge")
    c.send(b"\x30\xff\xff\xff\x7f")
    t(c.closed(timeout=2), "256 MB declared length refused at once")
    t(g.rss_kb() < 200000, "memory stays small after huge declared lengths")


def qos_flows(g):
    port = g.ports["mqtt"]
    sub = app(port, "q-sub")
    t.eq(sub.sub(1, [("devices/dev-1/q2", 2)]), [2], "QoS 2 granted")
    pub = dev(port, "q-pub")
    # QoS 2 in: PUBREC, a resent PUBLISH (DUP) is not delivered twice, PUBREL -> PUBCOMP
    pub.send(mr.publish("devices/dev-1/q2", b"exactly-once", qos=2, pid=77))
    p = pub.recv()
    t.eq((p.type, p.pid), (mr.PUBREC, 77), "PUBLISH QoS 2 -> PUBREC with its packet id")
    pub.send(mr.publish("devices/dev-1/q2", b"exactly-once", qos=2, pid=77, dup=True))
    p = pub.recv()
    t.eq((p.type, p.pid), (mr.PUBREC, 77), "resent QoS 2 PUBLISH -> PUBREC again")
    pub.send(mr.ack(mr.PUBREL, 77))
    p = pub.recv()
    t.eq((p.type, p.pid), (mr.PUBCOMP, 77), "PUBREL -> PUBCOMP")
    # QoS 2 out
    p = sub.recv()
    t.eq((p.topic, p.payload, p.qos, p.dup, p.retain),
         ("devices/dev-1/q2", b"exactly-once", 2, False, False), "subscriber gets QoS 2")
    t(p.pid is not None and p.pid > 0, "outgoing QoS 2 has a packet id")
    t(sub.nothing(0.3), "the resent QoS 2 PUBLISH was not delivered twice")
    sub.send(mr.ack(mr.PUBREC, p.pid))
    r = sub.recv()
    t.eq((r.type, r.pid, r.flags), (mr.PUBREL, p.pid, 2), "PUBREC -> PUBREL (flags 0010)")
    sub.send(mr.ack(mr.PUBCOMP, p.pid))

    # QoS downgrade to the subscription's maximum; QoS 0 stays 0 [MQTT-3.8.4-6]
    s0 = app(port, "q-sub0")
    s0.sub(1, [("devices/dev-1/down", 0)])
    s1 = app(port, "q-sub1")
    s1.sub(1, [("devices/dev-1/down", 1)])
    pub.send(mr.publish("devices/dev-1/down", b"q2msg", qos=2, pid=5))
    pub.recv_type(mr.PUBREC)
    pub.send(mr.ack(mr.PUBREL, 5))
    pub.recv_type(mr.PUBCOMP)
    p0, p1 = s0.recv(), s1.recv()
    t.eq((p0.qos, p0.pid), (0, None), "QoS 2 message to a QoS 0 subscription: QoS 0, no id")
    t.eq(p1.qos, 1, "QoS 2 message to a QoS 1 subscription: QoS 1")
    s1.send(mr.ack(mr.PUBACK, p1.pid))
    pub.send(mr.publish("devices/dev-1/q2", b"q0msg", qos=0))
    p = sub.recv()
    t.eq((p.qos, p.payload), (0, b"q0msg"), "QoS 0 message to a QoS 2 subscription: QoS 0")

    # overlapping subscriptions: one copy, the highest QoS [MQTT-3.3.5-1]
    ov = app(port, "q-overlap")
    t.eq(ov.sub(1, [("devices/+/ov", 0), ("devices/dev-1/ov/#", 1), ("devices/dev-1/ov", 0)]),
         [0, 1, 0], "three overlapping filters")
    pub.send(mr.publish("devices/dev-1/ov", b"one", qos=1, pid=9))
    pub.recv_type(mr.PUBACK)
    p = ov.recv()
    t.eq((p.payload, p.qos), (b"one", 1), "overlapping subscriptions: delivered at max QoS")
    ov.send(mr.ack(mr.PUBACK, p.pid))
    t(ov.nothing(0.3), "overlapping subscriptions: delivered once")

    # PUBACKs in the order the PUBLISHes came [MQTT-4.6.0-2], telemetry (acked after its
    # batch is durable) interleaved with plain topics (nothing to store)
    data = b""
    base = 1700000000000
    for i in range(1, 61):
        topic = "devices/dev-1/telemetry" if i % 3 else "devices/dev-1/plain"
        data += mr.publish(topic, b'{"ts":%d,"values":{"n":%d}}' % (base + i, i), qos=1, pid=i)
    pub.send(data)
    ids = [pub.recv_type(mr.PUBACK).pid for _ in range(60)]
    t.eq(ids, list(range(1, 61)), "PUBACKs in PUBLISH order")
    # PUBRECs too [MQTT-4.6.0-3]
    data = b"".join(mr.publish("devices/dev-1/telemetry" if i % 2 else "devices/dev-1/p",
                               b'{"ts":%d,"values":{"m":%d}}' % (base + i, i), qos=2,
                               pid=100 + i) for i in range(20))
    pub.send(data)
    ids = [pub.recv_type(mr.PUBREC).pid for _ in range(20)]
    t.eq(ids, [100 + i for i in range(20)], "PUBRECs in PUBLISH order")
    pub.send(b"".join(mr.ack(mr.PUBREL, 100 + i) for i in range(20)))
    ids = [pub.recv_type(mr.PUBCOMP).pid for _ in range(20)]
    t.eq(ids, [100 + i for i in range(20)], "PUBCOMPs in PUBREL order")
    st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=n,m&limit=1000")
    t.eq((len(js.get("n", [])), len(js.get("m", []))), (40, 10),
         "QoS 1/2 telemetry stored and acknowledged")
    sub.close()
    for c in (s0, s1, ov, pub):
        c.close()


def inflight_and_resume(g):
    """max_inflight=5 in this gateway."""
    port = g.ports["mqtt"]
    s = app(port, "infl", clean=False)
    s.sub(1, [("devices/dev-1/infl", 1)])
    pub = dev(port, "infl-pub")
    for i in range(10):
        pub.send(mr.publish("devices/dev-1/infl", b"m%d" % i, qos=1, pid=i + 1))
    for i in range(10):
        pub.recv_type(mr.PUBACK)
    got = [s.recv() for _ in range(5)]
    t.eq([p.payload for p in got], [b"m%d" % i for i in range(5)],
         "five in flight (mqtt.max_inflight=5), in order")
    t(s.nothing(0.4), "no more than the in-flight window without acks")
    t.eq(len(set(p.pid for p in got)), 5, "in-flight packet ids are distinct")
    s.send(mr.ack(mr.PUBACK, got[0].pid))
    p = s.recv()
    t.eq(p.payload, b"m5", "an ack frees one slot: the next message follows")
    # drop the connection with 5 unacknowledged: they come back with DUP and the same ids,
    # in order, then the rest [MQTT-4.4.0-1] [MQTT-3.3.1-1]
    pending = got[1:] + [p]
    s.abort()
    time.sleep(0.2)
    s = app(port, "infl", clean=False)
    t.eq(s.session_present, 1, "resumed session present")
    again = [s.recv() for _ in range(5)]
    t.eq([(p.payload, p.pid, p.dup) for p in again],
         [(p.payload, p.pid, True) for p in pending],
         "unacknowledged messages resent with DUP and their original packet ids")
    for p in again:
        s.send(mr.ack(mr.PUBACK, p.pid))
    rest = [s.recv() for _ in range(4)]
    t.eq([(p.payload, p.dup) for p in rest], [(b"m%d" % i, False) for i in range(6, 10)],
         "then the queued ones, first attempt without DUP")
    for p in rest:
        s.send(mr.ack(mr.PUBACK, p.pid))
    # QoS 2 outgoing interrupted after PUBREC: PUBREL is resent on resume
    s.sub(2, [("devices/dev-1/infl2", 2)])
    pub.send(mr.publish("devices/dev-1/infl2", b"two", qos=2, pid=50))
    pub.recv_type(mr.PUBREC)
    pub.send(mr.ack(mr.PUBREL, 50))
    pub.recv_type(mr.PUBCOMP)
    p = s.recv()
    s.send(mr.ack(mr.PUBREC, p.pid))
    t.eq(s.recv().type, mr.PUBREL, "PUBREL")
    s.abort()
    time.sleep(0.2)
    s = app(port, "infl", clean=False)
    r = s.recv()
    t.eq((r.type, r.pid), (mr.PUBREL, p.pid), "PUBREL resent on resume, not the PUBLISH")
    s.send(mr.ack(mr.PUBCOMP, p.pid))
    t(s.nothing(0.3), "QoS 2 flow complete")
    # messages published while a persistent session is offline are queued
    s.send(mr.DISCONNECT_BYTES)
    s.close()
    for i in range(3):
        pub.send(mr.publish("devices/dev-1/infl", b"off%d" % i, qos=1, pid=60 + i))
        pub.recv_type(mr.PUBACK)
    s = app(port, "infl", clean=False)
    got = [s.recv() for _ in range(3)]
    t.eq([p.payload for p in got], [b"off0", b"off1", b"off2"], "offline messages queued")
    for p in got:
        s.send(mr.ack(mr.PUBACK, p.pid))
    s.close()
    pub.close()


def subscriptions(g):
    port = g.ports["mqtt"]
    a = app(port, "subs-a")
    t.eq(a.sub(1, [("#", 0), ("+/+", 0), ("+", 0)]), [0, 0, 0], "wildcard subscriptions")
    b = app(port, "subs-b")
    t.eq(b.sub(1, [("$SYS/broker/uptime", 0)]), [0], "$SYS subscription")
    p = b.recv(timeout=15)
    t.eq((p.topic, p.retain), ("$SYS/broker/uptime", True), "$SYS retained on subscribe")
    t(p.payload.endswith(b"seconds"), "$SYS uptime payload")
    p = b.recv(timeout=15)
    t.eq((p.topic, p.retain), ("$SYS/broker/uptime", False), "$SYS published periodically")
    # '$' topics are not matched by filters starting with a wildcard [MQTT-4.7.2-1]; '#'
    # did get the retained messages of ordinary topics
    seen = []
    try:
        while True:
            seen.append(a.recv(0.3).topic)
    except socket.timeout:
        pass
    t(seen and all(not s.startswith("$") for s in seen),
      "'#', '+/+' and '+' see no $SYS topic (saw %d others)" % len(seen))
    # clients do not publish to '$' topics by default
    f = app(port, "subs-f")
    f.sub(1, [("$SYS/fake", 0)])
    a.send(mr.publish("$SYS/fake", b"x", qos=1, pid=3))
    t.eq(a.recv().type, mr.PUBACK, "publish to $SYS acknowledged ...")
    t(f.nothing(0.3), "... but dropped")
    f.close()
    g.wait_log(r'client="subs-a" publish denied topic="\$SYS/fake"')
    a.send(mr.unsubscribe(4, ["#", "+/+", "+"]))
    t.eq(a.recv().type, mr.UNSUBACK, "UNSUBACK")
    # matching: sport/# matches sport; + matches one level; empty levels
    t.eq(a.sub(5, [("sport/#", 0), ("x/+/z", 0), ("/e", 0)]), [0, 0, 0], "more filters")
    for topic, want in [("sport", True), ("sport/tennis/p1", True), ("x/y/z", True),
                        ("x/y/y/z", False), ("x//z", True), ("/e", True), ("e", False)]:
        a.send(mr.publish(topic, b"m", qos=0))
        if want:
            p = a.recv()
            t.eq(p.topic, topic, "%s delivered" % topic)
        else:
            t(a.nothing(0.2), "%s not delivered" % topic)
    # UNSUBSCRIBE of a filter not held still gets UNSUBACK [MQTT-3.10.4-5]
    a.send(mr.unsubscribe(6, ["never/subscribed"]))
    p = a.recv()
    t.eq((p.type, p.pid), (mr.UNSUBACK, 6), "UNSUBACK for an unknown filter")
    a.send(mr.unsubscribe(7, ["sport/#"]))
    a.recv_type(mr.UNSUBACK)
    a.send(mr.publish("sport", b"m", qos=0))
    t(a.nothing(0.2), "no delivery after UNSUBSCRIBE")

    # device ACL: its own tree only; a denied filter gets 0x80 in the same SUBACK
    d = dev(port, "subs-dev")
    codes = d.sub(9, [("devices/dev-1/x/#", 1), ("devices/dev-2/#", 1), ("#", 0),
                      ("devices/+/telemetry", 0), ("devices/dev-1/commands", 2)])
    t.eq(codes, [1, 0x80, 0x80, 0x80, 2], "SUBACK 0x80 for each filter the ACL denies")
    g.wait_log(r'client="subs-dev" subscribe denied filter="devices/dev-2/#"')
    d.send(mr.publish("devices/dev-2/telemetry", b'{"x":1}', qos=1, pid=3))
    t.eq(d.recv().type, mr.PUBACK, "publish outside own tree: acknowledged, dropped")
    g.wait_log(r'client="subs-dev" publish denied topic="devices/dev-2/telemetry"')
    st, js = g.http("GET", "/api/devices/dev-2/latest")
    t.eq(js, {}, "denied telemetry not stored")
    for c in (a, b, d):
        c.close()


def retained(g):
    port = g.ports["mqtt"]
    pub = dev(port, "ret-pub")
    live = app(port, "ret-live")
    live.sub(1, [("devices/dev-1/ret/#", 1)])
    pub.send(mr.publish("devices/dev-1/ret/a", b"A1", qos=1, retain=True, pid=1))
    pub.recv_type(mr.PUBACK)
    pub.send(mr.publish("devices/dev-1/ret/a", b"A2", qos=1, retain=True, pid=2))
    pub.recv_type(mr.PUBACK)
    pub.send(mr.publish("devices/dev-1/ret/b", b"B", qos=0, retain=True))
    got = [live.recv() for _ in range(3)]
    t.eq([(p.payload, p.retain) for p in got], [(b"A1", False), (b"A2", False), (b"B", False)],
         "existing subscribers get retained publishes with retain 0 [MQTT-3.3.1-9]")
    for p in got:
        if p.qos:
            live.send(mr.ack(mr.PUBACK, p.pid))
    # new subscription: SUBACK, then the last retained message per topic with retain 1
    n = app(port, "ret-new")
    n.send(mr.subscribe(3, [("devices/dev-1/ret/#", 2)]))
    first = n.recv()
    t.eq((first.type, first.pid), (mr.SUBACK, 3), "SUBACK comes before the retained messages")
    got = sorted([n.recv(), n.recv()], key=lambda p: p.topic)
    t.eq([(p.topic, p.payload, p.retain, p.qos) for p in got],
         [("devices/dev-1/ret/a", b"A2", True, 1), ("devices/dev-1/ret/b", b"B", True, 0)],
         "retained: newest per topic, retain 1, QoS min(published, granted)")
    for p in got:
        if p.qos:
            n.send(mr.ack(mr.PUBACK, p.pid))
    t(n.nothing(0.3), "nothing more retained")
    # subscribing again to the same filter re-sends retained messages [MQTT-3.8.4-3]
    n.send(mr.subscribe(4, [("devices/dev-1/ret/b", 0)]))
    n.recv_type(mr.SUBACK)
    p = n.recv()
    t.eq((p.payload, p.retain), (b"B", True), "re-subscribe re-sends the retained message")
    # an empty retained payload clears the topic and is not stored [MQTT-3.3.1-10,11]
    pub.send(mr.publish("devices/dev-1/ret/a", b"", qos=1, retain=True, pid=5))
    pub.recv_type(mr.PUBACK)
    p = live.recv()
    t.eq((p.topic, p.payload), ("devices/dev-1/ret/a", b""), "the clearing message is routed")
    live.send(mr.ack(mr.PUBACK, p.pid))
    # retain 0 neither stores nor clears [MQTT-3.3.1-12]
    pub.send(mr.publish("devices/dev-1/ret/b", b"not-retained", qos=0))
    m = app(port, "ret-after")
    m.send(mr.subscribe(1, [("devices/dev-1/ret/#", 1)]))
    m.recv_type(mr.SUBACK)
    p = m.recv()
    t.eq((p.topic, p.payload, p.retain), ("devices/dev-1/ret/b", b"B", True),
         "after clearing 'a' only 'b' is retained, unchanged by a retain-0 publish")
    t(m.nothing(0.3), "cleared topic not delivered")
    for c in (pub, live, n, m):
        c.close()


def keepalive(g):
    port = g.ports["mqtt"]
    w = app(port, "ka-watch")
    w.sub(1, [("devices/dev-1/ka", 0)])
    c = dev(port, "ka-1", keepalive=1, will=("devices/dev-1/ka", b"timeout", 0, False))
    t0 = time.monotonic()
    t(c.closed(timeout=4), "silent client with keepalive 1 s is closed")
    dt = time.monotonic() - t0
    t(1.4 <= dt <= 2.6, "closed after 1.5x keepalive (%.2f s)" % dt)
    p = w.recv()
    t.eq(p.payload, b"timeout", "will published on keepalive timeout")
    g.wait_log(r'proto=mqtt device=dev-1 close reason="idle timeout"')
    # a client that pings stays connected
    c = dev(port, "ka-2", keepalive=1)
    for _ in range(4):
        time.sleep(0.5)
        c.send(mr.PINGREQ_BYTES)
        t.eq(c.recv().type, mr.PINGRESP, "PINGRESP")
    t(c.nothing(0.2), "pinging client still connected after 2 s")
    c.close()
    # keepalive 0 turns the mechanism off (3.1.2.10)
    c = dev(port, "ka-0", keepalive=0)
    t(c.nothing(1.5), "keepalive 0: no timeout")
    c.close()
    w.close()


def main():
    with Gale(args=["--set", "mqtt.max_inflight=5", "--set", "mqtt.max_packet_bytes=4096"]) as g:
        C["dev-1"] = g.create_device("dev-1")
        C["dev-2"] = g.create_device("dev-2")
        C["backend-1"] = g.create_device("backend-1", role="app")
        for part in (connect_rules, takeover_and_will, malformed, qos_flows,
                     inflight_and_resume, subscriptions, retained, keepalive):
            try:
                part(g)
            except Exception:
                traceback.print_exc()
                t(False, "exception in " + part.__name__)
        t(g.alive(), "gateway alive at the end")
    t.eq(g.proc.returncode, 0, "SIGTERM exits 0")

    # mqtt.max_keepalive: 3.1.1 cannot shorten a client's keepalive, so larger asks (and 0,
    # which means none) are refused with 0x02, as Mosquitto does
    with Gale(args=["--set", "mqtt.max_keepalive=30"]) as g:
        C["dev-1"] = g.create_device("dev-1")
        port = g.ports["mqtt"]
        for ka, want in [(60, 2), (0, 2), (30, 0), (10, 0)]:
            c = mr.Raw(port)
            t.eq(c.connect("mk", keepalive=ka, username="dev-1", password=C["dev-1"]).rc, want,
                 "max_keepalive=30, keepalive %d -> 0x%02x" % (ka, want))
            c.close()


t.run(main)
